//! The spool: accepted events on local disk until the broker has acknowledged them.
//!
//! ## Layout
//! `DATA_DIR/spool/` holds a [`runnel_segment`] log (see that crate for the segment format,
//! torn-tail recovery and quarantine) whose records are [`runnel_event::Chunk`]s, one per
//! accepted request, each covering one offset: the spool sequence number. Beside the segments:
//! - `epoch`: a random `u64` made when the spool is created. `(agent_id, epoch, seq)` names a
//!   record uniquely for the broker's idempotent append, even if the directory is wiped and the
//!   sequence restarts.
//! - `cursor`: the first sequence number not yet acknowledged by the broker (8 bytes LE + CRC32C).
//!
//! ## Write path (group commit)
//! HTTP handlers send [`Cmd::Append`] to one writer thread. The thread takes every command
//! waiting, appends them all, runs one `fdatasync` and then answers each request: a request is
//! answered 202 only after the fsync that covers it. A full spool (`spool_bytes_max`) answers
//! [`SpoolError::Full`]; a full disk [`SpoolError::NoSpace`] (the partial write is cut off, later
//! appends may succeed); a failed fsync [`SpoolError::Failed`] for this and every later append
//! until restart (the agent reports not ready).
//!
//! ## Read path and deletion (mark, then delete)
//! The shipper reads durable records with a [`LogReader`]. When the broker acknowledges a batch
//! the cursor is advanced and written atomically (the mark). Segments wholly below the cursor
//! are deleted later by the maintenance task, after the dedup snapshot has been written (so no
//! remembered id is lost with them).
//!
//! ## Recovery
//! Segment recovery as in `runnel_segment`: sealed segments are opened from their index files
//! (`spool_scan_sealed_at_open` scans them all at open instead). Their records are checked by
//! the first read: the agent's dedup rebuild at start, which reads the whole spool, and when it
//! meets a bad record the agent opens the spool again, and that open quarantines the segment.
//! A record that goes bad later fails the shipper's read until the next start. The cursor gives the
//! floor for new sequence numbers so they never go back, and the shipper resumes from it
//! (anything sent but not acknowledged is sent again; the broker drops what it already has).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use runnel_segment::{LogOptions, LogReader, RecoveryReport, SegmentLog, Storage};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Why an append did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// `spool_bytes_max` would be exceeded. Retry after the shipper catches up.
    #[error("spool full: {used} of {max} bytes (spool_bytes_max) in use")]
    Full { used: u64, max: u64 },
    /// The disk is full. Retry later.
    #[error("disk full: {0}")]
    NoSpace(String),
    /// The request is larger than a spool record may be.
    #[error("{0}")]
    TooLarge(String),
    /// The spool failed (fsync or I/O error) and accepts nothing until the agent restarts.
    #[error("spool failed: {0}")]
    Failed(String),
}

enum Cmd {
    Append {
        payload: Vec<u8>,
        ts_ms: i64,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    DeleteBefore {
        offset: u64,
        reply: oneshot::Sender<Result<(usize, u64), String>>,
    },
    /// Seal the active segment if its first record is at least `age_ms` old at `now_ms`.
    SealOlder {
        age_ms: i64,
        now_ms: i64,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}

struct State {
    bytes: AtomicU64,
    acked: AtomicU64,
    failed: Mutex<Option<String>>,
    space_freed: Notify,
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Cmd>,
    reader: LogReader,
    state: Arc<State>,
    durable_end: watch::Receiver<u64>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    epoch: u64,
}

/// Settings of the spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// See `AgentConfig::spool_bytes_max`.
    pub bytes_max: u64,
    /// See `AgentConfig::spool_segment_bytes_max`.
    pub segment_bytes_max: u64,
    /// Largest record (one request's accepted events, encoded).
    pub record_bytes_max: u32,
    /// See `AgentConfig::spool_scan_sealed_at_open`.
    pub scan_sealed_at_open: bool,
}

/// Most commands the writer takes into one group commit.
pub const GROUP_COMMIT_MAX: usize = 4096;
/// Commands waiting for the writer before senders wait.
pub const WRITER_QUEUE_MAX: usize = 8192;

fn read_u64_file(storage: &dyn Storage, path: &Path) -> Option<u64> {
    let b = storage.read_file(path).ok()?;
    if b.len() != 12 {
        return None;
    }
    let crc = u32::from_le_bytes(b[8..].try_into().ok()?);
    (crc32c::crc32c(&b[..8]) == crc).then(|| u64::from_le_bytes(b[..8].try_into().expect("8")))
}

fn u64_file_bytes(v: u64) -> Vec<u8> {
    let mut b = v.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
    b
}

impl Spool {
    /// Opens (recovering) the spool in `dir` and starts its writer thread.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        opts: SpoolOptions,
    ) -> anyhow::Result<(Self, RecoveryReport)> {
        storage.create_dir_all(dir)?;
        let epoch_path = dir.join("epoch");
        let epoch = match read_u64_file(&*storage, &epoch_path) {
            Some(e) => e,
            None => {
                let e = rand::random::<u64>() | 1;
                storage.write_atomic(&epoch_path, &u64_file_bytes(e))?;
                e
            }
        };
        let acked = read_u64_file(&*storage, &dir.join("cursor")).unwrap_or(0);
        let log_opts = LogOptions {
            segment_bytes_max: opts.segment_bytes_max,
            record_bytes_max: opts.record_bytes_max,
            trust_sealed_indexes: !opts.scan_sealed_at_open,
            ..LogOptions::default()
        };
        let (log, report) = SegmentLog::open(storage.clone(), dir, log_opts, acked)?;
        let reader = log.reader();
        let stats = reader.stats();
        let state = Arc::new(State {
            bytes: AtomicU64::new(stats.bytes),
            acked: AtomicU64::new(acked),
            failed: Mutex::new(None),
            space_freed: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let (durable_tx, durable_end) = watch::channel(stats.end_offset);
        let thread_state = state.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer(log, rx, thread_state, durable_tx, opts.bytes_max))?;
        let spool = Self {
            tx,
            reader,
            state,
            durable_end,
            storage,
            dir: dir.to_path_buf(),
            epoch,
        };
        Ok((spool, report))
    }

    /// Appends one encoded chunk; resolves once it is durable, with its sequence number.
    pub async fn append(&self, payload: Vec<u8>, ts_ms: i64) -> Result<u64, SpoolError> {
        if let Some(reason) = self.failure() {
            return Err(SpoolError::Failed(reason));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                payload,
                ts_ms,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Failed("spool writer stopped".into()))?;
        rx.await
            .map_err(|_| SpoolError::Failed("spool writer stopped".into()))?
    }

    /// Waits until space may have been freed, or `timeout` passes.
    pub async fn wait_for_space(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.state.space_freed.notified()).await;
    }

    /// The reason the spool stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state.failed.lock().expect("lock poisoned").clone()
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }

    /// The spool's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A reader of durable records.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Watches one past the last durable sequence number.
    pub fn durable_end(&self) -> watch::Receiver<u64> {
        self.durable_end.clone()
    }

    /// The first sequence number not yet acknowledged by the broker.
    pub fn acked(&self) -> u64 {
        self.state.acked.load(Ordering::SeqCst)
    }

    /// Marks every record below `upto` as acknowledged, durably (the "mark" of mark-then-delete).
    pub fn ack(&self, upto: u64) -> std::io::Result<()> {
        if upto <= self.acked() {
            return Ok(());
        }
        self.storage
            .write_atomic(&self.dir.join("cursor"), &u64_file_bytes(upto))?;
        self.state.acked.store(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Sealed segments that the cursor and `keep_from` allow deleting ([`Spool::delete_acked`]).
    pub fn deletable_segments(&self, keep_from: u64) -> usize {
        self.reader
            .sealed_segments_below(self.acked().min(keep_from))
    }

    /// Deletes segments wholly below the durable cursor and below `keep_from` (records from it on
    /// are still needed, e.g. for ids a dedup snapshot left out); returns (segments, bytes)
    /// removed.
    /// Seals the active segment once its first record is `age_ms` old (records recovered at
    /// start count from the start), so that acknowledged events leave the disk within about
    /// that time even when the segment never fills: only sealed segments are deleted.
    /// Returns whether it sealed one.
    pub async fn seal_older(&self, age_ms: i64) -> Result<bool, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::SealOlder {
                age_ms,
                now_ms: runnel_event::now_ms(),
                reply,
            })
            .await
            .map_err(|_| "spool writer stopped".to_string())?;
        rx.await.map_err(|_| "spool writer stopped".to_string())?
    }

    pub async fn delete_acked(&self, keep_from: u64) -> Result<(usize, u64), String> {
        let (reply, rx) = oneshot::channel();
        let offset = self.acked().min(keep_from);
        self.tx
            .send(Cmd::DeleteBefore { offset, reply })
            .await
            .map_err(|_| "spool writer stopped".to_string())?;
        rx.await.map_err(|_| "spool writer stopped".to_string())?
    }
}

fn writer(
    mut log: SegmentLog,
    mut rx: mpsc::Receiver<Cmd>,
    state: Arc<State>,
    durable_tx: watch::Sender<u64>,
    bytes_max: u64,
) {
    let mut cmds = Vec::with_capacity(GROUP_COMMIT_MAX);
    // Records recovered at open are as old as the open, for `SealOlder`.
    let opened_ms = runnel_event::now_ms();
    while let Some(first) = rx.blocking_recv() {
        cmds.push(first);
        while cmds.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        let mut appended = Vec::new();
        let mut group_bytes = 0u64;
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Append {
                    payload,
                    ts_ms,
                    reply,
                } => {
                    let size = (payload.len() + runnel_segment::RECORD_HEADER_BYTES) as u64;
                    let used = state.bytes.load(Ordering::Relaxed) + group_bytes;
                    if used + size > bytes_max {
                        let _ = reply.send(Err(SpoolError::Full {
                            used,
                            max: bytes_max,
                        }));
                        continue;
                    }
                    match log.append(&payload, 1, ts_ms) {
                        Ok(seq) => {
                            group_bytes += size;
                            appended.push((reply, seq));
                        }
                        Err(e) => {
                            let err = match &e {
                                e if e.is_no_space() => SpoolError::NoSpace(e.to_string()),
                                runnel_segment::LogError::RecordTooLarge { .. } => {
                                    SpoolError::TooLarge(e.to_string())
                                }
                                _ => {
                                    if e.is_poisoned() {
                                        *state.failed.lock().expect("lock poisoned") =
                                            Some(e.to_string());
                                    }
                                    SpoolError::Failed(e.to_string())
                                }
                            };
                            let _ = reply.send(Err(err));
                        }
                    }
                }
                Cmd::DeleteBefore { offset, reply } => {
                    let result = log.delete_before(offset).map_err(|e| e.to_string());
                    if let Ok((_, bytes)) = result {
                        state.bytes.fetch_sub(
                            bytes.min(state.bytes.load(Ordering::Relaxed)),
                            Ordering::Relaxed,
                        );
                        state.space_freed.notify_waiters();
                    }
                    let _ = reply.send(result);
                }
                Cmd::SealOlder {
                    age_ms,
                    now_ms,
                    reply,
                } => {
                    let (held, first) = log.active_since();
                    let old = held && now_ms.saturating_sub(first.unwrap_or(opened_ms)) >= age_ms;
                    let result = if old {
                        log.seal().map_err(|e| e.to_string())
                    } else {
                        Ok(false)
                    };
                    let _ = reply.send(result);
                }
            }
        }
        if appended.is_empty() {
            continue;
        }
        let started = Instant::now();
        match log.sync() {
            Ok(end) => {
                metrics::histogram!("runnel_agent_spool_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                state
                    .bytes
                    .store(log.reader().stats().bytes, Ordering::Relaxed);
                let _ = durable_tx.send(end);
                for (reply, seq) in appended {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool fsync failed; the agent stops accepting events");
                *state.failed.lock().expect("lock poisoned") = Some(e.to_string());
                // Records an earlier fsync in this group covered (a segment roll syncs) are
                // durable and visible to the shipper: they are accepted, not refused.
                let durable = log.reader().end_offset();
                let _ = durable_tx.send(durable);
                for (reply, seq) in appended {
                    let _ = reply.send(if seq < durable {
                        Ok(seq)
                    } else {
                        Err(SpoolError::Failed(e.to_string()))
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_segment::FsStorage;

    fn opts(scan_sealed_at_open: bool) -> SpoolOptions {
        SpoolOptions {
            bytes_max: 64 << 20,
            segment_bytes_max: 64 << 10,
            record_bytes_max: 16 << 10,
            scan_sealed_at_open,
        }
    }

    /// By default a start trusts the sealed segments' index files: a bad sealed record is found
    /// by the read that meets it, which says a restart checks it, and that restart moves the
    /// segment to quarantine. With `spool_scan_sealed_at_open` the start itself finds it.
    #[tokio::test]
    async fn a_bad_sealed_record_is_found_by_its_read_then_quarantined_at_the_next_start() {
        for scan in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let storage: Arc<dyn Storage> = Arc::new(FsStorage);
            {
                let (spool, _) = Spool::open(storage.clone(), dir.path(), opts(scan)).unwrap();
                for i in 0..40 {
                    spool.append(vec![i as u8; 8 << 10], i).await.unwrap();
                }
            }
            let mut segs: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect();
            segs.sort();
            assert!(segs.len() >= 3, "{segs:?}");
            let mut bytes = std::fs::read(&segs[1]).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0xFF;
            std::fs::write(&segs[1], &bytes).unwrap();

            let (spool, report) = Spool::open(storage.clone(), dir.path(), opts(scan)).unwrap();
            if scan {
                assert_eq!(report.quarantined_segments.len(), 1, "{report:?}");
                continue;
            }
            assert!(report.quarantined_segments.is_empty(), "{report:?}");
            assert!(report.indexed_segments >= 2, "{report:?}");
            let err = spool
                .reader()
                .read(0, usize::MAX, usize::MAX)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a restart checks it"), "{err}");
            drop(spool);
            let (spool, report) = Spool::open(storage.clone(), dir.path(), opts(scan)).unwrap();
            assert_eq!(report.quarantined_segments.len(), 1, "{report:?}");
            let left = spool.reader().read(0, usize::MAX, usize::MAX).unwrap();
            assert!(
                !left.is_empty() && left.len() < 40,
                "{} records left",
                left.len()
            );
        }
    }

    /// Only segments wholly below both the cursor and `keep_from` are deleted; the records from
    /// the lower of the two on stay readable.
    #[tokio::test]
    async fn delete_acked_keeps_segments_from_the_cursor_or_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(Arc::new(FsStorage), dir.path(), opts(false)).unwrap();
        for i in 0..40 {
            spool.append(vec![i as u8; 8 << 10], i).await.unwrap();
        }
        let first_seq = |spool: &Spool| {
            spool.reader().read(0, 1, usize::MAX).unwrap()[0]
                .header
                .base_offset
        };
        assert_eq!(
            spool.deletable_segments(u64::MAX),
            0,
            "nothing acknowledged"
        );
        assert_eq!(spool.delete_acked(u64::MAX).await.unwrap().0, 0);
        spool.ack(30).unwrap();
        // A floor at 12 (a request in flight when the dedup snapshot was taken) keeps record 12.
        let below_floor = spool.deletable_segments(12);
        assert!(below_floor >= 1, "a segment is wholly below 12");
        assert!(below_floor < spool.deletable_segments(u64::MAX));
        let (deleted, bytes) = spool.delete_acked(12).await.unwrap();
        assert_eq!(deleted, below_floor);
        assert!(bytes > 0);
        let first = first_seq(&spool);
        assert!(first > 0 && first <= 12, "first kept record {first}");
        assert_eq!(spool.deletable_segments(12), 0);
        // Without a floor the cursor decides: record 30 and what follows stay.
        spool.delete_acked(u64::MAX).await.unwrap();
        let first = first_seq(&spool);
        assert!(first > 12 && first <= 30, "first kept record {first}");
        let left = spool.reader().read(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(left.last().unwrap().header.base_offset, 39);
        assert_eq!(left.len() as u64, 40 - first);
    }
}
