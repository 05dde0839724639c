//! `sampler`: filters by event type and keeps a deterministic sample of the rest.
//!
//! Parameters (all optional):
//! - `drop_types`: comma-separated `event_type` prefixes; matching events are dropped with the
//!   reason `event_type <type> is filtered (drop_types)`.
//! - `sample_rate`: fraction (0–1) of the other events to keep, default 1. The choice is a
//!   hash of `event_id` (FNV-1a, 64 bit, with the MurmurHash3 finalizer), so the same event gets the same answer on every
//!   agent, every replay and every restart: a replay of the log counts the same events.
//! - `always_keep`: comma-separated `event_type` prefixes that are never sampled out.

use std::sync::OnceLock;

use runnel_plugin::{Decision, Event, Params};

/// The parsed parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Prefixes dropped.
    pub drop_types: Vec<String>,
    /// Prefixes never sampled out.
    pub always_keep: Vec<String>,
    /// Fraction kept.
    pub sample_rate: f64,
}

fn list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl Rules {
    /// Parses the parameters; an error names the parameter.
    pub fn from_params(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let rate_text = get("sample_rate").unwrap_or_else(|| "1".into());
        let sample_rate: f64 = rate_text
            .trim()
            .parse()
            .map_err(|_| format!("sample_rate: {rate_text:?} is not a number"))?;
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(format!("sample_rate: {sample_rate} is not between 0 and 1"));
        }
        Ok(Self {
            drop_types: list(get("drop_types").as_deref()),
            always_keep: list(get("always_keep").as_deref()),
            sample_rate,
        })
    }

    /// What happens to an event of `event_type` with `event_id`.
    pub fn decide(&self, event_type: &str, event_id: &str) -> Decision {
        if self
            .drop_types
            .iter()
            .any(|p| event_type.starts_with(p.as_str()))
        {
            return Decision::Drop(format!("event_type {event_type} is filtered (drop_types)"));
        }
        if self.sample_rate >= 1.0
            || self
                .always_keep
                .iter()
                .any(|p| event_type.starts_with(p.as_str()))
        {
            return Decision::Keep;
        }
        // The top 53 bits of the hash as a fraction in [0, 1).
        let x = (fnv1a(event_id.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        if x < self.sample_rate {
            Decision::Keep
        } else {
            Decision::Drop(format!("sampled out (sample_rate {})", self.sample_rate))
        }
    }
}

/// FNV-1a, 64 bit, then MurmurHash3's `fmix64` so that every output bit depends on every
/// input bit (FNV alone leaves the high bits of similar ids correlated).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

static RULES: OnceLock<Rules> = OnceLock::new();

fn decide(event: &Event<'_>) -> Decision {
    RULES
        .get()
        .expect("init ran")
        .decide(event.event_type(), event.event_id())
}

fn init(params: &Params) -> Result<(), String> {
    let rules = Rules::from_params(|k| params.get(k).map(String::from))?;
    let _ = RULES.set(rules);
    Ok(())
}

runnel_plugin::enricher!(decide, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pairs: &[(&str, &str)]) -> Result<Rules, String> {
        Rules::from_params(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn filters_by_prefix_and_samples_deterministically() {
        let r = rules(&[
            ("drop_types", "debug., health"),
            ("sample_rate", "0.25"),
            ("always_keep", "payment."),
        ])
        .unwrap();
        assert!(
            matches!(r.decide("debug.trace", "a"), Decision::Drop(m) if m.contains("drop_types"))
        );
        assert_eq!(r.decide("payment.settled", "x"), Decision::Keep);
        let kept = (0..10_000)
            .filter(|i| r.decide("page.view", &format!("id-{i}")) == Decision::Keep)
            .count();
        assert!(
            (2_200..2_800).contains(&kept),
            "kept {kept} of 10000 at 0.25"
        );
        // The same id, the same answer.
        for i in 0..100 {
            let id = format!("id-{i}");
            assert_eq!(r.decide("page.view", &id), r.decide("page.view", &id));
        }
    }

    #[test]
    fn bad_rate_is_named() {
        assert!(
            rules(&[("sample_rate", "2")])
                .unwrap_err()
                .contains("sample_rate")
        );
        assert!(
            rules(&[("sample_rate", "x")])
                .unwrap_err()
                .contains("sample_rate")
        );
    }
}
