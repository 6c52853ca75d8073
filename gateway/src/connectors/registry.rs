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
}

/// How the gateway reaches endpoints.
pub trait Upstream: Send + Sync + 'static {
    /// A live route to `site`, or None when no connector of the site is connected.
    fn route(&self, site: &str) -> Option<Arc<dyn Route>>;
}

/// One live connection from a connector.
pub struct Link {
    pub seq: u64,
    pub connector_id: String,
    pub site: String,
    pub serial: String,
    pub peer: SocketAddr,
    pub sender: SendRequest<Empty<Bytes>>,
    /// Cancelled to drop the link (connector revoked).
    pub cancel: CancellationToken,
    /// Cancelled once the connection has ended, for whatever reason.
    pub lost: CancellationToken,
}

impl Link {
    pub fn connector_ref(&self) -> ConnectorRef {
        ConnectorRef {
            id: self.connector_id.clone(),
            site: self.site.clone(),
        }
    }

    fn is_live(&self) -> bool {
        !self.sender.is_closed() && !self.cancel.is_cancelled()
    }

    async fn connect(&self, req: OpenRequest<'_>) -> Result<BoxIo, UpstreamError> {
        let connector = || self.connector_id.clone();
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri(req.target)
            .header(wire::HDR_SESSION, req.session_id)
            .header(wire::HDR_ENDPOINT, req.endpoint)
            .body(Empty::<Bytes>::new())
            .map_err(|e| UpstreamError::BadTarget(format!("{}: {e}", req.target)))?;
        let mut sender = self.sender.clone();
        let resp = match tokio::time::timeout(req.timeout, sender.send_request(connect)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(UpstreamError::Lost {
                    connector: connector(),
                    why: e.to_string(),
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
        if resp.status() != StatusCode::OK {
            let why = resp
                .headers()
                .get(wire::HDR_REASON)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no reason given")
                .chars()
                .take(512)
                .collect();
            return Err(UpstreamError::Refused {
                connector: connector(),
                why,
                by_allowlist: resp.status() == StatusCode::FORBIDDEN,
            });
        }
        match hyper::upgrade::on(resp).await {
            Ok(up) => Ok(Box::new(TokioIo::new(up))),
            Err(e) => Err(UpstreamError::Lost {
                connector: connector(),
                why: format!("stream upgrade failed: {e}"),
            }),
        }
    }
}

impl Route for Link {
    fn connector(&self) -> ConnectorRef {
        self.connector_ref()
    }

    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn open<'a>(
        &'a self,
        req: OpenRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BoxIo, UpstreamError>> + Send + 'a>> {
        Box::pin(self.connect(req))
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
        self.pick(site).map(|l| l as Arc<dyn Route>)
    }
}
