//! What `postern-audit search` matches and prints, kept here so it is testable without a process.

use crate::event::Event;

/// Which events to show. Every given criterion must match; an empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event type, exactly (`session.start`), or a family ending in `.*` (`session.*`).
    pub kind: Option<String>,
    /// User, exactly.
    pub user: Option<String>,
    /// Session id, exactly.
    pub session: Option<String>,
}

impl Filter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let kind_ok = match self.kind.as_deref() {
            None => true,
            Some(want) => match want.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('.') => event.kind.starts_with(prefix),
                _ => event.kind == want,
            },
        };
        kind_ok && eq_opt(&self.user, &event.user) && eq_opt(&self.session, &event.session_id)
    }
}

fn eq_opt(want: &Option<String>, have: &Option<String>) -> bool {
    match want {
        None => true,
        Some(want) => have.as_deref() == Some(want.as_str()),
    }
}

// Fixed widths: search streams, so it cannot measure the widest cell first.
const W_TS: usize = 27;
const W_TYPE: usize = 23;
const W_USER: usize = 20;
const W_ENDPOINT: usize = 22;
const W_OUTCOME: usize = 36;

/// The header line of the table.
pub fn table_header() -> String {
    row("TIME", "TYPE", "USER", "ENDPOINT", "OUTCOME", "SESSION")
}

/// One table line for `event`: time, type, user, endpoint (or connector / site), outcome
/// (decision, close reason or detail) and session id. Missing values print as `-`.
pub fn table_row(event: &Event) -> String {
    let endpoint = if let Some(ep) = &event.endpoint {
        format!("{}@{}", ep.name, ep.site)
    } else if let Some(c) = &event.connector {
        format!("connector {}@{}", c.id, c.site)
    } else if let Some(site) = &event.site {
        format!("site {site}")
    } else {
        "-".to_owned()
    };
    let outcome = if let Some(reason) = &event.close_reason {
        reason.clone()
    } else if let Some(d) = &event.decision {
        match &d.rule {
            Some(rule) => format!("{} ({rule}): {}", d.effect, d.reason),
            None => format!("{}: {}", d.effect, d.reason),
        }
    } else if let Some(detail) = &event.detail {
        detail.clone()
    } else {
        "-".to_owned()
    };
    row(
        &event.ts,
        &event.kind,
        event.user.as_deref().unwrap_or("-"),
        &endpoint,
        &one_line(&outcome),
        event.session_id.as_deref().unwrap_or("-"),
    )
}

fn row(ts: &str, kind: &str, user: &str, endpoint: &str, outcome: &str, session: &str) -> String {
    format!("{ts:<W_TS$} {kind:<W_TYPE$} {user:<W_USER$} {endpoint:<W_ENDPOINT$} {outcome:<W_OUTCOME$} {session}")
}

/// Free text may hold newlines or control characters; a table row must stay one line and must
/// not let logged text drive the auditor's terminal.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnectorRef, DecisionRef, EndpointRef, EventType};

    fn ev(kind: EventType, user: &str, session: &str) -> Event {
        Event {
            user: Some(user.into()),
            session_id: Some(session.into()),
            ..Event::new(kind)
        }
    }

    #[test]
    fn filter_criteria_all_apply() {
        let e = ev(EventType::SessionStart, "alice", "s1");
        assert!(Filter::default().matches(&e));
        let f = |kind: Option<&str>, user: Option<&str>, session: Option<&str>| Filter {
            kind: kind.map(Into::into),
            user: user.map(Into::into),
            session: session.map(Into::into),
        };
        assert!(f(Some("session.start"), Some("alice"), Some("s1")).matches(&e));
        assert!(f(Some("session.*"), None, None).matches(&e));
        assert!(!f(Some("session"), None, None).matches(&e));
        assert!(!f(Some("connector.*"), None, None).matches(&e));
        assert!(!f(Some("session.end"), None, None).matches(&e));
        assert!(!f(None, Some("bob"), None).matches(&e));
        assert!(!f(None, None, Some("s2")).matches(&e));
        assert!(!f(Some("session.start"), Some("alice"), Some("s2")).matches(&e));
        // An event without a user never matches a user filter.
        assert!(!f(None, Some("alice"), None).matches(&Event::new(EventType::GatewayStarted)));
    }

    #[test]
    fn table_rows_show_endpoint_and_outcome() {
        let mut start = ev(EventType::SessionStart, "alice", "s1");
        start.ts = "2025-03-01T08:15:02.123456Z".into();
        start.endpoint = Some(EndpointRef {
            name: "pacs-dicom".into(),
            site: "truro".into(),
            host: "10.0.0.5".into(),
            port: 104,
            protocol: "dicom".into(),
        });
        start.decision = Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("rads".into()),
            policy_version: None,
            reason: "group radiologists".into(),
        });
        let row = table_row(&start);
        assert!(
            row.starts_with("2025-03-01T08:15:02.123456Z session.start"),
            "{row}"
        );
        for want in [
            "alice",
            "pacs-dicom@truro",
            "allow (rads): group radiologists",
            "s1",
        ] {
            assert!(row.contains(want), "{want:?} missing from {row:?}");
        }
        assert!(row.ends_with(" s1"), "{row}");

        let mut end = start.clone();
        end.kind = "session.end".into();
        end.close_reason = Some("max_duration".into());
        assert!(table_row(&end).contains("max_duration"));
        assert!(!table_row(&end).contains("allow"));

        let mut conn = Event::new(EventType::ConnectorRefused);
        conn.connector = Some(ConnectorRef {
            id: "c9".into(),
            site: "bodmin".into(),
        });
        conn.detail = Some("certificate revoked\n\x1b[2J".into());
        let row = table_row(&conn);
        assert!(row.contains("connector c9@bodmin"), "{row}");
        assert!(row.contains("certificate revoked"), "{row}");
        assert!(!row.contains('\n') && !row.contains('\x1b'), "{row:?}");
        assert!(row.ends_with(" -"), "{row}");

        let header = table_header();
        assert!(header.starts_with("TIME ") && header.ends_with("SESSION"));
        // Columns line up: the type column starts at the same offset in header and rows.
        assert_eq!(header.find("TYPE"), row.find("connector.refused"));
    }
}
