//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz` (the process
//! is up) and `GET /readyz` (policy loaded and, with sign-in configured, the IdP discovered).
//! Plain HTTP/1.1: bind it to loopback or a management network only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::Gateway;

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn route(gw: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let stats = gw.audit.stats();
            gw.metrics
                .sync_audit(stats.written, stats.failed + stats.dropped);
            text(
                StatusCode::OK,
                gw.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&Method::GET, "/readyz") => {
            let audit_ok = gw.audit.health().is_ok();
            let idp_ok = gw.oidc.as_ref().is_none_or(|o| o.ready());
            if audit_ok && idp_ok {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                let why = format!(
                    "not ready:{}{}\n",
                    if audit_ok { "" } else { " audit log failing;" },
                    if idp_ok {
                        ""
                    } else {
                        " identity provider not discovered;"
                    }
                );
                text(StatusCode::SERVICE_UNAVAILABLE, why, "text/plain")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = crate::next_conn(&listener, &gw.shutdown, "admin").await else {
            return;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc_gw = gw.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let gw = svc_gw.clone();
                async move {
                    if let Err(wait) = gw.limits.admin.check(&peer.ip()) {
                        gw.note_ratelimited("admin");
                        let mut r = text(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!("too many requests from {}; retry in {wait} s\n", peer.ip()),
                            "text/plain",
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(route(&gw, &req))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
