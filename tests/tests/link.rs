//! The clinician's link on the emulated home broadband link (issue #14): the gateway, its
//! connector and the endpoint in the "cloud" namespace, the client in "home", the emulator
//! (`postern-bench wan`) between them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::wan::Wan;
use postern_e2e::{bin, free_port, run, wait_for, Proc};

/// A gateway, an enrolled connector and an echo server in the cloud namespace.
struct Cloud {
    dir: tempfile::TempDir,
    client_port: u16,
    _procs: Vec<Proc>,
}

fn cloud(wan: &Wan) -> Cloud {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    let echo_port = free_port();
    let mut echo = Proc::spawn(
        "echo",
        wan.cloud(bin("postern-bench")).args([
            "echo",
            "--listen",
            &format!("127.0.0.1:{echo_port}"),
        ]),
        p("echo.log"),
    );
    wait_for("echo to listen", Duration::from_secs(10), || {
        assert!(echo.is_running(), "{}", echo.log_text());
        echo.log_text().contains("listening on").then_some(())
    });
    std::fs::write(
        p("policy.toml"),
        postern_e2e::echo_policy(SocketAddr::from(([127, 0, 0, 1], echo_port))),
    )
    .unwrap();
    let (client_port, connector_port) = (free_port(), free_port());
    let cloud_addr = wan.cloud_addr;
    std::fs::write(
        p("gateway.toml"),
        format!(
            "node_id = \"gw-cloud\"\nstate_dir = \"{}\"\npolicy = \"{}\"\n[listen]\nclients = \"{cloud_addr}:{client_port}\"\nconnectors = \"127.0.0.1:{connector_port}\"\n[limits]\nhandshake_timeout = \"5s\"\n[tls]\nserver_names = [\"{cloud_addr}\", \"127.0.0.1\"]\n",
            p("gw").display(),
            p("policy.toml").display()
        ),
    )
    .unwrap();
    let mut gw = Proc::spawn(
        "gateway",
        wan.cloud(bin("postern-gateway"))
            .args(["run", "--config"])
            .arg(p("gateway.toml"))
            .env("POSTERN_LOG", "info,postern_gateway=debug"),
        p("gateway.log"),
    );
    wait_for("the gateway", Duration::from_secs(20), || {
        assert!(gw.is_running(), "{}", gw.log_text());
        gw.log_text().contains("gateway started").then_some(())
    });
    let (ok, token, err) = run(Command::new(bin("postern-gateway"))
        .args([
            "token", "create", "--site", "truro", "--ttl", "10m", "--config",
        ])
        .arg(p("gateway.toml")));
    assert!(ok, "{err}");
    let (ok, out, err) = run(wan
        .cloud(bin("postern-connector"))
        .args([
            "enroll",
            "--gateway",
            &format!("https://{cloud_addr}:{client_port}"),
            "--token",
            token.trim(),
            "--state-dir",
        ])
        .arg(p("conn")));
    assert!(ok, "enrolment: {out}{err}");
    std::fs::write(
        p("conn.toml"),
        format!(
            "state_dir = \"{}\"\ngateways = [\"127.0.0.1:{connector_port}\"]\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = \"{echo_port}\"\n",
            p("conn").display()
        ),
    )
    .unwrap();
    let conn = Proc::spawn(
        "connector",
        wan.cloud(bin("postern-connector"))
            .args(["run", "--config"])
            .arg(p("conn.toml")),
        p("conn.log"),
    );
    let audit = p("gw/audit");
    wait_for("the connector's link", Duration::from_secs(20), || {
        postern_e2e::audit_events(&audit)
            .iter()
            .any(|e| e["type"] == "connector.connected")
            .then_some(())
    });
    Cloud {
        dir,
        client_port,
        _procs: vec![echo, gw, conn],
    }
}

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
    let c = cloud(&wan);
    let p = |s: &str| c.dir.path().join(s);
    let (ok, token, err) = run(Command::new(bin("postern-gateway"))
        .args([
            "session",
            "mint",
            "--user",
            "ann@hospital.test",
            "--groups",
            "radiologists",
            "--ttl",
            "1h",
            "--config",
        ])
        .arg(p("gateway.toml")));
    assert!(ok, "{err}");
    std::fs::write(p("ann.token"), token.trim()).unwrap();
    let mut client = Proc::spawn(
        "client",
        wan.home(bin("postern"))
            .args([
                "connect",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--transport",
                "quic",
                "--gateway",
            ])
            .arg(format!("https://{}:{}", wan.cloud_addr, c.client_port))
            .arg("--ca-file")
            .arg(p("gw/server-ca.pem"))
            .arg("--token-file")
            .arg(p("ann.token"))
            .env("POSTERN_LOG", "info"),
        p("client.log"),
    );
    let local: SocketAddr = wait_for("the client", Duration::from_secs(20), || {
        assert!(client.is_running(), "{}", client.log_text());
        client.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
    });
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
    let events = postern_e2e::audit_events(&p("gw/audit"));
    let starts = events
        .iter()
        .filter(|e| e["type"] == "session.start")
        .count();
    let ends = events.iter().filter(|e| e["type"] == "session.end").count();
    assert_eq!((starts, ends), (1, 0), "{events:?}");
    client.kill();
}
