//! Retain Longitudinal Temporal Information with Modified Dates (PS3.15 E.3.6): every date
//! moves by the subject's offset, so intervals survive while no original date does; times
//! of day stay; a date that cannot be moved faithfully goes; the output says MODIFIED.
mod common;

use cleave_deid::{split, Error, Limits, Options};
use common::*;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An instance with dates in many places: listed in the table (DA, DT, TM), one the table
/// does not list, one in the old ACR-NEMA form, and the birth date.
fn instance() -> Vec<u8> {
    let sop = "1.2.826.0.1.3680043.10.543.3.1.1";
    let mut f = preamble_and_meta(EXPLICIT_LE, sop);
    el(&mut f, 0x0008_0016, "UI", CT_IMAGE.as_bytes());
    el(&mut f, 0x0008_0018, "UI", sop.as_bytes());
    el(&mut f, 0x0008_0020, "DA", b"20240105");
    el(&mut f, 0x0008_0021, "DA", b"2024.01.05");
    el(&mut f, 0x0008_0022, "DA", b"20240106");
    el(&mut f, 0x0008_002A, "DT", b"20240106101112.5+0100");
    el(&mut f, 0x0008_0030, "TM", b"101112");
    el(&mut f, 0x0008_0060, "CS", b"CT");
    el(&mut f, 0x0010_0010, "PN", b"CANARY^NAME");
    el(&mut f, 0x0010_0020, "LO", b"CANARYID");
    el(&mut f, 0x0010_0030, "DA", b"19620704");
    // Procedure Creation Date: in the dictionary, not in Table E.1-1.
    el(&mut f, 0x0014_4076, "DA", b"20240115");
    el(&mut f, 0x0020_000D, "UI", b"1.2.826.0.1.3680043.10.543.3");
    el(&mut f, 0x0020_000E, "UI", b"1.2.826.0.1.3680043.10.543.3.1");
    el(&mut f, 0x7FE0_0010, "OW", &[1, 2, 3, 4]);
    f
}

fn research_split(opts: &Options) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    split(&instance()[..], &mut out, opts, &mapper(), "RS-1", &Limits::default())?;
    Ok(out)
}

#[test]
fn dates_move_together_times_stay_and_no_original_date_survives() {
    let out = research_split(&Options::research().with_modified_dates(-40)).expect("split");
    // 40 days earlier, every one: Study, Acquisition, the DT's date, and the unlisted date.
    for moved in [&b"20231126"[..], b"20231127", b"20231127101112.5+0100", b"20231206"] {
        assert!(contains(&out, moved), "{} was not moved by 40 days", String::from_utf8_lossy(moved));
    }
    for original in [&b"20240105"[..], b"20240106", b"2024.01.05", b"20240115", b"19620704"] {
        assert!(!contains(&out, original), "{} survived", String::from_utf8_lossy(original));
    }
    assert!(contains(&out, b"101112"), "the study time of day is kept");
    assert!(contains(&out, b"MODIFIED"), "Longitudinal Temporal Information Modified (0028,0303)");
    assert!(contains(&out, b"113107"), "the option's code in the de-identification method codes");

    // Without the option, research removes every date (and the unlisted one) instead.
    let plain = research_split(&Options::research()).expect("split");
    for d in [&b"20231126"[..], b"20240105", b"20240115", b"101112"] {
        assert!(!contains(&plain, d), "{} in a research split without modified dates", String::from_utf8_lossy(d));
    }
    assert!(contains(&plain, b"REMOVED") && !contains(&plain, b"113107"));
}

#[test]
fn fail_contradictory_or_empty_shifts_are_refused() {
    let both = Options::care().with_modified_dates(-3);
    assert!(matches!(research_split(&both), Err(Error::InvalidOptions { .. })), "full and modified dates together");
    for days in [0, 36_526, -36_526, i32::MIN] {
        let r = research_split(&Options::research().with_modified_dates(days));
        assert!(matches!(r, Err(Error::InvalidOptions { .. })), "offset {days}");
    }
}
