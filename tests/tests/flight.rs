//! Arrow Flight end to end with the real client from PyPI: `pyarrow.flight` (installed by
//! `scripts/setup.sh` into `~/.cache/runnel-py`) lists, describes and reads the broker's
//! tables, and its results equal `runnel agg read` row for row; a missing or wrong token is
//! refused, and an unknown table or column is named.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_e2e::{Pipeline, free_tcp_port, plugin, run_python};
use runnel_gen::{Config, Scenario};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// A broker with Flight on a free port, `events_per_type` deployed and 5,000 ecommerce events
/// through the pipeline.
async fn pipeline_with_events(broker_args: &[&str]) -> (Pipeline, u16, usize) {
    let port = free_tcp_port();
    let mut args = vec![
        format!("--flight-addr=127.0.0.1:{port}"),
        format!("--flight-token={TOKEN}"),
    ];
    args.extend(broker_args.iter().map(|a| (*a).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Pipeline::with_args(&[], &args);
    p.start().await;
    p.cli(&[
        "plugin",
        "deploy",
        plugin("events_per_type").to_str().unwrap(),
        "--name",
        "events_per_type",
    ]);
    let events = runnel_gen::generate(&Config {
        seed: 11,
        scenario: Scenario::Ecommerce,
        events: 5_000,
        start_ms: 1_795_255_200_000,
        rate_per_sec: 20,
        sources: 1,
        ..Config::default()
    });
    runnel_e2e::post_generated(&p.agent_url, &events, events.len(), Duration::ZERO).await;
    p.wait_pipeline_caught_up(events.len() as u64, Duration::from_secs(60))
        .await;
    (p, port, events.len())
}

/// The value of counter `name` in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
}

/// `runnel agg read events_per_type`, as (start, end, is_final, event_type, platform, events).
fn cli_rows(p: &Pipeline) -> Vec<Row> {
    p.cli(&["agg", "read", "events_per_type", "--limit", "100000"])
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            row(ms(&r["window_start"]), ms(&r["window_end"]), &r)
        })
        .collect()
}

type Row = (i64, i64, bool, String, String, i64);

fn row(start: i64, end: i64, r: &Value) -> Row {
    (
        start,
        end,
        r["is_final"].as_bool().unwrap(),
        r["event_type"].as_str().unwrap().to_string(),
        r["platform"].as_str().unwrap().to_string(),
        r["events"].as_i64().unwrap(),
    )
}

/// Rows a Python script printed (timestamps as epoch milliseconds).
fn script_rows(v: &Value) -> Vec<Row> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            row(
                r["window_start"].as_i64().unwrap(),
                r["window_end"].as_i64().unwrap(),
                r,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_the_aggregates_and_refuses_bad_tokens() {
    let (p, port, n_events) = pipeline_with_events(&[]).await;
    let url = format!("grpc://127.0.0.1:{port}");
    let got = run_python("flight_check.py", &[&url, TOKEN, "events_per_type"]);
    // The same queries again come from the result cache.
    run_python("flight_check.py", &[&url, TOKEN, "events_per_type"]);
    let metrics = p.metrics().await;
    let counter = |name: &str| counter(&metrics, name);
    assert!(counter("runnel_flight_cache_hits_total") >= 4, "{metrics}");
    assert!(
        counter("runnel_flight_cache_misses_total") >= 4,
        "{metrics}"
    );

    let flights: Vec<String> = got["flights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            serde_json::from_str::<Value>(f.as_str().unwrap()).unwrap()["table"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        flights
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "dead_letters",
            "enriched_events",
            "events",
            "events_per_type",
            "late_events"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        got["info_schema"],
        serde_json::json!([
            "window_start",
            "window_end",
            "is_final",
            "event_type",
            "platform",
            "events"
        ])
    );
    assert_eq!(got["window"], "tumbling 1m");
    assert!(
        got["watermark"].as_str().unwrap().starts_with("2026-"),
        "{}",
        got["watermark"]
    );
    assert_eq!(
        got["schema"][0],
        serde_json::json!(["window_start", "timestamp[ms, tz=UTC]"])
    );
    assert_eq!(got["schema"][5], serde_json::json!(["events", "int64"]));

    // Row for row what `runnel agg read` prints.
    let want = cli_rows(&p);
    let rows = script_rows(&got["rows"]);
    assert!(!want.is_empty());
    assert_eq!(rows, want);
    let ios = got["ios_rows"].as_array().unwrap();
    assert!(!ios.is_empty() && ios.len() <= 5);
    assert!(ios.iter().all(|r| r["platform"] == "ios"));

    assert_eq!(got["events"].as_u64().unwrap() as usize, n_events);
    assert_eq!(got["events_schema"][0], "offset");
    let late = p.read_topic("late_events").len();
    assert_eq!(got["late_events"].as_u64().unwrap() as usize, late);
    assert_eq!(
        got["handshake"],
        serde_json::json!(["authorization", format!("Bearer {TOKEN}")])
    );

    // Refusals name what is wrong.
    let err = |k: &str| -> BTreeMap<String, String> {
        serde_json::from_value(got[k].clone()).unwrap_or_else(|_| panic!("{k}: no error: {got}"))
    };
    for k in [
        "no_token",
        "wrong_token",
        "wrong_token_get",
        "wrong_password",
    ] {
        let e = err(k);
        assert_eq!(e["type"], "FlightUnauthenticatedError", "{k}: {e:?}");
        assert!(e["message"].contains("authorization"), "{k}: {e:?}");
    }
    assert!(
        err("unknown_table")["message"].contains("\"no_such_table\""),
        "{got}"
    );
    assert!(
        err("unknown_column")["message"].contains("\"no_such_column\""),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_runs_sql_prepared_statements_and_catalog_metadata() {
    // One call at a time per token: the driver's calls wait in line and none is refused.
    let (p, port, n_events) = pipeline_with_events(&["--flight-token-concurrency-max=1"]).await;
    let url = format!("grpc://127.0.0.1:{port}");
    let copy_target = tempfile::tempdir().unwrap().keep().join("copied.csv");
    let got = run_python(
        "flight_sql_check.py",
        &[
            &url,
            TOKEN,
            "events_per_type",
            copy_target.to_str().unwrap(),
        ],
    );

    // Row for row what `runnel agg read` prints.
    let mut want = cli_rows(&p);
    want.sort();
    let mut rows = script_rows(&got["rows"]);
    rows.sort();
    assert!(!want.is_empty());
    assert_eq!(rows, want);
    assert_eq!(
        got["schema"],
        serde_json::json!([
            ["window_start", "timestamp[ms, tz=UTC]"],
            ["window_end", "timestamp[ms, tz=UTC]"],
            ["is_final", "bool"],
            ["event_type", "string"],
            ["platform", "string"],
            ["events", "int64"]
        ])
    );
    // The prepared statement's parameter, `$1` or `?`, selects the iOS rows.
    let mut ios: Vec<Row> = want.iter().filter(|r| r.4 == "ios").cloned().collect();
    ios.sort();
    assert!(!ios.is_empty());
    for k in ["ios_rows", "question_mark_rows"] {
        let mut got_ios = script_rows(&got[k]);
        got_ios.sort();
        assert_eq!(got_ios, ios, "{k}");
    }
    // SQL over the rows.
    let mut per_platform = std::collections::BTreeMap::<String, i64>::new();
    for r in &want {
        *per_platform.entry(r.4.clone()).or_default() += r.5;
    }
    let got_per_platform: std::collections::BTreeMap<String, i64> = got["per_platform"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["platform"].as_str().unwrap().to_string(),
                r["events"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_per_platform, per_platform);
    assert_eq!(got["events"].as_u64().unwrap() as usize, n_events);
    assert_eq!(
        got["late_events"].as_u64().unwrap() as usize,
        p.read_topic("late_events").len()
    );

    // Catalog metadata: catalog runnel, schema public, every table with its columns.
    let public = &got["objects"]["runnel"]["public"];
    for t in ["events", "dead_letters", "late_events", "events_per_type"] {
        assert!(public[t].is_array(), "{t} not in {}", got["objects"]);
    }
    assert_eq!(public["events_per_type"][5], "events");
    assert_eq!(public["events"][0], "offset");
    assert!(
        got["table_types"]
            .as_array()
            .unwrap()
            .contains(&Value::from("TABLE")),
        "{}",
        got["table_types"]
    );
    assert_eq!(got["table_schema"][0], "window_start");
    // GetSqlInfo: the server's name and version.
    let info = got["info"].as_object().unwrap();
    assert_eq!(info["vendor_name"], "Runnel", "{info:?}");
    assert_eq!(
        info["vendor_version"],
        env!("CARGO_PKG_VERSION"),
        "{info:?}"
    );
    assert_eq!(
        got["basic_auth_rows"].as_u64().unwrap() as usize,
        want.len()
    );

    // Errors name the unknown table or column.
    let message = |k: &str| -> String {
        got[k]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{k}: no error: {got}"))
            .to_string()
    };
    assert!(message("unknown_table").contains("no_such_table"), "{got}");
    for k in ["unknown_column", "unknown_column_prepared"] {
        assert!(message(k).contains("no_such_column"), "{k}: {got}");
    }
    // SQL is read-only.
    for k in ["copy", "create"] {
        assert!(message(k).contains("not supported"), "{k}: {got}");
    }
    assert!(!copy_target.exists());
    for k in ["no_token", "wrong_token", "wrong_password"] {
        let m = message(k);
        assert!(
            m.contains("UNAUTHENTICATED") && m.contains("authorization"),
            "{k}: {m}"
        );
    }

    // `runnel query` prints the same rows as a table, CSV and NDJSON.
    let sql = "SELECT platform, SUM(events) AS events FROM events_per_type GROUP BY platform ORDER BY platform";
    let flight_addr = format!("--flight-addr=127.0.0.1:{port}");
    let token = format!("--flight-token={TOKEN}");
    let query = |args: &[&str]| {
        std::process::Command::new(runnel_e2e::bin("runnel"))
            .arg("query")
            .args(args)
            .args([&flight_addr, &token])
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = query(args);
        assert!(
            out.status.success(),
            "runnel query {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let csv = ok(&[sql, "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("platform,events"));
    let from_csv: std::collections::BTreeMap<String, i64> = lines
        .map(|l| {
            let (k, v) = l.split_once(',').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(from_csv, per_platform);
    let json = ok(&[sql, "--format", "json"]);
    let from_json: std::collections::BTreeMap<String, i64> = json
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["platform"].as_str().unwrap().to_string(),
                v["events"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(from_json, per_platform);
    let table = ok(&[sql]);
    assert!(table.contains("| platform"), "{table}");
    for (platform, events) in &per_platform {
        assert!(
            table
                .lines()
                .any(|l| l.contains(platform.as_str()) && l.contains(&events.to_string())),
            "{table}"
        );
    }
    let failed = query(&["SELECT * FROM no_such_table"]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && err.contains("no_such_table"),
        "{err}"
    );

    // Waiting calls were counted, none refused.
    let metrics = p.metrics().await;
    assert!(metrics.contains("runnel_flight_calls_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_is_served_over_tls_when_configured() {
    // The broker's dev certificate (made at start, before Flight) serves Flight too.
    let port = free_tcp_port();
    let mut p = Pipeline::with_args(
        &[],
        &[
            &format!("--flight-addr=127.0.0.1:{port}"),
            &format!("--flight-token={TOKEN}"),
            "--flight-tls-cert={dir}/broker/tls/server.pem",
            "--flight-tls-key={dir}/broker/tls/server.key",
        ],
    );
    p.start().await;
    let ca = p.dir.path().join("broker/tls/ca.pem");
    let addr = format!("127.0.0.1:{port}");
    let got = run_python("flight_tls_check.py", &[&addr, TOKEN, ca.to_str().unwrap()]);
    assert_eq!(
        got["tables"],
        serde_json::json!(["dead_letters", "enriched_events", "events", "late_events"])
    );
    assert!(got["plain"].is_string(), "plain gRPC was answered: {got}");

    // `runnel query --tls-ca` too; without the CA the certificate is not trusted.
    let query = |tls_ca: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(runnel_e2e::bin("runnel"));
        c.args([
            "query",
            "SELECT count(*) AS n FROM events",
            "--format",
            "csv",
            &format!("--flight-addr={addr}"),
            &format!("--flight-token={TOKEN}"),
        ]);
        if let Some(ca) = tls_ca {
            c.arg(format!("--tls-ca={}", ca.display()));
        }
        c.output().unwrap()
    };
    let out = query(Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n0\n");
    assert!(!query(None).status.success());
}

/// A statement is planned once and its plan runs again with the data and the watermark as they
/// are then: the second run sees the events appended since, and the schema metadata names the
/// watermark of now, not of when it was planned. (The result cache is off here: with it, rows of
/// open windows may be up to `flight_cache_ttl_ms` old, planned or not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_sql_plan_answers_with_the_data_and_watermark_of_now() {
    let (p, port, n_events) = pipeline_with_events(&["--flight-cache-ttl-ms=0"]).await;
    let url = format!("grpc://127.0.0.1:{port}");
    let sql = "SELECT sum(events) AS n FROM events_per_type";
    // What the aggregate counts now, as `runnel agg read` prints it.
    let counted = |p: &Pipeline| cli_rows(p).iter().map(|r| r.5).sum::<i64>();
    let first = run_python("flight_sql_twice.py", &[&url, TOKEN, sql]);
    assert_eq!(first["rows"][0]["n"], counted(&p), "{first}");
    // Later events: more rows, and the watermark moves.
    let more = runnel_gen::generate(&Config {
        seed: 12,
        scenario: Scenario::Ecommerce,
        events: 1_000,
        start_ms: 1_795_255_200_000 + 3_600_000,
        rate_per_sec: 20,
        sources: 1,
        ..Config::default()
    });
    runnel_e2e::post_generated(&p.agent_url, &more, more.len(), Duration::ZERO).await;
    let total = n_events + more.len();
    p.wait_pipeline_caught_up(total as u64, Duration::from_secs(60))
        .await;
    let second = run_python("flight_sql_twice.py", &[&url, TOKEN, sql]);
    assert_eq!(second["rows"][0]["n"], counted(&p), "{second}");
    assert!(second["rows"][0]["n"].as_i64() > first["rows"][0]["n"].as_i64());
    let watermark = |v: &Value| {
        v["metadata"]["runnel.watermark"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let listed = p.admin().aggregates().await.unwrap();
    let now = listed
        .iter()
        .find(|a| a.name == "events_per_type")
        .and_then(|a| a.watermark.clone())
        .unwrap();
    assert_ne!(watermark(&first), watermark(&second));
    assert_eq!(watermark(&second), now);
    // Planned once: the DoGet of the first run, and both calls of the second, found the plan.
    let metrics = p.metrics().await;
    let counter = |name: &str| counter(&metrics, name);
    assert_eq!(
        counter("runnel_flight_sql_plans_misses_total"),
        1,
        "{metrics}"
    );
    assert!(
        counter("runnel_flight_sql_plans_hits_total") >= 3,
        "{metrics}"
    );
}
