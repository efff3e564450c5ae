//! What one audit entry records, and its canonical byte form (the Merkle leaf).
//!
//! An entry says when, who (account or device name, grant, share chain, client
//! certificate fingerprint), what operation, with what outcome, and on which resources.
//! Resources are never named in the clear: a patient is a keyed BLAKE3 hash of their
//! pseudonym and a study a keyed hash of its UID ([`ReferenceKey`]), so the log holds no
//! PHI, and two entries about one patient can be linked only by someone holding the key
//! (the broker, which answers "who accessed this patient" for an auditor).
//!
//! The canonical form is compact JSON with fixed field order (see `FORMAT.md`). Decoding
//! is strict: unknown fields, unknown operations, a different format version, or any byte
//! that re-encoding would not reproduce make the entry malformed.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::Error;

/// The version of the entry encoding written by this build.
pub const ENTRY_FORMAT_VERSION: u32 = 1;
/// Entries larger than this are refused (the broker splits bulk operations).
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// At most this many resource references in one entry.
pub const MAX_RESOURCES: usize = 512;
const MAX_SHARES: usize = 16;

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A UTC instant with millisecond precision, written as RFC 3339 (`2026-11-22T01:44:10.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// Milliseconds since the Unix epoch. Years outside 0000..=9999 are refused on encoding.
    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// The RFC 3339 text, or `None` for an instant outside years 0000..=9999.
    pub fn to_rfc3339(self) -> Option<String> {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()?;
        dt.format(TIME_FORMAT).ok()
    }

    /// Parse the exact form [`Timestamp::to_rfc3339`] writes.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = time::PrimitiveDateTime::parse(s, TIME_FORMAT).ok()?.assume_utc();
        Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_rfc3339() {
            Some(t) => s.serialize_str(&t),
            None => Err(serde::ser::Error::custom("timestamp out of range")),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom("bad timestamp"))
    }
}

/// Who acted: what kind of principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// A staff account (username).
    Staff,
    /// An enrolled device (DICOM AE title or device name).
    Device,
    /// An external consultant acting through a share.
    Consultant,
    /// Cleave itself (key rotation, recovery, scheduled work).
    System,
}

/// Who acted. Staff usernames and device AE titles are not PHI; ids are random tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub kind: ActorKind,
    /// Account name or device AE title: 1-64 of `A-Z a-z 0-9 . _ @ -` and space.
    pub name: String,
    /// The grant (macaroon) id the request carried, if any: 1-64 of `A-Z a-z 0-9 _ -`.
    pub grant: Option<String>,
    /// The share ids the request came through, outermost first (same alphabet as `grant`).
    pub shares: Vec<String>,
    /// SHA-256 fingerprint of the client certificate, if the connection had one.
    #[serde(with = "opt_hex32")]
    pub cert_sha256: Option<[u8; 32]>,
}

impl Actor {
    /// An actor with only a kind and a name.
    pub fn new(kind: ActorKind, name: impl Into<String>) -> Self {
        Actor { kind, name: name.into(), grant: None, shares: Vec::new(), cert_sha256: None }
    }
}

mod opt_hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(|_| serde::de::Error::custom("bad fingerprint"))?;
        Ok(Some(out))
    }
}

macro_rules! operations {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What was done. The string forms are stable: they are stored in the log and in
        /// exports, and an unknown one fails closed when read.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Operation { $($(#[$doc])* $variant,)* }

        impl Operation {
            /// Every operation, in a stable order.
            pub const ALL: &'static [Operation] = &[$(Operation::$variant,)*];

            /// The stable string form.
            pub fn as_str(self) -> &'static str {
                match self { $(Operation::$variant => $name,)* }
            }

            /// Parse the stable string form; `None` for anything unknown.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Operation::$variant),)* _ => None }
            }
        }
    };
}

operations! {
    /// A successful login.
    Login => "login",
    /// A failed login attempt (wrong password, TOTP or certificate).
    LoginFailed => "login-failed",
    /// A session ended.
    Logout => "logout",
    /// An account or device was enrolled.
    Enroll => "enroll",
    /// DICOM or other data came in (C-STORE, STOW-RS, upload).
    Ingest => "ingest",
    /// Identity fields were read from the vault.
    IdentityRead => "identity-read",
    /// The identity vault was searched.
    IdentitySearch => "identity-search",
    /// Identity fields were created or changed.
    IdentityWrite => "identity-write",
    /// Clinical data (instances, notes, observations) was read.
    ClinicalRead => "clinical-read",
    /// The clinical store was queried (C-FIND, QIDO-RS).
    ClinicalSearch => "clinical-search",
    /// A clinical note was written.
    NoteWrite => "note-write",
    /// An observation was written.
    ObservationWrite => "observation-write",
    /// A share was created for a consultant.
    ShareCreate => "share-create",
    /// A share was used to reach data.
    ShareUsed => "share-used",
    /// A grant, share, device or account was revoked.
    Revoke => "revoke",
    /// Data left Cleave (export, C-MOVE to an outside node, download).
    Export => "export",
    /// A key was rotated.
    KeyRotate => "key-rotate",
    /// A de-identification review item was resolved.
    ReviewResolve => "review-resolve",
    /// Two identities were merged.
    Merge => "merge",
    /// The audit log itself was read ("audit log used").
    AuditRead => "audit-read",
    /// A request was refused before any operation could be named.
    Denied => "denied",
    /// The audit log dropped a torn tail after a crash when it was opened.
    LogRecovery => "log-recovery",
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Operation::parse(&s).ok_or_else(|| serde::de::Error::custom("unknown operation"))
    }
}

/// How the decision went. `kind` is a short machine token chosen by the broker
/// (`a-z 0-9 -`, 1-64 characters), such as `expired-grant` or `store-unavailable`; the
/// alphabet keeps free text, and with it PHI, out of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Outcome {
    Allowed,
    Denied { kind: String },
    Error { kind: String },
}

impl Outcome {
    pub fn denied(kind: impl Into<String>) -> Self {
        Outcome::Denied { kind: kind.into() }
    }
    pub fn error(kind: impl Into<String>) -> Self {
        Outcome::Error { kind: kind.into() }
    }
    /// Which of the three outcomes this is, for filtering.
    pub fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Allowed => OutcomeClass::Allowed,
            Outcome::Denied { .. } => OutcomeClass::Denied,
            Outcome::Error { .. } => OutcomeClass::Error,
        }
    }
}

/// The outcome without its detail, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    Allowed,
    Denied,
    Error,
}

/// What a resource reference points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// A patient, whichever store the access touched (keyed hash of the pseudonym).
    Patient,
    /// A study (keyed hash of the study instance UID).
    Study,
}

impl ResourceKind {
    fn prefix(self) -> &'static str {
        match self {
            ResourceKind::Patient => "patient",
            ResourceKind::Study => "study",
        }
    }
}

/// A keyed reference to a resource: meaningless without the [`ReferenceKey`], stable for
/// one resource under one key. Written as `patient:<64 hex>` or `study:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), hex::encode(self.digest))
    }
}

impl std::str::FromStr for ResourceRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = Error::InvalidEntry { field: "resources", rule: "expected patient:<64 hex> or study:<64 hex>" };
        let (kind, hex_part) = match s.split_once(':') {
            Some(("patient", h)) => (ResourceKind::Patient, h),
            Some(("study", h)) => (ResourceKind::Study, h),
            _ => return Err(bad),
        };
        let mut digest = [0u8; 32];
        // Only lowercase hex is canonical.
        if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad);
        }
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad)?;
        Ok(ResourceRef { kind, digest })
    }
}

impl Serialize for ResourceRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ResourceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom("bad resource reference"))
    }
}

/// Computes resource references with the `audit-reference` key. Only the broker holds it.
pub struct ReferenceKey {
    key: cleave_keys::Key32,
}

impl std::fmt::Debug for ReferenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReferenceKey(<redacted>)")
    }
}

impl ReferenceKey {
    /// Wrap the `KeyPurpose::AuditReference` key.
    pub fn new(key: cleave_keys::Key32) -> Self {
        ReferenceKey { key }
    }

    fn hash(&self, domain: &str, value: &str) -> [u8; 32] {
        cleave_keys::KeyedHasher::new(&self.key)
            .update(&(domain.len() as u32).to_be_bytes())
            .update(domain.as_bytes())
            .update(value.as_bytes())
            .finalize()
    }

    /// The reference of the patient with this pseudonym. The broker always resolves an
    /// identity-side access to the pseudonym first, so one patient has one reference.
    pub fn patient_ref(&self, pseudonym: &str) -> ResourceRef {
        ResourceRef { kind: ResourceKind::Patient, digest: self.hash("cleave.audit.patient/1", pseudonym) }
    }

    /// The reference of the study with this Study Instance UID (as stored in the clinical
    /// store).
    pub fn study_ref(&self, study_uid: &str) -> ResourceRef {
        ResourceRef { kind: ResourceKind::Study, digest: self.hash("cleave.audit.study/1", study_uid) }
    }
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub time: Timestamp,
    pub actor: Actor,
    pub operation: Operation,
    pub outcome: Outcome,
    pub resources: Vec<ResourceRef>,
}

/// The wire form: field order here is the canonical order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    time: Timestamp,
    actor: Actor,
    op: Operation,
    outcome: Outcome,
    resources: Vec<ResourceRef>,
}

fn check_token(field: &'static str, s: &str, extra: &[u8], rule: &'static str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok { Ok(()) } else { Err(Error::InvalidEntry { field, rule }) }
}

impl Entry {
    /// An entry stamped with the current time and no resources.
    pub fn new(actor: Actor, operation: Operation, outcome: Outcome) -> Self {
        Entry { time: Timestamp::now(), actor, operation, outcome, resources: Vec::new() }
    }

    /// Add a resource reference.
    pub fn with_resource(mut self, r: ResourceRef) -> Self {
        self.resources.push(r);
        self
    }

    /// Check every field against the format's rules.
    pub fn validate(&self) -> Result<(), Error> {
        if self.time.to_rfc3339().is_none() {
            return Err(Error::InvalidEntry { field: "time", rule: "must lie within years 0000-9999" });
        }
        let name = &self.actor.name;
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b" ._@-".contains(&b))
            && !name.starts_with(' ')
            && !name.ends_with(' ');
        if !name_ok {
            return Err(Error::InvalidEntry {
                field: "actor.name",
                rule: "1-64 characters of A-Z a-z 0-9 . _ @ - and inner spaces",
            });
        }
        const ID_RULE: &str = "1-64 characters of A-Z a-z 0-9 _ -";
        if let Some(g) = &self.actor.grant {
            check_token("actor.grant", g, b"_-", ID_RULE)?;
        }
        if self.actor.shares.len() > MAX_SHARES {
            return Err(Error::InvalidEntry { field: "actor.shares", rule: "at most 16 shares in a chain" });
        }
        for s in &self.actor.shares {
            check_token("actor.shares", s, b"_-", ID_RULE)?;
        }
        if let Outcome::Denied { kind } | Outcome::Error { kind } = &self.outcome {
            let ok = !kind.is_empty()
                && kind.len() <= 64
                && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(Error::InvalidEntry { field: "outcome.kind", rule: "1-64 characters of a-z 0-9 -" });
            }
        }
        if self.resources.len() > MAX_RESOURCES {
            return Err(Error::InvalidEntry { field: "resources", rule: "at most 512 references per entry" });
        }
        Ok(())
    }

    /// The canonical bytes: what the log stores and the Merkle tree hashes.
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let wire = Wire {
            v: ENTRY_FORMAT_VERSION,
            time: self.time,
            actor: self.actor.clone(),
            op: self.operation,
            outcome: self.outcome.clone(),
            resources: self.resources.clone(),
        };
        let bytes = serde_json::to_vec(&wire)
            .map_err(|_| Error::InvalidEntry { field: "entry", rule: "must be encodable" })?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(Error::InvalidEntry { field: "entry", rule: "encoded entry must be at most 64 KiB" });
        }
        Ok(bytes)
    }

    /// Decode canonical bytes; anything else (other version, unknown field or operation,
    /// other spacing or order) fails. `index` only labels the error.
    pub fn from_canonical_bytes(bytes: &[u8], index: u64) -> Result<Entry, Error> {
        let bad = || Error::MalformedEntry { index };
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(bad());
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|_| bad())?;
        if wire.v != ENTRY_FORMAT_VERSION {
            return Err(bad());
        }
        let entry = Entry {
            time: wire.time,
            actor: wire.actor,
            operation: wire.op,
            outcome: wire.outcome,
            resources: wire.resources,
        };
        match entry.to_canonical_bytes() {
            Ok(again) if again == bytes => Ok(entry),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ReferenceKey {
        ReferenceKey::new(cleave_keys::Key32::from_bytes(&mut [7u8; 32]))
    }

    fn sample() -> Entry {
        let mut actor = Actor::new(ActorKind::Staff, "dr.house");
        actor.grant = Some("g-0123".into());
        actor.shares = vec!["s1".into(), "s2".into()];
        actor.cert_sha256 = Some([0xab; 32]);
        Entry {
            time: Timestamp::parse_rfc3339("2026-11-22T01:44:10.123Z").unwrap(),
            actor,
            operation: Operation::ClinicalRead,
            outcome: Outcome::denied("expired-grant"),
            resources: vec![key().patient_ref("PSEUDO-1"), key().study_ref("1.2.3")],
        }
    }

    #[test]
    fn canonical_round_trip_and_exact_form() {
        let e = sample();
        let b = e.to_canonical_bytes().unwrap();
        let text = std::str::from_utf8(&b).unwrap();
        assert!(text.starts_with(r#"{"v":1,"time":"2026-11-22T01:44:10.123Z","actor":{"kind":"staff","name":"dr.house","grant":"g-0123","shares":["s1","s2"],"cert_sha256":"abab"#), "{text}");
        assert!(text.contains(r#""op":"clinical-read","outcome":{"result":"denied","kind":"expired-grant"},"resources":["patient:"#));
        assert_eq!(Entry::from_canonical_bytes(&b, 0).unwrap(), e);
    }

    #[test]
    fn non_canonical_or_unknown_fails_closed() {
        let b = String::from_utf8(sample().to_canonical_bytes().unwrap()).unwrap();
        for bad in [
            b.replacen("{\"v\":1", "{\"v\":2", 1),
            b.replacen("{\"v\":1", "{ \"v\":1", 1),
            b.replacen("clinical-read", "clinical-peek", 1),
            b.replacen("\"resources\"", "\"extra\":1,\"resources\"", 1),
            b.replacen(".123Z", "Z", 1),
            b.replacen("\"grant\":\"g-0123\",", "", 1),
        ] {
            assert!(Entry::from_canonical_bytes(bad.as_bytes(), 9).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_is_refused_so_phi_cannot_slip_in() {
        let mut e = sample();
        e.outcome = Outcome::denied("patient DOE^JANE not found");
        assert!(matches!(e.to_canonical_bytes(), Err(Error::InvalidEntry { field: "outcome.kind", .. })));
        let mut e = sample();
        e.actor.name = "x\ny".into();
        let err = e.to_canonical_bytes().unwrap_err().to_string();
        assert!(!err.contains("x\ny"));
    }

    #[test]
    fn references_are_keyed_and_separated_by_kind() {
        let a = key().patient_ref("1.2.3");
        let b = key().study_ref("1.2.3");
        assert_ne!(a.digest, b.digest);
        let other = ReferenceKey::new(cleave_keys::Key32::from_bytes(&mut [8u8; 32]));
        assert_ne!(other.patient_ref("1.2.3"), a);
        assert_eq!(a.to_string().parse::<ResourceRef>().unwrap(), a);
        assert!(a.to_string().to_uppercase().parse::<ResourceRef>().is_err());
    }
}
