//! The broker's admin HTTP API.
//!
//! - `GET /v1/log/stats`: one JSON object (see [`crate::log::Stats`]).
//! - `GET /v1/log/read?from=OFFSET&limit=N`: NDJSON, one stored event per line with its
//!   `offset` and every envelope field; `limit` defaults to 100 and may not exceed
//!   `log_read_limit_max`.
//! - `/metrics` (Prometheus), `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::log::BrokerLog;

/// Shared state of the admin handlers.
pub struct Admin {
    /// The log.
    pub log: BrokerLog,
    /// See `BrokerConfig::log_read_limit_max`.
    pub read_limit_max: usize,
    /// Prometheus renderer.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/v1/log/stats", get(stats))
        .route("/v1/log/read", get(read))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn stats(State(a): State<Arc<Admin>>) -> Response {
    axum::Json(a.log.stats()).into_response()
}

#[derive(Deserialize)]
struct ReadQuery {
    from: Option<u64>,
    limit: Option<usize>,
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
    let limit = q.limit.unwrap_or(100);
    if limit > a.read_limit_max {
        return bad_request(format!(
            "limit: {limit} exceeds log_read_limit_max ({})",
            a.read_limit_max
        ));
    }
    let (log, from) = (a.log.clone(), q.from.unwrap_or(0));
    let result = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        log.read_events(from, limit, |ev| {
            serde_json::to_writer(&mut out, &ev).expect("serializing to memory");
            out.push(b'\n');
        })
        .map(|_| out)
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
    match a.log.failure() {
        None => "ready".into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: log failed: {r}"),
        )
            .into_response(),
    }
}
