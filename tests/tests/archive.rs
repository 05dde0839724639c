//! The archive: the log copied into the Delta table `events` exactly once, read back by the
//! Python `deltalake` package and DuckDB as a user would, with the broker killed with SIGKILL
//! while it archives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use runnel_e2e::{Moto, Pipeline, bin, python, runnel_json};
use serde_json::Value;

const TYPES: [&str; 4] = ["page.view", "order.placed", "cart.add", "app.open"];
const DAYS: u64 = 5;

/// `archive_check.py` over the table at `uri`, parsed.
fn check(uri: &str, options: Option<&Value>) -> Value {
    try_check(uri, options).unwrap_or_else(|e| panic!("{e}"))
}

/// `archive_check.py` over the table at `uri`, parsed, or what it printed when it failed.
fn try_check(uri: &str, options: Option<&Value>) -> Result<Value, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/archive_check.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script).arg(uri);
    if let Some(o) = options {
        cmd.arg(o.to_string());
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "archive_check.py {uri}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

const DAY_MS: u64 = 86_400_000;

/// Midnight (UTC) ten days ago, fixed for the test process: the first of the events' days.
fn base_ms() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = chrono::Utc::now().timestamp_millis() as u64;
        (now / DAY_MS - 10) * DAY_MS
    })
}

/// Event `n`: one of four types, its event time on one of five days (ten to six days ago).
fn event(n: u64) -> Value {
    let day = n % DAYS;
    let ms = base_ms() + day * DAY_MS + (n % 86_400) * 1000;
    serde_json::json!({
        "event_id": format!("a-{n}"),
        "event_type": TYPES[(n / 7 % 4) as usize],
        "timestamp": ms,
        "user_id": format!("user-{}", n % 97),
        "properties": {"n": n, "pad": "x".repeat(60)},
    })
}

/// The partition (`type|date`) of event `n`.
fn partition_of(n: u64) -> String {
    let e = event(n);
    let ms = e["timestamp"].as_i64().unwrap();
    let date = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d");
    format!("{}|{date}", e["event_type"].as_str().unwrap())
}

/// Posts events `range` in requests of `per`, retrying each until it gets a 202.
async fn post_all(url: &str, range: std::ops::Range<u64>, per: u64) {
    runnel_e2e::post_range(url, range, per, event).await
}

/// The Flight token of these tests' brokers.
const TOKEN: &str = "archive-test-token";

/// Broker arguments serving Flight on a free loopback port, and that address.
fn flight_args() -> (Vec<String>, String) {
    let addr = format!("127.0.0.1:{}", runnel_e2e::free_tcp_port());
    (
        vec![
            format!("--flight-addr={addr}"),
            format!("--flight-token={TOKEN}"),
            // Plain Flight reads fresh: the tests read `events` again as it grows.
            "--flight-cache-ttl-ms=0".to_string(),
        ],
        addr,
    )
}

/// `runnel query SQL --format json` against the broker's Flight at `addr`: the rows, or the
/// error it printed.
fn try_query(addr: &str, sql: &str) -> Result<Vec<Value>, String> {
    runnel_json([
        "query",
        sql,
        "--format",
        "json",
        &format!("--flight-addr={addr}"),
        &format!("--flight-token={TOKEN}"),
    ])
}

/// [`try_query`] that must succeed.
fn query(addr: &str, sql: &str) -> Vec<Value> {
    try_query(addr, sql).unwrap_or_else(|e| panic!("runnel query {sql:?}: {e}"))
}

/// `SELECT count(*) FROM events`, once the broker answers it (it is unavailable until the
/// archive is open after a start).
fn count_events(addr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_query(addr, "SELECT count(*) AS n FROM events") {
            Ok(rows) => return rows[0]["n"].clone(),
            Err(e) => assert!(Instant::now() < deadline, "events: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `events` in SQL (log and archive together) holds events `0..n`, per partition, each offset
/// once; a query bounded in `timestamp` (pruned to one day's partitions) counts that day.
fn assert_sql_events_are_the_log(addr: &str, n: u64) {
    let rows = query(
        addr,
        "SELECT count(*) AS n, count(DISTINCT \"offset\") AS d, min(\"offset\") AS lo, \
         max(\"offset\") AS hi FROM events",
    );
    assert_eq!(
        rows[0],
        serde_json::json!({"n": n, "d": n, "lo": 0, "hi": n - 1}),
        "runnel query over events"
    );
    let rows = query(
        addr,
        "SELECT event_type || '|' || to_char(\"timestamp\", '%Y-%m-%d') AS p, count(*) AS n \
         FROM events GROUP BY 1",
    );
    let got: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            (
                r["p"].as_str().unwrap().to_string(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        *want.entry(partition_of(i)).or_default() += 1;
    }
    assert_eq!(got, want, "runnel query per partition");
    // The second day, by event time.
    let from = (base_ms() + DAY_MS) as i64;
    let day = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let sql = format!(
        "SELECT count(*) AS n FROM events WHERE \"timestamp\" >= '{}' AND \"timestamp\" < '{}'",
        day(from),
        day(from + 86_400_000)
    );
    let want = (0..n)
        .filter(|i| {
            let ms = event(*i)["timestamp"].as_i64().unwrap();
            ms >= from && ms < from + 86_400_000
        })
        .count() as u64;
    assert_eq!(query(addr, &sql)[0]["n"], want, "{sql}");
    assert_flight_history(addr, "events", n, (from, from + DAY_MS as i64), want);
}

/// `flight_history_check.py` over `table` at `addr` (Flight on `127.0.0.1:PORT`): the whole
/// table by its path and the event-time range `[from, to)` by a command, once the broker
/// answers (it is unavailable until the archive is open after a start).
fn flight_history(addr: &str, table: &str, (from, to): (i64, i64)) -> Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/flight_history_check.py");
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(python())
            .arg(&script)
            .args([
                &format!("grpc://{addr}"),
                TOKEN,
                table,
                &time(from),
                &time(to),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flight_history_check.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        match got.get("error") {
            Some(e) => assert!(Instant::now() < deadline, "plain Flight {table}: {e}"),
            None => return got,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The default `flight_rows_max`: a plain Flight read by path covers at most this many of the
/// most recent offsets.
const FLIGHT_ROWS_MAX: u64 = 1_000_000;

/// Plain Flight's `table` of `n` rows: read by its path, the most recent `flight_rows_max` of
/// them (all `n` when fewer), each once and in order, over the archive and the log alike; and
/// `range_rows` rows in the event-time range `range`, read by a command.
fn assert_flight_history(addr: &str, table: &str, n: u64, range: (i64, i64), range_rows: u64) {
    let got = flight_history(addr, table, range);
    let all = &got["all"];
    let recent = n.min(FLIGHT_ROWS_MAX);
    assert_eq!(
        (&all["rows"], &all["distinct"], &all["ordered"]),
        (&recent.into(), &recent.into(), &true.into()),
        "plain Flight {table}: {got}"
    );
    if table == "events" {
        assert_eq!(
            (&all["min"], &all["max"]),
            (&(n - recent).into(), &(n - 1).into()),
            "{got}"
        );
    }
    let r = &got["range"];
    assert_eq!(
        (&r["rows"], &r["distinct"]),
        (&range_rows.into(), &range_rows.into()),
        "plain Flight {table} over {range:?}: {got}"
    );
}

/// `runnel archive status`, parsed.
fn archive_status(p: &Pipeline) -> Value {
    serde_json::from_str(&p.cli(&["archive", "status"])).unwrap()
}

/// Waits until the archive holds the whole log of `n` events.
async fn wait_archived(p: &Pipeline, n: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = archive_status(p);
        let t = &s["tables"][0];
        if t["archived_end"].as_u64() >= Some(n) && t["lag_events"] == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the archive did not reach {n} events in {timeout:?}: {s}\n{}",
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every reader counts exactly the log's events, per partition, each offset once, and the
/// stored files are exactly the committed ones (no orphan left).
fn assert_archive_is_the_log(got: &Value, n: u64) {
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        *want.entry(partition_of(i)).or_default() += 1;
    }
    let want = serde_json::to_value(want).unwrap();
    for reader in ["deltalake", "duckdb", "parquet"] {
        let r = &got[reader];
        assert_eq!(r["total"], n, "{reader}: {r}");
        assert_eq!(r["distinct_offsets"], n, "{reader}: {r}");
        assert_eq!(r["min_offset"], 0, "{reader}: {r}");
        assert_eq!(r["max_offset"], n - 1, "{reader}: {r}");
        assert_eq!(r["by_partition"], want, "{reader}");
    }
    assert_eq!(got["files"]["same"], true, "{}", got["files"]);
}

/// Must-show 1 and 2: events over five event-time days, archived every 100 ms in commits of at
/// most 2,000 events while the broker is killed with SIGKILL at 20 random moments (uploads
/// and commits in flight among them); afterwards `deltalake` and DuckDB each count exactly the
/// log's events per `event_type` and date, no offset twice, and no uncommitted file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_offset_once_across_kill_9() {
    const EVENTS: u64 = 60_000;
    const KILLS: u32 = 20;
    let (mut broker_args, flight) = flight_args();
    broker_args.extend([
        "--archive-interval-ms=100".to_string(),
        "--archive-commit-events-max=2000".to_string(),
        // Compaction runs between the kills too.
        "--archive-compact-min-files=4".to_string(),
    ]);
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(
        &["--ship-timeout-ms=1000", "--ship-backoff-max-ms=200"],
        &broker_args,
    );
    p.start().await;
    // An aggregator too: its final rows go to agg_events_per_type across the kills.
    let wasm = runnel_e2e::plugin("events_per_type");
    p.cli(&[
        "plugin",
        "deploy",
        wasm.to_str().unwrap(),
        "--name",
        "events_per_type",
    ]);
    let url = p.agent_url.clone();
    let posting = tokio::spawn(async move { post_all(&url, 0..EVENTS, 250).await });
    let seed = runnel_e2e::kill_seed();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        p.broker.kill9();
        p.start_broker().await;
    }
    posting.await.unwrap();
    p.wait_for_records(EVENTS, Duration::from_secs(120)).await;
    let status = wait_archived(&p, EVENTS, Duration::from_secs(120)).await;
    let table = &status["tables"][0];
    assert_eq!(table["rows"], EVENTS, "{status}");
    let swept = p
        .broker
        .log_text()
        .matches("deleted an archive file no commit references")
        .count();
    eprintln!(
        "archive after {KILLS} kills: version {}, {} files, {} orphans swept",
        table["version"], table["files"], swept
    );
    // 20 partitions, each compacted whenever it holds 4 small files, after the pass that
    // caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = archive_status(&p);
        let files = s["tables"][0]["files"].as_u64().unwrap();
        if files < 20 * 4 {
            eprintln!("compacted to {files} files");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "small files are not compacted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Removed files are vacuumed twice the interval after their removal, at a later pass
    // (later still when the machine is busy): until then a plain Parquet reader sees them,
    // and one that lists a file the vacuum then deletes fails to open it (Delta readers do
    // not: they read only committed files). Both are waited out.
    let uri = p.dir.path().join("broker/archive/events");
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        match try_check(uri.to_str().unwrap(), None) {
            Ok(got) if got["parquet"]["total"] == EVENTS || Instant::now() >= deadline => {
                break got;
            }
            Err(e) if !e.contains("No such file") || Instant::now() >= deadline => panic!("{e}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_archive_is_the_log(&got, EVENTS);
    assert_sql_events_are_the_log(&flight, EVENTS);
    let cols = got["deltalake"]["columns"].as_array().unwrap();
    for c in [
        "offset",
        "event_id",
        "event_type",
        "timestamp",
        "received_at",
        "agent_id",
        "properties",
        "date",
    ] {
        assert!(cols.iter().any(|x| x == c), "no column {c}: {cols:?}");
    }
    assert_aggregate_archived_once(&p).await;
}

/// `agg_events_per_type`, read by `deltalake` and DuckDB, holds exactly the aggregate's final
/// rows as `state.redb` has them (`runnel agg read`), each once.
async fn assert_aggregate_archived_once(p: &Pipeline) {
    let uri = p.dir.path().join("broker/archive/agg_events_per_type");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/agg_check.py");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = runnel_e2e::agg_read(&p.admin_addr, "events_per_type").unwrap();
        let want: BTreeMap<String, u64> = rows
            .iter()
            .filter(|r| r["is_final"] == true)
            .map(|r| {
                let start =
                    chrono::DateTime::parse_from_rfc3339(r["window_start"].as_str().unwrap())
                        .unwrap()
                        .timestamp_millis();
                (
                    format!(
                        "{start}|{}|{}",
                        r["event_type"].as_str().unwrap(),
                        r["platform"].as_str().unwrap_or("")
                    ),
                    r["events"].as_u64().unwrap(),
                )
            })
            .collect();
        let out = std::process::Command::new(python())
            .arg(&script)
            .arg(&uri)
            .output()
            .unwrap();
        let got: Option<Value> = out
            .status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap());
        if let Some(got) = &got {
            let read = |r: &str| -> BTreeMap<String, u64> {
                serde_json::from_value(got[r].clone()).unwrap()
            };
            if !want.is_empty() && read("deltalake") == want && read("duckdb") == want {
                assert_eq!(
                    got["rows"]["deltalake"],
                    want.len(),
                    "a row twice: {}",
                    got["rows"]
                );
                assert_eq!(
                    got["rows"]["duckdb"],
                    want.len(),
                    "a row twice: {}",
                    got["rows"]
                );
                let status = archive_status(p);
                let t = status["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == "agg_events_per_type")
                    .cloned()
                    .unwrap_or_default();
                eprintln!(
                    "agg_events_per_type: {} final rows, each once; version {}, {} files",
                    want.len(),
                    t["version"],
                    t["files"]
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agg_events_per_type is not the aggregate's {} final rows: {}",
            want.len(),
            got.map_or_else(
                || String::from_utf8_lossy(&out.stderr).into_owned(),
                |g| format!("{} rows", g["rows"])
            )
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Must-show 1 against S3: the archive in a moto bucket, a kill -9 in the middle, read back by
/// `deltalake` and DuckDB (httpfs) with the same counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_in_s3_reads_back_exactly() {
    const EVENTS: u64 = 20_000;
    let moto = Moto::start().await;
    moto.bucket("runnel-archive").await;
    let (mut broker_args, flight) = flight_args();
    broker_args.extend(
        [
            "--archive-url=s3://runnel-archive/prod".to_string(),
            format!("--archive-s3-endpoint={}", moto.endpoint),
        ]
        .into_iter()
        .chain(
            [
                "--archive-s3-region=us-east-1",
                "--archive-s3-access-key-id=testing",
                "--archive-s3-secret-access-key=testing",
                "--archive-interval-ms=200",
                "--archive-commit-events-max=3000",
            ]
            .map(String::from),
        ),
    );
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&[], &broker_args);
    p.start().await;
    post_all(&p.agent_url, 0..EVENTS / 2, 500).await;
    p.broker.kill9();
    p.start_broker().await;
    post_all(&p.agent_url, EVENTS / 2..EVENTS, 500).await;
    p.wait_for_records(EVENTS, Duration::from_secs(60)).await;
    let status = wait_archived(&p, EVENTS, Duration::from_secs(60)).await;
    assert_eq!(
        status["tables"][0]["url"], "s3://runnel-archive/prod/events/",
        "{status}"
    );
    let options = serde_json::json!({
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ALLOW_HTTP": "true",
    });
    let got = check("s3://runnel-archive/prod/events", Some(&options));
    assert_archive_is_the_log(&got, EVENTS);
    assert_sql_events_are_the_log(&flight, EVENTS);
}

/// A bad `archive_url` stops the broker at start with a message naming the setting.
#[test]
fn a_bad_archive_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("runnel"))
        .args(["broker", "--archive-url=ftp://host/x"])
        .arg(format!("--data-dir={}", dir.path().display()))
        .args(["--quic-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("archive_url") && err.contains("\"ftp\""),
        "{err}"
    );
}

/// `runnel log stats`: (first offset, segments).
fn hot_tier(p: &Pipeline) -> (u64, u64) {
    let s = p.log_stats();
    (
        s["start_offset"].as_u64().unwrap(),
        s["segments"].as_u64().unwrap(),
    )
}

/// Must-show 3 (the hot tier): with `log_retention_ms=0` the log keeps only what the archive
/// lacks, and `events` in SQL still counts everything; with the archive unable to commit (its
/// folder replaced by a file) not one segment is deleted while the log grows, and once it can
/// again it catches up and the hot tier shrinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_tier_is_deleted_only_once_archived() {
    const EVENTS: u64 = 20_000;
    let (mut broker_args, flight) = flight_args();
    // Requests of 10 events, batches of at most 1 KiB compressed (about 50 events, 17 KiB
    // decompressed): a segment holds about 1,500 events.
    broker_args.extend(
        [
            "--batch-bytes-max=32768",
            "--segment-bytes-max=65536",
            "--log-retention-ms=0",
            "--archive-interval-ms=200",
        ]
        .map(String::from),
    );
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&["--ship-batch-bytes-max=1024"], &broker_args);
    p.start().await;
    post_all(&p.agent_url, 0..EVENTS / 2, 10).await;
    p.wait_for_records(EVENTS / 2, Duration::from_secs(60))
        .await;
    wait_archived(&p, EVENTS / 2, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hot_tier(&p).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "no segment was deleted: {:?}\n{}\n{}",
            p.log_stats(),
            archive_status(&p),
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (start, segments) = hot_tier(&p);
    eprintln!("hot tier after archiving: from offset {start}, {segments} segments");
    assert_sql_events_are_the_log(&flight, EVENTS / 2);
    assert!(
        p.metrics()
            .await
            .contains("runnel_log_segments_deleted_total")
    );

    // The archive cannot commit: its folder is a file now. Segments below its committed end
    // may still go (the retirement after the last commit can come after this); none above it.
    let archived_end = archive_status(&p)["tables"][0]["archived_end"]
        .as_u64()
        .unwrap();
    let archive = p.dir.path().join("broker/archive");
    let away = p.dir.path().join("archive.away");
    std::fs::rename(&archive, &away).unwrap();
    std::fs::write(&archive, b"not a folder").unwrap();
    post_all(&p.agent_url, EVENTS / 2..EVENTS, 10).await;
    p.wait_for_records(EVENTS, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (start_stopped, segments_stopped) = hot_tier(&p);
    assert!(
        start_stopped <= archived_end,
        "a segment the archive lacks was deleted: the log starts at {start_stopped}, the archive ends at {archived_end}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        hot_tier(&p).0,
        start_stopped,
        "a segment was deleted while the archive cannot commit"
    );
    assert!(
        segments_stopped >= segments + 3,
        "the log grew: {segments} → {segments_stopped} segments"
    );
    let status = archive_status(&p);
    assert!(
        status["tables"][0]["last_error"].is_string(),
        "the archive reports its failure: {status}"
    );
    let held = p.log_read(start_stopped, EVENTS as usize);
    assert_eq!(
        held.len() as u64,
        EVENTS - start_stopped,
        "every unarchived event is held"
    );

    // Back: it catches up, then deletes.
    std::fs::remove_file(&archive).unwrap();
    std::fs::rename(&away, &archive).unwrap();
    wait_archived(&p, EVENTS, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hot_tier(&p).1 >= segments_stopped {
        assert!(Instant::now() < deadline, "the hot tier did not shrink");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_sql_events_are_the_log(&flight, EVENTS);
    let got = check(archive.join("events").to_str().unwrap(), None);
    assert_archive_is_the_log(&got, EVENTS);
}

/// The rows per `event_type|date` that `reader` counts in `got`.
fn partitions(got: &Value, reader: &str) -> BTreeMap<String, u64> {
    got[reader]["by_partition"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The rows of `events` `0..n` per partition whose day is `days` (0 the first) or later.
fn want_from_day(n: u64, first_day: u64) -> BTreeMap<String, u64> {
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in (0..n).filter(|i| i % DAYS >= first_day) {
        *want.entry(partition_of(i)).or_default() += 1;
    }
    want
}

/// Must-show 3 (lifecycle), with the thresholds shortened: the events' five days are ten to
/// six days old. With `archive_cold_after_days=8` the two oldest move to the cold tier while a
/// reader counts `events` again and again (it sees every event once every time); `deltalake`
/// and DuckDB read the warm and the cold table and together count the log; the audit log has
/// the moves. Then with `archive_retention_days=9` the oldest day is deleted, and `events`
/// counts the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_move_to_the_cold_tier_and_are_deleted_with_every_count_exact() {
    const EVENTS: u64 = 10_000;
    let (mut broker_args, flight) = flight_args();
    broker_args.push("--archive-interval-ms=200".to_string());
    let args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&[], &args);
    p.start().await;
    post_all(&p.agent_url, 0..EVENTS, 500).await;
    p.wait_for_records(EVENTS, Duration::from_secs(60)).await;
    wait_archived(&p, EVENTS, Duration::from_secs(60)).await;
    assert_sql_events_are_the_log(&flight, EVENTS);

    // The cold tier: the two oldest days are due.
    let cold = p.dir.path().join("cold");
    p.broker.kill9();
    p.broker.args.extend([
        format!("--archive-cold-url={}", cold.display()),
        "--archive-cold-after-days=8".to_string(),
    ]);
    p.start_broker().await;
    let counts = {
        let flight = flight.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                seen.push(count_events(&flight));
            }
            seen
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let moved = loop {
        let s = archive_status(&p);
        if s["tables"][1]["rows"]
            == want_from_day(EVENTS, 0).values().sum::<u64>()
                - want_from_day(EVENTS, 2).values().sum::<u64>()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the days did not move: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved["tables"][1]["tier"], "cold", "{moved}");
    let seen = counts.join().unwrap();
    assert!(
        seen.iter().all(|n| *n == EVENTS),
        "every count of events during the moves is {EVENTS}: {seen:?}"
    );
    eprintln!("{} counts during the moves, all {EVENTS}", seen.len());
    assert_sql_events_are_the_log(&flight, EVENTS);
    // Removed warm files are deleted from the store after twice the interval.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let warm = check(
        p.dir.path().join("broker/archive/events").to_str().unwrap(),
        None,
    );
    let cold_got = check(cold.join("events").to_str().unwrap(), None);
    for reader in ["deltalake", "duckdb", "parquet"] {
        assert_eq!(
            partitions(&warm, reader),
            want_from_day(EVENTS, 2),
            "warm, {reader}"
        );
        let mut both = partitions(&cold_got, reader);
        for (k, v) in partitions(&warm, reader) {
            assert!(both.insert(k, v).is_none(), "a partition in both tiers");
        }
        assert_eq!(both, want_from_day(EVENTS, 0), "warm + cold, {reader}");
    }
    let audit = std::fs::read_to_string(p.dir.path().join("broker/audit/archive.jsonl")).unwrap();
    let moves: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["action"] == "move")
        .collect();
    assert_eq!(moves.len(), 2, "{audit}");
    assert!(
        p.metrics()
            .await
            .contains("runnel_archive_moved_files_total")
    );

    // Retention: the oldest day goes.
    p.broker.kill9();
    p.broker.args.push("--archive-retention-days=9".to_string());
    p.start_broker().await;
    let want = want_from_day(EVENTS, 1).values().sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_events(&flight) != want {
        assert!(
            Instant::now() < deadline,
            "the oldest day was not deleted: {}",
            archive_status(&p)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = std::fs::read_to_string(p.dir.path().join("broker/audit/archive.jsonl")).unwrap();
    let deletes = audit.lines().filter(|l| l.contains("\"delete\"")).count();
    assert_eq!(deletes, 1, "{audit}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cold_got = check(cold.join("events").to_str().unwrap(), None);
    let mut want_cold = want_from_day(EVENTS, 1);
    want_cold.retain(|k, _| !want_from_day(EVENTS, 2).contains_key(k));
    for reader in ["deltalake", "duckdb", "parquet"] {
        assert_eq!(
            partitions(&cold_got, reader),
            want_cold,
            "cold after retention, {reader}"
        );
    }
}

/// Must-show 1 at scale: 2,000,000 events over five event-time days, archived in commits of
/// the default size; `deltalake`, DuckDB's `delta_scan` and its plain `read_parquet` each count
/// exactly the log's events per `event_type` and date with no offset twice, and `runnel query`
/// over `events` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_million_events_are_archived_exactly() {
    const EVENTS: u64 = 2_000_000;
    let (mut broker_args, flight) = flight_args();
    broker_args.push("--archive-interval-ms=1000".to_string());
    // No compaction here (the kill -9 test has it): plain Parquet readers would see the files
    // it replaced until they are vacuumed.
    broker_args.push("--archive-compact-min-files=1000000".to_string());
    let args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&[], &args);
    p.start().await;
    let started = Instant::now();
    let posters: Vec<_> = (0..2u64)
        .map(|i| {
            let url = p.agent_url.clone();
            let range = i * EVENTS / 2..(i + 1) * EVENTS / 2;
            tokio::spawn(async move { post_all(&url, range, 2000).await })
        })
        .collect();
    for t in posters {
        t.await.unwrap();
    }
    p.wait_for_records(EVENTS, Duration::from_secs(300)).await;
    let status = wait_archived(&p, EVENTS, Duration::from_secs(300)).await;
    eprintln!(
        "{EVENTS} events posted and archived in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        status["tables"][0]
    );
    let uri = p.dir.path().join("broker/archive/events");
    let got = check(uri.to_str().unwrap(), None);
    assert_archive_is_the_log(&got, EVENTS);
    assert_sql_events_are_the_log(&flight, EVENTS);
}

/// Event `n` of the `enriched_events` tests: in blocks of 1,000, a busy block (four types, one
/// of them `debug.trace`, an email on every third event) then a quiet one (two types, no
/// email: batches an enricher passes unchanged).
fn enriched_event(n: u64) -> Value {
    let quiet = (n / 1000) % 2 == 1;
    let event_type = if quiet {
        ["page.view", "app.open"][(n % 2) as usize]
    } else {
        ["page.view", "order.placed", "debug.trace", "app.open"][(n % 4) as usize]
    };
    let mut props = serde_json::json!({"n": n});
    if !quiet && n.is_multiple_of(3) {
        props["email"] = format!("user{n}@example.com").into();
    }
    serde_json::json!({
        "event_id": format!("e-{n}"),
        "event_type": event_type,
        "timestamp": base_ms() + (n % DAYS) * DAY_MS + n,
        "properties": props,
    })
}

/// `enriched_check.py` over the table at `uri`, parsed (`None` while it cannot be read).
fn enriched_check(uri: &std::path::Path) -> Result<Value, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/enriched_check.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(uri)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// What `enriched_events` holds for events `0..n` when `sampler` (dropping `debug.`) and
/// `pii-redact` ran from event `chain_from` on: (rows, plain emails, hashed emails, rows per
/// type).
fn enriched_want(n: u64, chain_from: u64) -> (u64, u64, u64, BTreeMap<String, u64>) {
    let (mut rows, mut plain, mut hashed) = (0, 0, 0);
    let mut by_type = BTreeMap::new();
    for i in 0..n {
        let e = enriched_event(i);
        let t = e["event_type"].as_str().unwrap();
        let chained = i >= chain_from;
        if chained && t == "debug.trace" {
            continue;
        }
        rows += 1;
        *by_type.entry(t.to_string()).or_default() += 1;
        if e["properties"].get("email").is_some() {
            if chained {
                hashed += 1;
            } else {
                plain += 1;
            }
        }
    }
    (rows, plain, hashed, by_type)
}

/// Deploys `sampler` (dropping `debug.` events) and `pii-redact`, in that order.
fn deploy_chain(p: &Pipeline) {
    let sampler = runnel_e2e::plugin("sampler");
    p.cli(&[
        "plugin",
        "deploy",
        sampler.to_str().unwrap(),
        "--name",
        "sampler",
        "--version",
        "0.1.0",
        "--param",
        "drop_types=debug.",
    ]);
    let redact = runnel_e2e::plugin("pii_redact");
    p.cli(&[
        "plugin",
        "deploy",
        redact.to_str().unwrap(),
        "--name",
        "pii-redact",
        "--version",
        "0.1.0",
        "--param",
        "salt=s",
    ]);
}

/// `enriched_events`: events before the chain was deployed as received (chain `[]`), after it
/// without the dropped type and with emails hashed, each offset once across 5 SIGKILLs of the
/// broker; each data file's metadata names the chain that made it, compacted files too;
/// `deltalake`, DuckDB and `runnel query` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_events_hold_the_chain_output_once_across_kill_9() {
    const BEFORE: u64 = 4_000;
    const EVENTS: u64 = 24_000;
    const KILLS: u32 = 5;
    let (mut broker_args, flight) = flight_args();
    broker_args.extend([
        "--archive-interval-ms=100".to_string(),
        "--archive-commit-events-max=2000".to_string(),
        // Compaction (of one chain's files only) runs between the kills too.
        "--archive-compact-min-files=4".to_string(),
    ]);
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(
        &["--ship-timeout-ms=1000", "--ship-backoff-max-ms=200"],
        &broker_args,
    );
    p.start().await;
    let uri = p.dir.path().join("broker/archive/enriched_events");
    post_all_with(&p.agent_url, 0..BEFORE, enriched_event).await;
    // The events before the chain are through the pipeline (and archived) before it deploys.
    wait_enriched(&uri, BEFORE, BEFORE, Duration::from_secs(60)).await;
    deploy_chain(&p);
    let url = p.agent_url.clone();
    let posting = tokio::spawn(async move {
        runnel_e2e::post_range(&url, BEFORE..EVENTS, 250, enriched_event).await
    });
    let seed = runnel_e2e::kill_seed();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        p.broker.kill9();
        p.start_broker().await;
    }
    posting.await.unwrap();
    p.wait_for_records(EVENTS, Duration::from_secs(120)).await;
    let got = wait_enriched(&uri, EVENTS, BEFORE, Duration::from_secs(120)).await;
    let (rows, ..) = enriched_want(EVENTS, BEFORE);
    for (i, f) in got["chains"].as_array().unwrap().iter().enumerate() {
        let names: Vec<&str> = f["chain"]
            .as_array()
            .unwrap_or_else(|| panic!("file {i} names no chain: {f}"))
            .iter()
            .map(|l| l["plugin"].as_str().unwrap())
            .collect();
        if f["max_offset"].as_u64().unwrap() < BEFORE {
            assert!(names.is_empty(), "a file before the chain: {f}");
        } else {
            assert!(
                f["min_offset"].as_u64().unwrap() >= BEFORE,
                "a file across the deploy: {f}"
            );
            assert_eq!(names, ["sampler", "pii-redact"], "{f}");
            assert!(
                f["chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["version"] == "0.1.0"),
                "{f}"
            );
        }
    }
    // A query planned on a version whose small files compaction replaced, and that runs
    // past the test's vacuum delay (twice the 100 ms interval), is asked again.
    let sql = "SELECT count(*) AS n, count(DISTINCT \"offset\") AS d FROM enriched_events";
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match try_query(&flight, sql) {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "runnel query: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        got[0],
        serde_json::json!({"n": rows, "d": rows}),
        "runnel query"
    );
    let status = archive_status(&p);
    let t = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "enriched_events")
        .cloned()
        .unwrap_or_default();
    assert_eq!(t["rows"], rows, "{status}");
    eprintln!(
        "enriched_events after {KILLS} kills: {rows} rows, each once; version {}, {} files",
        t["version"], t["files"]
    );
}

/// Posts events `range` made by `event` in requests of 250.
async fn post_all_with(url: &str, range: std::ops::Range<u64>, event: fn(u64) -> Value) {
    runnel_e2e::post_range(url, range, 250, event).await
}

/// Waits until `enriched_events` at `uri` holds what [`enriched_want`] says for events
/// `0..n`, read by `deltalake` and DuckDB, each offset once; returns what they read.
async fn wait_enriched(uri: &std::path::Path, n: u64, chain_from: u64, timeout: Duration) -> Value {
    let (rows, plain, hashed, by_type) = enriched_want(n, chain_from);
    let by_type = serde_json::to_value(by_type).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let got = enriched_check(uri);
        if let Ok(g) = &got {
            let done = ["deltalake", "duckdb"]
                .iter()
                .all(|r| g[r]["total"] == rows);
            if done {
                for r in ["deltalake", "duckdb"] {
                    let s = &g[r];
                    assert_eq!(s["distinct_offsets"], rows, "{r}: an offset twice: {s}");
                    assert_eq!(s["plain_emails"], plain, "{r}: {s}");
                    assert_eq!(s["hashed_emails"], hashed, "{r}: {s}");
                    assert_eq!(s["by_type"], by_type, "{r}: {s}");
                }
                return g.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "enriched_events did not reach {rows} rows in {timeout:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `enriched_events` in SQL before the archive holds it (the `enriched` topic alone: one pass
/// every ten minutes) and after (a restart's first pass archives it): the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_events_in_sql_span_the_topic_and_the_archive() {
    const EVENTS: u64 = 3_000;
    let (mut broker_args, flight) = flight_args();
    broker_args.push("--archive-interval-ms=600000".to_string());
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&[], &broker_args);
    p.start().await;
    deploy_chain(&p);
    post_all_with(&p.agent_url, 0..EVENTS, enriched_event).await;
    p.wait_for_records(EVENTS, Duration::from_secs(60)).await;
    let (rows, _, hashed, _) = enriched_want(EVENTS, 0);
    let sql = "SELECT count(*) AS n, count(DISTINCT \"offset\") AS d, \
               count(*) FILTER (WHERE properties LIKE '%sha256:%') AS h, \
               count(*) FILTER (WHERE event_type = 'debug.trace') AS dbg FROM enriched_events";
    let want = serde_json::json!({"n": rows, "d": rows, "h": hashed, "dbg": 0});
    let read = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match try_query(&flight, sql) {
                Ok(r) if r[0] == want => return,
                other => assert!(Instant::now() < deadline, "{what}: {other:?}, want {want}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    read("enriched_events from the topic");
    let t = |p: &Pipeline| {
        archive_status(p)["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "enriched_events")
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(t(&p)["rows"], 0, "nothing archived before the next pass");
    p.broker.kill9();
    p.start_broker().await;
    let uri = p.dir.path().join("broker/archive/enriched_events");
    wait_enriched(&uri, EVENTS, 0, Duration::from_secs(60)).await;
    read("enriched_events from the archive");
    assert_eq!(t(&p)["rows"], rows);
    // Plain Flight serves it too, over the archive; the second day by a time range.
    let day = (base_ms() + DAY_MS) as i64;
    let in_day = (0..EVENTS)
        .filter(|n| n % DAYS == 1 && enriched_event(*n)["event_type"] != "debug.trace")
        .count() as u64;
    assert_flight_history(
        &flight,
        "enriched_events",
        rows,
        (day, day + DAY_MS as i64),
        in_day,
    );
}

/// An enricher's replay (`--backfill-from TIME` on a deployed enricher): `sampler` 0.1.0
/// drops `debug.` events and `pii-redact` hashes emails over 12,000 events of five days, most
/// of them read back from the archive's `events` (`log_retention_ms=0`). `sampler` 0.2.0,
/// which drops nothing, is deployed with `--backfill-from` day 2 + 6 s while 4,000 more
/// events arrive, and the broker is killed with SIGKILL three times. Afterwards
/// `enriched_events` holds, each offset once, the new chain's rows for the events at or after
/// that time and for every later event, and the old chain's rows for the rest (a day-2 file
/// holds both, so it was rewritten); every file names the chain that made its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enricher_replayed_from_a_time_replaces_its_rows_once_across_kill_9() {
    const HISTORY: u64 = 12_000;
    const EVENTS: u64 = 16_000;
    let from_ms = base_ms() + 2 * DAY_MS + 6_000;
    let (mut broker_args, flight) = flight_args();
    broker_args.extend(
        [
            "--archive-interval-ms=100",
            "--archive-commit-events-max=2000",
            "--archive-compact-min-files=4",
            "--batch-bytes-max=131072",
            "--segment-bytes-max=262144",
            "--log-retention-ms=0",
            "--backfill-archive-read-events=3000",
        ]
        .map(String::from),
    );
    let broker_args: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(
        &[
            "--ship-batch-bytes-max=1024",
            "--ship-timeout-ms=1000",
            "--ship-backoff-max-ms=200",
        ],
        &broker_args,
    );
    p.start().await;
    let uri = p.dir.path().join("broker/archive/enriched_events");
    deploy_chain(&p);
    post_all_with(&p.agent_url, 0..HISTORY, enriched_event).await;
    wait_enriched(&uri, HISTORY, 0, Duration::from_secs(120)).await;
    let sampler = runnel_e2e::plugin("sampler");
    let from = chrono::DateTime::from_timestamp_millis(from_ms as i64)
        .unwrap()
        .to_rfc3339();
    let deployed: Value = serde_json::from_str(&p.cli(&[
        "plugin",
        "deploy",
        sampler.to_str().unwrap(),
        "--name",
        "sampler",
        "--version",
        "0.2.0",
        "--param",
        "drop_types=none.",
        "--backfill-from",
        &from,
    ]))
    .unwrap();
    assert_eq!(deployed["version"], "0.2.0", "{deployed}");
    assert_eq!(deployed["backfill"]["version"], "0.2.0", "{deployed}");
    let url = p.agent_url.clone();
    let posting = tokio::spawn(async move {
        runnel_e2e::post_range(&url, HISTORY..EVENTS, 250, enriched_event).await
    });
    let seed = runnel_e2e::kill_seed();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        p.broker.kill9();
        p.start_broker().await;
    }
    posting.await.unwrap();
    p.wait_for_records(EVENTS, Duration::from_secs(120)).await;
    // What each event should be: the new chain's output from the time on and for the live
    // events, the old one's before.
    let (mut rows, mut hashed, mut by_type) = (0u64, 0u64, BTreeMap::<String, u64>::new());
    for n in 0..EVENTS {
        let e = enriched_event(n);
        let t = e["event_type"].as_str().unwrap();
        let new = n >= HISTORY || e["timestamp"].as_u64().unwrap() >= from_ms;
        if !new && t == "debug.trace" {
            continue;
        }
        rows += 1;
        *by_type.entry(t.to_string()).or_default() += 1;
        hashed += u64::from(e["properties"].get("email").is_some());
    }
    let by_type = serde_json::to_value(by_type).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let got = loop {
        let replaying = p
            .plugin_list()
            .iter()
            .any(|x| x["name"] == "sampler" && x.get("backfill").is_some());
        let got = enriched_check(&uri);
        if let (false, Ok(g)) = (replaying, &got)
            && ["deltalake", "duckdb"].iter().all(|r| {
                g[r]["total"] == rows
                    && g[r]["by_type"] == by_type
                    && g[r]["hashed_emails"] == hashed
            })
        {
            break g.clone();
        }
        assert!(
            Instant::now() < deadline,
            "enriched_events was not replayed to {rows} rows {by_type}: replaying {replaying}, {got:?}\n{}",
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for r in ["deltalake", "duckdb"] {
        assert_eq!(
            got[r]["distinct_offsets"], rows,
            "{r}: an offset twice: {}",
            got[r]
        );
        assert_eq!(got[r]["plain_emails"], 0, "{r}: {}", got[r]);
    }
    // Each file names the chain of its rows: 0.1.0 only below the time, in the history.
    let sampler_of = |f: &Value| -> String {
        f["chain"]
            .as_array()
            .unwrap_or_else(|| panic!("a file names no chain: {f}"))
            .iter()
            .find(|l| l["plugin"] == "sampler")
            .map(|l| l["version"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let files = got["chains"].as_array().unwrap();
    let (old, new): (Vec<&Value>, Vec<&Value>) =
        files.iter().partition(|f| sampler_of(f) == "0.1.0");
    assert!(!new.is_empty() && !old.is_empty(), "{files:?}");
    for f in &old {
        assert!(
            f["max_offset"].as_u64().unwrap() < HISTORY
                && f["max_timestamp_ms"].as_u64().is_none_or(|t| t < from_ms),
            "a file of the old chain past the replay's start: {f}"
        );
    }
    assert!(new.iter().all(|f| sampler_of(f) == "0.2.0"), "{files:?}");
    let sql = "SELECT count(*) AS n, count(DISTINCT \"offset\") AS d FROM enriched_events";
    assert_eq!(
        query(&flight, sql)[0],
        serde_json::json!({"n": rows, "d": rows}),
        "runnel query"
    );
    let replays = p
        .broker
        .log_text()
        .matches("committed an enricher's replay")
        .count();
    eprintln!(
        "enriched_events replayed from {from}: {rows} rows, {} files ({} of the old chain), {replays} replay commit(s)",
        files.len(),
        old.len()
    );
}
