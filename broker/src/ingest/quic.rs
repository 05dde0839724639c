//! The QUIC endpoint agents ship to: one bidirectional stream per batch; the answer is written
//! after the log's fsync. Every connection and stream task is joined at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use runnel_event::wire::FRAME_HEADER_BYTES;
use runnel_event::{AckStatus, BatchAck};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::log::{BrokerLog, check_batch};

/// Accepts connections until `shutdown` turns true, then closes the endpoint and waits for every
/// connection task (and the batch streams each started) to end.
pub async fn serve(
    endpoint: quinn::Endpoint,
    log: BrokerLog,
    batch_bytes_max: usize,
    connections_max: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicU32::new(0));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
            // Reap finished connection tasks as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        if open.load(Ordering::Relaxed) >= connections_max {
            metrics::counter!("runnel_broker_connections_refused_total").increment(1);
            incoming.refuse();
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (log, open) = (log.clone(), open.clone());
        connections.spawn(async move {
            match incoming.await {
                Ok(conn) => connection(conn, log, batch_bytes_max).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Closing the endpoint ends every connection, so each task's accept loop returns; batches
    // being appended finish their append (the agent learns the outcome on its next connection).
    endpoint.close(0u32.into(), b"broker shutting down");
    while connections.join_next().await.is_some() {}
    endpoint.wait_idle().await;
}

async fn connection(conn: quinn::Connection, log: BrokerLog, batch_bytes_max: usize) {
    let peer = conn.remote_address();
    tracing::debug!(%peer, "agent connected");
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
        let log = log.clone();
        streams.spawn(async move {
            if let Err(e) = stream(send, recv, log, batch_bytes_max).await {
                tracing::debug!(error = %e, "batch stream failed");
            }
        });
    }
    while streams.join_next().await.is_some() {}
    metrics::gauge!("runnel_broker_connections").decrement(1.0);
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    log: BrokerLog,
    batch_bytes_max: usize,
) -> anyhow::Result<()> {
    let ack = match recv.read_to_end(batch_bytes_max + FRAME_HEADER_BYTES).await {
        Err(quinn::ReadToEndError::TooLong) => rejected(format!(
            "batch exceeds batch_bytes_max ({batch_bytes_max} bytes)"
        )),
        Err(e) => return Err(e.into()),
        Ok(frame) => match check_batch(frame, batch_bytes_max) {
            Ok(batch) => log.append(batch).await,
            Err(reason) => rejected(reason),
        },
    };
    if ack.status == AckStatus::Rejected {
        metrics::counter!("runnel_broker_batches_rejected_total").increment(1);
        tracing::warn!(reason = %ack.message, "rejected a batch");
    }
    send.write_all(&ack.encode()).await?;
    send.finish()?;
    // Wait until the agent has the whole answer (or gone) before dropping the stream.
    let _ = send.stopped().await;
    Ok(())
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
