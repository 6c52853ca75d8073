//! The connector listener (mutual TLS, ALPN `postern-connector/1`) and the registry of live
//! connector links.
//!
//! A connector's certificate must chain to the connector CA *and* match the serial recorded for
//! its id in the store and not be revoked. Once accepted, the gateway becomes the HTTP/2 client
//! on that connection; each tunnel is one `CONNECT` stream on it (no handshake per session).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use postern_audit::{ConnectorRef, EventType};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Gateway;

/// One live connection from a connector.
pub struct Link {
    pub seq: u64,
    pub connector_id: String,
    pub site: String,
    pub serial: String,
    pub peer: SocketAddr,
    pub sender: SendRequest<Empty<Bytes>>,
    pub cancel: CancellationToken,
    /// Cancelled once the connection has ended, for whatever reason: a session relayed over
    /// it that fails then ends with reason `connector_lost` rather than `endpoint_error`.
    pub lost: CancellationToken,
}

impl Link {
    pub fn connector_ref(&self) -> ConnectorRef {
        ConnectorRef {
            id: self.connector_id.clone(),
            site: self.site.clone(),
        }
    }
}

/// Live links by site.
#[derive(Default)]
pub struct Registry {
    by_site: Mutex<HashMap<String, Vec<Arc<Link>>>>,
    next: AtomicUsize,
    seq: AtomicU64,
}

impl Registry {
    fn add(&self, link: Arc<Link>) {
        if let Ok(mut m) = self.by_site.lock() {
            m.entry(link.site.clone()).or_default().push(link);
        }
    }

    fn remove(&self, link: &Link) {
        if let Ok(mut m) = self.by_site.lock() {
            if let Some(v) = m.get_mut(&link.site) {
                v.retain(|l| l.seq != link.seq);
                if v.is_empty() {
                    m.remove(&link.site);
                }
            }
        }
    }

    /// A live link of `site`, round robin over the healthy ones.
    pub fn pick(&self, site: &str) -> Option<Arc<Link>> {
        let m = self.by_site.lock().ok()?;
        let links = m.get(site)?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..links.len())
            .map(|i| &links[(start + i) % links.len()])
            .find(|l| !l.sender.is_closed() && !l.cancel.is_cancelled())
            .cloned()
    }

    fn all(&self) -> Vec<Arc<Link>> {
        self.by_site
            .lock()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }
}

pub async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = crate::next_conn(&listener, &gw.draining, "connector").await else {
            return;
        };
        if gw.limits.connector_dial.check(&peer.ip()).is_err() {
            gw.note_ratelimited("connector");
            debug!(%peer, "connector connection attempts over the limit; dropped");
            continue;
        }
        let Ok(permit) = gw.conn_limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; refusing connector connection");
            continue;
        };
        let task_gw = gw.clone();
        gw.conns.spawn(async move {
            handle(task_gw, tcp, peer).await;
            drop(permit);
        });
    }
}

/// (connector id, certificate serial hex) from the peer's leaf certificate.
fn identity(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let serial = postern_proto::ids::hex(cert.raw_serial());
    Some((cn, serial))
}

fn refuse(gw: &Gateway, peer: SocketAddr, id: Option<&str>, why: &str) {
    warn!(%peer, connector_id = id.unwrap_or("?"), reason = why, "connector refused");
    let mut ev = gw.event(EventType::ConnectorRefused);
    ev.source = Some(peer.to_string());
    ev.connector = id.map(|id| ConnectorRef {
        id: id.to_owned(),
        site: String::new(),
    });
    ev.detail = Some(why.to_owned());
    gw.audit.record_nowait(ev);
}

async fn handle(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(gw.config.handshake_timeout, gw.connector_tls.accept(tcp))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Certificates from another CA end here, as do port scanners and garbage.
            debug!(%peer, error = %e, "connector TLS handshake failed");
            if e.to_string().contains("certificate") {
                refuse(&gw, peer, None, &format!("TLS handshake failed: {e}"));
            }
            return;
        }
        Err(_) => {
            debug!(%peer, "connector TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let Some((id, serial)) = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity(c.as_ref()))
    else {
        refuse(
            &gw,
            peer,
            None,
            "client certificate has no readable identity",
        );
        return;
    };
    let rec = match gw.store.connector(id.clone()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the state store; refusing connector");
            return;
        }
    };
    let renewing = conn.alpn_protocol() == Some(postern_proto::wire::ALPN_RENEW);
    let refuse_id = |why: &str| {
        let why = if renewing {
            format!("{why} (certificate renewal refused)")
        } else {
            why.to_owned()
        };
        refuse(&gw, peer, Some(&id), &why);
    };
    let Some(rec) = rec else {
        refuse_id("unknown connector id");
        return;
    };
    if rec.revoked.is_some() {
        refuse_id("connector certificate is revoked");
        return;
    }
    if !rec.accepts_serial(&serial) {
        refuse_id("certificate serial does not match the enrolled certificate");
        return;
    }
    let site = rec.site.clone();
    if renewing {
        crate::renew::serve(gw, tls, peer, rec, serial).await;
        return;
    }

    let handshake = postern_net::h2::client(postern_net::h2::LINK)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls));
    let (sender, connection) =
        match tokio::time::timeout(gw.config.handshake_timeout, handshake).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "HTTP/2 handshake with connector failed");
                return;
            }
            Err(_) => return,
        };
    let link = Arc::new(Link {
        seq: gw.registry.seq.fetch_add(1, Ordering::Relaxed),
        connector_id: id.clone(),
        site: site.clone(),
        serial,
        peer,
        sender,
        cancel: CancellationToken::new(),
        lost: CancellationToken::new(),
    });
    gw.registry.add(link.clone());
    let connected = gw.metrics.connectors_connected.with_label_values(&[&site]);
    connected.inc();
    info!(connector_id = %id, %site, %peer, "connector connected");
    let mut ev = gw.event(EventType::ConnectorConnected);
    ev.connector = Some(link.connector_ref());
    ev.source = Some(peer.to_string());
    ev.site = Some(site.clone());
    gw.audit.record_nowait(ev);
    let probe = tokio::spawn(crate::rtt::probe(gw.clone(), link.clone()));

    let why = tokio::select! {
        r = connection => match r {
            Ok(()) => "connection closed".to_owned(),
            Err(e) => format!("connection lost: {e}"),
        },
        _ = link.cancel.cancelled() => "certificate revoked".to_owned(),
        _ = gw.shutdown.cancelled() => "gateway shutting down".to_owned(),
    };
    probe.abort();
    gw.registry.remove(&link);
    link.lost.cancel();
    connected.dec();
    info!(connector_id = %id, %site, %peer, reason = %why, "connector disconnected");
    let mut ev = gw.event(EventType::ConnectorDisconnected);
    ev.connector = Some(link.connector_ref());
    ev.source = Some(peer.to_string());
    ev.site = Some(site);
    ev.detail = Some(why);
    gw.audit.record_nowait(ev);
}

/// Tells every connected connector that this gateway is draining (`POST /v1/draining` on
/// each link), so that it dials again now — reaching another replica — instead of when the
/// link closes at the end of the grace period. The links themselves stay up for the sessions
/// they carry. Best effort: a connector that does not answer within a second is left alone.
pub fn announce_drain(gw: &Gateway) {
    for link in gw.registry.all() {
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(postern_proto::wire::PATH_DRAINING)
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else { continue };
        let mut sender = link.sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(1), sender.send_request(req)).await {
                Ok(Ok(_)) => {
                    debug!(connector_id = %link.connector_id, peer = %link.peer, "told connector we are draining")
                }
                Ok(Err(e)) => {
                    debug!(connector_id = %link.connector_id, error = %e, "drain notice failed")
                }
                Err(_) => debug!(connector_id = %link.connector_id, "drain notice timed out"),
            }
        });
    }
}

/// Follows the store's changes: drops links whose connector was revoked (and the sessions
/// they carry), refreshes revoked session tokens and the device table and ends the sessions
/// they revoke, so revocations made here, from the CLI or by another process take effect
/// within a second.
pub async fn watch_revocations(gw: Arc<Gateway>) {
    let mut changes = gw.store.changes();
    loop {
        match changes.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        // Whatever changed, the views are reloaded whole: one read covers a burst of changes.
        while changes.try_recv().is_ok() {}
        enforce(&gw).await;
    }
}

/// Reloads revocations and devices from the store and ends what they revoke.
async fn enforce(gw: &Gateway) {
    if let Err(e) = gw.reload_state().await {
        warn!(error = %e, "cannot read the state store; revocations not refreshed");
        return;
    }
    let ended = gw.sessions.enforce_devices(gw);
    if ended > 0 {
        info!(
            sessions = ended,
            "live sessions ended: device or user revoked"
        );
    }
    let connectors = match gw.store.connectors().await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read the state store; connector revocations not checked");
            return;
        }
    };
    for link in gw.registry.all() {
        let ok = connectors
            .iter()
            .find(|r| r.id == link.connector_id)
            .is_some_and(|r| r.revoked.is_none() && r.accepts_serial(&link.serial));
        if !ok {
            let n = gw
                .sessions
                .kill_connector(&link.connector_id, "connector_revoked");
            info!(connector_id = %link.connector_id, peer = %link.peer, sessions = n, "connector revoked: dropping its connection");
            link.cancel.cancel();
        }
    }
}
