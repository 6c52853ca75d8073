//! `postern-audit access --patient / --accession / --study` over `dicom.*` events: who viewed
//! patient X's images remotely, when, from which device and address, through which endpoint,
//! and what they did (queries, retrieves, stores, instances), built from constructed events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::clinical::{self, ACCESSION, PATIENT, STUDY, STUDY2};
use common::*;
use postern_audit::{DeviceRef, Event, EventType};
use postern_proto::dicom::DicomRecord;

const OTHER_PATIENT: &str = "NHS0000000001";

fn bob(kind: EventType, ts: &str) -> Event {
    Event {
        ts: ts.into(),
        session_id: Some("s-9".into()),
        user: Some("sub-bob-smith".into()),
        user_name: Some("Dr Bob Smith".into()),
        user_email: Some("bob.smith@nhs.example".into()),
        device: Some(DeviceRef {
            id: "dev-77".into(),
            name: None,
            user_verified: Some(true),
        }),
        source: Some("198.51.100.4:40100".into()),
        endpoint: Some(postern_audit::EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            host: "10.1.2.3".into(),
            port: 104,
            protocol: "dicom".into(),
        }),
        gateway: Some("gw-a".into()),
        ..Event::new(kind)
    }
}

/// The clinical fixtures (Ann) plus Bob's session: a query for another patient, and a
/// retrieve of Ann's study with the same patient; Bob's DICOM events carry no identity of
/// their own (it comes from his session.start).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut events = clinical::events(false);
    events.push(bob(EventType::SessionStart, "2025-03-01T09:00:00.000000Z"));
    let anonymous = |mut e: Event, d: DicomRecord| {
        e.user = None;
        e.user_name = None;
        e.user_email = None;
        e.device = None;
        e.source = None;
        e.dicom = Some(d);
        e
    };
    events.push(anonymous(
        bob(EventType::DicomQuery, "2025-03-01T09:01:00.000000Z"),
        DicomRecord {
            event: "query".into(),
            calling_ae: "RAD_BOB".into(),
            called_ae: "TRURO_PACS".into(),
            level: Some("STUDY".into()),
            patient_id: Some(OTHER_PATIENT.into()),
            matches: Some(1),
            ..DicomRecord::default()
        },
    ));
    events.push(anonymous(
        bob(EventType::DicomRetrieve, "2025-03-01T09:02:00.000000Z"),
        DicomRecord {
            event: "retrieve".into(),
            calling_ae: "RAD_BOB".into(),
            called_ae: "TRURO_PACS".into(),
            level: Some("STUDY".into()),
            // As sent: trailing space padding is not significant.
            patient_id: Some(format!("{PATIENT} ")),
            study_uids: vec![STUDY.into()],
            instances: Some(5),
            ..DicomRecord::default()
        },
    ));
    for e in &events {
        postern_audit::append_sync(&dir, e).unwrap();
    }
    (tmp, dir)
}

fn access(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["access", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn access_by_patient_lists_who_viewed_the_patient_over_dicom() {
    let (_tmp, dir) = fixture();
    let out = access(&dir, &["--patient", PATIENT]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("FIRST ") && lines[0].ends_with("DICOM"),
        "{text}"
    );
    for w in [
        "2025-03-01 08:04:00Z",
        "2025-03-01 08:06:00Z",
        "Dr Ann Jones <ann.jones@nhs.example>",
        "RAD-LAPTOP-042",
        "203.0.113.7:51234",
        "truro-pacs@truro",
        " s-1 ",
        "AE RAD_JONES: 1 query, 1 retrieve, 1 store (4 instances)",
    ] {
        assert!(lines[1].contains(w), "{w:?} missing from {:?}", lines[1]);
    }
    for w in [
        "2025-03-01 09:02:00Z",
        "Dr Bob Smith <bob.smith@nhs.example>",
        "dev-77",
        "198.51.100.4:40100",
        " s-9 ",
        "AE RAD_BOB: 1 retrieve (5 instances)",
    ] {
        assert!(lines[2].contains(w), "{w:?} missing from {:?}", lines[2]);
    }
    assert!(!text.contains(OTHER_PATIENT));

    let out = access(&dir, &["--patient", PATIENT, "--json"]);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["session_id"], "s-1");
    assert_eq!(rows[0]["queries"], 1);
    assert_eq!(rows[0]["retrieves"], 1);
    assert_eq!(rows[0]["stores"], 1);
    assert_eq!(rows[0]["instances"], 4);
    assert_eq!(rows[0]["calling_ae"], serde_json::json!(["RAD_JONES"]));
    assert_eq!(
        rows[0]["objects"],
        serde_json::json!([{"kind": "patient", "id": PATIENT}])
    );
    assert_eq!(rows[1]["user_email"], "bob.smith@nhs.example");
    assert_eq!(rows[1]["session_start_found"], true);
    assert_eq!(rows[1]["instances"], 5);

    let out = access(&dir, &["--patient", PATIENT, "--csv"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(",objects,calling_ae,queries,retrieves,stores,instances"));
    assert!(
        lines[2].ends_with(&format!(",patient:{PATIENT},RAD_BOB,0,1,0,5")),
        "{text}"
    );
}

#[test]
fn access_by_accession_and_by_study_include_dicom_events() {
    let (_tmp, dir) = fixture();
    let out = access(&dir, &["--accession", ACCESSION, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["session_id"], "s-1");
    assert_eq!(rows[0]["queries"], 1);
    assert_eq!(rows[0]["retrieves"], 1);

    // A study: the DICOM retrieves (Ann's and Bob's) and the DICOMweb request alike.
    let out = access(&dir, &["--study", STUDY, "--json"]);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sessions: Vec<&str> = rows
        .iter()
        .map(|r| r["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions, ["s-1", "s-2", "s-9"], "{rows:#?}");
    assert_eq!(rows[1]["requests"], 1, "the web request");
    assert_eq!(rows[1]["retrieves"], 0);
    // The stored study only in Ann's session.
    let out = access(&dir, &["--study", STUDY2, "--json"]);
    assert_eq!(stdout(&out).lines().count(), 1);
    // Several kinds at once: any of them, and which each touched.
    let out = access(
        &dir,
        &["--patient", OTHER_PATIENT, "--accession", ACCESSION],
    );
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().ends_with("OBJECTS"), "{text}");
    assert!(text.contains(&format!("patient {OTHER_PATIENT}")), "{text}");
    assert!(text.contains(&format!("accession {ACCESSION}")), "{text}");
}

#[test]
fn access_by_patient_finds_nothing_or_refuses_a_bad_id() {
    let (_tmp, dir) = fixture();
    let out = access(&dir, &["--patient", "NHS-NOBODY"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("no access to patient NHS-NOBODY recorded between "),
        "{}",
        stdout(&out)
    );
    for bad in ["a\\b", " lead", &"x".repeat(65), "tab\there"] {
        let out = access(&dir, &["--patient", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            stderr(&out).contains("is not a Patient ID"),
            "{}",
            stderr(&out)
        );
    }
    let out = access(&dir, &["--accession", "a\\b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not an Accession Number"));
}
