//! `runnel erase --user-id U [--identity FIELD=VALUE]... [--wait]`: erases a user's events from
//! the broker's stores (`docs/privacy.md`); `runnel erase --status [ID]` prints a request's (or
//! every request's) progress and audit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// `runnel erase`.
#[derive(clap::Args, Debug)]
pub struct EraseArgs {
    /// The user whose events are erased.
    #[arg(long)]
    user_id: Option<String>,
    /// Another identity field the broker matches by (its `erasure_identity_fields`) and the
    /// value, `FIELD=VALUE`, e.g. `properties.email=a@example.com` (repeatable).
    #[arg(long, value_name = "FIELD=VALUE")]
    identity: Vec<String>,
    /// Wait until every store is done, then print the request.
    #[arg(long)]
    wait: bool,
    /// Print the request ID (without ID: every request) instead of making one.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "all")]
    status: Option<String>,
    /// The broker's admin address.
    #[arg(long, default_value = "127.0.0.1:8713")]
    admin_addr: SocketAddr,
}

/// Runs the verb.
pub async fn run(args: EraseArgs) -> anyhow::Result<()> {
    let admin = crate::admin(args.admin_addr);
    if let Some(which) = args.status {
        anyhow::ensure!(
            args.user_id.is_none() && args.identity.is_empty(),
            "--status prints requests; it takes no --user-id or --identity"
        );
        let out = if which == "all" {
            serde_json::to_value(admin.erasures().await?)?
        } else {
            let id: u64 = which
                .parse()
                .map_err(|_| anyhow::anyhow!("--status: {which:?} is not a request id"))?;
            serde_json::to_value(admin.erasure(id).await?)?
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut values = BTreeMap::new();
    if let Some(u) = args.user_id {
        values.insert("user_id".to_string(), u);
    }
    for kv in &args.identity {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--identity: {kv:?} is not FIELD=VALUE"))?;
        anyhow::ensure!(
            values.insert(k.to_string(), v.to_string()).is_none(),
            "--identity: {k} is named twice"
        );
    }
    anyhow::ensure!(
        !values.is_empty(),
        "name whom to erase: --user-id U or --identity FIELD=VALUE"
    );
    let mut status = admin.erase(&values).await?;
    if args.wait {
        while status.state != "done" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            status = admin.erasure(status.id).await?;
        }
    }
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
