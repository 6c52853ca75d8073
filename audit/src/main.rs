//! `postern-audit`: the auditor's tool. Thin: argument parsing and output; the logic lives in
//! the `postern_audit` library.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use postern_audit::access::{AccessQuery, ObjectKind, ObjectQuery};
use postern_audit::logset::LogSet;
use postern_audit::search::{parse_time, Filter, Format, Matches, ReportError, Summary};
use postern_audit::syslog::{format_rfc5424_replica, frame, MessageFormat, SyslogTarget};
use postern_audit::verify::{
    verify, verify_logs, KeySource, LogsVerifyOptions, VerifyOptions, VerifyReport,
};
use postern_audit::{
    AuditError, AuditKey, AuditLog, AuditOptions, AuditPublicKey, DecisionRef, DeviceRef,
    EndpointRef, Event, EventType, SyslogOptions, Witness,
};

#[derive(Debug, Parser)]
#[command(
    name = "postern-audit",
    version,
    about = "Verify, search and export Postern audit logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prove the log was not edited, reordered or cut: check every chain link and every
    /// checkpoint signature. With several logs (one per gateway replica), each is verified as its
    /// own chain. Exit 0 if every log is intact, 1 if one is not, 2 if one cannot be read.
    Verify(VerifyArgs),
    /// Print the events that match every given filter, oldest first (several logs: merged by
    /// time, with the replica each came from).
    Search(SearchArgs),
    /// One row per visit (a clinician's connections to one endpoint from one sign-in, with one
    /// justification; in logs from before session events named the sign-in: same user, device,
    /// address and justification, at most 5 minutes apart): connections, first start, last
    /// end, bytes, close reason, web requests and objects opened, justification.
    /// With --connections, one row per session (connection) instead. Several logs: one row per
    /// session wherever its start and end are.
    Sessions(SessionsArgs),
    /// A summary to hand on: everything one person did (--user), or every break-glass access
    /// (--break-glass), in a period; as text, CSV, or an HTML page to open and print.
    Report(ReportArgs),
    /// Who opened this study, who viewed this patient? One row per session that touched a
    /// study, series, instance, patient or accession number (DICOMweb requests and DICOM
    /// queries, retrieves and stores): first and last time, user, device, source address,
    /// endpoint, session, requests, and what was done over DICOM. Exit 0 also when nothing is
    /// found (it says so); 2 for a malformed identifier.
    Access(AccessArgs),
    /// Export matching events as JSON lines, CSV, RFC 5424 syslog, IHE ATNA (DICOM PS3.15 audit
    /// messages) or FHIR R4 AuditEvent (NDJSON or a Bundle): to stdout, to a file with --out,
    /// or sent to a syslog server with --to; several logs are merged by time. ATNA and FHIR
    /// exports start with an Audit Log Used message naming who exported.
    Export(ExportArgs),
    /// Print the latest signed checkpoint as one line, for an outside witness to keep (one line
    /// per log).
    Checkpoint(CheckpointArgs),
    /// Print the public audit key (PEM, or hex with --hex) from a key file or state directory.
    Pubkey(PubkeyArgs),
    /// Write synthetic events (tests and benchmarks); prints `ack SEQ-ID` per durable event.
    #[command(hide = true)]
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Audit log directory (the one holding audit.jsonl); several, one per gateway replica,
    /// are each verified on their own.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// The audit public key (PEM or hex) to check checkpoint signatures against. Without it,
    /// the key named in the log is used (trust on first use). With several logs: once for
    /// all of them, or once per log in the order of the directories.
    #[arg(long, value_name = "FILE")]
    pubkey: Vec<PathBuf>,
    /// A file of checkpoint lines (from `postern-audit checkpoint`) the log must still contain.
    /// With several logs, each line is checked against the log of its node (else of its key).
    #[arg(long, value_name = "FILE")]
    witness: Vec<PathBuf>,
    /// Require the log (every log) to end with a closing checkpoint (archived logs).
    #[arg(long)]
    closed: bool,
}

#[derive(Debug, Clone, Args)]
struct FilterArgs {
    /// Event type, e.g. session.start, or a family such as session.*
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// User: IdP subject or email, whole, or a part of the display name (any case).
    #[arg(long)]
    user: Option<String>,
    /// Endpoint name, exactly; end it with * for a prefix (truro-pacs*).
    #[arg(long)]
    endpoint: Option<String>,
    /// Site (of the endpoint or connector).
    #[arg(long)]
    site: Option<String>,
    /// Session id, exactly.
    #[arg(long, value_name = "SESSION_ID")]
    session: Option<String>,
    /// Sign-in (session token id, tok-...), exactly: its auth.login and the sessions opened
    /// with it.
    #[arg(long, value_name = "TOKEN_ID")]
    signin: Option<String>,
    /// Device id or name.
    #[arg(long)]
    device: Option<String>,
    /// Decision effect.
    #[arg(long, value_parser = ["allow", "deny"])]
    decision: Option<String>,
    /// A clinical object the event touched, by its identifier (a study, series or instance
    /// UID; any kind). sessions: the sessions with a request that touched it.
    #[arg(long, value_name = "ID")]
    object: Option<String>,
    /// From this time on: 2025-03-01T18:00:00Z, 2025-03-01T18:00:00+01:00, 2025-03-01, or 12h
    /// (ago).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> anyhow::Result<Filter> {
        let now = SystemTime::now();
        let time = |v: Option<String>, flag: &str| -> anyhow::Result<Option<SystemTime>> {
            v.map(|t| parse_time(&t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .transpose()
        };
        Ok(Filter {
            kind: self.kind,
            user: self.user,
            session: self.session,
            signin: self.signin,
            endpoint: self.endpoint,
            site: self.site,
            device: self.device,
            decision: self.decision,
            object: self.object,
            since: time(self.since, "--since")?,
            until: time(self.until, "--until")?,
        })
    }
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Audit log directory (the one holding audit.jsonl); several, one per gateway replica,
    /// are read as one, merged by time.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print JSON lines instead of a table (search: the stored lines, unchanged).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    csv: bool,
}

#[derive(Debug, Args)]
struct SessionsArgs {
    #[command(flatten)]
    search: SearchArgs,
    /// One row per connection (session) instead of one per visit.
    #[arg(long)]
    connections: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["user", "break_glass"])
))]
struct ReportArgs {
    /// Audit log directory (the one holding audit.jsonl); several, one per gateway replica,
    /// are read as one.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Everything this person did: IdP subject or email, whole, or a part of the display name
    /// (any case); several people matching get a part each.
    #[arg(long)]
    user: Option<String>,
    /// Every break-glass access (a justification was given); with --user, theirs only.
    #[arg(long)]
    break_glass: bool,
    /// From this time on (same forms as search --since).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Print CSV instead of text.
    #[arg(long, conflicts_with = "html")]
    csv: bool,
    /// Write a self-contained HTML page to FILE (created 0600, replaced if it exists) instead
    /// of printing text.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("objects")
        .required(true)
        .multiple(true)
        .args(["study", "series", "instance", "patient", "accession"])
))]
struct AccessArgs {
    /// Audit log directory (the one holding audit.jsonl); several, one per gateway replica,
    /// are read as one.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Study Instance UID (may be repeated; a session is listed if it touched any object
    /// given).
    #[arg(long, value_name = "UID", value_parser = object_id(ObjectKind::Study))]
    study: Vec<String>,
    /// Series Instance UID (may be repeated).
    #[arg(long, value_name = "UID", value_parser = object_id(ObjectKind::Series))]
    series: Vec<String>,
    /// SOP Instance UID (may be repeated).
    #[arg(long, value_name = "UID", value_parser = object_id(ObjectKind::Instance))]
    instance: Vec<String>,
    /// Patient ID as the PACS holds it (may be repeated): DICOM queries, retrieves and stores
    /// that named the patient.
    #[arg(long, value_name = "ID", value_parser = object_id(ObjectKind::Patient))]
    patient: Vec<String>,
    /// Accession Number (may be repeated).
    #[arg(long, value_name = "N", value_parser = object_id(ObjectKind::Accession))]
    accession: Vec<String>,
    /// Only accesses from this time on (same forms as search --since).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only accesses before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    csv: bool,
}

/// A clap value parser that accepts a valid identifier of `kind` (a bad one is a usage error:
/// exit 2, like every other bad argument).
fn object_id(kind: ObjectKind) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |id: &str| kind.check(id).map(|()| id.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// The stored JSON lines.
    Json,
    /// CSV, one row per event.
    Csv,
    /// RFC 5424 syslog messages carrying the stored lines.
    Syslog,
    /// DICOM PS3.15 A.5 audit messages (IHE ATNA), one `AuditMessage` per line; with --to,
    /// sent as IHE ITI-20 syslog messages.
    Atna,
    /// FHIR R4 AuditEvent resources (IHE BALP-aligned), one JSON per line (NDJSON).
    Fhir,
    /// FHIR R4 AuditEvent resources in one Bundle of type collection.
    FhirBundle,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Audit log directory; several, one per gateway replica, are merged by time.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[command(flatten)]
    filter: FilterArgs,
    /// Send to this syslog server (host:port, RFC 5424 octet-counted over TCP) instead of
    /// printing. Only with --format syslog.
    #[arg(long, value_name = "HOST:PORT")]
    to: Option<String>,
    /// Use TLS 1.3 to the syslog server; needs --ca.
    #[arg(long, requires = "to", requires = "ca")]
    tls: bool,
    /// CA certificate(s) (PEM) the syslog server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Name in the syslog server's certificate (default: the host of --to).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Client certificate chain (PEM) to present to the syslog server (with --tls).
    #[arg(long, value_name = "FILE", requires = "tls", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// With --format fhir: one Bundle of type collection instead of NDJSON.
    #[arg(long)]
    fhir_bundle: bool,
    /// Write to FILE (created 0600, replaced if it exists) instead of stdout (atna, fhir).
    #[arg(long, value_name = "FILE", conflicts_with = "to")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckpointArgs {
    /// Audit log directory; several print one line each.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct PubkeyArgs {
    /// `audit-key.pk8`, or the state directory holding it.
    path: PathBuf,
    /// Print 64 hex digits instead of PEM.
    #[arg(long)]
    hex: bool,
}

#[derive(Debug, Args)]
struct LoadArgs {
    dir: PathBuf,
    /// Events to write.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    tasks: u64,
    /// State directory with (or for) audit-key.pk8: sign checkpoints.
    #[arg(long)]
    key_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    checkpoint_events: u64,
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    segment_bytes: u64,
    /// Extra bytes of detail per event (bigger writes).
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Distinct users to spread events over.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Append with append_sync (as an admin CLI does) instead of a writer.
    #[arg(long)]
    append_sync: bool,
    /// Print no acks.
    #[arg(long)]
    quiet: bool,
    /// Id prefix of the events (to tell processes apart).
    #[arg(long, default_value = "e")]
    tag: String,
    /// Close the log cleanly at the end (closing checkpoint).
    #[arg(long)]
    close: bool,
}

fn main() -> ExitCode {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        // Exit 2 when verification could not even run (bad key file, unreadable log), so
        // scripts can tell "could not check" from "tampered" (1).
        Command::Verify(args) => verify_cmd(args).or_else(|e| {
            eprintln!("postern-audit: {e:#}");
            Ok(ExitCode::from(2))
        }),
        Command::Search(args) => report(args, Listing::Events),
        Command::Sessions(args) => report(
            args.search,
            if args.connections {
                Listing::Connections
            } else {
                Listing::Visits
            },
        ),
        Command::Report(args) => summary_report(args),
        Command::Access(args) => access(args),
        Command::Export(args) => export(args),
        Command::Checkpoint(args) => checkpoint(args),
        Command::Pubkey(args) => pubkey(args),
        Command::Load(args) => load(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // e.g. `| head`
        Err(e) => {
            eprintln!("postern-audit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify_cmd(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pubkeys = args
        .pubkey
        .iter()
        .map(|path| AuditPublicKey::read_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let witnesses = read_witnesses(&args.witness)?;
    if let [dir] = &args.dirs[..] {
        if pubkeys.len() > 1 {
            bail!(
                "--pubkey given {} times for one log: give it once",
                pubkeys.len()
            );
        }
        let options = VerifyOptions {
            pubkey: pubkeys.first().copied(),
            witnesses,
            require_closed: args.closed,
            ..VerifyOptions::default()
        };
        let report = match verify(dir, &options) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("postern-audit: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let mut out = io::stdout().lock();
        print_verify_report(&mut out, dir, None, &report, !options.witnesses.is_empty())?;
        return Ok(if report.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let logs = LogSet::open(&args.dirs)?;
    let verdicts = verify_logs(
        &logs,
        &LogsVerifyOptions {
            pubkeys,
            witnesses,
            require_closed: args.closed,
            ..LogsVerifyOptions::default()
        },
    )?;
    let mut out = io::stdout().lock();
    let width = logs.label_width();
    let mut summary = Vec::new();
    let (mut failed, mut unreadable) = (Vec::new(), Vec::new());
    for v in &verdicts {
        let replica = match &v.node {
            Some(node) if *node != v.label => format!("{} (node {node})", v.label),
            _ => v.label.clone(),
        };
        let name = format!("{} ({})", v.label, v.dir.display());
        let line = match &v.result {
            Ok(report) => {
                print_verify_report(&mut out, &v.dir, Some(&replica), report, v.witnesses > 0)?;
                if report.is_ok() {
                    format!(
                        "OK          {}  ({} events, {} signed checkpoint(s))",
                        v.dir.display(),
                        report.events,
                        report.checkpoints
                    )
                } else {
                    failed.push(name);
                    format!(
                        "FAILED      {}  ({} problem(s); first: {})",
                        v.dir.display(),
                        report.problem_count,
                        report
                            .first_problem()
                            .map(|p| p.to_string())
                            .unwrap_or_default()
                    )
                }
            }
            Err(e) => {
                eprintln!("postern-audit: {}: {e}", v.dir.display());
                writeln!(out, "log:          {}", v.dir.display())?;
                writeln!(out, "replica:      {replica}")?;
                writeln!(out, "CANNOT VERIFY: {e}")?;
                unreadable.push(name);
                format!("UNREADABLE  {}  ({e})", v.dir.display())
            }
        };
        writeln!(out)?;
        summary.push(format!("  {:<width$}  {line}", v.label));
    }
    writeln!(
        out,
        "verdict: {} logs, each verified as its own chain:",
        verdicts.len()
    )?;
    for line in &summary {
        writeln!(out, "{line}")?;
    }
    if failed.is_empty() && unreadable.is_empty() {
        writeln!(
            out,
            "OK: all {} logs intact: every link and every checkpoint signature of each verified.",
            verdicts.len()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut what = Vec::new();
    if !failed.is_empty() {
        what.push(format!("not intact: {}", failed.join(", ")));
    }
    if !unreadable.is_empty() {
        what.push(format!("could not be read: {}", unreadable.join(", ")));
    }
    if failed.is_empty() {
        writeln!(out, "CANNOT VERIFY: {}.", what.join("; "))?;
        return Ok(ExitCode::from(2));
    }
    writeln!(out, "FAILED: {}.", what.join("; "))?;
    // Tampering found wins over a log that could not be read: it is the finding that must
    // not be lost in a script that only looks at the exit code.
    Ok(ExitCode::FAILURE)
}

fn read_witnesses(paths: &[PathBuf]) -> anyhow::Result<Vec<Witness>> {
    let mut witnesses = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading witness file {}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let w = Witness::parse(line).map_err(|e| {
                anyhow::anyhow!(
                    "{} line {}: not a checkpoint line: {e}",
                    path.display(),
                    n + 1
                )
            })?;
            witnesses.push(w);
        }
    }
    Ok(witnesses)
}

/// The verify report of one log; `replica` (with several logs) adds a line naming it.
fn print_verify_report(
    out: &mut dyn Write,
    dir: &Path,
    replica: Option<&str>,
    report: &VerifyReport,
    witnesses: bool,
) -> io::Result<()> {
    writeln!(out, "log:          {}", dir.display())?;
    if let Some(replica) = replica {
        writeln!(out, "replica:      {replica}")?;
    }
    writeln!(
        out,
        "segments:     {}\nevents:       {} chained (seq 1..{}){}",
        report.segments,
        report.events,
        report.last_seq,
        if report.legacy_events > 0 {
            format!(
                ", plus {} older unchained event(s) at the start (not protected)",
                report.legacy_events
            )
        } else {
            String::new()
        }
    )?;
    let key = match (report.key, report.key_source) {
        (Some(k), KeySource::Given) => format!("{} (given with --pubkey)", k.to_hex()),
        (Some(k), _) => format!(
            "{} (named in the log itself; pass --pubkey with a copy you trust to prove who signed)",
            k.to_hex()
        ),
        (None, _) => "none (the log has no signing key: no checkpoints)".to_owned(),
    };
    writeln!(out, "audit key:    {key}")?;
    writeln!(
        out,
        "checkpoints:  {} with a valid signature",
        report.checkpoints
    )?;
    if let Some(cp) = &report.last_checkpoint {
        writeln!(
            out,
            "last checkpoint: seq {} ({}) at {}",
            cp.seq, cp.reason, cp.ts
        )?;
        writeln!(
            out,
            "unsigned tail: {} event(s) after it",
            report.unsigned_tail
        )?;
    }
    writeln!(
        out,
        "audit.head:   {}",
        if report.head_checked {
            "checked"
        } else {
            "absent"
        }
    )?;
    if witnesses {
        writeln!(out, "witnesses:    {} checked", report.witnesses_checked)?;
    }
    if let Some((path, offset, bytes)) = &report.torn_tail {
        writeln!(
            out,
            "note: {} ends in an incomplete line ({bytes} bytes at offset {offset}): a write in progress, or a crash the writer will recover from",
            path.display()
        )?;
    }
    if report.is_ok() {
        writeln!(
            out,
            "OK: every link and every checkpoint signature verified."
        )?;
        return Ok(());
    }
    writeln!(out, "FAILED: {} problem(s).", report.problem_count)?;
    if let Some(first) = report.first_problem() {
        writeln!(out, "first broken: {first}")?;
    }
    for p in report.problems.iter().skip(1) {
        writeln!(out, "  also: {p}")?;
    }
    if report.problem_count > report.problems.len() as u64 {
        writeln!(
            out,
            "  ... and {} more",
            report.problem_count - report.problems.len() as u64
        )?;
    }
    Ok(())
}

/// What `search` and `sessions` list.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Events,
    Connections,
    Visits,
}

fn report(args: SearchArgs, listing: Listing) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Table
    };
    let filter = args.filter.filter()?;
    let logs = LogSet::open(&args.dirs)?;
    run_report(&logs, |out, bad| match listing {
        Listing::Events => postern_audit::search::search_logs(&logs, &filter, format, out, bad),
        Listing::Connections => {
            postern_audit::sessions::sessions_logs(&logs, &filter, format, out, bad)
        }
        Listing::Visits => postern_audit::visits::visits_logs(&logs, &filter, format, out, bad),
    })
}

fn summary_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use postern_audit::report;
    let now = SystemTime::now();
    let time = |v: Option<String>, flag: &str| -> anyhow::Result<Option<SystemTime>> {
        v.map(|t| parse_time(&t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    let query = report::ReportQuery {
        user: args.user.clone(),
        break_glass: args.break_glass,
        since: time(args.since, "--since")?,
        until: time(args.until, "--until")?,
    };
    let logs = LogSet::open(&args.dirs)?;
    let source = args
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut built = None;
    let code = run_report(&logs, |out, bad| {
        let r = report::build(&logs, &query, bad)?;
        let summary = r.summary.clone();
        match &args.html {
            Some(_) => {}
            None if args.csv => report::write_csv(&r, out)?,
            None => report::write_text(&r, now, &source, out)?,
        }
        built = Some(r);
        Ok(summary)
    })?;
    if let (Some(path), Some(r)) = (&args.html, &built) {
        let mut page = Vec::new();
        report::write_html(r, now, &source, &mut page)?;
        write_private(path, &page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("postern-audit: wrote {}", path.display());
    }
    Ok(code)
}

/// Writes `bytes` to `path`, readable by its owner only (a report names people).
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn access(args: AccessArgs) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Table
    };
    let now = SystemTime::now();
    let time = |v: Option<String>, flag: &str| -> anyhow::Result<Option<SystemTime>> {
        v.map(|t| parse_time(&t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    let mut objects = Vec::new();
    for (kind, ids) in [
        (ObjectKind::Study, &args.study),
        (ObjectKind::Series, &args.series),
        (ObjectKind::Instance, &args.instance),
        (ObjectKind::Patient, &args.patient),
        (ObjectKind::Accession, &args.accession),
    ] {
        for id in ids {
            // Checked by clap already; kept so the query can never hold a bad one.
            objects.push(ObjectQuery::new(kind, id).map_err(anyhow::Error::msg)?);
        }
    }
    objects.dedup();
    let query = AccessQuery {
        objects,
        since: time(args.since, "--since")?,
        until: time(args.until, "--until")?,
    };
    let logs = LogSet::open(&args.dirs)?;
    let mut report = None;
    let code = run_report(&logs, |out, bad| {
        let r = postern_audit::access::access(&logs, &query, format, out, bad)?;
        let summary = r.summary.clone();
        report = Some(r);
        Ok(summary)
    })?;
    if let Some(report) = &report {
        if let Some(note) = postern_audit::access::sampling_note(&query, report) {
            eprintln!("postern-audit: note: {note}");
        }
        if report.rows.is_empty() && !matches!(format, Format::Table) {
            eprintln!(
                "postern-audit: {}",
                postern_audit::access::nothing_found(&query, report)
            );
        }
    }
    Ok(code)
}

/// Runs a streaming report to stdout, printing bad lines to stderr as they come.
fn run_report(
    logs: &LogSet,
    f: impl FnOnce(&mut dyn Write, &mut dyn FnMut(&AuditError)) -> Result<Summary, ReportError>,
) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut bad = |e: &AuditError| {
        eprintln!("postern-audit: {e}");
    };
    let summary = match f(&mut out, &mut bad) {
        Ok(summary) => summary,
        Err(ReportError::Output(e)) => return Err(e.into()),
        Err(ReportError::Audit(e)) => {
            let _ = out.flush();
            return Err(match logs.logs() {
                // Several logs: the error names the log (its directory or a file in it).
                [log] => anyhow::Error::new(e).context(format!("reading {}", log.dir.display())),
                _ => anyhow::Error::new(e),
            });
        }
    };
    out.flush()?;
    Ok(finish_report(logs, &summary))
}

/// Notes on stderr about what a report met; the exit code.
fn finish_report(logs: &LogSet, summary: &Summary) -> ExitCode {
    late_requests_note(summary);
    if !logs.is_merged() {
        if summary.torn_tail {
            eprintln!("postern-audit: note: the log ends in an incomplete line (a write in progress, or a crash); skipped");
        }
        if summary.bad_lines > 0 {
            eprintln!(
                "postern-audit: {} line(s) of the log are not valid events",
                summary.bad_lines
            );
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    for log in &summary.logs {
        if log.torn_tail {
            eprintln!(
                "postern-audit: note: the log in {} ({}) ends in an incomplete line (a write in progress, or a crash); skipped",
                log.dir.display(),
                log.label
            );
        }
        if log.bad_lines > 0 {
            eprintln!(
                "postern-audit: {} line(s) of the log in {} ({}) are not valid events",
                log.bad_lines,
                log.dir.display(),
                log.label
            );
        }
    }
    if summary.folded > 0 {
        eprintln!(
            "postern-audit: note: {} session event(s) repeated a start or an end already joined (an end written by two replicas, e.g. gateway_lost); each session is one row, with its earliest end",
            summary.folded
        );
    }
    if summary.bad_lines > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A note about `web.request` events `sessions` could not count (after their session's row).
fn late_requests_note(summary: &Summary) {
    if summary.late_requests > 0 {
        eprintln!(
            "postern-audit: note: {} web request(s) came after their session had ended and are not counted in its row",
            summary.late_requests
        );
    }
}

fn export(mut args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.fhir_bundle {
        if !matches!(args.format, ExportFormat::Fhir | ExportFormat::FhirBundle) {
            bail!("--fhir-bundle goes with --format fhir");
        }
        args.format = ExportFormat::FhirBundle;
    }
    if args.out.is_some()
        && !matches!(
            args.format,
            ExportFormat::Atna | ExportFormat::Fhir | ExportFormat::FhirBundle
        )
    {
        bail!("--out writes atna or fhir exports; redirect stdout for the other formats");
    }
    if matches!(
        args.format,
        ExportFormat::Atna | ExportFormat::Fhir | ExportFormat::FhirBundle
    ) {
        return export_clinical(args);
    }
    let filter = args.filter.clone().filter()?;
    let format = match args.format {
        ExportFormat::Json => Format::Json,
        ExportFormat::Csv => Format::Csv,
        _ => Format::Syslog,
    };
    let logs = LogSet::open(&args.dirs)?;
    let Some(to) = args.to.clone() else {
        return run_report(&logs, |out, bad| {
            postern_audit::search::search_logs(&logs, &filter, format, out, bad)
        });
    };
    if !matches!(args.format, ExportFormat::Syslog) {
        bail!("--to sends syslog messages; use it with --format syslog");
    }
    let options = syslog_options(&args, &to, MessageFormat::Json)?;
    let target = SyslogTarget::new(options)?;
    let mut matches = Matches::open(&logs, &filter)?;
    let mut conn = target
        .connect()
        .with_context(|| format!("connecting to {}", target.options().target()))?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut sent = 0u64;
    let mut bad = |e: &AuditError| eprintln!("postern-audit: {e}");
    let replicas = logs.is_merged();
    while let Some((log, entry)) = matches.next(&mut bad)? {
        let replica = replicas.then(|| logs.logs()[log].label.as_str());
        frame(
            &format_rfc5424_replica(entry.raw.as_bytes(), "postern", "-", replica),
            &mut buf,
        );
        sent += 1;
        if buf.len() >= 1 << 20 {
            conn.send(&buf)?;
            buf.clear();
        }
    }
    conn.send(&buf)?;
    conn.close();
    eprintln!(
        "postern-audit: sent {sent} event(s) to {}",
        target.options().target()
    );
    Ok(finish_report(&logs, &matches.summary()))
}

/// The syslog destination of `export --to`.
fn syslog_options(
    args: &ExportArgs,
    to: &str,
    format: MessageFormat,
) -> anyhow::Result<SyslogOptions> {
    let mut options = if args.tls {
        let Some(ca) = &args.ca else {
            bail!("--tls needs --ca");
        };
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let name = args.server_name.clone().unwrap_or_else(|| host_of(to));
        let options = SyslogOptions::tls(to.to_owned(), name, &pem)?;
        match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => options.with_client_cert_files(cert, key)?,
            _ => options,
        }
    } else {
        SyslogOptions::tcp(to.to_owned())
    };
    options.format = format;
    Ok(options)
}

/// Who runs this command, for the Audit Log Used message: the login name (`$USER`,
/// `$LOGNAME`), else the name of the process's user id in /etc/passwd, else `uid N`.
fn os_user() -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
    {
        return u;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    let Some(uid) = uid else {
        return "unknown".to_owned();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This machine's name, the audit source of the Audit Log Used message.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The filter as given on the command line, for the Audit Log Used message.
fn describe_filter(f: &FilterArgs) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("--type", &f.kind),
        ("--user", &f.user),
        ("--endpoint", &f.endpoint),
        ("--site", &f.site),
        ("--session", &f.session),
        ("--signin", &f.signin),
        ("--device", &f.device),
        ("--decision", &f.decision),
        ("--object", &f.object),
        ("--since", &f.since),
        ("--until", &f.until),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "all events".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `export --format atna|fhir|fhir-bundle`: an Audit Log Used message first, a Security Alert
/// for each log that fails verification, then one message per matching event that has a
/// mapping.
fn export_clinical(args: ExportArgs) -> anyhow::Result<ExitCode> {
    use postern_audit::atna;
    if args.to.is_some() && args.format != ExportFormat::Atna {
        bail!("--to sends syslog messages; use it with --format syslog or --format atna");
    }
    let what = describe_filter(&args.filter);
    let filter = args.filter.clone().filter()?;
    let logs = LogSet::open(&args.dirs)?;
    logs.check_readable()?;
    let now = postern_audit::now_rfc3339_micros();
    // The Audit Log Used message is this command's own: its source is this machine.
    let node = format!("postern-audit@{}", host_name());
    let dirs: Vec<String> = logs
        .logs()
        .iter()
        .map(|l| {
            std::fs::canonicalize(&l.dir)
                .unwrap_or_else(|_| l.dir.clone())
                .display()
                .to_string()
        })
        .collect();
    let mut messages = vec![atna::audit_log_used(&os_user(), &dirs, &what, &now, &node)];
    for (log, dir) in logs.logs().iter().zip(&dirs) {
        let report = postern_audit::verify::verify(&log.dir, &VerifyOptions::default())
            .with_context(|| format!("verifying {}", log.dir.display()))?;
        if !report.is_ok() {
            let first = report
                .first_problem()
                .map(|p| p.to_string())
                .unwrap_or_default();
            eprintln!(
                "postern-audit: {} is not intact ({} problem(s)); the export starts with a Security Alert",
                log.dir.display(),
                report.problem_count
            );
            messages.push(atna::integrity_alert(
                dir,
                log.node.as_deref().unwrap_or(&node),
                &now,
                report.problem_count,
                &first,
            ));
        }
    }
    let mut conn = None;
    let mut out: Box<dyn Write> = match (&args.to, &args.out) {
        (Some(to), _) => {
            let target = SyslogTarget::new(syslog_options(&args, to, MessageFormat::Atna)?)?;
            conn = Some((
                target
                    .connect()
                    .with_context(|| format!("connecting to {}", target.options().target()))?,
                target.options().target(),
            ));
            Box::new(io::sink())
        }
        (None, Some(path)) => Box::new(BufWriter::new(
            create_private(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        (None, None) => Box::new(BufWriter::with_capacity(256 * 1024, io::stdout().lock())),
    };
    let mut matches = Matches::open(&logs, &filter)?;
    let mut bad = |e: &AuditError| eprintln!("postern-audit: {e}");
    let (mut events, mut written, mut unmapped) = (0u64, 0u64, 0u64);
    let mut bundle = Vec::new();
    let mut framed = Vec::new();
    let mut emit = |m: &atna::Mapped,
                    event: Option<&Event>,
                    out: &mut dyn Write,
                    framed: &mut Vec<u8>|
     -> io::Result<()> {
        match args.format {
            ExportFormat::Atna if args.to.is_some() => frame(
                &postern_audit::syslog::format_atna_message(m, event, "postern", &node),
                framed,
            ),
            ExportFormat::Atna => {
                out.write_all(atna::to_xml(m).as_bytes())?;
                out.write_all(b"\n")?;
            }
            ExportFormat::Fhir => {
                let r = postern_audit::fhir::audit_event(m, written);
                serde_json::to_writer(&mut *out, &r)?;
                out.write_all(b"\n")?;
            }
            _ => bundle.push(postern_audit::fhir::audit_event(m, written)),
        }
        written += 1;
        Ok(())
    };
    for m in &messages {
        emit(m, None, &mut *out, &mut framed)?;
    }
    while let Some((log, entry)) = matches.next(&mut bad)? {
        events += 1;
        let fallback = logs.logs()[log]
            .node
            .clone()
            .unwrap_or_else(|| logs.logs()[log].label.clone());
        match atna::map(&entry.event, &fallback) {
            Some(m) => emit(&m, Some(&entry.event), &mut *out, &mut framed)?,
            None => unmapped += 1,
        }
        if framed.len() >= 1 << 20 {
            if let Some((c, _)) = conn.as_mut() {
                c.send(&framed)?;
            }
            framed.clear();
        }
    }
    if args.format == ExportFormat::FhirBundle {
        serde_json::to_writer(
            &mut *out,
            &postern_audit::fhir::bundle(std::mem::take(&mut bundle), &now),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    if let Some((mut c, target)) = conn {
        c.send(&framed)?;
        c.close();
        eprintln!("postern-audit: sent {written} ATNA message(s) to {target}");
    }
    if let Some(path) = &args.out {
        eprintln!(
            "postern-audit: wrote {written} message(s) to {}",
            path.display()
        );
    }
    eprintln!(
        "postern-audit: {events} event(s) matched; {} exported, {unmapped} without an ATNA/FHIR mapping (e.g. dicom.association, checkpoints); the first message is Audit Log Used (110101)",
        events - unmapped
    );
    Ok(finish_report(&logs, &matches.summary()))
}

/// Creates (or truncates) `path`, readable by its owner only.
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn host_of(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, _)) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        None => address.to_owned(),
    }
}

fn checkpoint(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let logs = LogSet::open(&args.dirs)?;
    let mut missing = Vec::new();
    for log in logs.logs() {
        if let Some(e) = &log.problem {
            eprintln!("postern-audit: {e}");
            missing.push(log.dir.display().to_string());
            continue;
        }
        let mut last = None;
        for entry in postern_audit::events(&log.dir)? {
            let Ok(entry) = entry else { continue };
            if let Some(w) = Witness::from_event(&entry.event) {
                last = Some(w);
            }
        }
        match last {
            Some(w) => println!("{}", w.to_line()),
            None if !logs.is_merged() => bail!(
                "no signed checkpoint in {} (is the gateway running with an audit key?)",
                log.dir.display()
            ),
            None => {
                eprintln!(
                    "postern-audit: no signed checkpoint in {} (is the gateway running with an audit key?)",
                    log.dir.display()
                );
                missing.push(log.dir.display().to_string());
            }
        }
    }
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn pubkey(args: PubkeyArgs) -> anyhow::Result<ExitCode> {
    let path = if args.path.is_dir() {
        postern_audit::audit_key_path(&args.path)
    } else {
        args.path.clone()
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = AuditKey::from_pkcs8(&bytes)?;
    if args.hex {
        println!("{}", key.public_key().to_hex());
    } else {
        print!("{}", key.public_key().to_pem());
    }
    Ok(ExitCode::SUCCESS)
}

/// A synthetic but realistic event: sessions of `users` users on a few endpoints.
fn synthetic(tag: &str, i: u64, users: u64, pad: usize) -> Event {
    const ENDPOINTS: [(&str, &str); 4] = [
        ("truro-pacs", "truro"),
        ("truro-rdp", "truro"),
        ("bodmin-pacs", "bodmin"),
        ("penzance-ris", "penzance"),
    ];
    let session = i / 2;
    let u = (session * 7919) % users.max(1);
    let (name, site) = ENDPOINTS[(session % 4) as usize];
    let mut e = Event {
        session_id: Some(format!("{tag}-{i}")),
        user: Some(format!("sub-{u:06}")),
        user_email: Some(format!("user{u}@trust.nhs.example")),
        user_name: Some(format!("User {u}")),
        groups: Some(vec!["radiologists".into()]),
        device: Some(DeviceRef {
            id: format!("dev-{}", u % 500),
            name: Some(format!("LAPTOP-{:03}", u % 500)),
            user_verified: Some(true),
        }),
        source: Some(format!(
            "203.0.113.{}:{}",
            u % 250,
            40_000 + session % 20_000
        )),
        endpoint: Some(EndpointRef {
            name: name.into(),
            site: site.into(),
            host: format!("{name}.local"),
            port: 104,
            protocol: "dicom".into(),
        }),
        decision: Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("radiologists-pacs".into()),
            policy_version: Some("sha256:0f1e2d3c".into()),
            reason: "group radiologists".into(),
            ..DecisionRef::default()
        }),
        ..Event::new(if i.is_multiple_of(2) {
            EventType::SessionStart
        } else {
            EventType::SessionEnd
        })
    };
    if i % 2 == 1 {
        e.bytes_up = Some(1000 + i);
        e.bytes_down = Some(1_000_000 + i);
        e.duration_ms = Some(60_000);
        e.close_reason = Some("client_closed".into());
    }
    if pad > 0 {
        e.detail = Some("x".repeat(pad));
    }
    e
}

fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let out = Arc::new(Mutex::new(io::stdout()));
    let ack = |out: &Arc<Mutex<io::Stdout>>, id: &str| {
        if let Ok(mut o) = out.lock() {
            let _ = writeln!(o, "ack {id}");
            let _ = o.flush();
        }
    };
    if args.append_sync {
        for i in 0..args.events {
            let e = synthetic(&args.tag, i, args.users, args.pad);
            postern_audit::append_sync(&args.dir, &e)?;
            if !args.quiet {
                ack(&out, e.session_id.as_deref().unwrap_or_default());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut options = AuditOptions {
            checkpoint_events: args.checkpoint_events,
            segment_max_bytes: args.segment_bytes,
            node_id: Some("load".into()),
            ..AuditOptions::default()
        };
        if let Some(dir) = &args.key_dir {
            options.signing_key = Some(AuditKey::load_or_create(dir)?);
        }
        let log = AuditLog::open_with(&args.dir, options).await?;
        let tasks = args.tasks.max(1);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = log.clone();
            let out = Arc::clone(&out);
            let tag = args.tag.clone();
            let (users, pad, quiet, n) = (args.users, args.pad, args.quiet, args.events);
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    let e = synthetic(&tag, i, users, pad);
                    let id = e.session_id.clone().unwrap_or_default();
                    log.record(e).await?;
                    if !quiet {
                        ack(&out, &id);
                    }
                    i += tasks;
                }
                Ok::<(), AuditError>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        if args.close {
            log.close().await?;
        } else {
            log.flush().await?;
        }
        eprintln!("postern-audit load: {:?}", log.stats());
        Ok(ExitCode::SUCCESS)
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
