//! Live sessions and their continuous authorization.
//!
//! Each live session keeps the [`Session`] it was authorized as (subject, endpoint, decision,
//! connector), a kill switch (with a reason) and an adjustable deadline, so the gateway can
//! *continuously* authorize it: on a policy reload every live session is re-evaluated against
//! the new policy; one no longer allowed is ended at once (`session.terminated` naming the rule
//! that now denies, then `session.end`), and a shorter `max_session` moves its deadline.
//! Revocations (token, user, device, connector) and shutdown use the same kill switch. Every
//! end is audited with the bytes moved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use postern_net::relay::{Counters, Ended};
use postern_net::resume::{Event, Finished, Moved};
use postern_policy::Policy;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use super::events;
use super::handler::{BoxIo, EndpointHandler, HandlerCtx};
pub use super::session::Session;
use super::{deadline_for, Access, Deadline};
use crate::authn::tokens::TokenError;
use crate::authn::{Authn, SessionControl};
use crate::clock::SharedClock;

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

    pub fn is_killed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the switch is thrown.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "terminated".into())
    }
}

struct Live {
    kill: Arc<Kill>,
    session: Arc<Session>,
    deadline: watch::Sender<Deadline>,
}

/// The live sessions of this gateway.
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    empty: tokio::sync::Notify,
    clock: SharedClock,
}

/// Outcome of re-evaluating live sessions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    pub checked: usize,
    pub terminated: usize,
    pub shortened: usize,
}

impl Sessions {
    pub fn new(clock: SharedClock) -> Sessions {
        Sessions {
            live: Mutex::new(HashMap::new()),
            empty: tokio::sync::Notify::new(),
            clock,
        }
    }

    /// Registers a live session; returns its kill switch and its deadline's receiver.
    pub(super) fn insert(
        &self,
        session: Arc<Session>,
        deadline: Deadline,
    ) -> (Arc<Kill>, watch::Receiver<Deadline>) {
        let kill = Arc::new(Kill::default());
        let (tx, rx) = watch::channel(deadline);
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                session.id.clone(),
                Live {
                    kill: kill.clone(),
                    session,
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every live session whose entry matches `select`; returns how many.
    fn kill_where(&self, reason: &str, select: impl Fn(&Live) -> bool) -> usize {
        let Ok(m) = self.live.lock() else {
            return 0;
        };
        let mut n = 0;
        for l in m.values().filter(|l| select(l)) {
            l.kill.kill(reason);
            n += 1;
        }
        n
    }

    pub fn kill_all(&self, reason: &str) {
        self.kill_where(reason, |_| true);
    }

    /// Ends every session opened with token `jti`.
    pub fn kill_token(&self, jti: &str, reason: &str) -> usize {
        self.kill_where(reason, |l| l.session.subject.claims.jti == jti)
    }

    /// Ends every session relayed by `connector_id`.
    pub fn kill_connector(&self, connector_id: &str, reason: &str) -> usize {
        self.kill_where(reason, |l| {
            l.session.connector.as_ref().map(|c| c.id.as_str()) == Some(connector_id)
        })
    }

    /// Ends every live session that its token would no longer open — the token revoked (by
    /// a sign-out here or in another process), its user revoked, its device no longer active —
    /// each with a `session.terminated` event saying why. The same checks as a token's
    /// verification (`Authn::check_live`). Returns how many.
    pub fn enforce_revocations(&self, authn: &Authn, audit: &crate::audit::Audit) -> usize {
        let Ok(m) = self.live.lock() else {
            return 0;
        };
        let mut n = 0;
        for live in m.values() {
            let s = &live.session;
            let claims = &s.subject.claims;
            let (reason, detail) = match authn.check_live(claims) {
                Ok(()) => continue,
                Err(TokenError::Revoked) => (
                    "token_revoked",
                    format!("token revoked: session token {} was revoked", claims.jti),
                ),
                Err(TokenError::UserRevoked) => (
                    "user_revoked",
                    format!("user revoked: access for {} was revoked", claims.sub),
                ),
                Err(TokenError::DeviceNotActive(id, status)) => (
                    "device_revoked",
                    format!("device revoked: device {id} is now {status}"),
                ),
                Err(e) => (e.code(), e.to_string()),
            };
            if live.kill.is_killed() {
                continue;
            }
            info!(session_id = %s.id, user = %claims.sub, reason, "terminating session: revoked");
            audit.record_nowait(events::terminated(audit, s, None, Some(reason), detail));
            live.kill.kill(reason);
            n += 1;
        }
        n
    }

    /// Asks `policy` again about every live session (continuous authorization). Sessions no
    /// longer allowed — or whose endpoint now points elsewhere — are terminated with a
    /// `session.terminated` event carrying the new decision; a shorter limit moves deadlines.
    pub fn reevaluate(&self, policy: &Policy, audit: &crate::audit::Audit, why: &str) -> Recheck {
        let mut out = Recheck::default();
        let Ok(m) = self.live.lock() else {
            return out;
        };
        let now = self.clock.now();
        for live in m.values() {
            out.checked += 1;
            let s = &live.session;
            let decision = policy.evaluate(&s.request(now));
            let moved = policy.endpoint(&s.endpoint.name).is_some_and(|e| {
                e.site != s.endpoint.site || e.host != s.endpoint.host || e.port != s.endpoint.port
            });
            if !decision.is_allowed() || moved {
                let reason = if moved {
                    format!(
                        "endpoint '{}' now points to another address",
                        s.endpoint.name
                    )
                } else {
                    decision.reason.clone()
                };
                info!(session_id = %s.id, user = %s.subject.user(), source = %s.subject.source, endpoint = %s.endpoint.name, %reason, "terminating session: access withdrawn");
                audit.record_nowait(events::terminated(
                    audit,
                    s,
                    Some(&decision),
                    None,
                    format!("{why}: {reason}"),
                ));
                live.kill.kill("access_withdrawn");
                out.terminated += 1;
                continue;
            }
            let new = deadline_for(&decision, s.started, s.subject.claims.exp, &*self.clock);
            let current = *live.deadline.borrow();
            if new.at < current.at {
                let _ = live.deadline.send(new);
                out.shortened += 1;
            }
        }
        out
    }

    /// The live session `id` as it stands now (its sign-in may have been renewed since it
    /// started).
    pub fn current(&self, id: &str) -> Option<Arc<Session>> {
        self.live.lock().ok()?.get(id).map(|l| l.session.clone())
    }

    /// Moves every live session opened with token `previous_jti` onto `subject` (a renewed
    /// sign-in: the caller checked that it is the same user and device). Each is asked of
    /// `policy` again: one still allowed takes the new subject and decision, and its deadline
    /// follows the new token (it may move later, never past the rule's maximum since the
    /// session started), audited `session.renewed`; one no longer allowed ends at once
    /// (`session.terminated`, then `session.end` `access_withdrawn`).
    pub fn renew(
        &self,
        previous_jti: &str,
        subject: &crate::authn::Subject,
        policy: &Policy,
        audit: &crate::audit::Audit,
    ) -> postern_proto::wire::SessionRenewResponse {
        let mut out = postern_proto::wire::SessionRenewResponse::default();
        let Ok(mut m) = self.live.lock() else {
            return out;
        };
        let now = self.clock.now();
        for live in m.values_mut() {
            let old = &live.session;
            if old.subject.claims.jti != previous_jti || live.kill.is_killed() {
                continue;
            }
            // The tunnel's own connection is the session's source, not the renewal's.
            let mut renewed = (**old).clone();
            renewed.subject = crate::authn::Subject {
                source: old.subject.source,
                ..subject.clone()
            };
            let decision = policy.evaluate(&renewed.request(now));
            if !decision.is_allowed() {
                info!(session_id = %old.id, reason = %decision.reason, "terminating session: the renewed sign-in is not allowed");
                audit.record_nowait(events::terminated(
                    audit,
                    &renewed,
                    Some(&decision),
                    None,
                    format!("sign-in renewed: {}", decision.reason),
                ));
                live.kill.kill("access_withdrawn");
                out.ended.push(postern_proto::wire::EndedSession {
                    session_id: old.id.clone(),
                    endpoint: old.endpoint.name.clone(),
                    reason: decision.reason.clone(),
                });
                continue;
            }
            renewed.decision = events::decision_ref(&decision);
            let deadline = deadline_for(
                &decision,
                renewed.started,
                renewed.subject.claims.exp,
                &*self.clock,
            );
            let until = self.clock.unix()
                + deadline
                    .at
                    .saturating_duration_since(self.clock.instant())
                    .as_secs();
            let detail = format!(
                "sign-in renewed: token {} replaced by {}; the session may last until {} ({})",
                previous_jti,
                renewed.subject.claims.jti,
                humantime::format_rfc3339_seconds(crate::clock::from_unix(until)),
                deadline.reason,
            );
            info!(session_id = %old.id, until, "session renewed");
            let renewed = Arc::new(renewed);
            audit.record_nowait(events::renewed(audit, &renewed, detail));
            out.renewed.push(postern_proto::wire::RenewedSession {
                session_id: renewed.id.clone(),
                endpoint: renewed.endpoint.name.clone(),
                until,
            });
            live.session = renewed;
            let _ = live.deadline.send(deadline);
        }
        out
    }

    /// Waits until no session is live, or `limit` passes.
    pub async fn wait_empty(&self, limit: Duration) {
        let deadline = self.clock.instant() + limit;
        loop {
            let notified = self.empty.notified();
            if self.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

impl SessionControl for Sessions {
    fn end_token(&self, jti: &str, reason: &str) -> usize {
        self.kill_token(jti, reason)
    }
}

/// A registered session that is about to relay: the session, its kill switch and deadline,
/// its limits and the upstream's end signal.
pub struct Tunnel {
    pub session: Arc<Session>,
    pub kill: Arc<Kill>,
    pub deadline: watch::Receiver<Deadline>,
    pub idle_limit: Option<Duration>,
    /// The rule's `resume_grace` (zero: not resumable).
    pub resume_grace: Duration,
    /// When time alone could change the decision: re-check then.
    pub recheck_at: Option<SystemTime>,
    /// Cancelled when the upstream connection (the connector link) is gone: an endpoint-side
    /// failure is then `connector_lost` rather than `endpoint_error`.
    pub upstream_lost: CancellationToken,
}

impl Access {
    /// Serves a tunnel with `handler` until it ends, then writes `session.end`.
    ///
    /// Besides the handler it watches: the deadline (rule's maximum, token expiry; moved by
    /// policy reloads), the kill switch, the idle limit, and `recheck_at` — the instant the
    /// policy said the decision could change by time alone; then the session is evaluated
    /// again and ended if no longer allowed.
    ///
    /// A resumable tunnel comes with its `engine` (then `client` is the engine's pipe): a
    /// lost link suspends the session (`session.suspended`) until the client resumes it
    /// (`session.resumed`) or the rule's `resume_grace` runs out (`resume_expired`).
    pub async fn supervise(
        &self,
        tunnel: Tunnel,
        handler: Arc<dyn EndpointHandler>,
        client: BoxIo,
        upstream: BoxIo,
        engine: Option<super::resume::Engine>,
    ) {
        let counters = Arc::new(Counters::default());
        self.supervise_counted(tunnel, handler, client, upstream, engine, counters)
            .await
    }

    /// [`Access::supervise`] with the byte counters given: a handler that is not a byte relay
    /// (the web proxy, whose requests move the bytes) publishes into them, and the idle limit
    /// and `session.end` read them.
    pub async fn supervise_counted(
        &self,
        tunnel: Tunnel,
        handler: Arc<dyn EndpointHandler>,
        client: BoxIo,
        upstream: BoxIo,
        engine: Option<super::resume::Engine>,
        counters: Arc<Counters>,
    ) {
        let span = tunnel.session.span();
        self.supervise_inner(tunnel, handler, client, upstream, engine, counters)
            .instrument(span)
            .await
    }

    async fn supervise_inner(
        &self,
        tunnel: Tunnel,
        handler: Arc<dyn EndpointHandler>,
        client: BoxIo,
        upstream: BoxIo,
        mut engine: Option<super::resume::Engine>,
        counters: Arc<Counters>,
    ) {
        let Tunnel {
            session,
            kill,
            deadline: mut deadline_rx,
            idle_limit,
            resume_grace: _,
            mut recheck_at,
            upstream_lost,
        } = tunnel;
        let active = self
            .metrics
            .sessions_active
            .with_label_values(&[&session.endpoint.site, &session.endpoint.name]);
        active.inc();
        let ctx = HandlerCtx {
            session_id: session.id.clone(),
            endpoint: session.endpoint.name.clone(),
            protocol: session.endpoint.protocol.clone(),
            counters,
        };
        let counters = ctx.counters.clone();
        let finished = engine.as_mut().and_then(|e| e.finished.take());
        // Set when the handler's relay ended (a resumable tunnel may still be delivering).
        let handler_ended = std::sync::OnceLock::new();
        let served = serve(
            handler.serve(&ctx, client, upstream),
            finished,
            &handler_ended,
        );
        tokio::pin!(served);
        // Since when the client's link is lost, while it is.
        let mut suspended: Option<Instant> = None;
        let mut engine_events = engine.is_some();
        let idle_tick =
            idle_limit.map(|l| (l / 4).clamp(Duration::from_millis(250), Duration::from_secs(30)));
        let mut last_moved = (0u64, self.clock.instant());
        let far = Duration::from_secs(365 * 24 * 3600);
        let grace = engine.as_ref().map(|e| e.grace).unwrap_or_default();
        // The session as it stands: a renewed sign-in replaces its subject and decision.
        let live_session = || {
            self.sessions
                .current(&session.id)
                .unwrap_or_else(|| session.clone())
        };
        let (reason, detail) = loop {
            let current = *deadline_rx.borrow_and_update();
            let until_recheck = recheck_at
                .map(|t| t.duration_since(self.clock.now()).unwrap_or(Duration::ZERO))
                .unwrap_or(far);
            // Once both ends have closed, only the last bytes and acknowledgements are left:
            // a client that went away then is waited for briefly, not for the whole grace.
            let wait = match handler_ended.get() {
                Some(_) => grace.min(LINGER),
                None => grace,
            };
            let give_up = suspended.map(|at| at + wait);
            tokio::select! {
                outcome = &mut served => break match outcome {
                    // A kill ends the relay too (a revoked connector's link is dropped right
                    // after its sessions are killed): when both are ready, the kill is why.
                    _ if kill.is_killed() => (kill.reason(), None),
                    Served::Handler(ended) => (ended_reason(ended, &upstream_lost).await, None),
                    Served::Engine(f) => engine_reason(f),
                },
                ev = next_event(&mut engine), if engine_events => match ev {
                    Some(Event::LinkLost { detached }) => {
                        if suspended.is_none() {
                            suspended = Some(self.clock.instant());
                            self.metrics.sessions_suspended.inc();
                            let detail = if detached {
                                "the client came back on a new connection before its old one was seen to fail"
                            } else {
                                "the client's link was lost"
                            };
                            info!(grace = ?grace, "session suspended: {detail}");
                            self.audit.record_nowait(events::suspended(&self.audit, &live_session(), format!("{detail}; the endpoint stays open for {}", humantime::format_duration(grace))));
                        }
                    }
                    Some(Event::Attached { tag }) => {
                        if let Some(at) = suspended.take() {
                            self.metrics.sessions_suspended.dec();
                            let outage = (self.clock.instant() - at).as_millis() as u64;
                            info!(outage_ms = outage, from = %tag, "session resumed");
                            self.audit.record_nowait(events::resumed(&self.audit, &live_session(), Some(&tag), outage));
                        }
                    }
                    None => engine_events = false,
                },
                _ = sleep_until_opt(give_up), if give_up.is_some() => {
                    if let Some(ended) = handler_ended.get() {
                        let detail = "both ends had closed; the client did not come back for the last bytes and acknowledgements";
                        break (ended_reason(*ended, &upstream_lost).await, Some(detail.to_owned()));
                    }
                    break ("resume_expired".to_owned(), Some(format!("the connection was not back within the rule's resume grace ({})", humantime::format_duration(grace))));
                }
                _ = tokio::time::sleep_until(current.at) => break (current.reason.to_owned(), None),
                changed = deadline_rx.changed() => {
                    if changed.is_err() {
                        // The registry entry is gone: only kill() does that; wait for it.
                        kill.token.cancelled().await;
                        break (kill.reason(), None);
                    }
                }
                _ = kill.token.cancelled() => break (kill.reason(), None),
                _ = tokio::time::sleep(until_recheck), if recheck_at.is_some() => {
                    let session = live_session();
                    let decision = self.policy().evaluate(&session.request(self.clock.now()));
                    if !decision.is_allowed() {
                        info!(reason = %decision.reason, "terminating session: time-bound access ended");
                        self.audit.record_nowait(events::terminated(
                            &self.audit,
                            &session,
                            Some(&decision),
                            None,
                            format!("time-bound access ended: {}", decision.reason),
                        ));
                        break ("access_withdrawn".to_owned(), Some(decision.reason.clone()));
                    }
                    recheck_at = decision.valid_until;
                }
                _ = tokio::time::sleep(idle_tick.unwrap_or(far)), if idle_tick.is_some() => {
                    let moved = counters.a_to_b() + counters.b_to_a();
                    if moved != last_moved.0 {
                        last_moved = (moved, self.clock.instant());
                    } else if idle_limit.is_some_and(|l| self.clock.instant() - last_moved.1 >= l) {
                        break ("idle_timeout".to_owned(), None);
                    }
                }
            }
        };
        active.dec();
        if suspended.is_some() {
            self.metrics.sessions_suspended.dec();
        }
        if let Some(e) = &engine {
            e.end(super::resume::sentence(&reason, detail.as_deref()));
        }
        self.metrics
            .tunnel_bytes
            .with_label_values(&["up"])
            .inc_by(counters.a_to_b());
        self.metrics
            .tunnel_bytes
            .with_label_values(&["down"])
            .inc_by(counters.b_to_a());
        self.end(&live_session(), &reason, detail, &counters).await;
    }

    /// Registers a session that has started (its `session.start` is written): from now on
    /// revocations, policy reloads and shutdown reach it.
    pub fn register(
        &self,
        session: Arc<Session>,
        deadline: Deadline,
    ) -> (Arc<Kill>, watch::Receiver<Deadline>) {
        self.sessions.insert(session, deadline)
    }

    /// Writes `session.end` for a session that started (also for ones that never relayed a
    /// byte) and only then takes it out of the registry: shutdown waits for the registry to
    /// empty before it closes the audit log, so every `session.end` is on disk first.
    pub async fn end(
        &self,
        s: &Session,
        reason: &str,
        detail: Option<String>,
        counters: &Counters,
    ) {
        let duration_ms = (self.clock.instant() - s.started).as_millis() as u64;
        info!(
            session_id = %s.id,
            user = %s.subject.user(),
            endpoint = %s.endpoint.name,
            reason,
            bytes_up = counters.a_to_b(),
            bytes_down = counters.b_to_a(),
            "session ended"
        );
        let ev = events::end(&self.audit, s, reason, detail, counters, duration_ms);
        if let Err(e) = self.audit.record(ev).await {
            tracing::error!(session_id = %s.id, error = %e, "could not write session.end");
        }
        self.sessions.remove(&s.id);
    }
}

/// How serving a tunnel ended: the handler's relay (a plain tunnel, or a resumable one whose
/// engine then delivered everything), or the resume engine first (the client ended the
/// tunnel, or broke its protocol).
enum Served {
    Handler(Ended),
    Engine(Option<Finished>),
}

/// How long a suspended resumable tunnel whose ends have both closed waits for its client.
const LINGER: Duration = Duration::from_secs(5);

/// Serves a tunnel: the handler, and for a resumable tunnel its engine's outcome. Notes in
/// `handler_ended` when the handler's relay ended.
async fn serve(
    handler: impl std::future::Future<Output = Ended>,
    finished: Option<JoinHandle<(Finished, Moved)>>,
    handler_ended: &std::sync::OnceLock<Ended>,
) -> Served {
    let Some(mut finished) = finished else {
        return Served::Handler(handler.await);
    };
    tokio::pin!(handler);
    tokio::select! {
        ended = &mut handler => {
            let _ = handler_ended.set(ended);
            if matches!(ended, Ended::AError | Ended::BError) {
                // The endpoint side failed: the session ends now (the client is told why).
                return Served::Handler(ended);
            }
            // Both ends of the pipe are closed: the engine delivers what it holds, then ends.
            match finished.await {
                Ok((Finished::Clean, _)) | Err(_) => Served::Handler(ended),
                Ok((f, _)) => Served::Engine(Some(f)),
            }
        }
        f = &mut finished => match f {
            Ok((Finished::Clean, _)) => Served::Handler(handler.await),
            Ok((f, _)) => Served::Engine(Some(f)),
            Err(_) => Served::Engine(None),
        },
    }
}

/// The close reason of a relay that ended.
async fn ended_reason(ended: Ended, upstream_lost: &CancellationToken) -> String {
    match ended {
        Ended::AClosed => "client_closed".to_owned(),
        Ended::AError => "client_error".to_owned(),
        Ended::BClosed | Ended::BError if upstream_gone(upstream_lost, ended).await => {
            "connector_lost".to_owned()
        }
        Ended::BClosed => "endpoint_closed".to_owned(),
        Ended::BError => "endpoint_error".to_owned(),
    }
}

/// The close reason (and detail) when a resumable tunnel's engine ended the session.
fn engine_reason(f: Option<Finished>) -> (String, Option<String>) {
    let bounded = |s: &str| crate::http::printable(s, 200);
    match f {
        Some(Finished::PeerClosed(why)) => ("client_closed".to_owned(), Some(bounded(&why))),
        Some(Finished::Protocol(why)) => ("client_error".to_owned(), Some(bounded(&why))),
        Some(Finished::LocalError(why)) => ("error".to_owned(), Some(bounded(&why))),
        Some(Finished::Clean) | Some(Finished::Closed) | Some(Finished::Abandoned) | None => (
            "error".to_owned(),
            Some("the resume engine stopped".to_owned()),
        ),
    }
}

async fn next_event(engine: &mut Option<super::resume::Engine>) -> Option<Event> {
    match engine {
        Some(e) => e.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether the endpoint side ended because the upstream connection went away. A stream error
/// and the end of its connection are seen by different tasks in either order, so after an
/// error this waits briefly (both are woken by the same connection event, so 200 ms is ample)
/// for the connection's end signal; a clean close only checks it.
async fn upstream_gone(lost: &CancellationToken, ended: Ended) -> bool {
    if ended == Ended::BError {
        tokio::time::timeout(Duration::from_millis(200), lost.cancelled())
            .await
            .is_ok()
    } else {
        lost.is_cancelled()
    }
}
