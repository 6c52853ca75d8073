//! The device routes: `POST /auth/device/{register,assert}/{begin,finish}`.
//!
//! The device page asks for a challenge (`…/begin`), runs `navigator.credentials.get()` (or
//! `create()` to register a new laptop) and posts the result (`…/finish`) together with the
//! posture report. A successful assertion completes the sign-in ([`Issuer::complete`]).
//! Every failure answers JSON `{error, message, ref}` and writes `device.assertion_failed`
//! with the same reference and code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use postern_audit::{DeviceRef, EventType};
use postern_proto::posture::bound_challenge;
use serde::Deserialize;
use tracing::{info, warn};
use webauthn_rs::prelude::{Credential, Passkey, PublicKeyCredential, RegisterPublicKeyCredential};

use super::ceremony::{
    aaguid, b64, check_binding, internal, map_webauthn, passkey_of, set_state_challenge,
    unavailable, user_uuid, Binding, DevError, Pending, COOKIE, MAX_BODY, START_AGAIN,
};
use crate::audit::Audit;
use crate::authn::issue::Issuer;
use crate::authn::verify::Authn;
use crate::clock::SharedClock;
use crate::config::Approval;
use crate::http::{self as web, Resp};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::state::{DeviceChange, DeviceRec, DeviceStatus, Refusal, SharedStore, StoreError};

/// What the device routes need.
pub struct DeviceTrust {
    pub authn: Arc<Authn>,
    pub issuer: Arc<Issuer>,
    /// The relying party and the ceremonies in flight (shared with sign-in, which opens them).
    pub ceremonies: Arc<super::ceremony::Ceremonies>,
    pub store: SharedStore,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    /// `[devices] approval`: whether a new device is active at once or waits.
    pub approval: Approval,
    pub clock: SharedClock,
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
    /// On `begin` of a sign-in `postern login` started: the confirmation code the person
    /// confirmed on the page. Compared with the code kept with the ceremony, never trusted.
    #[serde(default)]
    confirm: Option<String>,
}

/// The parsing and checks a device request body goes through before any ceremony state is
/// touched: the JSON body, the confirmation code, the client data (size, base64url, JSON,
/// signed challenge), the posted posture report and its binding to `expected`, the
/// attestation object's AAGUID, and the credential in webauthn-rs's shapes. For the fuzz
/// target `webauthn_body` (gateway/fuzz); `Err` is the refusal's code.
#[doc(hidden)]
pub fn fuzz_body(
    body: &[u8],
    code: &postern_proto::confirm::ConfirmCode,
    nonce: &[u8],
    expected: &[u8; 32],
) -> Result<(), &'static str> {
    let parsed: Body = serde_json::from_slice(body).map_err(|_| "bad_request")?;
    if let Some(c) = parsed.confirm.as_deref() {
        let _ = code.matches(c);
    }
    let Some(credential) = parsed.credential.as_ref() else {
        return Ok(());
    };
    if let Some(att) = credential
        .get("response")
        .and_then(|r| r.get("attestationObject"))
        .and_then(|a| a.as_str())
        .and_then(|a| URL_SAFE_NO_PAD.decode(a.trim_end_matches('=')).ok())
    {
        let _ = aaguid(&att);
    }
    let _ = serde_json::from_value::<PublicKeyCredential>(credential.clone());
    let _ = serde_json::from_value::<RegisterPublicKeyCredential>(credential.clone());
    check_binding(credential, nonce, expected, parsed.posture.as_ref())
        .map(|_| ())
        .map_err(|e| e.code)
}

/// A ceremony of a CLI sign-in starts only once the person confirmed the code their terminal
/// printed (issue #12 finding 8): the begin request must carry the code kept with the
/// ceremony. Browser-only sign-ins (no CLI) have nothing to confirm.
fn check_confirmed(c: &super::ceremony::Ceremony, b: &Body) -> Result<(), DevError> {
    let Some(cli) = &c.cli else {
        return Ok(());
    };
    match b.confirm.as_deref() {
        None => Err(DevError::bad(
            "confirmation_required",
            "Confirm the code on this page (the one postern login printed in your terminal) before signing in.",
            "begin without the sign-in confirmation code",
        )),
        Some(got) if !cli.code.matches(got) => Err(DevError::bad(
            "code_mismatch",
            "The confirmation code does not belong to this sign-in. Start again with postern login.",
            format!(
                "begin with a confirmation code that is not this sign-in's ({} bytes)",
                got.len()
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn json_resp(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = web::json(status, v);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Audits `device.assertion_failed` and answers the JSON error with the same reference.
fn fail(
    svc: &DeviceTrust,
    kind: &str,
    peer: SocketAddr,
    user: Option<String>,
    e: DevError,
) -> Resp {
    svc.metrics
        .device_ceremonies
        .with_label_values(&[kind, e.code])
        .inc();
    let id = postern_proto::ids::random_id("err")
        .map(|s| s[..16].to_owned())
        .unwrap_or_else(|_| "err-unknown".into());
    warn!(error_id = %id, code = e.code, detail = %e.detail, user = ?user, %peer, kind, "device ceremony failed");
    let mut ev = svc.audit.event(EventType::DeviceAssertionFailed);
    ev.user = user;
    ev.source = Some(peer.to_string());
    ev.device = e.device.as_ref().map(|d| DeviceRef {
        id: d.clone(),
        name: svc.authn.devices.view(d).map(|v| v.name),
        user_verified: None,
    });
    ev.detail = Some(format!("{id}: {}: {kind}: {}", e.code, e.detail));
    svc.audit.record_nowait(ev);
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
    /// `POST /auth/device/wait`: the page asks whether the device it waits on was approved.
    Wait,
}

/// What the page and `postern login` say while a new device waits for approval.
fn waiting_message(name: &str) -> String {
    format!("\"{name}\" is registered and waiting for approval by your security team. This page carries on by itself once it is approved (keep it open for up to 30 minutes), or sign in again later.")
}

/// `POST /auth/device/{register,assert}/{begin,finish}`.
pub async fn handle(
    svc: Arc<DeviceTrust>,
    req: Request<Incoming>,
    peer: SocketAddr,
    step: Step,
) -> Resp {
    let jar = web::cookie(&req, COOKIE);
    // Read the (bounded) body first, so even a refusal is a clean answer.
    let body = read_bounded(req.into_body()).await;
    handle_body(svc, jar, body, peer, step).await
}

/// Reads at most [`MAX_BODY`] bytes. A larger body is read on (and thrown away) up to 1 MiB, so
/// the client still gets the JSON refusal instead of a reset stream; beyond that, it is cut.
async fn read_bounded(mut body: Incoming) -> Result<Bytes, String> {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
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
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| Err("body not received within 10 s".into()))
}

/// [`handle`] after the request is read: `jar` is the `postern_device` cookie, `body` the
/// bounded body (Err when it was too large).
// Over 100 lines on purpose: every refusal before a ceremony step (rate limit, size, JSON,
// cookie binding) is answered and audited here with its own code, in order.
pub(crate) async fn handle_body(
    svc: Arc<DeviceTrust>,
    jar: Option<String>,
    body: Result<Bytes, String>,
    peer: SocketAddr,
    step: Step,
) -> Resp {
    let kind = match step {
        Step::RegisterBegin | Step::RegisterFinish => "register",
        Step::AssertBegin | Step::AssertFinish => "assert",
        Step::Wait => "wait",
    };
    if let Err(secs) = svc.limits.signin.check(&peer.ip()) {
        svc.metrics.note_ratelimited("signin");
        return web::too_many("too many sign-in requests; wait a little", secs);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.starts_with(|c: char| c.is_ascii_digit()) => {
            return fail(
                &svc,
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
                &svc,
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
                &svc,
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
    let user = svc.ceremonies.user_of(&parsed.ceremony).await;
    // The ceremony must be the one this browser's cookie names.
    let bound = jar
        .as_deref()
        .is_some_and(|c| postern_proto::ids::ct_eq(c.as_bytes(), parsed.ceremony.as_bytes()));
    if !bound {
        return fail(
            &svc,
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
        Step::RegisterBegin => register_begin(&svc, &parsed).await,
        Step::AssertBegin => assert_begin(&svc, &parsed).await,
        Step::RegisterFinish => register_finish(&svc, &parsed, peer).await,
        Step::AssertFinish => assert_finish(&svc, &parsed, peer).await,
        Step::Wait => wait_approval(&svc, &parsed).await,
    };
    match result {
        Ok(v) => {
            if matches!(step, Step::RegisterFinish | Step::AssertFinish) {
                svc.metrics
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
        Err(e) => fail(&svc, kind, peer, user, e),
    }
}

async fn user_devices(svc: &DeviceTrust, user: &str) -> Result<Vec<DeviceRec>, DevError> {
    let all = svc.store.devices().await?;
    Ok(all
        .into_iter()
        .filter(|d| crate::state::same_user(&d.user, user))
        .collect())
}

async fn register_begin(svc: &DeviceTrust, b: &Body) -> Result<serde_json::Value, DevError> {
    let w = svc.ceremonies.webauthn()?;
    let c = svc.ceremonies.live(&b.ceremony).await?;
    check_confirmed(&c, b)?;
    let name = b.name.as_deref().map(str::trim).unwrap_or("");
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(DevError::bad(
            "bad_name",
            "Give this device a name of 1–64 characters, such as \"home laptop\".",
            "device name missing, too long or with control characters",
        ));
    }
    let user = svc
        .ceremonies
        .user_of(&b.ceremony)
        .await
        .ok_or_else(|| DevError::bad("unknown_challenge", START_AGAIN, "unknown ceremony"))?;
    let existing: Vec<_> = user_devices(svc, &user)
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
    let nonce = postern_proto::ids::random_bytes(32).map_err(|_| internal("rng failed"))?;
    let challenge = bound_challenge(&nonce, c.posture.as_ref());
    options.public_key.challenge = challenge.to_vec();
    let state = set_state_challenge(&state, "rs", &challenge)?;
    let options = serde_json::to_value(&options).map_err(|e| internal(e.to_string()))?;
    svc.ceremonies
        .set_pending(&b.ceremony, Pending::Register { state, nonce, name })
        .await?;
    Ok(options)
}

async fn assert_begin(svc: &DeviceTrust, b: &Body) -> Result<serde_json::Value, DevError> {
    let w = svc.ceremonies.webauthn()?;
    let c = svc.ceremonies.live(&b.ceremony).await?;
    check_confirmed(&c, b)?;
    let user = svc
        .ceremonies
        .user_of(&b.ceremony)
        .await
        .ok_or_else(|| DevError::bad("unknown_challenge", START_AGAIN, "unknown ceremony"))?;
    // Every registered credential of the user is offered, whatever its status, so a pending or
    // revoked laptop gets its own clear answer instead of "no passkey found".
    let keys: Vec<Passkey> = user_devices(svc, &user)
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
    let nonce = postern_proto::ids::random_bytes(32).map_err(|_| internal("rng failed"))?;
    let challenge = bound_challenge(&nonce, c.posture.as_ref());
    options.public_key.challenge = challenge.to_vec();
    let state = set_state_challenge(&state, "ast", &challenge)?;
    let options = serde_json::to_value(&options).map_err(|e| internal(e.to_string()))?;
    svc.ceremonies
        .set_pending(&b.ceremony, Pending::Assert { state, nonce })
        .await?;
    Ok(options)
}

fn audit_device(svc: &DeviceTrust, kind: EventType, rec: &DeviceRec, detail: String) {
    let mut ev = svc.audit.event(kind);
    ev.user = Some(rec.user.clone());
    ev.device = Some(DeviceRef {
        id: rec.id.clone(),
        name: Some(rec.name.clone()),
        user_verified: Some(rec.user_verified),
    });
    ev.detail = Some(detail);
    svc.audit.record_nowait(ev);
}

/// Reloads the device table after a change, so the next token check sees it.
async fn reload(svc: &DeviceTrust) {
    if let Err(e) = svc.authn.reload(&*svc.store).await {
        warn!(error = %e, "cannot re-read the device table");
    }
}

impl From<StoreError> for DevError {
    fn from(e: StoreError) -> DevError {
        match e {
            StoreError::Unavailable(_) => unavailable(e.to_string()),
            e => internal(e.to_string()),
        }
    }
}

// Over 100 lines on purpose: one WebAuthn registration step, its checks in the order the
// ceremony requires (challenge, posture binding, attestation, duplicate credential), each
// refusal with its audited code.
async fn register_finish(
    svc: &DeviceTrust,
    b: &Body,
    peer: SocketAddr,
) -> Result<serde_json::Value, DevError> {
    let w = svc.ceremonies.webauthn()?;
    let credential = b.credential.as_ref().ok_or_else(|| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            "no credential",
        )
    })?;
    let Pending::Register { state, nonce, name } = svc.ceremonies.take_pending(&b.ceremony).await?
    else {
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
    let user = svc.ceremonies.live(&b.ceremony).await?.identity.user;
    let approval = svc.approval;
    let now = svc.clock.unix();
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
    match svc.store.add_device(rec.clone()).await {
        Ok(()) => reload(svc).await,
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
        svc,
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
            svc,
            EventType::DeviceApproved,
            &rec,
            "approved automatically (devices.approval = \"auto\")".into(),
        );
        Ok(serde_json::json!({"status": "active", "device": rec.id, "next": "assert"}))
    } else {
        svc.ceremonies
            .await_approval(&b.ceremony, &rec.id, &rec.name)
            .await?;
        Ok(serde_json::json!({
            "status": "pending",
            "device": rec.id,
            "message": waiting_message(&rec.name),
        }))
    }
}

/// `POST /auth/device/wait {ceremony}`: whether the device the ceremony waits on is approved
/// now (`{"status": "active", "next": "assert"}`: the page signs in with it at once) or still
/// pending (`{"status": "pending"}`). Revoked meanwhile: refused with its code.
async fn wait_approval(svc: &DeviceTrust, b: &Body) -> Result<serde_json::Value, DevError> {
    let Some(device) = svc.ceremonies.awaited_device(&b.ceremony).await? else {
        return Err(DevError::bad(
            "unknown_challenge",
            START_AGAIN,
            "the ceremony is not waiting for an approval",
        ));
    };
    let rec = svc
        .store
        .devices()
        .await?
        .into_iter()
        .find(|d| d.id == device)
        .ok_or_else(|| {
            DevError::new(
                StatusCode::FORBIDDEN,
                "device_revoked",
                "This device is no longer registered. Contact the security team.",
                "the awaited device is gone",
            )
        })?;
    match rec.status {
        DeviceStatus::Active => Ok(serde_json::json!({"status": "active", "next": "assert"})),
        DeviceStatus::Pending => Ok(serde_json::json!({"status": "pending"})),
        DeviceStatus::Revoked | DeviceStatus::Suspect => Err(DevError::new(
            StatusCode::FORBIDDEN,
            "device_revoked",
            "The security team did not approve this device. Contact them if you need it.",
            format!("the awaited device is now {}", rec.status.as_str()),
        )
        .with_device(&rec.id)),
    }
}

/// `POST /auth/cli/wait {code_verifier}`: asked every few seconds by a waiting `postern login`
/// — whether its sign-in waits for the approval of a new device (`{"status":
/// "waiting_for_approval", "device": NAME, "until": UNIX}`) or not (`{"status": "none"}`).
/// Only the holder of the verifier can ask (the marker is found by its PKCE challenge).
pub async fn cli_wait(svc: Arc<DeviceTrust>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if let Err(secs) = svc.limits.signin.check(&peer.ip()) {
        svc.metrics.note_ratelimited("signin");
        return web::too_many("too many sign-in requests; wait a little", secs);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        code_verifier: String,
    }
    let body = read_bounded(req.into_body()).await;
    let ask: Ask = match body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(a) => a,
        None => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "bad_request", "message": "expected {\"code_verifier\": …}"}),
            )
        }
    };
    if ask.code_verifier.is_empty() || ask.code_verifier.len() > 128 {
        return json_resp(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "message": "code_verifier must be 1 to 128 characters"}),
        );
    }
    let challenge =
        b64(ring::digest::digest(&ring::digest::SHA256, ask.code_verifier.as_bytes()).as_ref());
    match svc.ceremonies.cli_waiting(&challenge).await {
        Some((device, until)) => json_resp(
            StatusCode::OK,
            &serde_json::json!({"status": "waiting_for_approval", "device": device, "until": until}),
        ),
        None => json_resp(StatusCode::OK, &serde_json::json!({"status": "none"})),
    }
}

// Over 100 lines on purpose: one WebAuthn assertion step, its checks in ceremony order
// (challenge, posture binding, credential owner, signature and counter, device status),
// then the sign-in completion; each refusal carries its audited code.
async fn assert_finish(
    svc: &DeviceTrust,
    b: &Body,
    peer: SocketAddr,
) -> Result<serde_json::Value, DevError> {
    let w = svc.ceremonies.webauthn()?;
    let credential = b.credential.as_ref().ok_or_else(|| {
        DevError::bad(
            "bad_request",
            "The browser sent a malformed answer.",
            "no credential",
        )
    })?;
    let Pending::Assert { state, nonce } = svc.ceremonies.take_pending(&b.ceremony).await? else {
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
    let user = svc.ceremonies.live(&b.ceremony).await?.identity.user;
    let cred_id = b64(&pkc.raw_id);
    let devices = user_devices(svc, &user).await?;
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
                if svc.store.update_device(id, suspect).await.is_ok() {
                    reload(svc).await;
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
    let seen_at = svc.clock.unix();
    let seen: DeviceChange = Box::new(move |d| {
        if let Some(mut pk) = passkey_of(d) {
            pk.update_credential(&result);
            d.passkey = serde_json::to_value(&pk).map_err(|e| Refusal::Rejected(e.to_string()))?;
        }
        d.sign_count = d.sign_count.max(result.counter());
        d.backup_state = result.backup_state();
        d.last_seen = Some(seen_at);
        if posture_saved.is_some() {
            d.posture = posture_saved;
        }
        Ok(())
    });
    let (_, rec) = svc.store.update_device(id, seen).await?;
    reload(svc).await;
    match rec.status {
        DeviceStatus::Active => {}
        DeviceStatus::Pending => {
            svc.ceremonies
                .await_approval(&b.ceremony, &rec.id, &rec.name)
                .await?;
            return Err(DevError::new(
                StatusCode::FORBIDDEN,
                "device_pending",
                &waiting_message(&rec.name),
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
        svc,
        EventType::DeviceVerified,
        &DeviceRec {
            user_verified,
            ..rec.clone()
        },
        format!("sign count {counter}; from {peer}"),
    );
    let mut ev = svc.audit.event(EventType::PostureReported);
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
    svc.audit.record_nowait(ev);
    let c = svc.ceremonies.take(&b.ceremony).await?;
    let (identity, cli) = (c.identity, c.cli);
    if let Some(cli) = &cli {
        svc.ceremonies.cli_done(cli).await;
    }
    let binding = Binding {
        device: rec.id.clone(),
        name: rec.name.clone(),
        user_verified,
        posture,
    };
    let redirect = svc
        .issuer
        .complete(&identity, cli, Some(&binding), peer, "-")
        .await
        .map_err(|e| DevError::new(e.status, e.code, &e.public, e.detail))?;
    Ok(serde_json::json!({
        "status": "ok",
        "device": rec.id,
        "redirect": redirect,
        "message": format!("Signed in as {} on \"{}\".", identity.user, rec.name),
    }))
}
