//! Connector certificate renewal.
//!
//! A connector renews over a short extra connection to the connector listener with ALPN
//! `postern-renew/1`. The TLS handshake has already checked its client certificate exactly as
//! for a link (chains to the connector CA and is unexpired), and `connectors` has checked that
//! its serial is on record (current or previous) and the connector is not revoked. Here it sends
//! one `POST /v1/renew` with a CSR; only the *current* certificate may renew (a superseded one
//! is refused and audited as `connector.renewal_refused`, an alert: a copy of an old key is in
//! use); the gateway signs it for the *same* connector id and site,
//! records the new serial (the presented one becomes `previous_serial`, so live links stay up),
//! audits `connector.renewed` and answers with the certificate. The store update re-checks the
//! record under its lock, so a revocation that races the renewal wins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_audit::{ConnectorRef, EventType};
use postern_proto::wire::{self, RenewRequest, RenewResponse};
use tracing::{info, warn};

use crate::audit::Audit;
use crate::clock::{from_unix, unix_secs, SharedClock};
use crate::http::{error, json, parse_json, read_body, Resp};
use crate::pki::Ca;
use crate::state::{ConnectorRec, Issued, RenewIssuer, SharedStore};

/// What certificate renewal needs.
pub struct Renewals {
    pub store: SharedStore,
    pub ca: Arc<Ca>,
    pub audit: Arc<Audit>,
    pub clock: SharedClock,
    /// `[limits] connector_cert_validity`.
    pub validity: Duration,
}

/// Serves one renewal connection (HTTP/1.1, at most 30 s).
impl Renewals {
    pub async fn serve<S>(
        self: Arc<Self>,
        tls: S,
        peer: SocketAddr,
        rec: ConnectorRec,
        serial: String,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req: Request<Incoming>| {
            let (svc, rec, serial) = (self.clone(), rec.clone(), serial.clone());
            async move { Ok::<_, Infallible>(handle(&svc, req, peer, rec, serial).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5))
            .keep_alive(false)
            .serve_connection(TokioIo::new(tls), service);
        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
    }
}

// Over 100 lines on purpose: the renewal request from body to answer — read, parse, sign
// inside the store's atomic renewal, audit — with each refusal's status and audit event.
async fn handle(
    svc: &Renewals,
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
    let body = read_body(req.into_body(), wire::MAX_JSON_BODY).await;
    let request: RenewRequest = match parse_json(body, "renewal request") {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let validity = svc.validity;
    let ca = svc.ca.clone();
    let now = svc.clock.now();
    let csr_pem = request.csr_pem;
    let issue: RenewIssuer = Box::new(move |c: &ConnectorRec| {
        let (cert_pem, serial, not_after) = ca
            .sign_connector(&csr_pem, &c.id, &c.site, validity, now)
            .map_err(|e| e.to_string())?;
        Ok(Issued {
            cert_pem,
            serial,
            not_after: unix_secs(not_after),
        })
    });
    // The store re-checks the record atomically, so a revocation that races the renewal wins.
    let result = svc
        .store
        .renew_connector(rec.id.clone(), serial.clone(), svc.clock.unix(), issue)
        .await;
    let site = rec.site.clone();
    let cref = ConnectorRef {
        id: rec.id.clone(),
        site: rec.site.clone(),
    };
    match result {
        Ok((_, issued)) => {
            let (cert_pem, new_serial) = (issued.cert_pem, issued.serial);
            let not_after =
                humantime::format_rfc3339_seconds(from_unix(issued.not_after)).to_string();
            let mut ev = svc.audit.event(EventType::ConnectorRenewed);
            ev.connector = Some(cref);
            ev.site = Some(site.clone());
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!(
                "certificate serial {serial} renewed as {new_serial}, valid until {not_after}"
            ));
            if let Err(e) = svc.audit.record(ev).await {
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
        Err(crate::state::StoreError::Refused(crate::state::Refusal::Superseded)) => {
            superseded(svc, peer, &rec, cref, &serial).await
        }
        Err(e) => {
            warn!(connector_id = %rec.id, %peer, reason = %e, "connector renewal refused");
            let mut ev = svc.audit.event(EventType::ConnectorRefused);
            ev.connector = Some(cref);
            ev.site = Some(site);
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!("certificate renewal refused: {e}"));
            svc.audit.record_nowait(ev);
            use crate::state::{Refusal, StoreError};
            let (status, code) = match &e {
                StoreError::Refused(
                    Refusal::ConnectorRevoked(_) | Refusal::UnknownConnector(_),
                ) => (StatusCode::FORBIDDEN, "renewal_refused"),
                StoreError::Refused(_) => (StatusCode::BAD_REQUEST, "bad_csr"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            error(status, code, &e.to_string())
        }
    }
}

/// A renewal with a certificate that an earlier renewal replaced: whoever presents it holds a
/// copy of an old key (or restored an old backup). Refused (403 `superseded_certificate`) and
/// audited durably as `connector.renewal_refused`, an alert; the current certificate is not
/// touched. The answer does not name the current serial.
async fn superseded(
    svc: &Renewals,
    peer: SocketAddr,
    rec: &ConnectorRec,
    cref: ConnectorRef,
    serial: &str,
) -> Resp {
    tracing::error!(connector_id = %rec.id, site = %rec.site, %peer, %serial, "renewal with a superseded connector certificate refused: a copy of an old key is in use");
    let mut ev = svc.audit.event(EventType::ConnectorRenewalRefused);
    ev.connector = Some(cref);
    ev.site = Some(rec.site.clone());
    ev.source = Some(peer.to_string());
    ev.detail = Some(format!(
        "superseded_certificate: certificate serial {serial} was already replaced by a renewal; a renewal with it was refused (a copy of the connector's old key or state is in use, e.g. a stolen key or a restored backup)"
    ));
    if let Err(e) = svc.audit.record(ev).await {
        warn!(error = %e, "could not audit connector.renewal_refused");
    }
    error(
        StatusCode::FORBIDDEN,
        "superseded_certificate",
        &format!(
            "certificate serial {serial} was replaced by a renewal; only the connector's current certificate can renew"
        ),
    )
}
