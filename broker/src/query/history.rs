//! `events` and `enriched_events` in SQL over every tier.
//!
//! `events`: the archive's `events` table below the offset it has
//! archived to, the log from that offset on. A query over the last hour and one over last year
//! read the same table, and every event is in it once, whatever the archiver is doing.
//!
//! ## One split offset
//! The archiver publishes each committed version of its table with that version's transaction
//! version, the first offset it lacks ([`crate::archive::View`]). A scan takes one such view:
//! the table's files give the offsets below it, the log the offsets from it on. The log keeps
//! every segment the archive lacks (the archiver deletes only what it has committed), so the
//! two parts meet; a scan that finds the log already starting past its split (the view was
//! replaced and segments deleted while it read) takes the new view and reads again.
//!
//! ## `enriched_events`
//! The same over the archive's `enriched_events` below its split (a source offset) and the
//! pipeline's `enriched` topic from the split's topic offset on. Without the archive the
//! table is refused with the reason.
//!
//! ## Pruning
//! Every filter is passed in (as inexact: DataFusion applies them all again above the scan).
//! From bounds on `timestamp` the scan derives bounds on the archive's `date` partitions and on
//! its `timestamp` column in the archive's own type, so Delta skips partitions and files by
//! their statistics; equality on a text column goes to both parts as it is. The log part is
//! read only from the split on (about `archive_interval_ms` of events) and filtered as it is
//! read.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::memory::MemTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlanBuilder, Operator, TableProviderFilterPushDown, TableType, cast,
    col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use tonic::Status;

use super::sql::text_equality;
use super::tables::{TENANT_COLUMN, Tables, events_schema};
use crate::auth::Scope;

/// Reads of the log that found it starting past the split before a scan gives up.
const SPLIT_RETRIES: usize = 3;

/// Which table a [`History`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Events,
    Enriched,
}

/// The `events` or `enriched_events` table of SQL.
#[derive(Debug)]
pub struct History {
    tables: Arc<Tables>,
    schema: SchemaRef,
    kind: Kind,
    /// Whose events a scan returns (filtered on `agent_id` over every tier, below SQL).
    scope: Scope,
}

impl History {
    /// `events` over the archive (when it is on) and the log, as `scope` sees it.
    pub fn new(tables: Arc<Tables>, scope: Scope) -> Self {
        Self {
            tables,
            schema: events_schema(),
            kind: Kind::Events,
            scope,
        }
    }

    /// `enriched_events` over the archive and the `enriched` topic, as `scope` sees it.
    pub fn enriched(tables: Arc<Tables>, scope: Scope) -> Self {
        Self {
            kind: Kind::Enriched,
            ..Self::new(tables, scope)
        }
    }

    /// The archived part of `enriched_events` and the rows of the topic past it.
    async fn enriched_parts(
        &self,
        offsets: (u64, u64),
        bounds: (i64, i64),
        texts: &BTreeMap<String, String>,
    ) -> DfResult<(crate::archive::EnrichedView, Vec<arrow_array::RecordBatch>)> {
        let Some(archive) = self.tables.archive() else {
            return Err(external(Status::failed_precondition(
                "enriched_events is kept by the archive, which is off (archive_enabled = false)",
            )));
        };
        let Some(source) = archive.enriched_topic.clone() else {
            return Err(external(Status::failed_precondition(
                "enriched_events: this broker keeps no enriched topic",
            )));
        };
        let mut tries = 0;
        loop {
            let Some(view) = archive.enriched_view() else {
                return Err(external(Status::unavailable(
                    "enriched_events: the archive is still being opened; try again in a moment",
                )));
            };
            if offsets.1 <= view.split {
                return Ok((view, Vec::new()));
            }
            let read = self
                .tables
                .hot_enriched(
                    source.clone(),
                    view.topic_end,
                    view.split.max(offsets.0),
                    bounds,
                    texts.clone(),
                )
                .await;
            // The topic's first offset past the view's: the archiver committed more and the
            // pipeline deleted what it holds, so the view is old.
            let moved = source.reader.stats().start_offset > view.topic_end;
            match read {
                Ok(hot) if !moved => return Ok((view, hot)),
                Err(e)
                    if !moved
                        && archive.enriched_view().map(|v| v.topic_end) == Some(view.topic_end) =>
                {
                    return Err(external(e));
                }
                _ => {}
            }
            tries += 1;
            if tries >= SPLIT_RETRIES {
                return Err(external(Status::unavailable(format!(
                    "enriched_events: the archive moved on during {tries} reads; try again"
                ))));
            }
        }
    }
}

fn external(s: Status) -> DataFusionError {
    DataFusionError::External(Box::new(s))
}

/// The bounds on `timestamp` (milliseconds, `[from, to)`) that `filters` imply.
fn time_bounds(filters: &[Expr]) -> (i64, i64) {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    for f in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else {
            continue;
        };
        let (op, v) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) if c.name == "timestamp" => (*op, v),
            (Expr::Literal(v, _), Expr::Column(c)) if c.name == "timestamp" => {
                let Some(op) = op.swap() else { continue };
                (op, v)
            }
            _ => continue,
        };
        let Some(ms) = timestamp_ms(v) else { continue };
        match op {
            Operator::GtEq => from = from.max(ms),
            Operator::Gt => from = from.max(ms.saturating_add(1)),
            Operator::Lt => to = to.min(ms),
            Operator::LtEq => to = to.min(ms.saturating_add(1)),
            Operator::Eq => {
                from = from.max(ms);
                to = to.min(ms.saturating_add(1));
            }
            _ => {}
        }
    }
    (from, to)
}

/// The bounds on `offset` (`[from, to)`) that `filters` imply.
fn offset_bounds(filters: &[Expr]) -> (u64, u64) {
    let (mut from, mut to) = (0u64, u64::MAX);
    let offset = |e: &Expr| match e {
        Expr::Column(c) => c.name == "offset",
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Column(c) if c.name == "offset"),
        _ => false,
    };
    for f in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else {
            continue;
        };
        let (op, v) = match (left.as_ref(), right.as_ref()) {
            (l, Expr::Literal(v, _)) if offset(l) => (*op, v),
            (Expr::Literal(v, _), r) if offset(r) => {
                let Some(op) = op.swap() else { continue };
                (op, v)
            }
            _ => continue,
        };
        let n = match v {
            ScalarValue::UInt64(Some(n)) => *n,
            ScalarValue::Int64(Some(n)) => u64::try_from(*n).unwrap_or(0),
            _ => continue,
        };
        match op {
            Operator::GtEq => from = from.max(n),
            Operator::Gt => from = from.max(n.saturating_add(1)),
            Operator::Lt => to = to.min(n),
            Operator::LtEq => to = to.min(n.saturating_add(1)),
            Operator::Eq => {
                from = from.max(n);
                to = to.min(n.saturating_add(1));
            }
            _ => {}
        }
    }
    (from, to)
}

/// The events of offsets `[from, to)` with `timestamp` at or after `since_ms`, in offset
/// order, over every tier (a backfill's or a replay's read of history below the log). Reads
/// only the tiers and files that hold them: the archive's files by their offset statistics
/// and, with `since_ms`, by their date partitions and `timestamp` statistics; the log only
/// from the archive's split on.
pub async fn events_between(
    tables: Arc<Tables>,
    scope: Scope,
    from: u64,
    to: u64,
    since_ms: i64,
) -> Result<Vec<arrow_array::RecordBatch>, Status> {
    rows(
        tables,
        scope,
        false,
        (since_ms, i64::MAX),
        &BTreeMap::new(),
        (from, to),
        usize::MAX,
    )
    .await
}

/// Plain Flight's `events` or `enriched_events` (`enriched`): the rows with `timestamp` in
/// `[from, to)`, every text column of `texts` equal to its value and offsets from `first`
/// on, over every tier as in SQL (pruned alike), oldest first, at most `limit`.
pub async fn flight_rows(
    tables: Arc<Tables>,
    scope: Scope,
    enriched: bool,
    range: (i64, i64),
    texts: &BTreeMap<String, String>,
    first: u64,
    limit: usize,
) -> Result<Vec<arrow_array::RecordBatch>, Status> {
    rows(
        tables,
        scope,
        enriched,
        range,
        texts,
        (first, u64::MAX),
        limit,
    )
    .await
}

/// The rows of `events` or `enriched_events` with `timestamp` in `[from, to)`, the text
/// equalities `texts` and offsets in `[first, end)`, in offset order, at most `limit`.
async fn rows(
    tables: Arc<Tables>,
    scope: Scope,
    enriched: bool,
    (from, to): (i64, i64),
    texts: &BTreeMap<String, String>,
    (first, end): (u64, u64),
    limit: usize,
) -> Result<Vec<arrow_array::RecordBatch>, Status> {
    let name = if enriched {
        super::sql::ENRICHED_TABLE
    } else {
        "events"
    };
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    let table = if enriched {
        History::enriched(tables, scope)
    } else {
        History::new(tables, scope)
    };
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| Status::internal(format!("registering {name}: {e}")))?;
    let utc = Some(Arc::from("UTC"));
    let mut filters = Vec::new();
    if first > 0 {
        filters.push(col("offset").gt_eq(lit(first)));
    }
    if end != u64::MAX {
        filters.push(col("offset").lt(lit(end)));
    }
    if from != i64::MIN {
        filters.push(
            col("timestamp").gt_eq(lit(ScalarValue::TimestampMillisecond(
                Some(from),
                utc.clone(),
            ))),
        );
    }
    if to != i64::MAX {
        filters.push(col("timestamp").lt(lit(ScalarValue::TimestampMillisecond(Some(to), utc))));
    }
    for (c, v) in texts {
        filters.push(col(c.as_str()).eq(lit(v.as_str())));
    }
    let what = format!("{name} offsets {first}..{end}");
    let status = |e| status_of(e, &what);
    let mut df = ctx.table(name).await.map_err(status)?;
    for f in filters {
        df = df.filter(f).map_err(status)?;
    }
    df = df
        .sort(vec![col("offset").sort(true, false)])
        .map_err(status)?;
    if limit != usize::MAX {
        df = df.limit(0, Some(limit)).map_err(status)?;
    }
    df.collect().await.map_err(status)
}

/// A query's error as a status: a scan's own refusal (the archive still being opened:
/// `Unavailable`; `enriched_events` without the archive) keeps its code and message.
fn status_of(e: DataFusionError, what: &str) -> Status {
    match e.find_root() {
        DataFusionError::External(b) if b.is::<Status>() => {
            let s = b.downcast_ref::<Status>().expect("checked");
            Status::new(s.code(), s.message())
        }
        _ => Status::internal(format!("{what}: {e}")),
    }
}

/// A timestamp literal in milliseconds (rounded down).
fn timestamp_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(*ms),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(us.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000_000)),
        _ => None,
    }
}

/// The UTC day of `ms` (days since 1970-01-01).
fn day_of(ms: i64) -> i32 {
    ms.div_euclid(86_400_000)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// The filters on the archive's own columns that keep every row of `[from, to)`, the text
/// equalities and the offsets below `split`.
fn archive_filters(
    (from, to): (i64, i64),
    texts: &BTreeMap<String, String>,
    split: u64,
    (first, end): (u64, u64),
) -> Vec<Expr> {
    let utc = Some(Arc::from("UTC"));
    let long = |n: u64| lit(i64::try_from(n).unwrap_or(i64::MAX));
    let mut out = vec![col("offset").lt(long(split.min(end)))];
    if first > 0 {
        out.push(col("offset").gt_eq(long(first)));
    }
    if from != i64::MIN {
        out.push(col("date").gt_eq(lit(ScalarValue::Date32(Some(day_of(from))))));
        if let Some(us) = from.checked_mul(1000) {
            out.push(
                col("timestamp").gt_eq(lit(ScalarValue::TimestampMicrosecond(
                    Some(us),
                    utc.clone(),
                ))),
            );
        }
    }
    if to != i64::MAX {
        out.push(col("date").lt_eq(lit(ScalarValue::Date32(Some(day_of(to - 1))))));
        if let Some(us) = to.checked_mul(1000) {
            out.push(col("timestamp").lt(lit(ScalarValue::TimestampMicrosecond(Some(us), utc))));
        }
    }
    // `tenant_id` is not stored: it is computed above the archive's scan.
    for (c, v) in texts.iter().filter(|(c, _)| *c != TENANT_COLUMN) {
        out.push(col(c.as_str()).eq(lit(v.as_str())));
    }
    out
}

/// The active data files of `table`.
fn table_paths(table: &deltalake::DeltaTable) -> DfResult<Vec<String>> {
    let state = table
        .snapshot()
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(state
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect())
}

impl History {
    /// A plan reading `table` (only `files`, when given) with `filters`, its columns cast to
    /// the `events` schema.
    async fn archive_scan(
        &self,
        state: &dyn Session,
        table: &deltalake::DeltaTable,
        files: Option<Vec<String>>,
        filters: &[Expr],
    ) -> DfResult<LogicalPlanBuilder> {
        table
            .update_datafusion_session(state)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut provider = table.table_provider();
        if let Some(files) = files {
            provider = provider.with_file_paths(files);
        }
        let provider: Arc<dyn TableProvider> = provider
            .await
            .map_err(|e| DataFusionError::Plan(format!("events archive: {e}")))?;
        let mut b = LogicalPlanBuilder::scan("archive", provider_as_source(provider), None)?;
        for f in filters {
            b = b.filter(f.clone())?;
        }
        // The archive stores the agent; its tenant is computed as in the log's rows.
        let tenant = self.tables.viewer(Scope::All).tenant_expr();
        let columns: Vec<Expr> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == TENANT_COLUMN {
                    tenant.clone().alias(TENANT_COLUMN)
                } else {
                    cast(col(f.name().as_str()), f.data_type().clone()).alias(f.name())
                }
            })
            .collect();
        b.project(columns)
    }
}

#[async_trait]
impl TableProvider for History {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let bounds = time_bounds(filters);
        let offsets = offset_bounds(filters);
        let mut texts = BTreeMap::new();
        for f in filters {
            if let Some((c, v)) = text_equality(&self.schema, f) {
                texts.entry(c.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if self.kind == Kind::Enriched {
            let (view, hot) = self.enriched_parts(offsets, bounds, &texts).await?;
            let hot = MemTable::try_new(self.schema.clone(), vec![hot])?;
            let hot = LogicalPlanBuilder::scan("hot", provider_as_source(Arc::new(hot)), None)?;
            let archived_filters = archive_filters(bounds, &texts, view.split, offsets);
            let archived = self
                .archive_scan(state, &view.table, None, &archived_filters)
                .await?;
            let plan = archived.union(hot.build()?)?;
            return self
                .plan(state, plan, projection, filters.is_empty(), limit)
                .await;
        }
        let mut tries = 0;
        let (view, hot) = loop {
            let view = match self.tables.archive() {
                Some(a) => match a.view() {
                    Some(v) => Some(v),
                    None => {
                        // Below its transaction version the archive decides what exists (the
                        // log may still hold days its retention deleted): no answer without it.
                        return Err(external(Status::unavailable(
                            "events: the archive is still being opened; try again in a moment",
                        )));
                    }
                },
                None => None,
            };
            let split = view.as_ref().map_or(0, |v| v.archived_end);
            if offsets.1 <= split {
                // Every offset asked for is archived: no need of the log.
                break (view, Vec::new());
            }
            let hot_from = split.max(offsets.0);
            let (hot, log_start) = self
                .tables
                .hot_events(hot_from, bounds, texts.clone())
                .await
                .map_err(external)?;
            if log_start <= hot_from {
                break (view, hot);
            }
            tries += 1;
            if tries >= SPLIT_RETRIES {
                return Err(external(Status::unavailable(format!(
                    "events: the log starts at offset {log_start}, past the archive's \
                     {split}, after {tries} reads; try again"
                ))));
            }
        };
        let hot = MemTable::try_new(self.schema.clone(), vec![hot])?;
        let hot = LogicalPlanBuilder::scan("hot", provider_as_source(Arc::new(hot)), None)?;
        let mut plan = hot;
        if let Some(view) = view {
            let filters = archive_filters(bounds, &texts, view.archived_end, offsets);
            let (warm_files, cold) = match &view.cold {
                Some(cold) => {
                    // The warm files the cold tier holds are read from cold (a move between
                    // its two commits), every other warm file from warm.
                    let in_cold: std::collections::HashSet<String> =
                        table_paths(cold)?.into_iter().collect();
                    let warm: Vec<String> = table_paths(&view.table)?
                        .into_iter()
                        .filter(|p| !in_cold.contains(p))
                        .collect();
                    (Some(warm), Some(cold))
                }
                None => (None, None),
            };
            let warm = self
                .archive_scan(state, &view.table, warm_files, &filters)
                .await?;
            plan = warm.union(plan.build()?)?;
            if let Some(cold) = cold {
                let cold = self.archive_scan(state, cold, None, &filters).await?;
                plan = cold.union(plan.build()?)?;
            }
        }
        self.plan(state, plan, projection, filters.is_empty(), limit)
            .await
    }
}

impl History {
    /// The physical plan of `plan` with the projection, and the limit when nothing is
    /// filtered.
    async fn plan(
        &self,
        state: &dyn Session,
        mut plan: LogicalPlanBuilder,
        projection: Option<&Vec<usize>>,
        unfiltered: bool,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Another tenant's events never leave the scan, whatever the query above it asks.
        let mut unfiltered = unfiltered;
        if let Some(only) = self.tables.viewer(self.scope.clone()).predicate() {
            plan = plan.filter(only)?;
            unfiltered = false;
        }
        if let Some(p) = projection {
            let names: Vec<Expr> = p
                .iter()
                .map(|i| col(self.schema.field(*i).name().as_str()))
                .collect();
            plan = plan.project(names)?;
        }
        if limit.is_some() && unfiltered {
            plan = plan.limit(0, limit)?;
        }
        state.create_physical_plan(&plan.build()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_bounds_come_from_comparisons_either_way_round() {
        let f = vec![
            col("timestamp").gt_eq(ts(1_000)),
            ts(5_000).gt(col("timestamp")),
            col("timestamp").gt(ts(1_500)),
            col("platform").eq(lit("ios")),
        ];
        assert_eq!(time_bounds(&f), (1_501, 5_000));
        assert_eq!(
            time_bounds(&[col("timestamp").lt_eq(ts(9))]),
            (i64::MIN, 10)
        );
        assert_eq!(time_bounds(&[]), (i64::MIN, i64::MAX));
    }

    #[test]
    fn offset_bounds_come_from_comparisons_and_reach_the_archive() {
        let f = vec![
            col("offset").gt_eq(lit(10u64)),
            lit(20i64).gt(col("offset")),
            col("platform").eq(lit("ios")),
        ];
        assert_eq!(offset_bounds(&f), (10, 20));
        assert_eq!(offset_bounds(&[]), (0, u64::MAX));
        let text: Vec<String> =
            archive_filters((i64::MIN, i64::MAX), &BTreeMap::new(), 42, (10, 20))
                .iter()
                .map(|e| e.to_string())
                .collect();
        assert!(text.contains(&"offset < Int64(20)".to_string()), "{text:?}");
        assert!(
            text.contains(&"offset >= Int64(10)".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn archive_filters_bound_days_inclusively() {
        let day = 86_400_000;
        let f = archive_filters((day * 3 + 5, day * 5), &BTreeMap::new(), 42, (0, u64::MAX));
        let text: Vec<String> = f.iter().map(|e| e.to_string()).collect();
        assert!(text[0].contains("offset < Int64(42)"), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("date >= Date32(\"1970-01-04\")")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("date <= Date32(\"1970-01-05\")")),
            "{text:?}"
        );
    }
}
