//! The QUIC endpoint agents ship to. A bidirectional stream carries one or more batch frames
//! (`runnel/2`; `runnel/1` agents send one); each is checked and handed to the log writer in
//! the order it came, and the answers are written in that order, each after its fsync. Every
//! connection and stream task is joined at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use runnel_event::wire::{FRAME_HEADER_BYTES, WireError, decode_frame_header};
use runnel_event::{AckStatus, BatchAck};
use runnel_protocol::{PREV_END_BYTES, STREAM_BATCHES_MAX};
use tokio::sync::{mpsc, watch};
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
    // `runnel/2` agents send a `prev_end` before each frame; `runnel/1` agents do not.
    let v2 = runnel_protocol::negotiated(&conn).as_deref() == Some(runnel_protocol::ALPN);
    tracing::debug!(%peer, v2, "agent connected");
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
            if let Err(e) = stream(send, recv, log, batch_bytes_max, v2).await {
                tracing::debug!(error = %e, "batch stream failed");
            }
        });
    }
    while streams.join_next().await.is_some() {}
    metrics::gauge!("runnel_broker_connections").decrement(1.0);
}

/// One stream: a reader hands each frame, checked, to the log in order and queues its answer
/// to come; a writer sends the answers in the same order. A refused frame is answered and ends
/// the reading (the agent resends what followed it on a new stream).
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    log: BrokerLog,
    batch_bytes_max: usize,
    v2: bool,
) -> anyhow::Result<()> {
    let (answers, mut pending) = mpsc::channel::<Answer>(STREAM_BATCHES_MAX);
    let read = async move {
        loop {
            let (prev_end, frame) = match read_frame(&mut recv, batch_bytes_max, v2).await {
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
            let checked = check_batch(frame, batch_bytes_max).and_then(|b| match prev_end {
                Some(p) => b.with_prev_end(p),
                None => Ok(b),
            });
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
) -> Result<Option<(Option<u64>, Vec<u8>)>, ReadFrame> {
    // The prefix (`runnel/2`) and the frame header, read as one; a stream that ends before
    // them is finished.
    let mut buf = [0u8; PREV_END_BYTES + FRAME_HEADER_BYTES];
    let head = &mut buf[if v2 { 0 } else { PREV_END_BYTES }..];
    match recv.read_exact(head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadFrame::Refused(format!(
                "frame truncated: {n} bytes, expected {}",
                head.len()
            )));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadFrame::Stream(e.into())),
    }
    let (prefix, header) = head.split_at(head.len() - FRAME_HEADER_BYTES);
    let prev_end = v2.then(|| u64::from_le_bytes(prefix.try_into().expect("8 bytes")));
    let h = decode_frame_header(header, batch_bytes_max).map_err(|e| match e {
        WireError::TooLarge { .. } => ReadFrame::Refused(format!(
            "batch exceeds batch_bytes_max ({batch_bytes_max} bytes)"
        )),
        e => ReadFrame::Refused(e.to_string()),
    })?;
    let mut frame = vec![0u8; FRAME_HEADER_BYTES + h.body_len];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(header);
    match recv.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await {
        Ok(()) => Ok(Some((prev_end, frame))),
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
