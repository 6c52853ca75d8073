//! Errors of the audit crate.
//!
//! Every variant says what was being done and with which path. The type is `Clone` because one
//! failed write is reported to every caller whose event was in that batch, and is kept (sticky)
//! for every later caller.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong while writing or reading the audit log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The log directory could not be created.
    #[error("cannot create audit directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A segment file could not be opened (or created).
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The exclusive lock that keeps appends from several processes apart could not be taken.
    #[error("cannot lock audit log {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Appending events failed; the events of that batch are not (fully) on disk.
    #[error("cannot append to audit log {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// `fdatasync` failed; whether the events reached the disk is unknown.
    #[error("cannot sync audit log {path} to disk: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Reading a segment (or listing the directory) failed.
    #[error("cannot read audit log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A line is not a valid event.
    #[error("{path} line {line}: not a valid audit event: {reason}")]
    Parse {
        path: PathBuf,
        /// 1-based line number within the segment.
        line: u64,
        reason: String,
    },
    /// An event could not be encoded as JSON.
    #[error("cannot encode audit event of type {kind:?}: {reason}")]
    Encode { kind: String, reason: String },
    /// The directory holds no audit log.
    #[error("no audit log in {dir} (expected {expected})")]
    NoLog { dir: PathBuf, expected: PathBuf },
    /// A log directory holds segments but not one complete event (when several logs are read,
    /// a replica's log always starts with the writer's `audit.started`).
    #[error("the audit log in {dir} holds no event (an empty audit.jsonl): not a gateway's log, or the wrong directory")]
    EmptyLog { dir: PathBuf },
    /// Two of the directories given are the same log, which would count every event twice.
    #[error("{first} and {second} are the same audit log ({why}); give each replica's log once")]
    SameLog {
        first: PathBuf,
        second: PathBuf,
        /// How they are the same, in words.
        why: String,
    },
    /// More logs than are read together ([`crate::logset::MAX_LOGS`]).
    #[error("{count} audit logs given; at most {max} are read together")]
    TooManyLogs { count: usize, max: usize },
    /// A witness line cannot be matched to exactly one of several logs.
    #[error("witness: {reason}")]
    Witness { reason: String },
    /// The writer was closed (or has stopped); nothing more can be recorded through it.
    #[error("audit log writer for {dir} is closed")]
    Closed { dir: PathBuf },
    /// An earlier write failed, so the writer refuses further events (fail closed): the state
    /// of the file is no longer known to be good. Restart to recover.
    #[error("audit log in {dir} is unusable after an earlier failure: {source}")]
    Failed {
        dir: PathBuf,
        #[source]
        source: Box<AuditError>,
    },
    /// The chain cannot be continued from what is on disk (the last line is damaged).
    #[error("{path} offset {offset}: {reason}")]
    Chain {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `audit.*` events are written by the audit writer only.
    #[error("event type {kind:?} is reserved for the audit writer itself")]
    Reserved { kind: String },
    /// The audit signing key (or a public key) could not be read, created or parsed.
    #[error("audit key{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Key {
        path: Option<PathBuf>,
        reason: String,
    },
    /// SIEM forwarding options are unusable (bad address, bad CA).
    #[error("syslog forwarding to {target}: {reason}")]
    Forward { target: String, reason: String },
    /// The log is shorter than (or no longer contains) the checkpoint its `audit.head` names:
    /// events were removed from its end. The writer does not continue such a log unless told to
    /// ([`crate::AuditOptions::accept_truncation`]), which records the loss.
    #[error("audit log in {dir} was cut short: {what}; refusing to continue it (after finding out what happened, restore the log from a backup, or start with --accept-truncated-audit to record the loss as audit.truncation_detected and go on)")]
    Truncated {
        dir: PathBuf,
        /// `seq` of the checkpoint `audit.head` names.
        head_seq: u64,
        /// `seq` of the last event in the log.
        log_seq: u64,
        /// What was found, in words (names both `seq`s).
        what: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start audit writer for {dir}: {source}")]
    Spawn {
        dir: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
}

// Constructors for the io-error variants, so call sites read `map_err(|e| AuditError::open(&p, e))`.
impl AuditError {
    pub(crate) fn create_dir(path: &Path, e: io::Error) -> AuditError {
        AuditError::CreateDir {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn open(path: &Path, e: io::Error) -> AuditError {
        AuditError::Open {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn lock(path: &Path, e: io::Error) -> AuditError {
        AuditError::Lock {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn write(path: &Path, e: io::Error) -> AuditError {
        AuditError::Write {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn sync(path: &Path, e: io::Error) -> AuditError {
        AuditError::Sync {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn read(path: &Path, e: io::Error) -> AuditError {
        AuditError::Read {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
    pub(crate) fn spawn(dir: &Path, e: io::Error) -> AuditError {
        AuditError::Spawn {
            dir: dir.to_owned(),
            source: Arc::new(e),
        }
    }
}
