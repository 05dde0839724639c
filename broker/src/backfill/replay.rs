//! An enricher's replay: the chain as it runs now, over the history, into `enriched_events`.
//!
//! `runnel plugin deploy FILE --backfill-from all|TIME` on an enricher that is deployed makes
//! the version active at once (the live chain runs it from the next batch on) and records a
//! plan. This thread waits until `enriched_events` holds a file the new version made: the
//! table's split `end` is then past every event an older chain made the rows of, so the rows
//! below `end` are all in the table. It runs fresh instances of the running enrichers over the
//! history below `end` (the archive's `events`, then the log), keeping the events at or after
//! the plan's time, stages the output as data files, and hands them to the archiver, which
//! replaces the table's rows of that range in one commit ([`crate::archive::replay`]).
//!
//! The replay is not checkpointed: a crash or a stop before the commit starts it over (its
//! staged files are swept); a crash after finds the commit's transaction and ends. A chain
//! that drops every event makes no file, and its replay waits for one. Aggregates are not
//! changed: their rows are recomputed by their own backfill.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use parquet::file::metadata::KeyValue;
use runnel_batch::{BatchView, BatchWriter, Field};
use runnel_event::fields::EventFields;

use super::{ArchiveSource, Ended, IDLE, SWAP_TIMEOUT, Worker};
use crate::archive::enriched::{CHAIN_KEY, TABLE};
use crate::archive::events::{self, Part};
use crate::archive::replay::{self, Request, Staged};
use crate::pipeline::host_limits;
use crate::pipeline::shadow::enrich_all;
use crate::pipeline::step::facts_of;
use crate::plugins::{BackfillPlan, PluginKind, PluginRecord, Status};
use crate::topics::enriched::Link;

/// The replay's transaction version: when the plan was requested (ms), so a later plan's is
/// greater.
fn replay_id(plan: &BackfillPlan) -> anyhow::Result<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(&plan.requested_at)
        .with_context(|| format!("the plan's time {:?}", plan.requested_at))?;
    Ok(t.timestamp_millis().max(0) as u64)
}

/// Whether a file's chain tag names `link`.
fn made_by(tags: Option<&std::collections::HashMap<String, Option<String>>>, link: &Link) -> bool {
    tags.and_then(|t| t.get(CHAIN_KEY).cloned().flatten())
        .and_then(|c| serde_json::from_str::<Vec<Link>>(&c).ok())
        .is_some_and(|chain| chain.contains(link))
}

/// The partitions' rows waiting to be staged.
#[derive(Default)]
struct Buffer {
    parts: BTreeMap<(String, i32), Part>,
    rows: u64,
}

impl Worker {
    /// Runs the replay `plan` of enricher `record`.
    pub(super) fn run_replay(
        &mut self,
        record: &PluginRecord,
        plan: &BackfillPlan,
        stop: &AtomicBool,
    ) -> anyhow::Result<Ended> {
        let archive = self.archive.clone().context(
            "the replay writes enriched_events, which the archive keeps, and the archive is off",
        )?;
        let id = replay_id(plan)?;
        let link = Link {
            plugin: record.name.clone(),
            version: plan.version.clone(),
        };
        let started = Instant::now();
        // 1. Until the table holds a file of the new version (or the replay's commit).
        let end = loop {
            if stop.load(Ordering::Acquire) {
                return Ok(Ended::Stopped);
            }
            if !self.still_planned(record, plan)? {
                self.progress.clear();
                return Ok(Ended::Done);
            }
            if let Some(view) = archive.shared.enriched_view() {
                let t = crate::archive::table::Table::from_events_view(view.table.clone(), TABLE);
                let done = archive.handle.block_on(t.txn_version(replay::APP_ID));
                if done
                    .map_err(|e| anyhow::anyhow!(e))?
                    .is_some_and(|v| v >= id as i64)
                {
                    return self.replay_done(record, plan);
                }
                if t.files()
                    .map_err(|e| anyhow::anyhow!(e))?
                    .iter()
                    .any(|f| made_by(f.tags.as_ref(), &link))
                {
                    break view.split;
                }
            }
            self.publish_replay(
                record,
                plan,
                0,
                0,
                0,
                0.0,
                "waiting for a row of the version",
            );
            std::thread::sleep(IDLE);
        };
        // 2. The chain as the pipeline runs it.
        let (mut enrichers, chain) = self.load_chain()?;
        anyhow::ensure!(
            chain.contains(&link),
            "{} version {} is not in the running chain (paused or redeployed)",
            link.plugin,
            link.version
        );
        let chain_json = serde_json::to_string(&chain)?;
        tracing::info!(plugin = %record.name, version = %plan.version, from = %plan.from.label(), end, "replay running");
        // 3. The history below `end`, staged.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let prefix = replay::staging_prefix(id, run);
        *archive.shared.staging.lock().expect("lock poisoned") = Some(prefix.clone());
        let from_ms = plan.from.from_ms();
        let (mut next, mut events, mut rows, mut errors) = (0u64, 0u64, 0u64, 0u64);
        let mut buffer = Buffer::default();
        let mut staged = Vec::new();
        let mut generation = self.registry.generation();
        while next < end {
            if stop.load(Ordering::Acquire) {
                return Ok(Ended::Stopped);
            }
            if self.registry.generation() != generation {
                generation = self.registry.generation();
                if !self.still_planned(record, plan)? {
                    tracing::info!(plugin = %record.name, "replay cancelled: the plugin was redeployed or removed");
                    self.progress.clear();
                    return Ok(Ended::Done);
                }
            }
            let src = self.read(next, end, from_ms)?;
            if src.next <= next {
                // Nothing readable yet (the archive is being opened): not a busy loop.
                std::thread::sleep(IDLE);
                continue;
            }
            next = src.next;
            events += src.offsets.len() as u64;
            let (kept, failed) = run_chain(&mut enrichers, src, from_ms, &mut buffer)?;
            errors += failed;
            rows += kept;
            if buffer.rows >= self.settings.archive_read_events {
                staged.extend(stage(&archive, &mut buffer, &prefix, &chain_json)?);
            }
            let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-3);
            self.publish_replay(record, plan, next, end, events, rate, "running");
            self.progress.floor.store(next, Ordering::Release);
        }
        staged.extend(stage(&archive, &mut buffer, &prefix, &chain_json)?);
        // 4. One commit replaces the range.
        self.publish_replay(record, plan, next, end, events, 0.0, "committing");
        let (tx, rx) = std::sync::mpsc::channel();
        *archive.shared.replay.lock().expect("lock poisoned") = Some(Request {
            id,
            from_ms,
            end,
            chain: chain_json,
            files: staged,
            reply: tx,
        });
        let version = match rx.recv_timeout(SWAP_TIMEOUT) {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("committing the replay: {e}"))?,
            Err(_) => {
                archive.shared.replay.lock().expect("lock poisoned").take();
                anyhow::bail!("committing the replay: the archiver did not answer");
            }
        };
        *archive.shared.staging.lock().expect("lock poisoned") = None;
        metrics::counter!("runnel_replay_events_total", "plugin" => record.name.clone())
            .increment(events);
        tracing::info!(plugin = %record.name, version = %plan.version, events, rows, errors, table_version = version, secs = started.elapsed().as_secs_f64(), "replay committed");
        self.replay_done(record, plan)
    }

    fn replay_done(&self, record: &PluginRecord, plan: &BackfillPlan) -> anyhow::Result<Ended> {
        self.registry.replay_done(&record.name, plan)?;
        metrics::counter!("runnel_replays_total", "plugin" => record.name.clone()).increment(1);
        self.progress.clear();
        Ok(Ended::Done)
    }

    /// Fresh instances of the running enrichers, in deploy order, and their links.
    fn load_chain(&self) -> anyhow::Result<(Vec<runnel_host::Enricher>, Vec<Link>)> {
        let (mut enrichers, mut links) = (Vec::new(), Vec::new());
        for r in self.registry.plugins()? {
            if r.kind != PluginKind::Enrich || r.status != Status::Running {
                continue;
            }
            let v = r.active_version();
            let path = self.registry.wasm_path(&r.name, &v.sha256);
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let limits = host_limits(&v.limits, &v.capabilities, self.settings.isolation);
            enrichers.push(
                self.runtime
                    .load_enricher(&r.name, &wasm, v.params.clone(), limits)
                    .map_err(|e| anyhow::anyhow!("loading enricher {}: {e}", r.name))?,
            );
            links.push(Link {
                plugin: r.name.clone(),
                version: r.active.clone(),
            });
        }
        Ok((enrichers, links))
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_replay(
        &self,
        record: &PluginRecord,
        plan: &BackfillPlan,
        offset: u64,
        end: u64,
        events: u64,
        rate: f64,
        state: &str,
    ) {
        self.progress.set(
            &record.name,
            super::BackfillInfo {
                version: plan.version.clone(),
                from: plan.from.label(),
                state: format!("replay {state}"),
                offset,
                target_offset: end,
                events,
                errors: 0,
                events_per_second: rate,
                eta_seconds: (rate > 0.0).then(|| end.saturating_sub(offset) as f64 / rate),
                requested_at: plan.requested_at.clone(),
            },
        );
    }
}

/// Runs the chain over `src`'s events at or after `from_ms` (an agent's dead letters left
/// out, as the live chain does), into `buffer`; how many rows it made and how many events an
/// enricher failed on.
fn run_chain(
    enrichers: &mut [runnel_host::Enricher],
    mut src: crate::log::SourceBatch,
    from_ms: i64,
    buffer: &mut Buffer,
) -> anyhow::Result<(u64, u64)> {
    let (_, marked, _) = facts_of(&src)?;
    let batch = std::mem::take(&mut src.batch);
    let view = BatchView::new(&batch)?;
    let mut w = BatchWriter::with_capacity(view.len(), 256);
    let mut index = Vec::with_capacity(view.len());
    for (i, ev) in view.iter().enumerate() {
        if ev.timestamp_ms() >= from_ms && marked.binary_search(&i).is_err() {
            w.push_ref(&ev);
            index.push(i);
        }
    }
    let (batch, index, failed) = enrich_all(enrichers, w.finish(), index)?;
    let view = BatchView::new(&batch)?;
    for (k, &i) in index.iter().enumerate() {
        let ev = view.event(k);
        let day = ev.timestamp_ms().div_euclid(86_400_000) as i32;
        let event_type = ev.text(Field::EventType).unwrap_or_default().to_string();
        let (agent, host) = &src.origins[src.origin[i] as usize];
        buffer
            .parts
            .entry((event_type, day))
            .or_insert_with(Part::new)
            .push(&ev, src.offsets[i], agent, host);
    }
    buffer.rows += index.len() as u64;
    Ok((index.len() as u64, failed))
}

/// Stages the buffered rows as one file per partition; empties the buffer.
fn stage(
    archive: &ArchiveSource,
    buffer: &mut Buffer,
    prefix: &str,
    chain: &str,
) -> anyhow::Result<Vec<Staged>> {
    let view = archive
        .shared
        .enriched_view()
        .context("enriched_events is not open")?;
    let schema = events::data_schema();
    let mut out = Vec::new();
    for ((event_type, day), mut part) in std::mem::take(&mut buffer.parts) {
        let meta = vec![KeyValue::new(CHAIN_KEY.to_string(), chain.to_string())];
        let f = part
            .finish_with(&schema, event_type, day, meta)
            .map_err(|e| anyhow::anyhow!(e))?;
        // `…/part-FIRST-LAST.zstd.parquet` → `…/replay-ID-RUN-FIRST-LAST.zstd.parquet`.
        let path = f.path.replacen("/part-", &format!("/{prefix}"), 1);
        archive
            .handle
            .block_on(replay::stage(&view.table, &path, f.bytes.clone()))
            .map_err(|e| anyhow::anyhow!(e))?;
        out.push(Staged {
            path,
            event_type: f.event_type,
            date: f.date,
            size: f.bytes.len(),
            stats: f.stats,
        });
    }
    buffer.rows = 0;
    Ok(out)
}
