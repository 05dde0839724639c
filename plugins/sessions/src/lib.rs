//! sessions: per user, sessions of events no more than 30 minutes apart: the events in each,
//! and the times of its first and last event (`first_ms`, `last_ms`; the session's duration is
//! `last_ms - first_ms`, and its window runs from the first event to 30 minutes after the last).

use runnel_aggregator::{Aggregate, Event, Measure, Params, Rows, Value, Window};

fn schema(_: &Params) -> Result<Aggregate, String> {
    Ok(Aggregate::new(Window::Session { gap_ms: 1_800_000 })
        .lateness_ms(60_000)
        .dimension("user_id")
        .measure("events", Measure::Count)
        .measure("first_ms", Measure::Min)
        .measure("last_ms", Measure::Max))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    if let Some(user) = event.user_id() {
        let t = event.timestamp_ms();
        rows.push(&[user], [Value::Null, Value::Int(t), Value::Int(t)]);
    }
}

runnel_aggregator::aggregator!(map, schema = schema);
