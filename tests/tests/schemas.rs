//! Schemas end to end with the real binaries: `payment.completed` v1 is registered and events
//! ingested; an incompatible v2 is refused naming the property; a compatible v2 is registered
//! and the agent, pushed the new registry, accepts v1 and v2 events and rejects a bad one with
//! the JSON pointer and the rule; with the broker killed and the agent restarted, the agent still
//! validates with the copy it kept on disk. Types without a schema follow the prefix policy.

use std::time::{Duration, Instant};

use runnel_e2e::Pipeline;
use serde_json::{Value, json};

const TYPE: &str = "payment.completed";

fn v1() -> Value {
    json!({
        "type": "object",
        "properties": {"amount": {"type": "number"}, "currency": {"type": "string", "minLength": 3}},
        "required": ["amount", "currency"],
        "additionalProperties": false
    })
}

/// v1 with an optional `fee`: compatible, the model being closed.
fn v2() -> Value {
    let mut s = v1();
    s["properties"]["fee"] = json!({"type": "number", "minimum": 0});
    s
}

/// v1 with `amount` narrowed to integers: refused under BACKWARD.
fn v2_narrowed() -> Value {
    let mut s = v1();
    s["properties"]["amount"] = json!({"type": "integer"});
    s
}

fn payment(id: &str, version: u32, properties: Value) -> Value {
    json!({
        "event_id": id,
        "event_type": TYPE,
        "timestamp": "2026-11-21T12:00:00.000Z",
        "schema_version": version,
        "properties": properties,
    })
}

fn write(p: &Pipeline, name: &str, v: &Value) -> String {
    let path = p.dir.path().join(name);
    std::fs::write(&path, v.to_string()).unwrap();
    path.display().to_string()
}

/// `runnel schema ARGS`: exit status, stdout, stderr.
fn schema_cli(p: &Pipeline, args: &[&str]) -> (bool, String, String) {
    let out = runnel_e2e::runnel(
        ["schema"]
            .iter()
            .chain(args)
            .copied()
            .chain(["--admin-addr", p.admin_addr.as_str()]),
    )
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn post(p: &Pipeline, events: &[Value]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/events", p.agent_url))
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Waits until the agent validates with registry generation `generation` or later.
async fn wait_generation(p: &Pipeline, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("{}/metrics", p.agent_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let got = text
            .lines()
            .find_map(|l| l.strip_prefix("runnel_agent_schema_generation "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if got >= generation {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not get registry generation {generation} in 30 s (it has {got})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn errors(answer: &Value) -> Vec<(u64, String)> {
    answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_are_registered_checked_and_enforced_at_the_edge_even_with_the_broker_down() {
    let mut p = Pipeline::with_args(&[], &["--schema-unregistered-prefixes=payment.=reject"]);
    p.start().await;

    // v1, and events of it.
    let v1_file = write(&p, "v1.json", &v1());
    let (ok, out, err) = schema_cli(&p, &["register", TYPE, &v1_file]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got["version"].as_u64(), got["created"].as_bool()),
        (Some(1), Some(true))
    );
    // The same schema again is v1, not a new version.
    let (ok, out, _) = schema_cli(&p, &["register", TYPE, &v1_file]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["created"],
        false
    );
    wait_generation(&p, 1).await;
    let good = json!({"amount": 12.5, "currency": "EUR"});
    let (status, answer) = post(&p, &[payment("p-1", 1, good.clone())]).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );

    // An incompatible v2 is refused, naming the property and the rule; `check` says the same.
    let narrowed = write(&p, "v2-narrowed.json", &v2_narrowed());
    let (ok, _, err) = schema_cli(&p, &["register", TYPE, &narrowed]);
    assert!(!ok, "an incompatible schema was registered");
    assert!(
        err.contains("/properties/amount: type narrowed from number to integer (BACKWARD)"),
        "{err}"
    );
    let (ok, out, _) = schema_cli(&p, &["check", TYPE, &narrowed]);
    assert!(!ok, "check exits 1 for an incompatible schema");
    assert!(
        out.contains("/properties/amount: type narrowed from number to integer (BACKWARD)"),
        "{out}"
    );
    let v2_file = write(&p, "v2.json", &v2());
    let (ok, out, _) = schema_cli(&p, &["check", TYPE, &v2_file]);
    assert!(
        ok && out.contains("compatible (BACKWARD); it would be v2"),
        "{out}"
    );

    // A compatible v2: pushed to the agent, which takes v1 and v2 events and names what is
    // wrong with the others.
    let (ok, out, err) = schema_cli(&p, &["register", TYPE, &v2_file]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["version"], 2);
    wait_generation(&p, 2).await;
    let batch = [
        payment("p-2", 1, good.clone()),
        payment(
            "p-3",
            2,
            json!({"amount": 3, "currency": "USD", "fee": 0.25}),
        ),
        payment("p-4", 2, json!({"amount": "12", "currency": "USD"})),
        payment("p-5", 1, json!({"amount": 1, "currency": "USD", "fee": 1})),
        payment("p-6", 3, good.clone()),
        payment("p-7", 2, json!({"currency": "US", "fee": -1})),
        json!({"event_id": "x-1", "event_type": "payment.refunded", "timestamp": "2026-11-21T12:00:00Z"}),
        json!({"event_id": "x-2", "event_type": "page.viewed", "timestamp": "2026-11-21T12:00:00Z"}),
    ];
    let (status, answer) = post(&p, &batch).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 3, "p-2, p-3 and x-2: {answer}");
    let rejected = errors(&answer);
    let indices: Vec<u64> = rejected.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, vec![2, 3, 4, 5, 6], "{answer}");
    let says = |i: usize, what: &[&str]| {
        for w in what {
            assert!(
                rejected[i].1.contains(w),
                "rejection {i} lacks {w:?}: {}",
                rejected[i].1
            );
        }
    };
    says(
        0,
        &["properties/amount: type:", "(schema payment.completed v2)"],
    );
    says(
        1,
        &[
            "properties/fee: additionalProperties:",
            "(schema payment.completed v1)",
        ],
    );
    says(2, &["schema_version:", "registered: 1, 2"]);
    says(
        3,
        &[
            "properties/amount: required:",
            "properties/currency: minLength:",
            "properties/fee: minimum:",
        ],
    );
    says(4, &["event_type: unregistered:"]);
    // A rejected event was not stored: sent again fixed, it is accepted, not a duplicate.
    let (_, answer) = post(
        &p,
        &[payment("p-4", 2, json!({"amount": 12, "currency": "USD"}))],
    )
    .await;
    assert_eq!(
        (answer["accepted"].as_u64(), answer["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    let metrics = reqwest::get(format!("{}/metrics", p.agent_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"runnel_agent_schema_rejected_total{event_type="payment.completed",rule="type"} 1"#,
        r#"runnel_agent_schema_rejected_total{event_type="payment.completed",rule="schema_version"} 1"#,
        r#"runnel_agent_schema_rejected_total{event_type="_unregistered",rule="unregistered"} 1"#,
    ] {
        assert!(metrics.contains(line), "no {line} in the agent's metrics");
    }

    // The registry document, with its generation as the ETag.
    let http = p.http();
    let r = http
        .get(format!("http://{}/v1/schema-registry", p.admin_addr))
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, "\"2\"");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["types"][TYPE].as_object().unwrap().len(), 2);
    let r = http
        .get(format!("http://{}/v1/schema-registry", p.admin_addr))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    let (ok, out, _) = schema_cli(&p, &["show", TYPE, "--version", "2"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v2());
    let (ok, out, _) = schema_cli(&p, &["list"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["mode"], "BACKWARD");
    assert_eq!(list[0]["versions"].as_array().unwrap().len(), 2);

    // The broker is killed and the agent restarted: it validates with the copy it kept.
    p.broker.kill9();
    p.agent.kill9();
    p.agent.start();
    runnel_e2e::wait_ready(&format!("{}/readyz", p.agent_url), &mut p.agent).await;
    let (status, answer) = post(
        &p,
        &[
            payment("p-8", 2, json!({"amount": 5, "currency": "CHF", "fee": 0})),
            payment("p-9", 2, json!({"amount": 5})),
        ],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let rejected = errors(&answer);
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].1.contains("properties/currency: required:"),
        "{}",
        rejected[0].1
    );

    // Back up: what the agent held ships, and the mode can be changed.
    p.start_broker().await;
    let (ok, out, err) = schema_cli(&p, &["mode", "--type", TYPE, "FULL_TRANSITIVE"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "FULL_TRANSITIVE");
    let (ok, _, err) = schema_cli(&p, &["mode", "SIDEWAYS"]);
    assert!(!ok && err.contains("not a compatibility mode"), "{err}");
    let stats = p.wait_for_records(6, Duration::from_secs(60)).await;
    assert!(stats["records"].as_u64().unwrap() >= 1, "{stats}");
    let events: Vec<String> = p
        .log_read(0, 100)
        .into_iter()
        .filter_map(|e| e["event_id"].as_str().map(String::from))
        .collect();
    for id in ["p-1", "p-2", "p-3", "p-4", "x-2", "p-8"] {
        assert!(
            events.contains(&id.to_string()),
            "{id} is not in the log: {events:?}"
        );
    }
    for id in ["p-5", "p-6", "p-7", "x-1", "p-9"] {
        assert!(
            !events.contains(&id.to_string()),
            "rejected {id} is in the log"
        );
    }
}
