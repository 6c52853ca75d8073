//! `GET /v1/endpoints` (the endpoints this user may reach, now or later) and `GET /v1/endpoints/NAME` (the
//! decision for one endpoint: `postern connect`'s preflight, so a denial is reported before
//! it listens; audited like any other denial). Both are limited per source address before
//! authentication, like `CONNECT`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use postern_policy::{Decision, Endpoint, Policy};
use postern_proto::wire::{EndpointInfo, EndpointList};
use tracing::debug;

use super::broker::{justification, Broker};
use super::events::decision_ref;
use crate::authn::Subject;
use crate::clock::unix_secs;
use crate::http::{error, json, printable, Resp};

fn endpoint_info(e: &Endpoint, d: &Decision, online: Option<bool>) -> EndpointInfo {
    EndpointInfo {
        name: e.name.clone(),
        site: e.site.clone(),
        protocol: e.protocol.to_string(),
        description: e.description.clone(),
        allowed: d.is_allowed(),
        rule: d.rule.clone(),
        reason: d.reason.clone(),
        max_session_secs: d.limits.max_session.map(|m| m.as_secs()),
        local_port: e.local_port,
        online,
        from: None,
        until: None,
        needs_reason: false,
    }
}

/// How far ahead the listing looks for a time window that opens.
const LOOKAHEAD: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most decision changes followed while looking ahead.
const MAX_EDGES: usize = 16;

/// A justification used only to ask whether a break-glass rule would allow.
const PROBE_REASON: &str = "break-glass probe";

/// The listing's row for endpoint `e`, if `subject` may reach it now, from a time within the
/// week ahead, or with a break-glass reason; None when none of these.
fn listed(
    policy: &Policy,
    subject: &Subject,
    e: &Endpoint,
    now: SystemTime,
    online: Option<bool>,
) -> Option<EndpointInfo> {
    let d = policy.evaluate(&subject.request(&e.name, now, None));
    if d.is_allowed() {
        let mut info = endpoint_info(e, &d, online);
        // The decision may change at `valid_until` and still allow (another rule): the row
        // says "until" only when access really stops then.
        info.until = d
            .valid_until
            .filter(|&t| {
                !policy
                    .evaluate(&subject.request(&e.name, t, None))
                    .is_allowed()
            })
            .map(unix_secs);
        return Some(info);
    }
    let probe = policy.evaluate(&subject.request(&e.name, now, Some(PROBE_REASON)));
    if probe.is_allowed() && probe.limits.require_justification {
        let mut info = endpoint_info(e, &probe, online);
        info.allowed = false;
        info.reason = d.reason.clone();
        info.needs_reason = true;
        return Some(info);
    }
    let horizon = now + LOOKAHEAD;
    let mut at = d.valid_until;
    for _ in 0..MAX_EDGES {
        let t = at.filter(|&t| t <= horizon)?;
        let later = policy.evaluate(&subject.request(&e.name, t, None));
        if later.is_allowed() {
            let mut info = endpoint_info(e, &later, online);
            info.allowed = false;
            info.reason = d.reason.clone();
            info.from = Some(unix_secs(t));
            return Some(info);
        }
        at = later.valid_until.filter(|&next| next > t);
    }
    None
}

/// `GET /v1/endpoints`: the endpoints the user may reach now, from a time within the week
/// ahead (`from`), or with a break-glass reason (`needs_reason`); with each, whether a
/// connector of its site is linked (`online`).
pub fn list<B>(broker: &Broker, req: &Request<B>, peer: SocketAddr) -> Resp {
    let subject = match broker.authenticate(req, peer) {
        Ok(s) => s,
        Err(resp) => {
            debug!(%peer, "endpoint listing refused");
            return *resp;
        }
    };
    let policy = broker.access.policy();
    let now = broker.access.clock.now();
    // Asked once per site, not per endpoint.
    let mut online = std::collections::HashMap::new();
    let endpoints = policy
        .endpoints()
        .iter()
        .filter_map(|e| {
            let up = *online
                .entry(e.site.as_str())
                .or_insert_with(|| broker.upstream.route(&e.site).is_some());
            listed(&policy, &subject, e, now, Some(up))
        })
        .collect();
    json(
        StatusCode::OK,
        &EndpointList {
            user: subject.claims.sub.clone(),
            groups: subject.claims.groups.clone(),
            endpoints,
        },
    )
}

/// `GET /v1/endpoints/NAME`.
pub fn check<B>(broker: &Broker, req: &Request<B>, peer: SocketAddr, name: &str) -> Resp {
    let shown = printable(name, 512);
    // Refusals before authentication are audited in aggregate (`access.refused_unauthenticated`).
    let subject = match broker.authenticate(req, peer) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let policy = broker.access.policy();
    let given = justification(req);
    let d = policy.evaluate(&subject.request(name, broker.access.clock.now(), given.as_deref()));
    match policy.endpoint(name) {
        Some(e) if d.is_allowed() => {
            let online = Some(broker.upstream.route(&e.site).is_some());
            json(StatusCode::OK, &endpoint_info(e, &d, online))
        }
        _ => {
            broker.audit_denied(
                peer,
                Some(&subject),
                &shown,
                Some(decision_ref(&d)),
                d.reason.clone(),
            );
            // A break-glass rule would allow with a reason: the client says how to give one.
            let probe = given.is_none().then(|| {
                policy.evaluate(&subject.request(
                    name,
                    broker.access.clock.now(),
                    Some(PROBE_REASON),
                ))
            });
            if probe.is_some_and(|p| p.is_allowed() && p.limits.require_justification) {
                return error(StatusCode::FORBIDDEN, "justification_required", &d.reason);
            }
            // The reason says so already; the code lets the client suggest a name it may use.
            if policy.endpoint(name).is_none() {
                return error(StatusCode::FORBIDDEN, "unknown_endpoint", &d.reason);
            }
            error(StatusCode::FORBIDDEN, "policy_denied", &d.reason)
        }
    }
}
