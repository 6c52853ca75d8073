//! Tests of the public API: parsing, every validation error with its position, evaluation, and
//! hostile input.

use std::path::Path;
use std::time::Duration;

use crate::*;

/// Two endpoints, lines 1–13; rules appended by [`with_rules`] start on [`RULES_LINE`].
const ENDPOINTS: &str = r#"[[endpoints]]
name = "pacs"
site = "truro"
host = "10.1.2.3"
port = 104
protocol = "dicom"

[[endpoints]]
name = "web"
site = "truro"
host = "pacs.truro.nhs.local"
port = 443
protocol = "https"
"#;

/// Line of the first line of the text given to [`with_rules`].
const RULES_LINE: usize = 15;

fn with_rules(rules: &str) -> String {
    format!("{ENDPOINTS}\n{rules}")
}

fn parse(text: &str) -> Policy {
    match Policy::parse(text, "policy.toml") {
        Ok(policy) => policy,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match Policy::parse(text, "policy.toml") {
        Ok(_) => panic!("expected errors, the policy parsed"),
        Err(e) => {
            let diagnostics = e.diagnostics().to_vec();
            assert!(
                !diagnostics.is_empty(),
                "an invalid policy reports something"
            );
            diagnostics
        }
    }
}

/// The only error, checked to be the only one.
fn only_error(text: &str) -> Diagnostic {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected exactly one error, got: {all:#?}");
    all.remove(0)
}

fn decide(policy: &Policy, user: &str, groups: &[&str], endpoint: &str) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    policy.evaluate(&Request::new(
        user,
        &groups,
        endpoint,
        std::time::SystemTime::now(),
    ))
}

fn example_config() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/policy.toml"
    ))
}

// ---------------------------------------------------------------------------------------------
// Parsing valid policies

#[test]
fn good_policy_parses_into_resolved_types() {
    let policy = parse(&with_rules(
        r#"[[rules]]
id = "radiologists-pacs"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs", "web"]
max_session = "4h"
description = "Radiologists read images"
"#,
    ));
    assert_eq!(policy.rule_count(), 1);
    let names: Vec<&str> = policy.endpoints().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["pacs", "web"]);
    assert_eq!(
        policy.endpoint("web"),
        Some(&Endpoint {
            name: "web".into(),
            site: "truro".into(),
            host: "pacs.truro.nhs.local".into(),
            port: 443,
            ports: PortRange {
                first: 443,
                last: 443
            },
            protocol: Protocol::Https,
            egress: Egress::Data,
            labels: vec![],
            description: None,
            local_port: None,
            tls_verify: true,
            upstream_host: None,
            request_audit: RequestAudit::All,
            called_ae: None,
        })
    );
    assert_eq!(
        policy.endpoint("pacs").map(|e| e.protocol),
        Some(Protocol::Dicom)
    );
    assert_eq!(policy.endpoint("nope"), None);

    let version = policy.version();
    assert!(version.starts_with("sha256:"), "{version}");
    assert_eq!(version.len(), "sha256:".len() + 16);
    assert!(version["sha256:".len()..]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

#[test]
fn example_config_parses_and_decides_as_its_comments_say() {
    let policy = match Policy::from_file(example_config()) {
        Ok(policy) => policy,
        Err(e) => panic!("config/policy.toml is invalid:\n{e}"),
    };
    assert!(policy.warnings().is_empty(), "{:#?}", policy.warnings());
    let names: Vec<&str> = policy.endpoints().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "truro-pacs-dicom",
            "truro-pacs-web",
            "truro-reporting-pc-01",
            "truro-reporting-pc-02",
            "penzance-pacs-dicom",
            "penzance-pacs-web",
            "orthanc-web"
        ]
    );
    assert_eq!(policy.rule_count(), 11);
    let orthanc = policy.endpoint("orthanc-web").unwrap();
    assert_eq!(
        (orthanc.protocol, orthanc.port, orthanc.request_audit),
        (Protocol::Http, 8042, RequestAudit::All)
    );
    let penzance = policy.endpoint("penzance-pacs-dicom").unwrap();
    assert_eq!(
        (penzance.port, penzance.ports.last, penzance.egress),
        (11112, 11114, Egress::Data)
    );
    assert_eq!(
        policy
            .endpoint("truro-reporting-pc-01")
            .map(|e| (e.protocol, e.port, e.egress)),
        Some((Protocol::Rdp, 3389, Egress::Display))
    );

    // Every inline test passes, and there are plenty of them.
    let report = policy.run_tests();
    assert!(report.outcomes.len() >= 20, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    // Both outcomes, several deciding rules and condition-based reasons are covered.
    let allows = report
        .outcomes
        .iter()
        .filter(|o| o.decision.is_allowed())
        .count();
    assert!(allows >= 5 && report.outcomes.len() - allows >= 5);
    assert!(report
        .outcomes
        .iter()
        .any(|o| o.decision.reason
            == "Denied: access to truro-pacs-web for user 'locum.jones@truro.nhs.uk' is only Mon–Fri 18:00–08:00 Europe/London"));
}

#[test]
fn an_explicitly_empty_policy_is_valid_and_denies_everything() {
    let policy = parse("# nothing yet\ndeny_all = true\n");
    assert!(policy.endpoints().is_empty());
    let decision = decide(&policy, "alice", &["radiologists"], "pacs");
    assert!(!decision.is_allowed());
    assert_eq!(
        decision.reason,
        "endpoint 'pacs' is not defined in the policy"
    );
}

#[test]
fn inline_array_form_is_accepted() {
    let policy = parse(
        r#"endpoints = [
  { name = "pacs", site = "truro", host = "10.1.2.3", port = 104, protocol = "dicom" },
]
rules = [{ id = "r", effect = "allow", users = ["alice"], endpoints = ["pacs"] }]
"#,
    );
    assert!(decide(&policy, "alice", &[], "pacs").is_allowed());
}

// ---------------------------------------------------------------------------------------------
// Validation errors, each with its position

#[test]
fn toml_syntax_error_has_position_and_message() {
    let d = only_error("[[endpoints]]\nname = \"pacs\nport = 104\n");
    assert_eq!(d.kind, ErrorKind::Syntax);
    assert_eq!(d.line, 2);
    assert!(d.message.starts_with("invalid TOML: "), "{}", d.message);
    assert!(!d.message.contains('\n'), "one line: {:?}", d.message);

    let d = only_error("[[endpoints]]\nname = \"a\"\nname = \"b\"\n");
    assert_eq!(d.kind, ErrorKind::Syntax);
    assert_eq!(d.line, 3);
    assert!(d.message.contains("duplicate key"), "{}", d.message);
}

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let text = r#"rule = []

[[endpoints]]
name = "pacs"
site = "truro"
hots = "10.1.2.3"
host = "10.1.2.3"
port = 104
protocol = "dicom"
colour = "blue"
"#;
    let all = errors(text);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all.iter().all(|d| d.kind == ErrorKind::UnknownKey));

    assert_eq!((all[0].line, all[0].column), (1, 1));
    assert_eq!(all[0].message, "unknown top-level key `rule`");
    assert_eq!(all[0].hint.as_deref(), Some("did you mean `rules`?"));

    assert_eq!((all[1].line, all[1].column), (6, 1));
    assert_eq!(all[1].message, "unknown key `hots`");
    assert_eq!(all[1].hint.as_deref(), Some("did you mean `host`?"));

    assert_eq!(all[2].line, 10);
    assert_eq!(all[2].message, "unknown key `colour`");
    assert_eq!(
        all[2].hint.as_deref(),
        Some("allowed keys: name, site, host, port, ports, protocol, egress, labels, description, local_port, tls_verify, upstream_host, request_audit, called_ae")
    );
}

#[test]
fn unknown_key_in_defaults_and_rules() {
    let all = errors(&format!(
        "[defaults]\nmax_sesion = \"4h\"\n\n{ENDPOINTS}\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nuser = [\"alice\"]\ngroups = [\"g\"]\nendpoints = [\"pacs\"]\n"
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].line, all[0].kind), (2, ErrorKind::UnknownKey));
    assert_eq!(all[0].hint.as_deref(), Some("did you mean `max_session`?"));
    assert_eq!(
        (all[1].line, all[1].kind),
        (4 + RULES_LINE + 2, ErrorKind::UnknownKey)
    );
    assert_eq!(all[1].hint.as_deref(), Some("did you mean `users`?"));
}

#[test]
fn missing_required_fields_point_at_the_table() {
    let text = r#"[[endpoints]]
name = "pacs"
site = "truro"

[[rules]]
groups = ["g"]
"#;
    let all = errors(text);
    let summary: Vec<(usize, ErrorKind, &str)> = all
        .iter()
        .map(|d| (d.line, d.kind, d.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                ErrorKind::MissingField,
                "endpoint 'pacs' is missing required key `host`"
            ),
            (
                1,
                ErrorKind::MissingField,
                "endpoint 'pacs' is missing required key `port`"
            ),
            (
                1,
                ErrorKind::MissingField,
                "endpoint 'pacs' is missing required key `protocol`"
            ),
            (
                5,
                ErrorKind::MissingField,
                "rule #1 is missing required key `id`"
            ),
            (
                5,
                ErrorKind::MissingField,
                "rule #1 is missing required key `effect`"
            ),
            (
                5,
                ErrorKind::MissingField,
                "rule #1 is missing required key `endpoints`"
            ),
        ]
    );
    assert_eq!(
        all[0].hint.as_deref(),
        Some("add a line such as `host = \"10.1.2.3\"`")
    );
}

#[test]
fn names_sites_and_ids_must_use_the_charset() {
    let all = errors(&with_rules(
        r#"[[endpoints]]
name = "Truro_PACS"
site = "truro site"
host = "10.1.2.4"
port = 104
protocol = "dicom"

[[rules]]
id = "-rule"
effect = "allow"
users = ["alice"]
endpoints = ["pacs"]
"#,
    ));
    let summary: Vec<(usize, usize, ErrorKind)> =
        all.iter().map(|d| (d.line, d.column, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (RULES_LINE + 1, 8, ErrorKind::InvalidName),
            (RULES_LINE + 2, 8, ErrorKind::InvalidName),
            (RULES_LINE + 8, 6, ErrorKind::InvalidName),
        ]
    );
    assert_eq!(
        all[0].message,
        "endpoint name 'Truro_PACS' of endpoint #3 is not a valid name"
    );
    assert_eq!(
        all[1].message,
        "site name 'truro site' of endpoint #3 is not a valid name"
    );
    assert_eq!(
        all[2].message,
        "rule id '-rule' of rule #1 is not a valid name"
    );
    assert!(all[0]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("lowercase letters")));
}

#[test]
fn duplicate_endpoint_names_are_reported_at_the_second() {
    let d = only_error(&format!(
        "{ENDPOINTS}\n[[endpoints]]\nname = \"pacs\"\nsite = \"penzance\"\nhost = \"10.9.9.9\"\nport = 104\nprotocol = \"dicom\"\n"
    ));
    assert_eq!(d.kind, ErrorKind::DuplicateEndpoint);
    assert_eq!((d.line, d.column), (RULES_LINE + 1, 8));
    assert_eq!(d.message, "duplicate endpoint name 'pacs'");
    assert_eq!(d.hint.as_deref(), Some("first defined on line 2"));
}

#[test]
fn local_ports_are_kept_and_must_be_unique() {
    let policy = parse(&with_rules(
        "[[endpoints]]\nname = \"rdp\"\nsite = \"truro\"\nhost = \"10.1.2.9\"\nport = 3389\nprotocol = \"rdp\"\nlocal_port = 13389\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"alice\"]\nendpoints = [\"rdp\"]\n",
    ));
    assert_eq!(
        policy.endpoint("rdp").and_then(|e| e.local_port),
        Some(13389)
    );
    assert_eq!(policy.endpoint("pacs").and_then(|e| e.local_port), None);

    let twice = "[[endpoints]]\nname = \"a\"\nsite = \"truro\"\nhost = \"10.1.2.9\"\nport = 3389\nprotocol = \"rdp\"\nlocal_port = 13389\n\n[[endpoints]]\nname = \"b\"\nsite = \"truro\"\nhost = \"10.1.2.8\"\nport = 3389\nprotocol = \"rdp\"\nlocal_port = 13389\n";
    let d = only_error(&format!("{twice}\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"alice\"]\nendpoints = [\"a\", \"b\"]\n"));
    assert_eq!(d.kind, ErrorKind::DuplicateLocalPort);
    assert_eq!(d.message, "duplicate local_port '13389'");
    assert_eq!(d.hint.as_deref(), Some("first defined on line 7"));

    let d = only_error("[[endpoints]]\nname = \"a\"\nsite = \"truro\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\nlocal_port = 70000\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"alice\"]\nendpoints = [\"a\"]\n");
    assert_eq!(d.kind, ErrorKind::InvalidValue);
    assert!(d.message.contains("70000"), "{}", d.message);
}

#[test]
fn duplicate_rule_ids_are_reported_at_the_second() {
    let d = only_error(&with_rules(
        r#"[[rules]]
id = "r"
effect = "allow"
users = ["alice"]
endpoints = ["pacs"]

[[rules]]
id = "r"
effect = "deny"
users = ["bob"]
endpoints = ["web"]
"#,
    ));
    assert_eq!(d.kind, ErrorKind::DuplicateRule);
    assert_eq!(d.line, RULES_LINE + 7);
    assert_eq!(d.message, "duplicate rule id 'r'");
    assert_eq!(
        d.hint,
        Some(format!("first defined on line {}", RULES_LINE + 1))
    );
}

#[test]
fn unknown_endpoint_reference_lists_names_or_suggests_one() {
    let all = errors(&with_rules(
        r#"[[rules]]
id = "r"
effect = "allow"
groups = ["radiologists"]
endpoints = ["radiology", "pacz"]
"#,
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|d| d.kind == ErrorKind::UnknownEndpoint));
    assert_eq!(
        all[0].to_string(),
        format!(
            "policy.toml:{}:14: error: rule 'r' references unknown endpoint 'radiology'  (hint: defined endpoints: pacs, web)",
            RULES_LINE + 4
        )
    );
    assert_eq!((all[1].line, all[1].column), (RULES_LINE + 4, 27));
    assert_eq!(all[1].hint.as_deref(), Some("did you mean 'pacs'?"));
}

#[test]
fn rule_needs_groups_or_users() {
    for subjects in ["", "groups = []\n", "groups = []\nusers = []\n"] {
        let d = only_error(&with_rules(&format!(
            "[[rules]]\nid = \"nobody\"\neffect = \"allow\"\n{subjects}endpoints = [\"pacs\"]\n"
        )));
        assert_eq!(d.kind, ErrorKind::NoSubjects);
        assert_eq!((d.line, d.column), (RULES_LINE, 1));
        assert_eq!(
            d.message,
            "rule 'nobody' lists neither `groups` nor `users`, so it can never match"
        );
    }
}

#[test]
fn max_session_on_a_deny_rule_is_an_error() {
    let d = only_error(&with_rules(
        r#"[[rules]]
id = "no-locums"
effect = "deny"
groups = ["locums"]
endpoints = ["pacs"]
max_session = "1h"
"#,
    ));
    assert_eq!(d.kind, ErrorKind::MaxSessionOnDeny);
    assert_eq!((d.line, d.column), (RULES_LINE + 5, 15));
    assert_eq!(
        d.message,
        "rule 'no-locums' is a deny rule; `max_session` only applies to allow rules"
    );
}

#[test]
fn invalid_durations_are_reported() {
    let all = errors(&format!(
        "[defaults]\nmax_session = \"0s\"\n\n{ENDPOINTS}\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"a\"]\nendpoints = [\"pacs\"]\nmax_session = \"8 parsecs\"\n"
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].line, all[0].kind), (2, ErrorKind::InvalidDuration));
    assert_eq!(
        all[0].message,
        "`max_session` in [defaults] must be longer than zero"
    );
    assert_eq!(
        (all[1].line, all[1].kind),
        (4 + RULES_LINE + 4, ErrorKind::InvalidDuration)
    );
    assert!(
        all[1]
            .message
            .starts_with("invalid duration '8 parsecs' for `max_session` of rule 'r': "),
        "{}",
        all[1].message
    );
    assert!(all[1].hint.as_deref().is_some_and(|h| h.contains("\"4h\"")));
}

#[test]
fn ports_must_be_1_to_65535() {
    for (port, message) in [
        ("0", "port 0 of endpoint 'e' is not a valid port"),
        ("70000", "port 70000 of endpoint 'e' is not a valid port"),
        ("-1", "port -1 of endpoint 'e' is not a valid port"),
    ] {
        let d = only_error(&format!(
            "[[endpoints]]\nname = \"e\"\nsite = \"s\"\nhost = \"h\"\nport = {port}\nprotocol = \"tcp\"\n"
        ));
        assert_eq!((d.line, d.column, d.kind), (5, 8, ErrorKind::InvalidValue));
        assert_eq!(d.message, message);
        assert_eq!(d.hint.as_deref(), Some("use a port between 1 and 65535"));
    }
}

#[test]
fn wrong_toml_type_names_the_key() {
    let d = only_error("[[endpoints]]\nname = \"e\"\nsite = \"s\"\nhost = \"h\"\nport = \"104\"\nprotocol = \"tcp\"\n");
    assert_eq!((d.line, d.column, d.kind), (5, 8, ErrorKind::InvalidType));
    assert_eq!(
        d.message,
        "`port`: invalid type: string \"104\", expected i64"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("`port` takes a number without quotes")
    );
}

#[test]
fn every_wrongly_typed_value_in_a_table_is_reported() {
    // serde stops at the first bad value; the loader drops it and decodes the rest again, so the
    // other problems of the same table are found, and dropped keys are not "missing".
    let all = errors(
        r#"[[endpoints]]
name = 3
site = "Truro"
host = "10.1.2.3"
port = "104"
protocol = "dicom"

[[rules]]
id = "r"
effect = "allow"
groups = "radiologists"
endpoints = ["nowhere"]
"#,
    );
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (2, ErrorKind::InvalidType),
            (3, ErrorKind::InvalidName),
            (5, ErrorKind::InvalidType),
            (11, ErrorKind::InvalidType),
            (12, ErrorKind::UnknownEndpoint),
        ]
    );
    assert_eq!(
        all[0].message,
        "`name`: invalid type: integer `3`, expected a string"
    );
    assert_eq!(
        all[1].message,
        "site name 'Truro' of endpoint #1 is not a valid name"
    );
    assert_eq!(
        all[3].hint.as_deref(),
        Some("`groups` takes a list, such as `groups = [\"…\"]`")
    );
}

#[test]
fn host_and_site_must_not_be_empty_and_host_must_be_dialable() {
    let all = errors(
        r#"[[endpoints]]
name = "a"
site = ""
host = ""
port = 104
protocol = "dicom"

[[endpoints]]
name = "b"
site = "truro"
host = "pacs server:104"
port = 104
protocol = "dicom"
"#,
    );
    let summary: Vec<(usize, &str)> = all.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(
        summary,
        [
            (3, "site name of endpoint 'a' is empty"),
            (4, "host of endpoint 'a' is empty"),
            (
                11,
                "host 'pacs server:104' of endpoint 'b' is not an IP address or DNS name"
            ),
        ]
    );
    assert!(all.iter().all(|d| d.kind == ErrorKind::InvalidValue));
}

#[test]
fn unknown_protocol_and_effect_are_reported() {
    let all = errors(
        r#"[[endpoints]]
name = "a"
site = "truro"
host = "10.1.2.3"
port = 104
protocol = "dicon"

[[rules]]
id = "r"
effect = "permit"
users = ["alice"]
endpoints = ["a"]
"#,
    );
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].line, all[0].column), (6, 12));
    assert_eq!(all[0].message, "endpoint 'a' has unknown protocol 'dicon'");
    assert_eq!(all[0].hint.as_deref(), Some("did you mean \"dicom\"?"));
    assert_eq!(all[1].line, 10);
    assert_eq!(all[1].message, "rule 'r' has invalid effect 'permit'");
}

#[test]
fn misshapen_sections_are_reported() {
    let all = errors("defaults = 3\n\n[endpoints]\nname = \"a\"\n\n[[rules]]\nid = \"r\"\n");
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (1, ErrorKind::InvalidType),
            (3, ErrorKind::InvalidType),
            (6, ErrorKind::MissingField),
            (6, ErrorKind::NoSubjects),
            (6, ErrorKind::MissingField),
        ]
    );
    assert_eq!(all[1].message, "`endpoints` must be an array of tables");
}

#[test]
fn a_broken_endpoint_does_not_cascade_into_its_rules() {
    // The endpoint fails to decode (port has the wrong type); the rule naming it is not also
    // reported as referencing an unknown endpoint.
    let d = only_error(
        r#"[[endpoints]]
name = "a"
site = "truro"
host = "10.1.2.3"
port = "104"
protocol = "dicom"

[[rules]]
id = "r"
effect = "allow"
users = ["alice"]
endpoints = ["a"]
"#,
    );
    assert_eq!((d.line, d.kind), (5, ErrorKind::InvalidType));
}

#[test]
fn control_characters_in_strings_are_rejected() {
    let d = only_error(&with_rules(
        "[[rules]]\nid = \"r\"\neffect = \"deny\"\nusers = [\"alice\"]\nendpoints = [\"pacs\"]\ndescription = \"line one\\nline two\"\n",
    ));
    assert_eq!((d.line, d.kind), (RULES_LINE + 5, ErrorKind::InvalidValue));
    assert_eq!(
        d.message,
        "description of rule 'r' contains a control character"
    );
}

#[test]
fn multiple_errors_are_all_reported_in_file_order() {
    let text = r#"[defaults]
max_session = "forever"

[[endpoints]]
name = "pacs"
site = "truro"
host = "10.1.2.3"
port = 0
protocol = "dicom"

[[endpoints]]
name = "pacs"
site = "truro"
host = "10.1.2.4"
port = 104
protocol = "ftp"

[[rules]]
id = "r1"
effect = "allow"
endpoints = ["pacs", "missing"]

[[rules]]
id = "r1"
effect = "deny"
users = ["bob"]
endpoints = ["*"]
max_session = "2h"
"#;
    let err = Policy::parse(text, "policy.toml").unwrap_err();
    let all = err.diagnostics();
    let summary: Vec<(usize, ErrorKind)> = all.iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        summary,
        [
            (2, ErrorKind::InvalidDuration),
            (8, ErrorKind::InvalidValue),
            (12, ErrorKind::DuplicateEndpoint),
            (16, ErrorKind::InvalidValue),
            (18, ErrorKind::NoSubjects),
            (21, ErrorKind::UnknownEndpoint),
            (24, ErrorKind::DuplicateRule),
            (28, ErrorKind::MaxSessionOnDeny),
        ]
    );
    // Display: one line per error, each starting with its position.
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), all.len());
    assert!(
        lines[0].starts_with("policy.toml:2:15: error: invalid duration 'forever'"),
        "{}",
        lines[0]
    );
    assert!(
        lines[7].starts_with("policy.toml:28:15: error: rule 'r1' is a deny rule"),
        "{}",
        lines[7]
    );
}

// ---------------------------------------------------------------------------------------------
// Limits and hostile input

#[test]
fn file_over_4_mib_is_refused_before_parsing() {
    let text = format!("x = \"{}\"\n", "a".repeat(5_000_000));
    let d = only_error(&text);
    assert_eq!((d.line, d.column, d.kind), (1, 1, ErrorKind::LimitExceeded));
    assert!(
        d.message.contains("the limit is 4194304 bytes"),
        "{}",
        d.message
    );
}

#[test]
fn long_strings_are_refused_and_not_echoed() {
    let long = "a".repeat(2 * 1024 * 1024);
    let d = only_error(&with_rules(&format!(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"{long}\"]\nendpoints = [\"pacs\"]\n"
    )));
    assert_eq!((d.line, d.kind), (RULES_LINE + 3, ErrorKind::LimitExceeded));
    assert_eq!(
        d.message,
        "user of rule 'r' is 2097152 bytes long (the limit is 1024)"
    );

    // Strings exactly at the limit are fine.
    let ok = "a".repeat(MAX_STRING_BYTES);
    parse(&with_rules(&format!(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"{ok}\"]\nendpoints = [\"pacs\"]\n"
    )));

    // A huge unknown key or a huge wrongly-typed value is not copied into the message.
    let big = "a".repeat(1_500_000);
    let all = errors(&format!("{big} = 1\n[[endpoints]]\nport = \"{big}\"\n"));
    assert_eq!(all[0].kind, ErrorKind::UnknownKey);
    assert!(
        all.iter().any(|d| d.kind == ErrorKind::InvalidType),
        "{all:#?}"
    );
    assert!(all.iter().all(|d| d.message.len() < 300), "{all:#?}");
}

#[test]
fn too_many_endpoints_or_rules_are_refused() {
    let endpoint = "[[endpoints]]\nname = \"e\"\n";
    let d = only_error(&endpoint.repeat(MAX_ENDPOINTS + 1));
    assert_eq!(d.kind, ErrorKind::LimitExceeded);
    assert_eq!(
        d.line,
        2 * MAX_ENDPOINTS + 1,
        "points at the first endpoint over the limit"
    );
    assert_eq!(
        d.message,
        "too many endpoints: 10001 (the limit is 10000 in the whole policy)"
    );

    let d = only_error(&"[[rules]]\n".repeat(MAX_RULES + 1));
    assert_eq!(
        d.message,
        "too many rules: 10001 (the limit is 10000 in the whole policy)"
    );
}

#[test]
fn policy_at_the_count_limits_loads_and_evaluates() {
    let mut text = String::new();
    for i in 0..MAX_ENDPOINTS {
        text.push_str(&format!(
            "[[endpoints]]\nname = \"e{i}\"\nsite = \"s\"\nhost = \"10.0.0.1\"\nport = 104\nprotocol = \"dicom\"\n"
        ));
    }
    for i in 0..MAX_RULES {
        text.push_str(&format!(
            "[[rules]]\nid = \"r{i}\"\neffect = \"allow\"\ngroups = [\"g{i}\"]\nendpoints = [\"e{i}\"]\n"
        ));
    }
    text.push_str(
        "[[rules]]\nid = \"all\"\neffect = \"deny\"\nusers = [\"mallory\"]\nendpoints = [\"*\"]\n",
    );
    assert!(text.len() <= MAX_FILE_BYTES);
    // One rule over the limit, so this is rejected; drop one allow rule to fit.
    assert!(errors(&text)
        .iter()
        .any(|d| d.message.starts_with("too many rules")));
    let text = text.replacen(
        "[[rules]]\nid = \"r0\"\neffect = \"allow\"\ngroups = [\"g0\"]\nendpoints = [\"e0\"]\n",
        "",
        1,
    );
    let policy = parse(&text);
    assert_eq!(policy.endpoints().len(), MAX_ENDPOINTS);
    assert_eq!(policy.rule_count(), MAX_RULES);
    let d = decide(&policy, "alice", &["g9999"], "e9999");
    assert_eq!(d.reason, "allowed by rule 'r9999'");
    let d = decide(&policy, "mallory", &["g5"], "e5");
    assert_eq!(d.reason, "denied by rule 'all'");
    assert_eq!(d.matched_allows, ["r5"]);
}

#[test]
fn deeply_nested_input_is_an_error_not_a_crash() {
    let depth = 10_000;
    let arrays = format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(only_error(&arrays).kind, ErrorKind::Syntax);

    let tables = format!("a = {}{}\n", "{ b = ".repeat(depth), "}".repeat(depth));
    assert_eq!(only_error(&tables).kind, ErrorKind::Syntax);

    let dotted = format!("{} = 1\n", vec!["a"; depth].join("."));
    assert_eq!(only_error(&dotted).kind, ErrorKind::Syntax);

    let headers = format!("[{}]\n", vec!["a"; depth].join("."));
    assert_eq!(only_error(&headers).kind, ErrorKind::Syntax);

    // Nesting the parser accepts, where a string belongs.
    let shallow = format!(
        "[[endpoints]]\nname = {}{}\nsite = \"s\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    assert_eq!(only_error(&shallow).kind, ErrorKind::InvalidType);
}

/// xorshift64*: deterministic pseudo-random bytes, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_bytes_are_rejected_without_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let len = 64 + rng.below(2048);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        let result = Policy::parse(&text, "random.toml");
        assert!(
            result.is_err(),
            "round {round}: random bytes parsed as a policy"
        );
    }
}

#[test]
fn mutated_policies_never_panic() {
    let base = std::fs::read_to_string(example_config()).unwrap();
    let alphabet = b"[]{}=\",.#\n 0aZ-*\\'";
    let mut rng = Rng(42);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..500 {
        let mut bytes = base.clone().into_bytes();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = alphabet[rng.below(alphabet.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
            }
        }
        match Policy::parse(&String::from_utf8_lossy(&bytes), "mutated.toml") {
            Ok(policy) => {
                accepted += 1;
                // Whatever was accepted must still answer requests.
                let _ = decide(&policy, "a", &["locums"], "truro-pacs-web");
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.diagnostics().is_empty());
                assert!(e.diagnostics().iter().all(|d| d.line >= 1 && d.column >= 1));
            }
        }
    }
    // Mutations land in comments often enough that both outcomes occur.
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
}

// ---------------------------------------------------------------------------------------------
// Evaluation

fn eval_policy() -> Policy {
    parse(&with_rules(
        r#"[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs", "web"]
max_session = "4h"

[[rules]]
id = "everyone-web"
effect = "allow"
groups = ["staff"]
endpoints = ["*"]

[[rules]]
id = "alice-direct"
effect = "allow"
users = ["alice@truro.nhs.uk"]
endpoints = ["pacs"]
max_session = "30m"

[[rules]]
id = "suspended"
effect = "deny"
users = ["mallory@truro.nhs.uk"]
groups = ["suspended"]
endpoints = ["*"]
description = "Account suspended pending review"

[[rules]]
id = "no-locums-pacs"
effect = "deny"
groups = ["locums"]
endpoints = ["pacs"]
"#,
    ))
}

#[test]
fn allow_uses_the_first_matching_allow_rule_and_its_limits() {
    let policy = eval_policy();
    let d = decide(
        &policy,
        "bob@truro.nhs.uk",
        &["radiologists", "staff"],
        "pacs",
    );
    assert_eq!(
        d,
        Decision {
            effect: Effect::Allow,
            rule: Some("radiologists".into()),
            reason: "allowed by rule 'radiologists'".into(),
            limits: Limits {
                max_session: Some(Duration::from_secs(4 * 3600)),
                idle_timeout: None,
                resume_grace: crate::DEFAULT_RESUME_GRACE,
                require_justification: false,
                dicom: Some(DicomGrant {
                    calling_ae: vec![],
                    called_ae: None,
                    services: DEFAULT_DICOM_SERVICES.map(str::to_owned).to_vec(),
                }),
            },
            matched_allows: vec!["radiologists".into(), "everyone-web".into()],
            matched_denies: vec![],
            report_only: vec![],
            valid_until: None,
            policy_version: policy.version().to_owned(),
        }
    );
    assert!(d.is_allowed());
}

#[test]
fn deny_overrides_allow() {
    let policy = eval_policy();
    let d = decide(
        &policy,
        "carol@truro.nhs.uk",
        &["radiologists", "locums"],
        "pacs",
    );
    assert!(!d.is_allowed());
    assert_eq!(d.rule.as_deref(), Some("no-locums-pacs"));
    assert_eq!(d.reason, "denied by rule 'no-locums-pacs'");
    assert_eq!(d.matched_allows, ["radiologists"]);
    assert_eq!(d.matched_denies, ["no-locums-pacs"]);
    assert_eq!(d.limits, Limits::default());

    // The same locum may still use the web viewer: the deny rule does not cover it.
    let d = decide(
        &policy,
        "carol@truro.nhs.uk",
        &["radiologists", "locums"],
        "web",
    );
    assert_eq!(d.reason, "allowed by rule 'radiologists'");
}

#[test]
fn deny_reason_includes_the_rule_description() {
    let policy = eval_policy();
    let d = decide(&policy, "MALLORY@truro.nhs.uk", &["radiologists"], "web");
    assert_eq!(d.rule.as_deref(), Some("suspended"));
    assert_eq!(
        d.reason,
        "denied by rule 'suspended': Account suspended pending review"
    );
}

#[test]
fn no_matching_rule_is_default_deny_with_reason() {
    let policy = eval_policy();
    let d = decide(
        &policy,
        "dave@truro.nhs.uk",
        &["porters", "estates"],
        "pacs",
    );
    assert_eq!(
        d,
        Decision {
            effect: Effect::Deny,
            rule: None,
            reason:
                "no rule allows user 'dave@truro.nhs.uk' (groups: porters, estates) to reach 'pacs'"
                    .into(),
            limits: Limits::default(),
            matched_allows: vec![],
            matched_denies: vec![],
            report_only: vec![],
            valid_until: None,
            policy_version: policy.version().to_owned(),
        }
    );
    let d = decide(&policy, "dave@truro.nhs.uk", &[], "web");
    assert_eq!(
        d.reason,
        "no rule allows user 'dave@truro.nhs.uk' (groups: none) to reach 'web'"
    );
}

#[test]
fn unknown_endpoint_is_denied_with_reason() {
    let policy = eval_policy();
    let d = decide(&policy, "bob@truro.nhs.uk", &["staff"], "penzance-pacs");
    assert!(!d.is_allowed());
    assert_eq!(d.rule, None);
    assert_eq!(
        d.reason,
        "endpoint 'penzance-pacs' is not defined in the policy"
    );
    assert!(
        d.matched_allows.is_empty(),
        "'*' rules do not apply to unknown endpoints"
    );
}

#[test]
fn wildcard_rules_cover_every_endpoint() {
    let policy = eval_policy();
    for endpoint in ["pacs", "web"] {
        let d = decide(&policy, "erin@truro.nhs.uk", &["staff"], endpoint);
        assert_eq!(d.reason, "allowed by rule 'everyone-web'", "{endpoint}");
        assert_eq!(d.limits.max_session, Some(DEFAULT_MAX_SESSION));
    }
}

#[test]
fn users_only_rule_matches_the_user_case_insensitively() {
    let policy = eval_policy();
    let d = decide(&policy, "Alice@Truro.NHS.uk", &[], "pacs");
    assert_eq!(d.reason, "allowed by rule 'alice-direct'");
    assert_eq!(d.limits.max_session, Some(Duration::from_secs(30 * 60)));

    let d = decide(&policy, "alice@truro.nhs.uk", &[], "web");
    assert_eq!(
        d.reason,
        "no rule allows user 'alice@truro.nhs.uk' (groups: none) to reach 'web'"
    );
    // Group names are compared exactly.
    let d = decide(&policy, "frank@truro.nhs.uk", &["Staff"], "web");
    assert!(!d.is_allowed());
}

#[test]
fn defaults_max_session_applies_to_allow_rules_without_one() {
    let rules = r#"
[[rules]]
id = "own"
effect = "allow"
users = ["a"]
endpoints = ["pacs"]
max_session = "15m"

[[rules]]
id = "inherited"
effect = "allow"
users = ["a"]
endpoints = ["web"]
"#;
    let with_defaults = parse(&format!(
        "[defaults]\nmax_session = \"2h 30m\"\n\n{}",
        with_rules(rules)
    ));
    let without = parse(&with_rules(rules));

    let limit = |p: &Policy, e: &str| decide(p, "a", &[], e).limits.max_session;
    assert_eq!(
        limit(&with_defaults, "web"),
        Some(Duration::from_secs(150 * 60))
    );
    assert_eq!(
        limit(&with_defaults, "pacs"),
        Some(Duration::from_secs(15 * 60))
    );
    assert_eq!(limit(&without, "web"), Some(Duration::from_secs(8 * 3600)));
    assert_eq!(limit(&without, "pacs"), Some(Duration::from_secs(15 * 60)));
}

#[test]
fn request_values_in_reasons_cannot_forge_lines() {
    let policy = eval_policy();
    let d = decide(&policy, "eve\nALLOW alice", &["x\u{1b}[2J"], "pacs");
    assert_eq!(
        d.reason,
        "no rule allows user 'eve\\nALLOW alice' (groups: x\\u{1b}[2J) to reach 'pacs'"
    );
    let d = decide(&policy, "eve", &[], "pacs\r\n");
    assert_eq!(
        d.reason,
        "endpoint 'pacs\\r\\n' is not defined in the policy"
    );
}

#[test]
fn decision_serializes_for_audit() {
    let policy = eval_policy();
    let d = decide(&policy, "bob@truro.nhs.uk", &["radiologists"], "web");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "effect": "allow",
            "rule": "radiologists",
            "reason": "allowed by rule 'radiologists'",
            "limits": {
                "max_session": "4h",
                "idle_timeout": null,
                "resume_grace": "2m",
                "require_justification": false
            },
            "matched_allows": ["radiologists"],
            "matched_denies": [],
            "report_only": [],
            "valid_until": null,
            "policy_version": policy.version(),
        })
    );
    let shown = d.to_string();
    assert!(shown.contains("effect:          allow\n"), "{shown}");
    assert!(shown.contains("max session:     4h\n"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Version and files

#[test]
fn version_is_a_hash_of_the_text() {
    // SHA-256 of "deny_all = true\n" starts 42861031af8050a1.
    assert_eq!(
        parse("deny_all = true\n").version(),
        "sha256:42861031af8050a1"
    );
    let endpoints = format!("deny_all = true\n{ENDPOINTS}");
    let a = parse(&endpoints);
    let b = parse(&endpoints);
    let c = parse(&format!("{endpoints}# a comment changes the version\n"));
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    assert_eq!(decide(&c, "x", &[], "pacs").policy_version, c.version());
}

#[test]
fn from_file_reports_read_errors_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let err = Policy::from_file(&missing).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
    assert!(err.diagnostics().is_empty());
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: error: cannot read policy file: ",
            missing.display()
        )),
        "{shown}"
    );
}

#[test]
fn from_file_uses_the_path_as_origin_and_checks_encoding_and_size() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[endpoints]]\nname = 3\n").unwrap();
    let err = Policy::from_file(&path).unwrap_err();
    let origin = path.display().to_string();
    assert!(err.diagnostics().iter().all(|d| d.origin == origin));
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{origin}:1:1: error: ")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("\n{origin}:2:8: error: `name`: ")),
        "{shown}"
    );

    let latin1 = dir.path().join("latin1.toml");
    std::fs::write(&latin1, b"# ok\n# caf\xe9\n").unwrap();
    let err = Policy::from_file(&latin1).unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.line, d.column, d.kind), (2, 6, ErrorKind::Encoding));

    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(MAX_FILE_BYTES))).unwrap();
    let err = Policy::from_file(&big).unwrap_err();
    assert_eq!(err.diagnostics()[0].kind, ErrorKind::LimitExceeded);
}

// ---------------------------------------------------------------------------------------------
// Evaluation against a simple model

/// A rule as the model sees it.
struct ModelRule {
    id: String,
    deny: bool,
    groups: Vec<String>,
    users: Vec<String>,
    /// `None` for `"*"`.
    endpoints: Option<Vec<String>>,
}

/// The specification, executed literally: scan every rule in file order.
fn model_decide(
    rules: &[ModelRule],
    endpoints: &[String],
    user: &str,
    groups: &[String],
    endpoint: &str,
) -> (Effect, Option<String>, Vec<String>, Vec<String>) {
    if !endpoints.iter().any(|e| e == endpoint) {
        return (Effect::Deny, None, vec![], vec![]);
    }
    let matching: Vec<&ModelRule> = rules
        .iter()
        .filter(|r| {
            r.endpoints
                .as_ref()
                .is_none_or(|list| list.iter().any(|e| e == endpoint))
        })
        .filter(|r| {
            r.users.iter().any(|u| u.eq_ignore_ascii_case(user))
                || r.groups.iter().any(|g| groups.contains(g))
        })
        .collect();
    let allows: Vec<String> = matching
        .iter()
        .filter(|r| !r.deny)
        .map(|r| r.id.clone())
        .collect();
    let denies: Vec<String> = matching
        .iter()
        .filter(|r| r.deny)
        .map(|r| r.id.clone())
        .collect();
    match (denies.first(), allows.first()) {
        (Some(deny), _) => (Effect::Deny, Some(deny.clone()), allows, denies),
        (None, Some(allow)) => (Effect::Allow, Some(allow.clone()), allows, denies),
        (None, None) => (Effect::Deny, None, allows, denies),
    }
}

#[test]
fn evaluation_agrees_with_a_simple_model() {
    let mut rng = Rng(0x5eed);
    let (mut allowed, mut denied_by_rule, mut default_denied) = (0, 0, 0);
    for _ in 0..40 {
        let endpoints: Vec<String> = (0..1 + rng.below(8)).map(|i| format!("e{i}")).collect();
        let pool_groups = ["g0", "g1", "g2", "g3"];
        let pool_users = ["u0@x", "u1@x", "U2@x"];
        let mut text = String::new();
        for e in &endpoints {
            text.push_str(&format!(
                "[[endpoints]]\nname = \"{e}\"\nsite = \"s\"\nhost = \"h\"\nport = 1\nprotocol = \"tcp\"\n"
            ));
        }
        let mut rules = Vec::new();
        for i in 0..rng.below(12) {
            let pick = |rng: &mut Rng, pool: &[&str]| -> Vec<String> {
                pool.iter()
                    .filter(|_| rng.below(3) == 0)
                    .map(|s| s.to_string())
                    .collect()
            };
            let mut groups = pick(&mut rng, &pool_groups);
            let users = pick(&mut rng, &pool_users);
            if groups.is_empty() && users.is_empty() {
                groups.push("g0".into());
            }
            let targets = if rng.below(4) == 0 {
                None
            } else {
                let mut t: Vec<String> = endpoints
                    .iter()
                    .filter(|_| rng.below(2) == 0)
                    .cloned()
                    .collect();
                if t.is_empty() {
                    t.push(endpoints[0].clone());
                }
                Some(t)
            };
            let rule = ModelRule {
                id: format!("r{i}"),
                deny: rng.below(4) == 0,
                groups,
                users,
                endpoints: targets,
            };
            rules.push(rule);
        }
        // Unconditional denies after the allows: an allow written after a deny that covers it
        // is refused as unreachable, which is not what this test is about.
        rules.sort_by_key(|r| r.deny);
        for rule in &rules {
            let quoted = |list: &[String]| {
                list.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            text.push_str(&format!(
                "[[rules]]\nid = \"{}\"\neffect = \"{}\"\ngroups = [{}]\nusers = [{}]\nendpoints = [{}]\n",
                rule.id,
                if rule.deny { "deny" } else { "allow" },
                quoted(&rule.groups),
                quoted(&rule.users),
                rule.endpoints.as_deref().map_or("\"*\"".to_owned(), quoted),
            ));
        }
        if rules.is_empty() {
            // A policy without rules must say so (issue #12).
            text.insert_str(0, "deny_all = true\n");
        }
        let policy = parse(&text);

        for _ in 0..50 {
            let user = ["u0@x", "U1@X", "u2@x", "nobody"][rng.below(4)];
            let groups: Vec<String> = pool_groups
                .iter()
                .filter(|_| rng.below(3) == 0)
                .map(|g| g.to_string())
                .collect();
            let endpoint = format!("e{}", rng.below(9));
            let decision = policy.evaluate(&Request::new(
                user,
                &groups,
                &endpoint,
                std::time::SystemTime::now(),
            ));
            let (effect, rule, allows, denies) =
                model_decide(&rules, &endpoints, user, &groups, &endpoint);
            assert_eq!(
                decision.effect, effect,
                "{text}\n{user} {groups:?} {endpoint}"
            );
            assert_eq!(decision.rule, rule, "{text}\n{user} {groups:?} {endpoint}");
            assert_eq!(decision.matched_allows, allows, "{text}");
            assert_eq!(decision.matched_denies, denies, "{text}");
            match (decision.effect, &decision.rule) {
                (Effect::Allow, _) => allowed += 1,
                (Effect::Deny, Some(_)) => denied_by_rule += 1,
                (Effect::Deny, None) => default_denied += 1,
            }
        }
    }
    // Every branch was exercised.
    assert!(
        allowed > 50 && denied_by_rule > 50 && default_denied > 50,
        "allowed {allowed}, denied by rule {denied_by_rule}, default denied {default_denied}"
    );
}
