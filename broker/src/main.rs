//! `runnel`: the broker and the operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runnel_agent::config::with_env_names;
use runnel_agent::{AgentArgs, AgentConfig, telemetry};
use runnel_broker::{BrokerArgs, BrokerConfig};

/// Runnel: event-analytics pipeline — broker and operator tool.
#[derive(Parser, Debug)]
#[command(name = "runnel", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a broker and an agent on one data dir with the default ports (the quickstart).
    Dev {
        /// Data directory for both (`DIR/broker`, `DIR/agent`).
        #[arg(long = "dir", default_value = ".runnel-dev")]
        dir: PathBuf,
        /// TOML file with broker settings (see docs/CONFIG.md); `data_dir` is set by `--dir`.
        #[arg(long)]
        broker_config: Option<PathBuf>,
        /// TOML file with agent settings (see docs/CONFIG.md); `data_dir` is set by `--dir`.
        #[arg(long)]
        agent_config: Option<PathBuf>,
    },
    /// Run the broker.
    Broker {
        #[command(flatten)]
        args: BrokerArgs,
    },
    /// Run an agent (the same as the `runnel-agent` binary).
    Agent {
        #[command(flatten)]
        args: AgentArgs,
    },
    /// Inspect a running broker's log.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// Print one JSON object: records, segments, bytes, by_event_type, offsets.
    Stats {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print stored events as NDJSON, one per line, with their offsets.
    Read {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("runnel: error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn try_main() -> anyhow::Result<()> {
    let matches = with_env_names(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.cmd {
        Cmd::Dev {
            dir,
            broker_config,
            agent_config,
        } => {
            telemetry::init_logging();
            let broker: BrokerConfig = match broker_config {
                Some(p) => runnel_agent::config::from_file(&p)?,
                None => BrokerConfig::default(),
            };
            let agent: AgentConfig = match agent_config {
                Some(p) => runnel_agent::config::from_file(&p)?,
                None => AgentConfig::default(),
            };
            let broker = BrokerConfig {
                data_dir: dir.join("broker"),
                ..broker
            };
            let agent = AgentConfig {
                data_dir: dir.join("agent"),
                ..agent
            };
            runtime()?.block_on(runnel_broker::dev::run(
                dir,
                broker,
                agent,
                shutdown_signal(),
            ))
        }
        Cmd::Broker { args } => {
            telemetry::init_logging();
            let cfg = BrokerConfig::load(&args)?;
            runtime()?.block_on(async {
                let broker = runnel_broker::start(cfg, Arc::new(runnel_segment::FsStorage)).await?;
                shutdown_signal().await;
                tracing::info!("broker shutting down");
                broker.shutdown().await;
                Ok(())
            })
        }
        Cmd::Agent { args } => {
            telemetry::init_logging();
            let cfg = AgentConfig::load(&args)?;
            runtime()?.block_on(runnel_agent::run(cfg, shutdown_signal()))
        }
        Cmd::Log { cmd } => runtime()?.block_on(log_cmd(cmd)),
    }
}

async fn get(url: &str) -> anyhow::Result<reqwest::Response> {
    let resp = reqwest::get(url).await.with_context(|| {
        format!("cannot reach the broker admin API at {url} (is the broker running? --admin-addr)")
    })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url}: {status}: {body}");
    }
    Ok(resp)
}

async fn log_cmd(cmd: LogCmd) -> anyhow::Result<()> {
    use std::io::Write;
    match cmd {
        LogCmd::Stats { admin_addr } => {
            let v: serde_json::Value = get(&format!("http://{admin_addr}/v1/log/stats"))
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string(&v)?);
        }
        LogCmd::Read {
            admin_addr,
            from,
            limit,
        } => {
            let mut resp = get(&format!(
                "http://{admin_addr}/v1/log/read?from={from}&limit={limit}"
            ))
            .await?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = resp.chunk().await? {
                out.write_all(&chunk)?;
            }
            out.flush()?;
        }
    }
    Ok(())
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
