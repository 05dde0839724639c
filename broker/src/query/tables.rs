//! The tables that Arrow Flight and Flight SQL serve, read through the broker's handles, with
//! the result cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::lru::{ByteLru, CacheMetrics};
use crate::admin::Admin;
use crate::auth::{Scope, TenantMap};
use crate::pipeline::aggregates::{self as aggregate, AggInfo, ReadError};

/// The tables that are not aggregates (with [`ENRICHED_TABLE`], served with the archive on).
pub const FIXED_TABLES: &[&str] = &["events", "dead_letters", "late_events"];

/// The enricher chain's output, kept by the archive ([`crate::archive::enriched`]).
pub const ENRICHED_TABLE: &str = "enriched_events";

/// Rows per record batch sent.
const BATCH_ROWS: usize = 65_536;

/// A query: the command descriptor's JSON, and the ticket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableQuery {
    /// The table.
    pub table: String,
    /// Lower bound (inclusive): RFC 3339 for aggregates and events, an offset for side topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    /// Upper bound (exclusive), like `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
    /// Equality filters on text columns.
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, String>,
    /// Most rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Result cache settings (`flight_cache_*`).
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Lifetime of a result that may still change.
    pub ttl: std::time::Duration,
    /// Lifetime of a result whose rows are all final.
    pub final_ttl: std::time::Duration,
    /// Most bytes held.
    pub bytes_max: usize,
    /// Most bytes of `events` blocks held (`flight_event_cache_bytes_max`).
    pub event_blocks_bytes_max: usize,
}

impl CacheSettings {
    /// No caching: every read goes to the tables (for readers other than Flight, which keep
    /// nothing between calls: a backfill, a report run).
    pub const NONE: Self = Self {
        ttl: std::time::Duration::ZERO,
        final_ttl: std::time::Duration::ZERO,
        bytes_max: 0,
        event_blocks_bytes_max: 0,
    };
}

/// Who reads, as of the read: the caller's scope and the agents' tenants. Every table is
/// filtered by it where its rows are made, below SQL: an event (and a side-topic entry of one)
/// is the tenant's when its `agent_id` is one of the tenant's agents; an aggregate is a table of
/// the tenant that deployed it ([`Scope::owns`]).
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The caller's scope.
    pub scope: Scope,
    /// The agents' tenants.
    pub tenants: TenantMap,
}

impl Viewer {
    /// Whether the caller sees every tenant's rows (nothing to filter).
    pub fn sees_all(&self) -> bool {
        self.scope == Scope::All
    }

    /// Whether the caller sees the events `agent_id` appended.
    pub fn sees_agent(&self, agent_id: &str) -> bool {
        self.tenants.sees(&self.scope, agent_id)
    }

    /// Whether the caller sees the aggregate `info`.
    pub fn sees_aggregate(&self, info: &AggInfo) -> bool {
        self.scope.owns(info.tenant.as_deref())
    }

    /// The rows of `batch` (of `events`' schema) the caller sees.
    pub fn filter(&self, batch: RecordBatch) -> Result<RecordBatch, Status> {
        use arrow_array::cast::AsArray;
        let Some(tenant) = self.scope.tenant() else {
            return Ok(batch);
        };
        let tenants = batch
            .column_by_name(TENANT_COLUMN)
            .ok_or_else(|| Status::internal("a table of events without tenant_id"))?
            .as_string::<i32>();
        let keep: arrow_array::BooleanArray =
            tenants.iter().map(|t| Some(t == Some(tenant))).collect();
        datafusion::arrow::compute::filter_record_batch(&batch, &keep)
            .map_err(|e| Status::internal(format!("filtering by tenant: {e}")))
    }

    /// The same filter as an expression, for a plan (`None`: nothing to filter).
    pub fn predicate(&self) -> Option<datafusion::logical_expr::Expr> {
        use datafusion::logical_expr::{col, lit};
        let tenant = self.scope.tenant()?;
        Some(col(TENANT_COLUMN).eq(lit(tenant.to_string())))
    }

    /// `tenant_id` computed from `agent_id`, for a table that stores only the agent (the
    /// archive's).
    pub fn tenant_expr(&self) -> datafusion::logical_expr::Expr {
        use datafusion::logical_expr::{col, lit, when};
        let mut pairs = self.tenants.pairs();
        pairs.retain(|(_, t)| t != crate::auth::DEFAULT_TENANT);
        let mut cases = pairs.into_iter();
        match cases.next() {
            None => lit(crate::auth::DEFAULT_TENANT),
            Some((a, t)) => {
                let mut case = when(col("agent_id").eq(lit(a)), lit(t));
                for (a, t) in cases {
                    case = case.when(col("agent_id").eq(lit(a)), lit(t));
                }
                case.otherwise(lit(crate::auth::DEFAULT_TENANT))
                    .expect("a CASE with a WHEN")
            }
        }
    }
}

/// A result: its schema and batches.
type Answer = (SchemaRef, Vec<RecordBatch>);

/// Results by query fingerprint (the query's canonical JSON), each for `flight_cache_ttl_ms`
/// or, when every row is final, `flight_cache_final_ttl_ms`; no result over a quarter of
/// `flight_cache_bytes_max`.
struct ResultCache {
    settings: CacheSettings,
    lru: ByteLru<String, Answer>,
}

impl ResultCache {
    fn new(settings: CacheSettings) -> Self {
        let lru = ByteLru::new(
            settings.bytes_max,
            settings.bytes_max / 4,
            CacheMetrics {
                hits: "runnel_flight_cache_hits_total",
                misses: "runnel_flight_cache_misses_total",
                bytes: "runnel_flight_cache_bytes",
            },
        );
        Self { settings, lru }
    }

    fn get(&self, key: &String) -> Option<Answer> {
        self.lru.get(key)
    }

    fn put(&self, key: String, schema: SchemaRef, batches: &[RecordBatch], all_final: bool) {
        let s = self.settings;
        if s.ttl.is_zero() {
            return;
        }
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let ttl = if all_final { s.final_ttl } else { s.ttl };
        self.lru
            .put(key, (schema, batches.to_vec()), bytes, Some(ttl));
    }
}

/// The tables, read through the broker's handles: what Flight and Flight SQL serve.
pub struct Tables {
    pub(super) admin: Arc<Admin>,
    rows_max: usize,
    cache: ResultCache,
    event_blocks: Arc<EventBlocks>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").finish_non_exhaustive()
    }
}

impl Tables {
    /// Tables read through `admin`'s handles, answering at most `rows_max` rows per query
    /// (`flight_rows_max`), with a result cache and a cache of `events` blocks.
    pub fn new(admin: Arc<Admin>, rows_max: usize, cache: CacheSettings) -> Self {
        Self {
            admin,
            rows_max,
            event_blocks: Arc::new(EventBlocks::new(cache.event_blocks_bytes_max)),
            cache: ResultCache::new(cache),
        }
    }

    /// Most rows a query answers (`flight_rows_max`).
    pub fn rows_max(&self) -> usize {
        self.rows_max
    }

    /// A reader of `scope`, with the agents' tenants as they are now.
    pub fn viewer(&self, scope: Scope) -> Viewer {
        Viewer {
            scope,
            tenants: self.admin.agents.tenants().snapshot(),
        }
    }

    /// The running aggregates `viewer` sees ([`Tables::aggregates`]).
    pub async fn aggregates_of(&self, viewer: &Viewer) -> Result<Vec<AggInfo>, Status> {
        let mut list = self.aggregates().await?;
        list.retain(|a| viewer.sees_aggregate(a));
        Ok(list)
    }

    /// The running aggregates as of the pipeline's last commit (at most
    /// `aggregate_commit_interval_ms` old), without waiting for the pipeline thread.
    pub async fn aggregates(&self) -> Result<Vec<AggInfo>, Status> {
        match self.admin.pipeline.published_aggregates() {
            Some(list) => Ok(list.as_ref().clone()),
            None => self.current_aggregates().await,
        }
    }

    /// The running aggregates now: asks the pipeline thread.
    async fn current_aggregates(&self) -> Result<Vec<AggInfo>, Status> {
        aggregate::list(&self.admin.pipeline)
            .await
            .map_err(status_of)
    }

    /// The schema of a table, checking that it exists and that the query's filters name its
    /// columns.
    pub async fn schema_of(
        &self,
        q: &TableQuery,
        viewer: &Viewer,
    ) -> Result<(SchemaRef, Option<AggInfo>), Status> {
        let (schema, info) = match q.table.as_str() {
            "events" | ENRICHED_TABLE => (events_schema(), None),
            "dead_letters" | "late_events" => (topic_schema(), None),
            name => {
                // The published list first; an aggregate deployed since is only in the
                // pipeline's current one.
                let mut found = self
                    .aggregates()
                    .await?
                    .into_iter()
                    .find(|a| a.name == name);
                if found.is_none() {
                    found = self
                        .current_aggregates()
                        .await?
                        .into_iter()
                        .find(|a| a.name == name);
                }
                // Another tenant's aggregate is, to this caller, no table at all.
                let Some(info) = found.filter(|a| viewer.sees_aggregate(a)) else {
                    let mut names: Vec<String> =
                        FIXED_TABLES.iter().map(|s| (*s).to_string()).collect();
                    names.push(ENRICHED_TABLE.to_string());
                    names.extend(
                        self.aggregates_of(viewer)
                            .await?
                            .into_iter()
                            .map(|a| a.name),
                    );
                    return Err(Status::not_found(format!(
                        "table: {name:?} is not one of {names:?}"
                    )));
                };
                (aggregate_schema(&info), Some(info))
            }
        };
        for column in q.filters.keys() {
            match schema.field_with_name(column) {
                Ok(f) if f.data_type() == &DataType::Utf8 => {}
                Ok(f) => {
                    return Err(Status::invalid_argument(format!(
                        "where: column {column:?} of {} is {}; only text columns can be filtered",
                        q.table,
                        f.data_type()
                    )));
                }
                Err(_) => {
                    let text: Vec<&str> = schema
                        .fields()
                        .iter()
                        .filter(|f| f.data_type() == &DataType::Utf8)
                        .map(|f| f.name().as_str())
                        .collect();
                    return Err(Status::invalid_argument(format!(
                        "where: {} has no column {column:?} (text columns: {text:?})",
                        q.table
                    )));
                }
            }
        }
        if let Some(limit) = q.limit
            && limit > self.rows_max
        {
            return Err(Status::invalid_argument(format!(
                "limit: {limit} exceeds flight_rows_max ({})",
                self.rows_max
            )));
        }
        Ok((schema, info))
    }

    /// The record batches a query returns, from the result cache when it has them.
    pub async fn cached_batches(
        self: &Arc<Self>,
        q: TableQuery,
        viewer: &Viewer,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let aggregate = !FIXED_TABLES.contains(&q.table.as_str()) && q.table != ENRICHED_TABLE;
        let mut key = serde_json::to_string(&q).expect("serializing to memory");
        // Each tenant's answer is its own (an aggregate's too: whether the caller sees it).
        if let Some(t) = viewer.scope.tenant() {
            key = format!("{key}~{t}");
        }
        if aggregate {
            // Another version, or a backfill's rows, is another answer.
            let running = self.admin.pipeline.published_aggregates();
            if let Some(a) = running
                .iter()
                .flat_map(|l| l.iter())
                .find(|a| a.name == q.table)
            {
                key = format!("{key}@{}#{}", a.version, a.rows_epoch);
            }
        }
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let (schema, batches) = self.batches(q, viewer).await?;
        let all_final = aggregate
            && batches.iter().all(|b| {
                b.column_by_name("is_final")
                    .and_then(|c| c.as_any().downcast_ref::<arrow_array::BooleanArray>())
                    .is_some_and(|c| c.true_count() == c.len())
            });
        self.cache.put(key, schema.clone(), &batches, all_final);
        Ok((schema, batches))
    }

    /// The log's events from offset `start` on (what the archive lacks) with `timestamp` in
    /// `[from, to)` and the text `filters`, every column; and the log's first offset after
    /// the read, which a caller checks is not past `start` (the archiver deletes segments it
    /// has committed).
    pub(super) async fn hot_events(
        &self,
        start: u64,
        (from, to): (i64, i64),
        filters: BTreeMap<String, String>,
    ) -> Result<(Vec<RecordBatch>, u64), Status> {
        let (log, blocks) = (self.admin.log.clone(), self.event_blocks.clone());
        // Every tenant's: the caller's plan filters by tenant above this read.
        let viewer = self.viewer(Scope::All);
        tokio::task::spawn_blocking(move || {
            let schema = events_schema();
            let batches = events_batches(
                &log,
                &blocks,
                &schema,
                (from, to),
                &filters,
                &viewer,
                usize::MAX,
                start,
            )?;
            Ok((batches, log.stats().start_offset))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// The rows of `enriched_events` the archive does not hold yet: the `enriched` topic's
    /// records from topic offset `topic_from` on, their events at or after source offset
    /// `start` with `timestamp` in `[from, to)` and the text `filters`.
    pub(super) async fn hot_enriched(
        &self,
        source: crate::archive::enriched::Source,
        topic_from: u64,
        start: u64,
        (from, to): (i64, i64),
        filters: BTreeMap<String, String>,
    ) -> Result<Vec<RecordBatch>, Status> {
        let log = self.admin.log.clone();
        let tenants = self.admin.agents.tenants().snapshot();
        tokio::task::spawn_blocking(move || {
            let schema = events_schema();
            let mut cols = EventColumns::new();
            crate::archive::enriched::walk(
                &source.reader,
                &log,
                topic_from,
                usize::MAX,
                false,
                |ev, offset, agent_id, host| {
                    if offset >= start {
                        cols.push(ev, offset, (agent_id, host), tenants.tenant_of(agent_id));
                    }
                },
            )
            .map_err(Status::unavailable)?;
            let batch = cols.finish(&schema)?;
            Ok(vec![filter_events(&batch, from, to, &filters)?])
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Plain Flight's `events` from offset `first` on read from the log alone, through the
    /// cache of its blocks, when the log holds every one of them and the archive deletes
    /// none (no `archive_retention_days`), so both tiers hold the same events; `None`
    /// otherwise (or for `enriched_events`).
    async fn log_alone(
        &self,
        viewer: &Viewer,
        enriched: bool,
        (from, to): (i64, i64),
        filters: &BTreeMap<String, String>,
        first: u64,
        limit: usize,
    ) -> Result<Option<Vec<RecordBatch>>, Status> {
        if enriched || self.archive().is_some_and(|a| a.expires) {
            return Ok(None);
        }
        let (log, blocks) = (self.admin.log.clone(), self.event_blocks.clone());
        let filters = filters.clone();
        let viewer = viewer.clone();
        tokio::task::spawn_blocking(move || {
            if log.stats().start_offset > first {
                return Ok(None);
            }
            let batches = events_batches(
                &log,
                &blocks,
                &events_schema(),
                (from, to),
                &filters,
                &viewer,
                limit,
                first,
            )?;
            // Segments the archiver deleted while this read: the archive answers.
            Ok((log.stats().start_offset <= first).then_some(batches))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// The archive's last committed view of `events`, when the archive is on.
    pub(crate) fn archive(&self) -> Option<&crate::archive::Shared> {
        self.admin.archive.as_deref()
    }

    /// The record batches a query returns.
    async fn batches(
        self: &Arc<Self>,
        q: TableQuery,
        viewer: &Viewer,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let (schema, info) = self.schema_of(&q, viewer).await?;
        let limit = q.limit.unwrap_or(self.rows_max);
        let batches = match info {
            Some(info) => {
                let (from, to) = time_range(&q)?;
                let (_, rows) =
                    super::aggregate_rows(&self.admin, &info.name, from, to, usize::MAX)
                        .await
                        .map_err(status_of)?;
                aggregate_batches(&schema, &info, &rows, &q.filters, limit)?
            }
            None if q.table == "events" || q.table == ENRICHED_TABLE => {
                // Every tier, as in SQL. A query without a time range takes the most recent
                // `flight_rows_max` offsets.
                let range = time_range(&q)?;
                let first = if q.from.is_none() && q.to.is_none() {
                    self.admin
                        .log
                        .durable_end()
                        .saturating_sub(self.rows_max as u64)
                } else {
                    0
                };
                let enriched = q.table == ENRICHED_TABLE;
                match self
                    .log_alone(viewer, enriched, range, &q.filters, first, limit)
                    .await?
                {
                    Some(batches) => batches,
                    None => {
                        super::history::flight_rows(
                            self.clone(),
                            viewer.scope.clone(),
                            enriched,
                            range,
                            &q.filters,
                            first,
                            limit,
                        )
                        .await?
                    }
                }
            }
            None => {
                let reader = if q.table == "dead_letters" {
                    self.admin.dead_letters.clone()
                } else {
                    self.admin.late_events.clone()
                };
                let offset = |v: &Option<serde_json::Value>, field: &str| {
                    v.as_ref()
                        .map(|v| {
                            v.as_u64().ok_or_else(|| {
                                Status::invalid_argument(format!(
                                    "{field}: {v} is not an offset (a whole number) of {}",
                                    q.table
                                ))
                            })
                        })
                        .transpose()
                };
                let from = offset(&q.from, "from")?.unwrap_or(0);
                let to = offset(&q.to, "to")?.unwrap_or(u64::MAX);
                let schema = schema.clone();
                let viewer = viewer.clone();
                tokio::task::spawn_blocking(move || {
                    topic_batches(&reader, &schema, from, to, limit, &viewer)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))??
            }
        };
        Ok((schema, batches))
    }
}

fn status_of(e: ReadError) -> Status {
    match e {
        ReadError::Unavailable(m) => Status::unavailable(format!("pipeline: {m}")),
        ReadError::NotFound(m) => Status::not_found(m),
        ReadError::Storage(e) => Status::internal(format!("{e:#}")),
    }
}

fn time_range(q: &TableQuery) -> Result<(i64, i64), Status> {
    let parse = |v: &Option<serde_json::Value>, field: &str| -> Result<Option<i64>, Status> {
        let Some(v) = v else { return Ok(None) };
        let s = v.as_str().ok_or_else(|| {
            Status::invalid_argument(format!("{field}: {v} is not an RFC 3339 time"))
        })?;
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| {
                Status::invalid_argument(format!("{field}: {s:?} is not an RFC 3339 time ({e})"))
            })
    };
    Ok((
        parse(&q.from, "from")?.unwrap_or(i64::MIN),
        parse(&q.to, "to")?.unwrap_or(i64::MAX),
    ))
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}

/// The schema of an aggregate's table.
pub fn aggregate_schema(info: &AggInfo) -> SchemaRef {
    let mut fields = vec![
        ts_field("window_start"),
        ts_field("window_end"),
        Field::new("is_final", DataType::Boolean, false),
    ];
    for d in &info.dimensions {
        fields.push(Field::new(d, DataType::Utf8, false));
    }
    for (name, kind) in &info.measures {
        match kind.as_str() {
            "count" => fields.push(Field::new(name, DataType::Int64, false)),
            "quantiles" => {
                for q in ["p50", "p90", "p99"] {
                    fields.push(Field::new(format!("{name}_{q}"), DataType::Float64, true));
                }
            }
            _ => fields.push(Field::new(name, DataType::Float64, true)),
        }
    }
    let metadata = [
        (
            "runnel.watermark".to_string(),
            info.watermark.clone().unwrap_or_default(),
        ),
        ("runnel.window".to_string(), info.window.clone()),
        (
            "runnel.allowed_lateness_ms".to_string(),
            info.allowed_lateness_ms.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// The column of `events` that names each event's tenant: its agent's
/// ([`crate::auth::TenantMap`]), made as the rows are read.
pub const TENANT_COLUMN: &str = "tenant_id";

/// The schema of `events`: the columns of a stored event ([`runnel_event::fields::COLUMNS`])
/// and [`TENANT_COLUMN`].
pub fn events_schema() -> SchemaRef {
    use runnel_event::fields::{COLUMNS, Column};
    let mut fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| match c {
            Column::Offset => Field::new(c.name(), DataType::UInt64, false),
            Column::SchemaVersion => Field::new(c.name(), DataType::UInt32, false),
            Column::Timestamp | Column::ReceivedAt => ts_field(c.name()),
            Column::Text(_) | Column::AgentId | Column::Host => {
                Field::new(c.name(), DataType::Utf8, c.nullable())
            }
        })
        .collect();
    fields.push(Field::new(TENANT_COLUMN, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// The schema of `dead_letters` and `late_events`.
pub fn topic_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::UInt64, false),
        Field::new("source_offset", DataType::UInt64, false),
        Field::new("entry", DataType::Utf8, false),
    ]))
}

/// A row on its way into a record batch: key, values, window start, window end, is_final.
type RowParts = (Vec<String>, Vec<serde_json::Value>, i64, i64, bool);

fn aggregate_batches(
    schema: &SchemaRef,
    info: &AggInfo,
    rows: &[(crate::plugins::FinalRow, bool)],
    filters: &BTreeMap<String, String>,
    limit: usize,
) -> Result<Vec<RecordBatch>, Status> {
    let dim_filters: Vec<(usize, &str)> = info
        .dimensions
        .iter()
        .enumerate()
        .filter_map(|(i, d)| filters.get(d).map(|v| (i, v.as_str())))
        .collect();
    let mut out = Vec::new();
    let mut taken = 0usize;
    let mut chunk: Vec<RowParts> = Vec::new();
    let flush = |chunk: &mut Vec<RowParts>, out: &mut Vec<RecordBatch>| -> Result<(), Status> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut start = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut end = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut fin = BooleanBuilder::new();
        for (_, _, s, e, f) in chunk.iter() {
            start.append_value(*s);
            end.append_value(*e);
            fin.append_value(*f);
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(fin.finish()),
        ];
        for d in 0..info.dimensions.len() {
            let mut b = StringBuilder::new();
            for (key, ..) in chunk.iter() {
                b.append_value(key.get(d).map_or("", String::as_str));
            }
            cols.push(Arc::new(b.finish()));
        }
        for (m, (_, kind)) in info.measures.iter().enumerate() {
            let value = |vals: &Vec<serde_json::Value>| vals.get(m).cloned().unwrap_or_default();
            match kind.as_str() {
                "count" => {
                    let mut b = Int64Builder::new();
                    for (_, vals, ..) in chunk.iter() {
                        b.append_value(value(vals).as_i64().unwrap_or(0));
                    }
                    cols.push(Arc::new(b.finish()));
                }
                "quantiles" => {
                    for qi in 0..3 {
                        let mut b = Float64Builder::new();
                        for (_, vals, ..) in chunk.iter() {
                            b.append_option(
                                value(vals).get(qi).and_then(serde_json::Value::as_f64),
                            );
                        }
                        cols.push(Arc::new(b.finish()));
                    }
                }
                _ => {
                    let mut b = Float64Builder::new();
                    for (_, vals, ..) in chunk.iter() {
                        b.append_option(value(vals).as_f64());
                    }
                    cols.push(Arc::new(b.finish()));
                }
            }
        }
        out.push(
            RecordBatch::try_new(schema.clone(), cols)
                .map_err(|e| Status::internal(format!("building a batch: {e}")))?,
        );
        chunk.clear();
        Ok(())
    };
    for (r, is_final) in rows {
        if taken >= limit {
            break;
        }
        let key: Vec<String> = serde_json::from_slice(&r.key).unwrap_or_default();
        if dim_filters
            .iter()
            .any(|(i, v)| key.get(*i).map(String::as_str) != Some(*v))
        {
            continue;
        }
        let values: Vec<serde_json::Value> = serde_json::from_slice(&r.values).unwrap_or_default();
        chunk.push((key, values, r.start, r.end, *is_final));
        taken += 1;
        if chunk.len() >= BATCH_ROWS {
            flush(&mut chunk, &mut out)?;
        }
    }
    flush(&mut chunk, &mut out)?;
    Ok(out)
}

/// One Arrow builder per column of [`runnel_event::fields::COLUMNS`], in order.
enum ColumnBuilder {
    U64(UInt64Builder),
    U32(UInt32Builder),
    Time(TimestampMillisecondBuilder),
    Text(StringBuilder),
}

struct EventColumns {
    columns: Vec<(runnel_event::fields::Column, ColumnBuilder)>,
    tenant: StringBuilder,
}

impl EventColumns {
    fn new() -> Self {
        use runnel_event::fields::{COLUMNS, Column};
        let columns = COLUMNS
            .iter()
            .map(|c| {
                let b = match c {
                    Column::Offset => ColumnBuilder::U64(UInt64Builder::new()),
                    Column::SchemaVersion => ColumnBuilder::U32(UInt32Builder::new()),
                    Column::Timestamp | Column::ReceivedAt => {
                        ColumnBuilder::Time(TimestampMillisecondBuilder::new().with_timezone("UTC"))
                    }
                    Column::Text(_) | Column::AgentId | Column::Host => {
                        ColumnBuilder::Text(StringBuilder::new())
                    }
                };
                (*c, b)
            })
            .collect();
        Self {
            columns,
            tenant: StringBuilder::new(),
        }
    }

    /// Appends one stored event, of `tenant`.
    fn push(
        &mut self,
        ev: &(impl runnel_event::fields::EventFields + ?Sized),
        offset: u64,
        (agent_id, host): (&str, &str),
        tenant: &str,
    ) {
        use runnel_event::fields::Column;
        self.tenant.append_value(tenant);
        for (c, b) in &mut self.columns {
            match (c, b) {
                (Column::Offset, ColumnBuilder::U64(b)) => b.append_value(offset),
                (Column::SchemaVersion, ColumnBuilder::U32(b)) => {
                    b.append_value(ev.schema_version())
                }
                (Column::Timestamp, ColumnBuilder::Time(b)) => b.append_value(ev.timestamp_ms()),
                (Column::ReceivedAt, ColumnBuilder::Time(b)) => b.append_value(ev.received_at_ms()),
                (Column::Text(f), ColumnBuilder::Text(b)) => b.append_option(ev.text(*f)),
                (Column::AgentId, ColumnBuilder::Text(b)) => b.append_value(agent_id),
                (Column::Host, ColumnBuilder::Text(b)) => b.append_value(host),
                _ => unreachable!("each column has the builder `new` gave it"),
            }
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, Status> {
        let mut cols: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|(_, b)| match b {
                ColumnBuilder::U64(b) => Arc::new(b.finish()) as ArrayRef,
                ColumnBuilder::U32(b) => Arc::new(b.finish()) as ArrayRef,
                ColumnBuilder::Time(b) => Arc::new(b.finish()) as ArrayRef,
                ColumnBuilder::Text(b) => Arc::new(b.finish()) as ArrayRef,
            })
            .collect();
        cols.push(Arc::new(self.tenant.finish()));
        RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Status::internal(format!("building a batch: {e}")))
    }
}

/// Arrow batches of the `events` table by block of [`BATCH_ROWS`] log offsets. The log never
/// changes below its durable end, so a block wholly below it is built once and served from
/// memory after that, within `flight_event_cache_bytes_max` (least recently used blocks go
/// first). `runnel_flight_event_blocks_hits_total` / `_misses_total` count lookups and
/// `runnel_flight_event_blocks_bytes` shows what is held.
pub struct EventBlocks {
    lru: ByteLru<u64, RecordBatch>,
}

impl EventBlocks {
    /// A cache holding at most `bytes_max` bytes of Arrow data (0: none).
    pub fn new(bytes_max: usize) -> Self {
        Self {
            lru: ByteLru::new(
                bytes_max,
                bytes_max,
                CacheMetrics {
                    hits: "runnel_flight_event_blocks_hits_total",
                    misses: "runnel_flight_event_blocks_misses_total",
                    bytes: "runnel_flight_event_blocks_bytes",
                },
            ),
        }
    }

    fn get(&self, block: u64) -> Option<RecordBatch> {
        self.lru.get(&block)
    }

    fn put(&self, block: u64, batch: &RecordBatch) {
        self.lru
            .put(block, batch.clone(), batch.get_array_memory_size(), None);
    }
}

/// The events of offsets `[from, to)`, every column, no filter: one batch. (An agent's tenant
/// never changes, so a block built once stays right.)
fn build_events(
    log: &crate::log::BrokerLog,
    schema: &SchemaRef,
    (from, to): (u64, u64),
    tenants: &TenantMap,
) -> Result<RecordBatch, Status> {
    let mut cols = EventColumns::new();
    let mut next = from;
    while next < to {
        let want = (to - next).min(8192) as usize;
        let src = log
            .read_batch(next, want, 64 << 20)
            .map_err(|e| Status::internal(format!("reading the log: {e}")))?;
        if src.next <= next {
            break;
        }
        let view = runnel_batch::BatchView::new(&src.batch)
            .map_err(|e| Status::internal(format!("reading the log: {e}")))?;
        for i in 0..src.offsets.len() {
            if src.offsets[i] >= to {
                break;
            }
            let (agent_id, host) = &src.origins[src.origin[i] as usize];
            cols.push(
                &view.event(i),
                src.offsets[i],
                (agent_id, host),
                tenants.tenant_of(agent_id),
            );
        }
        next = src.next;
    }
    cols.finish(schema)
}

/// The events with `timestamp` in `[from, to)` and the text `filters` among the log's from
/// offset `start` on, at most `limit`, oldest first.
/// The events `viewer` sees, only.
#[allow(clippy::too_many_arguments)]
fn events_batches(
    log: &crate::log::BrokerLog,
    blocks: &EventBlocks,
    schema: &SchemaRef,
    (from, to): (i64, i64),
    filters: &BTreeMap<String, String>,
    viewer: &Viewer,
    limit: usize,
    start: u64,
) -> Result<Vec<RecordBatch>, Status> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let end = log.durable_end();
    let block_rows = BATCH_ROWS as u64;
    let filtered = from != i64::MIN || to != i64::MAX || !filters.is_empty();
    let mut out = Vec::new();
    let mut taken = 0usize;
    let mut block = start / block_rows;
    while block * block_rows < end && taken < limit {
        let (lo, hi) = (block * block_rows, (block + 1) * block_rows);
        let batch = if hi <= end {
            match blocks.get(block) {
                Some(b) => b,
                None => {
                    let b = build_events(log, schema, (lo, hi), &viewer.tenants)?;
                    blocks.put(block, &b);
                    b
                }
            }
        } else {
            build_events(log, schema, (lo, end), &viewer.tenants)?
        };
        block += 1;
        // From `start` on.
        let offsets = batch
            .column_by_name("offset")
            .expect("events has an offset column")
            .as_primitive::<UInt64Type>();
        let first = offsets.values().partition_point(|o| *o < start);
        let mut batch = batch.slice(first, batch.num_rows() - first);
        if filtered {
            batch = filter_events(&batch, from, to, filters)?;
        }
        batch = viewer.filter(batch)?;
        let rows = batch.num_rows().min(limit - taken);
        if rows > 0 {
            out.push(batch.slice(0, rows));
            taken += rows;
        }
    }
    Ok(out)
}

/// The rows of `batch` (of `events`' schema) with `timestamp` in `[from, to)` and every text
/// column of `filters` equal to its value.
fn filter_events(
    batch: &RecordBatch,
    from: i64,
    to: i64,
    filters: &BTreeMap<String, String>,
) -> Result<RecordBatch, Status> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMillisecondType;
    let ts = batch
        .column_by_name("timestamp")
        .expect("events has a timestamp column")
        .as_primitive::<TimestampMillisecondType>();
    let mut keep: Vec<bool> = ts.values().iter().map(|t| *t >= from && *t < to).collect();
    for (column, value) in filters {
        let c = batch
            .column_by_name(column)
            .ok_or_else(|| Status::invalid_argument(format!("where: no column {column:?}")))?
            .as_string::<i32>();
        for (k, v) in keep.iter_mut().zip(c.iter()) {
            *k &= v == Some(value.as_str());
        }
    }
    datafusion::arrow::compute::filter_record_batch(batch, &arrow_array::BooleanArray::from(keep))
        .map_err(|e| Status::internal(format!("filtering events: {e}")))
}

/// The entries of a side topic in `[from, to)` whose event `viewer` sees, at most `limit`.
fn topic_batches(
    reader: &runnel_segment::LogReader,
    schema: &SchemaRef,
    from: u64,
    to: u64,
    limit: usize,
    viewer: &Viewer,
) -> Result<Vec<RecordBatch>, Status> {
    #[derive(Deserialize)]
    struct Entry {
        offset: u64,
        source_offset: u64,
        #[serde(default)]
        event: Option<Source>,
    }
    #[derive(Deserialize)]
    struct Source {
        agent_id: String,
    }
    let mut offsets = UInt64Builder::new();
    let mut sources = UInt64Builder::new();
    let mut entries = StringBuilder::new();
    let mut n = 0;
    let mut bad = None;
    crate::topics::read_entries(reader, from, limit, |line| {
        let Ok(e) = serde_json::from_slice::<Entry>(line) else {
            bad = Some(String::from_utf8_lossy(line).into_owned());
            return true;
        };
        if e.offset >= to {
            return false;
        }
        if !viewer.sees_all() && !e.event.is_some_and(|ev| viewer.sees_agent(&ev.agent_id)) {
            return false;
        }
        offsets.append_value(e.offset);
        sources.append_value(e.source_offset);
        entries.append_value(String::from_utf8_lossy(line));
        n += 1;
        true
    })
    .map_err(|e| Status::internal(format!("reading the topic: {e}")))?;
    if let Some(line) = bad {
        return Err(Status::internal(format!(
            "an unreadable topic entry: {line}"
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(offsets.finish()),
                Arc::new(sources.finish()),
                Arc::new(entries.finish()),
            ],
        )
        .map_err(|e| Status::internal(format!("building a batch: {e}")))?,
    ])
}

/// Checks a query's time range up front, so `GetFlightInfo` names a bad bound.
pub fn time_range_checked(q: &TableQuery) -> Result<(), Status> {
    if FIXED_TABLES[1..].contains(&q.table.as_str()) {
        return Ok(());
    }
    time_range(q).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    use runnel_event::{Batch, Chunk, Event};

    const PLATFORMS: [&str; 3] = ["android", "ios", "web"];

    fn event(n: u64) -> Event {
        Event {
            event_id: format!("ev-{n}"),
            event_type: "page.view".into(),
            timestamp_ms: 1_000_000 + n as i64,
            received_at_ms: 1_000_000 + n as i64,
            schema_version: 1,
            user_id: None,
            session_id: None,
            device_id: None,
            platform: Some(PLATFORMS[(n % 3) as usize].into()),
            app_version: None,
            properties: Some(format!(r#"{{"n":{n}}}"#)),
        }
    }

    fn all_tenants() -> Viewer {
        Viewer {
            scope: Scope::All,
            tenants: TenantMap::default(),
        }
    }

    fn offsets(batches: &[RecordBatch]) -> Vec<u64> {
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn event_blocks_answer_as_the_log_does_and_are_built_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = crate::log::BrokerLog::open(
            Arc::new(runnel_segment::FsStorage),
            dir.path(),
            &crate::log::LogSettings {
                segment_bytes_max: 64 << 20,
                batch_bytes_max: 16 << 20,
                checkpoint_interval_bytes: u64::MAX,
                scan_sealed_at_open: false,
            },
        )
        .unwrap();
        // Two full blocks and part of a third.
        let total = 2 * BATCH_ROWS as u64 + 1_000;
        for (seq, first) in (0..total).step_by(5_000).enumerate() {
            let events = (first..(first + 5_000).min(total)).map(event).collect();
            let frame = Batch {
                agent_id: "a".into(),
                host: "h".into(),
                epoch: 1,
                first_seq: seq as u64,
                chunks: vec![Chunk { events }.encode()],
            }
            .encode_frame();
            log.append(crate::log::check_batch(frame, 16 << 20).unwrap())
                .await;
        }
        assert_eq!(log.durable_end(), total);
        let schema = events_schema();
        let blocks = EventBlocks::new(1 << 30);
        let none = BTreeMap::new();
        let all = |blocks: &EventBlocks| {
            events_batches(
                &log,
                blocks,
                &schema,
                (i64::MIN, i64::MAX),
                &none,
                &all_tenants(),
                usize::MAX,
                0,
            )
            .unwrap()
        };
        let want: Vec<u64> = (0..total).collect();
        assert_eq!(offsets(&all(&blocks)), want);
        // Both full blocks are kept; the partial third is not.
        assert_eq!(blocks.lru.len(), 2);
        assert_eq!(offsets(&all(&blocks)), want, "from the kept blocks");
        // Without a cache, the same.
        assert_eq!(offsets(&all(&EventBlocks::new(0))), want);

        // The last `scan`, a time range, a text filter and a limit.
        let ios = BTreeMap::from([("platform".to_string(), "ios".to_string())]);
        let scan = 70_000usize;
        let (from, to) = (
            1_000_000 + total as i64 - 68_000,
            1_000_000 + total as i64 - 10,
        );
        let start = total - scan as u64;
        let got = events_batches(
            &log,
            &blocks,
            &schema,
            (from, to),
            &ios,
            &all_tenants(),
            5_000,
            start,
        )
        .unwrap();
        let want: Vec<u64> = (total - scan as u64..total)
            .filter(|n| {
                let ts = 1_000_000 + *n as i64;
                ts >= from && ts < to && n % 3 == 1
            })
            .take(5_000)
            .collect();
        assert_eq!(offsets(&got), want);
        let platforms: Vec<Option<&str>> = got
            .iter()
            .flat_map(|b| {
                b.column_by_name("platform")
                    .unwrap()
                    .as_string::<i32>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(platforms.iter().all(|p| *p == Some("ios")));

        // A cache too small for one block keeps none and still answers.
        let tiny = EventBlocks::new(1 << 10);
        assert_eq!(offsets(&all(&tiny)).len(), total as usize);
        assert_eq!(tiny.lru.len(), 0);
    }
}
