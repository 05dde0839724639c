//! `runnel query "SQL"`: a Flight SQL client for the terminal, against a running broker.
//!
//! The token comes from `--flight-token` (`RUNNEL_FLIGHT_TOKEN`), else from the file
//! `runnel dev` writes (`.runnel-dev/flight-token`). Results print as a table, CSV or NDJSON.

use std::path::PathBuf;

use anyhow::Context as _;
use arrow_array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow;
use futures::TryStreamExt as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

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

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct Query {
    /// The SQL.
    pub sql: String,
    /// The broker's Flight address (`host:port`).
    pub flight_addr: String,
    /// A token of the broker's `flight_tokens`; `None` reads `token_file`.
    pub token: Option<String>,
    /// Where `runnel dev` writes its token.
    pub token_file: PathBuf,
    /// PEM file of the CA that signed the broker's Flight certificate: connect with TLS.
    pub tls_ca: Option<PathBuf>,
    /// How to print.
    pub format: Format,
}

/// Runs the query and prints the result to `out`.
pub async fn run(q: &Query, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let token = match &q.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(&q.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "no Flight token: pass --flight-token (or RUNNEL_FLIGHT_TOKEN); {} is not readable ({e})",
                    q.token_file.display()
                )
            })?,
    };
    let scheme = if q.tls_ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", q.flight_addr))
        .with_context(|| format!("--flight-addr: {:?} is not host:port", q.flight_addr))?;
    if let Some(ca) = &q.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("--tls-ca: {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("--tls-ca")?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach Flight at {} (is the broker running with a flight token? --flight-addr)",
            q.flight_addr
        )
    })?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_token(token);
    let info = client
        .execute(q.sql.clone(), None)
        .await
        .map_err(flight_error)?;
    let schema = info
        .clone()
        .try_decode_schema()
        .context("the result's schema")?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .context("the broker sent an endpoint without a ticket")?;
        let mut stream = client.do_get(ticket).await.map_err(flight_error)?;
        while let Some(b) = stream.try_next().await.map_err(flight_error)? {
            batches.push(b);
        }
    }
    print(q.format, &schema, &batches, out)
}

fn flight_error(e: FlightError) -> anyhow::Error {
    match e {
        FlightError::Tonic(s) => anyhow::anyhow!("{:?}: {}", s.code(), s.message()),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Prints `batches` in `format`.
pub fn print(
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
