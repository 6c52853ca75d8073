//! The clinician-facing listener: TLS 1.3, HTTP/2 (and HTTP/1.1 for JSON calls).
//!
//! * `CONNECT endpoint:0` — the tunnel broker.
//! * `GET /v1/endpoints` — endpoints this user may reach.
//! * `GET /v1/endpoints/NAME` — the decision for one endpoint (the client's preflight); a
//!   denial here is audited like any other.
//! * `POST /v1/enroll` — connector enrolment with a one-time token.
//! * `GET /healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_audit::{DecisionRef, EndpointRef, EventType};
use postern_net::relay::Counters;
use postern_policy::{Decision, Effect, Endpoint};
use postern_proto::ids::{random_id, sha256_hex};
use postern_proto::wire::{
    self, EndpointInfo, EndpointList, EnrollRequest, EnrollResponse, ErrorBody,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::clock::unix_now;
use crate::sessions::{deadline_for, end_session, run_session, Facts, SessionInfo};
use crate::tokens::{Claims, TokenError};
use crate::Gateway;

pub(crate) type Resp = Response<Full<Bytes>>;

pub async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = crate::next_conn(&listener, &gw.draining, "client").await else {
            return;
        };
        let Ok(permit) = gw.conn_limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; refusing client connection");
            continue;
        };
        let task_gw = gw.clone();
        gw.conns.spawn(async move {
            serve_connection(task_gw, tcp, peer).await;
            drop(permit);
        });
    }
}

async fn serve_connection(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls =
        match tokio::time::timeout(gw.config.handshake_timeout, gw.client_tls.accept(tcp)).await {
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
    let svc_gw = gw.clone();
    // Signalled by the first request: a connection that completes TLS and then never finishes
    // a request (an idle socket, or HTTP/2 headers trickled in a byte at a time) is closed
    // after `handshake_timeout`, like a slow handshake, instead of holding a connection slot.
    let first_request = Arc::new(tokio::sync::Notify::new());
    let seen = first_request.clone();
    let service = service_fn(move |req| {
        seen.notify_one();
        let gw = svc_gw.clone();
        async move { Ok::<_, Infallible>(route(gw, req, peer).await) }
    });
    let limit = gw.config.handshake_timeout;
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
        _ = gw.draining.cancelled() => {
            // GOAWAY: streams in flight (and upgraded tunnels) go on; no new requests.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {},
                _ = gw.shutdown.cancelled() => {},
            }
        }
    }
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// An error response: JSON body plus the reason in a header (readable on a CONNECT refusal,
/// where clients may not read bodies).
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    let mut r = json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message: message.to_owned(),
        },
    );
    if let Ok(v) = header::HeaderValue::from_str(&sanitize_header(message)) {
        r.headers_mut().insert(wire::HDR_REASON, v);
    }
    r
}

fn sanitize_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}

/// 429 with `Retry-After`.
fn too_many(message: &str, secs: u64) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

async fn route(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if req.method() == Method::CONNECT {
        return broker(gw, req, peer).await;
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, wire::PATH_HEALTH) => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        (&Method::POST, wire::PATH_ENROLL) => enroll(gw, req, peer).await,
        (&Method::GET, wire::PATH_ENDPOINTS) => list_endpoints(&gw, &req, peer),
        (&Method::GET, "/auth/login") => crate::auth::login(gw, req, peer).await,
        (&Method::GET, "/auth/callback") => crate::auth::callback(gw, req, peer).await,
        (&Method::POST, "/auth/token") => crate::auth::token(gw, req, peer).await,
        (&Method::POST, "/auth/logout") => crate::auth::logout(gw, req, peer).await,
        (&Method::GET, "/v1/whoami") => crate::auth::whoami(&gw, &req),
        (&Method::POST, "/auth/device/register/begin") => {
            crate::devices::handle(gw, req, peer, crate::devices::Step::RegisterBegin).await
        }
        (&Method::POST, "/auth/device/register/finish") => {
            crate::devices::handle(gw, req, peer, crate::devices::Step::RegisterFinish).await
        }
        (&Method::POST, "/auth/device/assert/begin") => {
            crate::devices::handle(gw, req, peer, crate::devices::Step::AssertBegin).await
        }
        (&Method::POST, "/auth/device/assert/finish") => {
            crate::devices::handle(gw, req, peer, crate::devices::Step::AssertFinish).await
        }
        (&Method::GET, p) if p.starts_with("/v1/endpoints/") => {
            let name = &p["/v1/endpoints/".len()..];
            check_endpoint(&gw, &req, peer, name).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such resource"),
    }
}

fn bearer(req: &Request<Incoming>) -> Result<&str, TokenError> {
    let v = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?
        .to_str()
        .map_err(|_| TokenError::Malformed("authorization header is not ASCII".into()))?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| TokenError::Malformed("authorization is not a Bearer token".into()))
}

pub(crate) fn authenticate(gw: &Gateway, req: &Request<Incoming>) -> Result<Claims, TokenError> {
    let claims = gw.keys.verify(bearer(req)?)?;
    check_live(gw, &claims)?;
    Ok(claims)
}

/// Revocations that apply to a valid token: sign-out, its user, its device.
pub(crate) fn check_live(gw: &Gateway, claims: &Claims) -> Result<(), TokenError> {
    if gw.is_revoked(&claims.jti) {
        return Err(TokenError::Revoked);
    }
    if gw.devices.user_revoked(&claims.sub, claims.iat) {
        return Err(TokenError::UserRevoked);
    }
    if let Some(id) = &claims.device {
        match gw.devices.view(id) {
            Some(v) if v.status == crate::state::DeviceStatus::Active && v.user == claims.sub => {}
            Some(v) => return Err(TokenError::DeviceNotActive(id.clone(), v.status.as_str())),
            None => return Err(TokenError::DeviceNotActive(id.clone(), "not registered")),
        }
    }
    Ok(())
}

/// The policy's device facts for a token: none for a token not bound to a device.
pub(crate) fn device_facts(gw: &Gateway, claims: &Claims) -> Option<postern_policy::DeviceFacts> {
    claims
        .device
        .as_deref()
        .map(|id| gw.devices.facts(id, claims.uv, claims.posture.as_ref()))
}

pub(crate) fn device_ref(gw: &Gateway, claims: &Claims) -> Option<postern_audit::DeviceRef> {
    claims.device.as_ref().map(|id| postern_audit::DeviceRef {
        id: id.clone(),
        name: gw.devices.view(id).map(|v| v.name),
        user_verified: Some(claims.uv),
    })
}

pub fn endpoint_ref(e: &Endpoint) -> EndpointRef {
    EndpointRef {
        name: e.name.clone(),
        site: e.site.clone(),
        host: e.host.clone(),
        port: e.port,
        protocol: e.protocol.to_string(),
    }
}

pub(crate) fn decision_ref(d: &Decision) -> DecisionRef {
    DecisionRef {
        effect: match d.effect {
            Effect::Allow => "allow".into(),
            Effect::Deny => "deny".into(),
        },
        rule: d.rule.clone(),
        policy_version: Some(d.policy_version.clone()),
        reason: d.reason.clone(),
        matched_allows: d.matched_allows.clone(),
        matched_denies: d.matched_denies.clone(),
        valid_until: d
            .valid_until
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    }
}

/// Audits a refused access attempt (token or policy) as `session.denied`.
fn audit_denied(
    gw: &Gateway,
    peer: SocketAddr,
    claims: Option<&Claims>,
    endpoint_name: &str,
    decision: Option<&Decision>,
    detail: String,
) {
    gw.metrics.sessions_total.with_label_values(&["deny"]).inc();
    let policy = gw.policy();
    let mut ev = gw.event(EventType::SessionDenied);
    ev.source = Some(peer.to_string());
    ev.user = claims.map(|c| c.sub.clone());
    ev.device = claims.and_then(|c| device_ref(gw, c));
    ev.groups = claims.map(|c| c.groups.clone());
    ev.endpoint = Some(match policy.endpoint(endpoint_name) {
        Some(e) => endpoint_ref(e),
        None => EndpointRef {
            name: endpoint_name.to_owned(),
            ..Default::default()
        },
    });
    ev.decision = Some(match decision {
        Some(d) => decision_ref(d),
        None => DecisionRef {
            effect: "deny".into(),
            rule: None,
            policy_version: Some(policy.version().to_owned()),
            reason: detail.clone(),
            ..Default::default()
        },
    });
    ev.detail = Some(detail);
    gw.audit.record_nowait(ev);
}

pub(crate) fn token_refusal(e: &TokenError) -> Resp {
    let status = match e {
        TokenError::Keys { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNAUTHORIZED,
    };
    error(status, e.code(), &e.to_string())
}

/// The break-glass reason sent by `postern connect --reason`, if any and well-formed.
fn justification(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(wire::HDR_JUSTIFICATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|j| !j.is_empty() && j.len() <= wire::MAX_JUSTIFICATION)
        .map(str::to_owned)
}

/// Everything the policy may ask about this request: who, from where, how strongly
/// authenticated, on what device, with what reason.
fn policy_request<'a>(
    claims: &'a Claims,
    endpoint: &'a str,
    peer: SocketAddr,
    justification: Option<&'a str>,
    device: Option<&'a postern_policy::DeviceFacts>,
) -> postern_policy::Request<'a> {
    let auth_time = claims
        .auth_time
        .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(t));
    let r = postern_policy::Request::new(
        &claims.sub,
        &claims.groups,
        endpoint,
        std::time::SystemTime::now(),
    )
    .with_source(peer.ip())
    .with_auth(claims.mfa, auth_time);
    let r = match device {
        Some(d) => r.with_device(d),
        None => r,
    };
    match justification {
        Some(j) => r.with_justification(j),
        None => r,
    }
}

async fn broker(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let started = Instant::now();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let Some(name) = wire::endpoint_from_authority(&authority).map(str::to_owned) else {
        let shown = sanitize_header(&authority);
        audit_denied(
            &gw,
            peer,
            None,
            &shown,
            None,
            format!("malformed CONNECT target '{shown}' (expected ENDPOINT:0)"),
        );
        return error(
            StatusCode::BAD_REQUEST,
            "bad_target",
            "CONNECT target must be ENDPOINT:0",
        );
    };
    let claims = match authenticate(&gw, &req) {
        Ok(c) => c,
        Err(e) => {
            audit_denied(&gw, peer, None, &name, None, e.to_string());
            return token_refusal(&e);
        }
    };
    let limited = gw
        .limits
        .tunnel_ip
        .check(&peer.ip())
        .and_then(|_| gw.limits.tunnel_user.check(&claims.sub));
    if let Err(secs) = limited {
        gw.note_ratelimited("tunnel");
        let msg = format!("too many new connections; try again in {secs}s");
        audit_denied(
            &gw,
            peer,
            Some(&claims),
            &name,
            None,
            format!("rate limited: {msg}"),
        );
        return too_many(&msg, secs);
    }
    let policy = gw.policy();
    let reason_given = justification(&req);
    let device = device_facts(&gw, &claims);
    let decision = policy.evaluate(&policy_request(
        &claims,
        &name,
        peer,
        reason_given.as_deref(),
        device.as_ref(),
    ));
    let endpoint = match (decision.is_allowed(), policy.endpoint(&name)) {
        (true, Some(e)) => e.clone(),
        _ => {
            info!(user = %claims.sub, endpoint = %name, reason = %decision.reason, "access denied");
            audit_denied(
                &gw,
                peer,
                Some(&claims),
                &name,
                Some(&decision),
                decision.reason.clone(),
            );
            return error(StatusCode::FORBIDDEN, "policy_denied", &decision.reason);
        }
    };
    let Ok(session_id) = random_id("sess") else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random number generator failed",
        );
    };
    let mut info = SessionInfo {
        id: session_id.clone(),
        user: claims.sub.clone(),
        groups: claims.groups.clone(),
        source: peer.to_string(),
        endpoint: endpoint_ref(&endpoint),
        decision: decision_ref(&decision),
        connector: None,
        justification: reason_given
            .clone()
            .filter(|_| decision.limits.require_justification),
        report_only: crate::sessions::report_only(&decision),
        egress_class: Some(endpoint.egress.to_string()),
        device: device_ref(&gw, &claims),
    };
    let link = gw.registry.pick(&endpoint.site);
    info.connector = link.as_ref().map(|l| l.connector_ref());

    // Durable before anything is relayed: fail closed if the audit log cannot be written.
    gw.metrics
        .sessions_total
        .with_label_values(&["allow"])
        .inc();
    let audit_timer = gw.metrics.audit_write.start_timer();
    let durable = gw
        .audit
        .record(info.event(&gw, EventType::SessionStart))
        .await;
    audit_timer.observe_duration();
    if let Err(e) = durable {
        tracing::error!(error = %e, "audit log unavailable: refusing session");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the gateway cannot write its audit log, so it is refusing new sessions; contact the service desk",
        );
    }
    let none = Counters::default();
    let Some(link) = link else {
        let msg = format!(
            "no connector for site '{}' is connected to the gateway",
            endpoint.site
        );
        end_session(
            &gw,
            &info,
            started,
            "no_connector",
            Some(msg.clone()),
            &none,
        )
        .await;
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_connector", &msg);
    };

    let target = postern_net::addr::format_host_port(&endpoint.host, endpoint.port);
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(target.as_str())
        .header(wire::HDR_SESSION, session_id.as_str())
        .header(wire::HDR_ENDPOINT, endpoint.name.as_str())
        .body(Empty::<Bytes>::new());
    let connect = match connect {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("endpoint address '{target}' is not valid: {e}");
            end_session(&gw, &info, started, "error", Some(msg.clone()), &none).await;
            return error(StatusCode::BAD_GATEWAY, "bad_endpoint", &msg);
        }
    };
    let mut sender = link.sender.clone();
    let resp = match tokio::time::timeout(
        gw.config.connector_dial_timeout,
        sender.send_request(connect),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let msg = format!("connector {} failed: {e}", link.connector_id);
            end_session(
                &gw,
                &info,
                started,
                "connector_lost",
                Some(msg.clone()),
                &none,
            )
            .await;
            return error(StatusCode::BAD_GATEWAY, "connector_error", &msg);
        }
        Err(_) => {
            let msg = format!(
                "connector {} did not reach {} within {:?}",
                link.connector_id, endpoint.name, gw.config.connector_dial_timeout
            );
            end_session(
                &gw,
                &info,
                started,
                "connector_timeout",
                Some(msg.clone()),
                &none,
            )
            .await;
            return error(StatusCode::GATEWAY_TIMEOUT, "connector_timeout", &msg);
        }
    };
    if resp.status() != StatusCode::OK {
        let why = resp
            .headers()
            .get(wire::HDR_REASON)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no reason given")
            .to_owned();
        let msg = format!("connector {} refused: {why}", link.connector_id);
        let reason = if resp.status() == StatusCode::FORBIDDEN {
            "connector_refused"
        } else {
            "endpoint_unreachable"
        };
        end_session(&gw, &info, started, reason, Some(msg.clone()), &none).await;
        return error(StatusCode::BAD_GATEWAY, reason, &msg);
    }

    // Deadline: the rule's maximum session duration, capped by the token's expiry.
    let facts = Facts {
        source_ip: peer.ip(),
        token_exp: claims.exp,
        jti: claims.jti.clone(),
        mfa: claims.mfa,
        auth_time: claims
            .auth_time
            .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(t)),
        justification: reason_given.clone(),
        started,
        token_iat: claims.iat,
        device_id: claims.device.clone(),
        device: device.clone(),
    };
    let idle_limit = decision.limits.idle_timeout;
    let recheck_at = decision.valid_until;
    let deadline = deadline_for(&decision, started, claims.exp);
    info!(session_id = %session_id, user = %claims.sub, endpoint = %endpoint.name, connector_id = %link.connector_id, "session started");
    gw.metrics
        .session_setup
        .observe(started.elapsed().as_secs_f64());
    let client_up = hyper::upgrade::on(req);
    let endpoint_up = hyper::upgrade::on(resp);
    let task_gw = gw.clone();
    let link_lost = link.lost.clone();
    tokio::spawn(async move {
        match tokio::join!(client_up, endpoint_up) {
            (Ok(c), Ok(e)) => {
                run_session(
                    task_gw,
                    info,
                    facts,
                    deadline,
                    idle_limit,
                    recheck_at,
                    link_lost,
                    TokioIo::new(c),
                    TokioIo::new(e),
                )
                .await
            }
            (c, e) => {
                let msg = format!(
                    "stream upgrade failed (client: {}, connector: {})",
                    c.err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "ok".into()),
                    e.err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "ok".into())
                );
                end_session(
                    &task_gw,
                    &info,
                    started,
                    "error",
                    Some(msg),
                    &Counters::default(),
                )
                .await;
            }
        }
    });
    let mut ok = Response::new(Full::new(Bytes::new()));
    if let Ok(v) = header::HeaderValue::from_str(&session_id) {
        ok.headers_mut().insert(wire::HDR_SESSION, v);
    }
    ok
}

fn endpoint_info(e: &Endpoint, d: &Decision) -> EndpointInfo {
    EndpointInfo {
        name: e.name.clone(),
        site: e.site.clone(),
        protocol: e.protocol.to_string(),
        description: e.description.clone(),
        allowed: d.is_allowed(),
        rule: d.rule.clone(),
        reason: d.reason.clone(),
        max_session_secs: d.limits.max_session.map(|m| m.as_secs()),
    }
}

fn list_endpoints(gw: &Gateway, req: &Request<Incoming>, peer: SocketAddr) -> Resp {
    let claims = match authenticate(gw, req) {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, error = %e, "endpoint listing refused");
            return token_refusal(&e);
        }
    };
    let policy = gw.policy();
    let device = device_facts(gw, &claims);
    let endpoints = policy
        .endpoints()
        .iter()
        .filter_map(|e| {
            let d = policy.evaluate(&policy_request(
                &claims,
                &e.name,
                peer,
                None,
                device.as_ref(),
            ));
            d.is_allowed().then(|| endpoint_info(e, &d))
        })
        .collect();
    json(
        StatusCode::OK,
        &EndpointList {
            user: claims.sub,
            groups: claims.groups,
            endpoints,
        },
    )
}

async fn check_endpoint(
    gw: &Gateway,
    req: &Request<Incoming>,
    peer: SocketAddr,
    name: &str,
) -> Resp {
    let claims = match authenticate(gw, req) {
        Ok(c) => c,
        Err(e) => {
            audit_denied(gw, peer, None, &sanitize_header(name), None, e.to_string());
            return token_refusal(&e);
        }
    };
    let policy = gw.policy();
    let given = justification(req);
    let device = device_facts(gw, &claims);
    let d = policy.evaluate(&policy_request(
        &claims,
        name,
        peer,
        given.as_deref(),
        device.as_ref(),
    ));
    match policy.endpoint(name) {
        Some(e) if d.is_allowed() => json(StatusCode::OK, &endpoint_info(e, &d)),
        _ => {
            audit_denied(
                gw,
                peer,
                Some(&claims),
                &sanitize_header(name),
                Some(&d),
                d.reason.clone(),
            );
            error(StatusCode::FORBIDDEN, "policy_denied", &d.reason)
        }
    }
}

async fn enroll(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    // The (bounded) body is read before answering, even with 429: an HTTP/2 response sent
    // before the request body is consumed ends in a stream reset that clients may report as a
    // failure instead of showing the answer.
    let body = Limited::new(req.into_body(), wire::MAX_JSON_BODY)
        .collect()
        .await;
    if let Err(secs) = gw.limits.enroll.check(&peer.ip()) {
        gw.note_ratelimited("enroll");
        return too_many("too many enrolment attempts from this address", secs);
    }
    let body = match body {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                &format!("request body: {e}"),
            )
        }
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("enrolment request is not valid JSON: {e}"),
            )
        }
    };
    let secret_hash = sha256_hex(request.token.as_bytes());
    let validity = gw.config.connector_cert_validity;
    let ca = gw.connector_ca.clone();
    let csr_pem = request.csr_pem;
    let issue: crate::state::EnrollIssuer = Box::new(move |site: &str| {
        let suffix = random_id("x").map_err(|_| "random number generator failed".to_owned())?;
        let id = format!("{site}-{}", &suffix[2..10]);
        let (cert_pem, serial, not_after) = ca
            .sign_connector(&csr_pem, &id, site, validity)
            .map_err(|e| e.to_string())?;
        Ok((
            id,
            crate::state::Issued {
                cert_pem,
                serial,
                not_after: crate::clock::unix_secs(not_after),
            },
        ))
    });
    let result = gw
        .store
        .enroll_connector(secret_hash, request.hostname, unix_now(), issue)
        .await;
    match result {
        Ok((rec, issued, token_id)) => {
            let (id, site) = (rec.id, rec.site);
            let cert_pem = issued.cert_pem;
            let not_after = crate::clock::from_unix(issued.not_after);
            let mut ev = gw.event(EventType::ConnectorEnrolled);
            ev.connector = Some(postern_audit::ConnectorRef {
                id: id.clone(),
                site: site.clone(),
            });
            ev.site = Some(site.clone());
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!("enrolment token {token_id}"));
            if let Err(e) = gw.audit.record(ev).await {
                warn!(error = %e, "could not audit connector.enrolled");
            }
            info!(connector_id = %id, %site, %peer, "connector enrolled");
            json(
                StatusCode::OK,
                &EnrollResponse {
                    connector_id: id,
                    site,
                    cert_pem,
                    gateway_ca_pem: gw.server_ca_pem.clone(),
                    connector_addrs: gw.connector_addrs.clone(),
                    not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
                },
            )
        }
        Err(e) => {
            warn!(%peer, reason = %e, "connector enrolment refused");
            let mut ev = gw.event(EventType::EnrollmentFailed);
            ev.source = Some(peer.to_string());
            ev.detail = Some(e.to_string());
            gw.audit.record_nowait(ev);
            use crate::state::{Refusal, StoreError};
            let (status, code) = match &e {
                StoreError::Refused(
                    Refusal::UnknownToken | Refusal::TokenUsed(_) | Refusal::TokenExpired,
                ) => (StatusCode::FORBIDDEN, "enrollment_refused"),
                StoreError::Refused(_) => (StatusCode::BAD_REQUEST, "bad_csr"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            error(status, code, &e.to_string())
        }
    }
}
