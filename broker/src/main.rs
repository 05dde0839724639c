//! `runnel`: the broker and the operator CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use runnel_agent::config::with_env_names;
use runnel_agent::{AgentArgs, AgentConfig, telemetry};
use runnel_broker::plugin_cli::{self, Manifest};
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
        /// Directory with the example plugins (`pii_redact.wasm` runs at the edge,
        /// `geo_enrich.wasm` is deployed to the broker). `./dev.sh` builds them and passes it.
        #[arg(long)]
        plugins_dir: Option<PathBuf>,
        /// Generate a stream into the agent: `fintech`, `ecommerce` or `off`.
        #[arg(long, default_value = "fintech")]
        generate: String,
        /// Events a second the generator posts.
        #[arg(long, default_value_t = 200)]
        rate: u32,
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
    /// Write, build, test and deploy plugins.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Windowed aggregates: list them, read their rows.
    Agg {
        #[command(subcommand)]
        cmd: AggCmd,
    },
    /// Load benchmark: offer a fixed rate (open loop) or as much as it takes (closed loop) to
    /// an agent (`ingest`) or a broker (`broker`); prints percentiles, writes JSON and an HTML
    /// report.
    Bench {
        #[command(subcommand)]
        cmd: runnel_loadgen::BenchCmd,
    },
    /// Run SQL against a running broker over Flight SQL and print the result.
    Query {
        /// The SQL, e.g. "SELECT * FROM events_per_type ORDER BY window_start DESC LIMIT 10".
        /// Tables: every aggregate, `events`, `dead_letters`, `late_events`.
        sql: String,
        /// How to print the rows.
        #[arg(long, value_enum, default_value = "table")]
        format: runnel_broker::query_cli::Format,
        /// The broker's Flight address.
        #[arg(long, default_value = "127.0.0.1:8712")]
        flight_addr: String,
        /// A token of the broker's flight_tokens (default: the one `runnel dev` wrote to
        /// `--token-file`).
        #[arg(long, env = "RUNNEL_FLIGHT_TOKEN", hide_env_values = true)]
        flight_token: Option<String>,
        /// Where `runnel dev` writes its Flight token.
        #[arg(long, default_value = ".runnel-dev/flight-token")]
        token_file: PathBuf,
        /// PEM file of the CA of the broker's Flight certificate (the broker's
        /// flight_tls_cert when self-signed): connects with TLS.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AggCmd {
    /// Print a JSON array: each aggregate's name, window, columns, watermark and lag.
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print an aggregate's rows as NDJSON (window_start, window_end, is_final, dimensions,
    /// measures), final and open, in window order.
    Read {
        /// The aggregate (its plugin's name).
        name: String,
        /// Only windows starting at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only windows starting before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Most rows to print (at most the broker's log_read_limit_max).
        #[arg(long)]
        limit: Option<usize>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCmd {
    /// Create a plugin project that builds as it is and keeps every event.
    New {
        /// Plugin name ([a-z][a-z0-9_-]{0,63}).
        name: String,
        /// `enrich` or `aggregate` (Rust only).
        #[arg(long, default_value = "enrich")]
        kind: String,
        /// `rust` or `python` (componentize-py).
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the plugin in DIR and print the component's path.
    Build {
        /// The project directory (with plugin.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a component on an NDJSON file in the broker's host; prints one NDJSON line per
    /// input line (the event, or the drop reason, failure or validation error).
    Test {
        /// The component.
        wasm: PathBuf,
        /// NDJSON events.
        #[arg(long)]
        input: PathBuf,
        /// `init` parameter KEY=VALUE (repeatable; overrides the manifest's).
        #[arg(long = "param", value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// Manifest (default: the first plugin.toml above the component, if any).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Deploy a component to a running broker (a new version if the plugin exists).
    Deploy {
        /// The component.
        wasm: PathBuf,
        /// Plugin name (default: the manifest's name).
        #[arg(long)]
        name: Option<String>,
        /// Version label (default: the manifest's version, else 1, 2, …).
        #[arg(long)]
        version: Option<String>,
        /// `init` parameter KEY=VALUE (repeatable; overrides the manifest's).
        #[arg(long = "param", value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// While paused: `hold` events in the log (default) or `skip` the plugin.
        #[arg(long)]
        policy: Option<String>,
        /// Longest call, in milliseconds (default: the manifest's, else the broker's ceiling).
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Memory cap per instance, in bytes (default: the manifest's, else the broker's).
        #[arg(long)]
        memory_bytes_max: Option<u64>,
        /// Manifest (default: the first plugin.toml above the component, if any).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print the deployed plugins as JSON (name, version, kind, status, counts, last error, lag).
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Pause a plugin (its policy decides what happens to events meanwhile).
    Pause {
        /// Plugin name.
        name: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Resume a paused plugin.
    Resume {
        /// Plugin name.
        name: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Remove a plugin from the pipeline.
    Remove {
        /// Plugin name.
        name: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
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
        /// `events` (the log), `dead_letters` or `late_events`.
        #[arg(long, default_value = "events")]
        topic: String,
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
            plugins_dir,
            generate,
            rate,
        } => {
            let gen_cfg = runnel_broker::dev::Generate {
                scenario: runnel_broker::dev::parse_scenario(&generate)?,
                rate,
            };
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
                plugins_dir,
                gen_cfg,
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
        Cmd::Plugin { cmd } => plugin_cmd(cmd),
        Cmd::Agg { cmd } => runtime()?.block_on(agg_cmd(cmd)),
        Cmd::Bench { cmd } => runtime()?.block_on(runnel_loadgen::main(cmd)),
        Cmd::Query {
            sql,
            format,
            flight_addr,
            flight_token,
            token_file,
            tls_ca,
        } => {
            let q = runnel_broker::query_cli::Query {
                sql,
                flight_addr,
                token: flight_token,
                token_file,
                tls_ca,
                format,
            };
            runtime()?.block_on(runnel_broker::query_cli::run(
                &q,
                &mut std::io::stdout().lock(),
            ))
        }
    }
}

/// The manifest named, or the first `plugin.toml` in a directory above `wasm`.
fn find_manifest(wasm: &Path, named: Option<PathBuf>) -> anyhow::Result<Option<Manifest>> {
    if let Some(p) = named {
        return Manifest::read(&p).map(Some);
    }
    let abs = std::fs::canonicalize(wasm).unwrap_or_else(|_| wasm.to_path_buf());
    for dir in abs.ancestors().skip(1) {
        let p = dir.join("plugin.toml");
        if p.is_file() {
            eprintln!("using manifest {}", p.display());
            return Manifest::read(&p).map(Some);
        }
    }
    Ok(None)
}

/// Manifest parameters with the command line's on top.
fn merged_params(m: Option<&Manifest>, cli: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut params: std::collections::BTreeMap<String, String> = m
        .map(|m| m.params().into_iter().collect())
        .unwrap_or_default();
    params.extend(cli);
    params.into_iter().collect()
}

fn plugin_cmd(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::New {
            name,
            kind,
            lang,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            plugin_cli::new_project(&dir, &name, &kind, &lang)?;
            println!("{}", dir.display());
            eprintln!(
                "created {kind} plugin {name} in {d}\nnext: runnel plugin build {d} && runnel plugin test <the .wasm> --input {d}/events.ndjson",
                d = dir.display()
            );
            Ok(())
        }
        PluginCmd::Build { dir } => {
            let wasm = plugin_cli::build(&dir)?;
            println!("{}", wasm.display());
            Ok(())
        }
        PluginCmd::Test {
            wasm,
            input,
            params,
            manifest,
        } => {
            let m = find_manifest(&wasm, manifest)?;
            let defaults = runnel_host::Limits::default();
            let limits = runnel_host::Limits {
                deadline: m
                    .as_ref()
                    .and_then(|m| m.limits.deadline_ms)
                    .map_or(defaults.deadline, std::time::Duration::from_millis),
                memory_bytes_max: m
                    .as_ref()
                    .and_then(|m| m.limits.memory_bytes_max)
                    .map_or(defaults.memory_bytes_max, |b| b as usize),
                fuel_per_call: m.as_ref().and_then(|m| m.limits.fuel_per_call),
                capabilities: runnel_host::Capabilities::parse(
                    m.iter()
                        .flat_map(|m| m.capabilities.iter().map(String::as_str)),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
                ..defaults
            };
            let params = merged_params(m.as_ref(), params);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let declared = m.as_ref().and_then(|m| m.aggregate.as_ref());
            let s = plugin_cli::test(&wasm, &input, params, limits, declared, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!(
                "{} lines: {} passed, {} dropped, {} failed, {} invalid",
                s.lines, s.passed, s.dropped, s.failed, s.invalid
            );
            Ok(())
        }
        PluginCmd::Deploy {
            wasm,
            name,
            version,
            params,
            policy,
            deadline_ms,
            memory_bytes_max,
            manifest,
            admin_addr,
        } => {
            let m = find_manifest(&wasm, manifest)?;
            let name = name
                .or_else(|| m.as_ref().map(|m| m.name.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--name is required when there is no plugin.toml")
                })?;
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(v) = version.or_else(|| m.as_ref().and_then(|m| m.version.clone())) {
                query.append_pair("version", &v);
            }
            if let Some(p) = policy.or_else(|| m.as_ref().and_then(|m| m.policy.clone())) {
                query.append_pair("policy", &p);
            }
            for (k, v) in merged_params(m.as_ref(), params) {
                query.append_pair("param", &format!("{k}={v}"));
            }
            let limits = m.as_ref().map(|m| m.limits).unwrap_or_default();
            if let Some(d) = deadline_ms.or(limits.deadline_ms) {
                query.append_pair("deadline_ms", &d.to_string());
            }
            if let Some(b) = memory_bytes_max.or(limits.memory_bytes_max) {
                query.append_pair("memory_bytes_max", &b.to_string());
            }
            if let Some(f) = limits.fuel_per_call {
                query.append_pair("fuel_per_call", &f.to_string());
            }
            for c in m.iter().flat_map(|m| m.capabilities.iter()) {
                query.append_pair("capability", c);
            }
            let body =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let url = format!("http://{admin_addr}/v1/plugins/{name}?{}", query.finish());
            runtime()?.block_on(async {
                let resp = reqwest::Client::new().put(&url).body(body).send().await.with_context(|| {
                    format!("cannot reach the broker admin API at {admin_addr} (is the broker running? --admin-addr)")
                })?;
                print_json_response(resp).await
            })
        }
        PluginCmd::List { admin_addr } => runtime()?.block_on(async {
            let resp = get(&format!("http://{admin_addr}/v1/plugins")).await?;
            print_json_response(resp).await
        }),
        PluginCmd::Pause { name, admin_addr } => {
            plugin_post(format!("http://{admin_addr}/v1/plugins/{name}/pause"))
        }
        PluginCmd::Resume { name, admin_addr } => {
            plugin_post(format!("http://{admin_addr}/v1/plugins/{name}/resume"))
        }
        PluginCmd::Remove { name, admin_addr } => runtime()?.block_on(async {
            let url = format!("http://{admin_addr}/v1/plugins/{name}");
            let resp = reqwest::Client::new()
                .delete(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach the broker admin API at {admin_addr}"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                anyhow::bail!("{url}: {status}: {}", resp.text().await.unwrap_or_default());
            }
            println!("{{\"removed\":{}}}", serde_json::to_string(&name)?);
            Ok(())
        }),
    }
}

fn plugin_post(url: String) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach the broker admin API at {url}"))?;
        print_json_response(resp).await
    })
}

/// Prints a JSON answer on one line, or fails with the broker's error.
async fn print_json_response(resp: reqwest::Response) -> anyhow::Result<()> {
    let status = resp.status();
    let url = resp.url().to_string();
    let text = resp.text().await?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        anyhow::bail!("{url}: {status}: {msg}");
    }
    println!("{}", text.trim_end());
    Ok(())
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

/// Streams a response body (NDJSON) to stdout as it arrives.
async fn to_stdout(mut resp: reqwest::Response) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}

async fn log_cmd(cmd: LogCmd) -> anyhow::Result<()> {
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
            topic,
        } => {
            let topic: String = form_urlencoded::byte_serialize(topic.as_bytes()).collect();
            let resp = get(&format!(
                "http://{admin_addr}/v1/log/read?from={from}&limit={limit}&topic={topic}"
            ))
            .await?;
            to_stdout(resp).await?;
        }
    }
    Ok(())
}

async fn agg_cmd(cmd: AggCmd) -> anyhow::Result<()> {
    match cmd {
        AggCmd::List { admin_addr } => {
            let v: serde_json::Value = get(&format!("http://{admin_addr}/v1/aggregates"))
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AggCmd::Read {
            name,
            from,
            to,
            limit,
            admin_addr,
        } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("from", from),
                ("to", to),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            let resp = get(&format!(
                "http://{admin_addr}/v1/aggregates/{name}/rows?{}",
                q.finish()
            ))
            .await?;
            to_stdout(resp).await?;
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
