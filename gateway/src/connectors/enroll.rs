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
    /// Where connectors should dial this gateway.
    pub connector_addrs: Vec<String>,
    /// The live replicas' connector addresses (`replica::follow_set`): told at enrolment
    /// too, after this gateway's own, so a connector without `gateways` configured starts
    /// from every replica, not only the one it enrolled through.
    pub replica_set: Arc<tokio::sync::watch::Sender<Vec<String>>>,
}

impl Enrolment {
    /// This gateway's addresses, then the other live replicas'.
    fn dial_addrs(&self) -> Vec<String> {
        let mut addrs = self.connector_addrs.clone();
        for a in self.replica_set.borrow().iter() {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        addrs
    }
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
    // Checked before the token is looked at, so a bad host name does not burn it. The name is
    // stored and printed by `connector list`; only a DNS name gets that far.
    if let Some(Err(why)) = request.hostname.as_deref().map(check_hostname) {
        warn!(%peer, reason = %why, "connector enrolment refused: bad hostname");
        let mut ev = svc.audit.event(EventType::EnrollmentFailed);
        ev.source = Some(peer.to_string());
        ev.detail = Some(format!("bad hostname: {why}"));
        svc.audit.record_nowait(ev);
        return error(StatusCode::BAD_REQUEST, "bad_hostname", &why);
    }
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
                    connector_addrs: svc.dial_addrs(),
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
                StoreError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            error(status, code, &e.to_string())
        }
    }
}

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOSTNAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Whether `name` is a DNS host name: dot-separated labels of ASCII letters, digits and `-`
/// (not first or last in a label; `_` is allowed too, as Windows machine names use it), each
/// 1 to 63 characters, 253 in all; one trailing dot is allowed. The error quotes the name with
/// every control character escaped, so it is safe to print.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let quoted = format!("{:?}", name.chars().take(80).collect::<String>());
    let bad = |why: String| Err(format!("the enrolment's hostname {quoted} {why}"));
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return bad("is empty".into());
    }
    if trimmed.len() > MAX_HOSTNAME {
        return bad(format!(
            "is {} characters long; a DNS name has at most {MAX_HOSTNAME}",
            trimmed.len()
        ));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return bad("has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL {
            return bad(format!(
                "has a label of {} characters; a DNS label has at most {MAX_LABEL}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return bad(format!(
                "contains {c:?}; a host name has only letters, digits, '-', '_' and dots"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!(
                "has a label {label:?} that starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_dns_names() {
        for good in [
            "pacs-gw01",
            "conn.truro.nhs.uk",
            "conn.truro.nhs.uk.",
            "RAD_PC_01",
            &"a".repeat(63),
            &[
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(63),
                "e".repeat(61),
            ]
            .join("."),
        ] {
            assert_eq!(check_hostname(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("host\x1b[2J", "contains '\\u{1b}'"),
            ("a b", "contains ' '"),
            ("", "is empty"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("-a", "starts or ends with '-'"),
            ("a\u{202e}b", "contains '\\u{202e}'"),
            ("h\u{e9}te", "contains '\u{e9}'"),
        ] {
            let err = check_hostname(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.chars().any(char::is_control), "{err:?}");
        }
        let long_label = "a".repeat(64);
        assert!(check_hostname(&long_label)
            .unwrap_err()
            .contains("a label of 64 characters"));
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        assert!(check_hostname(&long)
            .unwrap_err()
            .contains("255 characters"));
    }
}
