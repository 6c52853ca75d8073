//! Postern's HTTP/2 configuration, applied to hyper's builders in one place.
//!
//! Every HTTP/2 connection Postern makes or accepts uses the same flow control and framing:
//!
//! * fixed flow-control windows, [`STREAM_WINDOW`] per stream and [`CONN_WINDOW`] per
//!   connection (why fixed rather than hyper's adaptive estimate: see [`STREAM_WINDOW`]);
//! * [`MAX_FRAME_SIZE`] (64 KiB) frames, so a bulk transfer moves in few frames;
//! * tokio's timer, which hyper needs for keep-alive pings.
//!
//! Keep-alive differs by kind of connection and is the one parameter, a [`KeepAlive`]:
//! [`CLIENT`] for clinician ↔ gateway (the `postern` CLI and the gateway's client listener),
//! [`LINK`] for gateway ↔ connector links (both ends). Limits that belong to one listener
//! (concurrent streams, header list size) stay with that listener: the builders returned here
//! can be configured further before use.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use postern_proto::wire::{CONN_WINDOW, STREAM_WINDOW};

/// Largest HTTP/2 frame Postern sends and accepts.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// HTTP/2 PING keep-alive: how often to ping, how long to wait for the answer before the
/// connection is declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
    /// Clients only: ping also when no stream is open. (hyper's servers always do.)
    pub while_idle: bool,
}

/// Clinician ↔ gateway, the gateway's client listener: a ping every 5 s, 5 s for the answer,
/// so a client whose link died is noticed within 10 s and its resumable tunnels are suspended
/// (audited) rather than seeming live. (The CLI pings more often: [`CLI`].)
pub const CLIENT: KeepAlive = KeepAlive {
    interval: Duration::from_secs(5),
    timeout: Duration::from_secs(5),
    while_idle: false,
};

/// The `postern` CLI's side of clinician ↔ gateway: a ping every half second when nothing else
/// arrives, also with no tunnel open, so that the CLI hears from a live gateway several times
/// within its two-second stall limit and takes a silent connection for dead (then resumes its
/// tunnels on a new one). hyper's own timeout is a backstop.
pub const CLI: KeepAlive = KeepAlive {
    interval: Duration::from_millis(500),
    timeout: Duration::from_secs(5),
    while_idle: true,
};

/// Gateway ↔ connector links, on both ends: a ping every 15 s, 20 s for the answer, also while
/// no tunnel is open, so a dead link is noticed (and redialled) before a clinician needs it.
pub const LINK: KeepAlive = KeepAlive {
    interval: Duration::from_secs(15),
    timeout: Duration::from_secs(20),
    while_idle: true,
};

/// Unsent bytes the kernel may hold for a multiplexed connection's socket before a write
/// waits: about 35 ms at 30 Mbit/s, so a frame of another stream written now goes out after
/// that much, not after the whole send buffer (megabytes, seconds on a home link). Measured on
/// the emulated `poor` link: an interactive stream's round trip beside a download over one
/// HTTP/2 connection, p50 860 ms without, 321 ms with (docs/benchmarks.md).
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Settings for the TCP socket under a multiplexed HTTP/2 connection (a client's to the
/// gateway, a connector's link): no Nagle delay, and at most [`NOTSENT_LOWAT`] unsent bytes in
/// the kernel (Linux; elsewhere only the first). Best effort: a setting the system refuses is
/// left as it was.
pub fn tune_socket(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    }
}

/// An HTTP/2 client builder (tokio executor and timer) with Postern's settings.
pub fn client(keep_alive: KeepAlive) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout)
        .keep_alive_while_idle(keep_alive.while_idle);
    b
}

/// An HTTP/2 server builder (tokio executor and timer) with Postern's settings.
pub fn server(keep_alive: KeepAlive) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout);
    b
}

/// Applies Postern's settings to the HTTP/2 half of a hyper-util HTTP/1 + HTTP/2 server
/// builder, and returns that half for listener-specific limits.
pub fn auto_server<E>(
    builder: &mut hyper_util::server::conn::auto::Builder<E>,
    keep_alive: KeepAlive,
) -> hyper_util::server::conn::auto::Http2Builder<'_, E> {
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout);
    h2
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// Serves one GET answering a body larger than hyper's default window, over an in-memory
    /// pipe, with the builders under test on both ends.
    async fn round_trip(
        serve: impl FnOnce(TokioIo<tokio::io::DuplexStream>) -> tokio::task::JoinHandle<()>,
        keep_alive: KeepAlive,
    ) {
        let (c, s) = tokio::io::duplex(1 << 20);
        let server = serve(TokioIo::new(s));
        let (mut sender, conn) = client(keep_alive)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(c))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(http::Request::get("/big").body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 300_000);
        drop(sender);
        conn.await.unwrap().unwrap();
        server.await.unwrap();
    }

    fn big(
        _: http::Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Result<http::Response<Full<Bytes>>, std::convert::Infallible>>
    {
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from(vec![
            1u8;
            300_000
        ])))))
    }

    #[tokio::test]
    async fn client_and_server_builders_talk() {
        for keep_alive in [LINK, CLIENT] {
            round_trip(
                |io| {
                    tokio::spawn(async move {
                        server(keep_alive)
                            .max_concurrent_streams(16)
                            .serve_connection(io, service_fn(big))
                            .await
                            .unwrap();
                    })
                },
                keep_alive,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn auto_server_speaks_h2() {
        round_trip(
            |io| {
                tokio::spawn(async move {
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    auto_server(&mut b, CLIENT).max_concurrent_streams(16);
                    b.serve_connection(io, service_fn(big)).await.unwrap();
                })
            },
            CLIENT,
        )
        .await;
    }

    #[test]
    fn settings_are_the_documented_ones() {
        assert_eq!(MAX_FRAME_SIZE, 65_536);
        assert_eq!(
            (CLIENT.interval, CLIENT.timeout, CLIENT.while_idle),
            (Duration::from_secs(5), Duration::from_secs(5), false)
        );
        assert_eq!(
            (CLI.interval, CLI.timeout, CLI.while_idle),
            (Duration::from_millis(500), Duration::from_secs(5), true)
        );
        assert_eq!(
            (LINK.interval, LINK.timeout, LINK.while_idle),
            (Duration::from_secs(15), Duration::from_secs(20), true)
        );
    }

    #[tokio::test]
    async fn a_multiplexed_connection_s_socket_keeps_little_unsent_data_in_the_kernel() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_socket(&tcp);
        assert!(tcp.nodelay().unwrap());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(
            socket2::SockRef::from(&tcp).tcp_notsent_lowat().unwrap(),
            NOTSENT_LOWAT
        );
    }
}
