//! Writer and reader behaviour against real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use postern_audit::verify::{verify, VerifyOptions};
use postern_audit::{
    append_sync, events, first_segment_path, read_all, AuditError, AuditLog, ConnectorRef,
    DecisionRef, EndpointRef, Event, EventType,
};

/// The callers' events (not the writer's own `audit.*` ones), with the fields the writer sets
/// (`seq`, `prev`, `hash`) cleared, so they compare with what was recorded.
fn recorded(dir: &Path) -> Vec<Event> {
    read_all(dir)
        .unwrap()
        .into_iter()
        .filter(|e| !e.kind.starts_with("audit."))
        .map(|mut e| {
            assert!(
                e.seq.is_some() && e.prev.is_some() && e.hash.is_some(),
                "{e:?}"
            );
            e.seq = None;
            e.prev = None;
            e.hash = None;
            e
        })
        .collect()
}

fn assert_verifies(dir: &Path) {
    let report = verify(dir, &VerifyOptions::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

fn event(kind: EventType, session: &str) -> Event {
    Event {
        session_id: Some(session.to_owned()),
        user: Some("dr.jones".into()),
        ..Event::new(kind)
    }
}

fn full_event() -> Event {
    Event {
        session_id: Some("0193a5b2-7c1e-7000-8000-000000000001".into()),
        user: Some("dr.jones@hospital.nhs.uk".into()),
        groups: Some(vec!["radiologists".into(), "on-call".into()]),
        source: Some("[2001:db8::7]:51234".into()),
        endpoint: Some(EndpointRef {
            name: "pacs-dicom".into(),
            site: "truro".into(),
            host: "pacs.truro.local".into(),
            port: 11112,
            protocol: "dicom".into(),
        }),
        connector: Some(ConnectorRef {
            id: "conn-truro-1".into(),
            site: "truro".into(),
        }),
        decision: Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("radiologists-pacs".into()),
            policy_version: Some("sha256:0f1e2d".into()),
            reason: "group radiologists, weekday 08-20".into(),
            ..DecisionRef::default()
        }),
        bytes_up: Some(1_048_576),
        bytes_down: Some(987_654_321_000),
        duration_ms: Some(3_600_000),
        close_reason: Some("max_duration".into()),
        gateway: Some("gw-eu-1".into()),
        detail: Some("jti=abc \"quoted\" ünïcode\nsecond line\ttab".into()),
        site: Some("truro".into()),
        ..Event::new(EventType::SessionEnd)
    }
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(first_segment_path(dir))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_field_round_trips_through_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = AuditLog::open(&dir).await.unwrap();
    let e = full_event();
    log.record(e.clone()).await.unwrap();
    let minimal = Event::new(EventType::GatewayStarted);
    log.record(minimal.clone()).await.unwrap();
    log.close().await.unwrap();

    assert_eq!(recorded(&dir), vec![e, minimal]);
    let stored = lines(&dir);
    assert_eq!(stored.len(), 3, "audit.started, then the two events");
    assert!(
        stored[0].contains(r#""type":"audit.started""#),
        "{}",
        stored[0]
    );
    assert!(
        stored[1].contains(r#""type":"session.end""#),
        "{}",
        stored[1]
    );
    assert!(
        !stored[2].contains("null"),
        "empty options must be omitted: {}",
        stored[2]
    );
    assert_verifies(&dir);
}

#[tokio::test]
async fn record_is_on_disk_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).await.unwrap();
    let e = event(EventType::SessionStart, "s-durable");
    log.record(e.clone()).await.unwrap();
    // No close, no flush: the line must already be in the file.
    let contents = fs::read_to_string(first_segment_path(tmp.path())).unwrap();
    assert!(contents.ends_with('\n'));
    let last: Event = serde_json::from_str(contents.lines().last().unwrap()).unwrap();
    assert_eq!(last.seq, Some(2), "audit.started is seq 1");
    assert_eq!(
        Event {
            seq: None,
            prev: None,
            hash: None,
            ..last
        },
        e
    );
    assert_eq!(log.stats().written, 1);
    assert_eq!(log.stats().head_seq, 2);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_from_many_tasks_all_land_one_per_line() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 250;
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).await.unwrap();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let mut e = event(EventType::SessionStart, &format!("t{t}-{i}"));
                e.detail = Some(format!("task {t} event {i}"));
                log.record(e).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(log.stats().written, (TASKS * PER_TASK) as u64);
    log.close().await.unwrap();

    let stored = recorded(tmp.path());
    assert_eq!(stored.len(), TASKS * PER_TASK);
    assert_verifies(tmp.path());
    let mut seen = HashSet::new();
    let mut last_per_task = [None::<usize>; TASKS];
    for e in &stored {
        let id = e.session_id.clone().unwrap();
        assert!(seen.insert(id.clone()), "duplicate {id}");
        let (t, i) = id[1..].split_once('-').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        // Each task awaited every record, so its events are in its own order.
        assert!(
            last_per_task[t].is_none_or(|last| last < i),
            "task {t} out of order"
        );
        last_per_task[t] = Some(i);
    }
    assert_eq!(seen.len(), TASKS * PER_TASK);
}

#[tokio::test]
async fn record_nowait_then_close_flushes_everything_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).await.unwrap();
    for i in 0..1000 {
        log.record_nowait(event(EventType::SessionEnd, &format!("s{i}")));
    }
    log.close().await.unwrap();

    let all = recorded(tmp.path());
    let ids: Vec<String> = all.into_iter().map(|e| e.session_id.unwrap()).collect();
    let expected: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(log.stats().written, 1000);
    assert_eq!(log.stats().dropped, 0);

    // Closed: record fails, nowait is counted as dropped, a second close is harmless.
    let err = log
        .record(event(EventType::SessionStart, "late"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Closed { .. }), "{err}");
    log.record_nowait(event(EventType::SessionEnd, "late"));
    assert_eq!(log.stats().dropped, 1);
    log.close().await.unwrap();
    assert_eq!(recorded(tmp.path()).len(), 1000);
    assert_verifies(tmp.path());
}

#[tokio::test]
async fn dropping_every_handle_still_writes_what_was_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).await.unwrap();
    for i in 0..50 {
        log.record_nowait(event(EventType::ConnectorConnected, &format!("c{i}")));
    }
    drop(log);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = read_all(tmp.path())
            .map(|v| v.iter().filter(|e| !e.kind.starts_with("audit.")).count())
            .unwrap_or(0);
        if n == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of 50 events written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_sync_from_threads_and_writer_never_interleave() {
    const THREADS: usize = 4;
    const TASKS: usize = 4;
    const EACH: usize = 100;
    // Large lines, so a write that is not atomic with respect to the others would show. Every
    // string field is bounded (`Event::bound_lengths`), so the padding is several report-only
    // entries of `CHUNK` bytes each.
    const PAD: usize = 16 * 1024;
    const CHUNK: usize = 1024;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let log = AuditLog::open(&dir).await.unwrap();

    let padded = |who: &str, i: usize| {
        let mut e = event(EventType::TokenCreated, &format!("{who}-{i}"));
        let c = char::from(b'a' + (i % 26) as u8);
        let chunk: String = std::iter::repeat_n(c, CHUNK).collect();
        e.report_only = Some(vec![chunk; PAD / CHUNK]);
        e
    };

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    append_sync(&dir, &padded(&format!("cli{t}"), i)).unwrap();
                }
            })
        })
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    if i % 2 == 0 {
                        log.record(padded(&format!("gw{t}"), i)).await.unwrap();
                    } else {
                        log.record_nowait(padded(&format!("gw{t}"), i));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    log.close().await.unwrap();
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            thread.join().unwrap();
        }
    })
    .await
    .unwrap();

    let stored = recorded(&dir);
    assert_eq!(stored.len(), (THREADS + TASKS) * EACH);
    // Interleaved appenders continued one chain: every link verifies.
    assert_verifies(&dir);
    let mut seen = HashSet::new();
    for e in stored {
        let id = e.session_id.unwrap();
        let i: usize = id.rsplit_once('-').unwrap().1.parse().unwrap();
        let c = char::from(b'a' + (i % 26) as u8);
        let detail = e.report_only.unwrap().concat();
        assert_eq!(detail.len(), PAD, "{id}");
        assert!(
            detail.chars().all(|d| d == c),
            "{id} detail mixed with another line"
        );
        assert!(seen.insert(id));
    }
    for t in 0..THREADS {
        for i in 0..EACH {
            assert!(seen.contains(&format!("cli{t}-{i}")), "cli{t}-{i} missing");
        }
    }
    for t in 0..TASKS {
        for i in 0..EACH {
            assert!(seen.contains(&format!("gw{t}-{i}")), "gw{t}-{i} missing");
        }
    }
}

#[tokio::test]
async fn created_directory_is_0700_and_file_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("var");
    let dir = parent.join("audit");
    let log = AuditLog::open(&dir).await.unwrap();
    log.record(Event::new(EventType::GatewayStarted))
        .await
        .unwrap();
    log.close().await.unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&parent), 0o700, "missing parents are created 0700 too");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&first_segment_path(&dir)), 0o600);

    let cli_dir = tmp.path().join("cli-audit");
    append_sync(&cli_dir, &Event::new(EventType::TokenCreated)).unwrap();
    assert_eq!(mode(&cli_dir), 0o700);
    assert_eq!(mode(&first_segment_path(&cli_dir)), 0o600);
}

#[test]
fn read_all_names_file_and_line_of_a_corrupt_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    append_sync(dir, &event(EventType::SessionStart, "a")).unwrap();
    append_sync(dir, &event(EventType::SessionEnd, "a")).unwrap();
    let path = first_segment_path(dir);
    // A complete but invalid line: appended behind the writers' backs (not torn, so kept).
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"v\":1,\"ts\":\"x\",\"type\":\"session.start\",\"bytes_up\":\"lots\"}\n")
        .unwrap();
    append_sync(dir, &event(EventType::SessionStart, "b")).unwrap();

    let err = read_all(dir).unwrap_err();
    match &err {
        AuditError::Parse { path: p, line, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 3);
        }
        other => panic!("expected a parse error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");

    // The streaming reader reports the bad line and carries on.
    let results: Vec<_> = events(dir).unwrap().collect();
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
    assert!(matches!(results[2], Err(AuditError::Parse { line: 3, .. })));
    let last = results[3].as_ref().unwrap();
    assert_eq!(last.line, 4);
    assert_eq!(last.event.session_id.as_deref(), Some("b"));
    assert_eq!(last.raw, lines(dir)[3]);
}

#[test]
fn a_torn_last_line_is_cut_and_recorded_before_the_next_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    append_sync(dir, &event(EventType::SessionStart, "before")).unwrap();
    let intact = fs::metadata(first_segment_path(dir)).unwrap().len();
    // What a crash in the middle of a write can leave behind.
    let torn = br#"{"v":1,"seq":2,"ts":"2025-01-01T00:00:00.000000Z","ty"#;
    fs::OpenOptions::new()
        .append(true)
        .open(first_segment_path(dir))
        .unwrap()
        .write_all(torn)
        .unwrap();
    append_sync(dir, &event(EventType::SessionEnd, "after")).unwrap();

    let all = read_all(dir).unwrap();
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["session.start", "audit.recovered", "session.end"]);
    let recovered = &all[1];
    let meta = recovered.audit.as_ref().unwrap();
    assert_eq!(meta.torn_bytes, Some(torn.len() as u64));
    assert_eq!(meta.offset, Some(intact));
    assert_eq!(meta.segment.as_deref(), Some("audit.jsonl"));
    let detail = recovered.detail.as_deref().unwrap();
    assert!(detail.contains("after seq 1"), "{detail}");
    assert!(
        detail.contains(r#""ty"#),
        "the record quotes what was cut: {detail}"
    );
    assert_eq!(all[2].seq, Some(3));
    assert_verifies(dir);
}

#[test]
fn reading_a_directory_without_a_log_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let err = read_all(tmp.path()).unwrap_err();
    assert!(matches!(err, AuditError::NoLog { .. }), "{err}");
    assert!(err.to_string().contains("audit.jsonl"), "{err}");
    let err = read_all(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, AuditError::NoLog { .. }), "{err}");
}

#[tokio::test]
async fn an_unwritable_directory_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, b"not a directory").unwrap();

    let under_file = file.join("audit");
    let err = AuditLog::open(&under_file).await.unwrap_err();
    assert!(matches!(err, AuditError::CreateDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&under_file.display().to_string()),
        "{err}"
    );
    let err = append_sync(&under_file, &Event::new(EventType::TokenCreated)).unwrap_err();
    assert!(matches!(err, AuditError::CreateDir { .. }), "{err}");

    // The directory itself being a file.
    let err = AuditLog::open(&file).await.unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");
}

/// A log that cannot be written does not open (here: the segment is `/dev/full`, so every write
/// gets ENOSPC): `open` writes `audit.started` durably, so a gateway that cannot audit does not
/// start. Sticky failure of a running writer is tested on a real full file system in
/// `full_disk.rs`.
#[tokio::test]
async fn a_log_that_cannot_be_written_does_not_open() {
    let dev_full = Path::new("/dev/full");
    assert!(dev_full.exists(), "this test needs Linux /dev/full");
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dev_full, first_segment_path(tmp.path())).unwrap();

    let err = AuditLog::open(tmp.path()).await.unwrap_err();
    assert!(matches!(err, AuditError::Write { .. }), "{err}");
    assert!(err.to_string().contains("audit.jsonl"), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    let err = append_sync(tmp.path(), &event(EventType::SessionStart, "s1")).unwrap_err();
    assert!(matches!(err, AuditError::Write { .. }), "{err}");
}
