//! Broker restart with a large log: the time from starting the release `runnel broker` on a
//! data dir that holds `RUNNEL_BENCH_RESTART_GIB` GiB of log (default 10) until `/readyz`
//! answers 200. Each start ends with `kill -9`, so every start recovers from a crash.
//!
//! Runs with the log's pages in the page cache ("warm") and with them dropped first ("cold",
//! `posix_fadvise(DONTNEED)` on every file of the log, which needs no root).
//!
//! Run: `cargo build --release --bins && cargo bench -p runnel-benches --bench restart`.
//! `RUNNEL_BENCH_RESTART_BINS=A:B` times other `runnel` binaries on the same log, interleaved
//! (before and after a change); `RUNNEL_BENCH_RESTART_RUNS` (3) starts of each;
//! `RUNNEL_BENCH_RESTART_DIR=DIR` keeps the data dir there and reuses a log already in it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use runnel_benches::{env, free_port, machine, median, release_bin, spawn, varied_event};
use runnel_broker::log::{BrokerLog, check_batch};
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::FsStorage;

const PER_BATCH: u64 = 1000;

/// Event `n` (see [`varied_event`]).
fn event(n: u64) -> Event {
    varied_event(n, 1_763_726_400_000 + n as i64, 1)
}

/// Fills `dir` (a broker log) with `bytes` of batches of 1,000 events, through the broker's own
/// log writer (with its checkpoints), with 16 batches in flight.
fn fill(dir: &Path, bytes: u64) -> (u64, Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let log = BrokerLog::open(
        Arc::new(FsStorage),
        dir,
        &runnel_broker::BrokerConfig::default().log_settings(),
    )
    .unwrap()
    .0;
    let chunk = Chunk {
        events: (0..PER_BATCH).map(event).collect(),
    }
    .encode();
    let frame = |seq| {
        Batch {
            agent_id: "bench".into(),
            host: "h".into(),
            epoch: 1,
            first_seq: seq,
            chunks: vec![chunk.clone()],
        }
        .encode_frame()
    };
    let batches = bytes.div_ceil(frame(0).len() as u64 + 28);
    rt.block_on(async {
        let acks = futures::stream::iter(0..batches)
            .then(|seq| {
                let frame = frame(seq);
                let log = log.clone();
                // Queued in order; the answer (after the fsync) is the stream's item.
                #[allow(clippy::async_yields_async)]
                async move {
                    log.submit(check_batch(frame, 64 << 20).unwrap()).await
                }
            })
            .buffered(16);
        let mut acks = std::pin::pin!(acks);
        while let Some(ack) = acks.next().await {
            assert_eq!(ack.appended_events, PER_BATCH as u32, "{}", ack.message);
        }
        log.close().await;
    });
    (batches * PER_BATCH, started.elapsed())
}

/// Drops the page cache of every file under `dir`.
fn drop_cache(dir: &Path) {
    for entry in walk(dir) {
        if let Ok(f) = std::fs::File::open(&entry) {
            #[allow(unsafe_code)]
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Starts `bin` on `data_dir` and returns the time until `/readyz` answers 200; then kills it
/// with SIGKILL.
fn time_to_ready(rt: &tokio::runtime::Runtime, bin: &Path, data_dir: &Path) -> Duration {
    let (quic, admin, flight) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let _in_rt = rt.enter();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let _broker = spawn(
        std::process::Command::new(bin)
            .arg("broker")
            .arg("--data-dir")
            .arg(data_dir)
            .arg(format!("--quic-addr=127.0.0.1:{quic}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg(format!("--flight-addr=127.0.0.1:{flight}")),
    );
    loop {
        if rt
            .block_on(client.get(&url).send())
            .is_ok_and(|r| r.status().is_success())
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{} not ready after 300 s",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let gib = env("RUNNEL_BENCH_RESTART_GIB", 10);
    let runs = env("RUNNEL_BENCH_RESTART_RUNS", 3) as usize;
    let bins: Vec<PathBuf> = match std::env::var("RUNNEL_BENCH_RESTART_BINS") {
        Ok(v) => v.split(':').map(PathBuf::from).collect(),
        Err(_) => vec![release_bin("runnel")],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("machine: {}", machine(dir.path()));
    let data_dir = match std::env::var_os("RUNNEL_BENCH_RESTART_DIR") {
        Some(d) => PathBuf::from(d),
        None => dir.path().join("broker"),
    };
    let (events, took) = if data_dir.join("log").exists() {
        println!("reusing the log in {}", data_dir.display());
        (0, Duration::ZERO)
    } else {
        fill(&data_dir.join("log"), gib << 30)
    };
    let log_bytes: u64 = walk(&data_dir.join("log"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log: {events} events, {:.2} GiB in {} files, written in {:.1} s",
        log_bytes as f64 / (1u64 << 30) as f64,
        walk(&data_dir.join("log")).len(),
        took.as_secs_f64()
    );
    // The first start after the fill does what an upgrade does once (e.g. writes indexes a
    // build without them did not): not timed.
    for bin in &bins {
        time_to_ready(&rt, bin, &data_dir);
    }
    for (label, cold) in [("warm", false), ("cold", true)] {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); bins.len()];
        for _ in 0..runs {
            for (i, bin) in bins.iter().enumerate() {
                if cold {
                    drop_cache(&data_dir);
                }
                times[i].push(time_to_ready(&rt, bin, &data_dir).as_secs_f64() * 1e3);
            }
        }
        for (bin, t) in bins.iter().zip(times) {
            let runs: Vec<String> = t.iter().map(|ms| format!("{ms:.0}")).collect();
            println!(
                "{label} start → ready, {}: median {:.0} ms (runs: {} ms)",
                bin.display(),
                median(t),
                runs.join(", ")
            );
        }
    }
}
