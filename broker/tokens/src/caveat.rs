//! Cleave's first-party caveat grammar (README.md, "Caveat grammar"): parsing predicate text
//! into typed [`Caveat`]s and writing them back in their one canonical spelling.
//!
//! The parser is strict on purpose. A caveat is a restriction the holder chose; if this
//! server reads it differently from the person who wrote it, the token is wider than they
//! meant. So there is exactly one spelling per value, unknown kinds are refused
//! ([`Denial::UnknownCaveat`]) and a known kind with a bad value is refused
//! ([`Denial::MalformedCaveat`]): never skipped.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Denial, Result};

/// Longest `note` text, in bytes.
pub const MAX_NOTE_LEN: usize = 200;
/// Longest DICOM UID (PS3.5 9.1).
const MAX_UID_LEN: usize = 64;

/// What a request does. Each request is exactly one operation; operations do not imply
/// one another (`write` does not include `append`, `admin` does not include `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Read data: identity records, clinical instances, notes, observations.
    Read,
    /// Ingest new instances only (C-STORE, STOW-RS); never change or read existing data.
    Append,
    /// Create or edit notes and observations, and edit identity records.
    Write,
    /// Attenuate this token and register the share with the broker.
    Share,
    /// Manage accounts, devices, keys and the review queue.
    Admin,
    /// Read the audit log and its proofs.
    Audit,
    /// Run a de-identified research export.
    Export,
}

const ALL_OPS: [Op; 7] = [Op::Read, Op::Append, Op::Write, Op::Share, Op::Admin, Op::Audit, Op::Export];

impl Op {
    /// The grammar's name for this operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Append => "append",
            Op::Write => "write",
            Op::Share => "share",
            Op::Admin => "admin",
            Op::Audit => "audit",
            Op::Export => "export",
        }
    }
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
    fn from_name(s: &str) -> Option<Op> {
        ALL_OPS.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which store a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Store {
    /// The identity vault (who the patient is).
    Identity,
    /// The clinical store (what was done, by pseudonym).
    Clinical,
    /// The audit log.
    Audit,
}

const ALL_STORES: [Store; 3] = [Store::Identity, Store::Clinical, Store::Audit];

impl Store {
    /// The grammar's name for this store.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Identity => "identity",
            Store::Clinical => "clinical",
            Store::Audit => "audit",
        }
    }
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
    fn from_name(s: &str) -> Option<Store> {
        ALL_STORES.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of operations. Intersecting two sets is how repeated `ops` caveats combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSet(u8);

impl OpSet {
    /// Every operation: what a token with no `ops` caveat allows.
    pub const ALL: OpSet = OpSet(0x7f);
    /// The set of the given operations.
    pub fn of(ops: &[Op]) -> OpSet {
        OpSet(ops.iter().fold(0, |acc, o| acc | o.bit()))
    }
    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }
    /// Operations in both sets.
    pub fn intersect(self, other: OpSet) -> OpSet {
        OpSet(self.0 & other.0)
    }
    /// The operations, in the grammar's order.
    pub fn iter(self) -> impl Iterator<Item = Op> {
        ALL_OPS.into_iter().filter(move |o| self.contains(*o))
    }
    /// Whether the set is empty (no request can pass).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A set of stores. Intersecting two sets is how repeated `stores` caveats combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSet(u8);

impl StoreSet {
    /// Every store: what a token with no `stores` caveat allows.
    pub const ALL: StoreSet = StoreSet(0x07);
    /// The set of the given stores.
    pub fn of(stores: &[Store]) -> StoreSet {
        StoreSet(stores.iter().fold(0, |acc, s| acc | s.bit()))
    }
    /// Whether `store` is in the set.
    pub fn contains(self, store: Store) -> bool {
        self.0 & store.bit() != 0
    }
    /// Stores in both sets.
    pub fn intersect(self, other: StoreSet) -> StoreSet {
        StoreSet(self.0 & other.0)
    }
    /// The stores, in the grammar's order.
    pub fn iter(self) -> impl Iterator<Item = Store> {
        ALL_STORES.into_iter().filter(move |s| self.contains(*s))
    }
    /// Whether the set is empty (no request can pass).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A patient pseudonym, `P<digits>-<32 lowercase hex>`. It is PHI in Cleave's threat model
/// (it links clinical records), so `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pseudonym(String);

impl Pseudonym {
    /// Check the syntax and wrap the text.
    pub fn parse(s: &str) -> Result<Pseudonym> {
        let ok = (|| {
            let rest = s.strip_prefix('P')?;
            let (digits, hex) = rest.split_once('-')?;
            let digits_ok = (1..=9).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
            (digits_ok && is_lower_hex(hex, 32)).then_some(())
        })();
        match ok {
            Some(()) => Ok(Pseudonym(s.to_owned())),
            None => Err(Denial::MalformedCaveat(CaveatKind::Patient)),
        }
    }
    /// The pseudonym text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonym(<redacted>)")
    }
}

/// A DICOM UID (digits and dots, at most 64 characters, no empty component, no leading zero
/// in a component). Study UIDs can identify a patient's visit, so `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StudyUid(String);

impl StudyUid {
    /// Check the syntax (PS3.5 9.1) and wrap the text.
    pub fn parse(s: &str) -> Result<StudyUid> {
        let component_ok = |c: &str| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0'))
        };
        if s.len() <= MAX_UID_LEN && s.split('.').all(component_ok) {
            Ok(StudyUid(s.to_owned()))
        } else {
            Err(Denial::MalformedCaveat(CaveatKind::Study))
        }
    }
    /// The UID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StudyUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StudyUid(<redacted>)")
    }
}

/// The id of a registered share (32 lowercase hex, as `cleave_keys::random_id128`). Not PHI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareId(String);

impl ShareId {
    /// Check the syntax and wrap the text.
    pub fn parse(s: &str) -> Result<ShareId> {
        if is_lower_hex(s, 32) {
            Ok(ShareId(s.to_owned()))
        } else {
            Err(Denial::MalformedCaveat(CaveatKind::Share))
        }
    }
    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The kinds of caveat in the grammar; named in [`Denial::MalformedCaveat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaveatKind {
    Ops,
    Stores,
    Patient,
    Study,
    Expires,
    Cert,
    Net,
    Share,
    Note,
}

impl CaveatKind {
    /// The grammar's keyword for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            CaveatKind::Ops => "ops",
            CaveatKind::Stores => "stores",
            CaveatKind::Patient => "patient",
            CaveatKind::Study => "study",
            CaveatKind::Expires => "expires",
            CaveatKind::Cert => "cert",
            CaveatKind::Net => "net",
            CaveatKind::Share => "share",
            CaveatKind::Note => "note",
        }
    }
    fn from_keyword(s: &str) -> Option<CaveatKind> {
        use CaveatKind::*;
        [Ops, Stores, Patient, Study, Expires, Cert, Net, Share, Note].into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for CaveatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One first-party caveat, parsed. Every kind can only narrow what a token allows; see
/// README.md for the grammar and for how repeated kinds combine (always by intersection).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caveat {
    /// `ops = read,write`: the request's operation must be one of these.
    Ops(OpSet),
    /// `stores = clinical`: the request's store must be one of these.
    Stores(StoreSet),
    /// `patient = P1-<hex>`: the request must concern exactly this patient.
    Patient(Pseudonym),
    /// `study = 1.2.3`: the request must concern exactly this study.
    Study(StudyUid),
    /// `expires < 2030-01-01T00:00:00Z`: the request must come strictly before this time.
    Expires(SystemTime),
    /// `cert = sha256:<hex>`: the client certificate's SHA-256 must be this one.
    Cert([u8; 32]),
    /// `net = 10.0.0.0/8`: the peer address must be in this network.
    Net(IpNet),
    /// `share = <hex id>`: the token is a registered share; always satisfied here, reported
    /// in [`crate::Authorized::share_ids`] so the broker can refuse revoked shares.
    Share(ShareId),
    /// `note = <text>`: informational for the holder; always satisfied.
    Note(String),
}

impl Caveat {
    /// Parse predicate text. Unknown kinds give [`Denial::UnknownCaveat`]; a known kind with
    /// a value outside the grammar gives [`Denial::MalformedCaveat`].
    pub fn parse(text: &str) -> Result<Caveat> {
        // The keyword is the leading run of lowercase letters, so "ops=read" is a malformed
        // `ops` caveat (refused as such), not an unknown one.
        let end = text.bytes().position(|b| !b.is_ascii_lowercase()).unwrap_or(text.len());
        let keyword = &text[..end];
        let kind = CaveatKind::from_keyword(keyword).ok_or(Denial::UnknownCaveat)?;
        let bad = Denial::MalformedCaveat(kind);
        let op = if kind == CaveatKind::Expires { " < " } else { " = " };
        let value = text[keyword.len()..].strip_prefix(op).ok_or(bad.clone())?;
        match kind {
            CaveatKind::Ops => {
                let mut set = 0u8;
                for name in value.split(',') {
                    let op = Op::from_name(name).ok_or(bad.clone())?;
                    if set & op.bit() != 0 {
                        return Err(bad);
                    }
                    set |= op.bit();
                }
                Ok(Caveat::Ops(OpSet(set)))
            }
            CaveatKind::Stores => {
                let mut set = 0u8;
                for name in value.split(',') {
                    let s = Store::from_name(name).ok_or(bad.clone())?;
                    if set & s.bit() != 0 {
                        return Err(bad);
                    }
                    set |= s.bit();
                }
                Ok(Caveat::Stores(StoreSet(set)))
            }
            CaveatKind::Patient => Pseudonym::parse(value).map(Caveat::Patient),
            CaveatKind::Study => StudyUid::parse(value).map(Caveat::Study),
            CaveatKind::Expires => {
                let t = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| bad)?;
                Ok(Caveat::Expires(t.into()))
            }
            CaveatKind::Cert => {
                let hex = value.strip_prefix("sha256:").filter(|h| is_lower_hex(h, 64)).ok_or(bad)?;
                let mut out = [0u8; 32];
                for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
                    // Both bytes were checked to be lowercase hex digits just above.
                    out[i] = (hex_val(pair[0]) << 4) | hex_val(pair[1]);
                }
                Ok(Caveat::Cert(out))
            }
            CaveatKind::Net => {
                let net: IpNet = value.parse().map_err(|_| bad.clone())?;
                // Host bits set ("10.0.0.1/8") would be a second spelling of the same network.
                if net.trunc() != net {
                    return Err(bad);
                }
                Ok(Caveat::Net(net))
            }
            CaveatKind::Share => ShareId::parse(value).map(Caveat::Share),
            CaveatKind::Note => {
                if value.is_empty() || value.len() > MAX_NOTE_LEN || value.chars().any(char::is_control) {
                    return Err(bad);
                }
                Ok(Caveat::Note(value.to_owned()))
            }
        }
    }

    /// Parse predicate bytes (a first-party caveat id as it appears in a token).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Caveat> {
        let text = std::str::from_utf8(bytes).map_err(|_| Denial::UnknownCaveat)?;
        Caveat::parse(text)
    }

    /// The kind of this caveat.
    pub fn kind(&self) -> CaveatKind {
        match self {
            Caveat::Ops(_) => CaveatKind::Ops,
            Caveat::Stores(_) => CaveatKind::Stores,
            Caveat::Patient(_) => CaveatKind::Patient,
            Caveat::Study(_) => CaveatKind::Study,
            Caveat::Expires(_) => CaveatKind::Expires,
            Caveat::Cert(_) => CaveatKind::Cert,
            Caveat::Net(_) => CaveatKind::Net,
            Caveat::Share(_) => CaveatKind::Share,
            Caveat::Note(_) => CaveatKind::Note,
        }
    }

    /// The canonical predicate text, which [`Caveat::parse`] reads back to the same value.
    /// Fails only for values outside the grammar (an empty set, a time RFC 3339 cannot
    /// write, an over-long note).
    pub fn to_predicate(&self) -> Result<String> {
        let bad = Denial::MalformedCaveat(self.kind());
        let text = match self {
            Caveat::Ops(set) => {
                if set.is_empty() {
                    return Err(bad);
                }
                format!("ops = {}", join(set.iter().map(Op::as_str)))
            }
            Caveat::Stores(set) => {
                if set.is_empty() {
                    return Err(bad);
                }
                format!("stores = {}", join(set.iter().map(Store::as_str)))
            }
            Caveat::Patient(p) => format!("patient = {}", p.as_str()),
            Caveat::Study(s) => format!("study = {}", s.as_str()),
            Caveat::Expires(t) => {
                let t = OffsetDateTime::from(*t).format(&Rfc3339).map_err(|_| bad)?;
                format!("expires < {t}")
            }
            Caveat::Cert(h) => {
                let mut s = String::with_capacity(64);
                for b in h {
                    s.push_str(&format!("{b:02x}"));
                }
                format!("cert = sha256:{s}")
            }
            Caveat::Net(n) => format!("net = {}", n.trunc()),
            Caveat::Share(id) => format!("share = {}", id.as_str()),
            Caveat::Note(n) => {
                if n.is_empty() || n.len() > MAX_NOTE_LEN || n.chars().any(char::is_control) {
                    return Err(bad);
                }
                format!("note = {n}")
            }
        };
        Ok(text)
    }

    /// Check this caveat against a request. Kinds that only annotate (`share`, `note`)
    /// always pass; the rest each name their own denial.
    pub(crate) fn check(&self, ctx: &crate::verify::RequestContext) -> Result<()> {
        match self {
            Caveat::Ops(set) if !set.contains(ctx.op) => Err(Denial::OpNotAllowed(ctx.op)),
            Caveat::Stores(set) if !set.contains(ctx.store) => Err(Denial::StoreNotAllowed(ctx.store)),
            Caveat::Patient(p) if ctx.patient.as_ref() != Some(p) => Err(Denial::PatientNotCovered),
            Caveat::Study(s) if ctx.study.as_ref() != Some(s) => Err(Denial::StudyNotCovered),
            Caveat::Expires(t) if ctx.now >= *t => Err(Denial::Expired),
            Caveat::Cert(h) => {
                use subtle::ConstantTimeEq;
                match &ctx.client_cert_sha256 {
                    Some(c) if bool::from(c.ct_eq(h)) => Ok(()),
                    _ => Err(Denial::CertMismatch),
                }
            }
            Caveat::Net(n) if !n.contains(&canonical_ip(ctx.peer_ip)) => Err(Denial::NetNotAllowed),
            _ => Ok(()),
        }
    }
}

/// An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as a dual-stack listener reports IPv4
/// clients) is the IPv4 address for `net` caveats; otherwise `net = 10.0.0.0/8` would
/// refuse the very clients it names.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn join<'a>(mut items: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from(items.next().unwrap_or(""));
    for i in items {
        s.push(',');
        s.push_str(i);
    }
    s
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'a' + 10,
    }
}
