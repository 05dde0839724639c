//! `runnel log stats | read`: what a running broker's log (and its side topics) holds.

use std::net::SocketAddr;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum LogCmd {
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

pub async fn run(cmd: LogCmd) -> anyhow::Result<()> {
    match cmd {
        LogCmd::Stats { admin_addr } => {
            crate::print_json(&crate::admin(admin_addr).log_stats().await?)
        }
        LogCmd::Read {
            admin_addr,
            from,
            limit,
            topic,
        } => {
            let mut out = std::io::stdout().lock();
            crate::admin(admin_addr)
                .log_read_to(&topic, from, limit, &mut out)
                .await?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
    }
}
