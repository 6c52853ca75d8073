//! Serving one connector connection after its TLS handshake: the certificate's identity is
//! checked against the store (chains to the connector CA — the handshake did that — *and* its
//! serial is the one on record for its id, current or previous, *and* it is not revoked); a
//! renewal connection goes to `renew`, a link is registered and the gateway becomes the
//! HTTP/2 client on it: each tunnel is one `CONNECT` stream (no handshake per session). A link
//! over QUIC (`serve_quic`) passes the same checks; each request is then one stream the
//! gateway opens ([`Channel`]), and the connector's going-away notice stands for GOAWAY.
//!
//! A revoked connector is told so instead of being dropped (it would redial forever): on a link
//! the gateway sends `POST /v1/refused` with `postern-refusal: revoked` and
//! `postern-revoked-at`; on a renewal connection it answers 403 with the same headers. Only the
//! first refusal of each revoked connector is audited (and logged as a warning); its further
//! attempts are logged at debug level.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use postern_audit::{ConnectorRef, EventType};
use postern_net::quic::read_frame;
use postern_proto::wire::{self, ALPN_RENEW};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::registry::{Channel, Link, QuicLink, Registry};
use super::renew::Renewals;
use super::rtt;
use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::state::{ConnectorRec, SharedStore};

/// What serving connector connections needs.
pub struct Links {
    pub registry: Arc<Registry>,
    pub store: SharedStore,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub renewals: Arc<Renewals>,
    /// Bounds the HTTP/2 handshake on a new link.
    pub handshake_timeout: Duration,
    /// Cancelled at shutdown: links close.
    pub shutdown: CancellationToken,
    pub clock: SharedClock,
    /// Revoked connectors already told (and audited) since start: their retries are not
    /// audited again. At most `REVOKED_TOLD_MAX` ids (only certificates of the connector CA
    /// get this far, so the set is as small as the list of revoked connectors).
    pub revoked_told: Mutex<HashSet<String>>,
    /// The connector addresses of the live replicas (`replica::follow_set` keeps it), told to
    /// every link when it comes up and again on each change.
    pub replica_set: Arc<tokio::sync::watch::Sender<Vec<String>>>,
}

/// Bound on [`Links::revoked_told`]; past it, refusals are audited every time again.
const REVOKED_TOLD_MAX: usize = 10_000;

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

impl Links {
    /// Audits a refused connector connection (`connector.refused`).
    pub fn refuse(&self, peer: SocketAddr, id: Option<&str>, why: &str) {
        warn!(%peer, connector_id = id.unwrap_or("?"), reason = why, "connector refused");
        let mut ev = self.audit.event(EventType::ConnectorRefused);
        ev.source = Some(peer.to_string());
        ev.connector = id.map(|id| ConnectorRef {
            id: id.chars().take(128).collect(),
            site: String::new(),
        });
        ev.detail = Some(why.to_owned());
        self.audit.record_nowait(ev);
    }

    /// What the store says of a connection presenting `certs`: refused (audited here),
    /// revoked (at), or the connector's record and certificate serial.
    async fn admit(
        &self,
        peer: SocketAddr,
        certs: Option<&[CertificateDer<'static>]>,
        renewing: bool,
    ) -> Verdict {
        let Some((id, serial)) = certs
            .and_then(|c| c.first())
            .and_then(|c| identity(c.as_ref()))
        else {
            self.refuse(peer, None, "client certificate has no readable identity");
            return Verdict::Refused;
        };
        let rec = match self.store.connector(id.clone()).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the state store; refusing connector");
                return Verdict::Refused;
            }
        };
        let refuse_id = |why: &str| {
            let why = if renewing {
                format!("{why} (certificate renewal refused)")
            } else {
                why.to_owned()
            };
            self.refuse(peer, Some(&id), &why);
        };
        let Some(rec) = rec else {
            refuse_id("unknown connector id");
            return Verdict::Refused;
        };
        if let Some(at) = rec.revoked {
            let first = self
                .revoked_told
                .lock()
                .map(|mut told| told.len() >= REVOKED_TOLD_MAX || told.insert(id.clone()))
                .unwrap_or(true);
            if first {
                refuse_id("connector certificate is revoked (told the connector; its further attempts are not audited)");
            } else {
                debug!(%peer, connector_id = %id, "revoked connector dialled again; told it again");
            }
            return Verdict::Revoked(at);
        }
        if !rec.accepts_serial(&serial) {
            refuse_id("certificate serial does not match the enrolled certificate");
            return Verdict::Refused;
        }
        Verdict::Admitted {
            id,
            rec: Box::new(rec),
            serial,
        }
    }

    /// Serves one connector connection whose TLS handshake has completed.
    pub async fn serve(self: Arc<Self>, tls: TlsStream<TcpStream>, peer: SocketAddr) {
        let (_, conn) = tls.get_ref();
        let renewing = conn.alpn_protocol() == Some(ALPN_RENEW);
        let certs = conn.peer_certificates().map(|c| c.to_vec());
        match self.admit(peer, certs.as_deref(), renewing).await {
            Verdict::Refused => {}
            Verdict::Revoked(at) if renewing => answer_revoked(tls, at).await,
            Verdict::Revoked(at) => {
                let limit = self.handshake_timeout;
                let told = async {
                    let (sender, connection) = postern_net::h2::client(postern_net::h2::LINK)
                        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                    let conn = tokio::spawn(connection);
                    let r = tell_revoked(&Channel::H2(sender), at, limit).await;
                    conn.abort();
                    r
                };
                if let Ok(Err(e)) = tokio::time::timeout(limit, told).await {
                    debug!(error = %e, "could not tell the connector it is revoked");
                }
            }
            Verdict::Admitted { rec, serial, .. } if renewing => {
                self.renewals.clone().serve(tls, peer, *rec, serial).await
            }
            Verdict::Admitted { id, rec, serial } => {
                let span = tracing::info_span!("link", connector_id = %id, site = %rec.site, %peer);
                let handshake = postern_net::h2::client(postern_net::h2::LINK)
                    .handshake::<_, Empty<Bytes>>(TokioIo::new(tls));
                let (sender, connection) =
                    match tokio::time::timeout(self.handshake_timeout, handshake).await {
                        Ok(Ok(x)) => x,
                        Ok(Err(e)) => {
                            debug!(error = %e, "HTTP/2 handshake with connector failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let connection =
                    Box::pin(async move { connection.await.map_err(|e| e.to_string()) });
                let ident = Ident {
                    peer,
                    id,
                    site: rec.site,
                    serial,
                };
                self.link(Channel::H2(sender), connection, ident)
                    .instrument(span)
                    .await
            }
        }
    }

    /// Serves one connector link over QUIC whose handshake has completed.
    pub async fn serve_quic(self: Arc<Self>, conn: quinn::Connection) {
        let peer = conn.remote_address();
        let certs = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
        match self
            .admit(peer, certs.as_deref().map(|c| c.as_slice()), false)
            .await
        {
            Verdict::Refused => conn.close(CLOSE_REFUSED.into(), b"refused"),
            Verdict::Revoked(at) => {
                let channel = Channel::Quic(QuicLink::new(conn.clone()));
                let told = tell_revoked(&channel, at, self.handshake_timeout);
                if let Ok(Err(e)) = tokio::time::timeout(self.handshake_timeout, told).await {
                    debug!(error = %e, "could not tell the connector it is revoked");
                }
                conn.close(CLOSE_REFUSED.into(), b"revoked");
            }
            Verdict::Admitted { id, rec, serial } => {
                let span = tracing::info_span!("link", connector_id = %id, site = %rec.site, %peer);
                postern_net::quic::window::tune_send(conn.clone());
                let going_away = CancellationToken::new();
                let connection = Box::pin(quic_notices(conn.clone(), going_away.clone()));
                let ident = Ident {
                    peer,
                    id,
                    site: rec.site,
                    serial,
                };
                self.link_with(
                    Channel::Quic(QuicLink::new(conn)),
                    connection,
                    ident,
                    going_away,
                )
                .instrument(span)
                .await
            }
        }
    }

    /// Runs one link until it closes, is revoked or the gateway shuts down.
    async fn link(self: Arc<Self>, channel: Channel, connection: Connection, ident: Ident) {
        self.link_with(channel, connection, ident, CancellationToken::new())
            .await
    }

    async fn link_with(
        self: Arc<Self>,
        channel: Channel,
        connection: Connection,
        ident: Ident,
        going_away: CancellationToken,
    ) {
        let Ident {
            peer,
            id,
            site,
            serial,
        } = ident;
        let transport = channel.transport();
        let link = Arc::new(Link {
            seq: self.registry.next_seq(),
            connector_id: id,
            site: site.clone(),
            serial,
            peer,
            channel,
            cancel: CancellationToken::new(),
            lost: CancellationToken::new(),
            going_away,
        });
        self.registry.add(link.clone());
        let connected = self
            .metrics
            .connectors_connected
            .with_label_values(&[&site]);
        connected.inc();
        info!(transport, "connector connected");
        let mut ev = self.audit.event(EventType::ConnectorConnected);
        ev.connector = Some(link.connector_ref());
        ev.source = Some(peer.to_string());
        ev.site = Some(site.clone());
        ev.detail = Some(format!("link over {transport}"));
        self.audit.record_nowait(ev);
        let probe = tokio::spawn(rtt::probe(
            link.clone(),
            self.metrics.clone(),
            self.clock.clone(),
            self.shutdown.clone(),
        ));
        let advertise = tokio::spawn(advertise_replicas(
            link.clone(),
            self.replica_set.subscribe(),
            self.handshake_timeout,
        ));
        let why = tokio::select! {
            r = connection => match r {
                Ok(()) => "connection closed".to_owned(),
                Err(e) => format!("connection lost: {e}"),
            },
            _ = link.cancel.cancelled() => "certificate revoked".to_owned(),
            _ = self.shutdown.cancelled() => "gateway shutting down".to_owned(),
        };
        if let Channel::Quic(q) = &link.channel {
            q.conn.close(0u32.into(), why.as_bytes());
        }
        probe.abort();
        advertise.abort();
        self.registry.remove(&link);
        link.lost.cancel();
        connected.dec();
        info!(reason = %why, "connector disconnected");
        let mut ev = self.audit.event(EventType::ConnectorDisconnected);
        ev.connector = Some(link.connector_ref());
        ev.source = Some(peer.to_string());
        ev.site = Some(site);
        ev.detail = Some(why);
        self.audit.record_nowait(ev);
    }
}

/// A link's connection: resolves when it ends (`Err` when it failed rather than closed).
type Connection = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Who is on the other end of a link.
struct Ident {
    peer: SocketAddr,
    id: String,
    site: String,
    serial: String,
}

/// What [`Links::admit`] decided.
enum Verdict {
    /// Refused (and audited); the connection closes.
    Refused,
    /// The connector is revoked (at, Unix seconds): tell it.
    Revoked(u64),
    Admitted {
        id: String,
        rec: Box<ConnectorRec>,
        serial: String,
    },
}

/// QUIC application close code of a refused or revoked connector link.
const CLOSE_REFUSED: u32 = 1;

/// Reads the connector's notices on a QUIC link ([`wire::LinkNotice`], one unidirectional
/// stream each, at most one open at a time) until the connection ends. A notice that says
/// the connector is going away cancels `going_away`.
async fn quic_notices(
    conn: quinn::Connection,
    going_away: CancellationToken,
) -> Result<(), String> {
    loop {
        let mut stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let notice = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<_, wire::LinkNotice>(&mut stream),
        )
        .await;
        match notice {
            Ok(Ok(n)) if n.going_away => {
                info!("the connector is stopping: no new tunnels over this link");
                going_away.cancel();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, "unreadable notice from the connector"),
            Err(_) => debug!("a notice from the connector did not arrive in time"),
        }
    }
}

/// Tells a revoked connector on its link (where the gateway is the one asking): one
/// `POST /v1/refused` carrying the reason and the revocation time. An old connector that does
/// not know the path answers 405 and keeps redialling, as before.
async fn tell_revoked(channel: &Channel, revoked_at: u64, limit: Duration) -> Result<(), String> {
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(wire::PATH_REFUSED)
        .header(wire::HDR_REFUSAL, wire::REFUSAL_REVOKED)
        .header(wire::HDR_REVOKED_AT, revoked_at)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, channel.send(req)).await {
        Ok(Ok(a)) => {
            debug!(status = %a.status, "told the connector it is revoked");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("telling the connector it is revoked timed out".to_owned()),
    }
}

/// Answers a revoked connector's renewal connection (HTTP/1.1, the connector is the client):
/// 403 with the refusal headers to whatever it asks.
async fn answer_revoked(tls: TlsStream<TcpStream>, revoked_at: u64) {
    let service = hyper::service::service_fn(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            http::Response::builder()
                .status(http::StatusCode::FORBIDDEN)
                .header(wire::HDR_REFUSAL, wire::REFUSAL_REVOKED)
                .header(wire::HDR_REVOKED_AT, revoked_at)
                .header(
                    wire::HDR_REASON,
                    "this connector was revoked; enrol it again",
                )
                .body(Empty::<Bytes>::new())
        },
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), service);
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}

/// Tells the connector on `link` the replica set ([`wire::PATH_REPLICAS`]) now and after each
/// change, until the link goes. A connector that does not know the path (an older release
/// answers 405) is not told again; a request that fails or times out is retried on the next
/// change.
async fn advertise_replicas(
    link: Arc<Link>,
    mut set: tokio::sync::watch::Receiver<Vec<String>>,
    limit: Duration,
) {
    loop {
        let addrs = set.borrow_and_update().join(" ");
        if !addrs.is_empty() {
            let req = http::Request::builder()
                .method(http::Method::POST)
                .uri(wire::PATH_REPLICAS)
                .header(wire::HDR_REPLICAS, &addrs)
                .body(Empty::<Bytes>::new());
            let Ok(req) = req else { return };
            match tokio::time::timeout(limit, link.channel.send(req)).await {
                Ok(Ok(r)) if r.status.is_success() => {
                    debug!(replicas = %addrs, "told the connector the replica set")
                }
                Ok(Ok(r)) => {
                    debug!(status = %r.status, "the connector does not take the replica set");
                    return;
                }
                Ok(Err(e)) => debug!(error = %e, "telling the replica set failed"),
                Err(_) => debug!("telling the replica set timed out"),
            }
        }
        if set.changed().await.is_err() {
            return;
        }
    }
}

/// Tells every connected connector that this gateway is draining (`POST /v1/draining` on
/// each link), so that it dials again now — reaching another replica — instead of when the
/// link closes at the end of the grace period. The links themselves stay up for the sessions
/// they carry. Best effort: a connector that does not answer within a second is left alone.
pub fn announce_drain(registry: &Registry) {
    for link in registry.all() {
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(postern_proto::wire::PATH_DRAINING)
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else { continue };
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(1), link.channel.send(req)).await {
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
