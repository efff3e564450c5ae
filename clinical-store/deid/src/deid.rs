//! Applies Table E.1-1 to a parsed dataset, recursively into sequences.
//!
//! Beyond the table: private attributes (odd groups) are removed, group lengths and stray
//! file-meta elements are dropped (they would be wrong or misplaced after the change), and
//! a public attribute the standard dictionary does not know is removed, because the table
//! cannot have judged an attribute newer than itself (fail closed).
use crate::clean::clean_text;
use crate::error::Error;
use crate::options::Options;
use crate::parse::{dictionary_vr, Elem, Value};
use crate::table::{self, Action};
use crate::uid::UidMapper;
use dicom_core::VR;

pub(crate) const PATIENT_NAME: u32 = 0x0010_0010;
pub(crate) const PATIENT_ID: u32 = 0x0010_0020;

pub(crate) struct Ctx<'a> {
    pub opts: &'a Options,
    pub uids: &'a UidMapper,
    pub pseudonym: &'a str,
    /// Set when cleaning dropped words from a description.
    pub cleaned_words: bool,
}

/// De-identify one run of elements (a dataset or an item).
pub(crate) fn deidentify(elems: Vec<Elem>, ctx: &mut Ctx<'_>) -> Result<Vec<Elem>, Error> {
    let mut out = Vec::with_capacity(elems.len());
    for e in elems {
        if let Some(kept) = one(e, ctx)? {
            out.push(kept);
        }
    }
    Ok(out)
}

fn one(mut e: Elem, ctx: &mut Ctx<'_>) -> Result<Option<Elem>, Error> {
    let group = e.tag >> 16;
    if group == 0x0002 || e.tag & 0xFFFF == 0 || group & 1 == 1 {
        return Ok(None);
    }
    if e.tag == PATIENT_NAME {
        e.value = Value::Bytes(Vec::new());
        return Ok(Some(e));
    }
    if e.tag == PATIENT_ID {
        e.value = Value::Bytes(padded(ctx.pseudonym.as_bytes().to_vec(), b' '));
        return Ok(Some(e));
    }
    let (action, row) = match table::row(e.tag) {
        Some(row) => (table::resolve(row, ctx.opts), Some(row)),
        // Research releases: a date or time the table never judged is not kept on trust,
        // unless dates are shifted, which makes any date safe to keep (moved).
        None if ctx.opts.remove_unlisted_temporal && matches!(e.vr, VR::DA | VR::DT | VR::TM) => {
            if !ctx.opts.retain_long_modified_dates {
                return Ok(None);
            }
            (Action::Clean, None)
        }
        None if dictionary_vr(e.tag).is_some() => (Action::Keep, None),
        None => return Ok(None),
    };
    apply(e, action, row.map(|r| r.basic), ctx)
}

fn apply(mut e: Elem, action: Action, basic: Option<table::Basic>, ctx: &mut Ctx<'_>) -> Result<Option<Elem>, Error> {
    let value = std::mem::replace(&mut e.value, Value::Bytes(Vec::new()));
    e.value = match (action, value) {
        (Action::Remove, _) => return Ok(None),
        // A kept, cleaned or UID-bearing sequence keeps its structure; every item goes
        // through the table in turn.
        (Action::Keep | Action::Uid | Action::Clean, Value::Seq { items, inner }) => {
            let mut kept = Vec::with_capacity(items.len());
            for item in items {
                kept.push(deidentify(item, ctx)?);
            }
            Value::Seq { items: kept, inner }
        }
        (Action::Empty | Action::Dummy, Value::Seq { inner, .. }) => Value::Seq { items: Vec::new(), inner },
        (Action::Keep, v) => v,
        (_, Value::Fragments(_)) => return Ok(None),
        (Action::Empty, Value::Bytes(_)) => Value::Bytes(Vec::new()),
        (Action::Uid, Value::Bytes(b)) if e.vr == VR::UI => Value::Bytes(map_uids(&b, ctx.uids)),
        (Action::Uid | Action::Dummy, Value::Bytes(b)) => Value::Bytes(dummy(e.vr, &b, ctx.uids)),
        (Action::Clean, Value::Bytes(b)) => match e.vr {
            // Modified dates: dates move by the subject's offset; times of day stay. A value
            // that is not a whole date cannot be moved: the Basic Profile action applies
            // (an unlisted one goes).
            VR::DA | VR::DT if ctx.opts.retain_long_modified_dates => match crate::dates::shift(e.vr, &b, ctx.opts.date_offset_days) {
                Some(moved) => Value::Bytes(moved),
                None => {
                    let fallback = basic.map(table::basic_action).filter(|a| *a != Action::Clean).unwrap_or(Action::Remove);
                    e.value = Value::Bytes(b);
                    return apply(e, fallback, None, ctx);
                }
            },
            VR::TM if ctx.opts.retain_long_modified_dates => Value::Bytes(b),
            VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC => {
                let (text, dropped) = clean_text(&String::from_utf8_lossy(&b));
                ctx.cleaned_words |= dropped;
                Value::Bytes(padded(text.into_bytes(), b' '))
            }
            VR::UI => Value::Bytes(map_uids(&b, ctx.uids)),
            _ => {
                // No meaningful cleaning for this VR: fall back to the Basic Profile.
                let fallback = basic.map(table::basic_action).filter(|a| *a != Action::Clean).unwrap_or(Action::Remove);
                e.value = Value::Bytes(b);
                return apply(e, fallback, None, ctx);
            }
        },
    };
    Ok(Some(e))
}

/// Pad to even length, as PS3.5 requires.
pub(crate) fn padded(mut v: Vec<u8>, pad: u8) -> Vec<u8> {
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

/// The value without its padding (trailing spaces and NULs, leading spaces).
pub(crate) fn trimmed(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|c| *c != b' ' && *c != 0).map_or(0, |i| i + 1);
    let start = b[..end].iter().position(|c| *c != b' ').unwrap_or(end);
    &b[start..end]
}

/// Replace every UID of a (possibly multi-valued) UI value.
pub(crate) fn map_uids(b: &[u8], uids: &UidMapper) -> Vec<u8> {
    let parts: Vec<String> = b
        .split(|c| *c == b'\\')
        .map(|p| {
            let t = trimmed(p);
            if t.is_empty() { String::new() } else { uids.map(&String::from_utf8_lossy(t)) }
        })
        .collect();
    padded(parts.join("\\").into_bytes(), 0)
}

/// A value of the same VR that reveals nothing.
fn dummy(vr: VR, original: &[u8], uids: &UidMapper) -> Vec<u8> {
    use VR::*;
    let text: &[u8] = match vr {
        UI => return map_uids(original, uids),
        DA => b"19000101",
        TM => b"000000",
        DT => b"19000101000000",
        AS => b"000D",
        DS | IS => b"0",
        AE | CS | LO | SH | ST | LT | UT | UC | PN => b"REMOVED",
        UR => b"",
        // Binary values keep their length (a count or a matrix size may be relied upon)
        // with every byte zero.
        _ => return vec![0u8; original.len()],
    };
    padded(text.to_vec(), b' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_keys::Key32;

    fn run(opts: &Options, tag: u32, vr: VR, v: &[u8]) -> Option<Elem> {
        let uids = UidMapper::new(Key32::from_bytes(&mut [9u8; 32]));
        let mut ctx = Ctx { opts, uids: &uids, pseudonym: "S-1", cleaned_words: false };
        one(Elem { tag, vr, value: Value::Bytes(v.to_vec()) }, &mut ctx).expect("a plain value")
    }

    /// Procedure Creation Date (0014,4076) is in the dictionary but not in Table E.1-1: the
    /// table never judged it, so a research release must not keep it; care keeps it.
    #[test]
    fn research_removes_dates_the_table_does_not_list() {
        assert!(crate::table::row(0x0014_4076).is_none(), "pick an attribute the table does not list");
        assert!(run(&Options::research(), 0x0014_4076, VR::DA, b"20260102").is_none());
        assert!(run(&Options::research(), 0x0008_041F, VR::DT, b"20260102101010").is_none(), "Study Update DateTime");
        assert!(run(&Options::care(), 0x0014_4076, VR::DA, b"20260102").is_some());
        // Not temporal, not listed: kept by both (the table's premise).
        assert!(run(&Options::research(), 0x0028_0010, VR::US, &[0, 2]).is_some(), "Rows");
    }
}
