//! The event envelope (ARCHITECTURE §3) and its validation.
//!
//! Required: `event_id` (string, 1–128 bytes), `event_type` (`[a-z][a-z0-9_.]{0,63}`),
//! `timestamp` (RFC 3339 string or integer epoch milliseconds). Optional: `user_id`,
//! `session_id`, `device_id`, `platform`, `app_version` (strings), `schema_version` (u32,
//! default 1), `properties` (a JSON object, kept as JSON text). Unknown top-level fields are an
//! error. The agent adds `received_at`, `agent_id` and `host`.
//!
//! Every error names the field and the rule it broke, so a producer can fix its code from the
//! message alone.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Limits applied to each event. Every one is named in the errors it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Largest `event_id`, in bytes (the contract fixes 128).
    pub event_id_bytes_max: usize,
    /// Largest value of an optional string field (`user_id`, `platform`, …), in bytes.
    pub field_bytes_max: usize,
    /// Largest `properties` object, in bytes of JSON text.
    pub properties_bytes_max: usize,
    /// Deepest nesting of objects and arrays inside `properties` (the object itself is 1).
    pub properties_depth_max: usize,
    /// Most events in one request body.
    pub events_per_request_max: usize,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        Self {
            event_id_bytes_max: 128,
            field_bytes_max: 256,
            properties_bytes_max: 64 << 10,
            properties_depth_max: 32,
            events_per_request_max: 50_000,
        }
    }
}

/// Largest `event_type`, in bytes (fixed by the contract's pattern).
pub const EVENT_TYPE_BYTES_MAX: usize = 64;
/// Timestamps must fall in [1970-01-01, 10000-01-01) UTC.
pub const TIMESTAMP_MS_MAX: i64 = 253_402_300_800_000;

/// A validated event as stored in the spool and the log.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    /// Producer-chosen id, unique per event; the agent drops repeats.
    pub event_id: String,
    /// Event type, e.g. `checkout.completed`.
    pub event_type: String,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// When the agent accepted it, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Schema version of `properties` (default 1).
    pub schema_version: u32,
    /// Optional user id.
    pub user_id: Option<String>,
    /// Optional session id.
    pub session_id: Option<String>,
    /// Optional device id.
    pub device_id: Option<String>,
    /// Optional platform (`ios`, `web`, …).
    pub platform: Option<String>,
    /// Optional application version.
    pub app_version: Option<String>,
    /// Optional properties object, as compact JSON text.
    pub properties: Option<String>,
}

impl Event {
    /// What an erasure leaves in the place of an event in the broker's log: every field empty,
    /// so its offset stays taken (other events keep theirs) and nothing of it remains. No
    /// accepted event looks like this (an `event_type` is never empty); readers of the log skip
    /// it ([`ArchivedEvent::is_erased`]).
    pub fn erased() -> Self {
        Self {
            event_id: String::new(),
            event_type: String::new(),
            timestamp_ms: 0,
            received_at_ms: 0,
            schema_version: 0,
            user_id: None,
            session_id: None,
            device_id: None,
            platform: None,
            app_version: None,
            properties: None,
        }
    }
}

impl ArchivedEvent {
    /// Whether this is what an erasure left ([`Event::erased`]).
    pub fn is_erased(&self) -> bool {
        self.event_type.is_empty()
    }
}

/// Why one event was rejected: the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct EventError {
    /// The offending field (`body` when the JSON itself is broken).
    pub field: String,
    /// What the field must be, and what it was.
    pub rule: String,
}

impl EventError {
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow)]
    device_id: Option<&'a RawValue>,
    #[serde(borrow)]
    platform: Option<&'a RawValue>,
    #[serde(borrow)]
    app_version: Option<&'a RawValue>,
    #[serde(borrow)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

/// The typed fast path: strings straight out of the parser. Any type error sends the event to
/// [`RawEnvelope`], which words the error by field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastEnvelope<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    platform: Option<Cow<'a, str>>,
    #[serde(borrow)]
    app_version: Option<Cow<'a, str>>,
    schema_version: Option<u32>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

impl<'a> RawEnvelope<'a> {
    /// Checks the JSON type of every field, naming the field when it is wrong.
    fn typed(self) -> Result<FastEnvelope<'a>, EventError> {
        let opt =
            |name: &str, raw: Option<&'a RawValue>| -> Result<Option<Cow<'a, str>>, EventError> {
                match raw {
                    None => Ok(None),
                    Some(r) if r.get() == "null" => Ok(None),
                    Some(r) => string_field(name, r).map(Some),
                }
            };
        let schema_version = match self.schema_version {
            None => None,
            Some(r) if r.get() == "null" => None,
            Some(r) => Some(r.get().parse::<u32>().map_err(|_| {
                EventError::new(
                    "schema_version",
                    format!("must be an integer from 0 to {}, got {}", u32::MAX, r.get()),
                )
            })?),
        };
        Ok(FastEnvelope {
            event_id: opt("event_id", self.event_id)?,
            event_type: opt("event_type", self.event_type)?,
            timestamp: self.timestamp,
            user_id: opt("user_id", self.user_id)?,
            session_id: opt("session_id", self.session_id)?,
            device_id: opt("device_id", self.device_id)?,
            platform: opt("platform", self.platform)?,
            app_version: opt("app_version", self.app_version)?,
            schema_version,
            properties: self.properties,
        })
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// The events of one body, each parsed and validated on its own.
#[derive(Debug, Default)]
pub struct ParsedBody {
    /// Valid events with their index in the body.
    pub events: Vec<(usize, Event)>,
    /// Rejected events with their index in the body.
    pub rejected: Vec<(usize, EventError)>,
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn string_field<'a>(
    name: &str,
    raw: &'a RawValue,
) -> Result<std::borrow::Cow<'a, str>, EventError> {
    if !raw.get().starts_with('"') {
        return Err(EventError::new(
            name,
            format!("must be a string, got {}", kind_of(raw)),
        ));
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|e| EventError::new(name, format!("invalid string: {e}")))
}

/// Checks an `event_type` against the contract's pattern; the error is the rule.
pub fn check_event_type(s: &str) -> Result<(), String> {
    if valid_event_type(s) {
        Ok(())
    } else {
        Err(format!("must match [a-z][a-z0-9_.]{{0,63}}, got {s:?}"))
    }
}

fn valid_event_type(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= EVENT_TYPE_BYTES_MAX
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
}

fn parse_timestamp(raw: &RawValue) -> Result<i64, EventError> {
    let text = raw.get();
    let ms = if text.starts_with('"') {
        let s = string_field("timestamp", raw)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| {
                EventError::new(
                    "timestamp",
                    format!("must be RFC 3339 (e.g. 2026-11-21T14:00:00Z) or epoch milliseconds: {s:?}: {e}"),
                )
            })?
            .timestamp_millis()
    } else if text.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
        text.parse::<i64>().map_err(|_| {
            EventError::new(
                "timestamp",
                format!("integer {text} does not fit epoch milliseconds"),
            )
        })?
    } else {
        return Err(EventError::new(
            "timestamp",
            format!(
                "must be an RFC 3339 string or integer epoch milliseconds, got {}",
                if kind_of(raw) == "a number" {
                    "a non-integer number"
                } else {
                    kind_of(raw)
                }
            ),
        ));
    };
    in_range(ms)
}

fn in_range(ms: i64) -> Result<i64, EventError> {
    if !(0..TIMESTAMP_MS_MAX).contains(&ms) {
        return Err(EventError::new(
            "timestamp",
            format!("must fall between 1970-01-01 and 9999-12-31 UTC, got {ms} ms"),
        ));
    }
    Ok(ms)
}

/// Parses and validates one JSON object. `received_at_ms` is stamped on the result.
pub fn parse_event(
    json: &str,
    limits: &EnvelopeLimits,
    received_at_ms: i64,
) -> Result<Event, EventError> {
    let fields = match serde_json::from_str::<FastEnvelope<'_>>(json) {
        Ok(fields) => fields,
        // Something is off: parse again field by field to say exactly what.
        Err(_) => raw_envelope(json)?.typed()?,
    };
    validate(fields, None, limits, received_at_ms)
}

/// An event's fields as another component hands them over (an edge plugin's replacement
/// event), before the envelope rules are applied. `properties` is JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventParts<'a> {
    /// `event_id`.
    pub event_id: Option<&'a str>,
    /// `event_type`.
    pub event_type: Option<&'a str>,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `schema_version`.
    pub schema_version: u32,
    /// `user_id`, `session_id`, `device_id`, `platform`, `app_version`, in that order.
    pub optional: [Option<&'a str>; 5],
    /// `properties`, as JSON text.
    pub properties: Option<&'a str>,
}

/// Applies the envelope rules to an event given as its parts, as [`parse_event`] does to an
/// event given as JSON, without rendering it as JSON first. `received_at_ms` is stamped on the
/// result.
pub fn validate_parts(
    parts: EventParts<'_>,
    limits: &EnvelopeLimits,
    received_at_ms: i64,
) -> Result<Event, EventError> {
    let properties = match parts.properties {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<&RawValue>(text)
                .map_err(|e| EventError::new("properties", format!("not JSON: {e}")))?,
        ),
    };
    let [user_id, session_id, device_id, platform, app_version] =
        parts.optional.map(|f| f.map(Cow::Borrowed));
    let fields = FastEnvelope {
        event_id: parts.event_id.map(Cow::Borrowed),
        event_type: parts.event_type.map(Cow::Borrowed),
        timestamp: None,
        user_id,
        session_id,
        device_id,
        platform,
        app_version,
        schema_version: Some(parts.schema_version),
        properties,
    };
    validate(fields, Some(parts.timestamp_ms), limits, received_at_ms)
}

fn raw_envelope(json: &str) -> Result<RawEnvelope<'_>, EventError> {
    serde_json::from_str(json).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("unknown field ") {
            Some(rest) => {
                let field = rest.split('`').nth(1).unwrap_or("?").to_string();
                EventError::new(
                    field,
                    format!("unknown field; allowed fields are {ALLOWED}"),
                )
            }
            None if json.trim_start().starts_with('{') => EventError::new("body", msg),
            None => EventError::new("body", format!("each event must be a JSON object: {msg}")),
        }
    })
}

fn bounded(
    name: &str,
    value: Option<Cow<'_, str>>,
    max: usize,
) -> Result<Option<String>, EventError> {
    match value {
        Some(s) if s.len() > max => Err(EventError::new(
            name,
            format!(
                "must be at most {max} bytes (field_bytes_max), got {} bytes",
                s.len()
            ),
        )),
        other => Ok(other.map(Cow::into_owned)),
    }
}

/// Applies the envelope rules to fields of the right JSON types.
/// `timestamp_ms`, when given, is the event time already as a number (`f.timestamp` is then
/// ignored).
fn validate(
    f: FastEnvelope<'_>,
    timestamp_ms: Option<i64>,
    limits: &EnvelopeLimits,
    received_at_ms: i64,
) -> Result<Event, EventError> {
    let Some(event_id) = f.event_id else {
        return Err(EventError::new("event_id", "is required"));
    };
    if event_id.is_empty() || event_id.len() > limits.event_id_bytes_max {
        return Err(EventError::new(
            "event_id",
            format!(
                "must be 1 to {} bytes, got {} bytes",
                limits.event_id_bytes_max,
                event_id.len()
            ),
        ));
    }
    let Some(event_type) = f.event_type else {
        return Err(EventError::new("event_type", "is required"));
    };
    if !valid_event_type(&event_type) {
        return Err(EventError::new(
            "event_type",
            format!("must match [a-z][a-z0-9_.]{{0,63}}, got {event_type:?}"),
        ));
    }
    let timestamp_ms = match (timestamp_ms, f.timestamp) {
        (Some(ms), _) => in_range(ms)?,
        (None, None) => return Err(EventError::new("timestamp", "is required")),
        (None, Some(r)) => parse_timestamp(r)?,
    };
    let properties = match f.properties {
        None => None,
        Some(r) if r.get() == "null" => None,
        Some(r) if !r.get().starts_with('{') => {
            return Err(EventError::new(
                "properties",
                format!("must be a JSON object, got {}", kind_of(r)),
            ));
        }
        Some(r) if crate::event_time::is_dead_letter(Some(r.get())) => {
            return Err(EventError::new(
                "properties",
                format!(
                    "must not start with the key {} (reserved: the agent marks dead letters with it)",
                    crate::event_time::DEAD_LETTER_KEY
                ),
            ));
        }
        Some(r) if r.get().len() > limits.properties_bytes_max => {
            return Err(EventError::new(
                "properties",
                format!(
                    "must be at most {} bytes (properties_bytes_max), got {} bytes",
                    limits.properties_bytes_max,
                    r.get().len()
                ),
            ));
        }
        Some(r) => {
            // JSON cannot nest deeper than it has openers; counting them is cheap (vectorized),
            // so the exact scan runs only for the rare object that could be too deep.
            let openers = r.get().bytes().filter(|&b| b == b'{' || b == b'[').count();
            let depth = if openers > limits.properties_depth_max {
                json_depth(r.get())
            } else {
                0
            };
            if depth > limits.properties_depth_max {
                return Err(EventError::new(
                    "properties",
                    format!(
                        "nests {depth} levels deep, more than properties_depth_max ({})",
                        limits.properties_depth_max
                    ),
                ));
            }
            Some(r.get().to_string())
        }
    };
    let max = limits.field_bytes_max;
    Ok(Event {
        event_id: event_id.into_owned(),
        event_type: event_type.into_owned(),
        timestamp_ms,
        received_at_ms,
        schema_version: f.schema_version.unwrap_or(1),
        user_id: bounded("user_id", f.user_id, max)?,
        session_id: bounded("session_id", f.session_id, max)?,
        device_id: bounded("device_id", f.device_id, max)?,
        platform: bounded("platform", f.platform, max)?,
        app_version: bounded("app_version", f.app_version, max)?,
        properties,
    })
}

/// Deepest nesting of objects and arrays in valid JSON text, without recursion.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

const ALLOWED: &str = "event_id, event_type, timestamp, user_id, session_id, device_id, platform, \
                       app_version, schema_version, properties";

/// Splits a body into events and validates each. A body that is not JSON at all yields one
/// rejection at index 0 with field `body`.
pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    limits: &EnvelopeLimits,
    received_at_ms: i64,
) -> ParsedBody {
    let mut out = ParsedBody::default();
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            out.rejected
                .push((0, EventError::new("body", format!("is not UTF-8: {e}"))));
            return out;
        }
    };
    let push = |i: usize, json: &str, out: &mut ParsedBody| match parse_event(
        json,
        limits,
        received_at_ms,
    ) {
        Ok(ev) => out.events.push((i, ev)),
        Err(e) => out.rejected.push((i, e)),
    };
    let too_many = |n: usize| {
        EventError::new(
            "body",
            format!(
                "holds {n} events, more than events_per_request_max ({})",
                limits.events_per_request_max
            ),
        )
    };
    match format {
        BodyFormat::Ndjson => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() > limits.events_per_request_max {
                out.rejected.push((0, too_many(lines.len())));
                return out;
            }
            for (i, line) in lines.into_iter().enumerate() {
                push(i, line, &mut out);
            }
        }
        BodyFormat::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                match serde_json::from_str::<Vec<&RawValue>>(text) {
                    Ok(items) if items.len() > limits.events_per_request_max => {
                        out.rejected.push((0, too_many(items.len())));
                    }
                    Ok(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            push(i, item.get(), &mut out);
                        }
                    }
                    Err(e) => out.rejected.push((
                        0,
                        EventError::new("body", format!("is not a valid JSON array: {e}")),
                    )),
                }
            } else if trimmed.is_empty() {
                out.rejected.push((0, EventError::new("body", "is empty")));
            } else {
                push(0, text, &mut out);
            }
        }
    }
    out
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

impl fmt::Display for BodyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        })
    }
}
