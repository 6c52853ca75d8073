//! The clinician-facing listener: TLS 1.3, HTTP/2 (and HTTP/1.1 for JSON calls). It accepts
//! (within `max_connections_per_address` and `max_client_connections`, a pool separate from
//! the connector listener's), completes the handshake under a timeout, closes a connection
//! with GOAWAY once it has had no open stream for `client_idle_timeout`, and routes each
//! request to its service:
//!
//! * `CONNECT endpoint:0` — the tunnel broker (`access::broker`).
//! * `GET /v1/endpoints[/NAME]` — listing and preflight (`access::endpoints`).
//! * `POST /v1/enroll` — connector enrolment (`connectors::enroll`).
//! * `/auth/*`, `GET /v1/whoami` — sign-in (`authn::signin`) and device ceremonies
//!   (`authn::devices`).
//! * `GET /healthz`.
//! * With `[web]`: any request for `NAME.<apps_domain>` — the web application proxy
//!   (`crate::web`); `GET /auth/web`, `/auth/web/resume` and `/.well-known/postern/jwks.json`
//!   on the gateway's own host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_proto::wire;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn, Instrument};

use super::next_conn;
use crate::access::endpoints;
use crate::app::App;
use crate::authn::devices::{self, Step};
use crate::authn::signin;
use crate::connectors::enroll;
use crate::http::{error, Resp};
use crate::stream::OpenStreams;
use crate::web::{self, whole, WebResp};

pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = next_conn(&listener, &app.life.draining, "client").await else {
            return;
        };
        let Some((permit, address_permit)) = admit(&app, peer, "client") else {
            continue;
        };
        let task_app = app.clone();
        let span = tracing::debug_span!("client", %peer);
        app.life.conns.spawn(
            async move {
                serve_connection(task_app, tcp, peer).await;
                drop((permit, address_permit));
            }
            .instrument(span),
        );
    }
}

/// A client connection's places in the caps (`max_connections_per_address`, then
/// `max_client_connections`), or `None` (counted and logged) if one is full. Shared by the TCP
/// and QUIC (`kind` "QUIC") listeners, which draw on the same caps.
pub(crate) fn admit(
    app: &App,
    peer: SocketAddr,
    kind: &str,
) -> Option<(
    tokio::sync::OwnedSemaphorePermit,
    crate::limits::AddressPermit,
)> {
    // Per address first: one address at its cap must not use up the listener's pool.
    let Some(address_permit) = app.life.per_address.acquire(peer.ip()) else {
        app.metrics
            .connections_refused
            .with_label_values(&["client", "per_address"])
            .inc();
        debug!(%peer, "address at max_connections_per_address; refusing {kind} connection");
        return None;
    };
    let Ok(permit) = app.life.client_conns.clone().try_acquire_owned() else {
        app.metrics
            .connections_refused
            .with_label_values(&["client", "pool_full"])
            .inc();
        warn!(%peer, "client connection limit (max_client_connections) reached; refusing {kind} connection");
        return None;
    };
    Some((permit, address_permit))
}

async fn serve_connection(app: Arc<App>, tcp: TcpStream, peer: SocketAddr) {
    postern_net::h2::tune_socket(&tcp);
    let tls = match tokio::time::timeout(app.config.handshake_timeout, app.tls.client.accept(tcp))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "client TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "client TLS handshake timed out");
            return;
        }
    };
    let svc_app = app.clone();
    let streams = OpenStreams::new();
    let svc_streams = streams.clone();
    // Signalled by the first request: a connection that completes TLS and then never finishes
    // a request (an idle socket, or HTTP/2 headers trickled in a byte at a time) is closed
    // after `handshake_timeout`, like a slow handshake, instead of holding a connection slot.
    let first_request = Arc::new(tokio::sync::Notify::new());
    let seen = first_request.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        seen.notify_one();
        let app = svc_app.clone();
        // Open while the request is answered; a tunnel keeps a clone (see `StreamGuard`).
        let open = svc_streams.open();
        req.extensions_mut().insert(open.clone());
        async move {
            let resp = route(app, req, peer).await;
            drop(open);
            Ok::<_, Infallible>(resp)
        }
    });
    let idle_limit = app.config.connections.client_idle;
    let idle = streams.idle_for(idle_limit);
    let limit = app.config.handshake_timeout;
    let no_request = async move {
        if tokio::time::timeout(limit, first_request.notified())
            .await
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    postern_net::h2::auto_server(&mut builder, postern_net::h2::CLIENT)
        .max_concurrent_streams(4096)
        .max_header_list_size(32 * 1024);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "client connection ended with an error") },
        // Nothing was served on it, so dropping the connection loses nothing.
        _ = no_request => debug!(%peer, ?limit, "no complete request after the TLS handshake; closing"),
        _ = idle => {
            // GOAWAY: nothing is open on it, so nothing is cut; the client dials again when
            // it next needs the gateway.
            app.metrics.client_idle_closed.inc();
            debug!(%peer, ?idle_limit, "no open stream for client_idle_timeout; closing");
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {},
                _ = app.life.shutdown.cancelled() => {},
            }
        }
        _ = app.life.draining.cancelled() => {
            // GOAWAY: streams in flight (and upgraded tunnels) go on; no new requests.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {},
                _ = app.life.shutdown.cancelled() => {},
            }
        }
    }
}

async fn route(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> WebResp {
    if let Some(web) = &app.web {
        if req.method() != Method::CONNECT {
            if let Some(name) = web.app_of(&req) {
                return web.clone().handle(req, peer, name).await;
            }
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/auth/web") => return web::signin::start(web, req, peer).await,
                (&Method::GET, "/auth/web/resume") => {
                    return web::signin::resume(web, req, peer).await
                }
                (&Method::GET, "/.well-known/postern/jwks.json") => {
                    return whole(crate::http::json(StatusCode::OK, &web.authn.keys.jwks()))
                }
                _ => {}
            }
        }
    }
    whole(route_gateway(app, req, peer).await)
}

/// The gateway's own routes (its main host).
async fn route_gateway(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if req.method() == Method::CONNECT {
        return app.broker.clone().connect(req, peer).await;
    }
    let path = req.uri().path().to_owned();
    let step = match path.as_str() {
        "/auth/device/register/begin" => Some(Step::RegisterBegin),
        "/auth/device/register/finish" => Some(Step::RegisterFinish),
        "/auth/device/assert/begin" => Some(Step::AssertBegin),
        "/auth/device/assert/finish" => Some(Step::AssertFinish),
        "/auth/device/wait" => Some(Step::Wait),
        _ => None,
    };
    if let (&Method::POST, Some(step)) = (req.method(), step) {
        return devices::handle(app.devices.clone(), req, peer, step).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, wire::PATH_HEALTH) => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        (&Method::POST, wire::PATH_ENROLL) => {
            enroll::enroll(app.enrolment.clone(), req, peer).await
        }
        (&Method::GET, wire::PATH_ENDPOINTS) => endpoints::list(&app.broker, &req, peer),
        (&Method::GET, wire::PATH_NOTICES) => crate::access::notices::list(&app.broker, &req, peer),
        (&Method::POST, wire::PATH_SESSIONS_RENEW) => {
            crate::access::renew::renew(&app.broker, req, peer).await
        }
        (&Method::GET, "/auth/login") => signin::login(app.signin.clone(), req, peer).await,
        (&Method::GET, "/auth/callback") => signin::callback(app.signin.clone(), req, peer).await,
        (&Method::POST, "/auth/token") => signin::token(app.signin.clone(), req, peer).await,
        (&Method::POST, "/auth/cli/wait") => {
            devices::cli_wait(app.devices.clone(), req, peer).await
        }
        (&Method::POST, "/auth/logout") => signin::logout(app.signin.clone(), req, peer).await,
        (&Method::GET, "/v1/whoami") => signin::whoami(&app.signin, &req, peer),
        (&Method::GET, p) if p.starts_with("/v1/endpoints/") => {
            let name = &p["/v1/endpoints/".len()..];
            endpoints::check(&app.broker, &req, peer, name)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such resource"),
    }
}
