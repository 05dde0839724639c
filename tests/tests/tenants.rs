//! Tenants end to end: three tenants, each with its own agent, tokens and an aggregate. Over
//! pyarrow (plain Flight), ADBC (Flight SQL) and `runnel query`, each tenant's token sees
//! exactly its tenant's rows and tables, also through SQL that tries to reach around it
//! (`UNION`, subqueries, `information_schema`, the `events` table, a hand-made ticket): zero
//! foreign rows in every case, and each tenant's report reads its rows only and writes its
//! output under its tenant's folder. The admin API shows a tenant its own plugins, aggregates
//! and reports only and refuses it the broker-wide routes.

use std::collections::BTreeSet;
use std::time::Duration;

use runnel_e2e::{Pipeline, Proc, free_tcp_port, plugin, run_python};
use serde_json::Value;

const TENANTS: [(&str, u64); 3] = [("shop", 300), ("ads", 200), ("games", 120)];

/// A token of `role` for `tenant`, made by the operator.
fn tenant_token(p: &Pipeline, role: &str, tenant: &str) -> String {
    let v: Value =
        serde_json::from_str(&p.cli(&["token", "create", "--role", role, "--tenant", tenant]))
            .unwrap();
    assert_eq!(v["tenant"], tenant);
    v["token"].as_str().unwrap().to_string()
}

/// `runnel ARGS --admin-addr ADMIN --token TOKEN` (the flag wins over the test's
/// `RUNNEL_TOKEN`): its exit status, stdout and stderr.
fn cli_as(p: &Pipeline, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = runnel_e2e::runnel(args.iter().copied().chain([
        "--admin-addr",
        p.admin_addr.as_str(),
        "--token",
        token,
    ]))
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `runnel query SQL --format json` against Flight on `flight`, with `token`.
fn query_as(flight: u16, token: &str, sql: &str) -> std::process::Output {
    runnel_e2e::runnel([
        "query",
        sql,
        "--format",
        "json",
        &format!("--flight-addr=127.0.0.1:{flight}"),
        "--token",
        token,
    ])
    .output()
    .unwrap()
}

/// One request of `events` (a JSON array) to the agent at `url`.
async fn post(
    client: &reqwest::Client,
    url: &str,
    events: impl Iterator<Item = Value>,
) -> reqwest::Response {
    client
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/json")
        .body(Value::Array(events.collect()).to_string())
        .send()
        .await
        .unwrap()
}

/// `runnel plugin deploy` of the test or example plugin `component` as `name`, with `token`.
fn deploy_as(p: &Pipeline, token: &str, component: &str, name: &str) -> (bool, String, String) {
    let wasm = plugin(component);
    cli_as(
        p,
        token,
        &["plugin", "deploy", wasm.to_str().unwrap(), "--name", name],
    )
}

/// A started agent of the pipeline's broker with its own data dir, enrolled as `name` of
/// `tenant`.
async fn tenant_agent(p: &Pipeline, name: &str, tenant: &str) -> (Proc, String) {
    let http = free_tcp_port();
    let d = p.dir.path();
    let mut args = vec![
        format!("--data-dir={}", d.join(name).display()),
        format!("--http-addr=127.0.0.1:{http}"),
        format!("--broker-addr={}", p.broker_arg("--quic-addr=").unwrap()),
        format!("--broker-ca={}", d.join("broker/tls/ca.pem").display()),
    ];
    args.extend(p.enroll(name, tenant));
    let mut agent = Proc::new(
        "agent",
        runnel_e2e::bin("runnel-agent"),
        args,
        d.join(format!("{name}.log")),
    );
    agent.start();
    let url = format!("http://127.0.0.1:{http}");
    runnel_e2e::wait_ready(&format!("{url}/readyz"), &mut agent).await;
    (agent, url)
}

/// A report over `events` that tries to reach other tenants' rows (a subquery counting every
/// agent), with `extra` lines.
fn report_toml(name: &str, extra: &str) -> String {
    format!(
        r#"name = "{name}"
format = "json"
wait_for = "none"
{extra}sql = "SELECT tenant_id, agent_id, count(*) AS n, (SELECT count(DISTINCT agent_id) FROM events) AS agents FROM events GROUP BY tenant_id, agent_id"
"#
    )
}

fn event(tenant: &str, n: u64) -> Value {
    let platform = ["ios", "android", "web"][(n % 3) as usize];
    serde_json::json!({
        "event_id": format!("{tenant}-{n}"),
        "event_type": format!("{tenant}.view"),
        // In order, one a second: none is late.
        "timestamp": format!(
            "2026-11-21T{:02}:{:02}:{:02}.000Z",
            12 + n / 3600,
            n / 60 % 60,
            n % 60
        ),
        "user_id": format!("{tenant}-user-{}", n % 7),
        "platform": platform,
        "properties": {"secret": format!("{tenant}-secret")},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_exactly_its_own_rows_and_tables() {
    let flight = free_tcp_port();
    // Flight runs with a `flight_tokens` entry (an operator's reader; the test uses API tokens).
    let mut p = Pipeline::with_args(
        &[],
        &[
            &format!("--flight-addr=127.0.0.1:{flight}"),
            "--flight-token=operator-reader-0123456789",
        ],
    );
    p.start_broker().await;
    let mut agents = Vec::new();
    let mut readers = Vec::new();
    let mut deployers = Vec::new();
    let client = reqwest::Client::new();
    for (tenant, n) in TENANTS {
        let (agent, url) = tenant_agent(&p, &format!("{tenant}-agent"), tenant).await;
        let deployer = tenant_token(&p, "deployer", tenant);
        // The tenant deploys its own aggregate with its own token.
        let (ok, out, err) = deploy_as(
            &p,
            &deployer,
            "events_per_type",
            &format!("{tenant}_per_type"),
        );
        assert!(ok, "{tenant} deploys: {out}{err}");
        // It may not deploy an enricher (enrichers see every tenant's events).
        let (ok, _, err) = deploy_as(&p, &deployer, "pii_redact", &format!("{tenant}_redact"));
        assert!(!ok && err.contains("enricher"), "{err}");
        let body = serde_json::Value::Array((0..n).map(|i| event(tenant, i)).collect());
        runnel_e2e::post_until_accepted(&client, &url, body.to_string()).await;
        readers.push(tenant_token(&p, "reader", tenant));
        deployers.push(deployer);
        agents.push(agent);
    }
    let total: u64 = TENANTS.iter().map(|(_, n)| n).sum();
    p.wait_pipeline_caught_up(total, Duration::from_secs(60))
        .await;
    // Every aggregate has folded its tenant's events (as the operator sees them).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (tenant, n) in TENANTS {
        loop {
            let rows = runnel_e2e::agg_read(&p.admin_addr, &format!("{tenant}_per_type"))
                .unwrap_or_default();
            let sum: i64 = rows.iter().map(|r| r["events"].as_i64().unwrap()).sum();
            if sum == n as i64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{tenant}_per_type holds {sum} events, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let url = format!("grpc://127.0.0.1:{flight}");
    let mut runs = Vec::new();
    for (i, (tenant, n)) in TENANTS.iter().enumerate() {
        let own = format!("{tenant}_per_type");
        let foreign: Vec<String> = TENANTS
            .iter()
            .filter(|(t, _)| t != tenant)
            .map(|(t, _)| format!("{t}_per_type"))
            .collect();
        let foreign_agents: Vec<String> = TENANTS
            .iter()
            .filter(|(t, _)| t != tenant)
            .map(|(t, _)| format!("{t}-agent"))
            .collect();
        let mut args = vec![url.as_str(), readers[i].as_str(), own.as_str()];
        let joined = foreign.join(",");
        args.push(&joined);
        args.extend(foreign_agents.iter().map(String::as_str));
        let got = run_python("tenant_check.py", &args);
        let mine = |id: &str| id.starts_with(&format!("{tenant}-"));
        let agent = format!("{tenant}-agent");

        // Plain Flight (pyarrow).
        let f = &got["flight"];
        let flights: BTreeSet<&str> = f["flights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(flights.contains(own.as_str()), "{tenant}: {flights:?}");
        for other in &foreign {
            assert!(!flights.contains(other.as_str()), "{tenant}: {flights:?}");
        }
        let events: Vec<&str> = f["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(events.len() as u64, *n, "{tenant}: Flight events");
        assert!(events.iter().all(|e| mine(e)), "{tenant}: {events:?}");
        assert_eq!(f["events_agents"], serde_json::json!([agent]));
        let own_sum: i64 = f["own"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["events"].as_i64().unwrap())
            .sum();
        assert_eq!(own_sum, *n as i64, "{tenant}: its aggregate");
        for other in &foreign {
            for key in ["foreign_errors", "foreign_ticket_errors"] {
                let e = &f[key][other.as_str()];
                assert!(
                    e["message"].as_str().unwrap_or("").contains("not one of"),
                    "{tenant} reading {other} ({key}): {e}"
                );
            }
        }

        // Flight SQL (ADBC).
        let sql = &got["sql"];
        let errors = &got["sql_errors"];
        for name in ["events", "union", "subquery"] {
            let rows = sql[name]
                .as_array()
                .unwrap_or_else(|| panic!("{tenant} {name}: {}", errors[name]));
            assert!(!rows.is_empty(), "{tenant} {name}");
            for r in rows {
                assert!(
                    mine(r["event_id"].as_str().unwrap()) && r["agent_id"] == agent.as_str(),
                    "{tenant} {name}: a foreign row {r}"
                );
            }
        }
        assert_eq!(sql["count"][0]["n"], *n, "{tenant}: count(*)");
        assert_eq!(
            sql["tenant_ids"],
            serde_json::json!([{"tenant_id": tenant}]),
            "{tenant}: tenant_id"
        );
        assert_eq!(
            sql["union"].as_array().unwrap().len() as u64,
            2 * n,
            "{tenant}: UNION ALL of its own rows twice"
        );
        assert_eq!(
            sql["by_agent"],
            serde_json::json!([{"agent_id": agent, "n": n}])
        );
        assert_eq!(sql["foreign_agents"][0]["n"], 0, "{tenant}");
        for key in ["tables", "columns"] {
            let names: BTreeSet<&str> = sql[key]
                .as_array()
                .unwrap_or_else(|| panic!("{tenant} {key}: {}", errors[key]))
                .iter()
                .map(|r| r["table_name"].as_str().unwrap())
                .collect();
            assert!(names.contains(own.as_str()), "{tenant} {key}: {names:?}");
            for other in &foreign {
                assert!(!names.contains(other.as_str()), "{tenant} {key}: {names:?}");
            }
        }
        assert_eq!(
            sql["own"][0]["n"], *n as i64,
            "{tenant}: SUM over its aggregate"
        );
        for other in &foreign {
            for probe in ["foreign", "foreign_union", "foreign_qualified"] {
                let key = format!("{probe}:{other}");
                assert!(
                    sql.get(&key).is_none(),
                    "{tenant} read {key}: {}",
                    sql[&key]
                );
                let e = errors[&key].as_str().unwrap();
                assert!(e.contains("not found"), "{tenant} {key}: {e}");
            }
        }
        let objects: Vec<&str> = got["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(objects.contains(&own.as_str()), "{tenant}: {objects:?}");
        for other in &foreign {
            assert!(!objects.contains(&other.as_str()), "{tenant}: {objects:?}");
        }

        // `runnel query` with the tenant's token.
        let out = query_as(
            flight,
            &readers[i],
            "SELECT event_id, agent_id FROM events UNION ALL SELECT event_id, agent_id FROM events WHERE event_id NOT IN (SELECT event_id FROM events)",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, *n, "{tenant}: runnel query");
        assert!(lines.iter().all(|r| r["agent_id"] == agent.as_str()));
        let out = query_as(
            flight,
            &readers[i],
            &format!("SELECT * FROM {}", foreign[0]),
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not found"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The admin API: its own plugins and aggregates, not the broker-wide routes.
        let (ok, out, err) = cli_as(&p, &readers[i], &["agg", "list"]);
        assert!(ok, "{err}");
        let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&out)
            .map(|l| {
                l.iter()
                    .map(|a| a["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_else(|_| out.lines().map(str::to_string).collect());
        assert!(names.iter().any(|l| l.contains(&own)), "{out}");
        for other in &foreign {
            assert!(!names.iter().any(|l| l.contains(other.as_str())), "{out}");
        }
        let (ok, _, err) = cli_as(&p, &readers[i], &["agg", "read", &foreign[0]]);
        assert!(!ok && err.contains("no such thing"), "{err}");
        let (ok, _, err) = cli_as(&p, &readers[i], &["log", "read"]);
        assert!(!ok && err.contains("operator"), "{err}");

        // Its report reads its rows only, whatever its SQL, and writes under tenants/TENANT/.
        let report = format!("{tenant}_counts");
        let def = p.dir.path().join(format!("{report}.toml"));
        std::fs::write(&def, report_toml(&report, "")).unwrap();
        let (ok, out, err) = cli_as(
            &p,
            &deployers[i],
            &["report", "deploy", def.to_str().unwrap()],
        );
        assert!(ok, "{tenant} deploys its report: {out}{err}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["tenant"],
            *tenant
        );
        let (ok, out, err) = cli_as(&p, &deployers[i], &["report", "run", &report, "--wait"]);
        assert!(ok, "{tenant} runs its report: {out}{err}");
        let run: Value = serde_json::from_str(&out).unwrap();
        let link = run["output"]["url"].as_str().unwrap();
        assert!(
            link.contains(&format!("/tenants/{tenant}/{report}/")),
            "{tenant}: output at {link}"
        );
        let id = run["id"].as_str().unwrap();
        let (ok, out, err) = cli_as(&p, &readers[i], &["report", "get", id]);
        assert!(ok, "{tenant} gets its output: {err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([{"tenant_id": tenant, "agent_id": agent, "n": n, "agents": 1}]),
            "{tenant}: its report's rows"
        );
        runs.push((report.clone(), id.to_string()));
        // A tenant's report may not name where its outputs go.
        std::fs::write(
            &def,
            report_toml(&report, "destination = \"file:///tmp/elsewhere\"\n"),
        )
        .unwrap();
        let (ok, _, err) = cli_as(
            &p,
            &deployers[i],
            &["report", "deploy", def.to_str().unwrap()],
        );
        assert!(!ok && err.contains("destination"), "{tenant}: {err}");
    }

    // A tenant sees its reports and runs only; another's are missing to it.
    for (i, (tenant, _)) in TENANTS.iter().enumerate() {
        let (ok, out, err) = cli_as(&p, &readers[i], &["report", "list"]);
        assert!(ok, "{err}");
        let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&out)
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, [format!("{tenant}_counts")], "{tenant}");
        for (j, (report, id)) in runs.iter().enumerate() {
            if i == j {
                continue;
            }
            for args in [
                vec!["report", "status", id.as_str()],
                vec!["report", "get", id.as_str()],
                vec!["report", "history", report.as_str()],
            ] {
                let (ok, _, err) = cli_as(&p, &readers[i], &args);
                assert!(
                    !ok && err.contains("no such thing"),
                    "{tenant} {args:?}: {err}"
                );
            }
            let (ok, _, err) = cli_as(&p, &deployers[i], &["report", "run", report]);
            assert!(
                !ok && err.contains("no such thing"),
                "{tenant} runs {report}: {err}"
            );
        }
    }

    // The operator's token sees every tenant's events, each with its tenant.
    let out = query_as(
        flight,
        &p.token(),
        "SELECT count(*) AS n, count(DISTINCT tenant_id) AS tenants FROM events",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], total);
    assert_eq!(v["tenants"], 3);
    drop(agents);
}

/// A tenant over its ingest quota is throttled at the broker: its agent answers 429 with
/// `Retry-After` (accepting nothing of those requests), another tenant's agent is not held,
/// and every event that got a 202 ends up in the log, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_ingest_quota_gets_429_and_loses_nothing() {
    over_quota_gets_429_and_loses_nothing("ingest_events_per_sec", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_log_bytes_quota_gets_429_and_loses_nothing() {
    over_quota_gets_429_and_loses_nothing("log_bytes_per_sec", 30_000).await;
}

/// Tenant `hog` has `quota` = `limit`, tenant `calm` none: hog's agent answers 429 with
/// `Retry-After` naming the quota's setting, calm's is never held, and every event hog's agent
/// accepted is in the log once.
async fn over_quota_gets_429_and_loses_nothing(quota: &str, limit: u64) {
    let mut p = Pipeline::with_args(&[], &[&format!("--tenant-quotas=hog:{quota}={limit}")]);
    p.start_broker().await;
    let (hog, hog_url) = tenant_agent(&p, "hog-agent", "hog").await;
    let (calm, calm_url) = tenant_agent(&p, "calm-agent", "calm").await;
    let client = reqwest::Client::new();
    let mut accepted: Vec<String> = Vec::new();
    let (mut throttled, mut retry_after) = (0, None);
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while throttled < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "never throttled: {}",
            p.broker.log_text()
        );
        let ids: Vec<u64> = (n..n + 100).collect();
        n += 100;
        let r = post(&client, &hog_url, ids.iter().map(|i| event("hog", *i))).await;
        match r.status().as_u16() {
            202 => accepted.extend(ids.iter().map(|i| format!("hog-{i}"))),
            429 => {
                throttled += 1;
                retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                let v: Value = r.json().await.unwrap();
                assert!(
                    v["error"].as_str().unwrap().contains(&format!(
                        "{limit} {}/s (tenant_{quota})",
                        if quota == "ingest_events_per_sec" {
                            "events"
                        } else {
                            "bytes"
                        }
                    )),
                    "{v}"
                );
            }
            s => panic!("hog's agent answered {s}: {}", r.text().await.unwrap()),
        }
        // The other tenant is not held.
        let r = post(&client, &calm_url, (n..n + 10).map(|i| event("calm", i))).await;
        assert_eq!(r.status(), 202, "calm's agent: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    let calm_events = (n / 100) * 10;
    let total = accepted.len() as u64 + calm_events;
    p.wait_for_records(total, Duration::from_secs(90)).await;
    let log = p.log_read(0, total as usize + 1000);
    let mut hog_ids: Vec<String> = log
        .iter()
        .filter(|e| e["agent_id"] == "hog-agent")
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    hog_ids.sort();
    accepted.sort();
    assert_eq!(hog_ids, accepted, "every 202'd event in the log, once");
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("runnel_tenant_throttled_total")
                && l.contains("tenant=\"hog\"")
                && l.contains(&format!("quota=\"{quota}\""))),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("runnel_tenant_throttled_total") && l.contains("\"calm\"")),
        "calm throttled"
    );
    drop((hog, calm));
}
