//! A real OpenID provider for the sign-in tests: panva's `oidc-provider` (OpenID Certified) run
//! by node from `tests/oidc-provider/` on a loopback port, plus a curl-driven "browser" that
//! follows the real redirects and posts the provider's real login form.
//!
//! The provider has one confidential client (`client_secret_basic` or `client_secret_post`),
//! authorization code flow only, PKCE S256 required, scopes `openid profile email groups`, and
//! grants consent automatically after login. Its ID token (RS256) carries `sub`, `name`,
//! `preferred_username`, `email`, `email_verified`, `groups`, `amr` (`["pwd","mfa"]` or
//! `["pwd"]`), `auth_time` and `nonce`. Signing keys and all state are in memory, so
//! [`OidcProvider::restart`] rotates the JWKS (new `kid`) and forgets codes and sessions.
//!
//! Needs `node` and `tests/oidc-provider/node_modules` (`scripts/test.sh` runs `npm ci` there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, Proc};

/// A test user known to the provider.
#[derive(Clone, Debug)]
pub struct OidcUser {
    pub username: &'static str,
    pub password: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub groups: Vec<&'static str>,
    /// Whether the login counts as multi-factor: `amr` is `["pwd","mfa"]` if so, else `["pwd"]`.
    pub mfa: bool,
}

impl OidcUser {
    /// A user with email `USERNAME@hospital.test` and name `USERNAME`.
    pub fn new(
        username: &'static str,
        password: &'static str,
        groups: &[&'static str],
        mfa: bool,
    ) -> OidcUser {
        OidcUser {
            username,
            password,
            email: Box::leak(format!("{username}@hospital.test").into_boxed_str()),
            name: username,
            groups: groups.to_vec(),
            mfa,
        }
    }

    /// The `sub` claim the provider issues for this user: `sub-USERNAME` (deliberately not the
    /// username, so a relying party that confuses the two shows up).
    pub fn sub(&self) -> String {
        format!("sub-{}", self.username)
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "username": self.username,
            "password": self.password,
            "sub": self.sub(),
            "email": self.email,
            "name": self.name,
            "groups": self.groups,
            "mfa": self.mfa,
        })
    }
}

/// A running (or stopped) `tests/oidc-provider/server.js`.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT` (no trailing slash), exactly as in discovery and the `iss` claim.
    pub issuer: String,
    pub port: u16,
    pub proc: Proc,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    dir: PathBuf,
    users_json: String,
    starts: usize,
}

/// `tests/oidc-provider` in the source tree.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

impl OidcProvider {
    /// Starts the provider on a free port with one client and `users`; returns once
    /// `/.well-known/openid-configuration` answers. Its log goes to `dir/oidc-provider-N.log`.
    pub fn start(
        dir: &Path,
        client_id: &str,
        client_secret: &str,
        redirect_uris: &[String],
        users: &[OidcUser],
    ) -> OidcProvider {
        Self::start_on_port(
            dir,
            free_port(),
            client_id,
            client_secret,
            redirect_uris,
            users,
        )
    }

    /// As [`OidcProvider::start`] on a given port (e.g. to bring an IdP up late at an issuer
    /// URL the gateway was already configured with).
    pub fn start_on_port(
        dir: &Path,
        port: u16,
        client_id: &str,
        client_secret: &str,
        redirect_uris: &[String],
        users: &[OidcUser],
    ) -> OidcProvider {
        std::fs::create_dir_all(dir).unwrap();
        let users_json = users_json(users);
        let proc = launch(
            dir,
            port,
            0,
            client_id,
            client_secret,
            redirect_uris,
            &users_json,
        );
        OidcProvider {
            issuer: issuer(port),
            port,
            proc,
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: redirect_uris.to_vec(),
            dir: dir.to_path_buf(),
            users_json,
            starts: 1,
        }
    }

    /// Stops the provider (if running) and starts a new process on the same port with the
    /// same client and users: new signing keys, no sessions, codes or tokens from before.
    pub fn restart(&mut self) {
        self.stop();
        self.proc = launch(
            &self.dir,
            self.port,
            self.starts,
            &self.client_id,
            &self.client_secret,
            &self.redirect_uris,
            &self.users_json,
        );
        self.starts += 1;
    }

    /// Restarts with a different set of users (e.g. a group removed at the IdP).
    pub fn restart_with_users(&mut self, users: &[OidcUser]) {
        self.users_json = users_json(users);
        self.restart();
    }

    /// Kills the provider; the port then refuses connections until [`OidcProvider::restart`].
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Everything the current process printed (stdout and stderr).
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// The discovery document.
    pub fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration")
    }

    /// The current JWKS.
    pub fn jwks(&self) -> Value {
        self.get_json("/jwks")
    }

    /// The `kid`s of the current JWKS.
    pub fn kids(&self) -> Vec<String> {
        self.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path)
            .unwrap_or_else(|| panic!("GET {}{path}: no answer", self.issuer));
        assert_eq!(status, 200, "GET {}{path}: {body}", self.issuer);
        serde_json::from_str(&body).unwrap()
    }
}

fn issuer(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Spawns server.js and waits until its discovery document answers with our issuer.
fn launch(
    dir: &Path,
    port: u16,
    n: usize,
    client_id: &str,
    client_secret: &str,
    redirect_uris: &[String],
    users_json: &str,
) -> Proc {
    let pdir = provider_dir();
    assert!(
        pdir.join("node_modules/oidc-provider").exists(),
        "{}/node_modules is missing: run `npm ci --no-audit --no-fund` there (scripts/test.sh does)",
        pdir.display()
    );
    let want = format!("\"issuer\":\"{}\"", issuer(port));
    // A loaded 2-core machine can leave a fresh node process unready for a long time (seen in
    // CI after a restart): give each attempt 20 s, and start a new process once if needed.
    let mut logs = String::new();
    for attempt in 0..2 {
        let mut proc = Proc::spawn(
            "oidc-provider",
            Command::new("node")
                .arg(pdir.join("server.js"))
                .current_dir(&pdir)
                .env("OIDC_PORT", port.to_string())
                .env("OIDC_CLIENT_ID", client_id)
                .env("OIDC_CLIENT_SECRET", client_secret)
                .env("OIDC_REDIRECT_URIS", redirect_uris.join(","))
                .env("OIDC_USERS", users_json)
                .env_remove("DEBUG"),
            dir.join(format!("oidc-provider-{port}-{n}-{attempt}.log")),
        );
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if !proc.is_running() {
                break;
            }
            if let Some((status, body)) = http_get(port, "/.well-known/openid-configuration") {
                // Another process could hold the port: make sure the answer is ours.
                if status == 200 && body.contains(&want) {
                    return proc;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        logs.push_str(&format!("attempt {attempt}:\n{}\n", proc.log_text()));
        proc.kill();
    }
    panic!("oidc-provider on port {port} never answered discovery:\n{logs}");
}

fn users_json(users: &[OidcUser]) -> String {
    Value::Array(users.iter().map(OidcUser::to_json).collect()).to_string()
}

/// A minimal HTTP/1.0 GET to 127.0.0.1:`port`: Some((status, body)) or None if it fails.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// What the browser ended on.
#[derive(Clone, Debug)]
pub struct BrowserResult {
    /// The last URL requested (a redirect target even if nothing answered there).
    pub final_url: String,
    /// Its HTTP status, or 0 if curl could not get an answer (see `body` for curl's error).
    pub status: u16,
    pub body: String,
    /// Every request made, in order, as "GET url" or "POST url".
    pub trace: Vec<String>,
}

impl BrowserResult {
    /// A query parameter of `final_url`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.final_url, name)
    }

    /// Whether any request in the trace went to a URL starting with `prefix`.
    pub fn visited(&self, prefix: &str) -> bool {
        self.trace.iter().any(|t| {
            t.split_once(' ')
                .is_some_and(|(_, u)| u.starts_with(prefix))
        })
    }
}

/// Plays the clinician's browser: GETs `start_url` and follows redirects (cookies kept in a jar,
/// https verified against `gateway_ca` only; pass an empty path to use the system roots), fills
/// the first page that has a password form with `username`/`password` and posts it once, then
/// follows redirects to the end. Stops at the first response that is neither a redirect nor a
/// not-yet-submitted login form — e.g. the login form again after a wrong password, an error
/// page, or the page of the final redirect target — and returns it.
pub fn browser_login(
    start_url: &str,
    gateway_ca: &Path,
    username: &str,
    password: &str,
) -> BrowserResult {
    Browser::new(gateway_ca).login(start_url, username, password)
}

/// A curl-based browser with its own cookie jar, reusable across several sign-ins (so a second
/// sign-in can ride on the IdP session of the first).
pub struct Browser {
    jar_dir: tempfile::TempDir,
    ca: Option<PathBuf>,
    /// Upper bound on requests per `login`/`get` call.
    pub max_steps: usize,
}

impl Browser {
    pub fn new(gateway_ca: &Path) -> Browser {
        Browser {
            jar_dir: tempfile::tempdir().unwrap(),
            ca: (!gateway_ca.as_os_str().is_empty()).then(|| gateway_ca.to_path_buf()),
            max_steps: 25,
        }
    }

    /// The curl cookie jar (Netscape format) this browser keeps its cookies in.
    pub fn cookie_jar(&self) -> PathBuf {
        self.jar_dir.path().join("cookies.txt")
    }

    /// See [`browser_login`].
    pub fn login(&self, start_url: &str, username: &str, password: &str) -> BrowserResult {
        self.walk(start_url, Some((username, password)), None)
    }

    /// As [`Browser::login`], but does not request the first redirect target that starts with
    /// `stop_before` (e.g. the relying party's callback): it is returned as `final_url`, with
    /// the status and body of the redirect that pointed there, so a test can tamper with it or
    /// replay it through [`Browser::get`] (same cookies).
    pub fn login_until(
        &self,
        start_url: &str,
        username: &str,
        password: &str,
        stop_before: &str,
    ) -> BrowserResult {
        self.walk(start_url, Some((username, password)), Some(stop_before))
    }

    /// Follows redirects from `url` without submitting any form.
    pub fn get(&self, url: &str) -> BrowserResult {
        self.walk(url, None, None)
    }

    fn walk(
        &self,
        start_url: &str,
        mut creds: Option<(&str, &str)>,
        stop_before: Option<&str>,
    ) -> BrowserResult {
        let mut trace = Vec::new();
        let mut url = start_url.to_owned();
        let mut form: Option<String> = None;
        let mut last = (0, String::new());
        for _ in 0..self.max_steps {
            if let Some(prefix) = stop_before {
                if !trace.is_empty() && url.starts_with(prefix) {
                    return BrowserResult {
                        final_url: url,
                        status: last.0,
                        body: last.1,
                        trace,
                    };
                }
            }
            let method = if form.is_some() { "POST" } else { "GET" };
            trace.push(format!("{method} {url}"));
            let r = self.request(&url, form.as_deref());
            if r.status == 0 {
                return BrowserResult {
                    final_url: url,
                    status: 0,
                    body: r.body,
                    trace,
                };
            }
            if matches!(r.status, 301 | 302 | 303 | 307 | 308) && !r.location.is_empty() {
                // 307/308 repeat the method and body; the others become a GET.
                if !matches!(r.status, 307 | 308) {
                    form = None;
                }
                url = r.location;
                last = (r.status, r.body);
                continue;
            }
            if r.status == 200 {
                if let Some((user, pass)) = creds {
                    if let Some((action, inner)) = login_form(&r.body) {
                        creds = None;
                        form = Some(form_body(&inner, user, pass));
                        url = resolve(&url, &action);
                        continue;
                    }
                }
            }
            return BrowserResult {
                final_url: url,
                status: r.status,
                body: r.body,
                trace,
            };
        }
        panic!("browser: more than {} requests: {trace:#?}", self.max_steps);
    }

    fn request(&self, url: &str, form: Option<&str>) -> CurlResponse {
        let jar = self.jar_dir.path().join("cookies.txt");
        let body_file = self.jar_dir.path().join("body");
        let _ = std::fs::remove_file(&body_file);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--proto", "=http,https", "--max-time", "30"])
            .args(["-A", "postern-e2e-browser/1", "-H", "Accept: text/html,*/*"])
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .arg("-o")
            .arg(&body_file)
            .args(["-w", "%{http_code}\n%{redirect_url}\n"]);
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(f) = form {
            cmd.args(["--data-raw", f]);
        }
        cmd.arg("--").arg(url);
        let (ok, out, err) = crate::run(&mut cmd);
        let mut lines = out.lines();
        let status: u16 = lines.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let location = lines.next().unwrap_or("").to_owned();
        let body = std::fs::read(&body_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if !ok || status == 0 {
            return CurlResponse {
                status: 0,
                location: String::new(),
                body: format!("curl failed: {err}{body}"),
            };
        }
        CurlResponse {
            status,
            location,
            body,
        }
    }
}

struct CurlResponse {
    status: u16,
    location: String,
    body: String,
}

/// The `action` of a POST form with a password field, HTML-unescaped.
#[cfg(test)]
fn login_form_action(html: &str) -> Option<String> {
    login_form(html).map(|(action, _)| action)
}

/// Fills a login form like a person would: hidden inputs keep their values, the first text
/// (or email) input gets the username, the password input the password, and the first named
/// submit button is the one pressed.
fn form_body(inner: &str, user: &str, pass: &str) -> String {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut user_done = false;
    let lower = inner.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<input") {
        let start = from + i;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        let tag = &inner[start..end];
        from = end;
        let Some(name) = attr(tag, "name") else {
            continue;
        };
        let kind = attr(tag, "type")
            .unwrap_or_else(|| "text".into())
            .to_ascii_lowercase();
        match kind.as_str() {
            "hidden" => fields.push((name, attr(tag, "value").unwrap_or_default())),
            "password" => fields.push((name, pass.to_owned())),
            "text" | "email" if !user_done => {
                user_done = true;
                fields.push((name, user.to_owned()));
            }
            _ => {}
        }
    }
    if let Some(i) = lower.find("<button") {
        let end = lower[i..].find('>').map_or(lower.len(), |e| i + e);
        let tag = &inner[i..end];
        if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
            fields.push((n, v));
        }
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `action` and inner HTML of the first POST form with a password field.
fn login_form(html: &str) -> Option<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<form") {
        let start = from + i;
        let end = lower[start..]
            .find("</form")
            .map_or(lower.len(), |e| start + e);
        let tag_end = lower[start..].find('>').map_or(end, |e| start + e);
        let tag = &html[start..tag_end];
        let inner = &lower[tag_end..end];
        if inner.contains("type=\"password\"") || inner.contains("name=\"password\"") {
            if let Some(method) = attr(tag, "method") {
                if !method.eq_ignore_ascii_case("post") {
                    from = end;
                    continue;
                }
            }
            return Some((
                attr(tag, "action").unwrap_or_default(),
                html[tag_end..end].to_owned(),
            ));
        }
        from = end;
    }
    None
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let key = format!("{name}=");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&key) {
        let at = from + i;
        // must be a whole attribute name
        let before = lower[..at].chars().last();
        from = at + key.len();
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let rest = &tag[from..];
        let value = match rest.chars().next()? {
            q @ ('"' | '\'') => rest[1..].split(q).next()?.to_owned(),
            _ => rest
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()?
                .to_owned(),
        };
        return Some(html_unescape(&value));
    }
    None
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Resolves a form action or Location against `base` (absolute, absolute-path, or relative).
pub fn resolve(base: &str, reference: &str) -> String {
    if reference.is_empty() {
        return base.to_owned();
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.to_owned();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let origin_end = base[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(base.len(), |i| scheme_end + i);
    let origin = &base[..origin_end];
    if let Some(r) = reference.strip_prefix("//") {
        return format!("{}{r}", &base[..scheme_end]);
    }
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }
    let path_end = base[origin_end..]
        .find(['?', '#'])
        .map_or(base.len(), |i| origin_end + i);
    let path = &base[origin_end..path_end];
    if reference.starts_with('?') {
        return format!("{origin}{path}{reference}");
    }
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{reference}")
}

/// A query parameter of `url`, percent-decoded (`+` as space).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    let q = q.split('#').next().unwrap_or("");
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (pct_decode(k) == name).then(|| pct_decode(v))
    })
}

/// application/x-www-form-urlencoded / query component encoding (unreserved kept).
pub fn pct_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// base64url (padding and standard-alphabet characters tolerated); None if malformed.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The (header, payload) of a compact JWS, decoded without verifying anything.
pub fn jwt_decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = |what: &str| -> Value {
        let p = parts
            .next()
            .unwrap_or_else(|| panic!("JWT has no {what}: {token}"));
        let bytes = b64url_decode(p).unwrap_or_else(|| panic!("JWT {what} is not base64url"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT {what} is not JSON: {e}"))
    };
    let header = part("header");
    let payload = part("payload");
    (header, payload)
}

/// A PKCE pair (verifier, S256 challenge). The verifier is 43+ characters of base64url from
/// /dev/urandom; the challenge is its S256 transform.
pub fn pkce_pair() -> (String, String) {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    let verifier = b64url_encode(&raw);
    let challenge = s256(&verifier);
    (verifier, challenge)
}

/// base64url(SHA-256(input)).
pub fn s256(input: &str) -> String {
    b64url_encode(ring::digest::digest(&ring::digest::SHA256, input.as_bytes()).as_ref())
}

/// A random URL-safe string (for `state`, `nonce`).
pub fn random_token() -> String {
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut raw)
        .unwrap();
    b64url_encode(&raw)
}

/// Measures how long `f` takes (for reporting start/restart times in test output).
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_roundtrip() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0xff, 0xfe, 0x00],
        ] {
            let enc = b64url_encode(data);
            assert!(!enc.contains('='));
            assert_eq!(b64url_decode(&enc).unwrap(), data);
        }
        assert_eq!(b64url_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
        assert!(b64url_decode("a*b").is_none());
    }

    #[test]
    fn urls_and_forms() {
        assert_eq!(
            resolve("http://h:1/a/b?x=1", "/interaction/u/login"),
            "http://h:1/interaction/u/login"
        );
        assert_eq!(resolve("http://h:1/a/b?x=1", "c"), "http://h:1/a/c");
        assert_eq!(resolve("http://h:1", "c"), "http://h:1/c");
        assert_eq!(resolve("http://h:1/a", "https://o/x"), "https://o/x");
        assert_eq!(
            query_param("http://h/cb?code=a%2Bb&state=s+1&iss=x", "state").as_deref(),
            Some("s 1")
        );
        assert_eq!(
            query_param("http://h/cb?code=a%2Bb", "code").as_deref(),
            Some("a+b")
        );
        assert_eq!(
            query_param("http://h/cb?code=%zz%4", "code").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(pct_encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
        let page = r#"<form method="get" action="/search"><input name="q"></form>
            <FORM Method="POST" action="/interaction/x&amp;y/login"><input name="login"><input type="password" name="password"></FORM>"#;
        assert_eq!(
            login_form_action(page).as_deref(),
            Some("/interaction/x&y/login")
        );
        assert_eq!(login_form_action("<p>no form</p>"), None);
    }
}
