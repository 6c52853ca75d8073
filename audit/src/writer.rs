//! The gateway's audit writer: a handle ([`AuditLog`]) feeding one dedicated thread that owns
//! the log and commits events in groups.
//!
//! ```text
//!  record(ev) ──┐                       writer thread
//!  record(ev) ──┼─ mpsc (bounded) ──▶  take one command, drain what else is queued (capped);
//!  record_nowait┘                       lock; observe the active segment (someone else appended?
//!                                       torn tail?); rotate if due; chain + encode the batch
//!                                       (+ a signed checkpoint if due) into one buffer; one
//!                                       write_all; fdatasync; unlock; answer every waiter;
//!                                       offer the lines to the syslog forwarder (never waits)
//! ```
//!
//! A dedicated thread rather than `spawn_blocking` per batch: the files stay open, there is no
//! per-batch task hand-off, and the thread sleeps on the channel (or the checkpoint timer) when
//! idle. It runs a small current-thread runtime only to wait on both.
//!
//! Failure is sticky: once a batch cannot be written or synced, every waiter of that batch gets
//! the error and every later event is refused with [`AuditError::Failed`], so the gateway fails
//! closed (no new sessions) instead of relaying traffic it cannot audit.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::chain::checkpoint_message;
use crate::error::AuditError;
use crate::event::{AuditMeta, Event, EventType};
use crate::head_check::{check_head, HeadCheck};
use crate::hexfmt::hex;
use crate::key::AuditKey;
use crate::sink::{AuditSink, SinkFuture};
use crate::stats::{AuditStats, ForwardStats};
use crate::store::{encode_event, write_atomic, Head, Store, HEAD_FILE};
use crate::syslog::{Forwarder, SyslogOptions};
use crate::witness::Witness;

/// How many commands may wait for the writer before `record` waits.
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Queue slots kept free for events that must not be lost: a sheddable event
/// ([`EventType::sheddable`]) offered by `record_nowait` is dropped (and counted) once fewer
/// than this many slots are free, so a burst of refusals can never take the room a sign-in, a
/// revocation or a `session.start` needs.
const RESERVED_SLOTS: usize = QUEUE_CAPACITY / 4;
/// At most this many events go into one write (bounds latency of the first waiter).
const MAX_BATCH_EVENTS: usize = 1024;

/// How an [`AuditLog`] writes: signing, checkpoints, rotation, forwarding.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Ed25519 key that signs checkpoints (see [`AuditKey::load_or_create`]). Without a key the
    /// log is still hash-chained, but no checkpoints are written, so a log cut short (or
    /// rewritten from some point on by someone who recomputes the hashes) is not detected.
    pub signing_key: Option<AuditKey>,
    /// Write a checkpoint once this many events were appended since the last one (0: never by
    /// count). Default 10,000.
    pub checkpoint_events: u64,
    /// Write a checkpoint when this much time passed since the last one and events were
    /// appended meanwhile (zero: never by time). Default 60 s. Bounds how much of a running
    /// log can be removed from its end without a witness noticing.
    pub checkpoint_interval: Duration,
    /// Start a new segment before a batch once the active one holds this many bytes (0: never).
    /// Default 128 MiB.
    pub segment_max_bytes: u64,
    /// Start a new segment once the active one's first event is this old (zero: never).
    /// Default 24 h.
    pub segment_max_age: Duration,
    /// Written into `gateway` of every event that has none, and of the writer's own events.
    pub node_id: Option<String>,
    /// Also forward every event to a syslog server (RFC 5424 over TCP or TLS). Never slows or
    /// blocks the local write.
    pub syslog: Option<SyslogOptions>,
    /// Continue a log found shorter than the checkpoint its `audit.head` names (events were
    /// removed from its end) instead of refusing to open it: the writer first records
    /// `audit.truncation_detected` naming both `seq`s, then a signed checkpoint, so the loss is
    /// part of the signed history and `verify` reports it. Off by default; the gateway sets it
    /// only for `run --accept-truncated-audit`.
    pub accept_truncation: bool,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            signing_key: None,
            checkpoint_events: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            segment_max_bytes: 128 * 1024 * 1024,
            segment_max_age: Duration::from_secs(24 * 3600),
            node_id: None,
            syslog: None,
            accept_truncation: false,
        }
    }
}

type Reply = oneshot::Sender<Result<(), AuditError>>;

enum Command {
    /// Append one event; `done` is `None` for `record_nowait`. Boxed: an `Event` is large and
    /// every queue slot would otherwise be that large.
    Append {
        event: Box<Event>,
        done: Option<Reply>,
    },
    /// Answer once everything queued before it is on disk.
    Flush(Reply),
    /// Commit everything queued before it (and a closing checkpoint), answer, stop.
    Close(Reply),
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// The first write/sync failure; once set, the log refuses everything (fail closed).
    failure: OnceLock<AuditError>,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    checkpoints: AtomicU64,
    head_seq: AtomicU64,
    forwarder: OnceLock<Arc<ForwardStats>>,
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
/// drains the channel before it stops), but only `close` lets the caller wait for it, and only
/// `close` writes the closing checkpoint.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl AuditLog {
    /// Opens (creating) the log in `dir` with [`AuditOptions::default`] (no signing key: no
    /// checkpoints) and starts its writer thread. See [`AuditLog::open_with`].
    pub async fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(dir, AuditOptions::default()).await
    }

    /// Opens (creating) the log in `dir` and starts its writer thread. Under the lock it finds
    /// the chain head, cuts a torn tail left by a crash (recording `audit.recovered`), and
    /// durably records `audit.started` before returning. Fails if the directory or segment
    /// cannot be created, opened or written, or the chain cannot be continued, so a gateway
    /// that cannot audit does not start.
    pub async fn open_with(dir: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            failure: OnceLock::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            head_seq: AtomicU64::new(0),
            forwarder: OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (opened_tx, opened_rx) = oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("postern-audit".into())
            .spawn(move || {
                // Open on the writer thread: file system calls never block the caller's runtime.
                match Writer::start(thread_shared, options, rx) {
                    Ok((writer, runtime)) => {
                        if opened_tx.send(Ok(())).is_ok() {
                            writer.run(&runtime);
                        } else {
                            writer.stop_forwarder();
                        }
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
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
    /// An error means the event may not be on disk; treat the log as failed. `audit.*` types
    /// are refused ([`AuditError::Reserved`]): only the writer writes them.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        if let Some(e) = self.shared.failed_error() {
            return Err(e);
        }
        if EventType::is_reserved(&event.kind) {
            return Err(AuditError::Reserved { kind: event.kind });
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
    /// synced with its batch. Never blocks the caller.
    ///
    /// A *sheddable* event ([`EventType::sheddable`]: per-request refusals) is dropped when
    /// fewer than `RESERVED_SLOTS` queue slots are free, and counted in
    /// [`AuditStats::dropped`]. Any other event is never shed: if the queue is full it waits
    /// for room in a task of its own (back-pressure on the writer, not on the caller), so it
    /// may land after events queued later. Only a closed writer drops one (counted likewise).
    /// If its batch fails (or it is a reserved `audit.*` type), it is counted in
    /// [`AuditStats::failed`]. Drops and failures are logged with `tracing` at error level.
    pub fn record_nowait(&self, event: Event) {
        let sheddable = EventType::sheddable(&event.kind);
        if sheddable && self.tx.capacity() < RESERVED_SLOTS {
            self.note_dropped("queue nearly full: refusal shed");
            return;
        }
        let command = Command::Append {
            event: Box::new(event),
            done: None,
        };
        match self.tx.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.note_dropped("writer closed"),
            Err(mpsc::error::TrySendError::Full(_)) if sheddable => self.note_dropped("queue full"),
            Err(mpsc::error::TrySendError::Full(command)) => self.wait_for_room(command),
        }
    }

    /// Hands an event that must not be shed to a task that waits for queue room (or, outside
    /// a tokio runtime, waits right here).
    fn wait_for_room(&self, command: Command) {
        tracing::warn!(dir = %self.shared.dir.display(), "audit queue full: a security event waits for room");
        let tx = self.tx.clone();
        let shared = Arc::clone(&self.shared);
        let lost = move || {
            let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dir = %shared.dir.display(), why = "writer closed", dropped, "audit event dropped");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if tx.send(command).await.is_err() {
                        lost();
                    }
                });
            }
            Err(_) => {
                if tx.blocking_send(command).is_err() {
                    lost();
                }
            }
        }
    }

    fn note_dropped(&self, why: &'static str) {
        let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(dir = %self.shared.dir.display(), why, dropped, "audit event dropped");
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

    /// Writes everything queued and a closing checkpoint (with a signing key), gives the syslog
    /// forwarder a moment to deliver, then stops the writer (call at shutdown). Later `record`s
    /// fail with [`AuditError::Closed`]. Returns the sticky error if any write ever failed, so a
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
        let head_seq = self.shared.head_seq.load(Ordering::Relaxed);
        let mut stats = AuditStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
            head_seq,
            ..AuditStats::default()
        };
        if let Some(f) = self.shared.forwarder.get() {
            f.fill(&mut stats, head_seq);
        }
        stats
    }

    /// The directory this log writes to.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// The production [`AuditSink`]: every method delegates to the inherent method of the same
/// name, so the durability and fail-closed promises are exactly those documented there.
impl AuditSink for AuditLog {
    fn record(&self, event: Event) -> SinkFuture<'_> {
        Box::pin(AuditLog::record(self, event))
    }

    fn record_nowait(&self, event: Event) {
        AuditLog::record_nowait(self, event);
    }

    fn flush(&self) -> SinkFuture<'_> {
        Box::pin(AuditLog::flush(self))
    }

    fn close(&self) -> SinkFuture<'_> {
        Box::pin(AuditLog::close(self))
    }

    fn health(&self) -> Result<(), AuditError> {
        AuditLog::health(self)
    }

    fn stats(&self) -> AuditStats {
        AuditLog::stats(self)
    }
}

/// State of the writer thread.
struct Writer {
    store: Store,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    options: AuditOptions,
    /// Public key hex, when signing.
    key_hex: Option<String>,
    /// `seq` of the last checkpoint (this run's, or the one `audit.head` names).
    last_checkpoint_seq: u64,
    last_checkpoint_at: Instant,
    forwarder: Option<Forwarder>,
    buf: Vec<u8>,
    /// A checkpoint to record in `audit.head` once the waiters have their answer.
    pending_head: Option<Witness>,
}

/// What one batch collected.
#[derive(Default)]
struct Batch {
    events: Vec<(Box<Event>, Option<Reply>)>,
    /// Waiters of the whole batch (flush, and record callers whose event was encoded).
    waiters: Vec<Reply>,
    nowait_events: u64,
    close: Option<Reply>,
}

/// Why the writer thread is committing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Events,
    Timer,
    Close,
    /// The opening commit after an accepted truncation: always ends with a checkpoint.
    Truncation,
}

impl Writer {
    fn start(
        shared: Arc<Shared>,
        options: AuditOptions,
        rx: mpsc::Receiver<Command>,
    ) -> Result<(Writer, tokio::runtime::Runtime), AuditError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| AuditError::spawn(&shared.dir, e))?;
        let store = Store::open(&shared.dir)?;
        let key_hex = options
            .signing_key
            .as_ref()
            .map(|k| k.public_key().to_hex());
        let mut writer = Writer {
            store,
            shared,
            rx,
            options,
            key_hex,
            last_checkpoint_seq: 0,
            last_checkpoint_at: Instant::now(),
            forwarder: None,
            buf: Vec::with_capacity(256 * 1024),
            pending_head: None,
        };
        let head_path = writer.shared.dir.join(HEAD_FILE);
        let head_text = std::fs::read_to_string(&head_path).ok();
        let head = head_text.as_deref().and_then(|t| Witness::parse(t).ok());
        match head_text {
            Some(_) => {
                if let Some(w) = &head {
                    writer.last_checkpoint_seq = w.seq;
                }
            }
            None => {
                if let Some(key) = &writer.key_hex {
                    // Before any checkpoint can exist, so audit.head is never missing beside one.
                    let none = Witness::none(
                        writer.options.node_id.as_deref().unwrap_or(""),
                        key,
                        &crate::event::now_rfc3339_micros(),
                    );
                    let mut line = none.to_line();
                    line.push('\n');
                    crate::store::ensure_dir(&writer.shared.dir)?;
                    write_atomic(&writer.shared.dir, &head_path, line.as_bytes())
                        .map_err(|e| AuditError::write(&head_path, e))?;
                }
            }
        }
        let truncation = writer.check_head(head.as_ref())?;
        // The opening commit: recovery (if any) and audit.started, durable before we return.
        let mut started = Event::new(EventType::AuditStarted);
        started.detail = Some(format!(
            "audit writer started (pid {}); checkpoints {}",
            std::process::id(),
            if writer.options.signing_key.is_some() {
                "signed"
            } else {
                "off: no signing key"
            }
        ));
        if let Some(key) = &writer.key_hex {
            started.audit = Some(AuditMeta {
                key: Some(key.clone()),
                ..AuditMeta::default()
            });
        }
        let start_seq = {
            let mut batch = Batch::default();
            let mut trigger = Trigger::Events;
            if let Some((log_seq, event)) = truncation {
                // The loss goes on record first, and is signed at once (a new audit.head).
                batch.events.push((Box::new(event), None));
                writer.last_checkpoint_seq = log_seq;
                trigger = Trigger::Truncation;
            }
            batch.events.push((Box::new(started), None));
            let first = writer.commit_inner(&mut batch, trigger)?;
            writer.after_commit();
            first.map_or(writer.store.head().seq, |seq| seq - 1)
        };
        if let Some(syslog) = &writer.options.syslog {
            let forwarder = Forwarder::start(
                &writer.shared.dir,
                syslog.clone(),
                writer.options.node_id.clone(),
                start_seq,
            )?;
            let _ = writer.shared.forwarder.set(forwarder.stats());
            writer.forwarder = Some(forwarder);
        }
        Ok((writer, runtime))
    }

    /// At open: does the log still reach the checkpoint `audit.head` names? A lagging head is
    /// brought up to date; a cut log is refused, or, with `accept_truncation`, yields the
    /// `audit.truncation_detected` event to record first (and the `seq` the log ends at).
    fn check_head(&mut self, head: Option<&Witness>) -> Result<Option<(u64, Event)>, AuditError> {
        let key = self.options.signing_key.as_ref().map(AuditKey::public_key);
        match check_head(&self.shared.dir, head, key.as_ref())? {
            HeadCheck::Consistent => Ok(None),
            HeadCheck::Lagging(w) => {
                tracing::warn!(dir = %self.shared.dir.display(), seq = w.seq, "audit.head lagged behind the log's last checkpoint (a crash before it was updated); updating it");
                write_head(&self.shared.dir, &w);
                self.last_checkpoint_seq = w.seq;
                Ok(None)
            }
            HeadCheck::Truncated {
                head_seq,
                log_seq,
                what,
            } => {
                let refuse = |what: String| AuditError::Truncated {
                    dir: self.shared.dir.clone(),
                    head_seq,
                    log_seq,
                    what,
                };
                if !self.options.accept_truncation {
                    return Err(refuse(what));
                }
                if self.options.signing_key.is_none() {
                    return Err(refuse(format!(
                        "{what}; accepting the loss needs the audit signing key, to sign a new audit.head"
                    )));
                }
                tracing::error!(dir = %self.shared.dir.display(), head_seq, log_seq, %what, "audit log was cut short; continuing as told (--accept-truncated-audit) and recording audit.truncation_detected");
                let mut event = Event::new(EventType::AuditTruncationDetected);
                event.detail = Some(format!(
                    "{what}; the writer (pid {}) was told to accept the loss (--accept-truncated-audit) and continues the chain from seq {log_seq}",
                    std::process::id()
                ));
                Ok(Some((log_seq, event)))
            }
        }
    }

    fn run(mut self, runtime: &tokio::runtime::Runtime) {
        runtime.block_on(async {
            let mut batch = Batch::default();
            loop {
                let deadline = self.timer_deadline();
                let first = match deadline {
                    Some(deadline) => {
                        tokio::select! {
                            command = self.rx.recv() => command.map(Some),
                            _ = tokio::time::sleep_until(deadline.into()) => Some(None),
                        }
                    }
                    None => self.rx.recv().await.map(Some),
                };
                let trigger = match first {
                    None => break, // every handle was dropped; everything queued was written
                    Some(None) => Trigger::Timer,
                    Some(Some(command)) => {
                        self.collect(command, &mut batch);
                        if batch.close.is_some() {
                            Trigger::Close
                        } else {
                            Trigger::Events
                        }
                    }
                };
                let result = self.commit(&mut batch, trigger);
                for waiter in batch.waiters.drain(..) {
                    // A waiter that gave up (its future was dropped) needs no answer.
                    let _ = waiter.send(result.clone());
                }
                self.after_commit();
                if let Some(done) = batch.close.take() {
                    self.shut_down(done);
                    return;
                }
                batch.nowait_events = 0;
            }
            self.stop_forwarder();
        });
    }

    /// When the checkpoint timer fires next, if it runs at all.
    fn timer_deadline(&self) -> Option<Instant> {
        let interval = self.options.checkpoint_interval;
        (self.options.signing_key.is_some() && !interval.is_zero())
            .then(|| self.last_checkpoint_at + interval)
    }

    /// Adds `first` and whatever else is already queued (up to the cap) to `batch`.
    fn collect(&mut self, first: Command, batch: &mut Batch) {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { mut event, done } => {
                    // No caller-supplied field can make a line unbounded.
                    event.bound_lengths();
                    if let Some(e) = self.shared.failed_error() {
                        // Fail closed: nothing more goes to a log whose state is unknown.
                        self.reject(done, e);
                    } else if EventType::is_reserved(&event.kind) {
                        let kind = event.kind.clone();
                        self.reject(done, AuditError::Reserved { kind });
                    } else {
                        if done.is_none() {
                            batch.nowait_events += 1;
                        }
                        batch.events.push((event, done));
                    }
                }
                Command::Flush(done) => batch.waiters.push(done),
                Command::Close(done) => {
                    batch.close = Some(done);
                    return;
                }
            }
            if batch.events.len() >= MAX_BATCH_EVENTS {
                return;
            }
            next = self.rx.try_recv().ok();
        }
    }

    fn reject(&self, done: Option<Reply>, error: AuditError) {
        match done {
            Some(done) => {
                let _ = done.send(Err(error));
            }
            None => {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %self.shared.dir.display(), error = %error, "audit event not written");
            }
        }
    }

    /// Writes and syncs the batch. Errors become sticky.
    fn commit(&mut self, batch: &mut Batch, trigger: Trigger) -> Result<(), AuditError> {
        if let Some(e) = self.shared.failed_error() {
            for (_, done) in batch.events.drain(..) {
                self.reject(done, e.clone());
            }
            return Err(e);
        }
        let nowait = batch.nowait_events;
        match self.commit_inner(batch, trigger) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.shared.failed.fetch_add(nowait, Ordering::Relaxed);
                tracing::error!(
                    path = %self.store.active_path().display(),
                    error = %e,
                    "audit write failed; refusing further audit events"
                );
                // Only this thread sets `failure`, and it stops writing once it is set, so this
                // is the first failure.
                let _ = self.shared.failure.set(e.clone());
                Err(e)
            }
        }
    }

    /// The locked part of a commit: observe, rotate, encode, checkpoint, write, sync. Moves
    /// the waiters of encoded events into `batch.waiters`. Returns the `seq` of the first line
    /// written, if any.
    fn commit_inner(
        &mut self,
        batch: &mut Batch,
        trigger: Trigger,
    ) -> Result<Option<u64>, AuditError> {
        let Writer {
            store,
            shared,
            options,
            key_hex,
            last_checkpoint_seq,
            last_checkpoint_at,
            forwarder,
            buf,
            pending_head,
            ..
        } = self;
        let node = options.node_id.as_deref();
        let mut lines: Vec<(u64, Range<usize>)> = Vec::new();
        let mut wrote_checkpoint = None;
        let mut checkpoints_written = 0u64;
        let mut caller_events = 0u64;
        let mut written_before = 0;
        store.locked(|store| {
            let recovery = store.observe()?;
            let mut head = store.head();
            buf.clear();
            if let Some(recovery) = recovery {
                let start = buf.len();
                head = encode_event(&mut recovery.event(node), head, buf)?;
                lines.push((head.seq, start..buf.len()));
            }
            let has_events = !batch.events.is_empty();
            if has_events && rotation_due(store, options) {
                if let (Some(key), Some(key_hex)) = (&options.signing_key, key_hex.as_deref()) {
                    let start = buf.len();
                    let (h, w) = encode_checkpoint(key, key_hex, node, "rotate", head, buf)?;
                    head = h;
                    lines.push((head.seq, start..buf.len()));
                    wrote_checkpoint = Some(w);
                    checkpoints_written += 1;
                }
                store.append(buf, head)?;
                store.rotate()?;
                // Lines already written stay in `lines` with their ranges into this buffer;
                // the batch goes after them and only the rest is written below.
                written_before = buf.len();
            }
            for (mut event, done) in batch.events.drain(..) {
                if event.gateway.is_none() {
                    event.gateway = node.map(str::to_owned);
                }
                let start = buf.len();
                match encode_event(&mut event, head, buf) {
                    Ok(h) => {
                        head = h;
                        lines.push((head.seq, start..buf.len()));
                        if event.kind != EventType::AuditStarted.as_str() {
                            caller_events += 1;
                        }
                        if let Some(done) = done {
                            batch.waiters.push(done);
                        }
                    }
                    Err(e) => match done {
                        Some(done) => {
                            let _ = done.send(Err(e));
                        }
                        None => {
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                }
            }
            if let (Some(key), Some(key_hex)) = (&options.signing_key, key_hex.as_deref()) {
                let since = head.seq.saturating_sub(*last_checkpoint_seq);
                let reason = match trigger {
                    Trigger::Close => Some("close"),
                    Trigger::Truncation => Some("truncation"),
                    _ if since == 0 => None,
                    _ if options.checkpoint_events > 0 && since >= options.checkpoint_events => {
                        Some("count")
                    }
                    _ if !options.checkpoint_interval.is_zero()
                        && last_checkpoint_at.elapsed() >= options.checkpoint_interval =>
                    {
                        Some("interval")
                    }
                    _ => None,
                };
                if let Some(reason) = reason {
                    let start = buf.len();
                    let (h, w) = encode_checkpoint(key, key_hex, node, reason, head, buf)?;
                    head = h;
                    lines.push((head.seq, start..buf.len()));
                    wrote_checkpoint = Some(w);
                    checkpoints_written += 1;
                }
            }
            store.append(&buf[written_before..], head)
        })?;
        if trigger == Trigger::Timer {
            *last_checkpoint_at = Instant::now();
        }
        let head = store.head();
        shared.head_seq.store(head.seq, Ordering::Relaxed);
        shared.written.fetch_add(caller_events, Ordering::Relaxed);
        if let Some(w) = wrote_checkpoint {
            *last_checkpoint_seq = w.seq;
            *last_checkpoint_at = Instant::now();
            shared
                .checkpoints
                .fetch_add(checkpoints_written, Ordering::Relaxed);
            *pending_head = Some(w);
        }
        let first = lines.first().map(|(seq, _)| *seq);
        if let Some(forwarder) = forwarder {
            for (seq, range) in lines {
                forwarder.offer(seq, &buf[range]);
            }
        }
        Ok(first)
    }

    /// Work after the waiters were answered: record the latest checkpoint in `audit.head`.
    fn after_commit(&mut self) {
        if let Some(w) = self.pending_head.take() {
            write_head(&self.shared.dir, &w);
        }
    }

    fn stop_forwarder(mut self) {
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
    }

    /// Answers the close, then refuses whatever raced in behind it.
    fn shut_down(mut self, done: Reply) {
        self.rx.close();
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
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

/// Whether the active segment should be closed before the next batch.
fn rotation_due(store: &Store, options: &AuditOptions) -> bool {
    if store.active_len() == 0 {
        return false;
    }
    let by_size = options.segment_max_bytes > 0 && store.active_len() >= options.segment_max_bytes;
    let by_age = !options.segment_max_age.is_zero()
        && SystemTime::now()
            .duration_since(store.active_started())
            .is_ok_and(|age| age >= options.segment_max_age);
    by_size || by_age
}

/// Encodes a signed `audit.checkpoint` onto `buf` after `head`; returns the new head and the
/// checkpoint as a witness line.
fn encode_checkpoint(
    key: &AuditKey,
    key_hex: &str,
    node: Option<&str>,
    reason: &str,
    head: Head,
    buf: &mut Vec<u8>,
) -> Result<(Head, Witness), AuditError> {
    let mut event = Event::new(EventType::AuditCheckpoint);
    event.gateway = node.map(str::to_owned);
    let seq = head.seq + 1;
    let prev = hex(&head.hash);
    let message = checkpoint_message(seq, &prev, &event.ts, node.unwrap_or(""), reason);
    event.audit = Some(AuditMeta {
        reason: Some(reason.to_owned()),
        key: Some(key_hex.to_owned()),
        sig: Some(hex(&key.sign(&message))),
        ..AuditMeta::default()
    });
    let new_head = encode_event(&mut event, head, buf)?;
    let witness = Witness::from_event(&event).ok_or_else(|| AuditError::Encode {
        kind: event.kind.clone(),
        reason: "checkpoint lacks a field it was just given".to_owned(),
    })?;
    Ok((new_head, witness))
}

/// Rewrites `audit.head` with the latest checkpoint. A failure is logged, not fatal: the log
/// itself is intact; only the local truncation check is weaker until the next checkpoint.
fn write_head(dir: &Path, witness: &Witness) {
    let mut line = witness.to_line();
    line.push('\n');
    if let Err(e) = write_atomic(dir, &dir.join(HEAD_FILE), line.as_bytes()) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot update audit.head");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(user: &str) -> Event {
        Event {
            user: Some(user.into()),
            ..Event::new(EventType::SessionStart)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_sheds_refusals_but_never_security_events() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path()).await.unwrap();
        // Another holder of the log's lock: the writer blocks on its next batch, the queue fills.
        let lock = std::fs::File::open(tmp.path().join(crate::store::LOCK_FILE)).unwrap();
        lock.lock().unwrap();
        let denied = |i: usize| Event {
            user: Some(format!("denied-{i}")),
            ..Event::new(EventType::SessionDenied)
        };
        let login = |i: usize| Event {
            user: Some(format!("login-{i}")),
            ..Event::new(EventType::AuthLogin)
        };
        let offered = QUEUE_CAPACITY + 100;
        for i in 0..offered {
            log.record_nowait(denied(i));
        }
        let shed = log.stats().dropped;
        // At most the unreserved slots, plus one batch the writer took before it blocked.
        let most_kept = QUEUE_CAPACITY - RESERVED_SLOTS + MAX_BATCH_EVENTS + 1;
        assert!(shed as usize >= offered - most_kept, "only {shed} shed");
        // The reserve takes security events; beyond it they wait for room, none is dropped.
        let logins = RESERVED_SLOTS + 500;
        for i in 0..logins {
            log.record_nowait(login(i));
        }
        assert_eq!(log.stats().dropped, shed, "a security event was dropped");
        lock.unlock().unwrap();
        log.flush().await.unwrap();
        let events = crate::reader::read_all(tmp.path()).unwrap();
        let count = |prefix: &str| {
            events
                .iter()
                .filter(|e| e.user.as_deref().is_some_and(|u| u.starts_with(prefix)))
                .count()
        };
        assert_eq!(count("login-"), logins, "every security event is on disk");
        assert_eq!(count("denied-") + shed as usize, offered);
        let stats = log.stats();
        assert_eq!((stats.dropped, stats.failed), (shed, 0));
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn audit_log_works_as_a_dyn_audit_sink() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path()).await.unwrap();
        let sink: Arc<dyn AuditSink> = Arc::new(log.clone());

        sink.record(start("ann")).await.unwrap();
        // Durable when `record` returns: on disk before anything else happens.
        let users = |dir: &Path| -> Vec<String> {
            crate::reader::read_all(dir)
                .unwrap()
                .into_iter()
                .filter_map(|e| e.user)
                .collect()
        };
        assert_eq!(users(tmp.path()), ["ann"]);

        sink.record_nowait(start("bob"));
        sink.flush().await.unwrap();
        assert_eq!(users(tmp.path()), ["ann", "bob"]);
        sink.health().unwrap();
        let stats = sink.stats();
        assert_eq!(stats.written, 2);
        assert_eq!(
            stats,
            log.stats(),
            "the trait reports the log's own counters"
        );
        // seq 1 is the writer's audit.started.
        assert_eq!(stats.head_seq, 3);

        let err = sink
            .record(Event::new(EventType::AuditCheckpoint))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Reserved { .. }), "{err:?}");

        sink.close().await.unwrap();
        let err = sink.record(start("cat")).await.unwrap_err();
        assert!(matches!(err, AuditError::Closed { .. }), "{err:?}");
        assert_eq!(users(tmp.path()), ["ann", "bob"]);
        let report =
            crate::verify::verify(tmp.path(), &crate::verify::VerifyOptions::default()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}
