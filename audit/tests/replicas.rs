//! `postern-audit` over several gateway replicas' logs at once, run for real: logs written by
//! the audit writer (each replica its own directory, node id and key), read by the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{copy_dir, run, stderr, stdout};
use postern_audit::{AuditKey, AuditLog, AuditOptions, EndpointRef, Event, EventType};
use serde_json::Value;

/// One replica's events: (ts, type, session id, user, close reason).
type Script = &'static [(
    &'static str,
    EventType,
    &'static str,
    &'static str,
    &'static str,
)];

use EventType::{SessionDenied as Denied, SessionEnd as End, SessionStart as Start};

/// Replica A: relays s1, s2 and s6; killed at 22:50 while relaying s2; after its restart it ends
/// s2 `gateway_lost` itself (B already did). Its clock is a minute ahead: its start of s6 reads
/// later than C's end of s6.
const A: Script = &[
    ("2025-03-01T22:00:00.000000Z", Start, "s1", "ann", ""),
    ("2025-03-01T22:10:00.000000Z", Start, "s2", "bob", ""),
    ("2025-03-01T22:16:00.000000Z", Start, "s6", "fay", ""),
    (
        "2025-03-01T22:30:00.000000Z",
        End,
        "s1",
        "ann",
        "client_closed",
    ),
    (
        "2025-03-01T23:30:00.000000Z",
        End,
        "s2",
        "bob",
        "gateway_lost",
    ),
];

/// Replica B: relays s3, refuses s4, and ends A's s2 `gateway_lost` when A is gone.
const B: Script = &[
    ("2025-03-01T22:05:00.000000Z", Start, "s3", "carol", ""),
    ("2025-03-01T22:20:00.000000Z", Denied, "s4", "dave", ""),
    (
        "2025-03-01T22:45:00.000000Z",
        End,
        "s3",
        "carol",
        "client_closed",
    ),
    (
        "2025-03-01T23:00:00.000000Z",
        End,
        "s2",
        "bob",
        "gateway_lost",
    ),
];

/// Replica C: starts s5 at the same microsecond as A's s2 (ties go to the log given first),
/// ends s6 (started on A), and ends s7, whose start is in an archived segment no one gave.
const C: Script = &[
    (
        "2025-03-01T21:00:00.000000Z",
        End,
        "s7",
        "gus",
        "idle_timeout",
    ),
    ("2025-03-01T22:10:00.000000Z", Start, "s5", "eve", ""),
    (
        "2025-03-01T22:15:00.000000Z",
        End,
        "s6",
        "fay",
        "client_closed",
    ),
];

fn event(ts: &str, kind: EventType, session: &str, user: &str, close: &str) -> Event {
    Event {
        ts: ts.to_owned(),
        session_id: Some(session.to_owned()),
        user: Some(user.to_owned()),
        user_email: Some(format!("{user}@nhs.example")),
        endpoint: Some(EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            host: "10.1.2.3".into(),
            port: 104,
            protocol: "dicom".into(),
        }),
        close_reason: (!close.is_empty()).then(|| close.to_owned()),
        ..Event::new(kind)
    }
}

/// Writes one replica's log as its gateway would: its own directory, node id and key.
async fn write_replica(dir: &Path, state: &Path, node: &str, script: Script) {
    let log = AuditLog::open_with(
        dir,
        AuditOptions {
            signing_key: Some(AuditKey::load_or_create(state).unwrap()),
            node_id: Some(node.to_owned()),
            checkpoint_events: 2,
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    for (ts, kind, session, user, close) in script {
        log.record(event(ts, *kind, session, user, close))
            .await
            .unwrap();
    }
    log.close().await.unwrap();
}

struct Replicas {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Replicas {
    /// Three replicas' logs under one shared volume: `ROOT/a`, `ROOT/b`, `ROOT/c`.
    async fn new() -> Replicas {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let mut dirs = Vec::new();
        for (name, node, script) in [("a", "gw-a", A), ("b", "gw-b", B), ("c", "gw-c", C)] {
            let dir = root.join("audit").join(name);
            write_replica(&dir, &root.join(format!("state-{name}")), node, script).await;
            dirs.push(dir);
        }
        Replicas {
            _tmp: tmp,
            root,
            dirs,
        }
    }

    fn dir(&self, i: usize) -> &str {
        self.dirs[i].to_str().unwrap()
    }

    /// `args` with the three directories in place of `"LOGS"`.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut full: Vec<&str> = Vec::new();
        for a in args {
            if *a == "LOGS" {
                full.extend((0..3).map(|i| self.dir(i)));
            } else {
                full.push(a);
            }
        }
        run(&full)
    }

    fn pubkey(&self, name: &str) -> PathBuf {
        let out = run(&[
            "pubkey",
            self.root.join(format!("state-{name}")).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let path = self.root.join(format!("{name}.pub"));
        fs::write(&path, &out.stdout).unwrap();
        path
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn search_merges_by_time_and_says_which_replica() {
    let r = Replicas::new().await;
    let out = r.run(&["search", "LOGS", "--type", "session.*", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&stdout(&out));
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|v| {
            (
                v["ts"].as_str().unwrap()[11..16].to_owned(),
                v["replica"].as_str().unwrap().to_owned(),
                format!(
                    "{} {}",
                    v["type"].as_str().unwrap(),
                    v["session_id"].as_str().unwrap()
                ),
            )
        })
        .collect();
    let want = [
        ("21:00", "gw-c", "session.end s7"),
        ("22:00", "gw-a", "session.start s1"),
        ("22:05", "gw-b", "session.start s3"),
        // The same microsecond: the log given first (a) before the later one (c).
        ("22:10", "gw-a", "session.start s2"),
        ("22:10", "gw-c", "session.start s5"),
        ("22:15", "gw-c", "session.end s6"),
        ("22:16", "gw-a", "session.start s6"),
        ("22:20", "gw-b", "session.denied s4"),
        ("22:30", "gw-a", "session.end s1"),
        ("22:45", "gw-b", "session.end s3"),
        ("23:00", "gw-b", "session.end s2"),
        ("23:30", "gw-a", "session.end s2"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);

    // Each row is its replica's stored line with "replica" put first: taken out again, the
    // line is byte for byte in that replica's log (so its hash still checks).
    let stored: Vec<String> = (0..3)
        .map(|i| fs::read_to_string(r.dirs[i].join("audit.jsonl")).unwrap())
        .collect();
    let text = stdout(&out);
    let mut checked = 0;
    for line in text.lines() {
        let (label, rest) = line
            .strip_prefix("{\"replica\":\"gw-")
            .and_then(|l| l.split_once("\","))
            .unwrap();
        let i = ["a", "b", "c"].iter().position(|n| *n == label).unwrap();
        let original = format!("{{{rest}\n");
        assert!(stored[i].contains(&original), "{line}");
        checked += 1;
    }
    assert_eq!(checked, 12);

    // Every event of every log, audit.* included, each once.
    let out = r.run(&["search", "LOGS", "--json"]);
    let all = json_lines(&stdout(&out));
    let lines: usize = stored.iter().map(|s| s.lines().count()).sum();
    assert_eq!(all.len(), lines);
    let mut seen = HashMap::new();
    for v in &all {
        *seen
            .entry((v["replica"].to_string(), v["seq"].as_u64().unwrap()))
            .or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");

    // The table has a REPLICA column after the time.
    let out = r.run(&["search", "LOGS", "--user", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("TIME                        REPLICA TYPE"),
        "{text}"
    );
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows[1].contains(" gw-a    session.start "), "{text}");
    assert!(rows[2].contains(" gw-b    session.end "), "{text}");
    assert!(rows[3].contains(" gw-a    session.end "), "{text}");
}

#[tokio::test]
async fn export_csv_and_syslog_name_the_replica() {
    let r = Replicas::new().await;
    let out = r.run(&["export", "LOGS", "--format", "csv", "--session", "s2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("replica,seq,ts_utc,type,"), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("gw-a,"), "{text}");
    assert!(
        lines[2].starts_with("gw-b,") && lines[2].contains(",gateway_lost,"),
        "{text}"
    );
    assert!(lines[3].starts_with("gw-a,"), "{text}");

    let out = r.run(&[
        "export",
        "LOGS",
        "--format",
        "syslog",
        "--type",
        "session.denied",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("<108>1 2025-03-01T22:20:00.000000Z gw-b postern - session.denied [postern@32473 seq=\""),
        "{text}"
    );
    assert!(text.contains("\" replica=\"gw-b\"] {"), "{text}");
}

#[tokio::test]
async fn sessions_are_one_row_each_wherever_start_and_end_are() {
    let r = Replicas::new().await;
    let out = r.run(&["sessions", "LOGS", "--connections", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&stdout(&out));
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for row in &rows {
        by_id
            .entry(row["session_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(row);
    }
    // Every session of the fixtures, each exactly once (s4 was refused: no session).
    let ids = ["s1", "s2", "s3", "s5", "s6", "s7"];
    let mut found = 0;
    for id in ids {
        assert_eq!(by_id.get(id).map(Vec::len), Some(1), "{id}: {rows:#?}");
        found += 1;
    }
    assert_eq!(found, ids.len());
    assert_eq!(rows.len(), ids.len(), "{rows:#?}");

    let row = |id: &str| by_id[id][0];
    // Started on A, ended gateway_lost by B (earliest end); A's own later end is folded in.
    assert_eq!(row("s2")["start_replica"], "gw-a");
    assert_eq!(row("s2")["end_replica"], "gw-b");
    assert_eq!(row("s2")["close_reason"], "gateway_lost");
    assert_eq!(row("s2")["end"], "2025-03-01T23:00:00.000000Z");
    assert_eq!(row("s2")["start"], "2025-03-01T22:10:00.000000Z");
    // Ended on C before (by the clocks) it started on A: joined all the same.
    assert_eq!(row("s6")["start"], "2025-03-01T22:16:00.000000Z");
    assert_eq!(row("s6")["end"], "2025-03-01T22:15:00.000000Z");
    assert_eq!(row("s6")["start_replica"], "gw-a");
    assert_eq!(row("s6")["end_replica"], "gw-c");
    // One replica throughout.
    assert_eq!(row("s3")["start_replica"], "gw-b");
    assert_eq!(row("s3")["end_replica"], "gw-b");
    // Still open; and no start anywhere (printed last).
    assert_eq!(row("s5")["close_reason"], "open");
    assert!(row("s5").get("end_replica").is_none());
    assert_eq!(rows.last().unwrap()["session_id"], "s7");
    assert!(row("s7").get("start_replica").is_none());
    assert!(
        stderr(&out).contains("1 session event(s) repeated"),
        "{}",
        stderr(&out)
    );

    // The table says where each row came from; CSV ends with the two replica columns.
    let out = r.run(&["sessions", "LOGS", "--connections"]);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().contains(" REPLICA "), "{text}");
    let s2 = text.lines().find(|l| l.starts_with("s2 ")).unwrap();
    assert!(s2.contains(" gw-a->gw-b "), "{s2}");
    let out = r.run(&[
        "sessions",
        "LOGS",
        "--connections",
        "--csv",
        "--user",
        "bob",
    ]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(
            ",rule,protocol,requests,requests_recorded,sampled,objects,start_replica,end_replica"
        ),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].ends_with(",gw-a,gw-b"), "{text}");
}

#[tokio::test]
async fn verify_checks_each_chain_and_names_the_broken_one() {
    let r = Replicas::new().await;
    let out = r.run(&["verify", "LOGS"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("OK: every link").count(), 3, "{text}");
    for (label, i) in [("gw-a", 0), ("gw-b", 1), ("gw-c", 2)] {
        assert!(
            text.contains(&format!("  {label}  OK          {}", r.dir(i))),
            "{text}"
        );
        assert!(text.contains(&format!("replica:      {label}\n")), "{text}");
    }
    assert!(
        text.ends_with(
            "OK: all 3 logs intact: every link and every checkpoint signature of each verified.\n"
        ),
        "{text}"
    );

    // Each with its own trusted key, in the order of the logs.
    let keys: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| r.pubkey(n)).collect();
    let k = |i: usize| keys[i].to_str().unwrap();
    let out = r.run(&[
        "verify",
        "LOGS",
        "--pubkey",
        k(0),
        "--pubkey",
        k(1),
        "--pubkey",
        k(2),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out).matches("(given with --pubkey)").count(), 3);
    // The keys swapped: A and B were not signed by the keys given for them.
    let out = r.run(&[
        "verify",
        "LOGS",
        "--pubkey",
        k(1),
        "--pubkey",
        k(0),
        "--pubkey",
        k(2),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAILED: not intact: gw-a"),
        "{}",
        stdout(&out)
    );
    // One key for three logs signed by three keys: only C passes.
    let out = r.run(&["verify", "LOGS", "--pubkey", k(2)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // Two keys for three logs: a usage error.
    let out = r.run(&["verify", "LOGS", "--pubkey", k(0), "--pubkey", k(1)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("2 public keys given for 3 logs"),
        "{}",
        stderr(&out)
    );

    // Witnesses of all three in one file: each checked against its own log.
    let out = r.run(&["checkpoint", "LOGS"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3);
    let witnesses = r.root.join("witnesses.txt");
    fs::write(&witnesses, &out.stdout).unwrap();
    let out = r.run(&["verify", "LOGS", "--witness", witnesses.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out).matches("witnesses:    1 checked").count(), 3);
    // A witness of a replica whose log is not given cannot be checked.
    let out = run(&[
        "verify",
        r.dir(0),
        r.dir(1),
        "--witness",
        witnesses.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("\"gw-c\""), "{}", stderr(&out));

    // Edit one event in B: B fails and is named; A and C still verify.
    let seg = r.dirs[1].join("audit.jsonl");
    let text = fs::read_to_string(&seg).unwrap();
    fs::write(&seg, text.replacen("\"carol\"", "\"carl!\"", 1)).unwrap();
    let out = r.run(&["verify", "LOGS"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("  gw-b  FAILED      {}  (", r.dir(1))),
        "{text}"
    );
    assert!(text.contains("the line was edited"), "{text}");
    assert!(
        text.contains(&format!("  gw-a  OK          {}", r.dir(0))),
        "{text}"
    );
    assert!(
        text.contains(&format!("  gw-c  OK          {}", r.dir(2))),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("FAILED: not intact: gw-b ({}).\n", r.dir(1))),
        "{text}"
    );
}

#[tokio::test]
async fn the_same_log_twice_is_refused() {
    let r = Replicas::new().await;
    let copy = r.root.join("audit").join("a-copy");
    copy_dir(&r.dirs[0], &copy);
    let link = r.root.join("link-to-a");
    std::os::unix::fs::symlink(&r.dirs[0], &link).unwrap();
    let dotted = format!("{}/../a/.", r.dir(0));
    let cases = [
        (r.dir(0).to_owned(), "the same directory"),
        (dotted, "the same directory"),
        (link.to_str().unwrap().to_owned(), "the same directory"),
        (copy.to_str().unwrap().to_owned(), "the same chain"),
    ];
    let mut tried = 0;
    for (other, why) in &cases {
        for (cmd, code) in [
            ("verify", 2),
            ("search", 1),
            ("sessions", 1),
            ("checkpoint", 1),
        ] {
            let out = run(&[cmd, r.dir(0), r.dir(1), other]);
            assert_eq!(out.status.code(), Some(code), "{cmd} {other}");
            let err = stderr(&out);
            assert!(
                err.contains("are the same audit log"),
                "{cmd} {other}: {err}"
            );
            assert!(err.contains(why), "{cmd} {other}: {err}");
            assert!(err.contains(r.dir(0)), "{cmd} {other}: {err}");
            assert!(stdout(&out).is_empty(), "{cmd} {other}");
            tried += 1;
        }
    }
    assert_eq!(tried, 16);
    let out = run(&[
        "export",
        r.dir(0),
        copy.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the same chain"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_missing_empty_or_corrupt_log_is_named() {
    let r = Replicas::new().await;
    let missing = r.root.join("audit").join("d");
    let m = missing.to_str().unwrap();

    // Verify still checks the others, and says which one it could not read.
    let out = run(&["verify", r.dir(0), m, r.dir(2)]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("OK: every link").count(), 2, "{text}");
    assert!(
        text.contains(&format!("UNREADABLE  {m}  (no audit log in {m}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("CANNOT VERIFY: could not be read: d ({m})")),
        "{text}"
    );
    assert!(stderr(&out).contains(&format!("no audit log in {m}")));
    // A tampered log and an unreadable one: the tampering decides the exit code.
    let seg = r.dirs[2].join("audit.jsonl");
    let stored = fs::read_to_string(&seg).unwrap();
    fs::write(&seg, stored.replacen("\"eve\"", "\"eva\"", 1)).unwrap();
    let out = run(&["verify", r.dir(0), m, r.dir(2)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("FAILED: not intact: c ("),
        "{}",
        stdout(&out)
    );
    fs::write(&seg, &stored).unwrap();

    // Reports need every log.
    for cmd in ["search", "sessions"] {
        let out = run(&[cmd, r.dir(0), m]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(
            stderr(&out).contains(&format!("no audit log in {m}")),
            "{cmd}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{cmd}");
    }

    // An empty log beside others.
    fs::create_dir_all(&missing).unwrap();
    fs::write(missing.join("audit.jsonl"), "").unwrap();
    let out = run(&["search", r.dir(0), m]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("the audit log in {m} holds no event")),
        "{}",
        stderr(&out)
    );
    let out = run(&["verify", r.dir(0), m]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("UNREADABLE"), "{}", stdout(&out));

    // A corrupt line in one log: named, the rest of every log still shown.
    let seg = r.dirs[1].join("audit.jsonl");
    let mut text = fs::read_to_string(&seg).unwrap();
    text.push_str("{\"type\":\"session.start\", not json\n");
    fs::write(&seg, text).unwrap();
    let out = r.run(&["search", "LOGS", "--type", "session.*", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 12);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}/audit.jsonl line", r.dir(1))),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "1 line(s) of the log in {} (gw-b) are not valid events",
            r.dir(1)
        )),
        "{err}"
    );
    let out = r.run(&["sessions", "LOGS"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 1 + 6);
}

#[tokio::test]
async fn one_log_prints_as_it_always_did() {
    let r = Replicas::new().await;
    // The stored lines, unchanged, with one log.
    let out = run(&["export", r.dir(1), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        fs::read_to_string(r.dirs[1].join("audit.jsonl")).unwrap()
    );
    // Table, CSV and session rows of one log are the merged output's rows of that replica
    // without the replica column; nothing else differs.
    let single = stdout(&run(&["search", r.dir(1)]));
    let merged = stdout(&r.run(&["search", "LOGS"]));
    assert!(
        single.starts_with("TIME                        TYPE"),
        "{single}"
    );
    let width = "REPLICA ".len();
    let from_merged: Vec<String> = merged
        .lines()
        .skip(1)
        .filter(|l| l[28..].starts_with("gw-b "))
        .map(|l| format!("{}{}", &l[..28], &l[28 + width..]))
        .collect();
    let single_rows: Vec<&str> = single.lines().skip(1).collect();
    assert!(!single_rows.is_empty());
    assert_eq!(from_merged, single_rows);

    let single = stdout(&run(&["export", r.dir(1), "--format", "csv"]));
    let merged = stdout(&r.run(&["export", "LOGS", "--format", "csv"]));
    assert!(single.starts_with("seq,ts_utc,type,"), "{single}");
    let from_merged: Vec<&str> = merged
        .lines()
        .filter_map(|l| l.strip_prefix("gw-b,"))
        .collect();
    assert_eq!(from_merged, single.lines().skip(1).collect::<Vec<_>>());

    let single = stdout(&run(&["sessions", r.dir(1), "--connections", "--json"]));
    let rows = json_lines(&single);
    assert_eq!(rows.len(), 2, "{single}");
    for row in &rows {
        assert!(row.get("start_replica").is_none() && row.get("end_replica").is_none());
    }
    // B alone has s2's end without its start.
    assert_eq!(rows[1]["session_id"], "s2");
    assert_eq!(rows[1]["start"], "");
    let single = stdout(&run(&["verify", r.dir(1)]));
    assert!(
        single.starts_with(&format!("log:          {}\nsegments:", r.dir(1))),
        "{single}"
    );
    assert!(
        !single.contains("replica:") && !single.contains("verdict"),
        "{single}"
    );
}

#[tokio::test]
async fn labels_fall_back_to_directory_names_when_node_ids_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("east");
    let two = tmp.path().join("west");
    // Both replicas left at the default node id.
    write_replica(&one, &tmp.path().join("k1"), "gateway-1", A).await;
    write_replica(&two, &tmp.path().join("k2"), "gateway-1", B).await;
    let out = run(&[
        "search",
        one.to_str().unwrap(),
        two.to_str().unwrap(),
        "--csv",
        "--type",
        "session.start",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let labels: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(labels, ["east", "west", "east", "east"], "{text}");
    let out = run(&["verify", one.to_str().unwrap(), two.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("replica:      east (node gateway-1)\n"),
        "{}",
        stdout(&out)
    );
}
