//! Compaction: a small deployment's passes write one small file per partition each
//! `archive_interval_ms`; once a partition holds `archive_compact_min_files` files smaller than
//! `archive_target_file_bytes`, they are rewritten as one file (up to that size) in one commit
//! that adds it and removes them (Delta's `OPTIMIZE`: no data change, so readers of any
//! version see the same rows). The new file is named by the least and greatest offset of the
//! files it replaces, which no other file of the partition has; a crash before the commit
//! leaves it uncommitted, and the sweep at open or the retry replaces it. The files it
//! replaces are vacuumed later like any removed file. The `agg_<name>` tables are compacted
//! the same way, their files named by outbox batch numbers instead of offsets. In
//! `enriched_events` only files of one chain (their tag `runnel.enrichers`) are compacted
//! together, and the new file keeps the tag and the key-value metadata.

use std::collections::BTreeMap;

use arrow_schema::SchemaRef;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::DeltaOperation;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::events;
use super::table::{FileInfo, Table};

/// When partitions are compacted.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Files smaller than this are compacted, into files of at most about this size.
    pub target_file_bytes: u64,
    /// Small files a partition must hold before they are compacted.
    pub min_files: usize,
}

/// The first and last offset in a file's name (`part-FIRST-LAST.zstd.parquet`).
fn offsets_of(path: &str) -> Option<(u64, u64)> {
    let name = path.rsplit('/').next()?;
    let mid = name.strip_prefix("part-")?.strip_suffix(".zstd.parquet")?;
    let (a, b) = mid.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Groups of small files to rewrite, each within one partition, in offset order, of at least
/// `min_files` files and at most about `target_file_bytes`.
fn plan(files: Vec<FileInfo>, policy: &Policy) -> Vec<Vec<FileInfo>> {
    type Key = (Vec<Option<String>>, Option<String>);
    let mut by_partition: BTreeMap<Key, Vec<(u64, FileInfo)>> = BTreeMap::new();
    for f in files {
        if (f.size.max(0) as u64) < policy.target_file_bytes
            && let Some((first, _)) = offsets_of(&f.path)
        {
            by_partition
                .entry((f.partition.clone(), chain_of(&f)))
                .or_default()
                .push((first, f));
        }
    }
    let mut out = Vec::new();
    for (_, mut small) in by_partition {
        if small.len() < policy.min_files {
            continue;
        }
        small.sort_by_key(|(first, _)| *first);
        let mut group: Vec<FileInfo> = Vec::new();
        let mut bytes = 0u64;
        for (_, f) in small {
            let size = f.size.max(0) as u64;
            if !group.is_empty() && bytes + size > policy.target_file_bytes {
                if group.len() >= 2 {
                    out.push(std::mem::take(&mut group));
                } else {
                    group.clear();
                }
                bytes = 0;
            }
            bytes += size;
            group.push(f);
        }
        if group.len() >= 2 {
            out.push(group);
        }
    }
    out
}

/// The chain a file of `enriched_events` is tagged with.
fn chain_of(f: &FileInfo) -> Option<String> {
    f.tags
        .as_ref()?
        .get(super::enriched::CHAIN_KEY)
        .cloned()
        .flatten()
}

/// The statistics of the files of `group` together.
fn merged_stats(group: &[FileInfo]) -> Result<String, String> {
    let mut rows = 0u64;
    let (mut min, mut max) = (serde_json::Map::new(), serde_json::Map::new());
    let mut nulls: BTreeMap<String, u64> = BTreeMap::new();
    for f in group {
        let s: Value = serde_json::from_str(f.stats.as_deref().unwrap_or("{}"))
            .map_err(|e| format!("statistics of {}: {e}", f.path))?;
        rows += s["numRecords"].as_u64().unwrap_or(0);
        for (k, v) in s["minValues"].as_object().into_iter().flatten() {
            let keep = min.get(k).is_none_or(|m| less(v, m));
            if keep {
                min.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in s["maxValues"].as_object().into_iter().flatten() {
            let keep = max.get(k).is_none_or(|m| less(m, v));
            if keep {
                max.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in s["nullCount"].as_object().into_iter().flatten() {
            *nulls.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    Ok(serde_json::json!({
        "numRecords": rows,
        "minValues": min,
        "maxValues": max,
        "nullCount": nulls,
    })
    .to_string())
}

/// `a < b` for statistics values: numbers, or timestamps as same-format text.
fn less(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a < b,
        _ => a.as_str().unwrap_or("") < b.as_str().unwrap_or(""),
    }
}

/// Rewrites `group` (files of one partition, holding `schema`'s columns) as one file and
/// commits the swap.
async fn rewrite(table: &mut Table, group: &[FileInfo], schema: &SchemaRef) -> Result<(), String> {
    let (first, last) = group
        .iter()
        .filter_map(|f| offsets_of(&f.path))
        .fold((u64::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    let folder = group[0].path.rsplit_once('/').map_or("", |(d, _)| d);
    let path = format!("{folder}/part-{first:020}-{last:020}.zstd.parquet");
    let chain = chain_of(&group[0]);
    let props = match &chain {
        Some(c) => events::writer_props()
            .into_builder()
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                super::enriched::CHAIN_KEY.to_string(),
                c.clone(),
            )]))
            .build(),
        None => events::writer_props(),
    };
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
        .map_err(|e| format!("starting a Parquet file: {e}"))?;
    for f in group {
        let bytes = table.get(&f.path).await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| format!("reading {}: {e}", f.path))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("reading {}: {e}", f.path))?;
            let batch = arrow_array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                .map_err(|e| format!("{} does not hold the table's columns: {e}", f.path))?;
            w.write(&batch)
                .map_err(|e| format!("writing a Parquet file: {e}"))?;
        }
    }
    let out = bytes::Bytes::from(
        w.into_inner()
            .map_err(|e| format!("finishing a Parquet file: {e}"))?,
    );
    let size = out.len() as i64;
    table.put_new(&path, out).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut actions = vec![Action::Add(Add {
        path: path.clone(),
        partition_values: group[0].remove.partition_values.clone().unwrap_or_default(),
        size,
        modification_time: now,
        data_change: false,
        stats: Some(merged_stats(group)?),
        tags: group[0].tags.clone(),
        ..Default::default()
    })];
    actions.extend(group.iter().map(|f| {
        Action::Remove(Remove {
            deletion_timestamp: Some(now),
            data_change: false,
            ..f.remove.clone()
        })
    }));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: size,
    };
    table.commit(actions, Vec::new(), operation).await?;
    metrics::counter!("runnel_archive_compacted_files_total").increment(group.len() as u64);
    tracing::debug!(
        path,
        files = group.len(),
        bytes = size,
        "archive: compacted small files"
    );
    Ok(())
}

/// Compacts what `policy` says is due in `table`, whose data files hold `schema`'s columns;
/// returns how many files were replaced.
pub async fn run(table: &mut Table, policy: &Policy, schema: &SchemaRef) -> Result<u64, String> {
    let mut replaced = 0;
    for group in plan(table.files()?, policy) {
        rewrite(table, &group, schema).await?;
        replaced += group.len() as u64;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partition: &str, first: u64, size: i64) -> FileInfo {
        FileInfo {
            path: format!(
                "event_type={partition}/date=2026-11-30/part-{first:020}-{:020}.zstd.parquet",
                first + 9
            ),
            size,
            rows: Some(10),
            partition: vec![Some(partition.into()), Some("2026-11-30".into())],
            stats: Some(format!(
                r#"{{"numRecords":10,"minValues":{{"offset":{first},"timestamp":"2026-11-30T0{}:00:00.000Z"}},"maxValues":{{"offset":{},"timestamp":"2026-11-30T09:00:00.000Z"}},"nullCount":{{"user_id":1}}}}"#,
                first % 9,
                first + 9
            )),
            tags: None,
            remove: Default::default(),
        }
    }

    #[test]
    fn only_files_of_one_chain_are_compacted_together() {
        let policy = Policy {
            target_file_bytes: 100,
            min_files: 2,
        };
        let tagged = |first: u64, chain: &str| FileInfo {
            tags: Some(std::collections::HashMap::from([(
                super::super::enriched::CHAIN_KEY.to_string(),
                Some(chain.to_string()),
            )])),
            ..file("a", first, 10)
        };
        let files = vec![tagged(0, "[]"), tagged(10, "[x]"), tagged(20, "[]")];
        let groups = plan(files, &policy);
        let firsts: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| g.iter().map(|f| offsets_of(&f.path).unwrap().0).collect())
            .collect();
        assert_eq!(firsts, vec![vec![0, 20]]);
    }

    #[test]
    fn small_files_are_grouped_by_partition_up_to_the_target() {
        let policy = Policy {
            target_file_bytes: 100,
            min_files: 3,
        };
        let files = vec![
            file("a", 20, 30),
            file("a", 0, 30),
            file("a", 10, 30),
            file("a", 30, 30),
            file("a", 40, 500), // large: left alone
            file("b", 0, 10),   // too few in b
            file("b", 10, 10),
        ];
        let groups = plan(files, &policy);
        let firsts: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| g.iter().map(|f| offsets_of(&f.path).unwrap().0).collect())
            .collect();
        // 0, 10, 20 fit in 100 bytes; 30 would be alone, so it waits.
        assert_eq!(firsts, vec![vec![0, 10, 20]]);
    }

    #[test]
    fn merged_statistics_span_the_files() {
        let s: Value =
            serde_json::from_str(&merged_stats(&[file("a", 10, 1), file("a", 0, 1)]).unwrap())
                .unwrap();
        assert_eq!(s["numRecords"], 20);
        assert_eq!(s["minValues"]["offset"], 0);
        assert_eq!(s["maxValues"]["offset"], 19);
        assert_eq!(s["minValues"]["timestamp"], "2026-11-30T00:00:00.000Z");
        assert_eq!(s["nullCount"]["user_id"], 2);
    }
}
