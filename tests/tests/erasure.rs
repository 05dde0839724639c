//! Erasure end to end with the real binaries: a user's events are removed from the broker's
//! log (segments rewritten in place, every other event at its offset), from `dead_letters`,
//! and from the agent's spool (sealed by age, deleted once shipped). A byte search of the
//! data dirs (raw, and inside every zstd frame) finds the user's id, event ids and a property
//! value only they had before, and nothing of them after, while another user's are still
//! there. The audit holds keyed hashes, not the id. A broker `kill -9`ed while it rewrites
//! finishes the erasure after restart, losing and duplicating nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use runnel_e2e::{Pipeline, plugin};
use serde_json::{Value, json};

const USERS: usize = 61;

fn user(i: usize) -> String {
    format!("user-{:03}", i % USERS)
}

fn event_id(i: usize) -> String {
    // Every 25th is poison for the trapping enricher: a dead letter.
    if i % 25 == 3 {
        format!("evt-{i:06}-poison")
    } else {
        format!("evt-{i:06}-ok")
    }
}

/// A value only event `i` holds.
fn prop(i: usize) -> String {
    format!("prop-{i:06}-zz")
}

/// 16 hex digits that differ from event to event (compression leaves the log some bulk).
fn noise(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    format!("{x:016x}")
}

fn events(n: usize, now: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "event_id": event_id(i),
                "event_type": if i % 3 == 0 { "order.placed" } else { "page.view" },
                "timestamp": now,
                "user_id": user(i),
                "platform": "web",
                "properties": {"n": i, "tag": prop(i), "noise": noise(i)},
            })
        })
        .collect()
}

/// The needles of the events of user `u`: its id, its events' ids and their own values.
fn needles(n: usize, u: usize) -> Vec<String> {
    let mut out = vec![user(u)];
    for i in (0..n).filter(|i| i % USERS == u) {
        out.push(event_id(i));
        out.push(prop(i));
    }
    out
}

/// Every file under `dir`, as it is and with each zstd frame in it decompressed.
fn searchable(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let mut text = bytes.clone();
            let magic = [0x28, 0xb5, 0x2f, 0xfd];
            let mut at = 0;
            while let Some(k) = bytes[at..].windows(4).position(|w| w == magic) {
                let start = at + k;
                let mut d = Vec::new();
                if let Ok(mut r) = zstd::stream::read::Decoder::new(&bytes[start..]) {
                    let _ = std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut r, 64 << 20),
                        &mut d,
                    );
                }
                text.extend_from_slice(&d);
                at = start + 4;
            }
            out.push((p.display().to_string(), text));
        }
    }
    out
}

/// Which of `needles` occur anywhere under `dirs`, with a file each is in.
fn found(dirs: &[&Path], needles: &[String]) -> BTreeMap<String, String> {
    let files: Vec<(String, Vec<u8>)> = dirs.iter().flat_map(|d| searchable(d)).collect();
    let mut out = BTreeMap::new();
    for n in needles {
        if let Some((path, _)) = files
            .iter()
            .find(|(_, b)| b.windows(n.len()).any(|w| w == n.as_bytes()))
        {
            out.insert(n.clone(), path.clone());
        }
    }
    out
}

/// Every event of the log, by id, with its offset.
fn log_offsets(p: &Pipeline) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in p.log_read(0, 100_000) {
        let id = e["event_id"].as_str().unwrap().to_string();
        let offset = e["offset"].as_u64().unwrap();
        assert!(
            out.insert(id.clone(), offset).is_none(),
            "{id} twice in the log"
        );
    }
    out
}

fn dead_letters(p: &Pipeline) -> Vec<Value> {
    p.cli(&["dlq", "list", "--limit", "100000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_done(p: &Pipeline, id: u64, timeout: Duration) -> runnel_client::api::ErasureStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = p.admin().erasure(id).await
            && s.state == "done"
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "erasure {id} not done in {timeout:?}: {:?}\n--- broker log ---\n{}",
            p.admin().erasure(id).await,
            p.broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pipeline(broker_extra: &[&str]) -> Pipeline {
    let mut broker = vec![
        "--archive-enabled=false",
        "--batch-bytes-max=16384",
        "--segment-bytes-max=32768",
        "--erasure-spool-grace-ms=0",
        "--erasure-interval-ms=100",
        "--watermark-source-idle-ms=600000",
    ];
    broker.extend_from_slice(broker_extra);
    Pipeline::with_args(
        &["--ship-batch-bytes-max=8192", "--spool-seal-after-ms=500"],
        &broker,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_users_bytes_are_gone_from_every_store_and_the_rest_is_kept() {
    const N: usize = 3000;
    let (gone, also_gone, kept) = (7, 42, 8);
    let mut p = pipeline(&[]);
    p.start().await;
    p.cli(&[
        "plugin",
        "deploy",
        plugin("trap_on_event").to_str().unwrap(),
        "--name",
        "trapper",
    ]);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let all = events(N, &now);
    runnel_e2e::post_events(&p.agent_url, &all, 40).await;
    p.wait_pipeline_caught_up(N as u64, Duration::from_secs(60))
        .await;
    let before = log_offsets(&p);
    assert_eq!(before.len(), N);
    let dead = dead_letters(&p);
    assert_eq!(dead.len(), N.div_ceil(25));
    let broker_dir = p.dir.path().join("broker");
    let agent_dir = p.dir.path().join("agent");
    let dirs = [broker_dir.as_path(), agent_dir.as_path()];
    let targets: Vec<String> = [needles(N, gone), needles(N, also_gone)].concat();
    // The search can see them: in the log, and the poison ones in dead_letters.
    assert_eq!(found(&[&broker_dir], &targets).len(), targets.len());
    let poison_of_gone: Vec<String> = (0..N)
        .filter(|i| i % USERS == gone && i % 25 == 3)
        .map(event_id)
        .collect();
    assert!(!poison_of_gone.is_empty());
    assert!(
        found(&[&broker_dir.join("topics/dead_letters")], &poison_of_gone).len()
            == poison_of_gone.len()
    );

    // One request by the CLI, waited for; one by HTTP.
    let by_cli: Value =
        serde_json::from_str(&p.cli(&["erase", "--user-id", &user(gone), "--wait"])).unwrap();
    assert_eq!(by_cli["state"], "done", "{by_cli:#}");
    let values = BTreeMap::from([("user_id".to_string(), user(also_gone))]);
    let by_http = p.admin().erase(&values).await.unwrap();
    let done = wait_done(&p, by_http.id, Duration::from_secs(30)).await;

    // The audit: keyed hashes, what each store rewrote, never the id.
    let audit = p.cli(&["erase", "--status"]);
    assert!(!audit.contains(&user(gone)) && !audit.contains(&user(also_gone)));
    let list: Vec<Value> = serde_json::from_str(&audit).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(done.identity.len(), 1);
    assert_eq!(done.identity[0].field, "user_id");
    assert_eq!(done.identity[0].hash.len(), 64);
    let store = |s: &runnel_client::api::ErasureStatus, name: &str| {
        s.stores.iter().find(|x| x.store == name).unwrap().clone()
    };
    let log = store(&done, "log");
    let erased_in_log: u64 = log.rewritten.iter().map(|r| r.entries).sum();
    assert_eq!(
        erased_in_log as usize,
        (0..N).filter(|i| i % USERS == also_gone).count()
    );
    assert!(
        store(&done, "dead_letters")
            .rewritten
            .iter()
            .map(|r| r.entries)
            .sum::<u64>()
            > 0
    );
    assert!(
        done.stores
            .iter()
            .all(|s| s.state == "done" && s.unreadable == 0)
    );

    // The agent's spool holds shipped events until its segment is sealed (by age here) and
    // deleted: within seconds, nothing of the users is left on either disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = found(&dirs, &targets);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still on disk: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Another user's are all there.
    let others = needles(N, kept);
    assert_eq!(found(&[&broker_dir], &others).len(), others.len());

    // Every other event is at its offset; the dead letters of the others are all there.
    let after = log_offsets(&p);
    let want: BTreeMap<String, u64> = before
        .iter()
        .filter(|(id, _)| {
            let i: usize = id[4..10].parse().unwrap();
            i % USERS != gone && i % USERS != also_gone
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(after, want);
    let dead = dead_letters(&p);
    let want_dead: BTreeSet<String> = (0..N)
        .filter(|i| i % 25 == 3 && i % USERS != gone && i % USERS != also_gone)
        .map(event_id)
        .collect();
    let got_dead: BTreeSet<String> = dead
        .iter()
        .map(|d| d["event"]["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got_dead, want_dead);
    let stats = p.log_stats();
    assert_eq!(stats["records"].as_u64().unwrap() as usize, want.len());

    // A restart reads the rewritten log as it is.
    p.broker.kill9();
    p.start_broker().await;
    assert_eq!(log_offsets(&p), want);

    // A request that names no identity field the broker has is refused, by name.
    let bad = BTreeMap::from([("email".to_string(), "a@example.com".to_string())]);
    let err = p.admin().erase(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("email") && err.contains("identity field"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_during_an_erasure_finishes_it_after_restart() {
    const N: usize = 30_000;
    let gone = 5;
    let mut p = pipeline(&[]);
    p.start().await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let all = events(N, &now);
    runnel_e2e::post_events(&p.agent_url, &all, 40).await;
    p.wait_for_records(N as u64, Duration::from_secs(60)).await;
    let before = log_offsets(&p);
    let segments = std::fs::read_dir(p.dir.path().join("broker/log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segments > 20, "{segments} segments");
    let mut rng = rand::rngs::StdRng::seed_from_u64(runnel_e2e::kill_seed());
    // Kill it three times while it rewrites: once the audit shows k1, k2, k3 segments done
    // (random, rising), then let it finish.
    let mut marks: Vec<usize> = (0..3).map(|_| rng.random_range(1..segments - 1)).collect();
    marks.sort_unstable();
    let values = BTreeMap::from([("user_id".to_string(), user(gone))]);
    let id = p.admin().erase(&values).await.unwrap().id;
    let mut kills = 0;
    for (round, mark) in marks.iter().enumerate() {
        let status = loop {
            let s = p.admin().erasure(id).await.unwrap();
            let done = s.stores[0].rewritten.iter().filter(|r| !r.pending).count();
            if done >= *mark || s.state == "done" {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let done = status.stores[0]
            .rewritten
            .iter()
            .filter(|r| !r.pending)
            .count();
        eprintln!(
            "round {round}: {done} segments rewritten (mark {mark}), state {}",
            status.state
        );
        if status.state == "done" {
            break;
        }
        p.broker.kill9();
        kills += 1;
        p.start_broker().await;
    }
    assert!(
        kills >= 1,
        "the erasure finished before any kill: {marks:?}"
    );
    let done = wait_done(&p, id, Duration::from_secs(60)).await;
    // The audit counts each erased event once, across the kills.
    assert_eq!(
        done.stores[0]
            .rewritten
            .iter()
            .map(|r| r.entries)
            .sum::<u64>() as usize,
        (0..N).filter(|i| i % USERS == gone).count(),
        "{done:#?}"
    );
    assert!(
        done.stores[0]
            .rewritten
            .iter()
            .all(|r| !r.pending && r.bytes_after > 0)
    );
    let want: BTreeMap<String, u64> = before
        .iter()
        .filter(|(id, _)| id[4..10].parse::<usize>().unwrap() % USERS != gone)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        log_offsets(&p),
        want,
        "no other event lost, moved or duplicated"
    );
    let broker_dir = p.dir.path().join("broker");
    assert_eq!(found(&[&broker_dir], &needles(N, gone)), BTreeMap::new());
    let log_dir = broker_dir.join("log");
    let leftovers: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".rewrite"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !log_dir.join("quarantine").exists()
            || std::fs::read_dir(log_dir.join("quarantine"))
                .unwrap()
                .next()
                .is_none(),
        "nothing quarantined"
    );
}
