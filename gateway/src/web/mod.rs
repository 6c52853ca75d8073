//! Web applications in the browser: the identity-aware proxy.
//!
//! An endpoint with `protocol = "https"` or `"http"` is served at
//! `https://NAME.<apps_domain>/` by the client listener (told apart from the gateway's own
//! host by the request's host). A browser without an application session is sent through the
//! gateway's sign-in (OIDC + the device's WebAuthn credential, [`signin`]), which hands the
//! result to the application's host with a one-time code; the code buys an application
//! session: a `session.start`, a cookie bound to user, device and application, and the same
//! supervision as a tunnel (deadline, idle limit, revocations, policy reloads). Every request
//! is then decided by the policy (method and path) and forwarded through the site's connector
//! (`proxy`); `web.request` events record them (`record`).
//!
//! Proxy-owned paths on an application host live under `/.postern/` (`own`).

mod body;
mod cookies;
mod objects;
mod own;
mod pages;
mod pool;
mod proxy;
mod record;
mod session;
pub mod signin;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access::broker::Broker;
use crate::access::Access;
use crate::authn::{Authn, SignIn};
use crate::clock::SharedClock;
use crate::config::WebConfig;
use crate::connectors::Upstream;
use crate::http::Resp;
use crate::limits::Limits;

pub use session::AppSessions;

/// Any error a streamed body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer on the client listener: whole (the gateway's own pages and JSON)
/// or streamed (a proxied response).
pub type WebBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type WebResp = Response<WebBody>;

/// A whole answer as a [`WebResp`].
pub fn whole(r: Resp) -> WebResp {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

/// What the proxy needs.
pub struct Web {
    pub config: WebConfig,
    /// `https://host[:port]` of the gateway's own host, where sign-in happens.
    pub main_origin: String,
    /// `:port` when application hosts are reached on a port other than 443, else empty.
    pub port_suffix: String,
    pub authn: Arc<Authn>,
    pub broker: Arc<Broker>,
    pub access: Arc<Access>,
    pub upstream: Arc<dyn Upstream>,
    pub signin: Arc<SignIn>,
    pub limits: Arc<Limits>,
    pub clock: SharedClock,
    pub sessions: Arc<AppSessions>,
    /// TLS to `https` upstreams: verifying (against `upstream_ca_file` or the public roots),
    /// and not verifying (endpoints with `tls_verify = false`).
    pub tls_verify: Arc<rustls::ClientConfig>,
    pub tls_noverify: Arc<rustls::ClientConfig>,
}

impl Web {
    /// The application a request is for, from its host (`:authority` or `Host`): `NAME` of
    /// `NAME.<apps_domain>[:port]`, lower-cased. `None`: the gateway's own host.
    pub fn app_of<B>(&self, req: &Request<B>) -> Option<String> {
        let host = request_host(req)?;
        let name = host
            .strip_suffix(&self.config.apps_domain)?
            .strip_suffix('.')?;
        (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
    }

    /// `https://APP.<apps_domain>[:port]`.
    pub fn app_origin(&self, app: &str) -> String {
        format!(
            "https://{app}.{}{}",
            self.config.apps_domain, self.port_suffix
        )
    }

    /// Serves one request for application `app`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        app: String,
    ) -> WebResp {
        // Applications are the policy's web endpoints; anything else under the domain is
        // unknown (the same answer whether or not a tunnel endpoint has that name).
        let policy = self.access.policy();
        let Some(endpoint) = policy
            .endpoint(&app)
            .filter(|e| e.protocol.is_web())
            .cloned()
        else {
            return whole(pages::not_found(&app));
        };
        drop(policy);
        if let Err(secs) = self.limits.web_ip.check(&peer.ip()) {
            self.access.metrics.note_ratelimited("web");
            return whole(pages::too_many(&req, secs));
        }
        let path = req.uri().path();
        if let Some(own) = path.strip_prefix("/.postern/") {
            let own = own.to_owned();
            return own::handle(&self, req, peer, &endpoint, &own).await;
        }
        proxy::serve(&self, req, peer, endpoint).await
    }
}

/// The request's host without port, lower-cased: the `:authority` of an HTTP/2 request or
/// the `Host` header of an HTTP/1.1 one. `None` when absent or not a plain host name.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let host = h.rsplit_once(':').map_or(h, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    h
                }
            });
            host.to_owned()
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (host.len() <= 253
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    .then_some(host)
}

/// Whether the browser is navigating (a page load, which may be redirected to sign-in) rather
/// than fetching (script, image, XHR: answered 401 instead, which a redirect would confuse).
fn is_navigation<B>(req: &Request<B>) -> bool {
    match req
        .headers()
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok())
    {
        Some(mode) => mode == "navigate",
        None => {
            req.method() == http::Method::GET
                && req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/html"))
        }
    }
}

/// Whether the client prefers a JSON answer (an API client, a fetch asking for JSON).
fn wants_json<B>(req: &Request<B>) -> bool {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !is_navigation(req) && (accept.contains("json") || !accept.contains("text/html"))
}
