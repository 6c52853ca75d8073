//! A **development-only** OpenID Connect provider for the Postern demo.
//!
//! `postern-demo` needs a sign-in that works offline, on one laptop, with no account at
//! a real identity provider. This crate is that provider: a small but standards-following OpenID
//! Connect server for the authorization code flow with PKCE, so the gateway talks to it exactly
//! as it talks to Entra ID, Okta or Keycloak.
//!
//! **Never use it in production.** It serves plain HTTP, refuses to listen anywhere but loopback,
//! knows only the fixed demo users it is given (passwords in memory), and keeps its signing key
//! and all state in memory, so a restart invalidates every code and token. Every page it serves
//! and its start-up log line say so.
//!
//! # Endpoints
//!
//! | Path | What |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery metadata; issuer is `http://<listener addr>` |
//! | `GET /jwks` | the ES256 (P-256) public key, `kid` = its RFC 7638 thumbprint |
//! | `GET`/`POST /authorize` | validates the request, shows the login form |
//! | `POST /login` | the login form's target; on success redirects (303) with a code |
//! | `POST /token` | code + PKCE verifier → ID token (ES256 JWS) and access token |
//! | `GET`/`POST /userinfo` | claims for a Bearer access token |
//!
//! # Flow and layout
//!
//! * `form` parses query strings and form bodies (never panics, rejects duplicates).
//! * `jws` holds the signing key and produces compact ES256 JWS.
//! * `provider` is the protocol logic without I/O: it takes a request and the current time and
//!   returns a reply, so tests can drive code expiry without sleeping.
//! * `server` is the hyper accept loop: one task per connection, a connection cap, a 16 KiB
//!   body limit, timeouts, graceful shutdown.
//! * `pages` renders the HTML (no external assets, strict Content-Security-Policy).
//!
//! Authorization codes live 60 seconds and are single-use (a replay is refused and revokes the
//! access token the code issued). ID tokens and access tokens live 10 minutes.
//!
//! # Claims
//!
//! The ID token carries `iss`, `sub` (stable per username, opaque), `aud` (the client id),
//! `exp`, `iat`, `auth_time`, `nonce` (when sent), `at_hash`, `name`, `email`,
//! `email_verified`, `groups` (array of strings), `amr` and `acr`. MFA is expressed the
//! standard way (RFC 8176): `amr` is `["pwd", "mfa"]` for a user configured with `mfa: true`
//! and `["pwd"]` otherwise; `acr` is [`ACR_MFA`] or [`ACR_PWD`] to match.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod form;
mod jws;
mod pages;
mod provider;
mod server;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

/// `acr` of a user who signed in with password and MFA (the OpenID PAPE multi-factor policy
/// URI, as several commercial providers use).
pub const ACR_MFA: &str = "http://schemas.openid.net/pape/policies/2007/06/multi-factor";
/// `acr` of a user who signed in with a password only.
pub const ACR_PWD: &str = "urn:postern:devidp:pwd";

/// A fixed demo account.
#[derive(Clone)]
pub struct DemoUser {
    pub username: String,
    pub password: String,
    /// `name` claim.
    pub name: String,
    /// `email` claim (always reported as verified).
    pub email: String,
    /// `groups` claim.
    pub groups: Vec<String>,
    /// Whether this user "performed MFA": decides `amr` and `acr`.
    pub mfa: bool,
}

impl fmt::Debug for DemoUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoUser")
            .field("username", &self.username)
            .field("password", &"***")
            .field("name", &self.name)
            .field("email", &self.email)
            .field("groups", &self.groups)
            .field("mfa", &self.mfa)
            .finish()
    }
}

/// The one registered client and the demo users.
#[derive(Clone)]
pub struct DevIdpConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Exact-match redirect URIs (absolute http or https, no fragment).
    pub redirect_uris: Vec<String>,
    pub users: Vec<DemoUser>,
}

impl fmt::Debug for DevIdpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdpConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("redirect_uris", &self.redirect_uris)
            .field("users", &self.users)
            .finish()
    }
}

impl DevIdpConfig {
    /// The demo set-up: one client and two users.
    ///
    /// * `alice` / password `alice`: "Dr Alice Demo", alice@demo.nhs.uk, groups
    ///   `["radiologists"]`, MFA.
    /// * `lee` / password `lee`: "Lee Locum", lee@demo.nhs.uk, groups `["locums"]`, no MFA.
    pub fn demo(client_id: &str, client_secret: &str, redirect_uri: &str) -> DevIdpConfig {
        let user = |username: &str, name: &str, group: &str, mfa: bool| DemoUser {
            username: username.to_owned(),
            password: username.to_owned(),
            name: name.to_owned(),
            email: format!("{username}@demo.nhs.uk"),
            groups: vec![group.to_owned()],
            mfa,
        };
        DevIdpConfig {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: vec![redirect_uri.to_owned()],
            users: vec![
                user("alice", "Dr Alice Demo", "radiologists", true),
                user("lee", "Lee Locum", "locums", false),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error(
        "refusing to serve the development identity provider on {addr}: \
         it only listens on loopback (127.0.0.1 or ::1)"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("reading the development identity provider's listening address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("invalid development identity provider config: {0}")]
    Config(String),
    #[error("generating the development identity provider's signing key failed")]
    KeyGeneration,
}

/// The issuer URL for a provider listening on `addr`: `http://127.0.0.1:PORT`
/// (`http://[::1]:PORT` for IPv6), without a trailing slash.
pub fn issuer_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Serves the provider on `listener` until `shutdown` completes, then lets open requests
/// finish (up to a few seconds).
///
/// Refuses, with an error and before serving anything, unless the listener's address is
/// loopback, and when `config` is unusable (empty client id or secret, no redirect URI, a
/// redirect URI that is not absolute http(s), no users, duplicate usernames).
/// The issuer is [`issuer_for`] the listener's address.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: DevIdpConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevIdpError> {
    let addr = listener.local_addr().map_err(DevIdpError::LocalAddr)?;
    if !addr.ip().to_canonical().is_loopback() {
        return Err(DevIdpError::NotLoopback { addr });
    }
    let issuer = issuer_for(addr);
    let provider = Arc::new(provider::Provider::new(&config, issuer)?);
    warn!(
        issuer = provider.issuer(),
        "development identity provider \u{2014} not for production (plain HTTP, loopback only, fixed demo users)"
    );
    info!(
        issuer = provider.issuer(),
        client_id = %config.client_id,
        kid = provider.kid(),
        users = ?config.users.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        code_ttl = %humantime::format_duration(Duration::from_secs(provider::CODE_TTL)),
        token_ttl = %humantime::format_duration(Duration::from_secs(provider::TOKEN_TTL)),
        "development identity provider listening"
    );
    server::run(listener, provider, shutdown).await;
    info!("development identity provider stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_has_the_documented_users() {
        let c = DevIdpConfig::demo("gw", "sec", "http://127.0.0.1:1/cb");
        assert_eq!(c.users.len(), 2);
        let alice = &c.users[0];
        assert_eq!(
            (alice.username.as_str(), alice.password.as_str()),
            ("alice", "alice")
        );
        assert_eq!(alice.name, "Dr Alice Demo");
        assert_eq!(alice.email, "alice@demo.nhs.uk");
        assert_eq!(alice.groups, vec!["radiologists"]);
        assert!(alice.mfa);
        let lee = &c.users[1];
        assert_eq!(
            (lee.username.as_str(), lee.password.as_str()),
            ("lee", "lee")
        );
        assert_eq!(lee.name, "Lee Locum");
        assert_eq!(lee.email, "lee@demo.nhs.uk");
        assert_eq!(lee.groups, vec!["locums"]);
        assert!(!lee.mfa);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = DevIdpConfig::demo("gw", "topsecret", "http://127.0.0.1:1/cb");
        let s = format!("{c:?}");
        assert!(!s.contains("topsecret"), "{s}");
        assert!(!s.contains("password: \"alice\""), "{s}");
        assert!(s.contains("***"));
    }

    #[test]
    fn issuer_urls() {
        assert_eq!(
            issuer_for("127.0.0.1:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(issuer_for("[::1]:9".parse().unwrap()), "http://[::1]:9");
    }
}
