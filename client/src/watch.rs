//! Stall detection on the client's connections to the gateway.
//!
//! A path that dies (Wi-Fi gone, laptop asleep, a NAT that forgot the binding) says nothing:
//! QUIC would notice at its idle timeout and TCP after minutes of retransmissions. Both
//! transports ping every half second here (QUIC keep-alive, HTTP/2 PING), so a live gateway is
//! heard several times a second; a connection that hears nothing for [`STALL`] is closed, and
//! its resumable tunnels carry on over a new one. A TCP connection whose local address has
//! gone (the laptop joined another network) is closed at the next look, without waiting for
//! the stall limit; QUIC moves to the new address by itself (connection migration).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use crate::meter::Metered;
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

/// Whether `ip` is no longer an address of this computer (a Wi-Fi change took it away): a
/// TCP connection from it is dead even if the stall limit has not passed, since nothing sent
/// from it can be answered.
fn address_gone(ip: std::net::IpAddr) -> bool {
    matches!(
        std::net::UdpSocket::bind((ip, 0)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable
    )
}

/// The client's HTTP/2 connection: its request handle and its task, which the watcher aborts
/// (closing every stream on it) when the connection stalls.
pub(crate) struct H2Conn {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<Metered<tokio::net::TcpStream, AtomicU64>>>;

impl H2Conn {
    /// Runs `conn` and watches `heard` (bytes read from its socket); `socket` is a second
    /// handle on that socket.
    ///
    /// A stalled connection's socket is shut down, not only its task aborted: hyper runs the
    /// HTTP/2 connection in a task of its own that keeps serving open (upgraded) tunnel
    /// streams after the client side is gone, so those would otherwise wait for the
    /// keep-alive timeout to fail and resume. Shutting the socket down ends its reads and
    /// writes at once, and with them every stream on the connection.
    pub(crate) fn spawn(
        sender: SendRequest<Full<Bytes>>,
        conn: Connection<TlsIo, Full<Bytes>, TokioExecutor>,
        heard: Arc<AtomicU64>,
        socket: std::net::TcpStream,
    ) -> H2Conn {
        let local = socket.local_addr().ok().map(|a| a.ip());
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
                let moved = local.is_some_and(address_gone);
                if now != seen && !moved {
                    seen = now;
                    at = Instant::now();
                } else if moved || at.elapsed() >= STALL {
                    if moved {
                        tracing::info!(
                            "this computer's address changed; closing the TCP connection to the gateway"
                        );
                    } else {
                        tracing::info!(
                            "nothing heard from the gateway over TCP for {STALL:?}; closing the connection"
                        );
                    }
                    let _ = socket.shutdown(std::net::Shutdown::Both);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_this_computer_no_longer_has_is_gone() {
        assert!(!address_gone([127, 0, 0, 1].into()));
        // TEST-NET-1 (RFC 5737): never configured here.
        assert!(address_gone([192, 0, 2, 77].into()));
    }
}
