//! Revocations reach live sessions: the gateway follows the store's change stream, and on any
//! change reloads the revocation set and the device table, ends the sessions of revoked
//! tokens, users and devices, and drops the links of revoked connectors (ending the sessions
//! they carry). A change made here, by an admin command or by another process takes effect
//! within a second.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Access;
use crate::authn::Authn;
use crate::connectors::Registry;
use crate::state::SharedStore;

/// What enforcing revocations needs.
pub struct Revocations {
    pub store: SharedStore,
    pub authn: Arc<Authn>,
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
}

impl Revocations {
    /// Follows the store's changes until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut changes = self.store.changes();
        loop {
            let next = tokio::select! {
                c = changes.recv() => c,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            // Whatever changed, the views are reloaded whole: one read covers a burst.
            while changes.try_recv().is_ok() {}
            self.enforce().await;
        }
    }

    /// Reloads revocations and devices from the store and ends what they revoke.
    pub async fn enforce(&self) {
        if let Err(e) = self.authn.reload(&*self.store).await {
            warn!(error = %e, "cannot read the state store; revocations not refreshed");
            return;
        }
        let sessions = &self.access.sessions;
        let ended = sessions.enforce_revocations(&self.authn, &self.access.audit);
        if ended > 0 {
            info!(
                sessions = ended,
                "live sessions ended: token, device or user revoked"
            );
        }
        let connectors = match self.store.connectors().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the state store; connector revocations not checked");
                return;
            }
        };
        for link in self.registry.all() {
            let ok = connectors
                .iter()
                .find(|r| r.id == link.connector_id)
                .is_some_and(|r| r.revoked.is_none() && r.accepts_serial(&link.serial));
            if !ok {
                let n = sessions.kill_connector(&link.connector_id, "connector_revoked");
                info!(connector_id = %link.connector_id, peer = %link.peer, sessions = n, "connector revoked: dropping its connection");
                link.cancel.cancel();
            }
        }
    }
}
