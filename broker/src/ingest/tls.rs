//! TLS for the QUIC endpoint: a configured certificate, or a dev CA made on first start.
//!
//! Dev material lives in `DATA_DIR/tls/`: `ca.pem` (give it to agents as `--broker-ca`; it
//! also signs the agents' certificates unless `tls_client_ca` is set), `ca.key`, `server.pem`,
//! `server.key` (the keys mode 0600). The server certificate names `localhost`, `127.0.0.1`,
//! `::1` and the host name. Files are reused on later starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Paths of the certificate chain and key to serve.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// The dev CA, when the dev material is in use.
    pub dev_ca: Option<PathBuf>,
}

/// Makes (once) the dev CA in `dir`: `ca.pem` and `ca.key`. It signs the dev server
/// certificate and, unless `tls_client_ca` is set, the agents' certificates.
pub fn ensure_dev_ca(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Runnel dev CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    // The key first: a CA certificate without its key would be made again next time.
    crate::state::write_private(&key, ca.key().serialize_pem().as_bytes())?;
    crate::state::write_private(&cert, ca.pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), "created a dev CA");
    Ok((cert, key))
}

/// Makes (once) and returns the dev CA and server certificate in `dir`.
pub fn ensure_dev_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        dev_ca: Some(dir.join("ca.pem")),
    };
    let (ca_cert, ca_key) = ensure_dev_ca(dir)?;
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca_pem = read(&ca_cert)?;
    let ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&read(&ca_key)?)?)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = hostname::get() {
        let h = h.to_string_lossy().into_owned();
        if !h.is_empty() && h != "localhost" {
            names.push(h);
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "runnel broker");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    crate::state::write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca_pem))
        .with_context(|| format!("writing {}", files.cert.display()))?;
    tracing::info!(dir = %dir.display(), "created a dev server certificate");
    Ok(files)
}

/// The QUIC server config for `files`, checking agents' certificates with `clients`.
pub fn server_config(
    files: &TlsFiles,
    streams_max: u32,
    clients: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> anyhow::Result<quinn::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading tls_cert {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing tls_cert {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading tls_key {}", files.key.display()))?;
    runnel_protocol::server_config(certs, key, streams_max, clients).with_context(|| {
        format!(
            "tls_cert {} and tls_key {}",
            files.cert.display(),
            files.key.display()
        )
    })
}
