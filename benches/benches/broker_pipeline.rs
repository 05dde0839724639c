//! The broker pipeline alone: events/s through chains of enrichers and aggregators, read from
//! a log on disk, with offsets and counts committed (redb) as in the broker: per batch without
//! aggregators, every 100 ms with the window state when aggregators run. No network, no agent.
//!
//! Run: `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml &&
//! cargo bench -p runnel-benches --bench broker_pipeline [-- FILTER]` (FILTER: only the chains
//! whose label contains it, e.g. `"dev set"` under a profiler). The Python chain builds
//! `benches/python/large-amount` with the release `runnel plugin build` (componentize-py) first
//! (`RUNNEL_BENCH_PYTHON_WASM=FILE` runs FILE instead).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use runnel_benches::{component, machine, median};
use runnel_broker::log::{BrokerLog, check_batch};
use runnel_broker::pipeline::{Isolation, Pipeline, Settings, Topics};
use runnel_broker::plugins::{Deploy, PluginLimits, Registry};
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::FsStorage;

const EVENTS: u64 = 200_000;
const PER_BATCH: u64 = 1000;
const RUNS: usize = 3;

fn event(n: u64) -> Event {
    Event {
        event_id: format!("ev-{n:012}"),
        event_type: if n.is_multiple_of(3) {
            "checkout.completed"
        } else {
            "page.view"
        }
        .into(),
        timestamp_ms: 1_763_726_400_000 + n as i64,
        received_at_ms: 1_763_726_400_001 + n as i64,
        schema_version: 1,
        user_id: Some(format!("user-{:06}", n % 50_000)),
        session_id: None,
        device_id: None,
        platform: Some("ios".into()),
        app_version: Some("4.2.0".into()),
        properties: Some(format!(
            r#"{{"amount":{}.5,"currency":"KES","ip":"198.51.100.{}"}}"#,
            n % 997,
            n % 250
        )),
    }
}

/// The example aggregators (the rest are enrichers).
const AGGREGATORS: &[&str] = &[
    "events_per_type",
    "revenue",
    "unique_users",
    "sessions",
    "agent_performance",
];

/// The bench's Python enricher (`benches/python/large-amount`): drops `debug.*`, adds
/// `"large": true` where `amount` > 100.
const PYTHON_ENRICHER: &str = "large-amount";

/// Builds the Python enricher with the release `runnel plugin build` and reads its component;
/// `RUNNEL_BENCH_PYTHON_WASM=FILE` reads FILE instead (to compare builds of the SDK).
fn python_component() -> Vec<u8> {
    if let Some(file) = std::env::var_os("RUNNEL_BENCH_PYTHON_WASM") {
        return std::fs::read(&file).expect("RUNNEL_BENCH_PYTHON_WASM");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/large-amount");
    let status = std::process::Command::new(runnel_benches::release_bin("runnel"))
        .args(["plugin", "build"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running runnel plugin build");
    assert!(
        status.success(),
        "runnel plugin build {}: {status}",
        dir.display()
    );
    std::fs::read(dir.join("target/large-amount.wasm")).expect("the built component")
}

/// `runnel dev`'s broker set: geo-enrich, then the five example aggregators.
const DEV_SET: &[&str] = &[
    "geo_enrich",
    "events_per_type",
    "unique_users",
    "revenue",
    "sessions",
    "agent_performance",
];

fn deploy(registry: &Registry, name: &str, wasm: &[u8]) {
    let sha = runnel_broker::plugins::sha256_hex(wasm);
    registry
        .deploy(
            Deploy {
                name: name.into(),
                version: None,
                policy: None,
                params: vec![],
                limits: PluginLimits {
                    deadline_ms: 500,
                    // CPython needs more than the Rust plugins.
                    memory_bytes_max: if name == PYTHON_ENRICHER { 128 } else { 64 } << 20,
                    fuel_per_call: None,
                },
                capabilities: vec![],
                kind: if AGGREGATORS.contains(&name) {
                    runnel_broker::plugins::PluginKind::Aggregate
                } else {
                    runnel_broker::plugins::PluginKind::Enrich
                },
                backfill: None,
                tenant: None,
            },
            wasm,
            &sha,
        )
        .unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("machine: {}", machine(dir.path()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = BrokerLog::open(
        Arc::new(FsStorage),
        &dir.path().join("log"),
        &runnel_broker::log::LogSettings {
            checkpoint_interval_bytes: u64::MAX,
            ..Default::default()
        },
    )
    .unwrap()
    .0;
    rt.block_on(async {
        for b in 0..EVENTS / PER_BATCH {
            let events = (b * PER_BATCH..(b + 1) * PER_BATCH).map(event).collect();
            let frame = Batch {
                agent_id: "bench".into(),
                host: "h".into(),
                epoch: 1,
                first_seq: b,
                chunks: vec![Chunk { events }.encode()],
            }
            .encode_frame();
            log.append(check_batch(frame, 64 << 20).unwrap()).await;
        }
    });
    println!("log: {EVENTS} events of ~330 bytes, pipeline batches of 1024 events");
    let host = runnel_host::Runtime::new().unwrap();
    // Built once, when a chain first needs it.
    let python = std::cell::OnceCell::new();
    // (label, chain, pipeline_aggregator_threads: 0 = one per core)
    let chains: &[(&str, &[&str], usize)] = &[
        ("no plugin (read + commit only)", &[], 0),
        ("noop", &["noop"], 0),
        ("geo-enrich (rewrites every event)", &["geo_enrich"], 0),
        ("sampler (keeps every event)", &["sampler"], 0),
        (
            "geo-enrich + sampler + noop",
            &["geo_enrich", "sampler", "noop"],
            0,
        ),
        (
            "events_per_type (aggregator, 1 min)",
            &["events_per_type"],
            0,
        ),
        ("unique_users (aggregator, distinct)", &["unique_users"], 0),
        (
            "geo-enrich + revenue (sum, quantiles)",
            &["geo_enrich", "revenue"],
            0,
        ),
        ("python large-amount (rewrites 90%)", &[PYTHON_ENRICHER], 0),
        ("dev set (geo + 5 aggregators), 1 thread", DEV_SET, 1),
        ("dev set, aggregators one per core", DEV_SET, 0),
    ];
    // `cargo bench` passes `--bench`; the first other argument filters the chains.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for (i, (label, chain, threads)) in chains.iter().enumerate() {
        if filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
            continue;
        }
        let mut rates = Vec::new();
        let mut costs = Vec::new();
        for run in 0..RUNS {
            let state = dir.path().join(format!("state-{i}-{run}"));
            let registry = Registry::open(&state).unwrap();
            // As in a broker with its archive on (the default): committed rows are also
            // queued for the `agg_<name>` tables.
            registry.set_archive_rows(true).unwrap();
            for name in *chain {
                if *name == PYTHON_ENRICHER {
                    deploy(&registry, name, python.get_or_init(python_component));
                    continue;
                }
                let deployed = if AGGREGATORS.contains(name) {
                    name.to_string()
                } else {
                    name.replace('_', "-")
                };
                deploy(&registry, &deployed, &component(name));
            }
            let topic = |name: &str| {
                runnel_broker::topics::open(
                    Arc::new(FsStorage),
                    &state.join(name),
                    &Default::default(),
                )
                .unwrap()
                .0
            };
            // The chain's output is recorded for `enriched_events`, as with the archive on.
            let (writer, _) = runnel_broker::topics::open_with(
                Arc::new(FsStorage),
                &state.join("enriched"),
                &Default::default(),
                runnel_broker::topics::enriched::Record::last_offset_of,
            )
            .unwrap();
            let topics = Topics {
                dead_letters: topic("dead_letters"),
                late_events: topic("late_events"),
                enriched: Some(runnel_broker::pipeline::EnrichedTopic {
                    writer,
                    archived: Default::default(),
                }),
            };
            let pipeline = Pipeline::start(
                host.clone(),
                registry.clone(),
                log.clone(),
                topics,
                Settings {
                    batch_events: 1024,
                    pause_after_failing_batches: 3,
                    aggregator_threads: *threads,
                    isolation: Isolation {
                        calls_max: 2048,
                        time_max: Duration::from_secs(2),
                    },
                    commit_interval: Duration::from_millis(100),
                    // The broker's defaults (`aggregate_open_windows_max` 100,000: room for a
                    // session per user of the log's 50,000).
                    window: runnel_broker::BrokerConfig::default().window_settings(),
                    agent_clock_skew_max_ms: 60_000,
                    tenants: Arc::default(),
                },
            )
            .unwrap();
            // Timed from the first commit, so loading the plugins does not count.
            let offset = || pipeline.shared.offset.load(Ordering::Acquire);
            while offset() == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let (started, first) = (Instant::now(), offset());
            while offset() < EVENTS {
                std::thread::sleep(Duration::from_micros(200));
            }
            let secs = started.elapsed().as_secs_f64();
            pipeline.stop();
            rates.push((EVENTS - first) as f64 / secs);
            // Each plugin's cost per event, as `plugin list` shows it (the last run's).
            costs = registry
                .list()
                .unwrap()
                .into_iter()
                .map(|(p, s)| {
                    let fold = if p.kind == runnel_broker::plugins::PluginKind::Aggregate {
                        format!(" + fold {:.0}", s.fold_ns_per_event())
                    } else {
                        String::new()
                    };
                    // What went to the side topics instead, when anything did.
                    let side = [
                        ("failed", s.errors),
                        ("refused", s.rows_refused),
                        ("late", s.late_events),
                    ]
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(what, n)| format!(" {what} {n}"))
                    .collect::<String>();
                    format!("{} {:.0}{fold}{side}", p.name, s.ns_per_event())
                })
                .collect();
        }
        let spread: Vec<String> = rates.iter().map(|r| format!("{:.0}k", r / 1e3)).collect();
        println!(
            "{label:<42} median {:>7.0}k events/s  (runs: {})",
            median(rates) / 1e3,
            spread.join(", ")
        );
        if chain.len() > 1 {
            println!("{:<42} ns/event: {}", "", costs.join(", "));
        }
    }
}
