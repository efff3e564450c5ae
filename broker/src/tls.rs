//! TLS configurations of the two listeners.
//!
//! * Staff and devices: mutual TLS. A client certificate is REQUIRED and verified against
//!   the configured CA bundle by rustls' `WebPkiClientVerifier`; a client without one, or
//!   with one from another CA, fails the handshake before any HTTP is read.
//! * Consultants: server-only TLS. They hold a shared token and nothing else.
//!
//! Both allow TLS 1.3 and 1.2 only, with rustls' default cipher suites on *ring*: AEAD
//! suites with forward secrecy (AES-GCM, ChaCha20-Poly1305), which is what BCP 195
//! (RFC 9325) recommends; rustls implements no CBC suite and no TLS version below 1.2, so
//! there is nothing to disable. ALPN offers HTTP/1.1 only: the server speaks HTTP/1.1,
//! whose head-read timeout is the slow-loris defence we rely on.
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::pki;
use crate::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The mutual-TLS server configuration: client certificates from `client_ca` required.
pub fn mtls_server_config(client_ca: &Path, server_cert: &Path, server_key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for c in pki::load_certs(client_ca)? {
        roots
            .add(c)
            .map_err(|e| Error::Pki(format!("a CA certificate in {} is unusable ({e})", client_ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::Pki(format!("cannot verify client certificates with {} ({e})", client_ca.display())))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Pki(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki::load_certs(server_cert)?, pki::load_key(server_key)?)
        .map_err(|e| Error::Pki(format!("the server certificate and key do not match or are unusable ({e})")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The consultant listener's configuration: server authentication only.
pub fn server_only_config(server_cert: &Path, server_key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Pki(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(pki::load_certs(server_cert)?, pki::load_key(server_key)?)
        .map_err(|e| Error::Pki(format!("the server certificate and key do not match or are unusable ({e})")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
