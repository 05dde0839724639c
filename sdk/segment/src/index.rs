//! The index file of a sealed segment (`NAME.idx` next to `NAME.seg`): what a scan of the
//! segment at open would find (its end offset, durable length, largest timestamp, record count
//! and sparse index entries), so a restart need not read the segment.
//!
//! ```text
//! index file = magic "RUNNELIX" (8) | version u32 (4) | reserved (4)
//!              | base u64 | end_offset u64 | durable_len u64 | max_ts i64 | records u64
//!              | entries u64 | (offset u64 | pos u64 | max_ts_before i64) * entries
//!              | crc32c u32 of everything before it
//! ```
//!
//! All little-endian. It is written once, atomically (temp file, fsync, rename), when the
//! segment is sealed, and trusted only if its CRC holds, it names the same base offset and its
//! durable length is the segment file's length; anything else makes the open scan the segment as
//! before.

use crate::record::SEGMENT_HEADER_BYTES;

const MAGIC: &[u8; 8] = b"RUNNELIX";
const VERSION: u32 = 1;
const HEAD_BYTES: usize = 16 + 6 * 8;
const ENTRY_BYTES: usize = 24;

/// A sealed segment as its index file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub base: u64,
    pub end_offset: u64,
    pub durable_len: u64,
    pub max_ts: i64,
    pub records: u64,
    /// (offset, pos, max_ts_before), in file order.
    pub entries: Vec<(u64, u64, i64)>,
}

impl SegmentIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for v in [self.base, self.end_offset, self.durable_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for &(offset, pos, ts) in &self.entries {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an index file for the segment at `base` whose file is `file_len` bytes long;
    /// the error says why it cannot be trusted.
    pub fn decode(bytes: &[u8], base: u64, file_len: u64) -> Result<Self, String> {
        if bytes.len() < HEAD_BYTES + 4 {
            return Err(format!("{} bytes, shorter than its header", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != stored {
            return Err("crc32c mismatch".into());
        }
        if &body[..8] != MAGIC {
            return Err("not an index file".into());
        }
        let u = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!(
                "format version {version}, this build reads {VERSION}"
            ));
        }
        let ix = Self {
            base: u(16),
            end_offset: u(24),
            durable_len: u(32),
            max_ts: u(40) as i64,
            records: u(48),
            entries: Vec::new(),
        };
        let n = u(56);
        if ix.base != base {
            return Err(format!("names base offset {}, not {base}", ix.base));
        }
        if ix.durable_len != file_len {
            return Err(format!(
                "describes {} bytes, the segment has {file_len}",
                ix.durable_len
            ));
        }
        if ix.end_offset < base || ix.durable_len < SEGMENT_HEADER_BYTES as u64 {
            return Err("end before start".into());
        }
        let rest = &body[HEAD_BYTES..];
        if (rest.len() as u64) != n.saturating_mul(ENTRY_BYTES as u64) {
            return Err(format!("{n} entries do not fill {} bytes", rest.len()));
        }
        let mut entries = Vec::with_capacity(n as usize);
        for e in rest.chunks_exact(ENTRY_BYTES) {
            let v = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
            entries.push((v(0), v(8), v(16) as i64));
        }
        let ordered = entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let inside = entries.iter().all(|&(offset, pos, _)| {
            offset >= base && offset < ix.end_offset && pos < ix.durable_len
        });
        let starts = match entries.first() {
            Some(&(offset, pos, _)) => offset == base && pos == SEGMENT_HEADER_BYTES as u64,
            None => ix.end_offset == base && ix.records == 0,
        };
        if !(ordered && inside && starts) {
            return Err("entries out of order or outside the segment".into());
        }
        Ok(Self { entries, ..ix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        SegmentIndex {
            base: 100,
            end_offset: 250,
            durable_len: 9_000,
            max_ts: 77,
            records: 12,
            entries: vec![(100, 16, i64::MIN), (180, 4_000, 40)],
        }
    }

    #[test]
    fn round_trips() {
        let ix = sample();
        assert_eq!(SegmentIndex::decode(&ix.encode(), 100, 9_000), Ok(ix));
    }

    #[test]
    fn refuses_what_does_not_match_the_segment() {
        let bytes = sample().encode();
        let err = |b: &[u8], base, len| SegmentIndex::decode(b, base, len).unwrap_err();
        assert!(err(&bytes, 100, 9_001).contains("the segment has 9001"));
        assert!(err(&bytes, 99, 9_000).contains("base offset 100"));
        assert!(err(&bytes[..10], 100, 9_000).contains("shorter"));
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(
                SegmentIndex::decode(&flipped, 100, 9_000).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn refuses_entries_that_a_scan_could_not_have_made() {
        let mut ix = sample();
        ix.entries.reverse();
        assert!(SegmentIndex::decode(&ix.encode(), 100, 9_000).is_err());
        let mut ix = sample();
        ix.entries[1].1 = 9_000;
        assert!(SegmentIndex::decode(&ix.encode(), 100, 9_000).is_err());
        let mut ix = sample();
        ix.entries[0].0 = 101;
        assert!(SegmentIndex::decode(&ix.encode(), 100, 9_000).is_err());
    }
}
