//! The dead-letter queue's routes ([`crate::dlq`]):
//! - `GET /v1/dlq[?kind=K&plugin=P&since=T&limit=N]`: entries, oldest first (`since`: RFC 3339,
//!   or an age like `90m`, `2h`, `7d`);
//! - `GET /v1/dlq/ID[?topic=late_events]`: one entry;
//! - `POST /v1/dlq/redrive {"kind", "plugin", "since", "ids"}` (every field optional): re-drives
//!   what they select, once each.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Admin, error};
use crate::dlq::{DlqError, Filter};

fn dlq_error(e: DlqError) -> Response {
    match e {
        DlqError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        DlqError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        DlqError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        DlqError::Storage(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `since`: RFC 3339, or an age (`90s`, `30m`, `2h`, `7d`) before now.
fn parse_since(v: &str) -> Result<i64, Response> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    let unit = |u: &str| match u {
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    let split = v.len().saturating_sub(1);
    match (v[..split].parse::<i64>(), unit(&v[split..])) {
        (Ok(n), Some(ms)) if n >= 0 => Ok(runnel_event::now_ms() - n.saturating_mul(ms)),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("since: {v:?} is neither RFC 3339 nor an age like 30m, 2h or 7d"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    kind: Option<String>,
    plugin: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/dlq`.
pub(super) async fn list(State(a): State<Arc<Admin>>, Query(q): Query<ListQuery>) -> Response {
    let since_ms = match q.since.as_deref().map(parse_since).transpose() {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let filter = Filter {
        kind: q.kind,
        plugin: q.plugin,
        since_ms,
        ids: None,
    };
    let limit = q.limit.unwrap_or(1000);
    if limit > a.read_limit_max {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "limit: {limit} exceeds log_read_limit_max ({})",
                a.read_limit_max
            ),
        );
    }
    let dlq = a.dlq.clone();
    match tokio::task::spawn_blocking(move || dlq.list(&filter, limit)).await {
        Ok(Ok(list)) => axum::Json(list).into_response(),
        Ok(Err(e)) => dlq_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    topic: Option<String>,
}

/// `GET /v1/dlq/ID`.
pub(super) async fn show(
    State(a): State<Arc<Admin>>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("id: {id:?} is not an entry id (a whole number)"),
        );
    };
    let late = match q.topic.as_deref() {
        None | Some("dead_letters") => false,
        Some("late_events") => true,
        Some(t) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("topic: {t:?} is not dead_letters or late_events"),
            );
        }
    };
    let dlq = a.dlq.clone();
    match tokio::task::spawn_blocking(move || dlq.show(id, late)).await {
        Ok(Ok(e)) => axum::Json(e).into_response(),
        Ok(Err(e)) => dlq_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RedriveBody {
    kind: Option<String>,
    plugin: Option<String>,
    since: Option<String>,
    ids: Option<Vec<u64>>,
}

/// `POST /v1/dlq/redrive`.
pub(super) async fn redrive(State(a): State<Arc<Admin>>, body: bytes::Bytes) -> Response {
    let b: RedriveBody = if body.is_empty() {
        RedriveBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let since_ms = match b.since.as_deref().map(parse_since).transpose() {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let filter = Filter {
        kind: b.kind,
        plugin: b.plugin,
        since_ms,
        ids: b.ids,
    };
    if let Err(e) = filter.check() {
        return dlq_error(e);
    }
    match a.dlq.redrive(filter).await {
        Ok(out) => {
            tracing::info!(
                redriven = out.redriven,
                already = out.already,
                "dead letters re-driven"
            );
            axum::Json(out).into_response()
        }
        Err(e) => dlq_error(e),
    }
}
