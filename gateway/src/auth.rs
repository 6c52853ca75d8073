//! Sign-in routes on the client listener.
//!
//! * `GET /auth/login` — starts a sign-in (from the browser, or `postern login` with its own
//!   loopback redirect and PKCE challenge); redirects to the IdP with a sealed flow cookie.
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
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use openidconnect::url::form_urlencoded;
use postern_audit::EventType;
use postern_proto::wire::SessionSummary;
use serde::Deserialize;
use tracing::{info, warn};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_proto::posture::PostureReport;

use crate::clock::unix_now;
use crate::oidc::{AuthError, CliRequest, Identity, Oidc, COOKIE};
use crate::pages;
use crate::state::RevokedToken;
use crate::tokens::{new_jti, Claims};
use crate::Gateway;

type Resp = Response<Full<Bytes>>;

fn user_agent(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(200)
        .collect()
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(r: &mut Resp, value: &str, max_age: u64) {
    let c =
        format!("{COOKIE}={value}; Path=/auth; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect(location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    pages::harden(&mut r);
    r
}

/// Audits `auth.failed` and renders the error page with the same id.
fn fail_page(gw: &Gateway, peer: SocketAddr, ua: &str, e: &AuthError) -> Resp {
    gw.metrics.auth_logins.with_label_values(&["failure"]).inc();
    let id = postern_proto::ids::random_id("err")
        .map(|s| s[..16].to_owned())
        .unwrap_or_else(|_| "err-unknown".into());
    warn!(error_id = %id, code = e.code, detail = %e.detail, %peer, "sign-in failed");
    let mut ev = gw.event(EventType::AuthFailed);
    ev.source = Some(peer.to_string());
    ev.user_agent = Some(ua.to_owned());
    ev.detail = Some(format!("{id}: {}: {}", e.code, e.detail));
    gw.audit.record_nowait(ev);
    let mut r = pages::error(e.status, &e.public, &id);
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    r
}

fn too_many(secs: u64) -> Resp {
    let mut r = pages::error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-in attempts from your address. Please wait a little and try again.",
        "rate-limited",
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn oidc(gw: &Gateway) -> Result<&Arc<Oidc>, AuthError> {
    gw.oidc.as_ref().ok_or_else(|| AuthError {
        status: StatusCode::NOT_FOUND,
        code: "signin_not_configured",
        public: "Sign-in is not configured on this gateway.".into(),
        detail: "no [oidc] section in the gateway configuration".into(),
    })
}

/// Rate limit and query-size check shared by the browser-facing routes; Ok(user agent).
fn precheck(
    gw: &Gateway,
    req: &Request<Incoming>,
    peer: SocketAddr,
    max_query: usize,
) -> Result<String, Box<Resp>> {
    let ua = user_agent(req);
    if let Err(secs) = gw.limits.signin.check(&peer.ip()) {
        gw.note_ratelimited("signin");
        return Err(Box::new(too_many(secs)));
    }
    if req.uri().query().map(str::len).unwrap_or(0) > max_query {
        return Err(Box::new(fail_page(
            gw,
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
pub async fn login(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let ua = match precheck(&gw, &req, peer, 4096) {
        Ok(ua) => ua,
        Err(r) => return *r,
    };
    let oidc = match oidc(&gw) {
        Ok(o) => o,
        Err(e) => return fail_page(&gw, peer, &ua, &e),
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
                            &gw,
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
            Some(CliRequest {
                redirect: r.to_owned(),
                challenge: c.to_owned(),
                state: s.to_owned(),
                posture,
            })
        }
        (None, None, None) => None,
        _ => {
            return fail_page(
                &gw,
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
    match oidc.start(cli).await {
        Ok((url, sealed)) => {
            let mut r = redirect(&url);
            set_cookie(&mut r, &sealed, 600);
            r
        }
        Err(e) => fail_page(&gw, peer, &ua, &e),
    }
}

/// `GET /auth/callback`.
pub async fn callback(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let ua = match precheck(&gw, &req, peer, 8192) {
        Ok(ua) => ua,
        Err(r) => return *r,
    };
    let oidc = match oidc(&gw) {
        Ok(o) => o.clone(),
        Err(e) => return fail_page(&gw, peer, &ua, &e),
    };
    let q = query(&req);
    let jar = cookie(&req);
    let result = oidc
        .finish(
            jar.as_deref(),
            param(&q, "code"),
            param(&q, "state"),
            param(&q, "error"),
        )
        .await;
    let (identity, cli) = match result {
        Ok(x) => x,
        Err(e) => {
            let mut r = fail_page(&gw, peer, &ua, &e);
            set_cookie(&mut r, "", 0);
            return r;
        }
    };
    if gw.devices.enabled() {
        // Device trust: the sign-in continues with a WebAuthn ceremony on the device page.
        let posture = cli.as_ref().and_then(|c| c.posture.clone());
        return match gw.devices.open(identity.clone(), cli) {
            Ok(ceremony) => {
                let mut r = crate::devices::page(&gw, &identity, &ceremony, posture.as_ref());
                set_cookie(&mut r, "", 0);
                r
            }
            Err(e) => fail_page(
                &gw,
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
    let mut r = match complete(&gw, &identity, cli, None, peer, &ua) {
        Ok(Some(url)) => redirect(&url),
        Ok(None) => pages::success(
            "You are signed in",
            &format!(
                "Signed in as {} — you can close this window.",
                identity.user
            ),
        ),
        Err(e) => fail_page(&gw, peer, &ua, &e),
    };
    set_cookie(&mut r, "", 0);
    r
}

/// Finishes a sign-in: mints the session token (bound to `device` when device trust is on),
/// audits `auth.login` and returns the CLI's loopback URL with its one-time code, or `None`
/// for a browser-only sign-in.
pub(crate) fn complete(
    gw: &Gateway,
    identity: &Identity,
    cli: Option<CliRequest>,
    device: Option<&crate::devices::Binding>,
    peer: SocketAddr,
    ua: &str,
) -> Result<Option<String>, AuthError> {
    let oidc = oidc(gw)?;
    let (token, claims) = mint(gw, oidc, identity, device)?;
    info!(user = %identity.user, groups = ?identity.groups, mfa = identity.mfa, device = ?claims.device, %peer, "signed in");
    gw.metrics.auth_logins.with_label_values(&["success"]).inc();
    let mut ev = gw.event(EventType::AuthLogin);
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
        "idp {} subject {}; mfa {}; session token {} until {}",
        identity.issuer,
        identity.subject,
        identity.mfa,
        claims.jti,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(claims.exp))
    ));
    gw.audit.record_nowait(ev);
    match cli {
        Some(cli) => {
            let code = oidc.issue_cli_code(&cli, token)?;
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
    gw: &Gateway,
    oidc: &Oidc,
    id: &Identity,
    device: Option<&crate::devices::Binding>,
) -> Result<(String, Claims), AuthError> {
    let internal = |d: String| AuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        public: "Something went wrong on our side. Please try again.".into(),
        detail: d,
    };
    let now = unix_now();
    let ttl = oidc.config.session_ttl.min(gw.config.session_token_max_ttl);
    gw.keys
        .issue(Claims {
            iss: String::new(),
            aud: String::new(),
            sub: id.user.clone(),
            groups: id.groups.clone(),
            iat: now,
            exp: now + ttl.as_secs(),
            jti: new_jti().map_err(|e| internal(e.to_string()))?,
            auth_time: Some(id.auth_time.unwrap_or(now)),
            mfa: id.mfa,
            device: device.map(|d| d.device.clone()),
            uv: device.is_some_and(|d| d.user_verified),
            posture: device.and_then(|d| d.posture.as_ref().map(|p| p.policy_facts())),
            name: id.name.clone(),
            idp: Some(id.issuer.clone()),
        })
        .map_err(|e| internal(e.to_string()))
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
pub async fn token(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    use crate::client_api::{error, json};
    if let Err(secs) = gw.limits.signin.check(&peer.ip()) {
        gw.note_ratelimited("signin");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests",
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Some(oidc) = gw.oidc.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "signin_not_configured",
            "sign-in is not configured on this gateway",
        );
    };
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
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
    let Some(token) = oidc.redeem_cli_code(&tr.code, &tr.code_verifier) else {
        let mut ev = gw.event(EventType::AuthFailed);
        ev.source = Some(peer.to_string());
        ev.detail =
            Some("invalid_grant: unknown, expired or reused CLI code, or wrong verifier".into());
        gw.audit.record_nowait(ev);
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "the sign-in code is unknown, expired, already used, or the verifier does not match; run postern login again");
    };
    match gw.keys.verify(&token) {
        Ok(claims) => json(StatusCode::OK, &body_of(&claims, Some(token))),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// `GET /v1/whoami`.
pub fn whoami(gw: &Gateway, req: &Request<Incoming>) -> Resp {
    use crate::client_api::{authenticate, json, token_refusal};
    match authenticate(gw, req) {
        Ok(c) => json(StatusCode::OK, &body_of(&c, None)),
        Err(e) => token_refusal(&e),
    }
}

/// `POST /auth/logout`: revokes the presented token.
pub async fn logout(gw: Arc<Gateway>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    use crate::client_api::{authenticate, json, token_refusal};
    let claims = match authenticate(&gw, &req) {
        Ok(c) => c,
        Err(e) => return token_refusal(&e),
    };
    let rec = RevokedToken {
        jti: claims.jti.clone(),
        exp: claims.exp,
        user: claims.sub.clone(),
        revoked: unix_now(),
    };
    let saved = gw.store.revoke_token(rec, unix_now()).await;
    if saved.is_err() {
        return crate::client_api::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not record the revocation; try again",
        );
    }
    gw.revoke_jti(&claims.jti);
    let ended = gw.sessions.kill_token(&claims.jti, "token_revoked");
    let mut ev = gw.event(EventType::AuthLogout);
    ev.user = Some(claims.sub.clone());
    ev.source = Some(peer.to_string());
    ev.detail = Some(format!(
        "session token {}; {ended} live sessions ended",
        claims.jti
    ));
    gw.audit.record_nowait(ev);
    let mut ev = gw.event(EventType::TokenRevoked);
    ev.user = Some(claims.sub.clone());
    ev.detail = Some(format!("session token {} (sign-out)", claims.jti));
    gw.audit.record_nowait(ev);
    json(
        StatusCode::OK,
        &serde_json::json!({"revoked": claims.jti, "sessions_ended": ended}),
    )
}
