//! Admin commands. They work on the gateway's state directory directly (under the store's lock),
//! so they run whether or not the gateway is up; the running gateway notices store changes
//! within a second. Every command is audited.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_audit::{ConnectorRef, Event, EventType};
use postern_proto::enroll::EnrollToken;
use postern_proto::ids::{hex, random_bytes, random_id, sha256_hex};

use crate::pki::Ca;
use crate::store::{unix_now, EnrollTokenRec, Store};
use crate::tokens::TokenKeys;
use crate::{Config, GatewayError};

/// Appends an admin command's event, saying which local account ran it.
fn audit(config: &Config, mut ev: Event) -> Result<(), GatewayError> {
    ev.gateway = Some(config.node_id.clone());
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    ev.detail = Some(format!(
        "{} (by local user {who})",
        ev.detail.as_deref().unwrap_or("admin command")
    ));
    postern_audit::append_sync(&config.audit_dir, &ev)?;
    Ok(())
}

fn rng_err() -> GatewayError {
    GatewayError::Io {
        what: "generating random bytes".into(),
        source: std::io::Error::other("random number generator failed"),
    }
}

/// A created enrolment token, for printing.
pub struct CreatedToken {
    pub token: String,
    pub id: String,
    pub site: String,
    pub expires: SystemTime,
}

/// `token create --site S --ttl D`: a one-time enrolment token, stored only as a hash.
pub fn token_create(
    config: &Config,
    site: &str,
    ttl: Duration,
) -> Result<CreatedToken, GatewayError> {
    if !postern_proto::wire::valid_name(site) {
        return Err(GatewayError::Io {
            what: format!("site name '{site}'"),
            source: std::io::Error::other(
                "expected lower-case letters, digits and '-', at most 63",
            ),
        });
    }
    let store = Store::open(&config.state_dir)?;
    let server_ca = Ca::load_or_create(&config.state_dir, "server-ca", "Postern gateway CA")?;
    let secret = hex(&random_bytes(32).map_err(|_| rng_err())?);
    let id = random_id("et").map_err(|_| rng_err())?[..15].to_owned();
    let now = unix_now();
    let rec = EnrollTokenRec {
        id: id.clone(),
        secret_sha256: sha256_hex(secret.as_bytes()),
        site: site.to_owned(),
        created: now,
        expires: now + ttl.as_secs(),
        used: None,
        used_by: None,
    };
    store.update(|s| {
        // Forget long-dead tokens so the store does not grow without bound.
        s.enroll_tokens.retain(|t| t.expires + 7 * 86400 > now);
        s.enroll_tokens.push(rec);
        Ok::<_, GatewayError>(())
    })?;
    let mut ev = Event::new(EventType::TokenCreated);
    ev.site = Some(site.to_owned());
    ev.detail = Some(format!(
        "enrolment token {id}, valid for {}",
        humantime::format_duration(ttl)
    ));
    audit(config, ev)?;
    let token = EnrollToken {
        secret,
        pin: postern_proto::tls::cert_pin(&server_ca.cert_der),
    };
    Ok(CreatedToken {
        token: token.render(),
        id,
        site: site.to_owned(),
        expires: UNIX_EPOCH + Duration::from_secs(now + ttl.as_secs()),
    })
}

/// `connector list`: a table of enrolled connectors.
pub fn connector_list(config: &Config) -> Result<String, GatewayError> {
    let state = Store::open(&config.state_dir)?.read()?;
    let mut out = format!(
        "{:<24} {:<12} {:<10} {:<22} {}\n",
        "ID", "SITE", "STATUS", "CERT EXPIRES", "HOST"
    );
    for c in &state.connectors {
        let status = if c.revoked.is_some() {
            "revoked"
        } else if c.not_after <= unix_now() {
            "expired"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<24} {:<12} {:<10} {:<22} {}\n",
            c.id,
            c.site,
            status,
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(c.not_after)),
            c.hostname.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}

/// `connector revoke ID`: refuses its next connection; a running gateway drops live ones.
pub fn connector_revoke(config: &Config, id: &str) -> Result<String, GatewayError> {
    let store = Store::open(&config.state_dir)?;
    let site = store.update(|s| {
        let c = s
            .connectors
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| GatewayError::Io {
                what: format!("revoking connector '{id}'"),
                source: std::io::Error::other(
                    "no such connector (see `postern-gateway connector list`)",
                ),
            })?;
        c.revoked.get_or_insert(unix_now());
        Ok::<_, GatewayError>(c.site.clone())
    })?;
    let mut ev = Event::new(EventType::ConnectorRevoked);
    ev.connector = Some(ConnectorRef {
        id: id.to_owned(),
        site: site.clone(),
    });
    ev.site = Some(site.clone());
    audit(config, ev)?;
    Ok(site)
}

/// `session mint`: a session token for a user (service accounts, tests, until sign-in lands).
pub fn session_mint(
    config: &Config,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<(String, crate::tokens::Claims), GatewayError> {
    if ttl > config.session_token_max_ttl {
        return Err(GatewayError::Io {
            what: format!("--ttl {}", humantime::format_duration(ttl)),
            source: std::io::Error::other(format!(
                "longer than limits.session_token_max_ttl ({})",
                humantime::format_duration(config.session_token_max_ttl)
            )),
        });
    }
    if user.is_empty() {
        return Err(GatewayError::Io {
            what: "--user".into(),
            source: std::io::Error::other("must not be empty"),
        });
    }
    postern_proto::fsutil::private_dir(&config.state_dir).map_err(|source| GatewayError::Io {
        what: format!("creating {}", config.state_dir.display()),
        source,
    })?;
    let keys = TokenKeys::load_or_create(&config.state_dir)?;
    let (token, claims) = keys.mint(user, groups, ttl)?;
    let mut ev = Event::new(EventType::TokenMinted);
    ev.user = Some(user.to_owned());
    ev.groups = Some(groups.to_vec());
    ev.detail = Some(format!(
        "session token {} expires {}",
        claims.jti,
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(claims.exp))
    ));
    audit(config, ev)?;
    Ok((token, claims))
}

/// Writes the gateway CA certificate (what clients and connectors trust) to `out`.
pub fn export_ca(config: &Config, out: &Path) -> Result<(), GatewayError> {
    let ca = Ca::load_or_create(&config.state_dir, "server-ca", "Postern gateway CA")?;
    std::fs::write(out, ca.cert_pem.as_bytes()).map_err(|source| GatewayError::Io {
        what: format!("writing {}", out.display()),
        source,
    })
}

/// Which of the gateway's two CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhichCa {
    /// Issues the gateway's own TLS certificate (what connectors, and clients without a
    /// certificate from files, trust).
    Server,
    /// Issues connector client certificates (what auditors and hospital IT may pin).
    Connector,
}

/// `ca export --which W`: the CA certificate in PEM, read from the state directory (never
/// created here: a gateway that never started has none).
pub fn ca_pem(config: &Config, which: WhichCa) -> Result<String, GatewayError> {
    let name = match which {
        WhichCa::Server => "server-ca.pem",
        WhichCa::Connector => "connector-ca.pem",
    };
    let path = config.state_dir.join(name);
    let pem = std::fs::read_to_string(&path).map_err(|source| GatewayError::Io {
        what: format!(
            "reading {} (has the gateway been started with this configuration?)",
            path.display()
        ),
        source,
    })?;
    postern_proto::tls::certs_from_pem(&pem, &path.display().to_string())?;
    Ok(pem)
}
