//! An in-memory store: the same rules as the file store (`rules`), held in a mutex, every
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
