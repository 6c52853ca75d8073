//! The gateway's embedded store: `STATE_DIR/state.json` (mode 0600), replaced atomically under
//! an exclusive lock on `STATE_DIR/state.lock`, so the running gateway and short-lived admin
//! commands (`token create`, `connector revoke`) can both change it safely.
//!
//! It holds enrolment tokens (only the SHA-256 of their secret), the connector inventory
//! (id, site, certificate serial, revocation), revoked session tokens and users, and the
//! registered devices (WebAuthn credentials, status, last posture). The running gateway re-reads it when its
//! modification time changes, so a revocation made from the CLI reaches live connections.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use postern_net::fsutil::{private_dir, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state store {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One enrolment token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrollTokenRec {
    /// Short public id for listing and audit (never the secret).
    pub id: String,
    pub secret_sha256: String,
    pub site: String,
    pub created: u64,
    pub expires: u64,
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub used_by: Option<String>,
}

/// One enrolled connector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorRec {
    pub id: String,
    pub site: String,
    /// Serial of the current client certificate (hex).
    pub serial: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub enrolled: u64,
    pub not_after: u64,
    #[serde(default)]
    pub revoked: Option<u64>,
    /// Serial of the certificate before the last renewal: links made with it stay up and it may
    /// still connect until it expires (so a connector that renewed but crashed before installing
    /// its new certificate is not locked out).
    #[serde(default)]
    pub previous_serial: Option<String>,
    /// Last certificate renewal (seconds since the epoch).
    #[serde(default)]
    pub renewed: Option<u64>,
}

impl ConnectorRec {
    /// Whether a certificate with `serial` is this connector's current or previous one.
    pub fn accepts_serial(&self, serial: &str) -> bool {
        self.serial == serial || self.previous_serial.as_deref() == Some(serial)
    }
}

/// A session token revoked before its expiry (sign-out, admin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedToken {
    pub jti: String,
    /// The token's own expiry: after it, the entry can be forgotten.
    pub exp: u64,
    pub user: String,
    pub revoked: u64,
}

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Registered, waiting for `device approve` (manual approval).
    Pending,
    /// May sign in.
    Active,
    /// Its sign count went backwards (possibly cloned): refused until approved again.
    Suspect,
    /// Revoked: refused for good; its live sessions were ended.
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Suspect => "suspect",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

/// One registered device: a WebAuthn credential of one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRec {
    /// `dev-` + 12 hex digits.
    pub id: String,
    pub user: String,
    /// What the clinician called it ("home laptop").
    pub name: String,
    pub status: DeviceStatus,
    /// WebAuthn credential id, base64url.
    pub credential_id: String,
    /// Authenticator model (AAGUID; all zeros when the authenticator does not say).
    pub aaguid: String,
    /// Last sign count seen (0 for authenticators without a counter).
    pub sign_count: u32,
    /// User verification (PIN, biometric) happened at registration.
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backup_state: bool,
    #[serde(default)]
    pub transports: Vec<String>,
    pub created: u64,
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub approved: Option<u64>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub revoked: Option<u64>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// The last posture report signed by this device (canonical JSON).
    #[serde(default)]
    pub posture: Option<postern_proto::posture::PostureReport>,
    /// The credential as webauthn-rs keeps it (public key, counter, flags).
    pub passkey: serde_json::Value,
}

/// A user whose access was revoked: tokens issued before `before` are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedUser {
    pub user: String,
    pub before: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub enroll_tokens: Vec<EnrollTokenRec>,
    #[serde(default)]
    pub connectors: Vec<ConnectorRec>,
    #[serde(default)]
    pub revoked_tokens: Vec<RevokedToken>,
    #[serde(default)]
    pub devices: Vec<DeviceRec>,
    #[serde(default)]
    pub revoked_users: Vec<RevokedUser>,
}

impl State {
    pub fn connector(&self, id: &str) -> Option<&ConnectorRec> {
        self.connectors.iter().find(|c| c.id == id)
    }

    pub fn device(&self, id: &str) -> Option<&DeviceRec> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// Handle on the store files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        private_dir(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path(),
            source,
        }
    }

    fn read_unlocked(&self) -> Result<State, StoreError> {
        match std::fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: self.path(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// A consistent snapshot.
    pub fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock()?;
        self.read_unlocked()
    }

    /// Modification time of the state file (None if it does not exist yet).
    pub fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(self.path())
            .and_then(|m| m.modified())
            .ok()
    }

    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("state.lock"))
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        Ok(f)
    }

    /// Read-modify-write under the lock. `f` returning `Err` leaves the store unchanged.
    pub fn update<T, E>(&self, f: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _lock = self.lock()?;
        let mut state = self.read_unlocked()?;
        let out = f(&mut state)?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: self.path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path(), &json, 0o600).map_err(|e| self.io(e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_atomic_and_errors_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .update(|s| {
                s.connectors.push(ConnectorRec {
                    id: "c1".into(),
                    site: "truro".into(),
                    serial: "01".into(),
                    hostname: None,
                    enrolled: 1,
                    not_after: 2,
                    revoked: None,
                    previous_serial: None,
                    renewed: None,
                });
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let r: Result<(), StoreError> = store.update(|s| {
            s.connectors.clear();
            Err(StoreError::Corrupt {
                path: PathBuf::new(),
                message: "no".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(store.read().unwrap().connectors.len(), 1);
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.read().unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
