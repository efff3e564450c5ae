//! Certificates: the local CA made on first run, the server certificate, enrolment of
//! client certificates, loading the hospital's PKI instead, and certificate fingerprints.
//!
//! The local CA exists so that a broker works out of the box on one machine; its private
//! key is a 0600 file in `<data>/pki/` and only the `enroll` command uses it. Keys are
//! ECDSA P-256 (rcgen's default), which every TLS 1.2/1.3 peer we meet accepts.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::Error;

/// The SHA-256 fingerprint of a certificate's DER, as used in `cert = sha256:<hex>` caveats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub String);

impl CertFingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        CertFingerprint(hex::encode(Sha256::digest(der)))
    }
    /// Lower-case hex, 64 characters.
    pub fn hex(&self) -> &str {
        &self.0
    }
    /// The 32 digest bytes.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Always 64 hex characters: only `of_der` makes one.
        let _ = hex::decode_to_slice(&self.0, &mut out);
        out
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Where the local PKI's files live under the data directory.
#[derive(Clone, Debug)]
pub struct LocalPkiPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl LocalPkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("pki");
        LocalPkiPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
        }
    }
}

/// A certificate and its private key in PEM. The key is zeroized on drop.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub fingerprint: CertFingerprint,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedCert({})", self.fingerprint)
    }
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    cleave_keys::durable::write_atomic(path, bytes, 0o600).map_err(|e| Error::io("writing", path, e))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    cleave_keys::durable::write_atomic(path, bytes, 0o644).map_err(|e| Error::io("writing", path, e))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that lag the CA's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn random_serial(params: &mut CertificateParams) {
    let mut s = [0u8; 16];
    cleave_keys::random_bytes(&mut s);
    s[0] &= 0x7f; // positive INTEGER
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&s));
}

/// Create the local CA and a server certificate if they do not exist yet. Returns whether
/// anything was created.
pub fn ensure_local_pki(data_dir: &Path, config: &Config) -> Result<bool, Error> {
    let p = LocalPkiPaths::new(data_dir);
    if p.ca_cert.exists() && p.ca_key.exists() && p.server_cert.exists() && p.server_key.exists() {
        return Ok(false);
    }
    cleave_keys::durable::create_private_dir(&p.dir).map_err(|e| Error::io("creating", &p.dir, e))?;
    if !(p.ca_cert.exists() && p.ca_key.exists()) {
        let key = KeyPair::generate().map_err(|e| pki_err("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Cleave local CA");
        dn.push(DnType::OrganizationName, "Cleave");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 3650);
        random_serial(&mut params);
        let cert = params.self_signed(&key).map_err(|e| pki_err("self-signing the CA", e))?;
        write_private(&p.ca_key, Zeroizing::new(key.serialize_pem()).as_bytes())?;
        write_public(&p.ca_cert, cert.pem().as_bytes())?;
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for h in &config.host_names {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(|e| pki_err("a configured host name is invalid", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Cleave broker");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 825);
    random_serial(&mut params);
    let issued = sign_with_local_ca(data_dir, params)?;
    write_private(&p.server_key, issued.key_pem.as_bytes())?;
    write_public(&p.server_cert, issued.cert_pem.as_bytes())?;
    Ok(true)
}

fn sign_with_local_ca(data_dir: &Path, params: CertificateParams) -> Result<IssuedCert, Error> {
    let p = LocalPkiPaths::new(data_dir);
    let ca_pem = std::fs::read_to_string(&p.ca_cert).map_err(|e| Error::io("reading", &p.ca_cert, e))?;
    let ca_key_pem = Zeroizing::new(std::fs::read_to_string(&p.ca_key).map_err(|e| Error::io("reading", &p.ca_key, e))?);
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| pki_err("the local CA key is unreadable", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| pki_err("the local CA certificate is unreadable", e))?;
    let key = KeyPair::generate().map_err(|e| pki_err("generating a key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| pki_err("signing a certificate", e))?;
    Ok(IssuedCert {
        fingerprint: CertFingerprint::of_der(cert.der()),
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Issue a client certificate from the local CA for a person or a device. `common_name`
/// is an account name or a device label, never patient data.
pub fn issue_client_cert(data_dir: &Path, common_name: &str, days: i64) -> Result<IssuedCert, Error> {
    let p = LocalPkiPaths::new(data_dir);
    if !p.ca_key.exists() {
        return Err(Error::Pki(
            "this broker has no local CA (it uses the hospital's PKI): issue the certificate there and register it with `device add --cert`"
                .into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    random_serial(&mut params);
    sign_with_local_ca(data_dir, params)
}

/// Write an issued pair as `<dir>/<stem>.pem` and `<dir>/<stem>.key`, both 0600.
pub fn write_pair(dir: &Path, stem: &str, issued: &IssuedCert) -> Result<(PathBuf, PathBuf), Error> {
    cleave_keys::durable::create_private_dir(dir).map_err(|e| Error::io("creating", dir, e))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    write_private(&key, issued.key_pem.as_bytes())?;
    write_private(&cert, issued.cert_pem.as_bytes())?;
    Ok((cert, key))
}

/// Read every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    let certs = certs.map_err(|e| Error::Pki(format!("{} is not a PEM certificate file ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Pki(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// Read the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io("reading", path, e))?);
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| Error::Pki(format!("{} is not a PEM private key file ({e})", path.display())))?
        .ok_or_else(|| Error::Pki(format!("{} holds no private key", path.display())))
}

/// The PEM files the TLS listeners use: (client CA bundle, server chain, server key).
pub fn tls_material_paths(data_dir: &Path, config: &Config) -> (PathBuf, PathBuf, PathBuf) {
    match (&config.pki.client_ca, &config.pki.server_cert, &config.pki.server_key) {
        (Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
        _ => {
            let p = LocalPkiPaths::new(data_dir);
            (p.ca_cert, p.server_cert, p.server_key)
        }
    }
}

/// The fingerprint of the first certificate in a PEM file (to register a device).
pub fn fingerprint_of_pem_file(path: &Path) -> Result<CertFingerprint, Error> {
    let certs = load_certs(path)?;
    certs
        .first()
        .map(|c| CertFingerprint::of_der(c))
        .ok_or_else(|| Error::Pki(format!("{} holds no certificate", path.display())))
}
