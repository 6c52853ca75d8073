//! Visits: what `postern-audit sessions` lists by default. A clinician's viewer opens many TCP
//! connections for one piece of work (three page loads are three tunnelled connections, each a
//! session with its own `session.start` and `session.end`); an auditor asks about the work.
//!
//! A visit is one clinician's use of one endpoint from one sign-in. Session events name the
//! sign-in (`signin`, the session token's id), so the connections of one user (subject, any
//! case) to one endpoint with the same sign-in and break-glass justification are one visit,
//! whatever addresses they came from (a laptop that changes Wi-Fi keeps its sign-in). Logs
//! written before session events carried the sign-in are grouped by what they do carry: the
//! same user, endpoint, device, client address (without the port: every connection has its
//! own) and justification, where each connection starts at most [`VISIT_GAP`] after the latest
//! end of the ones before it (or while one of them is still open). A web application session
//! is already one per sign-in: it is a visit of its own, never joined with another.
//!
//! Streams like `sessions`: connections come in order of start, and a visit is printed as soon
//! as no later connection can join it, so memory holds only the visits still open. A visit
//! without a sign-in is complete once a connection has started more than [`VISIT_GAP`] after
//! its latest end; one with a sign-in once that is [`SIGNIN_GAP`], longer than a sign-in lasts
//! by default, so that a sign-in is one visit per endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::AuditError;
use crate::logset::LogSet;
use crate::search::{
    csv_cell, event_time, one_line, utc_seconds, Filter, Format, ReportError, Summary,
};
use crate::sessions::{
    each_session, human_bytes, human_duration, is_web_protocol, short_time, web_summary,
    Connection, SessionRow,
};

/// The longest pause between one connection's end and the next one's start within a visit
/// whose connections do not name their sign-in (logs from before they did).
pub const VISIT_GAP: Duration = Duration::from_secs(5 * 60);

/// The same for connections of one sign-in: the gateway's longest token lifetime by default
/// (`limits.session_token_max_ttl`, 24 h; a sign-in lasts 10 h unless `oidc.session_ttl` says
/// otherwise). A sign-in configured to last longer, with a pause this long, is two visits.
pub const SIGNIN_GAP: Duration = Duration::from_secs(24 * 3600);

/// At most this many distinct client addresses are listed for one visit (the rest counted).
const MAX_SOURCES: usize = 4;

/// One visit: the connections of one clinician to one endpoint from one sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VisitRow {
    /// IdP subject.
    pub user: String,
    pub user_name: String,
    pub user_email: String,
    /// Device name, else device id.
    pub device: String,
    /// Client address, without the port; a visit of one sign-in that came from several lists
    /// them, `203.0.113.7, 198.51.100.4` (at most four, then `(+N)`).
    pub source: String,
    /// The sign-in its connections were opened with (the session token's id); empty for a
    /// visit inferred from a log written before session events named it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signin: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint site.
    pub site: String,
    /// The endpoint's protocol.
    pub protocol: String,
    /// `ts` of the first connection's `session.start` (empty if the log holds none of them).
    pub start: String,
    /// `ts` of the last connection's end (empty while one is open).
    pub end: String,
    /// From the first start to the last end; one connection: its own duration.
    pub duration_ms: Option<u64>,
    /// How many connections (sessions) it made.
    pub connections: u64,
    /// Bytes each way, summed over its connections (absent when none recorded any).
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    /// How its last connection ended; `open` while one is open.
    pub close_reason: String,
    /// The break-glass justification (the same for every connection of the visit).
    pub justification: String,
    /// The policy rule that allowed it (of the first connection).
    pub rule: String,
    /// The session ids of its connections, in order of start.
    pub sessions: Vec<String>,
    /// Web application sessions: as in `sessions --connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_recorded: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sampled_mixed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub objects_capped: bool,
    /// With several logs: the replica labels of the logs holding its events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

impl VisitRow {
    /// `Dr Ann Jones <ann.jones@nhs.example>`, or what there is of it.
    pub fn who(&self) -> String {
        who(&self.user, &self.user_name, &self.user_email)
    }

    /// Whether it was break-glass access (a justification was given).
    pub fn is_break_glass(&self) -> bool {
        !self.justification.is_empty()
    }
}

/// `Dr Ann Jones <ann.jones@nhs.example>`, `Dr Ann Jones (sub-ann)`, the email, the subject,
/// or `-`.
pub fn who(user: &str, name: &str, email: &str) -> String {
    match (name.is_empty(), email.is_empty(), user.is_empty()) {
        (false, false, _) => format!("{name} <{email}>"),
        (true, false, _) => email.to_owned(),
        (false, true, false) => format!("{name} ({user})"),
        (false, true, true) => name.to_owned(),
        (true, true, false) => user.to_owned(),
        (true, true, true) => "-".to_owned(),
    }
}

/// A client address without its port (`203.0.113.7:51234` → `203.0.113.7`).
pub fn source_address(source: &str) -> String {
    if let Ok(a) = source.parse::<SocketAddr>() {
        return a.ip().to_string();
    }
    if let Ok(ip) = source.parse::<IpAddr>() {
        return ip.to_string();
    }
    source.to_owned()
}

/// What connections of one visit share: the sign-in when they name it, else (older logs) the
/// client address in its place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    device: String,
    signin: String,
    /// Empty when `signin` is known.
    source: String,
    endpoint: String,
    site: String,
    justification: String,
}

impl Key {
    fn of(r: &SessionRow) -> Key {
        Key {
            user: r.user.to_lowercase(),
            device: r.device.clone(),
            signin: r.signin.clone(),
            source: if r.signin.is_empty() {
                source_address(&r.source)
            } else {
                String::new()
            },
            endpoint: r.endpoint.clone(),
            site: r.site.clone(),
            justification: r.justification.clone(),
        }
    }

    /// The longest pause within a visit of this key, `inferred` when the sign-in is unknown.
    fn gap(&self, inferred: Duration) -> Duration {
        if self.signin.is_empty() {
            inferred
        } else {
            SIGNIN_GAP
        }
    }
}

/// A visit being made.
struct Acc {
    row: VisitRow,
    /// None: never joined by another (a web session).
    key: Option<Key>,
    /// The earliest start (or end, for a connection without a start).
    first: Option<SystemTime>,
    /// The earliest real start, with its text.
    start: Option<SystemTime>,
    /// The latest end, or start of a connection still open.
    reach: Option<SystemTime>,
    /// The latest end.
    last_end: Option<SystemTime>,
    open: u64,
    /// The single connection's own duration (used while it is the only one).
    own_duration: Option<u64>,
    replicas: BTreeSet<String>,
    /// Distinct client addresses, in order of first use (at most [`MAX_SOURCES`]), and how
    /// many more there were.
    sources: Vec<String>,
    more_sources: u64,
}

fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn min_t(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_t(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Acc {
    fn new(c: Connection<'_>, key: Option<Key>) -> Acc {
        let r = c.row;
        let row = VisitRow {
            user: r.user.clone(),
            user_name: r.user_name.clone(),
            user_email: r.user_email.clone(),
            device: r.device.clone(),
            signin: r.signin.clone(),
            endpoint: r.endpoint.clone(),
            site: r.site.clone(),
            protocol: r.protocol.clone(),
            rule: r.rule.clone(),
            justification: r.justification.clone(),
            requests: r.requests,
            requests_recorded: r.requests_recorded,
            sampled: r.sampled,
            sampled_mixed: r.sampled_mixed,
            objects: r.objects.clone(),
            objects_capped: r.objects_capped,
            ..VisitRow::default()
        };
        let mut acc = Acc {
            row,
            key,
            first: None,
            start: None,
            reach: None,
            last_end: None,
            open: 0,
            own_duration: r.duration_ms,
            replicas: BTreeSet::new(),
            sources: Vec::new(),
            more_sources: 0,
        };
        acc.take(r, c.start_replica, c.end_replica);
        acc
    }

    /// Adds one connection's facts.
    fn take(&mut self, r: SessionRow, start_replica: &str, end_replica: &str) {
        let start = event_time(&r.start);
        let end = event_time(&r.end);
        self.first = min_t(self.first, start.or(end));
        if start.is_some() && min_t(self.start, start) == start {
            self.start = start;
            self.row.start = r.start.clone();
        }
        if r.end.is_empty() {
            self.open += 1;
            self.reach = max_t(self.reach, start);
        } else {
            self.reach = max_t(self.reach, end);
            if end.is_some() && max_t(self.last_end, end) == end {
                self.last_end = end;
                self.row.end = r.end.clone();
                self.row.close_reason = r.close_reason.clone();
            } else if self.row.end.is_empty() {
                self.row.end = r.end.clone();
                self.row.close_reason = r.close_reason.clone();
            }
        }
        self.row.connections += 1;
        self.row.bytes_up = sum(self.row.bytes_up, r.bytes_up);
        self.row.bytes_down = sum(self.row.bytes_down, r.bytes_down);
        for (to, from) in [
            (&mut self.row.user_name, &r.user_name),
            (&mut self.row.user_email, &r.user_email),
            (&mut self.row.user, &r.user),
            (&mut self.row.rule, &r.rule),
        ] {
            if to.is_empty() {
                to.clone_from(from);
            }
        }
        let source = source_address(&r.source);
        if !source.is_empty() && !self.sources.contains(&source) {
            if self.sources.len() < MAX_SOURCES {
                self.sources.push(source);
            } else {
                self.more_sources += 1;
            }
        }
        self.row.sessions.push(r.session_id);
        for label in [start_replica, end_replica] {
            if !label.is_empty() {
                self.replicas.insert(label.to_owned());
            }
        }
    }

    /// Whether a connection starting at `t` belongs to this visit (`inferred`: the gap for a
    /// visit without a sign-in).
    fn joins(&self, t: SystemTime, inferred: Duration) -> bool {
        let gap = self.key.as_ref().map_or(inferred, |k| k.gap(inferred));
        match (self.first, self.reach) {
            (Some(first), Some(reach)) => t <= reach + gap && t + gap >= first,
            _ => false,
        }
    }

    /// Whether no connection starting at or after `watermark` can join it any more.
    fn closed(&self, watermark: Option<SystemTime>, inferred: Duration) -> bool {
        match (&self.key, self.reach, watermark) {
            (None, _, _) | (_, None, _) => true,
            (Some(k), Some(reach), Some(w)) => reach + k.gap(inferred) < w,
            (_, Some(_), None) => false,
        }
    }

    fn into_row(mut self) -> VisitRow {
        self.row.source = self.sources.join(", ");
        if self.more_sources > 0 {
            self.row.source += &format!(" (+{})", self.more_sources);
        }
        if self.open > 0 {
            self.row.end.clear();
            self.row.close_reason = "open".to_owned();
            self.row.duration_ms = None;
        } else if self.row.connections == 1 && self.own_duration.is_some() {
            self.row.duration_ms = self.own_duration;
        } else {
            self.row.duration_ms = match (self.start, self.last_end) {
                (Some(a), Some(b)) => b.duration_since(a).ok().map(|d| d.as_millis() as u64),
                _ => None,
            };
        }
        self.row.replicas = self.replicas.into_iter().collect();
        self.row
    }
}

/// Groups connections into visits, in the order they come (by start).
struct Grouper {
    gap: Duration,
    merge: bool,
    order: u64,
    pending: BTreeMap<u64, Acc>,
    by_key: HashMap<Key, u64>,
    watermark: Option<SystemTime>,
}

impl Grouper {
    fn new(gap: Duration, merge: bool) -> Grouper {
        Grouper {
            gap,
            merge,
            order: 0,
            pending: BTreeMap::new(),
            by_key: HashMap::new(),
            watermark: None,
        }
    }

    fn add(&mut self, mut c: Connection<'_>) {
        if !self.merge {
            (c.start_replica, c.end_replica) = ("", "");
        }
        let start = event_time(&c.row.start).or_else(|| event_time(&c.row.end));
        self.watermark = max_t(self.watermark, start);
        let web = is_web_protocol(&c.row.protocol) || c.row.requests.is_some();
        let key = (!web).then(|| Key::of(&c.row));
        if let (Some(k), Some(t)) = (&key, start) {
            if let Some(acc) = self
                .by_key
                .get(k)
                .and_then(|o| self.pending.get_mut(o))
                .filter(|acc| acc.joins(t, self.gap))
            {
                let (a, b) = (c.start_replica, c.end_replica);
                acc.take(c.row, a, b);
                return;
            }
        }
        self.order += 1;
        if let Some(k) = &key {
            self.by_key.insert(k.clone(), self.order);
        }
        self.pending.insert(self.order, Acc::new(c, key));
    }

    /// The next visit no later connection can join, oldest first.
    fn ready(&mut self) -> Option<VisitRow> {
        let (_, front) = self.pending.first_key_value()?;
        if !front.closed(self.watermark, self.gap) {
            return None;
        }
        let (order, acc) = self.pending.pop_first()?;
        self.forget(order, &acc);
        Some(acc.into_row())
    }

    fn forget(&mut self, order: u64, acc: &Acc) {
        if let Some(k) = &acc.key {
            if self.by_key.get(k) == Some(&order) {
                self.by_key.remove(k);
            }
        }
    }

    fn finish(self) -> impl Iterator<Item = VisitRow> {
        self.pending.into_values().map(Acc::into_row)
    }
}

/// The visits made of the sessions of `logs` that pass `filter` (as `sessions` applies it to
/// each session) and `keep`, in order of their first start, handed to `f` as soon as they are
/// complete.
pub fn each_visit(
    logs: &LogSet,
    filter: &Filter,
    keep: &dyn Fn(&SessionRow) -> bool,
    bad: &mut dyn FnMut(&AuditError),
    begin: &mut dyn FnMut() -> Result<(), ReportError>,
    f: &mut dyn FnMut(VisitRow) -> Result<(), ReportError>,
) -> Result<Summary, ReportError> {
    let mut grouper = Grouper::new(VISIT_GAP, logs.is_merged());
    let summary = each_session(logs, filter, bad, begin, &mut |c| {
        if keep(&c.row) {
            grouper.add(c);
            while let Some(v) = grouper.ready() {
                f(v)?;
            }
        }
        Ok(())
    })?;
    for v in grouper.finish() {
        f(v)?;
    }
    Ok(summary)
}

/// Prints the visits of `logs` that pass `filter` in `format` (`Syslog` prints JSON): what
/// `postern-audit sessions` prints without `--connections`.
pub fn visits_logs(
    logs: &LogSet,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Summary, ReportError> {
    let merge = logs.is_merged();
    let out = std::cell::RefCell::new(out);
    let mut begin = || {
        let out = &mut *out.borrow_mut();
        match format {
            Format::Table => writeln!(out, "{}", table_header(merge))?,
            Format::Csv => writeln!(out, "{}", csv_header(merge))?,
            Format::Json | Format::Syslog => {}
        }
        Ok(())
    };
    each_visit(logs, filter, &|_| true, bad, &mut begin, &mut |v| {
        let out = &mut *out.borrow_mut();
        match format {
            Format::Table => writeln!(out, "{}", table_row(&v, merge))?,
            Format::Csv => writeln!(out, "{}", csv_row(&v, merge))?,
            Format::Json | Format::Syslog => {
                writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default())?
            }
        }
        Ok(())
    })
}

/// Columns of `sessions --csv` (visits), in order; with several logs a last `replicas`.
pub const CSV_COLUMNS: [&str; 22] = [
    "user",
    "user_name",
    "user_email",
    "device",
    "source",
    "endpoint",
    "site",
    "protocol",
    "start_utc",
    "end_utc",
    "duration_ms",
    "connections",
    "bytes_up",
    "bytes_down",
    "close_reason",
    "justification",
    "rule",
    "requests",
    "requests_recorded",
    "sampled",
    "objects",
    "sessions",
];

fn csv_header(merge: bool) -> String {
    let mut h = CSV_COLUMNS.join(",");
    if merge {
        h.push_str(",replicas");
    }
    h
}

fn csv_row(v: &VisitRow, merge: bool) -> String {
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let mut cells = vec![
        v.user.clone(),
        v.user_name.clone(),
        v.user_email.clone(),
        v.device.clone(),
        v.source.clone(),
        v.endpoint.clone(),
        v.site.clone(),
        v.protocol.clone(),
        utc_seconds(&v.start),
        utc_seconds(&v.end),
        num(v.duration_ms),
        v.connections.to_string(),
        num(v.bytes_up),
        num(v.bytes_down),
        v.close_reason.clone(),
        v.justification.clone(),
        v.rule.clone(),
        num(v.requests),
        num(v.requests_recorded),
        v.sampled.map(|n| n.to_string()).unwrap_or_default(),
        v.objects
            .iter()
            .flatten()
            .map(|(kind, n)| format!("{kind}:{n}"))
            .collect::<Vec<_>>()
            .join(";"),
        v.sessions.join(";"),
    ];
    if merge {
        cells.push(v.replicas.join(";"));
    }
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the WEB column says: as for a session row.
pub fn web_text(v: &VisitRow) -> String {
    web_summary(&SessionRow {
        requests: v.requests,
        requests_recorded: v.requests_recorded,
        sampled: v.sampled,
        sampled_mixed: v.sampled_mixed,
        objects: v.objects.clone(),
        objects_capped: v.objects_capped,
        ..SessionRow::default()
    })
}

const W_USER: usize = 24;
const W_DEVICE: usize = 16;
const W_SOURCE: usize = 15;
const W_ENDPOINT: usize = 26;
const W_TIME: usize = 20;
const W_DURATION: usize = 9;
const W_CONN: usize = 5;
const W_BYTES: usize = 10;
const W_CLOSE: usize = 16;
const W_WEB: usize = 36;
const W_REPLICAS: usize = 12;

fn table_header(merge: bool) -> String {
    line(
        [
            "USER", "DEVICE", "SOURCE", "ENDPOINT", "START", "END", "DURATION", "CONN", "UP",
            "DOWN", "CLOSE", "WEB",
        ],
        merge.then_some("REPLICAS"),
        "JUSTIFICATION",
    )
}

fn table_row(v: &VisitRow, merge: bool) -> String {
    let user = [&v.user_email, &v.user]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or("-", |s| s.as_str());
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            one_line(s)
        }
    };
    let endpoint = match (v.endpoint.is_empty(), v.site.is_empty()) {
        (true, _) => "-".to_owned(),
        (false, true) => one_line(&v.endpoint),
        (false, false) => one_line(&format!("{}@{}", v.endpoint, v.site)),
    };
    let replicas = v.replicas.join(",");
    line(
        [
            &one_line(user),
            &dash(&v.device),
            &dash(&v.source),
            &endpoint,
            &short_time(&v.start),
            &short_time(&v.end),
            &human_duration(v.duration_ms),
            &v.connections.to_string(),
            &human_bytes(v.bytes_up),
            &human_bytes(v.bytes_down),
            &dash(&v.close_reason),
            &one_line(&web_text(v)),
        ],
        merge.then_some(&dash(&replicas)),
        &dash(&v.justification),
    )
}

fn line(c: [&str; 12], replicas: Option<&str>, justification: &str) -> String {
    let [user, device, source, endpoint, start, end, duration, conn, up, down, close, web] = c;
    let replicas = match replicas {
        Some(r) => format!("{r:<W_REPLICAS$} "),
        None => String::new(),
    };
    format!(
        "{user:<W_USER$} {device:<W_DEVICE$} {source:<W_SOURCE$} {endpoint:<W_ENDPOINT$} {start:<W_TIME$} {end:<W_TIME$} {duration:>W_DURATION$} {conn:>W_CONN$} {up:>W_BYTES$} {down:>W_BYTES$} {close:<W_CLOSE$} {web:<W_WEB$} {replicas}{justification}"
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, start: &str, end: &str, source: &str) -> Connection<'static> {
        Connection {
            row: SessionRow {
                session_id: id.into(),
                user: "sub-ann".into(),
                device: "LAPTOP".into(),
                endpoint: "pacs".into(),
                site: "truro".into(),
                source: source.into(),
                start: start.into(),
                end: end.into(),
                bytes_up: Some(1),
                bytes_down: Some(10),
                close_reason: if end.is_empty() {
                    "open"
                } else {
                    "client_closed"
                }
                .into(),
                protocol: "dicom".into(),
                ..SessionRow::default()
            },
            start_replica: "",
            end_replica: "",
        }
    }

    fn group(conns: Vec<Connection<'static>>) -> Vec<VisitRow> {
        let mut g = Grouper::new(VISIT_GAP, false);
        let mut out = Vec::new();
        for c in conns {
            g.add(c);
            while let Some(v) = g.ready() {
                out.push(v);
            }
        }
        out.extend(g.finish());
        out
    }

    #[test]
    fn connections_within_the_gap_are_one_visit() {
        let v = group(vec![
            conn(
                "a",
                "2025-03-01T10:00:00Z",
                "2025-03-01T10:01:00Z",
                "1.2.3.4:1000",
            ),
            conn(
                "b",
                "2025-03-01T10:05:59Z",
                "2025-03-01T10:07:00Z",
                "1.2.3.4:1001",
            ),
            // Overlapping, a new port.
            conn(
                "c",
                "2025-03-01T10:06:00Z",
                "2025-03-01T10:06:30Z",
                "1.2.3.4:1002",
            ),
            // 5m01s after the latest end: a new visit.
            conn(
                "d",
                "2025-03-01T10:12:01Z",
                "2025-03-01T10:13:00Z",
                "1.2.3.4:1003",
            ),
            // Another address: another visit.
            conn("e", "2025-03-01T10:12:30Z", "", "[2001:db8::1]:443"),
        ]);
        assert_eq!(v.len(), 3, "{v:#?}");
        assert_eq!(v[0].sessions, ["a", "b", "c"]);
        assert_eq!(v[0].connections, 3);
        assert_eq!(v[0].source, "1.2.3.4");
        assert_eq!(v[0].start, "2025-03-01T10:00:00Z");
        assert_eq!(v[0].end, "2025-03-01T10:07:00Z");
        assert_eq!(v[0].duration_ms, Some(7 * 60_000));
        assert_eq!((v[0].bytes_up, v[0].bytes_down), (Some(3), Some(30)));
        assert_eq!(v[1].sessions, ["d"]);
        assert_eq!(v[2].source, "2001:db8::1");
        assert_eq!(v[2].close_reason, "open");
        assert_eq!(v[2].end, "");
    }

    fn signed_in(
        signin: &str,
        id: &str,
        start: &str,
        end: &str,
        source: &str,
    ) -> Connection<'static> {
        let mut c = conn(id, start, end, source);
        c.row.signin = signin.into();
        c
    }

    #[test]
    fn a_sign_in_is_one_visit_per_endpoint_whatever_the_address_and_pause() {
        let mut conns = vec![
            signed_in(
                "tok-a",
                "a1",
                "2025-03-01T10:00:00Z",
                "2025-03-01T10:01:00Z",
                "1.2.3.4:1000",
            ),
            // Another sign-in at the same address, within the 5 minutes: its own visit.
            signed_in(
                "tok-b",
                "b1",
                "2025-03-01T10:00:30Z",
                "2025-03-01T10:02:00Z",
                "1.2.3.4:1001",
            ),
            // The first sign-in two hours later, after a Wi-Fi change: the same visit.
            signed_in(
                "tok-a",
                "a2",
                "2025-03-01T12:00:00Z",
                "2025-03-01T12:05:00Z",
                "5.6.7.8:2000",
            ),
        ];
        // Four more addresses: four are listed, the rest counted.
        for (i, port) in (3..=6).zip(3000..) {
            conns.push(signed_in(
                "tok-a",
                &format!("a{i}"),
                &format!("2025-03-01T13:0{i}:00Z"),
                &format!("2025-03-01T13:0{i}:30Z"),
                &format!("10.0.0.{i}:{port}"),
            ));
        }
        // More than a day after its last connection: a new visit of the same sign-in.
        conns.push(signed_in(
            "tok-a",
            "a9",
            "2025-03-02T13:07:00Z",
            "",
            "1.2.3.4:1002",
        ));
        let v = group(conns);
        assert_eq!(v.len(), 3, "{v:#?}");
        assert_eq!(v[0].signin, "tok-a");
        assert_eq!(v[0].sessions, ["a1", "a2", "a3", "a4", "a5", "a6"]);
        assert_eq!(v[0].source, "1.2.3.4, 5.6.7.8, 10.0.0.3, 10.0.0.4 (+2)");
        assert_eq!(v[0].start, "2025-03-01T10:00:00Z");
        assert_eq!(v[0].end, "2025-03-01T13:06:30Z");
        assert_eq!(v[1].signin, "tok-b");
        assert_eq!(v[1].sessions, ["b1"]);
        assert_eq!(v[1].source, "1.2.3.4");
        assert_eq!(v[2].sessions, ["a9"]);
        assert_eq!(v[2].close_reason, "open");
    }

    #[test]
    fn addresses_lose_their_port() {
        assert_eq!(source_address("203.0.113.7:51234"), "203.0.113.7");
        assert_eq!(source_address("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(source_address("10.0.0.1"), "10.0.0.1");
        assert_eq!(source_address("weird"), "weird");
        assert_eq!(source_address(""), "");
    }
}
