//! A power cut may lose the index's last commits of instance rows (they are committed
//! without waiting for the disk), never an acknowledged instance: each blob, fsync'd before
//! the acknowledgement, carries its rows as a sealed record, and the sweep at the next open
//! files it again (FORMAT.md, "Writing durably").
//!
//! The cut is simulated the way the disk would see it: the index files are put back as they
//! were before the unsynced commits, while every blob stays. A blob cut short or altered
//! (an instance never acknowledged) is removed instead, and nothing else is touched.
mod common;

use std::io::{Read, Write};
use std::path::Path;

use clinical_store::{ClinicalStore, InstanceMeta, PutOutcome, StoreKeys, StudyQuery};
use common::*;

/// Everything the index shows of the store, in a stable order, sealed fields opened.
fn view(store: &ClinicalStore) -> Vec<String> {
    let text = |d: &Option<cleave_keys::SecretBytes>| d.as_ref().map(|d| String::from_utf8_lossy(d.expose()).into_owned());
    let mut out = Vec::new();
    for st in store.find_studies(&StudyQuery::default()).unwrap() {
        let sex = store.patient(&st.pseudonym).unwrap().unwrap().sex;
        out.push(format!(
            "study {} of {} ({sex:?}): {:?} {:?} {:?} {:?} {:?} {} series, {} instances",
            st.study_uid,
            st.pseudonym,
            st.study_date,
            st.modalities,
            st.body_part,
            st.age_years,
            text(&st.description),
            st.series_count,
            st.instance_count
        ));
        for se in store.list_series(&st.study_uid).unwrap() {
            out.push(format!("series {} {} {:?} {:?} {}", se.series_uid, se.modality, se.series_number, text(&se.description), se.instance_count));
            for i in store.list_instances(&se.series_uid).unwrap() {
                let mut body = Vec::new();
                store.open_instance(&i.sop_instance_uid).unwrap().read_to_end(&mut body).unwrap();
                out.push(format!(
                    "instance {} {} {} {:?} {} {:?} {} {}",
                    i.sop_instance_uid,
                    i.sop_class_uid,
                    i.transfer_syntax,
                    i.instance_number,
                    i.size,
                    i.frames,
                    i.not_for_research,
                    blake3::hash(&body)
                ));
            }
        }
    }
    out.sort();
    out
}

/// Puts instance `n` by the broker's one-pass path (odd `n`) or `put_instance` (even).
fn put(store: &mut ClinicalStore, m: InstanceMeta, n: u32) {
    let body = Payload::bytes(&m.sop_instance_uid, 30_000 + n as usize * 9_000);
    let outcome = if n % 2 == 1 {
        let marker = format!("P1-{:032x}", 0x5a5a_0000u64 + u64::from(n));
        let mut p = store.begin_instance(&marker).unwrap();
        p.write_all(marker.as_bytes()).unwrap();
        p.write_all(&body).unwrap();
        let done = p.finish(m).unwrap();
        store.commit_instance(done).unwrap()
    } else {
        store.put_instance(m, |w| w.write_all(&body)).unwrap()
    };
    assert!(matches!(outcome, PutOutcome::Stored { .. }));
}

/// The blob file that appeared since `known` was listed.
fn new_blob(store_dir: &Path, known: &[std::path::PathBuf]) -> std::path::PathBuf {
    let mut new: Vec<_> = blob_files(store_dir).into_iter().filter(|f| !known.contains(f)).collect();
    assert_eq!(new.len(), 1);
    new.pop().unwrap()
}

fn index_files(store: &Path) -> Vec<std::path::PathBuf> {
    ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"].iter().map(|f| store.join(f)).collect()
}

#[test]
fn instance_rows_lost_to_a_power_cut_are_filed_again_from_their_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let store_dir = dir.path().join("store");
    let snapshot = dir.path().join("durable-index");
    std::fs::create_dir(&snapshot).unwrap();

    // Before the cut: two instances, then the store closes (its last close checkpoints).
    let mut store = open(dir.path(), &ring);
    put(&mut store, meta(0, 1, 1, 1), 1);
    put(&mut store, meta(0, 1, 1, 2), 2);
    drop(store);
    for f in index_files(&store_dir) {
        if f.exists() {
            std::fs::copy(&f, snapshot.join(f.file_name().unwrap())).unwrap();
        }
    }

    // Then six more, in a new study and patient and in the old ones, acknowledged: their
    // rows are what the cut loses.
    let mut store = open(dir.path(), &ring);
    let mut later = vec![meta(0, 1, 2, 3), meta(1, 2, 1, 4), meta(1, 2, 1, 5), meta(1, 2, 2, 6), meta(2, 3, 4, 7), meta(0, 1, 1, 8)];
    later[4].not_for_research = true;
    later[4].study_description = Some("Thorax \"mit\" KM, ärztlich".into());
    later[4].sex = None;
    for (k, m) in later.into_iter().enumerate() {
        put(&mut store, m, 3 + k as u32);
    }
    let before = view(&store);
    assert_eq!(before.iter().filter(|l| l.starts_with("instance")).count(), 8);

    // Two instances the cut catches before they were acknowledged: one still arriving (its
    // blob has no final chunk and no record yet), one whose record did not reach the disk
    // intact.
    let marker = "P1-77777777777777777777777777777777";
    let known = blob_files(&store_dir);
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(marker.as_bytes()).unwrap();
    p.write_all(&Payload::bytes("arriving", 200_000)).unwrap();
    let arriving = new_blob(&store_dir, &known);
    let partial = std::fs::read(&arriving).unwrap();
    drop(p);
    std::fs::write(&arriving, partial).unwrap();
    let known = blob_files(&store_dir);
    let mut p = store.begin_instance(marker).unwrap();
    p.write_all(marker.as_bytes()).unwrap();
    p.write_all(&Payload::bytes("torn record", 100_000)).unwrap();
    let done = p.finish(meta(3, 9, 9, 99)).unwrap();
    let torn = new_blob(&store_dir, &known);
    // Leave the file as the cut would: never filed, never deleted.
    std::mem::forget(done);
    let mut bytes = std::fs::read(&torn).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&torn, bytes).unwrap();
    assert_eq!(blob_files(&store_dir).len(), 10);
    drop(store);

    // The cut: the index as the disk last held it durably; every blob as written.
    for f in index_files(&store_dir) {
        let _ = std::fs::remove_file(&f);
        let saved = snapshot.join(f.file_name().unwrap());
        if saved.exists() {
            std::fs::copy(&saved, &f).unwrap();
        }
    }
    let (store, report) = ClinicalStore::open_swept(&store_dir, StoreKeys::unwrap(&ring).unwrap()).unwrap();
    assert_eq!(view(&store), before, "every acknowledged instance is back, as it was");
    assert!(!arriving.exists() && !torn.exists(), "blobs that are not whole are removed");
    assert_eq!(blob_files(&store_dir).len(), 8);
    // The report names the six, for the broker's audit trail: by pseudonym and study.
    assert_eq!(report.removed, 2);
    let mut refiled: Vec<(String, String)> = report.refiled.iter().map(|r| (r.pseudonym.clone(), r.study_uid.clone())).collect();
    refiled.sort();
    let mut want: Vec<(String, String)> = [(0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (2, 3)].iter().map(|&(p, st)| (pseudonym(p), meta(p, st, 0, 0).study_uid)).collect();
    want.sort();
    assert_eq!(refiled, want);
    drop(store);

    // And it holds across a normal reopen: nothing is filed twice.
    let (store, report) = ClinicalStore::open_swept(&store_dir, StoreKeys::unwrap(&ring).unwrap()).unwrap();
    assert_eq!((report.removed, report.refiled.len()), (0, 0));
    assert_eq!(view(&store), before);
}
