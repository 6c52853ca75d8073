//! `POST /v1/sessions/renew`: a clinician's renewed sign-in takes over the live sessions of
//! the previous one, so that tunnels carry on across a token's expiry (`postern up` renews a
//! quarter of an hour before it). The bearer is the new token; the body names the previous
//! token, which must still be valid and of the same user and device: holding it proves the
//! sessions are the caller's. Each session is asked of the policy again under the new sign-in
//! ([`Sessions::renew`](super::sessions::Sessions::renew)).
//!
//! Sessions live on the replica that carries their tunnels: the renewal reaches those of the
//! replica the client's HTTPS connection reaches, and the answer lists them, so the client
//! can tell the clinician about any it could not renew.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use postern_proto::wire::SessionRenewRequest;
use tracing::{info, warn};

use super::broker::Broker;
use crate::http::{error, json, parse_json, read_body, Resp};

/// Largest renewal body (two tokens fit many times over).
const MAX_BODY: usize = 16 * 1024;

/// `POST /v1/sessions/renew`.
pub async fn renew<B>(broker: &Broker, req: Request<B>, peer: SocketAddr) -> Resp
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let subject = match broker.authenticate(&req, peer) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let body = read_body(req.into_body(), MAX_BODY).await;
    let r: SessionRenewRequest = match parse_json(body, "the renewal") {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let previous = match broker.authn.verify(r.previous_token.trim()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, user = %subject.user(), error = %e, "session renewal refused: previous token");
            return error(
                StatusCode::FORBIDDEN,
                e.code(),
                &format!("the previous sign-in cannot be renewed: {e}"),
            );
        }
    };
    if previous.jti == subject.claims.jti {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the new session token is the previous one: sign in again first",
        );
    }
    if !crate::state::same_user(&previous.sub, &subject.claims.sub)
        || previous.device != subject.claims.device
    {
        warn!(%peer, user = %subject.user(), previous_user = %previous.sub, "session renewal refused: another user or device");
        return error(
            StatusCode::FORBIDDEN,
            "renewal_mismatch",
            "the new sign-in is for another user or device than the sessions it would renew",
        );
    }
    let access = &broker.access;
    let out = access
        .sessions
        .renew(&previous.jti, &subject, &access.policy(), &access.audit);
    info!(%peer, user = %subject.user(), renewed = out.renewed.len(), ended = out.ended.len(), "sessions renewed");
    json(StatusCode::OK, &out)
}
