//! # backfill: a new aggregator version computed over history, then swapped in
//!
//! `runnel plugin deploy FILE --backfill-from all|TIME` records a plan on the plugin
//! ([`crate::plugins::BackfillPlan`]); the active version keeps running and serving. This
//! thread runs the plan: it loads the new version and instances of its own of the enrichers
//! (a [`Shadow`]) and folds the history into shadow windows, in offset order: the archive's
//! part of `events` below the log's first offset ([`crate::query::events_between`]), then
//! the log. Every `backfill_checkpoint_interval_ms` it commits its offset, window state and new
//! rows to tables of their own (`backfill*` in [`crate::state`]) that no query reads, so a
//! crash resumes from there and changes nothing users see.
//!
//! Within `backfill_handoff_events` of the pipeline's committed offset it hands the shadow to
//! the pipeline thread, which folds the last events and swaps it in
//! ([`crate::pipeline::aggregates::Query::Swap`]): one redb transaction makes the version
//! active with the shadow's windows, and its rows replace the old version's from the plan's
//! start on. A reader of an aggregate sees the old version's rows or the new one's, never a
//! mix ([`crate::pipeline::aggregates::read_rows`]).
//!
//! The shadow never reads past the pipeline's committed offset (what the pipeline has folded
//! and committed is what the swap takes over from), and the archiver deletes no log segment the
//! backfill has still to read ([`Progress::floor`]). One backfill runs at a time, in deploy
//! order of the plugins; another deploy of the plugin replaces its plan (and starts over), a
//! remove drops it.
//!
//! May call: [`crate::plugins`] (plans, checkpoints), [`crate::log`] (read), [`crate::pipeline`]
//! (the shadow chain, the hand-off), [`crate::query`] (the archive's part of `events`).

mod replay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_array::RecordBatch;
use runnel_batch::{BatchWriter, Field};
use runnel_host::Runtime;
use runnel_window::Engine;

use crate::log::{BrokerLog, SourceBatch};
use crate::pipeline::aggregates::{AggRun, Query, to_final};
use crate::pipeline::shadow::Shadow;
use crate::pipeline::{Isolation, PIPELINE_BATCH_BYTES_MAX, Shared as PipelineShared, host_limits};
use crate::plugins::{
    BackfillCheckpoint, BackfillPlan, PluginKind, PluginRecord, Registry, Status,
};

pub use runnel_client::api::BackfillInfo;

/// How long the thread sleeps when there is no plan.
const IDLE: Duration = Duration::from_millis(200);
/// How long it waits after a failure before it starts again from its checkpoint.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long it waits for the pipeline thread's answer to a hand-off.
const SWAP_TIMEOUT: Duration = Duration::from_secs(600);

/// Backfill settings (from the broker configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most events per batch (`pipeline_batch_events`).
    pub batch_events: usize,
    /// How often progress is committed (`backfill_checkpoint_interval_ms`).
    pub checkpoint_interval: Duration,
    /// How close to the pipeline the hand-off happens (`backfill_handoff_events`).
    pub handoff_events: u64,
    /// Most events read from the archive at once (`backfill_archive_read_events`).
    pub archive_read_events: u64,
    /// The aggregates' window settings.
    pub window: runnel_window::Settings,
    /// The plugins' isolation bounds.
    pub isolation: Isolation,
    /// Which tenant each agent is of (a tenant's aggregator is given its events only).
    pub tenants: Arc<crate::auth::Tenants>,
}

/// What the backfill shares with the admin API and the archiver.
#[derive(Debug)]
pub struct Progress {
    /// The running backfill, by plugin name, as `runnel plugin list` shows it.
    pub current: Mutex<Option<(String, BackfillInfo)>>,
    /// The lowest log offset the backfill has still to read (`u64::MAX`: none); the archiver
    /// deletes no segment at or above it.
    pub floor: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            current: Mutex::new(None),
            floor: AtomicU64::new(u64::MAX),
        }
    }
}

impl Progress {
    /// The running backfill of plugin `name`, if it is the one running.
    pub fn of(&self, name: &str) -> Option<BackfillInfo> {
        match &*self.current.lock().expect("lock poisoned") {
            Some((n, info)) if n == name => Some(info.clone()),
            _ => None,
        }
    }

    fn set(&self, name: &str, info: BackfillInfo) {
        let plugin = name.to_string();
        metrics::gauge!("runnel_backfill_events", "plugin" => plugin.clone())
            .set(info.events as f64);
        metrics::gauge!("runnel_backfill_events_per_second", "plugin" => plugin.clone())
            .set(info.events_per_second);
        metrics::gauge!("runnel_backfill_eta_seconds", "plugin" => plugin.clone())
            .set(info.eta_seconds.unwrap_or(f64::NAN));
        metrics::gauge!("runnel_backfill_lag_events", "plugin" => plugin)
            .set(info.target_offset.saturating_sub(info.offset) as f64);
        *self.current.lock().expect("lock poisoned") = Some((name.to_string(), info));
    }

    fn clear(&self) {
        self.floor.store(u64::MAX, Ordering::Release);
        *self.current.lock().expect("lock poisoned") = None;
    }
}

/// Where the archive's part of the history is read: the query layer's `events`.
#[derive(Debug, Clone)]
pub struct ArchiveSource {
    /// The archiver's views (an enricher's replay reads `enriched_events` and hands its rows
    /// over).
    pub shared: Arc<crate::archive::Shared>,
    /// The tables of the query layer.
    pub tables: Arc<crate::query::Tables>,
    /// The runtime its reads run on (the thread itself is not a runtime thread).
    pub handle: tokio::runtime::Handle,
}

/// The running backfill thread.
#[derive(Debug)]
pub struct Backfill {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backfill {
    /// Starts the backfill thread.
    pub fn start(mut worker: Worker) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("backfill".into())
            .spawn(move || worker.run(&s))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops at the next batch boundary (after a checkpoint) and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backfill {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the backfill thread works with.
pub struct Worker {
    /// The plugin runtime.
    pub runtime: Runtime,
    /// Plans, checkpoints, components.
    pub registry: Registry,
    /// The log (the history above its first offset).
    pub log: BrokerLog,
    /// The pipeline: its committed offset, and the hand-off.
    pub pipeline: Arc<PipelineShared>,
    /// The archive's part of the history, when the archive is on.
    pub archive: Option<ArchiveSource>,
    /// What it shares.
    pub progress: Arc<Progress>,
    /// Its settings.
    pub settings: Settings,
}

/// How a run of a plan ended.
enum Ended {
    /// Swapped in, or the plan changed or went away.
    Done,
    /// The broker is stopping.
    Stopped,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let plan = match self.next_plan() {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.progress.clear();
                    std::thread::sleep(IDLE);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "backfill: reading the registry");
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                    continue;
                }
            };
            let (record, plan) = plan;
            match self.run_plan(&record, &plan, stop) {
                Ok(Ended::Done) => {}
                Ok(Ended::Stopped) => break,
                Err(e) => {
                    let reason = format!("{e:#}");
                    tracing::error!(plugin = %record.name, version = %plan.version, error = %reason, "backfill failed; retrying from its checkpoint");
                    metrics::counter!("runnel_backfill_failures_total", "plugin" => record.name.clone())
                        .increment(1);
                    if let Some(mut info) = self.progress.of(&record.name) {
                        info.state = format!("failed: {reason}");
                        self.progress.set(&record.name, info);
                    }
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                }
            }
        }
    }

    /// The first plugin (in deploy order) with a backfill or a replay to run.
    fn next_plan(&self) -> anyhow::Result<Option<(PluginRecord, BackfillPlan)>> {
        Ok(self.registry.plugins()?.into_iter().find_map(|r| {
            let plan = r.backfill.clone()?;
            Some((r, plan))
        }))
    }

    /// Whether `plan` is still the plugin's.
    fn still_planned(&self, record: &PluginRecord, plan: &BackfillPlan) -> anyhow::Result<bool> {
        Ok(self.registry.plugins()?.iter().any(|r| {
            r.name == record.name
                && r.position == record.position
                && r.backfill.as_ref() == Some(plan)
        }))
    }

    fn run_plan(
        &mut self,
        record: &PluginRecord,
        plan: &BackfillPlan,
        stop: &AtomicBool,
    ) -> anyhow::Result<Ended> {
        if record.kind == PluginKind::Enrich {
            return self.run_replay(record, plan, stop);
        }
        let mut shadow = self.load(record, plan)?;
        tracing::info!(plugin = %record.name, version = %plan.version, from = %plan.from.label(), offset = shadow.next, "backfill running");
        let (started, events_at_start) = (Instant::now(), shadow.events);
        let mut generation = self.registry.generation();
        let mut last_checkpoint = Instant::now();
        loop {
            if stop.load(Ordering::Acquire) {
                self.save(&mut shadow)?;
                return Ok(Ended::Stopped);
            }
            if self.registry.generation() != generation {
                generation = self.registry.generation();
                if !self.still_planned(record, plan)? {
                    tracing::info!(plugin = %record.name, version = %plan.version, "backfill cancelled: the plugin was redeployed or removed");
                    self.registry.backfill_reset(&record.name)?;
                    self.progress.clear();
                    return Ok(Ended::Done);
                }
            }
            let live = self.pipeline.offset.load(Ordering::Acquire);
            let in_log = shadow.next >= self.log.start_offset();
            let rate = (shadow.events - events_at_start) as f64
                / started.elapsed().as_secs_f64().max(1e-3);
            self.publish(&shadow, plan, live, rate, "running");
            if in_log && shadow.next.saturating_add(self.settings.handoff_events) >= live {
                if !self.save(&mut shadow)? {
                    return Ok(Ended::Done);
                }
                self.publish(&shadow, plan, live, rate, "swapping");
                return self.hand_off(shadow);
            }
            self.progress.floor.store(shadow.next, Ordering::Release);
            let src = self.read(shadow.next, live, i64::MIN)?;
            shadow.fold_batch(src)?;
            if last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                if !self.save(&mut shadow)? {
                    return Ok(Ended::Done);
                }
                last_checkpoint = Instant::now();
            }
        }
    }

    /// The shadow chain of `plan`: the new version, the running enrichers, and the windows
    /// of the last checkpoint (or empty ones, from offset 0).
    fn load(&self, record: &PluginRecord, plan: &BackfillPlan) -> anyhow::Result<Shadow> {
        let name = &record.name;
        let version = record
            .versions
            .iter()
            .find(|v| v.version == plan.version)
            .with_context(|| format!("{name} has no version {:?}", plan.version))?;
        let load_wasm = |name: &str, sha: &str| {
            let path = self.registry.wasm_path(name, sha);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let limits = host_limits(
            &version.limits,
            &version.capabilities,
            self.settings.isolation,
        );
        let plugin = self
            .runtime
            .load_aggregator(
                name,
                &load_wasm(name, &version.sha256)?,
                version.params.clone(),
                limits,
            )
            .map_err(|e| anyhow::anyhow!("loading {name} version {}: {e}", plan.version))?;
        let schema = plugin.schema().clone();
        let window = self.settings.window.clone();
        let fresh = || {
            Engine::new(schema.clone(), window.clone())
                .map_err(|e| anyhow::anyhow!("{name} version {}: schema: {e}", plan.version))
        };
        let (engine, next, events, errors) = match self.registry.backfill_checkpoint(name)? {
            Some((cp, snapshot)) if cp.position == record.position && cp.plan == *plan => {
                let engine = Engine::restore(schema.clone(), window.clone(), &snapshot)
                    .map_err(|e| anyhow::anyhow!("{name}: the backfill's checkpoint: {e}"))?;
                (engine, cp.next, cp.events, cp.errors)
            }
            _ => {
                // Another plan's leftovers, or none: start over.
                self.registry.backfill_reset(name)?;
                (fresh()?, 0, 0, 0)
            }
        };
        let mut enrichers = Vec::new();
        for r in self.registry.plugins()? {
            if r.kind != PluginKind::Enrich || r.status != Status::Running {
                continue;
            }
            let v = r.active_version();
            let limits = host_limits(&v.limits, &v.capabilities, self.settings.isolation);
            enrichers.push(
                self.runtime
                    .load_enricher(
                        &r.name,
                        &load_wasm(&r.name, &v.sha256)?,
                        v.params.clone(),
                        limits,
                    )
                    .map_err(|e| anyhow::anyhow!("loading enricher {}: {e}", r.name))?,
            );
        }
        let mut as_swapped = record.clone();
        as_swapped.active = plan.version.clone();
        as_swapped.backfill = None;
        Ok(Shadow {
            record: as_swapped,
            plan: plan.clone(),
            enrichers,
            run: AggRun {
                plugin,
                engine,
                pending: Vec::new(),
            },
            next,
            events,
            errors,
            tenants: self.settings.tenants.clone(),
        })
    }

    /// Commits the shadow's progress; false if the plan is no longer the plugin's.
    fn save(&self, shadow: &mut Shadow) -> anyhow::Result<bool> {
        let cp = BackfillCheckpoint {
            position: shadow.record.position,
            plan: shadow.plan.clone(),
            next: shadow.next,
            events: shadow.events,
            errors: shadow.errors,
        };
        let rows: Vec<_> = shadow.run.pending.iter().map(to_final).collect();
        let saved = self.registry.backfill_save(
            &shadow.record.name,
            &cp,
            &shadow.run.engine.snapshot(),
            &rows,
        )?;
        if saved {
            shadow.run.pending.clear();
        }
        Ok(saved)
    }

    /// Hands the shadow to the pipeline thread and waits for the swap.
    fn hand_off(&self, shadow: Shadow) -> anyhow::Result<Ended> {
        let name = shadow.record.name.clone();
        let (tx, rx) = mpsc::channel();
        self.pipeline
            .ask(Query::Swap {
                shadow: Box::new(shadow),
                reply: tx,
            })
            .context("the pipeline is not running")?;
        match rx.recv_timeout(SWAP_TIMEOUT) {
            Ok(Ok(())) => {
                metrics::counter!("runnel_backfill_swaps_total", "plugin" => name).increment(1);
                self.progress.clear();
                Ok(Ended::Done)
            }
            Ok(Err(e)) => anyhow::bail!("swap: {e}"),
            Err(_) => anyhow::bail!("swap: the pipeline did not answer"),
        }
    }

    /// The next events of the history from offset `next`, never at or past `live`: from the
    /// archive below the log's first offset (only those with `timestamp` at or after
    /// `since_ms`, so its older days are not read), else from the log (every event).
    fn read(&self, next: u64, live: u64, since_ms: i64) -> anyhow::Result<SourceBatch> {
        let log_start = self.log.start_offset();
        if next < log_start {
            let archive = self.archive.as_ref().with_context(|| {
                format!(
                    "offsets {next}..{log_start} are not in the log any more and the archive is off"
                )
            })?;
            let to = log_start
                .min(next.saturating_add(self.settings.archive_read_events))
                .min(live);
            // Every tenant's events: a tenant's aggregator is given its own ones as in the
            // pipeline.
            let batches = match archive.handle.block_on(crate::query::events_between(
                archive.tables.clone(),
                crate::auth::Scope::All,
                next,
                to,
                since_ms,
            )) {
                Ok(b) => b,
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    // The archive is being opened after a start: wait for it.
                    std::thread::sleep(IDLE);
                    return Ok(SourceBatch {
                        next,
                        ..SourceBatch::default()
                    });
                }
                Err(s) => anyhow::bail!("reading the archive: {}", s.message()),
            };
            let mut src = source_of(&batches)?;
            src.next = to;
            return Ok(src);
        }
        let want = usize::try_from(live.saturating_sub(next))
            .unwrap_or(usize::MAX)
            .min(self.settings.batch_events);
        let src = self.log.read_batch(next, want, PIPELINE_BATCH_BYTES_MAX)?;
        anyhow::ensure!(
            src.offsets.first().is_none_or(|&f| f == next) || self.log.start_offset() <= next,
            "the log's start moved past offset {next} while it was read; reading again"
        );
        Ok(src)
    }

    fn publish(&self, shadow: &Shadow, plan: &BackfillPlan, live: u64, rate: f64, state: &str) {
        let left = live.saturating_sub(shadow.next) as f64;
        self.progress.set(
            &shadow.record.name,
            BackfillInfo {
                version: plan.version.clone(),
                from: plan.from.label(),
                state: state.to_string(),
                offset: shadow.next,
                target_offset: live,
                events: shadow.events,
                errors: shadow.errors,
                events_per_second: rate,
                eta_seconds: (rate > 0.0).then(|| left / rate),
                requested_at: plan.requested_at.clone(),
            },
        );
    }
}

/// Events of `events` (the query layer's schema) as a source batch, in their order. The
/// archive keeps the agent's `received_at` but not the broker's append time, so an event's
/// receive time is its `received_at`.
fn source_of(batches: &[RecordBatch]) -> anyhow::Result<SourceBatch> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{TimestampMillisecondType, UInt32Type, UInt64Type};
    let mut out = SourceBatch::default();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut w = BatchWriter::with_capacity(rows, 256);
    let mut origins: HashMap<(String, String), u32> = HashMap::new();
    for b in batches {
        let column = |name: &str| {
            b.column_by_name(name)
                .with_context(|| format!("events: no column {name}"))
        };
        let offset = column("offset")?.as_primitive::<UInt64Type>();
        let timestamp = column("timestamp")?.as_primitive::<TimestampMillisecondType>();
        let received = column("received_at")?.as_primitive::<TimestampMillisecondType>();
        let schema_version = column("schema_version")?.as_primitive::<UInt32Type>();
        let agent = column("agent_id")?.as_string::<i32>();
        let host = column("host")?.as_string::<i32>();
        let texts = Field::ALL
            .map(|f| column(f.name()).map(|c| c.as_string::<i32>().clone()))
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        for i in 0..b.num_rows() {
            let fields: [Option<&str>; 8] =
                std::array::from_fn(|f| (!texts[f].is_null(i)).then(|| texts[f].value(i)));
            w.push(
                timestamp.value(i),
                received.value(i),
                schema_version.value(i),
                fields,
            );
            let key = (agent.value(i).to_string(), host.value(i).to_string());
            let o = match origins.get(&key) {
                Some(o) => *o,
                None => {
                    let o = out.origins.len() as u32;
                    out.origins.push(key.clone());
                    out.appended_ms.push(i64::MAX);
                    origins.insert(key, o);
                    o
                }
            };
            out.offsets.push(offset.value(i));
            out.origin.push(o);
        }
    }
    out.batch = w.finish();
    Ok(out)
}
