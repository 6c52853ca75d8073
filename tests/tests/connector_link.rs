//! The gateway–connector link's transports (issue #14, item 5): QUIC by default, HTTP/2 over
//! TLS when UDP does not get through (or when configured), the same tunnels and refusals
//! either way, and a crashed connector or gateway noticed within seconds over QUIC too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use postern_e2e::*;

fn allow(port: u16) -> Vec<Allow> {
    vec![("127.0.0.1/32", port.to_string())]
}

/// Puts `link_transport = "…"` in connector `name`'s configuration (top-level keys come before
/// the `[[allow]]` tables).
fn set_transport(d: &Deployment, name: &str, transport: &str) {
    let path = d.path(&format!("{name}.toml"));
    let t = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("link_transport = \"{transport}\"\n{t}")).unwrap();
}

/// The `connector.connected` events of connector `id`, oldest first.
fn connected(d: &Deployment, id: &str) -> Vec<serde_json::Value> {
    d.events("connector.connected")
        .into_iter()
        .filter(|e| e["connector"]["id"] == id)
        .collect()
}

/// A gateway whose connector listener does (or, with `udp` false, does not) take QUIC.
fn gateway(echo: &Echo, udp: bool) -> Deployment {
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    if !udp {
        let path = d.gateway_toml();
        let t = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            t.replacen("[listen]\n", "[listen]\nconnector_quic = false\n", 1),
        )
        .unwrap();
    }
    d.start_gateway();
    d
}

/// Enrols connector `name` with `transport` ("" for the default), starts it and returns its
/// process, id and how long until the gateway audited its first link.
fn connector(d: &Deployment, name: &str, port: u16, transport: &str) -> (Proc, String, Duration) {
    let id = d.enroll_connector(name, "truro");
    d.write_connector_toml(name, &allow(port), None);
    if !transport.is_empty() {
        set_transport(d, name, transport);
    }
    let t0 = Instant::now();
    let p = d.spawn_connector(name);
    wait_for(
        &format!("{name} to connect"),
        Duration::from_secs(20),
        || (!connected(d, &id).is_empty()).then_some(()),
    );
    (p, id, t0.elapsed())
}

fn tunnel_works(d: &Deployment, what: &str) {
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &token).unwrap();
    let msg = format!("over {what}");
    assert_eq!(
        echo_roundtrip(local, msg.as_bytes()).unwrap(),
        msg.as_bytes()
    );
}

#[test]
fn links_use_quic_by_default_and_http2_when_udp_does_not_get_through_or_when_configured() {
    let echo = Echo::start();

    // Default (`auto`) with UDP open: QUIC, both links.
    let d = gateway(&echo, true);
    let (_p, id, took) = connector(&d, "conn", echo.addr.port(), "");
    wait_for("both links", Duration::from_secs(10), || {
        (connected(&d, &id).len() >= 2).then_some(())
    });
    for e in connected(&d, &id) {
        assert_eq!(e["detail"], "link over quic", "{e}");
    }
    assert!(took < Duration::from_secs(3), "QUIC link took {took:?}");
    tunnel_works(&d, "QUIC");
    drop(d);

    // `auto` with the gateway's connector UDP closed: HTTP/2 after the 3 s QUIC attempt.
    let d = gateway(&echo, false);
    let (p, id, took) = connector(&d, "conn", echo.addr.port(), "");
    let e = &connected(&d, &id)[0];
    assert_eq!(e["detail"], "link over http2", "{e}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "fallback took {took:?}"
    );
    let log = p.log_text();
    assert!(
        log.contains("QUIC link failed; using HTTP/2 over TCP"),
        "{log}"
    );
    tunnel_works(&d, "HTTP/2 (fallback)");

    // `http2` configured: HTTP/2 at once, no QUIC attempt.
    let (p2, id2, took) = connector(&d, "conn-h2", echo.addr.port(), "http2");
    assert_eq!(connected(&d, &id2)[0]["detail"], "link over http2");
    assert!(took < Duration::from_secs(2), "HTTP/2 link took {took:?}");
    assert!(!p2.log_text().contains("QUIC"), "{}", p2.log_text());

    // `quic` configured and UDP closed: no link, and the connector says why.
    let (ok, out, err) = d.enroll("conn-q", &d.enroll_token("truro", "10m"));
    assert!(ok, "{out}{err}");
    d.write_connector_toml("conn-q", &allow(echo.addr.port()), None);
    set_transport(&d, "conn-q", "quic");
    let before = d.count("connector.connected");
    let p3 = d.spawn_connector("conn-q");
    let log = wait_for(
        "the QUIC failure in the log",
        Duration::from_secs(20),
        || {
            let l = p3.log_text();
            l.contains("no QUIC handshake within").then_some(l)
        },
    );
    assert!(log.contains("gateway connection failed"), "{log}");
    assert_eq!(d.count("connector.connected"), before, "a link came up");
}

#[test]
fn a_bad_link_transport_is_a_clear_configuration_error() {
    let d = Deployment::prepare("");
    d.write_connector_toml("conn", &allow(1), None);
    set_transport(&d, "conn", "udp");
    let (ok, _out, err) = run(std::process::Command::new(bin("postern-connector"))
        .args(["check", "--config"])
        .arg(d.path("conn.toml")));
    assert!(!ok);
    assert!(
        err.contains("link_transport: expected \"auto\", \"quic\" or \"http2\", found \"udp\""),
        "{err}"
    );
}

/// Over QUIC nothing resets a dead peer's connection as TCP does; the link's keep-alive and
/// idle timeout, the stateless reset of a restarted gateway and the request that finds a
/// connector silent stand in for it.
#[test]
fn over_quic_a_killed_connector_or_gateway_is_noticed_within_seconds() {
    let echo = Echo::start();
    let mut d = gateway(&echo, true);
    let (mut p, id, _) = connector(&d, "conn", echo.addr.port(), "quic");
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &token).unwrap();
    let mut live = std::net::TcpStream::connect(local).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    live.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).unwrap();

    // The connector is killed and started again at once. A new session works at once: the
    // request that finds one of the dead links silent marks it and goes on another link of
    // the same connector. The old session ends connector_lost within the idle timeout.
    let t0 = Instant::now();
    p.kill();
    let before = connected(&d, &id).len();
    let p2 = d.spawn_connector("conn");
    wait_for("the restarted connector", Duration::from_secs(10), || {
        (connected(&d, &id).len() > before).then_some(())
    });
    tunnel_works(&d, "QUIC after a connector restart");
    let first = d.events("session.start")[0].clone();
    let end = wait_for("the old session to end", Duration::from_secs(15), || {
        d.events("session.end")
            .into_iter()
            .find(|e| e["session_id"] == first["session_id"])
    });
    let took = t0.elapsed();
    assert_eq!(end["close_reason"], "connector_lost", "{end}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(live.read(&mut b).map(|n| n == 0).unwrap_or(true));

    // The gateway is killed and restarted: the connector learns at once (stateless reset)
    // and redials, well within the idle timeout it would otherwise wait.
    d.connector = Some(p2);
    let before = connected(&d, &id).len();
    d.gateway.as_mut().unwrap().kill();
    d.start_gateway();
    let t0 = Instant::now();
    wait_for("the links to come back", Duration::from_secs(10), || {
        (connected(&d, &id).len() >= before + 2).then_some(())
    });
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "relinking took {took:?}");
    tunnel_works(&d, "QUIC after a gateway restart");
}
