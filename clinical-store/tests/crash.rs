//! An acknowledged put survives `kill -9`: a child process (this test binary, re-invoked)
//! puts instances in a loop, alternately with `put_instance` and with the one-pass path the
//! broker's ingest uses (`begin_instance`, write with a marker, `finish`, `commit_instance`),
//! and prints each acknowledged UID; the parent kills it midway,
//! reopens the store, and checks every acknowledged instance byte for byte, and that the
//! open-time sweep left no temporary or unreferenced blob.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;

const CHILD: &str = "CLEAVE_CLINICAL_CRASH_CHILD";
const ACKS_BEFORE_KILL: usize = 25;

fn child(dir: &std::path::Path) {
    let ring = keyring(dir);
    let mut store = open(dir, &ring);
    for i in 0..5000u32 {
        let m = meta(i % 4, i / 40, i / 8, i);
        let uid = m.sop_instance_uid.clone();
        let len = 20_000 + u64::from(i) * 37_777 % 400_000;
        if i % 2 == 0 {
            store.put_instance(m, |w| Payload::new(&uid, len).write_to(w, 16_384).map(|_| ())).unwrap();
            println!("ACK {uid} {len}");
        } else {
            let marker = format!("P1-{:032x}", 0xabcd_0000_0000u64 + u64::from(i));
            let pseudonym = m.pseudonym.clone();
            let mut p = store.begin_instance(&marker).unwrap();
            p.write_all(marker.as_bytes()).unwrap();
            Payload::new(&uid, len).write_to(&mut p, 16_384).unwrap();
            // The broker's way (writeback started early), and `finish` alone.
            if i % 4 == 1 {
                p.prepare_finish().unwrap();
            }
            let done = p.finish(m).unwrap();
            store.commit_instance(done).unwrap();
            println!("ACK {uid} {len} {pseudonym}");
        }
    }
}

#[test]
fn acknowledged_puts_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    drop(keyring(dir.path())); // created once, shared with the child
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["acknowledged_puts_survive_kill_9", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print "test <name> ... " on the same line before the first ACK.
        if let Some((_, rest)) = line.split_once("ACK ") {
            let mut fields = rest.split(' ');
            let (uid, len) = (fields.next().unwrap(), fields.next().unwrap());
            acked.push((uid.to_owned(), len.parse::<u64>().unwrap(), fields.next().map(str::to_owned)));
            if acked.len() == ACKS_BEFORE_KILL {
                child.kill().unwrap(); // SIGKILL on Unix
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed, not finished");
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "the child stopped before acknowledging enough puts");

    // What a crash between blob rename and index commit leaves, and a half-written temp file.
    let orphan_dir = dir.path().join("store/blobs/ab");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    std::fs::write(orphan_dir.join("ab00112233445566778899aabbccddee"), b"CLVBLOB\x01orphan").unwrap();
    std::fs::write(orphan_dir.join(".ab00112233445566778899aabbccddef.0123456789ab.tmp"), b"half").unwrap();

    let ring = keyring(dir.path());
    let store = open(dir.path(), &ring);
    for (uid, len, pseudonym) in &acked {
        let r = store.open_instance(uid).unwrap_or_else(|e| panic!("acknowledged instance lost: {e}"));
        let (hash, n) = hash_reader(r).unwrap();
        let mut expected = blake3::Hasher::new();
        // One-pass instances begin with the pseudonym that replaced their marker.
        let prefix = pseudonym.as_deref().unwrap_or("");
        expected.update(prefix.as_bytes());
        expected.update(&Payload::bytes(uid, *len as usize));
        assert_eq!((n, hash), (*len + prefix.len() as u64, *expected.finalize().as_bytes()), "acknowledged instance damaged");
    }
    assert!(acked.iter().any(|a| a.2.is_some()) && acked.iter().any(|a| a.2.is_none()), "both paths were exercised");
    // No temporary files, and every blob on disk is one the index refers to, and readable.
    let files = blob_files(&dir.path().join("store"));
    assert!(files.iter().all(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.')), "temp files left: {files:?}");
    let conn = rusqlite::Connection::open(dir.path().join("store/index.sqlite")).unwrap();
    let ids: Vec<String> = conn.prepare("SELECT blob_id FROM instances").unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(files.len(), ids.len(), "unreferenced blobs survived the sweep");
    assert!(ids.len() >= acked.len());
    let uids: Vec<String> = conn.prepare("SELECT sop_instance_uid FROM instances").unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    for uid in uids {
        hash_reader(store.open_instance(&uid).unwrap()).unwrap();
    }
}
