//! Replays of an enricher into `enriched_events`: one commit replaces the rows an earlier
//! chain made with the rows of the chain as it is now.
//!
//! The backfill thread ([`crate::backfill`]) runs the chain over the history (the archive's
//! `events` and the log) below `end`, the table's split once it holds a row of the replayed
//! version, and stages the output as data files named `replay-ID-RUN-…` in the table's
//! partition folders (`PutMode::Create`; the orphan sweep leaves the running replay's alone,
//! [`super::Shared::staging`]). It hands them to the archiver as a [`Request`], which commits,
//! in one Delta commit with the transaction `runnel.archive.enriched.replay` = ID:
//! - the staged files, added, tagged with the chain;
//! - every file holding a row at a source offset below `end` with an event time at or after
//!   the replay's start, removed; the rows of such a file outside that range are written to a
//!   new file (`kept-ID-…`, with the file's own chain) and added.
//!
//! A reader sees the table before the replay or after it, never a mix. A crash before the
//! commit leaves the staged files uncommitted (swept at the next open) and the replay starts
//! over; after it, the replay finds its transaction and ends. Staged and kept files are not
//! compacted again (compaction merges `part-` files).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use deltalake::kernel::{Action, Add, Remove, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use serde_json::Value;

use super::events::{self, stat_time};
use super::table::{self, FileInfo, Table};

/// The transaction whose version is the last replay committed.
pub const APP_ID: &str = "runnel.archive.enriched.replay";

/// A staged data file of a replay.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Under the table's folder.
    pub path: String,
    /// Its partition.
    pub event_type: String,
    /// Its partition.
    pub date: String,
    /// Bytes.
    pub size: usize,
    /// Its Delta statistics.
    pub stats: String,
}

/// A replay's rows, staged, for the archiver to commit.
#[derive(Debug)]
pub struct Request {
    /// The transaction version (greater than any earlier replay's).
    pub id: u64,
    /// Rows with an event time at or after this are replaced (`i64::MIN`: every row).
    pub from_ms: i64,
    /// Rows at source offsets below this are replaced.
    pub end: u64,
    /// The chain that made the staged rows (JSON, as the tag).
    pub chain: String,
    /// The staged files.
    pub files: Vec<Staged>,
    /// Where the archiver answers: the committed version.
    pub reply: std::sync::mpsc::Sender<Result<i64, String>>,
}

/// The name prefix of a replay run's staged files.
pub fn staging_prefix(id: u64, run: u32) -> String {
    format!("replay-{id:020}-{run:08x}-")
}

/// Whether `path` names a file staged by the run whose prefix is `prefix`.
pub fn is_staged_by(path: &str, prefix: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(prefix))
}

/// A file's least and greatest `offset` and `timestamp` (ms), from its statistics.
fn bounds(f: &FileInfo) -> Option<((i64, i64), (i64, i64))> {
    let s: Value = serde_json::from_str(f.stats.as_deref()?).ok()?;
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str()?)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    Some((
        (
            s["minValues"]["offset"].as_i64()?,
            s["maxValues"]["offset"].as_i64()?,
        ),
        (
            time(&s["minValues"]["timestamp"])?,
            time(&s["maxValues"]["timestamp"])?,
        ),
    ))
}

/// The Delta statistics of `batch` (the columns of `events`).
fn stats_of(batch: &RecordBatch) -> Result<String, String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let offsets = col("offset")?.as_primitive::<Int64Type>();
    let range = |name: &str| -> Result<(i64, i64), String> {
        let c = col(name)?.as_primitive::<TimestampMicrosecondType>();
        let lo = arrow_arith::aggregate::min(c).unwrap_or_default();
        let hi = arrow_arith::aggregate::max(c).unwrap_or_default();
        Ok((lo.div_euclid(1000), hi.div_euclid(1000)))
    };
    let (ts, rx) = (range("timestamp")?, range("received_at")?);
    let mut nulls = serde_json::Map::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        nulls.insert(f.name().clone(), c.null_count().into());
    }
    Ok(serde_json::json!({
        "numRecords": batch.num_rows(),
        "minValues": {
            "offset": arrow_arith::aggregate::min(offsets).unwrap_or_default(),
            "timestamp": stat_time(ts.0),
            "received_at": stat_time(rx.0),
        },
        "maxValues": {
            "offset": arrow_arith::aggregate::max(offsets).unwrap_or_default(),
            "timestamp": stat_time(ts.1),
            "received_at": stat_time(rx.1),
        },
        "nullCount": nulls,
    })
    .to_string())
}

/// The rows of the file at `path` outside the replaced range, and its key-value metadata.
fn kept_rows(
    bytes: bytes::Bytes,
    path: &str,
    req: &Request,
) -> Result<(Option<RecordBatch>, usize, Vec<KeyValue>), String> {
    let schema = events::data_schema();
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("reading {path}: {e}"))?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let reader = builder
        .build()
        .map_err(|e| format!("reading {path}: {e}"))?;
    let (mut kept, mut rows) = (Vec::new(), 0usize);
    for batch in reader {
        let batch = batch.map_err(|e| format!("reading {path}: {e}"))?;
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| format!("{path} does not hold the table's columns: {e}"))?;
        rows += batch.num_rows();
        let offsets = batch.column(0).as_primitive::<Int64Type>();
        let times = batch
            .column_by_name("timestamp")
            .ok_or("no column timestamp")?
            .as_primitive::<TimestampMicrosecondType>();
        let keep: arrow_array::BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let replaced = (offsets.value(i) as u64) < req.end
                    && times.value(i).div_euclid(1000) >= req.from_ms;
                Some(!replaced)
            })
            .collect();
        let b = arrow_select::filter::filter_record_batch(&batch, &keep)
            .map_err(|e| format!("filtering {path}: {e}"))?;
        if b.num_rows() > 0 {
            kept.push(b);
        }
    }
    let kept = match kept.len() {
        0 => None,
        _ => Some(
            arrow_select::concat::concat_batches(&schema, &kept)
                .map_err(|e| format!("joining the rows of {path}: {e}"))?,
        ),
    };
    Ok((kept, rows, metadata))
}

/// Commits `req` to `enriched_events` (see the module doc); the committed version, or the
/// table's when the replay was committed before.
pub async fn commit(t: &mut Table, req: &Request) -> Result<i64, String> {
    if t.txn_version(APP_ID)
        .await?
        .is_some_and(|v| v >= req.id as i64)
    {
        return Ok(t.version());
    }
    for f in &req.files {
        // A staged file the sweep took would be a committed file missing.
        t.get(&f.path)
            .await
            .map_err(|e| format!("the replay's staged file is gone: {e}"))?;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let schema = events::data_schema();
    let mut actions = Vec::new();
    let (mut removed, mut kept_files) = (0u64, 0u64);
    for (i, f) in t.files()?.into_iter().enumerate() {
        let whole = match bounds(&f) {
            Some(((lo, hi), (t0, t1))) => {
                if lo as u64 >= req.end || t1 < req.from_ms {
                    continue;
                }
                (hi as u64) < req.end && t0 >= req.from_ms
            }
            None => false,
        };
        if !whole {
            let bytes = t.get(&f.path).await?;
            let (kept, rows, metadata) = kept_rows(bytes, &f.path, req)?;
            if kept.as_ref().map(RecordBatch::num_rows) == Some(rows) {
                continue;
            }
            if let Some(kept) = kept {
                let folder = f.path.rsplit_once('/').map_or("", |(d, _)| d);
                let path = format!("{folder}/kept-{:020}-{i:06}.zstd.parquet", req.id);
                let bytes = events::encode_with(&kept, &schema, metadata)?;
                let size = bytes.len() as i64;
                t.put_new(&path, bytes).await?;
                actions.push(Action::Add(Add {
                    path,
                    partition_values: f.remove.partition_values.clone().unwrap_or_default(),
                    size,
                    modification_time: now,
                    data_change: true,
                    stats: Some(stats_of(&kept)?),
                    tags: f.tags.clone(),
                    ..Default::default()
                }));
                kept_files += 1;
            }
        }
        actions.push(Action::Remove(Remove {
            deletion_timestamp: Some(now),
            ..f.remove.clone()
        }));
        removed += 1;
    }
    let tags = std::collections::HashMap::from([(
        super::enriched::CHAIN_KEY.to_string(),
        Some(req.chain.clone()),
    )]);
    for f in &req.files {
        actions.push(Action::Add(Add {
            tags: Some(tags.clone()),
            ..table::new_add(
                &f.path,
                &[("event_type", &f.event_type), ("date", &f.date)],
                f.size,
                &f.stats,
                now,
            )
        }));
    }
    let predicate = if req.from_ms == i64::MIN {
        format!("offset < {}", req.end)
    } else {
        format!(
            "offset < {} AND timestamp >= '{}'",
            req.end,
            stat_time(req.from_ms)
        )
    };
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(
            events::PARTITION_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .collect(),
        ),
        predicate: Some(predicate),
    };
    let version = t
        .commit(
            actions,
            vec![Transaction::new(APP_ID, req.id as i64)],
            operation,
        )
        .await?;
    tracing::info!(
        table = super::enriched::TABLE,
        version,
        id = req.id,
        end = req.end,
        staged = req.files.len(),
        removed,
        kept_files,
        "committed an enricher's replay"
    );
    Ok(version)
}

/// Stores a staged file through the view's table (the backfill thread has no [`Table`]).
pub async fn stage(
    table: &deltalake::DeltaTable,
    path: &str,
    bytes: bytes::Bytes,
) -> Result<(), String> {
    let store: Arc<dyn object_store::ObjectStore> = table.log_store().object_store(None);
    super::table::put_create(store.as_ref(), &object_store::path::Path::from(path), bytes)
        .await
        .map_err(|e| format!("staging {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::archive::events::Part;
    use crate::archive::fault::faulty_memory;

    const T: i64 = 1_795_564_800_000;
    const DAY: i32 = (T / 86_400_000) as i32;

    fn event(n: u64, ts: i64) -> runnel_event::Event {
        runnel_event::Event {
            event_id: format!("e-{n}"),
            event_type: "page.view".into(),
            timestamp_ms: ts,
            received_at_ms: ts,
            schema_version: 1,
            user_id: None,
            session_id: None,
            device_id: None,
            platform: None,
            app_version: None,
            properties: Some(format!(r#"{{"n":{n}}}"#)),
        }
    }

    /// A data file of `rows` (offset, event time) made by `chain`.
    fn file(rows: &[(u64, i64)], chain: &str) -> events::DataFile {
        let mut part = Part::new();
        for &(o, ts) in rows {
            part.push(&event(o, ts), o, "agent", "host");
        }
        let meta = vec![KeyValue::new(
            super::super::enriched::CHAIN_KEY.to_string(),
            chain.to_string(),
        )];
        part.finish_with(&events::data_schema(), "page.view".into(), DAY, meta)
            .unwrap()
    }

    fn tags(chain: &str) -> HashMap<String, Option<String>> {
        HashMap::from([(
            super::super::enriched::CHAIN_KEY.to_string(),
            Some(chain.to_string()),
        )])
    }

    async fn open(loc: &crate::archive::store::Location) -> Table {
        Table::open(
            loc,
            super::super::enriched::TABLE,
            events::table_columns(),
            &events::PARTITION_COLUMNS,
        )
        .await
        .unwrap()
    }

    /// Rows per file: (offsets, chain tag).
    async fn held(t: &Table) -> Vec<(Vec<i64>, String)> {
        let mut out = Vec::new();
        for f in t.files().unwrap() {
            let bytes = t.get(&f.path).await.unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            let mut offsets = Vec::new();
            for b in reader {
                let b = b.unwrap();
                offsets.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
            }
            offsets.sort();
            let chain = f.tags.unwrap()[super::super::enriched::CHAIN_KEY]
                .clone()
                .unwrap();
            out.push((offsets, chain));
        }
        out.sort();
        out
    }

    /// The replay's commit removes the files of its range, keeps in a new file (with its
    /// chain) the rows of a straddling file outside the range, leaves files past `end`
    /// alone, adds the staged files; a failed commit changes nothing, and a commit again
    /// after success adds nothing. The sweep keeps the running replay's staged files.
    #[tokio::test]
    async fn a_replay_replaces_its_range_once_and_keeps_the_rest() {
        let (faulty, loc) = faulty_memory();
        let mut t = open(&loc).await;
        let (old, new) = ("[\"old\"]", "[\"new\"]");
        // 0..10 straddles T (even offsets before it), 10..20 after it, 20..30 past `end`.
        let a: Vec<(u64, i64)> = (0..10)
            .map(|o| (o, if o % 2 == 0 { T - 1 } else { T + 1 }))
            .collect();
        let b: Vec<(u64, i64)> = (10..20).map(|o| (o, T + o as i64)).collect();
        let c: Vec<(u64, i64)> = (20..30).map(|o| (o, T + o as i64)).collect();
        for (rows, chain) in [(&a, old), (&b, old), (&c, new)] {
            let f = file(rows, chain);
            t.put_new(&f.path, f.bytes.clone()).await.unwrap();
            let add = Add {
                tags: Some(tags(chain)),
                ..table::new_add(
                    &f.path,
                    &[("event_type", &f.event_type), ("date", &f.date)],
                    f.bytes.len(),
                    &f.stats,
                    0,
                )
            };
            t.append(vec![add], Transaction::new("test", rows[0].0 as i64))
                .await
                .unwrap();
        }
        // The replay's rows: the odd offsets of 0..10 and all of 10..20, as the new chain
        // made them.
        let replayed: Vec<(u64, i64)> = a
            .iter()
            .chain(&b)
            .filter(|(_, ts)| *ts >= T)
            .copied()
            .collect();
        let s = file(&replayed, new);
        let prefix = staging_prefix(7, 1);
        let path = s.path.replacen("/part-", &format!("/{prefix}"), 1);
        stage(t.delta(), &path, s.bytes.clone()).await.unwrap();
        let kept = t
            .sweep_orphans_except(|p| is_staged_by(p, &prefix))
            .await
            .unwrap();
        assert_eq!(kept, 0, "the running replay's staged file is kept");
        let (tx, _rx) = std::sync::mpsc::channel();
        let req = Request {
            id: 7,
            from_ms: T,
            end: 20,
            chain: new.into(),
            files: vec![Staged {
                path,
                event_type: s.event_type.clone(),
                date: s.date.clone(),
                size: s.bytes.len(),
                stats: s.stats.clone(),
            }],
            reply: tx,
        };
        let before = held(&t).await;
        faulty.fail_commits.store(true, Ordering::SeqCst);
        let e = commit(&mut t, &req).await.unwrap_err();
        assert!(e.contains("injected"), "{e}");
        faulty.fail_commits.store(false, Ordering::SeqCst);
        let mut t = open(&loc).await;
        assert_eq!(held(&t).await, before, "a failed commit changes nothing");

        let version = commit(&mut t, &req).await.unwrap();
        let odd: Vec<i64> = (0..10).filter(|o| o % 2 == 1).collect();
        let even: Vec<i64> = (0..10).filter(|o| o % 2 == 0).collect();
        let mut want = vec![
            (even, old.to_string()),
            ((20..30).collect(), new.to_string()),
            (odd.into_iter().chain(10..20).collect(), new.to_string()),
        ];
        want.sort();
        assert_eq!(held(&t).await, want);
        assert_eq!(t.txn_version(APP_ID).await.unwrap(), Some(7));
        assert_eq!(
            commit(&mut t, &req).await.unwrap(),
            version,
            "committed once"
        );
        assert_eq!(t.version(), version);
    }
}
