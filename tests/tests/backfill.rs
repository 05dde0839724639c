//! Backfill: a new version of an aggregator computed over the history (the archive and the
//! log) while the old one keeps serving, then swapped in at once; the broker killed with
//! SIGKILL in the middle of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runnel_e2e::{Pipeline, bin, plugin};
use serde_json::Value;

const TYPES: [&str; 4] = ["page.view", "order.placed", "cart.add", "app.open"];
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const VERSIONS: [&str; 3] = ["1.0", "1.1", "2.0"];
const DAY_MS: i64 = 86_400_000;
/// Events of the history, and events that arrive while the backfill runs.
const HISTORY: u64 = 30_000;
const LIVE: u64 = 3_000;
/// Event `n`'s time: `n` steps after midnight (UTC) ten days ago, in order (none is late).
const STEP_MS: i64 = 5 * DAY_MS / (HISTORY + LIVE) as i64;

fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = chrono::Utc::now().timestamp_millis();
        (now / DAY_MS - 10) * DAY_MS
    })
}

fn event(n: u64) -> Value {
    serde_json::json!({
        "event_id": format!("b-{n}"),
        "event_type": TYPES[(n % 4) as usize],
        "timestamp": base_ms() + n as i64 * STEP_MS,
        "platform": PLATFORMS[(n / 4 % 3) as usize],
        "app_version": VERSIONS[(n / 12 % 3) as usize],
        "properties": {"n": n},
    })
}

async fn post_all(url: &str, range: std::ops::Range<u64>, per: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for lo in range.clone().step_by(per as usize) {
        let hi = (lo + per).min(range.end);
        let body = Value::Array((lo..hi).map(event).collect()).to_string();
        runnel_e2e::post_until_accepted(&client, url, body).await;
    }
}

/// The counts an independent computation gives for events `range`: per 1-minute window,
/// `event_type`, `platform` and (with `by_version`) `app_version`.
fn expected(range: std::ops::Range<u64>, by_version: bool) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for n in range {
        let e = event(n);
        let start = e["timestamp"].as_i64().unwrap().div_euclid(60_000) * 60_000;
        let mut key = format!(
            "{start}|{}|{}",
            e["event_type"].as_str().unwrap(),
            e["platform"].as_str().unwrap()
        );
        if by_version {
            key = format!("{key}|{}", e["app_version"].as_str().unwrap());
        }
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Which version's rows one read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Old,
    New,
    Mixed,
}

/// `runnel agg read events_per_type` at `admin`: the rows, or what it printed (while the broker
/// is down, say).
fn read_rows(admin: &str) -> Result<Vec<Value>, String> {
    let out = std::process::Command::new(bin("runnel"))
        .args(["agg", "read", "events_per_type", "--limit", "100000"])
        .args(["--admin-addr", admin])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

fn kind(rows: &[Value]) -> Option<Kind> {
    let with = rows
        .iter()
        .filter(|r| r.get("app_version").is_some())
        .count();
    match (with, rows.len()) {
        (_, 0) => None,
        (0, _) => Some(Kind::Old),
        (w, n) if w == n => Some(Kind::New),
        _ => Some(Kind::Mixed),
    }
}

/// Rows as `window_start|dimensions…` → `events`.
fn counts(rows: &[Value]) -> BTreeMap<String, u64> {
    rows.iter()
        .map(|r| {
            let start = chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            let mut key = format!(
                "{start}|{}|{}",
                r["event_type"].as_str().unwrap(),
                r["platform"].as_str().unwrap()
            );
            if let Some(v) = r.get("app_version") {
                key = format!("{key}|{}", v.as_str().unwrap());
            }
            (key, r["events"].as_u64().unwrap())
        })
        .collect()
}

fn backfill_of(p: &Pipeline) -> Option<Value> {
    let list = p.plugin_list();
    let e = list.iter().find(|x| x["name"] == "events_per_type")?;
    e.get("backfill").cloned()
}

/// Must-show 4: `events_per_type` v1 has run over 30,000 events spread over five event-time
/// days, most of which the log no longer holds (archived, then deleted: `log_retention_ms=0`).
/// Its v2, with an extra dimension (`app_version`), deployed with `--backfill-from all`, is
/// computed over the archive and the log while 3,000 more events arrive, with the broker killed
/// with SIGKILL once in the middle of it. Every read of the aggregate meanwhile (one after
/// another, all along) returns v1's rows only, then v2's only, never a mix; afterwards the rows
/// equal an independent count of the input, window by window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_version_replaces_the_old_rows_at_once_and_survives_kill_9() {
    let mut p = Pipeline::with_args(
        &["--ship-batch-bytes-max=1024"],
        &[
            "--batch-bytes-max=32768",
            "--segment-bytes-max=65536",
            "--log-retention-ms=0",
            "--archive-interval-ms=200",
            "--pipeline-batch-events=200",
            "--backfill-checkpoint-interval-ms=200",
            "--backfill-archive-read-events=1000",
            "--backfill-handoff-events=500",
        ],
    );
    p.start().await;
    let wasm = plugin("events_per_type");
    let wasm = wasm.to_str().unwrap();
    p.cli(&["plugin", "deploy", wasm, "--name", "events_per_type"]);
    post_all(&p.agent_url, 0..HISTORY, 50).await;
    p.wait_pipeline_caught_up(HISTORY, Duration::from_secs(120))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.log_stats()["start_offset"].as_u64().unwrap() < HISTORY / 2 {
        assert!(
            Instant::now() < deadline,
            "the log kept its segments: {}",
            p.log_stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v1 = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    assert_eq!(kind(&v1), Some(Kind::Old));
    assert_eq!(counts(&v1), expected(0..HISTORY, false), "v1's rows");

    // Reads all along, one after another.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, admin) = (stop.clone(), p.admin_addr.clone());
        std::thread::spawn(move || {
            let mut kinds = Vec::new();
            while !stop.load(Ordering::Acquire) {
                if let Some(k) = read_rows(&admin).ok().as_deref().and_then(kind) {
                    kinds.push(k);
                }
            }
            kinds
        })
    };

    let deployed: Value = serde_json::from_str(&p.cli(&[
        "plugin",
        "deploy",
        wasm,
        "--name",
        "events_per_type",
        "--param",
        "by_app_version=true",
        "--version",
        "2",
        "--backfill-from",
        "all",
    ]))
    .unwrap();
    assert_eq!(deployed["version"], "1", "v1 stays active: {deployed}");
    assert_eq!(deployed["backfill"]["version"], "2", "{deployed}");

    // SIGKILL once the backfill has folded some of the history.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = backfill_of(&p).expect("a backfill is listed until it is swapped in");
        if b["state"] == "running" && b["events"].as_u64() > Some(HISTORY / 4) {
            eprintln!("killing the broker mid-backfill: {b}");
            break;
        }
        assert!(Instant::now() < deadline, "the backfill did not start: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.broker.kill9();
    p.start_broker().await;
    let resumed = backfill_of(&p);
    eprintln!("after the restart: {resumed:?}");
    post_all(&p.agent_url, HISTORY..HISTORY + LIVE, 50).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list = p.plugin_list();
        let e = list
            .iter()
            .find(|x| x["name"] == "events_per_type")
            .unwrap();
        if e["version"] == "2" {
            assert!(e.get("backfill").is_none(), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill did not finish: {e}\n{}",
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (`records` counts what the log holds; the archive holds the rest.)
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.log_stats()["end_offset"].as_u64() < Some(HISTORY + LIVE)
        || p.plugin_list().iter().any(|x| x["lag"] != 0)
    {
        assert!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more reads after the swap, then the readers' story.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let kinds = reader.join().unwrap();
    assert!(!kinds.contains(&Kind::Mixed), "a read mixed versions");
    let first_new = kinds
        .iter()
        .position(|k| *k == Kind::New)
        .expect("reads saw v2");
    assert!(
        kinds[first_new..].iter().all(|k| *k == Kind::New),
        "a read saw v1 after v2"
    );
    assert!(first_new > 0, "reads saw v1 during the backfill");
    eprintln!(
        "{} reads: {first_new} of v1, then {} of v2",
        kinds.len(),
        kinds.len() - first_new
    );

    let v2 = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    assert_eq!(kind(&v2), Some(Kind::New));
    assert_eq!(
        counts(&v2),
        expected(0..HISTORY + LIVE, true),
        "v2's rows over the whole history"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("runnel_backfill_swaps_total"),
        "the swap is counted"
    );
}
