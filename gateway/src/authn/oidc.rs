//! Sign-in: the gateway as an OpenID Connect relying party (authorization code + PKCE S256).
//!
//! Flow state (OIDC `state`, `nonce`, PKCE verifier, and the CLI's own loopback redirect and
//! PKCE challenge) travels in a short-lived cookie sealed with AES-256-GCM under a key kept in
//! the state directory, so a sign-in in progress is bound to the browser that started it and the
//! gateway stores nothing per attempt. The `state` in the IdP's redirect must equal the one in
//! the cookie (constant-time). The ID token is verified by `openidconnect` (signature against the
//! IdP's JWKS, `iss`, `aud`, `exp`, `nonce`); asymmetric algorithms only, so `none` and
//! HS256-with-the-public-key are refused. On an unknown `kid` the JWKS is fetched again once
//! (IdP key rotation). If the IdP is down at start, the gateway starts anyway and keeps retrying
//! discovery with backoff; sign-in answers 503 until it succeeds.
//!
//! The CLI (`postern login`) receives its session token through its own loopback redirect: the
//! gateway hands the browser a one-time code (60 s) bound to the CLI's PKCE challenge, and only
//! the process holding the verifier can redeem it (`POST /auth/token`). Codes are kept in the
//! [`StateStore`](crate::state::StateStore) (by the code's SHA-256), so the CLI may redeem its
//! code at any replica that shares the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse,
};
use ring::aead::{Aad, LessSafeKey, Nonce as AeadNonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::config::OidcConfig;
use crate::http::client::{HttpClient, HttpError};
use crate::state::{CliCodeRec, Refusal, SharedStore, StoreError};

/// Claims beyond the standard ones, kept by name so `groups_claim` etc. are configurable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in failed; `public` is what the person sees, the audit gets both.
#[derive(Debug, Clone)]
pub struct AuthError {
    pub status: http::StatusCode,
    /// Stable code for audit and tests, e.g. `idp_unavailable`, `state_mismatch`.
    pub code: &'static str,
    /// A sentence for the clinician.
    pub public: String,
    /// Technical detail for the audit log and the operator.
    pub detail: String,
}

impl AuthError {
    fn new(
        status: http::StatusCode,
        code: &'static str,
        public: &str,
        detail: impl Into<String>,
    ) -> AuthError {
        AuthError {
            status,
            code,
            public: public.to_owned(),
            detail: detail.into(),
        }
    }
}

fn unavailable(detail: impl Into<String>) -> AuthError {
    AuthError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "idp_unavailable",
        "The hospital's sign-in service cannot be reached just now. Please try again in a few minutes; if it keeps happening, contact the service desk.",
        detail,
    )
}

fn bad_request(code: &'static str, public: &str, detail: impl Into<String>) -> AuthError {
    AuthError::new(http::StatusCode::BAD_REQUEST, code, public, detail)
}

/// Who signed in, as the IdP asserted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// DICOM calling AE titles from `oidc.ae_title_claim` (valid titles only, at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ae_titles: Vec<String>,
    pub mfa: bool,
    pub auth_time: Option<u64>,
    pub issuer: String,
    /// A browser sign-in's binding (SHA-256 of the nonce in its `__Host-postern-web` cookie),
    /// set by the callback: the end of the sign-in hands that browser a one-time ticket for
    /// the token (web applications, `crate::web::signin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
}

/// The CLI's side of a sign-in, carried through the flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CliRequest {
    /// `http://127.0.0.1:PORT/callback` (loopback only).
    pub redirect: String,
    /// base64url(SHA-256(verifier)) of the CLI's own PKCE pair.
    pub challenge: String,
    /// The CLI's state, echoed back to it.
    pub state: String,
    /// The confirmation code `postern login` printed (`cli_code`, validated `XXXX-XXXX`): the
    /// device page shows it and starts no ceremony until the person confirms it.
    pub code: postern_proto::confirm::ConfirmCode,
    /// The posture report `postern login` collected (`cli_posture`), to be signed by the
    /// device key in the WebAuthn ceremony.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<postern_proto::posture::PostureReport>,
}

/// What the sealed cookie holds.
#[derive(Debug, Serialize, Deserialize)]
struct FlowState {
    state: String,
    nonce: String,
    pkce_verifier: String,
    cli: Option<CliRequest>,
    exp: u64,
}

/// Cookie name; path-scoped to /auth.
pub const COOKIE: &str = "postern_signin";
const FLOW_TTL: u64 = 600;
/// Lifetime of a one-time CLI code, seconds (at most 10 000 are outstanding: the store's cap).
const CLI_CODE_TTL: u64 = 60;

pub struct Oidc {
    pub config: OidcConfig,
    secret: ClientSecret,
    http: HttpClient,
    client: RwLock<Option<Arc<OidcClient>>>,
    cookie_key: LessSafeKey,
    /// Where one-time CLI codes are kept.
    store: SharedStore,
    clock: SharedClock,
    /// The sign-in age the running policy needs (its shortest `auth.max_age`), sent as the
    /// OIDC `max_age`; set once the policy is loaded ([`Oidc::follow_max_age`]).
    max_age: std::sync::OnceLock<MaxAgeSource>,
}

/// Asks the running policy for the sign-in age it needs (read at every sign-in start, so a
/// reloaded policy applies at once).
pub type MaxAgeSource = Box<dyn Fn() -> Option<Duration> + Send + Sync>;

fn random_b64(n: usize) -> Result<String, AuthError> {
    postern_proto::ids::random_bytes(n)
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|_| {
            AuthError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
                "random number generator failed",
            )
        })
}

/// base64url(SHA-256(verifier)), as in RFC 7636 S256.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Accepts only `http://127.0.0.1:PORT/…` or `http://[::1]:PORT/…` for the CLI's redirect.
pub fn valid_cli_redirect(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_ok = authority.starts_with("127.0.0.1:") || authority.starts_with("[::1]:");
    let port_ok = authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| p > 0);
    host_ok && port_ok && url.len() <= 256 && !url.contains(['#', '@', ' ', '\r', '\n'])
}

impl Oidc {
    /// Prepares the relying party; discovery happens in [`Oidc::discover`].
    pub fn new(
        config: OidcConfig,
        state_dir: &std::path::Path,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Oidc, String> {
        let secret = ClientSecret::new(config.read_secret()?.0);
        let roots = match &config.ca_file {
            Some(p) => {
                let pem = std::fs::read_to_string(p)
                    .map_err(|e| format!("reading oidc.ca_file {}: {e}", p.display()))?;
                postern_net::tls::certs_from_pem(&pem, &p.display().to_string())
                    .map_err(|e| e.to_string())?
            }
            None => Vec::new(),
        };
        let http =
            HttpClient::new(roots, config.insecure_http_issuer).map_err(|e| e.to_string())?;
        let key_path = state_dir.join("signin-cookie.key");
        if !key_path.exists() {
            let key = postern_proto::ids::random_bytes(32)
                .map_err(|_| "random number generator failed".to_owned())?;
            postern_net::fsutil::write_atomic(&key_path, &key, 0o600)
                .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
        }
        let key =
            std::fs::read(&key_path).map_err(|e| format!("reading {}: {e}", key_path.display()))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| format!("{} is not a 32-byte key", key_path.display()))?;
        Ok(Oidc {
            config,
            secret,
            http,
            client: RwLock::new(None),
            cookie_key: LessSafeKey::new(unbound),
            store,
            clock,
            max_age: std::sync::OnceLock::new(),
        })
    }

    /// From now on each sign-in asks the IdP for a sign-in no older than `source` says (OIDC
    /// `max_age`), when it says anything. Set once; later calls are ignored.
    pub fn follow_max_age(&self, source: MaxAgeSource) {
        let _ = self.max_age.set(source);
    }

    /// Fetches the discovery document and JWKS (again) and installs the client.
    pub async fn discover(&self) -> Result<Arc<OidcClient>, AuthError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| unavailable(format!("issuer URL: {e}")))?;
        let http = self.http.clone();
        let call = move |req: http::Request<Vec<u8>>| {
            let http = http.clone();
            async move { http.call(req).await }
        };
        let metadata: CoreProviderMetadata = CoreProviderMetadata::discover_async(issuer, &call)
            .await
            .map_err(|e| {
                unavailable(format!(
                    "discovery at {}: {}",
                    self.config.issuer,
                    postern_proto::report::render(&e)
                ))
            })?;
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| unavailable(format!("redirect_url: {e}")))?;
        let client: OidcClient = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(redirect);
        let client = Arc::new(client);
        if let Ok(mut c) = self.client.write() {
            *c = Some(client.clone());
        }
        Ok(client)
    }

    fn current(&self) -> Option<Arc<OidcClient>> {
        self.client.read().ok().and_then(|c| c.clone())
    }

    pub fn ready(&self) -> bool {
        self.current().is_some()
    }

    /// Keeps retrying discovery with backoff until it succeeds (IdP down at start).
    pub async fn keep_discovering(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut wait = Duration::from_millis(250);
        while !self.ready() {
            match self.discover().await {
                Ok(_) => info!(issuer = %self.config.issuer, "identity provider discovered"),
                Err(e) => {
                    warn!(issuer = %self.config.issuer, error = %e.detail, "identity provider unavailable; sign-in answers 503 until it is back");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {},
                        _ = shutdown.cancelled() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn client(&self) -> Result<Arc<OidcClient>, AuthError> {
        match self.current() {
            Some(c) => Ok(c),
            None => self.discover().await,
        }
    }

    fn seal(&self, flow: &FlowState) -> Result<String, AuthError> {
        let internal = |d: &str| {
            AuthError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
                d,
            )
        };
        let mut data = serde_json::to_vec(flow).map_err(|e| internal(&e.to_string()))?;
        let nonce_bytes = postern_proto::ids::random_bytes(12).map_err(|_| internal("rng"))?;
        let mut nb = [0u8; 12];
        nb.copy_from_slice(&nonce_bytes);
        self.cookie_key
            .seal_in_place_append_tag(
                AeadNonce::assume_unique_for_key(nb),
                Aad::from(COOKIE),
                &mut data,
            )
            .map_err(|_| internal("seal"))?;
        let mut out = nb.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The `postern login` waiting on the sign-in in `cookie`, if `state` is that sign-in's
    /// (the IdP echoes it even on an error): where to tell the CLI that its sign-in failed.
    pub fn cli_of(&self, cookie: Option<&str>, state: Option<&str>) -> Option<CliRequest> {
        let flow = self.open(cookie?)?;
        postern_proto::ids::ct_eq(state?.as_bytes(), flow.state.as_bytes()).then_some(())?;
        flow.cli
    }

    fn open(&self, cookie: &str) -> Option<FlowState> {
        let mut raw = URL_SAFE_NO_PAD.decode(cookie.as_bytes()).ok()?;
        if raw.len() < 12 + 16 || raw.len() > 8192 {
            return None;
        }
        let mut nb = [0u8; 12];
        nb.copy_from_slice(&raw[..12]);
        let plain = self
            .cookie_key
            .open_in_place(
                AeadNonce::assume_unique_for_key(nb),
                Aad::from(COOKIE),
                &mut raw[12..],
            )
            .ok()?;
        let flow: FlowState = serde_json::from_slice(plain).ok()?;
        (flow.exp > self.clock.unix()).then_some(flow)
    }

    /// Starts a sign-in: returns (IdP authorization URL, sealed cookie value).
    pub async fn start(&self, cli: Option<CliRequest>) -> Result<(String, String), AuthError> {
        if let Some(c) = &cli {
            if !valid_cli_redirect(&c.redirect) {
                return Err(bad_request(
                    "bad_cli_redirect",
                    "This sign-in link is not valid. Start again from the postern command.",
                    format!("cli redirect {:?} is not a loopback http URL", c.redirect),
                ));
            }
            if c.challenge.len() != 43 || c.state.is_empty() || c.state.len() > 128 {
                return Err(bad_request(
                    "bad_cli_request",
                    "This sign-in link is not valid. Start again from the postern command.",
                    "malformed cli challenge or state",
                ));
            }
        }
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        // A policy rule on sign-in age: ask the IdP to re-authenticate a sign-in older than
        // that (and, per OIDC Core 3.1.2.1, to put `auth_time` in the ID token).
        if let Some(age) = self.max_age.get().and_then(|f| f()) {
            req = req.set_max_age(age);
        }
        let (url, state, nonce) = req.url();
        let cookie = self.seal(&FlowState {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            cli,
            exp: self.clock.unix() + FLOW_TTL,
        })?;
        Ok((url.to_string(), cookie))
    }

    /// Completes a sign-in from the IdP's redirect. Returns who signed in and the CLI request.
    pub async fn finish(
        &self,
        cookie: Option<&str>,
        code: Option<&str>,
        state: Option<&str>,
        idp_error: Option<&str>,
    ) -> Result<(Identity, Option<CliRequest>), AuthError> {
        if let Some(e) = idp_error {
            let denied = e == "access_denied";
            return Err(AuthError::new(
                if denied {
                    http::StatusCode::FORBIDDEN
                } else {
                    http::StatusCode::BAD_GATEWAY
                },
                if denied { "idp_denied" } else { "idp_error" },
                if denied {
                    "The hospital's sign-in service did not let you in."
                } else {
                    "The hospital's sign-in service reported a problem. Please try again."
                },
                format!(
                    "identity provider returned error={}",
                    e.chars().take(100).collect::<String>()
                ),
            ));
        }
        let flow = cookie.and_then(|c| self.open(c)).ok_or_else(|| {
            bad_request(
                "no_signin_in_progress",
                "This sign-in has expired or was started in another browser. Please start again.",
                "missing, expired or forged sign-in cookie",
            )
        })?;
        let state = state.unwrap_or("");
        if !postern_proto::ids::ct_eq(state.as_bytes(), flow.state.as_bytes()) {
            return Err(bad_request(
                "state_mismatch",
                "This sign-in could not be matched to your browser. Please start again.",
                "state parameter does not match the sign-in cookie",
            ));
        }
        let code = code
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or_else(|| {
                bad_request(
                    "no_code",
                    "The sign-in service did not complete the sign-in. Please start again.",
                    "no authorization code in the callback",
                )
            })?;
        let client = self.client().await?;
        let token = self.exchange(&client, code, &flow.pkce_verifier).await?;
        let identity = match self.verify(&client, &token, &flow.nonce) {
            Ok(i) => i,
            Err(e) if e.code == "id_token_unknown_key" => {
                // The IdP may have rotated its keys: fetch the JWKS again, once.
                let client = self.discover().await?;
                self.verify(&client, &token, &flow.nonce)?
            }
            Err(e) => return Err(e),
        };
        Ok((identity, flow.cli))
    }

    async fn exchange(
        &self,
        client: &OidcClient,
        code: &str,
        verifier: &str,
    ) -> Result<TokenResponse, AuthError> {
        let http = self.http.clone();
        let call = move |req: http::Request<Vec<u8>>| {
            let http = http.clone();
            async move { http.call(req).await }
        };
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
        request.request_async(&call).await.map_err(|e| {
            let detail = postern_proto::report::render(&e);
            let is_server_err = matches!(e, openidconnect::RequestTokenError::ServerResponse(_));
            if is_server_err {
                AuthError::new(http::StatusCode::BAD_REQUEST, "code_rejected", "The sign-in could not be completed (the link may have been used already). Please start again.", format!("token endpoint refused the code: {detail}"))
            } else {
                unavailable(format!("token request failed: {detail}"))
            }
        })
    }

    fn verify(
        &self,
        client: &OidcClient,
        token: &TokenResponse,
        nonce: &str,
    ) -> Result<Identity, AuthError> {
        use openidconnect::core::CoreJwsSigningAlgorithm as A;
        let id_token = token.extra_fields().id_token().ok_or_else(|| {
            AuthError::new(
                http::StatusCode::BAD_GATEWAY,
                "no_id_token",
                "The sign-in service did not say who you are. Please contact the service desk.",
                "token response has no id_token",
            )
        })?;
        let verifier = client.id_token_verifier().set_allowed_algs([
            A::RsaSsaPkcs1V15Sha256,
            A::RsaSsaPkcs1V15Sha384,
            A::RsaSsaPkcs1V15Sha512,
            A::RsaSsaPssSha256,
            A::RsaSsaPssSha384,
            A::RsaSsaPssSha512,
            A::EcdsaP256Sha256,
            A::EcdsaP384Sha384,
            A::EdDsa,
        ]);
        let claims = id_token.claims(&verifier, &Nonce::new(nonce.to_owned())).map_err(|e| {
            let detail = postern_proto::report::render(&e);
            let code = if detail.contains("No matching key") {
                "id_token_unknown_key"
            } else {
                "id_token_invalid"
            };
            AuthError::new(http::StatusCode::BAD_GATEWAY, code, "The sign-in service's answer could not be verified. Please contact the service desk.", format!("ID token rejected: {detail}"))
        })?;
        let json = serde_json::to_value(claims).map_err(|e| {
            AuthError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
                format!("re-reading the verified ID token's claims: {e}"),
            )
        })?;
        let serde_json::Value::Object(map) = json else {
            return Err(AuthError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
                "verified ID token claims are not a JSON object",
            ));
        };
        identity_from_claims(&self.config, &map)
    }

    /// A one-time code the CLI redeems with its verifier.
    pub async fn issue_cli_code(
        &self,
        cli: &CliRequest,
        token: String,
    ) -> Result<String, AuthError> {
        let code = random_b64(32)?;
        let now = self.clock.unix();
        let rec = CliCodeRec {
            challenge: cli.challenge.clone(),
            token,
            expires: now + CLI_CODE_TTL,
        };
        let key = postern_proto::ids::sha256_hex(code.as_bytes());
        match self.store.put_cli_code(key, rec, now).await {
            Ok(()) => Ok(code),
            Err(StoreError::Refused(Refusal::SignInsFull(_))) => Err(AuthError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many sign-ins are in progress. Please try again in a minute.",
                "pending CLI code table full",
            )),
            Err(e @ StoreError::Unavailable(_)) => Err(AuthError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The gateway cannot reach its database just now. Please try again in a minute.",
                format!("keeping the CLI code: {e}"),
            )),
            Err(e) => Err(AuthError::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
                format!("keeping the CLI code: {e}"),
            )),
        }
    }

    /// Redeems a CLI code: the token, if the code is live and `verifier` matches its challenge.
    /// The code is used up either way.
    /// A one-time ticket for `token`, redeemable only by the browser whose pending web
    /// sign-in has the nonce `binding` hashes (`GET /auth/web/resume`); the URL to send the
    /// browser to.
    pub async fn issue_browser_ticket(
        &self,
        binding: &str,
        token: String,
    ) -> Result<String, AuthError> {
        let challenge = format!("ticket:{binding}");
        let ticket =
            super::one_time::put(&self.store, self.clock.unix(), "ticket", challenge, token)
                .await
                .map_err(|e| {
                    AuthError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The gateway cannot complete the sign-in just now. Please try again in a minute.",
                format!("keeping the browser ticket: {e}"),
            )
                })?;
        Ok(format!("/auth/web/resume?ticket={ticket}"))
    }

    pub async fn redeem_cli_code(&self, code: &str, verifier: &str) -> Option<String> {
        let key = postern_proto::ids::sha256_hex(code.as_bytes());
        let p = match self.store.take_cli_code(key, self.clock.unix()).await {
            Ok(p) => p?,
            Err(e) => {
                warn!(error = %e, "cannot read the CLI code from the state store");
                return None;
            }
        };
        let ok =
            postern_proto::ids::ct_eq(pkce_challenge(verifier).as_bytes(), p.challenge.as_bytes());
        ok.then_some(p.token)
    }
}

/// Longest user name, group name and display name taken from an ID token, in bytes.
const MAX_NAME: usize = 256;
/// Most groups taken from an ID token. More is refused rather than cut, since a group left out
/// could be one a deny rule names.
const MAX_GROUPS: usize = 500;

fn refused(code: &'static str, public: &str, detail: String) -> AuthError {
    AuthError::new(http::StatusCode::FORBIDDEN, code, public, detail)
}

const NO_IDENTITY: &str = "The hospital's sign-in service did not say who you are in the way this gateway needs. Please contact the service desk.";

/// A claim value fit to name someone: a non-empty string of at most [`MAX_NAME`] bytes
/// without control characters.
fn name_value(claim: &str, v: &serde_json::Value) -> Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("claim `{claim}` is not a string"))?;
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(format!(
            "claim `{claim}` is empty, longer than {MAX_NAME} bytes or has control characters"
        ));
    }
    Ok(s.to_owned())
}

/// The AE titles of an `ae_title_claim` value: a string or a list of strings, each kept only
/// if it is a valid AE title (1 to 16 printable ASCII characters, no `\\`), at most 16.
fn ae_titles(v: Option<&serde_json::Value>) -> Vec<String> {
    let valid = |s: &&str| {
        let t = s.trim_matches(' ');
        !t.is_empty() && t.len() <= 16 && t.chars().all(|c| c.is_ascii_graphic() && c != '\\')
    };
    let titles: Vec<&str> = match v {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect(),
        _ => Vec::new(),
    };
    titles
        .into_iter()
        .filter(valid)
        .map(|t| t.trim_matches(' ').to_owned())
        .take(16)
        .collect()
}

/// Who signed in, from the claims of an ID token whose signature, issuer, audience, expiry and
/// nonce were verified. The user is the one configured claim (`user_claim`), never another in
/// its place: `sub` and `oid+tid` are assigned by the IdP; `email` counts only when the IdP says
/// it verified it (`email_verified: true`), since many IdPs let a user or a guest account set
/// any address. A string groups claim is one group; only an array is a list.
pub(crate) fn identity_from_claims(
    config: &OidcConfig,
    c: &serde_json::Map<String, serde_json::Value>,
) -> Result<Identity, AuthError> {
    let claim = config.user_claim.as_str();
    let missing = |name: &str| {
        refused(
            "user_claim_missing",
            NO_IDENTITY,
            format!("ID token has no `{name}` claim (oidc.user_claim = \"{claim}\"); no other claim is used in its place"),
        )
    };
    let invalid = |detail: String| refused("user_claim_invalid", NO_IDENTITY, detail);
    let get = |name: &str| -> Result<String, AuthError> {
        let v = c
            .get(name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| missing(name))?;
        name_value(name, v).map_err(invalid)
    };
    let subject = get("sub")?;
    let user = match claim {
        "sub" => subject.clone(),
        "oid+tid" => format!("{}/{}", get("tid")?, get("oid")?),
        "email" => {
            let email = get("email")?;
            if c.get("email_verified") != Some(&serde_json::Value::Bool(true)) {
                return Err(refused(
                    "email_unverified",
                    "The hospital's sign-in service has not verified your e-mail address, so this gateway cannot use it to identify you. Please contact the service desk.",
                    format!(
                        "ID token's email is not verified (email_verified = {}); oidc.user_claim = \"email\" requires email_verified true",
                        c.get("email_verified").map_or("absent".into(), |v| {
                            v.to_string().chars().take(20).collect::<String>()
                        })
                    ),
                ));
            }
            email
        }
        other => get(other)?,
    };
    let groups_invalid = |detail: String| refused("groups_claim_invalid", NO_IDENTITY, detail);
    let gc = config.groups_claim.as_str();
    let groups = match c.get(gc) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(_)) => {
            // One group whose name may contain spaces or commas ("Radiology Consultants").
            vec![name_value(gc, &c[gc]).map_err(groups_invalid)?]
        }
        Some(serde_json::Value::Array(v)) => {
            if v.len() > MAX_GROUPS {
                return Err(groups_invalid(format!(
                    "claim `{gc}` lists {} groups (at most {MAX_GROUPS})",
                    v.len()
                )));
            }
            v.iter()
                .map(|g| name_value(gc, g))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| groups_invalid(format!("an entry of {e}")))?
        }
        Some(_) => {
            return Err(groups_invalid(format!(
                "claim `{gc}` is neither a string nor a list of strings"
            )))
        }
    };
    let amr_mfa = c.get("amr").and_then(|v| v.as_array()).is_some_and(|v| {
        v.iter()
            .filter_map(|m| m.as_str())
            .any(|m| config.mfa_amr.iter().any(|x| x == m))
    });
    let acr_mfa = c
        .get("acr")
        .and_then(|v| v.as_str())
        .is_some_and(|a| config.mfa_acr.iter().any(|x| x == a));
    // Unknown stays unknown: a missing auth_time is not "now".
    let auth_time = c.get("auth_time").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    });
    let optional = |name: &str| c.get(name).and_then(|v| name_value(name, v).ok());
    Ok(Identity {
        user,
        subject,
        name: optional(&config.name_claim),
        email: optional("email"),
        ae_titles: ae_titles(c.get(&config.ae_title_claim)),
        groups,
        mfa: amr_mfa || acr_mfa,
        auth_time,
        issuer: c
            .get("iss")
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(MAX_NAME).collect())
            .unwrap_or_default(),
        browser: None,
    })
}

impl From<HttpError> for AuthError {
    fn from(e: HttpError) -> AuthError {
        unavailable(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_redirects_must_be_loopback() {
        assert!(valid_cli_redirect("http://127.0.0.1:5555/callback"));
        assert!(valid_cli_redirect("http://[::1]:5555/callback"));
        assert!(!valid_cli_redirect("https://127.0.0.1:5555/callback"));
        assert!(!valid_cli_redirect("http://127.0.0.1.evil.example:5555/x"));
        assert!(!valid_cli_redirect("http://127.0.0.1:0/x"));
        assert!(!valid_cli_redirect("http://evil.example/x"));
        assert!(!valid_cli_redirect("http://127.0.0.1:5555@evil.example/x"));
    }

    fn config(user_claim: &str) -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "postern".into(),
            client_secret: crate::config::SecretSource::Inline(crate::config::Secret("x".into())),
            redirect_url: "https://gw.example/auth/callback".into(),
            scopes: vec![],
            user_claim: user_claim.into(),
            groups_claim: "groups".into(),
            name_claim: "name".into(),
            ae_title_claim: "ae_title".into(),
            mfa_amr: vec!["mfa".into()],
            mfa_acr: vec!["urn:hospital:loa:3".into()],
            session_ttl: Duration::from_secs(3600),
            ca_file: None,
            insecure_http_issuer: false,
        }
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        let mut base = serde_json::json!({"iss": "https://idp.example", "sub": "00u1AbC",
            "email": "ann@h.example", "email_verified": true});
        for (k, v) in v.as_object().unwrap() {
            base[k] = v.clone();
        }
        base.as_object().unwrap().clone()
    }

    #[test]
    fn ae_titles_come_from_their_claim_and_only_valid_titles_are_kept() {
        let c = config("sub");
        let id = identity_from_claims(
            &c,
            &claims(serde_json::json!({"ae_title": ["RAD_ANN", "bad\\ae", "MUCH_TOO_LONG_FOR_AN_AE", 7, " RAD_ANN2 "]})),
        )
        .unwrap();
        assert_eq!(id.ae_titles, ["RAD_ANN", "RAD_ANN2"]);
        let id =
            identity_from_claims(&c, &claims(serde_json::json!({"ae_title": "RAD_ANN"}))).unwrap();
        assert_eq!(id.ae_titles, ["RAD_ANN"]);
        let id = identity_from_claims(&c, &claims(serde_json::json!({}))).unwrap();
        assert!(id.ae_titles.is_empty());
    }

    #[test]
    fn a_string_groups_claim_is_one_group_and_only_an_array_is_a_list() {
        let c = config("sub");
        let id = identity_from_claims(
            &c,
            &claims(serde_json::json!({"groups": "Radiology Consultants"})),
        )
        .unwrap();
        assert_eq!(id.groups, ["Radiology Consultants"]);
        let id = identity_from_claims(&c, &claims(serde_json::json!({"groups": "a,b"}))).unwrap();
        assert_eq!(id.groups, ["a,b"]);
        let id =
            identity_from_claims(&c, &claims(serde_json::json!({"groups": ["a b", "c"]}))).unwrap();
        assert_eq!(id.groups, ["a b", "c"]);
        let id = identity_from_claims(&c, &claims(serde_json::json!({}))).unwrap();
        assert!(id.groups.is_empty());
        for bad in [
            serde_json::json!({"groups": ["ok", 7]}),
            serde_json::json!({"groups": {"a": 1}}),
            serde_json::json!({"groups": ["x".repeat(MAX_NAME + 1)]}),
            serde_json::json!({"groups": vec!["g"; MAX_GROUPS + 1]}),
            serde_json::json!({"groups": "bad\nline"}),
        ] {
            let e = identity_from_claims(&c, &claims(bad.clone())).unwrap_err();
            assert_eq!(e.code, "groups_claim_invalid", "{bad}");
        }
    }

    #[test]
    fn the_user_is_the_configured_claim_and_nothing_else() {
        let id = identity_from_claims(&config("sub"), &claims(serde_json::json!({}))).unwrap();
        assert_eq!(
            (id.user.as_str(), id.subject.as_str()),
            ("00u1AbC", "00u1AbC")
        );
        let id = identity_from_claims(&config("email"), &claims(serde_json::json!({}))).unwrap();
        assert_eq!(id.user, "ann@h.example");
        for (v, code) in [
            (
                serde_json::json!({"email_verified": false}),
                "email_unverified",
            ),
            (
                serde_json::json!({"email_verified": "true"}),
                "email_unverified",
            ),
            (
                serde_json::json!({"email_verified": null}),
                "email_unverified",
            ),
            (serde_json::json!({"email": null}), "user_claim_missing"),
            (serde_json::json!({"email": ""}), "user_claim_invalid"),
            (serde_json::json!({"email": 5}), "user_claim_invalid"),
        ] {
            let e = identity_from_claims(&config("email"), &claims(v.clone())).unwrap_err();
            assert_eq!(e.code, code, "{v}");
            assert_eq!(e.status, http::StatusCode::FORBIDDEN);
        }
        let entra = claims(serde_json::json!({"oid": "o-1", "tid": "t-1"}));
        let id = identity_from_claims(&config("oid+tid"), &entra).unwrap();
        assert_eq!(id.user, "t-1/o-1");
        let e = identity_from_claims(
            &config("oid+tid"),
            &claims(serde_json::json!({"oid": "o-1"})),
        )
        .unwrap_err();
        assert_eq!(e.code, "user_claim_missing");
        assert!(e.detail.contains("`tid`"), "{}", e.detail);
        let e = identity_from_claims(&config("upn"), &claims(serde_json::json!({}))).unwrap_err();
        assert_eq!(e.code, "user_claim_missing");
    }

    #[test]
    fn mfa_needs_mfa_in_amr_or_a_listed_acr_and_auth_time_is_never_invented() {
        let c = config("sub");
        let mfa = |v| identity_from_claims(&c, &claims(v)).unwrap().mfa;
        for single in ["pin", "sms", "swk", "hwk", "fpt", "face", "otp", "pwd"] {
            assert!(!mfa(serde_json::json!({"amr": [single]})), "{single}");
        }
        assert!(mfa(serde_json::json!({"amr": ["pwd", "mfa"]})));
        assert!(mfa(serde_json::json!({"acr": "urn:hospital:loa:3"})));
        assert!(!mfa(serde_json::json!({"acr": "urn:hospital:loa:1"})));
        assert!(!mfa(serde_json::json!({"amr": "mfa"})));
        let at = |v| identity_from_claims(&c, &claims(v)).unwrap().auth_time;
        assert_eq!(at(serde_json::json!({})), None);
        assert_eq!(
            at(serde_json::json!({"auth_time": 1_700_000_000})),
            Some(1_700_000_000)
        );
        assert_eq!(at(serde_json::json!({"auth_time": -5})), None);
    }

    #[test]
    fn pkce_is_base64url_sha256() {
        // Reference value computed independently (Python hashlib + base64.urlsafe_b64encode).
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ92K1qUVBQ5yqT9e2m8MvWj8B6Hhk"),
            "8l3B_-d2P73PndBh8y2H6gRgU0HleRd5azSKdDCsIUo"
        );
    }
}
