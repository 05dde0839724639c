//! # plugins: the plugin registry and its deploy service
//!
//! Deploys (a new version of a plugin, its component stored first, then named), pause,
//! resume, remove, and the pipeline's committed state, all in `DATA_DIR/state.redb` through the
//! tables of [`crate::state`].
//!
//! May call: [`crate::state`]. The pipeline and the admin API call it.
//!
//! The counts of every plugin (`plugin_stats`) are written only by the pipeline, in the same
//! transaction as its consumer offset, so they describe exactly the events before that offset
//! (after a crash the pipeline resumes from the offset and counts nothing twice). Component
//! bytes are written through the storage seam, durably, before the registry names them.
//!
//! While the archive is on, committed aggregate rows are also queued for its `agg_<name>`
//! tables ([`outbox`]).

pub mod outbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable};
use runnel_segment::Storage;
use serde::{Deserialize, Serialize};

use crate::state::{
    AGG_ARCHIVE, AGG_META, AGG_OUTBOX, AGG_ROWS, AGG_STATE, BACKFILL, BACKFILL_ROWS,
    BACKFILL_STATE, FaultyBackend, META, PLUGINS, STATS, from_json, to_json,
};

/// What a plugin is: which world of the contract it implements, and where the pipeline runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// An enricher (`enricher` world): keeps, replaces or drops events, in deploy order.
    #[default]
    Enrich,
    /// An aggregator (`aggregator` world): maps events to rows the host folds into windows.
    Aggregate,
}

impl PluginKind {
    /// The kind's name (`enrich`, `aggregate`), as manifests and the admin API say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrich => "enrich",
            Self::Aggregate => "aggregate",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PluginKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enrich" => Ok(Self::Enrich),
            "aggregate" => Ok(Self::Aggregate),
            _ => Err(format!("kind: {s:?} is not one of enrich, aggregate")),
        }
    }
}

/// What the pipeline does with events while a plugin is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Stop the pipeline at the plugin: events stay in the log until it is fixed (redeployed)
    /// or resumed or removed. The default: nothing passes unprocessed.
    #[default]
    Hold,
    /// Pass events through the paused plugin untouched.
    Skip,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hold" => Ok(Self::Hold),
            "skip" => Ok(Self::Skip),
            other => Err(format!("policy: {other:?} is not hold or skip")),
        }
    }
}

/// Whether a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Runs on every batch.
    Running,
    /// Paused by an operator or after `plugin_pause_after_failing_batches` failing batches.
    Paused,
    /// An aggregator's first version, deployed with a backfill: it runs (and its table
    /// exists) once the backfill is swapped in.
    Backfilling,
}

/// Per-plugin limits; each at most the broker's ceiling of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLimits {
    /// Longest one call may run, in milliseconds.
    pub deadline_ms: u64,
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes_max: u64,
    /// Instructions (fuel) per call, if metered.
    pub fuel_per_call: Option<u64>,
}

/// One deployed version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// The version label (from the deploy, or 1, 2, … when none was given).
    pub version: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Size of the component.
    pub wasm_bytes: u64,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// Parameters passed to the plugin's `init`.
    pub params: Vec<(String, String)>,
    /// Limits of its calls.
    pub limits: PluginLimits,
    /// Capabilities granted (`clock`, `random`).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A plugin in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Unique name.
    pub name: String,
    /// Enricher or aggregator.
    #[serde(default)]
    pub kind: PluginKind,
    /// Order in the pipeline (deploy order of the first version).
    pub position: u64,
    /// What happens to events while it is paused.
    pub policy: Policy,
    /// Running or paused.
    pub status: Status,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// The version that runs.
    pub active: String,
    /// Every version deployed, oldest first.
    pub versions: Vec<PluginVersion>,
    /// A version being computed over history in shadow, to replace the active one when it
    /// reaches the live offset ([`crate::backfill`]).
    #[serde(default)]
    pub backfill: Option<BackfillPlan>,
    /// Changes each time a backfill replaces the aggregate's rows, so a reader that read its
    /// rows in two parts can tell whether both parts are of the same rows.
    #[serde(default)]
    pub rows_epoch: u64,
    /// The tenant that deployed it: it is given that tenant's events only and its table is
    /// that tenant's. `None`: global (deployed by an operator), over every tenant's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Where a backfill starts: every event in the history, or the windows from an event time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillFrom {
    /// The whole history: every row of the aggregate is replaced.
    All,
    /// Windows that start at or after this event time (ms): those rows are replaced, older
    /// ones stay as the active version made them.
    Since(i64),
}

impl BackfillFrom {
    /// Parses `all` or an RFC 3339 time, as `backfill_from=` gives it.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Self::All);
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Self::Since(t.timestamp_millis()))
            .map_err(|e| format!("backfill_from: {s:?} is neither all nor an RFC 3339 time: {e}"))
    }

    /// The first window start the backfill replaces.
    pub fn from_ms(self) -> i64 {
        match self {
            Self::All => i64::MIN,
            Self::Since(ms) => ms,
        }
    }

    /// As the admin API shows it: `all` or an RFC 3339 time.
    pub fn label(self) -> String {
        match self {
            Self::All => "all".into(),
            Self::Since(ms) => runnel_event::envelope::rfc3339_ms(ms),
        }
    }
}

/// A requested backfill: which version, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillPlan {
    /// The version computed in shadow (one of the record's versions, not the active one).
    pub version: String,
    /// Where it starts.
    pub from: BackfillFrom,
    /// When it was requested (RFC 3339).
    pub requested_at: String,
}

/// A planned backfill that has not started (or whose thread has not reported yet), as the
/// admin API shows it.
pub fn queued_backfill(plan: &BackfillPlan) -> runnel_client::api::BackfillInfo {
    runnel_client::api::BackfillInfo {
        version: plan.version.clone(),
        from: plan.from.label(),
        state: "queued".into(),
        offset: 0,
        target_offset: 0,
        events: 0,
        errors: 0,
        events_per_second: 0.0,
        eta_seconds: None,
        requested_at: plan.requested_at.clone(),
    }
}

/// How far a backfill got, committed with its shadow state and rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillCheckpoint {
    /// The plugin's identity.
    pub position: u64,
    /// The plan it runs.
    pub plan: BackfillPlan,
    /// The first offset not folded into the shadow state.
    pub next: u64,
    /// Events folded so far.
    pub events: u64,
    /// Events the shadow version failed on (not folded; the live version's dead letters
    /// stay as they are).
    pub errors: u64,
}

/// A finished backfill, for the swap's transaction.
#[derive(Debug, Clone)]
pub struct BackfillSwap {
    /// The aggregator's identity.
    pub name: String,
    /// Its `position`.
    pub position: u64,
    /// The plan that finished.
    pub plan: BackfillPlan,
    /// The shadow version's schema (with the new epoch).
    pub meta: AggregateMeta,
    /// The shadow engine's snapshot.
    pub snapshot: Vec<u8>,
    /// Its final rows since the last checkpoint.
    pub rows: Vec<FinalRow>,
}

impl PluginRecord {
    /// The active version.
    pub fn active_version(&self) -> &PluginVersion {
        self.versions
            .iter()
            .find(|v| v.version == self.active)
            .expect("the active version is one of the versions")
    }
}

/// What the pipeline has done with a plugin, committed with the pipeline offset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginStats {
    /// Events passed to the plugin.
    pub events_in: u64,
    /// Events it passed on (kept or replaced).
    pub events_out: u64,
    /// Events it dropped.
    pub dropped: u64,
    /// Events it failed on (sent to `dead_letters`).
    pub errors: u64,
    /// Calls that trapped, timed out, ran out of memory or broke the contract.
    pub traps: u64,
    /// Batches processed.
    pub batches: u64,
    /// Consecutive failing batches (more than half of the events failed).
    pub failing_batches_in_a_row: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The longest call so far, in milliseconds (a call past its deadline is interrupted, so
    /// this stays near `deadline_ms`).
    #[serde(default)]
    pub slowest_call_ms: f64,
    /// Time in its calls (the host's encoding and decoding around them included), in ns.
    #[serde(default)]
    pub busy_ns: u64,
    /// Aggregators: time folding its rows into windows, in ns.
    #[serde(default)]
    pub fold_ns: u64,
    /// Events passed to each version.
    pub events_in_by_version: BTreeMap<String, u64>,
    /// Aggregators: rows folded into windows.
    #[serde(default)]
    pub rows_folded: u64,
    /// Aggregators: events whose rows all fell in final windows (sent to `late_events`).
    #[serde(default)]
    pub late_events: u64,
    /// Aggregators: rows refused by a window limit (their events go to `dead_letters`).
    #[serde(default)]
    pub rows_refused: u64,
    /// Aggregators: final rows emitted.
    #[serde(default)]
    pub rows_final: u64,
}

impl PluginStats {
    /// Mean cost of the plugin per event passed to it, in ns (0 before the first).
    pub fn ns_per_event(&self) -> f64 {
        per_event(self.busy_ns, self.events_in)
    }

    /// Aggregators: mean cost of the fold per event passed to it, in ns.
    pub fn fold_ns_per_event(&self) -> f64 {
        per_event(self.fold_ns, self.events_in)
    }
}

fn per_event(ns: u64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        ns as f64 / events as f64
    }
}

/// A deploy request (from the admin API).
#[derive(Debug, Clone)]
pub struct Deploy {
    /// Plugin name.
    pub name: String,
    /// Version label, if the deployer gave one.
    pub version: Option<String>,
    /// Policy while paused (`None` keeps the current one, or `hold` for a new plugin).
    pub policy: Option<Policy>,
    /// `init` parameters.
    pub params: Vec<(String, String)>,
    /// Limits.
    pub limits: PluginLimits,
    /// Capabilities granted.
    pub capabilities: Vec<String>,
    /// What the component turned out to be.
    pub kind: PluginKind,
    /// Compute this version over history in shadow and swap it in when it is done
    /// (aggregators only), instead of making it active at once.
    pub backfill: Option<BackfillFrom>,
    /// The tenant the deploy is for (a tenant's token, or an operator's `tenant=`): a new
    /// plugin is that tenant's; an existing one must be. `None`: an operator's deploy, which
    /// makes a new plugin global and keeps an existing one's tenant.
    pub tenant: Option<String>,
}

/// An aggregator's schema as the pipeline last ran it, with the plugin's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateMeta {
    /// The plugin's `position` (its identity: a remove and a new deploy make a new one).
    pub position: u64,
    /// The version whose schema this is.
    pub version: String,
    /// The window (`tumbling 1m`, ...).
    pub window: String,
    /// Allowed lateness.
    pub allowed_lateness_ms: i64,
    /// Dimension columns.
    pub dimensions: Vec<String>,
    /// Measure columns and kinds.
    pub measures: Vec<(String, String)>,
    /// The record's `rows_epoch` these rows are of.
    #[serde(default)]
    pub rows_epoch: u64,
}

/// One aggregator's part of a pipeline commit.
#[derive(Debug, Clone)]
pub struct AggregateCommit {
    /// The aggregator.
    pub name: String,
    /// Its schema and identity.
    pub meta: AggregateMeta,
    /// Its window engine's snapshot.
    pub snapshot: Vec<u8>,
    /// Rows that became final since the last commit.
    pub rows: Vec<FinalRow>,
}

/// A final row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalRow {
    /// Window start.
    pub start: i64,
    /// Window end.
    pub end: i64,
    /// Dimension values, as a JSON array.
    pub key: Vec<u8>,
    /// Measure values, as a JSON array.
    pub values: Vec<u8>,
}

/// Errors of registry operations that the caller answers with 4xx.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No plugin of that name.
    #[error("no plugin named {0:?}")]
    NotFound(String),
    /// A request that cannot be applied.
    #[error("{0}")]
    Conflict(String),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// The hex SHA-256 of a component: its identity in the registry and on disk.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Names a plugin may not take: the tables SQL serves beside the aggregates.
pub const RESERVED_NAMES: [&str; 4] = ["events", "enriched_events", "dead_letters", "late_events"];

/// Checks a plugin name: `[a-z][a-z0-9_-]{0,63}`, and not one of [`RESERVED_NAMES`].
pub fn check_name(name: &str) -> Result<(), String> {
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "name: {name:?} is the name of a table SQL serves; choose another"
        ));
    }
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("name: {name:?} must match [a-z][a-z0-9_-]{{0,63}}"))
    }
}

/// Checks a version label: 1–64 of `[A-Za-z0-9._+-]`.
pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("version: {v:?} must be 1-64 of [A-Za-z0-9._+-]"))
    }
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Database>,
    dir: PathBuf,
    generation: Arc<AtomicU64>,
    /// Component files go through the storage seam.
    storage: Arc<dyn Storage>,
    /// Committed aggregate rows are queued for the archive ([`outbox`]).
    archive_rows: Arc<AtomicBool>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish()
    }
}

impl Registry {
    /// Opens (creating) `DATA_DIR/state.redb` and `DATA_DIR/plugins/`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(data_dir, None)
    }

    /// Like [`Registry::open`], with fault injection when `faults` is given.
    pub fn open_with(
        data_dir: &Path,
        faults: Option<Arc<runnel_segment::fault::Faults>>,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = data_dir.join("state.redb");
        let (db, storage): (_, Arc<dyn Storage>) = match faults {
            None => (Database::create(&path), Arc::new(runnel_segment::FsStorage)),
            Some(f) => (
                redb::Builder::new().create_with_backend(FaultyBackend::open(&path, f.clone())?),
                Arc::new(runnel_segment::fault::FaultyStorage::new(
                    runnel_segment::FsStorage,
                    f,
                )),
            ),
        };
        let db = db.with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(PLUGINS)?;
            txn.open_table(STATS)?;
            txn.open_table(META)?;
            txn.open_table(AGG_ARCHIVE)?;
            txn.open_table(AGG_OUTBOX)?;
            txn.open_table(AGG_META)?;
        }
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            dir,
            generation: Arc::new(AtomicU64::new(1)),
            storage,
            archive_rows: Arc::new(AtomicBool::new(false)),
        })
    }

    /// `state.redb`, for the subsystems that keep their own tables in it (reports).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Where compiled components are cached.
    pub fn compiled_cache_dir(&self) -> PathBuf {
        self.dir.join(".compiled")
    }

    /// The component file of a version.
    pub fn wasm_path(&self, name: &str, sha256: &str) -> PathBuf {
        self.dir.join(name).join(format!("{sha256}.wasm"))
    }

    /// Changes whenever the registry does; the pipeline reloads when it sees a new value.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The first log offset the pipeline has not processed.
    pub fn pipeline_offset(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("pipeline_offset")?.map_or(0, |v| v.value()))
    }

    /// Every plugin, in pipeline order.
    pub fn plugins(&self) -> anyhow::Result<Vec<PluginRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PLUGINS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(from_json::<PluginRecord>("plugin record", v.value())?);
        }
        out.sort_by_key(|p| p.position);
        Ok(out)
    }

    /// Every plugin with its stats, in pipeline order.
    pub fn list(&self) -> anyhow::Result<Vec<(PluginRecord, PluginStats)>> {
        let plugins = self.plugins()?;
        let txn = self.db.begin_read()?;
        let stats = txn.open_table(STATS)?;
        plugins
            .into_iter()
            .map(|p| {
                let s = match stats.get(p.name.as_str())? {
                    Some(v) => from_json("plugin stats", v.value())?,
                    None => PluginStats::default(),
                };
                Ok((p, s))
            })
            .collect()
    }

    /// Stores `wasm` and makes it the active version of `req.name`. Returns the record and
    /// whether anything changed (the same component with the same parameters and limits as the
    /// active version is not deployed again). The caller has checked that the component loads.
    pub fn deploy(
        &self,
        req: Deploy,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<(PluginRecord, bool), RegistryError> {
        let path = self.wasm_path(&req.name, sha256);
        if !path.exists() {
            self.storage
                .create_dir_all(path.parent().expect("a file in a directory"))
                .and_then(|()| self.storage.write_atomic(&path, wasm))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let txn = self.db.begin_write().map_err(anyhow::Error::from)?;
        let (record, changed) = {
            let mut table = txn.open_table(PLUGINS).map_err(anyhow::Error::from)?;
            let mut meta = txn.open_table(META).map_err(anyhow::Error::from)?;
            let existing: Option<PluginRecord> =
                match table.get(req.name.as_str()).map_err(anyhow::Error::from)? {
                    Some(v) => Some(from_json("plugin record", v.value())?),
                    None => None,
                };
            let version_of = |versions: &[PluginVersion]| {
                req.version
                    .clone()
                    .unwrap_or_else(|| (versions.len() + 1).to_string())
            };
            let make = |version: String| PluginVersion {
                version,
                sha256: sha256.to_string(),
                wasm_bytes: wasm.len() as u64,
                deployed_at: runnel_event::envelope::rfc3339_ms(runnel_event::now_ms()),
                params: req.params.clone(),
                limits: req.limits,
                capabilities: req.capabilities.clone(),
            };
            if let (Some(rec), Some(t)) = (&existing, &req.tenant)
                && rec.tenant.as_ref() != Some(t)
            {
                return Err(RegistryError::Conflict(format!(
                    "name: a plugin named {} exists and is not of tenant {t:?}; choose another name",
                    req.name
                )));
            }
            let (record, changed) = match existing {
                None if req.backfill.is_some() && req.kind == PluginKind::Enrich => {
                    return Err(RegistryError::Conflict(format!(
                        "backfill_from: {} is not deployed; an enricher's replay rewrites the rows an earlier version made, so deploy it first without --backfill-from",
                        req.name
                    )));
                }
                None => {
                    let position = meta
                        .get("next_position")
                        .map_err(anyhow::Error::from)?
                        .map_or(0, |v| v.value());
                    meta.insert("next_position", position + 1)
                        .map_err(anyhow::Error::from)?;
                    let v = make(version_of(&[]));
                    // A first version with a backfill runs once it is swapped in.
                    let backfill = req.backfill.map(|from| BackfillPlan {
                        version: v.version.clone(),
                        from,
                        requested_at: runnel_event::envelope::rfc3339_ms(runnel_event::now_ms()),
                    });
                    (
                        PluginRecord {
                            name: req.name.clone(),
                            kind: req.kind,
                            position,
                            policy: req.policy.unwrap_or_default(),
                            status: if backfill.is_some() {
                                Status::Backfilling
                            } else {
                                Status::Running
                            },
                            paused_reason: None,
                            active: v.version.clone(),
                            versions: vec![v],
                            backfill,
                            rows_epoch: 0,
                            tenant: req.tenant.clone(),
                        },
                        true,
                    )
                }
                Some(rec) if rec.kind != req.kind => {
                    return Err(RegistryError::Conflict(format!(
                        "component: {} is deployed as kind {} and this component is kind {}; remove it first",
                        req.name, rec.kind, req.kind
                    )));
                }
                Some(mut rec) if req.backfill.is_some() && req.kind == PluginKind::Aggregate => {
                    let active = rec.active_version();
                    if active.sha256 == sha256
                        && active.params == req.params
                        && active.limits == req.limits
                        && active.capabilities == req.capabilities
                    {
                        return Err(RegistryError::Conflict(format!(
                            "backfill_from: this component with these parameters and limits is the active version {:?} of {}; a backfill computes another version",
                            active.version, req.name
                        )));
                    }
                    let version = version_of(&rec.versions);
                    match rec.versions.iter().find(|v| v.version == version) {
                        Some(old)
                            if old.sha256 != sha256
                                || old.params != req.params
                                || old.limits != req.limits
                                || old.capabilities != req.capabilities =>
                        {
                            return Err(RegistryError::Conflict(format!(
                                "version: {version:?} of {} is already deployed with other content; give a new --version",
                                req.name
                            )));
                        }
                        Some(_) => {}
                        None => rec.versions.push(make(version.clone())),
                    }
                    rec.backfill = Some(BackfillPlan {
                        version,
                        from: req.backfill.expect("checked above"),
                        requested_at: runnel_event::envelope::rfc3339_ms(runnel_event::now_ms()),
                    });
                    (rec, true)
                }
                Some(mut rec) => {
                    let active = rec.active_version();
                    let same = active.sha256 == sha256
                        && active.params == req.params
                        && active.limits == req.limits
                        && active.capabilities == req.capabilities
                        && req.version.as_ref().is_none_or(|v| *v == active.version);
                    let policy_changes = req.policy.is_some_and(|p| p != rec.policy);
                    if same
                        && rec.status == Status::Running
                        && !policy_changes
                        && req.backfill.is_none()
                    {
                        (rec, false)
                    } else {
                        if !same {
                            let version = version_of(&rec.versions);
                            if let Some(old) = rec.versions.iter().find(|v| v.version == version) {
                                if old.sha256 != sha256
                                    || old.params != req.params
                                    || old.limits != req.limits
                                    || old.capabilities != req.capabilities
                                {
                                    return Err(RegistryError::Conflict(format!(
                                        "version: {version:?} of {} is already deployed with other content; give a new --version",
                                        req.name
                                    )));
                                }
                                rec.active = version;
                            } else {
                                let v = make(version);
                                rec.active = v.version.clone();
                                rec.versions.push(v);
                            }
                        }
                        if let Some(p) = req.policy {
                            rec.policy = p;
                        }
                        // A deploy without a backfill replaces the version being backfilled;
                        // an enricher's with one is active at once and replays its history
                        // ([`crate::backfill`]).
                        rec.backfill =
                            req.backfill.map(|from| BackfillPlan {
                                version: rec.active.clone(),
                                from,
                                requested_at: runnel_event::envelope::rfc3339_ms(
                                    runnel_event::now_ms(),
                                ),
                            });
                        rec.status = Status::Running;
                        rec.paused_reason = None;
                        (rec, true)
                    }
                }
            };
            if changed {
                table
                    .insert(req.name.as_str(), to_json(&record).as_slice())
                    .map_err(anyhow::Error::from)?;
            }
            (record, changed)
        };
        txn.commit().map_err(anyhow::Error::from)?;
        if changed {
            self.bump();
        }
        Ok((record, changed))
    }

    /// Pauses or resumes a plugin (an operator's request).
    pub fn set_status(
        &self,
        name: &str,
        status: Status,
        reason: Option<String>,
    ) -> Result<PluginRecord, RegistryError> {
        let txn = self.db.begin_write().map_err(anyhow::Error::from)?;
        let record = {
            let mut table = txn.open_table(PLUGINS).map_err(anyhow::Error::from)?;
            let mut rec: PluginRecord = match table.get(name).map_err(anyhow::Error::from)? {
                Some(v) => from_json("plugin record", v.value())?,
                None => return Err(RegistryError::NotFound(name.into())),
            };
            if rec.status == Status::Backfilling {
                return Err(RegistryError::Conflict(format!(
                    "{name} is backfilling its first version and runs once that is swapped in; remove it, or deploy it without --backfill-from to start it at the live offset"
                )));
            }
            rec.status = status;
            rec.paused_reason = if status == Status::Paused {
                reason
            } else {
                None
            };
            table
                .insert(name, to_json(&rec).as_slice())
                .map_err(anyhow::Error::from)?;
            rec
        };
        txn.commit().map_err(anyhow::Error::from)?;
        self.bump();
        Ok(record)
    }

    /// Removes a plugin, its stats and its component files.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(anyhow::Error::from)?;
        {
            let mut table = txn.open_table(PLUGINS).map_err(anyhow::Error::from)?;
            if table.remove(name).map_err(anyhow::Error::from)?.is_none() {
                return Err(RegistryError::NotFound(name.into()));
            }
            let mut stats = txn.open_table(STATS).map_err(anyhow::Error::from)?;
            stats.remove(name).map_err(anyhow::Error::from)?;
            remove_aggregate(&txn, name, self.archives_rows()).map_err(anyhow::Error::from)?;
            remove_backfill(&txn, name).map_err(anyhow::Error::from)?;
        }
        txn.commit().map_err(anyhow::Error::from)?;
        self.bump();
        let _ = std::fs::remove_dir_all(self.dir.join(name));
        Ok(())
    }

    /// Commits the pipeline's progress: the new offset, the stats of the plugins that ran, and
    /// the plugins it paused, in one transaction. Each is keyed by name and identity (the
    /// plugin's `position`), so the stats of a plugin removed and deployed again meanwhile are
    /// dropped, and a pause applies only if the version that failed is still the active one.
    pub fn commit(
        &self,
        offset: u64,
        stats: &[(String, u64, PluginStats)],
        pauses: &[Pause],
        aggregates: &[AggregateCommit],
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        let mut paused_any = false;
        let archive = self.archives_rows();
        let (mut queued, mut unqueued) = (Vec::new(), Vec::new());
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("pipeline_offset", offset)?;
            let mut plugins = txn.open_table(PLUGINS)?;
            let mut table = txn.open_table(STATS)?;
            let same = |plugins: &redb::Table<&str, &[u8]>, name: &str, position: u64| {
                anyhow::Ok(
                    plugins
                        .get(name)?
                        .map(|v| from_json::<PluginRecord>("plugin record", v.value()))
                        .transpose()?
                        .is_some_and(|r| r.position == position),
                )
            };
            for (name, position, s) in stats {
                if same(&plugins, name, *position)? {
                    table.insert(name.as_str(), to_json(s).as_slice())?;
                }
            }
            let mut state = txn.open_table(AGG_STATE)?;
            let mut metas = txn.open_table(AGG_META)?;
            let mut rows = txn.open_table(AGG_ROWS)?;
            for a in aggregates {
                if !same(&plugins, &a.name, a.meta.position)? {
                    continue;
                }
                state.insert(a.name.as_str(), a.snapshot.as_slice())?;
                let old = metas
                    .insert(a.name.as_str(), to_json(&a.meta).as_slice())?
                    .and_then(|v| from_json::<AggregateMeta>("aggregate meta", v.value()).ok());
                if archive {
                    queued.push((a, old));
                } else if !a.rows.is_empty() {
                    unqueued.push(a.name.as_str());
                }
                for r in &a.rows {
                    rows.insert(
                        (a.name.as_str(), r.start, r.end, r.key.as_slice()),
                        r.values.as_slice(),
                    )?;
                }
            }
            for p in pauses {
                paused_any |= pause_in(&mut plugins, p)?;
            }
        }
        for (a, old) in queued {
            outbox::on_commit(&txn, &a.name, old.as_ref(), &a.meta, &a.rows)?;
        }
        for name in unqueued {
            outbox::mark_gap(&txn, name)?;
        }
        txn.commit()?;
        if paused_any {
            self.bump();
        }
        Ok(())
    }

    /// An aggregator's committed engine snapshot and schema, if it has committed any.
    pub fn aggregate_state(&self, name: &str) -> anyhow::Result<Option<(AggregateMeta, Vec<u8>)>> {
        self.with_snapshot("aggregate meta", AGG_META, AGG_STATE, name)
    }

    /// A record of `name` (versioned JSON, in `records`) and the engine snapshot beside it
    /// (in `snapshots`), if both were committed.
    fn with_snapshot<T: for<'a> Deserialize<'a>>(
        &self,
        what: &str,
        records: redb::TableDefinition<&str, &[u8]>,
        snapshots: redb::TableDefinition<&str, &[u8]>,
        name: &str,
    ) -> anyhow::Result<Option<(T, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let (Ok(records), Ok(snapshots)) = (txn.open_table(records), txn.open_table(snapshots))
        else {
            return Ok(None);
        };
        let (Some(r), Some(s)) = (records.get(name)?, snapshots.get(name)?) else {
            return Ok(None);
        };
        Ok(Some((from_json(what, r.value())?, s.value().to_vec())))
    }

    /// The committed schema of every aggregator that has committed state, by name.
    pub fn aggregate_metas(&self) -> anyhow::Result<Vec<(String, AggregateMeta)>> {
        let txn = self.db.begin_read()?;
        let Ok(metas) = txn.open_table(AGG_META) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in metas.iter()? {
            let (k, v) = e?;
            out.push((
                k.value().to_string(),
                from_json("aggregate meta", v.value())?,
            ));
        }
        Ok(out)
    }

    /// Final rows of aggregate `name` whose window starts in `[from, to)`, in window order,
    /// at most `limit`; `None` when the committed rows are of another `rows_epoch` than
    /// `epoch` (a backfill replaced them since the caller looked).
    pub fn final_rows(
        &self,
        name: &str,
        epoch: u64,
        from: i64,
        to: i64,
        limit: usize,
    ) -> anyhow::Result<Option<(Vec<FinalRow>, outbox::Split)>> {
        let txn = self.db.begin_read()?;
        if let Ok(metas) = txn.open_table(AGG_META)
            && let Some(m) = metas.get(name)?
            && from_json::<AggregateMeta>("aggregate meta", m.value())?.rows_epoch != epoch
        {
            return Ok(None);
        }
        let split = match txn.open_table(AGG_ARCHIVE) {
            Ok(t) => match t.get(name)? {
                Some(v) => from_json::<outbox::AggArchive>("aggregate archive", v.value())?.split(),
                None => outbox::AggArchive::default().split(),
            },
            Err(_) => outbox::AggArchive::default().split(),
        };
        let Ok(rows) = txn.open_table(AGG_ROWS) else {
            return Ok(Some((Vec::new(), split)));
        };
        Ok(Some((rows_in(&rows, name, from, to, limit)?, split)))
    }

    /// A backfill's checkpoint and its shadow engine's snapshot, if it committed one.
    pub fn backfill_checkpoint(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(BackfillCheckpoint, Vec<u8>)>> {
        self.with_snapshot("backfill checkpoint", BACKFILL, BACKFILL_STATE, name)
    }

    /// The shadow rows a backfill of `name` committed so far, in window order, at most `limit`.
    pub fn backfill_rows(&self, name: &str, limit: usize) -> anyhow::Result<Vec<FinalRow>> {
        let txn = self.db.begin_read()?;
        let Ok(rows) = txn.open_table(BACKFILL_ROWS) else {
            return Ok(Vec::new());
        };
        rows_in(&rows, name, i64::MIN, i64::MAX, limit)
    }

    /// Forgets a backfill's checkpoint, shadow state and rows (its plan changed or went away).
    pub fn backfill_reset(&self, name: &str) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        remove_backfill(&txn, name)?;
        txn.commit()?;
        Ok(())
    }

    /// Commits a backfill's progress: its checkpoint, its shadow snapshot and its new final
    /// rows in one transaction, unless its plan is no longer the plugin's (then nothing is
    /// written and the answer is false).
    pub fn backfill_save(
        &self,
        name: &str,
        cp: &BackfillCheckpoint,
        snapshot: &[u8],
        rows: &[FinalRow],
    ) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        {
            let plugins = txn.open_table(PLUGINS)?;
            let current = plugins
                .get(name)?
                .map(|v| from_json::<PluginRecord>("plugin record", v.value()))
                .transpose()?;
            if !current
                .is_some_and(|r| r.position == cp.position && r.backfill == Some(cp.plan.clone()))
            {
                return Ok(false);
            }
            txn.open_table(BACKFILL)?
                .insert(name, to_json(cp).as_slice())?;
            txn.open_table(BACKFILL_STATE)?.insert(name, snapshot)?;
            let mut table = txn.open_table(BACKFILL_ROWS)?;
            for r in rows {
                table.insert(
                    (name, r.start, r.end, r.key.as_slice()),
                    r.values.as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(true)
    }

    /// Swaps a finished backfill in, in one transaction: the backfilled version becomes the
    /// active one, its window state and schema replace the old version's, and its rows
    /// replace the old version's rows from the plan's start on. Refused (nothing changes) when
    /// the plan is no longer the plugin's.
    pub fn backfill_swap(&self, swap: &BackfillSwap) -> Result<PluginRecord, RegistryError> {
        let txn = self.db.begin_write().map_err(anyhow::Error::from)?;
        let record = (|| -> Result<PluginRecord, RegistryError> {
            let mut plugins = txn.open_table(PLUGINS).map_err(anyhow::Error::from)?;
            let mut rec: PluginRecord = match plugins
                .get(swap.name.as_str())
                .map_err(anyhow::Error::from)?
            {
                Some(v) => from_json("plugin record", v.value())?,
                None => return Err(RegistryError::NotFound(swap.name.clone())),
            };
            if rec.position != swap.position || rec.backfill.as_ref() != Some(&swap.plan) {
                return Err(RegistryError::Conflict(format!(
                    "backfill of {} version {:?}: the plan changed meanwhile",
                    swap.name, swap.plan.version
                )));
            }
            rec.active = swap.plan.version.clone();
            rec.backfill = None;
            rec.rows_epoch += 1;
            rec.status = Status::Running;
            rec.paused_reason = None;
            plugins
                .insert(swap.name.as_str(), to_json(&rec).as_slice())
                .map_err(anyhow::Error::from)?;
            swap_rows(&txn, swap, rec.rows_epoch, self.archives_rows())
                .map_err(anyhow::Error::from)?;
            Ok(rec)
        })()?;
        txn.commit().map_err(anyhow::Error::from)?;
        self.bump();
        Ok(record)
    }

    /// Ends an enricher's replay: drops its plan unless another deploy replaced it meanwhile;
    /// true if it did.
    pub fn replay_done(&self, name: &str, plan: &BackfillPlan) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let done = {
            let mut plugins = txn.open_table(PLUGINS)?;
            let rec: Option<PluginRecord> = match plugins.get(name)? {
                Some(v) => Some(from_json("plugin record", v.value())?),
                None => None,
            };
            match rec {
                Some(mut rec) if rec.backfill.as_ref() == Some(plan) => {
                    rec.backfill = None;
                    plugins.insert(name, to_json(&rec).as_slice())?;
                    true
                }
                _ => false,
            }
        };
        txn.commit()?;
        if done {
            self.bump();
        }
        Ok(done)
    }

    /// Pauses a plugin the pipeline found failing, unless it was removed, redeployed or
    /// replaced meanwhile; true if it was paused.
    pub fn pause_failing(&self, pause: &Pause) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let paused = {
            let mut plugins = txn.open_table(PLUGINS)?;
            pause_in(&mut plugins, pause)?
        };
        txn.commit()?;
        if paused {
            self.bump();
        }
        Ok(paused)
    }

    /// The committed stats of a plugin.
    pub fn stats(&self, name: &str) -> anyhow::Result<PluginStats> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATS)?;
        match table.get(name)? {
            Some(v) => from_json("plugin stats", v.value()),
            None => Ok(PluginStats::default()),
        }
    }
}

/// Deletes an aggregate's state, schema and rows (inside a write transaction); with
/// `archive`, its archive table's rows too (in the archiver's next commit).
fn remove_aggregate(
    txn: &redb::WriteTransaction,
    name: &str,
    archive: bool,
) -> Result<(), redb::Error> {
    txn.open_table(AGG_STATE)?.remove(name)?;
    let had = txn.open_table(AGG_META)?.remove(name)?.is_some();
    txn.open_table(AGG_ROWS)?
        .retain_in(rows_from(name, i64::MIN), |_, _| false)?;
    if had && archive {
        outbox::replace(txn, name, i64::MIN)?;
    }
    Ok(())
}

/// A row's key in `aggregate_rows` and `backfill_rows`: name, window start, end, group key.
type RowKey<'a> = (&'a str, i64, i64, &'a [u8]);

/// The keys of `name`'s rows whose window starts at or after `from` (`i64::MIN`: all of them).
fn rows_from(name: &str, from: i64) -> std::ops::RangeInclusive<RowKey<'_>> {
    (name, from, i64::MIN, &[])..=(name, i64::MAX, i64::MAX, &[0xff; 8])
}

/// The rows of `name` in `table` whose window starts in `[from, to)`, at most `limit`.
fn rows_in(
    table: &impl ReadableTable<(&'static str, i64, i64, &'static [u8]), &'static [u8]>,
    name: &str,
    from: i64,
    to: i64,
    limit: usize,
) -> anyhow::Result<Vec<FinalRow>> {
    let lo: RowKey = (name, from, i64::MIN, &[]);
    let hi: RowKey = (name, to, i64::MIN, &[]);
    let mut out = Vec::new();
    for e in table.range(lo..hi)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = e?;
        let (_, start, end, key) = k.value();
        out.push(FinalRow {
            start,
            end,
            key: key.to_vec(),
            values: v.value().to_vec(),
        });
    }
    Ok(out)
}

/// The swap's state and rows (inside its write transaction): the shadow's snapshot and
/// schema, the old rows from the plan's start on replaced by the shadow's.
fn swap_rows(
    txn: &redb::WriteTransaction,
    swap: &BackfillSwap,
    epoch: u64,
    archive: bool,
) -> Result<(), redb::Error> {
    let name = swap.name.as_str();
    let meta = AggregateMeta {
        rows_epoch: epoch,
        ..swap.meta.clone()
    };
    txn.open_table(AGG_STATE)?
        .insert(name, swap.snapshot.as_slice())?;
    txn.open_table(AGG_META)?
        .insert(name, to_json(&meta).as_slice())?;
    let mut rows = txn.open_table(AGG_ROWS)?;
    rows.retain_in(rows_from(name, swap.plan.from.from_ms()), |_, _| false)?;
    {
        let shadow = txn.open_table(BACKFILL_ROWS)?;
        for e in shadow.range(rows_from(name, i64::MIN))? {
            let (k, v) = e?;
            let (_, start, end, key) = k.value();
            rows.insert((name, start, end, key), v.value())?;
        }
    }
    for r in &swap.rows {
        rows.insert(
            (name, r.start, r.end, r.key.as_slice()),
            r.values.as_slice(),
        )?;
    }
    drop(rows);
    if archive {
        // The rows before the plan's start stay as they are (in the new columns when the
        // version has other ones).
        outbox::replace(txn, name, swap.plan.from.from_ms())?;
    }
    remove_backfill(txn, name)
}

/// Deletes a backfill's checkpoint, shadow state and rows (inside a write transaction).
fn remove_backfill(txn: &redb::WriteTransaction, name: &str) -> Result<(), redb::Error> {
    txn.open_table(BACKFILL)?.remove(name)?;
    txn.open_table(BACKFILL_STATE)?.remove(name)?;
    txn.open_table(BACKFILL_ROWS)?
        .retain_in(rows_from(name, i64::MIN), |_, _| false)?;
    Ok(())
}

/// An automatic pause: which plugin (name and identity), which version failed, and why.
#[derive(Debug, Clone)]
pub struct Pause {
    /// Plugin name.
    pub name: String,
    /// Its `position` (identity across remove and deploy).
    pub position: u64,
    /// The version that failed.
    pub version: String,
    /// Why.
    pub reason: String,
}

fn pause_in(plugins: &mut redb::Table<'_, &str, &[u8]>, p: &Pause) -> anyhow::Result<bool> {
    let rec = plugins
        .get(p.name.as_str())?
        .map(|v| from_json::<PluginRecord>("plugin record", v.value()))
        .transpose()?;
    match rec {
        Some(mut rec) if rec.position == p.position && rec.active == p.version => {
            rec.status = Status::Paused;
            rec.paused_reason = Some(p.reason.clone());
            plugins.insert(p.name.as_str(), to_json(&rec).as_slice())?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, backfill: Option<BackfillFrom>) -> Deploy {
        Deploy {
            name: name.into(),
            version: None,
            policy: None,
            params: Vec::new(),
            limits: PluginLimits {
                deadline_ms: 100,
                memory_bytes_max: 16 << 20,
                fuel_per_call: None,
            },
            capabilities: Vec::new(),
            kind: PluginKind::Aggregate,
            backfill,
            tenant: None,
        }
    }

    fn row(start: i64, key: &str, n: u64) -> FinalRow {
        FinalRow {
            start,
            end: start + 60_000,
            key: key.as_bytes().to_vec(),
            values: format!("[{n}]").into_bytes(),
        }
    }

    /// A pipeline commit of `rows` of aggregate `agg` with schema `meta`.
    fn commit_rows(r: &Registry, meta: AggregateMeta, rows: Vec<FinalRow>) {
        r.commit(
            10,
            &[],
            &[],
            &[AggregateCommit {
                name: "agg".into(),
                meta,
                snapshot: vec![1],
                rows,
            }],
        )
        .unwrap()
    }

    fn meta(version: &str) -> AggregateMeta {
        AggregateMeta {
            position: 0,
            version: version.into(),
            window: "tumbling 1m".into(),
            allowed_lateness_ms: 0,
            dimensions: vec!["event_type".into()],
            measures: vec![("events".into(), "count".into())],
            rows_epoch: 0,
        }
    }

    #[test]
    fn a_backfill_is_planned_then_swapped_in_replacing_the_rows_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.deploy(req("agg", None), b"v1", &sha256_hex(b"v1"))
            .unwrap();
        let err = r
            .deploy(
                req("agg", Some(BackfillFrom::All)),
                b"v1",
                &sha256_hex(b"v1"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("active version"), "{err}");
        // v1's committed rows: two windows.
        let v1_rows = [row(0, "[\"a\"]", 1), row(120_000, "[\"a\"]", 2)];
        commit_rows(&r, meta("1"), v1_rows.to_vec());

        let from = BackfillFrom::Since(60_000);
        let (rec, changed) = r
            .deploy(req("agg", Some(from)), b"v2", &sha256_hex(b"v2"))
            .unwrap();
        assert!(changed);
        assert_eq!(rec.active, "1", "v1 stays active while v2 is backfilled");
        let plan = rec.backfill.clone().unwrap();
        assert_eq!((plan.version.as_str(), plan.from), ("2", from));

        let cp = BackfillCheckpoint {
            position: 0,
            plan: plan.clone(),
            next: 5,
            events: 5,
            errors: 0,
        };
        assert!(
            r.backfill_save("agg", &cp, &[7], &[row(120_000, "[\"a\",\"x\"]", 2)])
                .unwrap()
        );
        assert_eq!(r.backfill_checkpoint("agg").unwrap(), Some((cp, vec![7])));
        // Queries see v1's rows only.
        assert_eq!(
            r.final_rows("agg", 0, i64::MIN, i64::MAX, 10)
                .unwrap()
                .map(|(rows, _)| rows),
            Some(v1_rows.to_vec())
        );

        let swapped = r
            .backfill_swap(&BackfillSwap {
                name: "agg".into(),
                position: 0,
                plan: plan.clone(),
                meta: meta("2"),
                snapshot: vec![8],
                rows: vec![row(180_000, "[\"a\",\"x\"]", 3)],
            })
            .unwrap();
        assert_eq!(
            (
                swapped.active.as_str(),
                swapped.backfill,
                swapped.rows_epoch
            ),
            ("2", None, 1)
        );
        // A read that began before the swap learns it must read again.
        assert_eq!(
            r.final_rows("agg", 0, i64::MIN, i64::MAX, 10).unwrap(),
            None
        );
        assert_eq!(
            r.final_rows("agg", 1, i64::MIN, i64::MAX, 10)
                .unwrap()
                .map(|(rows, _)| rows),
            Some(vec![
                row(0, "[\"a\"]", 1),
                row(120_000, "[\"a\",\"x\"]", 2),
                row(180_000, "[\"a\",\"x\"]", 3),
            ]),
            "rows before the plan's start stay; the others are the backfill's"
        );
        assert_eq!(r.backfill_checkpoint("agg").unwrap(), None);
        assert!(r.backfill_rows("agg", 10).unwrap().is_empty());
        let (state_meta, state) = r.aggregate_state("agg").unwrap().unwrap();
        assert_eq!(
            (state_meta.version.as_str(), state_meta.rows_epoch),
            ("2", 1)
        );
        assert_eq!(state, vec![8]);
        // The same plan cannot be swapped in twice.
        assert!(
            r.backfill_swap(&BackfillSwap {
                name: "agg".into(),
                position: 0,
                plan,
                meta: meta("2"),
                snapshot: vec![9],
                rows: Vec::new(),
            })
            .is_err()
        );
    }

    /// With the archive on: each commit with rows queues one batch; a swap replaces the rows
    /// from its plan's UTC day on, a schema change and a remove every row; the archiver's
    /// `archive_done` deletes the batches below the table's transaction version.
    #[test]
    fn archived_rows_are_queued_once_and_replacements_cover_what_changed() {
        const DAY: i64 = 86_400_000;
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.set_archive_rows(true).unwrap();
        r.deploy(req("agg", None), b"v1", &sha256_hex(b"v1"))
            .unwrap();
        let commit = |rows: Vec<FinalRow>, m: AggregateMeta| commit_rows(&r, m, rows);
        commit(vec![row(0, "[\"a\"]", 1)], meta("1"));
        commit(Vec::new(), meta("1"));
        commit(vec![row(DAY, "[\"a\"]", 2)], meta("1"));
        let batches = |p: &outbox::Pending| -> Vec<(u64, Vec<i64>)> {
            p.batches
                .iter()
                .map(|(b, rows)| (*b, rows.iter().map(|r| r.start).collect()))
                .collect()
        };
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(batches(&p[0]), vec![(0, vec![0]), (1, vec![DAY])]);
        assert_eq!(p[0].state.replace, None);
        assert_eq!(
            batches(&r.archive_pending(1).unwrap()[0]),
            vec![(0, vec![0])]
        );
        assert_eq!(r.archive_done("agg", 1, 1, None).unwrap(), 0);
        assert_eq!(
            batches(&r.archive_pending(1000).unwrap()[0]),
            vec![(1, vec![DAY])]
        );

        // A backfill from an hour into the second day: the rows from then on are queued, the
        // batch not yet committed dropped (the replacement covers it).
        let from = BackfillFrom::Since(DAY + 3_600_000);
        let (rec, _) = r
            .deploy(req("agg", Some(from)), b"v2", &sha256_hex(b"v2"))
            .unwrap();
        r.backfill_swap(&BackfillSwap {
            name: "agg".into(),
            position: 0,
            plan: rec.backfill.unwrap(),
            meta: meta("2"),
            snapshot: vec![2],
            rows: vec![row(DAY + 7_200_000, "[\"a\"]", 5)],
        })
        .unwrap();
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(batches(&p[0]), vec![(2, vec![DAY + 7_200_000])]);
        assert_eq!(
            p[0].state.replace,
            Some(outbox::Replace {
                from: DAY + 3_600_000,
                batch: 2
            })
        );
        r.archive_done("agg", 3, 2, None).unwrap();
        assert!(r.archive_pending(1000).unwrap().is_empty());

        // Other columns: every row again, in the new schema.
        let mut m3 = meta("3");
        m3.dimensions.push("platform".into());
        commit(vec![row(2 * DAY, "[\"a\",\"ios\"]", 1)], m3.clone());
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(
            batches(&p[0]),
            vec![(3, vec![0, DAY, DAY + 7_200_000, 2 * DAY])]
        );
        assert_eq!(
            p[0].state.replace,
            Some(outbox::Replace {
                from: i64::MIN,
                batch: 3
            })
        );
        assert_eq!(p[0].meta.as_ref().unwrap().dimensions.len(), 2);

        // Committed, with nothing left queued: the rows older than the retention go, and the
        // split moves up; reads take the table below it.
        assert_eq!(r.archive_done("agg", 4, 3, Some(DAY + 1)).unwrap(), 2);
        let epoch = r.aggregate_state("agg").unwrap().unwrap().0.rows_epoch;
        let (rows, split) = r
            .final_rows("agg", epoch, i64::MIN, i64::MAX, 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.start).collect::<Vec<_>>(),
            vec![DAY + 7_200_000, 2 * DAY]
        );
        assert_eq!(
            split,
            outbox::Split {
                below: DAY + 1,
                version: 3
            }
        );
        // A row final below the split stays in state.redb until its batch is committed.
        commit(vec![row(0, "[\"b\",\"web\"]", 1)], m3.clone());
        let (rows, _) = r
            .final_rows("agg", epoch, i64::MIN, 1, 10)
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(r.archive_done("agg", 5, 4, Some(DAY + 1)).unwrap(), 1);
        let (rows, split) = r
            .final_rows("agg", epoch, i64::MIN, 1, 10)
            .unwrap()
            .unwrap();
        assert!(rows.is_empty());
        assert_eq!(split.version, 4);

        // Rows committed while the archive is off are queued again once it is on: every row
        // from the split on, replacing the table's.
        r.set_archive_rows(false).unwrap();
        commit(vec![row(3 * DAY, "[\"a\",\"ios\"]", 1)], m3.clone());
        assert!(r.archive_pending(1000).unwrap()[0].batches.is_empty());
        r.set_archive_rows(true).unwrap();
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(
            batches(&p[0]),
            vec![(5, vec![DAY + 7_200_000, 2 * DAY, 3 * DAY])]
        );
        assert_eq!(
            p[0].state.replace,
            Some(outbox::Replace {
                from: DAY + 1,
                batch: 5
            })
        );
        assert!(!p[0].state.gap);
        r.archive_done("agg", 6, 5, None).unwrap();

        // A remove: an empty batch that replaces every row, and no schema.
        r.remove("agg").unwrap();
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(batches(&p[0]), vec![(6, vec![])]);
        assert_eq!(p[0].state.replace.map(|r| r.from), Some(i64::MIN));
        assert!(p[0].meta.is_none());
    }

    /// Rows an aggregate committed before the archive was ever on are queued when it is
    /// turned on, all of them, replacing the table's, even if the aggregate commits nothing
    /// more; its next rows follow in a batch of their own.
    #[test]
    fn rows_from_before_the_archive_are_queued_when_it_is_turned_on() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        r.deploy(req("agg", None), b"v1", &sha256_hex(b"v1"))
            .unwrap();
        let commit = |rows: Vec<FinalRow>| commit_rows(&r, meta("1"), rows);
        let batches = |p: &outbox::Pending| -> Vec<(u64, Vec<i64>)> {
            p.batches
                .iter()
                .map(|(b, rows)| (*b, rows.iter().map(|r| r.start).collect()))
                .collect()
        };
        commit(vec![row(0, "[\"a\"]", 1)]);
        assert!(r.archive_pending(1000).unwrap().is_empty());
        r.set_archive_rows(true).unwrap();
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(batches(&p[0]), vec![(0, vec![0])]);
        assert_eq!(p[0].state.replace.map(|r| r.from), Some(i64::MIN));
        commit(vec![row(60_000, "[\"a\"]", 2)]);
        let p = r.archive_pending(1000).unwrap();
        assert_eq!(batches(&p[0]), vec![(0, vec![0]), (1, vec![60_000])]);
    }

    /// A first version deployed with a backfill waits (no pause or resume) until its swap,
    /// which starts it; an enricher's is refused.
    #[test]
    fn a_first_version_with_a_backfill_runs_once_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let mut enricher = req("enr", Some(BackfillFrom::All));
        enricher.kind = PluginKind::Enrich;
        let err = r
            .deploy(enricher.clone(), b"e1", &sha256_hex(b"e1"))
            .unwrap_err();
        assert!(err.to_string().contains("is not deployed"), "{err}");
        // Deployed, its replay runs the active version: a new one, or the same again.
        let mut plain = enricher.clone();
        plain.backfill = None;
        r.deploy(plain, b"e1", &sha256_hex(b"e1")).unwrap();
        for (wasm, active) in [(b"e1", "1"), (b"e2", "2")] {
            let (rec, changed) = r.deploy(enricher.clone(), wasm, &sha256_hex(wasm)).unwrap();
            assert!(changed);
            assert_eq!(rec.active, active);
            assert_eq!(rec.status, Status::Running);
            let plan = rec.backfill.clone().expect("a replay plan");
            assert_eq!(
                (plan.version.as_str(), plan.from),
                (active, BackfillFrom::All)
            );
            assert!(r.replay_done("enr", &plan).unwrap());
            assert!(!r.replay_done("enr", &plan).unwrap(), "done once");
        }

        let (rec, changed) = r
            .deploy(
                req("agg", Some(BackfillFrom::All)),
                b"v1",
                &sha256_hex(b"v1"),
            )
            .unwrap();
        assert!(changed);
        assert_eq!(rec.status, Status::Backfilling);
        let plan = rec.backfill.clone().expect("a plan");
        assert_eq!((plan.version.as_str(), plan.from), ("1", BackfillFrom::All));
        let err = r.set_status("agg", Status::Running, None).unwrap_err();
        assert!(err.to_string().contains("backfilling"), "{err}");
        assert!(r.aggregate_state("agg").unwrap().is_none());

        let swapped = r
            .backfill_swap(&BackfillSwap {
                name: "agg".into(),
                position: rec.position,
                plan,
                meta: meta("1"),
                snapshot: vec![3],
                rows: vec![row(0, "[\"a\"]", 4)],
            })
            .unwrap();
        assert_eq!(
            (swapped.status, swapped.active.as_str()),
            (Status::Running, "1")
        );
        let (rows, _) = r
            .final_rows("agg", swapped.rows_epoch, i64::MIN, i64::MAX, 10)
            .unwrap()
            .unwrap();
        assert_eq!(rows, vec![row(0, "[\"a\"]", 4)]);
        r.set_status("agg", Status::Paused, None).unwrap();
    }

    #[test]
    fn backfill_from_is_all_or_a_time() {
        assert_eq!(BackfillFrom::parse("all"), Ok(BackfillFrom::All));
        assert_eq!(
            BackfillFrom::parse("2026-11-01T00:00:00Z"),
            Ok(BackfillFrom::Since(1_793_491_200_000))
        );
        let err = BackfillFrom::parse("yesterday").unwrap_err();
        assert!(err.starts_with("backfill_from:"), "{err}");
    }
}
