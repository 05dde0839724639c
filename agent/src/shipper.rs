//! The shipper: sends durable spool records to the broker over QUIC and advances the cursor
//! when the broker acknowledges them.
//!
//! One batch is in flight at a time: a run of consecutive spool records (up to
//! `ship_batch_bytes_max`), framed as a [`Batch`] with `(agent_id, epoch, first_seq)`, on one
//! bidirectional stream. The broker answers after its own fsync. Until an answer comes the same
//! batch is sent again, on a new connection if needed, with exponential backoff and jitter
//! between tries; the broker appends each `(agent_id, epoch, seq)` at most once, so a resend
//! after a lost answer or an agent restart never duplicates events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::BackoffBuilder;
use runnel_event::{AckStatus, Batch, BatchAck};
use runnel_segment::StoredRecord;
use tokio::sync::watch;

use crate::spool::Spool;

/// Most spool records in one batch.
pub const BATCH_CHUNKS_MAX: usize = 65_536;

/// Who this agent is, as the broker sees it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Stable agent id.
    pub agent_id: String,
    /// Host name.
    pub host: String,
}

/// Shipper settings.
#[derive(Debug, Clone)]
pub struct ShipperOptions {
    /// Broker QUIC address.
    pub broker_addr: SocketAddr,
    /// Name on the broker's certificate.
    pub server_name: String,
    /// PEM file of the CA to trust.
    pub broker_ca: PathBuf,
    /// See `AgentConfig::ship_batch_bytes_max`.
    pub batch_bytes_max: usize,
    /// See `AgentConfig::ship_linger_ms`.
    pub linger: Duration,
    /// See `AgentConfig::ship_timeout_ms`.
    pub timeout: Duration,
    /// See `AgentConfig::ship_backoff_min_ms`.
    pub backoff_min: Duration,
    /// See `AgentConfig::ship_backoff_max_ms`.
    pub backoff_max: Duration,
    /// Where chunks the broker refuses as invalid are kept (never deleted by the agent).
    pub rejected_dir: PathBuf,
    /// Files go through the storage seam.
    pub storage: Arc<dyn runnel_segment::Storage>,
}

/// The shipper task.
pub struct Shipper {
    opts: ShipperOptions,
    identity: Identity,
    spool: Spool,
    endpoint: quinn::Endpoint,
    conn: Option<quinn::Connection>,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("timed out waiting for the broker's answer")]
    Timeout,
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl SendError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Stream(_) => "stream",
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl Shipper {
    /// Prepares a shipper (no connection is made until there is something to send).
    pub fn new(opts: ShipperOptions, identity: Identity, spool: Spool) -> anyhow::Result<Self> {
        let ca = std::fs::read(&opts.broker_ca)
            .with_context(|| format!("reading --broker-ca {}", opts.broker_ca.display()))?;
        let bind: SocketAddr = if opts.broker_addr.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("binding the QUIC client")?;
        endpoint.set_default_client_config(
            runnel_protocol::client_config(&ca)
                .with_context(|| format!("loading --broker-ca {}", opts.broker_ca.display()))?,
        );
        Ok(Self {
            opts,
            identity,
            spool,
            endpoint,
            conn: None,
        })
    }

    /// Ships until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut next = self.spool.acked();
        let mut durable = self.spool.durable_end();
        loop {
            while *durable.borrow_and_update() <= next {
                tokio::select! {
                    r = durable.changed() => if r.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
            if !self.opts.linger.is_zero() {
                tokio::time::sleep(self.opts.linger).await;
            }
            let reader = self.spool.reader().clone();
            let max = self.opts.batch_bytes_max;
            let read =
                tokio::task::spawn_blocking(move || reader.read(next, BATCH_CHUNKS_MAX, max))
                    .await
                    .expect("spool read task");
            let records = match read {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => {
                    tokio::time::sleep(self.opts.backoff_min).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool failed");
                    metrics::counter!("runnel_agent_ship_errors_total", "kind" => "spool_read")
                        .increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(self.opts.backoff_max) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let records = consecutive(records);
            let first = records[0].header.base_offset;
            let end = first + records.len() as u64;
            let Some(()) = self.ship_records(records, &mut shutdown).await else {
                return;
            };
            let spool = self.spool.clone();
            match tokio::task::spawn_blocking(move || spool.ack(end))
                .await
                .expect("ack task")
            {
                Ok(()) => next = end,
                Err(e) => {
                    // The broker has the batch; failing to record that only means it is sent
                    // again later and dropped by the broker as a duplicate.
                    tracing::error!(error = %e, "writing the spool cursor failed");
                    next = end;
                }
            }
        }
    }

    /// Sends the records until the broker has them; `None` on shutdown.
    async fn ship_records(
        &mut self,
        records: Vec<StoredRecord>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<()> {
        let first_seq = records[0].header.base_offset;
        let batch = Batch {
            agent_id: self.identity.agent_id.clone(),
            host: self.identity.host.clone(),
            epoch: self.spool.epoch(),
            first_seq,
            chunks: records.into_iter().map(|r| r.payload).collect(),
        };
        let ack = self.send_until_answered(&batch, shutdown).await?;
        if ack.status != AckStatus::Rejected {
            return Some(());
        }
        tracing::error!(first_seq, reason = %ack.message, "broker rejected a batch; isolating it");
        // Find the chunks the broker refuses by sending them one at a time; keep those aside.
        // Each one-chunk batch takes its chunk from the batch: nothing else is copied.
        let Batch {
            agent_id,
            host,
            epoch,
            chunks,
            ..
        } = batch;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let single = Batch {
                agent_id: agent_id.clone(),
                host: host.clone(),
                epoch,
                first_seq: first_seq + i as u64,
                chunks: vec![chunk],
            };
            let ack = self.send_until_answered(&single, shutdown).await?;
            if ack.status == AckStatus::Rejected {
                metrics::counter!("runnel_agent_chunks_rejected_by_broker_total").increment(1);
                // Until the chunk is kept on disk the cursor must not pass it.
                loop {
                    match self.keep_rejected(&single, &ack.message) {
                        Ok(path) => {
                            tracing::error!(path = %path.display(), reason = %ack.message, "kept a chunk the broker refused");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not keep a chunk the broker refused; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(self.opts.backoff_max) => {}
                                _ = shutdown.changed() => return None,
                            }
                        }
                    }
                }
            }
        }
        Some(())
    }

    /// Keeps a chunk the broker refused in `rejected/`, durably, before the cursor may pass it.
    fn keep_rejected(&self, batch: &Batch, reason: &str) -> std::io::Result<std::path::PathBuf> {
        let name = format!("{}-{}.chunk", batch.epoch, batch.first_seq);
        let path = self.opts.rejected_dir.join(name);
        let st = &self.opts.storage;
        st.create_dir_all(&self.opts.rejected_dir)?;
        st.write_atomic(&path.with_extension("reason"), reason.as_bytes())?;
        st.write_atomic(&path, &batch.chunks[0])?;
        Ok(path)
    }

    async fn send_until_answered(
        &mut self,
        batch: &Batch,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<BatchAck> {
        let frame = batch.encode_frame();
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(self.opts.backoff_min)
            .with_max_delay(self.opts.backoff_max)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                r = self.send_once(&frame) => r,
                _ = shutdown.changed() => return None,
            };
            match attempt {
                Ok(ack) => {
                    metrics::histogram!("runnel_agent_ship_latency_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("runnel_agent_batches_shipped_total").increment(1);
                    metrics::counter!("runnel_agent_events_acked_total")
                        .increment(u64::from(ack.appended_events));
                    metrics::counter!("runnel_agent_bytes_shipped_total")
                        .increment(frame.len() as u64);
                    return Some(ack);
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(self.opts.backoff_max);
                    metrics::counter!("runnel_agent_ship_errors_total", "kind" => e.kind())
                        .increment(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "shipping failed; will retry");
                    if !matches!(e, SendError::Unavailable(_)) {
                        self.conn = None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            }
        }
    }

    async fn connection(&mut self) -> Result<quinn::Connection, SendError> {
        if let Some(c) = &self.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connecting = self
            .endpoint
            .connect(self.opts.broker_addr, &self.opts.server_name)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(self.opts.timeout, connecting)
            .await
            .map_err(|_| SendError::Connect("timed out".into()))?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tracing::info!(broker = %self.opts.broker_addr, "connected to broker");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn send_once(&mut self, frame: &[u8]) -> Result<BatchAck, SendError> {
        let conn = self.connection().await?;
        let exchange = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| SendError::Stream(e.to_string()))?;
            send.write_all(frame)
                .await
                .map_err(|e| SendError::Stream(e.to_string()))?;
            send.finish()
                .map_err(|e| SendError::Stream(e.to_string()))?;
            let answer = recv
                .read_to_end(runnel_protocol::ACK_BYTES_MAX)
                .await
                .map_err(|e| SendError::Stream(e.to_string()))?;
            BatchAck::decode(&answer).map_err(|e| SendError::Stream(e.to_string()))
        };
        let ack = tokio::time::timeout(self.opts.timeout, exchange)
            .await
            .map_err(|_| SendError::Timeout)??;
        match ack.status {
            AckStatus::Unavailable => Err(SendError::Unavailable(ack.message)),
            _ => Ok(ack),
        }
    }
}

/// Keeps the leading run of records with consecutive sequence numbers (a quarantined spool
/// segment leaves a gap; a batch never spans one).
fn consecutive(mut records: Vec<StoredRecord>) -> Vec<StoredRecord> {
    let first = records[0].header.base_offset;
    let run = records
        .iter()
        .enumerate()
        .take_while(|(i, r)| r.header.base_offset == first + *i as u64)
        .count();
    records.truncate(run);
    records
}
