//! `runnel schema register | list | show | check | mode`: the schema registry of a running
//! broker (`docs/schemas.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SchemaCmd {
    /// Register a JSON Schema (a file) for an event type's `properties` as its next version;
    /// refused, with every violation, when it breaks the type's compatibility mode.
    Register {
        /// The event type.
        event_type: String,
        /// The schema (JSON; drafts 2020-12 and 7).
        file: PathBuf,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print a JSON array: each event type with its mode and versions.
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print an event type's schemas (JSON), or one version's schema.
    Show {
        /// The event type.
        event_type: String,
        /// Only this version's schema.
        #[arg(long)]
        version: Option<u32>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Say whether a schema could be registered, and every violation if not, without
    /// registering it (exit status 1 when it could not).
    Check {
        /// The event type.
        event_type: String,
        /// The schema.
        file: PathBuf,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print or set a compatibility mode: an event type's with `--type`, else the registry's
    /// default. MODE: BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL,
    /// FULL_TRANSITIVE or NONE.
    Mode {
        /// The mode to set; unset: print the current one.
        mode: Option<String>,
        /// The event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

fn read_schema(file: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
}

/// Runs one verb.
pub async fn run(cmd: SchemaCmd) -> anyhow::Result<()> {
    match cmd {
        SchemaCmd::Register {
            event_type,
            file,
            admin_addr,
        } => {
            let schema = read_schema(&file)?;
            let got = crate::admin(admin_addr)
                .schema_register(&event_type, &schema)
                .await?;
            println!("{}", serde_json::to_string_pretty(&got)?);
        }
        SchemaCmd::List { admin_addr } => {
            let list = crate::admin(admin_addr).schemas().await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        SchemaCmd::Show {
            event_type,
            version,
            admin_addr,
        } => {
            let info = crate::admin(admin_addr).schema(&event_type).await?;
            match version {
                None => println!("{}", serde_json::to_string_pretty(&info)?),
                Some(v) => {
                    let found =
                        info.versions
                            .iter()
                            .find(|x| x.version == v)
                            .with_context(|| {
                                let known: Vec<String> = info
                                    .versions
                                    .iter()
                                    .map(|x| x.version.to_string())
                                    .collect();
                                format!(
                                    "--version: {event_type} has no version {v} (it has {})",
                                    known.join(", ")
                                )
                            })?;
                    println!("{}", serde_json::to_string_pretty(&found.schema)?);
                }
            }
        }
        SchemaCmd::Check {
            event_type,
            file,
            admin_addr,
        } => {
            let schema = read_schema(&file)?;
            let c = crate::admin(admin_addr)
                .schema_check(&event_type, &schema)
                .await?;
            if c.existing {
                println!("{event_type}: this is v{} already", c.version);
            } else if c.compatible {
                println!(
                    "{event_type}: compatible ({}); it would be v{}",
                    c.mode, c.version
                );
            } else {
                println!(
                    "{event_type}: incompatible ({}); {} violation{}:",
                    c.mode,
                    c.violations.len(),
                    if c.violations.len() == 1 { "" } else { "s" }
                );
                for v in &c.violations {
                    println!("  {}", v.message);
                }
                std::process::exit(1);
            }
        }
        SchemaCmd::Mode {
            mode,
            event_type,
            admin_addr,
        } => {
            let admin = crate::admin(admin_addr);
            let mode = match (mode, &event_type) {
                (Some(m), t) => admin.schema_set_mode(t.as_deref(), &m).await?.mode,
                (None, Some(t)) => admin.schema(t).await?.mode,
                (None, None) => admin.schema_default_mode().await?.mode,
            };
            println!("{mode}");
        }
    }
    Ok(())
}
