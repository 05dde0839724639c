//! Windowed aggregation end to end: a generated stream with known answers through the real
//! agent and broker, the example aggregators deployed with `runnel plugin deploy`, rows read
//! with `runnel agg read`, late events from the `late_events` topic; and the same stream with
//! the broker killed (`kill -9`) while it runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use runnel_e2e::{Pipeline, plugin, post_generated as post};
use runnel_gen::{Config, Delay, Generated, Scenario};
use serde_json::Value;

const START_MS: i64 = 1_795_255_200_000; // 2026-11-21T10:00:00Z

fn stream(events: usize) -> Vec<Generated> {
    runnel_gen::generate(&Config {
        seed: 7,
        scenario: Scenario::Fintech,
        events,
        start_ms: START_MS,
        rate_per_sec: 100,
        sources: 1,
        users: 3_000,
        out_of_order: 0.10,
        within_lateness: 0.02,
        beyond_lateness: 0.01,
        // The broker's default watermark_out_of_orderness_ms, and events_per_type's lateness.
        out_of_orderness_ms: 5_000,
        allowed_lateness_ms: 30_000,
        window_ms: 60_000,
    })
}

fn agg_read(p: &Pipeline, name: &str) -> Vec<Value> {
    p.cli(&["agg", "read", name, "--limit", "100000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Event ids in `late_events`, by aggregate.
fn late_ids(p: &Pipeline) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for e in p.read_topic("late_events") {
        for a in e["aggregates"].as_array().unwrap() {
            out.entry(a["aggregate"].as_str().unwrap().to_string())
                .or_default()
                .insert(e["event"]["event_id"].as_str().unwrap().to_string());
        }
    }
    out
}

fn parsed(g: &Generated) -> Value {
    serde_json::from_str(&g.json).unwrap()
}

/// Must-show 1: with 10% of events out of order within the out-of-orderness, 2% within the
/// lateness and 1% beyond it, `events_per_type` equals the exact per-window counts computed
/// from the input, the beyond-lateness events are exactly those in `late_events`, and
/// `unique_users` is within its sketch's error. The other example aggregators (after
/// geo-enrich) add up to the input too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_stream_gives_exact_windows_and_exact_late_events() {
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--pipeline-batch-events=300",
            "--aggregate-commit-interval-ms=200",
        ],
    );
    p.start().await;
    p.deploy_plugin("geo_enrich");
    for a in [
        "events_per_type",
        "unique_users",
        "revenue",
        "sessions",
        "agent_performance",
    ] {
        p.deploy_plugin(a);
    }
    let events = stream(30_000);
    post(&p.agent_url, &events, 500, Duration::ZERO).await;
    p.wait_pipeline_caught_up(events.len() as u64, Duration::from_secs(120))
        .await;

    // events_per_type: exact counts per (window, event_type, platform).
    let beyond: BTreeSet<String> = events
        .iter()
        .filter(|g| g.delay == Delay::BeyondLateness)
        .map(|g| parsed(g)["event_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        beyond.len() > 200,
        "{} beyond-lateness events",
        beyond.len()
    );
    let mut expected: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
    for g in events.iter().filter(|g| g.delay != Delay::BeyondLateness) {
        let v = parsed(g);
        let w = g.event_time_ms.div_euclid(60_000) * 60_000;
        *expected
            .entry((
                w,
                v["event_type"].as_str().unwrap().into(),
                v["platform"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    let rows = agg_read(&p, "events_per_type");
    let got: BTreeMap<(i64, String, String), u64> = rows
        .iter()
        .map(|r| {
            assert_eq!(ms(&r["window_end"]) - ms(&r["window_start"]), 60_000);
            (
                (
                    ms(&r["window_start"]),
                    r["event_type"].as_str().unwrap().into(),
                    r["platform"].as_str().unwrap().into(),
                ),
                r["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), rows.len(), "a row appears twice");
    assert_eq!(got, expected);
    let finals = rows.iter().filter(|r| r["is_final"] == true).count();
    assert!(
        finals > rows.len() / 2,
        "{finals} of {} rows final",
        rows.len()
    );

    // late_events: exactly the beyond-lateness events, for events_per_type.
    let late = late_ids(&p);
    assert_eq!(
        late.get("events_per_type").cloned().unwrap_or_default(),
        beyond
    );

    // unique_users: within 3 relative standard errors (1.6% each) of the exact count.
    let late_uu = late.get("unique_users").cloned().unwrap_or_default();
    let mut exact: HashMap<(i64, String), HashSet<String>> = HashMap::new();
    for g in &events {
        let v = parsed(g);
        if late_uu.contains(v["event_id"].as_str().unwrap()) {
            continue;
        }
        let w = g.event_time_ms.div_euclid(3_600_000) * 3_600_000;
        exact
            .entry((w, v["platform"].as_str().unwrap().into()))
            .or_default()
            .insert(g.user_id.clone());
    }
    let rows = agg_read(&p, "unique_users");
    assert_eq!(rows.len(), exact.len(), "{rows:?}");
    for r in &rows {
        let key = (
            ms(&r["window_start"]),
            r["platform"].as_str().unwrap().to_string(),
        );
        let want = exact[&key].len() as f64;
        let est = r["users"].as_f64().unwrap();
        assert!(
            (est - want).abs() <= (3.0 * 0.016 * want).max(1.0),
            "unique_users {key:?}: estimate {est}, exact {want}"
        );
    }

    // agent_performance and revenue add up to the input less their late events (a calendar
    // month is never final during this stream; an hour before 10:00 is).
    assert!(!late.contains_key("agent_performance"));
    let late_rev = late.get("revenue").cloned().unwrap_or_default();
    let kept = |g: &&Generated, late: &BTreeSet<String>| {
        !late.contains(parsed(g)["event_id"].as_str().unwrap())
    };
    let none = BTreeSet::new();
    let count = |t: &str, late: &BTreeSet<String>| {
        events
            .iter()
            .filter(|g| g.event_type == t && kept(g, late))
            .count() as f64
    };
    let total = |t: &str| {
        events
            .iter()
            .filter(|g| g.event_type == t)
            .map(|g| parsed(g)["properties"]["amount"].as_f64().unwrap())
            .sum::<f64>()
    };
    let ap = agg_read(&p, "agent_performance");
    let sum =
        |rows: &[Value], col: &str| rows.iter().map(|r| r[col].as_f64().unwrap()).sum::<f64>();
    assert_eq!(
        sum(&ap, "onboardings"),
        count("onboarding.completed", &none)
    );
    assert_eq!(sum(&ap, "deposits"), count("deposit.completed", &none));
    assert!((sum(&ap, "deposit_total") - total("deposit.completed")).abs() < 1e-3);
    assert!((sum(&ap, "withdrawal_total") - total("withdrawal.completed")).abs() < 1e-3);
    for r in &ap {
        // Calendar months in Africa/Nairobi (UTC+3) start at 21:00 UTC the day before.
        assert!(
            r["window_start"]
                .as_str()
                .unwrap()
                .ends_with("T21:00:00.000Z"),
            "{r}"
        );
    }
    let rev = agg_read(&p, "revenue");
    assert_eq!(sum(&rev, "payments"), count("deposit.completed", &late_rev));
    let countries: BTreeSet<&str> = rev.iter().map(|r| r["country"].as_str().unwrap()).collect();
    assert_eq!(
        countries,
        ["KE", "NG", "RW", "UG", "ZA"].into_iter().collect(),
        "revenue by the country geo-enrich set"
    );
    assert!(
        rev.iter()
            .all(|r| r["amount_p50"].as_f64().unwrap() <= r["amount_p99"].as_f64().unwrap())
    );
    let late_s = late.get("sessions").cloned().unwrap_or_default();
    let sessions = agg_read(&p, "sessions");
    assert_eq!(
        sum(&sessions, "events") as usize,
        events.len() - late_s.len(),
        "every event not late for sessions is in exactly one session"
    );

    // agg list: names, windows, columns, watermarks.
    let list: Vec<Value> = serde_json::from_str(&p.cli(&["agg", "list"])).unwrap();
    let ept = list
        .iter()
        .find(|a| a["name"] == "events_per_type")
        .unwrap();
    assert_eq!(ept["window"], "tumbling 1m");
    assert_eq!(
        ept["columns"],
        serde_json::json!([
            "window_start",
            "window_end",
            "is_final",
            "event_type",
            "platform",
            "events"
        ])
    );
    assert_eq!(ept["lag_events"], 0);
    assert!(ept["watermark"].is_string());
    assert_eq!(ept["late_events"].as_u64().unwrap() as usize, beyond.len());

    // /metrics counts late events by aggregate.
    let metrics = p.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("runnel_late_events_total{aggregate=\"events_per_type\"}"))
        .unwrap_or_else(|| panic!("no late-events counter in /metrics:\n{metrics}"));
    assert!(line.ends_with(&format!(" {}", beyond.len())), "{line}");

    // Each plugin's cost per event, in `plugin list` and in /metrics; the fold's for
    // aggregators only.
    for plugin in p.plugin_list() {
        let name = plugin["name"].as_str().unwrap();
        assert!(plugin["events_in"].as_u64().unwrap() > 0, "{plugin}");
        let ns = plugin["ns_per_event"].as_f64().unwrap();
        assert!(ns > 0.0 && ns < 1e9, "{plugin}");
        let fold = plugin.get("fold_ns_per_event").and_then(Value::as_f64);
        if name == "geo_enrich" {
            assert_eq!(fold, None, "{plugin}");
        } else {
            assert!(fold.is_some_and(|f| f > 0.0), "{plugin}");
        }
        let metric = format!("runnel_plugin_ns_per_event{{plugin=\"{name}\"}} ");
        let shown: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&metric))
            .unwrap_or_else(|| panic!("no {metric} in /metrics"))
            .parse()
            .unwrap();
        assert!(shown > 0.0, "{metric}{shown}");
    }
}

/// A window limit refuses rows, never silently: each refused event goes to `dead_letters`
/// naming the limit, `agg list` counts it, and the rows that were folded plus the refused ones
/// are every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_limit_refuses_rows_into_dead_letters_naming_it() {
    let mut p = Pipeline::with_args(&[], &["--aggregate-keys-per-window-max=4"]);
    p.start().await;
    p.deploy_plugin("events_per_type");
    let events = stream(3_000);
    post(&p.agent_url, &events, 500, Duration::ZERO).await;
    p.wait_pipeline_caught_up(events.len() as u64, Duration::from_secs(60))
        .await;
    let rows = agg_read(&p, "events_per_type");
    let mut per_window: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *per_window
            .entry(r["window_start"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(per_window.values().all(|n| *n <= 4), "{per_window:?}");
    let refused: Vec<Value> = p
        .read_topic("dead_letters")
        .into_iter()
        .filter(|d| d["kind"] == "refused")
        .collect();
    assert!(!refused.is_empty());
    for d in &refused {
        assert_eq!(d["plugin"], "events_per_type");
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("aggregate_keys_per_window_max"),
            "{d}"
        );
    }
    let folded: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    let late = late_ids(&p).get("events_per_type").map_or(0, BTreeSet::len);
    assert_eq!(
        folded as usize + refused.len() + late,
        events.len(),
        "every event is folded, refused or late"
    );
    let list: Vec<Value> = serde_json::from_str(&p.cli(&["agg", "list"])).unwrap();
    assert_eq!(
        list[0]["refused"]["keys_per_window_max"].as_u64().unwrap() as usize,
        refused.len()
    );
}

/// Every row (final and open) of `names`, as JSON text, and the late event ids.
fn all_rows(
    p: &Pipeline,
    names: &[&str],
) -> (BTreeSet<String>, usize, HashMap<String, BTreeSet<String>>) {
    let mut rows = BTreeSet::new();
    let mut finals = 0;
    for name in names {
        for r in agg_read(p, name) {
            finals += usize::from(r["is_final"] == true);
            rows.insert(format!("{name} {r}"));
        }
    }
    (rows, finals, late_ids(p))
}

async fn run_stream(
    events: &[Generated],
    kills: usize,
) -> (BTreeSet<String>, usize, HashMap<String, BTreeSet<String>>) {
    use rand::Rng;
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--pipeline-batch-events=200",
            "--aggregate-commit-interval-ms=100",
        ],
    );
    p.start().await;
    for a in ["events_per_type", "sessions", "unique_users"] {
        p.deploy_plugin(a);
    }
    let url = p.agent_url.clone();
    let owned = events.to_vec();
    let poster =
        tokio::spawn(async move { post(&url, &owned, 250, Duration::from_millis(60)).await });
    let mut rng = rand::rng();
    let mut at = 0;
    for k in 0..kills {
        // Each kill after the log moved on since the last one (or holds the whole stream),
        // at a random moment of the pipeline's work on it.
        let total = events.len() as u64;
        p.wait_for_records((at + 3_000).min(total), Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        at = p.log_stats()["records"].as_u64().unwrap_or(0);
        let lag = p.plugin_list()[0]["lag"].clone();
        eprintln!(
            "kill -9 #{} of the broker at {at} events in the log, pipeline lag {lag}",
            k + 1
        );
        p.broker.kill9();
        p.start_broker().await;
    }
    poster.await.unwrap();
    assert!(kills == 0 || at > 0, "no kill happened");
    p.wait_pipeline_caught_up(events.len() as u64, Duration::from_secs(120))
        .await;
    all_rows(&p, &["events_per_type", "sessions", "unique_users"])
}

/// Must-show 2: the broker killed with SIGKILL at random moments while the stream runs, and
/// restarted: every row, final or open, and every late event are the same as in an
/// uninterrupted run of the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_makes_the_same_rows_as_an_uninterrupted_run() {
    let events = stream(24_000);
    let (clean, clean_finals, clean_late) = run_stream(&events, 0).await;
    let (killed, killed_finals, killed_late) = run_stream(&events, 3).await;
    assert!(clean_finals > 10, "{clean_finals} final rows");
    assert_eq!(clean_finals, killed_finals);
    let only_clean: Vec<_> = clean.difference(&killed).take(5).collect();
    let only_killed: Vec<_> = killed.difference(&clean).take(5).collect();
    assert!(
        only_clean.is_empty() && only_killed.is_empty(),
        "rows differ:\nuninterrupted only: {only_clean:#?}\nkilled only: {only_killed:#?}"
    );
    assert_eq!(clean_late, killed_late);
}

/// Each example aggregator's manifest says what its component declares (`runnel plugin test`
/// checks the `[aggregate]` section against the schema), and a manifest that does not is an
/// error naming the field.
#[test]
fn example_manifests_match_their_aggregators() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    let lines: Vec<String> = stream(50).into_iter().map(|g| g.json).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |name: &str, manifest: &std::path::Path| {
        std::process::Command::new(runnel_e2e::bin("runnel"))
            .args(["plugin", "test", plugin(name).to_str().unwrap(), "--input"])
            .arg(&input)
            .arg("--manifest")
            .arg(manifest)
            .output()
            .unwrap()
    };
    for name in [
        "events_per_type",
        "unique_users",
        "revenue",
        "sessions",
        "agent_performance",
    ] {
        let out = run(name, &repo.join("plugins").join(name).join("plugin.toml"));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wrong = dir.path().join("plugin.toml");
    let text = std::fs::read_to_string(repo.join("plugins/events_per_type/plugin.toml"))
        .unwrap()
        .replace("tumbling 1m", "tumbling 5m");
    std::fs::write(&wrong, text).unwrap();
    let out = run("events_per_type", &wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "aggregate.window: the manifest says tumbling 5m, the plugin declares tumbling 1m"
        ),
        "{err}"
    );
}
