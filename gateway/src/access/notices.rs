//! Notices for clinicians: what happened to their sessions that their own tools cannot tell
//! them, such as the PACS connection the connector refused because of the policy (a viewer
//! shows "association rejected", not which AE titles the rule accepts). Kept in memory per
//! user (the latest [`PER_USER`]), served at `GET /v1/notices` to the user's own token; the
//! client shows new ones after a tunnel ends (`postern status`, standard error).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;

use http::{Request, StatusCode};
use postern_proto::wire::{Notice, NoticeList};

use super::broker::Broker;
use crate::http::{json, Resp};

/// Notices kept per user.
pub const PER_USER: usize = 16;
/// Users with notices kept; past it, the user whose latest notice is oldest is forgotten.
pub const MAX_USERS: usize = 10_000;

/// Recent notices by user.
#[derive(Default)]
pub struct Notices {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    by_user: HashMap<String, VecDeque<Notice>>,
}

impl Notices {
    /// Keeps `message` about session `session_id` on `endpoint` for `user`, at `at` (Unix
    /// seconds).
    pub fn add(&self, user: &str, session_id: &str, endpoint: &str, message: &str, at: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.next += 1;
        let seq = inner.next;
        if !inner.by_user.contains_key(user) && inner.by_user.len() >= MAX_USERS {
            let oldest = inner
                .by_user
                .iter()
                .min_by_key(|(_, q)| q.back().map_or(0, |n| n.seq))
                .map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                inner.by_user.remove(&u);
            }
        }
        let queue = inner.by_user.entry(user.to_owned()).or_default();
        if queue.len() == PER_USER {
            queue.pop_front();
        }
        queue.push_back(Notice {
            seq,
            at,
            session_id: session_id.to_owned(),
            endpoint: endpoint.to_owned(),
            message: message.chars().take(512).collect(),
        });
    }

    /// `user`'s notices after `after` (a `seq`), oldest first.
    pub fn for_user(&self, user: &str, after: u64) -> Vec<Notice> {
        self.inner
            .lock()
            .ok()
            .and_then(|i| {
                i.by_user
                    .get(user)
                    .map(|q| q.iter().filter(|n| n.seq > after).cloned().collect())
            })
            .unwrap_or_default()
    }
}

/// `GET /v1/notices[?after=SEQ]`: the token's user's notices after `SEQ`.
pub fn list<B>(broker: &Broker, req: &Request<B>, peer: SocketAddr) -> Resp {
    let subject = match broker.authenticate(req, peer) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let after = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json(
        StatusCode::OK,
        &NoticeList {
            notices: broker.access.notices.for_user(subject.user(), after),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_kept_per_user_bounded_and_read_after_a_sequence_number() {
        let n = Notices::default();
        for i in 0..20 {
            n.add("ann", "s1", "pacs", &format!("m{i}"), 100 + i);
        }
        n.add("bob", "s2", "pacs", &"x".repeat(2000), 1);
        let ann = n.for_user("ann", 0);
        assert_eq!(ann.len(), PER_USER);
        assert_eq!(ann.first().unwrap().message, "m4");
        let last = ann.last().unwrap().seq;
        assert!(n.for_user("ann", last).is_empty());
        assert_eq!(n.for_user("ann", last - 1).len(), 1);
        let bob = n.for_user("bob", 0);
        assert_eq!(bob[0].message.len(), 512);
        assert!(n.for_user("carol", 0).is_empty());
    }
}
