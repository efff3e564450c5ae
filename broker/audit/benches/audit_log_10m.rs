//! The scale benchmark, through a real on-disk log: append N entries (default
//! 10 000 000; `CLEAVE_AUDIT_BENCH_LEAVES` or the first argument overrides) with
//! `append_batch`, reopen the log from its tree files (reading only the entries after their
//! mark) and time the background check of the whole history, reopen it once more without
//! the mark (every record read and checked, the tree files rebuilt), with the memory each
//! open costs; then time inclusion and consistency proof generation and verification
//! through the `AuditLog` API against a signed checkpoint, and how long finding one
//! patient's entries takes, by scanning and through the reference index.
//!
//! Not part of the test suite: 10M entries are about 3.5 GB on disk and a few minutes of
//! work. Run `cargo bench -p cleave-audit --bench audit_log_10m [-- N]`. The directory is
//! a temporary one under `CLEAVE_AUDIT_BENCH_DIR` (default: the system temp dir).
use std::time::Instant;

use cleave_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use cleave_audit::*;

fn options() -> LogOptions {
    let mut o = LogOptions::new("bench.example/audit");
    o.checkpoint_interval = None;
    o.checkpoint_every_entries = None;
    o
}

fn key() -> cleave_keys::Key32 {
    cleave_keys::Key32::from_bytes(&mut [5; 32])
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("CLEAVE_AUDIT_BENCH_LEAVES").ok().and_then(|v| v.parse().ok()))
        .unwrap_or(10_000_000);
    let base = std::env::var_os("CLEAVE_AUDIT_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let refs = ReferenceKey::new(cleave_keys::Key32::from_bytes(&mut [3; 32]));

    let t = Instant::now();
    {
        let log = AuditLog::open(dir.path(), options(), &key()).unwrap();
        let mut i = 0u64;
        let mut batch = Vec::with_capacity(4096);
        while i < n {
            batch.clear();
            for j in i..(i + 4096).min(n) {
                let mut a = Actor::new(ActorKind::Staff, format!("user{}", j % 50));
                a.grant = Some(format!("grant{j}"));
                batch.push(
                    Entry::new(a, Operation::ClinicalRead, Outcome::Allowed)
                        .with_resource(refs.patient_ref(&format!("p{}", j % 100_000))),
                );
            }
            let r = log.append_batch(&batch).unwrap();
            assert_eq!(r.start, i);
            i = r.end;
        }
        log.checkpoint().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.path().join("entries.log")).unwrap().len();
    println!("appended {n} entries with append_batch(4096) in {secs:.1} s: {:.0} entries/s, {:.2} GB", n as f64 / secs, bytes as f64 / 1e9);

    let (log, t) = timed_open(dir.path(), "from the tree files");
    log.wait_checked().unwrap();
    println!("background check of the whole history done {:.1?} after opening", t.elapsed());
    drop(log);
    std::fs::remove_file(dir.path().join("tree.json")).unwrap();
    let (log, _) = timed_open(dir.path(), "without the mark (every record read and checked, tree files rebuilt)");
    let cp = log.latest_checkpoint().unwrap().checkpoint;
    assert_eq!(cp.size, n);

    let samples = 10_000u64;
    let indexes: Vec<u64> = (0..samples).map(|k| (k * 7_919_993 + 17) % n).collect();
    let t = Instant::now();
    let proofs: Vec<Vec<Hash>> = indexes.iter().map(|&i| log.inclusion_proof(i, n).unwrap()).collect();
    let gen = t.elapsed() / samples as u32;
    let leaves: Vec<Hash> =
        indexes.iter().map(|&i| leaf_hash(&log.raw_entries(i, 1).unwrap()[0].bytes)).collect();
    let t = Instant::now();
    for ((i, p), l) in indexes.iter().zip(&proofs).zip(&leaves) {
        assert!(verify_inclusion(l, *i, n, p, &cp.root));
    }
    let ver = t.elapsed() / samples as u32;
    println!("inclusion proof at {n}: generate {gen:.2?}, verify {ver:.2?} ({} hashes)", proofs[0].len());

    let olds: Vec<u64> = (0..samples).map(|k| 1 + (k * 7_919_993) % (n - 1)).collect();
    let roots: Vec<Hash> = olds.iter().map(|&m| log.root(m).unwrap()).collect();
    let t = Instant::now();
    let cproofs: Vec<Vec<Hash>> = olds.iter().map(|&m| log.consistency_proof(m, n).unwrap()).collect();
    let gen = t.elapsed() / samples as u32;
    let t = Instant::now();
    for ((m, p), r) in olds.iter().zip(&cproofs).zip(&roots) {
        assert!(verify_consistency(*m, n, r, &cp.root, p));
    }
    let ver = t.elapsed() / samples as u32;
    println!("consistency proof to {n}: generate {gen:.2?}, verify {ver:.2?}");
    let t = Instant::now();
    for &m in &olds[..1000] {
        log.root(m).unwrap();
    }
    println!("root of an arbitrary prefix: {:.2?}", t.elapsed() / 1000);

    // "Who accessed this patient", as the auditor's client asks it: page by page, following
    // the cursor. First as soon as the log is open (the reference index not yet checked or
    // built on this open: every entry is scanned, 100 000 per call), then through the index.
    let wanted = refs.patient_ref("p4242");
    let who = |log: &AuditLog, how: &str| {
        let t = Instant::now();
        let (mut start, mut found, mut calls) = (0u64, 0usize, 0u32);
        loop {
            let page = log.list(&Query { start, limit: 1000, resource: Some(wanted), ..Query::default() }).unwrap();
            found += page.entries.len();
            calls += 1;
            match page.next {
                Some(n) => start = n,
                None => break,
            }
        }
        println!("entries touching one patient, {how}: {found} in {:.1?} ({calls} calls)", t.elapsed());
        found
    };
    drop(log);
    let (log, opened) = timed_open(dir.path(), "again, to time the reference index");
    let scanned = who(&log, "before the index is usable (scanning)");
    assert!(log.wait_indexed(std::time::Duration::from_secs(3600)));
    println!("reference index usable {:.1?} after opening (checked, then built to the last entry)", opened.elapsed());
    assert_eq!(who(&log, "through the reference index"), scanned);
    // Once more with the index complete: what each start of the broker costs before
    // listings use it (the check of every posting against the entries).
    drop(log);
    let (log, opened) = timed_open(dir.path(), "with a complete reference index");
    assert!(log.wait_indexed(std::time::Duration::from_secs(3600)));
    println!("reference index checked and usable {:.1?} after opening", opened.elapsed());
}

/// Opens the log, says how long that took, how many entries it read and the memory it
/// added, and returns it with the instant the open began.
fn timed_open(dir: &std::path::Path, how: &str) -> (AuditLog, Instant) {
    let (rss, t) = (rss_kib(), Instant::now());
    let log = AuditLog::open(dir, options(), &key()).unwrap();
    println!(
        "reopened {how} in {:.1?} ({} entries read, resident memory +{} KiB)",
        t.elapsed(),
        log.entries_read_on_open(),
        rss_kib().saturating_sub(rss)
    );
    (log, t)
}

/// This process's resident memory (VmRSS), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}
