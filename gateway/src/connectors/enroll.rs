//! Connector enrolment: `POST /v1/enroll` on the client listener. A one-time token (only its
//! hash is stored) and a CSR become a connector certificate; the store burns the token and
//! records the connector in one atomic step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use postern_audit::EventType;
use postern_proto::ids::{random_id, sha256_hex};
use postern_proto::wire::{self, EnrollRequest, EnrollResponse};
use tracing::{info, warn};

use crate::audit::Audit;
use crate::clock::{from_unix, unix_secs, SharedClock};
use crate::http::{error, json, parse_json, read_body, too_many, Resp};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pki::Ca;
use crate::state::{EnrollIssuer, Issued, Refusal, SharedStore, StoreError};

/// What enrolment needs.
pub struct Enrolment {
    pub store: SharedStore,
    pub ca: Arc<Ca>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub clock: SharedClock,
    /// `[limits] connector_cert_validity`.
    pub validity: Duration,
    /// The CA that issued the gateway's TLS certificate (the connector pins it).
    pub server_ca_pem: String,
    /// Where connectors should dial.
    pub connector_addrs: Vec<String>,
}

/// `POST /v1/enroll`.
pub async fn enroll(svc: Arc<Enrolment>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    // The (bounded) body is read before answering, even with 429: an HTTP/2 response sent
    // before the request body is consumed ends in a stream reset that clients may report as a
    // failure instead of showing the answer.
    let body = read_body(req.into_body(), wire::MAX_JSON_BODY).await;
    if let Err(secs) = svc.limits.enroll.check(&peer.ip()) {
        svc.metrics.note_ratelimited("enroll");
        return too_many("too many enrolment attempts from this address", secs);
    }
    let request: EnrollRequest = match parse_json(body, "enrolment request") {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let secret_hash = sha256_hex(request.token.as_bytes());
    let validity = svc.validity;
    let ca = svc.ca.clone();
    let now = svc.clock.now();
    let csr_pem = request.csr_pem;
    let issue: EnrollIssuer = Box::new(move |site: &str| {
        let suffix = random_id("x").map_err(|_| "random number generator failed".to_owned())?;
        let id = format!("{site}-{}", &suffix[2..10]);
        let (cert_pem, serial, not_after) = ca
            .sign_connector(&csr_pem, &id, site, validity, now)
            .map_err(|e| e.to_string())?;
        Ok((
            id,
            Issued {
                cert_pem,
                serial,
                not_after: unix_secs(not_after),
            },
        ))
    });
    let result = svc
        .store
        .enroll_connector(secret_hash, request.hostname, svc.clock.unix(), issue)
        .await;
    match result {
        Ok((rec, issued, token_id)) => {
            let (id, site) = (rec.id, rec.site);
            let cert_pem = issued.cert_pem;
            let not_after = from_unix(issued.not_after);
            let mut ev = svc.audit.event(EventType::ConnectorEnrolled);
            ev.connector = Some(postern_audit::ConnectorRef {
                id: id.clone(),
                site: site.clone(),
            });
            ev.site = Some(site.clone());
            ev.source = Some(peer.to_string());
            ev.detail = Some(format!("enrolment token {token_id}"));
            if let Err(e) = svc.audit.record(ev).await {
                warn!(error = %e, "could not audit connector.enrolled");
            }
            info!(connector_id = %id, %site, %peer, "connector enrolled");
            json(
                StatusCode::OK,
                &EnrollResponse {
                    connector_id: id,
                    site,
                    cert_pem,
                    gateway_ca_pem: svc.server_ca_pem.clone(),
                    connector_addrs: svc.connector_addrs.clone(),
                    not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
                },
            )
        }
        Err(e) => {
            warn!(%peer, reason = %e, "connector enrolment refused");
            let mut ev = svc.audit.event(EventType::EnrollmentFailed);
            ev.source = Some(peer.to_string());
            ev.detail = Some(e.to_string());
            svc.audit.record_nowait(ev);
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
