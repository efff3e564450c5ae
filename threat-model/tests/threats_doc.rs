//! THREATS.md and the attack tests stay in step: every threat row names its attack test
//! (or says `test pending: <name>` until the endpoint it needs exists), every named test
//! exists in `tests/attacks_*.rs`, and every attack test there is named by a threat.
use std::collections::BTreeSet;
use std::path::Path;

/// One row of the threat table: id and the cell naming its tests.
struct Row {
    id: String,
    tests: Vec<String>,
    pending: Vec<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Parse the `## Threats` table. Fails (panics with what is wrong) on a malformed row.
fn threat_rows(doc: &str) -> Vec<Row> {
    let section = doc.split("\n## Threats").nth(1).expect("THREATS.md has a `## Threats` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut lines = section.lines().filter(|l| l.trim_start().starts_with('|'));
    let header: Vec<String> = lines.next().expect("a table header").split('|').map(|c| c.trim().to_owned()).collect();
    let test_col = header.iter().position(|c| c == "test").expect("a `test` column");
    let mut rows = Vec::new();
    for line in lines.skip(1) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), header.len(), "row has the wrong number of cells: {line}");
        let id = cells[1].to_owned();
        assert!(id.starts_with('T') && id[1..].parse::<u32>().is_ok(), "threat id `{id}` is not T<n>");
        let cell = cells[test_col];
        let (pending, tests) = match cell.strip_prefix("test pending:") {
            // The first backticked word is the test; the rest of the cell says what it waits for.
            Some(rest) => (backticked(rest).into_iter().take(1).collect(), Vec::new()),
            None => (Vec::new(), backticked(cell)),
        };
        assert!(!(pending.is_empty() && tests.is_empty()), "{id} names no attack test: `{cell}`");
        for t in tests.iter().chain(&pending) {
            assert!(!t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{id}: `{t}` is not a test name");
        }
        rows.push(Row { id, tests, pending });
    }
    rows
}

/// The test functions (`#[test]` / `#[tokio::test]`) of every `tests/attacks_*.rs`.
fn attack_tests(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("attacks_") && name.ends_with(".rs")) {
            continue;
        }
        out.extend(test_fns(&std::fs::read_to_string(&p).unwrap()));
    }
    out
}

/// Names of functions preceded by a test attribute.
fn test_fns(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut armed = false;
    for line in src.lines().map(str::trim) {
        if line.starts_with("#[test]") || line.starts_with("#[tokio::test") {
            armed = true;
        } else if armed && line.contains("fn ") {
            let after = line.split("fn ").nth(1).unwrap();
            out.push(after.split(|c: char| c == '(' || c == '<').next().unwrap().trim().to_owned());
            armed = false;
        }
    }
    out
}

fn check(doc: &str, tests: &BTreeSet<String>) -> Vec<String> {
    let rows = threat_rows(doc);
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for r in &rows {
        for t in &r.tests {
            if !tests.contains(t) {
                problems.push(format!("{} names `{t}`, which is not a test in threat-model/tests/attacks_*.rs", r.id));
            }
            named.insert(t.clone());
        }
        for t in &r.pending {
            if tests.contains(t) {
                problems.push(format!("{} marks `{t}` pending, but it exists: drop `test pending:`", r.id));
            }
            named.insert(t.clone());
        }
    }
    for t in tests {
        if !named.contains(t) {
            problems.push(format!("attack test `{t}` is not named by any threat in THREATS.md"));
        }
    }
    problems
}

#[test]
fn every_threat_names_an_existing_attack_and_every_attack_is_named() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("THREATS.md")).unwrap();
    let tests = attack_tests(&root.join("tests"));
    assert!(tests.len() >= 5, "found only {tests:?}: is the test parser broken?");
    let rows = threat_rows(&doc);
    assert!(rows.len() >= 11, "expected T1..T11, parsed {}", rows.len());
    let problems = check(&doc, &tests);
    assert!(problems.is_empty(), "THREATS.md and the attack tests disagree:\n{}", problems.join("\n"));
}

/// The checker can fail: a missing test, an unnamed test, and a pending test that exists
/// are each reported.
#[test]
fn the_doc_check_catches_each_kind_of_drift() {
    let doc = "# x\n\n## Threats\n\n| id | threat | test |\n|---|---|---|\n\
               | T1 | a | `alpha_attack` |\n| T2 | b | test pending: `beta_attack` (waits for `/api/x`) |\n";
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert!(check(doc, &set(&["alpha_attack"])).is_empty());
    let p = check(doc, &set(&[]));
    assert!(p.len() == 1 && p[0].contains("`alpha_attack`, which is not a test"), "{p:?}");
    let p = check(doc, &set(&["alpha_attack", "gamma_attack"]));
    assert!(p.len() == 1 && p[0].contains("`gamma_attack` is not named"), "{p:?}");
    let p = check(doc, &set(&["alpha_attack", "beta_attack"]));
    assert!(p.len() == 1 && p[0].contains("marks `beta_attack` pending"), "{p:?}");
    assert_eq!(test_fns("#[tokio::test(flavor = \"multi_thread\")]\nasync fn x_y() {}\n#[test]\nfn z() {}\nfn helper() {}"), ["x_y", "z"]);
}
