#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! # postern-audit
//!
//! The audit trail of Postern: who reached which endpoint, when, from which device, under which
//! policy rule, for how long and with how many bytes; which connectors came and went; which
//! tokens were issued; which admin commands were run. The gateway writes it; admin CLI commands
//! append to it; auditors verify, search and export it. The full format is in `docs/audit.md`.
//!
//! ## Layout on disk
//!
//! ```text
//! DIR/                    0700, created if missing
//!   audit.jsonl           0600, segment 1: JSON Lines, one Event per line, append-only
//!   audit.000002.jsonl    segment 2, ... (rotation by size/age; the chain runs across them)
//!   audit.lock            the flock every appending process takes
//!   audit.head            the latest signed checkpoint (a witness line), replaced by rename
//!   syslog.cursor         the last seq delivered to the syslog server (with forwarding)
//! STATE_DIR/audit-key.pk8 0600, the Ed25519 key that signs checkpoints (AuditKey::load_or_create)
//! ```
//!
//! ## Module map and flow
//!
//! Lower modules first; each module uses only modules above it in this list, so there is no
//! cycle between any two of them.
//!
//! * `error`: [`AuditError`], one enum for the crate.
//! * `event`: the schema ([`Event`], [`EventType`], [`DecisionRef`], ...). Readers ignore
//!   unknown fields and keep `type` as a string, so old readers read new logs.
//! * `hexfmt`: hex encoding of hashes, keys and signatures.
//! * `stats`: [`AuditStats`], the counters a sink reports (the writer and the syslog forwarder
//!   each fill their part).
//! * `chain`: canonical bytes, `hash = SHA-256(prev || canonical)`, the checkpoint message.
//! * `store`: segments, the lock, finding the chain head, cutting a torn tail, the one append
//!   path ([`append_sync`] and the writer both go through it).
//! * `key`: [`AuditKey`] (private, in the gateway's state dir) and [`AuditPublicKey`].
//! * `witness`: a checkpoint as one line for an outside witness ([`Witness`]).
//! * `head_check`: at open, does the log still reach the checkpoint `audit.head` names? (A log
//!   cut short is refused unless [`AuditOptions::accept_truncation`].)
//! * `sink`: the [`AuditSink`] trait, the seam through which the gateway writes events (held
//!   as `Arc<dyn AuditSink>`), and [`MemorySink`], an in-memory sink for tests that can be
//!   switched to fail.
//! * [`atna`]: events mapped to the DICOM audit vocabulary (PS3.15 A.5.3) and written as ATNA
//!   `AuditMessage` XML; [`fhir`]: the same mapping as FHIR R4 `AuditEvent` resources (IHE
//!   BALP). `syslog` uses `atna` for its ITI-20 message format, so both come before it.
//! * `syslog`: RFC 5424 over TCP/TLS (client certificates; the stored JSON line or an ITI-20
//!   ATNA message); the live forwarder behind a bounded queue that resumes
//!   from the local log.
//! * `writer`: [`AuditLog`], the production [`AuditSink`]: a handle feeding a dedicated thread
//!   that does **group commit** (one `write_all` + `fdatasync` per batch), rotation, and signed
//!   checkpoints every N events or T seconds and at [`AuditLog::close`]; it offers committed
//!   lines to the syslog forwarder.
//! * `reader`: streaming readers of one log: every line ([`RawLines`], [`events`]), or only the
//!   lines holding a search term, read in large chunks.
//! * [`logset`]: several logs read together, one per gateway replica ([`logset::LogSet`]):
//!   refuses the same log given twice, names each log (its *replica label*), and merges their
//!   events by time (a k-way merge, one event held per log).
//! * [`verify`], [`search`], [`sessions`], [`access`]: what `postern-audit` does, over one log
//!   or several.
//! * [`visits`]: sessions grouped into visits (one clinician, one endpoint, one sign-in), what
//!   `sessions` lists by default; [`report`]: per-user and break-glass summaries (text, CSV,
//!   HTML) made of visits.
//!
//! ## The durability promise
//!
//! [`AuditLog::record`] and [`append_sync`] return `Ok` only after the event's line has been
//! written **and** `fdatasync`ed (and, when a file is new, its directory entry synced). The
//! gateway records `session.start` with `record` before it relays the first byte of a session.
//! [`AuditLog::record_nowait`] gives ordering but not a wait: its event is synced with the batch
//! it lands in, and [`AuditLog::close`] / [`AuditLog::flush`] wait for everything queued.
//!
//! If a write or sync fails, every caller in that batch gets the error and the log refuses every
//! later event ([`AuditError::Failed`], visible through [`AuditLog::health`]): the gateway then
//! refuses new sessions rather than run unaudited (fail closed). A crash mid-write leaves at most
//! an incomplete last line; the next writer (or `append_sync`) cuts exactly those bytes, records
//! `audit.recovered`, and continues the chain.
//!
//! ## Several writers
//!
//! Every append takes the exclusive lock, then checks (by segment and length) whether anyone
//! else appended since this process last wrote; if so it re-reads the chain head from the file.
//! So a gateway and any number of admin commands interleave on one chain.

pub mod access;
pub mod atna;
mod chain;
mod error;
mod event;
pub mod fhir;
mod head_check;
mod hexfmt;
mod key;
pub mod logset;
mod reader;
pub mod report;
pub mod search;
pub mod sessions;
mod sink;
mod stats;
mod store;
pub mod syslog;
pub mod verify;
pub mod visits;
mod witness;
mod writer;

pub use chain::{canonical_bytes, checkpoint_message, line_hash, GENESIS};
pub use error::AuditError;
pub use event::{
    now_rfc3339_micros, AuditMeta, ConnectorRef, DecisionRef, DeviceRef, EndpointRef, Event,
    EventType, HttpRef, ObjectRef, RefusedSummary, SCHEMA_VERSION,
};
pub use key::{audit_key_path, AuditKey, AuditPublicKey, AUDIT_KEY_FILE};
pub use reader::{events, parse_line, read_all, Entry, Events, RawLine, RawLines};
pub use sink::{AuditSink, MemorySink, SinkFuture};
pub use stats::AuditStats;
pub use store::{
    append_sync, first_segment_path, parse_segment_name, segment_file_name, segment_paths,
    FIRST_SEGMENT, HEAD_FILE, LOCK_FILE,
};
pub use syslog::{SyslogOptions, SyslogTls};
pub use witness::{Witness, WITNESS_FORMAT};
pub use writer::{AuditLog, AuditOptions};
