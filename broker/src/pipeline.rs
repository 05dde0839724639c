//! The broker pipeline: reads the log from its committed offset and runs the deployed enrichers
//! over each batch, in order.
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
//! 5. The batch's dead letters are appended and synced, then the new offset and every plugin's
//!    counts are committed in one redb transaction. After a crash the pipeline resumes from the
//!    committed offset: counts describe each event once, and dead letters the topic already
//!    holds are not written again.
//!
//! What comes out of the chain is handed to windowed aggregation once it exists; until then the
//! chain's output is counted (`events_out`) and not kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_batch::{BatchView, BatchWriter};
use runnel_host::{Enricher, Fate, Limits, Runtime};

use crate::log::BrokerLog;
use crate::registry::{Pause, PluginLimits, PluginRecord, PluginStats, Policy, Registry, Status};
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
        dead_letters: TopicWriter,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        shared
            .offset
            .store(registry.pipeline_offset()?, Ordering::Release);
        let mut worker = Worker {
            runtime,
            registry,
            log,
            dead_letters,
            settings,
            stages: Vec::new(),
            seen_generation: 0,
            shared: shared.clone(),
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

struct Stage {
    record: PluginRecord,
    enricher: Option<Enricher>,
    stats: PluginStats,
}

impl Stage {
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
    dead_letters: TopicWriter,
    settings: Settings,
    stages: Vec<Stage>,
    seen_generation: u64,
    shared: Arc<Shared>,
}

/// A failed event on its way to `dead_letters`.
struct DeadLetter {
    source: usize,
    entry: Vec<u8>,
}

enum Step {
    Idle,
    Progressed,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            match self.step() {
                Ok(Step::Progressed) => {
                    *self.shared.failure.lock().expect("lock poisoned") = None;
                }
                Ok(Step::Idle) => std::thread::sleep(IDLE_POLL),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "pipeline failed; retrying");
                    metrics::counter!("runnel_pipeline_failures_total").increment(1);
                    *self.shared.failure.lock().expect("lock poisoned") = Some(format!("{e:#}"));
                    // Forget uncommitted state: the next attempt starts from the registry.
                    self.stages.clear();
                    self.seen_generation = 0;
                    std::thread::sleep(RETRY_AFTER_FAILURE);
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
            let mut enricher = if same_version {
                prev.and_then(|p| p.enricher)
            } else {
                None
            };
            if record.status == Status::Running && enricher.is_none() {
                match self.load(&record) {
                    Ok(e) => enricher = Some(e),
                    Err(reason) => {
                        tracing::error!(plugin = %record.name, %reason, "plugin does not load; pausing it");
                        pauses.push((record.name.clone(), reason));
                    }
                }
            }
            if changed && enricher.is_some() {
                tracing::info!(plugin = %record.name, version = %record.active, "plugin version active");
            }
            self.stages.push(Stage {
                record,
                enricher,
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
        Ok(())
    }

    fn load(&self, record: &PluginRecord) -> Result<Enricher, String> {
        let v = record.active_version();
        let path = self.registry.wasm_path(&record.name, &v.sha256);
        let wasm = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        self.runtime
            .load_enricher(
                &record.name,
                &wasm,
                v.params.clone(),
                host_limits(&v.limits, &v.capabilities, self.settings.isolation),
            )
            .map_err(|e| e.to_string())
    }

    fn step(&mut self) -> anyhow::Result<Step> {
        if self.seen_generation != self.registry.generation() {
            self.reload()?;
            if self.seen_generation != self.registry.generation() {
                return Ok(Step::Idle);
            }
        }
        let offset = self.shared.offset.load(Ordering::Acquire);
        let end = self.log.durable_end();
        metrics::gauge!("runnel_pipeline_offset").set(offset as f64);
        metrics::gauge!("runnel_pipeline_lag_events").set(end.saturating_sub(offset) as f64);
        if self.stages.iter().any(Stage::holds) || offset >= end {
            return Ok(Step::Idle);
        }
        let src =
            self.log
                .read_batch(offset, self.settings.batch_events, PIPELINE_BATCH_BYTES_MAX)?;
        if src.offsets.is_empty() {
            if src.next > offset {
                self.registry.commit(src.next, &[], &[])?;
                self.shared.offset.store(src.next, Ordering::Release);
                return Ok(Step::Progressed);
            }
            return Ok(Step::Idle);
        }
        let before: Vec<PluginStats> = self.stages.iter().map(|s| s.stats.clone()).collect();
        let mut batch = src.batch;
        // For each event of `batch`, its index in the source batch.
        let mut index: Vec<usize> = (0..src.offsets.len()).collect();
        let mut dead = Vec::new();
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
            s.batches += 1;
            s.traps += u64::from(out.failed_calls);
            s.slowest_call_ms = s.slowest_call_ms.max(out.slowest_call.as_secs_f64() * 1e3);
            *s.events_in_by_version
                .entry(stage.record.active.clone())
                .or_default() += n as u64;
            s.events_in += n as u64;
            if let Some(Fate::Failed(f)) = out.fates.iter().find(|f| matches!(f, Fate::Failed(_))) {
                s.last_error = Some(f.to_string());
            }
            if failed * 2 > n {
                s.failing_batches_in_a_row += 1;
            } else {
                s.failing_batches_in_a_row = 0;
            }
            if failed > 0 && s.failing_batches_in_a_row >= pause_after {
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
                    held = true;
                    break;
                }
                // `skip`: this batch passes the plugin untouched, like the ones after it.
                s.events_out += n as u64;
                continue;
            }
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
                        dead.push(DeadLetter {
                            source: index[i],
                            entry: dead_letter_entry(
                                src.offsets[index[i]],
                                &stage.record,
                                f,
                                &view,
                                i,
                                agent_id,
                                host,
                            ),
                        });
                    }
                }
            }
            s.events_out += next_index.len() as u64;
            batch = w.finish();
            index = next_index;
        }
        if held {
            // Nothing of this batch is committed; the pipeline waits here.
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
        dead.sort_by_key(|d| d.source);
        let mut appended = 0u64;
        for d in &dead {
            if self.dead_letters.append(src.offsets[d.source], &d.entry)? {
                appended += 1;
            }
        }
        if appended > 0 {
            self.dead_letters.sync()?;
        }
        metrics::counter!("runnel_dead_letters_total").increment(appended);
        let stats: Vec<(String, u64, PluginStats)> = self
            .stages
            .iter()
            .map(|s| (s.record.name.clone(), s.record.position, s.stats.clone()))
            .collect();
        self.registry.commit(src.next, &stats, &pauses)?;
        self.shared.offset.store(src.next, Ordering::Release);
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

/// One `dead_letters` entry: the source offset, who failed, why, and the event as the plugin
/// got it.
fn dead_letter_entry(
    source_offset: u64,
    record: &PluginRecord,
    failure: &runnel_host::Failure,
    view: &BatchView<'_>,
    i: usize,
    agent_id: &str,
    host: &str,
) -> Vec<u8> {
    let event = event_view(&view.event(i), source_offset, agent_id, host);
    serde_json::to_vec(&serde_json::json!({
        "source_offset": source_offset,
        "plugin": record.name,
        "version": record.active,
        "kind": failure.kind.as_str(),
        "reason": failure.message,
        "event": event,
    }))
    .expect("serializing to memory")
}
