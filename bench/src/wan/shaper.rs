//! One direction of the emulated link, without I/O: given a packet's arrival time and size it
//! says when the packet leaves the far end of the link, or why it is dropped.
//!
//! The model is a bottleneck with a FIFO queue in front of it: a packet waits until the packets
//! before it have been sent, takes `size × 8 / rate` to send (a token bucket whose depth is one
//! packet: no bursts above the rate), then spends the one-way delay plus a uniform jitter in
//! flight. A packet that would make the queue hold more than `queue_bytes` is dropped on
//! arrival (tail drop); a packet that was sent is lost on the way with probability `loss`.
//! Delivery times never go backwards within a direction, so jitter does not reorder packets.
//! Time is a `Duration` since the emulator started, so tests drive the shaper with made-up
//! clocks.

use std::time::Duration;

/// The properties of one direction of the link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DirParams {
    /// Bits per second; 0 means no rate limit (and no queue).
    pub rate_bps: u64,
    /// One-way delay (half the round-trip time).
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±jitter (never below zero).
    pub jitter: Duration,
    /// Probability in [0, 1] that a sent packet is lost.
    pub loss: f64,
    /// Tail drop when the bytes waiting to be sent would exceed this.
    pub queue_bytes: u64,
}

/// Why a packet was dropped (the names are the keys of `stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Random loss (`--loss`).
    Loss,
    /// The bottleneck queue was full (tail drop).
    Queue,
    /// The link was down (`down`).
    Down,
    /// UDP was blocked (`block-udp`).
    Udp,
    /// Addressed to or from a home address that is no longer the current one (`addr`).
    StaleAddr,
    /// Writing into the far TUN device failed.
    Error,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::Loss,
        Cause::Queue,
        Cause::Down,
        Cause::Udp,
        Cause::StaleAddr,
        Cause::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Loss => "loss",
            Cause::Queue => "queue",
            Cause::Down => "down",
            Cause::Udp => "udp_blocked",
            Cause::StaleAddr => "stale_addr",
            Cause::Error => "write_error",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Cause::Loss => 0,
            Cause::Queue => 1,
            Cause::Down => 2,
            Cause::Udp => 3,
            Cause::StaleAddr => 4,
            Cause::Error => 5,
        }
    }
}

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the far end at this time.
    Deliver(Duration),
    Drop(Cause),
}

/// A small seeded PRNG (splitmix64): loss and jitter are reproducible with `--seed`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Shaper {
    p: DirParams,
    /// When the bottleneck has sent everything admitted so far.
    tx_free_at: Duration,
    /// The latest delivery time handed out (delivery is in order).
    last_deliver: Duration,
    rng: Rng,
}

impl Shaper {
    pub fn new(p: DirParams, rng: Rng) -> Shaper {
        Shaper {
            p,
            tx_free_at: Duration::ZERO,
            last_deliver: Duration::ZERO,
            rng,
        }
    }

    /// Time to send `bytes` at the link's rate.
    fn tx_time(&self, bytes: u64) -> Duration {
        if self.p.rate_bps == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(bytes.saturating_mul(8_000_000_000) / self.p.rate_bps)
    }

    /// Bytes waiting in the queue at `now` (those the bottleneck has not sent yet).
    pub fn backlog_bytes(&self, now: Duration) -> u64 {
        let wait = self.tx_free_at.saturating_sub(now);
        (wait.as_nanos() * u128::from(self.p.rate_bps) / 8_000_000_000) as u64
    }

    /// A packet of `len` bytes arrives at `now`.
    pub fn admit(&mut self, now: Duration, len: usize) -> Verdict {
        let len = len as u64;
        if self.p.rate_bps > 0 {
            let backlog = self.backlog_bytes(now);
            // An empty queue takes any packet, however small the bound.
            if backlog > 0 && backlog + len > self.p.queue_bytes {
                return Verdict::Drop(Cause::Queue);
            }
        }
        let sent = self.tx_free_at.max(now) + self.tx_time(len);
        self.tx_free_at = sent;
        if self.p.loss > 0.0 && self.rng.unit() < self.p.loss {
            return Verdict::Drop(Cause::Loss);
        }
        let mut delay = self.p.delay;
        if !self.p.jitter.is_zero() {
            let j = self.p.jitter.as_nanos() as f64;
            let offset = (self.rng.unit() * 2.0 - 1.0) * j;
            let d = (delay.as_nanos() as f64 + offset).max(0.0);
            delay = Duration::from_nanos(d as u64);
        }
        let at = (sent + delay).max(self.last_deliver);
        self.last_deliver = at;
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn params(rate_mbit: u64, delay_ms: u64) -> DirParams {
        DirParams {
            rate_bps: rate_mbit * 1_000_000,
            delay: ms(delay_ms),
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: rate_mbit * 1_000_000 / 8 / 10, // 100 ms
        }
    }

    fn at(v: Verdict) -> Duration {
        match v {
            Verdict::Deliver(t) => t,
            Verdict::Drop(c) => panic!("dropped: {c:?}"),
        }
    }

    #[test]
    fn a_lone_packet_takes_its_send_time_plus_the_delay() {
        let mut s = Shaper::new(params(8, 20), Rng::new(1));
        // 1000 bytes at 8 Mbit/s: 1 ms on the wire.
        assert_eq!(at(s.admit(ms(5), 1000)), ms(5 + 1 + 20));
    }

    #[test]
    fn back_to_back_packets_leave_at_the_rate() {
        let mut s = Shaper::new(params(8, 20), Rng::new(1));
        let times: Vec<_> = (0..5).map(|_| at(s.admit(ms(0), 1000))).collect();
        assert_eq!(times, vec![ms(21), ms(22), ms(23), ms(24), ms(25)]);
        assert_eq!(s.backlog_bytes(ms(0)), 5000);
        assert_eq!(s.backlog_bytes(ms(2)), 3000);
        assert_eq!(s.backlog_bytes(ms(9)), 0);
        // After the queue drained, a packet goes straight out again.
        assert_eq!(at(s.admit(ms(100), 1000)), ms(121));
    }

    #[test]
    fn a_full_queue_drops_at_the_tail() {
        // 8 Mbit/s, 100 ms of queue: 100 000 bytes.
        let mut s = Shaper::new(params(8, 0), Rng::new(1));
        let mut delivered = 0;
        let mut dropped = 0;
        for _ in 0..200 {
            match s.admit(ms(0), 1000) {
                Verdict::Deliver(_) => delivered += 1,
                Verdict::Drop(Cause::Queue) => dropped += 1,
                Verdict::Drop(c) => panic!("{c:?}"),
            }
        }
        assert_eq!(delivered, 100);
        assert_eq!(dropped, 100);
        // 50 ms later half the queue is gone: 50 more fit, not 51.
        let more = (0..60)
            .filter(|_| matches!(s.admit(ms(50), 1000), Verdict::Deliver(_)))
            .count();
        assert_eq!(more, 50);
    }

    #[test]
    fn no_rate_means_no_queue_and_only_the_delay() {
        let mut s = Shaper::new(
            DirParams {
                rate_bps: 0,
                queue_bytes: 0,
                ..params(1, 7)
            },
            Rng::new(1),
        );
        for _ in 0..10_000 {
            assert_eq!(at(s.admit(ms(3), 1500)), ms(10));
        }
    }

    #[test]
    fn loss_is_near_its_probability_and_reproducible() {
        let run = |seed| {
            let mut s = Shaper::new(
                DirParams {
                    loss: 0.01,
                    rate_bps: 0,
                    ..params(1, 0)
                },
                Rng::new(seed),
            );
            (0..100_000)
                .filter(|_| s.admit(ms(0), 100) == Verdict::Drop(Cause::Loss))
                .count()
        };
        let lost = run(7);
        assert!((800..1200).contains(&lost), "{lost} of 100000 lost");
        assert_eq!(run(7), lost);
        assert_ne!(run(8), lost);
    }

    #[test]
    fn jitter_stays_in_its_band_and_never_reorders() {
        let mut s = Shaper::new(
            DirParams {
                jitter: ms(5),
                ..params(100, 40)
            },
            Rng::new(3),
        );
        let mut last = Duration::ZERO;
        let mut min = Duration::MAX;
        let mut max = Duration::ZERO;
        for i in 0..10_000u64 {
            // One small packet every millisecond: no queueing.
            let now = ms(i);
            let t = at(s.admit(now, 100));
            assert!(t >= last, "packet {i} reordered");
            last = t;
            let d = t - now;
            min = min.min(d);
            max = max.max(d);
        }
        assert!(min < ms(36), "min one-way {min:?}");
        assert!(min >= ms(35), "min one-way {min:?}");
        assert!(max > ms(44), "max one-way {max:?}");
        assert!(max <= ms(46), "max one-way {max:?}");
    }
}
