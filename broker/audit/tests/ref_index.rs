//! The reference index (`src/index.rs`): listings by patient or account give exactly what
//! a scan of every entry gives, whatever state the index file is in when the log opens.
mod common;

use std::path::Path;

use cleave_audit::*;
use common::*;

/// Far more than indexing these few hundred entries takes, even on a loaded CI machine.
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn open(dir: &Path) -> AuditLog {
    AuditLog::open(dir, manual_options(), &signing_key()).unwrap()
}

/// A log of `n` of the common entries, with its reference index built.
fn indexed_log(dir: &Path, n: u64) -> AuditLog {
    let log = open(dir);
    for i in 0..n {
        log.append(&entry(i)).unwrap();
    }
    assert!(log.wait_indexed(WAIT));
    log
}

/// The insider's edit: the posting of `leaf` under patient `p` removed. Returns how many rows went.
fn remove_posting(dir: &Path, p: u64, leaf: u64) -> usize {
    let db = rusqlite::Connection::open(index_path(dir)).unwrap();
    db.execute("DELETE FROM postings WHERE key = ?1 AND leaf = ?2", rusqlite::params![patient(p).to_string().into_bytes(), leaf as i64]).unwrap()
}

fn patient(i: u64) -> ResourceRef {
    reference_key().patient_ref(&format!("pseudo-{i}"))
}

/// Every page of a listing, followed to its end.
fn all_pages(log: &AuditLog, mut q: Query) -> Vec<u64> {
    let mut leaves = Vec::new();
    loop {
        let page = log.list(&q).unwrap();
        leaves.extend(page.entries.iter().map(|(i, _)| *i));
        match page.next {
            Some(n) => q.start = n,
            None => return leaves,
        }
    }
}

/// What the listing must return: every entry read and filtered here, not by the log.
fn expected(log: &AuditLog, resource: Option<&ResourceRef>, account: Option<&str>, op: Option<Operation>) -> Vec<u64> {
    let raw = log.raw_entries(0, log.size() as usize).unwrap();
    raw.iter()
        .filter_map(|r| {
            let e = Entry::from_canonical_bytes(&r.bytes, r.index).unwrap();
            let ok = resource.is_none_or(|x| e.resources.contains(x))
                && account.is_none_or(|a| e.actor.name == a)
                && op.is_none_or(|o| e.operation == o);
            ok.then_some(r.index)
        })
        .collect()
}

fn by_patient(i: u64) -> Query {
    Query { resource: Some(patient(i)), limit: 3, ..Query::default() }
}

fn index_path(dir: &Path) -> std::path::PathBuf {
    dir.join("refs.sqlite")
}

/// Every listing the tests compare, with its expected leaves.
fn check_all(log: &AuditLog) {
    for p in 0..11 {
        let want = expected(log, Some(&patient(p)), None, None);
        assert!(!want.is_empty());
        assert_eq!(all_pages(log, by_patient(p)), want, "patient {p}");
    }
    for a in 0..5 {
        let name = format!("user{a}");
        let q = Query { account: Some(name.clone()), limit: 7, ..Query::default() };
        assert_eq!(all_pages(log, q), expected(log, None, Some(&name), None), "account {name}");
    }
    // Both, and another filter on top: the index narrows, the query still decides.
    let q = Query { resource: Some(patient(4)), account: Some("user2".into()), operation: Some(Operation::Login), ..Query::default() };
    assert_eq!(all_pages(log, q), expected(log, Some(&patient(4)), Some("user2"), Some(Operation::Login)));
    // From the middle of the log.
    let q = Query { start: log.size() / 2, ..by_patient(7) };
    let want: Vec<u64> = expected(log, Some(&patient(7)), None, None).into_iter().filter(|&i| i >= log.size() / 2).collect();
    assert_eq!(all_pages(log, q), want);
}

#[test]
fn listings_by_patient_and_account_agree_with_every_entry_before_and_after_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..1500 {
        log.append(&entry(i)).unwrap();
    }
    check_all(&log); // whatever the index has reached so far
    assert!(log.wait_indexed(WAIT));
    check_all(&log);
    // Entries the index has not reached yet are found by the scan after it.
    for i in 1500..1540 {
        log.append(&entry(i)).unwrap();
    }
    check_all(&log);
    // A patient nobody touched.
    assert!(log.list(&Query { resource: Some(patient(99)), ..Query::default() }).unwrap().entries.is_empty());
}

#[test]
fn a_posting_removed_from_the_file_is_found_on_the_next_open_and_the_index_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let victim;
    {
        let log = indexed_log(dir.path(), 600);
        victim = expected(&log, Some(&patient(3)), None, None)[5];
        // While the log is open, the index it built is trusted: removing a posting now
        // hides that entry from listings by patient. This is what the check on the next
        // open is for (and shows that listings do read the index).
        assert_eq!(remove_posting(dir.path(), 3, victim), 1);
        assert!(!all_pages(&log, by_patient(3)).contains(&victim), "the listing read the index");
    }
    let log = open(dir.path());
    // Before the check has passed the index is not used, so nothing is hidden.
    assert!(all_pages(&log, by_patient(3)).contains(&victim));
    assert!(log.wait_indexed(WAIT));
    check_all(&log);
    let db = rusqlite::Connection::open(index_path(dir.path())).unwrap();
    let back: i64 = db
        .query_row("SELECT count(*) FROM postings WHERE key = ?1 AND leaf = ?2", rusqlite::params![patient(3).to_string().into_bytes(), victim as i64], |r| r.get(0))
        .unwrap();
    assert_eq!(back, 1, "the rebuilt index has the posting again");
}

#[test]
fn an_added_posting_is_found_too_and_never_lists_an_entry_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = indexed_log(dir.path(), 300);
        // Leaf 0 names patient 0; claim it names patient 5 as well.
        let db = rusqlite::Connection::open(index_path(dir.path())).unwrap();
        db.execute("INSERT INTO postings (key, leaf) VALUES (?1, 0)", [patient(5).to_string().into_bytes()]).unwrap();
        // Every entry a posting names is checked against the query.
        assert_eq!(all_pages(&log, by_patient(5)), expected(&log, Some(&patient(5)), None, None));
    }
    let log = open(dir.path());
    assert!(log.wait_indexed(WAIT));
    let db = rusqlite::Connection::open(index_path(dir.path())).unwrap();
    let stale: i64 = db
        .query_row("SELECT count(*) FROM postings WHERE key = ?1 AND leaf = 0", [patient(5).to_string().into_bytes()], |r| r.get(0))
        .unwrap();
    assert_eq!(stale, 0, "the check rebuilt the index without the added posting");
    check_all(&log);
}

#[test]
fn an_index_of_another_log_or_a_damaged_file_is_replaced() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    {
        let _log_a = indexed_log(a.path(), 400);
        let log_b = open(b.path());
        for i in 0..200 {
            log_b.append(&entry(i * 7 + 1)).unwrap();
        }
    }
    // Log B gets log A's index (a restore from the wrong backup, say).
    std::fs::copy(index_path(a.path()), index_path(b.path())).unwrap();
    {
        let log = open(b.path());
        check_all(&log);
        assert!(log.wait_indexed(WAIT));
        check_all(&log);
    }
    // A file that is not a database at all.
    std::fs::write(index_path(b.path()), b"not a database, and not much of anything else either").unwrap();
    let log = open(b.path());
    assert!(log.wait_indexed(WAIT));
    check_all(&log);
}

/// The insider removes a posting and also rewrites the stored digest to match what is left
/// (the algorithm is in FORMAT.md). Without the log's key they cannot make its tag.
#[test]
fn a_posting_removed_with_the_digest_recomputed_fails_the_tag() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let victim;
    {
        let log = indexed_log(dir.path(), 300);
        victim = expected(&log, Some(&patient(2)), None, None)[3];
    }
    assert_eq!(remove_posting(dir.path(), 2, victim), 1);
    let db = rusqlite::Connection::open(index_path(dir.path())).unwrap();
    let mut limbs = [0u64; 4];
    {
        let mut q = db.prepare("SELECT key, leaf FROM postings").unwrap();
        let mut rows = q.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (key, leaf): (Vec<u8>, i64) = (r.get(0).unwrap(), r.get(1).unwrap());
            let mut h = Sha256::new();
            h.update((key.len() as u64).to_be_bytes());
            h.update(&key);
            h.update((leaf as u64).to_be_bytes());
            let d = h.finalize();
            let mut carry = 0u128;
            for (i, limb) in limbs.iter_mut().enumerate() {
                let s = *limb as u128 + u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap()) as u128 + carry;
                *limb = s as u64;
                carry = s >> 64;
            }
        }
    }
    let digest: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    let stored: Vec<u8> = db.query_row("SELECT v FROM meta WHERE k = 'digest'", [], |r| r.get(0)).unwrap();
    assert_ne!(stored, digest, "the removal changed the digest");
    db.execute("UPDATE meta SET v = ?1 WHERE k = 'digest'", [&digest]).unwrap();
    drop(db);

    let log = open(dir.path());
    assert!(all_pages(&log, by_patient(2)).contains(&victim));
    assert!(log.wait_indexed(WAIT));
    check_all(&log);
    assert!(all_pages(&log, by_patient(2)).contains(&victim), "rebuilt, not trusted");
}

/// A call examines at most 100 000 entries through the index too, then hands back a cursor:
/// one account's entries, none of them of the operation asked for.
#[test]
fn a_listing_through_the_index_is_bounded_per_call_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let busy = |i: u64| {
        let mut e = Entry::new(Actor::new(ActorKind::Device, "ct-scanner-1"), Operation::Ingest, Outcome::Allowed);
        e.time = Timestamp::from_unix_millis(1_790_000_000_000 + i as i64);
        e
    };
    let all: Vec<Entry> = (0..100_050).map(busy).collect();
    for chunk in all.chunks(4096) {
        log.append_batch(chunk).unwrap();
    }
    let mut odd = busy(0);
    odd.operation = Operation::Export;
    let last = log.append(&odd).unwrap();
    assert!(log.wait_indexed(WAIT));
    let q = Query { account: Some("ct-scanner-1".into()), operation: Some(Operation::Export), ..Query::default() };
    let first = log.list(&q).unwrap();
    assert!(first.entries.is_empty());
    assert_eq!(first.next, Some(100_000), "stopped after 100 000 entries, with a cursor");
    let second = log.list(&Query { start: 100_000, ..q }).unwrap();
    assert_eq!(second.entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![last]);
    assert_eq!(second.next, None);
}
