//! # runnel-segment: the append-only segmented record log
//!
//! Both durable stores in Runnel use this crate: the agent's **spool** (events accepted over HTTP
//! and not yet acknowledged by the broker) and the broker's **log** (every event ever appended).
//! Sequential appends with a CRC per record and one `fdatasync` per group of writers are what the
//! disk does fastest; a B-tree insert per event would cap throughput far lower.
//!
//! ## Constraints
//! - A record is acknowledged to its writer only after an `fdatasync` that covers it
//!   ([`SegmentLog::sync`]). Readers never see bytes that are not durable.
//! - Offsets only grow. A record covers `count >= 1` consecutive offsets (the broker log gives
//!   each event an offset; the spool gives each accepted request one). Offsets are never reused,
//!   even after every segment has been deleted (the caller passes the floor to [`SegmentLog::open`]).
//! - Any byte may be torn or flipped by a crash or the disk; recovery never crash-loops on it.
//!
//! ## Layout
//! A directory of segment files named by the first offset they hold, zero-padded to 20 digits
//! (`00000000000000001234.seg`), an index file next to each sealed one (`…1234.idx`), plus
//! `quarantine/` for bytes recovery refused to trust.
//!
//! ```text
//! segment file  = header record*
//! header        = magic "RUNNELSG" (8) | format version u32 LE (4) | reserved (4)
//! record        = len u32 | crc u32 | base_offset u64 | count u32 | ts_ms i64 | payload[len]
//!                 (all little-endian; crc = CRC32C of bytes 8..28 of the header, then the payload)
//! ```
//!
//! ## Write path
//! [`SegmentLog::append`] frames the record into one buffer and appends it to the active segment
//! with a single `write`. When the record would take the segment past `segment_bytes_max`, the
//! active segment is fsynced and sealed and a new one is created (and the directory fsynced).
//! [`SegmentLog::sync`] runs one `fdatasync` for everything appended since the last one: the
//! caller batches every waiting request into one group commit. A failed write is cut off again
//! with `ftruncate` and reported (`ENOSPC` as [`LogError::NoSpace`]); a failed `fdatasync` poisons
//! the log ([`LogError::Poisoned`]) because after it the kernel may have dropped dirty pages and
//! nothing written since the last good sync can be trusted (the "fsyncgate" lesson). Only a
//! restart, which re-reads what is durable, clears it.
//!
//! ## Read path
//! [`LogReader`] is cheap to clone and reads concurrently with the writer. It sees segments up to
//! their durable length only. A sparse in-memory index (one entry per `index_interval_bytes` of a
//! segment) maps an offset to a file position, and the same entries carry the largest timestamp
//! before them, which makes a time index ([`LogReader::offset_for_time`]). Every record's length,
//! CRC and offset are checked again when it is read back.
//!
//! ## Rewrite
//! A record's bytes may have to go (an erasure removes a user's events). The log is otherwise
//! append-only, so [`LogReader::rewrite_sealed`] replaces a whole sealed segment: every record
//! keeps its offsets, count and timestamp and may get a new payload; the copy is written to
//! `NAME.seg.rewrite`, fsynced and renamed over the segment, and the index file is written
//! again. [`SegmentLog::seal`] seals the active segment first when its records must be covered
//! too. A crash leaves either the old segment or the new one; the next open removes an
//! unfinished copy.
//!
//! ## Recovery
//! [`SegmentLog::open`] scans every segment in offset order and rebuilds the indexes. With
//! [`LogOptions::trust_sealed_indexes`] it scans only the last (active) segment and takes each
//! sealed one's figures from its index file (`NAME.idx`, written when it was sealed; format in
//! `index.rs`), unless that file is missing or does not match the segment; a reader that meets a
//! bad record in a sealed segment removes its index, so the next open scans it.
//! - In the last segment, the first record that is incomplete or fails its check marks a torn
//!   tail: the bytes from there on are copied to `quarantine/NAME.tail-POS` and the file is
//!   truncated to the last good record. Nothing after that point was ever acknowledged unless the
//!   disk lied, and the copy keeps it for an operator.
//! - A sealed segment with a bad header or a bad record, or one that overlaps its predecessor, is
//!   moved whole to `quarantine/` and counted in [`RecoveryReport::quarantined_segments`]; the log
//!   goes on with a gap in its offsets instead of refusing to start.

mod index;
mod log;
mod record;

pub mod fault;
pub mod storage;

pub use log::{
    LogError, LogOptions, LogReader, LogStats, RecoveryReport, Rewrite, SegmentLog, SegmentSummary,
    StoredRecord,
};
pub use record::{
    Decoded, RECORD_HEADER_BYTES, RecordFault, RecordHeader, SEGMENT_HEADER_BYTES, decode_record,
    encode_record,
};
pub use storage::{FsStorage, ReadableFile, Storage, WritableFile};

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"RUNNELSG";
