//! `runnel bench`: against `runnel dev` (summary, JSON, an HTML report rendered in headless
//! Chromium), against a broker over QUIC, and its refusals of bad settings.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runnel_e2e::{Pipeline, Proc, bin, free_tcp_port, free_udp_port, plugin, wait_ready};
use serde_json::Value;

/// `runnel dev` on free ports, with the example plugins, generating nothing.
async fn dev(dir: &Path) -> (Proc, u16, u16) {
    let (http, admin, quic, flight) = (
        free_tcp_port(),
        free_tcp_port(),
        free_udp_port(),
        free_tcp_port(),
    );
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "quic_addr = \"127.0.0.1:{quic}\"\nadmin_addr = \"127.0.0.1:{admin}\"\nflight_addr = \"127.0.0.1:{flight}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.toml"),
        format!("http_addr = \"127.0.0.1:{http}\"\n"),
    )
    .unwrap();
    let plugins = plugin("events_per_type").parent().unwrap().to_path_buf();
    let mut p = Proc::new(
        "runnel dev",
        bin("runnel"),
        vec![
            "dev".into(),
            format!("--dir={}", dir.join("dev").display()),
            format!("--broker-config={}", dir.join("broker.toml").display()),
            format!("--agent-config={}", dir.join("agent.toml").display()),
            format!("--plugins-dir={}", plugins.display()),
            "--generate=off".into(),
        ],
        dir.join("dev.log"),
    );
    p.start();
    wait_ready(&format!("http://127.0.0.1:{admin}/readyz"), &mut p).await;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz"), &mut p).await;
    let token = std::fs::read_to_string(dir.join("dev/broker/admin-token")).unwrap();
    runnel_e2e::register_admin_token(&format!("127.0.0.1:{admin}"), &token);
    let client = runnel_e2e::authed_http(token.trim(), None);
    // The example aggregators are deployed at start; wait for the one probes read.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let aggs = client
            .get(format!("http://127.0.0.1:{admin}/v1/aggregates"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if aggs.contains("events_per_type") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runnel dev runs events_per_type: {aggs}\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p, http, admin)
}

/// The two load runs take turns: side by side on a 2-core machine each would measure the other
/// (an open loop falls behind and counts backlog errors), not the code under test.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn runnel(args: &[&str]) -> std::process::Output {
    runnel_e2e::runnel(args).output().unwrap()
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium is installed by scripts/setup.sh --test")
}

/// The series plotted in a page: (name, points) of each `data-series` group.
fn plotted(html: &str) -> Vec<(String, u64)> {
    html.split("data-series=\"")
        .skip(1)
        .map(|rest| {
            let name = rest.split('"').next().unwrap().to_string();
            let points = rest
                .split("data-points=\"")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            (name, points)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_against_runnel_dev_writes_json_and_a_report_chromium_renders() {
    let _turn = LOAD.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut dev, http, admin) = dev(dir).await;
    let (json, html) = (dir.join("bench.json"), dir.join("bench.html"));
    let url = format!("http://127.0.0.1:{http}/v1/events");
    let admin_addr = format!("127.0.0.1:{admin}");
    let out = runnel(&[
        "bench",
        "ingest",
        "--url",
        &url,
        "--rate",
        "max",
        "--duration",
        "4s",
        "--batch",
        "200",
        "--connections",
        "4",
        "--dup-ratio",
        "0.1",
        "--invalid-ratio",
        "0.05",
        "--scenario",
        "ecommerce",
        "--visible",
        "--admin-addr",
        &admin_addr,
        "--probe-every",
        "200ms",
        "--until-logged",
        "--json",
        json.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
        "--fsync-dir",
        dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        dev.log_text()
    );
    for want in [
        "throughput",
        "request -> 202 (spool fsync)",
        "accept -> visible in the log",
        "accept -> visible in events_per_type",
        "errors      none",
        "into the broker's log",
    ] {
        assert!(stdout.contains(want), "summary has {want:?}:\n{stdout}");
    }
    assert!(
        stderr.contains("[   1s]"),
        "a progress line each second:\n{stderr}"
    );

    let j: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = j["throughput"]["events"].as_u64().unwrap();
    assert!(events >= 2_000, "{j}");
    assert!(j["throughput"]["events_per_sec"].as_f64().unwrap() > 0.0);
    let latency = &j["latency"];
    assert!(latency["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(latency["p99_ms"].as_f64() >= latency["p50_ms"].as_f64());
    assert!(latency["max_ms"].as_f64() >= latency["p99_9_ms"].as_f64());
    assert_eq!(j["errors"], serde_json::json!({}), "{j}");
    // What the agent answered adds up, with the shares asked for.
    let (accepted, dups, rejected) = (
        j["events"]["accepted"].as_u64().unwrap(),
        j["events"]["duplicates"].as_u64().unwrap(),
        j["events"]["rejected"].as_u64().unwrap(),
    );
    assert_eq!(accepted + dups + rejected, events, "{j}");
    assert!(dups > events / 40 && rejected > events / 80, "{j}");
    let visible = &j["visible"];
    let probes = visible["probes"].as_u64().unwrap();
    // A probe waits until it is visible in the aggregate before the next is sent. At `max`
    // the agent may accept more than the example pipeline aggregates, so the aggregate trails
    // and fewer probes than 4 s / 200 ms come back.
    assert!(probes >= 3, "{visible}");
    assert!(visible["log"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(visible["in_aggregate"]["p50_ms"].as_f64() >= visible["log"]["p50_ms"].as_f64());
    assert_eq!(visible["errors"], serde_json::json!({}));
    // --until-logged: the log gained every accepted event and every counted probe.
    assert_eq!(
        j["end_to_end"]["events"].as_u64(),
        Some(accepted + probes),
        "{j}"
    );
    assert!(j["end_to_end"]["events_per_sec"].as_f64().unwrap() > 0.0);
    let machine = &j["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1);
    assert!(machine["memory_bytes"].as_u64().unwrap() > 0);
    assert!(machine["fsync_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(j["series"].as_array().unwrap().len() >= 4);

    // Nothing accepted is lost on the way: the broker's log holds every accepted event and
    // every probe (and the first, uncounted one that waited for the broker to catch up).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value =
            runnel_e2e::authed_http(&runnel_e2e::admin_token(&admin_addr).unwrap(), None)
                .get(format!("http://{admin_addr}/v1/log/stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        if stats["records"].as_u64() == Some(accepted + probes + 1)
            && stats["by_event_type"]["bench.probe"].as_u64() == Some(probes + 1)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log should hold {accepted} + {probes} + 1 probes: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dev.kill9();

    // The page: self-contained, three charts with their series.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("<script") && !page.contains("src="),
        "no external assets"
    );
    for id in [
        "latency-over-time",
        "throughput-over-time",
        "percentile-spectrum",
    ] {
        assert!(page.contains(&format!("<svg id=\"{id}\"")), "{id}");
    }
    // Chromium parses and lays it out; the series are in the rendered document.
    let dom = chromium(
        &["--dump-dom", &format!("file://{}", html.display())],
        &dir.join("chromium"),
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let series = plotted(&dom);
    for name in [
        "p50",
        "p99",
        "max",
        "events/s",
        "visible in the log (probe)",
        "visible in events_per_type (probe)",
        "request -&gt; 202 (spool fsync)",
        "accept -&gt; visible in events_per_type",
    ] {
        let found = series.iter().find(|(n, _)| n == name);
        assert!(
            found.is_some_and(|(_, points)| *points >= 4),
            "series {name:?} plotted with points: {series:?}"
        );
    }
    let png = dir.join("bench.png");
    let shot = chromium(
        &[
            "--window-size=1100,1900",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ],
        &dir.join("chromium"),
    );
    assert!(
        std::fs::metadata(&png).is_ok_and(|m| m.len() > 20_000),
        "screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_broker_ships_batches_over_quic_as_simulated_agents() {
    let _turn = LOAD.lock().await;
    let mut p = Pipeline::new(&[]);
    p.start().await;
    let json = p.dir.path().join("broker-bench.json");
    let ca = p.dir.path().join("broker/tls/ca.pem");
    let quic = p
        .broker_arg("--quic-addr=")
        .expect("the pipeline sets the broker's QUIC address");
    let out = runnel(&[
        "bench",
        "broker",
        "--agents",
        "3",
        "--rate",
        "20k",
        "--batch",
        "500",
        "--duration",
        "3s",
        "--broker-addr",
        &quic,
        "--broker-ca",
        ca.to_str().unwrap(),
        "--admin-addr",
        &p.admin_addr,
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["errors"], serde_json::json!({}), "{j}");
    // An open loop at 20k events/s for 3 s: 120 batches of 500, all acknowledged.
    assert_eq!(j["throughput"]["requests"], 120, "{j}");
    let accepted = j["events"]["accepted"].as_u64().unwrap();
    assert_eq!(accepted, 60_000, "{j}");
    // Plus the batch that checked the broker answers before the clock started.
    let stats = p.log_stats();
    assert_eq!(stats["records"], 60_500, "{stats}");
    assert_eq!(stats["producers"], 3, "{stats}");
}

#[test]
fn bench_refuses_bad_settings_naming_them() {
    for (args, want) in [
        (
            &["--dup-ratio", "1.5"][..],
            "--dup-ratio: 1.5 is not within 0..=1",
        ),
        (
            &["--invalid-ratio", "1"][..],
            "--invalid-ratio: 1 is not within 0..1",
        ),
        (&["--batch", "0"][..], "--batch: 0 is not within 1..=100000"),
        (&["--rate", "fast"][..], "is not `max` or a positive number"),
        (&["--duration", "soon"][..], "--duration"),
        (
            &["--connections", "0"][..],
            "--connections: 0 is not within",
        ),
        (
            &[][..],
            "--url: no agent answers at http://127.0.0.1:9/v1/events",
        ),
    ] {
        let mut all = vec!["bench", "ingest", "--url", "http://127.0.0.1:9/v1/events"];
        all.extend_from_slice(args);
        let out = runnel(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let out = runnel(&["bench", "broker", "--broker-ca", "/no/such/ca.pem"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--broker-ca: reading /no/such/ca.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
