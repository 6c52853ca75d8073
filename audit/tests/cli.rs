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
                ..DecisionRef::default()
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
                ..DecisionRef::default()
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

/// A known night at Truro, with fixed times.
fn write_night(dir: &Path) {
    use postern_audit::{DeviceRef, Event};
    let ep = |name: &str, site: &str| EndpointRef {
        name: name.into(),
        site: site.into(),
        host: format!("{name}.local"),
        port: 104,
        protocol: "dicom".into(),
    };
    let at = |ts: &str, e: Event| Event { ts: ts.into(), ..e };
    let events = [
        at(
            "2025-03-01T17:00:00.000000Z",
            Event {
                gateway: Some("gw-1".into()),
                ..Event::new(EventType::GatewayStarted)
            },
        ),
        at(
            "2025-03-01T22:15:02.123456Z",
            Event {
                session_id: Some("s1".into()),
                user: Some("sub-ann".into()),
                user_name: Some("Dr Ann Jones".into()),
                user_email: Some("ann.jones@nhs.example".into()),
                device: Some(DeviceRef {
                    id: "dev-42".into(),
                    name: Some("RAD-LAPTOP-042".into()),
                    user_verified: Some(true),
                }),
                endpoint: Some(ep("truro-pacs", "truro")),
                decision: Some(DecisionRef {
                    effect: "allow".into(),
                    rule: Some("rads".into()),
                    policy_version: None,
                    reason: "group radiologists".into(),
                    ..DecisionRef::default()
                }),
                ..Event::new(EventType::SessionStart)
            },
        ),
        at(
            "2025-03-01T22:20:00.000000Z",
            Event {
                session_id: Some("s2".into()),
                user: Some("sub-bob".into()),
                user_email: Some("bob@nhs.example".into()),
                device: Some(DeviceRef {
                    id: "dev-77".into(),
                    name: None,
                    user_verified: None,
                }),
                endpoint: Some(ep("truro-rdp", "truro")),
                justification: Some("stroke call, consultant unavailable".into()),
                ..Event::new(EventType::SessionStart)
            },
        ),
        at(
            "2025-03-01T22:30:00.000000Z",
            Event {
                session_id: Some("s3".into()),
                user: Some("sub-carol".into()),
                endpoint: Some(ep("truro-pacs", "truro")),
                decision: Some(DecisionRef {
                    effect: "deny".into(),
                    rule: None,
                    policy_version: None,
                    reason: "no rule matched".into(),
                    ..DecisionRef::default()
                }),
                ..Event::new(EventType::SessionDenied)
            },
        ),
        at(
            "2025-03-01T23:16:04.123456Z",
            Event {
                session_id: Some("s1".into()),
                user: Some("sub-ann".into()),
                user_email: Some("ann.jones@nhs.example".into()),
                endpoint: Some(ep("truro-pacs", "truro")),
                bytes_up: Some(1536),
                bytes_down: Some(5 * 1024 * 1024 * 1024),
                duration_ms: Some(3_662_000),
                close_reason: Some("client_closed".into()),
                ..Event::new(EventType::SessionEnd)
            },
        ),
        at(
            "2025-03-02T01:00:00.000000Z",
            Event {
                session_id: Some("s4".into()),
                user: Some("sub-ann".into()),
                user_email: Some("ann.jones@nhs.example".into()),
                endpoint: Some(ep("bodmin-pacs", "bodmin")),
                ..Event::new(EventType::SessionStart)
            },
        ),
        at(
            "2025-03-02T02:20:00.000000Z",
            Event {
                session_id: Some("s2".into()),
                user: Some("sub-bob".into()),
                endpoint: Some(ep("truro-rdp", "truro")),
                bytes_up: Some(10),
                bytes_down: Some(20),
                close_reason: Some("policy_revoked".into()),
                ..Event::new(EventType::SessionTerminated)
            },
        ),
        at(
            "2025-03-02T03:00:00.000000Z",
            Event {
                session_id: Some("s0".into()),
                user: Some("sub-dave".into()),
                endpoint: Some(ep("truro-pacs", "truro")),
                duration_ms: Some(59_000),
                close_reason: Some("idle_timeout".into()),
                ..Event::new(EventType::SessionEnd)
            },
        ),
    ];
    for e in &events {
        append_sync(dir, e).unwrap();
    }
}

#[test]
fn sessions_report_matches_a_known_log() {
    let tmp = tempfile::tempdir().unwrap();
    write_night(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let out = run(&["sessions", dir, "--connections"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = "\
SESSION                               USER                     DEVICE           ENDPOINT                   START                END                   DURATION         UP       DOWN CLOSE            WEB                                  JUSTIFICATION
s1                                    ann.jones@nhs.example    RAD-LAPTOP-042   truro-pacs@truro           2025-03-01 22:15:02Z 2025-03-01 23:16:04Z  1h01m02s    1.5 KiB    5.0 GiB client_closed    -                                    -
s2                                    bob@nhs.example          dev-77           truro-rdp@truro            2025-03-01 22:20:00Z 2025-03-02 02:20:00Z  4h00m00s       10 B       20 B policy_revoked   -                                    stroke call, consultant unavailable
s4                                    ann.jones@nhs.example    -                bodmin-pacs@bodmin         2025-03-02 01:00:00Z -                            -          -          - open             -                                    -
s0                                    sub-dave                 -                truro-pacs@truro           -                    2025-03-02 03:00:00Z       59s          -          - idle_timeout     -                                    -
";
    assert_eq!(stdout(&out), expected);

    let out = run(&[
        "sessions",
        dir,
        "--connections",
        "--csv",
        "--endpoint",
        "truro-pacs",
    ]);
    assert_eq!(
        stdout(&out),
        "session_id,user,user_name,user_email,device,endpoint,site,source,start_utc,end_utc,duration_ms,bytes_up,bytes_down,close_reason,justification,rule,protocol,requests,requests_recorded,sampled,objects
s1,sub-ann,Dr Ann Jones,ann.jones@nhs.example,RAD-LAPTOP-042,truro-pacs,truro,,2025-03-01 22:15:02,2025-03-01 23:16:04,3662000,1536,5368709120,client_closed,,rads,dicom,,,,
s0,sub-dave,,,,truro-pacs,truro,,,2025-03-02 03:00:00,59000,,,idle_timeout,,,dicom,,,,
"
    );
    let out = run(&[
        "sessions",
        dir,
        "--connections",
        "--json",
        "--user",
        "ANN.JONES@nhs.example",
    ]);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["session_id"], "s1");
    assert_eq!(rows[0]["bytes_down"], 5_368_709_120u64);
    assert_eq!(rows[1]["session_id"], "s4");
    assert_eq!(rows[1]["close_reason"], "open");
}

#[test]
fn who_reached_truro_pacs_last_night() {
    let tmp = tempfile::tempdir().unwrap();
    write_night(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let out = run(&[
        "search",
        dir,
        "--endpoint",
        "truro-pacs",
        "--since",
        "2025-03-01T18:00:00Z",
        "--until",
        "2025-03-02T08:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[0].contains("session.start") && rows[0].contains("ann.jones@nhs.example"));
    assert!(rows[1].contains("session.denied") && rows[1].contains("deny: no rule matched"));
    assert!(rows[2].contains("session.end") && rows[2].contains("client_closed"));
    assert!(rows[3].contains("sub-dave"));
    // Only the ones let in, local time in the query.
    let out = run(&[
        "search",
        dir,
        "--endpoint",
        "truro-pacs",
        "--decision",
        "allow",
        "--since",
        "2025-03-01T19:00:00+01:00",
    ]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    let out = run(&[
        "search",
        dir,
        "--endpoint",
        "truro-*",
        "--type",
        "session.start",
    ]);
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
    let out = run(&["search", dir, "--device", "RAD-LAPTOP-042", "--json"]);
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = run(&["search", dir, "--site", "bodmin", "--type", "session.*"]);
    assert!(stdout(&out).contains("bodmin-pacs@bodmin"));
    assert_eq!(stdout(&out).lines().count(), 2);
    let out = run(&["search", dir, "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
}

#[test]
fn export_json_csv_and_syslog() {
    let tmp = tempfile::tempdir().unwrap();
    write_night(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let stored = std::fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();

    let out = run(&["export", dir, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        stored,
        "JSON export is the stored lines, hashes included"
    );

    let out = run(&[
        "export",
        dir,
        "--format",
        "csv",
        "--since",
        "2025-03-01",
        "--until",
        "2025-04-01",
    ]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 8);
    assert!(lines[0]
        .starts_with("seq,ts_utc,type,session_id,user,user_name,user_email,groups,device_id"));
    assert!(
        lines[2].starts_with("2,2025-03-01 22:15:02,session.start,s1,sub-ann,Dr Ann Jones,"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("\"stroke call, consultant unavailable\""),
        "{}",
        lines[3]
    );

    let out = run(&[
        "export",
        dir,
        "--format",
        "syslog",
        "--type",
        "session.denied",
    ]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1);
    assert!(
        text.starts_with("<108>1 2025-03-01T22:30:00.000000Z - postern - session.denied [postern@32473 seq=\"4\" hash=\""),
        "{text}"
    );
    let out = run(&["export", dir, "--format", "csv", "--to", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--format syslog"), "{}", stderr(&out));
}
