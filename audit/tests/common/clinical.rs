//! A day of a radiologist working from home, as the gateway and connector would log it: one
//! event of every type the ATNA/FHIR exporters map, plus some they do not.
#![allow(dead_code)]

use postern_audit::{ConnectorRef, DeviceRef, EndpointRef, Event, EventType, HttpRef, ObjectRef};
use postern_proto::dicom::DicomRecord;

pub const PATIENT: &str = "NHS9434765919";
pub const ACCESSION: &str = "ACC20250301";
pub const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
pub const STUDY2: &str = "1.2.826.0.1.3680043.8.498.2";
pub const FIND_SOP: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const GET_SOP: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Event types the exporters map (one fixture event each, at least).
pub const MAPPED: &[&str] = &[
    "auth.login",
    "auth.failed",
    "auth.logout",
    "session.start",
    "session.end",
    "session.terminated",
    "session.denied",
    "dicom.query",
    "dicom.retrieve",
    "dicom.store",
    "dicom.refused",
    "web.request",
    "token.revoked",
    "device.revoked",
    "connector.revoked",
    "connector.refused",
    "connector.renewal_refused",
    "policy.reloaded",
    "gateway.started",
    "audit.truncation_detected",
    "admin.command",
];

fn at(i: u32) -> String {
    format!("2025-03-01T{:02}:{:02}:00.000000Z", 8 + i / 60, i % 60)
}

fn user(kind: EventType, i: u32, session: &str) -> Event {
    Event {
        ts: at(i),
        session_id: Some(session.to_owned()),
        user: Some("sub-ann-jones".into()),
        user_name: Some("Dr Ann Jones".into()),
        user_email: Some("ann.jones@nhs.example".into()),
        device: Some(DeviceRef {
            id: "dev-42".into(),
            name: Some("RAD-LAPTOP-042".into()),
            user_verified: Some(true),
        }),
        source: Some("203.0.113.7:51234".into()),
        endpoint: Some(EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            host: "10.1.2.3".into(),
            port: 104,
            protocol: "dicom".into(),
        }),
        connector: Some(ConnectorRef {
            id: "conn-truro-1".into(),
            site: "truro".into(),
        }),
        gateway: Some("gw-a".into()),
        ..Event::new(kind)
    }
}

fn dicom(kind: EventType, i: u32, session: &str, d: DicomRecord) -> Event {
    Event {
        dicom: Some(d),
        ..user(kind, i, session)
    }
}

/// The fixture events, in time order. `tricky` adds markup and control characters to the
/// strings that come from outside (names, reasons, keys).
pub fn events(tricky: bool) -> Vec<Event> {
    let name = if tricky {
        "Dr Ann \"<Jones>\" & co\u{1}\n"
    } else {
        "Dr Ann Jones"
    };
    let mut out = Vec::new();
    let mut login = user(EventType::AuthLogin, 0, "s-0");
    login.session_id = None;
    login.user_name = Some(name.into());
    out.push(login);
    let mut failed = user(EventType::AuthFailed, 1, "s-0");
    failed.session_id = None;
    failed.user = None;
    failed.user_name = None;
    failed.user_email = None;
    failed.detail = Some("idp_error: access_denied <script>".into());
    out.push(failed);
    let mut start = user(EventType::SessionStart, 2, "s-1");
    start.justification = Some("stroke call; consultant unavailable".into());
    out.push(start);
    out.push(dicom(
        EventType::DicomAssociation,
        3,
        "s-1",
        DicomRecord {
            event: "association".into(),
            calling_ae: "RAD_JONES".into(),
            called_ae: "TRURO_PACS".into(),
            sop_classes: vec![FIND_SOP.into(), GET_SOP.into()],
            ..DicomRecord::default()
        },
    ));
    out.push(dicom(
        EventType::DicomQuery,
        4,
        "s-1",
        DicomRecord {
            event: "query".into(),
            calling_ae: "RAD_JONES".into(),
            called_ae: "TRURO_PACS".into(),
            service: Some("find".into()),
            sop_class: Some(FIND_SOP.into()),
            level: Some("STUDY".into()),
            patient_id: Some(PATIENT.into()),
            accession: Some(if tricky {
                "A<&>\"'\u{7}".into()
            } else {
                ACCESSION.into()
            }),
            modality: Some("CT".into()),
            study_date: Some("20250101-20250301".into()),
            matches: Some(2),
            status: Some("0000".into()),
            ..DicomRecord::default()
        },
    ));
    out.push(dicom(
        EventType::DicomRetrieve,
        5,
        "s-1",
        DicomRecord {
            event: "retrieve".into(),
            calling_ae: "RAD_JONES".into(),
            called_ae: "TRURO_PACS".into(),
            service: Some("get".into()),
            sop_class: Some(GET_SOP.into()),
            level: Some("STUDY".into()),
            patient_id: Some(PATIENT.into()),
            accession: Some(ACCESSION.into()),
            study_uids: vec![STUDY.into()],
            instances: Some(3),
            instance_uids: vec![
                format!("{STUDY}.1.1"),
                format!("{STUDY}.1.2"),
                format!("{STUDY}.1.3"),
            ],
            status: Some("0000".into()),
            ..DicomRecord::default()
        },
    ));
    out.push(dicom(
        EventType::DicomStore,
        6,
        "s-1",
        DicomRecord {
            event: "store".into(),
            calling_ae: "RAD_JONES".into(),
            called_ae: "TRURO_PACS".into(),
            service: Some("store".into()),
            patient_id: Some(PATIENT.into()),
            study_uids: vec![STUDY2.into()],
            instances: Some(1),
            instance_uids: vec![format!("{STUDY2}.9.1")],
            status: Some("0000".into()),
            ..DicomRecord::default()
        },
    ));
    out.push(dicom(
        EventType::DicomRefused,
        7,
        "s-1",
        DicomRecord {
            event: "refused".into(),
            calling_ae: "RAD_OTHER".into(),
            called_ae: "TRURO_PACS".into(),
            refusal: Some("calling_ae_not_allowed".into()),
            reason: Some(if tricky {
                "rule <radiologists> & \"friends\"".into()
            } else {
                "calling AE title RAD_OTHER is not allowed by rule radiologists".into()
            }),
            answer: Some("A-ASSOCIATE-RJ result 1 source 1 reason 3".into()),
            ..DicomRecord::default()
        },
    ));
    let mut web = user(EventType::WebRequest, 8, "s-2");
    web.http = Some(HttpRef {
        method: "GET".into(),
        path: format!("/dicom-web/studies/{STUDY}/metadata"),
        status: 200,
        bytes_up: 0,
        bytes_down: 2048,
        duration_ms: 12,
        sampled: None,
    });
    web.objects = Some(vec![ObjectRef {
        kind: "study".into(),
        id: STUDY.into(),
    }]);
    out.push(web);
    let mut end = user(EventType::SessionEnd, 9, "s-1");
    end.bytes_up = Some(1000);
    end.bytes_down = Some(5_000_000);
    end.duration_ms = Some(420_000);
    end.close_reason = Some("client_closed".into());
    out.push(end);
    let mut denied = user(EventType::SessionDenied, 10, "s-3");
    denied.decision = Some(postern_audit::DecisionRef {
        effect: "deny".into(),
        rule: Some("unmanaged-devices".into()),
        reason: "device is not managed".into(),
        ..Default::default()
    });
    out.push(denied);
    let mut terminated = user(EventType::SessionTerminated, 11, "s-4");
    terminated.close_reason = Some("policy_revoked".into());
    out.push(terminated);
    let mut revoked = user(EventType::TokenRevoked, 12, "s-4");
    revoked.detail = Some("jti tok-123 revoked by admin".into());
    out.push(revoked);
    let mut dev = user(EventType::DeviceRevoked, 13, "s-4");
    dev.session_id = None;
    out.push(dev);
    let conn = |kind, i, detail: &str| Event {
        ts: at(i),
        connector: Some(ConnectorRef {
            id: "conn-truro-1".into(),
            site: "truro".into(),
        }),
        source: Some("198.51.100.4:40000".into()),
        detail: Some(detail.into()),
        gateway: Some("gw-a".into()),
        ..Event::new(kind)
    };
    out.push(conn(EventType::ConnectorRevoked, 14, "serial 0a1b"));
    out.push(conn(EventType::ConnectorRefused, 15, "revoked certificate"));
    out.push(conn(
        EventType::ConnectorRenewalRefused,
        16,
        "superseded_certificate: serial 0a1b",
    ));
    out.push(Event {
        ts: at(17),
        detail: Some("policy sha256:abcd".into()),
        gateway: Some("gw-a".into()),
        ..Event::new(EventType::PolicyReloaded)
    });
    out.push(Event {
        ts: at(18),
        gateway: Some("gw-a".into()),
        ..Event::new(EventType::GatewayStarted)
    });
    out.push(Event {
        ts: at(19),
        user: Some("root".into()),
        detail: Some("postern-gateway token revoke tok-123".into()),
        gateway: Some("gw-a".into()),
        ..Event::new(EventType::AdminCommand)
    });
    out.push(Event {
        ts: at(20),
        gateway: Some("gw-a".into()),
        ..Event::new(EventType::TokenMinted)
    });
    let mut logout = user(EventType::AuthLogout, 21, "s-0");
    logout.session_id = None;
    out.push(logout);
    out
}
