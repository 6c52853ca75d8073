//! Web application sessions in the audit reports: `sessions` beside tunnels, `search` of
//! `web.request` events, and `access` ("who opened this study?"). Every fixture log is written
//! through the crate's own writer, signed, so it is a chain `verify` accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{run, signed_options, stderr, stdout};
use postern_audit::{
    AuditLog, DecisionRef, DeviceRef, EndpointRef, Event, EventType, HttpRef, ObjectRef,
};
use serde_json::Value;

const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
const SERIES: &str = "1.2.826.0.1.3680043.8.498.2";
const STUDY2: &str = "1.2.826.0.1.3680043.8.498.7";
const NEVER: &str = "1.2.826.0.1.3680043.8.498.99";

fn viewer() -> EndpointRef {
    EndpointRef {
        name: "truro-viewer".into(),
        site: "truro".into(),
        host: "orthanc.truro.nhs.uk".into(),
        port: 443,
        protocol: "https".into(),
    }
}

fn pacs() -> EndpointRef {
    EndpointRef {
        name: "truro-pacs".into(),
        site: "truro".into(),
        host: "10.1.2.3".into(),
        port: 104,
        protocol: "dicom".into(),
    }
}

/// Who a session is: subject, display name, email, device name (or none), source.
struct Who {
    user: &'static str,
    name: &'static str,
    email: &'static str,
    device: (&'static str, Option<&'static str>),
    source: &'static str,
}

const ANN: Who = Who {
    user: "sub-ann",
    name: "Dr Ann Jones",
    email: "ann.jones@nhs.example",
    device: ("dev-42", Some("RAD-LAPTOP-042")),
    source: "203.0.113.7:51234",
};
const BOB: Who = Who {
    user: "sub-bob",
    name: "Dr Bob Smith",
    email: "bob.smith@nhs.example",
    device: ("dev-77", None),
    source: "198.51.100.4:40100",
};
const CAROL: Who = Who {
    user: "sub-carol",
    name: "Carol White",
    email: "carol.white@nhs.example",
    device: ("dev-9", Some("WARD-PC-9")),
    source: "192.0.2.50:50000",
};

fn start(ts: &str, session: &str, who: &Who, endpoint: EndpointRef) -> Event {
    Event {
        ts: ts.into(),
        session_id: Some(session.into()),
        user: Some(who.user.into()),
        user_name: Some(who.name.into()),
        user_email: Some(who.email.into()),
        device: Some(DeviceRef {
            id: who.device.0.into(),
            name: who.device.1.map(Into::into),
            user_verified: Some(true),
        }),
        source: Some(who.source.into()),
        endpoint: Some(endpoint),
        decision: Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("viewer-read-only".into()),
            reason: "group radiologists".into(),
            ..DecisionRef::default()
        }),
        ..Event::new(EventType::SessionStart)
    }
}

fn end(ts: &str, session: &str, who: &Who, kind: EventType, reason: &str) -> Event {
    Event {
        ts: ts.into(),
        session_id: Some(session.into()),
        user: Some(who.user.into()),
        bytes_up: Some(2048),
        bytes_down: Some(3 * 1024 * 1024),
        close_reason: Some(reason.into()),
        ..Event::new(kind)
    }
}

/// A `web.request` as the gateway writes it: objects from the DICOMweb path.
fn request(ts: &str, session: &str, who: &Who, path: &str, sampled: Option<u32>) -> Event {
    let mut objects = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let kind = match *part {
            "studies" => "study",
            "series" => "series",
            "instances" => "instance",
            _ => continue,
        };
        if let Some(id) = parts.get(i + 1) {
            objects.push(ObjectRef {
                kind: kind.into(),
                id: (*id).into(),
            });
        }
    }
    Event {
        ts: ts.into(),
        session_id: Some(session.into()),
        user: Some(who.user.into()),
        endpoint: Some(viewer()),
        http: Some(HttpRef {
            method: "GET".into(),
            path: path.into(),
            status: 200,
            bytes_up: 0,
            bytes_down: 1536,
            duration_ms: 42,
            sampled,
        }),
        objects: (!objects.is_empty()).then_some(objects),
        ..Event::new(EventType::WebRequest)
    }
}

fn study_path(study: &str) -> String {
    format!("/dicom-web/studies/{study}")
}

/// The morning of 3 March: a tunnel, Ann's viewer session (every request recorded), Bob's
/// (sampled 1 in 10, ended by the gateway), Carol's (opened, nothing requested), a refusal.
fn morning() -> Vec<Event> {
    let series_path = format!("/dicom-web/studies/{STUDY}/series/{SERIES}");
    vec![
        start("2025-03-03T08:55:00.000000Z", "t1", &ANN, pacs()),
        start("2025-03-03T09:00:00.000000Z", "w1", &ANN, viewer()),
        request(
            "2025-03-03T09:00:01.000000Z",
            "w1",
            &ANN,
            "/app/explorer.html",
            None,
        ),
        request(
            "2025-03-03T09:01:00.000000Z",
            "w1",
            &ANN,
            &study_path(STUDY),
            None,
        ),
        request(
            "2025-03-03T09:02:11.000000Z",
            "w1",
            &ANN,
            &series_path,
            None,
        ),
        request(
            "2025-03-03T09:05:00.000000Z",
            "w1",
            &ANN,
            &study_path(STUDY2),
            None,
        ),
        end(
            "2025-03-03T09:10:00.000000Z",
            "t1",
            &ANN,
            EventType::SessionEnd,
            "client_closed",
        ),
        end(
            "2025-03-03T09:20:00.000000Z",
            "w1",
            &ANN,
            EventType::SessionEnd,
            "signed_out",
        ),
        start("2025-03-03T10:00:00.000000Z", "w2", &BOB, viewer()),
        request(
            "2025-03-03T10:01:00.000000Z",
            "w2",
            &BOB,
            &study_path(STUDY),
            Some(10),
        ),
        request(
            "2025-03-03T10:02:00.000000Z",
            "w2",
            &BOB,
            &study_path(STUDY),
            Some(10),
        ),
        request(
            "2025-03-03T10:03:00.000000Z",
            "w2",
            &BOB,
            &format!("/dicom-web/studies/{STUDY}/series/{SERIES}/instances/1.2.3.4"),
            Some(10),
        ),
        Event {
            ts: "2025-03-03T10:10:00.000000Z".into(),
            session_id: Some("d1".into()),
            user: Some("sub-eve".into()),
            endpoint: Some(viewer()),
            decision: Some(DecisionRef {
                effect: "deny".into(),
                reason: "no rule matched".into(),
                ..DecisionRef::default()
            }),
            ..Event::new(EventType::SessionDenied)
        },
        end(
            "2025-03-03T10:30:00.000000Z",
            "w2",
            &BOB,
            EventType::SessionTerminated,
            "device_revoked",
        ),
        start("2025-03-03T11:00:00.000000Z", "w3", &CAROL, viewer()),
        end(
            "2025-03-03T11:05:00.000000Z",
            "w3",
            &CAROL,
            EventType::SessionEnd,
            "signed_out",
        ),
    ]
}

/// Writes `events` through the writer (signed checkpoints, closed), as gateway `node`.
fn write_log(dir: &Path, key_dir: &Path, node: &str, events: Vec<Event>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = signed_options(key_dir, 5);
        options.node_id = Some(node.into());
        let log = AuditLog::open_with(dir, options).await.unwrap();
        for e in events {
            log.record(e).await.unwrap();
        }
        log.close().await.unwrap();
    });
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: String,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    write_log(&dir, &tmp.path().join("state"), "gw-1", morning());
    let out = run(&["verify", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    Fixture {
        dir: dir.to_str().unwrap().to_owned(),
        _tmp: tmp,
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sessions_show_web_sessions_beside_tunnels_once_each() {
    let f = fixture();
    let out = run(&["sessions", &f.dir, "--connections", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&stdout(&out));
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for row in &rows {
        by_id
            .entry(row["session_id"].as_str().unwrap())
            .or_default()
            .push(row);
    }
    // Every session of the fixture exactly once, ended or terminated (d1 was refused).
    let mut found = 0;
    for id in ["t1", "w1", "w2", "w3"] {
        assert_eq!(by_id.get(id).map(Vec::len), Some(1), "{id}: {rows:#?}");
        found += 1;
    }
    assert_eq!(found, 4);
    assert_eq!(rows.len(), found, "{rows:#?}");

    let row = |id: &str| by_id[id][0];
    // A tunnel: no web members.
    assert_eq!(row("t1")["protocol"], "dicom");
    assert!(row("t1").get("requests").is_none(), "{:#}", row("t1"));
    // Every request recorded: exact.
    assert_eq!(row("w1")["protocol"], "https");
    assert_eq!(row("w1")["requests"], 4);
    assert_eq!(row("w1")["requests_recorded"], 4);
    assert!(row("w1").get("sampled").is_none());
    assert_eq!(
        row("w1")["objects"],
        serde_json::json!({"study": 2, "series": 1})
    );
    assert_eq!(row("w1")["close_reason"], "signed_out");
    assert_eq!(row("w1")["user_name"], "Dr Ann Jones");
    // Sampled 1 in 10: an estimate; terminated by the gateway, still one row.
    assert_eq!(row("w2")["requests"], 30);
    assert_eq!(row("w2")["requests_recorded"], 3);
    assert_eq!(row("w2")["sampled"], 10);
    assert_eq!(
        row("w2")["objects"],
        serde_json::json!({"study": 1, "series": 1, "instance": 1})
    );
    assert_eq!(row("w2")["close_reason"], "device_revoked");
    // A web session that requested nothing.
    assert_eq!(row("w3")["requests"], 0);
    assert!(row("w3").get("objects").is_none());

    // The table: one line per session, the WEB column says what it did.
    let out = run(&["sessions", &f.dir, "--connections"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].contains(" CLOSE ") && lines[0].contains(" WEB "),
        "{text}"
    );
    let line = |id: &str| {
        let found: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{id} ")))
            .collect();
        assert_eq!(found.len(), 1, "{id}: {text}");
        *found[0]
    };
    assert!(
        line("w1").contains(" 4 requests, 2 studies, 1 series "),
        "{text}"
    );
    assert!(
        line("w2").contains(" ~30 requests (1 in 10 recorded), 1 study, 1 series, 1 instance "),
        "{text}"
    );
    assert!(line("w3").contains(" 0 requests "), "{text}");
    assert!(line("t1").contains(" client_closed    - "), "{text}");
    // Columns line up: WEB starts at the same place in the header and in every row.
    let at = lines[0].find("WEB").unwrap();
    assert_eq!(&line("w1")[at..at + 10], "4 requests", "{text}");

    // CSV: the session columns as before, the web ones after them.
    let out = run(&["sessions", &f.dir, "--connections", "--csv"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "session_id,user,user_name,user_email,device,endpoint,site,source,start_utc,end_utc,duration_ms,bytes_up,bytes_down,close_reason,justification,rule,protocol,requests,requests_recorded,sampled,objects"
    );
    let w2 = lines.iter().find(|l| l.starts_with("w2,")).unwrap();
    assert!(
        w2.ends_with(",device_revoked,,viewer-read-only,https,30,3,10,study:1;series:1;instance:1"),
        "{w2}"
    );
    let t1 = lines.iter().find(|l| l.starts_with("t1,")).unwrap();
    assert!(t1.ends_with(",viewer-read-only,dicom,,,,"), "{t1}");
}

#[test]
fn sessions_by_object_lists_the_sessions_that_opened_it() {
    let f = fixture();
    let out = run(&[
        "sessions",
        &f.dir,
        "--connections",
        "--json",
        "--object",
        STUDY,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .map(|r| r["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["w1", "w2"]);
    let out = run(&[
        "sessions",
        &f.dir,
        "--connections",
        "--json",
        "--object",
        STUDY2,
    ]);
    assert_eq!(json_lines(&stdout(&out)).len(), 1);
    let out = run(&[
        "sessions",
        &f.dir,
        "--connections",
        "--json",
        "--object",
        NEVER,
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");
}

#[test]
fn search_finds_web_requests_by_type_and_object_and_shows_them_readably() {
    let f = fixture();
    let out = run(&["search", &f.dir, "--type", "web.*", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|r| r["type"] == "web.request"));

    let out = run(&["search", &f.dir, "--type", "web.request", "--object", STUDY]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 5, "{text}");
    assert!(
        lines[1].contains(&format!(
            "web.request             sub-ann              truro-viewer@truro     GET /dicom-web/studies/{STUDY} -> 200, 1.5 KiB down, 42 ms; study {STUDY} w1"
        )),
        "{text}"
    );
    assert!(
        lines[3].contains(&format!(
            "-> 200, 1.5 KiB down, 42 ms, sampled 1 in 10; study {STUDY} w2"
        )),
        "{text}"
    );
    // A series UID is an object too (any kind).
    let out = run(&["search", &f.dir, "--object", SERIES, "--json"]);
    assert_eq!(json_lines(&stdout(&out)).len(), 2);
    // A UID in a path only (no objects member) is not an access: none here.
    let out = run(&["search", &f.dir, "--object", "1.2.3"]);
    assert_eq!(stdout(&out).lines().count(), 1);

    // CSV: the http members and the objects in their own columns.
    let out = run(&[
        "search",
        &f.dir,
        "--csv",
        "--session",
        "w2",
        "--type",
        "web.*",
    ]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(",detail,http_method,http_path,http_status,http_bytes_up,http_bytes_down,http_duration_ms,http_sampled,objects,signin"),
        "{text}"
    );
    assert!(
        lines[1].ends_with(&format!(
            ",GET,/dicom-web/studies/{STUDY},200,0,1536,42,10,study:{STUDY},"
        )),
        "{text}"
    );
}

#[test]
fn access_lists_every_session_that_opened_a_study() {
    let f = fixture();
    let out = run(&["access", &f.dir, "--study", STUDY]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("FIRST "), "{text}");
    for (want, line) in [
        (
            [
                "2025-03-03 09:01:00Z",
                "2025-03-03 09:02:11Z",
                "Dr Ann Jones <ann.jones@nhs.example>",
                "RAD-LAPTOP-042",
                "203.0.113.7:51234",
                "truro-viewer@truro",
                " w1 ",
            ],
            lines[1],
        ),
        (
            [
                "2025-03-03 10:01:00Z",
                "2025-03-03 10:03:00Z",
                "Dr Bob Smith <bob.smith@nhs.example>",
                "dev-77",
                "198.51.100.4:40100",
                "truro-viewer@truro",
                " w2 ",
            ],
            lines[2],
        ),
    ] {
        for w in want {
            assert!(line.contains(w), "{w:?} missing from {line:?}\n{text}");
        }
    }
    assert!(lines[1].ends_with(" 2"), "{text}");
    assert!(lines[2].ends_with(" ~30 (1 in 10 recorded)"), "{text}");
    // Sampling may hide sessions: said on stderr.
    assert!(
        stderr(&out).contains("requests to truro-viewer (1 in 10) were sampled"),
        "{}",
        stderr(&out)
    );

    let out = run(&["access", &f.dir, "--study", STUDY, "--json"]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["session_id"], "w1");
    assert_eq!(rows[0]["user"], "sub-ann");
    assert_eq!(rows[0]["user_email"], "ann.jones@nhs.example");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["session_start_found"], true);
    assert_eq!(
        rows[0]["objects"],
        serde_json::json!([{"kind": "study", "id": STUDY}])
    );
    assert_eq!(rows[1]["requests"], 30);
    assert_eq!(rows[1]["requests_recorded"], 3);
    assert_eq!(rows[1]["sampled"], 10);

    let out = run(&["access", &f.dir, "--study", STUDY, "--csv"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "session_id,first_utc,last_utc,user,user_name,user_email,device,source,endpoint,site,requests,requests_recorded,sampled,objects,calling_ae,queries,retrieves,stores,instances"
    );
    assert_eq!(
        lines[1],
        format!("w1,2025-03-03 09:01:00,2025-03-03 09:02:11,sub-ann,Dr Ann Jones,ann.jones@nhs.example,RAD-LAPTOP-042,203.0.113.7:51234,truro-viewer,truro,2,2,,study:{STUDY},,0,0,0,0")
    );
    assert_eq!(lines.len(), 3);

    // A series: only the sessions that opened it; several objects: any of them, and which.
    let out = run(&["access", &f.dir, "--series", SERIES, "--json"]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let out = run(&["access", &f.dir, "--study", STUDY2, "--instance", "1.2.3.4"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().next().unwrap().ends_with("OBJECTS"), "{text}");
    assert!(text.contains(&format!("study {STUDY2}")), "{text}");
    assert!(text.contains("instance 1.2.3.4"), "{text}");

    // --since/--until bound the accesses.
    let out = run(&[
        "access",
        &f.dir,
        "--study",
        STUDY,
        "--since",
        "2025-03-03T09:30:00Z",
        "--json",
    ]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["session_id"], "w2");
}

#[test]
fn access_with_no_match_says_so_and_succeeds() {
    let f = fixture();
    let out = run(&["access", &f.dir, "--study", NEVER]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Without --since/--until: the span of the log read (here up to the writer's closing
    // checkpoint, written now).
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "no access to study {NEVER} recorded between 2025-03-03T08:55:00Z and "
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    let out = run(&[
        "access",
        &f.dir,
        "--study",
        NEVER,
        "--since",
        "2025-03-01",
        "--until",
        "2025-04-01",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!("no access to study {NEVER} recorded between 2025-03-01T00:00:00Z and 2025-04-01T00:00:00Z\n")
    );
    // Machine formats: nothing (CSV: the header) on stdout, the sentence on stderr.
    let out = run(&["access", &f.dir, "--study", NEVER, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains(&format!("no access to study {NEVER} recorded")));
    let out = run(&["access", &f.dir, "--series", NEVER, "--csv"]);
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(stderr(&out).contains(&format!("no access to series {NEVER} recorded")));
}

#[test]
fn access_refuses_a_malformed_uid_as_a_usage_error() {
    let f = fixture();
    for bad in [
        "1.2.abc",
        "../1.2",
        "1..2",
        "",
        &"1".repeat(65),
        "1.2.3;DROP",
    ] {
        let out = run(&["access", &f.dir, "--study", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("not a DICOM UID"), "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
    let out = run(&["access", &f.dir, "--instance", "x"]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing to look for is a usage error too.
    let out = run(&["access", &f.dir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--study"), "{}", stderr(&out));
}

#[test]
fn a_web_session_across_replicas_is_one_row_with_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("gw-a"), tmp.path().join("gw-b"));
    // The start on A; requests on both (the browser's connections went to either); the end on
    // B; a request B's clock put before the start; a request after the end.
    write_log(
        &a,
        &tmp.path().join("ka"),
        "gw-a",
        vec![
            start("2025-03-03T09:00:00.000000Z", "w1", &ANN, viewer()),
            request(
                "2025-03-03T09:01:00.000000Z",
                "w1",
                &ANN,
                &study_path(STUDY),
                None,
            ),
        ],
    );
    write_log(
        &b,
        &tmp.path().join("kb"),
        "gw-b",
        vec![
            request(
                "2025-03-03T08:59:59.000000Z",
                "w1",
                &ANN,
                "/app/index.html",
                None,
            ),
            request(
                "2025-03-03T09:02:00.000000Z",
                "w1",
                &ANN,
                &study_path(STUDY),
                None,
            ),
            end(
                "2025-03-03T09:20:00.000000Z",
                "w1",
                &ANN,
                EventType::SessionEnd,
                "signed_out",
            ),
            request(
                "2025-03-03T09:20:01.000000Z",
                "w1",
                &ANN,
                "/app/late.js",
                None,
            ),
        ],
    );
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = run(&["sessions", a, b, "--connections", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["session_id"], "w1");
    assert_eq!(rows[0]["start"], "2025-03-03T09:00:00.000000Z");
    assert_eq!(rows[0]["user_name"], "Dr Ann Jones");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[0]["start_replica"], "gw-a");
    assert_eq!(rows[0]["end_replica"], "gw-b");
    assert!(
        stderr(&out).contains("1 web request(s) came after their session had ended"),
        "{}",
        stderr(&out)
    );

    let out = run(&["access", a, b, "--study", STUDY, "--json"]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["first"], "2025-03-03T09:01:00.000000Z");
    assert_eq!(rows[0]["last"], "2025-03-03T09:02:00.000000Z");
    assert_eq!(rows[0]["source"], ANN.source);

    // B alone: its requests make a row of their own (the start is not in it), once.
    let out = run(&["sessions", b, "--connections", "--json"]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["start"], "");
    assert_eq!(rows[0]["close_reason"], "signed_out");
    assert_eq!(rows[0]["requests"], 2);
    let out = run(&["access", b, "--study", STUDY, "--json"]);
    let rows = json_lines(&stdout(&out));
    assert_eq!(rows[0]["session_start_found"], false);
    assert_eq!(rows[0]["user"], "sub-ann");
}

/// The samples in docs/auditor-guide.md are this code's output on this fixture.
#[test]
fn the_auditor_guide_shows_real_output() {
    let f = fixture();
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/auditor-guide.md"
    ))
    .unwrap();
    let (mut checked, mut missing) = (0, Vec::new());
    for args in [
        vec!["sessions", &f.dir, "--endpoint", "truro-viewer"],
        vec!["search", &f.dir, "--session", "w2", "--type", "web.*"],
        vec!["access", &f.dir, "--study", STUDY],
        vec![
            "access",
            &f.dir,
            "--study",
            NEVER,
            "--since",
            "2025-03-01",
            "--until",
            "2025-04-01",
        ],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        if !guide.contains(&text) {
            missing.push(format!("{}:\n{text}", args[0]));
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
    assert!(
        missing.is_empty(),
        "docs/auditor-guide.md should show this output:\n{}",
        missing.join("\n")
    );
}

/// docs/audit.md names every event type this version writes.
#[test]
fn every_event_type_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.md")).unwrap();
    let mut checked = 0;
    for t in EventType::ALL {
        assert!(
            doc.contains(&format!("`{}`", t.as_str())),
            "docs/audit.md does not document {t}"
        );
        checked += 1;
    }
    assert_eq!(checked, EventType::ALL.len());
    assert!(checked > 40);
    for field in ["`http`", "`objects`", "`sampled`", "`web.request`"] {
        assert!(doc.contains(field), "{field}");
    }
}
