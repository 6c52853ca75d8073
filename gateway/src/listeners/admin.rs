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

use super::next_conn;
use crate::app::App;

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn route(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let stats = app.audit.stats();
            app.metrics
                .sync_audit(stats.written, stats.failed + stats.dropped);
            text(
                StatusCode::OK,
                app.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&Method::GET, "/readyz") => {
            let audit_ok = app.audit.health().is_ok();
            let idp_ok = app.authn.oidc.as_ref().is_none_or(|o| o.ready());
            let store_ok = !app.broker.store_watch.is_stale();
            if audit_ok && idp_ok && store_ok {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                let why = format!(
                    "not ready:{}{}{}\n",
                    if audit_ok { "" } else { " audit log failing;" },
                    if idp_ok {
                        ""
                    } else {
                        " identity provider not discovered;"
                    },
                    if store_ok {
                        ""
                    } else {
                        " state store unavailable beyond max_staleness;"
                    }
                );
                text(StatusCode::SERVICE_UNAVAILABLE, why, "text/plain")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

pub async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let Some((tcp, peer)) = next_conn(&listener, &app.life.shutdown, "admin").await else {
            return;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc_app = app.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let app = svc_app.clone();
                async move {
                    if let Err(wait) = app.limits.admin.check(&peer.ip()) {
                        app.metrics.note_ratelimited("admin");
                        let mut r = text(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!("too many requests from {}; retry in {wait} s\n", peer.ip()),
                            "text/plain",
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
                        return Ok::<_, Infallible>(r);
                    }
                    Ok::<_, Infallible>(route(&app, &req))
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
