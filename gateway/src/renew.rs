//! Connector certificate renewal.
//!
//! A connector renews over a short extra connection to the connector listener with ALPN
//! `postern-renew/1`. The TLS handshake has already checked its client certificate exactly as
//! for a link (chains to the connector CA and is unexpired), and `connectors` has checked that
//! its serial is on record (current or previous) and the connector is not revoked. Here it sends
//! one `POST /v1/renew` with a CSR; the gateway signs it for the *same* connector id and site,
//! records the new serial (the presented one becomes `previous_serial`, so live links stay up),
//! audits `connector.renewed` and answers with the certificate. The store update re-checks the
//! record under its lock, so a revocation that races the renewal wins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_audit::{ConnectorRef, EventType};
use postern_proto::wire::{self, RenewRequest, RenewResponse};
use tracing::{info, warn};

use crate::client_api::{error, json, Resp};
use crate::store::{unix_now, ConnectorRec};
use crate::Gateway;

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("connector {0} is revoked")]
    Revoked(String),
    #[error("connector {0} is no longer enrolled")]
    Unknown(String),
    #[error("the certificate presented is not the connector's current one")]
    Superseded,
    #[error("{0}")]
    BadCsr(String),
    #[error("internal error: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Serves one renewal connection (HTTP/1.1, at most 30 s).
pub async fn serve<S>(gw: Arc<Gateway>, tls: S, peer: SocketAddr, rec: ConnectorRec, serial: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (gw, rec, serial) = (gw.clone(), rec.clone(), serial.clone());
        async move { Ok::<_, Infallible>(handle(gw, req, peer, rec, serial).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), service);
    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
}

async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    rec: ConnectorRec,
    serial: String,
) -> Resp {
    if req.method() != Method::POST || req.uri().path() != wire::PATH_RENEW {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "a renewal connection serves only POST /v1/renew",
        );
    }
    let body = match Limited::new(req.into_body(), wire::MAX_JSON_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                &format!("request body: {e}"),
            )
        }
    };
    let request: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("renewal request is not valid JSON: {e}"),
            )
        }
    };
    let validity = gw.config.connector_cert_validity;
    let task_gw = gw.clone();
    let (id, site) = (rec.id.clone(), rec.site.clone());
    let presented = serial.clone();
    let result = tokio::task::spawn_blocking(move || {
        let gw = task_gw;
        gw.store.update(|state| {
            let c = state
                .connectors
                .iter_mut()
                .find(|c| c.id == id)
                .ok_or_else(|| RenewError::Unknown(id.clone()))?;
            if c.revoked.is_some() {
                return Err(RenewError::Revoked(id.clone()));
            }
            if !c.accepts_serial(&presented) {
                return Err(RenewError::Superseded);
            }
            let (cert_pem, new_serial, not_after) = gw
                .connector_ca
                .sign_connector(&request.csr_pem, &c.id, &c.site, validity)
                .map_err(|e| RenewError::BadCsr(e.to_string()))?;
            let old = std::mem::replace(&mut c.serial, new_serial.clone());
            // The presented certificate is the one live links use; keep that one acceptable.
            c.previous_serial = Some(if old == presented { old } else { presented });
            c.not_after = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            c.renewed = Some(unix_now());
            Ok((cert_pem, new_serial, not_after))
        })
    })
    .await
    .unwrap_or_else(|e| Err(RenewError::BadCsr(format!("renewal task failed: {e}"))));
    let cref = ConnectorRef {
        id: rec.id.clone(),
        site: rec.site.clone(),
    };
    match result {
        Ok((cert_pem, new_serial, not_after)) => {
            let not_after = humantime::format_rfc3339_seconds(not_after).to_string();
            let mut ev = gw.event(EventType::ConnectorRenewed);
            ev.connector = Some(cref);
            ev.site = Some(site.clone());
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!(
                "certificate serial {serial} renewed as {new_serial}, valid until {not_after}"
            ));
            if let Err(e) = gw.audit.record(ev).await {
                warn!(error = %e, "could not audit connector.renewed; renewal not answered");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit log cannot be written; try again later",
                );
            }
            info!(connector_id = %rec.id, %site, %peer, %not_after, "connector certificate renewed");
            json(
                StatusCode::OK,
                &RenewResponse {
                    connector_id: rec.id,
                    site,
                    cert_pem,
                    not_after,
                },
            )
        }
        Err(e) => {
            warn!(connector_id = %rec.id, %peer, reason = %e, "connector renewal refused");
            let mut ev = gw.event(EventType::ConnectorRefused);
            ev.connector = Some(cref);
            ev.site = Some(site);
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!("certificate renewal refused: {e}"));
            gw.audit.record_nowait(ev);
            let (status, code) = match e {
                RenewError::Revoked(_) | RenewError::Unknown(_) | RenewError::Superseded => {
                    (StatusCode::FORBIDDEN, "renewal_refused")
                }
                RenewError::BadCsr(_) => (StatusCode::BAD_REQUEST, "bad_csr"),
                RenewError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            error(status, code, &e.to_string())
        }
    }
}
