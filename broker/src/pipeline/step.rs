//! One step of the pipeline: the batch boundary, then one batch through the named stages
//! below, in this order. Each stage is a method that takes what the previous one made and
//! returns a named value; [`Worker::step`] only dispatches.
//!
//! 1. [`Worker::boundary`]: reload a changed registry; commit or wait when there is nothing to
//!    read (or a plugin holds the pipeline).
//! 2. [`Worker::read`]: up to `pipeline_batch_events` durable events, with each event's
//!    [`Fact`] and the agent's dead letters split off.
//! 3. [`Worker::enrich`]: the enricher chain.
//! 4. [`Worker::map`]: every running aggregator maps the chain's output to rows.
//! 5. [`Worker::fold_all`]: each aggregator's rows into its windows ([`fold`]), in log order.
//! 6. [`Worker::finish`]: side-topic entries appended, progress recorded, commit when due.
//!
//! A plugin paused with `hold` during 3 or 4 abandons the batch: nothing of it is kept.

use runnel_batch::{BatchView, BatchWriter, EventRef};
use runnel_event::event_time::{is_dead_letter_bytes, split_dead_letter};
use runnel_event::fields::EventView;
use runnel_host::{AggRow, EnrichOutput, Fate};

use super::PIPELINE_BATCH_BYTES_MAX;
use super::aggregates::AggRun;
use super::fold::{Exception, Fact, fold};
use super::parallel;
use super::stage::{Stage, Verdict, count_batch};
use super::tenant;
use super::worker::Worker;
use crate::log::SourceBatch;
use crate::plugins::{Pause, PluginRecord, PluginStats, Status};
use crate::topics::ENTRY_BYTES_MAX;
use crate::topics::enriched::{Link, Record};
use crate::topics::entries::{
    DeadLetter, DeadLetterKind, ENTRY_VERSION, Encoded, Entry as _, LateEvent, LateFor,
};

/// Whether a step did anything.
pub(super) enum Step {
    /// Nothing to do: wait for the log.
    Idle,
    /// Something was processed or committed.
    Progressed,
}

/// The batch read from the log.
struct Read {
    src: SourceBatch,
    facts: Vec<Fact>,
    /// Source indices of events an agent marked as dead letters (sorted).
    marked: Vec<usize>,
}

/// What is left of a batch after some stages: the events (in the plugin batch encoding), for
/// each its index in the source batch, and what failed on the way.
struct Flow {
    batch: Vec<u8>,
    index: Vec<usize>,
    dead: Vec<Dead>,
    pauses: Vec<Pause>,
    /// The enrichers whose output the batch is, in order (for the `enriched` topic).
    chain: Vec<Link>,
    /// Whether one of them replaced, dropped or failed an event (otherwise the batch is the
    /// log's events at `index`).
    changed: bool,
}

/// A `dead_letters` entry on its way.
struct Dead {
    source: usize,
    entry: Encoded,
    /// An agent's event-time dead letter (counted on its own).
    event_time: bool,
}

/// One aggregator's fold of a batch: its stage, engine, rows, and the source events it does
/// not observe when they are not the ones the agent marked (a tenant's aggregator).
type FoldWork<'a> = (usize, &'a mut AggRun, Vec<AggRow>, Option<Vec<usize>>);

/// The rows each aggregator mapped (`None`: not running, or skipped while paused).
type Mapped = Vec<Option<Vec<AggRow>>>;

/// What a stage of plugins made of the batch.
enum Through<T> {
    /// On to the next stage.
    Go(T),
    /// A plugin was just paused with `hold`: the batch is abandoned, with these pauses.
    Held(Vec<Pause>),
}

/// The one place a `dead_letters` entry is made.
fn dead_letter(
    src: &SourceBatch,
    source: usize,
    ev: &EventRef<'_>,
    failed: Option<&PluginRecord>,
    kind: DeadLetterKind<'_>,
    reason: &str,
) -> Dead {
    let (agent_id, host) = &src.origins[src.origin[source] as usize];
    let offset = src.offsets[source];
    let view = EventView::new(ev, offset, agent_id, host);
    let (bound, shown, reason) = match kind {
        DeadLetterKind::EventTime => {
            // The agent's mark holds the bound and the reason; the event is shown without it.
            let (marker, rest) = ev
                .properties()
                .and_then(split_dead_letter)
                .unwrap_or((serde_json::Value::Null, None));
            let bound = marker["bound"].as_str().map(str::to_string);
            let why = marker["error"].as_str().unwrap_or(reason).to_string();
            (bound, Some(rest), why)
        }
        _ => (None, None, reason.to_string()),
    };
    let view = match &shown {
        Some(rest) => view.with_properties(rest.as_deref()),
        None => view,
    };
    let entry = DeadLetter {
        source_offset: offset,
        plugin: failed.map(|r| r.name.as_str()),
        version: failed.map(|r| r.active.as_str()),
        kind,
        failure: kind.failure(),
        stage: failed.map(|r| match r.kind {
            crate::plugins::PluginKind::Aggregate => "aggregate",
            _ => "enrich",
        }),
        bound: bound.as_deref(),
        reason: &reason,
        event: view,
        entry_version: ENTRY_VERSION,
    }
    .encoded();
    Dead {
        source,
        entry,
        event_time: kind == DeadLetterKind::EventTime,
    }
}

impl Worker {
    /// One step: the boundary, then one batch through every stage.
    pub(super) fn step(&mut self) -> anyhow::Result<Step> {
        if let Some(step) = self.boundary()? {
            return Ok(step);
        }
        let Some(read) = self.read()? else {
            return Ok(Step::Idle);
        };
        let Read {
            mut src,
            facts,
            marked,
        } = read;
        let before: Vec<PluginStats> = self.stages.iter().map(|s| s.stats.clone()).collect();
        let flow = self.split_marked(&mut src, &marked)?;
        let through = match self.enrich(&src, flow)? {
            Through::Go(flow) => self.map(&src, flow)?,
            Through::Held(pauses) => Through::Held(pauses),
        };
        let (flow, mapped) = match through {
            Through::Go(v) => v,
            Through::Held(pauses) => {
                self.abandon(before, &pauses)?;
                return Ok(Step::Progressed);
            }
        };
        let late = self.fold_all(
            &src,
            &facts,
            &marked,
            flow.index.as_slice(),
            &flow.batch,
            mapped,
        )?;
        self.finish(&src, flow, late)?;
        Ok(Step::Progressed)
    }

    /// The batch boundary: reloads a changed registry; commits or waits when there is
    /// nothing to read. `Some` ends the step there.
    fn boundary(&mut self) -> anyhow::Result<Option<Step>> {
        if self.seen_generation != self.registry.generation() {
            self.reload()?;
            if self.seen_generation != self.registry.generation() {
                return Ok(Some(Step::Idle));
            }
        }
        let (offset, end) = (self.progress, self.log.durable_end());
        metrics::gauge!("runnel_pipeline_offset").set(offset as f64);
        metrics::gauge!("runnel_pipeline_lag_events").set(end.saturating_sub(offset) as f64);
        if self.stages.iter().any(Stage::holds) || offset >= end {
            let committed = self
                .shared
                .offset
                .load(std::sync::atomic::Ordering::Acquire);
            if committed < self.progress || !self.pending_pauses.is_empty() {
                self.commit()?;
                return Ok(Some(Step::Progressed));
            }
            return Ok(Some(Step::Idle));
        }
        Ok(None)
    }

    /// Reads the next batch with each event's facts: agent, event time, and receive time (the
    /// earlier of the agent's `received_at` and the broker's append time, so an agent whose
    /// clock runs ahead is judged by the broker's). Records the agents' clock skew. `None`
    /// when there was nothing (after moving past unreadable records, if any).
    fn read(&mut self) -> anyhow::Result<Option<Read>> {
        let offset = self.progress;
        let src =
            self.log
                .read_batch(offset, self.settings.batch_events, PIPELINE_BATCH_BYTES_MAX)?;
        if src.offsets.is_empty() {
            if src.next > offset {
                self.progress = src.next;
                self.commit()?;
            }
            return Ok(None);
        }
        let (facts, marked, ahead_by_origin) = facts_of(&src)?;
        self.note_clock_skew(&src.origins, &ahead_by_origin);
        Ok(Some(Read { src, facts, marked }))
    }

    /// The events an agent marked as dead letters (event time out of its bounds) go to
    /// `dead_letters` and nowhere else; the rest flow on.
    fn split_marked(&self, src: &mut SourceBatch, marked: &[usize]) -> anyhow::Result<Flow> {
        let n = src.offsets.len();
        let mut flow = Flow {
            // The chain works on the batch from here on; `src` keeps the offsets and origins.
            batch: std::mem::take(&mut src.batch),
            index: (0..n).collect(),
            dead: Vec::new(),
            pauses: Vec::new(),
            chain: Vec::new(),
            changed: false,
        };
        if marked.is_empty() {
            return Ok(flow);
        }
        let batch = std::mem::take(&mut flow.batch);
        let view = BatchView::new(&batch)?;
        let mut w = BatchWriter::with_capacity(n - marked.len(), 256);
        flow.index.clear();
        for (i, ev) in view.iter().enumerate() {
            if marked.binary_search(&i).is_ok() {
                flow.dead.push(dead_letter(
                    src,
                    i,
                    &ev,
                    None,
                    DeadLetterKind::EventTime,
                    "event time out of the agent's bounds",
                ));
            } else {
                w.push_ref(&ev);
                flow.index.push(i);
            }
        }
        flow.batch = w.finish();
        Ok(flow)
    }

    /// The enricher chain, in deploy order.
    fn enrich(&mut self, src: &SourceBatch, mut flow: Flow) -> anyhow::Result<Through<Flow>> {
        let pause_after = self.settings.pause_after_failing_batches;
        for stage in &mut self.stages {
            if flow.index.is_empty() {
                break;
            }
            if stage.record.status != Status::Running {
                continue;
            }
            let Some(enricher) = stage.enricher.as_mut() else {
                continue;
            };
            let n = flow.index.len();
            let started = std::time::Instant::now();
            let out = enricher.enrich(&flow.batch)?;
            stage.stats.busy_ns += elapsed_ns(started);
            let failed = out
                .fates
                .iter()
                .filter(|f| matches!(f, Fate::Failed(_)))
                .count();
            let s = &mut stage.stats;
            s.traps += u64::from(out.failed_calls);
            s.slowest_call_ms = s.slowest_call_ms.max(out.slowest_call.as_secs_f64() * 1e3);
            let first_failure = out.fates.iter().find_map(|f| match f {
                Fate::Failed(f) => Some(f.to_string()),
                _ => None,
            });
            match count_batch(
                stage,
                n,
                failed,
                first_failure,
                pause_after,
                &mut flow.pauses,
            ) {
                Verdict::Hold => return Ok(Through::Held(flow.pauses)),
                Verdict::Skip => {
                    // `skip`: this batch passes the plugin untouched, like the ones after it.
                    stage.stats.events_out += n as u64;
                    continue;
                }
                Verdict::Go => {}
            }
            flow.chain.push(Link {
                plugin: stage.record.name.clone(),
                version: stage.record.active.clone(),
            });
            if out.fates.iter().all(|f| *f == Fate::Keep) {
                stage.stats.events_out += n as u64;
                continue;
            }
            flow.changed = true;
            let record = &stage.record;
            let dead = &mut flow.dead;
            let (batch, index, dropped, failures) =
                apply_fates(&flow.batch, &flow.index, &out, |source, ev, f| {
                    dead.push(dead_letter(
                        src,
                        source,
                        ev,
                        Some(record),
                        DeadLetterKind::Plugin(f.kind.as_str()),
                        &f.message,
                    ));
                })?;
            stage.stats.dropped += dropped;
            stage.stats.errors += failures;
            stage.stats.events_out += index.len() as u64;
            flow.batch = batch;
            flow.index = index;
        }
        Ok(Through::Go(flow))
    }

    /// Every running aggregator maps the chain's output to rows; nothing is folded until none
    /// of them holds.
    fn map(
        &mut self,
        src: &SourceBatch,
        mut flow: Flow,
    ) -> anyhow::Result<Through<(Flow, Mapped)>> {
        let pause_after = self.settings.pause_after_failing_batches;
        let mut mapped: Mapped = Vec::new();
        let view = BatchView::new(&flow.batch)?;
        // A tenant's aggregator maps its tenant's events only ([`tenant`]); `None`: the whole
        // batch.
        let tenants = self.settings.tenants.snapshot();
        let mut parts: Vec<Option<tenant::Part>> = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            parts.push(match (&stage.agg, &stage.record.tenant) {
                (Some(_), Some(t)) if !flow.index.is_empty() => {
                    let mask = tenant::Mask::new(src, &tenants, t);
                    tenant::part(&flow.batch, &flow.index, &src.origin, &mask)?
                }
                _ => None,
            });
        }
        // The plugin calls, side by side; what they mean is taken below, in deploy order.
        let mut outputs = if flow.index.is_empty() {
            Vec::new()
        } else {
            let batch = &flow.batch;
            let runs: Vec<(&mut AggRun, Option<&tenant::Part>)> = self
                .stages
                .iter_mut()
                .zip(&parts)
                .filter(|(s, _)| s.record.status == Status::Running)
                .filter_map(|(s, part)| Some((s.agg.as_mut()?, part.as_ref())))
                .collect();
            parallel::each(
                runs,
                parallel::threads(self.settings.aggregator_threads),
                |(run, part)| {
                    let started = std::time::Instant::now();
                    let out = match part {
                        Some((_, positions)) if positions.is_empty() => None,
                        Some((b, positions)) => Some(run.plugin.map_batch(b).map(|mut out| {
                            tenant::reindex(&mut out, positions);
                            out
                        })),
                        None => Some(run.plugin.map_batch(batch)),
                    };
                    (out, elapsed_ns(started))
                },
            )
        }
        .into_iter();
        for (stage, part) in self.stages.iter_mut().zip(&parts) {
            let running = stage.record.status == Status::Running;
            if stage.agg.is_none() || !running {
                mapped.push(None);
                continue;
            }
            if flow.index.is_empty() {
                // Nothing to map (every event dropped or dead-lettered): the fold still
                // observes the events, and the plugin's failure count is not touched.
                mapped.push(Some(Vec::new()));
                continue;
            }
            let n = part.as_ref().map_or(flow.index.len(), |(_, p)| p.len());
            let (out, ns) = outputs.next().expect("one output per running aggregator");
            let Some(out) = out else {
                // None of the batch is its tenant's: as for an empty batch.
                mapped.push(Some(Vec::new()));
                continue;
            };
            let out = out?;
            stage.stats.busy_ns += ns;
            stage.stats.traps += u64::from(out.failed_calls);
            let first_failure = out.failed.first().map(|(_, f)| f.to_string());
            let failed = out.failed.len();
            match count_batch(
                stage,
                n,
                failed,
                first_failure,
                pause_after,
                &mut flow.pauses,
            ) {
                Verdict::Hold => return Ok(Through::Held(flow.pauses)),
                Verdict::Skip => {
                    mapped.push(None);
                    continue;
                }
                Verdict::Go => {}
            }
            stage.stats.events_out += (n - failed) as u64;
            stage.stats.errors += failed as u64;
            for (i, f) in &out.failed {
                let i = *i as usize;
                flow.dead.push(dead_letter(
                    src,
                    flow.index[i],
                    &view.event(i),
                    Some(&stage.record),
                    DeadLetterKind::Plugin(f.kind.as_str()),
                    &f.message,
                ));
            }
            let mut rows = out.rows;
            rows.sort_by_key(|r| r.event);
            mapped.push(Some(rows));
        }
        Ok(Through::Go((flow, mapped)))
    }

    /// A plugin was paused with `hold`: nothing of this batch is kept (the counts go back to
    /// what they were); the pauses are recorded, and the pipeline waits here.
    fn abandon(&mut self, before: Vec<PluginStats>, pauses: &[Pause]) -> anyhow::Result<()> {
        for (stage, stats) in self.stages.iter_mut().zip(before) {
            stage.stats = stats;
        }
        for p in pauses {
            self.registry.pause_failing(p)?;
        }
        // The next step reloads (this pause, and anything an operator changed meanwhile).
        self.publish_metrics();
        Ok(())
    }

    /// Folds each aggregator's rows into its windows, event by event in log order. Returns the
    /// `late_events` entries (one per event, naming every aggregate it was late for); refused
    /// rows add dead letters to `flow`.
    fn fold_all(
        &mut self,
        src: &SourceBatch,
        facts: &[Fact],
        marked: &[usize],
        index: &[usize],
        batch: &[u8],
        mapped: Mapped,
    ) -> anyhow::Result<(Vec<Dead>, Vec<Encoded>)> {
        let view = BatchView::new(batch)?;
        let agents: Vec<&str> = src.origins.iter().map(|(a, _)| a.as_str()).collect();
        let mut dead = Vec::new();
        let mut late: Vec<(usize, LateFor)> = Vec::new();
        // The event of source index `j` in the chain's output.
        let event_of = |j: usize| view.event(index.partition_point(|&x| x < j));
        // Each aggregator folds its own rows into its own windows, side by side; the results
        // are taken in deploy order.
        // A tenant's aggregator observes its tenant's events only.
        let tenants = self.settings.tenants.snapshot();
        let work: Vec<FoldWork<'_>> = self
            .stages
            .iter_mut()
            .zip(mapped)
            .enumerate()
            .filter_map(|(i, (stage, rows))| {
                let skip = stage
                    .record
                    .tenant
                    .as_deref()
                    .map(|t| tenant::Mask::new(src, &tenants, t))
                    .filter(|m| !m.all)
                    .map(|m| m.skip(&src.origin, marked));
                Some((i, stage.agg.as_mut()?, rows?, skip))
            })
            .collect();
        let agents = &agents;
        let folded = parallel::each(
            work,
            parallel::threads(self.settings.aggregator_threads),
            |(i, run, rows, skip)| {
                let started = std::time::Instant::now();
                let skip = skip.as_deref().unwrap_or(marked);
                let out = fold(&mut run.engine, facts, agents, skip, index, &rows);
                (i, out, elapsed_ns(started))
            },
        );
        for (i, out, ns) in folded {
            let stage = &mut self.stages[i];
            let run = stage.agg.as_mut().expect("an aggregator folded");
            stage.stats.fold_ns += ns;
            stage.stats.rows_folded += out.rows_folded;
            stage.stats.rows_final += out.finals.len() as u64;
            run.pending.extend(out.finals);
            for (j, e) in out.exceptions {
                match e {
                    Exception::Refused { limit } => {
                        stage.stats.rows_refused += 1;
                        metrics::counter!("runnel_aggregate_refused_total", "aggregate" => stage.record.name.clone(), "limit" => limit)
                            .increment(1);
                        dead.push(dead_letter(
                            src,
                            j,
                            &event_of(j),
                            Some(&stage.record),
                            DeadLetterKind::Refused,
                            &format!("a row of this event would pass {limit} (aggregate_{limit})"),
                        ));
                    }
                    Exception::Late {
                        window_end,
                        watermark,
                    } => {
                        stage.stats.late_events += 1;
                        metrics::counter!("runnel_late_events_total", "aggregate" => stage.record.name.clone())
                            .increment(1);
                        late.push((
                            j,
                            LateFor {
                                aggregate: stage.record.name.clone(),
                                window_end: runnel_event::envelope::rfc3339_ms(window_end),
                                watermark: watermark.map(runnel_event::envelope::rfc3339_ms),
                            },
                        ));
                    }
                }
            }
        }
        late.sort_by_key(|l| l.0);
        let mut entries = Vec::new();
        let mut late = late.into_iter().peekable();
        while let Some((j, first)) = late.next() {
            let mut aggregates = vec![first];
            while let Some((_, more)) = late.next_if(|l| l.0 == j) {
                aggregates.push(more);
            }
            let (agent_id, host) = &src.origins[src.origin[j] as usize];
            let ev = event_of(j);
            let entry = LateEvent {
                source_offset: src.offsets[j],
                aggregates,
                event: EventView::new(&ev, src.offsets[j], agent_id, host),
                entry_version: ENTRY_VERSION,
            };
            entries.push(Encoded {
                source_offset: src.offsets[j],
                bytes: entry.encode(),
            });
        }
        Ok((dead, entries))
    }

    /// Appends the batch's side-topic entries (in source order), records the progress and
    /// commits when it is due (every batch without aggregators; with them every
    /// `aggregate_commit_interval_ms` and when the pipeline catches up).
    fn finish(
        &mut self,
        src: &SourceBatch,
        mut flow: Flow,
        (refused, late): (Vec<Dead>, Vec<Encoded>),
    ) -> anyhow::Result<()> {
        let appended = late
            .iter()
            .map(|e| self.topics.late_events.append(e))
            .collect::<Result<Vec<bool>, _>>()?;
        metrics::counter!("runnel_late_events_appended_total")
            .increment(appended.iter().filter(|a| **a).count() as u64);
        flow.dead.extend(refused);
        flow.dead.sort_by_key(|d| d.source);
        let (mut appended, mut event_time) = (0u64, 0u64);
        for d in &flow.dead {
            if self.topics.dead_letters.append(&d.entry)? {
                appended += 1;
                event_time += u64::from(d.event_time);
            }
        }
        metrics::counter!("runnel_dead_letters_total").increment(appended);
        metrics::counter!("runnel_event_time_dead_letters_total").increment(event_time);
        self.record_enriched(src, &mut flow)?;
        self.pending_pauses.extend(flow.pauses);
        self.progress = src.next;
        let caught_up = self.progress >= self.log.durable_end();
        if !self.has_aggregators()
            || caught_up
            || self.last_commit.elapsed() >= self.settings.commit_interval
        {
            self.commit()?;
        }
        self.publish_metrics();
        Ok(())
    }
}

impl Worker {
    /// Appends the chain's output to the `enriched` topic (when the archive is on): the
    /// offsets, the chain, and the events when an enricher changed them. A replay after a
    /// crash leaves out the offsets the topic already holds.
    fn record_enriched(&mut self, src: &SourceBatch, flow: &mut Flow) -> anyhow::Result<()> {
        let Some(topic) = self.topics.enriched.as_mut() else {
            return Ok(());
        };
        let chain = serde_json::to_string(&flow.chain)?;
        let events = flow.changed.then(|| std::mem::take(&mut flow.batch));
        let offsets = flow.index.iter().map(|&i| src.offsets[i]);
        let Some(mut record) = Record::new(offsets, chain, events) else {
            return Ok(());
        };
        if let Some(high) = topic.writer.high() {
            match record.after(high)? {
                Some(r) => record = r,
                None => return Ok(()),
            }
        }
        // A batch whose events grew past the topic's record size goes in as several records.
        let mut records = vec![record];
        while let Some(r) = records.pop() {
            if r.encoded_len() > ENTRY_BYTES_MAX as usize {
                let cut = r.clone().halves()?;
                if let Some((first, second)) = cut {
                    records.push(second);
                    records.push(first);
                    continue;
                }
            }
            let changed = u64::from(r.events.is_some());
            if topic.writer.append(&r)? {
                metrics::counter!("runnel_enriched_records_total").increment(1);
                metrics::counter!("runnel_enriched_changed_records_total").increment(changed);
            }
        }
        Ok(())
    }
}

/// Each event's [`Fact`] (agent, event time, and receive time: the earlier of the agent's
/// `received_at` and the broker's append time, so an agent whose clock runs ahead is judged by
/// the broker's), the source indices of the events an agent marked as dead letters, and per
/// origin how far its `received_at` ran ahead of the append time (`i64::MIN`: no event).
pub(crate) fn facts_of(src: &SourceBatch) -> anyhow::Result<(Vec<Fact>, Vec<usize>, Vec<i64>)> {
    let view = BatchView::new(&src.batch)?;
    let mut ahead_by_origin = vec![i64::MIN; src.origins.len()];
    let mut marked = Vec::new();
    let facts: Vec<Fact> = view
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let o = src.origin[i] as usize;
            let (received, appended) = (ev.received_at_ms(), src.appended_ms[o]);
            ahead_by_origin[o] = ahead_by_origin[o].max(received.saturating_sub(appended));
            if is_dead_letter_bytes(ev.field_bytes(runnel_batch::Field::Properties)) {
                marked.push(i);
            }
            Fact {
                origin: src.origin[i],
                event_time_ms: ev.timestamp_ms(),
                receive_ms: received.min(appended),
            }
        })
        .collect();
    Ok((facts, marked, ahead_by_origin))
}

/// The chain's batch after an enricher's answer `out`: the kept and replaced events in order,
/// with their source indices (from `index`), how many it dropped and how many it failed on;
/// `failed(source index, event, failure)` is called for each of those.
pub(crate) fn apply_fates(
    batch: &[u8],
    index: &[usize],
    out: &EnrichOutput,
    mut failed: impl FnMut(usize, &EventRef<'_>, &runnel_host::Failure),
) -> anyhow::Result<(Vec<u8>, Vec<usize>, u64, u64)> {
    let view = BatchView::new(batch)?;
    let repl = if out.replacements.is_empty() {
        None
    } else {
        Some(BatchView::new(&out.replacements)?)
    };
    let n = index.len();
    let mut w = BatchWriter::with_capacity(n, 256);
    let mut next_index = Vec::with_capacity(n);
    let (mut dropped, mut failures) = (0u64, 0u64);
    for (i, fate) in out.fates.iter().enumerate() {
        match fate {
            Fate::Keep => {
                w.push_ref(&view.event(i));
                next_index.push(index[i]);
            }
            Fate::Replace(r) => {
                let r = repl
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("a replacement without replacements"))?
                    .event(*r as usize);
                w.push_ref(&r);
                next_index.push(index[i]);
            }
            Fate::Drop(_) => dropped += 1,
            Fate::Failed(f) => {
                failures += 1;
                failed(index[i], &view.event(i), f);
            }
        }
    }
    Ok((w.finish(), next_index, dropped, failures))
}

/// Nanoseconds since `started`, for the per-plugin cost figures.
fn elapsed_ns(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
