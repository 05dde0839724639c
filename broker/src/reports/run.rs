//! One attempt of a run: the SQL over the Flight SQL tables, the output encoded whole in memory
//! (at most `report_output_bytes_max`), then written with one `put` at its one name,
//! `DESTINATION/REPORT/RUN_ID.EXT`
//! (a tenant's report: `DEFAULT_DESTINATION/tenants/TENANT/REPORT/RUN_ID.EXT`). A put is atomic in every store (a local file is written
//! aside and renamed; an S3 object appears whole), so a half-written output is never visible
//! at that name, and a retry writes the same name again: never a second copy under another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::definition::{Definition, Format};
use super::queue::{Output, RunRecord};
use crate::archive::store::{self, Location, S3Settings};
use crate::auth::Scope;
use crate::query::{Planned, Provider, Tables};

/// Runs attempts.
pub struct Runner {
    provider: Provider,
    tables: Arc<Tables>,
    s3: S3Settings,
    /// Where outputs go when the definition names no `destination`.
    default_destination: String,
    output_bytes_max: usize,
    stores: Mutex<HashMap<String, Location>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("default_destination", &self.default_destination)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner over `tables`.
    pub fn new(
        tables: Arc<Tables>,
        s3: S3Settings,
        default_destination: String,
        output_bytes_max: usize,
    ) -> Self {
        Self {
            provider: Provider::new(tables.clone()),
            tables,
            s3,
            default_destination,
            output_bytes_max,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The store of `destination`, opened once.
    pub fn location(&self, destination: &str) -> Result<Location, String> {
        let mut stores = self.stores.lock().expect("lock poisoned");
        if let Some(l) = stores.get(destination) {
            return Ok(l.clone());
        }
        let l = store::open(destination, &self.s3)
            .map_err(|e| e.replacen("archive_url", "destination", 1))?;
        stores.insert(destination.to_string(), l.clone());
        Ok(l)
    }

    /// Whether the tables cannot answer yet: the archive (the history of `events`) is still
    /// being opened after a start. A run waits for it instead of spending its attempts.
    pub fn opening(&self) -> bool {
        self.tables.archive().is_some_and(|a| a.view().is_none())
    }

    /// Where a definition's outputs go: its store, and the folder in it under which each
    /// report has its own. A tenant's are under `tenants/TENANT/` of the broker's default
    /// destination (its definition names none: see [`super::Queue::deploy`]).
    pub fn destination_of(&self, def: &Definition, scope: &Scope) -> (String, Vec<String>) {
        match scope.tenant() {
            Some(t) => (
                self.default_destination.clone(),
                vec!["tenants".to_string(), t.to_string()],
            ),
            None => (
                def.destination
                    .clone()
                    .unwrap_or_else(|| self.default_destination.clone()),
                Vec::new(),
            ),
        }
    }

    /// Whether the definition's SQL plans over the tables as `scope` sees them now, with
    /// sample values.
    pub async fn check(&self, def: &Definition, scope: &Scope) -> Result<(), String> {
        let values = def.resolve(&serde_json::Map::new(), 0).unwrap_or_else(|_| {
            // A parameter without a default: any value of its type plans the same.
            def.params
                .iter()
                .map(|(n, p)| (n.clone(), super::definition::sample_value(p.kind)))
                .collect()
        });
        let sql = def.render(&values)?;
        self.provider
            .plan(&sql, scope)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    }

    /// What the run waits for before it can be final: the aggregate tables its SQL reads
    /// whose watermark has not passed its period's end plus their allowed lateness. `None`:
    /// every window of its period is final (or it has no period, or reads no aggregate).
    pub async fn not_final(
        &self,
        def: &Definition,
        run: &RunRecord,
        reads: &[String],
    ) -> Result<Option<String>, String> {
        let Some(end) = def.period_end(&run.params) else {
            return Ok(None);
        };
        let aggregates = self
            .tables
            .aggregates()
            .await
            .map_err(|s| s.message().to_string())?;
        for table in reads {
            let Some(a) = aggregates.iter().find(|a| a.name == *table) else {
                continue;
            };
            let watermark = a
                .watermark
                .as_deref()
                .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
                .map(|w| w.timestamp_millis());
            let needed = end.saturating_add(a.allowed_lateness_ms);
            if watermark.is_none_or(|w| w < needed) {
                return Ok(Some(format!(
                    "{table}: windows up to {} are final once its watermark reaches {} (it is at {})",
                    rfc3339(end),
                    rfc3339(needed),
                    a.watermark.as_deref().unwrap_or("none yet")
                )));
            }
        }
        Ok(None)
    }

    /// The tables the run's SQL reads, and what it waits for (see [`Runner::not_final`]).
    pub async fn waiting(
        &self,
        def: &Definition,
        run: &RunRecord,
        scope: &Scope,
    ) -> Result<Option<String>, String> {
        if !run.wait_for_final {
            return Ok(None);
        }
        let planned = self.plan(def, run, scope).await?;
        self.not_final(def, run, planned.reads()).await
    }

    /// The run's SQL, its parameters rendered, planned over the tables as `scope` sees them
    /// now.
    async fn plan(
        &self,
        def: &Definition,
        run: &RunRecord,
        scope: &Scope,
    ) -> Result<Planned, String> {
        let sql = def.render(&run.params)?;
        self.provider
            .plan(&sql, scope)
            .await
            .map_err(|s| s.message().to_string())
    }

    /// One attempt, its SQL in `scope` (the report's tenant's, or every tenant's): the output
    /// written, and whether it is partial.
    pub async fn execute(
        &self,
        def: &Definition,
        run: &RunRecord,
        scope: &Scope,
    ) -> Result<(Output, bool), String> {
        let planned = self.plan(def, run, scope).await?;
        let partial = self.not_final(def, run, planned.reads()).await?.is_some();
        let mut stream = planned
            .run()
            .await
            .map_err(|e| format!("SQL: {}", e.strip_backtrace()))?;
        let schema = stream.schema();
        let mut batches = Vec::new();
        let (mut rows, mut memory) = (0u64, 0usize);
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| format!("SQL: {}", e.strip_backtrace()))?;
            rows += b.num_rows() as u64;
            memory += b.get_array_memory_size();
            if memory > self.output_bytes_max.saturating_mul(4) {
                return Err(format!(
                    "the result passed {} bytes in memory (4 × report_output_bytes_max) at {rows} rows",
                    self.output_bytes_max.saturating_mul(4)
                ));
            }
            batches.push(b);
        }
        let meta = Meta {
            def,
            run,
            rows,
            partial,
        };
        let bytes = encode(def.format, &schema, &batches, &meta)?;
        if bytes.len() > self.output_bytes_max {
            return Err(format!(
                "the output is {} bytes; report_output_bytes_max is {}",
                bytes.len(),
                self.output_bytes_max
            ));
        }
        let (destination, folder) = self.destination_of(def, scope);
        let location = self.location(&destination)?;
        let file = format!("{}.{}", run.id, def.format.as_str());
        let mut path = Path::from_url_path(location.url.path())
            .map_err(|e| format!("destination {destination:?}: {e}"))?;
        for part in &folder {
            path = path.join(part.as_str());
        }
        let path = path.join(def.name.as_str()).join(file.as_str());
        let relative: String = folder.iter().map(|p| format!("{p}/")).collect();
        let sha256 = crate::plugins::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        location
            .root
            .put_opts(
                &path,
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Overwrite,
                    ..PutOptions::default()
                },
            )
            .await
            .map_err(|e| format!("writing {path}: {e}"))?;
        let url = location
            .url
            .join(&format!("{relative}{}/{file}", def.name))
            .map_err(|e| format!("destination {destination:?}: {e}"))?;
        Ok((
            Output {
                url: url.to_string(),
                destination,
                path: path.to_string(),
                format: def.format.as_str().to_string(),
                rows,
                bytes: size,
                sha256,
            },
            partial,
        ))
    }

    /// The bytes of a run's output.
    pub async fn read_output(&self, output: &Output) -> Result<bytes::Bytes, String> {
        let location = self.location(&output.destination)?;
        let path = Path::parse(&output.path).map_err(|e| e.to_string())?;
        let got = location
            .root
            .get(&path)
            .await
            .map_err(|e| format!("reading {}: {e}", output.url))?;
        got.bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", output.url))
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What an output says about itself.
struct Meta<'a> {
    def: &'a Definition,
    run: &'a RunRecord,
    rows: u64,
    partial: bool,
}

impl Meta<'_> {
    fn pairs(&self) -> Vec<(String, String)> {
        vec![
            ("runnel.report".into(), self.def.name.clone()),
            ("runnel.report_version".into(), self.run.version.to_string()),
            ("runnel.run".into(), self.run.id.clone()),
            (
                "runnel.params".into(),
                serde_json::to_string(&self.run.params).unwrap_or_default(),
            ),
            ("runnel.partial".into(), self.partial.to_string()),
        ]
    }
}

/// The output's bytes in `format`.
fn encode(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    meta: &Meta<'_>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match format {
        Format::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(
                    parquet::basic::ZstdLevel::default(),
                ))
                .set_key_value_metadata(Some(
                    meta.pairs()
                        .into_iter()
                        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k, v))
                        .collect(),
                ))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
                .map_err(|e| format!("parquet: {e}"))?;
            for b in batches {
                w.write(b).map_err(|e| format!("parquet: {e}"))?;
            }
            w.close().map_err(|e| format!("parquet: {e}"))?;
        }
        Format::Csv => {
            let mut w = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                drop(w);
                out.extend_from_slice(header.join(",").as_bytes());
                out.push(b'\n');
            } else {
                for b in batches {
                    w.write(b).map_err(|e| format!("csv: {e}"))?;
                }
            }
        }
        Format::Json => {
            if meta.rows == 0 {
                out.extend_from_slice(b"[]");
            } else {
                let mut w = arrow_json::ArrayWriter::new(&mut out);
                for b in batches {
                    w.write(b).map_err(|e| format!("json: {e}"))?;
                }
                w.finish().map_err(|e| format!("json: {e}"))?;
            }
        }
        Format::Html => html(&mut out, schema, batches, meta)?,
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A self-contained page: the report's name, its parameters, and one table.
fn html(
    out: &mut Vec<u8>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    meta: &Meta<'_>,
) -> Result<(), String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let title = escape(&meta.def.name);
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
         th,td{{border:1px solid #ccc;padding:.3rem .6rem}}th{{background:#f3f3f3;text-align:left}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}.partial{{color:#a40}}</style>\
         </head><body>\n<h1>{title}</h1>\n"
    );
    if !meta.def.description.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", escape(&meta.def.description));
    }
    let params: Vec<String> = meta
        .run
        .params
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let _ = writeln!(
        s,
        "<p>Run {} (version {}), {} rows{}.</p>",
        escape(&meta.run.id),
        meta.run.version,
        meta.rows,
        if params.is_empty() {
            String::new()
        } else {
            format!("; {}", escape(&params.join(", ")))
        }
    );
    if meta.partial {
        s.push_str(
            "<p class=\"partial\">Partial: some windows of the period were not final.</p>\n",
        );
    }
    s.push_str("<table>\n<thead><tr>");
    for f in schema.fields() {
        let _ = write!(s, "<th>{}</th>", escape(f.name()));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    let options = arrow_cast::display::FormatOptions::default().with_null("");
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("html: {e}"))?;
        let numeric: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().is_numeric())
            .collect();
        for row in 0..b.num_rows() {
            s.push_str("<tr>");
            for (f, n) in formatters.iter().zip(&numeric) {
                let _ = write!(
                    s,
                    "<td{}>{}</td>",
                    if *n { " class=\"n\"" } else { "" },
                    escape(&f.value(row).to_string())
                );
            }
            s.push_str("</tr>\n");
        }
    }
    s.push_str("</tbody></table>\n</body></html>\n");
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("agent", DataType::Utf8, false),
            Field::new("commission", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a<1>", "b"])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
            ],
        )
        .unwrap();
        (schema, b)
    }

    fn run() -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "id": "r1", "report": "x", "version": 1, "trigger": "request",
            "scheduled_for_ms": null, "params": {"month": "2026-11"}, "status": "running",
            "wait_for_final": true, "waiting": null, "partial": false, "attempts": 1,
            "attempts_max": 3, "deadline_ms": 1000, "errors": [], "created_ms": 0,
            "started_ms": null, "finished_ms": null, "not_before_ms": 0, "output": null,
            "webhook_url": null
        }))
        .unwrap()
    }

    #[test]
    fn every_format_holds_the_rows() {
        let def = Definition::parse("name = \"x\"\nsql = \"SELECT 1\"").unwrap();
        let run = run();
        let (schema, b) = batch();
        let meta = Meta {
            def: &def,
            run: &run,
            rows: 2,
            partial: true,
        };
        let csv = encode(Format::Csv, &schema, std::slice::from_ref(&b), &meta).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "agent,commission\na<1>,1.5\nb,\n"
        );
        let json = encode(Format::Json, &schema, std::slice::from_ref(&b), &meta).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"agent": "a<1>", "commission": 1.5}, {"agent": "b"}])
        );
        let html = String::from_utf8(
            encode(Format::Html, &schema, std::slice::from_ref(&b), &meta).unwrap(),
        )
        .unwrap();
        assert!(
            html.contains("<td>a&lt;1&gt;</td><td class=\"n\">1.5</td>"),
            "{html}"
        );
        assert!(html.contains("Partial"));
        let pq = encode(Format::Parquet, &schema, std::slice::from_ref(&b), &meta).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(pq),
        )
        .unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(
            kv.iter()
                .any(|k| k.key == "runnel.run" && k.value.as_deref() == Some("r1"))
        );
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        let empty = Meta { rows: 0, ..meta };
        assert_eq!(encode(Format::Json, &schema, &[], &empty).unwrap(), b"[]");
        assert_eq!(
            encode(Format::Csv, &schema, &[], &empty).unwrap(),
            b"agent,commission\n"
        );
    }
}
