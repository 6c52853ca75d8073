//! [`Authn`]: verifies a bearer token, applies the revocations that can hit a valid token
//! (sign-out, user, device) and builds the [`Subject`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::device_table::DeviceTable;
use super::oidc::Oidc;
use super::subject::Subject;
use super::tokens::{Claims, TokenError, TokenKeys};
use crate::clock::SharedClock;
use crate::http::{bearer, BearerError};
use crate::state::{Revocations, StateStore, StoreError};

/// Authentication: token keys, the revocation set and the device table.
pub struct Authn {
    pub keys: TokenKeys,
    pub devices: DeviceTable,
    pub oidc: Option<Arc<Oidc>>,
    clock: SharedClock,
    /// Ids of session tokens revoked before expiry (sign-out).
    revoked: RwLock<HashSet<String>>,
}

impl Authn {
    pub fn new(keys: TokenKeys, oidc: Option<Arc<Oidc>>, clock: SharedClock) -> Authn {
        Authn {
            keys,
            devices: DeviceTable::default(),
            oidc,
            clock,
            revoked: RwLock::new(HashSet::new()),
        }
    }

    /// Verifies the request's bearer token and builds its subject.
    pub fn authenticate<B>(
        &self,
        req: &http::Request<B>,
        source: SocketAddr,
    ) -> Result<Subject, TokenError> {
        let token = bearer(req).map_err(|e| match e {
            BearerError::Missing => TokenError::Missing,
            BearerError::NotAscii => {
                TokenError::Malformed("authorization header is not ASCII".into())
            }
            BearerError::NotBearer => {
                TokenError::Malformed("authorization is not a Bearer token".into())
            }
        })?;
        let claims = self.verify(token)?;
        Ok(self.subject(claims, source))
    }

    /// The user a refused bearer token names, when the refusal is for its age or a revocation
    /// only (this gateway signed it): for the audit log's record of who kept trying.
    pub fn refused_user<B>(&self, req: &http::Request<B>, e: &TokenError) -> Option<String> {
        match e {
            TokenError::Expired
            | TokenError::Revoked
            | TokenError::UserRevoked
            | TokenError::DeviceNotActive(..) => {}
            _ => return None,
        }
        let token = bearer(req).ok()?;
        self.keys
            .verify_signed(token, self.clock.unix())
            .ok()
            .map(|c| c.sub)
    }

    /// Verifies a token (signature, issuer, audience, expiry) and the revocations that apply
    /// to a valid one.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.keys.verify(token, self.clock.unix())?;
        self.check_live(&claims)?;
        Ok(claims)
    }

    /// Revocations that apply to a valid token: sign-out, its user, its device.
    pub fn check_live(&self, claims: &Claims) -> Result<(), TokenError> {
        if self.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        if self.devices.user_revoked(&claims.sub, claims.iat) {
            return Err(TokenError::UserRevoked);
        }
        if let Some(id) = &claims.device {
            match self.devices.view(id) {
                Some(v)
                    if v.status == crate::state::DeviceStatus::Active
                        && crate::state::same_user(&v.user, &claims.sub) => {}
                Some(v) => return Err(TokenError::DeviceNotActive(id.clone(), v.status.as_str())),
                None => return Err(TokenError::DeviceNotActive(id.clone(), "not registered")),
            }
        }
        Ok(())
    }

    /// The subject of verified `claims`, connected from `source`.
    pub fn subject(&self, claims: Claims, source: SocketAddr) -> Subject {
        let device = claims
            .device
            .as_deref()
            .map(|id| self.devices.facts(id, claims.uv, claims.posture.as_ref()));
        let device_ref = claims.device.as_ref().map(|id| postern_audit::DeviceRef {
            id: id.clone(),
            name: self.devices.view(id).map(|v| v.name),
            user_verified: Some(claims.uv),
        });
        Subject::new(claims, source, device, device_ref)
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().map(|r| r.contains(jti)).unwrap_or(true)
    }

    /// Refuses token `jti` from now on (in this process; the store makes it lasting).
    pub fn revoke_jti(&self, jti: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(jti.to_owned());
        }
    }

    /// Replaces the revocation set and the device table from the store.
    /// Also takes the session-token keys the replicas published.
    pub async fn reload(&self, store: &dyn StateStore) -> Result<(), StoreError> {
        let revocations = store.revocations().await?;
        let devices = store.devices().await?;
        let published = store.published_keys(self.clock.unix()).await?;
        self.load(&revocations, &devices);
        let bad = self.keys.set_published(&published);
        if !bad.is_empty() {
            tracing::warn!(kids = ?bad, "published session-token keys that do not parse were skipped");
        }
        Ok(())
    }

    fn load(&self, revocations: &Revocations, devices: &[crate::state::DeviceRec]) {
        let now = self.clock.unix();
        if let Ok(mut r) = self.revoked.write() {
            *r = revocations
                .tokens
                .iter()
                .filter(|t| t.exp > now)
                .map(|t| t.jti.clone())
                .collect();
        }
        self.devices.load(devices, &revocations.users);
    }
}

/// The answer to a request whose token was refused: 401 (500 if the keys themselves failed),
/// with the error's code and sentence. The sentence never repeats what came from the token's
/// header (a forged token's `kid`), only what the gateway itself knows.
pub fn token_refusal(e: &TokenError) -> crate::http::Resp {
    let status = match e {
        TokenError::Keys { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
        _ => http::StatusCode::UNAUTHORIZED,
    };
    let sentence = match e {
        TokenError::UnknownKey(_) => {
            "session token was signed with an unknown key (not by this gateway)".to_owned()
        }
        _ => e.to_string(),
    };
    crate::http::error(status, e.code(), &sentence)
}
