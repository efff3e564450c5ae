//! Durability: consistent across restarts, every acknowledged entry survives `kill -9`
//! during heavy concurrent appending, and a torn tail is cut on open (only unacknowledged
//! bytes) while damage under a signed checkpoint refuses to open.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cleave_audit::*;
use common::*;

const CHILD_ENV: &str = "CLEAVE_AUDIT_CRASH_CHILD_DIR";

#[test]
fn consistent_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let notes = build_log(dir.path(), 100, &[50, 100]);
    let (root, proof) = {
        let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
        assert!(log.recovery().is_empty());
        assert_eq!(log.size(), 100);
        assert_eq!(log.latest_checkpoint().unwrap().note, notes[1]);
        for i in 100..130 {
            assert_eq!(log.append(&entry(i)).unwrap(), i);
        }
        (log.root(100).unwrap(), log.consistency_proof(100, 130).unwrap())
    };
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    assert_eq!(log.size(), 130);
    assert_eq!(log.root(100).unwrap(), root);
    assert_eq!(log.consistency_proof(100, 130).unwrap(), proof);
    let cp = log.checkpoint().unwrap();
    assert!(merkle::verify_consistency(100, 130, &root, &cp.checkpoint.root, &proof));
    let page = log.list(&Query { start: 95, limit: 10, ..Query::default() }).unwrap();
    assert_eq!(page.entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (95..105).collect::<Vec<_>>());
    assert_eq!(page.entries[0].1, entry(95));
    drop(log);
    verify_dir(dir.path(), &AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap().verifier(), Some(&notes[0]))
        .unwrap();
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    assert!(matches!(AuditLog::open(dir.path(), manual_options(), &signing_key()), Err(Error::Locked(_))));
}

#[test]
fn torn_tail_after_the_newest_checkpoint_is_cut_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 20, &[15]);
    let path = dir.path().join("entries.log");
    let intact = std::fs::read(&path).unwrap();
    // What a crash mid-write leaves: the start of a record for leaf 20.
    let mut torn = intact.clone();
    torn.extend_from_slice(&encode_record(20, b"{\"v\":1,\"time\"", [0; 32])[..30]);
    std::fs::write(&path, &torn).unwrap();

    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    assert_eq!(log.recovery(), &[Recovery { file: "entries", first_dropped: 20, dropped_bytes: 30 }]);
    // The cut is itself in the log, as leaf 20.
    assert_eq!(log.size(), 21);
    let page = log.list(&Query { operation: Some(Operation::LogRecovery), ..Query::default() }).unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].0, 20);
    assert_eq!(page.entries[0].1.outcome, Outcome::error("torn-tail-truncated"));
    let raw = log.raw_entries(0, 20).unwrap();
    assert_eq!(raw.len(), 20);
    assert_eq!(std::fs::read(&path).unwrap()[..intact.len()], intact[..]);
    log.checkpoint().unwrap();
    let v = log.verifier();
    drop(log);
    assert_eq!(verify_dir(dir.path(), &v, None).unwrap().entries, 21);
}

#[test]
fn torn_checkpoint_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 10, &[5, 10]);
    let path = dir.path().join("checkpoints.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let recs = parse_records(&bytes, CHECKPOINTS_HEADER);
    bytes.truncate(recs[1].offset + 50);
    std::fs::write(&path, &bytes).unwrap();
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    assert_eq!(log.recovery()[0].file, "checkpoints");
    assert_eq!(log.latest_checkpoint().unwrap().checkpoint.size, 5);
    assert_eq!(log.checkpoint().unwrap().checkpoint.size, 10);
}

#[test]
fn damage_under_a_signed_checkpoint_is_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 20, &[20]);
    let path = dir.path().join("entries.log");
    let bytes = std::fs::read(&path).unwrap();
    let recs = parse_records(&bytes, ENTRIES_HEADER);
    std::fs::write(&path, &bytes[..recs[19].offset + 10]).unwrap();
    let e = AuditLog::open(dir.path(), manual_options(), &signing_key()).expect_err("refused");
    assert!(matches!(e, Error::Corrupt { file: "entries", index: 19, .. }), "{e}");
    // Nothing was cut by the refused open.
    assert_eq!(std::fs::read(&path).unwrap().len(), recs[19].offset + 10);
}

/// The child: four threads append as fast as they can, a fifth appends batches, and each
/// acknowledgement is printed.
fn child(dir: &str) {
    let mut options = LogOptions::new(ORIGIN);
    options.checkpoint_interval = Some(Duration::from_millis(50));
    options.checkpoint_every_entries = Some(500);
    let log = std::sync::Arc::new(AuditLog::open(std::path::Path::new(dir), options, &signing_key()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for s in 0u64.. {
                    let name = format!("t{t}-s{s}");
                    let e = Entry::new(Actor::new(ActorKind::Device, name.clone()), Operation::Ingest, Outcome::Allowed);
                    let index = log.append(&e).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {index} {name}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    // A fifth appender writes batches (one unit, consecutive indexes) of 40 entries.
    let batcher = {
        let log = log.clone();
        std::thread::spawn(move || {
            for b in 0u64.. {
                let names: Vec<String> = (0..40).map(|i| format!("b-{b}-{i}")).collect();
                let batch: Vec<Entry> = names
                    .iter()
                    .map(|n| Entry::new(Actor::new(ActorKind::Device, n.clone()), Operation::Ingest, Outcome::Allowed))
                    .collect();
                let range = log.append_batch(&batch).unwrap();
                let mut out = std::io::stdout().lock();
                for (index, name) in range.zip(&names) {
                    writeln!(out, "ack {index} {name}").unwrap();
                }
                out.flush().unwrap();
            }
        })
    };
    for t in threads {
        let _ = t.join();
    }
    let _ = batcher.join();
}

#[test]
fn every_acknowledged_entry_survives_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..2 {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["every_acknowledged_entry_survives_kill_9", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        let before = acked.len();
        let started = Instant::now();
        while acked.len() < before + 3000 && started.elapsed() < Duration::from_secs(60) {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.strip_prefix("ack ") {
                let (i, name) = rest.split_once(' ').unwrap();
                acked.push((i.parse().unwrap(), name.to_owned()));
            }
        }
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        // Acknowledgements printed before the kill are still in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ack ") {
                let (i, name) = rest.split_once(' ').unwrap();
                acked.push((i.parse().unwrap(), name.to_owned()));
            }
        }
        assert!(acked.len() > before + 100, "round {round}: the child acknowledged too little to test anything");
    }

    assert!(acked.iter().any(|(_, n)| n.starts_with("b-")), "the batch appender was acknowledged too");
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let size = log.size();
    // The tree files' mark survived the kills: opening read only what followed it, and the
    // background check of everything before it finds the files and the entries agree.
    assert!(log.entries_read_on_open() < size, "{} of {size} entries read on open", log.entries_read_on_open());
    log.wait_checked().unwrap();
    let raw = log.raw_entries(0, size as usize).unwrap();
    for (index, name) in &acked {
        assert!(*index < size, "acknowledged entry {index} lost (log has {size})");
        let e = Entry::from_canonical_bytes(&raw[*index as usize].bytes, *index).unwrap();
        assert_eq!(&e.actor.name, name, "entry {index} is not the one acknowledged");
    }
    let mut indexes: Vec<u64> = acked.iter().map(|(i, _)| *i).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), acked.len(), "an index was acknowledged twice");
    log.checkpoint().unwrap();
    let v = log.verifier();
    drop(log);
    let report = verify_dir(dir.path(), &v, None).unwrap();
    assert_eq!(report.unsigned_tail, 0);
    eprintln!("kill -9 test: {} acknowledged, {} in the log, report {report:?}", acked.len(), size);
}
