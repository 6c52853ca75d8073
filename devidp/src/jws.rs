//! The provider's signing key and compact JWS (RFC 7515) signing with ES256.
//!
//! The key is an ECDSA P-256 key generated at start and held only in memory, so every start
//! publishes a new key under a new `kid` (its RFC 7638 thumbprint).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The only signing algorithm this provider uses.
pub const ALG: &str = "ES256";

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// 256 random bits, base64url: authorization codes, access tokens, request ids.
pub fn random_token(rng: &SystemRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)?;
    Ok(b64(&bytes))
}

pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    /// Base64url affine coordinates of the public point, as they appear in the JWK.
    x: String,
    y: String,
}

impl SigningKey {
    pub fn generate() -> Result<SigningKey, ring::error::Unspecified> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| ring::error::Unspecified)?;
        // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(ring::error::Unspecified);
        };
        let (x, y) = (b64(x), b64(y));
        // RFC 7638 thumbprint: required members in lexicographic order, no whitespace.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&sha256(thumbprint.as_bytes()));
        Ok(SigningKey {
            pair,
            rng,
            kid,
            x,
            y,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (RFC 7517/7518).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
        })
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","kid":…,"typ":"JWT"}`.
    /// The signature is the fixed-width `r || s` form that JWS requires (RFC 7518 §3.4), not DER.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, ring::error::Unspecified> {
        let header = json!({ "alg": ALG, "kid": self.kid, "typ": "JWT" });
        let mut out = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.pair.sign(&self.rng, out.as_bytes())?;
        out.push('.');
        out.push_str(&b64(sig.as_ref()));
        Ok(out)
    }
}

/// The `at_hash` claim for an ES256 ID token: the left half of SHA-256 of the access token
/// (OIDC Core §3.1.3.6).
pub fn at_hash(access_token: &str) -> String {
    b64(&sha256(access_token.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn signed_jwt_verifies_with_the_published_jwk() {
        let key = SigningKey::generate().unwrap();
        let jwt = key.sign_jwt(&json!({"sub": "x"})).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], key.kid());

        let jwk = key.jwk();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "fixed r||s form");
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        let input = format!("{}.{}", parts[0], parts[1]);
        public.verify(input.as_bytes(), &sig).unwrap();
        assert!(public.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn each_key_has_its_own_kid() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 43);
    }

    #[test]
    fn at_hash_matches_the_spec_example_shape() {
        // OIDC Core A.3 example: access token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
        // with RS256/SHA-256 gives at_hash "77QmUPtjPfzWtF2AnpK9RQ".
        assert_eq!(
            at_hash("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }
}
