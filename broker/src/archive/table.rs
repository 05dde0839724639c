//! One Delta table of the archive, written by this broker alone: its files are stored with
//! `PutMode::Create` and committed with an application transaction, files no commit
//! references are swept.

use std::collections::HashSet;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove, StructField, Transaction};
use deltalake::logstore::LogStoreRef;
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::store::Location;

/// An archive table's error: what was being done, and why it failed.
pub type Error = String;

fn err(what: &str) -> impl Fn(deltalake::DeltaTableError) -> Error + '_ {
    move |e| format!("{what}: {e}")
}

/// One active data file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Path under the table's folder.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// Rows, from its statistics.
    pub rows: Option<usize>,
    /// Its partition values, in the table's partition column order.
    pub partition: Vec<Option<String>>,
    /// Its Delta statistics (JSON).
    pub stats: Option<String>,
    /// Its tags (`enriched_events` names the chain that made it).
    pub tags: Option<std::collections::HashMap<String, Option<String>>>,
    /// The action that removes it.
    pub remove: Remove,
}

/// The add of a new data file of `size` bytes at `path` in `partition` (column, value), with
/// its Delta statistics.
pub fn new_add(path: &str, partition: &[(&str, &str)], size: usize, stats: &str, now: i64) -> Add {
    Add {
        path: path.to_string(),
        partition_values: partition
            .iter()
            .map(|(c, v)| (c.to_string(), Some(v.to_string())))
            .collect(),
        size: size as i64,
        modification_time: now,
        data_change: true,
        stats: Some(stats.to_string()),
        ..Default::default()
    }
}

impl FileInfo {
    /// An add of the same file (same path, partition, size and statistics) in another table.
    pub fn to_add(&self, modification_time: i64) -> Add {
        Add {
            path: self.path.clone(),
            partition_values: self.remove.partition_values.clone().unwrap_or_default(),
            size: self.size,
            modification_time,
            data_change: true,
            stats: self.stats.clone(),
            tags: self.tags.clone(),
            ..Default::default()
        }
    }
}

/// A table, opened (created at first use).
pub struct Table {
    name: String,
    table: DeltaTable,
    partition_columns: Vec<String>,
}

impl Table {
    /// A table of `events`' partitions at the version `table` holds (a committed view, read
    /// outside the archiver).
    pub fn from_events_view(table: DeltaTable, name: &str) -> Self {
        Self {
            name: name.to_string(),
            table,
            partition_columns: super::events::PARTITION_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }
    }

    /// Opens table `name` under `location`, creating it with `columns` partitioned by
    /// `partition_columns` when it does not exist.
    pub async fn open(
        location: &Location,
        name: &str,
        columns: Vec<StructField>,
        partition_columns: &[&str],
    ) -> Result<Self, Error> {
        let url = location.table_url(name);
        let table = DeltaTableBuilder::from_url(url.clone())
            .map_err(err("opening the table"))?
            .with_storage_backend(location.root.clone(), url)
            .build()
            .map_err(err("opening the table"))?;
        let table = CreateBuilder::new()
            .with_log_store(table.log_store())
            .with_table_name(name)
            .with_columns(columns)
            .with_partition_columns(partition_columns.iter().copied())
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(err("opening or creating the table"))?;
        Ok(Self {
            name: name.to_string(),
            table,
            partition_columns: partition_columns.iter().map(|c| c.to_string()).collect(),
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of its folder.
    pub fn url(&self) -> String {
        self.table.table_url().to_string()
    }

    /// The Delta table at its current version.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    fn log_store(&self) -> LogStoreRef {
        self.table.log_store()
    }

    /// The store with `/` at the table's folder.
    fn store(&self) -> std::sync::Arc<dyn ObjectStore> {
        self.log_store().object_store(None)
    }

    /// The current version.
    pub fn version(&self) -> i64 {
        self.table.version().map_or(-1, |v| v as i64)
    }

    /// The transaction version last committed under `app_id`.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>, Error> {
        let state = self.table.snapshot().map_err(err("reading the table"))?;
        state
            .transaction_version(self.log_store().as_ref(), app_id)
            .await
            .map_err(err("reading the table's transactions"))
    }

    /// The active data files.
    pub fn files(&self) -> Result<Vec<FileInfo>, Error> {
        let state = self.table.snapshot().map_err(err("reading the table"))?;
        Ok(state
            .log_data()
            .iter()
            .map(|f| {
                let values = f.partition_values_map();
                FileInfo {
                    path: f.path().into_owned(),
                    size: f.size(),
                    rows: f.num_records(),
                    partition: self
                        .partition_columns
                        .iter()
                        .map(|c| values.get(c).cloned().flatten())
                        .collect(),
                    stats: f.stats(),
                    // The view has no other reader of a file's tags.
                    #[allow(deprecated)]
                    tags: f.add_action().tags,
                    remove: f.remove_action(true),
                }
            })
            .collect())
    }

    /// Stores a data file at `path` (under the table's folder), refusing to replace one. A file
    /// already there that no commit references (left by an attempt that crashed before its
    /// commit) is replaced; one a commit references is an error.
    pub async fn put_new(&self, path: &str, bytes: bytes::Bytes) -> Result<(), Error> {
        let store = self.store();
        let at = Path::from(path);
        match put_create(store.as_ref(), &at, bytes.clone()).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.files()?.iter().any(|f| f.path == path) {
                    return Err(format!("data file {path} is already committed"));
                }
                store
                    .delete(&at)
                    .await
                    .map_err(|e| format!("removing the uncommitted {path}: {e}"))?;
                put_create(store.as_ref(), &at, bytes)
                    .await
                    .map_err(|e| format!("storing {path}: {e}"))
            }
            Err(e) => Err(format!("storing {path}: {e}")),
        }
    }

    /// Commits `actions` (adds, removes), with the application transaction `(app_id, version)`
    /// when given in the same commit: a reader of the transaction knows exactly what was
    /// committed.
    pub async fn commit(
        &mut self,
        actions: Vec<Action>,
        txns: Vec<Transaction>,
        operation: DeltaOperation,
    ) -> Result<i64, Error> {
        let version = {
            let state = self.table.snapshot().map_err(err("reading the table"))?;
            let mut props = CommitProperties::default();
            for txn in txns {
                props = props.with_application_transaction(txn);
            }
            CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(state), self.log_store(), operation)
                .await
                .map_err(err("committing"))?
                .version()
        };
        self.table
            .update_incremental(Some(version))
            .await
            .map_err(err("reading the table after a commit"))?;
        Ok(version as i64)
    }

    /// An append of `adds` in one commit with the transaction.
    pub async fn append(&mut self, adds: Vec<Add>, txn: Transaction) -> Result<i64, Error> {
        self.append_with(adds, vec![txn]).await
    }

    /// An append of `adds` in one commit with every transaction of `txns`.
    pub async fn append_with(
        &mut self,
        adds: Vec<Add>,
        txns: Vec<Transaction>,
    ) -> Result<i64, Error> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(self.partition_columns.clone()),
            predicate: None,
        };
        self.commit(adds.into_iter().map(Action::Add).collect(), txns, operation)
            .await
    }

    /// Adds files stored with [`Table::put_new`], without a transaction (a move's copy).
    pub async fn add(&mut self, adds: Vec<Add>) -> Result<i64, Error> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(self.partition_columns.clone()),
            predicate: None,
        };
        self.commit(
            adds.into_iter().map(Action::Add).collect(),
            Vec::new(),
            operation,
        )
        .await
    }

    /// Removes `files` in one commit, described by `predicate` (what was removed, in SQL).
    /// Their data stay in the store until [`Table::vacuum`].
    pub async fn remove(&mut self, files: &[FileInfo], predicate: String) -> Result<i64, Error> {
        let now = chrono::Utc::now().timestamp_millis();
        let actions = files
            .iter()
            .map(|f| {
                Action::Remove(Remove {
                    deletion_timestamp: Some(now),
                    ..f.remove.clone()
                })
            })
            .collect();
        let operation = DeltaOperation::Delete {
            predicate: Some(predicate),
        };
        self.commit(actions, Vec::new(), operation).await
    }

    /// Reads a data file.
    pub async fn get(&self, path: &str) -> Result<bytes::Bytes, Error> {
        let store = self.store();
        let got = store
            .get(&Path::from(path))
            .await
            .map_err(|e| format!("reading {path}: {e}"))?;
        got.bytes()
            .await
            .map_err(|e| format!("reading {path}: {e}"))
    }

    /// Deletes the data of files removed before `removed_before_ms` that no active file
    /// shares a path with. Returns how many it deleted. Older versions that still name them
    /// can no longer be read (no time travel past a removal this old).
    pub async fn vacuum(&self, removed_before_ms: i64) -> Result<u64, Error> {
        let active: HashSet<String> = self.files()?.into_iter().map(|f| f.path).collect();
        let state = self.table.snapshot().map_err(err("reading the table"))?;
        let log_store = self.log_store();
        let doomed: Vec<String> = state
            .all_tombstones(log_store.as_ref())
            .try_filter_map(|t| {
                let old = t.deletion_timestamp().unwrap_or(0) < removed_before_ms;
                let path = t.path().into_owned();
                futures::future::ready(Ok((old && !active.contains(&path)).then_some(path)))
            })
            .try_collect()
            .await
            .map_err(err("reading the table's removed files"))?;
        let store = self.store();
        let mut deleted = 0;
        for p in doomed {
            match store.delete(&Path::from(p.as_str())).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("deleting the removed {p}: {e}")),
            }
        }
        Ok(deleted)
    }

    /// Deletes the data files that no version references (neither an active file nor a
    /// removed one still kept for older versions): files stored by an attempt that did not
    /// commit. Returns how many it deleted.
    pub async fn sweep_orphans(&self) -> Result<u64, Error> {
        self.sweep_orphans_except(|_| false).await
    }

    /// [`Self::sweep_orphans`], keeping the unreferenced files `keep` names (a replay's
    /// staged files, not committed yet).
    pub async fn sweep_orphans_except(&self, keep: impl Fn(&str) -> bool) -> Result<u64, Error> {
        let mut referenced: HashSet<String> = self.files()?.into_iter().map(|f| f.path).collect();
        let state = self.table.snapshot().map_err(err("reading the table"))?;
        let log_store = self.log_store();
        let tombstones: Vec<String> = state
            .all_tombstones(log_store.as_ref())
            .map_ok(|t| t.path().into_owned())
            .try_collect()
            .await
            .map_err(err("reading the table's removed files"))?;
        referenced.extend(tombstones);
        let store = self.store();
        let mut listed = store.list(None);
        let mut orphans = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| format!("listing the table's files: {e}"))?;
            let path = meta.location.as_ref();
            if path.starts_with("_delta_log/") || referenced.contains(path) || keep(path) {
                continue;
            }
            orphans.push(meta.location);
        }
        for p in &orphans {
            store
                .delete(p)
                .await
                .map_err(|e| format!("deleting the orphan {p}: {e}"))?;
            tracing::info!(table = %self.name, path = %p, "deleted an archive file no commit references");
        }
        Ok(orphans.len() as u64)
    }
}

/// Stores `bytes` at `path` with `PutMode::Create`: refused (`AlreadyExists`) when an object is
/// there, so no file is ever overwritten.
pub async fn put_create(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
) -> object_store::Result<()> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(path, PutPayload::from(bytes), opts)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::archive::events;
    use crate::archive::fault::faulty_memory;

    fn add(path: &str, size: usize) -> Add {
        Add {
            path: path.into(),
            partition_values: [
                ("event_type".to_string(), Some("page.view".to_string())),
                ("date".to_string(), Some("2026-11-30".to_string())),
            ]
            .into_iter()
            .collect(),
            size: size as i64,
            data_change: true,
            ..Default::default()
        }
    }

    async fn open(loc: &Location) -> Table {
        crate::archive::open_events(loc).await.unwrap()
    }

    /// A commit that fails after its files were stored commits nothing: the transaction
    /// version stays, the files are swept at the next open, and the retry commits the range
    /// once.
    #[tokio::test]
    async fn a_failed_commit_leaves_orphans_that_are_swept_and_a_retry_commits_once() {
        let (faulty, loc) = faulty_memory();
        let mut t = open(&loc).await;
        assert_eq!(t.txn_version(events::APP_ID).await.unwrap(), None);
        let (a, b) = (
            "event_type=page.view/date=2026-11-30/part-0-9.zstd.parquet",
            "event_type=page.view/date=2026-11-30/part-10-19.zstd.parquet",
        );
        let data = bytes::Bytes::from_static(b"not really parquet");
        t.put_new(a, data.clone()).await.unwrap();
        t.put_new(b, data.clone()).await.unwrap();
        faulty.fail_commits.store(true, Ordering::SeqCst);
        let e = t
            .append(
                vec![add(a, data.len()), add(b, data.len())],
                Transaction::new(events::APP_ID, 20),
            )
            .await
            .unwrap_err();
        assert!(e.contains("injected"), "{e}");
        faulty.fail_commits.store(false, Ordering::SeqCst);

        // What the archiver does after an error: open again, read the transaction, sweep.
        let mut t = open(&loc).await;
        assert_eq!(t.txn_version(events::APP_ID).await.unwrap(), None);
        assert_eq!(t.sweep_orphans().await.unwrap(), 2);
        assert_eq!(t.sweep_orphans().await.unwrap(), 0);
        t.put_new(a, data.clone()).await.unwrap();
        t.append(
            vec![add(a, data.len())],
            Transaction::new(events::APP_ID, 10),
        )
        .await
        .unwrap();

        let t = open(&loc).await;
        assert_eq!(t.txn_version(events::APP_ID).await.unwrap(), Some(10));
        let files = t.files().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, a);
        assert_eq!(
            t.sweep_orphans().await.unwrap(),
            0,
            "a committed file is not an orphan"
        );
        let e = t.put_new(a, data).await.unwrap_err();
        assert!(e.contains("already committed"), "{e}");
    }

    /// A data file left by an attempt that crashed before its commit is replaced by the retry
    /// (same name: same range), and a failed data upload commits nothing.
    #[tokio::test]
    async fn an_uncommitted_file_is_replaced_and_a_failed_upload_commits_nothing() {
        let (faulty, loc) = faulty_memory();
        let mut t = open(&loc).await;
        let a = "event_type=page.view/date=2026-11-30/part-0-9.zstd.parquet";
        t.put_new(a, bytes::Bytes::from_static(b"first try"))
            .await
            .unwrap();
        t.put_new(a, bytes::Bytes::from_static(b"second try"))
            .await
            .unwrap();
        faulty.fail_data.store(true, Ordering::SeqCst);
        let b = "event_type=page.view/date=2026-11-30/part-10-19.zstd.parquet";
        assert!(t.put_new(b, bytes::Bytes::from_static(b"x")).await.is_err());
        faulty.fail_data.store(false, Ordering::SeqCst);
        t.append(vec![add(a, 10)], Transaction::new(events::APP_ID, 10))
            .await
            .unwrap();
        assert_eq!(t.files().unwrap().len(), 1);
        assert!(faulty.injected.load(Ordering::SeqCst) >= 1);
    }
}
