//! # reports: scheduled and on-demand reports over the Flight SQL tables
//!
//! A report is a named definition ([`definition`]: SQL with typed parameters, a schedule, an
//! output format and destination), deployed with `runnel report deploy` and versioned in
//! `state.redb`. Runs go through a durable queue ([`queue`]); one task here
//! ([`serve`]) schedules, runs and announces them:
//!
//! - **Schedule.** Each fire time of a report's cron expression (in its `time_zone`) queues
//!   one run, keyed by the fire time, with the period parameter set to the period before it
//!   (the previous day or month). Misfire policy: fire times missed while the broker was down
//!   are each queued once after the restart, the newest `report_misfire_runs_max` of them; older
//!   ones are skipped, logged and counted (`runnel_report_misfires_skipped_total`).
//! - **Runs.** At most `report_concurrency_max` at once, none while the archive is still being opened after a start (the history of `events` cannot be read yet). A run with `wait_for_final` waits,
//!   queued, until every aggregate its SQL reads has a watermark past its period's end plus
//!   the allowed lateness; one without runs on what is there and is marked `partial` if some
//!   window was not final. An attempt longer than its deadline fails; a failed attempt is
//!   retried with exponential backoff (`report_retry_backoff_ms` doubling, at most
//!   `report_retry_backoff_max_ms`) until `attempts_max`. [`run`] writes the output.
//! - **Webhooks.** A run that ends (succeeded or failed) with a `webhook_url` gets a delivery
//!   in the same transaction: one JSON body, one delivery id, POSTed with
//!   `X-Runnel-Signature: sha256=HEX` (HMAC-SHA256 of the body with `report_webhook_secret`)
//!   and `X-Runnel-Delivery: ID`, retried with backoff until a 2xx, at most
//!   `report_webhook_attempts_max` attempts, each recorded on the run.
//! - **Tenants.** A report deployed by a tenant's token (or by an operator's with `tenant=`)
//!   is that tenant's: its SQL is planned and run in the tenant's scope, so it reads what the
//!   tenant's tokens read over Flight SQL and nothing else, and its outputs go under
//!   `tenants/TENANT/` of `report_destination` (its definition may not name a destination).
//!   The admin API shows a tenant's token its tenant's reports and runs only.
//! - **Links.** An output in S3 is linked by a pre-signed URL (`report_link_ttl_s`); any other
//!   by `/v1/reports/runs/ID/output?token=T` on the admin port, `T` an HMAC of the run id, so a
//!   link opens one output and cannot be guessed.
//!
//! May call: [`crate::query`] (the tables and the SQL), [`crate::archive::store`] (stores by
//! URL), [`crate::state`]. Called by [`crate::admin`].

pub mod definition;
pub mod queue;
pub mod run;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::hmac;
use runnel_client::api::RunStatus;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub use definition::Definition;
pub use queue::{NewRun, Queue, QueueError, RunDefaults, RunRecord};
pub use run::Runner;

/// The service's settings (see `docs/CONFIG.md`, `report_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs at once.
    pub concurrency_max: usize,
    /// How often the queue and the schedules are looked at (a new request wakes it at once).
    pub poll: Duration,
    /// The first retry's delay.
    pub retry_backoff: Duration,
    /// The longest retry delay.
    pub retry_backoff_max: Duration,
    /// Most missed fire times of one report queued after a restart.
    pub misfire_runs_max: usize,
    /// Most attempts of one webhook delivery.
    pub webhook_attempts_max: u32,
    /// One webhook attempt's timeout.
    pub webhook_timeout: Duration,
    /// How long a pre-signed S3 link stays valid.
    pub link_ttl: Duration,
    /// The admin API's address as links name it (`http://HOST:PORT`).
    pub link_base_url: String,
}

/// The reports service's shared state: the queue, the keys, the wake-up.
pub struct Reports {
    /// The queue and the registry of definitions.
    pub queue: Queue,
    /// The settings.
    pub settings: Settings,
    link_key: hmac::Key,
    webhook_key: hmac::Key,
    wake: Notify,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Reports {
    /// The service over `queue`; `link_secret` keys the download links, `webhook_secret` the
    /// webhook signatures.
    pub fn new(
        queue: Queue,
        settings: Settings,
        link_secret: &[u8],
        webhook_secret: &[u8],
    ) -> Self {
        Self {
            queue,
            settings,
            link_key: hmac::Key::new(hmac::HMAC_SHA256, link_secret),
            webhook_key: hmac::Key::new(hmac::HMAC_SHA256, webhook_secret),
            wake: Notify::new(),
        }
    }

    /// Wakes the service (a run was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The download token of run `id`.
    pub fn token(&self, id: &str) -> String {
        hex(hmac::sign(&self.link_key, id.as_bytes()).as_ref())
    }

    /// Whether `token` is run `id`'s (in constant time).
    pub fn token_ok(&self, id: &str, token: &str) -> bool {
        let Some(tag) = unhex(token) else {
            return false;
        };
        hmac::verify(&self.link_key, id.as_bytes(), &tag).is_ok()
    }

    /// The admin-port path of run `id`'s output.
    pub fn link_path(&self, id: &str) -> String {
        format!("/v1/reports/runs/{id}/output?token={}", self.token(id))
    }

    /// `sha256=HEX`: the signature of a webhook body.
    pub fn signature(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex(hmac::sign(&self.webhook_key, body).as_ref())
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A secret kept in `path` (created with 32 random bytes, readable by the owner only, if
/// missing).
pub fn secret_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(bytes) = std::fs::read(path)
        && bytes.len() >= 16
    {
        return Ok(bytes);
    }
    let mut bytes = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for {}", path.display()))?;
    let text = hex(&bytes).into_bytes();
    crate::state::write_private(path, &text)?;
    Ok(text)
}

/// The delay before attempt `attempt + 1` (after `attempt` failures): exponential from `min`,
/// at most `max`.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(max)
}

/// The webhook body of a run that ended: what a receiver needs without calling back.
fn webhook_body(run: &RunRecord, link: Option<&str>) -> String {
    let api = run.to_api(|_| link.unwrap_or_default().to_string());
    serde_json::json!({
        "run_id": run.id,
        "report": run.report,
        "version": run.version,
        "status": run.status,
        "params": run.params,
        "partial": run.partial,
        "attempts": run.attempts,
        "errors": run.errors,
        "finished_at": api.finished_at,
        "output": api.output,
        "link": link,
    })
    .to_string()
}

/// Runs the service until `shutdown`: schedules, runs, deliveries. A run cut off by the stop
/// is `running` in the queue and goes back to `queued` at the next start.
pub async fn serve(
    reports: Arc<Reports>,
    runner: Arc<Runner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let delivering: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut next_sweep = 0i64;
    let http = reqwest::Client::builder()
        .timeout(reports.settings.webhook_timeout)
        .build()
        .unwrap_or_default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = now_ms();
        if let Err(e) = schedule(&reports, now).await {
            tracing::warn!(error = %e, "reports: scheduling failed");
        }
        if let Err(e) = dispatch(&reports, &runner, &in_flight, &mut tasks, now).await {
            tracing::warn!(error = %e, "reports: dispatching failed");
        }
        if let Err(e) = deliver(&reports, &http, &delivering, &mut tasks, now).await {
            tracing::warn!(error = %e, "reports: webhook deliveries failed");
        }
        if now >= next_sweep {
            next_sweep = now + RETENTION_SWEEP_MS;
            if let Err(e) = sweep(&reports, &runner, now).await {
                tracing::warn!(error = %e, "reports: deleting expired outputs failed");
            }
        }
        tokio::select! {
            _ = reports.wake.notified() => {}
            _ = tokio::time::sleep(reports.settings.poll) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// How often outputs past their `retention_days` are looked for.
const RETENTION_SWEEP_MS: i64 = 3_600_000;

/// Whether `run`'s output is past `retention_days` at `now`.
fn expired(run: &RunRecord, retention_days: Option<u32>, now: i64) -> bool {
    match (retention_days, run.finished_ms, &run.output) {
        (Some(days), Some(finished), Some(_)) => {
            now.saturating_sub(finished) > i64::from(days) * 86_400_000
        }
        _ => false,
    }
}

/// Deletes the outputs past their definition's `retention_days` (the run stays, with
/// `output_deleted_at`).
async fn sweep(reports: &Arc<Reports>, runner: &Arc<Runner>, now: i64) -> Result<(), QueueError> {
    let r = reports.clone();
    let records = blocking(move || r.queue.reports()).await?;
    for record in records {
        let Ok(def) = Definition::parse(&record.active().text) else {
            continue;
        };
        if def.retention_days.is_none() {
            continue;
        }
        let (r, name) = (reports.clone(), def.name.clone());
        let runs = blocking(move || r.queue.history(&name, usize::MAX)).await?;
        for run in runs.iter().filter(|r| expired(r, def.retention_days, now)) {
            let Some(output) = &run.output else { continue };
            let deleted = match runner.location(&output.destination) {
                Ok(location) => match object_store::path::Path::parse(&output.path) {
                    Ok(path) => {
                        match object_store::ObjectStoreExt::delete(&*location.root, &path).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {
                    let (r, id) = (reports.clone(), run.id.clone());
                    blocking(move || r.queue.output_deleted(&id, now)).await?;
                    tracing::info!(report = %run.report, run = %run.id, url = %output.url, "reports: output past retention_days deleted");
                }
                Err(e) => {
                    tracing::warn!(report = %run.report, run = %run.id, error = %e, "reports: deleting an expired output failed; retried at the next sweep")
                }
            }
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Storage(anyhow::anyhow!("{e}")))?
}

/// Queues each report's fire times up to `now`, per the misfire policy.
async fn schedule(reports: &Arc<Reports>, now: i64) -> Result<(), QueueError> {
    let r = reports.clone();
    let records = blocking(move || r.queue.reports()).await?;
    let max = reports.settings.misfire_runs_max;
    for record in records {
        let Ok(def) = Definition::parse(&record.active().text) else {
            continue;
        };
        if def.schedule.is_none() {
            continue;
        }
        let mut fires = def.fires_between(record.scheduled_until_ms, now, max + 1);
        if fires.len() > max {
            let skipped_to = fires[fires.len() - max - 1];
            fires.drain(..fires.len() - max);
            tracing::warn!(report = %def.name, until = skipped_to, runs_max = max, "reports: missed fire times beyond report_misfire_runs_max skipped");
            metrics::counter!("runnel_report_misfires_skipped_total", "report" => def.name.clone())
                .increment(1);
            let (r, name) = (reports.clone(), def.name.clone());
            blocking(move || r.queue.skip_fires(&name, skipped_to)).await?;
        }
        for fire in fires {
            let mut params = serde_json::Map::new();
            // One run per period: fire times that fall in one period (an hourly schedule of a
            // daily report) make one run.
            let mut key = format!("schedule/{}/{fire}", def.name);
            if let Some((name, kind)) = def.period_param() {
                let period = def.period_of(kind, fire, -1);
                key = format!("schedule/{}/{name}={period}", def.name);
                params.insert(name.to_string(), serde_json::Value::String(period));
            }
            let new = NewRun {
                report: def.name.clone(),
                trigger: "schedule",
                scheduled_for_ms: Some(fire),
                params,
                wait_for_final: None,
                webhook_url: None,
                key: Some(key),
            };
            let r = reports.clone();
            let (run, repeat) = blocking(move || r.queue.enqueue(new, now)).await?;
            if !repeat {
                tracing::info!(report = %run.report, run = %run.id, params = ?run.params, "reports: scheduled run queued");
            }
        }
    }
    Ok(())
}

/// Starts the due runs that can run now.
async fn dispatch(
    reports: &Arc<Reports>,
    runner: &Arc<Runner>,
    in_flight: &Arc<Mutex<HashSet<String>>>,
    tasks: &mut JoinSet<()>,
    now: i64,
) -> Result<(), QueueError> {
    let r = reports.clone();
    let due = blocking(move || r.queue.due(now)).await?;
    metrics::gauge!("runnel_report_queue_due").set(due.len() as f64);
    if runner.opening() {
        return Ok(());
    }
    for run in due {
        if in_flight.lock().expect("lock poisoned").len() >= reports.settings.concurrency_max {
            break;
        }
        if in_flight.lock().expect("lock poisoned").contains(&run.id) {
            continue;
        }
        let r = reports.clone();
        let name = run.report.clone();
        let record = blocking(move || r.queue.report(&name)).await?;
        let parsed = match record.version(run.version) {
            Some(v) => Definition::parse(&v.text),
            None => Err(format!(
                "version {} of report {} is gone",
                run.version, run.report
            )),
        };
        let def = match parsed {
            Ok(def) => def,
            Err(e) => {
                fail_now(reports, &run, e, now).await?;
                continue;
            }
        };
        let scope = record.scope();
        let waiting = match runner.waiting(&def, &run, &scope).await {
            Ok(w) => w,
            Err(e) => Some(format!("cannot tell yet: {e}")),
        };
        if waiting.is_some() || run.waiting.is_some() {
            let (r, id, w) = (reports.clone(), run.id.clone(), waiting.clone());
            blocking(move || r.queue.set_waiting(&id, w)).await?;
        }
        if waiting.is_some() {
            continue;
        }
        let (r, id) = (reports.clone(), run.id.clone());
        let Some(run) = blocking(move || r.queue.claim(&id, now_ms())).await? else {
            continue;
        };
        in_flight
            .lock()
            .expect("lock poisoned")
            .insert(run.id.clone());
        let (reports, runner, in_flight) = (reports.clone(), runner.clone(), in_flight.clone());
        tasks.spawn(async move {
            attempt(&reports, &runner, def, run.clone(), scope).await;
            in_flight.lock().expect("lock poisoned").remove(&run.id);
            reports.wake();
        });
    }
    Ok(())
}

/// Fails a run that cannot be tried (its definition is unreadable).
async fn fail_now(
    reports: &Arc<Reports>,
    run: &RunRecord,
    error: String,
    now: i64,
) -> Result<(), QueueError> {
    let (r, id) = (reports.clone(), run.id.clone());
    if blocking(move || r.queue.claim(&id, now)).await?.is_some() {
        let (r, id) = (reports.clone(), run.id.clone());
        blocking(move || {
            r.queue
                .finish(&id, Err(error), now, now, |run| webhook_body(run, None))
        })
        .await?;
    }
    Ok(())
}

/// One attempt of a claimed run, its SQL in `scope`, recorded in the queue.
async fn attempt(
    reports: &Arc<Reports>,
    runner: &Arc<Runner>,
    def: Definition,
    run: RunRecord,
    scope: crate::auth::Scope,
) {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(
        Duration::from_millis(run.deadline_ms),
        runner.execute(&def, &run, &scope),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the attempt passed its deadline of {} ms (deadline_ms)",
            run.deadline_ms
        )),
    };
    let link = match &result {
        Ok((output, _)) => Some(link_of(reports, runner, &run.id, output).await),
        Err(_) => None,
    };
    let now = now_ms();
    let retry_at = now.saturating_add(
        i64::try_from(
            backoff(
                reports.settings.retry_backoff,
                reports.settings.retry_backoff_max,
                run.attempts,
            )
            .as_millis(),
        )
        .unwrap_or(i64::MAX),
    );
    if let Err(e) = &result {
        tracing::warn!(report = %run.report, run = %run.id, attempt = run.attempts, error = %e, "reports: attempt failed");
    }
    let (r, id) = (reports.clone(), run.id.clone());
    let ended = blocking(move || {
        r.queue.finish(&id, result, now, retry_at, |run| {
            webhook_body(run, link.as_deref())
        })
    })
    .await;
    match ended {
        Ok(run) => {
            let status = match run.status {
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "failed",
                _ => "retried",
            };
            metrics::counter!("runnel_report_runs_total", "report" => run.report.clone(), "status" => status)
                .increment(1);
            metrics::histogram!("runnel_report_attempt_seconds", "report" => run.report.clone())
                .record(started.elapsed().as_secs_f64());
            tracing::info!(report = %run.report, run = %run.id, status, rows = run.output.as_ref().map(|o| o.rows), "reports: attempt ended");
        }
        Err(e) => {
            tracing::error!(run = %run.id, error = %e, "reports: recording the attempt failed; it runs again")
        }
    }
}

/// The link of an output: a pre-signed URL in S3, else the admin port's download URL.
pub async fn link_of(
    reports: &Reports,
    runner: &Runner,
    id: &str,
    output: &queue::Output,
) -> String {
    if let Ok(location) = runner.location(&output.destination)
        && let Some(signer) = &location.signer
        && let Ok(path) = object_store::path::Path::parse(&output.path)
    {
        match signer
            .signed_url(axum::http::Method::GET, &path, reports.settings.link_ttl)
            .await
        {
            Ok(url) => return url.to_string(),
            Err(e) => {
                tracing::warn!(run = id, error = %e, "reports: pre-signing the output failed; linking the admin port")
            }
        }
    }
    format!(
        "{}{}",
        reports.settings.link_base_url,
        reports.link_path(id)
    )
}

/// Makes the due webhook deliveries.
async fn deliver(
    reports: &Arc<Reports>,
    http: &reqwest::Client,
    delivering: &Arc<Mutex<HashSet<String>>>,
    tasks: &mut JoinSet<()>,
    now: i64,
) -> Result<(), QueueError> {
    let r = reports.clone();
    let due = blocking(move || r.queue.deliveries_due(now)).await?;
    for run in due {
        let (Some(url), Some(d)) = (run.webhook_url.clone(), run.delivery.clone()) else {
            continue;
        };
        if !delivering
            .lock()
            .expect("lock poisoned")
            .insert(run.id.clone())
        {
            continue;
        }
        let (reports, http, delivering) = (reports.clone(), http.clone(), delivering.clone());
        tasks.spawn(async move {
            let at_ms = now_ms();
            let sent = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-runnel-delivery", &d.id)
                .header("x-runnel-signature", reports.signature(d.body.as_bytes()))
                .body(d.body.clone())
                .send()
                .await;
            let attempt = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    queue::DeliveryAttempt {
                        at_ms,
                        status: Some(status),
                        error: (!resp.status().is_success()).then(|| format!("HTTP {status}")),
                    }
                }
                Err(e) => queue::DeliveryAttempt {
                    at_ms,
                    status: None,
                    error: Some(e.to_string()),
                },
            };
            let n = d.attempts.len() as u32 + 1;
            let ok = attempt.error.is_none();
            let result = if ok { "delivered" } else { "failed" };
            metrics::counter!("runnel_report_webhook_attempts_total", "report" => run.report.clone(), "result" => result)
                .increment(1);
            tracing::info!(report = %run.report, run = %run.id, delivery = %d.id, attempt = n, status = ?attempt.status, error = ?attempt.error, "reports: webhook attempt");
            let max = reports.settings.webhook_attempts_max;
            let next = now_ms().saturating_add(
                i64::try_from(
                    backoff(
                        reports.settings.retry_backoff,
                        reports.settings.retry_backoff_max,
                        n,
                    )
                    .as_millis(),
                )
                .unwrap_or(i64::MAX),
            );
            let (r, id) = (reports.clone(), run.id.clone());
            match blocking(move || r.queue.delivery_attempted(&id, attempt, max, next)).await {
                Ok(after) => {
                    if let Some(d) = after.delivery.filter(|d| d.state != "pending") {
                        metrics::counter!("runnel_report_webhook_deliveries_total", "report" => after.report.clone(), "state" => d.state.clone())
                            .increment(1);
                        if d.state == "failed" {
                            tracing::warn!(report = %after.report, run = %after.id, attempts = d.attempts.len(), "reports: webhook given up after report_webhook_attempts_max attempts");
                        }
                    }
                }
                Err(e) => tracing::error!(run = %run.id, error = %e, "reports: recording a webhook attempt failed"),
            }
            delivering.lock().expect("lock poisoned").remove(&run.id);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_expire_after_their_retention_days() {
        let json = serde_json::json!({
            "id": "r", "report": "x", "version": 1, "trigger": "request",
            "scheduled_for_ms": null, "params": {}, "status": "succeeded",
            "wait_for_final": false, "waiting": null, "partial": false, "attempts": 1,
            "attempts_max": 1, "deadline_ms": 1, "errors": [], "created_ms": 0,
            "started_ms": 0, "finished_ms": 1000, "not_before_ms": 0,
            "output": {"url": "file:///o", "destination": "/o", "path": "o", "format": "csv",
                       "rows": 0, "bytes": 0, "sha256": ""},
            "webhook_url": null,
        });
        let mut run: RunRecord = serde_json::from_value(json).unwrap();
        let day = 86_400_000;
        assert!(!expired(&run, None, 1000 + 400 * day));
        assert!(!expired(&run, Some(2), 1000 + 2 * day));
        assert!(expired(&run, Some(2), 1001 + 2 * day));
        run.output = None;
        assert!(!expired(&run, Some(2), 1001 + 2 * day));
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let got: Vec<u128> = (1..=6).map(|a| backoff(min, max, a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn tokens_open_one_run() {
        let q = {
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(redb::Database::create(dir.path().join("s.redb")).unwrap());
            Queue::open(
                db,
                RunDefaults {
                    attempts_max: 1,
                    deadline_ms: 1,
                },
            )
            .unwrap()
        };
        let r = Reports::new(
            q,
            Settings {
                concurrency_max: 1,
                poll: Duration::from_secs(1),
                retry_backoff: Duration::from_secs(1),
                retry_backoff_max: Duration::from_secs(1),
                misfire_runs_max: 1,
                webhook_attempts_max: 1,
                webhook_timeout: Duration::from_secs(1),
                link_ttl: Duration::from_secs(1),
                link_base_url: "http://x".into(),
            },
            b"link secret 0123456789",
            b"webhook secret 0123456789",
        );
        let t = r.token("a");
        assert!(r.token_ok("a", &t));
        assert!(!r.token_ok("b", &t));
        assert!(!r.token_ok("a", "zz"));
        // The signature a receiver computes: HMAC-SHA256 of the body with the secret.
        let sig = r.signature(b"{}");
        let want = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"webhook secret 0123456789"),
            b"{}",
        );
        assert_eq!(sig, format!("sha256={}", hex(want.as_ref())));
    }
}
