//! # runnel-event: the event envelope and the wire batch format
//!
//! - [`envelope`]: what an application sends (ARCHITECTURE §3): parsing a JSON object, a JSON
//!   array or NDJSON, and validation whose errors name the field and the rule.
//! - [`fields`]: the envelope's fields once, and the one accessor every reader and writer of a
//!   stored event uses (plugin batches, `log read` views, Flight's columns).
//! - [`event_time`]: how far an event's `timestamp` may be from when the agent received it, and
//!   what happens past that (reject, clamp, dead letter).
//! - [`wire`]: how accepted events travel from agent to broker and sit in the spool and the log:
//!   rkyv 0.8 archives in a versioned, CRC32C-checked frame, zstd-compressed when it pays.

pub mod envelope;
pub mod event_time;
pub mod fields;
pub mod wire;

pub use envelope::{
    BodyFormat, EnvelopeLimits, Event, EventError, EventParts, ParsedBody, check_event_type,
    parse_body, parse_event, validate_parts,
};
pub use wire::{AckStatus, Batch, BatchAck, Chunk, WireError};

/// The system clock in milliseconds since the Unix epoch (0 before 1970): the one clock reading
/// of agent, broker and tools, where they read one.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
