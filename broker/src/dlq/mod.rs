//! Dead letters as a typed queue (`docs/schemas.md#dead-letters`): the `dead_letters` and
//! `late_events` entries listed with filters, and the dead letters re-driven into the pipeline
//! once each, in `state.redb` (tables `redrives`, `redrive_batches`, `redrive_seqs`, see
//! [`crate::state`]).
//!
//! A re-drive appends the selected events to the log again, as their own agent's (so they
//! keep their tenant) under a producer epoch of their own ([`REDRIVE_EPOCH`]), at the current
//! plugin versions like any new event. Each re-drive batch gets its sequence number, and its
//! entries are marked, in one redb transaction *before* the append: a crash after it leaves
//! the batch pending, and the next re-drive appends it again under the same sequence number,
//! which the log's producer table answers `Duplicate` if the first append had landed. So an
//! entry reaches the log once however often it is selected. An event that fails again becomes
//! a new dead letter with the new reason (at its new offset).
//!
//! What is re-driven: enricher failures (`plugin_error`, `plugin_timeout` of stage `enrich`)
//! and agents' `event_time` dead letters, which no aggregator counted. A failure of an
//! aggregator (`stage: aggregate`, `refused`) is not: the other aggregators counted that event
//! already and would count it again; nor are late events (they are late for good).
//!
//! Blocking, except [`Dlq::redrive`].
//!
//! May call: [`crate::log`], [`crate::topics`], [`crate::state`].

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};
use runnel_event::{AckStatus, Batch, Chunk, EnvelopeLimits, Event};
use runnel_segment::LogReader;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::log::BrokerLog;
use crate::state::{REDRIVE_BATCHES, REDRIVE_SEQS, REDRIVES, from_json, to_json};

/// The spool epoch re-driven events are appended under (with their own agent's id): a
/// producer of its own, whose sequence numbers are the re-drive batches.
pub const REDRIVE_EPOCH: u64 = u64::from_be_bytes(*b"redrive\0");
/// Most events of one re-drive batch.
pub const REDRIVE_BATCH_EVENTS: usize = 1000;

/// Which entries a call is about.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `plugin_error`, `plugin_timeout`, `refused`, `event_time`, or `late` (the
    /// `late_events` topic).
    #[serde(default)]
    pub kind: Option<String>,
    /// The plugin that failed.
    #[serde(default)]
    pub plugin: Option<String>,
    /// Entries of events received at or after this time (UTC ms).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// These entries only (their ids).
    #[serde(default)]
    pub ids: Option<Vec<u64>>,
}

/// The kinds a filter may name.
pub const KINDS: [&str; 5] = [
    "plugin_error",
    "plugin_timeout",
    "refused",
    "event_time",
    "late",
];

impl Filter {
    /// Checks the filter; the error names the field.
    pub fn check(&self) -> Result<(), DlqError> {
        if let Some(k) = &self.kind
            && !KINDS.contains(&k.as_str())
        {
            return Err(DlqError::Invalid(format!(
                "kind: {k:?} is not one of {}",
                KINDS.join(", ")
            )));
        }
        Ok(())
    }

    fn matches(&self, e: &Value) -> bool {
        self.kind.as_deref().is_none_or(|k| e["kind"] == k)
            && self.plugin.as_deref().is_none_or(|p| e["plugin"] == p)
            && self.since_ms.is_none_or(|s| {
                e["event"]["received_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.timestamp_millis() >= s)
            })
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| e["id"].as_u64().is_some_and(|id| ids.contains(&id)))
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No such entry.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong (the message names the field or the limit).
    #[error("{0}")]
    Invalid(String),
    /// The log did not take a re-drive batch (it stays pending; re-drive again).
    #[error("{0}")]
    Unavailable(String),
    /// The database or a topic failed.
    #[error("{0}")]
    Storage(#[from] anyhow::Error),
}

fn storage(e: impl Into<redb::Error>) -> DlqError {
    DlqError::Storage(anyhow::Error::new(e.into()))
}

/// An entry's re-drive, once it is marked.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mark {
    agent_id: String,
    seq: u64,
    at_ms: i64,
}

/// A re-drive batch: its entries, and where the log put it once appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RedriveBatch {
    ids: Vec<u64>,
    at_ms: i64,
    base_offset: Option<u64>,
}

/// What a re-drive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Redriven {
    /// Entries the filter selected.
    pub selected: usize,
    /// Entries re-driven by this call (appended to the log now).
    pub redriven: usize,
    /// Selected entries re-driven before (not again).
    pub already: usize,
    /// Selected entries that cannot be re-driven (aggregator failures, late events), with why.
    pub not_redrivable: usize,
    /// Why, for the first of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_redrivable_reason: Option<String>,
    /// Batches of earlier re-drives that had not reached the log, appended now.
    pub resumed_batches: usize,
    /// Each batch appended: its agent, sequence number, events and first log offset.
    pub batches: Vec<Value>,
}

/// The dead-letter queue; cheap to clone.
#[derive(Clone)]
pub struct Dlq {
    db: Arc<Database>,
    dead_letters: LogReader,
    late_events: LogReader,
    log: BrokerLog,
    /// Most entries one call reads (`dlq_scan_entries_max`).
    scan_max: usize,
}

impl std::fmt::Debug for Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlq").finish_non_exhaustive()
    }
}

/// An entry as listed: its `id` (topic offset), the kind as this build names it (entries of
/// version 1 carried the host's word as the kind), and its re-drive if any.
fn normalize(mut e: Value, topic: &str) -> Value {
    let id = e["offset"].clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("offset");
        o.insert("id".into(), id);
        o.insert("topic".into(), topic.into());
    }
    if topic == "late_events" {
        e["kind"] = "late".into();
        return e;
    }
    if e["entry_version"].as_u64() == Some(1) {
        let word = e["kind"].as_str().unwrap_or_default().to_string();
        if word != "refused" && word != "event_time" {
            e["kind"] = if word == "timeout" {
                "plugin_timeout"
            } else {
                "plugin_error"
            }
            .into();
            e["failure"] = word.into();
        }
    }
    e
}

/// Why an entry cannot be re-driven, if it cannot.
fn not_redrivable(e: &Value) -> Option<String> {
    if e["kind"] == "late" {
        return Some(
            "late events are late for every window they fell in; they are not re-driven".into(),
        );
    }
    if e["kind"] == "refused" || e["stage"] == "aggregate" {
        return Some(format!(
            "{} failed in aggregator {}: the other aggregators counted the event already, so it is not re-driven through the pipeline",
            e["kind"].as_str().unwrap_or_default(),
            e["plugin"]
        ));
    }
    if e["entry_version"].as_u64() == Some(1) && e["kind"] != "event_time" {
        return Some("a dead letter written before re-drives (entry_version 1) does not say which stage failed".into());
    }
    None
}

/// The event of an entry, as it was accepted (its `received_at` kept).
fn event_of(e: &Value) -> Result<Event, String> {
    let ev = &e["event"];
    let mut envelope = serde_json::Map::new();
    for k in runnel_event::fields::TEXT_NAMES.iter().chain(&[
        "timestamp",
        "schema_version",
        "properties",
    ]) {
        if let Some(v) = ev.get(*k).filter(|v| !v.is_null()) {
            envelope.insert((*k).to_string(), v.clone());
        }
    }
    let received = ev["received_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(runnel_event::now_ms, |t| t.timestamp_millis());
    // The event passed the agent's limits once; the broker does not know them, so it checks
    // only what the envelope's shape needs.
    let limits = EnvelopeLimits {
        field_bytes_max: usize::MAX / 4,
        properties_bytes_max: usize::MAX / 4,
        properties_depth_max: 1024,
        ..EnvelopeLimits::default()
    };
    runnel_event::parse_event(&Value::Object(envelope).to_string(), &limits, received)
        .map_err(|err| format!("entry {}: its event does not parse: {err}", e["id"]))
}

impl Dlq {
    /// The queue over the topics, with its tables in `db`.
    pub fn open(
        db: Arc<Database>,
        dead_letters: LogReader,
        late_events: LogReader,
        log: BrokerLog,
        scan_max: usize,
    ) -> Result<Self, DlqError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(REDRIVES).map_err(storage)?;
        txn.open_table(REDRIVE_BATCHES).map_err(storage)?;
        txn.open_table(REDRIVE_SEQS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Dlq {
            db,
            dead_letters,
            late_events,
            log,
            scan_max,
        })
    }

    fn scan(&self, filter: &Filter, limit: usize) -> Result<Vec<Value>, DlqError> {
        filter.check()?;
        let (reader, topic) = if filter.kind.as_deref() == Some("late") {
            (&self.late_events, "late_events")
        } else {
            (&self.dead_letters, "dead_letters")
        };
        let marks = self.marks()?;
        let mut out = Vec::new();
        let mut bad = None;
        crate::topics::read_entries(reader, 0, self.scan_max, |bytes| {
            match serde_json::from_slice::<Value>(bytes) {
                // What an erasure left is no dead letter any more.
                Ok(e) if e.get("erased").is_some() => {}
                Ok(e) => {
                    let mut e = normalize(e, topic);
                    if filter.matches(&e) {
                        if let Some(m) = e["id"].as_u64().and_then(|id| marks.get(&id)) {
                            e["redriven"] = serde_json::json!({
                                "at": rfc3339(m.at_ms),
                                "agent_id": m.agent_id,
                                "seq": m.seq,
                            });
                        }
                        out.push(e);
                    }
                }
                Err(err) => bad = Some(err.to_string()),
            }
            out.len() < limit
        })
        .map_err(|e| DlqError::Storage(anyhow::anyhow!("{topic}: {e}")))?;
        if let Some(err) = bad {
            tracing::warn!(topic, error = %err, "an unreadable side-topic entry was skipped");
        }
        Ok(out)
    }

    fn marks(&self) -> Result<BTreeMap<u64, Mark>, DlqError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(REDRIVES).map_err(storage)?;
        let mut out = BTreeMap::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.insert(k.value(), from_json("redrive", v.value())?);
        }
        Ok(out)
    }

    /// The entries `filter` selects, oldest first, at most `limit`.
    pub fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Value>, DlqError> {
        self.scan(filter, limit)
    }

    /// One dead letter (`late`: a late event) by id.
    pub fn show(&self, id: u64, late: bool) -> Result<Value, DlqError> {
        let filter = Filter {
            ids: Some(vec![id]),
            kind: late.then(|| "late".to_string()),
            ..Filter::default()
        };
        self.scan(&filter, 1)?.pop().ok_or_else(|| {
            DlqError::NotFound(format!(
                "no {} entry {id}",
                if late { "late_events" } else { "dead_letters" }
            ))
        })
    }

    /// Re-drives the dead letters `filter` selects that were not re-driven before, and any
    /// re-drive batch an earlier call left pending.
    pub async fn redrive(&self, filter: Filter) -> Result<Redriven, DlqError> {
        let me = self.clone();
        let (mut out, pending) = tokio::task::spawn_blocking(move || me.select(&filter))
            .await
            .map_err(|e| DlqError::Storage(anyhow::anyhow!("redrive task: {e}")))??;
        for (agent, seq, batch, fresh) in pending {
            let me = self.clone();
            let ids = batch.ids.clone();
            let frame = tokio::task::spawn_blocking(move || me.frame(&agent, seq, &ids))
                .await
                .map_err(|e| DlqError::Storage(anyhow::anyhow!("redrive task: {e}")))??;
            let Some((agent, checked, events)) = frame else {
                continue;
            };
            let ack = self.log.append(checked).await;
            match ack.status {
                AckStatus::Appended | AckStatus::Duplicate => {}
                _ => {
                    return Err(DlqError::Unavailable(format!(
                        "the log did not take re-drive batch {seq} of agent {agent}: {}; it stays pending, re-drive again",
                        ack.message
                    )));
                }
            }
            let me = self.clone();
            let (a, at) = (agent.clone(), batch.at_ms);
            let base = ack.base_offset;
            tokio::task::spawn_blocking(move || me.appended(&a, seq, base))
                .await
                .map_err(|e| DlqError::Storage(anyhow::anyhow!("redrive task: {e}")))??;
            metrics::counter!("runnel_dlq_redriven_total").increment(events as u64);
            if fresh {
                out.redriven += events;
            } else {
                out.resumed_batches += 1;
            }
            out.batches.push(serde_json::json!({
                "agent_id": agent,
                "seq": seq,
                "events": events,
                "base_offset": base,
                "status": if ack.status == AckStatus::Duplicate { "duplicate" } else { "appended" },
                "at": rfc3339(at),
            }));
        }
        Ok(out)
    }

    /// Marks the selected entries and gives every pending batch: `(agent, seq, batch, made by
    /// this call)`.
    #[allow(clippy::type_complexity)]
    fn select(
        &self,
        filter: &Filter,
    ) -> Result<(Redriven, Vec<(String, u64, RedriveBatch, bool)>), DlqError> {
        let selected = self.scan(filter, usize::MAX)?;
        let mut out = Redriven {
            selected: selected.len(),
            ..Redriven::default()
        };
        let mut by_agent: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &selected {
            if e.get("redriven").is_some() {
                out.already += 1;
            } else if let Some(why) = not_redrivable(e) {
                out.not_redrivable += 1;
                out.not_redrivable_reason.get_or_insert(why);
            } else if let (Some(id), Some(agent)) =
                (e["id"].as_u64(), e["event"]["agent_id"].as_str())
            {
                by_agent.entry(agent.to_string()).or_default().push(id);
            }
        }
        let now = runnel_event::now_ms();
        let txn = self.db.begin_write().map_err(storage)?;
        let mut fresh = Vec::new();
        {
            let mut marks = txn.open_table(REDRIVES).map_err(storage)?;
            let mut batches = txn.open_table(REDRIVE_BATCHES).map_err(storage)?;
            let mut seqs = txn.open_table(REDRIVE_SEQS).map_err(storage)?;
            for (agent, ids) in by_agent {
                let mut seq = seqs
                    .get(agent.as_str())
                    .map_err(storage)?
                    .map_or(0, |v| v.value());
                for chunk in ids.chunks(REDRIVE_BATCH_EVENTS) {
                    let batch = RedriveBatch {
                        ids: chunk.to_vec(),
                        at_ms: now,
                        base_offset: None,
                    };
                    batches
                        .insert((agent.as_str(), seq), to_json(&batch).as_slice())
                        .map_err(storage)?;
                    for id in chunk {
                        let mark = Mark {
                            agent_id: agent.clone(),
                            seq,
                            at_ms: now,
                        };
                        marks
                            .insert(*id, to_json(&mark).as_slice())
                            .map_err(storage)?;
                    }
                    fresh.push((agent.clone(), seq));
                    seq += 1;
                }
                seqs.insert(agent.as_str(), seq).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        let txn = self.db.begin_read().map_err(storage)?;
        let batches = txn.open_table(REDRIVE_BATCHES).map_err(storage)?;
        let mut pending = Vec::new();
        for entry in batches.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (agent, seq) = k.value();
            let batch: RedriveBatch = from_json("redrive batch", v.value())?;
            if batch.base_offset.is_none() {
                let made = fresh.iter().any(|(a, s)| a == agent && *s == seq);
                pending.push((agent.to_string(), seq, batch, made));
            }
        }
        Ok((out, pending))
    }

    /// The log batch of a re-drive batch: its entries' events as one chunk.
    #[allow(clippy::type_complexity)]
    fn frame(
        &self,
        agent: &str,
        seq: u64,
        ids: &[u64],
    ) -> Result<Option<(String, crate::log::CheckedBatch, usize)>, DlqError> {
        let filter = Filter {
            ids: Some(ids.to_vec()),
            ..Filter::default()
        };
        let entries = self.scan(&filter, ids.len())?;
        let mut events = Vec::with_capacity(entries.len());
        for e in &entries {
            events.push(event_of(e).map_err(DlqError::Invalid)?);
        }
        if events.is_empty() {
            return Ok(None);
        }
        let host = entries[0]["event"]["host"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let n = events.len();
        let batch = Batch {
            agent_id: agent.to_string(),
            host,
            epoch: REDRIVE_EPOCH,
            first_seq: seq,
            chunks: vec![Chunk { events }.encode()],
        };
        let checked = crate::log::check_batch(batch.encode_frame(), usize::MAX / 2)
            .map_err(|e| DlqError::Invalid(format!("re-drive batch {seq} of {agent}: {e}")))?;
        Ok(Some((agent.to_string(), checked, n)))
    }

    fn appended(&self, agent: &str, seq: u64, base_offset: u64) -> Result<(), DlqError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut batches = txn.open_table(REDRIVE_BATCHES).map_err(storage)?;
            let found = batches
                .get((agent, seq))
                .map_err(storage)?
                .map(|v| from_json::<RedriveBatch>("redrive batch", v.value()));
            if let Some(batch) = found {
                let mut batch = batch?;
                batch.base_offset = Some(base_offset);
                batches
                    .insert((agent, seq), to_json(&batch).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
