//! Normalisation of search terms before they are blind-indexed.
//!
//! A blind index only finds exact equality, so every spelling a clerk might type for the
//! same name must normalise to the same term *before* hashing. The rules (FORMAT.md,
//! "Normalisation") are: Unicode NFKD, drop combining marks (accents), fold letters that
//! NFKD does not decompose (ß, æ, ø, ł...), lowercase, treat DICOM `^` and the separators
//! `-` `,` `.` `_` `/` as spaces, drop apostrophes, collapse whitespace.
//!
//! Everything built here is PHI; it lives in [`Zeroizing`] strings until it is hashed.
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Letters NFKD leaves whole but that people routinely type without their mark.
fn fold_special(c: char, out: &mut String) -> bool {
    let s = match c {
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' => "o",
        'ł' | 'Ł' => "l",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'þ' | 'Þ' => "th",
        'ı' => "i",
        'ħ' | 'Ħ' => "h",
        _ => return false,
    };
    out.push_str(s);
    true
}

/// Normalise free text (a name, a component, a token) to its search form.
pub(crate) fn text(input: &str) -> Zeroizing<String> {
    let mut folded = Zeroizing::new(String::with_capacity(input.len()));
    for c in input.nfkd() {
        if is_combining_mark(c) || c == '\'' || c == '’' || c == '`' {
            continue;
        }
        if fold_special(c, &mut folded) {
            continue;
        }
        if c == '^' || c == '-' || c == ',' || c == '.' || c == '_' || c == '/' || c.is_whitespace() {
            folded.push(' ');
            continue;
        }
        for l in c.to_lowercase() {
            folded.push(l);
        }
    }
    let mut out = Zeroizing::new(String::with_capacity(folded.len()));
    for word in folded.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Identifiers (national id, patient id, issuer, accession number): case-insensitive,
/// with spaces, dashes and dots ignored, because the same number is printed with and
/// without them.
pub(crate) fn identifier(input: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(input.len()));
    for c in input.nfkc() {
        if c.is_whitespace() || c == '-' || c == '.' || c == '/' {
            continue;
        }
        for l in c.to_uppercase() {
            out.push(l);
        }
    }
    out
}

/// The full-name search form: family, given and middle name, each normalised, joined by
/// `^` (trailing empty components dropped), e.g. `doe^jane` or `doe^jane^ann`.
pub(crate) fn full_name(family: Option<&str>, given: Option<&str>, middle: Option<&str>) -> Option<Zeroizing<String>> {
    let parts = [family, given, middle].map(|p| p.map(text).unwrap_or_default());
    let last = parts.iter().rposition(|p| !p.is_empty())?;
    let mut out = Zeroizing::new(String::new());
    for (i, p) in parts.iter().take(last + 1).enumerate() {
        if i > 0 {
            out.push('^');
        }
        out.push_str(p);
    }
    Some(out)
}

/// Every word of the name components, normalised, without repeats.
pub(crate) fn name_tokens(components: &[Option<&str>]) -> Vec<Zeroizing<String>> {
    let mut tokens: Vec<Zeroizing<String>> = Vec::new();
    for c in components.iter().flatten() {
        let n = text(c);
        for w in n.split(' ').filter(|w| !w.is_empty()) {
            if !tokens.iter().any(|t| t.as_str() == w) {
                tokens.push(Zeroizing::new(w.to_owned()));
            }
        }
    }
    tokens
}

/// A DICOM DA birth date: exactly `YYYYMMDD`, a real calendar day.
pub(crate) fn birth_date(input: &str) -> Option<Zeroizing<String>> {
    let s = input.trim();
    let b = s.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1800 || d == 0 || d > days {
        return None;
    }
    Some(Zeroizing::new(s.to_owned()))
}

/// DICOM Patient's Sex: `M`, `F` or `O` (case-insensitive on input).
pub(crate) fn sex(input: &str) -> Option<&'static str> {
    match input.trim() {
        "M" | "m" => Some("M"),
        "F" | "f" => Some("F"),
        "O" | "o" => Some("O"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_case_and_separators_fold_together() {
        for spelling in ["Müller-Lüdenscheidt", "MULLER LUDENSCHEIDT", "  müller   lüdenscheidt ", "Mu\u{308}ller^Ludenscheidt"] {
            assert_eq!(text(spelling).as_str(), "muller ludenscheidt", "{spelling}");
        }
        assert_eq!(text("O'Brien").as_str(), "obrien");
        assert_eq!(text("Strauß").as_str(), "strauss");
        assert_eq!(text("Łukasz Søren").as_str(), "lukasz soren");
        assert_eq!(text("ＤＯＥ").as_str(), "doe", "full-width letters are compatibility forms");
        assert_ne!(text("Doe").as_str(), text("Dow").as_str());
    }

    #[test]
    fn full_name_and_tokens() {
        assert_eq!(full_name(Some("Doe"), Some("Jane"), None).unwrap().as_str(), "doe^jane");
        assert_eq!(full_name(Some("Doe"), None, Some("Ann")).unwrap().as_str(), "doe^^ann");
        assert!(full_name(None, Some(""), None).is_none());
        let t = name_tokens(&[Some("van der Berg"), Some("Anna-Maria"), Some("Anna")]);
        let t: Vec<&str> = t.iter().map(|s| s.as_str()).collect();
        assert_eq!(t, ["van", "der", "berg", "anna", "maria"]);
    }

    #[test]
    fn identifiers_ignore_layout() {
        assert_eq!(identifier("ab-123 456.7").as_str(), "AB1234567");
    }

    #[test]
    fn birth_dates_must_be_real_days() {
        assert!(birth_date("19810229").is_none());
        assert!(birth_date("19800229").is_some(), "1980 was a leap year");
        assert!(birth_date("19000229").is_none(), "1900 was not");
        assert!(birth_date("20000229").is_some());
        assert!(birth_date("19801301").is_none());
        assert!(birth_date("1980-01-01").is_none());
        assert!(birth_date("198001011").is_none());
        assert!(birth_date("19800131").is_some());
    }
}
