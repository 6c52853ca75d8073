//! The seam through which the gateway writes audit events: [`AuditSink`].
//!
//! The gateway holds an `Arc<dyn AuditSink>`. In production that is the [`crate::AuditLog`]
//! (hash-chained, group-committed, durable); in tests of code that writes audit events it is a
//! [`MemorySink`], which keeps the events in memory and can be switched to fail so that the
//! fail-closed paths (no new sessions while the log cannot write) can be tested without
//! breaking a file system.
//!
//! The trait returns boxed futures ([`SinkFuture`]) rather than using `async fn`, so that it
//! stays object-safe without any extra dependency.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::AuditError;
use crate::event::{Event, EventType};
use crate::stats::AuditStats;

/// What [`AuditSink::record`], [`AuditSink::flush`] and [`AuditSink::close`] return.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send + 'a>>;

/// Where audit events go. Object-safe: hold it as `Arc<dyn AuditSink>`.
///
/// The contract is the one of [`crate::AuditLog`]: `record` is the durable path (use it where
/// the event must be on disk before acting, e.g. `session.start` before relaying a byte);
/// `record_nowait` keeps order but does not wait; once the sink has failed, `health` says so
/// and the caller refuses new work (fail closed). `audit.*` types are reserved for the log
/// itself and refused.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends `event`; resolves once it is durable (written and fdatasync'd).
    fn record(&self, event: Event) -> SinkFuture<'_>;
    /// Queues `event` without waiting (ordered; synced with its batch).
    fn record_nowait(&self, event: Event);
    /// Waits until everything queued so far is durable.
    fn flush(&self) -> SinkFuture<'_>;
    /// Flushes, writes a final checkpoint and refuses further events.
    fn close(&self) -> SinkFuture<'_>;
    /// Ok while events can be written; the error once the log has failed.
    fn health(&self) -> Result<(), AuditError>;
    /// Current counters.
    fn stats(&self) -> AuditStats;
}

/// The directory name a [`MemorySink`] puts into its errors (it has no directory).
const MEMORY_DIR: &str = "<memory>";

/// An in-memory [`AuditSink`], for tests of code that writes audit events.
///
/// Events are kept in order in a `Mutex<Vec<Event>>`; read them back with
/// [`MemorySink::events`] or [`MemorySink::of_type`]. Each kept event gets `seq` = its
/// position (1, 2, ...), as the real writer would; there is no hash chain (`prev` and `hash`
/// stay as the caller left them), nothing touches a disk, and `record` is "durable" as soon as
/// the event is in the vector.
///
/// It behaves like [`crate::AuditLog`] where callers can tell: reserved `audit.*` types are
/// refused; after [`AuditSink::close`], `record` and `flush` fail with
/// [`AuditError::Closed`] and `record_nowait` counts a drop; while failing (see
/// [`MemorySink::set_failing`]) every write fails, nothing is kept, `health` returns the error
/// and `record_nowait` counts a failure. Unlike the real log's, the failure is a switch that
/// can be turned off again, so a test can also check what happens after the log recovers.
#[derive(Debug, Default)]
pub struct MemorySink {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    events: Vec<Event>,
    /// `Some` while the sink is switched to fail: the error every write gets.
    failure: Option<AuditError>,
    closed: bool,
    /// `record_nowait` events refused after close.
    dropped: u64,
    /// `record_nowait` events refused while failing (or for a reserved type).
    failed: u64,
}

impl MemorySink {
    /// An empty sink that accepts events.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// An empty sink behind an `Arc`, ready to be handed out as `Arc<dyn AuditSink>` while the
    /// test keeps a clone to inspect.
    pub fn shared() -> Arc<MemorySink> {
        Arc::new(MemorySink::new())
    }

    /// Every event kept so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// The kept events of type `kind`, in order.
    pub fn of_type(&self, kind: EventType) -> Vec<Event> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.kind == kind.as_str())
            .cloned()
            .collect()
    }

    /// Switches failing on or off. While on, every write fails with an
    /// [`AuditError::Failed`] (as the real log reports a failed write), nothing is kept and
    /// [`AuditSink::health`] returns that error. Use [`MemorySink::fail_with`] for a specific
    /// error.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failure = failing.then(|| AuditError::Failed {
            dir: PathBuf::from(MEMORY_DIR),
            source: Box::new(AuditError::Write {
                path: PathBuf::from(MEMORY_DIR),
                source: Arc::new(io::Error::other("MemorySink switched to fail")),
            }),
        });
    }

    /// Makes every later write fail with `error` (until [`MemorySink::set_failing`]`(false)`).
    pub fn fail_with(&self, error: AuditError) {
        self.lock().failure = Some(error);
    }

    /// Whether [`AuditSink::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The state, even if a test thread panicked while holding the lock (the state is a plain
    /// vector and counters; there is no invariant a panic could have broken half-way).
    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_error() -> AuditError {
        AuditError::Closed {
            dir: PathBuf::from(MEMORY_DIR),
        }
    }

    /// Keeps `event` or says why not; shared by `record` and `record_nowait`.
    fn push(state: &mut MemoryState, mut event: Event) -> Result<(), AuditError> {
        if state.closed {
            return Err(MemorySink::closed_error());
        }
        if let Some(e) = &state.failure {
            return Err(e.clone());
        }
        if EventType::is_reserved(&event.kind) {
            return Err(AuditError::Reserved { kind: event.kind });
        }
        event.bound_lengths();
        event.seq = Some(state.events.len() as u64 + 1);
        state.events.push(event);
        Ok(())
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: Event) -> SinkFuture<'_> {
        let result = MemorySink::push(&mut self.lock(), event);
        Box::pin(std::future::ready(result))
    }

    fn record_nowait(&self, event: Event) {
        let mut state = self.lock();
        match MemorySink::push(&mut state, event) {
            Ok(()) => {}
            Err(AuditError::Closed { .. }) => state.dropped += 1,
            Err(_) => state.failed += 1,
        }
    }

    fn flush(&self) -> SinkFuture<'_> {
        let state = self.lock();
        let result = if state.closed {
            Err(MemorySink::closed_error())
        } else {
            state.failure.clone().map_or(Ok(()), Err)
        };
        Box::pin(std::future::ready(result))
    }

    fn close(&self) -> SinkFuture<'_> {
        let mut state = self.lock();
        state.closed = true;
        // As the real log: closing reports whether the log is healthy; closing twice is fine.
        let result = state.failure.clone().map_or(Ok(()), Err);
        Box::pin(std::future::ready(result))
    }

    fn health(&self) -> Result<(), AuditError> {
        self.lock().failure.clone().map_or(Ok(()), Err)
    }

    fn stats(&self) -> AuditStats {
        let state = self.lock();
        let kept = state.events.len() as u64;
        AuditStats {
            written: kept,
            dropped: state.dropped,
            failed: state.failed,
            head_seq: kept,
            ..AuditStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(kind: EventType, user: &str) -> Event {
        Event {
            user: Some(user.into()),
            ..Event::new(kind)
        }
    }

    /// Compiles only if the trait is object-safe and its futures are `Send`.
    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn memory_sink_keeps_events_in_order_with_seq() {
        let mem = MemorySink::shared();
        let sink: Arc<dyn AuditSink> = mem.clone();
        let fut = sink.record(session(EventType::SessionStart, "ann"));
        assert_send(&fut);
        fut.await.unwrap();
        sink.record_nowait(session(EventType::SessionEnd, "ann"));
        sink.record(session(EventType::SessionStart, "bob"))
            .await
            .unwrap();
        sink.flush().await.unwrap();
        sink.health().unwrap();

        let events = mem.events();
        let seen: Vec<(Option<u64>, &str, Option<&str>)> = events
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), e.user.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some(1), "session.start", Some("ann")),
                (Some(2), "session.end", Some("ann")),
                (Some(3), "session.start", Some("bob")),
            ]
        );
        let starts = mem.of_type(EventType::SessionStart);
        assert_eq!(starts.len(), 2);
        assert!(starts.iter().all(|e| e.kind == "session.start"));
        assert!(mem.of_type(EventType::AuthLogin).is_empty());
        assert_eq!(
            sink.stats(),
            AuditStats {
                written: 3,
                head_seq: 3,
                ..AuditStats::default()
            }
        );
    }

    #[tokio::test]
    async fn memory_sink_fails_closed_while_switched_to_fail_and_recovers() {
        let mem = MemorySink::new();
        mem.record(session(EventType::SessionStart, "ann"))
            .await
            .unwrap();
        mem.set_failing(true);

        let err = mem
            .record(session(EventType::SessionStart, "bob"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Failed { .. }), "{err:?}");
        assert!(err.to_string().contains("unusable"), "{err}");
        assert!(matches!(mem.health(), Err(AuditError::Failed { .. })));
        assert!(mem.flush().await.is_err());
        mem.record_nowait(session(EventType::SessionEnd, "bob"));
        assert_eq!(mem.stats().failed, 1);
        // Nothing written while failing was kept.
        assert_eq!(mem.events().len(), 1);

        mem.fail_with(AuditError::Closed {
            dir: PathBuf::from("/var/lib/postern/audit"),
        });
        let err = mem.health().unwrap_err();
        assert!(err.to_string().contains("/var/lib/postern/audit"), "{err}");

        mem.set_failing(false);
        mem.health().unwrap();
        mem.record(session(EventType::SessionStart, "cat"))
            .await
            .unwrap();
        let users: Vec<_> = mem.events().into_iter().filter_map(|e| e.user).collect();
        assert_eq!(users, ["ann", "cat"]);
        assert_eq!(mem.events()[1].seq, Some(2));
    }

    #[tokio::test]
    async fn memory_sink_refuses_reserved_types_and_events_after_close() {
        let mem = MemorySink::new();
        let err = mem
            .record(Event::new(EventType::AuditCheckpoint))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AuditError::Reserved { kind } if kind == "audit.checkpoint"),
            "{err:?}"
        );
        mem.record_nowait(Event::new(EventType::AuditStarted));
        assert_eq!(mem.stats().failed, 1);

        mem.record(session(EventType::SessionStart, "ann"))
            .await
            .unwrap();
        mem.close().await.unwrap();
        assert!(mem.is_closed());
        mem.close().await.unwrap(); // twice is harmless
        let err = mem
            .record(session(EventType::SessionStart, "bob"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Closed { .. }), "{err:?}");
        assert!(matches!(mem.flush().await, Err(AuditError::Closed { .. })));
        mem.record_nowait(session(EventType::SessionEnd, "ann"));
        let stats = mem.stats();
        assert_eq!((stats.written, stats.dropped, stats.failed), (1, 1, 1));
        // Closed but not failed: healthy, as the real log after a clean close.
        mem.health().unwrap();
        assert_eq!(mem.events().len(), 1);
    }

    #[tokio::test]
    async fn a_failing_memory_sink_reports_the_failure_on_close() {
        let mem = MemorySink::new();
        mem.set_failing(true);
        assert!(matches!(mem.close().await, Err(AuditError::Failed { .. })));
        assert!(mem.is_closed());
    }
}
