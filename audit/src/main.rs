//! `postern-audit`: the auditor's tool. Thin: argument parsing and output; the logic lives in
//! the `postern_audit` library.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_audit::search::{table_header, table_row, Filter};

#[derive(Debug, Parser)]
#[command(
    name = "postern-audit",
    version,
    about = "Read and search Postern audit logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the events of an audit log that match every given filter, oldest first.
    Search(SearchArgs),
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Audit log directory (the one holding audit.jsonl).
    dir: PathBuf,
    /// Event type, e.g. session.start, or a family such as session.*
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// User name, exactly.
    #[arg(long)]
    user: Option<String>,
    /// Session id, exactly.
    #[arg(long, value_name = "SESSION_ID")]
    session: Option<String>,
    /// Print matching events as JSON lines, exactly as stored, instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Search(args) => search(args),
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

fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        kind: args.kind,
        user: args.user,
        session: args.session,
    };
    let entries = postern_audit::events(&args.dir)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if !args.json {
        writeln!(out, "{}", table_header())?;
    }
    let mut bad_lines = 0u64;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e @ postern_audit::AuditError::Parse { .. }) => {
                // Keep going: the rest of the log is still readable, and the auditor needs to
                // see it; the exit status reports the damage.
                out.flush()?;
                eprintln!("postern-audit: {e}");
                bad_lines += 1;
                continue;
            }
            Err(e) => return Err(e).context("search stopped"),
        };
        if !filter.matches(&entry.event) {
            continue;
        }
        if args.json {
            writeln!(out, "{}", entry.raw)?;
        } else {
            writeln!(out, "{}", table_row(&entry.event))?;
        }
    }
    out.flush()?;
    if bad_lines > 0 {
        eprintln!("postern-audit: {bad_lines} line(s) of the log are not valid events");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
