//! `runnel dev`: a broker and an agent in one process on one data dir, with the default ports.

use std::path::PathBuf;
use std::sync::Arc;

use runnel_agent::AgentConfig;

use crate::BrokerConfig;

/// Starts both, prints how to use them, and stops both cleanly when `stop` resolves.
pub async fn run(
    data_dir: PathBuf,
    broker: BrokerConfig,
    agent: AgentConfig,
    plugins_dir: Option<PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let example = |name: &str| -> anyhow::Result<Option<PathBuf>> {
        let Some(dir) = &plugins_dir else {
            return Ok(None);
        };
        let path = dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "--plugins-dir: {} is missing (build the plugins: cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml)",
            path.display()
        );
        Ok(Some(path))
    };
    let edge = example("pii_redact.wasm")?;
    let geo = example("geo_enrich.wasm")?;
    let mut agent = agent;
    if let Some(edge) = &edge
        && agent.edge_plugin.is_empty()
    {
        agent.edge_plugin = vec![edge.clone()];
    }
    let storage: Arc<dyn runnel_segment::Storage> = Arc::new(runnel_segment::FsStorage);
    let broker_cfg = BrokerConfig {
        data_dir: data_dir.join("broker"),
        ..broker
    };
    let broker = crate::start(broker_cfg, storage.clone()).await?;
    let agent_cfg = AgentConfig {
        data_dir: data_dir.join("agent"),
        broker_addr: broker.quic_addr,
        broker_ca: agent.broker_ca.clone().or_else(|| broker.dev_ca.clone()),
        ..agent
    };
    let agent = match runnel_agent::start(agent_cfg, storage).await {
        Ok(a) => a,
        Err(e) => {
            broker.shutdown().await;
            return Err(e);
        }
    };
    if let Some(geo) = &geo {
        let url = format!("http://{}/v1/plugins/geo-enrich", broker.admin_addr);
        let body = std::fs::read(geo)?;
        let resp = reqwest::Client::new().put(&url).body(body).send().await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(%status, %text, "deploying geo-enrich failed");
            }
            Err(e) => tracing::warn!(error = %e, "deploying geo-enrich failed"),
        }
    }
    let plugins = match (&edge, &geo) {
        (Some(_), Some(_)) => {
            "\n  plugins        pii-redact at the edge, geo-enrich in the broker (runnel plugin list)"
        }
        _ => "",
    };
    let ingest = format!("http://{}/v1/events", agent.http_addr);
    println!(
        "runnel dev is up (data dir {dir})\n\
         \n  agent ingest   POST {ingest}\
         \n  agent metrics  http://{agent_addr}/metrics\
         \n  broker QUIC    {quic} (CA: {ca})\
         \n  broker admin   http://{admin}  (/v1/log/stats, /v1/log/read, /v1/plugins, /metrics){plugins}\
         \n\nTry:\n  curl -s -XPOST {ingest} -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"e-1\",\"event_type\":\"page.view\",\"timestamp\":\"2026-11-21T12:00:00Z\",\"properties\":{{\"path\":\"/\",\"ip\":\"198.51.100.23\",\"email\":\"ada@example.com\"}}}}'\
         \n  runnel log stats --admin-addr {admin}\
         \n  runnel log read --admin-addr {admin} --limit 10\
         \n  runnel plugin list --admin-addr {admin}\
         \n\nCtrl-C stops both.",
        dir = data_dir.display(),
        agent_addr = agent.http_addr,
        quic = broker.quic_addr,
        ca = broker
            .dev_ca
            .as_ref()
            .map_or("configured".into(), |p| p.display().to_string()),
        admin = broker.admin_addr,
    );
    stop.await;
    println!("stopping agent and broker…");
    agent.shutdown().await;
    broker.shutdown().await;
    Ok(())
}
