//! `runnel`: the broker, the agent, `runnel dev`, and the operator and plugin-author verbs.
//!
//! One file per verb. The verbs that talk to a running broker do so through `runnel-client`
//! (the admin API and Flight SQL), never through the broker's internals.

mod agent;
mod agg;
mod archive;
mod dev;
mod dlq;
mod dq;
mod erase;
mod log;
mod plugin;
mod query;
mod report;
mod schema;
mod token;

use std::future::Future;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runnel_agent::AgentConfig;
use runnel_broker::BrokerConfig;
use runnel_config::flags::{Flags, with_env_names};
use runnel_config::telemetry;

/// Runnel: event-analytics pipeline — broker and operator tool.
#[derive(Parser, Debug)]
#[command(name = "runnel", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// API token for the broker's admin API and Flight (default: the one in --token-file).
    #[arg(long, global = true, env = "RUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where to read the API token when --token and RUNNEL_TOKEN are unset: the admin token the
    /// broker writes on its first start (`runnel dev`: .runnel-dev/broker/admin-token).
    #[arg(long, global = true, default_value = ".runnel-dev/broker/admin-token")]
    token_file: std::path::PathBuf,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a broker and an agent on one data dir with the default ports (the quickstart).
    Dev(dev::DevArgs),
    /// Run the broker.
    Broker {
        #[command(flatten)]
        args: Flags<BrokerConfig>,
    },
    /// Run an agent (the same as the `runnel-agent` binary); or, with a verb, manage agents'
    /// certificates: enroll one, list them, revoke one.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        cmd: Option<agent::AgentCmd>,
        #[command(flatten)]
        args: Flags<AgentConfig>,
    },
    /// Inspect a running broker's log.
    Log {
        #[command(subcommand)]
        cmd: log::LogCmd,
    },
    /// Write, build, test and deploy plugins.
    Plugin {
        #[command(subcommand)]
        cmd: plugin::PluginCmd,
    },
    /// Windowed aggregates: list them, read their rows.
    Agg {
        #[command(subcommand)]
        cmd: agg::AggCmd,
    },
    /// The archive: its Delta tables and how far behind the log they are.
    Archive {
        #[command(subcommand)]
        cmd: archive::ArchiveCmd,
    },
    /// Load benchmark: offer a fixed rate (open loop) or as much as it takes (closed loop) to
    /// an agent (`ingest`) or a broker (`broker`); prints percentiles, writes JSON and an HTML
    /// report.
    Bench {
        #[command(subcommand)]
        cmd: runnel_loadgen::BenchCmd,
    },
    /// Run SQL against a running broker over Flight SQL and print the result.
    Query(query::QueryArgs),
    /// Reports: deploy definitions, run them on demand, read their runs and outputs.
    Report {
        #[command(subcommand)]
        cmd: report::ReportCmd,
    },
    /// Dead letters: list them by kind, plugin and time, show one, re-drive them once fixed.
    Dlq {
        #[command(subcommand)]
        cmd: dlq::DlqCmd,
    },
    /// Data-quality alarms: expected volume, freshness and completeness per event type.
    Dq {
        #[command(subcommand)]
        cmd: dq::DqCmd,
    },
    /// Erase a user's events from the broker's stores (or print the requests: --status).
    Erase(erase::EraseArgs),
    /// Schemas: register JSON Schemas per event type, check one, set compatibility modes.
    Schema {
        #[command(subcommand)]
        cmd: schema::SchemaCmd,
    },
    /// API tokens: create (with a role and a tenant), list, revoke.
    Token {
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
}

/// The API token the verbs send: `--token`, `RUNNEL_TOKEN`, else `--token-file`'s contents.
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// A client of the admin API at `addr`, with the token.
pub fn admin(addr: impl std::fmt::Display) -> runnel_client::admin::Admin {
    let admin = runnel_client::admin::Admin::new(addr);
    match TOKEN.get().cloned().flatten() {
        Some(t) => admin.with_token(t),
        None => admin,
    }
}

/// The API token, if one was given or found.
pub fn token() -> Option<String> {
    TOKEN.get().cloned().flatten()
}

/// The allocator: mimalloc keeps freed buffers for reuse instead of giving multi-megabyte ones
/// back to the kernel and faulting them in again (docs/DECISIONS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = try_main() {
        eprintln!("runnel: error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs `f` to completion on a multi-threaded runtime.
fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn try_main() -> anyhow::Result<()> {
    let matches = with_env_names(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let found = cli.token.clone().or_else(|| {
        std::fs::read_to_string(&cli.token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let _ = TOKEN.set(found);
    match cli.cmd {
        Cmd::Dev(args) => {
            telemetry::init_logging();
            block_on(dev::run(args, shutdown_signal()))
        }
        Cmd::Broker { args } => {
            telemetry::init_logging();
            let cfg = args.load()?;
            block_on(async {
                let broker =
                    runnel_broker::start(cfg, std::sync::Arc::new(runnel_segment::FsStorage))
                        .await?;
                shutdown_signal().await;
                tracing::info!("broker shutting down");
                broker.shutdown().await;
                Ok(())
            })
        }
        Cmd::Agent { cmd: Some(cmd), .. } => block_on(agent::run(cmd)),
        Cmd::Agent { cmd: None, args } => {
            telemetry::init_logging();
            let cfg = args.load()?;
            block_on(runnel_agent::run(cfg, shutdown_signal()))
        }
        Cmd::Log { cmd } => block_on(log::run(cmd)),
        Cmd::Plugin { cmd } => plugin::run(cmd),
        Cmd::Agg { cmd } => block_on(agg::run(cmd)),
        Cmd::Archive { cmd } => block_on(archive::run(cmd)),
        Cmd::Bench { mut cmd } => {
            match &mut cmd {
                runnel_loadgen::BenchCmd::Broker(a) => a.token = token(),
                runnel_loadgen::BenchCmd::Ingest(a) => a.token = token(),
            }
            block_on(runnel_loadgen::main(cmd))
        }
        Cmd::Query(args) => block_on(query::run(args, &mut std::io::stdout().lock())),
        Cmd::Report { cmd } => block_on(report::run(cmd)),
        Cmd::Token { cmd } => block_on(token::run(cmd)),
        Cmd::Schema { cmd } => block_on(schema::run(cmd)),
        Cmd::Dlq { cmd } => block_on(dlq::run(cmd)),
        Cmd::Dq { cmd } => block_on(dq::run(cmd)),
        Cmd::Erase(args) => block_on(erase::run(args)),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Prints a JSON value on one line.
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}
