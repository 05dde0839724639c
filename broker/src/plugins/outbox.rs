//! Aggregate rows on their way to the archive's `agg_<name>` tables, and out of `state.redb`
//! once they are there.
//!
//! While the archive is on, the final rows the pipeline commits are also written, in the same
//! redb transaction, to [`AGG_OUTBOX`] as one numbered batch per commit. The archiver commits
//! batches to `agg_<name>` with the Delta application transaction
//! `(runnel.archive.agg.<name>, last batch + 1)` and then deletes them here
//! ([`Registry::archive_done`]). A batch below the table's transaction version is committed
//! already (the broker stopped between the Delta commit and the delete): the archiver deletes
//! it without committing it again. So every final row is in the table once, whatever crashes.
//!
//! **The split.** Rows whose window starts before [`AggArchive::pruned_below`] are read from
//! the table, the others from [`AGG_ROWS`]. Once every queued batch is committed, rows older
//! than `aggregate_rows_retention_ms` are deleted from [`AGG_ROWS`] and the split moves up to
//! them, in one transaction. A row that becomes final below the split later (a session
//! window, a long allowed lateness) is in [`AGG_ROWS`] until its batch is committed; that
//! batch's `archive_done` deletes it. [`AggArchive::pruned_version`] is the table version that
//! holds every row below the split: a read takes the table at that version or a later one.
//!
//! A **replacement** rewrites part of the table: a backfill's swap (the rows from the plan's
//! start on), a new schema (every row, in the new columns), a remove (no rows). It clears the
//! batches not yet committed and queues what [`AGG_ROWS`] holds that the table must get: the
//! rows from the replacement's start on, and those below the split not yet archived. The
//! split moves down to the replacement's start. The Delta commit that adds the batch also
//! removes the table's rows from that start on (rewriting the files that hold rows on both
//! sides), so a reader sees the old rows or the new ones, never both.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{AggregateMeta, FinalRow, Registry, RowKey, rows_from};
use crate::state::{AGG_ARCHIVE, AGG_META, AGG_OUTBOX, AGG_ROWS, from_json, to_json};

/// An aggregate's place in its archive table.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AggArchive {
    /// The number the next batch gets.
    pub next_batch: u64,
    /// A replacement not yet committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<Replace>,
    /// Rows whose window starts before this are read from the table (`None`: every row is in
    /// [`AGG_ROWS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_below: Option<i64>,
    /// The table version that holds every row below `pruned_below`.
    #[serde(default)]
    pub pruned_version: i64,
    /// Rows were committed while the archive was off: when it is on again, the rows from the
    /// split on are queued again, replacing the table's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

impl AggArchive {
    /// The split: rows below it are read from the table at [`Split::version`] or later.
    pub fn split(&self) -> Split {
        Split {
            below: self.pruned_below.unwrap_or(i64::MIN),
            version: self.pruned_version,
        }
    }
}

/// Where an aggregate's rows are read: below `below` from its table (at `version` or a later
/// one), from `state.redb` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The first window start `state.redb` is read for (`i64::MIN`: every row).
    pub below: i64,
    /// The table version to read below it.
    pub version: i64,
}

/// A replacement of the table's rows from a day on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replace {
    /// The first window start replaced (`i64::MIN`: every row).
    pub from: i64,
    /// The batch that holds the new rows; the commit that adds it removes the old ones.
    pub batch: u64,
}

/// What the archiver has to commit for one aggregate.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The aggregate.
    pub name: String,
    /// Its place ([`AggArchive`]).
    pub state: AggArchive,
    /// Its schema (`None`: removed).
    pub meta: Option<AggregateMeta>,
    /// Batches in number order, with their rows.
    pub batches: Vec<(u64, Vec<FinalRow>)>,
}

/// Rows as a batch's bytes: per row its start and end (i64 LE), then its key and values, each
/// as a u32 LE length and the bytes.
pub fn encode(rows: &[FinalRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| 24 + r.key.len() + r.values.len()).sum());
    for r in rows {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.end.to_le_bytes());
        for part in [&r.key, &r.values] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The rows of a batch's bytes ([`encode`]).
pub fn decode(mut bytes: &[u8]) -> Result<Vec<FinalRow>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!(
                "an outbox batch ends {} bytes into a row part of {n}",
                bytes.len()
            ));
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head)
    }
    let mut rows = Vec::new();
    while !bytes.is_empty() {
        let start = i64::from_le_bytes(take(&mut bytes, 8)?.try_into().expect("8 bytes"));
        let end = i64::from_le_bytes(take(&mut bytes, 8)?.try_into().expect("8 bytes"));
        let mut part = || -> Result<Vec<u8>, String> {
            let n = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
            Ok(take(&mut bytes, n as usize)?.to_vec())
        };
        let key = part()?;
        let values = part()?;
        rows.push(FinalRow {
            start,
            end,
            key,
            values,
        });
    }
    Ok(rows)
}

/// Whether two schemas give the same table columns.
pub fn same_columns(a: &AggregateMeta, b: &AggregateMeta) -> bool {
    a.dimensions == b.dimensions && a.measures == b.measures
}

fn state_of(txn: &WriteTransaction, name: &str) -> Result<AggArchive, redb::Error> {
    Ok(stored_state(txn, name)?.unwrap_or_default())
}

/// The aggregate's place, if it has one (its rows were ever queued).
fn stored_state(txn: &WriteTransaction, name: &str) -> Result<Option<AggArchive>, redb::Error> {
    let table = txn.open_table(AGG_ARCHIVE)?;
    let value = table.get(name)?;
    Ok(value.and_then(|v| from_json("aggregate archive", v.value()).ok()))
}

/// Notes rows committed while the archive is off, so that they are queued when it is on again
/// ([`Registry::archive_gaps`]); an aggregate never archived gets its place here, and all its
/// rows are queued then, even if it commits nothing more.
pub(super) fn mark_gap(txn: &WriteTransaction, name: &str) -> Result<(), redb::Error> {
    match stored_state(txn, name)? {
        Some(s) if s.gap => Ok(()),
        s => {
            let mut s = s.unwrap_or_default();
            s.gap = true;
            save(txn, name, &s)
        }
    }
}

fn save(txn: &WriteTransaction, name: &str, state: &AggArchive) -> Result<(), redb::Error> {
    txn.open_table(AGG_ARCHIVE)?
        .insert(name, to_json(state).as_slice())?;
    Ok(())
}

/// Queues `rows` as the next batch (inside the commit's transaction).
pub(super) fn push(
    txn: &WriteTransaction,
    name: &str,
    rows: &[FinalRow],
) -> Result<(), redb::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut state = state_of(txn, name)?;
    txn.open_table(AGG_OUTBOX)?
        .insert((name, state.next_batch), encode(rows).as_slice())?;
    state.next_batch += 1;
    save(txn, name, &state)
}

/// Replaces the table's rows from `from` on (`i64::MIN`: all of them) by what [`AGG_ROWS`]
/// holds from there on (inside the transaction that changed them).
pub(super) fn replace(txn: &WriteTransaction, name: &str, from: i64) -> Result<(), redb::Error> {
    let mut state = state_of(txn, name)?;
    // A replacement still pending reaches further back: this one covers it.
    let from = state.replace.map_or(from, |r| r.from.min(from));
    let below = state.split().below;
    txn.open_table(AGG_OUTBOX)?
        .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
    let rows = {
        let table = txn.open_table(AGG_ROWS)?;
        let mut rows = Vec::new();
        // Below the split and the start (not archived yet), then from the start on.
        let ranges = [rows_from(name, i64::MIN), rows_from(name, from)];
        for (i, range) in ranges.into_iter().enumerate() {
            for e in table.range(range)? {
                let (k, v) = e?;
                let (_, start, end, key) = k.value();
                if i == 0 && start >= below.min(from) {
                    break;
                }
                rows.push(FinalRow {
                    start,
                    end,
                    key: key.to_vec(),
                    values: v.value().to_vec(),
                });
            }
        }
        rows
    };
    let batch = state.next_batch;
    txn.open_table(AGG_OUTBOX)?
        .insert((name, batch), encode(&rows).as_slice())?;
    state.next_batch += 1;
    state.replace = Some(Replace { from, batch });
    if from < below {
        state.pruned_below = (from != i64::MIN).then_some(from);
    }
    save(txn, name, &state)
}

/// The commit's part for one aggregate whose rows and meta were just written: the first time
/// (rows committed before the archive was on are in [`AGG_ROWS`] too) every row is queued; a
/// schema with other columns than `old`'s replaces every row; otherwise `rows` are queued.
pub(super) fn on_commit(
    txn: &WriteTransaction,
    name: &str,
    old: Option<&AggregateMeta>,
    new: &AggregateMeta,
    rows: &[FinalRow],
) -> Result<(), redb::Error> {
    if stored_state(txn, name)?.is_none() {
        // Rows committed before (the archive was off, or an older broker): all of them.
        let held = txn
            .open_table(AGG_ROWS)?
            .range(rows_from(name, i64::MIN))?
            .take(rows.len() + 1)
            .count();
        if held > rows.len() {
            return replace(txn, name, i64::MIN);
        }
    }
    match old {
        // Every row in the new columns: those below the split are rewritten from the table.
        Some(old) if !same_columns(old, new) => {
            let below = state_of(txn, name)?.split().below;
            replace(txn, name, below)
        }
        _ => push(txn, name, rows),
    }
}

impl Registry {
    /// Turns the outbox on (the archive is on): from now on committed rows are queued, and an
    /// aggregate that committed rows while it was off has its rows from the split on queued
    /// again (replacing the table's).
    pub fn set_archive_rows(&self, on: bool) -> anyhow::Result<()> {
        self.archive_rows
            .store(on, std::sync::atomic::Ordering::Release);
        if on {
            self.archive_gaps()?;
        }
        Ok(())
    }

    /// Queues again, as a replacement from the split on, the rows of each aggregate that
    /// committed rows while the outbox was off; true if there was one. The archiver calls it
    /// at each pass too: a pipeline commit that read the flag off just before it was turned
    /// on marks its gap after [`Self::set_archive_rows`] looked.
    pub fn archive_gaps(&self) -> anyhow::Result<bool> {
        let any = {
            let txn = self.db.begin_read()?;
            match txn.open_table(AGG_ARCHIVE) {
                Ok(t) => {
                    let mut any = false;
                    for e in t.iter()? {
                        let (_, v) = e?;
                        any |= from_json::<AggArchive>("aggregate archive", v.value())?.gap;
                    }
                    any
                }
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if !any {
            return Ok(false);
        }
        let txn = self.db.begin_write()?;
        let gaps: Vec<(String, i64)> = {
            let table = txn.open_table(AGG_ARCHIVE)?;
            let mut out = Vec::new();
            for e in table.iter()? {
                let (k, v) = e?;
                let s: AggArchive = from_json("aggregate archive", v.value())?;
                if s.gap {
                    out.push((k.value().to_string(), s.split().below));
                }
            }
            out
        };
        for (name, below) in &gaps {
            replace(&txn, name, *below)?;
            let mut s = state_of(&txn, name)?;
            s.gap = false;
            save(&txn, name, &s)?;
        }
        txn.commit()?;
        Ok(!gaps.is_empty())
    }

    pub(super) fn archives_rows(&self) -> bool {
        self.archive_rows.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The aggregates with batches queued, each with its first batches up to about
    /// `rows_max` rows (at least one batch), and those with rows below the split (their
    /// table must be open for reads) with none.
    pub fn archive_pending(&self, rows_max: usize) -> anyhow::Result<Vec<Pending>> {
        let txn = self.db.begin_read()?;
        let states = match txn.open_table(AGG_ARCHIVE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let outbox = txn.open_table(AGG_OUTBOX)?;
        let metas = txn.open_table(AGG_META)?;
        let mut out = Vec::new();
        for e in states.iter()? {
            let (name, state) = e?;
            let name = name.value().to_string();
            let (mut batches, mut taken) = (Vec::new(), 0usize);
            for b in outbox.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                if !batches.is_empty() && taken >= rows_max {
                    break;
                }
                let (k, v) = b?;
                let rows = decode(v.value()).map_err(|e| {
                    anyhow::anyhow!("aggregate {name:?} batch {}: {e}", k.value().1)
                })?;
                taken += rows.len();
                batches.push((k.value().1, rows));
            }
            let state: AggArchive = from_json("aggregate archive", state.value())?;
            // With nothing queued, still listed when reads need its table (below the split).
            if batches.is_empty() && state.pruned_below.is_none() {
                continue;
            }
            let meta = metas
                .get(name.as_str())?
                .map(|v| from_json::<AggregateMeta>("aggregate meta", v.value()))
                .transpose()?;
            out.push(Pending {
                state,
                name,
                meta,
                batches,
            });
        }
        Ok(out)
    }

    /// After the Delta commit of `name`'s batches below `below` (the table's transaction
    /// version) as table version `version`, in one transaction: deletes those batches, their
    /// rows below the split from [`AGG_ROWS`] (they are read from the table now) and the
    /// replacement they held; then, with no batch left, deletes the rows whose window starts
    /// before `prune_before` and moves the split up to it. Returns the rows deleted from
    /// [`AGG_ROWS`].
    pub fn archive_done(
        &self,
        name: &str,
        below: u64,
        version: i64,
        prune_before: Option<i64>,
    ) -> anyhow::Result<u64> {
        let txn = self.db.begin_write()?;
        let mut state = state_of(&txn, name)?;
        let split = state.split().below;
        let mut deleted = 0u64;
        let mut late = Vec::new();
        {
            let mut outbox = txn.open_table(AGG_OUTBOX)?;
            for e in outbox.range((name, 0)..(name, below))? {
                let (_, v) = e?;
                late.extend(
                    decode(v.value())
                        .map_err(|e| anyhow::anyhow!("aggregate {name:?}: {e}"))?
                        .into_iter()
                        .filter(|r| r.start < split),
                );
            }
            outbox.retain_in((name, 0)..(name, below), |_, _| false)?;
        }
        let left = txn
            .open_table(AGG_OUTBOX)?
            .range((name, 0)..=(name, u64::MAX))?
            .next()
            .is_some();
        {
            let mut rows = txn.open_table(AGG_ROWS)?;
            for r in &late {
                deleted += u64::from(
                    rows.remove((name, r.start, r.end, r.key.as_slice()))?
                        .is_some(),
                );
            }
            if let Some(before) = prune_before
                && !left
                && before > split
            {
                let mut n = 0u64;
                let lo: RowKey = (name, i64::MIN, i64::MIN, &[]);
                let hi: RowKey = (name, before, i64::MIN, &[]);
                rows.retain_in(lo..hi, |_, _| {
                    n += 1;
                    false
                })?;
                deleted += n;
                state.pruned_below = Some(before);
            }
        }
        if state.replace.is_some_and(|r| r.batch < below) {
            state.replace = None;
        }
        state.pruned_version = state.pruned_version.max(version);
        save(&txn, name, &state)?;
        txn.commit()?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_a_torn_one_is_an_error() {
        let rows = vec![
            FinalRow {
                start: -5,
                end: 60_000,
                key: br#"["page.view"]"#.to_vec(),
                values: b"[3]".to_vec(),
            },
            FinalRow {
                start: i64::MAX - 1,
                end: i64::MAX,
                key: Vec::new(),
                values: b"[null]".to_vec(),
            },
        ];
        let bytes = encode(&rows);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!(
                (a.start, a.end, &a.key, &a.values),
                (b.start, b.end, &b.key, &b.values)
            );
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).unwrap().is_empty());
    }
}
