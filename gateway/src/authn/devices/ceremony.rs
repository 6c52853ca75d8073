//! The WebAuthn side of sign-in: the relying party and the ceremonies in flight (10 minutes,
//! bound to the browser by the `postern_device` cookie), with the posture binding of their
//! challenges. Ceremonies are kept in the [`StateStore`](crate::state::StateStore) (the
//! webauthn-rs state serialised), so each step may reach any replica that shares the store.
//!
//! The challenge is not webauthn-rs's random one: the gateway draws its own nonce `N` and puts
//! `SHA-256(N || SHA-256(canonical posture))` into both the options sent to the browser and
//! the serialised ceremony state, so the authenticator signs the posture report. `finish`
//! recomputes it from `N` and the *posted* report; a report altered after signing fails with
//! `posture_mismatch`. Each begin replaces the pending challenge, each finish consumes it
//! (a replayed assertion finds nothing: `unknown_challenge`).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::StatusCode;
use postern_proto::posture::{bound_challenge, PostureReport};
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder,
    WebauthnError,
};

use crate::authn::oidc::{CliRequest, Identity};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::state::{CeremonyRec, DeviceRec, Refusal, SharedStore, StoreError};

/// Cookie binding a ceremony to the browser that finished the IdP sign-in.
pub const COOKIE: &str = "postern_device";
/// Lifetime of a ceremony (at most 10 000 are in flight: the store's cap).
pub(super) const CEREMONY_TTL: Duration = Duration::from_secs(600);
/// How long a ceremony whose new device waits for approval is kept: the page carries on by
/// itself if the security team approves within this time (from when it started waiting).
pub(super) const APPROVAL_WAIT: Duration = Duration::from_secs(30 * 60);
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

/// The outstanding challenge of a ceremony (stored as [`CeremonyRec::pending`]).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum Pending {
    Register {
        state: PasskeyRegistration,
        nonce: Vec<u8>,
        name: String,
    },
    Assert {
        state: PasskeyAuthentication,
        nonce: Vec<u8>,
    },
    /// No challenge: the ceremony waits for the approval of `device` (registered, pending).
    Approval { device: String },
}

/// The store id of the marker that tells a waiting `postern login` its device waits for
/// approval: derived from the CLI's PKCE challenge (public: it is in the sign-in URL), hashed
/// again so the id is not the challenge itself. Only a caller holding the verifier can
/// compute the challenge, so only the CLI that started the sign-in can ask.
pub(super) fn cli_wait_id(challenge: &str) -> String {
    let h = ring::digest::digest(&ring::digest::SHA256, challenge.as_bytes());
    format!("wait-{}", postern_proto::ids::hex(h.as_ref()))
}

/// A ceremony in flight, as the routes use it (without its outstanding challenge).
pub(super) struct Ceremony {
    pub(super) identity: Identity,
    pub(super) cli: Option<CliRequest>,
    pub(super) posture: Option<PostureReport>,
}

impl Ceremony {
    fn from_rec(rec: CeremonyRec) -> Result<Ceremony, DevError> {
        let identity = serde_json::from_value(rec.identity)
            .map_err(|e| internal(format!("stored ceremony identity: {e}")))?;
        let cli = rec
            .cli
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| internal(format!("stored ceremony cli request: {e}")))?;
        Ok(Ceremony {
            identity,
            cli,
            posture: rec.posture,
        })
    }
}

/// The WebAuthn relying party and the ceremonies in flight (in the store).
pub struct Ceremonies {
    webauthn: Option<Webauthn>,
    store: SharedStore,
    clock: SharedClock,
}

/// The answer for a ceremony the store does not have (unknown, expired or finished).
fn unknown(detail: &str) -> DevError {
    DevError::bad("unknown_challenge", START_AGAIN, detail)
}

/// The WebAuthn relying party the configuration describes: `None` unless sign-in and device
/// trust are both on; `Err` says what is wrong with the configuration. `check` uses this
/// alone.
pub fn relying_party(config: &Config) -> Result<Option<Webauthn>, String> {
    if config.oidc.is_none() || !config.devices.required {
        return Ok(None);
    }
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
    Ok(Some(w))
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
    pub(super) fn new(
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
    pub(super) fn bad(code: &'static str, public: &str, detail: impl Into<String>) -> Self {
        DevError::new(StatusCode::BAD_REQUEST, code, public, detail)
    }
    pub(super) fn with_device(mut self, id: &str) -> Self {
        self.device = Some(id.to_owned());
        self
    }
}

pub(super) const START_AGAIN: &str =
    "This sign-in step is no longer valid. Please start the sign-in again.";

/// The store's database does not answer: the clinician may simply try again.
pub(super) fn unavailable(detail: impl Into<String>) -> DevError {
    DevError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "The gateway cannot reach its database just now. Please try again in a minute.",
        detail,
    )
}

pub(super) fn internal(detail: impl Into<String>) -> DevError {
    DevError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Something went wrong on our side. Please try again.",
        detail,
    )
}

/// The stable per-user WebAuthn user handle.
pub(super) fn user_uuid(user: &str) -> Uuid {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("postern-user:{user}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    Uuid::from_bytes(b)
}

pub(super) fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl Ceremonies {
    /// Builds the WebAuthn relying party when sign-in and device trust are both on; the
    /// ceremonies are kept in `store`.
    pub fn new(
        config: &Config,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Ceremonies, String> {
        Ok(Ceremonies {
            webauthn: relying_party(config)?,
            store,
            clock,
        })
    }

    pub fn enabled(&self) -> bool {
        self.webauthn.is_some()
    }

    pub(super) fn webauthn(&self) -> Result<&Webauthn, DevError> {
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
    pub async fn open(
        &self,
        identity: Identity,
        cli: Option<CliRequest>,
    ) -> Result<String, DevError> {
        let id = postern_proto::ids::random_bytes(32)
            .map(|b| b64(&b))
            .map_err(|_| internal("random number generator failed"))?;
        let now = self.clock.unix();
        let posture = cli.as_ref().and_then(|c| c.posture.clone());
        let rec = CeremonyRec {
            identity: serde_json::to_value(&identity).map_err(|e| internal(e.to_string()))?,
            cli: cli
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| internal(e.to_string()))?,
            posture,
            pending: None,
            expires: now + CEREMONY_TTL.as_secs(),
        };
        match self.store.put_ceremony(id.clone(), rec, now).await {
            Ok(()) => Ok(id),
            Err(StoreError::Refused(Refusal::SignInsFull(_))) => Err(DevError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many sign-ins are in progress. Please try again in a minute.",
                "ceremony table full",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The live ceremony `id`.
    pub(super) async fn live(&self, id: &str) -> Result<Ceremony, DevError> {
        let rec = self
            .store
            .ceremony(id.to_owned())
            .await?
            .filter(|c| c.live(self.clock.unix()))
            .ok_or_else(|| unknown("unknown, expired or finished ceremony"))?;
        Ceremony::from_rec(rec)
    }

    /// Makes `pending` the ceremony's outstanding challenge (replacing any earlier one).
    pub(super) async fn set_pending(&self, id: &str, pending: Pending) -> Result<(), DevError> {
        let pending = serde_json::to_value(&pending).map_err(|e| internal(e.to_string()))?;
        self.update(id, Box::new(move |c| c.pending = Some(pending)))
            .await
            .map(|_| ())
    }

    /// Changes the live ceremony `id`; returns it as it was before.
    async fn update(
        &self,
        id: &str,
        change: Box<dyn FnOnce(&mut CeremonyRec) + Send>,
    ) -> Result<CeremonyRec, DevError> {
        self.store
            .update_ceremony(
                id.to_owned(),
                self.clock.unix(),
                Box::new(move |c| {
                    change(c);
                    Ok(())
                }),
            )
            .await
            .map(|(before, _)| before)
            .map_err(|e| match e {
                StoreError::Refused(Refusal::UnknownCeremony) => {
                    unknown("unknown, expired or finished ceremony")
                }
                e => e.into(),
            })
    }

    /// Takes the outstanding challenge out of the live ceremony `id` (each is used once).
    pub(super) async fn take_pending(&self, id: &str) -> Result<Pending, DevError> {
        let before = self.update(id, Box::new(|c| c.pending = None)).await?;
        let pending = before.pending.ok_or_else(|| {
            unknown("no challenge outstanding for this ceremony (already used or never issued)")
        })?;
        serde_json::from_value(pending)
            .map_err(|e| internal(format!("stored ceremony challenge: {e}")))
    }

    /// Takes a finished ceremony out of the store.
    pub(super) async fn take(&self, id: &str) -> Result<Ceremony, DevError> {
        let rec = self
            .store
            .take_ceremony(id.to_owned(), self.clock.unix())
            .await?
            .ok_or_else(|| unknown("ceremony vanished"))?;
        Ceremony::from_rec(rec)
    }

    /// The ceremony now waits for the approval of `device`: it is kept [`APPROVAL_WAIT`] (so
    /// the page carries on by itself once the device is approved), and a `postern login`
    /// waiting on it is told (a marker under [`cli_wait_id`]). Answers until when.
    pub(super) async fn await_approval(
        &self,
        id: &str,
        device: &str,
        device_name: &str,
    ) -> Result<u64, DevError> {
        let pending = serde_json::to_value(Pending::Approval {
            device: device.to_owned(),
        })
        .map_err(|e| internal(e.to_string()))?;
        let now = self.clock.unix();
        let until = now + APPROVAL_WAIT.as_secs();
        let before = self
            .update(
                id,
                Box::new(move |c| {
                    c.pending = Some(pending);
                    c.expires = c.expires.max(until);
                }),
            )
            .await?;
        if let Some(cli) = Ceremony::from_rec(before)?.cli {
            let marker = CeremonyRec {
                identity: serde_json::json!({ "waiting_for": device_name }),
                cli: None,
                posture: None,
                pending: None,
                expires: until,
            };
            if let Err(e) = self
                .store
                .put_ceremony(cli_wait_id(&cli.challenge), marker, now)
                .await
            {
                tracing::warn!(error = %e, "cannot tell postern login that its device waits for approval");
            }
        }
        Ok(until)
    }

    /// The device the live ceremony `id` waits on, if it waits for an approval.
    pub(super) async fn awaited_device(&self, id: &str) -> Result<Option<String>, DevError> {
        let rec = self
            .store
            .ceremony(id.to_owned())
            .await?
            .filter(|c| c.live(self.clock.unix()))
            .ok_or_else(|| unknown("unknown, expired or finished ceremony"))?;
        Ok(rec
            .pending
            .and_then(|p| serde_json::from_value::<Pending>(p).ok())
            .and_then(|p| match p {
                Pending::Approval { device } => Some(device),
                _ => None,
            }))
    }

    /// The name of the device a `postern login` with PKCE challenge `challenge` waits on for
    /// approval, and until when, if it does.
    pub(super) async fn cli_waiting(&self, challenge: &str) -> Option<(String, u64)> {
        let rec = self.store.ceremony(cli_wait_id(challenge)).await.ok()??;
        if !rec.live(self.clock.unix()) {
            return None;
        }
        let name = rec.identity.get("waiting_for")?.as_str()?.to_owned();
        Some((name, rec.expires))
    }

    /// Drops the marker of a `postern login` that no longer waits.
    pub(super) async fn cli_done(&self, cli: &CliRequest) {
        let _ = self
            .store
            .take_ceremony(cli_wait_id(&cli.challenge), self.clock.unix())
            .await;
    }

    /// The user of ceremony `id`, for the audit record of a failed step (also of an expired
    /// ceremony the store still holds).
    pub(super) async fn user_of(&self, id: &str) -> Option<String> {
        let rec = self.store.ceremony(id.to_owned()).await.ok()??;
        rec.identity
            .get("user")
            .and_then(|u| u.as_str())
            .map(str::to_owned)
    }
}

/// Puts `challenge` into a serialised webauthn-rs ceremony state (`{"ast"|"rs": {"challenge"}}`).
pub(super) fn set_state_challenge<T: serde::Serialize + serde::de::DeserializeOwned>(
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

pub(super) fn passkey_of(d: &DeviceRec) -> Option<Passkey> {
    serde_json::from_value(d.passkey.clone()).ok()
}

/// Extracts the AAGUID (16 bytes after rpIdHash, flags and counter) from an attestation object.
pub(super) fn aaguid(attestation_object: &[u8]) -> Option<String> {
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
pub(super) fn signed_challenge(client_data: &[u8]) -> Result<Vec<u8>, DevError> {
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

pub(super) fn map_webauthn(e: WebauthnError) -> DevError {
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

/// Checks sizes, the signed challenge and the posture binding of a posted credential.
pub(super) fn check_binding(
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
