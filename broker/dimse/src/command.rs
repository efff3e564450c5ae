//! DIMSE command sets (PS3.7 section 9 and annex E): the few group-0000 elements a Storage and
//! Verification SCP reads and writes, always in implicit VR little endian.
//!
//! Hand-written rather than routed through a general DICOM object model because a command set
//! is a flat list of small elements, and every byte here comes from the network: the parser is
//! bounds-checked throughout and rejects anything it does not expect instead of guessing.

/// DIMSE status codes this server sends.
pub(crate) mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATA_SET_DOES_NOT_MATCH: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const NOT_AUTHORIZED: u16 = 0x0124;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

pub(crate) const C_STORE_RQ: u16 = 0x0001;
pub(crate) const C_STORE_RSP: u16 = 0x8001;
pub(crate) const C_ECHO_RQ: u16 = 0x0030;
pub(crate) const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type value meaning "no data set follows".
pub(crate) const NO_DATA_SET: u16 = 0x0101;

const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
const COMMAND_FIELD: u16 = 0x0100;
const MESSAGE_ID: u16 = 0x0110;
const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
const STATUS: u16 = 0x0900;
const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;

/// Largest command set accepted. Real ones are a few hundred bytes; this bounds memory spent
/// on a peer that streams command fragments forever.
pub(crate) const MAX_COMMAND_LEN: usize = 64 * 1024;

/// The fields of a request command this server acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Command {
    pub command_field: u16,
    pub message_id: u16,
    pub has_data_set: bool,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
}

/// Why a command set could not be read. Carries no content of the command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CommandError {
    Truncated,
    NotGroupZero,
    MissingField,
    BadValue,
}

/// Parses an implicit VR little endian command set.
pub(crate) fn parse(bytes: &[u8]) -> Result<Command, CommandError> {
    let mut cmd = Command::default();
    let (mut field, mut msg_id, mut ds_type) = (None, None, None);
    let mut rest = bytes;
    while !rest.is_empty() {
        let header = rest.get(..8).ok_or(CommandError::Truncated)?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if group != 0 {
            return Err(CommandError::NotGroupZero);
        }
        let value = rest.get(8..8 + len).ok_or(CommandError::Truncated)?;
        rest = &rest[8 + len..];
        match element {
            // A group length that disagrees with what follows means a truncated or spliced
            // command: refuse it rather than act on part of it.
            0x0000 => {
                let declared = match value {
                    [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
                    _ => return Err(CommandError::BadValue),
                };
                if declared != rest.len() {
                    return Err(CommandError::Truncated);
                }
            }
            COMMAND_FIELD => field = Some(us(value)?),
            MESSAGE_ID => msg_id = Some(us(value)?),
            COMMAND_DATA_SET_TYPE => ds_type = Some(us(value)?),
            AFFECTED_SOP_CLASS_UID => cmd.affected_sop_class_uid = Some(ui(value)?),
            AFFECTED_SOP_INSTANCE_UID => cmd.affected_sop_instance_uid = Some(ui(value)?),
            _ => {}
        }
    }
    cmd.command_field = field.ok_or(CommandError::MissingField)?;
    cmd.message_id = msg_id.ok_or(CommandError::MissingField)?;
    cmd.has_data_set = ds_type.ok_or(CommandError::MissingField)? != NO_DATA_SET;
    Ok(cmd)
}

fn us(value: &[u8]) -> Result<u16, CommandError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CommandError::BadValue),
    }
}

fn ui(value: &[u8]) -> Result<String, CommandError> {
    let text = std::str::from_utf8(value).map_err(|_| CommandError::BadValue)?;
    Ok(text.trim_end_matches(['\0', ' ']).to_owned())
}

/// Encodes a response command set (no data set) with its group length.
pub(crate) fn response(
    command_field: u16,
    message_id_being_responded_to: u16,
    status: u16,
    affected_sop_class_uid: &str,
    affected_sop_instance_uid: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(160);
    put_ui(&mut body, AFFECTED_SOP_CLASS_UID, affected_sop_class_uid);
    put_us(&mut body, COMMAND_FIELD, command_field);
    put_us(&mut body, MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to);
    put_us(&mut body, COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    put_us(&mut body, STATUS, status);
    if let Some(uid) = affected_sop_instance_uid {
        put_ui(&mut body, AFFECTED_SOP_INSTANCE_UID, uid);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    put_header(&mut out, 0x0000, 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_header(out: &mut Vec<u8>, element: u16, len: u32) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_us(out: &mut Vec<u8>, element: u16, value: u16) {
    put_header(out, element, 2);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_ui(out: &mut Vec<u8>, element: u16, uid: &str) {
    let padded = uid.len() + uid.len() % 2;
    put_header(out, element, padded as u32);
    out.extend_from_slice(uid.as_bytes());
    if uid.len() % 2 == 1 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A C-STORE-RQ as dcmtk's storescu encodes it (group length, then elements in order).
    fn store_rq() -> Vec<u8> {
        let mut b = Vec::new();
        put_ui(&mut b, AFFECTED_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2");
        put_us(&mut b, COMMAND_FIELD, C_STORE_RQ);
        put_us(&mut b, MESSAGE_ID, 7);
        put_us(&mut b, 0x0700, 0);
        put_us(&mut b, COMMAND_DATA_SET_TYPE, 0x0000);
        put_ui(&mut b, AFFECTED_SOP_INSTANCE_UID, "1.2.3.4.5");
        let mut out = Vec::new();
        put_header(&mut out, 0, 4);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&b);
        out
    }

    #[test]
    fn parses_a_store_request_and_trims_uid_padding() {
        let cmd = parse(&store_rq()).unwrap();
        assert_eq!(cmd.command_field, C_STORE_RQ);
        assert_eq!(cmd.message_id, 7);
        assert!(cmd.has_data_set);
        assert_eq!(cmd.affected_sop_class_uid.as_deref(), Some("1.2.840.10008.5.1.4.1.1.2"));
        assert_eq!(cmd.affected_sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
    }

    #[test]
    fn every_truncation_of_a_command_fails_without_panicking() {
        let full = store_rq();
        for cut in 1..full.len() {
            assert!(parse(&full[..cut]).is_err(), "prefix of {cut} bytes parsed");
        }
    }

    #[test]
    fn fail_non_command_group_and_missing_fields() {
        let mut b = Vec::new();
        b.extend_from_slice(&[0x08, 0, 0x18, 0, 2, 0, 0, 0, b'1', 0]);
        assert_eq!(parse(&b), Err(CommandError::NotGroupZero));
        let mut b = Vec::new();
        put_us(&mut b, COMMAND_FIELD, C_ECHO_RQ);
        assert_eq!(parse(&b), Err(CommandError::MissingField));
        let mut b = Vec::new();
        put_header(&mut b, COMMAND_FIELD, 3);
        b.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse(&b), Err(CommandError::BadValue));
    }

    #[test]
    fn response_round_trips_and_has_a_true_group_length() {
        let rsp = response(C_STORE_RSP, 7, status::OUT_OF_RESOURCES, "1.2.840.10008.5.1.4.1.1.2", Some("1.2.3"));
        let group_len = u32::from_le_bytes([rsp[8], rsp[9], rsp[10], rsp[11]]) as usize;
        assert_eq!(group_len, rsp.len() - 12);
        // A response has no Message ID, so it is not a valid request: parse the fields directly.
        let mut rest = &rsp[12..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let el = u16::from_le_bytes([rest[2], rest[3]]);
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            assert_eq!(len % 2, 0, "odd-length value in element {el:04x}");
            seen.push((el, rest[8..8 + len].to_vec()));
            rest = &rest[8 + len..];
        }
        assert!(seen.contains(&(STATUS, 0xA700u16.to_le_bytes().to_vec())));
        assert!(seen.contains(&(MESSAGE_ID_BEING_RESPONDED_TO, 7u16.to_le_bytes().to_vec())));
        assert!(seen.contains(&(AFFECTED_SOP_INSTANCE_UID, b"1.2.3\0".to_vec())));
    }
}
