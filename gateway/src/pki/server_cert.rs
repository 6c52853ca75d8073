//! The client-facing TLS certificate.
//!
//! By default the gateway presents a certificate its own server CA issues at every start. With
//! `[tls] cert_file` and `key_file` it presents that chain instead (e.g. from the hospital's or a
//! public CA), and SIGHUP reloads both files without touching live connections: rustls asks
//! this resolver for a certificate at each handshake, and a reload swaps what it answers. A
//! new pair that cannot be used (unreadable, key file readable by others, key not matching the
//! leaf, leaf expired or not yet valid) is refused: the running certificate stays, the error is
//! logged and audited (`gateway.cert_rejected`); a good one is audited as
//! `gateway.cert_reloaded`.
//!
//! Enrolment is the exception: a connector's first contact is authenticated by the pin of the
//! gateway's own CA, so a handshake offering the ALPN marker
//! [`ALPN_ENROLL_MARKER`](postern_proto::wire::ALPN_ENROLL_MARKER) gets the self-issued
//! certificate whatever the files say. (The connector listener always uses the self-issued one:
//! connectors trust only the gateway's own CA.)

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use postern_audit::EventType;
use postern_proto::certs::{cert_info, rfc3339, validity, Validity};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::config::CertFiles;

pub struct ServerCert {
    own: Arc<CertifiedKey>,
    files: Option<CertFiles>,
    current: RwLock<Arc<CertifiedKey>>,
    /// `[web] cert_file`/`key_file`: presented to handshakes whose SNI ends with the suffix
    /// (`.<apps_domain>`), reloaded with the others.
    web: Option<WebCert>,
}

struct WebCert {
    suffix: String,
    files: CertFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Loads and vets a certificate/key pair from files; returns it and a description for logs.
pub fn load(files: &CertFiles, now: SystemTime) -> Result<(Arc<CertifiedKey>, String), String> {
    let ck = postern_net::certs::load_pair(&files.cert, &files.key)?;
    let leaf = ck
        .end_entity_cert()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let info = cert_info(leaf).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    match validity(&info, now, std::time::Duration::ZERO) {
        Validity::Expired => {
            return Err(format!(
                "{}: the certificate expired on {}",
                files.cert.display(),
                rfc3339(info.not_after)
            ))
        }
        Validity::NotYetValid => {
            return Err(format!(
                "{}: the certificate is not valid before {}",
                files.cert.display(),
                rfc3339(info.not_before)
            ))
        }
        _ => {}
    }
    let what = format!(
        "{} (serial {}, {}, valid until {})",
        files.cert.display(),
        info.serial_hex,
        info.subject,
        rfc3339(info.not_after)
    );
    Ok((ck, what))
}

fn expiry_secs(ck: &CertifiedKey) -> i64 {
    ck.end_entity_cert()
        .ok()
        .and_then(|c| cert_info(c).ok())
        .and_then(|i| i.not_after.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ServerCert {
    /// `own`: the self-issued certificate; `files`: the configured pair, loaded now (an error
    /// stops the gateway from starting).
    pub fn new(
        own: Arc<CertifiedKey>,
        files: Option<CertFiles>,
        now: SystemTime,
    ) -> Result<ServerCert, String> {
        let current = match &files {
            Some(f) => {
                let (ck, what) = load(f, now)?;
                info!(certificate = %what, "client-facing certificate from files");
                ck
            }
            None => own.clone(),
        };
        Ok(ServerCert {
            own,
            files,
            current: RwLock::new(current),
            web: None,
        })
    }

    /// Presents the pair in `files` to handshakes for `*.<apps_domain>` (loaded now; an error
    /// stops the gateway from starting).
    pub fn with_web(
        mut self,
        apps_domain: &str,
        files: CertFiles,
        now: SystemTime,
    ) -> Result<ServerCert, String> {
        let (ck, what) = load(&files, now)?;
        info!(certificate = %what, "web applications' certificate from files");
        self.web = Some(WebCert {
            suffix: format!(".{apps_domain}"),
            files,
            current: RwLock::new(ck),
        });
        Ok(self)
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Expiry of the certificate presented to clients (seconds since the epoch).
    pub fn expiry(&self) -> i64 {
        expiry_secs(&self.current())
    }

    /// Reloads the files (if configured): Ok(Some(description)) when swapped, Ok(None) when the
    /// certificate is self-issued, Err(why) when the new pair was refused (old one kept).
    fn reload(&self, now: SystemTime) -> Result<Option<String>, String> {
        let mut what = Vec::new();
        // Both pairs are checked before either is swapped.
        let main = match &self.files {
            Some(files) => Some(load(files, now)?),
            None => None,
        };
        let web = match &self.web {
            Some(w) => Some(load(&w.files, now)?),
            None => None,
        };
        if let Some((ck, w)) = main {
            match self.current.write() {
                Ok(mut c) => *c = ck,
                Err(poisoned) => *poisoned.into_inner() = ck,
            }
            what.push(w);
        }
        if let (Some((ck, w)), Some(web)) = (web, &self.web) {
            match web.current.write() {
                Ok(mut c) => *c = ck,
                Err(poisoned) => *poisoned.into_inner() = ck,
            }
            what.push(format!("web applications: {w}"));
        }
        Ok((!what.is_empty()).then(|| what.join("; ")))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let enrolling = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == postern_proto::wire::ALPN_ENROLL_MARKER));
        if enrolling {
            return Some(self.own.clone());
        }
        if let (Some(web), Some(name)) = (&self.web, hello.server_name()) {
            if name.to_ascii_lowercase().ends_with(&web.suffix) {
                return Some(match web.current.read() {
                    Ok(c) => c.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                });
            }
        }
        Some(self.current())
    }
}

/// Reloads the certificate files, logging and auditing the outcome.
pub async fn reload(
    cert: &Arc<ServerCert>,
    metrics: &crate::metrics::Metrics,
    audit: &crate::audit::Audit,
    now: SystemTime,
    trigger: &str,
) {
    let server_cert = cert.clone();
    let cert = cert.clone();
    let result = tokio::task::spawn_blocking(move || cert.reload(now))
        .await
        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
    match result {
        Ok(None) => {}
        Ok(Some(what)) => {
            metrics.server_cert_expiry.set(server_cert.expiry());
            info!(%trigger, certificate = %what, "client-facing certificate reloaded");
            let mut ev = audit.event(EventType::GatewayCertReloaded);
            ev.detail = Some(format!("{trigger}: now presenting {what}"));
            audit.record_nowait(ev);
        }
        Err(why) => {
            warn!(%trigger, error = %why, "client-facing certificate NOT reloaded; the running one stays");
            let mut ev = audit.event(EventType::GatewayCertRejected);
            ev.detail = Some(format!("{trigger}: kept the running certificate; {why}"));
            audit.record_nowait(ev);
        }
    }
}
