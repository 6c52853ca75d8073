//! The clinician-facing QUIC listener: UDP on the client listener's port, TLS 1.3 with ALPN
//! `postern-quic/1` and the client listener's certificate. One connection per client process;
//! each bidirectional stream is one tunnel (`postern_net::quic` has the framing). A stream's
//! request goes through the same broker pipeline as an HTTP/2 `CONNECT` — the same limits,
//! token checks, policy, audit and supervision — and its refusals carry the same codes and
//! sentences. Connections count against `max_connections_per_address` and
//! `max_client_connections` like TCP ones; the handshake and the request frame are bounded by
//! `handshake_timeout`. Draining stops new connections (live tunnels go on); shutdown closes
//! the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use postern_net::quic::{read_frame, tunnel_stream, write_frame};
use postern_proto::wire::{self, ErrorBody, TunnelRequest, TunnelResponse};
use tracing::{debug, Instrument};

use crate::app::App;
use crate::error::GatewayError;
use crate::http::Resp;

/// Accepts QUIC connections until the gateway drains; closes the endpoint at shutdown.
pub async fn accept_loop(app: Arc<App>, endpoint: quinn::Endpoint) {
    accept_until_drained(&app, endpoint, |incoming| {
        let peer = incoming.remote_address();
        let Some((permit, address_permit)) = super::client::admit(&app, peer, "QUIC") else {
            incoming.refuse();
            return;
        };
        let task_app = app.clone();
        let span = tracing::debug_span!("quic", %peer);
        app.life.conns.spawn(
            async move {
                serve_connection(task_app, incoming).await;
                drop((permit, address_permit));
            }
            .instrument(span),
        );
    })
    .await
}

/// Hands each incoming QUIC connection on `endpoint` to `take` (which must not wait) until the
/// gateway drains; then takes no new ones (the live ones go on) and closes the endpoint at
/// shutdown.
pub(crate) async fn accept_until_drained(
    app: &App,
    endpoint: quinn::Endpoint,
    mut take: impl FnMut(quinn::Incoming),
) {
    loop {
        tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => take(i),
                None => return,
            },
            _ = app.life.draining.cancelled() => break,
        }
    }
    endpoint.set_server_config(None);
    app.life.shutdown.cancelled().await;
    endpoint.close(0u32.into(), b"gateway shutting down");
}

async fn serve_connection(app: Arc<App>, incoming: quinn::Incoming) {
    let conn = match tokio::time::timeout(app.config.handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            debug!("QUIC handshake timed out");
            return;
        }
    };
    postern_net::quic::window::tune(conn.clone());
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "QUIC connection ended");
                    return;
                }
            },
            _ = app.life.shutdown.cancelled() => {
                conn.close(0u32.into(), b"gateway shutting down");
                return;
            }
        };
        // The address now (it may have moved since the handshake).
        let peer = conn.remote_address();
        tokio::spawn(serve_stream(app.clone(), send, recv, peer).in_current_span());
    }
}

/// One tunnel stream: its request frame, the broker, the answer, then the tunnel.
async fn serve_stream(
    app: Arc<App>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: SocketAddr,
) {
    let frame = tokio::time::timeout(
        app.config.handshake_timeout,
        read_frame::<_, TunnelRequest>(&mut recv),
    )
    .await;
    let req = match frame {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "bad QUIC tunnel request");
            let answer = refusal(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
            return;
        }
        Err(_) => {
            debug!(%peer, "no QUIC tunnel request within handshake_timeout");
            let _ = send.reset(0u32.into());
            return;
        }
    };
    let request = match as_connect(&req) {
        Ok(r) => r,
        Err(msg) => {
            let answer = refusal(StatusCode::BAD_REQUEST, "bad_request", &msg);
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
            return;
        }
    };
    if let Some(r) = &req.resume {
        match app.broker.resume(&request, peer, r).await {
            Ok(resuming) => {
                let answer = TunnelResponse {
                    status: 200,
                    session_id: Some(r.session_id.clone()),
                    received: Some(resuming.received),
                    ..refusal(StatusCode::OK, "", "")
                };
                if write_frame(&mut send, &answer).await.is_ok() {
                    let link = Box::new(tunnel_stream(send, recv));
                    if let Err(e) = resuming.attach(link, r.received).await {
                        debug!(%peer, error = %e, "resumed QUIC stream not attached");
                    }
                }
            }
            Err(resp) => {
                let answer = from_resp(resp).await;
                let _ = write_frame(&mut send, &answer).await;
                let _ = send.finish();
            }
        }
        return;
    }
    match app.broker.open_request(&request, peer).await {
        Ok(opened) => {
            let answer = TunnelResponse {
                status: 200,
                session_id: Some(opened.tunnel.session.id.clone()),
                resume_secret: opened.resume.as_ref().map(|(s, _)| s.clone()),
                ..refusal(StatusCode::OK, "", "")
            };
            if let Err(e) = write_frame(&mut send, &answer).await {
                // The client went away: the session ends as on a dropped HTTP/2 stream.
                debug!(%peer, error = %e, "QUIC tunnel answer not delivered");
            }
            app.broker
                .spawn_supervised(opened, Box::new(tunnel_stream(send, recv)));
        }
        Err(resp) => {
            let answer = from_resp(resp).await;
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
        }
    }
}

/// The request frame as the `CONNECT` the broker reads (token, target, justification).
fn as_connect(req: &TunnelRequest) -> Result<Request<()>, String> {
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri(wire::connect_authority(&req.endpoint))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", req.token));
    if let Some(j) = &req.justification {
        b = b.header(wire::HDR_JUSTIFICATION, wire::encode_justification(j));
    }
    if req.resumable {
        b = b.header(wire::HDR_RESUMABLE, "1");
    }
    b.body(()).map_err(|_| {
        "the endpoint name, token or justification is not a valid header value".to_owned()
    })
}

/// An answer: with `code` and `message` for a refusal (both empty on 200).
fn refusal(status: StatusCode, code: &str, message: &str) -> TunnelResponse {
    let some = |s: String| (!s.is_empty()).then_some(s);
    TunnelResponse {
        status: status.as_u16(),
        session_id: None,
        error: some(code.to_owned()),
        message: some(crate::http::printable(message, 512)),
        resume_secret: None,
        received: None,
    }
}

/// The broker's HTTP answer as a response frame (status, code, sentence).
async fn from_resp(resp: Resp) -> TunnelResponse {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => refusal(status, &e.error, &e.message),
        Err(_) => refusal(
            status,
            "refused",
            status.canonical_reason().unwrap_or("refused"),
        ),
    }
}

/// The key of stateless resets (`STATE_DIR/quic-reset.key`, 32 random bytes, 0600), made
/// once: after a restart the gateway can still tell a client that its connection is gone
/// (instead of the client waiting for its idle timeout), so the client reconnects at once.
fn reset_key(state_dir: &std::path::Path) -> Result<Vec<u8>, GatewayError> {
    let path = state_dir.join("quic-reset.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GatewayError::Io {
                what: format!("reading {}", path.display()),
                source,
            })
        }
    }
    let key = postern_proto::ids::random_bytes(32)
        .map_err(|_| GatewayError::other("the QUIC listener", "random number generator failed"))?;
    postern_net::fsutil::write_atomic(&path, &key, 0o600).map_err(|source| GatewayError::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    Ok(key)
}

/// Binds the QUIC endpoint on `socket` with the gateway's client-facing TLS.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    state_dir: &std::path::Path,
) -> Result<quinn::Endpoint, GatewayError> {
    let config = postern_net::quic::server_config(tls)
        .map_err(|e| GatewayError::other("the QUIC listener", e))?;
    endpoint_with(socket, config, state_dir)
}

/// Binds a QUIC endpoint on `socket` serving `config`, with the gateway's stateless-reset key.
pub fn endpoint_with(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    state_dir: &std::path::Path,
) -> Result<quinn::Endpoint, GatewayError> {
    quinn::Endpoint::new(
        postern_net::quic::server_endpoint_config(&reset_key(state_dir)?),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| GatewayError::other("the QUIC listener", e))
}
