//! The embedded store: `STATE_DIR/state.json` (mode 0600), replaced atomically under an
//! exclusive lock on `STATE_DIR/state.lock`, so the running gateway and short-lived admin
//! commands (`token create`, `connector revoke`) can both change it safely.
//!
//! Each [`StateStore`](super::StateStore) operation is one locked read-modify-write, run on the blocking pool.
//! Changes made through this handle are announced at once; changes made by another process
//! are found by a poller (every 0.5 s, by the file's modification time and length) that runs
//! while anyone listens to [`StateStore::changes`](super::StateStore::changes), and announced as [`Change::External`].

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use postern_net::fsutil::{private_dir, write_atomic};

use super::rules::{Backend, Tables};
use super::{Change, StoreError, StoreFuture};

/// How often another process's changes are looked for.
const POLL: Duration = Duration::from_millis(500);

/// The file and its lock.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path(),
            source,
        }
    }

    fn read_unlocked(&self) -> Result<Tables, StoreError> {
        match std::fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: self.path(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tables::default()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("state.lock"))
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        Ok(f)
    }

    /// A consistent snapshot.
    fn read(&self) -> Result<Tables, StoreError> {
        let _lock = self.lock()?;
        self.read_unlocked()
    }

    /// Read-modify-write under the lock. `f` returning `Err` leaves the file unchanged.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut state = self.read_unlocked()?;
        let out = f(&mut state)?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: self.path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path(), &json, 0o600).map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// What identifies a version of the file without reading it.
    fn fingerprint(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.path()).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The file-backed [`StateStore`](super::StateStore).
pub struct FileStore {
    files: Files,
    tx: broadcast::Sender<Change>,
    poller: std::sync::Mutex<bool>,
}

impl FileStore {
    /// Opens (creating the directory 0700 if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        private_dir(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (tx, _) = broadcast::channel(1024);
        Ok(FileStore {
            files: Files {
                dir: dir.to_owned(),
            },
            tx,
            poller: std::sync::Mutex::new(false),
        })
    }

    /// Announces changes made by other processes while anyone listens.
    fn start_poller(&self) {
        let Ok(mut started) = self.poller.lock() else {
            return;
        };
        if *started || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        *started = true;
        let files = self.files.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut last = files.fingerprint();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while tx.receiver_count() > 0 {
                tick.tick().await;
                let now = files.fingerprint();
                if now != last {
                    last = now;
                    let _ = tx.send(Change::External);
                }
            }
        });
    }
}

impl Backend for FileStore {
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> T + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let files = self.files.clone();
        blocking(move || files.read().map(|t| f(&t)))
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let files = self.files.clone();
        blocking(move || files.update(f))
    }

    fn sender(&self) -> &broadcast::Sender<Change> {
        &self.tx
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        let rx = self.tx.subscribe();
        self.start_poller();
        rx
    }
}

/// Runs file I/O on the blocking pool.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        ConnectorRec, EnrollIssuer, EnrollTokenRec, Issued, Refusal, RevokedToken, StateStore,
    };

    fn connector(id: &str) -> ConnectorRec {
        ConnectorRec {
            id: id.into(),
            site: "truro".into(),
            serial: "01".into(),
            hostname: None,
            enrolled: 1,
            not_after: 2,
            revoked: None,
            previous_serial: None,
            renewed: None,
        }
    }

    fn token(secret_hash: &str, expires: u64) -> EnrollTokenRec {
        EnrollTokenRec {
            id: "et-1".into(),
            secret_sha256: secret_hash.into(),
            site: "truro".into(),
            created: 1,
            expires,
            used: None,
            used_by: None,
        }
    }

    #[tokio::test]
    async fn a_failed_step_changes_nothing_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store
            .files
            .update(|s| {
                s.connectors.push(connector("c1"));
                Ok(())
            })
            .unwrap();
        let r: Result<(), StoreError> = store.files.update(|s| {
            s.connectors.clear();
            Err(StoreError::Backend("no".into()))
        });
        assert!(r.is_err());
        assert_eq!(store.connectors().await.unwrap().len(), 1);
        std::fs::write(store.files.path(), b"{not json").unwrap();
        let e = store.connectors().await.unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }

    #[tokio::test]
    async fn an_enrolment_token_is_burnt_once_and_a_failed_issue_leaves_it_usable() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store
            .create_enroll_token(token("h1", 100), 10)
            .await
            .unwrap();
        let issued = |id: &'static str| -> EnrollIssuer {
            Box::new(move |site: &str| {
                assert_eq!(site, "truro");
                Ok((
                    id.to_owned(),
                    Issued {
                        cert_pem: "pem".into(),
                        serial: "0a".into(),
                        not_after: 99,
                    },
                ))
            })
        };
        let e = store
            .enroll_connector("h1".into(), None, 10, Box::new(|_| Err("bad CSR".into())))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(Refusal::Rejected(ref m)) if m == "bad CSR"));
        let (rec, _, token_id) = store
            .enroll_connector("h1".into(), Some("pacs-gw".into()), 10, issued("truro-1"))
            .await
            .unwrap();
        assert_eq!((rec.id.as_str(), token_id.as_str()), ("truro-1", "et-1"));
        assert_eq!(rec.serial, "0a");
        let again = store
            .enroll_connector("h1".into(), None, 11, issued("truro-2"))
            .await
            .unwrap_err();
        assert!(
            matches!(again, StoreError::Refused(Refusal::TokenUsed(ref by)) if by == "truro-1")
        );
        let unknown = store
            .enroll_connector("h2".into(), None, 11, issued("x"))
            .await
            .unwrap_err();
        assert!(matches!(
            unknown,
            StoreError::Refused(Refusal::UnknownToken)
        ));
        store
            .create_enroll_token(token("h3", 20), 10)
            .await
            .unwrap();
        let expired = store
            .enroll_connector("h3".into(), None, 20, issued("x"))
            .await
            .unwrap_err();
        assert!(matches!(
            expired,
            StoreError::Refused(Refusal::TokenExpired)
        ));
        assert_eq!(store.connectors().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn changes_are_announced_for_this_process_and_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut rx = store.changes();
        store
            .files
            .update(|s| {
                s.connectors.push(connector("c1"));
                Ok(())
            })
            .unwrap();
        let c = store.revoke_connector("c1".into(), 5).await.unwrap();
        assert_eq!(c.revoked, Some(5));
        let mut saw = Vec::new();
        while saw.last() != Some(&Change::ConnectorRevoked("c1".into())) {
            saw.push(rx.recv().await.unwrap());
        }
        // Another process (an admin command) writes the file: the poller notices.
        let other = FileStore::open(dir.path()).unwrap();
        other
            .revoke_token(
                RevokedToken {
                    jti: "tok-1".into(),
                    exp: 100,
                    user: "u".into(),
                    revoked: 5,
                },
                5,
            )
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if rx.recv().await.unwrap() == Change::External {
                    return;
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "no External change within 5 s");
        assert_eq!(store.revocations().await.unwrap().tokens.len(), 1);
    }
}
