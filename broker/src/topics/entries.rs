//! The typed entries of the side topics. Each is written as one JSON object whose keys are
//! this module's fields, in order, ending with `entry_version` (the version of the entry's
//! shape: readers of a topic may meet every version since the topic was made).

use runnel_event::fields::EventView;
use serde::Serialize;

/// The entry version this build writes. Version 2: `dead_letters` entries' `kind` is
/// `plugin_error`, `plugin_timeout`, `refused` or `event_time`, with the host's word in
/// `failure` and the failing plugin's `stage`; version 1 wrote the host's word as the kind.
pub const ENTRY_VERSION: u32 = 2;

/// An entry a topic can hold.
pub trait Entry {
    /// The log offset of the entry's event: a topic holds one entry per source offset.
    fn source_offset(&self) -> u64;

    /// The entry as stored (one JSON object).
    fn encode(&self) -> Vec<u8>;
}

/// An entry already encoded (built while its event's batch was at hand, appended later).
#[derive(Debug, Clone)]
pub struct Encoded {
    /// See [`Entry::source_offset`].
    pub source_offset: u64,
    /// The JSON object.
    pub bytes: Vec<u8>,
}

impl Entry for Encoded {
    fn source_offset(&self) -> u64 {
        self.source_offset
    }
    fn encode(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// What failed on an event: a plugin (with its kind of failure), a window limit, or the
/// agent's event-time bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind<'a> {
    /// A plugin failed on the event (`trap`, `deadline`, `memory`, `invalid`, …, the host's
    /// words).
    Plugin(&'a str),
    /// A row of the event would pass a window limit of an aggregate.
    Refused,
    /// The agent accepted the event as a dead letter: its time was out of the agent's bounds.
    EventTime,
}

impl DeadLetterKind<'_> {
    /// Its name in an entry: `plugin_timeout` (a plugin past its deadline), `plugin_error`
    /// (any other plugin failure), `refused`, `event_time`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Plugin("timeout") => "plugin_timeout",
            Self::Plugin(_) => "plugin_error",
            Self::Refused => "refused",
            Self::EventTime => "event_time",
        }
    }

    /// The host's word for a plugin failure (`trap`, `timeout`, `out_of_memory`, ...).
    pub fn failure(&self) -> Option<&str> {
        match self {
            Self::Plugin(k) => Some(k),
            _ => None,
        }
    }
}

impl Serialize for DeadLetterKind<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One `dead_letters` entry: who failed on which event, why, and the event as the failing
/// stage got it.
#[derive(Serialize)]
pub struct DeadLetter<'a> {
    /// The event's log offset.
    pub source_offset: u64,
    /// The plugin (none for an event-time dead letter).
    pub plugin: Option<&'a str>,
    /// Its active version.
    pub version: Option<&'a str>,
    /// The kind of failure.
    pub kind: DeadLetterKind<'a>,
    /// For a plugin failure: the host's word (`trap`, `timeout`, `out_of_memory`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<&'a str>,
    /// The stage that failed on it: `enrich` or `aggregate` (none for `event_time`).
    pub stage: Option<&'static str>,
    /// For `event_time`: which bound (`future`, `past`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound: Option<&'a str>,
    /// Why, in words.
    pub reason: &'a str,
    /// The event.
    pub event: EventView<'a>,
    /// [`ENTRY_VERSION`].
    pub entry_version: u32,
}

impl Entry for DeadLetter<'_> {
    fn source_offset(&self) -> u64 {
        self.source_offset
    }
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing to memory")
    }
}

impl DeadLetter<'_> {
    /// This entry, encoded now (its event borrows a batch that will not outlive the step).
    pub fn encoded(&self) -> Encoded {
        Encoded {
            source_offset: self.source_offset,
            bytes: self.encode(),
        }
    }
}

/// An aggregate an event was late for.
#[derive(Debug, Clone, Serialize)]
pub struct LateFor {
    /// The aggregate.
    pub aggregate: String,
    /// The end of the event's last window (RFC 3339).
    pub window_end: String,
    /// The watermark windows had been finalized against (RFC 3339).
    pub watermark: Option<String>,
}

/// One `late_events` entry: an event whose rows all fell in final windows, with every
/// aggregate it was late for.
#[derive(Serialize)]
pub struct LateEvent<'a> {
    /// The event's log offset.
    pub source_offset: u64,
    /// The aggregates it was late for.
    pub aggregates: Vec<LateFor>,
    /// The event.
    pub event: EventView<'a>,
    /// [`ENTRY_VERSION`].
    pub entry_version: u32,
}

impl Entry for LateEvent<'_> {
    fn source_offset(&self) -> u64 {
        self.source_offset
    }
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing to memory")
    }
}
