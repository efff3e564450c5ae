//! Every `cleave-broker` operator command is a recorded decision: run as an operator runs
//! it, each leaves a signed entry (a failure a second one) that the auditor's verification
//! accepts; while a broker runs, the command line refuses and changes nothing.
mod common;
/// The audit crate's own record surgery helpers (`broker/audit/tests/common`).
#[path = "../audit/tests/common/mod.rs"]
mod audit_files;

use std::path::Path;
use std::process::{Command, Output};

use cleave_audit::{ActorKind, Operation, OutcomeClass, Query};
use common::*;

fn cli(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleave-broker")).arg("--data-dir").arg(data).args(args).env("USER", "opsuser").output().unwrap()
}

fn ok(data: &Path, args: &[&str]) -> Output {
    let o = cli(data, args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// (actor kind, actor name, operation, outcome class) of every entry, read through the
/// broker's own trail (the command line has exited, so the lock is free).
fn entries(data: &Path) -> (Vec<(ActorKind, String, Operation, OutcomeClass)>, cleave_audit::CheckpointVerifier) {
    let opened = broker::open(data, broker::MasterKeySource::KeyFile).unwrap();
    let trail = broker::AuditTrail::open(data, &opened.keyring, std::time::Duration::from_secs(3600)).unwrap();
    let page = trail.log().list(&Query { limit: 1000, ..Query::default() }).unwrap();
    assert!(page.next.is_none());
    let list = page.entries.into_iter().map(|(_, e)| (e.actor.kind, e.actor.name, e.operation, e.outcome.class())).collect();
    (list, trail.log().verifier())
}

#[test]
fn operator_commands_are_recorded_signed_and_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cleave-data");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    ok(&data, &["enroll", "device", "ct-scanner-9", "--ae-title", "CT9", "--out", o]);
    ok(&data, &["enroll", "person", "drwho", "--out", o]);
    ok(&data, &["user", "add", "nurse8", "--role", "nurse", "--department", "ward-8", "--out", o]);
    ok(&data, &["user", "list"]);
    ok(&data, &["user", "disable", "nurse8"]);
    ok(&data, &["device", "revoke", "ct-scanner-9"]);
    ok(&data, &["keys", "rotate", "broker-data"]);
    // A command that fails after its decision was recorded leaves the failure too.
    assert!(!cli(&data, &["user", "disable", "nobody-here"]).status.success());
    // A usage error (unknown role) is refused before anything is decided: no entry.
    assert!(!cli(&data, &["user", "add", "x", "--role", "surgeon", "--department", "d", "--out", o]).status.success());

    // Each command closed the log with a checkpoint covering its entries.
    let audit_dir = data.join("audit");
    let (list, verifier) = entries(&data);
    let report = cleave_audit::verify_dir(&audit_dir, &verifier, None).expect("the operator's entries verify");
    assert_eq!(report.unsigned_tail, 0, "every command's entries are signed before it exits");
    assert_eq!(report.entries, list.len() as u64);

    let cli_actor = "cleave-broker-cli@opsuser".to_owned();
    use Operation::*;
    use OutcomeClass::*;
    let want: Vec<(ActorKind, String, Operation, OutcomeClass)> = [
        (ActorKind::System, "cleave-broker".to_owned(), Enroll, Allowed), // the bootstrap admin
        (ActorKind::System, cli_actor.clone(), Enroll, Allowed),
        (ActorKind::System, cli_actor.clone(), Enroll, Allowed),
        (ActorKind::System, cli_actor.clone(), Enroll, Allowed),
        (ActorKind::System, cli_actor.clone(), Enroll, Allowed), // user list
        (ActorKind::System, cli_actor.clone(), Revoke, Allowed),
        (ActorKind::System, cli_actor.clone(), Revoke, Allowed),
        (ActorKind::System, cli_actor.clone(), KeyRotate, Allowed),
        (ActorKind::System, cli_actor.clone(), Revoke, Allowed),
        (ActorKind::System, cli_actor, Revoke, Error),
    ]
    .into_iter()
    .collect();
    assert_eq!(list, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_broker_runs_the_command_line_refuses_and_changes_nothing() {
    let b = start(TEST_CONFIG, false).await;
    let data = b.dir.path().to_owned();
    let out = b.dir.path().join("out");
    let before = tokio::task::spawn_blocking({
        let data = data.clone();
        move || broker::open(&data, broker::MasterKeySource::KeyFile).unwrap().accounts.list_staff().unwrap().len()
    })
    .await
    .unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["user", "add", "eve", "--role", "nurse", "--department", "d", "--out", out.to_str().unwrap()], "cleave admin users add"),
        (&["user", "disable", "admin"], "cleave admin users disable"),
        (&["keys", "rotate", "broker-data"], "stop the broker"),
        (&["enroll", "device", "ct-x", "--ae-title", "CTX", "--out", out.to_str().unwrap()], "stop the broker"),
    ];
    for (args, hint) in cases {
        let o = tokio::task::spawn_blocking({
            let data = data.clone();
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || Command::new(env!("CARGO_BIN_EXE_cleave-broker")).arg("--data-dir").arg(&data).args(&args).output().unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} ran alongside the broker");
        assert!(err.contains("nothing was changed") && err.contains(hint), "{args:?}: {err}");
    }
    let (staff, keyring) = tokio::task::spawn_blocking(move || {
        let o = broker::open(&data, broker::MasterKeySource::KeyFile).unwrap();
        (o.accounts.list_staff().unwrap(), std::fs::read_to_string(data.join("keys/keyring.json")).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(staff.len(), before, "no account was added");
    assert!(staff.iter().all(|s| !s.disabled), "no account was disabled");
    let ring: serde_json::Value = serde_json::from_str(&keyring).unwrap();
    assert_eq!(ring["keys"].as_array().unwrap().iter().filter(|k| k["purpose"] == "broker-data").count(), 1, "no key was rotated");
    assert!(!out.join("ct-x.pem").exists(), "no certificate was written");
}

/// The IT team's check when the broker stops serving because its audit history was
/// altered: `cleave-broker audit verify` reads the files offline, says the log verifies,
/// and after an edit names the entry, changes nothing, and fails.
#[test]
fn audit_verify_names_an_altered_entry_offline_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cleave-data");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    // Not a data directory: refused, and nothing created there.
    let none = cli(&data, &["audit", "verify"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no audit log"), "{}", String::from_utf8_lossy(&none.stderr));
    assert!(!data.exists());

    ok(&data, &["user", "add", "nurse8", "--role", "nurse", "--department", "ward-8", "--out", o]);
    ok(&data, &["user", "disable", "nurse8"]);
    let good = ok(&data, &["audit", "verify"]);
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(said.starts_with("the audit log verifies:") && said.contains("0 entries after it not yet signed"), "{said}");

    alter_the_disable(&data.join("audit"));
    let entries = data.join("audit").join("entries.log");
    let bytes = std::fs::read(&entries).unwrap();
    let before: Vec<_> = std::fs::read_dir(data.join("audit")).unwrap().map(|e| e.unwrap().file_name()).collect();

    let bad = cli(&data, &["audit", "verify"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stdout);
    assert!(said.contains("problem: checkpoint") && said.contains("was changed"), "{said}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not verify") && err.contains("Keep a copy of") && err.contains("evidence"), "{err}");
    // A finding about the evidence, not a disk fault of this run.
    assert!(!err.contains("check the disk"), "{err}");
    assert_eq!(std::fs::read(&entries).unwrap(), bytes, "verify wrote nothing");
    let after: Vec<_> = std::fs::read_dir(data.join("audit")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after);
}

/// Copies the files of an audit folder (the operator's backup, taken with the broker stopped).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The insider rewrites who disabled the account in the log in `audit`, keeping the
/// record's own hash right (so only the checkpoints can tell).
fn alter_the_disable(audit: &Path) {
    let entries = audit.join("entries.log");
    let mut records = audit_files::parse_records(&std::fs::read(&entries).unwrap(), audit_files::ENTRIES_HEADER);
    let target = records.iter_mut().rev().find(|r| String::from_utf8_lossy(&r.payload).contains("revoke")).expect("the disable is recorded");
    let text = String::from_utf8(target.payload.clone()).unwrap().replace("opsuser", "someone");
    assert_eq!(text.len(), target.payload.len());
    target.payload = text.into_bytes();
    target.hash = audit_files::entry_hash(&target.payload);
    audit_files::rewrite(&entries, audit_files::ENTRIES_HEADER, &records);
}

fn evidence_folders(data: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("audit-evidence-"))
        .collect();
    v.sort();
    v
}

/// The README's step after `audit verify` fails: `cleave-broker audit restore <copy>` puts
/// back the copy taken with the broker stopped. It refuses a copy that does not verify and
/// a data directory whose broker runs, changing nothing; otherwise the copy becomes the
/// live log, the log records the restore and who ran it, the altered log is kept unchanged
/// as evidence, and the broker's commands work again.
#[test]
fn audit_restore_puts_back_a_verified_copy_and_keeps_the_altered_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cleave-data");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let audit = data.join("audit");
    ok(&data, &["user", "add", "nurse8", "--role", "nurse", "--department", "ward-8", "--out", o]);
    ok(&data, &["user", "disable", "nurse8"]);
    let (at_backup, _) = entries(&data);
    let backup = dir.path().join("backup-audit");
    copy_folder(&audit, &backup);
    let backup_entries = std::fs::read(backup.join("entries.log")).unwrap();
    ok(&data, &["user", "add", "nurse9", "--role", "nurse", "--department", "ward-9", "--out", o]);

    alter_the_disable(&audit);
    assert!(!cli(&data, &["audit", "verify"]).status.success());
    let altered = std::fs::read(audit.join("entries.log")).unwrap();
    let unchanged = |why: &str| {
        assert_eq!(std::fs::read(audit.join("entries.log")).unwrap(), altered, "{why}: the live log was changed");
        assert!(evidence_folders(&data).is_empty(), "{why}: an evidence folder appeared");
        assert!(!data.join("audit.restoring").exists(), "{why}: a staging folder was left");
    };

    // A copy altered the same way is refused, and says where.
    let bad = dir.path().join("bad-copy");
    copy_folder(&backup, &bad);
    alter_the_disable(&bad);
    let refused = cli(&data, &["audit", "restore", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("problem in the copy"), "{}", String::from_utf8_lossy(&refused.stdout));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("does not verify") && err.contains("nothing was changed"), "{err}");
    unchanged("bad copy");

    // Something holding the log (as a running broker does): refused.
    let held = cleave_audit::AuditLog::lock_dir(&audit).unwrap();
    let running = cli(&data, &["audit", "restore", backup.to_str().unwrap()]);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("a broker is running"), "{}", String::from_utf8_lossy(&running.stderr));
    unchanged("log held");
    drop(held);

    let done = ok(&data, &["audit", "restore", backup.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("restored the audit log from") && said.contains("kept, unchanged, in"), "{said}");
    let evidence = evidence_folders(&data);
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    assert_eq!(std::fs::read(evidence[0].join("entries.log")).unwrap(), altered, "the evidence is the altered log, byte for byte");
    assert_eq!(std::fs::read(backup.join("entries.log")).unwrap(), backup_entries, "the copy itself is left as it was");

    // The live log is the copy plus one entry saying it was restored, and by whom.
    let good = ok(&data, &["audit", "verify"]);
    assert!(String::from_utf8_lossy(&good.stdout).contains("0 entries after it not yet signed"));
    let (now, _) = entries(&data);
    assert_eq!(now.len(), at_backup.len() + 1, "{now:?}");
    assert_eq!(now[..at_backup.len()], at_backup[..]);
    let last = now.last().unwrap();
    assert_eq!((last.0, last.1.as_str(), last.2), (ActorKind::System, "cleave-broker-cli@opsuser", Operation::LogRecovery));

    // And the broker's commands work again, recorded after it.
    ok(&data, &["user", "add", "nurse10", "--role", "nurse", "--department", "ward-10", "--out", o]);
    assert_eq!(entries(&data).0.len(), at_backup.len() + 2);
}
