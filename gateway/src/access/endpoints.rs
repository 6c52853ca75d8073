//! `GET /v1/endpoints` (the endpoints this user may reach) and `GET /v1/endpoints/NAME` (the
//! decision for one endpoint: `postern connect`'s preflight, so a denial is reported before
//! it listens; audited like any other denial). Both are limited per source address before
//! authentication, like `CONNECT`.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use postern_policy::{Decision, Endpoint};
use postern_proto::wire::{EndpointInfo, EndpointList};
use tracing::debug;

use super::broker::{justification, Broker};
use super::events::decision_ref;
use crate::http::{error, json, printable, Resp};

fn endpoint_info(e: &Endpoint, d: &Decision) -> EndpointInfo {
    EndpointInfo {
        name: e.name.clone(),
        site: e.site.clone(),
        protocol: e.protocol.to_string(),
        description: e.description.clone(),
        allowed: d.is_allowed(),
        rule: d.rule.clone(),
        reason: d.reason.clone(),
        max_session_secs: d.limits.max_session.map(|m| m.as_secs()),
    }
}

/// `GET /v1/endpoints`: only the allowed ones are listed.
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
    let endpoints = policy
        .endpoints()
        .iter()
        .filter_map(|e| {
            let d = policy.evaluate(&subject.request(&e.name, now, None));
            d.is_allowed().then(|| endpoint_info(e, &d))
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
        Some(e) if d.is_allowed() => json(StatusCode::OK, &endpoint_info(e, &d)),
        _ => {
            broker.audit_denied(
                peer,
                Some(&subject),
                &shown,
                Some(decision_ref(&d)),
                d.reason.clone(),
            );
            error(StatusCode::FORBIDDEN, "policy_denied", &d.reason)
        }
    }
}
