//! Record framing: a fixed header with a CRC32C over everything after the CRC field.

use crate::SEGMENT_MAGIC;

/// Bytes in a segment file's header: magic (8) + format version (4) + reserved (4).
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// Bytes in a record header: `len u32 | crc u32 | base_offset u64 | count u32 | ts_ms i64`.
pub const RECORD_HEADER_BYTES: usize = 28;
/// The segment format version this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// A record's header, as stored before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// CRC32C of bytes 8..28 of the header followed by the payload.
    pub crc: u32,
    /// Offset of the record's first entry.
    pub base_offset: u64,
    /// Entries (offsets) the record covers; at least 1.
    pub count: u32,
    /// A timestamp the writer chose (milliseconds since the Unix epoch), used by the time index.
    pub ts_ms: i64,
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    /// The header declares a payload larger than the configured maximum.
    TooLarge { len: u32, max: u32 },
    /// The CRC does not match the bytes.
    Checksum { stored: u32, computed: u32 },
    /// The record does not continue the offsets of the previous one.
    OffsetGap { expected: u64, found: u64 },
    /// A record must cover at least one offset.
    ZeroCount,
    /// The file ends inside a record that should be durable.
    Truncated,
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(f, "record length {len} exceeds maximum {max}"),
            Self::Checksum { stored, computed } => {
                write!(
                    f,
                    "crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::OffsetGap { expected, found } => {
                write!(f, "record offset {found} does not follow {expected}")
            }
            Self::ZeroCount => write!(f, "record covers zero offsets"),
            Self::Truncated => write!(f, "file ends inside a record"),
        }
    }
}

/// Writes the segment file header.
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a segment file header; returns a description of what is wrong.
pub fn check_segment_header(h: &[u8]) -> Result<(), String> {
    if h.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_BYTES}",
            h.len()
        ));
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Err("segment magic mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads {SEGMENT_FORMAT_VERSION})"
        ));
    }
    Ok(())
}

fn crc_of(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// Appends a framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, base_offset: u64, count: u32, ts_ms: i64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked by caller");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc_of(&out[start + 8..start + RECORD_HEADER_BYTES], payload);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of decoding the bytes at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete, valid record, and the bytes it occupies.
    Record {
        header: RecordHeader,
        payload: &'a [u8],
        size: usize,
    },
    /// `buf` ends before the record does; at least `need` bytes are required.
    Incomplete { need: usize },
    /// The bytes are not a valid record.
    Fault(RecordFault),
}

/// Decodes the record at the start of `buf`; `expected_offset` is where it must start.
pub fn decode_record(buf: &[u8], max_len: u32, expected_offset: Option<u64>) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Decoded::Incomplete {
            need: RECORD_HEADER_BYTES,
        };
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let header = RecordHeader {
        len: u32_at(0),
        crc: u32_at(4),
        base_offset: u64_at(8),
        count: u32_at(16),
        ts_ms: u64_at(20) as i64,
    };
    if header.len > max_len {
        return Decoded::Fault(RecordFault::TooLarge {
            len: header.len,
            max: max_len,
        });
    }
    let size = RECORD_HEADER_BYTES + header.len as usize;
    if buf.len() < size {
        return Decoded::Incomplete { need: size };
    }
    let payload = &buf[RECORD_HEADER_BYTES..size];
    let computed = crc_of(&buf[8..RECORD_HEADER_BYTES], payload);
    if computed != header.crc {
        return Decoded::Fault(RecordFault::Checksum {
            stored: header.crc,
            computed,
        });
    }
    if header.count == 0 {
        return Decoded::Fault(RecordFault::ZeroCount);
    }
    if let Some(expected) = expected_offset
        && expected != header.base_offset
    {
        return Decoded::Fault(RecordFault::OffsetGap {
            expected,
            found: header.base_offset,
        });
    }
    Decoded::Record {
        header,
        payload,
        size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(base in any::<u64>(), count in 1u32.., ts in any::<i64>(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = Vec::new();
            encode_record(&mut buf, base, count, ts, &payload);
            match decode_record(&buf, 1 << 20, Some(base)) {
                Decoded::Record { header, payload: p, size } => {
                    prop_assert_eq!(header.base_offset, base);
                    prop_assert_eq!(header.count, count);
                    prop_assert_eq!(header.ts_ms, ts);
                    prop_assert_eq!(p, &payload[..]);
                    prop_assert_eq!(size, buf.len());
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..256), bit in any::<usize>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, 7, 1, 0, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let ok = matches!(decode_record(&buf, 1 << 20, Some(7)), Decoded::Record { .. });
            prop_assert!(!ok, "flip of bit {} went unnoticed", bit);
        }

        #[test]
        fn every_truncation_is_incomplete(payload in proptest::collection::vec(any::<u8>(), 0..256), cut in any::<usize>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, 0, 1, 0, &payload);
            let cut = cut % buf.len();
            let incomplete = matches!(decode_record(&buf[..cut], 1 << 20, Some(0)), Decoded::Incomplete { .. });
            prop_assert!(incomplete);
        }
    }
}
