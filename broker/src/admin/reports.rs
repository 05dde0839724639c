//! The reports API (`docs/reports.md`): definitions, runs, their outputs. Every call goes to
//! [`crate::reports`]; the queue's redb calls run on the blocking pool.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runnel_client::api::{ReportInfo, RunAccepted, RunRequest};
use serde::Deserialize;

use super::{Admin, access, bad_request, error};
use crate::auth::{Principal, Scope};
use crate::reports::queue::ReportRecord;
use crate::reports::{self, Definition, NewRun, QueueError, Reports, Runner};

/// Longest `Idempotency-Key`.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

fn queue_error(e: QueueError) -> Response {
    let status = match &e {
        QueueError::NotFound(_) => StatusCode::NOT_FOUND,
        QueueError::Invalid(_) => StatusCode::BAD_REQUEST,
        QueueError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// The service and its runner, or 503 while the broker is starting.
fn service(a: &Admin) -> Result<(Arc<Reports>, Arc<Runner>), Response> {
    match a.report_runner.get().and_then(std::sync::Weak::upgrade) {
        Some(runner) => Ok((a.reports.clone(), runner)),
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reports service is not running (starting or stopping)",
        )),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(queue_error(e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn info(record: &ReportRecord, last: Option<&reports::RunRecord>) -> ReportInfo {
    let active = record.active();
    let def = Definition::parse(&active.text);
    let (description, format, schedule, time_zone, params) = match &def {
        Ok(d) => (
            d.description.clone(),
            d.format.as_str().to_string(),
            d.schedule.as_ref().map(|s| s.cron.clone()),
            d.time_zone.name().to_string(),
            d.params
                .iter()
                .map(|(n, p)| (n.clone(), p.kind.as_str().to_string()))
                .collect(),
        ),
        Err(e) => (
            format!("unreadable definition: {e}"),
            String::new(),
            None,
            String::new(),
            Default::default(),
        ),
    };
    ReportInfo {
        name: record.name.clone(),
        version: active.version,
        description,
        format,
        schedule,
        time_zone,
        params,
        deployed_at: rfc3339(active.deployed_at_ms),
        last_run: last.map(|r| (r.id.clone(), r.status)),
        tenant: record.tenant.clone(),
    }
}

/// Report `name`, if `scope` owns it; another tenant's is answered as missing.
async fn owned(a: &Admin, scope: &Scope, name: String) -> Result<ReportRecord, Response> {
    let r = a.reports.clone();
    let shown = format!("report {name:?}");
    let record = blocking(move || r.queue.report(&name)).await?;
    if scope.owns(record.tenant.as_deref()) {
        Ok(record)
    } else {
        Err(super::access::not_yours(&shown))
    }
}

/// `GET /v1/reports`: the caller's tenant's (an operator's token: every report).
pub(super) async fn list(
    State(a): State<Arc<Admin>>,
    Extension(caller): Extension<Principal>,
) -> Response {
    let r = a.reports.clone();
    let scope = caller.scope();
    let got = blocking(move || {
        let mut out = Vec::new();
        for record in r.queue.reports()? {
            if !scope.owns(record.tenant.as_deref()) {
                continue;
            }
            let last = r.queue.history(&record.name, 1)?;
            out.push(info(&record, last.first()));
        }
        Ok(out)
    })
    .await;
    match got {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e,
    }
}

/// `PUT /v1/reports/NAME[?tenant=T]`: the definition's TOML as the body. Its SQL is planned
/// over the tables (as the report's tenant sees them) before it is stored, so a definition
/// naming a table or column that is not there is refused with the planner's message. A
/// tenant's token deploys for its tenant; an operator's may name one.
pub(super) async fn deploy(
    State(a): State<Arc<Admin>>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let mut named = None;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "tenant" => match access::tenant_param(&v) {
                Ok(t) => named = Some(t),
                Err(e) => return bad_request(e),
            },
            other => return bad_request(format!("{other}: unknown parameter (tenant= only)")),
        }
    }
    let tenant = match access::deploy_tenant(&caller, named, "reports") {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let (service, runner) = match service(&a) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let def = match Definition::parse(&body) {
        Ok(d) => d,
        Err(e) => return bad_request(e),
    };
    if def.name != name {
        return bad_request(format!(
            "name: the definition is named {:?}, the URL {name:?}",
            def.name
        ));
    }
    if let Some(dest) = &def.destination
        && let Err(e) = runner.location(dest)
    {
        return bad_request(e);
    }
    // The scope its SQL will run in: the tenant named, or an existing report's.
    let existing = {
        let r = a.reports.clone();
        let name = name.clone();
        match blocking(move || match r.queue.report(&name) {
            Ok(record) => Ok(Some(record)),
            Err(QueueError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
        {
            Ok(e) => e,
            Err(e) => return e,
        }
    };
    let scope = Scope::of(tenant.clone().or(existing.and_then(|r| r.tenant)));
    if let Err(e) = runner.check(&def, &scope).await {
        return bad_request(format!("sql: {}", e.trim_start_matches("SQL: ")));
    }
    let now = reports::now_ms();
    let got = blocking(move || {
        let (record, changed) = service.queue.deploy(&def, &body, now, tenant.as_deref())?;
        let last = service.queue.history(&record.name, 1)?;
        Ok((info(&record, last.first()), changed))
    })
    .await;
    match got {
        Ok((info, changed)) => {
            tracing::info!(report = %info.name, version = info.version, changed, "report deployed");
            a.reports.wake();
            let status = if changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(info)).into_response()
        }
        Err(e) => e,
    }
}

/// `POST /v1/reports/NAME/runs`: `202` once the run is in the queue (committed).
pub(super) async fn run(
    State(a): State<Arc<Admin>>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = owned(&a, &caller.scope(), name.clone()).await {
        return e;
    }
    let req: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("body: {e}")),
        }
    };
    let wait_for_final = match req.wait_for.as_deref() {
        None => None,
        Some("final") => Some(true),
        Some("none") => Some(false),
        Some(other) => {
            return bad_request(format!(
                "wait_for: {other:?}: must be \"final\" or \"none\""
            ));
        }
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX => {
            Some(format!("request/{name}/{k}"))
        }
        Some(_) => {
            return bad_request(format!(
                "Idempotency-Key: must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes of visible ASCII"
            ));
        }
    };
    let new = NewRun {
        report: name,
        trigger: "request",
        scheduled_for_ms: None,
        params: req.params,
        wait_for_final,
        webhook_url: req.webhook_url,
        key,
    };
    let r = a.reports.clone();
    let now = reports::now_ms();
    match blocking(move || r.queue.enqueue(new, now)).await {
        Ok((run, repeat)) => {
            if !repeat {
                tracing::info!(report = %run.report, run = %run.id, params = ?run.params, "report run queued");
                a.reports.wake();
            }
            let body = RunAccepted {
                status_url: format!("/v1/reports/runs/{}", run.id),
                id: run.id,
                repeat,
            };
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, body.status_url.clone())],
                axum::Json(body),
            )
                .into_response()
        }
        Err(e) => e,
    }
}

/// The API view of a run, its output linked (pre-signed in S3).
async fn api_run(a: &Admin, run: reports::RunRecord) -> runnel_client::api::ReportRun {
    let runner = a.report_runner.get().and_then(std::sync::Weak::upgrade);
    let link = match (&run.output, runner) {
        (Some(o), Some(runner)) => Some(reports::link_of(&a.reports, &runner, &run.id, o).await),
        _ => None,
    };
    run.to_api(|_| link.clone().unwrap_or_default())
}

/// Run `id`, if `scope` owns its report; another tenant's is answered as missing.
async fn owned_run(a: &Admin, scope: &Scope, id: String) -> Result<reports::RunRecord, Response> {
    let r = a.reports.clone();
    let run = blocking(move || r.queue.run(&id)).await?;
    match owned(a, scope, run.report.clone()).await {
        Ok(_) => Ok(run),
        Err(_) => Err(super::access::not_yours(&format!("run {:?}", run.id))),
    }
}

/// `GET /v1/reports/runs/ID`.
pub(super) async fn status(
    State(a): State<Arc<Admin>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    match owned_run(&a, &caller.scope(), id).await {
        Ok(run) => axum::Json(api_run(&a, run).await).into_response(),
        Err(e) => e,
    }
}

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
}

/// Most runs one history call lists.
const HISTORY_LIMIT_MAX: usize = 1000;

/// `GET /v1/reports/NAME/runs?limit=N`: newest first.
pub(super) async fn history(
    State(a): State<Arc<Admin>>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match q {
        Ok(Query(q)) => q.limit.unwrap_or(20),
        Err(e) => return bad_request(e.body_text()),
    };
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return bad_request(format!("limit: must be between 1 and {HISTORY_LIMIT_MAX}"));
    }
    if let Err(e) = owned(&a, &caller.scope(), name.clone()).await {
        return e;
    }
    let r = a.reports.clone();
    let runs = match blocking(move || r.queue.history(&name, limit)).await {
        Ok(runs) => runs,
        Err(e) => return e,
    };
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        out.push(api_run(&a, run).await);
    }
    axum::Json(out).into_response()
}

#[derive(Deserialize)]
pub(super) struct OutputQuery {
    token: Option<String>,
}

/// `GET /v1/reports/runs/ID/output?token=T`: the output's bytes, for the run's link token, or
/// for a reader's API token (checked before this handler runs) of the report's tenant.
pub(super) async fn output(
    State(a): State<Arc<Admin>>,
    Path(id): Path<String>,
    caller: Option<Extension<Principal>>,
    q: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(Extension(caller)) = &caller {
        if let Err(e) = owned_run(&a, &caller.scope(), id.clone()).await {
            return e;
        }
    } else {
        let token = match q {
            Ok(Query(OutputQuery { token: Some(t) })) => t,
            Ok(_) => return error(StatusCode::UNAUTHORIZED, "token: missing"),
            Err(e) => return bad_request(e.body_text()),
        };
        if !a.reports.token_ok(&id, &token) {
            return error(StatusCode::FORBIDDEN, "token: not this run's");
        }
    }
    let (service, runner) = match service(&a) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let run = match blocking(move || service.queue.run(&id)).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(out) = &run.output else {
        return error(
            StatusCode::NOT_FOUND,
            format!("run {} has no output yet (it is {:?})", run.id, run.status),
        );
    };
    let content_type = reports::definition::Format::parse(&out.format)
        .map_or("application/octet-stream", |f| f.content_type());
    match runner.read_output(out).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "inline; filename=\"{}-{}.{}\"",
                        run.report, run.id, out.format
                    ),
                ),
            ],
            bytes,
        )
            .into_response(),
        // The store lost it (a retention rule, a deleted bucket).
        Err(e) => error(StatusCode::GONE, e),
    }
}
