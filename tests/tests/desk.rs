//! The clinician's shift with `postern up`: every tunnel on its fixed port from the policy (or
//! the profile), `postern status`, `postern down`; sign-in renewal that moves live sessions
//! onto the new token (`session.renewed`) so a connection outlives the first token; the end
//! at expiry when nobody renews, said in status; what `postern endpoints` shows (ports,
//! connector online, time windows, break-glass). Real gateway, connector and CLI binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::{bin, echo_roundtrip, free_port, run, wait_for, Deployment, Echo};
use serde_json::Value;

/// A clinician's config directory holding a minted sign-in for `user`, and an agent that is
/// stopped (`postern down`, else killed) when the test ends.
struct Clinician {
    dir: tempfile::TempDir,
}

impl Clinician {
    fn new(d: &Deployment, user: &str, ttl: &str) -> Clinician {
        let dir = tempfile::tempdir().unwrap();
        let c = Clinician { dir };
        c.sign_in(d, user, ttl);
        std::fs::write(
            c.path().join("config.json"),
            serde_json::json!({"gateway": d.url(), "ca_file": d.ca_file()}).to_string(),
        )
        .unwrap();
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new token for `user` in the token file (what `postern login` leaves).
    fn sign_in(&self, d: &Deployment, user: &str, ttl: &str) -> String {
        self.sign_in_as(d, user, "radiologists", ttl)
    }

    fn sign_in_as(&self, d: &Deployment, user: &str, groups: &str, ttl: &str) -> String {
        let minted = d.mint(user, groups, ttl);
        let token = std::fs::read_to_string(minted).unwrap();
        std::fs::write(self.path().join("token"), &token).unwrap();
        token
    }

    fn postern(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new(bin("postern"))
            .args(args)
            .env("POSTERN_CONFIG_DIR", self.path())
            .env("POSTERN_NOTIFY", "0"))
    }

    fn status(&self) -> Value {
        let (ok, out, err) = self.postern(&["status", "--json"]);
        assert!(ok, "postern status: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    fn tunnel(&self, endpoint: &str) -> Value {
        let s = self.status();
        s["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["endpoint"] == endpoint)
            .cloned()
            .unwrap_or_else(|| panic!("no tunnel {endpoint} in {s:#}"))
    }

    fn agent_pid(&self) -> Option<u32> {
        let f = std::fs::read(self.path().join("agent.json")).ok()?;
        serde_json::from_slice::<Value>(&f).ok()?["pid"]
            .as_u64()
            .map(|p| p as u32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Clinician {
    fn drop(&mut self) {
        if let Some(pid) = self.agent_pid() {
            let _ = self.postern(&["down"]);
            let _ = Command::new("kill").arg(pid.to_string()).output();
        }
    }
}

/// A connection through a tunnel that stays open: a line out, the same line back.
struct Live(TcpStream);

impl Live {
    fn open(addr: SocketAddr) -> Live {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Live(s)
    }

    fn echo(&mut self, msg: &[u8]) -> Result<(), String> {
        self.0.write_all(msg).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; msg.len()];
        self.0.read_exact(&mut back).map_err(|e| e.to_string())?;
        if back == msg {
            Ok(())
        } else {
            Err("different bytes came back".into())
        }
    }
}

fn policy(echo: SocketAddr, ports: &[u16; 4]) -> String {
    // A window that opens in two hours (UTC), so it is closed now and listed "from".
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = |s: u64| format!("{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60);
    let window = format!("Mon-Sun {}-{}", minute(now + 7200), minute(now + 10800));
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {p}
protocol = "tcp"
local_port = {a}

[[endpoints]]
name = "echo-viewer"
site = "truro"
host = "127.0.0.1"
port = {p}
protocol = "https"
local_port = {b}

[[endpoints]]
name = "echo-evening"
site = "truro"
host = "127.0.0.1"
port = {p}
protocol = "tcp"
local_port = {c}

[[endpoints]]
name = "echo-glass"
site = "truro"
host = "127.0.0.1"
port = {p}
protocol = "tcp"
local_port = {d}

[[endpoints]]
name = "echo-adhoc"
site = "truro"
host = "127.0.0.1"
port = {p}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo", "echo-viewer", "echo-adhoc"]
max_session = "1h"

[[rules]]
id = "evening"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-evening"]
zone = "UTC"
windows = ["{window}"]

[[rules]]
id = "break-glass"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-glass"]
require_justification = true
"#,
        p = echo.port(),
        a = ports[0],
        b = ports[1],
        c = ports[2],
        d = ports[3],
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn up_opens_every_tunnel_on_its_fixed_port_status_shows_them_and_down_closes_them() {
    let echo = Echo::start();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let d = Deployment::start(
        &policy(echo.addr, &ports),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    let c = Clinician::new(&d, "alice", "1h");

    // What the clinician may reach, with the fixed ports, the connector online, the window.
    let (ok, out, err) = c.postern(&["endpoints"]);
    assert!(ok, "{err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
            .to_owned()
    };
    assert!(
        row("echo").contains(&ports[0].to_string()) && row("echo").contains("online"),
        "{out}"
    );
    assert!(row("echo-evening").contains("from "), "{out}");
    assert!(row("echo-glass").contains("with --reason"), "{out}");
    assert!(row("echo-adhoc").contains(" - "), "{out}");

    // One command opens all of them, in the background.
    let t0 = Instant::now();
    let (ok, out, err) = c.postern(&["up"]);
    assert!(ok, "postern up failed: {out}\n{err}\n{}", c.log());
    eprintln!("postern up returned in {:?}:\n{out}", t0.elapsed());
    assert!(out.contains("runs in the background"), "{out}");
    let pid = c.agent_pid().expect("agent.json written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.path().join("agent.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "agent.json holds the control secret");
    }

    // The fixed ports carry tunnels; the evening one listens and refuses with the reason.
    assert_eq!(echo_roundtrip(local(ports[0]), b"dicom").unwrap(), b"dicom");
    assert_eq!(
        echo_roundtrip(local(ports[1]), b"viewer").unwrap(),
        b"viewer"
    );
    let mut live = Live::open(local(ports[0]));
    live.echo(b"still here").unwrap();
    let evening = c.tunnel("echo-evening");
    assert_eq!(evening["state"], "opens later", "{evening}");
    assert!(postern_e2e::tunnel_refused(local(ports[2])));
    let glass = c.tunnel("echo-glass");
    assert_eq!(glass["state"], "needs a reason", "{glass}");
    assert!(
        glass["detail"].as_str().unwrap().contains("--reason"),
        "{glass}"
    );
    assert!(
        c.status()["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["endpoint"] != "echo-adhoc"),
        "an endpoint without local_port is not opened"
    );

    let t = wait_for("byte counts", Duration::from_secs(5), || {
        let t = c.tunnel("echo");
        (t["bytes_down"].as_u64() >= Some(15)).then_some(t)
    });
    assert_eq!(t["state"], "listening", "{t}");
    assert_eq!(t["local"], format!("127.0.0.1:{}", ports[0]), "{t}");
    assert_eq!(t["live"], 1, "{t}");
    assert!(t["connections"].as_u64() >= Some(2), "{t}");
    assert_eq!(
        t["bytes_up"], t["bytes_down"],
        "an echo sends back what it got: {t}"
    );
    assert!(t["ends_at"].as_u64().is_some(), "{t}");
    let (ok, text, _) = c.postern(&["status"]);
    assert!(ok);
    assert!(
        text.contains("alice: signed in until") && text.contains("TIME LEFT"),
        "{text}"
    );

    // Running it again says so and changes nothing.
    let (ok, out, _) = c.postern(&["up"]);
    assert!(ok && out.contains("already running"), "{out}");
    assert_eq!(c.agent_pid(), Some(pid));

    // Down: the tunnels end (the gateway is told), the ports are free, the agent is gone.
    let (ok, out, err) = c.postern(&["down"]);
    assert!(ok, "{err}");
    assert!(out.contains("stopped"), "{out}");
    assert!(c.agent_pid().is_none(), "agent.json removed");
    let end = d.wait_event("session.end", |e| {
        e["endpoint"]["name"] == "echo" && e["bytes_up"].as_u64() >= Some(10)
    });
    assert_eq!(end["close_reason"], "client_closed", "{end}");
    assert!(live.echo(b"gone").is_err(), "the live connection ended");
    TcpListener::bind(local(ports[0])).expect("the fixed port is free again");
    let (ok, out, _) = c.postern(&["status"]);
    assert!(ok && out.contains("none open"), "{out}");
}

#[test]
fn a_profile_chooses_the_tunnels_and_a_taken_port_names_its_holder() {
    let echo = Echo::start();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let d = Deployment::start(
        &policy(echo.addr, &ports),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    let c = Clinician::new(&d, "alice", "1h");
    let mine = free_port();
    std::fs::write(
        c.path().join("profile.toml"),
        format!(
            "[[tunnel]]\nendpoint = \"echo-adhoc\"\nlocal_port = {mine}\n\n[[tunnel]]\nendpoint = \"echo\"\n\n[[tunnel]]\nendpoint = \"echo-viewr\"\n"
        ),
    )
    .unwrap();
    // Someone (this test) already listens on the policy's port for `echo`.
    let squatter = TcpListener::bind(local(ports[0])).unwrap();

    let (ok, out, err) = c.postern(&["up"]);
    assert!(ok, "postern up failed: {out}\n{err}\n{}", c.log());
    assert_eq!(echo_roundtrip(local(mine), b"adhoc").unwrap(), b"adhoc");
    let taken = c.tunnel("echo");
    assert_eq!(taken["state"], "failed", "{taken}");
    let detail = taken["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("port {} is already in use by", ports[0]))
            && detail.contains(&format!("pid {}", std::process::id())),
        "{detail}"
    );
    let typo = c.tunnel("echo-viewr");
    assert!(
        typo["detail"]
            .as_str()
            .unwrap()
            .contains("Did you mean 'echo-viewer'?"),
        "{typo}"
    );
    // Only the profile's endpoints.
    assert_eq!(c.status()["tunnels"].as_array().unwrap().len(), 3);
    drop(squatter);

    // Signing out stops the tunnels too.
    let (ok, out, err) = c.postern(&["logout"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("signed out") && out.contains("stopped"),
        "{out}"
    );
    wait_for("the agent to stop", Duration::from_secs(10), || {
        (c.agent_pid().is_none() && TcpListener::bind(local(mine)).is_ok()).then_some(())
    });
}

#[test]
fn a_new_sign_in_carries_live_connections_past_the_old_tokens_expiry() {
    let echo = Echo::start();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let d = Deployment::start(
        &policy(echo.addr, &ports),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    // A short first sign-in; renewal is left to the token file here (a `postern login` in
    // another terminal), the browser renewal is in signin_renewal.rs.
    let c = Clinician::new(&d, "alice", "25s");
    std::fs::write(
        c.path().join("profile.toml"),
        "renew_before = \"1s\"\nopen_browser = false\n",
    )
    .unwrap();
    let (ok, out, err) = c.postern(&["up"]);
    assert!(ok, "postern up failed: {out}\n{err}\n{}", c.log());
    let expires = c.status()["expires_at"].as_u64().unwrap();
    let mut live = Live::open(local(ports[0]));
    live.echo(b"before").unwrap();
    let start = d.wait_event("session.start", |e| e["endpoint"]["name"] == "echo");
    let session = start["session_id"].as_str().unwrap().to_owned();

    // Another user's sign-in in the same token file does not take alice's sessions.
    c.sign_in(&d, "bob", "1h");
    let notice = wait_for(
        "the refused renewal noticed",
        Duration::from_secs(10),
        || {
            c.status()["notices"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .find(|n| n.contains("were not renewed"))
                .map(str::to_owned)
        },
    );
    assert!(notice.contains("another user or device"), "{notice}");
    assert!(d.events("session.renewed").is_empty());

    // Alice signs in again: the live session moves onto the new token.
    c.sign_in(&d, "alice", "1h");
    let renewed = d.wait_event("session.renewed", |e| e["session_id"] == session.as_str());
    assert!(
        renewed["detail"].as_str().unwrap().contains("replaced by"),
        "{renewed}"
    );
    assert_eq!(renewed["user"], "alice", "{renewed}");
    let s = wait_for("the new sign-in in status", Duration::from_secs(10), || {
        let s = c.status();
        (s["expires_at"].as_u64() > Some(expires + 600)).then_some(s)
    });
    assert_eq!(s["user"], "alice", "{s:#}");

    // Past the first token's expiry the same connection carries on.
    while unix_now() < expires + 3 {
        live.echo(b"across the renewal").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    live.echo(b"after").unwrap();
    assert!(
        d.events("session.end")
            .iter()
            .all(|e| e["session_id"] != session.as_str()),
        "the session did not end at the first token's expiry"
    );

    // A renewal is a new authorization: a sign-in whose groups the policy no longer allows
    // ends the session, audited, and the clinician is told which and why.
    c.sign_in_as(&d, "alice", "porters", "1h");
    let end = d.wait_event("session.end", |e| e["session_id"] == session.as_str());
    assert_eq!(end["close_reason"], "access_withdrawn", "{end}");
    let term = d.wait_event("session.terminated", |e| {
        e["session_id"] == session.as_str()
    });
    assert!(
        term["detail"]
            .as_str()
            .unwrap()
            .starts_with("sign-in renewed:"),
        "{term}"
    );
    let notice = wait_for("the ended session noticed", Duration::from_secs(10), || {
        c.status()["notices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .find(|n| n.contains("1 ended: echo ("))
            .map(str::to_owned)
    });
    assert!(notice.contains("0 connection(s) carried on"), "{notice}");
    assert!(live.echo(b"gone").is_err());
}

#[test]
fn without_renewal_the_tunnels_end_at_expiry_and_status_says_so() {
    let echo = Echo::start();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let d = Deployment::start(
        &policy(echo.addr, &ports),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    let c = Clinician::new(&d, "alice", "12s");
    // Renewal starts at once; nobody completes it (no browser here): the clinician is told,
    // the URL is in status, and at expiry the tunnels end.
    std::fs::write(
        c.path().join("profile.toml"),
        "renew_before = \"11s\"\nopen_browser = false\n",
    )
    .unwrap();
    let (ok, out, err) = c.postern(&["up"]);
    assert!(ok, "postern up failed: {out}\n{err}\n{}", c.log());
    let mut live = Live::open(local(ports[0]));
    live.echo(b"hello").unwrap();
    let url = wait_for("the renewal URL in status", Duration::from_secs(10), || {
        c.status()["renewal_url"].as_str().map(str::to_owned)
    });
    assert!(
        url.starts_with(&format!("{}/auth/login?", d.url())),
        "{url}"
    );
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "echo");
    assert_eq!(end["close_reason"], "token_expired", "{end}");
    let s = wait_for("signed out in status", Duration::from_secs(10), || {
        let s = c.status();
        s["signin"]
            .as_str()
            .is_some_and(|l| l.starts_with("signed out"))
            .then_some(s)
    });
    let t = s["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["endpoint"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(t["state"], "signed out", "{t}");
    let notices: Vec<&str> = s["notices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("sign in again in your browser")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("your connections are closed")),
        "{notices:?}"
    );
    // Signing in again reopens them, same ports.
    c.sign_in(&d, "alice", "1h");
    wait_for("signed in again", Duration::from_secs(10), || {
        c.status()["signin"]
            .as_str()
            .is_some_and(|l| l.starts_with("signed in until"))
            .then_some(())
    });
    assert_eq!(echo_roundtrip(local(ports[0]), b"again").unwrap(), b"again");
}

/// The systemd user unit `postern up --install-autostart` writes is valid for systemd.
#[test]
fn the_autostart_unit_is_valid_for_systemd() {
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let (ok, out, err) = run(Command::new(bin("postern"))
        .args(["up", "--remove-autostart"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env("POSTERN_CONFIG_DIR", &cfg));
    assert!(ok && out.contains("was not set"), "{out}{err}");
    let unit: PathBuf = home.path().join(".config/systemd/user/postern-up.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    let exe = bin("postern");
    std::fs::write(
        &unit,
        postern_client::autostart::systemd_unit(&exe, Some(&cfg.display().to_string())),
    )
    .unwrap();
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&unit)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime));
    assert!(ok, "systemd-analyze verify: {out}{err}");
    let (ok, out, err) = run(Command::new(bin("postern"))
        .args(["up", "--remove-autostart"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env("POSTERN_CONFIG_DIR", &cfg));
    assert!(ok && out.contains("removed"), "{out}{err}");
    assert!(!unit.exists());
}
