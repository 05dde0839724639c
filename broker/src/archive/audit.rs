//! The archive's audit log: one JSON line per lifecycle move or deletion, written after its
//! commit and synced before the next step, in `DATA_DIR/audit/archive.jsonl`. Each line has
//! `time` (RFC 3339), `action` (`move` or `delete`), the table, tier(s), `date`, files, rows,
//! bytes and the Delta versions committed.

use std::io::Write;
use std::path::PathBuf;

/// An append-only JSON-lines file.
#[derive(Debug, Clone)]
pub struct Audit {
    path: PathBuf,
}

impl Audit {
    /// The audit log at `path` (its folder is created at the first record).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends `entry` (an object) with the time, and syncs.
    pub fn record(&self, entry: &serde_json::Value) -> Result<(), String> {
        let mut line = serde_json::json!({ "time": chrono::Utc::now().to_rfc3339() });
        if let (Some(l), Some(e)) = (line.as_object_mut(), entry.as_object()) {
            l.extend(e.clone());
        }
        let fail = |e: std::io::Error| format!("audit log {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        let mut bytes = serde_json::to_vec(&line).expect("JSON to memory");
        bytes.push(b'\n');
        f.write_all(&bytes).map_err(fail)?;
        f.sync_data().map_err(fail)
    }
}
