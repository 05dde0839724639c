//! # runnel-batch: the batch encoding plugins read and write
//!
//! Events cross the plugin boundary as one byte buffer per batch (ARCHITECTURE: "called once per
//! batch, never per event"). The layout is fixed-width where it can be, so a plugin in any
//! language reads a field with two integer loads and a slice, and a Rust plugin reads it without
//! copying. `properties` stays JSON text until a plugin asks for it.
//!
//! ## Layout (all integers little-endian)
//! ```text
//! batch   = header record[count] heap
//! header  = magic "RNPB" (4) | version u16 = 1 | reserved u16 | count u32 | heap_len u32   (16 bytes)
//! record  = timestamp_ms i64 | received_at_ms i64 | schema_version u32 | reserved u32
//!           | (offset u32, len u32) × 8 fields                                             (88 bytes)
//! fields  = event_id, event_type, user_id, session_id, device_id, platform, app_version,
//!           properties (JSON object text)
//! heap    = the fields' UTF-8 bytes; `offset` is relative to the heap's start;
//!           len = 0xFFFF_FFFF marks an absent optional field
//! ```
//! The buffer is exactly `16 + 88 × count + heap_len` bytes.
//!
//! ## Reading
//! [`BatchView::new`] checks the header and the total size; each accessor checks the bounds
//! and UTF-8 of the one field it reads (a malformed field reads as absent, or as `""` for the
//! two required ones). [`BatchView::validate`] checks everything at once; the host runs it on
//! every batch a plugin hands back.
//!
//! ## Writing
//! [`BatchWriter`] appends events and produces the buffer.

use std::fmt;

/// The first four bytes of a batch.
pub const MAGIC: &[u8; 4] = b"RNPB";
/// The encoding version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the batch header.
pub const HEADER_BYTES: usize = 16;
/// Bytes of one event record.
pub const RECORD_BYTES: usize = 88;
/// Length marking an absent optional field.
pub const ABSENT: u32 = u32::MAX;

/// The string fields of an event, in record order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Field {
    /// Required.
    EventId = 0,
    /// Required.
    EventType = 1,
    /// Optional.
    UserId = 2,
    /// Optional.
    SessionId = 3,
    /// Optional.
    DeviceId = 4,
    /// Optional.
    Platform = 5,
    /// Optional.
    AppVersion = 6,
    /// Optional JSON object text.
    Properties = 7,
}

impl Field {
    /// Every field, in record order.
    pub const ALL: [Field; 8] = [
        Field::EventId,
        Field::EventType,
        Field::UserId,
        Field::SessionId,
        Field::DeviceId,
        Field::Platform,
        Field::AppVersion,
        Field::Properties,
    ];

    /// The envelope name of the field.
    pub fn name(self) -> &'static str {
        [
            "event_id",
            "event_type",
            "user_id",
            "session_id",
            "device_id",
            "platform",
            "app_version",
            "properties",
        ][self as usize]
    }
}

/// What is wrong with a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Not a batch, or a version this crate does not read.
    Header(String),
    /// The buffer's size does not match its header.
    Size {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes there are.
        got: usize,
    },
    /// A field points outside the heap or is not UTF-8.
    Field {
        /// Event index.
        event: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(m) => write!(f, "batch header: {m}"),
            Self::Size { expected, got } => {
                write!(f, "batch is {got} bytes, its header implies {expected}")
            }
            Self::Field {
                event,
                field,
                problem,
            } => write!(f, "event {event}: {field}: {problem}"),
        }
    }
}

impl std::error::Error for BatchError {}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn i64_at(b: &[u8], i: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    i64::from_le_bytes(a)
}

/// A read-only view of a batch buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    records: &'a [u8],
    heap: &'a [u8],
    count: usize,
}

impl<'a> BatchView<'a> {
    /// Checks the header and the total size.
    pub fn new(buf: &'a [u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_BYTES || &buf[..4] != MAGIC {
            return Err(BatchError::Header("missing RNPB magic".into()));
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != VERSION {
            return Err(BatchError::Header(format!(
                "version {version}, this reads {VERSION}"
            )));
        }
        let count = u32_at(buf, 8) as usize;
        let heap_len = u32_at(buf, 12) as usize;
        let expected = count
            .checked_mul(RECORD_BYTES)
            .and_then(|r| r.checked_add(HEADER_BYTES + heap_len))
            .ok_or_else(|| BatchError::Header("sizes overflow".into()))?;
        if buf.len() != expected {
            return Err(BatchError::Size {
                expected,
                got: buf.len(),
            });
        }
        let records_end = HEADER_BYTES + count * RECORD_BYTES;
        Ok(Self {
            records: &buf[HEADER_BYTES..records_end],
            heap: &buf[records_end..],
            count,
        })
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Event `i` (panics if `i >= len()`).
    pub fn event(&self, i: usize) -> EventRef<'a> {
        assert!(i < self.count, "event {i} of {}", self.count);
        EventRef {
            rec: &self.records[i * RECORD_BYTES..(i + 1) * RECORD_BYTES],
            heap: self.heap,
        }
    }

    /// The events in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'a>> + '_ {
        (0..self.count).map(|i| self.event(i))
    }

    /// Checks every field of every event: bounds, UTF-8, required fields present.
    pub fn validate(&self) -> Result<(), BatchError> {
        for (i, ev) in self.iter().enumerate() {
            for field in Field::ALL {
                match ev.raw(field) {
                    Raw::Absent if matches!(field, Field::EventId | Field::EventType) => {
                        return Err(BatchError::Field {
                            event: i,
                            field: field.name(),
                            problem: "is required",
                        });
                    }
                    Raw::Absent => {}
                    Raw::OutOfBounds => {
                        return Err(BatchError::Field {
                            event: i,
                            field: field.name(),
                            problem: "points outside the heap",
                        });
                    }
                    Raw::Bytes(b) => {
                        if std::str::from_utf8(b).is_err() {
                            return Err(BatchError::Field {
                                event: i,
                                field: field.name(),
                                problem: "is not UTF-8",
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

enum Raw<'a> {
    Absent,
    OutOfBounds,
    Bytes(&'a [u8]),
}

/// One event of a [`BatchView`].
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    rec: &'a [u8],
    heap: &'a [u8],
}

impl<'a> EventRef<'a> {
    /// Event time, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        i64_at(self.rec, 0)
    }

    /// When the agent accepted the event, milliseconds since the Unix epoch.
    pub fn received_at_ms(&self) -> i64 {
        i64_at(self.rec, 8)
    }

    /// Schema version of `properties`.
    pub fn schema_version(&self) -> u32 {
        u32_at(self.rec, 16)
    }

    fn raw(&self, field: Field) -> Raw<'a> {
        let at = 24 + field as usize * 8;
        let (off, len) = (u32_at(self.rec, at) as usize, u32_at(self.rec, at + 4));
        if len == ABSENT {
            return Raw::Absent;
        }
        match off
            .checked_add(len as usize)
            .and_then(|end| self.heap.get(off..end))
        {
            Some(b) => Raw::Bytes(b),
            None => Raw::OutOfBounds,
        }
    }

    /// A field's bytes, unchecked for UTF-8; `None` when absent (or out of bounds).
    pub fn field_bytes(&self, field: Field) -> Option<&'a [u8]> {
        match self.raw(field) {
            Raw::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A field's text; `None` when absent (or malformed).
    pub fn field(&self, field: Field) -> Option<&'a str> {
        match self.raw(field) {
            Raw::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The event id.
    pub fn event_id(&self) -> &'a str {
        self.field(Field::EventId).unwrap_or("")
    }

    /// The event type.
    pub fn event_type(&self) -> &'a str {
        self.field(Field::EventType).unwrap_or("")
    }

    /// The user id, if any.
    pub fn user_id(&self) -> Option<&'a str> {
        self.field(Field::UserId)
    }

    /// The properties object as JSON text, if any.
    pub fn properties(&self) -> Option<&'a str> {
        self.field(Field::Properties)
    }

    /// A copy of this event that a [`BatchWriter`] can take, with some fields changed.
    pub fn to_owned_event(&self) -> OwnedEvent {
        OwnedEvent {
            timestamp_ms: self.timestamp_ms(),
            received_at_ms: self.received_at_ms(),
            schema_version: self.schema_version(),
            fields: Field::ALL.map(|f| self.field(f).map(str::to_string)),
        }
    }
}

/// An event with owned fields, for building replacements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedEvent {
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Acceptance time, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Schema version of `properties`.
    pub schema_version: u32,
    /// The string fields, indexed by [`Field`].
    pub fields: [Option<String>; 8],
}

impl OwnedEvent {
    /// Sets a field.
    pub fn set(&mut self, field: Field, value: Option<String>) {
        self.fields[field as usize] = value;
    }

    /// Reads a field.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.fields[field as usize].as_deref()
    }
}

/// Builds a batch buffer.
#[derive(Debug, Default)]
pub struct BatchWriter {
    records: Vec<u8>,
    heap: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `events` events of about `bytes_each` bytes of fields.
    pub fn with_capacity(events: usize, bytes_each: usize) -> Self {
        Self {
            records: Vec::with_capacity(events * RECORD_BYTES),
            heap: Vec::with_capacity(events * bytes_each),
            count: 0,
        }
    }

    /// Appends an event given as its parts.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        received_at_ms: i64,
        schema_version: u32,
        fields: [Option<&str>; 8],
    ) {
        self.records.extend_from_slice(&timestamp_ms.to_le_bytes());
        self.records
            .extend_from_slice(&received_at_ms.to_le_bytes());
        self.records
            .extend_from_slice(&schema_version.to_le_bytes());
        self.records.extend_from_slice(&0u32.to_le_bytes());
        for value in fields {
            self.push_field(value.map(str::as_bytes));
        }
        self.count += 1;
    }

    /// Appends an owned event.
    pub fn push_owned(&mut self, ev: &OwnedEvent) {
        let fields = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| ev.fields[i].as_deref());
        self.push(
            ev.timestamp_ms,
            ev.received_at_ms,
            ev.schema_version,
            fields,
        );
    }

    /// Appends a copy of an event from another batch. Its fields are copied as bytes,
    /// unchecked: the reader of this batch checks them.
    pub fn push_ref(&mut self, ev: &EventRef<'_>) {
        self.push_copy(ev, ev.field_bytes(Field::Properties));
    }

    /// Appends a copy of an event from another batch with its `properties` replaced (`None`:
    /// removed). The other fields are copied as bytes, unchecked: the reader of this batch
    /// checks them.
    pub fn push_with_properties(&mut self, ev: &EventRef<'_>, properties: Option<&str>) {
        self.push_copy(ev, properties.map(str::as_bytes));
    }

    fn push_copy(&mut self, ev: &EventRef<'_>, properties: Option<&[u8]>) {
        self.records
            .extend_from_slice(&ev.timestamp_ms().to_le_bytes());
        self.records
            .extend_from_slice(&ev.received_at_ms().to_le_bytes());
        self.records
            .extend_from_slice(&ev.schema_version().to_le_bytes());
        self.records.extend_from_slice(&0u32.to_le_bytes());
        for field in Field::ALL {
            let value = if field == Field::Properties {
                properties
            } else {
                ev.field_bytes(field)
            };
            self.push_field(value);
        }
        self.count += 1;
    }

    fn push_field(&mut self, value: Option<&[u8]>) {
        match value {
            Some(b) => {
                let off = u32::try_from(self.heap.len()).expect("batch heap under 4 GiB");
                self.records.extend_from_slice(&off.to_le_bytes());
                self.records
                    .extend_from_slice(&(b.len() as u32).to_le_bytes());
                self.heap.extend_from_slice(b);
            }
            None => {
                self.records.extend_from_slice(&0u32.to_le_bytes());
                self.records.extend_from_slice(&ABSENT.to_le_bytes());
            }
        }
    }

    /// Events so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished buffer.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.records.len() + self.heap.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.heap.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.records);
        out.extend_from_slice(&self.heap);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = OwnedEvent> {
        (
            any::<i64>(),
            any::<i64>(),
            any::<u32>(),
            proptest::array::uniform8(proptest::option::of(".{0,12}")),
        )
            .prop_map(|(t, r, v, mut fields)| {
                fields[0].get_or_insert_with(|| "id".into());
                fields[1].get_or_insert_with(|| "t".into());
                OwnedEvent {
                    timestamp_ms: t,
                    received_at_ms: r,
                    schema_version: v,
                    fields,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(events in proptest::collection::vec(arb_event(), 0..20)) {
            let mut w = BatchWriter::new();
            for e in &events { w.push_owned(e); }
            let buf = w.finish();
            let view = BatchView::new(&buf).unwrap();
            view.validate().unwrap();
            prop_assert_eq!(view.len(), events.len());
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(&view.event(i).to_owned_event(), e);
            }
        }

        #[test]
        fn a_copy_with_new_properties_changes_only_them(
            events in proptest::collection::vec(arb_event(), 1..20),
            props in proptest::option::of(".{0,12}"),
        ) {
            let mut w = BatchWriter::new();
            for e in &events { w.push_owned(e); }
            let buf = w.finish();
            let view = BatchView::new(&buf).unwrap();
            let mut copy = BatchWriter::new();
            for ev in view.iter() { copy.push_with_properties(&ev, props.as_deref()); }
            let copied = copy.finish();
            let out = BatchView::new(&copied).unwrap();
            out.validate().unwrap();
            for (i, e) in events.iter().enumerate() {
                let mut want = e.clone();
                want.set(Field::Properties, props.clone());
                prop_assert_eq!(&out.event(i).to_owned_event(), &want);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(view) = BatchView::new(&bytes) {
                let _ = view.validate();
                for ev in view.iter() {
                    for f in Field::ALL { let _ = ev.field(f); }
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_fields_are_reported_with_their_name() {
        let mut w = BatchWriter::new();
        w.push(
            1,
            2,
            1,
            [
                Some("id"),
                Some("t"),
                None,
                None,
                None,
                None,
                None,
                Some("{}"),
            ],
        );
        let mut buf = w.finish();
        // Point `properties` past the heap.
        let at = HEADER_BYTES + 24 + 7 * 8;
        buf[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        let err = BatchView::new(&buf).unwrap().validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 0: properties: points outside the heap"
        );
        assert_eq!(BatchView::new(&buf).unwrap().event(0).properties(), None);
    }
}
