//! Rate limits on every unauthenticated (or cheap-to-abuse) surface, keyed per source address
//! or per user, with bounded memory (idle keys are forgotten every minute).
//!
//! | limiter | key | sustained | burst |
//! | --- | --- | --- | --- |
//! | sign-in starts, callbacks, code redemptions | source address | 5/s | 20 |
//! | connector enrolment | source address | 1/s | 10 |
//! | connector connection attempts | source address | 5/s | 30 |
//! | tunnel opens | source address | 100/s | 400 |
//! | tunnel opens | user | 50/s | 200 |
//! | admin listener requests (metrics, health) | source address | 20/s | 100 |
//! | web application requests | source address | 200/s | 1000 |
//! | web application requests | user | 200/s | 1000 |
//!
//! Each is set in the `[rate_limits]` table of the gateway configuration (read at start).
//! The per-address tunnel limit also covers `GET /v1/endpoints[/NAME]` and applies *before*
//! the token is verified, so junk tokens cost an attacker the same budget as real ones.
//!
//! A DICOM viewer opens one association per query or retrieve, so the tunnel limits leave room
//! for a busy reporting session while a runaway or hostile client is stopped.
//!
//! Connections are capped too ([`ConnectionLimits`], the `[limits]` table): each listener has
//! its own pool, so clients can never take the slots connectors need, and one source address
//! may hold at most `max_connections_per_address` client connections ([`AddressCap`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct Limiter<K: Hash + Eq + Clone> {
    inner: DefaultKeyedRateLimiter<K>,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl<K: Hash + Eq + Clone> From<RateQuota> for Limiter<K> {
    fn from(q: RateQuota) -> Self {
        Limiter::new(q.per_second, q.burst)
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(per_second: u32, burst: u32) -> Limiter<K> {
        Limiter {
            inner: RateLimiter::keyed(Quota::per_second(nz(per_second)).allow_burst(nz(burst))),
        }
    }

    /// Ok, or the number of seconds to wait.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.inner.check_key(key).map_err(|not_until| {
            not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
    }

    /// Forgets idle keys (bounded memory).
    pub fn shrink(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// One limiter's budget: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateQuota {
    pub per_second: u32,
    pub burst: u32,
}

/// The `[rate_limits]` table of the gateway configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub signin: RateQuota,
    pub enroll: RateQuota,
    pub connector_dial: RateQuota,
    pub tunnel_per_address: RateQuota,
    pub tunnel_per_user: RateQuota,
    pub admin: RateQuota,
    /// Requests to web applications (a viewer page loads tens of resources at once).
    pub web_per_address: RateQuota,
    pub web_per_user: RateQuota,
}

impl Default for RateLimits {
    fn default() -> Self {
        let q = |per_second, burst| RateQuota { per_second, burst };
        RateLimits {
            signin: q(5, 20),
            enroll: q(1, 10),
            connector_dial: q(5, 30),
            tunnel_per_address: q(100, 400),
            tunnel_per_user: q(50, 200),
            admin: q(20, 100),
            web_per_address: q(200, 1000),
            web_per_user: q(200, 1000),
        }
    }
}

/// All the gateway's limiters.
pub struct Limits {
    pub signin: Limiter<IpAddr>,
    pub enroll: Limiter<IpAddr>,
    pub connector_dial: Limiter<IpAddr>,
    pub tunnel_ip: Limiter<IpAddr>,
    pub tunnel_user: Limiter<String>,
    pub admin: Limiter<IpAddr>,
    pub web_ip: Limiter<IpAddr>,
    pub web_user: Limiter<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(&RateLimits::default())
    }
}

impl Limits {
    pub fn new(r: &RateLimits) -> Limits {
        Limits {
            signin: Limiter::from(r.signin),
            enroll: Limiter::from(r.enroll),
            connector_dial: Limiter::from(r.connector_dial),
            tunnel_ip: Limiter::from(r.tunnel_per_address),
            tunnel_user: Limiter::from(r.tunnel_per_user),
            admin: Limiter::from(r.admin),
            web_ip: Limiter::from(r.web_per_address),
            web_user: Limiter::from(r.web_per_user),
        }
    }

    pub fn shrink(&self) {
        self.admin.shrink();
        self.signin.shrink();
        self.enroll.shrink();
        self.connector_dial.shrink();
        self.tunnel_ip.shrink();
        self.tunnel_user.shrink();
        self.web_ip.shrink();
        self.web_user.shrink();
    }
}

/// The connection caps of the `[limits]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `max_client_connections` (formerly `max_connections`): open connections on the client
    /// listener.
    pub max_client: usize,
    /// `max_connector_connections`: open connections on the connector listener, a pool of its
    /// own so that clients cannot keep connectors out.
    pub max_connector: usize,
    /// `max_connections_per_address`: client connections one source address may hold.
    pub per_address: usize,
    /// `client_idle_timeout`: a client connection with no open stream (request or tunnel) for
    /// this long is closed with GOAWAY.
    pub client_idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_client: 20_000,
            max_connector: 1_024,
            per_address: 256,
            client_idle: Duration::from_secs(300),
        }
    }
}

/// At most `max` connections per source address. Memory is bounded by the open connections:
/// an address leaves the table when its last connection closes.
pub struct AddressCap {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under its address's cap; released when dropped.
pub struct AddressPermit {
    cap: Arc<AddressCap>,
    ip: IpAddr,
}

impl AddressCap {
    pub fn new(max: usize) -> Arc<AddressCap> {
        Arc::new(AddressCap {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The table, even if a thread panicked while holding it (counters only).
    fn open(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection from `ip`, or None if it already has `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        let mut open = self.open();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            cap: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip`.
    pub fn count(&self, ip: &IpAddr) -> usize {
        self.open().get(ip).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.cap.open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_cap_counts_per_address_and_forgets_closed_ones() {
        let cap = AddressCap::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = cap.acquire(a).unwrap();
        let a2 = cap.acquire(a).unwrap();
        assert!(cap.acquire(a).is_none(), "a third from the same address");
        let b1 = cap.acquire(b).unwrap();
        assert_eq!((cap.count(&a), cap.count(&b)), (2, 1));
        drop(a1);
        let a3 = cap.acquire(a).expect("a place was freed");
        drop((a2, a3, b1));
        assert!(cap.open().is_empty(), "closed addresses are forgotten");
    }

    #[test]
    fn bursts_then_refuses_per_key() {
        let l: Limiter<IpAddr> = Limiter::new(1, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(&a).is_ok());
        }
        assert!(l.check(&a).unwrap_err() >= 1);
        assert!(l.check(&b).is_ok(), "another address has its own budget");
    }
}
