//! FHIR export read back with a FHIR R4 model: every resource `postern-audit export --format
//! fhir` writes deserialises with `fhir-model` (R4B, whose AuditEvent and Bundle are R4's) into
//! an AuditEvent, serialises back to the same JSON (so no element was dropped or mistyped), and
//! carries what IHE BALP asks for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::clinical::{self, PATIENT, STUDY};
use common::*;
use fhir_model::r4b::resources::{AuditEvent, Bundle, Resource};
use serde_json::Value;

fn log(dir: &Path) {
    for e in clinical::events(false) {
        postern_audit::append_sync(dir, &e).unwrap();
    }
}

/// Instants written as the same point in time compare equal (the model drops zero
/// fractions of a second: `08:00:00.000000Z` comes back as `08:00:00Z`).
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if k == "recorded" || k == "timestamp" {
                    let t = humantime::parse_rfc3339_weak(x.as_str().unwrap()).unwrap();
                    *x = Value::String(humantime::format_rfc3339_micros(t).to_string());
                } else {
                    normalize(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Checks that `model` serialised is `v`: every element was read, none dropped or mistyped.
fn same(model: &impl serde::Serialize, v: &Value) {
    let mut again = serde_json::to_value(model).unwrap();
    let mut v = v.clone();
    normalize(&mut again);
    normalize(&mut v);
    assert_eq!(again, v, "the model did not keep every element");
}

/// Parses `v` as an AuditEvent and checks it serialises back to the same JSON.
fn read_back(v: &Value) -> AuditEvent {
    let ev: AuditEvent = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("not a FHIR AuditEvent: {e}\n{v:#}"));
    same(&ev, v);
    ev
}

fn codes(v: &Value, path: &str) -> Vec<String> {
    v.pointer(path)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// FHIR allows no empty string, array or object (ele-1).
fn no_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => !a.is_empty() && a.iter().all(no_empty),
        Value::Object(o) => !o.is_empty() && o.values().all(no_empty),
        _ => true,
    }
}

/// The BALP basics every AuditEvent must carry.
fn check_balp(v: &Value) {
    assert!(no_empty(v), "an empty value: {v:#}");
    assert!(
        v["type"]["system"].is_string() && v["type"]["code"].is_string(),
        "{v:#}"
    );
    assert!(
        ["C", "R", "U", "D", "E"].contains(&v["action"].as_str().unwrap()),
        "{v:#}"
    );
    assert!(v["recorded"].as_str().unwrap().ends_with('Z'));
    assert!(["0", "4", "8"].contains(&v["outcome"].as_str().unwrap()));
    let agents = v["agent"].as_array().unwrap();
    assert!(!agents.is_empty());
    assert!(
        agents.iter().any(|a| a["requestor"] == true),
        "no requestor: {v:#}"
    );
    for a in agents {
        assert!(a["who"]["identifier"]["value"].is_string(), "{a:#}");
        assert!(a["type"]["coding"][0]["code"].is_string(), "{a:#}");
    }
    assert!(v["source"]["observer"]["identifier"]["value"].is_string());
}

#[test]
fn every_fhir_resource_is_an_audit_event_with_what_balp_requires() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    log(&dir);
    let out = run(&["export", dir.to_str().unwrap(), "--format", "fhir"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events = clinical::events(false);
    let mapped = events
        .iter()
        .filter(|e| postern_audit::atna::map(e, "gw").is_some())
        .count();
    assert_eq!(
        lines.len(),
        mapped + 1,
        "Audit Log Used + one per mapped event"
    );
    let mut ids = std::collections::BTreeSet::new();
    for v in &lines {
        let ev = read_back(v);
        assert!(ids.insert(ev.id.clone().unwrap()), "ids are unique");
        assert!(!ev.agent.is_empty());
        check_balp(v);
    }
    assert_eq!(lines[0]["type"]["code"], "110101");
    let find = |code: &str| -> &Value {
        lines
            .iter()
            .find(|v| v["type"]["code"] == code)
            .unwrap_or_else(|| panic!("no AuditEvent of type {code}"))
    };
    // Query: the user as requestor with address and AE title, the patient, the keys.
    let q = find("110112");
    assert_eq!(q["type"]["system"], postern_audit::fhir::DCM);
    let user = &q["agent"][0];
    assert_eq!(user["requestor"], true);
    assert_eq!(user["who"]["identifier"]["value"], "sub-ann-jones");
    assert_eq!(user["altId"], "AETITLES=RAD_JONES");
    assert_eq!(user["network"]["address"], "203.0.113.7");
    assert_eq!(user["network"]["type"], "2");
    let entities = q["entity"].as_array().unwrap();
    let patient = entities
        .iter()
        .find(|e| e["what"]["type"] == "Patient")
        .expect("patient entity");
    assert_eq!(patient["what"]["identifier"]["value"], PATIENT);
    assert_eq!(patient["role"]["code"], "1");
    assert!(entities.iter().any(|e| e["query"].is_string()));
    // Retrieve: the study as an ImagingStudy identifier, and the patient.
    let r = find("110104");
    let study = r["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["what"]["type"] == "ImagingStudy")
        .expect("study entity");
    assert_eq!(study["what"]["identifier"]["system"], "urn:dicom:uid");
    assert_eq!(
        study["what"]["identifier"]["value"],
        format!("urn:oid:{STUDY}")
    );
    assert!(r["entity"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["what"]["type"] == "Patient"));
    // Sign-in and sessions.
    assert_eq!(codes(find("110114"), "/subtype"), ["110122"]);
    let start = lines
        .iter()
        .find(|v| codes(v, "/subtype").contains(&"110124".to_owned()))
        .unwrap();
    assert_eq!(start["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    // A DICOMweb request: BALP's RESTful type with the interaction.
    let rest = find("rest");
    assert_eq!(codes(rest, "/subtype")[0], "read");
    // Security alerts.
    assert!(lines
        .iter()
        .filter(|v| v["type"]["code"] == "110113")
        .all(|v| !codes(v, "/subtype").is_empty()));
}

#[test]
fn a_bundle_holds_the_same_resources() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    log(&dir);
    let file = tmp.path().join("audit.json");
    let out = run(&[
        "export",
        dir.to_str().unwrap(),
        "--format",
        "fhir",
        "--fhir-bundle",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let bundle: Bundle = serde_json::from_value(v.clone()).unwrap();
    same(&bundle, &v);
    assert_eq!(v["type"], "collection");
    let entries = &bundle.entry;
    assert!(entries.len() > 15, "{}", entries.len());
    for e in entries {
        let resource = e.as_ref().unwrap().resource.as_ref().unwrap();
        assert!(matches!(resource, Resource::AuditEvent(_)), "{resource:?}");
    }
    // The same as --format fhir-bundle.
    let out2 = run(&["export", dir.to_str().unwrap(), "--format", "fhir-bundle"]);
    assert!(out2.status.success(), "{}", stderr(&out2));
    let v2: Value = serde_json::from_str(&stdout(&out2)).unwrap();
    assert_eq!(v2["entry"].as_array().unwrap().len(), entries.len());
    // Bad combinations are refused with a reason.
    let bad = run(&[
        "export",
        dir.to_str().unwrap(),
        "--format",
        "json",
        "--fhir-bundle",
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--fhir-bundle goes with --format fhir"));
}

#[test]
fn a_malformed_resource_does_not_read_back() {
    // The check can fail: a wrong code or a missing required element is refused by the model.
    let e = clinical::events(false)
        .into_iter()
        .find(|e| e.kind == "dicom.query")
        .unwrap();
    let good = postern_audit::fhir::audit_event(&postern_audit::atna::map(&e, "gw").unwrap(), 0);
    read_back(&good);
    let mut bad_action = good.clone();
    bad_action["action"] = "X".into();
    assert!(serde_json::from_value::<AuditEvent>(bad_action).is_err());
    let mut no_source = good.clone();
    no_source.as_object_mut().unwrap().remove("source");
    assert!(serde_json::from_value::<AuditEvent>(no_source).is_err());
    let mut bad_time = good;
    bad_time["recorded"] = "yesterday".into();
    assert!(serde_json::from_value::<AuditEvent>(bad_time).is_err());
}
