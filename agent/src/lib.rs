//! # runnel-agent: the edge collector
//!
//! `app ──HTTP/JSON──▶ parse → validate → dedup(event_id) → spool (fsync) → 202`, and in the
//! background the shipper sends spooled batches to the broker over QUIC and deletes them only
//! once the broker has acknowledged them durably. See `docs/ARCHITECTURE.md` for the walk from
//! the user's view down to these files:
//! - [`config`]: every setting, as flag, environment variable and config-file key;
//! - [`http`]: the ingest endpoint and its answers;
//! - [`dedup`]: the time-windowed id set;
//! - [`spool`]: the durable local buffer (group commit, mark-then-delete);
//! - [`shipper`]: the QUIC client.

pub mod config;
pub mod dedup;
pub mod edge;
pub mod http;
pub mod schemas;
pub mod shipper;
pub mod spool;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use runnel_event::Chunk;
use runnel_segment::Storage;
use tokio::sync::{Semaphore, watch};

pub use config::{AgentConfig, SpoolFullPolicy};

use crate::dedup::{Dedup, id_hash};
use crate::shipper::{Identity, Shipper, ShipperOptions};
use crate::spool::{Spool, SpoolOptions};

/// A running agent.
pub struct RunningAgent {
    /// The address the HTTP endpoint listens on (useful with port 0).
    pub http_addr: SocketAddr,
    /// The agent's id.
    pub agent_id: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    spool: Spool,
    dedup: Arc<Mutex<Dedup>>,
    storage: Arc<dyn Storage>,
    snapshot_path: std::path::PathBuf,
}

impl RunningAgent {
    /// Stops accepting, lets in-flight requests finish, stops the shipper and writes the dedup
    /// snapshot.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let snap = self.dedup.lock().expect("lock poisoned").snapshot();
        if let Err(e) = self.storage.write_atomic(&self.snapshot_path, &snap.bytes) {
            tracing::warn!(error = %e, "could not write the dedup snapshot at shutdown");
        }
        drop(self.spool);
    }
}

/// The agent's clock in ms since the Unix epoch: the host's plus `clock_offset_ms`. Every
/// `received_at` and every dedup time comes from it.
pub(crate) fn clock_ms(cfg: &AgentConfig) -> i64 {
    runnel_event::now_ms().saturating_add(cfg.clock_offset_ms)
}

/// The agent's certificate's chain and key, and the `agent_id` its subject names.
fn client_identity(cfg: &AgentConfig) -> anyhow::Result<(runnel_protocol::ClientIdentity, String)> {
    let (cert, key) = (
        cfg.tls_cert.as_ref().expect("checked by validate"),
        cfg.tls_key.as_ref().expect("checked by validate"),
    );
    let read = |p: &std::path::Path, k: &str| {
        std::fs::read(p).with_context(|| format!("{k}: reading {}", p.display()))
    };
    let identity =
        runnel_protocol::ClientIdentity::from_pem(&read(cert, "tls_cert")?, &read(key, "tls_key")?)
            .with_context(|| {
                format!("tls_cert {} and tls_key {}", cert.display(), key.display())
            })?;
    let subject = runnel_protocol::agent_subject(&identity.certs[0])
        .map_err(|e| anyhow::anyhow!("tls_cert {}: {e}", cert.display()))?;
    Ok((identity, subject.agent_id))
}

fn agent_identity(
    storage: &dyn Storage,
    cfg: &AgentConfig,
    cert_id: &str,
) -> anyhow::Result<Identity> {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(id) = &cfg.agent_id
        && id != cert_id
    {
        anyhow::bail!(
            "agent_id: {id:?} is not the agent of tls_cert, whose subject names {cert_id:?} (unset agent_id, or enroll the agent under that name)"
        );
    }
    let path = cfg.data_dir.join("agent_id");
    match storage.read_file(&path) {
        Ok(b) if !b.is_empty() => {
            let kept = String::from_utf8_lossy(&b).trim().to_string();
            if kept != cert_id {
                anyhow::bail!(
                    "tls_cert names agent {cert_id:?}, but data_dir {} belongs to agent {kept:?} (its spool holds that agent's events): enroll the agent as {kept:?} (runnel agent enroll --name {kept}), or give this certificate a new data_dir",
                    cfg.data_dir.display()
                );
            }
        }
        _ => storage.write_atomic(&path, cert_id.as_bytes())?,
    }
    Ok(Identity {
        agent_id: cert_id.to_string(),
        host,
    })
}

/// Ids the dedup rebuild's reader hands over at a time.
const REBUILD_BATCH_IDS: usize = 64 << 10;
/// Batches of ids waiting for the inserting thread during a dedup rebuild.
const REBUILD_QUEUE_BATCHES: usize = 4;

/// How many times a start opens the spool again after the dedup rebuild met a bad record in a
/// sealed segment (each open moves one such segment to quarantine).
const SPOOL_REOPENS_MAX: usize = 8;

/// Loads the dedup snapshot and adds every event still in the spool; also returns how the read
/// of the spool ended (a bad record stops it).
fn rebuild_dedup(
    storage: &dyn Storage,
    cfg: &AgentConfig,
    spool: &Spool,
    snapshot: &Path,
) -> (Dedup, Result<(), runnel_segment::LogError>) {
    let window_ms = (cfg.dedup_window_secs * 1000) as i64;
    let mut dedup = Dedup::new(window_ms, cfg.dedup_ids_max);
    let now = clock_ms(cfg);
    match storage.read_file(snapshot) {
        Ok(bytes) => match dedup.restore(&bytes, now) {
            Ok(n) => tracing::info!(ids = n, "dedup snapshot loaded"),
            Err(e) => {
                metrics::counter!("runnel_agent_dedup_snapshot_errors_total").increment(1);
                tracing::warn!(error = %e, "dedup snapshot unreadable; continuing with the spool only");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "dedup snapshot unreadable"),
    }
    // A second thread reads the spool (CRC, archive check, id hash) while this one inserts:
    // the two halves cost about the same, and a restart with a full spool waits for both.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, i64)>>(REBUILD_QUEUE_BATCHES);
    let reader = spool.reader();
    let mut spool_ids = 0usize;
    let scanned = std::thread::scope(|scope| {
        let scan = std::thread::Builder::new()
            .name("dedup-rebuild".into())
            .spawn_scoped(scope, move || {
                let mut aligned = runnel_event::wire::AlignedVec::<16>::new();
                let mut found = Vec::with_capacity(REBUILD_BATCH_IDS);
                let result = reader.scan(0, |_, payload| {
                    // Only the ids and times are needed: the payload is copied into one reused
                    // aligned buffer (the archive wants 16-byte alignment) and read there; no
                    // events are built.
                    aligned.clear();
                    aligned.extend_from_slice(payload);
                    if let Ok(chunk) = Chunk::access(&aligned) {
                        for ev in chunk.events.iter() {
                            let received = ev.received_at_ms.to_native();
                            if now - received < window_ms {
                                found.push((id_hash(ev.event_id.as_str()), received));
                            }
                        }
                    }
                    if found.len() >= REBUILD_BATCH_IDS {
                        let full =
                            std::mem::replace(&mut found, Vec::with_capacity(REBUILD_BATCH_IDS));
                        if tx.send(full).is_err() {
                            return std::ops::ControlFlow::Break(());
                        }
                    }
                    std::ops::ControlFlow::Continue(())
                });
                if !found.is_empty() {
                    let _ = tx.send(found);
                }
                result
            })
            .expect("spawning the dedup rebuild thread");
        for found in rx {
            for (hash, received) in found {
                dedup.insert(hash, received);
                spool_ids += 1;
            }
        }
        scan.join().expect("dedup rebuild thread")
    });
    dedup.expire(now);
    tracing::info!(ids = dedup.len(), from_spool = spool_ids, "dedup rebuilt");
    (dedup, scanned)
}

/// Starts an agent: recovers the spool and dedup, binds HTTP, starts the shipper.
pub async fn start(cfg: AgentConfig, storage: Arc<dyn Storage>) -> anyhow::Result<RunningAgent> {
    cfg.validate()?;
    let metrics = runnel_config::telemetry::prometheus();
    storage
        .create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (client_identity, cert_id) = client_identity(&cfg)?;
    let identity = agent_identity(&*storage, &cfg, &cert_id)?;
    let spool_dir = cfg.data_dir.join("spool");
    // One request is one spool record; its encoding may be somewhat larger than its JSON.
    let record_bytes_max = (cfg.decompressed_bytes_max as u64)
        .saturating_mul(2)
        .min(cfg.spool_segment_bytes_max - 1024)
        .min(u64::from(u32::MAX)) as u32;
    let opts = SpoolOptions {
        bytes_max: cfg.spool_bytes_max,
        segment_bytes_max: cfg.spool_segment_bytes_max,
        record_bytes_max,
        scan_sealed_at_open: cfg.spool_scan_sealed_at_open,
    };
    let snapshot_path = cfg.data_dir.join("dedup.snapshot");
    // Sealed segments open from their index files, so the dedup rebuild is the first to read
    // their records. When it meets a bad one (its index file is gone then), the spool is opened
    // again: that open scans the segment and quarantines it, and the rebuild runs again.
    let mut reopens = 0;
    let (spool, dedup) = loop {
        let (spool, report) = {
            let storage = storage.clone();
            let dir = spool_dir.clone();
            tokio::task::spawn_blocking(move || Spool::open(storage, &dir, opts)).await??
        };
        if report.truncated_bytes > 0 || !report.quarantined_segments.is_empty() {
            tracing::warn!(truncated_bytes = report.truncated_bytes, quarantined = ?report.quarantined_segments, "spool recovered from damage");
        }
        metrics::counter!("runnel_agent_spool_truncated_bytes_total")
            .increment(report.truncated_bytes);
        metrics::counter!("runnel_agent_spool_quarantined_segments_total")
            .increment(report.quarantined_segments.len() as u64);
        let (dedup, scanned) = {
            let (storage, cfg, spool, path) = (
                storage.clone(),
                cfg.clone(),
                spool.clone(),
                snapshot_path.clone(),
            );
            tokio::task::spawn_blocking(move || rebuild_dedup(&*storage, &cfg, &spool, &path))
                .await?
        };
        match scanned {
            Err(e @ runnel_segment::LogError::Corrupt { sealed: true, .. })
                if reopens < SPOOL_REOPENS_MAX =>
            {
                reopens += 1;
                tracing::warn!(error = %e, "a sealed spool segment is damaged; opening the spool again to quarantine it");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the spool to rebuild dedup stopped early");
                break (spool, dedup);
            }
            Ok(()) => break (spool, dedup),
        }
    };
    let dedup = Arc::new(Mutex::new(dedup));

    let broker_ca = cfg.broker_ca.clone().expect("checked by validate");
    let schema_path = schemas::cache_path(&cfg.data_dir);
    let current_schemas = schemas::load(&*storage, &schema_path);
    let registry_follow = {
        let ca = std::fs::read(&broker_ca)
            .with_context(|| format!("reading broker_ca {}", broker_ca.display()))?;
        schemas::Follow {
            broker_addr: cfg.broker_addr,
            server_name: cfg.broker_server_name.clone(),
            client: runnel_protocol::registry_client_config(&ca, client_identity.clone())
                .with_context(|| format!("loading broker_ca {}", broker_ca.display()))?,
            path: schema_path,
            storage: storage.clone(),
            backoff_min: Duration::from_millis(cfg.ship_backoff_min_ms),
            backoff_max: Duration::from_millis(cfg.ship_backoff_max_ms),
        }
    };
    let throttle = Arc::new(shipper::Throttle::default());
    let shipper = Shipper::new(
        ShipperOptions {
            broker_addr: cfg.broker_addr,
            server_name: cfg.broker_server_name.clone(),
            broker_ca,
            batch_bytes_max: cfg.ship_batch_bytes_max,
            in_flight_max: cfg.ship_in_flight_max,
            linger: Duration::from_millis(cfg.ship_linger_ms),
            timeout: Duration::from_millis(cfg.ship_timeout_ms),
            backoff_min: Duration::from_millis(cfg.ship_backoff_min_ms),
            backoff_max: Duration::from_millis(cfg.ship_backoff_max_ms),
            rejected_dir: cfg.data_dir.join("rejected"),
            storage: storage.clone(),
        },
        identity.clone(),
        client_identity,
        spool.clone(),
        throttle.clone(),
    )?;

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding http_addr {}", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let edge = if cfg.edge_plugin.is_empty() {
        None
    } else {
        let (paths, limits) = (
            cfg.edge_plugin.clone(),
            runnel_host::Limits {
                deadline: Duration::from_millis(cfg.edge_plugin_deadline_ms),
                memory_bytes_max: cfg.edge_plugin_memory_bytes_max,
                ..runnel_host::Limits::default()
            },
        );
        let chain =
            tokio::task::spawn_blocking(move || edge::EdgeChain::load(&paths, limits)).await??;
        tracing::info!(plugins = ?cfg.edge_plugin, "edge plugins loaded");
        Some(Arc::new(Mutex::new(chain)))
    };
    let state = Arc::new(http::AppState {
        edge,
        limits: cfg.envelope_limits(),
        event_time: cfg.event_time_bounds(),
        in_flight: Semaphore::new(cfg.requests_in_flight_max),
        spool: spool.clone(),
        dedup: dedup.clone(),
        metrics,
        cfg: cfg.clone(),
        throttle,
        schemas: current_schemas.clone(),
    });
    let mut tasks = Vec::new();
    let mut http_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
            let _ = http_shutdown.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server stopped");
        }
    }));
    tasks.push(tokio::spawn(shipper.run(shutdown_rx.clone())));
    tasks.push(tokio::spawn(schemas::follow(
        registry_follow,
        current_schemas,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(maintenance(
        spool.clone(),
        dedup.clone(),
        storage.clone(),
        snapshot_path.clone(),
        cfg.clock_offset_ms,
        cfg.spool_seal_after_ms as i64,
        shutdown_rx,
    )));
    tracing::info!(%http_addr, agent_id = %identity.agent_id, epoch = spool.epoch(), "agent started");
    Ok(RunningAgent {
        http_addr,
        agent_id: identity.agent_id,
        shutdown: shutdown_tx,
        tasks,
        spool,
        dedup,
        storage,
        snapshot_path,
    })
}

/// Once a second: age out dedup ids; seal the spool's active segment once it is
/// `spool_seal_after_ms` old; delete acknowledged spool segments after writing the dedup
/// snapshot that remembers their ids.
async fn maintenance(
    spool: Spool,
    dedup: Arc<Mutex<Dedup>>,
    storage: Arc<dyn Storage>,
    snapshot_path: std::path::PathBuf,
    clock_offset_ms: i64,
    seal_after_ms: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let evicted = {
            let mut d = dedup.lock().expect("lock poisoned");
            d.expire(runnel_event::now_ms().saturating_add(clock_offset_ms));
            metrics::gauge!("runnel_agent_dedup_ids").set(d.len() as f64);
            d.evicted_early()
        };
        metrics::counter!("runnel_agent_dedup_evicted_early_total").absolute(evicted);
        metrics::gauge!("runnel_agent_spool_bytes").set(spool.bytes() as f64);
        if let Err(e) = spool.seal_older(seal_after_ms).await {
            tracing::warn!(error = %e, "sealing the spool's active segment by age failed");
        }
        // While a request in flight holds ids below the cursor, the snapshot would keep its
        // segments anyway: no snapshot until something can be deleted.
        let floor = dedup.lock().expect("lock poisoned").spool_floor();
        if spool.deletable_segments(floor) == 0 {
            continue;
        }
        let snap = dedup.lock().expect("lock poisoned").snapshot();
        let spool_floor = snap.spool_floor;
        let (st, path) = (storage.clone(), snapshot_path.clone());
        match tokio::task::spawn_blocking(move || st.write_atomic(&path, &snap.bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "dedup snapshot failed; keeping acknowledged segments");
                continue;
            }
            Err(_) => continue,
        }
        // Ids of requests in flight at the snapshot are not in it; their records are kept.
        match spool.delete_acked(spool_floor).await {
            Ok((segments, bytes)) => {
                tracing::debug!(segments, bytes, "deleted acknowledged spool segments");
            }
            Err(e) => tracing::warn!(error = %e, "deleting acknowledged spool segments failed"),
        }
    }
}

/// Runs an agent until `stop` resolves.
pub async fn run(
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let agent = start(cfg, Arc::new(runnel_segment::FsStorage)).await?;
    stop.await;
    tracing::info!("agent shutting down");
    agent.shutdown().await;
    Ok(())
}
