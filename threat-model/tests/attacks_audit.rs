//! T8: an insider with write access to the disk edits the audit log to hide what they did:
//! changes an outcome, deletes their entry, cuts the tail, rolls the log back, or rebuilds
//! it under another key. The auditor's verification (with only the public key and the last
//! checkpoint they saw) must catch each, and name where. The same insider against the
//! broker's own log and its reference index: the broker must notice too.
mod common;

use std::path::Path;

use cleave_audit::*;
use cleave_keys::Key32;
use sha2::{Digest, Sha256};

const ORIGIN: &str = "hospital.test/cleave-audit";
const ENTRIES_HEADER: &[u8] = b"CLEAVE-AUDIT-ENTRIES/1\n";
/// The insider's own entry, the one they want gone.
const MINE: u64 = 23;

fn key(b: u8) -> Key32 {
    Key32::from_bytes(&mut [b; 32])
}

fn options() -> LogOptions {
    let mut o = LogOptions::new(ORIGIN);
    o.checkpoint_interval = None;
    o.checkpoint_every_entries = None;
    o
}

fn entry(i: u64) -> Entry {
    let refs = ReferenceKey::new(key(0x33));
    let who = if i == MINE { "mallory" } else { "nurse" };
    let outcome = if i == MINE { Outcome::denied("patient-not-covered") } else { Outcome::Allowed };
    let mut e = Entry::new(Actor::new(ActorKind::Staff, who), Operation::ClinicalRead, outcome);
    e.time = Timestamp::from_unix_millis(1_790_000_000_000 + i as i64 * 1000);
    e.with_resource(refs.patient_ref(&format!("P1-{:032x}", i % 7)))
}

/// A log of 40 entries with checkpoints at 10, 30 and 40. Returns the auditor's copy of
/// each checkpoint note.
fn build(dir: &Path, signing: &Key32, skip: Option<u64>) -> Vec<String> {
    let log = AuditLog::open(dir, options(), signing).unwrap();
    let mut notes = Vec::new();
    for i in 0..40 {
        if Some(i) != skip {
            log.append(&entry(i)).unwrap();
        }
        if [10, 30, 40].contains(&(i + 1)) {
            notes.push(log.checkpoint().unwrap().note);
        }
    }
    notes
}

/// The records of `entries.log` as (seq, payload), parsed from the bytes.
fn records(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    assert!(bytes.starts_with(ENTRIES_HEADER), "unknown entries format");
    let mut out = Vec::new();
    let mut at = ENTRIES_HEADER.len();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let seq = u64::from_be_bytes(bytes[at + 4..at + 12].try_into().unwrap());
        out.push((seq, bytes[at + 12..at + 12 + len].to_vec()));
        at += 44 + len;
    }
    out
}

/// Write records back with valid per-record hashes: the attacker knows the format.
fn write_records(path: &Path, recs: &[(u64, Vec<u8>)]) {
    let mut out = ENTRIES_HEADER.to_vec();
    for (seq, payload) in recs {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(payload);
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(payload);
        out.extend_from_slice(&h.finalize());
    }
    std::fs::write(path, out).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for f in common::files_under(from) {
        let rel = f.strip_prefix(from).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&f, to.join(rel)).unwrap();
    }
}

#[test]
fn tampered_audit_log_is_detected() {
    let real = tempfile::tempdir().unwrap();
    let notes = build(real.path(), &key(0x5a), None);
    let trusted = AuditLog::open(real.path(), options(), &key(0x5a)).unwrap().verifier();
    // The auditor saw the checkpoint of size 30 (covering the insider's entry 23).
    let seen = notes[1].as_str();
    // The verifier accepts the untouched log, so a failure below is the tampering.
    let r = verify_dir(real.path(), &trusted, Some(seen)).unwrap();
    assert_eq!(r.entries, 40);
    // And the surgery tools are exact: rewriting the records unchanged still verifies.
    let same = tempfile::tempdir().unwrap();
    copy_dir(real.path(), same.path());
    let recs = records(&std::fs::read(same.path().join("entries.log")).unwrap());
    assert_eq!(recs.len(), 40);
    write_records(&same.path().join("entries.log"), &recs);
    verify_dir(same.path(), &trusted, Some(seen)).expect("an unchanged rewrite must verify");
    let mine_text = String::from_utf8(recs[MINE as usize].1.clone()).unwrap();
    assert!(mine_text.contains("mallory"), "entry {MINE} is the insider's");

    // Every problem the auditor is told about (the list names the bad index; which one is
    // listed first is the verifier's business).
    let attack = |name: &str, f: &dyn Fn(&Path)| -> Vec<Problem> {
        let d = tempfile::tempdir().unwrap();
        copy_dir(real.path(), d.path());
        f(d.path());
        match verify_dir(d.path(), &trusted, Some(seen)) {
            Ok(r) => panic!("{name}: tampering went unnoticed ({r:?})"),
            Err(e) => e.failure().unwrap_or_else(|| panic!("{name}: verification did not run: {e:?}")).problems.clone(),
        }
    };

    // Flip one byte of the insider's entry.
    let p = attack("flip a byte", &|d| {
        let path = d.join("entries.log");
        let mut b = std::fs::read(&path).unwrap();
        let at = b.windows(7).position(|w| w == b"mallory").unwrap();
        b[at] = b'n';
        std::fs::write(&path, b).unwrap();
    });
    assert!(p.iter().any(|p| matches!(p, Problem::EntryDamaged { index: MINE, .. })), "{p:?}");
    // Rename the actor and turn the denial into an allow, recomputing the record hash.
    let p = attack("edit with a valid record hash", &|d| {
        let path = d.join("entries.log");
        let mut recs = records(&std::fs::read(&path).unwrap());
        let t = String::from_utf8(recs[MINE as usize].1.clone()).unwrap().replace("mallory", "nurse00");
        recs[MINE as usize].1 = t.into_bytes();
        write_records(&path, &recs);
    });
    assert!(p.contains(&Problem::RootMismatch { seq: 1, from: 10, to: 30 }), "pinned between the checkpoints around it: {p:?}");
    // Delete the insider's record and renumber the rest.
    let p = attack("delete and renumber", &|d| {
        let path = d.join("entries.log");
        let mut recs = records(&std::fs::read(&path).unwrap());
        recs.remove(MINE as usize);
        for (i, r) in recs.iter_mut().enumerate() {
            r.0 = i as u64;
        }
        write_records(&path, &recs);
    });
    assert!(p.iter().any(|p| matches!(p, Problem::RootMismatch { seq: 1, .. } | Problem::EntriesMissingUnderCheckpoint { .. })), "{p:?}");
    // Cut the log back to 20 entries and drop the checkpoints that covered more.
    let p = attack("roll back", &|d| {
        let path = d.join("entries.log");
        let recs = records(&std::fs::read(&path).unwrap());
        write_records(&path, &recs[..20]);
        let cps = d.join("checkpoints.log");
        let b = std::fs::read(&cps).unwrap();
        // Keep the header and the first checkpoint record only.
        let header = b.iter().position(|&c| c == b'\n').unwrap() + 1;
        let len = u32::from_be_bytes(b[header..header + 4].try_into().unwrap()) as usize;
        std::fs::write(&cps, &b[..header + 44 + len]).unwrap();
    });
    assert!(p.contains(&Problem::LastSeenAhead { size: 30 }), "{p:?}");
    // Rebuild the whole log without the entry, signed by a key the insider made up.
    let p = attack("rebuild under another key", &|d| {
        for f in common::files_under(d) {
            std::fs::remove_file(f).unwrap();
        }
        build(d, &key(0x77), Some(MINE));
    });
    assert!(p.iter().any(|p| matches!(p, Problem::CheckpointBadSignature { .. })), "{p:?}");

    // Residual risk, written down in THREATS.md: with the real signing key the insider can
    // fork the log; it verifies for an auditor who holds no checkpoint, and is caught by
    // one who holds the checkpoint of size 30.
    let forked = tempfile::tempdir().unwrap();
    build(forked.path(), &key(0x5a), Some(MINE));
    verify_dir(forked.path(), &trusted, None).expect("a fork under the real key is self-consistent");
    let e = verify_dir(forked.path(), &trusted, Some(seen)).expect_err("the auditor's checkpoint must expose the fork");
    assert!(e.failure().is_some(), "{e:?}");
}

/// The same insider against the broker's own log: after the auditor pinned the published
/// key and fetched a checkpoint, the insider (with the disk, after stopping the server)
/// deletes the record of their denied attempt from `<data>/audit/entries.log`, renumbering
/// and re-hashing the rest, or rewrites it as someone else's.
#[tokio::test]
async fn broker_audit_log_rewritten_on_disk_is_detected() {
    let b = common::start(common::TEST_CONFIG, false).await;
    let mallory = common::person(&b, "mallory", broker::Role::Nurse).await;
    let auditor = common::person(&b, "auditor1", broker::Role::Auditor).await;
    // Mallory tries to read the audit log: denied, and recorded.
    let a = common::call(b.addr(), mallory.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &mallory.token).await;
    assert_eq!(a.status, 403);
    let k = common::call(b.addr(), auditor.cfg.clone(), "GET", "/api/v1/audit/public-key", &auditor.token).await;
    assert_eq!(k.status, 200, "{}", k.body);
    let trusted = CheckpointVerifier::from_vkey(k.json()["verifier_key"].as_str().unwrap()).unwrap();
    let seen = common::call(b.addr(), auditor.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &auditor.token).await.body;
    let seen_size = trusted.verify(&seen).expect("a signed checkpoint").size;
    let dir = b.data().join("audit");
    let b_dir = b.dir;
    drop(b.running);

    // Untouched, it verifies; and the record to erase is there.
    verify_dir(&dir, &trusted, Some(&seen)).expect("the broker's log verifies as written");
    let recs = records(&std::fs::read(dir.join("entries.log")).unwrap());
    let mine = recs
        .iter()
        .position(|(_, p)| {
            let t = String::from_utf8_lossy(p);
            t.contains("mallory") && t.contains("denied")
        })
        .expect("mallory's denied attempt is recorded");
    assert!((mine as u64) < seen_size, "the auditor's checkpoint covers it");

    let tamper = |f: &dyn Fn(&mut Vec<(u64, Vec<u8>)>)| -> VerifyError {
        let d = tempfile::tempdir().unwrap();
        copy_dir(&dir, d.path());
        let mut recs = records(&std::fs::read(d.path().join("entries.log")).unwrap());
        f(&mut recs);
        write_records(&d.path().join("entries.log"), &recs);
        verify_dir(d.path(), &trusted, Some(&seen)).expect_err("tampering went unnoticed")
    };
    let e = tamper(&|r| {
        r.remove(mine);
        for (i, x) in r.iter_mut().enumerate() {
            x.0 = i as u64;
        }
    });
    assert!(e.failure().is_some(), "{e:?}");
    let e = tamper(&|r| {
        let t = String::from_utf8(r[mine].1.clone()).unwrap().replace("mallory", "nurse01");
        r[mine].1 = t.into_bytes();
    });
    let f = e.failure().expect("verification ran");
    assert!(f.problems.iter().any(|p| matches!(p, Problem::RootMismatch { .. })), "{f:?}");

    // The same edit made to the broker's own log, then the broker restarted on it. Opening
    // reads only the tail after the tree files' mark, so it starts; its background check of
    // the history finds the edit, and from then on every request is refused, since a
    // decision that cannot be recorded is not taken.
    let mut recs = records(&std::fs::read(dir.join("entries.log")).unwrap());
    let t = String::from_utf8(recs[mine].1.clone()).unwrap().replace("mallory", "nurse01");
    recs[mine].1 = t.into_bytes();
    write_records(&dir.join("entries.log"), &recs);
    // It starts: opening trusts the tree files up to their mark.
    let b = common::start_in(b_dir, false).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let a = common::call(b.addr(), auditor.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &auditor.token).await;
        if a.status != 200 {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "the broker still serves on an altered audit history");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The caller is told nothing can be recorded; the broker's log names the damage.
    assert_eq!((refused.status, refused.error_code().as_str()), (503, "audit_unavailable"), "{}", refused.body);
    assert!(!refused.body.contains("entries") && !refused.body.contains(".log"), "no file detail: {}", refused.body);
    for _ in 0..3 {
        let a = common::call(b.addr(), mallory.cfg.clone(), "GET", "/api/v1/identity/patients?patient_id=X", &mallory.token).await;
        assert_eq!(a.status, 503, "every request stays refused: {}", a.body);
    }
    drop(b);
}

/// The reference index an auditor's listing by account or patient reads
/// (`broker/audit/src/index.rs`) is a plain SQLite file next to the log, outside the Merkle
/// tree. The insider, with the disk and the server stopped, deletes the postings that point
/// at their own entries, so that "what did mallory do" comes back empty. On every start the
/// broker checks the index (its postings against a digest stored under a tag keyed from the
/// audit-signing key) before it uses it: the listing stays complete throughout, and the
/// index is rebuilt.
#[tokio::test]
async fn audit_index_edited_on_disk_hides_nothing() {
    let b = common::start(common::TEST_CONFIG, false).await;
    let mallory = common::person(&b, "mallory", broker::Role::Nurse).await;
    let auditor = common::person(&b, "auditor1", broker::Role::Auditor).await;
    let a = common::call(b.addr(), mallory.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &mallory.token).await;
    assert_eq!(a.status, 403);
    let listed = |b: &common::Broker| {
        let (addr, cfg, token) = (b.addr(), auditor.cfg.clone(), auditor.token.clone());
        async move {
            let r = common::call(addr, cfg, "GET", "/api/v1/audit/entries?account=mallory&limit=1000", &token).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect::<Vec<u64>>()
        }
    };
    let before = listed(&b).await;
    assert!(!before.is_empty(), "mallory's denied attempt is listed");

    let dir = b.data().join("audit");
    let index = dir.join("refs.sqlite");
    let key = b"account:mallory".to_vec();
    let postings = |index: &Path| -> i64 {
        let Ok(db) = rusqlite::Connection::open_with_flags(index, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else { return -1 };
        db.query_row("SELECT count(*) FROM postings WHERE key = ?1", [&key], |r| r.get(0)).unwrap_or(-1)
    };
    // The broker indexes in the background: wait until mallory's entries are in the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while postings(&index) < before.len() as i64 {
        assert!(std::time::Instant::now() < deadline, "the broker never indexed mallory's entries");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let b_dir = b.dir;
    drop(b.running);

    // The edit: mallory's postings gone, the rest of the file as it was.
    let db = rusqlite::Connection::open(&index).unwrap();
    let removed = db.execute("DELETE FROM postings WHERE key = ?1", [&key]).unwrap();
    assert_eq!(removed, before.len(), "every posting of mallory's entries was removed");
    drop(db);
    assert_eq!(postings(&index), 0);

    let b = common::start_in(b_dir, false).await;
    // Right away (the index not yet checked, so not used) and until it has been rebuilt
    // (then used), the listing names every one of mallory's entries from before.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = listed(&b).await;
        assert!(before.iter().all(|i| now.contains(i)), "an entry of mallory's is hidden: {before:?} against {now:?}");
        if postings(&dir.join("refs.sqlite")) >= before.len() as i64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the altered index was never found and rebuilt");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = listed(&b).await;
    assert!(before.iter().all(|i| now.contains(i)), "after the rebuild: {before:?} against {now:?}");
}

/// After the broker stops on an altered history, the IT team restores `<data>/audit/` from
/// a backup (`cleave-broker audit restore`, README "When the audit log stops the broker").
/// The insider, who had the disk, doctored the backup as well, so that the restore itself
/// would erase their entry. The restore verifies the copy under the data directory's own
/// key first: the doctored copy is refused and nothing changes; an honest copy is
/// restored, with the altered log kept as evidence and the broker serving again.
#[tokio::test]
async fn a_doctored_backup_is_not_restored() {
    let b = common::start(common::TEST_CONFIG, false).await;
    let mallory = common::person(&b, "mallory", broker::Role::Nurse).await;
    let auditor = common::person(&b, "auditor1", broker::Role::Auditor).await;
    let a = common::call(b.addr(), mallory.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &mallory.token).await;
    assert_eq!(a.status, 403);
    let data = b.data().to_owned();
    let b_dir = b.dir;
    drop(b.running);
    let dir = data.join("audit");
    // Stopped as the operator stops it: until its tasks have ended, it holds the log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while AuditLog::lock_dir(&dir).is_err() {
        assert!(std::time::Instant::now() < deadline, "the stopped broker still holds its audit log");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let honest = tempfile::tempdir().unwrap();
    copy_dir(&dir, honest.path());

    // The insider rewrites who was denied, in the live log and in the backup.
    let rewrite = |path: &Path| {
        let mut recs = records(&std::fs::read(path.join("entries.log")).unwrap());
        let mine = recs.iter().position(|(_, p)| String::from_utf8_lossy(p).contains("mallory")).expect("mallory's attempt is recorded");
        let t = String::from_utf8(recs[mine].1.clone()).unwrap().replace("mallory", "nurse01");
        recs[mine].1 = t.into_bytes();
        write_records(&path.join("entries.log"), &recs);
    };
    let doctored = tempfile::tempdir().unwrap();
    copy_dir(&dir, doctored.path());
    rewrite(doctored.path());
    rewrite(&dir);
    let altered = std::fs::read(dir.join("entries.log")).unwrap();
    let evidence = || -> Vec<_> {
        std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("audit-")).collect()
    };

    let opened = broker::open(&data, broker::MasterKeySource::KeyFile).unwrap();
    let refused = broker::AuditTrail::restore_offline(&opened.data_dir, &opened.keyring, doctored.path()).unwrap();
    match refused {
        Err(RestoreError::CopyDoesNotVerify(e)) => assert!(e.failure().is_some(), "{e:?}"),
        other => panic!("the doctored backup was not refused as unverifiable: {other:?}"),
    }
    assert_eq!(std::fs::read(dir.join("entries.log")).unwrap(), altered, "the refused restore changed the live log");
    assert!(evidence().is_empty() && !data.join("audit.restoring").exists(), "the refused restore left {:?}", evidence());

    let restored = broker::AuditTrail::restore_offline(&opened.data_dir, &opened.keyring, honest.path()).unwrap().expect("the honest copy is restored");
    let kept = restored.evidence.expect("the altered log is kept");
    assert_eq!(std::fs::read(kept.join("entries.log")).unwrap(), altered, "the evidence is the altered log as found");
    let live = String::from_utf8_lossy(&std::fs::read(dir.join("entries.log")).unwrap()).into_owned();
    assert!(live.contains("mallory"), "mallory's denied attempt is back in the live log");
    drop(opened);

    // The broker starts on the restored log and serves.
    let b = common::start_in(b_dir, false).await;
    let a = common::call(b.addr(), auditor.cfg.clone(), "GET", "/api/v1/audit/checkpoint", &auditor.token).await;
    assert_eq!(a.status, 200, "{}", a.body);
}
