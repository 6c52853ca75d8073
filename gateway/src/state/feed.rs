//! The change feed behind [`StateStore::changes`](super::StateStore::changes) for the SQL
//! store.
//!
//! * Changes made through this handle are announced at once ([`Feed::announce`]).
//! * PostgreSQL: every change is also sent with `NOTIFY postern_state` inside the transaction
//!   that made it, so it is delivered to every replica's `LISTEN` when (and only if) it
//!   commits; a replica ignores its own notifications (they carry its instance id). When the
//!   listening connection is lost and made again, notifications may have been missed: the
//!   feed says [`Change::External`] (reload everything).
//! * SQLite: other processes (admin commands) are noticed by `PRAGMA data_version`, polled
//!   every 250 ms on the store's one connection, which changes only when another connection
//!   committed; announced as [`Change::External`].
//!
//! The feed also keeps the store's health: when it last heard from the database and whether
//! the link is up ([`Feed::health`]), for `/readyz`, the metrics and the staleness rule.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::AnyPool;
use sqlx::Row;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::sql::{DbUrl, Dialect};
use super::Change;

/// The PostgreSQL notification channel.
pub const NOTIFY_CHANNEL: &str = "postern_state";
/// How often SQLite is asked whether another process committed.
const SQLITE_POLL: Duration = Duration::from_millis(250);
/// A PostgreSQL feed quiet for this long probes the database (`SELECT 1`): how old the last
/// proof of life can be when an outage starts, which the staleness rule counts.
const PROBE_AFTER: Duration = Duration::from_secs(2);
/// A probe unanswered for this long marks the database down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest subject sent in a notification (PostgreSQL allows 8000 bytes); longer ones are sent
/// as "reload everything".
const MAX_SUBJECT: usize = 1024;

/// The change feed of one store handle.
pub struct Feed {
    dialect: Dialect,
    url: DbUrl,
    pool: AnyPool,
    tx: broadcast::Sender<Change>,
    /// Random id of this handle: its own notifications come back to it and are skipped.
    instance: String,
    started: Mutex<bool>,
    health: Mutex<Health>,
}

/// What the feed knows about the database link.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// The listening connection (PostgreSQL) or the poll (SQLite) works.
    pub up: bool,
    /// When the database last answered.
    pub last_ok: Instant,
}

impl Feed {
    pub fn new(dialect: Dialect, url: DbUrl, pool: AnyPool) -> Arc<Feed> {
        let mut id = [0u8; 8];
        let instance =
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_ok() {
                id.iter().map(|b| format!("{b:02x}")).collect()
            } else {
                format!("pid{}", std::process::id())
            };
        Arc::new(Feed {
            dialect,
            url,
            pool,
            tx: broadcast::channel(1024).0,
            instance,
            started: Mutex::new(false),
            health: Mutex::new(Health {
                up: true,
                last_ok: Instant::now(),
            }),
        })
    }

    /// Announces a change made through this handle.
    pub fn announce(&self, c: Change) {
        // No listener is not an error.
        let _ = self.tx.send(c);
    }

    pub fn health(&self) -> Health {
        self.health.lock().map(|h| *h).unwrap_or(Health {
            up: false,
            last_ok: Instant::now() - Duration::from_secs(3600),
        })
    }

    fn set_health(&self, up: bool) {
        if let Ok(mut h) = self.health.lock() {
            h.up = up;
            if up {
                h.last_ok = Instant::now();
            }
        }
    }

    /// A new listener; starts following the database on first use.
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Change> {
        let rx = self.tx.subscribe();
        self.start();
        rx
    }

    fn start(self: &Arc<Self>) {
        let Ok(mut started) = self.started.lock() else {
            return;
        };
        if *started || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        *started = true;
        let weak = Arc::downgrade(self);
        match self.dialect {
            Dialect::Postgres => {
                tokio::spawn(listen_postgres(weak));
            }
            Dialect::Sqlite => {
                tokio::spawn(poll_sqlite(weak));
            }
        }
    }

    /// The notification payload for `c`: `INSTANCE KIND SUBJECT`, tab-separated.
    pub fn payload(&self, c: &Change) -> String {
        let (kind, subject) = match c {
            Change::ConnectorEnrolled(s) => ("connector_enrolled", s.as_str()),
            Change::ConnectorRenewed(s) => ("connector_renewed", s.as_str()),
            Change::ConnectorRevoked(s) => ("connector_revoked", s.as_str()),
            Change::TokenRevoked(s) => ("token_revoked", s.as_str()),
            Change::UserRevoked(s) => ("user_revoked", s.as_str()),
            Change::DeviceChanged(s) => ("device_changed", s.as_str()),
            Change::ReplicasChanged => ("replicas_changed", ""),
            Change::KeysChanged => ("keys_changed", ""),
            Change::External => ("external", ""),
        };
        if subject.len() > MAX_SUBJECT || subject.contains('\t') {
            return format!("{}\texternal\t", self.instance);
        }
        format!("{}\t{kind}\t{subject}", self.instance)
    }

    /// The change a notification from another handle stands for; `None` for this handle's own.
    fn decode(&self, payload: &str) -> Option<Change> {
        let mut parts = payload.splitn(3, '\t');
        let (Some(instance), Some(kind), Some(subject)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Some(Change::External);
        };
        if instance == self.instance {
            return None;
        }
        let s = subject.to_owned();
        Some(match kind {
            "connector_enrolled" => Change::ConnectorEnrolled(s),
            "connector_renewed" => Change::ConnectorRenewed(s),
            "connector_revoked" => Change::ConnectorRevoked(s),
            "token_revoked" => Change::TokenRevoked(s),
            "user_revoked" => Change::UserRevoked(s),
            "device_changed" => Change::DeviceChanged(s),
            "replicas_changed" => Change::ReplicasChanged,
            "keys_changed" => Change::KeysChanged,
            // A notification sent by hand (`NOTIFY postern_state`) or by a newer version.
            _ => Change::External,
        })
    }
}

/// Follows `NOTIFY postern_state` while the feed lives and anyone listens, reconnecting by
/// itself.
async fn listen_postgres(feed: Weak<Feed>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(f) = feed.upgrade() else { return };
        if f.tx.receiver_count() == 0 {
            *f.started.lock().unwrap_or_else(|e| e.into_inner()) = false;
            return;
        }
        let url = f.url.clone();
        drop(f);
        let mut listener = match connect_listener(&url).await {
            Ok(l) => l,
            Err(e) => {
                if let Some(f) = feed.upgrade() {
                    if f.health().up {
                        warn!(error = %e, "state store: lost the database's change feed; reconnecting");
                    }
                    f.set_health(false);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTENER_BACKOFF_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        {
            let Some(f) = feed.upgrade() else { return };
            if !f.health().up {
                info!("state store: the database's change feed is back");
            }
            f.set_health(true);
            // Whatever happened while nobody listened is reloaded whole.
            f.announce(Change::External);
        }
        loop {
            let next = tokio::time::timeout(PROBE_AFTER, listener.try_recv()).await;
            let Some(f) = feed.upgrade() else { return };
            match next {
                Ok(Ok(Some(n))) => {
                    f.set_health(true);
                    if let Some(c) = f.decode(n.payload()) {
                        f.announce(c);
                    }
                }
                // Quiet for PROBE_AFTER: prove the link still answers.
                Err(_) => {
                    let alive = tokio::time::timeout(
                        PROBE_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&f.pool),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        warn!("state store: the database does not answer");
                        f.set_health(false);
                        break;
                    }
                    f.set_health(true);
                    if f.tx.receiver_count() == 0 {
                        break;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    warn!("state store: the database's change feed connection was lost");
                    f.set_health(false);
                    break;
                }
            }
        }
    }
}

/// How long one attempt to open the feed's connection may take. sqlx retries inside an
/// attempt with a backoff of up to a fifth of this; `PgListener::connect`'s default (30 s)
/// let that backoff grow past two seconds, so after an outage the feed — and with it new
/// sessions — came back up to 4.5 s after the database did. With 2 s, at most ~1.4 s (a
/// 400 ms retry inside an attempt, or the 1 s between attempts).
const LISTENER_CONNECT: Duration = Duration::from_secs(2);
/// Longest pause between attempts to reopen the feed.
const LISTENER_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn connect_listener(url: &DbUrl) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        // As `PgListener::connect` has it: the one connection is kept, never recycled.
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(LISTENER_CONNECT)
        .connect_lazy(&url.0)?;
    let mut l = tokio::time::timeout(
        LISTENER_CONNECT + Duration::from_millis(500),
        sqlx::postgres::PgListener::connect_with(&pool),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    l.listen(NOTIFY_CHANNEL).await?;
    Ok(l)
}

/// Polls `PRAGMA data_version` while the feed lives and anyone listens.
async fn poll_sqlite(feed: Weak<Feed>) {
    let mut last: Option<i64> = None;
    let mut tick = tokio::time::interval(SQLITE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(f) = feed.upgrade() else { return };
        if f.tx.receiver_count() == 0 {
            *f.started.lock().unwrap_or_else(|e| e.into_inner()) = false;
            return;
        }
        let v = sqlx::query("PRAGMA data_version")
            .fetch_one(&f.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0));
        match v {
            Ok(v) => {
                f.set_health(true);
                if last.is_some_and(|l| l != v) {
                    f.announce(Change::External);
                }
                last = Some(v);
            }
            Err(e) => {
                if f.health().up {
                    warn!(error = %e, "state store: cannot read the database");
                }
                f.set_health(false);
            }
        }
    }
}
