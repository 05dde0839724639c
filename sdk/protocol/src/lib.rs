//! # runnel-protocol: agent ↔ broker over QUIC
//!
//! - **Transport**: QUIC with TLS 1.3 only (rustls, ring), ALPN [`ALPN`]. The broker's
//!   certificate is checked against a CA the agent is given (the broker's dev CA by default);
//!   the agent's certificate (mutual TLS, [`ClientIdentity`]) against the broker's client CA.
//!   The agent certificate's subject common name is the agent's `agent_id` and its
//!   organization the agent's tenant: the broker refuses a batch whose `agent_id` is not the
//!   one of the connection's certificate.
//! - **Batches on a bidirectional stream, answered in order** ([`ALPN`], `runnel/2`): the agent
//!   writes wire frames (`runnel_event::wire`: each a batch of spool records with
//!   `(agent_id, epoch, first_seq)`), each after an 8-byte little-endian `prev_end`
//!   ([`PREV_END_BYTES`]), one after another on one stream, without waiting, and the
//!   broker answers each with a `BatchAck` (self-delimiting, at most [`ACK_BYTES_MAX`] bytes) in
//!   the order the frames came, each after its batch is fsynced in the log (or refused). The
//!   stream's order is the log's order for that agent: the broker hands the frames of a stream
//!   to its log writer in order. After a refused frame (`Rejected`) the broker reads no more of
//!   that stream: it answers what came before, then finishes it. At most
//!   [`STREAM_BATCHES_MAX`] frames of a stream wait for their answer; the broker reads no more
//!   until they are answered.
//! - **`prev_end`: gaps are declared, never guessed.** A batch sent behind others not yet
//!   answered carries where the one before it ended. The oldest batch not yet answered carries
//!   0: every record before it was answered, kept aside (refused by the broker), or lost to a
//!   quarantined spool segment, so nothing before it has to come first. The broker appends a
//!   batch that starts past what it has only when `prev_end` is at most what it has; otherwise
//!   an earlier
//!   batch is missing (it failed, or is still on an abandoned stream) and the batch is answered
//!   `Unavailable` until that one comes. So no batch can overtake one that failed, and no
//!   chunk is ever skipped without the agent saying so.
//! - `runnel/1` ([`ALPN_V1`]), one frame per stream without `prev_end`, is the same exchange with
//!   one frame (the broker takes a gap as it comes, as it did): the broker serves both, so agents
//!   of either version can ship to it. Upgrade brokers first: an
//!   agent that speaks `runnel/2` refuses a broker that only speaks `runnel/1`, naming it.
//! - **Liveness**: the agent keeps its connection alive every 5 s and gives up on it after 30 s
//!   of silence; the broker after 60 s.
//!
//! The client ([`client_config`]) and server ([`server_config`]) configurations are built here,
//! next to each other, so the two ends cannot disagree on the ALPN, the TLS versions or the
//! stream limits.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of the agent-to-broker protocol: several batches per stream.
pub const ALPN: &[u8] = b"runnel/2";
/// ALPN protocol id of an agent's registry connection: the broker pushes the schema registry
/// (`runnel_schema::Document`) on it. The agent opens one bidirectional stream and writes the
/// generation it has (8 bytes, little-endian; 0 for none); the broker answers with the
/// document when its generation differs, then with each new one as the registry changes, every
/// one as a 4-byte little-endian length and that many bytes of JSON (at most
/// [`REGISTRY_BYTES_MAX`]). The same client certificate admits it.
pub const REGISTRY_ALPN: &[u8] = b"runnel-registry/1";
/// Largest registry document on a registry connection, in bytes.
pub const REGISTRY_BYTES_MAX: usize = 64 << 20;
/// The earlier protocol id: one batch per stream. The broker still serves it.
pub const ALPN_V1: &[u8] = b"runnel/1";
/// Bytes of the `prev_end` before each frame of a `runnel/2` stream.
pub const PREV_END_BYTES: usize = 8;
/// Most frames of one stream the broker holds unanswered; it reads no more of the stream
/// until one is answered. An agent's `ship_in_flight_max` is at most this.
pub const STREAM_BATCHES_MAX: usize = 16;
/// The application close code of a connection the broker refuses (no client certificate, a
/// revoked one, or another agent's id); the close reason says which.
pub const REFUSED_CODE: u32 = 0x52;
/// Largest broker answer to one batch, in bytes.
pub const ACK_BYTES_MAX: usize = 8 << 10;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA PEM is unreadable or holds no certificate.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// The certificate and key do not make a server identity.
    #[error("certificate and key: {0}")]
    Identity(String),
    /// QUIC refused the TLS configuration (a bug, not the user's input).
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The crypto provider of both ends (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An agent's certificate chain and key, which it presents to the broker.
#[derive(Debug)]
pub struct ClientIdentity {
    /// The chain, the agent's certificate first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads a PEM chain and key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Identity(format!("reading the certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::Identity(
                "the certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Identity(format!("reading the key PEM: {e}")))?;
        Ok(Self { certs, key })
    }
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The subject of an agent certificate: its `agent_id` (common name) and tenant
/// (organization; `default` when the certificate names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSubject {
    /// The common name: the agent's `agent_id`.
    pub agent_id: String,
    /// The organization: the agent's tenant.
    pub tenant: String,
}

/// The tenant of a certificate that names no organization.
pub const DEFAULT_TENANT: &str = "default";

/// The agent subject of a DER certificate, or why it is not one.
pub fn agent_subject(der: &[u8]) -> Result<AgentSubject, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let subject = cert.subject();
    let agent_id = subject
        .iter_common_name()
        .next()
        .ok_or("the certificate's subject has no common name (CN), which is the agent_id")?
        .as_str()
        .map_err(|e| format!("the certificate's common name is not text: {e}"))?
        .to_string();
    if agent_id.is_empty() || agent_id.len() > AGENT_ID_BYTES_MAX {
        return Err(format!(
            "the certificate's common name (the agent_id) must be 1 to {AGENT_ID_BYTES_MAX} bytes"
        ));
    }
    let tenant = match subject.iter_organization().next() {
        Some(o) => o
            .as_str()
            .map_err(|e| format!("the certificate's organization (O) is not text: {e}"))?
            .to_string(),
        None => DEFAULT_TENANT.to_string(),
    };
    check_tenant(&tenant).map_err(|e| format!("the certificate's organization (O): {e}"))?;
    Ok(AgentSubject { agent_id, tenant })
}

/// Longest `agent_id`, in bytes.
pub const AGENT_ID_BYTES_MAX: usize = 256;
/// Longest tenant name, in bytes.
pub const TENANT_BYTES_MAX: usize = 64;

/// A tenant name: 1 to [`TENANT_BYTES_MAX`] of `a-z 0-9 _ -`, starting with a letter.
pub fn check_tenant(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= TENANT_BYTES_MAX
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{t:?} is not a tenant name (1 to {TENANT_BYTES_MAX} of a-z, 0-9, _ and -, starting with a letter)"
        ))
    }
}

/// The agent's QUIC client configuration: trusts only the CA(s) in `ca_pem`, and presents
/// `identity` when given (a broker that requires client certificates refuses a connection
/// without one).
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<ClientIdentity>,
) -> Result<quinn::ClientConfig, TlsError> {
    // Offering the old id too lets the agent name the problem when a broker speaks only it.
    client_config_for(ca_pem, identity, vec![ALPN.to_vec(), ALPN_V1.to_vec()])
}

/// The agent's configuration of its registry connection ([`REGISTRY_ALPN`]).
pub fn registry_client_config(
    ca_pem: &[u8],
    identity: ClientIdentity,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(ca_pem, Some(identity), vec![REGISTRY_ALPN.to_vec()])
}

fn client_config_for(
    ca_pem: &[u8],
    identity: Option<ClientIdentity>,
    alpn: Vec<Vec<u8>>,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Ca(format!("reading PEM: {e}")))?;
        roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Ca("the CA file holds no certificate".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Quic(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs, id.key)
            .map_err(|e| TlsError::Identity(format!("they do not match: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = alpn;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(30)
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The broker's QUIC server configuration for a certificate chain and its key, with at most
/// `streams_max` batches in flight per connection; `clients` checks the agents' certificates.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    streams_max: u32,
    clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Quic(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Identity(format!("they do not match: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec(), ALPN_V1.to_vec(), REGISTRY_ALPN.to_vec()];
    // No session resumption: every connection is a full handshake, so every one has its client
    // certificate checked (a revoked certificate cannot come back on a ticket).
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(streams_max.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        Duration::from_secs(60)
            .try_into()
            .expect("60 s is a valid idle timeout"),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The protocol a connection agreed on (`None` when the peer offered none of ours).
pub fn negotiated(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let err = client_config(b"not a pem", None).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
