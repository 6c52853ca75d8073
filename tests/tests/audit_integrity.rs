//! Audit log integrity with the real binaries: a log cut at its end stops the gateway from
//! starting; `--accept-truncated-audit` starts it and records the loss, which `postern-audit
//! verify` reports from then on; a head replaced by the unsigned placeholder is caught too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use postern_e2e::{bin, run, wait_for, Deployment, Proc};
use serde_json::Value;

const POLICY: &str = r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = 9
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo"]
max_session = "1h"
"#;

/// A gateway that ran, wrote some events, and stopped cleanly (a closing checkpoint in
/// `audit.head`). Returns the deployment and the `seq` the head names.
fn stopped_gateway_with_a_signed_log() -> (Deployment, u64) {
    let mut d = Deployment::gateway_only(POLICY);
    for _ in 0..3 {
        d.enroll_token("truro", "10m");
    }
    let code = d
        .gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let head = head(&d);
    assert_eq!(head["reason"], "close", "{head}");
    let seq = head["seq"].as_u64().unwrap();
    assert!(seq > 5, "{head}");
    (d, seq)
}

fn head_path(d: &Deployment) -> PathBuf {
    d.path("gw/audit/audit.head")
}

fn head(d: &Deployment) -> Value {
    serde_json::from_str(&std::fs::read_to_string(head_path(d)).unwrap()).unwrap()
}

/// Removes the last `n` lines of the (only) segment; returns the `seq` of the last line kept.
fn cut_tail(d: &Deployment, n: usize) -> u64 {
    let seg = d.path("gw/audit/audit.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = &lines[..lines.len() - n];
    std::fs::write(&seg, format!("{}\n", kept.join("\n"))).unwrap();
    let last: Value = serde_json::from_str(kept[kept.len() - 1]).unwrap();
    last["seq"].as_u64().unwrap()
}

/// `postern-gateway run` with `extra` arguments, as process `name`.
fn spawn_gateway(d: &Deployment, name: &str, extra: &[&str]) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin("postern-gateway"))
            .args(["run", "--config"])
            .arg(d.gateway_toml())
            .args(extra)
            .env("POSTERN_LOG", "info"),
        d.path(&format!("{name}.log")),
    )
}

/// Waits until `p` exits (it must, within 20 s); returns its exit code and output.
fn exits(p: &mut Proc) -> (Option<i32>, String) {
    let status = wait_for(
        &format!("{} to exit", p.name),
        Duration::from_secs(20),
        || p.child.try_wait().ok().flatten(),
    );
    (status.code(), p.log_text())
}

#[test]
fn a_cut_audit_log_stops_the_gateway_until_the_loss_is_accepted_and_recorded() {
    let (mut d, head_seq) = stopped_gateway_with_a_signed_log();
    let (ok, out) = d.verify_audit_with(&["--closed"]);
    assert!(ok, "{out}");
    let started_before = d.count("gateway.started");

    // Cut the closing checkpoint and the two events before it.
    let log_seq = cut_tail(&d, 3);
    assert!(log_seq < head_seq);
    let (ok, out) = d.verify_audit();
    assert!(!ok, "verify caught the cut: {out}");
    let cut_bytes = std::fs::read(d.path("gw/audit/audit.jsonl")).unwrap();

    // A plain restart refuses, says why with both seqs, and appends nothing.
    let mut p = spawn_gateway(&d, "gateway-refused", &[]);
    let (code, log) = exits(&mut p);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("cut short"), "{log}");
    assert!(log.contains(&format!("seq {head_seq}")), "{log}");
    assert!(log.contains(&format!("ends at seq {log_seq}")), "{log}");
    assert!(log.contains("--accept-truncated-audit"), "{log}");
    assert_eq!(
        std::fs::read(d.path("gw/audit/audit.jsonl")).unwrap(),
        cut_bytes,
        "the refused start wrote nothing to the log"
    );
    assert_eq!(d.count("gateway.started"), started_before);

    // Accepting the loss: it starts, and the loss is the first thing on record.
    d.gateway = Some(spawn_gateway(
        &d,
        "gateway-accepted",
        &["--accept-truncated-audit"],
    ));
    wait_for("gateway.started", Duration::from_secs(20), || {
        let g = d.gateway.as_mut().unwrap();
        assert!(g.is_running(), "gateway exited: {}", g.log_text());
        (d.count("gateway.started") > started_before).then_some(())
    });
    let ev = d.wait_event("audit.truncation_detected", |_| true);
    assert_eq!(ev["seq"].as_u64(), Some(log_seq + 1), "{ev}");
    let detail = ev["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("seq {head_seq}")), "{detail}");
    assert!(
        detail.contains(&format!("ends at seq {log_seq}")),
        "{detail}"
    );
    assert!(detail.contains("--accept-truncated-audit"), "{detail}");
    // audit.head was moved to a checkpoint that signs the record of the loss.
    let h = head(&d);
    assert_eq!(h["reason"], "truncation", "{h}");
    assert!(h["seq"].as_u64().unwrap() > log_seq + 1, "{h}");

    // verify reports the accepted truncation (exit 1), and only that.
    let (ok, out) = d.verify_audit();
    assert!(!ok, "{out}");
    assert!(out.contains("audit.truncation_detected"), "{out}");
    assert!(out.contains(&format!("seq {head_seq}")), "{out}");
    assert!(out.contains("FAILED: 1 problem(s)"), "{out}");

    // The next plain restart is ordinary: head and log agree again.
    let code = d
        .gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    d.start_gateway();
    assert_eq!(d.count("audit.truncation_detected"), 1);
}

#[test]
fn a_placeholder_audit_head_after_signed_checkpoints_is_caught_by_verify_and_at_start() {
    let (mut d, _) = stopped_gateway_with_a_signed_log();
    // Two more runs add two more signed checkpoints (their close).
    for _ in 0..2 {
        d.start_gateway();
        d.enroll_token("truro", "10m");
        let code = d
            .gateway
            .as_mut()
            .unwrap()
            .terminate(Duration::from_secs(20));
        assert_eq!(code, Some(0));
    }
    let checkpoints = d.count("audit.checkpoint");
    assert!(checkpoints >= 3, "{checkpoints}");

    // Cut a line and put back what audit.head held before the first checkpoint.
    let log_seq = cut_tail(&d, 1);
    let h = head(&d);
    let placeholder = serde_json::json!({
        "format": h["format"], "seq": 0, "ts": h["ts"], "node": h["node"], "reason": "none",
        "prev": "", "hash": "", "key": h["key"], "sig": "",
    });
    std::fs::write(head_path(&d), format!("{placeholder}\n")).unwrap();
    let (ok, out) = d.verify_audit();
    assert!(!ok, "{out}");
    assert!(out.contains("unsigned placeholder"), "{out}");

    let mut p = spawn_gateway(&d, "gateway-refused", &[]);
    let (code, log) = exits(&mut p);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("unsigned placeholder"), "{log}");
    assert!(log.contains(&format!("ends at seq {log_seq}")), "{log}");

    // `postern-audit verify` output names the problem as it did before the restart attempt.
    let (ok, out, err) = run(Command::new(bin("postern-audit"))
        .arg("verify")
        .arg(d.path("gw/audit")));
    assert!(!ok, "{out}{err}");
    assert!(out.contains("unsigned placeholder"), "{out}");
}
