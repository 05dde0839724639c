//! The window engine against answers computed independently from the input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use runnel_window::{
    Added, CalendarUnit, Engine, Input, MeasureKind, Row, Schema, Settings, Value, Window,
    WindowSpec,
};

const MIN: i64 = 60_000;

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn counting(window: WindowSpec, lateness: i64) -> Engine {
    Engine::new(
        Schema {
            dimensions: vec!["event_type".into()],
            measures: vec![("events".into(), MeasureKind::Count)],
            window,
            allowed_lateness_ms: lateness,
        },
        Settings::default(),
    )
    .unwrap()
}

fn count_of(r: &Row) -> u64 {
    match r.values[0] {
        Value::Count(n) => n,
        ref v => panic!("{v:?}"),
    }
}

/// Must-show 3: 23:59:59.999 on the last day of a month and 00:00:00 on the first of the next
/// fall in different month windows, in UTC and in a non-UTC zone; DST shortens a month.
#[test]
fn calendar_months_split_at_local_midnight() {
    let utc = WindowSpec::Calendar {
        unit: CalendarUnit::Month,
        tz: WindowSpec::zone("UTC").unwrap(),
    };
    let a = utc.pane(ms("2026-01-31T23:59:59.999Z"));
    let b = utc.pane(ms("2026-02-01T00:00:00Z"));
    assert_ne!(a, b);
    assert_eq!(a.start, ms("2026-01-01T00:00:00Z"));
    assert_eq!(a.end, b.start);
    assert_eq!(b.end, ms("2026-03-01T00:00:00Z"));

    let nairobi = WindowSpec::Calendar {
        unit: CalendarUnit::Month,
        tz: WindowSpec::zone("Africa/Nairobi").unwrap(),
    };
    let a = nairobi.pane(ms("2026-01-31T23:59:59.999+03:00"));
    let b = nairobi.pane(ms("2026-02-01T00:00:00+03:00"));
    assert_ne!(a, b);
    assert_eq!(a.end, ms("2026-02-01T00:00:00+03:00"));
    assert_eq!(b.start, ms("2026-01-31T21:00:00Z"));
    // In UTC both instants are in January.
    assert_eq!(
        utc.pane(ms("2026-01-31T23:59:59.999+03:00")),
        utc.pane(ms("2026-02-01T00:00:00+03:00"))
    );

    let ny = WindowSpec::Calendar {
        unit: CalendarUnit::Month,
        tz: WindowSpec::zone("America/New_York").unwrap(),
    };
    let march = ny.pane(ms("2026-03-15T12:00:00-04:00"));
    assert_eq!(march.start, ms("2026-03-01T00:00:00-05:00"));
    assert_eq!(march.end, ms("2026-04-01T00:00:00-04:00"));
    assert_eq!(march.end - march.start, 31 * 24 * 3_600_000 - 3_600_000);

    let week = WindowSpec::Calendar {
        unit: CalendarUnit::Week,
        tz: WindowSpec::zone("UTC").unwrap(),
    };
    // 2026-11-21 is a Saturday: its ISO week starts on Monday the 16th.
    assert_eq!(
        week.pane(ms("2026-11-21T10:00:00Z")).start,
        ms("2026-11-16T00:00:00Z")
    );
    assert!(WindowSpec::zone("Mars/Olympus").is_err());
}

#[test]
fn rows_fill_then_finalize_and_late_events_are_refused() {
    let mut e = counting(WindowSpec::Tumbling { size_ms: MIN }, 10_000);
    let t0 = 1_000 * MIN;
    assert_eq!(
        e.add("a", t0 + 1, 0, &["view"], &[Input::Null]),
        Added::Folded
    );
    assert_eq!(
        e.add("a", t0 + 2, 0, &["view"], &[Input::Null]),
        Added::Folded
    );
    assert!(e.advance(0).is_empty());
    let open = e.rows();
    assert_eq!(open.len(), 1);
    assert!(!open[0].is_final);
    assert_eq!(count_of(&open[0]), 2);
    // Watermark = max - 5 s: past the end but within the lateness (10 s): not final yet.
    e.add("a", t0 + MIN + 12_000, 0, &["view"], &[Input::Null]);
    assert!(e.advance(0).is_empty());
    // An event within the lateness still updates the window.
    assert_eq!(
        e.add("a", t0 + 3, 0, &["view"], &[Input::Null]),
        Added::Folded
    );
    // Past end + lateness: final, emitted once.
    e.add("a", t0 + MIN + 15_000, 0, &["view"], &[Input::Null]);
    let fin = e.advance(0);
    assert_eq!(fin.len(), 1);
    assert!(fin[0].is_final);
    assert_eq!(count_of(&fin[0]), 3);
    assert!(e.advance(0).is_empty());
    // Now late: refused, counted, nothing changes.
    assert_eq!(
        e.add("a", t0 + 4, 0, &["view"], &[Input::Null]),
        Added::Late {
            window_end: t0 + MIN
        }
    );
    assert_eq!(e.counters().late, 1);
}

#[test]
fn an_idle_source_stops_holding_the_watermark() {
    let mut e = Engine::new(
        Schema {
            dimensions: vec![],
            measures: vec![("n".into(), MeasureKind::Count)],
            window: WindowSpec::Tumbling { size_ms: MIN },
            allowed_lateness_ms: 0,
        },
        Settings {
            source_idle_ms: 30_000,
            ..Settings::default()
        },
    )
    .unwrap();
    e.add("slow", 10 * MIN, 0, &[], &[]);
    e.add("fast", 20 * MIN, 0, &[], &[]);
    assert_eq!(e.watermark(1_000), Some(10 * MIN - 5_000));
    // 31 s later only "fast" has been heard from.
    e.add("fast", 21 * MIN, 31_000, &[], &[]);
    assert_eq!(e.watermark(31_000), Some(21 * MIN - 5_000));
    // Every source idle: the greatest source watermark.
    assert_eq!(e.watermark(1_000_000), Some(21 * MIN - 5_000));
}

#[test]
fn measures_fold_and_merge() {
    let mut e = Engine::new(
        Schema {
            dimensions: vec!["country".into()],
            measures: vec![
                ("n".into(), MeasureKind::Count),
                ("total".into(), MeasureKind::Sum),
                ("least".into(), MeasureKind::Min),
                ("most".into(), MeasureKind::Max),
                ("mean".into(), MeasureKind::Avg),
                ("users".into(), MeasureKind::Distinct),
                ("amount".into(), MeasureKind::Quantiles),
            ],
            // Hopping: 4 panes per window, so every value goes through pane merges.
            window: WindowSpec::Hopping {
                size_ms: 4 * MIN,
                slide_ms: MIN,
            },
            allowed_lateness_ms: 0,
        },
        Settings::default(),
    )
    .unwrap();
    let base = 100 * 4 * MIN;
    let users: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
    for i in 0..100_000i64 {
        let amount = (i % 10_000 + 1) as f64;
        let ts = base + (i % 4) * MIN + i % 1000;
        e.add(
            "a",
            ts,
            0,
            &["KE"],
            &[
                Input::Null,
                Input::Num(amount),
                Input::Num(amount),
                Input::Num(amount),
                Input::Num(amount),
                Input::Str(&users[i as usize]),
                Input::Num(amount),
            ],
        );
    }
    let rows = e.finish();
    let full = rows
        .iter()
        .find(|r| {
            r.window
                == Window {
                    start: base,
                    end: base + 4 * MIN,
                }
        })
        .expect("the window that holds all four panes");
    assert_eq!(full.values[0], Value::Count(100_000));
    assert_eq!(
        full.values[1],
        Value::Num((10 * (1..=10_000).sum::<i64>()) as f64)
    );
    assert_eq!(full.values[2], Value::Num(1.0));
    assert_eq!(full.values[3], Value::Num(10_000.0));
    assert_eq!(full.values[4], Value::Num(5_000.5));
    let Value::Num(distinct) = full.values[5] else {
        panic!()
    };
    let err = (distinct - 100_000.0).abs() / 100_000.0;
    assert!(
        err < 0.033,
        "distinct {distinct}: {:.2}% off, beyond two standard errors",
        err * 100.0
    );
    let Value::Quantiles(q) = &full.values[6] else {
        panic!()
    };
    assert!((q[0].1 - 5_000.0).abs() < 100.0, "p50 {q:?}");
    assert!((q[2].1 - 9_900.0).abs() < 50.0, "p99 {q:?}");
}

#[test]
fn limits_refuse_with_their_names() {
    let mut e = Engine::new(
        Schema {
            dimensions: vec!["k".into()],
            measures: vec![("n".into(), MeasureKind::Count)],
            window: WindowSpec::Tumbling { size_ms: MIN },
            allowed_lateness_ms: 0,
        },
        Settings {
            keys_per_window_max: 2,
            open_windows_max: 2,
            ..Settings::default()
        },
    )
    .unwrap();
    assert_eq!(e.add("a", 0, 0, &["x"], &[]), Added::Folded);
    assert_eq!(e.add("a", 0, 0, &["y"], &[]), Added::Folded);
    assert_eq!(
        e.add("a", 0, 0, &["z"], &[]),
        Added::Refused {
            limit: "keys_per_window_max"
        }
    );
    assert_eq!(e.add("a", 0, 0, &["x"], &[]), Added::Folded);
    assert_eq!(e.add("a", MIN, 0, &["x"], &[]), Added::Folded);
    assert_eq!(
        e.add("a", 2 * MIN, 0, &["x"], &[]),
        Added::Refused {
            limit: "open_windows_max"
        }
    );
    assert_eq!(e.counters().refused_keys, 1);
    assert_eq!(e.counters().refused_windows, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Tumbling and hopping windows: the final rows equal counts computed naively from the
    /// input, with events arriving out of order within the out-of-orderness.
    #[test]
    fn final_counts_match_a_naive_count(
        size in prop::sample::select(vec![1_000i64, 5_000, 60_000]),
        panes in 1i64..5,
        events in prop::collection::vec((0i64..600_000, 0u8..3), 1..400),
    ) {
        let slide = size;
        let size = size * panes;
        let spec = if panes == 1 {
            WindowSpec::Tumbling { size_ms: size }
        } else {
            WindowSpec::Hopping { size_ms: size, slide_ms: slide }
        };
        let mut e = Engine::new(
            Schema {
                dimensions: vec!["t".into()],
                measures: vec![("n".into(), MeasureKind::Count)],
                window: spec.clone(),
                allowed_lateness_ms: 0,
            },
            Settings { out_of_orderness_ms: 1_000_000, ..Settings::default() },
        ).unwrap();
        let mut rows = Vec::new();
        for (ts, t) in &events {
            let key = ["a", "b", "c"][*t as usize];
            prop_assert_eq!(e.add("s", *ts, 0, &[key], &[]), Added::Folded);
            rows.extend(e.advance(0));
        }
        rows.extend(e.finish());
        let mut got: BTreeMap<(i64, i64, String), u64> = BTreeMap::new();
        for r in &rows {
            prop_assert!(r.is_final);
            let k = (r.window.start, r.window.end, r.key[0].clone());
            prop_assert!(got.insert(k, count_of(r)).is_none(), "a window emitted twice");
        }
        let mut want: BTreeMap<(i64, i64, String), u64> = BTreeMap::new();
        for (ts, t) in &events {
            let key = ["a", "b", "c"][*t as usize].to_string();
            // Naive: every window start s (a multiple of slide) with s <= ts < s + size.
            let first = (ts - size).div_euclid(slide) * slide;
            let mut s = first;
            while s <= *ts {
                if ts < &(s + size) {
                    *want.entry((s, s + size, key.clone())).or_default() += 1;
                }
                s += slide;
            }
        }
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With a small out-of-orderness, windows finalize while events still arrive: each final
    /// row is emitted once and equals a naive count of the events that arrived before its window
    /// was final; the late events are exactly those whose windows were all final.
    #[test]
    fn finalization_and_lateness_match_a_naive_model(
        slide in prop::sample::select(vec![1_000i64, 5_000]),
        panes in 1i64..4,
        ooo in 0i64..20_000,
        lateness in 0i64..10_000,
        events in prop::collection::vec(0i64..300_000, 1..300),
    ) {
        let size = slide * panes;
        let spec = if panes == 1 {
            WindowSpec::Tumbling { size_ms: size }
        } else {
            WindowSpec::Hopping { size_ms: size, slide_ms: slide }
        };
        let mut e = Engine::new(
            Schema {
                dimensions: vec![],
                measures: vec![("n".into(), MeasureKind::Count)],
                window: spec,
                allowed_lateness_ms: lateness,
            },
            Settings { out_of_orderness_ms: ooo, ..Settings::default() },
        ).unwrap();
        let mut got: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        let mut want: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        let (mut late_got, mut late_want) = (0u64, 0u64);
        let mut applied: Option<i64> = None;
        let mut max_ts = i64::MIN;
        for ts in &events {
            // The model: windows final once applied >= end + lateness.
            let first = (ts - size).div_euclid(slide) * slide;
            let windows: Vec<(i64, i64)> = (0..)
                .map(|k| first + k * slide)
                .take_while(|s| s <= ts)
                .filter(|s| ts < &(s + size))
                .map(|s| (s, s + size))
                .collect();
            let fin = |w: &(i64, i64)| applied.is_some_and(|a| w.1 + lateness <= a);
            if windows.iter().all(fin) {
                late_want += 1;
            } else {
                for w in windows.iter().filter(|w| !fin(w)) {
                    *want.entry(*w).or_default() += 1;
                }
            }
            match e.add("s", *ts, 0, &[], &[]) {
                Added::Late { .. } => late_got += 1,
                Added::Folded => {}
                other => prop_assert!(false, "{other:?}"),
            }
            for r in e.advance(0) {
                prop_assert!(got.insert((r.window.start, r.window.end), count_of(&r)).is_none());
            }
            max_ts = max_ts.max(*ts);
            applied = Some(applied.map_or(max_ts - ooo, |a| a.max(max_ts - ooo)));
        }
        for r in e.finish() {
            prop_assert!(got.insert((r.window.start, r.window.end), count_of(&r)).is_none());
        }
        prop_assert_eq!(late_got, late_want);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn sessions_merge_by_gap_per_key_and_finalize() {
    let gap = 30 * MIN;
    let mut e = Engine::new(
        Schema {
            dimensions: vec!["user_id".into()],
            measures: vec![
                ("events".into(), MeasureKind::Count),
                ("last".into(), MeasureKind::Max),
            ],
            window: WindowSpec::Session { gap_ms: gap },
            allowed_lateness_ms: 0,
        },
        Settings::default(),
    )
    .unwrap();
    let t0 = 1_000 * MIN;
    // u1: two events 10 min apart, then one 50 min later (a new session).
    for (ts, user) in [
        (t0, "u1"),
        (t0 + 10 * MIN, "u1"),
        (t0 + 5 * MIN, "u2"),
        (t0 + 60 * MIN, "u1"),
    ] {
        assert_eq!(
            e.add("a", ts, 0, &[user], &[Input::Null, Input::Num(ts as f64)]),
            Added::Folded
        );
    }
    let open = e.rows();
    assert_eq!(open.len(), 3, "{open:?}");
    // An event between the two u1 sessions bridges them into one.
    e.add("a", t0 + 35 * MIN, 0, &["u1"], &[Input::Null, Input::Null]);
    let open = e.rows();
    let u1: Vec<&Row> = open.iter().filter(|r| r.key == ["u1"]).collect();
    assert_eq!(u1.len(), 1, "{open:?}");
    assert_eq!(
        u1[0].window,
        Window {
            start: t0,
            end: t0 + 60 * MIN + gap
        }
    );
    assert_eq!(count_of(u1[0]), 4);
    // The watermark passes u2's session end (t0 + 35 min) but not u1's.
    e.add("b", t0 + 40 * MIN + 5_000, 0, &["u3"], &[]);
    e.add("a", t0 + 40 * MIN + 5_000, 0, &["u3"], &[]);
    let fin = e.advance(0);
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!(fin[0].key, ["u2"]);
    assert_eq!(
        fin[0].window,
        Window {
            start: t0 + 5 * MIN,
            end: t0 + 35 * MIN
        }
    );
    // u2 again, inside its final session: late.
    assert!(matches!(
        e.add("a", t0 + 6 * MIN, 0, &["u2"], &[]),
        Added::Late { .. }
    ));
    assert_eq!(e.finish().len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sessions with nothing late: the final sessions equal those found by sorting each key's
    /// events and cutting where the gap is reached.
    #[test]
    fn sessions_match_a_naive_split(
        gap in 1_000i64..20_000,
        events in prop::collection::vec((0i64..200_000, 0u8..3), 1..200),
    ) {
        let mut e = Engine::new(
            Schema {
                dimensions: vec!["k".into()],
                measures: vec![("n".into(), MeasureKind::Count)],
                window: WindowSpec::Session { gap_ms: gap },
                allowed_lateness_ms: 0,
            },
            Settings { out_of_orderness_ms: 1_000_000, ..Settings::default() },
        ).unwrap();
        for (ts, k) in &events {
            let key = ["a", "b", "c"][*k as usize];
            prop_assert_eq!(e.add("s", *ts, 0, &[key], &[]), Added::Folded);
        }
        let mut got: Vec<(String, i64, i64, u64)> = e
            .finish()
            .iter()
            .map(|r| (r.key[0].clone(), r.window.start, r.window.end, count_of(r)))
            .collect();
        got.sort();
        let mut want = Vec::new();
        for key in ["a", "b", "c"] {
            let mut ts: Vec<i64> = events
                .iter()
                .filter(|(_, k)| ["a", "b", "c"][*k as usize] == key)
                .map(|(t, _)| *t)
                .collect();
            ts.sort();
            let mut i = 0;
            while i < ts.len() {
                let start = ts[i];
                let mut last = ts[i];
                let mut n = 1;
                while i + n < ts.len() && ts[i + n] < last + gap {
                    last = ts[i + n];
                    n += 1;
                }
                want.push((key.to_string(), start, last + gap, n as u64));
                i += n;
            }
        }
        want.sort();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Snapshot at any point, restore, go on: the final rows are those of an uninterrupted run
    /// (what a broker restart relies on), for every kind of window and measure.
    #[test]
    fn a_restored_snapshot_goes_on_exactly(
        kind in 0u8..4,
        cut in 0usize..300,
        events in prop::collection::vec((0i64..400_000, 0u8..3, 0u32..1000), 1..300),
    ) {
        let window = match kind {
            0 => WindowSpec::Tumbling { size_ms: 10_000 },
            1 => WindowSpec::Hopping { size_ms: 30_000, slide_ms: 10_000 },
            2 => WindowSpec::Session { gap_ms: 7_000 },
            _ => WindowSpec::Calendar { unit: CalendarUnit::Day, tz: WindowSpec::zone("Asia/Kolkata").unwrap() },
        };
        let schema = Schema {
            dimensions: vec!["k".into()],
            measures: vec![
                ("n".into(), MeasureKind::Count),
                ("s".into(), MeasureKind::Sum),
                ("lo".into(), MeasureKind::Min),
                ("hi".into(), MeasureKind::Max),
                ("avg".into(), MeasureKind::Avg),
                ("d".into(), MeasureKind::Distinct),
                ("q".into(), MeasureKind::Quantiles),
            ],
            window,
            allowed_lateness_ms: 3_000,
        };
        let settings = Settings { out_of_orderness_ms: 20_000, ..Settings::default() };
        let feed = |e: &mut Engine, evs: &[(i64, u8, u32)], out: &mut Vec<Row>| {
            for (ts, k, v) in evs {
                let key = ["a", "b", "c"][*k as usize];
                let id = format!("u{v}");
                e.add("s", *ts, 0, &[key], &[
                    Input::Null,
                    Input::Num(f64::from(*v)),
                    Input::Num(f64::from(*v)),
                    Input::Num(f64::from(*v)),
                    Input::Num(f64::from(*v)),
                    Input::Str(&id),
                    Input::Num(f64::from(*v)),
                ]);
                out.extend(e.advance(0));
            }
        };
        let cut = cut.min(events.len());
        let mut whole = Engine::new(schema.clone(), settings.clone()).unwrap();
        let mut want = Vec::new();
        feed(&mut whole, &events, &mut want);
        want.extend(whole.finish());

        let mut first = Engine::new(schema.clone(), settings.clone()).unwrap();
        let mut got = Vec::new();
        feed(&mut first, &events[..cut], &mut got);
        let bytes = first.snapshot();
        let mut second = Engine::restore(schema, settings, &bytes).unwrap();
        // (Bytes of a re-snapshot may differ: an HLL in its sparse set mode keeps coupons in a
        // hash set; what must not differ is every row.)
        feed(&mut second, &events[cut..], &mut got);
        got.extend(second.finish());
        prop_assert_eq!(got, want);
    }
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let mut e = counting(WindowSpec::Tumbling { size_ms: MIN }, 0);
    e.add("a", 5, 0, &["x"], &[]);
    let mut bytes = e.snapshot();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    let schema = e.schema().clone();
    let err = Engine::restore(schema.clone(), Settings::default(), &bytes).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let other = Schema {
        measures: vec![("s".into(), MeasureKind::Sum)],
        ..schema
    };
    let err = Engine::restore(other, Settings::default(), &e.snapshot()).unwrap_err();
    assert!(err.to_string().contains("measures do not match"), "{err}");
}

#[test]
fn events_without_rows_still_move_the_watermark() {
    let mut e = counting(WindowSpec::Tumbling { size_ms: MIN }, 0);
    assert_eq!(e.add_row(10, &["view"], &[]), Added::Folded);
    // No source seen yet: no watermark, nothing final.
    assert_eq!(e.watermark(0), None);
    assert!(e.advance(0).is_empty());
    // An event the aggregator mapped to no row moves its source's watermark.
    e.observe("agent-1", 2 * MIN, 0);
    let fin = e.advance(0);
    assert_eq!(fin.len(), 1);
    assert_eq!(count_of(&fin[0]), 1);
}

#[test]
fn window_specs_print_and_parse_back() {
    for text in [
        "tumbling 1m",
        "hopping 1h every 5m",
        "session 30m",
        "calendar month Africa/Nairobi",
        "calendar day UTC",
        "tumbling 1500ms",
    ] {
        let spec: WindowSpec = text.parse().unwrap();
        assert_eq!(spec.to_string(), text);
    }
    assert_eq!(
        "tumbling 60s".parse::<WindowSpec>().unwrap().to_string(),
        "tumbling 1m"
    );
    let err = "hopping 1h every 7m".parse::<WindowSpec>().unwrap_err();
    assert!(err.contains("must divide"), "{err}");
    let err = "calendar month Mars/Olympus"
        .parse::<WindowSpec>()
        .unwrap_err();
    assert!(err.contains("Mars/Olympus"), "{err}");
    let err = "tumbling 5min".parse::<WindowSpec>().unwrap_err();
    assert!(err.contains("unit"), "{err}");
}

fn clocked(allowance_ms: i64) -> Engine {
    Engine::new(
        Schema {
            dimensions: vec!["event_type".into()],
            measures: vec![("events".into(), MeasureKind::Count)],
            window: WindowSpec::Tumbling { size_ms: MIN },
            allowed_lateness_ms: 30_000,
        },
        Settings {
            clock_allowance_ms: allowance_ms,
            ..Settings::default()
        },
    )
    .unwrap()
}

/// One event from a clock 972 years ahead moves the watermark no further than its processing
/// time plus the allowance: the ordinary events after it are counted, none is late, and the
/// far event sits in its own window.
#[test]
fn an_event_from_a_clock_far_ahead_finalizes_nothing_early() {
    let now = ms("2026-12-01T10:00:00Z");
    let mut e = clocked(1_000);
    let far = ms("2999-01-01T00:00:00Z");
    assert_eq!(e.add("a", far, now, &["page.view"], &[]), Added::Folded);
    assert!(e.advance(now).is_empty());
    assert_eq!(e.watermark(now), Some(now + 1_000 - 5_000));
    assert!(e.sources_within_clock());
    for i in 0..100 {
        let t = now + i * 100;
        assert_eq!(e.add("a", t, t, &["page.view"], &[]), Added::Folded);
        e.advance(t);
    }
    assert_eq!(e.counters().late, 0);
    // Ten minutes later (processing time), the ordinary window is final with all 100.
    let later = now + 10 * MIN;
    e.observe("a", later, later);
    let fin = e.advance(later);
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!(count_of(&fin[0]), 100);
    // The far event is held in its own, open window.
    let open = e.rows();
    assert!(
        open.iter()
            .any(|r| r.window.start <= far && far < r.window.end && !r.is_final),
        "{open:?}"
    );
}

/// An event 10 minutes ahead is counted in its own window, and no event sent after it is
/// late: the watermark follows processing time, not the event.
#[test]
fn an_event_minutes_ahead_is_counted_in_its_own_window() {
    let now = ms("2026-12-01T10:00:30Z");
    let mut e = clocked(1_000);
    let ahead = now + 10 * MIN;
    e.add("a", ahead, now, &["page.view"], &[]);
    e.advance(now);
    for i in 1..=50 {
        let t = now + i * 1_000;
        assert_eq!(e.add("a", t - 2_000, t, &["page.view"], &[]), Added::Folded);
        e.advance(t);
    }
    assert_eq!(e.counters().late, 0);
    let end = ahead + 2 * MIN;
    e.observe("a", end, end);
    let fin = e.advance(end);
    let total: u64 = fin.iter().map(count_of).sum();
    assert_eq!(total, 51, "{fin:?}");
    assert!(
        fin.iter()
            .any(|r| r.window.start <= ahead && ahead < r.window.end)
    );
}

/// A snapshot written without the cap (a source far ahead) is restored within it.
#[test]
fn a_restored_source_ahead_of_its_clock_is_brought_within_it() {
    let now = ms("2026-12-01T10:00:00Z");
    let mut unbounded = clocked(i64::MAX);
    unbounded.add("a", ms("2999-01-01T00:00:00Z"), now, &["x"], &[]);
    let schema = unbounded.schema().clone();
    let restored = Engine::restore(
        schema,
        Settings {
            clock_allowance_ms: 1_000,
            ..Settings::default()
        },
        &unbounded.snapshot(),
    )
    .unwrap();
    assert!(restored.sources_within_clock());
    assert_eq!(restored.watermark(now), Some(now + 1_000 - 5_000));
}
