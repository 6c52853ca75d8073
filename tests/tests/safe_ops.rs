//! Safe operations (issue #12), found by following the docs as written: a revoked connector is
//! told so and stops instead of retrying forever, and `postern-gateway check` works from
//! monitoring on a running gateway, refuses two listeners on one address and lists every
//! mistake in the configuration file at once. Real binaries on loopback, as in `ops.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::{bin, free_port, run, Deployment, Echo};

fn policy(echo: SocketAddr) -> String {
    format!(
        "[[endpoints]]\nname = \"echo\"\nsite = \"truro\"\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"tcp\"\n\n[[rules]]\nid = \"radiologists\"\neffect = \"allow\"\ngroups = [\"radiologists\"]\nendpoints = [\"echo\"]\n",
        echo.port()
    )
}

fn gateway_check(config: &Path, extra: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(config)
        .args(extra))
}

fn connector_check(config: &Path) -> (bool, String, String) {
    run(Command::new(bin("postern-connector"))
        .args(["check", "--config"])
        .arg(config))
}

/// `connector.refused` events for connector `id` that say it is revoked.
fn revoked_refusals(d: &Deployment, id: &str) -> usize {
    d.events("connector.refused")
        .iter()
        .filter(|e| e["connector"]["id"] == id)
        .filter(|e| e["detail"].as_str().unwrap_or("").contains("revoked"))
        .count()
}

#[test]
fn a_revoked_connector_is_told_stops_with_its_exit_code_and_check_reports_it() {
    let echo = Echo::start();
    let mut d = Deployment::start(
        &policy(echo.addr),
        &[("127.0.0.1/32", echo.addr.port().to_string())],
    );
    let id = d.connector_id.clone();
    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["connector", "revoke", &id, "--config"])
        .arg(d.gateway_toml()));
    assert!(ok, "{out}{err}");

    // The connector learns it is revoked on its next dial and exits with the documented code.
    let started = Instant::now();
    let code = loop {
        let conn = d.connector.as_mut().unwrap();
        if let Some(status) = conn.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the revoked connector still runs after 20 s; its log:\n{}\ngateway log:\n{}",
            conn.log_text(),
            d.gateway.as_ref().unwrap().log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = d.connector.as_ref().unwrap().log_text();
    assert_eq!(
        code,
        Some(3),
        "exit code of a revoked connector; log:\n{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        log.contains("this connector was revoked at 20") && log.contains("enrol again"),
        "{log}"
    );

    // The gateway audited the refusal once, not once per attempt: the connector (2 links,
    // redialling every 0.5 s at most) would have made dozens by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        revoked_refusals(&d, &id),
        1,
        "{:#?}",
        d.events("connector.refused")
    );

    // `postern-connector check` says so, and exits non-zero.
    let (ok, out, err) = connector_check(&d.path("conn.toml"));
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("error: gateway 127.0.0.1:")
            && err.contains("this connector was revoked at 20"),
        "{err}"
    );
    assert!(err.contains("enrol again"), "{err}");
    assert_eq!(revoked_refusals(&d, &id), 1);
}

#[test]
fn gateway_check_passes_against_the_running_gateway_and_fails_on_a_foreign_port() {
    let echo = Echo::start();
    let admin = free_port();
    let mut d = Deployment::prepare_with(
        &policy(echo.addr),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    d.start_gateway();
    // From monitoring, against the running gateway's own configuration.
    let (ok, out, err) = gateway_check(&d.gateway_toml(), &[]);
    assert!(ok, "check failed on the running gateway:\n{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        err.contains("listen.clients 127.0.0.1:") && err.contains("in use by this gateway"),
        "{err}"
    );
    // `--running` skips the listen addresses altogether.
    let (ok, out, err) = gateway_check(&d.gateway_toml(), &["--running"]);
    assert!(ok, "{out}{err}");
    assert!(!err.contains("listen.clients"), "{err}");

    // A port held by something else is still an error, named.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap().port();
    let text = std::fs::read_to_string(d.gateway_toml()).unwrap();
    let foreign = d.path("foreign.toml");
    std::fs::write(
        &foreign,
        text.replace(&format!(":{}\"", d.client_port), &format!(":{taken}\"")),
    )
    .unwrap();
    let (ok, out, err) = gateway_check(&foreign, &[]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains(&format!("error: listen.clients 127.0.0.1:{taken}")),
        "{err}"
    );
    assert!(err.contains("1 problem(s)"), "{err}");
    drop(other);
}

#[test]
fn gateway_check_refuses_two_listeners_on_one_address() {
    let echo = Echo::start();
    let d = Deployment::prepare(&policy(echo.addr));
    let text = std::fs::read_to_string(d.gateway_toml()).unwrap();
    let same = text.replace(
        &format!("connectors = \"127.0.0.1:{}\"", d.connector_port),
        &format!("connectors = \"127.0.0.1:{}\"", d.client_port),
    );
    assert_ne!(same, text);
    std::fs::write(
        d.gateway_toml(),
        format!("{same}[admin]\nlisten = \"0.0.0.0:{}\"\n", d.client_port),
    )
    .unwrap();
    let (ok, out, err) = gateway_check(&d.gateway_toml(), &[]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains(&format!(
            "listen.connectors: 127.0.0.1:{} is also listen.clients",
            d.client_port
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "admin.listen: 0.0.0.0:{} overlaps listen.clients",
            d.client_port
        )),
        "{err}"
    );
    // The gateway refuses to start on it too.
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["run", "--config"])
        .arg(d.gateway_toml()));
    assert!(!ok);
    assert!(err.contains("is also listen.clients"), "{err}");
}

#[test]
fn gateway_check_reports_every_mistake_in_the_file_at_once() {
    let echo = Echo::start();
    let d = Deployment::prepare(&policy(echo.addr));
    let text = std::fs::read_to_string(d.gateway_toml()).unwrap();
    // Three mistakes in three places: an unknown top-level key, a value of the wrong type and
    // an unknown key in a section.
    let bad = text
        .replace(
            "node_id = \"gw-test\"\n",
            "node_id = \"gw-test\"\nlisten_port = 8443\n",
        )
        .replace("handshake_timeout = \"2s\"", "handshake_timeout = 2")
        + "[tls]\nserver_name = [\"gw.example\"]\n";
    std::fs::write(d.gateway_toml(), bad).unwrap();
    let (ok, out, err) = gateway_check(&d.gateway_toml(), &[]);
    assert!(!ok, "{out}{err}");
    let file = d.gateway_toml().display().to_string();
    for needle in [
        format!("{file}:2:1: listen_port: unknown field `listen_port`"),
        format!(
            "{file}:9:21: limits.handshake_timeout: invalid type: integer `2`, expected a string"
        ),
        format!("{file}:13:1: tls.server_name: unknown field `server_name`"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("3 problem(s)"), "{err}");
}
