//! Generates the PS3.15 Table E.1-1 lookup table from the standard's machine-readable form.
//!
//! The table is not copied into the repository: it is read from the shared reference data
//! (`/work/shared/dicom`, reached from this crate as `../../../shared/dicom`), or from the path
//! in `CLEAVE_PS315_TABLE`. Anything in it that this build does not understand (an action
//! code, an option column, a tag pattern) stops the build: a de-identifier that guesses what
//! an unknown action means could leak.
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::PathBuf;

const OPTION_COLUMNS: [&str; 10] = [
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "rtnPatCharsOpt",
    "cleanDescOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnSafePrivOpt",
    "cleanGraphOpt",
    "cleanStructContOpt",
];

fn basic_variant(code: &str) -> Option<&'static str> {
    Some(match code {
        "D" => "Basic::D",
        "Z" => "Basic::Z",
        "X" => "Basic::X",
        "K" => "Basic::K",
        "C" => "Basic::C",
        "U" => "Basic::U",
        "X/D" => "Basic::XD",
        "X/Z" => "Basic::XZ",
        "Z/D" => "Basic::ZD",
        "X/Z/D" => "Basic::XZD",
        "X/Z/U*" => "Basic::XZUStar",
        _ => return None,
    })
}

fn fail(msg: String) -> ! {
    panic!("cleave-deid build: {msg}");
}

fn main() {
    println!("cargo:rerun-if-env-changed=CLEAVE_PS315_TABLE");
    let path = match std::env::var_os("CLEAVE_PS315_TABLE") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| fail("CARGO_MANIFEST_DIR is not set".into()));
            PathBuf::from(dir).join("../../../shared/dicom/ps3.15-table-E.1-1.json")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        fail(format!(
            "cannot read the PS3.15 Table E.1-1 JSON at {} ({e}). Put the innolitics/dicom-standard \
             confidentiality_profile_attributes.json there, or set CLEAVE_PS315_TABLE to its path.",
            path.display()
        ))
    });
    let sha = hex(&Sha256::digest(&bytes));
    let rows: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| fail(format!("{} is not JSON: {e}", path.display())));
    let rows = rows.as_array().unwrap_or_else(|| fail("the table is not a JSON array".into()));

    let mut exact: Vec<(u32, String)> = Vec::new();
    let mut masked: Vec<String> = Vec::new();
    let mut saw_private_rule = false;
    for row in rows {
        let obj = row.as_object().unwrap_or_else(|| fail("a table row is not an object".into()));
        for key in obj.keys() {
            let known = ["id", "name", "tag", "stdCompIOD", "basicProfile"].contains(&key.as_str())
                || OPTION_COLUMNS.contains(&key.as_str());
            if !known {
                fail(format!("unknown column {key:?}: teach build.rs what it means first"));
            }
        }
        let s = |k: &str| obj.get(k).and_then(|v| v.as_str());
        let tag = s("tag").unwrap_or_else(|| fail("a row has no tag".into()));
        let name = s("name").unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        let name = name.split(" (see").next().unwrap_or("").to_string();
        let basic_code = s("basicProfile").unwrap_or_else(|| fail(format!("row {tag} has no basicProfile")));
        let basic = basic_variant(basic_code)
            .unwrap_or_else(|| fail(format!("row {tag}: unknown Basic Profile action {basic_code:?}")));
        let mut opts = String::from("[");
        for col in OPTION_COLUMNS {
            match s(col) {
                None => opts.push_str("None, "),
                Some("K") => opts.push_str("Some(Opt::K), "),
                Some("C") => opts.push_str("Some(Opt::C), "),
                Some(other) => fail(format!("row {tag}: unknown action {other:?} in column {col}")),
            }
        }
        opts.push(']');
        if tag.starts_with("(GGGG,EEEE)") {
            if basic_code != "X" {
                fail("the private-attribute rule is no longer X: review the private tag handling".into());
            }
            saw_private_rule = true;
            continue;
        }
        let inner = tag.trim_start_matches('(').trim_end_matches(')');
        let (g, e) = inner.split_once(',').unwrap_or_else(|| fail(format!("malformed tag {tag}")));
        if g.len() != 4 || e.len() != 4 {
            fail(format!("malformed tag {tag}"));
        }
        let (mut value, mut mask) = (0u32, 0u32);
        for (i, c) in g.chars().chain(e.chars()).enumerate() {
            let shift = 28 - 4 * i as u32;
            match c.to_digit(16) {
                Some(d) => {
                    value |= d << shift;
                    mask |= 0xF << shift;
                }
                None if c == 'X' || c == 'x' => {}
                None => fail(format!("malformed tag {tag}")),
            }
        }
        let entry = format!(
            "Row {{ tag: 0x{value:08X}, mask: 0x{mask:08X}, name: {name:?}, basic: {basic}, options: {opts} }}"
        );
        if mask == 0xFFFF_FFFF {
            exact.push((value, entry));
        } else {
            masked.push(entry);
        }
    }
    if !saw_private_rule {
        fail("the table has no private-attribute rule (GGGG,EEEE); refusing to guess".into());
    }
    exact.sort_by_key(|(t, _)| *t);
    for w in exact.windows(2) {
        if w[0].0 == w[1].0 {
            fail(format!("duplicate row for tag {:08X}", w[0].0));
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "/// SHA-256 of the Table E.1-1 JSON this build was generated from.");
    let _ = writeln!(out, "pub const TABLE_SHA256: &str = {sha:?};");
    let _ = writeln!(out, "/// Number of rows in that JSON (including the repeating-group and private rules).");
    let _ = writeln!(out, "pub const TABLE_ROWS: usize = {};", rows.len());
    let _ = writeln!(out, "static EXACT: [Row; {}] = [", exact.len());
    for (_, e) in &exact {
        let _ = writeln!(out, "    {e},");
    }
    let _ = writeln!(out, "];");
    let _ = writeln!(out, "static MASKED: [Row; {}] = [", masked.len());
    for e in &masked {
        let _ = writeln!(out, "    {e},");
    }
    let _ = writeln!(out, "];");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set".into())));
    std::fs::write(out_dir.join("table_e1_1.rs"), out).unwrap_or_else(|e| fail(format!("cannot write the generated table: {e}")));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
