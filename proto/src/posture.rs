//! Device posture: what `postern login` reports about the laptop, and how the report is bound
//! into the WebAuthn challenge so the device key signs it.
//!
//! A report is **self-reported by the device holder**. Signing it with the device's WebAuthn
//! key proves which registered device sent it and that nobody altered it after signing; it does
//! not prove the laptop told the truth. Each fact is `true`, `false` or `unknown` — the client
//! never guesses.
//!
//! Binding: the gateway draws a random 32-byte nonce `N` and uses
//! `challenge = SHA-256(N || SHA-256(canonical(report)))` as the WebAuthn challenge, where
//! `canonical` is the serde_json encoding of [`PostureReport`] (fields in declaration order,
//! facts sorted by name) or the four bytes `null` when no report was sent. The browser posts
//! the report back with the signed assertion; the gateway recomputes the challenge from `N` and
//! the posted report, so a report changed after signing no longer matches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest accepted report, in canonical bytes.
pub const MAX_REPORT_BYTES: usize = 2048;

/// The posture facts Postern knows how to collect (policy: `device.posture.<name>`).
pub const FACTS: [&str; 3] = ["disk_encrypted", "firewall", "screen_lock"];

/// A fact's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fact {
    True,
    False,
    Unknown,
}

impl Fact {
    pub fn as_str(self) -> &'static str {
        match self {
            Fact::True => "true",
            Fact::False => "false",
            Fact::Unknown => "unknown",
        }
    }

    pub fn from_bool(b: Option<bool>) -> Fact {
        match b {
            Some(true) => Fact::True,
            Some(false) => Fact::False,
            None => Fact::Unknown,
        }
    }
}

/// One posture report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureReport {
    /// OS family: `linux`, `macos`, `windows`, or `unknown`.
    pub os: String,
    /// Distribution or product name (`Ubuntu`, `macOS`), or `unknown`.
    pub os_name: String,
    /// Version as the OS states it (`24.04`, `14.5`), or `unknown`.
    pub os_version: String,
    /// `disk_encrypted`, `firewall`, `screen_lock` (others are refused by [`PostureReport::validate`]).
    pub facts: BTreeMap<String, Fact>,
    /// When the client collected it (seconds since the epoch).
    pub collected_at: u64,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostureError {
    #[error("posture report is not valid JSON: {0}")]
    Json(String),
    #[error("posture report is larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("posture report: {0}")]
    Invalid(String),
}

fn short_text(what: &str, s: &str) -> Result<(), PostureError> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control()) {
        return Err(PostureError::Invalid(format!(
            "{what} must be 1–64 printable characters"
        )));
    }
    Ok(())
}

impl PostureReport {
    /// Checks sizes and names: known facts only, short printable strings.
    pub fn validate(&self) -> Result<(), PostureError> {
        short_text("os", &self.os)?;
        short_text("os_name", &self.os_name)?;
        short_text("os_version", &self.os_version)?;
        for k in self.facts.keys() {
            if !FACTS.contains(&k.as_str()) {
                return Err(PostureError::Invalid(format!(
                    "unknown fact '{}' (known: {})",
                    k.chars().take(40).collect::<String>(),
                    FACTS.join(", ")
                )));
            }
        }
        if self.canonical().len() > MAX_REPORT_BYTES {
            return Err(PostureError::TooLarge);
        }
        Ok(())
    }

    /// Parses and validates a report.
    pub fn parse(bytes: &[u8]) -> Result<PostureReport, PostureError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(PostureError::TooLarge);
        }
        let r: PostureReport =
            serde_json::from_slice(bytes).map_err(|e| PostureError::Json(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// The canonical bytes (what is hashed).
    pub fn canonical(&self) -> Vec<u8> {
        // Serialising plain strings, a BTreeMap and an integer cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The facts as policy sees them (`device.posture.KEY`): `os`, `os_name`, `os_version` and
    /// every reported fact as `true` / `false` / `unknown`.
    pub fn policy_facts(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("os".to_owned(), self.os.clone());
        m.insert("os_name".to_owned(), self.os_name.clone());
        m.insert("os_version".to_owned(), self.os_version.clone());
        for name in FACTS {
            let v = self.facts.get(name).copied().unwrap_or(Fact::Unknown);
            m.insert(name.to_owned(), v.as_str().to_owned());
        }
        m
    }
}

/// SHA-256 of the canonical encoding of `report` (`null` when there is none).
pub fn report_hash(report: Option<&PostureReport>) -> [u8; 32] {
    let bytes = match report {
        Some(r) => r.canonical(),
        None => b"null".to_vec(),
    };
    sha256(&bytes)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The WebAuthn challenge binding `nonce` and `report`: SHA-256(nonce || SHA-256(canonical)).
pub fn bound_challenge(nonce: &[u8], report: Option<&PostureReport>) -> [u8; 32] {
    let mut buf = Vec::with_capacity(nonce.len() + 32);
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(&report_hash(report));
    sha256(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PostureReport {
        PostureReport {
            os: "linux".into(),
            os_name: "Ubuntu".into(),
            os_version: "24.04".into(),
            facts: [
                ("screen_lock".to_owned(), Fact::False),
                ("disk_encrypted".to_owned(), Fact::True),
                ("firewall".to_owned(), Fact::Unknown),
            ]
            .into_iter()
            .collect(),
            collected_at: 1_760_000_000,
        }
    }

    #[test]
    fn canonical_encoding_is_fixed() {
        let c = String::from_utf8(sample().canonical()).unwrap();
        assert_eq!(
            c,
            r#"{"os":"linux","os_name":"Ubuntu","os_version":"24.04","facts":{"disk_encrypted":"true","firewall":"unknown","screen_lock":"false"},"collected_at":1760000000}"#
        );
        // Parsing text with other whitespace and key order gives the same canonical bytes.
        let loose = r#"{ "facts": {"firewall":"unknown","screen_lock":"false","disk_encrypted":"true"},
            "collected_at": 1760000000, "os_version":"24.04", "os_name":"Ubuntu", "os":"linux" }"#;
        assert_eq!(
            PostureReport::parse(loose.as_bytes()).unwrap().canonical(),
            c.as_bytes()
        );
    }

    #[test]
    fn hash_and_challenge_match_an_independent_computation() {
        // Reference values computed with Python: hashlib.sha256(canonical).hexdigest() and
        // hashlib.sha256(bytes(range(32)) + that digest).hexdigest().
        let h = report_hash(Some(&sample()));
        assert_eq!(
            crate::ids::hex(&h),
            "d720f61ae570f8a1686c6912781033b4f5c4e37c49eda655d89f71f95eeaf5d9"
        );
        let nonce: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            crate::ids::hex(&bound_challenge(&nonce, Some(&sample()))),
            "10a800cc30c9403be89b2b735817782e65e5421d82dd8b336f892181d91ad995"
        );
        assert_eq!(report_hash(None), sha256(b"null"));
    }

    #[test]
    fn any_change_changes_the_challenge() {
        let nonce = [7u8; 32];
        let base = bound_challenge(&nonce, Some(&sample()));
        let mut altered = sample();
        altered.facts.insert("disk_encrypted".into(), Fact::False);
        assert_ne!(base, bound_challenge(&nonce, Some(&altered)));
        let mut later = sample();
        later.collected_at += 1;
        assert_ne!(base, bound_challenge(&nonce, Some(&later)));
        assert_ne!(base, bound_challenge(&nonce, None));
        assert_ne!(base, bound_challenge(&[8u8; 32], Some(&sample())));
    }

    #[test]
    fn bad_reports_are_refused() {
        assert!(matches!(
            PostureReport::parse(b"{not json"),
            Err(PostureError::Json(_))
        ));
        let unknown = r#"{"os":"linux","os_name":"x","os_version":"1","facts":{"jailbroken":"false"},"collected_at":1}"#;
        assert!(matches!(
            PostureReport::parse(unknown.as_bytes()),
            Err(PostureError::Invalid(_))
        ));
        let extra =
            r#"{"os":"linux","os_name":"x","os_version":"1","facts":{},"collected_at":1,"x":1}"#;
        assert!(PostureReport::parse(extra.as_bytes()).is_err());
        let guess = r#"{"os":"linux","os_name":"x","os_version":"1","facts":{"firewall":"probably"},"collected_at":1}"#;
        assert!(PostureReport::parse(guess.as_bytes()).is_err());
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert_eq!(PostureReport::parse(&big), Err(PostureError::TooLarge));
    }

    #[test]
    fn policy_facts_fill_unreported_facts_as_unknown() {
        let mut r = sample();
        r.facts.remove("firewall");
        let f = r.policy_facts();
        assert_eq!(f["firewall"], "unknown");
        assert_eq!(f["disk_encrypted"], "true");
        assert_eq!(f["os"], "linux");
        assert_eq!(f.len(), 6);
    }
}
