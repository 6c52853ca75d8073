//! One builder per session audit event type. Every session event carries the same facts (who,
//! from where, on which device, which endpoint, which decision, which connector), taken from
//! the [`Session`]; the builders add what is particular to each type.

use std::net::SocketAddr;

use postern_audit::{DecisionRef, EndpointRef, Event, EventType};
use postern_net::relay::Counters;
use postern_policy::{Decision, Effect, Endpoint};

use super::session::Session;
use crate::audit::Audit;
use crate::authn::Subject;

/// The audit form of a policy decision.
pub fn decision_ref(d: &Decision) -> DecisionRef {
    DecisionRef {
        effect: match d.effect {
            Effect::Allow => "allow".into(),
            Effect::Deny => "deny".into(),
        },
        rule: d.rule.clone(),
        policy_version: Some(d.policy_version.clone()),
        reason: d.reason.clone(),
        matched_allows: d.matched_allows.clone(),
        matched_denies: d.matched_denies.clone(),
        valid_until: d
            .valid_until
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    }
}

/// The audit form of a policy endpoint.
pub fn endpoint_ref(e: &Endpoint) -> EndpointRef {
    EndpointRef {
        name: e.name.clone(),
        site: e.site.clone(),
        host: e.host.clone(),
        port: e.port,
        protocol: e.protocol.to_string(),
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

/// An event of `kind` about session `s`.
pub(crate) fn session_event(audit: &Audit, s: &Session, kind: EventType) -> Event {
    let mut ev = audit.event(kind);
    ev.session_id = Some(s.id.clone());
    ev.user = Some(s.subject.user().to_owned());
    ev.user_name = s.subject.claims.name.clone();
    ev.user_email = s.subject.claims.email.clone();
    ev.groups = Some(s.subject.groups().to_vec());
    ev.source = Some(s.subject.source.to_string());
    ev.endpoint = Some(s.endpoint.clone());
    ev.decision = Some(s.decision.clone());
    ev.connector = s.connector.clone();
    ev.justification = s.justification.clone();
    ev.report_only = (!s.report_only.is_empty()).then(|| s.report_only.clone());
    ev.egress_class = s.egress_class.clone();
    ev.device = s.subject.device_ref.clone();
    ev.signin = Some(s.subject.claims.signin_id());
    ev
}

/// `session.start`.
pub fn start(audit: &Audit, s: &Session) -> Event {
    session_event(audit, s, EventType::SessionStart)
}

/// `session.end`: bytes each way, duration and the close reason.
pub fn end(
    audit: &Audit,
    s: &Session,
    reason: &str,
    detail: Option<String>,
    counters: &Counters,
    duration_ms: u64,
) -> Event {
    let mut ev = session_event(audit, s, EventType::SessionEnd);
    ev.bytes_up = Some(counters.a_to_b());
    ev.bytes_down = Some(counters.b_to_a());
    ev.duration_ms = Some(duration_ms);
    ev.close_reason = Some(reason.to_owned());
    ev.detail = detail;
    ev
}

/// `session.suspended`: a resumable session lost its client's link.
pub fn suspended(audit: &Audit, s: &Session, detail: String) -> Event {
    let mut ev = session_event(audit, s, EventType::SessionSuspended);
    ev.detail = Some(detail);
    ev
}

/// `session.resumed`: the client came back from `source` after `outage_ms` suspended.
pub fn resumed(audit: &Audit, s: &Session, source: Option<&str>, outage_ms: u64) -> Event {
    let mut ev = session_event(audit, s, EventType::SessionResumed);
    if let Some(src) = source {
        ev.source = Some(crate::http::printable(src, 64));
    }
    ev.duration_ms = Some(outage_ms);
    ev
}

/// `session.renewed`: the session moved onto a renewed sign-in (`detail` names both tokens
/// and the new end); its decision is the new one.
pub fn renewed(audit: &Audit, s: &Session, detail: String) -> Event {
    let mut ev = session_event(audit, s, EventType::SessionRenewed);
    ev.detail = Some(detail);
    ev
}

/// `session.terminated`: access withdrawn from a live session; `decision` is the new one when
/// the policy withdrew it, `reason` the close reason when a revocation did.
pub fn terminated(
    audit: &Audit,
    s: &Session,
    decision: Option<&Decision>,
    reason: Option<&str>,
    detail: String,
) -> Event {
    let mut ev = session_event(audit, s, EventType::SessionTerminated);
    if let Some(d) = decision {
        ev.decision = Some(decision_ref(d));
    }
    ev.close_reason = reason.map(str::to_owned);
    ev.detail = Some(detail);
    ev
}

/// `session.denied`: a refused access attempt (token, rate limit or policy).
pub fn denied(
    audit: &Audit,
    source: SocketAddr,
    subject: Option<&Subject>,
    endpoint: EndpointRef,
    decision: DecisionRef,
    detail: String,
) -> Event {
    let mut ev = audit.event(EventType::SessionDenied);
    ev.source = Some(source.to_string());
    ev.user = subject.map(|s| s.user().to_owned());
    ev.device = subject.and_then(|s| s.device_ref.clone());
    ev.signin = subject.map(|s| s.claims.signin_id());
    ev.groups = subject.map(|s| s.groups().to_vec());
    ev.endpoint = Some(endpoint);
    ev.decision = Some(decision);
    ev.detail = Some(detail);
    ev
}

/// A deny decision made before the policy was asked (bad target, bad token, rate limit).
pub fn early_deny(policy_version: &str, reason: &str) -> DecisionRef {
    DecisionRef {
        effect: "deny".into(),
        rule: None,
        policy_version: Some(policy_version.to_owned()),
        reason: reason.to_owned(),
        ..Default::default()
    }
}
