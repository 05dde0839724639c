//! Criterion micro-benchmarks of the hot paths: JSON parse + validate, dedup, chunk encode,
//! batch frame encode/decode, log append (without fsync), and the agent's spool append (with
//! its fsync). The WASM call per batch is in `plugin_host`, the window update in
//! `window_engine`.
//!
//! Run: `cargo bench -p runnel-benches --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runnel_agent::dedup::{Dedup, id_hash};
use runnel_agent::spool::{Spool, SpoolOptions};
use runnel_benches::body;
use runnel_event::wire::{access_batch, decode_frame};
use runnel_event::{Batch, BodyFormat, Chunk, EnvelopeLimits, parse_body};
use runnel_segment::{FsStorage, LogOptions, SegmentLog};

const EVENTS: usize = 1000;

fn benches(c: &mut Criterion) {
    let json = body(0, EVENTS, 300);
    let limits = EnvelopeLimits::default();
    let mut g = c.benchmark_group("per_1000_events");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("parse_validate", |b| {
        b.iter(|| parse_body(black_box(json.as_bytes()), BodyFormat::Json, &limits, 0))
    });
    let events: Vec<_> = parse_body(json.as_bytes(), BodyFormat::Json, &limits, 0)
        .events
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let chunk = Chunk { events };
    g.bench_function("chunk_encode", |b| b.iter(|| black_box(&chunk).encode()));
    let encoded = chunk.encode();
    let batch = Batch {
        agent_id: "agent".into(),
        host: "host".into(),
        epoch: 1,
        first_seq: 0,
        chunks: vec![encoded.clone()],
    };
    g.bench_function("frame_encode", |b| {
        b.iter(|| black_box(&batch).encode_frame())
    });
    let frame = batch.encode_frame();
    g.bench_function("frame_decode_validate", |b| {
        b.iter(|| {
            let body = decode_frame(black_box(&frame), 64 << 20).unwrap();
            access_batch(&body).unwrap().1
        })
    });
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("ev-{i:012}")).collect();
    g.bench_function("dedup_insert", |b| {
        let mut d = Dedup::new(3_600_000, 10_000_000);
        let mut round = 0u64;
        b.iter(|| {
            round += 1;
            for id in &ids {
                d.insert(id_hash(id) ^ round, 0);
            }
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) =
        SegmentLog::open(Arc::new(FsStorage), dir.path(), LogOptions::default(), 0).unwrap();
    g.bench_function("log_append_no_fsync", |b| {
        b.iter(|| log.append(black_box(&encoded), 1, 0).unwrap())
    });
    g.finish();

    // The spool's durable append: one request's chunk, written and fsynced by the spool's
    // writer thread (a group commit of one, as under light load).
    let mut g = c.benchmark_group("spool_append_fsync");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(3));
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(
        Arc::new(FsStorage),
        spool_dir.path(),
        SpoolOptions {
            bytes_max: 64 << 30,
            segment_bytes_max: 256 << 20,
            record_bytes_max: 64 << 20,
            scan_sealed_at_open: false,
        },
    )
    .unwrap();
    g.bench_function("1000_events", |b| {
        b.iter(|| {
            rt.block_on(spool.append(black_box(encoded.clone()), 0))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(micro, benches);
criterion_main!(micro);
