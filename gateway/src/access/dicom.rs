//! DICOM sessions (issue #17): the permit a DICOM tunnel's `CONNECT` carries to the connector,
//! and the connector's records of what happened on its associations, written as the session's
//! `dicom.*` audit events.
//!
//! The gateway never parses DICOM: the connector, inside the hospital, reads the association
//! request and the DIMSE command sets, enforces the permit (A-ASSOCIATE-RJ / A-ABORT) and
//! reports. The records come back on a stream the gateway opens on the link that carries the
//! tunnel ([`Route::session_events`]), so only the connector that carries a session can write
//! its events; each record is bounded again here ([`DicomRecord::bounded`]) before it is
//! stored.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use postern_audit::{Event, EventType, ObjectRef};
use postern_policy::Decision;
use postern_proto::dicom::{DicomPermit, DicomRecord, DicomService};
use tracing::{debug, warn};

use super::events;
use super::session::Session;
use super::Access;
use crate::connectors::registry::Route;

/// Longest line (one record) read from a connector; a longer one ends the stream.
const MAX_LINE: usize = 64 * 1024;

/// The permit for the connector, when `decision` allows a DICOM endpoint.
pub fn permit(decision: &Decision) -> Option<DicomPermit> {
    let grant = decision.limits.dicom.as_ref()?;
    Some(DicomPermit {
        rule: decision.rule.clone().unwrap_or_default(),
        calling_ae: grant.calling_ae.clone(),
        called_ae: grant.called_ae.clone(),
        services: grant
            .services
            .iter()
            .filter_map(|s| DicomService::parse(s))
            .collect(),
    })
}

/// Follows the connector's records of `session` on `route` until the connector ends the
/// stream (after the tunnel has ended) or the link is lost, writing each as an audit event.
pub fn spawn_records(access: Arc<Access>, session: Arc<Session>, route: Arc<dyn Route>) {
    tokio::spawn(async move {
        let lost = route.lost();
        tokio::select! {
            () = follow(&access, &session, &*route) => {}
            () = lost.cancelled() => debug!(session_id = %session.id, "link lost: no more DICOM records"),
        }
    });
}

async fn follow(access: &Access, session: &Session, route: &dyn Route) {
    let mut stream = match route.session_events(&session.id).await {
        Ok(s) => s,
        Err(e) => {
            warn!(session_id = %session.id, error = %e, "the connector's DICOM records are unavailable for this session");
            return;
        }
    };
    let mut buf = BytesMut::new();
    loop {
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            record_line(access, session, &line[..nl]);
        }
        if buf.len() > MAX_LINE {
            warn!(session_id = %session.id, "a DICOM record from the connector is longer than 64 KiB: no more records for this session");
            return;
        }
        match stream.chunk().await {
            Ok(Some(bytes)) => buf.extend_from_slice(bytes.chunk()),
            Ok(None) => break,
            Err(e) => {
                debug!(session_id = %session.id, error = %e, "the connector's DICOM records ended");
                break;
            }
        }
    }
    if !buf.is_empty() {
        record_line(access, session, &buf);
    }
}

fn record_line(access: &Access, session: &Session, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<DicomRecord>(line)
        .ok()
        .and_then(DicomRecord::bounded)
    {
        Some(record) => {
            if record.event == "refused" {
                let why = record
                    .reason
                    .clone()
                    .unwrap_or_else(|| "it broke the DICOM protocol".to_owned());
                access.notices.add(
                    session.subject.user(),
                    &session.id,
                    &session.endpoint.name,
                    &format!("the PACS connection was refused: {why}"),
                    crate::clock::unix_secs(access.clock.now()),
                );
            }
            access
                .metrics
                .dicom_records
                .with_label_values(&[record.event.as_str()])
                .inc();
            access.audit.record_nowait(event(access, session, record));
        }
        None => {
            warn!(session_id = %session.id, "ignored a DICOM record from the connector that does not parse");
        }
    }
}

/// The `dicom.*` event of `record` in `session`: the session's fields (user, device, source,
/// endpoint, connector, decision), the record, and the objects it names (patient, accession,
/// studies, series) for `postern-audit access`.
pub fn event(access: &Access, session: &Session, record: DicomRecord) -> Event {
    let kind = match record.event.as_str() {
        "association" => EventType::DicomAssociation,
        "query" => EventType::DicomQuery,
        "retrieve" => EventType::DicomRetrieve,
        "store" => EventType::DicomStore,
        _ => EventType::DicomRefused,
    };
    let mut ev = events::session_event(&access.audit, session, kind);
    let mut objects = Vec::new();
    let mut add = |kind: &str, id: &str| {
        if !id.is_empty() {
            objects.push(ObjectRef {
                kind: kind.to_owned(),
                id: id.to_owned(),
            });
        }
    };
    if let Some(p) = &record.patient_id {
        add("patient", p);
    }
    if let Some(a) = &record.accession {
        add("accession", a);
    }
    for s in &record.study_uids {
        add("study", s);
    }
    for s in &record.series_uids {
        add("series", s);
    }
    if kind == EventType::DicomRefused {
        ev.detail = record.reason.clone();
    }
    ev.objects = (!objects.is_empty()).then_some(objects);
    ev.dicom = Some(record);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_policy::{DicomGrant, Effect, Limits};

    #[test]
    fn the_permit_is_the_grant_of_the_deciding_rule() {
        let d = Decision {
            effect: Effect::Allow,
            rule: Some("reporters".into()),
            reason: String::new(),
            limits: Limits {
                dicom: Some(DicomGrant {
                    calling_ae: vec!["RAD_*".into()],
                    called_ae: Some("PACS".into()),
                    services: vec!["echo".into(), "find".into(), "get".into()],
                }),
                ..Limits::default()
            },
            matched_allows: vec![],
            matched_denies: vec![],
            report_only: vec![],
            valid_until: None,
            policy_version: String::new(),
        };
        let p = permit(&d).unwrap();
        assert_eq!(p.rule, "reporters");
        assert!(p.allows_calling("RAD_ANN") && !p.allows_calling("EVIL"));
        assert!(p.allows(DicomService::Get) && !p.allows(DicomService::Store));
        let mut other = d.clone();
        other.limits.dicom = None;
        assert!(permit(&other).is_none());
    }
}
