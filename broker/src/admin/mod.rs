//! # admin: the broker's admin HTTP API, a thin layer over the services
//!
//! Each handler checks its request, calls the owning subsystem (log, topics, plugins,
//! pipeline) and answers with the types of `runnel_client::api`.
//!
//! May call: every subsystem's public API; nothing calls it.
//!
//! - `GET /v1/log/stats`: one JSON object (see [`crate::log::Stats`]).
//! - `GET /v1/log/read?from=OFFSET&limit=N`: NDJSON, one stored event per line with its
//!   `offset` and every envelope field; `limit` defaults to 100 and may not exceed
//!   `log_read_limit_max`.
//!   `topic=dead_letters` reads that topic instead (each entry with its topic `offset`).
//! - `GET /v1/plugins`: JSON array, one object per plugin in pipeline order (see
//!   [`PluginInfo`]).
//! - `PUT /v1/plugins/NAME?version=V&policy=hold|skip&param=K=V&deadline_ms=N&memory_bytes_max=N&fuel_per_call=N&capability=clock|random`
//!   with the component as the body: deploys (or redeploys) a plugin. The component is loaded
//!   and its `init` run with the parameters before anything is stored, so a broken plugin is
//!   refused with the reason. `201` for a new version, `200` when nothing changed.
//! - `POST /v1/plugins/NAME/pause`, `POST /v1/plugins/NAME/resume`, `DELETE /v1/plugins/NAME`.
//! - `/v1/reports…`: report definitions, runs and outputs ([`reports`], `docs/reports.md`).
//! - `/v1/tokens…`, `/v1/agents…`: API tokens and agent certificates ([`access`]).
//! - `/v1/erasures…`: erasure requests and their audit ([`erasures`], `docs/privacy.md`).
//! - `/metrics` (Prometheus), `/livez`, `/readyz`.
//!
//! Every route declares who may call it ([`Access`]) where it is added to the router, and the
//! check runs before the handler: a route cannot be added without one. `/livez` and `/readyz`
//! are open, `/metrics` too unless `metrics_auth` is on; every other route needs
//! `Authorization: Bearer TOKEN` with a token of a role at least the route's (401 without a
//! known token, 403 with a role too low). [`route_list`] lists them all, for the tests.

mod access;
mod dlq;
mod dq;
mod erasures;
mod reports;
mod schemas;

pub use access::{Access, Route, route_list};

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::log::BrokerLog;
use crate::pipeline;
use crate::plugins::{self, Deploy, PluginLimits, Registry, RegistryError, Status};

/// Shared state of the admin handlers.
pub struct Admin {
    /// The log.
    pub log: BrokerLog,
    /// The `dead_letters` topic.
    pub dead_letters: runnel_segment::LogReader,
    /// The `late_events` topic.
    pub late_events: runnel_segment::LogReader,
    /// The plugin registry.
    pub registry: Registry,
    /// The schema registry.
    pub schemas: crate::schemas::Registry,
    /// The dead-letter queue.
    pub dlq: crate::dlq::Dlq,
    /// The data-quality checks.
    pub dq: crate::dq::Dq,
    /// The erasure requests.
    pub erasures: crate::erasure::Erasures,
    /// The plugin runtime (deploys are test-loaded in it).
    pub runtime: runnel_host::Runtime,
    /// The pipeline's progress.
    pub pipeline: Arc<pipeline::Shared>,
    /// Ceilings and defaults of plugin limits.
    pub plugin_limits: PluginLimits,
    /// See `BrokerConfig::plugin_capabilities_allowed`.
    pub capabilities_allowed: Vec<String>,
    /// See `BrokerConfig::plugin_isolation_calls_max` and `plugin_isolation_time_ms`.
    pub isolation: pipeline::Isolation,
    /// See `BrokerConfig::log_read_limit_max`.
    pub read_limit_max: usize,
    /// Prometheus renderer.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The running backfill's progress.
    pub backfill: Arc<crate::backfill::Progress>,
    /// The archiver's status (`None`: `archive_enabled` is off).
    pub archive: Option<Arc<crate::archive::Shared>>,
    /// The reports service's queue and keys.
    pub reports: Arc<crate::reports::Reports>,
    /// The reports' runner, set once the query tables (which hold this handle) are made; weak,
    /// so the two do not keep each other alive (the reports task holds it).
    pub report_runner: std::sync::OnceLock<std::sync::Weak<crate::reports::Runner>>,
    /// The API tokens.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The agents and their certificates.
    pub agents: Arc<crate::auth::agents::Agents>,
    /// See `BrokerConfig::metrics_auth`.
    pub metrics_auth: bool,
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    access::router(admin)
}

async fn stats(State(a): State<Arc<Admin>>) -> Response {
    axum::Json(a.log.stats()).into_response()
}

/// `GET /v1/archive`: each archive table's version, files, bytes, partitions and lag; 404 when
/// the archive is off.
async fn archive_status(State(a): State<Arc<Admin>>) -> Response {
    match &a.archive {
        Some(s) => axum::Json(s.status.lock().expect("lock poisoned").clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({ "error": "the archive is off (archive_enabled = false)" }),
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
    topic: Option<String>,
}

/// An error answer: `status` with `{"error": msg}`.
fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

async fn read(
    State(a): State<Arc<Admin>>,
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(format!("query: {e}")),
    };
    let limit = q.limit.unwrap_or(100.min(a.read_limit_max));
    if limit > a.read_limit_max {
        return bad_request(format!(
            "limit: {limit} exceeds log_read_limit_max ({})",
            a.read_limit_max
        ));
    }
    let topic = q.topic.unwrap_or_else(|| "events".into());
    if !crate::topics::TOPICS.contains(&topic.as_str()) {
        return bad_request(format!(
            "topic: {topic:?} is not one of {:?}",
            crate::topics::TOPICS
        ));
    }
    let (log, from) = (a.log.clone(), q.from.unwrap_or(0));
    let side = match topic.as_str() {
        "dead_letters" => Some(a.dead_letters.clone()),
        "late_events" => Some(a.late_events.clone()),
        _ => None,
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if let Some(reader) = side {
            crate::topics::read_entries(&reader, from, limit, |entry| {
                out.extend_from_slice(entry);
                out.push(b'\n');
                true
            })
            .map(|_| out)
        } else {
            log.read_events(from, limit, |ev| {
                serde_json::to_writer(&mut out, &ev).expect("serializing to memory");
                out.push(b'\n');
            })
            .map(|_| out)
        }
    })
    .await;
    match result {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics_text(State(a): State<Arc<Admin>>) -> impl IntoResponse {
    let s = a.log.stats();
    metrics::gauge!("runnel_broker_log_bytes").set(s.bytes as f64);
    metrics::gauge!("runnel_broker_log_segments").set(s.segments as f64);
    metrics::gauge!("runnel_broker_log_end_offset").set(s.end_offset as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        a.metrics.render(),
    )
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    if let Some(f) = a.pipeline.failure.lock().expect("lock poisoned").clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: pipeline failed: {f}"),
        )
            .into_response();
    }
    match a.log.failure() {
        None => "ready".into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: log failed: {r}"),
        )
            .into_response(),
    }
}

use runnel_client::api::{PausePolicy, PluginInfo, PluginStatus, VersionInfo};

fn api_status(s: Status) -> PluginStatus {
    match s {
        Status::Running => PluginStatus::Running,
        Status::Paused => PluginStatus::Paused,
        Status::Backfilling => PluginStatus::Backfilling,
    }
}

fn api_policy(p: plugins::Policy) -> PausePolicy {
    match p {
        plugins::Policy::Hold => PausePolicy::Hold,
        plugins::Policy::Skip => PausePolicy::Skip,
    }
}

fn api_limits(l: PluginLimits) -> runnel_client::api::Limits {
    runnel_client::api::Limits {
        deadline_ms: l.deadline_ms,
        memory_bytes_max: l.memory_bytes_max,
        fuel_per_call: l.fuel_per_call,
    }
}

fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": format!("{e:#}") })),
    )
        .into_response()
}

fn plugin_infos(a: &Admin) -> anyhow::Result<Vec<PluginInfo>> {
    let lag = a
        .log
        .durable_end()
        .saturating_sub(a.pipeline.offset.load(std::sync::atomic::Ordering::Acquire));
    Ok(a.registry
        .list()?
        .into_iter()
        .map(|(p, s)| {
            let limits = p.active_version().limits;
            PluginInfo {
                version: p.active.clone(),
                kind: p.kind.to_string(),
                status: api_status(p.status),
                paused_reason: p.paused_reason.clone(),
                policy: api_policy(p.policy),
                events_in: s.events_in,
                events_out: s.events_out,
                dropped: s.dropped,
                errors: s.errors,
                traps: s.traps,
                last_error: s.last_error.clone(),
                slowest_call_ms: s.slowest_call_ms,
                ns_per_event: s.ns_per_event(),
                fold_ns_per_event: (p.kind == plugins::PluginKind::Aggregate)
                    .then(|| s.fold_ns_per_event()),
                lag,
                limits: api_limits(limits),
                versions: p
                    .versions
                    .iter()
                    .map(|v| VersionInfo {
                        version: v.version.clone(),
                        sha256: v.sha256.clone(),
                        deployed_at: v.deployed_at.clone(),
                        params: v.params.clone(),
                        capabilities: v.capabilities.clone(),
                        events_in: s.events_in_by_version.get(&v.version).copied().unwrap_or(0),
                    })
                    .collect(),
                backfill: p.backfill.as_ref().map(|plan| {
                    a.backfill
                        .of(&p.name)
                        .filter(|b| b.version == plan.version)
                        .unwrap_or_else(|| plugins::queued_backfill(plan))
                }),
                name: p.name,
            }
        })
        .collect())
}

/// Whether `scope` owns the plugin `name` (`Err`: the answer to give when it does not, or
/// when the registry cannot say).
fn owned_plugin(a: &Admin, scope: &crate::auth::Scope, name: &str) -> Result<(), Response> {
    if *scope == crate::auth::Scope::All {
        return Ok(());
    }
    let plugins = a
        .registry
        .plugins()
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response())?;
    match plugins.iter().find(|p| p.name == name) {
        Some(p) if !scope.owns(p.tenant.as_deref()) => {
            Err(access::not_yours(&format!("plugin {name:?}")))
        }
        _ => Ok(()),
    }
}

async fn list_plugins(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
) -> Response {
    let a2 = a.clone();
    let scope = caller.scope();
    match tokio::task::spawn_blocking(move || {
        let owned: std::collections::HashSet<String> = a2
            .registry
            .plugins()?
            .into_iter()
            .filter(|p| scope.owns(p.tenant.as_deref()))
            .map(|p| p.name)
            .collect();
        let mut list = plugin_infos(&a2)?;
        list.retain(|p| owned.contains(&p.name));
        Ok::<_, anyhow::Error>(list)
    })
    .await
    {
        Ok(Ok(list)) => axum::Json(list).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Parses the deploy query string; errors name the parameter.
fn parse_deploy(
    name: &str,
    query: &str,
    ceilings: PluginLimits,
    capabilities_allowed: &[String],
) -> Result<Deploy, String> {
    plugins::check_name(name)?;
    let mut req = Deploy {
        name: name.to_string(),
        version: None,
        policy: None,
        params: Vec::new(),
        limits: ceilings,
        capabilities: Vec::new(),
        kind: plugins::PluginKind::Enrich,
        backfill: None,
        tenant: None,
    };
    let num = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{k}: {v:?} is not a whole number"))
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "version" => {
                plugins::check_version(&v)?;
                req.version = Some(v.into_owned());
            }
            "policy" => req.policy = Some(v.parse()?),
            "backfill_from" => req.backfill = Some(plugins::BackfillFrom::parse(&v)?),
            "tenant" => req.tenant = Some(access::tenant_param(&v)?),
            "param" => {
                let (pk, pv) = v
                    .split_once('=')
                    .ok_or_else(|| format!("param: {v:?} is not KEY=VALUE"))?;
                if pk.is_empty() {
                    return Err(format!("param: {v:?} has an empty key"));
                }
                req.params.push((pk.to_string(), pv.to_string()));
            }
            "deadline_ms" => {
                let n = num("deadline_ms", &v)?;
                if n == 0 || n > ceilings.deadline_ms {
                    return Err(format!(
                        "deadline_ms: {n} must be between 1 and the broker's plugin_deadline_ms ({})",
                        ceilings.deadline_ms
                    ));
                }
                req.limits.deadline_ms = n;
            }
            "memory_bytes_max" => {
                let n = num("memory_bytes_max", &v)?;
                if !(1 << 20..=ceilings.memory_bytes_max).contains(&n) {
                    return Err(format!(
                        "memory_bytes_max: {n} must be between 1 MiB and the broker's plugin_memory_bytes_max ({})",
                        ceilings.memory_bytes_max
                    ));
                }
                req.limits.memory_bytes_max = n;
            }
            "fuel_per_call" => req.limits.fuel_per_call = Some(num("fuel_per_call", &v)?),
            "capability" => {
                runnel_host::Capabilities::parse([v.as_ref()])?;
                if !capabilities_allowed.iter().any(|c| *c == v) {
                    return Err(format!(
                        "capability: {v:?} is not allowed by this broker (plugin_capabilities_allowed: {capabilities_allowed:?})"
                    ));
                }
                if !req.capabilities.iter().any(|c| *c == v) {
                    req.capabilities.push(v.into_owned());
                }
            }
            other => return Err(format!("{other}: unknown deploy parameter")),
        }
    }
    req.capabilities.sort();
    Ok(req)
}

async fn deploy_plugin(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: bytes::Bytes,
) -> Response {
    let mut req = match parse_deploy(
        &name,
        query.as_deref().unwrap_or(""),
        a.plugin_limits,
        &a.capabilities_allowed,
    ) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    req.tenant = match access::deploy_tenant(&caller, req.tenant.take(), "plugins") {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let a2 = a.clone();
    let result = tokio::task::spawn_blocking(move || {
        let sha = plugins::sha256_hex(&body);
        // Load it exactly as the pipeline will: a component that fails here is refused.
        let limits = pipeline::host_limits(&req.limits, &req.capabilities, a2.isolation);
        let mut req = req;
        match a2
            .runtime
            .load_enricher(&req.name, &body, req.params.clone(), limits.clone())
        {
            Ok(_) => req.kind = plugins::PluginKind::Enrich,
            Err(e @ runnel_host::LoadError::Invalid(_)) => {
                // Not an enricher: perhaps an aggregator. If it is one that fails to load
                // (its init refuses, its schema is invalid), that is the error to show.
                match a2
                    .runtime
                    .load_aggregator(&req.name, &body, req.params.clone(), limits)
                {
                    Ok(_) => req.kind = plugins::PluginKind::Aggregate,
                    Err(runnel_host::LoadError::Invalid(_)) => {
                        return Err(bad_request(format!("component: {e}")));
                    }
                    Err(agg) => return Err(bad_request(format!("component: {agg}"))),
                }
            }
            Err(e) => return Err(bad_request(format!("component: {e}"))),
        }
        if let Some(t) = &req.tenant
            && req.kind == plugins::PluginKind::Enrich
        {
            return Err(bad_request(format!(
                "component: an enricher runs over every tenant's events and is deployed by an operator (a token without a tenant); tenant {t:?} may deploy aggregators"
            )));
        }
        let (record, changed) = a2
            .registry
            .deploy(req, &body, &sha)
            .map_err(registry_error)?;
        tracing::info!(plugin = %record.name, version = %record.active, changed, "plugin deployed");
        Ok((record, changed))
    })
    .await;
    match result {
        Ok(Ok((record, changed))) => {
            let status = if changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                axum::Json(serde_json::json!({
                    "name": record.name,
                    "version": record.active,
                    "status": record.status,
                    "policy": record.policy,
                    "changed": changed,
                    "tenant": record.tenant,
                    "backfill": record.backfill.as_ref().map(|b| serde_json::json!({
                        "version": b.version,
                        "from": b.from.label(),
                    })),
                })),
            )
                .into_response()
        }
        Ok(Err(resp)) => resp,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn set_status(a: Arc<Admin>, name: String, status: Status) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        a.registry.set_status(
            &name,
            status,
            (status == Status::Paused).then(|| "paused by an operator".to_string()),
        )
    })
    .await;
    match result {
        Ok(Ok(r)) => axum::Json(serde_json::json!({
            "name": r.name, "version": r.active, "status": r.status
        }))
        .into_response(),
        Ok(Err(e)) => registry_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pause_plugin(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if let Err(resp) = owned_plugin(&a, &caller.scope(), &name) {
        return resp;
    }
    set_status(a, name, Status::Paused).await
}

async fn resume_plugin(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if let Err(resp) = owned_plugin(&a, &caller.scope(), &name) {
        return resp;
    }
    set_status(a, name, Status::Running).await
}

async fn remove_plugin(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if let Err(resp) = owned_plugin(&a, &caller.scope(), &name) {
        return resp;
    }
    match tokio::task::spawn_blocking(move || a.registry.remove(&name)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => registry_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn read_error(e: crate::pipeline::aggregates::ReadError) -> Response {
    use crate::pipeline::aggregates::ReadError;
    let status = match &e {
        ReadError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ReadError::NotFound(_) => StatusCode::NOT_FOUND,
        ReadError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": format!("{e:#}") })),
    )
        .into_response()
}

/// `GET /v1/aggregates`: every running aggregate (name, window, columns, watermark, lag).
async fn list_aggregates(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
) -> Response {
    let scope = caller.scope();
    match crate::pipeline::aggregates::list(&a.pipeline).await {
        Ok(mut list) => {
            list.retain(|g| scope.owns(g.tenant.as_deref()));
            axum::Json(list).into_response()
        }
        Err(e) => read_error(e),
    }
}

#[derive(Deserialize)]
struct RowsQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

fn parse_time(field: &str, v: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{field}: {v:?} is not an RFC 3339 time ({e})"))
}

/// `GET /v1/aggregates/NAME/rows?from=RFC3339&to=RFC3339&limit=N`: NDJSON rows whose window
/// starts in `[from, to)`, in window then key order: final rows (committed or about to be)
/// and the rows of open windows (`is_final: false`).
async fn aggregate_rows(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<crate::auth::Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
    q: Result<Query<RowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(resp) = owned_plugin(&a, &caller.scope(), &name) {
        return resp;
    }
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad_request(format!("query: {e}")),
    };
    let range = (|| {
        let from = q
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?;
        let to = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
        Ok::<_, String>((from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)))
    })();
    let (from, to) = match range {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let limit = q.limit.unwrap_or(a.read_limit_max);
    if limit > a.read_limit_max {
        return bad_request(format!(
            "limit: {limit} exceeds log_read_limit_max ({})",
            a.read_limit_max
        ));
    }
    let (meta, rows) = match crate::query::aggregate_rows(&a, &name, from, to, limit).await {
        Ok(v) => v,
        Err(e) => return read_error(e),
    };
    let mut out = Vec::new();
    for (r, is_final) in &rows {
        serde_json::to_writer(
            &mut out,
            &crate::pipeline::aggregates::row_json(&meta, r, *is_final),
        )
        .expect("serializing to memory");
        out.push(b'\n');
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}
