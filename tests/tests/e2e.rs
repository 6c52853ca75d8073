//! End-to-end tests: real gateway, connector and client binaries on loopback, a real Orthanc
//! PACS and real dcmtk tools. Every case also checks the audit events it implies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::dicom::{echoscu, findscu, getscu, make_study, storescu, Orthanc};
use postern_e2e::{
    bin, echo_roundtrip, open_live, run, tunnel_refused, wait_for, Deployment, Echo,
};
use serde_json::Value;

fn policy(dicom_port: u16, echo: SocketAddr, outside_port: u16) -> String {
    format!(
        r#"
[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {dicom_port}
protocol = "dicom"

[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {echo_port}
protocol = "tcp"

[[endpoints]]
name = "short"
site = "truro"
host = "127.0.0.1"
port = {echo_port}
protocol = "tcp"

[[endpoints]]
name = "outside"
site = "truro"
host = "127.0.0.1"
port = {outside_port}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom", "echo", "outside"]
max_session = "1h"
# The round trip stores an image through the tunnel: C-STORE must be granted.
dicom_services = ["echo", "find", "get", "move", "store"]

[[rules]]
id = "short-sessions"
effect = "allow"
groups = ["radiologists"]
endpoints = ["short"]
max_session = "2s"
"#,
        echo_port = echo.port()
    )
}

/// The connector allowlist: the PACS and the echo service, nothing else on loopback.
fn allow(ports: &[u16]) -> Vec<(&'static str, String)> {
    vec![(
        "127.0.0.1/32",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )]
}

fn standard() -> (Deployment, Echo) {
    let echo = Echo::start();
    let d = Deployment::start(&policy(1, echo.addr, 9), &allow(&[echo.addr.port()]));
    (d, echo)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

#[test]
fn dicom_round_trip_through_the_tunnel_is_byte_identical_and_audited() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let echo = Echo::start();
    let d = Deployment::start(
        &policy(orthanc.dicom_port, echo.addr, 9),
        &allow(&[orthanc.dicom_port, echo.addr.port()]),
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("pacs-dicom", &token).unwrap();

    let (ok, out, err) = echoscu(local);
    assert!(ok, "C-ECHO through the tunnel failed: {out}{err}");

    let (file, study_uid) = make_study(work.path(), "PID-E2E-1");
    let (ok, out, err) = storescu(local, &file);
    assert!(ok, "C-STORE through the tunnel failed: {out}{err}");
    assert_eq!(
        orthanc.instance_count(),
        1,
        "Orthanc did not store the instance"
    );

    let (ok, out, err) = findscu(local, "PID-E2E-1");
    assert!(ok, "C-FIND failed: {out}{err}");
    assert!(
        format!("{out}{err}").contains(&study_uid),
        "C-FIND did not return study {study_uid}: {out}{err}"
    );

    let got_dir = work.path().join("retrieved");
    let (ok, out, err) = getscu(local, &study_uid, &got_dir);
    assert!(ok, "C-GET failed: {out}{err}");
    let files: Vec<_> = std::fs::read_dir(&got_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "expected one retrieved file, got {files:?}");
    let original = std::fs::read(&file).unwrap();
    let retrieved = std::fs::read(&files[0]).unwrap();
    assert!(original.len() > 262_144);
    assert!(
        original == retrieved,
        "retrieved file differs from the stored one"
    );

    // Four associations → four sessions, each started and ended with bytes both ways.
    let ends = wait_for("four session.end events", Duration::from_secs(20), || {
        let e = d.events("session.end");
        (e.len() >= 4).then_some(e)
    });
    let starts = d.events("session.start");
    assert_eq!(starts.len(), 4, "{starts:?}");
    for st in &starts {
        assert_eq!(st["user"], "alice@truro.nhs.uk");
        assert_eq!(st["endpoint"]["name"], "pacs-dicom");
        assert_eq!(st["endpoint"]["protocol"], "dicom");
        assert_eq!(st["decision"]["rule"], "radiologists");
        assert_eq!(st["connector"]["id"], d.connector_id.as_str());
        assert!(s(&st["decision"]["policy_version"]).starts_with("sha256:"));
        assert!(s(&st["source"]).starts_with("127.0.0.1:"));
    }
    for end in &ends {
        assert!(end["bytes_up"].as_u64().unwrap() > 0, "{end}");
        assert!(end["bytes_down"].as_u64().unwrap() > 0, "{end}");
        assert!(end["duration_ms"].is_u64());
        assert!(starts
            .iter()
            .any(|st| st["session_id"] == end["session_id"]));
    }
    let store = ends
        .iter()
        .map(|e| e["bytes_up"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        store > 262_144,
        "the C-STORE session should carry the file: {store}"
    );
    let get = ends
        .iter()
        .map(|e| e["bytes_down"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        get > 262_144,
        "the C-GET session should carry the file back: {get}"
    );
}

#[test]
fn user_whose_groups_allow_nothing_is_denied_with_reason() {
    let (d, _echo) = standard();
    let token = d.mint("bob@truro.nhs.uk", "porters", "1h");
    let err = d.connect("echo", &token).err().expect("bob must be denied");
    assert!(
        err.contains(
            "postern: No rule allows user 'bob@truro.nhs.uk' (groups: porters) to reach 'echo'."
        ),
        "{err}"
    );
    // One sentence: the refusal is not repeated ("denied: Denied: …").
    assert_eq!(err.matches("enied").count(), 0, "{err}");
    let ev = d.wait_event("session.denied", |e| e["user"] == "bob@truro.nhs.uk");
    assert_eq!(ev["decision"]["effect"], "deny");
    assert!(
        s(&ev["decision"]["reason"]).contains("no rule allows"),
        "{ev}"
    );
    assert_eq!(ev["endpoint"]["name"], "echo");
    assert_eq!(d.count("session.start"), 0);
}

#[test]
fn endpoint_not_in_policy_is_denied() {
    let (d, _echo) = standard();
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let err = d
        .connect("truro-ct-console", &token)
        .err()
        .expect("must be denied");
    assert!(
        err.contains("There is no endpoint called 'truro-ct-console'. postern endpoints lists"),
        "{err}"
    );
    let ev = d.wait_event("session.denied", |e| {
        e["endpoint"]["name"] == "truro-ct-console"
    });
    assert!(s(&ev["decision"]["reason"]).contains("not defined"), "{ev}");
    // A typing mistake gets the name the user may reach.
    let err = d.connect("ecoh", &token).err().expect("must be denied");
    assert!(
        err.contains("There is no endpoint called 'ecoh'. Did you mean 'echo'?"),
        "{err}"
    );
}

#[test]
fn connector_refuses_targets_outside_its_allowlist_even_when_policy_allows() {
    // Something really listens on the "outside" port: the connector must not dial it.
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    outside.set_nonblocking(true).unwrap();
    let echo = Echo::start();
    let d = Deployment::start(
        &policy(1, echo.addr, outside.local_addr().unwrap().port()),
        &allow(&[echo.addr.port()]),
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (client, local) = d
        .connect("outside", &token)
        .expect("policy allows 'outside'");
    assert!(
        tunnel_refused(local),
        "the tunnel must be closed without data"
    );
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "outside");
    assert_eq!(end["close_reason"], "connector_refused", "{end}");
    assert!(
        s(&end["detail"]).contains("outside this connector's allowlist"),
        "{end}"
    );
    assert!(
        outside.accept().is_err(),
        "the connector dialled a target outside its allowlist"
    );
    wait_for(
        "client to print the refusal",
        Duration::from_secs(5),
        || {
            client
                .log_text()
                .contains("outside this connector's allowlist")
                .then_some(())
        },
    );
}

fn tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // Change the claims (groups) but keep the signature.
    let claims = parts[1].clone();
    let flipped: String = claims
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    parts[1] = flipped;
    parts.join(".")
}

#[test]
fn expired_tampered_foreign_and_unsigned_tokens_are_refused() {
    let (d, _echo) = standard();
    let other = Deployment::gateway_only(&policy(1, "127.0.0.1:1".parse().unwrap(), 9));
    let dir = d.path("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, t: &str| {
        let p = dir.join(name);
        std::fs::write(&p, t).unwrap();
        p
    };
    let good = std::fs::read_to_string(d.mint("alice@truro.nhs.uk", "radiologists", "1h")).unwrap();
    let foreign =
        std::fs::read_to_string(other.mint("alice@truro.nhs.uk", "radiologists", "1h")).unwrap();
    let expiring = d.mint("carol@truro.nhs.uk", "radiologists", "1s");
    let header_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let unsigned = format!("{header_none}.{}.", good.split('.').nth(1).unwrap());

    let cases = [
        (
            write("tampered", &tampered(&good)),
            "signature is not valid",
        ),
        (write("foreign", &foreign), "signed with an unknown key"),
        (write("unsigned", &unsigned), "malformed"),
        (write("garbage", "not-a-token"), "malformed"),
    ];
    assert_eq!(cases.len(), 4);
    for (path, want) in &cases {
        let err = d
            .connect("echo", path)
            .err()
            .unwrap_or_else(|| panic!("{path:?} accepted"));
        assert!(err.contains(want), "{path:?}: expected '{want}' in: {err}");
    }
    // Expiry (the gateway allows no leeway on its own tokens).
    std::thread::sleep(Duration::from_millis(2100));
    let err = d
        .connect("echo", &expiring)
        .err()
        .expect("expired token accepted");
    assert!(err.contains("session has expired"), "{err}");

    // Refused before authentication: audited in aggregate (the first of each reason at once),
    // never with the token's content.
    let wanted = [
        "token_invalid_signature",
        "token_malformed",
        "token_expired",
    ];
    let has_all = |v: &[Value]| {
        wanted
            .iter()
            .all(|w| v.iter().any(|e| e["refused"]["reason"] == *w))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = d.events("access.refused_unauthenticated");
    while !has_all(&refused) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        refused = d.events("access.refused_unauthenticated");
    }
    assert!(
        has_all(&refused),
        "one refusal of each reason: want {wanted:?} in {refused:#?}"
    );
    for e in &refused {
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert!(e["refused"]["count"].as_u64().unwrap() >= 1, "{e}");
        assert!(!s(&e["detail"]).contains("kid"), "{e}");
        // Only a token this gateway signed, refused for its age, names its user (#17).
        if e["refused"]["reason"] == "token_expired" {
            assert_eq!(e["user"], "carol@truro.nhs.uk", "{e}");
        } else {
            assert!(e["user"].is_null(), "{e}");
        }
    }
    assert_eq!(d.count("session.denied"), 0);
    assert_eq!(d.count("session.start"), 0);
}

#[test]
fn enrolment_tokens_are_single_use_and_expire() {
    let d = Deployment::gateway_only(&policy(1, "127.0.0.1:1".parse().unwrap(), 9));
    let token = d.enroll_token("truro", "10m");
    let (ok, out, err) = d.enroll("c1", &token);
    assert!(ok, "{out}{err}");
    assert!(out.contains("enrolled as truro-"), "{out}");
    let key_mode = std::fs::metadata(d.path("c1/connector.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    let (ok, _, err) = d.enroll("c2", &token);
    assert!(!ok);
    assert!(err.contains("already used"), "{err}");
    assert!(
        !d.path("c2/connector.pem").exists(),
        "a refused enrolment must write nothing"
    );

    let short = d.enroll_token("truro", "1s");
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, _, err) = d.enroll("c3", &short);
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");

    // Right pin, unknown secret.
    let pin = token.rsplit('.').next().unwrap();
    let unknown = format!("pte1.{}.{pin}", "ab".repeat(32));
    let (ok, _, err) = d.enroll("c4", &unknown);
    assert!(!ok);
    assert!(err.contains("not known"), "{err}");

    // Wrong pin: the connector refuses to talk to a gateway it cannot authenticate.
    let secret = token.split('.').nth(1).unwrap();
    let wrong_pin = format!("pte1.{secret}.{}", "cd".repeat(32));
    let (ok, _, err) = d.enroll("c5", &wrong_pin);
    assert!(!ok);
    assert!(err.contains("does not match the pin"), "{err}");

    let (_, list, _) = run(Command::new(bin("postern-gateway"))
        .args(["connector", "list", "--config"])
        .arg(d.gateway_toml()));
    assert_eq!(
        list.lines().filter(|l| l.starts_with("truro-")).count(),
        1,
        "{list}"
    );
    let failed = wait_for("3 enrolment failures", Duration::from_secs(5), || {
        let v = d.events("connector.enroll_failed");
        (v.len() >= 3).then_some(v)
    });
    for want in ["already used", "expired", "not known"] {
        assert!(
            failed.iter().any(|e| s(&e["detail"]).contains(want)),
            "{want}: {failed:?}"
        );
    }
    assert_eq!(d.count("connector.enrolled"), 1);
}

#[test]
fn revoked_connector_is_dropped_and_refused() {
    let (mut d, echo) = standard();
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("echo", &token).unwrap();
    // A live tunnel, then revoke.
    let mut live = open_live(local);
    let mut buf = [0u8; 4];

    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["connector", "revoke", &d.connector_id, "--config"])
        .arg(d.gateway_toml()));
    assert!(ok, "{out}{err}");
    let end = d.wait_event("session.end", |e| e["close_reason"] == "connector_revoked");
    assert_eq!(end["user"], "alice@truro.nhs.uk");
    let n = live.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the live tunnel must be closed");
    d.wait_event("connector.revoked", |e| {
        e["connector"]["id"] == d.connector_id.as_str()
    });
    d.wait_event("connector.disconnected", |e| {
        s(&e["detail"]).contains("revoked")
    });
    // Its reconnection attempts are refused.
    d.wait_event("connector.refused", |e| s(&e["detail"]).contains("revoked"));
    // And new sessions find no connector.
    assert!(
        tunnel_refused(local),
        "a tunnel opened with its connector revoked"
    );
    let e = d.wait_event("session.end", |e| e["close_reason"] == "no_connector");
    assert!(
        s(&e["detail"]).contains("no connector for site 'truro'"),
        "{e}"
    );
    drop(echo);
    d.connector.take();
}

#[test]
fn connector_with_certificate_from_another_gateway_is_refused() {
    let (d, _echo) = standard();
    let other = Deployment::gateway_only(&policy(1, "127.0.0.1:1".parse().unwrap(), 9));
    let token = other.enroll_token("truro", "10m");
    let (ok, out, err) = other.enroll("foreign", &token);
    assert!(ok, "{out}{err}");
    // Make the foreign connector trust *our* gateway, so the refusal is the gateway's.
    std::fs::copy(d.ca_file(), other.path("foreign/gateway-ca.pem")).unwrap();
    other.write_connector_toml(
        "foreign",
        &allow(&[1]),
        Some(&format!("127.0.0.1:{}", d.connector_port)),
    );
    let _foreign = other.spawn_connector("foreign");
    let ev = d.wait_event("connector.refused", |_| true);
    assert!(s(&ev["detail"]).contains("certificate"), "{ev}");
    assert_eq!(
        d.count("connector.connected"),
        2,
        "only our own connector's two links"
    );
}

#[test]
fn gateway_restart_connector_reconnects_and_new_sessions_work() {
    let (mut d, _echo) = standard();
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (client, local) = d.connect("echo", &token).unwrap();
    assert_eq!(echo_roundtrip(local, b"before").unwrap(), b"before");

    let connected_before = d.count("connector.connected");
    d.gateway.as_mut().unwrap().kill();
    d.start_gateway();
    let t0 = Instant::now();
    wait_for("connector to reconnect", Duration::from_secs(20), || {
        (d.count("connector.connected") >= connected_before + 2).then_some(())
    });
    let reconnect = t0.elapsed();
    assert!(
        reconnect < Duration::from_secs(10),
        "reconnect took {reconnect:?}"
    );
    // The same client process reconnects to the restarted gateway by itself.
    let after = echo_roundtrip(local, b"after");
    assert!(
        after.as_deref().ok() == Some(&b"after"[..]),
        "{after:?}: {}",
        client.log_text()
    );
    drop(client);
    let starts = d.events("session.start");
    assert!(!starts.is_empty());
}

#[test]
fn max_session_duration_closes_the_tunnel_and_says_why() {
    let (d, _echo) = standard();
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("short", &token).unwrap();
    let mut c = TcpStream::connect(local).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let held = t0.elapsed();
    assert!(
        held < Duration::from_secs(5),
        "tunnel outlived its 2s limit: {held:?}"
    );
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "short");
    assert_eq!(end["close_reason"], "max_duration", "{end}");
    assert_eq!(end["bytes_up"], 2);
    assert_eq!(end["bytes_down"], 2);
    let ms = end["duration_ms"].as_u64().unwrap();
    assert!((1900..4000).contains(&ms), "duration {ms} ms");
}

#[test]
fn garbage_and_half_open_connections_do_not_hurt_the_gateway() {
    let (mut d, _echo) = standard();
    let targets = [d.client_port, d.connector_port];
    // Half-open connections that never speak (slow handshakes): held during the rest.
    let idle: Vec<TcpStream> = targets
        .iter()
        .flat_map(|p| (0..20).map(move |_| TcpStream::connect(("127.0.0.1", *p)).unwrap()))
        .collect();
    assert_eq!(idle.len(), 40);
    for port in targets {
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"\x16\x03\x01\xff\xff garbage garbage"[..],
            &[0u8; 4096][..],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"[..],
        ] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(junk);
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf); // closed or an alert; never a hang beyond the timeout
        }
    }
    // An oversized header over real TLS (curl) gets a refusal, not a crash.
    let big = format!("x-big: {}", "a".repeat(100_000));
    let (_, out, err) = run(Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(d.ca_file())
        .args(["-H", &big, &format!("{}/healthz", d.url())]));
    assert!(out != "200", "oversized header accepted: {out} {err}");
    // The gateway still serves a clinician promptly while the half-open sockets sit there.
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let t0 = Instant::now();
    let (_client, local) = d.connect("echo", &token).unwrap();
    assert_eq!(echo_roundtrip(local, b"still fine").unwrap(), b"still fine");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(d.gateway.as_mut().unwrap().is_running());
    let log = d.gateway.as_ref().unwrap().log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(idle);
}

#[test]
fn config_errors_name_file_and_key_and_bind_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = postern_e2e::free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        dir.path().join("policy.toml"),
        policy(1, "127.0.0.1:1".parse().unwrap(), 9),
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!("state_dir = \"s\"\npolicy = \"policy.toml\"\n[listen]\nclients = \"127.0.0.1:{port}\"\nconnectors = \"127.0.0.1:{port}\"\n[limits]\nhandshake_timeout = \"whenever\"\n"),
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["run", "--config"])
        .arg(&cfg));
    assert!(!ok);
    assert!(
        err.contains("gateway.toml: limits.handshake_timeout"),
        "{err}"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "a listener was bound"
    );

    // A policy that references an undefined endpoint: the gateway refuses to start.
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"nope\"]\n",
    )
    .unwrap();
    // (Two listeners, two ports: one address for both is an error of its own.)
    let other = postern_e2e::free_port();
    std::fs::write(
        &cfg,
        format!("state_dir = \"s\"\npolicy = \"policy.toml\"\n[listen]\nclients = \"127.0.0.1:{port}\"\nconnectors = \"127.0.0.1:{other}\"\n"),
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["run", "--config"])
        .arg(&cfg));
    assert!(!ok);
    assert!(err.contains("policy.toml") && err.contains("nope"), "{err}");

    let ccfg = dir.path().join("connector.toml");
    std::fs::write(
        &ccfg,
        "state_dir = \"c\"\n[[allow]]\ncidr = \"10.0.0.0/40\"\nports = \"104\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(bin("postern-connector"))
        .args(["run", "--config"])
        .arg(&ccfg));
    assert!(!ok);
    assert!(err.contains("connector.toml: allow[0].cidr"), "{err}");
}

#[test]
fn iperf3_runs_through_the_tunnel() {
    let work = tempfile::tempdir().unwrap();
    let port = postern_e2e::free_port();
    let _server = postern_e2e::Proc::spawn(
        "iperf3",
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]),
        work.path().join("iperf3.log"),
    );
    wait_for("iperf3 server", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    let echo = Echo::start();
    // A plain TCP endpoint: a DICOM one would have the connector inspect the bytes, and
    // iperf3 does not speak DICOM.
    let d = Deployment::start(
        &policy(1, echo.addr, port),
        &allow(&[port, echo.addr.port()]),
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("outside", &token).unwrap();
    let (ok, out, err) = run(Command::new("iperf3").args([
        "-c",
        "127.0.0.1",
        "-p",
        &local.port().to_string(),
        "-t",
        "1",
        "-J",
    ]));
    assert!(ok, "iperf3 through the tunnel failed: {out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(bps > 1e8, "implausibly slow tunnel: {bps} bit/s");
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    // iperf3 uses a control and a data connection: two sessions; the data one carries it all.
    let ends = wait_for("two session.end events", Duration::from_secs(10), || {
        let v = d.events("session.end");
        (v.len() >= 2).then_some(v)
    });
    let up: u64 = ends.iter().map(|e| e["bytes_up"].as_u64().unwrap()).sum();
    assert!(
        up >= received,
        "audit says {up} bytes up, iperf3 received {received}"
    );
}

#[test]
fn malformed_connect_targets_are_refused_and_http1_connect_works() {
    let (d, _echo) = standard();
    let token =
        std::fs::read_to_string(d.mint("alice@truro.nhs.uk", "radiologists", "1h")).unwrap();
    let curl = |target: &str| {
        run(Command::new("curl")
            .args([
                "-sS",
                "--http0.9",
                "--max-time",
                "2",
                "--proxy",
                &d.url(),
                "--proxy-cacert",
            ])
            .arg(d.ca_file())
            .args([
                "--proxy-header",
                &format!("Authorization: Bearer {token}"),
                "-p",
            ])
            .arg(target)
            .args(["-w", "%{http_connect}"]))
    };
    // An HTTP/1.1 CONNECT from a stock client reaches the endpoint (raw TCP echo: curl sends its
    // GET and reads it back, which is enough to prove the tunnel).
    let (_, out, err) = curl("http://echo:0/hello");
    assert!(out.contains("GET /hello HTTP/1.1"), "{out}{err}");
    for bad in ["http://echo:104/", "http://10.1.2.3:22/", "http://ECHO:0/"] {
        let (ok, out, err) = curl(bad);
        assert!(!ok, "{bad} accepted");
        assert!(out.ends_with("400"), "{bad}: {out} {err}");
    }
    let denied = wait_for(
        "3 malformed-target denials",
        Duration::from_secs(10),
        || {
            let v: Vec<Value> = d
                .events("session.denied")
                .into_iter()
                .filter(|e| s(&e["detail"]).contains("malformed CONNECT target"))
                .collect();
            (v.len() >= 3).then_some(v)
        },
    );
    assert!(denied
        .iter()
        .any(|e| s(&e["detail"]).contains("10.1.2.3:22")));
}

#[test]
fn sigterm_drains_then_ends_live_sessions_with_reason_shutdown() {
    let (mut d, _echo) = standard();
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("echo", &token).unwrap();
    let mut live = open_live(local);
    let mut b = [0u8; 1];
    d.wait_event("session.start", |_| true);
    let t0 = Instant::now();
    d.gateway.as_ref().unwrap().signal("TERM");
    // During the grace period (2 s in the test config) the live tunnel still works...
    std::thread::sleep(Duration::from_millis(300));
    live.write_all(b"y").unwrap();
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
    // ...but nothing new is accepted.
    assert!(
        TcpStream::connect(("127.0.0.1", d.client_port)).is_err()
            || echo_roundtrip(local, b"new").is_err(),
        "a new session was accepted while draining"
    );
    let code = wait_for("the gateway to exit", Duration::from_secs(10), || {
        d.gateway.as_mut().unwrap().child.try_wait().ok().flatten()
    });
    assert_eq!(code.code(), Some(0), "gateway did not exit cleanly");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "no grace period: {waited:?}"
    );
    let end = d.wait_event("session.end", |e| e["bytes_up"] == 2);
    assert_eq!(end["close_reason"], "shutdown");
    d.wait_event("gateway.stopped", |_| true);
}

#[test]
fn demo_comes_up_and_its_printed_next_steps_work() {
    let work = tempfile::tempdir().unwrap();
    // The demo uses PORT (clients), PORT+1 (connectors) and PORT+2 (its identity provider).
    let port = loop {
        let p = postern_e2e::free_port();
        if p < 65000
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 2)).is_ok()
        {
            break p;
        }
    };
    // The old spelling says where the demo went instead of failing with a clap error.
    let moved = Command::new(bin("postern-gateway"))
        .args(["demo", "--dir"])
        .arg(work.path().join("x"))
        .args(["--port", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&moved.stderr);
    assert_eq!(moved.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "the demo is now its own program: run postern-demo (cargo build --release && target/release/postern-demo)"
    );
    assert!(!work.path().join("x").exists());
    let demo = postern_e2e::Proc::spawn(
        "demo",
        Command::new(bin("postern-demo"))
            .arg("--dir")
            .arg(work.path().join("demo"))
            .args(["--port", &port.to_string()])
            .env("POSTERN_LOG", "warn"),
        work.path().join("demo.log"),
    );
    let text = wait_for("the demo's instructions", Duration::from_secs(30), || {
        let t = demo.log_text();
        t.contains("postern logout").then_some(t)
    });
    let steps: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Try these"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Try these"))
        .collect();
    assert!(steps.len() >= 10, "too few steps: {steps:?}");
    let cfg = work.path().join("postern-config");
    let path = format!(
        "{}:{}",
        steps[0]
            .trim_start_matches("export PATH=")
            .trim_end_matches(":$PATH"),
        std::env::var("PATH").unwrap_or_default()
    );
    // Sign in as a person would: run the printed `postern login`, open its URL in a browser
    // (curl-driven), type alice / alice at the demo identity provider.
    let login_step = steps
        .iter()
        .find(|s| s.starts_with("postern login"))
        .unwrap();
    let mut login = postern_e2e::Proc::spawn(
        "login",
        Command::new("bash")
            .arg("-c")
            .arg(login_step)
            .env("PATH", &path)
            .env("POSTERN_CONFIG_DIR", &cfg),
        work.path().join("login.log"),
    );
    let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
        login
            .log_text()
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("https://"))
            .map(str::to_owned)
    });
    let ca = work.path().join("demo/gateway-ca.pem");
    let page = postern_e2e::oidc::browser_login(&url, &ca, "alice", "alice");
    assert!(page.body.contains("You are signed in"), "{page:?}");
    wait_for("postern login to finish", Duration::from_secs(20), || {
        (!login.is_running()).then_some(())
    });
    assert!(
        login.log_text().contains("signed in as alice@demo.nhs.uk"),
        "{}",
        login.log_text()
    );

    // The rest, as printed, in one shell; background tunnels get a moment to listen.
    let mut script = String::from("set -u\n");
    for step in steps.iter().filter(|s| !s.starts_with("postern login")) {
        script.push_str(step);
        script.push('\n');
        if step.ends_with('&') {
            let port = step
                .split("127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .unwrap();
            script.push_str(&format!(
                "for i in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done\n"
            ));
        }
    }
    script.push_str("kill $(jobs -p) 2>/dev/null\nwait 2>/dev/null\n");
    let (_, out, err) = run(Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("POSTERN_CONFIG_DIR", &cfg));
    let all = format!("{out}\n{err}");
    assert!(all.contains("signed in as alice@demo.nhs.uk"), "{all}");
    assert!(all.contains("mfa      yes"), "{all}");
    assert!(all.contains("demo-web"), "{all}");
    assert!(all.contains("Hello from the demo web viewer"), "{all}");
    assert!(
        all.contains("No rule allows user 'lee@demo.nhs.uk'"),
        "{all}"
    );
    assert!(all.contains("outside this connector's allowlist"), "{all}");
    assert!(
        all.contains("session.start") && all.contains("session.denied"),
        "{all}"
    );
    assert!(all.contains("auth.login"), "{all}");
    assert!(all.contains("signed out"), "{all}");

    // The demo's connector is a child process; killed with SIGKILL, the demo cannot stop it,
    // but the connector notices its stdin pipe close and stops by itself.
    let connector_pids = || -> Vec<u32> {
        let marker = work.path().join("demo").join("connector.toml");
        let marker = marker.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            })
            .collect()
    };
    assert_eq!(connector_pids().len(), 1, "the demo's connector is running");
    let mut demo = demo;
    demo.kill();
    wait_for(
        "the demo's connector to stop",
        Duration::from_secs(10),
        || connector_pids().is_empty().then_some(()),
    );
}

#[test]
fn policy_reload_withdraws_access_during_a_live_dicom_association() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let echo = Echo::start();
    let text = policy(orthanc.dicom_port, echo.addr, 9);
    let d = Deployment::start(&text, &allow(&[orthanc.dicom_port, echo.addr.port()]));
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_client, local) = d.connect("pacs-dicom", &token).unwrap();
    // A long-lived association: C-ECHO after C-ECHO on one connection.
    let mut viewer = postern_e2e::Proc::spawn(
        "echoscu",
        Command::new("echoscu").args([
            "-aet",
            "VIEWER",
            "-aec",
            "ORTHANC",
            "--repeat",
            "1000000",
            "127.0.0.1",
            &local.port().to_string(),
        ]),
        work.path().join("echoscu.log"),
    );
    let start = d.wait_event("session.start", |e| e["endpoint"]["name"] == "pacs-dicom");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        viewer.is_running(),
        "the association ended early: {}",
        viewer.log_text()
    );

    // Withdraw the radiologists' access to the PACS and reload with SIGHUP.
    let withdrawn = text.replace(
        "endpoints = [\"pacs-dicom\", \"echo\", \"outside\"]",
        "endpoints = [\"echo\", \"outside\"]",
    );
    assert_ne!(withdrawn, text);
    std::fs::write(d.path("policy.toml"), &withdrawn).unwrap();
    let t0 = Instant::now();
    d.gateway.as_ref().unwrap().signal("HUP");
    let term = d.wait_event("session.terminated", |e| {
        e["session_id"] == start["session_id"]
    });
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "termination took {took:?}");
    assert_eq!(term["decision"]["effect"], "deny");
    assert!(
        s(&term["decision"]["reason"]).contains("no rule allows"),
        "{term}"
    );
    assert_ne!(
        term["decision"]["policy_version"],
        start["decision"]["policy_version"]
    );
    let end = d.wait_event("session.end", |e| e["session_id"] == start["session_id"]);
    assert_eq!(end["close_reason"], "access_withdrawn");
    assert!(end["bytes_up"].as_u64().unwrap() > 0);
    let reloaded = d.wait_event("policy.reloaded", |_| true);
    assert!(
        s(&reloaded["detail"]).contains("1 terminated"),
        "{reloaded}"
    );
    wait_for("echoscu to fail", Duration::from_secs(10), || {
        (!viewer.is_running()).then_some(())
    });
    let log = viewer.log_text();
    assert!(
        log.contains("Echo Failed") || log.contains("network closed"),
        "{log}"
    );
    // And a new association is refused under the new policy.
    let (ok, _, _) = echoscu(local);
    assert!(!ok, "C-ECHO succeeded after access was withdrawn");
}

#[test]
fn edited_policy_file_reloads_and_a_broken_one_is_rejected() {
    let echo = Echo::start();
    let text = policy(1, echo.addr, 9);
    let d = Deployment::start(&text, &allow(&[echo.addr.port()]));
    let bob = d.mint("bob@truro.nhs.uk", "porters", "1h");
    assert!(d.connect("echo", &bob).is_err());

    // A broken edit: rejected, the old policy keeps serving.
    std::fs::write(
        d.path("policy.toml"),
        format!("{text}\n[[rules]]\nid = \"broken\"\n"),
    )
    .unwrap();
    let rejected = d.wait_event("policy.rejected", |_| true);
    assert!(s(&rejected["detail"]).contains("policy.toml"), "{rejected}");
    let alice = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &alice).unwrap();
    assert_eq!(echo_roundtrip(local, b"old policy").unwrap(), b"old policy");

    // A good edit (no signal): porters may now reach the echo service.
    let widened = text.replace(
        "groups = [\"radiologists\"]\nendpoints = [\"pacs-dicom\"",
        "groups = [\"radiologists\", \"porters\"]\nendpoints = [\"pacs-dicom\"",
    );
    assert_ne!(widened, text);
    std::fs::write(d.path("policy.toml"), widened).unwrap();
    d.wait_event("policy.reloaded", |_| true);
    let (_c2, local2) = d.connect("echo", &bob).expect("bob allowed after reload");
    assert_eq!(
        echo_roundtrip(local2, b"new policy").unwrap(),
        b"new policy"
    );
}

/// Mounts a tmpfs of `size` at `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let (root, _, _) = run(Command::new("sh").args(["-c", "[ \"$(id -u)\" = 0 ]"]));
        if !root {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let (ok, out, err) = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir));
        assert!(ok, "mount tmpfs failed: {out}{err}");
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_audit_disk_refuses_new_sessions_fail_closed() {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&policy(1, echo.addr, 9));
    let Some(_fs) = Tmpfs::mount(&d.path("gw/audit"), "256k") else {
        return;
    };
    d.start_gateway();
    let d = d.with_connector(&allow(&[echo.addr.port()]));
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (client, local) = d.connect("echo", &token).unwrap();
    assert_eq!(
        echo_roundtrip(local, b"while there is room").unwrap(),
        b"while there is room"
    );

    // Fill the audit filesystem.
    let filler = d.path("gw/audit/filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
    drop(f);

    // The log file's last page may still hold a few events; sessions keep working (each with
    // its durable session.start) until a write fails, and from then on they are refused.
    let accepted = || echo.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let mut refused_at = None;
    for attempt in 0..200 {
        let (starts, reached) = (d.count("session.start"), accepted());
        let mut c = TcpStream::connect(local).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(b"ping");
        let mut buf = [0u8; 4];
        if c.read_exact(&mut buf).is_ok() {
            assert_eq!(
                d.count("session.start"),
                starts + 1,
                "a session ran without session.start"
            );
        } else {
            assert_eq!(
                accepted(),
                reached,
                "the endpoint was reached without a durable session.start"
            );
            refused_at = Some(attempt);
            break;
        }
    }
    assert!(
        refused_at.is_some(),
        "sessions were never refused on a full audit disk"
    );
    wait_for(
        "the client to report the refusal",
        Duration::from_secs(10),
        || {
            client
                .log_text()
                .contains("cannot write its audit log")
                .then_some(())
        },
    );
    // Room again: the gateway does not silently resume with a gap in the log; it stays fail
    // closed until an operator restarts it (and the audit writer re-checks the log).
    std::fs::remove_file(&filler).unwrap();
    let (starts, reached) = (d.count("session.start"), accepted());
    let mut c = TcpStream::connect(local).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(
        c.read_exact(&mut buf).is_err(),
        "a session ran after an audit failure"
    );
    assert_eq!((d.count("session.start"), accepted()), (starts, reached));
    let log = d.gateway.as_ref().unwrap().log_text();
    assert!(log.contains("audit log unavailable"), "{log}");
}

#[test]
fn metrics_and_health_on_the_admin_listener() {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&policy(1, echo.addr, 9));
    let admin = postern_e2e::free_port();
    d.append_config(&format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"));
    d.start_gateway();
    let d = d.with_connector(&allow(&[echo.addr.port()]));
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &token).unwrap();
    assert_eq!(echo_roundtrip(local, b"count me").unwrap(), b"count me");
    let bob = d.mint("bob@truro.nhs.uk", "porters", "1h");
    assert!(d.connect("echo", &bob).is_err());
    d.wait_event("session.end", |_| true);
    let addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = wait_for("metrics", Duration::from_secs(10), || {
        postern_e2e::dicom::http_get(addr, "/metrics")
            .filter(|m| m.contains("postern_tunnel_bytes_total"))
    });
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    assert_eq!(value("postern_sessions_total{decision=\"allow\"}"), 1.0);
    assert!(value("postern_sessions_total{decision=\"deny\"}") >= 1.0);
    assert_eq!(value("postern_connectors_connected{site=\"truro\"}"), 2.0);
    assert_eq!(value("postern_tunnel_bytes_total{direction=\"up\"}"), 8.0);
    assert_eq!(value("postern_tunnel_bytes_total{direction=\"down\"}"), 8.0);
    assert_eq!(value("postern_session_setup_seconds_count"), 1.0);
    assert!(value("postern_audit_events_total") >= 4.0);
    assert!(
        metrics.contains("postern_policy_version_info{version=\"sha256:"),
        "{metrics}"
    );
    assert!(metrics.contains("postern_build_info{version="), "{metrics}");
    assert_eq!(
        postern_e2e::dicom::http_get(addr, "/readyz").as_deref(),
        Some("ready\n")
    );
    // The public listener does not serve metrics.
    let (_, out, _) = run(Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(d.ca_file())
        .arg(format!("{}/metrics", d.url())));
    assert!(
        !out.contains("postern_"),
        "metrics leaked on the public port: {out}"
    );
}

#[test]
fn enrolment_floods_are_rate_limited_per_address() {
    let d = Deployment::gateway_only(&policy(1, "127.0.0.1:1".parse().unwrap(), 9));
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let (_, out, err) = run(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(d.ca_file())
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                "{\"token\":\"x\",\"csr_pem\":\"y\"}",
            ])
            .arg(format!("{}/v1/enroll", d.url())));
        statuses.push(format!("{out}{}", err.trim()));
    }
    assert!(
        statuses.iter().any(|s| s == "403"),
        "the first attempts are judged: {statuses:?}"
    );
    assert!(
        !statuses.iter().any(|s| s == "000"),
        "a request got no answer: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s == "429"),
        "no rate limit in 15 rapid attempts: {statuses:?}"
    );
}

fn rfc3339_in(secs: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let (_, out, _) =
        run(Command::new("date").args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"]));
    out.trim().to_owned()
}

fn v1_policy(echo: SocketAddr, contract_end: &str) -> String {
    format!(
        r#"
[defaults]
zone = "Europe/London"

[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"
egress = "display"

[[endpoints]]
name = "echo-glass"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[endpoints]]
name = "echo-idle"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[rules]]
id = "locum-contract"
effect = "allow"
groups = ["locums"]
endpoints = ["echo"]
valid_until = {contract_end}

[[rules]]
id = "break-glass"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-glass"]
require_justification = true

[[rules]]
id = "idle-limited"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo-idle"]
idle_timeout = "1s"
"#,
        port = echo.port()
    )
}

#[test]
fn a_contract_that_ends_during_a_session_terminates_it() {
    let echo = Echo::start();
    let d = Deployment::start(
        &v1_policy(echo.addr, &rfc3339_in(4)),
        &allow(&[echo.addr.port()]),
    );
    let token = d.mint("locum@truro.nhs.uk", "locums", "1h");
    let (_c, local) = d.connect("echo", &token).unwrap();
    let mut live = open_live(local);
    let mut b = [0u8; 1];
    let start = d.wait_event("session.start", |_| true);
    assert_eq!(start["egress_class"], "display");
    assert_eq!(
        live.read(&mut b).unwrap_or(0),
        0,
        "the tunnel outlived the contract"
    );
    let term = d.wait_event("session.terminated", |e| {
        e["session_id"] == start["session_id"]
    });
    assert_eq!(term["decision"]["effect"], "deny");
    assert!(
        s(&term["detail"]).contains("time-bound access ended"),
        "{term}"
    );
    let end = d.wait_event("session.end", |e| e["session_id"] == start["session_id"]);
    assert_eq!(end["close_reason"], "access_withdrawn");
    // And a new connection is refused now.
    assert!(d.connect("echo", &token).is_err());
}

#[test]
fn break_glass_needs_a_reason_which_is_audited() {
    let echo = Echo::start();
    let d = Deployment::start(
        &v1_policy(echo.addr, "2099-01-01"),
        &allow(&[echo.addr.port()]),
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let err = d
        .connect("echo-glass", &token)
        .err()
        .expect("no reason given: must be denied");
    assert!(
        err.contains(
            "Access to echo-glass is break-glass only: run the command again with --reason"
        ),
        "{err}"
    );
    let denied = d.wait_event("session.denied", |e| e["endpoint"]["name"] == "echo-glass");
    assert_eq!(denied["decision"]["effect"], "deny");
    // With a reason: allowed, and the reason is in session.start.
    let log = d.path("glass.log");
    let client = postern_e2e::Proc::spawn(
        "client",
        Command::new(bin("postern"))
            .args([
                "connect",
                "echo-glass",
                "--listen",
                "127.0.0.1:0",
                "--gateway",
                &d.url(),
            ])
            .arg("--ca-file")
            .arg(d.ca_file())
            .arg("--token-file")
            .arg(&token)
            .args([
                "--reason",
                "CT head – ED résus, on-call registrar unreachable",
            ]),
        log,
    );
    let addr: SocketAddr = wait_for("ready", Duration::from_secs(10), || {
        client.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
    });
    assert_eq!(echo_roundtrip(addr, b"urgent").unwrap(), b"urgent");
    let start = d.wait_event("session.start", |e| e["endpoint"]["name"] == "echo-glass");
    // Any printable text, as typed (the header carries it percent-encoded).
    assert_eq!(
        start["justification"],
        "CT head – ED résus, on-call registrar unreachable"
    );
    assert_eq!(start["decision"]["rule"], "break-glass");
}

#[test]
fn idle_sessions_are_closed_after_the_rule_idle_timeout() {
    let echo = Echo::start();
    let d = Deployment::start(
        &v1_policy(echo.addr, "2099-01-01"),
        &allow(&[echo.addr.port()]),
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo-idle", &token).unwrap();
    let mut live = open_live(local);
    let mut b = [0u8; 1];
    let t0 = Instant::now();
    assert_eq!(live.read(&mut b).unwrap_or(0), 0);
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "echo-idle");
    assert_eq!(end["close_reason"], "idle_timeout");
}

#[test]
fn a_sign_in_is_one_visit_per_endpoint_and_two_sign_ins_are_two() {
    let echo = Echo::start();
    let d = Deployment::start(
        &v1_policy(echo.addr, "2099-01-01"),
        &allow(&[echo.addr.port()]),
    );
    // Two sign-ins of one clinician, on one machine at one address, seconds apart: only the
    // sign-in in the session events tells them apart (grouped by address, they were one visit).
    let first = d.mint("locum@truro.nhs.uk", "locums", "1h");
    let second = d.mint("locum@truro.nhs.uk", "locums", "1h");
    let minted: Vec<String> = d
        .events("token.minted")
        .iter()
        .map(|e| s(&e["signin"]).to_owned())
        .collect();
    assert_eq!(minted.len(), 2, "{minted:?}");
    assert!(
        minted.iter().all(|m| m.starts_with("tok-")) && minted[0] != minted[1],
        "{minted:?}"
    );
    let (_a, a) = d.connect("echo", &first).unwrap();
    for msg in [b"one", b"two"] {
        assert_eq!(echo_roundtrip(a, msg).unwrap(), msg);
    }
    let (_b, b) = d.connect("echo", &second).unwrap();
    assert_eq!(echo_roundtrip(b, b"three").unwrap(), b"three");
    let ends = wait_for("three session.end", Duration::from_secs(10), || {
        let v = d.events("session.end");
        (v.len() >= 3).then_some(v)
    });
    let starts = d.events("session.start");
    assert_eq!(starts.len(), 3);
    for e in starts.iter().chain(&ends) {
        assert!(minted.contains(&s(&e["signin"]).to_owned()), "{e}");
    }
    assert_eq!(
        starts.iter().filter(|e| e["signin"] == minted[0]).count(),
        2
    );

    let visits = d.audit_cli_json(&["sessions", "--json"]);
    assert_eq!(visits.len(), 2, "{visits:#?}");
    let of = |signin: &str| {
        visits
            .iter()
            .find(|v| v["signin"] == signin)
            .unwrap_or_else(|| panic!("no visit of {signin}: {visits:#?}"))
            .clone()
    };
    let (v1, v2) = (of(&minted[0]), of(&minted[1]));
    assert_eq!(v1["connections"], 2, "{v1}");
    assert_eq!(v1["sessions"].as_array().unwrap().len(), 2, "{v1}");
    assert_eq!(v2["connections"], 1, "{v2}");
    assert_eq!(v1["source"], "127.0.0.1", "{v1}");

    // One sign-in's trail: where it was made and everything its sessions did.
    let trail = d.audit_cli_json(&["search", "--json", "--signin", &minted[0]]);
    let kinds: Vec<&str> = trail.iter().map(|e| s(&e["type"])).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "token.minted").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "session.start").count(),
        2,
        "{kinds:?}"
    );
    assert!(trail.iter().all(|e| e["signin"] == minted[0]), "{trail:#?}");
    let second = d.audit_cli_json(&["sessions", "--json", "--signin", &minted[1]]);
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(second[0]["connections"], 1, "{second:#?}");
}
