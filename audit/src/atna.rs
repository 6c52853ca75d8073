//! IHE ATNA output: audit events as DICOM PS3.15 Annex A.5 audit messages (`AuditMessage` XML),
//! and the mapping from Postern's events to the DICOM audit vocabulary that the FHIR output
//! ([`crate::fhir`]) shares.
//!
//! ```text
//!  Event ──map()──▶ Mapped (EventID, EventTypeCodes, participants, objects) ──┬─ to_xml()   ATNA
//!                                                                              └─ fhir::...   FHIR
//! ```
//!
//! Which event becomes which message (A.5.3) is in `docs/audit.md`, "IHE ATNA and FHIR". Events
//! without a mapping (`dicom.association`, `token.minted`, checkpoints, ...) give `None`.
//!
//! Every string taken from an event is cut to a bound ([`MAX_VALUE`], [`MAX_TEXT`]) and has its
//! control characters replaced before it is written; the XML writer escapes every attribute and
//! text, so nothing in a log line can change the structure of a message.

use std::fmt::Write as _;

use base64::Engine as _;
use postern_proto::dicom::DicomRecord;

use crate::event::{Event, EventType};

/// Longest identifier, name or address taken from an event into a message (bytes).
pub const MAX_VALUE: usize = 256;
/// Longest free text (an outcome description, a query rendering) taken into a message.
pub const MAX_TEXT: usize = 1024;

/// A coded value: `csd-code`, `codeSystemName`, `originalText` (DICOM "Code Meaning").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The code (`110112`).
    pub code: &'static str,
    /// Its coding scheme as ATNA names it (`DCM`, `RFC-3881`, ...).
    pub scheme: &'static str,
    /// Its meaning (`Query`).
    pub meaning: &'static str,
}

const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        scheme: "DCM",
        meaning,
    }
}

const fn rfc3881(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        scheme: "RFC-3881",
        meaning,
    }
}

/// DICOM event IDs (CID 400) and event type codes (CID 401), role codes (CID 402) and
/// participant object ID types (CID 404) used by the mapping.
pub mod codes {
    use super::{dcm, rfc3881, Code};
    /// 110100 Application Activity.
    pub const APPLICATION_ACTIVITY: Code = dcm("110100", "Application Activity");
    /// 110101 Audit Log Used.
    pub const AUDIT_LOG_USED: Code = dcm("110101", "Audit Log Used");
    /// 110103 DICOM Instances Accessed.
    pub const INSTANCES_ACCESSED: Code = dcm("110103", "DICOM Instances Accessed");
    /// 110104 DICOM Instances Transferred.
    pub const INSTANCES_TRANSFERRED: Code = dcm("110104", "DICOM Instances Transferred");
    /// 110108 Network Entry.
    pub const NETWORK_ENTRY: Code = dcm("110108", "Network Entry");
    /// 110112 Query.
    pub const QUERY: Code = dcm("110112", "Query");
    /// 110113 Security Alert.
    pub const SECURITY_ALERT: Code = dcm("110113", "Security Alert");
    /// 110114 User Authentication.
    pub const USER_AUTHENTICATION: Code = dcm("110114", "User Authentication");

    /// 110120 Application Start.
    pub const APPLICATION_START: Code = dcm("110120", "Application Start");
    /// 110121 Application Stop.
    pub const APPLICATION_STOP: Code = dcm("110121", "Application Stop");
    /// 110122 Login.
    pub const LOGIN: Code = dcm("110122", "Login");
    /// 110123 Logout.
    pub const LOGOUT: Code = dcm("110123", "Logout");
    /// 110124 Attach.
    pub const ATTACH: Code = dcm("110124", "Attach");
    /// 110125 Detach.
    pub const DETACH: Code = dcm("110125", "Detach");
    /// 110126 Node Authentication.
    pub const NODE_AUTHENTICATION: Code = dcm("110126", "Node Authentication");
    /// 110127 Emergency Override Started.
    pub const EMERGENCY_OVERRIDE: Code = dcm("110127", "Emergency Override Started");
    /// 110129 Security Configuration.
    pub const SECURITY_CONFIGURATION: Code = dcm("110129", "Security Configuration");
    /// 110132 Use of Restricted Function.
    pub const RESTRICTED_FUNCTION: Code = dcm("110132", "Use of Restricted Function");
    /// 110133 Audit Recording Stopped.
    pub const AUDIT_RECORDING_STOPPED: Code = dcm("110133", "Audit Recording Stopped");
    /// 110137 User Security Attributes Changed.
    pub const USER_SECURITY_ATTRIBUTES_CHANGED: Code =
        dcm("110137", "User security Attributes Changed");

    /// 110150 Application (role).
    pub const ROLE_APPLICATION: Code = dcm("110150", "Application");
    /// 110152 Destination Role ID.
    pub const ROLE_DESTINATION: Code = dcm("110152", "Destination Role ID");
    /// 110153 Source Role ID.
    pub const ROLE_SOURCE: Code = dcm("110153", "Source Role ID");

    /// 110180 Study Instance UID.
    pub const STUDY_INSTANCE_UID: Code = dcm("110180", "Study Instance UID");
    /// 110181 SOP Class UID.
    pub const SOP_CLASS_UID: Code = dcm("110181", "SOP Class UID");
    /// 110182 Node ID.
    pub const NODE_ID: Code = dcm("110182", "Node ID");
    /// RFC 3881 participant object ID type 2, Patient Number.
    pub const PATIENT_NUMBER: Code = rfc3881("2", "Patient Number");
    /// RFC 3881 participant object ID type 11, User Identifier.
    pub const USER_IDENTIFIER: Code = rfc3881("11", "User Identifier");
    /// RFC 3881 participant object ID type 12, URI.
    pub const URI: Code = rfc3881("12", "URI");
    /// A code of Postern's own for a broken audit chain: DICOM has none for tampering.
    pub const AUDIT_CHAIN_BROKEN: Code = Code {
        code: "audit-chain-broken",
        scheme: "urn:postern:audit",
        meaning: "Audit log integrity check failed",
    };
}

/// `EventOutcomeIndicator`: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: nominal success.
    Success,
    /// 4: minor failure (a refusal, a failed sign-in).
    Minor,
    /// 8: serious failure (lost audit events, a superseded certificate in use).
    Serious,
}

impl Outcome {
    /// The indicator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Minor => "4",
            Outcome::Serious => "8",
        }
    }
}

/// What FHIR resource an object is, for `entity.what` (`Patient`, `ImagingStudy`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectClass {
    /// A patient (by Patient ID).
    Patient,
    /// A DICOM study (by Study Instance UID).
    Study,
    /// A SOP class (the query's information model).
    SopClass,
    /// A node: endpoint, connector, device.
    Node,
    /// A user whose credentials changed.
    User,
    /// The audit log itself.
    AuditLog,
}

/// An `ActiveParticipant` (FHIR `agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// `UserID`.
    pub user_id: String,
    /// `AlternativeUserID` (`AETITLES=RAD_JONES` where DICOM applies).
    pub alt_user_id: Option<String>,
    /// `UserName`: display name, with the email in angle brackets when known.
    pub user_name: Option<String>,
    /// `UserIsRequestor`.
    pub requestor: bool,
    /// `NetworkAccessPointID` and its type (`1` machine name, `2` IP address).
    pub network: Option<(String, &'static str)>,
    /// `RoleIDCode`s.
    pub roles: Vec<Code>,
    /// A person (true) or a system (false): the FHIR agent type.
    pub person: bool,
}

/// A `ParticipantObjectIdentification` (FHIR `entity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// `ParticipantObjectID`.
    pub id: String,
    /// `ParticipantObjectIDTypeCode`.
    pub id_type: Code,
    /// `ParticipantObjectTypeCode`: 1 person, 2 system object.
    pub type_code: &'static str,
    /// `ParticipantObjectTypeCodeRole`: 1 patient, 3 report, 4 resource, 11 security user
    /// entity, 13 security resource, 24 query.
    pub role: &'static str,
    /// `ParticipantObjectName` (the schema wants a name or a query; empty when unknown).
    pub name: String,
    /// `ParticipantObjectQuery` (written base64), instead of a name.
    pub query: Option<String>,
    /// `ParticipantObjectDetail`s: type and value (written base64).
    pub details: Vec<(String, String)>,
    /// `Accession` numbers of the description.
    pub accessions: Vec<String>,
    /// `SOPClass` of the description: number of instances and the instance UIDs known.
    pub instances: Option<(u64, Vec<String>)>,
    /// What FHIR resource this is.
    pub class: ObjectClass,
}

/// One event in the DICOM audit vocabulary: what both the ATNA and the FHIR output write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The Postern event type it came from.
    pub kind: String,
    /// `seq` of the event, when it came from a log.
    pub seq: Option<u64>,
    /// `EventID`.
    pub event_id: Code,
    /// `EventTypeCode`s.
    pub type_codes: Vec<Code>,
    /// `EventActionCode`: C, R, U, D, E.
    pub action: &'static str,
    /// `EventDateTime` (RFC 3339, UTC).
    pub when: String,
    /// `EventOutcomeIndicator`.
    pub outcome: Outcome,
    /// `EventOutcomeDescription`.
    pub outcome_desc: Option<String>,
    /// A break-glass justification (FHIR `purposeOfEvent`).
    pub justification: Option<String>,
    /// HTTP method of a `web.request` (FHIR RESTful interaction).
    pub http_method: Option<String>,
    /// `ActiveParticipant`s.
    pub participants: Vec<Participant>,
    /// `AuditSourceID`: the gateway node.
    pub source_id: String,
    /// `AuditEnterpriseSiteID`, when known.
    pub site: Option<String>,
    /// `ParticipantObjectIdentification`s.
    pub objects: Vec<Object>,
}

/// `s` cut to `max` bytes at a character boundary, control characters replaced by spaces.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn val(s: &str) -> String {
    clean(s, MAX_VALUE)
}

fn opt_val(s: Option<&str>) -> Option<String> {
    s.map(str::trim).filter(|s| !s.is_empty()).map(val)
}

/// The host part of `ip:port` / `[v6]:port` / `host`, and whether it is an IP address.
fn network_of(address: &str) -> Option<(String, &'static str)> {
    let address = address.trim();
    if address.is_empty() {
        return None;
    }
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return Some((sa.ip().to_string(), "2"));
    }
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Some((ip.to_string(), "2"));
    }
    let host = match address.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => address,
    };
    Some((val(host), "1"))
}

/// The user of an event as the requesting participant, if the event names one.
fn user_participant(
    e: &Event,
    dicom: Option<&DicomRecord>,
    roles: Vec<Code>,
) -> Option<Participant> {
    let user_id = opt_val(e.user.as_deref())
        .or_else(|| opt_val(e.user_email.as_deref()))
        .or_else(|| opt_val(e.user_name.as_deref()))?;
    let user_name = match (
        opt_val(e.user_name.as_deref()),
        opt_val(e.user_email.as_deref()),
    ) {
        (Some(n), Some(m)) => Some(val(&format!("{n} <{m}>"))),
        (Some(n), None) => Some(n),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    };
    let alt_user_id = dicom
        .map(|d| d.calling_ae.trim())
        .filter(|ae| !ae.is_empty())
        .map(|ae| format!("AETITLES={}", clean(ae, 64)));
    Some(Participant {
        user_id,
        alt_user_id,
        user_name,
        requestor: true,
        network: e.source.as_deref().and_then(network_of),
        roles,
        person: true,
    })
}

/// The gateway node as a participant (never the requestor).
fn gateway_participant(source_id: &str) -> Participant {
    Participant {
        user_id: source_id.to_owned(),
        alt_user_id: None,
        user_name: Some("Postern gateway".to_owned()),
        requestor: false,
        network: None,
        roles: vec![codes::ROLE_APPLICATION],
        person: false,
    }
}

/// The connector that carried the session, when named.
fn connector_participant(e: &Event) -> Option<Participant> {
    let c = e.connector.as_ref()?;
    let id = opt_val(Some(&c.id))?;
    let site = opt_val(Some(&c.site));
    Some(Participant {
        user_id: format!("connector:{id}"),
        alt_user_id: None,
        user_name: Some(match site {
            Some(s) => val(&format!("Postern connector {id} at {s}")),
            None => val(&format!("Postern connector {id}")),
        }),
        requestor: false,
        network: None,
        roles: vec![codes::ROLE_APPLICATION],
        person: false,
    })
}

/// The PACS (the endpoint) of a DICOM event.
fn pacs_participant(e: &Event, d: &DicomRecord, role: Code) -> Participant {
    let endpoint = e.endpoint.as_ref();
    let called = d.called_ae.trim();
    let user_id = if !called.is_empty() {
        clean(called, 64)
    } else {
        endpoint
            .map(|ep| val(&ep.name))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "PACS".to_owned())
    };
    Participant {
        user_id,
        alt_user_id: (!called.is_empty()).then(|| format!("AETITLES={}", clean(called, 64))),
        user_name: endpoint.map(|ep| val(&ep.name)).filter(|n| !n.is_empty()),
        requestor: false,
        network: endpoint.map(|ep| ep.host.as_str()).and_then(network_of),
        roles: vec![role],
        person: false,
    }
}

fn patient_object(id: &str) -> Object {
    Object {
        id: val(id),
        id_type: codes::PATIENT_NUMBER,
        type_code: "1",
        role: "1",
        name: String::new(),
        query: None,
        details: Vec::new(),
        accessions: Vec::new(),
        instances: None,
        class: ObjectClass::Patient,
    }
}

fn study_object(uid: &str) -> Object {
    Object {
        id: val(uid),
        id_type: codes::STUDY_INSTANCE_UID,
        type_code: "2",
        role: "3",
        name: String::new(),
        query: None,
        details: Vec::new(),
        accessions: Vec::new(),
        instances: None,
        class: ObjectClass::Study,
    }
}

fn node_object(id: String, name: String) -> Object {
    Object {
        id,
        id_type: codes::NODE_ID,
        type_code: "2",
        role: "4",
        name,
        query: None,
        details: Vec::new(),
        accessions: Vec::new(),
        instances: None,
        class: ObjectClass::Node,
    }
}

/// The endpoint of a session event as a participant object.
fn endpoint_object(e: &Event) -> Option<Object> {
    let ep = e.endpoint.as_ref()?;
    let name = val(&ep.name);
    if name.is_empty() {
        return None;
    }
    let mut o = node_object(
        format!("endpoint:{name}"),
        val(&format!("{} ({}:{})", ep.name, ep.host, ep.port)),
    );
    if !ep.protocol.is_empty() {
        o.details.push(("protocol".to_owned(), val(&ep.protocol)));
    }
    if let Some(rule) = e.decision.as_ref().and_then(|d| d.rule.as_deref()) {
        o.details.push(("rule".to_owned(), val(rule)));
    }
    Some(o)
}

/// The query keys of a C-FIND as text, one `(gggg,eeee) Name=value` per line.
pub fn query_keys(d: &DicomRecord) -> String {
    let mut out = String::new();
    let mut key = |tag: &str, name: &str, value: &str| {
        let _ = writeln!(out, "({tag}) {name}={}", clean(value, 128));
    };
    if let Some(v) = &d.level {
        key("0008,0052", "QueryRetrieveLevel", v);
    }
    if let Some(v) = &d.patient_id {
        key("0010,0020", "PatientID", v);
    }
    if let Some(v) = &d.accession {
        key("0008,0050", "AccessionNumber", v);
    }
    if !d.study_uids.is_empty() {
        key("0020,000D", "StudyInstanceUID", &d.study_uids.join("\\"));
    }
    if !d.series_uids.is_empty() {
        key("0020,000E", "SeriesInstanceUID", &d.series_uids.join("\\"));
    }
    if let Some(v) = &d.modality {
        key("0008,0061", "ModalitiesInStudy", v);
    }
    if let Some(v) = &d.study_date {
        key("0008,0020", "StudyDate", v);
    }
    clean_text(&out)
}

fn clean_text(s: &str) -> String {
    // Keep newlines of a multi-line rendering, bound the whole.
    let mut out = String::with_capacity(s.len().min(MAX_TEXT));
    for c in s.chars() {
        let c = if c.is_control() && c != '\n' { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

fn dimse_outcome(d: &DicomRecord) -> (Outcome, Option<String>) {
    match d.status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("0000") => (Outcome::Success, None),
        Some(s) => (
            Outcome::Minor,
            Some(format!("DIMSE status {}", clean(s, 8))),
        ),
    }
}

fn sop_class_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.5.1.4.1.2.1.1" => "Patient Root Query/Retrieve Information Model - FIND",
        "1.2.840.10008.5.1.4.1.2.1.2" => "Patient Root Query/Retrieve Information Model - MOVE",
        "1.2.840.10008.5.1.4.1.2.1.3" => "Patient Root Query/Retrieve Information Model - GET",
        "1.2.840.10008.5.1.4.1.2.2.1" => "Study Root Query/Retrieve Information Model - FIND",
        "1.2.840.10008.5.1.4.1.2.2.2" => "Study Root Query/Retrieve Information Model - MOVE",
        "1.2.840.10008.5.1.4.1.2.2.3" => "Study Root Query/Retrieve Information Model - GET",
        "1.2.840.10008.1.1" => "Verification",
        _ => "",
    }
}

/// Studies (with the instances moved, when one study), and the patient, of a transfer.
fn transfer_objects(d: &DicomRecord) -> Vec<Object> {
    let mut objects = Vec::new();
    let single = d.study_uids.len() == 1;
    for uid in &d.study_uids {
        let mut o = study_object(uid);
        if let Some(a) = &d.accession {
            o.accessions.push(val(a));
        }
        if single {
            let n = d.instances.unwrap_or(d.instance_uids.len() as u64);
            o.instances = Some((n, d.instance_uids.iter().map(|u| val(u)).collect()));
        }
        if !d.series_uids.is_empty() {
            o.details.push((
                "SeriesInstanceUID".to_owned(),
                clean_text(&d.series_uids.join("\\")),
            ));
        }
        objects.push(o);
    }
    if d.study_uids.is_empty() {
        // No study named (a patient- or series-level retrieve): the count still goes out.
        if let Some(n) = d.instances.filter(|n| *n > 0) {
            let mut o = study_object("unknown");
            o.name = "study not named in the request".to_owned();
            o.instances = Some((n, d.instance_uids.iter().map(|u| val(u)).collect()));
            objects.push(o);
        }
    }
    if let Some(pid) = d.patient_id.as_deref().filter(|p| !p.trim().is_empty()) {
        objects.push(patient_object(pid));
    }
    objects
}

fn user_object(e: &Event) -> Option<Object> {
    let id = opt_val(e.user.as_deref())?;
    Some(Object {
        id,
        id_type: codes::USER_IDENTIFIER,
        type_code: "1",
        role: "11",
        name: opt_val(e.user_name.as_deref()).unwrap_or_default(),
        query: None,
        details: Vec::new(),
        accessions: Vec::new(),
        instances: None,
        class: ObjectClass::User,
    })
}

/// Maps one event; `fallback_node` names the gateway when the event does not. `None` for
/// types without a mapping, and for an event whose time is not an RFC 3339 UTC time.
pub fn map(e: &Event, fallback_node: &str) -> Option<Mapped> {
    let kind = e.event_type()?;
    if humantime::parse_rfc3339_weak(&e.ts).is_err() || !e.ts.ends_with('Z') {
        return None;
    }
    let source_id = opt_val(e.gateway.as_deref()).unwrap_or_else(|| val(fallback_node));
    let dicom = e.dicom.as_ref();
    let mut m = Mapped {
        kind: val(&e.kind),
        seq: e.seq,
        event_id: codes::SECURITY_ALERT,
        type_codes: Vec::new(),
        action: "E",
        when: val(&e.ts),
        outcome: Outcome::Success,
        outcome_desc: None,
        justification: e.justification.as_deref().map(|j| clean(j, MAX_TEXT)),
        http_method: None,
        participants: Vec::new(),
        source_id: source_id.clone(),
        site: None,
        objects: Vec::new(),
    };
    let reason = || {
        e.decision
            .as_ref()
            .map(|d| d.reason.as_str())
            .filter(|r| !r.is_empty())
            .or(e.detail.as_deref())
            .or(e.close_reason.as_deref())
            .map(|r| clean(r, MAX_TEXT))
    };
    let user = |roles: Vec<Code>| user_participant(e, dicom, roles);
    use EventType as T;
    match kind {
        T::AuthLogin | T::AuthLogout | T::AuthFailed | T::DeviceAssertionFailed => {
            m.event_id = codes::USER_AUTHENTICATION;
            m.type_codes = vec![if kind == T::AuthLogout {
                codes::LOGOUT
            } else {
                codes::LOGIN
            }];
            if matches!(kind, T::AuthFailed | T::DeviceAssertionFailed) {
                m.outcome = Outcome::Minor;
                m.outcome_desc = reason();
            }
            // A failed sign-in may name no one: the address is still the participant.
            let p = user(Vec::new()).or_else(|| address_participant(e, "unknown user from"))?;
            m.participants.push(p);
            m.participants.push(gateway_participant(&source_id));
        }
        T::SessionStart | T::SessionEnd | T::SessionTerminated => {
            m.event_id = codes::NETWORK_ENTRY;
            m.type_codes = vec![if kind == T::SessionStart {
                codes::ATTACH
            } else {
                codes::DETACH
            }];
            if kind == T::SessionStart && m.justification.is_some() {
                m.type_codes.push(codes::EMERGENCY_OVERRIDE);
            }
            if kind != T::SessionStart {
                m.outcome_desc = e
                    .close_reason
                    .as_deref()
                    .map(|r| format!("closed: {}", val(r)));
            }
            m.participants.push(user(Vec::new())?);
            m.participants.push(gateway_participant(&source_id));
            m.participants.extend(connector_participant(e));
            m.objects.extend(endpoint_object(e));
        }
        T::SessionDenied | T::AccessRefusedUnauthenticated => {
            m.type_codes = vec![codes::RESTRICTED_FUNCTION];
            m.outcome = Outcome::Minor;
            m.outcome_desc = match &e.refused {
                Some(r) => Some(val(&format!(
                    "{} request(s) refused ({}) from {} to {}",
                    r.count, r.reason, r.first, r.last
                ))),
                None => reason(),
            };
            let p =
                user(Vec::new()).or_else(|| address_participant(e, "unauthenticated client"))?;
            m.participants.push(p);
            m.participants.push(gateway_participant(&source_id));
            m.objects.extend(endpoint_object(e));
        }
        T::DicomQuery => {
            let d = dicom?;
            m.event_id = codes::QUERY;
            m.action = "E";
            (m.outcome, m.outcome_desc) = dimse_outcome(d);
            m.participants.push(user(vec![codes::ROLE_SOURCE])?);
            m.participants
                .push(pacs_participant(e, d, codes::ROLE_DESTINATION));
            m.participants.extend(connector_participant(e));
            let sop = d.sop_class.as_deref().map(val).unwrap_or_default();
            let mut q = Object {
                id: if sop.is_empty() {
                    "1.2.840.10008.5.1.4.1.2.2.1".to_owned()
                } else {
                    sop.clone()
                },
                id_type: codes::SOP_CLASS_UID,
                type_code: "2",
                role: "3",
                name: String::new(),
                query: Some(query_keys(d)),
                details: Vec::new(),
                accessions: Vec::new(),
                instances: None,
                class: ObjectClass::SopClass,
            };
            if let Some(n) = d.matches {
                q.details.push(("Matches".to_owned(), n.to_string()));
            }
            m.objects.push(q);
            if let Some(pid) = d.patient_id.as_deref().filter(|p| !p.trim().is_empty()) {
                m.objects.push(patient_object(pid));
            }
        }
        T::DicomRetrieve | T::DicomStore => {
            let d = dicom?;
            m.event_id = codes::INSTANCES_TRANSFERRED;
            let store = kind == T::DicomStore;
            // Retrieve: the PACS is the source and the clinician's side receives (Read); store:
            // the clinician's side sends and the PACS creates.
            m.action = if store { "C" } else { "R" };
            (m.outcome, m.outcome_desc) = dimse_outcome(d);
            let (user_role, pacs_role) = if store {
                (codes::ROLE_SOURCE, codes::ROLE_DESTINATION)
            } else {
                (codes::ROLE_DESTINATION, codes::ROLE_SOURCE)
            };
            m.participants.push(user(vec![user_role])?);
            m.participants.push(pacs_participant(e, d, pacs_role));
            m.participants.extend(connector_participant(e));
            m.objects = transfer_objects(d);
        }
        T::DicomRefused => {
            let d = dicom?;
            m.type_codes = vec![match d.refusal.as_deref() {
                Some("calling_ae_not_allowed") | Some("called_ae_not_recognized") => {
                    codes::NODE_AUTHENTICATION
                }
                _ => codes::RESTRICTED_FUNCTION,
            }];
            m.outcome = Outcome::Minor;
            let mut desc = Vec::new();
            for s in [&d.refusal, &d.reason, &d.answer].into_iter().flatten() {
                desc.push(s.as_str());
            }
            m.outcome_desc = (!desc.is_empty()).then(|| clean(&desc.join(": "), MAX_TEXT));
            m.participants.push(user(vec![codes::ROLE_SOURCE])?);
            m.participants
                .push(pacs_participant(e, d, codes::ROLE_DESTINATION));
            m.participants.extend(connector_participant(e));
            m.objects.extend(endpoint_object(e));
        }
        T::WebRequest => {
            let http = e.http.as_ref()?;
            let objects = e.objects.as_deref().unwrap_or_default();
            let studies: Vec<&str> = objects
                .iter()
                .filter(|o| o.kind == "study")
                .map(|o| o.id.as_str())
                .collect();
            if studies.is_empty() {
                return None; // a page or a script, not a clinical object
            }
            m.event_id = codes::INSTANCES_ACCESSED;
            m.action = match http.method.as_str() {
                "POST" => "C",
                "PUT" | "PATCH" => "U",
                "DELETE" => "D",
                _ => "R",
            };
            m.http_method = Some(clean(&http.method, 16));
            if http.status >= 400 {
                m.outcome = Outcome::Minor;
                m.outcome_desc = Some(format!("HTTP {}", http.status));
            }
            m.participants.push(user(Vec::new())?);
            m.participants.push(gateway_participant(&source_id));
            for s in studies {
                let mut o = study_object(s);
                o.details
                    .push(("path".to_owned(), clean(&http.path, MAX_TEXT)));
                m.objects.push(o);
            }
        }
        T::TokenRevoked | T::DeviceRevoked | T::DeviceRegistered | T::DeviceApproved => {
            m.type_codes = vec![codes::USER_SECURITY_ATTRIBUTES_CHANGED];
            m.action = if kind == T::DeviceRegistered {
                "C"
            } else {
                "U"
            };
            m.outcome_desc = opt_val(e.detail.as_deref());
            m.participants.push(gateway_participant(&source_id));
            m.participants[0].requestor = true;
            m.objects.extend(user_object(e));
            if let Some(d) = &e.device {
                let name = d.name.as_deref().map(val).unwrap_or_default();
                let mut o = node_object(format!("device:{}", val(&d.id)), name);
                o.role = "13";
                m.objects.push(o);
            }
        }
        T::ConnectorRevoked | T::ConnectorRefused | T::ConnectorRenewalRefused => {
            m.type_codes = vec![if kind == T::ConnectorRevoked {
                codes::SECURITY_CONFIGURATION
            } else {
                codes::NODE_AUTHENTICATION
            }];
            m.action = if kind == T::ConnectorRevoked {
                "U"
            } else {
                "E"
            };
            m.outcome = match kind {
                T::ConnectorRevoked => Outcome::Success,
                T::ConnectorRefused => Outcome::Minor,
                _ => Outcome::Serious,
            };
            m.outcome_desc = opt_val(e.detail.as_deref());
            let mut g = gateway_participant(&source_id);
            g.requestor = true;
            m.participants.push(g);
            if let Some(c) = &e.connector {
                let mut o = node_object(
                    format!("connector:{}", val(&c.id)),
                    val(&format!("connector {} at {}", c.id, c.site)),
                );
                o.role = "13";
                if let Some(n) = e.source.as_deref().and_then(network_of) {
                    o.details.push(("address".to_owned(), n.0));
                }
                m.objects.push(o);
            }
        }
        T::PolicyReloaded | T::PolicyRejected => {
            m.type_codes = vec![codes::SECURITY_CONFIGURATION];
            m.action = "U";
            if kind == T::PolicyRejected {
                m.outcome = Outcome::Minor;
            }
            m.outcome_desc = opt_val(e.detail.as_deref());
            let mut g = gateway_participant(&source_id);
            g.requestor = true;
            m.participants.push(g);
        }
        T::AdminCommand => {
            m.type_codes = vec![codes::RESTRICTED_FUNCTION];
            m.outcome_desc = e.detail.as_deref().map(|d| clean(d, MAX_TEXT));
            m.participants.push(user(Vec::new())?);
            m.participants.push(gateway_participant(&source_id));
        }
        T::AuditTruncationDetected => {
            m.type_codes = vec![codes::AUDIT_RECORDING_STOPPED];
            m.outcome = Outcome::Serious;
            m.outcome_desc = opt_val(e.detail.as_deref()).or_else(|| {
                Some("the audit log was found shorter than its last checkpoint".to_owned())
            });
            let mut g = gateway_participant(&source_id);
            g.requestor = true;
            m.participants.push(g);
        }
        T::GatewayStarted | T::GatewayStopped => {
            m.event_id = codes::APPLICATION_ACTIVITY;
            m.type_codes = vec![if kind == T::GatewayStarted {
                codes::APPLICATION_START
            } else {
                codes::APPLICATION_STOP
            }];
            // Who started or stopped the service is not known (systemd, an operator): the
            // gateway stands for itself.
            let mut g = gateway_participant(&source_id);
            g.requestor = true;
            m.participants.push(g);
        }
        _ => return None,
    }
    Some(m)
}

/// One `Audit Log Used` (110101) message: `who` read the logs in `logs` (directories) with the
/// filter `what` at `when`.
pub fn audit_log_used(who: &str, logs: &[String], what: &str, when: &str, node: &str) -> Mapped {
    Mapped {
        kind: "export".to_owned(),
        seq: None,
        event_id: codes::AUDIT_LOG_USED,
        type_codes: Vec::new(),
        action: "R",
        when: val(when),
        outcome: Outcome::Success,
        outcome_desc: None,
        justification: None,
        http_method: None,
        participants: vec![
            Participant {
                user_id: val(who),
                alt_user_id: None,
                user_name: None,
                requestor: true,
                network: None,
                roles: Vec::new(),
                person: true,
            },
            audit_tool("postern-audit export", false),
        ],
        source_id: val(node),
        site: None,
        objects: logs
            .iter()
            .map(|dir| Object {
                details: vec![("filter".to_owned(), clean(what, MAX_TEXT))],
                ..audit_log(dir)
            })
            .collect(),
    }
}

/// A Security Alert for a log that failed verification: `problems` found, `first` of them.
pub fn integrity_alert(dir: &str, node: &str, when: &str, problems: u64, first: &str) -> Mapped {
    Mapped {
        kind: "verify".to_owned(),
        seq: None,
        event_id: codes::SECURITY_ALERT,
        type_codes: vec![codes::AUDIT_CHAIN_BROKEN],
        action: "E",
        when: val(when),
        outcome: Outcome::Serious,
        outcome_desc: Some(clean(
            &format!("{problems} problem(s) in the audit log; first: {first}"),
            MAX_TEXT,
        )),
        justification: None,
        http_method: None,
        participants: vec![audit_tool("postern-audit verify", true)],
        source_id: val(node),
        site: None,
        objects: vec![audit_log(dir)],
    }
}

/// `postern-audit` itself as a participant: the application, named by its `command`.
fn audit_tool(command: &str, requestor: bool) -> Participant {
    Participant {
        user_id: "postern-audit".to_owned(),
        alt_user_id: None,
        user_name: Some(command.to_owned()),
        requestor,
        network: None,
        roles: vec![codes::ROLE_APPLICATION],
        person: false,
    }
}

/// The audit log in `dir` as the object of an event (a system object, role "security
/// resource").
fn audit_log(dir: &str) -> Object {
    Object {
        id: val(&format!("file://{dir}")),
        id_type: codes::URI,
        type_code: "2",
        role: "13",
        name: "Postern audit log".to_owned(),
        query: None,
        details: Vec::new(),
        accessions: Vec::new(),
        instances: None,
        class: ObjectClass::AuditLog,
    }
}

/// The requestor of an event that names no user: `who` and the client's address (a failed
/// sign-in, an unauthenticated request).
fn address_participant(e: &Event, who: &str) -> Option<Participant> {
    let n = e.source.as_deref().and_then(network_of)?;
    Some(Participant {
        user_id: format!("{who} {}", n.0),
        alt_user_id: None,
        user_name: None,
        requestor: true,
        network: Some(n),
        roles: Vec::new(),
        person: true,
    })
}

/// XML-escapes `s` for an attribute value or text (control characters, which XML 1.0 cannot
/// carry even escaped, became spaces in [`clean`]; they are dropped here as well).
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// A tiny XML writer: elements with attributes, text, every value escaped.
struct Xml {
    out: String,
}

impl Xml {
    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape(v, &mut self.out);
            self.out.push('"');
        }
    }
    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start(name, attrs);
        self.out.push('>');
    }
    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start(name, attrs);
        self.out.push_str("/>");
    }
    fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }
    fn text(&mut self, name: &str, text: &str) {
        self.open(name, &[]);
        escape(text, &mut self.out);
        self.close(name);
    }
    fn code(&mut self, name: &str, c: &Code) {
        self.empty(
            name,
            &[
                ("csd-code", c.code),
                ("codeSystemName", c.scheme),
                ("originalText", c.meaning),
            ],
        );
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The `AuditMessage` of `m`, on one line (no XML declaration: UTF-8, XML 1.0).
pub fn to_xml(m: &Mapped) -> String {
    let mut x = Xml {
        out: String::with_capacity(2048),
    };
    x.open("AuditMessage", &[]);
    let mut attrs = vec![
        ("EventActionCode", m.action),
        ("EventDateTime", m.when.as_str()),
        ("EventOutcomeIndicator", m.outcome.as_str()),
    ];
    if m.action.is_empty() {
        attrs.remove(0);
    }
    x.open("EventIdentification", &attrs);
    x.code("EventID", &m.event_id);
    for c in &m.type_codes {
        x.code("EventTypeCode", c);
    }
    if let Some(d) = &m.outcome_desc {
        x.text("EventOutcomeDescription", d);
    }
    x.close("EventIdentification");
    for p in &m.participants {
        let mut attrs: Vec<(&str, &str)> = vec![("UserID", p.user_id.as_str())];
        if let Some(a) = &p.alt_user_id {
            attrs.push(("AlternativeUserID", a));
        }
        if let Some(n) = &p.user_name {
            attrs.push(("UserName", n));
        }
        attrs.push((
            "UserIsRequestor",
            if p.requestor { "true" } else { "false" },
        ));
        if let Some((id, kind)) = &p.network {
            attrs.push(("NetworkAccessPointID", id));
            attrs.push(("NetworkAccessPointTypeCode", kind));
        }
        if p.roles.is_empty() {
            x.empty("ActiveParticipant", &attrs);
        } else {
            x.open("ActiveParticipant", &attrs);
            for r in &p.roles {
                x.code("RoleIDCode", r);
            }
            x.close("ActiveParticipant");
        }
    }
    let mut attrs = vec![("AuditSourceID", m.source_id.as_str())];
    if let Some(site) = &m.site {
        attrs.push(("AuditEnterpriseSiteID", site));
    }
    x.open("AuditSourceIdentification", &attrs);
    // 4: application server process (RFC 3881 audit source type).
    x.empty(
        "AuditSourceTypeCode",
        &[
            ("csd-code", "4"),
            ("codeSystemName", "RFC-3881"),
            ("originalText", "Application Server Process"),
        ],
    );
    x.close("AuditSourceIdentification");
    for o in &m.objects {
        let mut attrs = vec![
            ("ParticipantObjectID", o.id.as_str()),
            ("ParticipantObjectTypeCode", o.type_code),
            ("ParticipantObjectTypeCodeRole", o.role),
        ];
        if o.class == ObjectClass::Patient || o.class == ObjectClass::Study {
            attrs.push(("ParticipantObjectDataLifeCycle", "6")); // access/use
        }
        x.open("ParticipantObjectIdentification", &attrs);
        x.code("ParticipantObjectIDTypeCode", &o.id_type);
        match &o.query {
            Some(q) => x.text("ParticipantObjectQuery", &b64(q)),
            None => x.text("ParticipantObjectName", &o.name),
        }
        for (t, v) in &o.details {
            x.empty(
                "ParticipantObjectDetail",
                &[("type", t), ("value", &b64(v))],
            );
        }
        if !o.accessions.is_empty() || o.instances.is_some() {
            x.open("ParticipantObjectDescription", &[]);
            for a in &o.accessions {
                x.empty("Accession", &[("Number", a)]);
            }
            if let Some((n, uids)) = &o.instances {
                let n = n.to_string();
                if uids.is_empty() {
                    x.empty("SOPClass", &[("NumberOfInstances", &n)]);
                } else {
                    x.open("SOPClass", &[("NumberOfInstances", &n)]);
                    for u in uids {
                        x.empty("Instance", &[("UID", u)]);
                    }
                    x.close("SOPClass");
                }
            }
            x.close("ParticipantObjectDescription");
        }
        x.close("ParticipantObjectIdentification");
    }
    x.close("AuditMessage");
    x.out
}

/// The SOP class name for a query's object, when it is one of the usual ones (for people).
pub fn sop_class_display(uid: &str) -> &'static str {
    sop_class_name(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_controls() {
        let mut out = String::new();
        escape("a<b>&\"c'\n\u{1}", &mut out);
        assert_eq!(out, "a&lt;b&gt;&amp;&quot;c&apos;&#10; ");
        assert_eq!(clean("ab\u{7}cd", 3), "ab ");
        assert_eq!(clean("éé", 3), "é");
    }

    #[test]
    fn network_access_points_are_ip_or_name() {
        assert_eq!(
            network_of("203.0.113.7:5123"),
            Some(("203.0.113.7".into(), "2"))
        );
        assert_eq!(
            network_of("[2001:db8::1]:443"),
            Some(("2001:db8::1".into(), "2"))
        );
        assert_eq!(network_of("pacs.local"), Some(("pacs.local".into(), "1")));
        assert_eq!(network_of(""), None);
    }

    #[test]
    fn unmapped_types_and_bad_times_give_none() {
        let e = Event::new(EventType::TokenMinted);
        assert!(map(&e, "gw").is_none());
        let mut e = Event::new(EventType::GatewayStarted);
        assert!(map(&e, "gw").is_some());
        e.ts = "yesterday".into();
        assert!(map(&e, "gw").is_none());
    }
}
