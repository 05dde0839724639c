//! Aggregator plugins in the host: the schema from `init`, rows per batch, and the events a
//! plugin fails on isolated while the rows of the others are kept.

mod common;
use common::wasm;

use std::time::Duration;

use runnel_batch::BatchWriter;
use runnel_host::{Limits, LoadError, RowInput, Runtime};
use runnel_window::{MeasureKind, WindowSpec};

fn batch(ids: &[&str]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for (i, id) in ids.iter().enumerate() {
        w.push(
            1_000 + i as i64,
            2,
            1,
            [
                Some(id),
                Some(if i % 2 == 0 {
                    "page.view"
                } else {
                    "checkout.completed"
                }),
                None,
                None,
                None,
                None,
                None,
                None,
            ],
        );
    }
    w.finish()
}

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(200),
        memory_bytes_max: 32 << 20,
        ..Limits::default()
    }
}

#[test]
fn an_aggregator_declares_its_schema_and_maps_events_to_rows() {
    let rt = Runtime::new().unwrap();
    let mut a = rt
        .load_aggregator("count-by-type", &wasm("count_by_type"), vec![], limits())
        .unwrap();
    let s = a.schema();
    assert_eq!(s.dimensions, vec!["event_type".to_string()]);
    assert_eq!(s.measures, vec![("events".to_string(), MeasureKind::Count)]);
    assert_eq!(s.window, WindowSpec::Tumbling { size_ms: 60_000 });
    assert_eq!(s.allowed_lateness_ms, 5_000);
    let out = a.map_batch(&batch(&["a", "b", "c"])).unwrap();
    assert_eq!(out.calls, 1);
    assert!(out.failed.is_empty());
    assert_eq!(out.rows.len(), 3);
    assert_eq!(
        out.rows[1].dimensions,
        vec!["checkout.completed".to_string()]
    );
    assert_eq!(out.rows[2].event_time_ms, 1_002);
    assert_eq!(out.rows[0].inputs, vec![RowInput::Null]);
}

#[test]
fn failing_events_are_isolated_and_the_rest_mapped() {
    let rt = Runtime::new().unwrap();
    let mut a = rt
        .load_aggregator("count-by-type", &wasm("count_by_type"), vec![], limits())
        .unwrap();
    let ids: Vec<String> = (0..64)
        .map(|i| {
            if i == 5 || i == 40 {
                format!("poison-{i}")
            } else {
                format!("e-{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let out = a.map_batch(&batch(&refs)).unwrap();
    let failed: Vec<u32> = out.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![5, 40]);
    assert!(
        out.failed[0].1.message.contains("poisoned event poison-5"),
        "{:?}",
        out.failed[0]
    );
    assert_eq!(out.rows.len(), 62);
}

#[test]
fn an_enricher_is_not_an_aggregator() {
    let rt = Runtime::new().unwrap();
    let err = rt
        .load_aggregator("noop", &wasm("noop"), vec![], limits())
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}
