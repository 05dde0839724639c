//! The two systems `runnel bench` loads: an agent's HTTP ingest endpoint, and a broker's QUIC
//! endpoint driven by simulated agents.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use runnel_event::{AckStatus, Batch, BatchAck, BodyFormat, Chunk, EnvelopeLimits, parse_body};

use crate::engine::{Sent, Target};
use crate::workload::Workload;

pub use runnel_event::now_ms;

/// `POST /v1/events` on an agent.
#[derive(Debug)]
pub struct AgentHttp {
    client: reqwest::Client,
    url: String,
    workload: Arc<Workload>,
}

impl AgentHttp {
    /// A client with up to `connections` connections, each request timing out after `timeout`.
    pub fn new(
        url: String,
        workload: Arc<Workload>,
        connections: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            url,
            workload,
        })
    }
}

/// The kind of a failed HTTP request, for the table of errors.
pub fn http_error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "http transport".into()
    }
}

impl Target for AgentHttp {
    async fn send(&self, request: u64) -> Result<Sent, String> {
        let body = self.workload.body(request, now_ms());
        let bytes = body.len() as u64;
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| http_error_kind(&e))?;
        let status = resp.status().as_u16();
        let answer = resp.bytes().await.map_err(|e| http_error_kind(&e))?;
        if status != 202 {
            return Err(format!("http {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| "answer not JSON".to_string())?;
        let count = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Sent {
            events: self.workload.spec().batch as u64,
            bytes,
            accepted: count("accepted"),
            duplicates: count("duplicates"),
            rejected: v["rejected"].as_array().map_or(0, |r| r.len() as u64),
        })
    }
}

/// Where and how simulated agents connect.
#[derive(Debug, Clone)]
pub struct BrokerEndpoint {
    /// The broker's QUIC address.
    pub addr: SocketAddr,
    /// Name on its certificate.
    pub server_name: String,
    /// PEM of the CA to trust.
    pub ca_pem: Vec<u8>,
}

struct SimAgent {
    agent_id: String,
    /// Its TLS configuration: the broker's CA and the agent's certificate.
    config: quinn::ClientConfig,
    conn: Option<quinn::Connection>,
    next_seq: u64,
}

/// Simulated agents shipping batches to a broker, one batch in flight each, as real agents do.
/// Request `i` goes to agent `i % agents`. A batch is one chunk of `batch` events; its chunk
/// comes from a few pre-encoded ones, re-encoded every second so event times follow the clock
/// (the broker deduplicates by `(agent_id, epoch, seq)`, not by event id, so reusing events is
/// fine for it).
pub struct BrokerQuic {
    endpoint: quinn::Endpoint,
    broker: BrokerEndpoint,
    agents: Vec<tokio::sync::Mutex<SimAgent>>,
    chunks: std::sync::RwLock<Arc<Vec<Vec<u8>>>>,
    workload: Arc<Workload>,
    timeout: Duration,
}

impl std::fmt::Debug for BrokerQuic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerQuic")
            .field("broker", &self.broker.addr)
            .field("agents", &self.agents.len())
            .finish()
    }
}

/// Pre-encoded chunks kept (requests use them in turn).
const CHUNKS: u64 = 8;

impl BrokerQuic {
    /// One simulated agent for each `(agent_id, certificate PEM, key PEM)` of `agents`.
    pub fn new(
        broker: BrokerEndpoint,
        agents: Vec<(String, String, String)>,
        workload: Arc<Workload>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid address"))
            .context("binding the QUIC client")?;
        let agents = agents
            .into_iter()
            .map(|(agent_id, cert, key)| {
                let identity =
                    runnel_protocol::ClientIdentity::from_pem(cert.as_bytes(), key.as_bytes())
                        .with_context(|| format!("the certificate of {agent_id}"))?;
                let config = runnel_protocol::client_config(&broker.ca_pem, Some(identity))
                    .context("loading the broker's CA (--broker-ca)")?;
                Ok(tokio::sync::Mutex::new(SimAgent {
                    agent_id,
                    config,
                    conn: None,
                    next_seq: 0,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let me = Self {
            endpoint,
            broker,
            agents,
            chunks: std::sync::RwLock::new(Arc::new(Vec::new())),
            workload,
            timeout,
        };
        me.refresh_chunks();
        Ok(me)
    }

    /// Re-encodes the chunks with event times around now.
    pub fn refresh_chunks(&self) {
        let limits = EnvelopeLimits::default();
        let now = now_ms();
        let chunks = (0..CHUNKS)
            .map(|r| {
                let body = self.workload.body(r, now);
                let events = parse_body(&body, BodyFormat::Json, &limits, now)
                    .events
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
                Chunk { events }.encode()
            })
            .collect();
        *self.chunks.write().expect("chunks lock") = Arc::new(chunks);
    }

    async fn connection(&self, agent: &mut SimAgent) -> Result<quinn::Connection, String> {
        if let Some(c) = &agent.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = self
            .endpoint
            .connect_with(
                agent.config.clone(),
                self.broker.addr,
                &self.broker.server_name,
            )
            .map_err(|_| "connect".to_string())?
            .await
            .map_err(|_| "connect".to_string())?;
        agent.conn = Some(conn.clone());
        Ok(conn)
    }
}

impl Target for BrokerQuic {
    async fn send(&self, request: u64) -> Result<Sent, String> {
        let mut agent = self.agents[request as usize % self.agents.len()]
            .lock()
            .await;
        let chunk = self.chunks.read().expect("chunks lock")[(request % CHUNKS) as usize].clone();
        let frame = Batch {
            agent_id: agent.agent_id.clone(),
            host: "runnel-bench".into(),
            epoch: 1,
            first_seq: agent.next_seq,
            chunks: vec![chunk],
        }
        .encode_frame();
        // `runnel/2`: the batch follows the agent's previous one directly (`prev_end`).
        let mut wire = agent.next_seq.to_le_bytes().to_vec();
        wire.extend_from_slice(&frame);
        let frame = wire;
        let bytes = frame.len() as u64;
        let conn = self.connection(&mut agent).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|_| "stream".to_string())?;
            send.write_all(&frame)
                .await
                .map_err(|_| "stream".to_string())?;
            send.finish().map_err(|_| "stream".to_string())?;
            recv.read_to_end(runnel_protocol::ACK_BYTES_MAX)
                .await
                .map_err(|_| "stream".to_string())
        };
        let answer = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(a)) => a,
            Ok(Err(kind)) => {
                agent.conn = None;
                return Err(kind);
            }
            Err(_) => {
                agent.conn = None;
                return Err("timeout".into());
            }
        };
        let ack = BatchAck::decode(&answer).map_err(|_| "answer not an ack".to_string())?;
        match ack.status {
            AckStatus::Appended | AckStatus::Duplicate => {
                agent.next_seq += 1;
                let events = self.workload.spec().batch as u64 - self.workload.invalid_in(request);
                Ok(Sent {
                    events,
                    bytes,
                    accepted: u64::from(ack.appended_events),
                    duplicates: events.saturating_sub(u64::from(ack.appended_events)),
                    rejected: 0,
                })
            }
            AckStatus::Rejected => Err("rejected".into()),
            AckStatus::Unavailable => Err("unavailable".into()),
            AckStatus::Throttled => {
                // As an agent does: wait as long as the broker says before this agent's next
                // batch (its lock is held meanwhile).
                let wait = ack.retry_after_ms().unwrap_or(0).min(10_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Err("throttled".into())
            }
        }
    }
}
