//! Application sessions: one per person per application per sign-in, started by the code
//! exchange (or carried on from a valid cookie after this replica restarted or another one
//! served it), ended like a tunnel — by the rule's deadline, its idle limit, a revocation, a
//! policy reload or shutdown — by the same supervisor, which writes `session.end`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::StatusCode;
use postern_net::relay::{Counters, Ended};
use postern_policy::Endpoint;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use super::pool::Pool;
use super::Web;
use crate::access::handler::{BoxIo, EndpointHandler, HandlerCtx};
use crate::access::sessions::{Kill, Session, Tunnel};
use crate::access::{authorize_as, Denied};
use crate::authn::tokens::Claims;

/// Most decisions one session keeps (method and path); the cache starts again when full.
const MAX_DECISIONS: usize = 512;

/// One live application session on this replica.
pub struct AppSession {
    pub session: Arc<Session>,
    pub endpoint: Endpoint,
    pub kill: Arc<Kill>,
    /// Bytes of its requests (up) and responses (down): the idle limit and `session.end`.
    pub counters: Arc<Counters>,
    /// Cancelled once the session has ended (its `session.end` is written): requests that
    /// still carry its cookie start over, open WebSockets close.
    pub closed: CancellationToken,
    /// Connections to the application, reused by its requests.
    pub pool: Pool,
    /// Requests seen, for sampling.
    pub requests: AtomicU64,
    /// The sign-in's session token.
    pub token: String,
    /// Until when its cookie is valid (seconds since the epoch).
    pub exp: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
    decisions: Mutex<Decisions>,
}

#[derive(Default)]
struct Decisions {
    policy_version: String,
    by_request: HashMap<(String, String), Cached>,
}

#[derive(Clone)]
struct Cached {
    allowed: Result<(), String>,
    /// When time alone could change it.
    valid_until: Option<SystemTime>,
}

impl AppSession {
    /// Whether the policy lets this session make `method path` now: cached per method and
    /// path until the policy changes or time could change the answer. Err: the reason.
    pub fn decide(&self, web: &Web, method: &str, path: &str) -> Result<(), String> {
        let policy = web.access.policy();
        let now = web.clock.now();
        let key = (method.to_owned(), path.to_owned());
        if let Ok(mut d) = self.decisions.lock() {
            if d.policy_version != policy.version() || d.by_request.len() >= MAX_DECISIONS {
                d.policy_version = policy.version().to_owned();
                d.by_request.clear();
            }
            if let Some(c) = d.by_request.get(&key) {
                if c.valid_until.is_none_or(|t| now < t) {
                    return c.allowed.clone();
                }
            }
        }
        let s = &self.session;
        let request = s
            .subject
            .request(&s.endpoint.name, now, None)
            .with_web_request(method, path);
        let decision = policy.evaluate(&request);
        let allowed = if decision.is_allowed() {
            Ok(())
        } else {
            Err(decision.reason.clone())
        };
        if let Ok(mut d) = self.decisions.lock() {
            d.by_request.insert(
                key,
                Cached {
                    allowed: allowed.clone(),
                    valid_until: decision.valid_until,
                },
            );
        }
        allowed
    }
}

/// The application sessions this replica serves, by session id.
#[derive(Default)]
pub struct AppSessions {
    live: Mutex<HashMap<String, Arc<AppSession>>>,
}

impl AppSessions {
    pub fn get(&self, sid: &str) -> Option<Arc<AppSession>> {
        let m = self.live.lock().ok()?;
        m.get(sid).filter(|s| !s.closed.is_cancelled()).cloned()
    }

    fn insert(&self, s: Arc<AppSession>) {
        if let Ok(mut m) = self.live.lock() {
            m.insert(s.session.id.clone(), s);
        }
    }

    fn remove(&self, sid: &str) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(sid);
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an application session could not start.
pub enum StartError {
    /// The policy refused (`session.denied` is written).
    Denied(Denied),
    /// Something else, answered with this status, code and sentence (audited as needed).
    Failed(StatusCode, &'static str, String),
}

/// The supervisor's view of an application session: nothing to relay (its requests move the
/// bytes); it is served until the supervisor ends it.
struct WebSessionHandler;

impl EndpointHandler for WebSessionHandler {
    fn serve<'a>(
        &'a self,
        _ctx: &'a HandlerCtx,
        _client: BoxIo,
        _upstream: BoxIo,
    ) -> Pin<Box<dyn Future<Output = Ended> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

impl Web {
    /// Starts an application session for the sign-in `token` (already verified into
    /// `claims`): the policy in web-session mode, `session.start` (durable), registration and
    /// supervision.
    pub async fn start_session(
        &self,
        token: &str,
        claims: Claims,
        peer: SocketAddr,
        endpoint: &Endpoint,
    ) -> Result<Arc<AppSession>, StartError> {
        let started = self.clock.instant();
        let subject = self.authn.subject(claims, peer);
        if let Some(why) = self.broker.store_watch.refusal() {
            return Err(StartError::Failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                why,
            ));
        }
        let policy = self.access.policy();
        let permit = match authorize_as(
            &subject,
            &endpoint.name,
            None,
            true,
            &policy,
            &*self.access.clock,
        ) {
            Ok(p) => p,
            Err(denied) => {
                self.broker.audit_denied(
                    peer,
                    Some(&subject),
                    &endpoint.name,
                    Some(crate::access::events::decision_ref(&denied.decision)),
                    denied.reason.clone(),
                );
                return Err(StartError::Denied(denied));
            }
        };
        let route = self.upstream.route(&permit.endpoint.site);
        let exp = {
            let max = permit
                .decision
                .limits
                .max_session
                .unwrap_or(postern_policy::DEFAULT_MAX_SESSION);
            (self.clock.unix() + max.as_secs()).min(subject.claims.exp)
        };
        let session = self
            .broker
            .start(subject, &permit, None, route.as_deref(), started)
            .await
            .map_err(|_| {
                StartError::Failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the gateway cannot write its audit log, so it is refusing new sessions; contact the service desk".into(),
                )
            })?;
        let (kill, deadline) = self.access.register(session.clone(), permit.deadline);
        let counters = Arc::new(Counters::default());
        let app = Arc::new(AppSession {
            session: session.clone(),
            endpoint: permit.endpoint.clone(),
            kill: kill.clone(),
            counters: counters.clone(),
            closed: CancellationToken::new(),
            pool: Pool::default(),
            requests: AtomicU64::new(0),
            token: token.to_owned(),
            exp,
            metrics: self.access.metrics.clone(),
            decisions: Mutex::new(Decisions::default()),
        });
        self.sessions.insert(app.clone());
        info!(session_id = %session.id, user = %session.subject.user(), endpoint = %session.endpoint.name, "web application session started");
        let tunnel = Tunnel {
            session: session.clone(),
            kill,
            deadline,
            idle_limit: permit.decision.limits.idle_timeout,
            resume_grace: std::time::Duration::ZERO,
            recheck_at: permit.recheck_at,
            upstream_lost: CancellationToken::new(),
        };
        // Idle connections to the application are closed after a while, not held for the
        // whole session.
        let swept = Arc::downgrade(&app);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(super::pool::POOL_IDLE / 3).await;
                let Some(app) = swept.upgrade() else { return };
                if app.closed.is_cancelled() {
                    return;
                }
                app.pool.expire();
            }
        });
        let access = self.access.clone();
        let sessions = self.sessions.clone();
        let watched = app.clone();
        let span = session.span();
        tokio::spawn(
            async move {
                let nothing = || -> BoxIo { Box::new(tokio::io::duplex(1).0) };
                access
                    .supervise_counted(
                        tunnel,
                        Arc::new(WebSessionHandler),
                        nothing(),
                        nothing(),
                        None,
                        counters,
                    )
                    .await;
                watched.closed.cancel();
                watched.pool.clear();
                sessions.remove(&watched.session.id);
            }
            .instrument(span),
        );
        if route.is_none() {
            // Audited like a tunnel: the session started and ended at once.
            app.kill.kill("no_connector");
            return Err(StartError::Failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_connector",
                format!(
                    "no connector for site '{}' is connected to the gateway",
                    permit.endpoint.site
                ),
            ));
        }
        Ok(app)
    }
}
