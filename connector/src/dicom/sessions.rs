//! The records of each inspected session, from the `CONNECT` that opened its tunnel until the
//! gateway's events stream ([`postern_proto::dicom::PATH_SESSION_EVENTS`]) takes them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_proto::dicom::DicomRecord;
use tokio::sync::mpsc::{Receiver, Sender};

/// Records waiting per session (the channel's bound): beyond it the relay drops and counts.
pub const QUEUE: usize = 256;
/// A session whose tunnel ended and whose records nobody took is forgotten after this long.
pub const UNCLAIMED_FOR: Duration = Duration::from_secs(30);

struct Entry {
    rx: Receiver<DicomRecord>,
    ended_at: Option<Instant>,
}

/// Session id → the receiving end of its records, taken once.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.retain(|_, e| e.ended_at.is_none_or(|t| t.elapsed() < UNCLAIMED_FOR));
        f(&mut g)
    }

    /// A new inspected tunnel of `session`: the sender its relay reports to. A second tunnel
    /// with the same id replaces what the first left unclaimed.
    pub fn open(&self, session: &str) -> Sender<DicomRecord> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        self.with(|m| m.insert(session.to_owned(), Entry { rx, ended_at: None }));
        tx
    }

    /// The records of `session`, once: the stream ends when its relay has ended.
    pub fn take(&self, session: &str) -> Option<Receiver<DicomRecord>> {
        self.with(|m| m.remove(session)).map(|e| e.rx)
    }

    /// `session`'s tunnel ended: unless its records are taken within [`UNCLAIMED_FOR`], they
    /// are dropped.
    pub fn ended(&self, session: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(session) {
                e.ended_at = Some(Instant::now());
            }
        });
    }

    /// Sessions whose records wait to be taken.
    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    /// Whether no session's records wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_taken_once_and_their_stream_ends_with_the_tunnel() {
        let s = Sessions::default();
        let tx = s.open("s-1");
        assert!(s.take("s-2").is_none());
        let mut rx = s.take("s-1").unwrap();
        assert!(s.take("s-1").is_none(), "taken twice");
        tx.try_send(DicomRecord {
            event: "query".into(),
            ..DicomRecord::default()
        })
        .unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().event, "query");
        assert!(rx.recv().await.is_none());
        // Ended and unclaimed: still there at once, gone after UNCLAIMED_FOR.
        let _tx = s.open("s-3");
        s.ended("s-3");
        assert_eq!(s.len(), 1);
        s.with(|m| {
            if let Some(e) = m.get_mut("s-3") {
                e.ended_at = Instant::now().checked_sub(UNCLAIMED_FOR);
            }
        });
        assert!(s.is_empty());
    }
}
