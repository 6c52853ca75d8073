//! CPU time of processes from `/proc/PID/stat` (user + system, all threads).

use anyhow::Context;
use serde_json::{Map, Value};

/// Linux reports `utime`/`stime` in USER_HZ ticks, which is 100 per second on every
/// architecture's user-space ABI.
const USER_HZ: u64 = 100;

/// `name=pid` pairs.
pub fn parse_procs(procs: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    procs
        .iter()
        .map(|p| {
            let (name, pid) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("'{p}' is not name=pid"))?;
            let pid = pid
                .parse()
                .with_context(|| format!("'{pid}' is not a process id"))?;
            Ok((name.to_owned(), pid))
        })
        .collect()
}

/// utime + stime in µs from the text of `/proc/PID/stat`.
fn parse_stat(text: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: count from the
    // last ')'. After it, field 3 (state) is index 0, so utime (14) and stime (15) are 11, 12.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("malformed stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("malformed stat field {i}"))
    };
    Ok((tick(11)? + tick(12)?) * (1_000_000 / USER_HZ))
}

/// `{name: cpu_us}` for every process.
pub fn snapshot(procs: &[(String, u32)]) -> anyhow::Result<Value> {
    let mut m = Map::new();
    for (name, pid) in procs {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        m.insert(name.clone(), parse_stat(&text)?.into());
    }
    Ok(Value::Object(m))
}

/// CPU µs used between two snapshots, per name, plus `total`.
pub fn delta(before: &Value, after: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut total = 0.0;
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (name, v) in a {
            if let (Some(a), Some(b)) = (v.as_f64(), b.get(name).and_then(Value::as_f64)) {
                out.push((name.clone(), a - b));
                total += a - b;
            }
        }
    }
    out.push(("total".into(), total));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_and_delta() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat).unwrap(), 3_250_000);
        let d = delta(
            &serde_json::json!({"a": 10, "b": 5}),
            &serde_json::json!({"a": 30, "b": 5}),
        );
        assert_eq!(
            d,
            vec![
                ("a".into(), 20.0),
                ("b".into(), 0.0),
                ("total".into(), 20.0)
            ]
        );
        assert_eq!(
            parse_procs(&["gw=12".into()]).unwrap(),
            vec![("gw".to_owned(), 12)]
        );
        assert!(parse_procs(&["gw".into()]).is_err());
    }
}
