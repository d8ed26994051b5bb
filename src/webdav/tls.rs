//! HTTPS for the gateway's listener: a certificate and its key read from PEM
//! files and checked when the daemon starts, so a wrong file is an error of
//! the command, naming the file, not a failed handshake later.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The TLS configuration for `cert` (PEM: the certificate, then its chain)
/// and `key` (PEM: its private key, PKCS#8, PKCS#1 or SEC1).
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let named = |path: &Path, e: pem::Error, what: &str| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no {what} in it (expected a PEM file: -----BEGIN {}-----)",
            path.display(),
            what.to_uppercase()
        ),
        pem::Error::Io(io) => format!("{}: {io}", path.display()),
        other => format!("{}: not a PEM {what}: {other}", path.display()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| named(cert, e, "certificate"))?
        .collect::<Result<_, _>>()
        .map_err(|e| named(cert, e, "certificate"))?;
    if certs.is_empty() {
        return Err(named(cert, pem::Error::NoItemsFound, "certificate"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, e, "private key"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{}: not the private key of the certificate in {}",
                key.display(),
                cert.display()
            ),
            other => format!("{} with {}: {other}", cert.display(), key.display()),
        })?;
    // The listener speaks HTTP/1.1 only (what WebDAV clients use).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
