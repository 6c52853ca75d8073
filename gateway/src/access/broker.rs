//! The tunnel broker: one `CONNECT endpoint:0` from a clinician becomes one supervised session.
//!
//! [`Broker::connect`] is the whole pipeline, one call per stage:
//!
//! 1. **address limit** — per source address, before anything is verified;
//! 2. **subject** — the bearer token verified into a [`Subject`];
//! 3. **target** — the endpoint name from `ENDPOINT:0` (the address comes from the policy,
//!    never from the client); then the **rate limit** per user;
//! 4. **authorize** — the policy's [`Permit`] or [`Denied`](super::Denied);
//! 5. **audit start** — a route to the site is chosen and `session.start` (naming the
//!    connector) is written durably *before* anything is sent to the hospital; if the audit
//!    log cannot be written the session is refused (fail closed);
//! 6. **upstream open** — `CONNECT host:port` on the connector link;
//! 7. **endpoint handler** — the client gets 200 and the endpoint protocol's handler serves
//!    both streams under the session's supervision until `session.end`.
//!
//! Every refusal answers with a code and a sentence (also in the `postern-reason` header).
//! Refusals of unauthenticated requests (stages 1 and 2) are audited in aggregate by
//! [`Refusals`] (`access.refused_unauthenticated`: per source address and reason, with a
//! count, never the token), so a flood cannot write to the audit log at its own pace; every
//! refusal of an authenticated subject is audited as `session.denied`; every failure after
//! stage 5 ends the session with a reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use postern_audit::EndpointRef;
use postern_net::relay::Counters;
use postern_proto::wire;
use tracing::{info, Instrument};

use super::events::{self, decision_ref, early_deny, endpoint_ref};
use super::handler::EndpointHandler;
use super::refusals::{Reason, Refusals};
use super::resume::Resumables;
use super::sessions::{Kill, Session, Tunnel};
use super::{authorize, Access, Permit};
use crate::authn::{token_refusal, Authn, Subject};
use crate::connectors::{OpenRequest, Route, Upstream, UpstreamError};
use crate::http::{error, printable, too_many, Resp};
use crate::limits::Limits;
use crate::stream::BoxIo;

/// What brokering needs.
pub struct Broker {
    pub authn: Arc<Authn>,
    pub access: Arc<Access>,
    pub upstream: Arc<dyn Upstream>,
    pub limits: Arc<Limits>,
    /// Unauthenticated refusals, audited in aggregate.
    pub refusals: Arc<Refusals>,
    /// The staleness rule of the state store.
    pub store_watch: Arc<super::store_watch::StoreWatch>,
    /// `[limits] connector_dial_timeout`: how long a connector may take to reach an endpoint.
    pub dial_timeout: Duration,
}

/// A session whose upstream stream is open, ready for its handler.
pub struct Opened {
    pub tunnel: Tunnel,
    pub upstream: BoxIo,
    pub handler: Arc<dyn EndpointHandler>,
    /// Set when the client asked for a resumable tunnel and the rule's `resume_grace` allows
    /// one: the secret to give the client and the grace.
    pub resume: Option<(String, Duration)>,
}

/// A resume request that found its suspended tunnel, detached and ready for the new stream.
pub struct Resuming {
    control: postern_net::resume::Handle,
    detached: postern_net::resume::Detached,
    from: SocketAddr,
    /// How many of the client's bytes the gateway has delivered (for the answer).
    pub received: u64,
}

impl Resuming {
    /// Carries the tunnel on over `link`, from the offsets both sides have.
    pub async fn attach(self, link: BoxIo, peer_received: u64) -> Result<(), String> {
        let tag = self.from.to_string();
        self.control
            .attach(self.detached, Box::new(link), peer_received, tag)
            .await
    }
}

/// Ends a registered session whose setup was abandoned — the client went away (its request
/// was dropped) while the connector was dialling — so that no `session.start` is left without
/// its `session.end` and the registry does not keep a ghost.
struct SetupGuard {
    access: Arc<Access>,
    session: Option<Arc<Session>>,
}

impl SetupGuard {
    fn new(access: &Arc<Access>, session: &Arc<Session>) -> SetupGuard {
        SetupGuard {
            access: access.clone(),
            session: Some(session.clone()),
        }
    }

    /// The setup reached an outcome that ends the session itself (or hands it over).
    fn disarm(mut self) {
        self.session = None;
    }
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let access = self.access.clone();
        let detail = "the client went away while the session was being set up".to_owned();
        tokio::spawn(async move {
            access
                .end(
                    &session,
                    "client_closed",
                    Some(detail),
                    &Counters::default(),
                )
                .await
        });
    }
}

/// Why a registered session may not go live after all.
enum Withdrawn {
    /// Its kill switch was thrown (sign-out, revocation, reload, shutdown), with the reason.
    Killed(String),
    Token(crate::authn::tokens::TokenError),
    Policy(Box<postern_policy::Decision>),
}

/// Why the broker refused before a session started.
enum Refused {
    /// The CONNECT target is not `ENDPOINT:0` (shown bounded and printable).
    BadTarget(String),
    RateLimited(u64),
    Policy(super::Denied),
    /// The state store has not answered for longer than `max_staleness`.
    StoreStale(String),
}

impl Broker {
    /// Brokers one `CONNECT`: the pipeline described in the module documentation.
    pub async fn connect(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        if let Some(v) = req.headers().get(wire::HDR_RESUME) {
            let parsed = v.to_str().ok().and_then(wire::Resume::from_header);
            let Some(r) = parsed else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "malformed postern-resume header",
                );
            };
            return self.resume_h2(req, peer, r).await;
        }
        let opened = match self.open_request(&req, peer).await {
            Ok(o) => o,
            Err(resp) => return resp,
        };
        // 7. Endpoint handler, once the client's stream is ours.
        let id = opened.tunnel.session.id.clone();
        let secret = opened.resume.as_ref().map(|(s, _)| s.clone());
        self.spawn_handler(req, opened);
        let mut ok = Response::new(Full::new(Bytes::new()));
        if let Ok(v) = HeaderValue::from_str(&id) {
            ok.headers_mut().insert(wire::HDR_SESSION, v);
        }
        if let Some(v) = secret.and_then(|s| HeaderValue::from_str(&s).ok()) {
            ok.headers_mut().insert(wire::HDR_RESUME_SECRET, v);
        }
        ok
    }

    /// A resume request on HTTP/2: the answer carries the gateway's offset; the upgraded
    /// stream becomes the tunnel's new link.
    async fn resume_h2(&self, req: Request<Incoming>, peer: SocketAddr, r: wire::Resume) -> Resp {
        let resuming = match self.resume(&req, peer, &r).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        let mut ok = Response::new(Full::new(Bytes::new()));
        if let Ok(v) = HeaderValue::from_str(&r.session_id) {
            ok.headers_mut().insert(wire::HDR_SESSION, v);
        }
        ok.headers_mut().insert(
            wire::HDR_RESUME_RECEIVED,
            HeaderValue::from(resuming.received),
        );
        let open_stream = req
            .extensions()
            .get::<crate::stream::StreamGuard>()
            .cloned();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(stream) => {
                    // The guard lives with the link: the stream is open while it carries it.
                    let link: BoxIo = Box::new(crate::stream::Guarded::new(
                        TokioIo::new(stream),
                        open_stream,
                    ));
                    if let Err(e) = resuming.attach(link, r.received).await {
                        tracing::debug!(error = %e, "resumed stream not attached");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "resume stream upgrade failed"),
            }
        });
        ok
    }

    /// Finds the suspended tunnel a resume request names and detaches it for the new stream:
    /// the per-address limit, then (for a session that ended, proven by its secret) why it
    /// ended, then the token, then the session's user, device and secret. Every refusal
    /// answers with a code and a sentence.
    pub async fn resume<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        r: &wire::Resume,
    ) -> Result<Resuming, Resp> {
        let metrics = &self.access.metrics;
        let count = |result: &str| metrics.session_resumes.with_label_values(&[result]).inc();
        let resumables = &self.access.resumables;
        if let Some(reason) = resumables.ended_reason(r) {
            count("ended");
            return Err(ended(&reason));
        }
        let subject = self.authenticate(req, peer).map_err(|r| *r)?;
        let control = match resumables.find(r, &subject) {
            super::resume::Found::Live(c) => c,
            super::resume::Found::Ended(reason) => {
                count("ended");
                return Err(ended(&reason));
            }
            super::resume::Found::Unknown => {
                count("unknown");
                return Err(error(
                    StatusCode::NOT_FOUND,
                    "unknown_session",
                    "this gateway has no suspended tunnel of that session: it ended long ago, or it lives on another gateway replica",
                ));
            }
            super::resume::Found::Refused(why) => {
                count("refused");
                let detail = format!(
                    "resume of session {} refused: {why}",
                    printable(&r.session_id, 64)
                );
                self.audit_denied(peer, Some(&subject), "", None, detail);
                return Err(error(StatusCode::FORBIDDEN, "resume_refused", why));
            }
        };
        let Some(detached) = control.detach().await else {
            count("ended");
            return Err(ended("it ended while resuming"));
        };
        count("resumed");
        Ok(Resuming {
            control,
            detached,
            from: peer,
            received: detached.received,
        })
    }

    /// Stages 1 to 6 for a tunnel request of either transport (the HTTP/2 `CONNECT`, or the
    /// QUIC transport's request frame put in the same form): address limit, subject, target,
    /// then [`open`](Self::open). On refusal it has audited what happened and returns the
    /// answer.
    pub async fn open_request<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Opened, Resp> {
        let started = self.access.clock.instant();
        // 1 and 2. Address limit, subject.
        let subject = self.authenticate(req, peer).map_err(|r| *r)?;
        // 3. Target.
        let name = match target(req) {
            Ok(name) => name,
            Err(shown) => {
                let why = Refused::BadTarget(shown.clone());
                return Err(self.refuse(peer, Some(&subject), &shown, why));
            }
        };
        // 3 to 6: rate limit, authorize, audit start, upstream open.
        let given = justification(req);
        let mut opened = self.open(subject, &name, given, started).await?;
        let grace = opened.tunnel.resume_grace;
        if resumable(req) && !grace.is_zero() {
            opened.resume = Resumables::secret().map(|s| (s, grace));
        }
        Ok(opened)
    }

    /// Stage 7 for a client stream already in hand (the QUIC transport): the endpoint
    /// handler serves it under the session's supervision until `session.end`.
    pub fn spawn_supervised(&self, opened: Opened, client: BoxIo) {
        let access = self.access.clone();
        let span = opened.tunnel.session.span();
        tokio::spawn(async move { serve_opened(&access, opened, client).await }.instrument(span));
    }

    /// Stages 1 and 2, shared with the endpoint queries: the per-address limit, then the
    /// token. A refusal is answered (429 or 401) and audited in aggregate ([`Refusals`]).
    /// The answer is boxed: it is large and the happy path should not carry its size.
    pub fn authenticate<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Subject, Box<Resp>> {
        let now = self.access.clock.now();
        if let Err(secs) = self.limits.tunnel_ip.check(&peer.ip()) {
            self.access.metrics.note_ratelimited("tunnel");
            self.refusals.note(peer.ip(), Reason::RateLimited, now);
            let msg = format!("too many requests from this address; try again in {secs}s");
            return Err(Box::new(too_many(&msg, secs)));
        }
        self.authn.authenticate(req, peer).map_err(|e| {
            let user = self.authn.refused_user(req, &e);
            self.refusals
                .note_user(peer.ip(), Reason::of(&e), user.as_deref(), now);
            Box::new(token_refusal(&e))
        })
    }

    /// Stages 3 to 6 for an authenticated subject: rate limit (per user; the per-address limit
    /// applied before authentication), authorize, audit start, upstream open. On refusal or failure it has already audited what happened
    /// (`session.denied`, or `session.end` for a session that started) and returns the answer.
    pub async fn open(
        &self,
        subject: Subject,
        name: &str,
        given: Option<String>,
        started: tokio::time::Instant,
    ) -> Result<Opened, Resp> {
        let peer = subject.source;
        // 3. Rate limit.
        if let Err(secs) = self.rate_limit(&subject) {
            return Err(self.refuse(peer, Some(&subject), name, Refused::RateLimited(secs)));
        }
        // The last known state is too old to decide on (revocations since are unknown).
        if let Some(why) = self.store_watch.refusal() {
            return Err(self.refuse(peer, Some(&subject), name, Refused::StoreStale(why)));
        }
        // 4. Authorize.
        let policy = self.access.policy();
        let clock = &*self.access.clock;
        let permit = match authorize(&subject, name, given.as_deref(), &policy, clock) {
            Ok(p) => p,
            Err(denied) => {
                return Err(self.refuse(peer, Some(&subject), name, Refused::Policy(denied)))
            }
        };
        // 5. Route, audit start, register.
        let route = self.upstream.route(&permit.endpoint.site);
        let session = self
            .start(subject, &permit, given, route.as_deref(), started)
            .await?;
        let (kill, deadline) = self.access.register(session.clone(), permit.deadline);
        let guard = SetupGuard::new(&self.access, &session);
        // A revocation between authentication and registration would miss this session: look
        // again now that it is registered (a later one finds it in the registry).
        if let Err(w) = self.still_allowed(&session, &kill) {
            guard.disarm();
            return Err(self.withdraw(&session, w).await);
        }
        // 6. Upstream open.
        let Some(route) = route else {
            guard.disarm();
            let msg = format!(
                "no connector for site '{}' is connected to the gateway",
                permit.endpoint.site
            );
            return Err(self
                .fail(
                    &session,
                    "no_connector",
                    StatusCode::SERVICE_UNAVAILABLE,
                    msg,
                )
                .await);
        };
        let target =
            postern_net::addr::format_host_port(&permit.endpoint.host, permit.endpoint.port);
        let dicom = super::dicom::permit(&permit.decision);
        let opened = route
            .open(OpenRequest {
                target: &target,
                session_id: &session.id,
                endpoint: &permit.endpoint.name,
                timeout: self.dial_timeout,
                dicom: dicom.as_ref(),
            })
            .await;
        guard.disarm();
        let upstream = match opened {
            Ok(s) => s,
            Err(e) => return Err(self.upstream_failed(&session, e).await),
        };
        // The dial took time: a sign-out, a revocation or a policy reload meanwhile reached
        // the registered session's kill switch, and the token and the policy are asked again
        // now that it goes live. Dropping `upstream` closes the stream to the endpoint.
        if let Err(w) = self.still_allowed(&session, &kill) {
            return Err(self.withdraw(&session, w).await);
        }
        if dicom.is_some() {
            super::dicom::spawn_records(self.access.clone(), session.clone(), route.clone());
        }
        self.access
            .metrics
            .session_setup
            .observe((self.access.clock.instant() - started).as_secs_f64());
        info!(session_id = %session.id, user = %session.subject.user(), endpoint = %session.endpoint.name, connector_id = %route.connector().id, "session started");
        Ok(Opened {
            handler: self
                .access
                .handlers
                .for_protocol(&session.endpoint.protocol),
            tunnel: Tunnel {
                session,
                kill,
                deadline,
                idle_limit: permit.decision.limits.idle_timeout,
                resume_grace: permit.decision.limits.resume_grace,
                recheck_at: permit.recheck_at,
                upstream_lost: route.lost(),
            },
            upstream,
            resume: None,
        })
    }

    /// Whether a registered session may still go ahead: not killed, its token still live
    /// (not revoked, user and device still active) and the policy still allowing it.
    fn still_allowed(&self, session: &Session, kill: &Kill) -> Result<(), Withdrawn> {
        if kill.is_killed() {
            return Err(Withdrawn::Killed(kill.reason()));
        }
        self.authn
            .check_live(&session.subject.claims)
            .map_err(Withdrawn::Token)?;
        let decision = self
            .access
            .policy()
            .evaluate(&session.request(self.access.clock.now()));
        if !decision.is_allowed() {
            return Err(Withdrawn::Policy(Box::new(decision)));
        }
        Ok(())
    }

    /// Ends a session withdrawn before it went live and answers the client.
    async fn withdraw(&self, session: &Session, w: Withdrawn) -> Resp {
        let (reason, detail, resp) = match w {
            Withdrawn::Killed(reason) => {
                let msg =
                    format!("access was withdrawn while the session was being set up ({reason})");
                let resp = error(StatusCode::FORBIDDEN, "access_withdrawn", &msg);
                (reason, msg, resp)
            }
            Withdrawn::Token(e) => (e.code().to_owned(), e.to_string(), token_refusal(&e)),
            Withdrawn::Policy(d) => {
                let audit = &self.access.audit;
                let detail = format!("access withdrawn during setup: {}", d.reason);
                audit.record_nowait(events::terminated(audit, session, Some(&d), None, detail));
                let resp = error(StatusCode::FORBIDDEN, "policy_denied", &d.reason);
                ("access_withdrawn".to_owned(), d.reason.clone(), resp)
            }
        };
        self.access
            .end(session, &reason, Some(detail), &Counters::default())
            .await;
        resp
    }

    fn rate_limit(&self, subject: &Subject) -> Result<(), u64> {
        self.limits.tunnel_user.check(&subject.claims.sub)
    }

    /// Stage 5: the session record, then `session.start`, durably.
    pub(crate) async fn start(
        &self,
        subject: Subject,
        permit: &Permit,
        given: Option<String>,
        route: Option<&dyn Route>,
        started: tokio::time::Instant,
    ) -> Result<Arc<Session>, Resp> {
        let Ok(id) = postern_proto::ids::random_id("sess") else {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "random number generator failed",
            ));
        };
        let session = Arc::new(Session {
            id,
            subject,
            endpoint: endpoint_ref(&permit.endpoint),
            decision: decision_ref(&permit.decision),
            connector: route.map(|r| r.connector()),
            justification: permit.justification.clone(),
            justification_given: given,
            report_only: events::report_only(&permit.decision),
            egress_class: Some(permit.endpoint.egress.to_string()),
            started,
            web: permit.web,
        });
        let metrics = &self.access.metrics;
        metrics.sessions_total.with_label_values(&["allow"]).inc();
        let timer = metrics.audit_write.start_timer();
        let audit = &self.access.audit;
        let durable = audit.record(events::start(audit, &session)).await;
        timer.observe_duration();
        if let Err(e) = durable {
            tracing::error!(error = %e, "audit log unavailable: refusing session");
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the gateway cannot write its audit log, so it is refusing new sessions; contact the service desk",
            ));
        }
        Ok(session)
    }

    /// Stage 7: waits for the client's stream, then serves both under supervision.
    fn spawn_handler(&self, req: Request<Incoming>, opened: Opened) {
        let access = self.access.clone();
        let span = opened.tunnel.session.span();
        // The tunnel is an open stream of its client connection until it ends, so the
        // connection is not closed as idle under it.
        let open_stream = req
            .extensions()
            .get::<crate::stream::StreamGuard>()
            .cloned();
        tokio::spawn(
            async move {
                let _open_stream = open_stream;
                match hyper::upgrade::on(req).await {
                    Ok(client) => {
                        let client: BoxIo = Box::new(TokioIo::new(client));
                        serve_opened(&access, opened, client).await
                    }
                    Err(e) => {
                        let msg = format!("client stream upgrade failed: {e}");
                        let counters = Counters::default();
                        access
                            .end(&opened.tunnel.session, "error", Some(msg), &counters)
                            .await
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Ends a started session that never relayed, and answers the client.
    async fn fail(&self, session: &Session, reason: &str, status: StatusCode, msg: String) -> Resp {
        self.access
            .end(session, reason, Some(msg.clone()), &Counters::default())
            .await;
        error(status, reason, &msg)
    }

    async fn upstream_failed(&self, session: &Session, e: UpstreamError) -> Resp {
        let (status, code) = match &e {
            UpstreamError::BadTarget(_) => (StatusCode::BAD_GATEWAY, "bad_endpoint"),
            UpstreamError::Lost { .. } => (StatusCode::BAD_GATEWAY, "connector_error"),
            UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "connector_timeout"),
            UpstreamError::Refused { .. } => (StatusCode::BAD_GATEWAY, e.close_reason()),
        };
        self.access
            .end(
                session,
                e.close_reason(),
                Some(e.to_string()),
                &Counters::default(),
            )
            .await;
        error(status, code, &e.to_string())
    }

    /// Answers a refusal of an authenticated subject before any session started and audits it
    /// as `session.denied`.
    fn refuse(
        &self,
        peer: SocketAddr,
        subject: Option<&Subject>,
        endpoint: &str,
        why: Refused,
    ) -> Resp {
        let (resp, decision, detail) = match why {
            Refused::BadTarget(shown) => (
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    "CONNECT target must be ENDPOINT:0",
                ),
                None,
                format!("malformed CONNECT target '{shown}' (expected ENDPOINT:0)"),
            ),
            Refused::RateLimited(secs) => {
                self.access.metrics.note_ratelimited("tunnel");
                let msg = format!("too many new connections; try again in {secs}s");
                let detail = format!("rate limited: {msg}");
                (too_many(&msg, secs), None, detail)
            }
            Refused::Policy(denied) => (
                error(StatusCode::FORBIDDEN, "policy_denied", &denied.reason),
                Some(decision_ref(&denied.decision)),
                denied.reason,
            ),
            Refused::StoreStale(why) => (
                error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &why),
                None,
                format!("store_unavailable: {why}"),
            ),
        };
        self.audit_denied(peer, subject, endpoint, decision, detail);
        resp
    }

    /// Audits a refused access attempt of an authenticated subject (target, rate limit or
    /// policy) as `session.denied`.
    pub(crate) fn audit_denied(
        &self,
        peer: SocketAddr,
        subject: Option<&Subject>,
        endpoint: &str,
        decision: Option<postern_audit::DecisionRef>,
        detail: String,
    ) {
        let metrics = &self.access.metrics;
        metrics.sessions_total.with_label_values(&["deny"]).inc();
        let policy = self.access.policy();
        let endpoint = match policy.endpoint(endpoint) {
            Some(e) => endpoint_ref(e),
            None => EndpointRef {
                name: endpoint.to_owned(),
                ..Default::default()
            },
        };
        let decision = decision.unwrap_or_else(|| early_deny(policy.version(), &detail));
        let audit = &self.access.audit;
        audit.record_nowait(events::denied(
            audit, peer, subject, endpoint, decision, detail,
        ));
    }
}

/// Stage 7 once the client's stream is in hand: the endpoint handler serves it (through a
/// resume engine for a resumable tunnel) under the session's supervision.
async fn serve_opened(access: &Arc<Access>, opened: Opened, client: BoxIo) {
    let (client, engine) = with_engine(access, &opened, client);
    access
        .supervise(
            opened.tunnel,
            opened.handler,
            client,
            opened.upstream,
            engine,
        )
        .await
}

/// For a resumable tunnel, starts its engine over the client's stream: the handler then
/// serves the engine's pipe.
fn with_engine(
    access: &Arc<Access>,
    opened: &Opened,
    client: BoxIo,
) -> (BoxIo, Option<super::resume::Engine>) {
    let Some((secret, grace)) = opened.resume.clone() else {
        return (client, None);
    };
    let session = &opened.tunnel.session;
    let (engine, pipe) = super::resume::Engine::start(
        &access.resumables,
        &session.id,
        &session.subject,
        secret,
        grace,
        client,
        postern_net::resume::Config::default().buffer,
    );
    (pipe, Some(engine))
}

/// The answer to a resume of a session that has ended, saying why.
fn ended(reason: &str) -> Resp {
    error(
        StatusCode::GONE,
        "session_ended",
        &format!("the session has ended: {reason}"),
    )
}

/// Whether the client asked for a resumable tunnel.
fn resumable<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(wire::HDR_RESUMABLE)
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// The endpoint name of a `CONNECT ENDPOINT:0`, or the target as shown in a refusal.
pub(crate) fn target<B>(req: &Request<B>) -> Result<String, String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    wire::endpoint_from_authority(&authority)
        .map(str::to_owned)
        .ok_or_else(|| printable(&authority, 512))
}

/// The break-glass reason sent by `postern connect --reason`, if any and well-formed.
pub(crate) fn justification<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(wire::HDR_JUSTIFICATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| wire::decode_justification(v, true))
}
