//! The erasure routes ([`crate::erasure`]), an operator's (admin token):
//! - `POST /v1/erasures {"user_id": "…"}` (any identity field of `erasure_identity_fields`):
//!   `202` with the request once it is durable;
//! - `GET /v1/erasures`: every request, oldest first, with its progress and audit;
//! - `GET /v1/erasures/ID`: one.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{Admin, error};
use crate::erasure::ErasureError;

fn erasure_error(e: ErasureError) -> Response {
    match e {
        ErasureError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        ErasureError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        ErasureError::Busy(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        ErasureError::Storage(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// `POST /v1/erasures`.
pub(super) async fn request(State(a): State<Arc<Admin>>, body: bytes::Bytes) -> Response {
    let values: BTreeMap<String, String> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body: {e} (an object of identity field to string value, like {{\"user_id\": \"u-1\"}})"
                ),
            );
        }
    };
    let erasures = a.erasures.clone();
    let now = runnel_event::now_ms();
    match tokio::task::spawn_blocking(move || erasures.request(&values, now)).await {
        Ok(Ok(r)) => {
            tracing::info!(id = r.id, "erasure requested");
            (StatusCode::ACCEPTED, axum::Json(r.status(now))).into_response()
        }
        Ok(Err(e)) => erasure_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v1/erasures`.
pub(super) async fn list(State(a): State<Arc<Admin>>) -> Response {
    let erasures = a.erasures.clone();
    match tokio::task::spawn_blocking(move || erasures.list()).await {
        Ok(Ok(list)) => {
            let now = runnel_event::now_ms();
            axum::Json(list.iter().map(|r| r.status(now)).collect::<Vec<_>>()).into_response()
        }
        Ok(Err(e)) => erasure_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v1/erasures/ID`.
pub(super) async fn show(State(a): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("id: {id:?} is not a number"),
        );
    };
    let erasures = a.erasures.clone();
    match tokio::task::spawn_blocking(move || erasures.get(id)).await {
        Ok(Ok(r)) => axum::Json(r.status(runnel_event::now_ms())).into_response(),
        Ok(Err(e)) => erasure_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
