//! The QUIC endpoint agents ship to. A bidirectional stream carries one or more batch frames
//! (`runnel/2`; `runnel/1` agents send one); each is checked and handed to the log writer in
//! the order it came, and the answers are written in that order, each after its fsync. Every
//! connection and stream task is joined at shutdown.
//!
//! Each connection is admitted by its client certificate ([`crate::auth::agents`]), and every
//! batch on it must carry the certificate's `agent_id`: a batch of another agent (forged, or
//! replayed from another agent's traffic) is refused. What is refused is counted in
//! `runnel_broker_agents_refused_total{reason}` and touches no other connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_event::wire::{FRAME_HEADER_BYTES, WireError, decode_frame_header};
use runnel_event::{AckStatus, BatchAck};
use runnel_protocol::{PREV_END_BYTES, STREAM_BATCHES_MAX};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::auth::agents::{self, Agents, Identity};
use crate::log::{BrokerLog, check_batch};

/// The endpoint's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See `BrokerConfig::batch_bytes_max`.
    pub batch_bytes_max: usize,
    /// See `BrokerConfig::connections_max`.
    pub connections_max: u32,
    /// See `BrokerConfig::connections_per_address_max`.
    pub connections_per_address_max: u32,
    /// See `BrokerConfig::ingest_frame_timeout_ms`.
    pub frame_timeout: Duration,
    /// The tenants' quotas (`tenant_ingest_events_per_sec`, `tenant_log_bytes_per_sec`, `tenant_quotas`).
    pub quotas: Arc<crate::auth::Quotas>,
}

/// Accepts connections until `shutdown` turns true, then closes the endpoint and waits for every
/// connection task (and the batch streams each started) to end.
pub async fn serve(
    endpoint: quinn::Endpoint,
    log: BrokerLog,
    agents: Arc<Agents>,
    limits: Limits,
    registry: watch::Receiver<Arc<runnel_schema::Document>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicU32::new(0));
    let per_address: Arc<Mutex<HashMap<IpAddr, u32>>> = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
            // Reap finished connection tasks as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        if open.load(Ordering::Relaxed) >= limits.connections_max {
            metrics::counter!("runnel_broker_connections_refused_total").increment(1);
            incoming.refuse();
            continue;
        }
        let ip = incoming.remote_address().ip();
        {
            let mut map = per_address.lock().expect("lock poisoned");
            let n = map.entry(ip).or_insert(0);
            if *n >= limits.connections_per_address_max {
                drop(map);
                metrics::counter!("runnel_broker_connections_refused_total").increment(1);
                agents::refused("connections_per_address");
                incoming.refuse();
                continue;
            }
            *n += 1;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (log, open, agents, per_address, limits, registry) = (
            log.clone(),
            open.clone(),
            agents.clone(),
            per_address.clone(),
            limits.clone(),
            registry.clone(),
        );
        connections.spawn(async move {
            match incoming.await {
                Ok(conn) => connection(conn, log, agents, limits, registry).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
            open.fetch_sub(1, Ordering::Relaxed);
            let mut map = per_address.lock().expect("lock poisoned");
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        });
    }
    // Closing the endpoint ends every connection, so each task's accept loop returns; batches
    // being appended finish their append (the agent learns the outcome on its next connection).
    endpoint.close(0u32.into(), b"broker shutting down");
    while connections.join_next().await.is_some() {}
    endpoint.wait_idle().await;
}

async fn connection(
    conn: quinn::Connection,
    log: BrokerLog,
    agents: Arc<Agents>,
    limits: Limits,
    registry: watch::Receiver<Arc<runnel_schema::Document>>,
) {
    let peer = conn.remote_address();
    let admitted = {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || agents.admit(&conn)).await
    };
    let (identity, _admitted) = match admitted {
        Ok(Ok(a)) => a,
        Ok(Err((reason, message))) => {
            agents::refused(reason);
            tracing::warn!(%peer, reason, %message, "refused an agent connection");
            conn.close(agents::REFUSED_CODE.into(), message.as_bytes());
            return;
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "admitting a connection failed");
            conn.close(agents::REFUSED_CODE.into(), b"internal error");
            return;
        }
    };
    let identity = Arc::new(identity);
    if runnel_protocol::negotiated(&conn).as_deref() == Some(runnel_protocol::REGISTRY_ALPN) {
        metrics::gauge!("runnel_broker_registry_connections").increment(1.0);
        if let Err(e) = push_registry(&conn, registry).await {
            tracing::debug!(%peer, agent = %identity.agent_id, error = %e, "registry connection ended");
        }
        metrics::gauge!("runnel_broker_registry_connections").decrement(1.0);
        return;
    }
    // `runnel/2` agents send a `prev_end` before each frame; `runnel/1` agents do not.
    let v2 = runnel_protocol::negotiated(&conn).as_deref() == Some(runnel_protocol::ALPN);
    tracing::debug!(%peer, v2, agent = %identity.agent_id, tenant = %identity.tenant, "agent connected");
    metrics::gauge!("runnel_broker_connections").increment(1.0);
    let mut streams = JoinSet::new();
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "agent connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
        };
        let (log, identity, limits) = (log.clone(), identity.clone(), limits.clone());
        streams.spawn(async move {
            if let Err(e) = stream(send, recv, log, &identity, limits, v2).await {
                tracing::debug!(error = %e, "batch stream failed");
            }
        });
    }
    while streams.join_next().await.is_some() {}
    metrics::gauge!("runnel_broker_connections").decrement(1.0);
}

/// A registry connection: the agent's stream names the generation it has; the document is
/// written when it differs, then every new one, until the connection ends.
async fn push_registry(
    conn: &quinn::Connection,
    mut registry: watch::Receiver<Arc<runnel_schema::Document>>,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut have = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut have)).await??;
    let mut have = u64::from_le_bytes(have);
    loop {
        let doc = registry.borrow_and_update().clone();
        if doc.generation != have {
            let json = serde_json::to_vec(&*doc)?;
            anyhow::ensure!(
                json.len() <= runnel_protocol::REGISTRY_BYTES_MAX,
                "the registry document is {} bytes, over {}",
                json.len(),
                runnel_protocol::REGISTRY_BYTES_MAX
            );
            send.write_all(&(json.len() as u32).to_le_bytes()).await?;
            send.write_all(&json).await?;
            metrics::counter!("runnel_broker_registry_pushes_total").increment(1);
            have = doc.generation;
        }
        tokio::select! {
            changed = registry.changed() => changed?,
            e = conn.closed() => return Err(e.into()),
        }
    }
}

/// One stream: a reader hands each frame, checked, to the log in order and queues its answer
/// to come; a writer sends the answers in the same order. A refused frame is answered and ends
/// the reading (the agent resends what followed it on a new stream).
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    log: BrokerLog,
    identity: &Identity,
    limits: Limits,
    v2: bool,
) -> anyhow::Result<()> {
    let batch_bytes_max = limits.batch_bytes_max;
    let (answers, mut pending) = mpsc::channel::<Answer>(STREAM_BATCHES_MAX);
    let read = async move {
        loop {
            let (prev_end, frame) =
                match read_frame(&mut recv, batch_bytes_max, v2, limits.frame_timeout).await {
                    Ok(Some(read)) => read,
                    Ok(None) => return Ok(()),
                    Err(ReadFrame::Refused(reason)) => {
                        let _ = answers
                            .send(Box::pin(std::future::ready(rejected(reason))))
                            .await;
                        let _ = recv.stop(0u32.into());
                        return Ok(());
                    }
                    Err(ReadFrame::Stream(e)) => return Err(e),
                };
            let checked = check_batch(frame, batch_bytes_max)
                .inspect_err(|_| agents::refused("bad_batch"))
                .and_then(|b| {
                    if b.agent_id == identity.agent_id {
                        Ok(b)
                    } else {
                        agents::refused("agent_id_mismatch");
                        Err(format!(
                            "agent_id {:?} is not this connection's: its certificate names {:?}",
                            b.agent_id, identity.agent_id
                        ))
                    }
                })
                .and_then(|b| match prev_end {
                    Some(p) => b.with_prev_end(p),
                    None => Ok(b),
                });
            // The tenant's ingest quota: over it, nothing of the batch is appended and the
            // agent is told when to send it again (and what follows it, on a new stream).
            let checked = checked.map(|batch| {
                let events: u64 = batch.chunk_events.iter().map(|n| u64::from(*n)).sum();
                let bytes = batch.frame.len() as u64;
                match limits.quotas.take_ingest(&identity.tenant, events, bytes) {
                    Ok(()) => Ok(batch),
                    Err(t) => Err(BatchAck::throttled(t.wait_ms, t.message(&identity.tenant))),
                }
            });
            let checked = match checked {
                Ok(Ok(batch)) => Ok(batch),
                Ok(Err(throttled)) => {
                    let _ = answers.send(Box::pin(std::future::ready(throttled))).await;
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
                Err(reason) => Err(reason),
            };
            let answer: Answer = match checked {
                Ok(batch) => Box::pin(log.submit(batch).await),
                Err(reason) => {
                    let _ = answers
                        .send(Box::pin(std::future::ready(rejected(reason))))
                        .await;
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
            };
            if answers.send(answer).await.is_err() {
                // The writer half failed: the agent is gone.
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some(answer) = pending.recv().await {
            let ack = answer.await;
            if ack.status == AckStatus::Rejected {
                metrics::counter!("runnel_broker_batches_rejected_total").increment(1);
                tracing::warn!(reason = %ack.message, "rejected a batch");
            }
            send.write_all(&ack.encode()).await?;
        }
        send.finish()?;
        // Wait until the agent has every answer (or is gone) before dropping the stream.
        let _ = send.stopped().await;
        anyhow::Ok(())
    };
    let (read, write) = tokio::join!(read, write);
    read.and(write)
}

/// An answer to come, in a stream's order.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = BatchAck> + Send>>;

enum ReadFrame {
    /// The frame is refused before it is read whole (its header is wrong or too large).
    Refused(String),
    /// The stream broke.
    Stream(anyhow::Error),
}

/// The next `prev_end` (`runnel/2`) and whole frame of the stream; `None` when the agent
/// finished the stream.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    batch_bytes_max: usize,
    v2: bool,
    timeout: Duration,
) -> Result<Option<(Option<u64>, Vec<u8>)>, ReadFrame> {
    // Between frames a stream may wait as long as the agent likes (it keeps one open); once a
    // frame's first byte is in, the whole frame must follow within `timeout`, so a stream that
    // stalls mid-frame does not hold its place for ever.
    let mut first = [0u8; 1];
    match recv.read_exact(&mut first).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Ok(None),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadFrame::Stream(e.into())),
    }
    match tokio::time::timeout(timeout, read_rest(recv, first[0], batch_bytes_max, v2)).await {
        Ok(read) => read.map(Some),
        Err(_) => {
            agents::refused("frame_timeout");
            Err(ReadFrame::Refused(format!(
                "the frame did not arrive within ingest_frame_timeout_ms ({} ms)",
                timeout.as_millis()
            )))
        }
    }
}

/// The rest of a frame whose first byte is `first`.
async fn read_rest(
    recv: &mut quinn::RecvStream,
    first: u8,
    batch_bytes_max: usize,
    v2: bool,
) -> Result<(Option<u64>, Vec<u8>), ReadFrame> {
    // The prefix (`runnel/2`) and the frame header, read as one.
    let mut buf = [0u8; PREV_END_BYTES + FRAME_HEADER_BYTES];
    let head = &mut buf[if v2 { 0 } else { PREV_END_BYTES }..];
    head[0] = first;
    match recv.read_exact(&mut head[1..]).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadFrame::Refused(format!(
                "frame truncated: {} bytes, expected {}",
                n + 1,
                head.len()
            )));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadFrame::Stream(e.into())),
    }
    let (prefix, header) = head.split_at(head.len() - FRAME_HEADER_BYTES);
    let prev_end = v2.then(|| u64::from_le_bytes(prefix.try_into().expect("8 bytes")));
    let h = decode_frame_header(header, batch_bytes_max).map_err(|e| match e {
        WireError::TooLarge { .. } => {
            agents::refused("frame_too_large");
            ReadFrame::Refused(format!(
                "batch exceeds batch_bytes_max ({batch_bytes_max} bytes)"
            ))
        }
        e => {
            agents::refused("bad_frame");
            ReadFrame::Refused(e.to_string())
        }
    })?;
    let mut frame = vec![0u8; FRAME_HEADER_BYTES + h.body_len];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(header);
    match recv.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await {
        Ok(()) => Ok((prev_end, frame)),
        Err(quinn::ReadExactError::FinishedEarly(n)) => Err(ReadFrame::Refused(format!(
            "frame truncated: {} bytes, expected {}",
            FRAME_HEADER_BYTES + n,
            frame.len()
        ))),
        Err(quinn::ReadExactError::ReadError(e)) => Err(ReadFrame::Stream(e.into())),
    }
}

fn rejected(message: String) -> BatchAck {
    BatchAck {
        status: AckStatus::Rejected,
        base_offset: 0,
        appended_events: 0,
        duplicate_chunks: 0,
        message,
    }
}
