#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Scratch: the web proxy driven by curl with a minted token as the sign-in cookie.

use std::process::Command;
use std::time::Duration;

use postern_e2e::*;

const ECHO: &str = r#"
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()} | {"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn curl(d: &Deployment, args: &[&str]) -> (String, String) {
    let port = d.client_port;
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "--cacert"])
        .arg(d.ca_file())
        .args([
            "--resolve",
            &format!("app.apps.localhost:{port}:127.0.0.1"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn cookie_of(resp: &str, name: &str) -> Option<String> {
    resp.lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

#[test]
fn web_smoke() {
    let up = free_port();
    let mut echo = Proc::spawn(
        "echo",
        Command::new("python3").args(["-c", ECHO, &up.to_string()]),
        std::env::temp_dir().join(format!("echo-{up}.log")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let policy = format!(
        "[[endpoints]]\nname = \"app\"\nsite = \"truro\"\nhost = \"127.0.0.1\"\nport = {up}\nprotocol = \"http\"\n\n[[rules]]\nid = \"staff\"\neffect = \"allow\"\ngroups = [\"staff\"]\nendpoints = [\"app\"]\nmax_session = \"1h\"\n"
    );
    let mut d = Deployment::prepare_with(&policy, "");
    let port = d.client_port;
    d.append_config(&format!(
        "[devices]\nrequired = false\norigin = \"https://localhost:{port}\"\n[web]\napps_domain = \"apps.localhost\"\n"
    ));
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", up.to_string())]);
    let tok = std::fs::read_to_string(d.mint("ann@x", "staff", "1h")).unwrap();
    let base = format!("https://app.apps.localhost:{port}");
    let (r, e) = curl(
        &d,
        &[
            "-H",
            "sec-fetch-mode: navigate",
            &format!("{base}/hello?x=1"),
        ],
    );
    println!("{r}{e}");
    let loc = header(&r, "location").unwrap().to_owned();
    let state = cookie_of(&r, "__Host-postern-state").unwrap();
    let (r, e) = curl(
        &d,
        &[
            "-H",
            &format!("cookie: __Host-postern-sso={}", tok.trim()),
            &loc,
        ],
    );
    println!("{r}{e}");
    let loc = header(&r, "location").unwrap().to_owned();
    let (r, e) = curl(
        &d,
        &["-H", &format!("cookie: __Host-postern-state={state}"), &loc],
    );
    println!("{r}{e}");
    let app = cookie_of(&r, "__Host-postern-app").unwrap();
    let (r, e) = curl(
        &d,
        &[
            "-H",
            &format!("cookie: __Host-postern-app={app}; other=1"),
            "-H",
            "postern-jwt-assertion: forged",
            "-H",
            "x-forwarded-for: 6.6.6.6",
            &format!("{base}/hello?x=1"),
        ],
    );
    println!("{r}{e}");
    assert!(r.contains("\"path\": \"/hello?x=1\""), "{r}");
    assert!(!r.contains("forged") && !r.contains("6.6.6.6"), "{r}");
    assert!(r.contains("\"cookie\": \"other=1\""), "{r}");
    let (r, _) = curl(
        &d,
        &[
            "--http1.1",
            "-H",
            &format!("cookie: __Host-postern-app={app}"),
            &format!("{base}/a/../b"),
        ],
    );
    println!("{r}");
    let (r, _) = curl(
        &d,
        &[
            "-H",
            &format!("cookie: __Host-postern-app={app}"),
            &format!("{base}/.postern/whoami"),
        ],
    );
    println!("{r}");
    std::thread::sleep(Duration::from_millis(300));
    for e in d.audit() {
        if e["type"].as_str().unwrap().starts_with("session") || e["type"] == "web.request" {
            println!("{e}");
        }
    }
    echo.kill();
}
