//! The broker log: every accepted batch, appended once, durable before it is acknowledged.
//!
//! ## Layout
//! `DATA_DIR/log/` is a [`runnel_segment`] log (segment format, CRC32C per record, sparse
//! offset and time index, torn-tail recovery and quarantine are described there). Each record's
//! payload is a wire frame exactly as an agent sent it ([`runnel_event::wire`]): a [`Batch`] of
//! chunks from one agent spool, `(agent_id, epoch, first_seq)`. A record covers one offset per
//! event, so every event has its own log offset; the record timestamp is the broker's append
//! time (milliseconds), which the time index uses.
//!
//! ## Write path
//! QUIC tasks check a batch (frame CRC, size limits, rkyv validation of the batch and every
//! chunk) in parallel and hand it to the single writer thread. The writer takes every batch
//! waiting, decides for each which chunks are new — the producer table maps `(agent_id, epoch)`
//! to the next expected spool sequence number, and chunks below it are duplicates — appends the
//! new ones, runs one `fdatasync` for the whole group, then answers each batch. A batch that is
//! partly a duplicate is re-framed with just its new chunks. The producer table is updated only
//! for appends that succeed.
//!
//! ## Read path
//! [`BrokerLog::read_events`] walks records from an offset with the log's sparse index and
//! expands them to events with their offsets.
//!
//! ## Checkpoint
//! `DATA_DIR/log/state.checkpoint` holds the producer table and the counts as of a log offset:
//! magic `RNLCKPT1`, CRC32C (u32 LE) of the rest, then JSON `{end_offset, producers, counts}`.
//! The writer replaces it atomically after a successful fsync whenever
//! `checkpoint_interval_bytes` have been appended since the last one, so it only ever describes
//! durable records.
//!
//! ## Recovery
//! After segment recovery the checkpoint is loaded (if it is readable and its offset lies within
//! the log) and the records from its offset on are scanned: each batch header advances the
//! producer table, so a batch appended before a crash is recognised when its agent sends it
//! again, and its events advance the per-type counts of `runnel log stats`. Without a usable
//! checkpoint the whole log is scanned. Start-up work is thus bounded by
//! `checkpoint_interval_bytes`, not by the size of the log.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use runnel_event::envelope::{EventView, rfc3339_ms};
use runnel_event::wire::{ArchivedBatch, access_batch, aligned, decode_frame};
use runnel_event::{AckStatus, Batch, BatchAck, Chunk};
use runnel_segment::{LogError, LogOptions, LogReader, RecoveryReport, SegmentLog, Storage};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// A batch that passed every check, ready for the writer.
#[derive(Debug)]
pub struct CheckedBatch {
    /// Sending agent.
    pub agent_id: String,
    /// Its spool epoch.
    pub epoch: u64,
    /// Spool sequence number of the first chunk.
    pub first_seq: u64,
    /// The frame as received.
    pub frame: Vec<u8>,
    /// Events in each chunk.
    pub chunk_events: Vec<u32>,
    /// Events per type in each chunk.
    pub chunk_types: Vec<Vec<(String, u64)>>,
}

/// Most bytes of an `agent_id`.
pub const AGENT_ID_BYTES_MAX: usize = 256;

/// Checks a received frame. The error says what is wrong; the agent will not fix it by resending.
pub fn check_batch(frame: Vec<u8>, max: usize) -> Result<CheckedBatch, String> {
    let body = decode_frame(&frame, max).map_err(|e| e.to_string())?;
    let (batch, chunk_events) = access_batch(&body).map_err(|e| e.to_string())?;
    if batch.agent_id.is_empty() || batch.agent_id.len() > AGENT_ID_BYTES_MAX {
        return Err(format!("agent_id must be 1 to {AGENT_ID_BYTES_MAX} bytes"));
    }
    if batch.chunks.is_empty() {
        return Err("batch holds no chunks".into());
    }
    if batch
        .first_seq
        .to_native()
        .checked_add(batch.chunks.len() as u64)
        .is_none()
    {
        return Err(format!(
            "first_seq {} overflows with {} chunks",
            batch.first_seq,
            batch.chunks.len()
        ));
    }
    if let Some(i) = chunk_events.iter().position(|n| *n == 0) {
        return Err(format!("chunk {i} holds no events"));
    }
    let total: u64 = chunk_events.iter().map(|n| u64::from(*n)).sum();
    if total > u64::from(u32::MAX) {
        return Err(format!(
            "batch holds {total} events, more than {}",
            u32::MAX
        ));
    }
    let chunk_types = batch
        .chunks
        .iter()
        .map(|c| {
            let a = aligned(c.as_slice());
            let chunk = Chunk::access(&a).expect("validated by access_batch");
            let mut types: HashMap<&str, u64> = HashMap::new();
            for ev in chunk.events.iter() {
                *types.entry(ev.event_type.as_str()).or_default() += 1;
            }
            types.into_iter().map(|(t, n)| (t.to_string(), n)).collect()
        })
        .collect();
    Ok(CheckedBatch {
        agent_id: batch.agent_id.to_string(),
        epoch: batch.epoch.to_native(),
        first_seq: batch.first_seq.to_native(),
        chunk_events,
        chunk_types,
        frame,
    })
}

/// Figures of `runnel log stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Events in the log.
    pub records: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// First offset.
    pub start_offset: u64,
    /// One past the last offset.
    pub end_offset: u64,
    /// Events per `event_type`.
    pub by_event_type: BTreeMap<String, u64>,
    /// Agent spools the log has batches from.
    pub producers: usize,
}

#[derive(Default, Clone, Serialize, serde::Deserialize)]
struct Counts {
    events: u64,
    by_type: BTreeMap<String, u64>,
    producers: usize,
}

struct Append {
    batch: CheckedBatch,
    reply: oneshot::Sender<BatchAck>,
}

/// Handle to the broker log; cheap to clone.
#[derive(Clone)]
pub struct BrokerLog {
    tx: mpsc::Sender<Append>,
    reader: LogReader,
    counts: Arc<Mutex<Counts>>,
    failed: Arc<Mutex<Option<String>>>,
    scanned_at_open: u64,
}

type Producers = HashMap<(String, u64), u64>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Batches waiting for the writer before QUIC tasks wait.
pub const WRITER_QUEUE_MAX: usize = 4096;
/// Most batches in one group commit.
pub const GROUP_COMMIT_MAX: usize = 1024;

impl BrokerLog {
    /// Opens (recovering) the log in `dir` and starts its writer thread.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        segment_bytes_max: u64,
        batch_bytes_max: usize,
        checkpoint_interval_bytes: u64,
    ) -> anyhow::Result<(Self, RecoveryReport)> {
        let opts = LogOptions {
            segment_bytes_max,
            record_bytes_max: u32::try_from(batch_bytes_max + 64).unwrap_or(u32::MAX),
            ..LogOptions::default()
        };
        let (log, report) = SegmentLog::open(storage.clone(), dir, opts, 0)?;
        let reader = log.reader();
        let started = Instant::now();
        let checkpoint_path = dir.join("state.checkpoint");
        let stats = reader.stats();
        let state = match storage.read_file(&checkpoint_path) {
            Ok(bytes) => match Checkpoint::decode(&bytes) {
                Ok(c) if c.end_offset <= stats.end_offset => Some(c),
                Ok(c) => {
                    tracing::warn!(
                        checkpoint = c.end_offset,
                        log_end = stats.end_offset,
                        "checkpoint is past the end of the log; scanning the whole log"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint unreadable; scanning the whole log");
                    None
                }
            },
            Err(_) => None,
        };
        let (from, mut producers, mut counts) = match state {
            Some(c) => (
                c.end_offset,
                c.producers
                    .into_iter()
                    .map(|(a, e, n)| ((a, e), n))
                    .collect(),
                c.counts,
            ),
            None => (0, Producers::new(), Counts::default()),
        };
        let scanned = scan(&reader, from, &mut producers, &mut counts)?;
        tracing::info!(
            events = counts.events,
            producers = producers.len(),
            from_offset = from,
            scanned_records = scanned,
            ms = started.elapsed().as_millis() as u64,
            "log state recovered"
        );
        metrics::gauge!("runnel_broker_recovery_scanned_records").set(scanned as f64);
        let checkpointer = Checkpointer {
            storage,
            path: checkpoint_path,
            interval_bytes: checkpoint_interval_bytes,
            since_bytes: 0,
        };
        let counts = Arc::new(Mutex::new(counts));
        let failed = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MAX);
        let (c, f) = (counts.clone(), failed.clone());
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer(log, producers, rx, c, f, checkpointer))?;
        Ok((
            Self {
                tx,
                reader,
                counts,
                failed,
                scanned_at_open: scanned,
            },
            report,
        ))
    }

    /// Appends a checked batch (the new chunks of it) and resolves after the fsync.
    pub async fn append(&self, batch: CheckedBatch) -> BatchAck {
        let (reply, rx) = oneshot::channel();
        let unavailable = |m: &str| BatchAck {
            status: AckStatus::Unavailable,
            base_offset: 0,
            appended_events: 0,
            duplicate_chunks: 0,
            message: m.to_string(),
        };
        if self.tx.send(Append { batch, reply }).await.is_err() {
            return unavailable("log writer stopped");
        }
        rx.await
            .unwrap_or_else(|_| unavailable("log writer stopped"))
    }

    /// Records scanned at open to recover the producer table and counts (those after the
    /// checkpoint).
    pub fn scanned_at_open(&self) -> u64 {
        self.scanned_at_open
    }

    /// Why the log stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("lock poisoned").clone()
    }

    /// The figures of `runnel log stats`.
    pub fn stats(&self) -> Stats {
        let s = self.reader.stats();
        let c = self.counts.lock().expect("lock poisoned");
        Stats {
            records: c.events,
            segments: s.segments,
            bytes: s.bytes,
            start_offset: s.start_offset,
            end_offset: s.end_offset,
            by_event_type: c.by_type.clone(),
            producers: c.producers,
        }
    }

    /// Calls `f` for up to `limit` events from offset `from`, in offset order.
    pub fn read_events(
        &self,
        from: u64,
        limit: usize,
        mut f: impl FnMut(EventView<'_>),
    ) -> Result<usize, LogError> {
        let mut done = 0;
        let mut next = from;
        while done < limit {
            let records = self.reader.read(next, 64, 8 << 20)?;
            if records.is_empty() {
                break;
            }
            for rec in &records {
                next = rec.header.base_offset + u64::from(rec.header.count);
                let Some(body) = stored_frame(rec) else {
                    continue;
                };
                let Ok((batch, _)) = access_batch(&body) else {
                    continue;
                };
                let mut offset = rec.header.base_offset;
                for chunk in batch.chunks.iter() {
                    let a = aligned(chunk.as_slice());
                    let Ok(c) = Chunk::access(&a) else { continue };
                    for ev in c.events.iter() {
                        if offset >= from && done < limit {
                            let props = ev.properties.as_ref().and_then(|p| {
                                serde_json::from_str::<&serde_json::value::RawValue>(p.as_str())
                                    .ok()
                            });
                            f(EventView {
                                offset,
                                event_id: &ev.event_id,
                                event_type: &ev.event_type,
                                timestamp: rfc3339_ms(ev.timestamp_ms.to_native()),
                                received_at: rfc3339_ms(ev.received_at_ms.to_native()),
                                agent_id: &batch.agent_id,
                                host: &batch.host,
                                schema_version: ev.schema_version.to_native(),
                                user_id: ev.user_id.as_ref().map(|s| s.as_str()),
                                session_id: ev.session_id.as_ref().map(|s| s.as_str()),
                                device_id: ev.device_id.as_ref().map(|s| s.as_str()),
                                platform: ev.platform.as_ref().map(|s| s.as_str()),
                                app_version: ev.app_version.as_ref().map(|s| s.as_str()),
                                properties: props,
                            });
                            done += 1;
                        }
                        offset += 1;
                    }
                }
            }
        }
        Ok(done)
    }
}

/// A run of events read for the pipeline, in the plugin batch encoding.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// The events ([`runnel_batch`] encoding).
    pub batch: Vec<u8>,
    /// Log offset of each event.
    pub offsets: Vec<u64>,
    /// For each event, its index in `origins`.
    pub origin: Vec<u32>,
    /// `(agent_id, host)` of the batches the events came in.
    pub origins: Vec<(String, String)>,
    /// For each of `origins`, when the broker appended that batch (its record's time, ms).
    pub appended_ms: Vec<i64>,
    /// The first offset after the events read.
    pub next: u64,
}

impl BrokerLog {
    /// One past the last durable offset: the pipeline reads no further.
    pub fn durable_end(&self) -> u64 {
        self.reader.end_offset()
    }

    /// Reads up to `max_events` durable events from offset `from` for the pipeline, stopping
    /// early once their fields exceed `max_bytes` (at least one event is read).
    pub fn read_batch(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<SourceBatch, LogError> {
        let mut out = SourceBatch {
            next: from,
            ..SourceBatch::default()
        };
        let mut w = runnel_batch::BatchWriter::with_capacity(max_events.min(4096), 256);
        let mut bytes = 0usize;
        'records: while out.offsets.len() < max_events {
            let records = self.reader.read(out.next, 16, 8 << 20)?;
            if records.is_empty() {
                break;
            }
            for rec in &records {
                let base = rec.header.base_offset;
                let rec_end = base + u64::from(rec.header.count);
                let body = stored_frame(rec).filter(|b| access_batch(b).is_ok());
                let Some(body) = body else {
                    // Unreadable records were reported by `stored_frame`; skip their offsets.
                    out.next = out.next.max(rec_end);
                    continue;
                };
                let (batch, _) = access_batch(&body).expect("checked above");
                let mut origin = None;
                let mut offset = base;
                for chunk in batch.chunks.iter() {
                    let a = aligned(chunk.as_slice());
                    let Ok(c) = Chunk::access(&a) else {
                        continue;
                    };
                    for ev in c.events.iter() {
                        if offset >= out.next {
                            if out.offsets.len() >= max_events
                                || (!out.offsets.is_empty() && bytes >= max_bytes)
                            {
                                break 'records;
                            }
                            bytes += ev.event_id.len()
                                + ev.event_type.len()
                                + ev.properties.as_ref().map_or(0, |p| p.len())
                                + 128;
                            let o = *origin.get_or_insert_with(|| {
                                out.origins
                                    .push((batch.agent_id.to_string(), batch.host.to_string()));
                                out.appended_ms.push(rec.header.ts_ms);
                                (out.origins.len() - 1) as u32
                            });
                            w.push(
                                ev.timestamp_ms.to_native(),
                                ev.received_at_ms.to_native(),
                                ev.schema_version.to_native(),
                                [
                                    Some(ev.event_id.as_str()),
                                    Some(ev.event_type.as_str()),
                                    ev.user_id.as_ref().map(|s| s.as_str()),
                                    ev.session_id.as_ref().map(|s| s.as_str()),
                                    ev.device_id.as_ref().map(|s| s.as_str()),
                                    ev.platform.as_ref().map(|s| s.as_str()),
                                    ev.app_version.as_ref().map(|s| s.as_str()),
                                    ev.properties.as_ref().map(|s| s.as_str()),
                                ],
                            );
                            out.offsets.push(offset);
                            out.origin.push(o);
                            out.next = offset + 1;
                        }
                        offset += 1;
                    }
                }
                out.next = out.next.max(rec_end);
            }
        }
        out.batch = w.finish();
        Ok(out)
    }
}

/// Decodes a frame stored in the log. It was checked against `batch_bytes_max` when it was
/// appended and the segment's CRC covers it, so it is read whatever the limit is now.
fn stored_frame(rec: &runnel_segment::StoredRecord) -> Option<runnel_event::wire::AlignedVec<16>> {
    match decode_frame(&rec.payload, u32::MAX as usize) {
        Ok(body) => Some(body),
        Err(e) => {
            tracing::error!(offset = rec.header.base_offset, error = %e, "unreadable batch in the log");
            None
        }
    }
}

/// What the checkpoint file holds.
#[derive(Serialize, serde::Deserialize)]
struct Checkpoint {
    end_offset: u64,
    producers: Vec<(String, u64, u64)>,
    counts: Counts,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"RNLCKPT1";

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("serializing to memory");
        let mut out = Vec::with_capacity(json.len() + 12);
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 12 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err("not a checkpoint".into());
        }
        let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[12..]) != crc {
            return Err("checkpoint checksum mismatch".into());
        }
        serde_json::from_slice(&bytes[12..]).map_err(|e| e.to_string())
    }
}

/// Writes the checkpoint every `interval_bytes` of appended records.
struct Checkpointer {
    storage: Arc<dyn Storage>,
    path: std::path::PathBuf,
    interval_bytes: u64,
    since_bytes: u64,
}

impl Checkpointer {
    /// Called after a successful fsync that made everything below `end_offset` durable.
    fn after_sync(
        &mut self,
        appended_bytes: u64,
        end_offset: u64,
        producers: &Producers,
        counts: &Counts,
    ) {
        self.since_bytes += appended_bytes;
        if self.since_bytes < self.interval_bytes {
            return;
        }
        self.since_bytes = 0;
        let c = Checkpoint {
            end_offset,
            producers: producers
                .iter()
                .map(|((a, e), n)| (a.clone(), *e, *n))
                .collect(),
            counts: counts.clone(),
        };
        match self.storage.write_atomic(&self.path, &c.encode()) {
            Ok(()) => metrics::counter!("runnel_broker_checkpoints_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "writing the log checkpoint failed; the next start scans more")
            }
        }
    }
}

/// Advances the producer table and counts over the records from offset `from` on; returns how
/// many records were scanned.
fn scan(
    reader: &LogReader,
    from: u64,
    producers: &mut Producers,
    counts: &mut Counts,
) -> anyhow::Result<u64> {
    let mut scanned = 0u64;
    let mut next = from;
    loop {
        let records = reader.read(next, 256, 32 << 20)?;
        if records.is_empty() {
            break;
        }
        for rec in &records {
            next = rec.header.base_offset + u64::from(rec.header.count);
            scanned += 1;
            let Some(body) = stored_frame(rec) else {
                continue;
            };
            let Ok((batch, _)) = access_batch(&body) else {
                continue;
            };
            note_producer(producers, batch);
            for chunk in batch.chunks.iter() {
                let a = aligned(chunk.as_slice());
                if let Ok(c) = Chunk::access(&a) {
                    for ev in c.events.iter() {
                        counts.events += 1;
                        *counts.by_type.entry(ev.event_type.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    counts.producers = producers.len();
    Ok(scanned)
}

fn note_producer(producers: &mut Producers, batch: &ArchivedBatch) {
    let key = (batch.agent_id.to_string(), batch.epoch.to_native());
    let end = batch.first_seq.to_native() + batch.chunks.len() as u64;
    let next = producers.entry(key).or_default();
    *next = (*next).max(end);
}

/// The frame to store for `batch` without its first `skip` chunks.
fn trimmed_frame(batch: &CheckedBatch, skip: usize) -> Vec<u8> {
    if skip == 0 {
        return batch.frame.clone();
    }
    let body = decode_frame(&batch.frame, usize::MAX).expect("checked before");
    let (archived, _) = access_batch(&body).expect("checked before");
    Batch {
        agent_id: archived.agent_id.to_string(),
        host: archived.host.to_string(),
        epoch: archived.epoch.to_native(),
        first_seq: archived.first_seq.to_native() + skip as u64,
        chunks: archived
            .chunks
            .iter()
            .skip(skip)
            .map(|c| c.as_slice().to_vec())
            .collect(),
    }
    .encode_frame()
}

fn unavailable(message: String) -> BatchAck {
    BatchAck {
        status: AckStatus::Unavailable,
        base_offset: 0,
        appended_events: 0,
        duplicate_chunks: 0,
        message,
    }
}

fn writer(
    mut log: SegmentLog,
    mut producers: Producers,
    mut rx: mpsc::Receiver<Append>,
    counts: Arc<Mutex<Counts>>,
    failed: Arc<Mutex<Option<String>>>,
    mut checkpointer: Checkpointer,
) {
    let mut group = Vec::with_capacity(GROUP_COMMIT_MAX);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        // (reply, ack, type counts) of batches appended in this group.
        let mut appended = Vec::new();
        // Duplicates are answered only after this group's fsync: a resend of a batch appended
        // earlier in the same group is not durable until then.
        let mut duplicates = Vec::new();
        for Append { batch, reply } in group.drain(..) {
            if let Some(reason) = failed.lock().expect("lock poisoned").clone() {
                // After a failed fsync nothing in the producer table can be trusted: answer
                // Unavailable until a restart has rebuilt it from what is durable.
                let _ = reply.send(unavailable(reason));
                continue;
            }
            let key = (batch.agent_id.clone(), batch.epoch);
            let expected = producers.get(&key).copied().unwrap_or(0);
            let skip = usize::try_from(expected.saturating_sub(batch.first_seq))
                .unwrap_or(usize::MAX)
                .min(batch.chunk_events.len());
            if skip == batch.chunk_events.len() {
                metrics::counter!("runnel_broker_batches_duplicate_total").increment(1);
                duplicates.push((reply, skip as u32));
                continue;
            }
            if batch.first_seq > expected && expected > 0 {
                tracing::warn!(agent = %batch.agent_id, expected, got = batch.first_seq, "gap in an agent's sequence (spool damage on the agent?)");
                metrics::counter!("runnel_broker_sequence_gaps_total").increment(1);
            }
            let events: u32 = batch.chunk_events[skip..].iter().sum();
            let frame = trimmed_frame(&batch, skip);
            match log.append(&frame, events, now_ms()) {
                Ok(base) => {
                    let end = batch.first_seq + batch.chunk_events.len() as u64;
                    let ack = BatchAck {
                        status: AckStatus::Appended,
                        base_offset: base,
                        appended_events: events,
                        duplicate_chunks: skip as u32,
                        message: String::new(),
                    };
                    // Later batches of the same producer in this group build on this one.
                    producers.insert(key, end);
                    let types: Vec<(String, u64)> = batch.chunk_types[skip..]
                        .iter()
                        .flatten()
                        .cloned()
                        .collect();
                    appended.push((reply, ack, types, frame.len() as u64));
                }
                Err(e) => {
                    if e.is_poisoned() {
                        *failed.lock().expect("lock poisoned") = Some(e.to_string());
                    }
                    metrics::counter!("runnel_broker_append_errors_total").increment(1);
                    let status = match e {
                        LogError::RecordTooLarge { .. } => AckStatus::Rejected,
                        _ => AckStatus::Unavailable,
                    };
                    let _ = reply.send(BatchAck {
                        status,
                        base_offset: 0,
                        appended_events: 0,
                        duplicate_chunks: 0,
                        message: e.to_string(),
                    });
                }
            }
        }
        let duplicate_ack = |chunks: u32| BatchAck {
            status: AckStatus::Duplicate,
            base_offset: 0,
            appended_events: 0,
            duplicate_chunks: chunks,
            message: String::new(),
        };
        if appended.is_empty() {
            for (reply, chunks) in duplicates {
                let _ = reply.send(duplicate_ack(chunks));
            }
            continue;
        }
        let started = Instant::now();
        match log.sync() {
            Ok(end_offset) => {
                metrics::histogram!("runnel_broker_log_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                let mut c = counts.lock().expect("lock poisoned");
                c.producers = producers.len();
                let appended_bytes: u64 = appended.iter().map(|(_, _, _, bytes)| *bytes).sum();
                for (reply, ack, types, _) in appended {
                    c.events += u64::from(ack.appended_events);
                    for (t, n) in types {
                        *c.by_type.entry(t).or_default() += n;
                    }
                    metrics::counter!("runnel_broker_events_appended_total")
                        .increment(u64::from(ack.appended_events));
                    let _ = reply.send(ack);
                }
                checkpointer.after_sync(appended_bytes, end_offset, &producers, &c);
                drop(c);
                for (reply, chunks) in duplicates {
                    let _ = reply.send(duplicate_ack(chunks));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log fsync failed; the broker stops accepting batches");
                *failed.lock().expect("lock poisoned") = Some(e.to_string());
                // Batches an earlier fsync in this group covered (a segment roll syncs) are
                // durable: acknowledge them.
                let durable = log.reader().end_offset();
                for (reply, ack, _, _) in appended {
                    let covered = ack.base_offset + u64::from(ack.appended_events) <= durable;
                    let _ = reply.send(if covered {
                        ack
                    } else {
                        unavailable(e.to_string())
                    });
                }
                for (reply, _) in duplicates {
                    let _ = reply.send(unavailable(e.to_string()));
                }
            }
        }
    }
}
