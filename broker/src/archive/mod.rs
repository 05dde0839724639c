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
//! (a segment need not fill first): the archive lags the log by about that interval.
//!
//! ## The hot tier: mark, then delete
//! The commit's transaction version is the mark. After a pass has caught up, the archiver asks
//! the log writer to delete the sealed segments wholly below it, below the pipeline's committed
//! offset too ([`ReadersFloor`]), whose newest record is older than `log_retention_ms`. A
//! segment the archive lacks is never deleted: with the archiver failing or off the log only
//! grows, bounded by the disk-full policy.
//!
//! May call: [`crate::log`] (reads).

pub mod events;
#[cfg(test)]
pub mod fault;
pub mod store;
pub mod table;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::kernel::{Add, Transaction};
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
    /// How long a sealed log segment the archive holds is kept (`log_retention_ms`).
    pub log_retention: Duration,
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
}

/// A committed version of the `events` table and the first offset it lacks: a query reads
/// the table below that offset and the log from it on.
#[derive(Debug, Clone)]
pub struct View {
    /// The table at that version.
    pub table: deltalake::DeltaTable,
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
}

/// Starts the archiver task: it runs until `shutdown` turns true.
pub fn start(
    log: BrokerLog,
    readers_floor: ReadersFloor,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<Shared>, tokio::task::JoinHandle<()>), String> {
    let location = store::open(&settings.url, &settings.s3)?;
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            url: location.url.to_string(),
            interval_ms: settings.interval.as_millis() as u64,
            tables: vec![TableStatus {
                name: events::TABLE.into(),
                url: location.table_url(events::TABLE).to_string(),
                ..Default::default()
            }],
        }),
        view: Mutex::new(None),
    });
    let archiver = Archiver {
        log,
        readers_floor,
        settings,
        location,
        shared: shared.clone(),
    };
    Ok((shared, tokio::spawn(archiver.run(shutdown))))
}

struct Archiver {
    log: BrokerLog,
    readers_floor: ReadersFloor,
    settings: Settings,
    location: store::Location,
    shared: Arc<Shared>,
}

/// The opened `events` table and the first offset it lacks.
struct Events {
    table: Table,
    archived_end: u64,
}

impl Archiver {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events: Option<Events> = None;
        loop {
            let failed = match self.pass(&mut events, &shutdown).await {
                Ok(()) => false,
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

    fn table_status(&self, f: impl FnOnce(&mut TableStatus)) {
        let mut s = self.shared.status.lock().expect("lock poisoned");
        f(&mut s.tables[0]);
    }

    /// Opens the table if needed, then archives everything durable.
    async fn pass(
        &self,
        events: &mut Option<Events>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        if events.is_none() {
            let table = Table::open(
                &self.location,
                events::TABLE,
                events::table_columns(),
                &events::PARTITION_COLUMNS,
            )
            .await?;
            let archived_end = table.txn_version(events::APP_ID).await?.unwrap_or(0);
            let archived_end = u64::try_from(archived_end)
                .map_err(|_| format!("transaction version {archived_end} is negative"))?;
            let swept = table.sweep_orphans().await?;
            metrics::counter!("runnel_archive_orphans_swept_total", "table" => events::TABLE)
                .increment(swept);
            self.table_status(|s| s.orphans_swept += swept);
            tracing::info!(table = events::TABLE, url = %table.url(), version = table.version(), archived_end, swept, "archive table opened");
            self.shared.publish(View {
                table: table.delta().clone(),
                archived_end,
            });
            *events = Some(Events {
                table,
                archived_end,
            });
        }
        let ev = events.as_mut().expect("opened above");
        loop {
            let end = self.log.durable_end();
            self.report(ev, end)?;
            if ev.archived_end >= end || *shutdown.borrow() {
                return self.retire(ev.archived_end).await;
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
        let mut adds = Vec::with_capacity(range.files.len());
        let mut bytes = 0u64;
        for f in &range.files {
            ev.table.put_new(&f.path, f.bytes.clone()).await?;
            bytes += f.bytes.len() as u64;
            adds.push(Add {
                path: f.path.clone(),
                partition_values: [
                    ("event_type".to_string(), Some(f.event_type.clone())),
                    ("date".to_string(), Some(f.date.clone())),
                ]
                .into_iter()
                .collect(),
                size: f.bytes.len() as i64,
                modification_time: now,
                data_change: true,
                stats: Some(f.stats.clone()),
                ..Default::default()
            });
        }
        let version = ev
            .table
            .append(adds, Transaction::new(events::APP_ID, range.next as i64))
            .await?;
        ev.archived_end = range.next;
        self.shared.publish(View {
            table: ev.table.delta().clone(),
            archived_end: range.next,
        });
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

    /// Deletes the log segments the archive holds (below `archived_end`, the mark committed in
    /// the table) that the pipeline has read and `log_retention_ms` has passed for.
    async fn retire(&self, archived_end: u64) -> Result<(), String> {
        let below = archived_end.min((self.readers_floor)());
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
        let files = ev.table.files()?;
        let lag = log_end.saturating_sub(ev.archived_end);
        metrics::gauge!("runnel_archive_lag_events", "table" => events::TABLE).set(lag as f64);
        metrics::gauge!("runnel_archive_archived_end", "table" => events::TABLE)
            .set(ev.archived_end as f64);
        let dates = files
            .iter()
            .filter_map(|f| f.partition.get(1).cloned().flatten());
        let (oldest, newest) = dates.fold((None::<String>, None::<String>), |(lo, hi), d| {
            (
                Some(lo.map_or(d.clone(), |l| l.min(d.clone()))),
                Some(hi.map_or(d.clone(), |h| h.max(d))),
            )
        });
        self.table_status(|s| {
            s.version = Some(ev.table.version());
            s.files = files.len() as u64;
            s.bytes = files.iter().map(|f| f.size.max(0) as u64).sum();
            s.rows = files.iter().filter_map(|f| f.rows).map(|r| r as u64).sum();
            s.oldest_date = oldest;
            s.newest_date = newest;
            s.archived_end = ev.archived_end;
            s.log_end = log_end;
            s.lag_events = lag;
            s.last_error = None;
        });
        Ok(())
    }
}
