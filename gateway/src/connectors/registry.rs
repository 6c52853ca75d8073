//! The [`Upstream`] seam — how the broker reaches an endpoint's site — and its implementation,
//! the [`Registry`] of live connector links.
//!
//! Reaching an endpoint is two steps, because the connector that will carry a session is named
//! in `session.start`, which must be durable before anything is sent to the hospital:
//! [`Upstream::route`] picks a live link (no I/O), then [`Route::open`] sends `CONNECT
//! host:port` on it and returns the stream once the connector has dialled the endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use postern_audit::ConnectorRef;
use postern_net::quic::{read_frame, tunnel_stream, write_frame};
use postern_proto::wire;
use tokio_util::sync::CancellationToken;

use crate::stream::BoxIo;

/// Why a route could not open a stream to the endpoint. Each maps to a `session.end` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint's address cannot be put in a request (`error`).
    #[error("endpoint address '{0}' is not valid")]
    BadTarget(String),
    /// The link failed while asking (`connector_lost`).
    #[error("connector {connector} failed: {why}")]
    Lost { connector: String, why: String },
    /// No answer in time (`connector_timeout`).
    #[error("connector {connector} did not reach {endpoint} within {after:?}")]
    Timeout {
        connector: String,
        endpoint: String,
        after: Duration,
    },
    /// The connector refused (its allowlist: `connector_refused`) or could not reach the
    /// endpoint (`endpoint_unreachable`).
    #[error("connector {connector} refused: {why}")]
    Refused {
        connector: String,
        why: String,
        by_allowlist: bool,
    },
}

impl UpstreamError {
    /// The `session.end` close reason.
    pub fn close_reason(&self) -> &'static str {
        match self {
            UpstreamError::BadTarget(_) => "error",
            UpstreamError::Lost { .. } => "connector_lost",
            UpstreamError::Timeout { .. } => "connector_timeout",
            UpstreamError::Refused {
                by_allowlist: true, ..
            } => "connector_refused",
            UpstreamError::Refused { .. } => "endpoint_unreachable",
        }
    }
}

/// What the broker asks a route to open.
#[derive(Debug, Clone, Copy)]
pub struct OpenRequest<'a> {
    /// `host:port` of the endpoint (IPv6 in brackets).
    pub target: &'a str,
    pub session_id: &'a str,
    pub endpoint: &'a str,
    /// How long the connector may take to dial.
    pub timeout: Duration,
    /// DICOM endpoints: what the connector lets the clinician's side do on the tunnel's
    /// associations ([`postern_proto::dicom::HDR_DICOM_PERMIT`]); the connector inspects the
    /// tunnel only when it is given one.
    pub dicom: Option<&'a postern_proto::dicom::DicomPermit>,
}

/// One way to an endpoint's site, chosen for one session.
pub trait Route: Send + Sync {
    /// The connector that carries it (named in the session's audit events).
    fn connector(&self) -> ConnectorRef;
    /// Cancelled when the route's connection is gone.
    fn lost(&self) -> CancellationToken;
    /// Opens a stream to the endpoint.
    fn open<'a>(
        &'a self,
        req: OpenRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BoxIo, UpstreamError>> + Send + 'a>>;
    /// The connector's records of session `session_id`, which this route opened with a DICOM
    /// permit ([`postern_proto::dicom::PATH_SESSION_EVENTS`]), asked on the link that carries
    /// the tunnel, so that only that connector can report on the session.
    fn session_events<'a>(
        &'a self,
        session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, String>> + Send + 'a>> {
        let _ = session_id;
        Box::pin(async { Err("this route carries no session records".to_owned()) })
    }
}

/// The body of a connector's answer to a [`postern_proto::dicom::PATH_SESSION_EVENTS`]
/// request, read chunk by chunk.
pub enum EventStream {
    H2(hyper::body::Incoming),
    Quic(quinn::RecvStream),
}

impl EventStream {
    /// The next bytes, or None at the end of the stream.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            EventStream::H2(body) => {
                use http_body_util::BodyExt;
                loop {
                    match body.frame().await {
                        None => return Ok(None),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                return Ok(Some(data));
                            }
                        }
                    }
                }
            }
            EventStream::Quic(recv) => recv
                .read_chunk(64 * 1024, true)
                .await
                .map(|c| c.map(|c| c.bytes))
                .map_err(|e| e.to_string()),
        }
    }
}

/// How the gateway reaches endpoints.
pub trait Upstream: Send + Sync + 'static {
    /// A live route to `site`, or None when no connector of the site is connected.
    fn route(&self, site: &str) -> Option<Arc<dyn Route>>;
}

/// How the gateway sends requests to a connector over one link: as the HTTP/2 client of a
/// TLS connection, or as bidirectional streams of a QUIC connection ([`wire::LinkRequest`]).
#[derive(Clone)]
pub enum Channel {
    H2(SendRequest<Empty<Bytes>>),
    Quic(QuicLink),
}

/// A QUIC link's connection, and whether it has gone silent: a request that heard nothing from
/// the connector in time marks the link so that no session is routed over it until the
/// connector is heard from again (or the idle timeout closes it). The link is not closed at
/// once: a blip of the hospital's uplink must not end the tunnels it carries.
#[derive(Clone)]
pub struct QuicLink {
    pub conn: quinn::Connection,
    /// `udp_rx.datagrams` when the link was found silent; `u64::MAX`: not silent.
    silent_at: Arc<AtomicU64>,
}

impl QuicLink {
    pub fn new(conn: quinn::Connection) -> QuicLink {
        QuicLink {
            conn,
            silent_at: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn heard(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    /// Silent since a request found it so, and nothing heard since.
    fn is_silent(&self) -> bool {
        let at = self.silent_at.load(Ordering::Relaxed);
        at != u64::MAX && self.heard() == at
    }
}

/// A connector's answer on a [`Channel`].
pub struct Answer {
    pub status: StatusCode,
    /// [`wire::HDR_REASON`], at most 512 characters.
    pub reason: Option<String>,
    /// The tunnel, for a `CONNECT` answered 200.
    pub io: Option<BoxIo>,
}

/// A QUIC link that has not heard from the connector this long after sending it a request
/// (or 4 round trips, if longer) is dead.
const SILENT_AFTER: Duration = Duration::from_secs(1);

/// Longest refusal reason kept from a connector.
const MAX_REASON: usize = 512;

impl Channel {
    /// The transport's name, for logs and metrics.
    pub fn transport(&self) -> &'static str {
        match self {
            Channel::H2(_) => "http2",
            Channel::Quic(_) => "quic",
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Channel::H2(s) => s.is_closed(),
            Channel::Quic(q) => q.conn.close_reason().is_some(),
        }
    }

    /// Open, and (QUIC) not found silent since it was last heard from.
    fn is_usable(&self) -> bool {
        !self.is_closed()
            && match self {
                Channel::H2(_) => true,
                Channel::Quic(q) => !q.is_silent(),
            }
    }

    /// Sends `GET` `req` and returns the body of a 200 answer as a stream.
    pub async fn stream(&self, req: Request<Empty<Bytes>>) -> Result<EventStream, String> {
        match self {
            Channel::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await.map_err(|e| e.to_string())?;
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("the connector answered {}", resp.status()));
                }
                Ok(EventStream::H2(resp.into_body()))
            }
            Channel::Quic(q) => {
                let (mut send, mut recv) = q.conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&mut send, &link_request(&req))
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = send.finish();
                let answer = read_frame::<_, wire::LinkResponse>(&mut recv)
                    .await
                    .map_err(|e| format!("reading the connector's answer: {e}"))?;
                if answer.status != 200 {
                    return Err(format!("the connector answered {}", answer.status));
                }
                Ok(EventStream::Quic(recv))
            }
        }
    }

    /// Sends `req` and waits for the answer (and, for a `CONNECT` answered 200, the tunnel).
    pub async fn send(&self, req: Request<Empty<Bytes>>) -> Result<Answer, String> {
        match self {
            Channel::H2(sender) => {
                let connect = req.method() == Method::CONNECT;
                let mut sender = sender.clone();
                sender.ready().await.map_err(|e| e.to_string())?;
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let reason = resp
                    .headers()
                    .get(wire::HDR_REASON)
                    .and_then(|v| v.to_str().ok())
                    .map(|r| r.chars().take(MAX_REASON).collect());
                let io: Option<BoxIo> = if connect && status == StatusCode::OK {
                    let up = hyper::upgrade::on(resp)
                        .await
                        .map_err(|e| format!("stream upgrade failed: {e}"))?;
                    Some(Box::new(TokioIo::new(up)))
                } else {
                    None
                };
                Ok(Answer { status, reason, io })
            }
            Channel::Quic(q) => {
                let conn = &q.conn;
                let connect = req.method() == Method::CONNECT;
                let frame = link_request(&req);
                let heard = q.heard();
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                write_frame(&mut send, &frame)
                    .await
                    .map_err(|e| e.to_string())?;
                // A live connector acknowledges the request within a round trip, long before
                // it answers (it dials first). One that was killed sends nothing, and its link
                // would look live until the idle timeout: give up on this request (the caller
                // tries another link) and route nothing over the link until it is heard from.
                let silence = (conn.rtt() * 4).max(SILENT_AFTER);
                let answer = {
                    let answer = read_frame::<_, wire::LinkResponse>(&mut recv);
                    tokio::pin!(answer);
                    tokio::select! {
                        a = &mut answer => a,
                        _ = tokio::time::sleep(silence) => {
                            if q.heard() == heard {
                                q.silent_at.store(heard, Ordering::Relaxed);
                                return Err(format!("the connector sent nothing for {silence:?}"));
                            }
                            answer.await
                        }
                    }
                }
                .map_err(|e| format!("reading the connector's answer: {e}"))?;
                let status = StatusCode::from_u16(answer.status)
                    .map_err(|_| format!("the connector answered status {}", answer.status))?;
                let reason = answer.reason.map(|r| r.chars().take(MAX_REASON).collect());
                let io: Option<BoxIo> = if connect && status == StatusCode::OK {
                    Some(Box::new(tunnel_stream(send, recv)))
                } else {
                    let _ = send.finish();
                    None
                };
                Ok(Answer { status, reason, io })
            }
        }
    }
}

/// What the QUIC link carries for `req`: its method, target and headers.
fn link_request(req: &Request<Empty<Bytes>>) -> wire::LinkRequest {
    wire::LinkRequest {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
    }
}

/// One live connection from a connector.
pub struct Link {
    pub seq: u64,
    pub connector_id: String,
    pub site: String,
    pub serial: String,
    pub peer: SocketAddr,
    pub channel: Channel,
    /// Cancelled to drop the link (connector revoked).
    pub cancel: CancellationToken,
    /// Cancelled once the connection has ended, for whatever reason.
    pub lost: CancellationToken,
    /// Cancelled when the connector says it is stopping: no new tunnels over this link.
    pub going_away: CancellationToken,
}

impl Link {
    pub fn connector_ref(&self) -> ConnectorRef {
        ConnectorRef {
            id: self.connector_id.clone(),
            site: self.site.clone(),
        }
    }

    fn is_live(&self) -> bool {
        self.channel.is_usable() && !self.cancel.is_cancelled() && !self.going_away.is_cancelled()
    }

    /// The link is closed (its connection ended).
    pub fn is_closed(&self) -> bool {
        self.channel.is_closed()
    }

    async fn connect(&self, req: OpenRequest<'_>) -> Result<BoxIo, UpstreamError> {
        let connector = || self.connector_id.clone();
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .uri(req.target)
            .header(wire::HDR_SESSION, req.session_id)
            .header(wire::HDR_ENDPOINT, req.endpoint);
        if let Some(permit) = req.dicom {
            connect = connect.header(postern_proto::dicom::HDR_DICOM_PERMIT, permit.to_header());
        }
        let connect = connect
            .body(Empty::<Bytes>::new())
            .map_err(|e| UpstreamError::BadTarget(format!("{}: {e}", req.target)))?;
        let answer = match tokio::time::timeout(req.timeout, self.channel.send(connect)).await {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => {
                return Err(UpstreamError::Lost {
                    connector: connector(),
                    why,
                })
            }
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    connector: connector(),
                    endpoint: req.endpoint.to_owned(),
                    after: req.timeout,
                })
            }
        };
        match answer.io {
            Some(io) => Ok(io),
            None => Err(UpstreamError::Refused {
                connector: connector(),
                why: answer
                    .reason
                    .unwrap_or_else(|| format!("{} (no reason given)", answer.status)),
                by_allowlist: answer.status == StatusCode::FORBIDDEN,
            }),
        }
    }
}

/// A route to one connector: the link picked for the session first, then the connector's
/// other live links, tried in turn while a link turns out to be gone ([`UpstreamError::Lost`]:
/// a connector process killed without closing its QUIC links leaves links that look live until
/// their idle timeout). All of them are the same connector, the one `session.start` names.
pub struct ConnectorRoute {
    links: Vec<Arc<Link>>,
    /// The link that opened the stream (index into `links`).
    used: AtomicUsize,
}

impl ConnectorRoute {
    async fn open_any(&self, req: OpenRequest<'_>) -> Result<BoxIo, UpstreamError> {
        let mut last = None;
        for (i, link) in self.links.iter().enumerate() {
            if i > 0 && !link.is_live() {
                continue;
            }
            match link.connect(req).await {
                Ok(io) => {
                    self.used.store(i, Ordering::Relaxed);
                    return Ok(io);
                }
                Err(e @ UpstreamError::Lost { .. }) => {
                    tracing::debug!(connector_id = %link.connector_id, error = %e, "link gone; trying the connector's next link");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Lost {
            connector: self.links[0].connector_id.clone(),
            why: "no live link".to_owned(),
        }))
    }

    fn link(&self) -> &Arc<Link> {
        let i = self.used.load(Ordering::Relaxed);
        &self.links[i.min(self.links.len() - 1)]
    }
}

impl Route for ConnectorRoute {
    fn connector(&self) -> ConnectorRef {
        self.links[0].connector_ref()
    }

    fn lost(&self) -> CancellationToken {
        self.link().lost.clone()
    }

    fn open<'a>(
        &'a self,
        req: OpenRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BoxIo, UpstreamError>> + Send + 'a>> {
        Box::pin(self.open_any(req))
    }

    fn session_events<'a>(
        &'a self,
        session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<EventStream, String>> + Send + 'a>> {
        Box::pin(async move {
            let req = Request::builder()
                .method(Method::GET)
                .uri(postern_proto::dicom::PATH_SESSION_EVENTS)
                .header(wire::HDR_SESSION, session_id)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            self.link().channel.stream(req).await
        })
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
    /// A number for a new link.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add(&self, link: Arc<Link>) {
        if let Ok(mut m) = self.by_site.lock() {
            m.entry(link.site.clone()).or_default().push(link);
        }
    }

    pub fn remove(&self, link: &Link) {
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
            .find(|l| l.is_live())
            .cloned()
    }

    /// Every live link.
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.by_site
            .lock()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }
}

impl Upstream for Registry {
    fn route(&self, site: &str) -> Option<Arc<dyn Route>> {
        let first = self.pick(site)?;
        let mut links = vec![first.clone()];
        if let Ok(m) = self.by_site.lock() {
            links.extend(
                m.get(site)
                    .into_iter()
                    .flatten()
                    .filter(|l| l.seq != first.seq && l.connector_id == first.connector_id)
                    .cloned(),
            );
        }
        Some(Arc::new(ConnectorRoute {
            links,
            used: AtomicUsize::new(0),
        }))
    }
}
