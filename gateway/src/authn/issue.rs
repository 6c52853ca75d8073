//! [`Issuer`]: the end of every sign-in — mints the session token (bound to the device when
//! device trust is on), audits `auth.login` and hands the CLI its one-time code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use openidconnect::url::form_urlencoded;
use postern_audit::EventType;
use tracing::info;

use super::devices::Binding;
use super::oidc::{AuthError, CliRequest, Identity, Oidc};
use super::tokens::{new_jti, Claims};
use super::verify::Authn;
use crate::audit::Audit;
use crate::clock::{from_unix, SharedClock};
use crate::metrics::Metrics;

/// Mints session tokens at the end of sign-in.
pub struct Issuer {
    pub authn: Arc<Authn>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    /// `[limits] session_token_max_ttl`: caps the IdP session lifetime.
    pub max_ttl: Duration,
}

/// The OIDC relying party, or the error a browser sees when sign-in is not configured.
pub(crate) fn oidc(authn: &Authn) -> Result<&Arc<Oidc>, AuthError> {
    authn.oidc.as_ref().ok_or_else(|| AuthError {
        status: StatusCode::NOT_FOUND,
        code: "signin_not_configured",
        public: "Sign-in is not configured on this gateway.".into(),
        detail: "no [oidc] section in the gateway configuration".into(),
    })
}

impl Issuer {
    /// Finishes a sign-in: mints the session token (bound to `device` when device trust is on),
    /// audits `auth.login` and returns the CLI's loopback URL with its one-time code, or `None`
    /// for a browser-only sign-in.
    pub async fn complete(
        &self,
        identity: &Identity,
        cli: Option<CliRequest>,
        device: Option<&Binding>,
        peer: SocketAddr,
        ua: &str,
    ) -> Result<Option<String>, AuthError> {
        let oidc = oidc(&self.authn)?;
        let (token, claims) = self.mint(oidc, identity, device)?;
        info!(user = %identity.user, groups = ?identity.groups, mfa = identity.mfa, device = ?claims.device, %peer, "signed in");
        self.metrics
            .auth_logins
            .with_label_values(&["success"])
            .inc();
        let mut ev = self.audit.event(EventType::AuthLogin);
        ev.user = Some(identity.user.clone());
        ev.groups = Some(identity.groups.clone());
        ev.source = Some(peer.to_string());
        ev.user_agent = Some(ua.to_owned());
        ev.user_name = identity.name.clone();
        ev.user_email = identity.email.clone();
        ev.device = device.map(|d| postern_audit::DeviceRef {
            id: d.device.clone(),
            name: Some(d.name.clone()),
            user_verified: Some(d.user_verified),
        });
        ev.detail = Some(format!(
            "idp {} subject {}; mfa {}; auth_time {}; session token {} until {}",
            identity.issuer,
            identity.subject,
            identity.mfa,
            identity.auth_time.map_or_else(
                || "unknown".to_owned(),
                |t| humantime::format_rfc3339_seconds(from_unix(t)).to_string()
            ),
            claims.jti,
            humantime::format_rfc3339_seconds(from_unix(claims.exp))
        ));
        self.audit.record_nowait(ev);
        match cli {
            Some(cli) => {
                let code = oidc.issue_cli_code(&cli, token).await?;
                let enc: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("code", &code)
                    .append_pair("state", &cli.state)
                    .finish();
                Ok(Some(format!("{}?{enc}", cli.redirect)))
            }
            None => Ok(None),
        }
    }

    fn mint(
        &self,
        oidc: &Oidc,
        id: &Identity,
        device: Option<&Binding>,
    ) -> Result<(String, Claims), AuthError> {
        let internal = |d: String| AuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            public: "Something went wrong on our side. Please try again.".into(),
            detail: d,
        };
        let now = self.clock.unix();
        let ttl = oidc.config.session_ttl.min(self.max_ttl);
        self.authn
            .keys
            .issue(Claims {
                iss: String::new(),
                aud: String::new(),
                sub: id.user.clone(),
                groups: id.groups.clone(),
                iat: now,
                exp: now + ttl.as_secs(),
                jti: new_jti().map_err(|e| internal(e.to_string()))?,
                // Unknown stays unknown: sign-in age conditions then fail closed.
                auth_time: id.auth_time,
                mfa: id.mfa,
                device: device.map(|d| d.device.clone()),
                uv: device.is_some_and(|d| d.user_verified),
                posture: device.and_then(|d| d.posture.as_ref().map(|p| p.policy_facts())),
                name: id.name.clone(),
                idp: Some(id.issuer.clone()),
            })
            .map_err(|e| internal(e.to_string()))
    }
}
