//! Who may call what: every route with its [`Access`], the check that runs before each handler,
//! and the token and agent routes (`docs/SECURITY.md`).
//!
//! - `POST /v1/tokens {"role", "tenant"?, "description"?}` → `201` with the token (shown only
//!   here); `GET /v1/tokens` (ids, roles, tenants; never a token); `DELETE /v1/tokens/ID`.
//! - `GET /v1/routes`: every route with who may call it (`open`, `metrics`, `report_link`, or
//!   the least role).
//! - `POST /v1/agents {"name", "tenant"}` → `201` with a certificate and key for the agent;
//!   `GET /v1/agents`; `POST /v1/agents/NAME/revoke` (refused from the next connection attempt,
//!   open connections closed).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde::Deserialize;

use super::{Admin, dlq, dq, erasures, reports, schemas};
use crate::auth::{AuthError, Principal, Role};

/// A `tenant=` query parameter, checked; the error names the parameter.
pub(super) fn tenant_param(v: &str) -> Result<String, String> {
    runnel_protocol::check_tenant(v).map_err(|e| format!("tenant: {e}"))?;
    Ok(v.to_string())
}

/// The tenant a deploy of `what` (plugins, reports) is for: a tenant's token deploys for its
/// own tenant (naming another is refused); an operator's may name one, or none (global).
pub(super) fn deploy_tenant(
    caller: &Principal,
    named: Option<String>,
    what: &str,
) -> Result<Option<String>, String> {
    match &caller.tenant {
        Some(own) if named.as_ref().is_some_and(|t| t != own) => Err(format!(
            "tenant: this token belongs to tenant {own:?} and may deploy that tenant's {what} only"
        )),
        Some(own) => Ok(Some(own.clone())),
        None => Ok(named),
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/livez`, `/readyz`).
    Open,
    /// Anyone, or a token of any role when `metrics_auth` is on (`/metrics`).
    Metrics,
    /// A token of this role or a higher one.
    Role(Role),
    /// A reader token, or the run's own link token in `?token=` (checked by the handler).
    ReportLink,
}

/// Whether a tenant's token may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// The handler answers with the caller's tenant's things only (its plugins, aggregates,
    /// reports, tokens, agents), so a tenant's token may call it.
    Scoped,
    /// It shows or changes the whole broker: an operator's token (without a tenant) only.
    Platform,
}

/// A route of the admin API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Its HTTP method.
    pub method: &'static str,
    /// Its path, `{param}` for a path parameter.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether a tenant's token may.
    pub tenancy: Tenancy,
}

type Handler = MethodRouter<Arc<Admin>>;

/// Every route, with who may call it and its handler: the one list the router is built from.
fn table() -> Vec<(Route, Handler)> {
    use Access::{Metrics, Open, ReportLink};
    const READER: Access = Access::Role(Role::Reader);
    const DEPLOYER: Access = Access::Role(Role::Deployer);
    const ADMIN: Access = Access::Role(Role::Admin);
    // Routes whose handlers answer with the caller's tenant's things only.
    const SCOPED: &[&str] = &[
        "/v1/plugins",
        "/v1/plugins/{name}",
        "/v1/plugins/{name}/pause",
        "/v1/plugins/{name}/resume",
        "/v1/aggregates",
        "/v1/aggregates/{name}/rows",
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/agents",
        "/v1/agents/{name}/revoke",
        "/v1/reports",
        "/v1/reports/{name}",
        "/v1/reports/{name}/runs",
        "/v1/reports/runs/{id}",
        "/v1/reports/runs/{id}/output",
        "/v1/routes",
    ];
    let r = |method, path, access, handler: Handler| {
        let tenancy = if SCOPED.contains(&path) {
            Tenancy::Scoped
        } else {
            Tenancy::Platform
        };
        (
            Route {
                method,
                path,
                access,
                tenancy,
            },
            handler,
        )
    };
    vec![
        r("GET", "/v1/log/stats", READER, get(super::stats)),
        r("GET", "/v1/log/read", READER, get(super::read)),
        r("GET", "/v1/plugins", READER, get(super::list_plugins)),
        r(
            "PUT",
            "/v1/plugins/{name}",
            DEPLOYER,
            put(super::deploy_plugin),
        ),
        r(
            "DELETE",
            "/v1/plugins/{name}",
            DEPLOYER,
            delete(super::remove_plugin),
        ),
        r(
            "POST",
            "/v1/plugins/{name}/pause",
            DEPLOYER,
            post(super::pause_plugin),
        ),
        r(
            "POST",
            "/v1/plugins/{name}/resume",
            DEPLOYER,
            post(super::resume_plugin),
        ),
        r("GET", "/v1/aggregates", READER, get(super::list_aggregates)),
        r(
            "GET",
            "/v1/aggregates/{name}/rows",
            READER,
            get(super::aggregate_rows),
        ),
        r("GET", "/v1/archive", READER, get(super::archive_status)),
        r("GET", "/v1/reports", READER, get(reports::list)),
        r("PUT", "/v1/reports/{name}", DEPLOYER, put(reports::deploy)),
        r(
            "GET",
            "/v1/reports/{name}/runs",
            READER,
            get(reports::history),
        ),
        r(
            "POST",
            "/v1/reports/{name}/runs",
            DEPLOYER,
            post(reports::run),
        ),
        r("GET", "/v1/reports/runs/{id}", READER, get(reports::status)),
        r(
            "GET",
            "/v1/reports/runs/{id}/output",
            ReportLink,
            get(reports::output),
        ),
        r("GET", "/v1/dlq", READER, get(dlq::list)),
        r("GET", "/v1/dlq/{id}", READER, get(dlq::show)),
        r("POST", "/v1/dlq/redrive", DEPLOYER, post(dlq::redrive)),
        r("POST", "/v1/erasures", ADMIN, post(erasures::request)),
        r("GET", "/v1/erasures", ADMIN, get(erasures::list)),
        r("GET", "/v1/erasures/{id}", ADMIN, get(erasures::show)),
        r("GET", "/v1/dq", READER, get(dq::list)),
        r("PUT", "/v1/dq/{event_type}", DEPLOYER, put(dq::set)),
        r(
            "DELETE",
            "/v1/dq/{event_type}",
            DEPLOYER,
            delete(dq::remove),
        ),
        r("GET", "/v1/schemas", READER, get(schemas::list)),
        r(
            "GET",
            "/v1/schemas/{event_type}",
            READER,
            get(schemas::show),
        ),
        r(
            "POST",
            "/v1/schemas/{event_type}",
            DEPLOYER,
            post(schemas::register),
        ),
        r(
            "POST",
            "/v1/schemas/{event_type}/check",
            READER,
            post(schemas::check_schema),
        ),
        r(
            "PUT",
            "/v1/schemas/{event_type}/mode",
            DEPLOYER,
            put(schemas::set_mode),
        ),
        r("GET", "/v1/schema-settings", READER, get(schemas::settings)),
        r(
            "PUT",
            "/v1/schema-settings",
            DEPLOYER,
            put(schemas::set_settings),
        ),
        r("GET", "/v1/schema-registry", READER, get(schemas::document)),
        r("POST", "/v1/tokens", ADMIN, post(create_token)),
        r("GET", "/v1/tokens", ADMIN, get(list_tokens)),
        r("DELETE", "/v1/tokens/{id}", ADMIN, delete(revoke_token)),
        r("POST", "/v1/agents", ADMIN, post(enroll_agent)),
        r("GET", "/v1/agents", ADMIN, get(list_agents)),
        r(
            "POST",
            "/v1/agents/{name}/revoke",
            ADMIN,
            post(revoke_agent),
        ),
        r("GET", "/v1/routes", READER, get(list_routes)),
        r("GET", "/metrics", Metrics, get(super::metrics_text)),
        r("GET", "/livez", Open, get(|| async { "ok" })),
        r("GET", "/readyz", Open, get(super::readyz)),
    ]
}

/// Every route of the admin API with who may call it.
pub fn route_list() -> Vec<Route> {
    table().into_iter().map(|(r, _)| r).collect()
}

impl Access {
    /// Its name in `GET /v1/routes`: `open`, `metrics`, `report_link` or the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Metrics => "metrics",
            Access::ReportLink => "report_link",
            Access::Role(r) => r.as_str(),
        }
    }
}

/// `GET /v1/routes`: every route (method, path, who may call it), from the table the router is
/// built from.
async fn list_routes() -> Response {
    let list: Vec<_> = route_list()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "method": r.method,
                "path": r.path,
                "access": r.access.as_str(),
                "tenant_tokens": r.tenancy == Tenancy::Scoped,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

#[derive(Clone)]
struct Guard {
    access: Access,
    tenancy: Tenancy,
    admin: Arc<Admin>,
}

/// The admin router: each route behind its check.
pub fn router(admin: Arc<Admin>) -> Router {
    let mut router = Router::new();
    for (route, handler) in table() {
        let guard = Guard {
            access: route.access,
            tenancy: route.tenancy,
            admin: admin.clone(),
        };
        router = router.route(
            route.path,
            handler.route_layer(axum::middleware::from_fn_with_state(guard, check)),
        );
    }
    router.with_state(admin)
}

fn refuse(status: StatusCode, msg: String) -> Response {
    metrics::counter!("runnel_admin_refused_total", "status" => status.as_u16().to_string())
        .increment(1);
    let mut resp = (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// The caller's token: `Authorization: Bearer TOKEN`.
fn bearer(req: &Request) -> Result<Option<&str>, String> {
    let Some(h) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = h
        .to_str()
        .map_err(|_| "authorization: not ASCII".to_string())?;
    v.strip_prefix("Bearer ")
        .map(|t| Some(t.trim()))
        .ok_or_else(|| "authorization: expected 'Bearer TOKEN'".to_string())
}

async fn check(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let need = match g.access {
        Access::Open => return next.run(req).await,
        Access::Metrics if !g.admin.metrics_auth => return next.run(req).await,
        Access::Metrics => Role::Reader,
        Access::Role(r) => r,
        Access::ReportLink => {
            let has_link = req
                .uri()
                .query()
                .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "token"));
            if has_link && req.headers().get(header::AUTHORIZATION).is_none() {
                return next.run(req).await;
            }
            Role::Reader
        }
    };
    let token = match bearer(&req) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "authorization: missing; send 'Authorization: Bearer TOKEN' (runnel reads --token, RUNNEL_TOKEN or the broker's DATA_DIR/admin-token)".into(),
            );
        }
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e),
    };
    let Some(principal) = g.admin.tokens.check(token) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authorization: not a token of this broker (revoked, or never created)".into(),
        );
    };
    if principal.role < need {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "this call needs a token of role {need} or higher; token {} has role {}",
                principal.token_id, principal.role
            ),
        );
    }
    if let Some(tenant) = &principal.tenant
        && g.tenancy == Tenancy::Platform
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "this call is about the whole broker and needs an operator's token (one without a tenant); token {} belongs to tenant {tenant:?}",
                principal.token_id
            ),
        );
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The 404 a caller gets for another tenant's thing: to it, there is no such thing.
pub(super) fn not_yours(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            serde_json::json!({ "error": format!("{what}: no such thing of this token's tenant") }),
        ),
    )
        .into_response()
}

fn auth_error(e: AuthError) -> Response {
    let status = match &e {
        AuthError::NotFound(_) => StatusCode::NOT_FOUND,
        AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
        AuthError::Conflict(_) => StatusCode::CONFLICT,
        AuthError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn blocking<T: serde::Serialize + Send + 'static>(
    status: StatusCode,
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => (status, axum::Json(v)).into_response(),
        Ok(Err(e)) => auth_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn json_body<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| super::bad_request(format!("body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: String,
    tenant: Option<String>,
    #[serde(default)]
    description: String,
}

async fn create_token(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
    body: bytes::Bytes,
) -> Response {
    let req: NewToken = match json_body(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let role: Role = match req.role.parse() {
        Ok(r) => r,
        Err(e) => return super::bad_request(e),
    };
    // A tenant's admin makes tokens of its own tenant only.
    if let Some(own) = &caller.tenant
        && req.tenant.as_ref() != Some(own)
    {
        return super::bad_request(format!(
            "tenant: this token belongs to tenant {own:?} and may create tokens of that tenant only"
        ));
    }
    blocking(StatusCode::CREATED, move || {
        let (token, record) = a.tokens.create(role, req.tenant, req.description)?;
        Ok(serde_json::json!({
            "token": token,
            "id": record.id,
            "role": record.role,
            "tenant": record.tenant,
            "description": record.description,
            "created_at": record.created_at,
        }))
    })
    .await
}

async fn list_tokens(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
) -> Response {
    let scope = caller.scope();
    let mut list = a.tokens.list();
    list.retain(|t| scope.owns(t.tenant.as_deref()));
    axum::Json(list).into_response()
}

async fn revoke_token(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let scope = caller.scope();
    if !a
        .tokens
        .list()
        .iter()
        .any(|t| t.id == id && scope.owns(t.tenant.as_deref()))
        && scope != crate::auth::Scope::All
    {
        return not_yours(&format!("token {id:?}"));
    }
    blocking(StatusCode::OK, move || a.tokens.revoke(&id)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgent {
    name: String,
    tenant: String,
}

async fn enroll_agent(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
    body: bytes::Bytes,
) -> Response {
    let req: NewAgent = match json_body(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(own) = &caller.tenant
        && *own != req.tenant
    {
        return super::bad_request(format!(
            "tenant: this token belongs to tenant {own:?} and may enroll agents of that tenant only"
        ));
    }
    blocking(StatusCode::CREATED, move || {
        a.agents.enroll(&req.name, &req.tenant)
    })
    .await
}

async fn list_agents(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
) -> Response {
    let scope = caller.scope();
    blocking(StatusCode::OK, move || {
        let mut list = a.agents.list()?;
        list.retain(|r| scope.sees(&r.tenant));
        Ok(list)
    })
    .await
}

async fn revoke_agent(
    State(a): State<Arc<Admin>>,
    axum::Extension(caller): axum::Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let scope = caller.scope();
    let tenants = a.agents.tenants().snapshot();
    if scope != crate::auth::Scope::All && !tenants.sees(&scope, &name) {
        return not_yours(&format!("agent {name:?}"));
    }
    blocking(StatusCode::OK, move || a.agents.revoke(&name)).await
}
