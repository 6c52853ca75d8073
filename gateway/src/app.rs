//! The application, assembled from narrow services. [`App::build`] loads keys, CAs, the policy
//! and the device table and wires each service to exactly what it uses; it fails before
//! anything is accepted if one is bad. [`App::open`] does that with the configured store, the
//! system clock and the durable audit log; tests pass their own clock, store and audit sink.
//!
//! | service | what it is |
//! | --- | --- |
//! | `clock` | the [`Clock`](crate::clock::Clock): all time comes from here |
//! | `store` | the [`StateStore`](crate::state::StateStore) |
//! | `audit` | [`Audit`]: an `AuditSink` plus this node's id |
//! | `authn` | [`Authn`]: token verification, revocations, the device table |
//! | `access` | [`Access`]: the policy, live sessions, endpoint handlers |
//! | `broker` | [`Broker`]: the tunnel pipeline and endpoint listing |
//! | `signin`, `devices` | [`SignIn`], [`DeviceTrust`]: the sign-in routes |
//! | `registry` | [`Registry`]: live connector links, the [`Upstream`] |
//! | `links`, `enrolment` | [`Links`], [`Enrolment`]: connector connections and enrolment |
//! | `tls`, `life` | the listeners' TLS; shutdown signals, connection tasks and limit |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_audit::{AuditLog, AuditSink};
use postern_policy::Policy;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::access::broker::Broker;
use crate::access::Access;
use crate::audit::Audit;
use crate::authn::devices::{Ceremonies, DeviceTrust};
use crate::authn::oidc::Oidc;
use crate::authn::{Authn, Issuer, SignIn};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connectors::{Enrolment, Links, Registry, Renewals, Upstream};
use crate::error::GatewayError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pki::{server_cert::ServerCert, Ca};
use crate::state::SharedStore;

/// The listeners' TLS.
pub struct Tls {
    pub client: TlsAcceptor,
    /// What the client listener presents (swapped on SIGHUP when it comes from files).
    pub server_cert: Arc<ServerCert>,
    pub connector: TlsAcceptor,
    /// The QUIC listener's TLS (the client listener's certificate, ALPN `postern-quic/1`).
    pub quic: Arc<rustls::ServerConfig>,
    /// The connector listener's QUIC TLS (mutual, ALPN `postern-link/1`).
    pub connector_quic: Arc<rustls::ServerConfig>,
}

/// Shutdown and connection bookkeeping shared by the listeners.
pub struct Lifecycle {
    /// Cancelled last: background tasks and connector links stop.
    pub shutdown: CancellationToken,
    /// Cancelled first at shutdown: listeners stop accepting, HTTP connections get GOAWAY.
    pub draining: CancellationToken,
    /// Per-connection tasks of every listener, awaited at shutdown.
    pub conns: tokio_util::task::TaskTracker,
    /// Open connections on the client listener (`max_client_connections`).
    pub client_conns: Arc<Semaphore>,
    /// Open connections on the connector listener (`max_connector_connections`): a pool of
    /// its own, so clients at their cap never keep a connector out.
    pub connector_conns: Arc<Semaphore>,
    /// Client connections per source address (`max_connections_per_address`).
    pub per_address: Arc<crate::limits::AddressCap>,
}

/// The seams an application is built on: [`App::open`] passes the configured ones, tests
/// pass a test clock, an in-memory store and audit sink, and their own upstream.
pub struct Seams {
    pub clock: SharedClock,
    pub store: SharedStore,
    pub audit: Arc<dyn AuditSink>,
    /// How endpoints are reached; `None`: through connector links (the registry).
    pub upstream: Option<Arc<dyn Upstream>>,
}

/// The application.
pub struct App {
    pub config: Config,
    pub clock: SharedClock,
    pub store: SharedStore,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub authn: Arc<Authn>,
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
    pub broker: Arc<Broker>,
    pub signin: Arc<SignIn>,
    pub devices: Arc<DeviceTrust>,
    pub enrolment: Arc<Enrolment>,
    pub links: Arc<Links>,
    pub tls: Tls,
    pub life: Lifecycle,
    /// The web application proxy (`[web]`), if configured.
    pub web: Option<Arc<crate::web::Web>>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> GatewayError {
    GatewayError::other(what, e)
}

/// The certificates and acceptors of both listeners.
fn tls(
    config: &Config,
    server_ca: &Ca,
    connector_ca: &Ca,
    now: SystemTime,
) -> Result<Tls, GatewayError> {
    let year = Duration::from_secs(365 * 86400);
    // Web applications are served at NAME.<apps_domain>: the self-issued certificate covers
    // them with a wildcard name.
    let mut names = config.server_names.clone();
    if let Some(w) = &config.web {
        names.push(format!("*.{}", w.apps_domain));
    }
    let (chain, key) = server_ca.issue_server(&names, year, now)?;
    use postern_proto::wire::{ALPN_CONNECTOR, ALPN_H2, ALPN_HTTP1, ALPN_RENEW};
    let own = postern_net::certs::certified_key(chain.clone(), key.clone_key())
        .map_err(|e| io_err("the self-issued server certificate", e))?;
    let mut server_cert = ServerCert::new(Arc::new(own), config.server_cert_files.clone(), now)
        .map_err(|e| {
            io_err(
                "the client-facing certificate ([tls] cert_file, key_file)",
                e,
            )
        })?;
    if let Some((w, files)) = config
        .web
        .as_ref()
        .and_then(|w| Some((w, w.cert_files.clone()?)))
    {
        server_cert = server_cert
            .with_web(&w.apps_domain, files, now)
            .map_err(|e| {
                io_err(
                    "the web applications' certificate ([web] cert_file, key_file)",
                    e,
                )
            })?;
    }
    let server_cert = Arc::new(server_cert);
    let client =
        postern_net::tls::server_config_with_resolver(server_cert.clone(), &[ALPN_H2, ALPN_HTTP1])?;
    let quic = postern_net::tls::server_config_with_resolver(
        server_cert.clone(),
        &[postern_proto::wire::ALPN_QUIC],
    )?;
    let connector = postern_net::tls::server_config(
        chain.clone(),
        key.clone_key(),
        &[ALPN_CONNECTOR, ALPN_RENEW],
        Some(connector_ca.cert_der.clone()),
    )?;
    let connector_quic = postern_net::tls::server_config(
        chain,
        key,
        &[postern_proto::wire::ALPN_LINK_QUIC],
        Some(connector_ca.cert_der.clone()),
    )?;
    Ok(Tls {
        client: TlsAcceptor::from(Arc::new(client)),
        server_cert,
        connector: TlsAcceptor::from(Arc::new(connector)),
        quic: Arc::new(quic),
        connector_quic: Arc::new(connector_quic),
    })
}

/// The web application proxy for `[web]`.
#[allow(clippy::too_many_arguments)]
fn web_proxy(
    config: &Config,
    w: &crate::config::WebConfig,
    authn: &Arc<Authn>,
    broker: &Arc<Broker>,
    access: &Arc<Access>,
    signin: &Arc<SignIn>,
    limits: &Arc<Limits>,
    clock: &SharedClock,
) -> Result<crate::web::Web, GatewayError> {
    let Some(main_origin) = config.public_origin() else {
        return Err(io_err(
            "[web]",
            "web applications need sign-in: set [oidc] (its redirect_url names the gateway's own address)",
        ));
    };
    let port_suffix = main_origin
        .rsplit_once(':')
        .filter(|(scheme_host, port)| scheme_host.contains("//") && *port != "443")
        .map(|(_, port)| format!(":{port}"))
        .unwrap_or_default();
    let roots = match &w.upstream_ca_file {
        Some(f) => {
            let pem = std::fs::read_to_string(f)
                .map_err(|e| io_err(&format!("web.upstream_ca_file {}", f.display()), e))?;
            Some(
                postern_net::tls::certs_from_pem(&pem, &f.display().to_string())
                    .map_err(|e| io_err("web.upstream_ca_file", e))?,
            )
        }
        None => None,
    };
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let tls_verify = postern_net::tls::upstream_client_config(roots, true, alpn)
        .map_err(|e| io_err("web: upstream TLS", e))?;
    let tls_noverify = postern_net::tls::upstream_client_config(None, false, alpn)
        .map_err(|e| io_err("web: upstream TLS", e))?;
    Ok(crate::web::Web {
        config: w.clone(),
        main_origin,
        port_suffix,
        authn: authn.clone(),
        broker: broker.clone(),
        access: access.clone(),
        upstream: broker.upstream.clone(),
        signin: signin.clone(),
        limits: limits.clone(),
        clock: clock.clone(),
        sessions: Arc::new(crate::web::AppSessions::default()),
        tls_verify: Arc::new(tls_verify),
        tls_noverify: Arc::new(tls_noverify),
    })
}

impl App {
    /// The running policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.access.policy()
    }

    /// Builds the application on the given seams. `connector_addr` is
    /// the connector listener's address, advertised to enrolling connectors unless the
    /// configuration names others.
    // Over 100 lines on purpose: this is the one place that wires every service to exactly
    // what it uses; each block builds one service, in dependency order.
    pub async fn build(
        config: Config,
        connector_addr: SocketAddr,
        seams: Seams,
    ) -> Result<Arc<App>, GatewayError> {
        let Seams {
            clock,
            store,
            audit: sink,
            upstream,
        } = seams;
        let policy = Policy::from_file(&config.policy)?;
        let keys = crate::replica::token_keys(&config, &store, clock.unix()).await?;
        let now = clock.now();
        let server_ca =
            Ca::load_or_create(&config.state_dir, "server-ca", "Postern gateway CA", now)?;
        let connector_ca = Arc::new(Ca::load_or_create(
            &config.state_dir,
            "connector-ca",
            "Postern connector CA",
            now,
        )?);
        let tls = tls(&config, &server_ca, &connector_ca, now)?;
        // Sign-in goes on from this replica's own state while the database is away, for up to
        // max_staleness (state::fallback).
        let signin_store: SharedStore = Arc::new(crate::state::fallback::SignInStore::new(
            store.clone(),
            config.store.max_staleness,
        ));
        let oidc = match &config.oidc {
            Some(o) => Some(Arc::new(
                Oidc::new(
                    o.clone(),
                    &config.state_dir,
                    signin_store.clone(),
                    clock.clone(),
                )
                .map_err(|e| io_err("sign-in (oidc)", e))?,
            )),
            None => None,
        };
        // The CAs and the cookie key exist by now: with replicas, they must be everyone's.
        crate::replica::same_shared_files(&config, &store).await?;
        let ceremonies = Arc::new(
            Ceremonies::new(&config, signin_store.clone(), clock.clone())
                .map_err(|e| io_err("device trust ([devices])", e))?,
        );
        if config.oidc.is_some() && !config.devices.required {
            warn!("device trust is off ([devices] required = false): sign-in issues tokens that are not bound to a device");
        }
        if let Some(o) = config.oidc.as_ref().filter(|o| o.insecure_http_issuer) {
            warn!(issuer = %o.issuer, "sign-in uses a plain-http identity provider on loopback: for tests and the demo only (postern-gateway check reports this)");
        }
        let audit = Arc::new(Audit::new(sink, config.node_id.clone()));
        let metrics = Arc::new(Metrics::new().map_err(|e| io_err("setting up metrics", e))?);
        let limits = Arc::new(Limits::new(&config.rate_limits));
        let authn = Arc::new(Authn::new(keys, oidc, clock.clone()));
        authn.reload(&*store).await?;
        let access = Arc::new(Access::new(
            policy,
            clock.clone(),
            audit.clone(),
            metrics.clone(),
        ));
        if let Some(o) = &authn.oidc {
            let access = access.clone();
            o.follow_max_age(Box::new(move || access.policy().sign_in_max_age()));
        }
        let registry = Arc::new(Registry::default());
        let life = Lifecycle {
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            conns: tokio_util::task::TaskTracker::new(),
            client_conns: Arc::new(Semaphore::new(config.connections.max_client)),
            connector_conns: Arc::new(Semaphore::new(config.connections.max_connector)),
            per_address: crate::limits::AddressCap::new(config.connections.per_address),
        };
        let issuer = Arc::new(Issuer {
            authn: authn.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            max_ttl: config.session_token_max_ttl,
        });
        let signin = Arc::new(SignIn {
            authn: authn.clone(),
            issuer: issuer.clone(),
            ceremonies: ceremonies.clone(),
            store: signin_store.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
            clock: clock.clone(),
            sessions: access.sessions.clone(),
            browser_tickets: config.web.is_some(),
        });
        let devices = Arc::new(DeviceTrust {
            authn: authn.clone(),
            issuer,
            ceremonies,
            store: signin_store,
            audit: audit.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
            approval: config.devices.approval,
            clock: clock.clone(),
        });
        let broker = Arc::new(Broker {
            authn: authn.clone(),
            access: access.clone(),
            upstream: upstream.unwrap_or_else(|| registry.clone()),
            limits: limits.clone(),
            refusals: Arc::new(crate::access::refusals::Refusals::new(
                audit.clone(),
                metrics.clone(),
            )),
            dial_timeout: config.connector_dial_timeout,
            store_watch: Arc::new(crate::access::store_watch::StoreWatch::new(
                store.clone(),
                config.store.max_staleness,
                audit.clone(),
                metrics.clone(),
            )),
        });
        let replica_set = Arc::new(tokio::sync::watch::channel(Vec::new()).0);
        let enrolment = Arc::new(Enrolment {
            store: store.clone(),
            ca: connector_ca.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            limits: limits.clone(),
            clock: clock.clone(),
            validity: config.connector_cert_validity,
            server_ca_pem: server_ca.cert_pem.clone(),
            connector_addrs: if config.advertise_connector_addrs.is_empty() {
                vec![connector_addr.to_string()]
            } else {
                config.advertise_connector_addrs.clone()
            },
            replica_set: replica_set.clone(),
        });
        let links = Arc::new(Links {
            registry: registry.clone(),
            store: store.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            renewals: Arc::new(Renewals {
                store: store.clone(),
                ca: connector_ca,
                audit: audit.clone(),
                clock: clock.clone(),
                validity: config.connector_cert_validity,
            }),
            handshake_timeout: config.handshake_timeout,
            shutdown: life.shutdown.clone(),
            clock: clock.clone(),
            revoked_told: Default::default(),
            replica_set,
        });
        let web = match &config.web {
            Some(w) => Some(Arc::new(web_proxy(
                &config, w, &authn, &broker, &access, &signin, &limits, &clock,
            )?)),
            None => None,
        };
        Ok(Arc::new(App {
            web,
            config,
            clock,
            store,
            audit,
            metrics,
            limits,
            authn,
            access,
            registry,
            broker,
            signin,
            devices,
            enrolment,
            links,
            tls,
            life,
        }))
    }

    /// Builds the application with the configured store, the system clock and the audit log
    /// in `audit_dir` (checkpoints signed with the gateway's audit key).
    pub async fn open(
        config: Config,
        connector_addr: SocketAddr,
    ) -> Result<Arc<App>, GatewayError> {
        postern_net::fsutil::private_dir(&config.state_dir).map_err(|source| GatewayError::Io {
            what: format!("creating state directory {}", config.state_dir.display()),
            source,
        })?;
        let opened = crate::state::open(&config.store, &config.state_dir).await?;
        // Tamper evidence: a hash chain over every event, checkpoints signed with the gateway's
        // Ed25519 audit key (state dir, 0600; `postern-audit verify --pubkey` checks them).
        let audit_key = postern_audit::AuditKey::load_or_create(&config.state_dir)?;
        let log = AuditLog::open_with(
            &config.audit_dir,
            postern_audit::AuditOptions {
                signing_key: Some(audit_key),
                node_id: Some(config.node_id.clone()),
                // A log cut short of its audit.head refuses to open (and the gateway to start)
                // unless the operator said to accept the loss, which is then recorded.
                accept_truncation: config.accept_truncated_audit,
                // `[syslog]`: live forwarding; the local log stays the source of truth.
                syslog: config.syslog.as_ref().map(|s| s.options()).transpose()?,
                ..Default::default()
            },
        )
        .await?;
        if let Some(m) = &opened.migrated {
            let mut ev = crate::ops::admin::migration_event(m);
            ev.gateway = Some(config.node_id.clone());
            log.record(ev).await?;
        }
        let seams = Seams {
            clock: crate::clock::system(),
            store: opened.store,
            audit: Arc::new(log),
            upstream: None,
        };
        App::build(config, connector_addr, seams).await
    }
}
