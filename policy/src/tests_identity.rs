//! Who the request names, as the gateway's sign-in hands it over: user names compared ignoring
//! case, and the sign-in age the gateway asks the identity provider for.

use std::time::Duration;

use crate::tests_lang::{at, parse};
use crate::*;

const ENDPOINTS: &str = "[[endpoints]]\nname = \"pacs\"\nsite = \"s\"\nhost = \"h\"\nport = 104\nprotocol = \"dicom\"\n\n[[endpoints]]\nname = \"ris\"\nsite = \"s\"\nhost = \"h\"\nport = 443\nprotocol = \"https\"\n";

#[test]
fn users_match_ignoring_case_in_rules_and_groups() {
    let p = parse(&format!(
        "{ENDPOINTS}\n[[groups]]\nname = \"locums\"\nusers = [\"Locum.One@Hospital.example\"]\n\n[[rules]]\nid = \"ann\"\neffect = \"allow\"\nusers = [\"Ann.Jones@Hospital.example\"]\nendpoints = [\"pacs\"]\n\n[[rules]]\nid = \"locums\"\neffect = \"allow\"\ngroups = [\"locums\"]\nendpoints = [\"ris\"]\n"
    ));
    let t = at("2025-03-04T12:00:00Z");
    for user in [
        "ann.jones@hospital.example",
        "ANN.JONES@HOSPITAL.EXAMPLE",
        "Ann.Jones@Hospital.example",
    ] {
        let d = p.evaluate(&Request::new(user, &[], "pacs", t));
        assert!(d.is_allowed(), "{user}: {}", d.reason);
    }
    let d = p.evaluate(&Request::new("locum.one@HOSPITAL.example", &[], "ris", t));
    assert!(d.is_allowed(), "{}", d.reason);
    let d = p.evaluate(&Request::new(
        "ann.jones@hospital.example.evil",
        &[],
        "pacs",
        t,
    ));
    assert!(!d.is_allowed());
}

#[test]
fn the_sign_in_age_to_ask_for_is_the_shortest_enforced_max_age() {
    let rule = |id: &str, auth: &str| {
        format!("\n[[rules]]\nid = \"{id}\"\neffect = \"allow\"\ngroups = [\"*\"]\nendpoints = [\"pacs\"]\n{auth}\n")
    };
    let none = parse(&format!("{ENDPOINTS}{}", rule("plain", "")));
    assert_eq!(none.sign_in_max_age(), None);
    let mfa_only = parse(&format!(
        "{ENDPOINTS}{}",
        rule("mfa", "auth = { mfa = true }")
    ));
    assert_eq!(mfa_only.sign_in_max_age(), None);
    let two = parse(&format!(
        "{ENDPOINTS}{}{}",
        rule("day", "auth = { max_age = \"12h\" }"),
        rule("hour", "auth = { mfa = true, max_age = \"1h\" }")
    ));
    assert_eq!(two.sign_in_max_age(), Some(Duration::from_secs(3600)));
    // A report-only condition is not enforced, so it asks the IdP for nothing.
    let reported = parse(&format!(
        "{ENDPOINTS}{}{}",
        rule("day", "auth = { max_age = \"12h\" }"),
        rule(
            "hour",
            "auth = { max_age = \"1h\" }\nreport_only = [\"auth\"]"
        )
    ));
    assert_eq!(
        reported.sign_in_max_age(),
        Some(Duration::from_secs(12 * 3600))
    );
}

#[test]
fn an_unknown_sign_in_time_fails_a_max_age_rule_and_says_so() {
    let p = parse(&format!(
        "{ENDPOINTS}\n[[rules]]\nid = \"fresh\"\neffect = \"allow\"\ngroups = [\"*\"]\nendpoints = [\"pacs\"]\nauth = {{ max_age = \"12h\" }}\n"
    ));
    let t = at("2025-03-04T12:00:00Z");
    let d = p.evaluate(&Request::new("a", &[], "pacs", t).with_auth(true, None));
    assert!(!d.is_allowed());
    assert!(
        d.reason.contains("the sign-in time is unknown"),
        "{}",
        d.reason
    );
    let d = p.evaluate(&Request::new("a", &[], "pacs", t));
    assert!(!d.is_allowed(), "{}", d.reason);
}
