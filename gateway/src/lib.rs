//! The Postern gateway.
//!
//! Layout:
//! * [`config`]: `gateway.toml`, resolved with every error reported at once.
//! * [`pki`]: the server CA (gateway TLS certificate) and connector CA (enrolment).
//! * [`state`]: the `StateStore` seam (enrolment tokens, connectors, revocations, devices)
//!   and its file implementation; [`clock`]: the `Clock` seam.
//! * [`tokens`]: session tokens (EdDSA JWT, `kid` rotation, revocation).
//! * [`oidc`]: sign-in as an OpenID Connect relying party (code flow + PKCE); `auth` has its
//!   routes and `pages` the browser pages; `httpc` is the HTTP client used to reach the IdP.
//! * `client_api`: the clinician-facing listener: enrolment, endpoint listing, `CONNECT` broker.
//! * `connectors`: the mutual-TLS connector listener and the registry of live connector links.
//! * `sessions`: live tunnels: relay, limits, continuous authorization, `session.end`.
//! * `rtt`: round-trip probes over connector links (`postern_connector_rtt_seconds`).
//! * `renew`: connector certificate renewal (a short extra mTLS connection, ALPN
//!   `postern-renew/1`, authenticated by the current certificate).
//! * `server_cert`: the client-facing certificate (self-issued, or from files reloaded on
//!   SIGHUP).
//! * `reload`: live policy reload (SIGHUP, file change) and re-evaluation of live sessions.
//! * [`metrics`]: Prometheus metrics; `status_http` serves them with health checks on the
//!   admin listener.
//! * `devices`: device trust — WebAuthn registration and assertion at the end of sign-in,
//!   posture bound into the challenge, the registered-device table.
//! * [`admin`]: the admin commands (`token create`, `connector list|revoke`, `session mint`).
//! * [`check`]: `postern-gateway check` (configuration, files, certificates, ports, IdP).
//!
//! Flow of a tunnel: the client's `CONNECT endpoint:0` arrives on the client listener (HTTP/2
//! over TLS 1.3); the broker verifies the session token, evaluates the policy, writes
//! `session.start` durably, picks a live link of a connector of the endpoint's site, sends
//! `CONNECT host:port` on that existing HTTP/2 connection, and on 200 splices the two streams
//! until one side closes, the rule's maximum duration or the token's expiry passes, or the
//! gateway shuts down; then it writes `session.end` with bytes and the reason.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
mod auth;
pub mod check;
mod client_api;
pub mod clock;
pub mod config;
mod connectors;
pub(crate) mod devices;
#[cfg(test)]
mod devices_flow_tests;
mod httpc;
mod limits;
pub mod metrics;
pub mod oidc;
mod pages;
pub mod pki;
mod recovery;
mod reload;
mod renew;
mod rtt;
mod server_cert;
mod sessions;
pub mod state;
mod status_http;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use postern_audit::{AuditLog, Event, EventType};
use postern_policy::Policy;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("policy: {0}")]
    Policy(#[from] postern_policy::PolicyError),
    #[error("audit log: {0}")]
    Audit(#[from] postern_audit::AuditError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] state::StoreError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    #[error(transparent)]
    Tls(#[from] postern_net::tls::TlsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The two bound listeners. Binding is the caller's job, so tests bind `127.0.0.1:0` and read
/// the addresses back before the gateway starts.
pub struct Listeners {
    pub clients: TcpListener,
    pub connectors: TcpListener,
    /// Metrics and health, if configured.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds both listeners from the configuration.
    pub async fn bind(config: &Config) -> Result<Listeners, GatewayError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Io {
                    what: format!("binding the {what} listener on {addr}"),
                    source,
                })
        };
        let admin = match config.listen_admin {
            Some(a) => Some(bind(a, "admin").await?),
            None => None,
        };
        Ok(Listeners {
            clients: bind(config.listen_clients, "client").await?,
            connectors: bind(config.listen_connectors, "connector").await?,
            admin,
        })
    }
}

/// Everything the listeners share.
pub(crate) struct Gateway {
    pub config: Config,
    pub policy: RwLock<Arc<Policy>>,
    pub keys: tokens::TokenKeys,
    pub store: state::SharedStore,
    /// The audit seam: the audit crate's log in production, `MemorySink` in tests.
    pub audit: Arc<dyn postern_audit::AuditSink>,
    pub connector_ca: Arc<pki::Ca>,
    /// The CA that issued the gateway's TLS certificate (sent to connectors at enrolment).
    pub server_ca_pem: String,
    pub client_tls: TlsAcceptor,
    /// What the client listener presents (swapped on SIGHUP when it comes from files).
    pub server_cert: Arc<server_cert::ServerCert>,
    pub connector_tls: TlsAcceptor,
    pub connector_addrs: Vec<String>,
    pub registry: connectors::Registry,
    pub sessions: sessions::Sessions,
    pub conn_limit: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Cancelled first at shutdown: listeners stop accepting, HTTP connections get GOAWAY.
    pub draining: CancellationToken,
    /// Per-connection tasks of both listeners, awaited at shutdown.
    pub conns: tokio_util::task::TaskTracker,
    pub oidc: Option<Arc<oidc::Oidc>>,
    pub limits: limits::Limits,
    /// Ids of session tokens revoked before expiry (sign-out).
    pub revoked: RwLock<std::collections::HashSet<String>>,
    pub metrics: metrics::Metrics,
    /// Device trust: WebAuthn ceremonies and the registered-device table.
    pub devices: devices::Devices,
}

impl Gateway {
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().map(|r| r.contains(jti)).unwrap_or(true)
    }

    pub fn revoke_jti(&self, jti: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(jti.to_owned());
        }
    }

    /// Replaces the revocation set and the device table from the store.
    pub async fn reload_state(&self) -> Result<(), state::StoreError> {
        let revocations = self.store.revocations().await?;
        let devices = self.store.devices().await?;
        let now = clock::unix_now();
        if let Ok(mut r) = self.revoked.write() {
            *r = revocations
                .tokens
                .iter()
                .filter(|t| t.exp > now)
                .map(|t| t.jti.clone())
                .collect();
        }
        self.devices.load(&devices, &revocations.users);
        Ok(())
    }

    pub fn note_ratelimited(&self, what: &str) {
        self.metrics.ratelimited.with_label_values(&[what]).inc();
        tracing::debug!(what, "rate limited");
    }

    pub fn event(&self, kind: EventType) -> Event {
        let mut ev = Event::new(kind);
        ev.gateway = Some(self.config.node_id.clone());
        ev
    }
}

/// Loads keys, CAs, policy and the audit log; fails before accepting anything if any is bad.
pub(crate) async fn init(
    config: Config,
    listeners: &Listeners,
) -> Result<Arc<Gateway>, GatewayError> {
    postern_net::fsutil::private_dir(&config.state_dir).map_err(|source| GatewayError::Io {
        what: format!("creating state directory {}", config.state_dir.display()),
        source,
    })?;
    let policy = Policy::from_file(&config.policy)?;
    let store = state::open(&config.state_dir)?;
    let keys = tokens::TokenKeys::load_or_create(&config.state_dir)?;
    let server_ca = pki::Ca::load_or_create(&config.state_dir, "server-ca", "Postern gateway CA")?;
    let connector_ca =
        pki::Ca::load_or_create(&config.state_dir, "connector-ca", "Postern connector CA")?;
    let (chain, key) =
        server_ca.issue_server(&config.server_names, Duration::from_secs(365 * 86400))?;
    use postern_proto::wire::{ALPN_CONNECTOR, ALPN_H2, ALPN_HTTP1, ALPN_RENEW};
    let own = postern_net::certs::certified_key(chain.clone(), key.clone_key()).map_err(|e| {
        GatewayError::Io {
            what: "the self-issued server certificate".into(),
            source: std::io::Error::other(e),
        }
    })?;
    let server_cert = Arc::new(
        server_cert::ServerCert::new(Arc::new(own), config.server_cert_files.clone()).map_err(
            |e| GatewayError::Io {
                what: "the client-facing certificate ([tls] cert_file, key_file)".into(),
                source: std::io::Error::other(e),
            },
        )?,
    );
    let client_tls =
        postern_net::tls::server_config_with_resolver(server_cert.clone(), &[ALPN_H2, ALPN_HTTP1])?;
    let connector_tls = postern_net::tls::server_config(
        chain,
        key,
        &[ALPN_CONNECTOR, ALPN_RENEW],
        Some(connector_ca.cert_der.clone()),
    )?;
    // Tamper evidence: a hash chain over every event, checkpoints signed with the gateway's
    // Ed25519 audit key (state dir, 0600; `postern-audit verify --pubkey` checks them).
    let audit_key = postern_audit::AuditKey::load_or_create(&config.state_dir)?;
    let audit = AuditLog::open_with(
        &config.audit_dir,
        postern_audit::AuditOptions {
            signing_key: Some(audit_key),
            node_id: Some(config.node_id.clone()),
            ..Default::default()
        },
    )
    .await?;
    let oidc = match &config.oidc {
        Some(o) => Some(Arc::new(
            oidc::Oidc::new(o.clone(), &config.state_dir).map_err(|message| GatewayError::Io {
                what: "sign-in (oidc)".into(),
                source: std::io::Error::other(message),
            })?,
        )),
        None => None,
    };
    let devices = devices::Devices::new(&config).map_err(|message| GatewayError::Io {
        what: "device trust ([devices])".into(),
        source: std::io::Error::other(message),
    })?;
    if config.oidc.is_some() && !config.devices.required {
        warn!("device trust is off ([devices] required = false): sign-in issues tokens that are not bound to a device");
    }
    if let Some(o) = config.oidc.as_ref().filter(|o| o.insecure_http_issuer) {
        warn!(issuer = %o.issuer, "sign-in uses a plain-http identity provider on loopback: for tests and the demo only (postern-gateway check reports this)");
    }
    let connector_addrs = if config.advertise_connector_addrs.is_empty() {
        let a = listeners
            .connectors
            .local_addr()
            .map_err(|source| GatewayError::Io {
                what: "reading the connector listener address".into(),
                source,
            })?;
        vec![a.to_string()]
    } else {
        config.advertise_connector_addrs.clone()
    };
    let gw = Arc::new(Gateway {
        conn_limit: Arc::new(Semaphore::new(config.max_connections)),
        policy: RwLock::new(Arc::new(policy)),
        keys,
        store,
        audit: Arc::new(audit),
        connector_ca: Arc::new(connector_ca),
        server_ca_pem: server_ca.cert_pem.clone(),
        client_tls: TlsAcceptor::from(Arc::new(client_tls)),
        server_cert,
        connector_tls: TlsAcceptor::from(Arc::new(connector_tls)),
        connector_addrs,
        registry: connectors::Registry::default(),
        sessions: sessions::Sessions::default(),
        shutdown: CancellationToken::new(),
        draining: CancellationToken::new(),
        conns: tokio_util::task::TaskTracker::new(),
        oidc,
        limits: limits::Limits::new(&config.rate_limits),
        revoked: RwLock::new(Default::default()),
        metrics: metrics::Metrics::new().map_err(|e| GatewayError::Io {
            what: "setting up metrics".into(),
            source: std::io::Error::other(e.to_string()),
        })?,
        devices,
        config,
    });
    gw.reload_state().await?;
    Ok(gw)
}

/// The next connection on `listener`, or None once `stop` is cancelled. Accept errors (out of
/// file descriptors and the like) back off instead of spinning; the caller spawns a task per
/// connection, so the accept loop itself never waits on a peer.
pub(crate) async fn next_conn(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Periodic upkeep: forget idle rate-limiter entries.
async fn housekeeping(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        gw.limits.shrink();
    }
}

/// Writes `session.end` (reason `gateway_lost`) for the sessions a previous process of this
/// gateway started and never ended because it was killed or crashed (see `recovery`). Failing
/// to read the log back is only a warning; failing to write the ends stops the start.
async fn end_lost_sessions(gw: &Gateway) -> Result<(), GatewayError> {
    let dir = gw.config.audit_dir.clone();
    let open = match tokio::task::spawn_blocking(move || recovery::open_sessions(&dir)).await {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            warn!(error = %e, "could not read the audit log back for sessions left open");
            return Ok(());
        }
        Err(e) => {
            warn!(error = %e, "reading the audit log back failed");
            return Ok(());
        }
    };
    if open.is_empty() {
        return Ok(());
    }
    warn!(
        sessions = open.len(),
        "the previous gateway process stopped without ending these sessions: recording their end (reason gateway_lost)"
    );
    // In batches well under the writer's queue, each committed with one flush.
    for chunk in open.chunks(4096) {
        for start in chunk {
            gw.audit
                .record_nowait(recovery::lost_end(start, &gw.config.node_id));
        }
        gw.audit.flush().await?;
    }
    Ok(())
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: stop accepting, let live sessions finish for up to `limits.shutdown_grace`,
    /// then end the rest (reason `shutdown`).
    Drain,
    /// SIGINT: end live sessions now (reason `shutdown`).
    Now,
}

/// Runs the gateway until `shutdown` completes, then stops as it says, ends live sessions
/// (`session.end` reason `shutdown`), flushes the audit log and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = Stop>,
) -> Result<(), GatewayError> {
    let gw = init(config, &listeners).await?;
    let policy = gw.policy();
    info!(
        clients = %listeners.clients.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        connectors = %listeners.connectors.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        policy_version = policy.version(),
        endpoints = policy.endpoints().len(),
        "gateway started"
    );
    gw.metrics.set_policy_version(policy.version());
    end_lost_sessions(&gw).await?;
    gw.metrics.server_cert_expiry.set(gw.server_cert.expiry());
    let mut started = gw.event(EventType::GatewayStarted);
    started.detail = Some(format!("policy {}", policy.version()));
    gw.audit.record(started).await?;

    let tasks = [
        tokio::spawn(client_api::accept_loop(gw.clone(), listeners.clients)),
        tokio::spawn(connectors::accept_loop(gw.clone(), listeners.connectors)),
        tokio::spawn(connectors::watch_revocations(gw.clone())),
        tokio::spawn(reload::watch_file(gw.clone())),
        tokio::spawn(reload::on_sighup(gw.clone())),
        tokio::spawn(housekeeping(gw.clone())),
    ];
    let admin_task = listeners
        .admin
        .map(|l| tokio::spawn(status_http::serve(gw.clone(), l)));
    let discovery = gw
        .oidc
        .clone()
        .map(|o| tokio::spawn(o.keep_discovering(gw.shutdown.clone())));
    let stop = shutdown.await;
    gw.draining.cancel();
    if stop == Stop::Drain {
        connectors::announce_drain(&gw);
    }
    if stop == Stop::Drain && gw.sessions.len() > 0 {
        info!(
            sessions = gw.sessions.len(),
            grace = ?gw.config.shutdown_grace,
            "draining: no new connections; live sessions may finish"
        );
        gw.sessions.wait_empty(gw.config.shutdown_grace).await;
    }
    info!(
        sessions = gw.sessions.len(),
        "shutting down: ending live sessions"
    );
    gw.sessions.kill_all("shutdown");
    gw.sessions.wait_empty(Duration::from_secs(5)).await;
    gw.shutdown.cancel();
    // Connection tasks write their last events (connector.disconnected) before the log closes.
    gw.conns.close();
    if tokio::time::timeout(Duration::from_secs(3), gw.conns.wait())
        .await
        .is_err()
    {
        warn!(
            open = gw.conns.len(),
            "connections still closing at shutdown"
        );
    }
    for t in tasks.into_iter().chain(discovery).chain(admin_task) {
        t.abort();
    }
    gw.audit.record_nowait(gw.event(EventType::GatewayStopped));
    if let Err(e) = gw.audit.close().await {
        warn!(error = %e, "flushing the audit log at shutdown failed");
    }
    Ok(())
}
