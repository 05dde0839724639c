//! # topics: the side topics of the log
//!
//! `dead_letters` (events a plugin failed on, a window limit refused, or an agent dead-lettered
//! for their time, with the reason) and `late_events` (events whose rows all fell in final
//! windows, with the aggregates and watermarks). Their entries are typed ([`entries`]).
//! With the archive on, `enriched` holds what the enricher chain made of each batch, for the
//! archive's `enriched_events` table ([`enriched`]; binary records, one per batch).
//!
//! A topic is a [`runnel_segment`] log in `DATA_DIR/topics/NAME/`: one record per entry, the
//! entry as a JSON object, so it has the same checksums, recovery and offsets as the event log.
//! The pipeline is its only writer; it appends a batch's entries and syncs them before it
//! commits its offset. Every entry names the log offset of its event (`source_offset`); after a
//! crash the pipeline replays from its committed offset and skips entries for source offsets
//! the topic already holds, so an entry is written once.
//!
//! May call: nothing else of the broker (the pipeline writes, the admin API and Flight read).

pub mod enriched;
pub mod entries;

use std::path::Path;
use std::sync::Arc;

use runnel_segment::{LogError, LogReader, SegmentLog, Storage};
use serde::Deserialize;

/// Names of the topics `runnel log read --topic` accepts (the log itself and its side topics).
pub use runnel_client::api::TOPICS;

/// Largest entry, in bytes (an event at its largest plus the reason).
pub const ENTRY_BYTES_MAX: u32 = 64 << 20;

/// The writing end of a topic.
pub struct TopicWriter {
    log: SegmentLog,
    /// The highest source offset of a durable entry (entries at or below it are skipped).
    durable_high: Option<u64>,
    /// The highest source offset appended since the last sync.
    pending_high: Option<u64>,
}

impl std::fmt::Debug for TopicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicWriter")
            .field("dir", &self.log.dir())
            .finish()
    }
}

#[derive(Deserialize)]
struct SourceOffset {
    source_offset: u64,
}

/// Opens (recovering) the topic of JSON entries in `dir`.
pub fn open(
    storage: Arc<dyn Storage>,
    dir: &Path,
    settings: &crate::log::LogSettings,
) -> anyhow::Result<(TopicWriter, LogReader)> {
    open_with(storage, dir, settings, |payload| {
        serde_json::from_slice::<SourceOffset>(payload)
            .ok()
            .map(|s| s.source_offset)
    })
}

/// Opens (recovering) the topic in `dir` whose entries' source offsets `source_offset_of`
/// reads.
pub fn open_with(
    storage: Arc<dyn Storage>,
    dir: &Path,
    settings: &crate::log::LogSettings,
    source_offset_of: fn(&[u8]) -> Option<u64>,
) -> anyhow::Result<(TopicWriter, LogReader)> {
    let opts = settings.options(ENTRY_BYTES_MAX);
    let (log, report) = SegmentLog::open(storage, dir, opts, 0)?;
    if report.truncated_bytes > 0 || !report.quarantined_segments.is_empty() {
        tracing::warn!(topic = %dir.display(), truncated_bytes = report.truncated_bytes, quarantined = ?report.quarantined_segments, "topic recovered from damage");
    }
    let reader = log.reader();
    let end = reader.end_offset();
    let high_source_offset = if end == 0 {
        None
    } else {
        reader
            .read(end - 1, 1, ENTRY_BYTES_MAX as usize)?
            .last()
            .and_then(|r| source_offset_of(&r.payload))
    };
    Ok((
        TopicWriter {
            log,
            durable_high: high_source_offset,
            pending_high: None,
        },
        reader,
    ))
}

impl TopicWriter {
    /// Appends one entry unless the topic already has an entry for its source offset or a
    /// later one; entries must come in source-offset order. Not durable until [`Self::sync`].
    pub fn append(&mut self, entry: &impl entries::Entry) -> Result<bool, LogError> {
        let source_offset = entry.source_offset();
        debug_assert!(
            self.pending_high.is_none_or(|h| source_offset > h),
            "entries come in source-offset order"
        );
        if self.durable_high.is_some_and(|h| source_offset <= h) {
            return Ok(false);
        }
        self.log
            .append(&entry.encode(), 1, runnel_event::now_ms())?;
        self.pending_high = Some(source_offset);
        Ok(true)
    }

    /// The highest source offset appended (durable or not): the next entry must be past it.
    pub fn high(&self) -> Option<u64> {
        self.pending_high.or(self.durable_high)
    }

    /// Deletes the sealed segments wholly below topic offset `offset` (their entries are
    /// kept elsewhere: the archive's copy).
    pub fn delete_before(&mut self, offset: u64) -> Result<(usize, u64), LogError> {
        self.log.delete_before(offset)
    }

    /// Makes the appended entries durable and seals the active segment (when it holds
    /// entries); returns the topic's end offset, below which every entry is in a sealed
    /// segment.
    pub fn seal(&mut self) -> Result<u64, LogError> {
        self.sync()?;
        self.log.seal()?;
        Ok(self.log.next_offset())
    }

    /// Makes the appended entries durable. After a failure the log is poisoned (every later
    /// append and sync fails) and nothing appended since the last good sync counts as written.
    pub fn sync(&mut self) -> Result<(), LogError> {
        let result = self.log.sync().map(|_| ());
        if result.is_ok() {
            self.durable_high = self.pending_high.or(self.durable_high);
        }
        self.pending_high = None;
        result
    }
}

/// What an erasure leaves of an entry whose event it selected: its source offset (the topic's
/// replay skips by it) and `"erased": true`.
pub fn erased_entry(source_offset: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "source_offset": source_offset,
        "erased": true,
        "entry_version": entries::ENTRY_VERSION,
    }))
    .expect("serializing to memory")
}

/// Rewrites the sealed segment at `base` of a topic of JSON entries, each entry whose `event`
/// `erase` selects replaced by [`erased_entry`]; returns the rewrite and the entries replaced,
/// `None` when the segment is gone. Blocking.
pub fn erase_in_segment(
    reader: &LogReader,
    base: u64,
    erase: &dyn Fn(&serde_json::Value) -> bool,
) -> Result<Option<(runnel_segment::Rewrite, u64)>, LogError> {
    let mut entries = 0u64;
    let rewrite = reader.rewrite_sealed(base, |_, payload| {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        if v.get("erased").is_some() || !erase(v.get("event")?) {
            return None;
        }
        let source_offset = v.get("source_offset")?.as_u64()?;
        entries += 1;
        Some(erased_entry(source_offset))
    })?;
    Ok(rewrite.map(|r| (r, entries)))
}

/// Calls `f` with the entries from offset `from`, each as a JSON object that starts with its
/// topic `offset`, until `f` has taken `limit` of them (it answers whether it took one).
pub fn read_entries(
    reader: &LogReader,
    from: u64,
    limit: usize,
    mut f: impl FnMut(&[u8]) -> bool,
) -> Result<usize, LogError> {
    let mut done = 0;
    let mut next = from;
    let mut line = Vec::new();
    while done < limit {
        let records = reader.read(next, 256.min(limit - done), 8 << 20)?;
        if records.is_empty() {
            break;
        }
        for rec in &records {
            next = rec.header.base_offset + u64::from(rec.header.count);
            if rec.header.base_offset < from || done >= limit {
                continue;
            }
            let body = rec.payload.strip_prefix(b"{").unwrap_or(&rec.payload);
            line.clear();
            line.extend_from_slice(format!("{{\"offset\":{},", rec.header.base_offset).as_bytes());
            line.extend_from_slice(body);
            if f(&line) {
                done += 1;
            }
        }
    }
    Ok(done)
}
