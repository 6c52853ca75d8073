//! What `postern-audit search` and `export` match and print, kept here so it is testable
//! without a process.
//!
//! Searching streams the log once. Before parsing a line it looks for the most selective
//! filter value in the raw bytes (as JSON writes it, compared ignoring ASCII case): a line that
//! does not contain it cannot match and is skipped unparsed, which is what makes a search by user
//! over millions of events take seconds.

use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

use crate::error::AuditError;
use crate::event::{Event, HttpRef, ObjectRef};
use crate::logset::{parse_ts, LogCounts, LogSet, Merged, Want};
use crate::reader::Entry;

/// Which events to show. Every given criterion must match; an empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event type, exactly (`session.start`), or a family ending in `.*` (`session.*`).
    pub kind: Option<String>,
    /// User: the IdP subject (`user`) or the email (`user_email`), whole and ignoring case,
    /// or a part of the display name (`user_name`), ignoring case (see [`user_matches`]).
    pub user: Option<String>,
    /// Session id, exactly.
    pub session: Option<String>,
    /// Sign-in (session token id, `tok-…`), exactly: the `auth.login` that made it and every
    /// session opened with it (see [`Event::signin`]).
    pub signin: Option<String>,
    /// Endpoint name, exactly, or every endpoint whose name starts with a prefix when it ends
    /// in `*` (`truro-pacs*` for `truro-pacs-dicom` and `truro-pacs-web`).
    pub endpoint: Option<String>,
    /// Site: of the endpoint, of the connector, or the event's own `site`.
    pub site: Option<String>,
    /// Device id or device name, exactly.
    pub device: Option<String>,
    /// Decision effect: `allow` or `deny`.
    pub decision: Option<String>,
    /// A clinical object the event touched (any kind: study, series, instance, ...), by its
    /// identifier, exactly (see [`Event::objects`]).
    pub object: Option<String>,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events before this time.
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_except_type(event) && self.type_matches(event)
    }

    fn type_matches(&self, event: &Event) -> bool {
        match self.kind.as_deref() {
            None => true,
            Some(want) => match want.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('.') => event.kind.starts_with(prefix),
                _ => event.kind == want,
            },
        }
    }

    /// Every criterion but the type (what `sessions` applies to a session's first event).
    pub fn matches_except_type(&self, event: &Event) -> bool {
        let user_ok = match self.user.as_deref() {
            None => true,
            Some(want) => user_matches(
                want,
                event.user.as_deref(),
                event.user_name.as_deref(),
                event.user_email.as_deref(),
            ),
        };
        let site_ok = match self.site.as_deref() {
            None => true,
            Some(want) => {
                event.endpoint.as_ref().is_some_and(|e| e.site == want)
                    || event.connector.as_ref().is_some_and(|c| c.site == want)
                    || event.site.as_deref() == Some(want)
            }
        };
        let device_ok = match self.device.as_deref() {
            None => true,
            Some(want) => event
                .device
                .as_ref()
                .is_some_and(|d| d.id == want || d.name.as_deref() == Some(want)),
        };
        let time_ok = (self.since.is_none() && self.until.is_none()) || {
            match event_time(&event.ts) {
                Some(t) => {
                    self.since.is_none_or(|since| t >= since)
                        && self.until.is_none_or(|until| t < until)
                }
                None => false,
            }
        };
        user_ok
            && site_ok
            && device_ok
            && time_ok
            && eq_opt(&self.session, &event.session_id)
            && eq_opt(&self.signin, &event.signin)
            && self.endpoint.as_deref().is_none_or(|want| {
                event
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| match want.strip_suffix('*') {
                        Some(prefix) => e.name.starts_with(prefix),
                        None => e.name == want,
                    })
            })
            && eq_opt(
                &self.decision,
                &event.decision.as_ref().map(|d| d.effect.clone()),
            )
            && self
                .object
                .as_deref()
                .is_none_or(|want| touches(event, want))
    }

    /// A byte string every matching line must contain (ignoring ASCII case), if the filter has
    /// one: the most selective given value, as JSON writes it (quoted, escaped).
    pub fn prefilter(&self) -> Option<Vec<u8>> {
        let quoted = |s: &str| serde_json::to_string(s).ok().map(String::into_bytes);
        if let Some(v) = self.session.as_deref() {
            return quoted(v);
        }
        if let Some(v) = self.object.as_deref() {
            return quoted(v);
        }
        // A user matches by a part of the display name, so the needle is the value as JSON
        // writes it without its quotes; and only an ASCII one (the scan ignores ASCII case
        // only, the match any case).
        if let Some(v) = self.user.as_deref().map(str::trim).filter(|v| v.is_ascii()) {
            if let Some(q) = quoted(v).filter(|q| q.len() > 2) {
                return Some(q[1..q.len() - 1].to_vec());
            }
        }
        if let Some(v) = self.device.as_deref() {
            return quoted(v);
        }
        if let Some(v) = self.endpoint.as_deref() {
            return match v.strip_suffix('*') {
                Some(prefix) => quoted(prefix).map(|q| q[..q.len() - 1].to_vec()),
                None => quoted(v),
            };
        }
        if let Some(v) = self.site.as_deref() {
            return quoted(v);
        }
        if let Some(kind) = self.kind.as_deref() {
            return match kind.strip_suffix('*') {
                // `"session.` : the opening quote and the family.
                Some(prefix) if prefix.ends_with('.') => {
                    let q = quoted(prefix)?;
                    Some(q[..q.len() - 1].to_vec())
                }
                _ => quoted(kind),
            };
        }
        None
    }
}

/// Whether a user given as `want` (`--user`) is the user of an event with subject `user`,
/// display name `name` and email `email`: the subject or the email, whole, or any part of the
/// display name (`jones` finds `Dr Ann Jones`); always ignoring case (Unicode lower case), and
/// the spaces around `want`. An empty `want` matches nobody.
pub fn user_matches(
    want: &str,
    user: Option<&str>,
    name: Option<&str>,
    email: Option<&str>,
) -> bool {
    let want = want.trim().to_lowercase();
    if want.is_empty() {
        return false;
    }
    user.is_some_and(|u| u.to_lowercase() == want)
        || email.is_some_and(|e| e.trim().to_lowercase() == want)
        || name.is_some_and(|n| n.to_lowercase().contains(&want))
}

/// An event time (`2025-03-01T08:15:02.123456Z`, RFC 3339) as a spreadsheet reads a date and
/// time: `2025-03-01 08:15:02`, in UTC, whole seconds (the fraction is cut, not rounded). Empty
/// stays empty; a value that is not a time is kept as it is.
pub fn utc_seconds(ts: &str) -> String {
    if ts.is_empty() {
        return String::new();
    }
    match event_time(ts) {
        Some(t) => {
            let text = humantime::format_rfc3339_seconds(t).to_string();
            text.trim_end_matches('Z').replacen('T', " ", 1)
        }
        None => ts.to_owned(),
    }
}

/// Whether `event` touched the object with identifier `id` (of any kind).
pub fn touches(event: &Event, id: &str) -> bool {
    event
        .objects
        .as_ref()
        .is_some_and(|objects| objects.iter().any(|o| o.id == id))
}

fn eq_opt(want: &Option<String>, have: &Option<String>) -> bool {
    match want {
        None => true,
        Some(want) => have.as_deref() == Some(want.as_str()),
    }
}

/// The time of an event's `ts`, if it is a valid RFC 3339 time.
pub fn event_time(ts: &str) -> Option<SystemTime> {
    parse_ts(ts)
}

/// Parses a `--since`/`--until` value: an RFC 3339 time (`2025-03-01T18:00:00Z`, with an
/// optional fraction and a `Z` or `±hh:mm` offset), a date (`2025-03-01`, midnight UTC), a
/// date and time without zone (UTC), or a duration back from `now` (`12h`, `7days`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(d) = humantime::parse_duration(text) {
        return now
            .checked_sub(d)
            .ok_or_else(|| format!("{text:?} reaches back before 1970"));
    }
    if text.len() == 10 {
        return humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
            .map_err(|e| format!("{text:?} is not a date: {e}"));
    }
    // An explicit offset: apply it (humantime only knows UTC).
    let bytes = text.as_bytes();
    if text.len() > 6
        && matches!(bytes[text.len() - 6], b'+' | b'-')
        && bytes[text.len() - 3] == b':'
    {
        let (base, offset) = text.split_at(text.len() - 6);
        let sign = if offset.starts_with('-') { -1i64 } else { 1 };
        let hours: i64 = offset[1..3]
            .parse()
            .map_err(|_| format!("bad offset in {text:?}"))?;
        let minutes: i64 = offset[4..6]
            .parse()
            .map_err(|_| format!("bad offset in {text:?}"))?;
        let local = humantime::parse_rfc3339_weak(base).map_err(|e| format!("{text:?}: {e}"))?;
        let shift = std::time::Duration::from_secs(((hours * 60 + minutes) * 60) as u64);
        // 18:00+01:00 is 17:00Z.
        return if sign > 0 {
            local.checked_sub(shift)
        } else {
            local.checked_add(shift)
        }
        .ok_or_else(|| format!("{text:?} is out of range"));
    }
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).map_err(|e| {
        format!("{text:?} is not a time (use 2025-03-01T18:00:00Z, 2025-03-01 or 12h): {e}")
    })
}

/// Whether `hay` contains `needle`, ignoring ASCII case (the per-line form of what
/// the chunked scan of the reader does per chunk; the tests hold one to the other).
#[cfg(test)]
pub(crate) fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let (lo, up) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let last_start = hay.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let Some(i) = memchr::memchr2(lo, up, &hay[from..=last_start]) else {
            return false;
        };
        let at = from + i;
        if hay[at + 1..at + needle.len()].eq_ignore_ascii_case(rest) {
            return true;
        }
        from = at + 1;
    }
    false
}

// Fixed widths: search streams, so it cannot measure the widest cell first.
const W_TS: usize = 27;
const W_TYPE: usize = 23;
const W_USER: usize = 20;
const W_ENDPOINT: usize = 22;
const W_OUTCOME: usize = 36;

/// The header line of the table.
pub fn table_header() -> String {
    row(
        "TIME", None, "TYPE", "USER", "ENDPOINT", "OUTCOME", "SESSION",
    )
}

/// The header line of the table over several logs: a `REPLICA` column `width` wide after the
/// time.
pub fn table_header_replica(width: usize) -> String {
    row(
        "TIME",
        Some(("REPLICA", width)),
        "TYPE",
        "USER",
        "ENDPOINT",
        "OUTCOME",
        "SESSION",
    )
}

/// One table line for `event`: time, type, user, endpoint (or connector / site), outcome
/// (decision, close reason or detail) and session id. Missing values print as `-`.
pub fn table_row(event: &Event) -> String {
    table_row_in(event, None)
}

/// [`table_row`] with the replica label of the event's log after the time, in a column `width`
/// wide (see [`table_header_replica`]).
pub fn table_row_replica(event: &Event, replica: &str, width: usize) -> String {
    table_row_in(event, Some((&one_line(replica), width)))
}

fn table_row_in(event: &Event, replica: Option<(&str, usize)>) -> String {
    let endpoint = if let Some(ep) = &event.endpoint {
        format!("{}@{}", ep.name, ep.site)
    } else if let Some(c) = &event.connector {
        format!("connector {}@{}", c.id, c.site)
    } else if let Some(site) = &event.site {
        format!("site {site}")
    } else {
        "-".to_owned()
    };
    let outcome = if let Some(http) = &event.http {
        web_outcome(http, event.objects.as_deref().unwrap_or_default())
    } else if let Some(reason) = &event.close_reason {
        reason.clone()
    } else if let Some(d) = &event.decision {
        match &d.rule {
            Some(rule) => format!("{} ({rule}): {}", d.effect, d.reason),
            None => format!("{}: {}", d.effect, d.reason),
        }
    } else if let Some(detail) = &event.detail {
        detail.clone()
    } else {
        "-".to_owned()
    };
    let user = event
        .user_email
        .as_deref()
        .or(event.user.as_deref())
        .unwrap_or("-");
    row(
        &one_line(&event.ts),
        replica,
        &one_line(&event.kind),
        &one_line(user),
        &one_line(&endpoint),
        &one_line(&outcome),
        &one_line(event.session_id.as_deref().unwrap_or("-")),
    )
}

/// What a `web.request` line says in the table's outcome column: `GET /path -> 200, 1.5 MiB
/// down, 120 ms; study 1.2.3` (bytes up only when some were sent; `sampled 1 in N` when the
/// event stands for about N requests).
pub fn web_outcome(http: &HttpRef, objects: &[ObjectRef]) -> String {
    let mut text = format!(
        "{} {} -> {}, {} down",
        http.method,
        http.path,
        http.status,
        human_bytes(Some(http.bytes_down))
    );
    if http.bytes_up > 0 {
        text.push_str(&format!(", {} up", human_bytes(Some(http.bytes_up))));
    }
    text.push_str(&format!(", {}", human_ms(http.duration_ms)));
    if let Some(n) = http.sampled {
        text.push_str(&format!(", sampled 1 in {n}"));
    }
    if !objects.is_empty() {
        let list: Vec<String> = objects
            .iter()
            .map(|o| format!("{} {}", o.kind, o.id))
            .collect();
        text.push_str(&format!("; {}", list.join(", ")));
    }
    text
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

/// A request's duration: `120 ms`, `2.5 s`, then minutes and hours as in a session's.
fn human_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => {
            let s = ms / 1000;
            let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
            if h > 0 {
                format!("{h}h{m:02}m{s:02}s")
            } else {
                format!("{m}m{s:02}s")
            }
        }
    }
}

fn row(
    ts: &str,
    replica: Option<(&str, usize)>,
    kind: &str,
    user: &str,
    endpoint: &str,
    outcome: &str,
    session: &str,
) -> String {
    let replica = match replica {
        Some((label, width)) => format!("{label:<width$} "),
        None => String::new(),
    };
    format!("{ts:<W_TS$} {replica}{kind:<W_TYPE$} {user:<W_USER$} {endpoint:<W_ENDPOINT$} {outcome:<W_OUTCOME$} {session}")
}

/// Free text may hold newlines or control characters; a table row must stay one line and must
/// not let logged text drive the auditor's terminal.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Columns of `--csv` / `export --format csv`, in order.
pub const CSV_COLUMNS: [&str; 42] = [
    "seq",
    "ts_utc",
    "type",
    "session_id",
    "user",
    "user_name",
    "user_email",
    "groups",
    "device_id",
    "device_name",
    "device_user_verified",
    "source",
    "user_agent",
    "endpoint",
    "endpoint_site",
    "endpoint_host",
    "endpoint_port",
    "protocol",
    "egress_class",
    "connector_id",
    "connector_site",
    "decision",
    "rule",
    "policy_version",
    "reason",
    "report_only",
    "justification",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "close_reason",
    "gateway",
    "detail",
    "http_method",
    "http_path",
    "http_status",
    "http_bytes_up",
    "http_bytes_down",
    "http_duration_ms",
    "http_sampled",
    "objects",
    "signin",
];

/// The CSV header line (no newline).
pub fn csv_header() -> String {
    CSV_COLUMNS.join(",")
}

/// One CSV line (no newline) for `event`, in [`CSV_COLUMNS`] order. Lists are joined with `;`;
/// the time is `2025-03-01 08:15:02` in UTC ([`utc_seconds`]), which spreadsheets read as a
/// date and time (`seq` keeps the order within a second).
/// Cells are quoted as RFC 4180 says; a cell starting with `=`, `+`, `-`, `@`, tab or CR gets
/// a leading `'` so a spreadsheet shows it instead of running it as a formula.
pub fn csv_row(event: &Event) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let ep = event.endpoint.as_ref();
    let dev = event.device.as_ref();
    let con = event.connector.as_ref();
    let dec = event.decision.as_ref();
    let http = event.http.as_ref();
    let cells: [String; 42] = [
        num(event.seq),
        utc_seconds(&event.ts),
        event.kind.clone(),
        opt(&event.session_id),
        opt(&event.user),
        opt(&event.user_name),
        opt(&event.user_email),
        event
            .groups
            .as_ref()
            .map(|g| g.join(";"))
            .unwrap_or_default(),
        dev.map(|d| d.id.clone()).unwrap_or_default(),
        dev.and_then(|d| d.name.clone()).unwrap_or_default(),
        dev.and_then(|d| d.user_verified)
            .map(|b| b.to_string())
            .unwrap_or_default(),
        opt(&event.source),
        opt(&event.user_agent),
        ep.map(|e| e.name.clone()).unwrap_or_default(),
        ep.map(|e| e.site.clone()).unwrap_or_default(),
        ep.map(|e| e.host.clone()).unwrap_or_default(),
        ep.map(|e| e.port.to_string()).unwrap_or_default(),
        ep.map(|e| e.protocol.clone()).unwrap_or_default(),
        opt(&event.egress_class),
        con.map(|c| c.id.clone()).unwrap_or_default(),
        con.map(|c| c.site.clone()).unwrap_or_default(),
        dec.map(|d| d.effect.clone()).unwrap_or_default(),
        dec.and_then(|d| d.rule.clone()).unwrap_or_default(),
        dec.and_then(|d| d.policy_version.clone())
            .unwrap_or_default(),
        dec.map(|d| d.reason.clone()).unwrap_or_default(),
        event
            .report_only
            .as_ref()
            .map(|r| r.join(";"))
            .unwrap_or_default(),
        opt(&event.justification),
        num(event.bytes_up),
        num(event.bytes_down),
        num(event.duration_ms),
        opt(&event.close_reason),
        opt(&event.gateway),
        opt(&event.detail),
        http.map(|h| h.method.clone()).unwrap_or_default(),
        http.map(|h| h.path.clone()).unwrap_or_default(),
        http.map(|h| h.status.to_string()).unwrap_or_default(),
        num(http.map(|h| h.bytes_up)),
        num(http.map(|h| h.bytes_down)),
        num(http.map(|h| h.duration_ms)),
        http.and_then(|h| h.sampled)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        event
            .objects
            .as_ref()
            .map(|o| {
                o.iter()
                    .map(|o| format!("{}:{}", o.kind, o.id))
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_default(),
        opt(&event.signin),
    ];
    let cells: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    cells.join(",")
}

/// One CSV cell: formula-neutralised, quoted when needed.
pub fn csv_cell(value: &str) -> String {
    let mut v = String::with_capacity(value.len() + 2);
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        v.push('\'');
    }
    v.push_str(value);
    if v.contains([',', '"', '\n', '\r']) || v.starts_with(' ') || v.ends_with(' ') {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// How `search` and `export` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Table,
    /// The stored lines, unchanged.
    Json,
    /// CSV with a header line.
    Csv,
    /// RFC 5424 syslog messages, one per line.
    Syslog,
}

/// An error of a report command: the log could not be read, or the output not written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

/// What a streaming report went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read.
    pub scanned: u64,
    /// Events (`sessions`: rows) printed.
    pub matched: u64,
    /// Lines that are not valid events (reported through the callback).
    pub bad_lines: u64,
    /// Whether a log ends in an incomplete line (a crash or a write in progress); it is
    /// skipped without counting as bad.
    pub torn_tail: bool,
    /// The same, log by log (one entry per log read), to say which log.
    pub logs: Vec<LogCounts>,
    /// `sessions` over several logs: session events that came after their session already had
    /// a row with a start and an end, or an end (a second end written by another replica, or a
    /// start found again). Each session still has one row, with its earliest end.
    pub folded: u64,
    /// `sessions`: `web.request` events that came after their session's row was finished (so
    /// they are not counted in it): a request that ended after its session ended, or, with
    /// several logs, a replica's clock ahead of the others'.
    pub late_requests: u64,
}

impl Summary {
    pub(crate) fn fill(&mut self, logs: Vec<LogCounts>) {
        self.scanned = logs.iter().map(|l| l.scanned).sum();
        self.bad_lines = logs.iter().map(|l| l.bad_lines).sum();
        self.torn_tail = logs.iter().any(|l| l.torn_tail);
        self.logs = logs;
    }
}

/// Streams the log in `dir`, printing every event that passes `filter` to `out` in `format`.
/// Bad lines are passed to `bad` and skipped, so the auditor still sees the rest.
pub fn search(
    dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Summary, ReportError> {
    search_logs(&LogSet::single(dir), filter, format, out, bad)
}

/// Streams every log of `logs`, printing every event that passes `filter` to `out` in `format`,
/// merged by event time (see [`crate::logset`]: each log keeps its own order; ties go to the log
/// given first). With several logs each row says which log it came from, by its replica label:
/// a `REPLICA` column after the time in the table, a first `replica` column in CSV, a first
/// `"replica"` member in JSON (take it out again to get the stored line, hash and all), and a
/// `replica` parameter in the syslog structured data. With one log the output is exactly the
/// single-log output. Bad lines are passed to `bad` and skipped, so the auditor still sees the
/// rest.
pub fn search_logs(
    logs: &LogSet,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Summary, ReportError> {
    let mut matches = Matches::open(logs, filter)?;
    let replicas = logs.is_merged();
    let width = logs.label_width().max("REPLICA".len());
    match (format, replicas) {
        (Format::Table, false) => writeln!(out, "{}", table_header())?,
        (Format::Table, true) => writeln!(out, "{}", table_header_replica(width))?,
        (Format::Csv, false) => writeln!(out, "{}", csv_header())?,
        (Format::Csv, true) => writeln!(out, "replica,{}", csv_header())?,
        (Format::Json | Format::Syslog, _) => {}
    }
    while let Some((log, entry)) = matches.next(bad)? {
        let label = &logs.logs()[log].label;
        match (format, replicas) {
            (Format::Table, false) => writeln!(out, "{}", table_row(&entry.event))?,
            (Format::Table, true) => {
                writeln!(out, "{}", table_row_replica(&entry.event, label, width))?
            }
            (Format::Json, false) => writeln!(out, "{}", entry.raw)?,
            (Format::Json, true) => writeln!(out, "{}", json_with_replica(&entry.raw, label))?,
            (Format::Csv, false) => writeln!(out, "{}", csv_row(&entry.event))?,
            (Format::Csv, true) => writeln!(out, "{},{}", csv_cell(label), csv_row(&entry.event))?,
            (Format::Syslog, _) => {
                out.write_all(&crate::syslog::format_rfc5424_replica(
                    entry.raw.as_bytes(),
                    "postern",
                    "-",
                    replicas.then_some(label.as_str()),
                ))?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(matches.summary())
}

/// The events of a [`LogSet`] that pass a [`Filter`], merged by event time, one at a time:
/// what `search` prints and `export` sends. Memory does not grow with the logs: one event is
/// held per log.
pub struct Matches<'a> {
    logs: &'a LogSet,
    merged: Merged<'a, Entry>,
    matched: u64,
}

impl<'a> Matches<'a> {
    /// Opens every log of `logs`. Fails if one has no log or cannot be read.
    pub fn open(logs: &'a LogSet, filter: &'a Filter) -> Result<Matches<'a>, AuditError> {
        let merged = Merged::open(
            logs,
            Want {
                needle: filter.prefilter().map(|n| n.to_ascii_lowercase()),
                line: Box::new(|_| true),
                event: Box::new(|event| filter.matches(event)),
            },
        )?;
        Ok(Matches {
            logs,
            merged,
            matched: 0,
        })
    }

    /// The next matching event, lent until the next call, and the index of its log in the set.
    /// Lines that are not valid events are counted and passed to `bad`; an I/O error ends the
    /// stream.
    pub fn next(
        &mut self,
        bad: &mut dyn FnMut(&AuditError),
    ) -> Result<Option<(usize, &Entry)>, AuditError> {
        let next = self.merged.next(bad)?;
        if next.is_some() {
            self.matched += 1;
        }
        Ok(next.map(|h| (h.log, &h.payload)))
    }

    /// What was read so far: lines, matches, bad lines, torn tails, log by log.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            matched: self.matched,
            ..Summary::default()
        };
        summary.fill(self.merged.counts(self.logs));
        summary
    }
}

/// A stored line with `"replica":LABEL` as its first member. Take that member out again and
/// the line is the stored one, so its hash still checks.
pub fn json_with_replica(raw: &str, label: &str) -> String {
    let quoted = serde_json::to_string(label).unwrap_or_else(|_| "\"\"".to_owned());
    let trimmed = raw.trim_start();
    match trimmed.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"replica\":{quoted}{rest}"),
        Some(rest) => format!("{{\"replica\":{quoted},{rest}"),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnectorRef, DecisionRef, DeviceRef, EndpointRef, EventType};

    fn ev(kind: EventType, user: &str, session: &str) -> Event {
        Event {
            user: Some(user.into()),
            session_id: Some(session.into()),
            ..Event::new(kind)
        }
    }

    #[test]
    fn filter_criteria_all_apply() {
        let e = ev(EventType::SessionStart, "alice", "s1");
        assert!(Filter::default().matches(&e));
        let f = |kind: Option<&str>, user: Option<&str>, session: Option<&str>| Filter {
            kind: kind.map(Into::into),
            user: user.map(Into::into),
            session: session.map(Into::into),
            ..Filter::default()
        };
        assert!(f(Some("session.start"), Some("alice"), Some("s1")).matches(&e));
        assert!(f(Some("session.*"), None, None).matches(&e));
        assert!(!f(Some("session"), None, None).matches(&e));
        assert!(!f(Some("connector.*"), None, None).matches(&e));
        assert!(!f(Some("session.end"), None, None).matches(&e));
        assert!(!f(None, Some("bob"), None).matches(&e));
        assert!(!f(None, None, Some("s2")).matches(&e));
        assert!(!f(Some("session.start"), Some("alice"), Some("s2")).matches(&e));
        // An event without a user never matches a user filter.
        assert!(!f(None, Some("alice"), None).matches(&Event::new(EventType::GatewayStarted)));
    }

    #[test]
    fn new_filters_match_endpoint_site_device_decision_email_and_time() {
        let mut e = ev(EventType::SessionStart, "sub-1", "s1");
        e.ts = "2025-03-01T22:15:00.000000Z".into();
        e.user_email = Some("Ann.Jones@nhs.example".into());
        e.signin = Some("tok-1".into());
        e.endpoint = Some(EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            ..EndpointRef::default()
        });
        e.device = Some(DeviceRef {
            id: "dev-9".into(),
            name: Some("RAD-LAPTOP-042".into()),
            user_verified: Some(true),
        });
        e.decision = Some(DecisionRef {
            effect: "allow".into(),
            ..DecisionRef::default()
        });
        let now = SystemTime::now();
        let t = |s: &str| Some(parse_time(s, now).unwrap());
        let yes = [
            Filter {
                user: Some("ann.jones@nhs.example".into()),
                ..Filter::default()
            },
            Filter {
                user: Some("sub-1".into()),
                ..Filter::default()
            },
            // User names compare ignoring ASCII case, as in the gateway.
            Filter {
                user: Some("SUB-1".into()),
                ..Filter::default()
            },
            Filter {
                endpoint: Some("truro-pacs".into()),
                ..Filter::default()
            },
            Filter {
                site: Some("truro".into()),
                ..Filter::default()
            },
            Filter {
                device: Some("dev-9".into()),
                ..Filter::default()
            },
            Filter {
                device: Some("RAD-LAPTOP-042".into()),
                ..Filter::default()
            },
            Filter {
                decision: Some("allow".into()),
                ..Filter::default()
            },
            Filter {
                signin: Some("tok-1".into()),
                ..Filter::default()
            },
            Filter {
                since: t("2025-03-01T18:00:00Z"),
                until: t("2025-03-02T08:00:00Z"),
                ..Filter::default()
            },
            Filter {
                since: t("2025-03-01T23:00:00+01:00"),
                ..Filter::default()
            },
        ];
        for f in &yes {
            assert!(f.matches(&e), "{f:?}");
        }
        let no = [
            Filter {
                user: Some("sub-12".into()),
                ..Filter::default()
            },
            Filter {
                endpoint: Some("truro".into()),
                ..Filter::default()
            },
            Filter {
                site: Some("bodmin".into()),
                ..Filter::default()
            },
            Filter {
                device: Some("dev-1".into()),
                ..Filter::default()
            },
            Filter {
                decision: Some("deny".into()),
                ..Filter::default()
            },
            Filter {
                signin: Some("tok-12".into()),
                ..Filter::default()
            },
            Filter {
                since: t("2025-03-01T22:15:00.000001Z"),
                ..Filter::default()
            },
            Filter {
                until: t("2025-03-01T22:15:00Z"),
                ..Filter::default()
            },
            Filter {
                since: t("2025-03-01T23:16:00+01:00"),
                ..Filter::default()
            },
        ];
        for f in &no {
            assert!(!f.matches(&e), "{f:?}");
        }
        let mut c = Event::new(EventType::ConnectorConnected);
        c.connector = Some(ConnectorRef {
            id: "c".into(),
            site: "truro".into(),
        });
        assert!(Filter {
            site: Some("truro".into()),
            ..Filter::default()
        }
        .matches(&c));
    }

    #[test]
    fn prefilter_is_a_necessary_condition() {
        let mut e = ev(EventType::SessionStart, "dr \"quoted\" ünï", "s1");
        e.user_email = Some("Ann@X.example".into());
        crate::store::encode_event(&mut e, crate::store::Head::EMPTY, &mut Vec::new()).unwrap();
        let line = serde_json::to_string(&e).unwrap();
        for f in [
            Filter {
                user: e.user.clone(),
                ..Filter::default()
            },
            Filter {
                user: Some("ann@x.example".into()),
                ..Filter::default()
            },
            Filter {
                kind: Some("session.*".into()),
                ..Filter::default()
            },
            Filter {
                kind: Some("session.start".into()),
                ..Filter::default()
            },
            Filter {
                session: Some("s1".into()),
                ..Filter::default()
            },
        ] {
            assert!(f.matches(&e), "{f:?}");
            // A non-ASCII user value has no needle (the scan ignores ASCII case only).
            let Some(needle) = f.prefilter() else {
                assert!(!f.user.as_deref().unwrap_or_default().is_ascii(), "{f:?}");
                continue;
            };
            assert!(
                contains_ignore_ascii_case(line.as_bytes(), &needle),
                "{f:?}"
            );
        }
        // By a part of the display name, with quotes in it.
        let mut e = ev(EventType::SessionStart, "sub-1", "s1");
        e.user_name = Some("Dr \"Ann\" Jones".into());
        let line = serde_json::to_string(&e).unwrap();
        for want in ["\"ann\" jo", "JONES", "dr \""] {
            let f = Filter {
                user: Some(want.into()),
                ..Filter::default()
            };
            assert!(f.matches(&e), "{want}");
            let needle = f.prefilter().unwrap();
            assert!(
                contains_ignore_ascii_case(line.as_bytes(), &needle),
                "{want}"
            );
        }
        assert!(!contains_ignore_ascii_case(b"abc", b"abcd"));
        assert!(contains_ignore_ascii_case(b"xxABcd", b"abC"));
        assert!(!contains_ignore_ascii_case(b"xxABd", b"abc"));
    }

    #[test]
    fn chunked_scan_finds_exactly_the_lines_a_line_by_line_scan_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        let mut text = String::new();
        for i in 0..200 {
            let user = if i % 7 == 0 {
                "Ann@X.example"
            } else {
                "bob@x.example"
            };
            text.push_str(&format!(
                "{{\"n\":{i},\"pad\":\"{}\",\"user\":\"{user}\"}}\n",
                "z".repeat(i % 13)
            ));
        }
        text.push_str("{\"torn\":\"ann@x.example"); // incomplete last line
        std::fs::write(&path, &text).unwrap();
        let needle = b"\"ann@x.example";
        let mut want = Vec::new();
        let mut offset = 0u64;
        for (n, chunk) in text.split_inclusive('\n').enumerate() {
            let line = chunk.strip_suffix('\n').unwrap_or(chunk);
            if contains_ignore_ascii_case(line.as_bytes(), needle) {
                want.push((n as u64 + 1, offset, line.to_owned(), chunk.ends_with('\n')));
            }
            offset += chunk.len() as u64;
        }
        assert_eq!(want.len(), 200 / 7 + 2);
        for chunk in [1, 7, 64, 1000, 4 * 1024 * 1024] {
            let mut got = Vec::new();
            let lines = crate::reader::scan_chunked(&path, needle, true, chunk, |l| {
                got.push((
                    l.line,
                    l.offset,
                    String::from_utf8(l.bytes.to_vec()).unwrap(),
                    l.complete,
                ));
            })
            .unwrap();
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(lines, 201, "chunk {chunk}");
        }
    }

    #[test]
    fn json_rows_of_several_logs_carry_the_replica_first() {
        let raw = r#"{"v":1,"seq":3,"ts":"t","type":"x","hash":"h"}"#;
        let with = json_with_replica(raw, "gw-\"a\"");
        assert_eq!(
            with,
            r#"{"replica":"gw-\"a\"","v":1,"seq":3,"ts":"t","type":"x","hash":"h"}"#
        );
        // Taking the member out gives back the stored line.
        let member = format!(
            r#""replica":{},"#,
            serde_json::to_string("gw-\"a\"").unwrap()
        );
        assert_eq!(with.replacen(&member, "", 1), raw);
        let e: Event = serde_json::from_str(&with).unwrap();
        assert_eq!(e.seq, Some(3));
        assert_eq!(json_with_replica("{}", "a"), r#"{"replica":"a"}"#);
    }

    #[test]
    fn users_match_by_subject_email_or_a_part_of_the_name_in_any_case() {
        let m = |want: &str| {
            user_matches(
                want,
                Some("sub-Ann"),
                Some("Dr Élodie Ann-Jones"),
                Some("Ann.Jones@NHS.example"),
            )
        };
        for yes in [
            "sub-ann",
            "SUB-ANN",
            "ann.jones@nhs.example",
            " Ann.Jones@nhs.EXAMPLE ",
            "jones",
            "élodie",
            "ÉLODIE ANN",
            "dr élodie ann-jones",
        ] {
            assert!(m(yes), "{yes}");
        }
        // The subject and the email only whole; nothing matches an empty value.
        for no in ["sub", "ann.jones", "nhs.example", "", "  ", "smith"] {
            assert!(!m(no), "{no}");
        }
        assert!(!user_matches("ann", None, None, None));
    }

    #[test]
    fn utc_seconds_is_what_a_spreadsheet_reads() {
        assert_eq!(
            utc_seconds("2025-03-01T08:15:02.999999Z"),
            "2025-03-01 08:15:02"
        );
        assert_eq!(utc_seconds("2025-03-01T08:15:02Z"), "2025-03-01 08:15:02");
        assert_eq!(utc_seconds(""), "");
        assert_eq!(utc_seconds("not a time"), "not a time");
    }

    #[test]
    fn parse_time_forms() {
        let now = humantime::parse_rfc3339("2025-03-02T12:00:00Z").unwrap();
        let p = |s: &str| humantime::format_rfc3339(parse_time(s, now).unwrap()).to_string();
        assert_eq!(p("2025-03-01"), "2025-03-01T00:00:00Z");
        assert_eq!(p("2025-03-01T18:00:00Z"), "2025-03-01T18:00:00Z");
        assert_eq!(p("2025-03-01 18:00:00"), "2025-03-01T18:00:00Z");
        assert_eq!(p("2025-03-01T18:00:00+01:00"), "2025-03-01T17:00:00Z");
        assert_eq!(p("2025-03-01T18:00:00-05:30"), "2025-03-01T23:30:00Z");
        assert_eq!(p("12h"), "2025-03-02T00:00:00Z");
        assert!(parse_time("last tuesday", now).is_err());
    }

    #[test]
    fn csv_cells_are_quoted_and_formula_safe() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        let e = ev(EventType::SessionStart, "alice", "s1");
        assert_eq!(csv_row(&e).split(',').count(), CSV_COLUMNS.len());
    }

    #[test]
    fn table_rows_show_endpoint_and_outcome() {
        let mut start = ev(EventType::SessionStart, "alice", "s1");
        start.ts = "2025-03-01T08:15:02.123456Z".into();
        start.endpoint = Some(EndpointRef {
            name: "pacs-dicom".into(),
            site: "truro".into(),
            host: "10.0.0.5".into(),
            port: 104,
            protocol: "dicom".into(),
        });
        start.decision = Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("rads".into()),
            policy_version: None,
            reason: "group radiologists".into(),
            ..DecisionRef::default()
        });
        let row = table_row(&start);
        assert!(
            row.starts_with("2025-03-01T08:15:02.123456Z session.start"),
            "{row}"
        );
        for want in [
            "alice",
            "pacs-dicom@truro",
            "allow (rads): group radiologists",
            "s1",
        ] {
            assert!(row.contains(want), "{want:?} missing from {row:?}");
        }
        assert!(row.ends_with(" s1"), "{row}");

        let mut end = start.clone();
        end.kind = "session.end".into();
        end.close_reason = Some("max_duration".into());
        assert!(table_row(&end).contains("max_duration"));
        assert!(!table_row(&end).contains("allow"));

        let mut conn = Event::new(EventType::ConnectorRefused);
        conn.connector = Some(ConnectorRef {
            id: "c9".into(),
            site: "bodmin".into(),
        });
        conn.detail = Some("certificate revoked\n\x1b[2J".into());
        let row = table_row(&conn);
        assert!(row.contains("connector c9@bodmin"), "{row}");
        assert!(row.contains("certificate revoked"), "{row}");
        assert!(!row.contains('\n') && !row.contains('\x1b'), "{row:?}");
        assert!(row.ends_with(" -"), "{row}");

        let header = table_header();
        assert!(header.starts_with("TIME ") && header.ends_with("SESSION"));
        // Columns line up: the type column starts at the same offset in header and rows.
        assert_eq!(header.find("TYPE"), row.find("connector.refused"));
    }
}
