//! An in-memory store: the domain rules on the whole state (`rules`), held in a mutex, every
//! change announced on `changes()`. For tests of code that uses the store.

use std::sync::Mutex;

use tokio::sync::broadcast;

use super::rules::{Backend, Tables};
use super::{Change, StoreError, StoreFuture};

/// The in-memory store.
pub struct MemoryStore {
    tables: Mutex<Tables>,
    tx: broadcast::Sender<Change>,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore {
            tables: Mutex::new(Tables::default()),
            tx: broadcast::channel(1024).0,
        }
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("memory store lock poisoned".into())
}

impl Backend for MemoryStore {
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> T + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let out = self.tables.lock().map(|t| f(&t)).map_err(|_| poisoned());
        Box::pin(std::future::ready(out))
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let out = match self.tables.lock() {
            Ok(mut t) => {
                // Atomic: the change is made on a copy and kept only if it succeeded.
                let mut next = t.clone();
                let out = f(&mut next);
                if out.is_ok() {
                    *t = next;
                }
                out
            }
            Err(_) => Err(poisoned()),
        };
        Box::pin(std::future::ready(out))
    }

    fn sender(&self) -> &broadcast::Sender<Change> {
        &self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CeremonyRec, CliCodeRec, Refusal, RevokedToken, StateStore};

    #[tokio::test]
    async fn sign_in_state_is_single_use_expires_by_now_and_announces_nothing() {
        let store = MemoryStore::default();
        let mut rx = store.changes();
        let code = CliCodeRec {
            challenge: "ch".into(),
            token: "tok".into(),
            expires: 160,
        };
        store
            .put_cli_code("k".into(), code.clone(), 100)
            .await
            .unwrap();
        store
            .put_cli_code("old".into(), code.clone(), 100)
            .await
            .unwrap();
        assert_eq!(
            store.take_cli_code("k".into(), 159).await.unwrap(),
            Some(code)
        );
        assert_eq!(store.take_cli_code("k".into(), 159).await.unwrap(), None);
        assert_eq!(store.take_cli_code("old".into(), 160).await.unwrap(), None);
        let rec = CeremonyRec {
            identity: serde_json::json!({"user": "ann"}),
            cli: None,
            posture: None,
            pending: None,
            expires: 700,
        };
        store
            .put_ceremony("c".into(), rec.clone(), 100)
            .await
            .unwrap();
        let (before, after) = store
            .update_ceremony(
                "c".into(),
                200,
                Box::new(|c| {
                    c.pending = Some(serde_json::json!(1));
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert_eq!(
            (before.pending, after.pending),
            (None, Some(serde_json::json!(1)))
        );
        let e = store
            .update_ceremony("c".into(), 700, Box::new(|_| Ok(())))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(Refusal::UnknownCeremony)));
        assert!(store
            .take_ceremony("c".into(), 300)
            .await
            .unwrap()
            .is_some());
        assert_eq!(store.take_ceremony("c".into(), 300).await.unwrap(), None);
        // Nothing above was announced; a revocation is.
        store
            .revoke_token(
                RevokedToken {
                    jti: "j".into(),
                    exp: 9,
                    user: "u".into(),
                    revoked: 1,
                },
                1,
            )
            .await
            .unwrap();
        assert_eq!(rx.try_recv().unwrap(), Change::TokenRevoked("j".into()));
        assert!(rx.try_recv().is_err());
    }
}
