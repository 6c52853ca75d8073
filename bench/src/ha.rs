//! The helpers of `bench/ha` (issue #13): one revocation-propagation trial, and the Markdown
//! report of the HA run (session setup per state store, propagation across replicas).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::print_line;

/// How the held connection ended.
enum Ending {
    /// End-of-file or a reset: the tunnel was closed.
    Closed(&'static str),
    /// Still open after the timeout.
    Open,
}

/// Connects through `target` and echoes one byte, retrying for up to `limit` (the client may
/// still be dialling the gateway): once the byte is back, the tunnel is up end to end.
async fn open_tunnel(target: SocketAddr, limit: Duration) -> anyhow::Result<TcpStream> {
    let started = Instant::now();
    loop {
        let attempt = async {
            let mut tcp = TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(&[0x5a]).await?;
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await?;
            anyhow::ensure!(b[0] == 0x5a, "echo returned a different byte");
            Ok(tcp)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) if started.elapsed() >= limit => {
                return Err(e.context(format!("no tunnel through {target}")))
            }
            Err(_) if started.elapsed() >= limit => {
                anyhow::bail!("no tunnel through {target}: timed out")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads until the connection ends; any bytes that arrive are ignored.
async fn wait_closed(mut tcp: TcpStream) -> &'static str {
    let mut buf = [0u8; 256];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) => return "eof",
            Ok(_) => {}
            Err(_) => return "reset",
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One trial: a tunnel through `target` is opened and held; then `command` (the revocation,
/// made on another replica) runs, and the time until the held connection ends is measured
/// from just before the command was started, and from when it exited (negative when the
/// tunnel ended before the command returned). Prints one JSON line of kind `revoke_trial`.
pub async fn revoke_trial(
    target: SocketAddr,
    timeout: Duration,
    labels: &[String],
    command: &[String],
    audit: Option<(&Path, &str)>,
) -> anyhow::Result<()> {
    let (program, args) = command
        .split_first()
        .context("give the revocation command after --")?;
    let mut out = crate::labels(labels)?;
    let tcp = open_tunnel(target, Duration::from_secs(10)).await?;
    let mut closed = std::pin::pin!(wait_closed(tcp));
    // Nothing may end the tunnel before the revocation.
    if let Ok(how) = tokio::time::timeout(Duration::from_millis(50), &mut closed).await {
        anyhow::bail!("the tunnel through {target} ended ({how}) before the revocation");
    }

    let t0 = Instant::now();
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut command_done = std::pin::pin!(child.wait_with_output());
    let mut exited: Option<(Instant, std::process::Output)> = None;
    let mut ending = Ending::Open;
    let mut ended_at = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while ended_at.is_none() || exited.is_none() {
        tokio::select! {
            how = &mut closed, if ended_at.is_none() => {
                ended_at = Some(Instant::now());
                ending = Ending::Closed(how);
            }
            r = &mut command_done, if exited.is_none() => {
                exited = Some((Instant::now(), r.with_context(|| format!("waiting for {program}"))?));
            }
            _ = &mut deadline => break,
        }
    }
    let Some((exit_at, output)) = exited else {
        anyhow::bail!("the revocation command did not finish within {timeout:?}");
    };
    out.insert("kind".into(), "revoke_trial".into());
    out.insert("command_ok".into(), output.status.success().into());
    out.insert("command_ms".into(), ms(exit_at - t0).into());
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        out.insert("command_error".into(), err.trim().into());
    }
    match (ending, ended_at) {
        (Ending::Closed(how), Some(at)) => {
            out.insert("ended".into(), how.into());
            out.insert("total_ms".into(), ms(at - t0).into());
            // Signed: the tunnel may end before the command has finished (its audit write
            // and exit come after the store's commit).
            let after = if at >= exit_at {
                ms(at - exit_at)
            } else {
                -ms(exit_at - at)
            };
            out.insert("after_command_ms".into(), after.into());
        }
        _ => {
            out.insert("ended".into(), "still open".into());
            out.insert("timeout_ms".into(), (timeout.as_millis() as u64).into());
        }
    }
    if let Some((log, user)) = audit {
        // The replica audits why it ended the session (after the close, or just before).
        let reason = async {
            loop {
                if let Some(r) = close_reason(log, user) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let reason = tokio::time::timeout(Duration::from_secs(3), reason).await;
        out.insert(
            "close_reason".into(),
            reason.unwrap_or_else(|_| "none audited".into()).into(),
        );
    }
    print_line(&Value::Object(out).to_string());
    Ok(())
}

/// The `close_reason` of `user`'s last `session.terminated` event in the audit log `log`.
fn close_reason(log: &Path, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "session.terminated" && e["user"] == user)
        .map(|e| {
            e["close_reason"]
                .as_str()
                .unwrap_or("(no close_reason)")
                .to_owned()
        })
}

/// The values of `field` (as f64) in the lines that match every `(key, value)` in `want`.
fn values(lines: &[Value], want: &[(&str, &str)], field: &str) -> Vec<f64> {
    lines
        .iter()
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .filter_map(|l| l.get(field).and_then(Value::as_f64))
        .collect()
}

/// p50 / p99 / max of `v` (any unit), `None` when empty.
fn quantiles(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    Some((q(50.0), q(99.0), s[s.len() - 1]))
}

fn min_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

/// The stores of the session-setup measurement: label, and how the table names it.
const STORES: [(&str, &str); 3] = [
    ("file", "file: `state.json` (previous release, 6429fe1)"),
    ("sqlite", "SQLite (default, `state.db`)"),
    ("postgres", "PostgreSQL (local cluster)"),
];

/// Largest increase of p50 session setup the store may add (issue #13), µs.
const P50_BUDGET_US: f64 = 300.0;
/// Largest p99 revocation propagation (issue #13), ms.
const PROPAGATION_P99_MS: f64 = 1000.0;

/// The Markdown report of `bench/ha` from its JSON lines.
pub fn report(raw: &Path, meta: &[String]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(raw).with_context(|| format!("reading {}", raw.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let mut md = String::new();
    if !meta.is_empty() {
        md.push_str("### Setup\n\n");
        for m in meta {
            let (k, v) = m.split_once('=').unwrap_or((m.as_str(), ""));
            let _ = writeln!(md, "- {k}: {v}");
        }
        md.push('\n');
    }

    // Session setup: every session's latency pooled over the rounds, per store.
    md.push_str("### Session setup, one replica: connect + 1 byte echoed + close\n\n");
    md.push_str(
        "Percentiles over every session of every round (pooled); per-round p50 as min–max.\n\n",
    );
    md.push_str("| store | sessions | p50 µs | p99 µs | per-round p50 µs | p50 − file's µs | p99 / file's | failed |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut p50s: Vec<(&str, f64)> = Vec::new();
    let mut file = None;
    for (store, name) in STORES {
        let runs: Vec<&Value> = lines
            .iter()
            .filter(|l| l["kind"] == "sessions" && l["store"] == store)
            .collect();
        let lat: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["latencies_us"].as_array())
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let failed: u64 = runs.iter().filter_map(|r| r["errors"].as_u64()).sum();
        let per_round = values(&lines, &[("kind", "sessions"), ("store", store)], "p50_us");
        let Some((p50, p99, _)) = quantiles(&lat) else {
            let _ = writeln!(
                md,
                "| {name} | 0 | n/a | n/a | n/a | n/a | n/a | {failed} |"
            );
            continue;
        };
        if store == "file" {
            file = Some((p50, p99));
        }
        let (delta, ratio) = match file {
            Some((f50, f99)) if store != "file" => (
                format!("{:+.0}", p50 - f50),
                format!("{:.2}×", p99 / f99.max(1.0)),
            ),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {p50:.0} | {p99:.0} | {} | {delta} | {ratio} | {failed} |",
            lat.len(),
            min_max(&per_round)
        );
        p50s.push((store, p50));
    }
    md.push('\n');

    // Propagation.
    let trials: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "revoke_trial")
        .collect();
    // A trial counts when its tunnel ended and the replica holding it audited the reason the
    // revocation gives (`user_revoked`, `token_revoked`), whatever the command's exit status.
    let ended: Vec<&Value> = trials
        .iter()
        .copied()
        .filter(|t| {
            let want = format!("{}_revoked", t["revocation"].as_str().unwrap_or("?"));
            t["total_ms"].is_number() && t["close_reason"].as_str() == Some(want.as_str())
        })
        .collect();
    let failed = trials.len() - ended.len();
    let nonzero: Vec<&Value> = trials
        .iter()
        .copied()
        .filter(|t| t["command_ok"] != true)
        .collect();
    md.push_str("### Revocation propagation across three replicas (PostgreSQL, LISTEN/NOTIFY)\n\n");
    md.push_str("From just before the revocation command is started on one replica to the held tunnel through another replica reading end-of-file (total), and from the command's exit to that end-of-file (negative: the tunnel ended before the command had exited).\n\n");
    md.push_str("| trials | kind | via → revoked on | total p50 ms | p99 ms | max ms | after the command p50 ms | p99 ms | max ms | command's own run time p50 ms |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut kinds: Vec<&str> = ended
        .iter()
        .filter_map(|t| t["revocation"].as_str())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let row = |md: &mut String, label: &str, set: &[&Value]| {
        let get = |f: &str| -> Vec<f64> { set.iter().filter_map(|t| t[f].as_f64()).collect() };
        let (t, a, c) = (
            quantiles(&get("total_ms")),
            quantiles(&get("after_command_ms")),
            quantiles(&get("command_ms")),
        );
        let f = |q: Option<(f64, f64, f64)>, i: usize| {
            q.map(|(p50, p99, max)| format!("{:.1}", [p50, p99, max][i]))
                .unwrap_or_else(|| "n/a".into())
        };
        let mut pairs: Vec<String> = set
            .iter()
            .filter_map(|t| Some(format!("{} → {}", t["via"].as_str()?, t["on"].as_str()?)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let _ = writeln!(
            md,
            "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            set.len(),
            pairs.join(", "),
            f(t, 0),
            f(t, 1),
            f(t, 2),
            f(a, 0),
            f(a, 1),
            f(a, 2),
            f(c, 0)
        );
    };
    for kind in &kinds {
        let set: Vec<&Value> = ended
            .iter()
            .copied()
            .filter(|t| t["revocation"] == *kind)
            .collect();
        row(&mut md, kind, &set);
    }
    row(&mut md, "**all**", &ended);
    md.push('\n');
    let mut reasons: Vec<String> = ended
        .iter()
        .filter_map(|t| t["close_reason"].as_str().map(str::to_owned))
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    let _ = writeln!(
        md,
        "Trials whose tunnel did not end, or ended without the revocation's reason audited: {failed}. Close reasons audited by the replicas holding the tunnels: {}.\n",
        if reasons.is_empty() { "none found".to_owned() } else { reasons.join(", ") }
    );
    if let Some(first) = nonzero.first() {
        let mut kinds: Vec<&str> = nonzero
            .iter()
            .filter_map(|t| t["revocation"].as_str())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let _ = writeln!(
            md,
            "Revocation commands that exited non-zero: {} of {} (kind: {}); the first said: \"{}\"\n",
            nonzero.len(),
            trials.len(),
            kinds.join(", "),
            first["command_error"].as_str().unwrap_or("(nothing)")
        );
    }

    // Targets.
    md.push_str("### Targets (issue #13)\n\n| target | measured | |\n|---|---|---|\n");
    let file_p50 = p50s.iter().find(|(s, _)| *s == "file").map(|(_, v)| *v);
    for (store, p50) in p50s.iter().filter(|(s, _)| *s != "file") {
        let (measured, ok) = match file_p50 {
            Some(f) => (
                format!("{:+.0} µs p50 vs the file store", p50 - f),
                Some(p50 - f <= P50_BUDGET_US),
            ),
            None => ("no file baseline".into(), None),
        };
        let _ = writeln!(
            md,
            "| {store}: adds ≤ {P50_BUDGET_US:.0} µs to p50 session setup | {measured} | {} |",
            met(ok)
        );
    }
    let all_total: Vec<f64> = ended
        .iter()
        .filter_map(|t| t["total_ms"].as_f64())
        .collect();
    let p99 = quantiles(&all_total).map(|(_, p99, _)| p99);
    let ok = p99.map(|p| p <= PROPAGATION_P99_MS && failed == 0);
    let _ = writeln!(
        md,
        "| revocation propagation p99 ≤ {PROPAGATION_P99_MS:.0} ms (from the command's start) | {} | {} |",
        p99.map(|p| format!("{p:.1} ms over {} trials ({failed} failed)", ended.len()))
            .unwrap_or_else(|| "n/a".into()),
        met(ok)
    );
    print!("{md}");
    Ok(())
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}
