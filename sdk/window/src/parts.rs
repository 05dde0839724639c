//! The engine's state in parts, so that a commit writes what changed since the last one and not
//! the whole state: a header (watermark, counters, sources), one part per pane and one per
//! session key. The broker keeps each part under its own key; a commit costs what the batch
//! touched, not what the state holds (a session window over 50,000 users rewrote all of them
//! every commit).
//!
//! Each part is checksummed on its own (magic `RNWP`, version, a kind byte, the body, CRC32C),
//! and its body is the same bytes as that piece of a whole [`Engine::snapshot`].

use crate::measure::{Acc, MeasureKind};
use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::{Counters, Engine, Pane, RestoreError, Schema, Session, Settings, Source, Window};

const HEADER: u8 = b'h';
const PANE: u8 = b'p';
const SESSIONS: u8 = b's';

/// A part's bytes, or `None` when the part is gone.
pub type Part = Option<Vec<u8>>;

/// What changed in an engine's state since the last [`Engine::delta_stored`]: write it, then
/// call that. Parts are `None` when they are gone (a pane whose windows are all final, a key
/// with no open session).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDelta {
    /// Everything is here: drop whatever was stored for this engine before (its first delta, or
    /// the first after a restore from a whole snapshot).
    pub full: bool,
    /// The watermark, the counters and the sources (always written).
    pub header: Vec<u8>,
    /// Changed panes, by window.
    pub panes: Vec<(Window, Part)>,
    /// Changed session keys (session windows only), by encoded key.
    pub sessions: Vec<(Box<[u8]>, Part)>,
}

impl StateDelta {
    /// Parts written (panes and session keys), for metrics.
    pub fn parts(&self) -> usize {
        self.panes.len() + self.sessions.len()
    }
}

/// A state as stored in parts (see [`Engine::restore_parts`]).
#[derive(Debug, Clone, Copy)]
pub struct StoredParts<'a> {
    /// The header part.
    pub header: &'a [u8],
    /// Every pane part, by window.
    pub panes: &'a [(Window, Vec<u8>)],
    /// Every session part, by encoded key.
    pub sessions: &'a [(Vec<u8>, Vec<u8>)],
}

pub(crate) fn write_header(e: &Engine, w: &mut Writer) {
    w.u8(u8::from(e.applied.is_some()));
    w.i64(e.applied.unwrap_or(0));
    let c = &e.counters;
    for n in [
        c.late,
        c.partially_late,
        c.refused_keys,
        c.refused_windows,
        c.refused_bytes,
    ] {
        w.u64(n);
    }
    let mut sources: Vec<(&String, &Source)> = e.sources.iter().collect();
    sources.sort_by_key(|(n, _)| *n);
    w.u32(sources.len() as u32);
    for (name, s) in sources {
        w.bytes(name.as_bytes());
        w.i64(s.max_ts);
        w.i64(s.last_seen_ms);
    }
}

pub(crate) fn read_header(e: &mut Engine, r: &mut Reader<'_>) -> Result<(), SnapshotError> {
    let has = r.u8()? == 1;
    let applied = r.i64()?;
    e.applied = has.then_some(applied);
    e.counters = Counters {
        late: r.u64()?,
        partially_late: r.u64()?,
        refused_keys: r.u64()?,
        refused_windows: r.u64()?,
        refused_bytes: r.u64()?,
    };
    for _ in 0..r.u32()? {
        let name = String::from_utf8_lossy(r.bytes()?).into_owned();
        let max_ts = r.i64()?;
        let last_seen_ms = r.i64()?;
        e.clock = e.clock.max(last_seen_ms);
        // A snapshot from a build without the clock cap may hold a source ahead of it.
        let max_ts = max_ts.min(last_seen_ms.saturating_add(e.settings.clock_allowance_ms));
        e.sources.insert(
            name,
            Source {
                max_ts,
                last_seen_ms,
            },
        );
    }
    Ok(())
}

/// A pane's keys and accumulators, in key order.
pub(crate) fn write_pane(pane: &Pane, w: &mut Writer) {
    let mut keys: Vec<(&Box<[u8]>, &Vec<Acc>)> = pane.accs.iter().collect();
    keys.sort_by_key(|(k, _)| *k);
    w.u32(keys.len() as u32);
    for (k, accs) in keys {
        w.bytes(k);
        for a in accs {
            w.acc(a);
        }
    }
}

/// A pane and the state bytes it holds.
pub(crate) fn read_pane(
    r: &mut Reader<'_>,
    kinds: &[MeasureKind],
) -> Result<(Pane, usize), SnapshotError> {
    let mut pane = Pane::default();
    let mut held = 0usize;
    for _ in 0..r.u32()? {
        let k: Box<[u8]> = r.bytes()?.into();
        let accs = kinds
            .iter()
            .map(|kind| r.acc(*kind))
            .collect::<Result<Vec<_>, _>>()?;
        held += accs.iter().map(Acc::bytes).sum::<usize>() + k.len() + 16;
        pane.accs.insert(k, accs);
    }
    Ok((pane, held))
}

/// One key's open sessions.
pub(crate) fn write_sessions(list: &[Session], w: &mut Writer) {
    w.u32(list.len() as u32);
    for s in list {
        w.i64(s.start);
        w.i64(s.last);
        for a in &s.accs {
            w.acc(a);
        }
    }
}

/// One key's open sessions and the state bytes they hold.
pub(crate) fn read_sessions(
    r: &mut Reader<'_>,
    kinds: &[MeasureKind],
    key_len: usize,
) -> Result<(Vec<Session>, usize), SnapshotError> {
    let mut list = Vec::new();
    let mut held = 0usize;
    for _ in 0..r.u32()? {
        let start = r.i64()?;
        let last = r.i64()?;
        let accs = kinds
            .iter()
            .map(|kind| r.acc(*kind))
            .collect::<Result<Vec<_>, _>>()?;
        held += accs.iter().map(Acc::bytes).sum::<usize>() + key_len + 32;
        list.push(Session { start, last, accs });
    }
    Ok((list, held))
}

fn pane_part(pane: &Pane) -> Vec<u8> {
    let mut w = Writer::part(PANE);
    write_pane(pane, &mut w);
    w.finish()
}

fn sessions_part(list: &[Session]) -> Vec<u8> {
    let mut w = Writer::part(SESSIONS);
    write_sessions(list, &mut w);
    w.finish()
}

impl Engine {
    /// What changed since the last [`Engine::delta_stored`] (everything, the first time).
    pub fn delta(&self) -> StateDelta {
        let mut w = Writer::part(HEADER);
        write_header(self, &mut w);
        let header = w.finish();
        if self.whole_dirty {
            return StateDelta {
                full: true,
                header,
                panes: self
                    .panes
                    .iter()
                    .map(|(win, p)| (*win, Some(pane_part(p))))
                    .collect(),
                sessions: self
                    .sessions
                    .iter()
                    .map(|(k, list)| (k.clone(), Some(sessions_part(list))))
                    .collect(),
            };
        }
        let mut panes: Vec<(Window, Part)> = self
            .panes
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(win, p)| (*win, Some(pane_part(p))))
            .collect();
        panes.extend(
            self.removed_panes
                .iter()
                .filter(|win| !self.panes.contains_key(win))
                .map(|win| (*win, None)),
        );
        let sessions = self
            .dirty_sessions
            .iter()
            .map(|k| {
                let part = self.sessions.get(k).map(|list| sessions_part(list));
                (k.clone(), part)
            })
            .collect();
        StateDelta {
            full: false,
            header,
            panes,
            sessions,
        }
    }

    /// The last [`Engine::delta`] is stored: the next one starts from here.
    pub fn delta_stored(&mut self) {
        for p in self.panes.values_mut() {
            p.dirty = false;
        }
        self.removed_panes.clear();
        self.dirty_sessions.clear();
        self.whole_dirty = false;
    }

    /// An engine with the state stored in parts (every delta since a full one, applied).
    pub fn restore_parts(
        schema: Schema,
        settings: Settings,
        parts: StoredParts<'_>,
    ) -> Result<Self, RestoreError> {
        let mut e = Self::new(schema, settings)?;
        let mut r = Reader::part(parts.header, HEADER)?;
        read_header(&mut e, &mut r)?;
        r.done()?;
        let kinds: Vec<MeasureKind> = e.schema.measures.iter().map(|(_, k)| *k).collect();
        let mut held = 0usize;
        for (win, bytes) in parts.panes {
            let mut r = Reader::part(bytes, PANE)?;
            let (pane, n) = read_pane(&mut r, &kinds)?;
            r.done()?;
            held += n;
            e.panes.insert(*win, pane);
        }
        for (k, bytes) in parts.sessions {
            let mut r = Reader::part(bytes, SESSIONS)?;
            let (list, n) = read_sessions(&mut r, &kinds, k.len())?;
            r.done()?;
            held += n;
            e.open_sessions += list.len();
            e.sessions.insert(k.clone().into_boxed_slice(), list);
        }
        e.state_bytes = held;
        e.whole_dirty = false;
        e.next_due = i64::MIN;
        Ok(e)
    }
}
