//! `runnel dq list | set | remove`: data-quality alarms per event type (volume per hour,
//! freshness, completeness), computed by the broker over the log (`docs/schemas.md`).

use std::net::SocketAddr;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum DqCmd {
    /// Print every checked event type with each check's state (JSON).
    List {
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Set an event type's checks (they replace its earlier ones).
    Set {
        /// The event type.
        event_type: String,
        /// Fewest events expected in the last hour.
        #[arg(long)]
        volume_per_hour_min: Option<u64>,
        /// Most events expected in the last hour.
        #[arg(long)]
        volume_per_hour_max: Option<u64>,
        /// An alarm when no event came for this many seconds.
        #[arg(long)]
        freshness_secs: Option<u64>,
        /// The property completeness is about (with --missing-share-max).
        #[arg(long)]
        property: Option<String>,
        /// Largest share (0–1) of the last hour's events that may lack --property.
        #[arg(long)]
        missing_share_max: Option<f64>,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
    /// Remove an event type's checks.
    Remove {
        /// The event type.
        event_type: String,
        /// The broker's admin address.
        #[arg(long, default_value = "127.0.0.1:8713")]
        admin_addr: SocketAddr,
    },
}

/// Runs one verb.
pub async fn run(cmd: DqCmd) -> anyhow::Result<()> {
    match cmd {
        DqCmd::List { admin_addr } => {
            let list = crate::admin(admin_addr).dq_list().await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        DqCmd::Set {
            event_type,
            volume_per_hour_min,
            volume_per_hour_max,
            freshness_secs,
            property,
            missing_share_max,
            admin_addr,
        } => {
            let mut checks = serde_json::Map::new();
            let mut put = |k: &str, v: serde_json::Value| {
                if !v.is_null() {
                    checks.insert(k.to_string(), v);
                }
            };
            put("volume_per_hour_min", volume_per_hour_min.into());
            put("volume_per_hour_max", volume_per_hour_max.into());
            put("freshness_secs", freshness_secs.into());
            put("property", property.into());
            put("missing_share_max", missing_share_max.into());
            let state = crate::admin(admin_addr)
                .dq_set(&event_type, &serde_json::Value::Object(checks))
                .await?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        DqCmd::Remove {
            event_type,
            admin_addr,
        } => {
            crate::admin(admin_addr).dq_remove(&event_type).await?;
        }
    }
    Ok(())
}
