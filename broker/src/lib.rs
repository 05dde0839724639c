//! # runnel-broker: the central log broker
//!
//! - [`config`]: every setting;
//! - [`tls`]: the QUIC certificate (or the dev CA);
//! - [`quic`]: the endpoint agents ship batches to;
//! - [`log`]: the durable, idempotent event log;
//! - [`admin`]: the admin HTTP API (`runnel log …` talks to it);
//! - [`dev`]: `runnel dev`, broker and agent on one data dir.

pub mod admin;
pub mod config;
pub mod dev;
pub mod log;
pub mod quic;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use runnel_segment::Storage;
use tokio::sync::watch;

pub use config::{BrokerArgs, BrokerConfig};

/// A running broker.
pub struct RunningBroker {
    /// Where agents connect.
    pub quic_addr: SocketAddr,
    /// The admin API.
    pub admin_addr: SocketAddr,
    /// The dev CA agents should trust, when the dev TLS material is in use.
    pub dev_ca: Option<std::path::PathBuf>,
    /// The log.
    pub log: log::BrokerLog,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningBroker {
    /// Stops accepting and waits for the tasks to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts a broker: recovers the log, binds QUIC and admin.
pub async fn start(cfg: BrokerConfig, storage: Arc<dyn Storage>) -> anyhow::Result<RunningBroker> {
    cfg.validate()?;
    let metrics = runnel_agent::telemetry::prometheus();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let files = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            dev_ca: None,
        },
        _ => tls::ensure_dev_tls(&cfg.data_dir.join("tls"))?,
    };
    let server_config = tls::server_config(&files, cfg.streams_per_connection_max)?;
    let (log, report) = {
        let (storage, dir) = (storage.clone(), cfg.data_dir.join("log"));
        let (seg, batch, ckpt) = (
            cfg.segment_bytes_max,
            cfg.batch_bytes_max,
            cfg.checkpoint_interval_bytes,
        );
        tokio::task::spawn_blocking(move || log::BrokerLog::open(storage, &dir, seg, batch, ckpt))
            .await??
    };
    if report.truncated_bytes > 0 || !report.quarantined_segments.is_empty() {
        tracing::warn!(truncated_bytes = report.truncated_bytes, quarantined = ?report.quarantined_segments, "log recovered from damage");
    }
    metrics::counter!("runnel_broker_log_truncated_bytes_total").increment(report.truncated_bytes);
    metrics::counter!("runnel_broker_log_quarantined_segments_total")
        .increment(report.quarantined_segments.len() as u64);

    let endpoint = quinn::Endpoint::server(server_config, cfg.quic_addr)
        .with_context(|| format!("binding quic_addr {}", cfg.quic_addr))?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding admin_addr {}", cfg.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(quic::serve(
        endpoint,
        log.clone(),
        cfg.batch_bytes_max,
        cfg.connections_max,
        shutdown_rx.clone(),
    )));
    let admin = Arc::new(admin::Admin {
        log: log.clone(),
        read_limit_max: cfg.log_read_limit_max,
        metrics,
    });
    let mut admin_shutdown = shutdown_rx;
    tasks.push(tokio::spawn(async move {
        let serve =
            axum::serve(listener, admin::router(admin)).with_graceful_shutdown(async move {
                let _ = admin_shutdown.changed().await;
            });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }));
    tracing::info!(%quic_addr, %admin_addr, "broker started");
    Ok(RunningBroker {
        quic_addr,
        admin_addr,
        dev_ca: files.dev_ca,
        log,
        shutdown: shutdown_tx,
        tasks,
    })
}
