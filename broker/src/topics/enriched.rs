//! The `enriched` topic's records: what the enricher chain made of one pipeline batch.
//!
//! One record per batch that had events left after the chain: the log offsets of those
//! events (as runs of consecutive offsets), the chain that made them (each running enricher's
//! name and version, in order), and, when an enricher replaced or removed an event, the
//! events themselves ([`runnel_batch`] encoding, one per offset, in order). When every
//! enricher kept every event (or there are none) the events are the log's and the record
//! holds only the offsets: a few dozen bytes per batch.
//!
//! Binary, little-endian: `u8` format version, `u64` first offset, `u64` one past the last,
//! `u32` + the chain (JSON), `u32` runs of `(u64 start, u32 length)`, `u8` 1 when the events
//! follow, then the events.

use super::entries::Entry;

/// The format version this build writes.
pub const FORMAT: u8 = 1;

/// One plugin of the chain that made a record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    /// Its name.
    pub plugin: String,
    /// Its active version.
    pub version: String,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The first log offset it holds.
    pub from: u64,
    /// One past the last.
    pub next: u64,
    /// The chain, as JSON (`[{"plugin": …, "version": …}, …]`).
    pub chain: String,
    /// The offsets of its events, as runs `(start, length)` in order.
    pub runs: Vec<(u64, u32)>,
    /// The events, one per offset, when the chain changed them; `None`: the log's events.
    pub events: Option<Vec<u8>>,
}

impl Record {
    /// A record of the events at `offsets` (ascending); `None` when there are none.
    pub fn new(
        offsets: impl IntoIterator<Item = u64>,
        chain: String,
        events: Option<Vec<u8>>,
    ) -> Option<Self> {
        let mut runs: Vec<(u64, u32)> = Vec::new();
        for o in offsets {
            match runs.last_mut() {
                Some((start, len)) if *start + u64::from(*len) == o && *len < u32::MAX => *len += 1,
                _ => runs.push((o, 1)),
            }
        }
        let (first, last) = (runs.first()?, runs.last()?);
        Some(Self {
            from: first.0,
            next: last.0 + u64::from(last.1),
            chain,
            runs,
            events,
        })
    }

    /// Every offset it holds, in order.
    pub fn offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|(s, n)| *s..*s + u64::from(*n))
    }

    /// How many events it holds.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The plugins of its chain.
    pub fn links(&self) -> Vec<Link> {
        serde_json::from_str(&self.chain).unwrap_or_default()
    }

    /// The record without its offsets at or below `high` (they are in the topic already);
    /// `None` when nothing is left.
    pub fn after(self, high: u64) -> anyhow::Result<Option<Self>> {
        if self.from > high {
            return Ok(Some(self));
        }
        let keep: Vec<usize> = self
            .offsets()
            .enumerate()
            .filter(|(_, o)| *o > high)
            .map(|(i, _)| i)
            .collect();
        let offsets: Vec<u64> = self.offsets().filter(|o| *o > high).collect();
        let events = match &self.events {
            Some(bytes) => {
                let view = runnel_batch::BatchView::new(bytes)?;
                let mut w = runnel_batch::BatchWriter::with_capacity(keep.len(), 256);
                for i in keep {
                    w.push_ref(&view.event(i));
                }
                Some(w.finish())
            }
            None => None,
        };
        Ok(Self::new(offsets, self.chain, events))
    }

    /// The record with its events at `offsets` emptied (an erasure's: they are gone from
    /// the log); `None` when it holds none of them, or holds the log's events (nothing of
    /// them is in the record). Positions stay, so the record still has one event per offset.
    pub fn erased(
        &self,
        offsets: &std::collections::BTreeSet<u64>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(bytes) = &self.events else {
            return Ok(None);
        };
        let view = runnel_batch::BatchView::new(bytes)?;
        let mut w = runnel_batch::BatchWriter::with_capacity(view.len(), 256);
        let mut changed = false;
        for (i, o) in self.offsets().enumerate() {
            if i >= view.len() {
                break;
            }
            let ev = view.event(i);
            if offsets.contains(&o) && !ev.event_type().is_empty() {
                w.push(0, 0, 0, [None; 8]);
                changed = true;
            } else {
                w.push_ref(&ev);
            }
        }
        Ok(changed.then(|| Self {
            events: Some(w.finish()),
            ..self.clone()
        }))
    }

    /// Its size as stored.
    pub fn encoded_len(&self) -> usize {
        30 + self.chain.len() + self.runs.len() * 12 + self.events.as_ref().map_or(0, Vec::len)
    }

    /// The record as two, the first half of its events and the second (for a record past the
    /// topic's record size). `None` for a record of one event.
    pub fn halves(self) -> anyhow::Result<Option<(Self, Self)>> {
        let n = self.len();
        if n < 2 {
            return Ok(None);
        }
        let half = (n / 2) as usize;
        let offsets: Vec<u64> = self.offsets().take(half).collect();
        let events = match &self.events {
            Some(bytes) => {
                let view = runnel_batch::BatchView::new(bytes)?;
                let mut w = runnel_batch::BatchWriter::with_capacity(half, 256);
                for i in 0..half {
                    w.push_ref(&view.event(i));
                }
                Some(w.finish())
            }
            None => None,
        };
        let first = Self::new(offsets.iter().copied(), self.chain.clone(), events);
        let second = self.after(offsets[half - 1])?;
        Ok(first.zip(second))
    }

    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        let events = self.events.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(FORMAT);
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        out.extend_from_slice(&(self.chain.len() as u32).to_le_bytes());
        out.extend_from_slice(self.chain.as_bytes());
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for (s, n) in &self.runs {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.push(u8::from(self.events.is_some()));
        out.extend_from_slice(events);
        out
    }

    /// A stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        let format = r.take(1)?[0];
        if format != FORMAT {
            return Err(format!(
                "enriched record format {format}; this build reads {FORMAT}"
            ));
        }
        let from = r.u64()?;
        let next = r.u64()?;
        let chain_len = r.u32()? as usize;
        let chain = std::str::from_utf8(r.take(chain_len)?)
            .map_err(|e| format!("enriched record chain: {e}"))?
            .to_string();
        let n = r.u32()? as usize;
        if n > bytes.len() / 12 {
            return Err(format!(
                "enriched record: {n} runs in {} bytes",
                bytes.len()
            ));
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push((r.u64()?, r.u32()?));
        }
        let events = match r.take(1)?[0] {
            0 => None,
            _ => Some(bytes[r.at..].to_vec()),
        };
        Ok(Self {
            from,
            next,
            chain,
            runs,
            events,
        })
    }

    /// The `next - 1` of a stored record: the last offset it holds.
    pub fn last_offset_of(bytes: &[u8]) -> Option<u64> {
        let next = u64::from_le_bytes(bytes.get(9..17)?.try_into().ok()?);
        next.checked_sub(1)
    }
}

impl Entry for Record {
    fn source_offset(&self) -> u64 {
        self.next - 1
    }

    fn encode(&self) -> Vec<u8> {
        Record::encode(self)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "enriched record ends at byte {} of {}",
                    self.at,
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[&str]) -> Vec<u8> {
        let mut w = runnel_batch::BatchWriter::with_capacity(ids.len(), 64);
        for id in ids {
            // event_id, event_type, then the optional fields.
            let mut fields = [None; 8];
            fields[0] = Some(*id);
            fields[1] = Some("click");
            w.push(1_000, 2_000, 1, fields);
        }
        w.finish()
    }

    #[test]
    fn records_round_trip_with_and_without_events() {
        let r = Record::new([3, 4, 5, 9, 10], "[]".into(), None).unwrap();
        assert_eq!(r.runs, vec![(3, 3), (9, 2)]);
        assert_eq!((r.from, r.next, r.len()), (3, 11, 5));
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        assert_eq!(Record::last_offset_of(&bytes), Some(10));
        let chain = r#"[{"plugin":"geo","version":"1.0.0"}]"#.to_string();
        let r = Record::new([7, 8], chain, Some(batch(&["a", "b"]))).unwrap();
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.links()[0].plugin, "geo");
        assert!(Record::new([], "[]".into(), None).is_none());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let bytes = Record::new([1, 2], "[]".into(), None).unwrap().encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(Record::decode(&other).unwrap_err().contains("format 9"));
    }

    #[test]
    fn after_drops_the_offsets_the_topic_holds() {
        let r = Record::new(
            [5, 6, 7, 8],
            "[]".into(),
            Some(batch(&["a", "b", "c", "d"])),
        )
        .unwrap();
        let rest = r.clone().after(6).unwrap().unwrap();
        assert_eq!(rest.runs, vec![(7, 2)]);
        let view = runnel_batch::BatchView::new(rest.events.as_ref().unwrap()).unwrap();
        assert_eq!(view.len(), 2);
        assert_eq!(view.event(0).event_id(), "c");
        assert!(r.clone().after(8).unwrap().is_none());
        assert_eq!(r.clone().after(2).unwrap(), Some(r.clone()));
        let (a, b) = r.halves().unwrap().unwrap();
        assert_eq!(
            (a.runs.clone(), b.runs.clone()),
            (vec![(5, 2)], vec![(7, 2)])
        );
        let first = runnel_batch::BatchView::new(a.events.as_ref().unwrap()).unwrap();
        assert_eq!(first.event(1).event_id(), "b");
        let one = Record::new([3], "[]".into(), None).unwrap();
        assert!(one.halves().unwrap().is_none());
    }
}
