//! Data-quality alarms end to end with the real binaries: a generator posts two event types;
//! when it stops one, that type's freshness alarm fires in `/metrics`
//! (`runnel_dq_alarm{type,check}`) and `GET /v1/dq`, the other's does not; when it resumes the
//! alarm clears. A completeness check set with `runnel dq set` fires on events lacking the
//! property.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runnel_e2e::Pipeline;
use serde_json::{Value, json};

async fn alarm(p: &Pipeline, ty: &str, check: &str) -> Option<bool> {
    let text = p.metrics().await;
    let (t, c) = (format!("type=\"{ty}\""), format!("check=\"{check}\""));
    text.lines()
        .filter(|l| l.starts_with("runnel_dq_alarm{") && l.contains(&t) && l.contains(&c))
        .find_map(|l| l.rsplit(' ').next())
        .map(|v| v.trim() == "1")
}

async fn wait_alarm(p: &Pipeline, ty: &str, check: &str, want: bool) -> Duration {
    let start = Instant::now();
    loop {
        if alarm(p, ty, check).await == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{ty} {check} alarm did not become {want} in 30 s:\n{}",
            p.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alarm_fires_when_a_type_stops_and_clears_when_it_resumes() {
    let mut p = Pipeline::with_args(
        &[],
        &[
            "--dq-checks=a.one:freshness_secs=3",
            "--dq-checks=a.two:freshness_secs=3",
            "--dq-interval-ms=200",
        ],
    );
    p.start().await;
    let two_on = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (url, two_on, stop) = (p.agent_url.clone(), two_on.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let mut batch = vec![
                    json!({"event_id": format!("one-{i}"), "event_type": "a.one", "timestamp": "2026-11-21T12:00:00Z", "properties": {"amount": 1}}),
                ];
                if two_on.load(Ordering::Acquire) {
                    batch.push(json!({"event_id": format!("two-{i}"), "event_type": "a.two", "timestamp": "2026-11-21T12:00:00Z"}));
                }
                let _ = client
                    .post(format!("{url}/v1/events"))
                    .json(&batch)
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Both flowing: no alarm.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(alarm(&p, "a.one", "freshness").await, Some(false));
    assert_eq!(alarm(&p, "a.two", "freshness").await, Some(false));

    // a.two stops: its alarm fires after its 3 s, a.one's does not.
    two_on.store(false, Ordering::Release);
    let fired = wait_alarm(&p, "a.two", "freshness", true).await;
    assert!(
        fired >= Duration::from_secs(2),
        "fired after {fired:?}, before 3 s without events"
    );
    assert_eq!(alarm(&p, "a.one", "freshness").await, Some(false));
    let list: Vec<Value> = serde_json::from_str(&p.cli(&["dq", "list"])).unwrap();
    let two = list.iter().find(|s| s["event_type"] == "a.two").unwrap();
    assert_eq!(two["alarms"][0]["check"], "freshness");
    assert_eq!(two["alarms"][0]["alarm"], true, "{two}");
    assert!(
        two["alarms"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("at most 3 s"),
        "{two}"
    );

    // It resumes: the alarm clears.
    two_on.store(true, Ordering::Release);
    wait_alarm(&p, "a.two", "freshness", false).await;

    // Completeness, set at run time: a.two's events have no `amount`.
    p.cli(&[
        "dq",
        "set",
        "a.two",
        "--property",
        "amount",
        "--missing-share-max",
        "0.5",
    ]);
    wait_alarm(&p, "a.two", "completeness", true).await;
    p.cli(&[
        "dq",
        "set",
        "a.one",
        "--property",
        "amount",
        "--missing-share-max",
        "0.5",
    ]);
    wait_alarm(&p, "a.one", "completeness", false).await;
    // Bad checks are named.
    let out = runnel_e2e::runnel([
        "dq",
        "set",
        "a.one",
        "--missing-share-max",
        "2",
        "--property",
        "x",
        "--admin-addr",
        &p.admin_addr,
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("missing_share_max: 2 is not between 0 and 1")
    );
    stop.store(true, Ordering::Release);
    generator.await.unwrap();
}
