//! DICOM Upper Layer PDUs, DIMSE command sets and query identifiers, as the inspecting relay
//! reads them: every length that comes from the network is checked against a bound before
//! anything is allocated for it.
//!
//! The 6-byte PDU header and the P-DATA-TF value items are read here (so that pixel data can
//! stream through without the whole PDU in memory); the small PDUs (A-ASSOCIATE-RQ/AC/RJ,
//! A-RELEASE, A-ABORT) are parsed and written with `dicom-ul`, command sets and identifiers
//! with `dicom-object` (after [`check_dataset`] has walked their element lengths).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceUserReason, AssociationRJSource, Pdu,
};

/// A-ASSOCIATE-RQ.
pub const PDU_ASSOCIATE_RQ: u8 = 0x01;
/// A-ASSOCIATE-AC.
pub const PDU_ASSOCIATE_AC: u8 = 0x02;
/// A-ASSOCIATE-RJ.
pub const PDU_ASSOCIATE_RJ: u8 = 0x03;
/// P-DATA-TF.
pub const PDU_PDATA: u8 = 0x04;
/// A-RELEASE-RQ.
pub const PDU_RELEASE_RQ: u8 = 0x05;
/// A-RELEASE-RP.
pub const PDU_RELEASE_RP: u8 = 0x06;
/// A-ABORT.
pub const PDU_ABORT: u8 = 0x07;

/// Longest A-ASSOCIATE-RQ/AC/RJ accepted (the body after the 6-byte header).
pub const MAX_ASSOCIATE: u32 = 64 * 1024;
/// Longest P-DATA-TF accepted. It is never held whole: value items stream through.
pub const MAX_PDATA: u32 = 16 * 1024 * 1024;
/// Longest command set kept (the fragments of one command, joined).
pub const MAX_COMMAND: usize = 64 * 1024;
/// Longest query/retrieve identifier kept (the fragments of one data set, joined).
pub const MAX_IDENTIFIER: usize = 1024 * 1024;
/// Deepest sequence nesting [`check_dataset`] follows.
const MAX_DEPTH: usize = 8;

/// Implicit VR Little Endian, the transfer syntax of every command set.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A PDU header: type and the length of the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub pdu_type: u8,
    pub len: u32,
}

/// Why bytes are not a DICOM PDU stream the relay will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// A PDU type that does not exist.
    UnknownType(u8),
    /// A length outside the bounds for its PDU type.
    Length { pdu_type: u8, len: u32 },
    /// The stream ended inside a PDU.
    Truncated,
    /// The body does not parse (what `dicom-ul` or the value items said).
    Body(String),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::UnknownType(t) => write!(f, "PDU type 0x{t:02x} does not exist"),
            Malformed::Length { pdu_type, len } => {
                write!(
                    f,
                    "PDU type 0x{pdu_type:02x} of {len} bytes is out of bounds"
                )
            }
            Malformed::Truncated => f.write_str("the stream ended inside a PDU"),
            Malformed::Body(e) => write!(f, "the PDU does not parse: {e}"),
        }
    }
}

/// Reads a PDU header and checks its type and length bounds.
pub fn parse_header(b: &[u8; 6]) -> Result<Header, Malformed> {
    let pdu_type = b[0];
    let len = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
    let ok = match pdu_type {
        PDU_ASSOCIATE_RQ | PDU_ASSOCIATE_AC => (68..=MAX_ASSOCIATE).contains(&len),
        PDU_ASSOCIATE_RJ | PDU_RELEASE_RQ | PDU_RELEASE_RP | PDU_ABORT => len == 4,
        // At least one value item: 4-byte length, context id, control header.
        PDU_PDATA => (6..=MAX_PDATA).contains(&len),
        t => return Err(Malformed::UnknownType(t)),
    };
    if ok {
        Ok(Header { pdu_type, len })
    } else {
        Err(Malformed::Length { pdu_type, len })
    }
}

/// Parses a whole small PDU (header and body) with `dicom-ul`.
pub fn parse_small(pdu: &[u8]) -> Result<Pdu, Malformed> {
    let max = (MAX_ASSOCIATE + 1024).max(dicom_ul::pdu::MINIMUM_PDU_SIZE);
    match dicom_ul::pdu::read_pdu(pdu, max, true) {
        Ok(Some(Pdu::Unknown { pdu_type, .. })) => Err(Malformed::UnknownType(pdu_type)),
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Malformed::Truncated),
        Err(e) => Err(Malformed::Body(e.to_string())),
    }
}

fn encode(pdu: &Pdu) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    // Writing these fixed-size PDUs into a Vec cannot fail; fall back to the literal bytes
    // if it ever did.
    if dicom_ul::pdu::write_pdu(&mut out, pdu).is_err() {
        out.clear();
    }
    out
}

/// A-ASSOCIATE-RJ, result 1 (rejected-permanent), source 1 (service-user) with `reason`
/// (3: calling AE title not recognized, 7: called AE title not recognized).
pub fn associate_rj(reason: u8) -> Vec<u8> {
    let r = match reason {
        3 => AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        7 => AssociationRJServiceUserReason::CalledAETitleNotRecognized,
        2 => AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        1 => AssociationRJServiceUserReason::NoReasonGiven,
        x => AssociationRJServiceUserReason::Reserved(x),
    };
    let out = encode(&Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Permanent,
        source: AssociationRJSource::ServiceUser(r),
    }));
    if out.len() == 10 {
        out
    } else {
        vec![PDU_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, 1, 1, reason]
    }
}

/// A-ABORT, source 2 (service-provider), reason 0 (not specified).
pub fn abort() -> Vec<u8> {
    let out = encode(&Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified),
    });
    if out.len() == 10 {
        out
    } else {
        vec![PDU_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0]
    }
}

/// The DIMSE command fields the relay tells apart.
pub mod command {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RSP: u16 = 0x8021;
    /// Set in every response's command field.
    pub const RESPONSE: u16 = 0x8000;
}

/// The name of a DIMSE request's command field, for refusals (`C-FIND`, `N-ACTION`, …).
pub fn command_name(field: u16) -> String {
    let name = match field & !command::RESPONSE {
        0x0001 => "C-STORE",
        0x0010 => "C-GET",
        0x0020 => "C-FIND",
        0x0021 => "C-MOVE",
        0x0030 => "C-ECHO",
        0x0FFF => "C-CANCEL",
        0x0100 => "N-EVENT-REPORT",
        0x0110 => "N-GET",
        0x0120 => "N-SET",
        0x0130 => "N-ACTION",
        0x0140 => "N-CREATE",
        0x0150 => "N-DELETE",
        _ => return format!("DIMSE 0x{field:04x}"),
    };
    name.to_owned()
}

/// What the relay reads from a command set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// (0000,0100).
    pub field: u16,
    /// (0000,0110) of a request, or (0000,0120) of a response.
    pub message_id: u16,
    /// (0000,0800) is not 0x0101: a data set follows.
    pub has_dataset: bool,
    /// (0000,0002) Affected SOP Class UID.
    pub sop_class: Option<String>,
    /// (0000,1000) Affected SOP Instance UID.
    pub sop_instance: Option<String>,
    /// (0000,0900) Status.
    pub status: Option<u16>,
    /// (0000,1021) Number of Completed Sub-operations.
    pub completed: Option<u64>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = obj.get(tag)?.to_str().ok()?;
    let v = v.trim_matches([' ', '\0']);
    (!v.is_empty()).then(|| v.to_owned())
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    obj.get(tag)?.to_int::<u64>().ok()
}

/// Walks a data set's element headers (Little Endian; `explicit` VR or implicit) and checks
/// that every defined length fits in what is left, sequences nest at most 8 deep, and
/// undefined lengths occur only where items and delimiters follow. Run before handing the
/// bytes to `dicom-object`, which reserves what a length says before reading the value.
pub fn check_dataset(b: &[u8], explicit: bool) -> Result<(), String> {
    let mut pos = 0;
    walk(b, &mut pos, explicit, 0, false)?;
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Elements from `*pos` to the end of `b`, or (`in_item`) to an item delimiter.
fn walk(
    b: &[u8],
    pos: &mut usize,
    explicit: bool,
    depth: usize,
    in_item: bool,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("sequences nest too deep".into());
    }
    while *pos < b.len() {
        let group = u16_at(b, *pos)?;
        let elem = u16_at(b, *pos + 2)?;
        if group == 0xFFFE {
            // Item delimiter ends an undefined-length item; anything else here is misplaced.
            if elem == 0xE00D && in_item {
                *pos += 8;
                return Ok(());
            }
            return Err(format!(
                "misplaced delimiter (fffe,{elem:04x}) at byte {}",
                *pos
            ));
        }
        let (len, header, is_sq) = if explicit {
            let vr = b.get(*pos + 4..*pos + 6).ok_or("truncated VR")?;
            if matches!(
                vr,
                b"OB"
                    | b"OD"
                    | b"OF"
                    | b"OL"
                    | b"OV"
                    | b"OW"
                    | b"SQ"
                    | b"SV"
                    | b"UC"
                    | b"UN"
                    | b"UR"
                    | b"UT"
                    | b"UV"
            ) {
                (u32_at(b, *pos + 8)?, 12, vr == b"SQ" || vr == b"UN")
            } else {
                (u32::from(u16_at(b, *pos + 6)?), 8, false)
            }
        } else {
            (u32_at(b, *pos + 4)?, 8, true)
        };
        *pos += header;
        if len == UNDEFINED {
            if !is_sq {
                return Err(format!("undefined length on ({group:04x},{elem:04x})"));
            }
            items(b, pos, explicit, depth + 1, None)?;
        } else {
            let end = pos
                .checked_add(len as usize)
                .filter(|e| *e <= b.len())
                .ok_or_else(|| {
                    format!("({group:04x},{elem:04x}) claims {len} bytes past the end")
                })?;
            *pos = end;
        }
    }
    if in_item {
        return Err("an undefined-length item has no delimiter".into());
    }
    Ok(())
}

/// The items of an undefined-length sequence at `*pos`, up to its sequence delimiter.
fn items(
    b: &[u8],
    pos: &mut usize,
    explicit: bool,
    depth: usize,
    _end: Option<usize>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("sequences nest too deep".into());
    }
    loop {
        let (group, elem) = (u16_at(b, *pos)?, u16_at(b, *pos + 2)?);
        let len = u32_at(b, *pos + 4)?;
        *pos += 8;
        match (group, elem) {
            (0xFFFE, 0xE0DD) => return Ok(()),
            (0xFFFE, 0xE000) if len == UNDEFINED => walk(b, pos, explicit, depth + 1, true)?,
            (0xFFFE, 0xE000) => {
                let end = pos
                    .checked_add(len as usize)
                    .filter(|e| *e <= b.len())
                    .ok_or_else(|| format!("an item claims {len} bytes past the end"))?;
                let mut inner = *pos;
                walk(&b[..end], &mut inner, explicit, depth + 1, false)?;
                *pos = end;
            }
            _ => return Err(format!("expected an item, got ({group:04x},{elem:04x})")),
        }
    }
}

/// Parses a command set (always Implicit VR Little Endian).
pub fn parse_command(b: &[u8]) -> Result<Command, String> {
    check_dataset(b, false)?;
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj =
        InMemDicomObject::read_dataset_with_ts(b, &ts).map_err(|e| format!("command set: {e}"))?;
    let field = uint(&obj, tags::COMMAND_FIELD)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or("the command set has no Command Field (0000,0100)")?;
    let id_tag = if field & command::RESPONSE != 0 {
        tags::MESSAGE_ID_BEING_RESPONDED_TO
    } else {
        tags::MESSAGE_ID
    };
    Ok(Command {
        field,
        message_id: uint(&obj, id_tag)
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(0),
        has_dataset: uint(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|v| v != 0x0101),
        sop_class: text(&obj, tags::AFFECTED_SOP_CLASS_UID),
        sop_instance: text(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
        status: uint(&obj, tags::STATUS).and_then(|v| u16::try_from(v).ok()),
        completed: uint(&obj, tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
    })
}

/// The keys of a C-FIND/C-GET/C-MOVE identifier the audit keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    pub level: Option<String>,
    pub patient_id: Option<String>,
    pub accession: Option<String>,
    pub study_uids: Vec<String>,
    pub series_uids: Vec<String>,
    pub modality: Option<String>,
    pub study_date: Option<String>,
}

fn uids(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split('\\')
            .map(|u| u.trim_matches([' ', '\0']).to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

/// Parses an identifier in transfer syntax `ts` (Implicit or Explicit VR Little Endian; any
/// other is refused with an error, and the keys are not recorded).
pub fn parse_identifier(b: &[u8], ts: &str) -> Result<Keys, String> {
    let (explicit, syntax) = match ts {
        IMPLICIT_VR_LE => (
            false,
            dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        ),
        EXPLICIT_VR_LE => (
            true,
            dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        ),
        other => {
            return Err(format!(
                "identifiers in transfer syntax {other} are not read"
            ))
        }
    };
    check_dataset(b, explicit)?;
    let obj = InMemDicomObject::read_dataset_with_ts(b, &syntax)
        .map_err(|e| format!("identifier: {e}"))?;
    Ok(Keys {
        level: text(&obj, tags::QUERY_RETRIEVE_LEVEL),
        patient_id: text(&obj, tags::PATIENT_ID),
        accession: text(&obj, tags::ACCESSION_NUMBER),
        study_uids: uids(text(&obj, tags::STUDY_INSTANCE_UID)),
        series_uids: uids(text(&obj, tags::SERIES_INSTANCE_UID)),
        modality: text(&obj, tags::MODALITIES_IN_STUDY).or_else(|| text(&obj, tags::MODALITY)),
        study_date: text(&obj, tags::STUDY_DATE),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Implicit VR Little Endian element.
    pub(crate) fn implicit(out: &mut Vec<u8>, g: u16, e: u16, v: &[u8]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }

    /// An Explicit VR Little Endian element with a short-length VR.
    pub(crate) fn explicit(out: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], v: &[u8]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }

    /// A command set: field, message id, data set type, and extra (tag, value) pairs.
    pub(crate) fn command_set(
        field: u16,
        id: u16,
        dataset: bool,
        extra: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        let mut els: Vec<(u16, Vec<u8>)> = vec![
            (0x0100, field.to_le_bytes().to_vec()),
            (
                if field & 0x8000 != 0 { 0x0120 } else { 0x0110 },
                id.to_le_bytes().to_vec(),
            ),
            (
                0x0800,
                (if dataset { 0x0000u16 } else { 0x0101 })
                    .to_le_bytes()
                    .to_vec(),
            ),
        ];
        els.extend(extra.iter().map(|(e, v)| (*e, v.to_vec())));
        els.sort_by_key(|(e, _)| *e);
        for (e, v) in &els {
            implicit(&mut body, 0x0000, *e, v);
        }
        let mut out = Vec::new();
        implicit(&mut out, 0x0000, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn headers_are_bounded_per_pdu_type() {
        assert_eq!(
            parse_header(&[1, 0, 0, 0, 0, 200]),
            Ok(Header {
                pdu_type: 1,
                len: 200
            })
        );
        assert_eq!(
            parse_header(&[1, 0, 0, 1, 0, 1]),
            Err(Malformed::Length {
                pdu_type: 1,
                len: 65537
            })
        );
        assert_eq!(
            parse_header(&[4, 0, 0x01, 0, 0, 1]),
            Err(Malformed::Length {
                pdu_type: 4,
                len: 0x0100_0001
            })
        );
        assert!(parse_header(&[4, 0, 0x01, 0, 0, 0]).is_ok());
        assert_eq!(
            parse_header(&[5, 0, 0, 0, 0, 5]),
            Err(Malformed::Length {
                pdu_type: 5,
                len: 5
            })
        );
        assert_eq!(parse_header(b"GET / "), Err(Malformed::UnknownType(b'G')));
        assert_eq!(
            parse_header(&[0, 0, 0, 0, 0, 4]),
            Err(Malformed::UnknownType(0))
        );
    }

    #[test]
    fn the_rejection_and_the_abort_have_the_standard_layout() {
        // PS3.8 9.3.4: type 3, reserved, length 4, reserved, result, source, reason.
        assert_eq!(associate_rj(3), [3, 0, 0, 0, 0, 4, 0, 1, 1, 3]);
        assert_eq!(associate_rj(7), [3, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
        // PS3.8 9.3.8: type 7, reserved, length 4, two reserved, source, reason.
        assert_eq!(abort(), [7, 0, 0, 0, 0, 4, 0, 0, 2, 0]);
        // And dicom-ul reads them back as what they are.
        match parse_small(&associate_rj(3)).unwrap() {
            Pdu::AssociationRJ(rj) => assert_eq!(
                rj.source,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CallingAETitleNotRecognized
                )
            ),
            p => panic!("{p:?}"),
        }
    }

    /// An A-ASSOCIATE-RQ as dcmtk would send it.
    pub(crate) fn associate_rq(
        calling: &str,
        called: &str,
        contexts: &[(u8, &str, &str)],
    ) -> Vec<u8> {
        use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: called.into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, a, t)| PresentationContextProposed {
                    id: *id,
                    abstract_syntax: (*a).into(),
                    transfer_syntaxes: vec![(*t).into()],
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, &rq).unwrap();
        out
    }

    #[test]
    fn an_associate_rq_parses_and_its_truncations_do_not() {
        let rq = associate_rq(
            "VIEWER",
            "ORTHANC",
            &[(1, "1.2.840.10008.1.1", IMPLICIT_VR_LE)],
        );
        match parse_small(&rq).unwrap() {
            Pdu::AssociationRQ(r) => {
                assert_eq!(r.calling_ae_title, "VIEWER");
                assert_eq!(r.called_ae_title, "ORTHANC");
                assert_eq!(
                    r.presentation_contexts[0].abstract_syntax,
                    "1.2.840.10008.1.1"
                );
            }
            p => panic!("{p:?}"),
        }
        for cut in 0..rq.len() {
            assert!(parse_small(&rq[..cut]).is_err(), "a cut at {cut} parsed");
        }
    }

    #[test]
    fn command_sets_parse_and_bad_ones_are_errors() {
        let c = command_set(
            command::C_STORE_RQ,
            7,
            true,
            &[
                (0x0002, b"1.2.840.10008.5.1.4.1.1.7\0"),
                (0x1000, b"1.2.3.4 "),
            ],
        );
        let p = parse_command(&c).unwrap();
        assert_eq!(p.field, command::C_STORE_RQ);
        assert_eq!(p.message_id, 7);
        assert!(p.has_dataset);
        assert_eq!(p.sop_class.as_deref(), Some("1.2.840.10008.5.1.4.1.1.7"));
        assert_eq!(p.sop_instance.as_deref(), Some("1.2.3.4"));
        let r = command_set(
            command::C_MOVE_RSP,
            7,
            false,
            &[
                (0x0900, &0u16.to_le_bytes()),
                (0x1021, &12u16.to_le_bytes()),
            ],
        );
        let p = parse_command(&r).unwrap();
        assert_eq!(
            (p.message_id, p.status, p.completed),
            (7, Some(0), Some(12))
        );
        assert!(!p.has_dataset);
        // A length past the end is caught before dicom-object sees it.
        let mut bad = c.clone();
        bad[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(parse_command(&bad).unwrap_err().contains("past the end"));
        assert!(parse_command(&[]).unwrap_err().contains("Command Field"));
        assert!(parse_command(&c[..c.len() - 3]).is_err());
    }

    #[test]
    fn identifiers_parse_in_implicit_and_explicit_vr() {
        let mut imp = Vec::new();
        implicit(&mut imp, 0x0008, 0x0020, b"20261125");
        implicit(&mut imp, 0x0008, 0x0050, b"ACC1");
        implicit(&mut imp, 0x0008, 0x0052, b"STUDY ");
        implicit(&mut imp, 0x0008, 0x0061, b"CT");
        implicit(&mut imp, 0x0010, 0x0020, b"PID-1 ");
        implicit(&mut imp, 0x0020, 0x000d, b"1.2.3\\1.2.4\0");
        let k = parse_identifier(&imp, IMPLICIT_VR_LE).unwrap();
        assert_eq!(k.level.as_deref(), Some("STUDY"));
        assert_eq!(k.patient_id.as_deref(), Some("PID-1"));
        assert_eq!(k.accession.as_deref(), Some("ACC1"));
        assert_eq!(k.modality.as_deref(), Some("CT"));
        assert_eq!(k.study_date.as_deref(), Some("20261125"));
        assert_eq!(k.study_uids, ["1.2.3", "1.2.4"]);

        let mut exp = Vec::new();
        explicit(&mut exp, 0x0008, 0x0052, b"CS", b"SERIES");
        explicit(&mut exp, 0x0008, 0x0060, b"CS", b"MR");
        // An empty sequence of undefined length, as findscu may send for a return key.
        exp.extend_from_slice(&[
            0x08, 0, 0x10, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        exp.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        explicit(&mut exp, 0x0020, 0x000e, b"UI", b"1.2.9\0");
        let k = parse_identifier(&exp, EXPLICIT_VR_LE).unwrap();
        assert_eq!(k.level.as_deref(), Some("SERIES"));
        assert_eq!(k.modality.as_deref(), Some("MR"));
        assert_eq!(k.series_uids, ["1.2.9"]);
        assert_eq!(k.patient_id, None);
        // The same bytes read as implicit VR make no sense: an error, not a panic.
        assert!(parse_identifier(&exp, IMPLICIT_VR_LE).is_err());
        assert!(parse_identifier(&imp, "1.2.840.10008.1.2.2")
            .unwrap_err()
            .contains("not read"));
    }

    #[test]
    fn hostile_data_sets_are_refused_without_allocating_what_they_claim() {
        // Nested undefined-length sequences, deeper than the bound.
        let mut deep = Vec::new();
        for _ in 0..20 {
            deep.extend_from_slice(&[0x08, 0, 0x10, 0x11, 0xff, 0xff, 0xff, 0xff]);
            deep.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        }
        assert!(check_dataset(&deep, false).unwrap_err().contains("deep"));
        // A huge item length inside a sequence.
        let mut big = vec![0x08, 0, 0x10, 0x11, 0xff, 0xff, 0xff, 0xff];
        big.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xf0, 0xff, 0xff, 0xff]);
        assert!(check_dataset(&big, false)
            .unwrap_err()
            .contains("past the end"));
        // Random bytes: never a panic.
        let mut x = 0x1234_5678_9abc_def0u64;
        for n in 0..2000 {
            let len = n % 97;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_identifier(&bytes, IMPLICIT_VR_LE);
            let _ = parse_identifier(&bytes, EXPLICIT_VR_LE);
            let _ = parse_command(&bytes);
            let mut pdu = vec![(n % 8) as u8, 0, 0, 0, 0, len as u8];
            pdu.extend_from_slice(&bytes);
            let _ = parse_small(&pdu);
        }
    }
}
