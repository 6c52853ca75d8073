//! The SQL store: SQLite (the embedded default, `STATE_DIR/state.db`) and PostgreSQL (for
//! replicas), one implementation over sqlx's `Any` driver with runtime queries that both
//! dialects accept (`$N` parameters, `RETURNING`, `ON CONFLICT`).
//!
//! Atomicity: every operation is one statement or one transaction. PostgreSQL runs at READ
//! COMMITTED and locks the rows it reads to change (`FOR UPDATE`); SQLite takes the write
//! lock when the transaction begins (`BEGIN IMMEDIATE`), so two processes never interleave a
//! read-modify-write. An enrolment token is burnt by one conditional `UPDATE … RETURNING`:
//! of two replicas presenting it at the same instant, the second waits for the first's row
//! lock, then finds it used.
//!
//! Schema: versioned migrations (`gateway/migrations`, shared by both dialects), run at open;
//! a database whose schema is newer than this build knows is refused.
//!
//! Changes (see [`feed`](super::feed)): this handle's own changes are announced at once; on
//! PostgreSQL each is also sent with `NOTIFY` in its transaction, so every other replica (and
//! the gateway, after an admin command) hears it when it commits.

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};
use tokio::sync::broadcast;

use super::feed::{Feed, NOTIFY_CHANNEL};
use super::rules::{MAX_CEREMONIES, MAX_CLI_CODES, TOKEN_RETENTION};
use super::{
    CeremonyChange, CeremonyRec, Change, CliCodeRec, ConnectorRec, DeviceChange, DeviceRec,
    EnrollIssuer, EnrollTokenRec, Issued, PublishedKey, Refusal, RenewIssuer, ReplicaRec,
    Revocations, RevokedToken, RevokedUser, StateStore, StoreError, StoreFuture,
};

/// The schema migrations this build knows, oldest first (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "state", include_str!("../../migrations/0001_state.sql")),
    (
        2,
        "replicas",
        include_str!("../../migrations/0002_replicas.sql"),
    ),
];

/// Which SQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database URL with its password: never printed.
#[derive(Clone)]
pub struct DbUrl(pub(super) String);

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbUrl(***)")
    }
}

/// The SQL-backed [`StateStore`].
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    feed: Arc<Feed>,
}

fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(bounded(&e.to_string())),
        e => StoreError::Backend(bounded(&e.to_string())),
    }
}

/// Database messages can quote values: keep them short.
fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("state store: a stored {what} cannot be read: {e}"))
}

/// Seconds since the epoch as the database keeps them.
fn t(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn opt_u(v: Option<i64>) -> Option<u64> {
    v.map(u)
}

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_core_compat::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The future type `MigrationSource` wants.
mod futures_core_compat {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

/// A pool of up to `max_connections` to `url`, connected.
async fn pool(url: &DbUrl, max_connections: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url.0)
        .await
        .map_err(|e| {
            StoreError::Backend(format!(
                "cannot connect to the database: {}",
                bounded(&e.to_string())
            ))
        })
}

/// What [`SqlStore::probe`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The newest migration applied; `None`: a new, empty database.
    pub schema: Option<i64>,
    /// The newest migration this build knows.
    pub known: i64,
    /// The shared values the replicas recorded (name, value).
    pub shared: Vec<(String, String)>,
}

impl SqlStore {
    /// Connects, checks the schema version and migrates. `url` is `sqlite://…` or
    /// `postgres://…` (with the password already in it).
    pub async fn connect(url: &DbUrl, max_connections: u32) -> Result<SqlStore, StoreError> {
        let dialect = if url.0.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        let pool = pool(url, max_connections).await?;
        if dialect == Dialect::Sqlite {
            // WAL is a property of the file, kept once set.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(db_err)?;
        }
        check_schema(&pool).await?;
        let migrator = Migrator::new(Embedded)
            .await
            .map_err(|e| StoreError::Backend(format!("schema migrations: {e}")))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating the database schema: {e}")))?;
        let feed = Feed::new(dialect, url.clone(), pool.clone());
        Ok(SqlStore {
            pool,
            dialect,
            feed,
        })
    }

    /// Connects without changing anything (no migration) and reads what `check` reports:
    /// the schema version and the shared values the replicas recorded. Refuses a schema newer
    /// than this build knows, as [`connect`](Self::connect) does.
    pub async fn probe(url: &DbUrl) -> Result<Probe, StoreError> {
        let pool = pool(url, 1).await?;
        check_schema(&pool).await?;
        let schema: Option<i64> =
            match sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
            {
                Ok(row) => row.try_get("v").map_err(db_err)?,
                Err(_) => None,
            };
        let shared = match sqlx::query(
            "SELECT name, value FROM store_meta WHERE name LIKE 'shared %' ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    let name: String = r.try_get("name").map_err(db_err)?;
                    let value: String = r.try_get("value").map_err(db_err)?;
                    Ok((name["shared ".len()..].to_owned(), value))
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
            Err(_) => Vec::new(),
        };
        pool.close().await;
        Ok(Probe {
            schema,
            known: MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0),
            shared,
        })
    }

    /// Closes the connections: every later operation fails with `Unavailable` (a database
    /// gone, for tests of what depends on it).
    #[doc(hidden)]
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    #[cfg(test)]
    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will change the store.
    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.dialect {
            // Takes the write lock now: a read-modify-write never meets another writer.
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
        .map_err(db_err)
    }

    /// `FOR UPDATE` where the dialect has it (SQLite's transaction holds the lock already).
    fn locking(&self, sql: &'static str) -> AssertSqlSafe<String> {
        AssertSqlSafe(match self.dialect {
            Dialect::Postgres => format!("{sql} FOR UPDATE"),
            Dialect::Sqlite => sql.to_owned(),
        })
    }

    /// Commits `tx` after queueing `changes` for the other replicas, then announces them here.
    async fn commit(
        &self,
        mut tx: Transaction<'static, Any>,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            for c in &changes {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(self.feed.payload(c))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        for c in changes {
            self.feed.announce(c);
        }
        Ok(())
    }

    async fn read_connector(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
    ) -> Result<ConnectorRec, StoreError> {
        let row = sqlx::query(self.locking("SELECT * FROM connectors WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => connector_of(&r),
            None => Err(Refusal::UnknownConnector(id.to_owned()).into()),
        }
    }

    async fn write_connector(
        tx: &mut Transaction<'static, Any>,
        c: &ConnectorRec,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE connectors SET serial = $2, hostname = $3, not_after = $4, revoked = $5, \
             previous_serial = $6, renewed = $7 WHERE id = $1",
        )
        .bind(c.id.clone())
        .bind(c.serial.clone())
        .bind(c.hostname.clone())
        .bind(t(c.not_after))
        .bind(c.revoked.map(t))
        .bind(c.previous_serial.clone())
        .bind(c.renewed.map(t))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Inserts every record of an old `state.json` (the store must be empty).
    pub(super) async fn import(
        &self,
        tables: &super::rules::Tables,
        marker: (&str, &str),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for tk in &tables.enroll_tokens {
            insert_enroll_token(&mut tx, tk).await?;
        }
        for c in &tables.connectors {
            insert_connector(&mut tx, c).await?;
        }
        for r in &tables.revoked_tokens {
            insert_revoked_token(&mut tx, r).await?;
        }
        for r in &tables.revoked_users {
            upsert_revoked_user(&mut tx, &r.user, r.before).await?;
        }
        for d in &tables.devices {
            insert_device(&mut tx, d).await?;
        }
        for (k, c) in &tables.cli_codes {
            insert_doc(&mut tx, "cli_codes", k, c.expires, c).await?;
        }
        for (k, c) in &tables.ceremonies {
            insert_doc(&mut tx, "ceremonies", k, c.expires, c).await?;
        }
        sqlx::query("INSERT INTO store_meta (name, value) VALUES ($1, $2)")
            .bind(marker.0.to_owned())
            .bind(marker.1.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        self.commit(tx, vec![Change::External]).await
    }

    /// Every record except the sign-ins in flight (which name live session tokens and live
    /// for a minute or ten anyway), in the old `state.json` format.
    pub async fn export(&self) -> Result<super::Snapshot, StoreError> {
        let mut t = super::rules::Tables::default();
        let rows = sqlx::query("SELECT * FROM enroll_tokens ORDER BY created, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        for r in &rows {
            let get = || -> Result<EnrollTokenRec, sqlx::Error> {
                Ok(EnrollTokenRec {
                    id: r.try_get("id")?,
                    secret_sha256: r.try_get("secret_sha256")?,
                    site: r.try_get("site")?,
                    created: u(r.try_get("created")?),
                    expires: u(r.try_get("expires")?),
                    used: opt_u(r.try_get("used")?),
                    used_by: r.try_get("used_by")?,
                })
            };
            t.enroll_tokens.push(get().map_err(db_err)?);
        }
        t.connectors = self.connectors().await?;
        let rev = self.revocations().await?;
        t.revoked_tokens = rev.tokens;
        t.revoked_users = rev.users;
        t.devices = self.devices().await?;
        Ok(t)
    }

    /// Loads an export (or an old `state.json`) into this store, which must hold no records;
    /// returns what it held.
    pub async fn import_export(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let tables: super::Snapshot = serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Backend(format!("not a state export: {}", bounded(&e.to_string())))
        })?;
        if self.record_count().await? > 0 {
            return Err(StoreError::Backend(
                "the store already holds records; import only into an empty store".into(),
            ));
        }
        let digest = postern_proto::ids::sha256_hex(bytes);
        self.import(
            &tables,
            (&format!("import {digest}"), &unix_now().to_string()),
        )
        .await?;
        Ok(super::json_import::summary(&tables))
    }

    /// A fact about the store itself.
    pub(super) async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM store_meta WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>("value").map_err(db_err))
            .transpose()
    }

    /// How many records the store holds (connectors, devices, tokens, revocations).
    pub(super) async fn record_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM enroll_tokens) + (SELECT COUNT(*) FROM connectors) \
             + (SELECT COUNT(*) FROM revoked_tokens) + (SELECT COUNT(*) FROM revoked_users) \
             + (SELECT COUNT(*) FROM devices) AS n",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        row.try_get::<i64, _>("n").map_err(db_err)
    }
}

/// Refuses a database whose schema a newer version migrated: this build would misread it.
async fn check_schema(pool: &AnyPool) -> Result<(), StoreError> {
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    // No migrations table yet: a new database.
    let Ok(row) = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
    else {
        return Ok(());
    };
    let newest: Option<i64> = row.try_get("v").map_err(db_err)?;
    match newest {
        Some(v) if v > known => Err(StoreError::Backend(format!(
            "the database schema is version {v}, newer than this gateway knows ({known}): upgrade this gateway to the version the other replicas run"
        ))),
        _ => Ok(()),
    }
}

fn connector_of(r: &AnyRow) -> Result<ConnectorRec, StoreError> {
    let get = || -> Result<ConnectorRec, sqlx::Error> {
        Ok(ConnectorRec {
            id: r.try_get("id")?,
            site: r.try_get("site")?,
            serial: r.try_get("serial")?,
            hostname: r.try_get("hostname")?,
            enrolled: u(r.try_get("enrolled")?),
            not_after: u(r.try_get("not_after")?),
            revoked: opt_u(r.try_get("revoked")?),
            previous_serial: r.try_get("previous_serial")?,
            renewed: opt_u(r.try_get("renewed")?),
        })
    };
    get().map_err(db_err)
}

fn doc_of<T: serde::de::DeserializeOwned>(r: &AnyRow, what: &str) -> Result<T, StoreError> {
    let text: String = r.try_get("doc").map_err(db_err)?;
    serde_json::from_str(&text).map_err(|e| corrupt(what, e))
}

fn to_doc<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

async fn insert_enroll_token(
    tx: &mut Transaction<'static, Any>,
    tk: &EnrollTokenRec,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enroll_tokens (id, secret_sha256, site, created, expires, used, used_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tk.id.clone())
    .bind(tk.secret_sha256.clone())
    .bind(tk.site.clone())
    .bind(t(tk.created))
    .bind(t(tk.expires))
    .bind(tk.used.map(t))
    .bind(tk.used_by.clone())
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn insert_connector(
    tx: &mut Transaction<'static, Any>,
    c: &ConnectorRec,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO connectors (id, site, serial, hostname, enrolled, not_after, revoked, \
         previous_serial, renewed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.id.clone())
    .bind(c.site.clone())
    .bind(c.serial.clone())
    .bind(c.hostname.clone())
    .bind(t(c.enrolled))
    .bind(t(c.not_after))
    .bind(c.revoked.map(t))
    .bind(c.previous_serial.clone())
    .bind(c.renewed.map(t))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Records a revoked token (once: a second revocation of it changes nothing).
async fn insert_revoked_token(
    tx: &mut Transaction<'static, Any>,
    r: &RevokedToken,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, exp, user_name, revoked) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(r.jti.clone())
    .bind(t(r.exp))
    .bind(r.user.clone())
    .bind(t(r.revoked))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn upsert_revoked_user(
    tx: &mut Transaction<'static, Any>,
    user: &str,
    before: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revoked_users (user_key, before_time) VALUES ($1, $2) \
         ON CONFLICT (user_key) DO UPDATE SET before_time = excluded.before_time",
    )
    .bind(user.to_ascii_lowercase())
    .bind(t(before))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Inserts a device; `false` if its credential is registered already.
async fn insert_device(
    tx: &mut Transaction<'static, Any>,
    d: &DeviceRec,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO devices (id, user_key, credential_id, created, version, doc) \
         VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT DO NOTHING",
    )
    .bind(d.id.clone())
    .bind(d.user.to_ascii_lowercase())
    .bind(d.credential_id.clone())
    .bind(t(d.created))
    .bind(to_doc(d)?)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// `table` is one of this module's literal table names (cli_codes, ceremonies).
async fn insert_doc<T: serde::Serialize>(
    tx: &mut Transaction<'static, Any>,
    table: &'static str,
    key: &str,
    expires: u64,
    rec: &T,
) -> Result<(), StoreError> {
    let key_col = if table == "cli_codes" {
        "key_hash"
    } else {
        "id"
    };
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} ({key_col}, expires, doc) VALUES ($1, $2, $3) \
         ON CONFLICT ({key_col}) DO UPDATE SET expires = excluded.expires, doc = excluded.doc"
    )))
    .bind(key.to_owned())
    .bind(t(expires))
    .bind(to_doc(rec)?)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Drops expired rows of a sign-in table, then refuses if it is still full.
async fn make_room(
    tx: &mut Transaction<'static, Any>,
    table: &'static str,
    max: usize,
    now: u64,
) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE expires <= $1"
    )))
    .bind(t(now))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    let row = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM {table}")))
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    let n: i64 = row.try_get("n").map_err(db_err)?;
    if usize::try_from(n).unwrap_or(usize::MAX) >= max {
        let name = if table == "cli_codes" {
            "cli codes"
        } else {
            "ceremonies"
        };
        return Err(Refusal::SignInsFull(name).into());
    }
    Ok(())
}

impl SqlStore {
    /// Takes a sign-in record out in one statement; `None` if unknown or expired by `now`.
    async fn take_doc<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        key: String,
        now: u64,
    ) -> Result<Option<T>, StoreError> {
        let key_col = if table == "cli_codes" {
            "key_hash"
        } else {
            "id"
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {key_col} = $1 RETURNING expires, doc"
        )))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let expires: i64 = row.try_get("expires").map_err(db_err)?;
        if u(expires) <= now {
            return Ok(None);
        }
        doc_of(&row, table).map(Some)
    }
}

impl StateStore for SqlStore {
    fn create_enroll_token(&self, token: EnrollTokenRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            sqlx::query("DELETE FROM enroll_tokens WHERE expires + $1 <= $2")
                .bind(t(TOKEN_RETENTION))
                .bind(t(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            insert_enroll_token(&mut tx, &token).await?;
            self.commit(tx, Vec::new()).await
        })
    }

    fn enroll_connector(
        &self,
        secret_sha256: String,
        hostname: Option<String>,
        now: u64,
        issue: EnrollIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued, String)> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            // The burn: one statement, so two replicas can never both use the token. The
            // lookup is by the SHA-256 of a 256-bit secret, so its timing tells nothing.
            let burnt = sqlx::query(
                "UPDATE enroll_tokens SET used = $1 \
                 WHERE secret_sha256 = $2 AND used IS NULL AND expires > $1 \
                 RETURNING id, site",
            )
            .bind(t(now))
            .bind(secret_sha256.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(row) = burnt else {
                let why = sqlx::query(
                    "SELECT used, used_by, expires FROM enroll_tokens WHERE secret_sha256 = $1",
                )
                .bind(secret_sha256)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let refusal = match why {
                    None => Refusal::UnknownToken,
                    Some(r) => {
                        let used: Option<i64> = r.try_get("used").map_err(db_err)?;
                        let by: Option<String> = r.try_get("used_by").map_err(db_err)?;
                        if used.is_some() {
                            Refusal::TokenUsed(by.unwrap_or_default())
                        } else {
                            Refusal::TokenExpired
                        }
                    }
                };
                return Err(refusal.into());
            };
            let token_id: String = row.try_get("id").map_err(db_err)?;
            let site: String = row.try_get("site").map_err(db_err)?;
            // A failed signature rolls the burn back: the token stays usable.
            let (id, issued) = issue(&site).map_err(Refusal::Rejected)?;
            sqlx::query("UPDATE enroll_tokens SET used_by = $1 WHERE id = $2")
                .bind(id.clone())
                .bind(token_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let rec = ConnectorRec {
                id,
                site,
                serial: issued.serial.clone(),
                hostname,
                enrolled: now,
                not_after: issued.not_after,
                revoked: None,
                previous_serial: None,
                renewed: None,
            };
            insert_connector(&mut tx, &rec).await?;
            self.commit(tx, vec![Change::ConnectorEnrolled(rec.id.clone())])
                .await?;
            Ok((rec, issued, token_id))
        })
    }

    fn renew_connector(
        &self,
        id: String,
        serial: String,
        now: u64,
        issue: RenewIssuer,
    ) -> StoreFuture<'_, (ConnectorRec, Issued)> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let mut c = self.read_connector(&mut tx, &id).await?;
            if c.revoked.is_some() {
                return Err(Refusal::ConnectorRevoked(id).into());
            }
            // Only the current certificate renews: a copy of an old key must not outlive the
            // rotation (the same rule as `rules::Tables::renew_connector`).
            if c.serial != serial {
                return Err(Refusal::Superseded.into());
            }
            let issued = issue(&c).map_err(Refusal::Rejected)?;
            c.previous_serial = Some(std::mem::replace(&mut c.serial, issued.serial.clone()));
            c.not_after = issued.not_after;
            c.renewed = Some(now);
            Self::write_connector(&mut tx, &c).await?;
            self.commit(tx, vec![Change::ConnectorRenewed(id)]).await?;
            Ok((c, issued))
        })
    }

    fn revoke_connector(&self, id: String, now: u64) -> StoreFuture<'_, ConnectorRec> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                "UPDATE connectors SET revoked = COALESCE(revoked, $1) WHERE id = $2 RETURNING *",
            )
            .bind(t(now))
            .bind(id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(row) = row else {
                return Err(Refusal::UnknownConnector(id).into());
            };
            let c = connector_of(&row)?;
            self.commit(tx, vec![Change::ConnectorRevoked(id)]).await?;
            Ok(c)
        })
    }

    fn connector(&self, id: String) -> StoreFuture<'_, Option<ConnectorRec>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM connectors WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
            row.as_ref().map(connector_of).transpose()
        })
    }

    fn connectors(&self) -> StoreFuture<'_, Vec<ConnectorRec>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM connectors ORDER BY enrolled, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            rows.iter().map(connector_of).collect()
        })
    }

    fn revoke_token(&self, token: RevokedToken, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            sqlx::query("DELETE FROM revoked_tokens WHERE exp <= $1")
                .bind(t(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            insert_revoked_token(&mut tx, &token).await?;
            self.commit(tx, vec![Change::TokenRevoked(token.jti)]).await
        })
    }

    fn revoke_user(&self, user: String, now: u64) -> StoreFuture<'_, Vec<DeviceRec>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(self.locking(
                "SELECT doc, version FROM devices WHERE user_key = $1 ORDER BY created, id",
            ))
            .bind(user.to_ascii_lowercase())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            let mut revoked = Vec::new();
            for row in &rows {
                let mut d: DeviceRec = doc_of(row, "device")?;
                if d.status == super::DeviceStatus::Revoked {
                    continue;
                }
                d.status = super::DeviceStatus::Revoked;
                d.revoked = Some(now);
                d.revoked_reason = Some("user revoked".into());
                let version: i64 = row.try_get("version").map_err(db_err)?;
                if !update_device_row(&mut tx, &d, version).await? {
                    return Err(raced(&d.id));
                }
                revoked.push(d);
            }
            upsert_revoked_user(&mut tx, &user, now).await?;
            let mut changes = vec![Change::UserRevoked(user)];
            changes.extend(revoked.iter().map(|d| Change::DeviceChanged(d.id.clone())));
            self.commit(tx, changes).await?;
            Ok(revoked)
        })
    }

    fn revocations(&self) -> StoreFuture<'_, Revocations> {
        Box::pin(async move {
            let tokens = sqlx::query("SELECT * FROM revoked_tokens ORDER BY revoked, jti")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            let users = sqlx::query("SELECT * FROM revoked_users ORDER BY before_time, user_key")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            let tokens = tokens
                .iter()
                .map(|r| {
                    Ok(RevokedToken {
                        jti: r.try_get("jti")?,
                        exp: u(r.try_get("exp")?),
                        user: r.try_get("user_name")?,
                        revoked: u(r.try_get("revoked")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_err)?;
            let users = users
                .iter()
                .map(|r| {
                    Ok(RevokedUser {
                        user: r.try_get("user_key")?,
                        before: u(r.try_get("before_time")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_err)?;
            Ok(Revocations { tokens, users })
        })
    }

    fn add_device(&self, device: DeviceRec) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            if !insert_device(&mut tx, &device).await? {
                let row = sqlx::query("SELECT doc FROM devices WHERE credential_id = $1")
                    .bind(device.credential_id.clone())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                return Err(match row {
                    Some(r) => {
                        let d: DeviceRec = doc_of(&r, "device")?;
                        Refusal::CredentialExists {
                            device: d.id,
                            user: d.user,
                        }
                        .into()
                    }
                    None => StoreError::Backend(format!("device id {} is taken", device.id)),
                });
            }
            self.commit(tx, vec![Change::DeviceChanged(device.id)])
                .await
        })
    }

    fn update_device(
        &self,
        id: String,
        change: DeviceChange,
    ) -> StoreFuture<'_, (DeviceRec, DeviceRec)> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query(self.locking("SELECT doc, version FROM devices WHERE id = $1"))
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                return Err(Refusal::UnknownDevice(id).into());
            };
            let before: DeviceRec = doc_of(&row, "device")?;
            let version: i64 = row.try_get("version").map_err(db_err)?;
            let mut after = before.clone();
            change(&mut after)?;
            // Compare-and-set: the row is written only over the version read (a sign count
            // never goes back because two sign-ins raced).
            if !update_device_row(&mut tx, &after, version).await? {
                return Err(raced(&id));
            }
            self.commit(tx, vec![Change::DeviceChanged(id)]).await?;
            Ok((before, after))
        })
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceRec>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT doc FROM devices ORDER BY created, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            rows.iter().map(|r| doc_of(r, "device")).collect()
        })
    }

    fn put_cli_code(&self, key_hash: String, rec: CliCodeRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            make_room(&mut tx, "cli_codes", MAX_CLI_CODES, now).await?;
            insert_doc(&mut tx, "cli_codes", &key_hash, rec.expires, &rec).await?;
            self.commit(tx, Vec::new()).await
        })
    }

    fn take_cli_code(&self, key_hash: String, now: u64) -> StoreFuture<'_, Option<CliCodeRec>> {
        Box::pin(self.take_doc("cli_codes", key_hash, now))
    }

    fn put_ceremony(&self, id: String, rec: CeremonyRec, now: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            make_room(&mut tx, "ceremonies", MAX_CEREMONIES, now).await?;
            insert_doc(&mut tx, "ceremonies", &id, rec.expires, &rec).await?;
            self.commit(tx, Vec::new()).await
        })
    }

    fn ceremony(&self, id: String) -> StoreFuture<'_, Option<CeremonyRec>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT doc FROM ceremonies WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
            row.map(|r| doc_of(&r, "ceremony")).transpose()
        })
    }

    fn update_ceremony(
        &self,
        id: String,
        now: u64,
        change: CeremonyChange,
    ) -> StoreFuture<'_, (CeremonyRec, CeremonyRec)> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                self.locking("SELECT doc FROM ceremonies WHERE id = $1 AND expires > $2"),
            )
            .bind(id.clone())
            .bind(t(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(row) = row else {
                return Err(Refusal::UnknownCeremony.into());
            };
            let before: CeremonyRec = doc_of(&row, "ceremony")?;
            let mut after = before.clone();
            change(&mut after)?;
            insert_doc(&mut tx, "ceremonies", &id, after.expires, &after).await?;
            self.commit(tx, Vec::new()).await?;
            Ok((before, after))
        })
    }

    fn take_ceremony(&self, id: String, now: u64) -> StoreFuture<'_, Option<CeremonyRec>> {
        Box::pin(self.take_doc("ceremonies", id, now))
    }

    fn heartbeat(&self, rec: ReplicaRec, now: u64, live_for: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let held =
                sqlx::query(self.locking("SELECT instance, heartbeat FROM replicas WHERE id = $1"))
                    .bind(rec.id.clone())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            let joined = match held {
                Some(r) => {
                    let instance: String = r.try_get("instance").map_err(db_err)?;
                    let beat: i64 = r.try_get("heartbeat").map_err(db_err)?;
                    if instance != rec.instance && u(beat).saturating_add(live_for) > now {
                        return Err(Refusal::ReplicaIdTaken(rec.id).into());
                    }
                    instance != rec.instance
                }
                None => true,
            };
            let addrs = to_doc(&rec.connector_addrs)?;
            sqlx::query(
                "INSERT INTO replicas (id, instance, client_addr, connector_addrs, version, started, heartbeat) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, client_addr = excluded.client_addr, \
                 connector_addrs = excluded.connector_addrs, version = excluded.version, \
                 started = excluded.started, heartbeat = excluded.heartbeat",
            )
            .bind(rec.id.clone())
            .bind(rec.instance.clone())
            .bind(rec.client_addr.clone())
            .bind(addrs)
            .bind(rec.version.clone())
            .bind(t(rec.started))
            .bind(t(now))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let changes = if joined {
                vec![Change::ReplicasChanged]
            } else {
                Vec::new()
            };
            self.commit(tx, changes).await
        })
    }

    fn leave(&self, id: String, instance: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let gone = sqlx::query("DELETE FROM replicas WHERE id = $1 AND instance = $2")
                .bind(id)
                .bind(instance)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let changes = if gone.rows_affected() > 0 {
                vec![Change::ReplicasChanged]
            } else {
                Vec::new()
            };
            self.commit(tx, changes).await
        })
    }

    fn replicas(&self) -> StoreFuture<'_, Vec<ReplicaRec>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM replicas ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let addrs: String = r.try_get("connector_addrs").map_err(db_err)?;
                    let get = || -> Result<ReplicaRec, sqlx::Error> {
                        Ok(ReplicaRec {
                            id: r.try_get("id")?,
                            instance: r.try_get("instance")?,
                            client_addr: r.try_get("client_addr")?,
                            connector_addrs: Vec::new(),
                            version: r.try_get("version")?,
                            started: u(r.try_get("started")?),
                            heartbeat: u(r.try_get("heartbeat")?),
                        })
                    };
                    let mut rec = get().map_err(db_err)?;
                    rec.connector_addrs =
                        serde_json::from_str(&addrs).map_err(|e| corrupt("replica", e))?;
                    Ok(rec)
                })
                .collect()
        })
    }

    fn publish_key(&self, key: PublishedKey, now: u64, retire_after: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            sqlx::query("DELETE FROM token_keys WHERE expires IS NOT NULL AND expires <= $1")
                .bind(t(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query(
                "UPDATE token_keys SET expires = $1 WHERE replica = $2 AND kid <> $3 AND expires IS NULL",
            )
            .bind(t(now.saturating_add(retire_after)))
            .bind(key.replica.clone())
            .bind(key.kid.clone())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            sqlx::query(
                "INSERT INTO token_keys (kid, public_pem, replica, created, expires) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING",
            )
            .bind(key.kid.clone())
            .bind(key.public_pem.clone())
            .bind(key.replica.clone())
            .bind(t(key.created))
            .bind(key.expires.map(t))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            self.commit(tx, vec![Change::KeysChanged]).await
        })
    }

    fn published_keys(&self, now: u64) -> StoreFuture<'_, Vec<PublishedKey>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM token_keys WHERE expires IS NULL OR expires > $1 ORDER BY created, kid",
            )
            .bind(t(now))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    Ok(PublishedKey {
                        kid: r.try_get("kid")?,
                        public_pem: r.try_get("public_pem")?,
                        replica: r.try_get("replica")?,
                        created: u(r.try_get("created")?),
                        expires: opt_u(r.try_get("expires")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_err)
        })
    }

    fn shared_value(&self, name: String, value: String) -> StoreFuture<'_, String> {
        Box::pin(async move {
            let key = format!("shared {name}");
            sqlx::query("INSERT INTO store_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(key.clone())
                .bind(value)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
            self.meta(&key)
                .await?
                .ok_or_else(|| StoreError::Backend(format!("shared value {name} vanished")))
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    fn health(&self) -> super::StoreHealth {
        let h = self.feed.health();
        if h.up {
            super::StoreHealth::Up
        } else {
            super::StoreHealth::Down(h.last_ok.elapsed())
        }
    }
}

fn raced(id: &str) -> StoreError {
    StoreError::Backend(format!(
        "device {id} changed while it was being updated; try again"
    ))
}

/// Writes a changed device over the version it was read at; `false` if someone else changed
/// it in between.
async fn update_device_row(
    tx: &mut Transaction<'static, Any>,
    d: &DeviceRec,
    version: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE devices SET doc = $1, user_key = $2, version = version + 1 \
         WHERE id = $3 AND version = $4",
    )
    .bind(to_doc(d)?)
    .bind(d.user.to_ascii_lowercase())
    .bind(d.id.clone())
    .bind(version)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::{conformance, memory::MemoryStore, open, SharedStore, StoreConfig};

    async fn sqlite(dir: &std::path::Path) -> super::super::Opened {
        open(&StoreConfig::default(), dir).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sqlite_handles_on_one_file_behave_as_the_store_must() {
        let dir = tempfile::tempdir().unwrap();
        let a = sqlite(dir.path()).await.store;
        let b = sqlite(dir.path()).await.store;
        conformance::run_all(a, b).await;
        let mode = std::fs::metadata(dir.path().join("state.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_store_behaves_as_the_store_must() {
        let m: SharedStore = Arc::new(MemoryStore::default());
        conformance::run_all(m.clone(), m).await;
    }

    const OLD_STATE: &str = r#"{
      "enroll_tokens": [{"id": "et-1", "secret_sha256": "ab", "site": "truro", "created": 1, "expires": 9999999999}],
      "connectors": [{"id": "truro-1", "site": "truro", "serial": "0a", "enrolled": 2, "not_after": 9999999999}],
      "revoked_tokens": [{"jti": "j1", "exp": 9999999999, "user": "ann", "revoked": 3}],
      "devices": [],
      "revoked_users": [{"user": "bob", "before": 4}],
      "cli_codes": {"k": {"challenge": "c", "token": "t", "expires": 9999999999}}
    }"#;

    #[tokio::test]
    async fn an_old_state_json_is_imported_once_and_kept_as_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), OLD_STATE).unwrap();
        let opened = sqlite(dir.path()).await;
        let m = opened.migrated.expect("the import is reported");
        assert_eq!(m.backup, dir.path().join("state.json.migrated"));
        assert!(
            m.summary
                .starts_with("1 connector, 0 devices, 1 enrolment token"),
            "{}",
            m.summary
        );
        assert!(!dir.path().join("state.json").exists());
        let s = opened.store;
        assert_eq!(s.connectors().await.unwrap()[0].id, "truro-1");
        let r = s.revocations().await.unwrap();
        assert_eq!((r.tokens.len(), r.users.len()), (1, 1));
        assert!(s.take_cli_code("k".into(), 5).await.unwrap().is_some());
        // The token imported is the token that enrols.
        s.enroll_connector("ab".into(), None, 10, Box::new(|_| Err("csr".into())))
            .await
            .unwrap_err();
        // A second open imports nothing.
        assert!(sqlite(dir.path()).await.migrated.is_none());
        // A different state.json appearing later is refused, not mixed in.
        std::fs::write(dir.path().join("state.json"), r#"{"connectors": []}"#).unwrap();
        let e = open(&StoreConfig::default(), dir.path())
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("already imported a different"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_crash_between_import_and_move_finishes_the_move() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), OLD_STATE).unwrap();
        sqlite(dir.path()).await;
        // As if the process died after the commit, before the rename.
        std::fs::rename(
            dir.path().join("state.json.migrated"),
            dir.path().join("state.json"),
        )
        .unwrap();
        let again = sqlite(dir.path()).await;
        assert!(again.migrated.is_some());
        assert_eq!(again.store.connectors().await.unwrap().len(), 1);
        assert!(dir.path().join("state.json.migrated").exists());
    }

    #[tokio::test]
    async fn a_corrupt_state_json_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        let e = open(&StoreConfig::default(), dir.path())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("not imported"), "{e}");
        assert!(dir.path().join("state.json").exists());
    }

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opened = sqlite(dir.path()).await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99, 'from the future', TRUE, X'00', 0)",
        )
        .execute(opened.sql.pool())
        .await
        .unwrap();
        let e = open(&StoreConfig::default(), dir.path())
            .await
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(
            text.contains("schema is version 99, newer than this gateway knows (2)"),
            "{text}"
        );
    }
}
