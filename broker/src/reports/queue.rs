//! The durable job queue and the report registry, in `state.redb` (tables `reports`,
//! `report_runs`, `report_queue`, `report_keys`, `report_history`; see [`crate::state`]).
//!
//! A run is `queued → running → succeeded | failed`. Every change is one redb transaction, so
//! a request answered `202` is on disk, and a key (an `Idempotency-Key`, a scheduled fire
//! time) names at most one run. A run found `running` when the broker starts was cut off by
//! the stop: it goes back to `queued` and that attempt does not count. Blocking: call it from
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};
use runnel_client::api::{ReportOutput, ReportRun, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::Definition;
use crate::state::{
    REPORT_DELIVERIES, REPORT_HISTORY, REPORT_KEYS, REPORT_QUEUE, REPORT_RUNS, REPORTS, from_json,
    to_json,
};

/// A deployed report: every version of its definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRecord {
    /// Its name.
    pub name: String,
    /// Every version, oldest first; the last is active.
    pub versions: Vec<ReportVersion>,
    /// The schedule's fire times up to this one (UTC ms) are dealt with: queued once each,
    /// or skipped by the misfire policy. Set at the first deploy, so a new report does not
    /// run for the past.
    pub scheduled_until_ms: i64,
    /// The tenant it belongs to: its SQL runs in that tenant's scope and its outputs go under
    /// `tenants/TENANT/` of the broker's report destination. `None`: an operator's, over
    /// every tenant's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl ReportRecord {
    /// What its SQL sees.
    pub fn scope(&self) -> crate::auth::Scope {
        crate::auth::Scope::of(self.tenant.clone())
    }

    /// The active version.
    pub fn active(&self) -> &ReportVersion {
        self.versions.last().expect("a record has a version")
    }

    /// Version `v`.
    pub fn version(&self, v: u32) -> Option<&ReportVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

/// One version of a definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportVersion {
    /// 1, 2, …
    pub version: u32,
    /// The definition's TOML.
    pub text: String,
    /// SHA-256 of the text (a deploy of the same text changes nothing).
    pub sha256: String,
    /// When it was deployed (UTC ms).
    pub deployed_at_ms: i64,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id (a UUID).
    pub id: String,
    /// The report.
    pub report: String,
    /// The report's version.
    pub version: u32,
    /// `request` or `schedule`.
    pub trigger: String,
    /// A scheduled run's fire time (UTC ms).
    pub scheduled_for_ms: Option<i64>,
    /// Every parameter's value.
    pub params: BTreeMap<String, Value>,
    /// Where it is.
    pub status: RunStatus,
    /// Waits until its period's windows are final.
    pub wait_for_final: bool,
    /// What it waits for now.
    pub waiting: Option<String>,
    /// Ran on windows not all final.
    pub partial: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Most attempts.
    pub attempts_max: u32,
    /// Longest one attempt, in milliseconds.
    pub deadline_ms: u64,
    /// The failed attempts' errors (the last ten).
    pub errors: Vec<String>,
    /// When it was accepted (UTC ms).
    pub created_ms: i64,
    /// When its latest attempt started.
    pub started_ms: Option<i64>,
    /// When it ended for good.
    pub finished_ms: Option<i64>,
    /// Not to be tried before (a retry's backoff).
    pub not_before_ms: i64,
    /// Its output.
    pub output: Option<Output>,
    /// Where its end is announced.
    pub webhook_url: Option<String>,
    /// The announcement of its end, once it ended with a `webhook_url`.
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// When its output was deleted (the definition's `retention_days` passed).
    #[serde(default)]
    pub output_deleted_ms: Option<i64>,
}

/// A webhook delivery: one body, the same delivery id on every attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// Its id (`X-Runnel-Delivery`).
    pub id: String,
    /// The body every attempt posts (the signature is over it).
    pub body: String,
    /// `pending`, `delivered` or `failed` (given up after the last attempt).
    pub state: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due (UTC ms).
    pub next_at_ms: i64,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// When it was made (UTC ms).
    pub at_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if it did not get a 2xx.
    pub error: Option<String>,
}

/// A written output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    /// Where it is.
    pub url: String,
    /// The destination it is under (the store to open).
    pub destination: String,
    /// Its object path in that store.
    pub path: String,
    /// Its format.
    pub format: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 (hex).
    pub sha256: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl RunRecord {
    /// The API's view, with `link` the output's download link.
    pub fn to_api(&self, link: impl Fn(&str) -> String) -> ReportRun {
        ReportRun {
            id: self.id.clone(),
            report: self.report.clone(),
            version: self.version,
            trigger: self.trigger.clone(),
            scheduled_for: self.scheduled_for_ms.map(rfc3339),
            params: self.params.clone(),
            status: self.status,
            wait_for_final: self.wait_for_final,
            waiting: self.waiting.clone(),
            partial: self.partial,
            attempts: self.attempts,
            attempts_max: self.attempts_max,
            errors: self.errors.clone(),
            created_at: rfc3339(self.created_ms),
            started_at: self.started_ms.map(rfc3339),
            finished_at: self.finished_ms.map(rfc3339),
            output: self.output.as_ref().map(|o| ReportOutput {
                url: o.url.clone(),
                format: o.format.clone(),
                rows: o.rows,
                bytes: o.bytes,
                sha256: o.sha256.clone(),
                link: link(&self.id),
            }),
            webhook_url: self.webhook_url.clone(),
            webhook: self
                .delivery
                .as_ref()
                .map(|d| runnel_client::api::WebhookDelivery {
                    id: d.id.clone(),
                    state: d.state.clone(),
                    attempts: d
                        .attempts
                        .iter()
                        .map(|a| runnel_client::api::WebhookAttempt {
                            at: rfc3339(a.at_ms),
                            status: a.status,
                            error: a.error.clone(),
                        })
                        .collect(),
                }),
            output_deleted_at: self.output_deleted_ms.map(rfc3339),
        }
    }
}

/// What a new run is.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The report.
    pub report: String,
    /// `request` or `schedule`.
    pub trigger: &'static str,
    /// A scheduled run's fire time.
    pub scheduled_for_ms: Option<i64>,
    /// Parameter values as given (checked against the active definition).
    pub params: serde_json::Map<String, Value>,
    /// Overrides the definition's `wait_for`.
    pub wait_for_final: Option<bool>,
    /// Overrides the definition's `webhook_url`.
    pub webhook_url: Option<String>,
    /// The key that names the run: a request's idempotency key or a schedule's fire time.
    pub key: Option<String>,
}

/// Defaults of a run's limits, from the broker's settings.
#[derive(Debug, Clone, Copy)]
pub struct RunDefaults {
    /// `report_attempts_max`.
    pub attempts_max: u32,
    /// `report_deadline_ms`.
    pub deadline_ms: u64,
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No such report or run.
    #[error("{0}")]
    NotFound(String),
    /// A field of the request is wrong (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("state.redb: {0}")]
    Storage(#[from] anyhow::Error),
}

fn storage(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Storage(anyhow::Error::new(e.into()))
}

/// The queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    db: Arc<Database>,
    defaults: RunDefaults,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

const ERRORS_KEPT: usize = 10;

impl Queue {
    /// The queue in `db` (its tables created if missing); runs cut off by a stop go back to
    /// `queued`.
    pub fn open(db: Arc<Database>, defaults: RunDefaults) -> Result<Self, QueueError> {
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(REPORTS).map_err(storage)?;
            txn.open_table(REPORT_KEYS).map_err(storage)?;
            txn.open_table(REPORT_HISTORY).map_err(storage)?;
            txn.open_table(REPORT_DELIVERIES).map_err(storage)?;
            let mut queue = txn.open_table(REPORT_QUEUE).map_err(storage)?;
            let mut runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
            let mut cut: Vec<RunRecord> = Vec::new();
            for entry in runs.iter().map_err(storage)? {
                let (_, v) = entry.map_err(storage)?;
                let run: RunRecord = from_json("report run", v.value())?;
                if run.status == RunStatus::Running {
                    cut.push(run);
                }
            }
            for mut run in cut {
                tracing::info!(run = %run.id, report = %run.report, "report run cut off by a stop: queued again");
                run.status = RunStatus::Queued;
                run.attempts = run.attempts.saturating_sub(1);
                queue
                    .insert((run.not_before_ms, run.id.as_str()), ())
                    .map_err(storage)?;
                runs.insert(run.id.as_str(), to_json(&run).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(Self { db, defaults })
    }

    /// Deploys a definition: a new version unless the text is the active one's. Returns the
    /// record and whether it changed. `tenant` (a tenant's token, or an operator's `tenant=`):
    /// a new report is that tenant's and an existing one must be; `None` makes a new report
    /// an operator's and keeps an existing one's tenant.
    pub fn deploy(
        &self,
        def: &Definition,
        text: &str,
        now_ms: i64,
        tenant: Option<&str>,
    ) -> Result<(ReportRecord, bool), QueueError> {
        let sha256 = crate::plugins::sha256_hex(text.as_bytes());
        let txn = self.db.begin_write().map_err(storage)?;
        let (record, changed) = {
            let mut reports = txn.open_table(REPORTS).map_err(storage)?;
            let old: Option<ReportRecord> = match reports.get(def.name.as_str()).map_err(storage)? {
                Some(v) => Some(from_json("report", v.value())?),
                None => None,
            };
            if let (Some(old), Some(t)) = (&old, tenant)
                && old.tenant.as_deref() != Some(t)
            {
                return Err(QueueError::Invalid(format!(
                    "name: a report named {:?} exists and is not of tenant {t:?}; choose another name",
                    def.name
                )));
            }
            let mut record = old.unwrap_or(ReportRecord {
                name: def.name.clone(),
                versions: Vec::new(),
                scheduled_until_ms: now_ms,
                tenant: tenant.map(str::to_string),
            });
            if let (Some(t), Some(_)) = (&record.tenant, &def.destination) {
                return Err(QueueError::Invalid(format!(
                    "destination: report {:?} is tenant {t:?}'s, whose outputs go under tenants/{t}/ of the broker's report_destination; remove destination",
                    def.name
                )));
            }
            if record.versions.last().is_some_and(|v| v.sha256 == sha256) {
                (record, false)
            } else {
                let version = record.versions.last().map_or(1, |v| v.version + 1);
                record.versions.push(ReportVersion {
                    version,
                    text: text.to_string(),
                    sha256,
                    deployed_at_ms: now_ms,
                });
                reports
                    .insert(def.name.as_str(), to_json(&record).as_slice())
                    .map_err(storage)?;
                (record, true)
            }
        };
        txn.commit().map_err(storage)?;
        Ok((record, changed))
    }

    /// Every report.
    pub fn reports(&self) -> Result<Vec<ReportRecord>, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let reports = txn.open_table(REPORTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in reports.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(from_json("report", v.value())?);
        }
        Ok(out)
    }

    /// One report.
    pub fn report(&self, name: &str) -> Result<ReportRecord, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let reports = txn.open_table(REPORTS).map_err(storage)?;
        match reports.get(name).map_err(storage)? {
            Some(v) => Ok(from_json("report", v.value())?),
            None => Err(QueueError::NotFound(format!("no report named {name:?}"))),
        }
    }

    /// Queues a run of the report's active version, in one transaction with its key. A key
    /// already used returns its run (`true`: a repeat) and queues nothing.
    pub fn enqueue(&self, new: NewRun, now_ms: i64) -> Result<(RunRecord, bool), QueueError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let out = {
            let mut keys = txn.open_table(REPORT_KEYS).map_err(storage)?;
            let mut runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
            let existing = match &new.key {
                Some(k) => keys
                    .get(k.as_str())
                    .map_err(storage)?
                    .map(|v| v.value().to_string()),
                None => None,
            };
            if let Some(id) = existing {
                let run = runs.get(id.as_str()).map_err(storage)?.ok_or_else(|| {
                    QueueError::Storage(anyhow::anyhow!("key names a missing run {id}"))
                })?;
                (from_json("report run", run.value())?, true)
            } else {
                let reports = txn.open_table(REPORTS).map_err(storage)?;
                let record: ReportRecord =
                    match reports.get(new.report.as_str()).map_err(storage)? {
                        Some(v) => from_json("report", v.value())?,
                        None => {
                            return Err(QueueError::NotFound(format!(
                                "no report named {:?}",
                                new.report
                            )));
                        }
                    };
                let active = record.active().clone();
                let def = Definition::parse(&active.text).map_err(QueueError::Invalid)?;
                let at = new.scheduled_for_ms.unwrap_or(now_ms);
                let params = def.resolve(&new.params, at).map_err(QueueError::Invalid)?;
                if let Some(u) = &new.webhook_url {
                    super::definition::check_webhook_url(u)
                        .map_err(|e| QueueError::Invalid(format!("webhook_url: {e}")))?;
                }
                let run = RunRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    report: new.report.clone(),
                    version: active.version,
                    trigger: new.trigger.to_string(),
                    scheduled_for_ms: new.scheduled_for_ms,
                    params,
                    status: RunStatus::Queued,
                    wait_for_final: new.wait_for_final.unwrap_or(def.wait_for_final),
                    waiting: None,
                    partial: false,
                    attempts: 0,
                    attempts_max: def.attempts_max.unwrap_or(self.defaults.attempts_max),
                    deadline_ms: def.deadline_ms.unwrap_or(self.defaults.deadline_ms),
                    errors: Vec::new(),
                    created_ms: now_ms,
                    started_ms: None,
                    finished_ms: None,
                    not_before_ms: now_ms,
                    output: None,
                    webhook_url: new.webhook_url.or(def.webhook_url.clone()),
                    delivery: None,
                    output_deleted_ms: None,
                };
                runs.insert(run.id.as_str(), to_json(&run).as_slice())
                    .map_err(storage)?;
                txn.open_table(REPORT_QUEUE)
                    .map_err(storage)?
                    .insert((run.not_before_ms, run.id.as_str()), ())
                    .map_err(storage)?;
                txn.open_table(REPORT_HISTORY)
                    .map_err(storage)?
                    .insert((run.report.as_str(), run.created_ms, run.id.as_str()), ())
                    .map_err(storage)?;
                if let Some(k) = &new.key {
                    keys.insert(k.as_str(), run.id.as_str()).map_err(storage)?;
                }
                (run, false)
            }
        };
        // A fire time is dealt with once its run is queued, or found queued already (two fire
        // times of one period make one run).
        if let Some(fire) = new.scheduled_for_ms {
            let mut reports = txn.open_table(REPORTS).map_err(storage)?;
            let record: Option<ReportRecord> =
                match reports.get(new.report.as_str()).map_err(storage)? {
                    Some(v) => Some(from_json("report", v.value())?),
                    None => None,
                };
            if let Some(mut record) = record
                && fire > record.scheduled_until_ms
            {
                record.scheduled_until_ms = fire;
                reports
                    .insert(record.name.as_str(), to_json(&record).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// Records that the schedule's fire times up to `until_ms` are dealt with (the misfire
    /// policy skipped the older ones).
    pub fn skip_fires(&self, report: &str, until_ms: i64) -> Result<(), QueueError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut reports = txn.open_table(REPORTS).map_err(storage)?;
            let record: Option<ReportRecord> = match reports.get(report).map_err(storage)? {
                Some(v) => Some(from_json("report", v.value())?),
                None => None,
            };
            if let Some(mut record) = record
                && until_ms > record.scheduled_until_ms
            {
                record.scheduled_until_ms = until_ms;
                reports
                    .insert(report, to_json(&record).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// One run.
    pub fn run(&self, id: &str) -> Result<RunRecord, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
        match runs.get(id).map_err(storage)? {
            Some(v) => Ok(from_json("report run", v.value())?),
            None => Err(QueueError::NotFound(format!("no report run {id:?}"))),
        }
    }

    /// The report's runs, newest first, at most `limit`.
    pub fn history(&self, report: &str, limit: usize) -> Result<Vec<RunRecord>, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let history = txn.open_table(REPORT_HISTORY).map_err(storage)?;
        let runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in history
            .range((report, i64::MIN, "")..=(report, i64::MAX, "\u{10FFFF}"))
            .map_err(storage)?
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry.map_err(storage)?;
            let (_, _, id) = k.value();
            if let Some(v) = runs.get(id).map_err(storage)? {
                out.push(from_json("report run", v.value())?);
            }
        }
        Ok(out)
    }

    /// Queued runs whose time has come, oldest first.
    pub fn due(&self, now_ms: i64) -> Result<Vec<RunRecord>, QueueError> {
        self.runs_by_time(REPORT_QUEUE, now_ms)
    }

    /// The runs of a `(time, run id)` table up to `now_ms`, in time order.
    fn runs_by_time(
        &self,
        table: redb::TableDefinition<(i64, &str), ()>,
        now_ms: i64,
    ) -> Result<Vec<RunRecord>, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let by_time = txn.open_table(table).map_err(storage)?;
        let runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in by_time
            .range((i64::MIN, "")..=(now_ms, "\u{10FFFF}"))
            .map_err(storage)?
        {
            let (k, _) = entry.map_err(storage)?;
            let (_, id) = k.value();
            if let Some(v) = runs.get(id).map_err(storage)? {
                out.push(from_json("report run", v.value())?);
            }
        }
        Ok(out)
    }

    /// Records that run `id`'s output was deleted; the run no longer has one.
    pub fn output_deleted(&self, id: &str, now_ms: i64) -> Result<Option<RunRecord>, QueueError> {
        self.update(id, |run| {
            if run.output.is_none() {
                return false;
            }
            run.output = None;
            run.output_deleted_ms = Some(now_ms);
            true
        })
    }

    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut RunRecord) -> bool,
    ) -> Result<Option<RunRecord>, QueueError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let out = {
            let mut runs = txn.open_table(REPORT_RUNS).map_err(storage)?;
            let mut queue = txn.open_table(REPORT_QUEUE).map_err(storage)?;
            let mut run: RunRecord = match runs.get(id).map_err(storage)? {
                Some(v) => from_json("report run", v.value())?,
                None => return Err(QueueError::NotFound(format!("no report run {id:?}"))),
            };
            let was = (run.status, run.not_before_ms);
            let pending = |r: &RunRecord| {
                r.delivery
                    .as_ref()
                    .filter(|d| d.state == "pending")
                    .map(|d| d.next_at_ms)
            };
            let delivery_was = pending(&run);
            if !f(&mut run) {
                None
            } else {
                if was.0 == RunStatus::Queued {
                    queue.remove((was.1, id)).map_err(storage)?;
                }
                if run.status == RunStatus::Queued {
                    queue.insert((run.not_before_ms, id), ()).map_err(storage)?;
                }
                let mut deliveries = txn.open_table(REPORT_DELIVERIES).map_err(storage)?;
                if let Some(at) = delivery_was {
                    deliveries.remove((at, id)).map_err(storage)?;
                }
                if let Some(at) = pending(&run) {
                    deliveries.insert((at, id), ()).map_err(storage)?;
                }
                runs.insert(id, to_json(&run).as_slice()).map_err(storage)?;
                Some(run)
            }
        };
        txn.commit().map_err(storage)?;
        Ok(out)
    }

    /// Notes what a queued run waits for (`None`: nothing); written only when it changes.
    pub fn set_waiting(&self, id: &str, waiting: Option<String>) -> Result<(), QueueError> {
        self.update(id, |run| {
            if run.status != RunStatus::Queued || run.waiting == waiting {
                return false;
            }
            run.waiting = waiting;
            true
        })?;
        Ok(())
    }

    /// Takes a queued run: it is `running` from now, one more attempt. `None`: it is not
    /// queued any more.
    pub fn claim(&self, id: &str, now_ms: i64) -> Result<Option<RunRecord>, QueueError> {
        self.update(id, |run| {
            if run.status != RunStatus::Queued {
                return false;
            }
            run.status = RunStatus::Running;
            run.attempts += 1;
            run.started_ms = Some(now_ms);
            run.waiting = None;
            true
        })
    }

    /// Ends an attempt: succeeded with its output, or failed with its error, to be tried
    /// again at `retry_at_ms` (if attempts are left) or failed for good. A run that ended
    /// with a `webhook_url` gets its delivery, with the body `body` makes of it, in the same
    /// transaction.
    pub fn finish(
        &self,
        id: &str,
        result: Result<(Output, bool), String>,
        now_ms: i64,
        retry_at_ms: i64,
        body: impl FnOnce(&RunRecord) -> String,
    ) -> Result<RunRecord, QueueError> {
        let run = self.update(id, |run| {
            if run.status != RunStatus::Running {
                return false;
            }
            match result {
                Ok((output, partial)) => {
                    run.status = RunStatus::Succeeded;
                    run.output = Some(output);
                    run.partial = partial;
                    run.finished_ms = Some(now_ms);
                }
                Err(e) => {
                    run.errors.push(format!("attempt {}: {e}", run.attempts));
                    if run.errors.len() > ERRORS_KEPT {
                        run.errors.remove(0);
                    }
                    if run.attempts < run.attempts_max {
                        run.status = RunStatus::Queued;
                        run.not_before_ms = retry_at_ms;
                    } else {
                        run.status = RunStatus::Failed;
                        run.finished_ms = Some(now_ms);
                    }
                }
            }
            if run.finished_ms.is_some() && run.webhook_url.is_some() && run.delivery.is_none() {
                run.delivery = Some(Delivery {
                    id: uuid::Uuid::new_v4().to_string(),
                    body: body(run),
                    state: "pending".into(),
                    attempts: Vec::new(),
                    next_at_ms: now_ms,
                });
            }
            true
        })?;
        match run {
            Some(r) => Ok(r),
            None => self.run(id),
        }
    }

    /// Runs whose webhook delivery is due.
    pub fn deliveries_due(&self, now_ms: i64) -> Result<Vec<RunRecord>, QueueError> {
        self.runs_by_time(REPORT_DELIVERIES, now_ms)
    }

    /// Records a delivery attempt: delivered (a 2xx), or failed and due again at `next_at_ms`,
    /// or given up when it was the last of `attempts_max`.
    pub fn delivery_attempted(
        &self,
        id: &str,
        attempt: DeliveryAttempt,
        attempts_max: u32,
        next_at_ms: i64,
    ) -> Result<RunRecord, QueueError> {
        self.update(id, |run| {
            let Some(d) = run.delivery.as_mut().filter(|d| d.state == "pending") else {
                return false;
            };
            let delivered = attempt.status.is_some_and(|s| (200..300).contains(&s));
            d.attempts.push(attempt);
            if delivered {
                d.state = "delivered".into();
            } else if d.attempts.len() >= attempts_max as usize {
                d.state = "failed".into();
            } else {
                d.next_at_ms = next_at_ms;
            }
            true
        })?;
        self.run(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEF: &str =
        "name = \"r\"\nsql = \"SELECT $n AS n\"\n[params.n]\ntype = \"int\"\ndefault = 1\n";

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("state.redb")).unwrap());
        let q = Queue::open(
            db,
            RunDefaults {
                attempts_max: 2,
                deadline_ms: 1000,
            },
        )
        .unwrap();
        (dir, q)
    }

    fn new_run(key: Option<&str>) -> NewRun {
        NewRun {
            report: "r".into(),
            trigger: "request",
            scheduled_for_ms: None,
            params: serde_json::Map::new(),
            wait_for_final: None,
            webhook_url: None,
            key: key.map(String::from),
        }
    }

    #[test]
    fn a_key_names_one_run_and_a_cut_off_run_is_queued_again() {
        let (dir, q) = queue();
        let def = Definition::parse(DEF).unwrap();
        assert!(q.deploy(&def, DEF, 0, None).unwrap().1);
        assert!(
            !q.deploy(&def, DEF, 1, None).unwrap().1,
            "the same text is no new version"
        );
        let (a, repeat) = q.enqueue(new_run(Some("k")), 10).unwrap();
        assert!(!repeat);
        let (b, repeat) = q.enqueue(new_run(Some("k")), 11).unwrap();
        assert!(repeat);
        assert_eq!(a.id, b.id);
        let (c, _) = q.enqueue(new_run(None), 12).unwrap();
        assert_ne!(a.id, c.id);
        assert_eq!(q.due(100).unwrap().len(), 2);
        let claimed = q.claim(&a.id, 20).unwrap().unwrap();
        assert_eq!((claimed.status, claimed.attempts), (RunStatus::Running, 1));
        assert!(q.claim(&a.id, 20).unwrap().is_none(), "claimed once");
        assert_eq!(q.due(100).unwrap().len(), 1);
        // A stop while it runs: at the next open it is queued again, the attempt uncounted.
        drop(q);
        let db = Arc::new(Database::open(dir.path().join("state.redb")).unwrap());
        let q = Queue::open(
            db,
            RunDefaults {
                attempts_max: 2,
                deadline_ms: 1000,
            },
        )
        .unwrap();
        let a = q.run(&a.id).unwrap();
        assert_eq!((a.status, a.attempts), (RunStatus::Queued, 0));
        assert_eq!(q.due(100).unwrap().len(), 2);
        assert_eq!(q.history("r", 10).unwrap()[0].id, c.id, "newest first");
    }

    #[test]
    fn a_failed_attempt_is_retried_until_the_limit() {
        let (_dir, q) = queue();
        let def = Definition::parse(DEF).unwrap();
        q.deploy(&def, DEF, 0, None).unwrap();
        let (run, _) = q.enqueue(new_run(None), 10).unwrap();
        q.claim(&run.id, 10).unwrap().unwrap();
        let r = q
            .finish(&run.id, Err("boom".into()), 11, 500, |_| String::new())
            .unwrap();
        assert_eq!((r.status, r.not_before_ms), (RunStatus::Queued, 500));
        assert!(q.due(499).unwrap().is_empty(), "not before its backoff");
        q.claim(&run.id, 500).unwrap().unwrap();
        let r = q
            .finish(&run.id, Err("boom again".into()), 501, 900, |_| {
                String::new()
            })
            .unwrap();
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.errors, vec!["attempt 1: boom", "attempt 2: boom again"]);
        assert!(q.due(i64::MAX).unwrap().is_empty());
        let bad = q
            .enqueue(
                NewRun {
                    params: serde_json::json!({"n": "x"}).as_object().unwrap().clone(),
                    ..new_run(None)
                },
                0,
            )
            .unwrap_err();
        assert!(bad.to_string().starts_with("params.n:"), "{bad}");
    }
}
