//! The upper-layer side of an association: reading and writing PDUs on the TLS stream,
//! pulling the user identity out of the A-ASSOCIATE-RQ, and building the AC or RJ answer.
//!
//! Why not dicom-ul's `ServerAssociationOptions::establish_tls_async`: it performs the TLS
//! handshake itself and decides on the association inside `AccessControl::check_access`,
//! which sees AE titles and the user identity but not the TLS peer certificate. Cleave
//! authorizes a device by its certificate, and a refusal must be an A-ASSOCIATE-RJ, so the
//! certificate has to be known before the answer is sent. We therefore reuse dicom-ul's PDU
//! codec (`read_pdu`/`write_pdu`) and run the small acceptor state machine here.
//!
//! dicom-ul 0.10 does parse the user identity sub-item (type 0x58, all five kinds) into
//! `pdu::UserIdentity`, but into plain `Vec<u8>`s that are dropped without zeroizing. We parse
//! that sub-item ourselves from the raw PDU into zeroizing buffers and blank the secret bytes
//! before the PDU reaches dicom-ul.

use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, Pdu, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem, MAXIMUM_PDU_SIZE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

use crate::part10::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::sink::{Refusal, UserIdentity, UserIdentityKind};
use crate::syntax;

/// The DICOM application context name; the only one there is.
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Bound on the A-ASSOCIATE-RQ: 128 presentation contexts with a dozen transfer syntaxes each
/// fit comfortably.
pub(crate) const MAX_ASSOCIATE_RQ_LEN: u32 = 256 * 1024;

/// Why reading or writing a PDU failed. Carries no PDU content.
#[derive(Debug)]
pub(crate) enum WireError {
    Io,
    TooLarge,
    Malformed,
}

/// Reads one whole PDU (header included) without interpreting it. `max_len` bounds the PDU
/// length field so a peer cannot make us allocate more than it was told it may send.
pub(crate) async fn read_raw_pdu<R: AsyncRead + Unpin>(r: &mut R, max_len: u32) -> Result<Vec<u8>, WireError> {
    let mut header = [0u8; 6];
    r.read_exact(&mut header).await.map_err(|_| WireError::Io)?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if len > max_len {
        return Err(WireError::TooLarge);
    }
    let mut pdu = vec![0u8; 6 + len as usize];
    pdu[..6].copy_from_slice(&header);
    r.read_exact(&mut pdu[6..]).await.map_err(|_| WireError::Io)?;
    Ok(pdu)
}

/// Decodes a whole PDU (as read by [`read_raw_pdu`] or `pdata::read_pdu`) with dicom-ul's codec.
pub(crate) fn decode(raw: &[u8]) -> Result<Pdu, WireError> {
    // The length was already bounded by read_raw_pdu, so the codec's own bound is the maximum.
    match dicom_ul::read_pdu(raw, MAXIMUM_PDU_SIZE, false) {
        Ok(Some(pdu)) => Ok(pdu),
        _ => Err(WireError::Malformed),
    }
}

/// Encodes and sends one PDU, flushing it through TLS.
pub(crate) async fn send_pdu<W: AsyncWrite + Unpin>(w: &mut W, pdu: &Pdu) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(512);
    dicom_ul::write_pdu(&mut buf, pdu).map_err(|_| WireError::Malformed)?;
    w.write_all(&buf).await.map_err(|_| WireError::Io)?;
    w.flush().await.map_err(|_| WireError::Io)
}

/// An A-ABORT from the service provider.
pub(crate) fn abort(reason: AbortRQServiceProviderReason) -> Pdu {
    Pdu::AbortRQ { source: AbortRQSource::ServiceProvider(reason) }
}

/// Extracts the user identity sub-item from a raw A-ASSOCIATE-RQ and zeroes its secret bytes
/// in `raw`. `Ok(None)`: no identity offered. `Err(())`: the user information item is
/// malformed, repeated, or of an unknown identity type; the association must be refused
/// (fail closed rather than ignore a credential we cannot read).
pub(crate) fn take_user_identity(raw: &mut [u8]) -> Result<Option<UserIdentity>, ()> {
    // 6-byte PDU header, then 68 bytes of fixed fields (version, reserved, AE titles, reserved).
    let mut pos = 6 + 68;
    let mut found = None;
    while pos < raw.len() {
        let (item_type, len) = item_header(raw, pos)?;
        let body = pos + 4;
        let end = body.checked_add(len).filter(|e| *e <= raw.len()).ok_or(())?;
        if item_type == 0x50 {
            let mut sub = body;
            while sub < end {
                let (sub_type, sub_len) = item_header(raw, sub)?;
                let sub_body = sub + 4;
                let sub_end = sub_body.checked_add(sub_len).filter(|e| *e <= end).ok_or(())?;
                if sub_type == 0x58 {
                    if found.is_some() {
                        return Err(());
                    }
                    found = Some(parse_identity(&mut raw[sub_body..sub_end])?);
                }
                sub = sub_end;
            }
        }
        pos = end;
    }
    Ok(found)
}

fn item_header(raw: &[u8], pos: usize) -> Result<(u8, usize), ()> {
    match raw.get(pos..pos + 4) {
        Some([t, _, a, b]) => Ok((*t, u16::from_be_bytes([*a, *b]) as usize)),
        _ => Err(()),
    }
}

fn parse_identity(item: &mut [u8]) -> Result<UserIdentity, ()> {
    let (kind, positive) = match item.get(..2) {
        Some([k, p]) => (UserIdentityKind::from_code(*k).ok_or(())?, *p == 1),
        _ => return Err(()),
    };
    let primary_len = match item.get(2..4) {
        Some([a, b]) => u16::from_be_bytes([*a, *b]) as usize,
        _ => return Err(()),
    };
    let primary_end = 4 + primary_len;
    let primary = Zeroizing::new(item.get(4..primary_end).ok_or(())?.to_vec());
    let secondary_len = match item.get(primary_end..primary_end + 2) {
        Some([a, b]) => u16::from_be_bytes([*a, *b]) as usize,
        _ => return Err(()),
    };
    let secondary_start = primary_end + 2;
    let secondary = Zeroizing::new(item.get(secondary_start..secondary_start + secondary_len).ok_or(())?.to_vec());
    item[4..primary_end].zeroize();
    item[secondary_start..secondary_start + secondary_len].zeroize();
    Ok(UserIdentity { kind, positive_response_requested: positive, primary, secondary })
}

/// Checks what must hold before anyone is asked to authorize: protocol version 1 and the
/// DICOM application context.
pub(crate) fn check_request(rq: &AssociationRQ) -> Result<(), Pdu> {
    if rq.protocol_version & 1 == 0 {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceProviderASCE(AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported),
        ));
    }
    if rq.application_context_name.trim_end_matches(['\0', ' ']) != APPLICATION_CONTEXT {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::ApplicationContextNameNotSupported),
        ));
    }
    Ok(())
}

fn reject(result: AssociationRJResult, source: AssociationRJSource) -> Pdu {
    Pdu::AssociationRJ(AssociationRJ { result, source })
}

/// The A-ASSOCIATE-RJ for a broker's refusal.
pub(crate) fn refusal(r: Refusal) -> Pdu {
    use AssociationRJServiceUserReason as U;
    match r {
        Refusal::CallingAeTitleNotRecognized => reject(AssociationRJResult::Permanent, AssociationRJSource::ServiceUser(U::CallingAETitleNotRecognized)),
        Refusal::CalledAeTitleNotRecognized => reject(AssociationRJResult::Permanent, AssociationRJSource::ServiceUser(U::CalledAETitleNotRecognized)),
        Refusal::NoReasonGiven => reject(AssociationRJResult::Permanent, AssociationRJSource::ServiceUser(U::NoReasonGiven)),
        Refusal::UserIdentityNotAuthorized => reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceProviderASCE(AssociationRJServiceProviderASCEReason::NoReasonGiven),
        ),
        Refusal::TemporarilyUnavailable => reject(
            AssociationRJResult::Transient,
            AssociationRJSource::ServiceProviderPresentation(AssociationRJServiceProviderPresentationReason::TemporaryCongestion),
        ),
    }
}

/// The A-ASSOCIATE-RJ sent when the server is at its association limit.
pub(crate) fn over_capacity() -> Pdu {
    reject(
        AssociationRJResult::Transient,
        AssociationRJSource::ServiceProviderPresentation(AssociationRJServiceProviderPresentationReason::LocalLimitExceeded),
    )
}

/// An accepted presentation context.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: &'static str,
}

/// Negotiates the presentation contexts and builds the A-ASSOCIATE-AC.
/// `identity_response`: the accepted user identity asked for a positive response and is of a
/// type (1 or 2) whose server response is zero-length.
pub(crate) fn accept(rq: &AssociationRQ, max_pdu_length: u32, identity_response: bool) -> (Pdu, Vec<Context>) {
    let mut accepted = Vec::new();
    let results = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = pc.abstract_syntax.trim_end_matches(['\0', ' ']);
            let (reason, ts) = if !syntax::is_supported_abstract_syntax(abstract_syntax) {
                (PresentationContextResultReason::AbstractSyntaxNotSupported, None)
            } else {
                match syntax::choose_transfer_syntax(pc.transfer_syntaxes.iter().map(String::as_str)) {
                    Some(ts) => (PresentationContextResultReason::Acceptance, Some(ts)),
                    None => (PresentationContextResultReason::TransferSyntaxesNotSupported, None),
                }
            };
            if let Some(ts) = ts {
                accepted.push(Context { id: pc.id, abstract_syntax: abstract_syntax.to_owned(), transfer_syntax: ts });
            }
            PresentationContextResult {
                id: pc.id,
                reason,
                // Ignored by the peer unless accepted; PS3.8 still requires a sub-item.
                transfer_syntax: ts.unwrap_or(syntax::ACCEPTED_TRANSFER_SYNTAXES[1]).to_owned(),
            }
        })
        .collect();
    let mut user_variables = vec![
        UserVariableItem::MaxLength(max_pdu_length),
        UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_owned()),
        UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_owned()),
    ];
    if identity_response {
        // User Identity server response (0x59): server-response-length 0, no response, which
        // is what PS3.7 Table D.3-15 prescribes for identity types 1 and 2.
        user_variables.push(UserVariableItem::Unknown(0x59, vec![0, 0]));
    }
    let ac = Pdu::AssociationAC(AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: results,
        user_variables,
    });
    (ac, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::{PresentationContextProposed, UserIdentity as UlIdentity, UserIdentityType};

    fn rq_with_identity(passcode: &[u8]) -> Vec<u8> {
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "CLEAVE".into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![PresentationContextProposed {
                id: 1,
                abstract_syntax: syntax::VERIFICATION.into(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
            }],
            user_variables: vec![
                UserVariableItem::MaxLength(16384),
                UserVariableItem::UserIdentityItem(UlIdentity::new(true, UserIdentityType::UsernamePassword, b"device-7".to_vec(), passcode.to_vec())),
            ],
        });
        let mut buf = Vec::new();
        dicom_ul::write_pdu(&mut buf, &rq).unwrap();
        buf
    }

    #[test]
    fn user_identity_is_extracted_and_blanked_in_the_raw_pdu() {
        let mut raw = rq_with_identity(b"MDAxY2xvY2F0aW9u-macaroon");
        let id = take_user_identity(&mut raw).unwrap().unwrap();
        assert_eq!(id.kind(), UserIdentityKind::UsernamePasscode);
        assert!(id.positive_response_requested());
        assert_eq!(id.primary_str(), Some("device-7"));
        assert_eq!(id.secondary(), b"MDAxY2xvY2F0aW9u-macaroon");
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains("macaroon") && !hay.contains("device-7"));
        // dicom-ul still decodes the blanked PDU.
        let Pdu::AssociationRQ(rq) = decode(&raw).unwrap() else { panic!("not an RQ") };
        assert_eq!(rq.calling_ae_title, "MODALITY");
        assert!(!format!("{id:?}").contains("macaroon"));
    }

    #[test]
    fn fail_truncated_user_identity_is_refused_not_ignored() {
        let raw = rq_with_identity(b"secret");
        // Cut the PDU at every point inside the user information item: never a panic, and
        // never a silently dropped identity (either an error or, before the item, no identity).
        let ui_start = raw.windows(2).position(|w| w == [0x50, 0x00]).unwrap();
        for cut in ui_start + 1..raw.len() {
            let mut prefix = raw[..cut].to_vec();
            assert!(take_user_identity(&mut prefix).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn negotiation_accepts_storage_and_echo_and_rejects_others() {
        let Pdu::AssociationRQ(mut rq) = decode(&rq_with_identity(b"x")).unwrap() else { panic!() };
        rq.presentation_contexts.push(PresentationContextProposed {
            id: 3,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.4.100".into(), "1.2.840.10008.1.2.4.70".into()],
        });
        rq.presentation_contexts.push(PresentationContextProposed {
            id: 5,
            abstract_syntax: "1.2.840.10008.5.1.4.1.2.2.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        });
        rq.presentation_contexts.push(PresentationContextProposed {
            id: 7,
            abstract_syntax: "1.2.840.10008.5.1.4.1.1.4".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.4.100".into()],
        });
        let (ac, ctx) = accept(&rq, 1 << 20, false);
        let ids: Vec<_> = ctx.iter().map(|c| (c.id, c.transfer_syntax)).collect();
        assert_eq!(ids, vec![(1, "1.2.840.10008.1.2"), (3, "1.2.840.10008.1.2.4.70")]);
        let Pdu::AssociationAC(ac) = ac else { panic!() };
        let reasons: Vec<_> = ac.presentation_contexts.iter().map(|r| r.reason.clone()).collect();
        assert_eq!(reasons, vec![
            PresentationContextResultReason::Acceptance,
            PresentationContextResultReason::Acceptance,
            PresentationContextResultReason::AbstractSyntaxNotSupported,
            PresentationContextResultReason::TransferSyntaxesNotSupported,
        ]);
    }

    fn encode(pdu: &Pdu) -> Vec<u8> {
        let mut buf = Vec::new();
        dicom_ul::write_pdu(&mut buf, pdu).unwrap();
        buf
    }

    /// Test vector: the User Identity server response sub-item of PS3.7 D.3.3.7.2 for types
    /// 1 and 2 is 59 00 0002 0000 (type, reserved, item length 2, server-response-length 0),
    /// and it is absent when no response was asked for.
    #[test]
    fn identity_response_item_matches_the_vector() {
        let Pdu::AssociationRQ(rq) = decode(&rq_with_identity(b"x")).unwrap() else { panic!() };
        let with = encode(&accept(&rq, 16384, true).0);
        let without = encode(&accept(&rq, 16384, false).0);
        let item = [0x59u8, 0x00, 0x00, 0x02, 0x00, 0x00];
        assert!(with.ends_with(&item), "no server response item at the end of the user information");
        assert!(!without.windows(2).any(|w| w == [0x59, 0x00]), "a response item nobody asked for");
        assert_eq!(with.len(), without.len() + item.len());
    }

    /// Test vector (PS3.8 9.3.4): result, source, reason bytes of each refusal's A-ASSOCIATE-RJ.
    #[test]
    fn refusals_match_their_rj_vectors() {
        for (r, bytes) in [
            (Refusal::CallingAeTitleNotRecognized, [1u8, 1, 3]),
            (Refusal::CalledAeTitleNotRecognized, [1, 1, 7]),
            (Refusal::NoReasonGiven, [1, 1, 1]),
            // A user identity that is not authorized: permanent, ACSE service provider, no reason.
            (Refusal::UserIdentityNotAuthorized, [1, 2, 1]),
            (Refusal::TemporarilyUnavailable, [2, 3, 1]),
        ] {
            let pdu = encode(&refusal(r));
            assert_eq!(&pdu[..6], &[0x03, 0x00, 0, 0, 0, 4], "{r:?}");
            assert_eq!(&pdu[7..], &bytes, "{r:?}");
        }
    }
}
