//! Export of entries as DICOM PS3.15 A.5 / IHE ATNA audit messages (RFC 3881 lineage).
//!
//! Each entry becomes one `AuditMessage`: `EventIdentification` with a DCM event code,
//! `ActiveParticipant` for the requestor (and for Cleave itself), `AuditSourceIdentification`
//! naming the broker, and one `ParticipantObjectIdentification` per resource carrying the
//! keyed reference, never PHI. The mapping table is in `broker/audit/README.md`. The XML is
//! written by hand: every value is escaped, and every value is either a fixed code or a
//! string the entry format already restricts to a safe alphabet.
use crate::entry::{ActorKind, Entry, Operation, Outcome, ResourceKind};

/// Who produces the audit messages (`AuditSourceIdentification`).
#[derive(Clone, Debug)]
pub struct AuditSource {
    /// `AuditSourceID`, e.g. `cleave-broker@radiology`.
    pub source_id: String,
    /// `AuditEnterpriseSiteID`, e.g. the hospital's name.
    pub enterprise_site_id: Option<String>,
    /// The log origin, so an exported message can be traced to its leaf.
    pub log_origin: String,
}

/// A coded value: code, code system, display text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub system: &'static str,
    pub display: &'static str,
}

const fn dcm(code: &'static str, display: &'static str) -> Code {
    Code { code, system: "DCM", display }
}

/// The DICOM event (EventID, EventTypeCode, EventActionCode) for an operation.
pub fn event_codes(op: Operation) -> (Code, Option<Code>, char) {
    use Operation::*;
    let security_alert = dcm("110113", "Security Alert");
    let patient_record = dcm("110110", "Patient Record");
    match op {
        Login | LoginFailed => (dcm("110114", "User Authentication"), Some(dcm("110122", "Login")), 'E'),
        Logout => (dcm("110114", "User Authentication"), Some(dcm("110123", "Logout")), 'E'),
        Enroll => (security_alert, Some(dcm("110137", "User Security Attributes Changed")), 'C'),
        Ingest => (dcm("110107", "Import"), None, 'C'),
        IdentityRead => (patient_record, None, 'R'),
        IdentitySearch | ClinicalSearch => (dcm("110112", "Query"), None, 'E'),
        IdentityWrite | ReviewResolve | Merge => (patient_record, None, 'U'),
        ClinicalRead => (dcm("110103", "DICOM Instances Accessed"), None, 'R'),
        NoteWrite | ObservationWrite => (patient_record, None, 'C'),
        ShareCreate => (security_alert, Some(dcm("110136", "Security Roles Changed")), 'C'),
        ShareUsed => (security_alert, Some(dcm("110132", "Use of Restricted Function")), 'E'),
        Revoke => (security_alert, Some(dcm("110136", "Security Roles Changed")), 'D'),
        Export => (dcm("110106", "Export"), None, 'R'),
        KeyRotate => (security_alert, Some(dcm("110129", "Security Configuration")), 'U'),
        AuditRead => (dcm("110101", "Audit Log Used"), None, 'R'),
        Denied => (security_alert, Some(dcm("110132", "Use of Restricted Function")), 'E'),
        LogRecovery => (security_alert, Some(dcm("110129", "Security Configuration")), 'E'),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 => out.push_str(&format!("&#x{:x};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn code_el(tag: &str, c: Code) -> String {
    format!(
        "<{tag} csd-code=\"{}\" codeSystemName=\"{}\" originalText=\"{}\"/>",
        esc(c.code),
        esc(c.system),
        esc(c.display)
    )
}

/// The `AuditMessage` XML of the entry at leaf `index`.
pub fn to_audit_message(index: u64, entry: &Entry, source: &AuditSource) -> String {
    let (event_id, event_type, action) = event_codes(entry.operation);
    let (indicator, description) = match &entry.outcome {
        Outcome::Allowed if entry.operation == Operation::LoginFailed => ("4", Some("login-failed".to_owned())),
        Outcome::Allowed => ("0", None),
        Outcome::Denied { kind } => ("4", Some(format!("denied: {kind}"))),
        Outcome::Error { kind } => ("8", Some(format!("error: {kind}"))),
    };
    let time = entry.time.to_rfc3339().unwrap_or_default();
    let mut x = String::with_capacity(2048);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessage>\n");
    x.push_str(&format!(
        "  <EventIdentification EventActionCode=\"{action}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{indicator}\">\n    {}\n",
        esc(&time),
        code_el("EventID", event_id)
    ));
    if let Some(t) = event_type {
        x.push_str(&format!("    {}\n", code_el("EventTypeCode", t)));
    }
    if let Some(d) = description {
        x.push_str(&format!("    <EventOutcomeDescription>{}</EventOutcomeDescription>\n", esc(&d)));
    }
    x.push_str("  </EventIdentification>\n");

    // The requestor. Grant, share chain and certificate go in AlternativeUserID, which
    // RFC 3881 reserves for such secondary identifiers of the same user.
    let a = &entry.actor;
    let mut alt = Vec::new();
    if let Some(g) = &a.grant {
        alt.push(format!("grant={g}"));
    }
    if !a.shares.is_empty() {
        alt.push(format!("shares={}", a.shares.join(",")));
    }
    if let Some(c) = &a.cert_sha256 {
        alt.push(format!("cert-sha256={}", hex::encode(c)));
    }
    let kind = match a.kind {
        ActorKind::Staff => "staff",
        ActorKind::Device => "device",
        ActorKind::Consultant => "consultant",
        ActorKind::System => "system",
    };
    x.push_str(&format!(
        "  <ActiveParticipant UserID=\"{}\"{} UserName=\"{kind}\" UserIsRequestor=\"true\">\n    {}\n  </ActiveParticipant>\n",
        esc(&a.name),
        if alt.is_empty() { String::new() } else { format!(" AlternativeUserID=\"{}\"", esc(&alt.join(";"))) },
        code_el("RoleIDCode", dcm("110153", "Source Role ID"))
    ));
    x.push_str(&format!(
        "  <ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\">\n    {}\n  </ActiveParticipant>\n",
        esc(&source.source_id),
        code_el("RoleIDCode", dcm("110152", "Destination Role ID"))
    ));
    x.push_str(&format!(
        "  <AuditSourceIdentification AuditSourceID=\"{}\"{}>\n    <AuditSourceTypeCode csd-code=\"4\" codeSystemName=\"DCM\" originalText=\"Application Server Process\"/>\n  </AuditSourceIdentification>\n",
        esc(&source.source_id),
        source.enterprise_site_id.as_ref().map(|s| format!(" AuditEnterpriseSiteID=\"{}\"", esc(s))).unwrap_or_default()
    ));
    for r in &entry.resources {
        // TypeCode 1 = Person, role 1 = Patient; TypeCode 2 = System Object, role 3 = Report
        // (RFC 3881 5.5). The ID type is Cleave's own code: the value is a keyed hash, not
        // a patient number or a UID, and must not be mistaken for one.
        let (type_code, role, id_code) = match r.kind {
            ResourceKind::Patient => ("1", "1", Code { code: "patient-ref", system: "urn:cleave:audit", display: "Cleave keyed patient reference" }),
            ResourceKind::Study => ("2", "3", Code { code: "study-ref", system: "urn:cleave:audit", display: "Cleave keyed study reference" }),
        };
        x.push_str(&format!(
            "  <ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"{type_code}\" ParticipantObjectTypeCodeRole=\"{role}\">\n    {}\n  </ParticipantObjectIdentification>\n",
            hex::encode(r.digest),
            code_el("ParticipantObjectIDTypeCode", id_code)
        ));
    }
    // Where this message sits in the verifiable log: TypeCode 2 (System Object), role 13
    // (Security Resource).
    x.push_str(&format!(
        "  <ParticipantObjectIdentification ParticipantObjectID=\"{}#{index}\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"13\">\n    {}\n  </ParticipantObjectIdentification>\n",
        esc(&source.log_origin),
        code_el("ParticipantObjectIDTypeCode", Code { code: "audit-leaf", system: "urn:cleave:audit", display: "Cleave audit log leaf" })
    ));
    x.push_str("</AuditMessage>\n");
    x
}
