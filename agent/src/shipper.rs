//! The shipper: sends durable spool records to the broker over QUIC and advances the cursor
//! when the broker acknowledges them.
//!
//! Batches are runs of consecutive spool records (up to `ship_batch_bytes_max`), each framed as
//! a [`Batch`] with `(agent_id, epoch, first_seq)`. Up to `ship_in_flight_max` of them are in
//! flight at once, one after another on one bidirectional stream (`runnel/2`); the broker hands
//! them to its log in that order and answers each, in that order, after its own fsync. The
//! cursor advances over the answered prefix only, so a crash at any moment leaves every
//! unanswered batch in the spool to be sent again.
//!
//! When the stream or the connection fails, or an answer is late, everything unanswered is
//! sent again, in order, on a new stream (a new connection if needed), with exponential backoff
//! and jitter between tries; the broker appends each `(agent_id, epoch, seq)` at most once, so
//! a resend after a lost answer or an agent restart never duplicates events. When the broker
//! refuses a batch (`Rejected`) it reads no more of that stream; the shipper finds the refused
//! chunks by sending that batch's chunks one at a time, keeps them in `rejected/`, and goes on
//! with the batches behind it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::BackoffBuilder;
use runnel_event::{AckStatus, Batch, BatchAck};
use runnel_segment::StoredRecord;
use tokio::sync::{mpsc, watch};

use crate::spool::Spool;
use runnel_protocol::PREV_END_BYTES;

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
    /// See `AgentConfig::ship_in_flight_max`.
    pub in_flight_max: usize,
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
    throttle: Arc<Throttle>,
}

/// Whether the broker is throttling this agent's tenant (over its ingest quota), until when
/// and why: the shipper sets it from a `Throttled` answer, and the HTTP ingest answers 429 with
/// `Retry-After` until then (what it accepted before stays in the spool and is shipped later).
#[derive(Debug, Default)]
pub struct Throttle {
    until: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Throttle {
    /// Throttled for `wait`, for `reason`.
    pub fn set(&self, wait: Duration, reason: String) {
        *self.until.lock().expect("lock poisoned") = Some((Instant::now() + wait, reason));
    }

    /// How long the throttling lasts still and why; `None` when it is over.
    pub fn current(&self) -> Option<(Duration, String)> {
        let mut until = self.until.lock().expect("lock poisoned");
        match until.as_ref() {
            Some((t, reason)) if *t > Instant::now() => Some((*t - Instant::now(), reason.clone())),
            Some(_) => {
                *until = None;
                None
            }
            None => None,
        }
    }
}

/// A batch sent and not yet answered.
struct InFlight {
    first_seq: u64,
    end: u64,
    /// What goes on the stream: `prev_end` (8 bytes, little-endian), then the frame.
    wire: Vec<u8>,
    sent_at: Instant,
}

impl InFlight {
    /// Declares that the spool's records from `prev_end` to `first_seq` need not come first.
    fn set_prev_end(&mut self, prev_end: u64) {
        debug_assert!(prev_end <= self.first_seq);
        self.wire[..PREV_END_BYTES].copy_from_slice(&prev_end.to_le_bytes());
    }
}

/// `prev_end` and the frame, as a `runnel/2` stream carries a batch.
fn wire(prev_end: u64, frame: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(PREV_END_BYTES + frame.len());
    w.extend_from_slice(&prev_end.to_le_bytes());
    w.extend_from_slice(frame);
    w
}

/// How a session (one stream) ended.
enum SessionEnd {
    Shutdown,
    /// The stream, the connection or the broker failed; `progressed`: some batch was answered.
    Failed {
        error: SendError,
        progressed: bool,
    },
    /// The broker refused the first unanswered batch.
    Rejected(String),
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
    #[error("reading the spool: {0}")]
    SpoolRead(String),
    #[error("throttled: {message}")]
    Throttled {
        message: String,
        retry_after: Duration,
    },
}

/// The error a `Throttled` or `Unavailable` answer is.
fn retry_error(ack: BatchAck) -> SendError {
    match ack.retry_after_ms() {
        Some(ms) => SendError::Throttled {
            message: ack.message,
            retry_after: Duration::from_millis(ms),
        },
        None => SendError::Unavailable(ack.message),
    }
}

impl SendError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Stream(_) => "stream",
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::SpoolRead(_) => "spool_read",
            Self::Throttled { .. } => "throttled",
        }
    }
}

impl Shipper {
    /// Prepares a shipper (no connection is made until there is something to send).
    /// `certificate` is what the agent presents to the broker.
    pub fn new(
        opts: ShipperOptions,
        identity: Identity,
        certificate: runnel_protocol::ClientIdentity,
        spool: Spool,
        throttle: Arc<Throttle>,
    ) -> anyhow::Result<Self> {
        let ca = std::fs::read(&opts.broker_ca)
            .with_context(|| format!("reading --broker-ca {}", opts.broker_ca.display()))?;
        let bind: SocketAddr = if opts.broker_addr.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("binding the QUIC client")?;
        endpoint.set_default_client_config(
            runnel_protocol::client_config(&ca, Some(certificate))
                .with_context(|| format!("loading --broker-ca {}", opts.broker_ca.display()))?,
        );
        Ok(Self {
            opts,
            identity,
            spool,
            endpoint,
            conn: None,
            throttle,
        })
    }

    /// Ships until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut queue: VecDeque<InFlight> = VecDeque::new();
        let mut next_read = self.spool.acked();
        let mut delays = self.backoff();
        loop {
            match self
                .session(&mut queue, &mut next_read, &mut shutdown)
                .await
            {
                SessionEnd::Shutdown => return,
                SessionEnd::Failed {
                    error:
                        SendError::Throttled {
                            message,
                            retry_after,
                        },
                    ..
                } => {
                    // Over the tenant's quota: wait as long as the broker says, on the same
                    // connection; the batches stay queued.
                    metrics::counter!("runnel_agent_throttled_total").increment(1);
                    if self.throttle.current().is_none() {
                        tracing::warn!(reason = %message, retry_in_ms = retry_after.as_millis() as u64, "the broker throttles this agent's tenant; answering 429 until it lets batches through");
                    }
                    self.throttle.set(retry_after, message);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                SessionEnd::Failed { error, progressed } => {
                    if progressed {
                        delays = self.backoff();
                    }
                    let delay = delays.next().unwrap_or(self.opts.backoff_max);
                    metrics::counter!("runnel_agent_ship_errors_total", "kind" => error.kind())
                        .increment(1);
                    // A broker that refuses this agent (no or a revoked certificate) closes
                    // the connection with the reason: say it, not just "connection lost".
                    let refused = self.conn.as_ref().and_then(|c| match c.close_reason() {
                        Some(quinn::ConnectionError::ApplicationClosed(a))
                            if a.error_code == runnel_protocol::REFUSED_CODE.into() =>
                        {
                            Some(String::from_utf8_lossy(&a.reason).into_owned())
                        }
                        _ => None,
                    });
                    if matches!(error, SendError::SpoolRead(_)) {
                        tracing::error!(error = %error, "reading the spool failed");
                    } else if let Some(reason) = refused.filter(|r| !r.is_empty()) {
                        tracing::error!(%reason, in_flight = queue.len(), retry_in_ms = delay.as_millis() as u64, "the broker refused this agent's connection; will try again");
                    } else {
                        tracing::warn!(error = %error, in_flight = queue.len(), retry_in_ms = delay.as_millis() as u64, "shipping failed; will send the unanswered batches again");
                    }
                    if !matches!(error, SendError::Unavailable(_) | SendError::SpoolRead(_)) {
                        self.conn = None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                SessionEnd::Rejected(reason) => {
                    let head = queue.pop_front().expect("a refused batch was in flight");
                    tracing::error!(first_seq = head.first_seq, reason = %reason, "broker rejected a batch; isolating it");
                    let Some(()) = self.isolate(&head.wire, &mut shutdown).await else {
                        return;
                    };
                    self.ack(head.end).await;
                    delays = self.backoff();
                }
            }
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.opts.backoff_min)
            .with_max_delay(self.opts.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Records that the broker has every record below `end`. Failing to write that only
    /// means the records are sent again later and dropped by the broker as duplicates.
    async fn ack(&self, end: u64) {
        let spool = self.spool.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || spool.ack(end))
            .await
            .expect("ack task")
        {
            tracing::error!(error = %e, "writing the spool cursor failed");
        }
    }

    /// One stream: sends what `queue` holds again, then keeps up to `in_flight_max` batches in
    /// flight, reading new ones from `next_read` on, and takes the answers in order.
    async fn session(
        &mut self,
        queue: &mut VecDeque<InFlight>,
        next_read: &mut u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let failed = |error, progressed| SessionEnd::Failed { error, progressed };
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => return failed(e, false),
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return failed(SendError::Stream(e.to_string()), false),
        };
        // Answers are read by their own task, so a half-read answer is never dropped while
        // this loop waits for something else.
        let (answers_tx, mut answers) = mpsc::channel(runnel_protocol::STREAM_BATCHES_MAX + 1);
        let reader = AbortOnDrop(tokio::spawn(read_answers(recv, answers_tx)));
        let timeout = self.opts.timeout;
        let mut writable = true;
        // The first is now the oldest not yet answered (see `prev_end` below).
        if let Some(head) = queue.front_mut() {
            head.set_prev_end(0);
        }
        for b in queue.iter_mut() {
            b.sent_at = Instant::now();
            if let Err(e) = write(&mut send, &b.wire, timeout).await {
                tracing::debug!(error = %e, "resending failed");
                writable = false;
                break;
            }
        }
        let mut durable = self.spool.durable_end();
        let mut progressed = false;
        // After an empty read past the durable end (a quarantined segment), wait a little.
        let mut read_again_at: Option<tokio::time::Instant> = None;
        loop {
            let room = writable && queue.len() < self.opts.in_flight_max;
            let more = *durable.borrow_and_update() > *next_read
                && read_again_at.is_none_or(|t| tokio::time::Instant::now() >= t);
            if room && more {
                read_again_at = None;
                if queue.is_empty() && !self.opts.linger.is_zero() {
                    // Nothing in flight: let the batch fill a little.
                    tokio::time::sleep(self.opts.linger).await;
                }
                // The oldest batch not yet answered declares 0: every record before it was
                // answered, kept aside or lost to a quarantined spool segment, so the broker
                // may take it across any gap. A batch behind others declares where the one
                // before it ended, so it can never pass one that failed.
                let prev_end = if queue.is_empty() { 0 } else { *next_read };
                match self.read_batch(*next_read, prev_end).await {
                    Ok(Some(mut b)) => {
                        b.sent_at = Instant::now();
                        let sent = write(&mut send, &b.wire, timeout).await;
                        *next_read = b.end;
                        if !queue.is_empty() {
                            metrics::counter!("runnel_agent_ship_pipelined_total").increment(1);
                        }
                        queue.push_back(b);
                        metrics::gauge!("runnel_agent_ship_in_flight").set(queue.len() as f64);
                        if let Err(e) = sent {
                            // Take what the broker still answers (a refusal, say), then fail.
                            tracing::debug!(error = %e, "sending failed");
                            writable = false;
                        }
                        continue;
                    }
                    Ok(None) => {
                        read_again_at = Some(tokio::time::Instant::now() + self.opts.backoff_min);
                        continue;
                    }
                    Err(e) => return failed(e, progressed),
                }
            }
            if !writable && queue.is_empty() {
                return failed(SendError::Stream("stream closed".into()), progressed);
            }
            let deadline = queue
                .front()
                .map(|b| tokio::time::Instant::from_std(b.sent_at + timeout));
            tokio::select! {
                // An answer first: it may be the one the deadline below is for.
                biased;
                answer = answers.recv(), if !queue.is_empty() => {
                    let ack = match answer {
                        Some(Ok(ack)) => ack,
                        Some(Err(e)) => return failed(e, progressed),
                        None => return failed(SendError::Stream("stream closed".into()), progressed),
                    };
                    match ack.status {
                        AckStatus::Appended | AckStatus::Duplicate => {
                            let b = queue.pop_front().expect("checked above");
                            self.answered(&b, &ack);
                            progressed = true;
                            // Take every answer already here, then move the cursor once.
                            let mut end = b.end;
                            while !queue.is_empty() {
                                match answers.try_recv() {
                                    Ok(Ok(ack)) if matches!(ack.status, AckStatus::Appended | AckStatus::Duplicate) => {
                                        let b = queue.pop_front().expect("checked above");
                                        self.answered(&b, &ack);
                                        end = b.end;
                                    }
                                    Ok(Ok(ack)) if ack.status == AckStatus::Rejected => {
                                        self.ack(end).await;
                                        return SessionEnd::Rejected(ack.message);
                                    }
                                    Ok(Ok(ack)) => {
                                        self.ack(end).await;
                                        return failed(retry_error(ack), true);
                                    }
                                    Ok(Err(e)) => {
                                        self.ack(end).await;
                                        return failed(e, true);
                                    }
                                    Err(_) => break,
                                }
                            }
                            metrics::gauge!("runnel_agent_ship_in_flight").set(queue.len() as f64);
                            self.ack(end).await;
                        }
                        AckStatus::Rejected => return SessionEnd::Rejected(ack.message),
                        AckStatus::Unavailable | AckStatus::Throttled => {
                            return failed(retry_error(ack), progressed);
                        }
                    }
                }
                r = durable.changed(), if room && !more && read_again_at.is_none() => {
                    if r.is_err() {
                        return SessionEnd::Shutdown;
                    }
                }
                _ = tokio::time::sleep_until(read_again_at.unwrap_or_else(tokio::time::Instant::now)), if room && read_again_at.is_some() => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    drop(reader);
                    return failed(SendError::Timeout, progressed);
                }
                _ = shutdown.changed() => return SessionEnd::Shutdown,
            }
        }
    }

    /// Counts an answered batch.
    fn answered(&self, b: &InFlight, ack: &BatchAck) {
        metrics::histogram!("runnel_agent_ship_latency_seconds")
            .record(b.sent_at.elapsed().as_secs_f64());
        metrics::counter!("runnel_agent_batches_shipped_total").increment(1);
        metrics::counter!("runnel_agent_events_acked_total")
            .increment(u64::from(ack.appended_events));
        metrics::counter!("runnel_agent_bytes_shipped_total").increment(b.wire.len() as u64);
    }

    /// The next batch from spool sequence `from` on, framed; `None` when there is nothing to
    /// read there yet.
    /// `prev_end`: where the batch before it ended, or 0 when nothing older is unanswered.
    async fn read_batch(&self, from: u64, prev_end: u64) -> Result<Option<InFlight>, SendError> {
        let reader = self.spool.reader().clone();
        let max = self.opts.batch_bytes_max;
        let (agent_id, host, epoch) = (
            self.identity.agent_id.clone(),
            self.identity.host.clone(),
            self.spool.epoch(),
        );
        tokio::task::spawn_blocking(move || {
            let records = reader
                .read(from, BATCH_CHUNKS_MAX, max)
                .map_err(|e| SendError::SpoolRead(e.to_string()))?;
            if records.is_empty() {
                return Ok(None);
            }
            let records = consecutive(records);
            let first_seq = records[0].header.base_offset;
            let end = first_seq + records.len() as u64;
            let frame = Batch {
                agent_id,
                host,
                epoch,
                first_seq,
                chunks: records.into_iter().map(|r| r.payload).collect(),
            }
            .encode_frame();
            Ok(Some(InFlight {
                first_seq,
                end,
                wire: wire(prev_end, &frame),
                sent_at: Instant::now(),
            }))
        })
        .await
        .expect("spool read task")
    }

    /// Finds the chunks of a refused batch that the broker refuses by sending them one at a
    /// time, and keeps those aside; `None` on shutdown. Each single is the oldest record not
    /// yet answered when it is sent, so it declares `prev_end` 0.
    async fn isolate(&mut self, wire: &[u8], shutdown: &mut watch::Receiver<bool>) -> Option<()> {
        let frame = &wire[PREV_END_BYTES..];
        let body = runnel_event::wire::decode_frame(frame, usize::MAX).expect("a frame we made");
        let (archived, _) = runnel_event::wire::access_batch(&body).expect("a frame we made");
        let (agent_id, host, epoch, first_seq) = (
            archived.agent_id.to_string(),
            archived.host.to_string(),
            archived.epoch.to_native(),
            archived.first_seq.to_native(),
        );
        for (i, chunk) in archived.chunks.iter().enumerate() {
            let single = Batch {
                agent_id: agent_id.clone(),
                host: host.clone(),
                epoch,
                first_seq: first_seq + i as u64,
                chunks: vec![chunk.as_slice().to_vec()],
            };
            let ack = self.send_until_answered(&single, 0, shutdown).await?;
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

    /// Sends one batch on a stream of its own until the broker answers it; `None` on shutdown.
    async fn send_until_answered(
        &mut self,
        batch: &Batch,
        prev_end: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<BatchAck> {
        let frame = wire(prev_end, &batch.encode_frame());
        let mut delays = self.backoff();
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
                Err(SendError::Throttled {
                    message,
                    retry_after,
                }) => {
                    metrics::counter!("runnel_agent_throttled_total").increment(1);
                    self.throttle.set(retry_after, message);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        _ = shutdown.changed() => return None,
                    }
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
        if runnel_protocol::negotiated(&conn).as_deref() != Some(runnel_protocol::ALPN) {
            conn.close(0u32.into(), b"protocol");
            return Err(SendError::Connect(format!(
                "the broker at {} speaks only runnel/1 and this agent ships runnel/2: upgrade the broker (it serves agents of both)",
                self.opts.broker_addr
            )));
        }
        tracing::info!(broker = %self.opts.broker_addr, "connected to broker");
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn send_once(&mut self, wire: &[u8]) -> Result<BatchAck, SendError> {
        let conn = self.connection().await?;
        let exchange = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| SendError::Stream(e.to_string()))?;
            match send.write_all(wire).await {
                Ok(()) => send
                    .finish()
                    .map_err(|e| SendError::Stream(e.to_string()))?,
                // The broker stopped reading: it refuses the frame (too large, say) and its
                // answer follows.
                Err(quinn::WriteError::Stopped(_)) => {}
                Err(e) => return Err(SendError::Stream(e.to_string())),
            }
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
            AckStatus::Unavailable | AckStatus::Throttled => Err(retry_error(ack)),
            _ => Ok(ack),
        }
    }
}

/// Writes one frame to the stream, within `timeout`.
async fn write(
    send: &mut quinn::SendStream,
    frame: &[u8],
    timeout: Duration,
) -> Result<(), SendError> {
    tokio::time::timeout(timeout, send.write_all(frame))
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(|e| SendError::Stream(e.to_string()))
}

/// Reads the broker's answers off a stream, in order, until it ends or fails.
async fn read_answers(
    mut recv: quinn::RecvStream,
    answers: mpsc::Sender<Result<BatchAck, SendError>>,
) {
    loop {
        let answer = read_answer(&mut recv).await;
        let end = !matches!(answer, Ok(Some(_)));
        let item = match answer {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if answers.send(item).await.is_err() || end {
            return;
        }
    }
}

/// One answer (`BatchAck`, self-delimiting); `None` when the broker finished the stream.
async fn read_answer(recv: &mut quinn::RecvStream) -> Result<Option<BatchAck>, SendError> {
    let stream = |e: quinn::ReadExactError| SendError::Stream(e.to_string());
    let mut fixed = [0u8; runnel_event::wire::ACK_FIXED_BYTES];
    match recv.read_exact(&mut fixed).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(stream(e)),
    }
    let mut ack = fixed.to_vec();
    let message_len = runnel_event::wire::ack_message_len(&fixed);
    ack.resize(fixed.len() + message_len, 0);
    recv.read_exact(&mut ack[fixed.len()..])
        .await
        .map_err(stream)?;
    BatchAck::decode(&ack)
        .map(Some)
        .map_err(|e| SendError::Stream(e.to_string()))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
