//! QUIC between the clinician's client and the gateway (quinn, rustls with the ring provider).
//!
//! One QUIC connection per client process; one bidirectional stream per tunnel. A stream
//! starts with two frames — the client's [`TunnelRequest`], the gateway's [`TunnelResponse`] —
//! each a 4-byte big-endian length and that many bytes of JSON (at most [`MAX_FRAME`]); after
//! a 200 the stream is the tunnel's bytes both ways. Streams are independent: a lost packet
//! delays only the stream it belonged to, so an interactive tunnel does not wait behind a bulk
//! one as it does on one TCP connection. The connection survives a change of the client's
//! address (QUIC connection migration) without a new handshake.
//!
//! [`TunnelRequest`]: postern_proto::wire::TunnelRequest
//! [`TunnelResponse`]: postern_proto::wire::TunnelResponse

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod congestion;
pub mod window;

/// Largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 16 * 1024;
/// Keep-alive: a quiet connection sends a PING this often, so NAT bindings stay and a dead
/// path is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// The client's keep-alive: often enough that a client hears from a live gateway (its
/// acknowledgements) several times within its stall limit, so a dead path is noticed in
/// about two seconds rather than at the idle timeout.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Both ends' first round-trip estimate before they have measured one. quinn's default
/// (333 ms) makes a handshake whose flight loses a packet wait about a second to resend it
/// (the probe timeout is RTT + 4 × RTT/2): longer than the client's one-second attempt while
/// resuming, so on a lossy link one lost packet of the gateway's certificate flight sent the
/// client to TCP (a 2.4 s recovery on `poor`). At 100 ms the probe comes after 300 ms; on a
/// path slower than that, a spurious resend of a few kilobytes is the cost.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// A connection that hears nothing for this long is closed: how long the gateway takes to see
/// that a client vanished without closing (killed, or its network gone) and suspend its
/// resumable tunnels (or end the others). The client pings every half second.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent tunnel streams one client connection may have open.
pub const MAX_STREAMS: u32 = 1024;
/// A connector link's keep-alive (both ends): a quiet link still carries a packet this often,
/// so its NAT binding stays and a dead path is noticed before a clinician needs the link.
pub const LINK_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connector link that hears nothing for this long is closed (the connector redials; the
/// gateway ends the tunnels it carried as `connector_lost`). Over TCP, a killed connector's
/// kernel resets its connections at once; over UDP nothing tells the gateway, so this bounds
/// how long the sessions of a crashed connector hang (five missed keep-alives; the HTTP/2
/// link needs 15 s + 20 s to see a dead path).
pub const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent tunnel streams the gateway may open on one connector link (the HTTP/2 link's
/// `max_concurrent_streams`).
pub const LINK_MAX_STREAMS: u32 = 16_384;
/// Flow control: a stream may use the whole connection window, which [`window::tune`] sizes
/// from the measured bandwidth-delay product (starting at [`window::MIN_WINDOW`], at most
/// [`window::MAX_WINDOW`]); so one tunnel can fill a long path, and what a peer can make this
/// side buffer is bounded per connection by the window, not by the number of streams.
const STREAM_WINDOW: u64 = window::MAX_WINDOW;
const CONN_WINDOW: u64 = window::MIN_WINDOW;
/// Bytes this side buffers for a connection (in flight, or written and not yet sent) until
/// [`window::tune`] sizes it from the congestion window ([`window::send_window`]).
const SEND_WINDOW: u64 = window::MIN_SEND_WINDOW;

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes `value` as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    value: &impl serde::Serialize,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame (at most [`MAX_FRAME`] bytes of JSON).
pub async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(base_transport())
}

fn base_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(quinn::VarInt::from_u64(STREAM_WINDOW).unwrap_or(quinn::VarInt::MAX))
        .receive_window(quinn::VarInt::from_u64(CONN_WINDOW).unwrap_or(quinn::VarInt::MAX))
        .send_window(SEND_WINDOW)
        .initial_rtt(INITIAL_RTT)
        // See `congestion`: fills the path without filling its bottleneck's queue.
        .congestion_controller_factory(Arc::new(congestion::BdpConfig));
    t
}

/// The gateway's QUIC server configuration from its TLS configuration (TLS 1.3, ALPN
/// [`ALPN_QUIC`](postern_proto::wire::ALPN_QUIC), no 0-RTT).
pub fn server_config(tls: Arc<rustls::ServerConfig>) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("QUIC server TLS configuration: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    // A client that moves to another address (a Wi-Fi change) keeps its connection.
    config.migration(true);
    Ok(config)
}

/// A server endpoint's configuration from its persistent secret (`reset_secret`, 32 bytes kept
/// across restarts): the stateless-reset key, and connection ids whose validity is checked with
/// a key derived from it. quinn's default draws that key at random on each start, so a
/// restarted gateway dropped the packets of its old connections as "invalid CID" instead of
/// answering with a stateless reset, and a peer learnt of the restart only at its idle
/// timeout; with both keys persistent, the first packet after a restart ends the old
/// connection and the peer redials at once.
pub fn server_endpoint_config(reset_secret: &[u8]) -> quinn::EndpointConfig {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let tag = ring::hmac::sign(&key, b"postern quic connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// A connector link's transport: the client connection's congestion control and send window,
/// but the HTTP/2 link's fixed receive windows ([`wire::STREAM_WINDOW`] per stream,
/// [`wire::CONN_WINDOW`] per connection, not tuned: see [`window::tune_send`]); the link's
/// keep-alive; `bidi` streams the peer may open (the connector accepts the gateway's requests;
/// the gateway accepts none) and `uni` (the connector's notice).
///
/// Why not the client's windows (any stream up to the whole, BDP-sized connection window): a
/// link's receiver is often slower than its path — the gateway reads a download only as fast
/// as the clinician's home link takes it — so one download's unread bytes filled the
/// connection's window and every other tunnel of the link waited for credit behind it (an
/// interactive round trip beside a download on `poor`: 159 ms p50 instead of 106). With the
/// stream window a quarter of the connection's, one stalled stream leaves room for the rest.
///
/// [`wire::STREAM_WINDOW`]: postern_proto::wire::STREAM_WINDOW
/// [`wire::CONN_WINDOW`]: postern_proto::wire::CONN_WINDOW
fn link_transport(bidi: u32, uni: u32) -> quinn::TransportConfig {
    use postern_proto::wire::{
        CONN_WINDOW as LINK_CONN_WINDOW, STREAM_WINDOW as LINK_STREAM_WINDOW,
    };
    let mut t = base_transport();
    t.stream_receive_window(quinn::VarInt::from_u32(LINK_STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(LINK_CONN_WINDOW))
        .keep_alive_interval(Some(LINK_KEEP_ALIVE))
        .max_idle_timeout(quinn::IdleTimeout::try_from(LINK_IDLE_TIMEOUT).ok())
        .max_concurrent_bidi_streams(bidi.into())
        .max_concurrent_uni_streams(uni.into());
    t
}

/// The gateway's QUIC server configuration for connector links, from the connector
/// listener's mutual-TLS configuration (ALPN [`ALPN_LINK_QUIC`](postern_proto::wire::ALPN_LINK_QUIC)).
pub fn link_server_config(tls: Arc<rustls::ServerConfig>) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("QUIC link TLS configuration: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(link_transport(0, 1)));
    Ok(config)
}

/// A connector's QUIC client configuration for one link dial, from its mutual-TLS client
/// configuration (whose ALPN is replaced by [`ALPN_LINK_QUIC`](postern_proto::wire::ALPN_LINK_QUIC)).
pub fn link_client_config(tls: &rustls::ClientConfig) -> Result<quinn::ClientConfig, String> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![postern_proto::wire::ALPN_LINK_QUIC.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| format!("QUIC link TLS configuration: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(link_transport(LINK_MAX_STREAMS, 0)));
    Ok(config)
}

/// A UDP endpoint on an ephemeral port of the wildcard address (IPv6 if the host has it, else
/// IPv4) with no default client configuration: each dial names its own.
pub fn dial_endpoint() -> Result<quinn::Endpoint, String> {
    let bind = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    quinn::Endpoint::client(bind)
        .or_else(|_| quinn::Endpoint::client(std::net::SocketAddr::from(([0, 0, 0, 0], 0))))
        .map_err(|e| format!("opening a UDP socket: {e}"))
}

/// A client endpoint on an ephemeral UDP port of the wildcard address (so that a new local
/// address after a network change is used at once), dialling with `tls`.
pub fn client_endpoint(tls: Arc<rustls::ClientConfig>) -> Result<quinn::Endpoint, String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("QUIC client TLS configuration: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = base_transport();
    t.keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    config.transport_config(Arc::new(t));
    let mut endpoint = dial_endpoint()?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// One tunnel stream as a byte stream (reads from `recv`, writes to `send`).
pub type TunnelStream = tokio::io::Join<quinn::RecvStream, FairSend>;

/// Joins the two halves of a bidirectional stream.
pub fn tunnel_stream(send: quinn::SendStream, recv: quinn::RecvStream) -> TunnelStream {
    tokio::io::join(recv, FairSend::new(send))
}

/// A stream that wrote more than this within the last one or two [`BULK_WINDOW`]s counts as
/// bulk.
pub const BULK_BYTES: u64 = 256 * 1024;
pub const BULK_WINDOW: Duration = Duration::from_millis(250);
/// How long a bulk writer that had to wait for room holds back once room is there.
pub const BULK_DEFER: Duration = Duration::from_millis(1);

/// A tunnel's send half that lets small writers go first when the connection's send buffer
/// frees up.
///
/// All streams of a connection share one send buffer ([`window::send_window`]). A bulk
/// writer (a study download) keeps it full, so a small write beside it (an RDP screen update)
/// finds it full too and waits; when an acknowledgement frees room, quinn wakes every waiting
/// writer and the bulk one may take all the room again, so the small write waits for the next
/// acknowledgement, and the next. Measured on the emulated `poor` link, that added a median
/// 50–60 ms to an interactive round trip beside a download (and nothing when the buffer was
/// made too large to fill). So a stream that has written more than [`BULK_BYTES`] in the last
/// [`BULK_WINDOW`] and had to wait holds back for [`BULK_DEFER`] before it writes again: the
/// small writers woken with it write first, then it takes what has freed up meanwhile (a
/// millisecond of acknowledgements; the buffer holds far more than that unsent, so the path
/// does not go idle). What goes on the wire is then interleaved packet by packet (quinn sends
/// the connection's streams in turn).
pub struct FairSend {
    inner: quinn::SendStream,
    waited: bool,
    recent: u64,
    before: u64,
    since: std::time::Instant,
    defer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    deferring: bool,
}

impl FairSend {
    pub fn new(inner: quinn::SendStream) -> FairSend {
        FairSend {
            inner,
            waited: false,
            recent: 0,
            before: 0,
            since: std::time::Instant::now(),
            defer: None,
            deferring: false,
        }
    }

    /// Whether the stream wrote [`BULK_BYTES`] within the current and the previous
    /// [`BULK_WINDOW`] (two buckets, so that a steady writer stays bulk across the turn).
    fn is_bulk(&mut self) -> bool {
        let now = std::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= BULK_WINDOW {
            self.before = if elapsed < 2 * BULK_WINDOW {
                self.recent
            } else {
                0
            };
            self.since = now;
            self.recent = 0;
        }
        self.before + self.recent >= BULK_BYTES
    }
}

impl AsyncWrite for FairSend {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if std::mem::take(&mut this.waited) && this.is_bulk() {
            let until = tokio::time::Instant::now() + BULK_DEFER;
            // One timer per stream, reset for each hold-back (this is every acknowledgement
            // of a bulk transfer), allocated the first time.
            match this.defer.as_mut() {
                Some(d) => d.as_mut().reset(until),
                None => this.defer = Some(Box::pin(tokio::time::sleep_until(until))),
            }
            this.deferring = true;
        }
        if this.deferring {
            if let Some(d) = this.defer.as_mut() {
                if d.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.deferring = false;
        }
        match AsyncWrite::poll_write(std::pin::Pin::new(&mut this.inner), cx, buf) {
            Poll::Pending => {
                this.waited = true;
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                this.recent += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.inner), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::wire::{TunnelRequest, TunnelResponse};

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_malformed_ones_are_refused() {
        let req = TunnelRequest {
            endpoint: "truro-pacs".into(),
            token: "t".into(),
            justification: None,
            resumable: false,
            resume: None,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).await.unwrap();
        let back: TunnelRequest = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, req);

        let mut big = Vec::new();
        big.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        let e = read_frame::<_, TunnelResponse>(&mut big.as_slice())
            .await
            .unwrap_err();
        assert!(
            matches!(e, FrameError::TooLarge(n) if n == MAX_FRAME + 1),
            "{e}"
        );

        let mut bad = Vec::new();
        bad.extend_from_slice(&3u32.to_be_bytes());
        bad.extend_from_slice(b"{x}");
        let e = read_frame::<_, TunnelResponse>(&mut bad.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e}");

        // Cut short: an I/O error, not a hang or a panic.
        let e = read_frame::<_, TunnelResponse>(&mut &buf[..buf.len() - 1])
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Io(_)), "{e}");
        let unknown = br#"{"endpoint":"e","token":"t","extra":1}"#;
        let mut framed = (unknown.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(unknown);
        let e = read_frame::<_, TunnelRequest>(&mut framed.as_slice())
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e}");
    }
}
