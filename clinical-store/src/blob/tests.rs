//! The blob format's test vectors (`tests/vectors/`) and its tampering properties.
//!
//! Every `*.json` file in `tests/vectors/` names a blob file, the key and blob id to open it
//! with, the original plaintext and the expected outcome. Good vectors must decrypt to the
//! plaintext and re-encrypt (with their recorded blob nonce) to the same bytes; `fail_*`
//! vectors must fail with the recorded error, releasing nothing but a prefix of the plaintext.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    description: String,
    key: String,
    key_version: u32,
    blob_id: String,
    plaintext: String,
    blob: String,
    expect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob_nonce: Option<String>,
    /// Version 2 only: the record sealed after the chunks, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
}

/// Metadata naming only the pseudonym, for blobs that are written but never filed.
fn named(pseudonym: &str) -> crate::InstanceMeta {
    crate::InstanceMeta { pseudonym: pseudonym.into(), ..Default::default() }
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn key(hex_key: &str, version: u32) -> VersionedKey {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut raw).unwrap();
    VersionedKey { version, key: Key32::from_bytes(&mut raw) }
}

fn outcome(e: &Error) -> String {
    match e {
        Error::BlobCorrupt { chunk } => format!("corrupt:{chunk}"),
        Error::BlobTruncated { last_chunk } => format!("truncated:{last_chunk}"),
        Error::BlobTrailingData { final_chunk } => format!("trailing:{final_chunk}"),
        Error::BlobUnknownFormat => "unknown-format".into(),
        Error::BlobMalformed(_) => "malformed".into(),
        Error::UnknownKeyVersion(_) => "unknown-key-version".into(),
        Error::BlobRecordCorrupt => "record-corrupt".into(),
        other => format!("other: {other}"),
    }
}

/// Decrypt `blob` in small reads, then open its record if it has one; returns what was
/// released, the record and the error, if any.
fn decrypt_whole(blob: &[u8], keys: &[VersionedKey], id: BlobId) -> (Vec<u8>, Option<Vec<u8>>, Option<Error>) {
    let (plain, err) = decrypt(blob, keys, id);
    if err.is_some() {
        return (plain, None, err);
    }
    let layout = Layout::of_slice(blob).expect("decrypt checked the layout");
    let Some((at, n)) = layout.record else { return (plain, None, None) };
    let mut dec = Decoder::over(blob, keys, id).unwrap();
    std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
    let mut sealed = blob[at as usize..at as usize + n].to_vec();
    match dec.open_record(&mut sealed) {
        Ok(()) => {
            sealed.truncate(n - TAG_LEN);
            (plain, Some(sealed), None)
        }
        Err(e) => (plain, None, Some(e)),
    }
}

/// Decrypt `blob` in small reads; returns what was released and the error, if any.
fn decrypt(blob: &[u8], keys: &[VersionedKey], id: BlobId) -> (Vec<u8>, Option<Error>) {
    let mut dec = match Decoder::over(blob, keys, id) {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 37];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                let inner = e.into_inner().expect("blob errors carry their source");
                let e = *inner.downcast::<Error>().expect("the source is a clinical-store Error");
                // Once failed, it stays failed.
                assert!(dec.read(&mut buf).is_err(), "a failed reader must not resume");
                return (out, Some(e));
            }
        }
    }
}

#[test]
fn every_vector_file_has_its_expected_outcome() {
    let mut seen = 0;
    let mut fails = 0;
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let v: Vector = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let blob = std::fs::read(vectors_dir().join(&v.blob)).unwrap();
        let plaintext = hex::decode(&v.plaintext).unwrap();
        let id = BlobId::from_hex(&v.blob_id).unwrap();
        let keys = [key(&v.key, v.key_version)];
        let (got, record, err) = decrypt_whole(&blob, &keys, id);
        seen += 1;
        if name.starts_with("fail_") {
            fails += 1;
            let err = err.unwrap_or_else(|| panic!("{name}: a fail_ vector decrypted without error"));
            assert_eq!(outcome(&err), v.expect, "{name}: wrong error ({err})");
            assert!(plaintext.starts_with(&got), "{name}: released bytes that are not the plaintext");
        } else {
            assert!(err.is_none(), "{name}: {err:?}");
            assert_eq!(v.expect, "ok", "{name}");
            assert_eq!(got, plaintext, "{name}: wrong plaintext");
            assert_eq!(record.map(hex::encode), v.record, "{name}: wrong record");
            let nonce: [u8; 32] = hex::decode(v.blob_nonce.as_ref().unwrap()).unwrap().try_into().unwrap();
            let mut again = Vec::new();
            encrypt_to_vec(&keys[0], id, v.chunk_size.unwrap(), nonce, &plaintext, v.record.as_deref().map(|r| hex::decode(r).unwrap()).as_deref(), &mut again).unwrap();
            assert!(again == blob, "{name}: encryption does not reproduce the vector");
        }
    }
    assert!(seen >= 15 && fails >= 10, "expected the full vector corpus, found {seen} ({fails} fail_)");
}

/// Independent implementation: PyNaCl (libsodium) and the reference BLAKE3 decrypt and
/// re-encrypt every good vector (`tests/xcheck_blob.py`).
#[test]
fn good_vectors_match_libsodium() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xcheck_blob.py");
    let out = std::process::Command::new("python3").arg(&script).arg(vectors_dir()).output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run python3 ({e}): install python3 with `pip install pynacl blake3`"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the independent check failed (needs `pip install pynacl blake3`):\n{stdout}\n{stderr}"
    );
    let checked = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checked >= 5, "python checked only {checked} vectors:\n{stdout}");
}

#[test]
fn chunk_boundaries_round_trip() {
    let k = key(&"11".repeat(32), 3);
    let id = BlobId::random();
    for len in [0usize, 1, 63, 64, 65, 127, 128, 129, 64 * 5 + 7] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut blob = Vec::new();
        encrypt_to_vec(&k, id, 64, [9; 32], &pt, None, &mut blob).unwrap();
        let chunks = if len == 0 { 1 } else { len.div_ceil(64) };
        assert_eq!(blob.len(), HEADER_LEN + len + chunks * TAG_LEN, "len {len}");
        let (got, err) = decrypt(&blob, std::slice::from_ref(&k), id);
        assert!(err.is_none(), "len {len}: {err:?}");
        assert_eq!(got, pt);
        // Every truncation point is refused, not just chunk boundaries.
        for cut in 0..blob.len() {
            let (got, err) = decrypt(&blob[..cut], std::slice::from_ref(&k), id);
            assert!(err.is_some(), "len {len}: truncation to {cut} bytes went unnoticed");
            assert!(pt.starts_with(&got));
        }
        // And every flipped bit.
        for i in (0..blob.len()).step_by(5) {
            let mut bad = blob.clone();
            bad[i] ^= 0x10;
            let (got, err) = decrypt(&bad, std::slice::from_ref(&k), id);
            assert!(err.is_some(), "len {len}: flip at {i} went unnoticed");
            assert!(pt.starts_with(&got));
        }
    }
}

/// Version 2: every cut and every flipped bit anywhere in the file (chunks, record or its
/// length) is refused by a whole read, which releases nothing but a prefix of the plaintext,
/// and no input makes the reader panic.
#[test]
fn version_2_refuses_every_cut_and_flip() {
    let k = key(&"12".repeat(32), 1);
    let id = BlobId::random();
    let record = br#"{"format":"cleave-instance-record/1"}"#;
    for len in [0usize, 1, 64, 65, 64 * 3 + 7] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let mut blob = Vec::new();
        encrypt_to_vec(&k, id, 64, [4; 32], &pt, Some(record), &mut blob).unwrap();
        let (got, rec, err) = decrypt_whole(&blob, std::slice::from_ref(&k), id);
        assert!(err.is_none(), "len {len}: {err:?}");
        assert_eq!((got, rec.as_deref()), (pt.clone(), Some(&record[..])));
        for cut in 0..blob.len() {
            let (got, _, err) = decrypt_whole(&blob[..cut], std::slice::from_ref(&k), id);
            assert!(err.is_some(), "len {len}: a cut to {cut} bytes went unnoticed");
            assert!(pt.starts_with(&got));
        }
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x08;
            let (got, _, err) = decrypt_whole(&bad, std::slice::from_ref(&k), id);
            assert!(err.is_some(), "len {len}: a flip at {i} went unnoticed");
            assert!(pt.starts_with(&got));
        }
    }
}

#[test]
fn key_versions_are_chosen_by_the_header() {
    let old = key(&"01".repeat(32), 1);
    let new = key(&"02".repeat(32), 2);
    let id = BlobId::random();
    let mut blob = Vec::new();
    encrypt_to_vec(&old, id, 64, [1; 32], b"sealed before rotation", None, &mut blob).unwrap();
    let (got, err) = decrypt(&blob, &[new, old], id);
    assert!(err.is_none());
    assert_eq!(got, b"sealed before rotation");
    let (_, err) = decrypt(&blob, &[key(&"02".repeat(32), 2)], id);
    assert!(matches!(err, Some(Error::UnknownKeyVersion(1))));
}

/// Writes the vector corpus. Run with
/// `CLEAVE_WRITE_VECTORS=1 cargo test -p clinical-store write_vectors -- --ignored`;
/// the files are committed and checked by the tests above, so a format change shows up as
/// a diff in `tests/vectors/`.
#[test]
#[ignore]
fn write_vectors() {
    if std::env::var_os("CLEAVE_WRITE_VECTORS").is_none() {
        return;
    }
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let key_hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    let k = key(&key_hex, 1);
    let id_hex = "5ca1ab1e0ddba11c0ffee15bad5eed00";
    let id = BlobId::from_hex(id_hex).unwrap();
    let nonce = |b: u8| -> [u8; 32] { std::array::from_fn(|i| b.wrapping_add(i as u8 * 7)) };
    let save_with = |name: &str, desc: &str, pt: &[u8], blob: &[u8], expect: &str, extra: Option<(u32, [u8; 32])>, id_hex: &str, kv: u32, record: Option<&[u8]>| {
        std::fs::write(dir.join(format!("{name}.blob")), blob).unwrap();
        let v = Vector {
            description: desc.into(),
            key: key_hex.clone(),
            key_version: kv,
            blob_id: id_hex.into(),
            plaintext: hex::encode(pt),
            blob: format!("{name}.blob"),
            expect: expect.into(),
            chunk_size: extra.map(|e| e.0),
            blob_nonce: extra.map(|e| hex::encode(e.1)),
            record: record.map(hex::encode),
        };
        let mut json = serde_json::to_string_pretty(&v).unwrap();
        json.push('\n');
        std::fs::write(dir.join(format!("{name}.json")), json).unwrap();
    };
    let save = |name: &str, desc: &str, pt: &[u8], blob: &[u8], expect: &str, extra: Option<(u32, [u8; 32])>, id_hex: &str, kv: u32| {
        save_with(name, desc, pt, blob, expect, extra, id_hex, kv, None)
    };
    let enc_with = |pt: &[u8], cs: u32, n: [u8; 32], record: Option<&[u8]>| {
        let mut out = Vec::new();
        encrypt_to_vec(&k, id, cs, n, pt, record, &mut out).unwrap();
        out
    };
    let enc = |pt: &[u8], cs: u32, n: [u8; 32]| enc_with(pt, cs, n, None);
    let goods: [(&str, &str, Vec<u8>, u32); 5] = [
        ("empty", "an empty payload: one empty final chunk", Vec::new(), 64),
        ("short", "less than one chunk", b"Cleave blob format test vector: one short chunk.".to_vec(), 64),
        ("two_full_chunks", "exactly two chunks: the final chunk is full", (0..128u32).map(|i| (i * 3) as u8).collect(), 64),
        ("three_and_a_half", "four chunks, the last one half full", (0..224u32).map(|i| (i * 7 + 1) as u8).collect(), 64),
        ("default_chunk_size", "the default 64 KiB chunk size, two chunks", (0..70_000u32).map(|i| (i % 251) as u8).collect(), 65536),
    ];
    for (i, (name, desc, pt, cs)) in goods.iter().enumerate() {
        let n = nonce(i as u8 * 40);
        save(name, desc, pt, &enc(pt, *cs, n), "ok", Some((*cs, n)), id_hex, 1);
    }
    // Fail vectors, all derived from `three_and_a_half` (chunks of 64 + 16 bytes, last 32 + 16).
    let pt = goods[3].2.clone();
    let good = enc(&pt, 64, nonce(120));
    let other = enc(&pt, 64, nonce(200));
    let c = |i: usize| HEADER_LEN + i * 80;
    let chunk = |b: &[u8], i: usize| b[c(i)..(c(i) + 80).min(b.len())].to_vec();
    let mut fails: Vec<(&str, &str, Vec<u8>, &str)> = Vec::new();
    fails.push(("fail_truncated", "the last 10 bytes cut off", good[..good.len() - 10].to_vec(), "corrupt:3"));
    fails.push(("fail_missing_last_chunk", "the final chunk removed", good[..c(3)].to_vec(), "truncated:2"));
    let mut b = good[..c(0)].to_vec();
    b.extend(chunk(&good, 1));
    b.extend(chunk(&good, 0));
    b.extend(&good[c(2)..]);
    fails.push(("fail_reordered", "chunks 0 and 1 swapped", b, "corrupt:0"));
    let mut b = good.clone();
    b[c(1)..c(2)].copy_from_slice(&chunk(&other, 1));
    fails.push(("fail_spliced", "chunk 1 taken from another blob under the same key and id", b, "corrupt:1"));
    let mut b = good.clone();
    b[c(2) + 5] ^= 0x04;
    fails.push(("fail_flipped_bit", "one bit flipped in chunk 2", b, "corrupt:2"));
    let mut b = good.clone();
    b[20] ^= 0x01;
    fails.push(("fail_flipped_header_bit", "one bit flipped in the header's blob nonce", b, "corrupt:0"));
    let mut b = good.clone();
    b.extend(chunk(&good, 1));
    fails.push(("fail_extra_chunk", "a chunk appended after a partial final chunk: it runs into the final chunk", b, "corrupt:3"));
    let mut b = good.clone();
    b[7] = 3;
    fails.push(("fail_unknown_version", "format version byte 3", b, "unknown-format"));
    let mut b = good.clone();
    b[0] = b'X';
    fails.push(("fail_bad_magic", "not a blob", b, "unknown-format"));
    let mut b = good.clone();
    b[11] = 7;
    fails.push(("fail_unknown_key_version", "sealed under key version 7", b, "unknown-key-version"));
    let mut b = good.clone();
    b[14] = 0; // 64 -> 128 bytes
    b[15] = 128;
    fails.push(("fail_chunk_size_changed", "header chunk size changed from 64 to 128", b, "corrupt:0"));
    let mut b = good.clone();
    b[15] = 100;
    fails.push(("fail_chunk_size_invalid", "chunk size not a power of two", b, "malformed"));
    fails.push(("fail_header_only", "a header and no chunk at all", good[..HEADER_LEN].to_vec(), "truncated:0"));
    fails.push(("fail_empty_file", "a zero-length file", Vec::new(), "unknown-format"));
    for (name, desc, blob, expect) in fails {
        save(name, desc, &pt, &blob, expect, None, id_hex, 1);
    }
    // Extension after a full final chunk: the final chunk verifies only as final.
    let full_pt = goods[2].2.clone();
    let full = enc(&full_pt, 64, nonce(80));
    let mut b = full.clone();
    b.extend_from_slice(&full[c(0)..c(1)]);
    save("fail_extra_chunk_after_full", "a chunk appended after a full final chunk", &full_pt, &b, "trailing:1", None, id_hex, 1);
    save(
        "fail_wrong_blob_id",
        "a good blob opened under another blob id",
        &pt,
        &good,
        "corrupt:0",
        None,
        "5ca1ab1e0ddba11c0ffee15bad5eed01",
        1,
    );

    // Version 2: the same chunks, then the sealed record and its length.
    let record = br#"{"format":"cleave-instance-record/1","example":"any bytes; the store writes JSON"}"#;
    let v2 = enc_with(&pt, 64, nonce(160), Some(record));
    save_with("v2_record", "version 2: four chunks, the last one half full, then a record", &pt, &v2, "ok", Some((64, nonce(160))), id_hex, 1, Some(record));
    let e = enc_with(&[], 64, nonce(170), Some(b""));
    save_with("v2_empty", "version 2: an empty payload and an empty record", &[], &e, "ok", Some((64, nonce(170))), id_hex, 1, Some(b""));
    let rec_at = v2.len() - 4 - (record.len() + TAG_LEN);
    let mut v2_fails: Vec<(&str, &str, Vec<u8>, &str)> = Vec::new();
    let mut b = v2.clone();
    b[rec_at + 3] ^= 0x20;
    v2_fails.push(("fail_v2_record_flipped", "version 2: one bit flipped in the sealed record", b, "record-corrupt"));
    let mut b = v2.clone();
    let n = b.len();
    b[n - 1] += 1;
    v2_fails.push(("fail_v2_record_length_changed", "version 2: the record length one more: the last chunk loses its last byte", b, "corrupt:3"));
    let mut b = v2.clone();
    b[7] = 1;
    v2_fails.push(("fail_v2_as_v1", "version 2 relabelled as version 1: the header is authenticated", b, "corrupt:0"));
    let mut b = good.clone();
    b[7] = 2;
    v2_fails.push(("fail_v1_as_v2", "version 1 relabelled as version 2: its last tag bytes read as a record length", b, "malformed"));
    let mut b = v2[..rec_at].to_vec();
    b.extend_from_slice(&((record.len() + TAG_LEN) as u32).to_be_bytes());
    v2_fails.push(("fail_v2_record_removed", "version 2 with its sealed record cut out: the length now reaches into the chunks", b, "corrupt:2"));
    for (name, desc, blob, expect) in v2_fails {
        save(name, desc, &pt, &blob, expect, None, id_hex, 1);
    }
}

/// A pending blob must come out byte for byte as the ordinary encoder would seal the
/// plaintext with the marker replaced: same chunks, same nonces, nothing sealed twice.
#[test]
fn a_pending_blob_equals_the_ordinary_encoding_of_the_replaced_plaintext() {
    let k = key(&"33".repeat(32), 2);
    let dir = tempfile::tempdir().unwrap();
    let marker = b"P1-0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let real = b"P1-aaaabbbbccccddddeeeeffff00001111";
    let l = marker.len();
    let mut case = 0u32;
    // (plaintext length, where markers start): start, middle, straddling each chunk
    // boundary by every amount, at the very end, several at once, none but one.
    let mut layouts: Vec<(usize, Vec<usize>)> = vec![(l, vec![0]), (63, vec![10]), (64, vec![64 - l]), (200, vec![0, 64, 128])];
    for cut in 1..l {
        layouts.push((64 * 3 + 5, vec![64 - cut]));
        layouts.push((64 * 3 + 5, vec![128 - cut, 20]));
        layouts.push((64 * 3, vec![192 - l, 64 - cut]));
    }
    layouts.push((64 * 4 + l, vec![64 * 4]));
    layouts.push((64 * 9, vec![3, 64 * 9 - l]));
    for (len, starts) in layouts {
        let mut plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut expected = plain.clone();
        for &s in &starts {
            plain[s..s + l].copy_from_slice(marker);
            expected[s..s + l].copy_from_slice(real);
        }
        for piece in [1usize, 7, 64, 1000] {
            case += 1;
            let id = BlobId::random();
            let nonce = [case as u8; 32];
            let dest = dir.path().join(format!("blob{case}"));
            let mut p = PendingBlob::create_with(dest.clone(), &k, id, marker, 64, Some(nonce)).unwrap();
            for part in plain.chunks(piece) {
                p.write_all(part).unwrap();
            }
            let record = format!("record of case {case}").repeat(case as usize % 5);
            let done = p.finish_with_record(named(std::str::from_utf8(real).unwrap()), record.as_bytes()).unwrap();
            assert_eq!(done.written.plaintext_len, len as u64);
            let file = std::fs::read(&dest).unwrap();
            let mut want = Vec::new();
            encrypt_to_vec(&k, id, 64, nonce, &expected, Some(record.as_bytes()), &mut want).unwrap();
            assert!(file == want, "len {len}, markers at {starts:?}, writes of {piece}: not the ordinary encoding");
            let (got, err) = decrypt(&file, std::slice::from_ref(&k), id);
            assert!(err.is_none());
            assert_eq!(got, expected);
            let (sealed, read_len) = read_record(&dest, std::slice::from_ref(&k), id).unwrap().expect("a version 2 blob has a record");
            assert_eq!((&sealed[..], read_len), (record.as_bytes(), len as u64));
            // Dropping the finished blob uncommitted removes it.
            drop(done);
            assert!(!dest.exists());
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left behind");
}

#[test]
fn a_pending_blob_refuses_a_wrong_length_a_missing_marker_and_a_bad_marker() {
    let k = key(&"44".repeat(32), 1);
    let dir = tempfile::tempdir().unwrap();
    let marker = "P1-00112233445566778899aabbccddeeff";
    let new = |name: &str| PendingBlob::create(dir.path().join(name), &k, BlobId::random(), marker.as_bytes()).unwrap();

    let mut p = new("a");
    p.write_all(format!("head {marker} tail").as_bytes()).unwrap();
    assert!(matches!(p.finish_with_record(named("P12-00112233445566778899aabbccddeeff"), b"{}"), Err(Error::InvalidInput { field: "pseudonym", .. })));

    let mut p = new("b");
    p.write_all(&[5u8; 100_000]).unwrap();
    assert!(matches!(p.finish_with_record(named("P1-ffeeddccbbaa99887766554433221100"), b"{}"), Err(Error::InvalidInput { field: "instance", .. })));

    let mut p = new("c");
    p.write_all(marker.as_bytes()).unwrap();
    drop(p);

    // A marker that could overlap itself could make two replacements collide.
    for bad in ["abcabcabcabcabcabcabc", "short", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        assert!(PendingBlob::create(dir.path().join("d"), &k, BlobId::random(), bad.as_bytes()).is_err(), "{bad}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "every refusal removed its temporary file");
}

/// A sender cannot make a chunk be kept back without end: only the marker does that.
#[test]
fn only_chunks_holding_the_marker_are_kept_in_memory() {
    let k = key(&"55".repeat(32), 1);
    let dir = tempfile::tempdir().unwrap();
    let marker = "P1-00112233445566778899aabbccddeeff";
    let mut p = PendingBlob::create(dir.path().join("x"), &k, BlobId::random(), marker.as_bytes()).unwrap();
    p.write_all(b"DICM").unwrap();
    p.write_all(marker.as_bytes()).unwrap();
    // Near-misses everywhere: every prefix of the marker, at every chunk boundary.
    let mut body = vec![0u8; 64 * 1024 * 20];
    for (i, at) in (0..body.len() - 64).step_by(64 * 1024).enumerate() {
        let cut = 1 + i % (marker.len() - 1);
        body[at + 64 * 1024 - cut - 4..at + 64 * 1024 - 4].copy_from_slice(&marker.as_bytes()[..cut]);
    }
    p.write_all(&body).unwrap();
    let kept = p.enc.as_ref().unwrap().kept.len();
    assert_eq!(kept, 1, "only the chunk with the marker is held");
    p.finish_with_record(named("P1-ffeeddccbbaa99887766554433221100"), b"{}").unwrap().keep();
}
