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
        let mut ev = self.audit.event(EventType::AuthLogin);
        ev.user = Some(identity.user.clone());
        ev.signin = Some(claims.signin_id());
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
        // A sign-in is a security event: it is durable in the audit log before the token is
        // handed out, or the sign-in fails (never a token nobody can account for).
        if let Err(e) = self.audit.record(ev).await {
            return Err(AuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "audit_unavailable",
                public: "Sign-in is unavailable: the gateway cannot write its audit log. Try again later.".into(),
                detail: format!("auth.login for session token {} could not be audited: {e}", claims.jti),
            });
        }
        info!(user = %identity.user, groups = ?identity.groups, mfa = identity.mfa, device = ?claims.device, %peer, "signed in");
        self.metrics
            .auth_logins
            .with_label_values(&["success"])
            .inc();
        match cli {
            Some(cli) => {
                let code = oidc.issue_cli_code(&cli, token).await?;
                let enc: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("code", &code)
                    .append_pair("state", &cli.state)
                    .finish();
                Ok(Some(format!("{}?{enc}", cli.redirect)))
            }
            None => match &identity.browser {
                Some(binding) => oidc.issue_browser_ticket(binding, token).await.map(Some),
                None => Ok(None),
            },
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
                email: id.email.clone(),
                ae: id.ae_titles.clone(),
                idp: Some(id.issuer.clone()),
            })
            .map_err(|e| internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use postern_audit::{AuditSink, EventType, MemorySink};

    use super::*;
    use crate::app::{App, Seams};

    /// `auth.login` is a security event: when the audit log cannot take it, the sign-in fails
    /// and no token is handed out (before: the event was queued without waiting, and lost).
    #[tokio::test]
    async fn a_sign_in_the_audit_log_cannot_record_hands_out_no_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("policy.toml"),
            "[[endpoints]]\nname = \"pacs\"\nsite = \"s\"\nhost = \"127.0.0.1\"\nport = 4242\nprotocol = \"dicom\"\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\nusers = [\"ann\"]\nendpoints = [\"pacs\"]\n",
        )
        .unwrap();
        let mut config =
            crate::Config::local(&dir.path().join("state"), &dir.path().join("policy.toml"));
        config.oidc = Some(crate::config::OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "postern".into(),
            client_secret: crate::config::SecretSource::Inline(crate::config::Secret("s".into())),
            redirect_url: "https://gw.example/auth/callback".into(),
            scopes: vec![],
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            name_claim: "name".into(),
            ae_title_claim: "ae_title".into(),
            mfa_amr: vec![],
            mfa_acr: vec![],
            session_ttl: Duration::from_secs(3600),
            ca_file: None,
            insecure_http_issuer: false,
        });
        let sink = MemorySink::shared();
        let seams = Seams {
            clock: crate::clock::system(),
            store: Arc::new(crate::state::memory::MemoryStore::default()),
            audit: sink.clone() as Arc<dyn AuditSink>,
            upstream: None,
        };
        let app = App::build(config, "127.0.0.1:1".parse().unwrap(), seams)
            .await
            .unwrap();
        let ann = Identity {
            user: "ann".into(),
            subject: "ann".into(),
            name: None,
            email: None,
            groups: vec![],
            ae_titles: vec![],
            mfa: true,
            auth_time: None,
            issuer: "https://idp.example".into(),
            browser: None,
        };
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let cli = || CliRequest {
            redirect: "http://127.0.0.1:4444/callback".into(),
            challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            state: "st".into(),
            code: postern_proto::confirm::ConfirmCode::generate().unwrap(),
            posture: None,
        };
        // Working log: a code for the CLI, and the sign-in is on record.
        let url = app
            .signin
            .issuer
            .complete(&ann, Some(cli()), None, peer, "test")
            .await
            .unwrap()
            .expect("a CLI redirect");
        assert!(url.contains("code="), "{url}");
        let logins = sink.of_type(EventType::AuthLogin);
        assert_eq!(logins.len(), 1);
        // The sign-in's id, which every session event of the token carries, is the token's.
        let signin = logins[0]
            .signin
            .clone()
            .expect("auth.login names its sign-in");
        assert!(signin.starts_with("tok-"), "{signin}");
        assert!(
            logins[0].detail.as_deref().unwrap_or("").contains(&signin),
            "{:?}",
            logins[0].detail
        );

        sink.set_failing(true);
        let err = app
            .signin
            .issuer
            .complete(&ann, Some(cli()), None, peer, "test")
            .await
            .expect_err("no sign-in without its audit event");
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, "audit_unavailable");
        assert_eq!(sink.of_type(EventType::AuthLogin).len(), 1);
    }
}
