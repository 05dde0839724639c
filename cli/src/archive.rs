//! `runnel archive status`: the archive's tables (Delta versions, files, bytes, partitions,
//! lag behind the log) of a running broker.

use std::net::SocketAddr;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ArchiveCmd {
    /// Print JSON: the archive's URL and, per table, its Delta version, files, bytes, rows,
    /// oldest and newest `date` partition, the first log offset not archived and the lag.
    Status {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

pub async fn run(cmd: ArchiveCmd) -> anyhow::Result<()> {
    match cmd {
        ArchiveCmd::Status { admin_addr } => {
            let status = crate::admin(admin_addr).archive_status().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}
