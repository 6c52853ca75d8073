//! Tamper evidence: the hash chain, signed checkpoints, audit.head and witnesses, rotation,
//! and writers in several processes continuing one chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use postern_audit::verify::{verify, KeySource, VerifyOptions, VerifyReport};
use postern_audit::{
    append_sync, canonical_bytes, first_segment_path, line_hash, read_all, segment_paths,
    AuditError, AuditKey, AuditLog, AuditOptions, AuditPublicKey, DecisionRef, Event, EventType,
    Witness, AUDIT_KEY_FILE, GENESIS, HEAD_FILE,
};

fn check(dir: &Path) -> VerifyReport {
    verify(dir, &VerifyOptions::default()).unwrap()
}

fn pubkey(key_dir: &Path) -> AuditPublicKey {
    AuditKey::load_or_create(key_dir).unwrap().public_key()
}

/// A signed log of 23 events (checkpoint every 5, closing checkpoint), in `tmp/log`.
async fn fixture(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp.join("log");
    let keys = tmp.join("state");
    signed_log(&dir, &keys, 23, 5).await;
    (dir, keys)
}

/// `(seq, byte offset, line)` of every line of a segment.
fn indexed(path: &Path) -> Vec<(u64, u64, String)> {
    let mut offset = 0;
    segment_lines(path)
        .into_iter()
        .map(|l| {
            let e: Event = serde_json::from_str(l.trim_end()).unwrap();
            let here = offset;
            offset += l.len() as u64;
            (e.seq.unwrap(), here, l)
        })
        .collect()
}

/// Recomputes `prev` and `hash` of every line from `from` on, as an attacker without the key
/// would after editing: the chain is consistent again; only signatures can tell.
fn rechain(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let prev_hash = if i == 0 {
            "0".repeat(64)
        } else {
            let p: Event = serde_json::from_str(lines[i - 1].trim_end()).unwrap();
            p.hash.unwrap()
        };
        let mut e: Event = serde_json::from_str(lines[i].trim_end()).unwrap();
        let old_prev = e.prev.clone().unwrap();
        let old_hash = e.hash.take().unwrap();
        let line = lines[i].trim_end().replace(
            &format!(r#""prev":"{old_prev}""#),
            &format!(r#""prev":"{prev_hash}""#),
        );
        let mut prev = [0u8; 32];
        for (j, b) in prev.iter_mut().enumerate() {
            *b = u8::from_str_radix(&prev_hash[2 * j..2 * j + 2], 16).unwrap();
        }
        let new_hash = line_hash(&prev, line.as_bytes()).unwrap();
        let hex: String = new_hash.iter().map(|b| format!("{b:02x}")).collect();
        lines[i] = format!("{}\n", line.replace(&old_hash, &hex));
    }
}

#[tokio::test]
async fn an_intact_signed_log_verifies_with_and_without_the_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    // audit.started + 23 events + 4 count checkpoints + closing checkpoint.
    assert_eq!(report.events, 29);
    assert_eq!(report.last_seq, 29);
    assert_eq!(report.checkpoints, 5);
    assert_eq!(report.unsigned_tail, 0);
    assert!(report.head_checked);
    assert_eq!(report.key_source, KeySource::FromLog);
    assert_eq!(report.last_checkpoint.as_ref().unwrap().reason, "close");

    let with_key = verify(
        &dir,
        &VerifyOptions {
            pubkey: Some(pubkey(&keys)),
            require_closed: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(with_key.is_ok(), "{:?}", with_key.problems);
    assert_eq!(with_key.key_source, KeySource::Given);

    // Every event after the first links to the one before it.
    let events = read_all(&dir).unwrap();
    assert_eq!(events[0].prev.as_deref(), Some("0".repeat(64).as_str()));
    for pair in events.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
        assert_eq!(pair[1].seq.unwrap(), pair[0].seq.unwrap() + 1);
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[0], "audit.started");
    assert_eq!(
        kinds.iter().filter(|k| **k == "audit.checkpoint").count(),
        5
    );
    assert_eq!(
        events
            .last()
            .unwrap()
            .audit
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("close")
    );
    assert!(events
        .iter()
        .all(|e| e.gateway.as_deref() == Some("gw-test")));
}

#[tokio::test]
async fn an_edited_byte_is_caught_at_its_seq_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = indexed(&seg);
    let (seq, offset, line) = lines[7].clone();
    assert!(line.contains("user"), "{line}");
    let mut bytes = fs::read(&seg).unwrap();
    let at = offset as usize + line.find("\"user\":\"user").unwrap() + 12;
    bytes[at] = b'X'; // user1 -> userX
    fs::write(&seg, &bytes).unwrap();

    let report = check(&dir);
    assert!(!report.is_ok());
    assert_eq!(report.problem_count, 1, "{:?}", report.problems);
    let first = report.first_problem().unwrap();
    assert_eq!(first.seq, Some(seq));
    assert_eq!(first.offset, offset);
    assert_eq!(first.line, 8);
    assert!(first.what.contains("was edited"), "{}", first.what);

    let out = run(&["verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "first broken: seq {seq} at {} offset {offset} (line 8)",
            seg.display()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn an_edit_with_the_chain_recomputed_is_caught_by_the_checkpoint_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let mut lines = segment_lines(&seg);
    lines[3] = lines[3].replace("\"user\":\"user", "\"user\":\"mallory");
    rechain(&mut lines, 3);
    fs::write(&seg, lines.concat()).unwrap();

    let report = verify(
        &dir,
        &VerifyOptions {
            pubkey: Some(pubkey(&keys)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(!report.is_ok());
    let first = report.first_problem().unwrap();
    // The first checkpoint after the edit (seq 6: started, 4 events, checkpoint once 5 were
    // written since the start) no longer verifies; the links themselves all do.
    assert_eq!(first.seq, Some(6), "{:?}", report.problems);
    assert!(
        first.what.contains("signature is not valid"),
        "{}",
        first.what
    );
    assert!(report
        .problems
        .iter()
        .all(|p| !p.what.contains("the line was edited")));
}

#[tokio::test]
async fn a_removed_event_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = indexed(&seg);
    let mut kept: Vec<String> = lines.iter().map(|(_, _, l)| l.clone()).collect();
    kept.remove(10);
    fs::write(&seg, kept.concat()).unwrap();

    let report = check(&dir);
    assert!(!report.is_ok());
    let first = report.first_problem().unwrap();
    // Reported at the event after the gap, where the removed one stood.
    assert_eq!(first.seq, Some(lines[11].0));
    assert_eq!(first.offset, lines[10].1);
    assert!(first.what.contains("1 event(s) missing"), "{}", first.what);
    assert!(
        first.what.contains("prev is not the hash"),
        "{}",
        first.what
    );
}

#[tokio::test]
async fn two_swapped_events_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = indexed(&seg);
    let mut swapped: Vec<String> = lines.iter().map(|(_, _, l)| l.clone()).collect();
    swapped.swap(12, 13);
    fs::write(&seg, swapped.concat()).unwrap();

    let report = check(&dir);
    assert!(!report.is_ok());
    let first = report.first_problem().unwrap();
    assert_eq!(first.seq, Some(lines[13].0));
    assert_eq!(first.offset, lines[12].1);
    assert!(first.what.contains("missing"), "{}", first.what);
    assert!(
        report.problems[1].what.contains("reordered or repeated"),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn a_truncated_tail_after_a_checkpoint_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = indexed(&seg);
    // Cut everything after the second checkpoint: what is left is a consistent, signed log.
    let cps: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, (_, _, l))| l.contains("audit.checkpoint"))
        .map(|(i, _)| i)
        .collect();
    let cut = cps[1];
    let kept: String = lines[..=cut].iter().map(|(_, _, l)| l.as_str()).collect();
    let witness = run(&["checkpoint", dir.to_str().unwrap()]);
    assert!(witness.status.success(), "{}", stderr(&witness));
    let witness_file = tmp.path().join("witness.txt");
    fs::write(&witness_file, stdout(&witness)).unwrap();
    fs::write(&seg, kept).unwrap();

    // audit.head still names the closing checkpoint.
    let report = check(&dir);
    assert!(!report.is_ok());
    let msg = &report.first_problem().unwrap().what;
    assert!(msg.contains("audit.head names checkpoint seq 29"), "{msg}");
    assert!(
        msg.contains(&format!("the log ends at seq {}", lines[cut].0)),
        "{msg}"
    );
    assert!(msg.contains("truncated"), "{msg}");
    let out = run(&["verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));

    // Deleting audit.head too does not hide it.
    fs::remove_file(dir.join(HEAD_FILE)).unwrap();
    let report = check(&dir);
    assert!(report
        .first_problem()
        .unwrap()
        .what
        .contains("audit.head is missing"));

    // A careful attacker puts back an audit.head naming the checkpoint they cut to: the log
    // alone now looks whole; only what an outside witness holds (or a SIEM received) tells.
    let older =
        Witness::from_event(&serde_json::from_str(lines[cut].2.trim_end()).unwrap()).unwrap();
    fs::write(dir.join(HEAD_FILE), format!("{}\n", older.to_line())).unwrap();
    assert!(check(&dir).is_ok(), "the documented limit of a local check");
    let out = run(&[
        "verify",
        dir.to_str().unwrap(),
        "--witness",
        witness_file.to_str().unwrap(),
        "--pubkey",
        keys.join(AUDIT_KEY_FILE).to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a private key file is not a public key: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("postern-audit pubkey"),
        "{}",
        stderr(&out)
    );
    let pem = tmp.path().join("audit.pub");
    let out = run(&["pubkey", keys.to_str().unwrap()]);
    fs::write(&pem, stdout(&out)).unwrap();
    let out = run(&[
        "verify",
        dir.to_str().unwrap(),
        "--witness",
        witness_file.to_str().unwrap(),
        "--pubkey",
        pem.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("witness 1 names checkpoint seq 29"),
        "{}",
        stdout(&out)
    );
    // And an archive must end with a closing checkpoint.
    let out = run(&["verify", dir.to_str().unwrap(), "--closed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("does not end with a closing checkpoint"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let mut lines = segment_lines(&seg);
    let i = lines
        .iter()
        .position(|l| l.contains("audit.checkpoint"))
        .unwrap();
    // Flip one digit of the signature and fix up the chain, so only the signature is wrong.
    let sig_at = lines[i].find("\"sig\":\"").unwrap() + 7;
    let old = lines[i].as_bytes()[sig_at];
    let new = if old == b'0' { '1' } else { '0' };
    lines[i].replace_range(sig_at..sig_at + 1, &new.to_string());
    rechain(&mut lines, i);
    fs::write(&seg, lines.concat()).unwrap();
    fs::remove_file(dir.join(HEAD_FILE)).unwrap(); // its hash no longer matches; not the point

    let report = check(&dir);
    let first = report.first_problem().unwrap();
    assert_eq!(first.seq, Some(i as u64 + 1));
    assert!(
        first.what.contains("signature is not valid"),
        "{}",
        first.what
    );

    // A checkpoint signed with another key (valid signature, wrong signer).
    let (dir2, _) = {
        let t = tmp.path().join("two");
        fixture(&t).await
    };
    let mut lines = segment_lines(&first_segment(&dir2));
    let other = AuditKey::generate().unwrap();
    let i = lines
        .iter()
        .position(|l| l.contains("audit.checkpoint"))
        .unwrap();
    let cp: Event = serde_json::from_str(lines[i].trim_end()).unwrap();
    let real_key_hex = cp.audit.unwrap().key.unwrap();
    let other_key_hex = other.public_key().to_hex();
    lines[i] = lines[i].replace(&real_key_hex, &other_key_hex);
    rechain(&mut lines, i);
    fs::write(first_segment(&dir2), lines.concat()).unwrap();
    fs::remove_file(dir2.join(HEAD_FILE)).unwrap();
    let report = verify(
        &dir2,
        &VerifyOptions {
            pubkey: Some(pubkey(&tmp.path().join("two/state"))),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    let first = report.first_problem().unwrap();
    assert!(
        first
            .what
            .contains(&format!("checkpoint names key {other_key_hex}")),
        "{}",
        first.what
    );
    // Without --pubkey the key named by audit.started is trusted, and the same is caught.
    assert!(check(&dir2)
        .first_problem()
        .unwrap()
        .what
        .contains("names key"));
}

#[tokio::test]
async fn rotation_continues_the_chain_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let options = AuditOptions {
        segment_max_bytes: 4000,
        ..signed_options(&tmp.path().join("state"), 1000)
    };
    let log = AuditLog::open_with(&dir, options).await.unwrap();
    for i in 0..60 {
        log.record(session_event(
            EventType::SessionStart,
            "ann",
            &format!("s{i}"),
        ))
        .await
        .unwrap();
    }
    log.close().await.unwrap();
    let segments = segment_paths(&dir).unwrap();
    assert!(segments.len() >= 5, "{segments:?}");
    assert_eq!(segments[1].file_name().unwrap(), "audit.000002.jsonl");
    // Each segment but the last ends with a `rotate` checkpoint; the next one's first event
    // links to it.
    for pair in segments.windows(2) {
        let a = segment_lines(&pair[0]);
        let b = segment_lines(&pair[1]);
        let last: Event = serde_json::from_str(a.last().unwrap().trim_end()).unwrap();
        let first: Event = serde_json::from_str(b[0].trim_end()).unwrap();
        assert_eq!(last.kind, "audit.checkpoint");
        assert_eq!(last.audit.unwrap().reason.as_deref(), Some("rotate"));
        assert_eq!(first.prev, last.hash);
        assert_eq!(first.seq.unwrap(), last.seq.unwrap() + 1);
    }
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.segments, segments.len());
    let ids: Vec<String> = read_all(&dir)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.session_id)
        .collect();
    assert_eq!(ids, (0..60).map(|i| format!("s{i}")).collect::<Vec<_>>());

    // A missing middle segment is a gap.
    fs::remove_file(&segments[2]).unwrap();
    let report = check(&dir);
    assert!(
        report.first_problem().unwrap().what.contains("missing"),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn checkpoints_come_by_time_too_and_audit_head_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let options = AuditOptions {
        checkpoint_events: 0,
        checkpoint_interval: Duration::from_millis(200),
        ..signed_options(&tmp.path().join("state"), 0)
    };
    let log = AuditLog::open_with(&dir, options).await.unwrap();
    log.record(session_event(EventType::SessionStart, "ann", "s1"))
        .await
        .unwrap();
    let got = wait_for(Duration::from_secs(5), || {
        (log.stats().checkpoints >= 1).then_some(())
    });
    assert!(got.is_some(), "no checkpoint by time: {:?}", log.stats());
    // Idle: no more checkpoints when nothing new was written.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(log.stats().checkpoints, 1);
    let events = read_all(&dir).unwrap();
    let cp = events.last().unwrap();
    assert_eq!(
        cp.audit.as_ref().unwrap().reason.as_deref(),
        Some("interval")
    );
    let head = Witness::parse(&fs::read_to_string(dir.join(HEAD_FILE)).unwrap()).unwrap();
    assert_eq!(Some(head.seq), cp.seq);
    assert_eq!(Some(&head.hash), cp.hash.as_ref());
    log.close().await.unwrap();
    let printed = run(&["checkpoint", dir.to_str().unwrap()]);
    let w = Witness::parse(&stdout(&printed)).unwrap();
    assert_eq!(w.reason, "close");
    assert!(w.signature_valid(&pubkey(&tmp.path().join("state"))));
    assert_eq!(
        fs::read_to_string(dir.join(HEAD_FILE)).unwrap().trim(),
        w.to_line()
    );
}

#[tokio::test]
async fn writers_in_several_processes_continue_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let options = AuditOptions {
        segment_max_bytes: 64 * 1024,
        ..signed_options(&tmp.path().join("state"), 50)
    };
    let log = AuditLog::open_with(&dir, options).await.unwrap();
    // Two admin-CLI-like processes appending with append_sync while the writer runs.
    let procs: Vec<_> = (0..2)
        .map(|p| {
            std::process::Command::new(bin())
                .args(["load", dir.to_str().unwrap(), "--append-sync", "--quiet"])
                .args(["--events", "150", "--tag", &format!("cli{p}")])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                log.record(session_event(
                    EventType::SessionStart,
                    "gw",
                    &format!("gw{t}-{i}"),
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for mut p in procs {
        assert!(tokio::task::spawn_blocking(move || p.wait().unwrap())
            .await
            .unwrap()
            .success());
    }
    log.close().await.unwrap();

    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(
        report.segments > 1,
        "rotation happened while others appended"
    );
    let ids: std::collections::HashSet<String> = read_all(&dir)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.session_id)
        .collect();
    assert_eq!(ids.len(), 2 * 150 + 4 * 150);
    for p in 0..2 {
        for i in 0..150 {
            assert!(ids.contains(&format!("cli{p}-{i}")));
        }
    }
}

/// A decision carrying the fields added after v1 was first written.
fn full_decision() -> DecisionRef {
    DecisionRef {
        effect: "allow".into(),
        rule: Some("rads-day".into()),
        policy_version: Some("sha256:0f1e".into()),
        reason: "group radiologists, weekday 08-18".into(),
        matched_allows: vec!["rads-day".into(), "on-call".into()],
        matched_denies: vec![],
        valid_until: Some("2026-12-04T18:00:00Z".into()),
    }
}

#[tokio::test]
async fn a_decision_with_matched_rules_and_valid_until_round_trips_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let keys = tmp.path().join("state");
    let log = AuditLog::open_with(&dir, signed_options(&keys, 100))
        .await
        .unwrap();
    let mut start = session_event(EventType::SessionStart, "ann", "s-new");
    start.decision = Some(full_decision());
    log.record(start).await.unwrap();
    let mut denied = session_event(EventType::SessionDenied, "bob", "s-deny");
    denied.decision = Some(DecisionRef {
        effect: "deny".into(),
        rule: Some("unmanaged".into()),
        reason: "device is not managed".into(),
        matched_allows: vec!["rads-day".into()],
        matched_denies: vec!["unmanaged".into()],
        ..DecisionRef::default()
    });
    log.record(denied).await.unwrap();
    log.close().await.unwrap();

    let options = VerifyOptions {
        pubkey: Some(pubkey(&keys)),
        require_closed: true,
        ..VerifyOptions::default()
    };
    let report = verify(&dir, &options).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.events, 4,
        "started, two sessions, closing checkpoint"
    );

    let events = read_all(&dir).unwrap();
    let decisions: Vec<&DecisionRef> = events.iter().filter_map(|e| e.decision.as_ref()).collect();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0], &full_decision());
    assert_eq!(decisions[1].matched_denies, ["unmanaged"]);
    assert_eq!(decisions[1].valid_until, None);
    let seg = first_segment(&dir);
    let text = fs::read_to_string(&seg).unwrap();
    assert!(
        text.contains(
            r#""matched_allows":["rads-day","on-call"],"valid_until":"2026-12-04T18:00:00Z"}"#
        ),
        "empty matched_denies is omitted: {text}"
    );

    // The new fields are covered by the chain like every other: moving the deadline is caught.
    fs::write(
        &seg,
        text.replace("2026-12-04T18:00:00Z", "2026-12-04T23:00:00Z"),
    )
    .unwrap();
    let report = verify(&dir, &options).unwrap();
    assert!(!report.is_ok());
    let first = report.first_problem().unwrap();
    assert_eq!(first.seq, Some(2));
    assert!(first.what.contains("was edited"), "{}", first.what);
}

/// A `session.start` as written before `DecisionRef` had `matched_allows`, `matched_denies` and
/// `valid_until`. Its hash was computed outside Rust (SHA-256 of 32 zero bytes followed by the
/// line without its hash member), so this test does not take the writer's word for it.
const OLD_LINE: &str = concat!(
    r#"{"v":1,"seq":1,"ts":"2025-03-01T22:15:02.123456Z","type":"session.start","#,
    r#""session_id":"s-old","user":"sub-ann","endpoint":{"name":"truro-pacs-dicom","#,
    r#""site":"truro","host":"10.1.2.3","port":104,"protocol":"dicom"},"#,
    r#""decision":{"effect":"allow","rule":"rads","policy_version":"sha256:0f1e","#,
    r#""reason":"group radiologists"},"gateway":"gw-1","#,
    r#""prev":"0000000000000000000000000000000000000000000000000000000000000000","#,
    r#""hash":"9da5b346d817b7606a2bda735c87e3d65f2cec557c100d44dfad2fbfe1c9661e"}"#
);

#[test]
fn an_old_line_without_the_new_decision_fields_still_verifies_and_the_chain_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(first_segment_path(&dir), format!("{OLD_LINE}\n")).unwrap();

    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 1);

    let old: Event = serde_json::from_str(OLD_LINE).unwrap();
    let decision = old.decision.clone().unwrap();
    assert_eq!(decision.rule.as_deref(), Some("rads"));
    assert!(decision.matched_allows.is_empty() && decision.matched_denies.is_empty());
    assert_eq!(decision.valid_until, None);
    // This version serializes the old event to exactly its canonical bytes: the schema change
    // does not alter how events without the new fields are written (or hashed).
    let canonical = canonical_bytes(OLD_LINE.as_bytes()).unwrap();
    let reserialized = serde_json::to_vec(&Event {
        hash: None,
        ..old.clone()
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(reserialized).unwrap(),
        String::from_utf8(canonical).unwrap()
    );
    let claimed = old.hash.clone().unwrap();
    let recomputed = line_hash(&GENESIS, OLD_LINE.as_bytes()).unwrap();
    assert_eq!(
        recomputed
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        claimed
    );

    // A new writer continues the old chain with an event carrying the new fields.
    let mut next = session_event(EventType::SessionStart, "ann", "s-new");
    next.decision = Some(full_decision());
    append_sync(&dir, &next).unwrap();
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 2);
    let events = read_all(&dir).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], old);
    assert_eq!(events[1].seq, Some(2));
    assert_eq!(events[1].prev, old.hash);
    assert_eq!(events[1].decision, Some(full_decision()));
}

#[tokio::test]
async fn audit_types_are_reserved_for_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).await.unwrap();
    let forged = Event::new(EventType::AuditCheckpoint);
    let err = log.record(forged.clone()).await.unwrap_err();
    assert!(matches!(err, AuditError::Reserved { .. }), "{err}");
    let err = append_sync(tmp.path(), &forged).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    log.record_nowait(forged);
    log.flush().await.unwrap();
    assert_eq!(log.stats().failed, 1);
    assert!(
        log.health().is_ok(),
        "a refused event does not fail the log"
    );
    log.close().await.unwrap();
}

#[test]
fn the_audit_key_is_created_once_private_and_exportable() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let key = AuditKey::load_or_create(&state).unwrap();
    let path = state.join(AUDIT_KEY_FILE);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = AuditKey::load_or_create(&state).unwrap();
    assert_eq!(key.public_key(), again.public_key());
    assert_eq!(
        AuditKey::from_pkcs8(&fs::read(&path).unwrap())
            .unwrap()
            .public_key(),
        key.public_key()
    );
    assert!(!format!("{key:?}").contains("pkcs8"), "{key:?}");

    let pem = run(&["pubkey", state.to_str().unwrap()]);
    assert!(pem.status.success(), "{}", stderr(&pem));
    assert_eq!(stdout(&pem), key.public_key().to_pem());
    let hex = run(&["pubkey", path.to_str().unwrap(), "--hex"]);
    assert_eq!(stdout(&hex).trim(), key.public_key().to_hex());
    assert_eq!(
        AuditPublicKey::parse(&stdout(&pem)).unwrap(),
        key.public_key()
    );

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = AuditKey::load_or_create(&state).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&path, b"not a key").unwrap();
    let err = AuditKey::load_or_create(&state).unwrap_err();
    assert!(
        err.to_string().contains("not an Ed25519 PKCS#8 key"),
        "{err}"
    );
}
