//! The running connector: a set of tasks behind one [`AgentHandle`].
//!
//! [`spawn`] loads the identity, binds the admin listener (if configured) and starts, each as
//! its own task, `connections_per_gateway` link loops per gateway address ([`crate::link`]),
//! the certificate renewal ([`crate::renew`]) and the admin listener ([`crate::admin_http`]).
//! It returns at once with the handle, which owns those tasks:
//!
//! * dropping the handle stops everything now: no more dials, links and open tunnels closed,
//!   renewal and admin listener ended;
//! * [`AgentHandle::shutdown`] stops dialling, lets open tunnels finish for up to
//!   `shutdown_grace`, then does the same.
//!
//! [`run`] is the two together, for `postern-connector run`: spawn, wait for the shutdown
//! signal, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::identity::{load_identity, ClientTls, IdentityError};
use crate::link::{link_loop, Shared};
use crate::metrics::Metrics;
use crate::renew::{keep_renewed, Renewal};

/// Why the connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("no gateway address: list `gateways` in the configuration or enrol again")]
    NoGateway,
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up metrics: {0}")]
    Metrics(String),
}

/// A running connector. Dropping it stops the connector (see the module comment).
#[must_use = "dropping the handle stops the connector at once"]
pub struct AgentHandle {
    shared: Arc<Shared>,
    /// Link loops, renewal and admin listener: aborted when the handle goes.
    tasks: JoinSet<()>,
    shutdown_grace: std::time::Duration,
    admin_addr: Option<SocketAddr>,
}

/// Starts the connector described by `config` and returns its handle.
pub async fn spawn(config: Config) -> Result<AgentHandle, LinkError> {
    let (enrollment, tls) = load_identity(&config.state_dir)?;
    let gateways = if config.gateways.is_empty() {
        enrollment.connector_addrs.clone()
    } else {
        config.gateways.clone()
    };
    if gateways.is_empty() {
        return Err(LinkError::NoGateway);
    }
    if config.allowlist.entries.is_empty() {
        warn!("the allowlist is empty: every tunnel will be refused");
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| LinkError::Metrics(e.to_string()))?);
    let admin = match config.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| LinkError::Admin { addr, source })?,
        ),
        None => None,
    };
    let tls = Arc::new(ClientTls::new(tls));
    let shared = Arc::new(Shared {
        tls: tls.clone(),
        metrics: metrics.clone(),
        allowlist: config.allowlist.clone(),
        dial_timeout: config.dial_timeout,
        reconnect_max: config.reconnect_max,
        stop: CancellationToken::new(),
        kill: CancellationToken::new(),
        relays: TaskTracker::new(),
        connector_id: enrollment.connector_id.clone(),
    });
    info!(connector_id = %enrollment.connector_id, site = %enrollment.site, gateways = ?gateways, "connector starting");
    let mut tasks = JoinSet::new();
    let mut admin_addr = None;
    if let Some(l) = admin {
        if let Ok(a) = l.local_addr() {
            info!(admin = %a, "admin listener (metrics, health) up");
            admin_addr = Some(a);
        }
        tasks.spawn(crate::admin_http::serve(
            metrics.clone(),
            l,
            shared.stop.clone(),
        ));
    }
    let renewal = Renewal {
        state_dir: config.state_dir.clone(),
        gateways: gateways.clone(),
        connector_id: enrollment.connector_id.clone(),
        tls,
        metrics,
    };
    tasks.spawn(keep_renewed(renewal, shared.stop.clone()));
    for gw in &gateways {
        for n in 0..config.connections_per_gateway {
            tasks.spawn(link_loop(shared.clone(), gw.clone(), n));
        }
    }
    Ok(AgentHandle {
        shared,
        tasks,
        shutdown_grace: config.shutdown_grace,
        admin_addr,
    })
}

impl AgentHandle {
    /// The address the admin listener (metrics, health) is bound to, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The connector's metrics (the ones the admin listener serves).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Stops dialling and closes the links gracefully, lets open tunnels finish for up to
    /// `shutdown_grace`, then stops everything (as dropping the handle does).
    pub async fn shutdown(self) {
        let relays = &self.shared.relays;
        info!(grace = ?self.shutdown_grace, open_tunnels = relays.len(), "shutting down");
        self.shared.stop.cancel();
        relays.close();
        if tokio::time::timeout(self.shutdown_grace, relays.wait())
            .await
            .is_err()
        {
            warn!(
                open_tunnels = relays.len(),
                "grace period over; closing open tunnels"
            );
        }
        // Dropping `self` closes what is left.
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.kill.cancel();
        // Dropping the JoinSet would abort them too; said here so the order is plain.
        self.tasks.abort_all();
    }
}

/// Runs the connector until `shutdown` completes, then stops dialling, lets open tunnels finish
/// for up to `shutdown_grace` and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
    let agent = spawn(config).await?;
    shutdown.await;
    agent.shutdown().await;
    Ok(())
}

