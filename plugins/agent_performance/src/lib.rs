//! agent_performance: per field agent (`properties.field_agent_id`) and calendar month in
//! Africa/Nairobi time, the onboardings completed and the deposit and withdrawal totals and
//! counts: the input of the monthly field-agent commission report. The time zone is the
//! `time_zone` parameter (default `Africa/Nairobi`).

use runnel_aggregator::{
    Aggregate, CalendarUnit, Event, Measure, Params, Props, Rows, Value, Window,
};

fn schema(params: &Params) -> Result<Aggregate, String> {
    let time_zone = params.get("time_zone").unwrap_or("Africa/Nairobi");
    Ok(Aggregate::new(Window::Calendar {
        unit: CalendarUnit::Month,
        time_zone: time_zone.to_string(),
    })
    .lateness_ms(3_600_000)
    .dimension("field_agent_id")
    .measure("onboardings", Measure::Sum)
    .measure("deposits", Measure::Sum)
    .measure("deposit_total", Measure::Sum)
    .measure("withdrawals", Measure::Sum)
    .measure("withdrawal_total", Measure::Sum))
}

fn map(event: &Event<'_>, rows: &mut Rows) {
    let kind = match event.event_type() {
        "onboarding.completed" => 0,
        "deposit.completed" => 1,
        "withdrawal.completed" => 2,
        _ => return,
    };
    let props = Props::of(event);
    let Some(agent) = props.text("field_agent_id") else {
        return;
    };
    let amount = props.number("amount").unwrap_or(0.0);
    let one = |k| Value::Int(i64::from(kind == k));
    let total = |k| Value::Float(if kind == k { amount } else { 0.0 });
    rows.push(&[&agent], [one(0), one(1), total(1), one(2), total(2)]);
}

runnel_aggregator::aggregator!(map, schema = schema);
