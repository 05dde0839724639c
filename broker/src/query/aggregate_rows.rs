//! An aggregate's rows over both places they live: `state.redb` (recent final rows, with the
//! pipeline's open windows) and, below the aggregate's split, its archive table `agg_<name>`
//! ([`crate::plugins::outbox`] says how rows move from one to the other).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::admin::Admin;
use crate::pipeline::aggregates::{HeldRows, ReadError};
use crate::plugins::FinalRow;

/// Reads that found the archive table behind `state.redb`'s split (its commit landed between
/// the two) before a read gives up.
const SPLIT_RETRIES: usize = 20;

/// The rows of aggregate `name` whose window starts in `[from, to)`, in window then key order,
/// at most `limit`, each with `is_final`: below the split from the archive table (all final),
/// from the split on as [`crate::pipeline::aggregates::read_rows`] gives them.
pub async fn aggregate_rows(
    admin: &Admin,
    name: &str,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<HeldRows, ReadError> {
    for _ in 0..SPLIT_RETRIES {
        // The table first: it is published after `state.redb` moved its split, so a split
        // read after it is at the table's version or a later one.
        let view = admin.archive.as_ref().and_then(|a| a.aggregate_view(name));
        let ((meta, rows), split) = crate::pipeline::aggregates::read_rows(
            &admin.pipeline,
            &admin.registry,
            name,
            from,
            to,
            limit,
        )
        .await?;
        if split.below == i64::MIN || from >= split.below {
            return Ok((meta, rows));
        }
        if admin.archive.is_none() {
            return Err(ReadError::Unavailable(format!(
                "rows of {name} whose window starts before {} are only in the archive's {} table, and the archive is off (archive_enabled); read from {} on, or turn the archive on",
                runnel_event::envelope::rfc3339_ms(split.below),
                crate::archive::aggregates::table_name(name),
                runnel_event::envelope::rfc3339_ms(split.below),
            )));
        }
        let Some(view) = view.filter(|v| v.version().is_some_and(|x| x as i64 >= split.version))
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let old =
            crate::archive::aggregates::read_rows(&view, &meta, from, to.min(split.below), limit)
                .await
                .map_err(|e| {
                    ReadError::Storage(anyhow::anyhow!(
                        "{}: {e}",
                        crate::archive::aggregates::table_name(name)
                    ))
                })?;
        let mut all: BTreeMap<(i64, i64, Vec<u8>), (FinalRow, bool)> = old
            .into_iter()
            .map(|r| ((r.start, r.end, r.key.clone()), (r, true)))
            .collect();
        for (r, is_final) in rows {
            all.entry((r.start, r.end, r.key.clone()))
                .or_insert((r, is_final));
        }
        return Ok((meta, all.into_values().take(limit).collect()));
    }
    Err(ReadError::Unavailable(format!(
        "the archive table {} is not open yet; try again",
        crate::archive::aggregates::table_name(name)
    )))
}
