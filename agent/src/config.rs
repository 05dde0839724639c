//! Agent configuration, declared once.
//!
//! Every setting is a field of [`AgentConfig`] with a doc comment and a default. Each can be set
//! in a TOML file (`--config FILE`, key = field name), by environment variable `RUNNEL_<FIELD>`
//! and by flag `--<field-with-dashes>`; a flag beats the environment, which beats the file, which
//! beats the default. `runnel-agent --help` lists them all; `docs/CONFIG.md` is checked against
//! [`AgentConfig::documented_keys`] by a test.

use std::net::SocketAddr;
use std::path::PathBuf;

use runnel_config::{ConfigError, settings};
use runnel_event::event_time::{Bound, EventTimeBounds, Policy as EventTimePolicy};
use serde::{Deserialize, Serialize};

/// The largest `clock_offset_ms` either way: ten years, so every `received_at` stays a time.
pub const CLOCK_OFFSET_MS_MAX: u64 = 315_576_000_000;

/// What the agent does when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Hold the request until space frees up (at most `spool_full_block_ms`), then answer 503.
    Block,
    /// Answer 429 at once and count the events in `runnel_agent_events_dropped_total`.
    DropNewest,
}

impl std::str::FromStr for SpoolFullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(Self::Block),
            "drop_newest" => Ok(Self::DropNewest),
            _ => Err("expected block or drop_newest".into()),
        }
    }
}

settings! {
    AgentConfig;
    /// Directory for the spool, the agent identity and the dedup snapshot. Required.
    data_dir: PathBuf [PathBuf] = PathBuf::new();
    /// Address of the HTTP ingest and admin endpoints.
    http_addr: SocketAddr [SocketAddr] = "127.0.0.1:8710".parse().expect("valid address");
    /// Address of the broker's QUIC endpoint.
    broker_addr: SocketAddr [SocketAddr] = "127.0.0.1:8711".parse().expect("valid address");
    /// PEM file with the CA that signed the broker's certificate (the broker writes its dev CA
    /// to `DATA_DIR/tls/ca.pem`). Required unless the agent is started by `runnel dev`.
    broker_ca: Option<PathBuf> [PathBuf] = None;
    /// Name the broker's certificate must carry.
    broker_server_name: String [String] = "localhost".to_string();
    /// PEM certificate this agent presents to the broker (`runnel agent enroll` writes one);
    /// its subject's common name is the agent's id. Required: the broker admits only agents
    /// with a certificate signed by its client CA.
    tls_cert: Option<PathBuf> [PathBuf] = None;
    /// PEM private key of `tls_cert`.
    tls_key: Option<PathBuf> [PathBuf] = None;
    /// Id of this agent: when set, it must be the common name of `tls_cert` (a check against
    /// using the wrong certificate). The certificate's is kept in `data_dir/agent_id`, and a
    /// data dir is refused to a certificate of another agent (its spool is that agent's).
    agent_id: Option<String> [String] = None;
    /// Largest request body as sent, in bytes (413 above it).
    body_bytes_max: usize [usize] = 8 << 20;
    /// Largest request body after gzip/zstd decompression, in bytes (413 above it). One request
    /// becomes one spool record of at most twice this, which must fit the broker's
    /// `batch_bytes_max` (64 MiB by default).
    decompressed_bytes_max: usize [usize] = 16 << 20;
    /// Most events in one request body (400 above it).
    events_per_request_max: usize [usize] = 50_000;
    /// Largest `properties` object of one event, in bytes of JSON.
    properties_bytes_max: usize [usize] = 64 << 10;
    /// Deepest nesting inside `properties`.
    properties_depth_max: usize [usize] = 32;
    /// Largest optional string field (`user_id`, `platform`, …), in bytes.
    field_bytes_max: usize [usize] = 256;
    /// Requests handled at once; more get 503 with Retry-After.
    requests_in_flight_max: usize [usize] = 1024;
    /// How long an `event_id` is remembered for dedup, in seconds.
    dedup_window_secs: u64 [u64] = 3600;
    /// Most event ids remembered; past it the oldest time bucket is forgotten early (counted in
    /// `runnel_agent_dedup_evicted_early_total`). About 35 bytes of memory per id.
    dedup_ids_max: usize [usize] = 10_000_000;
    /// Most bytes the spool may hold on disk.
    spool_bytes_max: u64 [u64] = 1 << 30;
    /// Edge plugin (a wasm32-wasip2 component of the `enricher` world) run on every accepted
    /// batch before it is spooled; repeat the flag for several, run in order. Reloaded when the
    /// file changes.
    edge_plugin: Vec<PathBuf> [PathBuf, repeated] = Vec::new();
    /// Longest one edge plugin call may run, in ms (then the call is interrupted).
    edge_plugin_deadline_ms: u64 [u64] = 200;
    /// Largest linear memory of one edge plugin instance, in bytes.
    edge_plugin_memory_bytes_max: usize [usize] = 64 << 20;
    /// Size at which a spool segment is sealed and a new one started, in bytes.
    spool_segment_bytes_max: u64 [u64] = 64 << 20;
    /// Age at which a spool segment is sealed whatever its size, in ms: only sealed segments
    /// are deleted once acknowledged, so this bounds how long an event the broker has stays on
    /// the agent's disk (an erasure's promise, docs/privacy.md).
    spool_seal_after_ms: u64 [u64] = 600_000;
    /// Scan every sealed spool segment at start (checking each record's CRC) instead of taking
    /// its figures from the index file written when it was sealed. Off, the records are checked
    /// by the dedup rebuild that follows (it reads the whole spool), and a bad one makes the
    /// start open the spool again, which scans that segment and quarantines it.
    spool_scan_sealed_at_open: bool [bool] = false;
    /// What to do when the spool is full.
    spool_full_policy: SpoolFullPolicy [SpoolFullPolicy] = SpoolFullPolicy::Block;
    /// With `block`, how long a request waits for spool space before it gets 503, in ms.
    spool_full_block_ms: u64 [u64] = 5_000;
    /// How far an event's `timestamp` may be ahead of the agent's clock (its `received_at`), in
    /// ms. A device whose clock is wrong would otherwise open windows nobody reads.
    event_time_future_max_ms: u64 [u64] = 15 * 60_000;
    /// What happens to an event further ahead than `event_time_future_max_ms`: `reject` (a
    /// `rejected` entry naming the setting), `clamp` (`timestamp` set to `received_at`, the
    /// original kept in `properties._original_timestamp`) or `dead_letter` (accepted, then written
    /// to the broker's `dead_letters` topic and counted in no aggregate).
    event_time_future_policy: EventTimePolicy [EventTimePolicy] = EventTimePolicy::Reject;
    /// How far an event's `timestamp` may be behind the agent's clock, in ms; unset: any age.
    event_time_past_max_ms: Option<u64> [u64] = None;
    /// What happens to an event further behind than `event_time_past_max_ms` (as
    /// `event_time_future_policy`).
    event_time_past_policy: EventTimePolicy [EventTimePolicy] = EventTimePolicy::Reject;
    /// Added to the host's clock for every `received_at`, in ms (may be negative): corrects a host
    /// whose clock is known to be off; tests use it to play a host with a wrong clock.
    clock_offset_ms: i64 [i64] = 0;
    /// `Retry-After` sent with 429 and 503 answers, in seconds.
    retry_after_secs: u64 [u64] = 1;
    /// Most bytes of spool records in one shipped batch.
    ship_batch_bytes_max: usize [usize] = 4 << 20;
    /// Most batches sent to the broker and not yet answered (1 to 16): the shipper keeps this
    /// many in flight on one stream, answered in order.
    ship_in_flight_max: usize [usize] = 8;
    /// How long the shipper waits for a batch to fill before sending a partial one, in ms.
    ship_linger_ms: u64 [u64] = 2;
    /// How long the shipper waits for the broker's answer to one batch, in ms.
    ship_timeout_ms: u64 [u64] = 10_000;
    /// First retry delay when the broker is unreachable, in ms (doubles, with jitter).
    ship_backoff_min_ms: u64 [u64] = 50;
    /// Longest retry delay when the broker is unreachable, in ms.
    ship_backoff_max_ms: u64 [u64] = 5_000;
}

impl AgentConfig {
    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, rule: &str| Err(ConfigError::new(field, rule));
        if self.data_dir.as_os_str().is_empty() {
            return fail(
                "data_dir",
                "is required (--data-dir, RUNNEL_DATA_DIR or config key)",
            );
        }
        if self.body_bytes_max == 0 || self.decompressed_bytes_max < self.body_bytes_max {
            return fail(
                "decompressed_bytes_max",
                "must be at least body_bytes_max (> 0)",
            );
        }
        if self.broker_ca.is_none() {
            return fail(
                "broker_ca",
                "is required: pass --broker-ca with the broker's CA (the broker writes DATA_DIR/tls/ca.pem)",
            );
        }
        if self.tls_cert.is_none() || self.tls_key.is_none() {
            return fail(
                if self.tls_cert.is_none() {
                    "tls_cert"
                } else {
                    "tls_key"
                },
                "is required: the broker admits only agents with a certificate; enroll this agent (runnel agent enroll --name NAME --tenant TENANT) and pass --tls-cert and --tls-key",
            );
        }
        if let Some(id) = &self.agent_id
            && (id.is_empty() || id.len() > 256)
        {
            return fail("agent_id", "must be 1 to 256 bytes (the broker's limit)");
        }
        if self.events_per_request_max == 0 {
            return fail("events_per_request_max", "must be at least 1");
        }
        if self.requests_in_flight_max == 0 {
            return fail("requests_in_flight_max", "must be at least 1");
        }
        if self.dedup_window_secs == 0 {
            return fail("dedup_window_secs", "must be at least 1");
        }
        if self.spool_seal_after_ms == 0 || i64::try_from(self.spool_seal_after_ms).is_err() {
            return fail("spool_seal_after_ms", "must be > 0 and fit in 63 bits");
        }
        if self.spool_segment_bytes_max < 64 << 10 {
            return fail("spool_segment_bytes_max", "must be at least 65536");
        }
        if self.spool_bytes_max < 2 * self.spool_segment_bytes_max {
            return fail(
                "spool_bytes_max",
                "must be at least twice spool_segment_bytes_max",
            );
        }
        if self.ship_batch_bytes_max as u64 > self.spool_segment_bytes_max
            || self.ship_batch_bytes_max < 1024
        {
            return fail(
                "ship_batch_bytes_max",
                "must be between 1024 and spool_segment_bytes_max",
            );
        }
        if self.decompressed_bytes_max as u64 > self.spool_segment_bytes_max / 2 {
            return fail(
                "decompressed_bytes_max",
                "must be at most half of spool_segment_bytes_max (one request is one spool record)",
            );
        }
        if self.clock_offset_ms.unsigned_abs() > CLOCK_OFFSET_MS_MAX {
            return fail(
                "clock_offset_ms",
                "must be within ±10 years (315576000000 ms)",
            );
        }
        if self.ship_in_flight_max == 0
            || self.ship_in_flight_max > runnel_protocol::STREAM_BATCHES_MAX
        {
            let max = runnel_protocol::STREAM_BATCHES_MAX;
            return fail(
                "ship_in_flight_max",
                &format!(
                    "must be between 1 and {max} (the broker answers at most {max} batches of a stream at once)"
                ),
            );
        }
        if self.ship_backoff_min_ms == 0 || self.ship_backoff_max_ms < self.ship_backoff_min_ms {
            return fail("ship_backoff_max_ms", "must be >= ship_backoff_min_ms > 0");
        }
        Ok(())
    }

    /// The bounds on event time, as the agent applies them to every accepted event.
    pub fn event_time_bounds(&self) -> EventTimeBounds {
        EventTimeBounds {
            future: Some(Bound {
                max_ms: self.event_time_future_max_ms,
                policy: self.event_time_future_policy,
            }),
            past: self.event_time_past_max_ms.map(|max_ms| Bound {
                max_ms,
                policy: self.event_time_past_policy,
            }),
        }
    }

    /// The per-event limits in the form the envelope parser takes.
    pub fn envelope_limits(&self) -> runnel_event::EnvelopeLimits {
        runnel_event::EnvelopeLimits {
            event_id_bytes_max: 128,
            field_bytes_max: self.field_bytes_max,
            properties_bytes_max: self.properties_bytes_max,
            properties_depth_max: self.properties_depth_max,
            events_per_request_max: self.events_per_request_max,
        }
    }
}
