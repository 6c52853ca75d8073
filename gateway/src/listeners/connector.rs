//! The connector listener: mutual TLS (ALPN `postern-connector/1` for links,
//! `postern-renew/1` for renewals), handshake under a timeout, then `connectors::link`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn, Instrument};

use super::next_conn;
use crate::app::App;

pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = next_conn(&listener, &app.life.draining, "connector").await else {
            return;
        };
        if app.limits.connector_dial.check(&peer.ip()).is_err() {
            app.metrics.note_ratelimited("connector");
            debug!(%peer, "connector connection attempts over the limit; dropped");
            continue;
        }
        // The connector listener's own pool: client connections never use it.
        let Ok(permit) = app.life.connector_conns.clone().try_acquire_owned() else {
            app.metrics
                .connections_refused
                .with_label_values(&["connector", "pool_full"])
                .inc();
            warn!(%peer, "connector connection limit (max_connector_connections) reached; refusing connector connection");
            continue;
        };
        let task_app = app.clone();
        let span = tracing::debug_span!("connector", %peer);
        app.life.conns.spawn(
            async move {
                handshake(task_app, tcp, peer).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn handshake(app: Arc<App>, tcp: TcpStream, peer: SocketAddr) {
    postern_net::h2::tune_socket(&tcp);
    let accept = app.tls.connector.accept(tcp);
    let tls = match tokio::time::timeout(app.config.handshake_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Certificates from another CA end here, as do port scanners and garbage.
            debug!(error = %e, "connector TLS handshake failed");
            if e.to_string().contains("certificate") {
                app.links
                    .refuse(peer, None, &format!("TLS handshake failed: {e}"));
            }
            return;
        }
        Err(_) => {
            debug!("connector TLS handshake timed out");
            return;
        }
    };
    app.links.clone().serve(tls, peer).await
}
