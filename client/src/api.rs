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
//! | `GET /v1/reports` | `[`[`ReportInfo`]`]` |
//! | `PUT /v1/reports/NAME` (body: the definition's TOML) | [`ReportInfo`] (`201` for a new version) |
//! | `POST /v1/reports/NAME/runs` (body: [`RunRequest`], header `Idempotency-Key`) | `202` [`RunAccepted`] |
//! | `GET /v1/reports/NAME/runs?limit` | `[`[`ReportRun`]`]`, newest first |
//! | `GET /v1/reports/runs/ID` | [`ReportRun`] |
//! | `GET /v1/reports/runs/ID/output?token` | the output's bytes |
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
    /// The tenant a new plugin is deployed for (an operator's token; a tenant's token deploys
    /// for its own tenant). `None`: a new plugin is global.
    pub tenant: Option<String>,
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
    /// The tenant whose aggregate it is (its events only; its table that tenant's); absent:
    /// global, over every tenant's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
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

/// `GET /v1/reports`: a deployed report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInfo {
    /// Its name.
    pub name: String,
    /// Its active version (`1`, `2`, …: one per deploy that changed the definition).
    pub version: u32,
    /// The definition's description.
    pub description: String,
    /// `parquet`, `csv`, `json` or `html`.
    pub format: String,
    /// Its cron expression, if it runs by itself.
    pub schedule: Option<String>,
    /// The zone of its schedule and of its date and month parameters.
    pub time_zone: String,
    /// Its parameters: name to type (`month`, `float`, …).
    pub params: BTreeMap<String, String>,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// The newest run's id and status, if it has run.
    pub last_run: Option<(String, RunStatus)>,
    /// The tenant it belongs to (its SQL sees that tenant's data only); `None`: an
    /// operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The body of `POST /v1/reports/NAME/runs` (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Parameter values (numbers and booleans may be given as text).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Where the finished run is announced (overrides the definition's).
    pub webhook_url: Option<String>,
    /// `final` (wait until the period's windows are final) or `none` (run on what is there,
    /// marked partial if not final); unset: the definition's `wait_for`.
    pub wait_for: Option<String>,
}

/// The `202` answer of `POST /v1/reports/NAME/runs`: the run is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAccepted {
    /// The run's id.
    pub id: String,
    /// Where its status is (`/v1/reports/runs/ID`).
    pub status_url: String,
    /// Whether this request was a repeat of an earlier one (same `Idempotency-Key`).
    pub repeat: bool,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker (or for its period's windows to be final, or for its next attempt).
    Queued,
    /// A worker is on it.
    Running,
    /// Its output is written.
    Succeeded,
    /// Every attempt failed.
    Failed,
}

/// `GET /v1/reports/runs/ID`: one run of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRun {
    /// Its id.
    pub id: String,
    /// The report.
    pub report: String,
    /// The report's version it runs.
    pub version: u32,
    /// `request` or `schedule`.
    pub trigger: String,
    /// A scheduled run's fire time (RFC 3339).
    pub scheduled_for: Option<String>,
    /// Every parameter's value.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Where it is.
    pub status: RunStatus,
    /// It waits until its period's windows are final before it runs.
    pub wait_for_final: bool,
    /// What it waits for now, if anything.
    pub waiting: Option<String>,
    /// It ran on windows that were not all final.
    pub partial: bool,
    /// Attempts made (an attempt cut off by a broker restart does not count).
    pub attempts: u32,
    /// Most attempts.
    pub attempts_max: u32,
    /// Each failed attempt's error, oldest first (at most the last ten).
    pub errors: Vec<String>,
    /// When it was accepted, started, finished (RFC 3339).
    pub created_at: String,
    /// When its latest attempt started.
    pub started_at: Option<String>,
    /// When it succeeded or failed for good.
    pub finished_at: Option<String>,
    /// Its output, once it succeeded.
    pub output: Option<ReportOutput>,
    /// Where its end is announced.
    pub webhook_url: Option<String>,
    /// The announcement of its end, once it ended with a `webhook_url`.
    pub webhook: Option<WebhookDelivery>,
    /// When its output was deleted, its definition's `retention_days` after it finished.
    #[serde(default)]
    pub output_deleted_at: Option<String>,
}

/// A run's webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Its id, the same on every attempt (`X-Runnel-Delivery`).
    pub id: String,
    /// `pending`, `delivered` (a 2xx came back) or `failed` (given up after the last attempt).
    pub state: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<WebhookAttempt>,
}

/// One attempt of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    /// When it was made (RFC 3339).
    pub at: String,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if it did not get a 2xx.
    pub error: Option<String>,
}

/// A run's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportOutput {
    /// Where it is (`s3://…`, `file:///…`).
    pub url: String,
    /// Its format.
    pub format: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of its bytes (hex).
    pub sha256: String,
    /// A download link: `/v1/reports/runs/ID/output?token=…` on the admin port.
    pub link: String,
}

/// An API token as the broker lists it (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id (the first 12 hex digits of the token's SHA-256).
    pub id: String,
    /// `reader`, `deployer` or `admin`.
    pub role: String,
    /// Its tenant; `None`: every tenant.
    pub tenant: Option<String>,
    /// What it is for.
    pub description: String,
    /// When it was created (RFC 3339; empty for a token from the `flight_tokens` setting).
    pub created_at: String,
}

/// A token just created: the only time the broker shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenCreated {
    /// The token.
    pub token: String,
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// What it is for.
    pub description: String,
    /// When it was created.
    pub created_at: String,
}

/// A certificate and key the broker issued to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentEnrolled {
    /// The agent's `agent_id`.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM); the broker keeps no copy.
    pub key_pem: String,
    /// The CA that signed the broker's certificate, when the broker knows it (its dev CA).
    pub ca_pem: Option<String>,
    /// SHA-256 of the certificate.
    pub sha256: String,
    /// Last day it is valid.
    pub not_after: String,
}

/// One certificate of an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentCert {
    /// SHA-256 of the certificate.
    pub sha256: String,
    /// `enrolled` or `seen`.
    pub source: String,
    /// When it was issued or first seen.
    pub since: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
}

/// An agent the broker knows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    /// Its `agent_id`.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its certificates.
    pub certificates: Vec<AgentCert>,
    /// When its last connection was admitted.
    pub last_connected_at: Option<String>,
}

/// `GET /v1/schemas/TYPE`: an event type's schemas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaInfo {
    /// The event type.
    pub event_type: String,
    /// Its compatibility mode (`BACKWARD`, ...).
    pub mode: String,
    /// The mode is the registry's default (the type has none of its own).
    pub mode_is_default: bool,
    /// Every version, oldest first.
    pub versions: Vec<SchemaVersionInfo>,
}

/// One version of a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersionInfo {
    /// `1`, `2`, ...
    pub version: u32,
    /// When it was registered (RFC 3339).
    pub registered_at: String,
    /// The JSON Schema of the events' `properties`.
    pub schema: serde_json::Value,
}

/// `POST /v1/schemas/TYPE`: what a registration did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaRegistered {
    /// The event type.
    pub event_type: String,
    /// The version the schema has.
    pub version: u32,
    /// `false`: it was the latest version's schema already, nothing was registered.
    pub created: bool,
}

/// `POST /v1/schemas/TYPE/check`, and the body of a refused registration (`409`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaCheck {
    /// The event type.
    pub event_type: String,
    /// The mode it was checked under.
    pub mode: String,
    /// The version it would get (or has, when `existing`).
    pub version: u32,
    /// Whether it may be registered.
    pub compatible: bool,
    /// It is the latest version's schema already.
    pub existing: bool,
    /// Every incompatible difference.
    pub violations: Vec<SchemaViolation>,
}

/// One way a schema breaks its type's mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaViolation {
    /// JSON pointer into the schemas (`/properties/amount`).
    pub pointer: String,
    /// The rule (`TYPE_NARROWED`, `PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL`, ...).
    pub rule: String,
    /// The version it was checked against.
    pub against: u32,
    /// `/properties/amount: type narrowed from number to integer (BACKWARD)`.
    pub message: String,
}

/// `GET|PUT /v1/schema-settings`: the registry's default mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaMode {
    /// `BACKWARD`, `BACKWARD_TRANSITIVE`, `FORWARD`, `FORWARD_TRANSITIVE`, `FULL`,
    /// `FULL_TRANSITIVE` or `NONE`.
    pub mode: String,
}

/// `GET /v1/erasures/ID` (and the `202` of `POST /v1/erasures`): one erasure request, its
/// progress in every store and its audit. It holds no identity value, only keyed hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureStatus {
    /// Its id.
    pub id: u64,
    /// `running`, `late` (unfinished past its deadline) or `done`.
    pub state: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it is late (RFC 3339).
    pub deadline: String,
    /// When every store had finished (RFC 3339).
    pub finished: Option<String>,
    /// Whom it erases: each identity field with the keyed hash of its value.
    pub identity: Vec<ErasureIdentity>,
    /// Each store's progress.
    pub stores: Vec<ErasureStore>,
}

/// An identity value of an erasure, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureIdentity {
    /// `user_id`, `device_id`, `session_id` or `properties.NAME`.
    pub field: String,
    /// HMAC-SHA256 of `FIELD 0x00 VALUE` under the broker's erasure key, hex.
    pub hash: String,
}

/// One store's progress on an erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureStore {
    /// `log`, `dead_letters`, `late_events` or `enriched`.
    pub store: String,
    /// `running` or `done`.
    pub state: String,
    /// When it finished (RFC 3339).
    pub finished: Option<String>,
    /// The store's offset below which it is clean of the request.
    pub clean_below: u64,
    /// The segments it rewrote.
    pub rewritten: Vec<ErasureRewrite>,
    /// Records it could not read, so could not check.
    pub unreadable: u64,
}

/// One segment a store rewrote for an erasure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureRewrite {
    /// The segment (its first offset, its file name).
    pub segment: u64,
    /// Events (or entries) of the request's erased in it.
    pub entries: u64,
    /// Its bytes before.
    pub bytes_before: u64,
    /// Its bytes after.
    pub bytes_after: u64,
    /// When (RFC 3339).
    pub at: String,
    /// Counted and about to be rewritten (a pass is at it, or was when the broker stopped).
    pub pending: bool,
}
