//! Device trust: WebAuthn ceremonies at the end of sign-in (webauthn-rs 0.6, passkeys with
//! user verification required), the registered-device table, and posture binding.
//!
//! After the IdP callback the gateway keeps the sign-in as a *ceremony* (in memory, 10 minutes,
//! bound to the browser by the `postern_device` cookie) and answers with the device page. The
//! page asks for a challenge (`…/begin`), runs `navigator.credentials.get()` (or `create()` to
//! register a new laptop) and posts the result (`…/finish`) together with the posture report.
//!
//! The challenge is not webauthn-rs's random one: the gateway draws its own nonce `N` and puts
//! `SHA-256(N || SHA-256(canonical posture))` into both the options sent to the browser and
//! the serialised ceremony state, so the authenticator signs the posture report. `finish`
//! recomputes it from `N` and the *posted* report; a report altered after signing fails with
//! `posture_mismatch`. Each begin replaces the pending challenge, each finish consumes it
//! (a replayed assertion finds nothing: `unknown_challenge`).
//!
//! Every failure answers JSON `{error, message, ref}` and writes `device.assertion_failed`
//! with the same reference and code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use postern_audit::{DeviceRef, EventType};
use postern_policy::DeviceFacts;
use postern_proto::posture::{bound_challenge, PostureReport};
use serde::Deserialize;
use tracing::{info, warn};
use webauthn_rs::prelude::{
    Credential, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::clock::unix_now;
use crate::config::Approval;
use crate::oidc::{CliRequest, Identity};
use crate::pages;
use crate::state::{DeviceChange, DeviceRec, DeviceStatus, Refusal, StoreError};
use crate::Gateway;

type Resp = Response<Full<Bytes>>;

/// Cookie binding a ceremony to the browser that finished the IdP sign-in.
pub const COOKIE: &str = "postern_device";
const CEREMONY_TTL: Duration = Duration::from_secs(600);
const MAX_CEREMONIES: usize = 10_000;
/// Largest request body of the device endpoints.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest clientDataJSON accepted (decoded bytes).
pub const MAX_CLIENT_DATA: usize = 4096;

/// What a sign-in completed on a device carries into the token.
#[derive(Debug, Clone)]
pub struct Binding {
    pub device: String,
    pub name: String,
    pub user_verified: bool,
    pub posture: Option<PostureReport>,
}

enum Pending {
    Register {
        state: PasskeyRegistration,
        nonce: Vec<u8>,
        name: String,
    },
    Assert {
        state: PasskeyAuthentication,
        nonce: Vec<u8>,
    },
}

struct Ceremony {
    identity: Identity,
    cli: Option<CliRequest>,
    posture: Option<PostureReport>,
    pending: Option<Pending>,
    expires: Instant,
}

/// What the running gateway knows about a device, for token checks and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub user: String,
    pub name: String,
    pub status: DeviceStatus,
}

/// The device side of the gateway.
pub struct Devices {
    webauthn: Option<Webauthn>,
    ceremonies: Mutex<HashMap<String, Ceremony>>,
    table: RwLock<HashMap<String, DeviceView>>,
    revoked_users: RwLock<HashMap<String, u64>>,
}

/// A failed ceremony step: what the browser gets and what the audit log records.
#[derive(Debug)]
pub struct DevError {
    pub status: StatusCode,
    pub code: &'static str,
    pub public: String,
    pub detail: String,
    pub device: Option<String>,
}

impl DevError {
    fn new(
        status: StatusCode,
        code: &'static str,
        public: &str,
        detail: impl Into<String>,
    ) -> Self {
        DevError {
            status,
            code,
            public: public.to_owned(),
            detail: detail.into(),
            device: None,
        }
    }
    fn bad(code: &'static str, public: &str, detail: impl Into<String>) -> Self {
        DevError::new(StatusCode::BAD_REQUEST, code, public, detail)
    }
    fn with_device(mut self, id: &str) -> Self {
        self.device = Some(id.to_owned());
        self
    }
}

const START_AGAIN: &str = "This sign-in step is no longer valid. Please start the sign-in again.";

fn internal(detail: impl Into<String>) -> DevError {
    DevError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Something went wrong on our side. Please try again.",
        detail,
    )
}

/// The stable per-user WebAuthn user handle.
fn user_uuid(user: &str) -> Uuid {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("postern-user:{user}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    Uuid::from_bytes(b)
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl Devices {
    /// Builds the WebAuthn relying party when sign-in and device trust are both on.
    pub fn new(config: &crate::Config) -> Result<Devices, String> {
        let webauthn = if config.oidc.is_some() && config.devices.required {
            let (origin, rp_id) = config.webauthn_origin_and_rp_id()?;
            if rp_id.parse::<std::net::IpAddr>().is_ok() {
                return Err(format!(
                    "WebAuthn needs a host name as relying party id, not the address '{rp_id}': use a name (e.g. https://localhost:PORT/auth/callback) in oidc.redirect_url, set devices.rp_id and devices.origin, or turn device trust off with [devices] required = false"
                ));
            }
            let url = Url::parse(&origin).map_err(|e| format!("devices.origin {origin}: {e}"))?;
            let w = WebauthnBuilder::new(&rp_id, &url)
                .map_err(|e| format!("devices: rp_id '{rp_id}' does not fit origin {origin}: {e}"))?
                .rp_name(&config.devices.rp_name)
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| format!("devices: {e}"))?;
            Some(w)
        } else {
            None
        };
        Ok(Devices {
            webauthn,
            ceremonies: Mutex::new(HashMap::new()),
            table: RwLock::new(HashMap::new()),
            revoked_users: RwLock::new(HashMap::new()),
        })
    }

    /// Replaces the device table and revoked users (from the store).
    pub fn load(&self, devices: &[DeviceRec], revoked_users: &[crate::state::RevokedUser]) {
        if let Ok(mut t) = self.table.write() {
            *t = devices
                .iter()
                .map(|d| {
                    (
                        d.id.clone(),
                        DeviceView {
                            user: d.user.clone(),
                            name: d.name.clone(),
                            status: d.status,
                        },
                    )
                })
                .collect();
        }
        if let Ok(mut r) = self.revoked_users.write() {
            *r = revoked_users
                .iter()
                .map(|u| (u.user.clone(), u.before))
                .collect();
        }
    }

    pub fn view(&self, id: &str) -> Option<DeviceView> {
        self.table.read().ok().and_then(|t| t.get(id).cloned())
    }

    /// Whether tokens of `user` issued at `iat` were revoked (`user revoke`).
    pub fn user_revoked(&self, user: &str, iat: u64) -> bool {
        self.revoked_users
            .read()
            .map(|r| r.get(user).is_some_and(|before| iat <= *before))
            .unwrap_or(true)
    }

    /// The policy's device facts for a token bound to device `id`.
    pub fn facts(
        &self,
        id: &str,
        uv: bool,
        posture: Option<&std::collections::BTreeMap<String, String>>,
    ) -> DeviceFacts {
        let status = self.view(id).map(|v| v.status);
        DeviceFacts {
            registered: matches!(status, Some(DeviceStatus::Active | DeviceStatus::Pending)),
            approved: status == Some(DeviceStatus::Active),
            user_verified: uv,
            posture: posture.cloned().unwrap_or_default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.webauthn.is_some()
    }

    fn webauthn(&self) -> Result<&Webauthn, DevError> {
        self.webauthn.as_ref().ok_or_else(|| {
            DevError::new(
                StatusCode::NOT_FOUND,
                "devices_not_configured",
                "Device sign-in is not configured on this gateway.",
                "[devices] required = false or no [oidc]",
            )
        })
    }

    /// Keeps a signed-in identity waiting for its device ceremony; returns the ceremony id.
    pub fn open(&self, identity: Identity, cli: Option<CliRequest>) -> Result<String, DevError> {
        let id = postern_proto::ids::random_bytes(32)
            .map(|b| b64(&b))
            .map_err(|_| internal("random number generator failed"))?;
        let mut m = self
            .ceremonies
            .lock()
            .map_err(|_| internal("lock poisoned"))?;
        let now = Instant::now();
        m.retain(|_, c| c.expires > now);
        if m.len() >= MAX_CEREMONIES {
            return Err(DevError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many sign-ins are in progress. Please try again in a minute.",
                "ceremony table full",
            ));
        }
        let posture = cli.as_ref().and_then(|c| c.posture.clone());
        m.insert(
            id.clone(),
            Ceremony {
                identity,
                cli,
                posture,
                pending: None,
                expires: now + CEREMONY_TTL,
            },
        );
        Ok(id)
    }

    fn with_ceremony<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Ceremony) -> Result<T, DevError>,
    ) -> Result<T, DevError> {
        let mut m = self
            .ceremonies
            .lock()
            .map_err(|_| internal("lock poisoned"))?;
        let c = m
            .get_mut(id)
            .filter(|c| c.expires > Instant::now())
            .ok_or_else(|| {
                DevError::bad(
                    "unknown_challenge",
                    START_AGAIN,
                    "unknown, expired or finished ceremony",
                )
            })?;
        f(c)
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.ceremonies.lock() {
            m.remove(id);
        }
    }

    fn user_of(&self, id: &str) -> Option<String> {
        self.ceremonies
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|c| c.identity.user.clone()))
    }
}

/// Puts `challenge` into a serialised webauthn-rs ceremony state (`{"ast"|"rs": {"challenge"}}`).
fn set_state_challenge<T: serde::Serialize + serde::de::DeserializeOwned>(
    state: &T,
    outer: &str,
    challenge: &[u8],
) -> Result<T, DevError> {
    let mut v = serde_json::to_value(state).map_err(|e| internal(e.to_string()))?;
    let slot = v
        .get_mut(outer)
        .and_then(|s| s.get_mut("challenge"))
        .ok_or_else(|| internal("ceremony state has no challenge"))?;
    *slot = serde_json::Value::String(b64(challenge));
    serde_json::from_value(v).map_err(|e| internal(e.to_string()))
}

fn passkey_of(d: &DeviceRec) -> Option<Passkey> {
    serde_json::from_value(d.passkey.clone()).ok()
}

/// Extracts the AAGUID (16 bytes after rpIdHash, flags and counter) from an attestation object.
fn aaguid(attestation_object: &[u8]) -> Option<String> {
    use serde_cbor_2::Value;
    let v: Value = serde_cbor_2::from_slice(attestation_object).ok()?;
    let Value::Map(m) = v else { return None };
    let auth = m.iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Bytes(b)) if k == "authData" => Some(b),
        _ => None,
    })?;
    let flags = *auth.get(32)?;
    if flags & 0x40 == 0 {
        return None;
    }
    let g = auth.get(37..53)?;
    Some(Uuid::from_slice(g).ok()?.hyphenated().to_string())
}

/// Decodes the challenge the client signed (from clientDataJSON).
fn signed_challenge(client_data: &[u8]) -> Result<Vec<u8>, DevError> {
    #[derive(Deserialize)]
    struct Cd {
        challenge: String,
    }
    let cd: Cd = serde_json::from_slice(client_data).map_err(|e| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            format!("clientDataJSON: {e}"),
        )
    })?;
    URL_SAFE_NO_PAD
        .decode(cd.challenge.trim_end_matches('='))
        .map_err(|e| {
            DevError::bad(
                "bad_request",
                "The browser sent a malformed answer.",
                format!("clientDataJSON challenge: {e}"),
            )
        })
}

fn map_webauthn(e: WebauthnError) -> DevError {
    use WebauthnError as W;
    let detail = format!("webauthn: {e}");
    match e {
        W::MismatchedChallenge => DevError::bad(
            "challenge_mismatch",
            START_AGAIN,
            detail,
        ),
        W::InvalidRPIDHash => DevError::new(
            StatusCode::FORBIDDEN,
            "rp_id_mismatch",
            "This device answered for another site.",
            detail,
        ),
        W::InvalidRPOrigin => DevError::new(
            StatusCode::FORBIDDEN,
            "origin_mismatch",
            "This sign-in page was not opened from the gateway's address.",
            detail,
        ),
        W::UserNotVerified | W::UserNotPresent => DevError::new(
            StatusCode::FORBIDDEN,
            "user_not_verified",
            "Your device did not verify you (PIN, fingerprint or face). Please try again.",
            detail,
        ),
        W::CredentialNotFound => DevError::new(
            StatusCode::FORBIDDEN,
            "unknown_credential",
            "This device is not registered to you. Register it first.",
            detail,
        ),
        W::CredentialPossibleCompromise => DevError::new(
            StatusCode::FORBIDDEN,
            "possible_clone",
            "This device's key may have been copied. It has been suspended; contact the security team.",
            detail,
        ),
        W::AuthenticationFailure => DevError::new(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "Your device's answer could not be verified.",
            detail,
        ),
        W::ParseJSONFailure(_)
        | W::ParseBase64Failure(_)
        | W::ParseCBORFailure(_)
        | W::ParseNOMFailure
        | W::ParseInsufficientBytesAvailable
        | W::InvalidClientDataType => DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            detail,
        ),
        _ => DevError::new(
            StatusCode::FORBIDDEN,
            "webauthn_error",
            "Your device's answer was not accepted.",
            detail,
        ),
    }
}

/// What the browser posts to a `finish` endpoint (and, without credential, to `begin`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    ceremony: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    credential: Option<serde_json::Value>,
    #[serde(default)]
    posture: Option<serde_json::Value>,
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

fn json_resp(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = crate::client_api::json(status, v);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Audits `device.assertion_failed` and answers the JSON error with the same reference.
fn fail(gw: &Gateway, kind: &str, peer: SocketAddr, user: Option<String>, e: DevError) -> Resp {
    gw.metrics
        .device_ceremonies
        .with_label_values(&[kind, e.code])
        .inc();
    let id = postern_proto::ids::random_id("err")
        .map(|s| s[..16].to_owned())
        .unwrap_or_else(|_| "err-unknown".into());
    warn!(error_id = %id, code = e.code, detail = %e.detail, user = ?user, %peer, kind, "device ceremony failed");
    let mut ev = gw.event(EventType::DeviceAssertionFailed);
    ev.user = user;
    ev.source = Some(peer.to_string());
    ev.device = e.device.as_ref().map(|d| DeviceRef {
        id: d.clone(),
        name: gw.devices.view(d).map(|v| v.name),
        user_verified: None,
    });
    ev.detail = Some(format!("{id}: {}: {kind}: {}", e.code, e.detail));
    gw.audit.record_nowait(ev);
    json_resp(
        e.status,
        &serde_json::json!({"error": e.code, "message": e.public, "ref": id}),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    RegisterBegin,
    RegisterFinish,
    AssertBegin,
    AssertFinish,
}

/// `POST /auth/device/{register,assert}/{begin,finish}`.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    step: Step,
) -> Resp {
    let jar = cookie(&req);
    // Read the (bounded) body first, so even a refusal is a clean answer.
    let body = read_bounded(req.into_body()).await;
    handle_body(gw, jar, body, peer, step).await
}

/// Reads at most [`MAX_BODY`] bytes. A larger body is read on (and thrown away) up to 1 MiB, so
/// the client still gets the JSON refusal instead of a reset stream; beyond that, it is cut.
async fn read_bounded(mut body: Incoming) -> Result<Bytes, String> {
    use http_body_util::BodyExt as _;
    let mut buf = Vec::new();
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(e))) => return Err(format!("reading the body: {e}")),
            Ok(None) => break,
            Err(_) => return Err("body not received within 10 s".into()),
        };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > 1024 * 1024 {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(format!("{total} bytes or more"));
    }
    Ok(Bytes::from(buf))
}

/// [`handle`] after the request is read: `jar` is the `postern_device` cookie, `body` the
/// bounded body (Err when it was too large).
pub(crate) async fn handle_body(
    gw: Arc<Gateway>,
    jar: Option<String>,
    body: Result<Bytes, String>,
    peer: SocketAddr,
    step: Step,
) -> Resp {
    let kind = match step {
        Step::RegisterBegin | Step::RegisterFinish => "register",
        Step::AssertBegin | Step::AssertFinish => "assert",
    };
    if let Err(secs) = gw.limits.signin.check(&peer.ip()) {
        gw.note_ratelimited("signin");
        let mut r = crate::client_api::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sign-in requests; wait a little",
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.starts_with(|c: char| c.is_ascii_digit()) => {
            return fail(
                &gw,
                kind,
                peer,
                None,
                DevError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "oversized",
                    "The browser sent too much data.",
                    format!("request body over {MAX_BODY} bytes ({e})"),
                ),
            )
        }
        Err(e) => {
            return fail(
                &gw,
                kind,
                peer,
                None,
                DevError::bad(
                    "bad_request",
                    "The browser's request did not arrive complete.",
                    e,
                ),
            )
        }
    };
    let parsed: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                &gw,
                kind,
                peer,
                None,
                DevError::bad(
                    "bad_request",
                    "The browser sent a malformed request.",
                    format!("request body is not the expected JSON: {e}"),
                ),
            )
        }
    };
    let user = gw.devices.user_of(&parsed.ceremony);
    // The ceremony must be the one this browser's cookie names.
    let bound = jar
        .as_deref()
        .is_some_and(|c| postern_proto::ids::ct_eq(c.as_bytes(), parsed.ceremony.as_bytes()));
    if !bound {
        return fail(
            &gw,
            kind,
            peer,
            user,
            DevError::bad(
                "unknown_challenge",
                START_AGAIN,
                "ceremony id does not match this browser's postern_device cookie",
            ),
        );
    }
    let result = match step {
        Step::RegisterBegin => register_begin(&gw, &parsed).await,
        Step::AssertBegin => assert_begin(&gw, &parsed).await,
        Step::RegisterFinish => register_finish(&gw, &parsed, peer).await,
        Step::AssertFinish => assert_finish(&gw, &parsed, peer).await,
    };
    match result {
        Ok(v) => {
            if matches!(step, Step::RegisterFinish | Step::AssertFinish) {
                gw.metrics
                    .device_ceremonies
                    .with_label_values(&[kind, "ok"])
                    .inc();
            }
            json_resp(StatusCode::OK, &v)
        }
        Err(e) if e.code == "no_devices" => json_resp(
            e.status,
            &serde_json::json!({"error": e.code, "message": e.public}),
        ),
        Err(e) => fail(&gw, kind, peer, user, e),
    }
}

async fn user_devices(gw: &Gateway, user: &str) -> Result<Vec<DeviceRec>, DevError> {
    let all = gw.store.devices().await?;
    Ok(all.into_iter().filter(|d| d.user == user).collect())
}

async fn register_begin(gw: &Gateway, b: &Body) -> Result<serde_json::Value, DevError> {
    let w = gw.devices.webauthn()?;
    let name = b.name.as_deref().map(str::trim).unwrap_or("");
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(DevError::bad(
            "bad_name",
            "Give this device a name of 1–64 characters, such as \"home laptop\".",
            "device name missing, too long or with control characters",
        ));
    }
    let user = gw
        .devices
        .user_of(&b.ceremony)
        .ok_or_else(|| DevError::bad("unknown_challenge", START_AGAIN, "unknown ceremony"))?;
    let existing: Vec<_> = user_devices(gw, &user)
        .await?
        .iter()
        .filter_map(passkey_of)
        .map(|p| p.cred_id().clone())
        .collect();
    let (mut options, state) = w
        .start_passkey_registration(
            user_uuid(&user),
            &user,
            &format!("{user} ({name})"),
            (!existing.is_empty()).then_some(existing),
        )
        .map_err(|e| internal(format!("start registration: {e}")))?;
    let name = name.to_owned();
    gw.devices.with_ceremony(&b.ceremony, |c| {
        let nonce = postern_proto::ids::random_bytes(32).map_err(|_| internal("rng failed"))?;
        let challenge = bound_challenge(&nonce, c.posture.as_ref());
        options.public_key.challenge = challenge.to_vec();
        let state = set_state_challenge(&state, "rs", &challenge)?;
        c.pending = Some(Pending::Register { state, nonce, name });
        serde_json::to_value(&options).map_err(|e| internal(e.to_string()))
    })
}

async fn assert_begin(gw: &Gateway, b: &Body) -> Result<serde_json::Value, DevError> {
    let w = gw.devices.webauthn()?;
    let user = gw
        .devices
        .user_of(&b.ceremony)
        .ok_or_else(|| DevError::bad("unknown_challenge", START_AGAIN, "unknown ceremony"))?;
    // Every registered credential of the user is offered, whatever its status, so a pending or
    // revoked laptop gets its own clear answer instead of "no passkey found".
    let keys: Vec<Passkey> = user_devices(gw, &user)
        .await?
        .iter()
        .filter_map(passkey_of)
        .collect();
    // webauthn-rs 0.6 accepts an empty list; an assertion against nothing must not start.
    if keys.is_empty() {
        return Err(DevError::new(
            StatusCode::CONFLICT,
            "no_devices",
            "No device is registered for you yet. Name this device and register it.",
            "user has no registered devices",
        ));
    }
    let (mut options, state) = w
        .start_passkey_authentication(&keys)
        .map_err(|e| internal(format!("start authentication: {e}")))?;
    gw.devices.with_ceremony(&b.ceremony, |c| {
        let nonce = postern_proto::ids::random_bytes(32).map_err(|_| internal("rng failed"))?;
        let challenge = bound_challenge(&nonce, c.posture.as_ref());
        options.public_key.challenge = challenge.to_vec();
        let state = set_state_challenge(&state, "ast", &challenge)?;
        c.pending = Some(Pending::Assert { state, nonce });
        serde_json::to_value(&options).map_err(|e| internal(e.to_string()))
    })
}

/// Checks sizes, the signed challenge and the posture binding of a posted credential.
fn check_binding(
    credential: &serde_json::Value,
    nonce: &[u8],
    expected: &[u8; 32],
    posted_posture: Option<&serde_json::Value>,
) -> Result<Option<PostureReport>, DevError> {
    let cdj = credential
        .get("response")
        .and_then(|r| r.get("clientDataJSON"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            DevError::bad(
                "bad_request",
                "The browser sent a malformed answer.",
                "credential.response.clientDataJSON missing",
            )
        })?;
    if cdj.len() > MAX_CLIENT_DATA * 4 / 3 + 4 {
        return Err(DevError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "oversized",
            "The browser sent too much data.",
            format!("clientDataJSON over {MAX_CLIENT_DATA} bytes"),
        ));
    }
    let client_data = URL_SAFE_NO_PAD
        .decode(cdj.trim_end_matches('='))
        .map_err(|e| {
            DevError::bad(
                "bad_request",
                "The browser sent a malformed answer.",
                format!("clientDataJSON is not base64url: {e}"),
            )
        })?;
    let signed = signed_challenge(&client_data)?;
    if !postern_proto::ids::ct_eq(&signed, expected) {
        return Err(DevError::bad(
            "challenge_mismatch",
            START_AGAIN,
            "the signed challenge is not the one issued for this ceremony",
        ));
    }
    let posture = match posted_posture {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let bytes = serde_json::to_vec(v).map_err(|e| internal(e.to_string()))?;
            Some(PostureReport::parse(&bytes).map_err(|e| {
                DevError::bad(
                    "bad_request",
                    "The posture report is malformed.",
                    e.to_string(),
                )
            })?)
        }
    };
    let recomputed = bound_challenge(nonce, posture.as_ref());
    if !postern_proto::ids::ct_eq(&recomputed, expected) {
        return Err(DevError::new(
            StatusCode::FORBIDDEN,
            "posture_mismatch",
            "The device's posture report was changed after it was signed.",
            "posted posture report does not hash to the signed challenge",
        ));
    }
    Ok(posture)
}

fn take_pending(gw: &Gateway, ceremony: &str) -> Result<Pending, DevError> {
    gw.devices.with_ceremony(ceremony, |c| {
        c.pending.take().ok_or_else(|| {
            DevError::bad(
                "unknown_challenge",
                START_AGAIN,
                "no challenge outstanding for this ceremony (already used or never issued)",
            )
        })
    })
}

fn audit_device(gw: &Gateway, kind: EventType, rec: &DeviceRec, detail: String) {
    let mut ev = gw.event(kind);
    ev.user = Some(rec.user.clone());
    ev.device = Some(DeviceRef {
        id: rec.id.clone(),
        name: Some(rec.name.clone()),
        user_verified: Some(rec.user_verified),
    });
    ev.detail = Some(detail);
    gw.audit.record_nowait(ev);
}

/// Reloads the device table after a change, so the next token check sees it.
async fn reload(gw: &Gateway) {
    if let Err(e) = gw.reload_state().await {
        warn!(error = %e, "cannot re-read the device table");
    }
}

impl From<StoreError> for DevError {
    fn from(e: StoreError) -> DevError {
        internal(e.to_string())
    }
}

async fn register_finish(
    gw: &Gateway,
    b: &Body,
    peer: SocketAddr,
) -> Result<serde_json::Value, DevError> {
    let w = gw.devices.webauthn()?;
    let credential = b.credential.as_ref().ok_or_else(|| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            "no credential",
        )
    })?;
    let Pending::Register { state, nonce, name } = take_pending(gw, &b.ceremony)? else {
        return Err(DevError::bad(
            "unknown_challenge",
            START_AGAIN,
            "the outstanding challenge is for an assertion, not a registration",
        ));
    };
    let expected: [u8; 32] = serde_json::to_value(&state)
        .ok()
        .and_then(|v| v["rs"]["challenge"].as_str().map(str::to_owned))
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| internal("registration state has no 32-byte challenge"))?;
    let posture = check_binding(credential, &nonce, &expected, b.posture.as_ref())?;
    let reg: RegisterPublicKeyCredential =
        serde_json::from_value(credential.clone()).map_err(|e| {
            DevError::bad(
                "bad_request",
                "The browser sent a malformed answer.",
                format!("registration credential: {e}"),
            )
        })?;
    let passkey = w
        .finish_passkey_registration(&reg, &state)
        .map_err(map_webauthn)?;
    let cred: Credential = passkey.clone().into();
    let (user, cli_present) = gw.devices.with_ceremony(&b.ceremony, |c| {
        Ok((c.identity.user.clone(), c.cli.is_some()))
    })?;
    let _ = cli_present;
    let approval = gw.config.devices.approval;
    let now = unix_now();
    let id = postern_proto::ids::random_bytes(6)
        .map(|b| format!("dev-{}", postern_proto::ids::hex(&b)))
        .map_err(|_| internal("rng failed"))?;
    let rec = DeviceRec {
        id,
        user: user.clone(),
        name,
        status: match approval {
            Approval::Auto => DeviceStatus::Active,
            Approval::Manual => DeviceStatus::Pending,
        },
        credential_id: b64(&cred.cred_id),
        aaguid: aaguid(&reg.response.attestation_object)
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into()),
        sign_count: cred.counter,
        user_verified: cred.user_verified,
        backup_eligible: cred.backup_eligible,
        backup_state: cred.backup_state,
        transports: cred
            .transports
            .iter()
            .flatten()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect(),
        created: now,
        last_seen: Some(now),
        approved: (approval == Approval::Auto).then_some(now),
        approved_by: (approval == Approval::Auto).then(|| "auto (devices.approval)".to_owned()),
        revoked: None,
        revoked_reason: None,
        posture,
        passkey: serde_json::to_value(&passkey).map_err(|e| internal(e.to_string()))?,
    };
    match gw.store.add_device(rec.clone()).await {
        Ok(()) => reload(gw).await,
        Err(StoreError::Refused(Refusal::CredentialExists { device, user })) => {
            return Err(DevError::new(
                StatusCode::CONFLICT,
                "credential_exists",
                "This device is already registered.",
                format!("credential already registered as {device} (user {user})"),
            )
            .with_device(&device));
        }
        Err(e) => return Err(e.into()),
    }
    info!(device = %rec.id, user = %rec.user, status = rec.status.as_str(), %peer, "device registered");
    audit_device(
        gw,
        EventType::DeviceRegistered,
        &rec,
        format!(
            "status {}; aaguid {}; user verified {}; backup eligible {}; from {peer}",
            rec.status.as_str(),
            rec.aaguid,
            rec.user_verified,
            rec.backup_eligible
        ),
    );
    if rec.status == DeviceStatus::Active {
        audit_device(
            gw,
            EventType::DeviceApproved,
            &rec,
            "approved automatically (devices.approval = \"auto\")".into(),
        );
        Ok(serde_json::json!({"status": "active", "device": rec.id, "next": "assert"}))
    } else {
        gw.devices.remove(&b.ceremony);
        Ok(serde_json::json!({
            "status": "pending",
            "device": rec.id,
            "message": format!("\"{}\" is registered and waiting for approval by the security team. Sign in again once it is approved.", rec.name),
        }))
    }
}

async fn assert_finish(
    gw: &Gateway,
    b: &Body,
    peer: SocketAddr,
) -> Result<serde_json::Value, DevError> {
    let w = gw.devices.webauthn()?;
    let credential = b.credential.as_ref().ok_or_else(|| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            "no credential",
        )
    })?;
    let Pending::Assert { state, nonce } = take_pending(gw, &b.ceremony)? else {
        return Err(DevError::bad(
            "unknown_challenge",
            START_AGAIN,
            "the outstanding challenge is for a registration, not an assertion",
        ));
    };
    let expected: [u8; 32] = serde_json::to_value(&state)
        .ok()
        .and_then(|v| v["ast"]["challenge"].as_str().map(str::to_owned))
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| internal("authentication state has no 32-byte challenge"))?;
    let posture = check_binding(credential, &nonce, &expected, b.posture.as_ref())?;
    let pkc: PublicKeyCredential = serde_json::from_value(credential.clone()).map_err(|e| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            format!("assertion credential: {e}"),
        )
    })?;
    let (user, _) = gw
        .devices
        .with_ceremony(&b.ceremony, |c| Ok((c.identity.user.clone(), ())))?;
    let cred_id = b64(&pkc.raw_id);
    let devices = user_devices(gw, &user).await?;
    let Some(dev) = devices.iter().find(|d| d.credential_id == cred_id).cloned() else {
        return Err(DevError::new(
            StatusCode::FORBIDDEN,
            "unknown_credential",
            "This device is not registered to you. Register it first.",
            format!("credential {cred_id} is not registered to {user}"),
        ));
    };
    let result = match w.finish_passkey_authentication(&pkc, &state) {
        Ok(r) => r,
        Err(e) => {
            let err = map_webauthn(e).with_device(&dev.id);
            if err.code == "possible_clone" {
                let id = dev.id.clone();
                let suspect: DeviceChange = Box::new(|d| {
                    if d.status != DeviceStatus::Revoked {
                        d.status = DeviceStatus::Suspect;
                    }
                    Ok(())
                });
                if gw.store.update_device(id, suspect).await.is_ok() {
                    reload(gw).await;
                }
            }
            return Err(err);
        }
    };
    // The signature is good: remember the counter and posture whatever the status says.
    let id = dev.id.clone();
    let posture_saved = posture.clone();
    let user_verified = result.user_verified();
    let counter = result.counter();
    let seen: DeviceChange = Box::new(move |d| {
        if let Some(mut pk) = passkey_of(d) {
            pk.update_credential(&result);
            d.passkey = serde_json::to_value(&pk).map_err(|e| Refusal::Rejected(e.to_string()))?;
        }
        d.sign_count = d.sign_count.max(result.counter());
        d.backup_state = result.backup_state();
        d.last_seen = Some(unix_now());
        if posture_saved.is_some() {
            d.posture = posture_saved;
        }
        Ok(())
    });
    let (_, rec) = gw.store.update_device(id, seen).await?;
    reload(gw).await;
    match rec.status {
        DeviceStatus::Active => {}
        DeviceStatus::Pending => {
            gw.devices.remove(&b.ceremony);
            return Err(DevError::new(
                StatusCode::FORBIDDEN,
                "device_pending",
                &format!("\"{}\" is registered and waiting for approval by the security team. Sign in again once it is approved.", rec.name),
                "device is pending approval",
            )
            .with_device(&rec.id));
        }
        DeviceStatus::Revoked => {
            return Err(DevError::new(
                StatusCode::FORBIDDEN,
                "device_revoked",
                "This device was revoked and can no longer be used to sign in. Contact the security team.",
                format!("device revoked: {}", rec.revoked_reason.as_deref().unwrap_or("-")),
            )
            .with_device(&rec.id));
        }
        DeviceStatus::Suspect => {
            return Err(DevError::new(
                StatusCode::FORBIDDEN,
                "possible_clone",
                "This device is suspended because its key may have been copied. Contact the security team.",
                "device is suspect (sign count went backwards earlier)",
            )
            .with_device(&rec.id));
        }
    }
    audit_device(
        gw,
        EventType::DeviceVerified,
        &DeviceRec {
            user_verified,
            ..rec.clone()
        },
        format!("sign count {counter}; from {peer}"),
    );
    let mut ev = gw.event(EventType::PostureReported);
    ev.user = Some(rec.user.clone());
    ev.device = Some(DeviceRef {
        id: rec.id.clone(),
        name: Some(rec.name.clone()),
        user_verified: Some(user_verified),
    });
    ev.source = Some(peer.to_string());
    ev.detail = Some(match &posture {
        Some(p) => String::from_utf8_lossy(&p.canonical()).into_owned(),
        None => "no posture report (browser sign-in without postern login)".into(),
    });
    gw.audit.record_nowait(ev);
    let (identity, cli) = {
        let mut m = gw
            .devices
            .ceremonies
            .lock()
            .map_err(|_| internal("lock poisoned"))?;
        let c = m
            .remove(&b.ceremony)
            .ok_or_else(|| DevError::bad("unknown_challenge", START_AGAIN, "ceremony vanished"))?;
        (c.identity, c.cli)
    };
    let binding = Binding {
        device: rec.id.clone(),
        name: rec.name.clone(),
        user_verified,
        posture,
    };
    let redirect = crate::auth::complete(gw, &identity, cli, Some(&binding), peer, "-")
        .map_err(|e| DevError::new(e.status, e.code, &e.public, e.detail))?;
    Ok(serde_json::json!({
        "status": "ok",
        "device": rec.id,
        "redirect": redirect,
        "message": format!("Signed in as {} on \"{}\".", identity.user, rec.name),
    }))
}

/// The device page shown after the IdP callback.
pub fn page(
    gw: &Gateway,
    identity: &Identity,
    ceremony: &str,
    posture: Option<&PostureReport>,
) -> Resp {
    let has_devices = gw
        .devices
        .table
        .read()
        .map(|t| {
            t.values()
                .any(|d| d.user == identity.user && d.status != DeviceStatus::Revoked)
        })
        .unwrap_or(false);
    let nonce = postern_proto::ids::random_bytes(16)
        .map(|b| b64(&b))
        .unwrap_or_else(|_| "n".into());
    let posture_json = match posture {
        Some(p) => String::from_utf8_lossy(&p.canonical()).into_owned(),
        None => "null".into(),
    };
    // JSON inside <script type="application/json">: only '<' could end the element early.
    let posture_json = posture_json.replace('<', "\\u003c");
    let shown = posture
        .map(|p| {
            let f = p.policy_facts();
            format!(
                "<p class=\"small\">This laptop reports: {} {} — disk encryption {}, firewall {}, screen lock {}.</p>",
                pages::escape(&p.os_name),
                pages::escape(&p.os_version),
                pages::escape(&f["disk_encrypted"]),
                pages::escape(&f["firewall"]),
                pages::escape(&f["screen_lock"]),
            )
        })
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Confirm your device — Postern</title><style>{style}</style></head>
<body data-state="start" data-has-devices="{has_devices}"><main>
<h1>Confirm your device</h1>
<p>Signed in at the hospital as <strong id="user">{user}</strong>. To finish, this laptop proves it is a registered device (you may be asked for your PIN, fingerprint or face).</p>
{shown}
<div class="box"><p id="status" role="status" aria-live="polite">Starting…</p></div>
<div class="box err" id="error" role="alert" hidden></div>
<p><button id="retry" type="button">Try again</button></p>
<section id="register-form">
<h2>New laptop?</h2>
<p>Register this laptop as one of your devices. Give it a name you will recognise, such as “home laptop”.</p>
<p><label for="device-name">Device name</label><br><input id="device-name" type="text" maxlength="64" autocomplete="off" placeholder="home laptop"> <button id="register" type="button">Register this device</button></p>
</section>
<input type="hidden" id="ceremony" value="{ceremony}">
<script type="application/json" id="posture">{posture_json}</script>
</main><footer>Postern secure access</footer>
<script nonce="{nonce}">{script}</script></body></html>"#,
        style = STYLE,
        user = pages::escape(&identity.user),
        ceremony = pages::escape(ceremony),
        script = SCRIPT,
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    pages::harden(&mut r);
    let csp = format!("default-src 'none'; script-src 'nonce-{nonce}'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'");
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    let c = format!(
        "{COOKIE}={ceremony}; Path=/auth; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        CEREMONY_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

const STYLE: &str = "body{font:18px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b;background:#fff}h1{font-size:1.6rem;margin-bottom:.5rem}h2{font-size:1.2rem;margin-top:2rem}.box{border-left:6px solid #005eb8;padding:.5rem 1rem;background:#f0f4f5;margin:1rem 0}.err{border-color:#d5281b}.small{font-size:.9rem;color:#4c6272}button{font:inherit;padding:.3rem .9rem}input{font:inherit;padding:.2rem .4rem}footer{margin-top:3rem;color:#4c6272;font-size:.9rem}";

const SCRIPT: &str = r#"
(function(){
'use strict';
const $=function(id){return document.getElementById(id);};
const enc=function(buf){const b=new Uint8Array(buf);let s='';for(let i=0;i<b.length;i++)s+=String.fromCharCode(b[i]);return btoa(s).replace(/\+/g,'-').replace(/\//g,'_').replace(/=+$/,'');};
const dec=function(s){s=s.replace(/-/g,'+').replace(/_/g,'/');while(s.length%4)s+='=';const r=atob(s);const b=new Uint8Array(r.length);for(let i=0;i<r.length;i++)b[i]=r.charCodeAt(i);return b.buffer;};
const ceremony=$('ceremony').value;
const posture=JSON.parse($('posture').textContent);
function setState(st,msg){document.body.dataset.state=st;$('status').textContent=msg;}
function showError(code,msg){const e=$('error');e.dataset.code=code;e.textContent=msg;e.hidden=false;document.body.dataset.state='error';}
function clearError(){const e=$('error');e.hidden=true;e.textContent='';delete e.dataset.code;}
async function post(path,body){const r=await fetch(path,{method:'POST',headers:{'content-type':'application/json'},credentials:'same-origin',body:JSON.stringify(body)});let j={};try{j=await r.json();}catch(e){}return {status:r.status,json:j};}
async function assertionBody(){
  const r=await post('/auth/device/assert/begin',{ceremony:ceremony});
  if(r.status!==200)throw r;
  const o=r.json.publicKey;o.challenge=dec(o.challenge);
  (o.allowCredentials||[]).forEach(function(c){c.id=dec(c.id);});
  const c=await navigator.credentials.get({publicKey:o});
  return {ceremony:ceremony,posture:posture,credential:{id:c.id,rawId:enc(c.rawId),type:c.type,extensions:{},response:{authenticatorData:enc(c.response.authenticatorData),clientDataJSON:enc(c.response.clientDataJSON),signature:enc(c.response.signature),userHandle:c.response.userHandle?enc(c.response.userHandle):null}}};
}
async function registrationBody(name){
  const r=await post('/auth/device/register/begin',{ceremony:ceremony,name:name});
  if(r.status!==200)throw r;
  const o=r.json.publicKey;o.challenge=dec(o.challenge);o.user.id=dec(o.user.id);
  (o.excludeCredentials||[]).forEach(function(c){c.id=dec(c.id);});
  const c=await navigator.credentials.create({publicKey:o});
  const t=c.response.getTransports?c.response.getTransports():[];
  return {ceremony:ceremony,posture:posture,credential:{id:c.id,rawId:enc(c.rawId),type:c.type,extensions:{},response:{attestationObject:enc(c.response.attestationObject),clientDataJSON:enc(c.response.clientDataJSON),transports:t}}};
}
function failed(r){
  const j=(r&&r.json)||{};
  if(j.error==='no_devices'){setState('register','No device is registered for you yet. Name this laptop and register it.');$('device-name').focus();return;}
  if(j.error==='device_pending'){setState('pending',(j.message||'This device is waiting for approval.')+' (waiting for approval)');return;}
  if(j.error){showError(j.error,(j.message||'Sign-in failed.')+(j.ref?' Reference: '+j.ref:''));return;}
  const name=(r&&r.name)||'Error';
  showError('client_error',name+': '+String((r&&r.message)||r||'the browser could not use this device')+' — if this laptop is not registered yet, register it below.');
}
async function signIn(){
  clearError();setState('assert','Confirm it is you on this device…');
  try{
    const body=await assertionBody();
    const r=await post('/auth/device/assert/finish',body);
    if(r.status===200&&r.json.status==='ok'){setState('done','Signed in. '+(r.json.message||''));if(r.json.redirect)window.location.assign(r.json.redirect);}
    else failed(r);
  }catch(e){failed(e);}
}
async function register(){
  clearError();
  const name=$('device-name').value.trim();
  if(!name){showError('bad_name','Please give this device a name, such as "home laptop".');return;}
  setState('register','Registering "'+name+'"…');
  try{
    const body=await registrationBody(name);
    const r=await post('/auth/device/register/finish',body);
    if(r.status===200&&r.json.status==='active'){setState('assert','Registered "'+name+'". Now confirm it is you…');await signIn();}
    else if(r.status===200&&r.json.status==='pending'){setState('pending',r.json.message+' (waiting for approval)');}
    else failed(r);
  }catch(e){failed(e);}
}
$('register').addEventListener('click',register);
$('retry').addEventListener('click',signIn);
window.postern={assertionBody:assertionBody,registrationBody:registrationBody,post:post,signIn:signIn,register:register,ceremony:ceremony};
if(document.body.dataset.hasDevices==='true'){signIn();}
else{setState('register','No device is registered for you yet. Name this laptop and register it.');}
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_uuid("a@x"), user_uuid("a@x"));
        assert_ne!(user_uuid("a@x"), user_uuid("b@x"));
    }

    #[test]
    fn binding_checks_size_challenge_and_posture() {
        let nonce = [1u8; 32];
        let report = PostureReport::parse(br#"{"os":"linux","os_name":"Debian","os_version":"12","facts":{"disk_encrypted":"true"},"collected_at":5}"#).unwrap();
        let expected = bound_challenge(&nonce, Some(&report));
        let cred = |challenge: &[u8]| {
            let cd = format!(
                r#"{{"type":"webauthn.get","challenge":"{}","origin":"https://localhost:1"}}"#,
                b64(challenge)
            );
            serde_json::json!({"response": {"clientDataJSON": b64(cd.as_bytes())}})
        };
        let posted = serde_json::to_value(&report).unwrap();
        // The right challenge and the same report.
        let got = check_binding(&cred(&expected), &nonce, &expected, Some(&posted)).unwrap();
        assert_eq!(got, Some(report.clone()));
        // Report altered after signing.
        let mut altered = posted.clone();
        altered["facts"]["disk_encrypted"] = "false".into();
        let e = check_binding(&cred(&expected), &nonce, &expected, Some(&altered)).unwrap_err();
        assert_eq!(e.code, "posture_mismatch");
        // Report dropped.
        let e = check_binding(&cred(&expected), &nonce, &expected, None).unwrap_err();
        assert_eq!(e.code, "posture_mismatch");
        // Another challenge signed.
        let e = check_binding(&cred(&[9u8; 32]), &nonce, &expected, Some(&posted)).unwrap_err();
        assert_eq!(e.code, "challenge_mismatch");
        // Oversized client data.
        let big = serde_json::json!({"response": {"clientDataJSON": "A".repeat(10_000)}});
        let e = check_binding(&big, &nonce, &expected, Some(&posted)).unwrap_err();
        assert_eq!(e.code, "oversized");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Malformed client data.
        let bad = serde_json::json!({"response": {"clientDataJSON": b64(b"{not json")}});
        assert_eq!(
            check_binding(&bad, &nonce, &expected, Some(&posted))
                .unwrap_err()
                .code,
            "bad_request"
        );
        let missing = serde_json::json!({"response": {}});
        assert_eq!(
            check_binding(&missing, &nonce, &expected, Some(&posted))
                .unwrap_err()
                .code,
            "bad_request"
        );
        // Malformed posture.
        let e = check_binding(
            &cred(&expected),
            &nonce,
            &expected,
            Some(&serde_json::json!({"os": 1})),
        )
        .unwrap_err();
        assert_eq!(e.code, "bad_request");
    }
}
