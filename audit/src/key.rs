//! The Ed25519 audit key: signs checkpoints so that a log cut short after a checkpoint, or
//! rewritten before one, no longer verifies.
//!
//! The private key lives in the gateway's state directory as `audit-key.pk8` (PKCS#8 v2, as
//! `ring` writes it, mode 0600). The public key is what auditors need: it is printed as PEM or
//! hex ([`AuditKey::public_key`]), and every `audit.started` and `audit.checkpoint` event
//! carries it in hex so that `verify` can work without it (trust on first use) and, with
//! `--pubkey`, checks the log against a copy kept elsewhere.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

use crate::error::AuditError;
use crate::hexfmt::{decode_hex, hex};

/// File name of the audit signing key inside a state directory.
pub const AUDIT_KEY_FILE: &str = "audit-key.pk8";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (32 bytes) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The private audit key. `Debug` never prints the key material. Cheap to clone.
#[derive(Clone)]
pub struct AuditKey {
    pkcs8: Arc<[u8]>,
    pair: Arc<Ed25519KeyPair>,
}

impl AuditKey {
    /// A key from PKCS#8 bytes (as in `audit-key.pk8`).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<AuditKey, AuditError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| AuditError::Key {
                path: None,
                reason: format!("not an Ed25519 PKCS#8 key: {e}"),
            })?;
        Ok(AuditKey {
            pkcs8: pkcs8.into(),
            pair: Arc::new(pair),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Result<AuditKey, AuditError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| AuditError::Key {
                path: None,
                reason: "the system random number generator failed".to_owned(),
            })?;
        AuditKey::from_pkcs8(doc.as_ref())
    }

    /// Loads `DIR/audit-key.pk8`, creating it (0600, synced) with a fresh key if it does not
    /// exist. The gateway calls this with its state directory. A key file that group or others
    /// can read is refused: the key is what makes a forged checkpoint detectable.
    pub fn load_or_create(dir: &Path) -> Result<AuditKey, AuditError> {
        let path = dir.join(AUDIT_KEY_FILE);
        match read_key_file(&path) {
            Ok(key) => return Ok(key),
            Err(KeyRead::Missing) => {}
            Err(KeyRead::Bad(e)) => return Err(e),
        }
        crate::store::ensure_dir(dir)?;
        let key = AuditKey::generate()?;
        // Write to a private temporary name, sync, then link into place: a crash never leaves a
        // half-written key, and if another process created the key meanwhile, theirs wins.
        let tmp = dir.join(format!(".{AUDIT_KEY_FILE}.{}.tmp", std::process::id()));
        let key_err = |e: io::Error| AuditError::Key {
            path: Some(path.clone()),
            reason: format!("cannot create: {e}"),
        };
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&key.pkcs8)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(key_err(e));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                crate::store::sync_dir(dir)?;
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_key_file(&path) {
                Ok(key) => Ok(key),
                Err(KeyRead::Missing) => Err(key_err(e)),
                Err(KeyRead::Bad(e)) => Err(e),
            },
            Err(e) => Err(key_err(e)),
        }
    }

    /// The PKCS#8 bytes, for storing the key elsewhere.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, to give to auditors.
    pub fn public_key(&self) -> AuditPublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        AuditPublicKey(raw)
    }

    /// Signs `message` (64-byte Ed25519 signature).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("public", &self.public_key().to_hex())
            .field("private", &"***")
            .finish()
    }
}

enum KeyRead {
    Missing,
    Bad(AuditError),
}

fn read_key_file(path: &Path) -> Result<AuditKey, KeyRead> {
    let bad = |reason: String| {
        KeyRead::Bad(AuditError::Key {
            path: Some(path.to_owned()),
            reason,
        })
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KeyRead::Missing),
        Err(e) => return Err(bad(format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode is {mode:04o}; the audit key must be private to its owner (chmod 600 {})",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    AuditKey::from_pkcs8(&bytes).map_err(|e| match e {
        AuditError::Key { reason, .. } => bad(reason),
        other => KeyRead::Bad(other),
    })
}

/// An Ed25519 public audit key: what an auditor uses to check checkpoint signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditPublicKey(pub [u8; 32]);

impl AuditPublicKey {
    /// 64 lowercase hex digits, as stored in the log.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A `-----BEGIN PUBLIC KEY-----` block (SubjectPublicKeyInfo, RFC 8410), as `openssl pkey
    /// -pubin` reads it.
    pub fn to_pem(&self) -> String {
        let mut der = Vec::with_capacity(44);
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(&self.0);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64_encode(&der)
        )
    }

    /// Parses 64 hex digits or a PEM `PUBLIC KEY` block (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<AuditPublicKey, AuditError> {
        let text = text.trim();
        let bad = |reason: &str| {
            AuditError::Key {
            path: None,
            reason: format!("not an Ed25519 public key ({reason}); expected 64 hex digits or a PEM PUBLIC KEY block"),
        }
        };
        if let Some(body) = text.strip_prefix("-----BEGIN PUBLIC KEY-----") {
            let body = body
                .split("-----END PUBLIC KEY-----")
                .next()
                .ok_or_else(|| bad("no END line"))?;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let der = base64_decode(&compact).ok_or_else(|| bad("bad base64"))?;
            let raw = der
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .filter(|raw| raw.len() == 32)
                .ok_or_else(|| bad("not an Ed25519 SubjectPublicKeyInfo"))?;
            let mut key = [0u8; 32];
            key.copy_from_slice(raw);
            return Ok(AuditPublicKey(key));
        }
        AuditPublicKey::from_hex(text).ok_or_else(|| bad("bad hex"))
    }

    /// 64 hex digits to a key.
    pub fn from_hex(text: &str) -> Option<AuditPublicKey> {
        let bytes = decode_hex(text)?;
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(AuditPublicKey(key))
    }

    /// Reads a key file written with [`AuditPublicKey::to_pem`] or holding the hex form.
    pub fn read_file(path: &Path) -> Result<AuditPublicKey, AuditError> {
        let bytes = fs::read(path).map_err(|e| AuditError::Key {
            path: Some(path.to_owned()),
            reason: format!("cannot read: {e}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| AuditError::Key {
            path: Some(path.to_owned()),
            reason: "not a PEM or hex public key (binary: the private key file? `postern-audit pubkey` prints the public key)".to_owned(),
        })?;
        AuditPublicKey::parse(&text).map_err(|e| match e {
            AuditError::Key { reason, .. } => AuditError::Key {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }

    /// Whether `sig` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Display for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Path of the key file in `dir`, for messages and docs.
pub fn audit_key_path(dir: &Path) -> PathBuf {
    dir.join(AUDIT_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }

    #[test]
    fn public_key_pem_and_hex_round_trip_and_verify() {
        let key = AuditKey::generate().unwrap();
        let public = key.public_key();
        assert_eq!(AuditPublicKey::parse(&public.to_pem()).unwrap(), public);
        assert_eq!(AuditPublicKey::parse(&public.to_hex()).unwrap(), public);
        assert!(public
            .to_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        let sig = key.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellO", &sig));
        assert!(AuditPublicKey::parse("zz").is_err());
        assert!(!format!("{key:?}").contains(&hex(key.pkcs8())));
    }
}
