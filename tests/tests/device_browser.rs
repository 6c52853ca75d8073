//! Device trust in a real browser: headless Chromium (driven through chromedriver) with a
//! WebDriver virtual authenticator, the real gateway at `https://localhost:PORT` (a host name,
//! so it is a valid WebAuthn RP ID), the real `postern` CLI and a real OpenID provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::browser::{AuthenticatorOptions, Chromium};
use postern_e2e::dicom::{echoscu, findscu, make_study, storescu, Orthanc};
use postern_e2e::world::{
    device_of, failure_code, finish, idp_login, page_state, printed_code, register, through_idp,
    to_device_page, wait_state, World,
};
use postern_e2e::{bin, echo_roundtrip, run, wait_for, Proc};
use serde_json::{json, Value};

fn postern(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern"))
        .args(args)
        .env("POSTERN_CONFIG_DIR", cfg))
}

/// `postern connect ENDPOINT` with the stored sign-in in `cfg`; returns it and its address.
fn connect(w: &World, cfg: &Path, endpoint: &str) -> Result<(Proc, SocketAddr), String> {
    let log = w.work.path().join(format!(
        "connect-{endpoint}-{}.log",
        postern_e2e::free_port()
    ));
    let mut p = Proc::spawn(
        "connect",
        Command::new(bin("postern"))
            .args(["connect", endpoint, "--listen", "127.0.0.1:0"])
            .env("POSTERN_CONFIG_DIR", cfg),
        log,
    );
    let start = Instant::now();
    loop {
        if let Some(addr) = p.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        }) {
            return Ok((p, addr));
        }
        if !p.is_running() {
            return Err(p.log_text());
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "postern connect never became ready: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    // The credential key WebDriver exports is the one that signed: a test can forge assertions
    // with a valid signature (authenticatorData || SHA-256(clientDataJSON)).
    let key = creds[0]["privateKey"].as_str().unwrap();
    let b64 = |k: &str| postern_e2e::oidc::b64url_decode(got["ok"][k].as_str().unwrap()).unwrap();
    let mut signed = b64("authenticatorData");
    assert_eq!(
        &signed[..32],
        ring::digest::digest(&ring::digest::SHA256, b"localhost").as_ref(),
        "rpIdHash"
    );
    signed.extend_from_slice(
        ring::digest::digest(&ring::digest::SHA256, &b64("clientDataJSON")).as_ref(),
    );
    let public = postern_e2e::browser::credential_public_key(key);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public)
        .verify(&signed, &b64("signature"))
        .expect("the browser's assertion verifies with the exported key");
    let forged = postern_e2e::browser::sign_as_credential(key, &signed);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public)
        .verify(&signed, &forged)
        .unwrap();
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
return { id: cred.id, clientDataJSON: b64u(cred.response.clientDataJSON),
         authenticatorData: b64u(cred.response.authenticatorData),
         signature: b64u(cred.response.signature) };
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

/// A PostureReport as `postern login --posture-file` takes it.
fn posture(disk_encrypted: &str) -> Value {
    json!({
        "os": "linux",
        "os_name": "Debian",
        "os_version": "12",
        "facts": {"disk_encrypted": disk_encrypted, "firewall": "true", "screen_lock": "true"},
        "collected_at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    })
}

/// The whole life of a device, in a real browser: the first sign-in registers the laptop's
/// platform authenticator (pending), a sign-in with a pending device is refused, the admin
/// approves it, the next sign-in asserts it and `postern connect` reaches Orthanc; revoking the
/// device ends a live DICOM transfer within about a second.
#[test]
fn device_registered_approved_asserted_then_revoked_during_a_dicom_transfer() {
    let t = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let pacs = format!(
        r#"
[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "dicom"

[[rules]]
id = "radiologists-pacs-approved-devices"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom"]
max_session = "1h"
dicom_services = ["echo", "find", "get", "move", "store"]

[rules.device]
approved = true
"#,
        orthanc.dicom_port
    );
    let w = World::with(
        &pacs,
        "[devices]\napproval = \"manual\"\n",
        &[orthanc.dicom_port],
    );
    let b = w.browser();
    b.goto(&format!("{}/healthz", w.url()));
    let auth = b.add_authenticator(&AuthenticatorOptions::default());
    eprintln!("[{:?}] world and browser up", t.elapsed());

    // 1. First sign-in: no device yet, so the page offers to register this one.
    let cfg = w.config_dir("alice");
    let (mut login, url) = w.start_login_with(&cfg, Some(&posture("true")));
    through_idp(&w, &b, &url, "alice", "alice-pw");
    assert_eq!(register(&b, "home laptop"), "pending", "{}", b.describe());
    let status = b.element_text("#status").unwrap_or_default();
    assert!(status.contains("waiting for approval"), "{}", b.describe());
    let creds = b.credentials(&auth);
    assert_eq!(
        creds.len(),
        1,
        "the authenticator should hold one credential"
    );
    assert_eq!(creds[0]["rpId"], "localhost");
    let devices = w.devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let dev = &devices[0];
    assert_eq!(dev["user"], "alice@hospital.test");
    assert_eq!(dev["status"], "pending");
    assert_eq!(dev["name"], "home laptop");
    assert_eq!(
        dev["credential_id"], creds[0]["credentialId"],
        "the gateway stored the authenticator's credential"
    );
    let id = dev["id"].as_str().unwrap().to_owned();
    let reg = w.d.wait_event("device.registered", |e| device_of(e) == id);
    assert_eq!(reg["user"], "alice@hospital.test");
    assert!(
        reg["detail"].as_str().unwrap_or("").contains("pending"),
        "{reg}"
    );
    // A pending device gets no token: the CLI is still waiting, and says for what.
    wait_for(
        "postern login to say why it waits",
        Duration::from_secs(10),
        || {
            login
                .log_text()
                .contains(
                    "Your device \"home laptop\" is waiting for approval by your security team",
                )
                .then_some(())
        },
    );
    assert!(
        login.is_running(),
        "postern login ended: {}",
        login.log_text()
    );
    login.kill();
    assert!(!cfg.join("token").exists());
    eprintln!("[{:?}] registered (pending)", t.elapsed());

    // 2. Signing in again before approval: the assertion is refused as pending.
    let (mut login, url) = w.start_login(&cfg);
    through_idp(&w, &b, &url, "alice", "alice-pw");
    let state = wait_state(&b, &["error", "pending", "done"], Duration::from_secs(20));
    assert_eq!(state, "pending", "{}", b.describe());
    let failed = w.assertion_failed("device_pending");
    assert_eq!(failed["user"], "alice@hospital.test");
    assert_eq!(device_of(&failed), id, "{failed}");
    assert!(
        b.element_text("#status")
            .unwrap_or_default()
            .contains("waiting for approval"),
        "the page should say the device awaits approval: {}",
        b.describe()
    );
    assert!(login.is_running());
    assert_eq!(w.d.count("auth.login"), 0, "nobody may be signed in yet");
    wait_for(
        "postern login to say why it waits",
        Duration::from_secs(10),
        || {
            login
                .log_text()
                .contains("waiting for approval by your security team")
                .then_some(())
        },
    );

    // 3. The admin approves it: the waiting page and `postern login` carry on by themselves.
    let (ok, out, err) = w.admin(&["device", "approve", &id]);
    assert!(ok, "device approve: {out}{err}");
    assert!(out.contains(&id) && out.contains("approved"), "{out}");
    w.d.wait_event("device.approved", |e| device_of(e) == id);
    assert_eq!(w.devices()[0]["status"], "active");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(
        ok,
        "postern login after the approval: {out}\n{}",
        b.describe()
    );
    w.d.wait_event("auth.login", |e| e["user"] == "alice@hospital.test");

    // 4. The next sign-in asserts the device and hands the CLI a device-bound token.
    let count_before = b.credentials(&auth)[0]["signCount"].as_u64().unwrap();
    let (mut login, url) = w.start_login_with(&cfg, Some(&posture("true")));
    through_idp(&w, &b, &url, "alice", "alice-pw");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}\n{}", b.describe());
    assert!(
        b.credentials(&auth)[0]["signCount"].as_u64().unwrap() > count_before,
        "the sign-in did not use the authenticator"
    );
    let verified = w.d.wait_event("device.verified", |e| device_of(e) == id);
    assert_eq!(verified["user"], "alice@hospital.test");
    let login_ev =
        w.d.wait_event("auth.login", |e| e["user"] == "alice@hospital.test");
    assert_eq!(
        device_of(&login_ev),
        id,
        "auth.login names the device: {login_ev}"
    );
    let (ok, out, err) = postern(&cfg, &["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id),
        "postern status should show the device: {out}"
    );
    eprintln!("[{:?}] approved device signed in", t.elapsed());

    // 5. `postern connect` reaches Orthanc: C-ECHO, C-STORE, C-FIND.
    let (_client, local) = connect(&w, &cfg, "pacs-dicom").unwrap();
    let (ok, out, err) = echoscu(local);
    assert!(ok, "C-ECHO through the tunnel failed: {out}{err}");
    let study_dir = work.path().join("study");
    std::fs::create_dir_all(&study_dir).unwrap();
    let (file, _uid) = make_study(&study_dir, "PAT-DEV-1");
    let (ok, out, err) = storescu(local, &file);
    assert!(ok, "C-STORE failed: {out}{err}");
    assert_eq!(orthanc.instance_count(), 1);
    let (ok, out, err) = findscu(local, "PAT-DEV-1");
    assert!(ok && (out + &err).contains("1.2."), "C-FIND found nothing");
    let start =
        w.d.wait_event("session.start", |e| e["endpoint"]["name"] == "pacs-dicom");
    assert_eq!(
        device_of(&start),
        id,
        "session.start names the device: {start}"
    );

    // 6. A live transfer: the same image stored again and again on one association.
    let before = w.d.count("session.start");
    let mut transfer = Proc::spawn(
        "storescu",
        Command::new("storescu")
            .args(["-aet", "VIEWER", "-aec", "ORTHANC", "--repeat", "1000000"])
            .arg("127.0.0.1")
            .arg(local.port().to_string())
            .arg(&file),
        work.path().join("transfer.log"),
    );
    let live = wait_for("the transfer's session", Duration::from_secs(10), || {
        let v = w.d.events("session.start");
        (v.len() > before).then(|| v[before].clone())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        transfer.is_running(),
        "the transfer ended early: {}",
        transfer.log_text()
    );

    // 7. Revoke the device: the live session ends within about a second.
    let t0 = Instant::now();
    let (ok, out, err) = w.admin(&["device", "revoke", &id]);
    assert!(ok, "device revoke: {out}{err}");
    let term = wait_for("session.terminated", Duration::from_secs(10), || {
        w.d.events("session.terminated")
            .into_iter()
            .find(|e| e["session_id"] == live["session_id"])
    });
    let took = t0.elapsed();
    eprintln!(
        "[{:?}] revoke → session.terminated in {took:?}",
        t.elapsed()
    );
    assert!(
        term["detail"]
            .as_str()
            .unwrap_or("")
            .contains("device revoked"),
        "{term}"
    );
    assert!(
        took < Duration::from_millis(2000),
        "termination took {took:?}"
    );
    let end =
        w.d.wait_event("session.end", |e| e["session_id"] == live["session_id"]);
    assert_eq!(end["close_reason"], "device_revoked", "{end}");
    assert!(
        end["bytes_up"].as_u64().unwrap() > 256 * 1024,
        "the transfer moved images before it was cut: {end}"
    );
    w.d.wait_event("device.revoked", |e| device_of(e) == id);
    wait_for("storescu to fail", Duration::from_secs(10), || {
        (!transfer.is_running()).then_some(())
    });
    assert!(
        !transfer.child.wait().unwrap().success(),
        "the transfer should fail: {}",
        transfer.log_text()
    );
    // The token bound to the revoked device opens nothing any more.
    let (ok, _, _) = echoscu(local);
    assert!(!ok, "C-ECHO succeeded with a revoked device");
    assert_eq!(w.devices()[0]["status"], "revoked");
    eprintln!("[{:?}] done", t.elapsed());
}

/// Injected before the device page's own scripts: its POSTs to `/auth/device/assert/finish`
/// are kept in `window.__held` and never sent (the page waits forever), so a test holds a
/// genuine, unconsumed assertion. `window.__posternRealFetch` still reaches the server.
const HOLD_FINISH_JS: &str = r#"
(() => {
  const real = window.fetch.bind(window);
  window.__posternRealFetch = real;
  window.__held = [];
  window.fetch = function (input, init) {
    const url = String(typeof input === 'string' ? input : (input && input.url));
    if (url.includes('/auth/device/assert/finish')) {
      window.__held.push(init && init.body);
      return new Promise(() => {});
    }
    return real(input, init);
  };
})();
"#;

/// POSTs the string `arguments[1]` to path `arguments[0]` (same origin, cookies sent) with
/// content type `arguments[2]`; resolves to `{status, json, text}`.
const POST_JS: &str = r#"
const f = window.__posternRealFetch || window.fetch;
const r = await f(arguments[0], { method: 'POST', credentials: 'same-origin',
  headers: { 'content-type': arguments[2] || 'application/json' }, body: arguments[1] });
const text = await r.text();
let json = null;
try { json = JSON.parse(text); } catch (e) {}
return { status: r.status, json, text: text.slice(0, 2000) };
"#;

/// One assertion ceremony built by the test, not the page: `assert/begin` for ceremony
/// `arguments[0]`, navigator.credentials.get (with `allowCredentials` replaced by
/// `arguments[1]` unless null), and the finish body the page would post (not posted).
const ASSERTION_JS: &str = r#"
const b64u = buf => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const fromB64u = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));
const f = window.__posternRealFetch || window.fetch;
const r = await f('/auth/device/assert/begin', { method: 'POST', credentials: 'same-origin',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ ceremony: arguments[0], confirm: (window.postern && window.postern.code) || null }) });
const begin = await r.json();
if (r.status !== 200) throw new Error('begin answered ' + r.status + ' ' + JSON.stringify(begin));
const pk = begin.publicKey;
const allow = arguments[1] !== null ? arguments[1] : (pk.allowCredentials || []);
const opts = Object.assign({}, pk, { challenge: fromB64u(pk.challenge),
  allowCredentials: allow.map(c => Object.assign({}, c, { id: fromB64u(c.id) })) });
const cred = await navigator.credentials.get({ publicKey: opts });
const el = document.getElementById('posture');
const posture = el ? JSON.parse(el.textContent || 'null') : null;
return { ceremony: arguments[0], posture, credential: { id: cred.id, rawId: b64u(cred.rawId),
  type: cred.type, extensions: {}, response: {
    authenticatorData: b64u(cred.response.authenticatorData),
    clientDataJSON: b64u(cred.response.clientDataJSON),
    signature: b64u(cred.response.signature),
    userHandle: cred.response.userHandle ? b64u(cred.response.userHandle) : null } } };
"#;

/// POSTs `body` to `path` from the page; returns `{status, json, text}`.
fn post(b: &Chromium, path: &str, body: &str) -> Value {
    let r = b.await_js(POST_JS, vec![json!(path), json!(body), Value::Null]);
    r["ok"].clone()
}

/// The ceremony id of the device page.
fn ceremony(b: &Chromium) -> String {
    b.exec("return document.getElementById('ceremony').value", vec![])
        .unwrap_or_else(|e| panic!("no #ceremony: {e}\n{}", b.describe()))
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A fresh assertion body (see [`ASSERTION_JS`]).
fn assertion(b: &Chromium, allow: Value) -> Value {
    let c = ceremony(b);
    let r = b.await_js(ASSERTION_JS, vec![json!(c), allow]);
    assert!(
        r["err"].is_null(),
        "assertion failed in the page: {r}\n{}",
        b.describe()
    );
    r["ok"].clone()
}

/// Asserts that `r` (an answer of [`post`]) is a 4xx refusal with error `code`, a readable
/// message and a reference that the `device.assertion_failed` event with `code` carries.
fn assert_refused(w: &World, r: &Value, code: &str) -> Value {
    let status = r["status"].as_u64().unwrap_or(0);
    assert!(
        (400..500).contains(&status),
        "expected a 4xx refusal {code}, got {r}"
    );
    assert_eq!(r["json"]["error"], code, "{r}");
    let message = r["json"]["message"].as_str().unwrap_or("");
    assert!(
        message.len() > 10,
        "the refusal needs a readable message: {r}"
    );
    let reference = r["json"]["ref"].as_str().unwrap_or("").to_owned();
    assert!(reference.starts_with("err-"), "{r}");
    let ev = w.d.wait_event("device.assertion_failed", |e| {
        e["detail"].as_str().unwrap_or("").starts_with(&reference)
    });
    assert_eq!(failure_code(&ev).as_deref(), Some(code), "{ev}");
    ev
}

fn b64(v: &Value) -> Vec<u8> {
    postern_e2e::oidc::b64url_decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap()
}

/// The gateway still answers (no panic, no hang).
fn gateway_alive(w: &mut World) {
    let g = w.d.gateway.as_mut().unwrap();
    assert!(g.is_running(), "the gateway died: {}", g.log_text());
    assert!(!g.log_text().contains("panicked"), "{}", g.log_text());
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(w.d.ca_file())
        .arg(format!("{}/healthz", w.url())));
    assert!(
        ok && out.trim() == "ok",
        "the gateway does not answer: {out}{err}"
    );
}

/// Forged, replayed, altered and malformed assertions, each refused with its own reason (in
/// the answer and in the audit log), on one sign-in; then the genuine assertion still works,
/// and posture rules decide: an enforced one denies, a report-only one allows and audits
/// "would deny".
#[test]
fn refused_assertions_name_their_reason_and_report_only_posture_is_audited() {
    let t = Instant::now();
    let rules = r#"
[[endpoints]]
name = "echo-strict"
site = "truro"
host = "127.0.0.1"
port = ECHO
protocol = "tcp"

[[endpoints]]
name = "echo-trial"
site = "truro"
host = "127.0.0.1"
port = ECHO
protocol = "tcp"

[[rules]]
id = "encrypted-disks-only"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-strict"]
max_session = "1h"

[rules.device]
approved = true
posture = { disk_encrypted = "true" }

[[rules]]
id = "encrypted-disks-trial"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-trial"]
max_session = "1h"
report_only = ["device.posture.disk_encrypted"]

[rules.device]
approved = true
posture = { disk_encrypted = "true" }
"#;
    // The echo port is only known once the world exists: write the policy in two steps.
    let mut w = World::with("", "[devices]\napproval = \"auto\"\n", &[]);
    let text = std::fs::read_to_string(w.d.path("policy.toml")).unwrap()
        + &rules.replace("ECHO", &w.echo.addr.port().to_string());
    std::fs::write(w.d.path("policy.toml"), text).unwrap();
    w.d.gateway.as_ref().unwrap().signal("HUP");
    w.d.wait_event("policy.reloaded", |_| true);

    let b = w.browser();
    b.on_new_document(HOLD_FINISH_JS);
    b.goto(&format!("{}/healthz", w.url()));
    let auth = b.add_authenticator(&AuthenticatorOptions::default());

    // Sign in with an unencrypted disk; register (approved at once); the page's own assertion
    // is held back by the injected script.
    let cfg = w.config_dir("alice");
    let (mut login, url) = w.start_login_with(&cfg, Some(&posture("false")));
    through_idp(&w, &b, &url, "alice", "alice-pw");
    wait_state(&b, &["register"], Duration::from_secs(15));
    b.type_into("#device-name", "test laptop");
    b.click("#register");
    let held = b.wait("the page's assertion", Duration::from_secs(20), || {
        b.exec("return (window.__held || [])[0] || null", vec![])
            .ok()
            .filter(|v| v.is_string())
    });
    let held: Value = serde_json::from_str(held.as_str().unwrap()).unwrap();
    let dev = w.devices();
    assert_eq!(dev.len(), 1, "{dev:?}");
    assert_eq!(dev[0]["status"], "active", "auto approval: {dev:?}");
    assert_eq!(
        held["posture"]["facts"]["disk_encrypted"], "false",
        "{held}"
    );
    let key = b.credentials(&auth)[0]["privateKey"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!(
        "[{:?}] registered; holding the page's assertion",
        t.elapsed()
    );

    // Malformed JSON.
    let r = post(
        &b,
        "/auth/device/assert/finish",
        "{\"ceremony\": \"x\", \"credential\": {",
    );
    assert_refused(&w, &r, "bad_request");
    // Well-formed JSON of the wrong shape.
    let r = post(
        &b,
        "/auth/device/assert/finish",
        "{\"ceremony\": 5, \"credential\": []}",
    );
    assert_refused(&w, &r, "bad_request");
    // Malformed registration.
    let r = post(&b, "/auth/device/register/finish", "[[[");
    let ev = assert_refused(&w, &r, "bad_request");
    assert!(
        ev["detail"].as_str().unwrap().contains(": register: "),
        "{ev}"
    );
    // Oversized client data (a 5 KiB clientDataJSON).
    let mut big = held.clone();
    let padded = format!(
        "{{\"type\":\"webauthn.get\",\"challenge\":\"AAAA\",\"origin\":\"{}\",\"pad\":\"{}\"}}",
        w.url(),
        "x".repeat(5000)
    );
    big["credential"]["response"]["clientDataJSON"] =
        json!(postern_e2e::oidc::b64url_encode(padded.as_bytes()));
    let r = post(&b, "/auth/device/assert/finish", &big.to_string());
    assert_refused(&w, &r, "oversized");
    // An oversized body (100 KiB).
    let mut huge = held.clone();
    huge["padding"] = json!("y".repeat(100 * 1024));
    let r = post(&b, "/auth/device/assert/finish", &huge.to_string());
    assert_refused(&w, &r, "oversized");
    gateway_alive(&mut w);

    // Wrong challenge: a new begin replaced the challenge the held assertion signed. (Any
    // finish, refused or not, uses up the ceremony's current challenge, so every case below
    // starts with a fresh assertion.)
    let _fresh = assertion(&b, Value::Null);
    let r = post(&b, "/auth/device/assert/finish", &held.to_string());
    assert_refused(&w, &r, "challenge_mismatch");

    // Posture altered after signing: claim an encrypted disk.
    let mut altered = assertion(&b, Value::Null);
    assert_eq!(altered["posture"]["facts"]["disk_encrypted"], "false");
    altered["posture"]["facts"]["disk_encrypted"] = json!("true");
    let r = post(&b, "/auth/device/assert/finish", &altered.to_string());
    assert_refused(&w, &r, "posture_mismatch");

    // An assertion for another RP ID, validly signed by the registered credential.
    let mut other_rp = assertion(&b, Value::Null);
    let mut auth_data = b64(&other_rp["credential"]["response"]["authenticatorData"]);
    auth_data[..32]
        .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b"evil.example").as_ref());
    let client_data = b64(&other_rp["credential"]["response"]["clientDataJSON"]);
    let mut signed = auth_data.clone();
    signed.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &client_data).as_ref());
    let sig = postern_e2e::browser::sign_as_credential(&key, &signed);
    other_rp["credential"]["response"]["authenticatorData"] =
        json!(postern_e2e::oidc::b64url_encode(&auth_data));
    other_rp["credential"]["response"]["signature"] = json!(postern_e2e::oidc::b64url_encode(&sig));
    let r = post(&b, "/auth/device/assert/finish", &other_rp.to_string());
    assert_refused(&w, &r, "rp_id_mismatch");
    gateway_alive(&mut w);
    eprintln!(
        "[{:?}] forged and malformed assertions refused",
        t.elapsed()
    );

    // The genuine assertion is accepted once; replayed, it is refused.
    let genuine = assertion(&b, Value::Null);
    let r = post(&b, "/auth/device/assert/finish", &genuine.to_string());
    assert_eq!(r["status"], 200, "the genuine assertion was refused: {r}");
    assert_eq!(r["json"]["status"], "ok", "{r}");
    let redirect = r["json"]["redirect"].as_str().unwrap().to_owned();
    let r = post(&b, "/auth/device/assert/finish", &genuine.to_string());
    assert_refused(&w, &r, "unknown_challenge");
    // The CLI gets its token through the redirect the gateway answered.
    b.goto(&redirect);
    b.wait_text("You are signed in", Duration::from_secs(10));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}");
    assert_eq!(
        w.d.count("auth.login"),
        1,
        "exactly one sign-in came out of all that"
    );

    // Posture rules: enforced → denied; report-only → allowed, audited as "would deny".
    let err = connect(&w, &cfg, "echo-strict")
        .err()
        .expect("echo-strict must be denied");
    assert!(
        err.contains(
            "Access to echo-strict for radiologists requires device posture 'disk_encrypted'"
        ) && !err.contains("Did you mean"),
        "{err}"
    );
    let denied =
        w.d.wait_event("session.denied", |e| e["endpoint"]["name"] == "echo-strict");
    assert!(
        denied.to_string().contains("disk_encrypted"),
        "the denial should name the posture fact: {denied}"
    );
    let (_trial, addr) = connect(&w, &cfg, "echo-trial").unwrap();
    assert_eq!(echo_roundtrip(addr, b"trial").unwrap(), b"trial");
    let start =
        w.d.wait_event("session.start", |e| e["endpoint"]["name"] == "echo-trial");
    let findings = start["report_only"].to_string();
    assert!(
        findings.contains("would deny") && findings.contains("disk_encrypted"),
        "{start}"
    );

    // Revoking the user ends their live tunnel and refuses their token from then on.
    let mut live = postern_e2e::open_live(addr);
    let live_start = wait_for("the live session", Duration::from_secs(10), || {
        w.d.events("session.start")
            .into_iter()
            .filter(|e| e["endpoint"]["name"] == "echo-trial")
            .nth(1)
    });
    let t0 = Instant::now();
    let (ok, out, err) = w.admin(&["user", "revoke", "alice@hospital.test"]);
    assert!(ok, "user revoke: {out}{err}");
    let term = w.d.wait_event("session.terminated", |e| {
        e["session_id"] == live_start["session_id"]
    });
    eprintln!(
        "[{:?}] user revoke → session.terminated in {:?}",
        t.elapsed(),
        t0.elapsed()
    );
    assert!(
        term["detail"]
            .as_str()
            .unwrap_or("")
            .contains("user revoked"),
        "{term}"
    );
    let end = w.d.wait_event("session.end", |e| {
        e["session_id"] == live_start["session_id"]
    });
    assert_eq!(end["close_reason"], "user_revoked", "{end}");
    let mut one = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut live, &mut one).unwrap_or(0),
        0,
        "the tunnel stayed open"
    );
    assert!(
        postern_e2e::tunnel_refused(addr),
        "a new tunnel was let through"
    );
    gateway_alive(&mut w);
    eprintln!("[{:?}] done", t.elapsed());
}

/// Another laptop of the same user — a second authenticator, holding a passkey for this site
/// that was never registered here — is unknown to the gateway and refused; and a copy of the
/// registered laptop's key on it (counter reset) is caught as a clone, suspending the device.
#[test]
fn another_device_of_the_same_user_is_unknown_and_refused() {
    let t = Instant::now();
    let w = World::with("", "[devices]\napproval = \"auto\"\n", &[]);

    // Laptop A registers (approved at once) and signs in.
    let a = w.browser();
    a.goto(&format!("{}/healthz", w.url()));
    let auth_a = a.add_authenticator(&AuthenticatorOptions::default());
    let cfg_a = w.config_dir("alice-a");
    let (mut login, url) = w.start_login(&cfg_a);
    through_idp(&w, &a, &url, "alice", "alice-pw");
    register(&a, "laptop A");
    a.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "{out}");
    let known = w.devices();
    assert_eq!(known.len(), 1);

    // Laptop B: its own authenticator, with a passkey for `localhost` made outside Postern.
    let b = w.browser();
    b.on_new_document(HOLD_FINISH_JS);
    b.goto(&format!("{}/healthz", w.url()));
    let auth_b = b.add_authenticator(&AuthenticatorOptions::default());
    let made = b.await_js(CREATE_JS, vec![json!("localhost")]);
    assert!(made["err"].is_null(), "{made}");
    let cred_b = b.credentials(&auth_b)[0]["credentialId"].clone();
    assert_ne!(cred_b, known[0]["credential_id"]);

    let cfg_b = w.config_dir("alice-b");
    let (mut login_b, url) = w.start_login(&cfg_b);
    through_idp(&w, &b, &url, "alice", "alice-pw");
    // The page asks for alice's registered credential, which laptop B does not hold.
    let state = wait_state(&b, &["error", "done"], Duration::from_secs(30));
    assert_eq!(state, "error", "{}", b.describe());
    let code = b
        .exec(
            "return document.getElementById('error').dataset.code",
            vec![],
        )
        .unwrap();
    assert_eq!(
        code,
        "client_error",
        "a refusal by the browser itself: {}",
        b.describe()
    );
    let shown = b.element_text("#error").unwrap_or_default();
    assert!(
        shown.starts_with("NotAllowedError: ") && shown.contains("register it below"),
        "the page shows the browser's NotAllowedError: {shown}"
    );
    assert!(
        b.exec("return (window.__held || []).length", vec![])
            .unwrap()
            == json!(0),
        "laptop B produced an assertion for a credential it does not hold"
    );
    // Laptop B's own passkey, offered instead (a discoverable credential): unknown here.
    let body = assertion(&b, json!([]));
    assert_eq!(body["credential"]["rawId"], cred_b);
    let r = post(&b, "/auth/device/assert/finish", &body.to_string());
    let ev = assert_refused(&w, &r, "unknown_credential");
    assert_eq!(ev["user"], "alice@hospital.test", "{ev}");
    assert_eq!(w.devices().len(), 1, "no device was added");

    // A copy of laptop A's key on laptop B, its counter reset (a cloned authenticator): the
    // counter goes backwards, the gateway suspects a clone and suspends the device.
    let mut copy = a.credentials(&auth_a)[0].clone();
    assert!(copy["signCount"].as_u64().unwrap() >= 1, "{copy}");
    copy["signCount"] = json!(0);
    b.add_credential(&auth_b, &copy);
    let body = assertion(&b, Value::Null);
    assert_eq!(body["credential"]["rawId"], known[0]["credential_id"]);
    let r = post(&b, "/auth/device/assert/finish", &body.to_string());
    let ev = assert_refused(&w, &r, "possible_clone");
    assert_eq!(device_of(&ev), known[0]["id"].as_str().unwrap(), "{ev}");
    assert_eq!(w.devices()[0]["status"], "suspect");
    assert!(login_b.is_running(), "laptop B's sign-in must not complete");
    login_b.kill();
    assert!(!cfg_b.join("token").exists());

    // Laptop A itself is refused now, until the security team has looked.
    let (mut login, url) = w.start_login(&cfg_a);
    through_idp(&w, &a, &url, "alice", "alice-pw");
    wait_state(&a, &["error", "done"], Duration::from_secs(20));
    let code = a
        .exec(
            "return document.getElementById('error').dataset.code",
            vec![],
        )
        .unwrap();
    assert_eq!(code, "possible_clone", "{}", a.describe());
    assert!(login.is_running());
    login.kill();
    assert_eq!(w.d.count("auth.login"), 1, "only laptop A's first sign-in");
    eprintln!("[{:?}] done", t.elapsed());
}

/// Issue #12 finding 8: a sign-in someone else started (their loopback redirect, their
/// challenge) must not run on this laptop unseen. The device page names the terminal that asked
/// — the confirmation code `postern login` printed — and starts no WebAuthn ceremony until the
/// person confirms it; begin requests without the code, or with another, are refused with their
/// reason; sign-in links without a code, or with a malformed one, are refused before the IdP.
#[test]
fn sign_in_waits_for_confirmation_of_the_code_postern_login_printed() {
    let w = World::with("", "[devices]\napproval = \"auto\"\n", &[]);
    let b = w.browser();
    b.goto(&format!("{}/healthz", w.url()));
    let auth = b.add_authenticator(&AuthenticatorOptions::default());
    let cfg = w.config_dir("alice");
    let hidden = |css: &str| {
        b.exec(
            "const e=document.querySelector(arguments[0]);return !e||e.hidden||e.offsetParent===null",
            vec![json!(css)],
        )
        .unwrap()
            == json!(true)
    };

    // 1. First sign-in: nothing to register with until the code is confirmed.
    let (mut login, url) = w.start_login(&cfg);
    let code = printed_code(&login);
    assert_eq!(code.len(), 9, "{code}");
    assert!(url.contains(&format!("cli_code={code}")), "{url}");
    to_device_page(&w, &b, &url, "alice", "alice-pw");
    assert_eq!(page_state(&b), "confirm", "{}", b.describe());
    assert_eq!(b.element_text("#code").as_deref(), Some(code.as_str()));
    assert!(hidden("#register-form"), "{}", b.describe());
    b.click("#confirm");
    assert_eq!(register(&b, "home laptop"), "done", "{}", b.describe());
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}\n{}", b.describe());
    let signs = || b.credentials(&auth)[0]["signCount"].as_u64().unwrap();
    let count = signs();
    let verified = w.d.count("device.verified");

    // 2. The laptop is registered, so the page used to assert at once. Now it shows the code
    //    this terminal printed and waits.
    let (mut login, url) = w.start_login(&cfg);
    let code = printed_code(&login);
    to_device_page(&w, &b, &url, "alice", "alice-pw");
    assert_eq!(page_state(&b), "confirm", "{}", b.describe());
    assert_eq!(b.element_text("#code").as_deref(), Some(code.as_str()));
    assert_eq!(
        b.element_text("#confirm").as_deref(),
        Some(format!("Confirm sign-in for code {code}").as_str())
    );
    // Nothing may start without the click; there is no event to wait for, so watch a while.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(page_state(&b), "confirm", "{}", b.describe());
    assert_eq!(
        signs(),
        count,
        "the authenticator was used before the click"
    );
    assert_eq!(w.d.count("device.verified"), verified);
    assert!(login.is_running(), "{}", login.log_text());

    // The gateway holds the code with the ceremony: a begin request that does not carry it, or
    // carries another, is refused with its reason (and audited).
    let c = ceremony(&b);
    let r = post(
        &b,
        "/auth/device/assert/begin",
        &json!({ "ceremony": c }).to_string(),
    );
    assert_refused(&w, &r, "confirmation_required");
    let forged = if code == "ABCD-EFGH" {
        "HGFE-DCBA"
    } else {
        "ABCD-EFGH"
    };
    let r = post(
        &b,
        "/auth/device/assert/begin",
        &json!({ "ceremony": c, "confirm": forged }).to_string(),
    );
    let ev = assert_refused(&w, &r, "code_mismatch");
    assert_eq!(ev["user"], "alice@hospital.test", "{ev}");
    let r = post(
        &b,
        "/auth/device/assert/begin",
        &json!({ "ceremony": c, "confirm": "x".repeat(10_000) }).to_string(),
    );
    assert_refused(&w, &r, "code_mismatch");
    let r = post(
        &b,
        "/auth/device/register/begin",
        &json!({ "ceremony": c, "name": "evil laptop" }).to_string(),
    );
    assert_refused(&w, &r, "confirmation_required");
    assert_eq!(signs(), count);
    assert!(login.is_running());

    // The person confirms: the assertion runs and this terminal is signed in.
    b.click("#confirm");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}\n{}", b.describe());
    assert!(signs() > count, "the sign-in did not use the authenticator");
    assert_eq!(w.devices().len(), 1, "no second device was registered");

    // 3. Sign-in links without a code, or with a malformed one, are refused before the IdP.
    let (mut login, url) = w.start_login(&cfg);
    let code = printed_code(&login);
    login.kill();
    let without = url.replace(&format!("&cli_code={code}"), "");
    assert_ne!(without, url);
    b.goto(&without);
    let text = b.wait_text("no confirmation code", Duration::from_secs(10));
    assert!(text.contains("postern login"), "{text}");
    assert!(b.url().starts_with(&w.url()), "{}", b.url());
    let ev = w.d.wait_event("auth.failed", |e| {
        e["detail"]
            .as_str()
            .unwrap_or("")
            .contains("missing_cli_code")
    });
    assert!(ev["detail"].as_str().unwrap().contains("cli_code"), "{ev}");
    for bad in ["0O0O-1I1I", "ABCD-EFGHJ", "%3Cscript%3E"] {
        b.goto(&url.replace(&code, bad));
        b.wait_text("malformed confirmation code", Duration::from_secs(10));
        assert!(b.url().starts_with(&w.url()), "{bad}: {}", b.url());
    }
    w.d.wait_event("auth.failed", |e| {
        e["detail"].as_str().unwrap_or("").contains("bad_cli_code")
    });
}

/// `postern up` renews the sign-in through the real provider in a real browser before the
/// token expires: the new token replaces the old one in the running agent, the gateway moves the
/// live session onto it (`session.renewed`), and a connection carries data past the first
/// token's expiry without a reset.
#[test]
fn postern_up_renews_the_sign_in_in_the_browser_without_dropping_a_tunnel() {
    let w = World::with_ttl("", "[devices]\nrequired = false\n", &[], "45s");
    let b = w.browser();
    let cfg = w.config_dir("alice");
    let (mut login, url) = w.start_login(&cfg);
    through_idp(&w, &b, &url, "alice", "alice-pw");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}");

    let port = postern_e2e::free_port();
    std::fs::write(
        cfg.join("profile.toml"),
        format!("renew_before = \"35s\"\n\n[[tunnel]]\nendpoint = \"echo\"\nlocal_port = {port}\n"),
    )
    .unwrap();
    let up = |args: &[&str]| {
        run(Command::new(bin("postern"))
            .args(args)
            .env("POSTERN_CONFIG_DIR", &cfg)
            .env("POSTERN_NOTIFY", "0"))
    };
    let (ok, out, err) = up(&["up", "--no-browser"]);
    assert!(
        ok,
        "postern up: {out}{err}\n{}",
        std::fs::read_to_string(cfg.join("agent.log")).unwrap_or_default()
    );
    let status = || -> Value {
        let (ok, out, err) = up(&["status", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let first_exp = status()["expires_at"].as_u64().unwrap();
    let mut live = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = |msg: &[u8]| {
        use std::io::{Read, Write};
        live.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        live.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    };
    echo(b"before the renewal");
    let start =
        w.d.wait_event("session.start", |e| e["endpoint"]["name"] == "echo");
    let session = start["session_id"].as_str().unwrap().to_owned();

    // The agent asks for the renewal; the clinician signs in again in the browser.
    let url = wait_for("the renewal URL", Duration::from_secs(30), || {
        status()["renewal_url"].as_str().map(str::to_owned)
    });
    through_idp(&w, &b, &url, "alice", "alice-pw");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let renewed =
        w.d.wait_event("session.renewed", |e| e["session_id"] == session.as_str());
    assert_eq!(renewed["user"], "alice@hospital.test", "{renewed}");
    let s = wait_for("the new sign-in in status", Duration::from_secs(10), || {
        let s = status();
        (s["expires_at"].as_u64() > Some(first_exp)).then_some(s)
    });
    assert!(
        s["signin"].as_str().unwrap().starts_with("signed in until"),
        "{s:#}"
    );
    assert!(
        s["notices"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("1 connection(s) carried on"))),
        "{s:#}"
    );
    assert_eq!(w.d.count("auth.login"), 2, "two sign-ins");

    // The same connection carries data past the first token's expiry.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() < first_exp + 3 {
        echo(b"across the renewal");
        std::thread::sleep(Duration::from_millis(500));
    }
    echo(b"after the first token expired");
    assert!(
        w.d.events("session.end")
            .iter()
            .all(|e| e["session_id"] != session.as_str()),
        "the session outlived its first token"
    );
    let (ok, _, err) = up(&["down"]);
    assert!(ok, "{err}");
    let end =
        w.d.wait_event("session.end", |e| e["session_id"] == session.as_str());
    assert_eq!(end["close_reason"], "client_closed", "{end}");
}

/// A sign-in cancelled at the identity provider reaches `postern login` at once with the
/// reason (not after its timeout); a gateway whose certificate this computer does not trust
/// fails before any URL is shown, with the `--ca-file` hint; with no arguments `postern login`
/// uses the saved gateway and CA.
#[test]
fn a_cancelled_sign_in_reaches_the_cli_at_once_and_an_untrusted_gateway_fails_first() {
    let w = World::new();
    let b = w.browser();
    let cfg = w.config_dir("alice");
    let (mut login, url) = w.start_login(&cfg);
    b.goto(&url);
    b.wait_url(&w.idp.issuer, Duration::from_secs(15));
    let t0 = Instant::now();
    b.click("#cancel");
    b.wait_text("Sign-in did not complete", Duration::from_secs(15));
    let (ok, out) = finish(&mut login, Duration::from_secs(10));
    assert!(!ok, "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the CLI heard at once"
    );
    assert!(
        out.contains(
            "sign-in did not complete: The hospital's sign-in service did not let you in."
        ) && out.contains("(reference err-"),
        "{out}"
    );
    let failed = w.d.wait_event("auth.failed", |e| {
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("idp_denied"))
    });
    assert!(
        failed["detail"].as_str().unwrap().contains("access_denied"),
        "{failed}"
    );

    // No --ca-file for a gateway with a private CA: refused before the browser would open.
    let bob = w.config_dir("bob");
    let (ok, out, err) = run(Command::new(bin("postern"))
        .args(["login", &w.url(), "--no-browser", "--timeout", "30"])
        .env("POSTERN_CONFIG_DIR", &bob));
    assert!(!ok);
    assert!(!out.contains("https://"), "no sign-in URL is shown: {out}");
    assert!(
        err.contains("does not trust")
            && err.contains(&format!("postern login {} --ca-file", w.url())),
        "{err}"
    );

    // Saved gateway and CA: `postern login` alone.
    let carol = w.config_dir("carol");
    std::fs::create_dir_all(&carol).unwrap();
    std::fs::write(
        carol.join("config.json"),
        json!({"gateway": w.url(), "ca_file": w.d.ca_file()}).to_string(),
    )
    .unwrap();
    let mut p = Proc::spawn(
        "login",
        Command::new(bin("postern"))
            .args(["login", "--no-browser", "--timeout", "20"])
            .env("POSTERN_CONFIG_DIR", &carol),
        w.work.path().join("login-carol.log"),
    );
    let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
        p.log_text()
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("https://"))
            .map(str::to_owned)
    });
    assert!(
        url.starts_with(&format!("{}/auth/login?", w.url())),
        "{url}"
    );
    p.kill();
}

/// A whole simulated shift, from a fresh sign-in: `postern login` in the browser, `postern up`,
/// then the clinician's DICOM tools (dcmtk), web browser (Chromium on Orthanc's web interface)
/// and RDP client (`postern rdp` → xfreerdp against xrdp) all on their fixed ports; the sign-in
/// is renewed in the browser mid-shift and the remote desktop stays drawn and connected past
/// the first token's expiry; `postern down` ends it all.
#[test]
fn a_whole_shift_dicom_web_and_rdp_on_fixed_ports_across_a_renewal() {
    use postern_e2e::rdp::{desktop_drawn, RdpServer, Xvfb, LEFT};
    let t = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let rdp = RdpServer::start();
    let (dicom_port, web_port, rdp_port) = (
        postern_e2e::free_port(),
        postern_e2e::free_port(),
        postern_e2e::free_port(),
    );
    let endpoints = format!(
        r#"
[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "dicom"
local_port = {dicom_port}

[[endpoints]]
name = "pacs-web"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "tcp"
egress = "display"
local_port = {web_port}

[[endpoints]]
name = "reporting-pc"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "rdp"
egress = "display"
local_port = {rdp_port}

[[rules]]
id = "radiologists-shift"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom", "pacs-web", "reporting-pc"]
max_session = "8h"
# The shift stores an image through the tunnel: C-STORE must be granted.
dicom_services = ["echo", "find", "get", "move", "store"]
"#,
        orthanc.dicom_port, orthanc.http_port, rdp.port
    );
    let w = World::with_ttl(
        &endpoints,
        "[devices]\nrequired = false\n",
        &[orthanc.dicom_port, orthanc.http_port, rdp.port],
        "50s",
    );
    let b = w.browser();
    let cfg = w.config_dir("alice");

    // Morning: sign in once, then one command opens everything.
    let (mut login, url) = w.start_login(&cfg);
    through_idp(&w, &b, &url, "alice", "alice-pw");
    b.wait_text("You are signed in", Duration::from_secs(20));
    let (ok, out) = finish(&mut login, Duration::from_secs(20));
    assert!(ok, "postern login failed: {out}");
    std::fs::write(cfg.join("profile.toml"), "renew_before = \"40s\"\n").unwrap();
    let postern = |args: &[&str]| {
        run(Command::new(bin("postern"))
            .args(args)
            .env("POSTERN_CONFIG_DIR", &cfg)
            .env("POSTERN_NOTIFY", "0"))
    };
    let (ok, out, err) = postern(&["up", "--no-browser"]);
    assert!(ok, "postern up: {out}{err}");
    for p in [dicom_port, web_port, rdp_port] {
        assert!(out.contains(&format!("127.0.0.1:{p}")), "{out}");
    }
    let first_exp = {
        let (_, s, _) = postern(&["status", "--json"]);
        serde_json::from_str::<Value>(&s).unwrap()["expires_at"]
            .as_u64()
            .unwrap()
    };
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    eprintln!("[{:?}] signed in, postern up", t.elapsed());

    // The DICOM viewer: C-ECHO and a C-STORE on the fixed port.
    let (ok, out, err) = echoscu(local(dicom_port));
    assert!(ok, "echoscu: {out}{err}");
    let study_dir = work.path().join("study");
    std::fs::create_dir_all(&study_dir).unwrap();
    let (file, _uid) = make_study(&study_dir, "PAT-SHIFT-1");
    let (ok, out, err) = storescu(local(dicom_port), &file);
    assert!(ok, "storescu: {out}{err}");
    assert_eq!(orthanc.instance_count(), 1);

    // The browser: Orthanc's web interface on the fixed port.
    b.goto(&format!("http://127.0.0.1:{web_port}/system"));
    b.wait_text("postern-e2e", Duration::from_secs(15));

    // The reporting PC, full screen, through postern up's tunnel.
    let x = Xvfb::start(1, 1280, 800, work.path());
    let blank = x.screenshot();
    let home = work.path().join("rdp-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut rdp_client = {
        use std::io::Write;
        let log = work.path().join("postern-rdp.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(bin("postern"))
            .args(["rdp", "reporting-pc", "--monitors", "primary", "--user"])
            .arg(&rdp.user.name)
            .args(["--", "/from-stdin:force"])
            .env("POSTERN_CONFIG_DIR", &cfg)
            .env("DISPLAY", &x.display)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(std::process::Stdio::piped())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", rdp.user.password).unwrap();
        drop(stdin);
        Proc {
            child,
            log,
            name: "postern rdp".into(),
        }
    };
    wait_for("the remote desktop", Duration::from_secs(60), || {
        assert!(
            rdp_client.is_running(),
            "postern rdp exited: {}",
            rdp_client.log_text()
        );
        desktop_drawn(&x.screenshot(), &blank, LEFT).ok()
    });
    let rdp_start =
        w.d.wait_event("session.start", |e| e["endpoint"]["name"] == "reporting-pc");
    let rdp_session = rdp_start["session_id"].as_str().unwrap().to_owned();
    eprintln!("[{:?}] DICOM, web and RDP up", t.elapsed());

    // Mid-shift: the renewal in the browser.
    let url = wait_for("the renewal URL", Duration::from_secs(30), || {
        let (_, s, _) = postern(&["status", "--json"]);
        serde_json::from_str::<Value>(&s).ok()?["renewal_url"]
            .as_str()
            .map(str::to_owned)
    });
    through_idp(&w, &b, &url, "alice", "alice-pw");
    b.wait_text("You are signed in", Duration::from_secs(20));
    w.d.wait_event("session.renewed", |e| {
        e["session_id"] == rdp_session.as_str()
    });
    eprintln!("[{:?}] renewed", t.elapsed());

    // Past the first token's expiry: the same remote desktop session, the tools again.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() < first_exp + 3 {
        assert!(
            rdp_client.is_running(),
            "postern rdp exited: {}",
            rdp_client.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        desktop_drawn(&x.screenshot(), &blank, LEFT).is_ok(),
        "the remote desktop is still drawn"
    );
    assert!(
        w.d.events("session.end")
            .iter()
            .all(|e| e["session_id"] != rdp_session.as_str()),
        "the RDP session outlived the first token"
    );
    let (ok, out, err) = echoscu(local(dicom_port));
    assert!(ok, "echoscu after the renewal: {out}{err}");
    b.goto(&format!("http://127.0.0.1:{web_port}/system"));
    b.wait_text("postern-e2e", Duration::from_secs(15));

    // End of the shift.
    rdp_client.terminate(Duration::from_secs(10));
    let (ok, _, err) = postern(&["down"]);
    assert!(ok, "{err}");
    let end =
        w.d.wait_event("session.end", |e| e["session_id"] == rdp_session.as_str());
    assert!(end["bytes_down"].as_u64() > Some(20_000), "{end}");
    eprintln!("[{:?}] shift over", t.elapsed());
}
