//! Counters of the audit log, for metrics and health checks.
//!
//! A leaf module: both the writer (which owns the counters of what it wrote) and the syslog
//! forwarder (which owns the counters of what it delivered) fill [`AuditStats`], so the type
//! lives below both of them and neither has to know the other's internals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of an audit sink ([`crate::AuditLog`], [`crate::MemorySink`]), for metrics and
/// health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events written and synced (callers' events; the writer's own `audit.*` events are not
    /// counted here).
    pub written: u64,
    /// `record_nowait` events that were never queued (queue full or writer closed).
    pub dropped: u64,
    /// `record_nowait` events that were queued but could not be written (no caller to tell).
    pub failed: u64,
    /// Signed checkpoints written.
    pub checkpoints: u64,
    /// `seq` of the last event known to be on disk.
    pub head_seq: u64,
    /// Events delivered to the syslog server (written to its connection).
    pub forwarded: u64,
    /// Events that did not fit the forwarder's in-memory queue (SIEM slow or down). They are
    /// not lost: the forwarder reads them back from the local log when it catches up.
    pub forward_overflow: u64,
    /// Failed connection attempts and sends to the syslog server.
    pub forward_errors: u64,
    /// Events on disk not yet delivered to the syslog server (`head_seq` minus the last
    /// forwarded seq); grows while the SIEM is unreachable.
    pub forward_lag: u64,
    /// Whether the forwarder is connected to the syslog server right now.
    pub forward_connected: bool,
    /// Events the forwarder moved past without sending, because the message format has no
    /// message for them (ATNA: events without a mapping).
    pub forward_skipped: u64,
    /// Events sent again after a connection was reset (a repository may hold them twice).
    pub forward_resent: u64,
}

/// Counters shared between the syslog forwarder thread (which updates them) and
/// [`crate::AuditLog::stats`] (which reads them into an [`AuditStats`]).
#[derive(Debug, Default)]
pub(crate) struct ForwardStats {
    pub(crate) forwarded: AtomicU64,
    pub(crate) overflow: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// The last seq delivered (or, before any delivery, the cursor it resumes from).
    pub(crate) last_seq: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) skipped: AtomicU64,
    pub(crate) resent: AtomicU64,
}

impl ForwardStats {
    /// Copies the forwarder's counters into `stats`; `head_seq` is the writer's head, from
    /// which the lag is computed.
    pub(crate) fn fill(&self, stats: &mut AuditStats, head_seq: u64) {
        stats.forwarded = self.forwarded.load(Ordering::Relaxed);
        stats.forward_overflow = self.overflow.load(Ordering::Relaxed);
        stats.forward_errors = self.errors.load(Ordering::Relaxed);
        stats.forward_connected = self.connected.load(Ordering::Relaxed);
        stats.forward_skipped = self.skipped.load(Ordering::Relaxed);
        stats.forward_resent = self.resent.load(Ordering::Relaxed);
        stats.forward_lag = head_seq.saturating_sub(self.last_seq.load(Ordering::Relaxed));
    }
}
