//! Device trust in a real browser: headless Chromium (driven through chromedriver) with a
//! WebDriver virtual authenticator, the real gateway at `https://localhost:PORT` (a host name,
//! so it is a valid WebAuthn RP ID), the real `postern` CLI and a real OpenID provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::browser::{AuthenticatorOptions, Chromium};
use postern_e2e::oidc::{OidcProvider, OidcUser};
use postern_e2e::{bin, echo_roundtrip, run, wait_for, Deployment, Echo, Proc};
use serde_json::{json, Value};

const CLIENT_ID: &str = "postern-gateway";
const CLIENT_SECRET: &str = "s3cret-for-browser-tests";

fn policy(echo: std::net::SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo"]
max_session = "1h"
"#,
        echo.port()
    )
}

fn users() -> Vec<OidcUser> {
    vec![
        OidcUser::new("alice", "alice-pw", &["radiologists"], true),
        OidcUser::new("bob", "bob-pw", &["radiologists"], true),
    ]
}

/// A gateway reachable as `https://localhost:PORT`, signing in against a real provider, with a
/// connector to an echo service.
struct World {
    d: Deployment,
    idp: OidcProvider,
    _echo: Echo,
    work: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let work = tempfile::tempdir().unwrap();
        let echo = Echo::start();
        let mut d = Deployment::prepare(&policy(echo.addr));
        let callback = format!("{}/auth/callback", base(&d));
        let idp = OidcProvider::start(
            &work.path().join("idp"),
            CLIENT_ID,
            CLIENT_SECRET,
            std::slice::from_ref(&callback),
            &users(),
        );
        std::fs::write(d.path("oidc-secret"), CLIENT_SECRET).unwrap();
        d.append_config(&format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{callback}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\ninsecure_http_issuer = true\nsession_ttl = \"8h\"\n",
            idp.issuer
        ));
        d.start_gateway();
        let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
        World {
            d,
            idp,
            _echo: echo,
            work,
        }
    }

    /// `https://localhost:PORT`.
    fn url(&self) -> String {
        base(&self.d)
    }

    fn browser(&self) -> Chromium {
        Chromium::start(Some(&self.d.ca_file()))
    }

    fn config_dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Starts `postern login --no-browser` and returns it with the sign-in URL it printed.
    fn start_login(&self, cfg: &Path) -> (Proc, String) {
        let log = self
            .work
            .path()
            .join(format!("login-{}.log", postern_e2e::free_port()));
        let p = Proc::spawn(
            "login",
            Command::new(bin("postern"))
                .args([
                    "login",
                    &self.url(),
                    "--no-browser",
                    "--timeout",
                    "45",
                    "--ca-file",
                ])
                .arg(self.d.ca_file())
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
        (p, url)
    }
}

fn base(d: &Deployment) -> String {
    format!("https://localhost:{}", d.client_port)
}

fn postern(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern"))
        .args(args)
        .env("POSTERN_CONFIG_DIR", cfg))
}

/// Fills the provider's login form in the browser (waits up to 15 s for it).
fn idp_login(b: &Chromium, idp: &OidcProvider, user: &str, pass: &str) {
    b.wait_url(&idp.issuer, Duration::from_secs(15));
    b.type_into("input[name=login]", user);
    b.type_into("input[name=password]", pass);
    b.click("button[type=submit]");
}

/// Waits for `p` to exit; returns (success, its output).
fn finish(p: &mut Proc, limit: Duration) -> (bool, String) {
    let ok = wait_for("postern login to finish", limit, || {
        (!p.is_running()).then(|| p.child.wait().map(|s| s.success()).unwrap_or(false))
    });
    (ok, p.log_text())
}

#[test]
fn cli_sign_in_through_a_real_browser() {
    let t = Instant::now();
    let w = World::new();
    let b = w.browser();
    eprintln!("world + browser up in {:?}", t.elapsed());
    let cfg = w.config_dir("alice");
    let (mut login, url) = w.start_login(&cfg);
    assert!(
        url.starts_with(&format!("{}/auth/login?", w.url())),
        "{url}"
    );
    b.goto(&url);
    idp_login(&b, &w.idp, "alice", "alice-pw");
    let text = b.wait_text("You are signed in", Duration::from_secs(20));
    assert!(b.url().starts_with("http://127.0.0.1:"), "{}", b.url());
    assert!(text.contains("return to the terminal"), "{text}");
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}\n{}", b.describe());
    assert!(out.contains("signed in as alice@hospital.test"), "{out}");

    let (ok, out, err) = postern(&cfg, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("alice@hospital.test") && out.contains("radiologists"),
        "{out}"
    );
    let ev =
        w.d.wait_event("auth.login", |e| e["user"] == "alice@hospital.test");
    assert!(
        ev["user_agent"]
            .as_str()
            .unwrap_or("")
            .contains("HeadlessChrome/"),
        "the user agent of the real browser should be audited: {ev}"
    );

    // The stored sign-in opens a tunnel.
    let client = Proc::spawn(
        "connect",
        Command::new(bin("postern"))
            .args(["connect", "echo", "--listen", "127.0.0.1:0"])
            .env("POSTERN_CONFIG_DIR", &cfg),
        w.work.path().join("connect.log"),
    );
    let addr: std::net::SocketAddr = wait_for("ready", Duration::from_secs(10), || {
        client.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
    });
    assert_eq!(echo_roundtrip(addr, b"chromium").unwrap(), b"chromium");
    eprintln!("whole test {:?}", t.elapsed());
}

/// The harness itself: the gateway's origin is a secure context in Chromium (its CA is trusted,
/// not ignored), and a virtual platform authenticator creates and uses a credential for RP ID
/// `localhost` there — and refuses one for an RP ID the origin may not claim.
#[test]
fn virtual_authenticator_works_on_the_gateway_origin() {
    let w = World::new();
    let b = w.browser();
    b.goto(&format!("{}/healthz", w.url()));
    assert_eq!(b.text().trim(), "ok", "{}", b.describe());
    assert_eq!(
        b.exec("return window.isSecureContext", vec![]).unwrap(),
        json!(true)
    );
    let auth = b.add_authenticator(&AuthenticatorOptions::default());
    assert!(b.credentials(&auth).is_empty());

    let created = b.await_js(CREATE_JS, vec![json!("localhost")]);
    let id = created["ok"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {created}"))
        .to_owned();
    assert_eq!(created["ok"]["type"], "public-key");
    let count_after_create = b.credentials(&auth)[0]["signCount"].as_u64().unwrap();
    let client_data = decode_client_data(created["ok"]["clientDataJSON"].as_str().unwrap());
    assert_eq!(client_data["type"], "webauthn.create");
    assert_eq!(client_data["origin"], w.url());
    let creds = b.credentials(&auth);
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0]["rpId"], "localhost");
    assert!(creds[0]["isResidentCredential"] == true, "{creds:?}");

    let got = b.await_js(GET_JS, vec![json!("localhost"), json!(id)]);
    assert_eq!(got["ok"]["id"], json!(id), "get failed: {got}");
    let client_data = decode_client_data(got["ok"]["clientDataJSON"].as_str().unwrap());
    assert_eq!(client_data["type"], "webauthn.get");
    assert!(
        b.credentials(&auth)[0]["signCount"].as_u64().unwrap() > count_after_create,
        "the assertion must advance the signature counter"
    );

    // An RP ID this origin may not claim is refused by the browser itself.
    let bad = b.await_js(CREATE_JS, vec![json!("example.org")]);
    assert_eq!(
        bad["err"].as_str().unwrap_or("").split(':').next(),
        Some("SecurityError"),
        "{bad}"
    );

    // The trust is real: a browser without the gateway's CA gets a certificate error page.
    let untrusting = Chromium::start(None);
    let _ = untrusting.try_goto(&format!("{}/healthz", w.url()));
    let text = untrusting.text();
    assert!(
        text.contains("not private") || text.contains("ERR_CERT"),
        "{}",
        untrusting.describe()
    );
    drop(untrusting);

    // Without an authenticator there is nothing to answer: the ceremony fails (not hangs).
    b.remove_authenticator(&auth);
    let none = b.await_js(GET_TIMEOUT_JS, vec![json!("localhost"), json!(id)]);
    assert_eq!(
        none["err"].as_str().unwrap_or("").split(':').next(),
        Some("NotAllowedError"),
        "{none}"
    );
}

/// navigator.credentials.create for RP ID `arguments[0]`; resolves to
/// `{id, type, clientDataJSON (base64url)}`.
const CREATE_JS: &str = r#"
const b64u = buf => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const cred = await navigator.credentials.create({ publicKey: {
  rp: { id: arguments[0], name: 'Postern test' },
  user: { id: new Uint8Array([1, 2, 3, 4]), name: 'alice', displayName: 'Alice' },
  challenge: crypto.getRandomValues(new Uint8Array(32)),
  pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
  authenticatorSelection: { residentKey: 'required', userVerification: 'required',
                            authenticatorAttachment: 'platform' },
  timeout: 10000,
}});
return { id: cred.id, type: cred.type, clientDataJSON: b64u(cred.response.clientDataJSON) };
"#;

const GET_JS: &str = r#"
const b64u = buf => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const fromB64u = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));
const cred = await navigator.credentials.get({ publicKey: {
  rpId: arguments[0],
  challenge: crypto.getRandomValues(new Uint8Array(32)),
  allowCredentials: [{ type: 'public-key', id: fromB64u(arguments[1]) }],
  userVerification: 'required',
  timeout: 10000,
}});
return { id: cred.id, clientDataJSON: b64u(cred.response.clientDataJSON) };
"#;

const GET_TIMEOUT_JS: &str = r#"
const fromB64u = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));
const cred = await navigator.credentials.get({ publicKey: {
  rpId: arguments[0],
  challenge: crypto.getRandomValues(new Uint8Array(32)),
  allowCredentials: [{ type: 'public-key', id: fromB64u(arguments[1]) }],
  timeout: 2000,
}});
return cred && cred.id;
"#;

fn decode_client_data(b64: &str) -> Value {
    let raw = postern_e2e::oidc::b64url_decode(b64).unwrap();
    serde_json::from_slice(&raw).unwrap()
}
