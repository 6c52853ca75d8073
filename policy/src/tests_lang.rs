//! Unit tests of each language construct of policy v1: groups, endpoint selection, conditions,
//! limits, report-only mode, validation errors and warnings, inline tests, directories,
//! explain, diff and `valid_until`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::*;

pub(crate) fn at(text: &str) -> SystemTime {
    SystemTime::from(text.parse::<jiff::Timestamp>().unwrap())
}

pub(crate) fn parse(text: &str) -> Policy {
    match Policy::parse(text, "p.toml") {
        Ok(policy) => policy,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

pub(crate) fn errors(text: &str) -> Vec<Diagnostic> {
    match Policy::parse(text, "p.toml") {
        Ok(_) => panic!("expected errors, the policy parsed:\n{text}"),
        Err(e) => {
            assert!(!e.diagnostics().is_empty());
            e.diagnostics().to_vec()
        }
    }
}

fn only_error(text: &str) -> Diagnostic {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

/// Endpoints of two sites, with labels and egress classes; lines 1–27.
pub(crate) const SITES: &str = r#"[defaults]
zone = "Europe/London"

[[endpoints]]
name = "truro-pacs-dicom"
site = "truro"
host = "10.1.1.1"
port = 104
protocol = "dicom"
labels = ["pacs", "truro"]

[[endpoints]]
name = "truro-viewer"
site = "truro"
host = "10.1.1.2"
port = 443
protocol = "https"
egress = "display"
labels = ["pacs", "truro"]

[[endpoints]]
name = "penzance-rdp"
site = "penzance"
host = "10.2.1.1"
ports = "3389-3390"
protocol = "rdp"
egress = "display"
"#;

const GROUPS: &str = r#"
[[groups]]
name = "consultants"
values = ["Rad-Consultants", "0f3e-guid"]

[[groups]]
name = "locums"
claim = "roles"
values = ["Locum"]
users = ["Lee@Truro.nhs.uk"]
"#;

fn policy(rules: &str) -> Policy {
    parse(&format!("{SITES}{GROUPS}\n{rules}"))
}

fn text(rules: &str) -> String {
    format!("{SITES}{GROUPS}\n{rules}")
}

const TUESDAY_NOON: &str = "2025-03-04T12:00:00Z";

fn ask<'a>(user: &'a str, groups: &'a [String], endpoint: &'a str) -> Request<'a> {
    Request::new(user, groups, endpoint, at(TUESDAY_NOON))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Groups

#[test]
fn groups_map_claim_values_and_explicit_users() {
    let p = policy(
        r#"[[rules]]
id = "c"
effect = "allow"
groups = ["consultants"]
endpoints = ["*"]

[[rules]]
id = "l"
effect = "allow"
groups = ["locums"]
endpoints = ["truro-viewer"]
"#,
    );
    let consultant = strings(&["Other", "0f3e-guid"]);
    assert_eq!(
        p.evaluate(&ask("a@x", &consultant, "truro-pacs-dicom"))
            .rule
            .as_deref(),
        Some("c")
    );
    // Claim values are compared exactly.
    let wrong_case = strings(&["rad-consultants"]);
    assert!(!p
        .evaluate(&ask("a@x", &wrong_case, "truro-pacs-dicom"))
        .is_allowed());
    // A group mapped from another claim: the `groups` claim does not count...
    let locum_in_groups = strings(&["Locum"]);
    assert!(!p
        .evaluate(&ask("b@x", &locum_in_groups, "truro-viewer"))
        .is_allowed());
    // ...the `roles` claim does.
    let roles = strings(&["Locum"]);
    let req = ask("b@x", &[], "truro-viewer").with_claim("roles", &roles);
    assert_eq!(p.evaluate(&req).rule.as_deref(), Some("l"));
    // Explicit members, case-insensitively.
    assert_eq!(
        p.evaluate(&ask("lee@truro.NHS.uk", &[], "truro-viewer"))
            .rule
            .as_deref(),
        Some("l")
    );
    // `with_claim("groups", …)` adds to the groups given to `new`.
    let extra = strings(&["Rad-Consultants"]);
    let req = ask("c@x", &[], "truro-viewer").with_claim("groups", &extra);
    assert_eq!(p.evaluate(&req).rule.as_deref(), Some("c"));
}

#[test]
fn everyone_means_every_user() {
    let p = policy(
        r#"[[rules]]
id = "all-viewer"
effect = "allow"
groups = ["*"]
endpoints = ["truro-viewer"]
"#,
    );
    assert!(p
        .evaluate(&ask("anyone@x", &[], "truro-viewer"))
        .is_allowed());
    assert!(!p
        .evaluate(&ask("anyone@x", &[], "truro-pacs-dicom"))
        .is_allowed());
}

#[test]
fn undefined_duplicate_and_empty_groups_are_errors() {
    let all = errors(&text(
        r#"[[groups]]
name = "locums"
values = ["x"]

[[groups]]
name = "nobody"

[[rules]]
id = "r"
effect = "allow"
groups = ["consultant", "ghosts"]
endpoints = ["*"]
"#,
    ));
    let kinds: Vec<ErrorKind> = all.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::DuplicateGroup,
            ErrorKind::NoSubjects,
            ErrorKind::UnknownGroup,
            ErrorKind::UnknownGroup
        ],
        "{all:#?}"
    );
    assert_eq!(all[0].message, "duplicate group name 'locums'");
    assert_eq!(all[0].hint.as_deref(), Some("first defined on line 34"));
    assert_eq!(
        all[1].message,
        "group 'nobody' lists neither `values` nor `users`, so nobody is in it"
    );
    assert_eq!(
        all[2].message,
        "rule 'r' references unknown group 'consultant'"
    );
    assert_eq!(all[2].hint.as_deref(), Some("did you mean 'consultants'?"));
    assert_eq!((all[2].line, all[2].column), (49, 11));
    assert_eq!(
        all[3].hint.as_deref(),
        Some("defined groups: consultants, locums, nobody")
    );
}

#[test]
fn without_groups_section_rule_groups_are_claim_values() {
    let p = parse(&format!(
        "{SITES}\n[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"Radiologists\"]\nendpoints = [\"truro-viewer\"]\n"
    ));
    let groups = strings(&["Radiologists"]);
    assert!(p.evaluate(&ask("a", &groups, "truro-viewer")).is_allowed());
    assert!(p.warnings().is_empty(), "{:#?}", p.warnings());
}

#[test]
fn unused_groups_are_warnings() {
    let p = policy(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\"]\nendpoints = [\"*\"]\n",
    );
    let warnings = p.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert_eq!(warnings[0].kind, ErrorKind::MatchesNothing);
    assert_eq!(
        warnings[0].message,
        "group 'locums' is not used by any rule"
    );
    assert!(warnings[0]
        .to_string()
        .starts_with("p.toml:33:1: warning: "));
}

// ---------------------------------------------------------------------------------------------
// Endpoints and selection

#[test]
fn endpoints_have_port_ranges_egress_and_labels() {
    let p = parse(&format!("deny_all = true\n{SITES}"));
    let rdp = p.endpoint("penzance-rdp").unwrap();
    assert_eq!(
        (rdp.port, rdp.ports),
        (
            3389,
            PortRange {
                first: 3389,
                last: 3390
            }
        )
    );
    assert_eq!(rdp.egress, Egress::Display);
    assert!(rdp.labels.is_empty());
    let dicom = p.endpoint("truro-pacs-dicom").unwrap();
    assert_eq!(dicom.egress, Egress::Data, "data is the default");
    assert_eq!(dicom.labels, ["pacs", "truro"]);
    assert_eq!(dicom.ports.to_string(), "104");
    assert_eq!(rdp.ports.to_string(), "3389-3390");
}

#[test]
fn bad_ports_and_egress_are_errors() {
    let all = errors(
        "[[endpoints]]\nname = \"a\"\nsite = \"s\"\nhost = \"h\"\nports = \"20-10\"\nprotocol = \"tcp\"\negress = \"pixels\"\nlabels = [\"Bad Label\"]\n\n[[endpoints]]\nname = \"b\"\nsite = \"s\"\nhost = \"h\"\nport = 1\nports = \"1-2\"\nprotocol = \"tcp\"\n",
    );
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (5, ErrorKind::InvalidValue),
            (7, ErrorKind::InvalidValue),
            (8, ErrorKind::InvalidName),
            (15, ErrorKind::InvalidValue),
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "ports '20-10' of endpoint 'a' is not a port range"
    );
    assert_eq!(
        all[1].message,
        "endpoint 'a' has unknown egress class 'pixels'"
    );
    assert_eq!(all[3].message, "endpoint 'b' has both `port` and `ports`");
}

#[test]
fn requested_port_must_be_in_the_range() {
    let p = policy(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"*\"]\nendpoints = [\"*\"]\n",
    );
    assert!(p
        .evaluate(&ask("a", &[], "penzance-rdp").with_port(3390))
        .is_allowed());
    let d = p.evaluate(&ask("a", &[], "penzance-rdp").with_port(3391));
    assert!(!d.is_allowed());
    assert_eq!(
        d.reason,
        "Denied: port 3391 is not a port of penzance-rdp (ports 3389-3390)"
    );
}

#[test]
fn rules_select_endpoints_by_name_pattern_label_and_egress() {
    let p = policy(
        r#"[[rules]]
id = "by-pattern"
effect = "allow"
users = ["pattern@x"]
endpoints = ["truro-*"]

[[rules]]
id = "by-label"
effect = "allow"
users = ["label@x"]
endpoint_labels = ["pacs"]

[[rules]]
id = "by-egress"
effect = "allow"
users = ["egress@x"]
egress = "display"

[[rules]]
id = "label-and-egress"
effect = "allow"
users = ["both@x"]
endpoint_labels = ["truro"]
egress = "data"

[[rules]]
id = "names-or-pattern"
effect = "allow"
users = ["names@x"]
endpoints = ["penzance-rdp", "*-viewer"]
"#,
    );
    let reach = |user: &str| -> Vec<String> {
        p.endpoints()
            .iter()
            .filter(|e| p.evaluate(&ask(user, &[], &e.name)).is_allowed())
            .map(|e| e.name.clone())
            .collect()
    };
    assert_eq!(reach("pattern@x"), ["truro-pacs-dicom", "truro-viewer"]);
    assert_eq!(reach("label@x"), ["truro-pacs-dicom", "truro-viewer"]);
    assert_eq!(reach("egress@x"), ["truro-viewer", "penzance-rdp"]);
    assert_eq!(reach("both@x"), ["truro-pacs-dicom"]);
    assert_eq!(reach("names@x"), ["truro-viewer", "penzance-rdp"]);
}

#[test]
fn selections_that_match_nothing_are_warnings_and_bad_patterns_errors() {
    let p = policy(
        r#"[[rules]]
id = "nothing"
effect = "allow"
groups = ["consultants", "locums"]
endpoints = ["bodmin-*"]
"#,
    );
    let messages: Vec<&str> = p.warnings().iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "rule 'nothing' selects no endpoint (endpoints bodmin-*), so it matches nothing",
            "endpoint pattern 'bodmin-*' of rule 'nothing' matches no endpoint",
        ]
    );
    let d = only_error(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\"]\nendpoints = [\"Truro_*\"]\n",
    ));
    assert_eq!(d.kind, ErrorKind::InvalidName);
    let d = only_error(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\"]\n",
    ));
    assert_eq!(d.kind, ErrorKind::MissingField);
    assert!(d.hint.unwrap().contains("endpoint_labels"));
}

// ---------------------------------------------------------------------------------------------
// Conditions

fn device(registered: bool, approved: bool, user_verified: bool) -> DeviceFacts {
    DeviceFacts {
        registered,
        approved,
        user_verified,
        posture: Default::default(),
    }
}

#[test]
fn device_conditions_and_missing_facts() {
    let p = policy(
        r#"[[rules]]
id = "data"
effect = "allow"
groups = ["consultants"]
egress = "data"

[rules.device]
registered = true
approved = true
posture = { os = ["windows-11", "macos-15"], disk_encrypted = "true" }
"#,
    );
    let g = strings(&["Rad-Consultants"]);
    let mut good = device(true, true, false);
    good.posture.insert("os".into(), "macos-15".into());
    good.posture.insert("disk_encrypted".into(), "true".into());
    let req = ask("a", &g, "truro-pacs-dicom").with_device(&good);
    assert!(p.evaluate(&req).is_allowed());

    let mut old_os = good.clone();
    old_os.posture.insert("os".into(), "windows-7".into());
    let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&old_os));
    assert_eq!(
        d.reason,
        "Denied: access to truro-pacs-dicom for consultants requires device posture 'os' to be windows-11 or macos-15"
    );

    let unapproved = device(true, false, true);
    let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&unapproved));
    assert_eq!(
        d.reason,
        "Denied: access to truro-pacs-dicom for consultants requires an approved device; this device is not approved"
    );

    // No device facts at all: the allow does not match.
    let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom"));
    assert!(!d.is_allowed());
    assert!(
        d.reason
            .ends_with("requires a registered device; the device is unknown"),
        "{}",
        d.reason
    );
    // A missing posture fact is unknown too.
    let bare = device(true, true, true);
    let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&bare));
    assert!(!d.is_allowed());
}

#[test]
fn deny_conditions_fail_closed_on_missing_facts() {
    let p = policy(
        r#"[[rules]]
id = "all"
effect = "allow"
groups = ["*"]
endpoints = ["*"]

[[rules]]
id = "no-unmanaged"
effect = "deny"
groups = ["*"]
egress = "data"
device = { approved = false }
"#,
    );
    let approved = device(true, true, true);
    let unapproved = device(true, false, true);
    let req = |d: Option<&DeviceFacts>| {
        let r = ask("a", &[], "truro-pacs-dicom");
        match d {
            Some(d) => p.evaluate(&r.with_device(d)),
            None => p.evaluate(&r),
        }
    };
    assert!(req(Some(&approved)).is_allowed());
    assert_eq!(req(Some(&unapproved)).rule.as_deref(), Some("no-unmanaged"));
    let unknown = req(None);
    assert_eq!(
        unknown.rule.as_deref(),
        Some("no-unmanaged"),
        "unknown never lifts a deny"
    );
    assert_eq!(unknown.matched_allows, ["all"]);
}

#[test]
fn authentication_conditions() {
    let p = policy(
        r#"[[rules]]
id = "fresh-mfa"
effect = "allow"
groups = ["*"]
endpoints = ["*"]
auth = { mfa = true, max_age = "12h" }
"#,
    );
    let now = at(TUESDAY_NOON);
    let two_hours_ago = now - Duration::from_secs(2 * 3600);
    let d = p.evaluate(&ask("a", &[], "truro-viewer").with_auth(true, Some(two_hours_ago)));
    assert!(d.is_allowed());
    // Expires exactly 12 hours after sign-in.
    assert_eq!(d.valid_until, Some(at("2025-03-04T22:00:00Z")));

    let d = p.evaluate(&ask("a", &[], "truro-viewer").with_auth(false, Some(two_hours_ago)));
    assert_eq!(
        d.reason,
        "Denied: access to truro-viewer for everyone requires multi-factor sign-in"
    );
    let stale = now - Duration::from_secs(13 * 3600);
    let d = p.evaluate(&ask("a", &[], "truro-viewer").with_auth(true, Some(stale)));
    assert_eq!(
        d.reason,
        "Denied: access to truro-viewer for everyone requires a sign-in within the last 12h; the last was 13h ago"
    );
    let d = p.evaluate(&ask("a", &[], "truro-viewer").with_auth(true, None));
    assert!(
        d.reason.ends_with("the sign-in time is unknown"),
        "{}",
        d.reason
    );
    assert!(!p.evaluate(&ask("a", &[], "truro-viewer")).is_allowed());
}

#[test]
fn source_networks() {
    let p = policy(
        r#"[[rules]]
id = "on-site"
effect = "allow"
groups = ["*"]
endpoints = ["*"]
source = { allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], deny = ["10.66.0.0/16"] }
"#,
    );
    let from = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        p.evaluate(&ask("a", &[], "truro-viewer").with_source(ip))
    };
    assert!(from("10.1.2.3").is_allowed());
    assert!(
        from("::ffff:10.1.2.3").is_allowed(),
        "IPv4-mapped counts as IPv4"
    );
    assert!(from("2001:db8::1").is_allowed());
    assert!(from("192.0.2.7").is_allowed());
    assert!(!from("192.0.2.8").is_allowed());
    let d = from("10.66.1.1");
    assert_eq!(
        d.reason,
        "Denied: access to truro-viewer for everyone is not allowed from 10.66.1.1"
    );
    let d = p.evaluate(&ask("a", &[], "truro-viewer"));
    assert!(d
        .reason
        .ends_with("needs the client's address, which is unknown"));
}

#[test]
fn bad_networks_are_errors_and_host_bits_warnings() {
    let all = errors(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"*\"]\nendpoints = [\"*\"]\nsource = { allow = [\"10.0.0.0/33\", \"bogus\"] }\n",
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|d| d.kind == ErrorKind::InvalidNetwork));
    assert_eq!(
        all[0].message,
        "'10.0.0.0/33' in `source.allow` of rule 'r' is not a network"
    );
    assert_eq!((all[0].line, all[0].column), (44, 21));
    let p = parse(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\", \"locums\"]\nendpoints = [\"*\"]\nsource = { allow = [\"10.1.2.3/8\"] }\n",
    ));
    assert_eq!(p.warnings().len(), 1);
    assert_eq!(
        p.warnings()[0].hint.as_deref(),
        Some("write \"10.0.0.0/8\"")
    );
}

#[test]
fn zones_and_windows_are_validated() {
    let all = errors(
        "[[endpoints]]\nname = \"e\"\nsite = \"s\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"e\"]\nzone = \"Europe/Londn\"\nwindows = [\"Mon-Fri 09:00-17:00\"]\n\n[[rules]]\nid = \"s\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"e\"]\nwindows = [\"Mon 09:00-09:00\", \"Funday 09:00-10:00\"]\n",
    );
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (13, ErrorKind::UnknownZone),
            (21, ErrorKind::MissingField),
            (21, ErrorKind::NeverMatches),
            (21, ErrorKind::InvalidWindow),
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "unknown time zone 'Europe/Londn' in rule 'r'"
    );
    assert_eq!(
        all[0].hint.as_deref(),
        Some("did you mean \"Europe/London\"?")
    );
    assert!(all[2].message.contains("never matches"));
    assert_eq!(all[1].message, "rule 's' has `windows` but no time zone");
}

#[test]
fn validity_dates() {
    let p = policy(
        r#"[[rules]]
id = "contract"
effect = "allow"
users = ["locum@x"]
endpoints = ["truro-viewer"]
valid_from = 2025-02-01
valid_until = 2025-07-31
"#,
    );
    let when = |t: &str| p.evaluate(&Request::new("locum@x", &[], "truro-viewer", at(t)));
    // The zone is Europe/London (BST in summer): 1 Feb 00:00 GMT, 31 Jul 24:00 BST.
    assert!(!when("2025-01-31T23:59:59Z").is_allowed());
    let d = when("2025-02-01T00:00:00Z");
    assert!(d.is_allowed());
    assert_eq!(d.valid_until, Some(at("2025-07-31T23:00:00Z")));
    assert!(when("2025-07-31T22:59:59Z").is_allowed());
    let d = when("2025-07-31T23:00:00Z");
    assert!(!d.is_allowed());
    assert_eq!(
        d.reason,
        "Denied: access to truro-viewer for user 'locum@x' is valid only from 2025-02-01 until 2025-07-31"
    );
    assert_eq!(d.valid_until, None, "an ended contract does not come back");
    let before = when("2025-01-15T00:00:00Z");
    assert_eq!(before.valid_until, Some(at("2025-02-01T00:00:00Z")));

    let all = errors(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\"]\nendpoints = [\"*\"]\nvalid_from = 2025-07-01\nvalid_until = 2025-06-30\n\n[[rules]]\nid = \"s\"\neffect = \"allow\"\ngroups = [\"locums\"]\nendpoints = [\"*\"]\nvalid_from = 2025-03-08\nvalid_until = 2025-03-09\nwindows = [\"Mon-Fri 09:00-17:00\"]\n\n[[rules]]\nid = \"t\"\neffect = \"allow\"\ngroups = [\"locums\"]\nendpoints = [\"*\"]\nvalid_from = \"2025-03-08\"\nvalid_until = 09:00:00\n",
    ));
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (45, ErrorKind::NeverMatches),
            (54, ErrorKind::NeverMatches),
            (61, ErrorKind::InvalidType),
            (62, ErrorKind::InvalidValue),
        ],
        "{all:#?}"
    );
    assert!(all[1]
        .message
        .contains("none of the windows of rule 's' falls between"));
    assert!(
        all[2].hint.as_deref().unwrap().contains("without quotes"),
        "{:?}",
        all[2]
    );
}

#[test]
fn offset_and_local_datetimes_in_validity() {
    // 09:00 BST is 08:00 UTC; 10:00+02:00 is 08:00 UTC too: an empty range is refused...
    let d = errors(&text(
        "[[rules]]\nid = \"a\"\neffect = \"allow\"\nusers = [\"u@x\"]\nendpoints = [\"truro-viewer\"]\nvalid_from = 2025-06-01T09:00:00\nvalid_until = 2025-06-01T10:00:00+02:00\n",
    ));
    assert_eq!(d[0].kind, ErrorKind::NeverMatches);
    // ...and a one-hour range works.
    let p = policy(
        "[[rules]]\nid = \"a\"\neffect = \"allow\"\nusers = [\"u@x\"]\nendpoints = [\"truro-viewer\"]\nvalid_from = 2025-06-01T09:00:00\nvalid_until = 2025-06-01T11:00:00+02:00\n",
    );
    let when = |t: &str| {
        p.evaluate(&Request::new("u@x", &[], "truro-viewer", at(t)))
            .is_allowed()
    };
    assert!(!when("2025-06-01T07:59:59Z"));
    assert!(when("2025-06-01T08:00:00Z"));
    assert!(!when("2025-06-01T09:00:00Z"));
}

// ---------------------------------------------------------------------------------------------
// Limits and report-only

#[test]
fn limits_and_defaults() {
    let p = parse(
        "[defaults]\nmax_session = \"6h\"\nidle_timeout = \"20m\"\nresume_grace = \"5m\"\n\n[[endpoints]]\nname = \"e\"\nsite = \"s\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\n\n[[rules]]\nid = \"plain\"\neffect = \"allow\"\nusers = [\"a\"]\nendpoints = [\"e\"]\n\n[[rules]]\nid = \"own\"\neffect = \"allow\"\nusers = [\"b\"]\nendpoints = [\"e\"]\nmax_session = \"1h\"\nidle_timeout = \"5m\"\nresume_grace = \"0s\"\nrequire_justification = true\n",
    );
    let d = p.evaluate(&Request::new("a", &[], "e", at(TUESDAY_NOON)));
    assert_eq!(
        d.limits,
        Limits {
            max_session: Some(Duration::from_secs(6 * 3600)),
            idle_timeout: Some(Duration::from_secs(20 * 60)),
            resume_grace: Duration::from_secs(5 * 60),
            require_justification: false,
            dicom: None,
        }
    );
    let d = p.evaluate(&Request::new("b", &[], "e", at(TUESDAY_NOON)).with_justification("  "));
    assert_eq!(
        d.reason,
        "Denied: access to e for user 'b' requires a justification (break-glass access)"
    );
    let d = p
        .evaluate(&Request::new("b", &[], "e", at(TUESDAY_NOON)).with_justification("trauma call"));
    assert_eq!(
        d.limits,
        Limits {
            max_session: Some(Duration::from_secs(3600)),
            idle_timeout: Some(Duration::from_secs(300)),
            resume_grace: Duration::ZERO,
            require_justification: true,
            dicom: None,
        }
    );
    let json = serde_json::to_value(&d.limits).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"max_session": "1h", "idle_timeout": "5m", "resume_grace": "0s", "require_justification": true})
    );

    let all = errors(&text(
        "[[rules]]\nid = \"d\"\neffect = \"deny\"\ngroups = [\"locums\"]\nendpoints = [\"*\"]\nidle_timeout = \"5m\"\nresume_grace = \"1m\"\nrequire_justification = true\n",
    ));
    assert!(
        all.iter().all(|d| d.kind == ErrorKind::LimitOnDeny),
        "{all:#?}"
    );
    assert_eq!(all.len(), 3);
}

#[test]
fn report_only_conditions_are_reported_not_enforced() {
    let p = policy(
        r#"[[rules]]
id = "trial"
effect = "allow"
groups = ["consultants"]
endpoints = ["*"]
windows = ["Mon-Fri 08:00-18:00"]
device = { approved = true, user_verified = true }
auth = { mfa = true }
report_only = ["device", "windows"]
"#,
    );
    let g = strings(&["Rad-Consultants"]);
    let unverified = device(true, false, false);
    let saturday = at("2025-03-08T12:00:00Z");
    let req = Request::new("a", &g, "truro-viewer", saturday)
        .with_device(&unverified)
        .with_auth(true, None);
    let d = p.evaluate(&req);
    assert!(d.is_allowed(), "{d}");
    let reported: Vec<(&str, &str)> = d
        .report_only
        .iter()
        .map(|r| (r.condition.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reported,
        [
            ("windows", "outside Mon–Fri 08:00–18:00 Europe/London"),
            (
                "device.approved",
                "the device is not approved (required: approved)"
            ),
            (
                "device.user_verified",
                "the device is not user-verified (required: user-verified)"
            ),
        ]
    );
    assert!(d.report_only.iter().all(|r| r.rule == "trial"));
    // Report-only conditions do not limit the decision in time.
    assert_eq!(d.valid_until, None);
    // The enforced condition still applies.
    let d = p.evaluate(&Request::new("a", &g, "truro-viewer", saturday).with_auth(false, None));
    assert!(!d.is_allowed());
    assert!(d.report_only.is_empty(), "only matching rules report");

    let d = only_error(&text(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\", \"locums\"]\nendpoints = [\"*\"]\nauth = { mfa = true }\nreport_only = [\"device.approved\"]\n",
    ));
    assert_eq!(d.kind, ErrorKind::UnknownCondition);
    assert_eq!(
        d.hint.as_deref(),
        Some("the rule's conditions are: auth.mfa")
    );
}

#[test]
fn report_only_on_a_deny_rule_is_an_error() {
    // Issue #12: "as if the condition were not written" turns a deny whose only condition is
    // report-only into a deny of everyone it names. The construction is refused instead.
    let all = errors(&text(
        r#"[[rules]]
id = "trial-night-ban"
effect = "deny"
groups = ["locums"]
endpoints = ["*"]
windows = ["Mon-Fri 18:00-08:00"]
report_only = ["windows"]
"#,
    ));
    assert_eq!(all.len(), 1, "{all:#?}");
    let d = &all[0];
    assert_eq!(d.kind, ErrorKind::ReportOnlyOnDeny);
    assert_eq!(d.severity, Severity::Error);
    assert!(
        d.message
            .contains("deny rule 'trial-night-ban' has `report_only`"),
        "{d}"
    );
    assert!(
        d.hint.as_deref().unwrap_or_default().contains("allow rule"),
        "{d}"
    );
    // Also with enforced conditions beside the report-only one.
    let all = errors(&text(
        r#"[[rules]]
id = "d"
effect = "deny"
groups = ["locums"]
endpoints = ["*"]
auth = { mfa = true }
device = { approved = true }
report_only = ["device"]
"#,
    ));
    assert_eq!(
        all.iter().map(|d| d.kind).collect::<Vec<_>>(),
        [ErrorKind::ReportOnlyOnDeny]
    );
}

// ---------------------------------------------------------------------------------------------
// Empty policies

#[test]
fn a_policy_without_endpoints_or_rules_is_refused() {
    for (what, source) in [
        ("empty file", String::new()),
        ("whitespace", "\n  \n".to_owned()),
        ("comments only", "# policy being rewritten\n".to_owned()),
        ("no rules", SITES.to_owned()),
        (
            "no endpoints",
            "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"*\"]\nendpoints = [\"*\"]\n"
                .to_owned(),
        ),
    ] {
        let all = errors(&source);
        let kinds: Vec<ErrorKind> = all.iter().map(|d| d.kind).collect();
        assert!(kinds.contains(&ErrorKind::EmptyPolicy), "{what}: {all:#?}");
        let d = all
            .iter()
            .find(|d| d.kind == ErrorKind::EmptyPolicy)
            .unwrap();
        assert!(d.message.contains("denies every request"), "{what}: {d}");
        assert!(
            d.hint
                .as_deref()
                .unwrap_or_default()
                .contains("deny_all = true"),
            "{what}: {d}"
        );
    }
    // Rules that fail to resolve are their own errors, not an "empty policy".
    let all = errors(&text("[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"consultants\"]\nendpoints = [\"nope\"]\n"));
    assert!(
        all.iter().all(|d| d.kind != ErrorKind::EmptyPolicy),
        "{all:#?}"
    );
}

#[test]
fn deny_all_is_the_explicit_opt_in_to_an_empty_policy() {
    let p = parse("deny_all = true\n");
    assert_eq!(p.rule_count(), 0);
    assert!(p.endpoints().is_empty());
    let p = parse(&format!("deny_all = true\n{SITES}"));
    let g = strings(&["Rad-Consultants"]);
    let d = p.evaluate(&ask("a", &g, "truro-viewer"));
    assert!(!d.is_allowed());
    // `deny_all = false` is the default: no opt-in.
    let all = errors("deny_all = false\n");
    assert!(
        all.iter().any(|d| d.kind == ErrorKind::EmptyPolicy),
        "{all:#?}"
    );
    // A policy that has both endpoints and rules must not claim to deny everything.
    let all = errors(&format!(
        "deny_all = true\n{}",
        text("[[rules]]\nid = \"c\"\neffect = \"allow\"\ngroups = [\"consultants\"]\nendpoints = [\"*\"]\n")
    ));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].kind, ErrorKind::InvalidValue);
    assert!(all[0].message.contains("deny_all"), "{}", all[0]);
    // Wrong type.
    let all = errors("deny_all = \"yes\"\n");
    assert!(
        all.iter().any(|d| d.kind == ErrorKind::InvalidType),
        "{all:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shadowing

#[test]
fn allow_after_a_covering_deny_is_unreachable() {
    let all = errors(&text(
        r#"[[rules]]
id = "no-locums"
effect = "deny"
groups = ["locums", "consultants"]
endpoints = ["*"]

[[rules]]
id = "locums-viewer"
effect = "allow"
groups = ["locums"]
endpoint_labels = ["pacs"]
"#,
    ));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].kind, ErrorKind::Unreachable);
    assert_eq!(all[0].line, 45);
    assert_eq!(
        all[0].message,
        "rule 'locums-viewer' is unreachable: it can never allow anything, because the earlier deny rule 'no-locums' (p.toml:39) already covers every user and endpoint it covers"
    );
}

#[test]
fn conditional_or_narrower_denies_do_not_make_rules_unreachable() {
    let p = policy(
        r#"[[rules]]
id = "weekend-deny"
effect = "deny"
groups = ["locums"]
endpoints = ["*"]
windows = ["Sat,Sun 00:00-24:00"]

[[rules]]
id = "viewer-deny"
effect = "deny"
groups = ["locums"]
endpoints = ["truro-viewer"]

[[rules]]
id = "locums"
effect = "allow"
groups = ["locums", "consultants"]
endpoints = ["truro-*"]

[[rules]]
id = "suspend"
effect = "deny"
groups = ["consultants", "locums"]
endpoints = ["*"]

[[rules]]
id = "suspend-viewer"
effect = "deny"
groups = ["consultants"]
endpoints = ["truro-viewer"]
"#,
    );
    let kinds: Vec<(ErrorKind, &str)> = p
        .warnings()
        .iter()
        .map(|w| (w.kind, w.message.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                ErrorKind::Shadowed,
                "allow rule 'locums' is shadowed: the later deny rule 'suspend' (p.toml:58) always overrides it"
            ),
            (
                ErrorKind::Shadowed,
                "deny rule 'suspend-viewer' can never be the deciding rule: the earlier deny rule 'suspend' (p.toml:58) covers every user and endpoint it covers"
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Inline tests

#[test]
fn inline_tests_run_and_report_failures() {
    let p = policy(
        r#"[[rules]]
id = "viewer"
effect = "allow"
groups = ["consultants", "locums"]
endpoints = ["truro-viewer"]

[[tests]]
name = "consultant views"
user = "a@x"
groups = ["Rad-Consultants"]
endpoint = "truro-viewer"
at = 2025-03-04T12:00:00
expect = "allow"
rule = "viewer"

[[tests]]
name = "wrong expectation"
user = "a@x"
claims = { roles = ["Locum"] }
endpoint = "truro-pacs-dicom"
at = 2025-03-04T12:00:00Z
expect = "allow"

[[tests]]
name = "reason mismatch"
user = "b@x"
endpoint = "truro-viewer"
at = 2025-03-04T12:00:00Z
expect = "deny"
reason_contains = "locums"
"#,
    );
    assert_eq!(p.tests().len(), 3);
    assert_eq!(
        p.tests()[0].at,
        at("2025-03-04T12:00:00Z"),
        "local time in the default zone"
    );
    assert_eq!(p.tests()[1].line, 54);
    let report = p.run_tests();
    assert_eq!((report.passed(), report.failed()), (1, 2));
    let failures: Vec<&str> = report
        .outcomes
        .iter()
        .filter_map(|o| o.failure.as_deref())
        .collect();
    assert_eq!(
        failures,
        [
            "expected allow, got deny (no rule allows user 'a@x' (groups: none) to reach 'truro-pacs-dicom')",
            "expected the reason to contain \"locums\", got \"no rule allows user 'b@x' (groups: none) to reach 'truro-viewer'\"",
        ]
    );
    let table = report.to_string();
    assert!(
        table.lines().next().unwrap().starts_with("RESULT TEST"),
        "{table}"
    );
    assert!(table.contains("\nok     consultant views"), "{table}");
    assert!(
        table.contains("       p.toml:54: expected allow"),
        "{table}"
    );
    assert!(table.ends_with("1 passed, 2 failed"), "{table}");
}

#[test]
fn inline_test_errors() {
    let all = errors(&text(
        r#"[[tests]]
name = "t"
user = "a"
endpoint = "truro-viewer"
expect = "maybe"
rule = "viewr"

[[tests]]
name = "t"
user = "a"
endpoint = "truro-viewer"
at = 2025-03-04
expect = "deny"
source = "10.0.0.0/8"
signed_in_ago = "yesterday"
"#,
    ));
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (39, ErrorKind::MissingField),
            (43, ErrorKind::InvalidValue),
            (44, ErrorKind::UnknownRule),
            (47, ErrorKind::DuplicateTest),
            (50, ErrorKind::InvalidValue),
            (52, ErrorKind::InvalidNetwork),
            (53, ErrorKind::InvalidDuration),
        ],
        "{all:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Directories

#[test]
fn a_directory_is_one_policy_with_errors_in_the_right_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00-endpoints.toml"), SITES).unwrap();
    std::fs::write(dir.path().join("10-groups.toml"), GROUPS).unwrap();
    std::fs::write(
        dir.path().join("20-rules.toml"),
        "[[rules]]\nid = \"a\"\neffect = \"allow\"\ngroups = [\"consultants\", \"locums\"]\nendpoints = [\"truro-viewer\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    let p = Policy::from_path(dir.path()).unwrap();
    assert_eq!(p.origins().len(), 3);
    assert_eq!(p.endpoints().len(), 3);
    let g = strings(&["Rad-Consultants"]);
    assert!(p.evaluate(&ask("x", &g, "truro-viewer")).is_allowed());
    let version = p.version().to_owned();
    assert!(version.starts_with("sha256:"));
    assert_eq!(Policy::from_file(dir.path()).unwrap().version(), version);

    std::fs::write(
        dir.path().join("30-more.toml"),
        "[defaults]\nmax_session = \"1h\"\n\n[[rules]]\nid = \"a\"\neffect = \"deny\"\ngroups = [\"lokums\"]\nendpoints = [\"*\"]\n",
    )
    .unwrap();
    let err = Policy::from_path(dir.path()).unwrap_err();
    let shown: Vec<String> = err
        .diagnostics()
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{} {:?}",
                std::path::Path::new(&d.origin)
                    .file_name()
                    .unwrap()
                    .to_string_lossy(),
                d.line,
                d.column,
                d.kind
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "30-more.toml:1:1 DuplicateDefaults",
            "30-more.toml:5:6 DuplicateRule",
            "30-more.toml:7:11 UnknownGroup",
        ]
    );
    let dup = &err.diagnostics()[1];
    assert!(
        dup.hint
            .as_deref()
            .unwrap()
            .starts_with("first defined at ")
            && dup.hint.as_deref().unwrap().ends_with("20-rules.toml:2"),
        "{dup:?}"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = Policy::from_path(empty.path()).unwrap_err();
    assert!(err.to_string().contains("no *.toml policy files"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Explain, diff, valid_until

#[test]
fn explain_traces_every_candidate_rule() {
    let p = policy(
        r#"[[rules]]
id = "evenings"
description = "Locum evenings"
effect = "allow"
groups = ["locums"]
endpoints = ["truro-viewer"]
windows = ["Mon-Fri 18:00-08:00"]

[[rules]]
id = "other"
effect = "allow"
groups = ["consultants"]
endpoints = ["*"]
"#,
    );
    let e = p.explain(&ask("lee@truro.nhs.uk", &[], "truro-viewer"));
    assert!(!e.decision.is_allowed());
    assert_eq!(e.rules.len(), 1);
    assert_eq!(e.other_rules, 1);
    let rule = &e.rules[0];
    assert_eq!((rule.rule.as_str(), rule.matched), ("evenings", false));
    assert_eq!(rule.location, "p.toml:39");
    assert_eq!(rule.conditions[0].outcome, "not met");
    assert_eq!(
        rule.conditions[0].detail,
        "outside Mon–Fri 18:00–08:00 Europe/London"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("no match allow evenings (p.toml:39) — endpoints truro-viewer"),
        "{shown}"
    );
    assert!(
        shown.contains("(1 other rule name other endpoints or other people)"),
        "{shown}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["rules"][0]["conditions"][0]["condition"], "windows");
    assert_eq!(json["decision"]["valid_until"], "2025-03-04T18:00:00Z");
}

#[test]
fn diff_lists_changed_tests_and_samples() {
    let old = policy(
        r#"[[rules]]
id = "viewer"
effect = "allow"
groups = ["consultants", "locums"]
endpoints = ["truro-viewer"]

[[tests]]
name = "locum views"
user = "lee@truro.nhs.uk"
endpoint = "truro-viewer"
at = 2025-03-04T12:00:00Z
expect = "allow"
"#,
    );
    let new = policy(
        r#"[[rules]]
id = "viewer"
effect = "allow"
groups = ["consultants", "locums"]
endpoints = ["truro-viewer"]
windows = ["Mon-Fri 18:00-08:00"]
"#,
    );
    let diff = Policy::diff(&old, &new, at("2025-03-03T00:00:00Z"));
    assert!(!diff.is_empty());
    assert_eq!(diff.tests.len(), 1);
    assert_eq!(diff.tests[0].new, (Effect::Deny, None));
    assert!(diff.tests[0]
        .new_reason
        .contains("is only Mon–Fri 18:00–08:00"));
    // Both groups lose weekday daytime and weekends on the viewer, for every kind of client.
    assert!(diff.sample_changes >= 2, "{diff}");
    let c = &diff.samples[0];
    assert_eq!(c.old, (Effect::Allow, Some("viewer".into())));
    assert_eq!(c.out_of, 336);
    // Mon–Fri 08:00–18:00, Sat 08:00 to Mon 00:00, and Mon 00:00–08:00 (Sunday starts no
    // window), in half hours; London is on GMT that week.
    assert_eq!(c.occurrences, 5 * 20 + 32 + 48 + 16);
    let same = Policy::diff(&new, &new, at("2025-03-03T00:00:00Z"));
    assert!(same.is_empty());
    assert!(same.samples_compared > 0);
}

#[test]
fn valid_until_follows_the_deciding_rules() {
    let p = policy(
        r#"[[rules]]
id = "office-hours"
effect = "allow"
groups = ["consultants"]
endpoints = ["*"]
windows = ["Mon-Fri 08:00-18:00"]

[[rules]]
id = "always"
effect = "allow"
users = ["admin@x"]
endpoints = ["*"]

[[rules]]
id = "block"
effect = "deny"
users = ["blocked@x"]
endpoints = ["*"]
"#,
    );
    let g = strings(&["Rad-Consultants"]);
    let d = p.evaluate(&ask("c@x", &g, "truro-viewer"));
    assert!(d.is_allowed());
    assert_eq!(d.valid_until, Some(at("2025-03-04T18:00:00Z")));
    // Denied at night, until the window opens.
    let night = Request::new("c@x", &g, "truro-viewer", at("2025-03-04T22:00:00Z"));
    assert_eq!(
        p.evaluate(&night).valid_until,
        Some(at("2025-03-05T08:00:00Z"))
    );
    // An unconditional allow does not change with time.
    assert_eq!(
        p.evaluate(&ask("admin@x", &[], "truro-viewer")).valid_until,
        None
    );
    // Nor does an unconditional deny, even when an allow would open later.
    let d = p.evaluate(&Request::new(
        "blocked@x",
        &g,
        "truro-viewer",
        at("2025-03-04T22:00:00Z"),
    ));
    assert_eq!(d.rule.as_deref(), Some("block"));
    assert_eq!(d.valid_until, None);
    // Serialized as RFC 3339.
    let json = serde_json::to_value(p.evaluate(&ask("c@x", &g, "truro-viewer"))).unwrap();
    assert_eq!(json["valid_until"], "2025-03-04T18:00:00Z");
}

// ---------------------------------------------------------------------------------------------
// Limits on input

#[test]
fn index_size_and_patterns_are_bounded() {
    let users: Vec<String> = (0..2100).map(|i| format!("\"u{i}@x\"")).collect();
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "[[endpoints]]\nname = \"e{i}\"\nsite = \"s\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\nlabels = [\"all\"]\n"
        ));
    }
    text.push_str(&format!(
        "[[rules]]\nid = \"huge\"\neffect = \"allow\"\nusers = [{}]\nendpoint_labels = [\"all\"]\n",
        users.join(",")
    ));
    let d = only_error(&text);
    assert_eq!(d.kind, ErrorKind::LimitExceeded);
    assert!(d.message.contains("more than 4000000"), "{}", d.message);

    let mut text = String::from(SITES);
    for i in 0..=MAX_PATTERNS {
        text.push_str(&format!(
            "[[rules]]\nid = \"r{i}\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"x{i}-*\"]\n"
        ));
    }
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{:#?}", &all[..all.len().min(3)]);
    assert_eq!(all[0].kind, ErrorKind::LimitExceeded);
}

#[test]
fn ten_megabyte_strings_and_100k_rules_are_refused_quickly() {
    let started = std::time::Instant::now();
    let long = format!(
        "[[endpoints]]\nname = \"{}\"\n",
        "x".repeat(10 * 1024 * 1024)
    );
    let d = only_error(&long);
    assert_eq!(d.kind, ErrorKind::LimitExceeded);

    let many = "[[rules]]\n".repeat(100_000);
    let d = only_error(&many);
    assert_eq!(d.kind, ErrorKind::LimitExceeded);
    assert_eq!(
        d.message,
        "too many rules: 100000 (the limit is 10000 in the whole policy)"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// The posture facts `postern login` reports (`disk_encrypted`, `firewall`, `screen_lock`,
/// each "true" / "false" / "unknown"): one enforced, one report-only.
#[test]
fn posture_conditions_enforced_or_report_only() {
    let p = policy(
        r#"[[rules]]
id = "data"
effect = "allow"
groups = ["consultants"]
egress = "data"
report_only = ["device.posture.firewall"]

[rules.device]
approved = true
user_verified = true
posture = { disk_encrypted = "true", firewall = "true" }
"#,
    );
    let g = strings(&["Rad-Consultants"]);
    let with = |disk: &str, fw: &str| {
        let mut d = device(true, true, true);
        d.posture.insert("disk_encrypted".into(), disk.into());
        d.posture.insert("firewall".into(), fw.into());
        d
    };
    // Both met: allowed, nothing reported.
    let ok = with("true", "true");
    let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&ok));
    assert!(d.is_allowed());
    assert!(d.report_only.is_empty());
    // The report-only condition fails: still allowed, with a "would deny" finding.
    for fw in ["false", "unknown"] {
        let dev = with("true", fw);
        let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&dev));
        assert!(d.is_allowed(), "firewall {fw}: {}", d.reason);
        assert_eq!(d.report_only.len(), 1, "{:?}", d.report_only);
        assert_eq!(d.report_only[0].condition, "device.posture.firewall");
        assert!(
            d.report_only[0].reason.contains("firewall"),
            "{:?}",
            d.report_only
        );
    }
    // The enforced condition fails (false, or not determinable): denied, naming the fact.
    for disk in ["false", "unknown"] {
        let dev = with(disk, "true");
        let d = p.evaluate(&ask("a", &g, "truro-pacs-dicom").with_device(&dev));
        assert!(!d.is_allowed());
        assert!(d.reason.contains("disk_encrypted"), "{}", d.reason);
    }
}
