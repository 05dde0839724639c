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
/// object). The members are found in the event's own bytes, and a value is read only when a row
/// asks for it: no map of owned keys and values is built per event (that was most of an
/// aggregator's time).
#[derive(Debug, Default)]
pub struct Props<'a>(Members<'a>);

#[derive(Debug, Default)]
enum Members<'a> {
    #[default]
    None,
    /// Each member's key and raw value, in order (a repeated key: the last one counts).
    Borrowed(Vec<(&'a str, &'a serde_json::value::RawValue)>),
    /// Properties whose keys have escapes, parsed the general way.
    Owned(serde_json::Map<String, serde_json::Value>),
}

/// A JSON object's members as borrowed keys and raw values; fails on a key with escapes.
struct Borrowed<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(entry) =
                    m.next_entry::<&'de str, &'de serde_json::value::RawValue>()?
                {
                    out.push(entry);
                }
                Ok(Borrowed(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A property's value, as much of it as `text` and `number` need.
enum Prop<'v> {
    Str(std::borrow::Cow<'v, str>),
    Num(serde_json::Number),
    Bool(bool),
    Other,
}

impl<'a> Props<'a> {
    /// Parses `event`'s properties.
    pub fn of(event: &Event<'a>) -> Self {
        Self::parse(event.properties())
    }

    fn parse(properties: Option<&'a str>) -> Self {
        let Some(p) = properties else {
            return Self::default();
        };
        match serde_json::from_str::<Borrowed<'a>>(p) {
            Ok(b) => Props(Members::Borrowed(b.0)),
            Err(_) => match serde_json::from_str(p) {
                Ok(map) => Props(Members::Owned(map)),
                Err(_) => Self::default(),
            },
        }
    }

    fn get(&self, name: &str) -> Option<Prop<'_>> {
        match &self.0 {
            Members::None => None,
            Members::Borrowed(members) => {
                let (_, raw) = members.iter().rev().find(|(k, _)| *k == name)?;
                let text = raw.get();
                Some(match text.as_bytes().first()? {
                    b'"' => match serde_json::from_str::<&str>(text) {
                        Ok(s) => Prop::Str(s.into()),
                        Err(_) => Prop::Str(serde_json::from_str::<String>(text).ok()?.into()),
                    },
                    b't' => Prop::Bool(true),
                    b'f' => Prop::Bool(false),
                    b'-' | b'0'..=b'9' => Prop::Num(serde_json::from_str(text).ok()?),
                    _ => Prop::Other,
                })
            }
            Members::Owned(map) => Some(match map.get(name)? {
                serde_json::Value::String(s) => Prop::Str(s.as_str().into()),
                serde_json::Value::Number(n) => Prop::Num(n.clone()),
                serde_json::Value::Bool(b) => Prop::Bool(*b),
                _ => Prop::Other,
            }),
        }
    }

    /// Property `name` as text (numbers and booleans as written).
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Prop::Str(s) => Some(s.into_owned()),
            Prop::Num(n) => Some(n.to_string()),
            Prop::Bool(b) => Some(b.to_string()),
            Prop::Other => None,
        }
    }

    /// Property `name` as a number (a number, or text that parses as one).
    pub fn number(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Prop::Num(n) => n.as_f64(),
            Prop::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The general parse the borrowed one stands in for: what `Props` answered before.
    fn general(p: Option<&str>, name: &str) -> (Option<String>, Option<f64>) {
        let map: serde_json::Map<String, serde_json::Value> = p
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        let text = match map.get(name) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Some(v.to_string())
            }
            _ => None,
        };
        let number = match map.get(name) {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        (text, number)
    }

    #[test]
    fn answers_as_the_general_parse() {
        let cases = [
            None,
            Some(r#"{}"#),
            Some(r#"{"amount":129.5,"currency":"KES","n":"  42 ","ok":true,"no":false,"z":null}"#),
            Some(r#"{"amount":1e2,"big":18446744073709551616,"neg":-0.0,"int":-7}"#),
            Some(r#"{"amount":1,"amount":"2.5"}"#),
            Some(r#"{"currency":"EUR","amount":"3"}"#),
            Some(r#"{"currency":"KéS "x"","nested":{"a":1},"list":[1,2]}"#),
            Some(r#"[1,2,3]"#),
            Some(r#"not json"#),
            Some(r#"{"amount": 12 , "currency" : "USD" }"#),
        ];
        for p in cases {
            let got = super::Props::parse(p);
            for name in [
                "amount", "currency", "n", "ok", "no", "z", "big", "neg", "int", "nested", "list",
                "missing",
            ] {
                assert_eq!(
                    (got.text(name), got.number(name)),
                    general(p, name),
                    "{p:?} {name}"
                );
            }
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
