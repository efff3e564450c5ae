//! The tree files (`tree.nodes`, `tree.offsets`, `tree.json`) let a log open by reading
//! only the entries after their mark. They are derived data: whatever happens to them, the
//! log's roots and proofs stay those of its entries, and damage is found and repaired by a
//! rebuild from the entries, never served.
mod common;

use std::path::Path;

use cleave_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion, Tree};
use cleave_audit::*;
use common::*;

const N: u64 = 70;
const CHECKPOINTS: &[u64] = &[10, 33, 64];

/// The tree of the entries on disk, computed here from the raw file, independently of
/// the log's own files.
fn reference(dir: &Path) -> Tree {
    let recs = parse_records(&std::fs::read(dir.join("entries.log")).unwrap(), ENTRIES_HEADER);
    Tree::from_leaf_hashes(recs.iter().map(|r| leaf_hash(&r.payload)))
}

/// Roots, every inclusion proof and some consistency proofs through the API agree with
/// the reference tree and verify against it.
fn serves_the_entries_tree(log: &AuditLog, dir: &Path) {
    let t = reference(dir);
    let n = t.size();
    assert_eq!(log.size(), n);
    for size in [1, 9, 10, 33, 63, 64, n] {
        assert_eq!(log.root(size).unwrap(), t.root(size).unwrap(), "root of {size}");
    }
    let root = t.root(n).unwrap();
    let raw = log.raw_entries(0, 10_000).unwrap();
    assert_eq!(raw.len() as u64, n);
    for e in &raw {
        let proof = log.inclusion_proof(e.index, n).unwrap();
        assert!(verify_inclusion(&leaf_hash(&e.bytes), e.index, n, &proof, &root), "inclusion of {}", e.index);
    }
    for old in [1, 10, 33, 50] {
        let proof = log.consistency_proof(old, n).unwrap();
        assert!(verify_consistency(old, n, &t.root(old).unwrap(), &root, &proof), "{old} -> {n}");
    }
}

fn build(dir: &Path) -> Vec<String> {
    build_log(dir, N, CHECKPOINTS)
}

fn open(dir: &Path) -> AuditLog {
    AuditLog::open(dir, manual_options(), &signing_key()).unwrap()
}

#[test]
fn a_reopened_log_serves_the_same_tree_and_its_history_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut notes = build(dir.path());
    let mark: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("tree.json")).unwrap()).unwrap();
    assert_eq!((mark["format"].as_str(), mark["size"].as_u64()), (Some("cleave-audit-tree/1"), Some(64)), "marked at the last checkpoint");
    for round in 0..3u64 {
        let log = open(dir.path());
        assert_eq!(log.entries_read_on_open(), if round == 0 { N - 64 } else { 0 }, "only what follows the mark is read");
        log.wait_checked().unwrap();
        serves_the_entries_tree(&log, dir.path());
        // More entries and a checkpoint move the mark; the next open starts from there.
        let first = log.size();
        for i in 0..7 {
            assert_eq!(log.append(&entry(first + i)).unwrap(), first + i);
        }
        notes.push(log.checkpoint().unwrap().note);
        serves_the_entries_tree(&log, dir.path());
        let listed: Vec<String> = log.checkpoints(0, 100).unwrap().into_iter().map(|c| c.note).collect();
        assert_eq!(listed, notes, "checkpoints are listed from the index");
        assert_eq!(log.checkpoints(2, 2).unwrap().iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(log.latest_checkpoint().unwrap().note, *notes.last().unwrap());
        drop(log);
        let mark: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("tree.json")).unwrap()).unwrap();
        assert_eq!(mark["size"].as_u64(), Some(N + 7 * (round + 1)));
        assert_eq!(mark["checkpoints"].as_u64(), Some(notes.len() as u64));
    }
    let report = verify_dir(dir.path(), &open(dir.path()).verifier(), None).unwrap();
    assert_eq!(report.entries, N + 21);
}

#[test]
fn damaged_tree_files_are_found_by_the_check_and_rebuilt_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // Leaf 5's hash, deep inside the tree: the peaks (and so the signed root) still match,
    // which is what opening checks. Leaf 5 is node 8 in post-order.
    edit(&dir.path().join("tree.nodes"), |b| b[8 * 32] ^= 0x40);

    let log = open(dir.path());
    assert_eq!(log.entries_read_on_open(), N - 64);
    let e = log.wait_checked().expect_err("the check compares every stored hash");
    assert!(matches!(e, Error::Corrupt { file: "tree", index: 5, .. }), "{e}");
    assert!(matches!(log.append(&entry(N)), Err(Error::Corrupt { file: "tree", .. })), "fails closed");
    drop(log);

    let log = open(dir.path());
    assert_eq!(log.entries_read_on_open(), N, "no mark: every entry is read");
    log.wait_checked().unwrap();
    serves_the_entries_tree(&log, dir.path());
    assert_eq!(log.append(&entry(N)).unwrap(), N);
    log.checkpoint().unwrap();
    assert!(dir.path().join("tree.json").exists(), "marked again once rebuilt");
}

#[test]
fn a_mark_that_cannot_be_trusted_means_reading_every_entry() {
    type Spoil = fn(&Path);
    let spoils: [(&str, Spoil); 8] = [
        ("no mark", |d| std::fs::remove_file(d.join("tree.json")).unwrap()),
        ("an unknown format", |d| std::fs::write(d.join("tree.json"), br#"{"format":"cleave-audit-tree/9","size":64,"end":100}"#).unwrap()),
        ("not JSON", |d| std::fs::write(d.join("tree.json"), b"size=64").unwrap()),
        ("a size no checkpoint signed", |d| rewrite_mark(d, 50, None)),
        ("an end past the entries", |d| rewrite_mark(d, 64, Some(1 << 40))),
        ("an end inside the last record", |d| rewrite_mark(d, 64, Some(mark_end(d) - 1))),
        ("a short node file", |d| truncate_by(&d.join("tree.nodes"), (137 - 127 + 1) * 32)),
        ("a peak changed", |d| {
            // The peak of 64 leaves is the last node stored for them.
            edit(&d.join("tree.nodes"), |b| b[(2 * 64 - 1 - 1) * 32 + 3] ^= 1);
        }),
    ];
    for (what, spoil) in spoils {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        spoil(dir.path());
        let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(log.entries_read_on_open(), N, "{what}: every entry is read");
        log.wait_checked().unwrap_or_else(|e| panic!("{what}: {e}"));
        serves_the_entries_tree(&log, dir.path());
        assert_eq!(log.append(&entry(N)).unwrap(), N, "{what}");
    }
}

#[test]
fn tree_files_longer_than_their_mark_are_cut_back() {
    // A crash after a batch wrote its tree nodes but before the next checkpoint: the files
    // hold more than the mark vouches for, some of it garbage.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    for f in ["tree.nodes", "tree.offsets"] {
        edit(&dir.path().join(f), |b| b.extend_from_slice(&[0xEE; 1000]));
    }
    let log = open(dir.path());
    assert_eq!(log.entries_read_on_open(), N - 64);
    log.wait_checked().unwrap();
    serves_the_entries_tree(&log, dir.path());
    for i in 0..5 {
        assert_eq!(log.append(&entry(N + i)).unwrap(), N + i);
    }
    serves_the_entries_tree(&log, dir.path());
}

/// Reads `path`, lets `f` change its bytes, and writes them back.
fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn mark_end(dir: &Path) -> u64 {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tree.json")).unwrap()).unwrap();
    m["end"].as_u64().unwrap()
}

fn rewrite_mark(dir: &Path, size: u64, end: Option<u64>) {
    let end = end.unwrap_or_else(|| mark_end(dir));
    std::fs::write(dir.join("tree.json"), format!(r#"{{"format":"cleave-audit-tree/1","size":{size},"end":{end}}}"#)).unwrap();
}

fn truncate_by(path: &Path, n: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - n).unwrap();
}

#[test]
fn a_damaged_offset_is_an_error_on_reading_and_is_found_by_the_check() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    edit(&dir.path().join("tree.offsets"), |b| b[20 * 8..21 * 8].copy_from_slice(&(1u64 << 50).to_be_bytes()));

    let log = open(dir.path());
    // Until the check has run, a read that meets the bad offset fails; it never allocates
    // what the offset claims, and never returns another record as entry 20.
    match log.raw_entries(15, 10) {
        Err(Error::Corrupt { file: "tree", .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(log.raw_entries(0, 10).unwrap().len(), 10, "reads that do not meet it still work");
    let e = log.wait_checked().expect_err("the check compares every offset");
    assert!(matches!(e, Error::Corrupt { file: "tree", index: 20, .. }), "{e}");
    drop(log);
    let log = open(dir.path());
    log.wait_checked().unwrap();
    serves_the_entries_tree(&log, dir.path());
}

#[test]
fn a_damaged_checkpoint_index_is_an_error_on_listing_and_is_found_by_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let notes = build(dir.path());
    // Checkpoint 1's place now points at checkpoint 0's record.
    edit(&dir.path().join("tree.checkpoints"), |b| b.copy_within(..8, 8));

    let log = open(dir.path());
    assert_eq!(log.entries_read_on_open(), N - 64, "the mark's own checkpoint (2) is where it says");
    match log.checkpoints(1, 1) {
        Err(Error::Corrupt { file: "checkpoints", .. }) => {}
        other => panic!("checkpoint 0 listed as 1: {other:?}"),
    }
    let e = log.wait_checked().expect_err("the check compares the index");
    assert!(matches!(e, Error::Corrupt { file: "tree", index: 1, .. }), "{e}");
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.entries_read_on_open(), N);
    log.wait_checked().unwrap();
    let listed: Vec<String> = log.checkpoints(0, 100).unwrap().into_iter().map(|c| c.note).collect();
    assert_eq!(listed, notes);
}

#[test]
fn checkpoints_altered_below_the_mark_stop_the_log() {
    // A signed checkpoint's record replaced by another with a valid record hash but the
    // root of a different tree: only the background check reads it.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let path = dir.path().join("checkpoints.log");
    let mut recs = parse_records(&std::fs::read(&path).unwrap(), CHECKPOINTS_HEADER);
    let text = String::from_utf8(recs[1].payload.clone()).unwrap();
    let mut lines: Vec<&str> = text.split('\n').collect();
    let forged_root = "A".repeat(43) + "=";
    lines[2] = &forged_root;
    recs[1].payload = lines.join("\n").into_bytes();
    recs[1].hash = checkpoint_hash(1, &recs[1].payload);
    rewrite(&path, CHECKPOINTS_HEADER, &recs);

    let log = open(dir.path());
    let e = log.wait_checked().expect_err("the check recomputes every signed root");
    assert!(matches!(e, Error::CheckpointMismatch { seq: 1, .. }), "{e}");
    drop(log);
    let e = AuditLog::open(dir.path(), manual_options(), &signing_key()).expect_err("the next open reads everything");
    assert!(matches!(e, Error::CheckpointMismatch { seq: 1, .. }), "{e}");
}
