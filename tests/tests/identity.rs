//! Who the gateway says signed in, end to end: the real gateway and `postern` CLI against the
//! scriptable rogue IdP (claims chosen per test) — the user claim and `email_verified`, the
//! groups claim, MFA from `amr`, a missing `auth_time`, `max_age` in the authorization request —
//! and `postern-gateway user revoke` run against a state directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use postern_e2e::oidc::{jwt_decode, Browser};
use postern_e2e::rogue_idp::RogueIdp;
use postern_e2e::{bin, run, wait_for, Deployment, Echo};
use serde_json::{json, Value};

const CLIENT_ID: &str = "postern-gateway";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `echo` for radiologists; `echo-recent` also needs a sign-in at most 12 h old (only when
/// `recent` is set, so other tests run without any sign-in age rule).
fn policy(echo: std::net::SocketAddr, recent: bool) -> String {
    let mut p = postern_e2e::echo_policy(echo);
    if recent {
        p.push_str(&format!(
            r#"
[[endpoints]]
name = "echo-recent"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[rules]]
id = "recent-sign-in"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-recent"]
auth = {{ max_age = "12h" }}
max_session = "1h"
"#,
            port = echo.port()
        ));
    }
    p
}

/// A gateway (device trust off) signing in against a rogue IdP, with `oidc_extra` added to its
/// `[oidc]` table.
fn gateway(policy: &str, oidc_extra: &str) -> (Deployment, RogueIdp) {
    let mut d = Deployment::prepare(policy);
    let idp = RogueIdp::start(CLIENT_ID);
    std::fs::write(d.path("oidc-secret"), "s3cret-for-tests-only").unwrap();
    d.append_config(&format!(
        "[oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{}\"\ninsecure_http_issuer = true\n{oidc_extra}\n[devices]\nrequired = false\n",
        idp.issuer,
        d.callback_url()
    ));
    d.start_gateway();
    (d, idp)
}

/// A browser-only sign-in: (HTTP status, page body).
fn browser_sign_in(d: &Deployment) -> (u16, String) {
    let r = Browser::new(&d.ca_file()).get(&format!("{}/auth/login", d.url()));
    (r.status, r.body)
}

/// The `auth.failed` event after the first `before`.
fn next_failure(d: &Deployment, before: usize) -> Value {
    wait_for("auth.failed", Duration::from_secs(10), || {
        let v = d.events("auth.failed");
        (v.len() > before).then(|| v[before].clone())
    })
}

#[test]
fn the_default_user_is_the_idp_subject_not_the_email() {
    let echo = Echo::start();
    let (d, idp) = gateway(&policy(echo.addr, false), "");
    // A guest account that set a colleague's address, unverified: by default the e-mail plays
    // no part in who the user is.
    idp.set_claims(json!({"email": "ann.jones@hospital.test", "email_verified": false}));
    let (status, body) = browser_sign_in(&d);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Signed in as sub-mallory"), "{body}");
    let login = d.wait_event("auth.login", |_| true);
    assert_eq!(login["user"], "sub-mallory", "{login}");
    // No policy rule needs the sign-in age, so no max_age is asked for.
    assert_eq!(idp.last_authorize_param("max_age"), "");
}

#[test]
fn email_names_the_user_only_when_verified_and_nothing_replaces_a_missing_claim() {
    let echo = Echo::start();
    let (d, idp) = gateway(&policy(echo.addr, false), "user_claim = \"email\"");
    let cases = [
        (
            json!({"email": "ann.jones@hospital.test", "email_verified": false}),
            "email_unverified",
            "email_verified = false",
        ),
        (
            json!({"email": "ann.jones@hospital.test", "email_verified": null}),
            "email_unverified",
            "email_verified = absent",
        ),
        // No e-mail at all: refused, not signed in as the subject instead.
        (
            json!({"email": null}),
            "user_claim_missing",
            "no `email` claim",
        ),
    ];
    assert_eq!(cases.len(), 3);
    for (claims, code, detail) in cases {
        idp.set_claims(claims.clone());
        let before = d.count("auth.failed");
        let (status, body) = browser_sign_in(&d);
        assert_eq!(status, 403, "{claims} was not refused: {body}");
        assert!(
            body.contains("did not say who you are") || body.contains("not verified your e-mail"),
            "{claims}: {body}"
        );
        let failed = next_failure(&d, before);
        let text = s(&failed["detail"]);
        assert!(
            text.contains(code) && text.contains(detail),
            "{claims}: {text}"
        );
    }
    assert_eq!(d.count("auth.login"), 0, "nobody may have signed in");
    // A verified address signs in, under that address.
    idp.set_claims(json!({"email": "Ann.Jones@hospital.test", "email_verified": true}));
    let (status, body) = browser_sign_in(&d);
    assert_eq!(status, 200, "{body}");
    let login = d.wait_event("auth.login", |_| true);
    assert_eq!(login["user"], "Ann.Jones@hospital.test", "{login}");
}

#[test]
fn a_string_groups_claim_is_one_group() {
    let echo = Echo::start();
    let (d, idp) = gateway(&policy(echo.addr, false), "");
    idp.set_claims(json!({"groups": "Radiology Consultants"}));
    let (status, body) = browser_sign_in(&d);
    assert_eq!(status, 200, "{body}");
    let login = d.wait_event("auth.login", |_| true);
    assert_eq!(login["groups"], json!(["Radiology Consultants"]), "{login}");
    // Neither "Radiology" nor "Consultants" alone: a list is only ever an array.
    idp.set_claims(json!({"groups": ["radiologists", "Radiology Consultants"]}));
    let (status, _) = browser_sign_in(&d);
    assert_eq!(status, 200);
    let logins = wait_for("second auth.login", Duration::from_secs(10), || {
        let v = d.events("auth.login");
        (v.len() >= 2).then_some(v)
    });
    assert_eq!(
        logins[1]["groups"],
        json!(["radiologists", "Radiology Consultants"])
    );
    // Anything else in the groups claim is refused with the reason, not guessed at.
    idp.set_claims(json!({"groups": {"radiologists": true}}));
    let before = d.count("auth.failed");
    let (status, _) = browser_sign_in(&d);
    assert_eq!(status, 403);
    let failed = next_failure(&d, before);
    assert!(
        s(&failed["detail"]).contains("groups_claim_invalid"),
        "{failed}"
    );
}

#[test]
fn one_factor_is_not_mfa_and_an_unknown_sign_in_time_fails_a_max_age_rule() {
    let echo = Echo::start();
    let (d, idp) = gateway(&policy(echo.addr, true), "");
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    // A hardware key alone is one factor; and the IdP does not say when the user signed in.
    idp.set_claims(json!({"amr": ["hwk"]}));
    let cfg = d.path("one-factor");
    let token = d.cli_login(&cfg).expect("sign-in");
    // A rule needs the sign-in age, so the gateway asked the IdP for it: 12 h.
    assert_eq!(idp.last_authorize_param("max_age"), "43200");
    let (_, claims) = jwt_decode(&std::fs::read_to_string(&token).unwrap());
    assert_eq!(claims["mfa"], false, "{claims}");
    assert!(claims["auth_time"].is_null(), "{claims}");
    let login = d.wait_event("auth.login", |_| true);
    assert!(s(&login["detail"]).contains("mfa false"), "{login}");
    // The plain rule still allows it (the token itself works) ...
    let (mut ok, _) = d.connect("echo", &token).expect("echo is allowed");
    ok.kill();
    // ... but a rule on sign-in age does not: unknown is not "just now".
    let err = d
        .connect("echo-recent", &token)
        .err()
        .expect("echo-recent must be denied");
    assert!(
        err.contains(
            "Access to echo-recent for radiologists requires a sign-in within the last 12h"
        ),
        "{err}"
    );
    let ev = d.wait_event("session.denied", |e| e["endpoint"]["name"] == "echo-recent");
    let reason = s(&ev["decision"]["reason"]);
    assert!(
        reason.contains("sign-in time") && reason.contains("unknown"),
        "{ev}"
    );

    // With `mfa` in amr and an auth_time, both hold.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    idp.set_claims(json!({"amr": ["pwd", "mfa"], "auth_time": now - 60}));
    let cfg = d.path("two-factor");
    let token = d.cli_login(&cfg).expect("sign-in");
    let (_, claims) = jwt_decode(&std::fs::read_to_string(&token).unwrap());
    assert_eq!(claims["mfa"], true, "{claims}");
    assert_eq!(claims["auth_time"], now - 60, "{claims}");
    let (mut ok, _) = d
        .connect("echo-recent", &token)
        .expect("a recent sign-in is allowed");
    ok.kill();
}

/// `postern-gateway ARGS --config gateway.toml`: (success, stdout, stderr).
fn gateway_cmd(d: &Deployment, args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern-gateway"))
        .args(args)
        .arg("--config")
        .arg(d.gateway_toml()))
}

/// A registered, active device of `user`, as the state file keeps it.
fn device(id: &str, user: &str) -> Value {
    json!({
        "id": id, "user": user, "name": format!("{id} laptop"), "status": "active",
        "credential_id": format!("cred-{id}"), "aaguid": "00000000-0000-0000-0000-000000000000",
        "sign_count": 1, "user_verified": true, "backup_eligible": false, "backup_state": false,
        "created": 1_760_000_000u64, "passkey": null
    })
}

#[test]
fn user_revoke_ignores_case_says_what_it_ended_and_warns_when_nothing_matched() {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&policy(echo.addr, false));
    // Two devices registered under the name as the IdP spelled it, one of somebody else.
    let gw = d.path("gw");
    std::fs::create_dir_all(&gw).unwrap();
    std::fs::set_permissions(&gw, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let state = json!({"devices": [
        device("dev-000000000001", "Ann.Jones@Hospital.test"),
        device("dev-000000000002", "ann.jones@hospital.test"),
        device("dev-000000000003", "bob@hospital.test"),
    ]});
    std::fs::write(gw.join("state.json"), state.to_string()).unwrap();
    std::fs::set_permissions(
        gw.join("state.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    d.start_gateway();
    // The old state file was imported into the store at the first start, and audited.
    let migrated = d.wait_event("store.migrated", |_| true);
    assert!(s(&migrated["detail"]).contains("3 devices"), "{migrated}");
    assert!(d.path("gw/state.json.migrated").exists());
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    // Two unexpired tokens of Ann (as the IdP capitalised her), one of Bob.
    let ann1 = d.mint("Ann.Jones@Hospital.test", "radiologists", "1h");
    let ann2 = d.mint("Ann.Jones@Hospital.test", "radiologists", "1h");
    let bob = d.mint("bob@hospital.test", "radiologists", "1h");
    let (_client, addr) = d.connect("echo", &ann1).unwrap();
    let mut live = postern_e2e::open_live(addr);
    let start = d.wait_event("session.start", |e| e["user"] == "Ann.Jones@Hospital.test");

    // The operator types the address in lower case.
    let (ok, out, err) = gateway_cmd(&d, &["user", "revoke", "ann.jones@hospital.TEST"]);
    assert!(ok, "{out}{err}");
    for want in [
        "2 device(s)",
        "dev-000000000001",
        "dev-000000000002",
        "2 unexpired session token(s)",
        "1 live session(s)",
    ] {
        assert!(out.contains(want), "'{want}' not in: {out}");
    }
    assert!(!out.contains("dev-000000000003"), "{out}");
    // The running gateway ends Ann's live tunnel, and refuses her other token.
    let end = d.wait_event("session.terminated", |e| {
        e["session_id"] == start["session_id"]
    });
    assert_eq!(end["close_reason"], "user_revoked", "{end}");
    let mut one = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut live, &mut one).unwrap_or(0), 0);
    let err = d
        .connect("echo", &ann2)
        .err()
        .expect("ann's token is revoked");
    assert!(err.contains("revoked"), "{err}");
    // Bob is untouched.
    let (mut b, _) = d.connect("echo", &bob).expect("bob still connects");
    b.kill();

    // A name that matches nothing (a typo): recorded, but the command says so and fails.
    let (ok, out, err) = gateway_cmd(&d, &["user", "revoke", "ann.jone@hospital.test"]);
    assert!(!ok, "matched nothing yet succeeded: {out}");
    assert!(
        err.contains("matched nothing") && err.contains("0 device(s)"),
        "{err}"
    );
    let admin = d.wait_event("admin.command", |e| {
        s(&e["detail"]).contains("ann.jone@hospital.test")
    });
    assert!(s(&admin["detail"]).contains("matched nothing"), "{admin}");
}

#[test]
fn admin_actions_name_the_real_account_not_environment_variables() {
    use std::os::unix::fs::MetadataExt;
    let echo = Echo::start();
    let d = Deployment::gateway_only(&policy(echo.addr, false));
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    // Whoever runs the command can set these to anything.
    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args([
            "session", "mint", "--user", "svc", "--groups", "g", "--ttl", "1h",
        ])
        .arg("--config")
        .arg(d.gateway_toml())
        .env("USER", "mallory")
        .env("SUDO_USER", "mallory")
        .env("LOGNAME", "mallory"));
    assert!(ok, "{out}{err}");
    let ev = d.wait_event("token.minted", |e| e["user"] == "svc");
    let detail = s(&ev["detail"]);
    assert!(!detail.contains("mallory"), "{detail}");
    assert!(detail.contains(&format!("uid {uid}")), "{detail}");
}
