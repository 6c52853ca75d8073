//! Web applications (issue #16): `http` endpoints, the web endpoint keys, `methods` and `paths`
//! conditions in the three access modes (tunnel, web session, web request), their reasons and
//! traces, and inline tests of web requests.

use std::time::SystemTime;

use crate::tests_lang::{at, errors, parse};
use crate::*;

/// Endpoints and groups (lines 1–46); rules given to [`web_policy`] start on line 48.
const BASE: &str = r#"[defaults]
zone = "Europe/London"

[[groups]]
name = "radiographers"
values = ["Radiographers"]

[[groups]]
name = "radiologists"
values = ["Radiologists"]

[[groups]]
name = "locums"
values = ["Locums"]

[[groups]]
name = "suspended"
values = ["Suspended"]

[[endpoints]]
name = "orthanc-web"
site = "truro"
host = "10.1.2.3"
port = 8042
protocol = "http"

[[endpoints]]
name = "ris-web"
site = "truro"
host = "ris.truro.nhs.local"
port = 443
protocol = "https"

[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "10.1.2.4"
port = 104
protocol = "dicom"
"#;

/// The rules of the semantics tests: one of each kind (allow/deny, with/without methods or
/// paths), for one group each.
const RULES: &str = r#"
[[rules]]
id = "suspended"
effect = "deny"
groups = ["suspended"]
endpoints = ["*"]

[[rules]]
id = "viewer-read-only"
description = "Radiographers may look, not change"
effect = "allow"
groups = ["radiographers"]
endpoints = ["orthanc-web"]
methods = ["GET", "HEAD", "GET"]

[[rules]]
id = "radiologists-full"
effect = "allow"
groups = ["radiologists", "locums", "suspended"]
endpoints = ["orthanc-web", "pacs-dicom"]

[[rules]]
id = "locums-no-admin"
description = "Locums do not use the admin tools"
effect = "deny"
groups = ["locums"]
endpoints = ["orthanc-web"]
paths = ["/tools", "/app/explorer.html"]
"#;

fn web_text(rules: &str) -> String {
    format!("{BASE}\n{rules}")
}

fn web_policy(rules: &str) -> Policy {
    parse(&web_text(rules))
}

/// The warnings other than "group … is not used by any rule" (the base defines groups that
/// not every test uses).
fn web_warnings(p: &Policy) -> Vec<&Diagnostic> {
    p.warnings()
        .iter()
        .filter(|w| !w.message.contains("is not used by any rule"))
        .collect()
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn place(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The only error of `text`, checked to be at `needle`.
fn error_at(text: &str, needle: &str) -> Diagnostic {
    let all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    let d = all.into_iter().next().unwrap();
    assert_eq!((d.line, d.column), place(text, needle), "{d}");
    d
}

const TUESDAY_NOON: &str = "2025-03-04T12:00:00Z";

#[derive(Clone, Copy, Debug)]
enum Mode {
    Tunnel,
    Session,
    Web(&'static str, &'static str),
}

fn decide(p: &Policy, group: &str, endpoint: &str, mode: Mode) -> Decision {
    let groups = vec![group.to_owned()];
    let req = Request::new("someone@truro.nhs.uk", &groups, endpoint, at(TUESDAY_NOON));
    let req = match mode {
        Mode::Tunnel => req,
        Mode::Session => req.with_web_session(),
        Mode::Web(method, path) => req.with_web_request(method, path),
    };
    p.evaluate(&req)
}

/// (effect, deciding rule) for brevity.
fn outcome(d: &Decision) -> (Effect, Option<&str>) {
    (d.effect, d.rule.as_deref())
}

// ---------------------------------------------------------------------------------------------
// Access modes

#[test]
fn request_builders_set_the_access_mode() {
    let groups = vec![];
    let now = SystemTime::now();
    let req = Request::new("u", &groups, "orthanc-web", now);
    assert_eq!(req.access(), AccessMode::Tunnel);
    let req = req.with_web_session();
    assert_eq!(req.access(), AccessMode::WebSession);
    let req = req.with_web_request("GET", "/dicom-web/studies?limit=10");
    assert_eq!(
        req.access(),
        AccessMode::WebRequest {
            method: "GET",
            path: "/dicom-web/studies"
        },
        "the query is not part of the path"
    );
    assert_eq!(req.with_tunnel().access(), AccessMode::Tunnel);
}

#[test]
fn allow_without_methods_or_paths_applies_in_every_mode() {
    let p = web_policy(RULES);
    for mode in [
        Mode::Tunnel,
        Mode::Session,
        Mode::Web("POST", "/tools/find"),
        Mode::Web("DELETE", "/instances/1"),
    ] {
        let d = decide(&p, "Radiologists", "orthanc-web", mode);
        assert_eq!(
            outcome(&d),
            (Effect::Allow, Some("radiologists-full")),
            "{mode:?}"
        );
    }
}

#[test]
fn deny_without_methods_or_paths_applies_in_every_mode() {
    let p = web_policy(RULES);
    for mode in [Mode::Tunnel, Mode::Session, Mode::Web("GET", "/app/")] {
        let d = decide(&p, "Suspended", "orthanc-web", mode);
        assert_eq!(outcome(&d), (Effect::Deny, Some("suspended")), "{mode:?}");
        assert_eq!(d.matched_allows, ["radiologists-full"], "{mode:?}");
    }
}

#[test]
fn allow_with_methods_does_not_grant_a_tunnel() {
    let p = web_policy(RULES);
    let d = decide(&p, "Radiographers", "orthanc-web", Mode::Tunnel);
    assert_eq!(outcome(&d), (Effect::Deny, None));
    assert_eq!(
        d.reason,
        "Denied: access to orthanc-web for radiographers: rule 'viewer-read-only' applies to web requests only (methods/paths), not to a tunnel"
    );
    assert!(d.matched_allows.is_empty());
    assert_eq!(
        d.valid_until, None,
        "time does not make a tunnel a web request"
    );
}

#[test]
fn allow_with_methods_matches_a_web_session() {
    let p = web_policy(RULES);
    let d = decide(&p, "Radiographers", "orthanc-web", Mode::Session);
    assert_eq!(outcome(&d), (Effect::Allow, Some("viewer-read-only")));
    assert_eq!(d.reason, "allowed by rule 'viewer-read-only'");
}

#[test]
fn allow_with_methods_matches_listed_methods_only() {
    let p = web_policy(RULES);
    for method in ["GET", "HEAD"] {
        let d = decide(
            &p,
            "Radiographers",
            "orthanc-web",
            Mode::Web(method, "/app/"),
        );
        assert_eq!(outcome(&d), (Effect::Allow, Some("viewer-read-only")));
    }
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("POST", "/tools/find"),
    );
    assert_eq!(outcome(&d), (Effect::Deny, None));
    assert_eq!(
        d.reason,
        "Denied: POST /tools/find on orthanc-web for radiographers: rule 'viewer-read-only' allows GET, HEAD only, not POST"
    );
    // A method in lower case is not GET: it cannot be compared, so it allows nothing.
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("get", "/app/"),
    );
    assert_eq!(outcome(&d), (Effect::Deny, None));
    assert!(
        d.reason.ends_with(
            "rule 'viewer-read-only' allows GET, HEAD only, and 'get' is not an upper-case method name"
        ),
        "{}",
        d.reason
    );
}

#[test]
fn deny_with_paths_applies_to_a_tunnel() {
    let p = web_policy(RULES);
    let d = decide(&p, "Locums", "orthanc-web", Mode::Tunnel);
    assert_eq!(outcome(&d), (Effect::Deny, Some("locums-no-admin")));
    assert_eq!(
        d.reason,
        "denied by rule 'locums-no-admin': Locums do not use the admin tools"
    );
    assert_eq!(d.matched_allows, ["radiologists-full"]);
}

#[test]
fn deny_with_paths_does_not_stop_a_web_session() {
    let p = web_policy(RULES);
    let d = decide(&p, "Locums", "orthanc-web", Mode::Session);
    assert_eq!(outcome(&d), (Effect::Allow, Some("radiologists-full")));
    assert!(d.matched_denies.is_empty());
}

#[test]
fn deny_with_paths_refuses_matching_web_requests_only() {
    let p = web_policy(RULES);
    let cases = [
        ("GET", "/tools", Some("locums-no-admin")),
        ("GET", "/tools/find", Some("locums-no-admin")),
        ("POST", "/tools/execute-script", Some("locums-no-admin")),
        ("GET", "/app/explorer.html", Some("locums-no-admin")),
        ("GET", "/toolsx", None),
        ("GET", "/app/explorer.htmlx", None),
        ("GET", "/app/explorer.js", None),
        ("GET", "/dicom-web/studies", None),
        ("GET", "/", None),
        // Not in normal form: cannot be compared, so the deny applies (fail closed).
        ("GET", "/app/../tools/find", Some("locums-no-admin")),
        ("GET", "/%74ools/find", Some("locums-no-admin")),
        ("GET", "//tools/find", Some("locums-no-admin")),
        ("GET", "/app/%2e%2e/tools", Some("locums-no-admin")),
        ("GET", "tools", Some("locums-no-admin")),
    ];
    for (method, path, deny) in cases {
        let d = decide(&p, "Locums", "orthanc-web", Mode::Web(method, path));
        match deny {
            Some(rule) => assert_eq!(outcome(&d), (Effect::Deny, Some(rule)), "{path}"),
            None => assert_eq!(
                outcome(&d),
                (Effect::Allow, Some("radiologists-full")),
                "{path}"
            ),
        }
    }
}

#[test]
fn allow_with_paths_takes_prefixes_on_segment_boundaries() {
    let p = web_policy(
        r#"[[rules]]
id = "dicomweb-only"
effect = "allow"
groups = ["radiographers"]
endpoints = ["orthanc-web"]
paths = ["/dicom-web", "/app/"]
"#,
    );
    for (path, allowed) in [
        ("/dicom-web", true),
        ("/dicom-web/", true),
        ("/dicom-web/studies/1.2.3/series", true),
        ("/dicom-webx", false),
        ("/dicom-we", false),
        ("/app/", true),
        ("/app/explorer.html", true),
        ("/app", false),
        ("/DICOM-WEB/studies", false),
        ("/dicom-web/../system", false),
        ("/dicom-web/%2e%2e/system", false),
        ("/dicom-web%2Fstudies", false),
    ] {
        let d = decide(&p, "Radiographers", "orthanc-web", Mode::Web("GET", path));
        assert_eq!(d.is_allowed(), allowed, "{path}: {}", d.reason);
    }
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("GET", "/app/../system"),
    );
    assert!(
        d.reason.ends_with(
            "rule 'dicomweb-only' allows paths /dicom-web, /app/ only, and the path '/app/../system' has a '.' or '..' segment, so it cannot be compared"
        ),
        "{}",
        d.reason
    );
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("GET", "/app?x=/dicom-web"),
    );
    assert!(!d.is_allowed(), "the query is not part of the path");
}

#[test]
fn paths_reason_names_the_prefixes_and_the_path() {
    let p = web_policy(
        r#"[[rules]]
id = "x"
effect = "allow"
groups = ["radiographers"]
endpoints = ["orthanc-web"]
paths = ["/dicom-web/"]
"#,
    );
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("GET", "/app/explorer.html"),
    );
    assert_eq!(
        d.reason,
        "Denied: GET /app/explorer.html on orthanc-web for radiographers: rule 'x' allows paths /dicom-web/ only, not /app/explorer.html"
    );
}

#[test]
fn methods_and_paths_together_need_both() {
    let p = web_policy(
        r#"[[rules]]
id = "read-dicomweb"
effect = "allow"
groups = ["radiographers"]
endpoints = ["orthanc-web"]
methods = ["GET"]
paths = ["/dicom-web/"]

[[rules]]
id = "no-deletes-of-studies"
effect = "deny"
groups = ["radiologists"]
endpoints = ["orthanc-web"]
methods = ["DELETE"]
paths = ["/studies/"]

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["orthanc-web"]
"#,
    );
    let radiographer = |m, path| decide(&p, "Radiographers", "orthanc-web", Mode::Web(m, path));
    assert!(radiographer("GET", "/dicom-web/studies").is_allowed());
    assert!(!radiographer("POST", "/dicom-web/studies").is_allowed());
    assert!(!radiographer("GET", "/app/").is_allowed());
    // Methods are checked first, so a wrong method is the reason even on a wrong path.
    assert!(radiographer("PUT", "/app/")
        .reason
        .ends_with("allows GET only, not PUT"));

    let radiologist = |m, path| decide(&p, "Radiologists", "orthanc-web", Mode::Web(m, path));
    assert_eq!(
        outcome(&radiologist("DELETE", "/studies/1")),
        (Effect::Deny, Some("no-deletes-of-studies"))
    );
    assert!(radiologist("DELETE", "/instances/1").is_allowed());
    assert!(radiologist("GET", "/studies/1").is_allowed());
    // An unknown method cannot be compared: the deny applies.
    assert_eq!(
        outcome(&radiologist("delete", "/studies/1")),
        (Effect::Deny, Some("no-deletes-of-studies"))
    );
    // Tunnel: the deny applies (a tunnel could delete); session: it does not.
    assert_eq!(
        outcome(&decide(&p, "Radiologists", "orthanc-web", Mode::Tunnel)),
        (Effect::Deny, Some("no-deletes-of-studies"))
    );
    assert_eq!(
        outcome(&decide(&p, "Radiologists", "orthanc-web", Mode::Session)),
        (Effect::Allow, Some("radiologists"))
    );
}

#[test]
fn valid_until_still_follows_windows_in_web_modes() {
    let p = web_policy(
        r#"[[rules]]
id = "day-viewer"
effect = "allow"
groups = ["radiographers"]
endpoints = ["orthanc-web"]
methods = ["GET", "HEAD"]
windows = ["Mon-Fri 08:00-18:00"]
"#,
    );
    let session = decide(&p, "Radiographers", "orthanc-web", Mode::Session);
    assert!(session.is_allowed());
    assert_eq!(session.valid_until, Some(at("2025-03-04T18:00:00Z")));
    let get = decide(&p, "Radiographers", "orthanc-web", Mode::Web("GET", "/"));
    assert!(get.is_allowed());
    assert_eq!(get.valid_until, Some(at("2025-03-04T18:00:00Z")));
    // No passage of time lets a POST through, nor a tunnel.
    let post = decide(&p, "Radiographers", "orthanc-web", Mode::Web("POST", "/"));
    assert!(!post.is_allowed());
    assert_eq!(post.valid_until, None);
    let tunnel = decide(&p, "Radiographers", "orthanc-web", Mode::Tunnel);
    assert!(!tunnel.is_allowed());
    assert_eq!(tunnel.valid_until, None);
}

// ---------------------------------------------------------------------------------------------
// Trace

#[test]
fn explain_traces_methods_and_paths() {
    let p = web_policy(RULES);
    let groups = vec!["Radiographers".to_owned()];
    let req = Request::new("r@truro.nhs.uk", &groups, "orthanc-web", at(TUESDAY_NOON))
        .with_web_request("POST", "/tools/find");
    let e = p.explain(&req);
    assert_eq!(e.access, "web request POST /tools/find");
    let rule = &e.rules[0];
    assert_eq!(
        (rule.rule.as_str(), rule.matched),
        ("viewer-read-only", false)
    );
    assert_eq!(rule.conditions.len(), 1);
    let c = &rule.conditions[0];
    assert_eq!(
        (c.condition.as_str(), c.outcome, c.detail.as_str()),
        ("methods", "not met", "allows GET, HEAD only, not POST")
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("access:          web request POST /tools/find\n"),
        "{shown}"
    );
    assert!(
        shown.contains("methods                  not met  allows GET, HEAD only, not POST"),
        "{shown}"
    );

    let tunnel = p.explain(&Request::new(
        "r@truro.nhs.uk",
        &groups,
        "orthanc-web",
        at(TUESDAY_NOON),
    ));
    assert_eq!(tunnel.access, "tunnel");
    let c = &tunnel.rules[0].conditions[0];
    assert_eq!(
        (c.outcome, c.detail.as_str()),
        (
            "unknown",
            "applies to web requests only (methods/paths), not to a tunnel"
        )
    );

    let locums = vec!["Locums".to_owned()];
    let session = p.explain(
        &Request::new("l@truro.nhs.uk", &locums, "orthanc-web", at(TUESDAY_NOON))
            .with_web_session(),
    );
    assert_eq!(session.access, "web session");
    let deny = session
        .rules
        .iter()
        .find(|r| r.rule == "locums-no-admin")
        .unwrap();
    assert!(!deny.matched);
    assert_eq!(
        deny.conditions[0].detail,
        "denies paths /tools, /app/explorer.html only: checked on each web request, not on the session"
    );
    let get = p.explain(
        &Request::new("l@truro.nhs.uk", &locums, "orthanc-web", at(TUESDAY_NOON))
            .with_web_request("GET", "/tools/find"),
    );
    let deny = get
        .rules
        .iter()
        .find(|r| r.rule == "locums-no-admin")
        .unwrap();
    assert!(deny.matched);
    assert_eq!(
        deny.conditions[0].detail,
        "denies paths /tools, /app/explorer.html, including /tools/find"
    );
    let json = serde_json::to_value(&get).unwrap();
    assert_eq!(json["access"], "web request GET /tools/find");
}

#[test]
fn untrusted_methods_and_paths_are_quoted_in_reasons() {
    let p = web_policy(RULES);
    let d = decide(
        &p,
        "Radiographers",
        "orthanc-web",
        Mode::Web("GET\nFORGED", "/app/"),
    );
    assert!(!d.is_allowed());
    assert!(!d.reason.contains('\n'), "{}", d.reason);
    assert!(d.reason.contains("GET\\nFORGED"), "{}", d.reason);
}

// ---------------------------------------------------------------------------------------------
// Validation: endpoints

#[test]
fn http_is_a_protocol_and_web_keys_resolve() {
    let p = web_policy(
        r#"[[endpoints]]
name = "viewer"
site = "truro"
host = "viewer.local"
port = 443
protocol = "https"
tls_verify = false
upstream_host = "viewer.truro.nhs.uk:8443"
request_audit = "1/100"

[[rules]]
id = "r"
effect = "allow"
groups = ["radiologists"]
endpoints = ["*"]
"#,
    );
    let orthanc = p.endpoint("orthanc-web").unwrap();
    assert_eq!(orthanc.protocol, Protocol::Http);
    assert!(orthanc.protocol.is_web());
    assert!(orthanc.tls_verify);
    assert_eq!(orthanc.upstream_host, None);
    assert_eq!(orthanc.request_audit, RequestAudit::All);
    let viewer = p.endpoint("viewer").unwrap();
    assert!(!viewer.tls_verify);
    assert_eq!(
        viewer.upstream_host.as_deref(),
        Some("viewer.truro.nhs.uk:8443")
    );
    assert_eq!(viewer.request_audit, RequestAudit::Sample(100));
    let json = serde_json::to_value(viewer).unwrap();
    assert_eq!(json["request_audit"], "1/100");
    assert_eq!(json["protocol"], "https");
    let dicom = p.endpoint("pacs-dicom").unwrap();
    assert!(!dicom.protocol.is_web());
    assert!(dicom.tls_verify);
    assert_eq!(dicom.request_audit, RequestAudit::All);
}

fn endpoint_text(protocol: &str, extra: &str) -> String {
    format!(
        r#"[[endpoints]]
name = "e"
site = "truro"
host = "e.local"
port = 80
protocol = "{protocol}"
{extra}

[[rules]]
id = "r"
effect = "allow"
groups = ["g"]
endpoints = ["e"]
"#
    )
}

#[test]
fn web_keys_are_refused_on_other_protocols() {
    for (key, value) in [
        ("tls_verify", "false"),
        ("upstream_host", "\"e.example\""),
        ("request_audit", "\"off\""),
    ] {
        for protocol in ["dicom", "rdp", "tcp"] {
            let text = endpoint_text(protocol, &format!("{key} = {value}"));
            let d = error_at(&text, &format!("{value}\n"));
            assert_eq!(d.kind, ErrorKind::InvalidValue);
            assert_eq!(
                d.message,
                format!("`{key}` of endpoint 'e' is only for web endpoints (protocol \"http\" or \"https\"), and this endpoint's protocol is \"{protocol}\"")
            );
            assert!(d
                .hint
                .as_deref()
                .unwrap()
                .starts_with(&format!("remove `{key}`")));
        }
    }
}

#[test]
fn tls_verify_is_refused_on_http() {
    let text = endpoint_text("http", "tls_verify = true");
    let d = error_at(&text, "true\n");
    assert_eq!(
        d.message,
        "`tls_verify` of endpoint 'e' is only for protocol \"https\": with \"http\" the connector does not use TLS to the upstream, so there is no certificate to verify"
    );
    // The other web keys are fine on http.
    let p = parse(&endpoint_text(
        "http",
        "upstream_host = \"orthanc.truro.nhs.uk\"\nrequest_audit = \"off\"",
    ));
    let e = p.endpoint("e").unwrap();
    assert_eq!(e.request_audit, RequestAudit::Off);
    assert_eq!(e.upstream_host.as_deref(), Some("orthanc.truro.nhs.uk"));
}

#[test]
fn upstream_host_must_be_a_host_with_an_optional_port() {
    for bad in [
        "https://orthanc.local",
        "orthanc.local/app",
        "orthanc.local:0",
        "fd00::5",
        "",
    ] {
        let text = endpoint_text("https", &format!("upstream_host = \"{bad}\""));
        let d = error_at(&text, &format!("\"{bad}\"\n"));
        assert_eq!(
            d.message,
            format!("upstream_host '{bad}' of endpoint 'e' is not a host name or address with an optional port")
        );
    }
    let long = format!("{}.local", "a.".repeat(130));
    let text = endpoint_text("https", &format!("upstream_host = \"{long}\""));
    let d = error_at(&text, &format!("\"{long}\""));
    assert!(
        d.message
            .ends_with(&format!("is {} bytes long (the limit is 259)", long.len())),
        "{}",
        d.message
    );
    for good in ["[fd00::5]:8042", "10.1.2.3:8042", "orthanc"] {
        let p = parse(&endpoint_text(
            "https",
            &format!("upstream_host = \"{good}\""),
        ));
        assert_eq!(
            p.endpoint("e").unwrap().upstream_host.as_deref(),
            Some(good)
        );
    }
}

#[test]
fn request_audit_takes_all_off_or_one_in_n() {
    for bad in ["1/1", "1/0", "1/1000001", "some", "10%", "1/N"] {
        let text = endpoint_text("https", &format!("request_audit = \"{bad}\""));
        let d = error_at(&text, &format!("\"{bad}\""));
        assert_eq!(
            d.message,
            format!("request_audit '{bad}' of endpoint 'e' is not \"all\", \"off\" or \"1/N\"")
        );
        assert!(d.hint.as_deref().unwrap().contains("N from 2 to 1000000"));
    }
    let p = parse(&endpoint_text("https", "request_audit = \"1/1000000\""));
    assert_eq!(
        p.endpoint("e").unwrap().request_audit,
        RequestAudit::Sample(1_000_000)
    );
    // A wrong type is a type error at the value.
    let text = endpoint_text("https", "tls_verify = \"no\"");
    let d = error_at(&text, "\"no\"");
    assert_eq!(d.kind, ErrorKind::InvalidType);
}

#[test]
fn unknown_protocol_suggests_http() {
    let text = endpoint_text("htp", "");
    let d = error_at(&text, "\"htp\"");
    assert_eq!(d.message, "endpoint 'e' has unknown protocol 'htp'");
    assert_eq!(d.hint.as_deref(), Some("did you mean \"http\"?"));
    let text = endpoint_text("ftp", "");
    let d = error_at(&text, "\"ftp\"");
    assert_eq!(
        d.hint.as_deref(),
        Some("protocol is one of dicom, rdp, http, https, tcp")
    );
}

// ---------------------------------------------------------------------------------------------
// Validation: rules

fn rule_text(body: &str) -> String {
    web_text(&format!(
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"radiographers\"]\n{body}\n"
    ))
}

#[test]
fn methods_must_be_known_upper_case_methods() {
    let text = rule_text("endpoints = [\"orthanc-web\"]\nmethods = [\"GET\", \"get\"]");
    let d = error_at(&text, "\"get\"");
    assert_eq!(
        d.message,
        "unknown HTTP method 'get' in `methods` of rule 'r'"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("methods are written in upper case: \"GET\"")
    );
    let text = rule_text("endpoints = [\"orthanc-web\"]\nmethods = [\"TRACE\"]");
    let d = error_at(&text, "\"TRACE\"");
    assert_eq!(
        d.message,
        "unknown HTTP method 'TRACE' in `methods` of rule 'r'"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("`methods` accepts GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
    );
    let text = rule_text("endpoints = [\"orthanc-web\"]\nmethods = []");
    let d = error_at(&text, "[]");
    assert_eq!(d.kind, ErrorKind::NeverMatches);
    assert_eq!(
        d.message,
        "`methods` of rule 'r' is empty, so no web request matches it"
    );
    let text = rule_text("endpoints = [\"orthanc-web\"]\nmethods = \"GET\"");
    assert_eq!(error_at(&text, "\"GET\"").kind, ErrorKind::InvalidType);
}

#[test]
fn duplicate_methods_and_paths_collapse() {
    let p = parse(&rule_text(
        "endpoints = [\"orthanc-web\"]\nmethods = [\"HEAD\", \"GET\", \"HEAD\"]\npaths = [\"/a/\", \"/a/\"]",
    ));
    let groups = vec!["Radiographers".to_owned()];
    let req =
        Request::new("r", &groups, "orthanc-web", at(TUESDAY_NOON)).with_web_request("PUT", "/b");
    let e = p.explain(&req);
    let details: Vec<&str> = e.rules[0]
        .conditions
        .iter()
        .map(|c| c.detail.as_str())
        .collect();
    assert_eq!(
        details,
        [
            "allows GET, HEAD only, not PUT",
            "allows paths /a/ only, not /b"
        ]
    );
}

#[test]
fn path_prefixes_are_validated_with_their_location() {
    for (path, problem) in [
        ("dicom-web/", "does not start with '/'"),
        ("/dicom-web/?x=1", "has a query ('?')"),
        ("/app/#top", "has a fragment ('#')"),
        ("/app/../tools", "has a '.' or '..' segment"),
        ("/./app", "has a '.' or '..' segment"),
        ("/app//x", "has an empty segment ('//')"),
        ("/app%2Fx", "has a percent-encoded '/' or '\\'"),
        (
            "/%2e%2e/x",
            "percent-encodes a character that needs no encoding (such as %2E for '.')",
        ),
        ("/a b", "has a space or control character"),
    ] {
        let text = rule_text(&format!(
            "endpoints = [\"orthanc-web\"]\npaths = [\"/ok/\", \"{path}\"]"
        ));
        let d = error_at(&text, &format!("\"{path}\""));
        assert_eq!(d.kind, ErrorKind::InvalidValue, "{path}");
        assert_eq!(
            d.message,
            format!("path prefix '{path}' in `paths` of rule 'r' {problem}")
        );
    }
    let long = format!("/{}", "a".repeat(256));
    let text = rule_text(&format!(
        "endpoints = [\"orthanc-web\"]\npaths = [\"{long}\"]"
    ));
    let d = error_at(&text, &format!("\"{long}\""));
    assert_eq!(
        d.message,
        format!(
            "path prefix '{}…' in `paths` of rule 'r' is 257 bytes long (the limit is 256)",
            &long[..80]
        )
    );
    let ok = format!("/{}", "a".repeat(255));
    parse(&rule_text(&format!(
        "endpoints = [\"orthanc-web\"]\npaths = [\"{ok}\"]"
    )));

    let many: Vec<String> = (0..65).map(|i| format!("\"/p{i}/\"")).collect();
    let text = rule_text(&format!(
        "endpoints = [\"orthanc-web\"]\npaths = [{}]",
        many.join(", ")
    ));
    let d = error_at(&text, "[\"/p0/\"");
    assert_eq!(d.kind, ErrorKind::LimitExceeded);
    assert_eq!(
        d.message,
        "`paths` of rule 'r' lists 65 prefixes (the limit is 64)"
    );
    let text = rule_text("endpoints = [\"orthanc-web\"]\npaths = []");
    assert_eq!(
        error_at(&text, "[]").message,
        "`paths` of rule 'r' is empty, so no web request matches it"
    );
}

#[test]
fn methods_on_rules_without_web_endpoints_are_errors() {
    let text = rule_text("endpoints = [\"pacs-dicom\"]\nmethods = [\"GET\"]");
    let d = error_at(&text, "[\"GET\"]");
    assert_eq!(d.kind, ErrorKind::NeverMatches);
    assert_eq!(
        d.message,
        "rule 'r' has `methods`, which apply only to web endpoints (protocol \"http\" or \"https\"), but it selects none: pacs-dicom (dicom)"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("select the web endpoints the restriction is for, or remove `methods`")
    );
    let text = rule_text("endpoints = [\"pacs-*\"]\nmethods = [\"GET\"]\npaths = [\"/\"]");
    let d = error_at(&text, "[\"GET\"]");
    assert!(
        d.message
            .starts_with("rule 'r' has `methods` and `paths`, which apply only"),
        "{}",
        d.message
    );
    let text = rule_text("endpoints = [\"pacs-dicom\"]\npaths = [\"/\"]");
    let d = error_at(&text, "[\"/\"]");
    assert!(
        d.message.starts_with("rule 'r' has `paths`,"),
        "{}",
        d.message
    );
}

#[test]
fn methods_narrow_a_rule_to_its_web_endpoints() {
    // "*": silently the web endpoints only; the deny does not touch the DICOM tunnel.
    let p = web_policy(
        r#"[[rules]]
id = "no-writes"
effect = "deny"
groups = ["locums"]
endpoints = ["*"]
methods = ["POST", "PUT", "DELETE", "PATCH"]

[[rules]]
id = "locums"
effect = "allow"
groups = ["locums"]
endpoints = ["*"]
"#,
    );
    assert!(web_warnings(&p).is_empty(), "{:?}", p.warnings());
    assert_eq!(
        outcome(&decide(&p, "Locums", "pacs-dicom", Mode::Tunnel)),
        (Effect::Allow, Some("locums"))
    );
    assert_eq!(
        outcome(&decide(&p, "Locums", "ris-web", Mode::Tunnel)),
        (Effect::Deny, Some("no-writes"))
    );
    assert_eq!(
        outcome(&decide(&p, "Locums", "ris-web", Mode::Web("PATCH", "/x"))),
        (Effect::Deny, Some("no-writes"))
    );
    assert!(decide(&p, "Locums", "ris-web", Mode::Web("GET", "/x")).is_allowed());

    // A non-web endpoint named one by one: a warning, at `methods`.
    let text = rule_text("endpoints = [\"orthanc-web\", \"pacs-dicom\"]\nmethods = [\"GET\"]");
    let p = parse(&text);
    let w = web_warnings(&p)[0];
    assert_eq!((w.line, w.column), place(&text, "[\"GET\"]"));
    assert_eq!(
        w.message,
        "rule 'r' has `methods`, which apply only to web endpoints, so it does not apply to pacs-dicom (dicom)"
    );
    assert!(!decide(&p, "Radiographers", "pacs-dicom", Mode::Session).is_allowed());
}

#[test]
fn methods_and_paths_cannot_be_report_only() {
    let text = rule_text(
        "endpoints = [\"orthanc-web\"]\nmethods = [\"GET\"]\nreport_only = [\"methods\"]",
    );
    let d = error_at(&text, "\"methods\"]");
    assert_eq!(d.kind, ErrorKind::UnknownCondition);
    assert_eq!(
        d.message,
        "`methods` of rule 'r' cannot be report-only: the rule would then allow every request, tunnels included"
    );
}

#[test]
fn a_deny_with_methods_does_not_shadow_later_allows() {
    let p = web_policy(
        r#"[[rules]]
id = "no-deletes"
effect = "deny"
groups = ["*"]
endpoints = ["orthanc-web"]
methods = ["DELETE"]

[[rules]]
id = "all"
effect = "allow"
groups = ["radiologists"]
endpoints = ["orthanc-web"]
"#,
    );
    assert!(web_warnings(&p).is_empty(), "{:?}", p.warnings());
}

// ---------------------------------------------------------------------------------------------
// Inline tests

#[test]
fn inline_tests_take_method_path_and_web_session() {
    let p = web_policy(&format!(
        "{RULES}{}",
        r#"
[[tests]]
name = "radiographer reads"
user = "r@truro.nhs.uk"
groups = ["Radiographers"]
endpoint = "orthanc-web"
method = "GET"
path = "/dicom-web/studies"
at = 2025-03-04T12:00:00Z
expect = "allow"
rule = "viewer-read-only"

[[tests]]
name = "radiographer cannot upload"
user = "r@truro.nhs.uk"
groups = ["Radiographers"]
endpoint = "orthanc-web"
method = "POST"
path = "/instances"
at = 2025-03-04T12:00:00Z
expect = "deny"
reason_contains = "rule 'viewer-read-only' allows GET, HEAD only, not POST"

[[tests]]
name = "radiographer opens the viewer"
user = "r@truro.nhs.uk"
groups = ["Radiographers"]
endpoint = "orthanc-web"
web_session = true
at = 2025-03-04T12:00:00Z
expect = "allow"

[[tests]]
name = "radiographer gets no tunnel"
user = "r@truro.nhs.uk"
groups = ["Radiographers"]
endpoint = "orthanc-web"
at = 2025-03-04T12:00:00Z
expect = "deny"
reason_contains = "not to a tunnel"

[[tests]]
name = "wrongly expected"
user = "l@truro.nhs.uk"
groups = ["Locums"]
endpoint = "orthanc-web"
method = "GET"
path = "/tools/find"
at = 2025-03-04T12:00:00Z
expect = "allow"
"#
    ));
    let cases = p.tests();
    assert_eq!(cases[0].method.as_deref(), Some("GET"));
    assert_eq!(cases[0].path.as_deref(), Some("/dicom-web/studies"));
    assert!(!cases[0].web_session);
    assert!(cases[2].web_session);
    assert_eq!(
        cases[0].request().access(),
        AccessMode::WebRequest {
            method: "GET",
            path: "/dicom-web/studies"
        }
    );
    assert_eq!(cases[2].request().access(), AccessMode::WebSession);
    assert_eq!(cases[3].request().access(), AccessMode::Tunnel);
    let report = p.run_tests();
    let failed: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.case.name.as_str())
        .collect();
    assert_eq!(failed, ["wrongly expected"], "{report}");
    assert_eq!(
        report.outcomes[4].failure.as_deref(),
        Some("expected allow, got deny (denied by rule 'locums-no-admin': Locums do not use the admin tools)")
    );
}

#[test]
fn inline_tests_need_method_and_path_together() {
    let test = |extra: &str| {
        web_text(&format!(
            "{RULES}\n[[tests]]\nname = \"t\"\nuser = \"u\"\nendpoint = \"orthanc-web\"\nat = 2025-03-04T12:00:00Z\nexpect = \"deny\"\n{extra}\n"
        ))
    };
    let text = test("method = \"GET\"");
    let d = error_at(&text, "\"GET\"\n");
    assert_eq!(d.kind, ErrorKind::MissingField);
    assert_eq!(
        d.message,
        "test 't' gives `method` but no `path`: a web request needs both"
    );
    let text = test("path = \"/app/\"");
    let d = error_at(&text, "\"/app/\"\n");
    assert_eq!(
        d.message,
        "test 't' gives `path` but no `method`: a web request needs both"
    );
    let text = test("web_session = true\nmethod = \"GET\"\npath = \"/\"");
    let d = error_at(&text, "\"GET\"\n");
    assert_eq!(
        d.message,
        "test 't' gives both `web_session = true` and a web request (`method`, `path`)"
    );
}

#[test]
fn diff_reports_changed_methods() {
    let old = web_policy(RULES);
    let new = web_policy(&RULES.replace(
        "methods = [\"GET\", \"HEAD\", \"GET\"]",
        "methods = [\"GET\", \"HEAD\", \"POST\"]",
    ));
    let diff = Policy::diff(&old, &new, at("2025-03-03T00:00:00Z"));
    let changed: Vec<&str> = diff.samples.iter().map(|c| c.request.as_str()).collect();
    assert!(
        changed.iter().any(|c| c.starts_with(
            "a member of group 'radiographers' → orthanc-web (web request POST /tools)"
        )),
        "{changed:#?}"
    );
    assert!(
        changed.iter().all(|c| c.contains("(web request POST ")),
        "only POST requests change: {changed:#?}"
    );
    let same = Policy::diff(&old, &old, at("2025-03-03T00:00:00Z"));
    assert!(same.is_empty());
}

// The cost of a web request next to a tunnel decision is measured by the bench
// (`decision/web-request-read-only` in benches/evaluate.rs), not asserted in a test: timings
// flake on loaded machines.
