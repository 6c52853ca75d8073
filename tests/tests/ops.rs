//! Operations: connector round-trip metric, connector-side metrics and health, automatic
//! connector certificate renewal, the gateway certificate from files (reload on SIGHUP), CA
//! export and `check`. Real binaries on loopback, as in `e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postern_e2e::{echo_roundtrip, free_port, http, tunnel_refused, wait_for, Deployment, Echo};
use serde_json::Value;

fn policy(echo: SocketAddr, outside_port: u16) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
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
endpoints = ["echo", "outside"]
max_session = "1h"
"#,
        echo_port = echo.port()
    )
}

fn allow_echo(echo: &Echo) -> Vec<(&'static str, String)> {
    vec![("127.0.0.1/32", echo.addr.port().to_string())]
}

/// The value of the sample line starting with `name` (labels included) in a text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn add_connector_admin(d: &Deployment, name: &str) -> SocketAddr {
    let port = free_port();
    let path = d.path(&format!("{name}.toml"));
    let mut t = std::fs::read_to_string(&path).unwrap();
    t.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&path, t).unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

#[test]
fn link_round_trip_and_connector_metrics_and_readiness() {
    let echo = Echo::start();
    let outside = free_port();
    let mut d = Deployment::prepare(&policy(echo.addr, outside));
    let gw_admin = free_port();
    d.append_config(&format!("[admin]\nlisten = \"127.0.0.1:{gw_admin}\"\n"));
    d.start_gateway();
    let gw_admin: SocketAddr = format!("127.0.0.1:{gw_admin}").parse().unwrap();
    let token = d.enroll_token("truro", "10m");
    let (ok, out, err) = d.enroll("conn", &token);
    assert!(ok, "{out}{err}");
    d.connector_id = out.split_whitespace().nth(2).unwrap().to_owned();
    d.write_connector_toml("conn", &allow_echo(&echo), None);
    let c_admin = add_connector_admin(&d, "conn");
    d.start_connector("conn");

    // Readiness: both links up.
    let body = wait_for("connector /readyz", Duration::from_secs(10), || {
        http(c_admin, "/readyz")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    });
    assert!(body.starts_with("ready:"), "{body}");
    assert_eq!(http(c_admin, "/healthz"), Some((200, "ok\n".into())));

    // One tunnel, one refusal by the connector's allowlist.
    let alice = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &alice).unwrap();
    assert_eq!(echo_roundtrip(local, b"metrics!").unwrap(), b"metrics!");
    let (_o, outside_local) = d.connect("outside", &alice).unwrap();
    assert!(tunnel_refused(outside_local));
    d.wait_event("session.end", |e| e["endpoint"]["name"] == "echo");

    let m = wait_for("connector metrics", Duration::from_secs(10), || {
        http(c_admin, "/metrics").map(|(_, b)| b).filter(|b| {
            sample(
                b,
                "postern_connector_tunnel_bytes_total{direction=\"to_target\"}",
            ) == Some(8.0)
        })
    });
    assert_eq!(sample(&m, "postern_connector_links_up"), Some(2.0), "{m}");
    assert_eq!(
        sample(&m, "postern_connector_dials_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "postern_connector_allowlist_refusals_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "postern_connector_streams_active"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "postern_connector_tunnel_bytes_total{direction=\"from_target\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        sample(&m, "postern_connector_reconnects_total"),
        Some(0.0),
        "{m}"
    );
    assert!(sample(&m, "postern_connector_cert_expiry_timestamp_seconds").unwrap() > 1.7e9);

    // The gateway's probe: every 10 s per link, the first at once. Not a session.
    let label = format!("{{connector=\"{}\",site=\"truro\"}}", d.connector_id);
    let gm = wait_for("two probes per link", Duration::from_secs(25), || {
        http(gw_admin, "/metrics").map(|(_, b)| b).filter(|b| {
            sample(b, &format!("postern_connector_rtt_seconds_count{label}")).unwrap_or(0.0) >= 4.0
        })
    });
    let count = sample(&gm, &format!("postern_connector_rtt_seconds_count{label}")).unwrap();
    let sum = sample(&gm, &format!("postern_connector_rtt_seconds_sum{label}")).unwrap();
    let mean = sum / count;
    println!(
        "link RTT on loopback: {count} probes, mean {:.3} ms",
        mean * 1000.0
    );
    assert!(mean > 0.0 && mean < 0.5, "mean RTT {mean}s");
    // Probes are not tunnels: only the two tunnels opened above are in the audit, and the
    // connector dialled once.
    assert_eq!(d.count("session.start"), 2);
    let m = http(c_admin, "/metrics").unwrap().1;
    assert_eq!(
        sample(&m, "postern_connector_dials_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );

    // `status` shows the running connector's counters.
    let (ok, out, err) = postern_e2e::run(
        std::process::Command::new(postern_e2e::bin("postern-connector"))
            .args(["status", "--config"])
            .arg(d.path("conn.toml")),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("running      (from http://{c_admin}/metrics)")),
        "{out}"
    );
    assert!(out.contains("links_up 2"), "{out}");
    assert!(out.contains("allowlist_refusals_total 1"), "{out}");

    // Gateway gone: not ready, reconnects counted.
    d.gateway.as_mut().unwrap().kill();
    wait_for("connector /readyz 503", Duration::from_secs(10), || {
        http(c_admin, "/readyz")
            .filter(|(s, b)| *s == 503 && b.contains("no gateway link"))
            .map(|_| ())
    });
    wait_for("reconnects counted", Duration::from_secs(10), || {
        let m = http(c_admin, "/metrics")?.1;
        (sample(&m, "postern_connector_reconnects_total")? >= 2.0).then_some(())
    });
}

fn state_connector(d: &Deployment) -> Value {
    d.state()["connectors"][0].clone()
}

#[test]
fn connector_certificate_renews_and_keeps_working_past_the_original_expiry() {
    let echo = Echo::start();
    let mut d =
        Deployment::prepare_with(&policy(echo.addr, 9), "connector_cert_validity = \"30s\"\n");
    d.start_gateway();
    let enrolled_at = Instant::now();
    let d = d.with_connector(&allow_echo(&echo));
    let first_serial = s(&state_connector(&d)["serial"]).to_owned();
    let pem_before = std::fs::read_to_string(d.path("conn/connector.pem")).unwrap();

    // Renewal at two thirds of 30 s.
    let ev = wait_for("connector.renewed", Duration::from_secs(40), || {
        d.events("connector.renewed").into_iter().next()
    });
    let renewed_after = enrolled_at.elapsed();
    println!("renewed {renewed_after:?} after enrolment");
    assert!(
        renewed_after >= Duration::from_secs(15),
        "{renewed_after:?}"
    );
    assert_eq!(ev["connector"]["id"], d.connector_id.as_str());
    assert_eq!(ev["connector"]["site"], "truro");
    assert!(s(&ev["detail"]).contains(&first_serial), "{ev}");
    let rec = state_connector(&d);
    assert_ne!(s(&rec["serial"]), first_serial);
    assert_eq!(s(&rec["previous_serial"]), first_serial);
    assert!(s(&ev["detail"]).contains(s(&rec["serial"])), "{ev}");
    let pem_after = wait_for("new certificate on disk", Duration::from_secs(5), || {
        let p = std::fs::read_to_string(d.path("conn/connector.pem")).ok()?;
        (p != pem_before).then_some(p)
    });
    assert!(pem_after.contains("BEGIN CERTIFICATE"));
    use std::os::unix::fs::PermissionsExt;
    for f in ["conn/connector.key", "conn/connector.pem"] {
        let mode = std::fs::metadata(d.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(!d.path("conn/renewal.pem").exists());

    // Live links made with the first certificate stay up through the renewal.
    let alice = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &alice).unwrap();
    assert_eq!(echo_roundtrip(local, b"before").unwrap(), b"before");

    // Past the first certificate's expiry, restart the gateway: new links need the new one.
    let past = Duration::from_secs(33);
    if let Some(w) = past.checked_sub(enrolled_at.elapsed()) {
        std::thread::sleep(w);
    }
    let mut d = d;
    let connected = d.count("connector.connected");
    d.gateway.as_mut().unwrap().kill();
    d.start_gateway();
    wait_for("connector reconnects", Duration::from_secs(20), || {
        (d.count("connector.connected") >= connected + 2).then_some(())
    });
    assert!(
        enrolled_at.elapsed() > Duration::from_secs(30),
        "the first certificate has expired"
    );
    let (_c2, local2) = d.connect("echo", &alice).unwrap();
    assert_eq!(
        echo_roundtrip(local2, b"after expiry").unwrap(),
        b"after expiry"
    );
    let refused = d.events("connector.refused");
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn a_revoked_connector_cannot_renew() {
    let echo = Echo::start();
    let mut d =
        Deployment::prepare_with(&policy(echo.addr, 9), "connector_cert_validity = \"9s\"\n");
    d.start_gateway();
    let mut d = d.with_connector(&allow_echo(&echo));
    let enrolled = Instant::now();
    let (ok, out, err) = postern_e2e::run(
        std::process::Command::new(postern_e2e::bin("postern-gateway"))
            .args(["connector", "revoke", &d.connector_id, "--config"])
            .arg(d.gateway_toml()),
    );
    assert!(ok, "{out}{err}");
    // Renewal would be due 6 s after enrolment. The gateway tells the revoked connector so on
    // whichever connection comes first — a link or the renewal — and audits that refusal; the
    // connector stops (exit status 3, safe_ops.rs) instead of ever getting a new certificate.
    let ev = d.wait_event("connector.refused", |e| s(&e["detail"]).contains("revoked"));
    assert_eq!(ev["connector"]["id"], d.connector_id.as_str());
    let conn = d.connector.as_mut().unwrap();
    let code = wait_for(
        "the revoked connector to stop",
        Duration::from_secs(20),
        || conn.child.try_wait().unwrap().map(|status| status.code()),
    );
    assert_eq!(code, Some(3), "{}", conn.log_text());
    // Past the renewal's due time: no certificate was issued.
    if let Some(rest) = Duration::from_secs(8).checked_sub(enrolled.elapsed()) {
        std::thread::sleep(rest);
    }
    assert!(d.events("connector.renewed").is_empty());
}

/// A CA named `cn` and a server certificate it issues for 127.0.0.1 and localhost, valid for
/// `days`. Returns (CA PEM, chain PEM (leaf + CA), leaf key PEM).
fn issue(cn: &str, days: i64) -> (String, String, String) {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name.push(rcgen::DnType::CommonName, cn);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(365);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{cn} gateway"));
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(days);
    let leaf_cert = leaf.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.pem(),
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key.serialize_pem(),
    )
}

fn write_mode(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether curl trusting `ca` completes a TLS handshake and GET /healthz with the gateway.
fn curl_ok(d: &Deployment, ca: &std::path::Path) -> bool {
    let (ok, out, _) = postern_e2e::run(
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(ca)
            .arg(format!("{}/healthz", d.url())),
    );
    ok && out == "ok\n"
}

#[test]
fn gateway_certificate_from_files_reloads_on_sighup_without_dropping_sessions() {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&policy(echo.addr, 9));
    let (ca1, chain1, key1) = issue("Hospital CA one", 90);
    let (ca2, chain2, key2) = issue("Hospital CA two", 90);
    let (ca1_file, ca2_file) = (d.path("ca1.pem"), d.path("ca2.pem"));
    std::fs::write(&ca1_file, &ca1).unwrap();
    std::fs::write(&ca2_file, &ca2).unwrap();
    let (cert_file, key_file) = (d.path("tls/gateway.pem"), d.path("tls/gateway.key"));
    std::fs::create_dir_all(d.path("tls")).unwrap();
    write_mode(&cert_file, &chain1, 0o644);
    write_mode(&key_file, &key1, 0o600);
    d.append_config("[tls]\ncert_file = \"tls/gateway.pem\"\nkey_file = \"tls/gateway.key\"\n");
    d.start_gateway();

    // Clients see the certificate from the files; not the gateway's own CA.
    assert!(curl_ok(&d, &ca1_file));
    assert!(!curl_ok(&d, &d.ca_file()));
    // Enrolment still works: the connector's pin names the gateway's own CA.
    let mut d = d.with_connector(&allow_echo(&echo));

    let alice = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect_with_ca("echo", &alice, &ca1_file).unwrap();
    let mut live = postern_e2e::open_live(local);

    // New pair + SIGHUP: new handshakes get it, the live tunnel goes on.
    write_mode(&cert_file, &chain2, 0o644);
    write_mode(&key_file, &key2, 0o600);
    d.gateway.as_ref().unwrap().signal("HUP");
    let ev = d.wait_event("gateway.cert_reloaded", |_| true);
    assert!(s(&ev["detail"]).contains("Hospital CA two gateway"), "{ev}");
    assert!(curl_ok(&d, &ca2_file));
    assert!(!curl_ok(&d, &ca1_file));
    live.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    live.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // A key that does not belong to the certificate: refused, the running one stays.
    let (_, _, other_key) = issue("Other", 90);
    write_mode(&key_file, &other_key, 0o600);
    d.gateway.as_ref().unwrap().signal("HUP");
    let ev = d.wait_event("gateway.cert_rejected", |_| true);
    assert!(
        s(&ev["detail"]).contains("does not belong to the certificate"),
        "{ev}"
    );
    assert!(curl_ok(&d, &ca2_file));

    // A key file others can read: refused too.
    write_mode(&key_file, &key2, 0o644);
    d.gateway.as_ref().unwrap().signal("HUP");
    let ev = d.wait_event("gateway.cert_rejected", |e| {
        s(&e["detail"]).contains("mode 0644")
    });
    assert!(s(&ev["detail"]).contains("chmod 600"), "{ev}");
    // An expired certificate: refused.
    let (_, expired_chain, expired_key) = issue("Expired", -1);
    write_mode(&cert_file, &expired_chain, 0o644);
    write_mode(&key_file, &expired_key, 0o600);
    d.gateway.as_ref().unwrap().signal("HUP");
    d.wait_event("gateway.cert_rejected", |e| {
        s(&e["detail"]).contains("expired")
    });
    assert!(curl_ok(&d, &ca2_file));
    assert_eq!(d.count("gateway.cert_reloaded"), 1);
    assert!(d.gateway.as_mut().unwrap().is_running());
    live.write_all(b"and still").unwrap();
    let mut buf = [0u8; 9];
    live.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"and still");
    assert_eq!(d.count("session.end"), 0);
}

#[test]
fn ca_export_prints_either_ca() {
    let d = Deployment::gateway_only(&policy("127.0.0.1:1".parse().unwrap(), 9));
    let export = |which: &str| {
        postern_e2e::run(
            std::process::Command::new(postern_e2e::bin("postern-gateway"))
                .args(["ca", "export", "--which", which, "--config"])
                .arg(d.gateway_toml()),
        )
    };
    let (ok, out, err) = export("connector");
    assert!(ok, "{err}");
    assert_eq!(
        out,
        std::fs::read_to_string(d.path("gw/connector-ca.pem")).unwrap()
    );
    assert!(out.starts_with("-----BEGIN CERTIFICATE-----"));
    let (ok, out, err) = export("server");
    assert!(ok, "{err}");
    assert_eq!(out, std::fs::read_to_string(d.ca_file()).unwrap());
    let (ok, _, err) = export("both");
    assert!(!ok);
    assert!(err.contains("invalid value 'both'"), "{err}");

    // A gateway that never started has no CA: said so, nothing created.
    let fresh = Deployment::prepare(&policy("127.0.0.1:1".parse().unwrap(), 9));
    let (ok, _, err) = postern_e2e::run(
        std::process::Command::new(postern_e2e::bin("postern-gateway"))
            .args(["ca", "export", "--which", "connector", "--config"])
            .arg(fresh.gateway_toml()),
    );
    assert!(!ok);
    assert!(err.contains("has the gateway been started"), "{err}");
    assert!(!fresh.path("gw/connector-ca.pem").exists());
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let echo = Echo::start();
    let d = Deployment::start(&policy(echo.addr, 9), &allow_echo(&echo));
    let gateway_check = |config: &std::path::Path| {
        postern_e2e::run(
            std::process::Command::new(postern_e2e::bin("postern-gateway"))
                .args(["check", "--config"])
                .arg(config),
        )
    };
    let connector_check = |config: &std::path::Path| {
        postern_e2e::run(
            std::process::Command::new(postern_e2e::bin("postern-connector"))
                .args(["check", "--config"])
                .arg(config),
        )
    };
    // The running deployment passes: the gateway's ports are taken by the gateway itself,
    // which check recognises (safe_ops.rs tests that in detail).
    let (ok, out, err) = connector_check(&d.path("conn.toml"));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = gateway_check(&d.gateway_toml());
    assert!(ok, "{out}{err}");
    assert!(err.contains("in use by this gateway"), "{err}");

    // A broken gateway configuration: bad policy, open state dir, expired certificate with a
    // key of another certificate, readable by all, an audit directory that cannot exist, an
    // unreachable identity provider, a port in use.
    std::fs::write(d.path("bad-policy.toml"), "[[rules]]\nid = 1\n").unwrap();
    let (_, expired_chain, _) = issue("Expired", -3);
    let (_, _, other_key) = issue("Other", 30);
    write_mode(&d.path("expired.pem"), &expired_chain, 0o644);
    write_mode(&d.path("other.key"), &other_key, 0o644);
    write_mode(&d.path("idp-secret"), "s3cret", 0o600);
    std::fs::write(d.path("a-file"), "").unwrap();
    let idp = free_port();
    let bad = d.path("bad-gateway.toml");
    std::fs::write(
        &bad,
        format!(
            "state_dir = \"gw\"\npolicy = \"bad-policy.toml\"\naudit_dir = \"a-file/audit\"\n[listen]\nclients = \"127.0.0.1:{}\"\nconnectors = \"127.0.0.1:{}\"\n[tls]\ncert_file = \"expired.pem\"\nkey_file = \"other.key\"\n[oidc]\nissuer = \"http://127.0.0.1:{idp}\"\nclient_id = \"postern\"\nclient_secret_file = \"idp-secret\"\nredirect_url = \"https://127.0.0.1/auth/callback\"\ninsecure_http_issuer = true\n",
            d.client_port,
            free_port()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path("gw"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let (ok, out, err) = gateway_check(&bad);
    println!("gateway check took {:?}:\n{err}", started.elapsed());
    assert!(!ok, "{out}");
    for needle in [
        "error: policy ",
        "error: state_dir ",
        "chmod 700",
        "error: tls.cert_file ",
        "expired on",
        "error: tls.key_file: ",
        "mode 0644",
        "does not belong to the certificate",
        "error: listen.clients 127.0.0.1:",
        "error: audit_dir ",
        "error: oidc.insecure_http_issuer",
        "error: oidc.issuer: the identity provider's discovery document",
        "error: WebAuthn needs a host name as relying party id",
        "10 problem(s) in",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // A broken connector configuration: key readable by all, an admin port in use, a gateway
    // that cannot be reached and one that cannot be resolved.
    std::fs::set_permissions(
        d.path("conn/connector.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let closed = free_port();
    let bad = d.path("bad-connector.toml");
    std::fs::write(
        &bad,
        format!(
            "state_dir = \"conn\"\ngateways = [\"127.0.0.1:{closed}\", \"no-such-gateway.invalid:8444\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            d.client_port
        ),
    )
    .unwrap();
    let (ok, out, err) = connector_check(&bad);
    println!("connector check:\n{err}");
    assert!(!ok, "{out}");
    for needle in [
        "error: client key: ",
        "mode 0644",
        "error: admin.listen 127.0.0.1:",
        &format!("error: gateway 127.0.0.1:{closed}: cannot connect"),
        "error: gateway no-such-gateway.invalid:8444: cannot resolve",
        "warning: the allowlist is empty",
        "4 problem(s) in",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn the_grafana_dashboard_uses_real_metric_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let sources = [
        std::fs::read_to_string(root.join("gateway/src/metrics.rs")).unwrap(),
        std::fs::read_to_string(root.join("connector/src/metrics.rs")).unwrap(),
    ];
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("postern_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
            rest = &tail[end..];
        }
    }
    assert!(names.len() >= 20, "{names:?}");
    for n in &names {
        assert!(
            sources.iter().any(|s| s.contains(&format!("\"{n}\""))),
            "the dashboard names {n}, which no metrics.rs registers"
        );
    }
}
