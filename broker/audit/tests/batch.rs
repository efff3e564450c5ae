//! The append paths beyond `append`: `append_batch` (consecutive indexes, all or nothing,
//! one fsync) and `submit` (many appends in flight, acknowledged by `.wait()` or `.await`),
//! mixed with concurrent plain appenders.
mod common;

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use cleave_audit::*;
use common::*;

/// A minimal executor: poll, park until woken. Enough to prove the writer wakes the task.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn batches_get_consecutive_indexes_among_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap());
    let mut ranges = Vec::new();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let log = &log;
            s.spawn(move || {
                for i in 0..50 {
                    log.append(&entry(1000 + t * 100 + i)).unwrap();
                }
            });
        }
        for b in 0..10u64 {
            let batch: Vec<Entry> = (0..37).map(|i| entry(b * 37 + i)).collect();
            let r = log.append_batch(&batch).unwrap();
            assert_eq!(r.end - r.start, 37);
            ranges.push((b, r));
        }
    });
    assert_eq!(log.size(), 200 + 370);
    for (b, r) in ranges {
        let raw = log.raw_entries(r.start, 37).unwrap();
        for (i, e) in raw.iter().enumerate() {
            assert_eq!(Entry::from_canonical_bytes(&e.bytes, e.index).unwrap(), entry(b * 37 + i as u64), "batch {b} entry {i}");
        }
    }
    assert_eq!(log.append_batch(&[]).unwrap(), 570..570);
    log.checkpoint().unwrap();
    let v = log.verifier();
    drop(log);
    assert_eq!(verify_dir(dir.path(), &v, None).unwrap().entries, 570);
}

#[test]
fn a_batch_with_one_invalid_entry_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    log.append(&entry(0)).unwrap();
    let mut bad = entry(2);
    bad.actor.name = "Jane Doe, 12 Main St".into(); // free text: refused by the entry rules
    assert!(matches!(log.append_batch(&[entry(1), bad]), Err(Error::InvalidEntry { .. })));
    assert_eq!(log.size(), 1);
    let too_many = vec![entry(3); 65_537];
    assert!(matches!(log.append_batch(&too_many), Err(Error::InvalidEntry { field: "entries", .. })));
    assert_eq!(log.size(), 1);
}

#[test]
fn submitted_appends_are_acknowledged_by_wait_and_by_await_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let pending: Vec<PendingAppend> = (0..300).map(|i| log.submit(&entry(i)).unwrap()).collect();
    let mut indexes = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        indexes.push(if i % 2 == 0 { p.wait().unwrap() } else { block_on(p).unwrap() });
    }
    // One submitter: its entries keep their order.
    assert_eq!(indexes, (0..300).collect::<Vec<u64>>());
    // Acknowledged means readable and durable: a fresh open sees them all.
    let raw = log.raw_entries(0, 300).unwrap();
    assert_eq!(Entry::from_canonical_bytes(&raw[299].bytes, 299).unwrap(), entry(299));
    drop(log);
    assert_eq!(AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap().size(), 300);
    // An invalid entry is refused at submit, before anything is queued.
    let log = AuditLog::open(dir.path(), manual_options(), &signing_key()).unwrap();
    let mut bad = entry(1);
    bad.actor.name = String::new();
    assert!(log.submit(&bad).is_err());
    assert_eq!(log.size(), 300);
    // Awaited straight away: the first poll finds it pending (the fsync takes time) and
    // the writer's wake-up is what completes it.
    assert_eq!(block_on(log.submit(&entry(300)).unwrap()).unwrap(), 300);
}
