//! The clinician's link on the emulated home broadband link (issue #14): the gateway, its
//! connector and the endpoint in the "cloud" namespace, the client in "home", the emulator
//! (`postern-bench wan`) between them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use postern_e2e::linkbed::Cloud;
use postern_e2e::wait_for;
use postern_e2e::wan::Wan;

fn echoes(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    assert_eq!(got, msg);
    Ok(())
}

/// A tunnel over QUIC keeps working when the home address changes (QUIC connection
/// migration: no new handshake, no new session).
#[test]
fn a_quic_tunnel_survives_a_change_of_the_home_address() {
    address_change(false);
}

/// Over TCP (UDP blocked) the connection dies with the old address; the client sees that its
/// address has gone, without waiting for the stall limit, and resumes the tunnel on a new
/// connection: one session, suspended and resumed, answering well within the 2 s stall limit.
#[test]
fn with_udp_blocked_a_tunnel_resumes_at_once_after_a_change_of_the_home_address() {
    address_change(true);
}

fn address_change(udp_blocked: bool) {
    if let Some(why) = postern_e2e::wan::unavailable() {
        panic!("the link emulator cannot run here: {why}");
    }
    let mut wan = Wan::start("home");
    if udp_blocked {
        wan.block_udp();
    }
    let mut c = Cloud::new(&wan);
    let echo = c.start_echo(&wan);
    let policy = postern_e2e::echo_policy(echo);
    c.start(&wan, &policy, "", &echo.port().to_string());
    let token = c.mint("ann@hospital.test", "radiologists");
    let transport = if udp_blocked { "tcp" } else { "quic" };
    let (mut client, local) = c.client(&wan, "client", "echo", &token, &["--transport", transport]);
    let mut live = wan.in_home(|| TcpStream::connect(local)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echoes(&mut live, b"before the move").unwrap();

    let old = wan.home_addr;
    let new = wan.change_address();
    assert_ne!(old, new);
    let t = Instant::now();
    echoes(&mut live, b"after the move").expect("the tunnel did not survive the address change");
    let took = t.elapsed();
    eprintln!("{transport}: address {old} -> {new}: the tunnel answered {took:?} later");
    // One session, still live: the tunnel was carried over, not reopened.
    let events = c.audit();
    let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(
        (count("session.start"), count("session.end")),
        (1, 0),
        "{events:?}"
    );
    if udp_blocked {
        // A new TCP connection: the tunnel was suspended and resumed, once.
        assert_eq!(
            (count("session.suspended"), count("session.resumed")),
            (1, 1),
            "{events:?}"
        );
        assert!(
            took < Duration::from_millis(1800),
            "the tunnel answered {took:?} after the move: the client waited for the stall \
             limit instead of seeing that its address had gone"
        );
    } else {
        // Migration: the same connection, nothing to resume.
        assert_eq!(count("session.suspended"), 0, "{events:?}");
    }
    client.kill();
}

/// Two endpoints on one echo server: `echo` with the default resume grace (2 min) and
/// `echo-brief` with 10 s.
fn resume_policy(echo: std::net::SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[endpoints]]
name = "echo-brief"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo"]
max_session = "1h"

[[rules]]
id = "brief"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-brief"]
resume_grace = "10s"
"#,
        port = echo.port()
    )
}

/// The audit events of `kind` for `session`.
fn of(events: &[serde_json::Value], kind: &str, session: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["session_id"] == session)
        .cloned()
        .collect()
}

/// The id of the only session to `endpoint`.
fn session_of(events: &[serde_json::Value], endpoint: &str) -> String {
    let ids: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "session.start" && e["endpoint"]["name"] == endpoint)
        .filter_map(|e| e["session_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1, "sessions to {endpoint}: {ids:?}");
    ids[0].clone()
}

/// Whether the application's connection was closed (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A laptop that sleeps for 60 s (the link down) with idle tunnels open: the tunnel with the
/// default resume grace answers within 2 s of the link returning, in the same session, with
/// the suspension audited; the one whose rule allows 10 s ends `resume_expired` and its client
/// says why. Over QUIC, or (`udp_blocked`) over the TCP fallback.
/// The emulated home link (UDP dropped if `udp_blocked`), the cloud with [`resume_policy`],
/// a token for ann, and `postern connect echo` at home with one live connection through it.
struct Bed {
    wan: Wan,
    c: Cloud,
    token: std::path::PathBuf,
    client: postern_e2e::Proc,
    live: TcpStream,
}

fn bed(udp_blocked: bool) -> Bed {
    if let Some(why) = postern_e2e::wan::unavailable() {
        panic!("the link emulator cannot run here: {why}");
    }
    let mut wan = Wan::start("home");
    if udp_blocked {
        wan.block_udp();
    }
    let mut c = Cloud::new(&wan);
    let echo = c.start_echo(&wan);
    c.start(&wan, &resume_policy(echo), "", &echo.port().to_string());
    let token = c.mint("ann@hospital.test", "radiologists");
    let (client, local) = c.client(&wan, "client", "echo", &token, &[]);
    let mut live = wan.in_home(|| TcpStream::connect(local)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echoes(&mut live, b"before").unwrap();
    Bed {
        wan,
        c,
        token,
        client,
        live,
    }
}

fn sleep_scenario(udp_blocked: bool) {
    let Bed {
        mut wan,
        mut c,
        token,
        mut client,
        mut live,
    } = bed(udp_blocked);
    let (mut brief_client, brief_local) = c.client(&wan, "brief", "echo-brief", &token, &[]);
    let mut brief = wan.in_home(|| TcpStream::connect(brief_local)).unwrap();
    brief
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echoes(&mut brief, b"before the sleep").unwrap();
    if udp_blocked {
        assert!(
            client.log_text().contains("tunnels use TCP"),
            "the client did not fall back to TCP: {}",
            client.log_text()
        );
    }

    wan.down();
    std::thread::sleep(Duration::from_secs(60));
    wan.up();
    let t = Instant::now();
    echoes(&mut live, b"after the sleep").unwrap_or_else(|e| {
        panic!(
            "the tunnel did not resume: {e}\nclient: {}\ngateway: {}",
            client.log_text(),
            c.gateway.as_mut().unwrap().log_text()
        )
    });
    let took = t.elapsed();
    eprintln!("60 s down: the tunnel answered {took:?} after the link returned");
    assert!(
        took <= Duration::from_secs(2),
        "resumed {took:?} after the link returned (limit 2 s)\n{}",
        client.log_text()
    );
    assert!(
        client.log_text().contains("reconnecting")
            && client.log_text().contains("reconnected after"),
        "the clinician was not told: {}",
        client.log_text()
    );

    // The brief tunnel's session ended while the laptop slept; its client says why.
    assert!(
        closed_within(&mut brief, Duration::from_secs(5)),
        "the expired tunnel's local connection is still open"
    );
    let said = wait_for("the brief client's reason", Duration::from_secs(5), || {
        let log = brief_client.log_text();
        log.contains("resume grace").then_some(log)
    });
    eprintln!("brief client: {}", said.trim());

    let events = c.audit();
    let id = session_of(&events, "echo");
    let suspended = of(&events, "session.suspended", &id);
    let resumed = of(&events, "session.resumed", &id);
    assert_eq!(suspended.len(), 1, "{events:#?}");
    assert_eq!(resumed.len(), 1, "{events:#?}");
    let outage = resumed[0]["duration_ms"].as_u64().unwrap();
    assert!(
        (40_000..=62_000).contains(&outage),
        "outage as audited: {outage} ms"
    );
    assert!(of(&events, "session.end", &id).is_empty(), "{events:#?}");
    let brief_id = session_of(&events, "echo-brief");
    let end = of(&events, "session.end", &brief_id);
    assert_eq!(end.len(), 1, "{events:#?}");
    assert_eq!(end[0]["close_reason"], "resume_expired", "{:#}", end[0]);
    // Still one session, still working.
    echoes(&mut live, b"and again").unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "session.start")
            .count(),
        2
    );
    client.kill();
    brief_client.kill();
}

#[test]
fn a_sleeping_laptop_s_tunnel_resumes_over_quic_and_a_brief_grace_expires() {
    sleep_scenario(false);
}

#[test]
fn with_udp_blocked_a_sleeping_laptop_s_tunnel_resumes_over_tcp() {
    sleep_scenario(true);
}

/// A revocation while the laptop sleeps ends the session at once; when the link returns the
/// client says why and closes the application's connection.
#[test]
fn a_revocation_during_a_suspension_ends_the_session_at_once_with_a_readable_reason() {
    revocation_scenario(false);
}

#[test]
fn with_udp_blocked_a_revocation_during_a_suspension_ends_the_session_at_once() {
    revocation_scenario(true);
}

fn revocation_scenario(udp_blocked: bool) {
    let Bed {
        mut wan,
        c,
        mut client,
        mut live,
        ..
    } = bed(udp_blocked);
    let id = session_of(&c.audit(), "echo");

    wan.down();
    wait_for(
        "the gateway to suspend the session",
        Duration::from_secs(30),
        || (!of(&c.audit(), "session.suspended", &id).is_empty()).then_some(()),
    );
    let t = Instant::now();
    let (ok, out, err) = postern_e2e::run(
        std::process::Command::new(postern_e2e::bin("postern-gateway"))
            .args(["user", "revoke", "ann@hospital.test", "--config"])
            .arg(c.gateway_toml()),
    );
    assert!(ok, "{out}{err}");
    let end = wait_for(
        "session.end after the revocation",
        Duration::from_secs(5),
        || of(&c.audit(), "session.end", &id).into_iter().next(),
    );
    eprintln!(
        "suspended session ended {:?} after the revocation",
        t.elapsed()
    );
    assert_eq!(end["close_reason"], "user_revoked", "{end:#}");

    wan.up();
    assert!(
        closed_within(&mut live, Duration::from_secs(10)),
        "the application's connection is still open"
    );
    let log = wait_for("the client's reason", Duration::from_secs(5), || {
        let log = client.log_text();
        log.contains("was ended").then_some(log)
    });
    assert!(log.contains("your access was revoked"), "{log}");
    client.kill();
}
