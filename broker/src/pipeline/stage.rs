//! A plugin's place in the pipeline, and its bookkeeping per batch: counts, failure streaks and
//! the automatic pause.

use runnel_host::Enricher;

use super::aggregates::AggRun;
use crate::plugins::{Pause, PluginKind, PluginRecord, PluginStats, Policy, Status};

/// A deployed plugin in the chain: its record, its loaded instance, its counts.
pub(super) struct Stage {
    pub record: PluginRecord,
    pub enricher: Option<Enricher>,
    pub agg: Option<AggRun>,
    pub stats: PluginStats,
}

impl Stage {
    pub fn is_aggregator(&self) -> bool {
        self.record.kind == PluginKind::Aggregate
    }

    pub fn version(&self) -> &str {
        &self.record.active
    }

    pub fn holds(&self) -> bool {
        self.record.status == Status::Paused && self.record.policy == Policy::Hold
    }
}

/// What a plugin's failures in one batch mean for the batch.
pub(super) enum Verdict {
    /// Go on with its output.
    Go,
    /// It was just paused with `hold`: abandon the batch.
    Hold,
    /// It was just paused with `skip`: the batch passes it untouched.
    Skip,
}

/// Counts one batch of `n` events, `failed` of which the plugin failed on, and pauses the
/// plugin after `pause_after` failing batches in a row.
pub(super) fn count_batch(
    stage: &mut Stage,
    n: usize,
    failed: usize,
    first_failure: Option<String>,
    pause_after: u32,
    pauses: &mut Vec<Pause>,
) -> Verdict {
    let s = &mut stage.stats;
    s.batches += 1;
    *s.events_in_by_version
        .entry(stage.record.active.clone())
        .or_default() += n as u64;
    s.events_in += n as u64;
    if first_failure.is_some() {
        s.last_error = first_failure;
    }
    if failed * 2 > n {
        s.failing_batches_in_a_row += 1;
    } else {
        s.failing_batches_in_a_row = 0;
    }
    if failed == 0 || s.failing_batches_in_a_row < pause_after {
        return Verdict::Go;
    }
    let reason = format!(
        "paused after {} failing batches in a row (plugin_pause_after_failing_batches); last error: {}",
        s.failing_batches_in_a_row,
        s.last_error.as_deref().unwrap_or("")
    );
    tracing::warn!(plugin = %stage.record.name, %reason, "pausing plugin");
    stage.record.status = Status::Paused;
    stage.record.paused_reason = Some(reason.clone());
    pauses.push(Pause {
        name: stage.record.name.clone(),
        position: stage.record.position,
        version: stage.record.active.clone(),
        reason,
    });
    if stage.record.policy == Policy::Hold {
        Verdict::Hold
    } else {
        Verdict::Skip
    }
}
