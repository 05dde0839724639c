//! The broker pipeline: reads the log from its committed offset, runs the deployed enrichers
//! over each batch, in order, and folds what comes out into the windows of every deployed
//! aggregator ([`crate::aggregate`]).
//!
//! ## One batch
//! 1. At the batch boundary, if the registry changed (a deploy, pause, resume or remove), the
//!    chain is rebuilt: plugins whose active version is unchanged keep their instance, others
//!    are loaded (a component that no longer loads pauses its plugin with the reason).
//! 2. Up to `pipeline_batch_events` durable events are read from the log.
//! 3. Each running plugin gets the batch in one call ([`runnel_host::Enricher::enrich`]): kept
//!    and replaced events go on, dropped ones are counted, events it failed on go to the
//!    `dead_letters` topic with the plugin, version, kind of failure and reason.
//! 4. A batch in which more than half of a plugin's events failed is a failing batch; after
//!    `plugin_pause_after_failing_batches` of them in a row the plugin is paused. With policy
//!    `hold` the batch is abandoned (nothing of it is committed) and the pipeline waits at that
//!    offset until the plugin is redeployed, resumed or removed; with `skip` the batch and those
//!    after it pass the plugin untouched.
//! 5. Each running aggregator maps the chain's output to rows (one call per batch; failures as
//!    for enrichers). Then, event by event in log order, each aggregator folds the event's rows
//!    into its windows, observes the event (its agent, event time and `received_at`) and
//!    advances its watermark; rows of windows that become final are kept for the commit. An
//!    event whose rows all fall in final windows goes to the `late_events` topic; a row refused
//!    by a window limit sends its event to `dead_letters`.
//! 6. The dead letters and late events are appended; at the commit they are synced, then the
//!    new offset, every plugin's counts, every aggregator's window snapshot and its new final
//!    rows are committed in one redb transaction. Without aggregators that happens after
//!    every batch; with them every `aggregate_commit_interval_ms` and whenever the pipeline
//!    catches up. After a crash the pipeline resumes from the committed offset with the
//!    committed window state: counts and rows describe each event once, and entries the side
//!    topics already hold are not written again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::mpsc;
use std::time::Instant;

use runnel_batch::{BatchView, BatchWriter};
use runnel_event::event_time::{is_dead_letter, split_dead_letter};
use runnel_host::{Enricher, Fate, Limits, Runtime};
use runnel_window::{Added, Engine, Input};

use crate::aggregate::{self, AggRun, Query};
use crate::log::BrokerLog;
use crate::registry::{
    AggregateCommit, Pause, PluginLimits, PluginRecord, PluginStats, Policy, Registry, Status,
};
use crate::topic::TopicWriter;

/// How long the pipeline sleeps when it has caught up with the log.
pub const IDLE_POLL: Duration = Duration::from_millis(2);
/// Most bytes of event fields in one pipeline batch (a batch stops early when its events are
/// large; it always holds at least one event).
pub const PIPELINE_BATCH_BYTES_MAX: usize = 64 << 20;
/// How long it waits after a storage failure before it tries again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Pipeline settings (from the broker configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most events per batch.
    pub batch_events: usize,
    /// Consecutive failing batches after which a plugin is paused.
    pub pause_after_failing_batches: u32,
    /// How much isolating the failing events of one batch may cost.
    pub isolation: Isolation,
    /// How often progress is committed while aggregators run (`aggregate_commit_interval_ms`).
    pub commit_interval: Duration,
    /// Watermark settings and window limits of every aggregate.
    pub window: runnel_window::Settings,
    /// An agent whose `received_at` runs ahead of the broker's append time by more than this
    /// is flagged (`agent_clock_skew_max_ms`).
    pub agent_clock_skew_max_ms: i64,
}

/// Bounds of isolating the failing events of one batch (`plugin_isolation_calls_max`,
/// `plugin_isolation_time_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    /// Most calls.
    pub calls_max: u32,
    /// Longest time.
    pub time_max: Duration,
}

/// Converts a plugin's limits and capabilities for the host.
pub fn host_limits(l: &PluginLimits, capabilities: &[String], isolation: Isolation) -> Limits {
    Limits {
        capabilities: runnel_host::Capabilities::parse(capabilities.iter().map(String::as_str))
            .unwrap_or_default(),
        deadline: Duration::from_millis(l.deadline_ms),
        memory_bytes_max: l.memory_bytes_max as usize,
        fuel_per_call: l.fuel_per_call,
        isolation_calls_max: isolation.calls_max,
        isolation_time_max: isolation.time_max,
        ..Limits::default()
    }
}

/// What the admin API can see of the running pipeline.
#[derive(Debug, Default)]
pub struct Shared {
    /// The committed offset.
    pub offset: AtomicU64,
    /// The last storage failure, while it lasts.
    pub failure: Mutex<Option<String>>,
    /// Questions for the pipeline thread about its aggregates.
    pub queries: Mutex<Option<mpsc::Sender<Query>>>,
    /// The aggregates as of the last commit or reload, for readers that must not wait for
    /// the pipeline thread (Flight's table list and schemas). `None` before the first.
    pub aggregates: Mutex<Option<Arc<Vec<aggregate::AggInfo>>>>,
}

impl Shared {
    /// The aggregates as of the last commit or reload.
    pub fn published_aggregates(&self) -> Option<Arc<Vec<aggregate::AggInfo>>> {
        self.aggregates.lock().expect("lock poisoned").clone()
    }

    /// Asks the pipeline thread; `None` if it is not running.
    pub fn ask(&self, q: Query) -> Option<()> {
        self.queries
            .lock()
            .expect("lock poisoned")
            .as_ref()?
            .send(q)
            .ok()
    }
}

/// The running pipeline thread.
#[derive(Debug)]
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its progress.
    pub shared: Arc<Shared>,
}

impl Pipeline {
    /// Starts the pipeline thread.
    pub fn start(
        runtime: Runtime,
        registry: Registry,
        log: BrokerLog,
        topics: Topics,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let committed = registry.pipeline_offset()?;
        shared.offset.store(committed, Ordering::Release);
        let (tx, queries) = mpsc::channel();
        *shared.queries.lock().expect("lock poisoned") = Some(tx);
        let mut worker = Worker {
            runtime,
            registry,
            log,
            topics,
            settings,
            stages: Vec::new(),
            seen_generation: 0,
            shared: shared.clone(),
            progress: committed,
            pending_pauses: Vec::new(),
            last_commit: Instant::now(),
            queries,
            clock_skew: Default::default(),
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || worker.run(&s))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            shared,
        })
    }

    /// Stops at the next batch boundary and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The side topics the pipeline writes.
#[derive(Debug)]
pub struct Topics {
    /// `dead_letters`: events a plugin failed on, or a window limit refused.
    pub dead_letters: TopicWriter,
    /// `late_events`: events whose rows all fell in final windows.
    pub late_events: TopicWriter,
}

struct Stage {
    record: PluginRecord,
    enricher: Option<Enricher>,
    agg: Option<AggRun>,
    stats: PluginStats,
}

impl Stage {
    fn is_aggregator(&self) -> bool {
        self.record.kind == "aggregate"
    }

    fn version(&self) -> &str {
        &self.record.active
    }

    fn holds(&self) -> bool {
        self.record.status == Status::Paused && self.record.policy == Policy::Hold
    }
}

struct Worker {
    runtime: Runtime,
    registry: Registry,
    log: BrokerLog,
    topics: Topics,
    settings: Settings,
    stages: Vec<Stage>,
    seen_generation: u64,
    shared: Arc<Shared>,
    /// The offset processed up to (committed or not).
    progress: u64,
    /// Automatic pauses not yet committed.
    pending_pauses: Vec<Pause>,
    last_commit: Instant,
    queries: mpsc::Receiver<Query>,
    /// By agent: how far its `received_at` ran ahead of the broker's append time in the last
    /// batch read from it (ms; negative when behind or delayed).
    clock_skew: std::collections::BTreeMap<String, i64>,
}

/// What a plugin loads as.
enum Loaded {
    Enricher(Enricher),
    Aggregator(AggRun),
}

/// What a plugin's failures in one batch mean for the batch.
enum Verdict {
    /// Go on with its output.
    Go,
    /// It was just paused with `hold`: abandon the batch.
    Hold,
    /// It was just paused with `skip`: the batch passes it untouched.
    Skip,
}

/// Counts one batch of `n` events, `failed` of which the plugin failed on, and pauses the
/// plugin after `pause_after` failing batches in a row.
fn count_batch(
    stage: &mut Stage,
    n: usize,
    failed: usize,
    first_failure: Option<String>,
    pause_after: u32,
    pauses: &mut Vec<Pause>,
) -> Verdict {
    let s = &mut stage.stats;
    s.batches += 1;
    *s.events_in_by_version
        .entry(stage.record.active.clone())
        .or_default() += n as u64;
    s.events_in += n as u64;
    if first_failure.is_some() {
        s.last_error = first_failure;
    }
    if failed * 2 > n {
        s.failing_batches_in_a_row += 1;
    } else {
        s.failing_batches_in_a_row = 0;
    }
    if failed == 0 || s.failing_batches_in_a_row < pause_after {
        return Verdict::Go;
    }
    let reason = format!(
        "paused after {} failing batches in a row (plugin_pause_after_failing_batches); last error: {}",
        s.failing_batches_in_a_row,
        s.last_error.as_deref().unwrap_or("")
    );
    tracing::warn!(plugin = %stage.record.name, %reason, "pausing plugin");
    stage.record.status = Status::Paused;
    stage.record.paused_reason = Some(reason.clone());
    pauses.push(Pause {
        name: stage.record.name.clone(),
        position: stage.record.position,
        version: stage.record.active.clone(),
        reason,
    });
    if stage.record.policy == Policy::Hold {
        Verdict::Hold
    } else {
        Verdict::Skip
    }
}

/// A failed event on its way to `dead_letters`.
struct DeadLetter {
    source: usize,
    entry: Vec<u8>,
    /// An agent's event-time dead letter (counted on its own).
    event_time: bool,
}

enum Step {
    Idle,
    Progressed,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            self.answer_queries();
            match self.step() {
                Ok(Step::Progressed) => {
                    *self.shared.failure.lock().expect("lock poisoned") = None;
                }
                Ok(Step::Idle) => {
                    // Wait for the log, but answer a question at once.
                    if let Ok(q) = self.queries.recv_timeout(IDLE_POLL) {
                        self.answer(q);
                    }
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "pipeline failed; retrying");
                    metrics::counter!("runnel_pipeline_failures_total").increment(1);
                    *self.shared.failure.lock().expect("lock poisoned") = Some(format!("{e:#}"));
                    // Forget uncommitted state: the next attempt starts from the committed
                    // offset and the registry's window state. Entries appended to the side
                    // topics are synced (or the topic is poisoned), so the replay skips them.
                    let _ = self.topics.dead_letters.sync();
                    let _ = self.topics.late_events.sync();
                    self.stages.clear();
                    self.pending_pauses.clear();
                    self.seen_generation = 0;
                    self.progress = self.shared.offset.load(Ordering::Acquire);
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                }
            }
        }
    }

    /// What `runnel agg list` shows of each running aggregator.
    fn aggregates(&self, lag: u64) -> Vec<aggregate::AggInfo> {
        let max = self.settings.agent_clock_skew_max_ms;
        let skewed: Vec<aggregate::ClockSkew> = self
            .clock_skew
            .iter()
            .filter(|(_, ahead)| **ahead > max)
            .map(|(agent, ahead)| aggregate::ClockSkew {
                agent: agent.clone(),
                ahead_ms: *ahead,
            })
            .collect();
        self.stages
            .iter()
            .filter_map(|s| {
                s.agg.as_ref().map(|run| {
                    let mut info = aggregate::info(&s.record, run, &s.stats, lag);
                    info.clock_skewed_agents = skewed.clone();
                    info
                })
            })
            .collect()
    }

    /// Records, per agent of a batch, how far its `received_at` ran ahead of the broker's append
    /// time (`ahead_by_origin`, indexed like `origins`), and flags the agents past
    /// `agent_clock_skew_max_ms` in `/metrics`.
    fn note_clock_skew(&mut self, origins: &[(String, String)], ahead_by_origin: &[i64]) {
        let max = self.settings.agent_clock_skew_max_ms;
        for ((agent, _), &ahead) in origins.iter().zip(ahead_by_origin) {
            if ahead == i64::MIN {
                continue;
            }
            let before = self.clock_skew.insert(agent.clone(), ahead);
            if before == Some(ahead) {
                continue;
            }
            metrics::gauge!("runnel_agent_clock_skew_seconds", "agent" => agent.clone())
                .set(ahead as f64 / 1e3);
            metrics::gauge!("runnel_agent_clock_skewed", "agent" => agent.clone())
                .set(f64::from(u8::from(ahead > max)));
            if ahead > max && before.is_none_or(|b| b <= max) {
                tracing::warn!(
                    agent = %agent,
                    ahead_ms = ahead,
                    "an agent's clock runs ahead of the broker's by more than agent_clock_skew_max_ms; its events are judged by the broker's clock"
                );
            }
        }
    }

    /// Publishes the aggregates for readers that must not wait (see [`Shared::aggregates`]).
    fn publish(&self) {
        let lag = self.log.durable_end().saturating_sub(self.progress);
        *self.shared.aggregates.lock().expect("lock poisoned") =
            Some(Arc::new(self.aggregates(lag)));
    }

    /// Answers the admin API's questions (between batches).
    fn answer_queries(&mut self) {
        while let Ok(q) = self.queries.try_recv() {
            self.answer(q);
        }
    }

    fn answer(&mut self, q: Query) {
        {
            let lag = self.log.durable_end().saturating_sub(self.progress);
            match q {
                Query::List(reply) => {
                    let list = self.aggregates(lag);
                    *self.shared.aggregates.lock().expect("lock poisoned") =
                        Some(Arc::new(list.clone()));
                    let _ = reply.send(list);
                }
                Query::Rows { name, reply } => {
                    let answer = match self
                        .stages
                        .iter()
                        .find(|s| s.record.name == name && s.is_aggregator())
                    {
                        Some(Stage {
                            agg: Some(run),
                            record,
                            ..
                        }) => {
                            let meta = aggregate::meta_of(record, run.engine.schema());
                            let rows = run
                                .pending
                                .iter()
                                .map(|r| (aggregate::to_final(r), true))
                                .chain(
                                    run.engine
                                        .rows()
                                        .iter()
                                        .map(|r| (aggregate::to_final(r), false)),
                                )
                                .collect();
                            Ok((meta, rows))
                        }
                        Some(s) => Err(format!(
                            "aggregate {name:?} is not running ({})",
                            s.record
                                .paused_reason
                                .as_deref()
                                .unwrap_or("paused or not loaded")
                        )),
                        None => Err(format!("no aggregate named {name:?}")),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Rebuilds the chain from the registry.
    fn reload(&mut self) -> anyhow::Result<()> {
        let generation = self.registry.generation();
        let records = self.registry.plugins()?;
        let mut old: Vec<Stage> = std::mem::take(&mut self.stages);
        let mut pauses = Vec::new();
        for record in records {
            let prev = old
                .iter()
                .position(|s| s.record.name == record.name && s.record.position == record.position)
                .map(|i| old.swap_remove(i));
            let same_version = prev.as_ref().is_some_and(|p| {
                p.version() == record.active && p.record.active_version() == record.active_version()
            });
            let mut stats = match &prev {
                Some(p) => p.stats.clone(),
                None => self.registry.stats(&record.name)?,
            };
            let was_paused = prev
                .as_ref()
                .is_some_and(|p| p.record.status == Status::Paused);
            // A new version, or a resume, starts a new streak; a restart keeps the committed one.
            let changed = prev.is_some() && !same_version;
            if changed || (was_paused && record.status == Status::Running) {
                stats.failing_batches_in_a_row = 0;
            }
            let (mut enricher, mut agg, old_engine) = match prev {
                Some(p) if same_version => (p.enricher, p.agg, None),
                // A new version keeps the windows if its schema is the same.
                Some(p) => (None, None, p.agg.map(|a| a.engine)),
                None => (None, None, None),
            };
            if record.status == Status::Running && enricher.is_none() && agg.is_none() {
                match self.load(&record, old_engine) {
                    Ok(Loaded::Enricher(e)) => enricher = Some(e),
                    Ok(Loaded::Aggregator(a)) => agg = Some(a),
                    Err(reason) => {
                        tracing::error!(plugin = %record.name, %reason, "plugin does not load; pausing it");
                        pauses.push((record.name.clone(), reason));
                    }
                }
            }
            if changed && (enricher.is_some() || agg.is_some()) {
                tracing::info!(plugin = %record.name, version = %record.active, "plugin version active");
            }
            self.stages.push(Stage {
                record,
                enricher,
                agg,
                stats,
            });
        }
        if !pauses.is_empty() {
            for (name, reason) in &pauses {
                self.registry.set_status(
                    name,
                    Status::Paused,
                    Some(format!("load failed: {reason}")),
                )?;
            }
            // The registry changed again: reload once more at the next step.
            return Ok(());
        }
        self.seen_generation = generation;
        self.publish();
        Ok(())
    }

    fn load(&self, record: &PluginRecord, old_engine: Option<Engine>) -> Result<Loaded, String> {
        let v = record.active_version();
        let path = self.registry.wasm_path(&record.name, &v.sha256);
        let wasm = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let limits = host_limits(&v.limits, &v.capabilities, self.settings.isolation);
        if record.kind != "aggregate" {
            return self
                .runtime
                .load_enricher(&record.name, &wasm, v.params.clone(), limits)
                .map(Loaded::Enricher)
                .map_err(|e| e.to_string());
        }
        let plugin = self
            .runtime
            .load_aggregator(&record.name, &wasm, v.params.clone(), limits)
            .map_err(|e| e.to_string())?;
        let schema = plugin.schema().clone();
        let engine = match old_engine {
            Some(e) if *e.schema() == schema => e,
            Some(_) => {
                tracing::warn!(plugin = %record.name, "new version has another schema; its windows start empty");
                self.new_engine(schema)?
            }
            None => match self
                .registry
                .aggregate_state(&record.name)
                .map_err(|e| format!("{e:#}"))?
            {
                Some((meta, snap)) if meta.position == record.position => {
                    match Engine::restore(schema.clone(), self.settings.window.clone(), &snap) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(plugin = %record.name, error = %e, "committed windows do not fit this version's schema; starting empty");
                            self.new_engine(schema)?
                        }
                    }
                }
                _ => self.new_engine(schema)?,
            },
        };
        Ok(Loaded::Aggregator(AggRun {
            plugin,
            engine,
            pending: Vec::new(),
        }))
    }

    fn new_engine(&self, schema: runnel_window::Schema) -> Result<Engine, String> {
        Engine::new(schema, self.settings.window.clone()).map_err(|e| format!("schema: {e}"))
    }

    fn has_aggregators(&self) -> bool {
        self.stages.iter().any(|s| s.agg.is_some())
    }

    /// Commits the progress: syncs the side topics, then the offset, the counts, the pauses,
    /// the window state and the new final rows in one redb transaction.
    fn commit(&mut self) -> anyhow::Result<()> {
        self.topics.dead_letters.sync()?;
        self.topics.late_events.sync()?;
        let stats: Vec<(String, u64, PluginStats)> = self
            .stages
            .iter()
            .map(|s| (s.record.name.clone(), s.record.position, s.stats.clone()))
            .collect();
        let aggs: Vec<AggregateCommit> = self
            .stages
            .iter()
            .filter_map(|s| {
                let run = s.agg.as_ref()?;
                Some(AggregateCommit {
                    name: s.record.name.clone(),
                    meta: aggregate::meta_of(&s.record, run.engine.schema()),
                    snapshot: run.engine.snapshot(),
                    rows: run.pending.iter().map(aggregate::to_final).collect(),
                })
            })
            .collect();
        self.registry
            .commit(self.progress, &stats, &self.pending_pauses, &aggs)?;
        for s in &mut self.stages {
            if let Some(run) = s.agg.as_mut() {
                metrics::counter!("runnel_aggregate_rows_final_total", "aggregate" => s.record.name.clone())
                    .increment(run.pending.len() as u64);
                run.pending.clear();
            }
        }
        self.pending_pauses.clear();
        self.shared.offset.store(self.progress, Ordering::Release);
        self.last_commit = Instant::now();
        self.publish();
        Ok(())
    }

    fn step(&mut self) -> anyhow::Result<Step> {
        if self.seen_generation != self.registry.generation() {
            self.reload()?;
            if self.seen_generation != self.registry.generation() {
                return Ok(Step::Idle);
            }
        }
        let offset = self.progress;
        let end = self.log.durable_end();
        metrics::gauge!("runnel_pipeline_offset").set(offset as f64);
        metrics::gauge!("runnel_pipeline_lag_events").set(end.saturating_sub(offset) as f64);
        let committed = self.shared.offset.load(Ordering::Acquire);
        if self.stages.iter().any(Stage::holds) || offset >= end {
            if committed < self.progress || !self.pending_pauses.is_empty() {
                self.commit()?;
                return Ok(Step::Progressed);
            }
            return Ok(Step::Idle);
        }
        let src =
            self.log
                .read_batch(offset, self.settings.batch_events, PIPELINE_BATCH_BYTES_MAX)?;
        if src.offsets.is_empty() {
            if src.next > offset {
                self.progress = src.next;
                self.commit()?;
                return Ok(Step::Progressed);
            }
            return Ok(Step::Idle);
        }
        // What every aggregator observes of each event: agent, event time, and its receive
        // time: the earlier of the agent's `received_at` and the broker's append time, so an
        // agent whose clock runs ahead is judged by the broker's. Events an agent marked as
        // dead letters (event time out of its bounds) go to `dead_letters` and nowhere else.
        let (facts, marked) = {
            let view = BatchView::new(&src.batch)?;
            let mut ahead_by_origin = vec![i64::MIN; src.origins.len()];
            let mut marked = Vec::new();
            let facts: Vec<(u32, i64, i64)> = (0..src.offsets.len())
                .map(|i| {
                    let ev = view.event(i);
                    let o = src.origin[i] as usize;
                    let received = ev.received_at_ms();
                    let appended = src.appended_ms[o];
                    ahead_by_origin[o] = ahead_by_origin[o].max(received.saturating_sub(appended));
                    if is_dead_letter(ev.properties()) {
                        marked.push(i);
                    }
                    (src.origin[i], ev.timestamp_ms(), received.min(appended))
                })
                .collect();
            self.note_clock_skew(&src.origins, &ahead_by_origin);
            (facts, marked)
        };
        let before: Vec<PluginStats> = self.stages.iter().map(|s| s.stats.clone()).collect();
        let mut batch = src.batch;
        // For each event of `batch`, its index in the source batch.
        let mut index: Vec<usize> = (0..src.offsets.len()).collect();
        let mut dead = Vec::new();
        if !marked.is_empty() {
            let view = BatchView::new(&batch)?;
            let mut w = BatchWriter::with_capacity(index.len() - marked.len(), 256);
            let mut kept = Vec::with_capacity(index.len() - marked.len());
            for i in index {
                let ev = view.event(i);
                if marked.binary_search(&i).is_ok() {
                    let (agent_id, host) = &src.origins[src.origin[i] as usize];
                    dead.push(DeadLetter {
                        source: i,
                        entry: event_time_dead_letter(&ev, src.offsets[i], agent_id, host),
                        event_time: true,
                    });
                } else {
                    w.push_ref(&ev);
                    kept.push(i);
                }
            }
            batch = w.finish();
            index = kept;
        }
        let mut pauses: Vec<Pause> = Vec::new();
        let mut held = false;
        let pause_after = self.settings.pause_after_failing_batches;
        for stage in &mut self.stages {
            if index.is_empty() {
                break;
            }
            if stage.record.status != Status::Running {
                continue;
            }
            let Some(enricher) = stage.enricher.as_mut() else {
                continue;
            };
            let n = index.len();
            let out = enricher.enrich(&batch)?;
            let failed = out
                .fates
                .iter()
                .filter(|f| matches!(f, Fate::Failed(_)))
                .count();
            let s = &mut stage.stats;
            s.traps += u64::from(out.failed_calls);
            s.slowest_call_ms = s.slowest_call_ms.max(out.slowest_call.as_secs_f64() * 1e3);
            let first_failure = out.fates.iter().find_map(|f| match f {
                Fate::Failed(f) => Some(f.to_string()),
                _ => None,
            });
            match count_batch(stage, n, failed, first_failure, pause_after, &mut pauses) {
                Verdict::Hold => {
                    held = true;
                    break;
                }
                Verdict::Skip => {
                    // `skip`: this batch passes the plugin untouched, like the ones after it.
                    stage.stats.events_out += n as u64;
                    continue;
                }
                Verdict::Go => {}
            }
            let s = &mut stage.stats;
            let view = BatchView::new(&batch)?;
            let repl = if out.replacements.is_empty() {
                None
            } else {
                Some(BatchView::new(&out.replacements)?)
            };
            if out.fates.iter().all(|f| *f == Fate::Keep) {
                s.events_out += n as u64;
                continue;
            }
            let mut w = BatchWriter::with_capacity(n, 256);
            let mut next_index = Vec::with_capacity(n);
            for (i, fate) in out.fates.iter().enumerate() {
                match fate {
                    Fate::Keep => {
                        w.push_ref(&view.event(i));
                        next_index.push(index[i]);
                    }
                    Fate::Replace(r) => {
                        let r = repl
                            .as_ref()
                            .expect("replacements exist")
                            .event(*r as usize);
                        w.push_ref(&r);
                        next_index.push(index[i]);
                    }
                    Fate::Drop(_) => s.dropped += 1,
                    Fate::Failed(f) => {
                        s.errors += 1;
                        let (agent_id, host) = &src.origins[src.origin[index[i]] as usize];
                        let event =
                            event_view(&view.event(i), src.offsets[index[i]], agent_id, host);
                        dead.push(DeadLetter {
                            source: index[i],
                            entry: dead_letter_entry(
                                src.offsets[index[i]],
                                &stage.record,
                                f.kind.as_str(),
                                &f.message,
                                &event,
                            ),
                            event_time: false,
                        });
                    }
                }
            }
            s.events_out += next_index.len() as u64;
            batch = w.finish();
            index = next_index;
        }
        // Aggregators map the chain's output; nothing is folded until none of them holds.
        let mut mapped: Vec<Option<Vec<runnel_host::AggRow>>> = Vec::new();
        if !held {
            let view = BatchView::new(&batch)?;
            for stage in &mut self.stages {
                let running = stage.record.status == Status::Running;
                let Some(run) = stage.agg.as_mut().filter(|_| running) else {
                    mapped.push(None);
                    continue;
                };
                if index.is_empty() {
                    // Nothing to map (every event dropped or dead-lettered): the fold still
                    // observes the events, and the plugin's failure count is not touched.
                    mapped.push(Some(Vec::new()));
                    continue;
                }
                let n = index.len();
                let out = run.plugin.map_batch(&batch)?;
                stage.stats.traps += u64::from(out.failed_calls);
                let first_failure = out.failed.first().map(|(_, f)| f.to_string());
                match count_batch(
                    stage,
                    n,
                    out.failed.len(),
                    first_failure,
                    pause_after,
                    &mut pauses,
                ) {
                    Verdict::Hold => {
                        held = true;
                        break;
                    }
                    Verdict::Skip => {
                        mapped.push(None);
                        continue;
                    }
                    Verdict::Go => {}
                }
                stage.stats.events_out += (n - out.failed.len()) as u64;
                stage.stats.errors += out.failed.len() as u64;
                for (i, f) in &out.failed {
                    let i = *i as usize;
                    let (agent_id, host) = &src.origins[src.origin[index[i]] as usize];
                    let event = event_view(&view.event(i), src.offsets[index[i]], agent_id, host);
                    dead.push(DeadLetter {
                        source: index[i],
                        entry: dead_letter_entry(
                            src.offsets[index[i]],
                            &stage.record,
                            f.kind.as_str(),
                            &f.message,
                            &event,
                        ),
                        event_time: false,
                    });
                }
                let mut rows = out.rows;
                rows.sort_by_key(|r| r.event);
                mapped.push(Some(rows));
            }
        }
        if held {
            // Nothing of this batch is kept; the pipeline waits here.
            for (stage, stats) in self.stages.iter_mut().zip(before) {
                stage.stats = stats;
            }
            for p in &pauses {
                self.registry.pause_failing(p)?;
            }
            // The next step reloads (this pause, and anything an operator changed meanwhile).
            self.publish_metrics();
            return Ok(Step::Progressed);
        }
        // Fold, event by event in log order.
        let mut late: Vec<(usize, String, i64, Option<i64>)> = Vec::new();
        {
            let view = BatchView::new(&batch)?;
            for (stage, rows) in self.stages.iter_mut().zip(mapped) {
                let (Some(run), Some(rows)) = (stage.agg.as_mut(), rows) else {
                    continue;
                };
                let mut r = 0;
                let mut dims: Vec<&str> = Vec::new();
                let mut inputs: Vec<Input<'_>> = Vec::new();
                for (j, &(origin, ts, received)) in facts.iter().enumerate() {
                    if marked.binary_search(&j).is_ok() {
                        continue;
                    }
                    let (mut folded, mut late_rows, mut late_end) = (0u32, 0u32, i64::MIN);
                    let mut refused: Option<&'static str> = None;
                    while r < rows.len() && index[rows[r].event as usize] == j {
                        let row = &rows[r];
                        dims.clear();
                        dims.extend(row.dimensions.iter().map(String::as_str));
                        inputs.clear();
                        inputs.extend(row.inputs.iter().map(|v| match v {
                            runnel_host::RowInput::Null => Input::Null,
                            runnel_host::RowInput::Num(x) => Input::Num(*x),
                            runnel_host::RowInput::Text(t) => Input::Str(t),
                        }));
                        match run.engine.add_row(row.event_time_ms, &dims, &inputs) {
                            Added::Folded => folded += 1,
                            Added::Late { window_end } => {
                                late_rows += 1;
                                late_end = late_end.max(window_end);
                            }
                            Added::Refused { limit } => refused = Some(limit),
                        }
                        r += 1;
                    }
                    stage.stats.rows_folded += u64::from(folded);
                    if let Some(limit) = refused {
                        stage.stats.rows_refused += 1;
                        metrics::counter!("runnel_aggregate_refused_total", "aggregate" => stage.record.name.clone(), "limit" => limit)
                            .increment(1);
                        let k = index.partition_point(|&x| x < j);
                        let (agent_id, host) = &src.origins[origin as usize];
                        let event = event_view(&view.event(k), src.offsets[j], agent_id, host);
                        dead.push(DeadLetter {
                            source: j,
                            entry: dead_letter_entry(
                                src.offsets[j],
                                &stage.record,
                                "refused",
                                &format!(
                                    "a row of this event would pass {limit} (aggregate_{limit})"
                                ),
                                &event,
                            ),
                            event_time: false,
                        });
                    } else if late_rows > 0 && folded == 0 {
                        stage.stats.late_events += 1;
                        late.push((
                            j,
                            stage.record.name.clone(),
                            late_end,
                            run.engine.applied_watermark(),
                        ));
                    }
                    let agent = &src.origins[origin as usize].0;
                    run.engine.observe(agent, ts, received);
                    let now = run.engine.clock_ms().unwrap_or(received);
                    let finals = run.engine.advance(now);
                    stage.stats.rows_final += finals.len() as u64;
                    run.pending.extend(finals);
                }
            }
            // One `late_events` entry per event, naming every aggregate it was late for.
            late.sort_by_key(|l| l.0);
            let mut appended = 0u64;
            let mut i = 0;
            while i < late.len() {
                let j = late[i].0;
                let mut aggs = Vec::new();
                while i < late.len() && late[i].0 == j {
                    let (_, name, window_end, wm) = &late[i];
                    metrics::counter!("runnel_late_events_total", "aggregate" => name.clone())
                        .increment(1);
                    aggs.push(serde_json::json!({
                        "aggregate": name,
                        "window_end": runnel_event::envelope::rfc3339_ms(*window_end),
                        "watermark": wm.map(runnel_event::envelope::rfc3339_ms),
                    }));
                    i += 1;
                }
                let k = index.partition_point(|&x| x < j);
                let (agent_id, host) = &src.origins[src.origin[j] as usize];
                let entry = serde_json::to_vec(&serde_json::json!({
                    "source_offset": src.offsets[j],
                    "aggregates": aggs,
                    "event": event_view(&view.event(k), src.offsets[j], agent_id, host),
                }))
                .expect("serializing to memory");
                if self.topics.late_events.append(src.offsets[j], &entry)? {
                    appended += 1;
                }
            }
            metrics::counter!("runnel_late_events_appended_total").increment(appended);
        }
        dead.sort_by_key(|d| d.source);
        let (mut appended, mut event_time) = (0u64, 0u64);
        for d in &dead {
            if self
                .topics
                .dead_letters
                .append(src.offsets[d.source], &d.entry)?
            {
                appended += 1;
                event_time += u64::from(d.event_time);
            }
        }
        metrics::counter!("runnel_dead_letters_total").increment(appended);
        metrics::counter!("runnel_event_time_dead_letters_total").increment(event_time);
        self.pending_pauses.extend(pauses);
        self.progress = src.next;
        let caught_up = self.progress >= self.log.durable_end();
        if !self.has_aggregators()
            || caught_up
            || self.last_commit.elapsed() >= self.settings.commit_interval
        {
            self.commit()?;
        }
        self.publish_metrics();
        Ok(Step::Progressed)
    }

    fn publish_metrics(&self) {
        for s in &self.stages {
            let name = s.record.name.clone();
            let st = &s.stats;
            let paused = f64::from(u8::from(s.record.status == Status::Paused));
            metrics::gauge!("runnel_plugin_paused", "plugin" => name.clone()).set(paused);
            metrics::gauge!("runnel_plugin_events_in", "plugin" => name.clone())
                .set(st.events_in as f64);
            metrics::gauge!("runnel_plugin_events_out", "plugin" => name.clone())
                .set(st.events_out as f64);
            metrics::gauge!("runnel_plugin_dropped", "plugin" => name.clone())
                .set(st.dropped as f64);
            metrics::gauge!("runnel_plugin_errors", "plugin" => name.clone()).set(st.errors as f64);
            metrics::gauge!("runnel_plugin_traps", "plugin" => name).set(st.traps as f64);
        }
    }
}

/// An event of a batch as JSON-ready envelope fields.
pub fn event_view<'a>(
    ev: &runnel_batch::EventRef<'a>,
    offset: u64,
    agent_id: &'a str,
    host: &'a str,
) -> runnel_event::envelope::EventView<'a> {
    use runnel_batch::Field;
    let props = ev
        .properties()
        .and_then(|p| serde_json::from_str::<&serde_json::value::RawValue>(p).ok());
    runnel_event::envelope::EventView {
        offset,
        event_id: ev.event_id(),
        event_type: ev.event_type(),
        timestamp: runnel_event::envelope::rfc3339_ms(ev.timestamp_ms()),
        received_at: runnel_event::envelope::rfc3339_ms(ev.received_at_ms()),
        agent_id,
        host,
        schema_version: ev.schema_version(),
        user_id: ev.user_id(),
        session_id: ev.field(Field::SessionId),
        device_id: ev.field(Field::DeviceId),
        platform: ev.field(Field::Platform),
        app_version: ev.field(Field::AppVersion),
        properties: props,
    }
}

/// The `dead_letters` entry of an event its agent accepted as a dead letter because its time
/// was out of the agent's bounds: kind `event_time`, the agent's reason, and the event as it was
/// sent (without the agent's mark).
fn event_time_dead_letter(
    ev: &runnel_batch::EventRef<'_>,
    offset: u64,
    agent_id: &str,
    host: &str,
) -> Vec<u8> {
    let mut event = event_view(ev, offset, agent_id, host);
    let (marker, rest) = ev
        .properties()
        .and_then(split_dead_letter)
        .unwrap_or((serde_json::Value::Null, None));
    let rest = rest.and_then(|r| serde_json::value::RawValue::from_string(r).ok());
    event.properties = rest.as_deref();
    serde_json::to_vec(&serde_json::json!({
        "source_offset": offset,
        "plugin": null,
        "version": null,
        "kind": "event_time",
        "bound": marker["bound"],
        "reason": marker["error"],
        "event": event,
    }))
    .expect("serializing to memory")
}

/// One `dead_letters` entry: the source offset, who failed, why, and the event as the plugin
/// got it.
fn dead_letter_entry(
    source_offset: u64,
    record: &PluginRecord,
    kind: &str,
    reason: &str,
    event: &runnel_event::envelope::EventView<'_>,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "source_offset": source_offset,
        "plugin": record.name,
        "version": record.active,
        "kind": kind,
        "reason": reason,
        "event": event,
    }))
    .expect("serializing to memory")
}
