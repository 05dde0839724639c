//! Agent ingest over real HTTP, in process, with faults injected through the storage seam.
//! No broker runs here: the shipper keeps retrying in the background, so everything accepted
//! stays in the spool, where the tests check it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use runnel_agent::{AgentConfig, RunningAgent, SpoolFullPolicy};
use runnel_event::Chunk;
use runnel_segment::fault::{Faults, FaultyStorage};
use runnel_segment::{FsStorage, LogOptions, SegmentLog, Storage};
use serde_json::{Value, json};

/// A CA (`DIR/ca.pem`) and an agent certificate it signed (`DIR/agent.pem`, `DIR/agent.key`,
/// common name `test-agent`).
fn dev_ca(dir: &Path) -> std::path::PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    let mut agent = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    agent
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test-agent");
    let agent_key = rcgen::KeyPair::generate().unwrap();
    let cert = agent.signed_by(&agent_key, &ca).unwrap();
    std::fs::write(dir.join("agent.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("agent.key"), agent_key.serialize_pem()).unwrap();
    path
}

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        data_dir: dir.join("agent"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        // Nothing listens here: shipping fails and retries, the spool keeps everything.
        broker_addr: "127.0.0.1:9".parse().unwrap(),
        broker_ca: Some(dev_ca(dir)),
        tls_cert: Some(dir.join("agent.pem")),
        tls_key: Some(dir.join("agent.key")),
        ship_backoff_max_ms: 200,
        ..AgentConfig::default()
    }
}

/// A spool that fills after a few requests (no broker drains it in these tests).
fn tiny_spool(dir: &Path) -> AgentConfig {
    AgentConfig {
        spool_bytes_max: 256 << 10,
        spool_segment_bytes_max: 128 << 10,
        decompressed_bytes_max: 32 << 10,
        body_bytes_max: 32 << 10,
        ship_batch_bytes_max: 64 << 10,
        ..config(dir)
    }
}

async fn start(cfg: AgentConfig, storage: Arc<dyn Storage>) -> (RunningAgent, String) {
    let agent = runnel_agent::start(cfg, storage)
        .await
        .expect("agent starts");
    let url = format!("http://{}", agent.http_addr);
    (agent, url)
}

fn event(id: &str) -> Value {
    json!({"event_id": id, "event_type": "page.view", "timestamp": 1_700_000_000_000i64, "properties": {"p": 1}})
}

/// The value of a metric line that starts with `name` (counters are process-wide and tests run
/// in parallel, so tests compare against lower bounds).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value, Option<String>) {
    post_with(url, body, &[]).await
}

async fn post_with(
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, retry)
}

/// Every event id durably in the spool, in order.
fn spool_ids(data_dir: &Path) -> Vec<String> {
    let (log, _) = SegmentLog::open(
        Arc::new(FsStorage),
        &data_dir.join("spool"),
        LogOptions::default(),
        0,
    )
    .unwrap();
    let records = log.reader().read(0, usize::MAX, usize::MAX).unwrap();
    records
        .iter()
        .flat_map(|r| Chunk::decode(&r.payload).unwrap().events)
        .map(|e| e.event_id)
        .collect()
}

#[tokio::test]
async fn counts_are_exact_and_errors_name_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = start(config(dir.path()), Arc::new(FsStorage)).await;
    let body = json!([
        event("a"),
        event("b"),
        event("a"),
        {"event_id": "c", "event_type": "page.view"},
        {"event_id": "d", "event_type": "page.view", "timestamp": 1, "colour": "red"},
        {"event_id": 7, "event_type": "page.view", "timestamp": 1},
    ]);
    let (status, answer, _) = post(&url, body.to_string()).await;
    assert_eq!(status, 202);
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["duplicates"], 1);
    let rejected = answer["rejected"].as_array().unwrap();
    let by_index: Vec<(u64, String)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(by_index.len(), 3);
    assert_eq!(by_index[0].0, 3);
    assert!(by_index[0].1.starts_with("timestamp: "), "{by_index:?}");
    assert!(
        by_index[1].1.starts_with("colour: unknown field"),
        "{by_index:?}"
    );
    assert!(
        by_index[2].1.starts_with("event_id: must be a string"),
        "{by_index:?}"
    );

    // The same ids again: all duplicates, still 202.
    let (status, answer, _) = post(&url, json!([event("a"), event("b")]).to_string()).await;
    assert_eq!(
        (
            status,
            answer["accepted"].as_u64(),
            answer["duplicates"].as_u64()
        ),
        (202, Some(0), Some(2))
    );

    // Nothing valid: 400 with the same shape.
    let (status, answer, _) = post(&url, r#"{"event_id":"x"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected"][0]["index"], 0);

    // NDJSON.
    let nd = format!("{}\n{}\n", event("n1"), event("n2"));
    let (status, answer, _) =
        post_with(&url, nd, &[("content-type", "application/x-ndjson")]).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(2)));

    let m = metrics(&url).await;
    assert!(metric(&m, "runnel_agent_events_accepted_total") >= 4.0);
    assert!(
        metric(
            &m,
            "runnel_agent_events_rejected_total{field=\"timestamp\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "runnel_agent_events_rejected_total{field=\"unknown_field\"}"
        ) >= 1.0
    );
    assert_eq!(
        reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    agent.shutdown().await;
    assert_eq!(
        spool_ids(&dir.path().join("agent")),
        vec!["a", "b", "n1", "n2"]
    );
}

#[tokio::test]
async fn hostile_bodies_get_the_documented_4xx_and_the_agent_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = start(config(dir.path()), Arc::new(FsStorage)).await;

    // Malformed JSON and wrong top-level types.
    for body in [
        "{",
        "[1,2",
        "\"just a string\"",
        "[[[]]]",
        "{\"event_id\":}",
    ] {
        let (status, answer, _) = post(&url, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["rejected"][0]["error"].is_string());
    }

    // 100k-deep nesting, as a whole body and inside properties.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert_eq!(post(&url, deep).await.0, 400);
    let deep_props = format!(
        r#"{{"event_id":"deep","event_type":"a","timestamp":1,"properties":{{"x":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, answer, _) = post(&url, deep_props).await;
    assert_eq!(status, 400);
    assert!(
        answer["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("properties: ")
    );

    // A 100 MB body: 413 naming the limit.
    let huge = vec![b' '; 100 << 20];
    let (status, answer, _) = post(&url, huge).await;
    assert_eq!(status, 413);
    assert!(
        answer["error"].as_str().unwrap().contains("body_bytes_max"),
        "{answer}"
    );

    // A gzip bomb: 256 MiB of zeros in about 256 KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let (status, answer, _) = post_with(&url, bomb, &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 413);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("decompressed_bytes_max"),
        "{answer}"
    );

    // A zstd bomb too.
    let zbomb = zstd::bulk::compress(&vec![b'['; 64 << 20], 3).unwrap();
    let (status, _, _) = post_with(&url, zbomb, &[("content-encoding", "zstd")]).await;
    assert_eq!(status, 413);

    // Honest compressed bodies work.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json!([event("gz1")]).to_string().as_bytes())
        .unwrap();
    let (status, answer, _) =
        post_with(&url, gz.finish().unwrap(), &[("content-encoding", "gzip")]).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(1)));
    let z = zstd::bulk::compress(json!(event("z1")).to_string().as_bytes(), 3).unwrap();
    let (status, _, _) = post_with(&url, z, &[("content-encoding", "zstd")]).await;
    assert_eq!(status, 202);

    // Unknown encoding, corrupt gzip.
    assert_eq!(
        post_with(&url, "x", &[("content-encoding", "br")]).await.0,
        415
    );
    assert_eq!(
        post_with(&url, "not gzip", &[("content-encoding", "gzip")])
            .await
            .0,
        400
    );

    // Still alive and accepting.
    let (status, _, _) = post(&url, json!(event("after")).to_string()).await;
    assert_eq!(status, 202);
    agent.shutdown().await;
    assert_eq!(
        spool_ids(&dir.path().join("agent")),
        vec!["gz1", "z1", "after"]
    );
}

#[tokio::test]
async fn fsync_failure_never_yields_2xx_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let storage: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (agent, url) = start(config(dir.path()), storage).await;
    assert_eq!(post(&url, json!(event("ok-1")).to_string()).await.0, 202);

    faults.set_fail_sync(true);
    let (status, answer, retry) =
        post(&url, json!([event("lost-1"), event("lost-2")]).to_string()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["accepted"], 0);
    assert!(retry.is_some());
    assert!(
        answer["error"].as_str().unwrap().contains("fdatasync"),
        "{answer}"
    );
    faults.set_fail_sync(false);
    // Once fsync has failed the spool cannot vouch for its pages: it refuses until restart.
    let (status, _, _) = post(&url, json!(event("later")).to_string()).await;
    assert_eq!(status, 503);
    assert_eq!(
        reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .status(),
        503
    );
    assert!(faults.injected() >= 1);
    agent.shutdown().await;

    // Restart on the same directory. The acknowledged event is there. The refused ones may or
    // may not be (their bytes were written but never confirmed by an fsync, so the page cache
    // may still have carried them to disk): either way a client's retry makes them durable
    // exactly once.
    let (agent, url) = start(config(dir.path()), Arc::new(FsStorage)).await;
    let (status, answer, _) = post(
        &url,
        json!([event("lost-1"), event("lost-2"), event("ok-1")]).to_string(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        answer["accepted"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap(),
        3
    );
    agent.shutdown().await;
    let ids = spool_ids(&dir.path().join("agent"));
    for id in ["ok-1", "lost-1", "lost-2"] {
        assert_eq!(
            ids.iter().filter(|i| *i == id).count(),
            1,
            "{id} in {ids:?}"
        );
    }
    assert!(
        !ids.contains(&"later".to_string()),
        "never written: the spool refused at once"
    );
}

#[tokio::test]
async fn disk_full_is_503_with_retry_after_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let storage: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (agent, url) = start(config(dir.path()), storage).await;
    assert_eq!(post(&url, json!(event("before")).to_string()).await.0, 202);
    faults.set_space_left(100);
    let big: Vec<Value> = (0..50).map(|i| event(&format!("full-{i}"))).collect();
    let (status, answer, retry) = post(&url, json!(big).to_string()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        answer["error"].as_str().unwrap().contains("disk full"),
        "{answer}"
    );
    faults.set_space_left(u64::MAX);
    // Space is back: the retry of the same request is accepted in full.
    let (status, answer, _) = post(&url, json!(big).to_string()).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(50)),
        "{answer}"
    );
    agent.shutdown().await;
    let ids = spool_ids(&dir.path().join("agent"));
    assert_eq!(ids.len(), 51);
    assert_eq!(ids[0], "before");
}

#[tokio::test]
async fn spool_full_policies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        spool_full_policy: SpoolFullPolicy::DropNewest,
        ..tiny_spool(dir.path())
    };
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    let mut accepted = 0;
    let mut refused = None;
    for r in 0..200 {
        let body: Vec<Value> = (0..40).map(|i| event(&format!("r{r}-{i}"))).collect();
        let (status, answer, retry) = post(&url, json!(body).to_string()).await;
        match status {
            202 => accepted += answer["accepted"].as_u64().unwrap(),
            429 => {
                refused = Some((answer, retry));
                break;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    let (answer, retry) = refused.expect("the spool fills up");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("spool_bytes_max"),
        "{answer}"
    );
    assert!(retry.is_some());
    let m = metrics(&url).await;
    assert!(
        metric(
            &m,
            "runnel_agent_events_dropped_total{reason=\"spool_full\"}"
        ) >= 40.0
    );
    agent.shutdown().await;
    assert_eq!(spool_ids(&cfg.data_dir).len() as u64, accepted);

    // Policy block: the request waits spool_full_block_ms, then 503.
    let cfg = AgentConfig {
        spool_full_policy: SpoolFullPolicy::Block,
        spool_full_block_ms: 300,
        ..cfg
    };
    let (agent, url) = start(cfg, Arc::new(FsStorage)).await;
    let started = std::time::Instant::now();
    let body: Vec<Value> = (0..40).map(|i| event(&format!("blocked-{i}"))).collect();
    let (status, _, retry) = post(&url, json!(body).to_string()).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    assert!(started.elapsed() >= Duration::from_millis(300));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_client_that_gives_up_leaves_no_ids_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        spool_full_policy: SpoolFullPolicy::Block,
        spool_full_block_ms: 400,
        ..tiny_spool(dir.path())
    };
    let (agent, url) = start(cfg, Arc::new(FsStorage)).await;
    // Fill the spool (no broker drains it).
    for r in 0.. {
        let body: Vec<Value> = (0..40).map(|i| event(&format!("fill-{r}-{i}"))).collect();
        if post(&url, json!(body).to_string()).await.0 != 202 {
            break;
        }
    }
    // A client with a short timeout gives up while its request waits for space.
    let body = json!(
        (0..60)
            .map(|i| event(&format!("gone-{i}")))
            .collect::<Vec<_>>()
    )
    .to_string();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(
        impatient
            .post(format!("{url}/v1/events"))
            .body(body.clone())
            .send()
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Its retry must not be told "duplicate": nothing of it was stored.
    let (status, answer, _) = post(&url, body).await;
    assert_eq!(status, 503, "{answer}");
    agent.shutdown().await;
    assert!(
        !spool_ids(&dir.path().join("agent"))
            .iter()
            .any(|id| id.starts_with("gone-"))
    );
}

#[tokio::test]
async fn torn_spool_tail_after_a_crash_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    for i in 0..5 {
        assert_eq!(
            post(&url, json!(event(&format!("t{i}"))).to_string())
                .await
                .0,
            202
        );
    }
    agent.shutdown().await;
    // A crash in the middle of the next write leaves half a record.
    let seg = std::fs::read_dir(cfg.data_dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0x55; 37]).unwrap();
    drop(f);
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    assert_eq!(
        post(&url, json!([event("t0"), event("t5")]).to_string())
            .await
            .1["duplicates"],
        1
    );
    assert!(
        metric(
            &metrics(&url).await,
            "runnel_agent_spool_truncated_bytes_total"
        ) >= 37.0
    );
    agent.shutdown().await;
    assert_eq!(
        spool_ids(&cfg.data_dir),
        vec!["t0", "t1", "t2", "t3", "t4", "t5"]
    );
}

/// After a crash that left no dedup snapshot, the ids come back from the spool alone: a resend
/// of anything spooled is a duplicate, within the window, and only within it.
#[tokio::test]
async fn ids_in_the_spool_stay_duplicates_across_a_restart_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    let ids: Vec<String> = (0..300).map(|i| format!("s{i}")).collect();
    for chunk in ids.chunks(100) {
        let body: Vec<Value> = chunk.iter().map(|id| event(id)).collect();
        assert_eq!(post(&url, json!(body).to_string()).await.0, 202);
    }
    agent.shutdown().await;
    std::fs::remove_file(cfg.data_dir.join("dedup.snapshot")).unwrap();
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    let again: Vec<Value> = ["s0", "s150", "s299", "new-1"]
        .iter()
        .map(|id| event(id))
        .collect();
    let (status, answer, _) = post(&url, json!(again).to_string()).await;
    assert_eq!(
        (status, &answer["duplicates"], &answer["accepted"]),
        (202, &json!(3), &json!(1))
    );
    agent.shutdown().await;
    // With a window that has passed since they were received, nothing is remembered.
    std::fs::remove_file(cfg.data_dir.join("dedup.snapshot")).unwrap();
    let later = AgentConfig {
        dedup_window_secs: 1,
        ..cfg.clone()
    };
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (agent, url) = start(later, Arc::new(FsStorage)).await;
    let (_, answer, _) = post(&url, json!([event("s1")]).to_string()).await;
    assert_eq!(answer["duplicates"], 0, "{answer}");
    agent.shutdown().await;
}

/// A bad record in a sealed spool segment is met first by the dedup rebuild at start (sealed
/// segments open from their index files). The start opens the spool again, which moves that
/// segment to quarantine, and rebuilds dedup from the rest: the ids of every other segment stay
/// duplicates, and the agent takes new events.
#[tokio::test]
async fn a_bad_sealed_spool_record_found_at_start_is_quarantined_and_dedup_covers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        spool_segment_bytes_max: 64 << 10,
        spool_bytes_max: 4 << 20,
        decompressed_bytes_max: 16 << 10,
        body_bytes_max: 16 << 10,
        ship_batch_bytes_max: 32 << 10,
        ..config(dir.path())
    };
    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    // 40 requests of about 7 KiB: several sealed segments.
    let pad = "x".repeat(7000);
    for i in 0..40 {
        let body = json!({"event_id": format!("b{i}"), "event_type": "page.view",
            "timestamp": 1_700_000_000_000i64, "properties": {"pad": pad}});
        assert_eq!(post(&url, body.to_string()).await.0, 202);
    }
    agent.shutdown().await;
    std::fs::remove_file(cfg.data_dir.join("dedup.snapshot")).unwrap();
    let spool = cfg.data_dir.join("spool");
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&segs[0], &bytes).unwrap();

    let (agent, url) = start(cfg.clone(), Arc::new(FsStorage)).await;
    let quarantined: Vec<_> = std::fs::read_dir(spool.join("quarantine"))
        .expect("a quarantine folder")
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    // Events of the later segments (the last request's among them) are still known.
    let later: Vec<String> = spool_ids(&cfg.data_dir);
    assert!(
        later.len() < 40 && later.contains(&"b39".to_string()),
        "{later:?}"
    );
    let resend: Vec<Value> = later.iter().map(|id| event(id)).collect();
    let (status, answer, _) = post(&url, json!(resend).to_string()).await;
    assert_eq!(
        (status, &answer["duplicates"]),
        (202, &json!(later.len())),
        "{answer}"
    );
    assert_eq!(post(&url, json!([event("new")]).to_string()).await.0, 202);
    agent.shutdown().await;
}
