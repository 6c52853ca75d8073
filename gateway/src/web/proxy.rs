//! Forwarding: a request with a live application session is decided by the policy (method and
//! path), then sent to the application over a connection through the site's connector —
//! HTTP/1.1 or HTTP/2 (by ALPN), TLS verified unless the policy says otherwise — reused by
//! the session's later requests. Bodies stream both ways. The application sees the person
//! only through `postern-jwt-assertion` (signed, 60 s, audience = the endpoint) and the
//! `X-Forwarded-*`/`Forwarded` headers the proxy sets; whatever the browser sent under those
//! names, and the proxy's own cookies, are removed. WebSocket upgrades get a connection of
//! their own, closed at once when the session ends.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_policy::{Endpoint, Protocol};
use serde::Serialize;
use tracing::debug;

use super::body::{Down, Up};
use super::cookies::{self, AppCookie};
use super::pool::Sender;
use super::record::{self, Outcome};
use super::session::{AppSession, StartError};
use super::{is_navigation, objects, pages, whole, Web, WebBody, WebResp};
use crate::connectors::OpenRequest;
use crate::stream::BoxIo;

/// How long an identity assertion is valid.
const ASSERTION_TTL: u64 = 60;
/// The header carrying the identity assertion.
pub const ASSERTION: &str = "postern-jwt-assertion";

/// Why the application could not be asked.
struct Failure {
    status: StatusCode,
    code: &'static str,
    why: String,
}

fn fail(status: StatusCode, code: &'static str, why: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        why: why.into(),
    }
}

/// The identity assertion's claims.
#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    groups: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    sid: &'a str,
    iat: u64,
    exp: u64,
}

/// Serves a request on an application host (not under `/.postern/`).
pub async fn serve(
    web: &Arc<Web>,
    req: Request<Incoming>,
    peer: SocketAddr,
    endpoint: Endpoint,
) -> WebResp {
    let app = endpoint.name.clone();
    let started = web.clock.instant();
    let (session, fresh_cookie) = match session_of(web, &req, peer, &endpoint).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(secs) = web
        .limits
        .web_user
        .check(&session.session.subject.claims.sub)
    {
        web.access.metrics.note_ratelimited("web");
        return whole(pages::too_many(&req, secs));
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let shown_path = crate::http::printable(&path, 1024);
    let objects = objects::of(&path, req.uri().query());
    let outcome = |status: StatusCode, detail: Option<String>| Outcome {
        method: method.clone(),
        path: shown_path.clone(),
        status: status.as_u16(),
        bytes_up: 0,
        bytes_down: 0,
        duration: web.clock.instant() - started,
        objects: objects.clone(),
        always: true,
        detail,
    };
    if let Some(why) = objects::refuse_path(&path) {
        record::request(
            &web.access.audit,
            &session,
            outcome(StatusCode::BAD_REQUEST, Some(why.into())),
        );
        return whole(pages::bad_request(
            &req,
            StatusCode::BAD_REQUEST,
            "bad_path",
            why,
        ));
    }
    if let Err(reason) = session.decide(web, &method, &path) {
        record::request(
            &web.access.audit,
            &session,
            outcome(StatusCode::FORBIDDEN, Some(reason.clone())),
        );
        return whole(pages::denied(&req, &app, &reason));
    }
    let mut resp = if is_websocket(&req) {
        websocket(web, &session, req, peer).await
    } else {
        forward(
            web,
            &session,
            req,
            peer,
            started,
            method.clone(),
            shown_path.clone(),
            objects.clone(),
        )
        .await
    };
    if let Some(c) = fresh_cookie {
        let max_age = session.exp.saturating_sub(web.clock.unix());
        cookies::set(&mut resp, cookies::APP, &c, max_age);
    }
    resp
}

/// The live application session of this request, and a new cookie when one was started from
/// a valid cookie whose session is not live here. Err: the answer (sign in, refused).
async fn session_of(
    web: &Arc<Web>,
    req: &Request<Incoming>,
    peer: SocketAddr,
    endpoint: &Endpoint,
) -> Result<(Arc<AppSession>, Option<String>), WebResp> {
    let app = &endpoint.name;
    let keys = &web.authn.keys;
    let now = web.clock.unix();
    let Some(value) = crate::http::cookie(req, cookies::APP) else {
        return Err(unauthenticated(web, req, app, "no application session"));
    };
    let c = match AppCookie::open(keys, &value, app, now) {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, %app, "application cookie refused");
            // A session that reached its rule's maximum duration is signed in again from
            // scratch, not carried on from the browser's earlier sign-in.
            if matches!(e, crate::authn::tokens::TokenError::Expired) && is_navigation(req) {
                return Err(super::signin::to_sign_in_with(web, req, app, true));
            }
            return Err(unauthenticated(
                web,
                req,
                app,
                "the application session has ended",
            ));
        }
    };
    let claims = match web.authn.verify(&c.tok) {
        Ok(claims) => claims,
        Err(e) => {
            if let Some(s) = web.sessions.get(&c.sid) {
                s.kill.kill(e.code());
            }
            return Err(unauthenticated(web, req, app, &e.to_string()));
        }
    };
    if let Some(s) = web.sessions.get(&c.sid) {
        if s.session.subject.claims.jti == claims.jti {
            return Ok((s, None));
        }
    }
    // The cookie is valid but its session is not live here (it went idle, this replica
    // restarted, or another one started it): a new session from the same sign-in, asked of
    // the policy again.
    match web.start_session(&c.tok, claims, peer, endpoint).await {
        Ok(s) => {
            let cookie = seal(web, &s, app).map_err(|r| whole(*r))?;
            Ok((s, Some(cookie)))
        }
        Err(e) => Err(start_failed(req, app, e)),
    }
}

/// The signed cookie of session `s`.
pub(super) fn seal(web: &Web, s: &AppSession, app: &str) -> Result<String, Box<crate::http::Resp>> {
    let keys = &web.authn.keys;
    AppCookie {
        iss: keys.issuer().to_owned(),
        aud: cookies::audience(keys, app),
        sid: s.session.id.clone(),
        tok: s.token.clone(),
        iat: web.clock.unix(),
        exp: s.exp,
    }
    .seal(keys)
    .map_err(|e| {
        Box::new(crate::http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot sign the session cookie: {e}"),
        ))
    })
}

/// The answer when a session could not start.
pub(super) fn start_failed<B>(req: &Request<B>, app: &str, e: StartError) -> WebResp {
    match e {
        StartError::Denied(d) => whole(pages::denied(req, app, &d.reason)),
        StartError::Failed(status, code, why) => whole(pages::upstream_failed(
            super::wants_json(req),
            status,
            code,
            &why,
        )),
    }
}

/// No (valid) session: a page load goes to sign-in; a script gets 401.
fn unauthenticated<B>(web: &Web, req: &Request<B>, app: &str, why: &str) -> WebResp {
    if !is_navigation(req) {
        return whole(pages::signed_out_json(&format!(
            "{why}; reload the page to sign in again"
        )));
    }
    super::signin::to_sign_in(web, req, app)
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Sends one request and streams its answer back.
#[allow(clippy::too_many_arguments)]
async fn forward(
    web: &Arc<Web>,
    s: &Arc<AppSession>,
    req: Request<Incoming>,
    peer: SocketAddr,
    started: tokio::time::Instant,
    method: String,
    path: String,
    objects: Vec<postern_audit::ObjectRef>,
) -> WebResp {
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let record = {
        let audit = web.access.audit.clone();
        let s = s.clone();
        let sent = sent.clone();
        let received = received.clone();
        let clock = web.clock.clone();
        move |status: u16, detail: Option<String>| {
            record::request(
                &audit,
                &s,
                Outcome {
                    method,
                    path,
                    status,
                    bytes_up: sent.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_down: received.load(std::sync::atomic::Ordering::Relaxed),
                    duration: clock.instant() - started,
                    objects,
                    always: false,
                    detail,
                },
            )
        }
    };
    let version = req.version();
    let json = super::wants_json(&req);
    let browser_req = req.map(|b| {
        Up::new(
            b,
            s.counters.clone(),
            sent.clone(),
            web.config.max_request_body,
            web.config.body_idle_timeout,
        )
        .boxed()
    });
    let answer =
        tokio::time::timeout(web.config.upstream_timeout, send(web, s, browser_req, peer)).await;
    let resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => {
            record(f.status.as_u16(), Some(f.why.clone()));
            return whole(pages::upstream_failed(json, f.status, f.code, &f.why));
        }
        Err(_) => {
            let why = format!(
                "the application did not answer within {}",
                humantime::format_duration(web.config.upstream_timeout)
            );
            record(504, Some(why.clone()));
            return whole(pages::upstream_failed(
                json,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &why,
            ));
        }
    };
    let status = resp.status().as_u16();
    let (mut parts, body) = resp.into_parts();
    // The browser's connection has its own version (an HTTP/1.0 application must not make
    // the proxy answer HTTP/1.0 and close the browser's connection).
    parts.version = version;
    clean_response_headers(&mut parts.headers, web, s);
    let body = Down::new(
        body,
        s.counters.clone(),
        received,
        Box::new(move || record(status, None)),
    );
    Response::from_parts(parts, body.boxed())
}

/// Sends `req` over a pooled (or new) connection; Ok: the application's answer (headers).
async fn send(
    web: &Web,
    s: &AppSession,
    req: Request<WebBody>,
    peer: SocketAddr,
) -> Result<Response<Incoming>, Failure> {
    let mut sender = match s.pool.take() {
        Some(x) => x,
        None => connect(web, s, false).await?,
    };
    let h2 = matches!(sender, Sender::H2(_));
    let up = upstream_request(web, s, req, peer, h2, false)?;
    let result = match &mut sender {
        Sender::H1(x) => {
            x.ready()
                .await
                .map_err(|e| fail(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string()))?;
            x.send_request(up).await
        }
        Sender::H2(x) => x.send_request(up).await,
    };
    s.pool.put(sender);
    result.map_err(|e| {
        fail(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("the application's connection failed: {e}"),
        )
    })
}

/// A new connection to the application, through the site's connector.
async fn connect(web: &Web, s: &AppSession, websocket: bool) -> Result<Sender, Failure> {
    let ep = &s.endpoint;
    let route = web.upstream.route(&ep.site).ok_or_else(|| {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_connector",
            format!(
                "no connector for site '{}' is connected to the gateway",
                ep.site
            ),
        )
    })?;
    let target = postern_net::addr::format_host_port(&ep.host, ep.port);
    let io = route
        .open(OpenRequest {
            target: &target,
            session_id: &s.session.id,
            endpoint: &ep.name,
            timeout: web.broker.dial_timeout,
            dicom: None,
        })
        .await
        .map_err(|e| fail(StatusCode::BAD_GATEWAY, e.close_reason(), e.to_string()))?;
    let (io, h2): (BoxIo, bool) = if ep.protocol == Protocol::Https {
        let base = if ep.tls_verify {
            &web.tls_verify
        } else {
            &web.tls_noverify
        };
        let config = if websocket {
            let mut c = (**base).clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        } else {
            base.clone()
        };
        let host = tls_name(ep);
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| {
            fail(
                StatusCode::BAD_GATEWAY,
                "bad_endpoint",
                format!("'{host}' is not a name TLS can verify"),
            )
        })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|e| {
                fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_tls",
                    format!("TLS to the application failed: {e}"),
                )
            })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        (Box::new(tls), h2)
    } else {
        (io, false)
    };
    let closed = s.closed.clone();
    if h2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| fail(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string()))?;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "application connection (HTTP/2) ended") },
                _ = closed.cancelled() => {}
            }
        });
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| fail(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string()))?;
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "application connection (HTTP/1.1) ended") },
                _ = closed.cancelled() => {}
            }
        });
        Ok(Sender::H1(send))
    }
}

/// The name TLS verifies: `upstream_host`'s host, else the endpoint's.
fn tls_name(ep: &Endpoint) -> String {
    match &ep.upstream_host {
        Some(h) => {
            let h = h
                .strip_prefix('[')
                .map_or(h.as_str(), |v6| v6.split(']').next().unwrap_or(v6));
            match h.rsplit_once(':') {
                Some((host, port))
                    if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    host.to_owned()
                }
                _ => h.to_owned(),
            }
        }
        None => ep.host.clone(),
    }
}

/// The `Host` the application sees.
fn upstream_host(ep: &Endpoint) -> String {
    if let Some(h) = &ep.upstream_host {
        return h.clone();
    }
    let default = match ep.protocol {
        Protocol::Https => 443,
        _ => 80,
    };
    if ep.port == default {
        postern_net::addr::format_host_port(&ep.host, ep.port)
            .rsplit_once(':')
            .map(|(h, _)| h.to_owned())
            .unwrap_or_else(|| ep.host.clone())
    } else {
        postern_net::addr::format_host_port(&ep.host, ep.port)
    }
}

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether the browser may not set this header for the application: identity and
/// forwarding headers are the proxy's to set.
fn is_identity_header(name: &str) -> bool {
    name == ASSERTION
        || name.starts_with("x-postern-")
        || name.starts_with("x-forwarded-")
        || name == "forwarded"
        || name == "x-real-ip"
        || name == "x-client-ip"
}

/// Names listed in `Connection` (hop-by-hop by declaration).
fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The request as the application receives it.
fn upstream_request(
    web: &Web,
    s: &AppSession,
    req: Request<WebBody>,
    peer: SocketAddr,
    h2: bool,
    websocket: bool,
) -> Result<Request<WebBody>, Failure> {
    let (parts, body) = req.into_parts();
    let ep = &s.endpoint;
    let host = upstream_host(ep);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let scheme = if ep.protocol == Protocol::Https {
        "https"
    } else {
        "http"
    };
    let uri: Uri = if h2 {
        format!("{scheme}://{host}{pq}").parse()
    } else {
        pq.parse()
    }
    .map_err(|_| {
        fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target is not valid",
        )
    })?;
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(body)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let listed = connection_listed(&parts.headers);
    let headers = out.headers_mut();
    let mut cookie_values = Vec::new();
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || listed.iter().any(|l| l == n) && !(websocket && n == "upgrade")
            || is_identity_header(n)
            || n == "host"
            || (n == "upgrade" && !websocket)
        {
            continue;
        }
        if n == "cookie" {
            if let Ok(v) = value.to_str() {
                cookie_values.push(v.to_owned());
            }
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let refs: Vec<&str> = cookie_values.iter().map(String::as_str).collect();
    if let Some(c) = cookies::strip_own(&refs) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            headers.insert(header::COOKIE, v);
        }
    }
    if !h2 {
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, v);
        }
    }
    let app_host = format!("{}.{}{}", ep.name, web.config.apps_domain, web.port_suffix);
    let ip = peer.ip().to_canonical();
    let for_ = match ip {
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        v4 => v4.to_string(),
    };
    let set = |h: &mut HeaderMap, name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "x-forwarded-for", ip.to_string());
    set(headers, "x-forwarded-proto", "https".into());
    set(headers, "x-forwarded-host", app_host.clone());
    set(
        headers,
        "forwarded",
        format!("for={for_};host=\"{app_host}\";proto=https"),
    );
    let claims = &s.session.subject.claims;
    let now = web.clock.unix();
    let assertion = Assertion {
        iss: &web.main_origin,
        aud: &ep.name,
        sub: &claims.sub,
        email: claims.sub.contains('@').then_some(claims.sub.as_str()),
        name: claims.name.as_deref(),
        groups: &claims.groups,
        device: claims.device.as_deref(),
        sid: &s.session.id,
        iat: now,
        exp: now + ASSERTION_TTL,
    };
    let signed = web
        .authn
        .keys
        .sign_json(&assertion)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    set(headers, ASSERTION, signed);
    Ok(out)
}

/// The application's response headers as the browser receives them: hop-by-hop ones dropped,
/// a redirect to the application's own address turned into one to its proxied address.
fn clean_response_headers(h: &mut HeaderMap, web: &Web, s: &AppSession) {
    let listed = connection_listed(h);
    for n in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        h.remove(n.as_str());
    }
    h.remove(header::UPGRADE);
    let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let ep = &s.endpoint;
    let host = upstream_host(ep);
    for scheme in ["http://", "https://"] {
        let prefix = format!("{scheme}{host}");
        if let Some(rest) = loc.strip_prefix(&prefix) {
            if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                let new = format!("{}{rest}", web.app_origin(&ep.name));
                if let Ok(v) = HeaderValue::from_str(&new) {
                    h.insert(header::LOCATION, v);
                }
                return;
            }
        }
    }
}

/// A WebSocket: its own HTTP/1.1 connection, the 101 passed back, then bytes both ways until
/// either side closes or the session ends.
async fn websocket(
    web: &Arc<Web>,
    s: &Arc<AppSession>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> WebResp {
    let browser_side = hyper::upgrade::on(&mut req);
    let started = web.clock.instant();
    let method = req.method().as_str().to_owned();
    let path = crate::http::printable(req.uri().path(), 1024);
    let fail_resp = |f: Failure| {
        record::request(
            &web.access.audit,
            s,
            Outcome {
                method: method.clone(),
                path: path.clone(),
                status: f.status.as_u16(),
                bytes_up: 0,
                bytes_down: 0,
                duration: web.clock.instant() - started,
                objects: Vec::new(),
                always: true,
                detail: Some(f.why.clone()),
            },
        );
        whole(pages::upstream_failed(
            true, // a WebSocket is opened by a script: it gets JSON
            f.status, f.code, &f.why,
        ))
    };
    let mut sender = match connect(web, s, true).await {
        Ok(Sender::H1(x)) => x,
        Ok(Sender::H2(_)) => {
            return fail_resp(fail(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the application answered a WebSocket connection with HTTP/2",
            ))
        }
        Err(f) => return fail_resp(f),
    };
    let req = req.map(|_| {
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed()
    });
    let up = match upstream_request(web, s, req, peer, false, true) {
        Ok(r) => r,
        Err(f) => return fail_resp(f),
    };
    let mut resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(e) => {
            return fail_resp(fail(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                e.to_string(),
            ))
        }
    };
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11;
        clean_response_headers(&mut parts.headers, web, s);
        record::request(
            &web.access.audit,
            s,
            Outcome {
                method,
                path,
                status: status.as_u16(),
                bytes_up: 0,
                bytes_down: 0,
                duration: web.clock.instant() - started,
                objects: Vec::new(),
                always: false,
                detail: None,
            },
        );
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let app_side = hyper::upgrade::on(&mut resp);
    let session = s.clone();
    let audit = web.access.audit.clone();
    let clock = web.clock.clone();
    tokio::spawn(async move {
        let (Ok(b), Ok(a)) = (browser_side.await, app_side.await) else {
            return;
        };
        // Bytes are counted as they move (the socket may be cut by the session's end at any
        // moment) and added to the session's counters every second, so a busy WebSocket keeps
        // the session from going idle.
        let moved = Arc::new(postern_net::relay::Counters::default());
        let relay = postern_net::relay::relay(TokioIo::new(b), TokioIo::new(a), moved.clone());
        tokio::pin!(relay);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut synced = (0u64, 0u64);
        let sync = |synced: &mut (u64, u64)| {
            let (up, down) = (moved.a_to_b(), moved.b_to_a());
            let c = &session.counters;
            c.a_to_b
                .fetch_add(up - synced.0, std::sync::atomic::Ordering::Relaxed);
            c.b_to_a
                .fetch_add(down - synced.1, std::sync::atomic::Ordering::Relaxed);
            *synced = (up, down);
        };
        loop {
            tokio::select! {
                _ = &mut relay => break,
                _ = session.closed.cancelled() => break,
                _ = session.kill.cancelled() => break,
                _ = tick.tick() => sync(&mut synced),
            }
        }
        sync(&mut synced);
        let (up, down) = synced;
        record::request(
            &audit,
            &session,
            Outcome {
                method,
                path,
                status: 101,
                bytes_up: up,
                bytes_down: down,
                duration: clock.instant() - started,
                objects: Vec::new(),
                always: false,
                detail: Some("WebSocket".into()),
            },
        );
    });
    let (mut parts, _) = resp.into_parts();
    let keep: Vec<(HeaderName, HeaderValue)> = parts
        .headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n.starts_with("sec-websocket-") || n == "upgrade" || n == "connection"
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    parts.headers.clear();
    for (n, v) in keep {
        parts.headers.append(n, v);
    }
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_the_proxys() {
        for n in [
            "postern-jwt-assertion",
            "x-postern-user",
            "x-forwarded-for",
            "x-forwarded-user",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        assert!(!is_identity_header("accept"));
    }

    #[test]
    fn connection_lists_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        assert_eq!(connection_listed(&h), vec!["keep-alive", "x-secret"]);
    }
}
