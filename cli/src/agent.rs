//! `runnel agent enroll | list | revoke`: agents' certificates (`docs/SECURITY.md`). Needs an
//! admin token.
//!
//! `enroll` asks the broker for a certificate and key (subject `CN=NAME, O=TENANT`, signed by
//! its client CA) and writes them to `--out`: `agent.pem`, `agent.key` (mode 0600) and, when the
//! broker knows it, `ca.pem`, then prints the flags that start the agent with them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Issue a certificate and key for an agent and write them to --out.
    Enroll {
        /// The agent's name: the `agent_id` its batches carry.
        #[arg(long)]
        name: String,
        /// Its tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Directory to write `agent.pem`, `agent.key` and `ca.pem` to (made if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Print a JSON array of the agents the broker knows: tenant, certificates, revocations.
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Revoke every certificate of an agent: refused from its next connection attempt, its
    /// open connections closed.
    Revoke {
        /// The agent's name.
        name: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

pub async fn run(cmd: AgentCmd) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Enroll {
            name,
            tenant,
            out,
            admin_addr,
        } => {
            let e = crate::admin(admin_addr)
                .agent_enroll(&name, &tenant)
                .await?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (cert, key, ca) = (
                out.join("agent.pem"),
                out.join("agent.key"),
                out.join("ca.pem"),
            );
            runnel_broker::state::write_private(&key, e.key_pem.as_bytes())?;
            std::fs::write(&cert, &e.cert_pem)
                .with_context(|| format!("writing {}", cert.display()))?;
            if let Some(pem) = &e.ca_pem {
                std::fs::write(&ca, pem).with_context(|| format!("writing {}", ca.display()))?;
            }
            eprintln!(
                "enrolled agent {name:?} of tenant {tenant:?} (certificate sha256 {}, valid until {})\nstart it with: runnel-agent --tls-cert {} --tls-key {}{}",
                e.sha256,
                e.not_after,
                cert.display(),
                key.display(),
                if e.ca_pem.is_some() {
                    format!(" --broker-ca {}", ca.display())
                } else {
                    String::new()
                }
            );
            crate::print_json(&serde_json::json!({
                "name": e.name,
                "tenant": e.tenant,
                "sha256": e.sha256,
                "not_after": e.not_after,
                "cert": cert,
                "key": key,
                "ca": e.ca_pem.as_ref().map(|_| ca),
            }))
        }
        AgentCmd::List { admin_addr } => {
            crate::print_json(&crate::admin(admin_addr).agents().await?)
        }
        AgentCmd::Revoke { name, admin_addr } => {
            crate::print_json(&crate::admin(admin_addr).agent_revoke(&name).await?)
        }
    }
}
