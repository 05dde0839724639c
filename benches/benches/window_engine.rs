//! The window engine alone (`runnel-window`), on one core: count + sum + distinct over 100,000
//! keys in 1-minute tumbling windows, events arriving in event-time order with some disorder.
//! The watermark advances after every event, as in the broker's pipeline.
//!
//! Run: `cargo bench -p runnel-benches --bench window_engine`.

use std::time::Instant;

use runnel_benches::{machine, median};
use runnel_window::{Engine, Input, MeasureKind, Schema, Settings, WindowSpec};

const EVENTS: usize = 2_000_000;
const KEYS: usize = 100_000;
const RUNS: usize = 5;

fn main() {
    println!("machine: {}", machine(&std::env::temp_dir()));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("agent-{i:06}")).collect();
    let users: Vec<String> = (0..KEYS * 3).map(|i| format!("user-{i:07}")).collect();
    // A cheap deterministic generator (xorshift) so runs see the same stream.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let stream: Vec<(i64, usize, usize, f64)> = (0..EVENTS)
        .map(|i| {
            let r = next();
            // 20,000 events per second of event time, up to 2 s out of order.
            let ts = 1_763_726_400_000 + (i as i64) / 20 - (r % 2_000) as i64;
            (
                ts,
                (r >> 16) as usize % KEYS,
                (r >> 32) as usize % (KEYS * 3),
                (r % 10_000) as f64 / 100.0,
            )
        })
        .collect();
    let mut rates = Vec::new();
    let mut finals = 0;
    for _ in 0..RUNS {
        let mut e = Engine::new(
            Schema {
                dimensions: vec!["field_agent_id".into()],
                measures: vec![
                    ("events".into(), MeasureKind::Count),
                    ("amount".into(), MeasureKind::Sum),
                    ("users".into(), MeasureKind::Distinct),
                ],
                window: WindowSpec::Tumbling { size_ms: 60_000 },
                allowed_lateness_ms: 5_000,
            },
            Settings::default(),
        )
        .unwrap();
        let started = Instant::now();
        finals = 0;
        for (ts, k, u, amount) in &stream {
            e.add(
                "agent-a",
                *ts,
                0,
                &[&keys[*k]],
                &[Input::Null, Input::Num(*amount), Input::Str(&users[*u])],
            );
            finals += e.advance(0).len();
        }
        finals += e.finish().len();
        rates.push(EVENTS as f64 / started.elapsed().as_secs_f64());
    }
    let runs: Vec<String> = rates.iter().map(|r| format!("{:.2}M", r / 1e6)).collect();
    println!(
        "window engine, count + sum + distinct, {KEYS} keys, tumbling 1 min: median {:.2}M events/s on one core (runs: {}); {finals} final rows per run",
        median(rates) / 1e6,
        runs.join(", ")
    );
}
