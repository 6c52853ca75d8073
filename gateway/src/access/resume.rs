//! Resumable tunnels on the gateway (issue #14).
//!
//! A client that asks for it ([`HDR_RESUMABLE`](postern_proto::wire::HDR_RESUMABLE), or `resumable` in a QUIC request) gets
//! a resume secret with its 200 when the rule's `resume_grace` is above zero; the tunnel's
//! bytes are then framed by a [`postern_net::resume`] engine at each end. The gateway's engine
//! sits between the client's transport stream and the endpoint handler (which sees plain bytes
//! through an in-memory pipe), so the handler, the connector stream and the endpoint's TCP
//! connection stay open while the client's link is down. An idle engine holds no buffer (see
//! [`postern_net::resume`]): on a tunnel that has not carried much, it costs its task, the
//! pipe's two halves and its mailbox, about 2 KB.
//!
//! While a tunnel is *suspended* its session is still supervised: deadline, idle limit, policy
//! reloads and revocations end it as they would a connected one; if the client is not back
//! within `resume_grace` it ends `resume_expired`. A resume request names the session, proves
//! the secret (compared in constant time) and must come with a live token of the same user and
//! device; the engines then exchange what each has received and resend from there. A request
//! for a session that has ended is told why, in a sentence, for [`ENDED_KEPT`] after the end.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_net::resume::{self, Events, Finished, Handle, Link, Moved};
use postern_proto::wire::Resume;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::authn::Subject;
use crate::stream::BoxIo;

/// How long an ended resumable session's reason is kept for a client that comes back.
pub const ENDED_KEPT: Duration = Duration::from_secs(10 * 60);
/// Most ended sessions remembered (oldest forgotten first).
const ENDED_MAX: usize = 10_000;
/// The in-memory pipe between the engine and the endpoint handler, per direction: at most
/// this much waits in it. Its buffers start empty and keep what they grew to (tokio's
/// `duplex`).
const PIPE: usize = 64 * 1024;

struct Slot {
    secret: String,
    user: String,
    device: Option<String>,
    control: Handle,
}

struct Tomb {
    secret: String,
    reason: String,
    at: Instant,
}

#[derive(Default)]
struct Ended {
    by_id: HashMap<String, Tomb>,
    order: VecDeque<String>,
}

/// The resumable sessions of this gateway, live and recently ended.
#[derive(Default)]
pub struct Resumables {
    live: Mutex<HashMap<String, Slot>>,
    ended: Mutex<Ended>,
}

/// What a resume request found.
pub enum Found {
    /// A live tunnel of the same user and device: its engine's control.
    Live(Handle),
    /// The session ended; why, in a sentence.
    Ended(String),
    /// No such session here (never resumable, forgotten, or on another replica).
    Unknown,
    /// The secret, user or device does not match.
    Refused(&'static str),
}

impl Resumables {
    /// A new resume secret (256 random bits, hex).
    pub fn secret() -> Option<String> {
        postern_proto::ids::random_bytes(32)
            .ok()
            .map(|b| postern_proto::ids::hex(&b))
    }

    fn register(&self, session_id: &str, secret: String, subject: &Subject, control: Handle) {
        if let Ok(mut m) = self.live.lock() {
            m.insert(
                session_id.to_owned(),
                Slot {
                    secret,
                    user: subject.claims.sub.clone(),
                    device: subject.claims.device.clone(),
                    control,
                },
            );
        }
    }

    /// The session ended: forget its engine, keep why for a client that comes back.
    fn end(&self, session_id: &str, reason: String) {
        let Some(slot) = self.live.lock().ok().and_then(|mut m| m.remove(session_id)) else {
            return;
        };
        if let Ok(mut e) = self.ended.lock() {
            let now = Instant::now();
            while e.order.len() >= ENDED_MAX
                || e.order
                    .front()
                    .and_then(|id| e.by_id.get(id))
                    .is_some_and(|t| now - t.at >= ENDED_KEPT)
            {
                let Some(old) = e.order.pop_front() else {
                    break;
                };
                e.by_id.remove(&old);
            }
            e.order.push_back(session_id.to_owned());
            e.by_id.insert(
                session_id.to_owned(),
                Tomb {
                    secret: slot.secret,
                    reason,
                    at: now,
                },
            );
        }
    }

    /// Looks up the session of a resume request by `subject` (whose token was verified).
    pub fn find(&self, r: &Resume, subject: &Subject) -> Found {
        let secret_ok = |s: &str| postern_proto::ids::ct_eq(s.as_bytes(), r.secret.as_bytes());
        if let Some(slot) = self.live.lock().ok().and_then(|m| {
            m.get(&r.session_id).map(|s| {
                (
                    secret_ok(&s.secret),
                    s.user.clone(),
                    s.device.clone(),
                    s.control.clone(),
                )
            })
        }) {
            let (ok, user, device, control) = slot;
            if !ok {
                return Found::Refused("the resume secret does not match");
            }
            if user != subject.claims.sub {
                return Found::Refused("the session belongs to another user");
            }
            if device != subject.claims.device {
                return Found::Refused("the session was opened from another device");
            }
            return Found::Live(control);
        }
        self.ended_reason(r).map_or(Found::Unknown, Found::Ended)
    }

    /// Why the session of `r` ended, if it did recently and `r` proves its secret. Asked
    /// before the token is checked, so that a client whose session was ended by a revocation
    /// hears that reason rather than only that its token is no longer accepted.
    pub fn ended_reason(&self, r: &Resume) -> Option<String> {
        let e = self.ended.lock().ok()?;
        let t = e.by_id.get(&r.session_id)?;
        let ok = postern_proto::ids::ct_eq(t.secret.as_bytes(), r.secret.as_bytes());
        (ok && t.at.elapsed() < ENDED_KEPT).then(|| t.reason.clone())
    }
}

/// A resumable tunnel's engine as the session supervisor holds it.
pub struct Engine {
    pub control: Handle,
    pub events: Events,
    /// The engine's task, whose output is how it ended (taken by the supervisor).
    pub finished: Option<JoinHandle<(Finished, Moved)>>,
    /// The rule's `resume_grace`.
    pub grace: Duration,
    registry: Arc<Resumables>,
    session_id: String,
}

impl Engine {
    /// Starts the engine of a new resumable tunnel over the client's `link` and registers it
    /// under `secret`. Returns the engine and the endpoint handler's side of its pipe.
    pub fn start(
        registry: &Arc<Resumables>,
        session_id: &str,
        subject: &Subject,
        secret: String,
        grace: Duration,
        link: BoxIo,
        buffer: usize,
    ) -> (Engine, BoxIo) {
        let (local, engine_side) = tokio::io::duplex(PIPE);
        let (control, events, inbox) = resume::channel();
        let link: Link = Box::new(link);
        let finished = tokio::spawn(resume::run(
            engine_side,
            Some(link),
            resume::Config { buffer },
            inbox,
        ));
        registry.register(session_id, secret, subject, control.clone());
        let engine = Engine {
            control,
            events,
            finished: Some(finished),
            grace,
            registry: registry.clone(),
            session_id: session_id.to_owned(),
        };
        (engine, Box::new(local))
    }

    /// The session is over: the client is told `reason` (if its link is up) and a later
    /// resume request hears it.
    pub fn end(&self, reason: String) {
        self.control.close(reason.clone());
        self.registry.end(&self.session_id, reason);
    }
}

/// A close reason as the clinician reads it when the session ended while suspended.
pub fn sentence(code: &str, detail: Option<&str>) -> String {
    let what = match code {
        "token_revoked" => "your sign-in was revoked",
        "user_revoked" => "your access was revoked",
        "device_revoked" => "this device's registration was revoked",
        "access_withdrawn" => "access was withdrawn (the policy changed)",
        "max_duration" => "the session reached its maximum duration",
        "token_expired" => "your sign-in expired",
        "idle_timeout" => "the session was idle for too long",
        "resume_expired" => "the connection was not back within the rule's resume grace",
        "shutdown" => "the gateway shut down",
        "connector_lost" | "connector_revoked" => "the hospital connector went away",
        "endpoint_closed" | "endpoint_error" => "the endpoint closed the connection",
        other => other,
    };
    match detail {
        // The detail already says it in full.
        Some(d) if code == "resume_expired" => crate::http::printable(d, 200),
        Some(d) if !d.is_empty() => format!("{what} ({})", crate::http::printable(d, 200)),
        _ => what.to_owned(),
    }
}
