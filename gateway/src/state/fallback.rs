//! Sign-ins while the database is away (issue #13, item 6): the store the sign-in services use.
//!
//! Every operation goes to the shared store, bounded by [`OP_TIMEOUT`] (a database that stopped
//! answering hangs a query rather than failing it). When the store is unavailable — the
//! operation failed or timed out, or the change feed already says the database is down — and it
//! has been away for no longer than `max_staleness`, sign-in goes on from what this replica
//! holds:
//!
//! * sign-in state (one-time CLI codes, WebAuthn ceremonies) is kept in this replica's memory
//!   (a [`MemoryStore`]); later steps find it here first. A browser whose next step lands on
//!   another replica meanwhile starts again there;
//! * the device list is the last one read; a device's sign-count and last-use update
//!   (compare-and-set) is applied to that copy, so a cloned authenticator is still caught on
//!   this replica, and is not written to the database (the next assertion after it returns
//!   carries a higher count anyway);
//! * registering a device, a sign-out and every other write still need the database.
//!
//! Beyond `max_staleness` everything fails closed with [`StoreError::Unavailable`]: sign-in
//! pages answer 503 `store_unavailable`, as new sessions are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::warn;

use super::memory::MemoryStore;
use super::*;

/// How long one operation may take before the store counts as unavailable for it.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// After an operation found the store unavailable, the next ones do not wait for it for this
/// long (the change feed's own probe says so within about as long).
pub const TRIPPED_FOR: Duration = Duration::from_secs(5);

/// The shared store, with this replica's fallback for sign-in (see the module comment).
pub struct SignInStore {
    primary: SharedStore,
    local: MemoryStore,
    /// The last device list read from `primary`.
    devices: Mutex<Option<Vec<DeviceRec>>>,
    max_staleness: Duration,
    op_timeout: Duration,
    /// When an operation last found the store unavailable.
    tripped: Mutex<Option<std::time::Instant>>,
}

impl SignInStore {
    pub fn new(primary: SharedStore, max_staleness: Duration) -> SignInStore {
        SignInStore::with_timeout(primary, max_staleness, OP_TIMEOUT)
    }

    /// As [`new`](Self::new) with another per-operation bound (tests).
    pub fn with_timeout(
        primary: SharedStore,
        max_staleness: Duration,
        op_timeout: Duration,
    ) -> SignInStore {
        SignInStore {
            primary,
            local: MemoryStore::default(),
            devices: Mutex::new(None),
            max_staleness,
            op_timeout,
            tripped: Mutex::new(None),
        }
    }

    /// `op` on the shared store, within the time bound.
    async fn bounded<T>(&self, op: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(self.op_timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.op_timeout
            ))),
        };
        if let Ok(mut tripped) = self.tripped.lock() {
            match &r {
                Err(StoreError::Unavailable(_)) => {
                    tripped.get_or_insert_with(std::time::Instant::now);
                }
                Ok(_) => *tripped = None,
                Err(_) => {}
            }
        }
        r
    }

    /// Whether the database is known to be down right now (no need to wait for it): the
    /// change feed says so, or an operation found it so a moment ago.
    fn known_down(&self) -> bool {
        matches!(self.primary.health(), StoreHealth::Down(_))
            || self
                .tripped
                .lock()
                .ok()
                .and_then(|t| *t)
                .is_some_and(|at| at.elapsed() < TRIPPED_FOR)
    }

    /// May sign-in go on from this replica's own state: the store is away, for no longer than
    /// `max_staleness`. Otherwise the error to return.
    fn fallback_allowed(&self, e: StoreError) -> Result<(), StoreError> {
        match (&e, self.primary.health()) {
            (StoreError::Unavailable(_), StoreHealth::Down(d)) if d > self.max_staleness => {
                Err(StoreError::Unavailable(format!(
                    "the state store has not answered for {}s, beyond max_staleness {}s",
                    d.as_secs(),
                    self.max_staleness.as_secs()
                )))
            }
            (StoreError::Unavailable(why), _) => {
                warn!(reason = %why, "state store unavailable: sign-in goes on from this replica's own state");
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Writes sign-in state: to the shared store, else (see [`fallback_allowed`]) locally.
    async fn put_either<'a>(
        &'a self,
        shared: impl FnOnce() -> StoreFuture<'a, ()>,
        local: impl FnOnce() -> StoreFuture<'a, ()>,
    ) -> Result<(), StoreError> {
        let e = if self.known_down() {
            StoreError::Unavailable("the database is down".into())
        } else {
            match self.bounded(shared()).await {
                Err(e @ StoreError::Unavailable(_)) => e,
                r => return r,
            }
        };
        self.fallback_allowed(e)?;
        local().await
    }

    fn cached_devices(&self) -> Option<Vec<DeviceRec>> {
        self.devices.lock().ok().and_then(|d| d.clone())
    }
}

impl StateStore for SignInStore {
    fn create_enroll_token(&self, token: EnrollTokenRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.create_enroll_token(token, now)))
    }

    fn enroll_connector(
        &self,
        secret_sha256: String,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued, String)> {
        Box::pin(
            self.bounded(
                self.primary
                    .enroll_connector(secret_sha256, hostname, now, issue),
            ),
        )
    }

    fn renew_connector(
        &self,
        id: String,
        serial: String,
        now: u64,
        issue: RenewIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued)> {
        Box::pin(self.bounded(self.primary.renew_connector(id, serial, now, issue)))
    }

    fn revoke_connector(&self, id: String, now: u64) -> StoreFuture<'_, ConnectorRec> {
        Box::pin(self.bounded(self.primary.revoke_connector(id, now)))
    }

    fn connector(&self, id: String) -> StoreFuture<'_, Option<ConnectorRec>> {
        Box::pin(self.bounded(self.primary.connector(id)))
    }

    fn connectors(&self) -> StoreFuture<'_, Vec<ConnectorRec>> {
        Box::pin(self.bounded(self.primary.connectors()))
    }

    fn revoke_token(&self, token: RevokedToken, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.revoke_token(token, now)))
    }

    fn revoke_user(&self, user: String, now: u64) -> StoreFuture<'_, Vec<DeviceRec>> {
        Box::pin(self.bounded(self.primary.revoke_user(user, now)))
    }

    fn revocations(&self) -> StoreFuture<'_, Revocations> {
        Box::pin(self.bounded(self.primary.revocations()))
    }

    fn add_device(&self, device: DeviceRec) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.add_device(device)))
    }

    fn update_device(
        &self,
        id: String,
        change: DeviceChange,
    ) -> StoreFuture<'_, (DeviceRec, DeviceRec)> {
        Box::pin(async move {
            // The change is applied once, wherever it goes: keep it until we know where.
            let change = Arc::new(Mutex::new(Some(change)));
            let take =
                |c: &Arc<Mutex<Option<DeviceChange>>>| c.lock().ok().and_then(|mut c| c.take());
            let e = if self.known_down() {
                StoreError::Unavailable("the database is down".into())
            } else {
                let c = change.clone();
                let shared: DeviceChange = Box::new(move |d: &mut DeviceRec| match take(&c) {
                    Some(f) => f(d),
                    None => Err(Refusal::UnknownDevice(d.id.clone())),
                });
                match self
                    .bounded(self.primary.update_device(id.clone(), shared))
                    .await
                {
                    Err(e @ StoreError::Unavailable(_)) => e,
                    r => return r,
                }
            };
            self.fallback_allowed(e)?;
            let Some(f) = take(&change) else {
                // Applied by a database that then stopped answering: its outcome is unknown.
                return Err(StoreError::Unavailable(
                    "the device update may or may not have been stored".into(),
                ));
            };
            let mut cache = self
                .devices
                .lock()
                .map_err(|_| StoreError::Backend("device cache lock poisoned".into()))?;
            let Some(dev) = cache
                .as_mut()
                .and_then(|all| all.iter_mut().find(|d| d.id == id))
            else {
                return Err(Refusal::UnknownDevice(id).into());
            };
            let before = dev.clone();
            let mut after = before.clone();
            f(&mut after)?;
            *dev = after.clone();
            Ok((before, after))
        })
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceRec>> {
        Box::pin(async move {
            let e = if self.known_down() {
                StoreError::Unavailable("the database is down".into())
            } else {
                match self.bounded(self.primary.devices()).await {
                    Ok(all) => {
                        if let Ok(mut c) = self.devices.lock() {
                            *c = Some(all.clone());
                        }
                        return Ok(all);
                    }
                    Err(e @ StoreError::Unavailable(_)) => e,
                    Err(e) => return Err(e),
                }
            };
            self.fallback_allowed(e)?;
            self.cached_devices().ok_or_else(|| {
                StoreError::Unavailable("the device list was never read from the store".into())
            })
        })
    }

    fn put_cli_code(&self, key_hash: String, rec: CliCodeRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (k, r) = (key_hash.clone(), rec.clone());
            self.put_either(
                || self.primary.put_cli_code(key_hash, rec, now),
                || self.local.put_cli_code(k, r, now),
            )
            .await
        })
    }

    fn take_cli_code(&self, key_hash: String, now: u64) -> StoreFuture<'_, Option<CliCodeRec>> {
        Box::pin(async move {
            if let Some(rec) = self.local.take_cli_code(key_hash.clone(), now).await? {
                return Ok(Some(rec));
            }
            self.bounded(self.primary.take_cli_code(key_hash, now))
                .await
        })
    }

    fn put_ceremony(&self, id: String, rec: CeremonyRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (i, r) = (id.clone(), rec.clone());
            self.put_either(
                || self.primary.put_ceremony(id, rec, now),
                || self.local.put_ceremony(i, r, now),
            )
            .await
        })
    }

    fn ceremony(&self, id: String) -> StoreFuture<'_, Option<CeremonyRec>> {
        Box::pin(async move {
            if let Some(rec) = self.local.ceremony(id.clone()).await? {
                return Ok(Some(rec));
            }
            self.bounded(self.primary.ceremony(id)).await
        })
    }

    fn update_ceremony(
        &self,
        id: String,
        now: u64,
        change: CeremonyChange,
    ) -> StoreFuture<'_, (CeremonyRec, CeremonyRec)> {
        Box::pin(async move {
            if self.local.ceremony(id.clone()).await?.is_some() {
                return self.local.update_ceremony(id, now, change).await;
            }
            self.bounded(self.primary.update_ceremony(id, now, change))
                .await
        })
    }

    fn take_ceremony(&self, id: String, now: u64) -> StoreFuture<'_, Option<CeremonyRec>> {
        Box::pin(async move {
            if let Some(rec) = self.local.take_ceremony(id.clone(), now).await? {
                return Ok(Some(rec));
            }
            self.bounded(self.primary.take_ceremony(id, now)).await
        })
    }

    fn heartbeat(&self, rec: ReplicaRec, now: u64, live_for: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.heartbeat(rec, now, live_for)))
    }

    fn leave(&self, id: String, instance: String) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.leave(id, instance)))
    }

    fn replicas(&self) -> StoreFuture<'_, Vec<ReplicaRec>> {
        Box::pin(self.bounded(self.primary.replicas()))
    }

    fn publish_key(&self, key: PublishedKey, now: u64, retire_after: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.bounded(self.primary.publish_key(key, now, retire_after)))
    }

    fn published_keys(&self, now: u64) -> StoreFuture<'_, Vec<PublishedKey>> {
        Box::pin(self.bounded(self.primary.published_keys(now)))
    }

    fn shared_value(&self, name: String, value: String) -> StoreFuture<'_, String> {
        Box::pin(self.bounded(self.primary.shared_value(name, value)))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.primary.changes()
    }

    fn health(&self) -> StoreHealth {
        self.primary.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::conformance;

    async fn sqlite(dir: &std::path::Path) -> Opened {
        open(&StoreConfig::default(), dir).await.unwrap()
    }

    fn ceremony() -> CeremonyRec {
        CeremonyRec {
            identity: serde_json::json!({"user": "ann"}),
            cli: None,
            posture: None,
            pending: None,
            expires: 700,
        }
    }

    /// A sign-count update as the assertion makes it: refused unless the count grows.
    fn count_to(n: u32) -> DeviceChange {
        Box::new(move |d: &mut DeviceRec| {
            if n <= d.sign_count {
                return Err(Refusal::UnknownDevice(format!(
                    "count {n} not above {}",
                    d.sign_count
                )));
            }
            d.sign_count = n;
            Ok(())
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_database_up_it_is_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = sqlite(dir.path()).await.store;
        let b = sqlite(dir.path()).await.store;
        let wrap = |s: SharedStore| -> SharedStore {
            Arc::new(SignInStore::new(s, Duration::from_secs(60)))
        };
        // Two wrapped handles pass the sign-in and device parts of the store's contract.
        let (a, b) = (wrap(a), wrap(b));
        conformance::sign_in_state(&a, &b).await;
        conformance::sign_count_updates_never_lose_one(&a, &b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_database_gone_sign_in_goes_on_here_until_max_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let opened = sqlite(dir.path()).await;
        let primary = opened.store.clone();
        let _feed = primary.changes(); // health is followed while someone listens
        primary
            .add_device(conformance::device("dev-1", "ann", "cred-1"))
            .await
            .unwrap();
        let s = SignInStore::with_timeout(
            primary.clone(),
            Duration::from_secs(60),
            Duration::from_millis(500),
        );
        assert_eq!(
            s.devices().await.unwrap().len(),
            1,
            "read (and kept) while up"
        );
        s.put_ceremony("before".into(), ceremony(), 100)
            .await
            .unwrap();

        opened.sql.close().await;
        // Sign-in state goes to this replica's memory and is found there.
        s.put_ceremony("c".into(), ceremony(), 100).await.unwrap();
        assert_eq!(s.ceremony("c".into()).await.unwrap(), Some(ceremony()));
        let (_, after) = s
            .update_ceremony(
                "c".into(),
                101,
                Box::new(|c| {
                    c.pending = Some(serde_json::json!({"kind": "assert"}));
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert!(after.pending.is_some());
        assert!(s.take_ceremony("c".into(), 102).await.unwrap().is_some());
        // Single use: not found here again (and the database cannot be asked).
        assert!(!matches!(
            s.take_ceremony("c".into(), 102).await,
            Ok(Some(_))
        ));
        let code = CliCodeRec {
            challenge: "ch".into(),
            token: "tok".into(),
            expires: 160,
        };
        s.put_cli_code("k".into(), code.clone(), 100).await.unwrap();
        assert_eq!(s.take_cli_code("k".into(), 101).await.unwrap(), Some(code));
        assert!(!matches!(
            s.take_cli_code("k".into(), 101).await,
            Ok(Some(_))
        ));
        // What was in the database stays there: unreachable, said so.
        assert!(matches!(
            s.ceremony("before".into()).await,
            Err(StoreError::Unavailable(_))
        ));
        // Devices: the last list; sign counts compare-and-set on it.
        assert_eq!(s.devices().await.unwrap()[0].id, "dev-1");
        let (before, after) = s.update_device("dev-1".into(), count_to(5)).await.unwrap();
        assert_eq!((before.sign_count, after.sign_count), (0, 5));
        let replayed = s.update_device("dev-1".into(), count_to(5)).await;
        assert!(
            matches!(replayed, Err(StoreError::Refused(_))),
            "{replayed:?}"
        );
        assert_eq!(s.devices().await.unwrap()[0].sign_count, 5);
        // Registering a device needs the database.
        let added = s
            .add_device(conformance::device("dev-2", "ann", "cred-2"))
            .await;
        assert!(
            matches!(added, Err(StoreError::Unavailable(_))),
            "{added:?}"
        );

        // Beyond max_staleness (here 0 s, once the feed has seen the database gone): closed.
        let strict =
            SignInStore::with_timeout(primary.clone(), Duration::ZERO, Duration::from_millis(500));
        let mut waited = 0;
        while !matches!(primary.health(), StoreHealth::Down(d) if d > Duration::ZERO) {
            assert!(waited < 100, "the feed never saw the database gone");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        let refused = strict.put_ceremony("d".into(), ceremony(), 100).await;
        match refused {
            Err(StoreError::Unavailable(why)) => {
                assert!(why.contains("beyond max_staleness"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            strict.devices().await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
