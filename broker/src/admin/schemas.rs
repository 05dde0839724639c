//! The schema registry's routes ([`crate::schemas`]):
//! - `GET /v1/schemas` (every type), `GET /v1/schemas/TYPE`;
//! - `POST /v1/schemas/TYPE` with the schema as the body → `201` with the version, `200` when it
//!   is the latest version's schema already, `409` with every violation when it breaks the
//!   type's mode;
//! - `POST /v1/schemas/TYPE/check`: the same verdict, nothing registered;
//! - `PUT /v1/schemas/TYPE/mode` and `GET|PUT /v1/schema-settings` (`{"mode"}`);
//! - `GET /v1/schema-registry`: the document agents validate with, `ETag` its generation
//!   (`If-None-Match` → `304`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runnel_client::api::{
    SchemaCheck, SchemaInfo, SchemaMode, SchemaRegistered, SchemaVersionInfo, SchemaViolation,
};

use super::{Admin, error};
use crate::schemas::{CheckOutcome, Mode, Registry, SchemaError, SchemaRecord};

fn schema_error(event_type: &str, e: SchemaError) -> Response {
    match e {
        SchemaError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        SchemaError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        SchemaError::Incompatible { message, outcome } => {
            let mut body = serde_json::to_value(check(event_type, outcome)).expect("serializes");
            body["error"] = message.into();
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
        SchemaError::Storage(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn blocking<T: Send + 'static>(
    event_type: &str,
    f: impl FnOnce() -> Result<T, SchemaError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(schema_error(event_type, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

fn check(event_type: &str, o: CheckOutcome) -> SchemaCheck {
    SchemaCheck {
        event_type: event_type.to_string(),
        mode: o.mode.to_string(),
        version: o.version,
        compatible: o.violations.is_empty(),
        existing: o.existing,
        violations: o
            .violations
            .into_iter()
            .map(|v| SchemaViolation {
                pointer: v.pointer,
                rule: v.rule,
                against: v.against,
                message: v.message,
            })
            .collect(),
    }
}

fn info(record: SchemaRecord, default: Mode) -> SchemaInfo {
    SchemaInfo {
        event_type: record.event_type,
        mode: record.mode.unwrap_or(default).to_string(),
        mode_is_default: record.mode.is_none(),
        versions: record
            .versions
            .into_iter()
            .map(|v| SchemaVersionInfo {
                version: v.version,
                registered_at: chrono::DateTime::from_timestamp_millis(v.registered_ms)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                schema: v.schema,
            })
            .collect(),
    }
}

fn parse_schema(body: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("schema: the body is not JSON: {e}"),
        )
    })
}

fn registry(a: &Admin) -> Registry {
    a.schemas.clone()
}

/// `GET /v1/schemas`.
pub(super) async fn list(State(a): State<Arc<Admin>>) -> Response {
    let r = registry(&a);
    match blocking("", move || Ok((r.list()?, r.default_mode()?))).await {
        Ok((records, default)) => {
            let list: Vec<SchemaInfo> = records.into_iter().map(|r| info(r, default)).collect();
            axum::Json(list).into_response()
        }
        Err(resp) => resp,
    }
}

/// `GET /v1/schemas/TYPE`.
pub(super) async fn show(State(a): State<Arc<Admin>>, Path(ty): Path<String>) -> Response {
    let r = registry(&a);
    let t = ty.clone();
    match blocking(&ty, move || Ok((r.get(&t)?, r.default_mode()?))).await {
        Ok((record, default)) => axum::Json(info(record, default)).into_response(),
        Err(resp) => resp,
    }
}

/// `POST /v1/schemas/TYPE`.
pub(super) async fn register(
    State(a): State<Arc<Admin>>,
    Path(ty): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let schema = match parse_schema(&body) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let r = registry(&a);
    let t = ty.clone();
    let now = runnel_event::now_ms();
    match blocking(&ty, move || r.register(&t, schema, now)).await {
        Ok((version, created)) => {
            if created {
                metrics::counter!("runnel_schemas_registered_total").increment(1);
                tracing::info!(event_type = %ty, version, "schema registered");
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = SchemaRegistered {
                event_type: ty,
                version,
                created,
            };
            (status, axum::Json(body)).into_response()
        }
        Err(resp) => {
            if resp.status() == StatusCode::CONFLICT {
                metrics::counter!("runnel_schemas_refused_total").increment(1);
            }
            resp
        }
    }
}

/// `POST /v1/schemas/TYPE/check`.
pub(super) async fn check_schema(
    State(a): State<Arc<Admin>>,
    Path(ty): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let schema = match parse_schema(&body) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let r = registry(&a);
    let t = ty.clone();
    match blocking(&ty, move || r.check(&t, &schema)).await {
        Ok(o) => axum::Json(check(&ty, o)).into_response(),
        Err(resp) => resp,
    }
}

fn parse_mode(body: &[u8]) -> Result<Mode, Response> {
    let m: SchemaMode = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("body: expected {{\"mode\": MODE}}: {e}"),
        )
    })?;
    m.mode
        .parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, format!("mode: {e}")))
}

/// `PUT /v1/schemas/TYPE/mode`.
pub(super) async fn set_mode(
    State(a): State<Arc<Admin>>,
    Path(ty): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let mode = match parse_mode(&body) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let r = registry(&a);
    let t = ty.clone();
    match blocking(&ty, move || r.set_mode(Some(&t), mode)).await {
        Ok(()) => axum::Json(SchemaMode {
            mode: mode.to_string(),
        })
        .into_response(),
        Err(resp) => resp,
    }
}

/// `GET /v1/schema-settings`.
pub(super) async fn settings(State(a): State<Arc<Admin>>) -> Response {
    let r = registry(&a);
    match blocking("", move || r.default_mode()).await {
        Ok(mode) => axum::Json(SchemaMode {
            mode: mode.to_string(),
        })
        .into_response(),
        Err(resp) => resp,
    }
}

/// `PUT /v1/schema-settings`.
pub(super) async fn set_settings(State(a): State<Arc<Admin>>, body: bytes::Bytes) -> Response {
    let mode = match parse_mode(&body) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let r = registry(&a);
    match blocking("", move || r.set_mode(None, mode)).await {
        Ok(()) => axum::Json(SchemaMode {
            mode: mode.to_string(),
        })
        .into_response(),
        Err(resp) => resp,
    }
}

/// `GET /v1/schema-registry`.
pub(super) async fn document(State(a): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let doc = a.schemas.document();
    let etag = format!("\"{}\"", doc.generation);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::ETAG, etag)], axum::Json(&*doc)).into_response()
}
