//! What an auditor hands on: `sessions` as visits, `--user` by any case, name or email, one
//! row per session even when the gateway terminated it, `report --user` / `--break-glass` as
//! text, CSV and HTML, and CSV times a spreadsheet reads. The fixture log is written through
//! the crate's writer and verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{run, signed_options, stderr, stdout};
use postern_audit::{AuditLog, DecisionRef, DeviceRef, EndpointRef, Event, EventType};
use serde_json::Value;

const HOSTILE: &str = "stroke call <script>alert('x')</script> & \"urgent\", =1+1";
const BOB_REASON: &str = "out-of-hours CT, registrar unavailable";

fn ep(name: &str, protocol: &str, port: u16) -> EndpointRef {
    EndpointRef {
        name: name.into(),
        site: "truro".into(),
        host: format!("{name}.truro.nhs.uk"),
        port,
        protocol: protocol.into(),
    }
}

struct Who {
    user: &'static str,
    name: &'static str,
    email: &'static str,
    device: (&'static str, Option<&'static str>),
    ip: &'static str,
}

const ANN: Who = Who {
    user: "sub-ann",
    name: "Dr Ann Jones",
    email: "ann.jones@nhs.example",
    device: ("dev-42", Some("RAD-LAPTOP-042")),
    ip: "203.0.113.7",
};
const BOB: Who = Who {
    user: "sub-bob",
    name: "Dr Bob Smith",
    email: "Bob.Smith@NHS.example",
    device: ("dev-77", None),
    ip: "198.51.100.4",
};
const CAROL: Who = Who {
    user: "sub-carol",
    name: "Carol White",
    email: "carol.white@nhs.example",
    device: ("dev-9", Some("WARD-PC-9")),
    ip: "192.0.2.50",
};

fn who_event(kind: EventType, ts: &str, who: &Who, port: u16) -> Event {
    Event {
        ts: ts.into(),
        user: Some(who.user.into()),
        user_name: Some(who.name.into()),
        user_email: Some(who.email.into()),
        device: Some(DeviceRef {
            id: who.device.0.into(),
            name: who.device.1.map(Into::into),
            user_verified: Some(true),
        }),
        source: Some(format!("{}:{port}", who.ip)),
        ..Event::new(kind)
    }
}

/// A session: its start, and its end unless `end` is empty.
#[allow(clippy::too_many_arguments)]
fn session(
    out: &mut Vec<Event>,
    id: &str,
    who: &Who,
    endpoint: EndpointRef,
    start: &str,
    end: &str,
    port: u16,
    justification: Option<&str>,
) {
    let mut s = who_event(EventType::SessionStart, start, who, port);
    s.session_id = Some(id.into());
    s.endpoint = Some(endpoint);
    s.justification = justification.map(Into::into);
    s.decision = Some(DecisionRef {
        effect: "allow".into(),
        rule: Some(if justification.is_some() {
            "break-glass".into()
        } else {
            "radiologists".into()
        }),
        reason: "group radiologists".into(),
        ..DecisionRef::default()
    });
    out.push(s.clone());
    if !end.is_empty() {
        let mut e = s;
        e.kind = "session.end".into();
        e.ts = end.into();
        e.bytes_up = Some(1000);
        e.bytes_down = Some(1_000_000);
        e.close_reason = Some("client_closed".into());
        out.push(e);
    }
}

fn denied(ts: &str, who: &Who, endpoint: EndpointRef, reason: &str) -> Event {
    Event {
        endpoint: Some(endpoint),
        decision: Some(DecisionRef {
            effect: "deny".into(),
            reason: reason.into(),
            ..DecisionRef::default()
        }),
        ..who_event(EventType::SessionDenied, ts, who, 40000)
    }
}

/// March (and a little before and after): Ann's break-glass visit of three connections, an
/// ordinary visit, a session the gateway terminated (then ended), refusals; Bob's break-glass
/// RDP; Carol's web viewer session.
fn march() -> Vec<Event> {
    let pacs = || ep("truro-pacs", "dicom", 104);
    let rdp = || ep("truro-rdp", "rdp", 3389);
    let viewer = || ep("truro-viewer", "https", 443);
    let mut v = Vec::new();
    session(
        &mut v,
        "feb1",
        &ANN,
        pacs(),
        "2025-02-27T10:00:00.000000Z",
        "2025-02-27T10:05:00.000000Z",
        50000,
        Some("February, outside the period"),
    );
    v.push(who_event(
        EventType::AuthLogin,
        "2025-03-01T21:59:00.000000Z",
        &ANN,
        50999,
    ));
    // Three page loads of one viewer, minutes apart: one visit.
    for (id, start, end, port) in [
        (
            "g1",
            "2025-03-01T22:15:00.000000Z",
            "2025-03-01T22:16:00.000000Z",
            51001,
        ),
        (
            "g2",
            "2025-03-01T22:18:00.000000Z",
            "2025-03-01T22:19:30.000000Z",
            51002,
        ),
        (
            "g3",
            "2025-03-01T22:22:00.000000Z",
            "2025-03-01T22:40:00.000000Z",
            51003,
        ),
    ] {
        session(&mut v, id, &ANN, pacs(), start, end, port, Some(HOSTILE));
    }
    // The next morning: another visit (hours later), no justification.
    session(
        &mut v,
        "n1",
        &ANN,
        pacs(),
        "2025-03-02T08:00:00.000000Z",
        "2025-03-02T08:30:00.000000Z",
        52000,
        None,
    );
    // Terminated by the gateway (token revoked), then its end with the bytes; Bob's session
    // starts in between.
    session(
        &mut v,
        "k1",
        &ANN,
        pacs(),
        "2025-03-02T09:00:00.000000Z",
        "",
        52100,
        None,
    );
    let mut t = v.last().unwrap().clone();
    t.kind = "session.terminated".into();
    t.ts = "2025-03-02T09:10:00.000000Z".into();
    t.close_reason = Some("token_revoked".into());
    t.detail = Some("token revoked: session token j-1 was revoked".into());
    t.decision = None;
    v.push(t.clone());
    session(
        &mut v,
        "z1",
        &BOB,
        pacs(),
        "2025-03-02T09:10:00.200000Z",
        "2025-03-02T09:20:00.000000Z",
        41000,
        None,
    );
    let z1_end = v.pop().unwrap();
    let mut e = t;
    e.kind = "session.end".into();
    e.ts = "2025-03-02T09:10:00.500000Z".into();
    e.bytes_up = Some(7);
    e.bytes_down = Some(7_000);
    e.duration_ms = Some(600_500);
    e.detail = None;
    v.push(e);
    v.push(z1_end);
    v.push(denied(
        "2025-03-05T18:30:00.000000Z",
        &ANN,
        ep("bodmin-pacs", "dicom", 104),
        "outside the permitted hours",
    ));
    v.push(denied(
        "2025-03-05T18:31:00.000000Z",
        &ANN,
        ep("bodmin-pacs", "dicom", 104),
        "outside the permitted hours",
    ));
    // Carol's web viewer session: one row, two requests.
    session(
        &mut v,
        "w1",
        &CAROL,
        viewer(),
        "2025-03-10T11:00:00.000000Z",
        "",
        50000,
        None,
    );
    let mut w_end = v.last().unwrap().clone();
    for ts in ["2025-03-10T11:00:05.000000Z", "2025-03-10T11:01:00.000000Z"] {
        v.push(Event {
            ts: ts.into(),
            session_id: Some("w1".into()),
            user: Some(CAROL.user.into()),
            endpoint: Some(viewer()),
            http: Some(postern_audit::HttpRef {
                method: "GET".into(),
                path: "/app/explorer.html".into(),
                status: 200,
                bytes_up: 0,
                bytes_down: 100,
                duration_ms: 5,
                sampled: None,
            }),
            ..Event::new(EventType::WebRequest)
        });
    }
    w_end.kind = "session.end".into();
    w_end.ts = "2025-03-10T11:05:00.000000Z".into();
    w_end.close_reason = Some("signed_out".into());
    v.push(w_end);
    v.push(denied(
        "2025-03-15T01:59:00.000000Z",
        &BOB,
        rdp(),
        "break-glass requires a justification",
    ));
    session(
        &mut v,
        "b1",
        &BOB,
        rdp(),
        "2025-03-15T02:00:00.000000Z",
        "2025-03-15T02:45:00.000000Z",
        41500,
        Some(BOB_REASON),
    );
    session(
        &mut v,
        "apr1",
        &ANN,
        pacs(),
        "2025-04-02T10:00:00.000000Z",
        "2025-04-02T10:05:00.000000Z",
        53000,
        Some("April, outside the period"),
    );
    v
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: String,
}

fn fixture() -> Fixture {
    fixture_of(march())
}

fn fixture_of(events: Vec<Event>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let keys = tmp.path().join("keys");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::open_with(&dir, signed_options(&keys, 7))
            .await
            .unwrap();
        for e in events {
            log.record(e).await.unwrap();
        }
        log.close().await.unwrap();
    });
    let dir = dir.to_str().unwrap().to_owned();
    let out = run(&["verify", &dir]);
    assert!(out.status.success(), "{}", stdout(&out));
    Fixture { _tmp: tmp, dir }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// RFC 4180, enough for the tests: quoted cells with `""` and newlines.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut cell) = (Vec::new(), String::new());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if cell.is_empty() => quoted = true,
            (',', false) => row.push(std::mem::take(&mut cell)),
            ('\n', false) => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => cell.push(c),
        }
    }
    assert!(cell.is_empty() && row.is_empty(), "CSV ends mid-line");
    rows
}

fn visits(f: &Fixture, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["sessions", f.dir.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&stdout(&out))
}

#[test]
fn three_page_loads_are_one_visit_with_the_justification_once() {
    let f = fixture();
    let rows = visits(&f, &[]);
    let by_first: HashMap<String, &Value> = rows
        .iter()
        .map(|r| (r["sessions"][0].as_str().unwrap().to_owned(), r))
        .collect();
    let g = by_first["g1"];
    assert_eq!(g["sessions"], serde_json::json!(["g1", "g2", "g3"]));
    assert_eq!(g["connections"], 3);
    assert_eq!(g["justification"], HOSTILE);
    assert_eq!(g["start"], "2025-03-01T22:15:00.000000Z");
    assert_eq!(g["end"], "2025-03-01T22:40:00.000000Z");
    assert_eq!(g["duration_ms"], 25 * 60_000);
    assert_eq!(g["bytes_up"], 3000);
    assert_eq!(g["bytes_down"], 3_000_000);
    assert_eq!(g["source"], "203.0.113.7");
    assert_eq!(g["device"], "RAD-LAPTOP-042");
    assert_eq!(g["user_name"], "Dr Ann Jones");
    // The next morning is another visit; the web session is one of its own, requests counted.
    assert_eq!(by_first["n1"]["connections"], 1);
    assert_eq!(by_first["w1"]["requests"], 2);
    assert_eq!(by_first["w1"]["protocol"], "https");
    // Every session is in exactly one visit.
    let mut all: Vec<&str> = rows
        .iter()
        .flat_map(|r| r["sessions"].as_array().unwrap())
        .map(|s| s.as_str().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        ["apr1", "b1", "feb1", "g1", "g2", "g3", "k1", "n1", "w1", "z1"]
    );
    assert_eq!(rows.len(), 8, "{rows:#?}");

    // The table says the justification once; --connections once per connection.
    let table = stdout(&run(&["sessions", &f.dir]));
    assert_eq!(table.matches("stroke call").count(), 1, "{table}");
    let line = table.lines().find(|l| l.contains("stroke call")).unwrap();
    assert!(line.contains(" 203.0.113.7 ") && line.contains(" RAD-LAPTOP-042 "));
    assert!(line.contains(" 3 "), "{line}");
    let per = stdout(&run(&["sessions", &f.dir, "--connections"]));
    assert_eq!(per.matches("stroke call").count(), 3, "{per}");
}

#[test]
fn a_terminated_then_ended_session_is_listed_once() {
    let f = fixture();
    let out = run(&["sessions", &f.dir, "--connections", "--json"]);
    let rows = json_lines(&stdout(&out));
    let k1: Vec<&Value> = rows.iter().filter(|r| r["session_id"] == "k1").collect();
    assert_eq!(k1.len(), 1, "{rows:#?}");
    assert_eq!(k1[0]["close_reason"], "token_revoked");
    assert_eq!(k1[0]["end"], "2025-03-02T09:10:00.500000Z");
    assert_eq!(k1[0]["bytes_down"], 7000);
    assert_eq!(k1[0]["duration_ms"], 600_500);
    // Order of start kept: k1 before z1, which started while k1 was ending.
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["feb1", "g1", "g2", "g3", "n1", "k1", "z1", "w1", "b1", "apr1"]
    );
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        assert!(seen.insert(*id), "{id} twice");
    }
    // In the visits too, and in the table.
    let v = visits(&f, &["--user", "sub-ann"]);
    assert_eq!(
        v.iter()
            .filter(|r| r["sessions"].as_array().unwrap().iter().any(|s| s == "k1"))
            .count(),
        1
    );
    let table = stdout(&run(&["sessions", &f.dir, "--connections"]));
    assert_eq!(
        table.lines().filter(|l| l.starts_with("k1 ")).count(),
        1,
        "{table}"
    );
}

#[test]
fn user_matches_in_any_case_by_subject_email_or_name() {
    let f = fixture();
    let sessions_of = |user: &str| -> Vec<String> {
        let mut ids: Vec<String> = visits(&f, &["--user", user])
            .iter()
            .flat_map(|r| r["sessions"].as_array().unwrap().clone())
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let ann = ["apr1", "feb1", "g1", "g2", "g3", "k1", "n1"];
    let mut checked = 0;
    for user in [
        "sub-ann",
        "SUB-ANN",
        "ann.jones@nhs.example",
        "Ann.Jones@NHS.Example",
        "jones",
        "ANN JONES",
        "dr ann",
    ] {
        assert_eq!(sessions_of(user), ann, "{user}");
        checked += 1;
    }
    assert_eq!(checked, 7);
    // The stored email is mixed case; any case finds it.
    assert_eq!(sessions_of("bob.smith@nhs.example"), ["b1", "z1"]);
    assert_eq!(sessions_of("SMITH"), ["b1", "z1"]);
    // "Dr" is in two names: both people.
    assert_eq!(sessions_of("dr ").len(), ann.len() + 2);
    // An email or a subject only whole.
    assert!(sessions_of("ann.jones").is_empty());
    assert!(sessions_of("sub").is_empty());
    // search too.
    let out = run(&["search", &f.dir, "--user", "carol", "--type", "web.*"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    let out = run(&["search", &f.dir, "--user", "Carol White", "--json"]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
}

fn report(f: &Fixture, extra: &[&str]) -> String {
    let mut args = vec!["report", f.dir.as_str()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

const MARCH: [&str; 4] = ["--since", "2025-03-01", "--until", "2025-04-01"];

#[test]
fn break_glass_report_in_text_csv_and_html() {
    let f = fixture();
    let mut args = vec!["--break-glass"];
    args.extend(MARCH);
    let text = report(&f, &args);
    assert!(
        text.starts_with("Break-glass access, 2025-03-01 00:00:00 to 2025-04-01 00:00:00 UTC\n"),
        "{text}"
    );
    assert!(text.contains("2 break-glass visit(s) by 2 person(s), 4 connection(s)"));
    assert!(
        text.contains(HOSTILE) && text.contains(BOB_REASON),
        "{text}"
    );
    assert!(
        !text.contains("February") && !text.contains("April"),
        "{text}"
    );
    assert_eq!(text.matches("stroke call").count(), 1, "{text}");
    let ann = text.lines().find(|l| l.contains("stroke call")).unwrap();
    for want in [
        "2025-03-01 22:15:00",
        "2025-03-01 22:40:00",
        "25m00s",
        "Dr Ann Jones <ann.jones@nhs.example>",
        "truro-pacs@truro",
        "RAD-LAPTOP-042",
        "203.0.113.7",
        "2.9 KiB",
        "2.9 MiB",
    ] {
        assert!(ann.contains(want), "{want:?} missing from {ann:?}");
    }

    let mut csv_args = args.clone();
    csv_args.push("--csv");
    let csv = parse_csv(&report(&f, &csv_args));
    assert_eq!(
        csv[0].join(","),
        "user,user_name,user_email,start_utc,end_utc,duration_ms,endpoint,site,device,source,connections,bytes_up,bytes_down,rule,close_reason,justification,sessions"
    );
    assert_eq!(csv.len(), 3);
    assert_eq!(csv[1][3], "2025-03-01 22:15:00");
    assert_eq!(csv[1][10], "3");
    assert_eq!(csv[1][16], "g1;g2;g3");
    // Formula-neutral: a leading '=' would get a "'"; this one starts with text.
    assert_eq!(csv[1][15], HOSTILE);
    assert_eq!(csv[2][15], BOB_REASON);

    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("bg.html");
    let mut html_args = args.clone();
    html_args.extend(["--html", page.to_str().unwrap()]);
    let out = report(&f, &html_args);
    assert!(out.is_empty(), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    check_html(&html);
    assert!(html.contains(
        "<title>Break-glass access, 2025-03-01 00:00:00 to 2025-04-01 00:00:00 UTC (generated "
    ));
    assert!(
        html.contains("stroke call &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;urgent&quot;, =1+1"),
        "{html}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&page).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Self-contained, printable, nothing from the log able to open markup.
fn check_html(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the page");
    }
    assert!(html.contains("@media print"));
    assert!(html.contains("default-src 'none'"));
    assert!(html.contains("Generated"));
}

#[test]
fn user_report_in_text_csv_and_html() {
    let f = fixture();
    let mut args = vec!["--user", "ANN.JONES@nhs.example"];
    args.extend(MARCH);
    let text = report(&f, &args);
    for want in [
        "Access report for ANN.JONES@nhs.example, 2025-03-01 00:00:00 to 2025-04-01 00:00:00 UTC",
        "Dr Ann Jones <ann.jones@nhs.example>",
        "Subject:          sub-ann",
        "Sign-ins:         1",
        "Visits:           3 (5 connection(s)) to 1 endpoint(s)",
        "Refused attempts: 2",
        "Devices:          RAD-LAPTOP-042",
        "Break-glass uses: 1",
        "bodmin-pacs@truro  outside the permitted hours      2  2025-03-05 18:30:00  2025-03-05 18:31:00",
        "token_revoked",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("Bob") && !text.contains("April"), "{text}");
    assert_eq!(
        text.matches("stroke call").count(),
        2,
        "visits and break-glass uses: {text}"
    );

    let mut csv_args = args.clone();
    csv_args.push("--csv");
    let csv = parse_csv(&report(&f, &csv_args));
    assert_eq!(csv[0][0], "record");
    let kinds: Vec<&str> = csv[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(kinds, ["sign_in", "visit", "visit", "visit", "refused"]);
    for row in &csv {
        assert_eq!(row.len(), csv[0].len(), "{row:?}");
    }
    let refused = csv.last().unwrap();
    assert_eq!(refused[7], "bodmin-pacs");
    assert_eq!(refused[16], "outside the permitted hours");
    assert_eq!(refused[17], "2");

    // A part of a name that two people share: a part each.
    let text = report(&f, &["--user", "dr"]);
    assert!(text.contains("2 people match; one part each"), "{text}");
    assert!(
        text.contains("Dr Bob Smith <Bob.Smith@NHS.example>"),
        "{text}"
    );
    assert!(
        text.contains("break-glass requires a justification"),
        "{text}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("ann.html");
    let mut html_args = args.clone();
    html_args.extend(["--html", page.to_str().unwrap()]);
    report(&f, &html_args);
    let html = std::fs::read_to_string(&page).unwrap();
    check_html(&html);
    assert!(html.contains("<h2>Dr Ann Jones &lt;ann.jones@nhs.example&gt;</h2>"));
    assert!(html.contains("<h3>Refused attempts</h3>"));

    // Nobody: said, exit 0.
    let text = report(&f, &["--user", "nobody@nhs.example"]);
    assert!(text.contains("nothing recorded for this user"), "{text}");
    // One of the two is needed.
    let out = run(&["report", &f.dir]);
    assert_eq!(out.status.code(), Some(2));
}

/// Every CSV the tool prints gives times as `YYYY-MM-DD HH:MM:SS` in columns named `…_utc`.
#[test]
fn csv_times_are_spreadsheet_dates_in_utc() {
    let f = fixture();
    let d = f.dir.as_str();
    let outputs: Vec<Vec<&str>> = vec![
        vec!["search", d, "--csv"],
        vec!["export", d, "--format", "csv"],
        vec!["sessions", d, "--csv"],
        vec!["sessions", d, "--csv", "--connections"],
        vec!["report", d, "--break-glass", "--csv"],
        vec!["report", d, "--user", "sub-ann", "--csv"],
    ];
    let is_time = |s: &str| {
        let b = s.as_bytes();
        b.len() == 19
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            })
    };
    let (mut outputs_checked, mut times) = (0, 0);
    for args in &outputs {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let rows = parse_csv(&stdout(&out));
        let header = &rows[0];
        let time_columns: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h.ends_with("_utc"))
            .map(|(i, _)| i)
            .collect();
        assert!(!time_columns.is_empty(), "{args:?}: {header:?}");
        assert!(
            !header
                .iter()
                .any(|h| ["ts", "start", "end", "first", "last"].contains(&h.as_str())),
            "{args:?}: {header:?}"
        );
        assert!(rows.len() > 1, "{args:?}");
        for row in &rows[1..] {
            for &c in &time_columns {
                let cell = &row[c];
                assert!(cell.is_empty() || is_time(cell), "{args:?}: {cell:?}");
                times += usize::from(!cell.is_empty());
            }
            // No RFC 3339 time left in any cell.
            for cell in row {
                assert!(
                    !(cell.len() >= 20 && cell.as_bytes()[10] == b'T' && cell.ends_with('Z')),
                    "{args:?}: {cell:?}"
                );
            }
        }
        outputs_checked += 1;
    }
    assert_eq!(outputs_checked, outputs.len());
    assert!(times > 30, "{times}");
}

/// The break-glass and per-user samples in docs/auditor-guide.md are this code's output on
/// this fixture (the generation time aside).
#[test]
fn the_auditor_guide_shows_real_report_output() {
    let f = fixture();
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/auditor-guide.md"
    ))
    .unwrap();
    let without_generated = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with("Generated:"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let guide = without_generated(&guide);
    let mut missing = Vec::new();
    let mut checked = 0;
    for (command, args) in [
        (
            "postern-audit report /var/lib/postern/audit --break-glass --since 2025-03-01 --until 2025-04-01",
            vec!["--break-glass", "--since", "2025-03-01", "--until", "2025-04-01"],
        ),
        (
            "postern-audit report /var/lib/postern/audit --user ann.jones@nhs.example --since 2025-03-01 --until 2025-04-01",
            vec!["--user", "ann.jones@nhs.example", "--since", "2025-03-01", "--until", "2025-04-01"],
        ),
        (
            "postern-audit sessions /var/lib/postern/audit --user jones --since 2025-03-01 --until 2025-04-01",
            vec![],
        ),
    ] {
        assert!(guide.contains(command), "the guide should show `{command}`");
        let text = if args.is_empty() {
            stdout(&run(&[
                "sessions", &f.dir, "--user", "jones", "--since", "2025-03-01", "--until",
                "2025-04-01",
            ]))
        } else {
            report(&f, &args)
        };
        let text = without_generated(&text.replace(&f.dir, "/var/lib/postern/audit"));
        if !guide.contains(&text) {
            missing.push(format!("{command}:\n{text}"));
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
    assert!(
        missing.is_empty(),
        "docs/auditor-guide.md should show this output:\n{}",
        missing.join("\n")
    );
}

/// The gateway's aggregated refusals of a signed token (expired, signed out) name the user:
/// the user's report counts them with the number the event stands for.
#[test]
fn refusals_of_a_signed_token_count_in_the_user_report() {
    let mut refused = who_event(
        EventType::AccessRefusedUnauthenticated,
        "2025-03-09T07:00:00.000000Z",
        &ANN,
        0,
    );
    refused.device = None;
    refused.detail = Some(
        "requests with an expired session token were refused (the user is the one the token names: this gateway signed it)"
            .into(),
    );
    refused.refused = Some(postern_audit::RefusedSummary {
        reason: "token_expired".into(),
        count: 7,
        first: "2025-03-09T07:00:00.000000Z".into(),
        last: "2025-03-09T07:04:00.000000Z".into(),
    });
    // Anonymous refusals (no user) are not anyone's.
    let mut anonymous = refused.clone();
    anonymous.user = None;
    anonymous.user_name = None;
    anonymous.user_email = None;
    let f = fixture_of(vec![refused, anonymous]);
    let mut args = vec!["--user", "sub-ann"];
    args.extend(MARCH);
    let text = report(&f, &args);
    assert!(text.contains("Refused attempts: 7"), "{text}");
    assert!(text.contains("expired session token"), "{text}");
}
