//! # log: the broker log, every accepted batch appended once, durable before it is acknowledged
//!
//! ## Layout
//! `DATA_DIR/log/` is a [`runnel_segment`] log (segment format, CRC32C per record, sparse
//! offset and time index, torn-tail recovery and quarantine are described there). Each record's
//! payload is a wire frame exactly as an agent sent it ([`runnel_event::wire`]): a batch of
//! chunks from one agent spool, `(agent_id, epoch, first_seq)`. A record covers one offset per
//! event, so every event has its own log offset; the record timestamp is the broker's append
//! time (milliseconds), which the time index and the pipeline's receive time use.
//!
//! ## Write path ([`writer`])
//! QUIC tasks check a batch ([`check_batch`]: frame CRC, size limits, rkyv validation of the
//! batch and every chunk) in parallel and hand it to the single writer thread, which appends
//! what the producer table ([`producers`]) says is new, group-commits, and answers.
//!
//! ## Read path ([`walk`])
//! Every reader (`runnel log read`, the pipeline, recovery, Flight's `events`) goes through one
//! record-to-event walk, which skips and counts a record that does not decode.
//!
//! ## Recovery ([`checkpoint`])
//! After segment recovery the checkpoint is loaded (if it is readable and its offset lies within
//! the log) and the records from its offset on are scanned: each batch header advances the
//! producer table, so a batch appended before a crash is recognised when its agent sends it
//! again, and its events advance the per-type counts of `runnel log stats`. Without a usable
//! checkpoint the whole log is scanned. Start-up work is thus bounded by
//! `checkpoint_interval_bytes`, not by the size of the log.
//!
//! May call: nothing else of the broker (it is the bottom of the broker's stack).

mod checkpoint;
pub mod erase;
pub mod producers;
pub mod walk;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use runnel_event::fields::{self, EventView};
use runnel_event::wire::{access_batch, aligned, decode_frame};
use runnel_event::{AckStatus, BatchAck, Chunk};
use runnel_segment::{LogError, LogOptions, LogReader, RecoveryReport, SegmentLog, Storage};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use checkpoint::{Checkpoint, Checkpointer};
use producers::Producers;
use walk::{ReadSize, walk, walk_with_erased};
use writer::{Append, Request, Retire};

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
    /// Where the agent's previous batch of this spool ended (`runnel/2`; `None` from a
    /// `runnel/1` agent): see [`Producers::admit`].
    pub prev_end: Option<u64>,
}

impl CheckedBatch {
    /// Sets the `prev_end` a `runnel/2` agent sent before the frame; it may not be past
    /// `first_seq`.
    pub fn with_prev_end(mut self, prev_end: u64) -> Result<Self, String> {
        if prev_end > self.first_seq {
            return Err(format!(
                "prev_end {prev_end} is past the batch's first_seq {}",
                self.first_seq
            ));
        }
        self.prev_end = Some(prev_end);
        Ok(self)
    }
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
        prev_end: None,
    })
}

/// Figures of `runnel log stats` (the admin API's type).
pub type Stats = runnel_client::api::LogStats;

/// The counts `runnel log stats` shows, kept by the writer and in the checkpoint.
#[derive(Default, Clone, Serialize, serde::Deserialize)]
struct Counts {
    events: u64,
    by_type: BTreeMap<String, u64>,
    producers: usize,
}

/// Handle to the broker log; cheap to clone.
#[derive(Clone)]
pub struct BrokerLog {
    tx: mpsc::Sender<Request>,
    /// The writer thread, until [`BrokerLog::close`] joins it.
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    reader: LogReader,
    counts: Arc<Mutex<Counts>>,
    failed: Arc<Mutex<Option<String>>>,
    scanned_at_open: u64,
}

/// Batches waiting for the writer before QUIC tasks wait.
pub const WRITER_QUEUE_MAX: usize = 4096;
pub use writer::GROUP_COMMIT_MAX;

/// How the broker's logs (the event log and its side topics) are sized and recovered; the
/// broker takes them from its configuration ([`crate::BrokerConfig::log_settings`]).
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    /// A segment is sealed before it grows past this.
    pub segment_bytes_max: u64,
    /// Largest batch (record) appended.
    pub batch_bytes_max: usize,
    /// The recovery checkpoint is rewritten after this many appended bytes.
    pub checkpoint_interval_bytes: u64,
    /// Scan every sealed segment at open instead of trusting its index file.
    pub scan_sealed_at_open: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        crate::BrokerConfig::default().log_settings()
    }
}

impl LogSettings {
    /// The segment log's options for records of up to `record_bytes_max`.
    pub(crate) fn options(&self, record_bytes_max: u32) -> LogOptions {
        LogOptions {
            segment_bytes_max: self.segment_bytes_max,
            record_bytes_max,
            trust_sealed_indexes: !self.scan_sealed_at_open,
            ..LogOptions::default()
        }
    }
}

impl BrokerLog {
    /// Opens (recovering) the log in `dir` and starts its writer thread.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        settings: &LogSettings,
    ) -> anyhow::Result<(Self, RecoveryReport)> {
        let checkpoint_interval_bytes = settings.checkpoint_interval_bytes;
        let opts =
            settings.options(u32::try_from(settings.batch_bytes_max + 64).unwrap_or(u32::MAX));
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
            Some(c) => (c.end_offset, Producers::from_entries(c.producers), c.counts),
            None => (0, Producers::default(), Counts::default()),
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
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer::writer(log, producers, rx, c, f, checkpointer))?;
        Ok((
            Self {
                tx,
                writer: Arc::new(Mutex::new(Some(writer))),
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
        self.submit(batch).await.await
    }

    /// Queues a batch for the writer and returns its answer to come. Batches submitted one
    /// after another (each `submit` awaited before the next) reach the writer in that order,
    /// which is what lets one stream carry several batches of an agent in flight.
    pub async fn submit(
        &self,
        batch: CheckedBatch,
    ) -> impl std::future::Future<Output = BatchAck> + Send + use<> {
        let (reply, rx) = oneshot::channel();
        let queued = self
            .tx
            .send(Request::Append(Append { batch, reply }))
            .await
            .is_ok();
        async move {
            let stopped = || BatchAck {
                status: AckStatus::Unavailable,
                base_offset: 0,
                appended_events: 0,
                duplicate_chunks: 0,
                message: "log writer stopped".to_string(),
            };
            if !queued {
                return stopped();
            }
            rx.await.unwrap_or_else(|_| stopped())
        }
    }

    /// Stops the writer thread once it has answered the batches already queued, and waits
    /// for it; appends after this (through any clone) answer `Unavailable` ("log writer
    /// stopped"). Reads still work. The broker's shutdown calls it last.
    pub async fn close(&self) {
        let Some(thread) = self.writer.lock().expect("lock poisoned").take() else {
            return;
        };
        let _ = self.tx.send(Request::Stop).await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    /// Deletes the sealed segments wholly below offset `below` whose records were all appended
    /// before `appended_before_ms` (the hot tier's retention: the archiver asks with the offset
    /// it has committed). Returns (segments, bytes) deleted.
    pub async fn retire(
        &self,
        below: u64,
        appended_before_ms: i64,
    ) -> Result<(usize, u64), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Retire(Retire {
                below,
                appended_before_ms,
                reply,
            }))
            .await
            .map_err(|_| "log writer stopped".to_string())?;
        let (segments, bytes) = rx.await.map_err(|_| "log writer stopped".to_string())??;
        if segments > 0 {
            metrics::counter!("runnel_log_segments_deleted_total").increment(segments as u64);
            metrics::counter!("runnel_log_deleted_bytes_total").increment(bytes);
            tracing::info!(
                segments,
                bytes,
                below,
                start_offset = self.reader.stats().start_offset,
                "deleted log segments the archive holds"
            );
        }
        Ok((segments, bytes))
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
        if limit == 0 {
            return Ok(0);
        }
        walk(&self.reader, from, READ_SIZE, |w| {
            f(EventView::new(
                w.event,
                w.offset,
                &w.batch.agent_id,
                &w.batch.host,
            ));
            done += 1;
            if done < limit {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        Ok(done)
    }
}

impl BrokerLog {
    /// Calls `f` for up to `limit` durable events from offset `from` on, in offset order, and
    /// returns the first offset not read: where the next read resumes (past a skipped,
    /// unreadable record too).
    pub fn walk_events(
        &self,
        from: u64,
        limit: usize,
        mut f: impl FnMut(&walk::Walked<'_>),
    ) -> Result<u64, LogError> {
        let mut done = 0usize;
        walk(&self.reader, from, READ_SIZE, |w| {
            if done >= limit {
                return ControlFlow::Break(());
            }
            f(w);
            done += 1;
            ControlFlow::Continue(())
        })
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
    /// The first offset the log holds (segments below it were archived and deleted).
    pub fn start_offset(&self) -> u64 {
        self.reader.stats().start_offset
    }

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
        let mut out = SourceBatch::default();
        let mut w = runnel_batch::BatchWriter::with_capacity(max_events.min(4096), 256);
        let mut bytes = 0usize;
        // The origin of the last event: a new one starts with each record.
        let mut last: Option<(u64, u32)> = None;
        let next = walk(&self.reader, from, BATCH_READ_SIZE, |e| {
            if out.offsets.len() >= max_events || (!out.offsets.is_empty() && bytes >= max_bytes) {
                return ControlFlow::Break(());
            }
            bytes += e.event.event_id.len()
                + e.event.event_type.len()
                + e.event.properties.as_ref().map_or(0, |p| p.len())
                + 128;
            let record = e.record;
            let o = match last {
                Some((r, o)) if r == record => o,
                _ => {
                    out.origins
                        .push((e.batch.agent_id.to_string(), e.batch.host.to_string()));
                    out.appended_ms.push(e.appended_ms);
                    let o = (out.origins.len() - 1) as u32;
                    last = Some((record, o));
                    o
                }
            };
            fields::push(&mut w, e.event);
            out.offsets.push(e.offset);
            out.origin.push(o);
            ControlFlow::Continue(())
        })?;
        debug_assert!(next >= from, "offsets only grow");
        out.next = next;
        out.batch = w.finish();
        Ok(out)
    }
}

/// Advances the producer table and counts over the events from offset `from` (a record
/// boundary) on; returns how many records were scanned.
fn scan(
    reader: &LogReader,
    from: u64,
    producers: &mut Producers,
    counts: &mut Counts,
) -> Result<u64, LogError> {
    let mut scanned = 0u64;
    let size = ReadSize {
        records: 256,
        bytes: 32 << 20,
    };
    walk_with_erased(reader, from, size, |e| {
        if e.offset == e.record {
            scanned += 1;
            let b = e.batch;
            let end = b.first_seq.to_native() + b.chunks.len() as u64;
            producers.advance(&b.agent_id, b.epoch.to_native(), end);
        }
        if e.event.is_erased() {
            return ControlFlow::Continue(());
        }
        counts.events += 1;
        match counts.by_type.get_mut(e.event.event_type.as_str()) {
            Some(n) => *n += 1,
            None => {
                counts.by_type.insert(e.event.event_type.to_string(), 1);
            }
        }
        ControlFlow::Continue(())
    })?;
    counts.producers = producers.len();
    Ok(scanned)
}

/// One read of the log for the pipeline: a few records at a time, so a batch that ends inside
/// the second record does not copy and check dozens more.
const BATCH_READ_SIZE: ReadSize = ReadSize {
    records: 4,
    bytes: 8 << 20,
};

/// One read of the log: records and bytes.
const READ_SIZE: ReadSize = ReadSize {
    records: 16,
    bytes: 8 << 20,
};
