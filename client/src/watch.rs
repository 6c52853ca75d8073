//! Stall detection on the client's connections to the gateway.
//!
//! A path that dies (Wi-Fi gone, laptop asleep, a NAT that forgot the binding) says nothing:
//! QUIC would notice at its idle timeout and TCP after minutes of retransmissions. Both
//! transports ping every half second here (QUIC keep-alive, HTTP/2 PING), so a live gateway is
//! heard several times a second; a connection that hears nothing for [`STALL`] is closed, and
//! its resumable tunnels carry on over a new one.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::STALL;

/// How often the watchers look.
const TICK: Duration = Duration::from_millis(250);

/// Closes `conn` when no datagram has arrived for [`STALL`].
pub(crate) fn quic(conn: quinn::Connection) {
    tokio::spawn(async move {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = conn.stats().udp_rx.datagrams;
            if now != seen {
                seen = now;
                heard = Instant::now();
            } else if heard.elapsed() >= STALL {
                tracing::info!(
                    "nothing heard from the gateway over QUIC for {STALL:?}; closing the connection"
                );
                conn.close(1u32.into(), b"stalled");
                return;
            }
        }
    });
}

/// A stream that counts the bytes read from it.
pub(crate) struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T) -> (Counted<T>, Arc<AtomicU64>) {
        let read = Arc::new(AtomicU64::new(0));
        (
            Counted {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client's HTTP/2 connection: its request handle and its task, which the watcher aborts
/// (closing every stream on it) when the connection stalls.
pub(crate) struct H2Conn {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<Counted<tokio::net::TcpStream>>>;

impl H2Conn {
    /// Runs `conn` and watches `heard` (bytes read from its socket).
    pub(crate) fn spawn(
        sender: SendRequest<Full<Bytes>>,
        conn: Connection<TlsIo, Full<Bytes>, TokioExecutor>,
        heard: Arc<AtomicU64>,
    ) -> H2Conn {
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended");
            }
        });
        let abort = task.abort_handle();
        let watched = task.abort_handle();
        tokio::spawn(async move {
            let mut seen = heard.load(Ordering::Relaxed);
            let mut at = Instant::now();
            while !watched.is_finished() {
                tokio::time::sleep(TICK).await;
                let now = heard.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    at = Instant::now();
                } else if at.elapsed() >= STALL {
                    tracing::info!(
                        "nothing heard from the gateway over TCP for {STALL:?}; closing the connection"
                    );
                    watched.abort();
                    return;
                }
            }
        });
        H2Conn {
            sender,
            task: abort,
        }
    }

    /// Whether the connection can carry new requests.
    pub(crate) fn is_live(&self) -> bool {
        !self.sender.is_closed() && !self.task.is_finished()
    }
}
