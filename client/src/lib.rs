//! The clinician's CLI, `postern`.
//!
//! One TLS 1.3 + HTTP/2 connection to the gateway carries everything: JSON calls (endpoint
//! listing, the preflight decision) and one `CONNECT endpoint:0` stream per local TCP
//! connection, so a PACS viewer that opens many associations costs one handshake.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod login;
pub mod posture;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use postern_proto::wire::{self, EndpointInfo, EndpointList, ErrorBody};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway URL '{0}' is not like https://gateway.example:8443")]
    Url(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the gateway at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("your session has expired: run `postern login` (or get a new token) and try again")]
    Expired,
    #[error("the gateway did not accept your session token: {0}")]
    Unauthorized(String),
    #[error("access to {endpoint} denied: {reason}")]
    Denied { endpoint: String, reason: String },
    #[error("the gateway could not open the tunnel: {0}")]
    Unavailable(String),
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
}

/// Where the gateway is and how to trust and authenticate to it.
pub struct GatewayConn {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
    token: String,
    justification: Option<String>,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// Splits `https://host[:port][/]`.
pub fn parse_url(url: &str) -> Result<(String, u16), ClientError> {
    postern_net::addr::parse_https_url(url)
        .map(|a| (a.host, a.port))
        .map_err(|_| ClientError::Url(url.to_owned()))
}

impl GatewayConn {
    /// `ca_file`: the gateway CA certificate (from `postern-gateway ca export`); None trusts
    /// the public web PKI (a gateway with a certificate from a public CA).
    pub fn new(url: &str, ca_file: Option<&Path>, token: &str) -> Result<GatewayConn, ClientError> {
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(ClientError::Setup("the session token is empty".into()));
        }
        Self::build(url, ca_file, token)
    }

    /// A connection without a session token (for signing in).
    pub fn anonymous(url: &str, ca_file: Option<&Path>) -> Result<GatewayConn, ClientError> {
        Self::build(url, ca_file, String::new())
    }

    fn build(url: &str, ca_file: Option<&Path>, token: String) -> Result<GatewayConn, ClientError> {
        let (host, port) = parse_url(url)?;
        let tls = match ca_file {
            Some(ca_file) => {
                let pem = std::fs::read_to_string(ca_file).map_err(|e| {
                    ClientError::Setup(format!(
                        "cannot read the gateway CA file {}: {e}",
                        ca_file.display()
                    ))
                })?;
                let roots = postern_net::tls::certs_from_pem(&pem, &ca_file.display().to_string())
                    .map_err(|e| ClientError::Setup(e.to_string()))?;
                postern_net::tls::client_config(roots, None, &[wire::ALPN_H2])
            }
            None => postern_net::tls::public_client_config(&[wire::ALPN_H2]),
        }
        .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(GatewayConn {
            host,
            port,
            tls: Arc::new(tls),
            token,
            justification: None,
            sender: Mutex::new(None),
        })
    }

    /// A reason for break-glass access, sent with every request and audited by the gateway.
    pub fn with_justification(mut self, reason: &str) -> Result<GatewayConn, ClientError> {
        let reason = reason.trim();
        if reason.is_empty()
            || reason.len() > wire::MAX_JUSTIFICATION
            || !reason.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(ClientError::Setup(format!(
                "--reason must be 1 to {} printable ASCII characters",
                wire::MAX_JUSTIFICATION
            )));
        }
        self.justification = Some(reason.to_owned());
        Ok(self)
    }

    fn authority(&self) -> String {
        postern_net::addr::format_host_port(&self.host, self.port)
    }

    /// The shared HTTP/2 connection, dialled on first use and again after it drops.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let mut guard = self.sender.lock().await;
        if let Some(s) = guard.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let addr = self.authority();
        let connect_err = |message: String| ClientError::Connect {
            addr: addr.clone(),
            message,
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| connect_err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        let (sender, conn) = postern_net::h2::client(postern_net::h2::CLIENT)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect_err(format!("HTTP/2: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }

    fn request(&self, method: Method, uri: &str) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder().method(method).uri(uri);
        if !self.token.is_empty() {
            builder = builder.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        }
        if let Some(j) = &self.justification {
            builder = builder.header(wire::HDR_JUSTIFICATION, j.as_str());
        }
        builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST path` with a JSON body; decodes a JSON answer.
    pub async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let uri = format!("https://{}{}", self.authority(), path);
        let mut req = self.request(Method::POST, &uri)?;
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        *req.body_mut() = Full::new(Bytes::from(bytes));
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.send_json(req, path).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        endpoint: &str,
    ) -> Result<T, ClientError> {
        let uri = format!("https://{}{}", self.authority(), path);
        let req = self.request(Method::GET, &uri)?;
        self.send_json(req, endpoint).await
    }

    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Full<Bytes>>,
        endpoint: &str,
    ) -> Result<T, ClientError> {
        let resp = self
            .sender()
            .await?
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 4 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
            error: "unknown".into(),
            message: format!("HTTP {status}"),
        });
        Err(refusal(status, &err.error, err.message, endpoint))
    }

    /// `GET /v1/whoami`.
    pub async fn whoami(&self) -> Result<login::Session, ClientError> {
        self.get_json("/v1/whoami", "your session").await
    }

    /// `GET /v1/endpoints`.
    pub async fn endpoints(&self) -> Result<EndpointList, ClientError> {
        self.get_json(wire::PATH_ENDPOINTS, "endpoints").await
    }

    /// The gateway's current decision for `endpoint` (audited if denied).
    pub async fn check(&self, endpoint: &str) -> Result<EndpointInfo, ClientError> {
        self.get_json(&format!("{}/{endpoint}", wire::PATH_ENDPOINTS), endpoint)
            .await
    }

    /// Opens one tunnel stream to `endpoint`.
    pub async fn open(&self, endpoint: &str) -> Result<Upgraded, ClientError> {
        let req = self.request(Method::CONNECT, &wire::connect_authority(endpoint))?;
        let resp = self
            .sender()
            .await?
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let reason = resp
                .headers()
                .get(wire::HDR_REASON)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no reason given")
                .to_owned();
            let code = if status == StatusCode::UNAUTHORIZED && reason.contains("expired") {
                "token_expired"
            } else {
                ""
            };
            return Err(refusal(status, code, reason, endpoint));
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

fn refusal(status: StatusCode, code: &str, message: String, endpoint: &str) -> ClientError {
    match status {
        StatusCode::UNAUTHORIZED if code == "token_expired" => ClientError::Expired,
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized(message),
        StatusCode::FORBIDDEN => ClientError::Denied {
            endpoint: endpoint.to_owned(),
            reason: message,
        },
        _ => ClientError::Unavailable(message),
    }
}

/// Human form of a duration in whole seconds: "4h", "90m", "45s".
pub fn short_duration(secs: u64) -> String {
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// `postern connect`: checks access, listens on `listen`, and turns each accepted TCP
/// connection into one tunnel stream. `ready` receives the bound address and the endpoint.
pub async fn connect(
    gw: Arc<GatewayConn>,
    endpoint: &str,
    listen: SocketAddr,
    ready: impl FnOnce(SocketAddr, &EndpointInfo),
) -> Result<(), ClientError> {
    let info = gw.check(endpoint).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ClientError::Setup(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    ready(local, &info);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let gw = gw.clone();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            match gw.open(&endpoint).await {
                Ok(up) => {
                    let counters = Arc::new(postern_net::relay::Counters::default());
                    postern_net::relay::relay(tcp, TokioIo::new(up), counters).await;
                }
                Err(e) => eprintln!("postern: connection from {peer} to {endpoint} refused: {e}"),
            }
        });
    }
}

/// Whether `postern connect` may listen on `listen`: a loopback address always (answers
/// `Ok(None)`); any other address only with `--allow-remote` (answers `Ok(Some(warning))`, to be
/// printed), because then anyone who can reach this computer can use the clinician's tunnel
/// under their sign-in. Without the flag, `Err` says why and how to override.
pub fn check_listen(listen: SocketAddr, allow_remote: bool) -> Result<Option<String>, String> {
    if listen.ip().is_loopback() {
        return Ok(None);
    }
    let whom = if listen.ip().is_unspecified() {
        "anyone who can reach this computer over any network"
    } else {
        "anyone who can reach that address"
    };
    if allow_remote {
        Ok(Some(format!(
            "WARNING: listening on {listen}, which is not a loopback address: {whom} can use this tunnel with your sign-in, and the gateway's audit log will name you"
        )))
    } else {
        Err(format!(
            "--listen {listen} is not a loopback address: {whom} could use this tunnel with your sign-in. Use 127.0.0.1:PORT, or add --allow-remote if you really mean to share it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_allow_remote() {
        for ok in ["127.0.0.1:0", "127.8.9.1:104", "[::1]:11112"] {
            assert_eq!(check_listen(ok.parse().unwrap(), false), Ok(None), "{ok}");
        }
        for bad in ["0.0.0.0:0", "[::]:0", "192.0.2.1:11112", "[2001:db8::1]:1"] {
            let e = check_listen(bad.parse().unwrap(), false).unwrap_err();
            assert!(
                e.contains("not a loopback address") && e.contains("--allow-remote"),
                "{bad}: {e}"
            );
            let w = check_listen(bad.parse().unwrap(), true).unwrap().unwrap();
            assert!(
                w.starts_with("WARNING") && w.contains("anyone who can reach"),
                "{w}"
            );
        }
    }

    #[test]
    fn urls_and_durations() {
        assert_eq!(parse_url("https://gw:8443/").unwrap(), ("gw".into(), 8443));
        assert_eq!(parse_url("https://[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(parse_url("gw:8443").is_err());
        assert_eq!(short_duration(4 * 3600), "4h");
        assert_eq!(short_duration(90 * 60), "90m");
        assert_eq!(short_duration(61), "61s");
    }
}
