//! Per-tenant quotas, each named, configurable and in `/metrics`:
//!
//! - `ingest_events_per_sec` (`tenant_ingest_events_per_sec`): events per second one tenant's
//!   agents may append together, held by a token bucket of one second's worth at the QUIC
//!   endpoint. A batch that finds the bucket empty is answered `Throttled` with how long to
//!   wait, and nothing of it is appended; the agent keeps it in its spool, sends it again then,
//!   and answers its apps `429` with `Retry-After` meanwhile. A batch larger than the bucket is
//!   let through when the bucket holds anything and leaves it in debt, so no batch waits
//!   forever and the rate still averages the quota.
//! - `query_concurrency_max` (`tenant_query_concurrency_max`): Flight calls one tenant's tokens
//!   may have running at once; more wait in line (as one token's do past
//!   `flight_token_concurrency_max`).
//!
//! `tenant_quotas` overrides either for one tenant: `TENANT:QUOTA=N`. 0 is no quota.
//! `/metrics`: `runnel_tenant_quota{tenant, quota}` (each tenant's limit once it has been
//! used), `runnel_tenant_ingest_events_total{tenant}`, `runnel_tenant_throttled_total{tenant,
//! quota}`, `runnel_tenant_queries_waiting{tenant}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One tenant's quotas (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Events per second its agents may append together.
    pub ingest_events_per_sec: u64,
    /// Flight calls its tokens may have running at once.
    pub query_concurrency_max: usize,
}

/// The quota names, as settings, `tenant_quotas` and `/metrics` spell them.
pub const INGEST: &str = "ingest_events_per_sec";
/// See [`INGEST`].
pub const QUERIES: &str = "query_concurrency_max";

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every tenant's quotas and their state.
pub struct Quotas {
    default: Limits,
    overrides: HashMap<String, Limits>,
    buckets: Mutex<HashMap<String, Bucket>>,
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
                    "tenant_quotas: {entry:?} {why} (expected TENANT:QUOTA=N, QUOTA one of {INGEST}, {QUERIES})"
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

    /// Takes `events` from `tenant`'s ingest bucket, or says how many milliseconds to wait
    /// (and counts the refusal).
    pub fn take_ingest(&self, tenant: &str, events: u64) -> Result<(), u64> {
        let rate = self.limits(tenant).ingest_events_per_sec;
        if rate == 0 {
            metrics::counter!("runnel_tenant_ingest_events_total", "tenant" => tenant.to_string())
                .increment(events);
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("lock poisoned");
        let bucket = buckets.entry(tenant.to_string()).or_insert_with(|| {
            metrics::gauge!("runnel_tenant_quota", "tenant" => tenant.to_string(), "quota" => INGEST)
                .set(rate as f64);
            Bucket {
                tokens: rate as f64,
                at: now,
            }
        });
        let rate = rate as f64;
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens > 0.0 {
            bucket.tokens -= events as f64;
            drop(buckets);
            metrics::counter!("runnel_tenant_ingest_events_total", "tenant" => tenant.to_string())
                .increment(events);
            return Ok(());
        }
        // Until the bucket is back above zero, and a little: a batch of its own size.
        let wait = (-bucket.tokens + (events as f64).min(rate)) / rate;
        drop(buckets);
        metrics::counter!("runnel_tenant_throttled_total", "tenant" => tenant.to_string(), "quota" => INGEST)
            .increment(1);
        Err(((wait * 1e3).ceil() as u64).max(1))
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
                query_concurrency_max: 0,
            },
            &[
                "shop:ingest_events_per_sec=50".into(),
                "shop:query_concurrency_max=2".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            q.limits("shop"),
            Limits {
                ingest_events_per_sec: 50,
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
        assert!(q.take_ingest("shop", 600).is_ok());
        assert!(q.take_ingest("shop", 600).is_ok(), "in debt, once");
        let wait = q.take_ingest("shop", 100).unwrap_err();
        assert!((100..=400).contains(&wait), "{wait} ms");
        // Other tenants are not held.
        for _ in 0..100 {
            assert!(q.take_ingest("ads", 10_000).is_ok());
        }
        std::thread::sleep(std::time::Duration::from_millis(wait + 20));
        assert!(q.take_ingest("shop", 100).is_ok());
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
