//! Resumable tunnels: a tunnel's bytes survive the loss of the transport that carried them.
//!
//! Both ends of a resumable tunnel run an engine ([`run`]) between their local stream (the
//! clinician's application socket; on the gateway, the endpoint handler's side) and a *link*:
//! the current transport stream (a QUIC stream or an HTTP/2 `CONNECT` stream). On the link the
//! engines speak in frames, so that each knows how much of the other's stream it has:
//!
//! | frame | layout (big-endian) | meaning |
//! |---|---|---|
//! | DATA  | `1`, u32 length (1 to [`MAX_DATA`]), bytes | the next bytes of the sender's stream |
//! | ACK   | `2`, u64 offset | the sender has delivered this many of the peer's bytes locally |
//! | FIN   | `3`, u64 offset | the sender's stream ends at this offset |
//! | CLOSE | `4`, u16 length (at most [`MAX_REASON`]), UTF-8 | the tunnel is over, and why |
//!
//! A FIN counts as one byte of the offsets (as in TCP), so an ACK past the last data byte
//! acknowledges the FIN. Each engine keeps every byte it sent until the peer acknowledges it
//! (its *replay buffer*, at most [`Config::buffer`] bytes: when it is full the engine stops
//! reading its local stream, which slows the application down rather than growing memory).
//!
//! When a link breaks, the engine reports [`Event::LinkLost`] and goes on reading its local
//! stream into the replay buffer until it is full; the application sees a pause, never a
//! reset. Whoever reconnects ([`Handle::detach`], then [`Handle::attach`] with the new link
//! and the offset the peer has received) tells each side the other's received offset out of
//! band (in the tunnel request and answer), and both resend from there: no byte is lost or
//! duplicated. The tunnel ends cleanly once both FINs are acknowledged, or with a CLOSE from
//! either side (its local stream failed; the gateway ended the session), or when its owner
//! calls [`Handle::close`].
//!
//! The owner and the engine talk through [`channel`]: a [`Handle`] (cloneable) tells the
//! engine what to do, [`Events`] hears what happened, the [`Inbox`] goes to [`run`].
//!
//! The engine is one task with no lock: every `await` in its loop is cancel-safe (a read
//! either returns bytes or none, `write` rather than `write_all`), so a control message or a
//! broken link never leaves a half-counted chunk.
//!
//! An idle tunnel holds no buffer: a read that may wait goes into a scratch buffer of the
//! thread's (polled, not awaited, so nothing of it is held while the read waits) and only what
//! arrived is copied out; a link read during a transfer goes straight into the input buffer;
//! every buffer gives its memory back once the tunnel goes quiet. What an idle engine costs is
//! its task, its link and local stream, and one small shared mailbox with its owner (see "Flow
//! control and memory bounds" in docs/architecture.md).

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// A transport stream that carries a resumable tunnel's frames.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}
/// A boxed link.
pub type Link = Box<dyn LinkIo>;

const T_DATA: u8 = 1;
const T_ACK: u8 = 2;
const T_FIN: u8 = 3;
const T_CLOSE: u8 = 4;

/// Largest DATA frame payload.
pub const MAX_DATA: usize = 64 * 1024;
/// Longest CLOSE reason, in bytes.
pub const MAX_REASON: usize = 512;
/// Smallest replay buffer an engine is given.
pub const MIN_BUFFER: usize = 256 * 1024;
/// Acknowledge at once after delivering this many bytes; fewer are acknowledged after
/// [`ACK_DELAY`].
const ACK_EVERY: u64 = 64 * 1024;
/// How long a small acknowledgement may wait for more data to cover.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// The per-thread read buffer: a whole DATA frame with its header, and some frames after it.
const SCRATCH: usize = MAX_DATA + 1024;
/// A link read at least this large means a transfer: the next one goes straight into the
/// engine's input buffer rather than through the scratch buffer.
const FLOWING: usize = 16 * 1024;

/// An engine's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Most bytes kept for replay (sent and not yet acknowledged, plus read and not yet sent).
    pub buffer: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            buffer: 4 * 1024 * 1024,
        }
    }
}

/// What an engine's owner tells it (through a [`Handle`]).
enum Control {
    /// Stop using the current link (if any); answers the link epoch and how many of the peer's
    /// bytes were delivered locally (the offset to tell the peer). A later [`Control::Attach`]
    /// must carry that epoch.
    Detach(oneshot::Sender<Detached>),
    /// Carry on over `link`: the peer has received `peer_received` of this side's bytes.
    /// Refused (the link dropped) if another attach happened since the detach of `epoch`, or
    /// if the offset is not one this side could have sent.
    Attach {
        epoch: u64,
        link: Link,
        peer_received: u64,
        /// Passed back in [`Event::Attached`] (the owner's note, e.g. where the link comes from).
        tag: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// End the tunnel: the peer is told `reason` if a link is up.
    Close(String),
    /// Answers how many bytes of storage the engine holds (tests).
    #[cfg(test)]
    Held(oneshot::Sender<usize>),
}

/// The answer to [`Handle::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    pub epoch: u64,
    pub received: u64,
}

/// What an engine reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The link broke, or (`detached`) the owner took it away to attach a new one before the
    /// break was seen here; the tunnel is suspended.
    LinkLost { detached: bool },
    /// A new link was attached; the tunnel carries on. `tag` is the attach's.
    Attached { tag: String },
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Both directions ended and each side acknowledged the other's last byte.
    Clean,
    /// The local stream failed (read or write); the peer was told.
    LocalError(String),
    /// The peer ended the tunnel, with its reason.
    PeerClosed(String),
    /// The owner ended it ([`Handle::close`]).
    Closed,
    /// The peer broke the protocol; the tunnel cannot go on.
    Protocol(String),
    /// The owner is gone (every [`Handle`] dropped) while no link was up.
    Abandoned,
}

/// Bytes moved, for the owner's accounting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes read from the local stream.
    pub read: u64,
    /// Bytes delivered to the local stream.
    pub delivered: u64,
}

/// Runs one end of a resumable tunnel until it ends. `link` is the first link, if one is up
/// (the peer has received nothing yet); `inbox` is the engine's end of its [`channel`], whose
/// [`Events`] hear of suspensions and resumptions.
pub async fn run<L>(local: L, link: Option<Link>, config: Config, inbox: Inbox) -> (Finished, Moved)
where
    L: AsyncRead + AsyncWrite + Send + Unpin,
{
    let mut e = Engine::new(config, inbox.0.clone());
    if let Some(l) = link {
        e.link = Some(split(l));
    }
    let (mut lr, mut lw) = tokio::io::split(local);
    let mut owner_gone = false;
    let finished = loop {
        if let Some(f) = e.finished.take() {
            break f;
        }
        // Parsed first: the peer's last ACK may be read together with the end of its link.
        if let Err(f) = e.parse() {
            e.closing = Some(protocol_reason(&f));
            e.send_close().await;
            break f;
        }
        if e.complete() {
            e.shutdown_link().await;
            break Finished::Clean;
        }
        if let Some(off) = e.peer_fin {
            if e.received == off && !e.local_shut {
                // All the peer's bytes are delivered: pass its end on.
                let _ = lw.shutdown().await;
                e.local_shut = true;
                e.received += 1;
                e.ack_due(true);
                continue;
            }
        }
        e.fill_out();
        if owner_gone && e.link.is_none() {
            // Nobody can attach a link any more.
            break Finished::Abandoned;
        }
        let ack_at = e.ack_at;
        let can_read_local = !e.local_eof && e.buffered() < e.config.buffer;
        let can_write_link = e.link.is_some() && (!e.out.is_empty() || e.unflushed);
        let can_read_link = e.link.is_some() && e.deliver.is_empty();
        let can_deliver = !e.deliver.is_empty();
        let (mut link_r, link_w) = match e.link.as_mut() {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        let (inbuf, out, flowing) = (&mut e.inbuf, &e.out, &mut e.link_flowing);
        tokio::select! {
            c = inbox.recv(), if !owner_gone => match c {
                Some(c) => if let Some(f) = e.control(c).await { break f },
                None => owner_gone = true,
            },
            r = std::future::poll_fn(|cx| match link_r.as_mut() {
                Some(r) => poll_link_read(r, cx, inbuf, flowing),
                None => Poll::Pending,
            }), if can_read_link => match r {
                Err(err) if peer_exited(&err) => break Finished::PeerClosed(EXITED.to_owned()),
                Ok(0) | Err(_) => e.lose_link(false),
                Ok(_) => {}
            },
            r = async {
                match link_w {
                    Some(w) if !out.is_empty() => w.write(out).await.map(Some),
                    Some(w) => w.flush().await.map(|()| None),
                    None => std::future::pending().await,
                }
            }, if can_write_link => match r {
                Err(err) if peer_exited(&err) => break Finished::PeerClosed(EXITED.to_owned()),
                Ok(Some(0)) | Err(_) => e.lose_link(false),
                Ok(Some(n)) => {
                    e.out.advance(n);
                    if e.out.is_empty() && e.sent == e.read_total {
                        // Nothing more to frame: the tunnel is going quiet, give the storage
                        // back (during a transfer it is reused frame after frame).
                        e.out = BytesMut::new();
                    }
                    e.unflushed = true;
                }
                Ok(None) => e.unflushed = false,
            },
            r = lw.write(&e.deliver), if can_deliver => match r {
                Ok(0) | Err(_) => {
                    let why = "the local connection stopped accepting data".to_owned();
                    break e.local_failed(why).await;
                }
                Ok(n) => {
                    e.deliver.advance(n);
                    if e.deliver.is_empty() {
                        // Let go of the link read it came from.
                        e.deliver = Bytes::new();
                    }
                    e.received += n as u64;
                    e.moved.delivered += n as u64;
                    e.ack_due(e.received - e.ack_sent >= ACK_EVERY);
                }
            },
            r = std::future::poll_fn(|cx| {
                poll_read_scratch(&mut lr, cx, MAX_DATA, Bytes::copy_from_slice)
            }), if can_read_local => match r {
                Ok(chunk) if chunk.is_empty() => e.local_eof = true,
                Ok(chunk) => e.push_local(chunk),
                Err(err) => break e.local_failed(format!("the local connection failed: {err}")).await,
            },
            _ = sleep_until_opt(ack_at), if ack_at.is_some() => {
                e.ack_at = None;
                e.ack_now = true;
            }
        }
    };
    (finished, e.moved)
}

/// Creates the owner's and the engine's ends of an engine's mailbox: the [`Handle`] and
/// [`Events`] for the owner, the [`Inbox`] for [`run`].
///
/// One small allocation whatever happens: control messages and events are rare (a few per
/// outage), so they wait in a shared queue under a lock rather than in channels, whose
/// up-front blocks would cost an idle tunnel several kilobytes.
pub fn channel() -> (Handle, Events, Inbox) {
    let shared = Arc::new(Shared {
        mail: Mutex::new(Mail {
            handles: 1,
            ..Mail::default()
        }),
        to_engine: Notify::new(),
        to_owner: Notify::new(),
    });
    (
        Handle(shared.clone()),
        Events(shared.clone()),
        Inbox(shared),
    )
}

/// What an engine and its owner share.
struct Shared {
    mail: Mutex<Mail>,
    /// Wakes the engine: a control message, or its last [`Handle`] dropped.
    to_engine: Notify,
    /// Wakes the reader of [`Events`]: an event, or the engine ended.
    to_owner: Notify,
}

#[derive(Default)]
struct Mail {
    controls: VecDeque<Control>,
    events: VecDeque<Event>,
    /// Live [`Handle`]s: at none, nobody can attach a link any more.
    handles: usize,
    /// The [`Inbox`] is dropped: the engine has ended.
    engine_gone: bool,
    /// The [`Events`] are dropped: nobody reads them.
    events_gone: bool,
}

impl Shared {
    /// The mail. Nothing panics while holding it, so a poisoned lock's contents are whole.
    fn mail(&self) -> MutexGuard<'_, Mail> {
        self.mail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `c` for the engine; gives it back if the engine has ended.
    fn send(&self, c: Control) -> Result<(), Control> {
        let mut m = self.mail();
        if m.engine_gone {
            return Err(c);
        }
        m.controls.push_back(c);
        drop(m);
        self.to_engine.notify_one();
        Ok(())
    }

    fn event(&self, ev: Event) {
        let mut m = self.mail();
        if m.events_gone {
            return;
        }
        m.events.push_back(ev);
        drop(m);
        self.to_owner.notify_one();
    }
}

/// Tells an engine what to do; clones tell the same engine. Once every handle is dropped the
/// engine ends when its link is down ([`Finished::Abandoned`]).
pub struct Handle(Arc<Shared>);

impl Clone for Handle {
    fn clone(&self) -> Handle {
        self.0.mail().handles += 1;
        Handle(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut m = self.0.mail();
        m.handles -= 1;
        let last = m.handles == 0;
        drop(m);
        if last {
            self.0.to_engine.notify_one();
        }
    }
}

impl Handle {
    /// Asks the engine to let go of its link: its epoch and how much of the peer's stream it
    /// delivered. `None` once the engine has ended.
    pub async fn detach(&self) -> Option<Detached> {
        let (tx, rx) = oneshot::channel();
        self.0.send(Control::Detach(tx)).ok()?;
        rx.await.ok()
    }

    /// Gives the detached engine its new `link`; `peer_received` is how much of this side's
    /// stream the peer has, `tag` comes back in [`Event::Attached`].
    pub async fn attach(
        &self,
        detached: Detached,
        link: Link,
        peer_received: u64,
        tag: String,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let ended = || "the tunnel has ended".to_owned();
        self.0
            .send(Control::Attach {
                epoch: detached.epoch,
                link,
                peer_received,
                tag,
                done: tx,
            })
            .map_err(|_| ended())?;
        rx.await.map_err(|_| ended())?
    }

    /// Ends the tunnel: the peer is told `reason` if a link is up. Nothing happens if the
    /// engine has ended.
    pub fn close(&self, reason: String) {
        let _ = self.0.send(Control::Close(reason));
    }

    /// How many bytes of storage the engine holds in its buffers.
    #[cfg(test)]
    async fn held(&self) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.0.send(Control::Held(tx)).ok()?;
        rx.await.ok()
    }
}

/// What an engine reports, for one reader.
pub struct Events(Arc<Shared>);

impl Events {
    /// The next event; `None` once the engine has ended and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            {
                let mut m = self.0.mail();
                if let Some(ev) = m.events.pop_front() {
                    return Some(ev);
                }
                if m.engine_gone {
                    return None;
                }
            }
            // A notification sent since the check is kept as a permit: none is missed.
            self.0.to_owner.notified().await;
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.0.mail().events.pop_front()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut m = self.0.mail();
        m.events_gone = true;
        m.events = VecDeque::new();
    }
}

/// The engine's end of its [`channel`], for [`run`].
pub struct Inbox(Arc<Shared>);

impl Inbox {
    /// The next control message; `None` once every [`Handle`] is dropped. Cancel-safe: a
    /// message is taken only when it is returned.
    async fn recv(&self) -> Option<Control> {
        loop {
            {
                let mut m = self.0.mail();
                if let Some(c) = m.controls.pop_front() {
                    return Some(c);
                }
                if m.handles == 0 {
                    return None;
                }
            }
            self.0.to_engine.notified().await;
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut m = self.0.mail();
        m.engine_gone = true;
        // Dropped outside the lock: their answer channels close, so their senders hear that
        // the tunnel has ended.
        let pending = std::mem::take(&mut m.controls);
        drop(m);
        drop(pending);
        self.0.to_owner.notify_one();
    }
}

/// What the peer is told when it broke the protocol.
fn protocol_reason(f: &Finished) -> String {
    match f {
        Finished::Protocol(m) => format!("protocol error: {m}"),
        _ => "protocol error".into(),
    }
}

thread_local! {
    /// The read buffer of every engine on this thread (see [`poll_read_scratch`]). Taken out
    /// while a read uses it, so a read that finds it gone (none does: a stream's `poll_read`
    /// does not poll an engine) allocates its own.
    static SCRATCH_BUF: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Polls one read of at most `max` bytes of `r` into the thread's scratch buffer and gives
/// what arrived (empty at the end of the stream) to `take`. Polled rather than awaited, the
/// buffer is held only during the call: a tunnel whose reads are waiting holds none, and what
/// arrives is copied into storage of its own size.
fn poll_read_scratch<R, T>(
    r: &mut R,
    cx: &mut Context<'_>,
    max: usize,
    take: impl FnOnce(&[u8]) -> T,
) -> Poll<std::io::Result<T>>
where
    R: AsyncRead + Unpin,
{
    let mut buf = SCRATCH_BUF
        .take()
        .unwrap_or_else(|| vec![0u8; SCRATCH].into_boxed_slice());
    let end = max.min(buf.len());
    let mut rb = ReadBuf::new(&mut buf[..end]);
    let polled = match Pin::new(r).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(take(rb.filled()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    };
    SCRATCH_BUF.set(Some(buf));
    polled
}

/// Polls one read of the link into `inbuf`: in place while the link is `flowing` (its last
/// read was large), through the thread's scratch buffer otherwise (a quiet link's ACKs and
/// small writes). A read that has to wait lets go of an empty `inbuf`: a quiet link holds
/// nothing.
fn poll_link_read<R>(
    r: &mut R,
    cx: &mut Context<'_>,
    inbuf: &mut BytesMut,
    flowing: &mut bool,
) -> Poll<std::io::Result<usize>>
where
    R: AsyncRead + Unpin,
{
    let polled = if *flowing {
        if inbuf.capacity() - inbuf.len() < MAX_DATA + 5 {
            inbuf.reserve(MAX_DATA + 5);
        }
        // `read_buf` is cancel-safe: a poll that returns `Pending` has read nothing.
        std::pin::pin!(r.read_buf(inbuf)).poll(cx)
    } else {
        poll_read_scratch(r, cx, SCRATCH, |got| {
            inbuf.extend_from_slice(got);
            got.len()
        })
    };
    match &polled {
        Poll::Ready(Ok(n)) => *flowing = *n >= FLOWING,
        Poll::Ready(Err(_)) => {}
        Poll::Pending => {
            *flowing = false;
            if inbuf.is_empty() {
                *inbuf = BytesMut::new();
            }
        }
    }
    polled
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Halves = (tokio::io::ReadHalf<Link>, tokio::io::WriteHalf<Link>);

fn split(link: Link) -> Halves {
    tokio::io::split(link)
}

struct Engine {
    config: Config,
    /// Where events go (shared with the owner, see [`channel`]).
    mail: Arc<Shared>,
    link: Option<Halves>,
    epoch: u64,
    /// Bytes read from the link, not yet parsed.
    inbuf: BytesMut,
    /// The link's last read was large (see [`poll_link_read`]).
    link_flowing: bool,
    /// A DATA payload being written to the local stream.
    deliver: Bytes,
    /// Framed bytes waiting to be written to the link.
    out: BytesMut,
    /// Written to the link since its last flush.
    unflushed: bool,
    /// Local bytes kept for replay, from offset `acked`.
    replay: VecDeque<Bytes>,
    /// The peer has acknowledged this many of our bytes (the FIN counts as one).
    acked: u64,
    /// Bytes read from the local stream.
    read_total: u64,
    /// The next of our bytes to put on the link.
    sent: u64,
    local_eof: bool,
    fin_sent: bool,
    /// The peer's bytes delivered locally (its FIN counts as one once passed on).
    received: u64,
    /// The offset in our last ACK.
    ack_sent: u64,
    ack_at: Option<Instant>,
    ack_now: bool,
    peer_fin: Option<u64>,
    local_shut: bool,
    closing: Option<String>,
    finished: Option<Finished>,
    moved: Moved,
}

impl Engine {
    fn new(config: Config, mail: Arc<Shared>) -> Engine {
        Engine {
            config: Config {
                buffer: config.buffer.max(MIN_BUFFER),
            },
            mail,
            link: None,
            epoch: 0,
            inbuf: BytesMut::new(),
            link_flowing: false,
            deliver: Bytes::new(),
            out: BytesMut::new(),
            unflushed: false,
            replay: VecDeque::new(),
            acked: 0,
            read_total: 0,
            sent: 0,
            local_eof: false,
            fin_sent: false,
            received: 0,
            ack_sent: 0,
            ack_at: None,
            ack_now: false,
            peer_fin: None,
            local_shut: false,
            closing: None,
            finished: None,
            moved: Moved::default(),
        }
    }

    /// Bytes held for replay.
    fn buffered(&self) -> usize {
        (self.read_total - self.acked.min(self.read_total)) as usize
    }

    fn push_local(&mut self, chunk: Bytes) {
        self.read_total += chunk.len() as u64;
        self.moved.read += chunk.len() as u64;
        self.replay.push_back(chunk);
    }

    /// Our FIN is acknowledged and the peer's is passed on and acknowledged by us.
    fn complete(&self) -> bool {
        self.local_eof
            && self.acked == self.read_total + 1
            && self.local_shut
            && self.ack_sent == self.received
            && self.out.is_empty()
            && !self.unflushed
    }

    fn ack_due(&mut self, now: bool) {
        if now {
            self.ack_now = true;
            self.ack_at = None;
        } else if self.ack_at.is_none() && self.received > self.ack_sent {
            self.ack_at = Some(Instant::now() + ACK_DELAY);
        }
    }

    /// Frames what is due into `out`, while the link is up and `out` is short.
    fn fill_out(&mut self) {
        if self.link.is_none() || !self.out.is_empty() {
            return;
        }
        if let Some(reason) = &self.closing {
            put_close(&mut self.out, reason);
            return;
        }
        let ack = self.ack_now && self.received > self.ack_sent;
        let unsent = (self.read_total - self.sent) as usize;
        let fin = self.local_eof && unsent == 0 && !self.fin_sent;
        if !(ack || unsent > 0 || fin) {
            return;
        }
        // About what is due (`out` is empty; storage kept from the last frame is reused).
        self.out.reserve(9 + unsent.min(MAX_DATA) + 5 + 9);
        if ack {
            self.out.put_u8(T_ACK);
            self.out.put_u64(self.received);
            self.ack_sent = self.received;
            self.ack_now = false;
            self.ack_at = None;
        }
        while self.sent < self.read_total && self.out.len() < MAX_DATA {
            let Some(chunk) = self.replay_from(self.sent) else {
                break;
            };
            let n = chunk.len().min(MAX_DATA);
            self.out.put_u8(T_DATA);
            self.out.put_u32(n as u32);
            self.out.extend_from_slice(&chunk[..n]);
            self.sent += n as u64;
        }
        if self.local_eof && self.sent == self.read_total && !self.fin_sent {
            self.out.put_u8(T_FIN);
            self.out.put_u64(self.read_total);
            self.fin_sent = true;
        }
    }

    /// The replayable bytes starting at `offset` (up to the end of their chunk).
    fn replay_from(&self, offset: u64) -> Option<Bytes> {
        let mut at = self.acked;
        for chunk in &self.replay {
            let end = at + chunk.len() as u64;
            if offset < end {
                return Some(chunk.slice((offset - at) as usize..));
            }
            at = end;
        }
        None
    }

    /// Drops replay bytes the peer has: everything before `offset`.
    fn acknowledge(&mut self, offset: u64) -> Result<(), Finished> {
        let limit = self.read_total + u64::from(self.fin_sent || self.local_eof);
        if offset > limit {
            return Err(Finished::Protocol(format!(
                "the peer acknowledged byte {offset}, past the {limit} sent"
            )));
        }
        while self.acked < offset.min(self.read_total) {
            let Some(front) = self.replay.front_mut() else {
                break;
            };
            let drop = ((offset.min(self.read_total) - self.acked) as usize).min(front.len());
            front.advance(drop);
            self.acked += drop as u64;
            if front.is_empty() {
                self.replay.pop_front();
            }
        }
        if self.replay.is_empty() {
            // An idle tunnel keeps no slots for the chunks of its last burst.
            self.replay = VecDeque::new();
        }
        if offset == self.read_total + 1 {
            self.acked = offset;
        }
        Ok(())
    }

    /// Parses complete frames from `inbuf` while no DATA payload is waiting to be delivered.
    fn parse(&mut self) -> Result<(), Finished> {
        while self.deliver.is_empty() && !self.inbuf.is_empty() {
            let kind = self.inbuf[0];
            let need = match kind {
                T_DATA => 5,
                T_ACK | T_FIN => 9,
                T_CLOSE => 3,
                other => {
                    return Err(Finished::Protocol(format!("unknown frame type {other}")));
                }
            };
            if self.inbuf.len() < need {
                break;
            }
            match kind {
                T_DATA => {
                    let len = u32::from_be_bytes([
                        self.inbuf[1],
                        self.inbuf[2],
                        self.inbuf[3],
                        self.inbuf[4],
                    ]) as usize;
                    if len == 0 || len > MAX_DATA {
                        return Err(Finished::Protocol(format!("DATA frame of {len} bytes")));
                    }
                    if self.peer_fin.is_some() {
                        return Err(Finished::Protocol("DATA after FIN".into()));
                    }
                    if self.inbuf.len() < 5 + len {
                        break;
                    }
                    self.inbuf.advance(5);
                    self.deliver = self.inbuf.split_to(len).freeze();
                }
                T_ACK | T_FIN => {
                    self.inbuf.advance(1);
                    let off = self.inbuf.get_u64();
                    if kind == T_ACK {
                        self.acknowledge(off)?;
                    } else if off != self.received {
                        return Err(Finished::Protocol(format!(
                            "FIN at {off}, but {} bytes were received",
                            self.received
                        )));
                    } else {
                        self.peer_fin = Some(off);
                    }
                }
                _ => {
                    let len = u16::from_be_bytes([self.inbuf[1], self.inbuf[2]]) as usize;
                    if len > MAX_REASON {
                        return Err(Finished::Protocol(format!("CLOSE reason of {len} bytes")));
                    }
                    if self.inbuf.len() < 3 + len {
                        break;
                    }
                    self.inbuf.advance(3);
                    let reason = self.inbuf.split_to(len);
                    let reason = String::from_utf8_lossy(&reason).into_owned();
                    return Err(Finished::PeerClosed(reason));
                }
            }
        }
        Ok(())
    }

    /// The link broke: suspend until a new one is attached.
    fn lose_link(&mut self, detached: bool) {
        if self.link.take().is_some() {
            self.mail.event(Event::LinkLost { detached });
        }
        self.inbuf = BytesMut::new();
        self.link_flowing = false;
        self.deliver = Bytes::new();
        self.out = BytesMut::new();
        self.unflushed = false;
        self.fin_sent = false;
        self.ack_at = None;
        self.ack_now = false;
    }

    async fn control(&mut self, c: Control) -> Option<Finished> {
        match c {
            Control::Detach(answer) => {
                self.lose_link(true);
                let _ = answer.send(Detached {
                    epoch: self.epoch,
                    received: self.received,
                });
                None
            }
            Control::Attach {
                epoch,
                link,
                peer_received,
                tag,
                done,
            } => {
                if epoch != self.epoch {
                    let _ = done.send(Err("another link was attached first".into()));
                    return None;
                }
                let limit = self.read_total + u64::from(self.local_eof);
                if peer_received < self.acked.min(self.read_total) || peer_received > limit {
                    let msg = format!(
                        "the peer says it received {peer_received} bytes, but {} were acknowledged and {limit} sent",
                        self.acked
                    );
                    let _ = done.send(Err(msg.clone()));
                    return Some(Finished::Protocol(msg));
                }
                self.lose_link(true);
                if let Err(f) = self.acknowledge(peer_received) {
                    let _ = done.send(Err("bad offset".into()));
                    return Some(f);
                }
                self.sent = peer_received.min(self.read_total);
                self.fin_sent = peer_received == self.read_total + 1;
                self.ack_sent = self.received;
                self.epoch += 1;
                self.link = Some(split(link));
                self.mail.event(Event::Attached { tag });
                let _ = done.send(Ok(()));
                None
            }
            Control::Close(reason) => {
                if self.link.is_some() {
                    self.closing = Some(reason);
                    self.send_close().await;
                }
                Some(Finished::Closed)
            }
            #[cfg(test)]
            Control::Held(answer) => {
                let replay = self.replay.capacity() * std::mem::size_of::<Bytes>()
                    + self.replay.iter().map(Bytes::len).sum::<usize>();
                let held =
                    self.inbuf.capacity() + self.deliver.len() + self.out.capacity() + replay;
                let _ = answer.send(held);
                None
            }
        }
    }

    /// Writes a CLOSE (with whatever was framed before it) and shuts the link down, within a
    /// second.
    async fn send_close(&mut self) {
        let Some((_, w)) = self.link.as_mut() else {
            return;
        };
        let reason = self.closing.clone().unwrap_or_default();
        let mut out = std::mem::take(&mut self.out);
        put_close(&mut out, &reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            w.write_all(&out).await?;
            w.flush().await?;
            w.shutdown().await
        })
        .await;
    }

    async fn local_failed(&mut self, why: String) -> Finished {
        self.closing = Some(why.clone());
        self.send_close().await;
        Finished::LocalError(why)
    }

    /// Ends the link after a clean finish: our side closed, then (within a second) the peer's
    /// close awaited, so that dropping the link cannot reset a stream whose last frames (our
    /// final acknowledgement) the peer has not read yet.
    async fn shutdown_link(&mut self) {
        if let Some((r, w)) = self.link.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = w.shutdown().await;
                let mut sink = [0u8; 256];
                while let Ok(n) = r.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

fn put_close(out: &mut BytesMut, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(T_CLOSE);
    out.put_u16(end as u16);
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Why a tunnel ended when its peer's process closed the whole QUIC connection on the way out.
const EXITED: &str = "the clinician's client was closed";

/// Whether a link error is the peer closing its QUIC connection because its process is
/// exiting ([`wire::QUIC_CLOSE_EXIT`](postern_proto::wire::QUIC_CLOSE_EXIT)): the tunnel is over,
/// not suspended. The client says goodbye on each tunnel first, but closing the connection
/// discards what quinn has not sent yet, so the goodbye can be lost; the close itself is not.
fn peer_exited(err: &std::io::Error) -> bool {
    let exit = quinn::VarInt::from_u32(postern_proto::wire::QUIC_CLOSE_EXIT);
    let lost = err.get_ref().and_then(|i| {
        i.downcast_ref::<quinn::ReadError>()
            .and_then(|r| match r {
                quinn::ReadError::ConnectionLost(c) => Some(c),
                _ => None,
            })
            .or_else(|| {
                i.downcast_ref::<quinn::WriteError>().and_then(|w| match w {
                    quinn::WriteError::ConnectionLost(c) => Some(c),
                    _ => None,
                })
            })
    });
    matches!(lost, Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == exit)
}

#[cfg(test)]
mod tests;
