//! Connector certificates with the real binaries: a superseded certificate (a copy of the
//! connector's state taken before a renewal) cannot renew, and the current one keeps working;
//! an enrolment whose hostname is not a DNS name is refused, and `connector list` never prints
//! control characters, even from an edited state file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postern_e2e::{bin, echo_policy, echo_roundtrip, run, wait_for, Deployment, Echo};
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_superseded_connector_certificate_cannot_renew_and_the_current_one_keeps_working() {
    let echo = Echo::start();
    let mut d = Deployment::prepare_with(
        &echo_policy(echo.addr),
        "connector_cert_validity = \"30s\"\n",
    );
    d.start_gateway();
    let allow = vec![("127.0.0.1/32", echo.addr.port().to_string())];
    d.connector_id = d.enroll_connector("conn", "truro");
    let id = d.connector_id.clone();
    // Someone copies the connector's state (key and certificate) before it renews.
    copy_dir(&d.path("conn"), &d.path("stolen"));
    d.write_connector_toml("conn", &allow, None);
    d.write_connector_toml("stolen", &allow, None);
    d.start_connector("conn");
    let first = s(&d.state_connector(&id)["serial"]).to_owned();

    // The real connector renews at two thirds of 30 s.
    d.wait_event("connector.renewed", |e| e["connector"]["id"] == id.as_str());
    let current = s(&d.state_connector(&id)["serial"]).to_owned();
    assert_ne!(current, first);

    // The copy's renewal is due already: it tries at once and is refused, as an alert.
    let mut stolen = d.spawn_connector("stolen");
    let ev = d.wait_event("connector.renewal_refused", |e| {
        e["connector"]["id"] == id.as_str()
    });
    let detail = s(&ev["detail"]);
    assert!(detail.starts_with("superseded_certificate:"), "{ev}");
    assert!(detail.contains(&first), "names the superseded serial: {ev}");
    assert!(
        !detail.contains(&current),
        "does not reveal the current serial: {ev}"
    );
    assert!(ev["source"].as_str().is_some(), "{ev}");
    let log = wait_for(
        "the refusal in the copy's log",
        Duration::from_secs(10),
        || {
            let l = stolen.log_text();
            l.contains("client certificate renewal failed").then_some(l)
        },
    );
    assert!(log.contains("superseded"), "{log}");
    assert!(log.contains("enroll --force"), "{log}");
    stolen.kill();
    // Nothing was issued to the copy: the record still names the real connector's certificate.
    let rec = d.state_connector(&id);
    assert_eq!(s(&rec["serial"]), current, "{rec}");
    assert_eq!(d.count("connector.renewed"), 1);

    // The current certificate still works: the real connector reconnects and carries a tunnel.
    let refused_before = d.count("connector.refused");
    d.connector.as_mut().unwrap().kill();
    d.start_connector("conn");
    let alice = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (_c, local) = d.connect("echo", &alice).unwrap();
    assert_eq!(echo_roundtrip(local, b"still here").unwrap(), b"still here");
    assert_eq!(d.count("connector.refused"), refused_before);
}

/// `POST /v1/enroll` with curl: (HTTP status, body).
fn post_enroll(d: &Deployment, body: &Value) -> (u16, String) {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(d.ca_file())
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("{}/v1/enroll", d.url())));
    assert!(ok, "curl: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[test]
fn an_enrolment_with_a_hostname_that_is_not_a_dns_name_is_refused_and_listings_stay_printable() {
    let d = Deployment::gateway_only(&echo_policy("127.0.0.1:9".parse().unwrap()));
    // What the connector sends: the secret part of `pte1.<secret>.<pin>` (proto::enroll).
    let token = d.enroll_token("truro", "10m");
    let secret = token.split('.').nth(1).unwrap().to_owned();
    assert_eq!(secret.len(), 64, "{token}");
    for bad in ["evil\u{1b}[2J", "a b", "host\u{202e}name", &"x".repeat(64)] {
        let (status, body) = post_enroll(
            &d,
            &serde_json::json!({"token": secret, "csr_pem": csr_pem(), "hostname": bad}),
        );
        assert_eq!(status, 400, "{bad:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "bad_hostname", "{body}");
        assert!(s(&v["message"]).contains("hostname"), "{body}");
        assert!(!s(&v["message"]).chars().any(char::is_control), "{body}");
    }
    // The audit writer runs beside the request: the answer can arrive before the
    // event is on disk, so wait for all four refusals.
    let failed = wait_for(
        "four connector.enroll_failed events",
        Duration::from_secs(20),
        || {
            let failed = d.events("connector.enroll_failed");
            (failed.len() >= 4).then_some(failed)
        },
    );
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(d.events("connector.enrolled").is_empty());
    assert!(
        s(&failed[0]["detail"]).contains("bad hostname"),
        "{failed:?}"
    );

    // The token was not used up by the refusals: a good name enrols with it.
    let (status, body) = post_enroll(
        &d,
        &serde_json::json!({"token": secret, "csr_pem": csr_pem(), "hostname": "pacs-gw01.truro.nhs.uk"}),
    );
    assert_eq!(status, 200, "{body}");

    // Whatever the store holds, `connector list` prints no control characters.
    let mut state = d.state();
    state["connectors"][0]["hostname"] = Value::from("x\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}1m");
    d.replace_state(&state);
    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["connector", "list", "--config"])
        .arg(d.gateway_toml()));
    assert!(ok, "{err}");
    let unsafe_chars: Vec<char> = out
        .chars()
        .filter(|c| *c != '\n' && c.is_control())
        .collect();
    assert!(unsafe_chars.is_empty(), "{unsafe_chars:?} in {out:?}");
    assert!(
        out.contains("x\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\u{9b}1m"),
        "{out}"
    );
}
