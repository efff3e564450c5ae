//! The `cleave-broker` command line, run as an operator runs it.
use std::process::Command;

fn run(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cleave-broker"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn operator_commands_enrol_devices_add_users_and_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cleave-data");
    let out_dir = dir.path().join("out");
    let o = out_dir.to_str().unwrap();
    run(&data, &["enroll", "device", "ct-scanner-2", "--ae-title", "CT2", "--out", o]);
    assert!(out_dir.join("ct-scanner-2.pem").exists() && out_dir.join("ct-scanner-2.key").exists());
    let listed = String::from_utf8(run(&data, &["device", "list"]).stdout).unwrap();
    assert!(listed.contains("ct-scanner-2\tCT2\tsha256:") && listed.contains("active"), "{listed}");
    run(&data, &["device", "revoke", "ct-scanner-2"]);
    assert!(String::from_utf8(run(&data, &["device", "list"]).stdout).unwrap().contains("revoked"));

    let added = run(&data, &["user", "add", "nurse7", "--role", "nurse", "--department", "ward-7", "--out", o]);
    let stderr = String::from_utf8_lossy(&added.stderr);
    let creds = std::fs::read_to_string(out_dir.join("nurse7-credentials.txt")).unwrap();
    let password = creds.lines().find_map(|l| l.strip_prefix("password = ")).unwrap();
    assert!(!stderr.contains(password), "the password must not be printed");
    let users = String::from_utf8(run(&data, &["user", "list"]).stdout).unwrap();
    assert!(users.contains("nurse7\tnurse\tward-7\tactive"), "{users}");
    run(&data, &["user", "disable", "nurse7"]);
    assert!(String::from_utf8(run(&data, &["user", "list"]).stdout).unwrap().contains("nurse7\tnurse\tward-7\tdisabled"));

    run(&data, &["keys", "rotate", "broker-data"]);
    let ring: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("keys/keyring.json")).unwrap()).unwrap();
    let versions = ring["keys"].as_array().unwrap().iter().filter(|k| k["purpose"] == "broker-data").count();
    assert_eq!(versions, 2);
    // The data directory still opens after the rotation (every held version unwraps).
    assert!(String::from_utf8(run(&data, &["user", "list"]).stdout).unwrap().contains("admin"));
    let bad = Command::new(env!("CARGO_BIN_EXE_cleave-broker")).arg("--data-dir").arg(&data).args(["user", "add", "x", "--role", "surgeon", "--department", "d"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
}

/// `cleave-broker serve` on `data` with `args`, and its stderr lines as they come. The lines
/// are read on a thread for the server's whole life: a closed pipe would make its next log
/// line fail.
fn serve(data: &std::path::Path, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cleave-broker"))
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits (up to 60 s) for the line starting with `prefix`; `Err` with everything seen.
fn line_starting(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> Result<String, String> {
    let mut seen = String::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
        if line.starts_with(prefix) {
            return Ok(line);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    Err(seen)
}

/// `serve --dicom-listen` starts the DICOM TLS port; a device enrolled on the command line
/// can C-ECHO it with dcmtk, presenting the certificate the CLI wrote.
#[test]
fn serve_with_dicom_listen_answers_an_enrolled_device() {
    let echoscu = std::path::Path::new("/usr/bin/echoscu");
    assert!(echoscu.exists(), "/usr/bin/echoscu is missing: install the Debian package dcmtk (apt-get install dcmtk)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cleave-data");
    let out_dir = dir.path().join("out");
    run(&data, &["enroll", "device", "ct-scanner-3", "--ae-title", "CT3", "--out", out_dir.to_str().unwrap()]);

    let (mut serve, rx) = serve(&data, &["--listen", "127.0.0.1:0", "--dicom-listen", "127.0.0.1:0"]);
    let announced = line_starting(&rx, "DICOM TLS listener on ");
    let port = announced.as_ref().ok().and_then(|line| {
        let addr = line.strip_prefix("DICOM TLS listener on ")?.split_whitespace().next()?;
        addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
    });
    let echo = port.map(|port| {
        Command::new(echoscu)
            .env("TCP_NODELAY", "1")
            .arg("+tls")
            .arg(out_dir.join("ct-scanner-3.key"))
            .arg(out_dir.join("ct-scanner-3.pem"))
            .arg("+cf")
            .arg(data.join("pki/ca.pem"))
            .args(["-to", "10", "-aet", "CT3", "-aec", "CLEAVE", "127.0.0.1", &port.to_string()])
            .output()
            .unwrap()
    });
    let _ = serve.kill();
    let _ = serve.wait();
    let echo = echo.unwrap_or_else(|| panic!("serve did not announce the DICOM listener: {announced:?}"));
    assert!(
        echo.status.success(),
        "echoscu failed: {}{}",
        String::from_utf8_lossy(&echo.stdout),
        String::from_utf8_lossy(&echo.stderr)
    );
}

/// A service manager stops the broker with SIGTERM (systemd, Docker): it exits cleanly and
/// signs its audit log's tail on the way out, as with Ctrl-C. Without that, the entries
/// since the last periodic checkpoint stay unsigned until the next start.
#[test]
fn serve_stops_in_order_on_sigterm() {
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cleave-data");
        let (mut serve, rx) = serve(&data, &["--listen", "127.0.0.1:0"]);
        if let Err(seen) = line_starting(&rx, "cleave-broker listening on") {
            panic!("serve did not start: {seen}");
        }
        assert!(!data.join("audit/tree.json").exists(), "no checkpoint yet (the periodic one is 10 s away)");
        let sent = Command::new("kill").arg(signal).arg(serve.id().to_string()).status().unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(s) = serve.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "{signal}: the broker did not stop");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(status.success(), "{signal}: exit {status:?}");
        // The closing checkpoint covers every entry: the tree files were marked at it.
        let entries = std::fs::read(data.join("audit/entries.log")).unwrap();
        let header = entries.iter().position(|&b| b == b'\n').unwrap() + 1;
        let (mut at, mut count) = (header, 0u64);
        while at < entries.len() {
            at += 44 + u32::from_be_bytes(entries[at..at + 4].try_into().unwrap()) as usize;
            count += 1;
        }
        let mark: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("audit/tree.json")).unwrap_or_default())
            .unwrap_or_else(|_| panic!("{signal}: no closing checkpoint was signed"));
        assert!(count > 0 && mark["size"].as_u64() == Some(count), "{signal}: {mark} for {count} entries");
    }
}
