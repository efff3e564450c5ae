//! WADO-RS and QIDO-RS below a study, through the real broker over real TLS, on real DICOM
//! files (pydicom's samples, given canary identities): a modality stores them by STOW-RS;
//! the nurse finds series and instances, retrieves studies, series, instances, metadata
//! and frames, and gets the identity back from the vault; a consultant's share gets exactly
//! its study (or patient) and no identity unless the share includes it; other roles get
//! nothing. Retrieved objects are opened with pydicom and dcmdump, and the pixel data must
//! be byte for byte what the modality sent. A second test drives the broker with
//! `dicomweb-client`, the reference Python DICOMweb client.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cleave_tokens::{attenuate, Caveat, Op, OpSet, Pseudonym, ShareId, Store, StoreSet, StudyUid};
use common::*;
use rustls::ClientConfig;
use serde_json::{json, Value};

const BOUNDARY: &str = "cleave-wado-test-3c1f";

/// Canary identities: none may appear in anything a share without identity receives, and
/// none may appear on disk in clear.
const CANARIES: [&str; 8] =
    ["CANARY^ALICE", "CANARY-A-1", "CANARYACC-A", "CANARYHOSP", "CANARY^BOB", "CANARY-B-2", "CANARY^CAROL", "CANARY^DAVE"];

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wado").join(name)
}

fn python(args: &[&str]) -> Value {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("python3 with pydicom is needed: run .ci/run (pip install -r .ci/requirements.txt)");
    assert!(out.status.success(), "{:?} failed (pip install pydicom?): {}", args.first(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The four samples, with canary identities, written into `dir`.
fn prepare(dir: &Path) -> Value {
    let spec = json!([
        {"src": "CT_small.dcm", "name": "ct", "attrs": {"PatientName": "CANARY^ALICE", "PatientID": "CANARY-A-1",
            "IssuerOfPatientID": "CANARYHOSP", "PatientBirthDate": "19620704", "PatientSex": "F", "AccessionNumber": "CANARYACC-A"}},
        {"src": "MR_small.dcm", "name": "mr", "attrs": {"PatientName": "CANARY^BOB", "PatientID": "CANARY-B-2",
            "PatientBirthDate": "19700101", "AccessionNumber": "CANARYACC-B"}},
        {"src": "rtdose.dcm", "name": "dose", "attrs": {"PatientName": "CANARY^CAROL", "PatientID": "CANARY-C-3"}},
        {"src": "SC_rgb_rle_2frame.dcm", "name": "rle", "attrs": {"PatientName": "CANARY^DAVE", "PatientID": "CANARY-D-4"}},
    ]);
    python(&[script("prepare.py").to_str().unwrap(), dir.to_str().unwrap(), &spec.to_string()])
}

fn multipart(parts: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// What STOW-RS stored, per part: (study UID, SOP instance UID).
async fn stow(b: &Broker, cfg: Arc<ClientConfig>, token: &str, files: &[Vec<u8>]) -> Vec<(String, String)> {
    let auth = format!("Bearer {token}");
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    let parts: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let r = request(b.addr(), cfg, "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", &ct)], &multipart(&parts))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["00081199"]["Value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let url = i["00081190"]["Value"][0].as_str().unwrap();
            let sop = i["00081155"]["Value"][0].as_str().unwrap().to_owned();
            // PS3.18: the instance's own URL, /dicomweb/studies/{study}/series/{series}/instances/{sop}.
            let rest = url.strip_prefix("/dicomweb/studies/").unwrap_or_else(|| panic!("not a study URL: {url}"));
            let parts: Vec<&str> = rest.split('/').collect();
            assert_eq!((parts.len(), parts[1], parts[3], parts[4]), (5, "series", "instances", sop.as_str()), "{url}");
            (parts[0].to_owned(), sop)
        })
        .collect()
}

async fn get_raw(addr: std::net::SocketAddr, cfg: Arc<ClientConfig>, path: &str, token: &str, accept: Option<&str>) -> RawAnswer {
    let auth = format!("Bearer {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    if let Some(a) = accept {
        h.push(("Accept", a));
    }
    request_raw(addr, cfg, "GET", path, &h).await.unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Write each part to `dir`, check each with dcmdump, and read them with pydicom.
fn open_parts(a: &RawAnswer, dir: &Path, tag: &str) -> Vec<Value> {
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.complete, "the response was aborted");
    let ct = a.header("content-type").unwrap();
    assert!(ct.starts_with("multipart/related") && ct.contains("type=\"application/dicom\""), "{ct}");
    let mut files = Vec::new();
    for (i, (head, bytes)) in a.parts().into_iter().enumerate() {
        assert!(head.to_ascii_lowercase().contains("content-type: application/dicom"), "{head}");
        let path = dir.join(format!("{tag}-{i}.dcm"));
        std::fs::write(&path, &bytes).unwrap();
        let dump = std::process::Command::new("/usr/bin/dcmdump")
            .arg(&path)
            .output()
            .expect("dcmdump is needed: apt-get install dcmtk (or run .ci/run)");
        assert!(dump.status.success(), "dcmdump refused part {i}: {}", String::from_utf8_lossy(&dump.stderr));
        files.push(path.to_str().unwrap().to_owned());
    }
    let mut args = vec![script("check.py").to_str().unwrap().to_owned()];
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(&args).as_array().unwrap().clone()
}

fn share(base: &str, extra: &[Caveat]) -> (String, String) {
    let id = cleave_keys::random_id128();
    let mut caveats = vec![
        Caveat::Expires(SystemTime::now() + Duration::from_secs(3600)),
        Caveat::Ops(OpSet::of(&[Op::Read])),
        Caveat::Share(ShareId::parse(&id).unwrap()),
    ];
    caveats.extend_from_slice(extra);
    (attenuate(base, &caveats).unwrap(), id)
}

#[tokio::test]
async fn nurses_retrieve_reidentified_and_shares_get_exactly_what_was_shared() {
    let b = start(TEST_CONFIG, true).await;
    let work = tempfile::tempdir().unwrap();
    let sent = prepare(work.path());
    let read = |n: &str| std::fs::read(work.path().join(format!("{n}.dcm"))).unwrap();
    let frame = |n: &str, k: u32| std::fs::read(work.path().join(format!("{n}.frame{k}"))).unwrap();

    let (dev_cfg, dev) = device_login(&b, "ct-scanner").await;
    let stored = stow(&b, dev_cfg.clone(), &dev, &[read("ct"), read("mr"), read("dose"), read("rle")]).await;
    let ids: HashMap<&str, (String, String)> = ["ct", "mr", "dose", "rle"].into_iter().zip(stored).collect();
    let (study_a, sop_a) = ids["ct"].clone();
    let (study_b, _) = ids["mr"].clone();

    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    let a = b.addr();

    // QIDO-RS: the study's series, then the series' instances.
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/series"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type").as_deref(), Some("application/dicom+json"));
    let series = r.json();
    assert_eq!(series.as_array().unwrap().len(), 1, "{series}");
    assert_eq!(series[0]["00080060"]["Value"][0], "CT");
    assert_eq!(series[0]["00201209"]["Value"][0], 1);
    let series_a = series[0]["0020000E"]["Value"][0].as_str().unwrap().to_owned();
    assert!(series[0]["00081190"]["Value"][0].as_str().unwrap().ends_with(&format!("/dicomweb/studies/{study_a}/series/{series_a}")));
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/series?Modality=MR"), Some(&nurse)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "the Modality key filters");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/series/{series_a}/instances"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let inst = r.json();
    assert_eq!(inst.as_array().unwrap().len(), 1);
    assert_eq!(inst[0]["00080018"]["Value"][0], sop_a.as_str());
    assert_eq!((inst[0]["00280010"]["Value"][0].as_u64(), inst[0]["00280011"]["Value"][0].as_u64()), (Some(128), Some(128)));
    assert_eq!(inst[0]["00280008"]["Value"][0], 1);
    assert!(!CANARIES.iter().any(|c| r.body.contains(c)), "QIDO answers carry no identity");
    // The study's instances across its series (PS3.18 "Study's Instances"), with the series
    // as a key: the same instance, and nothing for another series.
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/instances"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let all = r.json();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["00080018"]["Value"][0], sop_a.as_str());
    assert_eq!(all[0]["0020000E"]["Value"][0], series_a.as_str());
    assert!(!CANARIES.iter().any(|c| r.body.contains(c)), "QIDO answers carry no identity");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/instances?SeriesInstanceUID={series_a}"), Some(&nurse)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/instances?SeriesInstanceUID=1.2.3.4"), Some(&nurse)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "the SeriesInstanceUID key filters");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/instances?SeriesInstanceUID=not-a-uid"), Some(&nurse)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // All series, across studies (PS3.18 "All Series"): de-identified, keyed like the rest.
    let r = get(a, nurse_cfg.clone(), "/dicomweb/series", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let all = r.json();
    let uids: Vec<&str> = all.as_array().unwrap().iter().map(|x| x["0020000E"]["Value"][0].as_str().unwrap()).collect();
    assert!(uids.contains(&series_a.as_str()) && uids.len() > 1, "every study's series: {all}");
    assert!(!CANARIES.iter().any(|c| r.body.contains(c)), "QIDO answers carry no identity");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/series?StudyInstanceUID={study_a}"), Some(&nurse)).await;
    let one = r.json();
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one[0]["0020000E"]["Value"][0], series_a.as_str());
    assert_eq!(one[0]["0020000D"]["Value"][0], study_a.as_str());
    assert!(one[0]["00100020"]["Value"][0].as_str().is_some_and(|p| !p.is_empty()), "PatientID is the pseudonym");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/series?StudyInstanceUID={study_a}&Modality=MR"), Some(&nurse)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "the Modality key filters");
    // All instances, across studies (PS3.18 "All Instances").
    let r = get(a, nurse_cfg.clone(), "/dicomweb/instances", Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let all = r.json();
    let sops: Vec<&str> = all.as_array().unwrap().iter().map(|x| x["00080018"]["Value"][0].as_str().unwrap()).collect();
    assert!(sops.contains(&sop_a.as_str()) && sops.len() > 1, "every study's instances: {all}");
    assert!(!CANARIES.iter().any(|c| r.body.contains(c)), "QIDO answers carry no identity");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/instances?SOPInstanceUID={sop_a}"), Some(&nurse)).await;
    let one = r.json();
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!((one[0]["00280010"]["Value"][0].as_u64(), one[0]["00280011"]["Value"][0].as_u64()), (Some(128), Some(128)));
    assert_eq!(one[0]["0020000D"]["Value"][0], study_a.as_str());
    assert!(one[0]["00100020"]["Value"][0].as_str().is_some_and(|p| !p.is_empty()), "PatientID is the pseudonym");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/instances?StudyInstanceUID={study_a}&limit=1&offset=1"), Some(&nurse)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "offset past the study's one instance");
    for bad in [
        "/dicomweb/series?Modality=ct%27%20OR%201%3D1",
        "/dicomweb/series?SeriesInstanceUID=1..2",
        "/dicomweb/series?limit=-1",
        "/dicomweb/instances?SOPClassUID=1.2.x",
        "/dicomweb/instances?Modality=%3B",
    ] {
        let r = get(a, nurse_cfg.clone(), bad, Some(&nurse)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // WADO-RS of the study: the nurse gets the original identity back, pixels untouched.
    let study = get_raw(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}"), &nurse, Some("multipart/related; type=\"application/dicom\"")).await;
    let got = open_parts(&study, work.path(), "nurse-study");
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g["PatientName"], "CANARY^ALICE");
    assert_eq!(g["PatientID"], "CANARY-A-1");
    assert_eq!(g["IssuerOfPatientID"], "CANARYHOSP");
    assert_eq!(g["PatientBirthDate"], "19620704");
    assert_eq!(g["PatientSex"], "F");
    assert_eq!(g["AccessionNumber"], "CANARYACC-A");
    assert_eq!(g["PatientIdentityRemoved"], "NO");
    assert_eq!(g["SOPInstanceUID"], sop_a.as_str(), "UIDs stay as stored");
    assert_eq!(g["StudyInstanceUID"], study_a.as_str());
    assert_eq!(g["pixel_sha256"], sent["ct"]["pixel_sha256"], "pixel data byte for byte");
    // Series and instance level give the same object.
    let part = study.parts().remove(0).1;
    for path in [format!("/dicomweb/studies/{study_a}/series/{series_a}"), format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}")] {
        let r = get_raw(a, nurse_cfg.clone(), &path, &nurse, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.parts().remove(0).1, part, "{path}");
    }

    // Metadata: DICOM JSON, identity restored for the nurse, pixel data by reference
    // (BulkDataURI, with the port this client connected to), never inline.
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}/metadata"), Some(&nurse)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.json();
    assert_eq!(m[0]["00100010"]["Value"][0]["Alphabetic"], "CANARY^ALICE");
    assert_eq!(m[0]["00280010"]["Value"][0], 128);
    let pixels = &m[0]["7FE00010"];
    assert!(pixels.get("Value").is_none() && pixels.get("InlineBinary").is_none(), "pixel data inlined: {pixels}");
    let bulk = pixels["BulkDataURI"].as_str().unwrap_or_else(|| panic!("no BulkDataURI: {pixels}")).to_owned();
    let bulk_path = format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}/bulkdata/7FE00010");
    assert_eq!(bulk, format!("https://localhost:{}{bulk_path}", a.port()));
    let r = get_raw(a, nurse_cfg.clone(), &bulk_path, &nurse, None).await;
    assert_eq!(r.status, 200);
    let frame1 = get_raw(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}/frames/1"), &nurse, None).await;
    assert_eq!(r.parts(), frame1.parts(), "the bulk data of a single-frame instance is its one frame");
    let other_tag = format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}/bulkdata/00100010");
    assert_eq!(get(a, nurse_cfg.clone(), &other_tag, Some(&nurse)).await.status, 404, "only pixel data is bulk data");
    let r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_b}/metadata"), Some(&nurse)).await;
    assert_eq!(r.json()[0]["00100020"]["Value"][0], "CANARY-B-2");

    // Rendered: the CT as a JPEG, through its rescale and a window (the frame's range, then
    // the one asked for), checked against the same rendering done with numpy and Pillow.
    let inst_a = format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/{sop_a}");
    for (query, window) in [("", None), ("?window=40,400,linear&quality=95", Some(("40", "400")))] {
        let r = get_raw(a, nurse_cfg.clone(), &format!("{inst_a}/rendered{query}"), &nurse, Some("image/jpeg")).await;
        assert_eq!(r.status, 200, "rendered{query}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type").as_deref(), Some("image/jpeg"));
        let jpeg = work.path().join("ct-rendered.jpg");
        std::fs::write(&jpeg, &r.body).unwrap();
        let mut args = vec![script("rendered_check.py"), work.path().join("ct.dcm"), jpeg];
        if let Some((c, w)) = window {
            args.extend([c.into(), w.into()]);
        }
        let args: Vec<&str> = args.iter().map(|p| p.to_str().unwrap()).collect();
        let v = python(&args);
        assert_eq!((v["size"].clone(), v["mode"].clone()), (json!([128, 128]), json!("L")), "rendered{query}: {v}");
        assert!(v["spread"].as_f64().unwrap() > 20.0, "the expected image is not flat: {v}");
        assert!(v["mae"].as_f64().unwrap() < 2.5, "rendered{query} differs from PS3.3's rendering: {v}");
        if query.is_empty() {
            let f = get_raw(a, nurse_cfg.clone(), &format!("{inst_a}/frames/1/rendered"), &nurse, None).await;
            assert_eq!(f.body, r.body, "frame 1 rendered is the instance rendered");
        }
    }
    for (bad, status) in [("/rendered?viewport=64,64", 400), ("/rendered?window=40,400", 400), ("/frames/1,2/rendered", 400), ("/frames/2/rendered", 400)] {
        let r = get(a, nurse_cfg.clone(), &format!("{inst_a}{bad}"), Some(&nurse)).await;
        assert_eq!(r.status, status, "{bad}: {}", r.body);
    }
    let r = get_raw(a, nurse_cfg.clone(), &format!("{inst_a}/rendered"), &nurse, Some("image/png")).await;
    assert_eq!(r.status, 406, "only JPEG is rendered");

    // Frames: native multi-frame (rtdose, 15 frames) in the order asked; RLE by fragment.
    let (study_d, sop_d) = ids["dose"].clone();
    let series_d = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_d}/series"), Some(&nurse)).await.json()[0]["0020000E"]["Value"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let frames_url = format!("/dicomweb/studies/{study_d}/series/{series_d}/instances/{sop_d}/frames");
    let r = get_raw(a, nurse_cfg.clone(), &format!("{frames_url}/3,1,15"), &nurse, Some("multipart/related; type=\"application/octet-stream\"")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = r.parts();
    assert_eq!(parts.len(), 3);
    for ((head, bytes), k) in parts.iter().zip([3, 1, 15]) {
        assert!(head.contains("application/octet-stream"), "{head}");
        assert_eq!(bytes, &frame("dose", k), "frame {k}");
    }
    let r = get_raw(a, nurse_cfg.clone(), &format!("{frames_url}/16"), &nurse, None).await;
    assert_eq!((r.status, r.answer().error_code().as_str()), (400, "bad_request"));
    // 32-bit dose grids are not rendered (no guessing at a display range): 406.
    let r = get_raw(a, nurse_cfg.clone(), &format!("{frames_url}/2/rendered"), &nurse, None).await;
    assert_eq!(r.status, 406, "{}", r.text());
    let (study_r, sop_r) = ids["rle"].clone();
    let series_r = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_r}/series"), Some(&nurse)).await.json()[0]["0020000E"]["Value"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let rle_url = format!("/dicomweb/studies/{study_r}/series/{series_r}/instances/{sop_r}/frames/2");
    let r = get_raw(a, nurse_cfg.clone(), &rle_url, &nurse, Some("multipart/related; type=\"image/dicom-rle\"")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.parts().remove(0).1, frame("rle", 2), "the RLE frame's bitstream");
    let r = get_raw(a, nurse_cfg.clone(), &rle_url, &nurse, Some("multipart/related; type=\"application/octet-stream\"")).await;
    assert_eq!((r.status, r.answer().error_code().as_str()), (406, "not_acceptable"), "no decompression");

    // What we cannot produce is 406 in the one error format; bad UIDs 400; unknown 404.
    let r = get_raw(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}"), &nurse, Some("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50")).await;
    assert_eq!((r.status, r.answer().error_code().as_str()), (406, "not_acceptable"));
    let r = get_raw(a, nurse_cfg.clone(), &format!("/dicomweb/studies/{study_a}/metadata"), &nurse, Some("application/dicom+xml")).await;
    assert_eq!(r.status, 406);
    for (path, status) in [
        ("/dicomweb/studies/1.2.x".to_owned(), 400),
        (format!("/dicomweb/studies/{study_a}/series/01.2"), 400),
        ("/dicomweb/studies/1.2.3.4.5.6".to_owned(), 404),
        (format!("/dicomweb/studies/{study_a}/series/{series_a}/instances/1.2.3"), 404),
        (format!("/dicomweb/studies/{study_a}/series/{}", ids["mr"].1), 404),
        (format!("/dicomweb/studies/{study_b}/series/{series_a}/instances/{sop_a}"), 404),
    ] {
        let r = get(a, nurse_cfg.clone(), &path, Some(&nurse)).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        r.error_code();
        assert!(!r.body.contains("1.2.") && !r.body.contains("2.25."), "no UID echoed: {}", r.body);
    }

    // Roles without clinical read get nothing.
    let (reg_cfg, registrar) = staff_login(&b, "reg1", broker::Role::Registration).await;
    let (admin_cfg, admin) = staff_login(&b, "it1", broker::Role::ItAdmin).await;
    let (aud_cfg, auditor) = staff_login(&b, "aud1", broker::Role::Auditor).await;
    let path = format!("/dicomweb/studies/{study_a}");
    for (who, cfg, token) in [("modality", &dev_cfg, &dev), ("registration", &reg_cfg, &registrar), ("it-admin", &admin_cfg, &admin), ("auditor", &aud_cfg, &auditor)] {
        for p in [path.clone(), format!("{path}/series"), format!("{path}/metadata")] {
            let r = get(a, cfg.clone(), &p, Some(token)).await;
            assert_eq!(r.status, 403, "{who} {p}: {}", r.body);
        }
    }
    // Staff tokens are not accepted on the consultant listener.
    assert_eq!(get(b.consultant(), b.client(None), &path, Some(&nurse)).await.status, 403);

    // Shares, on the consultant listener (no client certificate).
    let (doc_cfg, doc) = staff_login_json(&b, "drgrey", broker::Role::Doctor).await;
    let base = doc["share_base"].as_str().expect("a doctor's login carries a share base").to_owned();
    let c = b.consultant();
    let anon = b.client(None);
    let clinical = Caveat::Stores(StoreSet::of(&[Store::Clinical]));
    let (study_share, study_share_id) = share(&base, &[clinical.clone(), Caveat::Study(StudyUid::parse(&study_a).unwrap())]);
    let r = get_raw(c, anon.clone(), &path, &study_share, None).await;
    let got = open_parts(&r, work.path(), "share-study");
    assert_eq!(got[0]["PatientIdentityRemoved"], "YES");
    assert_eq!(got[0]["PatientName"], "");
    assert_eq!(got[0]["pixel_sha256"], sent["ct"]["pixel_sha256"]);
    for canary in CANARIES {
        assert!(!contains(&r.body, canary), "a clinical-only share received {canary}");
    }
    let r = get(c, anon.clone(), &format!("{path}/metadata"), Some(&study_share)).await;
    assert!(!CANARIES.iter().any(|x| r.body.contains(x)), "metadata of a clinical share: {}", r.body);
    assert_eq!(get(c, anon.clone(), &format!("{path}/series"), Some(&study_share)).await.status, 200);
    assert_eq!(get(c, anon.clone(), &format!("{path}/instances"), Some(&study_share)).await.status, 200);
    // Across studies, a study share must name its study, and then sees that study only.
    let r = get(c, anon.clone(), &format!("/dicomweb/series?StudyInstanceUID={study_a}"), Some(&study_share)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    assert!(!CANARIES.iter().any(|x| r.body.contains(x)));
    let r = get(c, anon.clone(), &format!("/dicomweb/instances?StudyInstanceUID={study_a}"), Some(&study_share)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    for other in [
        "/dicomweb/series".to_owned(),
        format!("/dicomweb/series?StudyInstanceUID={study_b}"),
        "/dicomweb/instances".to_owned(),
        format!("/dicomweb/instances?StudyInstanceUID={study_b}"),
    ] {
        let r = get(c, anon.clone(), &other, Some(&study_share)).await;
        assert_eq!(r.status, 403, "share for study A searched {other}: {}", r.body);
    }
    for other in [
        format!("/dicomweb/studies/{study_b}"),
        format!("/dicomweb/studies/{study_b}/series"),
        format!("/dicomweb/studies/{study_b}/instances"),
        format!("/dicomweb/studies/{study_b}/series/{series_a}/instances/{sop_a}"),
        format!("/dicomweb/studies/{study_b}/series/{series_a}/instances/{sop_a}/bulkdata/7FE00010"),
        format!("/dicomweb/studies/{study_b}/series/{series_a}/instances/{sop_a}/rendered"),
    ] {
        let r = get(c, anon.clone(), &other, Some(&study_share)).await;
        assert_eq!(r.status, 403, "share for study A fetched {other}: {}", r.body);
    }

    // A patient share works on that patient's studies only (the study's patient is looked
    // up to check it), and with identity included the consultant sees who it is.
    let pseudonym_a = get(a, nurse_cfg.clone(), &format!("/dicomweb/studies?StudyInstanceUID={study_a}"), Some(&nurse)).await.json()[0]["00100020"]["Value"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let patient = Caveat::Patient(Pseudonym::parse(&pseudonym_a).unwrap());
    let (patient_share, _) = share(&base, &[clinical.clone(), patient.clone()]);
    let r = get_raw(c, anon.clone(), &path, &patient_share, None).await;
    assert_eq!(open_parts(&r, work.path(), "share-patient")[0]["PatientIdentityRemoved"], "YES");
    assert_eq!(get(c, anon.clone(), &format!("/dicomweb/studies/{study_b}"), Some(&patient_share)).await.status, 403);
    assert_eq!(get(c, anon.clone(), "/dicomweb/studies/1.2.3.4.5.6", Some(&patient_share)).await.status, 403, "unknown and foreign look alike");
    // Across studies, a patient share must name its patient, and then sees only that patient.
    assert_eq!(get(c, anon.clone(), "/dicomweb/series", Some(&patient_share)).await.status, 403);
    assert_eq!(get(c, anon.clone(), "/dicomweb/instances", Some(&patient_share)).await.status, 403);
    let r = get(c, anon.clone(), &format!("/dicomweb/instances?PatientID={pseudonym_a}"), Some(&patient_share)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().as_array().unwrap().iter().all(|x| x["00100020"]["Value"][0] == pseudonym_a.as_str()));
    let r = get(c, anon.clone(), &format!("/dicomweb/series?PatientID={pseudonym_a}"), Some(&patient_share)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mine = r.json();
    assert!(!mine.as_array().unwrap().is_empty());
    assert!(mine.as_array().unwrap().iter().all(|x| x["00100020"]["Value"][0] == pseudonym_a.as_str()), "{mine}");
    let (with_identity, _) = share(&base, &[Caveat::Stores(StoreSet::of(&[Store::Clinical, Store::Identity])), patient]);
    let r = get_raw(c, anon.clone(), &path, &with_identity, None).await;
    assert_eq!(open_parts(&r, work.path(), "share-identity")[0]["PatientName"], "CANARY^ALICE");

    // A revoked share fails from the next request on.
    let doc_token = doc["token"].as_str().unwrap();
    let r = post_json(a, doc_cfg, &format!("/api/v1/shares/{study_share_id}/revoke"), Some(doc_token), &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(c, anon.clone(), &path, Some(&study_share)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);

    // The audit log says who had identity restored, and a clinical-only share never did.
    let r = get(a, aud_cfg.clone(), &format!("/api/v1/audit/entries?operation=identity-read&patient={pseudonym_a}"), Some(&auditor)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.json()["entries"].as_array().cloned().unwrap();
    assert!(!entries.is_empty() && r.body.contains("nurse1"), "the nurse's restore is audited: {}", r.body);
    assert!(!r.body.contains(&study_share_id), "a clinical-only share restored identity: {}", r.body);
    assert!(!CANARIES.iter().any(|x| r.body.contains(x)), "no PHI in the audit log");
    let r = get(a, aud_cfg.clone(), &format!("/api/v1/audit/entries?operation=clinical-read&patient={pseudonym_a}"), Some(&auditor)).await;
    assert!(r.body.contains(&study_share_id), "the share's retrieve is audited: {}", r.body);

    // Nothing re-identified was ever written into the broker's data directory.
    for f in files_under(b.data()) {
        let name = f.to_string_lossy();
        if name.contains("bootstrap") || name.contains("test-certs") {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        for canary in CANARIES {
            assert!(!contains(&bytes, canary), "{name} holds {canary}");
        }
    }
}

#[tokio::test]
async fn dicomweb_client_stores_searches_and_retrieves() {
    let ok = std::process::Command::new("python3").args(["-c", "import dicomweb_client, pydicom, requests"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "this test needs python3 with dicomweb-client and pydicom: pip install -r .ci/requirements.txt (or run .ci/run)");
    let b = start(TEST_CONFIG, false).await;
    let work = tempfile::tempdir().unwrap();
    prepare_one(work.path());
    let (_, dev) = device_login(&b, "mr-scanner").await;
    let (_, nurse) = staff_login(&b, "nurse2", broker::Role::Nurse).await;
    let certs = b.data().join("test-certs");
    let pem = |n: &str, ext: &str| certs.join(format!("{n}.{ext}")).to_str().unwrap().to_owned();
    let base = format!("https://localhost:{}", b.addr().port());
    let file = work.path().join("dose.dcm");
    let args = [
        script("dicomweb_client_check.py").to_str().unwrap().to_owned(),
        base,
        b.ca_pem().to_str().unwrap().to_owned(),
        pem("mr-scanner", "pem"),
        pem("mr-scanner", "key"),
        dev,
        pem("nurse2", "pem"),
        pem("nurse2", "key"),
        nurse,
        file.to_str().unwrap().to_owned(),
    ];
    // The broker runs on this test's runtime: the client must run beside it, not block it.
    let report = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(&args)
    })
    .await
    .unwrap();
    assert_eq!(report["study_patient_name"], "CANARY^CAROL", "{report}");
    assert_eq!(report["instance_patient_id"], "CANARY-C-3");
    assert_eq!(report["identity_removed"], "NO");
    assert_eq!(report["pixels_identical"], true);
    assert_eq!(report["frames_checked"], 2);
    assert_eq!(report["bulkdata_parts"], report["frames"], "the pixel data's BulkDataURI gives every frame: {report}");
    assert_eq!(report["bulkdata_identical"], true);
    assert_eq!(report["metadata_name"], "CANARY^CAROL");
    assert_eq!(report["rows"], 10);
    assert_ne!(report["sop_uid"], report["original_sop_uid"], "the broker serves its derived UIDs");
}

fn prepare_one(dir: &Path) {
    let spec = json!([{"src": "rtdose.dcm", "name": "dose", "attrs": {"PatientName": "CANARY^CAROL", "PatientID": "CANARY-C-3"}}]);
    python(&[script("prepare.py").to_str().unwrap(), dir.to_str().unwrap(), &spec.to_string()]);
}

/// A blob that fails authentication midway must not reach the client as a short object
/// that looks whole: the response is aborted (the chunked body never ends).
#[tokio::test]
async fn a_tampered_blob_aborts_the_response_instead_of_sending_a_short_object() {
    let b = start(TEST_CONFIG, false).await;
    let (dev_cfg, dev) = device_login(&b, "ct-scanner").await;
    let ct = std::fs::read(pydicom_file("CT_small.dcm")).unwrap();
    let stored = stow(&b, dev_cfg, &dev, &[ct]).await;
    let (study, _) = stored[0].clone();
    // The only blob: flip one byte near its end (in its only chunk).
    let blobs: Vec<PathBuf> = files_under(&b.data().join("clinical"))
        .into_iter()
        .filter(|p| p.parent().and_then(|d| d.file_name()).is_some_and(|d| d.len() == 2))
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&blobs[0], &bytes).unwrap();

    let (nurse_cfg, nurse) = staff_login(&b, "nurse1", broker::Role::Nurse).await;
    // The instance is one chunk, so the damage is met at the first read: whether hyper has
    // flushed the status line by then is a race. Either way the client must not be handed
    // a whole-looking object: the connection ends without an answer, or the answer is cut.
    let auth = format!("Bearer {nurse}");
    match request_raw(b.addr(), nurse_cfg, "GET", &format!("/dicomweb/studies/{study}"), &[("Authorization", &auth)]).await {
        Err(e) => assert_eq!(e.to_string(), "no HTTP answer", "the connection ended before any answer, as an abort should"),
        Ok(r) => {
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(!r.complete, "a damaged instance was sent as if whole ({} bytes)", r.body.len());
            assert!(r.body.len() < 39_000, "the damaged chunk's plaintext was not sent");
        }
    }
}
