//! `postern-gateway check`: every problem with a configuration and what it points at, all at
//! once. Errors make the command exit non-zero; warnings are printed and do not.
//!
//! Looked at: the policy; the state directory (0700) and every key in it (0600, or 0640), the
//! two CAs (valid, key matching); the client-facing certificate files when configured (readable,
//! key 0600/0640 and matching, not expired, expiring within 14 days = warning, naming
//! `tls.server_names`); the listen addresses (bindable now, or held by this very gateway
//! running — see below — or not looked at with `--running`); the audit directory (writable);
//! sign-in (secret readable and private,
//! no plain-http IdP, discovery document reachable within 5 s); device trust (the WebAuthn
//! relying party id and origin).
//!
//! It changes nothing: no file or directory is created (a probe file in the audit directory is
//! removed at once) and every listener is closed again.
//!
//! Run from monitoring against a running gateway, its listen ports are taken — by the gateway.
//! A port in use counts as this gateway's when what answers there is: on `listen.clients` and
//! `listen.connectors`, a TLS server presenting a certificate issued by this state directory's
//! server CA (or, on `listen.clients` with `tls.cert_file`, that very certificate); on
//! `admin.listen`, a Postern metrics endpoint. The probe stops inside the TLS handshake, before
//! anything is sent, so the gateway sees a failed handshake and nothing else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postern_net::certs::{
    check_bind, check_cert_file, check_key_file, check_private_dir, key_mode_problem, Finding,
};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;

/// How long the identity provider's discovery document may take.
const IDP_TIMEOUT: Duration = Duration::from_secs(5);

/// Every problem found (empty = fine).
pub async fn check(config: &Config) -> Vec<Finding> {
    check_with(config, false).await.0
}

/// [`check`], and notes for people (what was recognised as the running gateway). `running`:
/// the gateway is known to run with this configuration; its listen addresses are not looked at.
pub async fn check_with(config: &Config, running: bool) -> (Vec<Finding>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = postern_policy::Policy::from_file(&config.policy) {
        out.push(Finding::error(format!(
            "policy {}:\n{e}",
            config.policy.display()
        )));
    }
    state_dir(config, &mut out);
    server_cert(config, &mut out);
    web(config, &mut out);
    if running {
        notes.push("--running: the listen addresses were not looked at".to_owned());
    } else {
        let listeners = [
            (
                Some(config.listen_clients),
                "listen.clients",
                Listener::Clients,
            ),
            (
                Some(config.listen_connectors),
                "listen.connectors",
                Listener::Connectors,
            ),
            (config.listen_admin, "admin.listen", Listener::Admin),
        ];
        for (addr, what, which) in listeners {
            let Some(addr) = addr else { continue };
            let mut found = Vec::new();
            check_bind(addr, what, &mut found);
            if found.is_empty() {
                continue;
            }
            if std::net::TcpListener::bind(addr).is_err() && held_by_us(config, addr, which).await {
                notes.push(format!(
                    "{what} {addr}: in use by this gateway (it answers there); not bound"
                ));
            } else {
                out.extend(found);
            }
        }
    }
    audit_dir(&config.audit_dir, &mut out);
    syslog(config, &mut out);
    store(config, &mut out, &mut notes).await;
    oidc(config, &mut out).await;
    if config.oidc.is_some() && config.devices.required {
        if let Err(e) = crate::authn::devices::relying_party(config) {
            out.push(Finding::error(e));
        }
    }
    (out, notes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Clients,
    Connectors,
    Admin,
}

/// Whether what listens on `addr` is this gateway (see the module comment).
async fn held_by_us(config: &Config, addr: std::net::SocketAddr, which: Listener) -> bool {
    let probe = async {
        match which {
            Listener::Admin => admin_is_postern(addr).await,
            Listener::Clients | Listener::Connectors => {
                let Some(chain) = presented_chain(addr).await else {
                    return false;
                };
                match (&config.server_cert_files, which) {
                    (Some(files), Listener::Clients) => std::fs::read_to_string(&files.cert)
                        .ok()
                        .and_then(|pem| {
                            postern_net::tls::certs_from_pem(&pem, "tls.cert_file").ok()
                        })
                        .is_some_and(|ours| ours.first() == chain.first()),
                    _ => issued_by_our_server_ca(config, &chain),
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .unwrap_or(false)
}

/// `GET /metrics` answers 200 with Postern's metrics.
async fn admin_is_postern(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if tcp
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = (&mut tcp).take(1 << 20).read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("postern_")
}

/// The certificate chain a TLS server on `addr` presents. The handshake is abandoned as soon
/// as the chain arrives.
async fn presented_chain(
    addr: std::net::SocketAddr,
) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(Capture {
        seen: seen.clone(),
        provider: postern_net::tls::provider(),
    });
    let config = rustls::ClientConfig::builder_with_provider(postern_net::tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::from(addr.ip());
    let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let chain = seen.lock().ok()?.take();
    chain
}

/// Whether `chain` verifies against `state_dir/server-ca.pem` for one of `tls.server_names`.
fn issued_by_our_server_ca(
    config: &Config,
    chain: &[rustls_pki_types::CertificateDer<'static>],
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(pem) = std::fs::read_to_string(config.state_dir.join("server-ca.pem")) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in postern_net::tls::certs_from_pem(&pem, "server CA").unwrap_or_default() {
        let _ = roots.add(ca);
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        postern_net::tls::provider(),
    )
    .build() else {
        return false;
    };
    let now = rustls_pki_types::UnixTime::now();
    config.server_names.iter().any(|name| {
        rustls_pki_types::ServerName::try_from(name.as_str()).is_ok_and(|name| {
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                leaf,
                intermediates,
                &name,
                &[],
                now,
            )
            .is_ok()
        })
    })
}

/// Keeps the presented chain and refuses it, ending the handshake there.
#[derive(Debug)]
struct Capture {
    seen: Arc<std::sync::Mutex<Option<Vec<rustls_pki_types::CertificateDer<'static>>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(chain);
        }
        Err(rustls::Error::General("check: probe only".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn state_dir(config: &Config, out: &mut Vec<Finding>) {
    let dir = &config.state_dir;
    if !dir.exists() {
        out.push(Finding::warning(format!(
            "state_dir {}: does not exist yet; the gateway creates it (0700) and its CAs and keys on first start",
            dir.display()
        )));
        return;
    }
    check_private_dir(dir, "state_dir", out);
    let now = SystemClock.now();
    for (name, what) in [("server-ca", "server CA"), ("connector-ca", "connector CA")] {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        if !cert.exists() && !key.exists() {
            continue; // created on first start
        }
        let chain = check_cert_file(&cert, what, now, out);
        check_key_file(&key, &format!("{what} key"), chain.as_deref(), out);
    }
    // Every other private file the gateway keeps (token signing keys, audit key, sign-in
    // cookie key, the store).
    let mut private = vec![
        dir.join("audit-key.pk8"),
        dir.join("signin-cookie.key"),
        dir.join("state.db"),
        dir.join("state.db-wal"),
        dir.join("state.db-shm"),
        // Left by an older version until the first start imports it.
        dir.join("state.json"),
    ];
    if let Ok(rd) = std::fs::read_dir(dir.join("jwt")) {
        private.extend(
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "key")),
        );
    }
    for p in private.iter().filter(|p| p.exists()) {
        if let Some(problem) = key_mode_problem(p) {
            out.push(Finding::error(problem));
        }
    }
}

/// With PostgreSQL: the database answers (with the password and TLS as configured), its
/// schema is one this build knows, and the CAs and cookie key here are the copies the other
/// replicas recorded. Reads only; migrating is left to `run`.
async fn store(config: &Config, out: &mut Vec<Finding>, notes: &mut Vec<String>) {
    let Some(pg) = &config.store.postgres else {
        return;
    };
    let url = match pg.url() {
        Ok(u) => u,
        Err(e) => {
            out.push(Finding::error(format!("[store]: {e}")));
            return;
        }
    };
    let probe = match crate::state::sql::SqlStore::probe(&url).await {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::error(format!("[store] {}: {e}", pg.url)));
            return;
        }
    };
    match probe.schema {
        None => notes.push(format!(
            "[store] {}: an empty database; the first replica to start creates the schema",
            pg.url
        )),
        Some(v) if v < probe.known => notes.push(format!(
            "[store] {}: schema version {v}; this gateway migrates it to {} when it starts",
            pg.url, probe.known
        )),
        Some(_) => notes.push(format!("[store] {}: reachable, schema current", pg.url)),
    }
    for (file, what, print) in crate::replica::shared_fingerprints(&config.state_dir) {
        let key = format!("fingerprint {file}");
        match probe.shared.iter().find(|(n, _)| *n == key) {
            Some((_, shared)) if *shared != print => out.push(Finding::error(format!(
                "{what} {}: not the copy the other replicas use (fingerprint {} here, {} recorded by the first replica): copy {file} and its key from an existing replica's state directory",
                config.state_dir.join(file).display(),
                &print[..16],
                &shared[..shared.len().min(16)]
            ))),
            Some(_) => notes.push(format!("{what}: the same as the other replicas'")),
            None => notes.push(format!(
                "{what}: no replica has recorded one yet; the first to start records its own"
            )),
        }
    }
}

fn server_cert(config: &Config, out: &mut Vec<Finding>) {
    let Some(files) = &config.server_cert_files else {
        return;
    };
    let chain = check_cert_file(&files.cert, "tls.cert_file", SystemClock.now(), out);
    check_key_file(&files.key, "tls.key_file", chain.as_deref(), out);
    let Some(info) = chain
        .as_ref()
        .and_then(|c| postern_proto::certs::cert_info(&c[0]).ok())
    else {
        return;
    };
    for name in &config.server_names {
        let covered = info.names.iter().any(|n| {
            n.eq_ignore_ascii_case(name)
                || n.strip_prefix("*.").is_some_and(|domain| {
                    name.split_once('.')
                        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(domain))
                })
        });
        if !covered {
            out.push(Finding::warning(format!(
                "tls.cert_file {}: the certificate does not name \"{name}\" (tls.server_names); clients using that name will refuse it",
                files.cert.display()
            )));
        }
    }
}

/// `[web]`: sign-in to hand applications to, a certificate that names `*.<apps_domain>`, a
/// readable upstream CA.
fn web(config: &Config, out: &mut Vec<Finding>) {
    let Some(w) = &config.web else {
        return;
    };
    if config.public_origin().is_none() {
        out.push(Finding::error(
            "web: web applications need sign-in: set [oidc] (its redirect_url names the gateway's own address)".to_owned(),
        ));
    }
    let wildcard = format!("*.{}", w.apps_domain);
    let chosen = match (&w.cert_files, &config.server_cert_files) {
        (Some(f), _) => Some((f, "web.cert_file")),
        (None, Some(f)) => Some((f, "tls.cert_file")),
        // The self-issued certificate carries the wildcard.
        (None, None) => None,
    };
    if let Some((files, key)) = chosen {
        let chain = check_cert_file(&files.cert, key, SystemClock.now(), out);
        if key == "web.cert_file" {
            check_key_file(&files.key, "web.key_file", chain.as_deref(), out);
        }
        if let Some(info) = chain
            .as_ref()
            .and_then(|c| postern_proto::certs::cert_info(&c[0]).ok())
        {
            if !info.names.iter().any(|n| n.eq_ignore_ascii_case(&wildcard)) {
                out.push(Finding::warning(format!(
                    "{key} {}: the certificate does not name \"{wildcard}\"; browsers will refuse the web applications (give [web] cert_file/key_file for them)",
                    files.cert.display()
                )));
            }
        }
    }
    if let Some(f) = &w.upstream_ca_file {
        match std::fs::read_to_string(f) {
            Ok(pem) => {
                if let Err(e) = postern_net::tls::certs_from_pem(&pem, &f.display().to_string()) {
                    out.push(Finding::error(format!("web.upstream_ca_file: {e}")));
                }
            }
            Err(e) => out.push(Finding::error(format!(
                "web.upstream_ca_file {}: {e}",
                f.display()
            ))),
        }
    }
}

/// `[syslog]`: the CA and client certificate files read and parse, the key is private.
fn syslog(config: &Config, out: &mut Vec<Finding>) {
    let Some(s) = &config.syslog else { return };
    let checked = s
        .options()
        .and_then(postern_audit::syslog::SyslogTarget::new);
    if let Err(e) = checked {
        out.push(Finding::error(format!("[syslog]: {e}")));
    }
}

fn audit_dir(dir: &Path, out: &mut Vec<Finding>) {
    // The directory, or the nearest ancestor that exists (the gateway creates the rest).
    let mut probe_dir = dir;
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) => probe_dir = p,
            None => break,
        }
    }
    let probe = probe_dir.join(format!(".postern-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => out.push(Finding::error(format!(
            "audit_dir {}: not writable ({}: {e}); the gateway refuses sessions it cannot audit",
            dir.display(),
            probe_dir.display()
        ))),
    }
}

async fn oidc(config: &Config, out: &mut Vec<Finding>) {
    let Some(o) = &config.oidc else {
        return;
    };
    if o.insecure_http_issuer {
        out.push(Finding::error(format!(
            "oidc.insecure_http_issuer = true: a plain-http identity provider ({}) is for tests and the demo only; production sign-in must use https",
            o.issuer
        )));
    }
    if let Err(e) = o.read_secret() {
        out.push(Finding::error(e));
    }
    if let crate::config::SecretSource::File(p) = &o.client_secret {
        if let Some(problem) = key_mode_problem(p) {
            out.push(Finding::error(format!(
                "oidc.client_secret_file: {problem}"
            )));
        }
    }
    let roots = match &o.ca_file {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                postern_net::tls::certs_from_pem(&pem, &p.display().to_string())
                    .map_err(|e| e.to_string())
            }) {
            Ok(r) => r,
            Err(e) => {
                out.push(Finding::error(format!("oidc.ca_file {}: {e}", p.display())));
                return;
            }
        },
        None => Vec::new(),
    };
    let http = match crate::http::client::HttpClient::new(roots, o.insecure_http_issuer) {
        Ok(h) => h,
        Err(e) => {
            out.push(Finding::error(format!("oidc: {e}")));
            return;
        }
    };
    let url = format!(
        "{}/.well-known/openid-configuration",
        o.issuer.trim_end_matches('/')
    );
    let Ok(req) = http::Request::get(&url).body(Vec::new()) else {
        out.push(Finding::error(format!("oidc.issuer: bad URL {url}")));
        return;
    };
    let unreachable = |why: String| {
        Finding::error(format!(
            "oidc.issuer: the identity provider's discovery document {url} could not be fetched: {why}; sign-in will not work until it can"
        ))
    };
    match tokio::time::timeout(IDP_TIMEOUT, http.call(req)).await {
        Err(_) => out.push(unreachable(format!("no answer within {IDP_TIMEOUT:?}"))),
        Ok(Err(e)) => out.push(unreachable(e.to_string())),
        Ok(Ok(resp)) if !resp.status().is_success() => {
            out.push(unreachable(format!("HTTP {}", resp.status())))
        }
        Ok(Ok(resp)) => {
            let issuer = serde_json::from_slice::<serde_json::Value>(resp.body())
                .ok()
                .and_then(|v| v["issuer"].as_str().map(str::to_owned));
            match issuer {
                None => out.push(unreachable("the answer is not a discovery document".into())),
                Some(i) if i.trim_end_matches('/') != o.issuer.trim_end_matches('/') => {
                    out.push(Finding::error(format!(
                        "oidc.issuer: the discovery document at {url} names issuer \"{i}\", not \"{}\"",
                        o.issuer
                    )))
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertFiles, OidcConfig, SecretSource};
    use postern_net::certs::Severity;
    use std::os::unix::fs::PermissionsExt;

    const POLICY: &str = "[[endpoints]]\nname = \"echo\"\nsite = \"truro\"\nhost = \"127.0.0.1\"\nport = 7\nprotocol = \"tcp\"\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"echo\"]\nmax_session = \"1h\"\n";

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A configuration that passes, in `dir`.
    fn good(dir: &Path) -> Config {
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        let state = dir.join("state");
        postern_net::fsutil::private_dir(&state).unwrap();
        crate::pki::Ca::load_or_create(&state, "server-ca", "t", SystemClock.now()).unwrap();
        crate::pki::Ca::load_or_create(&state, "connector-ca", "t", SystemClock.now()).unwrap();
        Config::local(&state, &dir.join("policy.toml"))
    }

    fn cert(names: &[&str], days_left: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now + time::Duration::days(days_left);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn errors(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message.as_str())
            .collect()
    }

    fn has(f: &[Finding], sev: Severity, needle: &str) -> bool {
        f.iter()
            .any(|f| f.severity == sev && f.message.contains(needle))
    }

    #[tokio::test]
    async fn a_good_configuration_has_no_findings() {
        let dir = tempfile::tempdir().unwrap();
        let c = good(dir.path());
        let f = check(&c).await;
        assert!(f.is_empty(), "{f:?}");
    }

    #[tokio::test]
    async fn policy_state_dir_and_key_problems() {
        let dir = tempfile::tempdir().unwrap();
        let c = good(dir.path());
        std::fs::write(dir.path().join("policy.toml"), "[[rules]]\nid = 3\n").unwrap();
        chmod(&c.state_dir, 0o755);
        chmod(&c.state_dir.join("connector-ca.key"), 0o644);
        // The server CA's key replaced by another one.
        let (_, other) = cert(&["x"], 10);
        std::fs::write(c.state_dir.join("server-ca.key"), other).unwrap();
        std::fs::write(c.state_dir.join("state.db"), "").unwrap();
        chmod(&c.state_dir.join("state.db"), 0o666);
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "policy "), "{f:?}");
        assert!(has(&f, Severity::Error, "chmod 700"), "{f:?}");
        assert!(
            has(&f, Severity::Error, "connector CA key: ") && has(&f, Severity::Error, "mode 0644"),
            "{f:?}"
        );
        assert!(
            has(&f, Severity::Error, "server CA key")
                && has(&f, Severity::Error, "does not belong to the certificate"),
            "{f:?}"
        );
        assert!(has(&f, Severity::Error, "state.db: mode 0666"), "{f:?}");
        assert_eq!(errors(&f).len(), 5, "{f:?}");
    }

    #[tokio::test]
    async fn syslog_forwarding_files_are_read_and_the_key_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = good(dir.path());
        let (ca, _) = cert(&["arr.test"], 100);
        let (client, key) = cert(&["gw-1"], 100);
        let files = CertFiles {
            cert: dir.path().join("arr-client.pem"),
            key: dir.path().join("arr-client.key"),
        };
        std::fs::write(dir.path().join("arr-ca.pem"), &ca).unwrap();
        std::fs::write(&files.cert, &client).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        chmod(&files.key, 0o600);
        c.syslog = Some(crate::config::SyslogConfig {
            address: "arr.test:6514".into(),
            format: postern_audit::syslog::MessageFormat::Atna,
            tls: true,
            ca_file: Some(dir.path().join("arr-ca.pem")),
            server_name: "arr.test".into(),
            client: Some(files.clone()),
            queue: 10_000,
            app_name: "postern".into(),
        });
        let f = check(&c).await;
        assert!(f.is_empty(), "{f:?}");
        chmod(&files.key, 0o644);
        let f = check(&c).await;
        assert!(
            has(&f, Severity::Error, "[syslog]") && has(&f, Severity::Error, "chmod 600"),
            "{f:?}"
        );
        chmod(&files.key, 0o600);
        std::fs::remove_file(dir.path().join("arr-ca.pem")).unwrap();
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "reading ca_file"), "{f:?}");
        assert_eq!(errors(&f).len(), 1, "{f:?}");
    }

    #[tokio::test]
    async fn server_certificate_file_problems() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = good(dir.path());
        let files = CertFiles {
            cert: dir.path().join("gw.pem"),
            key: dir.path().join("gw.key"),
        };
        c.server_cert_files = Some(files.clone());
        c.server_names = vec!["gw.example.org".into(), "other.example.org".into()];

        // Expiring in 5 days, a name missing: warnings only.
        let (pem, key) = cert(&["gw.example.org"], 5);
        std::fs::write(&files.cert, &pem).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        chmod(&files.key, 0o640);
        let f = check(&c).await;
        assert!(errors(&f).is_empty(), "{f:?}");
        assert!(has(&f, Severity::Warning, "expires in"), "{f:?}");
        assert!(
            has(&f, Severity::Warning, "does not name \"other.example.org\""),
            "{f:?}"
        );

        // Expired, wrong key, key readable by all.
        let (pem, _) = cert(&["gw.example.org", "other.example.org"], -1);
        std::fs::write(&files.cert, &pem).unwrap();
        chmod(&files.key, 0o644);
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "tls.cert_file"), "{f:?}");
        assert!(has(&f, Severity::Error, "expired on"), "{f:?}");
        assert!(has(&f, Severity::Error, "tls.key_file: "), "{f:?}");
        assert!(has(&f, Severity::Error, "does not belong"), "{f:?}");
        assert!(has(&f, Severity::Error, "mode 0644"), "{f:?}");

        // Missing files.
        std::fs::remove_file(&files.cert).unwrap();
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "cannot read it"), "{f:?}");
    }

    #[tokio::test]
    async fn web_applications_need_sign_in_a_wildcard_and_a_readable_upstream_ca() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = good(dir.path());
        let files = CertFiles {
            cert: dir.path().join("apps.pem"),
            key: dir.path().join("apps.key"),
        };
        c.web = Some(crate::config::WebConfig {
            apps_domain: "apps.example.org".into(),
            cert_files: Some(files.clone()),
            upstream_ca_file: Some(dir.path().join("missing-ca.pem")),
            max_request_body: 1 << 20,
            body_idle_timeout: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(60),
        });
        let (pem, key) = cert(&["viewer.apps.example.org"], 300);
        std::fs::write(&files.cert, &pem).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        chmod(&files.key, 0o600);
        let f = check(&c).await;
        assert!(
            has(&f, Severity::Error, "web applications need sign-in"),
            "{f:?}"
        );
        assert!(
            has(
                &f,
                Severity::Warning,
                "does not name \"*.apps.example.org\""
            ),
            "{f:?}"
        );
        assert!(has(&f, Severity::Error, "web.upstream_ca_file"), "{f:?}");
        // A wildcard certificate and a readable CA: only the missing sign-in is left.
        let (pem, key) = cert(&["*.apps.example.org"], 300);
        std::fs::write(&files.cert, &pem).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        std::fs::write(dir.path().join("missing-ca.pem"), &pem).unwrap();
        let f = check(&c).await;
        assert_eq!(errors(&f).len(), 1, "{f:?}");
        assert!(!has(&f, Severity::Warning, "does not name"), "{f:?}");
    }

    #[tokio::test]
    async fn ports_in_use_and_audit_dir_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = good(dir.path());
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        c.listen_connectors = busy.local_addr().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        c.audit_dir = dir.path().join("file/audit");
        let f = check(&c).await;
        assert!(
            has(&f, Severity::Error, "listen.connectors 127.0.0.1:")
                && has(&f, Severity::Error, "if it is this program already running"),
            "{f:?}"
        );
        assert!(has(&f, Severity::Error, "audit_dir"), "{f:?}");
        assert_eq!(errors(&f).len(), 2, "{f:?}");
    }

    fn oidc(issuer: String, secret: &Path) -> OidcConfig {
        OidcConfig {
            issuer,
            client_id: "postern".into(),
            client_secret: SecretSource::File(secret.to_owned()),
            redirect_url: "https://127.0.0.1/auth/callback".into(),
            scopes: vec![],
            user_claim: "email".into(),
            groups_claim: "groups".into(),
            name_claim: "name".into(),
            ae_title_claim: "ae_title".into(),
            mfa_amr: vec![],
            mfa_acr: vec![],
            session_ttl: Duration::from_secs(3600),
            ca_file: None,
            insecure_http_issuer: true,
        }
    }

    #[tokio::test]
    async fn identity_provider_problems() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = good(dir.path());
        // The redirect URL below is an address; WebAuthn's RP id problem is tested elsewhere.
        c.devices.required = false;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        chmod(&secret, 0o644);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        c.oidc = Some(oidc(format!("http://127.0.0.1:{port}"), &secret));
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "insecure_http_issuer"), "{f:?}");
        assert!(has(&f, Severity::Error, "client_secret_file"), "{f:?}");
        assert!(
            has(&f, Severity::Error, "discovery document")
                && has(&f, Severity::Error, "could not be fetched"),
            "{f:?}"
        );

        // An IdP that answers with somebody else's issuer.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let body = r#"{"issuer":"https://elsewhere.example"}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        chmod(&secret, 0o600);
        c.oidc = Some(oidc(format!("http://{addr}"), &secret));
        let f = check(&c).await;
        assert!(
            has(
                &f,
                Severity::Error,
                "names issuer \"https://elsewhere.example\""
            ),
            "{f:?}"
        );
        assert_eq!(errors(&f).len(), 2, "{f:?}"); // and insecure_http_issuer

        // Device trust on with an address as relying party: one more error, naming the fix.
        c.devices.required = true;
        let f = check(&c).await;
        assert!(
            has(
                &f,
                Severity::Error,
                "WebAuthn needs a host name as relying party id"
            ),
            "{f:?}"
        );
        assert_eq!(errors(&f).len(), 3, "{f:?}");
    }
}
