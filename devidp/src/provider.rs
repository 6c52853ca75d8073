//! The OpenID provider's protocol logic, without I/O: a request (method, path, a few headers,
//! the whole body) and the current time go in, a [`Reply`] comes out. The HTTP layer in
//! `server.rs` only moves bytes; tests here drive expiry by passing the time.

use std::collections::HashMap;
use std::sync::Mutex;

use http::{Method, StatusCode};
use ring::rand::SystemRandom;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::form::{self, FormError, Params};
use crate::jws::{self, sha256, SigningKey};
use crate::pages;
use crate::{DevIdpConfig, DevIdpError, ACR_MFA, ACR_PWD};

/// How long an authorization code may be redeemed.
pub const CODE_TTL: u64 = 60;
/// Lifetime of ID tokens and access tokens.
pub const TOKEN_TTL: u64 = 600;
/// How long a login form stays usable.
const PENDING_TTL: u64 = 600;
/// Wrong passwords allowed on one login form before the request is refused.
const MAX_LOGIN_FAILURES: u32 = 5;
/// Caps on in-memory state, so a flood of requests cannot grow it without bound.
const MAX_PENDING: usize = 1024;
const MAX_CODES: usize = 1024;
const MAX_USED_CODES: usize = 16 * 1024;
const MAX_TOKENS: usize = 4096;
/// Longest `state` and `nonce` accepted (both are opaque client values).
const MAX_OPAQUE_LEN: usize = 1024;

const SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];

pub const CSP_BASE: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

/// What the HTTP layer sends back.
#[derive(Debug)]
pub enum Reply {
    Html {
        status: StatusCode,
        body: String,
        csp: String,
    },
    Redirect {
        status: StatusCode,
        location: String,
    },
    Json {
        status: StatusCode,
        body: Value,
        www_authenticate: Option<String>,
    },
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// The request as the provider sees it.
pub struct Req<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

struct User {
    username: String,
    name: String,
    email: String,
    groups: Vec<String>,
    mfa: bool,
    sub: String,
    username_digest: [u8; 32],
    password_digest: [u8; 32],
}

/// An authorization request waiting for the user to log in.
struct Pending {
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    expires: u64,
    failures: u32,
}

/// An issued, not yet redeemed authorization code.
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    scope: String,
    user: usize,
    auth_time: u64,
    expires: u64,
}

/// A redeemed code, remembered so a replay is recognised and revokes what it issued
/// (RFC 6749 §4.1.2).
struct UsedCode {
    access_token: Option<String>,
    forget_at: u64,
}

struct AccessGrant {
    user: usize,
    expires: u64,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    codes: HashMap<String, CodeGrant>,
    used_codes: HashMap<String, UsedCode>,
    tokens: HashMap<String, AccessGrant>,
}

impl State {
    fn prune(&mut self, now: u64) {
        self.pending.retain(|_, p| p.expires > now);
        self.codes.retain(|_, c| c.expires > now);
        self.used_codes.retain(|_, u| u.forget_at > now);
        self.tokens.retain(|_, t| t.expires > now);
    }
}

pub struct Provider {
    issuer: String,
    client_id: String,
    client_secret_digest: [u8; 32],
    redirect_uris: Vec<String>,
    /// CSP for the login page: the form posts to us, and its answer redirects to one of the
    /// registered redirect URIs. Browsers apply `form-action` to that redirect too, so the
    /// redirect URIs' origins are listed beside `'self'`.
    login_csp: String,
    users: Vec<User>,
    key: SigningKey,
    rng: SystemRandom,
    state: Mutex<State>,
}

/// A JSON OAuth error (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::Json {
        status,
        body: json!({ "error": error, "error_description": description }),
        www_authenticate: None,
    }
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Reply {
    Reply::Html {
        status,
        body: pages::error(title, message),
        csp: format!("{CSP_BASE}; form-action 'none'"),
    }
}

fn bad_request_page(message: &str) -> Reply {
    error_page(
        StatusCode::BAD_REQUEST,
        "Sign-in request not accepted",
        message,
    )
}

/// `scheme://authority` of an absolute http(s) URI, checked to be safe inside a CSP header.
pub fn origin_of(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    ok.then(|| &uri[..uri.len() - rest.len() + end])
}

fn valid_code_challenge(s: &str) -> bool {
    // An S256 challenge is base64url(SHA-256) without padding: exactly 43 characters.
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_code_verifier(s: &str) -> bool {
    // RFC 7636 §4.1: 43..=128 unreserved characters.
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

impl Provider {
    pub fn new(config: &DevIdpConfig, issuer: String) -> Result<Provider, DevIdpError> {
        let mut problems = Vec::new();
        if config.client_id.is_empty() {
            problems.push("client_id is empty".to_owned());
        }
        if config.client_secret.is_empty() {
            problems.push("client_secret is empty".to_owned());
        }
        if config.redirect_uris.is_empty() {
            problems.push("no redirect URI is registered".to_owned());
        }
        let mut origins: Vec<&str> = Vec::new();
        for uri in &config.redirect_uris {
            match origin_of(uri) {
                Some(o) if !uri.contains('#') && uri.bytes().all(|b| (0x21..=0x7e).contains(&b)) => {
                    if !origins.contains(&o) {
                        origins.push(o);
                    }
                }
                _ => problems.push(format!(
                    "redirect URI {uri:?} is not an absolute http(s) URI of printable ASCII without a fragment"
                )),
            }
        }
        if config.users.is_empty() {
            problems.push("no demo users".to_owned());
        }
        let mut users: Vec<User> = Vec::new();
        for u in &config.users {
            if u.username.is_empty() || u.password.is_empty() {
                problems.push("a demo user has an empty username or password".to_owned());
                continue;
            }
            if users.iter().any(|x| x.username == u.username) {
                problems.push(format!("demo user {:?} is listed twice", u.username));
                continue;
            }
            users.push(User {
                username: u.username.clone(),
                name: u.name.clone(),
                email: u.email.clone(),
                groups: u.groups.clone(),
                mfa: u.mfa,
                // Stable across restarts and opaque: derived from the username only.
                sub: format!(
                    "devidp-{}",
                    &jws::b64(&sha256(format!("postern-devidp/{}", u.username).as_bytes()))[..22]
                ),
                username_digest: sha256(u.username.as_bytes()),
                password_digest: sha256(u.password.as_bytes()),
            });
        }
        if !problems.is_empty() {
            return Err(DevIdpError::Config(problems.join("; ")));
        }
        let key = SigningKey::generate().map_err(|_| DevIdpError::KeyGeneration)?;
        Ok(Provider {
            login_csp: format!("{CSP_BASE}; form-action 'self' {}", origins.join(" ")),
            issuer,
            client_id: config.client_id.clone(),
            client_secret_digest: sha256(config.client_secret.as_bytes()),
            redirect_uris: config.redirect_uris.clone(),
            users,
            key,
            rng: SystemRandom::new(),
            state: Mutex::new(State::default()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing service, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn random(&self) -> Option<String> {
        jws::random_token(&self.rng).ok()
    }

    pub fn handle(&self, req: &Req<'_>, now: u64) -> Reply {
        let allow = match req.path {
            "/.well-known/openid-configuration" | "/jwks" | "/" => "GET",
            "/authorize" | "/userinfo" => "GET, POST",
            "/login" | "/token" => "POST",
            _ => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    "Page not found",
                    "There is no page at this address.",
                )
            }
        };
        if !allow.split(", ").any(|m| m == req.method.as_str()) {
            return Reply::MethodNotAllowed { allow };
        }
        match req.path {
            "/.well-known/openid-configuration" => self.discovery(),
            "/jwks" => self.jwks(),
            "/authorize" if req.method == Method::POST => {
                if !is_form(req.content_type) {
                    return bad_request_page("The sign-in request was not a form.");
                }
                self.authorize(Params::parse(req.body), now)
            }
            "/authorize" => {
                self.authorize(Params::parse(req.query.unwrap_or_default().as_bytes()), now)
            }
            "/login" => self.login(req, now),
            "/token" => self.token(req, now),
            "/userinfo" => self.userinfo(req.authorization, now),
            _ => Reply::Html {
                status: StatusCode::OK,
                body: pages::message(
                    "Postern development identity provider",
                    "This is an OpenID Connect provider for the Postern demo. Applications send \
                     you here to sign in; there is nothing to do on this page.",
                    None,
                ),
                csp: format!("{CSP_BASE}; form-action 'none'"),
            },
        }
    }

    fn discovery(&self) -> Reply {
        let iss = &self.issuer;
        Reply::Json {
            status: StatusCode::OK,
            body: json!({
                "issuer": iss,
                "authorization_endpoint": format!("{iss}/authorize"),
                "token_endpoint": format!("{iss}/token"),
                "userinfo_endpoint": format!("{iss}/userinfo"),
                "jwks_uri": format!("{iss}/jwks"),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [jws::ALG],
                "scopes_supported": SCOPES,
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": [
                    "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
                    "name", "email", "email_verified", "groups", "amr", "acr",
                ],
                "acr_values_supported": [ACR_MFA, ACR_PWD],
                "claims_parameter_supported": false,
                "request_parameter_supported": false,
                "request_uri_parameter_supported": false,
                "authorization_response_iss_parameter_supported": true,
            }),
            www_authenticate: None,
        }
    }

    fn jwks(&self) -> Reply {
        Reply::Json {
            status: StatusCode::OK,
            body: json!({ "keys": [self.key.jwk()] }),
            www_authenticate: None,
        }
    }

    fn authorize(&self, params: Result<Params, FormError>, now: u64) -> Reply {
        let params = match params {
            Ok(p) => p,
            Err(e) => return bad_request_page(&format!("The sign-in request is malformed: {e}.")),
        };
        // Until client_id and redirect_uri are known good, errors are shown here and never
        // redirected (RFC 6749 §4.1.2.1).
        let client_id = match params.get("client_id") {
            Ok(Some(c)) => c,
            Ok(None) => return bad_request_page("The sign-in request names no application."),
            Err(e) => return bad_request_page(&format!("The sign-in request is malformed: {e}.")),
        };
        if client_id != self.client_id {
            return bad_request_page(&format!(
                "The application {client_id:?} is not registered with this identity provider."
            ));
        }
        let redirect_uri = match params.get("redirect_uri") {
            Ok(Some(r)) => r,
            Ok(None) => {
                return bad_request_page("The sign-in request does not say where to return.")
            }
            Err(e) => return bad_request_page(&format!("The sign-in request is malformed: {e}.")),
        };
        if !self.redirect_uris.iter().any(|r| r == redirect_uri) {
            warn!(
                redirect_uri,
                "authorize: redirect URI is not registered; not redirecting"
            );
            return bad_request_page(
                "The address to return to after sign-in is not registered for this application.",
            );
        }

        // From here on, errors go back to the client.
        let state = params.get("state").ok().flatten();
        let fail = |error: &str, description: &str| {
            debug!(error, description, "authorize: refused");
            self.redirect_error(redirect_uri, state, error, description)
        };
        let get = |name: &str| params.get(name);
        let (
            Ok(response_type),
            Ok(scope),
            Ok(challenge),
            Ok(method),
            Ok(nonce),
            Ok(prompt),
            Ok(response_mode),
            Ok(request),
            Ok(request_uri),
            Ok(state),
        ) = (
            get("response_type"),
            get("scope"),
            get("code_challenge"),
            get("code_challenge_method"),
            get("nonce"),
            get("prompt"),
            get("response_mode"),
            get("request"),
            get("request_uri"),
            get("state"),
        )
        else {
            return fail("invalid_request", "a parameter is given more than once");
        };
        if request.is_some() {
            return fail("request_not_supported", "request objects are not supported");
        }
        if request_uri.is_some() {
            return fail("request_uri_not_supported", "request_uri is not supported");
        }
        match response_type {
            Some("code") => {}
            None => return fail("invalid_request", "response_type is required"),
            Some(_) => {
                return fail(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                )
            }
        }
        if !matches!(response_mode, None | Some("query")) {
            return fail("invalid_request", "only response_mode=query is supported");
        }
        let scopes: Vec<&str> = scope.unwrap_or_default().split(' ').collect();
        if !scopes.contains(&"openid") {
            return fail("invalid_scope", "the openid scope is required");
        }
        // Grant the supported scopes that were asked for; ignore the rest (RFC 6749 §3.3).
        let granted: Vec<&str> = SCOPES
            .iter()
            .copied()
            .filter(|s| scopes.contains(s))
            .collect();
        match method {
            Some("S256") => {}
            None => {
                return fail(
                    "invalid_request",
                    "PKCE is required: send code_challenge_method=S256",
                )
            }
            Some(_) => {
                return fail(
                    "invalid_request",
                    "only code_challenge_method=S256 is supported",
                )
            }
        }
        let Some(challenge) = challenge.filter(|c| valid_code_challenge(c)) else {
            return fail(
                "invalid_request",
                "PKCE is required: code_challenge must be a base64url SHA-256 digest",
            );
        };
        if state.is_some_and(|s| s.len() > MAX_OPAQUE_LEN)
            || nonce.is_some_and(|n| n.len() > MAX_OPAQUE_LEN)
        {
            return fail("invalid_request", "state or nonce is too long");
        }
        if prompt.is_some_and(|p| p.split(' ').any(|v| v == "none")) {
            return fail(
                "login_required",
                "this provider always shows its login form",
            );
        }

        let Some(request_id) = self.random() else {
            return fail("server_error", "no randomness available");
        };
        {
            let mut st = self.state();
            st.prune(now);
            if st.pending.len() >= MAX_PENDING {
                warn!("authorize: too many sign-ins in progress");
                return fail(
                    "temporarily_unavailable",
                    "too many sign-ins in progress; try again in a few minutes",
                );
            }
            st.pending.insert(
                request_id.clone(),
                Pending {
                    redirect_uri: redirect_uri.to_owned(),
                    state: state.map(str::to_owned),
                    nonce: nonce.map(str::to_owned),
                    code_challenge: challenge.to_owned(),
                    scope: granted.join(" "),
                    expires: now + PENDING_TTL,
                    failures: 0,
                },
            );
        }
        self.login_page(StatusCode::OK, &request_id, "", None)
    }

    fn login_page(
        &self,
        status: StatusCode,
        rid: &str,
        username: &str,
        error: Option<&str>,
    ) -> Reply {
        Reply::Html {
            status,
            body: pages::login(&pages::LoginPage {
                request_id: rid,
                client_id: &self.client_id,
                username,
                error,
                users: self
                    .users
                    .iter()
                    .map(|u| pages::UserHint {
                        username: &u.username,
                        groups: &u.groups,
                        mfa: u.mfa,
                    })
                    .collect(),
            }),
            csp: self.login_csp.clone(),
        }
    }

    fn redirect_error(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &str,
        description: &str,
    ) -> Reply {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            params.push(("state", s));
        }
        params.push(("iss", &self.issuer));
        // 303 (not 302): several of these answer the login form's POST.
        Reply::Redirect {
            status: StatusCode::SEE_OTHER,
            location: form::with_query(redirect_uri, &params),
        }
    }

    /// Compares the credentials with every user's, in time independent of which user (if
    /// any) matches and of where the strings differ.
    fn check_credentials(&self, username: &str, password: &str) -> Option<usize> {
        let u = sha256(username.as_bytes());
        let p = sha256(password.as_bytes());
        let mut found = None;
        for (i, user) in self.users.iter().enumerate() {
            let ok = user.username_digest.ct_eq(&u) & user.password_digest.ct_eq(&p);
            if bool::from(ok) {
                found = Some(i);
            }
        }
        found
    }

    fn login(&self, req: &Req<'_>, now: u64) -> Reply {
        if !is_form(req.content_type) {
            return bad_request_page("The sign-in form was not sent as a form.");
        }
        let params = match Params::parse(req.body) {
            Ok(p) => p,
            Err(e) => return bad_request_page(&format!("The sign-in form is malformed: {e}.")),
        };
        let (Ok(rid), Ok(username), Ok(password), Ok(action)) = (
            params.get("request_id"),
            params.get("username"),
            params.get("password"),
            params.get("action"),
        ) else {
            return bad_request_page("The sign-in form repeats a field.");
        };
        let expired = || {
            bad_request_page(
                "This sign-in form has expired or was already used. \
                 Go back to the application and sign in again.",
            )
        };
        let Some(rid) = rid else {
            return expired();
        };
        let username = username.unwrap_or_default();

        let mut st = self.state();
        st.prune(now);
        let Some(pending) = st.pending.get_mut(rid) else {
            return expired();
        };
        if action == Some("cancel") {
            let Some(p) = st.pending.remove(rid) else {
                return expired();
            };
            info!("login cancelled by the user");
            return self.redirect_error(
                &p.redirect_uri,
                p.state.as_deref(),
                "access_denied",
                "the user cancelled the sign-in",
            );
        }
        let Some(user) = self.check_credentials(username, password.unwrap_or_default()) else {
            pending.failures += 1;
            warn!(
                user = username,
                failures = pending.failures,
                "login failed: wrong username or password"
            );
            if pending.failures >= MAX_LOGIN_FAILURES {
                let Some(p) = st.pending.remove(rid) else {
                    return expired();
                };
                return self.redirect_error(
                    &p.redirect_uri,
                    p.state.as_deref(),
                    "access_denied",
                    "too many wrong passwords",
                );
            }
            return self.login_page(
                StatusCode::OK,
                rid,
                username,
                Some("Wrong username or password. Try again."),
            );
        };
        let Some(p) = st.pending.remove(rid) else {
            return expired();
        };
        let Some(code) = self.random() else {
            return self.redirect_error(
                &p.redirect_uri,
                p.state.as_deref(),
                "server_error",
                "no randomness available",
            );
        };
        if st.codes.len() >= MAX_CODES || st.used_codes.len() >= MAX_USED_CODES {
            return self.redirect_error(
                &p.redirect_uri,
                p.state.as_deref(),
                "temporarily_unavailable",
                "too many unredeemed codes; try again in a minute",
            );
        }
        let u = &self.users[user];
        info!(user = %u.username, groups = ?u.groups, mfa = u.mfa, "login succeeded; issuing code");
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = p.state.as_deref() {
            params.push(("state", s));
        }
        params.push(("iss", &self.issuer));
        let location = form::with_query(&p.redirect_uri, &params);
        st.codes.insert(
            code,
            CodeGrant {
                client_id: self.client_id.clone(),
                redirect_uri: p.redirect_uri,
                code_challenge: p.code_challenge,
                nonce: p.nonce,
                scope: p.scope,
                user,
                auth_time: now,
                expires: now + CODE_TTL,
            },
        );
        Reply::Redirect {
            status: StatusCode::SEE_OTHER,
            location,
        }
    }

    /// Client authentication by HTTP Basic (RFC 6749 §2.3.1: id and secret form-encoded, then
    /// base64) or by `client_id`/`client_secret` in the body.
    fn authenticate_client(
        &self,
        authorization: Option<&str>,
        params: &Params,
    ) -> Result<(), Reply> {
        let invalid_client = |description: &str| Reply::Json {
            status: StatusCode::UNAUTHORIZED,
            body: json!({ "error": "invalid_client", "error_description": description }),
            www_authenticate: Some("Basic realm=\"postern-devidp\"".to_owned()),
        };
        let invalid_request = |description: &str| {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
        };
        let (Ok(body_id), Ok(body_secret)) = (params.get("client_id"), params.get("client_secret"))
        else {
            return Err(invalid_request("a parameter is given more than once"));
        };
        let basic = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        });
        let (id, secret) = match (basic, body_secret) {
            (Some(_), Some(_)) => {
                return Err(invalid_request(
                    "use one client authentication method, not two",
                ))
            }
            (Some(b64), None) => {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                    return Err(invalid_client("malformed Basic credentials"));
                };
                let (Ok(id), Ok(secret)) =
                    (form::decode(id.as_bytes()), form::decode(secret.as_bytes()))
                else {
                    return Err(invalid_client("malformed Basic credentials"));
                };
                if body_id.is_some_and(|b| b != id) {
                    return Err(invalid_client(
                        "client_id differs from the Basic credentials",
                    ));
                }
                (id, secret)
            }
            (None, Some(secret)) => match body_id {
                Some(id) => (id.to_owned(), secret.to_owned()),
                None => return Err(invalid_client("client_id is missing")),
            },
            (None, None) => return Err(invalid_client("client authentication is required")),
        };
        let secret_ok: bool = self
            .client_secret_digest
            .ct_eq(&sha256(secret.as_bytes()))
            .into();
        if id != self.client_id || !secret_ok {
            warn!(client_id = %id, "token: client authentication failed");
            return Err(invalid_client("unknown client or wrong secret"));
        }
        Ok(())
    }

    fn token(&self, req: &Req<'_>, now: u64) -> Reply {
        let bad = |error: &str, description: &str| {
            debug!(error, description, "token: refused");
            oauth_error(StatusCode::BAD_REQUEST, error, description)
        };
        if !is_form(req.content_type) {
            return bad(
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            );
        }
        let params = match Params::parse(req.body) {
            Ok(p) => p,
            Err(e) => return bad("invalid_request", &e.to_string()),
        };
        if let Err(reply) = self.authenticate_client(req.authorization, &params) {
            return reply;
        }
        let (Ok(grant_type), Ok(code), Ok(redirect_uri), Ok(verifier)) = (
            params.get("grant_type"),
            params.get("code"),
            params.get("redirect_uri"),
            params.get("code_verifier"),
        ) else {
            return bad("invalid_request", "a parameter is given more than once");
        };
        match grant_type {
            Some("authorization_code") => {}
            None => return bad("invalid_request", "grant_type is required"),
            Some(_) => {
                return bad(
                    "unsupported_grant_type",
                    "only authorization_code is supported",
                )
            }
        }
        let Some(code) = code else {
            return bad("invalid_request", "code is required");
        };
        let Some(redirect_uri) = redirect_uri else {
            return bad("invalid_request", "redirect_uri is required");
        };
        let Some(verifier) = verifier else {
            return bad("invalid_request", "code_verifier is required (PKCE)");
        };

        let mut st = self.state();
        st.prune(now);
        // A code is consumed by its first redemption attempt, successful or not.
        let Some(grant) = st.codes.remove(code) else {
            if let Some(used) = st.used_codes.get_mut(code) {
                if let Some(token) = used.access_token.take() {
                    st.tokens.remove(&token);
                }
                warn!("token: authorization code replayed; revoked the tokens it issued");
                return bad("invalid_grant", "the authorization code was already used");
            }
            return bad(
                "invalid_grant",
                "the authorization code is unknown or expired",
            );
        };
        st.used_codes.insert(
            code.to_owned(),
            UsedCode {
                access_token: None,
                forget_at: now + TOKEN_TTL,
            },
        );
        if grant.expires <= now {
            return bad("invalid_grant", "the authorization code has expired");
        }
        if grant.client_id != self.client_id {
            return bad("invalid_grant", "the code was issued to another client");
        }
        if grant.redirect_uri != redirect_uri {
            return bad(
                "invalid_grant",
                "redirect_uri differs from the authorization request",
            );
        }
        let computed = jws::b64(&sha256(verifier.as_bytes()));
        let pkce_ok: bool = computed
            .as_bytes()
            .ct_eq(grant.code_challenge.as_bytes())
            .into();
        if !valid_code_verifier(verifier) || !pkce_ok {
            return bad(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            );
        }
        if st.tokens.len() >= MAX_TOKENS {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many live access tokens",
            );
        }
        let Some(access_token) = self.random() else {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "no randomness available",
            );
        };
        let user = &self.users[grant.user];
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self.client_id,
            "exp": now + TOKEN_TTL,
            "iat": now,
            "auth_time": grant.auth_time,
            "at_hash": jws::at_hash(&access_token),
            "name": user.name,
            "email": user.email,
            "email_verified": true,
            "groups": user.groups,
            "amr": if user.mfa { vec!["pwd", "mfa"] } else { vec!["pwd"] },
            "acr": if user.mfa { ACR_MFA } else { ACR_PWD },
        });
        if let (Some(nonce), Some(obj)) = (&grant.nonce, claims.as_object_mut()) {
            obj.insert("nonce".to_owned(), Value::String(nonce.clone()));
        }
        let Ok(id_token) = self.key.sign_jwt(&claims) else {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing the ID token failed",
            );
        };
        st.tokens.insert(
            access_token.clone(),
            AccessGrant {
                user: grant.user,
                expires: now + TOKEN_TTL,
            },
        );
        if let Some(used) = st.used_codes.get_mut(code) {
            used.access_token = Some(access_token.clone());
        }
        info!(user = %user.username, "token: issued ID token and access token");
        Reply::Json {
            status: StatusCode::OK,
            body: json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": TOKEN_TTL,
                "id_token": id_token,
                "scope": grant.scope,
            }),
            www_authenticate: None,
        }
    }

    fn userinfo(&self, authorization: Option<&str>, now: u64) -> Reply {
        let unauthorized = |challenge: String, description: &str| Reply::Json {
            status: StatusCode::UNAUTHORIZED,
            body: json!({ "error": "invalid_token", "error_description": description }),
            www_authenticate: Some(challenge),
        };
        let token = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
        let Some(token) = token else {
            return unauthorized(
                "Bearer realm=\"postern-devidp\"".to_owned(),
                "a Bearer access token is required",
            );
        };
        let mut st = self.state();
        st.prune(now);
        let Some(grant) = st.tokens.get(token) else {
            return unauthorized(
                "Bearer realm=\"postern-devidp\", error=\"invalid_token\"".to_owned(),
                "the access token is unknown, expired or revoked",
            );
        };
        let user = &self.users[grant.user];
        Reply::Json {
            status: StatusCode::OK,
            body: json!({
                "sub": user.sub,
                "name": user.name,
                "email": user.email,
                "email_verified": true,
                "groups": user.groups,
            }),
            www_authenticate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn provider() -> Provider {
        let cfg = DevIdpConfig::demo("gw", "s3cret", "http://127.0.0.1:9/cb");
        Provider::new(&cfg, "http://127.0.0.1:1".into()).unwrap()
    }

    fn call(p: &Provider, method: Method, path: &str, query: &str, body: &str, now: u64) -> Reply {
        p.handle(
            &Req {
                method: &method,
                path,
                query: Some(query),
                authorization: None,
                content_type: Some("application/x-www-form-urlencoded"),
                body: body.as_bytes(),
            },
            now,
        )
    }

    /// Runs authorize + login and returns the code.
    fn code_for(p: &Provider, now: u64) -> String {
        let challenge = jws::b64(&sha256(VERIFIER.as_bytes()));
        let q = format!(
            "client_id=gw&redirect_uri={}&response_type=code&scope=openid&state=s&nonce=n\
             &code_challenge={challenge}&code_challenge_method=S256",
            form::encode("http://127.0.0.1:9/cb")
        );
        let Reply::Html { body, .. } = call(p, Method::GET, "/authorize", &q, "", now) else {
            panic!("expected the login page");
        };
        let rid = body
            .split("name=\"request_id\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        let form = format!("request_id={rid}&username=alice&password=alice");
        let Reply::Redirect { location, .. } = call(p, Method::POST, "/login", "", &form, now)
        else {
            panic!("expected a redirect");
        };
        let params = Params::parse(location.split_once('?').unwrap().1.as_bytes()).unwrap();
        params.get("code").unwrap().unwrap().to_owned()
    }

    fn redeem(p: &Provider, code: &str, now: u64) -> Reply {
        let body = format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={VERIFIER}\
             &client_id=gw&client_secret=s3cret",
            form::encode("http://127.0.0.1:9/cb")
        );
        call(p, Method::POST, "/token", "", &body, now)
    }

    fn oauth_error_of(r: &Reply) -> (StatusCode, String) {
        match r {
            Reply::Json { status, body, .. } => {
                (*status, body["error"].as_str().unwrap_or("").to_owned())
            }
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn rfc7636_example_verifier_matches_its_challenge() {
        assert_eq!(
            jws::b64(&sha256(VERIFIER.as_bytes())),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn code_expires_after_its_ttl() {
        let p = provider();
        let code = code_for(&p, 1000);
        let r = redeem(&p, &code, 1000 + CODE_TTL);
        assert_eq!(
            oauth_error_of(&r),
            (StatusCode::BAD_REQUEST, "invalid_grant".into())
        );

        let code = code_for(&p, 2000);
        let r = redeem(&p, &code, 2000 + CODE_TTL - 1);
        assert!(
            matches!(
                r,
                Reply::Json {
                    status: StatusCode::OK,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn replay_revokes_the_access_token() {
        let p = provider();
        let code = code_for(&p, 1000);
        let Reply::Json { body, .. } = redeem(&p, &code, 1001) else {
            panic!()
        };
        let at = body["access_token"].as_str().unwrap().to_owned();
        let bearer = format!("Bearer {at}");
        let info = p.userinfo(Some(&bearer), 1002);
        assert!(matches!(
            info,
            Reply::Json {
                status: StatusCode::OK,
                ..
            }
        ));

        let r = redeem(&p, &code, 1003);
        assert_eq!(oauth_error_of(&r).1, "invalid_grant");
        let info = p.userinfo(Some(&bearer), 1004);
        assert_eq!(
            oauth_error_of(&info),
            (StatusCode::UNAUTHORIZED, "invalid_token".into())
        );
    }

    #[test]
    fn login_form_expires_and_is_single_use() {
        let p = provider();
        let challenge = jws::b64(&sha256(VERIFIER.as_bytes()));
        let q = format!(
            "client_id=gw&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code\
             &scope=openid&code_challenge={challenge}&code_challenge_method=S256"
        );
        let Reply::Html { body, .. } = call(&p, Method::GET, "/authorize", &q, "", 0) else {
            panic!()
        };
        let rid = body
            .split("name=\"request_id\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        let form = format!("request_id={rid}&username=lee&password=lee");
        let r = call(&p, Method::POST, "/login", "", &form, PENDING_TTL);
        assert!(
            matches!(&r, Reply::Html { status: StatusCode::BAD_REQUEST, body, .. } if body.contains("expired")),
            "{r:?}"
        );
    }

    #[test]
    fn too_many_wrong_passwords_end_the_request() {
        let p = provider();
        let challenge = jws::b64(&sha256(VERIFIER.as_bytes()));
        let q = format!(
            "client_id=gw&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code\
             &scope=openid&state=st&code_challenge={challenge}&code_challenge_method=S256"
        );
        let Reply::Html { body, .. } = call(&p, Method::GET, "/authorize", &q, "", 0) else {
            panic!()
        };
        let rid = body
            .split("name=\"request_id\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        let form = format!("request_id={rid}&username=alice&password=nope");
        for _ in 1..MAX_LOGIN_FAILURES {
            let r = call(&p, Method::POST, "/login", "", &form, 1);
            assert!(
                matches!(&r, Reply::Html { status: StatusCode::OK, body, .. } if body.contains("Wrong username or password")),
                "{r:?}"
            );
        }
        let r = call(&p, Method::POST, "/login", "", &form, 1);
        let Reply::Redirect { location, .. } = r else {
            panic!("{r:?}")
        };
        assert!(location.starts_with("http://127.0.0.1:9/cb?error=access_denied&"));
        assert!(location.contains("state=st"));
    }

    #[test]
    fn config_problems_are_all_reported() {
        let mut cfg = DevIdpConfig::demo("", "", "ftp://x");
        cfg.users.push(cfg.users[0].clone());
        let Err(DevIdpError::Config(msg)) = Provider::new(&cfg, "http://127.0.0.1:1".into()) else {
            panic!("expected a config error")
        };
        assert!(msg.contains("client_id is empty"), "{msg}");
        assert!(msg.contains("client_secret is empty"), "{msg}");
        assert!(msg.contains("ftp://x"), "{msg}");
        assert!(msg.contains("listed twice"), "{msg}");
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/cb?x=1"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin_of("https://[::1]:1/"), Some("https://[::1]:1"));
        assert_eq!(origin_of("https://gw.example"), Some("https://gw.example"));
        assert_eq!(origin_of("http://a;b/"), None);
        assert_eq!(origin_of("http:///x"), None);
        assert_eq!(origin_of("javascript:alert(1)"), None);
    }
}
