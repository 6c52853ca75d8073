//! Access: may this subject reach this endpoint now, and for how long — and keeping it true
//! while the session lives.
//!
//! * [`authorize`]: `(&Subject, endpoint, &Policy, clock) -> Permit | Denied`.
//! * `broker`: the tunnel pipeline, from `CONNECT` to `session.end`.
//! * `dicom`: the DICOM permit a tunnel carries to the connector, and the connector's records
//!   of the session's associations written as `dicom.*` audit events.
//! * `endpoints`: `GET /v1/endpoints[/NAME]` (listing and preflight).
//! * `session`: [`Session`](session::Session), one brokered session and its policy request.
//! * `sessions`: the live-session registry and each session's supervision (deadline, idle,
//!   time-bound re-checks, kill switch).
//! * `handler`: [`EndpointHandler`](handler::EndpointHandler), chosen by the endpoint's
//!   protocol; the TCP relay is the default.
//! * `events`: one audit-event builder per session event type.
//! * `notices`: notices for clinicians about their sessions (a refused PACS association),
//!   served at `GET /v1/notices`.
//! * `refusals`: refusals of unauthenticated requests, audited in aggregate.
//! * `renew`: `POST /v1/sessions/renew`, live sessions moved onto a renewed sign-in.
//! * `policy_watch`: policy reload (file change, SIGHUP) and re-evaluation.
//! * `revocations`: store changes (token, user, device, connector revocations) ended on live
//!   sessions.
//! * `recovery`: `session.end` for sessions a killed previous process left open.
//! * `resume`: resumable tunnels — the registry of live and recently ended ones, and the
//!   engine each runs between the client's stream and the endpoint handler.

pub mod broker;
pub mod dicom;
pub mod endpoints;
pub mod events;
pub mod handler;
pub mod notices;
pub mod policy_watch;
pub mod recovery;
pub mod refusals;
pub mod renew;
pub mod resume;
pub mod revocations;
pub mod session;
pub mod sessions;
pub mod store_watch;

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use postern_policy::{Decision, Endpoint, Policy};
use tokio::time::{Duration, Instant};

use crate::audit::Audit;
use crate::authn::Subject;
use crate::clock::{Clock, SharedClock};
use crate::metrics::Metrics;

/// The policy in force, the live sessions and the endpoint handlers.
pub struct Access {
    policy: RwLock<Arc<Policy>>,
    pub sessions: Arc<sessions::Sessions>,
    /// Resumable tunnels, live and recently ended.
    pub resumables: Arc<resume::Resumables>,
    pub handlers: handler::Handlers,
    /// Notices for clinicians about their sessions.
    pub notices: notices::Notices,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
}

impl Access {
    pub fn new(
        policy: Policy,
        clock: SharedClock,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> Access {
        Access {
            policy: RwLock::new(Arc::new(policy)),
            sessions: Arc::new(sessions::Sessions::new(clock.clone())),
            resumables: Arc::default(),
            handlers: handler::Handlers::default(),
            notices: notices::Notices::default(),
            audit,
            metrics,
            clock,
        }
    }

    /// The running policy.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new policy.
    pub fn set_policy(&self, new: Arc<Policy>) {
        match self.policy.write() {
            Ok(mut p) => *p = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// A deadline and the close reason to use when it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub reason: &'static str,
}

/// The deadline for a session started at `started` under `decision`: the rule's maximum
/// duration, capped by the token's expiry (`token_exp`, seconds since the epoch).
pub fn deadline_for(
    decision: &Decision,
    started: Instant,
    token_exp: u64,
    clock: &dyn Clock,
) -> Deadline {
    let max = decision
        .limits
        .max_session
        .unwrap_or(postern_policy::DEFAULT_MAX_SESSION);
    let token_left = Duration::from_secs(token_exp.saturating_sub(clock.unix()));
    let by_rule = started + max;
    let by_token = clock.instant() + token_left;
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

/// Access granted: to what, under which decision, until when.
#[derive(Debug, Clone)]
pub struct Permit {
    pub endpoint: Endpoint,
    pub decision: Decision,
    /// When the session must end (rule maximum or token expiry) and why.
    pub deadline: Deadline,
    /// When time alone could change the decision (a window closing): re-check then.
    pub recheck_at: Option<SystemTime>,
    /// The break-glass reason given, kept only if the rule asked for one.
    pub justification: Option<String>,
    /// Granted to a web application session (the policy asked in web-session mode).
    pub web: bool,
}

/// Access refused, with the sentence a person reads.
#[derive(Debug, Clone)]
pub struct Denied {
    pub reason: String,
    /// The policy's decision (its rule, version, matched rules).
    pub decision: Box<Decision>,
}

/// Asks `policy` whether `subject` may reach `endpoint` now.
pub fn authorize(
    subject: &Subject,
    endpoint: &str,
    justification: Option<&str>,
    policy: &Policy,
    clock: &dyn Clock,
) -> Result<Permit, Denied> {
    authorize_as(subject, endpoint, justification, false, policy, clock)
}

/// [`authorize`] for a tunnel (`web` false: opaque bytes) or for a web application session
/// as a whole (`web` true: rules that restrict methods and paths count as allowing it; each
/// request is then decided on its own).
pub fn authorize_as(
    subject: &Subject,
    endpoint: &str,
    justification: Option<&str>,
    web: bool,
    policy: &Policy,
    clock: &dyn Clock,
) -> Result<Permit, Denied> {
    let request = subject.request(endpoint, clock.now(), justification);
    let request = if web {
        request.with_web_session()
    } else {
        request
    };
    let decision = policy.evaluate(&request);
    let target = match (decision.is_allowed(), policy.endpoint(endpoint)) {
        (true, Some(e)) => e.clone(),
        _ => {
            return Err(Denied {
                reason: decision.reason.clone(),
                decision: Box::new(decision),
            })
        }
    };
    let deadline = deadline_for(&decision, clock.instant(), subject.claims.exp, clock);
    Ok(Permit {
        endpoint: target,
        recheck_at: decision.valid_until,
        justification: justification
            .filter(|_| decision.limits.require_justification)
            .map(str::to_owned),
        deadline,
        decision,
        web,
    })
}
