//! `runnel plugin …`: the author's loop without a broker (`new`, `build`, `test`: [`author`])
//! and the operator's verbs against a running broker (`deploy`, `list`, `pause`, `resume`,
//! `remove`, through `runnel-client`).

pub mod author;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use runnel_client::api::Deploy;

use crate::{block_on, print_json};
use author::Manifest;

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
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
        /// Aggregators: compute this version over the history first (`all`, or the windows
        /// from an RFC 3339 time on) while the active one keeps serving, and swap it in when it
        /// reaches the live offset. Enrichers (deployed already): this version runs at once,
        /// and the chain replays the events from that time on (or `all`) into
        /// `enriched_events`, replacing their rows in one commit. Progress in `runnel plugin
        /// list`.
        #[arg(long, value_name = "all|RFC3339")]
        backfill_from: Option<String>,
        /// Deploy an aggregator for this tenant: it is given that tenant's events only and its
        /// table is that tenant's (an operator's token; a tenant's token deploys for its own
        /// tenant without it). Without it an operator's plugin is global.
        #[arg(long)]
        tenant: Option<String>,
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

/// Runs a `runnel plugin` verb.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::New {
            name,
            kind,
            lang,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            author::new_project(&dir, &name, &kind, &lang)?;
            println!("{}", dir.display());
            eprintln!(
                "created {kind} plugin {name} in {d}\nnext: runnel plugin build {d} && runnel plugin test <the .wasm> --input {d}/events.ndjson",
                d = dir.display()
            );
            Ok(())
        }
        PluginCmd::Build { dir } => {
            let wasm = author::build(&dir)?;
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
            let s = author::test(&wasm, &input, params, limits, declared, &mut out)?;
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
            backfill_from,
            tenant,
            manifest,
            admin_addr,
        } => {
            let m = find_manifest(&wasm, manifest)?;
            let name = name
                .or_else(|| m.as_ref().map(|m| m.name.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--name is required when there is no plugin.toml")
                })?;
            let limits = m.as_ref().map(|m| m.limits).unwrap_or_default();
            let d = Deploy {
                version: version.or_else(|| m.as_ref().and_then(|m| m.version.clone())),
                policy: policy.or_else(|| m.as_ref().and_then(|m| m.policy.clone())),
                params: merged_params(m.as_ref(), params),
                deadline_ms: deadline_ms.or(limits.deadline_ms),
                memory_bytes_max: memory_bytes_max.or(limits.memory_bytes_max),
                fuel_per_call: limits.fuel_per_call,
                capabilities: m.iter().flat_map(|m| m.capabilities.clone()).collect(),
                backfill_from,
                tenant,
            };
            let body =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            block_on(async { print_json(&crate::admin(admin_addr).deploy(&name, body, &d).await?) })
        }
        PluginCmd::List { admin_addr } => {
            block_on(async { print_json(&crate::admin(admin_addr).plugins().await?) })
        }
        PluginCmd::Pause { name, admin_addr } => {
            block_on(async { print_json(&crate::admin(admin_addr).pause(&name).await?) })
        }
        PluginCmd::Resume { name, admin_addr } => {
            block_on(async { print_json(&crate::admin(admin_addr).resume(&name).await?) })
        }
        PluginCmd::Remove { name, admin_addr } => block_on(async {
            crate::admin(admin_addr).remove(&name).await?;
            print_json(&serde_json::json!({ "removed": name }))
        }),
    }
}
