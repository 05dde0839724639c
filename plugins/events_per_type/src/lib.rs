//! events_per_type: events per event_type and platform, in 1-minute tumbling windows.

use runnel_aggregator::{Aggregate, Event, Field, Measure, Params, Rows, Value, Window};

fn schema(_: &Params) -> Result<Aggregate, String> {
    Ok(Aggregate::new(Window::Tumbling { size_ms: 60_000 })
        .lateness_ms(30_000)
        .dimension("event_type")
        .dimension("platform")
        .measure("events", Measure::Count))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    let platform = event.field(Field::Platform).unwrap_or("unknown");
    rows.push(&[event.event_type(), platform], [Value::Null]);
}

runnel_aggregator::aggregator!(map, schema = schema);
