//! `postern-connector check`: every problem with a configuration and the enrolment it points
//! at, all at once. Errors make the command exit non-zero; warnings do not.
//!
//! Looked at: the state directory (present, 0700), the enrolment (`enrollment.json`), the
//! client key (0600, matching the certificate) and certificate (valid; expiring within 14 days
//! = warning; it renews itself at two thirds of its life while the connector runs), the gateway
//! CA, an interrupted renewal, the admin listen address (bindable now), the allowlist (empty =
//! warning) and every gateway address (resolvable and accepting TCP within 3 s, and not saying
//! that this connector is revoked: a renewal connection asks without renewing anything).

use std::time::{Duration, SystemTime};

use postern_net::addr::HostPort;
use postern_net::certs::{check_bind, check_cert_file, check_key_file, check_private_dir, Finding};

use crate::config::Config;
use crate::enroll::{load_enrollment, CA_FILE, CERT_FILE, KEY_FILE};

/// How long resolving and connecting to a gateway may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// Every problem found (empty = fine).
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let dir = &config.state_dir;
    let mut gateways = config.gateways.clone();
    if !dir.is_dir() {
        out.push(Finding::error(format!(
            "state_dir {}: does not exist: this connector is not enrolled (run `postern-connector enroll`)",
            dir.display()
        )));
    } else {
        check_private_dir(dir, "state_dir", &mut out);
        match load_enrollment(dir) {
            Ok(e) => {
                if gateways.is_empty() {
                    gateways = e.connector_addrs;
                }
            }
            Err(e) => out.push(Finding::error(format!("enrolment: {e}"))),
        }
        let chain = check_cert_file(
            &dir.join(CERT_FILE),
            "client certificate",
            SystemTime::now(),
            &mut out,
        );
        check_key_file(
            &dir.join(KEY_FILE),
            "client key",
            chain.as_deref(),
            &mut out,
        );
        check_cert_file(
            &dir.join(CA_FILE),
            "gateway CA",
            SystemTime::now(),
            &mut out,
        );
        if dir.join(crate::identity::PENDING_FILE).exists() {
            out.push(Finding::warning(format!(
                "{}: a certificate renewal was interrupted; the connector finishes it at start",
                dir.join(crate::identity::PENDING_FILE).display()
            )));
        }
    }
    if let Some(a) = config.admin_listen {
        check_bind(a, "admin.listen", &mut out);
    }
    if config.allowlist.entries.is_empty() {
        out.push(Finding::warning(
            "the allowlist is empty: every tunnel will be refused (add [[allow]] entries)",
        ));
    }
    if gateways.is_empty() && dir.is_dir() {
        out.push(Finding::error(
            "no gateway address: list `gateways` in the configuration or enrol again",
        ));
    }
    // Asking whether the gateway accepts the certificate needs the enrolled identity, and must
    // not finish an interrupted renewal (loading the identity would).
    let can_ask = dir.join(CERT_FILE).is_file()
        && dir.join(KEY_FILE).is_file()
        && !dir.join(crate::identity::PENDING_FILE).exists();
    for g in &gateways {
        if let Err(e) = reach(g).await {
            out.push(Finding::error(format!("gateway {g}: {e}")));
        } else if can_ask {
            if let Some(at) = revoked(dir, g).await {
                out.push(Finding::error(format!(
                    "gateway {g}: {}",
                    crate::link::revoked_message(at)
                )));
            }
        }
    }
    out
}

/// Whether gateway `gateway` says this connector is revoked (and when): one request on a
/// renewal connection, which the gateway answers with 403 and the refusal headers for a
/// revoked connector; any other answer — or none — is not a revocation (reachability is
/// reported separately). Nothing is renewed: the request is not a renewal.
async fn revoked(state_dir: &std::path::Path, gateway: &str) -> Option<u64> {
    let (_, tls) =
        crate::identity::load_identity_alpn(state_dir, &[postern_proto::wire::ALPN_RENEW]).ok()?;
    let addr = HostPort::parse(gateway).ok()?;
    let name = rustls_pki_types::ServerName::try_from(addr.host.clone()).ok()?;
    let ask = async {
        let tcp = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .ok()?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .ok()?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get(postern_proto::wire::PATH_REFUSED)
            .header(http::header::HOST, gateway)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok();
        conn.abort();
        let resp = resp?;
        (resp.status() == http::StatusCode::FORBIDDEN)
            .then(|| crate::link::revoked_at(resp.headers()))
            .flatten()
    };
    tokio::time::timeout(REACH_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
}

/// Resolves `host:port` and opens (then closes) a TCP connection to one of its addresses.
async fn reach(gateway: &str) -> Result<(), String> {
    let addr = HostPort::parse(gateway).map_err(|e| e.to_string())?;
    let (host, port) = (addr.host.as_str(), addr.port);
    let addrs: Vec<_> = tokio::time::timeout(REACH_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} has no address");
    for a in addrs {
        match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = format!("cannot connect to {a}: {e}"),
            Err(_) => last = format!("no answer from {a} within {REACH_TIMEOUT:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_net::certs::Severity;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn cert(days_left: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["c".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now + time::Duration::days(days_left);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// An enrolled state directory whose gateway is `gateway`; returns the configuration.
    fn enrolled(dir: &Path, gateway: &str) -> Config {
        let state = dir.join("state");
        postern_net::fsutil::private_dir(&state).unwrap();
        let (pem, key) = cert(60);
        let (ca, _) = cert(3650);
        postern_net::fsutil::write_atomic(&state.join(KEY_FILE), key.as_bytes(), 0o600).unwrap();
        std::fs::write(state.join(CERT_FILE), pem).unwrap();
        std::fs::write(state.join(CA_FILE), ca).unwrap();
        std::fs::write(
            state.join(crate::enroll::ENROLLMENT_FILE),
            format!(r#"{{"connector_id":"truro-1","site":"truro","gateway_url":"https://{gateway}","connector_addrs":["{gateway}"],"not_after":"x"}}"#),
        )
        .unwrap();
        Config::parse(
            "state_dir = \"state\"\n[[allow]]\ncidr = \"10.0.0.0/8\"\nports = \"104\"\n",
            &dir.join("connector.toml"),
        )
        .unwrap()
    }

    fn has(f: &[Finding], sev: Severity, needle: &str) -> bool {
        f.iter()
            .any(|f| f.severity == sev && f.message.contains(needle))
    }

    #[tokio::test]
    async fn an_enrolled_connector_with_a_reachable_gateway_is_fine() {
        let gw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = enrolled(dir.path(), &gw.local_addr().unwrap().to_string());
        let f = check(&c).await;
        assert!(f.is_empty(), "{f:?}");
    }

    #[tokio::test]
    async fn not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse("state_dir = \"nowhere\"\n", &dir.path().join("c.toml")).unwrap();
        let f = check(&c).await;
        assert!(has(&f, Severity::Error, "not enrolled"), "{f:?}");
        assert!(has(&f, Severity::Warning, "allowlist is empty"), "{f:?}");
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[tokio::test]
    async fn file_certificate_and_reachability_problems() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gw = closed.local_addr().unwrap().to_string();
        drop(closed);
        let dir = tempfile::tempdir().unwrap();
        let mut c = enrolled(dir.path(), &gw);
        let state = c.state_dir.clone();
        chmod(&state, 0o750);
        chmod(&state.join(KEY_FILE), 0o644);
        let (expired, _) = cert(-2);
        std::fs::write(state.join(CERT_FILE), expired).unwrap();
        std::fs::write(state.join(CA_FILE), "not a certificate").unwrap();
        std::fs::remove_file(state.join(crate::enroll::ENROLLMENT_FILE)).unwrap();
        c.gateways = vec![gw.clone(), "no-such-host.invalid:8444".into()];
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        c.admin_listen = Some(busy.local_addr().unwrap());
        let f = check(&c).await;
        for needle in [
            "state_dir",
            "chmod 700",
            "enrolment: ",
            "client certificate",
            "expired on",
            "client key: ",
            "mode 0644",
            "does not belong to the certificate",
            "gateway CA",
            "admin.listen",
            &format!("gateway {gw}: cannot connect"),
            "gateway no-such-host.invalid:8444: cannot resolve",
        ] {
            assert!(has(&f, Severity::Error, needle), "{needle}: {f:?}");
        }

        // Expiring soon: a warning only.
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = enrolled(dir.path(), &l.local_addr().unwrap().to_string());
        let (pem, key) = cert(3);
        std::fs::write(c.state_dir.join(CERT_FILE), pem).unwrap();
        std::fs::write(c.state_dir.join(KEY_FILE), key).unwrap();
        let f = check(&c).await;
        assert!(has(&f, Severity::Warning, "client certificate"), "{f:?}");
        assert!(has(&f, Severity::Warning, "expires in"), "{f:?}");
        assert!(f.iter().all(|f| f.severity == Severity::Warning), "{f:?}");
    }
}
