//! Erasure in the log: the events an erasure selects replaced, in place, by
//! [`Event::erased`], segment by segment ([`runnel_segment::LogReader::rewrite_sealed`]).
//!
//! A record keeps its offsets: each selected event of its frame becomes an empty event at the
//! same position, so every other event keeps its offset, the batch keeps its agent, epoch and
//! sequence numbers (the producer table is rebuilt from them at open), and readers step over
//! the gap ([`super::walk`]). Only sealed segments are rewritten; [`BrokerLog::seal`] seals
//! the active one first.

use std::collections::BTreeSet;

use runnel_event::envelope::ArchivedEvent;
use runnel_event::wire::{access_batch, aligned, decode_frame};
use runnel_event::{Batch, Chunk, Event};
use runnel_segment::{LogError, Rewrite, SegmentSummary};
use tokio::sync::oneshot;

use super::BrokerLog;
use super::writer::{Request, Seal};

/// What erasing one segment did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// The segment's rewrite (`changed == 0`: nothing in it was selected, nothing written).
    pub rewrite: Rewrite,
    /// Events replaced.
    pub events: u64,
    /// Records that do not decode (left as they are: what they hold cannot be checked).
    pub unreadable: u64,
}

/// A frame an erasure rewrote, and the types of the events it took out.
pub type ErasedFrame = (Vec<u8>, Vec<String>);

/// The frame `payload` with every event `erase` selects replaced by [`Event::erased`] and the
/// types of those events; `None` when it selects none. `Err` when the frame does not decode.
pub fn erase_in_frame(
    payload: &[u8],
    erase: &dyn Fn(&ArchivedEvent) -> bool,
) -> Result<Option<ErasedFrame>, String> {
    let body = decode_frame(payload, u32::MAX as usize).map_err(|e| e.to_string())?;
    let (batch, _) = access_batch(&body).map_err(|e| e.to_string())?;
    let mut chunks = Vec::with_capacity(batch.chunks.len());
    let mut types = Vec::new();
    for (i, chunk) in batch.chunks.iter().enumerate() {
        let a = aligned(chunk.as_slice());
        let c = Chunk::access(&a).map_err(|e| format!("chunk {i}: {e}"))?;
        let hits: Vec<bool> = c
            .events
            .iter()
            .map(|e| !e.is_erased() && erase(e))
            .collect();
        if !hits.contains(&true) {
            chunks.push(chunk.as_slice().to_vec());
            continue;
        }
        let mut owned = Chunk::decode(chunk.as_slice()).map_err(|e| format!("chunk {i}: {e}"))?;
        for (event, hit) in owned.events.iter_mut().zip(hits) {
            if hit {
                types.push(std::mem::take(&mut event.event_type));
                *event = Event::erased();
            }
        }
        chunks.push(owned.encode());
    }
    if types.is_empty() {
        return Ok(None);
    }
    let frame = Batch {
        agent_id: batch.agent_id.to_string(),
        host: batch.host.to_string(),
        epoch: batch.epoch.to_native(),
        first_seq: batch.first_seq.to_native(),
        chunks,
    }
    .encode_frame();
    Ok(Some((frame, types)))
}

impl BrokerLog {
    /// Seals the active segment (when it holds records) and returns the offset below which
    /// every record is in a sealed segment.
    pub async fn seal(&self) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Seal(Seal { reply }))
            .await
            .map_err(|_| "log writer stopped".to_string())?;
        rx.await.map_err(|_| "log writer stopped".to_string())?
    }

    /// [`BrokerLog::walk_events`], with the events an erasure left
    /// ([`ArchivedEvent::is_erased`]) among them, for a reader that must place every offset.
    pub fn walk_events_with_erased(
        &self,
        from: u64,
        limit: usize,
        mut f: impl FnMut(&super::walk::Walked<'_>),
    ) -> Result<u64, LogError> {
        let mut done = 0usize;
        super::walk::walk_with_erased(&self.reader, from, super::READ_SIZE, |w| {
            if done >= limit {
                return std::ops::ControlFlow::Break(());
            }
            f(w);
            done += 1;
            std::ops::ControlFlow::Continue(())
        })
    }

    /// The offsets in `from..to` whose events an erasure replaced.
    pub fn erased_offsets(&self, from: u64, to: u64) -> Result<BTreeSet<u64>, LogError> {
        let mut out = BTreeSet::new();
        if to <= from {
            return Ok(out);
        }
        self.walk_events_with_erased(from, (to - from) as usize, |w| {
            if w.offset < to && w.event.is_erased() {
                out.insert(w.offset);
            }
        })
        .map(|_| out)
    }

    /// The sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<SegmentSummary> {
        self.reader.sealed_segments()
    }

    /// Replaces every event `erase` selects in the sealed segment at `base` (see the module
    /// doc); `Ok(None)` when there is no such segment any more (retention deleted it).
    /// Blocking.
    pub fn erase_in_segment(
        &self,
        base: u64,
        erase: &dyn Fn(&ArchivedEvent) -> bool,
    ) -> Result<Option<Erased>, LogError> {
        let mut events = 0u64;
        let mut unreadable = 0u64;
        let mut types: Vec<String> = Vec::new();
        let rewrite = self.reader.rewrite_sealed(base, |header, payload| {
            match erase_in_frame(payload, erase) {
                Ok(Some((frame, t))) => {
                    events += t.len() as u64;
                    types.extend(t);
                    Some(frame)
                }
                Ok(None) => None,
                Err(error) => {
                    unreadable += 1;
                    tracing::error!(
                        offset = header.base_offset,
                        error,
                        "a log record does not decode; an erasure cannot check it"
                    );
                    None
                }
            }
        })?;
        let Some(rewrite) = rewrite else {
            return Ok(None);
        };
        let mut c = self.counts.lock().expect("lock poisoned");
        c.events = c.events.saturating_sub(types.len() as u64);
        for t in types {
            if let Some(n) = c.by_type.get_mut(&t) {
                *n = n.saturating_sub(1);
            }
        }
        Ok(Some(Erased {
            rewrite,
            events,
            unreadable,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, user: Option<&str>) -> Event {
        Event {
            event_id: id.into(),
            event_type: "page.view".into(),
            timestamp_ms: 1,
            received_at_ms: 2,
            schema_version: 1,
            user_id: user.map(Into::into),
            session_id: None,
            device_id: None,
            platform: None,
            app_version: None,
            properties: Some(r#"{"secret":"x"}"#.into()),
        }
    }

    #[test]
    fn a_frame_keeps_every_position_and_loses_the_selected_events() {
        let chunk = |evs: Vec<Event>| Chunk { events: evs }.encode();
        let frame = Batch {
            agent_id: "a".into(),
            host: "h".into(),
            epoch: 7,
            first_seq: 40,
            chunks: vec![
                chunk(vec![event("e1", Some("u-1")), event("e2", Some("u-2"))]),
                chunk(vec![event("e3", None)]),
            ],
        }
        .encode_frame();
        let by_u1 = |e: &ArchivedEvent| e.user_id.as_ref().is_some_and(|u| u.as_str() == "u-1");
        let (out, types) = erase_in_frame(&frame, &by_u1).unwrap().unwrap();
        assert_eq!(types, ["page.view"]);
        let body = decode_frame(&out, usize::MAX).unwrap();
        let (b, counts) = access_batch(&body).unwrap();
        assert_eq!((b.epoch.to_native(), b.first_seq.to_native()), (7, 40));
        assert_eq!(counts, [2, 1]);
        let first = Chunk::decode(b.chunks[0].as_slice()).unwrap();
        assert_eq!(first.events[0], Event::erased());
        assert_eq!(first.events[1], event("e2", Some("u-2")));
        // The body as stored, decompressed: nothing of the event is left.
        let holds = |b: &[u8], n: &[u8]| b.windows(n.len()).any(|w| w == n);
        assert!(holds(&decode_frame(&frame, usize::MAX).unwrap(), b"u-1"));
        assert!(!holds(&body, b"u-1"));
        assert!(holds(&body, b"u-2"));
        // Nothing left to select: nothing to rewrite, even for an erased event.
        assert!(erase_in_frame(&out, &by_u1).unwrap().is_none());
        assert!(erase_in_frame(&out, &|_| true).unwrap().is_some());
        assert!(erase_in_frame(b"junk", &by_u1).is_err());
    }
}
