//! One-time enrolment tokens.
//!
//! Format: `pte1.<secret>.<pin>` where `secret` is 32 random bytes in lower-case hex and `pin` is
//! the SHA-256 (hex) of the DER of the gateway's server CA certificate. The pin lets a connector
//! that has never talked to the gateway authenticate it on first contact (like kubeadm's
//! discovery hash): the connector trusts a server certificate only if it chains to a CA whose
//! digest equals the pin. The gateway stores only the SHA-256 of the secret.

use std::fmt;

const PREFIX: &str = "pte1";

/// A parsed enrolment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    /// Secret part (hex), sent to the gateway.
    pub secret: String,
    /// SHA-256 hex of the gateway CA certificate DER.
    pub pin: String,
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollToken")
            .field("secret", &"***")
            .field("pin", &self.pin)
            .finish()
    }
}

/// Why a token string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed enrolment token: {0} (expected pte1.<64 hex>.<64 hex>, as printed by `postern-gateway token create`)")]
pub struct TokenFormatError(&'static str);

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl EnrollToken {
    /// Renders the token as handed to hospital IT.
    pub fn render(&self) -> String {
        format!("{PREFIX}.{}.{}", self.secret, self.pin)
    }

    /// Parses a token string (surrounding white space is ignored).
    pub fn parse(s: &str) -> Result<EnrollToken, TokenFormatError> {
        let mut parts = s.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenFormatError("wrong prefix"));
        }
        let secret = parts.next().ok_or(TokenFormatError("missing secret"))?;
        let pin = parts.next().ok_or(TokenFormatError("missing pin"))?;
        if parts.next().is_some() {
            return Err(TokenFormatError("too many parts"));
        }
        if !is_hex64(secret) {
            return Err(TokenFormatError("secret is not 64 hex digits"));
        }
        if !is_hex64(pin) {
            return Err(TokenFormatError("pin is not 64 hex digits"));
        }
        Ok(EnrollToken {
            secret: secret.to_owned(),
            pin: pin.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = EnrollToken {
            secret: "a".repeat(64),
            pin: "b".repeat(64),
        };
        assert_eq!(
            EnrollToken::parse(&format!(" {} \n", t.render())),
            Ok(t.clone())
        );
        assert!(!format!("{t:?}").contains(&"a".repeat(64)));
        assert_eq!(
            EnrollToken::parse("xyz").unwrap_err(),
            TokenFormatError("wrong prefix")
        );
        assert_eq!(
            EnrollToken::parse(&format!("pte1.{}", "a".repeat(64))).unwrap_err(),
            TokenFormatError("missing pin")
        );
        assert_eq!(
            EnrollToken::parse(&format!("pte1.{}.{}", "A".repeat(64), "b".repeat(64))).unwrap_err(),
            TokenFormatError("secret is not 64 hex digits")
        );
    }
}
