//! Admin commands. They work on the gateway's state directory directly (under the store's lock),
//! so they run whether or not the gateway is up; the running gateway notices store changes
//! within a second. Every command is audited.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_audit::{ConnectorRef, Event, EventType};
use postern_proto::enroll::EnrollToken;
use postern_proto::ids::{hex, random_bytes, random_id, sha256_hex};

use crate::authn::tokens::TokenKeys;
use crate::clock::{unix_now, Clock, SystemClock};
use crate::config::Config;
use crate::error::GatewayError;
use crate::pki::Ca;
use crate::state::{self, DeviceRec, DeviceStatus, EnrollTokenRec, Refusal, StoreError};

/// A stored string made safe to print on an administrator's terminal: control characters
/// (C0, DEL, C1: escape sequences that could clear the screen, move the cursor or retitle the
/// window) and invisible formatting characters (bidirectional overrides, zero-width
/// characters, which can make text read differently from what it is) are shown as `\u{..}`
/// escapes. Stored values come from enrolments, device registrations and sign-ins, and the
/// state file can be edited, so every listing passes what it prints from the store through
/// this.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Appends an admin command's event, saying which local account ran it.
fn audit(config: &Config, mut ev: Event) -> Result<(), GatewayError> {
    ev.gateway = Some(config.node_id.clone());
    let who = local_user();
    ev.detail = Some(format!(
        "{} (by local user {who})",
        ev.detail.as_deref().unwrap_or("admin command")
    ));
    postern_audit::append_sync(&config.audit_dir, &ev)?;
    Ok(())
}

/// Opens the configured store for an admin command (auditing an import of an old
/// `state.json`, if this command is the first to open the store after an upgrade).
pub async fn open_store(config: &Config) -> Result<state::SharedStore, GatewayError> {
    Ok(open_audited(config).await?.store)
}

async fn open_audited(config: &Config) -> Result<state::Opened, GatewayError> {
    let opened = state::open(&config.store, &config.state_dir).await?;
    if let Some(m) = &opened.migrated {
        audit(config, migration_event(m))?;
    }
    Ok(opened)
}

/// `replicas`: the gateway replicas sharing the store, live ones first.
pub async fn replicas(config: &Config) -> Result<String, GatewayError> {
    let store = open_store(config).await?;
    let now = unix_now();
    let mut all = store.replicas().await?;
    let live_for = crate::replica::LIVE_FOR.as_secs();
    all.sort_by_key(|r| (r.heartbeat + live_for <= now, r.id.clone()));
    let mut out = format!(
        "{:<20} {:<14} {:<22} {:<30} {:<8} {}\n",
        "REPLICA", "STATUS", "CLIENTS", "CONNECTORS", "VERSION", "STARTED"
    );
    for r in &all {
        let age = now.saturating_sub(r.heartbeat);
        let status = if age < live_for {
            "live".to_owned()
        } else {
            format!("gone ({age}s)")
        };
        out.push_str(&format!(
            "{:<20} {:<14} {:<22} {:<30} {:<8} {}\n",
            printable(&r.id),
            status,
            printable(&r.client_addr),
            printable(&r.connector_addrs.join(",")),
            printable(&r.version),
            when(Some(r.started)),
        ));
    }
    if all.is_empty() {
        out.push_str("(no replica has registered: none has started with this store)\n");
    }
    Ok(out)
}

/// Every record of the store as JSON (the format of the old `state.json`).
pub async fn state_export(config: &Config) -> Result<String, GatewayError> {
    let opened = open_audited(config).await?;
    let snapshot = opened.sql.export().await?;
    serde_json::to_string_pretty(&snapshot)
        .map_err(|e| admin_err("encoding the export".into(), &e.to_string()))
}

/// Loads an export into the (empty) configured store; returns what it held.
pub async fn state_import(config: &Config, file: &Path) -> Result<String, GatewayError> {
    let opened = open_audited(config).await?;
    let bytes = std::fs::read(file).map_err(|source| GatewayError::Io {
        what: format!("reading {}", file.display()),
        source,
    })?;
    let summary = opened.sql.import_export(&bytes).await?;
    let mut ev = Event::new(EventType::StoreMigrated);
    ev.detail = Some(format!(
        "{} imported into the store ({summary})",
        file.display()
    ));
    audit(config, ev)?;
    Ok(summary)
}

/// The `store.migrated` event of an import.
pub fn migration_event(m: &state::JsonMigration) -> Event {
    let mut ev = Event::new(EventType::StoreMigrated);
    ev.detail = Some(format!(
        "state.json imported into the database ({}); the old file is kept as {}",
        m.summary,
        m.backup.display()
    ));
    ev
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
pub async fn token_create(
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
    let store = open_store(config).await?;
    let server_ca = Ca::load_or_create(
        &config.state_dir,
        "server-ca",
        "Postern gateway CA",
        SystemClock.now(),
    )?;
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
    store.create_enroll_token(rec, now).await?;
    let mut ev = Event::new(EventType::TokenCreated);
    ev.site = Some(site.to_owned());
    ev.detail = Some(format!(
        "enrolment token {id}, valid for {}",
        humantime::format_duration(ttl)
    ));
    audit(config, ev)?;
    let token = EnrollToken {
        secret,
        pin: postern_net::tls::cert_pin(&server_ca.cert_der),
    };
    Ok(CreatedToken {
        token: token.render(),
        id,
        site: site.to_owned(),
        expires: UNIX_EPOCH + Duration::from_secs(now + ttl.as_secs()),
    })
}

/// `connector list`: a table of enrolled connectors.
pub async fn connector_list(config: &Config) -> Result<String, GatewayError> {
    let connectors = open_store(config).await?.connectors().await?;
    let mut out = format!(
        "{:<24} {:<12} {:<10} {:<22} {}\n",
        "ID", "SITE", "STATUS", "CERT EXPIRES", "HOST"
    );
    for c in &connectors {
        let status = if c.revoked.is_some() {
            "revoked"
        } else if c.not_after <= unix_now() {
            "expired"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<24} {:<12} {:<10} {:<22} {}\n",
            printable(&c.id),
            printable(&c.site),
            status,
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(c.not_after)),
            printable(c.hostname.as_deref().unwrap_or("-"))
        ));
    }
    Ok(out)
}

/// `connector revoke ID`: refuses its next connection; a running gateway drops live ones.
pub async fn connector_revoke(config: &Config, id: &str) -> Result<String, GatewayError> {
    let store = open_store(config).await?;
    let site = match store.revoke_connector(id.to_owned(), unix_now()).await {
        Ok(c) => c.site,
        Err(StoreError::Refused(Refusal::UnknownConnector(_))) => {
            return Err(admin_err(
                format!("revoking connector '{id}'"),
                "no such connector (see `postern-gateway connector list`)",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let mut ev = Event::new(EventType::ConnectorRevoked);
    ev.connector = Some(ConnectorRef {
        id: id.to_owned(),
        site: site.clone(),
    });
    ev.site = Some(site.clone());
    audit(config, ev)?;
    Ok(site)
}

/// `session rotate-key`: a new active token-signing key (see [`TokenKeys::add_active_key`]).
pub fn session_rotate_key(config: &Config) -> Result<String, GatewayError> {
    let kid = crate::authn::tokens::TokenKeys::add_active_key(&config.state_dir).map_err(|e| {
        GatewayError::Io {
            what: "rotating the session-token signing key".into(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    let mut ev = Event::new(EventType::AdminCommand);
    ev.detail = Some(format!(
        "session rotate-key: new signing key {kid} (active after the gateway restarts)"
    ));
    audit(config, ev)?;
    Ok(kid)
}

/// `session mint`: a session token for a user (service accounts, tests, until sign-in lands).
pub fn session_mint(
    config: &Config,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<(String, crate::authn::tokens::Claims), GatewayError> {
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
    postern_net::fsutil::private_dir(&config.state_dir).map_err(|source| GatewayError::Io {
        what: format!("creating {}", config.state_dir.display()),
        source,
    })?;
    let keys =
        TokenKeys::load_or_create(&config.state_dir)?.for_origin(config.public_origin().as_deref());
    let (token, claims) = keys.mint(user, groups, ttl, unix_now())?;
    let mut ev = Event::new(EventType::TokenMinted);
    ev.user = Some(user.to_owned());
    ev.signin = Some(claims.signin_id());
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
    let ca = Ca::load_or_create(
        &config.state_dir,
        "server-ca",
        "Postern gateway CA",
        SystemClock.now(),
    )?;
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
    postern_net::tls::certs_from_pem(&pem, &path.display().to_string())?;
    Ok(pem)
}

/// `check`: things worth knowing that are not errors (printed as `note:`).
pub fn check_notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if config.oidc.is_some() && !config.devices.required {
        notes.push(
            "device trust is OFF ([devices] required = false): sign-in issues tokens that are not bound to a device, and policy device conditions are unknown for them".into(),
        );
    }
    if config.oidc.is_some()
        && config.devices.required
        && crate::authn::devices::relying_party(config).is_ok()
    {
        match config.webauthn_origin_and_rp_id() {
            Ok((origin, rp_id)) => notes.push(format!(
                "device trust is on: WebAuthn relying party '{rp_id}', origin {origin}, approval {}",
                match config.devices.approval {
                    crate::config::Approval::Auto => "auto",
                    crate::config::Approval::Manual => "manual",
                }
            )),
            Err(e) => notes.push(format!("device trust: {e}")),
        }
    }
    notes
}

fn admin_err(what: String, message: &str) -> GatewayError {
    GatewayError::Io {
        what,
        source: std::io::Error::other(message.to_owned()),
    }
}

/// One device as `device list --json` prints it (the stored record without the key blob).
pub fn device_json(d: &DeviceRec) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "user": d.user,
        "name": d.name,
        "status": d.status.as_str(),
        "credential_id": d.credential_id,
        "aaguid": d.aaguid,
        "sign_count": d.sign_count,
        "user_verified": d.user_verified,
        "backup_eligible": d.backup_eligible,
        "backup_state": d.backup_state,
        "transports": d.transports,
        "created": d.created,
        "last_seen": d.last_seen,
        "approved": d.approved,
        "approved_by": d.approved_by,
        "revoked": d.revoked,
        "revoked_reason": d.revoked_reason,
        "posture": d.posture,
    })
}

fn when(t: Option<u64>) -> String {
    t.map(|t| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string())
        .unwrap_or_else(|| "-".into())
}

/// `device list [--user U] [--pending] [--json]`.
pub async fn device_list(
    config: &Config,
    user: Option<&str>,
    pending_only: bool,
    json: bool,
) -> Result<String, GatewayError> {
    let all = open_store(config).await?.devices().await?;
    let devices: Vec<_> = all
        .iter()
        .filter(|d| user.is_none_or(|u| state::same_user(&d.user, u)))
        .filter(|d| !pending_only || d.status == DeviceStatus::Pending)
        .collect();
    if json {
        let v: Vec<_> = devices.iter().map(|d| device_json(d)).collect();
        return serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| admin_err("printing devices".into(), &e.to_string()));
    }
    let mut out = format!(
        "{:<17} {:<28} {:<20} {:<8} {:<3} {:<21} {}\n",
        "ID", "USER", "NAME", "STATUS", "UV", "LAST SEEN", "POSTURE"
    );
    for d in devices {
        let posture = d
            .posture
            .as_ref()
            .map(|p| {
                let f = p.policy_facts();
                format!(
                    "{} {}; disk {}, firewall {}, lock {}",
                    p.os_name, p.os_version, f["disk_encrypted"], f["firewall"], f["screen_lock"]
                )
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<17} {:<28} {:<20} {:<8} {:<3} {:<21} {}\n",
            printable(&d.id),
            printable(&d.user),
            printable(&d.name.chars().take(20).collect::<String>()),
            d.status.as_str(),
            if d.user_verified { "yes" } else { "no" },
            when(d.last_seen.or(Some(d.created))),
            printable(&posture)
        ));
    }
    Ok(out)
}

fn device_event(kind: EventType, d: &DeviceRec, detail: String) -> Event {
    let mut ev = Event::new(kind);
    ev.user = Some(d.user.clone());
    ev.device = Some(postern_audit::DeviceRef {
        id: d.id.clone(),
        name: Some(d.name.clone()),
        user_verified: Some(d.user_verified),
    });
    ev.detail = Some(detail);
    ev
}

/// The account running this command, for attribution: the process's real uid and the login
/// name `/etc/passwd` gives it ("root (uid 0)"), never `$USER`/`$SUDO_USER`, which whoever
/// runs the command sets at will. (Under sudo the real uid is root's: sudo's own log says who
/// invoked it.) Read without `unsafe` from `/proc/self/status`. When the kernel knows the
/// login session's user (`/proc/self/loginuid`, set at login and kept across `sudo`, which the
/// process cannot change) and it differs, that account is named too:
/// "postern-gateway (uid 998), login ann (uid 1000)".
fn local_user() -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let account = |uid: u32| match login_name(&passwd, uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| real_uid(&s))
    else {
        return "unknown (no /proc/self/status)".into();
    };
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        // u32::MAX: no login session recorded (a service, a container).
        .filter(|l| *l != u32::MAX && *l != uid);
    match login {
        Some(l) => format!("{}, login {}", account(uid), account(l)),
        None => account(uid),
    }
}

/// The real uid: the first number of the `Uid:` line of `/proc/<pid>/status`.
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The name of the first `/etc/passwd` entry with `uid`, if it is a plain login name.
fn login_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let entry_uid: u32 = f.nth(1)?.parse().ok()?;
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b));
        (entry_uid == uid && plain).then(|| name.to_owned())
    })
}

/// `device approve ID`: a pending (or suspect) device becomes active.
pub async fn device_approve(config: &Config, id: &str) -> Result<DeviceRec, GatewayError> {
    let store = open_store(config).await?;
    let by = local_user();
    let change = store
        .update_device(
            id.to_owned(),
            Box::new(move |d| match d.status {
                DeviceStatus::Revoked => Err(Refusal::DeviceRevoked(d.id.clone())),
                DeviceStatus::Active => Ok(()),
                DeviceStatus::Pending | DeviceStatus::Suspect => {
                    d.status = DeviceStatus::Active;
                    d.approved = Some(unix_now());
                    d.approved_by = Some(by);
                    Ok(())
                }
            }),
        )
        .await;
    let (was, rec) = match change {
        Ok(x) => x,
        Err(StoreError::Refused(Refusal::UnknownDevice(_))) => {
            return Err(admin_err(
                format!("approving device '{id}'"),
                "no such device (see `postern-gateway device list`)",
            ))
        }
        Err(StoreError::Refused(Refusal::DeviceRevoked(_))) => {
            return Err(admin_err(
                format!("approving device '{id}'"),
                "the device is revoked; the user must register it again",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if was.status != DeviceStatus::Active {
        audit(
            config,
            device_event(
                EventType::DeviceApproved,
                &rec,
                format!("device {} approved (was {})", rec.id, was.status.as_str()),
            ),
        )?;
    }
    Ok(rec)
}

/// `device revoke ID`: refused from now on; a running gateway ends its live tunnels.
pub async fn device_revoke(
    config: &Config,
    id: &str,
    reason: &str,
) -> Result<DeviceRec, GatewayError> {
    let store = open_store(config).await?;
    let why = reason.to_owned();
    let change = store
        .update_device(
            id.to_owned(),
            Box::new(move |d| {
                if d.status != DeviceStatus::Revoked {
                    d.status = DeviceStatus::Revoked;
                    d.revoked = Some(unix_now());
                    d.revoked_reason = Some(why);
                }
                Ok(())
            }),
        )
        .await;
    let rec = match change {
        Ok((_, rec)) => rec,
        Err(StoreError::Refused(Refusal::UnknownDevice(_))) => {
            return Err(admin_err(
                format!("revoking device '{id}'"),
                "no such device (see `postern-gateway device list`)",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    audit(
        config,
        device_event(
            EventType::DeviceRevoked,
            &rec,
            format!("device {} revoked: {reason}", rec.id),
        ),
    )?;
    Ok(rec)
}

/// What `user revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRevocation {
    /// Ids of the devices it revoked.
    pub devices: Vec<String>,
    /// Session tokens of the user (from `auth.login` and `token.minted` in the audit log) that
    /// had not expired, been signed out or been refused by an earlier `user revoke`.
    pub tokens: usize,
    /// Sessions of the user the audit log shows open on a gateway that has not restarted since:
    /// a running gateway ends them within a second.
    pub live_sessions: usize,
}

impl UserRevocation {
    /// Whether the name matched nothing: no device, no live token, no live session (often a
    /// typo in the name).
    pub fn matched_nothing(&self) -> bool {
        self.devices.is_empty() && self.tokens == 0 && self.live_sessions == 0
    }

    /// "2 device(s) revoked (dev-…, dev-…), 1 unexpired session token(s) now refused, …".
    pub fn summary(&self) -> String {
        format!(
            "{} device(s) revoked{}, {} unexpired session token(s) now refused, {} live session(s) ending",
            self.devices.len(),
            if self.devices.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.devices.join(", "))
            },
            self.tokens,
            self.live_sessions
        )
    }
}

/// `needle` in `hay`, ignoring ASCII case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The token id and expiry in an `auth.login` / `token.minted` detail ("… session token
/// tok-… until|expires 2026-…Z").
fn token_in_detail(detail: &str) -> Option<(&str, u64)> {
    let mut words = detail
        .split([' ', ';'])
        .skip_while(|w| *w != "token")
        .skip(1);
    let jti = words.next().filter(|w| w.starts_with("tok-"))?;
    let exp = words.find_map(|w| humantime::parse_rfc3339(w).ok())?;
    let exp = exp.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some((jti, exp))
}

/// Counts, from the audit log, `user`'s session tokens that are still good at `now` (not
/// expired, not signed out, issued after `earlier_revoke`) and its live sessions. The audit
/// log is the only record of stateless tokens and of sessions a running gateway holds.
fn live_tokens_and_sessions(
    audit_dir: &Path,
    user: &str,
    signed_out: &std::collections::HashSet<String>,
    earlier_revoke: Option<u64>,
    now: u64,
) -> Result<(usize, usize), GatewayError> {
    use std::collections::{HashMap, HashSet};
    if !audit_dir.exists() {
        return Ok((0, 0));
    }
    let mut lines = postern_audit::RawLines::open(audit_dir)?;
    let mut tokens: HashSet<String> = HashSet::new();
    // session id → gateway node it runs on.
    let mut open: HashMap<String, String> = HashMap::new();
    let needle = serde_json::to_string(user).unwrap_or_default();
    while let Some(line) = lines.next() {
        let Ok(line) = line else { continue };
        if !line.complete
            || !(contains_ignore_case(line.bytes, needle.as_bytes())
                || contains_ignore_case(line.bytes, b"\"gateway.started\""))
        {
            continue;
        }
        let Ok(entry) = postern_audit::parse_line(&line) else {
            continue;
        };
        let ev = entry.event;
        let node = ev.gateway.clone().unwrap_or_default();
        let mine = ev
            .user
            .as_deref()
            .is_some_and(|u| state::same_user(u, user));
        match ev.event_type() {
            Some(EventType::GatewayStarted) => open.retain(|_, n| *n != node),
            Some(EventType::SessionStart) if mine => {
                if let Some(id) = ev.session_id {
                    open.insert(id, node);
                }
            }
            Some(EventType::SessionEnd | EventType::SessionTerminated) => {
                if let Some(id) = &ev.session_id {
                    open.remove(id);
                }
            }
            Some(EventType::AuthLogin | EventType::TokenMinted) if mine => {
                let issued = postern_audit::search::event_time(&ev.ts)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                if let Some((jti, exp)) = ev.detail.as_deref().and_then(token_in_detail) {
                    if exp > now
                        && !signed_out.contains(jti)
                        && earlier_revoke.is_none_or(|before| issued > before)
                    {
                        tokens.insert(jti.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Ok((tokens.len(), open.len()))
}

/// `user revoke U`: every device of U revoked and U's current tokens refused; a running
/// gateway ends U's live tunnels. U is compared ignoring ASCII case. Returns what it affected;
/// the revocation is recorded (and audited) even when that is nothing.
pub async fn user_revoke(config: &Config, user: &str) -> Result<UserRevocation, GatewayError> {
    let user = user.trim();
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(admin_err(
            "user revoke".into(),
            "the user must be 1 to 256 bytes without control characters",
        ));
    }
    let store = open_store(config).await?;
    let now = unix_now();
    let before = store.revocations().await?;
    let signed_out = before.tokens.iter().map(|t| t.jti.clone()).collect();
    let earlier = before
        .users
        .iter()
        .filter(|u| state::same_user(&u.user, user))
        .map(|u| u.before)
        .max();
    let (tokens, live_sessions) =
        live_tokens_and_sessions(&config.audit_dir, user, &signed_out, earlier, now)?;
    let revoked = store.revoke_user(user.to_owned(), now).await?;
    for d in &revoked {
        audit(
            config,
            device_event(
                EventType::DeviceRevoked,
                d,
                format!("device {} revoked: user revoked", d.id),
            ),
        )?;
    }
    let result = UserRevocation {
        devices: revoked.into_iter().map(|d| d.id).collect(),
        tokens,
        live_sessions,
    };
    let mut ev = Event::new(EventType::AdminCommand);
    ev.user = Some(user.to_owned());
    ev.detail = Some(format!(
        "user revoke {user}: {}; tokens issued until now refused{}",
        result.summary(),
        if result.matched_nothing() {
            " (matched nothing)"
        } else {
            ""
        }
    ));
    audit(config, ev)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, user: &str, status: DeviceStatus) -> DeviceRec {
        DeviceRec {
            id: id.into(),
            user: user.into(),
            name: format!("{id} laptop"),
            status,
            credential_id: format!("cred-{id}"),
            aaguid: "00000000-0000-0000-0000-000000000000".into(),
            sign_count: 3,
            user_verified: true,
            backup_eligible: false,
            backup_state: false,
            transports: vec!["internal".into()],
            created: 1_760_000_000,
            last_seen: Some(1_760_000_100),
            approved: None,
            approved_by: None,
            revoked: None,
            revoked_reason: None,
            posture: None,
            passkey: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn device_list_approve_revoke_and_user_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::local(&dir.path().join("state"), &dir.path().join("p.toml"));
        let store = open_store(&config).await.unwrap();
        for (id, user, status) in [
            ("dev-1", "ann@x", DeviceStatus::Pending),
            ("dev-2", "ann@x", DeviceStatus::Active),
            ("dev-3", "bob@x", DeviceStatus::Pending),
        ] {
            store.add_device(rec(id, user, status)).await.unwrap();
        }

        let all: Vec<serde_json::Value> =
            serde_json::from_str(&device_list(&config, None, false, true).await.unwrap()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["status"], "pending");
        assert_eq!(all[0]["credential_id"], "cred-dev-1");
        assert!(
            all[0].get("passkey").is_none(),
            "the key blob is not listed"
        );
        let pending: Vec<serde_json::Value> =
            serde_json::from_str(&device_list(&config, None, true, true).await.unwrap()).unwrap();
        assert_eq!(pending.len(), 2);
        let anns: Vec<serde_json::Value> = serde_json::from_str(
            &device_list(&config, Some("ann@x"), true, true)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(anns.len(), 1);
        assert_eq!(anns[0]["id"], "dev-1");
        let table = device_list(&config, None, false, false).await.unwrap();
        assert!(table.starts_with("ID "), "{table}");
        assert!(
            table.contains("dev-3") && table.contains("bob@x") && table.contains("pending"),
            "{table}"
        );

        let d = device_approve(&config, "dev-1").await.unwrap();
        assert_eq!(d.status, DeviceStatus::Active);
        assert!(d.approved.is_some());
        let e = device_approve(&config, "dev-9")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such device"), "{e}");

        let d = device_revoke(&config, "dev-1", "lost on the train")
            .await
            .unwrap();
        assert_eq!(d.status, DeviceStatus::Revoked);
        assert_eq!(d.revoked_reason.as_deref(), Some("lost on the train"));
        let e = device_approve(&config, "dev-1")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("revoked"), "{e}");

        // The name as typed in another case still matches.
        let r = user_revoke(&config, "ANN@X").await.unwrap();
        assert_eq!(r.devices, vec!["dev-2".to_owned()]);
        assert!(!r.matched_nothing());
        let devices = store.devices().await.unwrap();
        assert!(devices
            .iter()
            .filter(|d| d.user == "ann@x")
            .all(|d| d.status == DeviceStatus::Revoked));
        let dev3 = devices.iter().find(|d| d.id == "dev-3").unwrap();
        assert_eq!(dev3.status, DeviceStatus::Pending);
        assert_eq!(store.revocations().await.unwrap().users.len(), 1);

        // Every change is in the audit log.
        let mut text = String::new();
        for e in std::fs::read_dir(&config.audit_dir).unwrap() {
            text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
        }
        assert_eq!(text.matches("\"type\":\"device.approved\"").count(), 1);
        assert_eq!(text.matches("\"type\":\"device.revoked\"").count(), 2);
        assert!(text.contains("user revoke ANN@X"));
    }

    #[test]
    fn the_local_account_is_the_real_uid_and_its_passwd_name() {
        let status = "Name:\tpostern-gateway\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n";
        assert_eq!(real_uid(status), Some(1001));
        assert_eq!(real_uid("Name: x\n"), None);
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nann:x:1001:1001:Ann:/home/ann:/bin/sh\nevil name:x:1002:1002::/:/bin/sh\n";
        assert_eq!(login_name(passwd, 1001).as_deref(), Some("ann"));
        assert_eq!(login_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(login_name(passwd, 1002), None);
        assert_eq!(login_name(passwd, 4242), None);
        // This process: no environment variable decides it.
        let who = local_user();
        assert!(who.contains("uid "), "{who}");
    }

    #[test]
    fn token_ids_and_expiry_come_from_login_and_mint_details() {
        assert_eq!(
            token_in_detail("idp https://idp subject s; mfa true; auth_time unknown; session token tok-ab12 until 2026-12-05T02:36:03Z"),
            Some(("tok-ab12", 1_796_438_163))
        );
        assert_eq!(
            token_in_detail("session token tok-cd34 expires 2026-12-05T02:36:03Z"),
            Some(("tok-cd34", 1_796_438_163))
        );
        assert_eq!(token_in_detail("user revoke x: nothing"), None);
        assert_eq!(token_in_detail("session token tok-1 until soon"), None);
    }

    /// What a terminal would act on: any control character other than the line ends, and the
    /// invisible formatting characters `printable` escapes.
    fn terminal_unsafe(text: &str) -> Vec<char> {
        text.chars()
            .filter(|c| {
                *c != '\n'
                    && (c.is_control()
                        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{200b}'..='\u{200f}'))
            })
            .collect()
    }

    #[tokio::test]
    async fn listings_escape_control_characters_found_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::local(&dir.path().join("state"), &dir.path().join("p.toml"));
        let store = open_store(&config).await.unwrap();
        // What an edited state file (or an older gateway that did not check) can hold.
        let mut d = rec(
            "dev-\u{1b}[2J1",
            "ann\u{1b}]0;owned\u{7}@x",
            DeviceStatus::Active,
        );
        d.name = "laptop\u{202e}exe.pdf\u{9b}31m".into();
        store.add_device(d).await.unwrap();
        let t = token_create(&config, "truro", Duration::from_secs(600))
            .await
            .unwrap();
        store
            .enroll_connector(
                sha256_hex(EnrollToken::parse(&t.token).unwrap().secret.as_bytes()),
                Some("host\u{1b}[2J\u{1b}[1;1Hroot\r\u{7f}".into()),
                unix_now(),
                Box::new(|site: &str| {
                    Ok((
                        format!("{site}-abc"),
                        state::Issued {
                            cert_pem: String::new(),
                            serial: "01".into(),
                            not_after: unix_now() + 3600,
                        },
                    ))
                }),
            )
            .await
            .unwrap();

        let connectors = connector_list(&config).await.unwrap();
        assert!(connectors.contains("truro-abc"), "{connectors}");
        assert_eq!(
            terminal_unsafe(&connectors),
            Vec::<char>::new(),
            "{connectors:?}"
        );
        assert!(
            connectors.contains("host\\u{1b}[2J\\u{1b}[1;1Hroot\\u{d}\\u{7f}"),
            "the name is still readable: {connectors}"
        );
        let devices = device_list(&config, None, false, false).await.unwrap();
        assert_eq!(terminal_unsafe(&devices), Vec::<char>::new(), "{devices:?}");
        assert!(devices.contains("ann\\u{1b}]0;owned\\u{7}@x"), "{devices}");
        assert!(devices.contains("laptop\\u{202e}exe.pdf"), "{devices}");
        // Plain text passes through untouched.
        assert!(matches!(
            printable("conn.truro.nhs.uk"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
