//! Broker plugins end to end, with the real binaries and the test plugins that misbehave on
//! purpose: deployed through `runnel plugin deploy` to a broker under load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runnel_e2e::{Pipeline, event, plugin};
use serde_json::{Value, json};

/// Posts batches of `batch` events until `stop`; every `poison_every`-th event's id contains
/// `poison`. Returns the accepted ids.
fn load(
    agent_url: String,
    prefix: &'static str,
    batch: usize,
    poison_every: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut accepted = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Acquire) {
            let ids: Vec<String> = (0..batch)
                .map(|_| {
                    n += 1;
                    if poison_every > 0 && n.is_multiple_of(poison_every) {
                        format!("{prefix}-poison-{n}")
                    } else {
                        format!("{prefix}-{n}")
                    }
                })
                .collect();
            let body: Vec<Value> = ids.iter().map(|id| event(id, "page.view")).collect();
            let resp = client
                .post(format!("{agent_url}/v1/events"))
                .header("content-type", "application/json")
                .body(json!(body).to_string())
                .send()
                .await;
            match resp {
                Ok(r) if r.status().as_u16() == 202 => accepted.extend(ids),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        accepted
    })
}

fn by_name<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list:?}"))
}

/// Must-show 3: under load, the trapping plugin sends exactly the poisoned events to
/// `dead_letters` and every other event on; the endless loop is interrupted at its deadline
/// every time and the memory hog is capped, both are paused (and `skip`ped) after failing
/// batches; the broker keeps serving with bounded RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_are_contained_under_load() {
    // The looper is deployed with a 50 ms deadline; the others get the 2 s ceiling, so that
    // the hog is stopped by its memory cap however loaded the machine is (on a busy machine
    // 32 MiB of page faults can take longer than 50 ms).
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--plugin-deadline-ms=2000",
            "--plugin-memory-bytes-max=33554432",
            "--pipeline-batch-events=256",
        ],
    );
    p.start().await;
    p.cli(&[
        "plugin",
        "deploy",
        plugin("trap_on_event").to_str().unwrap(),
        "--name",
        "trapper",
        "--param",
        "poison=poison",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(p.agent_url.clone(), "ms3", 100, 97, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Both misbehaving plugins are deployed with `skip`: once paused, events pass them.
    let deployed = Instant::now();
    for (wasm, name, deadline_ms) in [
        ("loop_forever", "looper", "50"),
        ("alloc_forever", "hog", "2000"),
    ] {
        p.cli(&[
            "plugin",
            "deploy",
            plugin(wasm).to_str().unwrap(),
            "--name",
            name,
            "--policy",
            "skip",
            "--deadline-ms",
            deadline_ms,
        ]);
    }
    let mut peak_rss = 0;
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            peak_rss = peak_rss.max(p.broker.rss_kib().unwrap_or(0));
            let list = p.plugin_list();
            if by_name(&list, "looper")["status"] == "paused"
                && by_name(&list, "hog")["status"] == "paused"
            {
                break;
            }
            assert!(Instant::now() < deadline, "not paused in 60 s: {list:?}");
            // The broker keeps serving while they fail.
            let ready = reqwest::get(format!("http://{}/readyz", p.admin_addr))
                .await
                .unwrap();
            assert!(ready.status().is_success());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let paused_after = deployed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let accepted = loader.await.unwrap();
    let list = p
        .wait_pipeline_caught_up(accepted.len() as u64, Duration::from_secs(60))
        .await;
    peak_rss = peak_rss.max(p.broker.rss_kib().unwrap_or(0));

    // Paused, with the reason, in `plugin list`.
    for name in ["looper", "hog"] {
        let pl = by_name(&list, name);
        assert_eq!(pl["status"], "paused", "{pl}");
        assert!(
            pl["paused_reason"]
                .as_str()
                .unwrap()
                .contains("failing batches in a row"),
            "{pl}"
        );
    }
    assert_eq!(by_name(&list, "trapper")["status"], "running");

    // Exactly the poisoned events, each once, are trapper's dead letters.
    let dead = p.read_topic("dead_letters");
    let mut by_plugin: HashMap<String, Vec<&Value>> = HashMap::new();
    for d in &dead {
        by_plugin
            .entry(d["plugin"].as_str().unwrap().to_string())
            .or_default()
            .push(d);
    }
    let poisoned: HashSet<&str> = accepted
        .iter()
        .filter(|id| id.contains("poison"))
        .map(String::as_str)
        .collect();
    assert!(poisoned.len() > 10, "too few poisoned events sent");
    let trapped: Vec<&str> = by_plugin["trapper"]
        .iter()
        .map(|d| d["event"]["event_id"].as_str().unwrap())
        .collect();
    let trapped_set: HashSet<&str> = trapped.iter().copied().collect();
    assert_eq!(
        trapped.len(),
        trapped_set.len(),
        "a dead letter was written twice"
    );
    let extra: Vec<&&str> = trapped_set.difference(&poisoned).take(5).collect();
    let missing: Vec<&&str> = poisoned.difference(&trapped_set).take(5).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "trapper's dead letters are not the poisoned events: {} extra (e.g. {extra:?}), {} missing (e.g. {missing:?}); a reason: {}",
        trapped_set.difference(&poisoned).count(),
        poisoned.difference(&trapped_set).count(),
        by_plugin["trapper"]
            .iter()
            .find(|d| !d["event"]["event_id"].as_str().unwrap().contains("poison"))
            .map_or(String::new(), |d| d["reason"].to_string())
    );
    for d in &by_plugin["trapper"] {
        assert_eq!(
            (
                d["kind"].as_str(),
                d["failure"].as_str(),
                d["stage"].as_str()
            ),
            (Some("plugin_error"), Some("trap"), Some("enrich")),
            "{d}"
        );
        assert!(
            d["reason"].as_str().unwrap().contains("poisoned event"),
            "{d}"
        );
    }
    // trapper saw every event; all but the poisoned ones went on.
    let trapper = by_name(&list, "trapper");
    assert_eq!(trapper["events_in"], accepted.len() as u64, "{trapper}");
    assert_eq!(
        trapper["events_out"],
        (accepted.len() - poisoned.len()) as u64,
        "{trapper}"
    );
    assert_eq!(trapper["errors"], poisoned.len() as u64);

    // The loop was interrupted at its deadline (50 ms, 1 ms epoch ticks) every time.
    for d in by_plugin.get("looper").into_iter().flatten() {
        assert_eq!(
            (d["kind"].as_str(), d["failure"].as_str()),
            (Some("plugin_timeout"), Some("timeout")),
            "{d}"
        );
        assert!(
            d["reason"].as_str().unwrap().contains("deadline of 50 ms"),
            "{d}"
        );
    }
    let slowest = by_name(&list, "looper")["slowest_call_ms"]
        .as_f64()
        .unwrap();
    assert!(
        (50.0..200.0).contains(&slowest),
        "the slowest looper call took {slowest} ms with a 50 ms deadline"
    );
    // The hog was stopped at its memory cap.
    for d in by_plugin.get("hog").into_iter().flatten() {
        assert_eq!(
            (d["kind"].as_str(), d["failure"].as_str()),
            (Some("plugin_error"), Some("out_of_memory")),
            "{d}"
        );
        assert!(
            d["reason"].as_str().unwrap().contains("memory_bytes_max"),
            "{d}"
        );
    }
    assert!(!by_plugin.get("hog").is_none_or(Vec::is_empty));
    assert!(!by_plugin.get("looper").is_none_or(Vec::is_empty));
    // Bounded memory: the hog's 32 MiB cap, not the machine's memory.
    assert!(peak_rss < 400 * 1024, "broker RSS peaked at {peak_rss} KiB");
    eprintln!(
        "accepted {}, poisoned {}, looper/hog paused after {paused_after:?}, slowest looper call {slowest:.1} ms, peak broker RSS {} MiB",
        accepted.len(),
        poisoned.len(),
        peak_rss / 1024
    );
    // Paused, they show in /metrics too.
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("runnel_plugin_paused{plugin=\"looper\"} 1"),
        "{metrics}"
    );
}

/// Must-show 4: a plugin redeployed under load (and the broker `kill -9`ed meanwhile) switches
/// versions at a batch boundary: every event is processed by exactly one version, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_under_load_switches_versions_with_nothing_lost_or_doubled() {
    let mut p = Pipeline::with_args(&[], &["--pipeline-batch-events=128"]);
    p.start().await;
    let noop = plugin("noop");
    let noop = noop.to_str().unwrap();
    p.cli(&[
        "plugin", "deploy", noop, "--name", "tagger", "--param", "tag=a",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(p.agent_url.clone(), "ms4", 100, 0, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.broker.kill9();
    p.start_broker().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.cli(&[
        "plugin", "deploy", noop, "--name", "tagger", "--param", "tag=b",
    ]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    p.broker.kill9();
    p.start_broker().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Release);
    let accepted = loader.await.unwrap();
    let list = p
        .wait_pipeline_caught_up(accepted.len() as u64, Duration::from_secs(60))
        .await;
    let log_events = p.log_stats()["records"].as_u64().unwrap();
    assert_eq!(log_events, accepted.len() as u64);
    let tagger = by_name(&list, "tagger");
    assert_eq!(tagger["version"], "2", "{tagger}");
    let versions = tagger["versions"].as_array().unwrap();
    let per_version: Vec<u64> = versions
        .iter()
        .map(|v| v["events_in"].as_u64().unwrap())
        .collect();
    assert_eq!(per_version.len(), 2, "{tagger}");
    assert!(per_version.iter().all(|n| *n > 0), "{tagger}");
    assert_eq!(
        per_version.iter().sum::<u64>(),
        log_events,
        "every event processed by exactly one version, once: {tagger}"
    );
    assert_eq!(tagger["events_in"], log_events);
    assert!(p.read_topic("dead_letters").is_empty());

    // Bad deploys are refused with the parameter named; nothing changes.
    let client = p.http();
    let bytes = std::fs::read(plugin("noop")).unwrap();
    for (query, names) in [
        ("capability=clock", "plugin_capabilities_allowed"),
        ("capability=network", "capability"),
        ("deadline_ms=999999", "plugin_deadline_ms"),
        ("colour=blue", "colour"),
        ("param=novalue", "param"),
    ] {
        let r = client
            .put(format!("http://{}/v1/plugins/tagger?{query}", p.admin_addr))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let text = r.text().await.unwrap();
        assert!(text.contains(names), "{query}: {text}");
    }
    let r = client
        .put(format!("http://{}/v1/plugins/bad", p.admin_addr))
        .body(b"not wasm".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("component"));
    // An aggregator deploys like an enricher; the name then belongs to an aggregator, and an
    // enricher under it is refused with the reason.
    let r = client
        .put(format!("http://{}/v1/plugins/agg", p.admin_addr))
        .body(std::fs::read(plugin("count_by_type")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(by_name(&p.plugin_list(), "agg")["kind"], "aggregate");
    let r = client
        .put(format!("http://{}/v1/plugins/agg", p.admin_addr))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("is deployed as kind") && text.contains("aggregate"),
        "{text}"
    );
    p.cli(&["plugin", "remove", "agg"]);
    let r = client
        .post(format!("http://{}/v1/plugins/nobody/pause", p.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(by_name(&p.plugin_list(), "tagger")["version"], "2");
}

/// Policy `hold`: a plugin paused after failing batches keeps the events in the log,
/// unprocessed, until it is fixed; the fixed version then processes every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_plugin_keeps_events_in_the_log_until_it_is_fixed() {
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--plugin-deadline-ms=20",
            "--pipeline-batch-events=64",
            "--plugin-isolation-time-ms=100",
        ],
    );
    p.start().await;
    p.cli(&[
        "plugin",
        "deploy",
        plugin("loop_forever").to_str().unwrap(),
        "--name",
        "stage",
    ]);
    let client = reqwest::Client::new();
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let paused = loop {
        let body: Vec<Value> = (0..64)
            .map(|i| event(&format!("hold-{sent}-{i}"), "page.view"))
            .collect();
        let r = client
            .post(format!("{}/v1/events", p.agent_url))
            .header("content-type", "application/json")
            .body(json!(body).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        sent += 64;
        let list = p.plugin_list();
        if by_name(&list, "stage")["status"] == "paused" {
            break by_name(&list, "stage").clone();
        }
        assert!(Instant::now() < deadline, "not paused: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(paused["policy"], "hold");
    // Held: the pipeline waits; the events stay in the log.
    p.wait_for_records(sent, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = by_name(&p.plugin_list(), "stage").clone();
    assert!(held["lag"].as_u64().unwrap() > 0, "{held}");
    assert_eq!(held["status"], "paused");
    // Fixed: a working version of the same plugin processes everything not yet processed.
    p.cli(&[
        "plugin",
        "deploy",
        plugin("noop").to_str().unwrap(),
        "--name",
        "stage",
    ]);
    let list = p
        .wait_pipeline_caught_up(sent, Duration::from_secs(60))
        .await;
    let stage = by_name(&list, "stage");
    assert_eq!(stage["status"], "running");
    let versions = stage["versions"].as_array().unwrap();
    let v1 = versions[0]["events_in"].as_u64().unwrap();
    let v2 = versions[1]["events_in"].as_u64().unwrap();
    // Version 1 dead-lettered what it processed before the pause; version 2 got the rest.
    let dead = p.read_topic("dead_letters").len() as u64;
    assert_eq!(v1, dead, "{stage}");
    assert_eq!(v1 + v2, sent, "every event processed once: {stage}");
}
