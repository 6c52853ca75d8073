//! The clinician's CLI, `postern`.
//!
//! One TLS 1.3 + HTTP/2 connection to the gateway carries everything: JSON calls (endpoint
//! listing, the preflight decision) and one `CONNECT endpoint:0` stream per local TCP
//! connection, so a PACS viewer that opens many associations costs one handshake.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod autostart;
pub mod control;
pub mod login;
pub mod meter;
pub mod notify;
pub mod platform;
pub mod ports;
pub mod posture;
pub mod profile;
pub mod rdp;
mod resume;
mod watch;

pub use meter::TunnelStats;

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
    #[error("{}", refusal_sentence(endpoint, reason))]
    Denied { endpoint: String, reason: String },
    /// No endpoint of that name (a typing mistake, usually).
    #[error("There is no endpoint called '{endpoint}'.")]
    UnknownEndpoint { endpoint: String },
    /// A break-glass rule would allow it with a reason (`--reason`).
    #[error("Access to {endpoint} is break-glass only: run the command again with --reason \"why you need it\" if you need it now; your reason is recorded in the audit log and reviewed.")]
    ReasonRequired {
        endpoint: String,
        /// The policy's sentence (for logs; the message above says the same for people).
        reason: String,
    },
    #[error("the gateway could not open the tunnel: {0}")]
    Unavailable(String),
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
    #[error("{0}")]
    Gone(String),
    #[error("{}", untrusted(addr, detail, ca_file.as_deref()))]
    Untrusted {
        addr: String,
        detail: String,
        ca_file: Option<std::path::PathBuf>,
    },
    #[error("sign-in did not complete: {why}{}", reference.as_ref().map(|r| format!(" (reference {r}, for the service desk)")).unwrap_or_default())]
    SignInFailed {
        why: String,
        code: String,
        reference: Option<String>,
    },
}

/// What to do about a gateway certificate this computer does not trust.
fn untrusted(addr: &str, detail: &str, ca_file: Option<&Path>) -> String {
    match ca_file {
        None => format!(
            "the gateway at {addr} presented a certificate this computer does not trust ({detail}). If your IT team gave you the gateway's CA certificate, sign in with: postern login https://{addr} --ca-file PATH-TO-THAT-FILE"
        ),
        Some(f) => format!(
            "the gateway at {addr} presented a certificate that the CA in {} did not sign ({detail}): check that this is the CA file for this gateway, or ask your IT team for the right one",
            f.display()
        ),
    }
}

/// How tunnels reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC, falling back to HTTP/2 over TLS (TCP) when it cannot connect within
    /// [`QUIC_FALLBACK_AFTER`]; QUIC is tried again [`QUIC_RETRY_AFTER`] later.
    Auto,
    /// HTTP/2 over TLS only.
    Tcp,
    /// QUIC only.
    Quic,
}

/// How long a QUIC handshake may take before tunnels use TCP instead.
pub const QUIC_FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// A QUIC connection that hears nothing from the gateway for this long after a tunnel
/// request is given up (a restarted gateway, a dead path) and the request made again.
pub const QUIC_SILENT: Duration = Duration::from_millis(1500);
/// After QUIC failed, how long tunnels use TCP before QUIC is tried again.
pub const QUIC_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A connection to the gateway that hears nothing for this long (while it pings every half
/// second) is taken for dead: it is closed and its resumable tunnels carry on over a new one.
pub const STALL: Duration = Duration::from_secs(2);
/// While resuming: how long one attempt to connect to the gateway may take before the next
/// starts (a fresh handshake resends at once, where a long attempt would back off).
pub const RESUME_ATTEMPT: Duration = Duration::from_secs(1);
/// How long a first connection may take over TCP.
const TCP_CONNECT: Duration = Duration::from_secs(10);

/// A resumable tunnel's credentials, from the answer that opened it.
#[derive(Clone)]
pub struct ResumeInfo {
    pub endpoint: String,
    pub session_id: String,
    /// Never logged.
    secret: String,
}

/// A tunnel just opened, resumable if the gateway offered it.
pub struct Opened {
    pub stream: Tunnel,
    pub resume: Option<ResumeInfo>,
}

/// Why a resume attempt failed.
#[derive(Debug)]
pub enum ResumeError {
    /// The gateway answered: the tunnel cannot be resumed (it ended, the token is no longer
    /// accepted, ...). The sentence says why.
    Fatal(String),
    /// The gateway could not be reached (yet): try again.
    Retry(String),
}

/// A byte stream both ways.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// One tunnel to an endpoint, over whichever transport carried it.
pub type Tunnel = Box<dyn Stream>;

/// The QUIC side of a [`GatewayConn`].
#[derive(Default)]
struct QuicState {
    endpoint: Option<quinn::Endpoint>,
    conn: Option<quinn::Connection>,
    /// When QUIC last failed to connect (tunnels then use TCP until it is up again).
    failed_at: Option<std::time::Instant>,
    /// A background task is trying QUIC again.
    retrying: bool,
}

/// Where a QUIC connection goes.
struct QuicTarget {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
}

/// The client's UDP endpoint, made on first use.
fn quic_endpoint(q: &mut QuicState, t: &QuicTarget) -> Result<quinn::Endpoint, String> {
    if q.endpoint.is_none() {
        q.endpoint = Some(postern_net::quic::client_endpoint(t.tls.clone())?);
    }
    q.endpoint
        .clone()
        .ok_or_else(|| "no QUIC endpoint".to_owned())
}

/// A new QUIC connection, within `within`; watched for stalls.
async fn quic_dial(
    endpoint: &quinn::Endpoint,
    t: &QuicTarget,
    within: Duration,
) -> Result<quinn::Connection, String> {
    let attempt = async {
        let addr = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("resolving {}: {e}", t.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", t.host))?;
        let connecting = endpoint.connect(addr, &t.host).map_err(|e| e.to_string())?;
        connecting.await.map_err(|e| e.to_string())
    };
    let c = tokio::time::timeout(within, attempt)
        .await
        .map_err(|_| format!("no answer within {within:?} (UDP blocked?)"))??;
    tracing::debug!(host = %t.host, port = t.port, "QUIC connection up");
    watch::quic(c.clone());
    postern_net::quic::window::tune(c.clone());
    Ok(c)
}

/// Connects and keeps the connection in `q`.
async fn quic_connect(
    q: &mut QuicState,
    t: &QuicTarget,
    within: Duration,
) -> Result<quinn::Connection, String> {
    let endpoint = quic_endpoint(q, t)?;
    let c = quic_dial(&endpoint, t, within).await?;
    q.conn = Some(c.clone());
    q.failed_at = None;
    Ok(c)
}

/// Tries QUIC every [`QUIC_RETRY_AFTER`] until it connects (or the client is gone), without
/// holding up the tunnels meanwhile (they use TCP).
async fn retry_quic(state: std::sync::Weak<Mutex<QuicState>>, target: QuicTarget) {
    loop {
        tokio::time::sleep(QUIC_RETRY_AFTER).await;
        let Some(shared) = state.upgrade() else {
            return;
        };
        let endpoint = match quic_endpoint(&mut *shared.lock().await, &target) {
            Ok(e) => e,
            Err(_) => continue,
        };
        drop(shared);
        if let Ok(c) = quic_dial(&endpoint, &target, QUIC_FALLBACK_AFTER).await {
            let Some(shared) = state.upgrade() else {
                return;
            };
            let mut q = shared.lock().await;
            tracing::info!(host = %target.host, "QUIC is back; new tunnels use it");
            q.conn = Some(c);
            q.failed_at = None;
            q.retrying = false;
            return;
        }
    }
}

/// Where the gateway is and how to trust and authenticate to it.
pub struct GatewayConn {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
    quic_tls: Arc<ClientConfig>,
    transport: Transport,
    /// The session token (never logged); replaced in place when the sign-in is renewed.
    token: std::sync::RwLock<String>,
    justification: Option<String>,
    sender: Mutex<Option<watch::H2Conn>>,
    quic: Arc<Mutex<QuicState>>,
    /// Resumable tunnels' shared state: the reconnecting notice, closing.
    pub(crate) tunnels: resume::Tunnels,
    /// The gateway's notices already shown ([`wire::Notice::seq`]).
    notices_seen: std::sync::atomic::AtomicU64,
    /// When this connection was made (Unix seconds): older notices are not shown.
    created: u64,
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
        let roots = match ca_file {
            Some(ca_file) => {
                let pem = std::fs::read_to_string(ca_file).map_err(|e| {
                    ClientError::Setup(format!(
                        "cannot read the gateway CA file {}: {e}",
                        ca_file.display()
                    ))
                })?;
                let roots = postern_net::tls::certs_from_pem(&pem, &ca_file.display().to_string())
                    .map_err(|e| ClientError::Setup(e.to_string()))?;
                Some(roots)
            }
            None => None,
        };
        let config = |alpn: &[u8]| {
            match &roots {
                Some(roots) => postern_net::tls::client_config(roots.clone(), None, &[alpn]),
                None => postern_net::tls::public_client_config(&[alpn]),
            }
            .map_err(|e| ClientError::Setup(e.to_string()))
        };
        Ok(GatewayConn {
            host,
            port,
            tls: Arc::new(config(wire::ALPN_H2)?),
            quic_tls: Arc::new(config(wire::ALPN_QUIC)?),
            transport: Transport::Auto,
            token: std::sync::RwLock::new(token),
            justification: None,
            sender: Mutex::new(None),
            quic: Arc::new(Mutex::new(QuicState::default())),
            tunnels: resume::Tunnels::default(),
            notices_seen: std::sync::atomic::AtomicU64::new(0),
            created: unix_now(),
        })
    }

    /// Ends every resumable tunnel, telling the gateway (so it ends their sessions now rather
    /// than keep them for a client that will not come back), then closes the QUIC connection,
    /// if any; waits up to a second for each.
    pub async fn close(&self) {
        self.tunnels.close_all().await;
        let q = self.quic.lock().await;
        if let Some(c) = &q.conn {
            c.close(wire::QUIC_CLOSE_EXIT.into(), b"client closing");
        }
        if let Some(e) = &q.endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.wait_idle()).await;
        }
    }

    /// Connects once (TCP, TLS, HTTP/2), so that a gateway whose certificate is not trusted is
    /// reported before anything else, with what to do (`ca_file`: the CA file given, if any).
    pub async fn probe(&self, ca_file: Option<&Path>) -> Result<(), ClientError> {
        match self.sender().await {
            Ok(_) => Ok(()),
            Err(ClientError::Connect { addr, message })
                if message.starts_with("TLS:") && message.contains("certificate") =>
            {
                Err(ClientError::Untrusted {
                    addr,
                    detail: message.trim_start_matches("TLS:").trim().to_owned(),
                    ca_file: ca_file.map(Path::to_owned),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Which transport tunnels use (default [`Transport::Auto`]).
    pub fn with_transport(mut self, transport: Transport) -> GatewayConn {
        self.transport = transport;
        self
    }

    /// A reason for break-glass access, sent with every request and audited by the gateway:
    /// any printable text ("CT head – ED résus"), 1 to [`wire::MAX_JUSTIFICATION`] characters.
    pub fn with_justification(mut self, reason: &str) -> Result<GatewayConn, ClientError> {
        let reason = wire::check_justification(reason)
            .map_err(|e| ClientError::Setup(format!("--reason: {e}")))?;
        self.justification = Some(reason.to_owned());
        Ok(self)
    }

    /// The session token in use (never log it).
    pub fn token(&self) -> String {
        match self.token.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the session token: new tunnels and requests use `token` from now on.
    pub fn set_token(&self, token: &str) {
        let token = token.trim().to_owned();
        match self.token.write() {
            Ok(mut t) => *t = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    /// Moves the live sessions of `previous` (a token this client used) onto the token in use
    /// now (`POST /v1/sessions/renew`): the gateway asks the policy again for each and extends
    /// its end to the new token's.
    pub async fn renew_sessions(
        &self,
        previous: &str,
    ) -> Result<wire::SessionRenewResponse, ClientError> {
        let r = self
            .post_json(
                wire::PATH_SESSIONS_RENEW,
                &wire::SessionRenewRequest {
                    previous_token: previous.trim().to_owned(),
                },
            )
            .await;
        match r {
            // The gateway's sentence as it is (not a refusal of an endpoint).
            Err(ClientError::Denied { reason, .. }) => Err(ClientError::Setup(reason)),
            other => other,
        }
    }

    fn authority(&self) -> String {
        postern_net::addr::format_host_port(&self.host, self.port)
    }

    /// The shared HTTP/2 connection, dialled on first use and again after it drops.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        self.sender_within(TCP_CONNECT).await
    }

    /// [`sender`](Self::sender), dialling within `within` (TCP, TLS and HTTP/2 handshakes).
    async fn sender_within(
        &self,
        within: Duration,
    ) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let mut guard = self.sender.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.is_live()) {
            return Ok(c.sender.clone());
        }
        let addr = self.authority();
        let connect_err = |message: String| ClientError::Connect {
            addr: addr.clone(),
            message,
        };
        let dial = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            postern_net::h2::tune_socket(&tcp);
            // A second handle on the socket, for the stall watcher to shut it down.
            let (tcp, kill) = tcp
                .into_std()
                .and_then(|s| {
                    let kill = s.try_clone()?;
                    Ok((TcpStream::from_std(s)?, kill))
                })
                .map_err(|e| connect_err(e.to_string()))?;
            let heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tcp = meter::Metered::new(tcp, heard.clone());
            let name =
                ServerName::try_from(self.host.clone()).map_err(|e| connect_err(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| connect_err(format!("TLS: {e}")))?;
            let (sender, conn) = postern_net::h2::client(postern_net::h2::CLI)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| connect_err(format!("HTTP/2: {e}")))?;
            Ok::<_, ClientError>(watch::H2Conn::spawn(sender, conn, heard, kill))
        };
        let c = tokio::time::timeout(within, dial)
            .await
            .map_err(|_| connect_err(format!("no answer within {within:?}")))??;
        let sender = c.sender.clone();
        *guard = Some(c);
        Ok(sender)
    }

    fn request(&self, method: Method, uri: &str) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder().method(method).uri(uri);
        let token = self.token();
        if !token.is_empty() {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(j) = &self.justification {
            builder = builder.header(wire::HDR_JUSTIFICATION, wire::encode_justification(j));
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

    /// Asks the gateway for notices about this user's sessions (a PACS association the
    /// connector refused, with the policy's reason) and shows the new ones (standard error,
    /// `postern status`).
    pub async fn show_notices(&self) {
        use std::sync::atomic::Ordering;
        let after = self.notices_seen.load(Ordering::Relaxed);
        let path = format!("{}?after={after}", wire::PATH_NOTICES);
        let list: wire::NoticeList = match self.get_json(&path, "notices").await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "no notices from the gateway");
                return;
            }
        };
        for n in list.notices {
            let shown = self.notices_seen.fetch_max(n.seq, Ordering::Relaxed) >= n.seq;
            if shown || n.at + 5 < self.created {
                continue;
            }
            let text: String = format!("{}: {}", n.endpoint, n.message)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(600)
                .collect();
            self.tunnels.notice(text);
        }
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

    /// Opens one tunnel stream to `endpoint`, asking for a resumable one if `resumable`: over
    /// QUIC when it is up (or comes up within [`QUIC_FALLBACK_AFTER`]), else over HTTP/2 (see
    /// [`Transport`]).
    pub async fn open_tunnel(
        &self,
        endpoint: &str,
        resumable: bool,
    ) -> Result<Opened, ClientError> {
        let req = self.tunnel_request(endpoint, resumable, None);
        if self.transport != Transport::Tcp {
            match self.quic_request(&req, QUIC_FALLBACK_AFTER).await? {
                Some((resp, stream)) => {
                    answer_ok(&resp, endpoint)?;
                    let resume =
                        resp.resume_secret
                            .filter(|_| resumable)
                            .map(|secret| ResumeInfo {
                                endpoint: endpoint.to_owned(),
                                session_id: resp.session_id.clone().unwrap_or_default(),
                                secret,
                            });
                    return Ok(Opened { stream, resume });
                }
                None if self.transport == Transport::Quic => {
                    return Err(ClientError::Connect {
                        addr: self.authority(),
                        message: "QUIC (UDP) does not get through".into(),
                    })
                }
                None => {}
            }
        }
        let sender = self.sender().await?;
        let (headers, stream) = self.h2_tunnel(sender, &req).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let resume = header(wire::HDR_RESUME_SECRET)
            .filter(|_| resumable)
            .map(|secret| ResumeInfo {
                endpoint: endpoint.to_owned(),
                session_id: header(wire::HDR_SESSION).unwrap_or_default(),
                secret,
            });
        Ok(Opened {
            stream: Box::new(TokioIo::new(stream)),
            resume,
        })
    }

    /// Carries a suspended tunnel on over a new stream: its offset from the gateway, and the
    /// stream. Tries QUIC (unless it is off or known not to get through) and then TCP, each
    /// within [`RESUME_ATTEMPT`]; when QUIC failed and TCP got through, QUIC is tried once
    /// more (the network is evidently up, so a second failure means UDP is blocked: tunnels
    /// then use TCP, and QUIC is tried again later).
    pub async fn resume(
        &self,
        info: &ResumeInfo,
        received: u64,
    ) -> Result<(Tunnel, u64), ResumeError> {
        let r = wire::Resume {
            session_id: info.session_id.clone(),
            secret: info.secret.clone(),
            received,
        };
        let req = self.tunnel_request(&info.endpoint, false, Some(r));
        let mut quic_failed = false;
        if self.transport != Transport::Tcp {
            match self.quic_resume(&req, &info.endpoint).await? {
                Some(x) => return Ok(x),
                None if self.transport == Transport::Quic => {
                    return Err(ResumeError::Retry("QUIC (UDP) does not get through".into()))
                }
                None => quic_failed = true,
            }
        }
        let sender = self
            .sender_within(RESUME_ATTEMPT)
            .await
            .map_err(|e| ResumeError::Retry(e.to_string()))?;
        if quic_failed && self.quic.lock().await.failed_at.is_none() {
            if let Some(x) = self.quic_resume(&req, &info.endpoint).await? {
                return Ok(x);
            }
            tracing::info!(gateway = %self.authority(), "QUIC does not get through but TCP does; tunnels use TCP");
            self.quic.lock().await.failed_at = Some(std::time::Instant::now());
        }
        let (headers, stream) = self.h2_tunnel(sender, &req).await.map_err(resume_error)?;
        let received = headers
            .get(wire::HDR_RESUME_RECEIVED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ResumeError::Fatal("the gateway's answer has no resume offset".into())
            })?;
        Ok((Box::new(TokioIo::new(stream)), received))
    }

    /// A resume request over QUIC: `None` if no QUIC connection came up within
    /// [`RESUME_ATTEMPT`].
    async fn quic_resume(
        &self,
        req: &wire::TunnelRequest,
        endpoint: &str,
    ) -> Result<Option<(Tunnel, u64)>, ResumeError> {
        let Some((resp, stream)) = self
            .quic_request(req, RESUME_ATTEMPT)
            .await
            .map_err(resume_error)?
        else {
            return Ok(None);
        };
        answer_ok(&resp, endpoint).map_err(resume_error)?;
        let received = resp.received.ok_or_else(|| {
            ResumeError::Fatal("the gateway's answer has no resume offset".into())
        })?;
        Ok(Some((stream, received)))
    }

    fn tunnel_request(
        &self,
        endpoint: &str,
        resumable: bool,
        resume: Option<wire::Resume>,
    ) -> wire::TunnelRequest {
        wire::TunnelRequest {
            endpoint: endpoint.to_owned(),
            token: self.token(),
            justification: self.justification.clone(),
            resumable,
            resume,
        }
    }

    /// The QUIC connection: the live one, or a new one if one comes up within `within`. Once
    /// QUIC has failed (with `auto`), tunnels do not wait for it again: a background task
    /// tries it every [`QUIC_RETRY_AFTER`] and they use it once it is up.
    async fn quic_conn(&self, within: Duration) -> Option<quinn::Connection> {
        let mut q = self.quic.lock().await;
        if let Some(c) = &q.conn {
            if c.close_reason().is_none() {
                return Some(c.clone());
            }
            q.conn = None;
        }
        if self.transport == Transport::Auto && q.failed_at.is_some() {
            if !q.retrying {
                q.retrying = true;
                tokio::spawn(retry_quic(Arc::downgrade(&self.quic), self.quic_target()));
            }
            return None;
        }
        let target = self.quic_target();
        let result = quic_connect(&mut q, &target, within).await;
        match result {
            Ok(c) => Some(c),
            Err(e) if within >= QUIC_FALLBACK_AFTER => {
                tracing::info!(gateway = %self.authority(), error = %e, "QUIC unavailable; tunnels use TCP");
                q.failed_at = Some(std::time::Instant::now());
                None
            }
            Err(e) => {
                // A resume decides itself: the whole network may be down.
                tracing::debug!(gateway = %self.authority(), error = %e, "QUIC attempt failed");
                None
            }
        }
    }

    fn quic_target(&self) -> QuicTarget {
        QuicTarget {
            host: self.host.clone(),
            port: self.port,
            tls: self.quic_tls.clone(),
        }
    }

    /// Sends `req` on a new stream of the QUIC connection and reads the answer: `Ok(None)` if
    /// QUIC is not available (the caller uses TCP).
    async fn quic_request(
        &self,
        req: &wire::TunnelRequest,
        within: Duration,
    ) -> Result<Option<(wire::TunnelResponse, Tunnel)>, ClientError> {
        // A connection found dead when the stream opens is replaced once.
        for _ in 0..2 {
            let Some(conn) = self.quic_conn(within).await else {
                return Ok(None);
            };
            let (mut send, mut recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC connection lost; reconnecting");
                    self.quic.lock().await.conn = None;
                    continue;
                }
            };
            let heard_before = conn.stats().udp_rx.datagrams;
            let answer = async {
                postern_net::quic::write_frame(&mut send, req).await?;
                postern_net::quic::read_frame::<_, wire::TunnelResponse>(&mut recv).await
            };
            // A gateway that restarted or a path that died says nothing (QUIC has no RST):
            // the request is acknowledged within a round trip by a live gateway, so a
            // connection that hears nothing for `QUIC_SILENT` after it is given up.
            let silent = async {
                let start = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if conn.stats().udp_rx.datagrams > heard_before {
                        std::future::pending::<()>().await;
                    }
                    if start.elapsed() >= QUIC_SILENT {
                        return;
                    }
                }
            };
            let answer = async {
                tokio::select! {
                    r = answer => Some(r),
                    _ = silent => None,
                }
            };
            let resp = match tokio::time::timeout(Duration::from_secs(60), answer).await {
                Ok(None) => {
                    tracing::info!(gateway = %self.authority(), after = ?QUIC_SILENT, "the gateway does not answer over QUIC; reconnecting");
                    conn.close(0u32.into(), b"no answer");
                    self.quic.lock().await.conn = None;
                    continue;
                }
                Ok(Some(Ok(r))) => r,
                // The connection was gone (a restarted gateway resets it): once more on a
                // new one.
                Ok(Some(Err(e))) if conn.close_reason().is_some() => {
                    tracing::debug!(error = %e, "QUIC connection lost; reconnecting");
                    self.quic.lock().await.conn = None;
                    continue;
                }
                Ok(Some(Err(e))) => return Err(ClientError::Protocol(format!("QUIC tunnel: {e}"))),
                Err(_) => {
                    return Err(ClientError::Unavailable(
                        "the gateway did not answer the tunnel request within 60 s".into(),
                    ))
                }
            };
            let stream: Tunnel = Box::new(postern_net::quic::tunnel_stream(send, recv));
            return Ok(Some((resp, stream)));
        }
        Ok(None)
    }

    /// A tunnel request over HTTP/2 (`CONNECT`): the answer's headers and the stream.
    async fn h2_tunnel(
        &self,
        sender: SendRequest<Full<Bytes>>,
        r: &wire::TunnelRequest,
    ) -> Result<(http::HeaderMap, Upgraded), ClientError> {
        let mut req = self.request(Method::CONNECT, &wire::connect_authority(&r.endpoint))?;
        let headers = req.headers_mut();
        if r.resumable {
            headers.insert(wire::HDR_RESUMABLE, http::HeaderValue::from_static("1"));
        }
        if let Some(resume) = &r.resume {
            let v = http::HeaderValue::from_str(&resume.to_header())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            headers.insert(wire::HDR_RESUME, v);
        }
        let mut sender = sender;
        let resp = sender
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
            return Err(refusal(status, code, reason, &r.endpoint));
        }
        let headers = resp.headers().clone();
        let stream = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((headers, stream))
    }
}

/// A QUIC answer that is not 200, as the refusal it is.
fn answer_ok(resp: &wire::TunnelResponse, endpoint: &str) -> Result<(), ClientError> {
    if resp.status == 200 {
        return Ok(());
    }
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = resp
        .message
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    Err(refusal(
        status,
        resp.error.as_deref().unwrap_or(""),
        message,
        endpoint,
    ))
}

/// Whether a failed resume is worth trying again: not when the gateway answered that the
/// tunnel is gone or the client may not have it.
fn resume_error(e: ClientError) -> ResumeError {
    match e {
        ClientError::Expired
        | ClientError::Unauthorized(_)
        | ClientError::Denied { .. }
        | ClientError::UnknownEndpoint { .. }
        | ClientError::ReasonRequired { .. } => ResumeError::Fatal(e.to_string()),
        ClientError::Gone(m) => ResumeError::Fatal(m),
        other => ResumeError::Retry(other.to_string()),
    }
}

fn refusal(status: StatusCode, code: &str, message: String, endpoint: &str) -> ClientError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if code == "token_expired" => {
            ClientError::Expired
        }
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized(message),
        StatusCode::FORBIDDEN if code == "unknown_endpoint" => ClientError::UnknownEndpoint {
            endpoint: endpoint.to_owned(),
        },
        StatusCode::FORBIDDEN if code == "justification_required" => ClientError::ReasonRequired {
            endpoint: endpoint.to_owned(),
            reason: message,
        },
        StatusCode::FORBIDDEN => ClientError::Denied {
            endpoint: endpoint.to_owned(),
            reason: message,
        },
        StatusCode::GONE | StatusCode::NOT_FOUND => ClientError::Gone(message),
        _ => ClientError::Unavailable(message),
    }
}

/// One sentence for a refusal of `endpoint`: the gateway's reason, without repeating "denied"
/// ("Denied: access to pacs for radiologists requires …" reads "Access to pacs for radiologists
/// requires …."), and naming the endpoint when the reason does not.
pub fn refusal_sentence(endpoint: &str, reason: &str) -> String {
    let reason = reason.trim();
    let reason = reason
        .strip_prefix("Denied:")
        .or_else(|| reason.strip_prefix("denied:"))
        .unwrap_or(reason)
        .trim();
    let mut s = if reason.is_empty() {
        format!("Access to {endpoint} is denied")
    } else if reason.contains(endpoint) {
        let mut c = reason.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    } else {
        format!("Access to {endpoint} is denied: {reason}")
    };
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
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
    let listener = bind(listen).await?;
    let local = listener
        .local_addr()
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    ready(local, &info);
    let stats = Arc::new(TunnelStats::default());
    stats.ask_notices.store(
        info.protocol == "dicom",
        std::sync::atomic::Ordering::Relaxed,
    );
    serve(gw, endpoint.to_owned(), listener, stats).await;
    Ok(())
}

/// Listens on `listen`; a port already taken is named with the process holding it, when this
/// computer says.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, ClientError> {
    TcpListener::bind(listen).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            match ports::holder(listen.port()) {
                Some(who) => format!("port {} is already in use by {who}", listen.port()),
                None => format!("port {} is already in use by another program", listen.port()),
            }
        } else if e.kind() == std::io::ErrorKind::PermissionDenied && listen.port() < 1024 {
            format!(
                "port {} is below 1024, which needs administrator rights here; ask IT for a port above 1024 (or set local_port in your profile)",
                listen.port()
            )
        } else {
            e.to_string()
        };
        ClientError::Setup(format!("cannot listen on {listen}: {why}"))
    })
}

/// Turns each connection accepted on `listener` into one tunnel to `endpoint`, counting into
/// `stats`, until the task is dropped.
pub async fn serve(
    gw: Arc<GatewayConn>,
    endpoint: String,
    listener: TcpListener,
    stats: Arc<TunnelStats>,
) {
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
        let endpoint = endpoint.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let live = meter::LiveGuard::new(stats.clone());
            let local = meter::Metered::new(tcp, stats.clone());
            match gw.open_tunnel(&endpoint, true).await {
                Ok(Opened {
                    stream,
                    resume: Some(info),
                }) => {
                    stats.clear_error();
                    resume::carry(gw.clone(), local, stream, info).await;
                    drop(live);
                    notices_after_a_tunnel(&gw, &stats).await;
                }
                Ok(Opened {
                    stream,
                    resume: None,
                }) => {
                    stats.clear_error();
                    let counters = Arc::new(postern_net::relay::Counters::default());
                    postern_net::relay::relay(local, stream, counters).await;
                    drop(live);
                    notices_after_a_tunnel(&gw, &stats).await;
                }
                Err(e) => {
                    drop(live);
                    stats.set_error(e.to_string());
                    gw.tunnels.notice(format!(
                        "a connection from {peer} to {endpoint} was refused: {e}"
                    ))
                }
            }
        });
    }
}

/// After a tunnel has ended: the gateway may have a notice about it (the connector refused a
/// PACS association), which reaches it a moment after the tunnel ends.
async fn notices_after_a_tunnel(gw: &GatewayConn, stats: &TunnelStats) {
    if !stats.ask_notices.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.show_notices().await;
}

/// The clinician's recent notices (reconnections, tunnels ended by the gateway, refusals).
pub fn notices(gw: &GatewayConn) -> Vec<String> {
    gw.tunnels.notices()
}

/// Seconds since the epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The time now on this laptop's clock, in its time zone (`14:05:09`).
pub fn local_time_now() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

/// A Unix time as the clinician reads it, in the laptop's time zone: `18:00` today, `Mon 18:00`
/// within a week, else `2026-12-24 18:00`.
pub fn local_time(unix: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX)) else {
        return format!("{unix}");
    };
    let tz = jiff::tz::TimeZone::system();
    let at = ts.to_zoned(tz.clone());
    let now = jiff::Timestamp::now().to_zoned(tz);
    if at.date() == now.date() {
        at.strftime("%H:%M").to_string()
    } else if (at.timestamp().as_second() - now.timestamp().as_second()).abs() < 6 * 86_400 {
        at.strftime("%a %H:%M").to_string()
    } else {
        at.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// A `--listen` value: `PORT`, `localhost:PORT` or `ADDRESS:PORT` (`[::1]:PORT`). A bare port
/// and `localhost` mean 127.0.0.1.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port number (0 to 65535)"))
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port(s)?)));
    }
    if let Some(p) = s.strip_prefix("localhost:") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port(p)?)));
    }
    s.parse().map_err(|_| {
        format!("'{s}' is not a port or an address: use PORT, localhost:PORT or 127.0.0.1:PORT")
    })
}

/// The name in `names` closest to `typed` (a mistyped endpoint), if one is close.
pub fn did_you_mean<'a>(typed: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    let typed_l = typed.to_ascii_lowercase();
    names
        .into_iter()
        .map(|n| (distance(&typed_l, &n.to_ascii_lowercase()), n))
        .filter(|(d, n)| *d <= (n.chars().count() / 3).max(2) || n.contains(typed_l.as_str()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
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
    fn a_refusal_is_one_sentence() {
        assert_eq!(
            refusal_sentence(
                "pacs",
                "Denied: access to pacs for radiologists requires a registered device"
            ),
            "Access to pacs for radiologists requires a registered device."
        );
        assert_eq!(
            refusal_sentence(
                "pacs",
                "no rule allows user 'bob' (groups: none) to reach 'pacs'"
            ),
            "No rule allows user 'bob' (groups: none) to reach 'pacs'."
        );
        assert_eq!(
            refusal_sentence("web", "outside reporting hours."),
            "Access to web is denied: outside reporting hours."
        );
        let e = ClientError::ReasonRequired {
            endpoint: "pacs".into(),
            reason:
                "Denied: access to pacs for everyone requires a justification (break-glass access)"
                    .into(),
        }
        .to_string();
        assert!(
            e.contains("--reason") && !e.to_lowercase().contains("denied"),
            "{e}"
        );
        assert_eq!(e.matches("pacs").count(), 1, "{e}");
    }

    #[test]
    fn listen_takes_a_port_or_an_address() {
        assert_eq!(
            parse_listen("18099").unwrap(),
            "127.0.0.1:18099".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:18099").unwrap(),
            "127.0.0.1:18099".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(
            parse_listen("0.0.0.0:5").unwrap(),
            "0.0.0.0:5".parse().unwrap()
        );
        assert!(parse_listen("70000").unwrap_err().contains("not a port"));
        assert!(parse_listen("pacs").unwrap_err().contains("PORT"));
    }

    #[test]
    fn a_mistyped_endpoint_finds_its_name() {
        let names = ["truro-pacs-dicom", "truro-reporting-pc", "web-viewer"];
        assert_eq!(
            did_you_mean("truro-pacs-dicon", names),
            Some("truro-pacs-dicom")
        );
        assert_eq!(did_you_mean("reporting", names), Some("truro-reporting-pc"));
        assert_eq!(did_you_mean("Web-Viewer", names), Some("web-viewer"));
        assert_eq!(did_you_mean("payroll", names), None);
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
