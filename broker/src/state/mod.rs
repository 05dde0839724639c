//! # state: every redb table of the broker, in one place
//!
//! `DATA_DIR/state.redb` holds what is small and must be transactional. This module lists every
//! table with its typed key and value; the services that own them ([`crate::plugins`] for the
//! plugin registry, the pipeline's commit through it) read and write them only through these
//! definitions and [`to_json`] / [`from_json`]. This is where erasure and tenancy look for
//! everything the broker keeps about an event or a user.
//!
//! | table | key | value | written by |
//! | --- | --- | --- | --- |
//! | [`PLUGINS`] | plugin name | [`crate::plugins::PluginRecord`] (every version, the active one, status, policy, order) | deploy, pause, resume, remove |
//! | [`STATS`] | plugin name | [`crate::plugins::PluginStats`] | the pipeline's commit (with its offset) |
//! | [`META`] | `pipeline_offset`, `next_position` | u64 | the pipeline's commit; deploy |
//! | [`AGG_STATE`] | aggregate name | a `runnel-window` snapshot (its own checksummed format) | the pipeline's commit |
//! | [`AGG_META`] | aggregate name | [`crate::plugins::AggregateMeta`] | the pipeline's commit |
//! | [`AGG_ROWS`] | (aggregate, window start, window end, dimensions as JSON) | measure values as JSON | the pipeline's commit |
//! | [`BACKFILL`] | aggregate name | [`crate::plugins::BackfillCheckpoint`] (how far a backfill got) | the backfill's checkpoints |
//! | [`BACKFILL_STATE`] | aggregate name | the shadow engine's `runnel-window` snapshot | the backfill's checkpoints |
//! | [`BACKFILL_ROWS`] | as [`AGG_ROWS`] | as [`AGG_ROWS`]: the shadow version's final rows | the backfill's checkpoints; moved to [`AGG_ROWS`] by the swap |
//! | [`AGG_ARCHIVE`] | aggregate name | [`crate::plugins::outbox::AggArchive`] (the next batch's number, a pending replacement) | the pipeline's commit, the swap, remove; the archiver |
//! | [`AGG_OUTBOX`] | (aggregate, batch number) | final rows not yet in `agg_<name>` ([`crate::plugins::outbox`]) | the pipeline's commit, the swap, remove; deleted by the archiver after its Delta commit |
//! | [`REPORTS`] | report name | [`crate::reports::queue::ReportRecord`] (every version of the definition, how far its schedule is queued) | `report deploy`; the scheduler |
//! | [`REPORT_RUNS`] | run id | [`crate::reports::queue::RunRecord`] | the run request, the scheduler, the workers |
//! | [`REPORT_QUEUE`] | (not before, run id) | `()`: the queued runs | with [`REPORT_RUNS`] |
//! | [`REPORT_KEYS`] | `request/REPORT/KEY` (an `Idempotency-Key`), `schedule/REPORT/FIRE_MS` | run id: the one run the key names | with the run it names |
//! | [`REPORT_HISTORY`] | (report, created, run id) | `()`: each report's runs in order | with [`REPORT_RUNS`] |
//! | [`REPORT_DELIVERIES`] | (next attempt, run id) | `()`: the webhook deliveries not yet done | with [`REPORT_RUNS`] |
//! | [`TOKENS`] | SHA-256 of a token, hex | [`crate::auth::TokenRecord`] (id, role, tenant; never the token) | `token create`, `token revoke`; the first start |
//! | [`AGENTS`] | agent id | [`crate::auth::agents::AgentRecord`] (tenant, certificates, revocations) | `agent enroll`, `agent revoke`; a connection with a certificate not seen before |
//! | [`SCHEMAS`] | event type | [`crate::schemas`]' versions of its schema | `schema register` |
//! | [`SCHEMA_SETTINGS`] | `generation`, `default_mode`, mode per type | the registry's settings | `schema register`, `schema mode` |
//! | [`REDRIVES`], [`REDRIVE_BATCHES`], [`REDRIVE_SEQS`] | dead-letter id; (agent, batch); agent | [`crate::dlq`]'s marks and pending batches | `dlq redrive` |
//! | [`DQ_CHECKS`] | event type | [`crate::dq::Checks`] | `dq set`, `dq remove`; the config at start |
//! | [`ERASURES`] | request id | [`crate::erasure::Request`] (keyed hashes of the identity, each store's progress and rewrites) | `erase`; the erasure passes |
//!
//! **Versioned values**: a record ([`PLUGINS`], [`STATS`], [`AGG_META`]) is stored as one
//! version byte ([`VALUE_VERSION`]) then its JSON; one written before versions (plain JSON,
//! first byte `{`) reads as version 0, the same shape. [`AGG_ROWS`] keys and values are plain
//! JSON arrays whose shape is the aggregate's schema in [`AGG_META`].
//!
//! Component bytes live beside the database in `DATA_DIR/plugins/NAME/SHA256.wasm`, written
//! through the storage seam before the registry names them; compiled components are cached in
//! `DATA_DIR/plugins/.compiled/`.
//!
//! May call: nothing else of the broker.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Plugin records, by name.
pub const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
/// Plugin counts, by name (committed with the pipeline offset).
pub const STATS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_stats");
/// `pipeline_offset` (the first log offset the pipeline has not processed), `next_position`
/// (deploy order).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Window-engine snapshots of the aggregators, by name (committed with the pipeline offset).
pub const AGG_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("aggregate_state");
/// Each aggregator's schema and identity, by name.
pub const AGG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("aggregate_meta");
/// Final rows: (aggregate, window start, window end, dimension values as a JSON array) to the
/// measure values as a JSON array.
pub const AGG_ROWS: TableDefinition<(&str, i64, i64, &[u8]), &[u8]> =
    TableDefinition::new("aggregate_rows");

/// A running backfill's checkpoint, by aggregate name (with its shadow state and rows below).
pub const BACKFILL: TableDefinition<&str, &[u8]> = TableDefinition::new("backfill");
/// The shadow engine's snapshot at the checkpoint, by aggregate name.
pub const BACKFILL_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("backfill_state");
/// The shadow version's final rows so far, keyed as [`AGG_ROWS`].
pub const BACKFILL_ROWS: TableDefinition<(&str, i64, i64, &[u8]), &[u8]> =
    TableDefinition::new("backfill_rows");

/// Each aggregate's place in its archive table `agg_<name>`, by aggregate name.
pub const AGG_ARCHIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("aggregate_archive");
/// Final rows the archiver has still to commit to `agg_<name>`: (aggregate, batch number) to
/// the batch's rows, encoded by [`crate::plugins::outbox`].
pub const AGG_OUTBOX: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("aggregate_outbox");

/// Report definitions, by name ([`crate::reports::queue::ReportRecord`]).
pub const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
/// Report runs, by id ([`crate::reports::queue::RunRecord`]).
pub const REPORT_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("report_runs");
/// The queued runs: (not before, UTC ms; run id).
pub const REPORT_QUEUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("report_queue");
/// The keys that name one run each: a request's `Idempotency-Key`, a schedule's fire time.
pub const REPORT_KEYS: TableDefinition<&str, &str> = TableDefinition::new("report_keys");
/// Each report's runs in the order they were accepted: (report, created, run id).
pub const REPORT_HISTORY: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("report_history");
/// The webhook deliveries still to make: (next attempt, UTC ms; run id).
pub const REPORT_DELIVERIES: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("report_deliveries");

/// Schemas, by event type ([`crate::schemas::SchemaRecord`]).
pub const SCHEMAS: TableDefinition<&str, &[u8]> = TableDefinition::new("schemas");
/// The schema registry's default mode and generation.
pub const SCHEMA_SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("schema_settings");

/// Re-driven dead letters, by entry id ([`crate::dlq`]).
pub const REDRIVES: TableDefinition<u64, &[u8]> = TableDefinition::new("redrives");
/// Re-drive batches, by (agent, sequence number): their entries, and where the log put them.
pub const REDRIVE_BATCHES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("redrive_batches");
/// The next re-drive sequence number of each agent.
pub const REDRIVE_SEQS: TableDefinition<&str, u64> = TableDefinition::new("redrive_seqs");

/// Data-quality checks, by event type ([`crate::dq::Checks`]).
pub const DQ_CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("dq_checks");

/// Erasure requests and their audit, by id ([`crate::erasure::Request`]: keyed hashes of the
/// identity values, never the values).
pub const ERASURES: TableDefinition<u64, &[u8]> = TableDefinition::new("erasures");

/// API tokens, by the SHA-256 of the token ([`crate::auth::TokenRecord`]).
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Agents and their certificates, by agent id ([`crate::auth::agents::AgentRecord`]).
pub const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");

/// The version of the values this build writes.
pub const VALUE_VERSION: u8 = 1;

/// A value as stored: [`VALUE_VERSION`], then its JSON.
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    serde_json::to_writer(&mut out, v).expect("serializing to memory");
    out
}

/// A stored value (`what` names it in the error): versioned, or plain JSON from before versions.
pub fn from_json<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> anyhow::Result<T> {
    let json = match bytes.first() {
        Some(b'{' | b'[' | b'"') => bytes,
        Some(&VALUE_VERSION) => &bytes[1..],
        Some(v) => anyhow::bail!(
            "state.redb: {what} has value version {v}; this build reads {VALUE_VERSION} (is the broker older than its data?)"
        ),
        None => anyhow::bail!("state.redb: {what} is empty"),
    };
    serde_json::from_slice(json).with_context(|| format!("state.redb: unreadable {what}"))
}

/// Writes `bytes` to `path`, readable by its owner only, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A redb storage backend that fails on command: the seam through which tests inject an fsync
/// or write failure into the registry and the pipeline's commits.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: redb::backends::FileBackend,
    faults: Arc<runnel_segment::fault::Faults>,
}

impl FaultyBackend {
    /// Wraps the file backend of `path`; `faults.fail_sync` makes every sync and write fail.
    pub fn open(path: &Path, faults: Arc<runnel_segment::fault::Faults>) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            inner: redb::backends::FileBackend::new(file)?,
            faults,
        })
    }

    fn check(&self) -> std::io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other("injected storage failure"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_versioned_and_old_ones_still_read() {
        let v = serde_json::json!({"a": 1});
        let stored = to_json(&v);
        assert_eq!(stored[0], VALUE_VERSION);
        assert_eq!(from_json::<serde_json::Value>("x", &stored).unwrap(), v);
        assert_eq!(
            from_json::<serde_json::Value>("x", br#"{"a":1}"#).unwrap(),
            v
        );
        let err = from_json::<serde_json::Value>("plugin p", &[9, b'{', b'}']).unwrap_err();
        assert!(err.to_string().contains("value version 9"), "{err}");
    }
}
