//! Arrow Flight, in process against a real broker (`runnel_broker::start`) on 127.0.0.1:
//! - bulk `DoGet` of the `events` table (1,000,000 events): bytes of Arrow IPC received per
//!   second, raw and decoded into record batches;
//! - a small aggregate query (`events_per_type`, a few thousand rows: `GetFlightInfo` then
//!   `DoGet`, decoded) p50/p99/max, over plain Flight and over Flight SQL
//!   (`SELECT * FROM events_per_type`), the result cache hit and missed, idle and while events
//!   are appended and aggregated at half of the capacity measured first (the rate at which the
//!   pipeline with `events_per_type` keeps up with appends as fast as they go).
//!
//! Run: `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml &&
//! cargo bench -p runnel-benches --bench flight`; `RUNNEL_BENCH_FLIGHT_SQL_PLANS_MAX=0` plans every
//! SQL statement every time (the broker's `flight_sql_plans_max`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightDescriptor, Ticket};
use futures::{StreamExt, TryStreamExt};
use runnel_benches::{flight_sql_rows as sql, machine, median};
use runnel_broker::log::check_batch;
use runnel_broker::plugins::{Deploy, PluginLimits};
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::FsStorage;
use tonic::transport::Channel;

const EVENTS: u64 = 1_000_000;
const PER_BATCH: u64 = 1000;
const TOKEN: &str = "bench-token-0123456789abcdef";
const QUERIES: usize = 500;
/// Events appended as fast as possible to measure the capacity.
const CAPACITY_EVENTS: u64 = 400_000;

const TYPES: [&str; 4] = ["page.view", "search", "cart.add", "checkout.completed"];
const PLATFORMS: [&str; 3] = ["android", "ios", "web"];

fn event(n: u64) -> Event {
    Event {
        event_id: format!("ev-{n:012}"),
        event_type: TYPES[(n % 4) as usize].into(),
        // 10 ms of event time per event: 1M events span 10,000 s, 167 one-minute windows.
        timestamp_ms: 1_763_726_400_000 + n as i64 * 10,
        received_at_ms: 1_763_726_400_000 + n as i64 * 10,
        schema_version: 1,
        user_id: Some(format!("user-{:06}", n % 50_000)),
        session_id: Some(format!("s-{:06}", n % 7_000)),
        device_id: None,
        platform: Some(PLATFORMS[(n / 4 % 3) as usize].into()),
        app_version: Some("4.2.0".into()),
        properties: Some(format!(
            r#"{{"amount":{}.5,"currency":"KES","ip":"198.51.100.{}"}}"#,
            n % 997,
            n % 250
        )),
    }
}

async fn append(log: &runnel_broker::log::BrokerLog, first: u64, count: u64, seq: u64) {
    let events = (first..first + count).map(event).collect();
    let frame = Batch {
        agent_id: "bench".into(),
        host: "h".into(),
        epoch: 1,
        first_seq: seq,
        chunks: vec![Chunk { events }.encode()],
    }
    .encode_frame();
    log.append(check_batch(frame, 64 << 20).unwrap()).await;
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

async fn ticket(client: &mut FlightServiceClient<Channel>, table: &str) -> Ticket {
    // "TABLE?N": a command descriptor with limit N (a query the result cache has not seen).
    let descriptor = match table.split_once('?') {
        Some((t, n)) => FlightDescriptor::new_cmd(format!(r#"{{"table":"{t}","limit":{n}}}"#)),
        None => FlightDescriptor::new_path(vec![table.into()]),
    };
    let info = client
        .get_flight_info(authed(descriptor))
        .await
        .unwrap()
        .into_inner();
    info.endpoint[0].ticket.clone().unwrap()
}

/// Prints `what: p50, p99, max` of query latencies recorded in microseconds.
fn print_latencies(what: &str, h: &hdrhistogram::Histogram<u64>) {
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({QUERIES} queries)",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

/// Fetches a table; returns (IPC bytes, rows).
async fn fetch(client: &mut FlightServiceClient<Channel>, table: &str, decode: bool) -> (u64, u64) {
    let t = ticket(client, table).await;
    let stream = client.do_get(authed(t)).await.unwrap().into_inner();
    if !decode {
        let mut bytes = 0u64;
        let mut s = stream;
        while let Some(d) = s.message().await.unwrap() {
            bytes += (d.data_header.len() + d.data_body.len()) as u64;
        }
        return (bytes, 0);
    }
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let b = bytes.clone();
    let counted = stream.map_ok(move |d| {
        b.fetch_add(
            (d.data_header.len() + d.data_body.len()) as u64,
            Ordering::Relaxed,
        );
        d
    });
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        counted.map_err(arrow_flight::error::FlightError::from),
    );
    let mut rows = 0u64;
    while let Some(b) = batches.next().await {
        rows += b.unwrap().num_rows() as u64;
    }
    drop(batches);
    let bytes = bytes.load(Ordering::Relaxed);
    (bytes, rows)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("machine: {}", machine(dir.path()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = runnel_broker::BrokerConfig {
            data_dir: dir.path().join("broker"),
            quic_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            flight_addr: "127.0.0.1:0".parse().unwrap(),
            flight_tokens: vec![TOKEN.into()],
            flight_rows_max: 2_000_000,
            // Room for every `events` block of the bulk run.
            flight_event_cache_bytes_max: 2 << 30,
            // 0 plans every SQL statement every time (as before plans were kept).
            flight_sql_plans_max: runnel_benches::env("RUNNEL_BENCH_FLIGHT_SQL_PLANS_MAX", 256)
                as usize,
            ..Default::default()
        };
        let broker = runnel_broker::start(cfg, Arc::new(FsStorage)).await.unwrap();
        let wasm = runnel_benches::component("events_per_type");
        broker
            .registry
            .deploy(
                Deploy {
                    name: "events_per_type".into(),
                    version: None,
                    policy: None,
                    params: vec![],
                    limits: PluginLimits {
                        deadline_ms: 500,
                        memory_bytes_max: 64 << 20,
                        fuel_per_call: None,
                    },
                    capabilities: vec![],
                    kind: runnel_broker::plugins::PluginKind::Aggregate,
                    backfill: None,
                    tenant: None,
                },
                &wasm,
                &runnel_broker::plugins::sha256_hex(&wasm),
            )
            .unwrap();
        for b in 0..EVENTS / PER_BATCH {
            append(&broker.log, b * PER_BATCH, PER_BATCH, b).await;
        }
        while broker.registry.pipeline_offset().unwrap() < EVENTS {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("log: {EVENTS} events of ~330 bytes, aggregated by events_per_type");
        // Capacity: append as fast as the log takes it; the pipeline (events_per_type) must
        // catch up.
        let started = Instant::now();
        let mut appended = EVENTS;
        let mut seq = EVENTS / PER_BATCH;
        while appended < EVENTS + CAPACITY_EVENTS {
            append(&broker.log, appended, PER_BATCH, seq).await;
            appended += PER_BATCH;
            seq += 1;
        }
        while broker.registry.pipeline_offset().unwrap() < appended {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let capacity = CAPACITY_EVENTS as f64 / started.elapsed().as_secs_f64();
        let ingest_rate = (capacity / 2.0) as u64;
        println!(
            "capacity: {:.0}k events/s appended and aggregated; the loaded runs ingest at half, {:.0}k events/s",
            capacity / 1e3,
            ingest_rate as f64 / 1e3
        );
        let url = format!("http://{}", broker.flight_addr.unwrap());
        // As pyarrow's client does: adaptive HTTP/2 windows.
        let channel = Channel::from_shared(url)
            .unwrap()
            .http2_adaptive_window(true)
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        let client_channel = channel.clone();
        let mut client = FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX);

        // The first read builds the events' Arrow blocks from the log; later ones find them.
        let started = Instant::now();
        let (cold_bytes, cold_rows) = fetch(&mut client, "events", true).await;
        println!(
            "DoGet events, first read ({cold_rows} events, {} MB of Arrow IPC, blocks built from the log): {:.2} GB/s",
            cold_bytes / 1_000_000,
            cold_bytes as f64 / started.elapsed().as_secs_f64() / 1e9
        );
        for decode in [false, true] {
            let mut rates = Vec::new();
            let mut last = (0, 0);
            for _ in 0..5 {
                let started = Instant::now();
                last = fetch(&mut client, "events", decode).await;
                rates.push(last.0 as f64 / started.elapsed().as_secs_f64());
            }
            let runs: Vec<String> = rates.iter().map(|r| format!("{:.2}", r / 1e9)).collect();
            println!(
                "DoGet events ({} MB of Arrow IPC{}): median {:.2} GB/s (runs: {})",
                last.0 / 1_000_000,
                if decode { ", decoded into record batches" } else { ", raw" },
                median(rates) / 1e9,
                runs.join(", ")
            );
        }

        let (_, rows) = fetch(&mut client, "events_per_type", true).await;
        let mut sql_client = FlightSqlServiceClient::new(client_channel.clone());
        sql_client.set_token(TOKEN.into());
        let sql_query = |label: String, cached: bool| {
            let mut client = sql_client.clone();
            async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                for i in 0..QUERIES {
                    // A LIMIT the cache has not seen misses it (the limit is pushed down).
                    let q = if cached {
                        "SELECT * FROM events_per_type".to_string()
                    } else {
                        format!("SELECT * FROM events_per_type LIMIT {}", 100_000 - i)
                    };
                    let started = Instant::now();
                    sql(&mut client, &q).await;
                    h.record(started.elapsed().as_micros() as u64).unwrap();
                }
                print_latencies(
                    &format!("Flight SQL SELECT * FROM events_per_type ({rows} rows, decoded), {label}"),
                    &h,
                );
            }
        };
        let query = |label: String, cached: bool| {
            let mut client = client.clone();
            async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                for i in 0..QUERIES {
                    let table = if cached {
                        "events_per_type".to_string()
                    } else {
                        format!("events_per_type?{}", 100_000 - i)
                    };
                    let started = Instant::now();
                    fetch(&mut client, &table, true).await;
                    h.record(started.elapsed().as_micros() as u64).unwrap();
                }
                print_latencies(
                    &format!(
                        "events_per_type query ({rows} rows, GetFlightInfo + DoGet, decoded), {label}"
                    ),
                    &h,
                );
            }
        };
        query("idle, result cache missed".into(), false).await;
        query("idle, result cache hit".into(), true).await;
        sql_query("idle, result cache missed".into(), false).await;
        sql_query("idle, result cache hit".into(), true).await;

        // The same while events are appended at half the capacity and aggregated.
        let stop = Arc::new(AtomicBool::new(false));
        let (log, s) = (broker.log.clone(), stop.clone());
        let ingest = tokio::spawn(async move {
            let mut n = appended;
            let first = appended;
            let mut seq = seq;
            let mut tick = tokio::time::interval(Duration::from_micros(
                1_000_000 * PER_BATCH / ingest_rate,
            ));
            while !s.load(Ordering::Acquire) {
                tick.tick().await;
                append(&log, n, PER_BATCH, seq).await;
                n += PER_BATCH;
                seq += 1;
            }
            n - first
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let load = format!("under {:.0}k events/s of ingest", ingest_rate as f64 / 1e3);
        query(format!("{load}, cache missed"), false).await;
        query(format!("{load}, cache hit"), true).await;
        sql_query(format!("{load}, cache missed"), false).await;
        sql_query(format!("{load}, cache hit"), true).await;
        stop.store(true, Ordering::Release);
        let appended = ingest.await.unwrap();
        println!(
            "  (ingest achieved {:.0}k events/s during the run)",
            appended as f64 / (started.elapsed().as_secs_f64() + 0.5) / 1e3
        );
        broker.shutdown().await;
    });
}
