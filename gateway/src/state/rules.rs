//! The domain rules of the store, on the whole state held as [`Tables`], for the in-memory
//! store (tests) — a token burns once, a failed signature leaves it usable, a revoked connector
//! cannot renew, a credential registers once, a CLI code or a ceremony is taken once and only
//! while it lives. The SQL store states the same rules as statements; `conformance` runs one
//! contract on both, so the two cannot drift apart unnoticed. [`Tables`] is also the JSON
//! format of the old `state.json` and of `state export`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{
    CeremonyChange, CeremonyRec, Change, CliCodeRec, ConnectorRec, DeviceChange, DeviceRec,
    DeviceStatus, EnrollIssuer, EnrollTokenRec, Issued, PublishedKey, Refusal, RenewIssuer,
    ReplicaRec, Revocations, RevokedToken, RevokedUser, StateStore, StoreError, StoreFuture,
};

/// Enrolment tokens expired longer ago than this are forgotten.
pub(super) const TOKEN_RETENTION: u64 = 7 * 86400;
/// Most one-time CLI codes outstanding at once.
pub(super) const MAX_CLI_CODES: usize = 10_000;
/// Most WebAuthn ceremonies in flight at once.
pub(super) const MAX_CEREMONIES: usize = 10_000;

/// The whole state (also the format of the old `state.json` and of `state export`, so its
/// field names are fixed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    #[serde(default)]
    pub(super) enroll_tokens: Vec<EnrollTokenRec>,
    #[serde(default)]
    pub(super) connectors: Vec<ConnectorRec>,
    #[serde(default)]
    pub(super) revoked_tokens: Vec<RevokedToken>,
    #[serde(default)]
    pub(super) devices: Vec<DeviceRec>,
    #[serde(default)]
    pub(super) revoked_users: Vec<RevokedUser>,
    /// One-time CLI codes by the SHA-256 (hex) of the code. Left out of the file when empty,
    /// so a store without sign-ins in flight stays readable by an older gateway.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) cli_codes: BTreeMap<String, CliCodeRec>,
    /// WebAuthn ceremonies in flight by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) ceremonies: BTreeMap<String, CeremonyRec>,
    /// Replicas, their token keys and shared values: the running set, never exported.
    #[serde(skip)]
    pub(super) replicas: Vec<ReplicaRec>,
    #[serde(skip)]
    pub(super) token_keys: Vec<PublishedKey>,
    #[serde(skip)]
    pub(super) shared: BTreeMap<String, String>,
}

impl Tables {
    pub fn create_enroll_token(&mut self, token: EnrollTokenRec, now: u64) {
        self.enroll_tokens
            .retain(|t| t.expires + TOKEN_RETENTION > now);
        self.enroll_tokens.push(token);
    }

    pub fn enroll_connector(
        &mut self,
        secret_sha256: &str,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> Result<(ConnectorRec, Issued, String), StoreError> {
        let tok = self
            .enroll_tokens
            .iter_mut()
            .find(|t| {
                postern_proto::ids::ct_eq(t.secret_sha256.as_bytes(), secret_sha256.as_bytes())
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
        self.connectors.push(rec.clone());
        Ok((rec, issued, token_id))
    }

    fn connector_mut(&mut self, id: &str) -> Result<&mut ConnectorRec, StoreError> {
        self.connectors
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| Refusal::UnknownConnector(id.to_owned()).into())
    }

    pub fn renew_connector(
        &mut self,
        id: &str,
        serial: String,
        now: u64,
        issue: RenewIssuer,
    ) -> Result<(ConnectorRec, Issued), StoreError> {
        let c = self.connector_mut(id)?;
        if c.revoked.is_some() {
            return Err(Refusal::ConnectorRevoked(id.to_owned()).into());
        }
        // Only the current certificate renews. The previous one may still connect until it
        // expires (links made with it stay up), but letting it renew would let a copy of an
        // old key outlive the rotation and push the real connector's certificate out.
        if c.serial != serial {
            return Err(Refusal::Superseded.into());
        }
        let issued = issue(c).map_err(Refusal::Rejected)?;
        // The presented certificate is the one live links use; keep it acceptable.
        c.previous_serial = Some(std::mem::replace(&mut c.serial, issued.serial.clone()));
        c.not_after = issued.not_after;
        c.renewed = Some(now);
        Ok((c.clone(), issued))
    }

    pub fn revoke_connector(&mut self, id: &str, now: u64) -> Result<ConnectorRec, StoreError> {
        let c = self.connector_mut(id)?;
        c.revoked.get_or_insert(now);
        Ok(c.clone())
    }

    pub fn connector(&self, id: &str) -> Option<ConnectorRec> {
        self.connectors.iter().find(|c| c.id == id).cloned()
    }

    pub fn connectors(&self) -> Vec<ConnectorRec> {
        self.connectors.clone()
    }

    pub fn revoke_token(&mut self, token: RevokedToken, now: u64) {
        self.revoked_tokens.retain(|t| t.exp > now);
        if !self.revoked_tokens.iter().any(|t| t.jti == token.jti) {
            self.revoked_tokens.push(token);
        }
    }

    pub fn revoke_user(&mut self, user: &str, now: u64) -> Vec<DeviceRec> {
        let mut revoked = Vec::new();
        for d in self
            .devices
            .iter_mut()
            .filter(|d| super::same_user(&d.user, user))
        {
            if d.status != DeviceStatus::Revoked {
                d.status = DeviceStatus::Revoked;
                d.revoked = Some(now);
                d.revoked_reason = Some("user revoked".into());
                revoked.push(d.clone());
            }
        }
        self.revoked_users
            .retain(|u| !super::same_user(&u.user, user));
        self.revoked_users.push(RevokedUser {
            user: user.to_ascii_lowercase(),
            before: now,
        });
        revoked
    }

    pub fn revocations(&self) -> Revocations {
        Revocations {
            tokens: self.revoked_tokens.clone(),
            users: self.revoked_users.clone(),
        }
    }

    pub fn add_device(&mut self, device: DeviceRec) -> Result<(), StoreError> {
        if let Some(d) = self
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
        self.devices.push(device);
        Ok(())
    }

    pub fn update_device(
        &mut self,
        id: &str,
        change: DeviceChange,
    ) -> Result<(DeviceRec, DeviceRec), StoreError> {
        let d = self
            .devices
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| Refusal::UnknownDevice(id.to_owned()))?;
        let before = d.clone();
        let mut after = d.clone();
        change(&mut after)?;
        *d = after.clone();
        Ok((before, after))
    }

    pub fn devices(&self) -> Vec<DeviceRec> {
        self.devices.clone()
    }

    pub fn put_cli_code(
        &mut self,
        key_hash: String,
        rec: CliCodeRec,
        now: u64,
    ) -> Result<(), StoreError> {
        self.cli_codes.retain(|_, c| c.live(now));
        if self.cli_codes.len() >= MAX_CLI_CODES {
            return Err(Refusal::SignInsFull("cli codes").into());
        }
        self.cli_codes.insert(key_hash, rec);
        Ok(())
    }

    pub fn take_cli_code(&mut self, key_hash: &str, now: u64) -> Option<CliCodeRec> {
        self.cli_codes.remove(key_hash).filter(|c| c.live(now))
    }

    pub fn put_ceremony(
        &mut self,
        id: String,
        rec: CeremonyRec,
        now: u64,
    ) -> Result<(), StoreError> {
        self.ceremonies.retain(|_, c| c.live(now));
        if self.ceremonies.len() >= MAX_CEREMONIES {
            return Err(Refusal::SignInsFull("ceremonies").into());
        }
        self.ceremonies.insert(id, rec);
        Ok(())
    }

    pub fn ceremony(&self, id: &str) -> Option<CeremonyRec> {
        self.ceremonies.get(id).cloned()
    }

    pub fn update_ceremony(
        &mut self,
        id: &str,
        now: u64,
        change: CeremonyChange,
    ) -> Result<(CeremonyRec, CeremonyRec), StoreError> {
        let c = self
            .ceremonies
            .get_mut(id)
            .filter(|c| c.live(now))
            .ok_or(Refusal::UnknownCeremony)?;
        let before = c.clone();
        let mut after = c.clone();
        change(&mut after)?;
        *c = after.clone();
        Ok((before, after))
    }

    pub fn take_ceremony(&mut self, id: &str, now: u64) -> Option<CeremonyRec> {
        self.ceremonies.remove(id).filter(|c| c.live(now))
    }

    /// Returns whether the replica (re)joined.
    pub fn heartbeat(
        &mut self,
        rec: ReplicaRec,
        now: u64,
        live_for: u64,
    ) -> Result<bool, StoreError> {
        match self.replicas.iter_mut().find(|r| r.id == rec.id) {
            Some(r) if r.instance == rec.instance => {
                r.heartbeat = now;
                Ok(false)
            }
            Some(r) if r.heartbeat + live_for > now => Err(Refusal::ReplicaIdTaken(rec.id).into()),
            Some(r) => {
                *r = rec;
                Ok(true)
            }
            None => {
                self.replicas.push(rec);
                Ok(true)
            }
        }
    }

    pub fn leave(&mut self, id: &str, instance: &str) -> bool {
        let before = self.replicas.len();
        self.replicas
            .retain(|r| !(r.id == id && r.instance == instance));
        self.replicas.len() != before
    }

    pub fn publish_key(&mut self, key: PublishedKey, now: u64, retire_after: u64) {
        self.token_keys
            .retain(|k| k.expires.is_none_or(|e| e > now));
        for k in &mut self.token_keys {
            if k.replica == key.replica && k.kid != key.kid && k.expires.is_none() {
                k.expires = Some(now + retire_after);
            }
        }
        if !self.token_keys.iter().any(|k| k.kid == key.kid) {
            self.token_keys.push(key);
        }
    }

    pub fn shared_value(&mut self, name: String, value: String) -> String {
        self.shared.entry(name).or_insert(value).clone()
    }
}

/// A store that keeps [`Tables`] itself and runs the rules under its own lock. Every such
/// backend is a [`StateStore`] through the implementation below, which also announces what
/// each operation changed.
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` on a consistent snapshot.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> T + Send + 'static,
    ) -> StoreFuture<'_, T>;
    /// Runs `f` as one atomic change: on `Err` nothing changes.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T>;
    /// Where changes are announced.
    fn sender(&self) -> &broadcast::Sender<Change>;
    /// A new listener (a backend may start watching for other processes' changes here).
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender().subscribe()
    }
}

/// Runs a write, then announces what it changed.
fn write_and_announce<B: Backend, T: Send + 'static>(
    b: &B,
    f: impl FnOnce(&mut Tables) -> Result<T, StoreError> + Send + 'static,
    changes: impl FnOnce(&T) -> Vec<Change> + Send + 'static,
) -> StoreFuture<'_, T> {
    let tx = b.sender().clone();
    let write = b.write(f);
    Box::pin(async move {
        let out = write.await?;
        for c in changes(&out) {
            // No listener is not an error.
            let _ = tx.send(c);
        }
        Ok(out)
    })
}

impl<B: Backend> StateStore for B {
    fn create_enroll_token(&self, token: EnrollTokenRec, now: u64) -> StoreFuture<'_, ()> {
        self.write(move |t| {
            t.create_enroll_token(token, now);
            Ok(())
        })
    }

    fn enroll_connector(
        &self,
        secret_sha256: String,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued, String)> {
        write_and_announce(
            self,
            move |t| t.enroll_connector(&secret_sha256, hostname, now, issue),
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
        write_and_announce(
            self,
            move |t| t.renew_connector(&id, serial, now, issue),
            |(rec, _)| vec![Change::ConnectorRenewed(rec.id.clone())],
        )
    }

    fn revoke_connector(&self, id: String, now: u64) -> StoreFuture<'_, ConnectorRec> {
        write_and_announce(
            self,
            move |t| t.revoke_connector(&id, now),
            |c| vec![Change::ConnectorRevoked(c.id.clone())],
        )
    }

    fn connector(&self, id: String) -> StoreFuture<'_, Option<ConnectorRec>> {
        self.read(move |t| t.connector(&id))
    }

    fn connectors(&self) -> StoreFuture<'_, Vec<ConnectorRec>> {
        self.read(|t| t.connectors())
    }

    fn revoke_token(&self, token: RevokedToken, now: u64) -> StoreFuture<'_, ()> {
        let jti = token.jti.clone();
        write_and_announce(
            self,
            move |t| {
                t.revoke_token(token, now);
                Ok(())
            },
            move |_| vec![Change::TokenRevoked(jti)],
        )
    }

    fn revoke_user(&self, user: String, now: u64) -> StoreFuture<'_, Vec<DeviceRec>> {
        let who = user.clone();
        write_and_announce(
            self,
            move |t| Ok(t.revoke_user(&user, now)),
            move |devices| {
                let mut v = vec![Change::UserRevoked(who)];
                v.extend(devices.iter().map(|d| Change::DeviceChanged(d.id.clone())));
                v
            },
        )
    }

    fn revocations(&self) -> StoreFuture<'_, Revocations> {
        self.read(|t| t.revocations())
    }

    fn add_device(&self, device: DeviceRec) -> StoreFuture<'_, ()> {
        let id = device.id.clone();
        write_and_announce(
            self,
            move |t| t.add_device(device),
            move |_| vec![Change::DeviceChanged(id)],
        )
    }

    fn update_device(
        &self,
        id: String,
        change: DeviceChange,
    ) -> StoreFuture<'_, (DeviceRec, DeviceRec)> {
        write_and_announce(
            self,
            move |t| t.update_device(&id, change),
            |(_, after)| vec![Change::DeviceChanged(after.id.clone())],
        )
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceRec>> {
        self.read(|t| t.devices())
    }

    // Sign-in state is written without announcing a change: followers of `changes()` (the
    // revocation follower reloads revocations and the device table on every change) have
    // nothing to do for it.

    fn put_cli_code(&self, key_hash: String, rec: CliCodeRec, now: u64) -> StoreFuture<'_, ()> {
        self.write(move |t| t.put_cli_code(key_hash, rec, now))
    }

    fn take_cli_code(&self, key_hash: String, now: u64) -> StoreFuture<'_, Option<CliCodeRec>> {
        self.write(move |t| Ok(t.take_cli_code(&key_hash, now)))
    }

    fn put_ceremony(&self, id: String, rec: CeremonyRec, now: u64) -> StoreFuture<'_, ()> {
        self.write(move |t| t.put_ceremony(id, rec, now))
    }

    fn ceremony(&self, id: String) -> StoreFuture<'_, Option<CeremonyRec>> {
        self.read(move |t| t.ceremony(&id))
    }

    fn update_ceremony(
        &self,
        id: String,
        now: u64,
        change: CeremonyChange,
    ) -> StoreFuture<'_, (CeremonyRec, CeremonyRec)> {
        self.write(move |t| t.update_ceremony(&id, now, change))
    }

    fn take_ceremony(&self, id: String, now: u64) -> StoreFuture<'_, Option<CeremonyRec>> {
        self.write(move |t| Ok(t.take_ceremony(&id, now)))
    }

    fn heartbeat(&self, rec: ReplicaRec, now: u64, live_for: u64) -> StoreFuture<'_, ()> {
        let tx = self.sender().clone();
        let write = self.write(move |t| t.heartbeat(rec, now, live_for));
        Box::pin(async move {
            if write.await? {
                let _ = tx.send(Change::ReplicasChanged);
            }
            Ok(())
        })
    }

    fn leave(&self, id: String, instance: String) -> StoreFuture<'_, ()> {
        let tx = self.sender().clone();
        let write = self.write(move |t| Ok(t.leave(&id, &instance)));
        Box::pin(async move {
            if write.await? {
                let _ = tx.send(Change::ReplicasChanged);
            }
            Ok(())
        })
    }

    fn replicas(&self) -> StoreFuture<'_, Vec<ReplicaRec>> {
        self.read(|t| t.replicas.clone())
    }

    fn publish_key(&self, key: PublishedKey, now: u64, retire_after: u64) -> StoreFuture<'_, ()> {
        write_and_announce(
            self,
            move |t| {
                t.publish_key(key, now, retire_after);
                Ok(())
            },
            |_| vec![Change::KeysChanged],
        )
    }

    fn published_keys(&self, now: u64) -> StoreFuture<'_, Vec<PublishedKey>> {
        self.read(move |t| {
            t.token_keys
                .iter()
                .filter(|k| k.expires.is_none_or(|e| e > now))
                .cloned()
                .collect()
        })
    }

    fn shared_value(&self, name: String, value: String) -> StoreFuture<'_, String> {
        self.write(move |t| Ok(t.shared_value(name, value)))
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(expires: u64) -> CliCodeRec {
        CliCodeRec {
            challenge: "ch".into(),
            token: "tok".into(),
            expires,
        }
    }

    fn ceremony(expires: u64) -> CeremonyRec {
        CeremonyRec {
            identity: serde_json::json!({"user": "ann"}),
            cli: None,
            posture: None,
            pending: None,
            expires,
        }
    }

    fn renewal(serial: &'static str) -> RenewIssuer {
        Box::new(move |_: &ConnectorRec| {
            Ok(Issued {
                cert_pem: String::new(),
                serial: serial.into(),
                not_after: 1_000,
            })
        })
    }

    #[test]
    fn only_the_current_certificate_renews() {
        let mut t = Tables::default();
        t.connectors.push(ConnectorRec {
            id: "truro-1".into(),
            site: "truro".into(),
            serial: "s1".into(),
            hostname: None,
            enrolled: 0,
            not_after: 100,
            revoked: None,
            previous_serial: None,
            renewed: None,
        });
        let (rec, _) = t
            .renew_connector("truro-1", "s1".into(), 10, renewal("s2"))
            .unwrap();
        assert_eq!(
            (rec.serial.as_str(), rec.previous_serial.as_deref()),
            ("s2", Some("s1"))
        );
        // The superseded certificate (still allowed to connect) may not renew: nothing changes.
        let err = t
            .renew_connector("truro-1", "s1".into(), 20, renewal("s3"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(Refusal::Superseded)),
            "{err:?}"
        );
        let rec = t.connector("truro-1").unwrap();
        assert_eq!(
            (rec.serial.as_str(), rec.previous_serial.as_deref()),
            ("s2", Some("s1"))
        );
        assert!(rec.accepts_serial("s2"));
        // The current one still renews.
        let (rec, _) = t
            .renew_connector("truro-1", "s2".into(), 30, renewal("s3"))
            .unwrap();
        assert_eq!(
            (rec.serial.as_str(), rec.previous_serial.as_deref()),
            ("s3", Some("s2"))
        );
    }

    #[test]
    fn a_cli_code_is_taken_once_and_only_while_it_lives() {
        let mut t = Tables::default();
        t.put_cli_code("k1".into(), code(160), 100).unwrap();
        t.put_cli_code("k2".into(), code(160), 100).unwrap();
        assert_eq!(t.take_cli_code("k1", 159), Some(code(160)));
        assert_eq!(t.take_cli_code("k1", 159), None, "single use");
        // Expired by the `now` passed in: none, and gone.
        assert_eq!(t.take_cli_code("k2", 160), None);
        assert!(t.cli_codes.is_empty());
        assert_eq!(t.take_cli_code("unknown", 0), None);
    }

    #[test]
    fn a_full_table_refuses_after_dropping_the_expired() {
        let mut t = Tables::default();
        for i in 0..MAX_CLI_CODES {
            t.put_cli_code(format!("k{i}"), code(if i == 0 { 50 } else { 200 }), 10)
                .unwrap();
        }
        let e = t.put_cli_code("more".into(), code(200), 10).unwrap_err();
        assert!(matches!(
            e,
            StoreError::Refused(Refusal::SignInsFull("cli codes"))
        ));
        // At 50 the first one has expired: room for one more, and no more.
        t.put_cli_code("more".into(), code(200), 50).unwrap();
        assert!(t.put_cli_code("again".into(), code(200), 50).is_err());

        for i in 0..MAX_CEREMONIES {
            t.put_ceremony(format!("c{i}"), ceremony(if i == 0 { 50 } else { 700 }), 10)
                .unwrap();
        }
        let e = t
            .put_ceremony("more".into(), ceremony(700), 10)
            .unwrap_err();
        assert!(matches!(
            e,
            StoreError::Refused(Refusal::SignInsFull("ceremonies"))
        ));
        t.put_ceremony("more".into(), ceremony(700), 50).unwrap();
        assert_eq!(t.ceremonies.len(), MAX_CEREMONIES);
    }

    #[test]
    fn a_ceremony_changes_while_it_lives_and_is_taken_once() {
        let mut t = Tables::default();
        t.put_ceremony("c1".into(), ceremony(700), 100).unwrap();
        let (before, after) = t
            .update_ceremony(
                "c1",
                699,
                Box::new(|c| {
                    c.pending = Some(serde_json::json!({"kind": "assert"}));
                    Ok(())
                }),
            )
            .unwrap();
        assert_eq!(before.pending, None);
        assert!(after.pending.is_some());
        // A refused change leaves it as it was.
        let e = t
            .update_ceremony(
                "c1",
                699,
                Box::new(|c| {
                    c.pending = None;
                    Err(Refusal::Rejected("no".into()))
                }),
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(Refusal::Rejected(_))));
        assert!(t.ceremony("c1").unwrap().pending.is_some());
        // Expired by the `now` passed in: no change, no take.
        let e = t
            .update_ceremony("c1", 700, Box::new(|_| Ok(())))
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(Refusal::UnknownCeremony)));
        assert_eq!(t.take_ceremony("c1", 700), None);
        assert_eq!(
            t.ceremony("c1"),
            None,
            "an expired ceremony is dropped when taken"
        );

        t.put_ceremony("c2".into(), ceremony(700), 100).unwrap();
        assert_eq!(t.take_ceremony("c2", 100), Some(ceremony(700)));
        assert_eq!(t.take_ceremony("c2", 100), None, "single use");
        let e = t
            .update_ceremony("c2", 100, Box::new(|_| Ok(())))
            .unwrap_err();
        assert!(matches!(e, StoreError::Refused(Refusal::UnknownCeremony)));
    }

    #[test]
    fn a_state_file_without_sign_in_tables_still_loads_and_empty_ones_are_left_out() {
        // A state.json as written before sign-in state moved into the store.
        let old = r#"{"enroll_tokens": [], "connectors": [], "revoked_tokens": [],
                      "devices": [], "revoked_users": [{"user": "u", "before": 5}]}"#;
        let t: Tables = serde_json::from_str(old).unwrap();
        assert!(t.cli_codes.is_empty() && t.ceremonies.is_empty());
        assert_eq!(t.revoked_users.len(), 1);
        let out = serde_json::to_value(&t).unwrap();
        assert!(out.get("cli_codes").is_none() && out.get("ceremonies").is_none());
        // Unknown fields are still refused.
        assert!(serde_json::from_str::<Tables>(r#"{"surprise": 1}"#).is_err());
        // And the new tables round-trip.
        let mut t = t;
        t.put_cli_code("k".into(), code(9), 1).unwrap();
        t.put_ceremony("c".into(), ceremony(9), 1).unwrap();
        let back: Tables = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.cli_codes.get("k"), Some(&code(9)));
        assert_eq!(back.ceremonies.get("c"), Some(&ceremony(9)));
    }
}
