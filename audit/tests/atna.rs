//! ATNA export against a real validator: every message kind `postern-audit export --format
//! atna` writes is checked by `jing` (Debian package `jing`) against the RELAX NG schema of
//! DICOM PS3.15 A.5.1 (transcribed in `tests/fixtures/atna/audit-message.rnc`, with its source).
//! Messages are parsed again with an XML parser to check what they say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::clinical::{self, ACCESSION, FIND_SOP, PATIENT, STUDY, STUDY2};
use common::*;
use postern_audit::{Event, EventType};

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/atna/audit-message.rnc"
);

/// Runs jing on `files`; (success, output).
fn jing(files: &[PathBuf]) -> (bool, String) {
    assert!(!files.is_empty(), "nothing to validate");
    let out = Command::new("jing")
        .arg("-c")
        .arg(SCHEMA)
        .args(files)
        .output()
        .expect("this test needs jing: apt-get install -y jing");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write_log(dir: &Path, events: &[Event]) {
    for e in events {
        postern_audit::append_sync(dir, e).unwrap();
    }
}

/// Exports `dir` as ATNA into a file; the messages, one per line.
fn export_atna(dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "export",
        dir.to_str().unwrap(),
        "--format",
        "atna",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(out).unwrap();
    text.lines().map(str::to_owned).collect()
}

/// Each message into its own file, for jing.
fn split(messages: &[String], dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = dir.join(format!("msg-{i:03}.xml"));
            std::fs::write(&p, m).unwrap();
            p
        })
        .collect()
}

fn event_id(doc: &roxmltree::Document) -> String {
    doc.descendants()
        .find(|n| n.has_tag_name("EventID"))
        .and_then(|n| n.attribute("csd-code"))
        .unwrap()
        .to_owned()
}

fn type_codes(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("EventTypeCode"))
        .map(|n| n.attribute("csd-code").unwrap().to_owned())
        .collect()
}

fn source_type(doc: &roxmltree::Document) -> Option<String> {
    let d = doc
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectDetail"))?;
    Some(d.attribute("type")?.to_owned())
}

fn b64(s: &str) -> String {
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
}

#[test]
fn every_atna_message_kind_validates_against_the_ps3_15_schema_with_jing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let events = clinical::events(false);
    write_log(&dir, &events);
    let messages = export_atna(&dir, &tmp.path().join("export.atna"), &[]);
    // One per event with a mapping, plus Audit Log Used first.
    let mapped: Vec<&Event> = events
        .iter()
        .filter(|e| postern_audit::atna::map(e, "gw").is_some())
        .collect();
    let unmapped: BTreeSet<&str> = events
        .iter()
        .filter(|e| postern_audit::atna::map(e, "gw").is_none())
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        unmapped,
        BTreeSet::from(["dicom.association", "token.minted"]),
        "only the documented types have no mapping"
    );
    assert_eq!(messages.len(), mapped.len() + 1, "{messages:#?}");
    for kind in clinical::MAPPED
        .iter()
        .filter(|k| **k != "audit.truncation_detected")
    {
        assert!(
            mapped.iter().any(|e| e.kind == *kind),
            "the fixture has no {kind} event"
        );
    }

    // Every message, and the reserved audit.* kind the writer alone can log (mapped by the
    // library here), validates against the standard's schema.
    let mut files = split(&messages, &tmp.path().join("msgs"));
    let truncation = Event {
        ts: "2025-03-01T09:00:00.000000Z".into(),
        detail: Some("log ends at seq 10, audit.head named seq 40".into()),
        gateway: Some("gw-a".into()),
        ..Event::new(EventType::AuditTruncationDetected)
    };
    let m = postern_audit::atna::map(&truncation, "gw").unwrap();
    let p = tmp.path().join("truncation.xml");
    std::fs::write(&p, postern_audit::atna::to_xml(&m)).unwrap();
    files.push(p);
    let (ok, out) = jing(&files);
    assert!(ok, "jing rejected a message:\n{out}");

    let docs: Vec<String> = messages.clone();
    let parsed: Vec<roxmltree::Document> = docs
        .iter()
        .map(|m| roxmltree::Document::parse(m).unwrap())
        .collect();
    let ids: BTreeSet<String> = parsed.iter().map(event_id).collect();
    for id in [
        "110100", "110101", "110103", "110104", "110108", "110112", "110113", "110114",
    ] {
        assert!(ids.contains(id), "no message with EventID {id}: {ids:?}");
    }
    // The export itself comes first: Audit Log Used, read, by the user running it.
    assert_eq!(event_id(&parsed[0]), "110101");
    let root = parsed[0].root_element();
    let ei = root.first_element_child().unwrap();
    assert_eq!(ei.attribute("EventActionCode"), Some("R"));
    let log_obj = parsed[0]
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectIdentification"))
        .unwrap();
    assert!(log_obj
        .attribute("ParticipantObjectID")
        .unwrap()
        .starts_with("file:///"));

    let by_kind = |kind: &str| -> &roxmltree::Document {
        let i = mapped.iter().position(|e| e.kind == kind).unwrap();
        &parsed[i + 1]
    };
    // Sign-in: User Authentication / Login, the user with name, email and address.
    let login = by_kind("auth.login");
    assert_eq!(event_id(login), "110114");
    assert_eq!(type_codes(login), ["110122"]);
    let user = login
        .descendants()
        .find(|n| n.has_tag_name("ActiveParticipant"))
        .unwrap();
    assert_eq!(user.attribute("UserID"), Some("sub-ann-jones"));
    assert_eq!(
        user.attribute("UserName"),
        Some("Dr Ann Jones <ann.jones@nhs.example>")
    );
    assert_eq!(user.attribute("UserIsRequestor"), Some("true"));
    assert_eq!(user.attribute("NetworkAccessPointID"), Some("203.0.113.7"));
    assert_eq!(user.attribute("NetworkAccessPointTypeCode"), Some("2"));
    let failed = by_kind("auth.failed");
    assert_eq!(
        failed
            .root_element()
            .first_element_child()
            .unwrap()
            .attribute("EventOutcomeIndicator"),
        Some("4")
    );
    assert_eq!(type_codes(by_kind("auth.logout")), ["110123"]);
    // Sessions: Network Entry, attach and detach; break-glass flagged as emergency override.
    assert_eq!(event_id(by_kind("session.start")), "110108");
    assert_eq!(type_codes(by_kind("session.start")), ["110124", "110127"]);
    assert_eq!(type_codes(by_kind("session.end")), ["110125"]);
    // Query: the SOP class with the keys, the patient; AE titles on both participants.
    let q = by_kind("dicom.query");
    assert_eq!(event_id(q), "110112");
    let parts: Vec<_> = q
        .descendants()
        .filter(|n| n.has_tag_name("ActiveParticipant"))
        .collect();
    assert_eq!(
        parts[0].attribute("AlternativeUserID"),
        Some("AETITLES=RAD_JONES")
    );
    assert_eq!(parts[0].attribute("UserIsRequestor"), Some("true"));
    assert_eq!(
        parts[1].attribute("AlternativeUserID"),
        Some("AETITLES=TRURO_PACS")
    );
    assert_eq!(parts[1].attribute("UserIsRequestor"), Some("false"));
    let sop = q
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectIdentification"))
        .unwrap();
    assert_eq!(sop.attribute("ParticipantObjectID"), Some(FIND_SOP));
    let query = sop
        .children()
        .find(|n| n.has_tag_name("ParticipantObjectQuery"))
        .unwrap()
        .text()
        .unwrap();
    let keys = b64(query);
    assert!(
        keys.contains(&format!("(0010,0020) PatientID={PATIENT}")),
        "{keys}"
    );
    assert!(
        keys.contains(&format!("(0008,0050) AccessionNumber={ACCESSION}")),
        "{keys}"
    );
    assert!(
        keys.contains("(0008,0052) QueryRetrieveLevel=STUDY"),
        "{keys}"
    );
    let patient = |d: &roxmltree::Document| -> Option<String> {
        d.descendants()
            .filter(|n| n.has_tag_name("ParticipantObjectIdentification"))
            .find(|n| n.attribute("ParticipantObjectTypeCodeRole") == Some("1"))
            .map(|n| {
                let code = n
                    .children()
                    .find(|c| c.has_tag_name("ParticipantObjectIDTypeCode"))
                    .unwrap();
                assert_eq!(code.attribute("csd-code"), Some("2"));
                assert_eq!(code.attribute("originalText"), Some("Patient Number"));
                n.attribute("ParticipantObjectID").unwrap().to_owned()
            })
    };
    assert_eq!(patient(q).as_deref(), Some(PATIENT));
    // Retrieve: DICOM Instances Transferred, read; the study with its instances, the patient.
    let r = by_kind("dicom.retrieve");
    assert_eq!(event_id(r), "110104");
    assert_eq!(
        r.root_element()
            .first_element_child()
            .unwrap()
            .attribute("EventActionCode"),
        Some("R")
    );
    let study = r
        .descendants()
        .filter(|n| n.has_tag_name("ParticipantObjectIdentification"))
        .find(|n| n.attribute("ParticipantObjectID") == Some(STUDY))
        .unwrap();
    let code = study.first_element_child().unwrap();
    assert_eq!(code.attribute("csd-code"), Some("110180"));
    let sopclass = study
        .descendants()
        .find(|n| n.has_tag_name("SOPClass"))
        .unwrap();
    assert_eq!(sopclass.attribute("NumberOfInstances"), Some("3"));
    assert_eq!(
        sopclass
            .children()
            .filter(|c| c.has_tag_name("Instance"))
            .count(),
        3
    );
    assert!(study
        .descendants()
        .any(|n| n.has_tag_name("Accession") && n.attribute("Number") == Some(ACCESSION)));
    assert_eq!(patient(r).as_deref(), Some(PATIENT));
    // Store: transferred, create; the user's side is the source.
    let s = by_kind("dicom.store");
    assert_eq!(event_id(s), "110104");
    assert!(s
        .descendants()
        .any(|n| n.attribute("ParticipantObjectID") == Some(STUDY2)));
    // Security alerts: refusals, denials, revocations, with their type codes.
    for (kind, code, outcome) in [
        ("dicom.refused", "110126", "4"),
        ("session.denied", "110132", "4"),
        ("token.revoked", "110137", "0"),
        ("device.revoked", "110137", "0"),
        ("connector.revoked", "110129", "0"),
        ("connector.refused", "110126", "4"),
        ("connector.renewal_refused", "110126", "8"),
        ("policy.reloaded", "110129", "0"),
    ] {
        let d = by_kind(kind);
        assert_eq!(event_id(d), "110113", "{kind}");
        assert_eq!(type_codes(d), [code], "{kind}");
        assert_eq!(
            d.root_element()
                .first_element_child()
                .unwrap()
                .attribute("EventOutcomeIndicator"),
            Some(outcome),
            "{kind}"
        );
    }
    let refused = by_kind("dicom.refused");
    assert!(refused
        .descendants()
        .any(|n| n.attribute("AlternativeUserID") == Some("AETITLES=RAD_OTHER")));
    // A DICOMweb request that opened a study: DICOM Instances Accessed with the study.
    let web = by_kind("web.request");
    assert_eq!(event_id(web), "110103");
    assert_eq!(source_type(web).as_deref(), Some("path"));
    // Every message names the gateway node as its audit source.
    for d in &parsed[1..] {
        let src = d
            .descendants()
            .find(|n| n.has_tag_name("AuditSourceIdentification"))
            .unwrap();
        assert_eq!(src.attribute("AuditSourceID"), Some("gw-a"));
    }
}

#[test]
fn broken_messages_fail_the_schema_so_the_check_can_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let e = clinical::events(false)
        .into_iter()
        .find(|e| e.kind == "dicom.query")
        .unwrap();
    let good = postern_audit::atna::to_xml(&postern_audit::atna::map(&e, "gw").unwrap());
    let cases = [
        // UserIsRequestor is mandatory.
        good.replacen(" UserIsRequestor=\"true\"", "", 1),
        // EventID must come before the EventTypeCodes (and is mandatory).
        good.replacen("<EventID ", "<EventIDX ", 1),
        // The outcome indicator has four values.
        good.replacen(
            "EventOutcomeIndicator=\"0\"",
            "EventOutcomeIndicator=\"1\"",
            1,
        ),
        // A query is base64.
        {
            let start = good.find("<ParticipantObjectQuery>").unwrap() + 24;
            format!("{}not base64!{}", &good[..start], &good[start..])
        },
    ];
    let (ok, out) = jing(&split(
        std::slice::from_ref(&good),
        &tmp.path().join("good"),
    ));
    assert!(ok, "{out}");
    for (i, bad) in cases.iter().enumerate() {
        assert_ne!(bad, &good, "case {i} changed nothing");
        let (ok, out) = jing(&split(
            std::slice::from_ref(bad),
            &tmp.path().join(format!("bad{i}")),
        ));
        assert!(!ok, "case {i}: jing accepted a broken message:\n{bad}");
        assert!(out.contains("error"), "case {i}: {out}");
    }
}

#[test]
fn strings_from_outside_are_escaped_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut events = clinical::events(true);
    let mut huge = events[0].clone();
    huge.user_name = Some("<&>".repeat(400)); // the writer bounds it to 512 bytes; we to 256
    events.push(huge);
    write_log(&dir, &events);
    let messages = export_atna(&dir, &tmp.path().join("export.atna"), &[]);
    assert!(messages.len() > 10);
    let (ok, out) = jing(&split(&messages, &tmp.path().join("msgs")));
    assert!(ok, "{out}");
    let names: Vec<String> = messages
        .iter()
        .map(|m| roxmltree::Document::parse(m).unwrap())
        .flat_map(|d| {
            d.descendants()
                .filter_map(|n| n.attribute("UserName").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == "Dr Ann \"<Jones>\" & co  <ann.jones@nhs.example>"),
        "{names:?}"
    );
    assert!(names.iter().all(|n| n.len() <= 256), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("<&><&>")));
    for m in &messages {
        assert!(!m.contains('\u{1}') && !m.contains('\u{7}'));
    }
}

#[test]
fn a_tampered_log_exports_a_security_alert_after_audit_log_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, &clinical::events(false));
    // An insider edits who opened the study.
    let seg = first_segment(&dir);
    let text = std::fs::read_to_string(&seg).unwrap();
    let edited = text.replacen(
        "\"user\":\"sub-ann-jones\"",
        "\"user\":\"sub-bob-smith\"",
        3,
    );
    assert_ne!(text, edited);
    std::fs::write(&seg, edited).unwrap();
    let messages = export_atna(&dir, &tmp.path().join("export.atna"), &[]);
    let (ok, out) = jing(&split(&messages[..2], &tmp.path().join("msgs")));
    assert!(ok, "{out}");
    let first = roxmltree::Document::parse(&messages[0]).unwrap();
    assert_eq!(event_id(&first), "110101");
    let alert = roxmltree::Document::parse(&messages[1]).unwrap();
    assert_eq!(event_id(&alert), "110113");
    assert_eq!(type_codes(&alert), ["audit-chain-broken"]);
    let ei = alert.root_element().first_element_child().unwrap();
    assert_eq!(ei.attribute("EventOutcomeIndicator"), Some("8"));
    let desc = alert
        .descendants()
        .find(|n| n.has_tag_name("EventOutcomeDescription"))
        .unwrap()
        .text()
        .unwrap();
    assert!(desc.contains("problem(s)"), "{desc}");
}

#[test]
fn filters_apply_to_the_atna_export() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, &clinical::events(false));
    let messages = export_atna(
        &dir,
        &tmp.path().join("export.atna"),
        &["--type", "dicom.*", "--since", "2025-03-01T08:05:00Z"],
    );
    // Audit Log Used + retrieve, store, refused (the query is at 08:04, association unmapped).
    let ids: Vec<String> = messages
        .iter()
        .map(|m| event_id(&roxmltree::Document::parse(m).unwrap()))
        .collect();
    assert_eq!(ids, ["110101", "110104", "110104", "110113"]);
    let used = roxmltree::Document::parse(&messages[0]).unwrap();
    let detail = used
        .descendants()
        .find(|n| n.has_tag_name("ParticipantObjectDetail"))
        .unwrap();
    assert_eq!(detail.attribute("type"), Some("filter"));
    assert_eq!(
        b64(detail.attribute("value").unwrap()),
        "--type dicom.* --since 2025-03-01T08:05:00Z"
    );
    // The file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("export.atna"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
