//! The types of the broker's admin API, as JSON on the wire.
//!
//! | call | answer |
//! | --- | --- |
//! | `GET /v1/log/stats` | [`LogStats`] |
//! | `GET /v1/log/read?from&limit&topic` | NDJSON: events (`topic=events`) or side-topic entries |
//! | `GET /v1/plugins` | `[`[`PluginInfo`]`]` |
//! | `PUT /v1/plugins/NAME?version&policy&param&deadline_ms&memory_bytes_max&fuel_per_call&capability&backfill_from` (body: the component) | the deployed version (and the backfill, if one was asked for) |
//! | `POST /v1/plugins/NAME/pause`, `/resume` | the plugin's record |
//! | `DELETE /v1/plugins/NAME` | `204` |
//! | `GET /v1/aggregates` | `[`[`AggInfo`]`]` |
//! | `GET /v1/aggregates/NAME/rows?from&to&limit` | NDJSON rows |
//! | `GET /v1/archive` | [`ArchiveStatus`] (404 when the archive is off) |
//!
//! A refusal is a 4xx/5xx with `{"error": "…"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The log's side topics and the log itself, as `topic=` of `/v1/log/read` names them.
pub const TOPICS: &[&str] = &["events", "dead_letters", "late_events"];

/// `GET /v1/log/stats`: what the log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
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

/// Whether a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    /// Runs on every batch.
    Running,
    /// Paused by an operator or after failing batches.
    Paused,
    /// An aggregator's first version being computed over history: it runs once swapped in.
    Backfilling,
}

/// What the pipeline does with events while a plugin is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausePolicy {
    /// Events wait in the log.
    Hold,
    /// Events pass the plugin untouched.
    Skip,
}

/// A plugin version's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest one call may run, in milliseconds.
    pub deadline_ms: u64,
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes_max: u64,
    /// Instructions (fuel) per call, if metered.
    pub fuel_per_call: Option<u64>,
}

/// One plugin in `GET /v1/plugins` (and `runnel plugin list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// The active version.
    pub version: String,
    /// `enrich` or `aggregate`.
    pub kind: String,
    /// Running or paused.
    pub status: PluginStatus,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// While paused: hold or skip.
    pub policy: PausePolicy,
    /// Events passed to it.
    pub events_in: u64,
    /// Events it passed on.
    pub events_out: u64,
    /// Events it dropped.
    pub dropped: u64,
    /// Events it failed on (in `dead_letters`).
    pub errors: u64,
    /// Failed calls.
    pub traps: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// The longest call, in milliseconds.
    pub slowest_call_ms: f64,
    /// Mean time in its calls per event passed to it (the host's encoding and decoding around
    /// the call included), in ns.
    #[serde(default)]
    pub ns_per_event: f64,
    /// Aggregators: mean time folding its rows into windows per event, in ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold_ns_per_event: Option<f64>,
    /// Events in the log the pipeline has not processed yet.
    pub lag: u64,
    /// The active version's limits.
    pub limits: Limits,
    /// Every version, oldest first, with the events each processed.
    pub versions: Vec<VersionInfo>,
    /// A version being computed over history, to replace the active one when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillInfo>,
}

/// A backfill in [`PluginInfo`]: `runnel plugin deploy … --backfill-from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillInfo {
    /// The version computed in shadow.
    pub version: String,
    /// `all`, or the first window start it replaces (RFC 3339).
    pub from: String,
    /// `queued`, `running`, `swapping`, or `failed: …` (it is retried from its checkpoint).
    pub state: String,
    /// The first log offset it has not folded yet.
    pub offset: u64,
    /// The pipeline's offset, which it catches up with.
    pub target_offset: u64,
    /// Events folded so far.
    pub events: u64,
    /// Events the new version failed on.
    pub errors: u64,
    /// Events folded per second since it (re)started.
    pub events_per_second: f64,
    /// Seconds until it reaches the pipeline at that rate.
    pub eta_seconds: Option<f64>,
    /// When it was requested (RFC 3339).
    pub requested_at: String,
}

/// One version in [`PluginInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Label.
    pub version: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// When it was deployed.
    pub deployed_at: String,
    /// Its `init` parameters.
    pub params: Vec<(String, String)>,
    /// Capabilities granted.
    pub capabilities: Vec<String>,
    /// Events passed to it.
    pub events_in: u64,
}

/// What a deploy asks for, beyond the component (each unset field takes the broker's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deploy {
    /// Version label (default: 1, 2, …).
    pub version: Option<String>,
    /// `hold` or `skip` while paused.
    pub policy: Option<String>,
    /// `init` parameters.
    pub params: Vec<(String, String)>,
    /// Longest call, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Memory cap per instance, in bytes.
    pub memory_bytes_max: Option<u64>,
    /// Instructions per call, if metered.
    pub fuel_per_call: Option<u64>,
    /// Capabilities asked for (`clock`, `random`).
    pub capabilities: Vec<String>,
    /// Compute the version over history first (`all` or an RFC 3339 time) and swap it in when
    /// it reaches the live offset, instead of making it active at once (aggregators only).
    pub backfill_from: Option<String>,
}

/// An agent whose clock runs ahead of the broker's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// The agent.
    pub agent: String,
    /// How far its `received_at` ran ahead of the broker's append time, in ms.
    pub ahead_ms: i64,
}

/// One aggregate as `GET /v1/aggregates` (and `runnel agg list`) shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggInfo {
    /// The aggregator's name.
    pub name: String,
    /// Its active version.
    pub version: String,
    /// `running` or `paused`.
    pub status: String,
    /// The window (`tumbling 1m`, `calendar month Africa/Nairobi`, ...).
    pub window: String,
    /// Allowed lateness.
    pub allowed_lateness_ms: i64,
    /// Columns of its rows, in order.
    pub columns: Vec<String>,
    /// Dimension columns.
    pub dimensions: Vec<String>,
    /// Measures and their kinds.
    pub measures: Vec<(String, String)>,
    /// The watermark the engine has applied (RFC 3339), if any.
    pub watermark: Option<String>,
    /// Processing time (the latest receive time) minus the watermark, in milliseconds.
    pub watermark_lag_ms: Option<i64>,
    /// Log events not yet through the pipeline.
    pub lag_events: u64,
    /// Open panes or sessions.
    pub open_windows: usize,
    /// Approximate bytes of window state.
    pub state_bytes: usize,
    /// Events whose rows all fell in final windows (sent to `late_events`).
    pub late_events: u64,
    /// Rows refused by a window limit, by limit (their events are in `dead_letters`).
    pub refused: BTreeMap<String, u64>,
    /// Agents whose clock ran ahead of the broker's by more than `agent_clock_skew_max_ms` in
    /// their last batch: their events are judged by the broker's clock.
    pub clock_skewed_agents: Vec<ClockSkew>,
    /// Changes each time a backfill replaces the aggregate's rows (the same version label
    /// may come back with other rows).
    #[serde(default)]
    pub rows_epoch: u64,
}

/// Which rows `GET /v1/aggregates/NAME/rows` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowRange {
    /// Windows starting at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Windows starting before this time (RFC 3339).
    pub to: Option<String>,
    /// Most rows.
    pub limit: Option<usize>,
}

/// `GET /v1/archive`: the archive and each of its tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStatus {
    /// The archive's URL.
    pub url: String,
    /// `archive_interval_ms`.
    pub interval_ms: u64,
    /// Each table.
    pub tables: Vec<ArchiveTableStatus>,
}

/// One archive table, as `runnel archive status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveTableStatus {
    /// The table.
    pub name: String,
    /// Its tier: `warm` (under `archive_url`) or `cold` (under `archive_cold_url`).
    #[serde(default)]
    pub tier: String,
    /// Its folder's URL.
    pub url: String,
    /// Its Delta version (`None` before it is opened).
    pub version: Option<i64>,
    /// Active data files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their rows.
    pub rows: u64,
    /// The oldest `date` partition.
    pub oldest_date: Option<String>,
    /// The newest `date` partition.
    pub newest_date: Option<String>,
    /// The first log offset not archived.
    pub archived_end: u64,
    /// The log's durable end at the last pass.
    pub log_end: u64,
    /// Events of the log not archived yet at the last pass.
    pub lag_events: u64,
    /// When the last commit was made (ms since the epoch).
    pub last_commit_ms: Option<i64>,
    /// The last error, until a pass succeeds.
    pub last_error: Option<String>,
    /// Files deleted because no commit referenced them, since start.
    pub orphans_swept: u64,
}
