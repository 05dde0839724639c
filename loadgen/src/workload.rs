//! What the load generator sends: request bodies of `batch` events, built from templates.
//!
//! Building JSON per request would cost the generator as much CPU as the agent spends parsing
//! it, on the same machine. So a few templates (request bodies) are generated once, from the
//! scenario generator of `runnel-gen` (or a uniform one), padded to the event size; a request is
//! a copy of a template with two fixed-width fields patched in place:
//! - `event_id`: `b` + 8 hex digits of the run + 16 hex digits of the event's sequence number,
//!   so every event of a run is distinct, except
//! - the `--dup-ratio` share, whose ids are those of the same slot one request earlier (already
//!   sent), so the agent's dedup finds them;
//! - `timestamp`: 13 digits of milliseconds, now minus the event's delay in the scenario (its
//!   out-of-order or late share), so event time follows the wall clock as in production.
//!
//! The `--invalid-ratio` share has an `event_type` the agent refuses (`Bench-Invalid`); the
//! request is still answered 202 for its valid events.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Templates generated per run; requests use them in turn.
const TEMPLATES: usize = 8;
/// The event type of `--invalid-ratio` events: uppercase, so the agent refuses it.
pub const INVALID_EVENT_TYPE: &str = "Bench-Invalid";
const ID_PLACEHOLDER: &str = "b000000000000000000000000";
const TS_PLACEHOLDER: i64 = 1_000_000_000_000;

/// Which events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One event type, users drawn uniformly, no delays.
    Uniform,
    /// Mobile money (`runnel-gen`): skewed users and field agents, 13% delayed events.
    Fintech,
    /// An online shop (`runnel-gen`): skewed users and products, 13% delayed events.
    Ecommerce,
}

/// How to build requests.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Scenario.
    pub scenario: Scenario,
    /// Events per request.
    pub batch: usize,
    /// Bytes of JSON per event (at least what the scenario's events take; padded up to it).
    pub event_bytes: usize,
    /// Share of events that repeat an earlier event's id.
    pub dup_ratio: f64,
    /// Share of events the agent refuses.
    pub invalid_ratio: f64,
    /// Distinguishes the ids of this run from other runs against the same agent.
    pub run_id: u32,
}

struct Slot {
    /// Byte offset of the id (`b` and 24 hex digits).
    id_at: usize,
    /// Byte offset of the timestamp's 13 digits.
    ts_at: usize,
    /// Event time is now minus this.
    delay_ms: i64,
    /// Repeats the id this slot had one request earlier.
    dup: bool,
}

struct Template {
    body: Vec<u8>,
    slots: Vec<Slot>,
    /// Byte range of each event in `body`.
    spans: Vec<std::ops::Range<usize>>,
}

/// Request bodies for a run.
pub struct Workload {
    spec: Spec,
    templates: Vec<Template>,
    /// Events of the `--invalid-ratio` share in each template.
    invalid_per_template: Vec<u64>,
    dup_per_template: Vec<u64>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("spec", &self.spec)
            .finish()
    }
}

impl Workload {
    /// Generates the templates.
    pub fn new(spec: Spec) -> Self {
        let mut templates = Vec::with_capacity(TEMPLATES);
        let (mut invalid, mut dups) = (Vec::new(), Vec::new());
        // The same slots are invalid in every template, so a duplicate (which repeats its slot's
        // id of the request before) always repeats an id the agent accepted.
        let mut rng = StdRng::seed_from_u64(0x1_4A11D);
        let invalid_slots: Vec<bool> = (0..spec.batch)
            .map(|_| rng.random::<f64>() < spec.invalid_ratio)
            .collect();
        for t in 0..TEMPLATES {
            let events = scenario_events(spec.scenario, spec.batch, t as u64);
            let mut rng = StdRng::seed_from_u64(0x5EED + t as u64);
            let mut body = Vec::with_capacity(spec.batch * (spec.event_bytes + 1) + 2);
            let mut slots = Vec::with_capacity(spec.batch);
            let mut spans = Vec::with_capacity(spec.batch);
            let (mut n_invalid, mut n_dup) = (0, 0);
            body.push(b'[');
            for (i, (mut value, delay_ms)) in events.into_iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                let mut dup = rng.random::<f64>() < spec.dup_ratio;
                if invalid_slots[i] {
                    value["event_type"] = INVALID_EVENT_TYPE.into();
                    n_invalid += 1;
                    dup = false;
                } else if dup {
                    n_dup += 1;
                }
                value["event_id"] = ID_PLACEHOLDER.into();
                value["timestamp"] = TS_PLACEHOLDER.into();
                let text = padded(value, spec.event_bytes);
                let id_at = body.len()
                    + text
                        .find(ID_PLACEHOLDER)
                        .expect("the id placeholder is in the event");
                let ts_at = body.len()
                    + text
                        .find(&format!("\"timestamp\":{TS_PLACEHOLDER}"))
                        .expect("the timestamp placeholder is in the event")
                    + "\"timestamp\":".len();
                spans.push(body.len()..body.len() + text.len());
                body.extend_from_slice(text.as_bytes());
                slots.push(Slot {
                    id_at,
                    ts_at,
                    delay_ms,
                    dup,
                });
            }
            body.push(b']');
            invalid.push(n_invalid);
            dups.push(n_dup);
            templates.push(Template { body, slots, spans });
        }
        Self {
            spec,
            templates,
            invalid_per_template: invalid,
            dup_per_template: dups,
        }
    }

    /// The settings.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Events the agent should refuse in request `request`.
    pub fn invalid_in(&self, request: u64) -> u64 {
        self.invalid_per_template[request as usize % TEMPLATES]
    }

    /// Events of request `request` that repeat ids sent before (none in the first request).
    pub fn duplicates_in(&self, request: u64) -> u64 {
        if request == 0 {
            0
        } else {
            self.dup_per_template[request as usize % TEMPLATES]
        }
    }

    /// The body of request `request`, with event times relative to `now_ms`.
    pub fn body(&self, request: u64, now_ms: i64) -> Vec<u8> {
        let t = &self.templates[request as usize % TEMPLATES];
        let mut body = t.body.clone();
        let batch = self.spec.batch as u64;
        for (i, slot) in t.slots.iter().enumerate() {
            let seq = self.sent_as(request, i) * batch + i as u64;
            write_hex(
                &mut body[slot.id_at + 1..slot.id_at + 9],
                u64::from(self.spec.run_id),
            );
            write_hex(&mut body[slot.id_at + 9..slot.id_at + 25], seq);
            write_digits(
                &mut body[slot.ts_at..slot.ts_at + 13],
                now_ms - slot.delay_ms,
            );
        }
        body
    }

    /// The events of a body of request `request` (made by [`Workload::body`]), one JSON
    /// object each: for systems that take one message per event.
    pub fn events<'a>(&self, request: u64, body: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.templates[request as usize % TEMPLATES]
            .spans
            .iter()
            .map(move |r| &body[r.clone()])
    }

    /// The request whose id slot `i` of `request` carries: its own, or for a duplicate, the
    /// one that slot carried in the request before.
    fn sent_as(&self, mut request: u64, i: usize) -> u64 {
        while request > 0 && self.templates[request as usize % TEMPLATES].slots[i].dup {
            request -= 1;
        }
        request
    }
}

/// A probe event: its own type, so the broker's per-type counts and the `events_per_type`
/// aggregate show when it arrived.
pub fn probe_body(run_id: u32, k: u64, now_ms: i64) -> Vec<u8> {
    format!(
        r#"[{{"event_id":"probe-{run_id:08x}-{k:016x}","event_type":"{PROBE_EVENT_TYPE}","timestamp":{now_ms},"user_id":"bench-probe"}}]"#
    )
    .into_bytes()
}

/// The event type of probe events.
pub const PROBE_EVENT_TYPE: &str = "bench.probe";

fn write_hex(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

fn write_digits(out: &mut [u8], v: i64) {
    let mut v = v.clamp(TS_PLACEHOLDER, 9_999_999_999_999) as u64;
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The event serialized, with `properties.pad` added to reach `bytes` when shorter.
fn padded(mut value: serde_json::Value, bytes: usize) -> String {
    let text = value.to_string();
    // `,"pad":""` (or `{"pad":""}` without properties) adds 9 bytes before the padding itself.
    if text.len() + 9 >= bytes {
        return text;
    }
    let pad = "x".repeat(bytes - text.len() - 9);
    match value.get_mut("properties") {
        Some(serde_json::Value::Object(p)) => {
            p.insert("pad".into(), pad.into());
        }
        _ => {
            value["properties"] = serde_json::json!({ "pad": pad });
        }
    }
    value.to_string()
}

/// `n` events of the scenario with each one's delay (arrival minus event time).
fn scenario_events(scenario: Scenario, n: usize, seed: u64) -> Vec<(serde_json::Value, i64)> {
    let scenario = match scenario {
        Scenario::Uniform => return uniform_events(n, seed),
        Scenario::Fintech => runnel_gen::Scenario::Fintech,
        Scenario::Ecommerce => runnel_gen::Scenario::Ecommerce,
    };
    runnel_gen::generate(&runnel_gen::Config {
        seed: seed + 1,
        scenario,
        events: n,
        rate_per_sec: 100_000,
        ..runnel_gen::Config::default()
    })
    .into_iter()
    .map(|g| {
        let v = serde_json::from_str(&g.json).expect("the generator writes JSON");
        (v, g.arrival_ms - g.event_time_ms)
    })
    .collect()
}

fn uniform_events(n: usize, seed: u64) -> Vec<(serde_json::Value, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let user = rng.random_range(0..100_000u32);
            let v = serde_json::json!({
                "event_id": "",
                "event_type": "bench.event",
                "timestamp": 0,
                "user_id": format!("user-{user:06}"),
                "platform": "ios",
                "app_version": "4.2.0",
                "properties": { "amount": rng.random_range(1..10_000) as f64 / 100.0, "currency": "EUR" },
            });
            (v, 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_event::{BodyFormat, EnvelopeLimits, parse_body};

    fn spec(scenario: Scenario, dup: f64, invalid: f64) -> Spec {
        Spec {
            scenario,
            batch: 200,
            event_bytes: 300,
            dup_ratio: dup,
            invalid_ratio: invalid,
            run_id: 7,
        }
    }

    #[test]
    fn bodies_are_valid_padded_and_distinct() {
        for scenario in [Scenario::Uniform, Scenario::Fintech, Scenario::Ecommerce] {
            let w = Workload::new(spec(scenario, 0.0, 0.0));
            let now = 1_763_726_400_000;
            let a = w.body(0, now);
            let b = w.body(1, now);
            let limits = EnvelopeLimits::default();
            let pa = parse_body(&a, BodyFormat::Json, &limits, now);
            assert!(pa.rejected.is_empty(), "{scenario:?}: {:?}", pa.rejected);
            assert_eq!(pa.events.len(), 200);
            let ids: std::collections::HashSet<String> = pa
                .events
                .iter()
                .chain(parse_body(&b, BodyFormat::Json, &limits, now).events.iter())
                .map(|(_, e)| e.event_id.clone())
                .collect();
            assert_eq!(ids.len(), 400, "{scenario:?}: every id distinct");
            for e in w.events(0, &a) {
                serde_json::from_slice::<serde_json::Value>(e).expect("each span is one event");
            }
            assert_eq!(w.events(0, &a).count(), 200);
            let per_event = a.len() / 200;
            assert!(
                (299..=340).contains(&per_event),
                "{scenario:?}: {per_event} bytes an event"
            );
            // Event time follows `now`, less the scenario's delays.
            assert!(pa.events.iter().all(|(_, e)| e.timestamp_ms <= now));
            assert!(pa.events.iter().any(|(_, e)| e.timestamp_ms == now));
        }
    }

    #[test]
    fn dup_and_invalid_shares_are_what_the_agent_sees() {
        let w = Workload::new(spec(Scenario::Fintech, 0.2, 0.1));
        let limits = EnvelopeLimits::default();
        let now = 1_763_726_400_000;
        let first = parse_body(&w.body(4, now), BodyFormat::Json, &limits, now);
        let second = parse_body(&w.body(5, now), BodyFormat::Json, &limits, now);
        assert_eq!(second.rejected.len() as u64, w.invalid_in(5));
        assert!(
            (10..=35).contains(&second.rejected.len()),
            "{}",
            second.rejected.len()
        );
        assert!(second.rejected[0].1.to_string().contains("event_type"));
        let earlier: std::collections::HashSet<&str> = first
            .events
            .iter()
            .map(|(_, e)| e.event_id.as_str())
            .collect();
        let repeated = second
            .events
            .iter()
            .filter(|(_, e)| earlier.contains(e.event_id.as_str()))
            .count() as u64;
        assert_eq!(repeated, w.duplicates_in(5));
        assert!((20..=65).contains(&repeated), "{repeated}");
        assert_eq!(w.duplicates_in(0), 0);
    }
}
