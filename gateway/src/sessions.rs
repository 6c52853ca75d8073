//! Live tunnels.
//!
//! Each live session keeps the facts it was authorized on, a kill switch (with a reason) and an
//! adjustable deadline, so that the gateway can *continuously* authorize it: on a policy reload
//! every live session is re-evaluated against the new policy; one no longer allowed is ended
//! at once (`session.terminated` naming the rule that now denies, then `session.end`), and a
//! shorter `max_session` moves its deadline. Shutdown and connector revocation use the same
//! kill switch. Every end is audited with the bytes moved.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_audit::{ConnectorRef, DecisionRef, EndpointRef, Event, EventType};
use postern_net::relay::{relay, Counters, Ended};
use postern_policy::{Decision, Policy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
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
    /// Break-glass reason the clinician gave (audited, flagged for review).
    pub justification: Option<String>,
    /// Report-only conditions that would have denied ("would deny" findings).
    pub report_only: Vec<String>,
    /// `display` (pixels only) or `data` (images reach the laptop).
    pub egress_class: Option<String>,
    /// The device the session's token is bound to.
    pub device: Option<postern_audit::DeviceRef>,
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
        ev.justification = self.justification.clone();
        ev.report_only = (!self.report_only.is_empty()).then(|| self.report_only.clone());
        ev.egress_class = self.egress_class.clone();
        ev.device = self.device.clone();
        ev
    }
}

/// The findings of a decision's report-only conditions, as audit strings.
pub fn report_only(d: &Decision) -> Vec<String> {
    d.report_only
        .iter()
        .map(|r| {
            format!(
                "would deny: rule '{}' {}: {}",
                r.rule, r.condition, r.reason
            )
        })
        .collect()
}

/// The facts a session was authorized on: enough to ask the policy again.
#[derive(Debug, Clone)]
pub struct Facts {
    pub source_ip: IpAddr,
    /// Token expiry (seconds since the epoch): the session never outlives it.
    pub token_exp: u64,
    /// Token id: revoking the token ends the session.
    pub jti: String,
    pub mfa: bool,
    pub auth_time: Option<SystemTime>,
    pub justification: Option<String>,
    pub started: Instant,
    /// When the token was issued (`user revoke` ends sessions of tokens issued before it).
    pub token_iat: u64,
    /// The device the token is bound to: revoking it ends the session.
    pub device_id: Option<String>,
    /// The device facts the policy saw.
    pub device: Option<postern_policy::DeviceFacts>,
}

impl Facts {
    /// The policy request this session was (and is again) authorized on, as of `at`.
    pub fn request<'a>(
        &'a self,
        info: &'a SessionInfo,
        at: SystemTime,
    ) -> postern_policy::Request<'a> {
        let r = postern_policy::Request::new(&info.user, &info.groups, &info.endpoint.name, at)
            .with_source(self.source_ip)
            .with_auth(self.mfa, self.auth_time);
        let r = match &self.device {
            Some(d) => r.with_device(d),
            None => r,
        };
        match &self.justification {
            Some(j) => r.with_justification(j),
            None => r,
        }
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

/// A deadline and the close reason to use when it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub reason: &'static str,
}

/// The deadline for a session started at `started` under `decision`: the rule's maximum
/// duration, capped by the token's expiry.
pub fn deadline_for(decision: &Decision, started: Instant, token_exp: u64) -> Deadline {
    let max = decision
        .limits
        .max_session
        .unwrap_or(postern_policy::DEFAULT_MAX_SESSION);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token_left = Duration::from_secs(token_exp.saturating_sub(now_unix));
    let by_rule = started + max;
    let by_token = Instant::now() + token_left;
    if by_token < by_rule {
        Deadline {
            at: by_token,
            reason: "token_expired",
        }
    } else {
        Deadline {
            at: by_rule,
            reason: "max_duration",
        }
    }
}

struct Live {
    kill: Arc<Kill>,
    info: SessionInfo,
    facts: Facts,
    deadline: watch::Sender<Deadline>,
}

/// The live sessions of this gateway.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    empty: tokio::sync::Notify,
}

/// Outcome of re-evaluating live sessions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    pub checked: usize,
    pub terminated: usize,
    pub shortened: usize,
}

impl Sessions {
    fn insert(
        &self,
        info: &SessionInfo,
        facts: Facts,
        deadline: Deadline,
    ) -> (Arc<Kill>, watch::Receiver<Deadline>) {
        let kill = Arc::new(Kill::default());
        let (tx, rx) = watch::channel(deadline);
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                info.id.clone(),
                Live {
                    kill: kill.clone(),
                    info: info.clone(),
                    facts,
                    deadline: tx,
                },
            );
        }
        (kill, rx)
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

    /// Ends every session opened with token `jti`.
    pub fn kill_token(&self, jti: &str, reason: &str) -> usize {
        let mut n = 0;
        if let Ok(m) = self.live.lock() {
            for l in m.values().filter(|l| l.facts.jti == jti) {
                l.kill.kill(reason);
                n += 1;
            }
        }
        n
    }

    /// Ends every session relayed by `connector_id`.
    pub fn kill_connector(&self, connector_id: &str, reason: &str) -> usize {
        let mut n = 0;
        if let Ok(m) = self.live.lock() {
            for l in m.values() {
                if l.info.connector.as_ref().map(|c| c.id.as_str()) == Some(connector_id) {
                    l.kill.kill(reason);
                    n += 1;
                }
            }
        }
        n
    }

    /// Ends every live session whose device is no longer active or whose user was revoked,
    /// each with a `session.terminated` event saying why. Returns how many.
    pub fn enforce_devices(&self, gw: &Gateway) -> usize {
        let mut n = 0;
        let Ok(m) = self.live.lock() else {
            return 0;
        };
        for live in m.values() {
            let user_revoked = gw
                .devices
                .user_revoked(&live.info.user, live.facts.token_iat);
            let device_state = live.facts.device_id.as_ref().and_then(|id| {
                match gw.devices.view(id).map(|v| v.status) {
                    Some(crate::state::DeviceStatus::Active) => None,
                    Some(s) => Some((id.clone(), s.as_str())),
                    None => Some((id.clone(), "unregistered")),
                }
            });
            let (reason, detail) = match (user_revoked, device_state) {
                (true, _) => (
                    "user_revoked",
                    format!("user revoked: access for {} was revoked", live.info.user),
                ),
                (false, Some((id, status))) => (
                    "device_revoked",
                    format!("device revoked: device {id} is now {status}"),
                ),
                (false, None) => continue,
            };
            if live.kill.token.is_cancelled() {
                continue;
            }
            info!(session_id = %live.info.id, user = %live.info.user, reason, "terminating session: device or user revoked");
            let mut ev = live.info.event(gw, EventType::SessionTerminated);
            ev.close_reason = Some(reason.to_owned());
            ev.detail = Some(detail);
            gw.audit.record_nowait(ev);
            live.kill.kill(reason);
            n += 1;
        }
        n
    }

    /// Asks `policy` again about every live session (continuous authorization). Sessions no
    /// longer allowed — or whose endpoint now points elsewhere — are terminated with a
    /// `session.terminated` event carrying the new decision; a shorter limit moves deadlines.
    pub fn reevaluate(&self, gw: &Gateway, policy: &Policy, why: &str) -> Recheck {
        let mut out = Recheck::default();
        let Ok(m) = self.live.lock() else {
            return out;
        };
        let now = SystemTime::now();
        for live in m.values() {
            out.checked += 1;
            let info = &live.info;
            let decision = policy.evaluate(&live.facts.request(info, now));
            let moved = policy.endpoint(&info.endpoint.name).is_some_and(|e| {
                e.site != info.endpoint.site
                    || e.host != info.endpoint.host
                    || e.port != info.endpoint.port
            });
            if !decision.is_allowed() || moved {
                let reason = if moved {
                    format!(
                        "endpoint '{}' now points to another address",
                        info.endpoint.name
                    )
                } else {
                    decision.reason.clone()
                };
                info!(session_id = %info.id, user = %info.user, source = %live.facts.source_ip, endpoint = %info.endpoint.name, %reason, "terminating session: access withdrawn");
                let mut ev = info.event(gw, EventType::SessionTerminated);
                ev.decision = Some(crate::client_api::decision_ref(&decision));
                ev.detail = Some(format!("{why}: {reason}"));
                gw.audit.record_nowait(ev);
                live.kill.kill("access_withdrawn");
                out.terminated += 1;
                continue;
            }
            let new = deadline_for(&decision, live.facts.started, live.facts.token_exp);
            let current = *live.deadline.borrow();
            if new.at < current.at {
                let _ = live.deadline.send(new);
                out.shortened += 1;
            }
        }
        out
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
///
/// Besides the relay it watches: the deadline (rule's maximum, token expiry; moved by policy
/// reloads), the kill switch, the idle limit, and `recheck_at` — the instant the policy said the
/// decision could change by time alone (a window closing, a contract ending); then the session
/// is evaluated again and ended if no longer allowed.
///
/// `link_lost` is the connector link's end signal: when the endpoint side fails because the
/// link to the connector went away (connector killed, network cut), the reason is
/// `connector_lost`.
#[allow(clippy::too_many_arguments)]
pub async fn run_session<C, E>(
    gw: Arc<Gateway>,
    info: SessionInfo,
    facts: Facts,
    deadline: Deadline,
    idle_limit: Option<Duration>,
    mut recheck_at: Option<SystemTime>,
    link_lost: CancellationToken,
    client: C,
    endpoint: E,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    E: AsyncRead + AsyncWrite + Unpin,
{
    let started = facts.started;
    let recheck_facts = facts.clone();
    let (kill, mut deadline_rx) = gw.sessions.insert(&info, facts, deadline);
    let active = gw
        .metrics
        .sessions_active
        .with_label_values(&[&info.endpoint.site, &info.endpoint.name]);
    active.inc();
    let counters = Arc::new(Counters::default());
    let relay = relay(client, endpoint, counters.clone());
    tokio::pin!(relay);
    let idle_tick =
        idle_limit.map(|l| (l / 4).clamp(Duration::from_millis(250), Duration::from_secs(30)));
    let mut last_moved = (0u64, Instant::now());
    let far = Duration::from_secs(365 * 24 * 3600);
    let reason = loop {
        let current = *deadline_rx.borrow_and_update();
        let until_recheck = recheck_at
            .map(|t| {
                t.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(far);
        tokio::select! {
            ended = &mut relay => break match ended {
                Ended::AClosed => "client_closed".to_owned(),
                Ended::AError => "client_error".to_owned(),
                Ended::BClosed | Ended::BError if connector_lost(&link_lost, ended).await => {
                    "connector_lost".to_owned()
                }
                Ended::BClosed => "endpoint_closed".to_owned(),
                Ended::BError => "endpoint_error".to_owned(),
            },
            _ = tokio::time::sleep_until(current.at.into()) => break current.reason.to_owned(),
            changed = deadline_rx.changed() => {
                if changed.is_err() {
                    // The registry entry is gone: only kill() does that; wait for it.
                    kill.token.cancelled().await;
                    break kill.reason();
                }
            }
            _ = kill.token.cancelled() => break kill.reason(),
            _ = tokio::time::sleep(until_recheck), if recheck_at.is_some() => {
                let policy = gw.policy();
                let decision = policy.evaluate(&recheck_facts.request(&info, SystemTime::now()));
                if !decision.is_allowed() {
                    info!(session_id = %info.id, user = %info.user, endpoint = %info.endpoint.name, reason = %decision.reason, "terminating session: time-bound access ended");
                    let mut ev = info.event(&gw, EventType::SessionTerminated);
                    ev.decision = Some(crate::client_api::decision_ref(&decision));
                    ev.detail = Some(format!("time-bound access ended: {}", decision.reason));
                    gw.audit.record_nowait(ev);
                    break "access_withdrawn".to_owned();
                }
                recheck_at = decision.valid_until;
            }
            _ = tokio::time::sleep(idle_tick.unwrap_or(far)), if idle_tick.is_some() => {
                let moved = counters.a_to_b() + counters.b_to_a();
                if moved != last_moved.0 {
                    last_moved = (moved, Instant::now());
                } else if idle_limit.is_some_and(|l| last_moved.1.elapsed() >= l) {
                    break "idle_timeout".to_owned();
                }
            }
        }
    };
    active.dec();
    gw.metrics
        .tunnel_bytes
        .with_label_values(&["up"])
        .inc_by(counters.a_to_b());
    gw.metrics
        .tunnel_bytes
        .with_label_values(&["down"])
        .inc_by(counters.b_to_a());
    end_session(&gw, &info, started, &reason, None, &counters).await;
    // Only now: shutdown waits for the registry to empty before it closes the audit log, so
    // every session.end is on disk first.
    gw.sessions.remove(&info.id);
}

/// Whether the endpoint side ended because the connector link went away. A stream error and
/// the end of its connection are seen by different tasks in either order, so after an error
/// this waits briefly (both are woken by the same connection event, so 200 ms is ample) for
/// the link's end signal; a clean close only checks it.
async fn connector_lost(link_lost: &CancellationToken, ended: Ended) -> bool {
    if ended == Ended::BError {
        tokio::time::timeout(Duration::from_millis(200), link_lost.cancelled())
            .await
            .is_ok()
    } else {
        link_lost.is_cancelled()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[endpoints]]
name = "pacs"
site = "truro"
host = "10.0.0.1"
port = 104
protocol = "dicom"

[[rules]]
id = "consultants"
effect = "allow"
groups = ["consultants", "locums"]
endpoints = ["pacs"]
"#;

    /// Continuous authorization at scale: 10,000 live sessions, a reload that withdraws access
    /// from half of them. Prints how long the re-evaluation took (docs/benchmarks.md records a
    /// release-build run; this test checks the outcome, not the time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reevaluating_ten_thousand_live_sessions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        let config =
            crate::Config::local(&dir.path().join("state"), &dir.path().join("policy.toml"));
        let listeners = crate::Listeners::bind(&config).await.unwrap();
        let gw = crate::init(config, &listeners).await.unwrap();
        let policy = gw.policy();
        let decision = policy.evaluate(&postern_policy::Request::new(
            "u",
            &["consultants".to_owned()],
            "pacs",
            SystemTime::now(),
        ));
        assert!(decision.is_allowed());
        let mut kills = Vec::new();
        for i in 0..10_000 {
            let group = if i % 2 == 0 { "consultants" } else { "locums" };
            let info = SessionInfo {
                id: format!("sess-{i}"),
                user: format!("user{i}@truro.nhs.uk"),
                groups: vec![group.to_owned()],
                source: "127.0.0.1:1".into(),
                endpoint: crate::client_api::endpoint_ref(policy.endpoint("pacs").unwrap()),
                decision: crate::client_api::decision_ref(&decision),
                connector: None,
                justification: None,
                report_only: Vec::new(),
                egress_class: None,
                device: None,
            };
            let facts = Facts {
                source_ip: "127.0.0.1".parse().unwrap(),
                token_exp: u64::MAX / 2,
                jti: format!("tok-{i}"),
                mfa: true,
                auth_time: Some(SystemTime::now()),
                justification: None,
                started: Instant::now(),
                token_iat: 0,
                device_id: None,
                device: None,
            };
            let deadline = deadline_for(&decision, Instant::now(), u64::MAX / 2);
            let (kill, _rx) = gw.sessions.insert(&info, facts, deadline);
            kills.push(kill);
        }
        let withdrawn = postern_policy::Policy::parse(
            &POLICY.replace("[\"consultants\", \"locums\"]", "[\"consultants\"]"),
            "policy.toml",
        )
        .unwrap();
        let t0 = Instant::now();
        let outcome = gw.sessions.reevaluate(&gw, &withdrawn, "test reload");
        let took = t0.elapsed();
        println!("re-evaluated {} live sessions in {took:?}", outcome.checked);
        assert_eq!(outcome.checked, 10_000);
        assert_eq!(outcome.terminated, 5_000);
        let killed = kills.iter().filter(|k| k.token.is_cancelled()).count();
        assert_eq!(killed, 5_000);
        assert!(kills[1].token.is_cancelled() && !kills[0].token.is_cancelled());
        assert_eq!(kills[1].reason(), "access_withdrawn");
        gw.audit.close().await.unwrap();
    }

    fn device_rec(id: &str, user: &str) -> crate::state::DeviceRec {
        crate::state::DeviceRec {
            id: id.into(),
            user: user.into(),
            name: "home laptop".into(),
            status: crate::state::DeviceStatus::Active,
            credential_id: format!("cred-{id}"),
            aaguid: "00000000-0000-0000-0000-000000000000".into(),
            sign_count: 0,
            user_verified: true,
            backup_eligible: false,
            backup_state: false,
            transports: vec![],
            created: 1,
            last_seen: None,
            approved: Some(1),
            approved_by: Some("test".into()),
            revoked: None,
            revoked_reason: None,
            posture: None,
            passkey: serde_json::Value::Null,
        }
    }

    /// `device revoke` and `user revoke` end exactly the live sessions of that device / user,
    /// each with `session.terminated` saying why and the kill reason `session.end` will carry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoking_a_device_or_user_ends_their_live_sessions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        let config =
            crate::Config::local(&dir.path().join("state"), &dir.path().join("policy.toml"));
        let listeners = crate::Listeners::bind(&config).await.unwrap();
        let gw = crate::init(config, &listeners).await.unwrap();
        for (id, user) in [("dev-a", "ann@x"), ("dev-b", "ann@x"), ("dev-c", "cat@x")] {
            gw.store.add_device(device_rec(id, user)).await.unwrap();
        }
        gw.reload_state().await.unwrap();
        let policy = gw.policy();
        let decision = policy.evaluate(&postern_policy::Request::new(
            "u",
            &["consultants".to_owned()],
            "pacs",
            SystemTime::now(),
        ));
        let mut kills = Vec::new();
        for (i, (user, device)) in [
            ("ann@x", Some("dev-a")),
            ("ann@x", Some("dev-b")),
            ("cat@x", Some("dev-c")),
            ("dan@x", None),
        ]
        .into_iter()
        .enumerate()
        {
            let info = SessionInfo {
                id: format!("sess-{i}"),
                user: user.into(),
                groups: vec!["consultants".into()],
                source: "127.0.0.1:1".into(),
                endpoint: crate::client_api::endpoint_ref(policy.endpoint("pacs").unwrap()),
                decision: crate::client_api::decision_ref(&decision),
                connector: None,
                justification: None,
                report_only: Vec::new(),
                egress_class: None,
                device: device.map(|d| postern_audit::DeviceRef {
                    id: d.into(),
                    ..Default::default()
                }),
            };
            let facts = Facts {
                source_ip: "127.0.0.1".parse().unwrap(),
                token_exp: u64::MAX / 2,
                jti: format!("tok-{i}"),
                mfa: true,
                auth_time: None,
                justification: None,
                started: Instant::now(),
                token_iat: crate::clock::unix_now() - 10,
                device_id: device.map(str::to_owned),
                device: None,
            };
            let deadline = deadline_for(&decision, Instant::now(), u64::MAX / 2);
            let (kill, _rx) = gw.sessions.insert(&info, facts, deadline);
            kills.push(kill);
        }
        assert_eq!(gw.sessions.enforce_devices(&gw), 0);

        crate::admin::device_revoke(&gw.config, "dev-a", "laptop lost")
            .await
            .unwrap();
        gw.reload_state().await.unwrap();
        assert_eq!(gw.sessions.enforce_devices(&gw), 1);
        assert!(kills[0].token.is_cancelled());
        assert_eq!(kills[0].reason(), "device_revoked");
        assert!(!kills[1].token.is_cancelled() && !kills[2].token.is_cancelled());

        let revoked = crate::admin::user_revoke(&gw.config, "cat@x")
            .await
            .unwrap();
        assert_eq!(revoked, vec!["dev-c".to_owned()]);
        gw.reload_state().await.unwrap();
        assert_eq!(gw.sessions.enforce_devices(&gw), 1);
        assert_eq!(kills[2].reason(), "user_revoked");
        assert!(!kills[1].token.is_cancelled() && !kills[3].token.is_cancelled());
        // Tokens issued before the user revocation are refused; later ones are not.
        let now = crate::clock::unix_now();
        assert!(gw.devices.user_revoked("cat@x", now - 5));
        assert!(!gw.devices.user_revoked("cat@x", now + 5));
        assert!(!gw.devices.user_revoked("ann@x", now - 5));

        gw.audit.close().await.unwrap();
        let mut text = String::new();
        for e in std::fs::read_dir(&gw.config.audit_dir).unwrap() {
            text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
        }
        let terminated: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "session.terminated")
            .collect();
        assert_eq!(terminated.len(), 2, "{terminated:?}");
        assert!(terminated[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("device revoked"));
        assert_eq!(terminated[0]["device"]["id"], "dev-a");
        assert!(terminated[1]["detail"]
            .as_str()
            .unwrap()
            .starts_with("user revoked"));
        // The admin commands audited themselves (they append directly to the log).
        assert!(text.contains("\"type\":\"device.revoked\""));
    }
}
