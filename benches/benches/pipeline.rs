//! Pipeline load benchmark against the real release binaries.
//!
//! (a) **Agent ingest**: `runnel-agent` pinned to one core (`taskset`), spool fsync on, no broker
//!     (everything stays in the spool); a closed-loop HTTP load generator on the other core.
//! (b) **End to end**: broker + agent sharing the machine with the load generator; the clock stops
//!     when the broker's log holds every event.
//!
//! Run: `cargo build --release --bins && cargo bench -p runnel-benches --bench pipeline`.
//! Tunables (environment): `RUNNEL_BENCH_SECS` (per ingest run, default 10), `RUNNEL_BENCH_RUNS`
//! (default 3), `RUNNEL_BENCH_EVENTS` (per end-to-end run, default 1,000,000),
//! `RUNNEL_BENCH_BATCH` (events per request, default 1000), `RUNNEL_BENCH_EVENT_BYTES` (default
//! 300), `RUNNEL_BENCH_CONNECTIONS` (default 8).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use runnel_benches::{
    Guard, admin_token, agent_cmd, body, broker_and_agent, enroll, env, free_port, machine, median,
    process_cpu_seconds, release_bin, spawn, wait_ready,
};

struct Settings {
    secs: u64,
    runs: u64,
    e2e_events: u64,
    batch: usize,
    event_bytes: usize,
    connections: usize,
}

/// Bodies prepared up front so the generator only sends bytes.
fn bodies(first_id: u64, requests: usize, s: &Settings) -> Vec<bytes::Bytes> {
    (0..requests)
        .map(|r| body(first_id + (r * s.batch) as u64, s.batch, s.event_bytes).into())
        .collect()
}

struct Load {
    events: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// Closed loop: `connections` tasks send the next body as soon as the last one is answered 202,
/// until `deadline` or the bodies run out.
async fn closed_loop(
    url: String,
    bodies: Vec<bytes::Bytes>,
    connections: usize,
    until: Option<Instant>,
    per_body: u64,
) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, bodies, next, url) =
            (client.clone(), bodies.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let (mut events, mut bytes) = (0u64, 0u64);
            loop {
                if until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(b) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(
                    resp.status().as_u16(),
                    202,
                    "{}",
                    resp.text().await.unwrap_or_default()
                );
                let _ = resp.bytes().await;
                hist.record(t.elapsed().as_micros() as u64).unwrap();
                events += per_body;
                bytes += b.len() as u64;
            }
            (hist, events, bytes)
        }));
    }
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let (mut events, mut bytes) = (0, 0);
    for t in tasks {
        let (h, e, b) = t.await.unwrap();
        latency.add(h).unwrap();
        events += e;
        bytes += b;
    }
    Load {
        events,
        bytes,
        elapsed: started.elapsed(),
        latency,
    }
}

/// Restricts this process (and children started after) to `cpus`.
fn pin_self(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is valid, and the pointer and size describe it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// (a) Agent ingest on one core, spool fsync on.
async fn agent_ingest(s: &Settings, run: u64) -> (f64, f64, f64, f64, Histogram<u64>) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    // A CA and a certificate the agent can load, from a broker stopped before the load: no
    // broker listens, so everything stays in the spool.
    let ca = dir.path().join("ca.pem");
    let broker_dir = dir.path().join("ca-source");
    let admin = free_port();
    let source = Command::new(release_bin("runnel"))
        .args(["broker", "--data-dir"])
        .arg(&broker_dir)
        .arg("--quic-addr=127.0.0.1:0")
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut source = Guard(source);
    wait_ready(&format!("http://127.0.0.1:{admin}/readyz")).await;
    let tls = enroll(&broker_dir, admin, dir.path(), "bench-agent");
    let _ = source.0.kill();
    std::fs::copy(broker_dir.join("tls/ca.pem"), &ca).unwrap();
    let http = free_port();
    let agent = spawn(&mut agent_cmd(dir.path(), http, 9, &ca, &tls, Some(1)));
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    // Bodies for the run at up to 600k events/s (prepared up front: about 180 MB per second of
    // run); a run that exhausts them ends early and reports its real duration.
    let requests = ((s.secs * 600_000) as usize / s.batch).max(64);
    let prepared = bodies(run * 1_000_000_000, requests, s);
    let cpu0 = process_cpu_seconds(agent.0.id());
    let until = Instant::now() + Duration::from_secs(s.secs);
    let load = closed_loop(
        format!("http://127.0.0.1:{http}/v1/events"),
        prepared,
        s.connections,
        Some(until),
        s.batch as u64,
    )
    .await;
    let cpu = process_cpu_seconds(agent.0.id()) - cpu0;
    drop(agent);
    let secs = load.elapsed.as_secs_f64();
    let eps = load.events as f64 / secs;
    let mibps = load.bytes as f64 / secs / (1 << 20) as f64;
    let cpu_util = cpu / secs;
    println!(
        "  run {run}: {:>9.0} events/s {:>7.1} MiB/s  agent CPU {:>4.0}% of a core  {:>9.0} events per CPU-second  p50 {:.1} ms p99 {:.1} ms",
        eps,
        mibps,
        cpu_util * 100.0,
        load.events as f64 / cpu,
        load.latency.value_at_quantile(0.5) as f64 / 1e3,
        load.latency.value_at_quantile(0.99) as f64 / 1e3
    );
    (eps, mibps, cpu_util, load.events as f64 / cpu, load.latency)
}

/// (b) End to end: from the first request until the broker log holds every event.
async fn end_to_end(s: &Settings, run: u64) -> (f64, f64) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let (_broker, _agent, http, admin) = broker_and_agent(dir.path()).await;
    let requests = (s.e2e_events as usize).div_ceil(s.batch);
    let prepared = bodies(run * 1_000_000_000, requests, s);
    let total_bytes: u64 = prepared.iter().map(|b| b.len() as u64).sum();
    let target = (requests * s.batch) as u64;
    let started = Instant::now();
    let load = closed_loop(
        format!("http://127.0.0.1:{http}/v1/events"),
        prepared,
        s.connections,
        None,
        s.batch as u64,
    )
    .await;
    assert_eq!(load.events, target);
    let stats_url = format!("http://127.0.0.1:{admin}/v1/log/stats");
    let token = admin_token(&dir.path().join("broker"));
    loop {
        let v: serde_json::Value = reqwest::Client::new()
            .get(&stats_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["records"].as_u64() >= Some(target) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (eps, mibps) = (
        target as f64 / secs,
        total_bytes as f64 / secs / (1 << 20) as f64,
    );
    println!(
        "  run {run}: {target} events in {secs:.2} s: {eps:>9.0} events/s {mibps:>7.1} MiB/s (agent accepted them in {:.2} s)",
        load.elapsed.as_secs_f64()
    );
    (eps, mibps)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let s = Settings {
        secs: env("RUNNEL_BENCH_SECS", 10),
        runs: env("RUNNEL_BENCH_RUNS", 3),
        e2e_events: env("RUNNEL_BENCH_EVENTS", 1_000_000),
        batch: env("RUNNEL_BENCH_BATCH", 1000) as usize,
        event_bytes: env("RUNNEL_BENCH_EVENT_BYTES", 300) as usize,
        connections: env("RUNNEL_BENCH_CONNECTIONS", 8) as usize,
    };
    println!("machine: {}", machine(&std::env::temp_dir()));
    println!(
        "events of {} bytes of JSON, {} per request, {} connections, closed loop",
        s.event_bytes, s.batch, s.connections
    );
    // In (a) the load generator runs on core 0 and the agent is pinned to core 1.
    pin_self(&[0]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("(a) agent ingest, spool fsync on, agent pinned to one core, {} s per run", s.secs);
        let mut a = Vec::new();
        for run in 0..s.runs {
            a.push(agent_ingest(&s, run).await);
        }
        println!(
            "(a) median: {:.0} events/s, {:.1} MiB/s, agent CPU {:.0}%, {:.0} events per agent CPU-second",
            median(a.iter().map(|r| r.0).collect()),
            median(a.iter().map(|r| r.1).collect()),
            median(a.iter().map(|r| r.2).collect()) * 100.0,
            median(a.iter().map(|r| r.3).collect()),
        );
        // In (b) everything shares every core, as on a real host.
        let all: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        pin_self(&all);
        println!("(b) end to end to the broker log, {} events per run", s.e2e_events);
        let mut b = Vec::new();
        for run in 0..s.runs {
            b.push(end_to_end(&s, 100 + run).await);
        }
        println!(
            "(b) median: {:.0} events/s, {:.1} MiB/s",
            median(b.iter().map(|r| r.0).collect()),
            median(b.iter().map(|r| r.1).collect()),
        );
    });
}
