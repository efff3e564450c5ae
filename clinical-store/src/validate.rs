//! Checks on caller input before it reaches the index. Errors name the field and the rule,
//! never the value (the value may be PHI that slipped through de-identification).
use crate::Error;

fn bad(field: &'static str, rule: &'static str) -> Error {
    Error::InvalidInput { field, rule }
}

/// A pseudonym such as `P1-<32 hex>`: 1 to 64 ASCII letters, digits or hyphens.
pub(crate) fn pseudonym(s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(bad("pseudonym", "expected 1 to 64 ASCII letters, digits or hyphens"));
    }
    Ok(())
}

/// A DICOM UID: 1 to 64 characters of digits and dots.
pub(crate) fn uid(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad(field, "expected a DICOM UID: 1 to 64 digits and dots"));
    }
    Ok(())
}

/// A DICOM code string (modality, body part): 1 to 16 of `A-Z 0-9 _` and space.
pub(crate) fn code_string(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b' ') {
        return Err(bad(field, "expected a DICOM code string: 1 to 16 of A-Z, 0-9, underscore, space"));
    }
    Ok(())
}

/// `YYYYMMDD` with a plausible month and day.
pub(crate) fn dicom_date(field: &'static str, s: &str) -> Result<(), Error> {
    let b = s.as_bytes();
    let ok = b.len() == 8 && b.iter().all(u8::is_ascii_digit) && {
        let month = (b[4] - b'0') * 10 + (b[5] - b'0');
        let day = (b[6] - b'0') * 10 + (b[7] - b'0');
        (1..=12).contains(&month) && (1..=31).contains(&day)
    };
    if !ok {
        return Err(bad(field, "expected a date as YYYYMMDD"));
    }
    Ok(())
}

pub(crate) fn sex(s: &str) -> Result<(), Error> {
    if !matches!(s, "M" | "F" | "O") {
        return Err(bad("sex", "expected M, F or O"));
    }
    Ok(())
}

/// A timestamp or date as text: 1 to 40 of digits, letters and `:+-.`.
pub(crate) fn timestamp(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b":+-.".contains(&b)) {
        return Err(bad(field, "expected an RFC 3339 time or a YYYY-MM-DD date"));
    }
    Ok(())
}

/// A short identifier-like token (author account id, observation code, unit): 1 to 128
/// printable characters, no control characters.
pub(crate) fn token(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(bad(field, "expected 1 to 128 printable characters"));
    }
    Ok(())
}
