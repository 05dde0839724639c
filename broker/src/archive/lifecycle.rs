//! The lifecycle of the archive's partitions by event-time day: warm (the table under
//! `archive_url`) → cold (the same table under `archive_cold_url`, after
//! `archive_cold_after_days`) → deleted (after `archive_retention_days`, if set).
//!
//! ## A move shows each partition once
//! A day moves in two commits: its files are copied to the cold table and added there in one
//! commit, then removed from the warm table in another. The archiver publishes the pair of
//! tables after each ([`super::View`]), and a reader of a view skips the warm files the cold
//! table holds, so between the two commits the day is read from cold, before the first from
//! warm, and never twice or not at all. A crash between the two commits leaves the day in
//! both; the next pass finds its files already in cold, adds nothing and removes them from
//! warm. A copied file that was never committed is swept when the cold table is opened.
//!
//! ## Deletion
//! A day past `archive_retention_days` is removed from the last tier (cold, or warm without a
//! cold tier) in one commit. Removed files' data are deleted from the store ("vacuumed") once
//! they were removed more than twice `archive_interval_ms` ago, so that a query that began
//! before the removal can still read them.
//!
//! Every move and deletion is counted in `/metrics` (`runnel_archive_moved_*`,
//! `runnel_archive_expired_*`) and appended to the audit log ([`super::audit`]).

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDate, Utc};

use super::audit::Audit;
use super::table::{FileInfo, Table};

/// When partitions move and go.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Days of event time after which a day moves to cold (a day `D` moves once `D` is more
    /// than this many days before today, UTC).
    pub cold_after_days: u32,
    /// Days after which a day is deleted (`None`: never).
    pub retention_days: Option<u32>,
    /// Removed files' data are deleted this long after their removal (ms).
    pub vacuum_after_ms: i64,
}

/// The `date` partition of a file (its second partition column).
fn date_of(f: &FileInfo) -> Option<NaiveDate> {
    let d = f.partition.get(1)?.as_deref()?;
    NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// Files whose day is before `cutoff`, by day, oldest first.
fn due(files: Vec<FileInfo>, cutoff: NaiveDate) -> BTreeMap<NaiveDate, Vec<FileInfo>> {
    let mut out: BTreeMap<NaiveDate, Vec<FileInfo>> = BTreeMap::new();
    for f in files {
        if let Some(d) = date_of(&f)
            && d < cutoff
        {
            out.entry(d).or_default().push(f);
        }
    }
    out
}

fn cutoff(today: NaiveDate, days: u32) -> NaiveDate {
    today - chrono::Days::new(u64::from(days))
}

/// What one pass of the lifecycle did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Days moved to cold.
    pub moved_days: u64,
    /// Days deleted.
    pub expired_days: u64,
    /// Removed files whose data were deleted.
    pub vacuumed: u64,
}

/// Moves and deletes what is due today. `publish` is called after every commit with the
/// tables as they are then.
pub async fn run(
    warm: &mut Table,
    mut cold: Option<&mut Table>,
    policy: &Policy,
    audit: &Audit,
    mut publish: impl FnMut(&Table, Option<&Table>),
) -> Result<Done, String> {
    let today = Utc::now().date_naive();
    let mut done = Done::default();
    if let Some(cold) = cold.as_deref_mut() {
        for (day, files) in due(warm.files()?, cutoff(today, policy.cold_after_days)) {
            move_day(warm, cold, day, &files, audit, &mut publish).await?;
            done.moved_days += 1;
        }
    }
    if let Some(days) = policy.retention_days {
        let cut = cutoff(today, days);
        match cold.as_deref_mut() {
            Some(c) => {
                for (day, files) in due(c.files()?, cut) {
                    expire_day(c, "cold", day, &files, audit).await?;
                    publish(warm, Some(c));
                    done.expired_days += 1;
                }
            }
            None => {
                for (day, files) in due(warm.files()?, cut) {
                    expire_day(warm, "warm", day, &files, audit).await?;
                    publish(warm, None);
                    done.expired_days += 1;
                }
            }
        }
    }
    let before = Utc::now().timestamp_millis() - policy.vacuum_after_ms;
    done.vacuumed += warm.vacuum(before).await?;
    if let Some(c) = cold {
        done.vacuumed += c.vacuum(before).await?;
    }
    Ok(done)
}

/// Removes one day's `files` from `table` (the last tier) in one commit.
async fn expire_day(
    table: &mut Table,
    tier: &'static str,
    day: NaiveDate,
    files: &[FileInfo],
    audit: &Audit,
) -> Result<(), String> {
    let version = table.remove(files, format!("date = '{day}'")).await?;
    let (rows, bytes) = sums(files);
    metrics::counter!("runnel_archive_expired_files_total", "tier" => tier)
        .increment(files.len() as u64);
    metrics::counter!("runnel_archive_expired_events_total", "tier" => tier).increment(rows);
    audit.record(&serde_json::json!({
        "action": "delete",
        "table": super::events::TABLE,
        "tier": tier,
        "date": day.to_string(),
        "files": files.len(),
        "rows": rows,
        "bytes": bytes,
        "version": version,
    }))?;
    tracing::info!(day = %day, tier, files = files.len(), rows, "archive: deleted a day past archive_retention_days");
    Ok(())
}

fn sums(files: &[FileInfo]) -> (u64, u64) {
    (
        files.iter().filter_map(|f| f.rows).map(|r| r as u64).sum(),
        files.iter().map(|f| f.size.max(0) as u64).sum(),
    )
}

/// Moves one day's `files` from `warm` to `cold`: copy and add in cold (skipping what a
/// crashed earlier move already added), then remove from warm.
async fn move_day(
    warm: &mut Table,
    cold: &mut Table,
    day: NaiveDate,
    files: &[FileInfo],
    audit: &Audit,
    publish: &mut impl FnMut(&Table, Option<&Table>),
) -> Result<(), String> {
    let in_cold: HashSet<String> = cold.files()?.into_iter().map(|f| f.path).collect();
    let now = Utc::now().timestamp_millis();
    let mut adds = Vec::new();
    for f in files.iter().filter(|f| !in_cold.contains(&f.path)) {
        let bytes = warm.get(&f.path).await?;
        cold.put_new(&f.path, bytes).await?;
        adds.push(f.to_add(now));
    }
    let cold_version = if adds.is_empty() {
        None
    } else {
        let v = cold.add(adds).await?;
        publish(warm, Some(cold));
        Some(v)
    };
    let warm_version = warm.remove(files, format!("date = '{day}'")).await?;
    publish(warm, Some(cold));
    let (rows, bytes) = sums(files);
    metrics::counter!("runnel_archive_moved_files_total", "to" => "cold")
        .increment(files.len() as u64);
    metrics::counter!("runnel_archive_moved_events_total", "to" => "cold").increment(rows);
    metrics::counter!("runnel_archive_moved_bytes_total", "to" => "cold").increment(bytes);
    audit.record(&serde_json::json!({
        "action": "move",
        "table": super::events::TABLE,
        "from": "warm",
        "to": "cold",
        "date": day.to_string(),
        "files": files.len(),
        "rows": rows,
        "bytes": bytes,
        "cold_version": cold_version,
        "warm_version": warm_version,
    }))?;
    tracing::info!(day = %day, files = files.len(), rows, "archive: moved a day to the cold tier");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use deltalake::kernel::{Add, Transaction};

    use super::*;
    use crate::archive::events;
    use crate::archive::fault::faulty_memory;
    use crate::archive::store::Location;

    async fn open(loc: &Location) -> Table {
        crate::archive::open_events(loc).await.unwrap()
    }

    /// A crash (here: a failed commit) between a move's two commits leaves the day in both
    /// tiers; the next pass adds nothing to cold and removes it from warm, so the day ends up
    /// once, in cold, with one audit line.
    #[tokio::test]
    async fn a_move_interrupted_between_its_commits_completes_once() {
        let (warm_faults, warm_loc) = faulty_memory();
        let (_, cold_loc) = faulty_memory();
        let day = (Utc::now().date_naive() - chrono::Days::new(20)).to_string();
        let path = format!("event_type=a/date={day}/part-0-9.zstd.parquet");
        let mut warm = open(&warm_loc).await;
        warm.put_new(&path, bytes::Bytes::from_static(b"ten events"))
            .await
            .unwrap();
        let add = Add {
            path: path.clone(),
            partition_values: [
                ("event_type".to_string(), Some("a".to_string())),
                ("date".to_string(), Some(day.clone())),
            ]
            .into_iter()
            .collect(),
            size: 10,
            data_change: true,
            stats: Some(r#"{"numRecords":10}"#.into()),
            ..Default::default()
        };
        warm.append(vec![add], Transaction::new(events::APP_ID, 10))
            .await
            .unwrap();
        let mut cold = open(&cold_loc).await;
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path().join("audit.jsonl"));
        let policy = Policy {
            cold_after_days: 10,
            retention_days: None,
            vacuum_after_ms: 0,
        };
        let mut views = Vec::new();
        warm_faults.fail_commits.store(true, Ordering::SeqCst);
        let e = run(&mut warm, Some(&mut cold), &policy, &audit, |w, c| {
            views.push((w.files().unwrap().len(), c.unwrap().files().unwrap().len()))
        })
        .await
        .unwrap_err();
        assert!(e.contains("injected"), "{e}");
        // Published between the commits: the file in both (a reader takes it from cold).
        assert_eq!(views, [(1, 1)]);
        warm_faults.fail_commits.store(false, Ordering::SeqCst);

        let (mut warm, mut cold) = (open(&warm_loc).await, open(&cold_loc).await);
        assert_eq!(
            (warm.files().unwrap().len(), cold.files().unwrap().len()),
            (1, 1)
        );
        let done = run(&mut warm, Some(&mut cold), &policy, &audit, |_, _| {})
            .await
            .unwrap();
        assert_eq!(done.moved_days, 1);
        assert_eq!(warm.files().unwrap().len(), 0);
        let in_cold = cold.files().unwrap();
        assert_eq!(in_cold.len(), 1, "added to cold once");
        assert_eq!(in_cold[0].rows, Some(10), "with its statistics");
        assert_eq!(cold.get(&path).await.unwrap().as_ref(), b"ten events");
        // Vacuumed (after 0 ms): the warm copy's data are gone, the cold copy stays.
        assert!(warm.get(&path).await.is_err());
        let lines = std::fs::read_to_string(audit.path()).unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(lines.contains("\"action\":\"move\""), "{lines}");
    }

    fn file(day: &str) -> FileInfo {
        FileInfo {
            path: format!("event_type=a/date={day}/part.parquet"),
            size: 10,
            rows: Some(2),
            partition: vec![Some("a".into()), Some(day.into())],
            stats: None,
            tags: None,
            remove: Default::default(),
        }
    }

    #[test]
    fn days_before_the_cutoff_are_due_oldest_first() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        let files = [
            "2026-11-20",
            "2026-11-29",
            "2026-11-21",
            "2026-11-22",
            "2026-11-20",
        ]
        .map(file)
        .to_vec();
        let got = due(files, cutoff(today, 10));
        let days: Vec<String> = got.keys().map(|d| d.to_string()).collect();
        assert_eq!(days, ["2026-11-20", "2026-11-21"]);
        assert_eq!(got.values().next().unwrap().len(), 2);
        assert!(due(vec![file("2026-12-02")], cutoff(today, 0)).is_empty());
        assert_eq!(due(vec![file("2026-12-01")], cutoff(today, 0)).len(), 1);
    }
}
