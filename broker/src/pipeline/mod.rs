//! # pipeline: the log through the deployed plugins into the aggregates
//!
//! Reads the log from its committed offset, runs the deployed enrichers over each batch, in
//! order, and folds what comes out into the windows of every deployed aggregator
//! ([`aggregates`]). One thread ([`worker`]); one batch is one [`step`], a dispatch over named
//! stages; the fold of rows into windows is a pure function ([`fold`]).
//!
//! A backfill's shadow chain ([`shadow`]) folds history the same way, apart; the pipeline
//! thread folds the rest of it and swaps it in ([`aggregates::Query::Swap`]).
//!
//! May call: [`crate::log`] (read), [`crate::topics`] (append, sync), [`crate::plugins`] (the
//! registry: plugins, counts, committed state), `runnel-host` and `runnel-window`. The admin
//! API and Flight reach it only through [`Shared`] and [`aggregates`]'s questions.
//!
//! ## One batch (see [`step`])
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
//! 6. The dead letters and late events are appended, and (with the archive on) the chain's
//!    output to the `enriched` topic; at the commit they are synced, then the
//!    new offset, every plugin's counts, every aggregator's window snapshot and its new final
//!    rows are committed in one redb transaction. Without aggregators that happens after
//!    every batch; with them every `aggregate_commit_interval_ms` and whenever the pipeline
//!    catches up. After a crash the pipeline resumes from the committed offset with the
//!    committed window state: counts and rows describe each event once, and entries the side
//!    topics already hold are not written again.

pub mod aggregates;
pub mod fold;
mod parallel;
pub mod shadow;
mod stage;
pub mod step;
pub mod tenant;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use runnel_host::{Limits, Runtime};

use crate::log::BrokerLog;
use crate::plugins::{PluginLimits, Registry};
use crate::topics::TopicWriter;
use aggregates::Query;

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
    /// Threads the aggregators of a batch run on, side by side (`pipeline_aggregator_threads`;
    /// 0: one per core).
    pub aggregator_threads: usize,
    /// How much isolating the failing events of one batch may cost.
    pub isolation: Isolation,
    /// How often progress is committed while aggregators run (`aggregate_commit_interval_ms`).
    pub commit_interval: Duration,
    /// Watermark settings and window limits of every aggregate.
    pub window: runnel_window::Settings,
    /// An agent whose `received_at` runs ahead of the broker's append time by more than this
    /// is flagged (`agent_clock_skew_max_ms`).
    pub agent_clock_skew_max_ms: i64,
    /// Which tenant each agent is of: a tenant's aggregator is given its events only.
    pub tenants: std::sync::Arc<crate::auth::Tenants>,
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
    pub aggregates: Mutex<Option<Arc<Vec<aggregates::AggInfo>>>>,
}

impl Shared {
    /// The aggregates as of the last commit or reload.
    pub fn published_aggregates(&self) -> Option<Arc<Vec<aggregates::AggInfo>>> {
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
        let mut worker = worker::Worker {
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
    /// `enriched`: the chain's output, for the archive (`None`: the archive is off).
    pub enriched: Option<EnrichedTopic>,
}

/// The `enriched` topic and how far the archive holds it.
#[derive(Debug)]
pub struct EnrichedTopic {
    /// Its writer.
    pub writer: TopicWriter,
    /// The topic offset below which the archive's `enriched_events` holds every record: the
    /// segments below it are deleted at the pipeline's commits.
    pub archived: Arc<AtomicU64>,
}
