//! `runnel token create | list | revoke`: the broker's API tokens (`docs/SECURITY.md`). Needs
//! an admin token.

use std::net::SocketAddr;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token and print it (JSON, with its id): the only time it is shown.
    Create {
        /// `reader` (reads and queries), `deployer` (also plugins and reports) or `admin`
        /// (also tokens and agents).
        #[arg(long)]
        role: String,
        /// The tenant the token belongs to; unset: every tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Who or what it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print a JSON array of the tokens: id, role, tenant, description, creation time.
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Revoke a token by its id: it is refused from the next request on.
    Revoke {
        /// The token's id (`runnel token list`).
        id: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

pub async fn run(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            role,
            tenant,
            description,
            admin_addr,
        } => crate::print_json(
            &crate::admin(admin_addr)
                .token_create(&role, tenant.as_deref(), &description)
                .await?,
        ),
        TokenCmd::List { admin_addr } => {
            crate::print_json(&crate::admin(admin_addr).tokens().await?)
        }
        TokenCmd::Revoke { id, admin_addr } => {
            crate::print_json(&crate::admin(admin_addr).token_revoke(&id).await?)
        }
    }
}
