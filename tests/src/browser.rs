//! A real browser for the end-to-end tests: Debian's `chromium`, headless, driven through
//! `chromedriver`'s W3C WebDriver API by a tiny HTTP/1.1 JSON client, with WebDriver's WebAuthn
//! extension for **virtual authenticators** (the "laptop's platform authenticator").
//!
//! Every browser gets its own temporary `HOME` and profile (`--user-data-dir`), makes no DNS
//! query off the machine (`--host-resolver-rules`), and trusts exactly one extra CA — the
//! gateway's self-issued server CA — through an NSS database in that `HOME`
//! (`$HOME/.pki/nssdb`, written with `certutil` from `libnss3-tools`). WebAuthn in Chromium
//! refuses pages with certificate errors, so the CA must really be trusted (not merely
//! ignored); and the RP ID must be a host name (`localhost`), not an IP literal.
//!
//! chromedriver runs in its own process group; dropping the [`Chromium`] ends the WebDriver
//! session and kills the whole group (chromedriver, chromium and its helpers). Every wait is
//! bounded; failures say what the page showed.
//!
//! Needs `chromium`, `chromium-driver` and `libnss3-tools` (`scripts/test.sh` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{free_port, run, Proc};

/// The Chromium binary Debian installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The matching chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The W3C "element" key in WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An error answered by chromedriver (`error`, `message`) or a transport failure.
#[derive(Debug, Clone)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webdriver {} {}: {}",
            self.status, self.error, self.message
        )
    }
}

/// Options of a virtual authenticator (W3C WebAuthn §11.2 "Add Virtual Authenticator").
#[derive(Debug, Clone)]
pub struct AuthenticatorOptions {
    pub protocol: &'static str,
    pub transport: &'static str,
    pub has_resident_key: bool,
    pub has_user_verification: bool,
    pub is_user_consenting: bool,
    pub is_user_verified: bool,
}

impl Default for AuthenticatorOptions {
    /// A laptop's platform authenticator: CTAP2, internal transport, resident keys, user
    /// verification that always succeeds, automatic presence.
    fn default() -> Self {
        AuthenticatorOptions {
            protocol: "ctap2",
            transport: "internal",
            has_resident_key: true,
            has_user_verification: true,
            is_user_consenting: true,
            is_user_verified: true,
        }
    }
}

/// A headless Chromium under chromedriver, with one WebDriver session (one tab).
pub struct Chromium {
    driver: Proc,
    port: u16,
    session: String,
    home: tempfile::TempDir,
}

/// Whether chromium and chromedriver are installed (tests fail with this message if not).
pub fn require_installed() {
    for b in [CHROMIUM, CHROMEDRIVER, "/usr/bin/certutil"] {
        assert!(
            Path::new(b).exists(),
            "{b} is missing: install chromium, chromium-driver and libnss3-tools (scripts/test.sh does)"
        );
    }
}

impl Chromium {
    /// Starts chromedriver and a headless Chromium that trusts `trust_ca` (a PEM CA
    /// certificate, e.g. the gateway's `server-ca.pem`) for TLS server authentication.
    pub fn start(trust_ca: Option<&Path>) -> Chromium {
        Chromium::start_mapping(trust_ca, &[])
    }

    /// As [`Chromium::start`], with the host patterns in `loopback_hosts` (e.g.
    /// `*.apps.localhost`, the web applications' wildcard domain) resolved to 127.0.0.1 — every
    /// other name but `localhost` still resolves to nothing.
    pub fn start_mapping(trust_ca: Option<&Path>, loopback_hosts: &[&str]) -> Chromium {
        require_installed();
        let home = tempfile::tempdir().unwrap();
        if let Some(ca) = trust_ca {
            trust_in_nssdb(home.path(), ca);
        }
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                home.path().join("chromedriver.log").display()
            ))
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("DISPLAY")
            .process_group(0);
        let mut driver = Proc::spawn("chromedriver", &mut cmd, home.path().join("driver.out"));
        let start = Instant::now();
        loop {
            if let Ok((200, v)) = http(port, "GET", "/status", None) {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                driver.is_running(),
                "chromedriver exited: {}",
                driver.log_text()
            );
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver never became ready: {}",
                driver.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = home.path().join("profile");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--host-resolver-rules={}", resolver_rules(loopback_hosts)),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "pageLoadStrategy": "normal",
                    "timeouts": {"pageLoad": 30000, "script": 30000, "implicit": 0},
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": args,
                        "prefs": {"credentials_enable_service": false},
                    },
                }
            }
        });
        // Chromium's first start on a cold, loaded machine can be slow; try twice.
        let mut last = String::new();
        for _ in 0..2 {
            match http(port, "POST", "/session", Some(&caps)) {
                Ok((200, v)) => {
                    let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
                    return Chromium {
                        driver,
                        port,
                        session,
                        home,
                    };
                }
                Ok((status, v)) => last = format!("{status}: {v}"),
                Err(e) => last = e,
            }
        }
        let log = std::fs::read_to_string(home.path().join("chromedriver.log")).unwrap_or_default();
        driver.kill();
        panic!("could not start a chromium session: {last}\nchromedriver log:\n{log}");
    }

    /// The temporary HOME (profile, NSS db, chromedriver.log).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A WebDriver command on this session: the `value` of the answer, or the error.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let full = format!("/session/{}{path}", self.session);
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        match http(self.port, method, &full, body.as_ref()) {
            Ok((200, v)) => Ok(v["value"].clone()),
            Ok((status, v)) => Err(WdError {
                status,
                error: v["value"]["error"].as_str().unwrap_or("").to_owned(),
                message: v["value"]["message"].as_str().unwrap_or("").to_owned(),
            }),
            Err(e) => Err(WdError {
                status: 0,
                error: "transport".into(),
                message: e,
            }),
        }
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.describe()))
    }

    /// Navigates and waits for the page load (bounded by the 30 s page-load timeout).
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// Navigates; a page-load error (e.g. a loopback listener that is gone) is returned.
    pub fn try_goto(&self, url: &str) -> Result<(), WdError> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The visible text of the page (`document.body.innerText`), or "" if there is no body.
    pub fn text(&self) -> String {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// The page's HTML.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// URL and text of the current page, for failure messages.
    pub fn describe(&self) -> String {
        let text = self.text();
        let text: String = text.chars().take(2000).collect();
        format!("[browser at {}]\n{text}", self.url())
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v[ELEMENT_KEY].as_str().map(str::to_owned))
    }

    /// Waits (up to `limit`) for an element matching `css`.
    pub fn wait_find(&self, css: &str, limit: Duration) -> String {
        self.wait(&format!("element {css}"), limit, || self.find(css))
    }

    /// Types `text` into the element matching `css` (waits up to 10 s for it).
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_find(css, Duration::from_secs(10));
        self.must(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element matching `css` (waits up to 10 s for it).
    pub fn click(&self, css: &str) {
        let el = self.wait_find(css, Duration::from_secs(10));
        self.must("POST", &format!("/element/{el}/click"), None);
    }

    /// Clicks the element matching `css` once it is there and can be clicked (retries while it
    /// is missing, hidden or covered, e.g. during a page transition), for up to `limit`.
    pub fn click_when_ready(&self, css: &str, limit: Duration) {
        self.wait(&format!("{css} to be clickable"), limit, || {
            let el = self.find(css)?;
            self.cmd("POST", &format!("/element/{el}/click"), None).ok()
        });
    }

    /// The visible text of the element matching `css`.
    pub fn element_text(&self, css: &str) -> Option<String> {
        let el = self.find(css)?;
        self.cmd("GET", &format!("/element/{el}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns what it returns.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Result<Value, WdError> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs an async `script`: it must call `arguments[arguments.length - 1](result)`
    /// (bounded by the 30 s script timeout).
    pub fn exec_async(&self, script: &str, args: Vec<Value>) -> Result<Value, WdError> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs a promise-returning expression `body` (e.g. `return fetch(...)...`) and returns
    /// `{ok: value}` or `{err: "Name: message"}` from the promise.
    pub fn await_js(&self, body: &str, args: Vec<Value>) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{ {body} }})().then(v => done({{ok: v === undefined ? null : v}}), \
             e => done({{err: String(e && e.name) + ': ' + String(e && e.message)}}));"
        );
        self.exec_async(&script, args)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{body}\n{}", self.describe()))
    }

    /// Polls `f` every 50 ms for up to `limit`; on timeout panics with the page's URL and text.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the current URL starts with `prefix`; returns it.
    pub fn wait_url(&self, prefix: &str, limit: Duration) -> String {
        self.wait(&format!("URL {prefix}…"), limit, || {
            let u = self.url();
            u.starts_with(prefix).then_some(u)
        })
    }

    /// Waits until the page text contains `needle`; returns the text.
    pub fn wait_text(&self, needle: &str, limit: Duration) -> String {
        self.wait(&format!("page text {needle:?}"), limit, || {
            let t = self.text();
            t.contains(needle).then_some(t)
        })
    }

    /// Waits until the page text contains any of `needles`; returns the text.
    pub fn wait_any_text(&self, needles: &[&str], limit: Duration) -> String {
        self.wait(&format!("page text, any of {needles:?}"), limit, || {
            let t = self.text();
            needles.iter().any(|n| t.contains(n)).then_some(t)
        })
    }

    /// Adds a virtual authenticator to this tab; returns its id.
    pub fn add_authenticator(&self, o: &AuthenticatorOptions) -> String {
        let v = self.must(
            "POST",
            "/webauthn/authenticator",
            Some(json!({
                "protocol": o.protocol,
                "transport": o.transport,
                "hasResidentKey": o.has_resident_key,
                "hasUserVerification": o.has_user_verification,
                "isUserConsenting": o.is_user_consenting,
                "isUserVerified": o.is_user_verified,
            })),
        );
        v.as_str()
            .unwrap_or_else(|| panic!("no authenticator id in {v}"))
            .to_owned()
    }

    /// Removes a virtual authenticator (its credentials go with it).
    pub fn remove_authenticator(&self, id: &str) {
        self.must("DELETE", &format!("/webauthn/authenticator/{id}"), None);
    }

    /// The credentials a virtual authenticator holds (`credentialId`, `rpId`, `signCount`, …).
    pub fn credentials(&self, id: &str) -> Vec<Value> {
        let v = self.must(
            "GET",
            &format!("/webauthn/authenticator/{id}/credentials"),
            None,
        );
        v.as_array().cloned().unwrap_or_default()
    }

    /// Puts a credential into a virtual authenticator (W3C "Add Credential"): `cred` as
    /// [`Chromium::credentials`] lists them (`credentialId`, `isResidentCredential`, `rpId`,
    /// `privateKey`, `userHandle`, `signCount`) — e.g. a copy of another laptop's key.
    pub fn add_credential(&self, id: &str, cred: &Value) {
        let mut body = json!({
            "credentialId": cred["credentialId"],
            "isResidentCredential": cred["isResidentCredential"],
            "rpId": cred["rpId"],
            "privateKey": cred["privateKey"],
            "signCount": cred["signCount"],
        });
        if cred["userHandle"].is_string() {
            body["userHandle"] = cred["userHandle"].clone();
        }
        self.must(
            "POST",
            &format!("/webauthn/authenticator/{id}/credential"),
            Some(body),
        );
    }

    /// A Chrome DevTools Protocol command through chromedriver (`goog/cdp/execute`).
    pub fn cdp(&self, cmd: &str, params: Value) -> Result<Value, WdError> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
    }

    /// Runs `js` in every document this tab loads from now on, before the page's own scripts
    /// (CDP `Page.addScriptToEvaluateOnNewDocument`): how a test stands between a page and its
    /// server, as a hostile extension could.
    pub fn on_new_document(&self, js: &str) {
        self.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": js }),
        )
        .unwrap_or_else(|e| panic!("addScriptToEvaluateOnNewDocument: {e}"));
    }

    /// Sets whether the authenticator's user verification succeeds (W3C "Set User Verified").
    pub fn set_user_verified(&self, id: &str, verified: bool) {
        self.must(
            "POST",
            &format!("/webauthn/authenticator/{id}/uv"),
            Some(json!({ "isUserVerified": verified })),
        );
    }

    /// Deletes every cookie of the current page's origin (e.g. to start a fresh sign-in).
    pub fn delete_cookies(&self) {
        self.must("DELETE", "/cookie", None);
    }

    /// The current tab's WebDriver window handle.
    pub fn window(&self) -> String {
        let v = self.must("GET", "/window", None);
        v.as_str()
            .unwrap_or_else(|| panic!("no window handle in {v}"))
            .to_owned()
    }

    /// Opens a new tab (WebDriver "New Window", type `tab`) and returns its handle; the
    /// current tab stays the one commands go to until [`Chromium::switch_to`].
    pub fn new_tab(&self) -> String {
        let v = self.must("POST", "/window/new", Some(json!({"type": "tab"})));
        v["handle"]
            .as_str()
            .unwrap_or_else(|| panic!("no handle in {v}"))
            .to_owned()
    }

    /// Makes the tab `handle` the one commands go to.
    pub fn switch_to(&self, handle: &str) {
        self.must("POST", "/window", Some(json!({ "handle": handle })));
    }

    /// The cookies the browser would send to the current page (HttpOnly ones included), as
    /// WebDriver lists them (`name`, `value`, `domain`, `path`, `secure`, `httpOnly`,
    /// `sameSite`, ...).
    pub fn cookies(&self) -> Vec<Value> {
        self.must("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Resizes the browser window (WebDriver "Set Window Rect"), e.g. before a screenshot.
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.must(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// A PNG screenshot of the current tab (WebDriver "Take Screenshot").
    pub fn screenshot_png(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.must("GET", "/screenshot", None);
        let b64 = v.as_str().unwrap_or_else(|| panic!("no screenshot in {v}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"))
    }

    /// The chromedriver log (verbose; useful when a session misbehaves).
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ends the session (chromium exits), then kills whatever is left of the group.
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let pgid = self.driver.pid();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        self.driver.kill();
    }
}

/// Chromium's `--host-resolver-rules`: `loopback_hosts` to 127.0.0.1 (the first matching MAP
/// rule wins), every other name but `localhost` to nothing.
fn resolver_rules(loopback_hosts: &[&str]) -> String {
    let mut rules: Vec<String> = loopback_hosts
        .iter()
        .map(|h| format!("MAP {h} 127.0.0.1"))
        .collect();
    rules.push("MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1".to_owned());
    rules.join(", ")
}

/// Signs `msg` (ECDSA P-256, SHA-256, DER signature as WebAuthn uses) with a virtual
/// authenticator's credential key as WebDriver exports it (`privateKey`: base64url PKCS#8).
/// Lets a test forge an assertion that carries a *valid* signature of the real credential.
pub fn sign_as_credential(private_key_b64url: &str, msg: &[u8]) -> Vec<u8> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let der = crate::oidc::b64url_decode(private_key_b64url).expect("privateKey is not base64url");
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
        .unwrap_or_else(|e| panic!("credential key is not a P-256 PKCS#8 key: {e}"));
    key.sign(&rng, msg).unwrap().as_ref().to_vec()
}

/// The uncompressed public point of a credential key (for checking a browser's signature).
pub fn credential_public_key(private_key_b64url: &str) -> Vec<u8> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let der = crate::oidc::b64url_decode(private_key_b64url).expect("privateKey is not base64url");
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
        .unwrap_or_else(|e| panic!("credential key is not a P-256 PKCS#8 key: {e}"));
    key.public_key().as_ref().to_vec()
}

/// Creates `$home/.pki/nssdb` (no password) and trusts `ca` (PEM) there for TLS servers.
pub fn trust_in_nssdb(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let dbarg = format!("sql:{}", db.display());
    let (ok, out, err) =
        run(Command::new("certutil").args(["-N", "--empty-password", "-d", &dbarg]));
    assert!(ok, "certutil -N: {out}{err}");
    let (ok, out, err) = run(Command::new("certutil")
        .args([
            "-A",
            "-d",
            &dbarg,
            "-n",
            "postern-test-gateway-ca",
            "-t",
            "C,,",
            "-i",
        ])
        .arg(ca));
    assert!(ok, "certutil -A {}: {out}{err}", ca.display());
}

/// One HTTP/1.1 request to chromedriver on 127.0.0.1:`port`: (status, JSON body).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    // Navigation and scripts are bounded by the session's own 30 s timeouts.
    s.set_read_timeout(Some(Duration::from_secs(90)))
        .map_err(|e| e.to_string())?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open despite `Connection: close`: read the header,
    // then exactly Content-Length bytes (or chunks to the last one, or to EOF).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let split = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{method} {path}: connection closed before a header"
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let lower = head.to_ascii_lowercase();
    let length: Option<usize> = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    let mut body = buf[split + 4..].to_vec();
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(n) = length {
        body.truncate(n);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line {head}"))?;
    if chunked {
        body = dechunk(&body);
    }
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{method} {path}: answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?
    };
    Ok((status, v))
}

/// The body of a chunked HTTP/1.1 response (what `Transfer-Encoding: chunked` framed).
pub(crate) fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolver_rules_put_mapped_hosts_first() {
        assert_eq!(
            super::resolver_rules(&[]),
            "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
        );
        assert_eq!(
            super::resolver_rules(&["*.apps.localhost"]),
            "MAP *.apps.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"),
            b"Wikipedia"
        );
    }
}
