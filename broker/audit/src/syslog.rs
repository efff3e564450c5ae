//! Audit entries as syslog messages for an ATNA audit record repository: RFC 5424 messages
//! carrying the DICOM PS3.15 A.5 `AuditMessage` ([`crate::atna`]), framed with RFC 5425
//! octet counting for syslog over TLS. Pure formatting: the transport is the broker's.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - DICOM+RFC3881 - <AuditMessage ...>`
//!
//! * PRI: facility 10 (security/authorization), severity notice (5) for an allowed
//!   decision, warning (4) for a denial, error (3) for an error: 85, 84, 83.
//! * MSGID `DICOM+RFC3881`, as IHE ITI-20 asks for DICOM-schema messages; no structured
//!   data; the XML is the message, which holds keyed references only, never PHI.
//! * Framing (RFC 5425 section 4.3): `MSG-LEN SP SYSLOG-MSG`, the length in octets.
use crate::atna::{to_audit_message, AuditSource};
use crate::entry::{Entry, OutcomeClass};

/// RFC 5424 `APP-NAME` of every message.
pub const APP_NAME: &str = "cleave-broker";

/// A printable-ASCII token of at most `max` characters (RFC 5424 header fields), `-` if
/// nothing printable is left.
fn header_token(s: &str, max: usize) -> String {
    let t: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if t.is_empty() { "-".to_owned() } else { t }
}

/// The RFC 5424 message for leaf `index`. `hostname` is this host's name (or address).
pub fn rfc5424_message(index: u64, entry: &Entry, source: &AuditSource, hostname: &str) -> String {
    let severity = match entry.outcome.class() {
        OutcomeClass::Allowed => 5,
        OutcomeClass::Denied => 4,
        OutcomeClass::Error => 3,
    };
    let pri = 10 * 8 + severity;
    let time = entry.time.to_rfc3339().unwrap_or_else(|| "-".to_owned());
    format!(
        "<{pri}>1 {time} {} {APP_NAME} - DICOM+RFC3881 - {}",
        header_token(hostname, 255),
        to_audit_message(index, entry, source)
    )
}

/// RFC 5425 octet-counted framing of one message.
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Actor, ActorKind, Operation, Outcome, Timestamp};

    #[test]
    fn header_priority_and_framing() {
        let mut e = Entry::new(Actor::new(ActorKind::Staff, "nurse1"), Operation::ClinicalRead, Outcome::denied("expired-grant"));
        e.time = Timestamp::from_unix_millis(1_790_000_000_123);
        let src = AuditSource { source_id: "cleave-broker".into(), enterprise_site_id: None, log_origin: "h.example/audit".into() };
        let m = rfc5424_message(42, &e, &src, "pacs 1\n");
        assert!(m.starts_with("<84>1 2026-09-21T14:13:20.123Z pacs1 cleave-broker - DICOM+RFC3881 - <"), "{m}");
        assert!(m.contains("h.example/audit#42"), "the message names its leaf");
        let framed = octet_counted(&m);
        let (len, rest) = std::str::from_utf8(&framed).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        e.outcome = Outcome::Allowed;
        assert!(rfc5424_message(1, &e, &src, "").starts_with("<85>1 2026-09-21T14:13:20.123Z - cleave-broker"));
    }
}
