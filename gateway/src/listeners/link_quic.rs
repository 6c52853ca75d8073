//! Connector links over QUIC: UDP on the connector listener's port, mutual TLS 1.3 with ALPN
//! `postern-link/1` and the connector CA, the same rate limit (`connector_dial`) and pool
//! (`max_connector_connections`) as TCP links, the handshake under `handshake_timeout`; then
//! `connectors::link` checks the certificate against the store as for a TCP link. Draining
//! stops new links (the live ones carry their tunnels on); shutdown closes the endpoint.

use std::sync::Arc;

use tracing::{debug, Instrument};

use crate::app::App;
use crate::error::GatewayError;

/// Binds the connector QUIC endpoint on `socket`.
pub fn endpoint(app: &App, socket: std::net::UdpSocket) -> Result<quinn::Endpoint, GatewayError> {
    let config = postern_net::quic::link_server_config(app.tls.connector_quic.clone())
        .map_err(|e| GatewayError::other("the connector QUIC listener", e))?;
    super::quic::endpoint_with(socket, config, &app.config.state_dir)
}

/// Accepts connector QUIC links until the gateway drains; closes the endpoint at shutdown.
pub async fn accept_loop(app: Arc<App>, endpoint: quinn::Endpoint) {
    super::quic::accept_until_drained(&app, endpoint, |incoming| {
        let peer = incoming.remote_address();
        let Some(permit) = super::connector::admit(&app, peer, "QUIC") else {
            incoming.refuse();
            return;
        };
        let task_app = app.clone();
        let span = tracing::debug_span!("connector", %peer, transport = "quic");
        app.life.conns.spawn(
            async move {
                handshake(task_app, incoming).await;
                drop(permit);
            }
            .instrument(span),
        );
    })
    .await
}

async fn handshake(app: Arc<App>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout(app.config.handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return super::connector::handshake_failed(&app, peer, "QUIC", &e),
        Err(_) => {
            debug!("connector QUIC handshake timed out");
            return;
        }
    };
    app.links.clone().serve_quic(conn).await
}
