//! Automatic renewal of the connector's client certificate.
//!
//! At two thirds of the certificate's lifetime (at once if that is already past), the connector
//! makes a fresh key and CSR and opens a short extra connection to a gateway connector listener,
//! authenticated by its *current* client certificate, with ALPN
//! [`ALPN_RENEW`](postern_proto::wire::ALPN_RENEW); there it sends one HTTP/1.1
//! `POST /v1/renew`. The gateway checks that certificate exactly as for a link (chains to the
//! connector CA, unexpired, serial on record, connector not revoked), signs the CSR for the same
//! connector id and site, records the new serial and audits `connector.renewed`.
//!
//! The new key and certificate are installed by [`install_renewed`] (crash-safe: see
//! [`crate::identity`]) and swapped into the [`ClientTls`] the links dial with. New links use
//! the new certificate; live links keep going (the gateway accepts the previous serial too).
//! A failed attempt is retried after a sixth of the remaining lifetime (1 s to 10 min).
//!
//! The renewal task gets what it needs in a `Renewal` and stops when its cancellation token
//! fires; it knows nothing of the links.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use postern_net::addr::HostPort;
use postern_proto::wire::{self, ErrorBody, RenewRequest, RenewResponse};
use rustls_pki_types::ServerName;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::enroll::{load_enrollment, CERT_FILE};
use crate::identity::{install_renewed, load_identity, load_identity_alpn, ClientTls};
use crate::metrics::Metrics;

/// What the renewal task works with.
pub(crate) struct Renewal {
    pub(crate) state_dir: PathBuf,
    /// Gateway connector listeners (`host:port`), tried in order.
    pub(crate) gateways: Vec<String>,
    /// The common name of every CSR: the gateway signs for the same connector only.
    pub(crate) connector_id: String,
    /// Replaced with the renewed identity, for the links' next dials.
    pub(crate) tls: Arc<ClientTls>,
    pub(crate) metrics: Arc<Metrics>,
}

fn cert_times(state_dir: &Path) -> Result<(SystemTime, SystemTime), String> {
    let pem = std::fs::read_to_string(state_dir.join(CERT_FILE))
        .map_err(|e| format!("reading {}: {e}", state_dir.join(CERT_FILE).display()))?;
    let chain = postern_net::tls::certs_from_pem(&pem, CERT_FILE).map_err(|e| e.to_string())?;
    let info = postern_proto::certs::cert_info(&chain[0])?;
    Ok((info.not_before, info.not_after))
}

/// When to renew a certificate received at `start` that expires at `not_after`: two thirds in.
pub fn renew_at(start: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(start).unwrap_or(Duration::ZERO);
    start + life.mul_f64(2.0 / 3.0)
}

/// Renews whenever due, until the connector stops.
pub(crate) async fn keep_renewed(renewal: Renewal, stop: CancellationToken) {
    let Renewal {
        state_dir,
        gateways,
        connector_id,
        tls,
        metrics,
    } = &renewal;
    loop {
        let (not_before, not_after) = match cert_times(state_dir) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cannot read the client certificate; renewal retries in 60 s");
                if sleep_or_stop(&stop, Duration::from_secs(60)).await {
                    return;
                }
                continue;
            }
        };
        let expiry = not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        metrics
            .cert_expiry
            .set(i64::try_from(expiry).unwrap_or(i64::MAX));
        let start = load_enrollment(state_dir)
            .ok()
            .and_then(|e| e.issued_at)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .filter(|s| *s < not_after)
            .unwrap_or(not_before);
        let due = renew_at(start, not_after);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            info!(renew_at = %postern_proto::certs::rfc3339(due), not_after = %postern_proto::certs::rfc3339(not_after), "client certificate renewal scheduled");
            if sleep_or_stop(&stop, wait).await {
                return;
            }
        }
        match renew_once(connector_id, state_dir, gateways, tls).await {
            Ok(not_after) => {
                metrics.renewals.with_label_values(&["ok"]).inc();
                info!(%connector_id, %not_after, "client certificate renewed");
            }
            Err(e) => {
                metrics.renewals.with_label_values(&["failed"]).inc();
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let retry = if left.is_zero() {
                    // An expired certificate cannot authenticate a renewal; only a new
                    // enrolment helps. Keep trying, rarely, in case the clock was wrong.
                    tracing::error!(expired = %postern_proto::certs::rfc3339(not_after), "the client certificate has expired and cannot be renewed: enrol this connector again (postern-connector enroll --force)");
                    Duration::from_secs(600)
                } else {
                    (left / 6).clamp(Duration::from_secs(1), Duration::from_secs(600))
                };
                warn!(error = %e, ?retry, expires = %postern_proto::certs::rfc3339(not_after), "client certificate renewal failed");
                if sleep_or_stop(&stop, retry).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps; true if the connector is stopping.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

/// One renewal: new key, CSR to the first gateway that answers, files installed, TLS swapped.
async fn renew_once(
    connector_id: &str,
    state_dir: &Path,
    gateways: &[String],
    tls: &ClientTls,
) -> Result<String, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, connector_id);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("making the certificate request: {e}"))?;
    let (_, renew_tls) =
        load_identity_alpn(state_dir, &[wire::ALPN_RENEW]).map_err(|e| e.to_string())?;
    let mut last = String::from("no gateway address");
    for gw in gateways {
        match request(renew_tls.clone(), gw, &csr_pem).await {
            Ok(r) => {
                let key_pem = key.serialize_pem();
                install_renewed(state_dir, &key_pem, &r)?;
                let (_, renewed) = load_identity(state_dir).map_err(|e| e.to_string())?;
                tls.replace(renewed);
                return Ok(r.not_after);
            }
            Err(e) => last = format!("{gw}: {e}"),
        }
    }
    Err(last)
}

async fn request(
    tls: Arc<rustls::ClientConfig>,
    gateway: &str,
    csr_pem: &str,
) -> Result<RenewResponse, String> {
    let addr = HostPort::parse(gateway).map_err(|e| e.to_string())?;
    let (host, port) = (addr.host.as_str(), addr.port);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("server name: {e}"))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let body = serde_json::to_vec(&RenewRequest {
            csr_pem: csr_pem.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        let req = http::Request::post(wire::PATH_RENEW)
            .header(http::header::HOST, gateway)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e} (a revoked or unknown connector is disconnected)"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), wire::MAX_JSON_BODY)
            .collect()
            .await
            .map_err(|e| format!("HTTP body: {e}"))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).ok();
            if body
                .as_ref()
                .is_some_and(|b| b.error == "superseded_certificate")
            {
                let msg = body.map(|b| b.message).unwrap_or_default();
                return Err(format!(
                    "the gateway refused the renewal: {msg}. This certificate is superseded: the connector renewed it already (this state directory is an old copy, e.g. restored from a backup, or a renewal was lost in a crash), or someone else holds a copy of its key. It cannot renew again: enrol this connector again (postern-connector enroll --force) and tell the security team"
                ));
            }
            let msg = body
                .map(|b| b.message)
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(format!("the gateway refused the renewal: {msg}"));
        }
        serde_json::from_slice::<RenewResponse>(&bytes)
            .map_err(|e| format!("unexpected renewal response: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .map_err(|_| "renewal timed out".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(30)),
            t0 + Duration::from_secs(20)
        );
        assert_eq!(renew_at(t0, t0 - Duration::from_secs(1)), t0);
    }
}
