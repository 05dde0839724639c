//! `runnel-agent`: the edge collector binary.

use clap::{CommandFactory, FromArgMatches, Parser};
use runnel_agent::AgentConfig;
use runnel_config::flags::{Flags, with_env_names};
use runnel_config::telemetry;

/// Runnel edge collector: accepts events over HTTP, spools them durably, ships them to the
/// broker over QUIC.
#[derive(Parser, Debug)]
#[command(name = "runnel-agent", version)]
struct Cli {
    #[command(flatten)]
    args: Flags<AgentConfig>,
}

/// The allocator: mimalloc keeps freed buffers for reuse instead of giving multi-megabyte ones
/// back to the kernel and faulting them in again (docs/DECISIONS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = try_main() {
        eprintln!("runnel-agent: error: {e:#}");
        std::process::exit(1);
    }
}

fn try_main() -> anyhow::Result<()> {
    let matches = with_env_names(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    telemetry::init_logging();
    let cfg = cli.args.load()?;
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(runnel_agent::run(cfg, shutdown_signal()))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
