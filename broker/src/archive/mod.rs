//! # archive: the log as a Delta Lake table in object storage
//!
//! The archiver copies the log into the `events` table under `archive_url` (a local folder,
//! `DATA_DIR/archive` by default; S3 or another store by URL, see [`store`]): zstd Parquet
//! files under Hive-style folders `event_type=…/date=…/`, so Delta readers (DuckDB, Spark,
//! Trino, the `deltalake` Python package) and plain Parquet readers both read it. The layout
//! is in [`events`] and `docs/archive.md`.
//!
//! ## Exactly once
//! Each pass takes the durable log from the first offset not archived, at most
//! `archive_commit_events_max` events at a time, stores one file per partition with
//! `PutMode::Create` under a name holding its first and last offset, then commits them in one
//! Delta commit that also sets the application transaction `runnel.archive.events` to the
//! first offset after the range. That transaction version is where the next pass (and a
//! restarted broker) resumes, so a range is committed once whatever crashes: a crash before the
//! commit leaves files no commit references, which the sweep at open deletes; a crash after
//! it is seen in the transaction version. Any error drops the opened table: the next pass
//! opens it again, reads the transaction version, and sweeps.
//!
//! ## When
//! Every `archive_interval_ms` the archiver archives everything durable, whatever the volume
//! (a segment need not fill first): the archive lags the log by about that interval. The
//! tables take turns: each commits for at most `archive_slice_ms`, and while one is still
//! behind the next pass starts at once, so a backlog of the log (after a stop, or a kill)
//! holds up neither `enriched_events` nor an aggregate's table.
//!
//! ## The hot tier: mark, then delete
//! The commit's transaction version is the mark. After a pass has caught up, the archiver asks
//! the log writer to delete the sealed segments wholly below it, below the pipeline's committed
//! offset too ([`ReadersFloor`]), whose newest record is older than `log_retention_ms`. A
//! segment the archive lacks is never deleted: with the archiver failing or off the log only
//! grows, bounded by the disk-full policy.
//!
//! ## Enriched events
//! The same pass commits the pipeline's `enriched` topic (the enricher chain's output) to the
//! table `enriched_events` ([`enriched`]), and the log keeps every segment an unarchived
//! record of it names.
//!
//! ## Aggregates
//! The same pass commits each aggregate's final rows, queued by the pipeline's commits in the
//! registry's outbox, to its table `agg_<name>` ([`aggregates`]).
//!
//! May call: [`crate::log`] (reads), [`crate::plugins`] (the outbox).

pub mod aggregates;
pub mod audit;
pub mod compact;
pub mod enriched;
pub mod events;
#[cfg(test)]
pub mod fault;
pub mod lifecycle;
pub mod replay;
pub mod store;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;
use tokio::sync::watch;

use crate::log::BrokerLog;
use table::Table;

/// The archiver's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the tables live (a path or URL; see [`store`]).
    pub url: String,
    /// S3 settings that override the `AWS_*` variables.
    pub s3: store::S3Settings,
    /// Time between passes.
    pub interval: Duration,
    /// Most events one commit takes.
    pub commit_events_max: usize,
    /// Longest one table's turn in a pass (`archive_slice_ms`).
    pub slice: Duration,
    /// How long a sealed log segment the archive holds is kept (`log_retention_ms`).
    pub log_retention: Duration,
    /// Where the cold tier's tables live (`archive_cold_url`; `None`: no cold tier).
    pub cold_url: Option<String>,
    /// When days move to cold and are deleted.
    pub policy: lifecycle::Policy,
    /// The audit log of moves and deletions.
    pub audit_path: std::path::PathBuf,
    /// When small files are compacted.
    pub compact: compact::Policy,
    /// How long an aggregate's final rows stay in `state.redb` once archived
    /// (`aggregate_rows_retention_ms`; `None`: for ever).
    pub aggregate_rows_retention: Option<Duration>,
}

/// The lowest log offset another reader still needs (the pipeline's committed offset): no
/// segment at or past it is deleted.
pub type ReadersFloor = Arc<dyn Fn() -> u64 + Send + Sync>;

pub use runnel_client::api::{ArchiveStatus as Status, ArchiveTableStatus as TableStatus};

/// What the archiver shares with the admin API and the query layer.
#[derive(Debug)]
pub struct Shared {
    /// `GET /v1/archive`.
    pub status: Mutex<Status>,
    /// The `events` table as last committed, for queries (`None` before the first open).
    view: Mutex<Option<View>>,
    /// Each `agg_<name>` table as last committed and its outbox cleared, by aggregate name.
    aggregates: Mutex<HashMap<String, deltalake::DeltaTable>>,
    /// `enriched_events` as last committed (`None` before the first open, or without the
    /// topic).
    enriched: Mutex<Option<EnrichedView>>,
    /// The `enriched` topic, for the part of `enriched_events` not archived yet.
    pub enriched_topic: Option<enriched::Source>,
    /// Days are deleted from the archive (`archive_retention_days` is set): the log may still
    /// hold events the archive no longer does.
    pub expires: bool,
    /// An enricher's replay, staged, for the next pass to commit ([`replay`]).
    pub replay: Mutex<Option<replay::Request>>,
    /// The name prefix of the running replay's staged files, which the orphan sweep keeps.
    pub staging: Mutex<Option<String>>,
}

/// A committed version of `enriched_events`: a query reads the table below `split` and the
/// topic from `topic_end` on.
#[derive(Debug, Clone)]
pub struct EnrichedView {
    /// The table at that version.
    pub table: deltalake::DeltaTable,
    /// The first topic offset it lacks.
    pub topic_end: u64,
    /// The first source offset past its records: every record of the topic from `topic_end`
    /// on holds only offsets at or after it.
    pub split: u64,
}

/// A committed version of the `events` table and the first offset it lacks: a query reads
/// the table below that offset and the log from it on.
#[derive(Debug, Clone)]
pub struct View {
    /// The table at that version (the warm tier).
    pub table: deltalake::DeltaTable,
    /// The cold tier's table as it was when this view was published (after `table`'s
    /// version): a reader skips the warm files it holds ([`lifecycle`]).
    pub cold: Option<deltalake::DeltaTable>,
    /// Its transaction version: every offset below it is in the table, none at or after it.
    pub archived_end: u64,
}

impl Shared {
    /// The last committed view of `events` (`None` until the archiver has opened it).
    pub fn view(&self) -> Option<View> {
        self.view.lock().expect("lock poisoned").clone()
    }

    fn publish(&self, view: View) {
        *self.view.lock().expect("lock poisoned") = Some(view);
    }

    /// The last committed view of `enriched_events` (`None` until the archiver has opened
    /// it).
    pub fn enriched_view(&self) -> Option<EnrichedView> {
        self.enriched.lock().expect("lock poisoned").clone()
    }

    /// Aggregate `name`'s table as last committed (`None` before its first commit since the
    /// start): it holds every row below the aggregate's split
    /// ([`crate::plugins::outbox::Split`]) at the split's version or a later one.
    pub fn aggregate_view(&self, name: &str) -> Option<deltalake::DeltaTable> {
        self.aggregates
            .lock()
            .expect("lock poisoned")
            .get(name)
            .cloned()
    }
}

/// Starts the archiver task: it runs until `shutdown` turns true.
pub fn start(
    log: BrokerLog,
    registry: Option<crate::plugins::Registry>,
    readers_floor: ReadersFloor,
    enriched: Option<enriched::Source>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<Shared>, tokio::task::JoinHandle<()>), String> {
    let location = store::open(&settings.url, &settings.s3)?;
    let cold = settings
        .cold_url
        .as_deref()
        .map(|u| store::open(u, &settings.s3).map_err(|e| format!("archive_cold_url: {e}")))
        .transpose()?;
    let mut tables = vec![TableStatus {
        name: events::TABLE.into(),
        tier: "warm".into(),
        url: location.table_url(events::TABLE).to_string(),
        ..Default::default()
    }];
    if let Some(c) = &cold {
        tables.push(TableStatus {
            name: events::TABLE.into(),
            tier: "cold".into(),
            url: c.table_url(events::TABLE).to_string(),
            ..Default::default()
        });
    }
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            url: location.url.to_string(),
            interval_ms: settings.interval.as_millis() as u64,
            tables,
        }),
        view: Mutex::new(None),
        aggregates: Mutex::new(HashMap::new()),
        enriched: Mutex::new(None),
        enriched_topic: enriched.clone(),
        expires: settings.policy.retention_days.is_some(),
        replay: Mutex::new(None),
        staging: Mutex::new(None),
    });
    if let Some(r) = &registry {
        r.set_archive_rows(true)
            .map_err(|e| format!("queueing aggregate rows: {e}"))?;
    }
    let archiver = Archiver {
        log,
        registry,
        readers_floor,
        enriched,
        enriched_open: std::sync::atomic::AtomicBool::new(false),
        audit: audit::Audit::new(settings.audit_path.clone()),
        settings,
        location,
        cold,
        shared: shared.clone(),
    };
    Ok((shared, tokio::spawn(archiver.run(shutdown))))
}

struct Archiver {
    log: BrokerLog,
    /// Where the aggregates' rows are queued (`None`: events only).
    registry: Option<crate::plugins::Registry>,
    readers_floor: ReadersFloor,
    /// The `enriched` topic (`None`: no `enriched_events`).
    enriched: Option<enriched::Source>,
    /// Whether `enriched_events` is open (until then the log keeps everything for it).
    enriched_open: std::sync::atomic::AtomicBool,
    settings: Settings,
    location: store::Location,
    cold: Option<store::Location>,
    audit: audit::Audit,
    shared: Arc<Shared>,
}

/// The opened `enriched_events` table and where it ends.
struct Enriched {
    table: Table,
    /// The first topic offset it lacks.
    topic_end: u64,
    /// The first source offset past its records.
    split: u64,
}

/// The opened `events` table, its cold tier, and the first offset it lacks.
struct Events {
    table: Table,
    cold: Option<Table>,
    archived_end: u64,
    /// When the lifecycle (moves, deletions, compaction) last ran: it runs when the table
    /// has caught up, and at least every `archive_interval_ms` while it is behind.
    lifecycle_at: Option<Instant>,
}

/// How a table's turn in a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Everything durable is committed.
    CaughtUp,
    /// The slice ran out with more to commit: the next pass starts at once.
    Behind,
}

impl Events {
    fn view(&self) -> View {
        view_of(&self.table, self.cold.as_ref(), self.archived_end)
    }
}

fn view_of(warm: &Table, cold: Option<&Table>, archived_end: u64) -> View {
    View {
        table: warm.delta().clone(),
        cold: cold.map(|c| c.delta().clone()),
        archived_end,
    }
}

async fn open_events(location: &store::Location) -> Result<Table, String> {
    Table::open(
        location,
        events::TABLE,
        events::table_columns(),
        &events::PARTITION_COLUMNS,
    )
    .await
}

impl Archiver {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events: Option<Events> = None;
        let mut aggregates: HashMap<String, Table> = HashMap::new();
        let mut enriched_table: Option<Enriched> = None;
        loop {
            // Each table takes a turn of at most `slice`. The aggregates first: after a
            // start, reads of rows below an aggregate's split wait for its table.
            let mut turns = vec![self.aggregates_pass(&mut aggregates).await];
            // Before `events`, whose pass deletes the log segments neither needs.
            match self.enriched_pass(&mut enriched_table, &shutdown).await {
                Ok(turn) => turns.push(turn),
                Err(e) => {
                    metrics::counter!("runnel_archive_errors_total", "table" => enriched::TABLE)
                        .increment(1);
                    tracing::warn!(table = enriched::TABLE, error = %e, "archive pass failed; retrying");
                    self.named_status(enriched::TABLE, |s| s.last_error = Some(e));
                    enriched_table = None;
                    self.enriched_open
                        .store(false, std::sync::atomic::Ordering::Release);
                }
            }
            let failed = match self.pass(&mut events, &shutdown).await {
                Ok(turn) => {
                    turns.push(turn);
                    false
                }
                Err(e) => {
                    metrics::counter!("runnel_archive_errors_total", "table" => events::TABLE)
                        .increment(1);
                    tracing::warn!(table = events::TABLE, error = %e, "archive pass failed; retrying");
                    self.table_status(|s| s.last_error = Some(e));
                    // Opened again on the next pass: the transaction version says what a
                    // failed commit did, and the sweep removes what it left.
                    events = None;
                    true
                }
            };
            let wait = if failed {
                self.settings.interval.min(Duration::from_secs(10))
            } else if turns.contains(&Turn::Behind) {
                // A table is behind: the next turns at once (a failing one waits above).
                Duration::ZERO
            } else {
                self.settings.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Updates the warm table's status.
    fn table_status(&self, f: impl FnOnce(&mut TableStatus)) {
        self.tier_status(0, f)
    }

    /// Updates the status of tier `i` (0 warm, 1 cold).
    fn tier_status(&self, i: usize, f: impl FnOnce(&mut TableStatus)) {
        let mut s = self.shared.status.lock().expect("lock poisoned");
        if let Some(t) = s.tables.get_mut(i) {
            f(t);
        }
    }

    /// Opens the table if needed, then archives everything durable, or what one slice allows.
    async fn pass(
        &self,
        events: &mut Option<Events>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Turn, String> {
        let started = Instant::now();
        if events.is_none() {
            let table = open_events(&self.location).await?;
            let archived_end = table.txn_version(events::APP_ID).await?.unwrap_or(0);
            let archived_end = u64::try_from(archived_end)
                .map_err(|_| format!("transaction version {archived_end} is negative"))?;
            let swept = table.sweep_orphans().await?;
            metrics::counter!("runnel_archive_orphans_swept_total", "table" => events::TABLE)
                .increment(swept);
            self.table_status(|s| s.orphans_swept += swept);
            tracing::info!(table = events::TABLE, url = %table.url(), version = table.version(), archived_end, swept, "archive table opened");
            let cold = match &self.cold {
                Some(location) => {
                    let cold = open_events(location)
                        .await
                        .map_err(|e| format!("cold tier: {e}"))?;
                    let swept = cold.sweep_orphans().await?;
                    self.tier_status(1, |s| s.orphans_swept += swept);
                    tracing::info!(table = events::TABLE, tier = "cold", url = %cold.url(), version = cold.version(), swept, "archive table opened");
                    Some(cold)
                }
                None => None,
            };
            let ev = Events {
                table,
                cold,
                archived_end,
                lifecycle_at: None,
            };
            self.shared.publish(ev.view());
            *events = Some(ev);
        }
        let ev = events.as_mut().expect("opened above");
        loop {
            let end = self.log.durable_end();
            self.report(ev, end)?;
            let caught_up = ev.archived_end >= end || *shutdown.borrow();
            if caught_up || started.elapsed() >= self.settings.slice {
                let lifecycle_due = ev
                    .lifecycle_at
                    .is_none_or(|at| at.elapsed() >= self.settings.interval);
                if caught_up || lifecycle_due {
                    self.lifecycle(ev).await?;
                    ev.lifecycle_at = Some(Instant::now());
                    self.report(ev, end)?;
                }
                self.retire(ev.archived_end).await?;
                return Ok(if caught_up {
                    Turn::CaughtUp
                } else {
                    Turn::Behind
                });
            }
            self.archive_range(ev).await?;
        }
    }

    /// Archives one range from `archived_end` on, in one commit.
    async fn archive_range(&self, ev: &mut Events) -> Result<(), String> {
        let (log, from, limit) = (
            self.log.clone(),
            ev.archived_end,
            self.settings.commit_events_max,
        );
        let range = tokio::task::spawn_blocking(move || events::build(&log, from, limit))
            .await
            .map_err(|e| format!("building archive files: {e}"))??;
        if range.next <= from {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let (adds, bytes) = store_files(&ev.table, &range.files, None, now).await?;
        let version = ev
            .table
            .append(adds, Transaction::new(events::APP_ID, range.next as i64))
            .await?;
        ev.archived_end = range.next;
        self.shared.publish(ev.view());
        let t = events::TABLE;
        metrics::counter!("runnel_archive_commits_total", "table" => t).increment(1);
        metrics::counter!("runnel_archive_events_total", "table" => t).increment(range.events);
        metrics::counter!("runnel_archive_files_total", "table" => t)
            .increment(range.files.len() as u64);
        metrics::counter!("runnel_archive_bytes_total", "table" => t).increment(bytes);
        tracing::debug!(
            table = t,
            version,
            from,
            next = range.next,
            events = range.events,
            files = range.files.len(),
            bytes,
            "archived a range"
        );
        self.table_status(|s| s.last_commit_ms = Some(now));
        Ok(())
    }

    /// Opens `enriched_events` if needed, then archives every durable record of the topic.
    async fn enriched_pass(
        &self,
        state: &mut Option<Enriched>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Turn, String> {
        use std::sync::atomic::Ordering::Release;
        let started = Instant::now();
        let Some(source) = &self.enriched else {
            return Ok(Turn::CaughtUp);
        };
        let name = enriched::TABLE;
        if state.is_none() {
            let table = Table::open(
                &self.location,
                name,
                events::table_columns(),
                &events::PARTITION_COLUMNS,
            )
            .await?;
            let version = |v: Option<i64>| {
                u64::try_from(v.unwrap_or(0))
                    .map_err(|_| format!("{name}: transaction version {v:?} is negative"))
            };
            let topic_end = version(table.txn_version(enriched::APP_ID).await?)?;
            let split = version(table.txn_version(enriched::SPLIT_APP_ID).await?)?;
            let staging = self.shared.staging.lock().expect("lock poisoned").clone();
            let swept = table
                .sweep_orphans_except(|path| {
                    staging
                        .as_deref()
                        .is_some_and(|p| replay::is_staged_by(path, p))
                })
                .await?;
            metrics::counter!("runnel_archive_orphans_swept_total", "table" => name)
                .increment(swept);
            tracing::info!(table = name, url = %table.url(), version = table.version(), topic_end, split, swept, "archive table opened");
            self.named_status(name, |s| {
                s.url = table.url();
                s.orphans_swept += swept;
            });
            source.archived.store(topic_end, Release);
            let e = Enriched {
                table,
                topic_end,
                split,
            };
            self.publish_enriched(&e);
            self.enriched_open.store(true, Release);
            *state = Some(e);
        }
        let e = state.as_mut().expect("opened above");
        let request = self.shared.replay.lock().expect("lock poisoned").take();
        if let Some(req) = request {
            let done = replay::commit(&mut e.table, &req).await;
            if done.is_ok() {
                self.publish_enriched(e);
                metrics::counter!("runnel_archive_commits_total", "table" => name).increment(1);
            }
            let failed = done.as_ref().err().cloned();
            let _ = req.reply.send(done);
            if let Some(err) = failed {
                return Err(format!("committing a replay: {err}"));
            }
        }
        loop {
            let end = source.reader.end_offset();
            let figures = figures(&e.table, 1)?;
            self.named_status(name, |s| {
                figures.apply(s);
                s.archived_end = e.split;
                s.log_end = end;
                s.lag_events = end.saturating_sub(e.topic_end);
                s.last_error = None;
            });
            if e.topic_end < end && !*shutdown.borrow() && started.elapsed() >= self.settings.slice
            {
                return Ok(Turn::Behind);
            }
            if e.topic_end >= end || *shutdown.borrow() {
                // Small files of one chain are compacted, removed ones vacuumed; a failure
                // here loses nothing and is tried again at the next pass.
                match compact::run(&mut e.table, &self.settings.compact, &events::data_schema())
                    .await
                {
                    Ok(0) => {}
                    Ok(_) => self.publish_enriched(e),
                    Err(err) => tracing::warn!(table = name, error = %err, "compacting failed"),
                }
                let before =
                    chrono::Utc::now().timestamp_millis() - self.settings.policy.vacuum_after_ms;
                if let Err(err) = e.table.vacuum(before).await {
                    tracing::warn!(table = name, error = %err, "vacuuming removed files failed");
                }
                return Ok(Turn::CaughtUp);
            }
            let (reader, log, from, limit) = (
                source.reader.clone(),
                self.log.clone(),
                e.topic_end,
                self.settings.commit_events_max,
            );
            let range =
                tokio::task::spawn_blocking(move || enriched::build(&reader, &log, from, limit))
                    .await
                    .map_err(|ee| format!("building archive files: {ee}"))??;
            if range.walk.next <= from {
                return Ok(Turn::CaughtUp);
            }
            let now = chrono::Utc::now().timestamp_millis();
            let chain = range.walk.chain.clone().unwrap_or_else(|| "[]".into());
            let tags = HashMap::from([(enriched::CHAIN_KEY.to_string(), Some(chain))]);
            let (adds, bytes) = store_files(&e.table, &range.files, Some(tags), now).await?;
            let split = range.walk.source_next.unwrap_or(e.split).max(e.split);
            e.table
                .append_with(
                    adds,
                    vec![
                        Transaction::new(enriched::APP_ID, range.walk.next as i64),
                        Transaction::new(enriched::SPLIT_APP_ID, split as i64),
                    ],
                )
                .await?;
            e.topic_end = range.walk.next;
            e.split = split;
            source.archived.store(e.topic_end, Release);
            self.publish_enriched(e);
            metrics::counter!("runnel_archive_commits_total", "table" => name).increment(1);
            metrics::counter!("runnel_archive_events_total", "table" => name)
                .increment(range.walk.events);
            metrics::counter!("runnel_archive_files_total", "table" => name)
                .increment(range.files.len() as u64);
            metrics::counter!("runnel_archive_bytes_total", "table" => name).increment(bytes);
            self.named_status(name, |s| s.last_commit_ms = Some(now));
        }
    }

    fn publish_enriched(&self, e: &Enriched) {
        *self.shared.enriched.lock().expect("lock poisoned") = Some(EnrichedView {
            table: e.table.delta().clone(),
            topic_end: e.topic_end,
            split: e.split,
        });
    }

    /// Commits the aggregates' queued rows to their tables, for at most one slice; an
    /// aggregate whose commit fails is opened again on the next pass (its transaction version
    /// says what the failed commit did, the sweep removes what it left) and counts as caught
    /// up, so that it waits the interval.
    async fn aggregates_pass(&self, tables: &mut HashMap<String, Table>) -> Turn {
        let started = Instant::now();
        loop {
            let turn = self.aggregates_commit(tables).await;
            if turn == Turn::CaughtUp || started.elapsed() >= self.settings.slice {
                return turn;
            }
        }
    }

    /// One commit of each aggregate's queued rows (up to `commit_events_max` rows each):
    /// `Behind` when one had that many queued, so more may wait, and none failed.
    async fn aggregates_commit(&self, tables: &mut HashMap<String, Table>) -> Turn {
        let Some(registry) = self.registry.clone() else {
            return Turn::CaughtUp;
        };
        let rows_max = self.settings.commit_events_max;
        let pending = match tokio::task::spawn_blocking(move || {
            // Rows a commit left out while the outbox was being turned on, queued again.
            if registry.archive_gaps()? {
                tracing::info!(
                    "aggregate rows committed while the outbox was off are queued again"
                );
            }
            registry.archive_pending(rows_max)
        })
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the aggregate rows to archive failed");
                return Turn::CaughtUp;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the aggregate rows to archive failed");
                return Turn::CaughtUp;
            }
        };
        let (mut turn, mut failed) = (Turn::CaughtUp, false);
        for p in pending {
            let table = aggregates::table_name(&p.name);
            let full = p.batches.iter().map(|(_, rows)| rows.len()).sum::<usize>() >= rows_max;
            match self.archive_aggregate(tables, &p).await {
                Ok(()) if full => turn = Turn::Behind,
                Ok(()) => {}
                Err(e) => {
                    tables.remove(&table);
                    metrics::counter!("runnel_archive_errors_total", "table" => table.clone())
                        .increment(1);
                    tracing::warn!(table = %table, error = %e, "archive commit failed; retrying");
                    self.named_status(&table, |s| s.last_error = Some(e));
                    failed = true;
                }
            }
        }
        // A failing table is not retried at once: the pass waits the interval.
        if failed { Turn::CaughtUp } else { turn }
    }

    async fn archive_aggregate(
        &self,
        tables: &mut HashMap<String, Table>,
        p: &crate::plugins::outbox::Pending,
    ) -> Result<(), String> {
        let name = aggregates::table_name(&p.name);
        if !tables.contains_key(&name) {
            let t = aggregates::open(&self.location, &p.name, p.meta.as_ref()).await?;
            let swept = t.sweep_orphans().await?;
            metrics::counter!("runnel_archive_orphans_swept_total", "table" => name.clone())
                .increment(swept);
            tracing::info!(table = %name, url = %t.url(), version = t.version(), swept, "archive table opened");
            self.named_status(&name, |s| {
                s.url = t.url();
                s.orphans_swept += swept;
            });
            tables.insert(name.clone(), t);
        }
        let t = tables.get_mut(&name).expect("opened above");
        if p.batches.is_empty() {
            // Nothing to commit; reads below the split need the table.
            let mut views = self.shared.aggregates.lock().expect("lock poisoned");
            views
                .entry(p.name.clone())
                .or_insert_with(|| t.delta().clone());
            return Ok(());
        }
        let (below, rows, version) = aggregates::commit(t, p).await?;
        let (registry, agg) = (
            self.registry.clone().expect("a pending aggregate"),
            p.name.clone(),
        );
        let prune_before = self
            .settings
            .aggregate_rows_retention
            .map(|r| chrono::Utc::now().timestamp_millis() - r.as_millis() as i64);
        let pruned = tokio::task::spawn_blocking(move || {
            registry.archive_done(&agg, below, version, prune_before)
        })
        .await
        .map_err(|e| format!("deleting archived outbox batches: {e}"))?
        .map_err(|e| format!("deleting archived outbox batches: {e}"))?;
        // Published after the outbox is cleared: a reader that sees this version finds
        // `state.redb` at the same split or a later one.
        self.shared
            .aggregates
            .lock()
            .expect("lock poisoned")
            .insert(p.name.clone(), t.delta().clone());
        metrics::counter!("runnel_aggregate_rows_pruned_total", "aggregate" => p.name.clone())
            .increment(pruned);
        // Small files (a pass's rows of today) are compacted, removed ones vacuumed; a
        // failure here loses nothing and is tried again at the next commit.
        if let Some(meta) = &p.meta {
            let schema = aggregates::data_schema_of(meta);
            match compact::run(t, &self.settings.compact, &schema).await {
                Ok(0) => {}
                Ok(_) => {
                    self.shared
                        .aggregates
                        .lock()
                        .expect("lock poisoned")
                        .insert(p.name.clone(), t.delta().clone());
                }
                Err(e) => tracing::warn!(table = %name, error = %e, "compacting failed"),
            }
        }
        let before = chrono::Utc::now().timestamp_millis() - self.settings.policy.vacuum_after_ms;
        if let Err(e) = t.vacuum(before).await {
            tracing::warn!(table = %name, error = %e, "vacuuming removed files failed");
        }
        metrics::counter!("runnel_archive_commits_total", "table" => name.clone()).increment(1);
        metrics::counter!("runnel_archive_events_total", "table" => name.clone()).increment(rows);
        let figures = figures(t, 0)?;
        let now = chrono::Utc::now().timestamp_millis();
        self.named_status(&name, |s| {
            figures.apply(s);
            s.archived_end = below;
            s.last_commit_ms = Some(now);
            s.last_error = None;
        });
        Ok(())
    }

    /// Updates the status of the warm table `name`, adding it when it is not listed yet.
    fn named_status(&self, name: &str, f: impl FnOnce(&mut TableStatus)) {
        let mut s = self.shared.status.lock().expect("lock poisoned");
        let i = match s
            .tables
            .iter()
            .position(|t| t.name == name && t.tier == "warm")
        {
            Some(i) => i,
            None => {
                s.tables.push(TableStatus {
                    name: name.to_string(),
                    tier: "warm".into(),
                    url: self.location.table_url(name).to_string(),
                    ..Default::default()
                });
                s.tables.len() - 1
            }
        };
        f(&mut s.tables[i]);
    }

    /// Moves and deletes the days that are due ([`lifecycle`]), publishing each step.
    async fn lifecycle(&self, ev: &mut Events) -> Result<(), String> {
        let archived_end = ev.archived_end;
        let shared = &self.shared;
        let done = lifecycle::run(
            &mut ev.table,
            ev.cold.as_mut(),
            &self.settings.policy,
            &self.audit,
            |warm, cold| shared.publish(view_of(warm, cold, archived_end)),
        )
        .await?;
        if done != lifecycle::Done::default() {
            tracing::debug!(?done, "archive lifecycle pass");
        }
        if compact::run(
            &mut ev.table,
            &self.settings.compact,
            &events::data_schema(),
        )
        .await?
            > 0
        {
            shared.publish(ev.view());
        }
        Ok(())
    }

    /// The first log offset an unarchived record of the `enriched` topic names (`u64::MAX`:
    /// none; 0 while `enriched_events` is not open). Read after the readers' floor: a record
    /// appended since then names offsets at or past that floor.
    fn enriched_floor(&self) -> u64 {
        use std::sync::atomic::Ordering::Acquire;
        let Some(source) = &self.enriched else {
            return u64::MAX;
        };
        if !self.enriched_open.load(Acquire) {
            return 0;
        }
        let at = source.archived.load(Acquire);
        match source.reader.read(at, 1, 1) {
            Ok(records) => records
                .iter()
                .find(|r| r.header.base_offset >= at)
                .map_or(u64::MAX, |r| {
                    crate::topics::enriched::Record::decode(&r.payload).map_or(0, |r| r.from)
                }),
            Err(_) => 0,
        }
    }

    /// Deletes the log segments the archive holds (below `archived_end`, the mark committed in
    /// the table) that the pipeline has read and `log_retention_ms` has passed for.
    async fn retire(&self, archived_end: u64) -> Result<(), String> {
        let floor = (self.readers_floor)();
        let below = archived_end.min(floor).min(self.enriched_floor());
        let retention = i64::try_from(self.settings.log_retention.as_millis()).unwrap_or(i64::MAX);
        let before = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(retention);
        self.log
            .retire(below, before)
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting archived log segments: {e}"))
    }

    /// Refreshes the status and the lag gauge.
    fn report(&self, ev: &Events, log_end: u64) -> Result<(), String> {
        let lag = log_end.saturating_sub(ev.archived_end);
        metrics::gauge!("runnel_archive_lag_events", "table" => events::TABLE).set(lag as f64);
        metrics::gauge!("runnel_archive_archived_end", "table" => events::TABLE)
            .set(ev.archived_end as f64);
        let warm = figures(&ev.table, 1)?;
        self.table_status(|s| {
            warm.apply(s);
            s.archived_end = ev.archived_end;
            s.log_end = log_end;
            s.lag_events = lag;
            s.last_error = None;
        });
        if let Some(cold) = &ev.cold {
            let cold = figures(cold, 1)?;
            self.tier_status(1, |s| cold.apply(s));
        }
        Ok(())
    }
}

/// Stores `files` (of `events`' layout) in `table`, each with `PutMode::Create`: their add
/// actions, for one commit, and their bytes.
async fn store_files(
    table: &Table,
    files: &[events::DataFile],
    tags: Option<HashMap<String, Option<String>>>,
    now: i64,
) -> Result<(Vec<deltalake::kernel::Add>, u64), String> {
    let mut adds = Vec::with_capacity(files.len());
    let mut bytes = 0u64;
    for f in files {
        table.put_new(&f.path, f.bytes.clone()).await?;
        bytes += f.bytes.len() as u64;
        adds.push(deltalake::kernel::Add {
            tags: tags.clone(),
            ..table::new_add(
                &f.path,
                &[("event_type", &f.event_type), ("date", &f.date)],
                f.bytes.len(),
                &f.stats,
                now,
            )
        });
    }
    Ok((adds, bytes))
}

/// A table's figures for its status.
struct Figures {
    version: i64,
    files: u64,
    bytes: u64,
    rows: u64,
    oldest: Option<String>,
    newest: Option<String>,
}

impl Figures {
    fn apply(self, s: &mut TableStatus) {
        s.version = Some(self.version);
        s.files = self.files;
        s.bytes = self.bytes;
        s.rows = self.rows;
        s.oldest_date = self.oldest;
        s.newest_date = self.newest;
    }
}

/// A table's figures; its date is partition column `date_column`.
fn figures(t: &Table, date_column: usize) -> Result<Figures, String> {
    let files = t.files()?;
    let dates = files
        .iter()
        .filter_map(|f| f.partition.get(date_column).cloned().flatten());
    let (oldest, newest) = dates.fold((None::<String>, None::<String>), |(lo, hi), d| {
        (
            Some(lo.map_or(d.clone(), |l| l.min(d.clone()))),
            Some(hi.map_or(d.clone(), |h| h.max(d))),
        )
    });
    Ok(Figures {
        version: t.version(),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size.max(0) as u64).sum(),
        rows: files.iter().filter_map(|f| f.rows).map(|r| r as u64).sum(),
        oldest,
        newest,
    })
}
