//! Connector links over QUIC: UDP on the connector listener's port, mutual TLS 1.3 with ALPN
//! `postern-link/1` and the connector CA, the same rate limit (`connector_dial`) and pool
//! (`max_connector_connections`) as TCP links, the handshake under `handshake_timeout`; then
//! `connectors::link` checks the certificate against the store as for a TCP link. Draining
//! stops new links (the live ones carry their tunnels on); shutdown closes the endpoint.

use std::sync::Arc;

use tracing::{debug, warn, Instrument};

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
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = app.life.draining.cancelled() => break,
        };
        let peer = incoming.remote_address();
        if app.limits.connector_dial.check(&peer.ip()).is_err() {
            app.metrics.note_ratelimited("connector");
            debug!(%peer, "connector connection attempts over the limit; dropped");
            incoming.ignore();
            continue;
        }
        let Ok(permit) = app.life.connector_conns.clone().try_acquire_owned() else {
            app.metrics
                .connections_refused
                .with_label_values(&["connector", "pool_full"])
                .inc();
            warn!(%peer, "connector connection limit (max_connector_connections) reached; refusing connector QUIC link");
            incoming.refuse();
            continue;
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
    }
    // Draining: no new links; the live ones go on until shutdown.
    endpoint.set_server_config(None);
    app.life.shutdown.cancelled().await;
    endpoint.close(0u32.into(), b"gateway shutting down");
}

async fn handshake(app: Arc<App>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout(app.config.handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Certificates from another CA end here, as do scanners and garbage.
            debug!(error = %e, "connector QUIC handshake failed");
            if e.to_string().contains("certificate") {
                app.links
                    .refuse(peer, None, &format!("QUIC handshake failed: {e}"));
            }
            return;
        }
        Err(_) => {
            debug!("connector QUIC handshake timed out");
            return;
        }
    };
    app.links.clone().serve_quic(conn).await
}
