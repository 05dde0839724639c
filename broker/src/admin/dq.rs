//! The data-quality checks' routes ([`crate::dq`]): `GET /v1/dq` (every checked type with each
//! check's state), `PUT /v1/dq/TYPE` with the checks (`{"freshness_secs": 300, ...}`),
//! `DELETE /v1/dq/TYPE`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{Admin, error};
use crate::dq::Checks;

/// `GET /v1/dq`.
pub(super) async fn list(State(a): State<Arc<Admin>>) -> Response {
    axum::Json(a.dq.states()).into_response()
}

/// `PUT /v1/dq/TYPE`.
pub(super) async fn set(
    State(a): State<Arc<Admin>>,
    Path(ty): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let checks: Checks = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let dq = a.dq.clone();
    let t = ty.clone();
    match tokio::task::spawn_blocking(move || dq.set(&t, checks)).await {
        Ok(Ok(())) => {
            let state = a.dq.states().into_iter().find(|s| s.event_type == ty);
            axum::Json(state).into_response()
        }
        Ok(Err(e)) if e.starts_with("state.redb") => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `DELETE /v1/dq/TYPE`.
pub(super) async fn remove(State(a): State<Arc<Admin>>, Path(ty): Path<String>) -> Response {
    let dq = a.dq.clone();
    let t = ty.clone();
    match tokio::task::spawn_blocking(move || dq.remove(&t)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(
            StatusCode::NOT_FOUND,
            format!("{ty:?} has no data-quality checks"),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
