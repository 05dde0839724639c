//! The broker pipeline with faults injected through the storage seams: a failed commit of its
//! state (redb), a failed sync of the dead letters and of the `enriched` topic. None loses or
//! double-counts an event once the broker restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use runnel_broker::log::{BrokerLog, LogSettings, check_batch};
use runnel_broker::pipeline::{Isolation, Pipeline, Settings, Topics};
use runnel_broker::plugins::{Deploy, PluginLimits, Registry};
use runnel_broker::topics;
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::fault::{Faults, FaultyStorage};
use runnel_segment::{FsStorage, Storage};

const MAX: usize = 1 << 20;

fn wasm(name: &str) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let path: PathBuf = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build the plugins)", path.display()))
}

fn ev(id: String) -> Event {
    Event {
        event_id: id,
        event_type: "order.placed".into(),
        timestamp_ms: 1,
        received_at_ms: 2,
        schema_version: 1,
        user_id: None,
        session_id: None,
        device_id: None,
        platform: None,
        app_version: None,
        properties: None,
    }
}

/// Appends `batches` batches of 100 events; every 37th event's id contains "poison".
async fn fill(log: &BrokerLog, batches: u64) -> (u64, Vec<String>) {
    let mut poisoned = Vec::new();
    let mut n = 0u64;
    for b in 0..batches {
        let events: Vec<Event> = (0..100)
            .map(|_| {
                n += 1;
                let id = if n.is_multiple_of(37) {
                    poisoned.push(format!("poison-{n}"));
                    format!("poison-{n}")
                } else {
                    format!("e-{n}")
                };
                ev(id)
            })
            .collect();
        let frame = Batch {
            agent_id: "agent-1".into(),
            host: "h".into(),
            epoch: 1,
            first_seq: b,
            chunks: vec![Chunk { events }.encode()],
        }
        .encode_frame();
        let ack = log.append(check_batch(frame, MAX).unwrap()).await;
        assert_eq!(ack.appended_events, 100, "{ack:?}");
    }
    (n, poisoned)
}

fn settings() -> Settings {
    Settings {
        batch_events: 128,
        pause_after_failing_batches: 3,
        aggregator_threads: 0,
        isolation: Isolation {
            calls_max: 2048,
            time_max: Duration::from_secs(5),
        },
        commit_interval: Duration::from_millis(100),
        window: runnel_window::Settings::default(),
        agent_clock_skew_max_ms: 60_000,
        tenants: Arc::default(),
    }
}

fn deploy(registry: &Registry, name: &str, component: &str, params: &[(&str, &str)]) {
    let bytes = wasm(component);
    let sha = runnel_broker::plugins::sha256_hex(&bytes);
    registry
        .deploy(
            Deploy {
                name: name.into(),
                version: None,
                policy: None,
                kind: runnel_broker::plugins::PluginKind::Enrich,
                backfill: None,
                tenant: None,
                params: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                limits: PluginLimits {
                    deadline_ms: 200,
                    memory_bytes_max: 64 << 20,
                    fuel_per_call: None,
                },
                capabilities: Vec::new(),
            },
            &bytes,
            &sha,
        )
        .unwrap();
}

/// Small segments, no checkpoints.
fn log_settings() -> LogSettings {
    LogSettings {
        segment_bytes_max: 1 << 20,
        batch_bytes_max: MAX,
        checkpoint_interval_bytes: u64::MAX,
        scan_sealed_at_open: false,
    }
}

fn open_log(dir: &Path) -> BrokerLog {
    BrokerLog::open(Arc::new(FsStorage), &dir.join("log"), &log_settings())
        .unwrap()
        .0
}

fn start(dir: &Path, registry: &Registry, log: &BrokerLog, storage: Arc<dyn Storage>) -> Pipeline {
    let (dead, _) =
        topics::open(storage, &dir.join("topics/dead_letters"), &log_settings()).unwrap();
    start_with(dir, registry, log, dead)
}

fn start_with(
    dir: &Path,
    registry: &Registry,
    log: &BrokerLog,
    dead_letters: topics::TopicWriter,
) -> Pipeline {
    start_enriched(dir, registry, log, dead_letters, None)
}

/// The pipeline with the `enriched` topic (as with the archive on) when `enriched` is given.
fn start_enriched(
    dir: &Path,
    registry: &Registry,
    log: &BrokerLog,
    dead_letters: topics::TopicWriter,
    enriched: Option<topics::TopicWriter>,
) -> Pipeline {
    let (late_events, _) = topics::open(
        Arc::new(FsStorage),
        &dir.join("topics/late_events"),
        &log_settings(),
    )
    .unwrap();
    Pipeline::start(
        runnel_host::Runtime::new().unwrap(),
        registry.clone(),
        log.clone(),
        Topics {
            dead_letters,
            late_events,
            enriched: enriched.map(|writer| runnel_broker::pipeline::EnrichedTopic {
                writer,
                archived: Default::default(),
            }),
        },
        settings(),
    )
    .unwrap()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dead_letter_ids(dir: &Path) -> Vec<String> {
    let (_, reader) = topics::open(
        Arc::new(FsStorage),
        &dir.join("topics/dead_letters"),
        &log_settings(),
    )
    .unwrap();
    let mut ids = Vec::new();
    topics::read_entries(&reader, 0, usize::MAX, |e| {
        let v: serde_json::Value = serde_json::from_slice(e).unwrap();
        ids.push(v["event"]["event_id"].as_str().unwrap().to_string());
        true
    })
    .unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_commit_counts_nothing_and_a_restart_counts_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let faults = Faults::new();
    let registry = Registry::open_with(d, Some(faults.clone())).unwrap();
    deploy(&registry, "counter", "noop", &[]);
    let log = open_log(d);
    let (total, _) = fill(&log, 10).await;

    faults.set_fail_sync(true);
    let pipeline = start(d, &registry, &log, Arc::new(FsStorage));
    let shared = pipeline.shared.clone();
    wait("the commit failure to show", || {
        shared.failure.lock().unwrap().is_some()
    });
    assert_eq!(
        shared.offset.load(Ordering::Acquire),
        0,
        "nothing committed"
    );
    assert!(faults.injected() > 0);
    pipeline.stop();
    drop(registry);

    // The restart: the fault is gone, the state is what was committed.
    faults.set_fail_sync(false);
    let registry = Registry::open(d).unwrap();
    assert_eq!(registry.pipeline_offset().unwrap(), 0);
    assert_eq!(registry.stats("counter").unwrap().events_in, 0);
    let pipeline = start(d, &registry, &log, Arc::new(FsStorage));
    let shared = pipeline.shared.clone();
    wait("the pipeline to catch up", || {
        shared.offset.load(Ordering::Acquire) == total
    });
    pipeline.stop();
    let stats = registry.stats("counter").unwrap();
    assert_eq!(stats.events_in, total);
    assert_eq!(stats.events_out, total);
    assert_eq!(registry.pipeline_offset().unwrap(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dead_letter_sync_commits_nothing_and_each_dead_letter_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::open(d).unwrap();
    deploy(
        &registry,
        "trapper",
        "trap_on_event",
        &[("poison", "poison")],
    );
    let log = open_log(d);
    let (total, poisoned) = fill(&log, 10).await;

    let faults = Faults::new();
    let faulty: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (dead, _) = topics::open(faulty, &d.join("topics/dead_letters"), &log_settings()).unwrap();
    faults.set_fail_sync(true);
    let pipeline = start_with(d, &registry, &log, dead);
    let shared = pipeline.shared.clone();
    wait("the dead-letter sync failure to show", || {
        shared.failure.lock().unwrap().is_some()
    });
    // The pipeline retries; the poisoned topic keeps failing, so nothing is committed until a
    // restart (a retry must not skip entries whose sync failed).
    std::thread::sleep(runnel_broker::pipeline::RETRY_AFTER_FAILURE + Duration::from_millis(500));
    assert!(shared.failure.lock().unwrap().is_some());
    assert_eq!(shared.offset.load(Ordering::Acquire), 0);
    assert_eq!(registry.pipeline_offset().unwrap(), 0);
    assert_eq!(registry.stats("trapper").unwrap().events_in, 0);
    pipeline.stop();

    // The restart, with a healthy disk: the batch runs again and its dead letters are written
    // once, whatever reached the file before the failed sync.
    let pipeline = start(d, &registry, &log, Arc::new(FsStorage));
    let shared = pipeline.shared.clone();
    wait("the pipeline to catch up", || {
        shared.offset.load(Ordering::Acquire) == total
    });
    pipeline.stop();
    let mut ids = dead_letter_ids(d);
    ids.sort();
    let mut want = poisoned.clone();
    want.sort();
    assert_eq!(ids, want, "each poisoned event once, nothing else");
    let stats = registry.stats("trapper").unwrap();
    assert_eq!(stats.events_in, total);
    assert_eq!(stats.errors, poisoned.len() as u64);
    assert_eq!(stats.events_out, total - poisoned.len() as u64);
}

/// Opens the `enriched` topic in `dir` on `storage`.
fn enriched_topic(
    dir: &Path,
    storage: Arc<dyn Storage>,
) -> (topics::TopicWriter, runnel_segment::LogReader) {
    topics::open_with(
        storage,
        &dir.join("topics/enriched"),
        &log_settings(),
        topics::enriched::Record::last_offset_of,
    )
    .unwrap()
}

/// The chain's output as the `enriched` topic holds it: with the archive on, a failed sync of
/// the topic commits nothing (the offset stays), and after a restart every event that passed
/// the chain is in the topic once, with the events the trapping plugin failed on left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enriched_sync_commits_nothing_and_each_event_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::open(d).unwrap();
    deploy(
        &registry,
        "trapper",
        "trap_on_event",
        &[("poison", "poison")],
    );
    let log = open_log(d);
    let (total, poisoned) = fill(&log, 10).await;

    let faults = Faults::new();
    let faulty: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (enriched, _) = enriched_topic(d, faulty);
    faults.set_fail_sync(true);
    let (dead, _) = topics::open(
        Arc::new(FsStorage),
        &d.join("topics/dead_letters"),
        &log_settings(),
    )
    .unwrap();
    let pipeline = start_enriched(d, &registry, &log, dead, Some(enriched));
    let shared = pipeline.shared.clone();
    wait("the enriched sync failure to show", || {
        shared.failure.lock().unwrap().is_some()
    });
    std::thread::sleep(runnel_broker::pipeline::RETRY_AFTER_FAILURE + Duration::from_millis(500));
    assert!(shared.failure.lock().unwrap().is_some());
    assert_eq!(shared.offset.load(Ordering::Acquire), 0);
    assert_eq!(registry.pipeline_offset().unwrap(), 0);
    pipeline.stop();

    // The restart, with a healthy disk: each batch's output is recorded once, whatever reached
    // the file before the failed sync.
    let (enriched, reader) = enriched_topic(d, Arc::new(FsStorage));
    let (dead, _) = topics::open(
        Arc::new(FsStorage),
        &d.join("topics/dead_letters"),
        &log_settings(),
    )
    .unwrap();
    let pipeline = start_enriched(d, &registry, &log, dead, Some(enriched));
    let shared = pipeline.shared.clone();
    wait("the pipeline to catch up", || {
        shared.offset.load(Ordering::Acquire) == total
    });
    pipeline.stop();
    let mut offsets = Vec::new();
    let mut with_events = 0;
    for r in reader.read(0, usize::MAX, usize::MAX).unwrap() {
        let record = topics::enriched::Record::decode(&r.payload).unwrap();
        assert_eq!(record.links()[0].plugin, "trapper", "{record:?}");
        if let Some(events) = &record.events {
            let view = runnel_batch::BatchView::new(events).unwrap();
            assert_eq!(view.len() as u64, record.len());
            for i in 0..view.len() {
                assert!(!view.event(i).event_id().contains("poison"));
            }
            with_events += 1;
        }
        offsets.extend(record.offsets());
    }
    // Offsets are 0-based; event `n` (1-based) is at offset n - 1.
    let want: Vec<u64> = (1..=total)
        .filter(|n| !poisoned.contains(&format!("poison-{n}")))
        .map(|n| n - 1)
        .collect();
    assert_eq!(
        offsets, want,
        "each event that passed the chain once, in order"
    );
    assert!(
        with_events > 0,
        "batches with a failed event hold the chain's events"
    );
}

/// Appends `batches` batches of 100 `order.placed` events at event times 100 ms apart (the
/// `n`th event at `n * 100` ms), continuing from event `first`.
async fn fill_timed(log: &BrokerLog, first: u64, batches: u64) -> u64 {
    let mut n = first;
    for b in 0..batches {
        let events: Vec<Event> = (0..100)
            .map(|_| {
                n += 1;
                Event {
                    timestamp_ms: n as i64 * 100,
                    received_at_ms: n as i64 * 100,
                    ..ev(format!("t-{n}"))
                }
            })
            .collect();
        let frame = Batch {
            agent_id: "agent-1".into(),
            host: "h".into(),
            epoch: 1,
            first_seq: first / 100 + b,
            chunks: vec![Chunk { events }.encode()],
        }
        .encode_frame();
        log.append(check_batch(frame, MAX).unwrap()).await;
    }
    n
}

/// An aggregator's window state commits with the offset: a redb commit that fails mid-stream
/// (through the storage seam) commits nothing, and after a restart from the last good commit
/// every event is in exactly one window, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_keeps_window_state_and_offset_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let faults = Faults::new();
    let registry = Registry::open_with(d, Some(faults.clone())).unwrap();
    let bytes = wasm("count_by_type");
    let sha = runnel_broker::plugins::sha256_hex(&bytes);
    registry
        .deploy(
            Deploy {
                name: "per_type".into(),
                version: None,
                policy: None,
                kind: runnel_broker::plugins::PluginKind::Aggregate,
                backfill: None,
                tenant: None,
                params: Vec::new(),
                limits: PluginLimits {
                    deadline_ms: 200,
                    memory_bytes_max: 64 << 20,
                    fuel_per_call: None,
                },
                capabilities: Vec::new(),
            },
            &bytes,
            &sha,
        )
        .unwrap();
    let log = open_log(d);
    let half = fill_timed(&log, 0, 10).await;
    let pipeline = start(d, &registry, &log, Arc::new(FsStorage));
    let shared = pipeline.shared.clone();
    wait("the first half to commit", || {
        shared.offset.load(Ordering::Acquire) == half
    });

    // The second half arrives while every commit fails.
    faults.set_fail_sync(true);
    let total = fill_timed(&log, half, 10).await;
    wait("the commit failure to show", || {
        shared.failure.lock().unwrap().is_some()
    });
    assert_eq!(shared.offset.load(Ordering::Acquire), half);
    pipeline.stop();
    drop(registry);

    faults.set_fail_sync(false);
    let registry = Registry::open(d).unwrap();
    assert_eq!(registry.pipeline_offset().unwrap(), half);
    let pipeline = start(d, &registry, &log, Arc::new(FsStorage));
    let shared = pipeline.shared.clone();
    wait("the pipeline to catch up", || {
        shared.offset.load(Ordering::Acquire) == total
    });
    pipeline.stop();

    // Events 1..=2000 at 100 ms apart: windows of 1 min hold 599, 600, 600 and 201 events; the
    // watermark (199.5 s) finalized the first three (end + 5 s lateness).
    let (finals, _) = registry
        .final_rows("per_type", 0, i64::MIN, i64::MAX, usize::MAX)
        .unwrap()
        .expect("the rows of epoch 0");
    let counts: Vec<(i64, String)> = finals
        .iter()
        .map(|r| (r.start, String::from_utf8(r.values.clone()).unwrap()))
        .collect();
    assert_eq!(
        counts,
        vec![
            (0, "[599]".to_string()),
            (60_000, "[600]".to_string()),
            (120_000, "[600]".to_string())
        ]
    );
    let (meta, snapshot) = registry.aggregate_state("per_type").unwrap().unwrap();
    assert_eq!(meta.window, "tumbling 1m");
    let schema = runnel_window::Schema {
        dimensions: vec!["event_type".into()],
        measures: vec![("events".into(), runnel_window::MeasureKind::Count)],
        window: runnel_window::WindowSpec::Tumbling { size_ms: 60_000 },
        allowed_lateness_ms: 5_000,
    };
    let engine =
        runnel_window::Engine::restore(schema, runnel_window::Settings::default(), &snapshot)
            .unwrap();
    let open = engine.rows();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].window.start, 180_000);
    assert_eq!(open[0].values, vec![runnel_window::Value::Count(201)]);
    assert_eq!(registry.stats("per_type").unwrap().events_in, total);
}

/// A component is written through the storage seam: when storage fails, the deploy fails and
/// leaves no component file behind (it was once written around the seam).
#[test]
fn a_deploy_whose_component_cannot_be_stored_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let faults = Faults::new();
    let registry = Registry::open_with(d, Some(faults.clone())).unwrap();
    let bytes = wasm("noop");
    let sha = runnel_broker::plugins::sha256_hex(&bytes);
    faults.set_fail_sync(true);
    let result = registry.deploy(
        Deploy {
            name: "noop".into(),
            version: None,
            policy: None,
            kind: runnel_broker::plugins::PluginKind::Enrich,
            backfill: None,
            tenant: None,
            params: Vec::new(),
            limits: PluginLimits {
                deadline_ms: 200,
                memory_bytes_max: 64 << 20,
                fuel_per_call: None,
            },
            capabilities: Vec::new(),
        },
        &bytes,
        &sha,
    );
    assert!(result.is_err(), "the deploy succeeded with failing storage");
    assert!(faults.injected() > 0);
    let path = registry.wasm_path("noop", &sha);
    assert!(
        !path.exists(),
        "{} was written around the seam",
        path.display()
    );
    faults.set_fail_sync(false);
    assert!(registry.plugins().unwrap().is_empty());
}
