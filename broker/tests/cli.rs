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
