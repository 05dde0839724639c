//! The `enriched_events` table: what the enricher chain made of each event, from the
//! pipeline's `enriched` topic ([`crate::topics::enriched`]).
//!
//! Its columns and partitions are those of `events` ([`super::events`]): the chain's output
//! under the log offset of the event it came from, with that event's `agent_id` and `host`.
//! Each data file holds the output of one chain; its key-value metadata `runnel.enrichers`
//! names the plugins and versions that made it (JSON: `[{"plugin": …, "version": …}]`, `[]`
//! when no enricher ran). A topic record that kept the log's events holds only their offsets:
//! the events are read from the log, which keeps every segment an unarchived record names.
//!
//! ## Exactly once
//! As for `events`: files created with `PutMode::Create`, named by the first and last source
//! offset they hold, committed with two application transactions in the same commit,
//! `runnel.archive.enriched` (the first topic offset not archived: where the next pass
//! resumes) and `runnel.archive.enriched.source` (the first source offset past the archived
//! records: where a query's topic part starts).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parquet::file::metadata::KeyValue;
use runnel_batch::BatchView;
use runnel_event::fields::EventFields;
use runnel_segment::LogReader;

use super::events::{self, DataFile, Part};
use crate::log::BrokerLog;
use crate::topics::enriched::Record;

/// The table's name under the archive URL.
pub const TABLE: &str = "enriched_events";

/// The application id whose transaction version is the first topic offset not archived.
pub const APP_ID: &str = "runnel.archive.enriched";

/// The application id whose transaction version is the first source offset past the
/// archived records.
pub const SPLIT_APP_ID: &str = "runnel.archive.enriched.source";

/// The key-value metadata key that names the chain of a data file.
pub const CHAIN_KEY: &str = "runnel.enrichers";

/// Most topic records one read takes.
const READ_RECORDS: usize = 256;

/// The `enriched` topic as the archiver reads it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The topic.
    pub reader: LogReader,
    /// The first topic offset the archive lacks, once the table is open (the pipeline deletes
    /// the topic's segments below it).
    pub archived: Arc<AtomicU64>,
}

/// Where a walk of the topic ended.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// The first topic offset not walked.
    pub next: u64,
    /// One past the last source offset of the records walked (`None`: none).
    pub source_next: Option<u64>,
    /// The chain of the records walked (with `one_chain`; otherwise the first's).
    pub chain: Option<String>,
    /// Events walked.
    pub events: u64,
}

/// Hands `f` every event of the topic's records from topic offset `from` on, in order, with
/// its source offset, `agent_id` and `host`: whole records, until one would pass `limit`
/// events (the first is taken whatever its size) or, with `one_chain`, until a record of
/// another chain than the first's.
pub fn walk(
    topic: &LogReader,
    log: &BrokerLog,
    from: u64,
    limit: usize,
    one_chain: bool,
    mut f: impl FnMut(&dyn EventFields, u64, &str, &str),
) -> Result<Walk, String> {
    let mut out = Walk {
        next: from,
        ..Walk::default()
    };
    let end = topic.end_offset();
    'read: while out.next < end {
        let records = topic
            .read(out.next, READ_RECORDS, 64 << 20)
            .map_err(|e| format!("reading the enriched topic at {}: {e}", out.next))?;
        if records.is_empty() {
            break;
        }
        for stored in records {
            let at = stored.header.base_offset;
            if at < out.next {
                continue;
            }
            let record =
                Record::decode(&stored.payload).map_err(|e| format!("topic offset {at}: {e}"))?;
            if out.events > 0 && out.events + record.len() > limit as u64 {
                break 'read;
            }
            match &out.chain {
                Some(c) if one_chain && *c != record.chain => break 'read,
                Some(_) => {}
                None => out.chain = Some(record.chain.clone()),
            }
            events_of(log, &record, at, &mut f)?;
            out.events += record.len();
            out.source_next = Some(record.next);
            out.next = at + 1;
        }
    }
    Ok(out)
}

/// One record's events, from the log or from the record.
fn events_of(
    log: &BrokerLog,
    record: &Record,
    at: u64,
    f: &mut impl FnMut(&dyn EventFields, u64, &str, &str),
) -> Result<(), String> {
    let changed = match &record.events {
        Some(bytes) => {
            Some(BatchView::new(bytes).map_err(|e| format!("topic offset {at}: its events: {e}"))?)
        }
        None => None,
    };
    let mut wanted = record.offsets().peekable();
    let mut k = 0usize;
    let mut found = 0u64;
    log.walk_events_with_erased(record.from, (record.next - record.from) as usize, |w| {
        while wanted.next_if(|o| *o < w.offset).is_some() {}
        if wanted.next_if_eq(&w.offset).is_none() {
            return;
        }
        found += 1;
        if w.event.is_erased() {
            // An erasure took it: no row, whatever the record holds for it.
            k += 1;
            return;
        }
        match &changed {
            Some(view) if k < view.len() => {
                f(&view.event(k), w.offset, &w.batch.agent_id, &w.batch.host)
            }
            Some(_) => {}
            None => f(w.event, w.offset, &w.batch.agent_id, &w.batch.host),
        }
        k += 1;
    })
    .map_err(|e| format!("reading the log for topic offset {at}: {e}"))?;
    if found < record.len() {
        return Err(format!(
            "the log no longer holds {} of the {} events of enriched record {at} \
             (offsets {}..{}; the log starts at {})",
            record.len() - found,
            record.len(),
            record.from,
            record.next,
            log.start_offset()
        ));
    }
    Ok(())
}

/// Topic records as data files.
#[derive(Debug)]
pub struct Range {
    /// Where the walk ended.
    pub walk: Walk,
    /// Its files, one per partition, in partition order.
    pub files: Vec<DataFile>,
}

/// Reads the topic's records from topic offset `from` on, up to `limit` events of one chain,
/// and encodes them as data files.
pub fn build(topic: &LogReader, log: &BrokerLog, from: u64, limit: usize) -> Result<Range, String> {
    let mut parts: BTreeMap<String, BTreeMap<i32, Part>> = BTreeMap::new();
    let walk = walk(
        topic,
        log,
        from,
        limit,
        true,
        |ev, offset, agent_id, host| {
            let day = ev.timestamp_ms().div_euclid(86_400_000) as i32;
            let event_type = ev.text(runnel_batch::Field::EventType).unwrap_or_default();
            let days = match parts.get_mut(event_type) {
                Some(d) => d,
                None => parts.entry(event_type.to_string()).or_default(),
            };
            days.entry(day)
                .or_insert_with(Part::new)
                .push(ev, offset, agent_id, host);
        },
    )?;
    let schema = events::data_schema();
    let chain = walk.chain.clone().unwrap_or_else(|| "[]".into());
    let mut files = Vec::new();
    for (event_type, days) in parts {
        for (day, mut part) in days {
            let meta = vec![KeyValue::new(CHAIN_KEY.to_string(), chain.clone())];
            files.push(part.finish_with(&schema, event_type.clone(), day, meta)?);
        }
    }
    Ok(Range { walk, files })
}
