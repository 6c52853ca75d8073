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
//!
//! Web application sessions (an endpoint of protocol `http` or `https`) are rows like tunnel
//! sessions: one `session.start`, one `session.end`, and between them `web.request` events
//! with the same `session_id`. Their rows also count those requests (an estimate when they were
//! sampled: each sampled event stands for about N requests) and the distinct objects they
//! opened, by kind ([`MAX_OBJECTS_PER_KIND`] per kind at most). A request whose session has no
//! start in the logs read makes a row of its own (no start, like an end without a start); a
//! request that comes after its session's row was printed is not counted
//! ([`Summary::late_requests`]). For that it also holds a 16-byte digest of every finished web
//! session's id, with one log too.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::num::NonZeroU16;
use std::path::Path;
use std::time::Duration;

use ring::digest;
use serde::Serialize;

use crate::error::AuditError;
use crate::event::{Event, EventType, ObjectRef};
use crate::logset::{LogSet, Merged, Want};
use crate::reader::RawLine;
pub use crate::search::human_bytes;
use crate::search::{
    csv_cell, event_time, one_line, touches, utc_seconds, Filter, Format, ReportError, Summary,
};

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
    /// The endpoint's protocol (`dicom`, `rdp`, `https`, ...); `http` or `https`: a web
    /// application session.
    pub protocol: String,
    /// Web application sessions: how many requests it made, an estimate when requests were
    /// sampled (each sampled `web.request` counts for N). Absent for tunnel sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Web application sessions: how many `web.request` events the log holds for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_recorded: Option<u64>,
    /// When some of its requests were sampled: the largest N of "1 in N recorded".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u32>,
    /// Whether requests were recorded at more than one rate (some sampled, some not, or
    /// several N): `requests` is still the sum of what each event stands for.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sampled_mixed: bool,
    /// Distinct objects the session opened, by kind (`{"study":3,"series":7}`); each count
    /// stops at [`MAX_OBJECTS_PER_KIND`]. Absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<BTreeMap<String, u64>>,
    /// Whether a count of `objects` reached [`MAX_OBJECTS_PER_KIND`] (there may be more).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub objects_capped: bool,
    /// The sign-in it was opened with (the session token's id, as `auth.login` names it);
    /// empty in logs written before session events carried it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signin: String,
}

/// At most this many distinct objects of one kind are counted per session (kept as 16-byte
/// digests while the session is held).
pub const MAX_OBJECTS_PER_KIND: usize = 10_000;

/// With one log, an end of a session whose row was finished less than this many rows ago is
/// recognised as a repeat (and not made a row of its own).
const RECENT_FINISHED: usize = 65_536;

/// Whether an endpoint protocol is a web application's.
pub fn is_web_protocol(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("https") || protocol.eq_ignore_ascii_case("http")
}

/// What the `web.request` events of one session add up to.
#[derive(Debug, Default)]
struct WebStats {
    recorded: u64,
    estimated: u64,
    /// Smallest and largest N of the sampled events.
    sampled: Option<(u32, u32)>,
    /// Events recorded without sampling.
    unsampled: u64,
    /// Digests of the distinct object ids, by kind, and whether the kind reached the bound.
    objects: BTreeMap<String, (HashSet<u128>, bool)>,
}

impl WebStats {
    fn add(&mut self, event: &Event) {
        self.recorded += 1;
        match event
            .http
            .as_ref()
            .and_then(|h| h.sampled)
            .filter(|n| *n > 1)
        {
            Some(n) => {
                self.estimated += u64::from(n);
                self.sampled = Some(match self.sampled {
                    Some((lo, hi)) => (lo.min(n), hi.max(n)),
                    None => (n, n),
                });
            }
            None => {
                self.estimated += 1;
                self.unsampled += 1;
            }
        }
        for ObjectRef { kind, id } in event.objects.iter().flatten() {
            let (ids, capped) = self.objects.entry(kind.clone()).or_default();
            if ids.len() < MAX_OBJECTS_PER_KIND {
                ids.insert(id_digest(id));
            } else if !ids.contains(&id_digest(id)) {
                *capped = true;
            }
        }
    }

    fn fill(&self, row: &mut SessionRow) {
        row.requests = Some(self.estimated);
        row.requests_recorded = Some(self.recorded);
        row.sampled = self.sampled.map(|(_, hi)| hi);
        row.sampled_mixed = match self.sampled {
            Some((lo, hi)) => lo != hi || self.unsampled > 0,
            None => false,
        };
        if !self.objects.is_empty() {
            row.objects = Some(
                self.objects
                    .iter()
                    .map(|(kind, (ids, _))| (kind.clone(), ids.len() as u64))
                    .collect(),
            );
            row.objects_capped = self.objects.values().any(|(_, capped)| *capped);
        }
    }
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
    /// Web application sessions: their requests so far.
    web: Option<Box<WebStats>>,
    /// Whether a request of it touched the object the filter names (`--object`).
    touched: bool,
    /// Made from a `web.request`: no start seen (yet).
    from_request: bool,
    /// A `session.terminated` was seen: the gateway ended it, and its `session.end` (bytes,
    /// duration) follows; the row waits for it (to the end of the stream, if it never comes).
    terminated: bool,
    /// A `session.end` was seen.
    ended: bool,
}

impl Pending {
    fn new(row: SessionRow, first: Box<Event>, done: bool) -> Pending {
        let web = is_web_protocol(&row.protocol).then(Box::default);
        Pending {
            row,
            first,
            done,
            start_log: None,
            end_log: None,
            web,
            touched: false,
            from_request: false,
            terminated: false,
            ended: false,
        }
    }

    fn is_web(&self) -> bool {
        self.web.is_some()
    }

    /// A request of this session.
    fn request(&mut self, event: &Event, object: Option<&str>) {
        self.web.get_or_insert_with(Box::default).add(event);
        if object.is_some_and(|o| touches(event, o)) {
            self.touched = true;
        }
    }

    /// The start of a row made from a request (or from an end): what the start says wins.
    fn start(&mut self, event: Box<Event>, log: Option<NonZeroU16>) {
        let mut row = start_row(&event);
        if self.done {
            end_row_from(&mut row, &self.row);
        }
        self.row = row;
        if self.web.is_none() && is_web_protocol(&self.row.protocol) {
            self.web = Some(Box::default());
        }
        self.first = event;
        self.start_log = log;
        self.from_request = false;
    }
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
    /// Rows with an end, not printed yet (waiting behind an older open one), by session id.
    held: HashMap<String, u64>,
    /// Digests of the ids of sessions whose row is finished: every session with several logs,
    /// web sessions with one.
    finished: HashSet<u128>,
    /// With one log: digests of the last [`RECENT_FINISHED`] finished sessions, so that an end
    /// written again soon after (a `session.terminated` after its `session.end`) is not a
    /// second row.
    recent: VecDeque<u128>,
    recent_set: HashSet<u128>,
    folded: u64,
    /// `web.request` events that came after their session's row was finished.
    late: u64,
    /// `--object`: rows say whether a request of theirs touched it.
    object: Option<String>,
}

fn id_digest(id: &str) -> u128 {
    let d = digest::digest(&digest::SHA256, id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(b)
}

impl Joiner {
    fn new(merge: bool, object: Option<String>) -> Joiner {
        Joiner {
            merge,
            order: 0,
            open: HashMap::new(),
            pending: BTreeMap::new(),
            orphans: HashMap::new(),
            held: HashMap::new(),
            finished: HashSet::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            folded: 0,
            late: 0,
            object,
        }
    }

    /// A row got its end: hold it until it can be printed, and remember it is finished.
    fn finished(&mut self, id: &str, order: u64, web: bool) {
        self.held.insert(id.to_owned(), order);
        if self.merge || web {
            self.finished.insert(id_digest(id));
        } else {
            let d = id_digest(id);
            if self.recent_set.insert(d) {
                self.recent.push_back(d);
            }
            if self.recent.len() > RECENT_FINISHED {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
        }
    }

    /// Whether the session `id` already has a finished row.
    fn is_finished(&self, id: &str) -> bool {
        let d = id_digest(id);
        self.finished.contains(&d) || self.recent_set.contains(&d)
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
                // A row made from its requests (the start came later, by time, from another
                // replica; or after them in the log): it gets its start now.
                let made = self.open.get(&id).or_else(|| self.held.get(&id)).copied();
                if let Some(p) = made
                    .and_then(|o| self.pending.get_mut(&o))
                    .filter(|p| p.from_request)
                {
                    p.start(event, log);
                    return;
                }
                if self.merge {
                    if let Some((_, mut orphan)) = self.orphans.remove(&id) {
                        // Its end came first (by time, from another replica): join them now.
                        let order = self.next_order();
                        orphan.start(event, log);
                        if orphan.terminated && !orphan.ended {
                            // Its session.end is still to come.
                            orphan.done = false;
                            self.open.insert(id, order);
                        } else {
                            self.finished(&id, order, orphan.is_web());
                        }
                        self.pending.insert(order, orphan);
                        return;
                    }
                    if self.open.contains_key(&id) || self.finished.contains(&id_digest(&id)) {
                        self.folded += 1;
                        return;
                    }
                }
                let order = self.next_order();
                self.open.insert(id, order);
                let mut p = Pending::new(start_row(&event), event, false);
                p.start_log = log;
                self.pending.insert(order, p);
            }
            Some(kind @ (EventType::SessionEnd | EventType::SessionTerminated)) => {
                self.end(id, event, log, kind == EventType::SessionTerminated)
            }
            Some(EventType::WebRequest) => self.request(id, event),
            _ => {}
        }
    }

    /// A `session.end` or (`terminated`) a `session.terminated`. The gateway writes
    /// `session.terminated` when it withdraws access and `session.end` (bytes, duration) when
    /// the relay has stopped: one row, with the end's facts, which waits for the end.
    fn end(&mut self, id: String, event: Box<Event>, log: Option<NonZeroU16>, terminated: bool) {
        if let Some(&order) = self.open.get(&id) {
            if let Some(p) = self.pending.get_mut(&order) {
                if terminated && p.terminated {
                    // Withdrawn twice (a policy reload and a revocation): the first stands.
                    return;
                }
                let reason = p.row.close_reason.clone();
                end_row(&mut p.row, &event);
                if !terminated && p.terminated && event.close_reason.is_none() {
                    p.row.close_reason = reason;
                }
                p.end_log = log;
                if terminated {
                    p.terminated = true;
                    return;
                }
                p.ended = true;
                p.done = true;
                let web = p.is_web();
                self.open.remove(&id);
                self.finished(&id, order, web);
                return;
            }
        }
        if self.merge {
            if let Some((_, p)) = self.orphans.get_mut(&id) {
                if !terminated && p.terminated && !p.ended {
                    // Its end after its termination, both before its start.
                    end_row(&mut p.row, &event);
                    p.end_log = log;
                    p.ended = true;
                } else {
                    self.folded += 1;
                }
                return;
            }
        }
        if self.is_finished(&id) {
            self.folded += 1;
            return;
        }
        // The start is not in the log(s) read so far (an earlier, archived segment; or, with
        // several logs, perhaps still to come).
        let order = self.next_order();
        let mut row = start_row(&event);
        row.start.clear();
        end_row(&mut row, &event);
        let mut p = Pending::new(row, event, true);
        p.end_log = log;
        p.terminated = terminated;
        p.ended = !terminated;
        if self.merge {
            self.orphans.insert(id, (order, p));
        } else if terminated {
            // Its session.end is still to come.
            p.done = false;
            self.pending.insert(order, p);
            self.open.insert(id, order);
        } else {
            let web = p.is_web();
            self.pending.insert(order, p);
            self.finished(&id, order, web);
        }
    }

    /// A `web.request`: counted in its session's row.
    fn request(&mut self, id: String, event: Box<Event>) {
        let held = self.open.get(&id).or_else(|| self.held.get(&id)).copied();
        if let Some(p) = held.and_then(|o| self.pending.get_mut(&o)) {
            p.request(&event, self.object.as_deref());
            return;
        }
        if let Some((_, p)) = self.orphans.get_mut(&id) {
            p.request(&event, self.object.as_deref());
            return;
        }
        if self.finished.contains(&id_digest(&id)) {
            // After its row was printed (a request that ended after its session, or a
            // replica's clock ahead of the others'): nothing to add it to.
            self.late += 1;
            return;
        }
        // Its start is not in the log(s) read (so far): a row of its own, open until an end.
        let order = self.next_order();
        let mut row = start_row(&event);
        row.start.clear();
        let mut p = Pending::new(row, event, false);
        p.from_request = true;
        let first = p.first.clone();
        p.request(&first, self.object.as_deref());
        self.open.insert(id, order);
        self.pending.insert(order, p);
    }

    /// The next row that can be printed: finished, and no older one still open.
    fn ready(&mut self) -> Option<Pending> {
        if self.pending.first_key_value().is_some_and(|(_, p)| p.done) {
            let (_, p) = self.pending.pop_first()?;
            self.held.remove(&p.row.session_id);
            return Some(p);
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
    let merge = logs.is_merged();
    let replica_width = (logs.label_width() * 2 + 2).max("REPLICA".len());
    let look = Look {
        format,
        replica_width: merge.then_some(replica_width),
    };
    let out = std::cell::RefCell::new(out);
    each_session(
        logs,
        filter,
        bad,
        &mut || {
            let out = &mut *out.borrow_mut();
            match format {
                Format::Table => writeln!(out, "{}", table_header(look.replica_width))?,
                Format::Csv if merge => {
                    writeln!(out, "{},start_replica,end_replica", CSV_HEADER.join(","))?
                }
                Format::Csv => writeln!(out, "{}", CSV_HEADER.join(","))?,
                Format::Json | Format::Syslog => {}
            }
            Ok(())
        },
        &mut |c| print_row(&c, &look, &mut **out.borrow_mut()),
    )
}

/// One session's row as [`each_session`] hands it out, with the replica labels of the logs
/// holding its start and its end (empty when there is none).
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    pub row: SessionRow,
    pub start_replica: &'a str,
    pub end_replica: &'a str,
}

/// The sessions of `logs` (merged by time) that pass `filter` (applied to the session's start;
/// the type criterion is ignored; `--object` to its requests), one [`Connection`] each, in
/// order of start, handed to `f` as soon as they are finished. What `sessions` prints and
/// visits are made of. `begin` is called once every log is open, before the first row (a
/// header goes there: nothing is printed for logs that cannot be read).
pub fn each_session<'l>(
    logs: &'l LogSet,
    filter: &Filter,
    bad: &mut dyn FnMut(&AuditError),
    begin: &mut dyn FnMut() -> Result<(), ReportError>,
    f: &mut dyn FnMut(Connection<'l>) -> Result<(), ReportError>,
) -> Result<Summary, ReportError> {
    // Cheap test before parsing: only session events and web requests matter.
    let session: &[u8] = br#""type":"session."#;
    let request: &[u8] = br#""type":"web.request""#;
    let line_ok = |line: &RawLine<'_>| {
        !line.complete
            || memchr::memmem::find(line.bytes, session).is_some()
            || memchr::memmem::find(line.bytes, request).is_some()
    };
    let event_ok = |event: &Event| -> bool {
        event.session_id.is_some()
            && matches!(
                event.event_type(),
                Some(
                    EventType::SessionStart
                        | EventType::SessionEnd
                        | EventType::SessionTerminated
                        | EventType::WebRequest
                )
            )
    };
    // `--object` is asked of the session's requests, every other criterion of its start.
    let object = filter.object.clone();
    let filter = &Filter {
        object: None,
        ..filter.clone()
    };
    let mut merged: Merged<'_, Box<Event>> = Merged::open(
        logs,
        Want {
            needle: None,
            line: Box::new(line_ok),
            event: Box::new(event_ok),
        },
    )?;
    begin()?;
    let merge = logs.is_merged();
    let label = |log: Option<NonZeroU16>| -> &'l str {
        log.and_then(|i| logs.logs().get(usize::from(i.get()) - 1))
            .map_or("", |l| l.label.as_str())
    };
    let mut summary = Summary::default();
    let by_object = object.is_some();
    let mut joiner = Joiner::new(merge, object);
    let mut hand = |mut p: Pending, summary: &mut Summary| -> Result<(), ReportError> {
        if !filter.matches_except_type(&p.first) || (by_object && !p.touched) {
            return Ok(());
        }
        summary.matched += 1;
        if let Some(web) = &p.web {
            web.fill(&mut p.row);
        }
        f(Connection {
            start_replica: label(p.start_log),
            end_replica: label(p.end_log),
            row: p.row,
        })
    };
    while let Some(head) = merged.next_owned(bad)? {
        // At most MAX_LOGS logs, so the index always fits.
        let log = u16::try_from(head.log + 1).ok().and_then(NonZeroU16::new);
        joiner.event(head.payload, log);
        while let Some(p) = joiner.ready() {
            hand(p, &mut summary)?;
        }
    }
    summary.folded = joiner.folded;
    summary.late_requests = joiner.late;
    for p in joiner.finish() {
        hand(p, &mut summary)?;
    }
    summary.fill(merged.counts(logs));
    Ok(summary)
}

/// How rows are printed.
struct Look {
    format: Format,
    /// With several logs, the width of the table's replica column.
    replica_width: Option<usize>,
}

fn print_row(c: &Connection<'_>, look: &Look, out: &mut dyn Write) -> Result<(), ReportError> {
    let (start, end) = (c.start_replica, c.end_replica);
    match (look.format, look.replica_width) {
        (Format::Table, None) => writeln!(out, "{}", table_row(&c.row, None))?,
        (Format::Table, Some(width)) => writeln!(
            out,
            "{}",
            table_row(&c.row, Some((&replicas(start, end), width)))
        )?,
        (Format::Csv, None) => writeln!(out, "{}", csv_row(&c.row))?,
        (Format::Csv, Some(_)) => writeln!(
            out,
            "{},{},{}",
            csv_row(&c.row),
            csv_cell(start),
            csv_cell(end)
        )?,
        (Format::Json | Format::Syslog, None) => {
            writeln!(out, "{}", serde_json::to_string(&c.row).unwrap_or_default())?
        }
        (Format::Json | Format::Syslog, Some(_)) => {
            let row = ReplicaRow {
                row: &c.row,
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
        signin: e.signin.clone().unwrap_or_default(),
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
        protocol: e
            .endpoint
            .as_ref()
            .map(|x| x.protocol.clone())
            .unwrap_or_default(),
        ..SessionRow::default()
    }
}

/// What `end_row` put in `from` (a row made from its end or its requests), put in `row` (the
/// row made from the start found later).
fn end_row_from(row: &mut SessionRow, from: &SessionRow) {
    row.end = from.end.clone();
    row.bytes_up = from.bytes_up;
    row.bytes_down = from.bytes_down;
    row.close_reason = from.close_reason.clone();
    row.duration_ms = from.duration_ms.or_else(|| {
        let start = event_time(&row.start)?;
        let end = event_time(&row.end)?;
        end.duration_since(start).ok().map(|d| d.as_millis() as u64)
    });
    for (to, from) in [
        (&mut row.justification, &from.justification),
        (&mut row.user, &from.user),
        (&mut row.user_email, &from.user_email),
        (&mut row.signin, &from.signin),
    ] {
        if to.is_empty() {
            to.clone_from(from);
        }
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
    if row.signin.is_empty() {
        row.signin = e.signin.clone().unwrap_or_default();
    }
}

const CSV_HEADER: [&str; 21] = [
    "session_id",
    "user",
    "user_name",
    "user_email",
    "device",
    "endpoint",
    "site",
    "source",
    "start_utc",
    "end_utc",
    "duration_ms",
    "bytes_up",
    "bytes_down",
    "close_reason",
    "justification",
    "rule",
    "protocol",
    "requests",
    "requests_recorded",
    "sampled",
    "objects",
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
        utc_seconds(&r.start),
        utc_seconds(&r.end),
        num(r.duration_ms),
        num(r.bytes_up),
        num(r.bytes_down),
        r.close_reason.clone(),
        r.justification.clone(),
        r.rule.clone(),
        r.protocol.clone(),
        num(r.requests),
        num(r.requests_recorded),
        r.sampled.map(|n| n.to_string()).unwrap_or_default(),
        {
            let mut kinds: Vec<(&String, &u64)> = r.objects.iter().flatten().collect();
            kinds.sort_by_key(|(kind, _)| kind_rank(kind));
            kinds
                .iter()
                .map(|(kind, n)| format!("{kind}:{n}"))
                .collect::<Vec<_>>()
                .join(";")
        },
    ];
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// `2025-03-01T08:15:02.123456Z` → `2025-03-01 08:15:02Z` (seconds are enough in a table).
pub(crate) fn short_time(ts: &str) -> String {
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

const W_SESSION: usize = 37; // "sess-" and 32 hex digits, as the gateway makes them
const W_USER: usize = 24;
const W_DEVICE: usize = 16;
const W_ENDPOINT: usize = 26;
const W_TIME: usize = 20;
const W_DURATION: usize = 9;
const W_BYTES: usize = 10;
const W_CLOSE: usize = 16;
const W_WEB: usize = 36;

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
        "WEB",
        "JUSTIFICATION",
    )
}

/// Object kinds in the order a summary names them: the DICOM hierarchy, then the rest.
fn kind_rank(kind: &str) -> (u8, &str) {
    match kind {
        "patient" => (0, kind),
        "study" => (1, kind),
        "series" => (2, kind),
        "instance" => (3, kind),
        _ => (4, kind),
    }
}

/// `3 studies, 1 series`: distinct objects by kind (`10000+ studies` at the bound).
pub fn objects_summary(objects: &BTreeMap<String, u64>, capped: bool) -> String {
    let mut kinds: Vec<(&String, &u64)> = objects.iter().collect();
    kinds.sort_by_key(|(kind, _)| kind_rank(kind));
    kinds
        .iter()
        .map(|(kind, n)| {
            let more = if capped && **n >= MAX_OBJECTS_PER_KIND as u64 {
                "+"
            } else {
                ""
            };
            let name = match (kind.as_str(), **n) {
                (k, 1) => k.to_owned(),
                ("study", _) => "studies".to_owned(),
                ("series", _) => "series".to_owned(),
                (k, _) => format!("{k}s"),
            };
            format!("{n}{more} {name}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the table says of a web session's requests: `~120 requests (1 in 10 recorded), 3
/// studies`; `-` for a tunnel session.
pub fn web_summary(r: &SessionRow) -> String {
    let Some(requests) = r.requests else {
        return "-".to_owned();
    };
    let noun = if requests == 1 { "request" } else { "requests" };
    let mut text = match r.sampled {
        Some(n) if r.sampled_mixed => {
            format!("~{requests} {noun} (partly sampled, up to 1 in {n} recorded)")
        }
        Some(n) => format!("~{requests} {noun} (1 in {n} recorded)"),
        None => format!("{requests} {noun}"),
    };
    if let Some(objects) = r.objects.as_ref().filter(|o| !o.is_empty()) {
        text.push_str(", ");
        text.push_str(&objects_summary(objects, r.objects_capped));
    }
    text
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
        &one_line(&web_summary(r)),
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
    web: &str,
    justification: &str,
) -> String {
    let replica = match replica {
        Some((label, width)) => format!("{label:<width$} "),
        None => String::new(),
    };
    format!(
        "{session:<W_SESSION$} {user:<W_USER$} {device:<W_DEVICE$} {endpoint:<W_ENDPOINT$} {start:<W_TIME$} {end:<W_TIME$} {duration:>W_DURATION$} {up:>W_BYTES$} {down:>W_BYTES$} {close:<W_CLOSE$} {web:<W_WEB$} {replica}{justification}"
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
