//! T7: a researcher (or whoever an extract leaks to) tries to re-identify a research export.
//!
//! A modality sends a canary corpus (tests/export_corpus.py: four patients, every
//! identifying and quasi-identifying attribute a unique canary, a marker in every pixel
//! stream, one instance with burned-in annotation) through the real broker's STOW-RS. A
//! nurse looks up what the clinical side knows (pseudonyms, clinical-store UIDs). Then the
//! researcher exports, and the attack looks for every canary, original UID, clinical UID,
//! pseudonym and date in the bytes; parses every part (pydicom) for quasi-identifiers and
//! dates at any depth; and tries to join the export to the clinical store and to a second
//! export of the same study by UID and subject code.
//!
//! The attack first proves it is not blind: the scanner finds every needle in the corpus it
//! was built from and in a control copy of an exported part with needles planted; the
//! pixel markers of the exported instances are found in the export itself; and the parser
//! reports an institution, an age and a date planted into a control copy of a part.
mod common;
#[path = "../../broker/tests/common/raw_http.rs"]
mod raw_http;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use rustls::ClientConfig;
use serde_json::Value;

const CONFIG: &str = "
header_read_timeout_secs = 5
idle_timeout_secs = 30
handshake_timeout_secs = 5
max_body_bytes = 8388608
research_min_subjects = 3
[login]
max_failures_per_account = 1000
max_failures_per_address = 1000
window_secs = 900
";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_corpus.py")
}

fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 is needed for the T7 attack: install python3 and pydicom (.ci/run does)");
    assert!(
        out.status.success(),
        "export_corpus.py {args:?} failed (pydicom is needed: pip install pydicom, or run .ci/run): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET with a bearer token; the raw answer, with a chunked body de-chunked. `complete` is
/// false when the body ended before its last chunk (a failed stream).
async fn get_raw(addr: std::net::SocketAddr, cfg: Arc<ClientConfig>, path: &str, token: &str) -> raw_http::Fetched {
    raw_http::fetch(addr, cfg, "GET", path, &[("Authorization", &format!("Bearer {token}"))]).await.expect("an HTTP answer")
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// The payloads of a multipart/related body.
fn parts(head: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let ct = header(head, "content-type").expect("a content type");
    assert!(ct.starts_with("multipart/related") && ct.contains("type=\"application/dicom\""), "{ct}");
    let boundary = ct.split(';').find_map(|p| p.trim().strip_prefix("boundary=")).unwrap().trim_matches('"').to_owned();
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut pos = memchr::memmem::find(body, delim.as_bytes()).expect("a first delimiter");
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return out;
        }
        let start = after + memchr::memmem::find(&body[after..], b"\r\n\r\n").expect("part headers") + 4;
        let next = start + memchr::memmem::find(&body[start..], format!("\r\n{delim}").as_bytes()).expect("a next delimiter");
        out.push(body[start..next].to_vec());
        pos = next + 2;
    }
}

/// An export, written to `dir` as files for the parser.
struct Export {
    parts: Vec<Vec<u8>>,
    files: Vec<PathBuf>,
    withheld: String,
    dates: String,
}

async fn export(b: &Broker, who: &Person, query: &str, dir: &Path) -> Export {
    let r = get_raw(b.addr(), who.cfg.clone(), &format!("/api/v1/research/export?{query}"), &who.token).await;
    assert_eq!(r.status, 200, "export {query}: {}", String::from_utf8_lossy(&r.body));
    assert!(r.complete, "export {query}: the stream ended early");
    let parts = parts(&r.head, &r.body);
    std::fs::create_dir_all(dir).unwrap();
    let files: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = dir.join(format!("part-{i}.dcm"));
            std::fs::write(&f, p).unwrap();
            f
        })
        .collect();
    Export {
        parts,
        files,
        withheld: header(&r.head, "cleave-export-withheld").unwrap_or_default(),
        dates: header(&r.head, "cleave-export-dates").unwrap_or_default(),
    }
}

fn inspect(files: &[PathBuf]) -> Vec<Value> {
    let mut args = vec!["inspect"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    serde_json::from_str::<Value>(&python(&args)).unwrap().as_array().unwrap().clone()
}

/// The UIDs of a part that could join it to something: all but the standard's own
/// (SOP classes, transfer syntaxes, coding schemes: `1.2.840.10008.`).
fn joinable_uids(inspected: &[Value]) -> BTreeSet<String> {
    inspected
        .iter()
        .flat_map(|p| p["uids"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()))
        .filter(|u| !u.starts_with("1.2.840.10008."))
        .collect()
}

fn attr<'a>(p: &'a Value, kw: &str) -> Option<&'a str> {
    p["attrs"][kw].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_export_resists_reidentification() {
    let work = tempfile::tempdir().unwrap();
    let corpus = work.path().join("corpus");
    python(&["make", corpus.to_str().unwrap()]);
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(corpus.join("manifest.json")).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> { manifest[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect() };
    let (canaries, originals, dates, markers) = (strings("canaries"), strings("uids"), strings("dates"), strings("pixel_markers"));
    let burned = manifest["burned_marker"].as_str().unwrap().to_owned();

    // The modality sends the corpus through STOW-RS, one instance per request.
    let b = start(CONFIG, false).await;
    let dev = device(&b, "ct-1").await;
    let mut corpus_bytes = Vec::new();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(corpus.join(f["name"].as_str().unwrap())).unwrap();
        let mut body = b"--t7b\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(b"\r\n--t7b--\r\n");
        let auth = format!("Bearer {}", dev.token);
        let ct = "multipart/related; type=\"application/dicom\"; boundary=t7b";
        let a = request(b.addr(), dev.cfg.clone(), "POST", "/dicomweb/studies", &[("Authorization", &auth), ("Content-Type", ct)], &body).await.unwrap();
        assert_eq!(a.status, 200, "STOW of {}: {}", f["name"], a.body);
        corpus_bytes.extend_from_slice(&bytes);
    }

    // What the clinical side knows, as a nurse sees it: pseudonyms and clinical-store UIDs.
    let nurse = person(&b, "nurse", broker::Role::Nurse).await;
    let (mut pseudonyms, mut clinical_uids, mut studies) = (Vec::new(), BTreeSet::new(), Vec::new());
    for p in 1..=4 {
        let a = get(b.addr(), nurse.cfg.clone(), &format!("/api/v1/identity/patients?patient_id=CANARYMRN{p}&issuer=CANARYISSUER"), Some(&nurse.token)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let ps = a.json()["patients"][0]["pseudonyms"].as_array().cloned().unwrap_or_default();
        assert_eq!(ps.len(), 1, "patient {p} is one identity: {}", a.body);
        let pseudonym = ps[0].as_str().unwrap().to_owned();
        let q = get(b.addr(), nurse.cfg.clone(), &format!("/dicomweb/studies?PatientID={pseudonym}"), Some(&nurse.token)).await;
        let study = q.json()[0]["0020000D"]["Value"][0].as_str().unwrap().to_owned();
        let s = get(b.addr(), nurse.cfg.clone(), &format!("/api/v1/clinical/studies/{study}"), Some(&nurse.token)).await.json();
        clinical_uids.insert(study.clone());
        for se in s["series"].as_array().unwrap() {
            clinical_uids.insert(se["series_uid"].as_str().unwrap().to_owned());
            for i in se["instances"].as_array().unwrap() {
                clinical_uids.insert(i["sop_instance_uid"].as_str().unwrap().to_owned());
            }
        }
        pseudonyms.push(pseudonym);
        studies.push(study);
    }
    assert_eq!(clinical_uids.len(), 4 + 9 + 9, "4 studies, 9 series, 9 instances in the clinical store");

    // Only the researcher's role exports.
    let one = format!("study={}", studies[0]);
    for (who, p) in [
        ("nurse", nurse),
        ("doctor", person(&b, "doctor", broker::Role::Doctor).await),
        ("it-admin", person(&b, "itadmin", broker::Role::ItAdmin).await),
        ("modality", dev),
    ] {
        let a = get(b.addr(), p.cfg.clone(), &format!("/api/v1/research/export?{one}"), Some(&p.token)).await;
        assert_eq!(a.status, 403, "{who} exported: {}", a.body);
        assert_eq!(a.error_code(), "forbidden");
    }
    let researcher = person(&b, "researcher", broker::Role::Researcher).await;
    let e1 = export(&b, &researcher, &one, &work.path().join("e1")).await;
    let e2 = export(&b, &researcher, &one, &work.path().join("e2")).await;
    let cohort = export(&b, &researcher, "from=20190301&to=20190331", &work.path().join("cohort")).await;
    // The not-for-research instance is withheld, and said to be.
    assert_eq!((e1.parts.len(), e1.withheld.as_str()), (2, "1"), "patient 1: CT and MR, the burned-in CT withheld");
    assert_eq!((cohort.parts.len(), cohort.withheld.as_str()), (8, "1"));
    // A cohort narrow enough to be one patient is refused.
    let narrow = get(b.addr(), researcher.cfg.clone(), "/api/v1/research/export?from=20190311&to=20190311", Some(&researcher.token)).await;
    assert_eq!(narrow.status, 403, "{}", narrow.body);
    assert!(narrow.body.contains("fewer than 3 subjects"), "{}", narrow.body);

    // Needles: every canary, original UID, date, clinical-store UID and pseudonym.
    let mut needles: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for n in canaries.iter().chain(&originals).chain(&dates).chain(&clinical_uids).chain(&pseudonyms) {
        needles.push((n.clone(), variants(n)));
    }
    needles.push((burned.clone(), vec![burned.clone().into_bytes()]));
    let vs: Vec<Vec<Vec<u8>>> = needles.iter().map(|(_, v)| v.clone()).collect();
    let names = |hits: Vec<usize>| -> Vec<String> { hits.into_iter().map(|i| needles[i].0.clone()).collect() };

    // Controls. The corpus holds every needle it planted (clinical UIDs and pseudonyms
    // are the store's: they are checked on a planted copy below).
    let in_corpus = names(scan_bytes(&corpus_bytes, &vs));
    for n in canaries.iter().chain(&originals).chain(&dates).chain(std::iter::once(&burned)) {
        assert!(in_corpus.contains(n), "the scanner misses {n} in the corpus it came from");
    }
    let mut planted = e1.parts[0].clone();
    let plants = [&canaries[0], clinical_uids.iter().next().unwrap(), &pseudonyms[0], &dates[0]];
    for n in plants {
        planted.extend_from_slice(n.as_bytes());
    }
    let found = names(scan_bytes(&planted, &vs));
    for n in plants {
        assert!(found.contains(n), "the scanner misses {n} planted in an exported part");
    }
    let all: Vec<u8> = [&e1, &e2, &cohort].iter().flat_map(|e| e.parts.concat()).collect();
    for m in &markers {
        assert!(memchr::memmem::find(&cohort.parts.concat(), m.as_bytes()).is_some(), "pixel marker {m} must be in the cohort export: the scan reads real payload");
    }
    let control = work.path().join("control.dcm");
    python(&["plant", e1.files[0].to_str().unwrap(), control.to_str().unwrap()]);
    let c = &inspect(std::slice::from_ref(&control))[0];
    assert_eq!(attr(c, "InstitutionName"), Some("CANARYPLANTED"), "the parser sees a planted institution");
    assert_eq!(attr(c, "PatientAge"), Some("087Y"));
    assert!(c["temporal"].as_array().unwrap().iter().any(|t| t[1] == "20190311"), "the parser sees a planted date");

    // Attack 1: any needle anywhere in any export.
    let leaked = names(scan_bytes(&all, &vs));
    assert!(leaked.is_empty(), "the exports leak: {leaked:?}");

    // Attack 2: quasi-identifiers and dates, part by part, at any depth.
    let (i1, i2, ic) = (inspect(&e1.files), inspect(&e2.files), inspect(&cohort.files));
    for p in i1.iter().chain(&i2).chain(&ic) {
        for kw in ["PatientName", "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "PatientBirthDate", "EthnicGroup",
                   "InstitutionAddress", "InstitutionalDepartmentName", "StudyID", "AccessionNumber", "ReferringPhysicianName"] {
            assert_eq!(attr(p, kw), None, "{kw} survives in {}", p["path"]);
        }
        for kw in ["InstitutionName", "DeviceSerialNumber", "StationName", "OperatorsName"] {
            assert!(matches!(attr(p, kw), None | Some("REMOVED")), "{kw} survives in {}: {:?}", p["path"], attr(p, kw));
        }
        for t in p["temporal"].as_array().unwrap() {
            let v = t[1].as_str().unwrap();
            assert!(["19000101", "000000", "19000101000000"].contains(&v), "a date or time survives: ({}) = {v} in {}", t[0], p["path"]);
        }
        assert_eq!(p["attrs"]["private"], 0, "private attributes in {}", p["path"]);
        assert_eq!(attr(p, "PatientIdentityRemoved"), Some("YES"));
        assert_eq!(attr(p, "LongitudinalTemporalInformationModified"), Some("REMOVED"));
        assert_eq!(attr(p, "BurnedInAnnotation"), Some("NO"), "only instances cleared for research are exported");
        assert!(attr(p, "PatientID").is_some_and(|s| s.starts_with("RS-")), "Patient ID is an export subject code");
    }
    assert!(memchr::memmem::find(&all, burned.as_bytes()).is_none(), "the burned-in instance was exported");

    // Attack 3: joins. The export is internally consistent (one study, one subject)...
    let study_of = |ps: &[Value]| -> BTreeSet<String> { ps.iter().map(|p| attr(p, "StudyInstanceUID").unwrap().to_owned()).collect() };
    let subject_of = |ps: &[Value]| -> BTreeSet<String> { ps.iter().map(|p| attr(p, "PatientID").unwrap().to_owned()).collect() };
    assert_eq!((study_of(&i1).len(), subject_of(&i1).len()), (1, 1), "one study of one subject stays one");
    assert_eq!(subject_of(&ic).len(), 4, "the cohort tells its four subjects apart");
    // ...but shares no UID with the clinical store, the originals, or another export.
    let (u1, u2, uc) = (joinable_uids(&i1), joinable_uids(&i2), joinable_uids(&ic));
    let originals: BTreeSet<String> = originals.into_iter().collect();
    for (what, set) in [("clinical store", &clinical_uids), ("original objects", &originals), ("a second export", &u2), ("the cohort export", &uc)] {
        let shared: Vec<&String> = u1.intersection(set).collect();
        assert!(shared.is_empty(), "the study export joins {what} by UID: {shared:?}");
    }
    assert!(uc.is_disjoint(&clinical_uids) && u2.is_disjoint(&clinical_uids));
    assert!(subject_of(&i1).is_disjoint(&subject_of(&i2)) && subject_of(&i1).is_disjoint(&subject_of(&ic)), "subject codes link two exports");

    // The audit log: each release is an `export` entry naming the subjects by keyed
    // reference only (an auditor finds the three releases of patient 1 by pseudonym), and
    // nothing an attacker could use appears in the entries.
    let auditor = person(&b, "auditor", broker::Role::Auditor).await;
    let a = get(b.addr(), auditor.cfg.clone(), "/api/v1/audit/entries?operation=export&limit=1000", Some(&auditor.token)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let releases: Vec<usize> = a.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"]["result"] == "allowed")
        .map(|e| e["resources"].as_array().unwrap().iter().filter(|r| r.as_str().unwrap().starts_with("patient:")).count())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(releases, vec![1, 1, 4], "two study exports of one subject, one cohort of four");
    let entries = a.json()["entries"].as_array().cloned().unwrap_or_default();
    let refused: Vec<&Value> = entries.iter().filter(|e| e["outcome"]["kind"].as_str().is_some_and(|k| k.contains("cohort-below"))).collect();
    assert_eq!(refused.len(), 1, "the refused narrow cohort is audited as a denial");
    assert_eq!(refused[0]["resources"].as_array().map(Vec::len), Some(1), "with the one subject it would have singled out");
    let leaked = names(scan_bytes(a.body.as_bytes(), &vs));
    assert!(leaked.is_empty(), "the audit entries carry {leaked:?}");
    let p1 = get(b.addr(), auditor.cfg.clone(), &format!("/api/v1/audit/entries?patient={}&operation=export", pseudonyms[0]), Some(&auditor.token)).await;
    let found = p1.json()["entries"].as_array().unwrap().iter().filter(|e| e["outcome"]["result"] == "allowed").count();
    assert!(found >= 3, "the auditor finds patient 1's releases by pseudonym: {}", p1.body);

    // Attack 4: shifted dates (PS3.15 modified dates) keep intervals but give away no
    // date, and cannot be aligned across exports.
    assert_eq!(cohort.dates, "removed", "dates are removed unless asked otherwise");
    let cohort_shifted = "from=20190301&to=20190331&dates=shifted";
    let (s1, s2) = (export(&b, &researcher, cohort_shifted, &work.path().join("s1")).await, export(&b, &researcher, cohort_shifted, &work.path().join("s2")).await);
    assert_eq!((s1.dates.as_str(), s1.parts.len()), ("shifted", 8));
    let day = |d: &str| -> i64 {
        // Days since 1970-01-01 of a YYYYMMDD date (proleptic Gregorian).
        let (y, m, dd) = (d[..4].parse::<i64>().unwrap(), d[4..6].parse::<i64>().unwrap(), d[6..8].parse::<i64>().unwrap());
        let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + dd - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
    };
    let date = |z: i64| -> String {
        // The YYYYMMDD date of a day count, the inverse of `day`.
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let (dd, m) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
        format!("{:04}{m:02}{dd:02}", yoe + era * 400 + i64::from(m <= 2))
    };
    assert_eq!((date(day("20190311")), date(day("20000229")), date(day("19210611"))), ("20190311".into(), "20000229".into(), "19210611".into()));
    let temporal = |p: &Value, tag: &str| -> String {
        let t = p["temporal"].as_array().unwrap().iter().find(|t| t[0] == tag);
        t.and_then(|t| t[1].as_str()).unwrap_or_else(|| panic!("no ({tag}) in {}", p["path"])).to_owned()
    };
    let study_dates = |ps: &[Value]| -> std::collections::BTreeMap<String, String> {
        ps.iter().map(|p| (attr(p, "PatientID").unwrap().to_owned(), temporal(p, "00080020"))).collect()
    };
    let (is1, is2) = (inspect(&s1.files), inspect(&s2.files));
    let date_needles: Vec<Vec<Vec<u8>>> = dates.iter().map(|d| variants(d)).collect();
    for (e, is) in [(&s1, &is1), (&s2, &is2)] {
        for (bytes, p) in e.parts.iter().zip(is.iter()) {
            assert_eq!(attr(p, "LongitudinalTemporalInformationModified"), Some("MODIFIED"));
            // The pixel marker tells the attack whose part this is, and so its true dates:
            // the study in March 2019 (day 10 + n for patient n) and the procedure creation
            // date (a date the table does not list) ten days later.
            let n = (1..=4).find(|n| memchr::memmem::find(bytes, format!("PIXELMARKER{n}").as_bytes()).is_some()).expect("a pixel marker");
            let (study, procedure) = (format!("201903{}", 10 + n), format!("201903{}", 20 + n));
            let shift = day(&study) - day(&temporal(p, "00080020"));
            assert!((1..=3652).contains(&shift), "patient {n}'s study moved by {shift} days, not 1 to 3652 back");
            // Every date in the part moved by that one shift, so intervals survive...
            for (tag, v) in p["temporal"].as_array().unwrap().iter().map(|t| (t[0].as_str().unwrap(), t[1].as_str().unwrap())) {
                match tag {
                    "00080020" | "00080021" | "00080022" | "00080023" => assert_eq!(v, date(day(&study) - shift), "({tag}) in {}", p["path"]),
                    "00144076" => assert_eq!(v, date(day(&procedure) - shift), "the interval changed in {}", p["path"]),
                    "00080030" => assert_eq!(v, "101112", "the time of day is kept"),
                    // Dates of the sample objects the corpus was made from: not needles.
                    _ => {}
                }
            }
            // ...and no original date is anywhere in its bytes. A shifted date may by chance
            // equal another original date of the corpus (a shift of 10 days turns the
            // procedure date into the study date); those values are this part's own
            // correctly shifted dates, checked above, and are the only ones let through.
            let own: Vec<String> = [&study, &procedure].iter().map(|d| date(day(d) - shift)).collect();
            let hits: Vec<&String> = scan_bytes(bytes, &date_needles).into_iter().map(|i| &dates[i]).filter(|d| !own.contains(d)).collect();
            assert!(hits.is_empty(), "an original date in a shifted export: {hits:?} in {}", p["path"]);
        }
    }
    // A subject's objects move together (CT and MR of one study keep one date)...
    for ps in [&is1, &is2] {
        for p in ps.iter() {
            assert_eq!(study_dates(ps)[attr(p, "PatientID").unwrap()], temporal(p, "00080020"), "one subject, two shifts");
        }
    }
    // ...but the next export moves them again: its dates cannot be matched to the first's.
    let (d1, d2): (BTreeSet<String>, BTreeSet<String>) = (study_dates(&is1).into_values().collect(), study_dates(&is2).into_values().collect());
    assert_ne!(d1, d2, "two exports shifted the same");
}
