//! `DATA_DIR/log/state.checkpoint`: the producer table and the counts as of a log offset, so a
//! restart scans only the records after it.
//!
//! Layout: magic `RNLCKPT1`, CRC32C (u32 LE) of the rest, then JSON
//! `{end_offset, producers: [[agent_id, epoch, next]], counts}`. The writer replaces it
//! atomically (through the storage seam) after a successful fsync whenever
//! `checkpoint_interval_bytes` have been appended since the last one, so it only ever describes
//! durable records. A checkpoint that does not check, or lies past the end of the log, is
//! ignored and the whole log is scanned.

use std::sync::Arc;

use runnel_segment::Storage;
use serde::Serialize;

use super::Counts;
use super::producers::Producers;

/// What the checkpoint file holds.
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    pub end_offset: u64,
    pub producers: Vec<(String, u64, u64)>,
    pub counts: Counts,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"RNLCKPT1";

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("serializing to memory");
        let mut out = Vec::with_capacity(json.len() + 12);
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 12 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err("not a checkpoint".into());
        }
        let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[12..]) != crc {
            return Err("checkpoint checksum mismatch".into());
        }
        serde_json::from_slice(&bytes[12..]).map_err(|e| e.to_string())
    }
}

/// Writes the checkpoint every `interval_bytes` of appended records.
pub(super) struct Checkpointer {
    pub storage: Arc<dyn Storage>,
    pub path: std::path::PathBuf,
    pub interval_bytes: u64,
    pub since_bytes: u64,
}

impl Checkpointer {
    /// Called after a successful fsync that made everything below `end_offset` durable.
    pub fn after_sync(
        &mut self,
        appended_bytes: u64,
        end_offset: u64,
        producers: &Producers,
        counts: &Counts,
    ) {
        self.since_bytes += appended_bytes;
        if self.since_bytes < self.interval_bytes {
            return;
        }
        self.since_bytes = 0;
        let c = Checkpoint {
            end_offset,
            producers: producers.entries(),
            counts: counts.clone(),
        };
        match self.storage.write_atomic(&self.path, &c.encode()) {
            Ok(()) => metrics::counter!("runnel_broker_checkpoints_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "writing the log checkpoint failed; the next start scans more")
            }
        }
    }
}
