//! The fold: one aggregator's rows of one batch into its window engine, event by event in log
//! order. Pure: it takes the engine, the batch's facts and the rows the plugin mapped, and
//! returns what happened; no plugin, no disk, no clock. The step ([`super::step`]) turns its
//! outcome into late-event entries, dead letters and counts.

use runnel_host::{AggRow, RowInput};
use runnel_window::{Added, Engine, Input, Row};

/// What the pipeline knows of each event of a batch, whatever the plugins did with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    /// Index of its agent in the batch's origins.
    pub origin: u32,
    /// Event time.
    pub event_time_ms: i64,
    /// Receive time: the earlier of the agent's `received_at` and the broker's append time.
    pub receive_ms: i64,
}

/// One event's fate in one aggregate, when it is not the ordinary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// Every row fell in final windows: the event goes to `late_events`.
    Late {
        /// End of its last window.
        window_end: i64,
        /// The watermark windows had been finalized against.
        watermark: Option<i64>,
    },
    /// A row would pass a window limit: the event goes to `dead_letters`.
    Refused {
        /// The limit's name.
        limit: &'static str,
    },
}

/// What folding one batch did.
#[derive(Debug, Default)]
pub struct Folded {
    /// Rows folded into open windows.
    pub rows_folded: u64,
    /// Events (by index in the source batch) that were late or refused, in log order.
    pub exceptions: Vec<(usize, Exception)>,
    /// Rows of windows that became final, in the order they did.
    pub finals: Vec<Row>,
}

/// Folds `rows` (sorted by event; `rows[k].event` indexes `index`, which maps the plugin's
/// batch back to the source batch) into `engine`. Every source event is observed by its agent
/// (`agents[fact.origin]`) at its receive time, in order, except those in `skip` (sorted: the
/// agent's dead letters), and the watermark advances after each.
pub fn fold(
    engine: &mut Engine,
    facts: &[Fact],
    agents: &[&str],
    skip: &[usize],
    index: &[usize],
    rows: &[AggRow],
) -> Folded {
    debug_assert!(
        rows.is_sorted_by_key(|r| r.event),
        "rows come sorted by event"
    );
    let mut out = Folded::default();
    let mut r = 0;
    let mut dims: Vec<&str> = Vec::new();
    let mut inputs: Vec<Input<'_>> = Vec::new();
    for (j, fact) in facts.iter().enumerate() {
        if skip.binary_search(&j).is_ok() {
            continue;
        }
        let (mut folded, mut late_rows, mut late_end) = (0u32, 0u32, i64::MIN);
        let mut refused: Option<&'static str> = None;
        while r < rows.len() && index[rows[r].event as usize] == j {
            let row = &rows[r];
            dims.clear();
            dims.extend(row.dimensions.iter().map(String::as_str));
            inputs.clear();
            inputs.extend(row.inputs.iter().map(|v| match v {
                RowInput::Null => Input::Null,
                RowInput::Num(x) => Input::Num(*x),
                RowInput::Text(t) => Input::Str(t),
            }));
            match engine.add_row(row.event_time_ms, &dims, &inputs) {
                Added::Folded => folded += 1,
                Added::Late { window_end } => {
                    late_rows += 1;
                    late_end = late_end.max(window_end);
                }
                Added::Refused { limit } => refused = Some(limit),
            }
            r += 1;
        }
        out.rows_folded += u64::from(folded);
        if let Some(limit) = refused {
            out.exceptions.push((j, Exception::Refused { limit }));
        } else if late_rows > 0 && folded == 0 {
            out.exceptions.push((
                j,
                Exception::Late {
                    window_end: late_end,
                    watermark: engine.applied_watermark(),
                },
            ));
        }
        engine.observe(
            agents[fact.origin as usize],
            fact.event_time_ms,
            fact.receive_ms,
        );
        let now = engine.clock_ms().unwrap_or(fact.receive_ms);
        out.finals.extend(engine.advance(now));
    }
    debug_assert_eq!(r, rows.len(), "every row belongs to a source event");
    out
}

#[cfg(test)]
mod tests {
    use runnel_window::{MeasureKind, Schema, Settings, Value, WindowSpec};

    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_795_255_200_000; // a minute boundary

    fn engine(settings: Settings) -> Engine {
        Engine::new(
            Schema {
                dimensions: vec!["event_type".into()],
                measures: vec![("events".into(), MeasureKind::Count)],
                window: WindowSpec::Tumbling { size_ms: MIN },
                allowed_lateness_ms: 0,
            },
            settings,
        )
        .unwrap()
    }

    fn fact(t: i64) -> Fact {
        Fact {
            origin: 0,
            event_time_ms: t,
            receive_ms: t,
        }
    }

    fn row(event: u32, t: i64) -> AggRow {
        AggRow {
            event,
            event_time_ms: t,
            dimensions: vec!["page.view".into()],
            inputs: vec![RowInput::Null],
        }
    }

    fn count(r: &Row) -> u64 {
        match r.values[0] {
            Value::Count(n) => n,
            ref v => panic!("{v:?}"),
        }
    }

    #[test]
    fn rows_fold_in_order_and_windows_finalize_as_the_watermark_passes() {
        let mut e = engine(Settings::default());
        let times = [T0 + 1_000, T0 + 30_000, T0 + MIN + 10_000];
        let facts: Vec<Fact> = times.iter().map(|t| fact(*t)).collect();
        let rows: Vec<AggRow> = times
            .iter()
            .enumerate()
            .map(|(i, t)| row(i as u32, *t))
            .collect();
        let index: Vec<usize> = (0..3).collect();
        let out = fold(&mut e, &facts, &["a"], &[], &index, &rows);
        assert_eq!(out.rows_folded, 3);
        assert!(out.exceptions.is_empty());
        // The third event (10 s into the next minute, 5 s out-of-orderness) finalizes the first.
        assert_eq!(out.finals.len(), 1);
        assert_eq!(count(&out.finals[0]), 2);
    }

    #[test]
    fn a_late_event_and_a_refused_one_are_named_by_their_source_index() {
        let mut e = engine(Settings {
            keys_per_window_max: 1,
            ..Settings::default()
        });
        // Event 1 moves the watermark past the first window; event 2 comes for it (late);
        // event 3 has a second key in a window that holds one already (refused). Event 0 was
        // dropped by an enricher: observed, no rows.
        let facts = vec![
            fact(T0),
            fact(T0 + 2 * MIN),
            fact(T0 + 10_000),
            fact(T0 + 2 * MIN + 1),
        ];
        let index = vec![1, 2, 3];
        let mut rows = vec![
            row(0, T0 + 2 * MIN),
            row(1, T0 + 10_000),
            row(2, T0 + 2 * MIN + 1),
        ];
        rows[2].dimensions = vec!["other".into()];
        let out = fold(&mut e, &facts, &["a"], &[], &index, &rows);
        assert_eq!(out.rows_folded, 1);
        assert_eq!(out.exceptions.len(), 2, "{:?}", out.exceptions);
        assert!(matches!(out.exceptions[0], (2, Exception::Late { .. })));
        assert_eq!(
            out.exceptions[1],
            (
                3,
                Exception::Refused {
                    limit: "keys_per_window_max"
                }
            )
        );
    }

    #[test]
    fn skipped_events_move_no_watermark() {
        let mut e = engine(Settings::default());
        // Event 1 is a dead letter a year ahead: skipped, so it finalizes nothing.
        let facts = vec![fact(T0), fact(T0 + 365 * 24 * 60 * MIN), fact(T0 + 2_000)];
        let index = vec![0, 2];
        let rows = vec![row(0, T0), row(1, T0 + 2_000)];
        let out = fold(&mut e, &facts, &["a"], &[1], &index, &rows);
        assert_eq!(out.rows_folded, 2);
        assert!(out.finals.is_empty());
        assert_eq!(e.watermark(T0 + 2_000), Some(T0 + 2_000 - 5_000));
    }
}
