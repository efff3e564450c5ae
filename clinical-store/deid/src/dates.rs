//! Moving DA and DT values by a whole number of days, for the Retain Longitudinal Temporal
//! Information with Modified Dates option (PS3.15 E.3.6).
//!
//! A value moves only if it names a whole calendar date: DA `YYYYMMDD`; DT starting with
//! `YYYYMMDD`, whose time, fraction and UTC offset are kept as they are (a whole-day shift
//! keeps every interval, and the time of day says nothing about the date). Anything else
//! (a year or month alone, the old `YYYY.MM.DD` form, a date that does not exist, a shift
//! that leaves years 1 to 9999) cannot be moved faithfully, and the caller removes the
//! attribute rather than keep the original. Multi-valued attributes move value by value,
//! and one value that cannot move removes the attribute.
use dicom_core::VR;
use time::{Date, Duration, Month};

/// The largest shift accepted either way: 100 years.
pub(crate) const MAX_OFFSET_DAYS: u32 = 36_525;

/// `value` (a DA or DT value, possibly multi-valued and padded) moved by `days`, padded
/// to even length; `None` if any value is not a whole date that can be moved.
pub(crate) fn shift(vr: VR, value: &[u8], days: i32) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut out = Vec::with_capacity(value.len());
    for (i, v) in text.trim_end_matches(['\0', ' ']).split('\\').enumerate() {
        if i > 0 {
            out.push(b'\\');
        }
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let (date, rest) = (v.get(..8)?, v.get(8..)?);
        match vr {
            VR::DA if !rest.is_empty() => return None,
            VR::DT if !is_dt_tail(rest) => return None,
            VR::DA | VR::DT => {}
            _ => return None,
        }
        out.extend_from_slice(moved(date, days)?.as_bytes());
        out.extend_from_slice(rest.as_bytes());
    }
    if out.len() % 2 == 1 {
        out.push(b' ');
    }
    Some(out)
}

/// What may follow the date in a DT value (PS3.5 6.2): `HH`, `HHMM`, `HHMMSS` or
/// `HHMMSS.F` to `HHMMSS.FFFFFF`, then optionally a UTC offset `&ZZXX` (`+` or `-` and four
/// digits). Checked exactly, because anything else kept verbatim could carry a second date
/// (a range such as `20200101-20200131` would otherwise keep its end unmoved).
fn is_dt_tail(rest: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (time, offset) = match rest.len().checked_sub(5).and_then(|i| rest.get(i..).map(|o| (i, o))) {
        Some((i, o)) if matches!(o.as_bytes()[0], b'+' | b'-') => (&rest[..i], Some(&o[1..])),
        _ => (rest, None),
    };
    if offset.is_some_and(|o| !digits(o)) {
        return false;
    }
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (time, None),
    };
    let hms_ok = digits(hms) && matches!(hms.len(), 0 | 2 | 4 | 6);
    let fraction_ok = fraction.is_none_or(|f| hms.len() == 6 && (1..=6).contains(&f.len()) && digits(f));
    hms_ok && fraction_ok
}

/// `YYYYMMDD` moved by `days`, if both dates exist in years 1 to 9999.
fn moved(ymd: &str, days: i32) -> Option<String> {
    if !ymd.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (ymd[..4].parse::<i32>().ok()?, ymd[4..6].parse::<u8>().ok()?, ymd[6..].parse::<u8>().ok()?);
    let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
    let to = date.checked_add(Duration::days(i64::from(days)))?;
    (1..=9999).contains(&to.year()).then(|| format!("{:04}{:02}{:02}", to.year(), u8::from(to.month()), to.day()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn da(v: &str, days: i32) -> Option<String> {
        shift(VR::DA, v.as_bytes(), days).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn dates_move_by_whole_days_across_months_years_and_leap_days() {
        assert_eq!(da("20200301", -1).as_deref(), Some("20200229"));
        assert_eq!(da("20210301", -1).as_deref(), Some("20210228"));
        assert_eq!(da("20191231", 1).as_deref(), Some("20200101"));
        assert_eq!(da("20200115", -3652).as_deref(), Some("20100115"));
        // Multi-valued, padded, with an empty value kept empty; odd length padded.
        assert_eq!(da("20200101\\\\20200110 ", -10).as_deref(), Some("20191222\\\\20191231"));
        assert_eq!(da("20200101\\\\2020011 ", 1), None);
    }

    #[test]
    fn date_times_keep_their_time_fraction_and_offset() {
        let dt = |v: &str| shift(VR::DT, v.as_bytes(), -2).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(dt("20200301101112.123456+0100").as_deref(), Some("20200228101112.123456+0100"));
        assert_eq!(dt("20200301").as_deref(), Some("20200228"));
        assert_eq!(dt("2020").as_deref(), None, "a year alone cannot move faithfully");
        assert_eq!(dt("202003").as_deref(), None);
        assert_eq!(dt("20200301T1011").as_deref(), None);
        assert_eq!(dt("2020030110-0500").as_deref(), Some("2020022810-0500 "), "padded to even length");
        assert_eq!(dt("20200301+0100").as_deref(), Some("20200228+0100 "));
        // A range (query syntax, not a stored value) would keep its second date unmoved.
        for bad in ["20200301-20200331", "20200301101112-20200331", "2020030110111.5", "20200301.5", "202003011011121234567", "20200301101112.1234567", "20200301+01"] {
            assert_eq!(dt(bad), None, "{bad}");
        }
    }

    #[test]
    fn fail_what_is_not_a_whole_date_is_not_moved() {
        for bad in ["2020.03.01", "20200230", "20201301", "2020030", "202003011", "ABCDEFGH", "20200101\\2020"] {
            assert_eq!(da(bad, 5), None, "{bad}");
        }
        assert_eq!(da("00010101", -1), None, "before year 1");
        assert_eq!(da("99991231", 1), None, "after year 9999");
        assert_eq!(shift(VR::TM, b"101112", 1), None, "only DA and DT move");
    }
}
