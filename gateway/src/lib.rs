//! The Postern gateway.
//!
//! Module map, top down (a module uses only modules below it; see docs/architecture.md):
//! * this file: [`run`] (configured) and [`serve`] (an application already built);
//! * `listeners`: accept, TLS handshake under a timeout, route — `client`, `connector`,
//!   `admin`;
//! * [`ops`]: admin commands and `check`;
//! * [`app`]: [`app::App`], the application assembled from narrow services;
//! * `access`: `authorize(&Subject, endpoint, &Policy, clock) -> Permit | Denied`, the broker
//!   pipeline, live sessions with continuous authorization, endpoint handlers, policy reload,
//!   revocation enforcement, crash recovery;
//! * `connectors`: the `Upstream` seam and its implementation (live connector links),
//!   enrolment, renewal, the RTT probe;
//! * [`authn`]: `Subject`, session tokens, OIDC sign-in, device trust;
//! * [`replica`]: this gateway among the replicas sharing the store (registration,
//!   heartbeat, published token keys);
//! * [`state`]: the `StateStore` seam, SQLite and PostgreSQL;
//! * [`pki`]: the server and connector CAs; the client-facing certificate;
//! * `http`, `stream`, [`audit`], [`metrics`], `limits`, [`config`], [`clock`], [`error`]:
//!   helpers and leaf services.
//!
//! Flow of a tunnel (`access::broker`): the client's `CONNECT endpoint:0` arrives on the
//! client listener; the target is parsed, the token becomes a `Subject`, rate limits apply,
//! the policy authorizes it to a `Permit`, `session.start` is written durably, the `Upstream`
//! opens a stream to the endpoint through a connector link, and the endpoint's handler serves
//! both streams under the session's supervision until one side closes, a deadline passes or
//! access is withdrawn; then `session.end` records bytes and the reason.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod app;
pub mod audit;
pub mod authn;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod limits;
mod listeners;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod replica;
pub mod state;
pub mod stream;
pub mod web;

/// Session tokens, under their historical path.
pub use authn::tokens;
pub use config::Config;
pub use error::GatewayError;
pub use listeners::Listeners;
/// Admin commands, under their historical path.
pub use ops::admin;
/// `postern-gateway check`, under its historical path.
pub use ops::check;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use postern_audit::EventType;
use tracing::{info, warn};

use app::App;

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
    let connector_addr = listeners
        .connectors
        .local_addr()
        .map_err(|e| GatewayError::other("reading the connector listener address", e))?;
    let app = App::open(config, connector_addr).await?;
    serve(app, listeners, shutdown).await
}

/// Serves an application already built (tests build one with their own clock, store and
/// audit sink) until `shutdown`; see [`run`].
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    shutdown: impl Future<Output = Stop>,
) -> Result<(), GatewayError> {
    let policy = app.policy();
    info!(
        clients = %listeners.clients.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        connectors = %listeners.connectors.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        policy_version = policy.version(),
        endpoints = policy.endpoints().len(),
        "gateway started"
    );
    app.metrics.set_policy_version(policy.version());
    let client_addr = listeners
        .clients
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let connector_addrs = if app.config.advertise_connector_addrs.is_empty() {
        listeners
            .connectors
            .local_addr()
            .map(|a| vec![a.to_string()])
            .unwrap_or_default()
    } else {
        app.config.advertise_connector_addrs.clone()
    };
    let replica = Arc::new(
        replica::Replica::join(
            app.store.clone(),
            &app.config,
            client_addr,
            connector_addrs,
            app.clock.unix(),
        )
        .await?,
    );
    access::recovery::end_lost_sessions(
        &app.config.audit_dir,
        &app.audit,
        &app.config.node_id,
        app.clock.now(),
    )
    .await?;
    app.metrics
        .server_cert_expiry
        .set(app.tls.server_cert.expiry());
    let mut started = app.audit.event(EventType::GatewayStarted);
    started.detail = Some(format!("policy {}", policy.version()));
    app.audit.record(started).await?;

    let revocations = access::revocations::Revocations {
        store: app.store.clone(),
        authn: app.authn.clone(),
        access: app.access.clone(),
        registry: app.registry.clone(),
    };
    let tasks = [
        tokio::spawn(listeners::client::accept_loop(
            app.clone(),
            listeners.clients,
        )),
        tokio::spawn(listeners::connector::accept_loop(
            app.clone(),
            listeners.connectors,
        )),
        tokio::spawn(revocations.watch(app.life.shutdown.clone())),
        tokio::spawn(access::policy_watch::watch_file(
            app.access.clone(),
            app.config.policy.clone(),
            app.life.shutdown.clone(),
        )),
        tokio::spawn(on_sighup(app.clone())),
        tokio::spawn(housekeeping(app.clone())),
        tokio::spawn(summarize_refusals(app.clone())),
        tokio::spawn(
            app.broker
                .store_watch
                .clone()
                .run(app.life.shutdown.clone()),
        ),
        tokio::spawn(replica::follow_set(
            app.store.clone(),
            app.clock.clone(),
            app.links.replica_set.clone(),
            app.life.shutdown.clone(),
        )),
    ];
    let admin_task = listeners
        .admin
        .map(|l| tokio::spawn(listeners::admin::serve(app.clone(), l)));
    let quic_task = match listeners.quic {
        Some(socket) => {
            let endpoint =
                listeners::quic::endpoint(socket, app.tls.quic.clone(), &app.config.state_dir)?;
            Some(tokio::spawn(listeners::quic::accept_loop(
                app.clone(),
                endpoint,
            )))
        }
        None => None,
    };
    let link_quic_task = match listeners.connector_quic {
        Some(socket) => {
            let endpoint = listeners::link_quic::endpoint(&app, socket)?;
            Some(tokio::spawn(listeners::link_quic::accept_loop(
                app.clone(),
                endpoint,
            )))
        }
        None => None,
    };
    let discovery = app
        .authn
        .oidc
        .clone()
        .map(|o| tokio::spawn(o.keep_discovering(app.life.shutdown.clone())));
    let heartbeat = tokio::spawn(
        replica
            .clone()
            .run(app.clock.clone(), app.life.shutdown.clone()),
    );
    let stop = shutdown.await;
    // Out of the replica set first: the other replicas tell the connectors at once, which
    // stop dialling this one (their links here stay for the sessions that drain).
    heartbeat.abort();
    let _ = heartbeat.await;
    replica.leave().await;
    drain(&app, stop).await;
    for t in tasks
        .into_iter()
        .chain(discovery)
        .chain(admin_task)
        .chain(quic_task)
        .chain(link_quic_task)
    {
        t.abort();
    }
    // What the refusal aggregator still counts goes in before the log closes.
    app.broker.refusals.flush();
    app.audit
        .record_nowait(app.audit.event(EventType::GatewayStopped));
    if let Err(e) = app.audit.close().await {
        warn!(error = %e, "flushing the audit log at shutdown failed");
    }
    Ok(())
}

/// Stops accepting, lets live sessions finish (drain) or ends them (now), then waits for the
/// connection tasks to write their last events.
async fn drain(app: &App, stop: Stop) {
    app.life.draining.cancel();
    let sessions = &app.access.sessions;
    if stop == Stop::Drain {
        connectors::announce_drain(&app.registry);
    }
    if stop == Stop::Drain && !sessions.is_empty() {
        info!(
            sessions = sessions.len(),
            grace = ?app.config.shutdown_grace,
            "draining: no new connections; live sessions may finish"
        );
        sessions.wait_empty(app.config.shutdown_grace).await;
    }
    info!(
        sessions = sessions.len(),
        "shutting down: ending live sessions"
    );
    sessions.kill_all("shutdown");
    sessions.wait_empty(Duration::from_secs(5)).await;
    app.life.shutdown.cancel();
    // Connection tasks write their last events (connector.disconnected) before the log closes.
    app.life.conns.close();
    if tokio::time::timeout(Duration::from_secs(3), app.life.conns.wait())
        .await
        .is_err()
    {
        warn!(
            open = app.life.conns.len(),
            "connections still closing at shutdown"
        );
    }
}

/// SIGHUP reloads the policy and the client-facing certificate files.
async fn on_sighup(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; reload by editing the policy file");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = app.life.shutdown.cancelled() => return,
        }
        access::policy_watch::reload(&app.access, &app.config.policy, "SIGHUP").await;
        let now = app.clock.now();
        pki::server_cert::reload(
            &app.tls.server_cert,
            &app.metrics,
            &app.audit,
            now,
            "SIGHUP",
        )
        .await;
    }
}

/// Every `refusal_summary_interval`: the refusals of unauthenticated requests counted since
/// the last time, one event per source address and reason.
async fn summarize_refusals(app: Arc<App>) {
    let every = app.config.refusal_summary_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        app.broker.refusals.flush();
    }
}

/// Periodic upkeep: forget idle rate-limiter entries.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        app.limits.shrink();
    }
}
