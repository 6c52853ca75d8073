//! The demo's web application in the browser, as a person uses it: the printed address sends a
//! browser without a session to the gateway's sign-in (303 to `/auth/web`); signing in at the
//! development identity provider (curl filling in its form, as tests/src/oidc.rs does for
//! `postern login`) ends on the demo viewer's page, which shows who signed in; lee gets the
//! gateway's "Access denied" page; sign-out ends the application.
//!
//! Runs the built `postern-demo`, which needs `postern-connector`, `postern` and
//! `postern-audit` beside it (`cargo build --workspace --bins`, as scripts/test.sh does first),
//! and curl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Demo {
    child: Child,
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port P with P, P+1 and P+2 free (TCP and UDP): the demo's client, connector and identity
/// provider ports.
fn free_ports() -> u16 {
    for _ in 0..100 {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p > 65000 {
            continue;
        }
        let free = (p..=p + 2).all(|q| {
            TcpListener::bind(("127.0.0.1", q)).is_ok() && UdpSocket::bind(("127.0.0.1", q)).is_ok()
        });
        if free {
            return p;
        }
    }
    panic!("no three free ports in a row");
}

/// Starts the demo and returns it with its printed banner.
fn start_demo() -> (Demo, u16, String) {
    let port = free_ports();
    let dir = std::env::temp_dir().join(format!("postern-demo-web-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern-demo"))
        .arg("--dir")
        .arg(&dir)
        .args(["--port", &port.to_string()])
        .env("POSTERN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting postern-demo");
    let stdout = child.stdout.take().unwrap();
    let demo = Demo { child, dir };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            if line.contains("postern logout") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo printed no instructions within 60 s (are postern-connector, postern and postern-audit built beside postern-demo?)");
    (demo, port, banner)
}

/// A curl "browser" with its own cookie jar; the application host resolves to loopback and the
/// demo's CA is trusted, as a person's browser would after importing it.
struct Browser {
    jar: PathBuf,
    ca: PathBuf,
    resolve: String,
}

struct Answer {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    fn new(dir: &Path, name: &str, port: u16) -> Browser {
        Browser {
            jar: dir.join(format!("{name}.cookies")),
            ca: dir.join("gateway-ca.pem"),
            resolve: format!("demo-web.apps.localhost:{port}:127.0.0.1"),
        }
    }

    fn request(&self, url: &str, accept: &str, form: Option<&str>, origin: Option<&str>) -> Answer {
        let body = self.jar.with_extension("body");
        let _ = std::fs::remove_file(&body);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--proto", "=http,https"])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["--resolve", &self.resolve])
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(["-H", &format!("Accept: {accept}")])
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}\n%{redirect_url}\n"]);
        if let Some(f) = form {
            cmd.args(["--data-raw", f]);
        }
        if let Some(o) = origin {
            cmd.args(["-H", &format!("Origin: {o}")]);
        }
        let out = cmd.arg("--").arg(url).output().expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let status = lines.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(
            status != 0,
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Answer {
            status,
            location: lines.next().unwrap_or("").to_owned(),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
        }
    }

    /// Opens `url` as a page, follows redirects and signs in at the identity provider's form
    /// as `user`; returns the last answer and the URLs visited.
    fn open_and_sign_in(&self, url: &str, user: &str) -> (Answer, Vec<String>) {
        let mut url = url.to_owned();
        let mut form: Option<String> = None;
        let mut trace = Vec::new();
        for _ in 0..20 {
            trace.push(url.clone());
            let a = self.request(&url, "text/html", form.take().as_deref(), None);
            if matches!(a.status, 301 | 302 | 303 | 307 | 308) {
                url = a.location;
                continue;
            }
            if a.status == 200 && a.body.contains("name=\"request_id\"") {
                let rid = value_of(&a.body, "request_id").expect("the IdP form's request_id");
                form = Some(format!(
                    "request_id={rid}&username={user}&password={user}&action=login"
                ));
                let origin = url.split("/authorize").next().unwrap().to_owned();
                url = format!("{origin}/login");
                continue;
            }
            return (a, trace);
        }
        panic!("more than 20 requests: {trace:#?}");
    }
}

/// The value of the hidden input `name` in an HTML form.
fn value_of(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let v = rest.split("value=\"").nth(1)?.split('"').next()?;
    Some(v.replace("&amp;", "&"))
}

#[test]
fn the_demo_serves_its_web_viewer_in_the_browser_through_the_proxy() {
    let (demo, port, banner) = start_demo();
    let app = format!("https://demo-web.apps.localhost:{port}/");
    assert!(
        banner.lines().any(|l| l.trim() == app),
        "the banner does not print {app}:\n{banner}"
    );
    assert!(banner.contains("sign in as alice"), "{banner}");

    // A page load without a session goes to the gateway's sign-in; a script gets 401.
    let alice = Browser::new(&demo.dir, "alice", port);
    let first = alice.request(&app, "text/html", None, None);
    assert_eq!(first.status, 303, "{}", first.body);
    assert!(
        first
            .location
            .starts_with(&format!("https://127.0.0.1:{port}/auth/web?app=demo-web&")),
        "{}",
        first.location
    );
    let script =
        Browser::new(&demo.dir, "script", port).request(&app, "application/json", None, None);
    assert_eq!(script.status, 401, "{}", script.body);
    assert!(script.body.contains("signed_out"), "{}", script.body);

    // Signing in ends on the viewer's page, which shows who the proxy said signed in.
    let (page, trace) = alice.open_and_sign_in(&app, "alice");
    assert_eq!(page.status, 200, "{trace:#?}\n{}", page.body);
    assert!(
        page.body.contains("Hello from the demo web viewer"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<td id=\"sub\">alice@demo.nhs.uk</td>")
            && page.body.contains("<td id=\"name\">Dr Alice Demo</td>")
            && page.body.contains("<td id=\"groups\">radiologists</td>"),
        "{}",
        page.body
    );
    assert!(
        trace.iter().any(|u| u.contains("/.postern/callback?code=")),
        "{trace:#?}"
    );
    let whoami = alice.request(
        &format!("{app}.postern/whoami"),
        "application/json",
        None,
        None,
    );
    assert!(
        whoami.body.contains("\"user\":\"alice@demo.nhs.uk\""),
        "{}",
        whoami.body
    );

    // lee is refused with the policy's reason.
    let lee = Browser::new(&demo.dir, "lee", port);
    let (denied, trace) = lee.open_and_sign_in(&app, "lee");
    assert_eq!(denied.status, 403, "{trace:#?}\n{}", denied.body);
    assert!(denied.body.contains("Access denied"), "{}", denied.body);
    assert!(denied.body.contains("lee@demo.nhs.uk"), "{}", denied.body);

    // Sign-out (the page's form, with its CSRF token) ends the application.
    let form = alice.request(&format!("{app}.postern/logout"), "text/html", None, None);
    let csrf = value_of(&form.body, "csrf").expect("the sign-out form's token");
    let origin = app.trim_end_matches('/');
    let out = alice.request(
        &format!("{app}.postern/logout"),
        "text/html",
        Some(&format!("csrf={csrf}")),
        Some(origin),
    );
    assert!(out.body.contains("You are signed out"), "{}", out.body);
    let after = alice.request(&app, "text/html", None, None);
    assert_eq!(after.status, 303, "{}", after.body);

    // The audit log has the application session and its requests (session.end is written
    // as the sign-out ends the session, a moment after the answer).
    let audit_has = |kind: &str| {
        std::fs::read_dir(demo.dir.join("gateway/audit"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .any(|text| text.contains(&format!("\"{kind}\"")))
    };
    for kind in [
        "session.start",
        "web.request",
        "session.denied",
        "session.end",
    ] {
        let mut tries = 0;
        while !audit_has(kind) {
            tries += 1;
            assert!(tries < 50, "no {kind} in the audit log");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
