//! Broker configuration, declared once (same rules as the agent's: TOML file keys, flags,
//! `RUNNEL_*` environment variables; flag > environment > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;

use runnel_config::{ConfigError, settings};

settings! {
    BrokerConfig;
    /// Directory for the log, TLS material and state. Required.
    data_dir: PathBuf [PathBuf] = PathBuf::new();
    /// QUIC address agents ship to.
    quic_addr: SocketAddr [SocketAddr] = "127.0.0.1:8711".parse().expect("valid address");
    /// Arrow Flight address (gRPC). The Flight service runs only if `flight_tokens` has a token.
    flight_addr: SocketAddr [SocketAddr] = "127.0.0.1:8712".parse().expect("valid address");
    /// Bearer tokens Flight clients may use (each at least 16 characters, no spaces). Without
    /// any, Flight is off.
    flight_tokens: Vec<String> [String, repeated] = Vec::new();
    /// Most rows one Flight call returns, and most recent events the `events` table holds.
    flight_rows_max: usize [usize] = 1_000_000;
    /// How long a Flight result stays in the result cache (keyed by the query), in
    /// milliseconds; 0 turns the cache off. A result with open windows or recent events is at
    /// most this old.
    flight_cache_ttl_ms: u64 [u64] = 60_000;
    /// How long a result whose rows are all final (aggregate windows that no longer change)
    /// stays cached, in milliseconds.
    flight_cache_final_ttl_ms: u64 [u64] = 3_600_000;
    /// Most bytes of Arrow data the result cache holds; a result larger than a quarter of it
    /// is not cached, and the oldest entries go first.
    flight_cache_bytes_max: usize [usize] = 256 << 20;
    /// Most bytes of Arrow data kept of the `events` table, by block of 65,536 log offsets
    /// wholly durable (such a block never changes); 0 keeps none and builds every read from
    /// the log.
    flight_event_cache_bytes_max: usize [usize] = 256 << 20;
    /// Flight calls one token may have running at once; more wait in line (they are not
    /// refused) until one finishes.
    flight_token_concurrency_max: usize [usize] = 4;
    /// Flight SQL statements kept planned, by their text (least recently used first out; 0
    /// plans every statement every time).
    flight_sql_plans_max: usize [usize] = 256;
    /// PEM certificate chain for Flight: set with `flight_tls_key` to serve Flight over TLS
    /// (`grpc+tls://`). Unset: plain gRPC, for a loopback `flight_addr`.
    flight_tls_cert: Option<PathBuf> [PathBuf] = None;
    /// PEM private key for `flight_tls_cert`.
    flight_tls_key: Option<PathBuf> [PathBuf] = None;
    /// Admin HTTP address (`/v1/log/*`, `/metrics`, `/livez`, `/readyz`).
    admin_addr: SocketAddr [SocketAddr] = "127.0.0.1:8713".parse().expect("valid address");
    /// PEM certificate chain for QUIC. Unset: a dev CA and certificate are created in
    /// `DATA_DIR/tls/` (agents trust `DATA_DIR/tls/ca.pem`).
    tls_cert: Option<PathBuf> [PathBuf] = None;
    /// PEM private key for `tls_cert`.
    tls_key: Option<PathBuf> [PathBuf] = None;
    /// PEM CA certificate(s) that sign agent certificates: every QUIC connection must present
    /// a certificate signed by one (subject `CN=AGENT_ID, O=TENANT`). Unset: the dev CA
    /// `DATA_DIR/tls/ca.pem`, whose key the broker holds, so `runnel agent enroll` works.
    tls_client_ca: Option<PathBuf> [PathBuf] = None;
    /// PEM private key of `tls_client_ca`: set it to let `runnel agent enroll` issue
    /// certificates with the operator's CA. Unset with `tls_client_ca`: the operator issues
    /// them.
    tls_client_ca_key: Option<PathBuf> [PathBuf] = None;
    /// Days a certificate issued by `runnel agent enroll` is valid.
    agent_cert_days: u32 [u32] = 365;
    /// Serve `/metrics` only to a token (any role). Off, it is open like `/livez` and
    /// `/readyz`, for a Prometheus on a trusted network.
    metrics_auth: bool [bool] = false;
    /// Largest batch an agent may send, in bytes, compressed or not (larger ones are refused).
    batch_bytes_max: usize [usize] = 64 << 20;
    /// Size at which a log segment is sealed and a new one started, in bytes.
    segment_bytes_max: u64 [u64] = 128 << 20;
    /// Agent connections at once; more are refused.
    connections_max: u32 [u32] = 1024;
    /// Agent connections at once from one IP address; more are refused (counted as
    /// `runnel_broker_agents_refused_total{reason="connections_per_address"}`).
    connections_per_address_max: u32 [u32] = 64;
    /// Longest a frame (a batch) may take to arrive once its first byte has, in milliseconds;
    /// a stream that stalls inside a frame is refused and closed.
    ingest_frame_timeout_ms: u64 [u64] = 30_000;
    /// Batches (streams) in flight per connection.
    streams_per_connection_max: u32 [u32] = 64;
    /// Events per second one tenant's agents may append together (0: no quota). A batch over
    /// it is answered `throttled` with how long to wait and nothing of it is appended; the
    /// agent keeps it, sends it again then, and answers its apps 429 with Retry-After
    /// meanwhile.
    tenant_ingest_events_per_sec: u64 [u64] = 0;
    /// Bytes per second of batches one tenant's agents may append to the log together (0: no
    /// quota), answered as `tenant_ingest_events_per_sec` is when over it.
    tenant_log_bytes_per_sec: u64 [u64] = 0;
    /// Flight calls one tenant's tokens may have running at once (0: no quota); more wait in
    /// line.
    tenant_query_concurrency_max: usize [usize] = 0;
    /// Per-tenant overrides of the quotas above, `TENANT:QUOTA=N` with QUOTA one of
    /// `ingest_events_per_sec`, `log_bytes_per_sec`, `query_concurrency_max` (repeatable).
    tenant_quotas: Vec<String> [String, repeated] = Vec::new();
    /// The log's recovery checkpoint (producer table and counts) is rewritten after this many
    /// appended bytes; a restart scans at most about this much of the log (about 0.2 s for
    /// 32 MiB on one core).
    checkpoint_interval_bytes: u64 [u64] = 32 << 20;
    /// Scan every sealed log segment at start (checking each record's CRC) instead of taking
    /// its figures from the index file written when it was sealed. Off, a start reads only the
    /// active segment and what follows the checkpoint, and a sealed record is checked when it
    /// is read; a bad one fails that read and makes the next start scan its segment.
    log_scan_sealed_at_open: bool [bool] = false;
    /// Most events one `log read` request may return.
    log_read_limit_max: usize [usize] = 100_000;
    /// Most events the pipeline passes to its plugins in one batch (one call per plugin).
    pipeline_batch_events: usize [usize] = 1024;
    /// Threads the aggregators of a batch run on, side by side (each aggregator on one, in log
    /// order); 0: one per core. At most 64.
    pipeline_aggregator_threads: usize [usize] = 0;
    /// Longest one plugin call may run, in milliseconds: the default for a deploy and the most
    /// a deploy may ask for.
    plugin_deadline_ms: u64 [u64] = 200;
    /// Largest linear memory of one plugin instance, in bytes: the default for a deploy and the
    /// most a deploy may ask for.
    plugin_memory_bytes_max: u64 [u64] = 128 << 20;
    /// Largest component a deploy may upload, in bytes.
    plugin_wasm_bytes_max: usize [usize] = 64 << 20;
    /// Most calls spent isolating the failing events of one batch (each halves the suspects;
    /// 2 × `pipeline_batch_events` always suffices). Past it the events not yet isolated go to
    /// the dead letters too.
    plugin_isolation_calls_max: u32 [u32] = 2048;
    /// Longest time spent isolating the failing events of one batch, in milliseconds (a plugin
    /// that times out on every event costs a deadline per call). Past it the events not yet
    /// isolated go to the dead letters too.
    plugin_isolation_time_ms: u64 [u64] = 2000;
    /// Capabilities deploys may grant plugins (`clock`, `random`); a deploy that asks for
    /// another is refused. Without them a plugin sees a clock at 0 and seeded randomness.
    plugin_capabilities_allowed: Vec<String> [String, repeated] = Vec::new();
    /// A plugin is paused after this many failing batches in a row (more than half of the
    /// batch's events failed).
    plugin_pause_after_failing_batches: u32 [u32] = 3;
    /// With aggregators deployed, how often the pipeline commits its offset, the window state
    /// and the final rows (one redb transaction); also when it catches up with the log. A crash
    /// replays at most this much from the log.
    aggregate_commit_interval_ms: u64 [u64] = 1000;
    /// A source's (agent's) watermark is the latest event time it sent minus this.
    watermark_out_of_orderness_ms: i64 [i64] = 5000;
    /// A source whose events stopped arriving this long ago (by the events' receive time)
    /// stops holding the watermark back.
    watermark_source_idle_ms: i64 [i64] = 60_000;
    /// How far ahead of its receive time one event may move its source's watermark, in ms. An
    /// event's receive time is the earlier of its agent's `received_at` and the broker's append
    /// time, so neither a device nor an agent whose clock runs ahead finalizes a window early.
    watermark_clock_allowance_ms: i64 [i64] = 1000;
    /// An agent whose `received_at` is ahead of the broker's clock (the append time of its
    /// batch) by more than this, in ms, is flagged: `runnel_agent_clock_skewed{agent}` in
    /// `/metrics` and `clock_skewed_agents` in `runnel agg list`. Its events are judged by the
    /// broker's time either way.
    agent_clock_skew_max_ms: i64 [i64] = 60_000;
    /// Most distinct dimension tuples in one window pane of one aggregate; rows past it are
    /// refused, counted and sent to `dead_letters`.
    aggregate_keys_per_window_max: usize [usize] = 1_000_000;
    /// Most open panes (or sessions) of one aggregate; rows past it are refused likewise.
    aggregate_open_windows_max: usize [usize] = 100_000;
    /// Most bytes of window state of one aggregate (approximate); rows past it are refused
    /// likewise.
    aggregate_state_bytes_max: usize [usize] = 1 << 30;
    /// How often a backfill (`runnel plugin deploy --backfill-from`) commits its shadow state
    /// and rows, in milliseconds: after a crash it resumes from there.
    backfill_checkpoint_interval_ms: u64 [u64] = 5_000;
    /// A backfill this close to the pipeline's offset (events) hands its version to the
    /// pipeline, which folds the rest (pausing for that long) and swaps it in.
    backfill_handoff_events: u64 [u64] = 50_000;
    /// Most events a backfill reads from the archive at once (below the log's first offset).
    backfill_archive_read_events: u64 [u64] = 100_000;
    /// Copy the log into the archive's Delta tables (`docs/archive.md`). Off, the log stays
    /// on local disk only.
    archive_enabled: bool [bool] = true;
    /// How long an aggregate's final rows stay in `state.redb` once they are in the archive's
    /// `agg_<name>` table, in milliseconds of window start before now; older ones are read
    /// from the table. 0: every row stays. Nothing is deleted while the archive is off.
    aggregate_rows_retention_ms: u64 [u64] = 2_592_000_000;
    /// Where the archive's tables live: a local folder (a path or `file:///path`),
    /// `s3://bucket/prefix` (S3 or an S3-compatible server), or `memory:///` (gone at exit).
    /// Unset: `DATA_DIR/archive`. Each table is a folder under it (`…/events/`).
    archive_url: Option<String> [String] = None;
    /// A sealed log segment (the hot tier) is deleted once every offset in it is committed to
    /// the archive and read by the pipeline, and its newest record was appended more than this
    /// long ago, in milliseconds. Never while the archive is off or behind.
    log_retention_ms: u64 [u64] = 604_800_000;
    /// Time between archive passes, in milliseconds; each pass archives everything durable,
    /// so the archive lags the log by about this much whatever the volume.
    archive_interval_ms: u64 [u64] = 300_000;
    /// Most events one archive commit takes (bounds the memory of a pass: about 300 bytes an
    /// event), and about the most rows one commit of an `agg_<name>` table takes; a larger
    /// backlog takes several commits.
    archive_commit_events_max: usize [usize] = 250_000;
    /// Longest one table's turn in an archive pass runs, in milliseconds: a table behind the
    /// log (`events` after a backlog) commits for this long, then the other tables take their
    /// turns and it goes on at once, so no table waits for another to catch up.
    archive_slice_ms: u64 [u64] = 2_000;
    /// Archive data files smaller than this (bytes) are compacted into files of up to about
    /// this size.
    archive_target_file_bytes: u64 [u64] = 64 << 20;
    /// Small files a partition must hold before they are compacted.
    archive_compact_min_files: usize [usize] = 10;
    /// Where the cold tier's tables live (a path or URL like `archive_url`: another bucket, a
    /// NAS path). Unset: no cold tier; days stay warm until `archive_retention_days`.
    archive_cold_url: Option<String> [String] = None;
    /// Days of event time after which a day's partitions move to `archive_cold_url` (a day
    /// moves once it is more than this many days before today, UTC).
    archive_cold_after_days: u32 [u32] = 365;
    /// Days of event time after which a day's partitions are deleted from the archive. Unset:
    /// never.
    archive_retention_days: Option<u32> [u32] = None;
    /// S3 endpoint for an `s3://` archive_url (an S3-compatible server, e.g.
    /// `http://127.0.0.1:9000`; `http://` allows plain HTTP). Unset: `AWS_ENDPOINT_URL`, else
    /// AWS.
    archive_s3_endpoint: Option<String> [String] = None;
    /// S3 region. Unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    archive_s3_region: Option<String> [String] = None;
    /// S3 access key id. Unset: `AWS_ACCESS_KEY_ID` (or the instance's credentials).
    archive_s3_access_key_id: Option<String> [String] = None;
    /// S3 secret access key. Unset: `AWS_SECRET_ACCESS_KEY`.
    archive_s3_secret_access_key: Option<String> [String] = None;
    /// Report runs (`docs/reports.md`) at once; more wait, queued.
    report_concurrency_max: usize [usize] = 2;
    /// How often the report queue and schedules are looked at, in milliseconds (a new request
    /// starts at once).
    report_poll_ms: u64 [u64] = 1000;
    /// Attempts of one run before it fails, for a definition without `attempts_max`.
    report_attempts_max: u32 [u32] = 3;
    /// Longest one attempt may run, in milliseconds, for a definition without `deadline_ms`.
    report_deadline_ms: u64 [u64] = 600_000;
    /// Delay before a failed attempt's (or webhook delivery's) retry, in milliseconds;
    /// doubled at each retry.
    report_retry_backoff_ms: u64 [u64] = 1000;
    /// Longest retry delay, in milliseconds.
    report_retry_backoff_max_ms: u64 [u64] = 60_000;
    /// Misfire policy: most missed fire times of one schedule queued after a restart (the
    /// newest ones); older ones are skipped and counted.
    report_misfire_runs_max: usize [usize] = 10;
    /// Most attempts of one webhook delivery before it is given up.
    report_webhook_attempts_max: u32 [u32] = 8;
    /// One webhook attempt's timeout, in milliseconds.
    report_webhook_timeout_ms: u64 [u64] = 10_000;
    /// The key of the webhooks' `X-Runnel-Signature` (HMAC-SHA256), at least 16 bytes. Unset:
    /// a random key kept in `DATA_DIR/reports/webhook_secret`.
    report_webhook_secret: Option<String> [String] = None;
    /// How long a pre-signed S3 link to an output stays valid, in seconds (at most 7 days, as
    /// S3 allows).
    report_link_ttl_s: u64 [u64] = 604_800;
    /// The admin API's address as links to outputs name it (`http://HOST:PORT`). Unset:
    /// `http://` and `admin_addr`.
    report_link_base_url: Option<String> [String] = None;
    /// Where report outputs go when a definition names no `destination` (a path or URL like
    /// `archive_url`). Unset: `reports/` in the archive's store, or `DATA_DIR/reports/outputs`
    /// when the archive is off.
    report_url: Option<String> [String] = None;
    /// Largest output of one run, in bytes; a larger one fails the run, naming this setting.
    report_output_bytes_max: usize [usize] = 256 << 20;
    /// Largest schema one registration may hold, in bytes of its JSON.
    schema_bytes_max: usize [usize] = 64 << 10;
    /// Most versions one event type's schema may have.
    schema_versions_max: usize [usize] = 1000;
    /// Most event types with a schema.
    schema_types_max: usize [usize] = 10_000;
    /// The compatibility mode of a type without its own, until `runnel schema mode MODE` sets
    /// one: `BACKWARD`, `BACKWARD_TRANSITIVE`, `FORWARD`, `FORWARD_TRANSITIVE`, `FULL`,
    /// `FULL_TRANSITIVE` or `NONE`.
    schema_mode_default: String [String] = "BACKWARD".to_string();
    /// What agents do with an event whose type has no schema: `allow` or `reject`.
    schema_unregistered: String [String] = "allow".to_string();
    /// The same per type prefix, `PREFIX=allow|reject` (repeatable; the longest matching prefix
    /// wins).
    schema_unregistered_prefixes: Vec<String> [String, repeated] = Vec::new();
    /// Most side-topic entries one `runnel dlq` call reads (list, show, redrive).
    dlq_scan_entries_max: usize [usize] = 1_000_000;
    /// Data-quality checks, `TYPE:KEY=VALUE,...` with KEY one of `volume_per_hour_min`,
    /// `volume_per_hour_max`, `freshness_secs`, `property` and `missing_share_max` (repeatable;
    /// they replace checks of the same type set with `runnel dq set` at each start).
    dq_checks: Vec<String> [String, repeated] = Vec::new();
    /// How often the data-quality checks are evaluated, in milliseconds.
    dq_interval_ms: u64 [u64] = 1000;
    /// Events before the end of the log the data-quality checks read at start.
    dq_lookback_events: u64 [u64] = 1_000_000;
    /// The identity fields an erasure request may name and events are matched by: `user_id`
    /// (always), `device_id`, `session_id`, `properties.NAME` (repeatable).
    erasure_identity_fields: Vec<String> [String, repeated] = vec!["user_id".to_string()];
    /// An erasure request unfinished this long after it was made is late
    /// (`runnel_erasure_requests_late`), in milliseconds.
    erasure_deadline_ms: u64 [u64] = 86_400_000;
    /// How long after a request agents may still ship events they accepted before it: the log
    /// is erased again by a pass that starts this long after the request, in milliseconds.
    erasure_spool_grace_ms: u64 [u64] = 300_000;
    /// How often unfinished erasures are worked on, in milliseconds.
    erasure_interval_ms: u64 [u64] = 1000;
    /// Most unfinished erasure requests; another is refused with 503 until one is done.
    erasure_pending_max: usize [usize] = 10_000;
}

impl BrokerConfig {
    /// The sizes and recovery settings of the log and the side topics.
    pub fn log_settings(&self) -> crate::log::LogSettings {
        crate::log::LogSettings {
            segment_bytes_max: self.segment_bytes_max,
            batch_bytes_max: self.batch_bytes_max,
            checkpoint_interval_bytes: self.checkpoint_interval_bytes,
            scan_sealed_at_open: self.log_scan_sealed_at_open,
        }
    }

    /// The tenants' quotas (checked by [`BrokerConfig::validate`]).
    pub fn schema_settings(&self) -> Result<crate::schemas::Settings, ConfigError> {
        let mode_default = self
            .schema_mode_default
            .parse()
            .map_err(|e: String| ConfigError::new("schema_mode_default", e))?;
        let default = self
            .schema_unregistered
            .parse()
            .map_err(|e: String| ConfigError::new("schema_unregistered", e))?;
        let mut prefixes = std::collections::BTreeMap::new();
        for p in &self.schema_unregistered_prefixes {
            let Some((prefix, policy)) = p.split_once('=') else {
                return Err(ConfigError::new(
                    "schema_unregistered_prefixes",
                    format!("{p:?} is not PREFIX=allow|reject"),
                ));
            };
            let policy = policy.parse().map_err(|e: String| {
                ConfigError::new("schema_unregistered_prefixes", format!("{p:?}: {e}"))
            })?;
            prefixes.insert(prefix.to_string(), policy);
        }
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::new(field, "must be > 0"))
            } else {
                Ok(v)
            }
        };
        Ok(crate::schemas::Settings {
            bytes_max: positive("schema_bytes_max", self.schema_bytes_max)?,
            versions_max: positive("schema_versions_max", self.schema_versions_max)?,
            types_max: positive("schema_types_max", self.schema_types_max)?,
            mode_default,
            unregistered: runnel_schema::Unregistered { default, prefixes },
        })
    }

    /// How erasure runs (checked by [`BrokerConfig::validate`]).
    pub fn erasure_settings(&self) -> Result<crate::erasure::Settings, ConfigError> {
        let mut fields = vec![crate::erasure::identity::Field::UserId];
        for f in &self.erasure_identity_fields {
            let field = f
                .parse()
                .map_err(|e: String| ConfigError::new("erasure_identity_fields", e))?;
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        let ms = |field: &str, v: u64| {
            i64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ConfigError::new(field, "must be > 0 and fit in 63 bits"))
        };
        if self.erasure_pending_max == 0 {
            return Err(ConfigError::new("erasure_pending_max", "must be > 0"));
        }
        if self.erasure_interval_ms == 0 {
            return Err(ConfigError::new("erasure_interval_ms", "must be > 0"));
        }
        Ok(crate::erasure::Settings {
            fields,
            deadline_ms: ms("erasure_deadline_ms", self.erasure_deadline_ms)?,
            spool_grace_ms: i64::try_from(self.erasure_spool_grace_ms)
                .map_err(|_| ConfigError::new("erasure_spool_grace_ms", "must fit in 63 bits"))?,
            pending_max: self.erasure_pending_max,
        })
    }

    /// The data-quality checks the config declares.
    pub fn dq_checks(&self) -> Result<Vec<(String, crate::dq::Checks)>, ConfigError> {
        self.dq_checks
            .iter()
            .map(|c| {
                let (ty, checks) = c.split_once(':').ok_or_else(|| {
                    ConfigError::new("dq_checks", format!("{c:?} is not TYPE:KEY=VALUE,..."))
                })?;
                runnel_event::check_event_type(ty)
                    .map_err(|e| ConfigError::new("dq_checks", format!("{c:?}: event type {e}")))?;
                let checks = crate::dq::Checks::parse(checks)
                    .map_err(|e| ConfigError::new("dq_checks", format!("{c:?}: {e}")))?;
                Ok((ty.to_string(), checks))
            })
            .collect()
    }

    /// The tenants' quotas.
    pub fn quotas(&self) -> Result<crate::auth::Quotas, ConfigError> {
        crate::auth::Quotas::new(
            crate::auth::quotas::Limits {
                ingest_events_per_sec: self.tenant_ingest_events_per_sec,
                log_bytes_per_sec: self.tenant_log_bytes_per_sec,
                query_concurrency_max: self.tenant_query_concurrency_max,
            },
            &self.tenant_quotas,
        )
        .map_err(|e| {
            ConfigError::new(
                "tenant_quotas",
                e.strip_prefix("tenant_quotas: ").unwrap_or(&e),
            )
        })
    }

    /// The watermark and state limits every aggregate's window engine runs with.
    pub fn window_settings(&self) -> runnel_window::Settings {
        runnel_window::Settings {
            out_of_orderness_ms: self.watermark_out_of_orderness_ms,
            source_idle_ms: self.watermark_source_idle_ms,
            clock_allowance_ms: self.watermark_clock_allowance_ms,
            keys_per_window_max: self.aggregate_keys_per_window_max,
            open_windows_max: self.aggregate_open_windows_max,
            state_bytes_max: self.aggregate_state_bytes_max,
        }
    }

    /// The archiver's settings.
    pub fn archive_settings(&self) -> crate::archive::Settings {
        crate::archive::Settings {
            url: self
                .archive_url
                .clone()
                .unwrap_or_else(|| self.data_dir.join("archive").to_string_lossy().into_owned()),
            s3: crate::archive::store::S3Settings {
                endpoint: self.archive_s3_endpoint.clone(),
                region: self.archive_s3_region.clone(),
                access_key_id: self.archive_s3_access_key_id.clone(),
                secret_access_key: self.archive_s3_secret_access_key.clone(),
            },
            interval: std::time::Duration::from_millis(self.archive_interval_ms),
            commit_events_max: self.archive_commit_events_max,
            slice: std::time::Duration::from_millis(self.archive_slice_ms),
            log_retention: std::time::Duration::from_millis(self.log_retention_ms),
            cold_url: self.archive_cold_url.clone(),
            policy: crate::archive::lifecycle::Policy {
                cold_after_days: self.archive_cold_after_days,
                retention_days: self.archive_retention_days,
                vacuum_after_ms: i64::try_from(self.archive_interval_ms.saturating_mul(2))
                    .unwrap_or(i64::MAX),
            },
            audit_path: self.data_dir.join("audit").join("archive.jsonl"),
            compact: crate::archive::compact::Policy {
                target_file_bytes: self.archive_target_file_bytes,
                min_files: self.archive_compact_min_files,
            },
            aggregate_rows_retention: (self.aggregate_rows_retention_ms > 0)
                .then(|| std::time::Duration::from_millis(self.aggregate_rows_retention_ms)),
        }
    }

    /// The report service's settings; `admin_addr` is the bound admin address.
    pub fn report_settings(&self, admin_addr: SocketAddr) -> crate::reports::Settings {
        use std::time::Duration;
        crate::reports::Settings {
            concurrency_max: self.report_concurrency_max,
            poll: Duration::from_millis(self.report_poll_ms),
            retry_backoff: Duration::from_millis(self.report_retry_backoff_ms),
            retry_backoff_max: Duration::from_millis(self.report_retry_backoff_max_ms),
            misfire_runs_max: self.report_misfire_runs_max,
            webhook_attempts_max: self.report_webhook_attempts_max,
            webhook_timeout: Duration::from_millis(self.report_webhook_timeout_ms),
            link_ttl: Duration::from_secs(self.report_link_ttl_s),
            link_base_url: self
                .report_link_base_url
                .clone()
                .unwrap_or_else(|| format!("http://{admin_addr}"))
                .trim_end_matches('/')
                .to_string(),
        }
    }

    /// Where report outputs go by default.
    pub fn report_destination(&self) -> String {
        if let Some(u) = &self.report_url {
            return u.clone();
        }
        if self.archive_enabled {
            let archive = self.archive_settings().url;
            return format!("{}/reports", archive.trim_end_matches('/'));
        }
        self.data_dir
            .join("reports")
            .join("outputs")
            .to_string_lossy()
            .into_owned()
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, rule: &str| Err(ConfigError::new(field, rule));
        if self.data_dir.as_os_str().is_empty() {
            return fail(
                "data_dir",
                "is required (--data-dir, RUNNEL_DATA_DIR or config key)",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return fail("tls_key", "tls_cert and tls_key must be given together");
        }
        if self.batch_bytes_max < 1024 || self.batch_bytes_max > (u32::MAX as usize) / 2 {
            return fail("batch_bytes_max", "must be between 1024 and 2 GiB");
        }
        if self.segment_bytes_max < 2 * self.batch_bytes_max as u64 {
            return fail(
                "segment_bytes_max",
                "must be at least twice batch_bytes_max",
            );
        }
        if self.connections_max == 0 || self.streams_per_connection_max == 0 {
            return fail(
                "connections_max",
                "connections_max and streams_per_connection_max must be > 0",
            );
        }
        if self.log_read_limit_max == 0 {
            return fail("log_read_limit_max", "must be > 0");
        }
        if self.pipeline_batch_events == 0 || self.pipeline_batch_events > 1 << 20 {
            return fail("pipeline_batch_events", "must be between 1 and 1048576");
        }
        if self.pipeline_aggregator_threads > 64 {
            return fail(
                "pipeline_aggregator_threads",
                "must be between 0 (one per core) and 64",
            );
        }
        if self.plugin_deadline_ms == 0 {
            return fail("plugin_deadline_ms", "must be > 0");
        }
        if self.plugin_memory_bytes_max < 1 << 20 || self.plugin_memory_bytes_max > 1 << 30 {
            return fail("plugin_memory_bytes_max", "must be between 1 MiB and 1 GiB");
        }
        if self.plugin_isolation_calls_max == 0 {
            return fail("plugin_isolation_calls_max", "must be > 0");
        }
        if let Err(e) = runnel_host::Capabilities::parse(
            self.plugin_capabilities_allowed.iter().map(String::as_str),
        ) {
            return fail("plugin_capabilities_allowed", &e);
        }
        if self.plugin_pause_after_failing_batches == 0 {
            return fail("plugin_pause_after_failing_batches", "must be > 0");
        }
        if let Some(t) = self
            .flight_tokens
            .iter()
            .find(|t| t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()))
        {
            return fail(
                "flight_tokens",
                &format!(
                    "a token of {} characters: each must be at least 16 printable ASCII characters without spaces",
                    t.len()
                ),
            );
        }
        if self.flight_rows_max == 0 {
            return fail("flight_rows_max", "must be > 0");
        }
        if self.flight_token_concurrency_max == 0 {
            return fail("flight_token_concurrency_max", "must be > 0");
        }
        if self.flight_tls_cert.is_some() != self.flight_tls_key.is_some() {
            return fail(
                "flight_tls_cert",
                "flight_tls_cert and flight_tls_key go together: set both or neither",
            );
        }
        if !self.flight_addr.ip().is_loopback()
            && !self.flight_tokens.is_empty()
            && self.flight_tls_cert.is_none()
        {
            return fail(
                "flight_addr",
                &format!(
                    "{} is not a loopback address and Flight has no TLS: its tokens would cross the network in the clear; set flight_tls_cert and flight_tls_key, or bind it to 127.0.0.1",
                    self.flight_addr
                ),
            );
        }
        if !self.admin_addr.ip().is_loopback() {
            return fail(
                "admin_addr",
                &format!(
                    "{} is not a loopback address and the admin API serves plain HTTP: its tokens would cross the network in the clear; bind it to 127.0.0.1 (reach it through a TLS-terminating proxy or an SSH tunnel)",
                    self.admin_addr
                ),
            );
        }
        if self.tls_client_ca_key.is_some() && self.tls_client_ca.is_none() {
            return fail(
                "tls_client_ca_key",
                "is the key of tls_client_ca: set tls_client_ca too",
            );
        }
        if self.agent_cert_days == 0 || self.agent_cert_days > 3650 {
            return fail("agent_cert_days", "must be between 1 and 3650");
        }
        if self.connections_per_address_max == 0 {
            return fail("connections_per_address_max", "must be > 0");
        }
        if self.ingest_frame_timeout_ms == 0 {
            return fail("ingest_frame_timeout_ms", "must be > 0");
        }
        self.quotas()?;
        if self.backfill_checkpoint_interval_ms == 0 {
            return fail("backfill_checkpoint_interval_ms", "must be > 0");
        }
        if self.backfill_handoff_events == 0 {
            return fail("backfill_handoff_events", "must be > 0");
        }
        if self.backfill_archive_read_events == 0 {
            return fail("backfill_archive_read_events", "must be > 0");
        }
        if self.aggregate_commit_interval_ms == 0 {
            return fail("aggregate_commit_interval_ms", "must be > 0");
        }
        if self.watermark_out_of_orderness_ms < 0 {
            return fail("watermark_out_of_orderness_ms", "must be >= 0");
        }
        if self.watermark_source_idle_ms <= 0 {
            return fail("watermark_source_idle_ms", "must be > 0");
        }
        if self.watermark_clock_allowance_ms < 0 {
            return fail("watermark_clock_allowance_ms", "must be >= 0");
        }
        if self.agent_clock_skew_max_ms < 0 {
            return fail("agent_clock_skew_max_ms", "must be >= 0");
        }
        if self.aggregate_keys_per_window_max == 0 {
            return fail("aggregate_keys_per_window_max", "must be > 0");
        }
        if self.aggregate_open_windows_max == 0 {
            return fail("aggregate_open_windows_max", "must be > 0");
        }
        if self.aggregate_state_bytes_max == 0 {
            return fail("aggregate_state_bytes_max", "must be > 0");
        }
        if let Some(r) = self.archive_retention_days
            && self.archive_cold_url.is_some()
            && r <= self.archive_cold_after_days
        {
            return fail(
                "archive_retention_days",
                "must be more than archive_cold_after_days when archive_cold_url is set",
            );
        }
        if self.archive_target_file_bytes < 1024 {
            return fail("archive_target_file_bytes", "must be at least 1024");
        }
        if self.archive_compact_min_files < 2 {
            return fail("archive_compact_min_files", "must be at least 2");
        }
        if self.archive_interval_ms == 0 {
            return fail("archive_interval_ms", "must be > 0");
        }
        if self.archive_slice_ms == 0 {
            return fail("archive_slice_ms", "must be > 0");
        }
        if self.report_concurrency_max == 0 || self.report_concurrency_max > 64 {
            return fail("report_concurrency_max", "must be between 1 and 64");
        }
        for (field, v) in [
            ("report_poll_ms", self.report_poll_ms),
            ("report_deadline_ms", self.report_deadline_ms),
            ("report_retry_backoff_ms", self.report_retry_backoff_ms),
            ("report_webhook_timeout_ms", self.report_webhook_timeout_ms),
        ] {
            if v == 0 {
                return fail(field, "must be > 0");
            }
        }
        if self.report_retry_backoff_max_ms < self.report_retry_backoff_ms {
            return fail(
                "report_retry_backoff_max_ms",
                "must be at least report_retry_backoff_ms",
            );
        }
        self.schema_settings()?;
        if self.dlq_scan_entries_max == 0 {
            return fail("dlq_scan_entries_max", "must be > 0");
        }
        self.dq_checks()?;
        self.erasure_settings()?;
        if self.dq_interval_ms == 0 {
            return fail("dq_interval_ms", "must be > 0");
        }
        if self.report_attempts_max == 0 || self.report_attempts_max > 100 {
            return fail("report_attempts_max", "must be between 1 and 100");
        }
        if self.report_webhook_attempts_max == 0 || self.report_webhook_attempts_max > 100 {
            return fail("report_webhook_attempts_max", "must be between 1 and 100");
        }
        if self.report_misfire_runs_max == 0 {
            return fail("report_misfire_runs_max", "must be > 0");
        }
        if self.report_link_ttl_s == 0 || self.report_link_ttl_s > 604_800 {
            return fail(
                "report_link_ttl_s",
                "must be between 1 and 604800 (7 days, the most S3 allows)",
            );
        }
        if let Some(s) = &self.report_webhook_secret
            && s.len() < 16
        {
            return fail("report_webhook_secret", "must be at least 16 bytes");
        }
        if let Some(u) = &self.report_link_base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return fail(
                "report_link_base_url",
                "must start with http:// or https://",
            );
        }
        if self.report_output_bytes_max < 1024 {
            return fail("report_output_bytes_max", "must be at least 1024");
        }
        if self.archive_commit_events_max == 0 || self.archive_commit_events_max > 10_000_000 {
            return fail(
                "archive_commit_events_max",
                "must be between 1 and 10000000",
            );
        }
        Ok(())
    }
}
