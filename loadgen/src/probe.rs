//! `--visible`: how long after the agent accepts an event it is visible at the broker.
//!
//! While the load runs, a probe task posts one probe event at a time (event type
//! `bench.probe`, in a request of its own, every `--probe-every`). From the agent's 202 it polls
//! the broker's admin API every `--visible-poll-ms`:
//! - **in the log**: until the log's count of `bench.probe` events (`GET /v1/log/stats`,
//!   counted as they are appended, after the fsync) includes it;
//! - **in an aggregate** (`--visible-aggregate`, default `events_per_type`): then until the
//!   aggregate's rows (`GET /v1/aggregates/NAME/rows`, open windows included) count it. The
//!   aggregate must have an `event_type` dimension and an `events` measure, as the example
//!   `events_per_type` has.
//!
//! Both latencies are measured from the same 202, so the aggregate figure includes the log's.
//! Their resolution is the poll interval. Before the run, a first probe (not counted) waits until
//! the broker has caught up with whatever an earlier run left in the agent's spool.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::engine::new_histogram;
use crate::targets::now_ms;
use crate::workload::{PROBE_EVENT_TYPE, probe_body};

/// Probe settings.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// The agent's ingest URL.
    pub ingest_url: String,
    /// The broker's admin base URL (`http://HOST:PORT`).
    pub admin_url: String,
    /// The API token sent to it (a reader's is enough).
    pub admin_token: Option<String>,
    /// The aggregate to watch, if any.
    pub aggregate: Option<String>,
    /// Time between probes.
    pub every: Duration,
    /// Poll interval.
    pub poll: Duration,
    /// A probe not visible after this counts as `probe not visible`.
    pub timeout: Duration,
    /// Distinguishes this run's probe ids.
    pub run_id: u32,
}

/// One probe.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was accepted, since the start of the run.
    pub at: Duration,
    /// From acceptance to the log.
    pub log: Duration,
    /// From acceptance to the aggregate.
    pub aggregate: Option<Duration>,
}

/// What the probes measured.
#[derive(Debug, Clone)]
pub struct Visibility {
    /// The aggregate watched.
    pub aggregate: Option<String>,
    /// Accept → in the log, microseconds.
    pub log: Histogram<u64>,
    /// Accept → in the aggregate, microseconds.
    pub in_aggregate: Histogram<u64>,
    /// Every probe.
    pub samples: Vec<Sample>,
    /// Probes that failed, by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// The poll interval (the resolution).
    pub poll: Duration,
}

struct Probe {
    client: reqwest::Client,
    spec: ProbeSpec,
    from: String,
    log_base: u64,
    aggregate_base: u64,
}

impl Probe {
    async fn log_count(&self) -> anyhow::Result<u64> {
        let v: serde_json::Value = self
            .client
            .get(format!("{}/v1/log/stats", self.spec.admin_url))
            .bearer_auth(self.spec.admin_token.as_deref().unwrap_or_default())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["by_event_type"][PROBE_EVENT_TYPE].as_u64().unwrap_or(0))
    }

    async fn aggregate_count(&self, name: &str) -> anyhow::Result<u64> {
        let resp = self
            .client
            .get(format!("{}/v1/aggregates/{name}/rows", self.spec.admin_url))
            .bearer_auth(self.spec.admin_token.as_deref().unwrap_or_default())
            .query(&[("from", self.from.as_str())])
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "aggregate {name:?}: {status}: {text}");
        let mut n = 0;
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line)?;
            if row["event_type"] == PROBE_EVENT_TYPE {
                n += row["events"].as_u64().unwrap_or(0);
            }
        }
        Ok(n)
    }

    /// Polls `count` until it reaches `want`; the time it took, or `None` after the timeout.
    async fn wait_until<F, Fut>(&self, since: Instant, want: u64, count: F) -> Option<Duration>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<u64>>,
    {
        loop {
            if let Ok(n) = count().await
                && n >= want
            {
                return Some(since.elapsed());
            }
            if since.elapsed() > self.spec.timeout {
                return None;
            }
            tokio::time::sleep(self.spec.poll).await;
        }
    }
}

/// Longest wait for the broker to catch up before a `--visible` run.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(600);

impl Probe {
    /// Posts a first probe (not counted) and waits until the broker shows it: a backlog left by
    /// an earlier run (events accepted by the agent but not yet shipped) would otherwise be
    /// measured as this run's visibility.
    async fn catch_up(&mut self) -> anyhow::Result<()> {
        let resp = self
            .client
            .post(&self.spec.ingest_url)
            .header("content-type", "application/json")
            .body(probe_body(self.spec.run_id, 0, now_ms()))
            .send()
            .await
            .context("--visible: posting the first probe")?;
        anyhow::ensure!(
            resp.status().as_u16() == 202,
            "--visible: the agent answered the first probe {}",
            resp.status()
        );
        let since = Instant::now();
        let waiting = tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!("--visible: waiting for the broker to catch up with the agent …");
        });
        let (log_want, agg_want) = (self.log_base + 1, self.aggregate_base + 1);
        let mut done = false;
        while since.elapsed() < CATCH_UP_MAX {
            let log = self.log_count().await.unwrap_or(0) >= log_want;
            let agg = match &self.spec.aggregate {
                Some(name) => self.aggregate_count(name).await.unwrap_or(0) >= agg_want,
                None => true,
            };
            if log && agg {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        waiting.abort();
        anyhow::ensure!(
            done,
            "--visible: the first probe was not visible at the broker after {CATCH_UP_MAX:?}"
        );
        if since.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "--visible: the broker caught up in {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
        self.log_base = log_want;
        self.aggregate_base = agg_want;
        Ok(())
    }
}

/// Checks the broker answers and reads the counts probes are measured against. Fails with a
/// message naming the setting when the admin API or the aggregate cannot be read.
pub async fn prepare(spec: ProbeSpec) -> anyhow::Result<Prepared> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Windows of the aggregate from an hour back: they hold every probe of this run.
    let from = rfc3339(now_ms() - 3_600_000);
    let mut probe = Probe {
        client,
        spec,
        from,
        log_base: 0,
        aggregate_base: 0,
    };
    probe.log_base = probe.log_count().await.with_context(|| {
        format!(
            "--visible: reading {}/v1/log/stats (is --admin-addr the broker's admin address?)",
            probe.spec.admin_url
        )
    })?;
    if let Some(name) = probe.spec.aggregate.clone() {
        probe.aggregate_base = probe
            .aggregate_count(&name)
            .await
            .with_context(|| format!("--visible-aggregate {name}"))?;
    }
    probe.catch_up().await?;
    Ok(Prepared { probe })
}

/// Probes ready to run.
pub struct Prepared {
    probe: Probe,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

impl Prepared {
    /// Sends probes from `start` until `end`.
    pub async fn run(self, start: Instant, end: Instant) -> Visibility {
        let p = &self.probe;
        let mut out = Visibility {
            aggregate: p.spec.aggregate.clone(),
            log: new_histogram(),
            in_aggregate: new_histogram(),
            samples: Vec::new(),
            errors: Default::default(),
            poll: p.spec.poll,
        };
        let mut errors = std::collections::BTreeMap::<String, u64>::new();
        let mut err = |kind: &str| *errors.entry(kind.into()).or_default() += 1;
        let mut visible = 0u64;
        let mut k = 0u64;
        let mut next = start;
        while next < end {
            tokio::time::sleep_until(next).await;
            // A probe that took longer than the interval delays the next; none are bunched.
            next = (next + p.spec.every).max(Instant::now());
            k += 1;
            let resp = p
                .client
                .post(&p.spec.ingest_url)
                .header("content-type", "application/json")
                .body(probe_body(p.spec.run_id, k, now_ms()))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().as_u16() == 202 => {}
                Ok(r) => {
                    err(&format!("probe http {}", r.status().as_u16()));
                    continue;
                }
                Err(e) => {
                    err(&format!("probe {}", crate::targets::http_error_kind(&e)));
                    continue;
                }
            }
            let accepted = Instant::now();
            visible += 1;
            let Some(log) = p
                .wait_until(accepted, p.log_base + visible, || p.log_count())
                .await
            else {
                err("probe not visible in the log");
                break;
            };
            let mut sample = Sample {
                at: accepted - start,
                log,
                aggregate: None,
            };
            if let Some(name) = &p.spec.aggregate {
                match p
                    .wait_until(accepted, p.aggregate_base + visible, || {
                        p.aggregate_count(name)
                    })
                    .await
                {
                    Some(d) => sample.aggregate = Some(d),
                    None => {
                        err("probe not visible in the aggregate");
                        break;
                    }
                }
            }
            out.log.saturating_record((log.as_micros() as u64).max(1));
            if let Some(d) = sample.aggregate {
                out.in_aggregate
                    .saturating_record((d.as_micros() as u64).max(1));
            }
            out.samples.push(sample);
        }
        out.errors = errors;
        out
    }
}

fn rfc3339(ms: i64) -> String {
    runnel_event::envelope::rfc3339_ms(ms)
}
