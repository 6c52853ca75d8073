//! HTTP/1.1 plumbing: the accept loop, one task per connection, body limits, and turning a
//! provider [`Reply`] into a response. No protocol decisions are made here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::pages;
use crate::provider::{Provider, Reply, Req, CSP_BASE};

/// Largest request body accepted (forms and token requests are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Largest request head (request line plus headers); hyper's minimum is 8 KiB.
const MAX_HEAD: usize = 16 * 1024;
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their request after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type Resp = Response<Full<Bytes>>;

pub async fn run(
    listener: TcpListener,
    provider: Arc<Provider>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        warn!(%peer, "connection limit reached; refusing connection");
                        continue;
                    };
                    let provider = provider.clone();
                    let stop = stop_rx.clone();
                    conns.spawn(async move {
                        serve_connection(provider, tcp, peer, stop).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
}

async fn serve_connection(
    provider: Arc<Provider>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let service = service_fn(move |req| {
        let provider = provider.clone();
        async move { Ok::<_, Infallible>(handle(&provider, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stopping| *stopping) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "connection ended with an error during shutdown");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn handle(provider: &Provider, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let declared_len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_BODY as u64) {
        return plain_error(StatusCode::PAYLOAD_TOO_LARGE, "The request is too large.");
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return plain_error(StatusCode::PAYLOAD_TOO_LARGE, "The request is too large.")
        }
        Ok(Err(_)) => return plain_error(StatusCode::BAD_REQUEST, "The request body is broken."),
        Err(_) => return plain_error(StatusCode::REQUEST_TIMEOUT, "The request was too slow."),
    };
    let header = |name: HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let reply = provider.handle(
        &Req {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            authorization: header(header::AUTHORIZATION),
            content_type: header(header::CONTENT_TYPE),
            body: &body,
        },
        unix_now(),
    );
    let resp = into_response(reply);
    debug!(method = %parts.method, path = parts.uri.path(), status = resp.status().as_u16(), "request");
    resp
}

fn plain_error(status: StatusCode, message: &str) -> Resp {
    into_response(Reply::Html {
        status,
        body: pages::error("Request not accepted", message),
        csp: format!("{CSP_BASE}; form-action 'none'"),
    })
}

fn into_response(reply: Reply) -> Resp {
    let mut extra: Vec<(HeaderName, String)> = Vec::new();
    let (status, content_type, body) = match reply {
        Reply::Html { status, body, csp } => {
            extra.push((header::CONTENT_SECURITY_POLICY, csp));
            extra.push((header::X_FRAME_OPTIONS, "DENY".to_owned()));
            (status, "text/html; charset=utf-8", Bytes::from(body))
        }
        Reply::Redirect { status, location } => {
            extra.push((header::LOCATION, location));
            (status, "text/plain; charset=utf-8", Bytes::new())
        }
        Reply::Json {
            status,
            body,
            www_authenticate,
        } => {
            if let Some(challenge) = www_authenticate {
                extra.push((header::WWW_AUTHENTICATE, challenge));
            }
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            (status, "application/json", Bytes::from(bytes))
        }
        Reply::MethodNotAllowed { allow } => {
            extra.push((header::ALLOW, allow.to_owned()));
            let body = pages::error(
                "Method not allowed",
                "This address does not accept that method.",
            );
            extra.push((
                header::CONTENT_SECURITY_POLICY,
                format!("{CSP_BASE}; form-action 'none'"),
            ));
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/html; charset=utf-8",
                Bytes::from(body),
            )
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-postern-devidp"),
        HeaderValue::from_static("development identity provider - not for production"),
    );
    for (name, value) in extra {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                h.insert(name, v);
            }
            Err(_) => {
                // Only reachable if a configured redirect URI slipped past validation.
                warn!(header = %name, "refusing to send an invalid header value");
                let mut r = Response::new(Full::new(Bytes::from_static(b"internal error")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
        }
    }
    resp
}
