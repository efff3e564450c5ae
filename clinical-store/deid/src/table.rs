//! PS3.15 Table E.1-1, generated at build time, and the rule that turns a row plus the
//! chosen options into one concrete action.
//!
//! Combined Basic Profile codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) leave the choice to whoever
//! knows the IOD. This crate does not track the Type of each attribute in each IOD, so it
//! picks the action that keeps the object valid whatever the Type, without keeping content:
//! X/Z becomes Z (an empty value satisfies Type 2 and reveals nothing), any combination with
//! D becomes D (a dummy satisfies Type 1), and X/Z/U* keeps the sequence and replaces the
//! UIDs inside it (its items go through the table like any other). See FORMAT.md.
use crate::options::Options;

/// A Basic Profile action code as written in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Basic {
    D,
    Z,
    X,
    K,
    C,
    U,
    XD,
    XZ,
    ZD,
    XZD,
    XZUStar,
}
// K and C do not occur in the Basic Profile column today, but build.rs accepts them because
// the standard defines them; they must map to something if a future table uses them.
const _: [Basic; 2] = [Basic::K, Basic::C];

/// An option column's action: keep, or clean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opt {
    K,
    C,
}

/// One row of the table.
pub(crate) struct Row {
    pub tag: u32,
    pub mask: u32,
    /// The attribute's name in the table, for diagnostics and tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub basic: Basic,
    /// In the order of [`Options::as_array`].
    pub options: [Option<Opt>; 10],
}

include!(concat!(env!("OUT_DIR"), "/table_e1_1.rs"));

/// Where the table comes from.
pub const TABLE_SOURCE: &str = "DICOM PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes), \
     as extracted by innolitics/dicom-standard (standard/confidentiality_profile_attributes.json, MIT licence); \
     the file records no edition, and the standard itself is the authority where the two differ";

/// The concrete thing to do to one attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Keep the value (a sequence is kept and its items de-identified in turn).
    Keep,
    /// Remove the attribute.
    Remove,
    /// Keep the attribute with a zero-length value (a sequence with no items).
    Empty,
    /// Replace the value with a dummy of the same VR that reveals nothing.
    Dummy,
    /// Replace each UID with its keyed derivation.
    Uid,
    /// Clean: keep only what is known not to identify (see `clean`).
    Clean,
}

/// The row for `tag`, if the table has one. Private tags are not here: the caller removes
/// them before asking.
pub(crate) fn row(tag: u32) -> Option<&'static Row> {
    if let Ok(i) = EXACT.binary_search_by_key(&tag, |r| r.tag) {
        return EXACT.get(i);
    }
    MASKED.iter().find(|r| tag & r.mask == r.tag)
}

/// The action for a table row under `opts`. An enabled option that says K wins over one
/// that says C, which wins over the Basic Profile.
pub(crate) fn resolve(row: &Row, opts: &Options) -> Action {
    let enabled = opts.as_array();
    let mut clean = false;
    for (on, opt) in enabled.iter().zip(row.options.iter()) {
        match (on, opt) {
            (true, Some(Opt::K)) => return Action::Keep,
            (true, Some(Opt::C)) => clean = true,
            _ => {}
        }
    }
    if clean {
        return Action::Clean;
    }
    basic_action(row.basic)
}

/// The Basic Profile action alone, with combinations resolved as the module comment says.
pub(crate) fn basic_action(b: Basic) -> Action {
    match b {
        Basic::D | Basic::XD | Basic::ZD | Basic::XZD => Action::Dummy,
        Basic::Z | Basic::XZ => Action::Empty,
        Basic::X => Action::Remove,
        Basic::K => Action::Keep,
        Basic::C => Action::Clean,
        Basic::U => Action::Uid,
        Basic::XZUStar => Action::Uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_table_holds_every_row_of_the_json() {
        // 621 rows less the private rule, which is handled in code.
        assert_eq!(EXACT.len() + MASKED.len() + 1, TABLE_ROWS);
        assert!(EXACT.windows(2).all(|w| w[0].tag < w[1].tag));
        assert_eq!(row(0x0010_0020).map(|r| r.name), Some("Patient ID"));
        assert_eq!(row(0xFFFA_FFFA).map(|r| r.name), Some("Digital Signatures Sequence"));
    }

    #[test]
    fn repeating_groups_match_every_group_of_their_range() {
        for g in [0x5000u32, 0x5002, 0x501E] {
            assert_eq!(row((g << 16) | 0x3000).map(|r| r.basic), Some(Basic::X), "curve {g:04X}");
        }
        for g in [0x6000u32, 0x6002, 0x601E] {
            assert!(row((g << 16) | 0x3000).is_some(), "overlay data {g:04X}");
            assert!(row((g << 16) | 0x4000).is_some(), "overlay comments {g:04X}");
        }
        assert!(row(0x6000_0010).is_none(), "overlay rows are not in the table");
    }

    #[test]
    fn combined_codes_resolve_to_the_valid_conservative_action() {
        let basic = Options::basic();
        let act = |t| resolve(row(t).expect("row in table"), &basic);
        assert_eq!(act(0x0010_0020), Action::Dummy, "Patient ID Z/D");
        assert_eq!(act(0x0008_0022), Action::Empty, "Acquisition Date X/Z");
        assert_eq!(act(0x0008_0080), Action::Dummy, "Institution Name X/Z/D");
        assert_eq!(act(0x0008_1140), Action::Uid, "Referenced Image Sequence X/Z/U*");
        assert_eq!(act(0x0008_0050), Action::Empty, "Accession Number Z");
        assert_eq!(act(0x0008_1030), Action::Remove, "Study Description X");
        assert_eq!(act(0x0020_000D), Action::Uid, "Study Instance UID U");
        let care = Options::care();
        assert_eq!(resolve(row(0x0008_0020).expect("row"), &care), Action::Keep, "Study Date under full dates");
        assert_eq!(resolve(row(0x0010_1010).expect("row"), &care), Action::Keep, "Patient's Age under patient characteristics");
        let research = Options::research();
        assert_eq!(resolve(row(0x0008_1030).expect("row"), &research), Action::Clean);
        assert_eq!(resolve(row(0x0008_0020).expect("row"), &research), Action::Empty);
    }
}
