//! `postern-audit access`: who opened this study, who viewed this patient? One row per session
//! that touched a clinical object (a DICOM study, series or instance, a patient or an accession
//! number), named in [`Event::objects`] (web requests) or in the DICOM record of a `dicom.*`
//! event (the query keys, the studies retrieved or stored): when it first and last touched it,
//! who (with the name and email of the session's `session.start`), from which device and
//! address, through which endpoint, how many requests, and for DICOM what was done (queries,
//! retrieves, stores, refusals, instances moved) under which calling AE title.
//!
//! Two passes over the log(s), each streaming: the first reads only the lines naming one of the
//! objects asked for (and the sampled requests, to say when the answer may be incomplete); the
//! second only the `session.start` lines of the sessions found. Memory grows with the number of
//! sessions found, not with the log.
//!
//! Objects are asked for by kind and identifier ([`ObjectQuery`]); each kind says what a valid
//! identifier is ([`ObjectKind::check`]), so a later kind (a patient id, an accession number,
//! written by DICOM-level events) is one more variant, not a new report.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::SystemTime;

use postern_proto::dicom::DicomRecord;
use serde::Serialize;

use crate::error::AuditError;
use crate::event::{Event, EventType, ObjectRef};
use crate::logset::{LogSet, Merged, Want};
use crate::reader::RawLine;
use crate::search::{csv_cell, event_time, one_line, utc_seconds, Format, ReportError, Summary};

/// The kinds of object `access` can be asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A DICOM study (Study Instance UID).
    Study,
    /// A DICOM series (Series Instance UID).
    Series,
    /// A DICOM instance (SOP Instance UID).
    Instance,
    /// A patient (Patient ID, as the PACS holds it).
    Patient,
    /// An imaging order (Accession Number).
    Accession,
}

/// The longest DICOM UID (PS3.5 §9.1).
pub const MAX_UID_LEN: usize = 64;

impl ObjectKind {
    /// Every kind, in the order of the DICOM hierarchy.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Study,
        ObjectKind::Series,
        ObjectKind::Instance,
        ObjectKind::Patient,
        ObjectKind::Accession,
    ];

    /// The `kind` of an [`ObjectRef`] of this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Study => "study",
            ObjectKind::Series => "series",
            ObjectKind::Instance => "instance",
            ObjectKind::Patient => "patient",
            ObjectKind::Accession => "accession",
        }
    }

    /// Whether `id` is a valid identifier of this kind; the error is one sentence.
    pub fn check(self, id: &str) -> Result<(), String> {
        match self {
            ObjectKind::Study | ObjectKind::Series | ObjectKind::Instance => {
                if is_dicom_uid(id) {
                    Ok(())
                } else {
                    Err(format!(
                        "{id:?} is not a DICOM UID: digits and dots, at most {MAX_UID_LEN} characters, e.g. 1.2.840.113619.2.55.3"
                    ))
                }
            }
            ObjectKind::Patient | ObjectKind::Accession => {
                let what = if self == ObjectKind::Patient {
                    "a Patient ID"
                } else {
                    "an Accession Number"
                };
                if id.trim().is_empty()
                    || id.chars().count() > MAX_ID_LEN
                    || id.chars().any(|c| c.is_control() || c == '\\')
                    || id.trim() != id
                {
                    Err(format!(
                        "{id:?} is not {what}: 1 to {MAX_ID_LEN} characters, no backslash, no control character, no leading or trailing space"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// The longest Patient ID or Accession Number `access` takes (what the connector keeps of a
/// DICOM value, `postern_proto::dicom::MAX_VALUE`).
pub const MAX_ID_LEN: usize = 64;

/// A DICOM UID as `access` accepts it: 1 to 64 characters, digits and dots, no empty
/// component (no leading, trailing or double dot).
pub fn is_dicom_uid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_UID_LEN
        && id.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && id.split('.').all(|c| !c.is_empty())
}

/// One object asked about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectQuery {
    pub kind: ObjectKind,
    pub id: String,
}

impl ObjectQuery {
    /// The object of `kind` with identifier `id`, if `id` is valid for the kind.
    pub fn new(kind: ObjectKind, id: &str) -> Result<ObjectQuery, String> {
        kind.check(id)?;
        Ok(ObjectQuery {
            kind,
            id: id.to_owned(),
        })
    }

    fn matches(&self, o: &ObjectRef) -> bool {
        o.kind == self.kind.as_str() && o.id == self.id
    }

    /// Whether a `dicom.*` record names this object: the query or retrieve keys, the studies,
    /// series and instances moved. Trailing spaces of DICOM values are not significant.
    fn matches_dicom(&self, d: &DicomRecord) -> bool {
        let list = |l: &[String]| l.iter().any(|v| v.trim_end() == self.id);
        let one = |v: &Option<String>| v.as_deref().is_some_and(|v| v.trim() == self.id);
        match self.kind {
            ObjectKind::Study => list(&d.study_uids),
            ObjectKind::Series => list(&d.series_uids),
            ObjectKind::Instance => list(&d.instance_uids),
            ObjectKind::Patient => one(&d.patient_id),
            ObjectKind::Accession => one(&d.accession),
        }
    }

    /// `study 1.2.3`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.as_str(), self.id)
    }
}

/// What `access` is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessQuery {
    /// The objects: a session is listed if it touched any of them.
    pub objects: Vec<ObjectQuery>,
    /// Only accesses at or after this time.
    pub since: Option<SystemTime>,
    /// Only accesses before this time.
    pub until: Option<SystemTime>,
}

/// One session that touched an object asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccessRow {
    pub session_id: String,
    /// `ts` of the first event of the session that touched it.
    pub first: String,
    /// `ts` of the last.
    pub last: String,
    /// IdP subject.
    pub user: String,
    pub user_name: String,
    pub user_email: String,
    /// Device name, else device id.
    pub device: String,
    /// Client address as the gateway saw it.
    pub source: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint site.
    pub site: String,
    /// Requests that touched it: an estimate when they were sampled (each sampled event
    /// counts for N).
    pub requests: u64,
    /// Events in the log that touched it.
    pub requests_recorded: u64,
    /// When some of them were sampled: the largest N of "1 in N recorded".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u32>,
    /// Which of the objects asked about it touched.
    pub objects: Vec<ObjectRef>,
    /// DICOM: calling AE titles the session used for those operations.
    pub calling_ae: Vec<String>,
    /// DICOM: C-FIND queries that named the object.
    pub queries: u64,
    /// DICOM: C-GET / C-MOVE retrieves of it.
    pub retrieves: u64,
    /// DICOM: C-STORE operations that sent it in.
    pub stores: u64,
    /// DICOM: instances retrieved or stored by those operations.
    pub instances: u64,
    /// Whether the log holds the session's `session.start` (else who and where come from the
    /// requests themselves, as far as they say).
    pub session_start_found: bool,
}

/// The answer of `access`.
#[derive(Debug, Clone, Default)]
pub struct AccessReport {
    /// One row per session, in order of first access.
    pub rows: Vec<AccessRow>,
    /// Endpoints whose requests in the period were sampled (`request_audit = "1/N"`), with the
    /// largest N: a session of theirs may have touched the object without a recorded event.
    pub sampled_endpoints: Vec<(String, u32)>,
    /// The first and the last `ts` of the log(s) read (what "the whole log" spans).
    pub log_span: Option<(String, String)>,
    /// Lines read and bad lines met (of the first pass).
    pub summary: Summary,
}

/// At most this many sampled endpoints are named in the note.
const MAX_SAMPLED_NAMED: usize = 32;

/// Reads `logs` and answers `query`. Bad lines are passed to `bad` (once each).
pub fn access_logs(
    logs: &LogSet,
    query: &AccessQuery,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<AccessReport, AuditError> {
    let needles: Vec<Vec<u8>> = query
        .objects
        .iter()
        // The id as the start of a JSON string: in `objects` ("id":"…") and in a DICOM
        // record ("patient_id":"…", "study_uids":["…"]) alike; open-ended, because a DICOM
        // value may keep its trailing space padding.
        .map(|o| {
            let quoted = serde_json::to_string(&o.id).unwrap_or_default();
            quoted
                .strip_suffix('"')
                .unwrap_or(&quoted)
                .as_bytes()
                .to_vec()
        })
        .collect();
    let sampled_needle: &[u8] = br#""sampled":"#;
    let span: RefCell<Option<(String, String)>> = RefCell::new(None);
    let in_time = |e: &Event| -> bool {
        if query.since.is_none() && query.until.is_none() {
            return true;
        }
        event_time(&e.ts).is_some_and(|t| {
            query.since.is_none_or(|s| t >= s) && query.until.is_none_or(|u| t < u)
        })
    };
    let line_ok = |line: &RawLine<'_>| {
        if !line.complete {
            return true;
        }
        if let Some(ts) = raw_ts(line.bytes) {
            let mut span = span.borrow_mut();
            match span.as_mut() {
                None => *span = Some((ts.to_owned(), ts.to_owned())),
                Some((lo, hi)) => {
                    if ts < lo.as_str() {
                        *lo = ts.to_owned();
                    }
                    if ts > hi.as_str() {
                        *hi = ts.to_owned();
                    }
                }
            }
        }
        needles
            .iter()
            .any(|n| memchr::memmem::find(line.bytes, n).is_some())
            || memchr::memmem::find(line.bytes, sampled_needle).is_some()
    };
    let mut merged: Merged<'_, Box<Event>> = Merged::open(
        logs,
        Want {
            needle: None,
            line: Box::new(line_ok),
            event: Box::new(|e: &Event| {
                (e.objects.is_some() || e.http.is_some() || e.dicom.is_some()) && in_time(e)
            }),
        },
    )?;
    let mut rows: Vec<AccessRow> = Vec::new();
    let mut by_session: HashMap<String, usize> = HashMap::new();
    let mut sampled: HashMap<String, u32> = HashMap::new();
    while let Some(head) = merged.next(bad)? {
        let e = &*head.payload;
        let n = e.http.as_ref().and_then(|h| h.sampled).filter(|n| *n > 1);
        if let Some(n) = n {
            if e.event_type() == Some(EventType::WebRequest) {
                let name = e
                    .endpoint
                    .as_ref()
                    .map_or_else(|| "(endpoint not named)".to_owned(), |x| x.name.clone());
                if sampled.len() < MAX_SAMPLED_NAMED || sampled.contains_key(&name) {
                    let max = sampled.entry(name).or_insert(n);
                    *max = (*max).max(n);
                }
            }
        }
        let mut touched: Vec<ObjectRef> = e
            .objects
            .iter()
            .flatten()
            .filter(|o| query.objects.iter().any(|q| q.matches(o)))
            .cloned()
            .collect();
        let dicom = e.dicom.as_ref().filter(|_| e.kind.starts_with("dicom."));
        if let Some(d) = dicom {
            for q in query.objects.iter().filter(|q| q.matches_dicom(d)) {
                let o = ObjectRef {
                    kind: q.kind.as_str().to_owned(),
                    id: q.id.clone(),
                };
                if !touched.contains(&o) {
                    touched.push(o);
                }
            }
        }
        if touched.is_empty() {
            continue;
        }
        let id = e.session_id.clone().unwrap_or_default();
        let i = *by_session.entry(id.clone()).or_insert_with(|| {
            rows.push(AccessRow {
                session_id: id,
                first: e.ts.clone(),
                last: e.ts.clone(),
                ..AccessRow::default()
            });
            rows.len() - 1
        });
        let row = &mut rows[i];
        if e.ts < row.first {
            row.first.clone_from(&e.ts);
        }
        if e.ts > row.last {
            row.last.clone_from(&e.ts);
        }
        row.requests_recorded += 1;
        row.requests += n.map_or(1, u64::from);
        if let Some(n) = n {
            row.sampled = Some(row.sampled.map_or(n, |m| m.max(n)));
        }
        for o in touched {
            if !row.objects.contains(&o) {
                row.objects.push(o);
            }
        }
        if let Some(d) = dicom {
            let ae = d.calling_ae.trim();
            if !ae.is_empty() && !row.calling_ae.iter().any(|a| a == ae) {
                row.calling_ae.push(ae.to_owned());
            }
            match e.event_type() {
                Some(EventType::DicomQuery) => row.queries += 1,
                Some(EventType::DicomRetrieve) => {
                    row.retrieves += 1;
                    row.instances += d.instances.unwrap_or(0);
                }
                Some(EventType::DicomStore) => {
                    row.stores += 1;
                    row.instances += d.instances.unwrap_or(0);
                }
                _ => {}
            }
        }
        // Until the start is found, what the event itself says.
        fill_identity(row, e, false);
    }
    let mut summary = Summary::default();
    summary.fill(merged.counts(logs));
    drop(merged);

    if !rows.is_empty() {
        // Second pass: the sessions' starts (wherever they are, whenever they started).
        let wanted = |e: &Event| {
            e.event_type() == Some(EventType::SessionStart)
                && e.session_id
                    .as_ref()
                    .is_some_and(|id| by_session.contains_key(id))
        };
        let mut starts: Merged<'_, Box<Event>> = Merged::open(
            logs,
            Want {
                needle: Some(br#""session.start""#.to_vec()),
                line: Box::new(|_| true),
                event: Box::new(wanted),
            },
        )?;
        // Bad lines were reported by the first pass.
        let mut quiet = |_: &AuditError| {};
        let mut updates = Vec::new();
        while let Some(head) = starts.next(&mut quiet)? {
            let e = &*head.payload;
            if let Some(&i) = e.session_id.as_ref().and_then(|id| by_session.get(id)) {
                updates.push((i, e.clone()));
            }
        }
        for (i, e) in updates {
            if !rows[i].session_start_found {
                fill_identity(&mut rows[i], &e, true);
                rows[i].session_start_found = true;
            }
        }
    }
    rows.sort_by(|a, b| (&a.first, &a.session_id).cmp(&(&b.first, &b.session_id)));
    let mut sampled_endpoints: Vec<(String, u32)> = sampled.into_iter().collect();
    sampled_endpoints.sort();
    summary.matched = rows.len() as u64;
    Ok(AccessReport {
        rows,
        sampled_endpoints,
        log_span: span.into_inner(),
        summary,
    })
}

/// The `ts` of a stored line, read from its bytes without parsing it (the writer puts `ts`
/// near the start: `{"v":1,"seq":N,"ts":"…"`).
fn raw_ts(line: &[u8]) -> Option<&str> {
    let head = &line[..line.len().min(96)];
    let at = memchr::memmem::find(head, br#""ts":""#)? + 6;
    let rest = &line[at..];
    let end = memchr::memchr(b'"', &rest[..rest.len().min(40)])?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Who and where, from `e`: a session's start (`authoritative`) replaces what its requests
/// said; a request only fills what is still empty.
fn fill_identity(row: &mut AccessRow, e: &Event, authoritative: bool) {
    let device = e
        .device
        .as_ref()
        .map(|d| d.name.clone().unwrap_or_else(|| d.id.clone()));
    let fields: [(&mut String, Option<String>); 7] = [
        (&mut row.user, e.user.clone()),
        (&mut row.user_name, e.user_name.clone()),
        (&mut row.user_email, e.user_email.clone()),
        (&mut row.device, device),
        (&mut row.source, e.source.clone()),
        (
            &mut row.endpoint,
            e.endpoint.as_ref().map(|x| x.name.clone()),
        ),
        (&mut row.site, e.endpoint.as_ref().map(|x| x.site.clone())),
    ];
    for (to, from) in fields {
        if let Some(v) = from.filter(|v| !v.is_empty()) {
            if authoritative || to.is_empty() {
                *to = v;
            }
        }
    }
}

/// Columns of `access --csv`, in order (times `2025-03-01 08:15:02`, UTC).
pub const CSV_COLUMNS: [&str; 19] = [
    "session_id",
    "first_utc",
    "last_utc",
    "user",
    "user_name",
    "user_email",
    "device",
    "source",
    "endpoint",
    "site",
    "requests",
    "requests_recorded",
    "sampled",
    "objects",
    "calling_ae",
    "queries",
    "retrieves",
    "stores",
    "instances",
];

fn csv_row(r: &AccessRow) -> String {
    let cells = [
        r.session_id.clone(),
        utc_seconds(&r.first),
        utc_seconds(&r.last),
        r.user.clone(),
        r.user_name.clone(),
        r.user_email.clone(),
        r.device.clone(),
        r.source.clone(),
        r.endpoint.clone(),
        r.site.clone(),
        r.requests.to_string(),
        r.requests_recorded.to_string(),
        r.sampled.map(|n| n.to_string()).unwrap_or_default(),
        r.objects
            .iter()
            .map(|o| format!("{}:{}", o.kind, o.id))
            .collect::<Vec<_>>()
            .join(";"),
        r.calling_ae.join(";"),
        r.queries.to_string(),
        r.retrieves.to_string(),
        r.stores.to_string(),
        r.instances.to_string(),
    ];
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// `Dr Ann Jones <ann.jones@nhs.example>`, or what there is of it.
fn who(r: &AccessRow) -> String {
    match (
        r.user_name.is_empty(),
        r.user_email.is_empty(),
        r.user.is_empty(),
    ) {
        (false, false, _) => format!("{} <{}>", r.user_name, r.user_email),
        (true, false, _) => r.user_email.clone(),
        (false, true, false) => format!("{} ({})", r.user_name, r.user),
        (false, true, true) => r.user_name.clone(),
        (true, true, false) => r.user.clone(),
        (true, true, true) => "-".to_owned(),
    }
}

/// What a session did over DICOM: `AE RAD_JONES: 1 query, 1 retrieve (3 instances)`.
fn dicom_cell(r: &AccessRow) -> String {
    let mut parts = Vec::new();
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    if r.queries > 0 {
        parts.push(plural(r.queries, "query", "queries"));
    }
    if r.retrieves > 0 {
        parts.push(plural(r.retrieves, "retrieve", "retrieves"));
    }
    if r.stores > 0 {
        parts.push(plural(r.stores, "store", "stores"));
    }
    if parts.is_empty() {
        return "-".to_owned();
    }
    let mut text = parts.join(", ");
    if r.instances > 0 {
        text.push_str(&format!(
            " ({})",
            plural(r.instances, "instance", "instances")
        ));
    }
    if !r.calling_ae.is_empty() {
        text = format!("AE {}: {text}", r.calling_ae.join("/"));
    }
    text
}

/// `12`, or `~120 (1 in 10 recorded)` when sampled.
fn requests_cell(r: &AccessRow) -> String {
    match r.sampled {
        Some(n) => format!("~{} (1 in {n} recorded)", r.requests),
        None => r.requests.to_string(),
    }
}

/// `2025-03-01T08:15:02.123456Z` → `2025-03-01 08:15:02Z`.
fn short_time(ts: &str) -> String {
    match (ts.get(..10), ts.get(11..19)) {
        (Some(date), Some(time)) if ts.len() >= 20 => format!("{date} {time}Z"),
        _ if ts.is_empty() => "-".to_owned(),
        _ => one_line(ts),
    }
}

/// The table: widths measured from the rows (the report is held, not streamed). With several
/// objects asked about, an `OBJECTS` column says which each session touched; when a session
/// touched them over DICOM, a `DICOM` column says what it did.
fn table(report: &AccessReport, several: bool) -> Vec<String> {
    let dicom = report
        .rows
        .iter()
        .any(|r| r.queries + r.retrieves + r.stores > 0);
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            one_line(s)
        }
    };
    let mut lines: Vec<Vec<String>> = vec![[
        "FIRST", "LAST", "USER", "DEVICE", "SOURCE", "ENDPOINT", "SESSION", "REQUESTS",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()];
    if dicom {
        lines[0].push("DICOM".to_owned());
    }
    if several {
        lines[0].push("OBJECTS".to_owned());
    }
    for r in &report.rows {
        let endpoint = match (r.endpoint.is_empty(), r.site.is_empty()) {
            (true, _) => "-".to_owned(),
            (false, true) => one_line(&r.endpoint),
            (false, false) => one_line(&format!("{}@{}", r.endpoint, r.site)),
        };
        let mut cells = vec![
            short_time(&r.first),
            short_time(&r.last),
            one_line(&who(r)),
            dash(&r.device),
            dash(&r.source),
            endpoint,
            dash(&r.session_id),
            requests_cell(r),
        ];
        if dicom {
            cells.push(one_line(&dicom_cell(r)));
        }
        if several {
            cells.push(one_line(
                &r.objects
                    .iter()
                    .map(|o| format!("{} {}", o.kind, o.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        lines.push(cells);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|l| {
            let mut text = String::new();
            for (c, cell) in l.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                // REQUESTS is a number: right-aligned, unless it is the last column.
                if c == 7 && c + 1 < columns {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    if c + 1 < columns {
                        text.push_str(&" ".repeat(pad));
                    }
                }
                if c + 1 < columns {
                    text.push_str("  ");
                }
            }
            text.trim_end().to_owned()
        })
        .collect()
}

/// `study 1.2.3`, `study 1.2.3 or series 4.5.6`.
pub fn describe_objects(objects: &[ObjectQuery]) -> String {
    objects
        .iter()
        .map(ObjectQuery::describe)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// What an empty answer says: `no access to study 1.2.3 recorded between 2025-03-01T00:00:00Z
/// and 2025-04-01T00:00:00Z` (the times asked for, else the span of the log read).
pub fn nothing_found(query: &AccessQuery, report: &AccessReport) -> String {
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let log_time = |ts: &str| match ts.get(..19) {
        Some(s) if ts.len() >= 20 => format!("{s}Z"),
        _ => one_line(ts),
    };
    let (from, to) = report
        .log_span
        .as_ref()
        .map(|(a, b)| (log_time(a), log_time(b)))
        .unzip();
    let when = match (query.since.map(at).or(from), query.until.map(at).or(to)) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("since {a}"),
        (None, Some(b)) => format!("before {b}"),
        (None, None) => "in the log(s) read: they hold no events".to_owned(),
    };
    format!(
        "no access to {} recorded {when}",
        describe_objects(&query.objects)
    )
}

/// A note for when requests were sampled: the answer may miss sessions.
pub fn sampling_note(query: &AccessQuery, report: &AccessReport) -> Option<String> {
    if report.sampled_endpoints.is_empty() {
        return None;
    }
    let list = report
        .sampled_endpoints
        .iter()
        .map(|(name, n)| format!("{name} (1 in {n})"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "requests to {list} were sampled in this period (request_audit = \"1/N\"): only about 1 in N of them is recorded, so a session may have opened {} without a recorded request",
        describe_objects(&query.objects)
    ))
}

/// Prints `report` in `format` (`Syslog` prints JSON). Nothing found: the table format prints
/// [`nothing_found`]; CSV prints its header and JSON nothing (the caller says it on stderr).
pub fn print_access(
    query: &AccessQuery,
    report: &AccessReport,
    format: Format,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Table if report.rows.is_empty() => {
            writeln!(out, "{}", nothing_found(query, report))?;
        }
        Format::Table => {
            for line in table(report, query.objects.len() > 1) {
                writeln!(out, "{line}")?;
            }
        }
        Format::Csv => {
            writeln!(out, "{}", CSV_COLUMNS.join(","))?;
            for r in &report.rows {
                writeln!(out, "{}", csv_row(r))?;
            }
        }
        Format::Json | Format::Syslog => {
            for r in &report.rows {
                writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
            }
        }
    }
    Ok(())
}

/// [`access_logs`] and [`print_access`] together, as the other reports run.
pub fn access(
    logs: &LogSet,
    query: &AccessQuery,
    format: Format,
    out: &mut dyn Write,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<AccessReport, ReportError> {
    let report = access_logs(logs, query, bad)?;
    print_access(query, &report, format, out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_digits_and_dots_at_most_64() {
        for ok in ["1.2.3", "1", "1.2.840.10008.5.1.4.1.1.2", &"1".repeat(64)] {
            assert!(is_dicom_uid(ok), "{ok}");
            assert!(ObjectKind::Study.check(ok).is_ok());
        }
        for bad in [
            "",
            "1.2.a",
            "1..2",
            ".1.2",
            "1.2.",
            "1.2.3 ",
            "1,2",
            "../../etc",
            &"1".repeat(65),
        ] {
            assert!(!is_dicom_uid(bad), "{bad}");
            let err = ObjectQuery::new(ObjectKind::Series, bad).unwrap_err();
            assert!(err.contains("not a DICOM UID"), "{err}");
        }
    }

    #[test]
    fn raw_ts_reads_the_time_without_parsing() {
        assert_eq!(
            raw_ts(br#"{"v":1,"seq":7,"ts":"2025-03-01T08:15:02.123456Z","type":"x"}"#),
            Some("2025-03-01T08:15:02.123456Z")
        );
        assert_eq!(raw_ts(br#"{"v":1}"#), None);
        assert_eq!(raw_ts(br#"{"ts":"unterminated"#), None);
    }
}
