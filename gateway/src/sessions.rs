//! Live tunnels: each has a kill switch (with a reason) so that shutdown, connector revocation
//! and, later, policy re-evaluation can end it, and every end is audited with the bytes moved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_audit::{ConnectorRef, DecisionRef, EndpointRef, Event, EventType};
use postern_proto::relay::{relay, Counters, Ended};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Gateway;

/// What an audit event of a session carries.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    pub groups: Vec<String>,
    pub source: String,
    pub endpoint: EndpointRef,
    pub decision: DecisionRef,
    pub connector: Option<ConnectorRef>,
}

impl SessionInfo {
    pub fn event(&self, gw: &Gateway, kind: EventType) -> Event {
        let mut ev = gw.event(kind);
        ev.session_id = Some(self.id.clone());
        ev.user = Some(self.user.clone());
        ev.groups = Some(self.groups.clone());
        ev.source = Some(self.source.clone());
        ev.endpoint = Some(self.endpoint.clone());
        ev.decision = Some(self.decision.clone());
        ev.connector = self.connector.clone();
        ev
    }
}

/// A kill switch with the reason it was thrown.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Kill {
    pub fn kill(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.to_owned());
        }
        self.token.cancel();
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "terminated".into())
    }
}

struct Live {
    kill: Arc<Kill>,
    connector_id: Option<String>,
}

/// The live sessions of this gateway.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    empty: tokio::sync::Notify,
}

impl Sessions {
    fn insert(&self, id: &str, connector_id: Option<String>) -> Arc<Kill> {
        let kill = Arc::new(Kill::default());
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                id.to_owned(),
                Live {
                    kill: kill.clone(),
                    connector_id,
                },
            );
        }
        kill
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(id);
            if m.is_empty() {
                self.empty.notify_waiters();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn kill_all(&self, reason: &str) {
        if let Ok(m) = self.live.lock() {
            for l in m.values() {
                l.kill.kill(reason);
            }
        }
    }

    /// Ends every session relayed by `connector_id`.
    pub fn kill_connector(&self, connector_id: &str, reason: &str) -> usize {
        let mut n = 0;
        if let Ok(m) = self.live.lock() {
            for l in m.values() {
                if l.connector_id.as_deref() == Some(connector_id) {
                    l.kill.kill(reason);
                    n += 1;
                }
            }
        }
        n
    }

    /// Waits until no session is live, or `limit` passes.
    pub async fn wait_empty(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.empty.notified();
            if self.len() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Relays a brokered session until it ends, then writes `session.end`.
pub async fn run_session<C, E>(
    gw: Arc<Gateway>,
    info: SessionInfo,
    client: C,
    endpoint: E,
    deadline: Instant,
    deadline_reason: &'static str,
    started: Instant,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    E: AsyncRead + AsyncWrite + Unpin,
{
    let connector_id = info.connector.as_ref().map(|c| c.id.clone());
    let kill = gw.sessions.insert(&info.id, connector_id);
    let counters = Arc::new(Counters::default());
    let reason = tokio::select! {
        ended = relay(client, endpoint, counters.clone()) => match ended {
            Ended::AClosed => "client_closed".to_owned(),
            Ended::BClosed => "endpoint_closed".to_owned(),
            Ended::AError => "client_error".to_owned(),
            Ended::BError => "endpoint_error".to_owned(),
        },
        _ = tokio::time::sleep_until(deadline.into()) => deadline_reason.to_owned(),
        _ = kill.token.cancelled() => kill.reason(),
    };
    gw.sessions.remove(&info.id);
    end_session(&gw, &info, started, &reason, None, &counters).await;
}

/// Writes `session.end` for a session that started (also for ones that never relayed a byte).
pub async fn end_session(
    gw: &Gateway,
    info: &SessionInfo,
    started: Instant,
    reason: &str,
    detail: Option<String>,
    counters: &Counters,
) {
    let mut ev = info.event(gw, EventType::SessionEnd);
    ev.bytes_up = Some(counters.a_to_b());
    ev.bytes_down = Some(counters.b_to_a());
    ev.duration_ms = Some(started.elapsed().as_millis() as u64);
    ev.close_reason = Some(reason.to_owned());
    ev.detail = detail;
    info!(
        session_id = %info.id,
        user = %info.user,
        endpoint = %info.endpoint.name,
        reason,
        bytes_up = counters.a_to_b(),
        bytes_down = counters.b_to_a(),
        "session ended"
    );
    if let Err(e) = gw.audit.record(ev).await {
        tracing::error!(session_id = %info.id, error = %e, "could not write session.end");
    }
}
