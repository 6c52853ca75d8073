//! RDP end to end (issue #15): a real RDP server as the reporting PC behind a connector, a real
//! RDP client on the clinician's side, pixels checked on the client's screen.
//!
//! * The reporting PC: Debian's `xrdp` + `xorgxrdp` on its own loopback port, logging in a
//!   local test user whose session shows two windows of known colours
//!   ([`postern_e2e::rdp`]).
//! * The tunnel: gateway, connector and policy (endpoint `reporting-pc`, `protocol = "rdp"`,
//!   `egress = "display"`, `local_port`).
//! * The clinician's client: `postern rdp reporting-pc` launches FreeRDP's `xfreerdp`
//!   (freerdp2-x11) under `Xvfb` — over a tunnel of its own in the first case, over the one
//!   `postern up` keeps on the endpoint's fixed port in the second ([`launch_client`]).
//!
//! Each case takes a screenshot of the Xvfb display and requires the session's desktop there
//! (compared with the blank display before, which fails the same check), sesman's log lines for
//! the test user's session, and, after the client disconnects, the gateway's `session.end`
//! with bytes both ways. The first case also logs in with a wrong password first: xrdp and
//! sesman log the refusal and the screenshot check fails on what the client then shows (xrdp's
//! "login failed" box). The second asks for all monitors (`/multimon`) on a two-monitor Xvfb:
//! FreeRDP lists two monitors, sesman starts a session two screens wide, and the session's two
//! windows land one on each monitor.
//!
//! The cases share sesman's fixed port: they take a machine-wide lock in turn
//! ([`RdpServer::start`]). Set `POSTERN_RDP_SHOTS=DIR` to keep the screenshots as PNG files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_client::rdp::{xfreerdp_args, Monitors, RdpOptions};
use postern_e2e::bin;
use postern_e2e::rdp::{desktop_drawn, keep_screenshot, RdpServer, Screenshot, Xvfb, LEFT, RIGHT};
use postern_e2e::{wait_for, Deployment, Proc};
use serde_json::Value;

const ENDPOINT: &str = "reporting-pc";
/// Screen size of each of the client's monitors.
const W: u32 = 1280;
const H: u32 = 800;

fn policy(rdp_port: u16, local_port: u16) -> String {
    format!(
        r#"
[[endpoints]]
name = "{ENDPOINT}"
site = "truro"
host = "127.0.0.1"
port = {rdp_port}
protocol = "rdp"
egress = "display"
local_port = {local_port}

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["{ENDPOINT}"]
max_session = "1h"
"#
    )
}

/// The reporting PC behind a connector, and the clinician's sign-in.
struct Rig {
    server: RdpServer,
    d: Deployment,
    /// The clinician's config directory (sign-in, `postern up`'s files).
    cfg: std::path::PathBuf,
    token: std::path::PathBuf,
    /// The endpoint's fixed port (`local_port`).
    addr: SocketAddr,
}

fn rig() -> Rig {
    let server = RdpServer::start();
    let local_port = postern_e2e::free_port();
    let d = Deployment::start(
        &policy(server.port, local_port),
        &[("127.0.0.1/32", server.port.to_string())],
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let cfg = d.path("clinician");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::copy(&token, cfg.join("token")).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        serde_json::json!({"gateway": d.url(), "ca_file": d.ca_file()}).to_string(),
    )
    .unwrap();
    Rig {
        server,
        d,
        cfg,
        token,
        addr: SocketAddr::from(([127, 0, 0, 1], local_port)),
    }
}

impl Rig {
    fn postern(&self, args: &[&str]) -> (bool, String, String) {
        postern_e2e::run(
            Command::new(bin("postern"))
                .args(args)
                .env("POSTERN_CONFIG_DIR", &self.cfg)
                .env("POSTERN_NOTIFY", "0"),
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.postern(&["down"]);
    }
}

/// How `postern rdp` reaches the endpoint.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// A tunnel of its own, with the token given on the command line.
    Own,
    /// The tunnel `postern up` keeps on the fixed port.
    Agent,
}

/// `postern rdp ENDPOINT` with `opts` as its options, on `x`, under a fresh HOME (FreeRDP's
/// certificate store, `/cert:tofu`). It launches `xfreerdp` with [`xfreerdp_args`]. The test
/// user's password is the test's own addition: an extra client argument after `--`
/// (`/from-stdin:force`) makes FreeRDP read it from the stdin `postern rdp` passes on, never
/// from the command line; `postern rdp` itself never handles a password.
fn launch_client(
    r: &Rig,
    x: &Xvfb,
    opts: &RdpOptions,
    via: Via,
    name: &str,
    password: &str,
) -> Proc {
    let home = r.d.path(&format!("home-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    let mut args: Vec<String> = vec![
        "rdp".into(),
        ENDPOINT.into(),
        "--monitors".into(),
        opts.monitors.to_string(),
    ];
    if let Some(u) = &opts.username {
        args.extend(["--user".into(), u.clone()]);
    }
    if via == Via::Own {
        args.extend([
            "--gateway".into(),
            r.d.url(),
            "--ca-file".into(),
            r.d.ca_file().display().to_string(),
            "--token-file".into(),
            r.token.display().to_string(),
        ]);
    }
    // What it will run: the planned xfreerdp command, with no password in it.
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let (ok, out, err) = postern_e2e::run(
        Command::new(bin("postern"))
            .args(&dry)
            .env("POSTERN_CONFIG_DIR", &r.cfg),
    );
    assert!(ok, "postern rdp --dry-run: {out}{err}");
    let addr = if via == Via::Agent {
        r.addr.to_string()
    } else {
        "127.0.0.1:".into()
    };
    assert!(
        out.contains("xfreerdp") && out.contains(&format!("/v:{addr}")) && !out.contains("/p:"),
        "{out}"
    );
    args.extend(["--".into(), "/from-stdin:force".into()]);
    let log = r.d.path(&format!("xfreerdp-{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(bin("postern"))
        .args(&args)
        .env("POSTERN_CONFIG_DIR", &r.cfg)
        .env("DISPLAY", &x.display)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::piped())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("starting xfreerdp");
    // FreeRDP asks for what /u: did not give: the password.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    Proc {
        child,
        log,
        name: format!("postern rdp ({name})"),
    }
}

/// Waits until `check` passes on a screenshot of `x` (the client drew the remote desktop),
/// failing early if the client exits. Returns the screenshot and what `check` measured.
fn wait_drawn(
    client: &mut Proc,
    x: &Xvfb,
    r: &Rig,
    check: impl Fn(&Screenshot) -> Result<String, String>,
) -> (Screenshot, String) {
    let start = Instant::now();
    loop {
        assert!(
            client.is_running(),
            "{} exited: {}\n{}",
            client.name,
            client.log_text(),
            r.server.log()
        );
        let shot = x.screenshot();
        let last = match check(&shot) {
            Ok(m) => return (shot, m),
            Err(e) => e,
        };
        if start.elapsed() > Duration::from_secs(60) {
            let kept = keep_screenshot(&shot, "not-drawn");
            panic!(
                "the remote desktop was not drawn within 60 s: {last} (screenshot: {kept:?})\n{}\n{}",
                client.log_text(),
                r.server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Disconnects the client and returns the `session.end` of its connection, checked for more
/// than `min_up` bytes up and `min_down` down. FreeRDP exits on SIGTERM without RDP's
/// disconnect message (as when a laptop's lid closes): its TCP connection closes, and the
/// tunnel with it.
fn disconnect(r: &Rig, client: &mut Proc, min_up: u64, min_down: u64) -> Value {
    let started = r.d.count("session.start");
    assert!(started >= 1, "no session.start for the RDP connection");
    // (Killed by the signal: no exit code.)
    client.terminate(Duration::from_secs(10));
    assert!(!client.is_running(), "postern rdp did not exit on SIGTERM");
    // Every session started so far ends (one per TCP connection); this client's is the last
    // started.
    let ends = wait_for(
        "session.end for every RDP connection",
        Duration::from_secs(20),
        || {
            let ends: Vec<Value> =
                r.d.events("session.end")
                    .into_iter()
                    .filter(|e| e["endpoint"]["name"] == ENDPOINT)
                    .collect();
            (ends.len() >= started).then_some(ends)
        },
    );
    let last = r.d.events("session.start").pop().unwrap();
    let end = ends
        .into_iter()
        .find(|e| e["session_id"] == last["session_id"])
        .unwrap_or_else(|| panic!("no session.end for {last}"));
    assert_eq!(end["endpoint"]["protocol"], "rdp", "{end}");
    assert_eq!(end["user"], "alice@truro.nhs.uk", "{end}");
    let (up, down) = (
        end["bytes_up"].as_u64().unwrap(),
        end["bytes_down"].as_u64().unwrap(),
    );
    assert!(
        up > min_up,
        "bytes up {up}, expected more than {min_up}: {end}"
    );
    assert!(
        down > min_down,
        "bytes down {down}, expected more than {min_down}: {end}"
    );
    eprintln!(
        "{}: session.end with {up} bytes up, {down} bytes down",
        client.name
    );
    end
}

/// One monitor (`--monitors primary`): a wrong password is refused (and the screenshot check
/// says the desktop is not there); with the right one, the session's first window fills most
/// of the client's screen and its second, at x = 1330, is off screen.
#[test]
fn reporting_pc_desktop_through_the_tunnel() {
    let t0 = Instant::now();
    let r = rig();
    let x = Xvfb::start(1, W, H, r.d.dir.path());
    let blank = x.screenshot();
    assert_eq!((blank.width, blank.height), (W, H));
    // The check fails on the display as it is before the client starts.
    let e = desktop_drawn(&blank, &blank, LEFT).unwrap_err();
    assert!(e.contains("mostly as before the client"), "{e}");

    let mut opts = RdpOptions::new(ENDPOINT);
    opts.monitors = Monitors::Primary;
    opts.username = Some(r.server.user.name.clone());

    // A wrong password: refused by the reporting PC, which says so in its logs; the client
    // shows xrdp's "login failed" box, which is not the desktop.
    let mut wrong = launch_client(
        &r,
        &x,
        &opts,
        Via::Own,
        "wrong-password",
        "not-the-password",
    );
    let refused = wait_for("the login to be refused", Duration::from_secs(30), || {
        assert!(wrong.is_running(), "xfreerdp exited: {}", wrong.log_text());
        r.server.login_failed_lines()
    });
    assert!(r.server.session_lines().is_none(), "{}", r.server.log());
    // The client shows what xrdp drew (its connection log box): something, not the desktop.
    let shot = wait_for("the client to draw", Duration::from_secs(10), || {
        let s = x.screenshot();
        (s.share_changed(&blank) > 0.05).then_some(s)
    });
    keep_screenshot(&shot, "wrong-password");
    let e = desktop_drawn(&shot, &blank, LEFT).unwrap_err();
    eprintln!("wrong password: {refused:#?}\nscreenshot check: {e}");
    disconnect(&r, &mut wrong, 1_000, 4_000);

    let mut client = launch_client(&r, &x, &opts, Via::Own, "primary", &r.server.user.password);
    let (shot, measures) = wait_drawn(&mut client, &x, &r, |s| desktop_drawn(s, &blank, LEFT));
    keep_screenshot(&shot, "primary");
    let right = shot.share_near(RIGHT);
    assert!(
        right < 0.001,
        "the second window ({:.1}% of the screen) shows on a single monitor",
        right * 100.0
    );
    let lines = r.server.wait_session(Duration::from_secs(10));
    assert!(
        lines[1].contains(&format!("width {W}, height {H}")),
        "{lines:#?}"
    );
    eprintln!("desktop drawn: {measures}\nsesman: {lines:#?}");

    disconnect(&r, &mut client, 2_000, 20_000);
    eprintln!("case took {:?}", t0.elapsed());
}

/// All monitors (`/multimon`, the default) on a two-monitor Xvfb: FreeRDP lists both, the
/// reporting PC's session is two monitors wide, and its windows are drawn one on each.
#[test]
fn reporting_pc_on_two_monitors() {
    let t0 = Instant::now();
    let r = rig();
    let x = Xvfb::start(2, W, H, r.d.dir.path());
    let blank = x.screenshot();
    assert_eq!((blank.width, blank.height), (2 * W, H));
    assert_eq!(
        x.freerdp_monitors(),
        [format!("{W}x{H}+0+0"), format!("{W}x{H}+{W}+0")],
        "xfreerdp /monitor-list"
    );

    let halves = |s: &Screenshot| (s.crop(0, 0, W, H), s.crop(W, 0, W, H));
    let (blank_left, blank_right) = halves(&blank);
    let mut opts = RdpOptions::new(ENDPOINT);
    opts.username = Some(r.server.user.name.clone());
    assert_eq!(opts.monitors, Monitors::All);
    assert!(xfreerdp_args(r.addr, &opts).contains(&"/multimon".to_owned()));
    // Through the tunnel `postern up` keeps on the endpoint's fixed port.
    let (ok, out, err) = r.postern(&["up"]);
    assert!(ok, "postern up: {out}{err}");
    assert!(out.contains(&r.addr.to_string()), "{out}");
    let mut client = launch_client(
        &r,
        &x,
        &opts,
        Via::Agent,
        "multimon",
        &r.server.user.password,
    );
    let (shot, measures) = wait_drawn(&mut client, &x, &r, |s| {
        let (left, right) = halves(s);
        let l = desktop_drawn(&left, &blank_left, LEFT).map_err(|e| format!("monitor 1: {e}"))?;
        let r =
            desktop_drawn(&right, &blank_right, RIGHT).map_err(|e| format!("monitor 2: {e}"))?;
        Ok(format!("monitor 1: {l}; monitor 2: {r}"))
    });
    keep_screenshot(&shot, "multimon");
    let lines = r.server.wait_session(Duration::from_secs(10));
    assert!(
        lines[1].contains(&format!("width {}, height {H}", 2 * W)),
        "{lines:#?}"
    );
    eprintln!("desktop drawn: {measures}\nsesman: {lines:#?}");

    disconnect(&r, &mut client, 2_000, 40_000);
    eprintln!("case took {:?}", t0.elapsed());
}
