//! unique_users: distinct users per platform in 1-hour tumbling windows (HyperLogLog, about
//! 1.6% relative standard error). Events without a user_id are not counted.

use runnel_aggregator::{Aggregate, Event, Field, Measure, Params, Rows, Window};

fn schema(_: &Params) -> Result<Aggregate, String> {
    Ok(Aggregate::new(Window::Tumbling { size_ms: 3_600_000 })
        .lateness_ms(60_000)
        .dimension("platform")
        .measure("users", Measure::Distinct))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    if let Some(user) = event.user_id() {
        let platform = event.field(Field::Platform).unwrap_or("unknown");
        rows.push(&[platform], [Some(user).into()]);
    }
}

runnel_aggregator::aggregator!(map, schema = schema);
