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
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
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
    let ingest = format!("http://{}/v1/events", agent.http_addr);
    println!(
        "runnel dev is up (data dir {dir})\n\
         \n  agent ingest   POST {ingest}\
         \n  agent metrics  http://{agent_addr}/metrics\
         \n  broker QUIC    {quic} (CA: {ca})\
         \n  broker admin   http://{admin}  (/v1/log/stats, /v1/log/read, /metrics)\
         \n\nTry:\n  curl -s -XPOST {ingest} -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"e-1\",\"event_type\":\"page.view\",\"timestamp\":\"2026-11-21T12:00:00Z\",\"properties\":{{\"path\":\"/\"}}}}'\
         \n  runnel log stats --admin-addr {admin}\
         \n  runnel log read --admin-addr {admin} --limit 10\
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
