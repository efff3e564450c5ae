//! Shared test fixtures: a throwaway PKI (device CA, server and client certificates, and a
//! foreign CA that must be refused), a StoreSink that writes each instance to a file and records
//! every authorization, and helpers to run real peers (dcmtk, pynetdicom) that fail loudly when
//! the peer is not installed.
#![allow(dead_code)]

pub mod large;
pub mod orthanc;

/// Running a peer process, bounded in time; shared with the broker's DIMSE tests.
mod peer;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cleave_dimse::{DimseConfig, DimseServer, PeerInfo, Refusal, ServerHandle, StoreFailure, StoreRequest, StoreSink, UserIdentityKind};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

pub const CALLED_AE: &str = "CLEAVE";
pub const MODALITY_AE: &str = "MODALITY1";

/// Certificates and keys on disk (for the peers) plus the server's rustls config.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_cert_sha256: [u8; 32],
    pub foreign_cert: PathBuf,
    pub foreign_key: PathBuf,
    pub server: Arc<ServerConfig>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose) -> (String, String, Vec<u8>) {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

impl Pki {
    /// A rustls client with the enrolled client certificate, trusting the device CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca_pem).unwrap()).unwrap();
        let chain = vec![CertificateDer::from_pem_file(&self.client_cert).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&self.client_key).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    }

    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key, ca_pem) = ca("Cleave test device CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_pem, server_key, _) = leaf(&issuer, "cleave-dimse", vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_pem, client_key, client_der) = leaf(&issuer, "modality-1", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let (foreign_params, foreign_ca_key, _) = ca("Somebody else's CA");
        let foreign_issuer = Issuer::new(foreign_params, foreign_ca_key);
        let (foreign_pem, foreign_key, _) = leaf(&foreign_issuer, "intruder", vec![], ExtendedKeyUsagePurpose::ClientAuth);

        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_path = write("ca.pem", &ca_pem);
        let client_cert = write("client.pem", &client_pem);
        let client_key = write("client.key", &client_key);
        let foreign_cert = write("foreign.pem", &foreign_pem);
        let foreign_key = write("foreign.key", &foreign_key);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let chain = vec![CertificateDer::from_pem_slice(server_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(server_key.as_bytes()).unwrap();
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        Pki {
            dir,
            ca_pem: ca_path,
            client_cert,
            client_key,
            client_cert_sha256: Sha256::digest(&client_der).into(),
            foreign_cert,
            foreign_key,
            server: Arc::new(server),
        }
    }
}

/// What the sink saw in one `authorize` call.
#[derive(Debug, Clone)]
pub struct Auth {
    pub cert_sha256: [u8; 32],
    pub calling: String,
    pub called: String,
    pub identity: Option<(UserIdentityKind, String, String)>,
}

/// A StoreSink like the broker's, minus the stores: it checks the calling AE title against an
/// allow-list and writes each stream to `<dir>/<n>.dcm` (fsync'd before returning Ok).
pub struct DirSink {
    pub dir: tempfile::TempDir,
    pub allowed_calling: Vec<String>,
    pub auths: Mutex<Vec<Auth>>,
    pub stored: Mutex<Vec<(PathBuf, String)>>,
    /// The next this-many stores fail with OutOfResources without reading their data.
    pub fail_next: AtomicUsize,
    counter: AtomicUsize,
}

impl DirSink {
    pub fn new() -> Arc<DirSink> {
        Arc::new(DirSink {
            dir: tempfile::tempdir().unwrap(),
            allowed_calling: vec![MODALITY_AE.into(), "STORESCU".into(), "ECHOSCU".into(), "PYNETDICOM".into(), "ORTHANC".into()],
            auths: Mutex::default(),
            stored: Mutex::default(),
            fail_next: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
        })
    }
    pub fn auths(&self) -> Vec<Auth> {
        self.auths.lock().unwrap().clone()
    }
    pub fn stored(&self) -> Vec<(PathBuf, String)> {
        self.stored.lock().unwrap().clone()
    }
}

impl StoreSink for DirSink {
    type Principal = String;

    fn authorize(&self, peer: &PeerInfo) -> Result<String, Refusal> {
        self.auths.lock().unwrap().push(Auth {
            cert_sha256: *peer.client_cert_sha256(),
            calling: peer.calling_ae_title().to_owned(),
            called: peer.called_ae_title().to_owned(),
            identity: peer.user_identity().map(|u| {
                (u.kind(), u.primary_str().unwrap_or("?").to_owned(), u.secondary_str().unwrap_or("?").to_owned())
            }),
        });
        if !self.allowed_calling.iter().any(|a| a == peer.calling_ae_title()) {
            return Err(Refusal::CallingAeTitleNotRecognized);
        }
        Ok(peer.calling_ae_title().to_owned())
    }

    fn store(&self, principal: &String, object: StoreRequest, mut data: Box<dyn Read + Send>) -> Result<(), StoreFailure> {
        assert_eq!(principal, object.calling_ae_title());
        if self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreFailure::OutOfResources);
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("{n}.dcm"));
        let mut f = std::fs::File::create(&path).map_err(|_| StoreFailure::OutOfResources)?;
        std::io::copy(&mut data, &mut f).map_err(|_| StoreFailure::OutOfResources)?;
        f.flush().and_then(|_| f.sync_all()).map_err(|_| StoreFailure::OutOfResources)?;
        self.stored.lock().unwrap().push((path, object.sop_instance_uid().to_owned()));
        Ok(())
    }
}

/// A TLS connection to `server` presenting the enrolled client certificate, as a DICOM
/// peer written by hand (no DICOM toolkit) would open it.
pub async fn tls_connect(pki: &Pki, server: &ServerHandle) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

/// The bytes of an A-ASSOCIATE-RQ from `calling` to our AE title proposing `abstract_syntax`
/// in transfer syntax `ts` on presentation context 1.
pub fn associate_rq(calling: &str, abstract_syntax: &str, ts: &str) -> Vec<u8> {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    let rq = dicom_ul::Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: CALLED_AE.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed { id: 1, abstract_syntax: abstract_syntax.into(), transfer_syntaxes: vec![ts.into()] }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::write_pdu(&mut bytes, &rq).unwrap();
    bytes
}

pub async fn start(pki: &Pki, sink: Arc<DirSink>) -> ServerHandle {
    start_with(pki, sink, DimseConfig::default()).await
}

pub async fn start_with(pki: &Pki, sink: Arc<DirSink>, config: DimseConfig) -> ServerHandle {
    DimseServer::bind("127.0.0.1:0", pki.server.clone(), sink, config).await.unwrap().spawn()
}

/// The path of a dcmtk tool, or a failure that says what to install.
pub fn dcmtk(tool: &str) -> PathBuf {
    // Full path: pynetdicom installs Python scripts with the same names earlier on PATH.
    let p = PathBuf::from("/usr/bin").join(tool);
    assert!(p.exists(), "{} is missing: install the Debian package dcmtk (apt-get install dcmtk)", p.display());
    p
}

#[allow(unused_imports)] // not every test binary runs a peer
pub use peer::{run, text};

/// Fails the test unless python3 with pydicom and pynetdicom is available.
pub fn python() -> PathBuf {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import pydicom, pynetdicom"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python3 with pydicom and pynetdicom is required: pip install -r .ci/requirements.txt");
    PathBuf::from("python3")
}

/// Path of a file bundled with pydicom's test data.
pub fn pydicom_file(name: &str) -> PathBuf {
    pydicom_dir().join(name)
}

/// pydicom's bundled test-file directory (asked once: starting Python is slow).
pub fn pydicom_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = std::process::Command::new(python())
            .args(["-c", "import os, pydicom.data as d; print(os.path.join(os.path.dirname(d.__file__), 'test_files'))"])
            .output()
            .unwrap();
        let p = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(p.join("CT_small.dcm").is_file(), "pydicom's bundled test files not found at {}", p.display());
        p
    })
    .clone()
}

/// Splits a PS3.10 file into (transfer syntax UID, data set bytes after the meta group).
pub fn split_part10(path: &Path) -> (String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM", "{} is not PS3.10", path.display());
    let (ts, end) = meta_info(&bytes);
    (ts, bytes[end..].to_vec())
}

/// Reads the meta group of an in-memory PS3.10 file: (transfer syntax, offset of the data set).
/// Walks the group-0002 elements rather than trusting (0002,0000), which some files omit.
pub fn meta_info(bytes: &[u8]) -> (String, usize) {
    let mut pos = 132;
    let mut ts = String::new();
    while u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) == 0x0002 {
        let elem = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = &bytes[pos + 4..pos + 6];
        let (len, hdr) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT") {
            (u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize, 12)
        } else {
            (u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize, 8)
        };
        if elem == 0x0010 {
            ts = String::from_utf8_lossy(&bytes[pos + hdr..pos + hdr + len]).trim_end_matches(['\0', ' ']).to_owned();
        }
        pos += hdr + len;
    }
    (ts, pos)
}
