//! [`Refusals`]: refusals of unauthenticated requests (no valid session token, or over the
//! per-address limit before authentication), audited in aggregate.
//!
//! One event per request would let anyone on the internet write to the audit log as fast as
//! they can send requests (issue #12: 4,000 events, 33 MB in 0.2 s, and the writer's queue
//! overflowed). Instead, per source address and reason:
//!
//! * the first refusal after a flush is written at once, with `count` 1, so a single failed
//!   attempt is visible immediately;
//! * the refusals after it are only counted, and written as one event with their `count`,
//!   the time of the first and of the last, at the next flush (every
//!   `[limits] refusal_summary_interval`, and at shutdown).
//!
//! So one address and reason cost at most two events per interval. The table holds at most
//! [`MAX_SOURCES`] addresses; refusals from further addresses until the next flush are counted
//! under the source `other`. The event (`access.refused_unauthenticated`) carries the address
//! without its port, the reason code and a fixed sentence: never the token or anything taken
//! from it (the `kid` of a forged token used to be echoed twice).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use postern_audit::{EventType, RefusedSummary};

use crate::audit::Audit;
use crate::authn::tokens::TokenError;
use crate::metrics::Metrics;

/// Source addresses tracked between two flushes; more are counted under `other`.
pub const MAX_SOURCES: usize = 10_000;

/// Why an unauthenticated request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The token was refused; the code is [`TokenError::code`].
    Token(&'static str),
    /// Over the per-address limit before authentication.
    RateLimited,
}

impl Reason {
    pub fn of(e: &TokenError) -> Reason {
        Reason::Token(e.code())
    }

    pub fn code(self) -> &'static str {
        match self {
            Reason::Token(code) => code,
            Reason::RateLimited => "rate_limited",
        }
    }

    /// A fixed sentence: nothing the client sent.
    fn sentence(self) -> &'static str {
        match self.code() {
            "token_missing" => "requests without a session token were refused",
            "token_malformed" => "requests with a malformed session token were refused",
            "token_invalid_signature" => {
                "requests with a session token this gateway did not sign were refused"
            }
            "token_expired" => "requests with an expired session token were refused",
            "token_revoked" => "requests with a signed-out session token were refused",
            "user_revoked" => "requests with a session token of a revoked user were refused",
            "device_revoked" => {
                "requests with a session token bound to a device that is not active were refused"
            }
            "rate_limited" => {
                "requests over the per-address limit were refused before authentication"
            }
            _ => "requests were refused before authentication",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Addr(IpAddr),
    /// Every address beyond [`MAX_SOURCES`] until the next flush.
    Other,
}

impl Source {
    fn shown(self) -> String {
        match self {
            Source::Addr(ip) => ip.to_string(),
            Source::Other => "other".to_owned(),
        }
    }
}

/// Refusals counted since the first one of a key was written.
#[derive(Debug, Default)]
struct Pending {
    count: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

/// Source, reason, and the user a signed-but-refused token names.
type Key = (Source, Reason, Option<String>);

pub struct Refusals {
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    table: Mutex<HashMap<Key, Pending>>,
}

impl Refusals {
    pub fn new(audit: Arc<Audit>, metrics: Arc<Metrics>) -> Refusals {
        Refusals {
            audit,
            metrics,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The table, even if a thread panicked while holding it (counters only).
    fn table(&self) -> MutexGuard<'_, HashMap<Key, Pending>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one refusal from `ip` for `reason` at `now`; writes it at once if it is the
    /// first of its address and reason since the last flush.
    pub fn note(&self, ip: IpAddr, reason: Reason, now: SystemTime) {
        self.note_user(ip, reason, None, now)
    }

    /// [`Refusals::note`] for a token this gateway signed, refused for its age or a
    /// revocation: `user` is the user it names.
    pub fn note_user(&self, ip: IpAddr, reason: Reason, user: Option<&str>, now: SystemTime) {
        self.metrics
            .refused_unauthenticated
            .with_label_values(&[reason.code()])
            .inc();
        let first_of_key = {
            let mut table = self.table();
            let mut key = (
                Source::Addr(ip),
                reason,
                user.map(|u| crate::http::printable(u, 256)),
            );
            if !table.contains_key(&key) && table.len() >= MAX_SOURCES {
                key = (Source::Other, reason, None);
            }
            match table.get_mut(&key) {
                Some(p) => {
                    p.count += 1;
                    p.first.get_or_insert(now);
                    p.last = Some(now);
                    None
                }
                None => {
                    table.insert(key.clone(), Pending::default());
                    Some(key)
                }
            }
        };
        if let Some(key) = first_of_key {
            self.write(&key, 1, now, now);
        }
    }

    /// Writes what was counted since the last flush and forgets every key (the next refusal
    /// of each is written at once again). Called every interval and at shutdown.
    pub fn flush(&self) {
        let drained: Vec<(Key, Pending)> = self.table().drain().collect();
        for (key, p) in drained {
            if let (Some(first), Some(last)) = (p.first, p.last) {
                if p.count > 0 {
                    self.write(&key, p.count, first, last);
                }
            }
        }
    }

    fn write(&self, key: &Key, count: u64, first: SystemTime, last: SystemTime) {
        let (source, reason, user) = key;
        let ts = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
        let mut ev = self.audit.event(EventType::AccessRefusedUnauthenticated);
        ev.source = Some(source.shown());
        ev.detail = Some(match user {
            Some(_) => format!(
                "{} (the user is the one the token names: this gateway signed it)",
                reason.sentence()
            ),
            None => reason.sentence().to_owned(),
        });
        ev.user = user.clone();
        ev.refused = Some(RefusedSummary {
            reason: reason.code().to_owned(),
            count,
            first: ts(first),
            last: ts(last),
        });
        // Not a sheddable type: waits for room in the writer's queue rather than being lost.
        self.audit.record_nowait(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use postern_audit::MemorySink;

    fn refusals() -> (Refusals, Arc<MemorySink>) {
        let mem = MemorySink::shared();
        let audit = Arc::new(Audit::new(mem.clone(), "gw-test"));
        let metrics = Arc::new(Metrics::new().unwrap());
        (Refusals::new(audit, metrics), mem)
    }

    fn summaries(mem: &MemorySink) -> Vec<(String, String, u64)> {
        mem.of_type(EventType::AccessRefusedUnauthenticated)
            .into_iter()
            .map(|e| {
                let r = e.refused.unwrap();
                (e.source.unwrap(), r.reason, r.count)
            })
            .collect()
    }

    #[test]
    fn first_refusal_at_once_then_one_count_per_source_and_reason_per_flush() {
        let (r, mem) = refusals();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let bad_sig = Reason::Token("token_invalid_signature");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..1000 {
            r.note(a, bad_sig, t0 + Duration::from_millis(i));
        }
        r.note(a, Reason::RateLimited, t0);
        r.note(b, bad_sig, t0);
        // Before the flush: only the first of each (address, reason).
        assert_eq!(
            summaries(&mem),
            [
                ("192.0.2.1".into(), "token_invalid_signature".into(), 1),
                ("192.0.2.1".into(), "rate_limited".into(), 1),
                ("192.0.2.2".into(), "token_invalid_signature".into(), 1),
            ]
        );
        r.flush();
        let all = summaries(&mem);
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(
            all[3],
            ("192.0.2.1".into(), "token_invalid_signature".into(), 999)
        );
        let last = mem
            .of_type(EventType::AccessRefusedUnauthenticated)
            .pop()
            .unwrap();
        let s = last.refused.unwrap();
        assert_eq!(s.first, "2023-11-14T22:13:20.001000Z");
        assert_eq!(s.last, "2023-11-14T22:13:20.999000Z");
        assert_eq!(last.gateway.as_deref(), Some("gw-test"));
        // Every counted refusal is in some event.
        let total: u64 = summaries(&mem).iter().map(|s| s.2).sum();
        assert_eq!(total, 1002);
        // An empty flush writes nothing; after it, the next refusal is written at once.
        r.flush();
        assert_eq!(summaries(&mem).len(), 4);
        r.note(a, bad_sig, t0);
        assert_eq!(summaries(&mem).len(), 5);
    }

    #[test]
    fn a_signed_token_refused_for_its_age_names_its_user_counted_apart() {
        let (r, mem) = refusals();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let expired = Reason::Token("token_expired");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for _ in 0..3 {
            r.note_user(a, expired, Some("ann@nhs.example"), t0);
        }
        r.note_user(a, expired, Some("bob@nhs.example"), t0);
        r.note(a, expired, t0);
        r.flush();
        let events = mem.of_type(EventType::AccessRefusedUnauthenticated);
        let by = |user: Option<&str>| -> u64 {
            events
                .iter()
                .filter(|e| e.user.as_deref() == user)
                .map(|e| e.refused.as_ref().unwrap().count)
                .sum()
        };
        assert_eq!(by(Some("ann@nhs.example")), 3);
        assert_eq!(by(Some("bob@nhs.example")), 1);
        assert_eq!(by(None), 1);
        let ann = events
            .iter()
            .find(|e| e.user.as_deref() == Some("ann@nhs.example"))
            .unwrap();
        assert!(
            ann.detail.as_deref().unwrap().contains("expired")
                && ann.detail.as_deref().unwrap().contains("the token names"),
            "{ann:?}"
        );
    }

    #[test]
    fn the_table_is_bounded_and_the_rest_is_counted_as_other() {
        let (r, mem) = refusals();
        let t0 = SystemTime::now();
        let reason = Reason::Token("token_malformed");
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.note(ip, reason, t0);
        }
        assert_eq!(r.table().len(), MAX_SOURCES + 1);
        r.flush();
        let all = summaries(&mem);
        // One at once per tracked address, one at once for `other`, then `other`'s count.
        assert_eq!(all.len(), MAX_SOURCES + 2);
        let other: u64 = all.iter().filter(|s| s.0 == "other").map(|s| s.2).sum();
        assert_eq!(other, 50);
        assert!(r.table().is_empty());
    }

    #[test]
    fn sentences_never_carry_request_content() {
        for e in [
            TokenError::UnknownKey("attacker-kid".into()),
            TokenError::Malformed("attacker-bytes".into()),
            TokenError::DeviceNotActive("attacker-device".into(), "revoked"),
        ] {
            let s = Reason::of(&e).sentence();
            assert!(!s.contains("attacker"), "{s}");
            assert!(s.ends_with("refused"), "{s}");
        }
    }
}
