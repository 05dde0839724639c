//! Per-tenant quotas, each named, configurable and in `/metrics`:
//!
//! - `ingest_events_per_sec` (`tenant_ingest_events_per_sec`): events per second one tenant's
//!   agents may append together, held by a token bucket of one second's worth at the QUIC
//!   endpoint. A batch that finds the bucket empty is answered `Throttled` with how long to
//!   wait, and nothing of it is appended; the agent keeps it in its spool, sends it again then,
//!   and answers its apps `429` with `Retry-After` meanwhile. A batch larger than the bucket is
//!   let through when the bucket holds anything and leaves it in debt, so no batch waits
//!   forever and the rate still averages the quota.
//! - `log_bytes_per_sec` (`tenant_log_bytes_per_sec`): bytes per second of batches one
//!   tenant's agents may append to the log together (a batch's frame as received, which is
//!   what the log stores), a second bucket beside the first and answered the same way: a
//!   batch is appended only when both buckets hold something, and takes from both.
//! - `query_concurrency_max` (`tenant_query_concurrency_max`): Flight calls one tenant's tokens
//!   may have running at once; more wait in line (as one token's do past
//!   `flight_token_concurrency_max`).
//!
//! `tenant_quotas` overrides any of them for one tenant: `TENANT:QUOTA=N`. 0 is no quota.
//! `/metrics`: `runnel_tenant_quota{tenant, quota}` (each tenant's limit once it has been
//! used), `runnel_tenant_ingest_events_total{tenant}`, `runnel_tenant_log_bytes_total{tenant}`,
//! `runnel_tenant_throttled_total{tenant, quota}`, `runnel_tenant_queries_waiting{tenant}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One tenant's quotas (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Events per second its agents may append together.
    pub ingest_events_per_sec: u64,
    /// Bytes per second of batches its agents may append together.
    pub log_bytes_per_sec: u64,
    /// Flight calls its tokens may have running at once.
    pub query_concurrency_max: usize,
}

/// The quota names, as settings, `tenant_quotas` and `/metrics` spell them.
pub const INGEST: &str = "ingest_events_per_sec";
/// See [`INGEST`].
pub const LOG_BYTES: &str = "log_bytes_per_sec";
/// See [`INGEST`].
pub const QUERIES: &str = "query_concurrency_max";

/// A token bucket of one second's worth of `rate`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Self {
        Self {
            tokens: rate as f64,
            at: now,
        }
    }

    /// Refills it to `now`; `Err`: how many seconds until a take of `amount` is let through
    /// (back above zero, and a little: an amount of its own size).
    fn refill(&mut self, rate: u64, amount: u64, now: Instant) -> Result<(), f64> {
        if rate == 0 {
            return Ok(());
        }
        let rate = rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens > 0.0 {
            Ok(())
        } else {
            Err((-self.tokens + (amount as f64).min(rate)) / rate)
        }
    }
}

/// One tenant's ingest buckets: events and log bytes.
struct Ingest {
    events: Bucket,
    bytes: Bucket,
}

/// A batch refused by a tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Milliseconds to wait before sending it again.
    pub wait_ms: u64,
    /// The quota it is over ([`INGEST`] or [`LOG_BYTES`]).
    pub quota: &'static str,
    /// That quota's limit.
    pub limit: u64,
}

impl Throttled {
    /// What the agent is told, naming the tenant, the quota and its setting.
    pub fn message(&self, tenant: &str) -> String {
        let unit = if self.quota == INGEST {
            "events"
        } else {
            "bytes"
        };
        format!(
            "tenant {tenant:?} is over its quota of {} {unit}/s (tenant_{}); send again in {} ms",
            self.limit, self.quota, self.wait_ms
        )
    }
}

/// Every tenant's quotas and their state.
pub struct Quotas {
    default: Limits,
    overrides: HashMap<String, Limits>,
    buckets: Mutex<HashMap<String, Ingest>>,
    queries: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("default", &self.default)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// `default` for every tenant, with `overrides` (`TENANT:QUOTA=N`, the `tenant_quotas`
    /// setting); the error names the entry and what is wrong with it.
    pub fn new(default: Limits, overrides: &[String]) -> Result<Self, String> {
        let mut map: HashMap<String, Limits> = HashMap::new();
        for entry in overrides {
            let bad = |why: &str| {
                format!(
                    "tenant_quotas: {entry:?} {why} (expected TENANT:QUOTA=N, QUOTA one of {INGEST}, {LOG_BYTES}, {QUERIES})"
                )
            };
            let (tenant, rest) = entry.split_once(':').ok_or_else(|| bad("has no ':'"))?;
            runnel_protocol::check_tenant(tenant)
                .map_err(|e| bad(&format!("names no tenant: {e}")))?;
            let (quota, n) = rest.split_once('=').ok_or_else(|| bad("has no '='"))?;
            let n: u64 = n
                .parse()
                .map_err(|_| bad("has no whole number after '='"))?;
            let limits = map.entry(tenant.to_string()).or_insert(default);
            match quota {
                INGEST => limits.ingest_events_per_sec = n,
                LOG_BYTES => limits.log_bytes_per_sec = n,
                QUERIES => limits.query_concurrency_max = n as usize,
                _ => return Err(bad("names an unknown quota")),
            }
        }
        Ok(Self {
            default,
            overrides: map,
            buckets: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
        })
    }

    /// No quotas.
    pub fn none() -> Self {
        Self::new(Limits::default(), &[]).expect("no overrides")
    }

    /// `tenant`'s quotas.
    pub fn limits(&self, tenant: &str) -> Limits {
        self.overrides.get(tenant).copied().unwrap_or(self.default)
    }

    /// Takes a batch of `events` and `bytes` from `tenant`'s ingest buckets, or says how long
    /// to wait and which quota it is over (and counts the refusal). Nothing is taken from
    /// either bucket when one of them refuses.
    pub fn take_ingest(&self, tenant: &str, events: u64, bytes: u64) -> Result<(), Throttled> {
        let limits = self.limits(tenant);
        let (events_rate, bytes_rate) = (limits.ingest_events_per_sec, limits.log_bytes_per_sec);
        if events_rate != 0 || bytes_rate != 0 {
            let now = Instant::now();
            let mut buckets = self.buckets.lock().expect("lock poisoned");
            let b = buckets.entry(tenant.to_string()).or_insert_with(|| {
                for (quota, rate) in [(INGEST, events_rate), (LOG_BYTES, bytes_rate)] {
                    if rate != 0 {
                        metrics::gauge!("runnel_tenant_quota", "tenant" => tenant.to_string(), "quota" => quota)
                            .set(rate as f64);
                    }
                }
                Ingest {
                    events: Bucket::full(events_rate, now),
                    bytes: Bucket::full(bytes_rate, now),
                }
            });
            let over = [
                (
                    INGEST,
                    events_rate,
                    b.events.refill(events_rate, events, now),
                ),
                (
                    LOG_BYTES,
                    bytes_rate,
                    b.bytes.refill(bytes_rate, bytes, now),
                ),
            ]
            .into_iter()
            .filter_map(|(quota, limit, r)| r.err().map(|wait| (quota, limit, wait)))
            .max_by(|a, b| a.2.total_cmp(&b.2));
            if let Some((quota, limit, wait)) = over {
                drop(buckets);
                metrics::counter!("runnel_tenant_throttled_total", "tenant" => tenant.to_string(), "quota" => quota)
                    .increment(1);
                return Err(Throttled {
                    wait_ms: ((wait * 1e3).ceil() as u64).max(1),
                    quota,
                    limit,
                });
            }
            // Both hold something: the batch goes through, leaving either in debt if it is
            // larger than what was there.
            b.events.tokens -= events as f64;
            b.bytes.tokens -= bytes as f64;
        }
        metrics::counter!("runnel_tenant_ingest_events_total", "tenant" => tenant.to_string())
            .increment(events);
        metrics::counter!("runnel_tenant_log_bytes_total", "tenant" => tenant.to_string())
            .increment(bytes);
        Ok(())
    }

    /// Waits for a turn among `tenant`'s running Flight calls (`None`: no quota).
    pub async fn enter_query(&self, tenant: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let max = self.limits(tenant).query_concurrency_max;
        if max == 0 {
            return None;
        }
        let slots = self
            .queries
            .lock()
            .expect("lock poisoned")
            .entry(tenant.to_string())
            .or_insert_with(|| {
                metrics::gauge!("runnel_tenant_quota", "tenant" => tenant.to_string(), "quota" => QUERIES)
                    .set(max as f64);
                Arc::new(tokio::sync::Semaphore::new(max))
            })
            .clone();
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Some(p);
        }
        metrics::counter!("runnel_tenant_throttled_total", "tenant" => tenant.to_string(), "quota" => QUERIES)
            .increment(1);
        let waiting =
            metrics::gauge!("runnel_tenant_queries_waiting", "tenant" => tenant.to_string());
        waiting.increment(1.0);
        let p = slots.acquire_owned().await.expect("never closed");
        waiting.decrement(1.0);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_parsed_and_bad_entries_named() {
        let q = Quotas::new(
            Limits {
                ingest_events_per_sec: 1000,
                ..Limits::default()
            },
            &[
                "shop:ingest_events_per_sec=50".into(),
                "shop:log_bytes_per_sec=4096".into(),
                "shop:query_concurrency_max=2".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            q.limits("shop"),
            Limits {
                ingest_events_per_sec: 50,
                log_bytes_per_sec: 4096,
                query_concurrency_max: 2
            }
        );
        assert_eq!(q.limits("ads").ingest_events_per_sec, 1000);
        for (bad, says) in [
            ("shop", "no ':'"),
            ("shop:ingest_events_per_sec", "no '='"),
            ("shop:ingest_events_per_sec=x", "whole number"),
            ("shop:bytes=1", "unknown quota"),
            (":ingest_events_per_sec=1", "names no tenant"),
        ] {
            let e = Quotas::new(Limits::default(), &[bad.into()]).unwrap_err();
            assert!(
                e.contains("tenant_quotas") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_bucket_admits_its_rate_then_says_how_long_to_wait() {
        let q = Quotas::new(
            Limits::default(),
            &["shop:ingest_events_per_sec=1000".into()],
        )
        .unwrap();
        // A second's worth at once, the next refused with a wait of about a batch.
        assert!(q.take_ingest("shop", 600, 1).is_ok());
        assert!(q.take_ingest("shop", 600, 1).is_ok(), "in debt, once");
        let t = q.take_ingest("shop", 100, 1).unwrap_err();
        assert!((100..=400).contains(&t.wait_ms), "{t:?}");
        assert_eq!((t.quota, t.limit), (INGEST, 1000));
        assert!(
            t.message("shop")
                .contains("1000 events/s (tenant_ingest_events_per_sec)"),
            "{}",
            t.message("shop")
        );
        // Other tenants are not held.
        for _ in 0..100 {
            assert!(q.take_ingest("ads", 10_000, 1 << 20).is_ok());
        }
        std::thread::sleep(std::time::Duration::from_millis(t.wait_ms + 20));
        assert!(q.take_ingest("shop", 100, 1).is_ok());
    }

    #[test]
    fn the_log_bytes_bucket_holds_a_tenant_whose_events_are_within_quota() {
        let q = Quotas::new(
            Limits::default(),
            &[
                "shop:ingest_events_per_sec=1000000".into(),
                "shop:log_bytes_per_sec=10000".into(),
            ],
        )
        .unwrap();
        // A second's worth and more at once: let through, 2,000 bytes in debt.
        assert!(q.take_ingest("shop", 10, 12_000).is_ok());
        // Refused until the debt is paid and a batch's worth is back: 0.7 s.
        let t = q.take_ingest("shop", 10, 5_000).unwrap_err();
        assert_eq!((t.quota, t.limit), (LOG_BYTES, 10_000));
        assert!((600..=710).contains(&t.wait_ms), "{t:?}");
        assert!(
            t.message("shop")
                .contains("10000 bytes/s (tenant_log_bytes_per_sec)"),
            "{}",
            t.message("shop")
        );
        // The refusal took nothing from the events bucket: a second's worth still passes
        // once the bytes bucket has refilled.
        std::thread::sleep(std::time::Duration::from_millis(t.wait_ms + 20));
        assert!(q.take_ingest("shop", 1_000_000, 1).is_ok());
    }

    #[tokio::test]
    async fn a_tenant_past_its_query_concurrency_waits() {
        let q = Arc::new(
            Quotas::new(Limits::default(), &["shop:query_concurrency_max=1".into()]).unwrap(),
        );
        let first = q.enter_query("shop").await;
        assert!(first.is_some());
        let q2 = q.clone();
        let second = tokio::spawn(async move { q2.enter_query("shop").await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        assert!(q.enter_query("ads").await.is_none(), "no quota");
        drop(first);
        assert!(second.await.unwrap().is_some());
    }
}
