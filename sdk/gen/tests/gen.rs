//! The generator keeps its promises: deterministic, valid envelopes, the shares asked for, and
//! delays that mean what their labels say for the window engine.

use runnel_gen::{Config, Delay, Scenario, generate};
use runnel_window::{Added, Engine, MeasureKind, Schema, Settings, WindowSpec};

#[test]
fn the_same_seed_gives_the_same_stream_and_every_event_is_valid() {
    for scenario in [Scenario::Fintech, Scenario::Ecommerce] {
        let cfg = Config {
            scenario,
            events: 2_000,
            ..Config::default()
        };
        let a = generate(&cfg);
        assert_eq!(a, generate(&cfg));
        assert_ne!(
            a,
            generate(&Config {
                seed: 2,
                ..cfg.clone()
            })
        );
        let limits = runnel_event::EnvelopeLimits::default();
        for g in &a {
            let e = runnel_event::parse_event(&g.json, &limits, 0)
                .unwrap_or_else(|e| panic!("{}: {e}", g.json));
            assert_eq!(e.timestamp_ms, g.event_time_ms);
        }
        let distinct: std::collections::HashSet<&str> = a.iter().map(|g| g.json.as_str()).collect();
        assert_eq!(distinct.len(), a.len());
    }
}

#[test]
fn shares_are_as_asked_and_labels_hold_in_the_engine() {
    let cfg = Config {
        events: 50_000,
        ..Config::default()
    };
    let stream = generate(&cfg);
    let share =
        |d: Delay| stream.iter().filter(|g| g.delay == d).count() as f64 / stream.len() as f64;
    assert!((share(Delay::OutOfOrder) - 0.10).abs() < 0.01);
    assert!((share(Delay::WithinLateness) - 0.02).abs() < 0.005);
    assert!((share(Delay::BeyondLateness) - 0.01).abs() < 0.003);
    let mut e = Engine::new(
        Schema {
            dimensions: vec!["event_type".into()],
            measures: vec![("n".into(), MeasureKind::Count)],
            window: WindowSpec::Tumbling {
                size_ms: cfg.window_ms,
            },
            allowed_lateness_ms: cfg.allowed_lateness_ms,
        },
        Settings {
            out_of_orderness_ms: cfg.out_of_orderness_ms,
            ..Settings::default()
        },
    )
    .unwrap();
    for g in &stream {
        let added = e.add(
            &g.source.to_string(),
            g.event_time_ms,
            0,
            &[g.event_type],
            &[],
        );
        let late = matches!(added, Added::Late { .. });
        assert_eq!(late, g.delay == Delay::BeyondLateness, "{g:?} -> {added:?}");
        e.advance(0);
    }
}
