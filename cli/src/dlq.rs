//! `runnel dlq list | show | redrive`: the dead letters of a running broker, re-driven once a
//! fix is out (`docs/schemas.md#dead-letters`).

use std::net::SocketAddr;

use clap::{Args, Subcommand};

/// What `list` and `redrive` select.
#[derive(Args, Debug)]
pub struct Filters {
    /// `plugin_error`, `plugin_timeout`, `refused`, `event_time`, or `late` (late events).
    #[arg(long)]
    kind: Option<String>,
    /// The plugin that failed.
    #[arg(long)]
    plugin: Option<String>,
    /// Events received at or after this: RFC 3339, or an age like `30m`, `2h`, `7d`.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Print the dead letters the filters select, one JSON object a line, oldest first.
    List {
        #[command(flatten)]
        filters: Filters,
        /// Most entries printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print one dead letter (JSON).
    Show {
        /// Its id (`id` in `list`).
        id: u64,
        /// A late event's id instead.
        #[arg(long)]
        late: bool,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Re-inject the selected dead letters into the pipeline at the current plugin versions,
    /// once each, and mark them re-driven; print what was done (JSON).
    Redrive {
        #[command(flatten)]
        filters: Filters,
        /// These entries only (repeatable).
        #[arg(long = "id")]
        ids: Vec<u64>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

/// Runs one verb.
pub async fn run(cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            filters,
            limit,
            admin_addr,
        } => {
            let list = crate::admin(admin_addr)
                .dlq_list(
                    filters.kind.as_deref(),
                    filters.plugin.as_deref(),
                    filters.since.as_deref(),
                    limit,
                )
                .await?;
            for e in list {
                println!("{e}");
            }
        }
        DlqCmd::Show {
            id,
            late,
            admin_addr,
        } => {
            let e = crate::admin(admin_addr).dlq_show(id, late).await?;
            println!("{}", serde_json::to_string_pretty(&e)?);
        }
        DlqCmd::Redrive {
            filters,
            ids,
            admin_addr,
        } => {
            let body = serde_json::json!({
                "kind": filters.kind,
                "plugin": filters.plugin,
                "since": filters.since,
                "ids": (!ids.is_empty()).then_some(ids),
            });
            let out = crate::admin(admin_addr).dlq_redrive(&body).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
