//! Gateway configuration: `gateway.toml`, parsed into serde structs with `deny_unknown_fields`,
//! then resolved into [`Config`] with every error collected and reported at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{ConnectionLimits, RateLimits, RateQuota};

/// Errors in a configuration file. Each message names the file, the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Name of this gateway node in audit events.
    #[serde(default = "default_node_id")]
    node_id: String,
    state_dir: PathBuf,
    policy: PathBuf,
    audit_dir: Option<PathBuf>,
    listen: RawListen,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    oidc: Option<RawOidc>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    devices: RawDevices,
    #[serde(default)]
    store: RawStore,
    web: Option<RawWeb>,
    /// `[syslog]`: live forwarding of the audit log to a SIEM / audit record repository.
    syslog: Option<RawSyslog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    /// Every web endpoint NAME is served at `https://NAME.<apps_domain>/`.
    apps_domain: String,
    /// A certificate for `*.<apps_domain>` (PEM chain and key); default: the gateway's own CA
    /// issues one (or the `[tls]` files are used when they are set).
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    /// CA certificates (PEM) that verify `https` upstreams; default: the public web PKI roots
    /// built into the gateway (Mozilla's, as `webpki-roots` ships them).
    upstream_ca_file: Option<PathBuf>,
    /// Largest request body sent to an application, in MiB (default 1024).
    max_request_body_mib: Option<u64>,
    /// A request body (an upload) that moves no byte for this long is cut (default 60s).
    body_idle_timeout: Option<String>,
    /// How long an upstream may take to answer a request's headers (default 120s).
    upstream_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: String,
    format: Option<String>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    queue: Option<usize>,
    app_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// `postgres://user@host:port/db?sslmode=verify-full`; absent: SQLite in the state dir.
    url: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    max_connections: Option<u32>,
    max_staleness: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    signin: Option<RateQuota>,
    enroll: Option<RateQuota>,
    connector_dial: Option<RateQuota>,
    tunnel_per_address: Option<RateQuota>,
    tunnel_per_user: Option<RateQuota>,
    admin: Option<RateQuota>,
    web_per_address: Option<RateQuota>,
    web_per_user: Option<RateQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    required: Option<bool>,
    approval: Option<String>,
    rp_id: Option<String>,
    rp_name: Option<String>,
    origin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`), plain HTTP: keep it on loopback
    /// or a management network.
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    redirect_url: String,
    #[serde(default)]
    scopes: Vec<String>,
    user_claim: Option<String>,
    groups_claim: Option<String>,
    name_claim: Option<String>,
    ae_title_claim: Option<String>,
    mfa_amr: Option<Vec<String>>,
    #[serde(default)]
    mfa_acr: Vec<String>,
    session_ttl: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_http_issuer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    clients: String,
    connectors: String,
    /// QUIC (UDP) for clients on the `clients` port.
    quic: Option<bool>,
    /// QUIC (UDP) for connector links on the `connectors` port.
    connector_quic: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// Names and addresses put in the gateway's self-issued server certificate.
    server_names: Option<Vec<String>>,
    /// `host:port` of the connector listener as connectors should dial it.
    advertise_connector_addrs: Option<Vec<String>>,
    /// The client-facing certificate chain (PEM, leaf first) and its key, e.g. from the
    /// hospital's or a public CA. Default: a certificate issued by the gateway's own CA.
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<String>,
    connector_dial_timeout: Option<String>,
    /// The old name of `max_client_connections` (before the listeners had separate pools);
    /// still accepted.
    max_connections: Option<usize>,
    max_client_connections: Option<usize>,
    max_connector_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    client_idle_timeout: Option<String>,
    refusal_summary_interval: Option<String>,
    session_token_max_ttl: Option<String>,
    connector_cert_validity: Option<String>,
    shutdown_grace: Option<String>,
}

fn default_node_id() -> String {
    "gateway-1".to_owned()
}

/// Resolved gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub state_dir: PathBuf,
    pub policy: PathBuf,
    pub audit_dir: PathBuf,
    pub listen_clients: SocketAddr,
    /// Also listen for clients over QUIC (UDP, the same port); default on.
    pub listen_quic: bool,
    /// QUIC links for connectors: UDP on the connector listener's port (`[listen]
    /// connector_quic`, on by default).
    pub listen_connector_quic: bool,
    pub listen_connectors: SocketAddr,
    pub server_names: Vec<String>,
    /// Client-facing certificate and key files (reloaded on SIGHUP); None = self-issued.
    pub server_cert_files: Option<CertFiles>,
    /// Empty means "derive from the bound connector listener address".
    pub advertise_connector_addrs: Vec<String>,
    pub handshake_timeout: Duration,
    pub connector_dial_timeout: Duration,
    /// Connection caps per listener and per address, and the client idle timeout.
    pub connections: ConnectionLimits,
    /// How often refusals of unauthenticated requests are written in aggregate.
    pub refusal_summary_interval: Duration,
    pub session_token_max_ttl: Duration,
    pub connector_cert_validity: Duration,
    /// On SIGTERM, how long live sessions may go on before they are ended.
    pub shutdown_grace: Duration,
    pub oidc: Option<OidcConfig>,
    /// Admin listener for metrics and health; None = off.
    pub listen_admin: Option<SocketAddr>,
    /// Per-address and per-user rate limits.
    pub rate_limits: RateLimits,
    /// Device trust (WebAuthn) at sign-in.
    pub devices: DevicesConfig,
    /// Continue an audit log found cut short of its `audit.head`, recording
    /// `audit.truncation_detected` (instead of refusing to start). Never read from the file:
    /// only `postern-gateway run --accept-truncated-audit` sets it, for one start.
    pub accept_truncated_audit: bool,
    /// Where the state lives (`[store]`).
    pub store: crate::state::StoreConfig,
    /// `[web]`: web applications served by the proxy (None: none are).
    pub web: Option<WebConfig>,
    /// `[syslog]`: forward every audit event to a SIEM or audit record repository (None: no
    /// forwarding).
    pub syslog: Option<SyslogConfig>,
}

/// `[syslog]`: where and how the audit log is forwarded live (RFC 5424; TLS per RFC 5425).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `host:port` of the server.
    pub address: String,
    /// `json` (the stored lines) or `atna` (IHE ITI-20 DICOM audit messages).
    pub format: postern_audit::syslog::MessageFormat,
    /// TLS (default); plain TCP only when `tls = false`.
    pub tls: bool,
    /// CA certificate(s) the server's certificate must chain to (TLS).
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of `address`).
    pub server_name: String,
    /// Client certificate and key presented to the server (the key file mode 0600).
    pub client: Option<CertFiles>,
    /// Events held in memory for the forwarder.
    pub queue: usize,
    /// APP-NAME of the messages.
    pub app_name: String,
}

impl SyslogConfig {
    /// The forwarder's options, reading the CA and client certificate files (a client key
    /// that others can read is refused).
    pub fn options(&self) -> Result<postern_audit::SyslogOptions, postern_audit::AuditError> {
        let target = format!(
            "{}://{}",
            if self.tls { "tls" } else { "tcp" },
            self.address
        );
        let mut options = if self.tls {
            let Some(ca) = &self.ca_file else {
                return Err(postern_audit::AuditError::Forward {
                    target,
                    reason: "TLS needs ca_file".to_owned(),
                });
            };
            let pem = std::fs::read(ca).map_err(|e| postern_audit::AuditError::Forward {
                target: target.clone(),
                reason: format!("reading ca_file {}: {e}", ca.display()),
            })?;
            let options = postern_audit::SyslogOptions::tls(
                self.address.clone(),
                self.server_name.clone(),
                &pem,
            )?;
            match &self.client {
                Some(files) => options.with_client_cert_files(&files.cert, &files.key)?,
                None => options,
            }
        } else {
            postern_audit::SyslogOptions::tcp(self.address.clone())
        };
        options.format = self.format;
        options.queue_capacity = self.queue;
        options.app_name.clone_from(&self.app_name);
        Ok(options)
    }
}

/// Resolves `[syslog]`.
fn syslog_config(
    file: &str,
    raw: RawSyslog,
    abs: &dyn Fn(PathBuf) -> PathBuf,
    errors: &mut Vec<String>,
) -> SyslogConfig {
    let host = match raw.address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        _ => {
            errors.push(format!(
                "{file}: syslog.address: expected host:port (e.g. \"arr.trust.nhs.uk:6514\"), found \"{}\"",
                crate::http::printable(&raw.address, 80)
            ));
            String::new()
        }
    };
    let format = match raw
        .format
        .as_deref()
        .map(postern_audit::syslog::MessageFormat::parse)
    {
        None => postern_audit::syslog::MessageFormat::Json,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            errors.push(format!("{file}: syslog.format: {e}"));
            postern_audit::syslog::MessageFormat::Json
        }
    };
    let tls = raw.tls.unwrap_or(true);
    if tls && raw.ca_file.is_none() {
        errors.push(format!(
            "{file}: syslog.ca_file: required with TLS (the CA that issued the server's certificate); set tls = false only for a server on a trusted network"
        ));
    }
    let client = match (raw.cert_file, raw.key_file) {
        (Some(cert), Some(key)) => Some(CertFiles {
            cert: abs(cert),
            key: abs(key),
        }),
        (None, None) => None,
        _ => {
            errors.push(format!(
                "{file}: syslog.cert_file and syslog.key_file go together (the client certificate and its key)"
            ));
            None
        }
    };
    if client.is_some() && !tls {
        errors.push(format!(
            "{file}: syslog.cert_file: a client certificate needs TLS (tls = true)"
        ));
    }
    let queue = raw.queue.unwrap_or(10_000);
    if queue == 0 || queue > 1_000_000 {
        errors.push(format!(
            "{file}: syslog.queue: expected 1 to 1000000 events, found {queue}"
        ));
    }
    SyslogConfig {
        address: raw.address,
        format,
        tls,
        ca_file: raw.ca_file.map(abs),
        server_name: raw.server_name.unwrap_or(host),
        client,
        queue,
        app_name: raw.app_name.unwrap_or_else(|| "postern".to_owned()),
    }
}

/// `[web]`: the identity-aware proxy for web applications.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// Lower-case DNS name; endpoint NAME is served at `NAME.<apps_domain>`.
    pub apps_domain: String,
    /// The wildcard certificate's files (None: `[tls]`'s files, or the gateway's own CA).
    pub cert_files: Option<CertFiles>,
    /// CA certificates that verify `https` upstreams (None: the system's roots).
    pub upstream_ca_file: Option<PathBuf>,
    pub max_request_body: u64,
    pub body_idle_timeout: Duration,
    pub upstream_timeout: Duration,
}

/// Whether a newly registered device may be used at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// Active as soon as it is registered.
    Auto,
    /// Pending until the security team runs `postern-gateway device approve`.
    Manual,
}

/// `[devices]`: device trust at sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicesConfig {
    /// Sign-in ends with a WebAuthn ceremony and tokens are bound to a device (default true).
    /// `false` restores device-less sign-in; `check` reports it.
    pub required: bool,
    pub approval: Approval,
    /// WebAuthn relying party id; None = the host of `oidc.redirect_url`.
    pub rp_id: Option<String>,
    pub rp_name: String,
    /// Web origin of the sign-in pages; None = scheme://host:port of `oidc.redirect_url`.
    pub origin: Option<String>,
}

impl Default for DevicesConfig {
    fn default() -> DevicesConfig {
        DevicesConfig {
            required: true,
            approval: Approval::Manual,
            rp_id: None,
            rp_name: "Postern".into(),
            origin: None,
        }
    }
}

impl Config {
    /// The gateway's public origin (`https://host:port`) if the configuration says it
    /// (`[devices] origin`, else `oidc.redirect_url`): session tokens are bound to it.
    pub fn public_origin(&self) -> Option<String> {
        if let Some(o) = &self.devices.origin {
            return Some(o.trim_end_matches('/').to_owned());
        }
        let rest = self.oidc.as_ref()?.redirect_url.strip_prefix("https://")?;
        let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
        Some(format!("https://{authority}"))
    }

    /// The WebAuthn origin and RP id: configured, else derived from `oidc.redirect_url`.
    pub fn webauthn_origin_and_rp_id(&self) -> Result<(String, String), String> {
        let derived = self.oidc.as_ref().and_then(|o| {
            let rest = o.redirect_url.strip_prefix("https://")?;
            let authority = rest.split('/').next()?;
            let host = if let Some(h) = authority.strip_prefix('[') {
                h.split(']').next()?.to_owned()
            } else {
                authority
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(authority)
                    .to_owned()
            };
            Some((format!("https://{authority}"), host))
        });
        let origin =
            match (&self.devices.origin, &derived) {
                (Some(o), _) => o.trim_end_matches('/').to_owned(),
                (None, Some((o, _))) => o.clone(),
                (None, None) => return Err(
                    "devices.origin is not set and there is no oidc.redirect_url to derive it from"
                        .into(),
                ),
            };
        let rp_id =
            match (&self.devices.rp_id, &derived) {
                (Some(r), _) => r.clone(),
                (None, Some((_, h))) => h.clone(),
                (None, None) => return Err(
                    "devices.rp_id is not set and there is no oidc.redirect_url to derive it from"
                        .into(),
                ),
            };
        Ok((origin, rp_id))
    }
}

/// A client secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the client secret comes from (read at start, never from the main file in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// Set in code (the demo's in-process identity provider).
    Inline(Secret),
}

/// Sign-in with the hospital's OpenID provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretSource,
    /// The gateway's callback URL as registered at the IdP (…/auth/callback).
    pub redirect_url: String,
    /// Scopes in addition to `openid`.
    pub scopes: Vec<String>,
    /// Claim naming the user in policies and audit: `sub` (the default: stable, assigned by the
    /// IdP), `oid+tid` (Entra: `<tid>/<oid>`), `email` (accepted only with `email_verified`
    /// true), or another claim the IdP controls. No fallback: a token without it is refused.
    pub user_claim: String,
    pub groups_claim: String,
    pub name_claim: String,
    /// Claim holding the user's DICOM calling AE titles (a string or a list), which a policy
    /// rule's `calling_ae = ["{user.ae}"]` accepts beside the policy's own `[dicom]
    /// ae_titles`. Default `ae_title`; a token without it gives none.
    pub ae_title_claim: String,
    /// `amr` values that mean "multi-factor authentication happened" (default `["mfa"]`: a
    /// single method such as `pin`, `sms` or `hwk` is one factor, not two).
    pub mfa_amr: Vec<String>,
    /// `acr` values that mean the same.
    pub mfa_acr: Vec<String>,
    /// Lifetime of the session token issued after sign-in (one reporting shift by default).
    pub session_ttl: Duration,
    /// Extra CA certificate(s) for the IdP's TLS.
    pub ca_file: Option<PathBuf>,
    /// Allows an `http://` issuer on a loopback address: tests and the demo only.
    /// `postern-gateway check` reports it as an error.
    pub insecure_http_issuer: bool,
}

impl OidcConfig {
    /// Reads the client secret from its source.
    pub fn read_secret(&self) -> Result<Secret, String> {
        read_secret(&self.client_secret, "oidc.client_secret")
    }
}

/// Reads a secret from its source; `key` (`oidc.client_secret`) names it in messages, which
/// never contain the secret.
pub fn read_secret(source: &SecretSource, key: &str) -> Result<Secret, String> {
    match source {
        SecretSource::File(p) => std::fs::read_to_string(p)
            .map(|s| Secret(s.trim().to_owned()))
            .map_err(|e| format!("reading {key}_file {}: {e}", p.display())),
        SecretSource::Env(v) => std::env::var(v)
            .map(|s| Secret(s.trim().to_owned()))
            .map_err(|_| format!("{key}_env: environment variable {v} is not set")),
        SecretSource::Inline(s) => Ok(s.clone()),
    }
}

impl Config {
    /// Defaults for a given state directory and policy, listening on loopback ephemeral ports.
    pub fn local(state_dir: &Path, policy: &Path) -> Config {
        Config {
            node_id: default_node_id(),
            state_dir: state_dir.to_owned(),
            policy: policy.to_owned(),
            audit_dir: state_dir.join("audit"),
            listen_clients: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_quic: true,
            listen_connector_quic: true,
            listen_connectors: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_names: default_server_names(),
            server_cert_files: None,
            advertise_connector_addrs: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            connector_dial_timeout: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            refusal_summary_interval: Duration::from_secs(60),
            session_token_max_ttl: Duration::from_secs(24 * 3600),
            connector_cert_validity: Duration::from_secs(90 * 24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            oidc: None,
            listen_admin: None,
            rate_limits: RateLimits::default(),
            devices: DevicesConfig::default(),
            accept_truncated_audit: false,
            store: crate::state::StoreConfig::default(),
            web: None,
            syslog: None,
        }
    }

    /// Reads and resolves a configuration file. Relative paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is used for messages and relative paths.
    // Over 100 lines on purpose: it resolves every section in one pass so that all errors are
    // collected and reported together, each with its key.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display();
        let Decoded {
            raw,
            errors: toml_errors,
            patched,
        } = decode(text, &file.to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut addr = |key: &str, v: &str| -> SocketAddr {
            v.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "{file}: listen.{key}: expected an address like \"0.0.0.0:8443\", found \"{v}\""
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen_clients = addr("clients", &raw.listen.clients);
        let listen_connectors = addr("connectors", &raw.listen.connectors);
        let listen_admin = raw.admin.listen.as_deref().map(|a| {
            a.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "{file}: admin.listen: expected an address like \"127.0.0.1:9090\", found \"{a}\""
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        });
        let mut dur = |key: &str, v: Option<String>, default: Duration| -> Duration {
            match v {
                None => default,
                Some(s) => humantime::parse_duration(&s).unwrap_or_else(|e| {
                    errors.push(format!(
                        "{file}: limits.{key}: expected a duration like \"10s\" or \"8h\", found \"{s}\" ({e})"
                    ));
                    default
                }),
            }
        };
        let d = Config::local(Path::new("."), Path::new("."));
        let handshake_timeout = dur(
            "handshake_timeout",
            raw.limits.handshake_timeout,
            d.handshake_timeout,
        );
        let connector_dial_timeout = dur(
            "connector_dial_timeout",
            raw.limits.connector_dial_timeout,
            d.connector_dial_timeout,
        );
        let session_token_max_ttl = dur(
            "session_token_max_ttl",
            raw.limits.session_token_max_ttl,
            d.session_token_max_ttl,
        );
        let connector_cert_validity = dur(
            "connector_cert_validity",
            raw.limits.connector_cert_validity,
            d.connector_cert_validity,
        );
        let shutdown_grace = dur(
            "shutdown_grace",
            raw.limits.shutdown_grace,
            d.shutdown_grace,
        );
        let refusal_summary_interval = dur(
            "refusal_summary_interval",
            raw.limits.refusal_summary_interval,
            d.refusal_summary_interval,
        );
        let client_idle = dur(
            "client_idle_timeout",
            raw.limits.client_idle_timeout,
            d.connections.client_idle,
        );
        for (key, v) in [
            ("refusal_summary_interval", refusal_summary_interval),
            ("client_idle_timeout", client_idle),
        ] {
            if v < Duration::from_secs(1) {
                errors.push(format!("{file}: limits.{key}: must be at least 1s"));
            }
        }
        let dc = d.connections;
        let max_client = match (
            raw.limits.max_connections,
            raw.limits.max_client_connections,
        ) {
            (Some(_), Some(_)) => {
                errors.push(format!(
                    "{file}: limits.max_connections: the old name of max_client_connections; set only max_client_connections"
                ));
                dc.max_client
            }
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => dc.max_client,
        };
        let connections = ConnectionLimits {
            max_client,
            max_connector: raw
                .limits
                .max_connector_connections
                .unwrap_or(dc.max_connector),
            per_address: raw
                .limits
                .max_connections_per_address
                .unwrap_or(dc.per_address),
            client_idle,
        };
        for (key, n) in [
            (
                if raw.limits.max_connections.is_some() {
                    "max_connections"
                } else {
                    "max_client_connections"
                },
                connections.max_client,
            ),
            ("max_connector_connections", connections.max_connector),
            ("max_connections_per_address", connections.per_address),
        ] {
            if n == 0 {
                errors.push(format!("{file}: limits.{key}: must be at least 1"));
            }
        }
        let rl = RateLimits::default();
        let mut quota = |key: &str, v: Option<RateQuota>, default: RateQuota| -> RateQuota {
            let q = v.unwrap_or(default);
            if q.per_second == 0 || q.burst == 0 {
                errors.push(format!(
                    "{file}: rate_limits.{key}: per_second and burst must both be at least 1"
                ));
            }
            q
        };
        let rr = raw.rate_limits;
        let rate_limits = RateLimits {
            signin: quota("signin", rr.signin, rl.signin),
            enroll: quota("enroll", rr.enroll, rl.enroll),
            connector_dial: quota("connector_dial", rr.connector_dial, rl.connector_dial),
            tunnel_per_address: quota(
                "tunnel_per_address",
                rr.tunnel_per_address,
                rl.tunnel_per_address,
            ),
            tunnel_per_user: quota("tunnel_per_user", rr.tunnel_per_user, rl.tunnel_per_user),
            admin: quota("admin", rr.admin, rl.admin),
            web_per_address: quota("web_per_address", rr.web_per_address, rl.web_per_address),
            web_per_user: quota("web_per_user", rr.web_per_user, rl.web_per_user),
        };
        if raw.node_id.is_empty() {
            errors.push(format!("{file}: node_id: must not be empty"));
        }
        let server_cert_files = match (raw.tls.cert_file, raw.tls.key_file) {
            (Some(cert), Some(key)) => Some(CertFiles {
                cert: abs(cert),
                key: abs(key),
            }),
            (None, None) => None,
            _ => {
                errors.push(format!(
                    "{file}: tls: set both cert_file and key_file (or neither, for a certificate from the gateway's own CA)"
                ));
                None
            }
        };
        let web = raw
            .web
            .map(|w| web_config(&file.to_string(), w, &abs, &mut errors));
        let server_names = raw.tls.server_names.unwrap_or_else(default_server_names);
        if server_names.is_empty() {
            errors.push(format!(
                "{file}: tls.server_names: list at least one name clients use to reach the gateway"
            ));
        }
        let oidc = raw.oidc.map(|o| {
            let secret = match (o.client_secret_file, o.client_secret_env) {
                (Some(f), None) => SecretSource::File(abs(f)),
                (None, Some(e)) => SecretSource::Env(e),
                _ => {
                    errors.push(format!(
                        "{file}: oidc: set exactly one of client_secret_file or client_secret_env (the secret never goes in this file)"
                    ));
                    SecretSource::Env(String::new())
                }
            };
            let http_ok = o.insecure_http_issuer
                && (o.issuer.starts_with("http://127.")
                    || o.issuer.starts_with("http://localhost")
                    || o.issuer.starts_with("http://[::1]"));
            if !(o.issuer.starts_with("https://") || http_ok) {
                errors.push(format!(
                    "{file}: oidc.issuer: expected an https:// URL, found \"{}\"",
                    o.issuer
                ));
            }
            if !o.redirect_url.starts_with("https://") || !o.redirect_url.ends_with("/auth/callback") {
                errors.push(format!(
                    "{file}: oidc.redirect_url: expected https://<this gateway>/auth/callback, found \"{}\"",
                    o.redirect_url
                ));
            }
            if o.client_id.is_empty() {
                errors.push(format!("{file}: oidc.client_id: must not be empty"));
            }
            if o.user_claim.as_deref().is_some_and(|c| c.trim().is_empty()) {
                errors.push(format!(
                    "{file}: oidc.user_claim: must not be empty (hint: leave it out for \"sub\", the IdP's stable subject)"
                ));
            }
            let session_ttl = match o.session_ttl {
                None => Duration::from_secs(10 * 3600),
                Some(t) => humantime::parse_duration(&t).unwrap_or_else(|e| {
                    errors.push(format!(
                        "{file}: oidc.session_ttl: expected a duration like \"10h\", found \"{t}\" ({e})"
                    ));
                    Duration::from_secs(3600)
                }),
            };
            OidcConfig {
                issuer: o.issuer,
                client_id: o.client_id,
                client_secret: secret,
                redirect_url: o.redirect_url,
                scopes: o.scopes,
                user_claim: o.user_claim.unwrap_or_else(|| "sub".into()),
                groups_claim: o.groups_claim.unwrap_or_else(|| "groups".into()),
                name_claim: o.name_claim.unwrap_or_else(|| "name".into()),
                ae_title_claim: o.ae_title_claim.unwrap_or_else(|| "ae_title".into()),
                mfa_amr: o.mfa_amr.unwrap_or_else(|| vec!["mfa".into()]),
                mfa_acr: o.mfa_acr,
                session_ttl,
                ca_file: o.ca_file.map(abs),
                insecure_http_issuer: o.insecure_http_issuer,
            }
        });
        let mut devices = DevicesConfig::default();
        if let Some(r) = raw.devices.required {
            devices.required = r;
        }
        match raw.devices.approval.as_deref() {
            None => {}
            Some("auto") => devices.approval = Approval::Auto,
            Some("manual") => devices.approval = Approval::Manual,
            Some(other) => errors.push(format!(
                "{file}: devices.approval: expected \"auto\" or \"manual\", found \"{other}\""
            )),
        }
        if let Some(n) = raw.devices.rp_name {
            devices.rp_name = n;
        }
        if let Some(r) = raw.devices.rp_id {
            if r.is_empty() || r.contains(['/', ':', ' ']) {
                errors.push(format!(
                    "{file}: devices.rp_id: expected a host name like \"gw.example.org\", found \"{r}\""
                ));
            }
            devices.rp_id = Some(r);
        }
        if let Some(o) = raw.devices.origin {
            if !o.starts_with("https://") {
                errors.push(format!(
                    "{file}: devices.origin: expected https://host[:port], found \"{o}\""
                ));
            }
            devices.origin = Some(o);
        }
        let store = store_config(&file.to_string(), raw.store, &abs, &mut errors);
        let syslog = raw
            .syslog
            .map(|r| syslog_config(&file.to_string(), r, &abs, &mut errors));
        listen_overlaps(
            &file.to_string(),
            [
                ("listen.clients", Some(listen_clients)),
                ("listen.connectors", Some(listen_connectors)),
                ("admin.listen", listen_admin),
            ],
            &mut errors,
        );
        if !toml_errors.is_empty() || !errors.is_empty() {
            // A value replaced to read on is not reported again by the checks above.
            errors.retain(|e| {
                !patched
                    .iter()
                    .any(|key| e.starts_with(&format!("{file}: {key}:")))
            });
            let mut all = toml_errors;
            all.extend(errors);
            return Err(ConfigError::Invalid(all));
        }
        let state_dir = abs(raw.state_dir);
        Ok(Config {
            node_id: raw.node_id,
            audit_dir: raw
                .audit_dir
                .map(abs)
                .unwrap_or_else(|| state_dir.join("audit")),
            state_dir,
            policy: abs(raw.policy),
            listen_clients,
            listen_quic: raw.listen.quic.unwrap_or(true),
            listen_connector_quic: raw.listen.connector_quic.unwrap_or(true),
            listen_connectors,
            server_names,
            server_cert_files,
            advertise_connector_addrs: raw.tls.advertise_connector_addrs.unwrap_or_default(),
            handshake_timeout,
            connector_dial_timeout,
            connections,
            refusal_summary_interval,
            session_token_max_ttl,
            connector_cert_validity,
            shutdown_grace,
            oidc,
            listen_admin,
            rate_limits,
            devices,
            accept_truncated_audit: false,
            store,
            web,
            syslog,
        })
    }
}

/// Resolves `[web]`.
fn web_config(
    file: &str,
    raw: RawWeb,
    abs: &dyn Fn(PathBuf) -> PathBuf,
    errors: &mut Vec<String>,
) -> WebConfig {
    let domain = raw.apps_domain.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 200
        || !domain.contains('.') && domain != "localhost"
        || !domain.split('.').all(label_ok)
    {
        errors.push(format!(
            "{file}: web.apps_domain: expected a DNS name such as \"apps.gw.example.org\" (each endpoint NAME is served at NAME.<apps_domain>), found \"{}\"",
            crate::http::printable(&raw.apps_domain, 80)
        ));
    }
    let cert_files = match (raw.cert_file, raw.key_file) {
        (Some(cert), Some(key)) => Some(CertFiles {
            cert: abs(cert),
            key: abs(key),
        }),
        (None, None) => None,
        _ => {
            errors.push(format!(
                "{file}: web: set both cert_file and key_file (or neither: the [tls] certificate, or one from the gateway's own CA)"
            ));
            None
        }
    };
    let mut dur = |key: &str, v: Option<String>, default: Duration| match v {
        None => default,
        Some(s) => match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                errors.push(format!(
                    "{file}: web.{key}: expected a duration like \"60s\", found \"{}\"",
                    crate::http::printable(&s, 40)
                ));
                default
            }
        },
    };
    let body_idle_timeout = dur(
        "body_idle_timeout",
        raw.body_idle_timeout,
        Duration::from_secs(60),
    );
    let upstream_timeout = dur(
        "upstream_timeout",
        raw.upstream_timeout,
        Duration::from_secs(120),
    );
    let mib = raw.max_request_body_mib.unwrap_or(1024);
    if mib == 0 || mib > 1024 * 1024 {
        errors.push(format!(
            "{file}: web.max_request_body_mib: expected 1 to 1048576, found {mib}"
        ));
    }
    WebConfig {
        apps_domain: domain,
        cert_files,
        upstream_ca_file: raw.upstream_ca_file.map(abs),
        max_request_body: mib.saturating_mul(1024 * 1024),
        body_idle_timeout,
        upstream_timeout,
    }
}

/// Resolves `[store]`: absent or without `url`, SQLite in the state directory; with `url`,
/// PostgreSQL, whose password comes from a file or the environment and never from the URL,
/// and whose connection uses TLS with certificate checks unless the database is on loopback
/// or a Unix socket.
fn store_config(
    file: &str,
    raw: RawStore,
    abs: &dyn Fn(PathBuf) -> PathBuf,
    errors: &mut Vec<String>,
) -> crate::state::StoreConfig {
    let mut out = crate::state::StoreConfig::default();
    if let Some(s) = raw.max_staleness {
        match humantime::parse_duration(&s) {
            Ok(d) => out.max_staleness = d,
            Err(e) => errors.push(format!(
                "{file}: store.max_staleness: expected a duration like \"60s\", found \"{s}\" ({e})"
            )),
        }
    }
    let Some(url) = raw.url else {
        for (key, set) in [
            ("password_file", raw.password_file.is_some()),
            ("password_env", raw.password_env.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("max_connections", raw.max_connections.is_some()),
        ] {
            if set {
                errors.push(format!(
                    "{file}: store.{key}: only with store.url (a PostgreSQL database); without it the state is in SQLite in state_dir"
                ));
            }
        }
        return out;
    };
    let password = match (raw.password_file, raw.password_env) {
        (Some(f), None) => Some(SecretSource::File(abs(f))),
        (None, Some(e)) => Some(SecretSource::Env(e)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{file}: store: set at most one of password_file or password_env"
            ));
            None
        }
    };
    match postgres_url_problem(&url) {
        Some(p) => errors.push(format!("{file}: store.url: {p}")),
        None => {
            if raw.max_connections == Some(0) {
                errors.push(format!("{file}: store.max_connections: must be at least 1"));
            }
            out.postgres = Some(crate::state::PostgresConfig {
                url,
                password,
                ca_file: raw.ca_file.map(abs),
                max_connections: raw.max_connections.unwrap_or(10),
            });
        }
    }
    out
}

/// What is wrong with a PostgreSQL URL, if anything. Never repeats a password it contains.
fn postgres_url_problem(text: &str) -> Option<String> {
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => return Some(format!("expected postgres://user@host:port/database ({e})")),
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Some(format!(
            "expected a postgres:// URL, found scheme \"{}\" (leave store.url out for SQLite in state_dir)",
            url.scheme()
        ));
    }
    if url.password().is_some() {
        return Some(
            "contains a password: put it in store.password_file or store.password_env, never in this file".into(),
        );
    }
    let socket = url.query_pairs().any(|(k, _)| k == "host");
    // postgres:// is not a scheme the URL standard knows, so its host is kept as written.
    let host = url.host_str().unwrap_or("");
    let local = socket
        || host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned());
    match mode.as_deref() {
        Some("verify-full" | "verify-ca") => None,
        Some("disable" | "allow" | "prefer" | "require") | None if local => None,
        Some(m) => Some(format!(
            "sslmode={m} does not check the database's certificate; use sslmode=verify-full (with store.ca_file for a private CA)"
        )),
        None => Some(
            "a database off this host needs TLS: add ?sslmode=verify-full (with store.ca_file for a private CA)".into(),
        ),
    }
}

/// A certificate chain file and its key file (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Two listeners cannot bind one address, nor a wildcard and an address of one port.
fn listen_overlaps<const N: usize>(
    file: &str,
    listeners: [(&str, Option<SocketAddr>); N],
    errors: &mut Vec<String>,
) {
    for (i, (key, addr)) in listeners.iter().enumerate() {
        let Some(addr) = addr else { continue };
        let earlier = listeners[..i].iter().find_map(|(other, a)| {
            let a = (*a)?;
            let same_family = a.is_ipv4() == addr.is_ipv4();
            if a.port() != addr.port() || addr.port() == 0 {
                None
            } else if a.ip() == addr.ip() {
                Some(format!("{file}: {key}: {addr} is also {other}"))
            } else if same_family && (a.ip().is_unspecified() || addr.ip().is_unspecified()) {
                Some(format!(
                    "{file}: {key}: {addr} overlaps {other} ({a}): a wildcard address takes the port on every address"
                ))
            } else {
                None
            }
        });
        if let Some(e) = earlier {
            errors.push(format!("{e}; give each listener its own port"));
        }
    }
}

/// What [`decode`] read: the raw configuration (with every bad key removed or replaced, so
/// that the rest of the file could be read), the problems, and the keys that were replaced.
struct Decoded {
    raw: RawConfig,
    errors: Vec<String>,
    patched: Vec<String>,
}

/// Most problems [`decode`] reads past before it gives up.
const MAX_TOML_ERRORS: usize = 50;

/// Deserializes `text` into [`RawConfig`], collecting every unknown key and every value of the
/// wrong type (serde stops at the first): each problem is reported with line, column and key,
/// then the key is blanked out (an unknown key) or its value replaced by `""` (the one type
/// every required key has), and the text is read again. Blanking keeps every line where it
/// was, so positions stay true. A syntax error, a missing key or a problem that cannot be
/// located ends the reading.
fn decode(text: &str, file: &str) -> Result<Decoded, ConfigError> {
    let mut text = text.to_owned();
    let mut errors = Vec::new();
    let mut patched: Vec<String> = Vec::new();
    let position = |text: &str, at: usize| {
        let before = text.get(..at).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    };
    loop {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => {
                return Ok(Decoded {
                    raw,
                    errors,
                    patched,
                })
            }
            Err(e) => e,
        };
        let message = e.message().trim_end().replace('\n', " ");
        let span = e.span().unwrap_or(0..0);
        let (line, column) = position(&text, span.start);
        let located = if message.starts_with("missing field") || errors.len() >= MAX_TOML_ERRORS {
            None
        } else {
            toml_edit::ImDocument::parse(text.as_str())
                .ok()
                .and_then(|doc| locate(doc.as_table(), "", &span))
        };
        let Some(found) = located else {
            let what = if toml_edit::ImDocument::parse(text.as_str()).is_err() {
                format!("invalid TOML: {message}")
            } else {
                message
            };
            errors.push(format!("{file}:{line}:{column}: {what}"));
            return Err(ConfigError::Invalid(errors));
        };
        let again = patched.contains(&found.path);
        if !again {
            errors.push(format!("{file}:{line}:{column}: {}: {message}", found.path));
        }
        if message.starts_with("unknown field") || again {
            blank(&mut text, found.whole);
        } else if let Some(value) = found.value {
            let width = value.len();
            text.replace_range(value, &format!("{:<width$}", "\"\""));
            patched.push(found.path);
        } else {
            blank(&mut text, found.whole);
        }
    }
}

/// Spaces instead of `range`, newlines kept.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let Some(part) = text.get(range.clone()) else {
        return;
    };
    let spaces: String = part
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(range, &spaces);
}

/// A key of the document that a deserialization error points at.
struct Located {
    /// `limits.handshake_timeout`.
    path: String,
    /// The key and its value (a table: its header and every key in it).
    whole: std::ops::Range<usize>,
    /// The value, for a key with a value.
    value: Option<std::ops::Range<usize>>,
}

/// The innermost key of `table` whose key or value contains `span`.
fn locate(
    table: &toml_edit::Table,
    prefix: &str,
    span: &std::ops::Range<usize>,
) -> Option<Located> {
    let within =
        |r: &std::ops::Range<usize>| r.start <= span.start && span.start < r.end.max(r.start + 1);
    for (key, item) in table.iter() {
        let path = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        let key_span = table.key(key).and_then(|k| k.span());
        match item {
            toml_edit::Item::Value(value) => {
                let (Some(k), Some(v)) = (key_span, value.span()) else {
                    continue;
                };
                let whole = k.start..v.end;
                if !within(&whole) {
                    continue;
                }
                if let toml_edit::Value::InlineTable(inline) = value {
                    if let Some(inner) = locate_inline(inline, &path, span) {
                        return Some(inner);
                    }
                }
                return Some(Located {
                    path,
                    whole,
                    value: Some(v),
                });
            }
            toml_edit::Item::Table(inner) => {
                if let Some(found) = locate(inner, &path, span) {
                    return Some(found);
                }
                let header = inner.span();
                let end = inner
                    .iter()
                    .filter_map(|(k, i)| {
                        let key_end = inner.key(k).and_then(|k| k.span()).map(|s| s.end);
                        let value_end = i.as_value().and_then(|v| v.span()).map(|s| s.end);
                        value_end.or(key_end)
                    })
                    .max();
                if let Some(h) = header.filter(|h| within(h)) {
                    return Some(Located {
                        path,
                        whole: h.start..end.unwrap_or(h.end).max(h.end),
                        value: None,
                    });
                }
            }
            _ => {}
        }
    }
    None
}

fn locate_inline(
    table: &toml_edit::InlineTable,
    prefix: &str,
    span: &std::ops::Range<usize>,
) -> Option<Located> {
    for (key, value) in table.iter() {
        let (Some(k), Some(v)) = (table.key(key).and_then(|k| k.span()), value.span()) else {
            continue;
        };
        if k.start <= span.start && span.start < v.end {
            return Some(Located {
                path: format!("{prefix}.{key}"),
                whole: k.start..v.end,
                value: Some(v),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal gateway.toml with `[section]` holding `body`, parsed.
    fn with_section(section: &str, body: &str) -> Result<Config, String> {
        Config::parse(
            &format!("state_dir = \"s\"\npolicy = \"p\"\n[listen]\nclients = \"127.0.0.1:8443\"\nconnectors = \"127.0.0.1:8444\"\n[{section}]\n{body}"),
            Path::new("/etc/postern/gw.toml"),
        )
        .map_err(|e| e.to_string())
    }

    fn with_store(store: &str) -> Result<Config, String> {
        with_section("store", store)
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given() {
        let c = with_store("max_staleness = \"30s\"\n").unwrap();
        assert_eq!(c.store.postgres, None);
        assert_eq!(c.store.max_staleness, Duration::from_secs(30));
        let c = with_store(
            "url = \"postgres://postern@db.trust.nhs.uk:5432/postern?sslmode=verify-full\"\npassword_file = \"db-password\"\nca_file = \"db-ca.pem\"\n",
        )
        .unwrap();
        let pg = c.store.postgres.unwrap();
        assert_eq!(
            pg.password,
            Some(SecretSource::File(PathBuf::from(
                "/etc/postern/db-password"
            )))
        );
        assert_eq!(pg.ca_file, Some(PathBuf::from("/etc/postern/db-ca.pem")));
        assert_eq!(pg.max_connections, 10);
        // On this host (loopback or a Unix socket) TLS is the operator's choice.
        for url in [
            "postgres://postern@127.0.0.1:5432/postern",
            "postgres://postern@[::1]/postern",
            "postgres://postern@localhost/postern?sslmode=disable",
            "postgresql:///postern?host=/run/postgresql&user=postern",
        ] {
            let c = with_store(&format!("url = \"{url}\"\npassword_env = \"PGPW\"\n"));
            assert!(c.is_ok(), "{url}: {c:?}");
        }
    }

    #[test]
    fn a_store_url_with_a_password_or_without_checked_tls_is_refused() {
        let e =
            with_store("url = \"postgres://postern:hunter2@db.example/p?sslmode=verify-full\"\n")
                .unwrap_err();
        assert!(e.contains("store.url: contains a password"), "{e}");
        assert!(!e.contains("hunter2"), "the password was repeated: {e}");
        let e = with_store("url = \"postgres://postern@db.example/p\"\n").unwrap_err();
        assert!(e.contains("needs TLS: add ?sslmode=verify-full"), "{e}");
        let e =
            with_store("url = \"postgres://postern@10.0.0.5/p?sslmode=require\"\n").unwrap_err();
        assert!(e.contains("sslmode=require does not check"), "{e}");
        let e = with_store("url = \"mysql://db.example/p\"\n").unwrap_err();
        assert!(e.contains("expected a postgres:// URL"), "{e}");
        let e = with_store(
            "url = \"postgres://p@127.0.0.1/p\"\npassword_file = \"f\"\npassword_env = \"E\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("at most one of password_file or password_env"),
            "{e}"
        );
        let e = with_store("password_file = \"f\"\nmax_staleness = \"soon\"\n").unwrap_err();
        assert!(
            e.contains("store.password_file: only with store.url"),
            "{e}"
        );
        assert!(
            e.contains("store.max_staleness: expected a duration"),
            "{e}"
        );
    }

    fn with_syslog(syslog: &str) -> Result<Config, String> {
        with_section("syslog", syslog)
    }

    #[test]
    fn syslog_forwarding_is_configured_in_its_section() {
        let c = with_syslog(
            "address = \"arr.trust.nhs.uk:6514\"\nformat = \"atna\"\nca_file = \"arr-ca.pem\"\ncert_file = \"arr.pem\"\nkey_file = \"arr.key\"\n",
        )
        .unwrap();
        let s = c.syslog.unwrap();
        assert_eq!(s.format, postern_audit::syslog::MessageFormat::Atna);
        assert!(s.tls);
        assert_eq!(s.server_name, "arr.trust.nhs.uk");
        assert_eq!(s.ca_file, Some(PathBuf::from("/etc/postern/arr-ca.pem")));
        assert_eq!(
            s.client,
            Some(CertFiles {
                cert: PathBuf::from("/etc/postern/arr.pem"),
                key: PathBuf::from("/etc/postern/arr.key"),
            })
        );
        assert_eq!(s.queue, 10_000);
        // The files are read when the forwarder is set up: a missing CA is reported then.
        let e = s.options().unwrap_err().to_string();
        assert!(e.contains("reading ca_file /etc/postern/arr-ca.pem"), "{e}");
        let c = with_syslog("address = \"siem.local:514\"\ntls = false\n").unwrap();
        let s = c.syslog.unwrap();
        assert_eq!(s.format, postern_audit::syslog::MessageFormat::Json);
        let o = s.options().unwrap();
        assert!(o.tls.is_none());
        assert_eq!(o.target(), "tcp://siem.local:514");
        assert!(with_syslog("address = \"a:1\"\ntls = false\n").is_ok());
        assert_eq!(with_store("").unwrap().syslog, None);
    }

    #[test]
    fn bad_syslog_settings_are_reported() {
        let e = with_syslog(
            "address = \"arr.trust.nhs.uk\"\nformat = \"xml\"\ncert_file = \"c.pem\"\nqueue = 0\n",
        )
        .unwrap_err();
        for want in [
            "syslog.address: expected host:port",
            "syslog.format: unknown syslog message format \"xml\"",
            "syslog.ca_file: required with TLS",
            "syslog.cert_file and syslog.key_file go together",
            "syslog.queue: expected 1 to 1000000",
        ] {
            assert!(e.contains(want), "{want:?} missing from {e}");
        }
        let e =
            with_syslog("address = \"a:1\"\ntls = false\ncert_file = \"c\"\nkey_file = \"k\"\n")
                .unwrap_err();
        assert!(e.contains("a client certificate needs TLS"), "{e}");
        let e = with_syslog("address = \"a:1\"\nport = 3\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn parses_example_and_resolves_paths() {
        let c = Config::parse(
            "state_dir = \"state\"\npolicy = \"/etc/p.toml\"\n[listen]\nclients = \"127.0.0.1:8443\"\nconnectors = \"127.0.0.1:8444\"\n",
            Path::new("/etc/postern/gateway.toml"),
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/postern/state"));
        assert_eq!(c.audit_dir, Path::new("/etc/postern/state/audit"));
        assert_eq!(c.policy, Path::new("/etc/p.toml"));
        assert_eq!(c.listen_clients.port(), 8443);
    }

    #[test]
    fn reports_every_error_with_file_and_key() {
        let err = Config::parse(
            "state_dir = \"s\"\npolicy = \"p\"\n[listen]\nclients = \"nope\"\nconnectors = \"1.2.3.4\"\n[limits]\nhandshake_timeout = \"soon\"\n",
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gw.toml: listen.clients"), "{err}");
        assert!(err.contains("gw.toml: listen.connectors"), "{err}");
        assert!(err.contains("gw.toml: limits.handshake_timeout"), "{err}");
    }

    /// Issue #12: every unknown key and every value of the wrong type, with line and column,
    /// not only the first; and the checks after them too.
    #[test]
    fn every_mistake_in_the_file_is_reported_at_once() {
        let text = "state_dir = \"s\"\nlisten_port = 3\npolicy = \"p\"\n[listen]\nclients = \"nope\"\nconnectors = 8444\n[limits]\nhandshake_timeout = 5\nmax_conections = 10\nshutdown_grace = \"soon\"\n[tlss]\nserver_names = [\"gw\"]\n";
        let err = Config::parse(text, Path::new("gw.toml")).unwrap_err();
        let ConfigError::Invalid(all) = &err else {
            panic!("{err}");
        };
        let expected = [
            "gw.toml:2:1: listen_port: unknown field `listen_port`",
            "gw.toml: listen.clients: expected an address like \"0.0.0.0:8443\", found \"nope\"",
            "gw.toml:6:14: listen.connectors: invalid type: integer `8444`, expected a string",
            "gw.toml:8:21: limits.handshake_timeout: invalid type: integer `5`, expected a string",
            "gw.toml:9:1: limits.max_conections: unknown field `max_conections`",
            "gw.toml: limits.shutdown_grace: expected a duration like \"10s\" or \"8h\", found \"soon\"",
            "gw.toml:11:2: tlss: unknown field `tlss`",
        ];
        for e in expected {
            assert!(
                all.iter().any(|a| a.starts_with(e)),
                "missing {e:?} in:\n{}",
                all.join("\n")
            );
        }
        assert_eq!(all.len(), expected.len(), "{}", all.join("\n"));
        // A value that is not even TOML stops there: nothing after it can be read.
        let err = Config::parse("state_dir = \n", Path::new("gw.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("gw.toml:1:13: invalid TOML"), "{err}");
    }

    /// Issue #12: two listeners on one address (or a wildcard and an address on one port)
    /// cannot both bind.
    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let base = "state_dir = \"s\"\npolicy = \"p\"\n";
        let err = Config::parse(
            &format!("{base}[listen]\nclients = \"127.0.0.1:8443\"\nconnectors = \"127.0.0.1:8443\"\n[admin]\nlisten = \"0.0.0.0:8443\"\n"),
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("gw.toml: listen.connectors: 127.0.0.1:8443 is also listen.clients"),
            "{err}"
        );
        assert!(
            err.contains("gw.toml: admin.listen: 0.0.0.0:8443 overlaps listen.clients"),
            "{err}"
        );
        // Different ports, or different addresses on one port, are fine.
        for (a, b) in [
            ("127.0.0.1:8443", "127.0.0.1:8444"),
            ("127.0.0.1:8443", "127.0.0.2:8443"),
        ] {
            Config::parse(
                &format!("{base}[listen]\nclients = \"{a}\"\nconnectors = \"{b}\"\n"),
                Path::new("gw.toml"),
            )
            .unwrap();
        }
    }

    #[test]
    fn connection_limits_defaults_new_keys_and_the_old_max_connections() {
        let base = "state_dir = \"s\"\npolicy = \"p\"\n[listen]\nclients = \"127.0.0.1:1\"\nconnectors = \"127.0.0.1:2\"\n[limits]\n";
        let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("gw.toml"));
        let c = parse("").unwrap();
        assert_eq!(c.connections, ConnectionLimits::default());
        assert_eq!(c.refusal_summary_interval, Duration::from_secs(60));
        let c = parse(
            "max_client_connections = 100\nmax_connector_connections = 7\nmax_connections_per_address = 3\nclient_idle_timeout = \"90s\"\nrefusal_summary_interval = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.connections,
            ConnectionLimits {
                max_client: 100,
                max_connector: 7,
                per_address: 3,
                client_idle: Duration::from_secs(90),
            }
        );
        assert_eq!(c.refusal_summary_interval, Duration::from_secs(10));
        // The old key sets the client cap; connectors keep their own pool.
        let c = parse("max_connections = 8\n").unwrap();
        assert_eq!(c.connections.max_client, 8);
        assert_eq!(
            c.connections.max_connector,
            ConnectionLimits::default().max_connector
        );
        let err = parse("max_connections = 8\nmax_client_connections = 9\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gw.toml: limits.max_connections: the old name of max_client_connections"),
            "{err}"
        );
        let err = parse(
            "max_connections_per_address = 0\nmax_connector_connections = 0\nclient_idle_timeout = \"0s\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "limits.max_connections_per_address: must be at least 1",
            "limits.max_connector_connections: must be at least 1",
            "limits.client_idle_timeout: must be at least 1s",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn rate_limits_default_override_and_reject_zero() {
        let base = "state_dir = \"s\"\npolicy = \"p\"\n[listen]\nclients = \"127.0.0.1:1\"\nconnectors = \"127.0.0.1:2\"\n";
        let c = Config::parse(base, Path::new("gw.toml")).unwrap();
        assert_eq!(c.rate_limits, RateLimits::default());
        let c = Config::parse(
            &format!(
                "{base}[rate_limits]\ntunnel_per_user = {{ per_second = 2000, burst = 4000 }}\n"
            ),
            Path::new("gw.toml"),
        )
        .unwrap();
        assert_eq!(c.rate_limits.tunnel_per_user.per_second, 2000);
        assert_eq!(c.rate_limits.tunnel_per_user.burst, 4000);
        assert_eq!(c.rate_limits.signin, RateLimits::default().signin);
        let err = Config::parse(
            &format!("{base}[rate_limits]\nsignin = {{ per_second = 0, burst = 5 }}\nenroll = {{ per_second = 1 }}\n"),
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing field `burst`"), "{err}");
        let err = Config::parse(
            &format!("{base}[rate_limits]\nsignin = {{ per_second = 0, burst = 5 }}\n"),
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "gw.toml: rate_limits.signin: per_second and burst must both be at least 1"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../config/gateway.toml");
        let c = Config::parse(text, Path::new("/etc/postern/gateway.toml"))
            .unwrap_or_else(|e| panic!("config/gateway.toml: {e}"));
        assert_eq!(
            c.rate_limits,
            RateLimits::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse(
            "state_dir = \"s\"\npolicy = \"p\"\nlisten_port = 3\n[listen]\nclients = \"127.0.0.1:1\"\nconnectors = \"127.0.0.1:2\"\n",
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `listen_port`"), "{err}");
        assert!(err.contains("gw.toml"), "{err}");
    }

    #[test]
    fn devices_section_defaults_derivation_and_errors() {
        let base = "state_dir = \"s\"\npolicy = \"p\"\n[listen]\nclients = \"127.0.0.1:1\"\nconnectors = \"127.0.0.1:2\"\n[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret_env = \"X\"\nredirect_url = \"https://gw.example.org:8443/auth/callback\"\n";
        let c = Config::parse(base, Path::new("gw.toml")).unwrap();
        assert!(c.devices.required, "device trust is on by default");
        assert_eq!(c.devices.approval, Approval::Manual);
        assert_eq!(
            c.webauthn_origin_and_rp_id().unwrap(),
            (
                "https://gw.example.org:8443".to_owned(),
                "gw.example.org".to_owned()
            )
        );
        let c = Config::parse(
            &format!("{base}[devices]\nrequired = false\napproval = \"auto\"\nrp_id = \"example.org\"\norigin = \"https://gw.example.org:8443\"\n"),
            Path::new("gw.toml"),
        )
        .unwrap();
        assert!(!c.devices.required);
        assert_eq!(c.devices.approval, Approval::Auto);
        assert_eq!(c.webauthn_origin_and_rp_id().unwrap().1, "example.org");
        let err = Config::parse(
            &format!("{base}[devices]\napproval = \"sometimes\"\norigin = \"http://x\"\nrp_id = \"a/b\"\n"),
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gw.toml: devices.approval"), "{err}");
        assert!(err.contains("gw.toml: devices.origin"), "{err}");
        assert!(err.contains("gw.toml: devices.rp_id"), "{err}");
        let err = Config::parse(
            &format!("{base}[devices]\nrequire = true\n"),
            Path::new("gw.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `require`"), "{err}");
    }
}
