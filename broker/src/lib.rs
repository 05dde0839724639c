//! # runnel-broker: the central log broker, as a library
//!
//! One folder per subsystem, each with a `//!` doc saying what it owns and what it may call:
//!
//! | subsystem | owns |
//! | --- | --- |
//! | [`ingest`] | the QUIC endpoint agents ship to, its TLS identity |
//! | [`log`] | the durable, idempotent event log: writer, producer table, checkpoint, the one record-to-event walk |
//! | [`topics`] | the side topics (`dead_letters`, `late_events`) and their typed entries |
//! | [`pipeline`] | the enrichers and aggregators over the log: the step, the pure fold, the commit, the aggregates |
//! | [`plugins`] | the plugin registry and its deploy service |
//! | [`state`] | every redb table, listed in one place |
//! | [`query`] | Arrow Flight and Flight SQL over the aggregates, events and side topics |
//! | [`archive`] | the log copied into Delta Lake tables in object storage, exactly once |
//! | [`backfill`] | a new aggregator version computed over history in shadow, then swapped in |
//! | [`reports`] | report definitions, their durable run queue, schedules, outputs and webhooks |
//! | [`dlq`] | dead letters listed with filters and re-driven into the pipeline once each |
//! | [`dq`] | data-quality alarms per event type (volume, freshness, completeness) computed over the log |
//! | [`erasure`] | a user's events removed from the log and the side topics, rewritten in place, with an audit of keyed hashes |
//! | [`schemas`] | the schema registry: versions per event type, compatibility modes, the document agents validate with |
//! | [`auth`] | API tokens and their roles, the agents' certificates: enrollment, revocation |
//! | [`admin`] | the admin HTTP API, a thin layer over the others |
//!
//! [`config`] holds every setting; [`start`] wires the subsystems together and
//! [`RunningBroker::shutdown`] stops them, joining every thread and task it started. The
//! `runnel` binary (`cli/`) is the only program around it.

pub mod admin;
pub mod archive;
pub mod auth;
pub mod backfill;
pub mod config;
pub mod dlq;
pub mod dq;
pub mod erasure;
pub mod ingest;
pub mod log;
pub mod pipeline;
pub mod plugins;
pub mod query;
pub mod reports;
pub mod schemas;
pub mod state;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use runnel_segment::Storage;
use tokio::sync::watch;

pub use config::BrokerConfig;

/// A running broker.
pub struct RunningBroker {
    /// Where agents connect.
    pub quic_addr: SocketAddr,
    /// The admin API.
    pub admin_addr: SocketAddr,
    /// Arrow Flight, when `flight_tokens` has a token.
    pub flight_addr: Option<SocketAddr>,
    /// The dev CA agents should trust, when the dev TLS material is in use.
    pub dev_ca: Option<std::path::PathBuf>,
    /// The log.
    pub log: log::BrokerLog,
    /// The plugin registry.
    pub registry: plugins::Registry,
    pipeline: pipeline::Pipeline,
    backfill: backfill::Backfill,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningBroker {
    /// Stops accepting, then joins what it started: the QUIC, admin and Flight tasks (and
    /// through them every connection and stream task), the pipeline thread, and last the log
    /// writer thread once it has answered what was queued.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let (pipeline, backfill) = (self.pipeline, self.backfill);
        let _ = tokio::task::spawn_blocking(move || {
            backfill.stop();
            pipeline.stop();
        })
        .await;
        // Last: every writer has stopped. (The epoch ticker ends with the last runtime clone,
        // the pipeline's and the admin API's, dropped above.)
        self.log.close().await;
    }
}

/// Starts a broker: recovers the log, binds QUIC and admin.
pub async fn start(cfg: BrokerConfig, storage: Arc<dyn Storage>) -> anyhow::Result<RunningBroker> {
    cfg.validate()?;
    // rustls picks its process-wide provider itself only when one is compiled in; `deltalake`
    // compiles `aws-lc-rs` in too, so ring (the provider of the workspace) is installed here for
    // what asks for the default (tonic's TLS for Flight). An error means one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = runnel_config::telemetry::prometheus();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let files = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => ingest::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            dev_ca: None,
        },
        _ => ingest::tls::ensure_dev_tls(&cfg.data_dir.join("tls"))?,
    };
    let tls_dir = cfg.data_dir.join("tls");
    let (client_ca, client_ca_key) = match &cfg.tls_client_ca {
        Some(ca) => (ca.clone(), cfg.tls_client_ca_key.clone()),
        None => {
            let (ca, key) = ingest::tls::ensure_dev_ca(&tls_dir)?;
            (ca, Some(key))
        }
    };
    let (log, report) = {
        let (storage, dir) = (storage.clone(), cfg.data_dir.join("log"));
        let settings = cfg.log_settings();
        tokio::task::spawn_blocking(move || log::BrokerLog::open(storage, &dir, &settings))
            .await??
    };
    if report.truncated_bytes > 0 || !report.quarantined_segments.is_empty() {
        tracing::warn!(truncated_bytes = report.truncated_bytes, quarantined = ?report.quarantined_segments, "log recovered from damage");
    }
    metrics::counter!("runnel_broker_log_truncated_bytes_total").increment(report.truncated_bytes);
    metrics::gauge!("runnel_broker_log_indexed_segments").set(report.indexed_segments as f64);
    metrics::counter!("runnel_broker_log_quarantined_segments_total")
        .increment(report.quarantined_segments.len() as u64);

    let registry = plugins::Registry::open(&cfg.data_dir)?;
    let read = |p: &std::path::Path, key: &str| {
        std::fs::read_to_string(p).with_context(|| format!("{key}: reading {}", p.display()))
    };
    let client_ca_pem = read(&client_ca, "tls_client_ca")?;
    let issuer = match &client_ca_key {
        Some(k) => Some((client_ca_pem.clone(), read(k, "tls_client_ca_key")?)),
        None => None,
    };
    let server_ca_pem = match &files.dev_ca {
        Some(p) => Some(read(p, "tls_cert")?),
        None => None,
    };
    let agents = Arc::new(auth::agents::Agents::open(
        registry.database(),
        issuer,
        server_ca_pem,
        cfg.agent_cert_days,
    )?);
    let verifier = auth::agents::AgentVerifier::new(client_ca_pem.as_bytes(), agents.clone())
        .with_context(|| format!("tls_client_ca {}", client_ca.display()))?;
    let server_config =
        ingest::tls::server_config(&files, cfg.streams_per_connection_max, Arc::new(verifier))?;
    let tokens = Arc::new(auth::Tokens::open(registry.database(), &cfg.flight_tokens)?);
    tokens.ensure_admin(&cfg.data_dir.join("admin-token"))?;
    let runtime = runnel_host::Runtime::new()
        .map_err(|e| anyhow::anyhow!("starting the plugin runtime: {e}"))?
        .with_cache_dir(registry.compiled_cache_dir());
    let (dead_letters, dead_letters_reader) = topics::open(
        storage.clone(),
        &cfg.data_dir.join("topics").join("dead_letters"),
        &cfg.log_settings(),
    )?;
    let (late_events, late_events_reader) = topics::open(
        storage.clone(),
        &cfg.data_dir.join("topics").join("late_events"),
        &cfg.log_settings(),
    )?;
    // The chain's output is kept for the archive's `enriched_events`; without the archive
    // nothing would read it.
    let enriched = if cfg.archive_enabled {
        let (writer, reader) = topics::open_with(
            storage.clone(),
            &cfg.data_dir.join("topics").join("enriched"),
            &cfg.log_settings(),
            topics::enriched::Record::last_offset_of,
        )?;
        let archived = Arc::new(std::sync::atomic::AtomicU64::new(0));
        Some((
            pipeline::EnrichedTopic {
                writer,
                archived: archived.clone(),
            },
            archive::enriched::Source { reader, archived },
        ))
    } else {
        None
    };
    let (enriched_writer, enriched_source) = enriched.unzip();
    let enriched_reader = enriched_source.as_ref().map(|s| s.reader.clone());
    let isolation = pipeline::Isolation {
        calls_max: cfg.plugin_isolation_calls_max,
        time_max: std::time::Duration::from_millis(cfg.plugin_isolation_time_ms),
    };
    let pipeline = pipeline::Pipeline::start(
        runtime.clone(),
        registry.clone(),
        log.clone(),
        pipeline::Topics {
            dead_letters,
            late_events,
            enriched: enriched_writer,
        },
        pipeline::Settings {
            batch_events: cfg.pipeline_batch_events,
            pause_after_failing_batches: cfg.plugin_pause_after_failing_batches,
            aggregator_threads: cfg.pipeline_aggregator_threads,
            isolation,
            commit_interval: std::time::Duration::from_millis(cfg.aggregate_commit_interval_ms),
            agent_clock_skew_max_ms: cfg.agent_clock_skew_max_ms,
            window: cfg.window_settings(),
            tenants: agents.tenants(),
        },
    )?;

    let endpoint = quinn::Endpoint::server(server_config, cfg.quic_addr)
        .with_context(|| format!("binding quic_addr {}", cfg.quic_addr))?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding admin_addr {}", cfg.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let reports = {
        let queue = reports::Queue::open(
            registry.database(),
            reports::RunDefaults {
                attempts_max: cfg.report_attempts_max,
                deadline_ms: cfg.report_deadline_ms,
            },
        )
        .map_err(|e| anyhow::anyhow!("reports: {e}"))?;
        let dir = cfg.data_dir.join("reports");
        let link_secret = reports::secret_file(&dir.join("link_secret"))?;
        let webhook_secret = match &cfg.report_webhook_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => reports::secret_file(&dir.join("webhook_secret"))?,
        };
        Arc::new(reports::Reports::new(
            queue,
            cfg.report_settings(admin_addr),
            &link_secret,
            &webhook_secret,
        ))
    };
    let consumed = pipeline.shared.clone();
    let backfill_progress = Arc::new(backfill::Progress::default());
    let backfilling = backfill_progress.clone();
    // The archiver deletes no segment the pipeline or a backfill has still to read.
    let readers_floor: archive::ReadersFloor = Arc::new(move || {
        use std::sync::atomic::Ordering::Acquire;
        consumed
            .offset
            .load(Acquire)
            .min(backfilling.floor.load(Acquire))
    });
    let archive = if cfg.archive_enabled {
        let (status, task) = archive::start(
            log.clone(),
            Some(registry.clone()),
            readers_floor,
            enriched_source,
            cfg.archive_settings(),
            shutdown_rx.clone(),
        )
        .map_err(|e| anyhow::anyhow!("archive_url: {e}"))?;
        tasks.push(task);
        Some(status)
    } else {
        None
    };
    let quotas = Arc::new(cfg.quotas()?);
    let dlq = dlq::Dlq::open(
        registry.database(),
        dead_letters_reader.clone(),
        late_events_reader.clone(),
        log.clone(),
        cfg.dlq_scan_entries_max,
    )
    .map_err(|e| anyhow::anyhow!("dead letters: {e}"))?;
    let dq = dq::Dq::open(registry.database(), &cfg.dq_checks()?)?;
    tasks.push(tokio::spawn(dq::run(
        dq.clone(),
        log.clone(),
        std::time::Duration::from_millis(cfg.dq_interval_ms),
        cfg.dq_lookback_events,
        shutdown_rx.clone(),
    )));
    let erasures = erasure::Erasures::open(
        registry.database(),
        &reports::secret_file(&cfg.data_dir.join("erasure").join("key"))?,
        cfg.erasure_settings()?,
    )
    .map_err(|e| anyhow::anyhow!("erasures: {e:#}"))?;
    tasks.push(tokio::spawn(erasure::run::run(
        erasures.clone(),
        erasure::run::Stores {
            log: log.clone(),
            pipeline: pipeline.shared.clone(),
            dead_letters: dead_letters_reader.clone(),
            late_events: late_events_reader.clone(),
            enriched: enriched_reader,
        },
        std::time::Duration::from_millis(cfg.erasure_interval_ms),
        shutdown_rx.clone(),
    )));
    let schemas = schemas::Registry::open(registry.database(), cfg.schema_settings()?)
        .map_err(|e| anyhow::anyhow!("schemas: {e}"))?;
    tasks.push(tokio::spawn(ingest::quic::serve(
        endpoint,
        log.clone(),
        agents.clone(),
        ingest::quic::Limits {
            batch_bytes_max: cfg.batch_bytes_max,
            connections_max: cfg.connections_max,
            connections_per_address_max: cfg.connections_per_address_max,
            frame_timeout: std::time::Duration::from_millis(cfg.ingest_frame_timeout_ms),
            quotas: quotas.clone(),
        },
        schemas.subscribe(),
        shutdown_rx.clone(),
    )));
    let admin = Arc::new(admin::Admin {
        log: log.clone(),
        read_limit_max: cfg.log_read_limit_max,
        metrics,
        dead_letters: dead_letters_reader,
        late_events: late_events_reader,
        registry: registry.clone(),
        schemas: schemas.clone(),
        dlq,
        dq,
        erasures,
        runtime: runtime.clone(),
        pipeline: pipeline.shared.clone(),
        backfill: backfill_progress.clone(),
        plugin_limits: plugins::PluginLimits {
            deadline_ms: cfg.plugin_deadline_ms,
            memory_bytes_max: cfg.plugin_memory_bytes_max,
            fuel_per_call: None,
        },
        isolation,
        capabilities_allowed: cfg.plugin_capabilities_allowed.clone(),
        archive,
        reports: reports.clone(),
        report_runner: std::sync::OnceLock::new(),
        tokens: tokens.clone(),
        agents: agents.clone(),
        metrics_auth: cfg.metrics_auth,
    });
    let report_runner = Arc::new(reports::Runner::new(
        Arc::new(query::Tables::new(
            admin.clone(),
            cfg.flight_rows_max,
            query::CacheSettings::NONE,
        )),
        cfg.archive_settings().s3,
        cfg.report_destination(),
        cfg.report_output_bytes_max,
    ));
    let _ = admin.report_runner.set(Arc::downgrade(&report_runner));
    tasks.push(tokio::spawn(reports::serve(
        reports,
        report_runner,
        shutdown_rx.clone(),
    )));
    let backfill = backfill::Backfill::start(backfill::Worker {
        runtime,
        registry: registry.clone(),
        log: log.clone(),
        pipeline: pipeline.shared.clone(),
        archive: admin.archive.as_ref().map(|a| backfill::ArchiveSource {
            shared: a.clone(),
            tables: Arc::new(query::Tables::new(
                admin.clone(),
                cfg.flight_rows_max,
                query::CacheSettings::NONE,
            )),
            handle: tokio::runtime::Handle::current(),
        }),
        progress: backfill_progress,
        settings: backfill::Settings {
            batch_events: cfg.pipeline_batch_events,
            checkpoint_interval: std::time::Duration::from_millis(
                cfg.backfill_checkpoint_interval_ms,
            ),
            handoff_events: cfg.backfill_handoff_events,
            archive_read_events: cfg.backfill_archive_read_events,
            window: cfg.window_settings(),
            isolation,
            tenants: agents.tenants(),
        },
    })?;
    let wasm_max = cfg.plugin_wasm_bytes_max;
    let flight_admin = admin.clone();
    let shutdown_rx_flight = shutdown_rx.clone();
    let mut admin_shutdown = shutdown_rx;
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            admin::router(admin).layer(axum::extract::DefaultBodyLimit::max(wasm_max)),
        )
        .with_graceful_shutdown(async move {
            let _ = admin_shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }));
    let flight_addr = if cfg.flight_tokens.is_empty() {
        tracing::info!("Arrow Flight is off: no flight_tokens");
        None
    } else {
        let listener = tokio::net::TcpListener::bind(cfg.flight_addr)
            .await
            .with_context(|| format!("binding flight_addr {}", cfg.flight_addr))?;
        let addr = listener.local_addr()?;
        let service =
            arrow_flight::flight_service_server::FlightServiceServer::new(query::Service::new(
                flight_admin,
                query::Settings {
                    tokens: tokens.clone(),
                    rows_max: cfg.flight_rows_max,
                    cache: query::CacheSettings {
                        ttl: std::time::Duration::from_millis(cfg.flight_cache_ttl_ms),
                        final_ttl: std::time::Duration::from_millis(cfg.flight_cache_final_ttl_ms),
                        bytes_max: cfg.flight_cache_bytes_max,
                        event_blocks_bytes_max: cfg.flight_event_cache_bytes_max,
                    },
                    token_concurrency_max: cfg.flight_token_concurrency_max,
                    sql_plans_max: cfg.flight_sql_plans_max,
                    quotas: quotas.clone(),
                },
            ))
            .max_encoding_message_size(usize::MAX);
        let tls = match (&cfg.flight_tls_cert, &cfg.flight_tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::PathBuf, key: &str| {
                    std::fs::read(p).with_context(|| format!("{key}: reading {}", p.display()))
                };
                let identity = tonic::transport::Identity::from_pem(
                    read(cert, "flight_tls_cert")?,
                    read(key, "flight_tls_key")?,
                );
                Some(tonic::transport::ServerTlsConfig::new().identity(identity))
            }
            _ => None,
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context(
                "flight_tls_cert / flight_tls_key: not a usable PEM certificate chain and key",
            )?;
        }
        let mut flight_shutdown = shutdown_rx_flight;
        tasks.push(tokio::spawn(async move {
            // No Nagle (a small answer must not wait for a delayed ACK) and HTTP/2 windows
            // that adapt to the bandwidth, for bulk DoGet.
            let serve = builder
                .http2_adaptive_window(Some(true))
                .initial_connection_window_size(8 << 20)
                .initial_stream_window_size(4 << 20)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = flight_shutdown.changed().await;
                    },
                );
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Flight server stopped");
            }
        }));
        Some(addr)
    };
    tracing::info!(%quic_addr, %admin_addr, ?flight_addr, "broker started");
    Ok(RunningBroker {
        quic_addr,
        admin_addr,
        flight_addr,
        dev_ca: files.dev_ca,
        log,
        registry,
        pipeline,
        backfill,
        shutdown: shutdown_tx,
        tasks,
    })
}
