//! HTTP ingest (`POST /v1/events`) and the agent's admin endpoints.
//!
//! Answers, exactly as in ARCHITECTURE §3:
//! - `202 {"accepted","duplicates","rejected":[{"index","error"}]}` only after the accepted
//!   events are fsynced in the spool; with `clamped` and `dead_lettered` lists when an
//!   event-time bound with that policy was passed (`runnel_event::event_time`);
//! - `400` (same shape) when nothing in the body is valid;
//! - `413` over `body_bytes_max` or `decompressed_bytes_max`; `415` for an unknown
//!   `Content-Encoding`;
//! - `429` (policy `drop_newest`) or `503` (policy `block`, after `spool_full_block_ms`) with
//!   `Retry-After` when the spool is full; `503` with `Retry-After` when the disk is full, the
//!   spool has failed, or `requests_in_flight_max` requests are already being handled; `429`
//!   with `Retry-After` while the broker throttles this agent's tenant (over its
//!   `tenant_ingest_events_per_sec` or `tenant_log_bytes_per_sec`), nothing of the request accepted.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runnel_event::event_time::{EventTimeBounds, Policy, Side, Verdict};
use runnel_event::{BodyFormat, Chunk, EnvelopeLimits, Event, parse_body};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::{AgentConfig, SpoolFullPolicy};
use crate::dedup::{Dedup, id_hash};
use crate::edge::{EdgeChain, EdgeOutcome};
use crate::spool::{Spool, SpoolError};

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub(crate) cfg: AgentConfig,
    pub(crate) limits: EnvelopeLimits,
    pub(crate) event_time: EventTimeBounds,
    pub(crate) spool: Spool,
    pub(crate) dedup: Arc<Mutex<Dedup>>,
    pub(crate) in_flight: Semaphore,
    pub(crate) edge: Option<Arc<Mutex<EdgeChain>>>,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Set while the broker throttles this agent's tenant: requests get 429 meanwhile.
    pub(crate) throttle: Arc<crate::shipper::Throttle>,
    /// The schema registry in force.
    pub(crate) schemas: crate::schemas::Current,
}

/// Checks each event against the schema of its type and version (before dedup, so a rejected
/// event is not taken for a duplicate when it is sent again fixed); the ones that break it
/// become `rejected` entries naming the JSON pointer and the rule, counted in
/// `runnel_agent_schema_rejected_total{event_type,rule}`.
pub fn check_schemas(
    schemas: &runnel_schema::Schemas,
    events: &mut Vec<(usize, Event)>,
    rejected: &mut Vec<Rejected>,
) {
    if schemas.is_empty() {
        return;
    }
    let before = rejected.len();
    events.retain(|(index, ev)| {
        match schemas.check(&ev.event_type, ev.schema_version, ev.properties.as_deref()) {
            Ok(()) => true,
            Err(r) => {
                // Types without a schema are not labelled by name: producers choose them.
                let ty = if r.schema.is_some() || r.violations[0].rule == "schema_version" {
                    ev.event_type.clone()
                } else {
                    "_unregistered".to_string()
                };
                for v in &r.violations {
                    metrics::counter!("runnel_agent_schema_rejected_total", "event_type" => ty.clone(), "rule" => v.rule.clone())
                        .increment(1);
                }
                rejected.push(Rejected {
                    index: *index,
                    error: r.to_string(),
                });
                false
            }
        }
    });
    if rejected.len() > before {
        rejected.sort_by_key(|r| r.index);
    }
}

/// One rejected event in an answer.
#[derive(Debug, Serialize)]
pub struct Rejected {
    /// Position of the event in the body (0-based; NDJSON counts non-empty lines).
    pub index: usize,
    /// `field: rule`.
    pub error: String,
}

/// The body of every ingest answer.
#[derive(Debug, Serialize, Default)]
pub struct IngestAnswer {
    /// Events made durable by this request.
    pub accepted: usize,
    /// Events dropped because their `event_id` was seen within the dedup window.
    pub duplicates: usize,
    /// Invalid events.
    pub rejected: Vec<Rejected>,
    /// Accepted events whose `timestamp` was past an event-time bound with policy `clamp`: set
    /// to `received_at`, the original kept in `properties._original_timestamp`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clamped: Vec<Rejected>,
    /// Accepted events past an event-time bound with policy `dead_letter`: stored and shipped,
    /// then written to the broker's `dead_letters` topic instead of being processed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_lettered: Vec<Rejected>,
    /// Present when the request as a whole failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The router of the agent's HTTP endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    metrics::gauge!("runnel_agent_spool_bytes").set(app.spool.bytes() as f64);
    metrics::gauge!("runnel_agent_dedup_ids").set(app.dedup.lock().expect("lock").len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.spool.failure() {
        None => "ready".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: spool failed: {reason}"),
        )
            .into_response(),
    }
}

fn answer(status: StatusCode, body: &IngestAnswer, retry_after: Option<u64>) -> Response {
    metrics::counter!("runnel_agent_requests_total", "status" => status.as_str().to_string())
        .increment(1);
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn whole_request_error(status: StatusCode, msg: String, retry_after: Option<u64>) -> Response {
    answer(
        status,
        &IngestAnswer {
            error: Some(msg),
            ..IngestAnswer::default()
        },
        retry_after,
    )
}

/// Reads the body, refusing it past `max` bytes without buffering more than that.
async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            whole_request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds body_bytes_max ({max} bytes)"),
                None,
            )
        } else {
            whole_request_error(StatusCode::BAD_REQUEST, format!("reading body: {e}"), None)
        }
    })
}

/// Decompresses into at most `max` bytes; a bomb is refused once it passes the cap.
fn decompress(encoding: &str, raw: &[u8], max: usize) -> Result<Vec<u8>, Response> {
    let reader: Box<dyn Read + '_> = match encoding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        "zstd" => match zstd::stream::read::Decoder::new(raw) {
            Ok(d) => Box::new(d),
            Err(e) => {
                return Err(whole_request_error(
                    StatusCode::BAD_REQUEST,
                    format!("Content-Encoding zstd: {e}"),
                    None,
                ));
            }
        },
        other => {
            return Err(whole_request_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported (use gzip or zstd)"),
                None,
            ));
        }
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max));
    match reader.take(max as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > max => Err(whole_request_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed body exceeds decompressed_bytes_max ({max} bytes)"),
            None,
        )),
        Ok(_) => Ok(out),
        Err(e) => Err(whole_request_error(
            StatusCode::BAD_REQUEST,
            format!("Content-Encoding {encoding}: body does not decompress: {e}"),
            None,
        )),
    }
}

async fn ingest(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let cfg = &app.cfg;
    let Ok(_permit) = app.in_flight.try_acquire() else {
        return whole_request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many requests in flight (requests_in_flight_max = {})",
                cfg.requests_in_flight_max
            ),
            Some(cfg.retry_after_secs),
        );
    };
    // Over the tenant's ingest quota at the broker: take nothing more until it lets batches
    // through (what was accepted is in the spool and ships then).
    if let Some((wait, reason)) = app.throttle.current() {
        return whole_request_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the broker is throttling this agent: {reason}; nothing of this request was accepted, send it again after Retry-After"
            ),
            Some(wait.as_secs_f64().ceil().max(1.0) as u64),
        );
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > cfg.body_bytes_max as u64
    {
        return whole_request_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body of {len} bytes exceeds body_bytes_max ({} bytes)",
                cfg.body_bytes_max
            ),
            None,
        );
    }
    let raw = match read_body(body, cfg.body_bytes_max).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity");
    let decompressed;
    let body: &[u8] = match encoding {
        None => &raw,
        Some(enc) => match decompress(&enc, &raw, cfg.decompressed_bytes_max) {
            Ok(d) => {
                decompressed = d;
                &decompressed
            }
            Err(resp) => return resp,
        },
    };
    let format = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct)
            if ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl") =>
        {
            BodyFormat::Ndjson
        }
        _ => BodyFormat::Json,
    };
    let received_at = crate::clock_ms(cfg);
    let mut parsed = parse_body(body, format, &app.limits, received_at);
    let mut out = IngestAnswer {
        rejected: parsed
            .rejected
            .iter()
            .map(|(index, e)| Rejected {
                index: *index,
                error: e.to_string(),
            })
            .collect(),
        ..IngestAnswer::default()
    };
    for (_, e) in &parsed.rejected {
        let reason = if e.field == "body" {
            "body"
        } else {
            field_label(&e.field)
        };
        metrics::counter!("runnel_agent_events_rejected_total", "field" => reason).increment(1);
    }
    check_schemas(&app.schemas.get(), &mut parsed.events, &mut out.rejected);
    if parsed.events.is_empty() {
        return answer(StatusCode::BAD_REQUEST, &out, None);
    }

    // Dedup: reserve the ids now so concurrent requests see them; undone if they are not stored.
    let mut hashes = Vec::with_capacity(parsed.events.len());
    let mut indices = Vec::with_capacity(parsed.events.len());
    let mut events = Vec::with_capacity(parsed.events.len());
    // The events' record gets a sequence number at or after the durable end now.
    let spool_floor = *app.spool.durable_end().borrow();
    let hold = {
        let mut dedup = app.dedup.lock().expect("lock poisoned");
        dedup.expire(received_at);
        for (index, ev) in parsed.events {
            let h = id_hash(&ev.event_id);
            if dedup.insert(h, received_at) {
                hashes.push(h);
                indices.push(index);
                events.push((index, ev));
            } else {
                out.duplicates += 1;
            }
        }
        (!hashes.is_empty()).then(|| Hold {
            ticket: dedup.hold(spool_floor, hashes),
            dedup: app.dedup.clone(),
            stored: false,
        })
    };
    metrics::counter!("runnel_agent_events_duplicate_total").increment(out.duplicates as u64);
    let Some(mut hold) = hold else {
        return answer(StatusCode::ACCEPTED, &out, None);
    };
    // Edge plugins, the spool append and the end of the hold run to completion even if the
    // client goes away and this handler is dropped: otherwise a dropped request could leave ids
    // reserved whose events were never stored (a retry would then be answered "duplicate"), or
    // release ids whose events the spool did store. A panic in the task drops the hold unstored,
    // which forgets its ids.
    let attempted = indices.len();
    let task_app = app.clone();
    let (result, edge, mut time) = tokio::spawn(async move {
        let app = task_app;
        let mut edge = EdgeOutcome::default();
        let mut events = events;
        if let Some(chain) = app.edge.clone() {
            let limits = app.limits;
            let outcome = tokio::task::spawn_blocking(move || {
                chain.lock().expect("lock poisoned").run(events, &limits)
            })
            .await
            .expect("edge plugin task");
            events = outcome.events;
            edge.dropped = outcome.dropped;
            edge.rejected = outcome.rejected;
        }
        // Event time against the agent's clock, after the edge plugins (which may set it).
        let mut time = TimeOutcome::default();
        events.retain_mut(|(index, ev)| time.judge(&app.event_time, *index, ev));
        // Rejected events were not stored: a retry must not be told "duplicate".
        if !edge.rejected.is_empty() || !time.rejected.is_empty() {
            // `indices` is in body order.
            hold.unreserve(
                edge.rejected
                    .iter()
                    .chain(&time.rejected)
                    .filter_map(|(index, _)| indices.binary_search(index).ok()),
            );
        }
        if events.is_empty() {
            // Every event was dropped or rejected by an edge plugin or refused for its time.
            hold.stored();
            return (Ok(0), edge, time);
        }
        let n = events.len();
        let payload = Chunk {
            events: events.into_iter().map(|(_, e)| e).collect(),
        }
        .encode();
        let result = append_with_policy(&app, payload, received_at)
            .await
            .map(|_| n);
        if result.is_ok() {
            hold.stored();
        }
        (result, edge, time)
    })
    .await
    .unwrap_or_else(|e| {
        (
            Err(SpoolError::Failed(format!("ingest task failed: {e}"))),
            EdgeOutcome::default(),
            TimeOutcome::default(),
        )
    });
    if !time.rejected.is_empty() {
        metrics::counter!("runnel_agent_events_rejected_total", "field" => "timestamp")
            .increment(time.rejected.len() as u64);
        out.rejected.extend(
            std::mem::take(&mut time.rejected)
                .into_iter()
                .map(|(index, error)| Rejected { index, error }),
        );
        out.rejected.sort_by_key(|r| r.index);
    }
    if !edge.rejected.is_empty() {
        metrics::counter!("runnel_agent_events_rejected_total", "field" => "edge_plugin")
            .increment(edge.rejected.len() as u64);
        out.rejected.extend(
            edge.rejected
                .into_iter()
                .map(|(index, error)| Rejected { index, error }),
        );
        out.rejected.sort_by_key(|r| r.index);
    }
    if edge.dropped > 0 {
        metrics::counter!("runnel_agent_events_dropped_total", "reason" => "plugin")
            .increment(edge.dropped as u64);
    }
    let result = result.map(|stored| stored + edge.dropped);
    if matches!(result, Ok(0)) && out.duplicates == 0 {
        // Every event was rejected by an edge plugin.
        return answer(StatusCode::BAD_REQUEST, &out, None);
    }
    let n = result.as_ref().map_or(0, |n| *n);
    match result {
        Ok(_) => {
            out.accepted = n;
            (out.clamped, out.dead_lettered) = time.stored();
            metrics::counter!("runnel_agent_events_accepted_total").increment(n as u64);
            metrics::histogram!("runnel_agent_ingest_seconds")
                .record(started.elapsed().as_secs_f64());
            answer(StatusCode::ACCEPTED, &out, None)
        }
        Err(e) => {
            let (status, retry) = match &e {
                SpoolError::Full { .. } if cfg.spool_full_policy == SpoolFullPolicy::DropNewest => {
                    metrics::counter!("runnel_agent_events_dropped_total", "reason" => "spool_full")
                        .increment(attempted as u64);
                    (StatusCode::TOO_MANY_REQUESTS, Some(cfg.retry_after_secs))
                }
                SpoolError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
                _ => (StatusCode::SERVICE_UNAVAILABLE, Some(cfg.retry_after_secs)),
            };
            out.error = Some(format!(
                "{e}; none of the events in this request were accepted"
            ));
            answer(status, &out, retry)
        }
    }
}

/// A request's hold on the ids it reserved ([`Dedup::hold`]), ended when dropped, however the
/// ingest task ends (a panic included: a hold that outlived its request would keep its ids out of
/// every snapshot and stop spool deletion). Unless [`Hold::stored`] was called, the end forgets
/// the ids: their events were not stored, so a retry must be accepted.
struct Hold {
    dedup: Arc<Mutex<Dedup>>,
    ticket: u64,
    stored: bool,
}

impl Hold {
    /// Forgets the ids at `positions` of the request's reserved ids (their events were refused),
    /// under one lock.
    fn unreserve(&mut self, positions: impl IntoIterator<Item = usize>) {
        self.dedup
            .lock()
            .expect("lock poisoned")
            .unreserve(self.ticket, positions);
    }

    /// The request's events are durable: its ids stay remembered.
    fn stored(&mut self) {
        self.stored = true;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.dedup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.ticket, !self.stored);
    }
}

/// What the event-time bounds did to one request's events.
#[derive(Debug, Default)]
struct TimeOutcome {
    rejected: Vec<(usize, String)>,
    /// Stored past a bound: (index, error, which bound).
    clamped: Vec<(usize, String, Side)>,
    dead_lettered: Vec<(usize, String, Side)>,
}

impl TimeOutcome {
    /// Applies the bounds to the event at `index`; false when it is rejected (not stored).
    fn judge(&mut self, bounds: &EventTimeBounds, index: usize, ev: &mut Event) -> bool {
        let Verdict::OutOfBounds {
            side,
            policy,
            error,
        } = bounds.apply(ev)
        else {
            return true;
        };
        let error = error.to_string();
        match policy {
            Policy::Reject => {
                count_out_of_bounds(side, policy, 1);
                self.rejected.push((index, error));
                return false;
            }
            Policy::Clamp => self.clamped.push((index, error, side)),
            Policy::DeadLetter => self.dead_lettered.push((index, error, side)),
        }
        true
    }

    /// Counts the clamped and dead-lettered events once they are stored (a request the spool
    /// refuses is retried, and must not count twice), and words them for the answer.
    fn stored(self) -> (Vec<Rejected>, Vec<Rejected>) {
        let words = |policy: Policy, list: Vec<(usize, String, Side)>| -> Vec<Rejected> {
            list.into_iter()
                .map(|(index, error, side)| {
                    count_out_of_bounds(side, policy, 1);
                    Rejected { index, error }
                })
                .collect()
        };
        (
            words(Policy::Clamp, self.clamped),
            words(Policy::DeadLetter, self.dead_lettered),
        )
    }
}

fn count_out_of_bounds(side: Side, policy: Policy, n: u64) {
    metrics::counter!(
        "runnel_agent_event_time_out_of_bounds_total",
        "bound" => side.as_str(),
        "policy" => policy.as_str()
    )
    .increment(n);
}

async fn append_with_policy(
    app: &AppState,
    payload: Vec<u8>,
    received_at: i64,
) -> Result<u64, SpoolError> {
    let deadline = Instant::now() + Duration::from_millis(app.cfg.spool_full_block_ms);
    loop {
        match app.spool.append(payload.clone(), received_at).await {
            Err(SpoolError::Full { .. })
                if app.cfg.spool_full_policy == SpoolFullPolicy::Block
                    && Instant::now() < deadline =>
            {
                let left = deadline.saturating_duration_since(Instant::now());
                app.spool
                    .wait_for_space(left.min(Duration::from_millis(100)))
                    .await;
            }
            other => return other,
        }
    }
}

/// Metric label for a rejected field: the envelope's fields by name, anything else as
/// `unknown_field` (keeps label cardinality bounded whatever producers send).
fn field_label(field: &str) -> &'static str {
    runnel_event::fields::TEXT_NAMES
        .iter()
        .chain(&["timestamp", "schema_version"])
        .find(|k| **k == field)
        .copied()
        .unwrap_or("unknown_field")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn hold_of(dedup: &Arc<Mutex<Dedup>>, hashes: &[u64]) -> Hold {
        let mut d = dedup.lock().unwrap();
        for h in hashes {
            assert!(d.insert(*h, 0));
        }
        Hold {
            ticket: d.hold(0, hashes.to_vec()),
            dedup: dedup.clone(),
            stored: false,
        }
    }

    /// A task that panics while it holds a request's ids forgets them (a retry is accepted);
    /// one that stored the events keeps them.
    #[tokio::test]
    async fn a_hold_dropped_by_a_panic_forgets_its_ids() {
        let dedup = Arc::new(Mutex::new(Dedup::new(HOUR, 1000)));
        let hold = hold_of(&dedup, &[1, 2]);
        let task = tokio::spawn(async move {
            let _hold = hold;
            panic!("the ingest task fails");
        });
        assert!(task.await.is_err());
        let mut stored = hold_of(&dedup, &[3]);
        stored.stored();
        drop(stored);
        let mut d = dedup.lock().unwrap();
        assert_eq!(d.held(), 0);
        assert!(
            d.insert(1, 0) && d.insert(2, 0),
            "ids of the failed task are free again"
        );
        assert!(!d.insert(3, 0), "ids of stored events stay duplicates");
    }
}
