//! The gateway's state, behind one seam: [`StateStore`].
//!
//! Everything the gateway keeps beyond a process's life — enrolment tokens (hashes only), the
//! connector inventory and certificate serials, revoked session tokens and users, registered
//! devices and their WebAuthn credentials — and the sign-in state a browser may carry to
//! another replica between two steps — one-time CLI codes and WebAuthn ceremonies in flight —
//! is reached through the domain operations of [`StateStore`], each atomic on its own (one statement or transaction in a database, one
//! locked read-modify-write of the file today). Admin commands use the same trait. A
//! [`changes`](StateStore::changes) stream says what changed, whether this process or another
//! (an admin command, another replica) changed it, so revocations reach live sessions.
//!
//! Implementations: [`sql::SqlStore`] — SQLite (`STATE_DIR/state.db`, the embedded default)
//! or PostgreSQL (`[store] url`, for replicas) — and [`memory::MemoryStore`] (tests), which
//! keeps the whole state as tables and runs the domain rules (`rules`) under a lock. [`open`]
//! is the one place that chooses; nothing outside this module knows which it is. A
//! `state.json` left by an older version is imported into SQLite on first open
//! (`json_import`).

#[doc(hidden)]
pub mod conformance;
pub mod fallback;
pub mod feed;
mod json_import;
pub mod memory;
mod rules;
pub mod sql;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A failed store operation. [`StoreError::Refused`] is a domain answer (the store is
/// unchanged); the others are the store's own failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("state store {path} is corrupt: {message}")]
    Corrupt {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("state store: {0}")]
    Backend(String),
    /// The database does not answer (connection refused or lost, pool timed out, TLS
    /// failure): nothing was changed, and trying again later may work.
    #[error("the state store's database does not answer: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Why a domain operation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the enrolment token is not known to this gateway")]
    UnknownToken,
    #[error("the enrolment token was already used (by connector {0}); ask for a new one")]
    TokenUsed(String),
    #[error("the enrolment token expired; ask for a new one")]
    TokenExpired,
    #[error("connector {0} is no longer enrolled")]
    UnknownConnector(String),
    #[error("connector {0} is revoked")]
    ConnectorRevoked(String),
    #[error("the certificate presented is not the connector's current one")]
    Superseded,
    #[error("no such device: {0}")]
    UnknownDevice(String),
    #[error("device {0} is revoked")]
    DeviceRevoked(String),
    #[error("credential already registered as {device} (user {user})")]
    CredentialExists { device: String, user: String },
    /// Another live process runs as replica `0` (same `node_id`).
    #[error("another gateway process runs as replica {0} (same node_id, heartbeat within the last seconds); give each replica its own node_id")]
    ReplicaIdTaken(String),
    /// The table of sign-ins in flight (`cli codes`, `ceremonies`) is full, even after
    /// dropping the expired entries.
    #[error("too many sign-ins in progress: the {0} table is full")]
    SignInsFull(&'static str),
    /// No live sign-in ceremony by that id (unknown, expired or finished).
    #[error("unknown, expired or finished sign-in ceremony")]
    UnknownCeremony,
    /// The caller's own step (signing a CSR, building a record) failed.
    #[error("{0}")]
    Rejected(String),
}

/// A certificate the connector CA signed inside an enrolment or renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    /// Serial (hex).
    pub serial: String,
    /// Expiry, seconds since the epoch.
    pub not_after: u64,
}

/// Signs the certificate of a new connector of the given site: returns its id and certificate.
pub type EnrollIssuer = Box<dyn FnOnce(&str) -> Result<(String, Issued), String> + Send>;
/// Signs a renewed certificate for the given connector.
pub type RenewIssuer = Box<dyn FnOnce(&ConnectorRec) -> Result<Issued, String> + Send>;
/// Changes one device; `Err` leaves it as it was.
pub type DeviceChange = Box<dyn FnOnce(&mut DeviceRec) -> Result<(), Refusal> + Send>;
/// Changes one ceremony in flight; `Err` leaves it as it was.
pub type CeremonyChange = Box<dyn FnOnce(&mut CeremonyRec) -> Result<(), Refusal> + Send>;

/// What changed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    ConnectorEnrolled(String),
    ConnectorRenewed(String),
    ConnectorRevoked(String),
    TokenRevoked(String),
    UserRevoked(String),
    DeviceChanged(String),
    /// A replica joined or left.
    ReplicasChanged,
    /// A replica published or retired a session-token key.
    KeysChanged,
    /// Changed by someone else (another process or replica), detail unknown: reload it all.
    External,
}

/// Revoked session tokens and users.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revocations {
    pub tokens: Vec<RevokedToken>,
    pub users: Vec<RevokedUser>,
}

/// The gateway's state, as domain operations. Each operation is atomic: it happens entirely
/// or (on any error) not at all, also when several processes or replicas share the store.
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new enrolment token (forgetting ones expired over a week before `now`).
    fn create_enroll_token(&self, token: EnrollTokenRec, now: u64) -> StoreFuture<'_, ()>;
    /// Burns the unused, unexpired token whose secret hashes to `secret_sha256` and records
    /// the connector that `issue` signs for the token's site, in one step: two callers can
    /// never both use a token, and a failed `issue` leaves the token usable.
    /// Returns the connector and the token's public id.
    fn enroll_connector(
        &self,
        secret_sha256: String,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued, String)>;
    /// Replaces the certificate of connector `id`, which presented `serial`; the presented
    /// serial stays acceptable as `previous_serial`. Refused if revoked, or if `serial` is not
    /// the current one ([`Refusal::Superseded`]: only the current certificate renews).
    fn renew_connector(
        &self,
        id: String,
        serial: String,
        now: u64,
        issue: RenewIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued)>;
    /// Marks connector `id` revoked (idempotent).
    fn revoke_connector(&self, id: String, now: u64) -> StoreFuture<'_, ConnectorRec>;
    fn connector(&self, id: String) -> StoreFuture<'_, Option<ConnectorRec>>;
    fn connectors(&self) -> StoreFuture<'_, Vec<ConnectorRec>>;
    /// Records a revoked session token (forgetting revocations of tokens expired by `now`).
    fn revoke_token(&self, token: RevokedToken, now: u64) -> StoreFuture<'_, ()>;
    /// Revokes every device of `user` and refuses the user's tokens issued before `now`;
    /// returns the devices this revoked.
    fn revoke_user(&self, user: String, now: u64) -> StoreFuture<'_, Vec<DeviceRec>>;
    fn revocations(&self) -> StoreFuture<'_, Revocations>;
    /// Registers a device; refused if its WebAuthn credential is registered already.
    fn add_device(&self, device: DeviceRec) -> StoreFuture<'_, ()>;
    /// Applies `change` to device `id`; returns it before and after.
    fn update_device(
        &self,
        id: String,
        change: DeviceChange,
    ) -> StoreFuture<'_, (DeviceRec, DeviceRec)>;
    fn devices(&self) -> StoreFuture<'_, Vec<DeviceRec>>;

    // Sign-in state: short-lived, so a browser may reach another replica at each step. These
    // operations announce no [`Change`] (nothing a live session depends on changes).

    /// Keeps a one-time CLI code under the hash of the code (dropping expired ones first);
    /// refused with [`Refusal::SignInsFull`] when the table is still full.
    fn put_cli_code(&self, key_hash: String, rec: CliCodeRec, now: u64) -> StoreFuture<'_, ()>;
    /// Takes the code out (single use: gone whatever the caller does next); `None` if unknown
    /// or expired by `now`.
    fn take_cli_code(&self, key_hash: String, now: u64) -> StoreFuture<'_, Option<CliCodeRec>>;
    /// Keeps a new ceremony (dropping expired ones first); refused with
    /// [`Refusal::SignInsFull`] when the table is still full.
    fn put_ceremony(&self, id: String, rec: CeremonyRec, now: u64) -> StoreFuture<'_, ()>;
    /// The ceremony as stored (also an expired one not dropped yet: see
    /// [`CeremonyRec::live`]).
    fn ceremony(&self, id: String) -> StoreFuture<'_, Option<CeremonyRec>>;
    /// Applies `change` to the ceremony `id`, live at `now`; returns it before and after.
    /// Refused with [`Refusal::UnknownCeremony`] if there is none.
    fn update_ceremony(
        &self,
        id: String,
        now: u64,
        change: CeremonyChange,
    ) -> StoreFuture<'_, (CeremonyRec, CeremonyRec)>;
    /// Takes the ceremony out (gone whatever the caller does next); `None` if unknown or
    /// expired by `now`.
    fn take_ceremony(&self, id: String, now: u64) -> StoreFuture<'_, Option<CeremonyRec>>;

    // Replicas sharing the store.

    /// Records that replica `rec.id` (process `rec.instance`) is alive at `now`; refused with
    /// [`Refusal::ReplicaIdTaken`] if another process holds that id with a heartbeat newer than
    /// `now - live_for`. Announces [`Change::ReplicasChanged`] when the replica (re)joins.
    fn heartbeat(&self, rec: ReplicaRec, now: u64, live_for: u64) -> StoreFuture<'_, ()>;
    /// Removes replica `id` if `instance` still holds it (a clean stop).
    fn leave(&self, id: String, instance: String) -> StoreFuture<'_, ()>;
    /// Every registered replica, live or not (judge by `heartbeat`).
    fn replicas(&self) -> StoreFuture<'_, Vec<ReplicaRec>>;
    /// Publishes a session-token verifying key of a replica (idempotent); the replica's other
    /// keys without an expiry get `now + retire_after`; expired keys are forgotten.
    fn publish_key(&self, key: PublishedKey, now: u64, retire_after: u64) -> StoreFuture<'_, ()>;
    /// The published keys not expired by `now`.
    fn published_keys(&self, now: u64) -> StoreFuture<'_, Vec<PublishedKey>>;
    /// The shared value `name` (the deployment id): the stored one, or `value` stored now if
    /// there is none yet.
    fn shared_value(&self, name: String, value: String) -> StoreFuture<'_, String>;

    /// Changes from now on. A receiver that falls behind gets `Lagged` and should reload.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Whether the store answers, and since when it has not (for the staleness rule,
    /// `/readyz` and the metrics). Known only while someone follows [`changes`](Self::changes).
    fn health(&self) -> StoreHealth {
        StoreHealth::Up
    }
}

/// What a store knows about its own link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHealth {
    Up,
    /// No answer for this long.
    Down(std::time::Duration),
}

/// A shared store.
pub type SharedStore = Arc<dyn StateStore>;

/// Every record of the store, in the format of the old `state.json` (`state export`).
pub type Snapshot = rules::Tables;

/// The store as opened.
pub struct Opened {
    pub store: SharedStore,
    /// The SQL store behind `store`, for its health.
    pub sql: Arc<sql::SqlStore>,
    /// An old `state.json` was imported by this open: the caller audits it.
    pub migrated: Option<JsonMigration>,
}

/// The import of an old `state.json` into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonMigration {
    /// Where the old file was moved (kept as a backup, mode 0600).
    pub backup: PathBuf,
    /// What was imported ("2 connectors, 3 devices, …").
    pub summary: String,
}

/// Opens the configured store: PostgreSQL if `[store] url` says so, else SQLite in the
/// state directory (importing an old `state.json` first).
pub async fn open(config: &StoreConfig, state_dir: &Path) -> Result<Opened, StoreError> {
    let io = |source| StoreError::Io {
        path: state_dir.to_owned(),
        source,
    };
    postern_net::fsutil::private_dir(state_dir).map_err(io)?;
    let (url, pool) = match &config.postgres {
        Some(pg) => (pg.url().map_err(StoreError::Backend)?, pg.max_connections),
        // One connection: SQLite has one writer anyway, and the change feed's
        // `data_version` then sees only other processes' commits.
        None => (sqlite_url(state_dir).map_err(io)?, 1),
    };
    // SQLite: one opener at a time per state directory (an exclusive `flock` on the directory
    // itself), so two processes starting on a new file (the gateway and an admin command, or
    // the demo's two handles) do not both migrate it or both import a `state.json`; SQLite
    // would refuse the second at once. PostgreSQL's migrator takes an advisory lock instead.
    let _opening = match &config.postgres {
        None => Some(lock_dir(state_dir).await.map_err(io)?),
        Some(_) => None,
    };
    let store = Arc::new(sql::SqlStore::connect(&url, pool).await?);
    let migrated = match &config.postgres {
        None => json_import::run(&store, state_dir).await?,
        Some(_) => None,
    };
    Ok(Opened {
        store: store.clone(),
        sql: store,
        migrated,
    })
}

/// An exclusive `flock` on the directory `dir`, held until the file is dropped.
async fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&dir)?;
        f.lock()?;
        Ok(f)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// `sqlite://STATE_DIR/state.db`, the file made 0600 before SQLite opens it (its `-wal` and
/// `-shm` files take the same mode).
fn sqlite_url(state_dir: &Path) -> std::io::Result<sql::DbUrl> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = state_dir.join("state.db");
    // Never open (and close) an existing database file here: closing any descriptor of it
    // drops the POSIX locks SQLite holds on it in this process (another store handle of the
    // same process, as in the demo). A new file is made 0600 before SQLite sees it.
    match std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Err(e) => return Err(e),
    }
    let text = path.to_str().ok_or_else(|| {
        std::io::Error::other(format!(
            "state directory {} is not UTF-8",
            state_dir.display()
        ))
    })?;
    let escaped: String = text
        .chars()
        .map(|c| match c {
            '%' | '?' | '#' | ' ' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    Ok(sql::DbUrl(format!("sqlite://{escaped}?mode=rwc")))
}

/// Where the state lives (`[store]` in gateway.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `None`: SQLite in the state directory.
    pub postgres: Option<PostgresConfig>,
    /// How long new sign-ins and sessions may go on from the last known state while the
    /// database does not answer (then they are refused).
    pub max_staleness: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            postgres: None,
            max_staleness: std::time::Duration::from_secs(60),
        }
    }
}

/// A PostgreSQL store shared by replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db?sslmode=…`, without a password.
    pub url: String,
    /// Where the password comes from (never the configuration file).
    pub password: Option<crate::config::SecretSource>,
    /// CA certificate(s) (PEM) the database's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Connections per replica.
    pub max_connections: u32,
}

impl PostgresConfig {
    /// The URL with the password and the CA in it (kept in memory only, never printed).
    pub(crate) fn url(&self) -> Result<sql::DbUrl, String> {
        let mut url = url::Url::parse(&self.url).map_err(|e| format!("store.url: {e}"))?;
        if let Some(p) = &self.password {
            let secret = crate::config::read_secret(p, "store.password")?;
            url.set_password(Some(&secret.0))
                .map_err(|_| "store.url: cannot carry a password".to_owned())?;
        }
        if let Some(ca) = &self.ca_file {
            let ca = ca
                .to_str()
                .ok_or_else(|| format!("store.ca_file {} is not UTF-8", ca.display()))?;
            url.query_pairs_mut().append_pair("sslrootcert", ca);
        }
        Ok(sql::DbUrl(url.into()))
    }
}

/// One enrolment token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrollTokenRec {
    /// Short public id for listing and audit (never the secret).
    pub id: String,
    pub secret_sha256: String,
    pub site: String,
    pub created: u64,
    pub expires: u64,
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub used_by: Option<String>,
}

/// One enrolled connector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorRec {
    pub id: String,
    pub site: String,
    /// Serial of the current client certificate (hex).
    pub serial: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub enrolled: u64,
    pub not_after: u64,
    #[serde(default)]
    pub revoked: Option<u64>,
    /// Serial of the certificate before the last renewal: links made with it stay up and it may
    /// still connect until it expires (so a connector that renewed but crashed before installing
    /// its new certificate is not locked out).
    #[serde(default)]
    pub previous_serial: Option<String>,
    /// Last certificate renewal (seconds since the epoch).
    #[serde(default)]
    pub renewed: Option<u64>,
}

impl ConnectorRec {
    /// Whether a certificate with `serial` is this connector's current or previous one.
    pub fn accepts_serial(&self, serial: &str) -> bool {
        self.serial == serial || self.previous_serial.as_deref() == Some(serial)
    }
}

/// A session token revoked before its expiry (sign-out, admin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedToken {
    pub jti: String,
    /// The token's own expiry: after it, the entry can be forgotten.
    pub exp: u64,
    pub user: String,
    pub revoked: u64,
}

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Registered, waiting for `device approve` (manual approval).
    Pending,
    /// May sign in.
    Active,
    /// Its sign count went backwards (possibly cloned): refused until approved again.
    Suspect,
    /// Revoked: refused for good; its live sessions were ended.
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Suspect => "suspect",
            DeviceStatus::Revoked => "revoked",
        }
    }
}

/// One registered device: a WebAuthn credential of one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRec {
    /// `dev-` + 12 hex digits.
    pub id: String,
    pub user: String,
    /// What the clinician called it ("home laptop").
    pub name: String,
    pub status: DeviceStatus,
    /// WebAuthn credential id, base64url.
    pub credential_id: String,
    /// Authenticator model (AAGUID; all zeros when the authenticator does not say).
    pub aaguid: String,
    /// Last sign count seen (0 for authenticators without a counter).
    pub sign_count: u32,
    /// User verification (PIN, biometric) happened at registration.
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backup_state: bool,
    #[serde(default)]
    pub transports: Vec<String>,
    pub created: u64,
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub approved: Option<u64>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub revoked: Option<u64>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// The last posture report signed by this device (canonical JSON).
    #[serde(default)]
    pub posture: Option<postern_proto::posture::PostureReport>,
    /// The credential as webauthn-rs keeps it (public key, counter, flags).
    pub passkey: serde_json::Value,
}

/// Whether two user names (the IdP's `user_claim` values) name the same user: compared
/// ignoring ASCII case everywhere (policy, revocation, device ownership, audit search), since
/// IdPs and operators do not agree on the case of e-mail addresses.
pub fn same_user(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// A user whose access was revoked: tokens issued before `before` are refused. `user` is
/// kept ASCII-lowercased.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedUser {
    pub user: String,
    pub before: u64,
}

/// A gateway replica registered in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaRec {
    /// The replica's `node_id`.
    pub id: String,
    /// Random per process.
    pub instance: String,
    /// Where clients reach it (its client listener).
    pub client_addr: String,
    /// Where connectors dial it (`host:port`).
    pub connector_addrs: Vec<String>,
    pub version: String,
    pub started: u64,
    pub heartbeat: u64,
}

/// A session-token verifying key published by a replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishedKey {
    pub kid: String,
    /// SPKI PEM (Ed25519).
    pub public_pem: String,
    pub replica: String,
    pub created: u64,
    /// Verifies until then (set when the replica moved to a newer key).
    pub expires: Option<u64>,
}

/// A one-time code `postern login` redeems for its session token (keyed by the code's
/// SHA-256; the code itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CliCodeRec {
    /// base64url(SHA-256(verifier)) of the CLI's PKCE pair.
    pub challenge: String,
    /// The session token the code stands for.
    pub token: String,
    /// Seconds since the epoch; the code is dead from then on.
    pub expires: u64,
}

impl CliCodeRec {
    /// Whether the code may still be redeemed at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires > now
    }
}

/// A WebAuthn ceremony in flight: who signed in at the IdP, waiting for the device step. The
/// sign-in types are kept as JSON (as `authn` writes them), so the store does not depend on
/// the sign-in code or webauthn-rs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CeremonyRec {
    /// Who signed in, as the IdP asserted.
    pub identity: serde_json::Value,
    /// The CLI's side of the sign-in, if it came from `postern login`.
    #[serde(default)]
    pub cli: Option<serde_json::Value>,
    /// The posture report the challenge binds.
    #[serde(default)]
    pub posture: Option<postern_proto::posture::PostureReport>,
    /// The outstanding challenge (webauthn-rs registration or authentication state and the
    /// gateway's nonce); `None` when none is outstanding.
    #[serde(default)]
    pub pending: Option<serde_json::Value>,
    /// Seconds since the epoch; the ceremony is dead from then on.
    pub expires: u64,
}

impl CeremonyRec {
    /// Whether the ceremony may still go on at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires > now
    }
}
