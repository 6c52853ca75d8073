#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! # postern-audit
//!
//! The audit trail of Postern: who reached which endpoint, when, from where, under which policy
//! rule, for how long and with how many bytes; which connectors came and went; which tokens were
//! issued. The gateway writes it; admin CLI commands append to it; auditors read and search it.
//!
//! ## Layout on disk
//!
//! ```text
//! DIR/                 0700, created if missing
//!   audit.jsonl        0600, the first segment: JSON Lines, one Event per line, append-only
//! ```
//!
//! Segment names come from [`first_segment_path`] / [`segment_paths`] so that rotation can add
//! further segments without touching callers. Readers ignore unknown fields and keep `type` as a
//! string, so old readers read new logs.
//!
//! ## Who writes, and how
//!
//! * The gateway holds one [`AuditLog`] (a cheap, cloneable handle). A dedicated writer thread
//!   owns the file and does **group commit**: it drains whatever is queued into one buffer and
//!   appends it with a single locked `write_all` followed by `fdatasync`.
//! * Short-lived processes (admin commands) call [`append_sync`].
//!
//! Every append, from either path, runs under an exclusive `flock` on the segment, on a
//! descriptor opened with `O_APPEND`, with one `write_all` per batch; lines from different
//! processes therefore never interleave.
//!
//! ## The durability promise
//!
//! [`AuditLog::record`] and [`append_sync`] return `Ok` only after the event's line has been
//! written **and** `fdatasync`ed (and, when the file is new, its directory entry synced). The
//! gateway records `session.start` with `record` before it relays the first byte of a session.
//! [`AuditLog::record_nowait`] gives ordering but not a wait: its event is synced with the batch
//! it lands in, and [`AuditLog::close`] / [`AuditLog::flush`] wait for everything queued.
//!
//! If a write or sync fails, every caller in that batch gets the error and the log refuses every
//! later event ([`AuditError::Failed`], visible through [`AuditLog::health`]): the gateway then
//! refuses new sessions rather than run unaudited (fail closed).
//!
//! ## Reading
//!
//! [`events`] streams [`Entry`]s (line number, raw line, parsed [`Event`]) across segments;
//! [`read_all`] collects them and stops at the first bad line, naming file and line. The
//! `postern-audit search` binary is a thin layer over [`events`] and [`search::Filter`].
//!
//! ## What comes next
//!
//! A SHA-256 hash chain (`seq`, `prev`, `hash`) computed on the writer thread under the same
//! lock, signed checkpoints, segment rotation, crash recovery of a torn tail, `verify` and SIEM
//! export. The single append path in `store` and the `raw` line kept by the reader are where
//! those attach.

mod error;
mod event;
mod reader;
pub mod search;
mod store;
mod writer;

pub use error::AuditError;
pub use event::{
    now_rfc3339_micros, ConnectorRef, DecisionRef, EndpointRef, Event, EventType, SCHEMA_VERSION,
};
pub use reader::{events, read_all, Entry, Events};
pub use store::{append_sync, first_segment_path, segment_paths, FIRST_SEGMENT};
pub use writer::{AuditLog, AuditStats};
