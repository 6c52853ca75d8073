//! A small HTTPS client for talking to the identity provider (discovery, JWKS, token endpoint),
//! used as the `openidconnect` crate's async HTTP client. It is built on the same hyper and
//! rustls (ring provider passed explicitly, TLS 1.3 only — Entra ID, Okta and Keycloak all
//! offer it) as the rest of the gateway, so there is no second HTTP stack. It never follows redirects (SSRF), bounds
//! response size and time, and speaks plain HTTP only to loopback addresses when the operator
//! allowed it (tests and the demo).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};

const MAX_RESPONSE: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<ClientConfig>,
    allow_loopback_http: bool,
}

impl HttpClient {
    /// `extra_roots`: a private CA for the IdP, in addition to the Mozilla roots.
    pub fn new(
        extra_roots: Vec<CertificateDer<'static>>,
        allow_loopback_http: bool,
    ) -> Result<HttpClient, HttpError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for r in extra_roots {
            roots
                .add(r)
                .map_err(|e| HttpError(format!("IdP CA certificate: {e}")))?;
        }
        let mut tls = ClientConfig::builder_with_provider(postern_net::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| HttpError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            tls: Arc::new(tls),
            allow_loopback_http,
        })
    }

    /// Performs one request (no redirects followed).
    pub async fn call(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        tokio::time::timeout(TIMEOUT, self.call_inner(request))
            .await
            .map_err(|_| HttpError(format!("no answer within {TIMEOUT:?}")))?
    }

    async fn call_inner(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        let uri = request.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| HttpError(format!("no host in {uri}")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => {
                let loopback = host
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(host == "localhost");
                if !(self.allow_loopback_http && loopback) {
                    return Err(HttpError(format!(
                        "refusing plain http to {uri}: the identity provider must use https"
                    )));
                }
                false
            }
            _ => return Err(HttpError(format!("unsupported URL {uri}"))),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| HttpError(format!("connecting to {host}:{port}: {e}")))?;
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let mut req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        *req.uri_mut() = path
            .parse()
            .map_err(|e| HttpError(format!("bad path {path}: {e}")))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host.clone());
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&authority).map_err(|e| HttpError(e.to_string()))?,
        );
        let resp = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| HttpError(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError(format!("TLS with {host}: {e}")))?;
            send(TokioIo::new(tls), req).await?
        } else {
            send(TokioIo::new(tcp), req).await?
        };
        Ok(resp)
    }
}

async fn send<T>(
    io: T,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Vec<u8>>, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| HttpError(format!("reading the response: {e}")))?
        .to_bytes()
        .to_vec();
    Ok(http::Response::from_parts(parts, body))
}
