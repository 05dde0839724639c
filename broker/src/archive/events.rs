//! The `events` table's layout, and a range of the log turned into its data files: one zstd
//! Parquet file per partition (`event_type=…/date=…/`, the event-time day in UTC), named by
//! the first and last log offset it holds.
//!
//! The columns are the stored event's ([`runnel_event::fields::COLUMNS`]) in Delta's types:
//! `offset` and `schema_version` as `long` and `integer` (Delta has no unsigned types),
//! `timestamp` and `received_at` as `timestamp` (microseconds, UTC), the text fields as
//! `string`. `event_type` and `date` are partition columns: they are in the folder names, not
//! in the files, as Hive-style readers expect.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use runnel_event::fields::{COLUMNS, Column, EventFields};

use crate::log::BrokerLog;

/// The table's name under the archive URL.
pub const TABLE: &str = "events";

/// Its partition columns, outermost first.
pub const PARTITION_COLUMNS: [&str; 2] = ["event_type", "date"];

/// The Delta application id whose transaction version is the first log offset not archived.
pub const APP_ID: &str = "runnel.archive.events";

/// The columns held in the data files: every stored column but `event_type`.
fn data_columns() -> impl Iterator<Item = Column> {
    COLUMNS
        .into_iter()
        .filter(|c| *c != Column::Text(runnel_batch::Field::EventType))
}

/// The Arrow schema of the data files.
pub fn data_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(
        data_columns()
            .map(|c| match c {
                Column::Offset => Field::new(c.name(), DataType::Int64, false),
                Column::SchemaVersion => Field::new(c.name(), DataType::Int32, false),
                Column::Timestamp | Column::ReceivedAt => Field::new(c.name(), ts.clone(), false),
                Column::Text(_) | Column::AgentId | Column::Host => {
                    Field::new(c.name(), DataType::Utf8, c.nullable())
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// The Delta schema of the table: the stored columns in their order, then `date`.
pub fn table_columns() -> Vec<StructField> {
    let mut out: Vec<StructField> = COLUMNS
        .into_iter()
        .map(|c| {
            let t = match c {
                Column::Offset => PrimitiveType::Long,
                Column::SchemaVersion => PrimitiveType::Integer,
                Column::Timestamp | Column::ReceivedAt => PrimitiveType::Timestamp,
                Column::Text(_) | Column::AgentId | Column::Host => PrimitiveType::String,
            };
            StructField::new(c.name(), DeltaType::Primitive(t), c.nullable())
        })
        .collect();
    out.push(StructField::new(
        "date",
        DeltaType::Primitive(PrimitiveType::Date),
        false,
    ));
    out
}

/// One data file, encoded, not yet stored.
#[derive(Debug)]
pub struct DataFile {
    /// `event_type` of its partition.
    pub event_type: String,
    /// `date` of its partition, `YYYY-MM-DD`.
    pub date: String,
    /// Its path under the table's folder.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// The Parquet bytes.
    pub bytes: bytes::Bytes,
    /// Delta's per-file statistics (JSON): rows, nulls, and the least and greatest `offset`,
    /// `timestamp` and `received_at`.
    pub stats: String,
}

/// A range of the log as data files.
#[derive(Debug)]
pub struct Range {
    /// Its first offset.
    pub from: u64,
    /// The first offset after it.
    pub next: u64,
    /// Events in it (fewer than `next - from` only where the log skipped an unreadable record).
    pub events: u64,
    /// Its files, one per partition, in partition order.
    pub files: Vec<DataFile>,
}

/// Reads up to `limit` durable events from offset `from` on and encodes them as data files.
pub fn build(log: &BrokerLog, from: u64, limit: usize) -> Result<Range, String> {
    // By event type, then day: a type is looked up by `&str`, allocated once.
    let mut parts: BTreeMap<String, BTreeMap<i32, Part>> = BTreeMap::new();
    let mut events = 0u64;
    let next = log
        .walk_events(from, limit, |w| {
            let ev = w.event;
            let day = ev.timestamp_ms().div_euclid(86_400_000) as i32;
            let days = match parts.get_mut(ev.event_type.as_str()) {
                Some(d) => d,
                None => parts.entry(ev.event_type.to_string()).or_default(),
            };
            days.entry(day).or_insert_with(Part::new).push(
                ev,
                w.offset,
                &w.batch.agent_id,
                &w.batch.host,
            );
            events += 1;
        })
        .map_err(|e| format!("reading the log from offset {from}: {e}"))?;
    let schema = data_schema();
    let mut files = Vec::new();
    for (event_type, days) in parts {
        for (day, mut part) in days {
            files.push(part.finish(&schema, event_type.clone(), day)?);
        }
    }
    Ok(Range {
        from,
        next,
        events,
        files,
    })
}

/// The date of an event-time day (days since the epoch).
pub fn date_of(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0).map_or_else(
        || "1970-01-01".to_string(),
        |d| d.format("%Y-%m-%d").to_string(),
    )
}

enum Builder {
    I64(Int64Builder),
    I32(Int32Builder),
    Time(TimestampMicrosecondBuilder),
    Text(StringBuilder, u64),
}

/// The columns of one partition's file as they are read, with the least and greatest
/// `offset`, `timestamp` and `received_at` for the statistics.
pub(crate) struct Part {
    columns: Vec<(Column, Builder)>,
    rows: u64,
    offsets: (u64, u64),
    times: (i64, i64),
    received: (i64, i64),
}

impl Part {
    pub(crate) fn new() -> Self {
        let columns = data_columns()
            .map(|c| {
                let b = match c {
                    Column::Offset => Builder::I64(Int64Builder::new()),
                    Column::SchemaVersion => Builder::I32(Int32Builder::new()),
                    Column::Timestamp | Column::ReceivedAt => {
                        Builder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
                    }
                    Column::Text(_) | Column::AgentId | Column::Host => {
                        Builder::Text(StringBuilder::new(), 0)
                    }
                };
                (c, b)
            })
            .collect();
        Self {
            columns,
            rows: 0,
            offsets: (u64::MAX, 0),
            times: (i64::MAX, i64::MIN),
            received: (i64::MAX, i64::MIN),
        }
    }

    pub(crate) fn push(
        &mut self,
        ev: &(impl EventFields + ?Sized),
        offset: u64,
        agent_id: &str,
        host: &str,
    ) {
        let (ts, rx) = (ev.timestamp_ms(), ev.received_at_ms());
        for (c, b) in &mut self.columns {
            match (c, b) {
                (Column::Offset, Builder::I64(b)) => b.append_value(offset as i64),
                (Column::SchemaVersion, Builder::I32(b)) => {
                    b.append_value(ev.schema_version() as i32)
                }
                (Column::Timestamp, Builder::Time(b)) => b.append_value(ts * 1000),
                (Column::ReceivedAt, Builder::Time(b)) => b.append_value(rx * 1000),
                (Column::Text(f), Builder::Text(b, nulls)) => {
                    let v = ev.text(*f);
                    *nulls += u64::from(v.is_none());
                    b.append_option(v)
                }
                (Column::AgentId, Builder::Text(b, _)) => b.append_value(agent_id),
                (Column::Host, Builder::Text(b, _)) => b.append_value(host),
                _ => unreachable!("each column has the builder `new` gave it"),
            }
        }
        self.rows += 1;
        self.offsets = (self.offsets.0.min(offset), self.offsets.1.max(offset));
        self.times = (self.times.0.min(ts), self.times.1.max(ts));
        self.received = (self.received.0.min(rx), self.received.1.max(rx));
    }

    fn finish(
        &mut self,
        schema: &SchemaRef,
        event_type: String,
        day: i32,
    ) -> Result<DataFile, String> {
        self.finish_with(schema, event_type, day, Vec::new())
    }

    /// The file, with `metadata` in its key-value metadata.
    pub(crate) fn finish_with(
        &mut self,
        schema: &SchemaRef,
        event_type: String,
        day: i32,
        metadata: Vec<parquet::file::metadata::KeyValue>,
    ) -> Result<DataFile, String> {
        let mut nulls = serde_json::Map::new();
        let cols: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|(c, b)| {
                let n = match b {
                    Builder::Text(_, n) => *n,
                    _ => 0,
                };
                nulls.insert(c.name().to_string(), n.into());
                match b {
                    Builder::I64(b) => Arc::new(b.finish()) as ArrayRef,
                    Builder::I32(b) => Arc::new(b.finish()) as ArrayRef,
                    Builder::Time(b) => Arc::new(b.finish()) as ArrayRef,
                    Builder::Text(b, _) => Arc::new(b.finish()) as ArrayRef,
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| format!("building a batch of events: {e}"))?;
        let bytes = encode_with(&batch, schema, metadata)?;
        let date = date_of(day);
        let (first, last) = self.offsets;
        let stats = serde_json::json!({
            "numRecords": self.rows,
            "minValues": {
                "offset": first,
                "timestamp": stat_time(self.times.0),
                "received_at": stat_time(self.received.0),
            },
            "maxValues": {
                "offset": last,
                "timestamp": stat_time(self.times.1),
                "received_at": stat_time(self.received.1),
            },
            "nullCount": nulls,
        })
        .to_string();
        Ok(DataFile {
            path: format!(
                "event_type={event_type}/date={date}/part-{first:020}-{last:020}.zstd.parquet"
            ),
            event_type,
            date,
            rows: self.rows,
            bytes,
            stats,
        })
    }
}

/// How data files are written: zstd level 3.
pub fn writer_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("3 is a zstd level"),
        ))
        .build()
}

/// One record batch as a zstd Parquet file.
pub fn encode(batch: &RecordBatch, schema: &SchemaRef) -> Result<bytes::Bytes, String> {
    encode_with(batch, schema, Vec::new())
}

/// One record batch as a zstd Parquet file with `metadata` in its key-value metadata.
pub fn encode_with(
    batch: &RecordBatch,
    schema: &SchemaRef,
    metadata: Vec<parquet::file::metadata::KeyValue>,
) -> Result<bytes::Bytes, String> {
    let props = if metadata.is_empty() {
        writer_props()
    } else {
        writer_props()
            .into_builder()
            .set_key_value_metadata(Some(metadata))
            .build()
    };
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
        .map_err(|e| format!("starting a Parquet file: {e}"))?;
    w.write(batch)
        .map_err(|e| format!("writing a Parquet file: {e}"))?;
    let out = w
        .into_inner()
        .map_err(|e| format!("finishing a Parquet file: {e}"))?;
    Ok(bytes::Bytes::from(out))
}

/// A time in Delta's statistics format (milliseconds, UTC).
pub fn stat_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_422), "2025-11-30");
        assert_eq!(date_of(-1), "1969-12-31");
        assert_eq!(stat_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn the_files_hold_every_column_but_the_partition_columns() {
        let data = data_schema();
        assert!(data.field_with_name("event_type").is_err());
        assert_eq!(data.fields().len(), COLUMNS.len() - 1);
        let table = table_columns();
        assert_eq!(table.len(), COLUMNS.len() + 1);
        for p in PARTITION_COLUMNS {
            assert!(table.iter().any(|f| f.name() == p), "{p}");
        }
    }
}
