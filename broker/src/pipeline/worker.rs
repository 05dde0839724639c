//! The pipeline thread: its loop, the chain's reload at batch boundaries, the commit, and the
//! answers to the admin API's questions (between batches).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use runnel_host::{Enricher, Runtime};
use runnel_window::Engine;

use super::aggregates::{self, AggRun, Query};
use super::shadow::Shadow;
use super::stage::Stage;
use super::step::Step;
use super::{IDLE_POLL, RETRY_AFTER_FAILURE, Settings, Shared, Topics, host_limits};
use crate::log::BrokerLog;
use crate::plugins::{
    AggregateCommit, BackfillSwap, Pause, PluginKind, PluginRecord, PluginStats, Registry, Status,
};

/// The pipeline thread's state.
pub(super) struct Worker {
    pub(super) runtime: Runtime,
    pub(super) registry: Registry,
    pub(super) log: BrokerLog,
    pub(super) topics: Topics,
    pub(super) settings: Settings,
    pub(super) stages: Vec<Stage>,
    pub(super) seen_generation: u64,
    pub(super) shared: Arc<Shared>,
    /// The offset processed up to (committed or not).
    pub(super) progress: u64,
    /// Automatic pauses not yet committed.
    pub(super) pending_pauses: Vec<Pause>,
    pub(super) last_commit: Instant,
    pub(super) queries: mpsc::Receiver<Query>,
    /// By agent: how far its `received_at` ran ahead of the broker's append time in the last
    /// batch read from it (ms; negative when behind or delayed).
    pub(super) clock_skew: std::collections::BTreeMap<String, i64>,
}

/// What a plugin loads as.
enum Loaded {
    Enricher(Enricher),
    Aggregator(AggRun),
}

impl Worker {
    pub(super) fn run(&mut self, stop: &AtomicBool) {
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
                    if let Some(t) = self.topics.enriched.as_mut() {
                        let _ = t.writer.sync();
                    }
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
    pub(super) fn aggregates(&self, lag: u64) -> Vec<aggregates::AggInfo> {
        let max = self.settings.agent_clock_skew_max_ms;
        let skewed: Vec<aggregates::ClockSkew> = self
            .clock_skew
            .iter()
            .filter(|(_, ahead)| **ahead > max)
            .map(|(agent, ahead)| aggregates::ClockSkew {
                agent: agent.clone(),
                ahead_ms: *ahead,
            })
            .collect();
        self.stages
            .iter()
            .filter_map(|s| {
                s.agg.as_ref().map(|run| {
                    let mut info = aggregates::info(&s.record, run, &s.stats, lag);
                    info.clock_skewed_agents = skewed.clone();
                    info
                })
            })
            .collect()
    }

    /// Records, per agent of a batch, how far its `received_at` ran ahead of the broker's append
    /// time (`ahead_by_origin`, indexed like `origins`), and flags the agents past
    /// `agent_clock_skew_max_ms` in `/metrics`.
    pub(super) fn note_clock_skew(
        &mut self,
        origins: &[(String, String)],
        ahead_by_origin: &[i64],
    ) {
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
    pub(super) fn publish(&self) {
        let lag = self.log.durable_end().saturating_sub(self.progress);
        *self.shared.aggregates.lock().expect("lock poisoned") =
            Some(Arc::new(self.aggregates(lag)));
    }

    /// Answers the admin API's questions (between batches).
    pub(super) fn answer_queries(&mut self) {
        while let Ok(q) = self.queries.try_recv() {
            self.answer(q);
        }
    }

    pub(super) fn answer(&mut self, q: Query) {
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
                            let meta = aggregates::meta_of(record, run.engine.schema());
                            let rows = run
                                .pending
                                .iter()
                                .map(|r| (aggregates::to_final(r), true))
                                .chain(
                                    run.engine
                                        .rows()
                                        .iter()
                                        .map(|r| (aggregates::to_final(r), false)),
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
                Query::Swap { shadow, reply } => {
                    let name = shadow.record.name.clone();
                    let answer = self.swap(*shadow).map_err(|e| format!("{e:#}"));
                    if let Err(e) = &answer {
                        tracing::warn!(plugin = %name, error = %e, "backfill swap refused");
                    }
                    let _ = reply.send(answer);
                }
                Query::SealTopics { reply } => {
                    let _ = reply.send(self.seal_topics().map_err(|e| e.to_string()));
                }
            }
        }
    }

    /// Seals the side topics' active segments.
    fn seal_topics(&mut self) -> Result<aggregates::TopicEnds, runnel_segment::LogError> {
        let t = &mut self.topics;
        Ok(aggregates::TopicEnds {
            dead_letters: t.dead_letters.seal()?,
            late_events: t.late_events.seal()?,
            enriched: match t.enriched.as_mut() {
                Some(e) => Some(e.writer.seal()?),
                None => None,
            },
        })
    }

    /// Swaps a backfilled version in: commits the live progress, folds the events the shadow
    /// has not seen yet (the pipeline waits meanwhile), then in one redb transaction makes the
    /// version active with the shadow's windows and rows; the stage runs the shadow's instance
    /// from the next batch on. Nothing changes if any step fails.
    fn swap(&mut self, mut shadow: Shadow) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.stages.iter().any(Stage::holds),
            "the pipeline is held by a paused plugin; the swap waits until it runs"
        );
        let i = self
            .stages
            .iter()
            .position(|s| {
                s.record.name == shadow.record.name
                    && s.record.position == shadow.record.position
                    && s.is_aggregator()
            })
            .ok_or_else(|| {
                anyhow::anyhow!("{} is no longer in the pipeline", shadow.record.name)
            })?;
        let started = Instant::now();
        self.commit()?;
        shadow.catch_up(&self.log, self.progress, self.settings.batch_events)?;
        let swap = BackfillSwap {
            name: shadow.record.name.clone(),
            position: shadow.record.position,
            plan: shadow.plan.clone(),
            meta: aggregates::meta_of(&shadow.record, shadow.run.engine.schema()),
            snapshot: shadow.run.engine.snapshot(),
            rows: shadow
                .run
                .pending
                .iter()
                .map(aggregates::to_final)
                .collect(),
        };
        let record = self
            .registry
            .backfill_swap(&swap)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        metrics::counter!("runnel_aggregate_rows_final_total", "aggregate" => record.name.clone())
            .increment(shadow.run.pending.len() as u64);
        shadow.run.pending.clear();
        tracing::info!(
            plugin = %record.name,
            version = %record.active,
            offset = self.progress,
            pause_ms = started.elapsed().as_millis() as u64,
            "backfilled version swapped in"
        );
        let stage = &mut self.stages[i];
        stage.record = record;
        stage.agg = Some(shadow.run);
        stage.stats.failing_batches_in_a_row = 0;
        self.publish();
        Ok(())
    }

    /// Rebuilds the chain from the registry.
    pub(super) fn reload(&mut self) -> anyhow::Result<()> {
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
        if record.kind != PluginKind::Aggregate {
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

    pub(super) fn has_aggregators(&self) -> bool {
        self.stages.iter().any(|s| s.agg.is_some())
    }

    /// Commits the progress: syncs the side topics, then the offset, the counts, the pauses,
    /// the window state and the new final rows in one redb transaction.
    pub(super) fn commit(&mut self) -> anyhow::Result<()> {
        self.topics.dead_letters.sync()?;
        self.topics.late_events.sync()?;
        if let Some(t) = self.topics.enriched.as_mut() {
            t.writer.sync()?;
            // What the archive holds is kept there; a failure here loses nothing.
            if let Err(e) = t.writer.delete_before(t.archived.load(Ordering::Acquire)) {
                tracing::warn!(error = %e, "deleting archived segments of the enriched topic failed");
            }
        }
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
                    meta: aggregates::meta_of(&s.record, run.engine.schema()),
                    snapshot: run.engine.snapshot(),
                    rows: run.pending.iter().map(aggregates::to_final).collect(),
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

    pub(super) fn publish_metrics(&self) {
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
            metrics::gauge!("runnel_plugin_traps", "plugin" => name.clone()).set(st.traps as f64);
            metrics::gauge!("runnel_plugin_busy_seconds", "plugin" => name.clone())
                .set(st.busy_ns as f64 / 1e9);
            metrics::gauge!("runnel_plugin_ns_per_event", "plugin" => name.clone())
                .set(st.ns_per_event());
            if s.agg.is_some() {
                metrics::gauge!("runnel_aggregate_fold_ns_per_event", "aggregate" => name)
                    .set(st.fold_ns_per_event());
            }
        }
    }
}
