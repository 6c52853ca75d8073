//! Sign-in routes on the client listener.
//!
//! * `GET /auth/login` — starts a sign-in (from the browser, or `postern login` with its own
//!   loopback redirect, PKCE challenge and the confirmation code it printed); redirects to the
//!   IdP with a sealed flow cookie.
//! * `GET /auth/callback` — the IdP's redirect; verifies, mints the session token, then either
//!   redirects to the CLI's loopback listener with a one-time code or shows a success page.
//! * `POST /auth/token` — the CLI redeems its one-time code with its PKCE verifier.
//! * `POST /auth/logout` — revokes the presented token (live sessions on it end).
//! * `GET /v1/whoami` — who the presented token says you are.
//!
//! Every failure ends in a readable page (or JSON for the CLI calls) and an `auth.failed` event
//! with the same error id. Starts and callbacks are rate limited per source address.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use openidconnect::url::form_urlencoded;
use postern_audit::EventType;
use postern_proto::wire::SessionSummary;
use serde::Deserialize;
use tracing::warn;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_proto::confirm::ConfirmCode;
use postern_proto::posture::PostureReport;

use super::devices::{page, Ceremonies};
use super::issue::{oidc, Issuer};
use super::oidc::{AuthError, CliRequest, COOKIE};
use super::tokens::Claims;
use super::verify::{token_refusal, Authn};
use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::http::{
    cookie, error, json, pages, param, query, read_body, redirect, retry_after, too_many,
    user_agent, Resp,
};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::state::{RevokedToken, SharedStore};

/// Ends live sessions when their token is revoked (implemented by the live-session registry,
/// so sign-out ends tunnels at once and says how many).
pub trait SessionControl: Send + Sync + 'static {
    /// Ends every live session opened with token `jti`; returns how many.
    fn end_token(&self, jti: &str, reason: &str) -> usize;
}

/// The sign-in routes.
pub struct SignIn {
    pub authn: Arc<Authn>,
    pub issuer: Arc<Issuer>,
    /// Where a sign-in waits for its device ceremony.
    pub ceremonies: Arc<Ceremonies>,
    pub store: SharedStore,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub clock: SharedClock,
    pub sessions: Arc<dyn SessionControl>,
    /// Web applications are served (`[web]`): a browser sign-in ends with a ticket that sets
    /// the browser's sign-in cookie (`crate::web::signin`).
    pub browser_tickets: bool,
}

fn set_cookie(r: &mut Resp, value: &str, max_age: u64) {
    let c =
        format!("{COOKIE}={value}; Path=/auth; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Audits `auth.failed` and renders the error page with the same id.
fn fail_page(svc: &SignIn, peer: SocketAddr, ua: &str, e: &AuthError) -> Resp {
    let id = record_failure(svc, peer, ua, e);
    let mut r = pages::error(e.status, &e.public, &id);
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    r
}

/// A failed CLI sign-in: audited as [`fail_page`] does, then the browser goes back to the
/// waiting `postern login` with the reason (`error`, `error_description`, `error_ref`, its
/// `state`), so the terminal says at once why instead of waiting for its timeout.
fn fail_to_cli(svc: &SignIn, peer: SocketAddr, ua: &str, e: &AuthError, cli: &CliRequest) -> Resp {
    let id = record_failure(svc, peer, ua, e);
    let enc: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("error", e.code)
        .append_pair("error_description", &e.public)
        .append_pair("error_ref", &id)
        .append_pair("state", &cli.state)
        .finish();
    redirect(&format!("{}?{enc}", cli.redirect))
}

/// Counts, logs and audits (`auth.failed`) a failed sign-in; answers its error reference.
fn record_failure(svc: &SignIn, peer: SocketAddr, ua: &str, e: &AuthError) -> String {
    svc.metrics
        .auth_logins
        .with_label_values(&["failure"])
        .inc();
    let id = postern_proto::ids::random_id("err")
        .map(|s| s[..16].to_owned())
        .unwrap_or_else(|_| "err-unknown".into());
    warn!(error_id = %id, code = e.code, detail = %e.detail, %peer, "sign-in failed");
    let mut ev = svc.audit.event(EventType::AuthFailed);
    ev.source = Some(peer.to_string());
    ev.user_agent = Some(ua.to_owned());
    ev.detail = Some(format!("{id}: {}: {}", e.code, e.detail));
    svc.audit.record_nowait(ev);
    id
}

fn too_many_signins(secs: u64) -> Resp {
    let mut r = pages::error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-in attempts from your address. Please wait a little and try again.",
        "rate-limited",
    );
    retry_after(&mut r, secs);
    r
}

/// Rate limit and query-size check shared by the browser-facing routes; Ok(user agent).
fn precheck(
    svc: &SignIn,
    req: &Request<Incoming>,
    peer: SocketAddr,
    max_query: usize,
) -> Result<String, Box<Resp>> {
    let ua = user_agent(req);
    if let Err(secs) = svc.limits.signin.check(&peer.ip()) {
        svc.metrics.note_ratelimited("signin");
        return Err(Box::new(too_many_signins(secs)));
    }
    if req.uri().query().map(str::len).unwrap_or(0) > max_query {
        return Err(Box::new(fail_page(
            svc,
            peer,
            &ua,
            &AuthError {
                status: StatusCode::URI_TOO_LONG,
                code: "oversized",
                public: "This sign-in link is not valid.".into(),
                detail: format!("query string over {max_query} bytes"),
            },
        )));
    }
    Ok(ua)
}

/// `GET /auth/login`.
pub async fn login(svc: Arc<SignIn>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let ua = match precheck(&svc, &req, peer, 4096) {
        Ok(ua) => ua,
        Err(r) => return *r,
    };
    let oidc = match oidc(&svc.authn) {
        Ok(o) => o,
        Err(e) => return fail_page(&svc, peer, &ua, &e),
    };
    let q = query(&req);
    let cli = match (
        param(&q, "cli_redirect"),
        param(&q, "cli_challenge"),
        param(&q, "cli_state"),
    ) {
        (Some(r), Some(c), Some(s)) => {
            let posture = match param(&q, "cli_posture") {
                None => None,
                Some(p) => match URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .map_err(|e| e.to_string())
                    .and_then(|b| PostureReport::parse(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return fail_page(
                            &svc,
                            peer,
                            &ua,
                            &AuthError {
                                status: StatusCode::BAD_REQUEST,
                                code: "bad_posture",
                                public: "The device report sent by the postern command is not valid. Update postern and try again.".into(),
                                detail: format!("cli_posture: {e}"),
                            },
                        );
                    }
                },
            };
            // The confirmation code `postern login` printed: required, so that the device
            // page can name the terminal that asked (issue #12 finding 8).
            let code = match param(&q, "cli_code").map(ConfirmCode::parse) {
                Some(Ok(code)) => code,
                Some(Err(e)) => {
                    return fail_page(
                        &svc,
                        peer,
                        &ua,
                        &AuthError {
                            status: StatusCode::BAD_REQUEST,
                            code: "bad_cli_code",
                            public: "This sign-in link carries a malformed confirmation code. Start again from the postern login command.".into(),
                            detail: format!("cli_code: {e}"),
                        },
                    );
                }
                None => {
                    return fail_page(
                        &svc,
                        peer,
                        &ua,
                        &AuthError {
                            status: StatusCode::BAD_REQUEST,
                            code: "missing_cli_code",
                            public: "This sign-in link has no confirmation code, so it cannot show which terminal asked for it. Update postern and start again with postern login.".into(),
                            detail: "cli_* parameters without cli_code".into(),
                        },
                    );
                }
            };
            Some(CliRequest {
                redirect: r.to_owned(),
                challenge: c.to_owned(),
                state: s.to_owned(),
                code,
                posture,
            })
        }
        (None, None, None) => None,
        _ => {
            return fail_page(
                &svc,
                peer,
                &ua,
                &AuthError {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_cli_request",
                    public: "This sign-in link is not valid. Start again from the postern command."
                        .into(),
                    detail: "incomplete cli_* parameters".into(),
                },
            );
        }
    };
    let from_cli = cli.is_some();
    match oidc.start(cli).await {
        Ok((url, sealed)) => {
            tracing::debug!(%peer, from_cli, "sign-in started: sent to the identity provider");
            let mut r = redirect(&url);
            set_cookie(&mut r, &sealed, 600);
            if svc.browser_tickets && !from_cli {
                crate::web::signin::note_browser_sign_in(&req, &mut r);
            }
            r
        }
        Err(e) => fail_page(&svc, peer, &ua, &e),
    }
}

/// `GET /auth/callback`.
pub async fn callback(svc: Arc<SignIn>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let ua = match precheck(&svc, &req, peer, 8192) {
        Ok(ua) => ua,
        Err(r) => return *r,
    };
    let oidc = match oidc(&svc.authn) {
        Ok(o) => o.clone(),
        Err(e) => return fail_page(&svc, peer, &ua, &e),
    };
    let q = query(&req);
    let jar = cookie(&req, COOKIE);
    let result = oidc
        .finish(
            jar.as_deref(),
            param(&q, "code"),
            param(&q, "state"),
            param(&q, "error"),
        )
        .await;
    let (mut identity, cli) = match result {
        Ok(x) => x,
        Err(e) => {
            let mut r = match oidc.cli_of(jar.as_deref(), param(&q, "state")) {
                Some(cli) => fail_to_cli(&svc, peer, &ua, &e, &cli),
                None => fail_page(&svc, peer, &ua, &e),
            };
            set_cookie(&mut r, "", 0);
            return r;
        }
    };
    if svc.browser_tickets && cli.is_none() {
        identity.browser = crate::web::signin::browser_binding(&req);
    }
    if svc.ceremonies.enabled() {
        // Device trust: the sign-in continues with a WebAuthn ceremony on the device page.
        let posture = cli.as_ref().and_then(|c| c.posture.clone());
        let code = cli.as_ref().map(|c| c.code.clone());
        return match svc.ceremonies.open(identity.clone(), cli).await {
            Ok(ceremony) => {
                tracing::debug!(%peer, "identity provider callback accepted: device ceremony opened");
                let mut r = page(
                    &svc.authn.devices,
                    &identity,
                    &ceremony,
                    posture.as_ref(),
                    code.as_ref(),
                );
                set_cookie(&mut r, "", 0);
                r
            }
            Err(e) => fail_page(
                &svc,
                peer,
                &ua,
                &AuthError {
                    status: e.status,
                    code: e.code,
                    public: e.public,
                    detail: e.detail,
                },
            ),
        };
    }
    let mut r = match svc.issuer.complete(&identity, cli, None, peer, &ua).await {
        Ok(Some(url)) => redirect(&url),
        Ok(None) => pages::success(
            "You are signed in",
            &format!(
                "Signed in as {} — you can close this window.",
                identity.user
            ),
        ),
        Err(e) => fail_page(&svc, peer, &ua, &e),
    };
    set_cookie(&mut r, "", 0);
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    code: String,
    code_verifier: String,
}

fn body_of(claims: &Claims, token: Option<String>) -> SessionSummary {
    SessionSummary {
        token,
        user: claims.sub.clone(),
        name: claims.name.clone(),
        groups: claims.groups.clone(),
        mfa: claims.mfa,
        auth_time: claims.auth_time,
        expires_at: claims.exp,
        idp: claims.idp.clone(),
        device: claims.device.clone(),
        user_verified: claims.uv,
    }
}

/// `POST /auth/token`.
pub async fn token(svc: Arc<SignIn>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if let Err(secs) = svc.limits.signin.check(&peer.ip()) {
        svc.metrics.note_ratelimited("signin");
        return too_many("too many requests", secs);
    }
    let Some(oidc) = svc.authn.oidc.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "signin_not_configured",
            "sign-in is not configured on this gateway",
        );
    };
    let body = match read_body(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                "request body too large",
            )
        }
    };
    let Ok(tr) = serde_json::from_slice::<TokenRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected JSON {code, code_verifier}",
        );
    };
    let Some(token) = oidc.redeem_cli_code(&tr.code, &tr.code_verifier).await else {
        let mut ev = svc.audit.event(EventType::AuthFailed);
        ev.source = Some(peer.to_string());
        ev.detail =
            Some("invalid_grant: unknown, expired or reused CLI code, or wrong verifier".into());
        svc.audit.record_nowait(ev);
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "the sign-in code is unknown, expired, already used, or the verifier does not match; run postern login again");
    };
    match svc.authn.keys.verify(&token, svc.clock.unix()) {
        Ok(claims) => json(StatusCode::OK, &body_of(&claims, Some(token))),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// `GET /v1/whoami`.
pub fn whoami(svc: &SignIn, req: &Request<Incoming>, peer: SocketAddr) -> Resp {
    match svc.authn.authenticate(req, peer) {
        Ok(s) => json(StatusCode::OK, &body_of(&s.claims, None)),
        Err(e) => token_refusal(&e),
    }
}

/// `POST /auth/logout`: revokes the presented token.
pub async fn logout(svc: Arc<SignIn>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let claims = match svc.authn.authenticate(&req, peer) {
        Ok(s) => s.claims,
        Err(e) => return token_refusal(&e),
    };
    match svc.sign_out(&claims, peer, "sign-out").await {
        Some(ended) => json(
            StatusCode::OK,
            &serde_json::json!({"revoked": claims.jti, "sessions_ended": ended}),
        ),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not record the revocation; try again",
        ),
    }
}

impl SignIn {
    /// Signs `claims`' sign-in out: revokes its token (durably, so every replica ends its
    /// sessions), ends the live sessions on it here and audits `auth.logout` and
    /// `token.revoked`. Returns how many live sessions ended, or None when the revocation
    /// could not be recorded.
    pub async fn sign_out(&self, claims: &Claims, peer: SocketAddr, how: &str) -> Option<usize> {
        let rec = RevokedToken {
            jti: claims.jti.clone(),
            exp: claims.exp,
            user: claims.sub.clone(),
            revoked: self.clock.unix(),
        };
        if self
            .store
            .revoke_token(rec, self.clock.unix())
            .await
            .is_err()
        {
            return None;
        }
        self.authn.revoke_jti(&claims.jti);
        let ended = self.sessions.end_token(&claims.jti, "token_revoked");
        let mut ev = self.audit.event(EventType::AuthLogout);
        ev.user = Some(claims.sub.clone());
        ev.signin = Some(claims.signin_id());
        ev.source = Some(peer.to_string());
        ev.detail = Some(format!(
            "{how}: session token {}; {ended} live sessions ended",
            claims.jti
        ));
        let mut revoked = self.audit.event(EventType::TokenRevoked);
        revoked.user = Some(claims.sub.clone());
        revoked.detail = Some(format!("session token {} ({how})", claims.jti));
        // Security events wait until they are durable. The revocation itself stands either way
        // (failing safe): a log that cannot be written is an outage the operator is alerted to.
        for ev in [ev, revoked] {
            if let Err(e) = self.audit.record(ev).await {
                tracing::error!(error = %e, jti = %claims.jti, "sign-out done but not audited");
            }
        }
        Some(ended)
    }
}
