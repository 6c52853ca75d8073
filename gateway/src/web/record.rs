//! `web.request` events: one per request of an application session (or one per N when the
//! endpoint samples), with method, path (never the query string), status, bytes, duration and
//! the DICOM objects the path names. Refusals and failures are always recorded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use postern_audit::{EventType, HttpRef, ObjectRef};
use postern_policy::RequestAudit;

use super::session::AppSession;
use crate::audit::Audit;

/// What one request did.
pub struct Outcome {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration: Duration,
    pub objects: Vec<ObjectRef>,
    /// Recorded whatever the sampling says (a refusal, a failure).
    pub always: bool,
    /// Free text: why it was refused.
    pub detail: Option<String>,
}

/// Whether the `n`-th request of `s` is recorded, and the sampling factor to note on it.
fn sampling(s: &AppSession, always: bool) -> Option<Option<u32>> {
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    match s.endpoint.request_audit {
        RequestAudit::All => Some(None),
        _ if always => Some(None),
        RequestAudit::Off => None,
        RequestAudit::Sample(k) => s.endpoint.request_audit.records(n).then_some(Some(k)),
    }
}

/// Counts `o` and records it for session `s` (unless sampled out).
pub fn request(audit: &Audit, s: &AppSession, o: Outcome) {
    let class = match o.status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    s.metrics
        .web_requests
        .with_label_values(&[&s.endpoint.name, class])
        .inc();
    let Some(sampled) = sampling(s, o.always || o.status >= 400) else {
        return;
    };
    let session = &s.session;
    let mut ev = audit.event(EventType::WebRequest);
    ev.session_id = Some(session.id.clone());
    ev.user = Some(session.subject.claims.sub.clone());
    ev.user_name = session.subject.claims.name.clone();
    ev.user_email = session.subject.claims.email.clone();
    ev.device = session.subject.device_ref.clone();
    ev.signin = Some(session.subject.claims.signin_id());
    ev.source = Some(session.subject.source.to_string());
    ev.endpoint = Some(session.endpoint.clone());
    ev.connector = session.connector.clone();
    ev.http = Some(HttpRef {
        method: o.method,
        path: o.path,
        status: o.status,
        bytes_up: o.bytes_up,
        bytes_down: o.bytes_down,
        duration_ms: o.duration.as_millis() as u64,
        sampled,
    });
    if !o.objects.is_empty() {
        ev.objects = Some(o.objects);
    }
    ev.detail = o.detail;
    audit.record_nowait(ev);
}
