//! `postern-audit report`: summaries an auditor hands on — everything one person did
//! (`--user`), or every break-glass access (`--break-glass`) — in a period, as text, CSV or a
//! self-contained HTML page to open and print.
//!
//! Both are made of visits ([`crate::visits`]): the break-glass report lists every visit with a
//! justification; the per-user report the person's sign-ins (`auth.login`), visits by endpoint,
//! data moved, refused attempts (`session.denied`, `auth.failed`, and the gateway's aggregated
//! refusals of a signed token it named the user of: expired, signed out) with their reasons, the
//! devices used and the break-glass uses. A `--user` that matches several people (a part of a
//! display name) gives one part per person (by IdP subject).
//!
//! The log does not record whether anyone reviewed a break-glass access; the report lists them
//! for review.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::time::SystemTime;

use crate::error::AuditError;
use crate::event::{Event, EventType};
use crate::logset::LogSet;
use crate::search::{csv_cell, one_line, utc_seconds, Filter, Matches, ReportError, Summary};
use crate::sessions::{human_bytes, human_duration};
use crate::visits::{each_visit, source_address, who, VisitRow};

/// What `report` is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportQuery {
    /// Everything one person did: as `--user` of `search` (subject or email in any case, or a
    /// part of the display name).
    pub user: Option<String>,
    /// Every break-glass access (with `user`: that person's only).
    pub break_glass: bool,
    /// Only what started at or after this time.
    pub since: Option<SystemTime>,
    /// Only what started before this time.
    pub until: Option<SystemTime>,
}

impl ReportQuery {
    fn filter(&self) -> Filter {
        Filter {
            user: self.user.clone(),
            since: self.since,
            until: self.until,
            ..Filter::default()
        }
    }
}

/// A sign-in (`auth.login`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignIn {
    pub ts: String,
    pub device: String,
    /// Client address, without the port.
    pub source: String,
}

/// Refused attempts of one kind: to one endpoint (or the sign-in itself), for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// `endpoint@site`, or `(sign-in)` for a failed sign-in.
    pub endpoint: String,
    pub reason: String,
    pub count: u64,
    pub first: String,
    pub last: String,
}

/// Everything one person did in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserReport {
    /// IdP subject (else the email, for events without one).
    pub user: String,
    /// Display names and emails the log gives for them.
    pub names: Vec<String>,
    pub emails: Vec<String>,
    pub sign_ins: Vec<SignIn>,
    pub visits: Vec<VisitRow>,
    pub refusals: Vec<Refusals>,
}

impl UserReport {
    /// `Dr Ann Jones <ann.jones@nhs.example>`.
    pub fn who(&self) -> String {
        who(
            &self.user,
            self.names.first().map_or("", String::as_str),
            self.emails.first().map_or("", String::as_str),
        )
    }

    /// Devices used (in visits or sign-ins): name, visits, sign-ins, first and last time seen.
    pub fn devices(&self) -> Vec<(String, u64, u64, String, String)> {
        let mut by: BTreeMap<String, (u64, u64, String, String)> = BTreeMap::new();
        let mut seen = |device: &str, ts: &str, visit: bool| {
            if device.is_empty() {
                return;
            }
            let e = by.entry(device.to_owned()).or_default();
            if visit {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
            if !ts.is_empty() && (e.2.is_empty() || ts < e.2.as_str()) {
                e.2 = ts.to_owned();
            }
            if ts > e.3.as_str() {
                e.3 = ts.to_owned();
            }
        };
        for v in &self.visits {
            seen(&v.device, &v.start, true);
        }
        for s in &self.sign_ins {
            seen(&s.device, &s.ts, false);
        }
        by.into_iter()
            .map(|(d, (v, s, a, b))| (d, v, s, a, b))
            .collect()
    }
}

/// What `report` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub query: ReportQuery,
    /// `--user`: one per person matched, by subject.
    pub users: Vec<UserReport>,
    /// `--break-glass`: every break-glass visit, in order of start.
    pub break_glass: Vec<VisitRow>,
    /// What was read (of the sessions pass).
    pub summary: Summary,
}

/// Reads `logs` and answers `query`. Bad lines are passed to `bad`.
pub fn build(
    logs: &LogSet,
    query: &ReportQuery,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Report, ReportError> {
    let filter = query.filter();
    let mut visits = Vec::new();
    let break_glass = query.break_glass;
    let keep = move |r: &crate::sessions::SessionRow| !break_glass || !r.justification.is_empty();
    let summary = each_visit(logs, &filter, &keep, bad, &mut || Ok(()), &mut |v| {
        visits.push(v);
        Ok(())
    })?;
    let mut report = Report {
        query: query.clone(),
        summary,
        ..Report::default()
    };
    if query.user.is_none() {
        report.break_glass = visits;
        return Ok(report);
    }
    let mut users: BTreeMap<String, UserReport> = BTreeMap::new();
    let key = |user: &str, email: &str| {
        if user.is_empty() {
            email.to_lowercase()
        } else {
            user.to_lowercase()
        }
    };
    for v in visits {
        let u = users.entry(key(&v.user, &v.user_email)).or_default();
        note_identity(u, &v.user, &v.user_name, &v.user_email);
        u.visits.push(v);
    }
    // Sign-ins and refusals (bad lines were reported by the first pass).
    let mut matches = Matches::open(logs, &filter)?;
    let mut quiet = |_: &AuditError| {};
    let mut refusals: BTreeMap<(String, String, String), Refusals> = BTreeMap::new();
    while let Some((_, entry)) = matches.next(&mut quiet)? {
        let e = &entry.event;
        let kind = e.event_type();
        let named_refusal =
            kind == Some(EventType::AccessRefusedUnauthenticated) && e.user.is_some();
        if !named_refusal
            && !matches!(
                kind,
                Some(EventType::AuthLogin | EventType::AuthFailed | EventType::SessionDenied)
            )
        {
            continue;
        }
        let (user, name, email) = (
            e.user.as_deref().unwrap_or_default(),
            e.user_name.as_deref().unwrap_or_default(),
            e.user_email.as_deref().unwrap_or_default(),
        );
        let k = key(user, email);
        let u = users.entry(k.clone()).or_default();
        note_identity(u, user, name, email);
        match kind {
            Some(EventType::AuthLogin) => u.sign_ins.push(SignIn {
                ts: e.ts.clone(),
                device: device_of(e),
                source: e.source.as_deref().map(source_address).unwrap_or_default(),
            }),
            _ => {
                let endpoint = match &e.endpoint {
                    Some(ep) if ep.site.is_empty() => ep.name.clone(),
                    Some(ep) => format!("{}@{}", ep.name, ep.site),
                    None if kind == Some(EventType::AuthFailed) => "(sign-in)".to_owned(),
                    None if named_refusal => "(any: token refused)".to_owned(),
                    None => "-".to_owned(),
                };
                let reason = e
                    .decision
                    .as_ref()
                    .map(|d| d.reason.clone())
                    .filter(|r| !r.is_empty())
                    .or_else(|| e.detail.clone())
                    .unwrap_or_default();
                let r = refusals
                    .entry((k, endpoint.clone(), reason.clone()))
                    .or_insert_with(|| Refusals {
                        endpoint,
                        reason,
                        first: e.ts.clone(),
                        ..Refusals::default()
                    });
                // An aggregated refusal stands for `count` requests.
                r.count += e.refused.as_ref().map_or(1, |f| f.count.max(1));
                if e.ts < r.first {
                    r.first.clone_from(&e.ts);
                }
                if e.ts > r.last {
                    r.last.clone_from(&e.ts);
                }
            }
        }
    }
    for ((k, _, _), r) in refusals {
        users.entry(k).or_default().refusals.push(r);
    }
    report.users = users.into_values().collect();
    report
        .users
        .sort_by_key(|u| (u.who().to_lowercase(), u.user.clone()));
    Ok(report)
}

fn note_identity(u: &mut UserReport, user: &str, name: &str, email: &str) {
    if u.user.is_empty() && !user.is_empty() {
        user.clone_into(&mut u.user);
    }
    if u.user.is_empty() && !email.is_empty() {
        email.clone_into(&mut u.user);
    }
    for (list, v) in [(&mut u.names, name), (&mut u.emails, email)] {
        if !v.is_empty() && !list.iter().any(|x| x == v) {
            list.push(v.to_owned());
        }
    }
}

fn device_of(e: &Event) -> String {
    e.device
        .as_ref()
        .map(|d| d.name.clone().unwrap_or_else(|| d.id.clone()))
        .unwrap_or_default()
}

// --- the document: one model, printed as text or HTML --------------------------------------

struct Table {
    header: Vec<&'static str>,
    /// Columns aligned right (numbers).
    right: Vec<usize>,
    rows: Vec<Vec<String>>,
    /// What is said instead of an empty table.
    empty: &'static str,
}

struct Section {
    heading: String,
    table: Table,
}

struct Part {
    heading: Option<String>,
    facts: Vec<(&'static str, String)>,
    sections: Vec<Section>,
}

struct Doc {
    title: String,
    facts: Vec<(&'static str, String)>,
    parts: Vec<Part>,
}

/// A time of the log in a report: `2025-03-01 08:15:02` (UTC), or `-`.
fn t(ts: &str) -> String {
    if ts.is_empty() {
        "-".to_owned()
    } else {
        utc_seconds(ts)
    }
}

fn at(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// `2025-03-01 00:00:00 to 2025-04-01 00:00:00 UTC`, or what is known of it.
pub fn period(query: &ReportQuery) -> String {
    match (query.since, query.until) {
        (Some(a), Some(b)) => format!("{} to {} UTC", at(a), at(b)),
        (Some(a), None) => format!("from {} UTC", at(a)),
        (None, Some(b)) => format!("before {} UTC", at(b)),
        (None, None) => "the whole log".to_owned(),
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn endpoint_at(v: &VisitRow) -> String {
    match (v.endpoint.is_empty(), v.site.is_empty()) {
        (true, _) => "-".to_owned(),
        (false, true) => v.endpoint.clone(),
        (false, false) => format!("{}@{}", v.endpoint, v.site),
    }
}

fn total(visits: &[VisitRow], f: impl Fn(&VisitRow) -> Option<u64>) -> Option<u64> {
    visits
        .iter()
        .filter_map(f)
        .reduce(|a, b| a.saturating_add(b))
}

fn break_glass_table(visits: &[&VisitRow], with_who: bool) -> Table {
    let mut header = vec!["START (UTC)", "END (UTC)", "DURATION"];
    if with_who {
        header.push("WHO");
    }
    header.extend([
        "ENDPOINT",
        "DEVICE",
        "SOURCE",
        "CONN",
        "UP",
        "DOWN",
        "JUSTIFICATION",
    ]);
    let first_number = header.len() - 4;
    Table {
        right: vec![2, first_number, first_number + 1, first_number + 2],
        header,
        rows: visits
            .iter()
            .map(|v| {
                let mut row = vec![t(&v.start), t(&v.end), human_duration(v.duration_ms)];
                if with_who {
                    row.push(v.who());
                }
                row.extend([
                    endpoint_at(v),
                    dash(&v.device),
                    dash(&v.source),
                    v.connections.to_string(),
                    human_bytes(v.bytes_up),
                    human_bytes(v.bytes_down),
                    v.justification.clone(),
                ]);
                row
            })
            .collect(),
        empty: "none",
    }
}

fn doc(report: &Report, generated: SystemTime, source: &str) -> Doc {
    let q = &report.query;
    let period = period(q);
    let mut facts = vec![
        ("Period", period.clone()),
        ("Generated", format!("{} UTC", at(generated))),
    ];
    if !source.is_empty() {
        facts.push(("Audit log", source.to_owned()));
    }
    let Some(user) = &q.user else {
        let visits: Vec<&VisitRow> = report.break_glass.iter().collect();
        let people: BTreeSet<String> = visits.iter().map(|v| v.user.to_lowercase()).collect();
        facts.push((
            "Found",
            format!(
                "{} break-glass visit(s) by {} person(s), {} connection(s)",
                visits.len(),
                people.len(),
                visits.iter().map(|v| v.connections).sum::<u64>()
            ),
        ));
        facts.push((
            "Review",
            "the log does not record reviews: record the outcome of each review outside Postern"
                .to_owned(),
        ));
        return Doc {
            title: format!("Break-glass access, {period}"),
            facts,
            parts: vec![Part {
                heading: None,
                facts: Vec::new(),
                sections: vec![Section {
                    heading: "Break-glass visits".to_owned(),
                    table: break_glass_table(&visits, true),
                }],
            }],
        };
    };
    facts.push(("Asked for", format!("--user {}", one_line(user))));
    if report.users.is_empty() {
        facts.push(("Found", "nothing recorded for this user".to_owned()));
    } else if report.users.len() > 1 {
        facts.push((
            "Found",
            format!("{} people match; one part each", report.users.len()),
        ));
    }
    let parts = report.users.iter().map(user_part).collect();
    Doc {
        title: format!("Access report for {}, {period}", one_line(user)),
        facts,
        parts,
    }
}

fn user_part(u: &UserReport) -> Part {
    let endpoints: BTreeSet<String> = u.visits.iter().map(endpoint_at).collect();
    let devices = u.devices();
    let break_glass: Vec<&VisitRow> = u.visits.iter().filter(|v| v.is_break_glass()).collect();
    let mut facts = vec![("Subject", dash(&u.user))];
    if u.names.len() > 1 {
        facts.push(("Names", u.names.join(", ")));
    }
    if u.emails.len() > 1 {
        facts.push(("Emails", u.emails.join(", ")));
    }
    facts.extend([
        ("Sign-ins", u.sign_ins.len().to_string()),
        (
            "Visits",
            format!(
                "{} ({} connection(s)) to {} endpoint(s)",
                u.visits.len(),
                u.visits.iter().map(|v| v.connections).sum::<u64>(),
                endpoints.len()
            ),
        ),
        (
            "Data",
            format!(
                "{} up, {} down",
                human_bytes(total(&u.visits, |v| v.bytes_up)),
                human_bytes(total(&u.visits, |v| v.bytes_down))
            ),
        ),
        (
            "Refused attempts",
            u.refusals.iter().map(|r| r.count).sum::<u64>().to_string(),
        ),
        (
            "Devices",
            if devices.is_empty() {
                "-".to_owned()
            } else {
                devices
                    .iter()
                    .map(|d| d.0.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("Break-glass uses", break_glass.len().to_string()),
    ]);
    let by_endpoint = {
        let mut by: BTreeMap<String, Vec<&VisitRow>> = BTreeMap::new();
        for v in &u.visits {
            by.entry(endpoint_at(v)).or_default().push(v);
        }
        Table {
            header: vec![
                "ENDPOINT",
                "VISITS",
                "CONNECTIONS",
                "UP",
                "DOWN",
                "FIRST (UTC)",
                "LAST (UTC)",
            ],
            right: vec![1, 2, 3, 4],
            rows: by
                .into_iter()
                .map(|(ep, vs)| {
                    let first = vs
                        .iter()
                        .map(|v| v.start.as_str())
                        .filter(|s| !s.is_empty())
                        .min();
                    let last = vs
                        .iter()
                        .map(|v| if v.end.is_empty() { &v.start } else { &v.end })
                        .max();
                    let owned: Vec<VisitRow> = vs.iter().map(|v| (*v).clone()).collect();
                    vec![
                        ep,
                        vs.len().to_string(),
                        vs.iter().map(|v| v.connections).sum::<u64>().to_string(),
                        human_bytes(total(&owned, |v| v.bytes_up)),
                        human_bytes(total(&owned, |v| v.bytes_down)),
                        t(first.unwrap_or_default()),
                        t(last.map_or("", String::as_str)),
                    ]
                })
                .collect(),
            empty: "none",
        }
    };
    let visits = Table {
        header: vec![
            "START (UTC)",
            "END (UTC)",
            "DURATION",
            "ENDPOINT",
            "DEVICE",
            "SOURCE",
            "CONN",
            "UP",
            "DOWN",
            "CLOSE",
            "JUSTIFICATION",
        ],
        right: vec![2, 6, 7, 8],
        rows: u
            .visits
            .iter()
            .map(|v| {
                vec![
                    t(&v.start),
                    t(&v.end),
                    human_duration(v.duration_ms),
                    endpoint_at(v),
                    dash(&v.device),
                    dash(&v.source),
                    v.connections.to_string(),
                    human_bytes(v.bytes_up),
                    human_bytes(v.bytes_down),
                    dash(&v.close_reason),
                    dash(&v.justification),
                ]
            })
            .collect(),
        empty: "none",
    };
    let sign_ins = Table {
        header: vec!["TIME (UTC)", "DEVICE", "SOURCE"],
        right: vec![],
        rows: u
            .sign_ins
            .iter()
            .map(|s| vec![t(&s.ts), dash(&s.device), dash(&s.source)])
            .collect(),
        empty: "none",
    };
    let refused = Table {
        header: vec!["ENDPOINT", "REASON", "COUNT", "FIRST (UTC)", "LAST (UTC)"],
        right: vec![2],
        rows: u
            .refusals
            .iter()
            .map(|r| {
                vec![
                    r.endpoint.clone(),
                    dash(&r.reason),
                    r.count.to_string(),
                    t(&r.first),
                    t(&r.last),
                ]
            })
            .collect(),
        empty: "none",
    };
    let devices = Table {
        header: vec!["DEVICE", "VISITS", "SIGN-INS", "FIRST (UTC)", "LAST (UTC)"],
        right: vec![1, 2],
        rows: devices
            .into_iter()
            .map(|(d, v, s, a, b)| vec![d, v.to_string(), s.to_string(), t(&a), t(&b)])
            .collect(),
        empty: "none",
    };
    Part {
        heading: Some(u.who()),
        facts,
        sections: vec![
            Section {
                heading: "Visits by endpoint".to_owned(),
                table: by_endpoint,
            },
            Section {
                heading: "Visits".to_owned(),
                table: visits,
            },
            Section {
                heading: "Sign-ins".to_owned(),
                table: sign_ins,
            },
            Section {
                heading: "Refused attempts".to_owned(),
                table: refused,
            },
            Section {
                heading: "Devices".to_owned(),
                table: devices,
            },
            Section {
                heading: "Break-glass uses".to_owned(),
                table: break_glass_table(&break_glass, false),
            },
        ],
    }
}

fn text_table(table: &Table, indent: &str) -> Vec<String> {
    if table.rows.is_empty() {
        return vec![format!("{indent}{}", table.empty)];
    }
    let rows: Vec<Vec<String>> = std::iter::once(
        table
            .header
            .iter()
            .map(|h| (*h).to_owned())
            .collect::<Vec<_>>(),
    )
    .chain(
        table
            .rows
            .iter()
            .map(|r| r.iter().map(|c| one_line(c)).collect()),
    )
    .collect();
    let columns = table.header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = indent.to_owned();
            for (c, cell) in r.iter().enumerate() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                let last = c + 1 == columns;
                if table.right.contains(&c) && !last {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    line.push_str("  ");
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn text_facts(facts: &[(&str, String)], indent: &str, out: &mut dyn Write) -> io::Result<()> {
    let width = facts.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (k, v) in facts {
        writeln!(out, "{indent}{:<width$} {}", format!("{k}:"), one_line(v))?;
    }
    Ok(())
}

/// Prints `report` as text (what `report` prints by default).
pub fn write_text(
    report: &Report,
    generated: SystemTime,
    source: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let d = doc(report, generated, source);
    writeln!(out, "{}", d.title)?;
    writeln!(out, "{}", "=".repeat(d.title.chars().count()))?;
    text_facts(&d.facts, "", out)?;
    for part in &d.parts {
        let indent = if let Some(h) = &part.heading {
            writeln!(out)?;
            writeln!(out, "{}", one_line(h))?;
            writeln!(out, "{}", "-".repeat(one_line(h).chars().count()))?;
            text_facts(&part.facts, "", out)?;
            "  "
        } else {
            ""
        };
        for s in &part.sections {
            writeln!(out)?;
            writeln!(out, "{}", s.heading)?;
            for line in text_table(&s.table, indent) {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped, control characters (but none of the
/// others) replaced by spaces.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font:13px/1.4 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:2em;color:#000;background:#fff}
h1{font-size:1.5em;margin:0 0 .5em}h2{font-size:1.25em;margin:1.5em 0 .3em;border-bottom:2px solid #333}
h3{font-size:1.05em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 1em}
th,td{border:1px solid #999;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#e8e8e8}td.n{text-align:right;white-space:nowrap}td{overflow-wrap:anywhere}
table.facts th,table.facts td{border:none;background:none;padding:.1em .8em .1em 0}
p.none{color:#555;font-style:italic;margin:.2em 0 1em}
@page{size:A4 landscape;margin:12mm}
@media print{body{margin:0;font-size:9pt}h2{break-after:avoid}h3{break-after:avoid}tr{break-inside:avoid}thead{display:table-header-group}th{background:#eee;-webkit-print-color-adjust:exact;print-color-adjust:exact}}
";

fn html_facts(facts: &[(&str, String)], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "<table class=\"facts\">")?;
    for (k, v) in facts {
        writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(v)
        )?;
    }
    writeln!(out, "</table>")
}

fn html_table(table: &Table, out: &mut dyn Write) -> io::Result<()> {
    if table.rows.is_empty() {
        return writeln!(out, "<p class=\"none\">{}</p>", html_escape(table.empty));
    }
    write!(out, "<table><thead><tr>")?;
    for h in &table.header {
        write!(out, "<th scope=\"col\">{}</th>", html_escape(h))?;
    }
    writeln!(out, "</tr></thead><tbody>")?;
    for row in &table.rows {
        write!(out, "<tr>")?;
        for (c, cell) in row.iter().enumerate() {
            if table.right.contains(&c) {
                write!(out, "<td class=\"n\">{}</td>", html_escape(cell))?;
            } else {
                write!(out, "<td>{}</td>", html_escape(cell))?;
            }
        }
        writeln!(out, "</tr>")?;
    }
    writeln!(out, "</tbody></table>")
}

/// Prints `report` as one self-contained HTML page: no external assets and no script (a
/// Content-Security-Policy forbids both), every text from the log escaped, a print
/// stylesheet (A4 landscape, table headers repeated on every page).
pub fn write_html(
    report: &Report,
    generated: SystemTime,
    source: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let d = doc(report, generated, source);
    writeln!(out, "<!DOCTYPE html>")?;
    writeln!(out, "<html lang=\"en\">")?;
    writeln!(out, "<head>")?;
    writeln!(out, "<meta charset=\"utf-8\">")?;
    writeln!(
        out,
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
    )?;
    writeln!(out, "<meta name=\"generator\" content=\"postern-audit\">")?;
    writeln!(
        out,
        "<title>{} (generated {} UTC)</title>",
        html_escape(&d.title),
        html_escape(&at(generated))
    )?;
    writeln!(out, "<style>\n{STYLE}</style>")?;
    writeln!(out, "</head>")?;
    writeln!(out, "<body>")?;
    writeln!(out, "<h1>{}</h1>", html_escape(&d.title))?;
    html_facts(&d.facts, out)?;
    for part in &d.parts {
        if let Some(h) = &part.heading {
            writeln!(out, "<h2>{}</h2>", html_escape(h))?;
            html_facts(&part.facts, out)?;
        }
        for s in &part.sections {
            writeln!(out, "<h3>{}</h3>", html_escape(&s.heading))?;
            html_table(&s.table, out)?;
        }
    }
    writeln!(out, "</body>")?;
    writeln!(out, "</html>")
}

/// Columns of `report --break-glass --csv`.
pub const BREAK_GLASS_CSV_COLUMNS: [&str; 17] = [
    "user",
    "user_name",
    "user_email",
    "start_utc",
    "end_utc",
    "duration_ms",
    "endpoint",
    "site",
    "device",
    "source",
    "connections",
    "bytes_up",
    "bytes_down",
    "rule",
    "close_reason",
    "justification",
    "sessions",
];

/// Columns of `report --user U --csv`: one row per sign-in, visit or kind of refused attempt,
/// `record` saying which (`sign_in`, `visit`, `refused`).
pub const USER_CSV_COLUMNS: [&str; 19] = [
    "record",
    "user",
    "user_name",
    "user_email",
    "start_utc",
    "end_utc",
    "duration_ms",
    "endpoint",
    "site",
    "device",
    "source",
    "connections",
    "bytes_up",
    "bytes_down",
    "close_reason",
    "justification",
    "reason",
    "count",
    "sessions",
];

fn csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",")
}

fn num(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

/// Prints `report` as CSV (times `2025-03-01 08:15:02`, UTC, as the headers say).
pub fn write_csv(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    if report.query.user.is_none() {
        writeln!(out, "{}", BREAK_GLASS_CSV_COLUMNS.join(","))?;
        for v in &report.break_glass {
            writeln!(
                out,
                "{}",
                csv_line(&[
                    v.user.clone(),
                    v.user_name.clone(),
                    v.user_email.clone(),
                    utc_seconds(&v.start),
                    utc_seconds(&v.end),
                    num(v.duration_ms),
                    v.endpoint.clone(),
                    v.site.clone(),
                    v.device.clone(),
                    v.source.clone(),
                    v.connections.to_string(),
                    num(v.bytes_up),
                    num(v.bytes_down),
                    v.rule.clone(),
                    v.close_reason.clone(),
                    v.justification.clone(),
                    v.sessions.join(";"),
                ])
            )?;
        }
        return Ok(());
    }
    writeln!(out, "{}", USER_CSV_COLUMNS.join(","))?;
    for u in &report.users {
        let name = u.names.first().cloned().unwrap_or_default();
        let email = u.emails.first().cloned().unwrap_or_default();
        let base = |record: &str| {
            vec![
                record.to_owned(),
                u.user.clone(),
                name.clone(),
                email.clone(),
            ]
        };
        for s in &u.sign_ins {
            let mut cells = base("sign_in");
            cells.extend([
                utc_seconds(&s.ts),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                s.device.clone(),
                s.source.clone(),
            ]);
            cells.resize(USER_CSV_COLUMNS.len(), String::new());
            writeln!(out, "{}", csv_line(&cells))?;
        }
        for v in &u.visits {
            let mut cells = base("visit");
            cells.extend([
                utc_seconds(&v.start),
                utc_seconds(&v.end),
                num(v.duration_ms),
                v.endpoint.clone(),
                v.site.clone(),
                v.device.clone(),
                v.source.clone(),
                v.connections.to_string(),
                num(v.bytes_up),
                num(v.bytes_down),
                v.close_reason.clone(),
                v.justification.clone(),
                String::new(),
                String::new(),
                v.sessions.join(";"),
            ]);
            writeln!(out, "{}", csv_line(&cells))?;
        }
        for r in &u.refusals {
            let (endpoint, site) = match r.endpoint.split_once('@') {
                Some((e, s)) => (e.to_owned(), s.to_owned()),
                None => (r.endpoint.clone(), String::new()),
            };
            let mut cells = base("refused");
            cells.extend([
                utc_seconds(&r.first),
                utc_seconds(&r.last),
                String::new(),
                endpoint,
                site,
            ]);
            cells.resize(USER_CSV_COLUMNS.len() - 3, String::new());
            cells.extend([r.reason.clone(), r.count.to_string(), String::new()]);
            writeln!(out, "{}", csv_line(&cells))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_everything_that_could_open_markup() {
        assert_eq!(
            html_escape("<script>alert('x')</script> & \"q\"\n"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; "
        );
    }

    #[test]
    fn periods_read_as_utc() {
        let q = ReportQuery {
            since: Some(humantime::parse_rfc3339("2025-03-01T00:00:00Z").unwrap()),
            until: Some(humantime::parse_rfc3339("2025-04-01T00:00:00Z").unwrap()),
            ..ReportQuery::default()
        };
        assert_eq!(period(&q), "2025-03-01 00:00:00 to 2025-04-01 00:00:00 UTC");
        assert_eq!(period(&ReportQuery::default()), "the whole log");
    }

    #[test]
    fn text_tables_measure_their_columns() {
        let t = Table {
            header: vec!["A", "NUM", "LAST"],
            right: vec![1],
            rows: vec![
                vec!["long cell".into(), "7".into(), "x".into()],
                vec!["b".into(), "1234".into(), "".into()],
            ],
            empty: "none",
        };
        assert_eq!(
            text_table(&t, "  "),
            [
                "  A           NUM  LAST",
                "  long cell     7  x",
                "  b          1234",
            ]
        );
    }
}
