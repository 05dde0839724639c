//! The aggregate tables `agg_<name>`: each aggregate's final rows, one Delta table per
//! aggregate beside `events`, partitioned by `window_date` (the UTC day of `window_start`)
//! in Hive-style folders `window_date=…/`.
//!
//! Columns: `window_start` and `window_end` (`timestamp`), then the dimensions (`string`),
//! then the measures as the aggregate's SQL table has them (a count as `long`, other measures
//! as `double`, quantiles as `<measure>_p50`, `_p90`, `_p99`). Dimensions and measures are
//! nullable: rows kept from before a schema change lack the new ones.
//!
//! Rows come from the registry's outbox ([`crate::plugins::outbox`]): one file per day per
//! commit, named by the first and last batch it holds (`part-FIRST-LAST.zstd.parquet`), stored
//! with `PutMode::Create`, committed with the application transaction
//! `(runnel.archive.agg.<name>, last batch + 1)`. A replacement (a backfill's swap, a schema
//! change, a remove) is one commit that removes the files from its day on and adds the new
//! rows, with the new schema when it changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::DeltaTable;
use deltalake::kernel::{
    Action, DataType as DeltaType, MetadataExt, PrimitiveType, Remove, StructField, StructType,
    Transaction,
};
use deltalake::protocol::{DeltaOperation, SaveMode};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::events::{date_of, encode, stat_time};
use super::table::Table;
use crate::plugins::{AggregateMeta, FinalRow, outbox::Pending};

/// The table of aggregate `name`.
pub fn table_name(name: &str) -> String {
    format!("agg_{name}")
}

/// The Delta application id whose transaction version is the first outbox batch of `name`
/// not committed.
pub fn app_id(name: &str) -> String {
    format!("runnel.archive.agg.{name}")
}

/// Its partition column.
pub const PARTITION_COLUMNS: [&str; 1] = ["window_date"];

/// A column's kind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Time,
    Text,
    Long,
    Double,
}

/// The data columns of an aggregate (`None`: removed), in order, with the measure each
/// value comes from (`(index, quantile)`).
fn columns(meta: Option<&AggregateMeta>) -> Vec<(String, Kind)> {
    let mut out = vec![
        ("window_start".to_string(), Kind::Time),
        ("window_end".to_string(), Kind::Time),
    ];
    let Some(meta) = meta else { return out };
    out.extend(meta.dimensions.iter().map(|d| (d.clone(), Kind::Text)));
    for (name, kind) in &meta.measures {
        match kind.as_str() {
            "count" => out.push((name.clone(), Kind::Long)),
            "quantiles" => {
                for q in ["p50", "p90", "p99"] {
                    out.push((format!("{name}_{q}"), Kind::Double));
                }
            }
            _ => out.push((name.clone(), Kind::Double)),
        }
    }
    out
}

/// The Delta schema of the table: the data columns, then `window_date`.
pub fn table_columns(meta: Option<&AggregateMeta>) -> Vec<StructField> {
    let mut out: Vec<StructField> = columns(meta)
        .into_iter()
        .map(|(name, kind)| {
            let (t, nullable) = match kind {
                Kind::Time => (PrimitiveType::Timestamp, false),
                Kind::Text => (PrimitiveType::String, true),
                Kind::Long => (PrimitiveType::Long, true),
                Kind::Double => (PrimitiveType::Double, true),
            };
            StructField::new(name, DeltaType::Primitive(t), nullable)
        })
        .collect();
    out.push(StructField::new(
        PARTITION_COLUMNS[0],
        DeltaType::Primitive(PrimitiveType::Date),
        false,
    ));
    out
}

/// The Arrow schema of an aggregate's data files.
pub fn data_schema_of(meta: &AggregateMeta) -> SchemaRef {
    data_schema(&columns(Some(meta)))
}

fn data_schema(cols: &[(String, Kind)]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(
        cols.iter()
            .map(|(name, kind)| match kind {
                Kind::Time => Field::new(name, ts.clone(), false),
                Kind::Text => Field::new(name, DataType::Utf8, true),
                Kind::Long => Field::new(name, DataType::Int64, true),
                Kind::Double => Field::new(name, DataType::Float64, true),
            })
            .collect::<Vec<_>>(),
    ))
}

/// One data file, encoded, not yet stored.
#[derive(Debug)]
pub struct DataFile {
    /// `window_date` of its partition, `YYYY-MM-DD`.
    pub date: String,
    /// Its path under the table's folder.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// The Parquet bytes.
    pub bytes: bytes::Bytes,
    /// Delta's statistics (JSON).
    pub stats: String,
}

/// The rows of `batches` (numbered `first..=last`) as data files, one per day.
pub fn build(
    meta: &AggregateMeta,
    batches: &[(u64, Vec<FinalRow>)],
) -> Result<Vec<DataFile>, String> {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return Ok(Vec::new());
    };
    let name = |date: &str| {
        format!(
            "window_date={date}/part-{:020}-{:020}.zstd.parquet",
            first.0, last.0
        )
    };
    files(meta, batches.iter().flat_map(|(_, rows)| rows), name)
}

/// `rows` as data files, one per day, named by `name(date)`.
fn files<'a>(
    meta: &AggregateMeta,
    rows: impl Iterator<Item = &'a FinalRow>,
    name: impl Fn(&str) -> String,
) -> Result<Vec<DataFile>, String> {
    let mut days: BTreeMap<i64, Vec<&FinalRow>> = BTreeMap::new();
    for r in rows {
        days.entry(r.start.div_euclid(86_400_000))
            .or_default()
            .push(r);
    }
    let cols = columns(Some(meta));
    let schema = data_schema(&cols);
    let mut out = Vec::with_capacity(days.len());
    for (day, rows) in days {
        let batch = record_batch(meta, &cols, &schema, &rows)?;
        let date = date_of(day as i32);
        let (lo, hi) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
            (lo.min(r.start), hi.max(r.start))
        });
        let (end_lo, end_hi) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
            (lo.min(r.end), hi.max(r.end))
        });
        let stats = serde_json::json!({
            "numRecords": rows.len(),
            "minValues": {"window_start": stat_time(lo), "window_end": stat_time(end_lo)},
            "maxValues": {"window_start": stat_time(hi), "window_end": stat_time(end_hi)},
        })
        .to_string();
        out.push(DataFile {
            path: name(&date),
            date,
            rows: rows.len() as u64,
            bytes: encode(&batch, &schema)?,
            stats,
        });
    }
    Ok(out)
}

fn record_batch(
    meta: &AggregateMeta,
    cols: &[(String, Kind)],
    schema: &SchemaRef,
    rows: &[&FinalRow],
) -> Result<RecordBatch, String> {
    let parsed: Vec<(Vec<Option<String>>, Vec<serde_json::Value>)> = rows
        .iter()
        .map(|r| {
            let key: Vec<Option<String>> = serde_json::from_slice(&r.key).unwrap_or_default();
            let values: Vec<serde_json::Value> =
                serde_json::from_slice(&r.values).unwrap_or_default();
            (key, values)
        })
        .collect();
    let time = |f: fn(&FinalRow) -> i64| {
        let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for r in rows {
            b.append_value(f(r).saturating_mul(1000));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut arrays: Vec<ArrayRef> = vec![time(|r| r.start), time(|r| r.end)];
    for d in 0..meta.dimensions.len() {
        let mut b = StringBuilder::new();
        for (key, _) in &parsed {
            b.append_option(key.get(d).cloned().flatten());
        }
        arrays.push(Arc::new(b.finish()));
    }
    for (m, (_, kind)) in meta.measures.iter().enumerate() {
        let value = |vals: &Vec<serde_json::Value>| vals.get(m).cloned().unwrap_or_default();
        match kind.as_str() {
            "count" => {
                let mut b = Int64Builder::new();
                for (_, vals) in &parsed {
                    b.append_option(value(vals).as_i64());
                }
                arrays.push(Arc::new(b.finish()));
            }
            "quantiles" => {
                for q in 0..3 {
                    let mut b = Float64Builder::new();
                    for (_, vals) in &parsed {
                        b.append_option(value(vals).get(q).and_then(serde_json::Value::as_f64));
                    }
                    arrays.push(Arc::new(b.finish()));
                }
            }
            _ => {
                let mut b = Float64Builder::new();
                for (_, vals) in &parsed {
                    b.append_option(value(vals).as_f64());
                }
                arrays.push(Arc::new(b.finish()));
            }
        }
    }
    debug_assert_eq!(arrays.len(), cols.len());
    RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| format!("building a batch of aggregate rows: {e}"))
}

/// The rows of one data file whose window starts in `[from, to)`, read into `meta`'s columns
/// by name: a dimension the file lacks reads as `""`, a measure as null.
pub fn read_file(
    bytes: bytes::Bytes,
    meta: &AggregateMeta,
    from: i64,
    to: i64,
) -> Result<Vec<FinalRow>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| format!("reading an aggregate file: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("reading an aggregate file: {e}"))?;
        let time = |c: &str| {
            batch
                .column_by_name(c)
                .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>().cloned())
                .ok_or_else(|| format!("an aggregate file without {c}"))
        };
        let (starts, ends) = (time("window_start")?, time("window_end")?);
        let dims: Vec<Option<arrow_array::StringArray>> = meta
            .dimensions
            .iter()
            .map(|d| {
                batch
                    .column_by_name(d)
                    .and_then(|a| a.as_string_opt::<i32>().cloned())
            })
            .collect();
        let f64s = |c: &str| {
            batch
                .column_by_name(c)
                .and_then(|a| a.as_primitive_opt::<Float64Type>().cloned())
        };
        enum M {
            Count(Option<arrow_array::Int64Array>),
            Quantiles([Option<arrow_array::Float64Array>; 3]),
            Value(Option<arrow_array::Float64Array>),
        }
        let measures: Vec<M> = meta
            .measures
            .iter()
            .map(|(name, kind)| match kind.as_str() {
                "count" => M::Count(
                    batch
                        .column_by_name(name)
                        .and_then(|a| a.as_primitive_opt::<Int64Type>().cloned()),
                ),
                "quantiles" => {
                    M::Quantiles(["p50", "p90", "p99"].map(|q| f64s(&format!("{name}_{q}"))))
                }
                _ => M::Value(f64s(name)),
            })
            .collect();
        let f = |a: &Option<arrow_array::Float64Array>, i: usize| -> serde_json::Value {
            a.as_ref()
                .filter(|a| a.is_valid(i))
                .map_or(serde_json::Value::Null, |a| a.value(i).into())
        };
        for i in 0..batch.num_rows() {
            let start = starts.value(i).div_euclid(1000);
            if start < from || start >= to {
                continue;
            }
            let key: Vec<&str> = dims
                .iter()
                .map(|d| {
                    d.as_ref()
                        .filter(|d| d.is_valid(i))
                        .map_or("", |d| d.value(i))
                })
                .collect();
            let values: Vec<serde_json::Value> = measures
                .iter()
                .map(|m| match m {
                    M::Count(a) => a
                        .as_ref()
                        .filter(|a| a.is_valid(i))
                        .map_or(serde_json::Value::Null, |a| a.value(i).into()),
                    M::Quantiles(q) => q.iter().map(|a| f(a, i)).collect(),
                    M::Value(a) => f(a, i),
                })
                .collect();
            out.push(FinalRow {
                start,
                end: ends.value(i).div_euclid(1000),
                key: serde_json::to_vec(&key).expect("serializing to memory"),
                values: serde_json::to_vec(&values).expect("serializing to memory"),
            });
        }
    }
    Ok(out)
}

/// The rows of `table` whose window starts in `[from, to)`, in window then key order (as
/// `state.redb` keeps them), at most `limit`: the files of the days in range, read whole.
pub async fn read_rows(
    table: &DeltaTable,
    meta: &AggregateMeta,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<FinalRow>, String> {
    if from >= to {
        return Ok(Vec::new());
    }
    // The days in range (`None`: no bound that way).
    let day = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map(|d| d.format("%Y-%m-%d").to_string())
    };
    let (lo, hi) = (day(from), day(to.saturating_sub(1)));
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("reading an aggregate table: {e}"))?;
    let mut paths: Vec<(String, String)> = snapshot
        .log_data()
        .iter()
        .filter_map(|f| {
            let date = f
                .partition_values_map()
                .get(PARTITION_COLUMNS[0])
                .cloned()
                .flatten()?;
            let inside = lo.as_ref().is_none_or(|lo| date >= *lo)
                && hi.as_ref().is_none_or(|hi| date <= *hi);
            inside.then(|| (date, f.path().into_owned()))
        })
        .collect();
    paths.sort();
    let store = table.log_store().object_store(None);
    let mut rows = Vec::new();
    let mut last_date = None;
    for (date, path) in paths {
        // Whole days in order: once a day is read whole with `limit` rows, later ones are not
        // needed.
        if rows.len() >= limit && last_date.as_ref() != Some(&date) {
            break;
        }
        let bytes = store
            .get(&object_store::path::Path::from(path.as_str()))
            .await
            .map_err(|e| format!("reading {path}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("reading {path}: {e}"))?;
        let meta = meta.clone();
        rows.extend(
            tokio::task::spawn_blocking(move || read_file(bytes, &meta, from, to))
                .await
                .map_err(|e| format!("reading {path}: {e}"))??,
        );
        last_date = Some(date);
    }
    rows.sort_by(|a, b| (a.start, a.end, &a.key).cmp(&(b.start, b.end, &b.key)));
    rows.truncate(limit);
    Ok(rows)
}

/// Opens (creating) the table of `name` with `meta`'s columns.
pub async fn open(
    location: &super::store::Location,
    name: &str,
    meta: Option<&AggregateMeta>,
) -> Result<Table, String> {
    Table::open(
        location,
        &table_name(name),
        table_columns(meta),
        &PARTITION_COLUMNS,
    )
    .await
}

/// Commits `p`'s batches from the table's transaction version on: its rows, the replacement
/// it holds, the new schema when it changed. Returns the first batch not committed (the
/// batches below it may be deleted from the outbox), the rows written and the table's
/// version.
pub async fn commit(table: &mut Table, p: &Pending) -> Result<(u64, u64, i64), String> {
    let app = app_id(&p.name);
    let done = table.txn_version(&app).await?.unwrap_or(0);
    let done =
        u64::try_from(done).map_err(|_| format!("transaction version {done} is negative"))?;
    let batches: Vec<(u64, Vec<FinalRow>)> = p
        .batches
        .iter()
        .filter(|(b, _)| *b >= done)
        .cloned()
        .collect();
    let Some(&(last, _)) = batches.last() else {
        return Ok((done, 0, table.version()));
    };
    let replace = p
        .state
        .replace
        .filter(|r| batches.iter().any(|(b, _)| *b == r.batch));
    let new_columns = StructType::try_new(table_columns(p.meta.as_ref()))
        .map_err(|e| format!("the schema of {}: {e}", table_name(&p.name)))?;
    let snapshot = table
        .delta()
        .snapshot()
        .map_err(|e| format!("reading {}: {e}", table_name(&p.name)))?;
    let schema_changed = *snapshot.schema() != new_columns;
    let metadata = snapshot.metadata().clone();
    let files = match &p.meta {
        Some(meta) => {
            let (meta, batches) = (meta.clone(), batches.clone());
            tokio::task::spawn_blocking(move || build(&meta, &batches))
                .await
                .map_err(|e| format!("building aggregate files: {e}"))??
        }
        None if batches.iter().all(|(_, rows)| rows.is_empty()) => Vec::new(),
        None => {
            return Err(format!(
                "{}: rows of a removed aggregate",
                table_name(&p.name)
            ));
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut actions = Vec::new();
    let active = table.files()?;
    if schema_changed {
        if replace.is_none() && !active.is_empty() {
            return Err(format!(
                "{}: the schema changed without a replacement",
                table_name(&p.name)
            ));
        }
        let metadata = metadata
            .with_schema(&new_columns)
            .map_err(|e| format!("the schema of {}: {e}", table_name(&p.name)))?;
        actions.push(Action::Metadata(metadata));
    }
    let mut files = files;
    if let Some(r) = replace {
        // Files wholly before the start's day stay (rewritten into new columns); the start's
        // day keeps its rows before the start, rewritten; later days go.
        let from_date = (r.from != i64::MIN).then(|| date_of(r.from.div_euclid(86_400_000) as i32));
        for (i, f) in active.iter().enumerate() {
            let date = f.partition.first().cloned().flatten().unwrap_or_default();
            let before = from_date.as_ref().is_some_and(|d| date < *d);
            let on = from_date.as_ref().is_some_and(|d| date == *d);
            if before && !schema_changed {
                continue;
            }
            if let Some(meta) = p.meta.as_ref().filter(|_| before || on) {
                let kept = read_file(table.get(&f.path).await?, meta, i64::MIN, r.from)?;
                let batch = r.batch;
                files.extend(self::files(meta, kept.iter(), |d| {
                    format!("window_date={d}/kept-{batch:020}-{i:06}.zstd.parquet")
                })?);
            }
            actions.push(Action::Remove(Remove {
                deletion_timestamp: Some(now),
                ..f.remove.clone()
            }));
        }
    }
    let mut rows = 0;
    for f in &files {
        table.put_new(&f.path, f.bytes.clone()).await?;
        rows += f.rows;
        actions.push(Action::Add(super::table::new_add(
            &f.path,
            &[(PARTITION_COLUMNS[0], &f.date)],
            f.bytes.len(),
            &f.stats,
            now,
        )));
    }
    let operation = DeltaOperation::Write {
        mode: if replace.is_some() {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        },
        partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
        predicate: replace.map(|r| {
            if r.from == i64::MIN {
                "true".to_string()
            } else {
                format!("window_start >= '{}'", stat_time(r.from))
            }
        }),
    };
    let version = table
        .commit(
            actions,
            vec![Transaction::new(&app, last as i64 + 1)],
            operation,
        )
        .await?;
    Ok((last + 1, rows, version))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::archive::fault::faulty_memory;
    use crate::plugins::outbox::{AggArchive, Replace};

    const DAY: i64 = 86_400_000;

    fn meta(dimensions: &[&str]) -> AggregateMeta {
        AggregateMeta {
            position: 0,
            version: "1".into(),
            window: "tumbling 1h".into(),
            allowed_lateness_ms: 0,
            dimensions: dimensions.iter().map(|d| d.to_string()).collect(),
            measures: vec![("events".into(), "count".into())],
            rows_epoch: 0,
        }
    }

    fn row(start: i64, key: &[&str], n: u64) -> FinalRow {
        FinalRow {
            start,
            end: start + 3_600_000,
            key: serde_json::to_vec(key).unwrap(),
            values: format!("[{n}]").into_bytes(),
        }
    }

    fn pending(
        meta: &AggregateMeta,
        batches: Vec<(u64, Vec<FinalRow>)>,
        replace: Option<Replace>,
    ) -> Pending {
        Pending {
            name: "agg".into(),
            state: AggArchive {
                next_batch: batches.last().map_or(0, |b| b.0 + 1),
                replace,
                ..Default::default()
            },
            meta: Some(meta.clone()),
            batches,
        }
    }

    /// (start, key, events) of every row the table holds.
    async fn held(t: &Table, meta: &AggregateMeta) -> Vec<(i64, String, String)> {
        read_rows(t.delta(), meta, i64::MIN, i64::MAX, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.start,
                    String::from_utf8(r.key).unwrap(),
                    String::from_utf8(r.values).unwrap(),
                )
            })
            .collect()
    }

    /// Batches are committed once (a retry after the commit adds nothing); a replacement from
    /// a time keeps the rows before it, the boundary day's file rewritten, in one overwrite
    /// commit; a new schema rewrites the old files into its columns.
    #[tokio::test]
    async fn batches_commit_once_and_replacements_keep_what_they_do_not_replace() {
        let (faulty, loc) = faulty_memory();
        let m1 = meta(&["event_type"]);
        let mut t = open(&loc, "agg", Some(&m1)).await.unwrap();
        let first = pending(
            &m1,
            vec![
                (0, vec![row(0, &["a"], 1), row(DAY, &["a"], 2)]),
                (1, vec![row(DAY + 7_200_000, &["a"], 3)]),
            ],
            None,
        );
        assert_eq!(commit(&mut t, &first).await.unwrap().0, 2);
        assert_eq!(t.files().unwrap().len(), 2, "one file per day");
        // The outbox was not cleared (a crash): the same batches again commit nothing.
        let v = t.version();
        assert_eq!(commit(&mut t, &first).await.unwrap(), (2, 0, v));

        // A failed upload commits nothing; the retry does.
        let swap = pending(
            &m1,
            vec![(2, vec![row(DAY + 7_200_000, &["b"], 9)])],
            Some(Replace {
                from: DAY + 3_600_000,
                batch: 2,
            }),
        );
        faulty.fail_data.store(true, Ordering::SeqCst);
        assert!(commit(&mut t, &swap).await.is_err());
        faulty.fail_data.store(false, Ordering::SeqCst);
        let mut t = open(&loc, "agg", Some(&m1)).await.unwrap();
        t.sweep_orphans().await.unwrap();
        assert_eq!(commit(&mut t, &swap).await.unwrap().0, 3);
        assert_eq!(
            held(&t, &m1).await,
            vec![
                (0, r#"["a"]"#.into(), "[1]".into()),
                (DAY, r#"["a"]"#.into(), "[2]".into()),
                (DAY + 7_200_000, r#"["b"]"#.into(), "[9]".into()),
            ],
            "the rows before the start stay, those after are the new ones"
        );

        // Another dimension, replacing from the second day: the first day's file is rewritten
        // into the new columns (the new dimension empty), the rest replaced.
        let m2 = meta(&["event_type", "platform"]);
        let schema = pending(
            &m2,
            vec![(3, vec![row(DAY, &["a", "ios"], 4)])],
            Some(Replace {
                from: DAY,
                batch: 3,
            }),
        );
        commit(&mut t, &schema).await.unwrap();
        assert_eq!(
            held(&t, &m2).await,
            vec![
                (0, r#"["a",""]"#.into(), "[1]".into()),
                (DAY, r#"["a","ios"]"#.into(), "[4]".into()),
            ]
        );
        let fields: Vec<String> = t
            .delta()
            .snapshot()
            .unwrap()
            .schema()
            .fields()
            .map(|f| f.name().clone())
            .collect();
        assert!(fields.contains(&"platform".to_string()), "{fields:?}");
    }
}
