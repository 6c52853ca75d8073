//! `postern-gateway check`: every problem with a configuration and what it points at, all at
//! once. Errors make the command exit non-zero; warnings are printed and do not.
//!
//! Looked at: the policy; the state directory (0700) and every key in it (0600, or 0640), the
//! two CAs (valid, key matching); the client-facing certificate files when configured (readable,
//! key 0600/0640 and matching, not expired, expiring within 14 days = warning, naming
//! `tls.server_names`); the listen addresses (bindable now: a port in use may be the running
//! gateway itself); the audit directory (writable); sign-in (secret readable and private,
//! no plain-http IdP, discovery document reachable within 5 s); device trust (the WebAuthn
//! relying party id and origin).
//!
//! It changes nothing: no file or directory is created (a probe file in the audit directory is
//! removed at once) and every listener is closed again.

use std::path::Path;
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
    let mut out = Vec::new();
    if let Err(e) = postern_policy::Policy::from_file(&config.policy) {
        out.push(Finding::error(format!(
            "policy {}:\n{e}",
            config.policy.display()
        )));
    }
    state_dir(config, &mut out);
    server_cert(config, &mut out);
    check_bind(config.listen_clients, "listen.clients", &mut out);
    check_bind(config.listen_connectors, "listen.connectors", &mut out);
    if let Some(a) = config.listen_admin {
        check_bind(a, "admin.listen", &mut out);
    }
    audit_dir(&config.audit_dir, &mut out);
    oidc(config, &mut out).await;
    if config.oidc.is_some() && config.devices.required {
        if let Err(e) = crate::authn::devices::relying_party(config) {
            out.push(Finding::error(e));
        }
    }
    out
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
        std::fs::write(c.state_dir.join("state.json"), "{}").unwrap();
        chmod(&c.state_dir.join("state.json"), 0o666);
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
        assert!(has(&f, Severity::Error, "state.json: mode 0666"), "{f:?}");
        assert_eq!(errors(&f).len(), 5, "{f:?}");
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
