//! Host overhead of a plugin call: a no-op enricher (`plugins/testing/noop`) at batch sizes 1,
//! 64 and 1024, in ns per event, and the time to make a fresh instance.
//!
//! Run: `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml &&
//! cargo bench -p runnel-benches --bench plugin_host`.

use std::time::Instant;

use runnel_batch::BatchWriter;
use runnel_benches::{machine, median};
use runnel_host::{Limits, Runtime};

fn batch(n: usize) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for i in 0..n {
        let id = format!("ev-{i:012}");
        w.push(
            1_763_726_400_000,
            1_763_726_400_001,
            1,
            [
                Some(&id),
                Some("checkout.completed"),
                Some("user-000042"),
                None,
                None,
                Some("ios"),
                Some("4.2.0"),
                Some(r#"{"amount":129.5,"currency":"EUR"}"#),
            ],
        );
    }
    w.finish()
}

fn main() {
    let wasm = runnel_benches::component("noop");
    println!("machine: {}", machine(&std::env::temp_dir()));
    let rt = Runtime::new().unwrap();
    let started = Instant::now();
    let mut p = rt
        .load_enricher("noop", &wasm, vec![], Limits::default())
        .unwrap();
    println!(
        "load (compile + instantiate + init): {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let inst: Vec<f64> = (0..50)
        .map(|_| p.reinstantiate().unwrap().as_secs_f64() * 1e6)
        .collect();
    println!(
        "fresh instance (instantiate + init), median of 50: {:.1} µs",
        median(inst)
    );
    for size in [1usize, 64, 1024] {
        let b = batch(size);
        // Calls per sample: about 50 ms of work.
        let calls = (200_000 / size).max(20);
        let mut samples = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..calls {
                let out = p.enrich(&b).unwrap();
                assert_eq!(out.fates.len(), size);
            }
            samples.push(t.elapsed().as_nanos() as f64 / (calls * size) as f64);
        }
        println!(
            "no-op enricher, batch of {size:>4}: {:>8.1} ns/event (median of 7 samples, {calls} calls each)",
            median(samples)
        );
    }
}
