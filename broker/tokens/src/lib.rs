//! Macaroons for Cleave's broker: the libmacaroons V2 format, Cleave's typed caveat grammar,
//! and a verifier that checks every caveat against the request and then the HMAC chain,
//! ending in a constant-time comparison.
//!
//! A grant is a root key held by the broker and an identifier (the grant id). The broker
//! mints a token ([`Macaroon::mint`]); anyone holding it can narrow it without a key
//! ([`attenuate`], the share button), never widen it. For each request the broker parses the
//! token, looks up the root key by [`Macaroon::identifier`], and calls [`Macaroon::verify`],
//! which returns an [`Authorized`] proof only it can make, or a [`Denial`] whose message is
//! safe to log and to show (no token content, no PHI).
//!
//! Why this crate rather than the `macaroon` crate, the caveat grammar and the limits are in
//! `broker/tokens/README.md`; the byte format and test vectors in `broker/tokens/FORMAT.md`.
#![forbid(unsafe_code)]

mod cache;
mod caveat;
mod crypto;
mod error;
mod macaroon;
mod verify;
mod wire;

pub use cache::{VerifiedToken, VerifiedTokens};
pub use caveat::{Caveat, CaveatKind, Op, OpSet, Pseudonym, ShareId, Store, StoreSet, StudyUid, MAX_NOTE_LEN};
pub use crypto::RootKey;
pub use error::{Denial, Result};
pub use macaroon::{attenuate, CaveatEntry, Macaroon};
pub use verify::{Authorized, RequestContext, Scope, MAX_DISCHARGES, MAX_DISCHARGE_DEPTH};
pub use wire::{MAX_CAVEATS, MAX_FIELD_BYTES, MAX_TOKEN_BYTES};

/// Networks for `net` caveats ([`Caveat::Net`]), from the `ipnet` crate.
pub use ipnet::IpNet;
