//! What checking events against their schemas costs at the agent (issue #20): requests of 1,000
//! fintech events of 300 bytes (`runnel bench ingest`'s default workload), the example schemas
//! of `schemas/fintech/` registered, in ns per event:
//! - `parse + validate`: the request body into events (what ingest does before the check);
//! - `schema check`: `runnel_agent::http::check_schemas` on those events (each event's
//!   `properties` parsed and checked against its type's schema), every event valid;
//! - `schema check, 10% invalid`: the same with one event in ten missing `currency`, which
//!   builds the rejection's text;
//! - `no schemas`: the check with an empty registry (what every agent pays without schemas).
//!
//! Run: `cargo bench -p runnel-benches --bench schemas`. The full-rate ingest figure (agent and
//! broker, schemas on against off in one run) is `benches/schemas_ab.sh`.

use std::time::Instant;

use runnel_benches::{machine, median};
use runnel_event::{BodyFormat, EnvelopeLimits, parse_body};
use runnel_loadgen::workload::{Scenario, Spec, Workload};
use runnel_schema::{Document, Schemas};

const BATCH: usize = 1000;
const SAMPLES: usize = 9;
const CALLS: usize = 20;

fn fintech() -> Document {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/fintech");
    let mut doc = Document {
        generation: 1,
        ..Document::default()
    };
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let ty = path.file_stem().unwrap().to_str().unwrap().to_string();
        let schema = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc.types.entry(ty).or_default().insert(1, schema);
    }
    assert_eq!(doc.types.len(), 4, "{}", dir.display());
    doc
}

fn main() {
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
    // One event in ten without `currency`, which every example schema requires.
    let broken: Vec<_> = parsed
        .iter()
        .map(|events| {
            let mut events = events.clone();
            for (i, (_, ev)) in events.iter_mut().enumerate() {
                if i % 10 == 0 {
                    let mut p: serde_json::Value =
                        serde_json::from_str(ev.properties.as_deref().unwrap()).unwrap();
                    p.as_object_mut().unwrap().remove("currency");
                    ev.properties = Some(p.to_string());
                }
            }
            events
        })
        .collect();

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
    let schemas = Schemas::compile(&fintech()).unwrap();
    let empty = Schemas::default();
    let run = |s: &Schemas, input: &[(usize, runnel_event::Event)], valid: usize| {
        let mut events = input.to_vec();
        let mut rejected = Vec::new();
        runnel_agent::http::check_schemas(s, &mut events, &mut rejected);
        assert_eq!(events.len(), valid, "{:?}", rejected.first());
        std::hint::black_box(rejected);
    };
    let parse = per_event(&mut |i| {
        let p = parse_body(&bodies[i % bodies.len()], BodyFormat::Json, &limits, now);
        assert_eq!(p.events.len(), BATCH);
    });
    let clone = per_event(&mut |i| {
        std::hint::black_box(parsed[i % parsed.len()].clone());
    });
    let none = per_event(&mut |i| run(&empty, &parsed[i % 8], BATCH)) - clone;
    let check = per_event(&mut |i| run(&schemas, &parsed[i % 8], BATCH)) - clone;
    let invalid = per_event(&mut |i| run(&schemas, &broken[i % 8], BATCH - BATCH / 10)) - clone;
    println!(
        "schema check at the agent, fintech events of 300 bytes, the schemas of schemas/fintech, batches of {BATCH}, median of {SAMPLES} samples:"
    );
    println!("  parse + validate (no schemas):   {parse:>8.0} ns/event");
    println!("  no schemas registered:           {none:>8.1} ns/event");
    println!("  schema check, every event valid: {check:>8.0} ns/event");
    println!("  schema check, 10% invalid:       {invalid:>8.0} ns/event");
    println!(
        "  ingest ceiling on one core, parse + check: {:.0}k events/s (parse alone {:.0}k)",
        1e6 / (parse + check),
        1e6 / parse
    );
}
