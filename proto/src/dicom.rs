//! DICOM on the wire between gateway and connector (issue #17): what the gateway's permit
//! allows on an association, and what the connector saw on it.
//!
//! ```text
//!  gateway ── CONNECT pacs:104 + postern-dicom-permit: {DicomPermit} ──▶ connector
//!  gateway ── GET /v1/link/session-events + postern-session-id ──────▶ connector
//!          ◀── 200, then one DicomRecord JSON per line (NDJSON) ────────
//! ```
//!
//! The connector, inside the hospital, reads the A-ASSOCIATE-RQ and the DIMSE command sets and
//! query identifiers of a DICOM tunnel (never pixel data) and enforces the permit: a calling AE
//! title the permit does not list gets an A-ASSOCIATE-RJ, a service it does not list an
//! A-ABORT. What it saw travels back as [`DicomRecord`]s on the session's events stream,
//! which the gateway opened on the same link as the tunnel: only the connector that carries a
//! session can report on it. The gateway bounds each record again ([`DicomRecord::bounded`])
//! and writes it into the session's audit events (`dicom.*`).

use serde::{Deserialize, Serialize};

/// Request header of a `CONNECT` for a DICOM endpoint: the [`DicomPermit`] as JSON. Its
/// presence asks the connector to inspect the tunnel; without it the tunnel is opaque bytes.
pub const HDR_DICOM_PERMIT: &str = "postern-dicom-permit";
/// `GET` with [`crate::wire::HDR_SESSION`]: the connector answers 200 and then streams the
/// session's [`DicomRecord`]s, one JSON object per line, until the tunnel has ended.
pub const PATH_SESSION_EVENTS: &str = "/v1/link/session-events";

/// Longest AE title (PS3.5 AE value representation: 16 characters).
pub const MAX_AE: usize = 16;
/// Longest UID (PS3.5 UI value representation: 64 characters).
pub const MAX_UID: usize = 64;
/// Longest other value kept (patient id, accession, modality, dates): 64 characters.
pub const MAX_VALUE: usize = 64;
/// Most entries kept in a list of a record (UIDs, SOP classes); the rest are counted only.
pub const MAX_LIST: usize = 64;
/// Longest `reason` sentence kept.
pub const MAX_REASON: usize = 512;

/// A DIMSE service a permit can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DicomService {
    /// C-ECHO (verification).
    Echo,
    /// C-FIND (query).
    Find,
    /// C-GET (retrieve over the same association; the PACS sends C-STORE sub-operations back).
    Get,
    /// C-MOVE (retrieve to a third AE title).
    Move,
    /// C-STORE from the clinician's side to the PACS (sending images in).
    Store,
}

impl DicomService {
    /// Every service, in the order above.
    pub const ALL: [DicomService; 5] = [
        DicomService::Echo,
        DicomService::Find,
        DicomService::Get,
        DicomService::Move,
        DicomService::Store,
    ];
    /// What a rule allows when it says nothing: reading, never sending images in.
    pub const DEFAULT: [DicomService; 4] = [
        DicomService::Echo,
        DicomService::Find,
        DicomService::Get,
        DicomService::Move,
    ];

    /// The policy's and the audit's name: `echo`, `find`, `get`, `move`, `store`.
    pub fn as_str(self) -> &'static str {
        match self {
            DicomService::Echo => "echo",
            DicomService::Find => "find",
            DicomService::Get => "get",
            DicomService::Move => "move",
            DicomService::Store => "store",
        }
    }

    /// Parses [`DicomService::as_str`]'s names.
    pub fn parse(s: &str) -> Option<DicomService> {
        DicomService::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What the gateway's decision allows on the associations of one DICOM tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomPermit {
    /// The policy rule that allowed the session (named in refusals).
    pub rule: String,
    /// Calling AE titles the clinician may present: exact titles, or a prefix ending in `*`
    /// (`RAD_*`). Empty: any title (the policy said nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calling_ae: Vec<String>,
    /// The endpoint's AE title, which the association must call. None: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub called_ae: Option<String>,
    /// The DIMSE services allowed from the clinician's side.
    pub services: Vec<DicomService>,
}

impl DicomPermit {
    /// Whether `title` (as sent: trailing spaces are not significant) may be the calling AE.
    pub fn allows_calling(&self, title: &str) -> bool {
        let title = title.trim_end_matches(' ');
        self.calling_ae.is_empty() || self.calling_ae.iter().any(|p| ae_matches(p, title))
    }

    /// Whether `title` is the endpoint's AE title (or the permit names none).
    pub fn allows_called(&self, title: &str) -> bool {
        let title = title.trim_end_matches(' ');
        self.called_ae.as_deref().is_none_or(|c| c == title)
    }

    /// Whether the clinician's side may use `service`.
    pub fn allows(&self, service: DicomService) -> bool {
        self.services.contains(&service)
    }

    /// The header value ([`HDR_DICOM_PERMIT`]).
    pub fn to_header(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a [`HDR_DICOM_PERMIT`] value (at most 8 KiB).
    pub fn from_header(v: &str) -> Result<DicomPermit, String> {
        if v.len() > 8192 {
            return Err("the DICOM permit is longer than 8 KiB".to_owned());
        }
        serde_json::from_str(v).map_err(|e| format!("the DICOM permit does not parse: {e}"))
    }
}

/// Whether AE title `title` matches `pattern`: equal, or starting with the part of `pattern`
/// before a final `*`. AE titles are case-sensitive (PS3.5); leading and trailing spaces are
/// not significant.
pub fn ae_matches(pattern: &str, title: &str) -> bool {
    let title = title.trim_matches(' ');
    match pattern.strip_suffix('*') {
        Some(prefix) => title.starts_with(prefix),
        None => pattern == title,
    }
}

/// What the connector saw on a DICOM tunnel: one association, one DIMSE operation, or a
/// refusal. Written by the gateway into the session's audit event of type `dicom.` + `event`.
///
/// Every string is bounded (see [`DicomRecord::bounded`]); lists keep at most [`MAX_LIST`]
/// entries, and counts say how many there were in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DicomRecord {
    /// `association` (accepted), `query` (C-FIND), `retrieve` (C-GET / C-MOVE), `store`
    /// (C-STORE from the clinician's side), `refused` (A-ASSOCIATE-RJ or A-ABORT sent by the
    /// connector because of the permit, or a malformed PDU), `echo` is not recorded.
    pub event: String,
    /// The calling AE title from the A-ASSOCIATE-RQ (the clinician's side).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calling_ae: String,
    /// The called AE title from the A-ASSOCIATE-RQ (the PACS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub called_ae: String,
    /// `association`: abstract syntaxes (SOP class UIDs) of the presentation contexts the
    /// PACS accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sop_classes: Vec<String>,
    /// The DIMSE service: `find`, `get`, `move`, `store` (`echo` for a refused C-ECHO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The operation's affected SOP class UID (e.g. Study Root Query/Retrieve – FIND).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sop_class: Option<String>,
    /// `query`/`retrieve`: the Query/Retrieve Level (0008,0052): `PATIENT`, `STUDY`,
    /// `SERIES`, `IMAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Patient ID (0010,0020) of the query keys, or of the stored instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// Accession Number (0008,0050) of the query keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accession: Option<String>,
    /// Study Instance UIDs (0020,000D) of the query or retrieve keys (a C-FIND key may be a
    /// list of UIDs separated by `\`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub study_uids: Vec<String>,
    /// Series Instance UIDs (0020,000E) of the keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series_uids: Vec<String>,
    /// Modalities in Study (0008,0061) or Modality (0008,0060) of the query keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    /// Study Date (0008,0020) of the query keys, as sent (a date or a range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_date: Option<String>,
    /// `query`: how many matches (pending responses) the PACS sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<u64>,
    /// `retrieve`: instances transferred (completed sub-operations, or C-STORE sub-operations
    /// seen on a C-GET); `store`: instances the clinician's side sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    /// `retrieve` (C-GET) and `store`: SOP Instance UIDs of the instances transferred, at most
    /// [`MAX_LIST`]; `instances` has the full count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_uids: Vec<String>,
    /// The DIMSE status of the final response, four hex digits (`0000` success, `a700` out of
    /// resources, `fe00` cancelled, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `refused`: the reason code: `calling_ae_not_allowed`, `called_ae_not_recognized`,
    /// `service_not_allowed`, `malformed_pdu`, `unexpected_pdu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// `refused`: a sentence for people (names the rule of the permit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `refused`: what the connector answered: `A-ASSOCIATE-RJ result 1 source 1 reason 3`,
    /// `A-ABORT source 2 reason 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

impl DicomRecord {
    /// The event types a record may name ([`DicomRecord::event`]).
    pub const EVENTS: [&'static str; 5] = ["association", "query", "retrieve", "store", "refused"];

    /// The record with every string and list cut to its bound and control characters
    /// replaced, or None when `event` is not one of [`DicomRecord::EVENTS`]. The gateway
    /// applies it to what a connector sends before writing it anywhere.
    pub fn bounded(mut self) -> Option<DicomRecord> {
        if !DicomRecord::EVENTS.contains(&self.event.as_str()) {
            return None;
        }
        self.calling_ae = clean(&self.calling_ae, MAX_AE);
        self.called_ae = clean(&self.called_ae, MAX_AE);
        bound_list(&mut self.sop_classes, MAX_UID);
        bound_list(&mut self.study_uids, MAX_UID);
        bound_list(&mut self.series_uids, MAX_UID);
        bound_list(&mut self.instance_uids, MAX_UID);
        for s in [
            &mut self.service,
            &mut self.sop_class,
            &mut self.level,
            &mut self.patient_id,
            &mut self.accession,
            &mut self.modality,
            &mut self.study_date,
            &mut self.status,
            &mut self.refusal,
            &mut self.answer,
        ]
        .into_iter()
        .flatten()
        {
            *s = clean(s, MAX_VALUE);
        }
        if let Some(s) = &mut self.reason {
            *s = clean(s, MAX_REASON);
        }
        Some(self)
    }
}

/// `s` without control characters and trailing spaces or NULs (DICOM pads), at most `max`
/// characters.
pub fn clean(s: &str, max: usize) -> String {
    s.trim_end_matches([' ', '\0'])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect()
}

fn bound_list(list: &mut Vec<String>, max: usize) {
    list.truncate(MAX_LIST);
    for s in list.iter_mut() {
        *s = clean(s, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calling_titles_match_exactly_or_by_prefix_and_an_empty_list_allows_any() {
        let p = DicomPermit {
            rule: "r".into(),
            calling_ae: vec!["VIEWER".into(), "RAD_*".into()],
            called_ae: Some("ORTHANC".into()),
            services: DicomService::DEFAULT.to_vec(),
        };
        assert!(p.allows_calling("VIEWER"));
        assert!(p.allows_calling("VIEWER  "));
        assert!(p.allows_calling("RAD_ALICE"));
        assert!(!p.allows_calling("viewer"));
        assert!(!p.allows_calling("VIEWER2"));
        assert!(!p.allows_calling("RA"));
        assert!(p.allows_called("ORTHANC "));
        assert!(!p.allows_called("OTHER"));
        assert!(!p.allows(DicomService::Store));
        let any = DicomPermit {
            calling_ae: vec![],
            called_ae: None,
            ..p.clone()
        };
        assert!(any.allows_calling("ANYTHING") && any.allows_called("X"));
        let back = DicomPermit::from_header(&p.to_header()).unwrap();
        assert_eq!(back, p);
        assert!(DicomPermit::from_header(&"x".repeat(9000))
            .unwrap_err()
            .contains("8 KiB"));
    }

    #[test]
    fn records_from_a_connector_are_bounded_and_unknown_events_dropped() {
        let r = DicomRecord {
            event: "query".into(),
            calling_ae: "A\u{1b}[31mVERYLONGTITLE_XYZ".into(),
            patient_id: Some("P1\0\0".into()),
            study_uids: vec!["1.2".repeat(100); 100],
            ..DicomRecord::default()
        }
        .bounded()
        .unwrap();
        assert_eq!(r.calling_ae, "A?[31mVERYLONGTI");
        assert_eq!(r.patient_id.as_deref(), Some("P1"));
        assert_eq!(r.study_uids.len(), MAX_LIST);
        assert!(r.study_uids.iter().all(|u| u.len() == MAX_UID));
        let bad = DicomRecord {
            event: "pwned".into(),
            ..DicomRecord::default()
        };
        assert!(bad.bounded().is_none());
        assert_eq!(DicomService::parse("store"), Some(DicomService::Store));
        assert_eq!(DicomService::parse("STORE"), None);
    }
}
