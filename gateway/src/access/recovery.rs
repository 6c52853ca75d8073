//! Sessions a previous gateway process left open in the audit log.
//!
//! A gateway that is killed (`kill -9`, a crash, power loss) cannot write `session.end` for the
//! sessions it was relaying. At start, before `gateway.started`, the gateway reads its log back
//! to the previous process's `gateway.started`: if no `gateway.stopped` followed it, every
//! `session.start` after it that has no `session.end` gets one now, reason `gateway_lost`,
//! with the start's fields, no byte counts (they died with the process) and a detail saying so.
//! So every session in the log has an end, and an auditor can tell these apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use postern_audit::{parse_line, segment_paths, AuditError, Event, EventType, RawLines};

/// How many segments (newest first) are searched for the previous `gateway.started`; a log
/// whose last start is further back than this has no session that can still be open.
const MAX_SEGMENTS: usize = 4;

fn mentions(bytes: &[u8], what: &[u8]) -> bool {
    bytes.windows(what.len()).any(|w| w == what)
}

/// Where the previous process started: (index into `segments`, line number), or None if its
/// last lifecycle event is `gateway.stopped` (a clean stop: nothing to recover).
fn previous_start(segments: &[PathBuf]) -> Result<Option<(usize, u64)>, AuditError> {
    for i in (0..segments.len()).rev().take(MAX_SEGMENTS) {
        let mut lines = RawLines::from_paths(vec![segments[i].clone()]);
        let mut last: Option<(u64, bool)> = None;
        while let Some(line) = lines.next() {
            let line = line?;
            if !mentions(line.bytes, b"gateway.st") {
                continue;
            }
            let Ok(entry) = parse_line(&line) else {
                continue;
            };
            match entry.event.event_type() {
                Some(EventType::GatewayStarted) => last = Some((line.line, true)),
                Some(EventType::GatewayStopped) => last = Some((line.line, false)),
                _ => {}
            }
        }
        match last {
            Some((line, true)) => return Ok(Some((i, line))),
            Some((_, false)) => return Ok(None),
            None => {}
        }
    }
    // No lifecycle event in the searched segments: everything in them may be open.
    Ok(Some((segments.len().saturating_sub(MAX_SEGMENTS), 0)))
}

/// The `session.start` events after the previous process's start that have no `session.end`.
pub(crate) fn open_sessions(audit_dir: &Path) -> Result<Vec<Event>, AuditError> {
    let segments = segment_paths(audit_dir)?;
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    let Some((first, after_line)) = previous_start(&segments)? else {
        return Ok(Vec::new());
    };
    let mut open: HashMap<String, Event> = HashMap::new();
    let mut order = Vec::new();
    for (i, seg) in segments.iter().enumerate().skip(first) {
        let mut lines = RawLines::from_paths(vec![seg.clone()]);
        while let Some(line) = lines.next() {
            let line = line?;
            if (i == first && line.line <= after_line) || !mentions(line.bytes, b"\"session.") {
                continue;
            }
            // A torn last line was already cut by the writer at open; skip anything unreadable.
            let Ok(entry) = parse_line(&line) else {
                continue;
            };
            let ev = entry.event;
            let Some(id) = ev.session_id.clone() else {
                continue;
            };
            match ev.event_type() {
                Some(EventType::SessionStart) => {
                    order.push(id.clone());
                    open.insert(id, ev);
                }
                Some(EventType::SessionEnd) => {
                    open.remove(&id);
                }
                _ => {}
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| open.remove(&id))
        .collect())
}

/// The `session.end` to write for a session the previous process left open.
pub(crate) fn lost_end(start: &Event, node_id: &str, now: SystemTime) -> Event {
    let mut end = Event::new(EventType::SessionEnd);
    end.session_id = start.session_id.clone();
    end.user = start.user.clone();
    end.user_name = start.user_name.clone();
    end.user_email = start.user_email.clone();
    end.groups = start.groups.clone();
    end.device = start.device.clone();
    end.signin = start.signin.clone();
    end.source = start.source.clone();
    end.user_agent = start.user_agent.clone();
    end.endpoint = start.endpoint.clone();
    end.egress_class = start.egress_class.clone();
    end.connector = start.connector.clone();
    end.decision = start.decision.clone();
    end.justification = start.justification.clone();
    end.gateway = Some(node_id.to_owned());
    end.close_reason = Some("gateway_lost".to_owned());
    let started = humantime::parse_rfc3339(&start.ts).ok();
    end.duration_ms = started
        .and_then(|s| now.duration_since(s).ok())
        .map(|d| d.as_millis() as u64);
    end.detail = Some(format!(
        "the gateway process that relayed this session stopped without ending it (killed, crashed \
         or lost power); ended when the next process started. Byte counts were lost with it{}",
        start
            .gateway
            .as_deref()
            .map(|g| format!(" (node {g})"))
            .unwrap_or_default()
    ));
    end
}

/// Writes `session.end` (reason `gateway_lost`) for the sessions a previous process of this
/// gateway started and never ended because it was killed or crashed. Failing to read the log
/// back is only a warning; failing to write the ends stops the start.
pub async fn end_lost_sessions(
    audit_dir: &Path,
    audit: &crate::audit::Audit,
    node_id: &str,
    now: SystemTime,
) -> Result<(), AuditError> {
    let dir = audit_dir.to_owned();
    let open = match tokio::task::spawn_blocking(move || open_sessions(&dir)).await {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the audit log back for sessions left open");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the audit log back failed");
            return Ok(());
        }
    };
    if open.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        sessions = open.len(),
        "the previous gateway process stopped without ending these sessions: recording their end (reason gateway_lost)"
    );
    // In batches well under the writer's queue, each committed with one flush.
    for chunk in open.chunks(4096) {
        for start in chunk {
            audit.record_nowait(lost_end(start, node_id, now));
        }
        audit.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventType, id: Option<&str>) -> Event {
        let mut e = Event::new(kind);
        e.session_id = id.map(str::to_owned);
        e
    }

    #[tokio::test]
    async fn finds_sessions_left_open_after_the_last_start_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = postern_audit::AuditLog::open(dir.path()).await.unwrap();
        for e in [
            ev(EventType::GatewayStarted, None),
            ev(EventType::SessionStart, Some("old-open")), // before a clean stop: ended by it
            ev(EventType::GatewayStopped, None),
            ev(EventType::GatewayStarted, None),
            ev(EventType::SessionStart, Some("a")),
            ev(EventType::SessionStart, Some("b")),
            ev(EventType::SessionEnd, Some("a")),
            ev(EventType::SessionStart, Some("c")),
        ] {
            log.record(e).await.unwrap();
        }
        log.close().await.unwrap();
        let open: Vec<_> = open_sessions(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.session_id.unwrap())
            .collect();
        assert_eq!(open, ["b", "c"]);
        let end = lost_end(
            &ev(EventType::SessionStart, Some("b")),
            "gw-1",
            SystemTime::now(),
        );
        assert_eq!(end.kind, "session.end");
        assert_eq!(end.close_reason.as_deref(), Some("gateway_lost"));
        assert_eq!(end.bytes_up, None);
    }

    #[tokio::test]
    async fn a_clean_stop_leaves_nothing_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let log = postern_audit::AuditLog::open(dir.path()).await.unwrap();
        for e in [
            ev(EventType::GatewayStarted, None),
            ev(EventType::SessionStart, Some("x")),
            ev(EventType::GatewayStopped, None),
        ] {
            log.record(e).await.unwrap();
        }
        log.close().await.unwrap();
        assert!(open_sessions(dir.path()).unwrap().is_empty());
    }
}
