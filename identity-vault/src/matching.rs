//! Patient matching on arrival, and the review queue it feeds.
//!
//! The vault, not the caller, decides whether an arriving set of demographics is a known
//! patient (FORMAT.md, "Matching"). Comparison never decrypts a record: each candidate
//! row carries row-bound fingerprints of family name, given name, birth date and sex, and
//! the arrival's values are fingerprinted for that row and compared in constant time.
//! Candidates are found through the issuer + patient id index, then through the index of
//! the whole demographic tuple. A missing field on either side is unknown, never a
//! mismatch.
//!
//! Uncertain decisions become review items. Only the *kinds* of fields that differ leave
//! the vault; the arrival's demographics are kept sealed in the item so that a reviewer
//! who decides "not the same person" gets a new identity made from them.
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::codec::{decode_list, encode_list};
use crate::crypto::match_value;
use crate::model::{Demographics, FieldKind, IdentityId, OtherId};
use crate::vault::{canonical, insert_identity, lookup_terms, set_merged, validate, T_IDENTITY};
use crate::{Error, Result, Vault};

const T_REVIEW: &str = "review";
const BODY_VERSION: u8 = 1;
/// Candidates compared per arrival; a patient id shared by more records than this is a
/// data-quality problem for humans, and the first ones are enough to flag it.
const MAX_CANDIDATES: usize = 64;

/// A review item's id: 128 random bits, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReviewId([u8; 16]);

impl ReviewId {
    pub fn from_hex(s: &str) -> Result<Self> {
        IdentityId::from_hex(s)
            .map(|i| ReviewId(*i.as_bytes()))
            .map_err(|_| Error::InvalidInput { field: "review item id", expected: "32 lowercase hex digits" })
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ReviewId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReviewId({})", self.to_hex())
    }
}

impl std::fmt::Display for ReviewId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ReviewId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Why an arrival was flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReviewKind {
    /// Same issuer + patient id, exactly one demographic field differs (usually a typo):
    /// the arrival was attached to the existing identity.
    FieldMismatch,
    /// Same issuer + patient id, two or more fields differ: a new identity was made.
    IdCollision,
    /// Another id (or none), identical family, given, birth date and sex: a new identity
    /// was made.
    PossibleDuplicate,
}

impl ReviewKind {
    fn code(self) -> u8 {
        match self {
            ReviewKind::FieldMismatch => 1,
            ReviewKind::IdCollision => 2,
            ReviewKind::PossibleDuplicate => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => ReviewKind::FieldMismatch,
            2 => ReviewKind::IdCollision,
            3 => ReviewKind::PossibleDuplicate,
            _ => return None,
        })
    }
}

/// What the vault decided for an arrival. Contains no PHI; serialisable for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MatchOutcome {
    /// Same issuer + patient id and no known field differs: the existing identity.
    Existing { identity: IdentityId },
    /// Same issuer + patient id, one field differs: attached to the existing identity and
    /// flagged for review.
    AttachedForReview { identity: IdentityId, differing: FieldKind, review: ReviewId },
    /// Same issuer + patient id, two or more fields differ: a new identity, flagged.
    IdCollision { identity: IdentityId, colliding_with: Vec<IdentityId>, differing: Vec<FieldKind>, review: ReviewId },
    /// No id match but identical demographics elsewhere: a new identity, flagged.
    PossibleDuplicate { identity: IdentityId, duplicate_of: Vec<IdentityId>, review: ReviewId },
    /// Nobody like this in the vault: a new identity.
    Created { identity: IdentityId },
}

impl MatchOutcome {
    /// The identity the arrival's records belong to.
    pub fn identity(&self) -> IdentityId {
        match self {
            MatchOutcome::Existing { identity }
            | MatchOutcome::AttachedForReview { identity, .. }
            | MatchOutcome::IdCollision { identity, .. }
            | MatchOutcome::PossibleDuplicate { identity, .. }
            | MatchOutcome::Created { identity } => *identity,
        }
    }
}

/// An open review item, as a reviewer's list shows it: no values, only field kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewItem {
    pub id: ReviewId,
    pub kind: ReviewKind,
    /// For a field mismatch, the one identity; otherwise the new identity first, then the
    /// ones it collides with or may duplicate.
    pub identities: Vec<IdentityId>,
    pub differing: Vec<FieldKind>,
}

/// A reviewer's decision on an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// The vault's decision stands (attached stays attached; separate stays separate).
    Confirm,
    /// Same person: `absorb` is merged into `keep`. Both records stay readable, and both
    /// identities' pseudonyms resolve to `keep`. Not for a field mismatch (one identity).
    Merge { keep: IdentityId, absorb: IdentityId },
    /// Different people. For a field mismatch, a new identity is made from the arrival's
    /// demographics (the caller moves that arrival's records to it); otherwise as Confirm.
    KeepApart,
}

/// What a resolution did, for the broker's audit log. Contains no PHI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolutionRecord {
    pub item: ReviewId,
    pub kind: ReviewKind,
    pub decision: Decision,
    pub identities: Vec<IdentityId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<IdentityId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absorbed: Option<IdentityId>,
    /// The identity made for the arrival by `KeepApart` on a field mismatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<IdentityId>,
}

/// The decision recorded by [`Vault::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Decision {
    Confirmed,
    Merged,
    KeptApart,
}

impl Decision {
    fn code(self) -> u8 {
        match self {
            Decision::Confirmed => 1,
            Decision::Merged => 2,
            Decision::KeptApart => 3,
        }
    }
}

/// The decoded, sealed body of a review item.
struct Body {
    kind: ReviewKind,
    mask: u8,
    state: u8,
    identities: Vec<IdentityId>,
    arrival: Zeroizing<Vec<u8>>,
}

impl Body {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![BODY_VERSION, self.kind.code(), self.mask, self.state]);
        // At most MAX_CANDIDATES + 1 identities, far below 255.
        out.push(self.identities.len().min(255) as u8);
        for i in self.identities.iter().take(255) {
            out.extend_from_slice(i.as_bytes());
        }
        out.extend_from_slice(&self.arrival);
        out
    }

    fn decode(b: &[u8]) -> Option<Body> {
        let (head, rest) = b.split_first_chunk::<5>()?;
        let [version, kind, mask, state, n] = *head;
        if version != BODY_VERSION || mask & !0x0f != 0 || state > 3 {
            return None;
        }
        let ids_len = usize::from(n) * 16;
        let ids = rest.get(..ids_len)?;
        let identities = ids.chunks_exact(16).map(|c| c.try_into().ok().map(IdentityId)).collect::<Option<Vec<_>>>()?;
        Some(Body {
            kind: ReviewKind::from_code(kind)?,
            mask,
            state,
            identities,
            arrival: Zeroizing::new(rest.get(ids_len..)?.to_vec()),
        })
    }

    fn differing(&self) -> Vec<FieldKind> {
        FieldKind::MATCHED.into_iter().filter(|k| self.mask & k.bit() != 0).collect()
    }
}

/// The arrival's demographics as a list: the 13 text fields (`""` when absent), the count
/// of phone numbers, the phone numbers, then issuer and id of each other id.
fn encode_demographics(d: &Demographics) -> Result<Zeroizing<Vec<u8>>> {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let mut items: Zeroizing<Vec<String>> = Zeroizing::new(vec![
        opt(&d.family_name), opt(&d.given_name), opt(&d.middle_name), opt(&d.name_prefix), opt(&d.name_suffix),
        opt(&d.birth_date), opt(&d.sex), opt(&d.address), opt(&d.national_id), opt(&d.issuer), opt(&d.patient_id),
        opt(&d.ethnic_group), opt(&d.free_text),
    ]);
    items.push(d.phones.len().to_string());
    items.extend(d.phones.iter().cloned());
    for o in &d.other_ids {
        items.push(o.issuer.clone());
        items.push(o.id.clone());
    }
    encode_list(&items).ok_or(Error::InvalidInput { field: "demographics", expected: "fields of at most 65535 bytes" })
}

fn decode_demographics(b: &[u8]) -> Option<Demographics> {
    let mut items = decode_list(b)?;
    let mut it = items.drain(..);
    let mut next_opt = || it.next().map(|s| (!s.is_empty()).then_some(s));
    let mut d = Demographics {
        family_name: next_opt()?,
        given_name: next_opt()?,
        middle_name: next_opt()?,
        name_prefix: next_opt()?,
        name_suffix: next_opt()?,
        birth_date: next_opt()?,
        sex: next_opt()?,
        address: next_opt()?,
        national_id: next_opt()?,
        issuer: next_opt()?,
        patient_id: next_opt()?,
        ethnic_group: next_opt()?,
        free_text: next_opt()?,
        phones: Vec::new(),
        other_ids: Vec::new(),
    };
    let n: usize = it.next()?.parse().ok()?;
    for _ in 0..n {
        d.phones.push(it.next()?);
    }
    while let Some(issuer) = it.next() {
        d.other_ids.push(OtherId { issuer, id: it.next()? });
    }
    Some(d)
}

impl Vault {
    /// Decide who an arriving set of demographics belongs to (FORMAT.md, "Matching"),
    /// creating an identity and a review item where the rules say so.
    pub fn match_or_create(&mut self, d: &Demographics) -> Result<MatchOutcome> {
        validate(d)?;
        let crypto = &self.crypto;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("matching"))?;
        let mut by_id: Vec<(IdentityId, u8)> = Vec::new();
        if let Some(pid) = crate::crypto::present(&d.patient_id) {
            let term = crypto.patient_id_term(crate::crypto::present(&d.issuer), pid);
            for c in lookup_terms(&tx, &[term], MAX_CANDIDATES)? {
                by_id.push((c, differing_mask(&tx, crypto, &c, d)?));
            }
        }
        let outcome = if !by_id.is_empty() {
            if let Some((c, _)) = by_id.iter().find(|(_, m)| *m == 0) {
                MatchOutcome::Existing { identity: canonical(&tx, crypto, c)? }
            } else if let Some((c, m)) = by_id.iter().find(|(_, m)| m.count_ones() == 1) {
                let identity = canonical(&tx, crypto, c)?;
                let differing = FieldKind::MATCHED
                    .into_iter()
                    .find(|k| m & k.bit() != 0)
                    .ok_or(Error::Corrupt { table: T_IDENTITY, column: "fingerprints" })?;
                let review = add_review(&tx, crypto, ReviewKind::FieldMismatch, *m, vec![identity], d)?;
                MatchOutcome::AttachedForReview { identity, differing, review }
            } else {
                let identity = insert_identity(&tx, crypto, d)?;
                let mut colliding_with = Vec::new();
                for (c, _) in &by_id {
                    let c = canonical(&tx, crypto, c)?;
                    if !colliding_with.contains(&c) {
                        colliding_with.push(c);
                    }
                }
                let mask = by_id.first().map(|(_, m)| *m).unwrap_or(0);
                let mut involved = vec![identity];
                involved.extend(colliding_with.iter().copied());
                let review = add_review(&tx, crypto, ReviewKind::IdCollision, mask, involved, d)?;
                let differing = FieldKind::MATCHED.into_iter().filter(|k| mask & k.bit() != 0).collect();
                MatchOutcome::IdCollision { identity, colliding_with, differing, review }
            }
        } else {
            let dupes = match crypto.demographics_term(d) {
                Some(t) => lookup_terms(&tx, &[t], MAX_CANDIDATES)?,
                None => Vec::new(),
            };
            let identity = insert_identity(&tx, crypto, d)?;
            if dupes.is_empty() {
                MatchOutcome::Created { identity }
            } else {
                let mut duplicate_of = Vec::new();
                for c in &dupes {
                    let c = canonical(&tx, crypto, c)?;
                    if !duplicate_of.contains(&c) {
                        duplicate_of.push(c);
                    }
                }
                let mut involved = vec![identity];
                involved.extend(duplicate_of.iter().copied());
                let review = add_review(&tx, crypto, ReviewKind::PossibleDuplicate, 0, involved, d)?;
                MatchOutcome::PossibleDuplicate { identity, duplicate_of, review }
            }
        };
        tx.commit().map_err(Error::db("matching"))?;
        Ok(outcome)
    }

    /// Open review items, in no meaningful order (their ids are random).
    pub fn review_queue(&self) -> Result<Vec<ReviewItem>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, body FROM review WHERE open = 1")
            .map_err(Error::db("listing the review queue"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(Error::db("listing the review queue"))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, body) = r.map_err(Error::db("listing the review queue"))?;
            let id = ReviewId(id.as_slice().try_into().map_err(|_| Error::Corrupt { table: T_REVIEW, column: "id" })?);
            let body = open_body(&self.crypto, &id, &body)?;
            if body.state != 0 {
                return Err(Error::Tampered { table: T_REVIEW, column: "open" });
            }
            out.push(ReviewItem { id, kind: body.kind, differing: body.differing(), identities: body.identities });
        }
        Ok(out)
    }

    /// Record a reviewer's decision on an open item and carry it out.
    pub fn resolve(&mut self, item: &ReviewId, resolution: Resolution) -> Result<ResolutionRecord> {
        let crypto = &self.crypto;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db("resolving a review item"))?;
        let sealed: Option<Vec<u8>> = tx
            .query_row("SELECT body FROM review WHERE id = ?1 AND open = 1", [&item.0[..]], |r| r.get(0))
            .optional()
            .map_err(Error::db("resolving a review item"))?;
        let mut body = open_body(crypto, item, &sealed.ok_or(Error::NoSuchReviewItem)?)?;
        if body.state != 0 {
            return Err(Error::Tampered { table: T_REVIEW, column: "open" });
        }
        let mut record = ResolutionRecord {
            item: *item,
            kind: body.kind,
            decision: Decision::Confirmed,
            identities: body.identities.clone(),
            kept: None,
            absorbed: None,
            created: None,
        };
        match (resolution, body.kind) {
            (Resolution::Confirm, _) => {}
            (Resolution::KeepApart, ReviewKind::FieldMismatch) => {
                let arrival = decode_demographics(&body.arrival).ok_or(Error::Corrupt { table: T_REVIEW, column: "body" })?;
                record.created = Some(insert_identity(&tx, crypto, &arrival)?);
                record.decision = Decision::KeptApart;
            }
            (Resolution::KeepApart, _) => record.decision = Decision::KeptApart,
            (Resolution::Merge { .. }, ReviewKind::FieldMismatch) => {
                return Err(Error::BadResolution(
                    "a field mismatch involves one identity; use Confirm (same person) or KeepApart (different people)",
                ))
            }
            (Resolution::Merge { keep, absorb }, _) => {
                if !body.identities.contains(&keep) || !body.identities.contains(&absorb) {
                    return Err(Error::BadResolution("both identities of a merge must be among the item's identities"));
                }
                let (keep, absorb) = (canonical(&tx, crypto, &keep)?, canonical(&tx, crypto, &absorb)?);
                if keep == absorb {
                    return Err(Error::BadResolution("these identities are already one (merged earlier)"));
                }
                set_merged(&tx, crypto, &absorb, &keep)?;
                record.decision = Decision::Merged;
                record.kept = Some(keep);
                record.absorbed = Some(absorb);
            }
        }
        body.state = record.decision.code();
        let sealed = crypto.seal(T_REVIEW, "body", &item.to_hex(), &body.encode());
        tx.execute("UPDATE review SET open = 0, body = ?2 WHERE id = ?1", params![&item.0[..], sealed])
            .map_err(Error::db("resolving a review item"))?;
        tx.commit().map_err(Error::db("resolving a review item"))?;
        Ok(record)
    }
}

fn open_body(crypto: &crate::crypto::Crypto, id: &ReviewId, sealed: &[u8]) -> Result<Body> {
    let plain = crypto.open(T_REVIEW, "body", &id.to_hex(), sealed)?;
    Body::decode(&plain).ok_or(Error::Corrupt { table: T_REVIEW, column: "body" })
}

/// Which matched fields of `d` differ from the candidate's, by fingerprint.
fn differing_mask(conn: &rusqlite::Connection, crypto: &crate::crypto::Crypto, c: &IdentityId, d: &Demographics) -> Result<u8> {
    let stored: [Option<Vec<u8>>; 4] = conn
        .prepare_cached("SELECT fp_family_name, fp_given_name, fp_birth_date, fp_sex FROM identity WHERE id = ?1")
        .and_then(|mut s| s.query_row([&c.as_bytes()[..]], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])))
        .map_err(Error::db("matching"))?;
    let mut mask = 0u8;
    for (k, s) in FieldKind::MATCHED.into_iter().zip(stored) {
        if let (Some(v), Some(s)) = (match_value(d, k), s) {
            let fp = crypto.fingerprint(c, k, &v);
            if !bool::from(fp.as_slice().ct_eq(&s)) {
                mask |= k.bit();
            }
        }
    }
    Ok(mask)
}

fn add_review(
    tx: &rusqlite::Transaction<'_>,
    crypto: &crate::crypto::Crypto,
    kind: ReviewKind,
    mask: u8,
    identities: Vec<IdentityId>,
    arrival: &Demographics,
) -> Result<ReviewId> {
    let id = ReviewId(*IdentityId::random().as_bytes());
    let body = Body { kind, mask, state: 0, identities, arrival: encode_demographics(arrival)? };
    let sealed = crypto.seal(T_REVIEW, "body", &id.to_hex(), &body.encode());
    tx.execute("INSERT INTO review (id, open, body) VALUES (?1, 1, ?2)", params![&id.0[..], sealed])
        .map_err(Error::db("recording a review item"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_snapshot_round_trips() {
        let mut d = Demographics::default();
        d.family_name = Some("Doe".into());
        d.birth_date = Some("19800101".into());
        d.phones = vec!["1".into(), "".into()];
        d.other_ids = vec![OtherId { issuer: "X".into(), id: "9".into() }];
        let e = encode_demographics(&d).unwrap();
        assert_eq!(decode_demographics(&e).unwrap(), d);
        assert!(decode_demographics(&e[..e.len() - 3]).is_none());
    }
}
