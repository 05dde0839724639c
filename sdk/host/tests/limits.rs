//! The host against plugins that misbehave on purpose (`plugins/testing/`): a deadline stops
//! the loop, the memory cap stops the hog, exactly the poisoned events fail, and the host goes
//! on serving. Build the plugins first:
//! `cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml`.

mod common;
use common::wasm;

use std::time::{Duration, Instant};

use runnel_batch::BatchWriter;
use runnel_host::{FailureKind, Fate, Limits, LoadError, Runtime};

fn batch(ids: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for id in ids {
        w.push(
            1,
            2,
            1,
            [
                Some(&id),
                Some("page.view"),
                None,
                None,
                None,
                None,
                None,
                Some("{}"),
            ],
        );
    }
    w.finish()
}

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(50),
        memory_bytes_max: 16 << 20,
        ..Limits::default()
    }
}

#[test]
fn noop_keeps_every_event_in_one_call() {
    let rt = Runtime::new().unwrap();
    let mut p = rt
        .load_enricher("noop", &wasm("noop"), vec![], limits())
        .unwrap();
    let out = p
        .enrich(&batch((0..1024).map(|i| format!("e{i}"))))
        .unwrap();
    assert_eq!(out.fates.len(), 1024);
    assert!(out.fates.iter().all(|f| *f == Fate::Keep));
    assert_eq!((out.calls, out.failed_calls), (1, 0));
    assert_eq!(p.instances(), 1);
}

#[test]
fn exactly_the_poisoned_events_fail() {
    let rt = Runtime::new().unwrap();
    let params = vec![("poison".to_string(), "bad".to_string())];
    let mut p = rt
        .load_enricher("trap", &wasm("trap_on_event"), params, limits())
        .unwrap();
    let ids: Vec<String> = (0..100)
        .map(|i| {
            if i == 7 || i == 42 {
                format!("bad-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let out = p.enrich(&batch(ids.clone())).unwrap();
    for (i, fate) in out.fates.iter().enumerate() {
        match fate {
            Fate::Failed(f) => {
                assert!(i == 7 || i == 42, "event {i} failed: {f}");
                assert_eq!(f.kind, FailureKind::Trap);
                assert!(f.message.contains("poisoned event bad-"), "{}", f.message);
            }
            Fate::Keep => assert!(i != 7 && i != 42, "poisoned event {i} was kept"),
            other => panic!("event {i}: {other:?}"),
        }
    }
    assert!(out.calls > 2 && out.calls <= 64, "calls {}", out.calls);
    // The host made fresh instances and goes on: a clean batch passes in one call.
    let out = p
        .enrich(&batch((0..10).map(|i| format!("fine-{i}"))))
        .unwrap();
    assert!(out.fates.iter().all(|f| *f == Fate::Keep));
    assert_eq!(out.calls, 1);
}

#[test]
fn an_endless_loop_is_interrupted_at_the_deadline() {
    let rt = Runtime::new().unwrap();
    let lim = Limits {
        isolation_calls_max: 4,
        ..limits()
    };
    let mut p = rt
        .load_enricher("spin", &wasm("loop_forever"), vec![], lim)
        .unwrap();
    let started = Instant::now();
    let out = p.enrich(&batch((0..16).map(|i| format!("e{i}")))).unwrap();
    let took = started.elapsed();
    assert!(
        out.fates
            .iter()
            .all(|f| matches!(f, Fate::Failed(x) if x.kind == FailureKind::Timeout)),
        "{:?}",
        out.fates[0]
    );
    assert_eq!(out.calls, 4, "isolation stops at isolation_calls_max");
    // Four calls with a 50 ms deadline each: interrupted, not hung (generous bound for a noisy
    // machine; the point is that it returns at all).
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let rt = Runtime::new().unwrap();
    let lim = Limits {
        isolation_calls_max: 1,
        ..limits()
    };
    let mut p = rt
        .load_enricher("hog", &wasm("alloc_forever"), vec![], lim)
        .unwrap();
    for _ in 0..3 {
        let out = p.enrich(&batch(["x".to_string()])).unwrap();
        match &out.fates[0] {
            Fate::Failed(f) => assert_eq!(f.kind, FailureKind::OutOfMemory, "{f}"),
            other => panic!("{other:?}"),
        }
    }
    // One made at load, then a fresh one for each call after a failure.
    assert_eq!(p.instances(), 3);
}

#[test]
fn a_refused_init_or_a_non_component_refuses_the_load() {
    let rt = Runtime::new().unwrap();
    match rt.load_enricher("junk", b"not wasm", vec![], limits()) {
        Err(LoadError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
}

/// What the clock-and-random plugin saw: `(now_ms, random)` of the first event.
fn peek(limits: Limits) -> (u64, u64) {
    let rt = Runtime::new().unwrap();
    let mut p = rt
        .load_enricher("peek", &wasm("clock_and_random"), vec![], limits)
        .unwrap();
    let out = p.enrich(&batch(["a".to_string()])).unwrap();
    assert_eq!(out.fates, vec![Fate::Replace(0)]);
    let view = runnel_batch::BatchView::new(&out.replacements).unwrap();
    let props: serde_json::Value =
        serde_json::from_str(view.event(0).properties().unwrap()).unwrap();
    (
        props["now_ms"].as_u64().unwrap(),
        props["random"].as_u64().unwrap(),
    )
}

#[test]
fn clocks_and_randomness_are_deterministic_unless_granted() {
    let (now, random) = peek(limits());
    assert_eq!(now, 0, "the clock must read 0 without the capability");
    assert_eq!(
        peek(limits()).1,
        random,
        "randomness must be the same in every instance without the capability"
    );
    let granted = Limits {
        capabilities: runnel_host::Capabilities {
            clock: true,
            random: true,
        },
        ..limits()
    };
    let (now, r1) = peek(granted.clone());
    assert!(now > 1_700_000_000_000, "granted clock reads {now}");
    let (_, r2) = peek(granted);
    assert_ne!(r1, r2, "granted randomness differs between instances");
    assert!(runnel_host::Capabilities::parse(["clock", "net"]).is_err());
}
