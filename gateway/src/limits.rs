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
//!
//! Each is set in the `[rate_limits]` table of the gateway configuration (read at start).
//!
//! A DICOM viewer opens one association per query or retrieve, so the tunnel limits leave room
//! for a busy reporting session while a runaway or hostile client is stopped.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

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
        }
    }

    pub fn shrink(&self) {
        self.admin.shrink();
        self.signin.shrink();
        self.enroll.shrink();
        self.connector_dial.shrink();
        self.tunnel_ip.shrink();
        self.tunnel_user.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
