//! Dead letters re-driven end to end with the real binaries: an enricher that traps on some
//! events sends exactly those to `dead_letters` (typed: `plugin_error`, stage `enrich`, the
//! host's `trap`); re-driven before the fix they fail again and come back with the new
//! reason; after the plugin is fixed by a new version, `runnel dlq redrive --plugin` brings
//! exactly those events into the aggregate once (its counts equal a count of what was sent),
//! and a further re-drive changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_e2e::{Pipeline, plugin};
use serde_json::{Value, json};

const EVENTS: usize = 300;

fn is_poisoned(i: usize) -> bool {
    i % 10 == 3
}

fn event(i: usize, now: &str) -> Value {
    let id = if is_poisoned(i) {
        format!("poison-{i}")
    } else {
        format!("ok-{i}")
    };
    json!({
        "event_id": id,
        "event_type": if i.is_multiple_of(3) { "order.placed" } else { "page.view" },
        "timestamp": now,
        "platform": if i.is_multiple_of(2) { "ios" } else { "web" },
        "properties": {"n": i},
    })
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `events_per_type`'s counts by (event_type, platform), over every window.
fn counts(p: &Pipeline) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for r in lines(&p.cli(&["agg", "read", "events_per_type", "--limit", "100000"])) {
        *out.entry((
            r["event_type"].as_str().unwrap().to_string(),
            r["platform"].as_str().unwrap().to_string(),
        ))
        .or_default() += r["events"].as_u64().unwrap();
    }
    out
}

fn redrive(p: &Pipeline) -> Value {
    serde_json::from_str(&p.cli(&["dlq", "redrive", "--plugin", "trapper"])).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_redriven_once_after_the_fix() {
    // Windows stay open through the test: the watermark does not move on an idle source.
    let mut p = Pipeline::with_args(&[], &["--watermark-source-idle-ms=600000"]);
    p.start().await;
    p.cli(&[
        "plugin",
        "deploy",
        plugin("trap_on_event").to_str().unwrap(),
        "--name",
        "trapper",
    ]);
    p.deploy_plugin("events_per_type");

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let all: Vec<Value> = (0..EVENTS).map(|i| event(i, &now)).collect();
    runnel_e2e::post_events(&p.agent_url, &all, 50).await;
    // What the aggregate must hold once every event is in: a count of what was sent.
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in &all {
        *want
            .entry((
                e["event_type"].as_str().unwrap().to_string(),
                e["platform"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1;
    }
    let poisoned = (0..EVENTS).filter(|i| is_poisoned(*i)).count();
    p.wait_pipeline_caught_up(EVENTS as u64, Duration::from_secs(60))
        .await;

    // Exactly the poisoned events are dead letters, typed.
    let dead = lines(&p.cli(&["dlq", "list", "--plugin", "trapper"]));
    assert_eq!(dead.len(), poisoned);
    for d in &dead {
        assert_eq!(d["kind"], "plugin_error", "{d}");
        assert_eq!(d["failure"], "trap", "{d}");
        assert_eq!(d["stage"], "enrich", "{d}");
        assert!(
            d["event"]["event_id"]
                .as_str()
                .unwrap()
                .starts_with("poison-"),
            "{d}"
        );
        assert!(
            d["reason"].as_str().unwrap().contains("poisoned event"),
            "{d}"
        );
        assert!(d.get("redriven").is_none(), "{d}");
    }
    let one: Value =
        serde_json::from_str(&p.cli(&["dlq", "show", &dead[0]["id"].to_string()])).unwrap();
    assert_eq!(one["event"]["event_id"], dead[0]["event"]["event_id"]);
    assert!(lines(&p.cli(&["dlq", "list", "--kind", "plugin_timeout"])).is_empty());
    let before: u64 = counts(&p).values().sum();
    assert_eq!(before, (EVENTS - poisoned) as u64);

    // Re-driven before the fix: each fails again and comes back with the new reason, at its
    // new offset; the originals are marked re-driven.
    let first = redrive(&p);
    assert_eq!(first["redriven"], poisoned, "{first}");
    p.wait_pipeline_caught_up((EVENTS + poisoned) as u64, Duration::from_secs(60))
        .await;
    let dead = lines(&p.cli(&["dlq", "list", "--plugin", "trapper"]));
    assert_eq!(dead.len(), 2 * poisoned, "{dead:?}");
    let (old, new): (Vec<&Value>, Vec<&Value>) =
        dead.iter().partition(|d| d.get("redriven").is_some());
    assert_eq!((old.len(), new.len()), (poisoned, poisoned));
    for d in &new {
        assert!(d["source_offset"].as_u64().unwrap() >= EVENTS as u64, "{d}");
    }
    assert_eq!(counts(&p).values().sum::<u64>(), before);

    // The fix: a new version of the plugin that keeps every event.
    p.cli(&[
        "plugin",
        "deploy",
        plugin("noop").to_str().unwrap(),
        "--name",
        "trapper",
    ]);
    let second = redrive(&p);
    assert_eq!(
        (second["redriven"].as_u64(), second["already"].as_u64()),
        (Some(poisoned as u64), Some(poisoned as u64)),
        "{second}"
    );
    p.wait_pipeline_caught_up((EVENTS + 2 * poisoned) as u64, Duration::from_secs(60))
        .await;
    assert_eq!(
        counts(&p),
        want,
        "every event counted once after the re-drive"
    );

    // Again: nothing is re-driven, nothing changes.
    let third = redrive(&p);
    assert_eq!(
        (third["redriven"].as_u64(), third["already"].as_u64()),
        (Some(0), Some(2 * poisoned as u64)),
        "{third}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = p.log_stats();
    assert_eq!(stats["records"], (EVENTS + 2 * poisoned) as u64, "{stats}");
    assert_eq!(counts(&p), want);

    // Bad filters are named.
    let out = runnel_e2e::runnel([
        "dlq",
        "list",
        "--kind",
        "bogus",
        "--admin-addr",
        &p.admin_addr,
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kind: \"bogus\" is not one of"));
}
