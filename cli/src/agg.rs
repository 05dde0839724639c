//! `runnel agg list | read`: the windowed aggregates of a running broker.

use std::net::SocketAddr;

use clap::Subcommand;
use runnel_client::api::RowRange;

#[derive(Subcommand, Debug)]
pub enum AggCmd {
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

pub async fn run(cmd: AggCmd) -> anyhow::Result<()> {
    match cmd {
        AggCmd::List { admin_addr } => {
            let list = crate::admin(admin_addr).aggregates().await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        AggCmd::Read {
            name,
            from,
            to,
            limit,
            admin_addr,
        } => {
            let mut out = std::io::stdout().lock();
            let range = RowRange { from, to, limit };
            crate::admin(admin_addr)
                .agg_rows_to(&name, &range, &mut out)
                .await?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
    }
}
