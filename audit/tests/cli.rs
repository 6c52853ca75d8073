//! The `postern-audit` binary, run for real.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use postern_audit::{append_sync, DecisionRef, EndpointRef, Event, EventType};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postern-audit"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn write_sample(dir: &Path) {
    let endpoint = EndpointRef {
        name: "pacs-dicom".into(),
        site: "truro".into(),
        host: "10.0.0.5".into(),
        port: 104,
        protocol: "dicom".into(),
    };
    let events = [
        Event {
            gateway: Some("gw-1".into()),
            ..Event::new(EventType::GatewayStarted)
        },
        Event {
            session_id: Some("s1".into()),
            user: Some("alice".into()),
            endpoint: Some(endpoint.clone()),
            decision: Some(DecisionRef {
                effect: "allow".into(),
                rule: Some("rads".into()),
                policy_version: Some("v7".into()),
                reason: "group radiologists".into(),
            }),
            ..Event::new(EventType::SessionStart)
        },
        Event {
            session_id: Some("s2".into()),
            user: Some("bob".into()),
            endpoint: Some(endpoint.clone()),
            decision: Some(DecisionRef {
                effect: "deny".into(),
                rule: None,
                policy_version: Some("v7".into()),
                reason: "no rule matched".into(),
            }),
            ..Event::new(EventType::SessionDenied)
        },
        Event {
            session_id: Some("s1".into()),
            user: Some("alice".into()),
            endpoint: Some(endpoint),
            bytes_up: Some(10),
            bytes_down: Some(20),
            duration_ms: Some(30),
            close_reason: Some("client_closed".into()),
            ..Event::new(EventType::SessionEnd)
        },
    ];
    for e in &events {
        append_sync(dir, e).unwrap();
    }
}

#[test]
fn search_filters_and_prints_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample(tmp.path());
    let dir = tmp.path().to_str().unwrap();

    let out = run(&["search", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 5, "{text}");
    assert!(rows[0].starts_with("TIME"), "{text}");
    assert!(rows[1].contains("gateway.started"));
    assert!(
        rows[2].contains("allow (rads): group radiologists"),
        "{text}"
    );
    assert!(rows[3].contains("deny: no rule matched"), "{text}");
    assert!(
        rows[4].contains("client_closed") && rows[4].ends_with(" s1"),
        "{text}"
    );

    let out = run(&["search", dir, "--user", "alice"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().skip(1).all(|l| l.contains("alice")), "{text}");

    let out = run(&["search", dir, "--type", "session.*", "--session", "s2"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("session.denied"), "{text}");
}

#[test]
fn search_json_prints_stored_lines() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample(tmp.path());
    let stored = std::fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let stored: Vec<&str> = stored.lines().collect();

    let out = run(&[
        "search",
        tmp.path().to_str().unwrap(),
        "--type",
        "session.start",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n", stored[1]));
    let e: Event = serde_json::from_str(stdout(&out).trim_end()).unwrap();
    assert_eq!(e.user.as_deref(), Some("alice"));
}

#[test]
fn search_without_a_log_exits_1_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["search", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no audit log in"), "{err}");
    assert!(err.contains("audit.jsonl"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn search_reports_corrupt_lines_but_shows_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample(tmp.path());
    let path = tmp.path().join("audit.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.insert_str(0, "garbage\n");
    std::fs::write(&path, text).unwrap();

    let out = run(&["search", tmp.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 4);
    let err = stderr(&out);
    assert!(err.contains("line 1"), "{err}");
    assert!(err.contains("1 line(s)"), "{err}");
}
