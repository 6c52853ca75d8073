//! A log cut short: `verify` with the unsigned placeholder put back as `audit.head`, and a writer
//! that finds the log shorter than (or different from) its `audit.head` when it opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use postern_audit::verify::{verify, VerifyOptions, VerifyReport};
use postern_audit::{
    append_sync, read_all, AuditError, AuditLog, AuditOptions, Event, EventType, Witness, HEAD_FILE,
};

fn check(dir: &Path) -> VerifyReport {
    verify(dir, &VerifyOptions::default()).unwrap()
}

/// A signed log of 23 events (checkpoint every 5, closing checkpoint), in `tmp/log`.
async fn fixture(tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("log");
    let keys = tmp.join("state");
    signed_log(&dir, &keys, 23, 5).await;
    (dir, keys)
}

/// What a writer puts in `audit.head` before the first checkpoint (unsigned, `seq` 0).
fn placeholder(keys: &Path) -> String {
    let key = postern_audit::AuditKey::load_or_create(keys)
        .unwrap()
        .public_key()
        .to_hex();
    format!(
        "{}\n",
        Witness::none("gw-test", &key, "2026-12-04T16:00:00.000000Z").to_line()
    )
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Event>(line.trim_end())
        .unwrap()
        .seq
        .unwrap()
}

#[tokio::test]
async fn a_log_cut_anywhere_after_a_checkpoint_with_the_placeholder_head_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = segment_lines(&seg);
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"audit.checkpoint\""))
        .collect();
    assert!(cps.len() >= 4, "{cps:?}");
    let mut tried = 0;
    // Every cut that keeps at least two signed checkpoints, including the whole log (only the
    // head replaced). With one, see the next test.
    for keep in cps[1] + 1..=lines.len() {
        let cut = tmp.path().join(format!("cut-{keep}"));
        copy_dir(&dir, &cut);
        fs::write(first_segment(&cut), lines[..keep].concat()).unwrap();
        fs::write(cut.join(HEAD_FILE), placeholder(&keys)).unwrap();
        let report = check(&cut);
        assert!(!report.is_ok(), "cut after line {keep} passed verify");
        let what = report
            .problems
            .iter()
            .map(|p| p.what.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            what.contains("audit.head is the unsigned placeholder"),
            "cut after line {keep}: {what}"
        );
        assert!(what.contains("signed checkpoint"), "{what}");
        let out = run(&["verify", cut.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        tried += 1;
    }
    assert!(tried > 10, "only {tried} cuts tried");
}

#[tokio::test]
async fn a_placeholder_head_beside_one_checkpoint_is_a_crash_before_the_head_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = segment_lines(&seg);
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"audit.checkpoint\""))
        .collect();
    // What a crash between the first checkpoint and the head update leaves (and, equally, a
    // cut back to the first checkpoint: the documented limit of a local check).
    fs::write(&seg, lines[..=cps[0]].concat()).unwrap();
    fs::write(dir.join(HEAD_FILE), placeholder(&keys)).unwrap();
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
    // The next writer brings audit.head up to that checkpoint.
    let log = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap();
    let head = Witness::parse(&fs::read_to_string(dir.join(HEAD_FILE)).unwrap()).unwrap();
    assert_eq!(head.seq, seq_of(&lines[cps[0]]));
    log.close().await.unwrap();
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_cut_before_the_first_checkpoint_with_the_placeholder_head_is_the_documented_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let seg = first_segment(&dir);
    let lines = segment_lines(&seg);
    let first_cp = lines
        .iter()
        .position(|l| l.contains("\"audit.checkpoint\""))
        .unwrap();
    assert!(first_cp >= 2);
    fs::write(&seg, lines[..first_cp].concat()).unwrap();
    fs::write(dir.join(HEAD_FILE), placeholder(&keys)).unwrap();
    // Nothing in the directory remembers that checkpoints existed: the log looks young.
    // docs/audit.md says so; only a witness held outside (or the SIEM's copy) tells.
    assert!(check(&dir).is_ok(), "the documented limit of a local check");
    let witness = tmp.path().join("witness.txt");
    let mut last_cp = lines
        .iter()
        .rev()
        .find(|l| l.contains("\"audit.checkpoint\""))
        .unwrap()
        .clone();
    last_cp.truncate(last_cp.trim_end().len());
    let w = Witness::from_event(&serde_json::from_str(&last_cp).unwrap()).unwrap();
    fs::write(&witness, w.to_line()).unwrap();
    let out = run(&[
        "verify",
        dir.to_str().unwrap(),
        "--witness",
        witness.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("truncated"), "{}", stdout(&out));
}

/// Cuts the fixture's only segment to its first `keep` lines; returns the `seq` of the last
/// line kept and the `seq` the head names.
fn cut_tail(dir: &Path, keep: usize) -> (u64, u64) {
    let seg = first_segment(dir);
    let lines = segment_lines(&seg);
    fs::write(&seg, lines[..keep].concat()).unwrap();
    let head = Witness::parse(&fs::read_to_string(dir.join(HEAD_FILE)).unwrap()).unwrap();
    (seq_of(&lines[keep - 1]), head.seq)
}

#[tokio::test]
async fn a_writer_refuses_a_log_shorter_than_its_head_unless_told_to_accept_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let (log_seq, head_seq) = cut_tail(&dir, 12);
    assert!(log_seq < head_seq);
    let before = fs::read(first_segment(&dir)).unwrap();

    let err = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Truncated { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("seq {head_seq}")) && msg.contains(&format!("seq {log_seq}")),
        "{msg}"
    );
    assert!(msg.contains("--accept-truncated-audit"), "{msg}");
    assert_eq!(
        fs::read(first_segment(&dir)).unwrap(),
        before,
        "nothing was appended to the cut log"
    );

    // An operator who accepts the loss: the writer records it, signs it, and the head follows.
    let log = AuditLog::open_with(
        &dir,
        AuditOptions {
            accept_truncation: true,
            ..signed_options(&keys, 5)
        },
    )
    .await
    .unwrap();
    log.close().await.unwrap();
    let events = read_all(&dir).unwrap();
    let found: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "audit.truncation_detected")
        .collect();
    assert_eq!(found.len(), 1, "{events:?}");
    let ev = found[0];
    assert_eq!(ev.seq, Some(log_seq + 1), "written right after the cut");
    let detail = ev.detail.as_deref().unwrap();
    assert!(
        detail.contains(&format!("seq {head_seq}")) && detail.contains(&format!("seq {log_seq}")),
        "{detail}"
    );
    // The next event is the writer's own start, and a signed checkpoint follows at once.
    assert_eq!(events[log_seq as usize + 1].kind, "audit.started");
    assert_eq!(events[log_seq as usize + 2].kind, "audit.checkpoint");
    let head = Witness::parse(&fs::read_to_string(dir.join(HEAD_FILE)).unwrap()).unwrap();
    assert!(head.seq > log_seq);

    // verify surfaces the accepted truncation: a problem (exit 1) naming both seqs, and
    // nothing else is wrong (the head matches the log again).
    let report = check(&dir);
    assert_eq!(report.problem_count, 1, "{:?}", report.problems);
    let p = report.first_problem().unwrap();
    assert_eq!(p.seq, Some(log_seq + 1));
    assert!(p.what.contains("audit.truncation_detected"), "{}", p.what);
    assert!(p.what.contains(&format!("seq {head_seq}")), "{}", p.what);
    let out = run(&["verify", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    // Opening again is ordinary: the head and the log agree now.
    let log = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap();
    log.close().await.unwrap();
    assert_eq!(
        read_all(&dir)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "audit.truncation_detected")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_writer_refuses_a_cut_log_that_was_extended_past_its_head() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let (log_seq, head_seq) = cut_tail(&dir, 12);
    // Admin commands kept appending to the cut log until it is longer than the head says.
    for i in 0..(head_seq - log_seq + 3) {
        let mut ev = Event::new(EventType::AdminCommand);
        ev.detail = Some(format!("command {i}"));
        append_sync(&dir, &ev).unwrap();
    }
    let err = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Truncated { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("seq {head_seq}")), "{msg}");
    // verify says the same.
    let report = check(&dir);
    assert!(!report.is_ok());
}

#[tokio::test]
async fn a_writer_refuses_a_log_whose_head_was_replaced_by_the_placeholder() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let (log_seq, _) = cut_tail(&dir, 17);
    fs::write(dir.join(HEAD_FILE), placeholder(&keys)).unwrap();
    let err = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Truncated { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("unsigned placeholder"), "{msg}");
    assert!(msg.contains(&format!("ends at seq {log_seq}")), "{msg}");
    // A restart cannot paper over it: the head still says placeholder, verify still fails.
    assert!(!check(&dir).is_ok());
}

#[tokio::test]
async fn a_lagging_head_catches_up_with_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = fixture(tmp.path()).await;
    let lines = segment_lines(&first_segment(&dir));
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"audit.checkpoint\""))
        .collect();
    // audit.head one checkpoint behind (a crash before its update): fine, and updated.
    let older =
        Witness::from_event(&serde_json::from_str(lines[cps[cps.len() - 2]].trim_end()).unwrap())
            .unwrap();
    fs::write(dir.join(HEAD_FILE), format!("{}\n", older.to_line())).unwrap();
    assert!(check(&dir).is_ok());
    let log = AuditLog::open_with(&dir, signed_options(&keys, 5))
        .await
        .unwrap();
    let head = Witness::parse(&fs::read_to_string(dir.join(HEAD_FILE)).unwrap()).unwrap();
    assert_eq!(head.seq, seq_of(&lines[cps[cps.len() - 1]]));
    log.close().await.unwrap();
    let report = check(&dir);
    assert!(report.is_ok(), "{:?}", report.problems);
}
