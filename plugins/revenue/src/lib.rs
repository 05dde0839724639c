//! revenue: per `properties.country` (set by geo-enrich) and currency, in 1-hour tumbling
//! windows, the sum, count and p50/p99 of `properties.amount` of completed payments
//! (`deposit.completed`, `checkout.completed`).

use runnel_aggregator::{Aggregate, Event, Measure, Params, Props, Rows, Value, Window};

fn schema(_: &Params) -> Result<Aggregate, String> {
    Ok(Aggregate::new(Window::Tumbling { size_ms: 3_600_000 })
        .lateness_ms(60_000)
        .dimension("country")
        .dimension("currency")
        .measure("revenue", Measure::Sum)
        .measure("payments", Measure::Count)
        .measure("amount", Measure::Quantiles))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    if !matches!(
        event.event_type(),
        "deposit.completed" | "checkout.completed"
    ) {
        return;
    }
    let props = Props::of(event);
    let Some(amount) = props.number("amount") else {
        return;
    };
    let country = props.text("country").unwrap_or_else(|| "unknown".into());
    let currency = props.text("currency").unwrap_or_else(|| "unknown".into());
    rows.push(
        &[&country, &currency],
        [Value::Float(amount), Value::Null, Value::Float(amount)],
    );
}

runnel_aggregator::aggregator!(map, schema = schema);
