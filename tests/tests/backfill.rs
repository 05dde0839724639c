//! Backfill: a new version of an aggregator computed over the history (the archive and the
//! log) while the old one keeps serving, then swapped in at once; the broker killed with
//! SIGKILL in the middle of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runnel_e2e::{Pipeline, plugin};
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
    runnel_e2e::post_range(url, range, per, event).await
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
    runnel_e2e::agg_read(admin, "events_per_type")
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

/// `agg_check.py` over `agg_events_per_type`: what `deltalake` and DuckDB read.
fn archived(p: &Pipeline) -> Value {
    let uri = p.dir.path().join("broker/archive/agg_events_per_type");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/agg_check.py");
    let python = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/runnel-py/bin/python");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&uri)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agg_check.py {}: {}",
        uri.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until both readers of the archive table count `want`; returns the last read. The
/// archiver commits a bounded number of rows at a time, and its tables take turns: while it
/// catches up with a backlog of the log (the kills leave one, and a loaded run archives
/// slowly), the aggregate's table commits only every other slice. So the wait fails when
/// neither the table nor the archive of `events` moves for a minute (or after ten minutes in
/// all), not at a fixed time.
async fn archive_holds(p: &Pipeline, want: &BTreeMap<String, u64>, what: &str) -> Value {
    const STALL: Duration = Duration::from_secs(60);
    let limit = Instant::now() + Duration::from_secs(600);
    let mut deadline = Instant::now() + STALL;
    let mut seen = None;
    loop {
        if p.dir
            .path()
            .join("broker/archive/agg_events_per_type/_delta_log")
            .exists()
        {
            let a = archived(p);
            let got = |reader: &str| -> BTreeMap<String, u64> {
                serde_json::from_value(a[reader].clone()).unwrap()
            };
            if got("deltalake") == *want && got("duckdb") == *want {
                return a;
            }
            let matching = got("deltalake")
                .iter()
                .filter(|(k, v)| want.get(*k) == Some(v))
                .count();
            let status: Value = serde_json::from_str(&p.cli(&["archive", "status"])).unwrap();
            let events_end = status["tables"][0]["archived_end"].as_u64();
            if seen != Some((matching, events_end)) {
                seen = Some((matching, events_end));
                deadline = (Instant::now() + STALL).min(limit);
            }
            if Instant::now() > deadline {
                let (dl, dd) = (got("deltalake"), got("duckdb"));
                let missing: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| dl.get(*k) != Some(v))
                    .take(5)
                    .collect();
                let extra: Vec<_> = dl
                    .iter()
                    .filter(|(k, _)| !want.contains_key(*k))
                    .take(5)
                    .collect();
                let log = p.broker.log_text();
                let noted: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                panic!(
                    "agg_events_per_type lacks {what}: {} rows read by deltalake, {} by DuckDB, {} wanted; differing: {missing:?}; extra: {extra:?}; columns {}\nthe broker's last warnings:\n{}\n{}",
                    dl.len(),
                    dd.len(),
                    want.len(),
                    a["columns"],
                    noted[noted.len().saturating_sub(40)..].join("\n"),
                    p.cli(&["archive", "status"]),
                );
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "agg_events_per_type was not created"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether rows of `events_per_type` have left state.redb for the archive.
async fn pruned(p: &Pipeline) -> bool {
    p.metrics().await.lines().any(|l| {
        l.starts_with("runnel_aggregate_rows_pruned_total{aggregate=\"events_per_type\"}")
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
    })
}

/// The final rows (the archive holds no others).
fn finals(rows: &[Value]) -> Vec<Value> {
    let f: Vec<Value> = rows
        .iter()
        .filter(|r| r["is_final"] == true)
        .cloned()
        .collect();
    assert!(f.len() + 8 >= rows.len(), "most rows are final");
    f
}

/// `runnel plugin deploy events_per_type.wasm --name events_per_type ARGS…`, its answer.
fn deploy(p: &Pipeline, args: &[&str]) -> Value {
    let wasm = plugin("events_per_type");
    let mut all = vec![
        "plugin",
        "deploy",
        wasm.to_str().unwrap(),
        "--name",
        "events_per_type",
    ];
    all.extend_from_slice(args);
    serde_json::from_str(&p.cli(&all)).unwrap()
}

/// Waits until `swapped(events_per_type's plugin list entry)`; the swapped entry lists no
/// backfill. Panics with the broker's log after `timeout`.
async fn until_swapped(p: &Pipeline, timeout: Duration, swapped: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let list = p.plugin_list();
        let e = list
            .iter()
            .find(|x| x["name"] == "events_per_type")
            .unwrap();
        if swapped(e) {
            assert!(e.get("backfill").is_none(), "{e}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill did not finish: {e}\n{}",
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
/// equal an independent count of the input, window by window. The aggregate's rows are
/// archived in `agg_events_per_type` (read by `deltalake` and DuckDB: v1's, then v2's after one
/// overwrite commit) and, older than `aggregate_rows_retention_ms`, read from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_version_replaces_the_old_rows_at_once_and_survives_kill_9() {
    let mut p = Pipeline::with_args(
        &["--ship-batch-bytes-max=1024"],
        &[
            "--batch-bytes-max=32768",
            "--segment-bytes-max=65536",
            "--log-retention-ms=0",
            "--archive-interval-ms=200",
            // Every window is older than a day: once archived, rows leave state.redb and are
            // read from agg_events_per_type.
            "--aggregate-rows-retention-ms=86400000",
            "--pipeline-batch-events=200",
            "--backfill-checkpoint-interval-ms=200",
            "--backfill-archive-read-events=1000",
            "--backfill-handoff-events=500",
        ],
    );
    p.start().await;
    deploy(&p, &[]);
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
    // The archive's `agg_events_per_type` holds them too, for DuckDB and `deltalake`.
    let a = archive_holds(&p, &counts(&finals(&v1)), "v1's final rows").await;
    assert!(
        !a["columns"]
            .as_array()
            .unwrap()
            .contains(&"app_version".into()),
        "{}",
        a["columns"]
    );
    // … and state.redb no longer does: reads span the two.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pruned(&p).await {
        assert!(
            Instant::now() < deadline,
            "no aggregate row left state.redb"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v1 = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    assert_eq!(
        counts(&v1),
        expected(0..HISTORY, false),
        "v1's rows, mostly from the archive"
    );

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

    let deployed = deploy(
        &p,
        &[
            "--param",
            "by_app_version=true",
            "--version",
            "2",
            "--backfill-from",
            "all",
        ],
    );
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

    until_swapped(&p, Duration::from_secs(180), |e| e["version"] == "2").await;
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
    // The archive table: v2's rows only, in v2's columns, the old rows replaced by one
    // overwrite commit.
    let a = archive_holds(&p, &counts(&finals(&v2)), "v2's final rows").await;
    assert!(
        a["columns"]
            .as_array()
            .unwrap()
            .contains(&"app_version".into()),
        "{}",
        a["columns"]
    );
    assert_eq!(a["overwrites"], 1, "one commit replaced the rows: {a}");
}

/// A first version deployed with `--backfill-from all` over 30,000 events of history, most of
/// them archived and gone from the log: `backfilling` (not running, no table) until the swap,
/// then running from the live offset with rows over the whole history, equal to an
/// independent count once more events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_version_backfilled_starts_with_its_history() {
    let mut p = Pipeline::with_args(
        &["--ship-batch-bytes-max=1024"],
        &[
            "--batch-bytes-max=32768",
            "--segment-bytes-max=65536",
            "--log-retention-ms=0",
            "--archive-interval-ms=200",
            "--pipeline-batch-events=200",
            "--backfill-archive-read-events=1000",
        ],
    );
    p.start().await;
    post_all(&p.agent_url, 0..HISTORY, 50).await;
    p.wait_pipeline_caught_up(HISTORY, Duration::from_secs(120))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.log_stats()["start_offset"].as_u64().unwrap() < HISTORY / 2 {
        assert!(Instant::now() < deadline, "the log kept its segments");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployed = deploy(&p, &["--backfill-from", "all"]);
    assert_eq!(deployed["status"], "backfilling", "{deployed}");
    assert_eq!(deployed["backfill"]["version"], "1", "{deployed}");

    until_swapped(&p, Duration::from_secs(120), |e| {
        if e["status"] == "running" {
            return true;
        }
        assert_eq!(e["status"], "backfilling", "{e}");
        false
    })
    .await;
    post_all(&p.agent_url, HISTORY..HISTORY + LIVE, 50).await;
    p.wait_pipeline_caught_up(HISTORY + LIVE, Duration::from_secs(120))
        .await;
    let rows = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    assert_eq!(
        counts(&rows),
        expected(0..HISTORY + LIVE, false),
        "the first version's rows over the whole history"
    );
}

/// The aggregate archive across `kill -9`: `events_per_type` runs while 20,000 events arrive in
/// event-time order (windows close all along, so the archiver commits `agg_events_per_type`
/// again and again) and the broker is killed with SIGKILL ten times at random moments. Then
/// `deltalake` and DuckDB read exactly the aggregate's final rows, each once, equal to an
/// independent count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_rows_are_archived_once_across_kill_9() {
    const EVENTS: u64 = 20_000;
    let mut p = Pipeline::with_args(
        &[
            "--ship-batch-bytes-max=1024",
            "--ship-timeout-ms=1000",
            "--ship-backoff-max-ms=200",
        ],
        &[
            "--archive-interval-ms=50",
            // Small commits: many of them, for the kills to fall between.
            "--archive-commit-events-max=200",
            "--aggregate-commit-interval-ms=50",
            "--pipeline-batch-events=200",
            "--archive-compact-min-files=4",
        ],
    );
    p.start().await;
    deploy(&p, &[]);
    let url = p.agent_url.clone();
    let posting = tokio::spawn(async move { post_all(&url, 0..EVENTS, 50).await });
    let seed = runnel_e2e::kill_seed();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rand::Rng::random_range(
            &mut rng,
            200..800,
        )))
        .await;
        p.broker.kill9();
        p.start_broker().await;
    }
    posting.await.unwrap();
    p.wait_pipeline_caught_up(EVENTS, Duration::from_secs(120))
        .await;
    let rows = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    assert_eq!(
        counts(&rows),
        expected(0..EVENTS, false),
        "the aggregate's rows"
    );
    let a = archive_holds(&p, &counts(&finals(&rows)), "the final rows").await;
    let n = counts(&finals(&rows)).len();
    assert_eq!(a["rows"]["deltalake"], n, "a row twice: {}", a["rows"]);
    assert_eq!(a["rows"]["duckdb"], n, "a row twice: {}", a["rows"]);
    eprintln!(
        "agg_events_per_type after 10 kills: {n} rows, table version {}",
        a["version"]
    );
    assert!(
        a["version"].as_i64() > Some(10),
        "the table was committed again and again: version {}",
        a["version"]
    );
}

/// Metric `name{table="TABLE"}` in a `/metrics` text (`None` before it is first set).
fn table_metric(metrics: &str, name: &str, table: &str) -> Option<f64> {
    let prefix = format!("{name}{{table=\"{table}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A backlog of the log does not hold up an aggregate's table. The archive waits ten minutes
/// between passes, so while 20,000 events go through the pipeline it archives nothing: the
/// log and the aggregate's outbox both fill (in commits of 200 events and 200 rows, a hundred
/// of each to catch up). The broker restarts, which starts a pass at once. The tables take
/// turns of `archive_slice_ms`, so the aggregate's table commits again and again while
/// `events` is still behind (one turn for each table would give it one commit, then the wait),
/// goes on without waiting once `events` has caught up, and ends holding every final row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_table_is_archived_while_events_catch_up() {
    const EVENTS: u64 = 20_000;
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--archive-interval-ms=600000",
            "--archive-commit-events-max=200",
            "--archive-slice-ms=300",
            "--aggregate-commit-interval-ms=50",
            "--pipeline-batch-events=200",
        ],
    );
    p.start().await;
    deploy(&p, &[]);
    post_all(&p.agent_url, 0..EVENTS, 50).await;
    p.wait_pipeline_caught_up(EVENTS, Duration::from_secs(120))
        .await;
    let rows = read_rows(&p.admin_addr).unwrap_or_else(|e| panic!("agg read: {e}"));
    let want = counts(&finals(&rows));
    assert!(want.len() > 2_000, "{} final rows", want.len());
    let status: Value = serde_json::from_str(&p.cli(&["archive", "status"])).unwrap();
    assert!(
        status["tables"][0]["archived_end"].as_u64() < Some(EVENTS / 2),
        "the archive did not wait: {status}"
    );

    p.broker.kill9();
    p.start_broker().await;
    // Aggregate commits seen while `events` was still behind the log.
    let (mut while_behind, mut behind_seen) = (0.0_f64, false);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m = p.metrics().await;
        let lag = table_metric(&m, "runnel_archive_lag_events", "events");
        let commits = table_metric(&m, "runnel_archive_commits_total", "agg_events_per_type");
        match lag {
            Some(l) if l > 0.0 => {
                behind_seen = true;
                while_behind = while_behind.max(commits.unwrap_or(0.0));
            }
            Some(_) if behind_seen => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "events did not catch up: lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("agg_events_per_type: {while_behind} commits while events was behind");
    assert!(
        while_behind >= 3.0,
        "the aggregate's table waited for events: {while_behind} commits while it was behind"
    );
    let a = archive_holds(&p, &want, "the final rows").await;
    assert_eq!(
        a["rows"]["deltalake"],
        want.len(),
        "a row twice: {}",
        a["rows"]
    );
    assert_eq!(
        a["rows"]["duckdb"],
        want.len(),
        "a row twice: {}",
        a["rows"]
    );
}
