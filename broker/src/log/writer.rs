//! The log's single writer thread: group commit, idempotent by the producer table.
//!
//! It takes every batch waiting (at most [`GROUP_COMMIT_MAX`]), asks the producer table which
//! chunks of each are new ([`Producers::admit`]), appends those (a batch that is partly a
//! duplicate is re-framed with just its new chunks), runs one `fdatasync` for the whole group,
//! then answers each batch. The table advances only for appends that succeed. After a failed
//! fsync it answers `Unavailable` until a restart has rebuilt the table from what is durable.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use runnel_event::wire::{access_batch, decode_frame};
use runnel_event::{AckStatus, Batch, BatchAck};
use runnel_segment::{LogError, SegmentLog};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpointer;
use super::producers::{Admission, Producers};
use super::{CheckedBatch, Counts};

/// Most batches in one group commit.
pub const GROUP_COMMIT_MAX: usize = 1024;

/// A batch for the writer, and where its answer goes.
pub(super) struct Append {
    pub batch: CheckedBatch,
    pub reply: oneshot::Sender<BatchAck>,
}

/// A retention request: delete the sealed segments wholly below `below` whose records were all
/// appended before `appended_before_ms`.
pub(super) struct Retire {
    pub below: u64,
    pub appended_before_ms: i64,
    pub reply: oneshot::Sender<Result<(usize, u64), String>>,
}

impl Retire {
    fn run(self, log: &mut SegmentLog) {
        let done = log
            .delete_before_appended(self.below, self.appended_before_ms)
            .map_err(|e| e.to_string());
        let _ = self.reply.send(done);
    }
}

/// Seal the active segment, so that every record appended so far is in a sealed one; answers
/// the offset below which that holds.
pub(super) struct Seal {
    pub reply: oneshot::Sender<Result<u64, String>>,
}

impl Seal {
    fn run(self, log: &mut SegmentLog) {
        let done = log
            .seal()
            .map(|_| log.next_offset())
            .map_err(|e| e.to_string());
        let _ = self.reply.send(done);
    }
}

/// What the writer is asked.
pub(super) enum Request {
    Append(Append),
    Retire(Retire),
    Seal(Seal),
    /// Answer what is queued, then end: sends after this fail ("log writer stopped").
    Stop,
}

/// The frame to store for `batch` without its first `skip` chunks.
fn trimmed_frame(batch: &CheckedBatch, skip: usize) -> Vec<u8> {
    if skip == 0 {
        return batch.frame.clone();
    }
    let body = decode_frame(&batch.frame, usize::MAX).expect("checked before");
    let (archived, _) = access_batch(&body).expect("checked before");
    Batch {
        agent_id: archived.agent_id.to_string(),
        host: archived.host.to_string(),
        epoch: archived.epoch.to_native(),
        first_seq: archived.first_seq.to_native() + skip as u64,
        chunks: archived
            .chunks
            .iter()
            .skip(skip)
            .map(|c| c.as_slice().to_vec())
            .collect(),
    }
    .encode_frame()
}

fn unavailable(message: String) -> BatchAck {
    BatchAck {
        status: AckStatus::Unavailable,
        base_offset: 0,
        appended_events: 0,
        duplicate_chunks: 0,
        message,
    }
}

/// The writer thread: takes every batch waiting, appends the new chunks of each, runs one
/// fsync for the group, then answers each batch.
pub(super) fn writer(
    mut log: SegmentLog,
    mut producers: Producers,
    mut rx: mpsc::Receiver<Request>,
    counts: Arc<Mutex<Counts>>,
    failed: Arc<Mutex<Option<String>>>,
    mut checkpointer: Checkpointer,
) {
    let mut group = Vec::with_capacity(GROUP_COMMIT_MAX);
    while let Some(first) = rx.blocking_recv() {
        // After a stop the channel is closed: what was queued is still answered, then the
        // loop ends.
        match first {
            Request::Append(a) => group.push(a),
            Request::Retire(r) => {
                r.run(&mut log);
                continue;
            }
            Request::Seal(r) => {
                r.run(&mut log);
                continue;
            }
            Request::Stop => {
                rx.close();
                continue;
            }
        }
        while group.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(Request::Append(a)) => group.push(a),
                Ok(Request::Retire(r)) => r.run(&mut log),
                Ok(Request::Seal(r)) => r.run(&mut log),
                Ok(Request::Stop) => rx.close(),
                Err(_) => break,
            }
        }
        // (reply, ack, type counts) of batches appended in this group.
        let mut appended = Vec::new();
        // Duplicates are answered only after this group's fsync: a resend of a batch appended
        // earlier in the same group is not durable until then.
        let mut duplicates = Vec::new();
        for Append { batch, reply } in group.drain(..) {
            if let Some(reason) = failed.lock().expect("lock poisoned").clone() {
                // After a failed fsync nothing in the producer table can be trusted: answer
                // Unavailable until a restart has rebuilt it from what is durable.
                let _ = reply.send(unavailable(reason));
                continue;
            }
            let chunks = batch.chunk_events.len();
            let skip = match producers.admit(
                &batch.agent_id,
                batch.epoch,
                batch.first_seq,
                chunks,
                batch.prev_end,
            ) {
                Admission::Duplicate { chunks } => {
                    metrics::counter!("runnel_broker_batches_duplicate_total").increment(1);
                    duplicates.push((reply, chunks as u32));
                    continue;
                }
                Admission::Hold { resume_at } => {
                    metrics::counter!("runnel_broker_batches_held_total").increment(1);
                    let _ = reply.send(unavailable(format!(
                        "an earlier batch of this spool is not in the log: send again from seq {resume_at}"
                    )));
                    continue;
                }
                Admission::Append { skip, gap } => {
                    if let Some((expected, got)) = gap {
                        tracing::warn!(agent = %batch.agent_id, expected, got, "gap in an agent's sequence (spool damage on the agent?)");
                        metrics::counter!("runnel_broker_sequence_gaps_total").increment(1);
                    }
                    skip
                }
            };
            let events: u32 = batch.chunk_events[skip..].iter().sum();
            let frame = trimmed_frame(&batch, skip);
            match log.append(&frame, events, runnel_event::now_ms()) {
                Ok(base) => {
                    let end = batch.first_seq + batch.chunk_events.len() as u64;
                    let ack = BatchAck {
                        status: AckStatus::Appended,
                        base_offset: base,
                        appended_events: events,
                        duplicate_chunks: skip as u32,
                        message: String::new(),
                    };
                    // Later batches of the same producer in this group build on this one.
                    producers.advance(&batch.agent_id, batch.epoch, end);
                    let types: Vec<(String, u64)> = batch.chunk_types[skip..]
                        .iter()
                        .flatten()
                        .cloned()
                        .collect();
                    appended.push((reply, ack, types, frame.len() as u64));
                }
                Err(e) => {
                    if e.is_poisoned() {
                        *failed.lock().expect("lock poisoned") = Some(e.to_string());
                    }
                    metrics::counter!("runnel_broker_append_errors_total").increment(1);
                    let status = match e {
                        LogError::RecordTooLarge { .. } => AckStatus::Rejected,
                        _ => AckStatus::Unavailable,
                    };
                    // Nothing advances: the spool's batches behind this one start past the
                    // expected number without declaring a gap there, so they are held until
                    // this one comes again (Producers::admit).
                    let _ = reply.send(BatchAck {
                        status,
                        base_offset: 0,
                        appended_events: 0,
                        duplicate_chunks: 0,
                        message: e.to_string(),
                    });
                }
            }
        }
        let duplicate_ack = |chunks: u32| BatchAck {
            status: AckStatus::Duplicate,
            base_offset: 0,
            appended_events: 0,
            duplicate_chunks: chunks,
            message: String::new(),
        };
        if appended.is_empty() {
            for (reply, chunks) in duplicates {
                let _ = reply.send(duplicate_ack(chunks));
            }
            continue;
        }
        let started = Instant::now();
        match log.sync() {
            Ok(end_offset) => {
                metrics::histogram!("runnel_broker_log_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                let mut c = counts.lock().expect("lock poisoned");
                c.producers = producers.len();
                let appended_bytes: u64 = appended.iter().map(|(_, _, _, bytes)| *bytes).sum();
                for (reply, ack, types, _) in appended {
                    c.events += u64::from(ack.appended_events);
                    for (t, n) in types {
                        *c.by_type.entry(t).or_default() += n;
                    }
                    metrics::counter!("runnel_broker_events_appended_total")
                        .increment(u64::from(ack.appended_events));
                    let _ = reply.send(ack);
                }
                checkpointer.after_sync(appended_bytes, end_offset, &producers, &c);
                drop(c);
                for (reply, chunks) in duplicates {
                    let _ = reply.send(duplicate_ack(chunks));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log fsync failed; the broker stops accepting batches");
                *failed.lock().expect("lock poisoned") = Some(e.to_string());
                // Batches an earlier fsync in this group covered (a segment roll syncs) are
                // durable: acknowledge them.
                let durable = log.reader().end_offset();
                for (reply, ack, _, _) in appended {
                    let covered = ack.base_offset + u64::from(ack.appended_events) <= durable;
                    let _ = reply.send(if covered {
                        ack
                    } else {
                        unavailable(e.to_string())
                    });
                }
                for (reply, _) in duplicates {
                    let _ = reply.send(unavailable(e.to_string()));
                }
            }
        }
    }
}
