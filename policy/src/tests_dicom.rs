//! DICOM conditions (issue #17): an endpoint's `called_ae`, a rule's `dicom_services` and
//! `calling_ae` (titles, prefixes, `{user.ae}` from `[dicom] ae_titles` or the identity
//! provider), and the grant an allow decision carries for the connector to enforce.

use std::time::SystemTime;

use crate::tests_lang::{errors, parse};
use crate::*;

const POLICY: &str = r#"
[dicom]
ae_titles = { "ann.jones@nhs.example" = ["RAD_JONES", "RAD_JONES2"], "Bob@nhs.example" = ["RAD_BOB"] }

[[groups]]
name = "radiologists"
values = ["Radiologists"]

[[groups]]
name = "pacs-admins"
values = ["PacsAdmins"]

[[groups]]
name = "locums"
values = ["Locums"]

[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "10.1.2.4"
port = 104
protocol = "dicom"
called_ae = "ORTHANC"

[[endpoints]]
name = "ris-web"
site = "truro"
host = "10.1.2.5"
port = 443
protocol = "https"

[[rules]]
id = "admins-store"
effect = "allow"
groups = ["pacs-admins"]
endpoints = ["pacs-dicom"]
dicom_services = ["store", "echo", "find"]
calling_ae = ["PACSADMIN*"]

[[rules]]
id = "reporters-read"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom", "ris-web"]
calling_ae = ["{user.ae}", "VIEWER"]

[[rules]]
id = "locums-any"
effect = "allow"
groups = ["locums"]
endpoints = ["pacs-dicom"]
"#;

fn decide(p: &Policy, user: &str, group: &str, endpoint: &str, idp: &[String]) -> Decision {
    let groups = vec![group.to_owned()];
    let req = Request::new(user, &groups, endpoint, SystemTime::now()).with_ae_titles(idp);
    p.evaluate(&req)
}

#[test]
fn an_allow_on_a_dicom_endpoint_carries_the_grant_the_connector_enforces() {
    let p = parse(POLICY);
    let d = decide(
        &p,
        "ANN.JONES@nhs.example",
        "Radiologists",
        "pacs-dicom",
        &[],
    );
    assert!(d.is_allowed(), "{d}");
    let grant = d.limits.dicom.expect("a DICOM grant");
    // `{user.ae}` became the user's titles (user compared case-insensitively), then VIEWER.
    assert_eq!(grant.calling_ae, ["RAD_JONES", "RAD_JONES2", "VIEWER"]);
    assert_eq!(grant.called_ae.as_deref(), Some("ORTHANC"));
    // No `dicom_services`: reading only.
    assert_eq!(grant.services, ["echo", "find", "get", "move"]);

    // The identity provider's titles join the policy's.
    let d = decide(
        &p,
        "bob@nhs.example",
        "Radiologists",
        "pacs-dicom",
        &["RAD_BOB_IDP".to_owned(), "RAD_BOB".to_owned()],
    );
    let grant = d.limits.dicom.unwrap();
    assert_eq!(grant.calling_ae, ["RAD_BOB", "RAD_BOB_IDP", "VIEWER"]);

    // Listed services, in the canonical order; a prefix pattern.
    let d = decide(&p, "carol@nhs.example", "PacsAdmins", "pacs-dicom", &[]);
    let grant = d.limits.dicom.unwrap();
    assert_eq!(grant.services, ["echo", "find", "store"]);
    assert_eq!(grant.calling_ae, ["PACSADMIN*"]);

    // No `calling_ae`: any title (the connector still checks the called AE).
    let d = decide(&p, "dave@nhs.example", "Locums", "pacs-dicom", &[]);
    let grant = d.limits.dicom.unwrap();
    assert!(grant.calling_ae.is_empty());

    // Not a DICOM endpoint: no grant.
    let d = decide(&p, "ann.jones@nhs.example", "Radiologists", "ris-web", &[]);
    assert!(d.is_allowed());
    assert!(d.limits.dicom.is_none());
}

#[test]
fn a_user_without_an_ae_title_is_denied_when_the_rule_accepts_only_their_own() {
    let text = POLICY.replace(
        r#"calling_ae = ["{user.ae}", "VIEWER"]"#,
        r#"calling_ae = ["{user.ae}"]"#,
    );
    let p = parse(&text);
    let d = decide(&p, "erin@nhs.example", "Radiologists", "pacs-dicom", &[]);
    assert!(!d.is_allowed());
    assert_eq!(d.rule.as_deref(), Some("reporters-read"));
    assert!(
        d.reason.contains("user 'erin@nhs.example' has none")
            && d.reason.contains("[dicom] ae_titles"),
        "{}",
        d.reason
    );
    // With a title from the identity provider, allowed.
    let d = decide(
        &p,
        "erin@nhs.example",
        "Radiologists",
        "pacs-dicom",
        &["RAD_ERIN".into()],
    );
    assert_eq!(d.limits.dicom.unwrap().calling_ae, ["RAD_ERIN"]);
}

#[test]
fn dicom_keys_are_checked_with_clear_messages() {
    let cases: [(&str, &str, &str); 7] = [
        (
            r#"dicom_services = ["find", "print"]"#,
            r#"dicom_services = ["store", "echo", "find"]"#,
            "unknown DICOM service 'print' in `dicom_services` of rule 'admins-store'",
        ),
        (
            r#"calling_ae = ["TOO_LONG_FOR_AN_AE_TITLE"]"#,
            r#"calling_ae = ["PACSADMIN*"]"#,
            "AE title 'TOO_LONG_FOR_AN_AE_TITLE' in `calling_ae` of rule 'admins-store' is longer than 16 characters",
        ),
        (
            r#"calling_ae = ["A*B"]"#,
            r#"calling_ae = ["PACSADMIN*"]"#,
            "with `*` only at the end",
        ),
        (
            r#"calling_ae = []"#,
            r#"calling_ae = ["PACSADMIN*"]"#,
            "`calling_ae` of rule 'admins-store' is empty",
        ),
        (
            r#"called_ae = "BAD\\AE""#,
            r#"called_ae = "ORTHANC""#,
            "AE title 'BAD\\AE' in `called_ae` of endpoint 'pacs-dicom'",
        ),
        (
            "port = 443\nprotocol = \"https\"\ncalled_ae = \"X\"",
            "port = 443\nprotocol = \"https\"",
            "`called_ae` of endpoint 'ris-web' is only for DICOM endpoints",
        ),
        (
            r#""Bob@nhs.example" = ["RAD BOB\t"]"#,
            r#""Bob@nhs.example" = ["RAD_BOB"]"#,
            "in `ae_titles` of user 'Bob@nhs.example' in [dicom] ae_titles",
        ),
    ];
    for (bad, good, expected) in cases {
        assert!(POLICY.contains(good), "fixture lacks {good}");
        let text = POLICY.replace(good, bad);
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.message.contains(expected)),
            "{bad}: expected '{expected}' in {:?}",
            errs.iter().map(|e| &e.message).collect::<Vec<_>>()
        );
    }
    // Deny rules cannot have them.
    let text = POLICY.replace(
        "id = \"locums-any\"\neffect = \"allow\"",
        "id = \"locums-any\"\neffect = \"deny\"\ndicom_services = [\"find\"]",
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e
        .message
        .contains("`dicom_services` only applies to allow rules")));
}

#[test]
fn the_formatter_knows_the_dicom_keys() {
    let text = "[[endpoints]]\ncalled_ae = \"ORTHANC\"\nname = \"pacs\"\n\n[[rules]]\ncalling_ae = [\"VIEWER\"]\ndicom_services = [\"find\"]\nid = \"r\"\n";
    let out = format_policy(text, "p.toml").unwrap();
    assert!(
        out.find("name = \"pacs\"").unwrap() < out.find("called_ae").unwrap(),
        "{out}"
    );
    assert!(
        out.find("id = \"r\"").unwrap() < out.find("dicom_services").unwrap(),
        "{out}"
    );
    assert!(
        out.find("dicom_services").unwrap() < out.find("calling_ae").unwrap(),
        "{out}"
    );
}

#[test]
fn inline_tests_check_the_grant_as_the_connector_would() {
    let tests = r#"
[[tests]]
name = "ann's own title is accepted"
user = "ann.jones@nhs.example"
groups = ["Radiologists"]
endpoint = "pacs-dicom"
at = 2026-03-04T12:00:00Z
calling_ae = "RAD_JONES"
dicom_service = "get"
expect = "allow"
rule = "reporters-read"

[[tests]]
name = "someone else's title is refused"
user = "ann.jones@nhs.example"
groups = ["Radiologists"]
endpoint = "pacs-dicom"
at = 2026-03-04T12:00:00Z
calling_ae = "RAD_BOB"
expect = "deny"
rule = "reporters-read"
reason_contains = "does not accept calling AE title 'RAD_BOB'"

[[tests]]
name = "reporters cannot store"
user = "ann.jones@nhs.example"
groups = ["Radiologists"]
endpoint = "pacs-dicom"
at = 2026-03-04T12:00:00Z
calling_ae = "VIEWER"
dicom_service = "store"
expect = "deny"
reason_contains = "does not allow the DICOM service 'store' (allowed: echo, find, get, move)"

[[tests]]
name = "a title from the identity provider"
user = "erin@nhs.example"
groups = ["Radiologists"]
endpoint = "pacs-dicom"
at = 2026-03-04T12:00:00Z
ae_titles = ["RAD_ERIN"]
calling_ae = "RAD_ERIN"
expect = "allow"

[[tests]]
name = "wrong expectation"
user = "carol@nhs.example"
groups = ["PacsAdmins"]
endpoint = "pacs-dicom"
at = 2026-03-04T12:00:00Z
calling_ae = "PACSADMIN_1"
dicom_service = "store"
expect = "deny"
"#;
    let p = parse(&format!("{POLICY}{tests}"));
    let report = p.run_tests();
    assert_eq!(report.outcomes.len(), 5);
    let failed: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.case.name.as_str())
        .collect();
    assert_eq!(failed, ["wrong expectation"], "{report}");
    let bad =
        format!("{POLICY}{tests}").replace("dicom_service = \"get\"", "dicom_service = \"print\"");
    let errs = errors(&bad);
    assert!(errs.iter().any(|e| e
        .message
        .contains("unknown DICOM service 'print' in `dicom_service`")));
}
