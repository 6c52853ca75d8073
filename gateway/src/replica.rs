//! This gateway as one replica among those sharing the state store.
//!
//! * **Registration**: at start the replica records itself in the store (id = `node_id`,
//!   the instance id of its state directory, client and connector addresses, version) and
//!   then beats every
//!   [`HEARTBEAT`]; a replica whose last beat is older than [`LIVE_FOR`] counts as gone. A
//!   second process starting with the `node_id` of a live replica is refused. A clean stop
//!   removes the record. `postern-gateway replicas` lists them.
//! * **Session-token keys**: each replica signs with its own key (kept in `STATE_DIR/jwt`,
//!   never shared) and publishes the public half in the store; every replica verifies with
//!   every published key (reloaded on each change), so a token minted on one replica works on
//!   all. A key replaced by a newer one (`session rotate-key`) keeps verifying for the longest
//!   token lifetime, then is forgotten. With PostgreSQL the deployment id (the tokens' `iss`
//!   and `aud`) is the store's, adopted by every replica.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::authn::tokens::TokenKeys;
use crate::config::Config;
use crate::error::GatewayError;
use crate::state::{PublishedKey, ReplicaRec, SharedStore};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica silent for this long is gone (its id may be taken by a new process).
pub const LIVE_FOR: Duration = Duration::from_secs(10);

/// The token keys of this replica, with the deployment id the replicas share and the active
/// key published.
pub async fn token_keys(
    config: &Config,
    store: &SharedStore,
    now: u64,
) -> Result<TokenKeys, GatewayError> {
    let origin = config.public_origin();
    let mut keys = TokenKeys::load_or_create(&config.state_dir)?.for_origin(origin.as_deref());
    if config.store.postgres.is_some() {
        let shared = store
            .shared_value("deployment_id".into(), keys.deployment().to_owned())
            .await?;
        if shared != keys.deployment() {
            TokenKeys::adopt_deployment(&config.state_dir, &shared)?;
            keys = TokenKeys::load_or_create(&config.state_dir)?.for_origin(origin.as_deref());
        }
    }
    let (kid, pem) = keys.active_public();
    store
        .publish_key(
            PublishedKey {
                kid: kid.to_owned(),
                public_pem: pem.to_owned(),
                replica: config.node_id.clone(),
                created: now,
                expires: None,
            },
            now,
            config.session_token_max_ttl.as_secs(),
        )
        .await?;
    Ok(keys)
}

/// The id of this replica's state directory (`STATE_DIR/replica-instance`, made once): a
/// restart on the same directory (systemd after a crash) is the same replica and takes its
/// record over at once; another directory claiming the same `node_id` while it lives is not.
fn instance_id(state_dir: &std::path::Path) -> Result<String, GatewayError> {
    let path = state_dir.join("replica-instance");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GatewayError::Io {
                what: format!("reading {}", path.display()),
                source,
            })
        }
    }
    let id = postern_proto::ids::random_id("inst").map_err(|_| {
        GatewayError::other("registering the replica", "random number generator failed")
    })?;
    postern_net::fsutil::write_atomic(&path, id.as_bytes(), 0o600).map_err(|source| {
        GatewayError::Io {
            what: format!("writing {}", path.display()),
            source,
        }
    })?;
    Ok(id)
}

/// This replica's record in the store.
pub struct Replica {
    store: SharedStore,
    rec: ReplicaRec,
}

impl Replica {
    /// Registers the replica; refused if a live process already holds its id.
    pub async fn join(
        store: SharedStore,
        config: &Config,
        client_addr: String,
        connector_addrs: Vec<String>,
        now: u64,
    ) -> Result<Replica, GatewayError> {
        let instance = instance_id(&config.state_dir)?;
        let rec = ReplicaRec {
            id: config.node_id.clone(),
            instance,
            client_addr,
            connector_addrs,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: now,
            heartbeat: now,
        };
        store
            .heartbeat(rec.clone(), now, LIVE_FOR.as_secs())
            .await?;
        Ok(Replica { store, rec })
    }

    /// Beats until `shutdown` (the caller [`leave`](Self::leave)s after draining).
    pub async fn run(
        self: Arc<Self>,
        clock: crate::clock::SharedClock,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let beat = self
                .store
                .heartbeat(self.rec.clone(), clock.unix(), LIVE_FOR.as_secs())
                .await;
            if let Err(e) = beat {
                warn!(error = %e, "replica heartbeat not recorded");
            }
        }
    }

    /// Removes the record (a clean stop).
    pub async fn leave(&self) {
        if let Err(e) = self
            .store
            .leave(self.rec.id.clone(), self.rec.instance.clone())
            .await
        {
            warn!(error = %e, "replica record not removed at stop");
        }
    }
}
