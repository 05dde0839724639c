//! The agent's edge plugin path: `runnel dev`'s edge plugin (`pii-redact`) on requests of 1,000
//! fintech events of 300 bytes (`runnel bench ingest`'s default workload), in ns per event:
//! - `parse + validate`: the request body into events (what ingest does before any plugin);
//! - `plugin call`: the plugin alone, on a batch already encoded (guest decode, the plugin's
//!   work, its answer, the host's checks of the answer);
//! - `edge chain`: everything the agent does around the plugin as well (the batch encoding, the
//!   call, each replacement checked against the envelope rules and turned back into an event).
//!
//! Run: `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml &&
//! cargo bench -p runnel-benches --bench edge` (`RUNNEL_BENCH_EDGE_WASM=FILE`: another build of the
//! plugin).

use std::time::Instant;

use runnel_agent::edge::EdgeChain;
use runnel_batch::BatchWriter;
use runnel_benches::{machine, median};
use runnel_event::{BodyFormat, EnvelopeLimits, parse_body};
use runnel_host::{Limits, Runtime};
use runnel_loadgen::workload::{Scenario, Spec, Workload};

const BATCH: usize = 1000;
const SAMPLES: usize = 7;
/// Requests per sample: about 50–100 ms of work each.
const CALLS: usize = 20;

fn main() {
    // RUNNEL_BENCH_EDGE_WASM: another build of the plugin, to compare two in one session.
    let path = std::env::var_os("RUNNEL_BENCH_EDGE_WASM").map_or_else(
        || runnel_benches::component_path("pii_redact"),
        std::path::PathBuf::from,
    );
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("machine: {}", machine(&std::env::temp_dir()));
    let workload = Workload::new(Spec {
        scenario: Scenario::Fintech,
        batch: BATCH,
        event_bytes: 300,
        dup_ratio: 0.0,
        invalid_ratio: 0.0,
        run_id: 1,
    });
    let limits = EnvelopeLimits::default();
    let now = runnel_event::now_ms();
    let bodies: Vec<Vec<u8>> = (0..8).map(|r| workload.body(r, now)).collect();
    let parsed: Vec<_> = bodies
        .iter()
        .map(|b| parse_body(b, BodyFormat::Json, &limits, now).events)
        .collect();
    assert!(parsed.iter().all(|p| p.len() == BATCH));

    let per_event = |f: &mut dyn FnMut(usize)| {
        let samples: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                for i in 0..CALLS {
                    f(i);
                }
                t.elapsed().as_nanos() as f64 / (CALLS * BATCH) as f64
            })
            .collect();
        median(samples)
    };

    let parse = per_event(&mut |i| {
        let p = parse_body(&bodies[i % bodies.len()], BodyFormat::Json, &limits, now);
        assert_eq!(p.events.len(), BATCH);
    });

    let rt = Runtime::new().unwrap();
    let mut plugin = rt
        .load_enricher("pii-redact", &wasm, vec![], Limits::default())
        .unwrap();
    let batches: Vec<Vec<u8>> = parsed
        .iter()
        .map(|events| {
            let mut w = BatchWriter::with_capacity(events.len(), 300);
            for (_, e) in events {
                runnel_event::fields::push(&mut w, e);
            }
            w.finish()
        })
        .collect();
    let call = per_event(&mut |i| {
        let out = plugin.enrich(&batches[i % batches.len()]).unwrap();
        assert_eq!(out.fates.len(), BATCH);
    });

    let mut chain = EdgeChain::load(std::slice::from_ref(&path), Limits::default()).unwrap();
    let chain_ns = per_event(&mut |i| {
        let out = chain.run(parsed[i % parsed.len()].clone(), &limits);
        assert_eq!(out.events.len(), BATCH, "{:?}", out.rejected.first());
    });
    let clone = per_event(&mut |i| {
        std::hint::black_box(parsed[i % parsed.len()].clone());
    });

    println!(
        "pii-redact at the edge, fintech events of 300 bytes, batches of {BATCH}, median of {SAMPLES} samples:"
    );
    println!("  parse + validate (no plugin):   {parse:>8.0} ns/event");
    println!("  plugin call alone:              {call:>8.0} ns/event");
    println!(
        "  edge chain (encode, call, back): {:>8.0} ns/event ({:.0} around the call)",
        chain_ns - clone,
        chain_ns - clone - call
    );
    println!(
        "  ingest ceiling on one core, parse + edge chain: {:.0}k events/s",
        1e6 / (parse + chain_ns - clone)
    );
}
