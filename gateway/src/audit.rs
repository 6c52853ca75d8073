//! [`Audit`]: the audit seam as the gateway uses it — an [`AuditSink`] (the audit crate's
//! durable log in production, `postern_audit::MemorySink` in tests) and this node's id, which
//! every event carries.

use std::sync::Arc;

use postern_audit::{AuditSink, Event, EventType};

/// The gateway's audit sink.
pub struct Audit {
    sink: Arc<dyn AuditSink>,
    node_id: String,
}

impl Audit {
    pub fn new(sink: Arc<dyn AuditSink>, node_id: impl Into<String>) -> Audit {
        Audit {
            sink,
            node_id: node_id.into(),
        }
    }

    /// A new event of `kind` from this gateway.
    pub fn event(&self, kind: EventType) -> Event {
        let mut ev = Event::new(kind);
        ev.gateway = Some(self.node_id.clone());
        ev
    }
}

impl std::ops::Deref for Audit {
    type Target = dyn AuditSink;
    fn deref(&self) -> &Self::Target {
        &*self.sink
    }
}
