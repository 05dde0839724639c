//! Windowed aggregates in the broker: what the pipeline keeps per aggregator, how rows are
//! stored and shown, and the questions the admin API asks the pipeline.
//!
//! An aggregator plugin maps events to rows; the pipeline folds them into a
//! [`runnel_window::Engine`] per aggregator, event by event in log order, advancing the
//! watermark after every event. Processing time is the events' receive time (the earlier of the
//! agent's `received_at` and the broker's append time, both stored in the log), so a replay of
//! the same log makes the same rows
//! whatever the batch boundaries, restarts or wall clock (docs/windows.md).
//!
//! Rows as users see them (`runnel agg read`, one JSON object per line): `window_start`,
//! `window_end` (RFC 3339), `is_final`, each dimension, then each measure; a `quantiles`
//! measure `m` is three columns `m_p50`, `m_p90`, `m_p99`.

use runnel_host::Aggregator;
use runnel_window::{Engine, MeasureKind, Row, Schema, Value};

use crate::plugins::{AggregateMeta, FinalRow, PluginRecord};

/// What the pipeline runs for one aggregator.
pub struct AggRun {
    /// The plugin.
    pub plugin: Aggregator,
    /// Its windows.
    pub engine: Engine,
    /// Rows that became final since the last commit.
    pub pending: Vec<Row>,
}

impl std::fmt::Debug for AggRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggRun")
            .field("plugin", &self.plugin.name())
            .finish()
    }
}

/// The stored description of `schema` for plugin `record`.
pub fn meta_of(record: &PluginRecord, schema: &Schema) -> AggregateMeta {
    AggregateMeta {
        position: record.position,
        version: record.active.clone(),
        window: schema.window.to_string(),
        allowed_lateness_ms: schema.allowed_lateness_ms,
        dimensions: schema.dimensions.clone(),
        measures: schema
            .measures
            .iter()
            .map(|(n, k)| (n.clone(), k.as_str().to_string()))
            .collect(),
        rows_epoch: record.rows_epoch,
    }
}

/// The columns of an aggregate's rows, in order.
pub fn columns(meta: &AggregateMeta) -> Vec<String> {
    let mut cols: Vec<String> = ["window_start", "window_end", "is_final"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    cols.extend(meta.dimensions.iter().cloned());
    for (name, kind) in &meta.measures {
        if kind == MeasureKind::Quantiles.as_str() {
            for q in ["p50", "p90", "p99"] {
                cols.push(format!("{name}_{q}"));
            }
        } else {
            cols.push(name.clone());
        }
    }
    cols
}

/// A measure value as stored: null, a number, or `[p50, p90, p99]`.
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Count(n) => (*n).into(),
        Value::Num(x) => {
            serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Quantiles(qs) => qs
            .iter()
            .map(|(_, x)| {
                serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into)
            })
            .collect(),
    }
}

/// A final row in its stored form.
pub fn to_final(row: &Row) -> FinalRow {
    let values: Vec<serde_json::Value> = row.values.iter().map(value_json).collect();
    FinalRow {
        start: row.window.start,
        end: row.window.end,
        key: serde_json::to_vec(&row.key).expect("serializing to memory"),
        values: serde_json::to_vec(&values).expect("serializing to memory"),
    }
}

/// A row as shown to users (see the module docs), from its stored form.
pub fn row_json(meta: &AggregateMeta, row: &FinalRow, is_final: bool) -> serde_json::Value {
    let key: Vec<String> = serde_json::from_slice(&row.key).unwrap_or_default();
    let values: Vec<serde_json::Value> = serde_json::from_slice(&row.values).unwrap_or_default();
    let mut out = serde_json::Map::new();
    out.insert(
        "window_start".into(),
        runnel_event::envelope::rfc3339_ms(row.start).into(),
    );
    out.insert(
        "window_end".into(),
        runnel_event::envelope::rfc3339_ms(row.end).into(),
    );
    out.insert("is_final".into(), is_final.into());
    for (d, v) in meta.dimensions.iter().zip(key) {
        out.insert(d.clone(), v.into());
    }
    for ((name, kind), v) in meta.measures.iter().zip(values) {
        insert_measure(&mut out, name, kind == MeasureKind::Quantiles.as_str(), v);
    }
    serde_json::Value::Object(out)
}

/// The quantile columns of a `quantiles` measure `m`: `m_p50`, `m_p90`, `m_p99`.
pub const QUANTILE_SUFFIXES: [&str; 3] = ["p50", "p90", "p99"];

/// Adds a measure's value (as [`value_json`] gives it) to a row object under its column names:
/// one column, or one per quantile for a `quantiles` measure.
fn insert_measure(
    out: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    quantiles: bool,
    v: serde_json::Value,
) {
    if quantiles {
        let qs = v.as_array().cloned().unwrap_or_default();
        for (i, q) in QUANTILE_SUFFIXES.iter().enumerate() {
            out.insert(
                format!("{name}_{q}"),
                qs.get(i).cloned().unwrap_or(serde_json::Value::Null),
            );
        }
    } else {
        out.insert(name.to_string(), v);
    }
}

/// A row of the window engine with `schema`'s column names, as `runnel agg read` prints it:
/// `window_start`, `window_end`, `is_final`, the dimensions, the measures. `runnel plugin test`
/// prints its windows with this, so the two name columns alike.
pub fn engine_row_json(schema: &Schema, row: &Row) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    out.insert(
        "window_start".into(),
        runnel_event::envelope::rfc3339_ms(row.window.start).into(),
    );
    out.insert(
        "window_end".into(),
        runnel_event::envelope::rfc3339_ms(row.window.end).into(),
    );
    out.insert("is_final".into(), row.is_final.into());
    for (d, v) in schema.dimensions.iter().zip(&row.key) {
        out.insert(d.clone(), v.clone().into());
    }
    for ((name, kind), v) in schema.measures.iter().zip(&row.values) {
        insert_measure(
            &mut out,
            name,
            *kind == MeasureKind::Quantiles,
            value_json(v),
        );
    }
    out
}

/// One aggregate as `runnel agg list` shows it, and an agent whose clock runs ahead (the admin
/// API's types).
pub use runnel_client::api::{AggInfo, ClockSkew};

/// An aggregate's schema and the rows the pipeline holds, each with `is_final`.
pub type HeldRows = (AggregateMeta, Vec<(FinalRow, bool)>);

/// What the admin API asks the pipeline thread (it answers between batches).
#[derive(Debug)]
pub enum Query {
    /// Every aggregate.
    List(tokio::sync::oneshot::Sender<Vec<AggInfo>>),
    /// The rows an aggregate holds in memory: open windows and final rows not yet committed.
    Rows {
        /// The aggregate.
        name: String,
        /// Answer: its schema and the rows with `is_final`, or why not.
        reply: tokio::sync::oneshot::Sender<Result<HeldRows, String>>,
    },
    /// A backfill reached the live offset: fold the rest, then swap its version in.
    Swap {
        /// The shadow chain and its state.
        shadow: Box<super::shadow::Shadow>,
        /// Answer: done, or why not.
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
    /// Seal the side topics' active segments (an erasure rewrites sealed ones only).
    SealTopics {
        /// Answer: each topic's end offset, below which every entry is in a sealed segment.
        reply: tokio::sync::oneshot::Sender<Result<TopicEnds, String>>,
    },
}

/// The side topics' end offsets after [`Query::SealTopics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicEnds {
    /// `dead_letters`.
    pub dead_letters: u64,
    /// `late_events`.
    pub late_events: u64,
    /// `enriched` (`None`: the archive is off and there is no such topic).
    pub enriched: Option<u64>,
}

/// The [`AggInfo`] of a running aggregator.
pub fn info(
    record: &PluginRecord,
    run: &AggRun,
    stats: &crate::plugins::PluginStats,
    lag_events: u64,
) -> AggInfo {
    let schema = run.engine.schema();
    let meta = meta_of(record, schema);
    let wm = run.engine.applied_watermark();
    let c = run.engine.counters();
    AggInfo {
        name: record.name.clone(),
        version: record.active.clone(),
        status: format!("{:?}", record.status).to_lowercase(),
        window: meta.window.clone(),
        allowed_lateness_ms: meta.allowed_lateness_ms,
        columns: columns(&meta),
        dimensions: meta.dimensions.clone(),
        measures: meta.measures.clone(),
        watermark: wm.map(runnel_event::envelope::rfc3339_ms),
        watermark_lag_ms: wm.zip(run.engine.clock_ms()).map(|(w, c)| c - w),
        lag_events,
        open_windows: run.engine.open_panes(),
        state_bytes: run.engine.state_bytes(),
        late_events: stats.late_events,
        refused: [
            ("keys_per_window_max", c.refused_keys),
            ("open_windows_max", c.refused_windows),
            ("state_bytes_max", c.refused_bytes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        clock_skewed_agents: Vec::new(),
        rows_epoch: record.rows_epoch,
        tenant: record.tenant.clone(),
    }
}

/// How long a reader waits for the pipeline thread to answer.
pub const PIPELINE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why rows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The pipeline is not running or did not answer.
    #[error("pipeline: {0}")]
    Unavailable(String),
    /// No such aggregate, or it is not running.
    #[error("{0}")]
    NotFound(String),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// Asks the pipeline thread a question and waits for the answer.
pub async fn ask<T>(
    shared: &super::Shared,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Query,
) -> Result<T, ReadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared.ask(make(tx)).is_none() {
        return Err(ReadError::Unavailable("not running".into()));
    }
    match tokio::time::timeout(PIPELINE_ANSWER_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(ReadError::Unavailable("stopped before answering".into())),
        Err(_) => Err(ReadError::Unavailable("busy; no answer within 10 s".into())),
    }
}

/// Every running aggregate.
pub async fn list(shared: &super::Shared) -> Result<Vec<AggInfo>, ReadError> {
    ask(shared, Query::List).await
}

/// The rows of aggregate `name` whose window starts in `[from, to)`, in window then key
/// order, at most `limit`, each with `is_final`: committed final rows (redb), final rows not
/// yet committed and the rows of open windows (from the pipeline thread); and the split below
/// which the rows are in the archive instead ([`crate::query::aggregate_rows`] reads both).
pub async fn read_rows(
    shared: &super::Shared,
    registry: &crate::plugins::Registry,
    name: &str,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<(HeldRows, crate::plugins::outbox::Split), ReadError> {
    // The rows come in two parts, the pipeline's and redb's; a backfill's swap between the two
    // would mix two versions' rows, so the parts must be of the same `rows_epoch`.
    for _ in 0..SWAP_RETRIES {
        let n = name.to_string();
        let (meta, in_memory) = ask(shared, |reply| Query::Rows { name: n, reply })
            .await?
            .map_err(ReadError::NotFound)?;
        let registry = registry.clone();
        let name = name.to_string();
        let read = tokio::task::spawn_blocking(move || {
            let Some((committed, split)) =
                registry.final_rows(&name, meta.rows_epoch, from, to, limit)?
            else {
                return anyhow::Ok(None);
            };
            let mut rows: std::collections::BTreeMap<(i64, i64, Vec<u8>), (FinalRow, bool)> =
                std::collections::BTreeMap::new();
            for r in committed {
                rows.insert((r.start, r.end, r.key.clone()), (r, true));
            }
            for (r, is_final) in in_memory {
                if r.start >= from && r.start < to {
                    rows.entry((r.start, r.end, r.key.clone()))
                        .or_insert((r, is_final));
                }
            }
            let rows: Vec<(FinalRow, bool)> = rows.into_values().take(limit).collect();
            Ok(Some(((meta, rows), split)))
        })
        .await
        .map_err(|e| ReadError::Storage(anyhow::anyhow!("reading rows: {e}")))??;
        if let Some(rows) = read {
            return Ok(rows);
        }
    }
    Err(ReadError::Unavailable(
        "the aggregate's rows were replaced by a backfill while they were read; try again".into(),
    ))
}

/// Reads of an aggregate's rows that found a backfill's swap between their two parts before a
/// read gives up.
const SWAP_RETRIES: usize = 3;
