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
use std::net::{IpAddr, SocketAddr};
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
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::allowlist::Allowlist;
use crate::identity::ClientTls;
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

/// What every link of one agent shares. Built by the agent (the `agent` module), which owns the
/// tasks; a link only watches the two tokens.
pub(crate) struct Shared {
    /// Client configuration with the current certificate; renewal swaps it, new links use it.
    pub(crate) tls: Arc<ClientTls>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) allowlist: Allowlist,
    pub(crate) dial_timeout: Duration,
    pub(crate) reconnect_max: Duration,
    /// Stop dialling; close links gracefully (open tunnels may finish).
    pub(crate) stop: CancellationToken,
    /// Close open tunnels and draining links now (grace period over, or the agent dropped).
    pub(crate) kill: CancellationToken,
    /// Tunnels being relayed, so shutdown can wait for them.
    pub(crate) relays: TaskTracker,
    pub(crate) connector_id: String,
    /// Set when a gateway says this connector is revoked: every link stops dialling.
    pub(crate) revoked: Revoked,
    /// The replica addresses the gateways told this connector about.
    pub(crate) learned: Learned,
}

/// The gateway replicas' connector addresses as the links were told them
/// ([`wire::PATH_REPLICAS`]): what each live link said last. Their union is the set the agent
/// keeps links to (besides the configured gateways); what a link said goes with the link, so a
/// replica that died stops being dialled once the survivors no longer list it.
#[derive(Debug)]
pub struct Learned {
    next_link: std::sync::atomic::AtomicU64,
    by_link: std::sync::Mutex<std::collections::HashMap<u64, Vec<String>>>,
    union: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
}

impl Default for Learned {
    fn default() -> Learned {
        Learned {
            next_link: Default::default(),
            by_link: Default::default(),
            union: tokio::sync::watch::channel(Default::default()).0,
        }
    }
}

impl Learned {
    fn link_id(&self) -> u64 {
        self.next_link
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Link `link` says the replicas are at `addrs`.
    fn told(&self, link: u64, addrs: Vec<String>) {
        self.update(|m| {
            m.insert(link, addrs);
        });
    }

    /// Link `link` is gone, and what it said with it.
    fn forget(&self, link: u64) {
        self.update(|m| {
            m.remove(&link);
        });
    }

    fn update(&self, f: impl FnOnce(&mut std::collections::HashMap<u64, Vec<String>>)) {
        let Ok(mut m) = self.by_link.lock() else {
            return;
        };
        f(&mut m);
        let union: std::collections::BTreeSet<String> = m.values().flatten().cloned().collect();
        drop(m);
        self.union.send_if_modified(|cur| {
            let changed = *cur != union;
            *cur = union;
            changed
        });
    }

    /// The union of what the live links said, from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<std::collections::BTreeSet<String>> {
        self.union.subscribe()
    }
}

/// The addresses of a [`wire::PATH_REPLICAS`] request's header: at most
/// [`wire::MAX_REPLICA_ADDRS`] `host:port` entries; one that does not parse refuses the lot.
pub fn replica_addrs(header: &str) -> Result<Vec<String>, String> {
    let mut addrs = Vec::new();
    for a in header.split_whitespace().take(wire::MAX_REPLICA_ADDRS) {
        if a.len() > 255 {
            return Err("a replica address is longer than 255 bytes".to_owned());
        }
        HostPort::parse(a).map_err(|e| {
            let shown: String = a.chars().take(64).collect();
            format!("replica address {shown:?}: {e}")
        })?;
        addrs.push(a.to_owned());
    }
    Ok(addrs)
}

/// A gateway's word that this connector is revoked (`POST /v1/refused` on a link): when it
/// was revoked, and a token that fires once it is known.
#[derive(Debug, Default)]
pub struct Revoked {
    at: std::sync::OnceLock<u64>,
    told: CancellationToken,
}

impl Revoked {
    /// Records the revocation (the first time counts) and wakes whoever waits for it.
    pub fn set(&self, at: u64) {
        let _ = self.at.set(at);
        self.told.cancel();
    }

    /// When this connector was revoked (Unix seconds), once a gateway has said so.
    pub fn at(&self) -> Option<u64> {
        self.at.get().copied()
    }

    /// Resolves when a gateway says this connector is revoked.
    pub async fn wait(&self) -> u64 {
        self.told.cancelled().await;
        self.at().unwrap_or(0)
    }
}

/// The revocation time a gateway's refusal carries, if the headers say "revoked": from a
/// `POST /v1/refused` on a link, or a 403 on a renewal connection.
pub fn revoked_at(headers: &http::HeaderMap) -> Option<u64> {
    let reason = headers.get(wire::HDR_REFUSAL)?.to_str().ok()?;
    if reason != wire::REFUSAL_REVOKED {
        return None;
    }
    Some(
        headers
            .get(wire::HDR_REVOKED_AT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// "this connector was revoked at 2026-12-04T16:50:00Z; enrol again": what the operator reads.
pub fn revoked_message(at: u64) -> String {
    let when = if at == 0 {
        "an unknown time".to_owned()
    } else {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at))
            .to_string()
    };
    format!(
        "this connector was revoked at {when}; enrol again (`postern-connector enroll` with a new token from `postern-gateway token create`)"
    )
}

/// Jitter in [0.5, 1.5) of `d`.
fn jitter(d: Duration) -> Duration {
    let r = postern_proto::ids::random_bytes(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(32768);
    d.mul_f64(0.5 + f64::from(r) / 65536.0)
}

/// Keeps link `n` to `gateway` up until `shared.stop` fires: dial, serve, back off, dial again.
/// `leave` fires when `gateway` is a replica that left the set: no more dials, and the link
/// closes gracefully once the tunnels it carries have ended.
pub(crate) async fn link_loop(
    shared: Arc<Shared>,
    gateway: String,
    n: usize,
    leave: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    let mut fast_until: Option<Instant> = None;
    let mut first = true;
    loop {
        if shared.stop.is_cancelled() || leave.is_cancelled() || shared.revoked.at().is_some() {
            return;
        }
        if !std::mem::take(&mut first) {
            shared.metrics.reconnects.inc();
        }
        let started = Instant::now();
        match connect_once(&shared, &gateway, &leave).await {
            Ok(()) if shared.revoked.at().is_some() => return,
            Ok(()) => info!(%gateway, link = n, "gateway connection closed"),
            Err(_) if shared.revoked.at().is_some() => return,
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
            _ = shared.stop.cancelled() => return,
            _ = leave.cancelled() => return,
        }
    }
}

async fn connect_once(
    shared: &Arc<Shared>,
    gateway: &str,
    leave: &CancellationToken,
) -> Result<(), String> {
    let addr = HostPort::parse(gateway).map_err(|e| e.to_string())?;
    let (host, port) = (addr.host.as_str(), addr.port);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    postern_net::h2::tune_socket(&tcp);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("server name: {e}"))?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(shared.tls.current()).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    info!(%gateway, connector_id = %shared.connector_id, "connected to gateway");
    let svc_shared = shared.clone();
    let draining = Arc::new(tokio::sync::Notify::new());
    let svc_draining = draining.clone();
    let link_id = shared.learned.link_id();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let draining = svc_draining.clone();
        async move { Ok::<_, Infallible>(handle(shared, &draining, link_id, req).await) }
    });
    let conn = postern_net::h2::server(postern_net::h2::LINK)
        .max_concurrent_streams(16_384)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = Box::pin(conn);
    shared.metrics.links_up.inc();
    let r = tokio::select! {
        r = conn.as_mut() => r.map_err(|e| format!("HTTP/2: {e}")),
        _ = shared.revoked.wait() => Ok(()),
        _ = shared.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            Ok(())
        }
        _ = leave.cancelled() => {
            // The replica left the set (it drains, or died): no new tunnels over this link;
            // the ones it carries finish first, in a task of their own.
            info!(%gateway, "replica left the set: closing its link once its tunnels end");
            conn.as_mut().graceful_shutdown();
            let kill = shared.kill.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {},
                    _ = kill.cancelled() => {},
                }
            });
            Ok(())
        }
        _ = draining.notified() => {
            // Dial again now (the caller's loop does); this link carries on, in its own task,
            // for the tunnels it still has until the gateway closes it. It no longer counts
            // as a link that is up: no new tunnels will come over it.
            info!(%gateway, "gateway is draining: dialling again; the old link stays for its open tunnels");
            let (stop, kill) = (shared.stop.clone(), shared.kill.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn.as_mut() => {},
                    _ = kill.cancelled() => {},
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            _ = tokio::time::timeout(Duration::from_secs(5), conn) => {},
                            _ = kill.cancelled() => {},
                        }
                    }
                }
            });
            Ok(())
        }
    };
    shared.metrics.links_up.dec();
    shared.learned.forget(link_id);
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
/// The `host:port` of a gateway's `CONNECT` request, if its target has both.
pub fn connect_target<B>(req: &Request<B>) -> Option<(String, u16)> {
    req.uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
}

/// The target address when `host` is an IP literal (bracketed for IPv6, as in an authority),
/// the way the connector reads it before checking its allowlist; `None` for a name, which is
/// resolved first.
pub fn literal_target(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

async fn allowed_addrs(shared: &Shared, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match literal_target(host, port) {
        Some(a) => vec![a],
        None => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            tokio::time::timeout(shared.dial_timeout, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| format!("resolving {host} timed out"))?
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect()
        }
    };
    Ok(addrs
        .into_iter()
        .filter(|a| shared.allowlist.allows(a.ip(), a.port()))
        .collect())
}

async fn handle(
    shared: Arc<Shared>,
    draining: &tokio::sync::Notify,
    link_id: u64,
    req: Request<Incoming>,
) -> Response<Empty<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == wire::PATH_DRAINING {
        draining.notify_one();
        return Response::new(Empty::new());
    }
    if req.method() == Method::POST && req.uri().path() == wire::PATH_REPLICAS {
        let header = req
            .headers()
            .get(wire::HDR_REPLICAS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return match replica_addrs(header) {
            Ok(addrs) => {
                debug!(replicas = ?addrs, "the gateway told the replica set");
                shared.learned.told(link_id, addrs);
                Response::new(Empty::new())
            }
            Err(e) => {
                warn!(error = %e, "ignored a replica set the gateway sent");
                refuse(StatusCode::BAD_REQUEST, &e)
            }
        };
    }
    if req.method() == Method::POST && req.uri().path() == wire::PATH_REFUSED {
        return match revoked_at(req.headers()) {
            Some(at) => {
                error!(connector_id = %shared.connector_id, revoked_at = at, "{}", revoked_message(at));
                shared.revoked.set(at);
                Response::new(Empty::new())
            }
            None => refuse(StatusCode::BAD_REQUEST, "unknown refusal"),
        };
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
    let Some((host, port)) = connect_target(&req) else {
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
    spawn_tunnel(&shared, req, tcp, session, target);
    Response::new(Empty::new())
}

/// Relays the upgraded `CONNECT` stream to `tcp` in a task the agent tracks (shutdown waits
/// for it) and ends (the kill token).
fn spawn_tunnel(
    shared: &Shared,
    req: Request<Incoming>,
    tcp: TcpStream,
    session: String,
    target: String,
) {
    let metrics = shared.metrics.clone();
    let kill = shared.kill.clone();
    metrics.streams_active.inc();
    shared.relays.spawn(async move {
        let tunnel = async {
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
        };
        tokio::select! {
            _ = tunnel => {},
            _ = kill.cancelled() => debug!(session_id = %session, %target, "tunnel closed: the connector stopped"),
        }
        metrics.streams_active.dec();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses_are_parsed_bounded_and_refused_whole_when_one_is_bad() {
        assert_eq!(
            replica_addrs("gw-a.example:7443  10.0.0.2:7443 [fd00::3]:7443").unwrap(),
            ["gw-a.example:7443", "10.0.0.2:7443", "[fd00::3]:7443"]
        );
        assert!(replica_addrs("").unwrap().is_empty());
        let many: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}:7443")).collect();
        assert_eq!(
            replica_addrs(&many.join(" ")).unwrap().len(),
            wire::MAX_REPLICA_ADDRS
        );
        let e = replica_addrs("10.0.0.1:7443 no-port").unwrap_err();
        assert!(e.contains("\"no-port\""), "{e}");
        let e = replica_addrs(&format!("{}:1", "a".repeat(300))).unwrap_err();
        assert!(e.contains("longer than 255"), "{e}");
    }

    #[test]
    fn the_learned_set_is_the_union_of_what_live_links_said() {
        let learned = Learned::default();
        let rx = learned.subscribe();
        let (a, b) = (learned.link_id(), learned.link_id());
        assert_ne!(a, b);
        learned.told(a, vec!["gw-a:1".into(), "gw-b:1".into()]);
        learned.told(b, vec!["gw-b:1".into(), "gw-c:1".into()]);
        let now: Vec<_> = rx.borrow().iter().cloned().collect();
        assert_eq!(now, ["gw-a:1", "gw-b:1", "gw-c:1"]);
        // Link a says again, without gw-a (it left): gw-a stays only while b's word has it.
        learned.told(a, vec!["gw-b:1".into(), "gw-c:1".into()]);
        let now: Vec<_> = rx.borrow().iter().cloned().collect();
        assert_eq!(now, ["gw-b:1", "gw-c:1"]);
        // A link that goes takes its word with it.
        learned.forget(b);
        learned.forget(a);
        assert!(rx.borrow().is_empty());
    }
}
