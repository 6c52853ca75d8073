//! The gateway's audit writer: a handle ([`AuditLog`]) feeding one dedicated thread that owns
//! the segment file and commits events in groups.
//!
//! ```text
//!  record(ev) ──┐                       writer thread
//!  record(ev) ──┼─ mpsc (bounded) ──▶  take one command, drain what else is queued (capped),
//!  record_nowait┘                       encode into one buffer, Segment::append (lock, one
//!                                       write_all, fdatasync, unlock), answer every waiter
//! ```
//!
//! A dedicated thread rather than `spawn_blocking` per batch: the file stays open, there is no
//! per-batch task hand-off, and the thread blocks on the channel when idle.
//!
//! Failure is sticky: once a batch cannot be written or synced, every waiter of that batch gets
//! the error and every later event is refused with [`AuditError::Failed`], so the gateway fails
//! closed (no new sessions) instead of relaying traffic it cannot audit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::error::AuditError;
use crate::event::Event;
use crate::store::{encode_line, Segment};

/// How many commands may wait for the writer before `record` waits and `record_nowait` drops.
const QUEUE_CAPACITY: usize = 16 * 1024;
/// At most this many events go into one write (bounds latency of the first waiter).
const MAX_BATCH_EVENTS: usize = 1024;
/// A batch is committed once its buffer reaches this size.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Reply = oneshot::Sender<Result<(), AuditError>>;

enum Command {
    /// Append one event; `done` is `None` for `record_nowait`. Boxed: an `Event` is ~560 bytes
    /// and every queue slot would otherwise be that large.
    Append {
        event: Box<Event>,
        done: Option<Reply>,
    },
    /// Answer once everything queued before it is on disk.
    Flush(Reply),
    /// Commit everything queued before it, answer, stop.
    Close(Reply),
}

/// Counters of an [`AuditLog`], for metrics and health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events written and synced.
    pub written: u64,
    /// `record_nowait` events that were never queued (queue full or writer closed).
    pub dropped: u64,
    /// `record_nowait` events that were queued but could not be written (no caller to tell).
    pub failed: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// The first write/sync failure; once set, the log refuses everything (fail closed).
    failure: OnceLock<AuditError>,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn failed_error(&self) -> Option<AuditError> {
        self.failure.get().map(|e| AuditError::Failed {
            dir: self.dir.clone(),
            source: Box::new(e.clone()),
        })
    }

    fn closed_error(&self) -> AuditError {
        AuditError::Closed {
            dir: self.dir.clone(),
        }
    }
}

/// Handle to the audit log of one directory. Cheap to clone; all clones feed the same writer.
///
/// Dropping every handle without [`AuditLog::close`] still writes what was queued (the writer
/// drains the channel before it stops), but only `close` lets the caller wait for it.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl AuditLog {
    /// Opens (creating) the log in `dir` and starts its writer thread. Fails if the directory or
    /// the segment cannot be created or opened, so a gateway that cannot audit does not start.
    pub async fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            failure: OnceLock::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (opened_tx, opened_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("postern-audit".into())
            .spawn(move || {
                // Open on the writer thread: file system calls never block the runtime.
                let segment = match Segment::open(&thread_shared.dir) {
                    Ok(segment) => segment,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                if opened_tx.send(Ok(())).is_ok() {
                    Writer {
                        segment,
                        shared: thread_shared,
                        rx,
                    }
                    .run();
                }
            })
            .map_err(|e| AuditError::spawn(dir, e))?;
        match opened_rx.await {
            Ok(Ok(())) => Ok(AuditLog { tx, shared }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(shared.closed_error()),
        }
    }

    /// Appends `event` and returns once it is on disk (written and `fdatasync`ed). Use it where
    /// the event must be durable before acting, e.g. `session.start` before relaying any byte.
    /// An error means the event may not be on disk; treat the log as failed.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        if let Some(e) = self.shared.failed_error() {
            return Err(e);
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Command::Append {
                event: Box::new(event),
                done: Some(done),
            })
            .await
            .map_err(|_| self.shared.closed_error())?;
        answer.await.map_err(|_| self.shared.closed_error())?
    }

    /// Queues `event` without waiting: it is written in order with the events around it and
    /// synced with its batch. Never blocks. If the queue is full or the writer is closed the
    /// event is dropped and counted in [`AuditStats::dropped`]; if its batch fails, it is counted
    /// in [`AuditStats::failed`]. Both are logged with `tracing` at error level.
    pub fn record_nowait(&self, event: Event) {
        if let Err(e) = self.tx.try_send(Command::Append {
            event: Box::new(event),
            done: None,
        }) {
            let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "writer closed",
            };
            tracing::error!(dir = %self.shared.dir.display(), why, dropped, "audit event dropped");
        }
    }

    /// Waits until every event queued before this call is on disk.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .await
            .map_err(|_| self.shared.closed_error())?;
        answer.await.map_err(|_| self.shared.closed_error())?
    }

    /// Writes everything queued, then stops the writer (call at shutdown). Later `record`s fail
    /// with [`AuditError::Closed`]. Returns the sticky error if any write ever failed, so a
    /// shutdown can report that events were lost. Calling it again is harmless.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_err() {
            // Already closed by another handle.
            return self.health();
        }
        answer.await.map_err(|_| self.shared.closed_error())?
    }

    /// `Err` once a write has failed (the log refuses events from then on).
    pub fn health(&self) -> Result<(), AuditError> {
        match self.shared.failed_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }

    /// The directory this log writes to.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// State of the writer thread.
struct Writer {
    segment: Segment,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
}

/// What one batch collected.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    events: u64,
    nowait_events: u64,
    waiters: Vec<Reply>,
    close: Option<Reply>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Batch::default();
        while let Some(first) = self.rx.blocking_recv() {
            self.collect(first, &mut batch);
            let result = self.commit(&batch);
            for waiter in batch.waiters.drain(..) {
                // A waiter that gave up (its future was dropped) needs no answer.
                let _ = waiter.send(result.clone());
            }
            if let Some(done) = batch.close.take() {
                self.shut_down(done);
                return;
            }
            batch.buf.clear();
            batch.events = 0;
            batch.nowait_events = 0;
        }
        // Every handle was dropped: everything queued has been written above.
    }

    /// Adds `first` and whatever else is already queued (up to the caps) to `batch`.
    fn collect(&mut self, first: Command, batch: &mut Batch) {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { event, done } => self.add(event, done, batch),
                Command::Flush(done) => batch.waiters.push(done),
                Command::Close(done) => {
                    batch.close = Some(done);
                    return;
                }
            }
            if batch.events as usize >= MAX_BATCH_EVENTS || batch.buf.len() >= MAX_BATCH_BYTES {
                return;
            }
            next = self.rx.try_recv().ok();
        }
    }

    fn add(&self, event: Box<Event>, done: Option<Reply>, batch: &mut Batch) {
        if let Some(e) = self.shared.failed_error() {
            // Fail closed: nothing more goes to a log whose state is unknown.
            self.reject(done, e);
            return;
        }
        match encode_line(&event, &mut batch.buf) {
            Ok(()) => {
                batch.events += 1;
                match done {
                    Some(done) => batch.waiters.push(done),
                    None => batch.nowait_events += 1,
                }
            }
            Err(e) => self.reject(done, e),
        }
    }

    fn reject(&self, done: Option<Reply>, error: AuditError) {
        match done {
            Some(done) => {
                let _ = done.send(Err(error));
            }
            None => {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes and syncs the batch. Errors become sticky.
    fn commit(&self, batch: &Batch) -> Result<(), AuditError> {
        if let Some(e) = self.shared.failed_error() {
            return Err(e);
        }
        match self.segment.append(&batch.buf) {
            Ok(()) => {
                self.shared
                    .written
                    .fetch_add(batch.events, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.shared
                    .failed
                    .fetch_add(batch.nowait_events, Ordering::Relaxed);
                tracing::error!(
                    path = %self.segment.path().display(),
                    error = %e,
                    events = batch.events,
                    "audit write failed; refusing further audit events"
                );
                // This thread is the only one that sets `failure`, and it stops writing once it
                // is set, so this is the first failure.
                let _ = self.shared.failure.set(e.clone());
                Err(e)
            }
        }
    }

    /// Answers the close, then refuses whatever raced in behind it.
    fn shut_down(mut self, done: Reply) {
        self.rx.close();
        let _ = done.send(self.health());
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Append { done, .. } => {
                    let closed = self.shared.closed_error();
                    match done {
                        Some(done) => {
                            let _ = done.send(Err(closed));
                        }
                        None => {
                            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(dir = %self.shared.dir.display(), "audit event dropped: writer closed");
                        }
                    }
                }
                Command::Flush(done) | Command::Close(done) => {
                    let _ = done.send(self.health());
                }
            }
        }
    }

    fn health(&self) -> Result<(), AuditError> {
        match self.shared.failed_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
