//! The staleness rule: while the state store's database does not answer, live sessions go on
//! and new ones are decided from the last known state (revocations, devices and policy held in
//! memory) for `[store] max_staleness`; after that, new sessions are refused with
//! `store_unavailable` until it answers again. Every transition is audited
//! (`store.unavailable`, `store.stale`, `store.available`) and shown in the metrics
//! (`postern_store_up`, `postern_store_staleness_seconds`) and in `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_audit::EventType;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::state::{SharedStore, StoreHealth};

/// How often the store's health is looked at.
const TICK: Duration = Duration::from_millis(250);

/// Follows the store's health.
pub struct StoreWatch {
    store: SharedStore,
    max_staleness: Duration,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    stale: AtomicBool,
}

impl StoreWatch {
    pub fn new(
        store: SharedStore,
        max_staleness: Duration,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> StoreWatch {
        StoreWatch {
            store,
            max_staleness,
            audit,
            metrics,
            stale: AtomicBool::new(false),
        }
    }

    /// Why a new session must be refused now, if it must.
    pub fn refusal(&self) -> Option<String> {
        self.stale.load(Ordering::Relaxed).then(|| {
            format!(
                "the gateway's state store has not answered for over {}s, so revocations made since cannot be known; new sessions are refused until it answers",
                self.max_staleness.as_secs()
            )
        })
    }

    /// Whether the store is stale beyond the rule (for `/readyz`).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Watches until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut down = false;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.store.health() {
                StoreHealth::Up => {
                    self.metrics.store_up.set(1);
                    self.metrics.store_staleness.set(0.0);
                    if down {
                        down = false;
                        self.stale.store(false, Ordering::Relaxed);
                        info!("state store: the database answers again");
                        self.record(EventType::StoreAvailable, "the state store's database answers again; new sessions are decided on current state".into()).await;
                    }
                }
                StoreHealth::Down(for_) => {
                    self.metrics.store_up.set(0);
                    self.metrics.store_staleness.set(for_.as_secs_f64());
                    if !down {
                        down = true;
                        warn!("state store: the database does not answer; live sessions go on");
                        self.record(
                            EventType::StoreUnavailable,
                            format!(
                                "the state store's database does not answer; live sessions go on, new sessions are decided on the last known state for up to {}s",
                                self.max_staleness.as_secs()
                            ),
                        )
                        .await;
                    }
                    if for_ > self.max_staleness && !self.stale.swap(true, Ordering::Relaxed) {
                        warn!("state store: stale beyond max_staleness; new sessions refused");
                        self.record(
                            EventType::StoreStale,
                            format!(
                                "no answer from the state store's database for {}s (max_staleness {}s): new sessions are refused until it answers",
                                for_.as_secs(),
                                self.max_staleness.as_secs()
                            ),
                        )
                        .await;
                    }
                }
            }
        }
    }

    async fn record(&self, kind: EventType, detail: String) {
        let mut ev = self.audit.event(kind);
        ev.detail = Some(detail);
        if let Err(e) = self.audit.record(ev).await {
            warn!(error = %e, "cannot audit a state store transition");
        }
    }
}
