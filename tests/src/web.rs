//! Web applications through the gateway's identity-aware proxy (issue #16): the apps domain the
//! tests use, a plain HTTPS/1.1 client for hostile requests (rustls, SNI of an app host, the
//! gateway's CA), an upstream that echoes each request's headers back as JSON, EdDSA identity
//! assertions checked against a published key set, DICOMweb multipart bodies, and the directory
//! test artefacts (screenshots) are kept in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::{dechunk, Chromium};
use crate::world::{page_state, World};

/// The wildcard domain web applications are served under in the tests: endpoint NAME is
/// `https://NAME.apps.localhost:PORT/` (Chromium maps `*.apps.localhost` to 127.0.0.1).
pub const APPS_DOMAIN: &str = "apps.localhost";

/// gateway.toml's `[web]` table for [`APPS_DOMAIN`] (the gateway's own CA issues the wildcard).
pub fn web_config() -> String {
    format!("[web]\napps_domain = \"{APPS_DOMAIN}\"\n")
}

/// `NAME.apps.localhost`.
pub fn app_host(name: &str) -> String {
    format!("{name}.{APPS_DOMAIN}")
}

/// `https://NAME.apps.localhost:PORT` (no trailing slash).
pub fn app_origin(name: &str, port: u16) -> String {
    format!("https://{}:{port}", app_host(name))
}

/// A headless Chromium trusting `ca` that resolves the apps domain to 127.0.0.1.
pub fn app_browser(ca: &Path) -> Chromium {
    Chromium::start_mapping(Some(ca), &[&format!("*.{APPS_DOMAIN}")])
}

/// Where a test keeps what a person may want to look at afterwards (screenshots):
/// `$POSTERN_ARTEFACTS/SUB` if set, else `<target dir>/test-artefacts/SUB`. Created.
pub fn artefacts_dir(sub: &str) -> PathBuf {
    let root = match std::env::var_os("POSTERN_ARTEFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/test-binary
            let exe = std::env::current_exe().unwrap();
            exe.ancestors()
                .nth(3)
                .map(|t| t.join("test-artefacts"))
                .unwrap_or_else(|| std::env::temp_dir().join("postern-test-artefacts"))
        }
    };
    let dir = root.join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where a browser sign-in to a web application went: the pages it stopped on, in order.
#[derive(Debug, Clone, Default)]
pub struct AppSignIn {
    pub pages: Vec<String>,
    /// Whether the provider's login form was filled in.
    pub idp_form: bool,
    /// Whether the device page registered this browser's authenticator.
    pub registered: bool,
}

/// Opens `url` (a page of a web application) and plays the clinician through the gateway's
/// browser sign-in until the browser is back on `app_origin` (outside `/.postern/`): the
/// provider's login form as `user` (if it asks: a second sign-in may ride on its session),
/// and on the gateway's device page, registering this browser's authenticator as
/// `device_name` if it offers to (confirming first if it asks). A device page that ends in
/// `error` or `pending`, or an `Access denied` page, fails the test with what it shows.
pub fn sign_in_to_app(
    w: &World,
    b: &Chromium,
    url: &str,
    app_origin: &str,
    user: &str,
    pass: &str,
    device_name: &str,
) -> AppSignIn {
    b.goto(url);
    let mut seen = AppSignIn::default();
    let mut confirmed = false;
    b.wait(
        &format!("{user} signed in and back on {app_origin}"),
        Duration::from_secs(60),
        || {
            let u = b.url();
            if seen.pages.last() != Some(&u) {
                seen.pages.push(u.clone());
            }
            if u.starts_with(&w.idp.issuer) {
                if !seen.idp_form && b.find("input[name=password]").is_some() {
                    b.type_into("input[name=login]", user);
                    b.type_into("input[name=password]", pass);
                    b.click("button[type=submit]");
                    seen.idp_form = true;
                }
                return None;
            }
            if u.starts_with(app_origin) && !u.contains("/.postern/") {
                return Some(());
            }
            if is_denial_page(b) {
                panic!("{user} was denied: {}", b.describe());
            }
            if u.starts_with(&w.url()) {
                match page_state(b).as_str() {
                    "confirm" if !confirmed => {
                        confirmed = true;
                        b.click("#confirm");
                    }
                    "register" if !seen.registered => {
                        seen.registered = true;
                        b.type_into("#device-name", device_name);
                        b.click("#register");
                    }
                    s @ ("error" | "pending") => {
                        panic!("the device page ended in {s}: {}", b.describe())
                    }
                    _ => {}
                }
            }
            None
        },
    );
    seen
}

/// Whether the current page is the proxy's denial: titled "Access denied" (the title may
/// carry the product's name after it).
pub fn is_denial_page(b: &Chromium) -> bool {
    b.exec("return document.title", vec![])
        .ok()
        .and_then(|t| t.as_str().map(|t| t.starts_with("Access denied")))
        .unwrap_or(false)
}

/// The status of the page the current tab loaded (Navigation Timing's `responseStatus`), if
/// the browser reports it.
pub fn page_status(b: &Chromium) -> Option<u64> {
    b.exec(
        "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : null",
        vec![],
    )
    .ok()
    .and_then(|v| v.as_u64())
}

/// `fetch(path, init)` from the current page: `{status, type, json, text}` (json null when the
/// body is not JSON), or panics with the script error.
pub fn page_fetch(b: &Chromium, path: &str, init: Value) -> Value {
    let r = b.await_js(
        "const r = await fetch(arguments[0], arguments[1]);\n\
         const text = await r.text();\n\
         let json = null; try { json = JSON.parse(text); } catch (e) {}\n\
         return {status: r.status, type: r.headers.get('content-type'), url: r.url, json, text: text.slice(0, 4000)};",
        vec![json!(path), init],
    );
    if !r["err"].is_null() {
        panic!("fetch {path}: {}\n{}", r["err"], b.describe());
    }
    r["ok"].clone()
}

/// `fetch(path)` of binary content from the current page with `accept`: (status,
/// content-type, body bytes).
pub fn page_fetch_bytes(b: &Chromium, path: &str, accept: &str) -> (u64, String, Vec<u8>) {
    use base64::Engine;
    let r = b.await_js(
        "const r = await fetch(arguments[0], {headers: {Accept: arguments[1]}});\n\
         const buf = new Uint8Array(await r.arrayBuffer());\n\
         let bin = '';\n\
         for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));\n\
         return {status: r.status, type: r.headers.get('content-type') || '', b64: btoa(bin)};",
        vec![json!(path), json!(accept)],
    );
    let ok = &r["ok"];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            ok["b64"]
                .as_str()
                .unwrap_or_else(|| panic!("fetch {path}: {r}")),
        )
        .unwrap();
    (
        ok["status"].as_u64().unwrap_or(0),
        ok["type"].as_str().unwrap_or("").to_owned(),
        bytes,
    )
}

/// An HTTP response as a plain client sees it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `Set-Cookie` of cookie `name`, if the response sets it.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers_named("set-cookie")
            .into_iter()
            .find(|c| c.split('=').next().map(str::trim) == Some(name))
    }

    /// The value a `Set-Cookie` gives cookie `name` (empty: cleared).
    pub fn cookie_value(&self, name: &str) -> Option<String> {
        self.set_cookie(name).map(|c| {
            c.split(';')
                .next()
                .and_then(|kv| kv.split_once('='))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Status line, headers and the start of the body, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("HTTP {}\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        let text = self.text();
        s.push('\n');
        s.extend(text.chars().take(1500));
        s
    }
}

/// A plain HTTPS/1.1 client for one gateway: connects to 127.0.0.1:`port`, sends the SNI it is
/// told, and trusts only the gateway's CA. Every request is on a new connection.
#[derive(Clone)]
pub struct Https {
    config: Arc<rustls::ClientConfig>,
    pub addr: SocketAddr,
}

/// A TLS connection to the gateway, as blocking I/O.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Https {
    /// A client for the gateway on 127.0.0.1:`port` trusting the CA in `ca` (PEM).
    pub fn new(ca: &Path, port: u16) -> Https {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .unwrap_or_else(|e| panic!("{}: {e}", ca.display()))
        {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Https {
            config: Arc::new(config),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// A TLS connection with SNI `host` (handshake done), reads time out after 30 s.
    pub fn connect(&self, host: &str) -> std::io::Result<TlsStream> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// Sends `head` (the request line and headers, without the blank line: `Host` and
    /// `Connection: close` are added) and `body` to `host`; reads the whole response.
    pub fn send(&self, host: &str, head: &str, body: &[u8]) -> std::io::Result<Response> {
        let mut tls = self.connect(host)?;
        let mut req = format!(
            "{head}\r\nHost: {host}:{}\r\nConnection: close\r\n",
            self.addr.port()
        );
        if !body.is_empty() || head.starts_with("POST ") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        tls.write_all(&bytes)?;
        tls.flush()?;
        read_response(&mut tls)
    }

    /// `METHOD path` to `host` with `headers`; panics if there is no answer.
    pub fn request(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut head = format!("{method} {path} HTTP/1.1");
        for (n, v) in headers {
            head.push_str(&format!("\r\n{n}: {v}"));
        }
        self.send(host, &head, body)
            .unwrap_or_else(|e| panic!("{method} https://{host}{path}: {e}"))
    }

    /// `GET path` from `host` with `headers`.
    pub fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request(host, "GET", path, headers, b"")
    }
}

/// Reads one HTTP/1.1 response: the head, then a body by Content-Length, chunked, or to EOF
/// (a peer that closes without TLS close_notify ends the body too).
pub fn read_response(r: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let split = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: Option<usize> = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok());
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
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
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(n) = length {
        body.truncate(n);
    }
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One request as [`HeaderEcho`] received it.
#[derive(Debug, Clone)]
pub struct EchoedRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// Header names lowercased, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl EchoedRequest {
    /// Every value of header `name`.
    pub fn values(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A web application that answers every request with the request itself as JSON
/// (`{"method", "target", "headers": [[name, value], ...], "body_len"}`): what the upstream
/// of a web endpoint really receives. HTTP/1.1 with keep-alive, a thread per connection, on
/// 127.0.0.1; every request is also kept for the test ([`HeaderEcho::requests`]).
pub struct HeaderEcho {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<EchoedRequest>>>,
    stop: Arc<AtomicBool>,
}

impl HeaderEcho {
    pub fn start() -> HeaderEcho {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, seen2) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(c) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let _ = serve_echo(c, &seen);
                });
            }
        });
        HeaderEcho { addr, seen, stop }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<EchoedRequest> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HeaderEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_echo(c: TcpStream, seen: &Mutex<Vec<EchoedRequest>>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut r = std::io::BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut r, &mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if std::io::BufRead::read_line(&mut r, &mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut body_len = 0;
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            body_len = n;
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                std::io::BufRead::read_line(&mut r, &mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                body_len += n;
                if n == 0 {
                    break;
                }
            }
        }
        if header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            return websocket_echo(r, w, header("sec-websocket-key").unwrap_or_default());
        }
        let close = http10 || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let req = EchoedRequest {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body_len,
        };
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(req);
        let body = json!({
            "method": method,
            "target": target,
            "headers": headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body_len": body_len,
        })
        .to_string();
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// One WebSocket frame: (opcode, payload), unmasked. Payloads up to 64 KiB.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        r.read_exact(&mut l)?;
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        return Err(std::io::Error::other("frame too large for the test"));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((h[0] & 0x0f, payload))
}

/// One final frame of `opcode` carrying `payload` (< 126 bytes), masked as a client must.
pub fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![
        0x80 | opcode,
        payload.len() as u8 | if masked { 0x80 } else { 0 },
    ];
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    if masked {
        f.extend_from_slice(&mask);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }),
    );
    f
}

/// Answers a WebSocket upgrade, then echoes every text or binary message until a close.
fn websocket_echo(mut r: impl Read, mut w: TcpStream, key: String) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        websocket_accept(&key)
    )?;
    loop {
        let (op, payload) = read_frame(&mut r)?;
        match op {
            0x8 => {
                w.write_all(&frame(0x8, &[], false))?;
                return Ok(());
            }
            0x1 | 0x2 => w.write_all(&frame(op, &payload, false))?,
            _ => {}
        }
    }
}

/// The headers of an echoed response body ([`HeaderEcho`]'s JSON): (lowercased name, value).
pub fn echoed_headers(v: &Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Verifies a JWT against a JWK set (`{"keys": [...]}`): the header's `kid` names a key of
/// the set, the header's `alg` is the gateway's (EdDSA, an OKP Ed25519 key), and the
/// signature over `header.payload` is valid with it. Returns (header, claims); expiry and
/// audience are for the caller to check.
pub fn verify_jwt(token: &str, jwks: &Value) -> Result<(Value, Value), String> {
    use crate::oidc::b64url_decode;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("not a compact JWS: {token}"));
    };
    let header: Value = b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("header is not base64url JSON")?;
    let claims: Value = b64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("payload is not base64url JSON")?;
    let kid = header["kid"].as_str().ok_or("no kid in the header")?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| format!("kid {kid} is not in the key set {jwks}"))?;
    if header["alg"] != "EdDSA" || key["kty"] != "OKP" || key["crv"] != "Ed25519" {
        return Err(format!(
            "alg {} with key {key}: not an EdDSA/Ed25519 pair",
            header["alg"]
        ));
    }
    let public = key["x"]
        .as_str()
        .and_then(b64url_decode)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| format!("key {kid}: bad x"))?;
    let sig = b64url_decode(s).ok_or("signature is not base64url")?;
    let signed = format!("{h}.{p}");
    let alg = &ring::signature::ED25519;
    ring::signature::UnparsedPublicKey::new(alg, &public)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| format!("the signature does not verify with key {kid}"))?;
    Ok((header, claims))
}

/// One part of a multipart body: its headers (names lowercased) and its bytes.
pub type Part = (Vec<(String, String)>, Vec<u8>);

/// The parts of a `multipart/related` body (a DICOMweb WADO-RS answer): (part headers
/// lowercased, part body). `content_type` is the response's Content-Type, which names the
/// boundary.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| format!("no boundary in {content_type}"))?;
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], from: usize, needle: &[u8]| {
        hay.get(from..)
            .and_then(|h| h.windows(needle.len()).position(|w| w == needle))
            .map(|i| i + from)
    };
    let mut parts = Vec::new();
    let mut at = find(body, 0, delim.as_bytes()).ok_or("no first boundary")?;
    loop {
        let after = at + delim.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let head_start = after + 2; // CRLF after the boundary
        let head_end = find(body, head_start, b"\r\n\r\n").ok_or("a part without a head")?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]);
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let data_start = head_end + 4;
        let next = find(body, data_start, format!("\r\n{delim}").as_bytes())
            .ok_or("a part without a closing boundary")?;
        parts.push((headers, body[data_start..next].to_vec()));
        at = next + 2;
    }
    Ok(parts)
}

/// Cookies in a Netscape cookie jar file (curl's `-c`): (domain, name, value); HttpOnly
/// cookies (`#HttpOnly_` lines) included.
pub fn jar_cookies(jar: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(jar)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("#HttpOnly_").unwrap_or(l);
            if l.starts_with('#') || l.trim().is_empty() {
                return None;
            }
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 7).then(|| (f[0].to_owned(), f[5].to_owned(), f[6].to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_split_into_parts() {
        let body = b"--b1\r\nContent-Type: application/dicom\r\nContent-Length: 4\r\n\r\nDI\r\n\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nxyz\r\n--b1--\r\n";
        let parts = multipart_parts(
            "multipart/related; type=\"application/dicom\"; boundary=b1",
            body,
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"DI\r\n");
        assert_eq!(
            parts[0].0[0],
            ("content-type".into(), "application/dicom".into())
        );
        assert_eq!(parts[1].1, b"xyz");
        assert!(multipart_parts("application/dicom", body).is_err());
    }

    #[test]
    fn signed_tokens_verify_against_their_key_set_only() {
        use crate::oidc::b64url_encode;
        let rng = ring::rand::SystemRandom::new();
        // An EdDSA token verifies; tampered, forged, or claiming another alg, it does not.
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e1",
            "x": b64url_encode(ed.public_key().as_ref())}]});
        let signed = format!(
            "{}.{}",
            b64url_encode(br#"{"alg":"EdDSA","kid":"e1"}"#),
            b64url_encode(br#"{"sub":"a"}"#)
        );
        let token = format!(
            "{signed}.{}",
            b64url_encode(ed.sign(signed.as_bytes()).as_ref())
        );
        assert_eq!(verify_jwt(&token, &jwks).unwrap().1["sub"], "a");
        let lying = token.replacen(
            &b64url_encode(br#"{"alg":"EdDSA","kid":"e1"}"#),
            &b64url_encode(br#"{"alg":"ES256","kid":"e1"}"#),
            1,
        );
        assert!(verify_jwt(&lying, &jwks).is_err());
        let tampered = token.replacen(
            &b64url_encode(br#"{"sub":"a"}"#),
            &b64url_encode(br#"{"sub":"b"}"#),
            1,
        );
        assert!(verify_jwt(&tampered, &jwks).is_err());
        assert!(verify_jwt("forged", &jwks).is_err());
    }

    #[test]
    fn responses_are_read_by_length_chunks_or_to_the_end() {
        let r = read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=; Max-Age=0\r\n\r\nokEXTRA"[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(r.cookie_value("a").as_deref(), Some("1"));
        assert_eq!(r.cookie_value("b").as_deref(), Some(""));
        assert_eq!(r.cookie_value("c"), None);
        let r = read_response(
            &mut &b"HTTP/1.1 431 Too Large\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (431, "abc"));
        let r = read_response(&mut &b"HTTP/1.0 400 Bad\r\n\r\nto the end"[..]).unwrap();
        assert_eq!(r.text(), "to the end");
        assert!(read_response(&mut &b"HTTP/1.1 200"[..]).is_err());
    }

    /// The echo upstream answers each request of a keep-alive connection with that request.
    #[test]
    fn header_echo_reports_what_it_received() {
        let echo = HeaderEcho::start();
        let mut s = TcpStream::connect(echo.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nX-One: 2\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["target"], "/a?q=1");
        assert_eq!(
            echoed_headers(&v)
                .iter()
                .filter(|(n, _)| n == "x-one")
                .count(),
            2
        );
        s.write_all(
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.json()["body_len"], 3);
        let seen = echo.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].method, "POST");
        assert_eq!(seen[0].values("x-one"), ["1", "2"]);
    }
}
