//! The engine's state as bytes, so the broker can commit it with the consumer offset it
//! reflects and a restart can go on from there.
//!
//! Layout (little-endian): magic `RNWS`, version `1`, then the applied watermark, the counters,
//! the sources, the panes with their keys and accumulators, the sessions, and a CRC32C of
//! everything before it. Sketches are stored in their DataSketches serial forms.

use datasketches::hll::HllSketch;
use datasketches::tdigest::TDigestMut;

use crate::measure::{Acc, MeasureKind};

const MAGIC: &[u8; 4] = b"RNWS";
const VERSION: u8 = 1;

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot, or from another version.
    #[error("window state: {0}")]
    Format(String),
    /// The checksum does not match.
    #[error("window state: checksum mismatch")]
    Checksum,
    /// The snapshot's measures are not the schema's.
    #[error("window state: measures do not match the schema ({0})")]
    Schema(String),
}

#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        let mut w = Self::default();
        w.buf.extend_from_slice(MAGIC);
        w.buf.push(VERSION);
        w
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("a field under 4 GiB"));
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn acc(&mut self, a: &Acc) {
        match a {
            Acc::Count(n) => {
                self.u8(0);
                self.u64(*n);
            }
            Acc::Sum(s) => {
                self.u8(1);
                self.f64(*s);
            }
            Acc::Min(m) | Acc::Max(m) => {
                self.u8(if matches!(a, Acc::Min(_)) { 2 } else { 3 });
                self.u8(u8::from(m.is_some()));
                self.f64(m.unwrap_or(0.0));
            }
            Acc::Avg { sum, n } => {
                self.u8(4);
                self.f64(*sum);
                self.u64(*n);
            }
            Acc::Distinct(h) => {
                self.u8(5);
                self.bytes(&h.serialize());
            }
            Acc::Quantiles(q) => {
                self.u8(6);
                // Compressed already, so serializing a copy changes nothing.
                self.bytes(&q.digest.clone().serialize());
                self.u32(q.pending.len() as u32);
                for v in &q.pending {
                    self.f64(*v);
                }
            }
        }
    }
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

fn short() -> SnapshotError {
    SnapshotError::Format("truncated".into())
}

impl<'a> Reader<'a> {
    pub(crate) fn new(all: &'a [u8]) -> Result<Self, SnapshotError> {
        if all.len() < 9 || &all[..4] != MAGIC {
            return Err(SnapshotError::Format("not a window state".into()));
        }
        if all[4] != VERSION {
            return Err(SnapshotError::Format(format!(
                "version {}, this reads {VERSION}",
                all[4]
            )));
        }
        let (body, crc) = all.split_at(all.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(SnapshotError::Checksum);
        }
        Ok(Self { b: &body[5..] })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.b.len() < n {
            return Err(short());
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, SnapshotError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn acc(&mut self, kind: MeasureKind) -> Result<Acc, SnapshotError> {
        let tag = self.u8()?;
        let acc = match (tag, kind) {
            (0, MeasureKind::Count) => Acc::Count(self.u64()?),
            (1, MeasureKind::Sum) => Acc::Sum(self.f64()?),
            (2, MeasureKind::Min) | (3, MeasureKind::Max) => {
                let some = self.u8()? == 1;
                let v = self.f64()?;
                let m = some.then_some(v);
                if tag == 2 { Acc::Min(m) } else { Acc::Max(m) }
            }
            (4, MeasureKind::Avg) => Acc::Avg {
                sum: self.f64()?,
                n: self.u64()?,
            },
            (5, MeasureKind::Distinct) => Acc::Distinct(Box::new(
                HllSketch::deserialize(self.bytes()?)
                    .map_err(|e| SnapshotError::Format(format!("distinct sketch: {e}")))?,
            )),
            (6, MeasureKind::Quantiles) => {
                let digest = TDigestMut::deserialize(self.bytes()?)
                    .map_err(|e| SnapshotError::Format(format!("quantile sketch: {e}")))?;
                let n = self.u32()? as usize;
                if n >= crate::measure::QUANTILE_CHUNK {
                    return Err(SnapshotError::Format(format!(
                        "{n} pending quantile values"
                    )));
                }
                let pending = (0..n).map(|_| self.f64()).collect::<Result<Vec<_>, _>>()?;
                Acc::Quantiles(Box::new(crate::measure::Quantiles { digest, pending }))
            }
            (t, k) => {
                return Err(SnapshotError::Schema(format!(
                    "stored kind {t} where the schema has {k:?}"
                )));
            }
        };
        Ok(acc)
    }
    pub(crate) fn done(&self) -> Result<(), SnapshotError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Format(format!(
                "{} bytes left over",
                self.b.len()
            )))
        }
    }
}
