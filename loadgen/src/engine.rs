//! The load engine: sends requests to a [`Target`] in an open or a closed loop and records
//! their latencies.
//!
//! **Open loop** (`--rate N`): request `i` is scheduled in advance at `start + i * interval`,
//! and its latency is measured from that scheduled time, not from when it was sent. When the
//! target falls behind, requests wait for a free connection and their wait counts: the latency
//! grows as the backlog does, instead of the generator slowing down to the target's pace and
//! reporting only the service time (coordinated omission). Requests still waiting when the
//! duration ends are not sent and are counted as `not sent (backlog)`.
//!
//! **Closed loop** (`--rate max`): `connections` senders each send the next request as soon as
//! the previous one is answered; latency is from send to answer. This measures capacity, not
//! latency at a given load.
//!
//! The [`Recorder`] is plain data: it takes the time of each answer as an argument, so it is
//! tested without a clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// What one answered request carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Events in the request.
    pub events: u64,
    /// Bytes of the request body.
    pub bytes: u64,
    /// Events the target took.
    pub accepted: u64,
    /// Events it dropped as duplicates.
    pub duplicates: u64,
    /// Events it refused as invalid.
    pub rejected: u64,
}

/// A system under load: sends request `i` and says what happened. An error is its kind, for
/// the table of errors (`http 503`, `timeout`, `connect`, …).
pub trait Target: Send + Sync + 'static {
    /// Sends request number `request`.
    fn send(&self, request: u64) -> impl Future<Output = Result<Sent, String>> + Send;
}

/// How to offer the load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Requests a second, each scheduled in advance.
    Open {
        /// Requests a second.
        requests_per_sec: f64,
    },
    /// As fast as answers come.
    Closed,
}

/// A run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Open or closed loop.
    pub mode: Mode,
    /// Requests in flight at most (open loop) or senders (closed loop).
    pub connections: usize,
    /// How long to offer load.
    pub duration: Duration,
}

/// Kind of the requests an open loop could not send before the end.
pub const NOT_SENT: &str = "not sent (backlog)";

/// Figures of one second of the run (by the time answers came).
#[derive(Debug, Clone)]
pub struct Second {
    /// Latency of the requests answered in this second, in microseconds.
    pub latency: Histogram<u64>,
    /// Events in requests answered successfully.
    pub events: u64,
    /// Body bytes of those requests.
    pub bytes: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl Second {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            events: 0,
            bytes: 0,
            errors: 0,
        }
    }
}

/// A histogram of microseconds from 1 µs to an hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Everything measured in a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Per second since the start.
    pub seconds: Vec<Second>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Sum over successful requests.
    pub totals: Sent,
    /// Successful requests.
    pub requests: u64,
    /// Time of the last answer since the start.
    pub last_answer: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            seconds: Vec::new(),
            errors: BTreeMap::new(),
            totals: Sent::default(),
            requests: 0,
            last_answer: Duration::ZERO,
        }
    }
}

impl Recorder {
    /// Records a request answered `at` (since the start) after `latency`.
    pub fn record(&mut self, at: Duration, latency: Duration, result: &Result<Sent, String>) {
        let s = at.as_secs() as usize;
        while self.seconds.len() <= s {
            self.seconds.push(Second::new());
        }
        self.last_answer = self.last_answer.max(at);
        let second = &mut self.seconds[s];
        match result {
            Ok(sent) => {
                let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
                self.latency.saturating_record(us);
                second.latency.saturating_record(us);
                second.events += sent.events;
                second.bytes += sent.bytes;
                self.requests += 1;
                self.totals.events += sent.events;
                self.totals.bytes += sent.bytes;
                self.totals.accepted += sent.accepted;
                self.totals.duplicates += sent.duplicates;
                self.totals.rejected += sent.rejected;
            }
            Err(kind) => {
                second.errors += 1;
                self.error(kind, 1);
            }
        }
    }

    /// Counts `n` failures of `kind`.
    pub fn error(&mut self, kind: &str, n: u64) {
        *self.errors.entry(kind.to_string()).or_default() += n;
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// When open-loop request `i` is due.
pub fn scheduled(start: Instant, interval: Duration, i: u64) -> Instant {
    start + Duration::from_nanos((interval.as_nanos() as u64).saturating_mul(i))
}

/// Runs `plan` against `target` from `start`, recording into `rec`; returns when every request
/// sent has been answered.
pub async fn run<T: Target>(target: Arc<T>, plan: Plan, start: Instant, rec: Arc<Mutex<Recorder>>) {
    let end = start + plan.duration;
    match plan.mode {
        Mode::Open { requests_per_sec } => {
            open_loop(target, plan, requests_per_sec, start, end, rec).await
        }
        Mode::Closed => closed_loop(target, plan, start, end, rec).await,
    }
}

async fn open_loop<T: Target>(
    target: Arc<T>,
    plan: Plan,
    requests_per_sec: f64,
    start: Instant,
    end: Instant,
    rec: Arc<Mutex<Recorder>>,
) {
    let interval = Duration::from_secs_f64(1.0 / requests_per_sec);
    let total = (plan.duration.as_secs_f64() * requests_per_sec).floor() as u64;
    let permits = Arc::new(Semaphore::new(plan.connections));
    for i in 0..total {
        let due = scheduled(start, interval, i);
        tokio::time::sleep_until(due).await;
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = tokio::time::sleep_until(end) => {
                rec.lock().expect("recorder lock").error(NOT_SENT, total - i);
                break;
            }
        };
        let (target, rec) = (target.clone(), rec.clone());
        tokio::spawn(async move {
            let result = target.send(i).await;
            let now = Instant::now();
            rec.lock()
                .expect("recorder lock")
                .record(now - start, now - due, &result);
            drop(permit);
        });
    }
    // Every permit back: every request sent has been answered.
    let _all = permits
        .acquire_many(plan.connections as u32)
        .await
        .expect("the semaphore is never closed");
}

async fn closed_loop<T: Target>(
    target: Arc<T>,
    plan: Plan,
    start: Instant,
    end: Instant,
    rec: Arc<Mutex<Recorder>>,
) {
    let next = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..plan.connections)
        .map(|_| {
            let (target, rec, next) = (target.clone(), rec.clone(), next.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let result = target.send(i).await;
                    let now = Instant::now();
                    rec.lock()
                        .expect("recorder lock")
                        .record(now - start, now - sent, &result);
                }
            })
        })
        .collect();
    for s in senders {
        let _ = s.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_buckets_by_second_and_counts_errors() {
        let mut r = Recorder::default();
        let ok = Ok(Sent {
            events: 10,
            bytes: 100,
            accepted: 9,
            duplicates: 1,
            rejected: 0,
        });
        r.record(Duration::from_millis(200), Duration::from_millis(3), &ok);
        r.record(Duration::from_millis(2500), Duration::from_millis(7), &ok);
        r.record(
            Duration::from_millis(2600),
            Duration::ZERO,
            &Err("http 503".into()),
        );
        r.error(NOT_SENT, 4);
        assert_eq!(r.seconds.len(), 3);
        assert_eq!(r.seconds[0].events, 10);
        assert_eq!(r.seconds[1].events, 0);
        assert_eq!(r.seconds[2].errors, 1);
        assert_eq!(r.requests, 2);
        assert_eq!(r.totals.accepted, 18);
        assert_eq!(r.totals.duplicates, 2);
        assert_eq!(r.error_count(), 5);
        assert_eq!(r.errors["http 503"], 1);
        assert!(r.latency.max() >= 6_990 && r.latency.max() <= 7_010);
        assert_eq!(r.last_answer, Duration::from_millis(2600));
    }

    #[test]
    fn the_schedule_is_fixed_in_advance() {
        let start = Instant::now();
        let interval = Duration::from_micros(2500);
        assert_eq!(scheduled(start, interval, 0), start);
        assert_eq!(
            scheduled(start, interval, 400),
            start + Duration::from_secs(1)
        );
    }

    /// A target that serves one request at a time, each taking `service`.
    struct Slow {
        service: Duration,
        one_at_a_time: tokio::sync::Mutex<()>,
    }

    impl Target for Slow {
        async fn send(&self, _request: u64) -> Result<Sent, String> {
            let _turn = self.one_at_a_time.lock().await;
            tokio::time::sleep(self.service).await;
            Ok(Sent {
                events: 1,
                bytes: 1,
                accepted: 1,
                ..Sent::default()
            })
        }
    }

    /// A target serving 100 requests a second, one at a time.
    fn slow() -> Arc<Slow> {
        Arc::new(Slow {
            service: Duration::from_millis(10),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs `mode` with `connections` for `secs` seconds against `target`; what it recorded.
    async fn run_on(target: Arc<Slow>, mode: Mode, connections: usize, secs: u64) -> Recorder {
        let plan = Plan {
            mode,
            connections,
            duration: Duration::from_secs(secs),
        };
        let rec = Arc::new(Mutex::new(Recorder::default()));
        run(target, plan, Instant::now(), rec.clone()).await;
        rec.lock().unwrap().clone()
    }

    /// On a virtual clock: an open loop offered twice what the target can serve sees latency
    /// grow second by second and reports what it could not send; a closed loop against the
    /// same target sees only the service time.
    #[tokio::test(start_paused = true)]
    async fn open_loop_above_capacity_shows_the_backlog_a_closed_loop_hides() {
        let target = slow();
        let open_mode = Mode::Open {
            requests_per_sec: 200.0,
        };
        let open = run_on(target.clone(), open_mode, 1000, 4).await;
        // 100 a second served, for 4 s and then the in-flight backlog drains.
        let p50 = |s: &Second| s.latency.value_at_quantile(0.5);
        assert!(
            p50(&open.seconds[0]) >= 200_000,
            "{}",
            p50(&open.seconds[0])
        );
        assert!(
            p50(&open.seconds[3]) > 3 * p50(&open.seconds[0]),
            "latency grows: {} then {}",
            p50(&open.seconds[0]),
            p50(&open.seconds[3])
        );
        assert!(open.latency.max() >= 3_000_000, "{}", open.latency.max());
        assert_eq!(open.error_count(), 0, "every request found a connection");

        let closed = run_on(target, Mode::Closed, 1, 4).await;
        assert!(closed.latency.max() <= 10_100, "{}", closed.latency.max());
        assert!(
            (399..=401).contains(&closed.requests),
            "{}",
            closed.requests
        );
    }

    /// With few connections the backlog waits for a connection, still timed from its schedule;
    /// what is still waiting at the end is counted, not dropped silently.
    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_what_it_could_not_send() {
        let open_mode = Mode::Open {
            requests_per_sec: 200.0,
        };
        let r = run_on(slow(), open_mode, 2, 2).await;
        assert!((195..=205).contains(&r.requests), "{}", r.requests);
        let not_sent = r.errors[NOT_SENT];
        assert_eq!(r.requests + not_sent, 400);
        assert!(r.latency.max() >= 900_000, "{}", r.latency.max());
    }
}
