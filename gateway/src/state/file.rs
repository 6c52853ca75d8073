//! The embedded store: `STATE_DIR/state.json` (mode 0600), replaced atomically under an
//! exclusive lock on `STATE_DIR/state.lock`, so the running gateway and short-lived admin
//! commands (`token create`, `connector revoke`) can both change it safely.
//!
//! Each [`StateStore`](super::StateStore) operation is one locked read-modify-write, run on the blocking pool.
//! Changes made through this handle are announced at once; changes made by another process
//! are found by a poller (every 0.5 s, by the file's modification time and length) that runs
//! while anyone listens to [`StateStore::changes`](super::StateStore::changes), and announced as [`Change::External`].
//! The poller ignores this handle's own writes: each write notes the file's new fingerprint
//! when the file was, until then, the version this handle knew (nobody else wrote in
//! between), so frequent own writes (sign-in state at every sign-in step) cost no reload,
//! while any other process's write is still seen.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use postern_net::fsutil::{private_dir, write_atomic};

use super::rules::{Backend, Tables};
use super::{Change, StoreError, StoreFuture};

/// How often another process's changes are looked for.
const POLL: Duration = Duration::from_millis(500);

/// What identifies a version of the file without reading it (modification time, length).
type Fingerprint = Option<(SystemTime, u64)>;

/// The file and its lock.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
    /// The version of the file this handle knows: written by itself or already announced.
    known: Arc<Mutex<Fingerprint>>,
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
        let before = self.fingerprint();
        let mut state = self.read_unlocked()?;
        let out = f(&mut state)?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: self.path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path(), &json, 0o600).map_err(|e| self.io(e))?;
        let after = self.fingerprint();
        if let Ok(mut known) = self.known.lock() {
            // Only if nobody else wrote since this handle last knew the file: otherwise the
            // poller must still see (and announce) that other write.
            if *known == before {
                *known = after;
            }
        }
        Ok(out)
    }

    /// Whether the file changed since this handle last knew it; if so, it knows it now.
    fn changed_by_others(&self) -> bool {
        let Ok(mut known) = self.known.lock() else {
            return true;
        };
        let now = self.fingerprint();
        if now == *known {
            return false;
        }
        *known = now;
        true
    }

    /// What identifies a version of the file without reading it.
    fn fingerprint(&self) -> Fingerprint {
        let m = std::fs::metadata(self.path()).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The file-backed [`StateStore`](super::StateStore).
pub struct FileStore {
    files: Files,
    tx: broadcast::Sender<Change>,
    poller: Mutex<bool>,
}

impl FileStore {
    /// Opens (creating the directory 0700 if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        private_dir(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (tx, _) = broadcast::channel(1024);
        let mut files = Files {
            dir: dir.to_owned(),
            known: Arc::default(),
        };
        files.known = Arc::new(Mutex::new(files.fingerprint()));
        Ok(FileStore {
            files,
            tx,
            poller: Mutex::new(false),
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
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while tx.receiver_count() > 0 {
                tick.tick().await;
                if files.changed_by_others() {
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
        CeremonyRec, CliCodeRec, ConnectorRec, EnrollIssuer, EnrollTokenRec, Issued, Refusal,
        RevokedToken, StateStore,
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

    fn cli_code(expires: u64) -> CliCodeRec {
        CliCodeRec {
            challenge: "ch".into(),
            token: "tok".into(),
            expires,
        }
    }

    #[tokio::test]
    async fn sign_in_state_is_shared_through_the_file_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileStore::open(dir.path()).unwrap();
        let b = FileStore::open(dir.path()).unwrap();
        a.put_cli_code("k".into(), cli_code(160), 100)
            .await
            .unwrap();
        let rec = CeremonyRec {
            identity: serde_json::json!({"user": "ann"}),
            cli: None,
            posture: None,
            pending: None,
            expires: 700,
        };
        a.put_ceremony("c".into(), rec.clone(), 100).await.unwrap();
        // Another handle (another process, another replica) sees both and takes them once.
        assert_eq!(b.ceremony("c".into()).await.unwrap(), Some(rec.clone()));
        b.update_ceremony(
            "c".into(),
            101,
            Box::new(|c| {
                c.pending = Some(serde_json::json!({"kind": "assert"}));
                Ok(())
            }),
        )
        .await
        .unwrap();
        let taken = a.take_ceremony("c".into(), 102).await.unwrap().unwrap();
        assert!(taken.pending.is_some());
        assert_eq!(b.take_ceremony("c".into(), 102).await.unwrap(), None);
        assert_eq!(
            b.take_cli_code("k".into(), 159).await.unwrap(),
            Some(cli_code(160))
        );
        assert_eq!(a.take_cli_code("k".into(), 159).await.unwrap(), None);
        // Expiry is judged by the `now` passed in.
        a.put_cli_code("late".into(), cli_code(160), 100)
            .await
            .unwrap();
        assert_eq!(b.take_cli_code("late".into(), 160).await.unwrap(), None);
        // Emptied tables leave the file as an older gateway can read it.
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(
            !text.contains("cli_codes") && !text.contains("ceremonies"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_old_state_file_without_sign_in_tables_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.json"),
            r#"{"enroll_tokens": [], "connectors": [], "revoked_tokens": [], "devices": [], "revoked_users": []}"#,
        )
        .unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.take_cli_code("k".into(), 1).await.unwrap(), None);
        store
            .put_cli_code("k".into(), cli_code(9), 1)
            .await
            .unwrap();
        assert_eq!(
            store.take_cli_code("k".into(), 2).await.unwrap(),
            Some(cli_code(9))
        );
    }

    #[tokio::test]
    async fn the_poller_ignores_this_handles_own_writes_but_not_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut rx = store.changes();
        // Sign-in state written through this handle: no change announced, none polled.
        for i in 0..3 {
            store
                .put_cli_code(format!("k{i}"), cli_code(160), 100)
                .await
                .unwrap();
            tokio::time::sleep(POLL / 2).await;
        }
        store.take_cli_code("k0".into(), 101).await.unwrap();
        tokio::time::sleep(POLL * 3).await;
        assert!(
            matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
            "own sign-in writes were announced"
        );
        // Another handle writes, then this one writes before the poller looks: the other
        // write is still announced.
        let other = FileStore::open(dir.path()).unwrap();
        other
            .put_cli_code("theirs".into(), cli_code(160), 100)
            .await
            .unwrap();
        store
            .put_cli_code("mine".into(), cli_code(160), 100)
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(seen, Ok(Ok(Change::External))),
            "no External: {seen:?}"
        );
    }
}
