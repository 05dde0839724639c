//! The passes that carry requests out (see the module doc of [`super`]).

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use runnel_event::envelope::ArchivedEvent;
use runnel_segment::{LogReader, Rewrite, SegmentSummary};
use serde_json::Value;
use tokio::sync::watch;

use super::identity::Matcher;
use super::{ErasureError, Erasures, Request, Rewritten};
use crate::log::BrokerLog;
use crate::pipeline::aggregates::{Query, TopicEnds};

/// What a pass reads and rewrites.
#[derive(Clone)]
pub struct Stores {
    /// The event log.
    pub log: BrokerLog,
    /// The pipeline: its committed offset, and the sealing of its topics.
    pub pipeline: Arc<crate::pipeline::Shared>,
    /// `dead_letters`.
    pub dead_letters: LogReader,
    /// `late_events`.
    pub late_events: LogReader,
    /// `enriched` (`None`: the archive is off, no such topic).
    pub enriched: Option<LogReader>,
}

/// Runs passes while requests are unfinished, until shutdown.
pub async fn run(
    erasures: Erasures,
    stores: Stores,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = pass(&erasures, &stores).await {
            metrics::counter!("runnel_erasure_pass_failures_total").increment(1);
            tracing::error!(error = %e, "an erasure pass failed; the next one resumes it");
        }
        publish(&erasures);
        tokio::select! {
            _ = shutdown.changed() => {}
            () = erasures.woken(interval) => {}
        }
    }
}

fn publish(erasures: &Erasures) {
    let Ok(list) = erasures.list() else {
        return;
    };
    let now = runnel_event::now_ms();
    let pending = list.iter().filter(|r| r.finished_ms.is_none()).count();
    let late = list.iter().filter(|r| r.state(now) == "late").count();
    metrics::gauge!("runnel_erasure_requests_pending").set(pending as f64);
    metrics::gauge!("runnel_erasure_requests_late").set(late as f64);
}

/// One pass over the unfinished requests: the log for those due (never passed over, or past
/// their spool grace), then the side topics for those whose log is done, once the pipeline has
/// committed past where the log was sealed for them.
pub async fn pass(erasures: &Erasures, stores: &Stores) -> Result<(), ErasureError> {
    let mut requests = erasures.unfinished()?;
    let started = runnel_event::now_ms();
    let grace = erasures.settings().spool_grace_ms;
    let log_due = requests.iter().any(|r| {
        r.store("log").finished_ms.is_none()
            && (r.first_pass_ms.is_none() || started >= r.created_ms.saturating_add(grace))
    });
    if log_due {
        let sealed = stores
            .log
            .seal()
            .await
            .map_err(|e| ErasureError::Storage(anyhow::anyhow!("sealing the log: {e}")))?;
        let (e, log) = (erasures.clone(), stores.log.clone());
        requests = tokio::task::spawn_blocking(move || {
            let mut requests = requests;
            erase_log(&e, &log, &mut requests, sealed, started)?;
            Ok::<_, ErasureError>(requests)
        })
        .await
        .map_err(|e| ErasureError::Storage(anyhow::anyhow!("erasure pass: {e}")))??;
    }
    // The side topics hold what the pipeline made of the erased events once it has committed
    // past them.
    let Some(need) = requests
        .iter()
        .filter(|r| r.store("log").finished_ms.is_some())
        .map(|r| r.store("log").clean_below)
        .max()
    else {
        return Ok(());
    };
    let committed = stores
        .pipeline
        .offset
        .load(std::sync::atomic::Ordering::Acquire);
    if committed < need {
        return Ok(());
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    if stores.pipeline.ask(Query::SealTopics { reply }).is_none() {
        return Ok(());
    }
    let ends = rx
        .await
        .map_err(|_| ErasureError::Storage(anyhow::anyhow!("the pipeline stopped")))?
        .map_err(|e| ErasureError::Storage(anyhow::anyhow!("sealing the side topics: {e}")))?;
    let (e, s) = (erasures.clone(), stores.clone());
    tokio::task::spawn_blocking(move || {
        let mut requests = requests;
        erase_topics(&e, &s, &mut requests, ends)
    })
    .await
    .map_err(|e| ErasureError::Storage(anyhow::anyhow!("erasure pass: {e}")))?
}

/// A matcher for the requests whose `store` is unfinished, and which of them it serves.
fn matchers(
    erasures: &Erasures,
    requests: &[Request],
    store: &str,
) -> (Matcher, Vec<(usize, Matcher)>) {
    let open: Vec<(usize, Matcher)> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.stores
                .iter()
                .any(|s| s.store == store && s.finished_ms.is_none())
        })
        .map(|(i, r)| (i, Matcher::new(erasures.key().clone(), r.targets())))
        .collect();
    let all = Matcher::new(
        erasures.key().clone(),
        open.iter().flat_map(|(i, _)| requests[*i].targets()),
    );
    (all, open)
}

/// How one store is counted and rewritten, segment by segment.
trait Store {
    /// Its name in a request.
    fn name(&self) -> &'static str;
    /// Its sealed segments.
    fn segments(&self) -> Vec<SegmentSummary>;
    /// For each open request, how many of its entries the segment holds.
    fn count(&self, seg: &SegmentSummary, open: &[(usize, Matcher)]) -> Result<Vec<u64>, String>;
    /// Rewrites the segment without what `all` selects: (rewrite, records it could not read);
    /// `None` when the segment is gone.
    fn rewrite(
        &self,
        seg: &SegmentSummary,
        all: &Matcher,
    ) -> Result<Option<(Rewrite, u64)>, String>;
}

/// The step of one store: every sealed segment below `end` that some open request has not
/// yet cleaned is counted, and one that holds something is recorded as pending in each
/// request it holds something of, rewritten, and recorded as done. A pending record whose
/// segment counts nothing any more was rewritten before a crash.
fn erase_store(
    erasures: &Erasures,
    requests: &mut [Request],
    store: &dyn Store,
    end: u64,
) -> Result<(), ErasureError> {
    let name = store.name();
    let (all, open) = matchers(erasures, requests, name);
    if open.is_empty() {
        return Ok(());
    }
    let failed = |seg: &SegmentSummary, e: String| {
        ErasureError::Storage(anyhow::anyhow!("{name} segment {}: {e}", seg.base))
    };
    let from = open
        .iter()
        .map(|(i, _)| requests[*i].store_mut(name).clean_below)
        .min()
        .unwrap_or(0);
    for seg in store.segments() {
        if seg.end_offset <= from || seg.base >= end {
            continue;
        }
        let counts = store.count(&seg, &open).map_err(|e| failed(&seg, e))?;
        for ((i, _), n) in open.iter().zip(&counts) {
            let p = requests[*i].store_mut(name);
            let at = p
                .rewritten
                .iter()
                .position(|r| r.segment == seg.base && r.pending);
            match (at, *n) {
                (Some(k), 0) => {
                    // Rewritten before a crash: the segment as it is now is the result.
                    p.rewritten[k].pending = false;
                    p.rewritten[k].bytes_after = seg.bytes;
                }
                (Some(k), n) => p.rewritten[k].entries = n,
                (None, 0) => {}
                (None, n) => p.rewritten.push(Rewritten {
                    segment: seg.base,
                    entries: n,
                    bytes_before: seg.bytes,
                    bytes_after: seg.bytes,
                    at_ms: runnel_event::now_ms(),
                    pending: true,
                }),
            }
        }
        let total: u64 = counts.iter().sum();
        if total > 0 {
            erasures.save(requests)?;
            let done = store.rewrite(&seg, &all).map_err(|e| failed(&seg, e))?;
            if let Some((rewrite, unreadable)) = done {
                metrics::counter!("runnel_erasure_entries_total", "store" => name).increment(total);
                tracing::info!(
                    store = name,
                    segment = seg.base,
                    entries = total,
                    "erased from a segment"
                );
                for (i, _) in &open {
                    let p = requests[*i].store_mut(name);
                    p.unreadable += unreadable;
                    if let Some(r) = p
                        .rewritten
                        .iter_mut()
                        .find(|r| r.segment == seg.base && r.pending)
                    {
                        r.pending = false;
                        r.bytes_before = rewrite.bytes_before;
                        r.bytes_after = rewrite.bytes_after;
                        r.at_ms = runnel_event::now_ms();
                    }
                }
            }
        }
        for (i, _) in &open {
            let p = requests[*i].store_mut(name);
            p.clean_below = p.clean_below.max(seg.end_offset);
        }
        erasures.save(requests)?;
    }
    Ok(())
}

/// Adds one to the count of each open request `hit` says an entry is of.
fn tally(counts: &mut [u64], open: &[(usize, Matcher)], hit: impl Fn(&Matcher) -> bool) {
    for (n, (_, m)) in counts.iter_mut().zip(open) {
        *n += u64::from(hit(m));
    }
}

/// The event log.
struct LogStore<'a>(&'a BrokerLog);

impl Store for LogStore<'_> {
    fn name(&self) -> &'static str {
        "log"
    }

    fn segments(&self) -> Vec<SegmentSummary> {
        self.0.sealed_segments()
    }

    fn count(&self, seg: &SegmentSummary, open: &[(usize, Matcher)]) -> Result<Vec<u64>, String> {
        let mut counts = vec![0u64; open.len()];
        self.0
            .walk_events(seg.base, (seg.end_offset - seg.base) as usize, |w| {
                if w.offset >= seg.end_offset {
                    return;
                }
                tally(&mut counts, open, |m| m.matches_event(w.event));
            })
            .map_err(|e| e.to_string())?;
        Ok(counts)
    }

    fn rewrite(
        &self,
        seg: &SegmentSummary,
        all: &Matcher,
    ) -> Result<Option<(Rewrite, u64)>, String> {
        let erase = |e: &ArchivedEvent| all.matches_event(e);
        Ok(self
            .0
            .erase_in_segment(seg.base, &erase)
            .map_err(|e| e.to_string())?
            .map(|e| (e.rewrite, e.unreadable)))
    }
}

/// `dead_letters` or `late_events`: JSON entries with their `event`.
struct TopicStore<'a> {
    name: &'static str,
    reader: &'a LogReader,
}

impl Store for TopicStore<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn segments(&self) -> Vec<SegmentSummary> {
        self.reader.sealed_segments()
    }

    fn count(&self, seg: &SegmentSummary, open: &[(usize, Matcher)]) -> Result<Vec<u64>, String> {
        let mut counts = vec![0u64; open.len()];
        self.reader
            .scan(seg.base, |h, payload| {
                if h.base_offset >= seg.end_offset {
                    return ControlFlow::Break(());
                }
                if let Ok(v) = serde_json::from_slice::<Value>(payload)
                    && v.get("erased").is_none()
                    && let Some(ev) = v.get("event")
                {
                    tally(&mut counts, open, |m| m.matches_json(ev));
                }
                ControlFlow::Continue(())
            })
            .map_err(|e| e.to_string())?;
        Ok(counts)
    }

    fn rewrite(
        &self,
        seg: &SegmentSummary,
        all: &Matcher,
    ) -> Result<Option<(Rewrite, u64)>, String> {
        let erase = |e: &Value| all.matches_json(e);
        Ok(
            crate::topics::erase_in_segment(self.reader, seg.base, &erase)
                .map_err(|e| e.to_string())?
                .map(|(r, _)| (r, 0)),
        )
    }
}

/// The `enriched` topic: in each record that holds events of its own (an enricher changed
/// them), the events at log offsets an erasure emptied are emptied too. Its records cannot say
/// whose those events were (the log's copies are gone): every open request is shown each
/// rewrite.
struct EnrichedStore<'a> {
    reader: &'a LogReader,
    log: &'a BrokerLog,
}

impl EnrichedStore<'_> {
    /// The record at `payload` with the events the log no longer holds emptied, and how many;
    /// `None` when there are none.
    fn erased(&self, payload: &[u8]) -> Result<Option<(Vec<u8>, u64)>, String> {
        let Ok(record) = crate::topics::enriched::Record::decode(payload) else {
            return Ok(None);
        };
        if record.events.is_none() {
            return Ok(None);
        }
        let erased: BTreeSet<u64> = self
            .log
            .erased_offsets(record.from, record.next)
            .map_err(|e| e.to_string())?;
        let Some(new) = record.erased(&erased).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let n = record.offsets().filter(|o| erased.contains(o)).count() as u64;
        Ok(Some((new.encode(), n)))
    }
}

impl Store for EnrichedStore<'_> {
    fn name(&self) -> &'static str {
        "enriched"
    }

    fn segments(&self) -> Vec<SegmentSummary> {
        self.reader.sealed_segments()
    }

    fn count(&self, seg: &SegmentSummary, open: &[(usize, Matcher)]) -> Result<Vec<u64>, String> {
        let mut n = 0u64;
        let mut failed = None;
        self.reader
            .scan(seg.base, |h, payload| {
                if h.base_offset >= seg.end_offset {
                    return ControlFlow::Break(());
                }
                match self.erased(payload) {
                    Ok(Some((_, k))) => n += k,
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .map_err(|e| e.to_string())?;
        match failed {
            Some(e) => Err(e),
            None => Ok(vec![n; open.len()]),
        }
    }

    fn rewrite(&self, seg: &SegmentSummary, _: &Matcher) -> Result<Option<(Rewrite, u64)>, String> {
        let mut failed = None;
        let rewrite = self
            .reader
            .rewrite_sealed(seg.base, |_, payload| match self.erased(payload) {
                Ok(new) => new.map(|(bytes, _)| bytes),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            })
            .map_err(|e| e.to_string())?;
        match failed {
            Some(e) => Err(e),
            None => Ok(rewrite.map(|r| (r, 0))),
        }
    }
}

/// The log step: every sealed segment below `sealed`; the log is done for a request by a
/// pass that began after its spool grace.
fn erase_log(
    erasures: &Erasures,
    log: &BrokerLog,
    requests: &mut [Request],
    sealed: u64,
    started: i64,
) -> Result<(), ErasureError> {
    let (_, open) = matchers(erasures, requests, "log");
    erase_store(erasures, requests, &LogStore(log), sealed)?;
    let now = runnel_event::now_ms();
    for (i, _) in &open {
        let r = &mut requests[*i];
        r.first_pass_ms.get_or_insert(started);
        let grace_over = started
            >= r.created_ms
                .saturating_add(erasures.settings().spool_grace_ms);
        let p = r.store_mut("log");
        p.clean_below = p.clean_below.max(sealed);
        if grace_over {
            p.finished_ms = Some(now);
        }
    }
    erasures.save(requests)
}

/// The side-topic step, after the log's (and after the pipeline has committed past it).
fn erase_topics(
    erasures: &Erasures,
    stores: &Stores,
    requests: &mut [Request],
    ends: TopicEnds,
) -> Result<(), ErasureError> {
    for (name, reader, end) in [
        ("dead_letters", &stores.dead_letters, ends.dead_letters),
        ("late_events", &stores.late_events, ends.late_events),
    ] {
        let (_, open) = matchers(erasures, requests, name);
        erase_store(erasures, requests, &TopicStore { name, reader }, end)?;
        finish(requests, &open, name, end);
    }
    let (_, open) = matchers(erasures, requests, "enriched");
    match (&stores.enriched, ends.enriched) {
        (Some(reader), Some(end)) => {
            let store = EnrichedStore {
                reader,
                log: &stores.log,
            };
            erase_store(erasures, requests, &store, end)?;
            finish(requests, &open, "enriched", end);
        }
        // No such topic: nothing to erase there.
        _ => finish(requests, &open, "enriched", 0),
    }
    let now = runnel_event::now_ms();
    for r in requests.iter_mut() {
        if r.finished_ms.is_none() && r.stores.iter().all(|s| s.finished_ms.is_some()) {
            r.finished_ms = Some(now);
            metrics::counter!("runnel_erasure_requests_done_total").increment(1);
            tracing::info!(id = r.id, "erasure done");
        }
    }
    erasures.save(requests)
}

/// Marks `store` clean up to `end` for the open requests, and done for those whose log is
/// done (a topic is finished only by a pass after the log's last).
fn finish(requests: &mut [Request], open: &[(usize, Matcher)], store: &str, end: u64) {
    let now = runnel_event::now_ms();
    for (i, _) in open {
        let r = &mut requests[*i];
        let log_done = r.store_mut("log").finished_ms.is_some();
        let p = r.store_mut(store);
        p.clean_below = p.clean_below.max(end);
        if log_done {
            p.finished_ms = Some(now);
        }
    }
}
