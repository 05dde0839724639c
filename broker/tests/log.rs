//! The broker log: idempotent append across restarts, partial overlaps, and fsync failure
//! injected through the storage seam.

use std::path::Path;
use std::sync::Arc;

use runnel_broker::log::{BrokerLog, LogSettings, check_batch};
use runnel_event::{AckStatus, Batch, BatchAck, Chunk, Event};
use runnel_segment::fault::{Faults, FaultyStorage};
use runnel_segment::{FsStorage, Storage};

const MAX: usize = 1 << 20;

fn ev(id: &str) -> Event {
    Event {
        event_id: id.into(),
        event_type: "order.placed".into(),
        timestamp_ms: 1,
        received_at_ms: 2,
        schema_version: 1,
        user_id: None,
        session_id: None,
        device_id: None,
        platform: None,
        app_version: None,
        properties: None,
    }
}

/// A batch of spool records `first..first+n`, record `s` holding event `e-s`.
fn batch(epoch: u64, first: u64, n: u64) -> Vec<u8> {
    Batch {
        agent_id: "agent-1".into(),
        host: "h".into(),
        epoch,
        first_seq: first,
        chunks: (first..first + n)
            .map(|s| {
                Chunk {
                    events: vec![ev(&format!("e-{s}"))],
                }
                .encode()
            })
            .collect(),
    }
    .encode_frame()
}

async fn send(log: &BrokerLog, frame: Vec<u8>) -> BatchAck {
    log.append(check_batch(frame, MAX).expect("valid batch"))
        .await
}

/// Small segments; checkpoints every `checkpoint_interval_bytes`.
fn settings(checkpoint_interval_bytes: u64) -> LogSettings {
    LogSettings {
        segment_bytes_max: 1 << 20,
        batch_bytes_max: MAX,
        checkpoint_interval_bytes,
        scan_sealed_at_open: false,
    }
}

fn open(dir: &Path, storage: Arc<dyn Storage>) -> BrokerLog {
    BrokerLog::open(storage, &dir.join("log"), &settings(u64::MAX))
        .unwrap()
        .0
}

fn open_checkpointing(dir: &Path, interval_bytes: u64) -> BrokerLog {
    BrokerLog::open(
        Arc::new(FsStorage),
        &dir.join("log"),
        &settings(interval_bytes),
    )
    .unwrap()
    .0
}

fn ids(log: &BrokerLog) -> Vec<String> {
    let mut out = Vec::new();
    log.read_events(0, usize::MAX, |e| out.push(e.event_id().to_string()))
        .unwrap();
    out
}

#[tokio::test]
async fn resends_are_appended_once_across_restarts_and_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Arc::new(FsStorage));
    let a = send(&log, batch(7, 0, 3)).await;
    assert_eq!(
        (a.status, a.base_offset, a.appended_events),
        (AckStatus::Appended, 0, 3)
    );
    assert_eq!(
        send(&log, batch(7, 0, 3)).await.status,
        AckStatus::Duplicate
    );
    drop(log);

    let log = open(dir.path(), Arc::new(FsStorage));
    // Known after the restart: the producer table is rebuilt from the log.
    let d = send(&log, batch(7, 0, 3)).await;
    assert_eq!((d.status, d.duplicate_chunks), (AckStatus::Duplicate, 3));
    // A resend that overlaps: only the new records are appended.
    let o = send(&log, batch(7, 1, 4)).await;
    assert_eq!(
        (o.status, o.appended_events, o.duplicate_chunks),
        (AckStatus::Appended, 2, 2)
    );
    // Another epoch is another spool: same sequence numbers, new records.
    assert_eq!(send(&log, batch(8, 0, 1)).await.status, AckStatus::Appended);
    assert_eq!(ids(&log), vec!["e-0", "e-1", "e-2", "e-3", "e-4", "e-0"]);
    let stats = log.stats();
    assert_eq!((stats.records, stats.producers), (6, 2));
    assert_eq!(stats.by_event_type["order.placed"], 6);
}

#[tokio::test]
async fn failed_fsync_acknowledges_nothing_not_even_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open(
        dir.path(),
        Arc::new(FaultyStorage::new(FsStorage, faults.clone())),
    );
    assert_eq!(send(&log, batch(1, 0, 2)).await.status, AckStatus::Appended);
    faults.set_fail_sync(true);
    let failed = send(&log, batch(1, 2, 2)).await;
    assert_eq!(failed.status, AckStatus::Unavailable, "{failed:?}");
    faults.set_fail_sync(false);
    // The resend must not be taken for a durable duplicate: the log is poisoned.
    assert_eq!(
        send(&log, batch(1, 2, 2)).await.status,
        AckStatus::Unavailable
    );
    assert_eq!(
        send(&log, batch(1, 0, 2)).await.status,
        AckStatus::Unavailable
    );
    assert!(log.failure().is_some());
    drop(log);

    // After a restart the resend lands exactly once, whether or not the unsynced bytes survived.
    let log = open(dir.path(), Arc::new(FsStorage));
    let again = send(&log, batch(1, 2, 2)).await;
    assert!(
        matches!(again.status, AckStatus::Appended | AckStatus::Duplicate),
        "{again:?}"
    );
    assert_eq!(ids(&log), vec!["e-0", "e-1", "e-2", "e-3"]);
}

#[tokio::test]
async fn restart_scans_only_what_follows_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let one_batch = batch(3, 0, 2).len() as u64;
    // A checkpoint after every three batches or so.
    let log = open_checkpointing(dir.path(), 3 * one_batch);
    for i in 0..10u64 {
        assert_eq!(
            send(&log, batch(3, i * 2, 2)).await.status,
            AckStatus::Appended
        );
    }
    let before = log.stats();
    drop(log);
    let log = open_checkpointing(dir.path(), 3 * one_batch);
    assert!(
        log.scanned_at_open() < 4,
        "scanned {} records",
        log.scanned_at_open()
    );
    let after = log.stats();
    assert_eq!(
        (after.records, after.producers),
        (before.records, before.producers)
    );
    assert_eq!(after.by_event_type, before.by_event_type);
    // The producer table came back too: resends are still duplicates, new records append.
    assert_eq!(
        send(&log, batch(3, 0, 20)).await.status,
        AckStatus::Duplicate
    );
    assert_eq!(send(&log, batch(3, 20, 1)).await.appended_events, 1);
    drop(log);
    // A damaged checkpoint falls back to the full scan, with the same result.
    let ckpt = dir.path().join("log/state.checkpoint");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&ckpt, bytes).unwrap();
    let log = open_checkpointing(dir.path(), u64::MAX);
    assert_eq!(log.scanned_at_open(), 11);
    assert_eq!(log.stats().records, 21);
    assert_eq!(
        send(&log, batch(3, 0, 21)).await.status,
        AckStatus::Duplicate
    );
}

#[tokio::test]
async fn a_smaller_batch_limit_after_a_restart_still_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Arc::new(FsStorage));
    assert_eq!(
        send(&log, batch(5, 0, 200)).await.status,
        AckStatus::Appended
    );
    drop(log);
    let small = BrokerLog::open(
        Arc::new(FsStorage),
        &dir.path().join("log"),
        &LogSettings {
            batch_bytes_max: 2048,
            ..settings(u64::MAX)
        },
    )
    .unwrap()
    .0;
    assert_eq!(small.stats().records, 200);
    assert_eq!(ids(&small).len(), 200);
    // And the producer table still knows the batch.
    let resend = check_batch(batch(5, 0, 1), MAX).unwrap();
    assert_eq!(small.append(resend).await.status, AckStatus::Duplicate);
}

#[test]
fn malformed_batches_are_refused_with_a_reason() {
    assert!(
        check_batch(b"garbage".to_vec(), MAX)
            .unwrap_err()
            .contains("truncated")
    );
    let mut frame = batch(1, 0, 1);
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    assert!(check_batch(frame, MAX).unwrap_err().contains("crc32c"));
    let empty = Batch {
        agent_id: "a".into(),
        host: "h".into(),
        epoch: 1,
        first_seq: 0,
        chunks: vec![Chunk { events: vec![] }.encode()],
    };
    assert!(
        check_batch(empty.encode_frame(), MAX)
            .unwrap_err()
            .contains("no events")
    );
    let overflow = Batch {
        agent_id: "a".into(),
        host: "h".into(),
        epoch: 1,
        first_seq: u64::MAX,
        chunks: vec![
            Chunk {
                events: vec![ev("x")],
            }
            .encode(),
        ],
    };
    assert!(
        check_batch(overflow.encode_frame(), MAX)
            .unwrap_err()
            .contains("overflows")
    );
    let big = batch(1, 0, 2000);
    assert!(
        check_batch(big, 1024)
            .unwrap_err()
            .contains("batch_bytes_max")
    );
}

#[tokio::test]
async fn close_answers_what_is_queued_then_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Arc::new(FsStorage));
    let clone = log.clone();
    // Both appends are queued before the stop (join! polls in order); both are answered.
    let (a, b, ()) = tokio::join!(
        send(&log, batch(1, 0, 2)),
        send(&log, batch(1, 2, 1)),
        log.close()
    );
    assert_eq!(
        (a.status, b.status),
        (AckStatus::Appended, AckStatus::Appended)
    );
    // After the close, an append through any clone is refused, not lost silently.
    let late = send(&clone, batch(1, 3, 1)).await;
    assert_eq!(
        (late.status, late.message.as_str()),
        (AckStatus::Unavailable, "log writer stopped")
    );
    // A second close is a no-op; reads still work.
    log.close().await;
    assert_eq!(ids(&clone), vec!["e-0", "e-1", "e-2"]);
    drop((log, clone));
    let log = open(dir.path(), Arc::new(FsStorage));
    assert_eq!(ids(&log), vec!["e-0", "e-1", "e-2"]);
    assert_eq!(send(&log, batch(1, 3, 1)).await.status, AckStatus::Appended);
}

/// As a `runnel/2` agent sends it: with where its previous batch ended.
async fn send_after(log: &BrokerLog, frame: Vec<u8>, prev_end: u64) -> BatchAck {
    let batch = check_batch(frame, MAX)
        .expect("valid batch")
        .with_prev_end(prev_end)
        .expect("prev_end within the batch");
    log.append(batch).await
}

/// Several batches of one agent in flight: when one fails to append (a torn write), the ones
/// behind it are not appended before it comes again, so none of its chunks can later pass for
/// a duplicate; nor is a stale copy from an abandoned stream that arrives after it.
#[tokio::test]
async fn batches_behind_a_failed_append_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let log = open(
        dir.path(),
        Arc::new(FaultyStorage::new(FsStorage, faults.clone())),
    );
    assert_eq!(
        send_after(&log, batch(1, 0, 2), 0).await.status,
        AckStatus::Appended
    );
    // The write of the first fails half-way (and is undone); the one behind it would succeed.
    let (big, small, later) = (batch(1, 2, 50), batch(1, 52, 1), batch(1, 53, 1));
    faults.tear_next_write();
    let (a, b) = tokio::join!(
        send_after(&log, big.clone(), 2),
        send_after(&log, small.clone(), 52)
    );
    assert_eq!(faults.injected(), 1);
    assert_eq!(a.status, AckStatus::Unavailable, "{a:?}");
    assert_eq!(b.status, AckStatus::Unavailable, "{b:?}");
    assert!(b.message.contains("send again from seq 2"), "{b:?}");
    assert!(
        log.failure().is_none(),
        "a failed write is undone, not fatal"
    );
    // Sent again in order: both land, nothing doubled, nothing skipped.
    let (a, b) = tokio::join!(
        send_after(&log, big, 2),
        send_after(&log, small.clone(), 52)
    );
    assert_eq!((a.status, a.appended_events), (AckStatus::Appended, 50));
    assert_eq!((b.status, b.appended_events), (AckStatus::Appended, 1));
    let want: Vec<String> = (0..53).map(|s| format!("e-{s}")).collect();
    assert_eq!(ids(&log), want);
    drop(log);
    let log = open(dir.path(), Arc::new(FsStorage));
    assert_eq!(ids(&log), want);
    // A batch that follows one the log does not have is held however late it comes (a stale
    // frame of an abandoned stream, say)...
    let far = send_after(&log, batch(1, 60, 1), 60).await;
    assert_eq!(far.status, AckStatus::Unavailable, "{far:?}");
    // ... unless the agent declares the records between gone (kept aside, quarantined).
    let declared = send_after(&log, batch(1, 60, 1), 53).await;
    assert_eq!(declared.status, AckStatus::Appended, "{declared:?}");
    // The records it declared gone are not taken for duplicates if they come after all: they
    // are below the expected number now, so the agent has said it no longer sends them.
    assert_eq!(send(&log, later).await.status, AckStatus::Duplicate);
    // A prev_end past the batch's start is refused.
    let bad = check_batch(batch(1, 61, 1), MAX)
        .unwrap()
        .with_prev_end(62)
        .unwrap_err();
    assert!(bad.contains("prev_end 62 is past"), "{bad}");
}
