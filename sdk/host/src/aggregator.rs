//! Aggregator plugins (`aggregator` world): a batch of events in, rows out; the host owns the
//! windows (`runnel-window`). Same limits and failure isolation as enrichers: a call that
//! fails is retried on halves of the batch until the events that fail are found; those events
//! fail, the rows of the others are kept.

use runnel_batch::BatchView;
use runnel_window::{CalendarUnit, MeasureKind, Schema, WindowSpec};
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::{Failure, FailureKind, Limits, LoadError, State, classify, new_store, with_stderr};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "aggregator",
        path: "../../wit",
    });
}

use bindings::runnel::plugin::types::{
    AggregateSchema, CalendarUnit as WitUnit, MeasureKind as WitKind, Param, Value as WitValue,
    Window as WitWindow,
};

impl bindings::runnel::plugin::types::Host for State {}

impl bindings::runnel::plugin::host::Host for State {
    fn log(&mut self, level: bindings::runnel::plugin::host::Level, message: String) {
        use bindings::runnel::plugin::host::Level;
        let level = match level {
            Level::Debug => crate::bindings::runnel::plugin::host::Level::Debug,
            Level::Info => crate::bindings::runnel::plugin::host::Level::Info,
            Level::Warn => crate::bindings::runnel::plugin::host::Level::Warn,
            Level::Error => crate::bindings::runnel::plugin::host::Level::Error,
        };
        crate::bindings::runnel::plugin::host::Host::log(self, level, message);
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        crate::bindings::runnel::plugin::host::Host::counter_add(self, name, delta);
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::Aggregator::add_to_linker::<State, HasSelf<State>>(linker, |s| s)
}

/// A measure input of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowInput {
    /// No value.
    Null,
    /// A number.
    Num(f64),
    /// Text.
    Text(String),
}

/// One row an aggregator mapped an event to.
#[derive(Debug, Clone, PartialEq)]
pub struct AggRow {
    /// Index in the batch given to [`Aggregator::map_batch`] of the event the row comes from.
    pub event: u32,
    /// Event time.
    pub event_time_ms: i64,
    /// Dimension values, in schema order.
    pub dimensions: Vec<String>,
    /// Measure inputs, in schema order.
    pub inputs: Vec<RowInput>,
}

/// What [`Aggregator::map_batch`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct MapOutput {
    /// Rows of the events that did not fail.
    pub rows: Vec<AggRow>,
    /// Events the plugin failed on, with the failure.
    pub failed: Vec<(u32, Failure)>,
    /// Calls made.
    pub calls: u32,
    /// Calls that trapped, timed out, ran out of memory or broke the contract.
    pub failed_calls: u32,
}

struct Live {
    store: wasmtime::Store<State>,
    bindings: bindings::Aggregator,
}

/// A loaded aggregator plugin.
pub struct Aggregator {
    name: String,
    engine: Engine,
    pre: bindings::AggregatorPre<State>,
    params: Vec<Param>,
    limits: Limits,
    live: Option<Live>,
    schema: Schema,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("name", &self.name)
            .finish()
    }
}

fn schema_from(s: AggregateSchema) -> Result<Schema, String> {
    let ms = |n: u64, what: &str| i64::try_from(n).map_err(|_| format!("{what}: {n} is too large"));
    let window = match s.window {
        WitWindow::Tumbling(size) => WindowSpec::Tumbling {
            size_ms: ms(size, "window.tumbling")?,
        },
        WitWindow::Hopping(h) => WindowSpec::Hopping {
            size_ms: ms(h.size, "window.hopping.size")?,
            slide_ms: ms(h.slide, "window.hopping.slide")?,
        },
        WitWindow::Session(gap) => WindowSpec::Session {
            gap_ms: ms(gap, "window.session")?,
        },
        WitWindow::Calendar(c) => WindowSpec::Calendar {
            unit: match c.unit {
                WitUnit::Day => CalendarUnit::Day,
                WitUnit::Week => CalendarUnit::Week,
                WitUnit::Month => CalendarUnit::Month,
            },
            tz: WindowSpec::zone(&c.time_zone).map_err(|e| e.to_string())?,
        },
    };
    window.validate().map_err(|e| format!("window: {e}"))?;
    Ok(Schema {
        dimensions: s.dimensions,
        measures: s
            .measures
            .into_iter()
            .map(|m| {
                let kind = match m.kind {
                    WitKind::Count => MeasureKind::Count,
                    WitKind::Sum => MeasureKind::Sum,
                    WitKind::Min => MeasureKind::Min,
                    WitKind::Max => MeasureKind::Max,
                    WitKind::Avg => MeasureKind::Avg,
                    WitKind::Distinct => MeasureKind::Distinct,
                    WitKind::Quantiles => MeasureKind::Quantiles,
                };
                (m.name, kind)
            })
            .collect(),
        window,
        allowed_lateness_ms: ms(s.allowed_lateness_ms, "allowed_lateness_ms")?,
    })
}

impl crate::Runtime {
    /// Compiles `wasm` (an `aggregator` component) and prepares it; its `init` runs now, and
    /// the schema it returns is checked, so a broken plugin fails the load.
    pub fn load_aggregator(
        &self,
        name: &str,
        wasm: &[u8],
        params: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Aggregator, LoadError> {
        let component = self.compile(wasm).map_err(LoadError::Invalid)?;
        let pre = self
            .agg_linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = bindings::AggregatorPre::new(pre)
            .map_err(|e| LoadError::Invalid(format!("not an aggregator component: {e:#}")))?;
        let mut a = Aggregator {
            name: name.to_string(),
            engine: self.engine.clone(),
            pre,
            params: params
                .into_iter()
                .map(|(name, value)| Param { name, value })
                .collect(),
            limits,
            live: None,
            schema: Schema {
                dimensions: vec![],
                measures: vec![],
                window: WindowSpec::Tumbling { size_ms: 1 },
                allowed_lateness_ms: 0,
            },
        };
        let schema = a.instantiate().map_err(LoadError::Init)?;
        a.schema = schema;
        Ok(a)
    }
}

impl Aggregator {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema its `init` returned.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Makes a fresh instance and runs `init`; returns the schema it declares.
    fn instantiate(&mut self) -> Result<Schema, Failure> {
        self.live = None;
        let mut store = new_store(&self.engine, &self.name, &self.limits)?;
        let bindings = self.pre.instantiate(&mut store).map_err(|e| classify(&e))?;
        let schema = match bindings.call_init(&mut store, &self.params) {
            Ok(Ok(s)) => schema_from(s).map_err(|message| Failure {
                kind: FailureKind::BadOutput,
                message: format!("schema: {message}"),
            })?,
            Ok(Err(message)) => {
                return Err(Failure {
                    kind: FailureKind::Error,
                    message,
                });
            }
            Err(e) => return Err(classify(&e)),
        };
        self.live = Some(Live { store, bindings });
        Ok(schema)
    }

    fn call(&mut self, batch: &[u8]) -> Result<Vec<bindings::runnel::plugin::types::Row>, Failure> {
        if self.live.is_none() {
            self.instantiate()?;
        }
        let ticks = crate::deadline_ticks(self.limits.deadline);
        let live = self.live.as_mut().expect("instantiated");
        live.store.set_epoch_deadline(ticks);
        live.store
            .set_fuel(self.limits.fuel_per_call.unwrap_or(u64::MAX))
            .map_err(|e| classify(&e))?;
        let result = match live.bindings.call_map_batch(&mut live.store, batch) {
            Err(e) => Err(with_stderr(
                self.limits.explain(classify(&e)),
                &live.store.data().stderr,
            )),
            Ok(Err(message)) => Err(Failure {
                kind: FailureKind::Error,
                message,
            }),
            Ok(Ok(rows)) => Ok(rows),
        };
        if result.is_err() {
            self.live = None;
        }
        result
    }

    /// Maps a batch to rows; events the plugin fails on are isolated (as for enrichers) and
    /// returned in `failed`, with the rows of every other event kept.
    pub fn map_batch(&mut self, batch: &[u8]) -> Result<MapOutput, runnel_batch::BatchError> {
        let view = BatchView::new(batch)?;
        let mut out = MapOutput {
            rows: Vec::new(),
            failed: Vec::new(),
            calls: 0,
            failed_calls: 0,
        };
        if !view.is_empty() {
            let started = std::time::Instant::now();
            self.run_range(&view, batch, 0, view.len(), &mut out, started);
        }
        Ok(out)
    }

    fn run_range(
        &mut self,
        view: &BatchView<'_>,
        whole: &[u8],
        start: usize,
        end: usize,
        out: &mut MapOutput,
        started: std::time::Instant,
    ) {
        let over = out.calls > 0 && started.elapsed() >= self.limits.isolation_time_max;
        if out.calls >= self.limits.isolation_calls_max || over {
            let limit = if over {
                "isolation_time_max"
            } else {
                "isolation_calls_max"
            };
            for i in start..end {
                out.failed.push((
                    i as u32,
                    Failure {
                        kind: FailureKind::Error,
                        message: format!("{limit} reached"),
                    },
                ));
            }
            return;
        }
        let bytes = crate::sub_batch(view, whole, start, end);
        out.calls += 1;
        match self.call(&bytes) {
            Ok(rows) => {
                let n = (end - start) as u32;
                if let Some(bad) = rows.iter().find(|r| r.event >= n) {
                    let f = Failure {
                        kind: FailureKind::BadOutput,
                        message: format!(
                            "row.event {} is not an event of the batch ({n} events)",
                            bad.event
                        ),
                    };
                    out.failed_calls += 1;
                    for i in start..end {
                        out.failed.push((i as u32, f.clone()));
                    }
                    return;
                }
                out.rows.extend(rows.into_iter().map(|r| {
                    AggRow {
                        event: start as u32 + r.event,
                        event_time_ms: r.event_time_ms,
                        dimensions: r.dimensions,
                        inputs: r
                            .inputs
                            .into_iter()
                            .map(|v| match v {
                                WitValue::Null => RowInput::Null,
                                WitValue::Int(i) => RowInput::Num(i as f64),
                                WitValue::Float(f) => RowInput::Num(f),
                                WitValue::Text(t) => RowInput::Text(t),
                            })
                            .collect(),
                    }
                }));
            }
            Err(f) => {
                out.failed_calls += 1;
                if end - start == 1 {
                    out.failed.push((start as u32, f));
                    return;
                }
                let mid = start + (end - start) / 2;
                self.run_range(view, whole, start, mid, out, started);
                self.run_range(view, whole, mid, end, out, started);
            }
        }
    }
}
