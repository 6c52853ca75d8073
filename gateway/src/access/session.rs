//! [`Session`]: one brokered session as every part of the gateway sees it — who (the
//! subject), to what (the endpoint), under which decision, through which connector — and the
//! policy request it is (re-)authorized on.

use std::time::SystemTime;

use postern_audit::{ConnectorRef, DecisionRef, EndpointRef};
use tokio::time::Instant;

use crate::authn::Subject;

/// One brokered session: who, to what, under which decision, through which connector.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub subject: Subject,
    pub endpoint: EndpointRef,
    pub decision: DecisionRef,
    pub connector: Option<ConnectorRef>,
    /// Break-glass reason, audited (and flagged for review) when the rule asks for one.
    pub justification: Option<String>,
    /// The reason as the client gave it: the policy sees it again on re-evaluation.
    pub justification_given: Option<String>,
    /// Report-only conditions that would have denied ("would deny" findings).
    pub report_only: Vec<String>,
    /// `display` (pixels only) or `data` (images reach the laptop).
    pub egress_class: Option<String>,
    pub started: Instant,
    /// A web application session (the proxy's): re-evaluated as a whole ("may this person use
    /// the application at all"), while each request is decided on its method and path.
    pub web: bool,
}

impl Session {
    /// The policy request this session was (and is again) authorized on, as of `at`.
    pub fn request(&self, at: SystemTime) -> postern_policy::Request<'_> {
        let r = self
            .subject
            .request(&self.endpoint.name, at, self.justification_given.as_deref());
        if self.web {
            r.with_web_session()
        } else {
            r
        }
    }

    /// The tracing span of this session's task.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "session",
            session_id = %self.id,
            user = %self.subject.user(),
            endpoint = %self.endpoint.name,
            site = %self.endpoint.site,
            connector_id = %self.connector.as_ref().map(|c| c.id.as_str()).unwrap_or("-"),
        )
    }
}
