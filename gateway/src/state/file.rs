//! The embedded store: `STATE_DIR/state.json` (mode 0600), replaced atomically under an
//! exclusive lock on `STATE_DIR/state.lock`, so the running gateway and short-lived admin
//! commands (`token create`, `connector revoke`) can both change it safely.
//!
//! Each [`StateStore`] operation is one locked read-modify-write, run on the blocking pool.
//! Changes made through this handle are announced at once; changes made by another process
//! are found by a poller (every 0.5 s, by the file's modification time and length) that runs
//! while anyone listens to [`StateStore::changes`], and announced as [`Change::External`].

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use postern_net::fsutil::{private_dir, write_atomic};

use super::{
    Change, ConnectorRec, DeviceChange, DeviceRec, DeviceStatus, EnrollIssuer, EnrollTokenRec,
    Issued, Refusal, RenewIssuer, Revocations, RevokedToken, RevokedUser, StateStore, StoreError,
    StoreFuture,
};

/// How often another process's changes are looked for.
const POLL: Duration = Duration::from_millis(500);
/// Enrolment tokens expired longer ago than this are forgotten.
const TOKEN_RETENTION: u64 = 7 * 86400;

/// The whole document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    #[serde(default)]
    enroll_tokens: Vec<EnrollTokenRec>,
    #[serde(default)]
    connectors: Vec<ConnectorRec>,
    #[serde(default)]
    revoked_tokens: Vec<RevokedToken>,
    #[serde(default)]
    devices: Vec<DeviceRec>,
    #[serde(default)]
    revoked_users: Vec<RevokedUser>,
}

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

    fn read_unlocked(&self) -> Result<State, StoreError> {
        match std::fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: self.path(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
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
    fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock()?;
        self.read_unlocked()
    }

    /// Read-modify-write under the lock. `f` returning `Err` leaves the file unchanged.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
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

/// The file-backed [`StateStore`].
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

    /// Runs `f` on the blocking pool, then announces `change(&result)` if it succeeded.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Files) -> Result<T, StoreError> + Send + 'static,
        change: impl FnOnce(&T) -> Vec<Change> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let files = self.files.clone();
        let tx = self.tx.clone();
        Box::pin(async move {
            let out = tokio::task::spawn_blocking(move || f(&files))
                .await
                .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))??;
            for c in change(&out) {
                // No listener is not an error.
                let _ = tx.send(c);
            }
            Ok(out)
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

fn find_device<'a>(s: &'a mut State, id: &str) -> Result<&'a mut DeviceRec, StoreError> {
    s.devices
        .iter_mut()
        .find(|d| d.id == id)
        .ok_or_else(|| Refusal::UnknownDevice(id.to_owned()).into())
}

impl StateStore for FileStore {
    fn create_enroll_token(&self, token: EnrollTokenRec, now: u64) -> StoreFuture<'_, ()> {
        self.run(
            move |f| {
                f.update(|s| {
                    s.enroll_tokens
                        .retain(|t| t.expires + TOKEN_RETENTION > now);
                    s.enroll_tokens.push(token);
                    Ok(())
                })
            },
            |_| Vec::new(),
        )
    }

    fn enroll_connector(
        &self,
        secret_sha256: String,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued, String)> {
        self.run(
            move |f| {
                f.update(|s| {
                    let tok = s
                        .enroll_tokens
                        .iter_mut()
                        .find(|t| {
                            postern_proto::ids::ct_eq(
                                t.secret_sha256.as_bytes(),
                                secret_sha256.as_bytes(),
                            )
                        })
                        .ok_or(Refusal::UnknownToken)?;
                    if let Some(by) = &tok.used_by {
                        return Err(Refusal::TokenUsed(by.clone()).into());
                    }
                    if tok.expires <= now {
                        return Err(Refusal::TokenExpired.into());
                    }
                    let (id, issued) = issue(&tok.site).map_err(Refusal::Rejected)?;
                    tok.used = Some(now);
                    tok.used_by = Some(id.clone());
                    let token_id = tok.id.clone();
                    let rec = ConnectorRec {
                        id,
                        site: tok.site.clone(),
                        serial: issued.serial.clone(),
                        hostname,
                        enrolled: now,
                        not_after: issued.not_after,
                        revoked: None,
                        previous_serial: None,
                        renewed: None,
                    };
                    s.connectors.push(rec.clone());
                    Ok((rec, issued, token_id))
                })
            },
            |(rec, _, _)| vec![Change::ConnectorEnrolled(rec.id.clone())],
        )
    }

    fn renew_connector(
        &self,
        id: String,
        serial: String,
        now: u64,
        issue: RenewIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued)> {
        self.run(
            move |f| {
                f.update(|s| {
                    let c = s
                        .connectors
                        .iter_mut()
                        .find(|c| c.id == id)
                        .ok_or_else(|| Refusal::UnknownConnector(id.clone()))?;
                    if c.revoked.is_some() {
                        return Err(Refusal::ConnectorRevoked(id.clone()).into());
                    }
                    if !c.accepts_serial(&serial) {
                        return Err(Refusal::Superseded.into());
                    }
                    let issued = issue(c).map_err(Refusal::Rejected)?;
                    let old = std::mem::replace(&mut c.serial, issued.serial.clone());
                    // The presented certificate is the one live links use; keep it acceptable.
                    c.previous_serial = Some(if old == serial { old } else { serial });
                    c.not_after = issued.not_after;
                    c.renewed = Some(now);
                    Ok((c.clone(), issued))
                })
            },
            |(rec, _)| vec![Change::ConnectorRenewed(rec.id.clone())],
        )
    }

    fn revoke_connector(&self, id: String, now: u64) -> StoreFuture<'_, ConnectorRec> {
        self.run(
            move |f| {
                f.update(|s| {
                    let c = s
                        .connectors
                        .iter_mut()
                        .find(|c| c.id == id)
                        .ok_or_else(|| Refusal::UnknownConnector(id.clone()))?;
                    c.revoked.get_or_insert(now);
                    Ok(c.clone())
                })
            },
            |c| vec![Change::ConnectorRevoked(c.id.clone())],
        )
    }

    fn connector(&self, id: String) -> StoreFuture<'_, Option<ConnectorRec>> {
        self.run(
            move |f| Ok(f.read()?.connectors.into_iter().find(|c| c.id == id)),
            |_| Vec::new(),
        )
    }

    fn connectors(&self) -> StoreFuture<'_, Vec<ConnectorRec>> {
        self.run(|f| Ok(f.read()?.connectors), |_| Vec::new())
    }

    fn revoke_token(&self, token: RevokedToken, now: u64) -> StoreFuture<'_, ()> {
        let jti = token.jti.clone();
        self.run(
            move |f| {
                f.update(|s| {
                    s.revoked_tokens.retain(|t| t.exp > now);
                    if !s.revoked_tokens.iter().any(|t| t.jti == token.jti) {
                        s.revoked_tokens.push(token);
                    }
                    Ok(())
                })
            },
            move |_| vec![Change::TokenRevoked(jti)],
        )
    }

    fn revoke_user(&self, user: String, now: u64) -> StoreFuture<'_, Vec<DeviceRec>> {
        let who = user.clone();
        self.run(
            move |f| {
                f.update(|s| {
                    let mut revoked = Vec::new();
                    for d in s.devices.iter_mut().filter(|d| d.user == user) {
                        if d.status != DeviceStatus::Revoked {
                            d.status = DeviceStatus::Revoked;
                            d.revoked = Some(now);
                            d.revoked_reason = Some("user revoked".into());
                            revoked.push(d.clone());
                        }
                    }
                    s.revoked_users.retain(|u| u.user != user);
                    s.revoked_users.push(RevokedUser { user, before: now });
                    Ok(revoked)
                })
            },
            move |devices| {
                let mut v = vec![Change::UserRevoked(who)];
                v.extend(devices.iter().map(|d| Change::DeviceChanged(d.id.clone())));
                v
            },
        )
    }

    fn revocations(&self) -> StoreFuture<'_, Revocations> {
        self.run(
            |f| {
                let s = f.read()?;
                Ok(Revocations {
                    tokens: s.revoked_tokens,
                    users: s.revoked_users,
                })
            },
            |_| Vec::new(),
        )
    }

    fn add_device(&self, device: DeviceRec) -> StoreFuture<'_, ()> {
        let id = device.id.clone();
        self.run(
            move |f| {
                f.update(|s| {
                    if let Some(d) = s
                        .devices
                        .iter()
                        .find(|d| d.credential_id == device.credential_id)
                    {
                        return Err(Refusal::CredentialExists {
                            device: d.id.clone(),
                            user: d.user.clone(),
                        }
                        .into());
                    }
                    s.devices.push(device);
                    Ok(())
                })
            },
            move |_| vec![Change::DeviceChanged(id)],
        )
    }

    fn update_device(
        &self,
        id: String,
        change: DeviceChange,
    ) -> StoreFuture<'_, (DeviceRec, DeviceRec)> {
        self.run(
            move |f| {
                f.update(|s| {
                    let d = find_device(s, &id)?;
                    let before = d.clone();
                    let mut after = d.clone();
                    change(&mut after)?;
                    *d = after.clone();
                    Ok((before, after))
                })
            },
            |(_, after)| vec![Change::DeviceChanged(after.id.clone())],
        )
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceRec>> {
        self.run(|f| Ok(f.read()?.devices), |_| Vec::new())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        let rx = self.tx.subscribe();
        self.start_poller();
        rx
    }
}

/// The store file's path in a state directory (for `check` and the operator guide).
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

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
