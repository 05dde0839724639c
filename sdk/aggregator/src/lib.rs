//! # runnel-aggregator: a Runnel aggregator is a schema and one function
//!
//! An aggregator maps each event to rows (dimension values and measure inputs); the broker
//! keeps the windows, the watermarks, the state and the guarantees (`docs/windows.md`). This
//! crate turns the host's call per batch into one call of your function per event, and fills
//! in each row's event index and event time.
//!
//! ```ignore
//! //! events_per_type: events per event_type and platform, in 1-minute tumbling windows.
//!
//! use runnel_aggregator::{Aggregate, Event, Field, Measure, Params, Rows, Value, Window};
//!
//! fn schema(_: &Params) -> Result<Aggregate, String> {
//!     Ok(Aggregate::new(Window::Tumbling { size_ms: 60_000 })
//!         .lateness_ms(30_000)
//!         .dimension("event_type")
//!         .dimension("platform")
//!         .measure("events", Measure::Count))
//! }
//!
//! fn map(event: &Event<'_>, rows: &mut Rows) {
//!     let platform = event.field(Field::Platform).unwrap_or("unknown");
//!     rows.push(&[event.event_type(), platform], [Value::Null]);
//! }
//!
//! runnel_aggregator::aggregator!(map, schema = schema);
//! ```
//!
//! This example is `plugins/events-per-type` in the Runnel repository, built by its CI.
//!
//! [`Props`] reads `properties` (a JSON object) when a row needs them. Build with
//! `cargo build --release --target wasm32-wasip2` (or `runnel plugin build`). A plugin has no
//! filesystem or network, and its clocks and randomness are deterministic unless granted.

use runnel_batch::BatchView;
pub use runnel_batch::{EventRef as Event, Field};

/// The generated bindings of the `aggregator` world (`wit/plugin.wit`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "aggregator",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator_world",
        default_bindings_module: "runnel_aggregator::bindings",
    });
}

use bindings::runnel::plugin::types as wit;

/// A measure the host folds (the contract's `measure-kind`): count, sum, min, max, avg,
/// distinct (HyperLogLog, about 1.6% relative standard error), quantiles (p50, p90, p99, by
/// t-digest).
pub use wit::MeasureKind as Measure;

/// Calendar window units (the contract's `calendar-unit`): day, week (Monday to Monday),
/// month.
pub use wit::CalendarUnit;

/// The windows rows are folded into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: u64,
    },
    /// Windows of `size_ms` starting every `slide_ms` (which divides `size_ms`).
    Hopping {
        /// Window length.
        size_ms: u64,
        /// Distance between window starts.
        slide_ms: u64,
    },
    /// Per key, events no more than `gap_ms` apart.
    Session {
        /// Longest gap inside a session.
        gap_ms: u64,
    },
    /// Calendar days, weeks or months in an IANA time zone ("UTC", "Africa/Nairobi").
    Calendar {
        /// The unit.
        unit: CalendarUnit,
        /// The time zone.
        time_zone: String,
    },
}

/// What an aggregator produces: its dimensions, measures, window and allowed lateness.
#[derive(Debug, Clone)]
pub struct Aggregate {
    window: Window,
    lateness_ms: u64,
    dimensions: Vec<String>,
    measures: Vec<(String, Measure)>,
}

impl Aggregate {
    /// An aggregate over `window`, no dimensions, no measures, no allowed lateness.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            lateness_ms: 0,
            dimensions: Vec::new(),
            measures: Vec::new(),
        }
    }

    /// How long after a window's end (by watermark) late events still update it.
    pub fn lateness_ms(mut self, ms: u64) -> Self {
        self.lateness_ms = ms;
        self
    }

    /// Adds a group-by dimension column.
    pub fn dimension(mut self, name: &str) -> Self {
        self.dimensions.push(name.to_string());
        self
    }

    /// Adds a measure column.
    pub fn measure(mut self, name: &str, kind: Measure) -> Self {
        self.measures.push((name.to_string(), kind));
        self
    }

    fn into_wit(self) -> wit::AggregateSchema {
        wit::AggregateSchema {
            dimensions: self.dimensions,
            measures: self
                .measures
                .into_iter()
                .map(|(name, kind)| wit::Measure { name, kind })
                .collect(),
            window: match self.window {
                Window::Tumbling { size_ms } => wit::Window::Tumbling(size_ms),
                Window::Hopping { size_ms, slide_ms } => wit::Window::Hopping(wit::HoppingWindow {
                    size: size_ms,
                    slide: slide_ms,
                }),
                Window::Session { gap_ms } => wit::Window::Session(gap_ms),
                Window::Calendar { unit, time_zone } => {
                    wit::Window::Calendar(wit::CalendarWindow { unit, time_zone })
                }
            },
            allowed_lateness_ms: self.lateness_ms,
        }
    }
}

/// One measure input of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value: counted by `count`, ignored by the other measures.
    Null,
    /// A whole number.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text (a user id for a distinct count, say).
    Text(String),
}

impl From<Value> for wit::Value {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => wit::Value::Null,
            Value::Int(i) => wit::Value::Int(i),
            Value::Float(f) => wit::Value::Float(f),
            Value::Text(t) => wit::Value::Text(t),
        }
    }
}

impl From<Option<f64>> for Value {
    fn from(v: Option<f64>) -> Self {
        v.map_or(Value::Null, Value::Float)
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Value::Null, |s| Value::Text(s.to_string()))
    }
}

/// The rows of one event: [`Rows::push`] adds a row at the event's time.
#[derive(Debug)]
pub struct Rows {
    event: u32,
    timestamp_ms: i64,
    out: Vec<wit::Row>,
}

impl Rows {
    /// Adds a row at the event's `timestamp`: dimension values in schema order and one input
    /// per measure in schema order.
    pub fn push(&mut self, dimensions: &[&str], inputs: impl IntoIterator<Item = Value>) {
        self.push_at(self.timestamp_ms, dimensions, inputs);
    }

    /// Adds a row at event time `event_time_ms` (milliseconds since the Unix epoch).
    pub fn push_at(
        &mut self,
        event_time_ms: i64,
        dimensions: &[&str],
        inputs: impl IntoIterator<Item = Value>,
    ) {
        self.out.push(wit::Row {
            event: self.event,
            event_time_ms,
            dimensions: dimensions.iter().map(|d| (*d).to_string()).collect(),
            inputs: inputs.into_iter().map(Into::into).collect(),
        });
    }
}

/// An event's `properties`, parsed (an empty object when it has none or they are not an
/// object).
#[derive(Debug, Default)]
pub struct Props(serde_json::Map<String, serde_json::Value>);

impl Props {
    /// Parses `event`'s properties.
    pub fn of(event: &Event<'_>) -> Self {
        event
            .properties()
            .and_then(|p| serde_json::from_str(p).ok())
            .map(Props)
            .unwrap_or_default()
    }

    /// Property `name` as text (numbers and booleans as written).
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        }
    }

    /// Property `name` as a number (a number, or text that parses as one).
    pub fn number(&self, name: &str) -> Option<f64> {
        match self.0.get(name)? {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

pub use runnel_guest::{Params, counter_add, log, params};

#[doc(hidden)]
pub fn __init(
    params: Vec<wit::Param>,
    schema: fn(&Params) -> Result<Aggregate, String>,
) -> Result<wit::AggregateSchema, String> {
    let params = Params::new(params.into_iter().map(|p| (p.name, p.value)).collect());
    let s = schema(&params)?;
    runnel_guest::set_params(params)?;
    Ok(s.into_wit())
}

#[doc(hidden)]
pub fn __map_batch(batch: &[u8], map: fn(&Event<'_>, &mut Rows)) -> Result<Vec<wit::Row>, String> {
    let view = BatchView::new(batch).map_err(|e| e.to_string())?;
    let mut rows = Rows {
        event: 0,
        timestamp_ms: 0,
        out: Vec::with_capacity(view.len()),
    };
    for (i, event) in view.iter().enumerate() {
        rows.event = i as u32;
        rows.timestamp_ms = event.timestamp_ms();
        map(&event, &mut rows);
    }
    Ok(rows.out)
}

/// Makes `map: fn(&Event, &mut Rows)` this component's aggregator, with the schema from
/// `schema: fn(&Params) -> Result<Aggregate, String>` (see the crate docs).
#[macro_export]
macro_rules! aggregator {
    ($map:path, schema = $schema:path) => {
        struct __RunnelAggregator;

        impl $crate::bindings::Guest for __RunnelAggregator {
            fn init(
                params: ::std::vec::Vec<$crate::bindings::runnel::plugin::types::Param>,
            ) -> ::std::result::Result<
                $crate::bindings::runnel::plugin::types::AggregateSchema,
                ::std::string::String,
            > {
                $crate::__init(params, $schema)
            }

            fn map_batch(
                batch: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::runnel::plugin::types::Row>,
                ::std::string::String,
            > {
                $crate::__map_batch(&batch, $map)
            }
        }

        $crate::bindings::__export_aggregator_world!(__RunnelAggregator with_types_in $crate::bindings);
    };
}
