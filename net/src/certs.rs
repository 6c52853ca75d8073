//! Certificate and key *files*, and what the `check` subcommands report about them: loading a
//! chain and its key for rustls (key mode checked, key matched to the leaf), safe modes for key
//! files, and [`Finding`]s about certificate files, key files, key directories and listen
//! addresses. What a certificate says (dates, names, serial) is pure and lives in
//! [`postern_proto::certs`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_proto::certs::{cert_info, rfc3339, validity, Validity, EXPIRY_WARNING};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How bad a problem `check` found is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; `check` still succeeds.
    Warning,
    /// The program would fail or be unsafe; `check` exits non-zero.
    Error,
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    pub fn error(message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "error: {}", self.message),
            Severity::Warning => write!(f, "warning: {}", self.message),
        }
    }
}

/// Reads a PEM certificate (chain) file and reports what is wrong with its first certificate at
/// `now`: unreadable or unparsable, expired or not yet valid (errors), expiring within
/// [`EXPIRY_WARNING`] (warning). Returns the chain when it could be read.
pub fn check_cert_file(
    path: &Path,
    what: &str,
    now: SystemTime,
    out: &mut Vec<Finding>,
) -> Option<Vec<CertificateDer<'static>>> {
    let pem = match std::fs::read_to_string(path) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::error(format!(
                "{what} {}: cannot read it: {e}",
                path.display()
            )));
            return None;
        }
    };
    let chain = match crate::tls::certs_from_pem(&pem, &path.display().to_string()) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::error(format!("{what}: {e}")));
            return None;
        }
    };
    match cert_info(&chain[0]) {
        Err(e) => out.push(Finding::error(format!("{what} {}: {e}", path.display()))),
        Ok(info) => match validity(&info, now, EXPIRY_WARNING) {
            Validity::Ok => {}
            Validity::ExpiresSoon(left) => out.push(Finding::warning(format!(
                "{what} {} expires in {} (on {}): renew it",
                path.display(),
                humantime::format_duration(Duration::from_secs(left.as_secs())),
                rfc3339(info.not_after)
            ))),
            Validity::Expired => out.push(Finding::error(format!(
                "{what} {} expired on {}",
                path.display(),
                rfc3339(info.not_after)
            ))),
            Validity::NotYetValid => out.push(Finding::error(format!(
                "{what} {} is not valid before {}",
                path.display(),
                rfc3339(info.not_before)
            ))),
        },
    }
    Some(chain)
}

/// Reads a PEM key file and reports what is wrong with it: unreadable, mode too open (both
/// errors), not the key of `chain`'s leaf (error).
pub fn check_key_file(
    path: &Path,
    what: &str,
    chain: Option<&[CertificateDer<'static>]>,
    out: &mut Vec<Finding>,
) {
    if let Some(p) = key_mode_problem(path) {
        out.push(Finding::error(format!("{what}: {p}")));
    }
    let pem = match std::fs::read_to_string(path) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::error(format!(
                "{what} {}: cannot read it: {e}",
                path.display()
            )));
            return;
        }
    };
    let key = match crate::tls::key_from_pem(&pem, &path.display().to_string()) {
        Ok(k) => k,
        Err(e) => {
            out.push(Finding::error(format!("{what}: {e}")));
            return;
        }
    };
    if let Some(chain) = chain {
        if let Err(e) = certified_key(chain.to_vec(), key) {
            out.push(Finding::error(format!("{what} {}: {e}", path.display())));
        }
    }
}

/// Reports a directory that holds keys but is open to others (mode & 0o077). Unix only (the
/// gateway and connector run there); nothing is reported elsewhere.
pub fn check_private_dir(dir: &Path, what: &str, out: &mut Vec<Finding>) {
    #[cfg(not(unix))]
    let _ = (dir, what, out);
    #[cfg(unix)]
    check_private_dir_unix(dir, what, out);
}

#[cfg(unix)]
fn check_private_dir_unix(dir: &Path, what: &str, out: &mut Vec<Finding>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(dir) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(Finding::error(format!(
                "{what} {}: mode {mode:04o}: it holds keys and must not be open to others (chmod 700)",
                dir.display()
            )));
        }
    }
}

/// Reports a listen address that cannot be bound now.
pub fn check_bind(addr: std::net::SocketAddr, what: &str, out: &mut Vec<Finding>) {
    if let Err(e) = std::net::TcpListener::bind(addr) {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process listens there; if it is this program already running with this configuration, that is expected)"
        } else {
            ""
        };
        out.push(Finding::error(format!(
            "{what} {addr}: cannot listen: {e}{hint}"
        )));
    }
}

/// A rustls certified key from a chain and its private key, refusing a key that does not belong
/// to the first (leaf) certificate.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_owned())?;
    Ok(ck)
}

/// Loads a PEM chain file and a PEM key file into a certified key (key checked against the
/// leaf). `key_file` must pass [`key_mode_problem`].
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert_pem = std::fs::read_to_string(cert_file)
        .map_err(|e| format!("reading {}: {e}", cert_file.display()))?;
    if let Some(p) = key_mode_problem(key_file) {
        return Err(p);
    }
    let key_pem = std::fs::read_to_string(key_file)
        .map_err(|e| format!("reading {}: {e}", key_file.display()))?;
    let chain = crate::tls::certs_from_pem(&cert_pem, &cert_file.display().to_string())
        .map_err(|e| e.to_string())?;
    let key = crate::tls::key_from_pem(&key_pem, &key_file.display().to_string())
        .map_err(|e| e.to_string())?;
    certified_key(chain, key)
        .map(Arc::new)
        .map_err(|e| format!("{} and {}: {e}", cert_file.display(), key_file.display()))
}

/// Mode bits a private key or secret file may have: owner read/write, group read (0640, for a
/// key shared with a `ssl-cert`-style group). Anything more is a problem.
pub const KEY_MODE_ALLOWED: u32 = 0o640;

/// Why a private key or secret file's permissions are unsafe, if they are (None also when the
/// file cannot be looked at: reading it reports that). Unix only: None elsewhere.
#[cfg(not(unix))]
pub fn key_mode_problem(_path: &Path) -> Option<String> {
    None
}

/// Why a private key or secret file's permissions are unsafe, if they are (None also when the
/// file cannot be looked at: reading it reports that).
#[cfg(unix)]
pub fn key_mode_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & !KEY_MODE_ALLOWED != 0).then(|| {
        format!(
            "{}: mode {mode:04o} is too open: a private key or secret must not be readable by others or writable by its group (chmod 600, or 640 for a group that must read it)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn self_signed(names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Certificate inspection itself (names, validity) is tested in `postern_proto::certs`;
    /// this is the file side: a key must belong to its certificate.
    #[test]
    fn a_key_must_match_its_certificate() {
        let (pem, key) = self_signed(&["gw.example.org", "127.0.0.1"], 10);
        let chain = crate::tls::certs_from_pem(&pem, "c").unwrap();
        let k = crate::tls::key_from_pem(&key, "k").unwrap();
        certified_key(chain.clone(), k).unwrap();
        let (_, other) = self_signed(&["x"], 10);
        let e = certified_key(chain, crate::tls::key_from_pem(&other, "k").unwrap()).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn key_modes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "x").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o660, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(key_mode_problem(&f).is_none(), ok, "{mode:o}");
        }
    }
}
