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
        let Some(permit) = admit(&app, peer, "TCP") else {
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

/// Whether a connector connection (`kind`: TCP or QUIC) from `peer` may go on to its handshake:
/// the per-address dial rate limit, then a slot of the connector listener's own pool (client
/// connections never use it). `None`: dropped (counted and logged here).
pub(crate) fn admit(
    app: &App,
    peer: SocketAddr,
    kind: &str,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if app.limits.connector_dial.check(&peer.ip()).is_err() {
        app.metrics.note_ratelimited("connector");
        debug!(%peer, "connector connection attempts over the limit; dropped");
        return None;
    }
    let Ok(permit) = app.life.connector_conns.clone().try_acquire_owned() else {
        app.metrics
            .connections_refused
            .with_label_values(&["connector", "pool_full"])
            .inc();
        warn!(%peer, "connector connection limit (max_connector_connections) reached; refusing connector {kind} connection");
        return None;
    };
    Some(permit)
}

/// A connector handshake (`kind`: TLS or QUIC) that failed: logged, and audited when a
/// certificate was the reason (one from another CA); port scanners and garbage end here too.
pub(crate) fn handshake_failed(app: &App, peer: SocketAddr, kind: &str, e: &dyn std::fmt::Display) {
    let e = e.to_string();
    debug!(error = %e, "connector {kind} handshake failed");
    if e.contains("certificate") {
        app.links
            .refuse(peer, None, &format!("{kind} handshake failed: {e}"));
    }
}

async fn handshake(app: Arc<App>, tcp: TcpStream, peer: SocketAddr) {
    postern_net::h2::tune_socket(&tcp);
    let accept = app.tls.connector.accept(tcp);
    let tls = match tokio::time::timeout(app.config.handshake_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return handshake_failed(&app, peer, "TLS", &e),
        Err(_) => {
            debug!("connector TLS handshake timed out");
            return;
        }
    };
    app.links.clone().serve(tls, peer).await
}
