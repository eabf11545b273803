//! TLS for both protocols (`[server.tls]`): one certificate chain and key,
//! in PEM files, served by rustls (ring) to Postgres clients that send
//! SSLRequest and to Flight SQL clients (`grpc+tls://`).

use std::path::PathBuf;
use std::sync::Arc;

use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[server.tls]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Refuse Postgres clients that do not ask for TLS (FATAL 28000).
    /// Flight is TLS-only whenever a certificate is configured.
    pub required: bool,
}

/// The certificate and key, read and checked.
pub(crate) struct Loaded {
    /// For the Postgres protocol.
    pub(crate) rustls: Arc<rustls::ServerConfig>,
    /// For tonic (Flight SQL).
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

impl TlsConfig {
    /// Reads the files; `None` without TLS.
    ///
    /// # Errors
    /// A missing or unreadable file, a file that holds no certificate or
    /// key, a key that does not match, or `required` without a certificate.
    pub(crate) fn load(&self) -> Result<Option<Loaded>, String> {
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) if self.required => {
                return Err("server.tls.required needs server.tls.cert and server.tls.key".into());
            }
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => return Err("server.tls needs both cert and key (PEM files)".into()),
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
        };
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "key")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{} holds no certificate", cert.display()));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{} holds no PEM private key: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                format!("the TLS key {} does not fit the certificate {}: {e}", key.display(), cert.display())
            })?;
        Ok(Some(Loaded { rustls: Arc::new(config), cert_pem, key_pem }))
    }
}
