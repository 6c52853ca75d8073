//! The listeners: accept, TLS handshake under a timeout, route — nothing else. Each accepted
//! connection gets its own task (the accept loop never waits on a peer); the handshake runs
//! inside it under `handshake_timeout`.
//!
//! * `client`: clinicians (HTTP/2 and HTTP/1.1 over TLS 1.3): tunnels, endpoint listing,
//!   sign-in, device ceremonies, connector enrolment.
//! * `connector`: connectors (mutual TLS): links and certificate renewals.
//! * `link_quic`: connector links over QUIC (UDP on the connector listener's port).
//! * `admin`: metrics and health (plain HTTP, loopback or a management network).

pub mod admin;
pub mod client;
pub mod connector;
pub mod link_quic;
pub mod quic;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::GatewayError;

/// The bound listeners. Binding is the caller's job, so tests bind `127.0.0.1:0` and read
/// the addresses back before the gateway starts.
pub struct Listeners {
    pub clients: TcpListener,
    pub connectors: TcpListener,
    /// Metrics and health, if configured.
    pub admin: Option<TcpListener>,
    /// QUIC for clients: UDP on the client listener's port (`[listen] quic`, on by default).
    pub quic: Option<std::net::UdpSocket>,
    /// QUIC for connector links: UDP on the connector listener's port (`[listen]
    /// connector_quic`, on by default).
    pub connector_quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// Binds the listeners from the configuration.
    pub async fn bind(config: &crate::config::Config) -> Result<Listeners, GatewayError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Io {
                    what: format!("binding the {what} listener on {addr}"),
                    source,
                })
        };
        let admin = match config.listen_admin {
            Some(a) => Some(bind(a, "admin").await?),
            None => None,
        };
        // UDP on the same port as a TCP listener (which may have been given port 0).
        let udp = |on: bool, tcp: &TcpListener, configured: SocketAddr, what: &str| {
            if !on {
                return Ok(None);
            }
            let addr = tcp.local_addr().unwrap_or(configured);
            std::net::UdpSocket::bind(addr)
                .map(Some)
                .map_err(|source| GatewayError::Io {
                    what: format!("binding the QUIC (UDP) {what} listener on {addr}"),
                    source,
                })
        };
        let clients = bind(config.listen_clients, "client").await?;
        let quic = udp(
            config.listen_quic,
            &clients,
            config.listen_clients,
            "client",
        )?;
        let connectors = bind(config.listen_connectors, "connector").await?;
        let connector_quic = udp(
            config.listen_connector_quic,
            &connectors,
            config.listen_connectors,
            "connector",
        )?;
        Ok(Listeners {
            quic,
            clients,
            connectors,
            connector_quic,
            admin,
        })
    }
}

/// The next connection on `listener`, or None once `stop` is cancelled. Accept errors (out of
/// file descriptors and the like) back off instead of spinning.
pub(crate) async fn next_conn(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
