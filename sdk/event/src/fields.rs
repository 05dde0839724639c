//! The envelope's fields, once: one table ([`COLUMNS`]) and one accessor trait
//! ([`EventFields`]) that every place reading or writing a stored event goes through: the batch
//! encoding plugins see ([`push`]), `runnel log read` and dead letters ([`EventView`]), the
//! agent's rejection labels ([`TEXT_NAMES`]), and Flight's `events` table (the broker builds its
//! Arrow schema and columns from [`COLUMNS`]).
//!
//! A stored event is the envelope ([`crate::Event`]) plus where it came from: its log offset and
//! its agent (`agent_id`, `host`, carried once per batch). Adding a text field to the envelope
//! is its line in [`TEXT_FIELDS`] and [`COLUMNS`], its field in [`crate::Event`] and the
//! parser, its arm in the three [`EventFields`] impls, and its slot in the plugin batch layout
//! (`runnel_batch::Field`, a versioned format).

use runnel_batch::{BatchWriter, EventRef, Field};
use serde::ser::{SerializeMap, Serializer};

use crate::envelope::{ArchivedEvent, Event, rfc3339_ms};

/// The envelope's text fields in the order of the plugin batch record.
pub const TEXT_FIELDS: [Field; 8] = Field::ALL;

/// Their names, as producers send them.
pub const TEXT_NAMES: [&str; 8] = [
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "device_id",
    "platform",
    "app_version",
    "properties",
];

/// One column of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The log offset (u64).
    Offset,
    /// A text field of the envelope (`properties` is JSON object text).
    Text(Field),
    /// Event time (ms since the epoch, UTC).
    Timestamp,
    /// When the agent accepted it (ms since the epoch, UTC).
    ReceivedAt,
    /// The agent that accepted it.
    AgentId,
    /// The host that agent runs on.
    Host,
    /// Schema version of `properties` (u32).
    SchemaVersion,
}

impl Column {
    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Offset => "offset",
            Self::Text(f) => TEXT_NAMES[f as usize],
            Self::Timestamp => "timestamp",
            Self::ReceivedAt => "received_at",
            Self::AgentId => "agent_id",
            Self::Host => "host",
            Self::SchemaVersion => "schema_version",
        }
    }

    /// Whether a value may be absent.
    pub fn nullable(self) -> bool {
        matches!(self, Self::Text(f) if !matches!(f, Field::EventId | Field::EventType))
    }
}

/// The columns of a stored event, in the order `runnel log read`, dead letters and Flight's
/// `events` table show them.
pub const COLUMNS: [Column; 14] = [
    Column::Offset,
    Column::Text(Field::EventId),
    Column::Text(Field::EventType),
    Column::Timestamp,
    Column::ReceivedAt,
    Column::AgentId,
    Column::Host,
    Column::SchemaVersion,
    Column::Text(Field::UserId),
    Column::Text(Field::SessionId),
    Column::Text(Field::DeviceId),
    Column::Text(Field::Platform),
    Column::Text(Field::AppVersion),
    Column::Text(Field::Properties),
];

/// Read access to an event's envelope, whatever holds it: an [`Event`], an [`ArchivedEvent`]
/// in a spool or log record, or an [`EventRef`] in a plugin batch.
pub trait EventFields {
    /// A text field; `None` when absent.
    fn text(&self, f: Field) -> Option<&str>;
    /// Event time, ms since the epoch.
    fn timestamp_ms(&self) -> i64;
    /// Acceptance time, ms since the epoch.
    fn received_at_ms(&self) -> i64;
    /// Schema version of `properties`.
    fn schema_version(&self) -> u32;
}

impl EventFields for Event {
    fn text(&self, f: Field) -> Option<&str> {
        match f {
            Field::EventId => Some(&self.event_id),
            Field::EventType => Some(&self.event_type),
            Field::UserId => self.user_id.as_deref(),
            Field::SessionId => self.session_id.as_deref(),
            Field::DeviceId => self.device_id.as_deref(),
            Field::Platform => self.platform.as_deref(),
            Field::AppVersion => self.app_version.as_deref(),
            Field::Properties => self.properties.as_deref(),
        }
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl EventFields for ArchivedEvent {
    fn text(&self, f: Field) -> Option<&str> {
        fn opt(o: &rkyv::option::ArchivedOption<rkyv::string::ArchivedString>) -> Option<&str> {
            o.as_ref().map(|s| s.as_str())
        }
        match f {
            Field::EventId => Some(self.event_id.as_str()),
            Field::EventType => Some(self.event_type.as_str()),
            Field::UserId => opt(&self.user_id),
            Field::SessionId => opt(&self.session_id),
            Field::DeviceId => opt(&self.device_id),
            Field::Platform => opt(&self.platform),
            Field::AppVersion => opt(&self.app_version),
            Field::Properties => opt(&self.properties),
        }
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms.to_native()
    }
    fn received_at_ms(&self) -> i64 {
        self.received_at_ms.to_native()
    }
    fn schema_version(&self) -> u32 {
        self.schema_version.to_native()
    }
}

impl EventFields for EventRef<'_> {
    fn text(&self, f: Field) -> Option<&str> {
        self.field(f)
    }
    fn timestamp_ms(&self) -> i64 {
        EventRef::timestamp_ms(self)
    }
    fn received_at_ms(&self) -> i64 {
        EventRef::received_at_ms(self)
    }
    fn schema_version(&self) -> u32 {
        EventRef::schema_version(self)
    }
}

/// Appends an event to a plugin batch.
pub fn push(w: &mut BatchWriter, e: &(impl EventFields + ?Sized)) {
    w.push(
        e.timestamp_ms(),
        e.received_at_ms(),
        e.schema_version(),
        TEXT_FIELDS.map(|f| e.text(f)),
    );
}

/// An owned envelope from any holder (`received_at` included).
pub fn to_event(e: &(impl EventFields + ?Sized)) -> Event {
    let text = |f| e.text(f).map(str::to_string);
    Event {
        event_id: text(Field::EventId).unwrap_or_default(),
        event_type: text(Field::EventType).unwrap_or_default(),
        timestamp_ms: e.timestamp_ms(),
        received_at_ms: e.received_at_ms(),
        schema_version: e.schema_version(),
        user_id: text(Field::UserId),
        session_id: text(Field::SessionId),
        device_id: text(Field::DeviceId),
        platform: text(Field::Platform),
        app_version: text(Field::AppVersion),
        properties: text(Field::Properties),
    }
}

/// A stored event rendered for people and tools (`runnel log read`, dead letters, late
/// events): every column of [`COLUMNS`] in order, timestamps as RFC 3339 UTC strings,
/// `properties` as a JSON object, absent fields as `null`.
pub struct EventView<'a> {
    /// Log offset.
    pub offset: u64,
    /// The agent that accepted it.
    pub agent_id: &'a str,
    /// The host that agent runs on.
    pub host: &'a str,
    event: &'a dyn EventFields,
    /// `properties` as it is shown: the event's, unless [`EventView::with_properties`] set
    /// another (a dead letter shows the event without the agent's mark).
    properties: Option<&'a str>,
}

impl<'a> EventView<'a> {
    /// The view of `event` at `offset`, from agent `agent_id` on `host`.
    pub fn new(event: &'a dyn EventFields, offset: u64, agent_id: &'a str, host: &'a str) -> Self {
        Self {
            offset,
            agent_id,
            host,
            properties: event.text(Field::Properties),
            event,
        }
    }

    /// The event it shows.
    pub fn event(&self) -> &'a dyn EventFields {
        self.event
    }

    /// The event's id.
    pub fn event_id(&self) -> &'a str {
        self.event.text(Field::EventId).unwrap_or("")
    }

    /// The same view showing `properties` instead of the event's own.
    pub fn with_properties(mut self, properties: Option<&'a str>) -> Self {
        self.properties = properties;
        self
    }
}

impl serde::Serialize for EventView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(COLUMNS.len()))?;
        for c in COLUMNS {
            match c {
                Column::Offset => m.serialize_entry(c.name(), &self.offset)?,
                Column::Text(Field::Properties) => {
                    let raw = self
                        .properties
                        .and_then(|p| serde_json::from_str::<&serde_json::value::RawValue>(p).ok());
                    m.serialize_entry(c.name(), &raw)?;
                }
                Column::Text(f) => m.serialize_entry(c.name(), &self.event.text(f))?,
                Column::Timestamp => {
                    m.serialize_entry(c.name(), &rfc3339_ms(self.event.timestamp_ms()))?
                }
                Column::ReceivedAt => {
                    m.serialize_entry(c.name(), &rfc3339_ms(self.event.received_at_ms()))?
                }
                Column::AgentId => m.serialize_entry(c.name(), self.agent_id)?,
                Column::Host => m.serialize_entry(c.name(), self.host)?,
                Column::SchemaVersion => {
                    m.serialize_entry(c.name(), &self.event.schema_version())?
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            event_id: "e-1".into(),
            event_type: "page.view".into(),
            timestamp_ms: 1_795_255_200_000,
            received_at_ms: 1_795_255_200_250,
            schema_version: 2,
            user_id: Some("u".into()),
            session_id: None,
            device_id: Some("d".into()),
            platform: Some("ios".into()),
            app_version: None,
            properties: Some(r#"{"a":1}"#.into()),
        }
    }

    #[test]
    fn every_holder_reads_the_same_fields() {
        let e = event();
        let mut w = BatchWriter::new();
        push(&mut w, &e);
        let buf = w.finish();
        let view = runnel_batch::BatchView::new(&buf).unwrap();
        let r = view.event(0);
        assert_eq!(to_event(&r), e);
        let chunk = crate::Chunk {
            events: vec![e.clone()],
        }
        .encode();
        let a = crate::wire::aligned(&chunk);
        let archived = crate::Chunk::access(&a).unwrap();
        assert_eq!(to_event(&archived.events[0]), e);
        for f in TEXT_FIELDS {
            assert_eq!(e.text(f), r.text(f));
            assert_eq!(e.text(f), archived.events[0].text(f));
        }
    }

    #[test]
    fn the_view_has_every_column_in_order() {
        let e = event();
        let v = serde_json::to_value(EventView::new(&e, 7, "agent-1", "h")).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name()).collect();
        assert_eq!(keys, names);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["timestamp"], "2026-11-21T10:00:00.000Z");
        assert_eq!(v["session_id"], serde_json::Value::Null);
        assert_eq!(v["properties"], serde_json::json!({"a": 1}));
        let hidden = EventView::new(&e, 7, "a", "h").with_properties(None);
        assert_eq!(
            serde_json::to_value(hidden).unwrap()["properties"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn names_match_the_batch_layout() {
        for f in TEXT_FIELDS {
            assert_eq!(TEXT_NAMES[f as usize], f.name());
        }
    }
}
