//! Agents' certificates: the client CA, enrollment, revocation, and the open connections.
//!
//! The QUIC endpoint checks every client certificate with [`AgentVerifier`]: signed by the
//! client CA (`tls_client_ca`, else the dev CA `DATA_DIR/tls/ca.pem`), not revoked, with a
//! subject that names an agent (`CN`) and its tenant (`O`, `default` when absent). A connection
//! without a certificate completes its handshake and is then closed by [`Agents::admit`] with a
//! reason, so the agent can say what is wrong.
//!
//! Revocation is by certificate: [`Agents::revoke`] marks every certificate the broker issued
//! to the agent or saw it connect with, refuses them from the next handshake on, and closes the
//! agent's open connections. Each agent is a row of [`crate::state::AGENTS`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use super::{AuthError, hex, storage};
use crate::state::{self, AGENTS};

// What the broker stores of each agent (a row of `AGENTS`, as JSON) and answers with are the
// API's types: one definition for both ends.
pub use runnel_client::api::{
    AgentCert as CertRecord, AgentEnrolled as Enrollment, AgentInfo as AgentRecord,
};

/// The identity of an admitted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `agent_id` every batch on the connection must carry.
    pub agent_id: String,
    /// The agent's tenant.
    pub tenant: String,
    /// The certificate's SHA-256, hex.
    pub sha256: String,
}

/// Why a connection or batch was refused (the `reason` label of
/// `runnel_broker_agents_refused_total`).
pub fn refused(reason: &'static str) {
    metrics::counter!("runnel_broker_agents_refused_total", "reason" => reason).increment(1);
}

/// The application close code of a connection the broker refuses.
pub use runnel_protocol::REFUSED_CODE;

struct Issuer {
    ca_cert_pem: String,
    ca_key_pem: String,
}

/// Days an enrolled certificate is valid by default.
pub const CERT_DAYS_DEFAULT: u32 = 365;

/// The known agents, the revoked certificates and the open connections.
pub struct Agents {
    db: Arc<Database>,
    revoked: RwLock<HashSet<String>>,
    open: Mutex<HashMap<String, Vec<(u64, quinn::Connection)>>>,
    next_id: AtomicU64,
    issuer: Option<Issuer>,
    /// What agents trust the broker with (the server certificate's CA), handed out on enrollment.
    server_ca_pem: Option<String>,
    cert_days: u32,
    tenants: Arc<super::Tenants>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("issues", &self.issuer.is_some())
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Agents {
    /// Loads the agents. `issuer` is the client CA's certificate and key when the broker may
    /// enroll agents; `server_ca_pem` the CA of the broker's own certificate, when known.
    pub fn open(
        db: Arc<Database>,
        issuer: Option<(String, String)>,
        server_ca_pem: Option<String>,
        cert_days: u32,
    ) -> anyhow::Result<Self> {
        {
            let tx = db.begin_write()?;
            tx.open_table(AGENTS)?;
            tx.commit()?;
        }
        let mut revoked = HashSet::new();
        let tenants = Arc::new(super::Tenants::default());
        {
            let tx = db.begin_read()?;
            let table = tx.open_table(AGENTS)?;
            for row in table.iter()? {
                let (_, v) = row?;
                let record: AgentRecord = state::from_json("agent", v.value())?;
                tenants.set(&record.name, &record.tenant);
                revoked.extend(
                    record
                        .certificates
                        .iter()
                        .filter(|c| c.revoked_at.is_some())
                        .map(|c| c.sha256.clone()),
                );
            }
        }
        Ok(Self {
            db,
            revoked: RwLock::new(revoked),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            issuer: issuer.map(|(ca_cert_pem, ca_key_pem)| Issuer {
                ca_cert_pem,
                ca_key_pem,
            }),
            server_ca_pem,
            cert_days,
            tenants,
        })
    }

    /// Which tenant each agent is of, kept up to date as agents enroll and connect.
    pub fn tenants(&self) -> Arc<super::Tenants> {
        self.tenants.clone()
    }

    fn get(&self, name: &str) -> Result<Option<AgentRecord>, AuthError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(AGENTS).map_err(storage)?;
        match table.get(name).map_err(storage)? {
            Some(v) => Ok(Some(
                state::from_json("agent", v.value()).map_err(AuthError::Storage)?,
            )),
            None => Ok(None),
        }
    }

    fn put(&self, record: &AgentRecord) -> Result<(), AuthError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(AGENTS).map_err(storage)?;
            table
                .insert(record.name.as_str(), state::to_json(record).as_slice())
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        self.tenants.set(&record.name, &record.tenant);
        Ok(())
    }

    /// Every known agent, by name.
    pub fn list(&self) -> Result<Vec<AgentRecord>, AuthError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(AGENTS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(state::from_json("agent", v.value()).map_err(AuthError::Storage)?);
        }
        Ok(out)
    }

    /// Issues a certificate (`CN=name, O=tenant`, client authentication) and key for an agent,
    /// signed by the client CA. The key is in the answer only.
    pub fn enroll(&self, name: &str, tenant: &str) -> Result<Enrollment, AuthError> {
        let Some(issuer) = &self.issuer else {
            return Err(AuthError::Conflict(
                "this broker does not hold its client CA's key (tls_client_ca without tls_client_ca_key): issue the agent's certificate with that CA, subject CN=AGENT_ID, O=TENANT, extended key usage clientAuth".into(),
            ));
        };
        if name.is_empty() || name.len() > runnel_protocol::AGENT_ID_BYTES_MAX {
            return Err(AuthError::Invalid(format!(
                "name: must be 1 to {} bytes (it is the agent_id)",
                runnel_protocol::AGENT_ID_BYTES_MAX
            )));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(AuthError::Invalid("name: holds a control character".into()));
        }
        runnel_protocol::check_tenant(tenant)
            .map_err(|e| AuthError::Invalid(format!("tenant: {e}")))?;
        let existing = self.get(name)?;
        if let Some(r) = &existing
            && r.tenant != tenant
        {
            return Err(AuthError::Conflict(format!(
                "agent {name:?} belongs to tenant {:?}, not {tenant:?}",
                r.tenant
            )));
        }
        let issue = || -> Result<(String, String, String, String), rcgen::Error> {
            let ca_key = rcgen::KeyPair::from_pem(&issuer.ca_key_pem)?;
            let ca = rcgen::Issuer::from_ca_cert_pem(&issuer.ca_cert_pem, ca_key)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, tenant);
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let start = chrono::Utc::now() - chrono::Duration::hours(1);
            let end = start + chrono::Duration::days(i64::from(self.cert_days));
            use chrono::Datelike;
            params.not_before =
                rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
            params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            use sha2::Digest;
            let sha = hex(&sha2::Sha256::digest(cert.der()));
            Ok((
                cert.pem(),
                key.serialize_pem(),
                sha,
                end.format("%Y-%m-%d").to_string(),
            ))
        };
        let (cert_pem, key_pem, sha256, not_after) =
            issue().map_err(|e| AuthError::Storage(anyhow::anyhow!("issuing: {e}")))?;
        let mut record = existing.unwrap_or_else(|| AgentRecord {
            name: name.to_string(),
            tenant: tenant.to_string(),
            certificates: Vec::new(),
            last_connected_at: None,
        });
        record.certificates.push(CertRecord {
            sha256: sha256.clone(),
            source: "enrolled".into(),
            since: now(),
            revoked_at: None,
        });
        self.put(&record)?;
        tracing::info!(agent = name, tenant, sha256 = %sha256, "agent enrolled");
        Ok(Enrollment {
            name: name.to_string(),
            tenant: tenant.to_string(),
            cert_pem,
            key_pem,
            ca_pem: self.server_ca_pem.clone(),
            sha256,
            not_after,
        })
    }

    /// Revokes every certificate of `name` and closes its open connections.
    pub fn revoke(&self, name: &str) -> Result<AgentRecord, AuthError> {
        let mut record = self.get(name)?.ok_or_else(|| {
            AuthError::NotFound(format!(
                "agent {name:?}: no such agent (it never enrolled nor connected)"
            ))
        })?;
        let at = now();
        for c in &mut record.certificates {
            if c.revoked_at.is_none() {
                c.revoked_at = Some(at.clone());
            }
        }
        self.put(&record)?;
        self.revoked
            .write()
            .expect("lock poisoned")
            .extend(record.certificates.iter().map(|c| c.sha256.clone()));
        let open = self
            .open
            .lock()
            .expect("lock poisoned")
            .remove(name)
            .unwrap_or_default();
        for (_, conn) in &open {
            conn.close(REFUSED_CODE.into(), b"certificate revoked");
        }
        tracing::warn!(agent = name, closed = open.len(), "agent revoked");
        Ok(record)
    }

    /// Whether the certificate with this SHA-256 is revoked.
    pub fn is_revoked(&self, sha256: &str) -> bool {
        self.revoked.read().expect("lock poisoned").contains(sha256)
    }

    /// Checks a connection after its handshake: its certificate, its subject, revocation.
    /// Admitted, it is registered (so a revocation closes it) until the guard is dropped. A
    /// certificate seen for the first time is recorded (the caller runs this off the runtime).
    pub fn admit(
        self: &Arc<Self>,
        conn: &quinn::Connection,
    ) -> Result<(Identity, Admitted), (&'static str, String)> {
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err((
                "no_certificate",
                "a client certificate is required: enroll the agent (runnel agent enroll) and start it with --tls-cert and --tls-key".into(),
            ));
        };
        let subject =
            runnel_protocol::agent_subject(leaf).map_err(|e| ("bad_subject", e.to_string()))?;
        use sha2::Digest;
        let sha256 = hex(&sha2::Sha256::digest(leaf.as_ref()));
        let identity = Identity {
            agent_id: subject.agent_id,
            tenant: subject.tenant,
            sha256,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .expect("lock poisoned")
            .entry(identity.agent_id.clone())
            .or_default()
            .push((id, conn.clone()));
        let guard = Admitted {
            agents: self.clone(),
            name: identity.agent_id.clone(),
            id,
        };
        // Checked after registering, so a revocation between the handshake and here still
        // closes it.
        if self.is_revoked(&identity.sha256) {
            return Err(("revoked", "the certificate is revoked".into()));
        }
        self.record_seen(&identity)
            .map_err(|e| ("storage", e.to_string()))?;
        Ok((identity, guard))
    }

    fn record_seen(&self, identity: &Identity) -> Result<(), AuthError> {
        let mut record = self
            .get(&identity.agent_id)?
            .unwrap_or_else(|| AgentRecord {
                name: identity.agent_id.clone(),
                tenant: identity.tenant.clone(),
                certificates: Vec::new(),
                last_connected_at: None,
            });
        if record.tenant != identity.tenant {
            return Err(AuthError::Conflict(format!(
                "agent {:?} belongs to tenant {:?}; this certificate names {:?}",
                identity.agent_id, record.tenant, identity.tenant
            )));
        }
        if !record
            .certificates
            .iter()
            .any(|c| c.sha256 == identity.sha256)
        {
            record.certificates.push(CertRecord {
                sha256: identity.sha256.clone(),
                source: "seen".into(),
                since: now(),
                revoked_at: None,
            });
        }
        record.last_connected_at = Some(now());
        self.put(&record)
    }
}

/// An admitted connection's place among the open ones; dropped when the connection ends.
pub struct Admitted {
    agents: Arc<Agents>,
    name: String,
    id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.agents.open.lock().expect("lock poisoned");
        if let Some(list) = open.get_mut(&self.name) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                open.remove(&self.name);
            }
        }
    }
}

/// The QUIC endpoint's client certificate check: the client CA's, then revocation and the
/// subject. A client without a certificate is let through the handshake and refused by
/// [`Agents::admit`], with a reason it can read.
#[derive(Debug)]
pub struct AgentVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    agents: Arc<Agents>,
}

impl AgentVerifier {
    /// Checks certificates against the CA certificates in `ca_pem`.
    pub fn new(ca_pem: &[u8], agents: Arc<Agents>) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.map_err(|e| anyhow::anyhow!("reading PEM: {e}"))?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "holds no certificate");
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            runnel_protocol::provider(),
        )
        .allow_unauthenticated()
        .build()?;
        Ok(Self { inner, agents })
    }
}

impl ClientCertVerifier for AgentVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(e) => {
                refused("untrusted_certificate");
                tracing::warn!(error = %e, "refused an agent certificate");
                return Err(e);
            }
        };
        use sha2::Digest;
        if self
            .agents
            .is_revoked(&hex(&sha2::Sha256::digest(end_entity.as_ref())))
        {
            refused("revoked");
            tracing::warn!("refused a revoked agent certificate");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        if let Err(e) = runnel_protocol::agent_subject(end_entity) {
            refused("bad_subject");
            tracing::warn!(error = %e, "refused an agent certificate");
            return Err(rustls::Error::General(e));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(dir: &std::path::Path) -> Arc<Agents> {
        let files = crate::ingest::tls::ensure_dev_tls(&dir.join("tls")).unwrap();
        let ca = std::fs::read_to_string(files.dev_ca.unwrap()).unwrap();
        let key = std::fs::read_to_string(dir.join("tls/ca.key")).unwrap();
        let db = Arc::new(Database::create(dir.join("state.redb")).unwrap());
        Arc::new(Agents::open(db, Some((ca.clone(), key)), Some(ca), 30).unwrap())
    }

    #[test]
    fn an_enrolled_certificate_names_its_agent_and_tenant_and_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let a = agents(dir.path());
        let e = a.enroll("web-1", "shop").unwrap();
        let der = CertificateDer::from_pem_slice_first(&e.cert_pem);
        let subject = runnel_protocol::agent_subject(&der).unwrap();
        assert_eq!(subject.agent_id, "web-1");
        assert_eq!(subject.tenant, "shop");
        let v = AgentVerifier::new(e.ca_pem.unwrap().as_bytes(), a.clone()).unwrap();
        v.verify_client_cert(&der, &[], UnixTime::now()).unwrap();
        // The same name under another tenant is refused.
        assert!(matches!(
            a.enroll("web-1", "bank"),
            Err(AuthError::Conflict(_))
        ));
        a.revoke("web-1").unwrap();
        let err = v
            .verify_client_cert(&der, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "{err}"
        );
        // A new certificate for the same agent is valid.
        let again = a.enroll("web-1", "shop").unwrap();
        let der = CertificateDer::from_pem_slice_first(&again.cert_pem);
        v.verify_client_cert(&der, &[], UnixTime::now()).unwrap();
        // Revocations survive a restart.
        drop(v);
        let first = a.list().unwrap()[0].certificates[0].sha256.clone();
        drop(a);
        let a = agents(dir.path());
        assert!(a.is_revoked(&first));
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (agents(one.path()), agents(other.path()));
        let e = b.enroll("x", "t").unwrap();
        let v = AgentVerifier::new(
            std::fs::read(one.path().join("tls/ca.pem"))
                .unwrap()
                .as_slice(),
            a,
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice_first(&e.cert_pem);
        assert!(v.verify_client_cert(&der, &[], UnixTime::now()).is_err());
    }

    trait FirstPem {
        fn from_pem_slice_first(pem: &str) -> CertificateDer<'static>;
    }
    impl FirstPem for CertificateDer<'static> {
        fn from_pem_slice_first(pem: &str) -> CertificateDer<'static> {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        }
    }
}
