//! `postern-audit sessions`: one row per session, joining `session.start` with its
//! `session.end` or `session.terminated` by `session_id` — the report an auditor asks for.
//!
//! Streams the log once, holding only sessions that are still open plus finished ones waiting
//! behind an older open one (rows come out in order of their start).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::AuditError;
use crate::event::{Event, EventType};
use crate::reader::{parse_line, RawLines};
use crate::search::{csv_cell, event_time, one_line, Filter, Format, ReportError, Summary};

/// One session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    pub session_id: String,
    /// IdP subject.
    pub user: String,
    pub user_name: String,
    pub user_email: String,
    /// Device name, else device id.
    pub device: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint site.
    pub site: String,
    /// Client address.
    pub source: String,
    /// `ts` of `session.start` (empty if the log does not hold it).
    pub start: String,
    /// `ts` of `session.end` / `session.terminated` (empty while open).
    pub end: String,
    /// From the end event, else end minus start.
    pub duration_ms: Option<u64>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    /// Why it ended; `open` if no end is recorded (still running, or the gateway died).
    pub close_reason: String,
    /// Break-glass justification.
    pub justification: String,
    /// The policy rule that allowed it.
    pub rule: String,
}

struct Pending {
    row: SessionRow,
    /// The event the filter is applied to: the start (or the end, if there is no start).
    first: Box<Event>,
    done: bool,
}

/// Streams the log in `dir` and prints one row per session that passes `filter` (applied to
/// the session's start; the type criterion is ignored) in `format` (`Syslog` prints JSON).
pub fn sessions(
    dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Summary, ReportError> {
    let mut lines = RawLines::open(dir)?;
    let mut summary = Summary::default();
    let mut order = 0u64;
    let mut open: HashMap<String, u64> = HashMap::new();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    match format {
        Format::Table => writeln!(out, "{}", table_header())?,
        Format::Csv => writeln!(out, "{}", CSV_HEADER.join(","))?,
        Format::Json | Format::Syslog => {}
    }
    // Cheap test before parsing: only session events matter.
    let needle: &[u8] = br#""type":"session."#;
    while let Some(line) = lines.next() {
        let line = line?;
        summary.scanned += 1;
        if !line.complete && line.last_segment {
            summary.torn_tail = true;
            continue;
        }
        if line.complete && memchr::memmem::find(line.bytes, needle).is_none() {
            continue;
        }
        let entry = match parse_line(&line) {
            Ok(entry) => entry,
            Err(e) => {
                summary.bad_lines += 1;
                bad(&e);
                continue;
            }
        };
        let event = entry.event;
        let Some(id) = event.session_id.clone() else {
            continue;
        };
        match event.event_type() {
            Some(EventType::SessionStart) => {
                order += 1;
                open.insert(id, order);
                pending.insert(
                    order,
                    Pending {
                        row: start_row(&event),
                        first: Box::new(event),
                        done: false,
                    },
                );
            }
            Some(EventType::SessionEnd | EventType::SessionTerminated) => {
                match open.remove(&id).and_then(|o| pending.get_mut(&o)) {
                    Some(p) => {
                        end_row(&mut p.row, &event);
                        p.done = true;
                    }
                    None => {
                        // The start is not in this log (an earlier, archived segment).
                        order += 1;
                        let mut row = start_row(&event);
                        row.start.clear();
                        end_row(&mut row, &event);
                        pending.insert(
                            order,
                            Pending {
                                row,
                                first: Box::new(event),
                                done: true,
                            },
                        );
                    }
                }
            }
            _ => continue,
        }
        while pending.first_key_value().is_some_and(|(_, p)| p.done) {
            if let Some((_, p)) = pending.pop_first() {
                emit(&p, filter, format, out, &mut summary)?;
            }
        }
    }
    for p in pending.into_values() {
        emit(&p, filter, format, out, &mut summary)?;
    }
    Ok(summary)
}

fn emit(
    p: &Pending,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> Result<(), ReportError> {
    if !filter.matches_except_type(&p.first) {
        return Ok(());
    }
    summary.matched += 1;
    match format {
        Format::Table => writeln!(out, "{}", table_row(&p.row))?,
        Format::Csv => writeln!(out, "{}", csv_row(&p.row))?,
        Format::Json | Format::Syslog => {
            writeln!(out, "{}", serde_json::to_string(&p.row).unwrap_or_default())?
        }
    }
    Ok(())
}

fn start_row(e: &Event) -> SessionRow {
    SessionRow {
        session_id: e.session_id.clone().unwrap_or_default(),
        user: e.user.clone().unwrap_or_default(),
        user_name: e.user_name.clone().unwrap_or_default(),
        user_email: e.user_email.clone().unwrap_or_default(),
        device: e
            .device
            .as_ref()
            .map(|d| d.name.clone().unwrap_or_else(|| d.id.clone()))
            .unwrap_or_default(),
        endpoint: e
            .endpoint
            .as_ref()
            .map(|x| x.name.clone())
            .unwrap_or_default(),
        site: e
            .endpoint
            .as_ref()
            .map(|x| x.site.clone())
            .unwrap_or_default(),
        source: e.source.clone().unwrap_or_default(),
        start: e.ts.clone(),
        end: String::new(),
        duration_ms: None,
        bytes_up: None,
        bytes_down: None,
        close_reason: "open".to_owned(),
        justification: e.justification.clone().unwrap_or_default(),
        rule: e
            .decision
            .as_ref()
            .and_then(|d| d.rule.clone())
            .unwrap_or_default(),
    }
}

fn end_row(row: &mut SessionRow, e: &Event) {
    row.end = e.ts.clone();
    row.bytes_up = e.bytes_up;
    row.bytes_down = e.bytes_down;
    row.close_reason = e
        .close_reason
        .clone()
        .unwrap_or_else(|| e.kind.trim_start_matches("session.").to_owned());
    row.duration_ms = e.duration_ms.or_else(|| {
        let start = event_time(&row.start)?;
        let end = event_time(&row.end)?;
        end.duration_since(start).ok().map(|d| d.as_millis() as u64)
    });
    if row.justification.is_empty() {
        row.justification = e.justification.clone().unwrap_or_default();
    }
    // Fill what the start did not say (e.g. no start in this log).
    if row.user.is_empty() {
        row.user = e.user.clone().unwrap_or_default();
    }
    if row.user_email.is_empty() {
        row.user_email = e.user_email.clone().unwrap_or_default();
    }
}

const CSV_HEADER: [&str; 16] = [
    "session_id",
    "user",
    "user_name",
    "user_email",
    "device",
    "endpoint",
    "site",
    "source",
    "start",
    "end",
    "duration_ms",
    "bytes_up",
    "bytes_down",
    "close_reason",
    "justification",
    "rule",
];

fn csv_row(r: &SessionRow) -> String {
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let cells = [
        r.session_id.clone(),
        r.user.clone(),
        r.user_name.clone(),
        r.user_email.clone(),
        r.device.clone(),
        r.endpoint.clone(),
        r.site.clone(),
        r.source.clone(),
        r.start.clone(),
        r.end.clone(),
        num(r.duration_ms),
        num(r.bytes_up),
        num(r.bytes_down),
        r.close_reason.clone(),
        r.justification.clone(),
        r.rule.clone(),
    ];
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// `2025-03-01T08:15:02.123456Z` → `2025-03-01 08:15:02Z` (seconds are enough in a table).
fn short_time(ts: &str) -> String {
    if ts.is_empty() {
        return "-".to_owned();
    }
    match (ts.get(..10), ts.get(11..19)) {
        (Some(date), Some(time)) if ts.len() >= 20 => format!("{date} {time}Z"),
        _ => one_line(ts),
    }
}

/// `3723000` ms → `1h02m03s`.
pub fn human_duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_owned();
    };
    let s = Duration::from_millis(ms).as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "-".to_owned();
    };
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

const W_SESSION: usize = 37; // "sess-" and 32 hex digits, as the gateway makes them
const W_USER: usize = 24;
const W_DEVICE: usize = 16;
const W_ENDPOINT: usize = 26;
const W_TIME: usize = 20;
const W_DURATION: usize = 9;
const W_BYTES: usize = 10;
const W_CLOSE: usize = 16;

fn table_header() -> String {
    line(
        "SESSION",
        "USER",
        "DEVICE",
        "ENDPOINT",
        "START",
        "END",
        "DURATION",
        "UP",
        "DOWN",
        "CLOSE",
        "JUSTIFICATION",
    )
}

fn table_row(r: &SessionRow) -> String {
    let user = if !r.user_email.is_empty() {
        r.user_email.as_str()
    } else if !r.user.is_empty() {
        r.user.as_str()
    } else {
        "-"
    };
    let endpoint = match (r.endpoint.is_empty(), r.site.is_empty()) {
        (true, _) => "-".to_owned(),
        (false, true) => r.endpoint.clone(),
        (false, false) => format!("{}@{}", r.endpoint, r.site),
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            one_line(s)
        }
    };
    line(
        &dash(&r.session_id),
        &one_line(user),
        &dash(&r.device),
        &one_line(&endpoint),
        &short_time(&r.start),
        &short_time(&r.end),
        &human_duration(r.duration_ms),
        &human_bytes(r.bytes_up),
        &human_bytes(r.bytes_down),
        &dash(&r.close_reason),
        &dash(&r.justification),
    )
}

#[allow(clippy::too_many_arguments)]
fn line(
    session: &str,
    user: &str,
    device: &str,
    endpoint: &str,
    start: &str,
    end: &str,
    duration: &str,
    up: &str,
    down: &str,
    close: &str,
    justification: &str,
) -> String {
    format!(
        "{session:<W_SESSION$} {user:<W_USER$} {device:<W_DEVICE$} {endpoint:<W_ENDPOINT$} {start:<W_TIME$} {end:<W_TIME$} {duration:>W_DURATION$} {up:>W_BYTES$} {down:>W_BYTES$} {close:<W_CLOSE$} {justification}"
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_duration(Some(3_723_000)), "1h02m03s");
        assert_eq!(human_duration(Some(65_000)), "1m05s");
        assert_eq!(human_duration(Some(999)), "0s");
        assert_eq!(human_duration(None), "-");
        assert_eq!(human_bytes(Some(1023)), "1023 B");
        assert_eq!(human_bytes(Some(1536)), "1.5 KiB");
        assert_eq!(human_bytes(Some(5 * 1024 * 1024 * 1024)), "5.0 GiB");
        assert_eq!(
            short_time("2025-03-01T08:15:02.123456Z"),
            "2025-03-01 08:15:02Z"
        );
    }
}
