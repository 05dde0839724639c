//! The schema registry at the edge: the broker's [`Document`], compiled, that every event is
//! checked against before it is stored (`docs/schemas.md`).
//!
//! At start the agent loads its last copy (`DATA_DIR/schemas.json`), so it keeps validating
//! while the broker is down; then [`follow`] keeps a registry connection to the broker
//! (`runnel_protocol::REGISTRY_ALPN`, the same client certificate as shipping), which pushes the
//! document when it differs from the agent's generation and again at every change. Each new
//! document is compiled, written to disk (atomically) and swapped in; one that does not compile
//! is logged and the last good one kept.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel_schema::{Document, Schemas};
use runnel_segment::Storage;
use tokio::sync::watch;

/// The schemas in force; cheap to read per request.
#[derive(Clone, Default)]
pub struct Current(Arc<RwLock<Arc<Schemas>>>);

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("generation", &self.get().generation())
            .finish()
    }
}

impl Current {
    /// The schemas now.
    pub fn get(&self) -> Arc<Schemas> {
        self.0.read().expect("lock poisoned").clone()
    }

    fn set(&self, s: Schemas) {
        metrics::gauge!("runnel_agent_schema_generation").set(s.generation() as f64);
        *self.0.write().expect("lock poisoned") = Arc::new(s);
    }
}

/// Where the last copy is kept.
pub fn cache_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("schemas.json")
}

/// The last copy on disk, if there is a readable one.
pub fn load(storage: &dyn Storage, path: &std::path::Path) -> Current {
    let current = Current::default();
    match storage.read_file(path) {
        Ok(bytes) => match serde_json::from_slice::<Document>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|d| Schemas::compile(&d))
        {
            Ok(s) => {
                tracing::info!(
                    generation = s.generation(),
                    "schema registry loaded from disk"
                );
                current.set(s);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the kept schema registry is unreadable; waiting for the broker's")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reading the kept schema registry")
        }
    }
    current
}

/// What [`follow`] needs.
pub struct Follow {
    /// The broker's QUIC address and name.
    pub broker_addr: std::net::SocketAddr,
    /// The name the broker's certificate carries.
    pub server_name: String,
    /// The registry connection's configuration.
    pub client: quinn::ClientConfig,
    /// Where the copy is kept.
    pub path: PathBuf,
    /// The storage seam.
    pub storage: Arc<dyn Storage>,
    /// Retry delays.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

/// Follows the broker's registry until `shutdown`, swapping each new document into `current`.
pub async fn follow(f: Follow, current: Current, mut shutdown: watch::Receiver<bool>) {
    let bind: std::net::SocketAddr = if f.broker_addr.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "binding the registry's QUIC client; schemas will not be updated");
            return;
        }
    };
    let mut delay = f.backoff_min;
    loop {
        let session = session(&f, &endpoint, &current);
        let ended = tokio::select! {
            r = session => r,
            _ = shutdown.changed() => break,
        };
        match ended {
            Ok(()) => delay = f.backoff_min,
            Err(e) => {
                metrics::counter!("runnel_agent_schema_registry_errors_total").increment(1);
                tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "registry connection failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
        delay = (delay * 2).min(f.backoff_max);
    }
    endpoint.close(0u32.into(), b"agent stopping");
}

async fn session(f: &Follow, endpoint: &quinn::Endpoint, current: &Current) -> anyhow::Result<()> {
    let conn = endpoint
        .connect_with(f.client.clone(), f.broker_addr, &f.server_name)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&current.get().generation().to_le_bytes())
        .await?;
    loop {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        anyhow::ensure!(
            len <= runnel_protocol::REGISTRY_BYTES_MAX,
            "the broker sent a registry of {len} bytes, over {}",
            runnel_protocol::REGISTRY_BYTES_MAX
        );
        let mut json = vec![0u8; len];
        recv.read_exact(&mut json).await?;
        let doc: Document = serde_json::from_slice(&json)?;
        let compiled = {
            let doc = doc.clone();
            tokio::task::spawn_blocking(move || Schemas::compile(&doc)).await?
        };
        match compiled {
            Ok(s) => {
                let (storage, path) = (f.storage.clone(), f.path.clone());
                let written =
                    tokio::task::spawn_blocking(move || storage.write_atomic(&path, &json)).await?;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "keeping the schema registry on disk failed; it is in force in memory");
                }
                tracing::info!(
                    generation = s.generation(),
                    types = doc.types.len(),
                    "schema registry updated"
                );
                current.set(s);
            }
            Err(e) => {
                metrics::counter!("runnel_agent_schema_registry_errors_total").increment(1);
                tracing::error!(generation = doc.generation, error = %e, "the broker's schema registry does not compile here; keeping the last one");
            }
        }
    }
}
