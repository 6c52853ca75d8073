//! The clinician's link on the emulated home broadband link (issue #14): the gateway, its
//! connector and the endpoint in the "cloud" namespace, the client in "home", the emulator
//! (`postern-bench wan`) between them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use postern_e2e::linkbed::Cloud;
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
    if let Some(why) = postern_e2e::wan::unavailable() {
        panic!("the link emulator cannot run here: {why}");
    }
    let mut wan = Wan::start("home");
    let mut c = Cloud::new(&wan);
    let echo = c.start_echo(&wan);
    let policy = postern_e2e::echo_policy(echo);
    c.start(&wan, &policy, "", &echo.port().to_string());
    let token = c.mint("ann@hospital.test", "radiologists");
    let (mut client, local) = c.client(&wan, "client", "echo", &token, &["--transport", "quic"]);
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
    eprintln!("address {old} -> {new}: the tunnel answered {took:?} later");
    // One session, still live: the tunnel was carried over, not reopened.
    let events = c.audit();
    let starts = events
        .iter()
        .filter(|e| e["type"] == "session.start")
        .count();
    let ends = events.iter().filter(|e| e["type"] == "session.end").count();
    assert_eq!((starts, ends), (1, 0), "{events:?}");
    client.kill();
}
