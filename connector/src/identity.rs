//! The connector's TLS identity: the enrolled key and certificate on disk, and the client
//! configuration built from them that links dial with.
//!
//! * [`load_identity`] / [`load_identity_alpn`] read the enrolment and build the mutual-TLS
//!   client configuration (trusting only the gateway CA stored at enrolment).
//! * [`install_renewed`] writes a renewed key and certificate: first both together to
//!   `renewal.pem` (0600, atomic), then `connector.key` and `connector.pem` (0600, atomic
//!   each), then `renewal.pem` is removed; a crash in between is finished by
//!   [`finish_pending`], which every load runs first.
//! * [`ClientTls`] holds the configuration in use: renewal swaps it, new links pick it up,
//!   live links keep the one they were made with.
//!
//! This module sits below both the links and renewal; it knows nothing of either.

use std::path::Path;
use std::sync::{Arc, RwLock};

use postern_proto::wire::{self, RenewResponse};
use rustls::ClientConfig;

use crate::enroll::{
    load_enrollment, unix_now, write_file, EnrollError, Enrollment, CA_FILE, CERT_FILE,
    ENROLLMENT_FILE, KEY_FILE,
};

/// Key and certificate of a renewal being installed.
pub const PENDING_FILE: &str = "renewal.pem";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// A file of the identity is missing, unreadable or malformed; `what` names it.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// Loads the enrolment and builds the mutual-TLS client configuration for links.
pub fn load_identity(state_dir: &Path) -> Result<(Enrollment, Arc<ClientConfig>), IdentityError> {
    load_identity_alpn(state_dir, &[wire::ALPN_CONNECTOR])
}

/// As [`load_identity`], offering `alpn` (renewal uses its own). Finishes an interrupted
/// certificate renewal first.
pub fn load_identity_alpn(
    state_dir: &Path,
    alpn: &[&[u8]],
) -> Result<(Enrollment, Arc<ClientConfig>), IdentityError> {
    finish_pending(state_dir).map_err(|message| IdentityError::Invalid {
        what: state_dir.display().to_string(),
        message,
    })?;
    let enrollment = load_enrollment(state_dir)?;
    let read = |name: &str| {
        std::fs::read_to_string(state_dir.join(name)).map_err(|e| IdentityError::Invalid {
            what: state_dir.join(name).display().to_string(),
            message: e.to_string(),
        })
    };
    let tls_err = |e: postern_net::tls::TlsError| IdentityError::Invalid {
        what: state_dir.display().to_string(),
        message: e.to_string(),
    };
    let ca = postern_net::tls::certs_from_pem(&read(CA_FILE)?, CA_FILE).map_err(tls_err)?;
    let chain = postern_net::tls::certs_from_pem(&read(CERT_FILE)?, CERT_FILE).map_err(tls_err)?;
    let key = postern_net::tls::key_from_pem(&read(KEY_FILE)?, KEY_FILE).map_err(tls_err)?;
    let config = postern_net::tls::client_config(ca, Some((chain, key)), alpn).map_err(tls_err)?;
    Ok((enrollment, Arc::new(config)))
}

/// The client configuration new links dial with. Renewal replaces it; a link keeps the
/// configuration it connected with.
pub struct ClientTls {
    current: RwLock<Arc<ClientConfig>>,
}

impl ClientTls {
    pub fn new(config: Arc<ClientConfig>) -> ClientTls {
        ClientTls {
            current: RwLock::new(config),
        }
    }

    /// The configuration in use now.
    pub fn current(&self) -> Arc<ClientConfig> {
        // A writer cannot leave the value half-replaced (it swaps one Arc), so a poisoned lock
        // still holds a whole configuration.
        match self.current.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `config` the one new links use.
    pub fn replace(&self, config: Arc<ClientConfig>) {
        match self.current.write() {
            Ok(mut t) => *t = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// Writes a renewed key and certificate (see the module comment for the order) and records
/// the new expiry and issue time in the enrolment.
pub fn install_renewed(state_dir: &Path, key_pem: &str, r: &RenewResponse) -> Result<(), String> {
    let chain = postern_net::tls::certs_from_pem(&r.cert_pem, "renewed certificate")
        .map_err(|e| e.to_string())?;
    let key = postern_net::tls::key_from_pem(key_pem, "new key").map_err(|e| e.to_string())?;
    postern_net::certs::certified_key(chain, key)
        .map_err(|e| format!("the renewed certificate: {e}"))?;
    let pending = state_dir.join(PENDING_FILE);
    write_file(
        &pending,
        format!("{key_pem}{}", r.cert_pem).as_bytes(),
        0o600,
    )
    .map_err(|e| e.to_string())?;
    finish_pending(state_dir)?;
    if let Ok(mut e) = load_enrollment(state_dir) {
        e.not_after = r.not_after.clone();
        e.issued_at = Some(unix_now());
        if let Ok(json) = serde_json::to_vec_pretty(&e) {
            write_file(&state_dir.join(ENROLLMENT_FILE), &json, 0o600)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Completes an interrupted renewal: `renewal.pem` (key + certificate) becomes
/// `connector.key` + `connector.pem`. Nothing to do without it.
pub fn finish_pending(state_dir: &Path) -> Result<(), String> {
    let pending = state_dir.join(PENDING_FILE);
    let text = match std::fs::read_to_string(&pending) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", pending.display())),
    };
    let cert_at = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| format!("{}: no certificate in it", pending.display()))?;
    let (key_pem, cert_pem) = text.split_at(cert_at);
    write_file(&state_dir.join(KEY_FILE), key_pem.as_bytes(), 0o600).map_err(|e| e.to_string())?;
    write_file(&state_dir.join(CERT_FILE), cert_pem.as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    std::fs::remove_file(&pending).map_err(|e| format!("removing {}: {e}", pending.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_renewal_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        finish_pending(dir.path()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(
            dir.path().join(PENDING_FILE),
            format!("{}{}", key.serialize_pem(), cert.pem()),
        )
        .unwrap();
        finish_pending(dir.path()).unwrap();
        assert!(!dir.path().join(PENDING_FILE).exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(),
            key.serialize_pem()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(),
            cert.pem()
        );
        use std::os::unix::fs::PermissionsExt;
        for f in [KEY_FILE, CERT_FILE] {
            let m = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600, "{f}");
        }
    }
}
