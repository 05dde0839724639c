//! Arrow Flight end to end with the real client from PyPI: `pyarrow.flight` (installed by
//! `scripts/setup.sh` into `~/.cache/runnel-py`) lists, describes and reads the broker's
//! tables, and its results equal `runnel agg read` row for row; a missing or wrong token is
//! refused, and an unknown table or column is named.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_e2e::{Pipeline, free_tcp_port, plugin};
use runnel_gen::{Config, Scenario};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

fn python() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/runnel-py/bin/python")
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_the_aggregates_and_refuses_bad_tokens() {
    let port = free_tcp_port();
    let mut p = Pipeline::with_args(
        &[],
        &[
            &format!("--flight-addr=127.0.0.1:{port}"),
            &format!("--flight-token={TOKEN}"),
        ],
    );
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
    let body = format!(
        "[{}]",
        events
            .iter()
            .map(|g| g.json.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", p.agent_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    p.wait_pipeline_caught_up(events.len() as u64, Duration::from_secs(60))
        .await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/flight_check.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([
            &format!("grpc://127.0.0.1:{port}"),
            TOKEN,
            "events_per_type",
        ])
        .output()
        .expect("run scripts/setup.sh: it installs pyarrow into ~/.cache/runnel-py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same queries again come from the result cache.
    let again = std::process::Command::new(python())
        .arg(&script)
        .args([
            &format!("grpc://127.0.0.1:{port}"),
            TOKEN,
            "events_per_type",
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    let metrics = reqwest::get(format!("http://{}/metrics", p.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
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
        ["dead_letters", "events", "events_per_type", "late_events"]
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
    let cli: Vec<Value> = p
        .cli(&["agg", "read", "events_per_type", "--limit", "100000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |start: i64, end: i64, r: &Value| {
        (
            start,
            end,
            r["is_final"].as_bool().unwrap(),
            r["event_type"].as_str().unwrap().to_string(),
            r["platform"].as_str().unwrap().to_string(),
            r["events"].as_i64().unwrap(),
        )
    };
    let want: Vec<_> = cli
        .iter()
        .map(|r| key(ms(&r["window_start"]), ms(&r["window_end"]), r))
        .collect();
    let rows: Vec<_> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            key(
                r["window_start"].as_i64().unwrap(),
                r["window_end"].as_i64().unwrap(),
                r,
            )
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(rows, want);
    let ios = got["ios_rows"].as_array().unwrap();
    assert!(!ios.is_empty() && ios.len() <= 5);
    assert!(ios.iter().all(|r| r["platform"] == "ios"));

    assert_eq!(got["events"].as_u64().unwrap() as usize, events.len());
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
