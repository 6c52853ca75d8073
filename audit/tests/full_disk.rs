//! Fail closed on a full disk: a small file system of the test's own (tmpfs, else a loop
//! ext4 image) fills up under the writer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use postern_audit::verify::{verify, VerifyOptions};
use postern_audit::{AuditError, AuditLog, EventType};

/// A mounted file system, unmounted on drop (also when the test panics).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// Mounts a 1 MiB tmpfs at `at`, or failing that a loop-mounted ext4 image.
fn small_fs(work: &Path, at: &Path) -> Result<Mounted, String> {
    fs::create_dir_all(at).unwrap();
    let tmpfs = sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(at));
    let Err(tmpfs_err) = tmpfs else {
        return Ok(Mounted(at.to_owned()));
    };
    let image = work.join("fs.img");
    let loop_fs = sh(Command::new("truncate").args(["-s", "4M"]).arg(&image))
        .and_then(|()| sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)))
        .and_then(|()| {
            sh(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(at))
        });
    match loop_fs {
        Ok(()) => Ok(Mounted(at.to_owned())),
        Err(loop_err) => Err(format!("tmpfs: {tmpfs_err}; loop: {loop_err}")),
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed_and_the_log_stays_verifiable() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _mounted = match small_fs(tmp.path(), &mnt) {
        Ok(m) => m,
        Err(why) => {
            println!(
                "SKIPPED: cannot mount a small file system of the test's own (needs root): {why}"
            );
            return;
        }
    };
    let dir = mnt.join("audit");
    let keys = tmp.path().join("state"); // the key lives elsewhere
                                         // Ballast, removed later to show the log continues once there is room.
    fs::create_dir_all(&dir).unwrap();
    let ballast = mnt.join("ballast");
    fs::write(&ballast, vec![0u8; 128 * 1024]).unwrap();

    let log = AuditLog::open_with(&dir, signed_options(&keys, 20))
        .await
        .unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..100_000 {
        let mut e = session_event(EventType::SessionStart, "ann", &format!("s{i}"));
        e.detail = Some("x".repeat(900));
        match log.record(e).await {
            Ok(()) => acked.push(format!("s{i}")),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the disk never filled");
    assert!(
        matches!(err, AuditError::Write { .. } | AuditError::Sync { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(
        acked.len() > 100,
        "wrote {} events before filling",
        acked.len()
    );

    // Fail closed: every later event is refused with a message that says why.
    let health = log.health().unwrap_err();
    let msg = health.to_string();
    assert!(matches!(health, AuditError::Failed { .. }), "{msg}");
    assert!(msg.contains("unusable after an earlier failure"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    let err = log
        .record(session_event(EventType::SessionStart, "bob", "late"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Failed { .. }), "{err}");
    log.record_nowait(session_event(EventType::SessionEnd, "bob", "late"));
    assert!(log.flush().await.is_err());
    assert_eq!(log.stats().failed, 1);
    assert!(
        log.close().await.is_err(),
        "close reports that events were lost"
    );

    // What is on disk is intact (the failed batch was cut back) and holds every ack.
    let report = verify(&dir, &VerifyOptions::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let ids: std::collections::HashSet<String> = postern_audit::read_all(&dir)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.session_id)
        .collect();
    assert!(acked.iter().all(|id| ids.contains(id)));
    assert!(!ids.contains("late"));

    // With room again, a new writer continues the same chain.
    fs::remove_file(&ballast).unwrap();
    let log = AuditLog::open_with(&dir, signed_options(&keys, 20))
        .await
        .unwrap();
    log.record(session_event(EventType::SessionStart, "ann", "after"))
        .await
        .unwrap();
    log.close().await.unwrap();
    let report = verify(&dir, &VerifyOptions::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    println!(
        "full disk: {} events acknowledged before ENOSPC; log verifies ({} events, {} checkpoints)",
        acked.len(),
        report.events,
        report.checkpoints
    );
}
