//! The archive, in process against a real broker (`runnel_broker::start`) on 127.0.0.1:
//! - archive throughput: a log of `RUNNEL_BENCH_ARCHIVE_EVENTS` events (default 10,000,000,
//!   about 300 bytes of JSON each, spread over 30 days of event time and 3 event types) is
//!   written through the broker's log writer with the archive off; the broker then starts with
//!   it on and the time until `GET /v1/archive` says every offset is committed gives events/s,
//!   MiB/s of log read and Parquet written, and the Parquet bytes against the log's;
//! - pruned queries over the archived events, over Flight SQL (`GetFlightInfo` then `DoGet`,
//!   decoded), p50/p99/max: one hour of one day, one event type over one day, and (a few runs,
//!   for scale) the whole table.
//!
//! - backfill: `events_per_type` deployed at the live offset, then its v2 with an extra
//!   dimension (`by_app_version=true`) with a backfill over the whole history (the log is
//!   kept, so it reads the log; `RUNNEL_BENCH_ARCHIVE_LOG_RETENTION_MS=0` deletes the archived
//!   segments and the backfill reads the archive): events/s from the deploy to the swap.
//!
//! Run: `cargo bench -p runnel-benches --bench archive`. `RUNNEL_BENCH_ARCHIVE_QUERIES` (50)
//! queries of each pruned kind.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;
use runnel_benches::{VARIED_TYPES, env, flight_sql_rows as sql, machine, varied_event};
use runnel_broker::log::{BrokerLog, check_batch};
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::FsStorage;
use tonic::transport::Channel;

const PER_BATCH: u64 = 1000;
const TOKEN: &str = "bench-token-0123456789abcdef";
const DAYS: i64 = 30;
/// 2025-11-21T12:00:00Z.
const START_MS: i64 = 1_763_726_400_000;
const DAY_MS: i64 = 86_400_000;
/// Event `n` of `total`: event time grows with `n` over [`DAYS`] days (as a log holds it),
/// ids and values vary as real ones do.
fn event(n: u64, total: u64) -> Event {
    let ts = START_MS + (n as i128 * (DAYS * DAY_MS) as i128 / total as i128) as i64;
    varied_event(n, ts, 150)
}

/// Writes `total` events to the log in `dir` through the broker's log writer, 16 batches in
/// flight.
fn fill(rt: &tokio::runtime::Runtime, dir: &Path, total: u64) {
    let log = BrokerLog::open(
        Arc::new(FsStorage),
        dir,
        &runnel_broker::BrokerConfig::default().log_settings(),
    )
    .unwrap()
    .0;
    rt.block_on(async {
        // Frames are made on the runtime's threads, in parallel, and submitted in sequence
        // order (the log takes a spool's batches in order only); the answers (after the fsync)
        // are awaited 16 at a time.
        let frames = futures::stream::iter(0..total.div_ceil(PER_BATCH))
            .map(|seq| {
                tokio::task::spawn(async move {
                    let first = seq * PER_BATCH;
                    let events = (first..(first + PER_BATCH).min(total))
                        .map(|n| event(n, total))
                        .collect();
                    Batch {
                        agent_id: "bench".into(),
                        host: "h".into(),
                        epoch: 1,
                        first_seq: seq,
                        chunks: vec![Chunk { events }.encode()],
                    }
                    .encode_frame()
                })
            })
            .buffered(4);
        let acks = frames
            .then(|frame| {
                let log = log.clone();
                #[allow(clippy::async_yields_async)]
                async move {
                    log.submit(check_batch(frame.unwrap(), 64 << 20).unwrap())
                        .await
                }
            })
            .buffered(16);
        let mut acks = std::pin::pin!(acks);
        while let Some(ack) = acks.next().await {
            assert!(ack.appended_events > 0, "{}", ack.message);
        }
        log.close().await;
    });
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        n += if p.is_dir() {
            dir_bytes(&p)
        } else {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    n
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs `n` queries made by `make(i)`; prints p50/p99/max and the rows of the first.
async fn latencies(
    client: &mut FlightSqlServiceClient<Channel>,
    what: &str,
    n: usize,
    make: impl Fn(usize) -> String,
) {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut first_rows = None;
    for i in 0..n {
        let q = make(i);
        let t = Instant::now();
        let rows = sql(client, &q).await;
        h.record(t.elapsed().as_micros() as u64).unwrap();
        first_rows.get_or_insert((q, rows));
    }
    let (q, rows) = first_rows.unwrap();
    println!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({n} queries; first: {q:?} → {rows} rows)",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

fn main() {
    let total = env("RUNNEL_BENCH_ARCHIVE_EVENTS", 10_000_000);
    let queries = env("RUNNEL_BENCH_ARCHIVE_QUERIES", 50) as usize;
    let dir = tempfile::tempdir().unwrap();
    println!("machine: {}", machine(dir.path()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data_dir = dir.path().join("broker");
    let t = Instant::now();
    fill(&rt, &data_dir.join("log"), total);
    let log_bytes = dir_bytes(&data_dir.join("log"));
    println!(
        "log: {total} events, {:.1} MiB, written in {:.1} s",
        log_bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    rt.block_on(async {
        let cfg = runnel_broker::BrokerConfig {
            data_dir: data_dir.clone(),
            quic_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            flight_addr: "127.0.0.1:0".parse().unwrap(),
            flight_tokens: vec![TOKEN.into()],
            archive_interval_ms: 1000,
            // Keeps the log unless asked: the bench compares its bytes with the archive's.
            log_retention_ms: env("RUNNEL_BENCH_ARCHIVE_LOG_RETENTION_MS", u64::MAX / 2),
            ..Default::default()
        };
        let started = Instant::now();
        let broker = runnel_broker::start(cfg, Arc::new(FsStorage)).await.unwrap();
        let status_url = format!("http://{}/v1/archive", broker.admin_addr);
        let http = reqwest::Client::new();
        let token = runnel_benches::admin_token(&data_dir);
        let status = loop {
            let s: serde_json::Value = http
                .get(&status_url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["tables"][0]["archived_end"].as_u64() == Some(total) {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let secs = started.elapsed().as_secs_f64();
        let warm = &status["tables"][0];
        let parquet = warm["bytes"].as_u64().unwrap();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "archive: {total} events in {secs:.1} s = {:.0} events/s; log read {:.1} MiB/s, \
             Parquet written {:.1} MiB/s; Parquet {:.1} MiB in {} files = {:.2} × the log's \
             {:.1} MiB ({:.1} bytes/event)",
            total as f64 / secs,
            mib(log_bytes) / secs,
            mib(parquet) / secs,
            mib(parquet),
            warm["files"],
            parquet as f64 / log_bytes as f64,
            mib(log_bytes),
            parquet as f64 / total as f64
        );

        let channel = Channel::from_shared(format!("http://{}", broker.flight_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_token(TOKEN.into());
        // Each query a different day or hour, so no result is reused.
        let day = |i: usize| START_MS + (i as i64 % (DAYS - 1) + 1) * DAY_MS;
        latencies(&mut client, "one hour of one day", queries, |i| {
            let from = day(i) + (i as i64 % 24) * 3_600_000;
            format!(
                "SELECT event_type, count(*) FROM events WHERE timestamp >= TIMESTAMP '{}' \
                 AND timestamp < TIMESTAMP '{}' GROUP BY event_type",
                rfc3339(from),
                rfc3339(from + 3_600_000)
            )
        })
        .await;
        latencies(&mut client, "one event type over one day", queries, |i| {
            format!(
                "SELECT platform, count(*) FROM events WHERE event_type = '{}' AND \
                 timestamp >= TIMESTAMP '{}' AND timestamp < TIMESTAMP '{}' GROUP BY platform",
                VARIED_TYPES[i % 3],
                rfc3339(day(i)),
                rfc3339(day(i) + DAY_MS)
            )
        })
        .await;
        latencies(&mut client, "whole table, unpruned (for scale)", 3, |i| {
            format!(
                "SELECT event_type, count(*) FROM events WHERE platform <> 'x{i}' GROUP BY event_type"
            )
        })
        .await;
        backfill(&broker, total).await;
        broker.shutdown().await;
    });
}

fn deploy(
    broker: &runnel_broker::RunningBroker,
    wasm: &[u8],
    version: &str,
    params: Vec<(String, String)>,
    backfill: Option<runnel_broker::plugins::BackfillFrom>,
) {
    use runnel_broker::plugins::{Deploy, PluginKind, PluginLimits};
    broker
        .registry
        .deploy(
            Deploy {
                name: "events_per_type".into(),
                version: Some(version.into()),
                policy: None,
                params,
                limits: PluginLimits {
                    deadline_ms: 500,
                    memory_bytes_max: 64 << 20,
                    fuel_per_call: None,
                },
                capabilities: vec![],
                kind: PluginKind::Aggregate,
                backfill,
                tenant: None,
            },
            wasm,
            &runnel_broker::plugins::sha256_hex(wasm),
        )
        .unwrap();
}

/// v1 of `events_per_type` at the live offset, then v2 backfilled over the `total` events:
/// events/s from the deploy until v2 is active.
async fn backfill(broker: &runnel_broker::RunningBroker, total: u64) {
    while broker.registry.pipeline_offset().unwrap() < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wasm = runnel_benches::component("events_per_type");
    deploy(broker, &wasm, "1", vec![], None);
    let started = Instant::now();
    deploy(
        broker,
        &wasm,
        "2",
        vec![("by_app_version".into(), "true".into())],
        Some(runnel_broker::plugins::BackfillFrom::All),
    );
    let log_start = broker.log.start_offset();
    loop {
        let active = broker
            .registry
            .plugins()
            .unwrap()
            .into_iter()
            .find(|p| p.name == "events_per_type")
            .map(|p| p.active);
        if active.as_deref() == Some("2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfill: events_per_type v2 over {total} events ({} from the archive, the rest from the log) in {secs:.1} s = {:.0} events/s, deploy to swap",
        log_start.min(total),
        total as f64 / secs
    );
}
