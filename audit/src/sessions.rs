//! `postern-audit sessions`: one row per session, joining `session.start` with its
//! `session.end` or `session.terminated` by `session_id` — the report an auditor asks for.
//!
//! Streams the log once, holding only sessions that are still open plus finished ones waiting
//! behind an older open one (rows come out in order of their start).
//!
//! Over several logs (one per gateway replica) it reads the events of all of them merged by
//! time, so a session started on one replica and ended on another (or ended `gateway_lost` by
//! the same replica after a restart, or by another) is one row. Every session id has exactly
//! one row: a second end found in another log is folded into the row already made (the earliest
//! end by time stands; [`Summary::folded`] counts them), and a start found only after its end
//! (replicas' clocks apart by more than the session lasted) is joined to it. For that it also
//! holds, with several logs only, the sessions with an end but no start yet (printed last, in
//! order of their end) and a 16-byte digest of every finished session id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::num::NonZeroU16;
use std::path::Path;
use std::time::Duration;

use ring::digest;
use serde::Serialize;

use crate::error::AuditError;
use crate::event::{Event, EventType};
use crate::logset::{LogSet, Merged, Want};
use crate::reader::RawLine;
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

/// A row as printed over several logs: with the replica labels of the logs holding its start
/// and its end (each omitted when there is none).
#[derive(Serialize)]
struct ReplicaRow<'a> {
    #[serde(flatten)]
    row: &'a SessionRow,
    #[serde(skip_serializing_if = "str::is_empty")]
    start_replica: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    end_replica: &'a str,
}

struct Pending {
    row: SessionRow,
    /// The event the filter is applied to: the start (or the end, if there is no start).
    first: Box<Event>,
    done: bool,
    /// The logs holding the start and the end: index in the set plus one. Two bytes each, not
    /// labels, so they fit beside `done` and a report holding many open sessions holds no more
    /// than it did over one log.
    start_log: Option<NonZeroU16>,
    end_log: Option<NonZeroU16>,
}

/// Joins session events into rows, in the order the stream brings them.
struct Joiner {
    /// Several logs: hold end-only sessions, fold repeats (see the module comment).
    merge: bool,
    order: u64,
    open: HashMap<String, u64>,
    pending: BTreeMap<u64, Pending>,
    /// Several logs: sessions with an end but no start (yet), with their place in the order.
    orphans: HashMap<String, (u64, Pending)>,
    /// Several logs: digests of the ids of sessions whose row is finished.
    finished: HashSet<u128>,
    folded: u64,
}

fn id_digest(id: &str) -> u128 {
    let d = digest::digest(&digest::SHA256, id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(b)
}

impl Joiner {
    fn new(merge: bool) -> Joiner {
        Joiner {
            merge,
            order: 0,
            open: HashMap::new(),
            pending: BTreeMap::new(),
            orphans: HashMap::new(),
            finished: HashSet::new(),
            folded: 0,
        }
    }

    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    /// Takes one session event, from log `log` (index in the set plus one).
    fn event(&mut self, event: Box<Event>, log: Option<NonZeroU16>) {
        let Some(id) = event.session_id.clone() else {
            return;
        };
        match event.event_type() {
            Some(EventType::SessionStart) => {
                if self.merge {
                    if let Some((_, orphan)) = self.orphans.remove(&id) {
                        // Its end came first (by time, from another replica): join them now.
                        let mut row = start_row(&event);
                        end_row(&mut row, &orphan.first);
                        self.finished.insert(id_digest(&id));
                        let order = self.next_order();
                        self.pending.insert(
                            order,
                            Pending {
                                row,
                                first: event,
                                done: true,
                                start_log: log,
                                end_log: orphan.end_log,
                            },
                        );
                        return;
                    }
                    if self.open.contains_key(&id) || self.finished.contains(&id_digest(&id)) {
                        self.folded += 1;
                        return;
                    }
                }
                let order = self.next_order();
                self.open.insert(id, order);
                self.pending.insert(
                    order,
                    Pending {
                        row: start_row(&event),
                        first: event,
                        done: false,
                        start_log: log,
                        end_log: None,
                    },
                );
            }
            Some(EventType::SessionEnd | EventType::SessionTerminated) => {
                match self.open.remove(&id).and_then(|o| self.pending.get_mut(&o)) {
                    Some(p) => {
                        end_row(&mut p.row, &event);
                        p.end_log = log;
                        p.done = true;
                        if self.merge {
                            self.finished.insert(id_digest(&id));
                        }
                    }
                    None => {
                        if self.merge
                            && (self.orphans.contains_key(&id)
                                || self.finished.contains(&id_digest(&id)))
                        {
                            self.folded += 1;
                            return;
                        }
                        // The start is not in the log(s) read so far (an earlier, archived
                        // segment; or, with several logs, perhaps still to come).
                        let order = self.next_order();
                        let mut row = start_row(&event);
                        row.start.clear();
                        end_row(&mut row, &event);
                        let p = Pending {
                            row,
                            first: event,
                            done: true,
                            start_log: None,
                            end_log: log,
                        };
                        if self.merge {
                            self.orphans.insert(id, (order, p));
                        } else {
                            self.pending.insert(order, p);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The next row that can be printed: finished, and no older one still open.
    fn ready(&mut self) -> Option<Pending> {
        if self.pending.first_key_value().is_some_and(|(_, p)| p.done) {
            return self.pending.pop_first().map(|(_, p)| p);
        }
        None
    }

    /// Every row left, in order: open sessions in order of start, then (several logs) the
    /// sessions without a start in order of their end.
    fn finish(self) -> impl Iterator<Item = Pending> {
        let mut orphans: Vec<(u64, Pending)> = self.orphans.into_values().collect();
        orphans.sort_by_key(|(order, _)| *order);
        self.pending
            .into_values()
            .chain(orphans.into_iter().map(|(_, p)| p))
    }
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
    sessions_logs(&LogSet::single(dir), filter, format, out, bad)
}

/// [`sessions`] over every log of `logs`, merged by time: one row per session id, wherever its
/// start and end are. With several logs each row says which log held its start and which its
/// end: a `REPLICA` column (`A`, or `A->B` when they differ) before the justification in the
/// table, `start_replica` and `end_replica` columns last in CSV, and members of those names in
/// JSON. With one log the output is exactly the single-log output.
pub fn sessions_logs(
    logs: &LogSet,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Summary, ReportError> {
    // Cheap test before parsing: only session events matter.
    let needle: &[u8] = br#""type":"session."#;
    let line_ok =
        |line: &RawLine<'_>| !line.complete || memchr::memmem::find(line.bytes, needle).is_some();
    let event_ok = |event: &Event| -> bool {
        event.session_id.is_some()
            && matches!(
                event.event_type(),
                Some(
                    EventType::SessionStart | EventType::SessionEnd | EventType::SessionTerminated
                )
            )
    };
    let mut merged: Merged<'_, Box<Event>> = Merged::open(
        logs,
        Want {
            needle: None,
            line: Box::new(line_ok),
            event: Box::new(event_ok),
        },
    )?;
    let merge = logs.is_merged();
    let replica_width = (logs.label_width() * 2 + 2).max("REPLICA".len());
    let look = Look {
        format,
        replica_width: merge.then_some(replica_width),
        labels: logs.logs().iter().map(|l| l.label.clone()).collect(),
    };
    match format {
        Format::Table => writeln!(out, "{}", table_header(look.replica_width))?,
        Format::Csv if merge => {
            writeln!(out, "{},start_replica,end_replica", CSV_HEADER.join(","))?
        }
        Format::Csv => writeln!(out, "{}", CSV_HEADER.join(","))?,
        Format::Json | Format::Syslog => {}
    }
    let mut summary = Summary::default();
    let mut joiner = Joiner::new(merge);
    while let Some(head) = merged.next_owned(bad)? {
        // At most MAX_LOGS logs, so the index always fits.
        let log = u16::try_from(head.log + 1).ok().and_then(NonZeroU16::new);
        joiner.event(head.payload, log);
        while let Some(p) = joiner.ready() {
            emit(&p, filter, &look, out, &mut summary)?;
        }
    }
    summary.folded = joiner.folded;
    for p in joiner.finish() {
        emit(&p, filter, &look, out, &mut summary)?;
    }
    summary.fill(merged.counts(logs));
    Ok(summary)
}

/// How rows are printed.
struct Look {
    format: Format,
    /// With several logs, the width of the table's replica column.
    replica_width: Option<usize>,
    /// The logs' replica labels, by index.
    labels: Vec<String>,
}

impl Look {
    fn label(&self, log: Option<NonZeroU16>) -> &str {
        log.and_then(|i| self.labels.get(usize::from(i.get()) - 1))
            .map_or("", String::as_str)
    }
}

fn emit(
    p: &Pending,
    filter: &Filter,
    look: &Look,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> Result<(), ReportError> {
    if !filter.matches_except_type(&p.first) {
        return Ok(());
    }
    summary.matched += 1;
    let (start, end) = (look.label(p.start_log), look.label(p.end_log));
    match (look.format, look.replica_width) {
        (Format::Table, None) => writeln!(out, "{}", table_row(&p.row, None))?,
        (Format::Table, Some(width)) => writeln!(
            out,
            "{}",
            table_row(&p.row, Some((&replicas(start, end), width)))
        )?,
        (Format::Csv, None) => writeln!(out, "{}", csv_row(&p.row))?,
        (Format::Csv, Some(_)) => writeln!(
            out,
            "{},{},{}",
            csv_row(&p.row),
            csv_cell(start),
            csv_cell(end)
        )?,
        (Format::Json | Format::Syslog, None) => {
            writeln!(out, "{}", serde_json::to_string(&p.row).unwrap_or_default())?
        }
        (Format::Json | Format::Syslog, Some(_)) => {
            let row = ReplicaRow {
                row: &p.row,
                start_replica: start,
                end_replica: end,
            };
            writeln!(out, "{}", serde_json::to_string(&row).unwrap_or_default())?
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

fn table_header(replica_width: Option<usize>) -> String {
    line(
        replica_width.map(|w| ("REPLICA", w)),
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

/// `A`, or `A->B` when the start and the end are in different logs.
fn replicas(start: &str, end: &str) -> String {
    match (start, end) {
        ("", "") => "-".to_owned(),
        (a, "") | ("", a) => one_line(a),
        (a, b) if a == b => one_line(a),
        (a, b) => format!("{}->{}", one_line(a), one_line(b)),
    }
}

fn table_row(r: &SessionRow, replica: Option<(&str, usize)>) -> String {
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
        replica,
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
    replica: Option<(&str, usize)>,
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
    let replica = match replica {
        Some((label, width)) => format!("{label:<width$} "),
        None => String::new(),
    };
    format!(
        "{session:<W_SESSION$} {user:<W_USER$} {device:<W_DEVICE$} {endpoint:<W_ENDPOINT$} {start:<W_TIME$} {end:<W_TIME$} {duration:>W_DURATION$} {up:>W_BYTES$} {down:>W_BYTES$} {close:<W_CLOSE$} {replica}{justification}"
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
