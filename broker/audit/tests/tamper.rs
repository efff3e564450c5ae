//! Every way of altering the log on disk is caught by the auditor's verification, which
//! names the first bad leaf index or checkpoint. The files are opened raw and mutated.
mod common;

use cleave_audit::*;
use common::*;

const N: u64 = 60;
const CHECKPOINTS: &[u64] = &[10, 25, 40, 60];

fn setup() -> (tempfile::TempDir, CheckpointVerifier, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let notes = build_log(dir.path(), N, CHECKPOINTS);
    let v = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap().verifier();
    (dir, v, notes)
}

fn first_problem(dir: &std::path::Path, v: &CheckpointVerifier, last_seen: Option<&str>) -> Problem {
    match verify_dir(dir, v, last_seen) {
        Ok(r) => panic!("tampering went unnoticed: {r:?}"),
        Err(e) => e.failure().expect("verification ran").first().clone(),
    }
}

fn entries(dir: &std::path::Path) -> Vec<RawRecord> {
    parse_records(&std::fs::read(dir.join("entries.log")).unwrap(), ENTRIES_HEADER)
}

fn checkpoints(dir: &std::path::Path) -> Vec<RawRecord> {
    parse_records(&std::fs::read(dir.join("checkpoints.log")).unwrap(), CHECKPOINTS_HEADER)
}

#[test]
fn intact_log_verifies_from_disk_and_from_the_api() {
    let (dir, v, notes) = setup();
    let r = verify_dir(dir.path(), &v, Some(&notes[1])).unwrap();
    assert_eq!((r.entries, r.checkpoints, r.unsigned_tail), (N, 4, 0));
    assert_eq!(r.newest.unwrap().size, N);

    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let raw = log.raw_entries(0, 1000).unwrap();
    let cps = log.checkpoints(0, 100).unwrap();
    assert_eq!(verify_log(raw.clone(), &cps, &v, Some(&notes[0])).unwrap().entries, N);
    // The same material with one byte changed fails through the API path too.
    let mut bad = raw;
    bad[33].bytes[20] ^= 1;
    assert_eq!(verify_log(bad, &cps, &v, None).unwrap_err().first().leaf_index(), Some(33));
}

#[test]
fn edited_entry_byte_is_named_and_the_log_refuses_to_open() {
    let (dir, v, _) = setup();
    let path = dir.path().join("entries.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let rec = &entries(dir.path())[37];
    bytes[rec.offset + 12 + 30] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(first_problem(dir.path(), &v, None), Problem::EntryDamaged { index: 37, .. }));
    refused_once_checked(dir.path(), |e| matches!(e, Error::Corrupt { file: "entries", index: 37, .. }));
}

#[test]
fn edited_entry_with_recomputed_record_hash_is_caught_by_the_covering_checkpoint() {
    let (dir, v, _) = setup();
    let mut recs = entries(dir.path());
    let text = String::from_utf8(recs[30].payload.clone()).unwrap();
    // A still-canonical edit: another account name.
    let forged = text.replacen("\"name\":\"user0\"", "\"name\":\"user9\"", 1);
    assert_ne!(forged, text);
    recs[30].payload = forged.into_bytes();
    recs[30].hash = entry_hash(&recs[30].payload);
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    // Checkpoints at 25 and 40: the change is pinned to [25, 40).
    assert_eq!(first_problem(dir.path(), &v, None), Problem::RootMismatch { seq: 2, from: 25, to: 40 });
    refused_once_checked(dir.path(), |e| matches!(e, Error::CheckpointMismatch { seq: 2, .. }));
}

/// An edit below the tree files' mark (`nodes.rs`). Opening reads only what follows the
/// mark, so the log opens; its background check of the history finds the edit; every later
/// append is refused with that same error (a broker then refuses requests); and the next
/// open, which reads every entry again because the mark was withdrawn, refuses to open.
fn refused_once_checked(dir: &std::path::Path, is_it: impl Fn(&Error) -> bool) {
    let log = AuditLog::open(dir, manual_options(), &signing_key()).expect("the log opens from its tree files");
    let found = log.wait_checked().expect_err("the history check finds the edit");
    assert!(is_it(&found), "{found}");
    let refused = log.append(&entry(N)).expect_err("no entry is taken once the check failed");
    assert!(is_it(&refused), "{refused}");
    drop(log);
    assert!(!dir.join("tree.json").exists(), "the mark is withdrawn");
    let again = AuditLog::open(dir, manual_options(), &signing_key()).expect_err("the next open reads every entry and refuses");
    assert!(is_it(&again), "{again}");
}

#[test]
fn deleted_entry_is_named() {
    let (dir, v, _) = setup();
    let mut recs = entries(dir.path());
    recs.remove(20);
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::EntryMissing { index: 20 });
}

#[test]
fn deleted_entry_with_renumbered_records_is_caught_by_the_covering_checkpoint() {
    let (dir, v, _) = setup();
    let mut recs = entries(dir.path());
    recs.remove(12);
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64;
    }
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::RootMismatch { seq: 1, from: 10, to: 25 });
}

#[test]
fn reordered_entries_are_named() {
    let (dir, v, _) = setup();
    let original = entries(dir.path());
    let mut recs = original.clone();
    recs.swap(44, 45);
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    // Entry 45 stands in 44's place: 44 is not where it belongs.
    assert_eq!(first_problem(dir.path(), &v, None), Problem::EntryMissing { index: 44 });
    // An earlier entry moved later (or copied) is out of order at its new place.
    let mut recs = original.clone();
    let moved = recs.remove(3);
    recs.insert(6, moved);
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::EntryMissing { index: 3 });
    let mut recs = original;
    let copy = recs[3].clone();
    recs[9] = copy;
    rewrite(&dir.path().join("entries.log"), ENTRIES_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::EntryOutOfOrder { index: 9, found: 3 });
}

#[test]
fn truncated_entries_are_named() {
    let (dir, v, _) = setup();
    let path = dir.path().join("entries.log");
    let recs = entries(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    // Mid-record.
    std::fs::write(&path, &bytes[..recs[50].offset + 7]).unwrap();
    assert!(matches!(first_problem(dir.path(), &v, None), Problem::EntryDamaged { index: 50, .. }));
    // At a record boundary: the signed checkpoint of 60 entries names the first missing.
    std::fs::write(&path, &bytes[..recs[50].offset]).unwrap();
    assert_eq!(
        first_problem(dir.path(), &v, None),
        Problem::EntriesMissingUnderCheckpoint { seq: 3, first_missing: 50 }
    );
    assert!(matches!(
        AuditLog::open(dir.path(), manual_options(), &signing_key()),
        Err(Error::Corrupt { file: "entries", index: 50, .. })
    ));
}

#[test]
fn edited_checkpoints_are_named() {
    let (dir, v, _) = setup();
    let path = dir.path().join("checkpoints.log");
    let original = checkpoints(dir.path());

    // A changed size line, record hash recomputed: the signature fails.
    let mut recs = original.clone();
    let note = String::from_utf8(recs[1].payload.clone()).unwrap().replacen("\n25\n", "\n24\n", 1);
    recs[1].payload = note.into_bytes();
    recs[1].hash = checkpoint_hash(1, &recs[1].payload);
    rewrite(&path, CHECKPOINTS_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::CheckpointBadSignature { seq: 1 });

    // A changed root byte without fixing the record hash: damaged on disk.
    rewrite(&path, CHECKPOINTS_HEADER, &original);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = original[2].offset + 12 + ORIGIN.len() + 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(first_problem(dir.path(), &v, None), Problem::CheckpointDamaged { seq: 2, .. }));
}

#[test]
fn deleted_checkpoint_is_named() {
    let (dir, v, _) = setup();
    let mut recs = checkpoints(dir.path());
    recs.remove(1);
    rewrite(&dir.path().join("checkpoints.log"), CHECKPOINTS_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::CheckpointMissing { seq: 1 });
    assert!(AuditLog::open(dir.path(), manual_options(), &signing_key()).is_err());
}

#[test]
fn reordered_checkpoints_are_named() {
    let (dir, v, _) = setup();
    let mut recs = checkpoints(dir.path());
    recs.swap(1, 2);
    rewrite(&dir.path().join("checkpoints.log"), CHECKPOINTS_HEADER, &recs);
    // Record hashes bind the sequence number: checkpoint 1's place holds checkpoint 2.
    assert!(matches!(first_problem(dir.path(), &v, None), Problem::CheckpointMissing { seq: 1 }));
    // Both records are the same length, so the newest checkpoint stays where the tree
    // files' mark says: the log opens, and its background check finds the swap.
    refused_once_checked(dir.path(), |e| matches!(e, Error::Corrupt { file: "checkpoints", index: 1, .. }));
}

#[test]
fn truncated_checkpoints_are_named() {
    let (dir, v, notes) = setup();
    let path = dir.path().join("checkpoints.log");
    let recs = checkpoints(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..recs[3].offset + 40]).unwrap();
    assert!(matches!(first_problem(dir.path(), &v, None), Problem::CheckpointDamaged { seq: 3, .. }));
    // The whole newest checkpoint removed: an auditor who saw it knows.
    std::fs::write(&path, &bytes[..recs[3].offset]).unwrap();
    assert_eq!(first_problem(dir.path(), &v, Some(&notes[3])), Problem::LastSeenAhead { size: 60 });
}

#[test]
fn forged_checkpoints_are_named() {
    let (dir, v, _) = setup();
    let path = dir.path().join("checkpoints.log");
    let log_root = {
        let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
        log.root(N).unwrap()
    };
    let original = checkpoints(dir.path());

    // Signed by another key, for the true root.
    let other = CheckpointSigner::from_audit_signing_key(ORIGIN, &cleave_keys::Key32::from_bytes(&mut [9; 32])).unwrap();
    let forged = other.sign(&Checkpoint { origin: ORIGIN.into(), size: N, root: log_root }).note.into_bytes();
    let mut recs = original.clone();
    recs[3].hash = checkpoint_hash(3, &forged);
    recs[3].payload = forged;
    rewrite(&path, CHECKPOINTS_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::CheckpointBadSignature { seq: 3 });

    // Signed by the right key (a compromised broker), over a root the entries do not have.
    let signer = CheckpointSigner::from_audit_signing_key(ORIGIN, &signing_key()).unwrap();
    let mut wrong = log_root;
    wrong[0] ^= 0xff;
    let lie = signer.sign(&Checkpoint { origin: ORIGIN.into(), size: N, root: wrong }).note.into_bytes();
    let mut recs = original;
    recs[3].hash = checkpoint_hash(3, &lie);
    recs[3].payload = lie;
    rewrite(&path, CHECKPOINTS_HEADER, &recs);
    assert_eq!(first_problem(dir.path(), &v, None), Problem::RootMismatch { seq: 3, from: 40, to: 60 });
}

#[test]
fn a_rewritten_history_is_inconsistent_with_what_the_auditor_saw() {
    let (dir, v, notes) = setup();
    // The whole directory replaced by a freshly built log that differs at entry 5.
    let forked = tempfile::tempdir().unwrap();
    let log = AuditLog::open(forked.path(), manual_options(), &signing_key()).unwrap();
    for i in 0..N + 5 {
        log.append(&entry(if i == 5 { 1000 } else { i })).unwrap();
    }
    log.checkpoint().unwrap();
    drop(log);
    assert_eq!(first_problem(forked.path(), &v, Some(&notes[1])), Problem::LastSeenInconsistent { size: 25 });
    // The genuine log is consistent with it.
    verify_dir(dir.path(), &v, Some(&notes[1])).unwrap();
}
