//! Open on demand: closed by default, opened by a request, closed after the idle TTL with
//! its keys dropped, reopened transparently; a blob reader outlives the closing.
//! (Its own test binary: it counts live key sets process-wide.)
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clinical_store::bench_support::live_key_sets;
use clinical_store::{ClinicalStore, PutOutcome};
use common::*;

fn wait_closed(od: &cleave_keys::OnDemand<ClinicalStore, clinical_store::Error>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while od.is_open() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_store_closes_drops_its_keys_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let od = ClinicalStore::on_demand(dir.path().join("store"), ring.clone(), Duration::from_millis(300)).unwrap();
    assert!(!od.is_open(), "closed by default");
    assert_eq!(live_key_sets(), 0, "no keys held while closed");

    let m = meta(1, 1, 1, 1);
    let body = Payload::bytes("on demand", 300_000);
    let out = od.with(|s| s.put_instance(m.clone(), |w| w.write_all(&body))).unwrap().unwrap();
    assert_eq!(out, PutOutcome::Stored { size: 300_000 });
    assert!(od.is_open());
    assert_eq!(live_key_sets(), 1);
    let mut reader = od.with(|s| s.open_instance(&m.sop_instance_uid)).unwrap().unwrap();

    wait_closed(&od);
    assert!(!od.is_open(), "still open after the idle TTL");
    assert_eq!(live_key_sets(), 0, "keys survived the closing");
    let stats = od.stats();
    assert_eq!((stats.opens, stats.closes), (1, 1));

    // The reader handed out before the closing streams on with its own key.
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(got == body);

    // Reopens transparently.
    let rec = od.with(|s| s.instance(&m.sop_instance_uid)).unwrap().unwrap();
    assert_eq!(rec.size, 300_000);
    assert_eq!(od.stats().opens, 2);
    wait_closed(&od);
    assert_eq!(live_key_sets(), 0);

    // TTL zero: closed after every request.
    let zero = ClinicalStore::on_demand(dir.path().join("store"), ring, Duration::ZERO).unwrap();
    let n = zero.with(|s| s.list_instances(&m.series_uid).map(|v| v.len())).unwrap().unwrap();
    assert_eq!(n, 1);
    assert!(!zero.is_open());
    assert_eq!(live_key_sets(), 0);
    assert_eq!(zero.stats().closes, 1);
}
