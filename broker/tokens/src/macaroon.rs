//! The token itself: minting, attenuating (with and without a key), discharges, and the
//! text form that travels in an `Authorization` header.

use std::fmt;

use zeroize::Zeroizing;

use cleave_keys::Key32;

use crate::caveat::Caveat;
use crate::crypto::{self, RootKey, Sig};
use crate::error::{Denial, Result};
use crate::wire::{self, RawCaveat, MAX_CAVEATS, MAX_FIELD_BYTES, MAX_TOKEN_BYTES};

/// A macaroon in the libmacaroons V2 format.
///
/// The signature is a bearer secret (whoever has it can use and narrow the token), so it is
/// zeroized on drop, and `Debug` prints only the shape of the token, never its contents
/// (caveats can hold a patient pseudonym).
#[derive(Clone)]
pub struct Macaroon {
    pub(crate) location: String,
    pub(crate) identifier: Vec<u8>,
    pub(crate) caveats: Vec<RawCaveat>,
    pub(crate) signature: Sig,
}

/// One caveat of a token, as listed by [`Macaroon::caveats`].
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaveatEntry<'a> {
    /// A predicate checked by this server; [`Caveat::parse_bytes`] reads it.
    FirstParty(&'a [u8]),
    /// A condition a third party must discharge.
    ThirdParty {
        /// Where to ask for the discharge (not signed: a hint only).
        location: &'a str,
        /// The caveat id the third party reads; the discharge carries it as identifier.
        id: &'a [u8],
    },
}

impl fmt::Debug for CaveatEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaveatEntry::FirstParty(p) => write!(f, "FirstParty(<{} bytes>)", p.len()),
            CaveatEntry::ThirdParty { id, .. } => write!(f, "ThirdParty(<{} bytes>)", id.len()),
        }
    }
}

impl Macaroon {
    /// A new token for `identifier` (the grant id), signed with the grant's root key.
    /// `location` is a hint for the holder (not signed); it may be empty.
    pub fn mint(root_key: &Key32, identifier: &[u8], location: &str) -> Result<Macaroon> {
        Macaroon::mint_prepared(&RootKey::new(root_key), identifier, location)
    }

    /// As [`Macaroon::mint`], with a root key prepared once for many tokens.
    pub fn mint_prepared(root_key: &RootKey, identifier: &[u8], location: &str) -> Result<Macaroon> {
        if identifier.is_empty() || identifier.len() > MAX_FIELD_BYTES {
            return Err(Denial::InvalidArgument("identifier must be 1 to 1024 bytes"));
        }
        if location.len() > MAX_FIELD_BYTES {
            return Err(Denial::InvalidArgument("location must be at most 1024 bytes"));
        }
        Ok(Macaroon {
            location: location.to_owned(),
            identifier: identifier.to_vec(),
            caveats: Vec::new(),
            signature: root_key.initial(identifier),
        })
    }

    /// Narrow the token with a typed caveat. Needs no key: anyone holding the token can
    /// narrow it, nobody can widen it.
    pub fn add_first_party(&mut self, caveat: &Caveat) -> Result<()> {
        let text = caveat.to_predicate()?;
        self.add_first_party_predicate(&text)
    }

    /// Narrow the token with predicate text, as written (for predicates built elsewhere).
    /// The text is not checked against the grammar here; the verifier refuses what it does
    /// not understand.
    pub fn add_first_party_predicate(&mut self, predicate: &str) -> Result<()> {
        if predicate.is_empty() || predicate.len() > MAX_FIELD_BYTES {
            return Err(Denial::InvalidArgument("caveat must be 1 to 1024 bytes"));
        }
        self.push(RawCaveat { location: None, id: predicate.as_bytes().to_vec(), vid: None })
    }

    /// Add a third-party caveat: the holder must also present a discharge minted by the
    /// party at `location` with `caveat_root_key` and identifier `caveat_id`.
    pub fn add_third_party(&mut self, location: &str, caveat_root_key: &Key32, caveat_id: &[u8]) -> Result<()> {
        if caveat_id.is_empty() || caveat_id.len() > MAX_FIELD_BYTES || location.len() > MAX_FIELD_BYTES {
            return Err(Denial::InvalidArgument("caveat id must be 1 to 1024 bytes, location at most 1024"));
        }
        let vid = crypto::seal_vid(&self.signature, caveat_root_key);
        self.push(RawCaveat { location: Some(location.to_owned()), id: caveat_id.to_vec(), vid: Some(vid) })
    }

    fn push(&mut self, caveat: RawCaveat) -> Result<()> {
        if self.caveats.len() >= MAX_CAVEATS {
            return Err(Denial::TooLarge("caveat count"));
        }
        let new_sig = match &caveat.vid {
            None => crypto::hmac(&*self.signature, &caveat.id),
            Some(vid) => crypto::hmac2(&self.signature, vid, &caveat.id),
        };
        self.caveats.push(caveat);
        if self.encoded_len() > MAX_TOKEN_BYTES {
            self.caveats.pop();
            return Err(Denial::TooLarge("token"));
        }
        self.signature = new_sig;
        Ok(())
    }

    /// Bind a discharge to this token, so it cannot be replayed with another one. Returns the
    /// bound copy to send alongside this token.
    pub fn bind_discharge(&self, discharge: &Macaroon) -> Macaroon {
        let mut bound = discharge.clone();
        bound.signature = crypto::bind(&self.signature, &discharge.signature);
        bound
    }

    /// The identifier (the grant id the root key is looked up by).
    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }

    /// The location hint (not signed).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The caveats in order, for listing what a token (a share) allows.
    pub fn caveats(&self) -> impl ExactSizeIterator<Item = CaveatEntry<'_>> {
        self.caveats.iter().map(|c| match (&c.vid, &c.location) {
            (None, _) => CaveatEntry::FirstParty(&c.id),
            (Some(_), loc) => CaveatEntry::ThirdParty { location: loc.as_deref().unwrap_or(""), id: &c.id },
        })
    }

    /// The V2 binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_binary(&self.location, &self.identifier, &self.caveats, &self.signature)
    }

    fn encoded_len(&self) -> usize {
        self.to_bytes().len()
    }

    /// The text form: V2 binary in URL-safe base64 without padding.
    pub fn serialize(&self) -> String {
        let bytes = Zeroizing::new(self.to_bytes());
        wire::encode_text(&bytes)
    }

    /// Read the V2 binary form. Structure and size limits only: nothing is verified.
    pub fn from_bytes(bytes: &[u8]) -> Result<Macaroon> {
        let d = wire::decode_binary(bytes)?;
        Ok(Macaroon { location: d.location, identifier: d.identifier, caveats: d.caveats, signature: Zeroizing::new(d.signature) })
    }

    /// Read the text form (URL-safe or standard base64, padded or not). Structure and size
    /// limits only: nothing is verified.
    pub fn parse(text: &str) -> Result<Macaroon> {
        let bytes = Zeroizing::new(wire::decode_text(text)?);
        Macaroon::from_bytes(&bytes)
    }
}

impl fmt::Debug for Macaroon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Macaroon {{ caveats: {}, signature: <redacted> }}", self.caveats.len())
    }
}

/// Narrow a token given as text, without any key: what the share button does.
pub fn attenuate(token: &str, caveats: &[Caveat]) -> Result<String> {
    let mut m = Macaroon::parse(token)?;
    for c in caveats {
        m.add_first_party(c)?;
    }
    Ok(m.serialize())
}
