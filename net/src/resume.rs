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
//! reset. Whoever reconnects ([`Control::Detach`], then [`Control::Attach`] with the new link
//! and the offset the peer has received) tells each side the other's received offset out of
//! band (in the tunnel request and answer), and both resend from there: no byte is lost or
//! duplicated. The tunnel ends cleanly once both FINs are acknowledged, or with a CLOSE from
//! either side (its local stream failed; the gateway ended the session), or when its owner
//! sends [`Control::Close`].
//!
//! The engine is one task with no lock: every `await` in its loop is cancel-safe (reads into
//! owned buffers, `write` rather than `write_all`), so a control message or a broken link
//! never leaves a half-counted chunk.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
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
/// Local reads: a small buffer first (an idle tunnel), the largest frame once a read fills it.
const READ_MIN: usize = 4 * 1024;

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

/// What an engine's owner tells it.
pub enum Control {
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
}

/// The answer to [`Control::Detach`].
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
    /// The owner ended it ([`Control::Close`]).
    Closed,
    /// The peer broke the protocol; the tunnel cannot go on.
    Protocol(String),
    /// The owner is gone (every [`Control`] sender dropped) while no link was up.
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
/// (the peer has received nothing yet); `events` hears of suspensions and resumptions.
pub async fn run<L>(
    local: L,
    link: Option<Link>,
    config: Config,
    mut control: mpsc::Receiver<Control>,
    events: mpsc::UnboundedSender<Event>,
) -> (Finished, Moved)
where
    L: AsyncRead + AsyncWrite + Send + Unpin,
{
    let mut e = Engine::new(config, events);
    if let Some(l) = link {
        e.link = Some(split(l));
    }
    let (mut lr, mut lw) = tokio::io::split(local);
    let mut read_buf = vec![0u8; READ_MIN];
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
        if can_read_link {
            let want = e.link_chunk;
            if e.inbuf.capacity() - e.inbuf.len() < want {
                e.inbuf.reserve(want);
            }
        }
        let (link_r, link_w) = match e.link.as_mut() {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        let (inbuf, out) = (&mut e.inbuf, &e.out);
        tokio::select! {
            c = control.recv(), if !owner_gone => match c {
                Some(c) => if let Some(f) = e.control(c).await { break f },
                None => owner_gone = true,
            },
            r = async {
                match link_r {
                    Some(r) => r.read_buf(inbuf).await,
                    None => std::future::pending().await,
                }
            }, if can_read_link => match r {
                Ok(0) | Err(_) => e.lose_link(false),
                Ok(n) => {
                    if n >= e.link_chunk {
                        e.link_chunk = MAX_DATA + 5;
                    }
                }
            },
            r = async {
                match link_w {
                    Some(w) if !out.is_empty() => w.write(out).await.map(Some),
                    Some(w) => w.flush().await.map(|()| None),
                    None => std::future::pending().await,
                }
            }, if can_write_link => match r {
                Ok(Some(0)) | Err(_) => e.lose_link(false),
                Ok(Some(n)) => {
                    e.out.advance(n);
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
                    e.received += n as u64;
                    e.moved.delivered += n as u64;
                    e.ack_due(e.received - e.ack_sent >= ACK_EVERY);
                }
            },
            r = lr.read(&mut read_buf), if can_read_local => match r {
                Ok(0) => e.local_eof = true,
                Ok(n) => {
                    e.push_local(Bytes::copy_from_slice(&read_buf[..n]));
                    if n == read_buf.len() && read_buf.len() < MAX_DATA {
                        read_buf.resize(MAX_DATA, 0);
                    }
                }
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

/// Asks the engine behind `control` to let go of its link: its epoch and how much of the
/// peer's stream it delivered. `None` once the engine has ended.
pub async fn detach(control: &mpsc::Sender<Control>) -> Option<Detached> {
    let (tx, rx) = oneshot::channel();
    control.send(Control::Detach(tx)).await.ok()?;
    rx.await.ok()
}

/// Gives the detached engine behind `control` its new `link`; `peer_received` is how much of
/// this side's stream the peer has, `tag` comes back in [`Event::Attached`].
pub async fn attach(
    control: &mpsc::Sender<Control>,
    detached: Detached,
    link: Link,
    peer_received: u64,
    tag: String,
) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    let ended = || "the tunnel has ended".to_owned();
    control
        .send(Control::Attach {
            epoch: detached.epoch,
            link,
            peer_received,
            tag,
            done: tx,
        })
        .await
        .map_err(|_| ended())?;
    rx.await.map_err(|_| ended())?
}

/// What the peer is told when it broke the protocol.
fn protocol_reason(f: &Finished) -> String {
    match f {
        Finished::Protocol(m) => format!("protocol error: {m}"),
        _ => "protocol error".into(),
    }
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
    events: mpsc::UnboundedSender<Event>,
    link: Option<Halves>,
    epoch: u64,
    /// Bytes read from the link, not yet parsed.
    inbuf: BytesMut,
    /// A DATA payload being written to the local stream.
    deliver: Bytes,
    /// Framed bytes waiting to be written to the link.
    out: BytesMut,
    /// Written to the link since its last flush.
    unflushed: bool,
    /// How much room a link read asks for: small while the tunnel is quiet, a whole DATA
    /// frame once a read fills it.
    link_chunk: usize,
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
    fn new(config: Config, events: mpsc::UnboundedSender<Event>) -> Engine {
        Engine {
            config: Config {
                buffer: config.buffer.max(MIN_BUFFER),
            },
            events,
            link: None,
            epoch: 0,
            inbuf: BytesMut::new(),
            deliver: Bytes::new(),
            out: BytesMut::new(),
            unflushed: false,
            link_chunk: READ_MIN,
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
        if self.ack_now && self.received > self.ack_sent {
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
            let _ = self.events.send(Event::LinkLost { detached });
        }
        self.inbuf = BytesMut::new();
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
                let _ = self.events.send(Event::Attached { tag });
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

#[cfg(test)]
mod tests;
