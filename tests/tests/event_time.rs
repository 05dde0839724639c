//! Event time against the clock, end to end: an event from a device whose clock is wrong is
//! rejected, clamped or dead-lettered at the edge (per the agent's policy) and cannot move a
//! watermark past the present, so the aggregates of everyone else keep counting; an agent whose
//! own clock runs ahead is judged by the broker's clock and flagged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use runnel_e2e::Pipeline;
use runnel_gen::{Config, Delay, Generated, Scenario};
use serde_json::{Value, json};

const MIN: i64 = 60_000;
const YEAR: i64 = 365 * 24 * 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn agg_read(p: &Pipeline, name: &str) -> Vec<Value> {
    p.cli(&["agg", "read", name, "--limit", "100000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn agg_list(p: &Pipeline) -> Vec<Value> {
    serde_json::from_str(&p.cli(&["agg", "list"])).unwrap()
}

async fn post(p: &Pipeline, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", p.agent_url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn page_view(id: &str, ts: i64) -> Value {
    json!({"event_id": id, "event_type": "page.view", "timestamp": ts, "platform": "web"})
}

/// `events_per_type` rows summed by window start, for `page.view`.
fn page_views_by_window(p: &Pipeline) -> BTreeMap<i64, u64> {
    let mut out = BTreeMap::new();
    for r in agg_read(p, "events_per_type") {
        if r["event_type"] == "page.view" {
            *out.entry(ms(&r["window_start"])).or_default() += r["events"].as_u64().unwrap();
        }
    }
    out
}

/// Must-show 1: the reproduction of the bug. An event stamped 2999 is rejected naming
/// `timestamp` and the setting; the 100 ordinary events after it are all counted and none is
/// late; an event 10 minutes ahead (inside the bound) is counted in its own window and makes no
/// later event late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_the_year_2999_cannot_stop_the_aggregates() {
    let mut p = Pipeline::new(&[]);
    p.start().await;
    p.deploy_plugin("events_per_type");

    let (status, answer) = post(
        &p,
        &json!({"event_id":"future-1","event_type":"page.view","timestamp":"2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["accepted"], 0, "{answer}");
    let error = answer["rejected"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("timestamp: 2999-01-01T00:00:00.000Z is "),
        "{error}"
    );
    assert!(error.contains("years"), "{error}");
    assert!(error.contains("ahead of the agent's clock"), "{error}");
    assert!(
        error.contains("event_time_future_max_ms (900000 ms"),
        "{error}"
    );

    // Its id was not kept: the same event with the time fixed is accepted, not a duplicate.
    let start = now_ms();
    let (status, answer) = post(&p, &page_view("future-1", start)).await;
    assert_eq!(
        (
            status,
            answer["accepted"].as_u64(),
            answer["duplicates"].as_u64()
        ),
        (202, Some(1), Some(0)),
        "{answer}"
    );
    let ordinary: Vec<Value> = (0..100)
        .map(|i| page_view(&format!("now-{i}"), start))
        .collect();
    let (status, answer) = post(&p, &json!(ordinary)).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(100)),
        "{answer}"
    );
    let ahead_ts = start + 10 * MIN;
    let (status, answer) = post(&p, &page_view("ahead-10m", ahead_ts)).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );
    let after: Vec<Value> = (0..50)
        .map(|i| page_view(&format!("after-{i}"), now_ms()))
        .collect();
    let (status, answer) = post(&p, &json!(after)).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(50)),
        "{answer}"
    );

    p.wait_pipeline_caught_up(152, Duration::from_secs(60))
        .await;
    let by_window = page_views_by_window(&p);
    let ahead_window = ahead_ts.div_euclid(MIN) * MIN;
    assert_eq!(by_window.get(&ahead_window), Some(&1), "{by_window:?}");
    let current: u64 = by_window
        .iter()
        .filter(|(w, _)| **w != ahead_window)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(current, 151, "{by_window:?}");
    assert!(p.read_topic("late_events").is_empty());
    let list = agg_list(&p);
    let wm = ms(&list[0]["watermark"]);
    assert!(
        wm <= now_ms() + 1_000,
        "watermark {} is ahead of the clock",
        list[0]["watermark"]
    );
    assert!(wm >= start - 10_000, "watermark {}", list[0]["watermark"]);
    assert_eq!(list[0]["late_events"], 0);
}

/// Must-show 1, the other policies: with `clamp` the 2999 event is counted in the current
/// window with its original time kept; with `dead_letter` it is accepted and lands in
/// `dead_letters`, counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_and_dead_letter_keep_the_event_out_of_the_future() {
    for policy in ["clamp", "dead_letter"] {
        let mut p = Pipeline::new(&[&format!("--event-time-future-policy={policy}")]);
        p.start().await;
        p.deploy_plugin("events_per_type");
        let before = now_ms();
        let (status, answer) = post(
            &p,
            &json!({"event_id":"future-1","event_type":"page.view",
                    "timestamp":"2999-01-01T00:00:00Z","properties":{"k":1}}),
        )
        .await;
        assert_eq!(
            (status, answer["accepted"].as_u64()),
            (202, Some(1)),
            "{answer}"
        );
        let listed = &answer[if policy == "clamp" {
            "clamped"
        } else {
            "dead_lettered"
        }];
        assert_eq!(listed[0]["index"], 0, "{answer}");
        assert!(
            listed[0]["error"]
                .as_str()
                .unwrap()
                .contains("event_time_future_max_ms"),
            "{answer}"
        );
        let ordinary: Vec<Value> = (0..20)
            .map(|i| page_view(&format!("now-{i}"), now_ms()))
            .collect();
        let (status, _) = post(&p, &json!(ordinary)).await;
        assert_eq!(status, 202);
        p.wait_pipeline_caught_up(21, Duration::from_secs(60)).await;
        let stored = p.log_read(0, 1);
        let counted: u64 = page_views_by_window(&p).values().sum();
        if policy == "clamp" {
            assert_eq!(counted, 21);
            let ts = ms(&stored[0]["timestamp"]);
            assert_eq!(ts, ms(&stored[0]["received_at"]), "{}", stored[0]);
            assert!(ts >= before - 1_000 && ts <= now_ms(), "{}", stored[0]);
            assert_eq!(
                stored[0]["properties"],
                json!({"k": 1, "_original_timestamp": "2999-01-01T00:00:00.000Z"})
            );
        } else {
            assert_eq!(counted, 20);
            let dead = p.read_topic("dead_letters");
            assert_eq!(dead.len(), 1, "{dead:?}");
            assert_eq!(dead[0]["kind"], "event_time");
            assert_eq!(dead[0]["bound"], "future");
            assert!(
                dead[0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("event_time_future_max_ms"),
                "{}",
                dead[0]
            );
            assert_eq!(dead[0]["event"]["event_id"], "future-1");
            assert_eq!(dead[0]["event"]["timestamp"], "2999-01-01T00:00:00.000Z");
            assert_eq!(dead[0]["event"]["properties"], json!({"k": 1}));
        }
        assert!(p.read_topic("late_events").is_empty());
        let wm = ms(&agg_list(&p)[0]["watermark"]);
        assert!(wm <= now_ms() + 1_000);
        let metrics = reqwest::get(format!("{}/metrics", p.agent_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(&format!(
                "runnel_agent_event_time_out_of_bounds_total{{bound=\"future\",policy=\"{policy}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

/// A live generated stream (event times follow the clock, as a device's would) where 0.5% of
/// the users' devices are a year ahead and 0.5% a year behind.
struct Skewed {
    events: Vec<Generated>,
    /// Event ids of the devices a year ahead, and a year behind.
    ahead: BTreeSet<String>,
    behind: BTreeSet<String>,
}

/// FNV-1a: picks the devices, the same ones every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn skewed_stream() -> Skewed {
    let start = now_ms() + 2_000;
    let mut events = runnel_gen::generate(&Config {
        seed: 11,
        scenario: Scenario::Fintech,
        events: 3_000,
        start_ms: start,
        rate_per_sec: 250,
        sources: 1,
        users: 2_000,
        out_of_order: 0.10,
        within_lateness: 0.02,
        beyond_lateness: 0.01,
        out_of_orderness_ms: 5_000,
        allowed_lateness_ms: 30_000,
        window_ms: 60_000,
    });
    let (mut ahead, mut behind) = (BTreeSet::new(), BTreeSet::new());
    for g in &mut events {
        let bucket = fnv1a(g.user_id.as_bytes()) % 1000;
        let shift = match bucket {
            0..5 => YEAR,
            5..10 => -YEAR,
            _ => continue,
        };
        let mut v: Value = serde_json::from_str(&g.json).unwrap();
        v["timestamp"] = json!(g.event_time_ms + shift);
        g.event_time_ms += shift;
        g.json = v.to_string();
        let id = v["event_id"].as_str().unwrap().to_string();
        if shift > 0 {
            ahead.insert(id);
        } else {
            behind.insert(id);
        }
    }
    assert!(
        ahead.len() >= 3 && behind.len() >= 3,
        "{ahead:?} {behind:?}"
    );
    Skewed {
        events,
        ahead,
        behind,
    }
}

fn id_of(g: &Generated) -> String {
    serde_json::from_str::<Value>(&g.json).unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Posts the stream as it happens: each request of 25 events is sent 500 ms before its first
/// event's arrival time, so event times follow the clock. Returns, by list of the answer
/// (`rejected`, `clamped`, `dead_lettered`), the event ids it named.
async fn post_live(p: &Pipeline, events: &[Generated]) -> HashMap<&'static str, BTreeSet<String>> {
    let client = reqwest::Client::new();
    let mut named: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
    for chunk in events.chunks(25) {
        let wait = chunk[0].arrival_ms - 500 - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|g| g.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = client
            .post(format!("{}/v1/events", p.agent_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert!(status == 202 || status == 400, "{status} {answer}");
        for list in ["rejected", "clamped", "dead_lettered"] {
            for entry in answer[list].as_array().into_iter().flatten() {
                let i = entry["index"].as_u64().unwrap() as usize;
                assert!(
                    entry["error"].as_str().unwrap().starts_with("timestamp: "),
                    "{entry}"
                );
                named.entry(list).or_default().insert(id_of(&chunk[i]));
            }
        }
    }
    named
}

/// `events_per_type` as (window start, event type, platform) → events.
fn per_window(p: &Pipeline) -> BTreeMap<(i64, String, String), u64> {
    agg_read(p, "events_per_type")
        .iter()
        .map(|r| {
            (
                (
                    ms(&r["window_start"]),
                    r["event_type"].as_str().unwrap().to_string(),
                    r["platform"].as_str().unwrap().to_string(),
                ),
                r["events"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn key_of(v: &Value, ts: i64) -> (i64, String, String) {
    (
        ts.div_euclid(MIN) * MIN,
        v["event_type"].as_str().unwrap().to_string(),
        v["platform"].as_str().unwrap().to_string(),
    )
}

/// Must-show 2: devices a year ahead are rejected (`reject`, the default) and devices a year
/// behind dead-lettered (`event_time_past_max_ms` one day, `dead_letter`): exactly those events
/// are named, the dead letters are exactly the behind ones, and every aggregate over the other
/// devices' events equals the count computed from the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_devices_are_rejected_or_dead_lettered_and_the_rest_is_exact() {
    let mut p = Pipeline::new(&[
        "--event-time-past-max-ms=86400000",
        "--event-time-past-policy=dead_letter",
    ]);
    p.start().await;
    p.deploy_plugin("events_per_type");
    p.deploy_plugin("agent_performance");
    let s = skewed_stream();
    let named = post_live(&p, &s.events).await;
    assert_eq!(named.get("rejected").cloned().unwrap_or_default(), s.ahead);
    assert_eq!(
        named.get("dead_lettered").cloned().unwrap_or_default(),
        s.behind
    );
    assert!(!named.contains_key("clamped"));
    let stored = (s.events.len() - s.ahead.len()) as u64;
    p.wait_pipeline_caught_up(stored, Duration::from_secs(120))
        .await;

    let dead: BTreeSet<String> = p
        .read_topic("dead_letters")
        .iter()
        .map(|d| {
            assert_eq!(d["kind"], "event_time", "{d}");
            assert_eq!(d["bound"], "past", "{d}");
            d["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(dead, s.behind);

    let skewed = |g: &Generated| {
        let id = id_of(g);
        s.ahead.contains(&id) || s.behind.contains(&id)
    };
    let normal: Vec<&Generated> = s.events.iter().filter(|g| !skewed(g)).collect();
    let mut expected: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
    for g in normal.iter().filter(|g| g.delay != Delay::BeyondLateness) {
        let v: Value = serde_json::from_str(&g.json).unwrap();
        *expected.entry(key_of(&v, g.event_time_ms)).or_default() += 1;
    }
    assert_eq!(per_window(&p), expected);
    let late: BTreeSet<String> = p
        .read_topic("late_events")
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    let beyond: BTreeSet<String> = normal
        .iter()
        .filter(|g| g.delay == Delay::BeyondLateness)
        .map(|g| id_of(g))
        .collect();
    assert_eq!(late, beyond);
    // agent_performance (calendar months, never final here) adds up to the other devices'.
    let ap = agg_read(&p, "agent_performance");
    let sum = |col: &str| ap.iter().map(|r| r[col].as_f64().unwrap()).sum::<f64>();
    let count = |t: &str| normal.iter().filter(|g| g.event_type == t).count() as f64;
    assert_eq!(sum("deposits"), count("deposit.completed"));
    assert_eq!(sum("onboardings"), count("onboarding.completed"));
}

/// Must-show 2 with `clamp` on both bounds: the skewed events are exactly the clamped ones,
/// each stored at its receive time with the original kept, and the windows hold the other
/// devices' events by their event time plus the clamped ones at their receive time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_devices_are_clamped_and_the_rest_is_exact() {
    let mut p = Pipeline::new(&[
        "--event-time-future-policy=clamp",
        "--event-time-past-max-ms=86400000",
        "--event-time-past-policy=clamp",
    ]);
    p.start().await;
    p.deploy_plugin("events_per_type");
    let s = skewed_stream();
    let named = post_live(&p, &s.events).await;
    let all: BTreeSet<String> = s.ahead.union(&s.behind).cloned().collect();
    assert_eq!(named.get("clamped").cloned().unwrap_or_default(), all);
    assert!(!named.contains_key("rejected") && !named.contains_key("dead_lettered"));
    p.wait_pipeline_caught_up(s.events.len() as u64, Duration::from_secs(120))
        .await;

    let by_id: HashMap<String, &Generated> = s.events.iter().map(|g| (id_of(g), g)).collect();
    let mut expected: BTreeMap<(i64, String, String), u64> = BTreeMap::new();
    let mut clamped_seen = 0;
    for e in p.log_read(0, 100_000) {
        let id = e["event_id"].as_str().unwrap().to_string();
        let g = by_id[&id];
        if all.contains(&id) {
            clamped_seen += 1;
            let ts = ms(&e["timestamp"]);
            assert_eq!(ts, ms(&e["received_at"]), "{e}");
            assert_eq!(
                ms(&e["properties"]["_original_timestamp"]),
                g.event_time_ms,
                "{e}"
            );
            *expected.entry(key_of(&e, ts)).or_default() += 1;
        } else if g.delay != Delay::BeyondLateness {
            *expected.entry(key_of(&e, g.event_time_ms)).or_default() += 1;
        }
    }
    assert_eq!(clamped_seen, all.len());
    assert_eq!(per_window(&p), expected);
    let late: BTreeSet<String> = p
        .read_topic("late_events")
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    let beyond: BTreeSet<String> = s
        .events
        .iter()
        .filter(|g| g.delay == Delay::BeyondLateness && !all.contains(&id_of(g)))
        .map(id_of)
        .collect();
    assert_eq!(late, beyond);
}

/// Must-show 3: an agent whose host clock is an hour ahead (`clock_offset_ms`): its events,
/// stamped by apps that share its clock, are accepted, but the broker judges them by its own
/// clock, so no watermark passes the broker's clock plus the allowance; the skew shows in
/// `/metrics` and `agg list`. Events from devices with the right time are not late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_an_hour_ahead_is_judged_by_the_brokers_clock() {
    let mut p = Pipeline::new(&["--clock-offset-ms=3600000"]);
    p.start().await;
    p.deploy_plugin("events_per_type");
    let hour = 3_600_000;
    for r in 0..5 {
        let t = now_ms();
        let mut events: Vec<Value> = (0..10)
            .map(|i| page_view(&format!("skewed-{r}-{i}"), t + hour))
            .collect();
        events.extend((0..10).map(|i| page_view(&format!("right-{r}-{i}"), t)));
        let (status, answer) = post(&p, &json!(events)).await;
        assert_eq!(
            (status, answer["accepted"].as_u64()),
            (202, Some(20)),
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.wait_pipeline_caught_up(100, Duration::from_secs(60))
        .await;
    let list = agg_list(&p);
    let wm = ms(&list[0]["watermark"]);
    assert!(
        wm <= now_ms() + 1_000,
        "watermark {} passed the broker's clock",
        list[0]["watermark"]
    );
    let skewed = list[0]["clock_skewed_agents"].as_array().unwrap();
    assert_eq!(skewed.len(), 1, "{list:?}");
    let ahead = skewed[0]["ahead_ms"].as_i64().unwrap();
    assert!((hour - 60_000..=hour).contains(&ahead), "{ahead}");
    assert_eq!(list[0]["late_events"], 0, "{list:?}");
    assert!(p.read_topic("late_events").is_empty());
    let metrics = p.metrics().await;
    let agent = skewed[0]["agent"].as_str().unwrap();
    assert!(
        metrics.contains(&format!("runnel_agent_clock_skewed{{agent=\"{agent}\"}} 1")),
        "{metrics}"
    );
    let skew_line = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "runnel_agent_clock_skew_seconds{{agent=\"{agent}\"}}"
            ))
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let secs: f64 = skew_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((3_540.0..=3_600.0).contains(&secs), "{skew_line}");
    // Every event is counted: the hour-ahead ones in their own (open) windows.
    let counted: u64 = page_views_by_window(&p).values().sum();
    assert_eq!(counted, 100);
}
