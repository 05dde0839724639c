//! The wire batch format between agent and broker.
//!
//! ## Constraints
//! The agent writes each accepted request once, as a [`Chunk`], into its spool; the shipper
//! sends runs of spool records to the broker without decoding them; the broker checks them and
//! appends them to its log as they came. So a chunk is encoded once, at the edge, and read
//! without copying (rkyv) wherever it is needed.
//!
//! ## Layout
//! ```text
//! frame  = magic "RNLB" (4) | version u8 | flags u8 | reserved u16
//!        | body_len u32 | raw_len u32 | crc32c u32 | body[body_len]      (integers little-endian)
//! flags  = bit 0: body is zstd-compressed (raw_len is its decompressed size)
//! crc32c = over body as sent (compressed or not)
//! body   = rkyv archive of Batch { agent_id, host, epoch, first_seq, chunks: [bytes] }
//! chunk  = rkyv archive of Chunk { events: [Event] }
//! ```
//! A batch holds the consecutive spool records `first_seq ..= first_seq + chunks.len() - 1` of
//! the spool identified by `(agent_id, epoch)`; the broker appends each `(agent_id, epoch, seq)`
//! at most once.
//!
//! ## Read path
//! [`decode_frame`] checks the magic, version, the declared sizes against the caller's limit
//! (before decompressing: no zstd bomb gets through), the CRC, and then rkyv's validation of the
//! archive. A chunk is validated again when it is opened ([`Chunk::access`]).
//!
//! The broker's answer is a [`BatchAck`], a small fixed frame (see [`BatchAck::encode`]).

use rkyv::rancor;
pub use rkyv::util::AlignedVec;

use crate::envelope::{ArchivedEvent, Event};

/// The frame magic.
pub const FRAME_MAGIC: &[u8; 4] = b"RNLB";
/// The frame version this code writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the frame header.
pub const FRAME_HEADER_BYTES: usize = 20;
/// Bodies smaller than this are sent uncompressed.
pub const COMPRESS_MIN_BYTES: usize = 4096;
const FLAG_ZSTD: u8 = 1;

/// Errors decoding wire data. All mean the sender (or the medium) is at fault; retrying the
/// same bytes will not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes end before the frame does.
    #[error("frame truncated: {got} bytes, expected {expected}")]
    Truncated { got: usize, expected: usize },
    /// Not a Runnel frame.
    #[error("bad frame magic {0:02x?}")]
    Magic([u8; 4]),
    /// A frame version this build does not read.
    #[error("frame version {0} is not supported (this build reads version {FRAME_VERSION})")]
    Version(u8),
    /// The frame declares a size over the receiver's limit.
    #[error("batch of {size} bytes exceeds batch_bytes_max ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    /// The CRC does not match.
    #[error("frame crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// zstd failed or produced a size other than declared.
    #[error("zstd body invalid: {0}")]
    Compression(String),
    /// The rkyv archive failed validation.
    #[error("archive invalid: {0}")]
    Archive(String),
}

/// One spool record: the accepted events of one request, in order.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Chunk {
    /// The events.
    pub events: Vec<Event>,
}

impl Chunk {
    /// Encodes the chunk as an rkyv archive.
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rancor::Error>(self)
            .expect("serializing into memory cannot fail")
            .into_vec()
    }

    /// Validates `bytes` as a chunk archive and gives zero-copy access to it. `bytes` must be
    /// 16-byte aligned; use [`aligned`] for bytes that came from a file or the network.
    pub fn access(bytes: &[u8]) -> Result<&ArchivedChunk, WireError> {
        rkyv::access::<ArchivedChunk, rancor::Error>(bytes)
            .map_err(|e| WireError::Archive(e.to_string()))
    }

    /// Decodes a chunk into owned events.
    pub fn decode(bytes: &[u8]) -> Result<Chunk, WireError> {
        let aligned = aligned(bytes);
        let archived = Self::access(&aligned)?;
        rkyv::deserialize::<Chunk, rancor::Error>(archived)
            .map_err(|e| WireError::Archive(e.to_string()))
    }
}

/// Copies `bytes` into a buffer aligned for rkyv access.
pub fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

/// A batch of spool records shipped in one stream.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Batch {
    /// The agent's stable id.
    pub agent_id: String,
    /// The host the agent runs on.
    pub host: String,
    /// Identifies one spool of that agent; a new spool gets a new epoch.
    pub epoch: u64,
    /// Spool sequence number of `chunks[0]`; the rest follow consecutively.
    pub first_seq: u64,
    /// Encoded [`Chunk`]s, as stored in the spool.
    pub chunks: Vec<Vec<u8>>,
}

impl Batch {
    /// Encodes the batch as a frame, compressing the body when that saves at least 1/8.
    pub fn encode_frame(&self) -> Vec<u8> {
        let body =
            rkyv::to_bytes::<rancor::Error>(self).expect("serializing into memory cannot fail");
        encode_frame(&body)
    }
}

/// Frames `body`, with zstd when it pays.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let compressed = (body.len() >= COMPRESS_MIN_BYTES)
        .then(|| zstd::bulk::compress(body, 1).ok())
        .flatten()
        .filter(|c| c.len() < body.len() - body.len() / 8);
    let (flags, sent): (u8, &[u8]) = match &compressed {
        Some(c) => (FLAG_ZSTD, c),
        None => (0, body),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + sent.len());
    out.extend_from_slice(FRAME_MAGIC);
    out.push(FRAME_VERSION);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(sent.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(sent).to_le_bytes());
    out.extend_from_slice(sent);
    out
}

/// The checked header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of the body as sent.
    pub body_len: usize,
    /// Bytes of the body after decompression.
    pub raw_len: usize,
    /// The body is zstd-compressed.
    pub zstd: bool,
}

/// Reads and checks a frame header; `max` bounds both the sent and the decompressed size.
pub fn decode_frame_header(bytes: &[u8], max: usize) -> Result<FrameHeader, WireError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(WireError::Truncated {
            got: bytes.len(),
            expected: FRAME_HEADER_BYTES,
        });
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if &magic != FRAME_MAGIC {
        return Err(WireError::Magic(magic));
    }
    if bytes[4] != FRAME_VERSION {
        return Err(WireError::Version(bytes[4]));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes")) as usize;
    let header = FrameHeader {
        body_len: u32_at(8),
        raw_len: u32_at(12),
        zstd: bytes[5] & FLAG_ZSTD != 0,
    };
    for size in [header.body_len, header.raw_len] {
        if size > max {
            return Err(WireError::TooLarge { size, max });
        }
    }
    if !header.zstd && header.raw_len != header.body_len {
        return Err(WireError::Compression(
            "uncompressed body with raw_len != body_len".into(),
        ));
    }
    Ok(header)
}

/// Checks a whole frame and returns its body, decompressed and aligned for rkyv access.
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<AlignedVec<16>, WireError> {
    let h = decode_frame_header(bytes, max)?;
    let expected = FRAME_HEADER_BYTES + h.body_len;
    if bytes.len() != expected {
        return Err(WireError::Truncated {
            got: bytes.len(),
            expected,
        });
    }
    let sent = &bytes[FRAME_HEADER_BYTES..];
    let stored = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(sent);
    if stored != computed {
        return Err(WireError::Checksum { stored, computed });
    }
    if !h.zstd {
        return Ok(aligned(sent));
    }
    let raw = zstd::bulk::decompress(sent, h.raw_len)
        .map_err(|e| WireError::Compression(e.to_string()))?;
    if raw.len() != h.raw_len {
        return Err(WireError::Compression(format!(
            "decompressed to {} bytes, frame declares {}",
            raw.len(),
            h.raw_len
        )));
    }
    Ok(aligned(&raw))
}

/// Validates a batch body (from [`decode_frame`]) and every chunk in it; returns the archived
/// batch and the number of events per chunk.
pub fn access_batch(body: &[u8]) -> Result<(&ArchivedBatch, Vec<u32>), WireError> {
    let batch = rkyv::access::<ArchivedBatch, rancor::Error>(body)
        .map_err(|e| WireError::Archive(format!("batch: {e}")))?;
    let mut counts = Vec::with_capacity(batch.chunks.len());
    for (i, chunk) in batch.chunks.iter().enumerate() {
        let aligned = aligned(chunk.as_slice());
        let c =
            Chunk::access(&aligned).map_err(|e| WireError::Archive(format!("chunk {i}: {e}")))?;
        counts.push(c.events.len() as u32);
    }
    Ok((batch, counts))
}

/// Iterates the events of an archived chunk.
pub fn chunk_events(chunk: &ArchivedChunk) -> impl Iterator<Item = &ArchivedEvent> {
    chunk.events.iter()
}

/// What the broker did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AckStatus {
    /// Appended and fsynced (some chunks may have been duplicates, see `duplicate_chunks`).
    Appended = 0,
    /// Every chunk was already in the log; nothing appended.
    Duplicate = 1,
    /// The batch is invalid; resending it will not help. `message` says why.
    Rejected = 2,
    /// The broker cannot append now (disk full, failed fsync). Retry later.
    Unavailable = 3,
    /// The agent's tenant is over its ingest quota: nothing of the batch was appended; send it
    /// again after [`BatchAck::retry_after_ms`]. `message` names the quota.
    Throttled = 4,
}

/// The broker's answer to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    /// Outcome.
    pub status: AckStatus,
    /// Log offset of the first appended event (0 if none); for `Throttled`, the milliseconds
    /// to wait before sending the batch again ([`BatchAck::retry_after_ms`]).
    pub base_offset: u64,
    /// Events appended.
    pub appended_events: u32,
    /// Chunks skipped because the log had them already.
    pub duplicate_chunks: u32,
    /// Human-readable reason for `Rejected`/`Unavailable`.
    pub message: String,
}

/// Most bytes of a [`BatchAck`] message.
pub const ACK_MESSAGE_BYTES_MAX: usize = 4096;

/// Bytes of an ack before its message: `status | base_offset | appended | duplicates | msg_len`.
pub const ACK_FIXED_BYTES: usize = 19;

/// The message length an ack's fixed part declares (so a reader of a stream of acks knows
/// where the next one starts).
pub fn ack_message_len(fixed: &[u8; ACK_FIXED_BYTES]) -> usize {
    u16::from_le_bytes([fixed[17], fixed[18]]) as usize
}

impl BatchAck {
    /// A `Throttled` answer: wait `retry_after_ms`, for `message`'s reason.
    pub fn throttled(retry_after_ms: u64, message: String) -> Self {
        Self {
            status: AckStatus::Throttled,
            base_offset: retry_after_ms,
            appended_events: 0,
            duplicate_chunks: 0,
            message,
        }
    }

    /// How long to wait before sending a `Throttled` batch again.
    pub fn retry_after_ms(&self) -> Option<u64> {
        (self.status == AckStatus::Throttled).then_some(self.base_offset)
    }

    /// `status u8 | base_offset u64 | appended u32 | duplicates u32 | msg_len u16 | msg`.
    pub fn encode(&self) -> Vec<u8> {
        let msg = &self.message.as_bytes()[..self.message.len().min(ACK_MESSAGE_BYTES_MAX)];
        let mut out = Vec::with_capacity(19 + msg.len());
        out.push(self.status as u8);
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.appended_events.to_le_bytes());
        out.extend_from_slice(&self.duplicate_chunks.to_le_bytes());
        out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// Decodes an ack.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < 19 {
            return Err(WireError::Truncated {
                got: b.len(),
                expected: 19,
            });
        }
        let status = match b[0] {
            0 => AckStatus::Appended,
            1 => AckStatus::Duplicate,
            2 => AckStatus::Rejected,
            3 => AckStatus::Unavailable,
            4 => AckStatus::Throttled,
            s => return Err(WireError::Archive(format!("unknown ack status {s}"))),
        };
        let len = u16::from_le_bytes([b[17], b[18]]) as usize;
        if b.len() != 19 + len {
            return Err(WireError::Truncated {
                got: b.len(),
                expected: 19 + len,
            });
        }
        Ok(Self {
            status,
            base_offset: u64::from_le_bytes(b[1..9].try_into().expect("8 bytes")),
            appended_events: u32::from_le_bytes(b[9..13].try_into().expect("4 bytes")),
            duplicate_chunks: u32::from_le_bytes(b[13..17].try_into().expect("4 bytes")),
            message: String::from_utf8_lossy(&b[19..]).into_owned(),
        })
    }
}
