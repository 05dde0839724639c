//! The one walk from log records to events that every reader of the log uses: `runnel log
//! read`, the pipeline's batches, recovery's scan and Flight's `events`.
//!
//! A record is a wire frame of one agent batch; its events take consecutive offsets from the
//! record's base offset. The segment layer has checked the record's CRC, and the writer checked
//! the frame and every chunk before appending it, so a record that does not decode here is a
//! bug or a format this build does not read: it is counted
//! (`runnel_broker_log_unreadable_records_total{reason}`), logged with its offset, and its
//! offsets are skipped, so every reader moves past it the same way. Offsets only grow. An event
//! an erasure replaced ([`runnel_event::Event::erased`]) is skipped the same way: its offset is a
//! gap every reader steps over.

use std::ops::ControlFlow;

use runnel_event::Chunk;
use runnel_event::envelope::ArchivedEvent;
use runnel_event::wire::{ArchivedBatch, access_batch, aligned, decode_frame};
use runnel_segment::{LogError, LogReader, StoredRecord};

/// One event met on the walk.
pub struct Walked<'a> {
    /// Its log offset.
    pub offset: u64,
    /// The base offset of its record (its batch's first event).
    pub record: u64,
    /// When the broker appended its batch (the record's time, ms).
    pub appended_ms: i64,
    /// The batch it came in (agent, host, epoch, sequence numbers).
    pub batch: &'a ArchivedBatch,
    /// The event.
    pub event: &'a ArchivedEvent,
}

/// How much one read of the log takes.
#[derive(Debug, Clone, Copy)]
pub struct ReadSize {
    /// Most records.
    pub records: usize,
    /// Most bytes.
    pub bytes: usize,
}

/// Why a record could not be read (each counted under its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    Frame,
    Batch,
    Chunk,
}

impl Unreadable {
    fn as_str(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Batch => "batch",
            Self::Chunk => "chunk",
        }
    }
}

fn unreadable(rec: &StoredRecord, why: Unreadable, error: &str) {
    metrics::counter!("runnel_broker_log_unreadable_records_total", "reason" => why.as_str())
        .increment(1);
    tracing::error!(
        offset = rec.header.base_offset,
        events = rec.header.count,
        reason = why.as_str(),
        error,
        "a log record does not decode; its offsets are skipped"
    );
}

/// Calls `f` for each durable event from offset `from` on, in offset order, until `f` breaks
/// or the log ends. Returns the first offset not consumed: the offset of the event `f` broke
/// on, else the end of the last record read.
pub fn walk(
    reader: &LogReader,
    from: u64,
    size: ReadSize,
    f: impl FnMut(&Walked<'_>) -> ControlFlow<()>,
) -> Result<u64, LogError> {
    walk_events(reader, from, size, false, f)
}

/// [`walk`], erased events included: for recovery, which must see every record's batch
/// header (its producer's sequence numbers) whatever an erasure left of its events.
pub(super) fn walk_with_erased(
    reader: &LogReader,
    from: u64,
    size: ReadSize,
    f: impl FnMut(&Walked<'_>) -> ControlFlow<()>,
) -> Result<u64, LogError> {
    walk_events(reader, from, size, true, f)
}

fn walk_events(
    reader: &LogReader,
    from: u64,
    size: ReadSize,
    erased: bool,
    mut f: impl FnMut(&Walked<'_>) -> ControlFlow<()>,
) -> Result<u64, LogError> {
    let mut next = from;
    loop {
        let records = reader.read(next, size.records, size.bytes)?;
        if records.is_empty() {
            return Ok(next);
        }
        for rec in &records {
            let base = rec.header.base_offset;
            let end = base + u64::from(rec.header.count);
            debug_assert!(end > next, "the reader returned a record before {next}");
            if let ControlFlow::Break(at) = walk_record(rec, next, erased, &mut f) {
                return Ok(at);
            }
            next = next.max(end);
        }
    }
}

/// The events of one record at or after `from`; breaks with the offset `f` broke on.
fn walk_record(
    rec: &StoredRecord,
    from: u64,
    erased: bool,
    f: &mut impl FnMut(&Walked<'_>) -> ControlFlow<()>,
) -> ControlFlow<u64> {
    // Checked against batch_bytes_max when appended, so read whatever the limit is now.
    let body = match decode_frame(&rec.payload, u32::MAX as usize) {
        Ok(b) => b,
        Err(e) => {
            unreadable(rec, Unreadable::Frame, &e.to_string());
            return ControlFlow::Continue(());
        }
    };
    let batch = match access_batch(&body) {
        Ok((b, _)) => b,
        Err(e) => {
            unreadable(rec, Unreadable::Batch, &e.to_string());
            return ControlFlow::Continue(());
        }
    };
    let mut offset = rec.header.base_offset;
    for chunk in batch.chunks.iter() {
        let a = aligned(chunk.as_slice());
        let c = match Chunk::access(&a) {
            Ok(c) => c,
            Err(e) => {
                // The rest of the record cannot be placed: skip all of it.
                unreadable(rec, Unreadable::Chunk, &e.to_string());
                return ControlFlow::Continue(());
            }
        };
        for event in c.events.iter() {
            // An erased event keeps its offset and is seen by no reader.
            if offset >= from && (erased || !event.is_erased()) {
                let w = Walked {
                    offset,
                    record: rec.header.base_offset,
                    appended_ms: rec.header.ts_ms,
                    batch,
                    event,
                };
                if f(&w).is_break() {
                    return ControlFlow::Break(offset);
                }
            }
            offset += 1;
        }
    }
    debug_assert_eq!(
        offset,
        rec.header.base_offset + u64::from(rec.header.count),
        "a record's events cover its offsets"
    );
    ControlFlow::Continue(())
}
