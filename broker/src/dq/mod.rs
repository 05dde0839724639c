//! Data-quality alarms (`docs/schemas.md#data-quality-alarms`): per event type, an expected
//! volume band per hour, freshness (an alarm when no event came for N seconds) and completeness
//! (an alarm when more than a share of the last hour's events lack a property), declared in the
//! config (`dq_checks`) or with `runnel dq set` (table `dq_checks` of `state.redb`).
//!
//! The broker computes them over the log: a task reads each new durable event (from the end of
//! the log at start, less `dq_lookback_events`), buckets the checked types' events by minute of
//! the time the broker appended them, and every `dq_interval_ms` evaluates each check into
//! `runnel_dq_alarm{type,check}` (1: firing) and what `GET /v1/dq` answers. A volume below its
//! band is an alarm only once the check has watched a full hour.
//!
//! May call: [`crate::log`], [`crate::state`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};
use runnel_batch::Field;
use runnel_event::fields::EventFields as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log::BrokerLog;
use crate::state::{DQ_CHECKS, from_json, to_json};

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// One event type's checks (each optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// Fewest events expected in the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_per_hour_min: Option<u64>,
    /// Most events expected in the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_per_hour_max: Option<u64>,
    /// An alarm when no event came for this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_secs: Option<u64>,
    /// The property completeness is about (a top-level key of `properties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// Largest share (0–1) of the last hour's events that may lack `property`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_share_max: Option<f64>,
}

impl Checks {
    /// Checks the values; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(lo), Some(hi)) = (self.volume_per_hour_min, self.volume_per_hour_max)
            && lo > hi
        {
            return Err(format!(
                "volume_per_hour_min: {lo} is above volume_per_hour_max {hi}"
            ));
        }
        if self.freshness_secs == Some(0) {
            return Err("freshness_secs: must be > 0".into());
        }
        match (&self.property, self.missing_share_max) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "property: completeness needs both property and missing_share_max".into(),
                );
            }
            (_, Some(s)) if !(0.0..=1.0).contains(&s) => {
                return Err(format!("missing_share_max: {s} is not between 0 and 1"));
            }
            _ => {}
        }
        if self == &Checks::default() {
            return Err("no check given (volume_per_hour_min/max, freshness_secs, property + missing_share_max)".into());
        }
        Ok(())
    }

    /// Parses `KEY=VALUE,...` (the config's form).
    pub fn parse(text: &str) -> Result<Checks, String> {
        let mut c = Checks::default();
        for kv in text.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?} is not KEY=VALUE"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: {v:?} is not a whole number"))
            };
            match k {
                "volume_per_hour_min" => c.volume_per_hour_min = Some(num(v)?),
                "volume_per_hour_max" => c.volume_per_hour_max = Some(num(v)?),
                "freshness_secs" => c.freshness_secs = Some(num(v)?),
                "property" => c.property = Some(v.to_string()),
                "missing_share_max" => {
                    c.missing_share_max = Some(
                        v.parse()
                            .map_err(|_| format!("{k}: {v:?} is not a number"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "{other}: not a check (volume_per_hour_min, volume_per_hour_max, freshness_secs, property, missing_share_max)"
                    ));
                }
            }
        }
        c.check()?;
        Ok(c)
    }
}

/// One check's state.
#[derive(Debug, Clone, Serialize)]
pub struct Alarm {
    /// `volume`, `freshness` or `completeness`.
    pub check: &'static str,
    /// Firing.
    pub alarm: bool,
    /// What was measured.
    pub value: f64,
    /// In words.
    pub detail: String,
}

/// An event type's checks and their states.
#[derive(Debug, Clone, Serialize)]
pub struct TypeState {
    /// The event type.
    pub event_type: String,
    /// Its checks.
    pub checks: Checks,
    /// Each check's state (empty until the first evaluation).
    pub alarms: Vec<Alarm>,
}

#[derive(Default)]
struct Seen {
    /// Per minute (of append time): events, and events lacking the property.
    minutes: VecDeque<(i64, u64, u64)>,
    last_ms: Option<i64>,
}

struct Inner {
    seen: HashMap<String, Seen>,
    states: BTreeMap<String, TypeState>,
    /// When each type's checks were set or the broker started watching (ms).
    since: HashMap<String, i64>,
}

/// The data-quality checker; cheap to clone.
#[derive(Clone)]
pub struct Dq {
    db: Arc<Database>,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Dq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dq").finish_non_exhaustive()
    }
}

fn storage(e: impl Into<redb::Error>) -> anyhow::Error {
    anyhow::Error::new(e.into())
}

impl Dq {
    /// Opens the checks in `db`; `declared` (from the config) replace stored ones of their type.
    pub fn open(db: Arc<Database>, declared: &[(String, Checks)]) -> anyhow::Result<Self> {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(DQ_CHECKS).map_err(storage)?;
            for (ty, c) in declared {
                t.insert(ty.as_str(), to_json(c).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        let dq = Dq {
            db,
            inner: Arc::new(Mutex::new(Inner {
                seen: HashMap::new(),
                states: BTreeMap::new(),
                since: HashMap::new(),
            })),
        };
        dq.reload()?;
        Ok(dq)
    }

    fn reload(&self) -> anyhow::Result<()> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(DQ_CHECKS).map_err(storage)?;
        let mut states = BTreeMap::new();
        for entry in t.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let checks: Checks = from_json("dq check", v.value())?;
            states.insert(
                k.value().to_string(),
                TypeState {
                    event_type: k.value().to_string(),
                    checks,
                    alarms: Vec::new(),
                },
            );
        }
        let now = runnel_event::now_ms();
        let mut inner = self.inner.lock().expect("lock poisoned");
        for ty in states.keys() {
            inner.since.entry(ty.clone()).or_insert(now);
        }
        // Keep the alarms of checks that did not change.
        for (ty, st) in states.iter_mut() {
            if let Some(old) = inner.states.get(ty)
                && old.checks == st.checks
            {
                st.alarms = old.alarms.clone();
            }
        }
        inner.states = states;
        Ok(())
    }

    /// Sets `event_type`'s checks (blocking).
    pub fn set(&self, event_type: &str, checks: Checks) -> Result<(), String> {
        runnel_event::check_event_type(event_type).map_err(|e| format!("event_type: {e}"))?;
        checks.check()?;
        let write = || -> anyhow::Result<()> {
            let txn = self.db.begin_write().map_err(storage)?;
            {
                let mut t = txn.open_table(DQ_CHECKS).map_err(storage)?;
                t.insert(event_type, to_json(&checks).as_slice())
                    .map_err(storage)?;
            }
            txn.commit().map_err(storage)?;
            Ok(())
        };
        write().map_err(|e| format!("state.redb: {e}"))?;
        self.inner
            .lock()
            .expect("lock poisoned")
            .since
            .insert(event_type.to_string(), runnel_event::now_ms());
        self.reload().map_err(|e| format!("state.redb: {e}"))
    }

    /// Removes `event_type`'s checks (blocking); `false` when it had none.
    pub fn remove(&self, event_type: &str) -> Result<bool, String> {
        let remove = || -> anyhow::Result<bool> {
            let txn = self.db.begin_write().map_err(storage)?;
            let had = {
                let mut t = txn.open_table(DQ_CHECKS).map_err(storage)?;
                t.remove(event_type).map_err(storage)?.is_some()
            };
            txn.commit().map_err(storage)?;
            Ok(had)
        };
        let had = remove().map_err(|e| format!("state.redb: {e}"))?;
        if had {
            for check in ["volume", "freshness", "completeness"] {
                metrics::gauge!("runnel_dq_alarm", "type" => event_type.to_string(), "check" => check).set(0.0);
            }
        }
        self.reload().map_err(|e| format!("state.redb: {e}"))?;
        Ok(had)
    }

    /// Every checked type's state.
    pub fn states(&self) -> Vec<TypeState> {
        self.inner
            .lock()
            .expect("lock poisoned")
            .states
            .values()
            .cloned()
            .collect()
    }

    /// Counts the events of a walk of the log.
    fn observe(&self, events: &[(String, i64, bool)]) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        for (ty, at, missing) in events {
            let seen = inner.seen.entry(ty.clone()).or_default();
            let minute = at - at.rem_euclid(MINUTE_MS);
            match seen.minutes.back_mut() {
                Some((m, n, miss)) if *m == minute => {
                    *n += 1;
                    *miss += u64::from(*missing);
                }
                _ => seen.minutes.push_back((minute, 1, u64::from(*missing))),
            }
            seen.last_ms = Some(seen.last_ms.map_or(*at, |l| l.max(*at)));
        }
    }

    /// Evaluates every check at `now`.
    fn evaluate(&self, now: i64) {
        let mut inner = self.inner.lock().expect("lock poisoned");
        let Inner {
            seen,
            states,
            since,
        } = &mut *inner;
        for (ty, st) in states.iter_mut() {
            let s = seen.entry(ty.clone()).or_default();
            while s
                .minutes
                .front()
                .is_some_and(|(m, _, _)| *m + MINUTE_MS <= now - HOUR_MS)
            {
                s.minutes.pop_front();
            }
            let total: u64 = s.minutes.iter().map(|(_, n, _)| n).sum();
            let missing: u64 = s.minutes.iter().map(|(_, _, m)| m).sum();
            let watched = now - since.get(ty).copied().unwrap_or(now);
            let c = &st.checks;
            let mut alarms = Vec::new();
            if c.volume_per_hour_min.is_some() || c.volume_per_hour_max.is_some() {
                let low = c.volume_per_hour_min.is_some_and(|lo| total < lo) && watched >= HOUR_MS;
                let high = c.volume_per_hour_max.is_some_and(|hi| total > hi);
                alarms.push(Alarm {
                    check: "volume",
                    alarm: low || high,
                    value: total as f64,
                    detail: format!(
                        "{total} events in the last hour (expected {}–{})",
                        c.volume_per_hour_min.map_or("0".into(), |v| v.to_string()),
                        c.volume_per_hour_max.map_or("∞".into(), |v| v.to_string())
                    ),
                });
            }
            if let Some(secs) = c.freshness_secs {
                let last = s.last_ms.unwrap_or(now - watched);
                let age = (now - last).max(0);
                alarms.push(Alarm {
                    check: "freshness",
                    alarm: age > (secs as i64) * 1000,
                    value: age as f64 / 1000.0,
                    detail: format!(
                        "last event {:.1} s ago (at most {secs} s)",
                        age as f64 / 1000.0
                    ),
                });
            }
            if let (Some(p), Some(max)) = (&c.property, c.missing_share_max) {
                let share = if total == 0 {
                    0.0
                } else {
                    missing as f64 / total as f64
                };
                alarms.push(Alarm {
                    check: "completeness",
                    alarm: total > 0 && share > max,
                    value: share,
                    detail: format!(
                        "{missing} of {total} events in the last hour lack {p:?} (at most {max})"
                    ),
                });
            }
            for a in &alarms {
                metrics::gauge!("runnel_dq_alarm", "type" => ty.clone(), "check" => a.check)
                    .set(if a.alarm { 1.0 } else { 0.0 });
            }
            st.alarms = alarms;
        }
    }

    /// The properties each checked type's completeness is about.
    fn properties(&self) -> HashMap<String, Option<String>> {
        let inner = self.inner.lock().expect("lock poisoned");
        inner
            .states
            .iter()
            .map(|(t, s)| (t.clone(), s.checks.property.clone()))
            .collect()
    }
}

/// Follows the log until `shutdown`: reads new events, evaluates every `interval`.
pub async fn run(
    dq: Dq,
    log: BrokerLog,
    interval: Duration,
    lookback_events: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = log
        .durable_end()
        .saturating_sub(lookback_events)
        .max(log.start_offset());
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (dq2, log2) = (dq.clone(), log.clone());
        let walked = tokio::task::spawn_blocking(move || {
            let props = dq2.properties();
            let mut events = Vec::new();
            let end = log2.walk_events(next, 1 << 20, |w| {
                let Some(ty) = w.event.text(Field::EventType) else {
                    return;
                };
                let Some(property) = props.get(ty) else {
                    return;
                };
                let missing = property.as_ref().is_some_and(|p| {
                    w.event
                        .text(Field::Properties)
                        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                        .is_none_or(|v| v.get(p).is_none_or(serde_json::Value::is_null))
                });
                events.push((ty.to_string(), w.appended_ms, missing));
            });
            dq2.observe(&events);
            dq2.evaluate(runnel_event::now_ms());
            end
        })
        .await;
        match walked {
            Ok(Ok(end)) => next = end,
            Ok(Err(e)) => tracing::warn!(error = %e, "data-quality checks: reading the log failed"),
            Err(e) => tracing::warn!(error = %e, "data-quality checks: task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_and_name_what_is_wrong() {
        let c = Checks::parse(
            "freshness_secs=60,volume_per_hour_min=10,property=amount,missing_share_max=0.1",
        )
        .unwrap();
        assert_eq!(c.freshness_secs, Some(60));
        assert_eq!(c.property.as_deref(), Some("amount"));
        assert!(
            Checks::parse("freshness=60")
                .unwrap_err()
                .starts_with("freshness:")
        );
        assert!(
            Checks::parse("property=amount")
                .unwrap_err()
                .contains("missing_share_max")
        );
        assert!(Checks::parse("volume_per_hour_min=5,volume_per_hour_max=1").is_err());
        assert!(Checks::parse("").is_err());
    }

    #[test]
    fn alarms_fire_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("state.redb")).unwrap());
        let dq = Dq::open(db, &[]).unwrap();
        dq.set(
            "a.b",
            Checks::parse(
                "freshness_secs=10,volume_per_hour_max=3,property=x,missing_share_max=0.5",
            )
            .unwrap(),
        )
        .unwrap();
        let now = runnel_event::now_ms();
        dq.observe(&[("a.b".into(), now, false), ("a.b".into(), now, true)]);
        dq.evaluate(now + 1000);
        let by = |dq: &Dq, check: &str| {
            dq.states()[0]
                .alarms
                .iter()
                .find(|a| a.check == check)
                .unwrap()
                .alarm
        };
        assert!(!by(&dq, "freshness") && !by(&dq, "volume") && !by(&dq, "completeness"));
        dq.evaluate(now + 11_000);
        assert!(by(&dq, "freshness"), "no event for 11 s");
        dq.observe(&[
            ("a.b".into(), now + 12_000, true),
            ("a.b".into(), now + 12_000, true),
        ]);
        dq.evaluate(now + 12_500);
        assert!(!by(&dq, "freshness"));
        assert!(by(&dq, "volume"), "4 events is over 3 an hour");
        assert!(by(&dq, "completeness"), "3 of 4 lack x");
    }
}
