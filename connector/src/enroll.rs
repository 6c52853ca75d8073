//! `postern-connector enroll`: make a key pair, send a CSR with the one-time token, store the
//! issued certificate.
//!
//! The gateway is authenticated on this first contact by the pin inside the token (the SHA-256
//! of its CA certificate); the connector then trusts only that CA for every later connection.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use postern_proto::enroll::EnrollToken;
use postern_proto::wire::{self, EnrollRequest, EnrollResponse, ErrorBody};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};

/// What the connector remembers about its enrolment (`STATE_DIR/enrollment.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub connector_id: String,
    pub site: String,
    pub gateway_url: String,
    pub connector_addrs: Vec<String>,
    pub not_after: String,
    /// When the current certificate was received (seconds since the epoch): renewal starts at
    /// two thirds of the span from here to `not_after`. Absent in enrolments made before
    /// renewal existed (the certificate's notBefore is used then).
    #[serde(default)]
    pub issued_at: Option<u64>,
}

pub const KEY_FILE: &str = "connector.key";
pub const CERT_FILE: &str = "connector.pem";
pub const CA_FILE: &str = "gateway-ca.pem";
pub const ENROLLMENT_FILE: &str = "enrollment.json";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] postern_proto::enroll::TokenFormatError),
    #[error("gateway URL '{0}' is not like https://gateway.example:8443")]
    Url(String),
    #[error("{0} is already enrolled as {1}; use --force to enrol again")]
    AlreadyEnrolled(PathBuf, String),
    #[error("cannot reach the gateway at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the gateway failed: {0} (is the token for this gateway?)")]
    Tls(std::io::Error),
    #[error("talking to the gateway: {0}")]
    Http(String),
    #[error("the gateway refused the enrolment: {0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Splits `https://host:port[/]` into (host, port).
pub fn parse_url(url: &str) -> Result<(String, u16), EnrollError> {
    postern_net::addr::parse_https_url(url)
        .map(|a| (a.host, a.port))
        .map_err(|_| EnrollError::Url(url.to_owned()))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnrollError {
    let what = what.into();
    move |source| EnrollError::Io { what, source }
}

pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), EnrollError> {
    postern_net::fsutil::write_atomic(path, data, mode)
        .map_err(io(format!("writing {}", path.display())))
}

/// Enrols with the gateway and stores key, certificate, gateway CA and enrolment facts.
pub async fn enroll(
    gateway_url: &str,
    token: &str,
    state_dir: &Path,
    force: bool,
) -> Result<Enrollment, EnrollError> {
    let token = EnrollToken::parse(token)?;
    let (host, port) = parse_url(gateway_url)?;
    if let Ok(existing) = load_enrollment(state_dir) {
        if !force {
            return Err(EnrollError::AlreadyEnrolled(
                state_dir.to_owned(),
                existing.connector_id,
            ));
        }
    }
    postern_net::fsutil::private_dir(state_dir)
        .map_err(io(format!("creating {}", state_dir.display())))?;

    let key = rcgen::KeyPair::generate().map_err(|e| EnrollError::Other(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "postern-connector");
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| EnrollError::Other(format!("making the certificate request: {e}")))?;

    let r = request_certificate(gateway_url, &host, port, &token, csr_pem).await?;
    let ca = postern_net::tls::certs_from_pem(&r.gateway_ca_pem, "gateway CA")
        .map_err(|e| EnrollError::Other(e.to_string()))?;
    if ca.first().map(postern_net::tls::cert_pin).as_deref() != Some(token.pin.as_str()) {
        return Err(EnrollError::Other(
            "the gateway sent a CA certificate that does not match the token's pin".into(),
        ));
    }
    write_file(
        &state_dir.join(KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&state_dir.join(CERT_FILE), r.cert_pem.as_bytes(), 0o600)?;
    write_file(&state_dir.join(CA_FILE), r.gateway_ca_pem.as_bytes(), 0o644)?;
    let enrollment = Enrollment {
        connector_id: r.connector_id,
        site: r.site,
        gateway_url: gateway_url.to_owned(),
        connector_addrs: r.connector_addrs,
        not_after: r.not_after,
        issued_at: Some(unix_now()),
    };
    let json =
        serde_json::to_vec_pretty(&enrollment).map_err(|e| EnrollError::Other(e.to_string()))?;
    write_file(&state_dir.join(ENROLLMENT_FILE), &json, 0o600)?;
    Ok(enrollment)
}

/// Sends the CSR with the token to the gateway at `host:port`, which is authenticated by the
/// token's pin, and returns its answer.
async fn request_certificate(
    gateway_url: &str,
    host: &str,
    port: u16,
    token: &EnrollToken,
    csr_pem: String,
) -> Result<EnrollResponse, EnrollError> {
    // The marker ALPN asks a gateway with a public certificate from files for the certificate
    // of its own CA, which is what the pin names.
    let tls_config = postern_net::tls::pinned_client_config(
        &token.pin,
        &[wire::ALPN_HTTP1, wire::ALPN_ENROLL_MARKER],
    )
    .map_err(|e| EnrollError::Other(e.to_string()))?;
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| EnrollError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|_| EnrollError::Url(gateway_url.into()))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config))
        .connect(server_name, tcp)
        .await
        .map_err(EnrollError::Tls)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.secret.clone(),
        csr_pem,
        hostname: hostname(),
    })
    .map_err(|e| EnrollError::Other(e.to_string()))?;
    let req = http::Request::post(wire::PATH_ENROLL)
        .header(http::header::HOST, addr.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), wire::MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(EnrollError::Refused(msg));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| EnrollError::Http(format!("unexpected enrolment response: {e}")))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub fn load_enrollment(state_dir: &Path) -> Result<Enrollment, EnrollError> {
    let path = state_dir.join(ENROLLMENT_FILE);
    let bytes = std::fs::read(&path).map_err(io(format!(
        "reading {} (has this connector been enrolled? run `postern-connector enroll`)",
        path.display()
    )))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EnrollError::Other(format!("{} is corrupt: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://gw.example:8443").unwrap(),
            ("gw.example".into(), 8443)
        );
        assert_eq!(
            parse_url("https://gw.example/").unwrap(),
            ("gw.example".into(), 443)
        );
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_url("http://gw").is_err());
        assert!(parse_url("https://gw:x").is_err());
        assert!(parse_url("https://gw/path").is_err());
    }
}
