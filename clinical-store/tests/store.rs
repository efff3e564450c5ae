//! The store driven as the ingest path and the broker drive it: put, browse, read back, add
//! notes and observations; then as a thief and a tamperer would treat its directory.
mod common;

use std::io::{Read, Write};

use clinical_store::{ClinicalStore, Error, NewNote, NewObservation, ObservationValue, PutOutcome, StudyQuery};
use common::*;
use zeroize::Zeroizing;

fn put(store: &mut ClinicalStore, m: clinical_store::InstanceMeta, body: &[u8]) -> PutOutcome {
    store.put_instance(m, |w| w.write_all(body)).unwrap()
}

#[test]
fn instances_round_trip_through_blobs_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let mut bodies = Vec::new();
    for (p, st, se, n, len) in [(1, 1, 1, 1, 0usize), (1, 1, 1, 2, 1), (1, 1, 2, 3, 65_536), (1, 2, 1, 4, 200_001), (2, 1, 1, 5, 777)] {
        let m = meta(p, st, se, n);
        let body = Payload::bytes(&m.sop_instance_uid, len);
        assert_eq!(put(&mut store, m.clone(), &body), PutOutcome::Stored { size: len as u64 });
        bodies.push((m, body));
    }
    // Idempotent: the same SOP instance UID again stores nothing and never calls the producer.
    let again = store
        .put_instance(bodies[2].0.clone(), |_| -> std::io::Result<()> { panic!("producer called for a stored instance") })
        .unwrap();
    assert_eq!(again, PutOutcome::AlreadyStored);
    assert_eq!(blob_files(&dir.path().join("store")).len(), bodies.len());

    drop(store);
    let store = open(dir.path(), &ring);
    for (m, body) in &bodies {
        let mut r = store.open_instance(&m.sop_instance_uid).unwrap();
        assert_eq!(r.len(), body.len() as u64);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got == *body, "instance {} read back wrong", m.sop_instance_uid);
        let rec = store.instance(&m.sop_instance_uid).unwrap();
        assert_eq!((rec.series_uid.as_str(), rec.study_uid.as_str(), rec.size), (m.series_uid.as_str(), m.study_uid.as_str(), body.len() as u64));
    }

    // Browse patient -> studies -> series -> instances.
    let p1 = pseudonym(1);
    assert_eq!(store.patient(&p1).unwrap().unwrap().sex.as_deref(), Some("M"));
    let studies = store.find_studies(&StudyQuery { pseudonym: Some(p1.clone()), ..Default::default() }).unwrap();
    assert_eq!(studies.len(), 2);
    let s1 = studies.iter().find(|s| s.study_uid == bodies[0].0.study_uid).unwrap();
    assert_eq!(s1.modalities, vec!["CT", "MR"]);
    assert_eq!((s1.series_count, s1.instance_count), (2, 3));
    assert_eq!(s1.description.as_ref().unwrap().as_str(), Some("study 1"));
    assert_eq!(s1.age_years, Some(41));
    let series = store.list_series(&s1.study_uid).unwrap();
    assert_eq!(series.iter().map(|s| (s.series_number, s.instance_count)).collect::<Vec<_>>(), vec![(Some(1), 2), (Some(2), 1)]);
    assert_eq!(series[1].description.as_ref().unwrap().as_str(), Some("series 2"));
    let inst = store.list_instances(&series[0].series_uid).unwrap();
    assert_eq!(inst.iter().map(|i| i.instance_number).collect::<Vec<_>>(), vec![Some(1), Some(2)]);

    // QIDO-like filters.
    let q = |q: StudyQuery| store.find_studies(&q).unwrap().into_iter().map(|s| s.study_uid).collect::<Vec<_>>();
    assert_eq!(q(StudyQuery::default()).len(), 3);
    assert_eq!(q(StudyQuery { modality: Some("CT".into()), ..Default::default() }), vec![bodies[0].0.study_uid.clone()]);
    assert_eq!(q(StudyQuery { modality: Some("US".into()), ..Default::default() }), Vec::<String>::new());
    assert_eq!(q(StudyQuery { date_from: Some("20240303".into()), ..Default::default() }), vec![bodies[3].0.study_uid.clone()]);
    assert_eq!(q(StudyQuery { date_to: Some("20240202".into()), pseudonym: Some(pseudonym(2)), ..Default::default() }), vec![bodies[4].0.study_uid.clone()]);
    assert_eq!(q(StudyQuery { study_uid: Some(bodies[3].0.study_uid.clone()), ..Default::default() }).len(), 1);
    assert_eq!(q(StudyQuery { limit: Some(1), offset: 1, ..Default::default() }).len(), 1);

    // Not found and invalid input say so without echoing the value.
    assert!(matches!(store.open_instance("2.25.999"), Err(Error::NotFound("instance"))));
    let e = store.find_studies(&StudyQuery { pseudonym: Some("DOE^JANE".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { field: "pseudonym", .. }));
    assert!(!e.to_string().contains("DOE"), "{e}");
}

#[test]
fn a_failed_producer_or_conflict_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let m = meta(1, 1, 1, 1);
    let e = store
        .put_instance(m.clone(), |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(std::io::Error::other("the DICOM parser gave up"))
        })
        .unwrap_err();
    assert!(matches!(e, Error::Producer(_)));
    assert!(blob_files(&dir.path().join("store")).is_empty(), "a failed put left files behind");
    assert!(matches!(store.instance(&m.sop_instance_uid), Err(Error::NotFound(_))));
    // Now it works, and the same study under another pseudonym is a conflict.
    assert_eq!(put(&mut store, m.clone(), b"ok"), PutOutcome::Stored { size: 2 });
    let mut other = meta(2, 1, 1, 9);
    other.study_uid = m.study_uid.clone();
    assert!(matches!(store.put_instance(other, |w| w.write_all(b"x")), Err(Error::Conflict(_))));
    assert_eq!(blob_files(&dir.path().join("store")).len(), 1);
}

/// The one-pass path the broker's ingest uses: begin with a marker, write, finish with the
/// pseudonym, commit. What is read back has the pseudonym where the marker was; a duplicate,
/// a conflict or an abandoned write leaves no file; a write in progress survives the store
/// closing and opening again in the same process.
#[test]
fn a_pending_instance_gets_its_pseudonym_and_leaves_nothing_when_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let marker = "P1-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let m = meta(1, 1, 1, 1);
    let body = |with: &str| {
        let mut b = Payload::bytes("pending", 300_000);
        b[70_000..70_000 + with.len()].copy_from_slice(with.as_bytes());
        b[131_000..131_000 + with.len()].copy_from_slice(with.as_bytes());
        b
    };
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(&body(marker)).unwrap();
    let done = p.finish(m.clone()).unwrap();
    assert_eq!(store.commit_instance(done).unwrap(), PutOutcome::Stored { size: 300_000 });
    let mut got = Vec::new();
    store.open_instance(&m.sop_instance_uid).unwrap().read_to_end(&mut got).unwrap();
    assert!(got == body(&m.pseudonym), "the pseudonym is where the marker was, and only there");

    // The same instance again: AlreadyStored, and the second blob is gone.
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(&body(marker)).unwrap();
    let done = p.finish(m.clone()).unwrap();
    assert_eq!(store.commit_instance(done).unwrap(), PutOutcome::AlreadyStored);
    assert_eq!(blob_files(&dir.path().join("store")).len(), 1);

    // A conflict (same study, other patient) and metadata the index would refuse: refused,
    // nothing left behind.
    let mut other = meta(2, 1, 1, 9);
    other.study_uid = m.study_uid.clone();
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(&body(marker)).unwrap();
    let done = p.finish(other.clone()).unwrap();
    assert!(matches!(store.commit_instance(done), Err(Error::Conflict(_))));
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(&body(marker)).unwrap();
    let mut bad = meta(3, 3, 3, 3);
    bad.study_uid = "not a UID".into();
    assert!(matches!(p.finish(bad), Err(Error::InvalidInput { field: "study UID", .. })));
    assert_eq!(blob_files(&dir.path().join("store")).len(), 1);

    // Abandoned mid-write (a cut connection): its temporary file goes with it.
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(&body(marker)[..100_000]).unwrap();
    drop(p);
    assert_eq!(blob_files(&dir.path().join("store")).len(), 1);
    assert_eq!(std::fs::read_dir(dir.path().join("store/blobs")).unwrap().count(), 256, "all shard directories exist");
}

fn note(p: &str, text: &str, at: &str) -> NewNote {
    NewNote { pseudonym: p.into(), study_uid: None, author: "acct-7f3a".into(), written_at: at.into(), text: Zeroizing::new(text.into()) }
}

fn obs(p: &str, code: &str, name: &str, value: ObservationValue, at: &str) -> NewObservation {
    let mut fields = serde_json::Map::new();
    fields.insert("method".into(), serde_json::json!("standing scale, ward 3"));
    NewObservation { pseudonym: p.into(), study_uid: None, code: code.into(), name: name.into(), value, fields, observed_at: at.into() }
}

#[test]
fn notes_and_observations_round_trip_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let p = pseudonym(5);
    put(&mut store, meta(5, 1, 1, 1), b"dicom");
    let mut n = note(&p, "Patient reports less pain; continue physio.", "2024-05-02T10:00:00Z");
    n.study_uid = Some(meta(5, 1, 1, 1).study_uid);
    let id1 = store.add_note(n).unwrap();
    let id0 = store.add_note(note(&p, "Admitted. Ünïcode ✓", "2024-05-01T09:30:00Z")).unwrap();
    let notes = store.list_notes(&p).unwrap();
    assert_eq!(notes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), vec![id0, id1]);
    assert_eq!(&*notes[0].text, "Admitted. Ünïcode ✓");
    assert_eq!(notes[1].study_uid.as_deref(), Some(meta(5, 1, 1, 1).study_uid.as_str()));
    assert_eq!(notes[1].author, "acct-7f3a");
    assert!(!format!("{:?}", notes[1]).contains("physio"), "Debug must not print note text");

    let values = [
        ("29463-7", "Body weight", ObservationValue::Quantity { value: 72.5, unit: "kg".into() }),
        ("8867-4", "Heart rate", ObservationValue::Number { value: 64.0 }),
        ("72166-2", "Tobacco smoking status", ObservationValue::String { value: "former smoker".into() }),
        ("X-FLAG", "Fall risk", ObservationValue::Boolean { value: true }),
        ("X-DATE", "Last vaccination", ObservationValue::Date { value: "2023-10-01".into() }),
    ];
    for (i, (code, name, v)) in values.iter().enumerate() {
        store.add_observation(obs(&p, code, name, v.clone(), &format!("2024-05-0{}", i + 1))).unwrap();
    }
    drop(store);
    let store = open(dir.path(), &ring);
    let got = store.list_observations(&p, None).unwrap();
    assert_eq!(got.len(), values.len());
    for (o, (code, name, v)) in got.iter().zip(values.iter()) {
        assert_eq!((o.code.as_str(), o.name.as_str()), (*code, *name));
        assert!(o.value == *v, "value of {code} changed");
        assert_eq!(o.fields["method"], "standing scale, ward 3");
    }
    let weights = store.list_observations(&p, Some("29463-7")).unwrap();
    assert_eq!(weights.len(), 1);
    assert!(store.list_observations(&pseudonym(6), None).unwrap().is_empty());
    // Numbers must be finite; an observation on an unknown study is refused.
    let bad = obs(&p, "8867-4", "x", ObservationValue::Number { value: f64::NAN }, "2024-05-01");
    assert!(matches!(store_mut(&dir, &ring).add_observation(bad), Err(Error::InvalidInput { .. })));
    let mut on_unknown = obs(&p, "8867-4", "x", ObservationValue::Number { value: 1.0 }, "2024-05-01");
    on_unknown.study_uid = Some("2.25.42".into());
    assert!(matches!(store_mut(&dir, &ring).add_observation(on_unknown), Err(Error::NotFound("study"))));
}

fn store_mut(dir: &tempfile::TempDir, ring: &cleave_keys::Keyring) -> ClinicalStore {
    open(dir.path(), ring)
}

const CANARIES: [&str; 6] = ["CANARY-NOTE-Zebulon", "CANARY-STUDY-Quixote", "CANARY-SERIES-Xanadu", "CANARY-OBS-Wombat", "CANARY-FIELD-Vortigern", "CANARY-BLOB-Umbrella"];

fn canary_store(dir: &std::path::Path) -> (ClinicalStore, std::sync::Arc<cleave_keys::Keyring>) {
    let ring = keyring(dir);
    let mut store = open(dir, &ring);
    for i in 0..20u32 {
        let mut m = meta(i % 3, i, 1, i);
        m.study_description = Some(format!("{} knee of {i}", CANARIES[1]));
        m.series_description = Some(format!("{} axial", CANARIES[2]));
        let blob_text = format!("DICM...{} in the pixel data...", CANARIES[5]).repeat(3000);
        put(&mut store, m, blob_text.as_bytes());
        store.add_note(note(&pseudonym(i % 3), &format!("{} called about results", CANARIES[0]), "2024-01-01T00:00:00Z")).unwrap();
        let mut o = obs(&pseudonym(i % 3), "X-1", &format!("{} name", CANARIES[3]), ObservationValue::String { value: format!("{} value", CANARIES[3]) }, "2024-01-01");
        o.fields.insert("note".into(), serde_json::json!(CANARIES[4]));
        store.add_observation(o).unwrap();
    }
    (store, ring)
}

fn assert_no_canary(dir: &std::path::Path) {
    let files = files_under(&dir.join("store"));
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "index.sqlite"), "no index in {names:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for c in CANARIES {
            // Also the middle of each canary, in case of a split at a page boundary.
            for probe in [c, &c[7..]] {
                assert!(!bytes.windows(probe.len()).any(|w| w == probe.as_bytes()), "{probe} found in {}", f.display());
            }
        }
    }
}

#[test]
fn a_stolen_disk_shows_no_canary() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ring) = canary_store(dir.path());
    // While open, the -wal holds the latest pages.
    assert!(dir.path().join("store/index.sqlite-wal").exists());
    assert_no_canary(dir.path());
    // The canaries are really there, for a holder of the key.
    assert!(store.list_notes(&pseudonym(0)).unwrap()[0].text.contains(CANARIES[0]));
    let mut body = String::new();
    store.open_instance(&meta(0, 0, 1, 0).sop_instance_uid).unwrap().read_to_string(&mut body).unwrap();
    assert!(body.contains(CANARIES[5]));
    drop(store);
    assert_no_canary(dir.path());
    drop(ring);
}

fn db(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("store/index.sqlite")).unwrap()
}

#[test]
fn tampered_sealed_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let p = pseudonym(1);
    store.add_note(note(&p, "first note", "2024-01-01T00:00:00Z")).unwrap();
    store.add_note(note(&p, "second note", "2024-01-02T00:00:00Z")).unwrap();
    put(&mut store, meta(1, 1, 1, 1), b"x");
    put(&mut store, meta(1, 2, 1, 2), b"y");
    drop(store);

    // A ciphertext swapped between two rows: both refused.
    let c = db(dir.path());
    let rows: Vec<(String, Vec<u8>)> = c
        .prepare("SELECT id, body FROM notes")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    c.execute("UPDATE notes SET body = ?1 WHERE id = ?2", rusqlite::params![rows[1].1, rows[0].0]).unwrap();
    c.execute("UPDATE notes SET body = ?1 WHERE id = ?2", rusqlite::params![rows[0].1, rows[1].0]).unwrap();
    drop(c);
    let store = open(dir.path(), &ring);
    let e = store.list_notes(&p).unwrap_err();
    assert!(matches!(e, Error::SealBroken { table: "notes", column: "body" }), "{e}");
    assert!(!e.to_string().contains("first note") && !e.to_string().contains("second note"), "message leaks content: {e}");
    drop(store);

    // A study description moved to another study's row, then a flipped bit in place.
    let c = db(dir.path());
    // Row ids are random, so order by which study is which: study 2 (the one checked as
    // untouched at the end) comes last.
    let descs: Vec<(String, Vec<u8>)> = c
        .prepare("SELECT id, description FROM studies ORDER BY study_uid = ?1")
        .unwrap()
        .query_map([meta(1, 2, 1, 2).study_uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    c.execute("UPDATE studies SET description = ?1 WHERE id = ?2", rusqlite::params![descs[1].1, descs[0].0]).unwrap();
    drop(c);
    let store = open(dir.path(), &ring);
    assert!(matches!(store.find_studies(&StudyQuery::default()), Err(Error::SealBroken { table: "studies", column: "description" })));
    drop(store);
    let c = db(dir.path());
    let mut flipped = descs[0].1.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    c.execute("UPDATE studies SET description = ?1 WHERE id = ?2", rusqlite::params![flipped, descs[0].0]).unwrap();
    c.execute("UPDATE studies SET description = ?1 WHERE id = ?2", rusqlite::params![descs[1].1, descs[1].0]).unwrap();
    drop(c);
    let store = open(dir.path(), &ring);
    assert!(matches!(store.find_studies(&StudyQuery::default()), Err(Error::SealBroken { .. })));
    // The untouched study still reads.
    let ok = store.find_studies(&StudyQuery { study_uid: Some(meta(1, 2, 1, 2).study_uid), ..Default::default() }).unwrap();
    assert_eq!(ok[0].description.as_ref().unwrap().as_str(), Some("study 2"));
}

/// Read a whole instance; returns the bytes released and the store error, if any.
fn read_all(store: &ClinicalStore, uid: &str) -> (Vec<u8>, Option<Error>) {
    let mut r = match store.open_instance(uid) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 10_000];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                let inner = e.into_inner().expect("blob errors carry their source");
                return (out, Some(*inner.downcast::<Error>().expect("a clinical-store Error")));
            }
        }
    }
}

#[test]
fn tampered_blobs_are_refused_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let mut store = open(dir.path(), &ring);
    let (a, b) = (meta(1, 1, 1, 1), meta(1, 1, 1, 2));
    const CHUNK: usize = 65_536 + 16;
    let body_a = Payload::bytes("a", 65_536 * 3 + 100);
    let body_b = Payload::bytes("b", 65_536 * 3 + 100);
    put(&mut store, a.clone(), &body_a);
    put(&mut store, b.clone(), &body_b);
    let path_of = |store: &ClinicalStore, uid: &str| {
        // Find the blob by content: the one whose bytes change when this instance is read
        // is not observable, so look the id up in the index directly.
        let _ = store;
        let id: String = db(dir.path()).query_row("SELECT blob_id FROM instances WHERE sop_instance_uid = ?1", [uid], |r| r.get(0)).unwrap();
        dir.path().join("store/blobs").join(&id[..2]).join(id)
    };
    let pa = path_of(&store, &a.sop_instance_uid);
    let pb = path_of(&store, &b.sop_instance_uid);
    let good_a = std::fs::read(&pa).unwrap();
    let good_b = std::fs::read(&pb).unwrap();
    let off = |i: usize| 48 + i * CHUNK;
    // The record section at the end (FORMAT.md, version 2): kept in place below, so that
    // each change to the chunks is found by the chunks' own checks.
    let rec_len = 4 + u32::from_be_bytes(good_a[good_a.len() - 4..].try_into().unwrap()) as usize;
    let (chunks_a, rec_a) = good_a.split_at(good_a.len() - rec_len);
    let with_record = |chunks: &[u8]| [chunks, rec_a].concat();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated mid-chunk", with_record(&chunks_a[..chunks_a.len() - 7])));
    cases.push(("final chunk dropped", with_record(&chunks_a[..off(3)])));
    cases.push(("the end cut off", good_a[..good_a.len() - 7].to_vec()));
    let mut v = good_a.clone();
    let at = chunks_a.len() + 5;
    v[at] ^= 0x01;
    cases.push(("record altered", v));
    let mut v = good_a[..off(0)].to_vec();
    v.extend_from_slice(&good_a[off(1)..off(2)]);
    v.extend_from_slice(&good_a[off(0)..off(1)]);
    v.extend_from_slice(&good_a[off(2)..]);
    cases.push(("reordered", v));
    let mut v = good_a.clone();
    v[off(1)..off(2)].copy_from_slice(&good_b[off(1)..off(2)]);
    cases.push(("spliced from another blob", v));
    let mut v = chunks_a.to_vec();
    v.extend_from_slice(&good_a[off(1)..off(2)]);
    cases.push(("extended", with_record(&v)));

    let mut v = good_a.clone();
    v[off(2) + 1000] ^= 0x80;
    cases.push(("flipped bit", v));
    cases.push(("another blob under this id", good_b.clone()));

    for (what, bytes) in cases {
        std::fs::write(&pa, &bytes).unwrap();
        let (got, err) = read_all(&store, &a.sop_instance_uid);
        let err = err.unwrap_or_else(|| panic!("{what}: read without error"));
        assert!(body_a.starts_with(&got), "{what}: released wrong plaintext");
        assert!(got.len() < body_a.len() || what == "record altered", "{what}: released everything");
        let msg = err.to_string();
        assert!(!msg.contains(&a.sop_instance_uid) && !msg.contains("P1-"), "{what}: message leaks an id: {msg}");
        match (what, &err) {
            ("final chunk dropped", Error::BlobTruncated { last_chunk: 2 }) => {}
            ("extended", Error::BlobCorrupt { chunk: 3 }) => {}
            ("reordered", Error::BlobCorrupt { chunk: 0 }) => {}
            ("spliced from another blob", Error::BlobCorrupt { chunk: 1 }) => {}
            ("flipped bit", Error::BlobCorrupt { chunk: 2 }) => {}
            ("another blob under this id", Error::BlobCorrupt { chunk: 0 }) => {}
            ("truncated mid-chunk", Error::BlobCorrupt { chunk: 3 }) => {}
            ("the end cut off", Error::BlobMalformed(_)) => {}
            ("record altered", Error::BlobRecordCorrupt) => {}
            _ => panic!("{what}: unexpected error {err:?}"),
        }
    }
    std::fs::write(&pa, &good_a).unwrap();
    assert_eq!(read_all(&store, &a.sop_instance_uid).0, body_a);
    // Blob B is untouched throughout.
    assert_eq!(read_all(&store, &b.sop_instance_uid).0, body_b);
    drop(store);
}
