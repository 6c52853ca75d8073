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
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_net::addr::HostPort;
use postern_net::quic::{read_frame, write_frame};
use postern_net::relay::{relay, Counters};
use postern_proto::dicom::{DicomPermit, DicomRecord, HDR_DICOM_PERMIT, PATH_SESSION_EVENTS};
use postern_proto::wire;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::allowlist::Allowlist;
use crate::config::LinkTransport;
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
    /// How links reach the gateway.
    pub(crate) transport: LinkTransport,
    /// The UDP endpoint QUIC links dial from (one for all links), and when a QUIC dial last
    /// failed in `auto` mode.
    pub(crate) quic: QuicDialer,
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
    /// The records of inspected DICOM tunnels until the gateway takes them.
    pub(crate) dicom: Arc<crate::dicom::Sessions>,
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

/// What a QUIC link needs besides [`Shared`]'s TLS: the endpoint, made on first use, and in
/// `auto` mode when QUIC last failed to connect to each gateway address (per address: a
/// TCP-only balancer in front does not stop the replicas learnt behind it from using QUIC).
#[derive(Default)]
pub(crate) struct QuicDialer {
    endpoint: std::sync::OnceLock<quinn::Endpoint>,
    failed_at: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// In `auto` mode, a QUIC link that gets no handshake this soon is given up for HTTP/2.
const QUIC_HANDSHAKE: Duration = Duration::from_secs(3);
/// In `auto` mode, after QUIC failed, links use HTTP/2 for this long; then they try QUIC again
/// (a link on HTTP/2 tries it in the background and moves over when it connects).
const QUIC_RETRY: Duration = Duration::from_secs(300);

impl QuicDialer {
    fn endpoint(&self) -> Result<quinn::Endpoint, String> {
        if let Some(e) = self.endpoint.get() {
            return Ok(e.clone());
        }
        let e = postern_net::quic::dial_endpoint()?;
        Ok(self.endpoint.get_or_init(|| e).clone())
    }

    fn failed_recently(&self, gateway: &str) -> bool {
        self.failed_at
            .lock()
            .map(|m| m.get(gateway).is_some_and(|t| t.elapsed() < QUIC_RETRY))
            .unwrap_or(false)
    }

    fn note(&self, gateway: &str, failed: bool) {
        if let Ok(mut m) = self.failed_at.lock() {
            if failed {
                // Addresses come from the configuration and the gateways' replica lists
                // (bounded); forget what is old before adding.
                m.retain(|_, t| t.elapsed() < QUIC_RETRY);
                m.insert(gateway.to_owned(), Instant::now());
            } else {
                m.remove(gateway);
            }
        }
    }
}

/// A QUIC link to `host:port` with the current certificate, within `limit`.
async fn dial_quic(
    shared: &Shared,
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<quinn::Connection, String> {
    let silent = |after: Duration| format!("no QUIC handshake within {after:?} (is UDP blocked?)");
    let work = async {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let config = postern_net::quic::link_client_config(&shared.tls.current())?;
        let name = host.trim_start_matches('[').trim_end_matches(']');
        shared
            .quic
            .endpoint()?
            .connect_with(config, addr, name)
            .map_err(|e| format!("QUIC connect: {e}"))?
            .await
            .map_err(|e| match e {
                // quinn's idle timeout, shorter than `limit`: nothing came back.
                quinn::ConnectionError::TimedOut => silent(postern_net::quic::LINK_IDLE_TIMEOUT),
                e => format!("QUIC handshake: {e}"),
            })
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| silent(limit))?
}

/// In `auto` mode, a QUIC handshake that has not finished this soon is joined by a TCP connect
/// to the same port (as browsers race QUIC with TCP). quinn does not act on ICMP, so a gateway
/// that is down (restarting) looks like a QUIC path that is merely slow: without the probe a
/// dial would wait out [`QUIC_HANDSHAKE`], and a gateway that came back meanwhile would be
/// taken for one whose UDP is blocked. A healthy path finishes QUIC first and never probes.
const TCP_PROBE_AFTER: Duration = Duration::from_millis(300);

/// What an `auto` dial found.
enum QuicOrTcp {
    Quic(quinn::Connection),
    /// The probe's TCP connect was refused while QUIC had no answer: nothing listens, so the
    /// dial ends now (the caller redials) and QUIC is not marked as failed.
    GatewayDown(String),
    /// QUIC failed (the reason): HTTP/2 over TCP is next. The probe's connection is not kept
    /// for it: the gateway closes a connection that sends no TLS hello within its
    /// `handshake_timeout`, which can be shorter than the QUIC attempt.
    Tcp(String),
}

async fn dial_quic_or_probe(shared: &Shared, host: &str, port: u16) -> QuicOrTcp {
    let quic = dial_quic(shared, host, port, QUIC_HANDSHAKE);
    let probe = async {
        tokio::time::sleep(TCP_PROBE_AFTER).await;
        probe_port(host, port, Duration::from_secs(10)).await
    };
    tokio::pin!(quic, probe);
    let mut probed = false;
    loop {
        tokio::select! {
            r = &mut quic => return match r {
                Ok(conn) => QuicOrTcp::Quic(conn),
                Err(e) => QuicOrTcp::Tcp(e),
            },
            p = &mut probe, if !probed => {
                probed = true;
                match p {
                    // The gateway is up: QUIC goes on trying.
                    PortProbe::Listening => {}
                    PortProbe::Refused(e) => {
                        return QuicOrTcp::GatewayDown(format!(
                            "gateway is not listening: {e} (and no QUIC answer within {TCP_PROBE_AFTER:?})"
                        ));
                    }
                    // Dropped or unreachable: QUIC may still get through; keep waiting for it.
                    PortProbe::NoAnswer(e) => debug!(error = %e, "TCP probe beside the QUIC dial failed"),
                }
            }
        }
    }
}

/// What a TCP connect to the gateway's port found.
enum PortProbe {
    /// Something accepted it. The connection is closed at once, before any TLS (the gateway
    /// logs that at debug).
    Listening,
    /// Refused: no process listens on the port.
    Refused(std::io::Error),
    /// Dropped, unreachable, or no answer within the limit: says nothing about the gateway.
    NoAnswer(std::io::Error),
}

/// Tries a TCP connection to `host:port` for at most `limit`, to tell a gateway that has
/// stopped (refused) from a path that is merely slow or lossy.
async fn probe_port(host: &str, port: u16, limit: Duration) -> PortProbe {
    match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => PortProbe::Listening,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => PortProbe::Refused(e),
        Ok(Err(e)) => PortProbe::NoAnswer(e),
        Err(_) => PortProbe::NoAnswer(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )),
    }
}

async fn connect_once(
    shared: &Arc<Shared>,
    gateway: &str,
    leave: &CancellationToken,
) -> Result<(), String> {
    let addr = HostPort::parse(gateway).map_err(|e| e.to_string())?;
    let (host, port) = (addr.host.as_str(), addr.port);
    let auto = shared.transport == LinkTransport::Auto;
    let try_quic = match shared.transport {
        LinkTransport::Quic => true,
        LinkTransport::Http2 => false,
        LinkTransport::Auto => !shared.quic.failed_recently(gateway),
    };
    let mut quic_failed = None;
    if try_quic && auto {
        match dial_quic_or_probe(shared, host, port).await {
            QuicOrTcp::Quic(conn) => {
                shared.quic.note(gateway, false);
                return serve_quic(shared, gateway, leave, conn).await;
            }
            QuicOrTcp::GatewayDown(e) => return Err(e),
            QuicOrTcp::Tcp(quic) => quic_failed = Some(quic),
        }
    } else if try_quic {
        let conn = dial_quic(shared, host, port, Duration::from_secs(10)).await?;
        shared.quic.note(gateway, false);
        return serve_quic(shared, gateway, leave, conn).await;
    }
    let tls = async {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
            .await
            .map_err(|_| "TCP connect timed out".to_owned())?
            .map_err(|e| format!("TCP connect: {e}"))?;
        postern_net::h2::tune_socket(&tcp);
        let name =
            ServerName::try_from(host.to_owned()).map_err(|e| format!("server name: {e}"))?;
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(shared.tls.current()).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))
    }
    .await
    .map_err(|e| match &quic_failed {
        Some(q) => format!("{e} (and QUIC: {q})"),
        None => e,
    })?;
    // QUIC failed where TCP gets through: UDP is blocked on the way (or the gateway does not
    // take QUIC links), not a gateway that is down. Only then are the next dials HTTP/2.
    if let Some(e) = quic_failed {
        warn!(%gateway, error = %e, "QUIC link failed; using HTTP/2 over TCP (QUIC is tried again in {} minutes)", QUIC_RETRY.as_secs() / 60);
        shared.quic.note(gateway, true);
    }
    info!(%gateway, connector_id = %shared.connector_id, transport = "http2", "connected to gateway");
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
    // In `auto` mode, QUIC is tried again in the background; once it connects, this link
    // closes gracefully (its tunnels finish) and the QUIC one takes its place.
    let quic_again = async {
        if !auto {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(jitter(QUIC_RETRY)).await;
            match dial_quic(shared, host, port, QUIC_HANDSHAKE).await {
                Ok(c) => return c,
                Err(e) => debug!(%gateway, error = %e, "QUIC still fails; staying on HTTP/2"),
            }
        }
    };
    shared.metrics.links_up.inc();
    let r = tokio::select! {
        r = conn.as_mut() => Err(r.map_err(|e| format!("HTTP/2: {e}"))),
        _ = shared.revoked.wait() => Err(Ok(())),
        _ = shared.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            Err(Ok(()))
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
            Err(Ok(()))
        }
        _ = draining.notified() => {
            // Dial again now (the caller's loop does); this link carries on, in its own task,
            // for the tunnels it still has until the gateway closes it. It no longer counts
            // as a link that is up: no new tunnels will come over it.
            info!(%gateway, "gateway is draining: dialling again; the old link stays for its open tunnels");
            keep_for_open_tunnels(shared, conn, false, |c| c.graceful_shutdown());
            Err(Ok(()))
        }
        quic = quic_again => {
            info!(%gateway, "QUIC gets through again: moving this link over; the HTTP/2 one closes once its tunnels end");
            keep_for_open_tunnels(shared, conn, true, |c| c.graceful_shutdown());
            shared.quic.note(gateway, false);
            Ok(quic)
        }
    };
    shared.metrics.links_up.dec();
    shared.learned.forget(link_id);
    match r {
        Ok(quic) => serve_quic(shared, gateway, leave, quic).await,
        Err(r) => r,
    }
}

/// Lets an HTTP/2 link carry its open tunnels on in a task of its own (closing it gracefully
/// at once when `close` says so) until they end, the connector stops or is killed.
fn keep_for_open_tunnels<C, G>(
    shared: &Shared,
    mut conn: std::pin::Pin<Box<C>>,
    close: bool,
    graceful: G,
) where
    C: std::future::Future + Send + 'static,
    C::Output: Send,
    G: Fn(std::pin::Pin<&mut C>) + Send + 'static,
{
    if close {
        graceful(conn.as_mut());
    }
    let (stop, kill) = (shared.stop.clone(), shared.kill.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = conn.as_mut() => {},
            _ = kill.cancelled() => {},
            _ = stop.cancelled() => {
                graceful(conn.as_mut());
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(5), conn) => {},
                    _ = kill.cancelled() => {},
                }
            }
        }
    });
}

/// Serves one QUIC link: each stream the gateway opens is one request. Stopping, leaving and
/// draining mirror the HTTP/2 link's: the connector says it is going away (the gateway stops
/// sending tunnels), answers new `CONNECT`s with 503 and closes once its tunnels have ended.
async fn serve_quic(
    shared: &Arc<Shared>,
    gateway: &str,
    leave: &CancellationToken,
    conn: quinn::Connection,
) -> Result<(), String> {
    info!(%gateway, connector_id = %shared.connector_id, transport = "quic", "connected to gateway");
    postern_net::quic::window::tune_send(conn.clone());
    let draining = Arc::new(tokio::sync::Notify::new());
    let link_id = shared.learned.link_id();
    let graceful = CancellationToken::new();
    let mut driver = Box::pin(drive_quic(
        shared.clone(),
        conn.clone(),
        draining.clone(),
        link_id,
        graceful.clone(),
    ));
    shared.metrics.links_up.inc();
    let r = tokio::select! {
        r = driver.as_mut() => r,
        _ = shared.revoked.wait() => {
            conn.close(0u32.into(), b"connector revoked");
            Ok(())
        }
        _ = shared.stop.cancelled() => {
            graceful.cancel();
            if tokio::time::timeout(Duration::from_secs(5), driver).await.is_err() {
                conn.close(0u32.into(), b"connector stopping");
            }
            Ok(())
        }
        _ = leave.cancelled() => {
            info!(%gateway, "replica left the set: closing its link once its tunnels end");
            graceful.cancel();
            let kill = shared.kill.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = driver => {},
                    _ = kill.cancelled() => conn.close(0u32.into(), b"connector stopping"),
                }
            });
            Ok(())
        }
        _ = gateway_gone(&conn, gateway) => {
            warn!(%gateway, "the gateway has not answered for {LINK_SILENT:?} and its port refuses connections: it stopped; dialling again");
            conn.close(0u32.into(), b"gateway gone");
            Err("the gateway stopped (silent, and its port refuses connections)".to_owned())
        }
        _ = draining.notified() => {
            info!(%gateway, "gateway is draining: dialling again; the old link stays for its open tunnels");
            let (stop, kill) = (shared.stop.clone(), shared.kill.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = driver.as_mut() => {},
                    _ = kill.cancelled() => conn.close(0u32.into(), b"connector stopping"),
                    _ = stop.cancelled() => {
                        graceful.cancel();
                        tokio::select! {
                            _ = tokio::time::timeout(Duration::from_secs(5), driver) => {},
                            _ = kill.cancelled() => {},
                        }
                        conn.close(0u32.into(), b"connector stopping");
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

/// A QUIC link that has heard nothing from the gateway for this long (both ends send a
/// keep-alive every [`LINK_KEEP_ALIVE`](postern_net::quic::LINK_KEEP_ALIVE)) has the
/// gateway's port probed over TCP.
const LINK_SILENT: Duration = Duration::from_millis(1500);
/// While silent, at most this often (each probe is a connection attempt the gateway's
/// `connector_dial` rate limit counts when it gets through).
const SILENT_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Returns when the gateway of `conn` has certainly stopped: the link is silent and a TCP
/// connection to the same port is refused, so no process listens there.
///
/// A killed gateway sends nothing, and quinn does not act on ICMP: the link would learn only at
/// its idle timeout, or from the stateless reset that the restarted gateway sends back to the
/// link's next probe, which QUIC's backoff may hold for a second or two after the restart. A
/// silent link whose probe is not refused (an uplink blip drops it; a busy gateway's kernel
/// accepts it) is left alone, for the keep-alive and idle timeout to decide.
async fn gateway_gone(conn: &quinn::Connection, gateway: &str) {
    let Ok(addr) = HostPort::parse(gateway) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut heard_at = Instant::now();
    let mut probed_at: Option<Instant> = None;
    loop {
        tick.tick().await;
        let rx = conn.stats().udp_rx.datagrams;
        if rx != heard {
            (heard, heard_at) = (rx, Instant::now());
            continue;
        }
        if heard_at.elapsed() < LINK_SILENT
            || probed_at.is_some_and(|t| t.elapsed() < SILENT_PROBE_EVERY)
        {
            continue;
        }
        probed_at = Some(Instant::now());
        match probe_port(&addr.host, addr.port, Duration::from_secs(1)).await {
            PortProbe::Refused(_) => return,
            p => {
                debug!(%gateway, connected = matches!(p, PortProbe::Listening), "silent QUIC link: the gateway's port does not refuse connections")
            }
        }
    }
}

/// Accepts the gateway's streams on a QUIC link until it ends. Once `graceful` fires, tells
/// the gateway the connector is going away and closes the connection when the tunnels opened
/// over it have ended.
async fn drive_quic(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    draining: Arc<tokio::sync::Notify>,
    link_id: u64,
    graceful: CancellationToken,
) -> Result<(), String> {
    let tunnels = TaskTracker::new();
    let mut told = false;
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::spawn(quic_request(
                        shared.clone(),
                        draining.clone(),
                        link_id,
                        (send, recv),
                        tunnels.clone(),
                        graceful.clone(),
                    ));
                }
                Err(quinn::ConnectionError::ApplicationClosed(_))
                | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
                Err(e) => return Err(format!("QUIC: {e}")),
            },
            _ = graceful.cancelled(), if !told => {
                told = true;
                tunnels.close();
                if let Ok(mut notice) = conn.open_uni().await {
                    let _ = write_frame(&mut notice, &wire::LinkNotice { going_away: true }).await;
                    let _ = notice.finish();
                }
            }
            _ = tunnels.wait(), if told => {
                conn.close(0u32.into(), b"connector stopping");
                return Ok(());
            }
        }
    }
}

/// One request on a QUIC link: its [`wire::LinkRequest`] frame, the same handling as on an
/// HTTP/2 link, the [`wire::LinkResponse`] frame, and for a tunnel the relay.
async fn quic_request(
    shared: Arc<Shared>,
    draining: Arc<tokio::sync::Notify>,
    link_id: u64,
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    tunnels: TaskTracker,
    graceful: CancellationToken,
) {
    let frame = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<_, wire::LinkRequest>(&mut recv),
    )
    .await;
    let decision = match frame {
        Ok(Ok(req)) => match request_parts(&req) {
            Ok((method, _, _)) if method == Method::CONNECT && graceful.is_cancelled() => {
                Decision::Answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("the connector is stopping".to_owned()),
                )
            }
            Ok((method, uri, headers)) => {
                decide(&shared, &draining, link_id, &method, &uri, &headers).await
            }
            Err(e) => Decision::Answer(StatusCode::BAD_REQUEST, Some(e)),
        },
        Ok(Err(e)) => Decision::Answer(
            StatusCode::BAD_REQUEST,
            Some(format!("bad request frame: {e}")),
        ),
        Err(_) => {
            debug!("no request frame on a QUIC link stream within 10 s");
            let _ = send.reset(0u32.into());
            return;
        }
    };
    match decision {
        Decision::Answer(status, reason) => {
            let answer = wire::LinkResponse {
                status: status.as_u16(),
                reason,
            };
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
        }
        Decision::Events(mut rx) => {
            let ok = wire::LinkResponse {
                status: 200,
                reason: None,
            };
            if write_frame(&mut send, &ok).await.is_err() {
                return;
            }
            // Tracked with the tunnels, so a closing link waits for the last records too.
            tunnels
                .track_future(async move {
                    while let Some(r) = rx.recv().await {
                        if send.write_all(&ndjson(&r)).await.is_err() {
                            debug!("the gateway closed a session's events stream");
                            return;
                        }
                    }
                    let _ = send.finish();
                })
                .await;
        }
        Decision::Tunnel {
            tcp,
            session,
            target,
            inspect,
        } => {
            let ok = wire::LinkResponse {
                status: 200,
                reason: None,
            };
            if let Err(e) = write_frame(&mut send, &ok).await {
                debug!(session_id = %session, error = %e, "tunnel answer failed");
                if inspect.is_some() {
                    shared.dicom.ended(&session);
                }
                return;
            }
            let stream = postern_net::quic::tunnel_stream(send, recv);
            let relay = run_tunnel(tunnel_env(&shared), stream, tcp, (session, target), inspect);
            shared.relays.spawn(tunnels.track_future(relay));
        }
    }
}

/// A [`wire::LinkRequest`] as the method, target and headers of the HTTP/2 request it stands
/// for.
pub fn request_parts(
    req: &wire::LinkRequest,
) -> Result<(Method, http::Uri, http::HeaderMap), String> {
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|_| "bad method".to_owned())?;
    let uri: http::Uri = req.target.parse().map_err(|e| format!("bad target: {e}"))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &req.headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| "bad header name".to_owned())?;
        let value =
            http::HeaderValue::from_str(v).map_err(|_| format!("bad value of header {name}"))?;
        headers.insert(name, value);
    }
    Ok((method, uri, headers))
}

/// Resolves `host` and keeps only the addresses the allowlist permits for `port`.
/// The `host:port` of a gateway's `CONNECT` request, if its target has both.
pub fn connect_target<B>(req: &Request<B>) -> Option<(String, u16)> {
    uri_target(req.uri())
}

fn uri_target(uri: &http::Uri) -> Option<(String, u16)> {
    uri.authority()
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

/// What the connector does with one request from the gateway, whichever the transport.
enum Decision {
    /// Answer with this status and reason ([`wire::HDR_REASON`]); no tunnel.
    Answer(StatusCode, Option<String>),
    /// Answer 200 and relay the stream to `tcp`; with a DICOM permit, inspecting.
    Tunnel {
        tcp: TcpStream,
        session: String,
        target: String,
        inspect: Option<Inspect>,
    },
    /// Answer 200 and stream a session's DICOM records (NDJSON) until its tunnel ended.
    Events(tokio::sync::mpsc::Receiver<DicomRecord>),
}

/// A DICOM tunnel's permit and where its records go.
type Inspect = (DicomPermit, tokio::sync::mpsc::Sender<DicomRecord>);

/// What an HTTP/2 link answers with: empty, or a session's records.
type LinkBody = BoxBody<Bytes, Infallible>;

/// One record as a line of the events stream.
pub fn ndjson(r: &DicomRecord) -> Bytes {
    let mut v = serde_json::to_vec(r).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A session's records as a response body, one JSON line per frame, ending with the tunnel.
struct Records(tokio::sync::mpsc::Receiver<DicomRecord>);

impl hyper::body::Body for Records {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|r| r.map(|r| Ok(hyper::body::Frame::data(ndjson(&r)))))
    }
}

/// Serves one request on an HTTP/2 link.
async fn handle(
    shared: Arc<Shared>,
    draining: &tokio::sync::Notify,
    link_id: u64,
    req: Request<Incoming>,
) -> Response<LinkBody> {
    match decide(
        &shared,
        draining,
        link_id,
        req.method(),
        req.uri(),
        req.headers(),
    )
    .await
    {
        Decision::Answer(status, reason) => {
            let mut r = Response::new(Empty::new().boxed());
            *r.status_mut() = status;
            if let Some(v) = reason.and_then(|r| http::HeaderValue::from_str(&r).ok()) {
                r.headers_mut().insert(wire::HDR_REASON, v);
            }
            r
        }
        Decision::Tunnel {
            tcp,
            session,
            target,
            inspect,
        } => {
            spawn_tunnel(&shared, req, tcp, (session, target), inspect);
            Response::new(Empty::new().boxed())
        }
        Decision::Events(rx) => Response::new(Records(rx).boxed()),
    }
}

/// Decides one request: the gateway's notices (draining, replicas, refused), its round-trip
/// probe, or a `CONNECT`, whose target is checked against the allowlist and then dialled.
async fn decide(
    shared: &Shared,
    draining: &tokio::sync::Notify,
    link_id: u64,
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Decision {
    if method == Method::POST && uri.path() == wire::PATH_DRAINING {
        draining.notify_one();
        return Decision::Answer(StatusCode::OK, None);
    }
    if method == Method::POST && uri.path() == wire::PATH_REPLICAS {
        let header = headers
            .get(wire::HDR_REPLICAS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return match replica_addrs(header) {
            Ok(addrs) => {
                debug!(replicas = ?addrs, "the gateway told the replica set");
                shared.learned.told(link_id, addrs);
                Decision::Answer(StatusCode::OK, None)
            }
            Err(e) => {
                warn!(error = %e, "ignored a replica set the gateway sent");
                Decision::Answer(StatusCode::BAD_REQUEST, Some(e))
            }
        };
    }
    if method == Method::POST && uri.path() == wire::PATH_REFUSED {
        return match revoked_at(headers) {
            Some(at) => {
                error!(connector_id = %shared.connector_id, revoked_at = at, "{}", revoked_message(at));
                shared.revoked.set(at);
                Decision::Answer(StatusCode::OK, None)
            }
            None => Decision::Answer(StatusCode::BAD_REQUEST, Some("unknown refusal".to_owned())),
        };
    }
    let session = headers
        .get(wire::HDR_SESSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    if method == Method::GET && uri.path() == wire::PATH_LINK_PING {
        // The gateway's round-trip probe: answered at once, dials nothing.
        return Decision::Answer(StatusCode::NO_CONTENT, None);
    }
    if method == Method::GET && uri.path() == PATH_SESSION_EVENTS {
        return match shared.dicom.take(&session) {
            Some(rx) => Decision::Events(rx),
            None => Decision::Answer(
                StatusCode::NOT_FOUND,
                Some("no inspected DICOM tunnel of this session on this connector".to_owned()),
            ),
        };
    }
    if method != Method::CONNECT {
        return Decision::Answer(
            StatusCode::METHOD_NOT_ALLOWED,
            Some("only CONNECT is served".to_owned()),
        );
    }
    let Some((host, port)) = uri_target(uri) else {
        return Decision::Answer(
            StatusCode::BAD_REQUEST,
            Some("CONNECT target must be host:port".to_owned()),
        );
    };
    let target = format!("{host}:{port}");
    let permit = match headers.get(HDR_DICOM_PERMIT) {
        None => None,
        Some(v) => match v
            .to_str()
            .map_err(|_| "the DICOM permit is not text".to_owned())
            .and_then(DicomPermit::from_header)
        {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(session_id = %session, %target, error = %e, "refused: bad DICOM permit");
                return Decision::Answer(StatusCode::BAD_REQUEST, Some(e));
            }
        },
    };
    let addrs = match allowed_addrs(shared, &host, port).await {
        Ok(a) => a,
        Err(e) => {
            shared
                .metrics
                .dials
                .with_label_values(&["resolve_failed"])
                .inc();
            warn!(session_id = %session, %target, error = %e, "cannot resolve target");
            return Decision::Answer(StatusCode::BAD_GATEWAY, Some(e));
        }
    };
    if addrs.is_empty() {
        shared.metrics.allowlist_refusals.inc();
        warn!(session_id = %session, %target, "refused: target is outside this connector's allowlist");
        return Decision::Answer(
            StatusCode::FORBIDDEN,
            Some(format!(
                "target {target} is outside this connector's allowlist"
            )),
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
        return Decision::Answer(
            StatusCode::BAD_GATEWAY,
            Some(format!("cannot reach {target}: {last_err}")),
        );
    };
    let _ = tcp.set_nodelay(true);
    shared.metrics.dials.with_label_values(&["ok"]).inc();
    debug!(session_id = %session, %target, inspected = permit.is_some(), "tunnel open");
    let inspect = permit.map(|p| {
        let tx = shared.dicom.open(&session);
        (p, tx)
    });
    Decision::Tunnel {
        tcp,
        session,
        target,
        inspect,
    }
}

/// Relays the upgraded `CONNECT` stream to `tcp` in a task the agent tracks (shutdown waits
/// for it) and ends (the kill token).
fn spawn_tunnel(
    shared: &Shared,
    req: Request<Incoming>,
    tcp: TcpStream,
    (session, target): (String, String),
    inspect: Option<Inspect>,
) {
    let env = tunnel_env(shared);
    shared.relays.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => run_tunnel(env, TokioIo::new(up), tcp, (session, target), inspect).await,
            Err(e) => {
                debug!(session_id = %session, error = %e, "tunnel upgrade failed");
                env.2.ended(&session);
            }
        }
    });
}

/// What a tunnel's task needs of [`Shared`].
type TunnelEnv = (Arc<Metrics>, CancellationToken, Arc<crate::dicom::Sessions>);

fn tunnel_env(shared: &Shared) -> TunnelEnv {
    (
        shared.metrics.clone(),
        shared.kill.clone(),
        shared.dicom.clone(),
    )
}

/// Relays a tunnel `stream` of a link to `tcp` until either side ends or the connector is
/// killed (`kill`), counting its bytes.
async fn run_tunnel<S>(
    (metrics, kill, sessions): TunnelEnv,
    stream: S,
    tcp: TcpStream,
    (session, target): (String, String),
    inspect: Option<Inspect>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    metrics.streams_active.inc();
    let inspected = inspect.is_some();
    let tunnel = async {
        let counters = Arc::new(Counters::default());
        let ended = match inspect {
            None => relay(stream, tcp, counters.clone()).await,
            Some((permit, tx)) => {
                let s =
                    crate::dicom::relay_inspected(stream, tcp, &permit, tx, counters.clone()).await;
                if let Some(r) = s.refusal {
                    metrics.dicom_refusals.with_label_values(&[r]).inc();
                }
                for (service, n) in &s.operations {
                    metrics
                        .dicom_operations
                        .with_label_values(&[service])
                        .inc_by(*n);
                }
                metrics.dicom_records_dropped.inc_by(s.dropped_records);
                debug!(session_id = %session, refusal = ?s.refusal, operations = ?s.operations, "DICOM tunnel inspected");
                s.ended
            }
        };
        metrics
            .tunnel_bytes
            .with_label_values(&["to_target"])
            .inc_by(counters.a_to_b());
        metrics
            .tunnel_bytes
            .with_label_values(&["from_target"])
            .inc_by(counters.b_to_a());
        debug!(session_id = %session, %target, ?ended, to_target = counters.a_to_b(), from_target = counters.b_to_a(), "tunnel closed");
    };
    tokio::select! {
        _ = tunnel => {},
        _ = kill.cancelled() => debug!(session_id = %session, %target, "tunnel closed: the connector stopped"),
    }
    if inspected {
        sessions.ended(&session);
    }
    metrics.streams_active.dec();
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
    fn a_quic_link_request_becomes_the_http_request_it_stands_for_or_a_clear_error() {
        let req = |m: &str, t: &str, h: &[(&str, &str)]| wire::LinkRequest {
            method: m.to_owned(),
            target: t.to_owned(),
            headers: h
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let (m, uri, h) = request_parts(&req(
            "CONNECT",
            "10.0.0.5:104",
            &[(wire::HDR_SESSION, "s-1")],
        ))
        .unwrap();
        assert_eq!(m, Method::CONNECT);
        assert_eq!(uri_target(&uri), Some(("10.0.0.5".to_owned(), 104)));
        assert_eq!(h.get(wire::HDR_SESSION).unwrap(), "s-1");
        let (m, uri, _) = request_parts(&req("GET", wire::PATH_LINK_PING, &[])).unwrap();
        assert_eq!((m, uri.path()), (Method::GET, wire::PATH_LINK_PING));

        assert_eq!(
            request_parts(&req("CON NECT", "a:1", &[])).unwrap_err(),
            "bad method"
        );
        assert!(request_parts(&req("CONNECT", "a b", &[]))
            .unwrap_err()
            .starts_with("bad target"));
        assert_eq!(
            request_parts(&req("GET", "/", &[("bad header", "x")])).unwrap_err(),
            "bad header name"
        );
        assert_eq!(
            request_parts(&req("GET", "/", &[("x-a", "a\u{0}b")])).unwrap_err(),
            "bad value of header x-a"
        );
    }

    #[test]
    fn a_quic_failure_is_remembered_per_gateway_address_until_quic_works_there() {
        let d = QuicDialer::default();
        assert!(!d.failed_recently("lb.example:8444"));
        d.note("lb.example:8444", true);
        assert!(d.failed_recently("lb.example:8444"));
        // The replicas learnt behind a TCP-only balancer still try QUIC.
        assert!(!d.failed_recently("gw-a.example:8444"));
        d.note("lb.example:8444", false);
        assert!(!d.failed_recently("lb.example:8444"));
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
