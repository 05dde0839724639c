//! # runnel-window: event-time windows with watermarks and lateness
//!
//! The window engine of the broker, with no I/O: time is an argument. An aggregator plugin maps
//! events to rows (event time, dimensions, measure inputs); this engine assigns windows, folds
//! the measures ([`measure`]), tracks watermarks, and says when a window's rows are final.
//!
//! ## Time
//! - **Event time** is the envelope `timestamp`.
//! - **Watermark per source** (an agent): the highest event time it has sent minus
//!   `out_of_orderness_ms`. The **engine's watermark** is the least over active sources; a
//!   source not heard from (in processing time, `now_ms`) for `source_idle_ms` stops holding it
//!   back. With every source idle, the greatest source watermark is used. The watermark the
//!   engine has acted on never goes back.
//! - A window `[start, end)` is **final** once the watermark reaches `end + allowed_lateness_ms`:
//!   [`Engine::advance`] then emits its rows with `is_final = true`, once. Before that,
//!   [`Engine::rows`] shows it with `is_final = false`, and events within the lateness still
//!   update it.
//! - An event whose windows are all final is **late**: [`Engine::add`] answers
//!   [`Added::Late`] and folds nothing (the broker sends it to the `late_events` topic). An event
//!   some of whose (hopping) windows are final updates the others and is counted in
//!   [`Counters::partially_late`].
//!
//! ## Panes
//! State is kept per pane, not per window: a tumbling or calendar window is one pane; a hopping
//! window of `size` sliding by `slide` is `size / slide` panes of `slide`. An event is folded
//! once, into its pane; a window's rows merge its panes. So an event in a 1 h window sliding by
//! 5 min costs one fold, not twelve.
//!
//! ## Sessions
//! With [`WindowSpec::Session`], state is kept per key as a list of open sessions
//! `[first event, last event + gap)`. An event joins every session it overlaps (which may merge
//! two sessions into one) or starts one. A session is final once the watermark reaches its end
//! plus the lateness; it is not reopened: a later event close to it starts a new session, or is
//! late if that new session would already be final.
//!
//! ## Limits
//! `open_windows_max` (panes held), `keys_per_window_max` (distinct dimension tuples in one
//! pane) and `state_bytes_max` (approximate bytes of all accumulators). An event that would
//! pass one is refused with [`Added::Refused`] naming the limit, and counted; nothing already
//! held is dropped.

pub mod measure;
pub mod snapshot;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use measure::{Acc, Input, MeasureKind, Value};
pub use snapshot::SnapshotError;
pub use window::{CalendarUnit, SpecError, Window, WindowSpec, format_duration, parse_duration};

/// What an aggregate looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Group-by dimension names.
    pub dimensions: Vec<String>,
    /// Measures, by name.
    pub measures: Vec<(String, MeasureKind)>,
    /// How events are grouped in time.
    pub window: WindowSpec,
    /// How long after a window's end (in event time) late events still update it.
    pub allowed_lateness_ms: i64,
}

/// Engine settings; every limit is named in what it causes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Subtracted from a source's highest event time to give its watermark.
    pub out_of_orderness_ms: i64,
    /// A source not heard from for this long (processing time) stops holding the watermark.
    pub source_idle_ms: i64,
    /// How far ahead of its processing time an event may move its source's watermark: an
    /// event's time counts for the watermark as at most `now_ms + clock_allowance_ms`, so a
    /// device whose clock runs ahead finalizes no window early. Unbounded in
    /// [`Settings::default`] (a library default, for callers whose `now_ms` is not a clock);
    /// the broker sets `watermark_clock_allowance_ms` (1 s).
    pub clock_allowance_ms: i64,
    /// Distinct dimension tuples in one pane.
    pub keys_per_window_max: usize,
    /// Panes held at once.
    pub open_windows_max: usize,
    /// Approximate bytes of all accumulators.
    pub state_bytes_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            source_idle_ms: 60_000,
            clock_allowance_ms: i64::MAX,
            keys_per_window_max: 1_000_000,
            open_windows_max: 10_000,
            state_bytes_max: 1 << 30,
        }
    }
}

/// What [`Engine::add`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Folded into its pane.
    Folded,
    /// Every window of the event is final: nothing was folded.
    Late {
        /// End of the event's last window.
        window_end: i64,
    },
    /// Folding it would pass a limit: nothing was folded.
    Refused {
        /// The limit's name.
        limit: &'static str,
    },
}

/// Counts of what did not go the ordinary way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events whose windows were all final.
    pub late: u64,
    /// Events some of whose windows were final (the others were updated).
    pub partially_late: u64,
    /// Events refused by `keys_per_window_max`.
    pub refused_keys: u64,
    /// Events refused by `open_windows_max`.
    pub refused_windows: u64,
    /// Events refused by `state_bytes_max`.
    pub refused_bytes: u64,
}

/// One row of an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The window.
    pub window: Window,
    /// Whether the row can still change.
    pub is_final: bool,
    /// Dimension values, in schema order.
    pub key: Vec<String>,
    /// Measure values, in schema order.
    pub values: Vec<Value>,
}

#[derive(Debug, Default)]
struct Pane {
    /// By encoded key ([`encode_key`]). foldhash with a per-process random seed: about twice as
    /// fast as SipHash on these short keys and still keyed, since dimension values come from
    /// events that anyone who can send events controls.
    accs: HashMap<Box<[u8]>, Vec<Acc>, foldhash::fast::RandomState>,
}

/// A dimension tuple as bytes: each value's length (u32 LE) then its bytes, so no value can
/// collide with another tuple.
fn encode_key(key: &[&str], out: &mut Vec<u8>) {
    out.clear();
    for k in key {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
    }
}

fn decode_key(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        let end = (4 + n).min(b.len());
        out.push(String::from_utf8_lossy(&b[4..end]).into_owned());
        b = &b[end..];
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Source {
    max_ts: i64,
    last_seen_ms: i64,
}

/// The window engine of one aggregate.
#[derive(Debug)]
pub struct Engine {
    schema: Schema,
    settings: Settings,
    panes: BTreeMap<Window, Pane>,
    sources: HashMap<String, Source, foldhash::fast::RandomState>,
    /// The watermark windows have been finalized against (never goes back).
    applied: Option<i64>,
    state_bytes: usize,
    counters: Counters,
    scratch: Vec<u8>,
    /// Open sessions by encoded key, sorted by start (session windows only).
    sessions: HashMap<Box<[u8]>, Vec<Session>, foldhash::fast::RandomState>,
    open_sessions: usize,
    /// No window can become final before the watermark reaches this (a lower bound of the
    /// earliest `end + allowed_lateness` held; `i64::MIN` when unknown): lets
    /// [`Engine::advance`] skip the scan, so the broker can advance after every event.
    next_due: i64,
    /// The latest processing time observed.
    clock: i64,
}

#[derive(Debug, Clone)]
struct Session {
    start: i64,
    last: i64,
    accs: Vec<Acc>,
}

/// Why [`Engine::restore`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The schema is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The bytes are not a usable snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Errors in a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A bad window.
    #[error("window: {0}")]
    Window(#[from] SpecError),
    /// A negative lateness.
    #[error("allowed_lateness_ms: must be >= 0")]
    Lateness,
    /// No measure.
    #[error("measures: at least one is needed")]
    NoMeasure,
}

impl Engine {
    /// An empty engine.
    pub fn new(schema: Schema, settings: Settings) -> Result<Self, SchemaError> {
        schema.window.validate()?;
        if schema.allowed_lateness_ms < 0 {
            return Err(SchemaError::Lateness);
        }
        if schema.measures.is_empty() {
            return Err(SchemaError::NoMeasure);
        }
        Ok(Self {
            schema,
            settings,
            panes: BTreeMap::new(),
            sources: HashMap::default(),
            applied: None,
            state_bytes: 0,
            counters: Counters::default(),
            scratch: Vec::new(),
            sessions: HashMap::default(),
            open_sessions: 0,
            next_due: i64::MIN,
            clock: i64::MIN,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// What did not go the ordinary way so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// Panes (or sessions) held.
    pub fn open_panes(&self) -> usize {
        self.panes.len() + self.open_sessions
    }

    fn is_final(&self, w: Window) -> bool {
        self.applied
            .is_some_and(|wm| w.end.saturating_add(self.schema.allowed_lateness_ms) <= wm)
    }

    /// Folds one row of the aggregator's output: from `source`, at event time `ts`, with its
    /// dimension values and one input per measure. `now_ms` is processing time (for idleness).
    /// The same as [`Engine::observe`] then [`Engine::add_row`].
    pub fn add(
        &mut self,
        source: &str,
        ts: i64,
        now_ms: i64,
        key: &[&str],
        inputs: &[Input<'_>],
    ) -> Added {
        self.observe(source, ts, now_ms);
        self.add_row(ts, key, inputs)
    }

    /// Notes that `source` sent an event at event time `ts`, at processing time `now_ms`: this
    /// is what moves watermarks. The broker observes every event, including those an
    /// aggregator maps to no row. The event's time counts as at most `now_ms` plus
    /// [`Settings::clock_allowance_ms`]: an event from a clock that runs ahead is folded into
    /// its own window but moves no watermark past the present.
    pub fn observe(&mut self, source: &str, ts: i64, now_ms: i64) {
        self.clock = self.clock.max(now_ms);
        let ts = ts.min(now_ms.saturating_add(self.settings.clock_allowance_ms));
        match self.sources.get_mut(source) {
            Some(s) => {
                s.max_ts = s.max_ts.max(ts);
                s.last_seen_ms = s.last_seen_ms.max(now_ms);
            }
            None => {
                self.sources.insert(
                    source.to_string(),
                    Source {
                        max_ts: ts,
                        last_seen_ms: now_ms,
                    },
                );
            }
        }
    }

    /// Folds one row at event time `ts` (its source observed separately, [`Engine::observe`]).
    pub fn add_row(&mut self, ts: i64, key: &[&str], inputs: &[Input<'_>]) -> Added {
        if let WindowSpec::Session { gap_ms } = self.schema.window {
            return self.add_session(gap_ms, ts, key, inputs);
        }
        let spec = &self.schema.window;
        let pane = spec.pane(ts);
        let (first, last) = spec.first_last_of_pane(pane);
        if self.is_final(last) {
            self.counters.late += 1;
            return Added::Late {
                window_end: last.end,
            };
        }
        if self.is_final(first) {
            self.counters.partially_late += 1;
        }
        if !self.panes.contains_key(&pane) && self.panes.len() >= self.settings.open_windows_max {
            self.counters.refused_windows += 1;
            return Added::Refused {
                limit: "open_windows_max",
            };
        }
        let lat = self.schema.allowed_lateness_ms;
        self.next_due = self.next_due.min(first.end.saturating_add(lat));
        let measures = &self.schema.measures;
        let keys_max = self.settings.keys_per_window_max;
        encode_key(key, &mut self.scratch);
        let p = self.panes.entry(pane).or_default();
        let accs = match p.accs.get_mut(self.scratch.as_slice()) {
            Some(a) => a,
            None => {
                if p.accs.len() >= keys_max {
                    self.counters.refused_keys += 1;
                    return Added::Refused {
                        limit: "keys_per_window_max",
                    };
                }
                let fresh: Vec<Acc> = measures.iter().map(|(_, k)| Acc::new(*k)).collect();
                let bytes: usize =
                    fresh.iter().map(Acc::bytes).sum::<usize>() + self.scratch.len() + 16;
                if self.state_bytes + bytes > self.settings.state_bytes_max {
                    self.counters.refused_bytes += 1;
                    return Added::Refused {
                        limit: "state_bytes_max",
                    };
                }
                self.state_bytes += bytes;
                p.accs
                    .entry(self.scratch.clone().into_boxed_slice())
                    .or_insert(fresh)
            }
        };
        for (acc, input) in accs
            .iter_mut()
            .zip(inputs.iter().copied().chain(std::iter::repeat(Input::Null)))
        {
            acc.add(input);
        }
        Added::Folded
    }

    fn add_session(&mut self, gap: i64, ts: i64, key: &[&str], inputs: &[Input<'_>]) -> Added {
        let lat = self.schema.allowed_lateness_ms;
        let applied = self.applied;
        let is_final = |end: i64| applied.is_some_and(|wm| end.saturating_add(lat) <= wm);
        encode_key(key, &mut self.scratch);
        let open = self.sessions.get(self.scratch.as_slice());
        // The sessions this event overlaps: [ts, ts + gap) ∩ [start, last + gap) ≠ ∅.
        let overlaps =
            |s: &Session| ts < s.last.saturating_add(gap) && s.start < ts.saturating_add(gap);
        let joins = open.is_some_and(|v| v.iter().any(overlaps));
        if !joins {
            let end = ts.saturating_add(gap);
            if is_final(end) {
                self.counters.late += 1;
                return Added::Late { window_end: end };
            }
            if self.open_sessions >= self.settings.open_windows_max {
                self.counters.refused_windows += 1;
                return Added::Refused {
                    limit: "open_windows_max",
                };
            }
            if open.is_none() && self.sessions.len() >= self.settings.keys_per_window_max {
                self.counters.refused_keys += 1;
                return Added::Refused {
                    limit: "keys_per_window_max",
                };
            }
            let fresh: Vec<Acc> = self
                .schema
                .measures
                .iter()
                .map(|(_, k)| Acc::new(*k))
                .collect();
            let bytes = fresh.iter().map(Acc::bytes).sum::<usize>() + self.scratch.len() + 32;
            if self.state_bytes + bytes > self.settings.state_bytes_max {
                self.counters.refused_bytes += 1;
                return Added::Refused {
                    limit: "state_bytes_max",
                };
            }
            self.state_bytes += bytes;
            self.open_sessions += 1;
            self.next_due = self.next_due.min(end.saturating_add(lat));
            let list = self
                .sessions
                .entry(self.scratch.clone().into_boxed_slice())
                .or_default();
            let at = list.partition_point(|s| s.start < ts);
            list.insert(
                at,
                Session {
                    start: ts,
                    last: ts,
                    accs: fresh,
                },
            );
        }
        let list = self
            .sessions
            .get_mut(self.scratch.as_slice())
            .expect("the key has a session now");
        // Merge every session the event touches into the first of them.
        let touched: Vec<usize> = (0..list.len()).filter(|i| overlaps(&list[*i])).collect();
        let first = touched[0];
        for &i in touched[1..].iter().rev() {
            let s = list.remove(i);
            let into = &mut list[first];
            into.start = into.start.min(s.start);
            into.last = into.last.max(s.last);
            for (a, b) in into.accs.iter_mut().zip(&s.accs) {
                a.merge(b);
            }
            self.open_sessions -= 1;
        }
        let s = &mut list[first];
        s.start = s.start.min(ts);
        s.last = s.last.max(ts);
        for (acc, input) in s
            .accs
            .iter_mut()
            .zip(inputs.iter().copied().chain(std::iter::repeat(Input::Null)))
        {
            acc.add(input);
        }
        Added::Folded
    }

    /// Final session rows up to watermark `wm` (all of them with `i64::MAX`), removed from state.
    fn take_final_sessions(&mut self, gap: i64, wm: i64) -> Vec<Row> {
        let lat = self.schema.allowed_lateness_ms;
        let mut rows = Vec::new();
        let mut freed = 0usize;
        let mut closed = 0usize;
        self.sessions.retain(|k, list| {
            list.retain(|s| {
                let end = s.last.saturating_add(gap);
                if end.saturating_add(lat) <= wm {
                    rows.push(Row {
                        window: Window {
                            start: s.start,
                            end,
                        },
                        is_final: true,
                        key: decode_key(k),
                        values: s.accs.iter().map(Acc::value).collect(),
                    });
                    freed += s.accs.iter().map(Acc::bytes).sum::<usize>() + k.len() + 32;
                    closed += 1;
                    false
                } else {
                    true
                }
            });
            !list.is_empty()
        });
        self.open_sessions -= closed;
        self.state_bytes = self.state_bytes.saturating_sub(freed);
        rows.sort_by(|a, b| (a.window, &a.key).cmp(&(b.window, &b.key)));
        rows
    }

    /// The whole state as bytes ([`snapshot`]): restore it with [`Engine::restore`] and the same
    /// schema to go on exactly where this engine is.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = snapshot::Writer::new();
        w.u8(u8::from(self.applied.is_some()));
        w.i64(self.applied.unwrap_or(0));
        let c = &self.counters;
        for n in [
            c.late,
            c.partially_late,
            c.refused_keys,
            c.refused_windows,
            c.refused_bytes,
        ] {
            w.u64(n);
        }
        let mut sources: Vec<(&String, &Source)> = self.sources.iter().collect();
        sources.sort_by_key(|(n, _)| *n);
        w.u32(sources.len() as u32);
        for (name, s) in sources {
            w.bytes(name.as_bytes());
            w.i64(s.max_ts);
            w.i64(s.last_seen_ms);
        }
        w.u32(self.panes.len() as u32);
        for (win, pane) in &self.panes {
            w.i64(win.start);
            w.i64(win.end);
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
        let mut keys: Vec<(&Box<[u8]>, &Vec<Session>)> = self.sessions.iter().collect();
        keys.sort_by_key(|(k, _)| *k);
        w.u32(keys.len() as u32);
        for (k, list) in keys {
            w.bytes(k);
            w.u32(list.len() as u32);
            for s in list {
                w.i64(s.start);
                w.i64(s.last);
                for a in &s.accs {
                    w.acc(a);
                }
            }
        }
        w.finish()
    }

    /// An engine with the state of `bytes` (from [`Engine::snapshot`] with the same schema).
    pub fn restore(schema: Schema, settings: Settings, bytes: &[u8]) -> Result<Self, RestoreError> {
        let mut e = Self::new(schema, settings)?;
        let mut r = snapshot::Reader::new(bytes)?;
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
        let kinds: Vec<MeasureKind> = e.schema.measures.iter().map(|(_, k)| *k).collect();
        let mut bytes_held = 0usize;
        for _ in 0..r.u32()? {
            let win = Window {
                start: r.i64()?,
                end: r.i64()?,
            };
            let mut pane = Pane::default();
            for _ in 0..r.u32()? {
                let k: Box<[u8]> = r.bytes()?.into();
                let accs = kinds
                    .iter()
                    .map(|kind| r.acc(*kind))
                    .collect::<Result<Vec<_>, _>>()?;
                bytes_held += accs.iter().map(Acc::bytes).sum::<usize>() + k.len() + 16;
                pane.accs.insert(k, accs);
            }
            e.panes.insert(win, pane);
        }
        for _ in 0..r.u32()? {
            let k: Box<[u8]> = r.bytes()?.into();
            let mut list = Vec::new();
            for _ in 0..r.u32()? {
                let start = r.i64()?;
                let last = r.i64()?;
                let accs = kinds
                    .iter()
                    .map(|kind| r.acc(*kind))
                    .collect::<Result<Vec<_>, _>>()?;
                bytes_held += accs.iter().map(Acc::bytes).sum::<usize>() + k.len() + 32;
                list.push(Session { start, last, accs });
            }
            e.open_sessions += list.len();
            e.sessions.insert(k, list);
        }
        r.done()?;
        e.state_bytes = bytes_held;
        Ok(e)
    }

    /// The watermark at processing time `now_ms`, if any source was seen.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        debug_assert!(
            self.sources_within_clock(),
            "a source's watermark is ahead of its processing time plus clock_allowance_ms"
        );
        let ooo = self.settings.out_of_orderness_ms;
        let idle = self.settings.source_idle_ms;
        let active = self
            .sources
            .values()
            .filter(|s| now_ms - s.last_seen_ms < idle)
            .map(|s| s.max_ts.saturating_sub(ooo))
            .min();
        active.or_else(|| {
            self.sources
                .values()
                .map(|s| s.max_ts.saturating_sub(ooo))
                .max()
        })
    }

    /// The invariant the watermark relies on: no source's latest event time is ahead of the
    /// latest processing time it was seen at plus [`Settings::clock_allowance_ms`]. A path that
    /// fed the sources without the cap of [`Engine::observe`] would let one event from a wrong
    /// clock finalize every window early.
    pub fn sources_within_clock(&self) -> bool {
        let allowance = self.settings.clock_allowance_ms;
        self.sources
            .values()
            .all(|s| s.max_ts <= s.last_seen_ms.saturating_add(allowance))
    }

    /// The latest processing time [`Engine::observe`] was given (kept in snapshots), if any.
    pub fn clock_ms(&self) -> Option<i64> {
        (self.clock != i64::MIN).then_some(self.clock)
    }

    /// The watermark windows have been finalized against.
    pub fn applied_watermark(&self) -> Option<i64> {
        self.applied
    }

    /// Moves the watermark to `now_ms`'s and returns the rows of every window that became
    /// final, once each; panes no window needs any more are dropped.
    pub fn advance(&mut self, now_ms: i64) -> Vec<Row> {
        let Some(wm) = self.watermark(now_ms) else {
            return Vec::new();
        };
        let before = self.applied;
        if before.is_some_and(|b| wm <= b) {
            return Vec::new();
        }
        self.applied = Some(wm);
        if wm < self.next_due {
            return Vec::new();
        }
        let lat = self.schema.allowed_lateness_ms;
        if let WindowSpec::Session { gap_ms } = self.schema.window {
            let rows = self.take_final_sessions(gap_ms, wm);
            self.next_due = self
                .sessions
                .values()
                .flatten()
                .map(|s| s.last.saturating_add(gap_ms).saturating_add(lat))
                .min()
                .unwrap_or(i64::MAX);
            return rows;
        }
        let was_final = |w: Window| before.is_some_and(|b| w.end.saturating_add(lat) <= b);
        let mut due: BTreeSet<Window> = BTreeSet::new();
        for pane in self.panes.keys() {
            for w in self.schema.window.windows_of_pane(*pane) {
                if w.end.saturating_add(lat) <= wm && !was_final(w) {
                    due.insert(w);
                }
            }
        }
        let rows: Vec<Row> = due.iter().flat_map(|w| self.merged(*w, true)).collect();
        // Drop the panes whose every window is now final.
        let spec = self.schema.window.clone();
        let done: Vec<Window> = self
            .panes
            .keys()
            .filter(|p| {
                spec.windows_of_pane(**p)
                    .last()
                    .is_some_and(|w| w.end.saturating_add(lat) <= wm)
            })
            .copied()
            .collect();
        for p in done {
            if let Some(pane) = self.panes.remove(&p) {
                let freed: usize = pane
                    .accs
                    .iter()
                    .map(|(k, a)| a.iter().map(Acc::bytes).sum::<usize>() + k.len() + 16)
                    .sum();
                self.state_bytes = self.state_bytes.saturating_sub(freed);
            }
        }
        self.next_due = self
            .panes
            .keys()
            .filter_map(|p| spec.windows_of_pane(*p).first().copied())
            .map(|w| w.end.saturating_add(lat))
            .min()
            .unwrap_or(i64::MAX);
        rows
    }

    /// Ends the stream: every window still open becomes final and its rows are returned (a
    /// replay of a bounded log, or a test, calls this at the end).
    pub fn finish(&mut self) -> Vec<Row> {
        let before = self.applied;
        self.applied = Some(i64::MAX);
        if let WindowSpec::Session { gap_ms } = self.schema.window {
            return self.take_final_sessions(gap_ms, i64::MAX);
        }
        let lat = self.schema.allowed_lateness_ms;
        let mut due: BTreeSet<Window> = BTreeSet::new();
        for pane in self.panes.keys() {
            for w in self.schema.window.windows_of_pane(*pane) {
                if before.is_none_or(|b| w.end.saturating_add(lat) > b) {
                    due.insert(w);
                }
            }
        }
        let rows = due.iter().flat_map(|w| self.merged(*w, true)).collect();
        self.panes.clear();
        self.state_bytes = 0;
        rows
    }

    /// The rows of every window that is not final yet (`is_final = false`), in window then key
    /// order.
    pub fn rows(&self) -> Vec<Row> {
        if let WindowSpec::Session { gap_ms } = self.schema.window {
            let mut rows: Vec<Row> = self
                .sessions
                .iter()
                .flat_map(|(k, list)| {
                    list.iter().map(move |s| Row {
                        window: Window {
                            start: s.start,
                            end: s.last.saturating_add(gap_ms),
                        },
                        is_final: false,
                        key: decode_key(k),
                        values: s.accs.iter().map(Acc::value).collect(),
                    })
                })
                .collect();
            rows.sort_by(|a, b| (a.window, &a.key).cmp(&(b.window, &b.key)));
            return rows;
        }
        let mut open: BTreeSet<Window> = BTreeSet::new();
        for pane in self.panes.keys() {
            for w in self.schema.window.windows_of_pane(*pane) {
                if !self.is_final(w) {
                    open.insert(w);
                }
            }
        }
        open.iter().flat_map(|w| self.merged(*w, false)).collect()
    }

    /// The rows of window `w`, merged from its panes, in key order.
    fn merged(&self, w: Window, is_final: bool) -> Vec<Row> {
        let mut by_key: BTreeMap<&[u8], Vec<Acc>> = BTreeMap::new();
        for p in self.schema.window.panes_of(w) {
            let Some(pane) = self.panes.get(&p) else {
                continue;
            };
            for (k, accs) in &pane.accs {
                match by_key.get_mut(&**k) {
                    Some(into) => {
                        for (a, b) in into.iter_mut().zip(accs) {
                            a.merge(b);
                        }
                    }
                    None => {
                        by_key.insert(k, accs.clone());
                    }
                }
            }
        }
        by_key
            .into_iter()
            .map(|(k, accs)| Row {
                window: w,
                is_final,
                key: decode_key(k),
                values: accs.iter().map(Acc::value).collect(),
            })
            .collect()
    }
}
