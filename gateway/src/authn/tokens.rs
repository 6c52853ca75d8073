//! Session tokens: EdDSA (Ed25519) JWTs signed by the gateway.
//!
//! Keys live in `STATE_DIR/jwt/`: `<kid>.key` (PKCS#8 PEM, 0600) and `<kid>.pub` (SPKI PEM);
//! `active` names the signing kid. Every key in the directory verifies, so rotation is: add a
//! key, make it active, remove the old one after the longest token lifetime.
//!
//! The same token type is issued by `postern-gateway session mint` (service accounts, tests)
//! and, later, by the OIDC sign-in.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use postern_net::fsutil::{private_dir, write_atomic};

/// How far a token's `iat` or `nbf` may lie in the future of this gateway's clock, seconds:
/// replicas' clocks may differ by this much (NTP keeps them far closer).
pub const MAX_CLOCK_SKEW: u64 = 60;

/// This deployment's id, in `STATE_DIR/jwt/` beside the signing keys (so whoever shares or
/// copies the keys shares or copies it too).
pub const DEPLOYMENT_FILE: &str = "deployment-id";

/// Claims of a session token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user (IdP subject or e-mail).
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    /// Token id, for audit and revocation.
    pub jti: String,
    /// When the user authenticated (seconds since the epoch).
    #[serde(default)]
    pub auth_time: Option<u64>,
    /// Whether multi-factor authentication was performed.
    #[serde(default)]
    pub mfa: bool,
    /// The device the sign-in was completed on (WebAuthn assertion), if device trust is on.
    #[serde(default)]
    pub device: Option<String>,
    /// Whether the device verified its user (PIN, biometric) in that assertion.
    #[serde(default)]
    pub uv: bool,
    /// Posture facts the device reported and signed at sign-in (policy `device.posture.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<std::collections::BTreeMap<String, String>>,
    /// Display name from the identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address from the identity provider (audit events carry it, so an auditor finds
    /// a person by the address they know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// DICOM calling AE titles the identity provider gave the user (`oidc.ae_title_claim`):
    /// what a policy's `{user.ae}` accepts beside `[dicom] ae_titles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ae: Vec<String>,
    /// Issuer of the sign-in (the IdP), or `mint` for tokens from `session mint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("session token has expired; sign in again")]
    Expired,
    #[error(
        "session token is not valid yet ({0}); check the clocks of the gateway and its replicas"
    )]
    NotYetValid(String),
    #[error("session token signature is not valid for this gateway")]
    BadSignature,
    #[error(
        "session token was issued for another Postern deployment ({0}); sign in to this gateway"
    )]
    OtherDeployment(String),
    #[error("session token was signed with an unknown key (kid {0})")]
    UnknownKey(String),
    #[error("session token is malformed: {0}")]
    Malformed(String),
    #[error("no session token: send 'authorization: Bearer <token>'")]
    Missing,
    #[error("session token was revoked (signed out); sign in again")]
    Revoked,
    #[error("the device this session token is bound to ({0}) is {1}; sign in again from an active device")]
    DeviceNotActive(String, &'static str),
    #[error("access for this user was revoked; sign in again")]
    UserRevoked,
    #[error("token keys in {path}: {message}")]
    Keys { path: String, message: String },
}

impl TokenError {
    /// Stable code for error bodies and audit.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid(_) => "token_not_yet_valid",
            TokenError::OtherDeployment(_) => "token_other_deployment",
            TokenError::Revoked => "token_revoked",
            TokenError::DeviceNotActive(..) => "device_revoked",
            TokenError::UserRevoked => "user_revoked",
            TokenError::BadSignature | TokenError::UnknownKey(_) => "token_invalid_signature",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Missing => "token_missing",
            TokenError::Keys { .. } => "internal",
        }
    }
}

/// Reads this deployment's id from `jwt_dir`, creating one (`dep-` + 16 hex digits) at the
/// first start.
fn deployment_id(jwt_dir: &Path) -> Result<String, String> {
    let path = jwt_dir.join(DEPLOYMENT_FILE);
    if !path.exists() {
        let id = postern_proto::ids::random_bytes(8)
            .map(|b| format!("dep-{}", postern_proto::ids::hex(&b)))
            .map_err(|_| "random number generator failed".to_owned())?;
        write_atomic(&path, id.as_bytes(), 0o644).map_err(|e| e.to_string())?;
    }
    let id = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .to_owned();
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!(
            "{}: expected a deployment id (letters, digits, '-', '_'; at most 64)",
            path.display()
        ));
    }
    Ok(id)
}

/// A fresh token id.
pub fn new_jti() -> Result<String, TokenError> {
    postern_proto::ids::random_id("tok")
        .map_err(|_| TokenError::Malformed("random number generator failed".into()))
}

/// The most characters of a token id ([`Claims::jti`]) that audit events carry.
const SIGNIN_ID_MAX: usize = 64;

impl Claims {
    /// The sign-in this token stands for, as audit events name it (`signin`): its id, bounded.
    pub fn signin_id(&self) -> String {
        crate::http::printable(&self.jti, SIGNIN_ID_MAX)
    }
}

pub struct TokenKeys {
    /// `iss` of this deployment's tokens: `postern-gateway/<deployment id>`.
    issuer: String,
    /// `aud` of this deployment's tokens: `postern/<deployment id>`, plus `/<public origin>`
    /// when the gateway knows its URL ([`TokenKeys::for_origin`]).
    audience: String,
    deployment: String,
    active: String,
    /// The active key's public half (SPKI PEM), published for the other replicas.
    active_public: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    /// Keys other replicas published in the store (kid → key), replaced on every change.
    published: std::sync::RwLock<HashMap<String, DecodingKey>>,
    /// The public halves as JWK `x` values (kid → base64url key): the local keys, then the
    /// published ones, for the key set web applications verify assertions with.
    jwk_x: HashMap<String, String>,
    published_x: std::sync::RwLock<HashMap<String, String>>,
    validation: Validation,
}

/// The JWK `x` (base64url of the 32-byte key) of an Ed25519 public key in SPKI PEM.
fn ed25519_x(pem: &str) -> Option<String> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    // SPKI for Ed25519: a 12-byte prefix, then the key.
    (der.len() == 44).then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[12..]))
}

impl TokenKeys {
    /// Generates a new signing key in `DIR/jwt` and makes it the active one; returns its kid.
    /// The previous keys stay and keep verifying the tokens they signed (remove their files
    /// once the longest token lifetime has passed). A running gateway signs with the new key
    /// after a restart.
    pub fn add_active_key(state_dir: &Path) -> Result<String, TokenError> {
        let dir = state_dir.join("jwt");
        let keys_err = |message: String| TokenError::Keys {
            path: dir.display().to_string(),
            message,
        };
        private_dir(&dir).map_err(|e| keys_err(e.to_string()))?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| keys_err(e.to_string()))?;
        let kid = format!(
            "k{}",
            &postern_proto::ids::sha256_hex(key.public_key_raw())[..16]
        );
        write_atomic(
            &dir.join(format!("{kid}.key")),
            key.serialize_pem().as_bytes(),
            0o600,
        )
        .map_err(|e| keys_err(e.to_string()))?;
        write_atomic(
            &dir.join(format!("{kid}.pub")),
            key.public_key_pem().as_bytes(),
            0o644,
        )
        .map_err(|e| keys_err(e.to_string()))?;
        write_atomic(&dir.join("active"), kid.as_bytes(), 0o600)
            .map_err(|e| keys_err(e.to_string()))?;
        Ok(kid)
    }

    /// Loads `DIR/jwt`, generating a first key if there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<TokenKeys, TokenError> {
        let dir = state_dir.join("jwt");
        let keys_err = |message: String| TokenError::Keys {
            path: dir.display().to_string(),
            message,
        };
        private_dir(&dir).map_err(|e| keys_err(e.to_string()))?;
        let active_path = dir.join("active");
        if !active_path.exists() {
            Self::add_active_key(state_dir)?;
        }
        let active = std::fs::read_to_string(&active_path)
            .map_err(|e| keys_err(e.to_string()))?
            .trim()
            .to_owned();
        let priv_pem = std::fs::read(dir.join(format!("{active}.key")))
            .map_err(|e| keys_err(format!("active key {active}: {e}")))?;
        let encoding =
            EncodingKey::from_ed_pem(&priv_pem).map_err(|e| keys_err(format!("{active}: {e}")))?;
        let mut decoding = HashMap::new();
        let mut jwk_x = HashMap::new();
        let mut active_public = String::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| keys_err(e.to_string()))?;
        for entry in entries {
            let path = entry.map_err(|e| keys_err(e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pub") {
                continue;
            }
            let Some(kid) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let pem = std::fs::read(&path).map_err(|e| keys_err(e.to_string()))?;
            let key =
                DecodingKey::from_ed_pem(&pem).map_err(|e| keys_err(format!("{kid}: {e}")))?;
            if kid == active {
                active_public = String::from_utf8_lossy(&pem).into_owned();
            }
            if let Some(x) = ed25519_x(&String::from_utf8_lossy(&pem)) {
                jwk_x.insert(kid.to_owned(), x);
            }
            decoding.insert(kid.to_owned(), key);
        }
        if !decoding.contains_key(&active) {
            return Err(keys_err(format!("public key {active}.pub is missing")));
        }
        let deployment = deployment_id(&dir).map_err(keys_err)?;
        let issuer = format!("postern-gateway/{deployment}");
        let audience = format!("postern/{deployment}");
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        // The gateway verifies only tokens it issued itself, on the same clock: no leeway.
        // Expiry is checked against the gateway's clock in `verify`, not the library's.
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(TokenKeys {
            issuer,
            audience,
            deployment,
            active,
            active_public,
            encoding,
            decoding,
            published: Default::default(),
            jwk_x,
            published_x: Default::default(),
            validation,
        })
    }

    /// Makes `id` this state directory's deployment id (replicas share the one in the store),
    /// so `session mint` here issues tokens every replica accepts.
    pub fn adopt_deployment(state_dir: &Path, id: &str) -> Result<(), TokenError> {
        let dir = state_dir.join("jwt");
        write_atomic(&dir.join(DEPLOYMENT_FILE), id.as_bytes(), 0o600).map_err(|e| {
            TokenError::Keys {
                path: dir.display().to_string(),
                message: e.to_string(),
            }
        })
    }

    /// This deployment's id (`iss` is `postern-gateway/<id>`).
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The signing key's id and public half (SPKI PEM), to publish.
    pub fn active_public(&self) -> (&str, &str) {
        (&self.active, &self.active_public)
    }

    /// Verifies with `keys` (the other replicas' published keys) from now on, besides the
    /// local ones; a key that does not parse is skipped and named in the answer.
    pub fn set_published(&self, keys: &[crate::state::PublishedKey]) -> Vec<String> {
        let mut bad = Vec::new();
        let map: HashMap<String, DecodingKey> = keys
            .iter()
            .filter_map(
                |k| match DecodingKey::from_ed_pem(k.public_pem.as_bytes()) {
                    Ok(d) => Some((k.kid.clone(), d)),
                    Err(_) => {
                        bad.push(k.kid.clone());
                        None
                    }
                },
            )
            .collect();
        if let Ok(mut p) = self.published.write() {
            *p = map;
        }
        let xs = keys
            .iter()
            .filter_map(|k| Some((k.kid.clone(), ed25519_x(&k.public_pem)?)))
            .collect();
        if let Ok(mut p) = self.published_x.write() {
            *p = xs;
        }
        bad
    }

    /// Binds the tokens to the gateway's public origin (`https://host:port`, from
    /// `[devices] origin` or `oidc.redirect_url`): a copy of this state directory serving
    /// another URL (staging made from production) then refuses this one's tokens.
    pub fn for_origin(mut self, origin: Option<&str>) -> TokenKeys {
        if let Some(origin) = origin {
            self.audience = format!("postern/{}/{origin}", self.deployment);
            self.validation.set_audience(&[&self.audience]);
        }
        self
    }

    /// This deployment's token issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Mints a token for `user` with `groups`, valid for `ttl`. Returns (token, claims).
    pub fn mint(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
        now: u64,
    ) -> Result<(String, Claims), TokenError> {
        self.issue(Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.into(),
            groups: groups.to_vec(),
            iat: now,
            exp: now + ttl.as_secs(),
            jti: new_jti()?,
            auth_time: Some(now),
            mfa: false,
            device: None,
            uv: false,
            posture: None,
            name: None,
            email: None,
            ae: Vec::new(),
            idp: Some("mint".into()),
        })
    }

    /// Signs `claims` (issuer and audience are set here).
    pub fn issue(&self, mut claims: Claims) -> Result<(String, Claims), TokenError> {
        claims.iss = self.issuer.clone();
        claims.aud = self.audience.clone();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.active.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        Ok((token, claims))
    }

    /// Signs other claims with the active key (`kid` set): the web proxy's application
    /// cookies and upstream identity assertions. The caller sets `iss`, `aud` and `exp`; an
    /// audience other than the session tokens' keeps them from ever passing for one.
    pub fn sign_json<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.active.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Malformed(e.to_string()))
    }

    /// Verifies a token [`TokenKeys::sign_json`] made: signature (any key of this deployment),
    /// this deployment's issuer, `audience`, and `exp` after `now`.
    pub fn verify_json<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        now: u64,
    ) -> Result<T, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed("longer than 8192 bytes".into()));
        }
        let key = self.key_for(token)?;
        let mut validation = self.validation.clone();
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let d =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        TokenError::OtherDeployment("audience".into())
                    }
                    _ => TokenError::Malformed(e.to_string()),
                }
            })?;
        let exp = d.claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        if exp <= now {
            return Err(TokenError::Expired);
        }
        serde_json::from_value(d.claims).map_err(|e| TokenError::Malformed(e.to_string()))
    }

    /// The public keys as a JSON Web Key Set (RFC 7517; Ed25519 keys as RFC 8037 `OKP`), for
    /// applications that verify the proxy's identity assertions.
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys: Vec<(String, String)> = self
            .jwk_x
            .iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect();
        if let Ok(p) = self.published_x.read() {
            for (k, x) in p.iter() {
                if !self.jwk_x.contains_key(k) {
                    keys.push((k.clone(), x.clone()));
                }
            }
        }
        keys.sort();
        let keys: Vec<serde_json::Value> = keys
            .into_iter()
            .map(|(kid, x)| {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x})
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The key that signed `token` (by its `kid`): a local one or one another replica
    /// published. Only EdDSA is accepted.
    fn key_for(&self, token: &str) -> Result<DecodingKey, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("no kid in header".into()))?;
        if let Some(k) = self.decoding.get(&kid) {
            return Ok(k.clone());
        }
        self.published
            .read()
            .ok()
            .and_then(|p| p.get(&kid).cloned())
            .ok_or(TokenError::UnknownKey(kid))
    }

    /// Verifies signature, issuer, audience and expiry (`exp` must be after `now`, seconds
    /// since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_signed(token, now)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The claims of a token this deployment signed (signature, issuer, audience, not from
    /// the future), whether or not it has expired: only to name the user of a refused one in
    /// the audit log, never to grant anything.
    pub fn verify_signed(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed("longer than 8192 bytes".into()));
        }
        let key = &self.key_for(token)?;
        use jsonwebtoken::errors::ErrorKind;
        /// The claims plus `nbf`, which the gateway never sets but honours when present.
        #[derive(Deserialize)]
        struct Wire {
            #[serde(flatten)]
            claims: Claims,
            #[serde(default)]
            nbf: Option<u64>,
        }
        let Wire { claims, nbf } = jsonwebtoken::decode::<Wire>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidIssuer => TokenError::OtherDeployment("issuer".into()),
                ErrorKind::InvalidAudience => TokenError::OtherDeployment("audience".into()),
                _ => TokenError::Malformed(e.to_string()),
            })?;
        // A token from the future (a clock set wrong, or minted ahead of time to be used later)
        // is refused beyond a small skew between replicas.
        let horizon = now.saturating_add(MAX_CLOCK_SKEW);
        if claims.iat > horizon {
            return Err(TokenError::NotYetValid(format!(
                "issued {} s in the future",
                claims.iat - now
            )));
        }
        if let Some(nbf) = nbf.filter(|nbf| *nbf > horizon) {
            return Err(TokenError::NotYetValid(format!(
                "not before {} s from now",
                nbf - now
            )));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        crate::clock::unix_now()
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_still_verifies_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let old = TokenKeys::load_or_create(dir.path()).unwrap();
        let (old_tok, _) = old
            .mint("alice", &[], Duration::from_secs(60), now())
            .unwrap();
        let kid = TokenKeys::add_active_key(dir.path()).unwrap();
        let new = TokenKeys::load_or_create(dir.path()).unwrap();
        let (new_tok, _) = new
            .mint("bob", &[], Duration::from_secs(60), now())
            .unwrap();
        let header = jsonwebtoken::decode_header(&new_tok).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_ne!(
            jsonwebtoken::decode_header(&old_tok).unwrap().kid,
            header.kid
        );
        assert_eq!(new.verify(&old_tok, now()).unwrap().sub, "alice");
        assert_eq!(new.verify(&new_tok, now()).unwrap().sub, "bob");
        // The old key set does not know the new kid.
        assert!(old.verify(&new_tok, now()).is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("jwt").join(format!("{kid}.key")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_expired_token_is_refused_but_its_signed_user_can_be_named() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let then = now() - 7200;
        let (tok, _) = keys
            .mint("ann", &[], Duration::from_secs(60), then)
            .unwrap();
        assert!(matches!(keys.verify(&tok, now()), Err(TokenError::Expired)));
        assert_eq!(keys.verify_signed(&tok, now()).unwrap().sub, "ann");
        // Not signed here: no name.
        let other = TokenKeys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.verify_signed(&tok, now()).is_err());
    }

    #[test]
    fn mint_verify_and_reject() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let (tok, claims) = keys
            .mint(
                "alice",
                &["radiologists".into()],
                Duration::from_secs(60),
                now(),
            )
            .unwrap();
        assert_eq!(keys.verify(&tok, now()).unwrap(), claims);

        // Reloading keeps the same key.
        let again = TokenKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verify(&tok, now()).unwrap().sub, "alice");

        // Tampered payload.
        let mut parts: Vec<String> = tok.split('.').map(String::from).collect();
        parts[1] = parts[1].replace('a', "b");
        let tampered = parts.join(".");
        assert!(matches!(
            keys.verify(&tampered, now()),
            Err(TokenError::BadSignature | TokenError::Malformed(_))
        ));

        // Foreign gateway.
        let other = tempfile::tempdir().unwrap();
        let foreign = TokenKeys::load_or_create(other.path()).unwrap();
        let (ftok, _) = foreign
            .mint("mallory", &[], Duration::from_secs(60), now())
            .unwrap();
        assert!(matches!(
            keys.verify(&ftok, now()),
            Err(TokenError::UnknownKey(_))
        ));

        assert!(matches!(
            keys.verify("garbage", now()),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.active.clone());
        let now = now();
        let claims = Claims {
            iss: keys.issuer.clone(),
            aud: keys.audience.clone(),
            sub: "bob".into(),
            groups: vec![],
            iat: now - 7200,
            exp: now - 3600,
            jti: "t".into(),
            auth_time: None,
            mfa: false,
            device: None,
            uv: false,
            posture: None,
            name: None,
            email: None,
            ae: vec![],
            idp: None,
        };
        let tok = jsonwebtoken::encode(&header, &claims, &keys.encoding).unwrap();
        assert!(matches!(keys.verify(&tok, now), Err(TokenError::Expired)));
        // Expiry is judged by the clock passed in, to the second, without leeway.
        assert!(keys.verify(&tok, now - 3601).is_ok());
        assert!(matches!(
            keys.verify(&tok, now - 3600),
            Err(TokenError::Expired)
        ));
    }

    /// A token signed by `keys` with `claims` as they are (no issuer/audience fix-up).
    fn sign(keys: &TokenKeys, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.active.clone());
        jsonwebtoken::encode(&header, claims, &keys.encoding).unwrap()
    }

    #[test]
    fn tokens_from_the_future_are_refused_beyond_the_skew() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let now = now();
        let (_, base) = keys
            .mint("ann", &[], Duration::from_secs(7200), now)
            .unwrap();
        let claims = |patch: serde_json::Value| {
            let mut v = serde_json::to_value(&base).unwrap();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        // Issued an hour from now, or not valid before an hour from now: refused, and said so.
        for patch in [
            serde_json::json!({"iat": now + 3600}),
            serde_json::json!({"nbf": now + 3600}),
            serde_json::json!({"iat": now + MAX_CLOCK_SKEW + 1}),
        ] {
            let tok = sign(&keys, &claims(patch.clone()));
            let e = keys.verify(&tok, now).unwrap_err();
            assert!(matches!(e, TokenError::NotYetValid(_)), "{patch}: {e:?}");
            assert_eq!(e.code(), "token_not_yet_valid");
            assert!(e.to_string().contains("clock"), "{e}");
        }
        // Within the documented skew (another replica's clock slightly ahead): accepted.
        for patch in [
            serde_json::json!({"iat": now + MAX_CLOCK_SKEW}),
            serde_json::json!({"nbf": now + 30}),
            serde_json::json!({"nbf": now - 30}),
        ] {
            let tok = sign(&keys, &claims(patch.clone()));
            assert!(keys.verify(&tok, now).is_ok(), "{patch}");
        }
    }

    /// Copies `from` (a state directory) into a new temporary directory.
    fn copy_state(from: &Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().unwrap();
        for entry in walk(from) {
            let rel = entry.strip_prefix(from).unwrap();
            let dest = to.path().join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &dest).unwrap();
        }
        to
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_copied_state_directory_serving_another_url_refuses_the_originals_tokens() {
        let prod_dir = tempfile::tempdir().unwrap();
        let prod = TokenKeys::load_or_create(prod_dir.path())
            .unwrap()
            .for_origin(Some("https://gw.hospital.example:8443"));
        let (tok, claims) = prod
            .mint("ann", &[], Duration::from_secs(600), now())
            .unwrap();
        // Deployment-specific, not the old constants.
        assert_ne!(claims.iss, "postern-gateway");
        assert_ne!(claims.aud, "postern");
        assert!(
            claims.aud.contains("https://gw.hospital.example:8443"),
            "{}",
            claims.aud
        );
        assert!(prod.verify(&tok, now()).is_ok());

        // Staging made from a copy of production's state (same signing keys), at its own URL.
        let staging_dir = copy_state(prod_dir.path());
        let staging = TokenKeys::load_or_create(staging_dir.path())
            .unwrap()
            .for_origin(Some("https://gw-staging.hospital.example:8443"));
        let e = staging.verify(&tok, now()).unwrap_err();
        assert!(matches!(e, TokenError::OtherDeployment(_)), "{e:?}");
        assert_eq!(e.code(), "token_other_deployment");
        // A replica of production (same state, same URL) accepts it.
        let replica = TokenKeys::load_or_create(staging_dir.path())
            .unwrap()
            .for_origin(Some("https://gw.hospital.example:8443"));
        assert!(replica.verify(&tok, now()).is_ok());

        // A copy given a new deployment id (its jwt/deployment-id deleted, as docs/operations.md
        // says to do after copying a state directory) refuses even at the same URL; so does a
        // token with the issuer and audience every deployment used to share.
        std::fs::remove_file(staging_dir.path().join("jwt").join(DEPLOYMENT_FILE)).unwrap();
        let renewed = TokenKeys::load_or_create(staging_dir.path())
            .unwrap()
            .for_origin(Some("https://gw.hospital.example:8443"));
        assert!(matches!(
            renewed.verify(&tok, now()),
            Err(TokenError::OtherDeployment(_))
        ));
        let old_style = sign(
            &prod,
            &serde_json::json!({"iss": "postern-gateway", "aud": "postern", "sub": "x",
                "iat": now(), "exp": now() + 60, "jti": "t"}),
        );
        assert!(matches!(
            prod.verify(&old_style, now()),
            Err(TokenError::OtherDeployment(_))
        ));
    }

    #[test]
    fn device_claims_round_trip_and_default_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let (_, base) = keys
            .mint("ann", &[], Duration::from_secs(60), now())
            .unwrap();
        let posture: std::collections::BTreeMap<String, String> =
            [("disk_encrypted".to_owned(), "true".to_owned())].into();
        let (tok, claims) = keys
            .issue(Claims {
                device: Some("dev-0123456789ab".into()),
                uv: true,
                posture: Some(posture.clone()),
                ..base.clone()
            })
            .unwrap();
        let back = keys.verify(&tok, now()).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.device.as_deref(), Some("dev-0123456789ab"));
        assert!(back.uv);
        assert_eq!(back.posture, Some(posture));
        // A token minted without device trust has no device, uv false, no posture.
        let (tok, _) = keys
            .mint("bob", &[], Duration::from_secs(60), now())
            .unwrap();
        let c = keys.verify(&tok, now()).unwrap();
        assert_eq!((c.device, c.uv, c.posture), (None, false, None));
        // The payload without the new claims (an older gateway's token) still parses.
        let old =
            r#"{"iss":"postern-gateway","aud":"postern","sub":"x","iat":1,"exp":2,"jti":"t"}"#;
        let c: Claims = serde_json::from_str(old).unwrap();
        assert_eq!((c.device, c.uv), (None, false));
    }
}
