//! Memory readings, iperf3 summaries, and the Markdown report built from the JSON lines.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};

fn emit(mut fields: Map<String, Value>, kind: &str) {
    fields.insert("kind".into(), kind.into());
    println!("{}", Value::Object(fields));
}

/// `Rss:` and `Pss:` (kB) from `smaps_rollup` text.
fn parse_rollup(text: &str) -> anyhow::Result<(u64, u64)> {
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no '{name}' line in smaps_rollup"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

pub fn mem(pid: u32, labels: &[String]) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (rss, pss) = parse_rollup(&text)?;
    let mut out = crate::labels(labels)?;
    out.insert("pid".into(), pid.into());
    out.insert("rss_kb".into(), rss.into());
    out.insert("pss_kb".into(), pss.into());
    emit(out, "mem");
    Ok(())
}

pub fn iperf_summary(
    file: &Path,
    labels: &[String],
    cpu_before: Option<&str>,
    cpu_after: Option<&str>,
) -> anyhow::Result<()> {
    let mut out = crate::labels(labels)?;
    let text = std::fs::read_to_string(file).unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => {
            let bps = v
                .pointer("/end/sum_received/bits_per_second")
                .and_then(Value::as_f64);
            match (bps, v.get("error").and_then(Value::as_str)) {
                (Some(bps), None) if bps > 0.0 => {
                    out.insert("gbps".into(), (bps / 1e9).into());
                    let bytes = v
                        .pointer("/end/sum_received/bytes")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0);
                    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
                        if bytes > 0.0 {
                            let used = crate::cpu::delta(
                                &serde_json::from_str(b)?,
                                &serde_json::from_str(a)?,
                            );
                            let per: Map<String, Value> = used
                                .into_iter()
                                .map(|(k, us)| (k, (us / 1e6 / (bytes / 1e9)).into()))
                                .collect();
                            out.insert("cpu_s_per_gb".into(), per.into());
                        }
                    }
                    if let Some(r) = v
                        .pointer("/end/sum_sent/retransmits")
                        .and_then(Value::as_u64)
                    {
                        out.insert("retransmits".into(), r.into());
                    }
                }
                (_, Some(e)) => {
                    out.insert("error".into(), e.into());
                }
                _ => {
                    out.insert("error".into(), "no throughput in iperf3 output".into());
                }
            }
        }
        Err(_) => {
            let first = text.lines().next().unwrap_or("empty output").to_owned();
            out.insert("error".into(), format!("iperf3 failed: {first}").into());
        }
    }
    emit(out, "iperf");
    Ok(())
}

struct Raw(Vec<Value>);

impl Raw {
    fn select<'a>(&'a self, want: &'a [(&'a str, Value)]) -> impl Iterator<Item = &'a Value> {
        self.0
            .iter()
            .filter(move |r| want.iter().all(|(k, v)| r.get(*k) == Some(v)))
    }

    fn nums(&self, want: &[(&str, Value)], field: &str) -> Vec<f64> {
        self.select(want)
            .filter_map(|r| r.get(field).and_then(Value::as_f64))
            .collect()
    }

    fn ptr_nums(&self, want: &[(&str, Value)], pointer: &str) -> Vec<f64> {
        self.select(want)
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
            .collect()
    }

    fn sum_u64(&self, want: &[(&str, Value)], field: &str) -> u64 {
        self.select(want)
            .filter_map(|r| r.get(field).and_then(Value::as_u64))
            .sum()
    }

    fn first_str(&self, want: &[(&str, Value)], field: &str) -> Option<String> {
        self.select(want)
            .find_map(|r| r.get(field).and_then(Value::as_str))
            .map(str::to_owned)
    }
}

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// "median (min–max)" with `prec` decimals, or "n/a".
fn cell(v: &[f64], prec: usize) -> String {
    let Some(m) = median(v) else {
        return "n/a".into();
    };
    if v.len() == 1 {
        return format!("{m:.prec$}");
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})")
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, prec: usize, suffix: &str) -> String {
    v.map(|v| format!("{v:.prec$}{suffix}"))
        .unwrap_or_else(|| "n/a".into())
}

pub(crate) fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

const PATHS: [(&str, &str); 3] = [
    ("direct", "direct"),
    ("postern", "postern"),
    ("rathole", "rathole-tls"),
];
const DIRS: [(&str, &str); 2] = [
    ("up", "upload: client → target (`iperf3 -c`)"),
    ("down", "download: target → client (`iperf3 -c -R`)"),
];

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// The JSON lines of `path` (lines that are not JSON are skipped).
pub(crate) fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

pub fn report(raw: &Path, meta: &[String]) -> anyhow::Result<()> {
    let raw = Raw(read_jsonl(raw)?);
    let mut md = String::new();
    let mut targets: Vec<(String, String, Option<bool>)> = Vec::new();

    if !meta.is_empty() {
        md.push_str("### Setup\n\n");
        for m in meta {
            let (k, v) = m.split_once('=').unwrap_or((m.as_str(), ""));
            let _ = writeln!(md, "- {k}: {v}");
        }
        md.push('\n');
    }
    md.push_str("Cells are the median over the interleaved rounds, with (min–max) when there was more than one round.\n\n");

    // (a) throughput
    md.push_str("### (a) One iperf3 TCP stream (Gbit/s)\n\n");
    md.push_str("| direction | direct | postern | rathole-tls | postern / rathole-tls | postern / direct |\n|---|---|---|---|---|---|\n");
    for (dir, label) in DIRS {
        let get = |p: &str| {
            raw.nums(
                &[("kind", s("iperf")), ("path", s(p)), ("dir", s(dir))],
                "gbps",
            )
        };
        let (d, p, r) = (get("direct"), get("postern"), get("rathole"));
        let pr = ratio(median(&p), median(&r));
        let pd = ratio(median(&p), median(&d));
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(&d, 2),
            cell(&p, 2),
            cell(&r, 2),
            fmt_opt(pr, 2, "×"),
            fmt_opt(pd, 2, "×")
        );
        targets.push((
            format!("(a) {dir}: postern ≥ rathole-tls throughput"),
            format!(
                "{} vs {} Gbit/s ({})",
                fmt_opt(median(&p), 2, ""),
                fmt_opt(median(&r), 2, ""),
                fmt_opt(pr, 2, "×")
            ),
            pr.map(|x| x >= 1.0),
        ));
    }
    md.push_str("\nCPU time of the tunnel's own processes per GB carried (seconds of CPU per GB; postern: `postern connect` + gateway + connector, rathole: client + server):\n\n");
    md.push_str("| direction | postern | of which client / gateway / connector | rathole-tls | postern / rathole-tls |\n|---|---|---|---|---|\n");
    for (dir, label) in DIRS {
        let q = |p: &str| vec![("kind", s("iperf")), ("path", s(p)), ("dir", s(dir))];
        let p = raw.ptr_nums(&q("postern"), "/cpu_s_per_gb/total");
        let r = raw.ptr_nums(&q("rathole"), "/cpu_s_per_gb/total");
        let parts: Vec<String> = ["client", "gateway", "connector"]
            .iter()
            .map(|c| {
                fmt_opt(
                    median(&raw.ptr_nums(&q("postern"), &format!("/cpu_s_per_gb/{c}"))),
                    2,
                    "",
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            cell(&p, 2),
            parts.join(" / "),
            cell(&r, 2),
            fmt_opt(ratio(median(&p), median(&r)), 2, "×")
        );
    }
    let errs: Vec<String> = raw
        .select(&[("kind", s("iperf"))])
        .filter_map(|r| {
            let e = r.get("error")?.as_str()?;
            Some(format!(
                "{}/{}/round {}: {e}",
                r.get("path").and_then(Value::as_str).unwrap_or("?"),
                r.get("dir").and_then(Value::as_str).unwrap_or("?"),
                r.get("round").map(Value::to_string).unwrap_or_default()
            ))
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(md, "\nFailed iperf3 runs: {}", errs.join("; "));
    }
    md.push('\n');

    // (b) session setup
    let shape = |c: u64| {
        raw.select(&[
            ("kind", s("sessions")),
            ("path", s("postern")),
            ("concurrency", Value::from(c)),
        ])
        .next()
        .cloned()
    };
    md.push_str("### (b) Session setup: connect + 1 byte echoed + close, to an echo server\n\n");
    if let Some(r) = shape(1) {
        let _ = write!(
            md,
            "One at a time: {} sessions per round per path, started at most {} per second. ",
            r.get("count").and_then(Value::as_u64).unwrap_or(0),
            r.get("paced_per_s")
                .and_then(Value::as_f64)
                .map(|x| format!("{x:.0}"))
                .unwrap_or_else(|| "∞".into())
        );
    }
    if let Some(r) = shape(16) {
        let _ = write!(
            md,
            "16 concurrent: {} sessions per round per path, in bursts of {} (sessions/s counts the time inside the bursts).",
            r.get("count").and_then(Value::as_u64).unwrap_or(0),
            r.get("burst")
                .and_then(Value::as_u64)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "all".into())
        );
    }
    md.push_str("\n\n| path | 1 at a time: p50 µs | p99 µs | 16 concurrent: sessions/s | p50 µs | p99 µs | CPU µs per session (16 concurrent) | failed sessions |\n|---|---|---|---|---|---|---|---|\n");
    let mut rate16 = Vec::new();
    for (path, label) in PATHS {
        let q = |c: u64| {
            vec![
                ("kind", s("sessions")),
                ("path", s(path)),
                ("concurrency", Value::from(c)),
            ]
        };
        let r16 = raw.nums(&q(16), "sessions_per_s");
        rate16.push(median(&r16));
        let errors = raw.sum_u64(&q(1), "errors") + raw.sum_u64(&q(16), "errors");
        // CPU per session of the tunnel's processes (16 concurrent), with a breakdown.
        let mut names: Vec<String> = Vec::new();
        for r in raw.select(&q(16)) {
            if let Some(m) = r.get("cpu_us_per_session").and_then(Value::as_object) {
                for k in m.keys() {
                    if k != "total" && !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
        }
        let total = median(&raw.ptr_nums(&q(16), "/cpu_us_per_session/total"));
        let cpu = match total {
            Some(t) if !names.is_empty() => {
                let parts: Vec<String> = names
                    .iter()
                    .map(|n| {
                        format!(
                            "{n} {}",
                            fmt_opt(
                                median(&raw.ptr_nums(&q(16), &format!("/cpu_us_per_session/{n}"))),
                                0,
                                ""
                            )
                        )
                    })
                    .collect();
                format!("{t:.0} ({})", parts.join(", "))
            }
            _ => "n/a".into(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {cpu} | {errors} |",
            cell(&raw.nums(&q(1), "p50_us"), 0),
            cell(&raw.nums(&q(1), "p99_us"), 0),
            cell(&r16, 0),
            cell(&raw.nums(&q(16), "p50_us"), 0),
            cell(&raw.nums(&q(16), "p99_us"), 0),
        );
        for c in [1u64, 16] {
            if let Some(e) = raw.first_str(&q(c), "first_error") {
                let _ = writeln!(
                    md,
                    "|  | first error ({label}, {c} concurrent): {e} | | | | | |"
                );
            }
        }
    }
    let p50 = median(&raw.nums(
        &[
            ("kind", s("sessions")),
            ("path", s("postern")),
            ("concurrency", Value::from(1u64)),
        ],
        "p50_us",
    ));
    let rr = ratio(rate16[1], rate16[2]);
    let _ = writeln!(
        md,
        "\npostern / rathole-tls sessions/s at 16 concurrent: {}; postern / direct: {}\n",
        fmt_opt(rr, 2, "×"),
        fmt_opt(ratio(rate16[1], rate16[0]), 2, "×")
    );
    targets.push((
        "(b) postern p50 session setup ≤ 350 µs".into(),
        format!("{} µs", fmt_opt(p50, 0, "")),
        p50.map(|x| x <= 350.0),
    ));
    targets.push((
        "(b) postern sessions/s ≥ 10× rathole-tls (16 concurrent)".into(),
        format!(
            "{} vs {} sessions/s ({})",
            fmt_opt(rate16[1], 0, ""),
            fmt_opt(rate16[2], 0, ""),
            fmt_opt(rr, 2, "×")
        ),
        rr.map(|x| x >= 10.0),
    ));

    // (c) memory
    let held = raw
        .select(&[("kind", s("hold"))])
        .find_map(|r| r.get("held").and_then(Value::as_u64));
    let hold_errors = raw.sum_u64(&[("kind", s("hold"))], "errors");
    let _ = writeln!(
        md,
        "### (c) Memory with idle tunnelled connections (held: {}, failed to open: {hold_errors})\n",
        held.map(|h| h.to_string()).unwrap_or_else(|| "n/a".into())
    );
    md.push_str("| process | RSS idle kB | RSS held kB | PSS idle kB | PSS held kB | KB/session (RSS) | KB/session (PSS) |\n|---|---|---|---|---|---|---|\n");
    let mut procs: Vec<String> = Vec::new();
    for r in raw.select(&[("kind", s("mem"))]) {
        if let Some(p) = r.get("proc").and_then(Value::as_str) {
            if !procs.iter().any(|x| x == p) {
                procs.push(p.to_owned());
            }
        }
    }
    for p in &procs {
        let get = |state: &str, f: &str| {
            median(&raw.nums(
                &[("kind", s("mem")), ("proc", s(p)), ("state", s(state))],
                f,
            ))
        };
        let per = |f: &str| match (get("idle", f), get("held", f), held) {
            (Some(a), Some(b), Some(n)) if n > 0 => Some((b - a) / n as f64),
            _ => None,
        };
        let (rss_per, pss_per) = (per("rss_kb"), per("pss_kb"));
        let _ = writeln!(
            md,
            "| {p} | {} | {} | {} | {} | {} | {} |",
            fmt_opt(get("idle", "rss_kb"), 0, ""),
            fmt_opt(get("held", "rss_kb"), 0, ""),
            fmt_opt(get("idle", "pss_kb"), 0, ""),
            fmt_opt(get("held", "pss_kb"), 0, ""),
            fmt_opt(rss_per, 1, ""),
            fmt_opt(pss_per, 1, ""),
        );
        let limit = match p.as_str() {
            "gateway" => Some(24.0),
            "connector" => Some(12.0),
            _ => None,
        };
        if let Some(limit) = limit {
            targets.push((
                format!("(c) {p} ≤ {limit:.0} KB per idle session"),
                format!(
                    "{} KB (RSS), {} KB (PSS)",
                    fmt_opt(rss_per, 1, ""),
                    fmt_opt(pss_per, 1, "")
                ),
                match (rss_per, pss_per) {
                    (Some(a), Some(b)) => Some(a <= limit && b <= limit),
                    _ => None,
                },
            ));
        }
    }
    md.push('\n');

    // (d) long path
    let rtt = raw.nums(
        &[("kind", s("sessions")), ("path", s("relay-rtt"))],
        "p50_us",
    );
    let _ = writeln!(
        md,
        "### (d) One iperf3 stream with 50 ms RTT between gateway and connector (Gbit/s; measured relay RTT p50 {} ms)\n",
        fmt_opt(median(&rtt).map(|u| u / 1000.0), 1, "")
    );
    md.push_str("| direction | relay alone (plain TCP) | postern through the relay | postern / relay alone | postern without the relay, from (a) |\n|---|---|---|---|---|\n");
    for (dir, label) in DIRS {
        let get = |p: &str| {
            raw.nums(
                &[("kind", s("iperf")), ("path", s(p)), ("dir", s(dir))],
                "gbps",
            )
        };
        let (base, p) = (get("relay"), get("postern-relay"));
        let r = ratio(median(&p), median(&base));
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            cell(&base, 2),
            cell(&p, 2),
            r.map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or_else(|| "n/a".into()),
            fmt_opt(median(&get("postern")), 2, "")
        );
        targets.push((
            format!("(d) {dir}: postern ≥ 80% of the relay alone at 50 ms RTT"),
            format!(
                "{} vs {} Gbit/s ({})",
                fmt_opt(median(&p), 2, ""),
                fmt_opt(median(&base), 2, ""),
                r.map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "n/a".into())
            ),
            r.map(|x| x >= 0.8),
        ));
    }
    md.push('\n');

    md.push_str("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for (t, m, ok) in &targets {
        let _ = writeln!(md, "| {t} | {m} | {} |", met(*ok));
    }
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rollup_and_median() {
        let t = "55d0-7ffd [rollup]\nRss:               12345 kB\nPss:                9876 kB\nPss_Anon: 1 kB\n";
        assert_eq!(parse_rollup(t).unwrap(), (12345, 9876));
        assert!(parse_rollup("nothing").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(cell(&[1.0, 3.0, 2.0], 1), "2.0 (1.0–3.0)");
    }
}
