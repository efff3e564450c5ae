//! Orthanc as a peer that C-STOREs to us: started in the foreground on free ports with its own
//! configuration (DICOM TLS with the given client certificate, our server as the modality
//! `cleave`), driven through its REST API with curl, killed when dropped.
//!
//! Shared by cleave-dimse's tests and the broker's (`#[path]`-included there), so that both
//! run Orthanc the same way. Needs only std, tempfile and serde_json.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Orthanc. Dropping it kills the process.
pub struct Orthanc {
    child: Child,
    work: tempfile::TempDir,
    base: String,
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How Orthanc reaches us.
pub struct Peer<'a> {
    /// Orthanc's own AE title (our calling AE title).
    pub aet: &'a str,
    /// Our AE title (the called AE title).
    pub called: &'a str,
    pub port: u16,
    /// Orthanc's TLS client certificate and key, and the CA that issued ours.
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(["-s", "-S", "--max-time", "60"]).args(args).output();
    let out = out.expect("curl is required for the Orthanc tests: apt-get install curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Orthanc {
    /// Starts Orthanc (Debian's /usr/sbin/Orthanc) and waits until its REST API answers.
    pub async fn start(peer: Peer<'_>) -> Orthanc {
        let bin = Path::new("/usr/sbin/Orthanc");
        assert!(bin.exists(), "Orthanc is missing: install the Debian package orthanc (apt-get install orthanc)");
        let work = tempfile::tempdir().unwrap();
        let (http, dicom) = (free_port(), free_port());
        let config = serde_json::json!({
            "Name": "cleave-test",
            "StorageDirectory": work.path().join("storage"),
            "IndexDirectory": work.path().join("index"),
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": peer.aet,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [],
            "DicomTlsEnabled": true,
            "DicomTlsCertificate": peer.cert,
            "DicomTlsPrivateKey": peer.key,
            "DicomTlsTrustedCertificates": peer.ca,
            "DicomTlsRemoteCertificateRequired": true,
            "DicomModalities": {
                "cleave": { "AET": peer.called, "Host": "127.0.0.1", "Port": peer.port, "UseDicomTls": true }
            }
        })
        .to_string();
        let config_path = work.path().join("orthanc.json");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(work.path().join("orthanc.log")).unwrap();
        let child = Command::new(bin).arg(&config_path).stdout(Stdio::null()).stderr(log).spawn().expect("cannot start Orthanc");
        let o = Orthanc { child, base: format!("http://127.0.0.1:{http}"), work };
        let started = Instant::now();
        while !curl(&[&format!("{}/system", o.base)]).0 {
            assert!(started.elapsed() < Duration::from_secs(60), "Orthanc did not start: {}", o.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        o
    }

    /// Orthanc's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("orthanc.log")).unwrap_or_default()
    }

    /// Uploads a file over REST; returns Orthanc's instance id.
    pub fn upload(&self, file: &Path) -> String {
        let (ok, uploaded) = curl(&["-X", "POST", &format!("{}/instances", self.base), "--data-binary", &format!("@{}", file.display())]);
        assert!(ok && uploaded.contains("\"ID\""), "upload to Orthanc failed: {uploaded}");
        uploaded.split("\"ID\"").nth(1).and_then(|s| s.split('"').nth(1)).unwrap().to_owned()
    }

    /// Asks Orthanc to C-STORE these instances (one association) to the modality `cleave`;
    /// returns (curl succeeded, Orthanc's JSON answer).
    pub async fn store_to_us(&self, ids: &[String]) -> (bool, String) {
        let url = format!("{}/modalities/cleave/store", self.base);
        let body = serde_json::to_string(ids).unwrap();
        tokio::task::spawn_blocking(move || curl(&["-X", "POST", &url, "--data-binary", &body])).await.unwrap()
    }

    pub fn dir(&self) -> PathBuf {
        self.work.path().to_owned()
    }
}
