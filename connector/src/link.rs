//! Dial-out links to the gateway.
//!
//! For every gateway address the connector keeps `connections_per_gateway` TLS 1.3 connections
//! up, each presenting the enrolled client certificate and trusting only the gateway CA stored
//! at enrolment. On each connection the connector is the HTTP/2 *server*: the gateway sends one
//! `CONNECT host:port` per tunnel; the target is checked against the allowlist before any dial.
//! Lost connections are redialled with jittered exponential backoff that resets after a
//! connection stayed up for a while; right after a working connection drops (a gateway
//! restart), redials stay at most 0.75 s apart for a minute, so the connector is back
//! within two seconds of the gateway. HTTP/2 PINGs detect dead paths.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_net::addr::HostPort;
use postern_net::relay::{relay, Counters};
use postern_proto::wire;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::allowlist::Allowlist;
use crate::config::Config;
use crate::enroll::{load_enrollment, Enrollment, CA_FILE, CERT_FILE, KEY_FILE};
use crate::metrics::Metrics;

/// A connection that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A connection that stayed up this long was a working link: when it drops, redial fast.
const FAST_AFTER: Duration = Duration::from_secs(5);
/// For this long after a working link dropped, redials are at most `FAST_CAP` (jittered to
/// at most 0.75 s) apart: at most 4 attempts a second for a connector's two links, inside the
/// gateway's default `connector_dial` rate limit (5/s, burst 30).
const FAST_WINDOW: Duration = Duration::from_secs(60);
const FAST_CAP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Enroll(#[from] crate::enroll::EnrollError),
    #[error("{what}: {message}")]
    Identity { what: String, message: String },
    #[error("no gateway address: list `gateways` in the configuration or enrol again")]
    NoGateway,
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up metrics: {0}")]
    Metrics(String),
}

/// Loads the enrolment and builds the mutual-TLS client configuration for links.
pub fn load_identity(state_dir: &Path) -> Result<(Enrollment, Arc<ClientConfig>), LinkError> {
    load_identity_alpn(state_dir, &[wire::ALPN_CONNECTOR])
}

/// As [`load_identity`], offering `alpn` (renewal uses its own). Finishes an interrupted
/// certificate renewal first.
pub fn load_identity_alpn(
    state_dir: &Path,
    alpn: &[&[u8]],
) -> Result<(Enrollment, Arc<ClientConfig>), LinkError> {
    crate::renew::finish_pending(state_dir).map_err(|message| LinkError::Identity {
        what: state_dir.display().to_string(),
        message,
    })?;
    let enrollment = load_enrollment(state_dir)?;
    let read = |name: &str| {
        std::fs::read_to_string(state_dir.join(name)).map_err(|e| LinkError::Identity {
            what: state_dir.join(name).display().to_string(),
            message: e.to_string(),
        })
    };
    let tls_err = |e: postern_net::tls::TlsError| LinkError::Identity {
        what: state_dir.display().to_string(),
        message: e.to_string(),
    };
    let ca = postern_net::tls::certs_from_pem(&read(CA_FILE)?, CA_FILE).map_err(tls_err)?;
    let chain = postern_net::tls::certs_from_pem(&read(CERT_FILE)?, CERT_FILE).map_err(tls_err)?;
    let key = postern_net::tls::key_from_pem(&read(KEY_FILE)?, KEY_FILE).map_err(tls_err)?;
    let config = postern_net::tls::client_config(ca, Some((chain, key)), alpn).map_err(tls_err)?;
    Ok((enrollment, Arc::new(config)))
}

pub(crate) struct Shared {
    /// Client configuration with the current certificate; renewal swaps it, new links use it.
    pub(crate) tls: std::sync::RwLock<Arc<ClientConfig>>,
    pub(crate) metrics: Arc<Metrics>,
    allowlist: Allowlist,
    dial_timeout: Duration,
    reconnect_max: Duration,
    pub(crate) cancel: CancellationToken,
    relays: TaskTracker,
    pub(crate) connector_id: String,
}

impl Shared {
    pub(crate) fn tls(&self) -> Arc<ClientConfig> {
        match self.tls.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_tls(&self, tls: Arc<ClientConfig>) {
        match self.tls.write() {
            Ok(mut t) => *t = tls,
            Err(poisoned) => *poisoned.into_inner() = tls,
        }
    }
}

/// Runs the connector until `shutdown` completes, then stops dialling, lets open tunnels finish
/// for up to `shutdown_grace` and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
    let (enrollment, tls) = load_identity(&config.state_dir)?;
    let gateways = if config.gateways.is_empty() {
        enrollment.connector_addrs.clone()
    } else {
        config.gateways.clone()
    };
    if gateways.is_empty() {
        return Err(LinkError::NoGateway);
    }
    if config.allowlist.entries.is_empty() {
        warn!("the allowlist is empty: every tunnel will be refused");
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| LinkError::Metrics(e.to_string()))?);
    let admin = match config.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| LinkError::Admin { addr, source })?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        tls: std::sync::RwLock::new(tls),
        metrics: metrics.clone(),
        allowlist: config.allowlist.clone(),
        dial_timeout: config.dial_timeout,
        reconnect_max: config.reconnect_max,
        cancel: CancellationToken::new(),
        relays: TaskTracker::new(),
        connector_id: enrollment.connector_id.clone(),
    });
    info!(connector_id = %enrollment.connector_id, site = %enrollment.site, gateways = ?gateways, "connector starting");
    let mut links = Vec::new();
    if let Some(l) = admin {
        if let Ok(a) = l.local_addr() {
            info!(admin = %a, "admin listener (metrics, health) up");
        }
        links.push(tokio::spawn(crate::admin_http::serve(
            metrics.clone(),
            l,
            shared.cancel.clone(),
        )));
    }
    links.push(tokio::spawn(crate::renew::keep_renewed(
        shared.clone(),
        config.state_dir.clone(),
        gateways.clone(),
    )));
    for gw in &gateways {
        for n in 0..config.connections_per_gateway {
            links.push(tokio::spawn(link_loop(shared.clone(), gw.clone(), n)));
        }
    }
    shutdown.await;
    info!(grace = ?config.shutdown_grace, open_tunnels = shared.relays.len(), "shutting down");
    shared.cancel.cancel();
    shared.relays.close();
    if tokio::time::timeout(config.shutdown_grace, shared.relays.wait())
        .await
        .is_err()
    {
        warn!(
            open_tunnels = shared.relays.len(),
            "grace period over; closing open tunnels"
        );
    }
    for l in links {
        l.abort();
    }
    Ok(())
}

/// Jitter in [0.5, 1.5) of `d`.
fn jitter(d: Duration) -> Duration {
    let r = postern_proto::ids::random_bytes(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(32768);
    d.mul_f64(0.5 + f64::from(r) / 65536.0)
}

async fn link_loop(shared: Arc<Shared>, gateway: String, n: usize) {
    let mut backoff = BACKOFF_START;
    let mut fast_until: Option<Instant> = None;
    let mut first = true;
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        if !std::mem::take(&mut first) {
            shared.metrics.reconnects.inc();
        }
        let started = Instant::now();
        match connect_once(&shared, &gateway).await {
            Ok(()) => info!(%gateway, link = n, "gateway connection closed"),
            Err(e) => warn!(%gateway, link = n, error = %e, "gateway connection failed"),
        }
        let up_for = started.elapsed();
        if up_for >= STABLE_AFTER {
            backoff = BACKOFF_START;
        }
        // Only a link that had been working opens the fast window: a gateway that refuses
        // the connector right after the handshake still gets the exponential backoff.
        if up_for >= FAST_AFTER {
            fast_until = Some(Instant::now() + FAST_WINDOW);
        }
        let cap = match fast_until {
            Some(t) if Instant::now() < t => FAST_CAP.min(shared.reconnect_max),
            _ => shared.reconnect_max,
        };
        let wait = jitter(backoff.min(cap));
        backoff = (backoff * 2).min(shared.reconnect_max);
        debug!(%gateway, link = n, ?wait, "reconnecting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shared.cancel.cancelled() => return,
        }
    }
}

async fn connect_once(shared: &Arc<Shared>, gateway: &str) -> Result<(), String> {
    let addr = HostPort::parse(gateway).map_err(|e| e.to_string())?;
    let (host, port) = (addr.host.as_str(), addr.port);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("server name: {e}"))?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(shared.tls()).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    info!(%gateway, connector_id = %shared.connector_id, "connected to gateway");
    let svc_shared = shared.clone();
    let draining = Arc::new(tokio::sync::Notify::new());
    let svc_draining = draining.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let draining = svc_draining.clone();
        async move { Ok::<_, Infallible>(handle(shared, &draining, req).await) }
    });
    let conn = postern_net::h2::server(postern_net::h2::LINK)
        .max_concurrent_streams(16_384)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = Box::pin(conn);
    shared.metrics.links_up.inc();
    let r = tokio::select! {
        r = conn.as_mut() => r.map_err(|e| format!("HTTP/2: {e}")),
        _ = shared.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            Ok(())
        }
        _ = draining.notified() => {
            // Dial again now (the caller's loop does); this link carries on, in its own task,
            // for the tunnels it still has until the gateway closes it. It no longer counts
            // as a link that is up: no new tunnels will come over it.
            info!(%gateway, "gateway is draining: dialling again; the old link stays for its open tunnels");
            let cancel = shared.cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn.as_mut() => {},
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
            Ok(())
        }
    };
    shared.metrics.links_up.dec();
    r
}

fn refuse(status: StatusCode, reason: &str) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(reason) {
        r.headers_mut().insert(wire::HDR_REASON, v);
    }
    r
}

/// Resolves `host` and keeps only the addresses the allowlist permits for `port`.
async fn allowed_addrs(shared: &Shared, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(shared.dial_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    Ok(addrs
        .into_iter()
        .filter(|a| shared.allowlist.allows(a.ip(), a.port()))
        .collect())
}

async fn handle(
    shared: Arc<Shared>,
    draining: &tokio::sync::Notify,
    req: Request<Incoming>,
) -> Response<Empty<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == wire::PATH_DRAINING {
        draining.notify_one();
        return Response::new(Empty::new());
    }
    let session = req
        .headers()
        .get(wire::HDR_SESSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    if req.method() == Method::GET && req.uri().path() == wire::PATH_LINK_PING {
        // The gateway's round-trip probe: answered at once, dials nothing.
        let mut r = Response::new(Empty::new());
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }
    if req.method() != Method::CONNECT {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is served");
    }
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
    else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT target must be host:port");
    };
    let target = format!("{host}:{port}");
    let addrs = match allowed_addrs(&shared, &host, port).await {
        Ok(a) => a,
        Err(e) => {
            shared
                .metrics
                .dials
                .with_label_values(&["resolve_failed"])
                .inc();
            warn!(session_id = %session, %target, error = %e, "cannot resolve target");
            return refuse(StatusCode::BAD_GATEWAY, &e);
        }
    };
    if addrs.is_empty() {
        shared.metrics.allowlist_refusals.inc();
        warn!(session_id = %session, %target, "refused: target is outside this connector's allowlist");
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("target {target} is outside this connector's allowlist"),
        );
    }
    let mut last_err = String::new();
    let mut stream = None;
    for addr in &addrs {
        match tokio::time::timeout(shared.dial_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = format!("{addr}: {e}"),
            Err(_) => last_err = format!("{addr}: connect timed out"),
        }
    }
    let Some(tcp) = stream else {
        shared
            .metrics
            .dials
            .with_label_values(&["unreachable"])
            .inc();
        warn!(session_id = %session, %target, error = %last_err, "cannot reach target");
        return refuse(
            StatusCode::BAD_GATEWAY,
            &format!("cannot reach {target}: {last_err}"),
        );
    };
    let _ = tcp.set_nodelay(true);
    shared.metrics.dials.with_label_values(&["ok"]).inc();
    debug!(session_id = %session, %target, "tunnel open");
    let metrics = shared.metrics.clone();
    metrics.streams_active.inc();
    shared.relays.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let counters = Arc::new(Counters::default());
                let ended = relay(TokioIo::new(up), tcp, counters.clone()).await;
                metrics
                    .tunnel_bytes
                    .with_label_values(&["to_target"])
                    .inc_by(counters.a_to_b());
                metrics
                    .tunnel_bytes
                    .with_label_values(&["from_target"])
                    .inc_by(counters.b_to_a());
                debug!(session_id = %session, %target, ?ended, to_target = counters.a_to_b(), from_target = counters.b_to_a(), "tunnel closed");
            }
            Err(e) => debug!(session_id = %session, error = %e, "tunnel upgrade failed"),
        }
        metrics.streams_active.dec();
    });
    Response::new(Empty::new())
}
