//! # runnel-host: running plugins without letting them hurt the host
//!
//! The wasmtime embedding shared by the agent (edge plugins) and the broker (enrichers,
//! aggregators: [`Runtime::load_enricher`], [`Runtime::load_aggregator`]). A plugin is a component built against `wit/plugin.wit`; it is called once per
//! batch with the batch as bytes (`runnel-batch`).
//!
//! ## Limits
//! - **Deadline per call** by epoch interruption: one process-wide thread advances the engine's
//!   epoch every [`EPOCH_TICK`]; a call that runs past `deadline` traps with `interrupt`.
//! - **Memory cap per instance**: linear memory may not grow past `memory_bytes_max`; a growth
//!   past it traps (it does not return -1 to a guest that might ignore it).
//! - **Optional fuel**: `fuel_per_call` bounds the instructions of one call.
//! - **No ambient capabilities**: WASI is linked with an empty context (no preopened
//!   directories, no environment, no sockets, no inherited stdio). Clocks and randomness are
//!   deterministic unless [`Capabilities`] grants them: the wall and monotonic clocks read 0
//!   and the random generators are seeded with constants, so a plugin is a pure function of its
//!   batch and a replay gives the same answers (language runtimes that read them at start-up,
//!   such as Python's, still work). A guest's stderr goes to a
//!   bounded in-memory buffer ([`STDERR_BYTES_MAX`] per instance) whose tail is added to the
//!   failure message, so a Rust plugin's panic message reaches the dead letters; plugins log
//!   through the host's `log` import.
//!
//! ## Failures
//! A trap, a timeout, an out-of-memory, an error returned by the plugin, or an answer that breaks
//! the contract (wrong number of outcomes, a bad replacement) never reaches the caller as a
//! crash. The instance is dropped (a fresh one is made from the pre-instantiated component for
//! the next call), and the batch is split in halves, recursively, to find the events that fail:
//! those get [`Fate::Failed`] with the reason, the rest get the plugin's answer. The splitting is
//! bounded by `isolation_calls_max` calls and `isolation_time_max` per batch (a plugin that
//! times out on everything would otherwise cost a deadline per call); past either the events
//! not yet isolated fail too.
//!
//! ## Threads
//! An [`Enricher`] is used by one thread at a time (`&mut self`); make one per pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runnel_batch::{BatchView, BatchWriter, EventRef};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod aggregator;
pub use aggregator::{AggRow, Aggregator, MapOutput, RowInput};

mod bindings {
    wasmtime::component::bindgen!({
        world: "enricher",
        path: "../../wit",
    });
}

use bindings::runnel::plugin::host::{Host, Level};
use bindings::runnel::plugin::types::{Outcome, Param};

/// Bytes of a guest's stderr kept per instance (for panic messages in failures); writes past it
/// fail in the guest.
pub const STDERR_BYTES_MAX: usize = 64 << 10;
/// Bytes of that stderr quoted in a failure message.
pub const STDERR_QUOTE_BYTES: usize = 512;

/// How often the engine's epoch advances; deadlines are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What a plugin may see of the world beyond its batch (granted by an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The host's wall and monotonic clocks (otherwise both read 0).
    pub clock: bool,
    /// The host's random generators (otherwise seeded with constants).
    pub random: bool,
}

impl Capabilities {
    /// Names a manifest or deploy may ask for.
    pub const NAMES: [&'static str; 2] = ["clock", "random"];

    /// Parses capability names; an error names the unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut c = Self::default();
        for n in names {
            match n {
                "clock" => c.clock = true,
                "random" => c.random = true,
                other => {
                    return Err(format!(
                        "capability: {other:?} is not one of {:?}",
                        Self::NAMES
                    ));
                }
            }
        }
        Ok(c)
    }
}

struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Limits of one plugin. Every one is named in the failures it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest one call may run.
    pub deadline: Duration,
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes_max: usize,
    /// Instructions (fuel) one call may use; `None` for no fuel metering.
    pub fuel_per_call: Option<u64>,
    /// Most calls spent isolating the failing events of one batch.
    pub isolation_calls_max: u32,
    /// Longest time spent isolating the failing events of one batch (calls are not cut short;
    /// no new one starts past it).
    pub isolation_time_max: Duration,
    /// Log lines a plugin may write per call; more are counted and dropped.
    pub log_lines_per_call_max: u32,
    /// Clocks and randomness, if granted.
    pub capabilities: Capabilities,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(500),
            memory_bytes_max: 64 << 20,
            fuel_per_call: None,
            isolation_calls_max: 64,
            isolation_time_max: Duration::from_secs(2),
            log_lines_per_call_max: 100,
            capabilities: Capabilities::default(),
        }
    }
}

impl Limits {
    /// Names the limit a timeout or an out-of-memory ran into.
    fn explain(&self, mut f: Failure) -> Failure {
        let limit = match f.kind {
            FailureKind::Timeout if self.fuel_per_call.is_some() => format!(
                "deadline {} ms or fuel_per_call {} exhausted",
                self.deadline.as_millis(),
                self.fuel_per_call.unwrap_or_default()
            ),
            FailureKind::Timeout => {
                format!("ran past its deadline of {} ms", self.deadline.as_millis())
            }
            FailureKind::OutOfMemory => {
                format!(
                    "memory would grow past memory_bytes_max ({} bytes)",
                    self.memory_bytes_max
                )
            }
            _ => return f,
        };
        f.message = format!("{limit} ({})", f.message);
        f
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The call ran past `deadline` (or out of fuel).
    Timeout,
    /// Linear memory would have grown past `memory_bytes_max`.
    OutOfMemory,
    /// The plugin trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// The plugin returned an error.
    Error,
    /// The plugin's answer broke the contract.
    BadOutput,
}

impl FailureKind {
    /// Label for metrics and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::Trap => "trap",
            Self::Error => "error",
            Self::BadOutput => "bad_output",
        }
    }
}

/// A failed call, with what the plugin or wasmtime said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind of failure.
    pub kind: FailureKind,
    /// Details.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Errors loading a plugin (the deploy is refused).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not a component for the world asked for (`enricher` or `aggregator`).
    #[error("not a valid component for this plugin world: {0}")]
    Invalid(String),
    /// The plugin's `init` refused its parameters, or failed.
    #[error("plugin init failed: {0}")]
    Init(Failure),
}

/// What becomes of one input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Pass on unchanged.
    Keep,
    /// Pass on event number `n` of [`EnrichOutput::replacements`] instead.
    Replace(u32),
    /// Dropped by the plugin, with its reason.
    Drop(String),
    /// The plugin failed on this event; it goes to the dead letters.
    Failed(Failure),
}

/// The result of running a batch through an enricher.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichOutput {
    /// One fate per input event, in order.
    pub fates: Vec<Fate>,
    /// Replacement events, in the batch encoding.
    pub replacements: Vec<u8>,
    /// Calls made (1 unless events had to be isolated).
    pub calls: u32,
    /// Calls that failed.
    pub failed_calls: u32,
    /// The longest call (instantiation included).
    pub slowest_call: Duration,
}

/// The process-wide engine and its epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<State>>,
    agg_linker: Arc<Linker<State>>,
    cache_dir: Option<std::path::PathBuf>,
    _ticker: Arc<Ticker>,
}

/// The epoch ticker thread: stopped and joined when the last clone of the runtime goes.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // At most one tick away.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Runtime {
    /// Makes the engine (epoch interruption on, fuel available, pooling allocator) and starts
    /// the epoch ticker.
    pub fn new() -> wasmtime::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(true);
        config.wasm_component_model(true);
        // `RUNNEL_WASM_PERFMAP=1`: name the plugins' compiled functions for `perf` in
        // /tmp/perf-PID.map, so a profile shows which plugin function the time is in.
        if std::env::var_os("RUNNEL_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(1024)
            .max_memory_size(1 << 30);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Enricher::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        let mut agg_linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut agg_linker)?;
        aggregator::add_to_linker(&mut agg_linker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tick_engine, tick_stop) = (engine.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !tick_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    tick_engine.increment_epoch();
                }
            })?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            agg_linker: Arc::new(agg_linker),
            cache_dir: None,
            _ticker: Arc::new(Ticker {
                stop,
                thread: Some(thread),
            }),
        })
    }

    /// Keeps compiled components in `dir` (created if missing), keyed by the SHA-256 of the
    /// component and the engine's compatibility hash, so a component is compiled once per
    /// machine and engine, not at every load (a Python component takes seconds to compile).
    /// Each file carries the SHA-256 of its contents, checked before it is used; a file that
    /// does not check out or that the engine refuses is recompiled and replaced.
    pub fn with_cache_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.cache_dir = Some(dir);
        self
    }

    /// Compiles `wasm`, through the cache when there is one.
    fn compile(&self, wasm: &[u8]) -> Result<Component, String> {
        let compile = || Component::new(&self.engine, wasm).map_err(|e| format!("{e:#}"));
        let Some(dir) = &self.cache_dir else {
            return compile();
        };
        let key = {
            use sha2::Digest;
            use std::hash::{Hash, Hasher};
            let mut engine_hash = std::hash::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut engine_hash);
            let digest = sha2::Sha256::new()
                .chain_update(wasm)
                .chain_update(engine_hash.finish().to_le_bytes())
                .finalize();
            hex(&digest)
        };
        let path = dir.join(format!("{key}.cwasm"));
        if let Ok(bytes) = std::fs::read(&path) {
            if let Some(component) = self.deserialize_checked(&bytes) {
                metrics::counter!("runnel_plugin_cache_hits_total").increment(1);
                return Ok(component);
            }
            tracing::warn!(path = %path.display(), "compiled plugin cache entry unusable; recompiling");
        }
        let component = compile()?;
        metrics::counter!("runnel_plugin_cache_misses_total").increment(1);
        if let Err(e) = write_cache_entry(dir, &path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the compiled plugin cache");
        }
        Ok(component)
    }

    /// A cache entry: 32 bytes of SHA-256 of the rest, then the serialized component.
    fn deserialize_checked(&self, bytes: &[u8]) -> Option<Component> {
        use sha2::Digest;
        let (sum, body) = bytes.split_at_checked(32)?;
        if sha2::Sha256::digest(body).as_slice() != sum {
            return None;
        }
        // SAFETY: the bytes were written by `write_cache_entry` from `Component::serialize` of
        // this engine configuration (the key includes the engine's compatibility hash), and the
        // checksum above proves they are unchanged; wasmtime also checks its own header.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, body) };
        component.ok()
    }

    /// Compiles `wasm` and prepares an enricher named `name` with its parameters and limits.
    /// The first instance is made now, so a broken plugin or a refused `init` fails the load.
    pub fn load_enricher(
        &self,
        name: &str,
        wasm: &[u8],
        params: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Enricher, LoadError> {
        let component = self.compile(wasm).map_err(LoadError::Invalid)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre =
            bindings::EnricherPre::new(pre).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let mut plugin = Enricher {
            name: name.to_string(),
            engine: self.engine.clone(),
            pre,
            params: params
                .into_iter()
                .map(|(name, value)| Param { name, value })
                .collect(),
            limits,
            live: None,
            instances: 0,
            last_call: Duration::ZERO,
        };
        plugin.live().map_err(LoadError::Init)?;
        Ok(plugin)
    }
}

/// The WASI context of one instance: a stderr pipe, and clocks and randomness only if granted.
fn wasi_ctx(stderr: &wasmtime_wasi::p2::pipe::MemoryOutputPipe, caps: Capabilities) -> WasiCtx {
    use rand010::SeedableRng;
    let mut b = WasiCtx::builder();
    b.stderr(stderr.clone());
    if !caps.clock {
        b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    if !caps.random {
        b.secure_random(rand010::rngs::StdRng::seed_from_u64(0x5eed))
            .insecure_random(rand010::rngs::StdRng::seed_from_u64(0x5eed + 1))
            .insecure_random_seed(0x5eed);
    }
    b.build()
}

/// Events `start..end` of a batch as a batch of their own (the batch itself when that is all
/// of it): what a call gets while failing events are isolated.
fn sub_batch<'a>(
    view: &BatchView<'_>,
    whole: &'a [u8],
    start: usize,
    end: usize,
) -> std::borrow::Cow<'a, [u8]> {
    if start == 0 && end == view.len() {
        return std::borrow::Cow::Borrowed(whole);
    }
    let mut w = BatchWriter::new();
    for i in start..end {
        w.push_ref(&view.event(i));
    }
    std::borrow::Cow::Owned(w.finish())
}

/// Epoch ticks for a deadline (at least one).
fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (deadline.as_nanos().div_ceil(tick)).max(1) as u64
}

/// A store for one instance of plugin `name`, with its limits applied.
fn new_store(engine: &Engine, name: &str, limits: &Limits) -> Result<Store<State>, Failure> {
    let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_BYTES_MAX);
    let state = State {
        wasi: wasi_ctx(&stderr, limits.capabilities),
        stderr,
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes_max)
            .trap_on_grow_failure(true)
            .build(),
        plugin: name.to_string(),
        log_budget: limits.log_lines_per_call_max,
        logs_dropped: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(deadline_ticks(limits.deadline));
    store.epoch_deadline_trap();
    store
        .set_fuel(limits.fuel_per_call.unwrap_or(u64::MAX))
        .map_err(|e| classify(&e))?;
    Ok(store)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_cache_entry(
    dir: &std::path::Path,
    path: &std::path::Path,
    component: &Component,
) -> std::io::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    let body = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&sha2::Sha256::digest(&body))?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What a plugin's store holds.
struct State {
    wasi: WasiCtx,
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: String,
    log_budget: u32,
    logs_dropped: u64,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::runnel::plugin::types::Host for State {}

impl Host for State {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            self.logs_dropped += 1;
            return;
        }
        self.log_budget -= 1;
        let plugin = &self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        metrics::counter!("runnel_plugin_counter_total", "plugin" => self.plugin.clone(), "name" => name)
            .increment(delta);
    }
}

struct Live {
    store: Store<State>,
    bindings: bindings::Enricher,
}

/// A loaded enricher plugin.
pub struct Enricher {
    name: String,
    engine: Engine,
    pre: bindings::EnricherPre<State>,
    params: Vec<Param>,
    limits: Limits,
    live: Option<Live>,
    instances: u64,
    /// How long the last call ran (instantiation excluded).
    last_call: Duration,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("name", &self.name)
            .field("instances", &self.instances)
            .finish()
    }
}

fn classify(err: &wasmtime::Error) -> Failure {
    let full = format!("{err:#}");
    let (kind, message) = match err.downcast_ref::<Trap>() {
        Some(t @ (Trap::Interrupt | Trap::OutOfFuel)) => (FailureKind::Timeout, t.to_string()),
        _ if full.contains("growing memory") => (FailureKind::OutOfMemory, full),
        Some(t) => (FailureKind::Trap, t.to_string()),
        None => (FailureKind::Trap, full),
    };
    Failure { kind, message }
}

/// Adds the tail of the guest's stderr (a panic message, say) to a failure.
fn with_stderr(
    mut failure: Failure,
    stderr: &wasmtime_wasi::p2::pipe::MemoryOutputPipe,
) -> Failure {
    let bytes = stderr.contents();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if !text.is_empty() {
        let start = text.len().saturating_sub(STDERR_QUOTE_BYTES);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        failure.message = format!("{}; stderr: {}", failure.message, &text[start..]);
    }
    failure
}

impl Enricher {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Instances made so far (1 + one per failed call).
    pub fn instances(&self) -> u64 {
        self.instances
    }

    /// Drops the live instance and makes a fresh one (with `init`), returning how long that
    /// took. Used at a redeploy boundary and by the benchmarks.
    pub fn reinstantiate(&mut self) -> Result<Duration, Failure> {
        self.live = None;
        let started = Instant::now();
        self.live()?;
        Ok(started.elapsed())
    }

    fn ticks(&self) -> u64 {
        deadline_ticks(self.limits.deadline)
    }

    /// The live instance, made (and `init`ed) if there is none.
    fn live(&mut self) -> Result<&mut Live, Failure> {
        if self.live.is_none() {
            let mut store = new_store(&self.engine, &self.name, &self.limits)?;
            let bindings = self.pre.instantiate(&mut store).map_err(|e| classify(&e))?;
            match bindings.call_init(&mut store, &self.params) {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => {
                    return Err(Failure {
                        kind: FailureKind::Error,
                        message: msg,
                    });
                }
                Err(e) => return Err(classify(&e)),
            }
            self.instances += 1;
            self.live = Some(Live { store, bindings });
        }
        Ok(self.live.as_mut().expect("just made"))
    }

    /// One call on one (sub-)batch; checks the answer against the contract.
    fn call(&mut self, batch: &[u8], events: usize) -> Result<(Vec<Outcome>, Vec<u8>), Failure> {
        let ticks = self.ticks();
        let fuel = self.limits.fuel_per_call.unwrap_or(u64::MAX);
        let log_budget = self.limits.log_lines_per_call_max;
        let limits = self.limits.clone();
        let live = self.live()?;
        live.store.set_epoch_deadline(ticks);
        live.store.set_fuel(fuel).map_err(|e| classify(&e))?;
        live.store.data_mut().log_budget = log_budget;
        let started = Instant::now();
        let answer = live.bindings.call_enrich(&mut live.store, batch);
        let took = started.elapsed();
        let result = match answer {
            Err(e) => Err(with_stderr(
                limits.explain(classify(&e)),
                &live.store.data().stderr,
            )),
            Ok(Err(msg)) => Err(Failure {
                kind: FailureKind::Error,
                message: msg,
            }),
            Ok(Ok(r)) => check_answer(r.outcomes, r.replacements, events),
        };
        self.last_call = took;
        if result.is_err() {
            // The instance may be in any state: never call it again.
            self.live = None;
        }
        result
    }

    /// Runs `batch` (batch encoding) through the plugin; never fails as a whole: events the
    /// plugin cannot handle come back as [`Fate::Failed`].
    pub fn enrich(&mut self, batch: &[u8]) -> Result<EnrichOutput, runnel_batch::BatchError> {
        let view = BatchView::new(batch)?;
        let mut out = Run {
            fates: vec![Fate::Keep; view.len()],
            replacements: BatchWriter::new(),
            whole: None,
            calls: 0,
            failed_calls: 0,
            last_failure: None,
            started: Instant::now(),
            slowest_call: Duration::ZERO,
        };
        if !view.is_empty() {
            self.run_range(&view, batch, 0, view.len(), &mut out);
        }
        let replacements = match out.whole {
            Some(whole) => whole,
            None => out.replacements.finish(),
        };
        Ok(EnrichOutput {
            fates: out.fates,
            replacements,
            calls: out.calls,
            failed_calls: out.failed_calls,
            slowest_call: out.slowest_call,
        })
    }

    fn run_range(
        &mut self,
        view: &BatchView<'_>,
        whole: &[u8],
        start: usize,
        end: usize,
        out: &mut Run,
    ) {
        let over_time = out.calls > 0 && out.started.elapsed() >= self.limits.isolation_time_max;
        if out.calls >= self.limits.isolation_calls_max || over_time {
            let cause = out
                .last_failure
                .clone()
                .map_or_else(String::new, |f| format!(" after {f}"));
            let failure = Failure {
                kind: out
                    .last_failure
                    .as_ref()
                    .map_or(FailureKind::Error, |f| f.kind),
                message: if over_time {
                    format!(
                        "isolation_time_max ({} ms) reached{cause}",
                        self.limits.isolation_time_max.as_millis()
                    )
                } else {
                    format!(
                        "isolation_calls_max ({}) reached{cause}",
                        self.limits.isolation_calls_max
                    )
                },
            };
            for fate in &mut out.fates[start..end] {
                *fate = Fate::Failed(failure.clone());
            }
            return;
        }
        let bytes = sub_batch(view, whole, start, end);
        out.calls += 1;
        let result = self.call(&bytes, end - start);
        let took = self.last_call;
        out.slowest_call = out.slowest_call.max(took);
        metrics::histogram!("runnel_plugin_call_seconds", "plugin" => self.name.clone())
            .record(took.as_secs_f64());
        match result {
            Ok((outcomes, replacements)) if start == 0 && end == view.len() => {
                // One call for the whole batch: its answer is the answer.
                let mut any = false;
                for (fate, outcome) in out.fates.iter_mut().zip(outcomes) {
                    *fate = match outcome {
                        Outcome::Keep => Fate::Keep,
                        Outcome::Drop(reason) => Fate::Drop(reason),
                        Outcome::Replace(n) => {
                            any = true;
                            Fate::Replace(n)
                        }
                    };
                }
                // Checked by `check_answer` when a replacement is referenced; else not passed on.
                out.whole = any.then_some(replacements);
            }
            Ok((outcomes, replacements)) => {
                let repl = BatchView::new(&replacements).ok();
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    out.fates[start + i] = match outcome {
                        Outcome::Keep => Fate::Keep,
                        Outcome::Drop(reason) => Fate::Drop(reason),
                        Outcome::Replace(n) => {
                            let ev: EventRef<'_> =
                                repl.as_ref().expect("checked").event(n as usize);
                            out.replacements.push_ref(&ev);
                            Fate::Replace(out.replacements.len() as u32 - 1)
                        }
                    };
                }
            }
            Err(failure) => {
                out.failed_calls += 1;
                metrics::counter!("runnel_plugin_failures_total", "plugin" => self.name.clone(), "kind" => failure.kind.as_str())
                    .increment(1);
                if end - start == 1 {
                    out.fates[start] = Fate::Failed(failure);
                    return;
                }
                out.last_failure = Some(failure);
                let mid = start + (end - start) / 2;
                self.run_range(view, whole, start, mid, out);
                self.run_range(view, whole, mid, end, out);
            }
        }
    }
}

struct Run {
    fates: Vec<Fate>,
    replacements: BatchWriter,
    /// The plugin's own replacements batch, when one call answered for the whole batch (the
    /// common case): passed on as it is, not copied event by event into `replacements`.
    whole: Option<Vec<u8>>,
    calls: u32,
    failed_calls: u32,
    last_failure: Option<Failure>,
    started: Instant,
    slowest_call: Duration,
}

/// Checks an answer: one outcome per event; every replacement index points at a valid event.
fn check_answer(
    outcomes: Vec<Outcome>,
    replacements: Vec<u8>,
    events: usize,
) -> Result<(Vec<Outcome>, Vec<u8>), Failure> {
    let bad = |message: String| Failure {
        kind: FailureKind::BadOutput,
        message,
    };
    if outcomes.is_empty() && events > 0 {
        // The contract's short form of "keep every event".
        return Ok((vec![Outcome::Keep; events], replacements));
    }
    if outcomes.len() != events {
        return Err(bad(format!(
            "{} outcomes for {events} events",
            outcomes.len()
        )));
    }
    let has_replacements = outcomes.iter().any(|o| matches!(o, Outcome::Replace(_)));
    if has_replacements {
        let view = BatchView::new(&replacements).map_err(|e| bad(format!("replacements: {e}")))?;
        view.validate()
            .map_err(|e| bad(format!("replacements: {e}")))?;
        if let Some(n) = outcomes.iter().find_map(|o| match o {
            Outcome::Replace(n) if *n as usize >= view.len() => Some(*n),
            _ => None,
        }) {
            return Err(bad(format!(
                "replace({n}) but only {} replacements",
                view.len()
            )));
        }
    }
    Ok((outcomes, replacements))
}
