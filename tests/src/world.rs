//! A gateway that signs clinicians in against a real OpenID provider, and the browser's side
//! of a sign-in (the provider's login form, the gateway's device page with its WebAuthn
//! ceremony): shared by the Chromium tests (`device_browser.rs`, `web.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::browser::Chromium;
use crate::oidc::{OidcProvider, OidcUser};
use crate::{bin, run, wait_for, Deployment, Echo, Proc};

pub const CLIENT_ID: &str = "postern-gateway";
pub const CLIENT_SECRET: &str = "s3cret-for-browser-tests";

/// Endpoints `echo` (plain allow for radiologists) plus whatever `extra` adds.
pub fn policy(echo: std::net::SocketAddr, extra: &str) -> String {
    crate::echo_policy(echo) + extra
}

/// alice and bob, both radiologists with multi-factor sign-in.
pub fn users() -> Vec<OidcUser> {
    vec![
        OidcUser::new("alice", "alice-pw", &["radiologists"], true),
        OidcUser::new("bob", "bob-pw", &["radiologists"], true),
    ]
}

/// A gateway reachable as `https://localhost:PORT`, signing in against a real provider, with a
/// connector to an echo service (and `ports`).
pub struct World {
    pub d: Deployment,
    pub idp: OidcProvider,
    pub echo: Echo,
    pub work: tempfile::TempDir,
}

#[allow(clippy::new_without_default)] // a whole deployment, not a default value
impl World {
    /// Device trust off: the sign-in of before.
    pub fn new() -> World {
        World::with("", "[devices]\nrequired = false\n", &[])
    }

    /// `extra_policy` is appended to the policy, `extra_config` to gateway.toml (after
    /// `[oidc]`); the connector may also reach `ports` on 127.0.0.1.
    pub fn with(extra_policy: &str, extra_config: &str, ports: &[u16]) -> World {
        World::with_ttl(extra_policy, extra_config, ports, "8h")
    }

    /// As [`World::with`], with session tokens lasting `session_ttl`.
    pub fn with_ttl(
        extra_policy: &str,
        extra_config: &str,
        ports: &[u16],
        session_ttl: &str,
    ) -> World {
        World::build(extra_policy, extra_config, ports, session_ttl, &users())
    }

    /// As [`World::with_ttl`], with the provider knowing `users` (instead of [`users`]).
    pub fn build(
        extra_policy: &str,
        extra_config: &str,
        ports: &[u16],
        session_ttl: &str,
        users: &[OidcUser],
    ) -> World {
        let work = tempfile::tempdir().unwrap();
        let echo = Echo::start();
        let mut d = Deployment::prepare(&policy(echo.addr, extra_policy));
        let callback = format!("{}/auth/callback", base(&d));
        let idp = OidcProvider::start(
            &work.path().join("idp"),
            CLIENT_ID,
            CLIENT_SECRET,
            std::slice::from_ref(&callback),
            users,
        );
        std::fs::write(d.path("oidc-secret"), CLIENT_SECRET).unwrap();
        d.append_config(&format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{callback}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nuser_claim = \"email\"\ninsecure_http_issuer = true\nsession_ttl = \"{session_ttl}\"\n{extra_config}",
            idp.issuer
        ));
        d.start_gateway();
        let mut allowed: Vec<String> = vec![echo.addr.port().to_string()];
        allowed.extend(ports.iter().map(u16::to_string));
        let d = d.with_connector(&[("127.0.0.1/32", allowed.join(","))]);
        World { d, idp, echo, work }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        base(&self.d)
    }

    pub fn browser(&self) -> Chromium {
        Chromium::start(Some(&self.d.ca_file()))
    }

    pub fn config_dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Starts `postern login --no-browser` and returns it with the sign-in URL it printed.
    pub fn start_login(&self, cfg: &Path) -> (Proc, String) {
        self.start_login_with(cfg, None)
    }

    /// As [`World::start_login`], reporting the posture in `posture` (a PostureReport JSON).
    pub fn start_login_with(&self, cfg: &Path, posture: Option<&Value>) -> (Proc, String) {
        let n = crate::free_port();
        let log = self.work.path().join(format!("login-{n}.log"));
        let mut cmd = Command::new(bin("postern"));
        cmd.args([
            "login",
            &self.url(),
            "--no-browser",
            "--timeout",
            "45",
            "--ca-file",
        ])
        .arg(self.d.ca_file())
        .env("POSTERN_CONFIG_DIR", cfg);
        if let Some(p) = posture {
            let f = self.work.path().join(format!("posture-{n}.json"));
            std::fs::write(&f, p.to_string()).unwrap();
            cmd.arg("--posture-file").arg(f);
        }
        let p = Proc::spawn("login", &mut cmd, log);
        let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
            p.log_text()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("https://"))
                .map(str::to_owned)
        });
        (p, url)
    }

    /// `postern-gateway ARGS --config gateway.toml`.
    pub fn admin(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new(bin("postern-gateway"))
            .args(args)
            .arg("--config")
            .arg(self.d.gateway_toml()))
    }

    /// `device list --json`.
    pub fn devices(&self) -> Vec<Value> {
        let (ok, out, err) = self.admin(&["device", "list", "--json"]);
        assert!(ok, "device list failed: {out}{err}");
        serde_json::from_str::<Vec<Value>>(&out)
            .unwrap_or_else(|e| panic!("device list --json is not a JSON array ({e}): {out}"))
    }

    /// Waits for the `device.assertion_failed` event with `code`; returns it.
    pub fn assertion_failed(&self, code: &str) -> Value {
        self.d.wait_event("device.assertion_failed", |e| {
            failure_code(e).as_deref() == Some(code)
        })
    }
}

pub fn base(d: &Deployment) -> String {
    format!("https://localhost:{}", d.client_port)
}

/// The CODE of a `device.assertion_failed` event (detail "REF: CODE: …").
pub fn failure_code(e: &Value) -> Option<String> {
    e["detail"]
        .as_str()
        .and_then(|d| d.split(": ").nth(1))
        .map(str::to_owned)
}

/// The device id an audit event names (`device` as a string or `{id, …}`).
pub fn device_of(e: &Value) -> String {
    match &e["device"] {
        Value::String(s) => s.clone(),
        v => v["id"].as_str().unwrap_or("").to_owned(),
    }
}

/// Fills the provider's login form in the browser (waits up to 15 s for it).
pub fn idp_login(b: &Chromium, idp: &OidcProvider, user: &str, pass: &str) {
    b.wait_url(&idp.issuer, Duration::from_secs(15));
    b.type_into("input[name=login]", user);
    b.type_into("input[name=password]", pass);
    b.click("button[type=submit]");
}

/// `data-state` of the device page's body ("" elsewhere).
pub fn page_state(b: &Chromium) -> String {
    b.exec(
        "return (document.body && document.body.dataset && document.body.dataset.state) || ''",
        vec![],
    )
    .ok()
    .and_then(|v| v.as_str().map(str::to_owned))
    .unwrap_or_default()
}

/// Waits until the device page is in one of `states`; returns it.
pub fn wait_state(b: &Chromium, states: &[&str], limit: Duration) -> String {
    b.wait(&format!("device page state in {states:?}"), limit, || {
        let s = page_state(b);
        states.contains(&s.as_str()).then_some(s)
    })
}

/// Opens `url` (a sign-in start) and plays the user at the IdP (see [`to_device_page`]); on the
/// device page of a CLI sign-in, checks that it shows the confirmation code the sign-in URL
/// carries and confirms it, as the person would after comparing it with their terminal.
pub fn through_idp(w: &World, b: &Chromium, url: &str, user: &str, pass: &str) {
    to_device_page(w, b, url, user, pass);
    if page_state(b) == "confirm" {
        let code = url
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("cli_code="))
            .unwrap_or_else(|| panic!("a CLI sign-in URL without cli_code: {url}"));
        assert_eq!(
            b.element_text("#code").as_deref(),
            Some(code),
            "{}",
            b.describe()
        );
        b.click("#confirm");
    }
}

/// The confirmation code `postern login` printed (`confirmation code: XXXX-XXXX`).
pub fn printed_code(p: &Proc) -> String {
    wait_for("the confirmation code", Duration::from_secs(10), || {
        p.log_text().lines().find_map(|l| {
            l.trim()
                .strip_prefix("confirmation code: ")
                .map(|c| c.trim().to_owned())
        })
    })
}

/// Opens `url` (a sign-in start) and plays the user at the IdP: fills its login form if it asks
/// (a second sign-in rides on the IdP session), until the browser is back at the gateway's device
/// page or at the CLI's loopback page.
pub fn to_device_page(w: &World, b: &Chromium, url: &str, user: &str, pass: &str) {
    b.goto(url);
    let mut filled = false;
    b.wait(
        "the IdP, then the device page",
        Duration::from_secs(30),
        || {
            let u = b.url();
            if u.starts_with(&w.idp.issuer) {
                if !filled && b.find("input[name=password]").is_some() {
                    b.type_into("input[name=login]", user);
                    b.type_into("input[name=password]", pass);
                    b.click("button[type=submit]");
                    filled = true;
                }
                return None;
            }
            (u.starts_with(&w.url()) && !page_state(b).is_empty()
                || u.starts_with("http://127.0.0.1:"))
            .then_some(())
        },
    );
}

/// On the device page: names the device and registers it; returns the page state after
/// (`pending`, `error`, or `done` — with automatic approval the page goes on to sign in, and
/// a CLI sign-in ends on the CLI's loopback page, reported as `done` too).
pub fn register(b: &Chromium, name: &str) -> String {
    wait_state(b, &["register"], Duration::from_secs(15));
    b.type_into("#device-name", name);
    b.click("#register");
    b.wait("registration to finish", Duration::from_secs(20), || {
        if b.url().starts_with("http://127.0.0.1:") {
            return Some("done".to_owned());
        }
        let s = page_state(b);
        ["pending", "done", "error"]
            .contains(&s.as_str())
            .then_some(s)
    })
}

/// Waits for `p` to exit; returns (success, its output).
pub fn finish(p: &mut Proc, limit: Duration) -> (bool, String) {
    let ok = wait_for("postern login to finish", limit, || {
        (!p.is_running()).then(|| p.child.wait().map(|s| s.success()).unwrap_or(false))
    });
    (ok, p.log_text())
}
