//! `runnel report list | deploy | run | status | get | history`: the reports of a running
//! broker (`docs/reports.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use runnel_client::api::{RunRequest, RunStatus};

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Print a JSON array: each report's name, version, schedule, parameters and last run.
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Deploy a report definition (a TOML file); a new version when the text changed.
    Deploy {
        /// The definition.
        file: PathBuf,
        /// The tenant it is for: its SQL sees that tenant's data only and its outputs go under
        /// `tenants/TENANT/` (an operator's token; a tenant's token deploys for its own).
        #[arg(long)]
        tenant: Option<String>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Queue a run and print its id (JSON); with `--wait`, wait for its end and print it.
    Run {
        /// The report.
        name: String,
        /// A parameter, `NAME=VALUE` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// `final` (wait until the period's windows are final) or `none` (run now, marked
        /// partial if some are not); unset: the definition's `wait_for`.
        #[arg(long)]
        wait_for: Option<String>,
        /// Where the finished run is announced (overrides the definition's).
        #[arg(long)]
        webhook_url: Option<String>,
        /// A key that makes a repeat of this request return the first run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the run to end and print it; fail if it failed.
        #[arg(long)]
        wait: bool,
        /// Longest `--wait`, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print a run (JSON): status, timings, attempts, rows, the output's link, the webhook.
    Status {
        /// The run's id.
        id: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Write a run's output to a file (or to standard output).
    Get {
        /// The run's id.
        id: String,
        /// The file to write; unset: standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print a report's runs, newest first (JSON array).
    History {
        /// The report.
        name: String,
        /// Most runs to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: a parameter is NAME=VALUE")),
    }
}

pub async fn run(cmd: ReportCmd) -> anyhow::Result<()> {
    match cmd {
        ReportCmd::List { admin_addr } => {
            let list = crate::admin(admin_addr).reports().await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        ReportCmd::Deploy {
            file,
            tenant,
            admin_addr,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = report_name(&text).with_context(|| format!("{}", file.display()))?;
            let info = crate::admin(admin_addr)
                .report_deploy(&name, text, tenant.as_deref())
                .await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        ReportCmd::Run {
            name,
            params,
            wait_for,
            webhook_url,
            idempotency_key,
            wait,
            wait_s,
            admin_addr,
        } => {
            let admin = crate::admin(admin_addr);
            let req = RunRequest {
                // The broker types each value by the parameter's declared type.
                params: params
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                webhook_url,
                wait_for,
            };
            let accepted = admin
                .report_run(&name, &req, idempotency_key.as_deref())
                .await?;
            if !wait {
                println!("{}", serde_json::to_string_pretty(&accepted)?);
                return Ok(());
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
            loop {
                let run = admin.report_status(&accepted.id).await?;
                match run.status {
                    RunStatus::Succeeded => {
                        println!("{}", serde_json::to_string_pretty(&run)?);
                        return Ok(());
                    }
                    RunStatus::Failed => {
                        println!("{}", serde_json::to_string_pretty(&run)?);
                        anyhow::bail!(
                            "run {} failed after {} attempts: {}",
                            run.id,
                            run.attempts,
                            run.errors.last().map_or("", String::as_str)
                        );
                    }
                    RunStatus::Queued | RunStatus::Running => {}
                }
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "run {} is still {:?} after {wait_s} s (--wait-s){}",
                        run.id,
                        run.status,
                        run.waiting
                            .map(|w| format!(": waiting for {w}"))
                            .unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ReportCmd::Status { id, admin_addr } => {
            let run = crate::admin(admin_addr).report_status(&id).await?;
            println!("{}", serde_json::to_string_pretty(&run)?);
        }
        ReportCmd::Get {
            id,
            output,
            admin_addr,
        } => {
            let admin = crate::admin(admin_addr);
            let run = admin.report_status(&id).await?;
            let Some(out) = run.output else {
                anyhow::bail!("run {id} has no output: it is {:?}", run.status);
            };
            let bytes = admin.report_output(&out.link).await?;
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?,
            }
        }
        ReportCmd::History {
            name,
            limit,
            admin_addr,
        } => {
            let runs = crate::admin(admin_addr)
                .report_history(&name, limit)
                .await?;
            println!("{}", serde_json::to_string_pretty(&runs)?);
        }
    }
    Ok(())
}

/// The `name` of a definition's TOML (the broker checks the rest).
fn report_name(text: &str) -> anyhow::Result<String> {
    let table: toml::Table = toml::from_str(text).context("not TOML")?;
    match table.get("name") {
        Some(toml::Value::String(s)) => Ok(s.clone()),
        _ => anyhow::bail!("name: missing (a definition starts with name = \"…\")"),
    }
}
