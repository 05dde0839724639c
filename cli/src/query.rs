//! `runnel query "SQL"`: Flight SQL from the terminal, against a running broker (through
//! `runnel_client::flight`).
//!
//! The token comes from `--flight-token` (`RUNNEL_FLIGHT_TOKEN`), else it is the API token
//! (`--token`, `RUNNEL_TOKEN`, else `--token-file`: `.runnel-dev/broker/admin-token` by
//! default, which `runnel dev`'s broker writes). Results print as a table, CSV or NDJSON.

use std::path::PathBuf;

use anyhow::Context as _;
use arrow_array::RecordBatch;
use datafusion::arrow;
use runnel_client::flight::FlightSql;

/// How results print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row (NDJSON).
    Json,
}

/// `runnel query`: what to run, and where.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// The SQL, e.g. "SELECT * FROM events_per_type ORDER BY window_start DESC LIMIT 10".
    /// Tables: every aggregate, `events`, `dead_letters`, `late_events`.
    pub sql: String,
    /// How to print the rows.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The broker's Flight address.
    #[arg(long, default_value = "127.0.0.1:8712")]
    pub flight_addr: String,
    /// A token of the broker's flight_tokens (default: the API token, `--token`).
    #[arg(long, env = "RUNNEL_FLIGHT_TOKEN", hide_env_values = true)]
    pub flight_token: Option<String>,
    /// PEM file of the CA of the broker's Flight certificate (the broker's
    /// flight_tls_cert when self-signed): connects with TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// Runs the query and prints the result to `out`.
pub async fn run(q: QueryArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let token = q.flight_token.clone().or_else(crate::token).ok_or_else(|| {
        anyhow::anyhow!(
            "no token: pass --flight-token (RUNNEL_FLIGHT_TOKEN) or --token (RUNNEL_TOKEN), or run from the directory of runnel dev (it reads .runnel-dev/broker/admin-token)"
        )
    })?;
    let ca = match &q.tls_ca {
        Some(ca) => Some(std::fs::read(ca).with_context(|| format!("--tls-ca: {}", ca.display()))?),
        None => None,
    };
    let mut client = FlightSql::connect(&q.flight_addr, &token, ca).await?;
    let (schema, batches) = client.query(&q.sql).await?;
    print(q.format, &schema, &batches, out)
}

/// Prints `batches` in `format`.
fn print(
    format: Format,
    schema: &arrow_schema::Schema,
    batches: &[RecordBatch],
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    std::sync::Arc::new(schema.clone()),
                )])?
            } else {
                arrow::util::pretty::pretty_format_batches(batches)?
            };
            writeln!(out, "{table}")?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(std::sync::Arc::new(schema.clone())))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    out.flush()?;
    Ok(())
}
