//! events_per_type: events per event_type and platform, in 1-minute tumbling windows.
//!
//! Parameter `by_app_version = "true"` adds a third dimension, `app_version` (the version a
//! backfill computes over history in the tests and docs).

use runnel_aggregator::{Aggregate, Event, Field, Measure, Params, Rows, Value, Window};

fn by_app_version(params: &Params) -> Result<bool, String> {
    match params.get("by_app_version").unwrap_or("false") {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("by_app_version: {other:?} is not true or false")),
    }
}

fn schema(params: &Params) -> Result<Aggregate, String> {
    let mut a = Aggregate::new(Window::Tumbling { size_ms: 60_000 })
        .lateness_ms(30_000)
        .dimension("event_type")
        .dimension("platform");
    if by_app_version(params)? {
        a = a.dimension("app_version");
    }
    Ok(a.measure("events", Measure::Count))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    let platform = event.field(Field::Platform).unwrap_or("unknown");
    if by_app_version(runnel_aggregator::params()).unwrap_or(false) {
        let version = event.field(Field::AppVersion).unwrap_or("unknown");
        rows.push(&[event.event_type(), platform, version], [Value::Null]);
    } else {
        rows.push(&[event.event_type(), platform], [Value::Null]);
    }
}

runnel_aggregator::aggregator!(map, schema = schema);
