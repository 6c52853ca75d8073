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
use crate::state::{Change, PublishedKey, ReplicaRec, SharedStore};

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

/// The files every replica must hold the same copy of: the two CAs and, with sign-in, the
/// sign-in cookie key (a browser may reach another replica at each step).
pub const SHARED_FILES: [(&str, &str); 3] = [
    ("server-ca.pem", "server CA"),
    ("connector-ca.pem", "connector CA"),
    ("signin-cookie.key", "sign-in cookie key"),
];

/// What identifies this replica's copy of each of [`SHARED_FILES`] that exists: (file, what,
/// fingerprint). A certificate's fingerprint is the SHA-256 of its base64 body; the cookie
/// key's is a SHA-256 over a label and the key (it says nothing about the key).
pub fn shared_fingerprints(
    state_dir: &std::path::Path,
) -> Vec<(&'static str, &'static str, String)> {
    SHARED_FILES
        .iter()
        .filter_map(|(file, what)| {
            let bytes = std::fs::read(state_dir.join(file)).ok()?;
            let print = if file.ends_with(".pem") {
                let body: String = String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
                    .collect();
                postern_proto::ids::sha256_hex(body.as_bytes())
            } else {
                let mut labelled = b"postern shared-file fingerprint\0".to_vec();
                labelled.extend_from_slice(&bytes);
                postern_proto::ids::sha256_hex(&labelled)
            };
            Some((*file, *what, print))
        })
        .collect()
}

/// With PostgreSQL: each of [`SHARED_FILES`] this replica holds must be the copy the other
/// replicas hold (the first replica to start records the fingerprints); a replica started with
/// a CA of its own would sign connector certificates the others refuse, so it does not start.
pub async fn same_shared_files(config: &Config, store: &SharedStore) -> Result<(), GatewayError> {
    if config.store.postgres.is_none() {
        return Ok(());
    }
    for (file, what, print) in shared_fingerprints(&config.state_dir) {
        let shared = store
            .shared_value(format!("fingerprint {file}"), print.clone())
            .await?;
        if shared != print {
            return Err(GatewayError::other(
                "joining the replicas",
                format!(
                    "this replica's {what} ({}, fingerprint {}) is not the one the other replicas use (fingerprint {}): \
                     copy {file} (and its key) from an existing replica's state directory before the first start \
                     (docs/operator-guide.md, \"Three replicas on PostgreSQL\")",
                    config.state_dir.join(file).display(),
                    &print[..16],
                    &shared[..shared.len().min(16)],
                ),
            ));
        }
    }
    Ok(())
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

/// The connector addresses of the live replicas (this one included), as connectors should
/// dial them: sorted, without duplicates, without unspecified addresses (a listener on
/// `0.0.0.0` is reached by `[tls] advertise_connector_addrs`, not by its own address), at most
/// [`wire::MAX_REPLICA_ADDRS`](postern_proto::wire::MAX_REPLICA_ADDRS).
pub fn connector_addrs(replicas: &[ReplicaRec], now: u64) -> Vec<String> {
    let mut addrs: Vec<String> = replicas
        .iter()
        .filter(|r| r.heartbeat.saturating_add(LIVE_FOR.as_secs()) >= now)
        .flat_map(|r| r.connector_addrs.iter())
        .filter(|a| {
            a.parse::<std::net::SocketAddr>()
                .map_or(true, |s| !s.ip().is_unspecified())
        })
        .filter(|a| !a.is_empty() && a.len() <= 255 && !a.contains(char::is_whitespace))
        .cloned()
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(postern_proto::wire::MAX_REPLICA_ADDRS);
    addrs
}

/// Keeps `set` equal to [`connector_addrs`] of the store's replicas: read again when a replica
/// joins or leaves (the change feed) and every [`HEARTBEAT`] (a replica that died is gone once
/// its last beat is [`LIVE_FOR`] old). While the store cannot be read the last set stays.
pub async fn follow_set(
    store: SharedStore,
    clock: crate::clock::SharedClock,
    set: Arc<tokio::sync::watch::Sender<Vec<String>>>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = Some(store.changes());
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match store.replicas().await {
            Ok(replicas) => {
                let addrs = connector_addrs(&replicas, clock.unix());
                set.send_if_modified(|cur| {
                    if *cur == addrs {
                        return false;
                    }
                    tracing::info!(replicas = ?addrs, "replica set changed");
                    *cur = addrs;
                    true
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the replica set; keeping the last one")
            }
        }
        loop {
            let change = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => break,
                c = change => match c {
                    Ok(Change::ReplicasChanged | Change::External) | Err(RecvError::Lagged(_)) => break,
                    Ok(_) => {}
                    // No feed any more: the ticks alone keep the set.
                    Err(RecvError::Closed) => changes = None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, heartbeat: u64, addrs: &[&str]) -> ReplicaRec {
        ReplicaRec {
            id: id.into(),
            instance: format!("inst-{id}"),
            client_addr: String::new(),
            connector_addrs: addrs.iter().map(|a| a.to_string()).collect(),
            version: "0".into(),
            started: 0,
            heartbeat,
        }
    }

    #[test]
    fn the_advertised_set_has_live_dialable_addresses_once_each() {
        let now = 1_000;
        let set = connector_addrs(
            &[
                rec("b", now, &["10.0.0.2:7443", "gw.example:7443"]),
                rec("a", now - LIVE_FOR.as_secs(), &["10.0.0.1:7443"]),
                // Silent for longer than LIVE_FOR: gone.
                rec("dead", now - LIVE_FOR.as_secs() - 1, &["10.0.0.9:7443"]),
                // A listener on every address is not an address to dial.
                rec(
                    "c",
                    now,
                    &["0.0.0.0:7443", "[::]:7443", "gw.example:7443", "a b:1"],
                ),
            ],
            now,
        );
        assert_eq!(set, ["10.0.0.1:7443", "10.0.0.2:7443", "gw.example:7443"]);
    }
}
