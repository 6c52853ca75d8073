//! The clinician's CLI refuses to expose a tunnel by accident: the real `postern` binary, a real
//! gateway and connector on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::{bin, echo_policy, echo_roundtrip, run, wait_for, Deployment, Echo, Proc};

fn connect_args(d: &Deployment, token: &std::path::Path, listen: &str) -> Command {
    let mut c = Command::new(bin("postern"));
    c.args(["connect", "echo", "--listen", listen, "--gateway", &d.url()])
        .arg("--ca-file")
        .arg(d.ca_file())
        .arg("--token-file")
        .arg(token);
    c
}

/// `postern connect --listen 0.0.0.0:…` would let anyone on the clinician's network use the
/// tunnel: refused (exit code 2, a message naming the address and the way out), for IPv4 and
/// IPv6 wildcard and non-loopback addresses alike; with `--allow-remote` it listens, warns, and
/// the tunnel works.
#[test]
fn connect_refuses_a_non_loopback_listen_address_unless_allowed() {
    let echo = Echo::start();
    let d = Deployment::start(
        &echo_policy(echo.addr),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    let token = d.mint("alice@hospital.test", "radiologists", "1h");

    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.10:0"] {
        let mut p = Proc::spawn(
            "connect-refused",
            &mut connect_args(&d, &token, listen),
            d.path(&format!("refused-{}.log", postern_e2e::free_port())),
        );
        let code = wait_for(
            &format!("postern connect --listen {listen} to exit"),
            Duration::from_secs(15),
            || {
                let text = p.log_text();
                if text.contains("ready: listening") {
                    panic!("--listen {listen} was listened on: {text}");
                }
                p.child.try_wait().unwrap().map(|s| s.code())
            },
        );
        let err = p.log_text();
        assert_eq!(
            code,
            Some(2),
            "--listen {listen} must be refused with exit code 2: {err}"
        );
        assert!(
            err.contains("not a loopback address") && err.contains("--allow-remote"),
            "the refusal of {listen} must say why and how to override: {err}"
        );
    }
    // Nothing was asked of the gateway for a refused command line.
    assert_eq!(d.count("session.start"), 0);

    // Loopback is fine, with no warning.
    let (mut p, addr) = d.connect("echo", &token).unwrap();
    assert!(addr.ip().is_loopback());
    assert!(!p.log_text().contains("WARNING"), "{}", p.log_text());
    p.kill();

    // --allow-remote: it listens on every address, warns, and the tunnel works.
    let mut p = Proc::spawn(
        "connect-remote",
        connect_args(&d, &token, "0.0.0.0:0").arg("--allow-remote"),
        d.path("connect-remote.log"),
    );
    let start = Instant::now();
    let addr: SocketAddr = loop {
        let text = p.log_text();
        if let Some(a) = text.lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        }) {
            break a;
        }
        assert!(
            p.is_running(),
            "postern connect --allow-remote exited: {text}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never ready: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(addr.ip().is_unspecified(), "{addr}");
    let text = p.log_text();
    assert!(
        text.contains("WARNING") && text.contains("anyone who can reach"),
        "--allow-remote must warn: {text}"
    );
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_eq!(echo_roundtrip(local, b"remote").unwrap(), b"remote");
    p.kill();

    // The flag is documented in the help.
    let (ok, out, _) = run(Command::new(bin("postern")).args(["connect", "--help"]));
    assert!(ok && out.contains("--allow-remote"), "{out}");
}
