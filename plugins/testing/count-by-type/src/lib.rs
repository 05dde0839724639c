//! An aggregator for the host tests: one row per event (`event_type`, count) in 1-minute
//! tumbling windows with 5 s lateness; traps on an event whose id contains "poison".

wit_bindgen::generate!({ world: "aggregator", path: "../../../wit" });

use runnel::plugin::types::{Measure, MeasureKind, Value, Window};

struct CountByType;

impl Guest for CountByType {
    fn init(_params: Vec<Param>) -> Result<AggregateSchema, String> {
        Ok(AggregateSchema {
            dimensions: vec!["event_type".into()],
            measures: vec![Measure {
                name: "events".into(),
                kind: MeasureKind::Count,
            }],
            window: Window::Tumbling(60_000),
            allowed_lateness_ms: 5_000,
        })
    }

    fn map_batch(batch: Vec<u8>) -> Result<Vec<Row>, String> {
        let view = runnel_batch::BatchView::new(&batch).map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(view.len());
        for (i, ev) in view.iter().enumerate() {
            if ev.event_id().contains("poison") {
                panic!("poisoned event {}", ev.event_id());
            }
            rows.push(Row {
                event: i as u32,
                event_time_ms: ev.timestamp_ms(),
                dimensions: vec![ev.event_type().to_string()],
                inputs: vec![Value::Null],
            });
        }
        Ok(rows)
    }
}

export!(CountByType);
