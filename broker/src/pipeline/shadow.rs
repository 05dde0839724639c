//! A shadow chain: one aggregator version computed over history apart from the live chain,
//! with instances of its own of the enrichers and windows of its own, for a backfill
//! ([`crate::backfill`]). It folds each batch as the live chain does (the same facts, the same
//! enricher fates, the same [`fold`]), so the same events in the same order make the same
//! rows, whatever the batch boundaries. It writes no side topics: the live chain has written
//! the dead letters and late events of these events already; what the new version fails on is
//! counted.
//!
//! With a start time (`--backfill-from TIME`), every event is folded still (a window that
//! straddles the time is whole), and only the final rows of windows that start at or after it
//! are kept: those are the rows the swap replaces.

use runnel_batch::{BatchView, BatchWriter};
use runnel_host::Enricher;

use super::PIPELINE_BATCH_BYTES_MAX;
use super::aggregates::AggRun;
use super::fold::fold;
use super::step::{apply_fates, facts_of};
use crate::log::{BrokerLog, SourceBatch};
use crate::plugins::{BackfillPlan, PluginRecord};

/// A backfill's chain and state.
pub struct Shadow {
    /// The plugin as it will be after the swap (its active version the backfilled one).
    pub record: PluginRecord,
    /// The plan it runs.
    pub plan: BackfillPlan,
    /// The enrichers, in deploy order, as the live chain runs them.
    pub enrichers: Vec<Enricher>,
    /// The new version, its windows and the rows that became final since the last checkpoint.
    pub run: AggRun,
    /// The first offset not folded.
    pub next: u64,
    /// Events folded.
    pub events: u64,
    /// Events the new version failed on.
    pub errors: u64,
    /// Which tenant each agent is of (a tenant's aggregator is given its events only).
    pub tenants: std::sync::Arc<crate::auth::Tenants>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("plugin", &self.record.name)
            .field("version", &self.plan.version)
            .field("next", &self.next)
            .finish()
    }
}

/// Runs `enrichers` in order over `batch` (the events at source indices `index`), as the
/// live chain does but writing no dead letters; the chain's output, its source indices, and
/// how many events an enricher failed on.
pub fn enrich_all(
    enrichers: &mut [Enricher],
    mut batch: Vec<u8>,
    mut index: Vec<usize>,
) -> anyhow::Result<(Vec<u8>, Vec<usize>, u64)> {
    let mut failed = 0;
    for e in enrichers {
        if index.is_empty() {
            break;
        }
        let out = e.enrich(&batch)?;
        if out.fates.iter().all(|f| *f == runnel_host::Fate::Keep) {
            continue;
        }
        let (b, i, _, failures) = apply_fates(&batch, &index, &out, |_, _, _| {})?;
        failed += failures;
        batch = b;
        index = i;
    }
    Ok((batch, index, failed))
}

impl Shadow {
    /// Folds one batch of history (its offsets at or after [`Shadow::next`], in order).
    pub fn fold_batch(&mut self, mut src: SourceBatch) -> anyhow::Result<()> {
        if src.offsets.is_empty() {
            self.next = self.next.max(src.next);
            return Ok(());
        }
        let n = src.offsets.len();
        let (facts, marked, _) = facts_of(&src)?;
        let mut batch = std::mem::take(&mut src.batch);
        let mut index: Vec<usize> = (0..n).collect();
        if !marked.is_empty() {
            // An agent's dead letters go nowhere but `dead_letters` (written by the live chain).
            let view = BatchView::new(&batch)?;
            let mut w = BatchWriter::with_capacity(n - marked.len(), 256);
            index.clear();
            for (i, ev) in view.iter().enumerate() {
                if marked.binary_search(&i).is_err() {
                    w.push_ref(&ev);
                    index.push(i);
                }
            }
            batch = w.finish();
        }
        let (batch, index, _) = enrich_all(&mut self.enrichers, batch, index)?;
        // As in the live chain: a tenant's aggregator maps and observes its tenant's events.
        let mask = self
            .record
            .tenant
            .as_deref()
            .map(|t| super::tenant::Mask::new(&src, &self.tenants.snapshot(), t))
            .filter(|m| !m.all);
        let part = match &mask {
            Some(m) if !index.is_empty() => super::tenant::part(&batch, &index, &src.origin, m)?,
            _ => None,
        };
        let mut rows = match &part {
            _ if index.is_empty() => Vec::new(),
            Some((_, positions)) if positions.is_empty() => Vec::new(),
            Some((b, positions)) => {
                let mut out = self.run.plugin.map_batch(b)?;
                super::tenant::reindex(&mut out, positions);
                self.errors += out.failed.len() as u64;
                out.rows
            }
            None => {
                let out = self.run.plugin.map_batch(&batch)?;
                self.errors += out.failed.len() as u64;
                out.rows
            }
        };
        let skip = match &mask {
            Some(m) => m.skip(&src.origin, &marked),
            None => marked.clone(),
        };
        let from = self.plan.from.from_ms();
        rows.sort_by_key(|r| r.event);
        let agents: Vec<&str> = src.origins.iter().map(|(a, _)| a.as_str()).collect();
        let out = fold(&mut self.run.engine, &facts, &agents, &skip, &index, &rows);
        self.run
            .pending
            .extend(out.finals.into_iter().filter(|r| r.window.start >= from));
        self.events += n as u64;
        self.next = src.next;
        Ok(())
    }

    /// Folds the log from [`Shadow::next`] up to offset `to`, `batch_events` at a time.
    pub fn catch_up(
        &mut self,
        log: &BrokerLog,
        to: u64,
        batch_events: usize,
    ) -> anyhow::Result<()> {
        while self.next < to {
            let want = usize::try_from(to - self.next)
                .unwrap_or(usize::MAX)
                .min(batch_events);
            let src = log.read_batch(self.next, want, PIPELINE_BATCH_BYTES_MAX)?;
            anyhow::ensure!(
                src.next > self.next,
                "the log has no events at offset {} (below the pipeline's {to})",
                self.next
            );
            self.fold_batch(src)?;
        }
        Ok(())
    }
}
