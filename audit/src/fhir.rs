//! FHIR output: audit events as R4 `AuditEvent` resources aligned with IHE Basic Audit Log
//! Patterns (BALP), built from the same mapping as the ATNA messages ([`crate::atna::map`]).
//!
//! * `type`: the DICOM EventID (`http://dicom.nema.org/resources/ontology/DCM`), or for a web
//!   request BALP's `rest` with the RESTful interaction as a subtype, the DICOM EventID beside it;
//! * `subtype`: the DICOM EventTypeCodes; `action`, `recorded`, `outcome`, `outcomeDesc`;
//! * `agent`: the user (`who.identifier` = IdP subject, `requestor` true, `network` = source
//!   address, `altId` = `AETITLES=…` where DICOM applies), the gateway, the connector, the PACS;
//! * `source.observer`: the gateway node;
//! * `entity`: the patient as a `Patient` identifier, studies as `ImagingStudy` identifiers
//!   (`urn:dicom:uid`, `urn:oid:…`), the query keys in `entity.query` (base64).
//!
//! Written with `serde_json` only; the tests read every resource back with a FHIR model crate.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::atna::{sop_class_display, Code, Mapped, ObjectClass, Outcome};

/// The DICOM code system's FHIR URI.
pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// RFC 3881 / ATNA code system as FHIR names it for participant object ID types.
const RFC3881: &str = "http://terminology.hl7.org/CodeSystem/rfc3881";

fn system_of(c: &Code) -> &'static str {
    match c.scheme {
        "DCM" => DCM,
        "RFC-3881" => RFC3881,
        _ => "urn:postern:audit",
    }
}

fn coding(c: &Code) -> Value {
    json!({"system": system_of(c), "code": c.code, "display": c.meaning})
}

/// A FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn resource_id(source: &str, seq: Option<u64>, index: u64) -> String {
    let mut id: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if id.is_empty() {
        id.push_str("postern");
    }
    match seq {
        Some(seq) => id.push_str(&format!("-{seq}")),
        None => id.push_str(&format!("-x{index}")),
    }
    id
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The `AuditEvent` of `m`. `index` makes ids unique for messages without a `seq`.
pub fn audit_event(m: &Mapped, index: u64) -> Value {
    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    ev.insert("id".into(), json!(resource_id(&m.source_id, m.seq, index)));
    let mut subtype: Vec<Value> = m.type_codes.iter().map(coding).collect();
    match &m.http_method {
        Some(method) => {
            // BALP RESTful pattern: type rest, the interaction as subtype.
            ev.insert(
                "type".into(),
                json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                       "code": "rest", "display": "RESTful Operation"}),
            );
            let interaction = match method.as_str() {
                "POST" => "create",
                "PUT" | "PATCH" => "update",
                "DELETE" => "delete",
                _ => "read",
            };
            subtype.insert(
                0,
                json!({"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}),
            );
            subtype.push(coding(&m.event_id));
        }
        None => {
            ev.insert("type".into(), coding(&m.event_id));
        }
    }
    if !subtype.is_empty() {
        ev.insert("subtype".into(), Value::Array(subtype));
    }
    ev.insert("action".into(), json!(m.action));
    ev.insert("recorded".into(), json!(m.when));
    ev.insert(
        "outcome".into(),
        json!(match m.outcome {
            Outcome::Success => "0",
            Outcome::Minor => "4",
            Outcome::Serious => "8",
        }),
    );
    if let Some(d) = &m.outcome_desc {
        ev.insert("outcomeDesc".into(), json!(d));
    }
    if let Some(j) = &m.justification {
        // Break-glass: emergency treatment, with the reason typed.
        ev.insert(
            "purposeOfEvent".into(),
            json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                 "code": "ETREAT", "display": "Emergency Treatment"}],
                    "text": j}]),
        );
    }
    let agents: Vec<Value> = m
        .participants
        .iter()
        .map(|p| {
            let mut a = Map::new();
            let ty = match p.roles.first() {
                Some(r) => coding(r),
                None if p.person => json!({
                    "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                    "code": "humanuser", "display": "human user"}),
                None => coding(&crate::atna::codes::ROLE_APPLICATION),
            };
            a.insert("type".into(), json!({"coding": [ty]}));
            let mut who = Map::new();
            who.insert("identifier".into(), json!({"value": p.user_id}));
            if let Some(n) = &p.user_name {
                who.insert("display".into(), json!(n));
            }
            a.insert("who".into(), Value::Object(who));
            if let Some(alt) = &p.alt_user_id {
                a.insert("altId".into(), json!(alt));
            }
            if let Some(n) = &p.user_name {
                a.insert("name".into(), json!(n));
            }
            a.insert("requestor".into(), json!(p.requestor));
            if let Some((address, kind)) = &p.network {
                a.insert("network".into(), json!({"address": address, "type": kind}));
            }
            Value::Object(a)
        })
        .collect();
    ev.insert("agent".into(), Value::Array(agents));
    let mut source = Map::new();
    if let Some(site) = &m.site {
        source.insert("site".into(), json!(site));
    }
    source.insert(
        "observer".into(),
        json!({"identifier": {"value": m.source_id}, "display": m.source_id}),
    );
    source.insert(
        "type".into(),
        json!([{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server"}]),
    );
    ev.insert("source".into(), Value::Object(source));
    let entities: Vec<Value> = m
        .objects
        .iter()
        .map(|o| {
            let mut e = Map::new();
            let what = match o.class {
                ObjectClass::Patient => json!({"type": "Patient",
                    "identifier": {"type": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR", "display": "Medical record number"}]},
                        "value": o.id}}),
                ObjectClass::Study => json!({"type": "ImagingStudy",
                    "identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{}", o.id)}}),
                ObjectClass::SopClass => json!({
                    "identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{}", o.id)},
                    "display": sop_class_display(&o.id)}),
                ObjectClass::User => json!({"type": "Practitioner",
                    "identifier": {"value": o.id}}),
                ObjectClass::Node => json!({"type": "Device", "identifier": {"value": o.id}}),
                ObjectClass::AuditLog => json!({"identifier": {"system": "urn:ietf:rfc:3986",
                    "value": o.id}}),
            };
            e.insert("what".into(), what);
            e.insert(
                "type".into(),
                json!({"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                       "code": o.type_code}),
            );
            e.insert(
                "role".into(),
                json!({"system": "http://terminology.hl7.org/CodeSystem/object-role",
                       "code": o.role}),
            );
            if o.class == ObjectClass::Patient || o.class == ObjectClass::Study {
                e.insert(
                    "lifecycle".into(),
                    json!({"system": "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle",
                           "code": "6", "display": "Access / Use"}),
                );
            }
            if !o.name.is_empty() {
                e.insert("name".into(), json!(o.name));
            }
            if let Some(q) = &o.query {
                e.insert("query".into(), json!(b64(q)));
            }
            let mut details: Vec<Value> = o
                .details
                .iter()
                .map(|(t, v)| json!({"type": t, "valueString": v}))
                .collect();
            for a in &o.accessions {
                details.push(json!({"type": "AccessionNumber", "valueString": a}));
            }
            if let Some((n, _)) = &o.instances {
                details.push(json!({"type": "NumberOfInstances", "valueString": n.to_string()}));
            }
            if !details.is_empty() {
                e.insert("detail".into(), Value::Array(details));
            }
            Value::Object(e)
        })
        .collect();
    if !entities.is_empty() {
        ev.insert("entity".into(), Value::Array(entities));
    }
    let mut ev = Value::Object(ev);
    prune(&mut ev);
    ev
}

/// Removes empty strings, arrays and objects: FHIR allows no empty values (ele-1), and an
/// element with nothing known is better left out.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => {
            a.retain_mut(prune);
            !a.is_empty()
        }
        Value::Object(o) => {
            o.retain(|_, x| prune(x));
            !o.is_empty()
        }
        _ => true,
    }
}

/// A `Bundle` of type `collection` holding `resources`.
pub fn bundle(resources: Vec<Value>, timestamp: &str) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"resource": r}))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timestamp,
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_left_out() {
        let mut v = json!({"a": "", "b": [" ", {"c": ""}], "d": {"e": "x", "f": []}, "g": 0});
        assert!(prune(&mut v));
        assert_eq!(v, json!({"d": {"e": "x"}, "g": 0}));
    }

    #[test]
    fn ids_are_fhir_ids() {
        assert_eq!(resource_id("gw a/1", Some(7), 0), "gw-a-1-7");
        assert_eq!(resource_id("", None, 3), "postern-x3");
        let long = resource_id(&"x".repeat(100), Some(u64::MAX), 0);
        assert!(long.len() <= 64, "{long}");
    }
}
