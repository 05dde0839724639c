//! Event time against the clock: how far an event's `timestamp` may be from the moment the agent
//! received it.
//!
//! A device with a wrong clock sends timestamps years ahead or behind. Windows are in event time,
//! so one such event would open a window nobody reads and, worse, push its source's watermark
//! ahead of every real event. Two rules keep that out:
//!
//! - **At the edge** ([`EventTimeBounds::apply`]): `timestamp` may be at most
//!   `event_time_future_max_ms` ahead of `received_at` (default 15 minutes) and, when set, at
//!   most `event_time_past_max_ms` behind it. Past a bound, the bound's [`Policy`] decides:
//!   `reject` the event (a `rejected` entry naming `timestamp`, the value, the distance and the
//!   setting), `clamp` it to `received_at` (the original kept as
//!   `properties._original_timestamp`), or accept it as a `dead_letter`: the agent marks it
//!   ([`DEAD_LETTER_KEY`], the first key of its `properties`) and the broker writes it to the
//!   `dead_letters` topic instead of processing it.
//! - **In the window engine** (runnel-window): an event moves its source's watermark at most to
//!   its receive time plus a small allowance, whatever its timestamp says.
//!
//! Everything here is a pure function of the event and the bounds: no clock is read.

use crate::envelope::{Event, EventError, rfc3339_ms};

/// The `properties` key by which an agent marks an event it accepted as a dead letter. It is the
/// object's first key, so the broker recognises a marked event by a prefix comparison.
pub const DEAD_LETTER_KEY: &str = "_runnel_dead_letter";
/// The `properties` key that keeps a clamped event's original timestamp (RFC 3339).
pub const ORIGINAL_TIMESTAMP_KEY: &str = "_original_timestamp";
const DEAD_LETTER_PREFIX: &str = "{\"_runnel_dead_letter\":";

/// What to do with an event past a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Refuse the event: a `rejected` entry in the answer.
    Reject,
    /// Accept it with `timestamp` set to `received_at`; the original is kept in
    /// `properties._original_timestamp`.
    Clamp,
    /// Accept it, marked for the broker's `dead_letters` topic: it is stored and shipped, and
    /// counted in no aggregate.
    DeadLetter,
}

impl Policy {
    /// The policy's name in settings and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Clamp => "clamp",
            Self::DeadLetter => "dead_letter",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(Self::Reject),
            "clamp" => Ok(Self::Clamp),
            "dead_letter" => Ok(Self::DeadLetter),
            _ => Err(format!(
                "{s:?} is not a policy: expected reject, clamp or dead_letter"
            )),
        }
    }
}

/// One bound: the largest distance and what happens past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The largest distance between `timestamp` and `received_at`, in milliseconds.
    pub max_ms: u64,
    /// What happens to an event past it.
    pub policy: Policy,
}

/// Which side of the clock a bound is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `timestamp` ahead of `received_at` (`event_time_future_max_ms`).
    Future,
    /// `timestamp` behind `received_at` (`event_time_past_max_ms`).
    Past,
}

impl Side {
    /// The side's name in metrics (`future`, `past`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Future => "future",
            Self::Past => "past",
        }
    }

    /// The setting that bounds this side.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Future => "event_time_future_max_ms",
            Self::Past => "event_time_past_max_ms",
        }
    }
}

/// The bounds on event time; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// How far ahead of `received_at` a timestamp may be.
    pub future: Option<Bound>,
    /// How far behind `received_at` a timestamp may be.
    pub past: Option<Bound>,
}

impl Default for EventTimeBounds {
    /// 15 minutes ahead, rejected past that; unbounded behind.
    fn default() -> Self {
        Self {
            future: Some(Bound {
                max_ms: 15 * 60_000,
                policy: Policy::Reject,
            }),
            past: None,
        }
    }
}

/// What [`EventTimeBounds::apply`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within both bounds: unchanged.
    Within,
    /// Past a bound, and that bound's policy did this.
    OutOfBounds {
        /// Which bound.
        side: Side,
        /// What was done.
        policy: Policy,
        /// The rule broken, as a `rejected` entry words it (`timestamp: …`).
        error: EventError,
    },
}

impl EventTimeBounds {
    /// Checks `ev.timestamp_ms` against `ev.received_at_ms` and applies the policy of a bound it
    /// passes: the event is left as it is (`reject`: the caller refuses it), clamped, or marked
    /// as a dead letter.
    pub fn apply(&self, ev: &mut Event) -> Verdict {
        let ahead = ev.timestamp_ms.saturating_sub(ev.received_at_ms);
        let (side, bound, distance) = match (self.future, self.past) {
            (Some(b), _) if ahead > 0 && ahead.unsigned_abs() > b.max_ms => {
                (Side::Future, b, ahead.unsigned_abs())
            }
            (_, Some(b)) if ahead < 0 && ahead.unsigned_abs() > b.max_ms => {
                (Side::Past, b, ahead.unsigned_abs())
            }
            _ => return Verdict::Within,
        };
        let error = out_of_bounds_error(ev, side, bound, distance);
        match bound.policy {
            Policy::Reject => {}
            Policy::Clamp => {
                let original = rfc3339_ms(ev.timestamp_ms);
                ev.properties = Some(with_original_timestamp(ev.properties.as_deref(), &original));
                ev.timestamp_ms = ev.received_at_ms;
            }
            Policy::DeadLetter => {
                let marker = serde_json::json!({
                    "kind": "event_time",
                    "bound": side.as_str(),
                    "error": error.to_string(),
                });
                ev.properties = Some(with_dead_letter_marker(ev.properties.as_deref(), &marker));
            }
        }
        Verdict::OutOfBounds {
            side,
            policy: bound.policy,
            error,
        }
    }
}

fn out_of_bounds_error(ev: &Event, side: Side, bound: Bound, distance_ms: u64) -> EventError {
    let direction = match side {
        Side::Future => "ahead of",
        Side::Past => "behind",
    };
    EventError {
        field: "timestamp".into(),
        rule: format!(
            "{} is {} {direction} the agent's clock (received_at {}), more than {} ({} ms = {})",
            rfc3339_ms(ev.timestamp_ms),
            format_distance(distance_ms),
            rfc3339_ms(ev.received_at_ms),
            side.setting(),
            bound.max_ms,
            format_distance(bound.max_ms),
        ),
    }
}

/// A distance for people: the two largest units (`972 years 30 days`, `10 min 0 s`, `1.5 s`).
pub fn format_distance(ms: u64) -> String {
    const S: u64 = 1_000;
    const MIN: u64 = 60 * S;
    const H: u64 = 60 * MIN;
    const D: u64 = 24 * H;
    // The mean Gregorian year (365.2425 days), so a distance in years reads true over centuries.
    const Y: u64 = 365 * D + D / 4 - D / 100 + D / 400;
    match ms {
        _ if ms >= Y => format!("{} {}", count(ms / Y, "year"), count(ms % Y / D, "day")),
        _ if ms >= D => format!("{} {} h", count(ms / D, "day"), ms % D / H),
        _ if ms >= H => format!("{} h {} min", ms / H, ms % H / MIN),
        _ if ms >= MIN => format!("{} min {} s", ms / MIN, ms % MIN / S),
        _ => format!("{}.{:03} s", ms / S, ms % S),
    }
}

fn count(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// `properties` with `_original_timestamp` added as its last key. The object's text is kept
/// as it was (no re-parse: numbers and keys stay exactly as sent); a key of that name already
/// there is shadowed, since JSON readers take the last of duplicate keys.
fn with_original_timestamp(properties: Option<&str>, original: &str) -> String {
    let entry = format!("\"{ORIGINAL_TIMESTAMP_KEY}\":\"{original}\"");
    match properties
        .map(str::trim_end)
        .and_then(|p| p.strip_suffix('}'))
    {
        Some(body) if body.trim_start().trim_start_matches('{').trim().is_empty() => {
            format!("{{{entry}}}")
        }
        Some(body) => format!("{body},{entry}}}"),
        None => format!("{{{entry}}}"),
    }
}

/// `properties` with the dead-letter marker as its first key. The object is valid JSON (the
/// envelope checked it), so the marker is spliced in after its `{`.
fn with_dead_letter_marker(properties: Option<&str>, marker: &serde_json::Value) -> String {
    let rest = properties
        .and_then(|p| p.trim_start().strip_prefix('{'))
        .unwrap_or("}");
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{DEAD_LETTER_PREFIX}{marker}{sep}{rest}")
}

/// Whether an agent marked the event with these `properties` as a dead letter: a prefix test,
/// cheap enough for every event the broker reads.
pub fn is_dead_letter(properties: Option<&str>) -> bool {
    is_dead_letter_bytes(properties.map(str::as_bytes))
}

/// [`is_dead_letter`] on the field's bytes, before any UTF-8 check.
pub fn is_dead_letter_bytes(properties: Option<&[u8]>) -> bool {
    properties.is_some_and(|p| p.starts_with(DEAD_LETTER_PREFIX.as_bytes()))
}

/// For a marked event: the marker (`{"kind","bound","error"}`) and the properties without it
/// (`None` when nothing else was there). Only the marker is parsed; the rest is kept as text.
pub fn split_dead_letter(properties: &str) -> Option<(serde_json::Value, Option<String>)> {
    let after = properties.strip_prefix(DEAD_LETTER_PREFIX)?;
    let mut values = serde_json::Deserializer::from_str(after).into_iter::<serde_json::Value>();
    let marker = values.next()?.ok()?;
    let rest = after[values.byte_offset()..].trim_start();
    let rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    let rest = (rest != "}").then(|| format!("{{{rest}"));
    Some((marker, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000;

    fn event(ts: i64, properties: Option<&str>) -> Event {
        Event {
            event_id: "e".into(),
            event_type: "page.view".into(),
            timestamp_ms: ts,
            received_at_ms: NOW,
            schema_version: 1,
            user_id: None,
            session_id: None,
            device_id: None,
            platform: None,
            app_version: None,
            properties: properties.map(str::to_string),
        }
    }

    fn bounds(future: Policy, past: Option<(u64, Policy)>) -> EventTimeBounds {
        EventTimeBounds {
            future: Some(Bound {
                max_ms: 900_000,
                policy: future,
            }),
            past: past.map(|(max_ms, policy)| Bound { max_ms, policy }),
        }
    }

    #[test]
    fn within_the_bounds_nothing_changes() {
        let b = bounds(Policy::Reject, Some((3_600_000, Policy::Reject)));
        for ts in [NOW, NOW + 900_000, NOW - 3_600_000, NOW + 1] {
            let mut ev = event(ts, None);
            let before = ev.clone();
            assert_eq!(b.apply(&mut ev), Verdict::Within);
            assert_eq!(ev, before);
        }
        // Unbounded behind by default.
        let mut ev = event(0, None);
        assert_eq!(EventTimeBounds::default().apply(&mut ev), Verdict::Within);
    }

    #[test]
    fn reject_names_the_field_the_value_the_distance_and_the_setting() {
        let ts = 32_472_144_000_000; // 2999-01-01T00:00:00Z
        let mut ev = event(ts, None);
        let before = ev.clone();
        let Verdict::OutOfBounds {
            side,
            policy,
            error,
        } = EventTimeBounds::default().apply(&mut ev)
        else {
            panic!("in bounds")
        };
        assert_eq!((side, policy), (Side::Future, Policy::Reject));
        assert_eq!(ev, before, "a rejected event is not changed");
        let text = error.to_string();
        assert!(
            text.starts_with("timestamp: 2999-01-01T00:00:00.000Z is "),
            "{text}"
        );
        assert!(text.contains("years"), "{text}");
        assert!(text.contains("ahead of the agent's clock"), "{text}");
        assert!(
            text.contains("event_time_future_max_ms (900000 ms = 15 min 0 s)"),
            "{text}"
        );
        let mut ev = event(NOW - 7_200_001, None);
        let b = bounds(Policy::Reject, Some((3_600_000, Policy::Reject)));
        let Verdict::OutOfBounds { side, error, .. } = b.apply(&mut ev) else {
            panic!("in bounds")
        };
        assert_eq!(side, Side::Past);
        assert!(error.rule.contains("2 h 0 min behind"), "{error}");
        assert!(error.rule.contains("event_time_past_max_ms"), "{error}");
    }

    #[test]
    fn clamp_moves_the_timestamp_to_received_at_and_keeps_the_original() {
        let b = bounds(Policy::Clamp, Some((60_000, Policy::Clamp)));
        let mut ev = event(
            NOW + 3_600_000,
            Some(r#"{"amount":5e0,"_original_timestamp":"x"}"#),
        );
        assert!(matches!(
            b.apply(&mut ev),
            Verdict::OutOfBounds {
                policy: Policy::Clamp,
                ..
            }
        ));
        assert_eq!(ev.timestamp_ms, NOW);
        let props: serde_json::Value =
            serde_json::from_str(ev.properties.as_deref().unwrap()).unwrap();
        assert_eq!(props["amount"], 5.0);
        assert_eq!(props[ORIGINAL_TIMESTAMP_KEY], rfc3339_ms(NOW + 3_600_000));
        // The client's text is kept as it was sent (no re-parse of its numbers).
        assert!(
            ev.properties
                .as_deref()
                .unwrap()
                .starts_with(r#"{"amount":5e0,"#),
            "{:?}",
            ev.properties
        );
        let mut ev = event(NOW - 120_000, None);
        b.apply(&mut ev);
        assert_eq!(ev.timestamp_ms, NOW);
        assert_eq!(
            ev.properties.as_deref(),
            Some(
                format!(
                    r#"{{"_original_timestamp":"{}"}}"#,
                    rfc3339_ms(NOW - 120_000)
                )
                .as_str()
            )
        );
        // A clamped event is within the bounds.
        assert_eq!(b.apply(&mut ev), Verdict::Within);
    }

    #[test]
    fn dead_letter_marks_the_event_and_the_mark_comes_off_again() {
        let b = bounds(Policy::DeadLetter, None);
        for props in [None, Some("{}"), Some(r#"{ "a": [1, {"b": 2}] }"#)] {
            let mut ev = event(NOW + 3_600_000, props);
            assert!(matches!(
                b.apply(&mut ev),
                Verdict::OutOfBounds {
                    policy: Policy::DeadLetter,
                    ..
                }
            ));
            assert_eq!(ev.timestamp_ms, NOW + 3_600_000, "the time is kept");
            let marked = ev.properties.clone().unwrap();
            assert!(is_dead_letter(Some(&marked)), "{marked}");
            let parsed: serde_json::Value = serde_json::from_str(&marked).unwrap();
            assert!(parsed.is_object(), "{marked}");
            let (marker, rest) = split_dead_letter(&marked).unwrap();
            assert_eq!(marker["kind"], "event_time");
            assert_eq!(marker["bound"], "future");
            assert!(
                marker["error"]
                    .as_str()
                    .unwrap()
                    .contains("event_time_future_max_ms")
            );
            let want = props
                .map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap())
                .filter(|v| !v.as_object().unwrap().is_empty());
            assert_eq!(
                rest.map(|r| serde_json::from_str::<serde_json::Value>(&r).unwrap()),
                want
            );
        }
        // A key of that name elsewhere in the object is not a mark.
        assert!(!is_dead_letter(Some(r#"{"a":1,"_runnel_dead_letter":{}}"#)));
        assert!(!is_dead_letter(None));
    }

    #[test]
    fn distances_read_well() {
        assert_eq!(format_distance(1_500), "1.500 s");
        assert_eq!(format_distance(600_000), "10 min 0 s");
        assert_eq!(format_distance(3 * 86_400_000 + 3_600_000), "3 days 1 h");
        assert_eq!(format_distance(367 * 86_400_000), "1 year 1 day");
    }
}
