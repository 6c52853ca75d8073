//! Sign-in end to end: the real gateway and `postern` CLI against a real OpenID provider
//! (panva's oidc-provider on node), with a curl-driven browser that follows the real redirects
//! and posts the real login form.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use postern_e2e::oidc::{Browser, OidcProvider, OidcUser};
use postern_e2e::{bin, echo_policy, echo_roundtrip, run, wait_for, Deployment, Echo, Proc};
use serde_json::Value;

const CLIENT_ID: &str = "postern-gateway";
const CLIENT_SECRET: &str = "s3cret-for-tests-only";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn users() -> Vec<OidcUser> {
    vec![
        OidcUser::new("alice", "alice-pw", &["radiologists"], true),
        OidcUser::new("bob", "bob-pw", &["porters"], false),
    ]
}

struct World {
    d: Deployment,
    idp: OidcProvider,
    _echo: Echo,
    work: tempfile::TempDir,
}

/// A gateway with sign-in against a real provider, and a connector to an echo service.
fn world() -> World {
    let work = tempfile::tempdir().unwrap();
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    let idp = OidcProvider::start(
        &work.path().join("idp"),
        CLIENT_ID,
        CLIENT_SECRET,
        &[d.callback_url()],
        &users(),
    );
    configure_oidc(&d, &idp.issuer);
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    World {
        d,
        idp,
        _echo: echo,
        work,
    }
}

fn configure_oidc(d: &Deployment, issuer: &str) {
    std::fs::write(d.path("oidc-secret"), CLIENT_SECRET).unwrap();
    d.append_config(&format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nuser_claim = \"email\"\ninsecure_http_issuer = true\nsession_ttl = \"8h\"\n[devices]\nrequired = false\n",
        d.callback_url()
    ));
}

/// Runs `postern login --no-browser`, plays the browser, returns (login process output, result).
fn cli_login(
    w: &World,
    cfg: &PathBuf,
    user: &str,
    pass: &str,
) -> (bool, String, postern_e2e::oidc::BrowserResult) {
    let log = w
        .work
        .path()
        .join(format!("login-{}.log", postern_e2e::free_port()));
    let mut p = Proc::spawn(
        "login",
        Command::new(bin("postern"))
            .args([
                "login",
                &w.d.url(),
                "--no-browser",
                "--timeout",
                "30",
                "--ca-file",
            ])
            .arg(w.d.ca_file())
            .env("POSTERN_CONFIG_DIR", cfg),
        log,
    );
    let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
        p.log_text()
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("https://"))
            .map(str::to_owned)
    });
    let result = Browser::new(&w.d.ca_file()).login(&url, user, pass);
    let ok = wait_for("postern login to finish", Duration::from_secs(30), || {
        (!p.is_running()).then(|| p.child.wait().map(|s| s.success()).unwrap_or(false))
    });
    (ok, p.log_text(), result)
}

fn postern(cfg: &PathBuf, args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern"))
        .args(args)
        .env("POSTERN_CONFIG_DIR", cfg))
}

#[test]
fn clinician_signs_in_connects_checks_status_and_signs_out() {
    let w = world();
    let cfg = w.work.path().join("alice-config");
    let (ok, out, browser) = cli_login(&w, &cfg, "alice", "alice-pw");
    assert!(ok, "postern login failed: {out}\nbrowser: {browser:?}");
    assert!(browser.body.contains("You are signed in"), "{browser:?}");
    assert!(
        browser.visited(&w.idp.issuer),
        "never went to the IdP: {:?}",
        browser.trace
    );
    assert!(out.contains("signed in as alice@hospital.test"), "{out}");
    assert!(
        out.contains("radiologists") && out.contains("mfa      yes"),
        "{out}"
    );
    let token = cfg.join("token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let login = w.d.wait_event("auth.login", |_| true);
    assert_eq!(login["user"], "alice@hospital.test");
    assert_eq!(login["groups"][0], "radiologists");
    assert!(s(&login["detail"]).contains("mfa true"), "{login}");

    // `postern connect` uses the stored sign-in: no flags.
    let log = w.work.path().join("connect.log");
    let client = Proc::spawn(
        "connect",
        Command::new(bin("postern"))
            .args(["connect", "echo", "--listen", "127.0.0.1:0"])
            .env("POSTERN_CONFIG_DIR", &cfg),
        log,
    );
    let addr: std::net::SocketAddr = wait_for("ready", Duration::from_secs(10), || {
        client.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
    });
    assert_eq!(echo_roundtrip(addr, b"signed in").unwrap(), b"signed in");
    // A tunnel that stays open across the sign-out.
    let mut live = std::net::TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut live, b"x").unwrap();
    let mut one = [0u8; 1];
    std::io::Read::read_exact(&mut live, &mut one).unwrap();
    let start = wait_for("the live session", Duration::from_secs(10), || {
        let v = w.d.events("session.start");
        (v.len() >= 2).then(|| v[1].clone())
    });
    assert_eq!(start["user"], "alice@hospital.test");

    let (ok, out, err) = postern(&cfg, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("alice@hospital.test") && out.contains("mfa      yes"),
        "{out}"
    );

    // Without the gateway CA (no --ca-file, nothing saved) the CLI trusts only the public web
    // PKI, which did not issue this gateway's certificate: refused, and the message says why.
    let bare = w.work.path().join("bare-config");
    let (ok, _, err) = postern(
        &bare,
        &[
            "endpoints",
            "--gateway",
            &w.d.url(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("certificate"), "{err}");

    let saved_token = std::fs::read_to_string(&token).unwrap();
    let (ok, out, err) = postern(&cfg, &["logout"]);
    assert!(ok, "{out}{err}");
    assert!(!token.exists(), "token not deleted");
    // The live tunnel opened with that token ends.
    let end =
        w.d.wait_event("session.end", |e| e["session_id"] == start["session_id"]);
    assert_eq!(end["close_reason"], "token_revoked");
    assert_eq!(std::io::Read::read(&mut live, &mut one).unwrap_or(0), 0);
    w.d.wait_event("token.revoked", |e| e["user"] == "alice@hospital.test");
    w.d.wait_event("auth.logout", |e| e["user"] == "alice@hospital.test");
    // The stored token is gone, and a copy of it is refused.
    let (ok, _, err) = postern(&cfg, &["endpoints"]);
    assert!(!ok && err.contains("not signed in"), "{err}");
    let copy = w.work.path().join("copy.token");
    std::fs::write(&copy, saved_token).unwrap();
    let (ok, _, err) = postern(&cfg, &["endpoints", "--token-file", copy.to_str().unwrap()]);
    assert!(!ok && err.contains("revoked"), "{err}");
}

#[test]
fn wrong_password_at_the_idp_signs_nobody_in() {
    let w = world();
    let start = format!("{}/auth/login", w.d.url());
    let r = Browser::new(&w.d.ca_file()).login(&start, "alice", "not-her-password");
    assert!(r.body.contains("invalid credentials"), "{r:?}");
    assert!(!r.visited(&w.d.callback_url()));
    assert_eq!(w.d.count("auth.login"), 0);
}

#[test]
fn tampered_state_and_replayed_code_are_refused_with_an_error_id() {
    let w = world();
    let start = format!("{}/auth/login", w.d.url());
    let b = Browser::new(&w.d.ca_file());
    let r = b.login_until(&start, "alice", "alice-pw", &w.d.callback_url());
    let callback = r.final_url.clone();
    assert!(callback.contains("code="), "{r:?}");
    let state = r.query_param("state").unwrap();
    let tampered = callback.replace(&postern_e2e::oidc::pct_encode(&state), "forged-state");
    assert_ne!(tampered, callback);
    let page = b.get(&tampered);
    assert_eq!(page.status, 400, "{page:?}");
    assert!(
        page.body.contains("could not be matched to your browser"),
        "{}",
        page.body
    );
    let failed = w.d.wait_event("auth.failed", |e| {
        s(&e["detail"]).contains("state_mismatch")
    });
    let id = s(&failed["detail"]).split(':').next().unwrap().to_owned();
    assert!(
        page.body.contains(&id),
        "error page must show the audit id {id}"
    );

    // The code, replayed by another browser that has its own sign-in cookie and state.
    let b2 = Browser::new(&w.d.ca_file());
    let r2 = b2.login_until(&start, "bob", "bob-pw", &w.d.callback_url());
    let state2 = r2.query_param("state").unwrap();
    let code1 = r.query_param("code").unwrap();
    let replay = format!(
        "{}?code={}&state={}",
        w.d.callback_url(),
        postern_e2e::oidc::pct_encode(&code1),
        postern_e2e::oidc::pct_encode(&state2)
    );
    let page = b2.get(&replay);
    assert_eq!(page.status, 400, "{page:?}");
    w.d.wait_event("auth.failed", |e| s(&e["detail"]).contains("code_rejected"));
    assert_eq!(w.d.count("auth.login"), 0);
}

#[test]
fn idp_down_at_start_then_back_and_key_rotation() {
    let work = tempfile::tempdir().unwrap();
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    let port = postern_e2e::free_port();
    configure_oidc(&d, &format!("http://127.0.0.1:{port}"));
    d.start_gateway();
    // Sign-in answers 503 with a readable page while the IdP is down.
    let start = format!("{}/auth/login", d.url());
    let r = Browser::new(&d.ca_file()).get(&start);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("cannot be reached"), "{}", r.body);
    d.wait_event("auth.failed", |e| {
        s(&e["detail"]).contains("idp_unavailable")
    });

    let mut idp = OidcProvider::start_on_port(
        &work.path().join("idp"),
        port,
        CLIENT_ID,
        CLIENT_SECRET,
        &[d.callback_url()],
        &users(),
    );
    let r = wait_for("sign-in to recover", Duration::from_secs(60), || {
        let r = Browser::new(&d.ca_file()).login(&start, "alice", "alice-pw");
        if !r.body.contains("You are signed in") {
            // Stay under the sign-in rate limit (5/s per address) while waiting.
            std::thread::sleep(Duration::from_millis(300));
        }
        r.body.contains("You are signed in").then_some(r)
    });
    assert!(r.body.contains("alice@hospital.test"), "{}", r.body);
    let kid_before = idp.kids();

    // The IdP restarts with new signing keys: the gateway refetches the JWKS on the unknown kid.
    idp.restart();
    assert_ne!(idp.kids(), kid_before);
    let r = Browser::new(&d.ca_file()).login(&start, "alice", "alice-pw");
    assert!(
        r.body.contains("You are signed in"),
        "after key rotation: {r:?}"
    );
    assert_eq!(d.count("auth.login"), 2);
}

#[test]
fn a_group_removed_at_the_idp_takes_effect_at_next_sign_in() {
    let mut w = world();
    let start = format!("{}/auth/login", w.d.url());
    let r = Browser::new(&w.d.ca_file()).login(&start, "alice", "alice-pw");
    assert!(r.body.contains("You are signed in"), "{r:?}");
    let first = w.d.wait_event("auth.login", |_| true);
    assert_eq!(first["groups"][0], "radiologists");
    w.idp
        .restart_with_users(&[OidcUser::new("alice", "alice-pw", &["porters"], true)]);
    let r = Browser::new(&w.d.ca_file()).login(&start, "alice", "alice-pw");
    assert!(r.body.contains("You are signed in"), "{r:?}");
    let logins = wait_for("second login", Duration::from_secs(10), || {
        let v = w.d.events("auth.login");
        (v.len() >= 2).then_some(v)
    });
    assert_eq!(logins[1]["groups"][0], "porters");
    // And a CLI sign-in now gets a token that the policy refuses for the PACS-like endpoint.
    let cfg = w.work.path().join("cfg");
    let (ok, out, _) = cli_login(&w, &cfg, "alice", "alice-pw");
    assert!(ok, "{out}");
    let (ok, _, err) = postern(&cfg, &["connect", "echo", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains("No rule allows user 'alice@hospital.test' (groups: porters)"),
        "{err}"
    );
}

#[test]
fn cli_code_cannot_be_redeemed_without_the_verifier() {
    let w = world();
    // Start a CLI-style sign-in by hand with a challenge whose verifier we keep.
    let (verifier, challenge) = postern_e2e::oidc::pkce_pair();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr().unwrap().port()
    );
    let start = format!(
        "{}/auth/login?cli_redirect={}&cli_challenge={}&cli_state=st&cli_code=ABCD-2345",
        w.d.url(),
        postern_e2e::oidc::pct_encode(&redirect),
        challenge
    );
    let r = Browser::new(&w.d.ca_file()).login_until(&start, "alice", "alice-pw", &redirect);
    let code = r.query_param("code").expect("a CLI code");
    assert_eq!(r.query_param("state").as_deref(), Some("st"));
    let post = |v: &str| {
        run(Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(w.d.ca_file())
            .args(["-H", "content-type: application/json", "-d"])
            .arg(format!("{{\"code\":\"{code}\",\"code_verifier\":\"{v}\"}}"))
            .arg(format!("{}/auth/token", w.d.url())))
    };
    let (_, out, _) = post("wrong-verifier-wrong-verifier-wrong-verifier");
    assert!(out.contains("invalid_grant"), "{out}");
    // One-time: after a failed attempt the code is gone even with the right verifier.
    let (_, out, _) = post(&verifier);
    assert!(out.contains("invalid_grant"), "{out}");
}

#[test]
fn forged_and_malformed_id_tokens_are_refused() {
    use postern_e2e::rogue_idp::{Mode, RogueIdp};
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    let idp = RogueIdp::start(CLIENT_ID);
    configure_oidc(&d, &idp.issuer);
    d.start_gateway();
    let start = format!("{}/auth/login", d.url());
    // The harness IdP is otherwise correct: a valid token signs in.
    idp.set_mode(Mode::Valid);
    let r = Browser::new(&d.ca_file()).get(&start);
    assert!(
        r.body.contains("Signed in as mallory@hospital.test"),
        "{r:?}"
    );
    let cases = [
        (Mode::WrongAudience, "audience"),
        (Mode::WrongIssuer, "issuer"),
        (Mode::Expired, "expired"),
        (Mode::AlgNone, "id_token_invalid"),
        (Mode::Hs256WithPublicKey, "id_token_invalid"),
        (Mode::WrongNonce, "nonce"),
        (Mode::UnknownKey, "id_token"),
    ];
    assert_eq!(cases.len(), 7);
    for (mode, want) in cases {
        idp.set_mode(mode);
        let before = d.count("auth.failed");
        let r = Browser::new(&d.ca_file()).get(&start);
        assert_eq!(r.status, 502, "{mode:?} was not refused: {r:?}");
        assert!(
            r.body.contains("could not be verified"),
            "{mode:?}: {}",
            r.body
        );
        let failed = wait_for("auth.failed", Duration::from_secs(10), || {
            let v = d.events("auth.failed");
            (v.len() > before).then(|| v[before].clone())
        });
        let detail = s(&failed["detail"]).to_lowercase();
        assert!(
            detail.contains(want),
            "{mode:?}: expected '{want}' in {detail}"
        );
    }
    assert_eq!(d.count("auth.login"), 1, "only the valid token may sign in");
}

#[test]
fn sign_in_floods_are_rate_limited_with_retry_after() {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    let idp = postern_e2e::rogue_idp::RogueIdp::start(CLIENT_ID);
    configure_oidc(&d, &idp.issuer);
    d.start_gateway();
    let url = format!("{}/auth/login", d.url());
    let mut codes = Vec::new();
    for _ in 0..40 {
        let (_, out, _) = run(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--cacert"])
            .arg(d.ca_file())
            .arg(&url));
        codes.push(out);
    }
    let limited: Vec<&String> = codes
        .iter()
        .filter(|h| h.starts_with("HTTP/2 429") || h.starts_with("HTTP/1.1 429"))
        .collect();
    assert!(!limited.is_empty(), "no 429 in 40 rapid sign-in starts");
    assert!(
        limited[0].to_lowercase().contains("retry-after:"),
        "{}",
        limited[0]
    );
    assert!(
        codes[0].contains(" 303"),
        "the first start should redirect: {}",
        codes[0]
    );
}

#[test]
fn check_rejects_development_identity_provider_settings() {
    let echo = Echo::start();
    let d = Deployment::prepare(&echo_policy(echo.addr));
    configure_oidc(&d, "http://127.0.0.1:9");
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(d.gateway_toml()));
    assert!(!ok);
    assert!(
        err.contains("insecure_http_issuer") && err.contains("tests and the demo only"),
        "{err}"
    );
    // The same file with https and a secret in a file of mode 0644 lists that too.
    let text = std::fs::read_to_string(d.gateway_toml())
        .unwrap()
        .replace("http://127.0.0.1:9", "https://idp.example")
        .replace("insecure_http_issuer = true\n", "");
    std::fs::write(d.gateway_toml(), text).unwrap();
    std::fs::set_permissions(
        d.path("oidc-secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(d.gateway_toml()));
    assert!(!ok);
    assert!(err.contains("readable by others"), "{err}");
    std::fs::set_permissions(
        d.path("oidc-secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // Left: the identity provider cannot be reached (check fetches its discovery document).
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(d.gateway_toml()));
    assert!(!ok);
    assert!(
        err.contains("error: oidc.issuer: the identity provider's discovery document https://idp.example/.well-known/openid-configuration could not be fetched")
            && err.contains("1 problem(s)"),
        "{err}"
    );
}
