//! Reports: the example `agent_commission` against an independent computation, on-demand runs
//! across `kill -9`, missed schedule times after a restart, webhooks that fail, and outputs in
//! S3 behind pre-signed links. Every broker runs the real binary; the webhook receiver and the
//! S3 server (moto) run on loopback ports the tests pick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone};
use runnel_e2e::{Moto, Pipeline, WebhookReceiver, python};
use serde_json::{Value, json};

/// The webhook key the brokers of these tests sign with.
const SECRET: &str = "test-webhook-secret-0123456789";

/// A pipeline whose broker looks at its report queue often and retries quickly.
fn pipeline(extra: &[&str]) -> Pipeline {
    let secret = format!("--report-webhook-secret={SECRET}");
    let mut args = vec![
        "--report-poll-ms=200",
        "--report-retry-backoff-ms=200",
        "--report-retry-backoff-max-ms=1000",
        secret.as_str(),
    ];
    args.extend_from_slice(extra);
    Pipeline::with_args(&[], &args)
}

/// Deploys the definition `text` (written to a file, as a user would).
fn deploy_report(p: &Pipeline, name: &str, text: &str) -> Value {
    let path = p.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    serde_json::from_str(&p.cli(&["report", "deploy", path.to_str().unwrap()])).unwrap()
}

fn example_report(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../reports")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(path).unwrap()
}

/// `runnel report run NAME --param …  --wait`, parsed.
fn run_and_wait(p: &Pipeline, name: &str, params: &[(&str, String)]) -> Value {
    let mut args = vec![
        "report".to_string(),
        "run".into(),
        name.into(),
        "--wait".into(),
    ];
    for (k, v) in params {
        args.push("--param".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(&p.cli(&args)).unwrap()
}

/// `runnel report get ID`: the output's bytes.
fn output(p: &Pipeline, id: &str) -> Vec<u8> {
    let file = p.dir.path().join(format!("{id}.out"));
    p.cli(&["report", "get", id, "-o", file.to_str().unwrap()]);
    std::fs::read(file).unwrap()
}

/// Verifies webhook signatures with `webhook_verify.py` (the receiver code of
/// `docs/reports.md`): `(valid, invalid)`.
fn verify_signatures(deliveries: &[runnel_e2e::Delivery]) -> (u64, u64) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/webhook_verify.py");
    let input = json!({
        "secret": SECRET,
        "deliveries": deliveries
            .iter()
            .map(|d| json!({"body": d.body, "signature": d.signature}))
            .collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "webhook_verify.py failed");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        got["valid"].as_u64().unwrap(),
        got["invalid"].as_u64().unwrap(),
    )
}

/// Waits until `done` holds for run `id`'s status; returns it.
async fn wait_run(
    p: &Pipeline,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let admin = p.admin();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(run) = admin.report_status(id).await {
            let v = serde_json::to_value(run).unwrap();
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "run {id}: {v}");
        } else {
            assert!(Instant::now() < deadline, "run {id}: no status");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Per field agent: (onboardings, deposits, deposit KES, withdrawals, withdrawal KES).
type Performance = BTreeMap<String, (i64, i64, i64, i64, i64)>;

/// The commission in cents, computed in millionths of a KES and rounded half away from zero:
/// `fee` per onboarding plus `deposit_rate` and `withdrawal_rate` (in millionths) of the
/// volumes.
fn commission_cents(
    p: (i64, i64, i64, i64, i64),
    fee: i64,
    deposit_rate: i64,
    withdrawal_rate: i64,
) -> i64 {
    let micro = p.0 * fee * 1_000_000 + p.2 * deposit_rate + p.4 * withdrawal_rate;
    (micro + 5_000) / 10_000
}

/// `"1234.56"` in cents.
fn cents(s: &str) -> i64 {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "00"));
    assert_eq!(frac.len(), 2, "{s:?} is not to the cent");
    whole.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap()
}

/// The CSV output's rows, by field agent: every column as text.
fn csv_rows(bytes: &[u8]) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| {
            let cols: Vec<String> = l.split(',').map(String::from).collect();
            (cols[0].clone(), cols)
        })
        .collect();
    (header, rows)
}

/// Must-show 1: `agent_commission` (the example definition as shipped) over a generated month
/// of fintech events equals a computation from the generated input per field agent, to the
/// cent; a different `deposit_rate` changes the commission column and nothing else. Bad
/// requests are refused naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commission_equals_an_independent_computation_to_the_cent() {
    let mut p = pipeline(&[]);
    p.start().await;
    p.deploy_plugin("agent_performance");
    // The month before last in Nairobi: its windows close once the watermark passes its end
    // plus an hour, which an event of now does.
    let tz = chrono_tz_nairobi();
    let now = chrono::Utc::now().with_timezone(&tz);
    let months = now.year() * 12 + now.month0() as i32 - 2;
    let (year, month0) = (months.div_euclid(12), months.rem_euclid(12) as u32);
    let month = format!("{year:04}-{:02}", month0 + 1);
    let month_start = tz
        .with_ymd_and_hms(year, month0 + 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    let events = runnel_gen::generate(&runnel_gen::Config {
        seed: 18,
        events: 6_000,
        start_ms: month_start + 10 * 86_400_000,
        rate_per_sec: 20,
        ..runnel_gen::Config::default()
    });
    let mut want: Performance = BTreeMap::new();
    for g in &events {
        let v: Value = serde_json::from_str(&g.json).unwrap();
        let agent = v["properties"]["field_agent_id"]
            .as_str()
            .unwrap()
            .to_string();
        let amount = v["properties"]["amount"].as_f64().unwrap_or(0.0) as i64;
        let e = want.entry(agent).or_default();
        match g.event_type {
            "onboarding.completed" => e.0 += 1,
            "deposit.completed" => (e.1, e.2) = (e.1 + 1, e.2 + amount),
            "withdrawal.completed" => (e.3, e.4) = (e.3 + 1, e.4 + amount),
            _ => {}
        }
    }
    want.retain(|_, e| *e != (0, 0, 0, 0, 0));
    runnel_e2e::post_generated(&p.agent_url, &events, 500, Duration::ZERO).await;
    let tick = json!([{
        "event_id": "tick-now",
        "event_type": "app.login",
        "timestamp": chrono::Utc::now().timestamp_millis(),
        "properties": {"field_agent_id": "fa-tick"},
    }]);
    runnel_e2e::post_until_accepted(&reqwest::Client::new(), &p.agent_url, tick.to_string()).await;
    p.wait_pipeline_caught_up(events.len() as u64 + 1, Duration::from_secs(120))
        .await;

    let info = deploy_report(&p, "agent_commission", &example_report("agent_commission"));
    assert_eq!(info["version"], 1, "{info}");
    let run = run_and_wait(&p, "agent_commission", &[("month", month.clone())]);
    assert_eq!(
        (&run["status"], &run["partial"]),
        (&json!("succeeded"), &json!(false)),
        "{run}"
    );
    assert_eq!(run["output"]["rows"], want.len() as u64, "{run}");
    let (header, got) = csv_rows(&output(&p, run["id"].as_str().unwrap()));
    assert_eq!(
        header,
        [
            "field_agent_id",
            "onboardings",
            "deposits",
            "deposit_total",
            "withdrawals",
            "withdrawal_total",
            "commission"
        ]
    );
    let check = |got: &BTreeMap<String, Vec<String>>, deposit_rate: i64| {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (agent, w) in &want {
            let row = &got[agent];
            let nums = (
                row[1].parse::<i64>().unwrap(),
                row[2].parse::<i64>().unwrap(),
                cents(&row[3]) / 100,
                row[4].parse::<i64>().unwrap(),
                cents(&row[5]) / 100,
            );
            assert_eq!(nums, *w, "{agent}: {row:?}");
            assert_eq!(
                cents(&row[6]),
                commission_cents(*w, 150, deposit_rate, 2_500),
                "{agent}: {row:?}"
            );
        }
    };
    check(&got, 5_000);

    // The pay structure is a parameter: a new deposit rate changes the commission only.
    let run2 = run_and_wait(
        &p,
        "agent_commission",
        &[("month", month.clone()), ("deposit_rate", "0.01".into())],
    );
    assert_eq!(run2["status"], "succeeded", "{run2}");
    assert_ne!(run2["id"], run["id"]);
    let (_, got2) = csv_rows(&output(&p, run2["id"].as_str().unwrap()));
    check(&got2, 10_000);
    let mut changed = 0;
    for (agent, row) in &got {
        assert_eq!(row[..6], got2[agent][..6], "{agent}");
        changed += usize::from(row[6] != got2[agent][6]);
    }
    assert!(changed > want.len() / 2, "{changed} commissions changed");

    // Bad requests name what is wrong.
    let http = p.http();
    let runs = format!("http://{}/v1/reports/agent_commission/runs", p.admin_addr);
    for (body, status, names) in [
        (json!({"params": {"month": "2026-13"}}), 400, "params.month"),
        (json!({"params": {"bonus": 1}}), 400, "params.bonus"),
        (
            json!({"params": {"deposit_rate": "high"}}),
            400,
            "params.deposit_rate",
        ),
        (json!({"webhook_url": "ftp://x"}), 400, "webhook_url"),
        (json!({"wait_for": "soon"}), 400, "wait_for"),
        (json!({"colour": "red"}), 400, "colour"),
    ] {
        let r = http.post(&runs).json(&body).send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, status, "{body}: {text}");
        assert!(text.contains(names), "{body}: {text}");
    }
    let r = http
        .post(format!("http://{}/v1/reports/nope/runs", p.admin_addr))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let bad = example_report("agent_commission").replace("format = \"csv\"", "format = \"xls\"");
    let r = http
        .put(format!(
            "http://{}/v1/reports/agent_commission",
            p.admin_addr
        ))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("format"));
    let unknown_table = "name = \"t\"\nsql = \"SELECT * FROM no_such_table\"\n";
    let r = http
        .put(format!("http://{}/v1/reports/t", p.admin_addr))
        .body(unknown_table)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("no_such_table"));
    // A download link opens its own run only.
    let link = run["output"]["link"].as_str().unwrap();
    let other = link.replace(run["id"].as_str().unwrap(), run2["id"].as_str().unwrap());
    // (Without an API token: a reader's token may open any run's output.)
    assert_eq!(reqwest::get(&other).await.unwrap().status().as_u16(), 403);
    p.broker.kill9();
}

fn chrono_tz_nairobi() -> chrono::FixedOffset {
    // Africa/Nairobi is UTC+3 all year (no daylight saving).
    chrono::FixedOffset::east_opt(3 * 3600).unwrap()
}

/// The definition of the kill -9 test's report: event counts per type, over the log.
const ACTIVITY: &str = r#"
name = "activity"
description = "Events per type"
format = "json"
wait_for = "none"
sql = "SELECT event_type, count(*) AS events FROM events GROUP BY event_type ORDER BY event_type"
"#;

const TYPES: [&str; 3] = ["app.open", "cart.add", "order.placed"];

/// A `202`: the run's id and whether the request was a repeat.
type Accepted = (String, bool);

fn activity_event(n: u64) -> Value {
    json!({
        "event_id": format!("r-{n}"),
        "event_type": TYPES[(n % 3) as usize],
        "timestamp": "2026-11-21T12:00:00.000Z",
    })
}

/// Must-show 2: 100 on-demand requests, 10 of them repeating an earlier `Idempotency-Key`,
/// while the broker is killed with SIGKILL three times: every accepted run succeeds once, the
/// repeats get the first request's id, each output is one complete file at its run's name, and
/// the webhook receiver gets correctly signed deliveries, one delivery id per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_runs_succeed_once_each_across_kill_9() {
    const EVENTS: u64 = 3_000;
    let hook = WebhookReceiver::start(0).await;
    let mut p = pipeline(&["--report-concurrency-max=2"]);
    p.start().await;
    runnel_e2e::post_range(&p.agent_url, 0..EVENTS, 500, activity_event).await;
    p.wait_for_records(EVENTS, Duration::from_secs(60)).await;
    deploy_report(&p, "activity", ACTIVITY);
    let want: Vec<Value> = TYPES
        .iter()
        .map(|t| json!({"event_type": t, "events": EVENTS / 3}))
        .collect();

    // Requests 0..90 have keys k0..k89; requests 90..100 repeat k0, k9, … k81.
    let keys: Vec<String> = (0..100)
        .map(|i| format!("k{}", if i < 90 { i } else { (i - 90) * 9 }))
        .collect();
    let ids: Arc<Mutex<Vec<Option<Accepted>>>> = Arc::new(Mutex::new(vec![None; 100]));
    let url = format!("http://{}/v1/reports/activity/runs", p.admin_addr);
    let requester = {
        let (ids, keys, hook_url) = (ids.clone(), keys.clone(), hook.url.clone());
        let token = p.token();
        tokio::spawn(async move {
            let http = runnel_e2e::authed_http(&token, Some(Duration::from_secs(5)));
            for (i, key) in keys.iter().enumerate() {
                // Retried with the same key until it is accepted: a request cut off by the
                // kill may or may not have been queued; the key makes it one run either way.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let sent = http
                        .post(&url)
                        .header("idempotency-key", key)
                        .json(&json!({"webhook_url": hook_url}))
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status().as_u16() == 202
                    {
                        let v: Value = r.json().await.unwrap();
                        ids.lock().unwrap()[i] = Some((
                            v["id"].as_str().unwrap().to_string(),
                            v["repeat"].as_bool().unwrap(),
                        ));
                        break;
                    }
                    assert!(Instant::now() < deadline, "request {i} never accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    for accepted in [20, 50, 80] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ids.lock().unwrap().iter().flatten().count() < accepted {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.broker.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.start_broker().await;
    }
    requester.await.unwrap();
    let ids: Vec<Accepted> = ids
        .lock()
        .unwrap()
        .iter()
        .map(|x| x.clone().unwrap())
        .collect();
    for i in 90..100 {
        let first = (i - 90) * 9;
        assert_eq!(ids[i].0, ids[first].0, "request {i} repeats k{first}");
        assert!(ids[i].1, "request {i} is a repeat");
    }
    let unique: BTreeSet<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(unique.len(), 90);

    for id in &unique {
        let run = wait_run(&p, id, Duration::from_secs(180), |r| {
            r["status"] == "succeeded" && r["webhook"]["state"] == "delivered"
        })
        .await;
        assert_eq!(run["output"]["rows"], 3, "{run}");
    }
    let history: Vec<Value> =
        serde_json::from_str(&p.cli(&["report", "history", "activity", "--limit", "1000"]))
            .unwrap();
    assert_eq!(history.len(), 90, "one run per distinct key");
    assert!(history.iter().all(|r| r["status"] == "succeeded"));

    // Each output once, complete, at its run's name.
    let dir = p.dir.path().join("broker/archive/reports/activity");
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            let v: Value =
                serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap();
            assert_eq!(v, Value::Array(want.clone()), "{name}");
            files.insert(id.to_string());
        }
    }
    assert_eq!(
        files.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        unique
    );
    // The download link serves the same bytes.
    let first = ids[0].0.as_str();
    let from_link: Value = serde_json::from_slice(&output(&p, first)).unwrap();
    assert_eq!(from_link, Value::Array(want));

    // The webhooks: every delivery signed, one delivery id per run, each run delivered.
    let deliveries = hook.deliveries();
    let (valid, invalid) = verify_signatures(&deliveries);
    assert_eq!((valid, invalid), (deliveries.len() as u64, 0));
    let mut by_run: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in &deliveries {
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["status"], "succeeded", "{body}");
        by_run
            .entry(body["run_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(d.id.clone());
    }
    assert_eq!(
        by_run.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        unique
    );
    assert!(by_run.values().all(|d| d.len() == 1), "{by_run:?}");
    assert_eq!(p.broker.kills, 3);
}

/// Must-show 3: a report scheduled every minute over the minute before, with the broker down
/// across two schedule times: after the restart each missed minute runs exactly once, and only
/// once its windows are final (the watermark past the minute's end plus the lateness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_schedule_times_run_once_each_once_final() {
    const LATENESS_MS: i64 = 30_000; // events_per_type's
    let mut p = pipeline(&[]);
    p.start().await;
    p.deploy_plugin("events_per_type");
    // Ticks at the wall clock, four a second, through the downtime (the agent keeps them).
    let posted: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (posted, stop, url) = (posted.clone(), stop.clone(), p.agent_url.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = chrono::Utc::now().timestamp_millis();
                let id = format!("t-{n}");
                let body = json!([{"event_id": id, "event_type": "tick", "timestamp": at}]);
                runnel_e2e::post_until_accepted(&http, &url, body.to_string()).await;
                posted.lock().unwrap().push((id, at));
                n += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    deploy_report(
        &p,
        "minutely",
        r#"
name = "minutely"
description = "Ticks of the minute before"
format = "json"
sql = "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) AS events FROM events_per_type WHERE window_start = $minute_start AND event_type = 'tick'"

[params.minute]
type = "minute"
default = "previous"

[schedule]
cron = "* * * * *"
"#,
    );
    // Down from 50 s into a minute until 2 s after the second minute boundary after it.
    let now = chrono::Utc::now().timestamp_millis();
    let mut kill_at = now - now.rem_euclid(60_000) + 50_000;
    if kill_at < now + 3_000 {
        kill_at += 60_000;
    }
    tokio::time::sleep(Duration::from_millis((kill_at - now) as u64)).await;
    p.broker.kill9();
    let boundary = kill_at - kill_at.rem_euclid(60_000) + 60_000;
    let missed = [boundary, boundary + 60_000];
    let restart_at = missed[1] + 2_000;
    let now = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis((restart_at - now).max(0) as u64)).await;
    p.start_broker().await;

    let minute = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    let runs = loop {
        let history: Vec<Value> =
            serde_json::from_str(&p.cli(&["report", "history", "minutely", "--limit", "100"]))
                .unwrap();
        let done = missed.iter().all(|fire| {
            history.iter().any(|r| {
                r["params"]["minute"] == minute(fire - 60_000) && r["status"] == "succeeded"
            })
        });
        if done {
            break history;
        }
        assert!(Instant::now() < deadline, "{history:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.await.unwrap();
    let late: BTreeSet<String> = p
        .read_topic("late_events")
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    let posted = posted.lock().unwrap().clone();
    for fire in missed {
        let (start, end) = (fire - 60_000, fire);
        let of_minute: Vec<&Value> = runs
            .iter()
            .filter(|r| r["params"]["minute"] == minute(start))
            .collect();
        assert_eq!(
            of_minute.len(),
            1,
            "one run for {}: {of_minute:#?}",
            minute(start)
        );
        let run = of_minute[0];
        assert_eq!(run["trigger"], "schedule");
        let started = chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert!(
            started >= end + LATENESS_MS,
            "{} ran at {started} before its windows were final: {run}",
            minute(start)
        );
        assert_eq!(run["partial"], false);
        let want = posted
            .iter()
            .filter(|(id, at)| (start..end).contains(at) && !late.contains(id))
            .count();
        let got: Value = serde_json::from_slice(&output(&p, run["id"].as_str().unwrap())).unwrap();
        assert_eq!(got, json!([{"events": want}]), "{}", minute(start));
    }
}

/// Must-show 4: a receiver that fails three attempts gets the fourth; one that never answers
/// 2xx is given up after `report_webhook_attempts_max`, in the run's status and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_2xx_and_given_up_at_the_limit() {
    let flaky = WebhookReceiver::start(3).await;
    let down = WebhookReceiver::start(u32::MAX).await;
    let mut p = pipeline(&["--report-webhook-attempts-max=5"]);
    p.start().await;
    deploy_report(
        &p,
        "ping",
        "name = \"ping\"\nformat = \"json\"\nsql = \"SELECT 1 AS one\"\n",
    );
    let admin = p.admin();
    let mut ids = Vec::new();
    for hook in [&flaky, &down] {
        let req = runnel_client::api::RunRequest {
            webhook_url: Some(hook.url.clone()),
            ..Default::default()
        };
        ids.push(admin.report_run("ping", &req, None).await.unwrap().id);
    }
    let ended =
        |r: &Value| r["webhook"]["state"] == "delivered" || r["webhook"]["state"] == "failed";
    let delivered = wait_run(&p, &ids[0], Duration::from_secs(60), ended).await;
    let given_up = wait_run(&p, &ids[1], Duration::from_secs(60), ended).await;
    let statuses = |r: &Value| -> Vec<Value> {
        r["webhook"]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].clone())
            .collect()
    };
    assert_eq!(delivered["webhook"]["state"], "delivered", "{delivered}");
    assert_eq!(
        statuses(&delivered),
        [json!(500), json!(500), json!(500), json!(200)]
    );
    assert_eq!(given_up["webhook"]["state"], "failed", "{given_up}");
    assert_eq!(statuses(&given_up), vec![json!(500); 5]);
    // The receivers saw those attempts, each with the run's one delivery id.
    for (hook, n) in [(&flaky, 4), (&down, 5)] {
        let got = hook.deliveries();
        assert_eq!(got.len(), n);
        assert_eq!(got.iter().map(|d| &d.id).collect::<BTreeSet<_>>().len(), 1);
        assert_eq!(verify_signatures(&got), (n as u64, 0));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(down.deliveries().len(), 5, "no attempt after giving up");
    let metrics = p.metrics().await;
    for line in [
        "runnel_report_webhook_deliveries_total{report=\"ping\",state=\"delivered\"} 1",
        "runnel_report_webhook_deliveries_total{report=\"ping\",state=\"failed\"} 1",
        "runnel_report_webhook_attempts_total{report=\"ping\",result=\"failed\"} 8",
        "runnel_report_webhook_attempts_total{report=\"ping\",result=\"delivered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Must-show 5: outputs in S3 (moto) have pre-signed links that plain HTTP fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_in_s3_have_working_presigned_links() {
    let moto = Moto::start().await;
    moto.bucket("runnel-reports").await;
    let endpoint = format!("--archive-s3-endpoint={}", moto.endpoint);
    let mut p = pipeline(&[
        "--report-url=s3://runnel-reports/outputs",
        &endpoint,
        "--archive-s3-region=us-east-1",
        "--archive-s3-access-key-id=test",
        "--archive-s3-secret-access-key=test",
        "--report-link-ttl-s=600",
    ]);
    p.start().await;
    runnel_e2e::post_range(&p.agent_url, 0..300, 100, activity_event).await;
    p.wait_for_records(300, Duration::from_secs(60)).await;
    deploy_report(&p, "activity", &ACTIVITY.replace("\"json\"", "\"csv\""));
    let run = run_and_wait(&p, "activity", &[]);
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["id"].as_str().unwrap();
    assert_eq!(
        run["output"]["url"],
        format!("s3://runnel-reports/outputs/activity/{id}.csv")
    );
    let link = run["output"]["link"].as_str().unwrap();
    assert!(
        link.starts_with(&moto.endpoint) && link.contains("X-Amz-Signature="),
        "{link}"
    );
    let want = "event_type,events\napp.open,100\ncart.add,100\norder.placed,100\n";
    let r = reqwest::get(link).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), want);
    // moto does not check signatures, so a forged link would pass here; the link is checked
    // for what S3 checks: the credential, the validity (report_link_ttl_s) and a signature.
    assert!(
        link.contains("X-Amz-Expires=600") && link.contains("X-Amz-Credential=test%2F"),
        "{link}"
    );
    assert_eq!(String::from_utf8(output(&p, id)).unwrap(), want);
}
