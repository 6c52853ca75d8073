//! Congestion control for the client's QUIC connection: a window of
//! [`GAIN`] × bottleneck bandwidth × minimum RTT, so a bulk transfer fills the path while
//! keeping only a small queue at its bottleneck.
//!
//! Why not quinn's own controllers (issue #14, `bench/link`): Cubic halves its window on every
//! loss, and a home link's random loss is not congestion (11 Mbit/s on an emulated 100 Mbit/s
//! link with 0.1 % loss). quinn's BBR keeps the throughput but quinn paces at
//! 1.25 × window / smoothed RTT rather than at BBR's pacing rate, so BBR's window of twice
//! the bandwidth-delay product is sent at twice the bottleneck's rate until the bottleneck's
//! queue is full: an RDP tunnel's round trip beside a study download went from 84 to 556 ms
//! (p50) on the `poor` profile, and the emulator dropped 130 000 packets at its full queue.
//!
//! This controller keeps BBR's model and leaves the pacing to quinn. It estimates the
//! bottleneck bandwidth (the highest delivery rate of the last [`BW_ROUNDS`] round trips) and
//! the path's minimum RTT (refreshed every [`MIN_RTT_WINDOW`] by briefly halving the window),
//! and sets the window to [`GAIN`] × their product. Bytes in flight are then at most
//! [`GAIN`] times what the path holds: the queue it builds is about (`GAIN` − 1) × the minimum
//! RTT (20 ms on an 80 ms path), and quinn's pacing (1.25 × window / RTT) spreads the window
//! over the round trip. The surplus over the path also probes for bandwidth: when the path
//! gets faster the delivery rate rises and the window follows, by up to [`GAIN`]× per round
//! trip. Random loss does not shrink the window; persistent congestion (every packet of a
//! period lost) starts again from the initial window. A new connection, or one whose path
//! changed, starts in slow start (the window doubles each round trip) until the delivery rate
//! stops growing by a quarter for three round trips.
//!
//! The window never counts less than [`MIN_RTT_FLOOR`] of RTT: on loopback or a LAN, where the
//! minimum RTT is tens of microseconds and the round trip under load is set by scheduling and
//! processing (milliseconds with two busy cores), a window of one measured BDP would starve the
//! sender (`bench/run` on loopback: 1.9 Gbit/s with a 4 ms floor and a 5 ms hold-back of
//! bulk writers, 2.3–2.4 Gbit/s with this floor and 1 ms; the two were changed together). The
//! cost is a queue of at most 1.25 × the floor at a bottleneck on such a short path.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory};

/// Window as a multiple of the bandwidth-delay product once the pipe is full.
pub const GAIN: f64 = 1.25;
/// Round trips over which the bottleneck bandwidth is the highest delivery rate seen.
pub const BW_ROUNDS: u64 = 10;
/// How long a minimum RTT is trusted before it is measured again.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long the window is halved to measure the minimum RTT again (at least one round trip).
pub const PROBE_RTT: Duration = Duration::from_millis(200);
/// The least RTT the window is sized for.
pub const MIN_RTT_FLOOR: Duration = Duration::from_millis(10);
/// Slow start ends after this many round trips without the delivery rate growing by
/// [`STARTUP_GROWTH`].
const STARTUP_ROUNDS: u32 = 3;
const STARTUP_GROWTH: f64 = 1.25;
/// Slow start's window as a multiple of the BDP measured so far: the window doubles per round
/// trip while the delivery rate does, and the queue it leaves when the pipe is full is at most
/// one BDP (BBR's 2.89 can leave nearly two BDPs queued for the round trips that tell the pipe is full).
const STARTUP_GAIN: f64 = 2.0;
/// Delivery history kept for rate samples: entries, and age.
const HISTORY_MAX: usize = 4096;
const HISTORY_AGE: Duration = Duration::from_secs(4);

/// The factory quinn asks for a controller per path.
#[derive(Debug, Clone, Default)]
pub struct BdpConfig;

impl ControllerFactory for BdpConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bdp::new(now, current_mtu))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Slow start: the window grows by what is acknowledged.
    Startup,
    /// The window is [`GAIN`] × BDP.
    Steady,
    /// The window is half the BDP until `until`, to drain the queue and see the path's RTT.
    ProbeRtt { until: Instant },
}

/// The controller's state (public so that its behaviour can be tested without quinn).
#[derive(Debug, Clone)]
pub struct Bdp {
    mtu: u64,
    mode: Mode,
    window: u64,
    initial: u64,
    /// Bytes acknowledged so far.
    delivered: u64,
    /// (time of an ACK batch, `delivered` after it), oldest first.
    history: VecDeque<(Instant, u64)>,
    /// A round trip ends when a packet sent after its start is acknowledged.
    round: u64,
    round_end: u64,
    /// Sliding maximum of the per-round delivery rate, bytes/s: (round, rate), rates falling.
    bw: VecDeque<(u64, f64)>,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    probe_min: Option<Duration>,
    /// Slow start's plateau detection.
    full_bw: f64,
    full_bw_rounds: u32,
    /// This ACK batch: the latest send time acknowledged, and whether the sender had
    /// nothing to send.
    batch_sent: Option<Instant>,
    batch_app_limited: bool,
    /// Nothing was in flight after the last ACK: the next packet sent starts a new interval
    /// (so that a pause is not counted as slow delivery).
    idle: bool,
}

impl Bdp {
    pub fn new(now: Instant, mtu: u16) -> Bdp {
        let mtu = u64::from(mtu);
        let initial = 14_720u64.clamp(2 * mtu, 10 * mtu);
        Bdp {
            mtu,
            mode: Mode::Startup,
            window: initial,
            initial,
            delivered: 0,
            history: VecDeque::new(),
            round: 0,
            round_end: 0,
            bw: VecDeque::new(),
            min_rtt: None,
            min_rtt_at: now,
            probe_min: None,
            full_bw: 0.0,
            full_bw_rounds: 0,
            batch_sent: None,
            batch_app_limited: false,
            idle: true,
        }
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    pub fn bandwidth(&self) -> f64 {
        self.bw.front().map_or(0.0, |&(_, b)| b)
    }

    /// The minimum RTT estimate.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn min_window(&self) -> u64 {
        4 * self.mtu
    }

    fn bdp(&self) -> f64 {
        let rtt = self.min_rtt.unwrap_or(MIN_RTT_FLOOR).max(MIN_RTT_FLOOR);
        self.bandwidth() * rtt.as_secs_f64()
    }

    /// A packet was sent.
    pub fn sent(&mut self, now: Instant) {
        if std::mem::take(&mut self.idle) {
            self.push_history(now);
        }
    }

    fn push_history(&mut self, now: Instant) {
        self.history.push_back((now, self.delivered));
        while self.history.len() > HISTORY_MAX
            || self
                .history
                .front()
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) > HISTORY_AGE)
        {
            self.history.pop_front();
        }
    }

    /// One acknowledged packet, sent at `sent`, of `bytes`.
    pub fn acked(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.delivered += bytes;
        if self.batch_sent.is_none_or(|s| sent > s) {
            self.batch_sent = Some(sent);
        }
        self.batch_app_limited |= app_limited;
        let rtt = now.saturating_duration_since(sent);
        if let Mode::ProbeRtt { .. } = self.mode {
            self.probe_min = Some(self.probe_min.map_or(rtt, |m| m.min(rtt)));
        }
        if self.min_rtt.is_none_or(|m| rtt <= m) {
            self.min_rtt = Some(rtt);
            self.min_rtt_at = now;
        }
        if self.mode == Mode::Startup && !app_limited {
            // Slow start, but never more than STARTUP_GAIN × the BDP measured so far: the
            // window doubles each round trip while the delivery rate does, and the three
            // round trips that tell the pipe is full overfill the queue by at most that.
            let cap = (self.bdp() * STARTUP_GAIN) as u64;
            self.window = (self.window + bytes).min(cap.max(self.initial));
        }
    }

    /// The end of a batch of acknowledgements: a delivery-rate sample and the new window.
    pub fn end_acks(&mut self, now: Instant, in_flight: u64) {
        self.idle = in_flight == 0;
        let Some(sent) = self.batch_sent.take() else {
            return;
        };
        let app_limited = std::mem::take(&mut self.batch_app_limited);
        // The last ACK before the newest acknowledged packet was sent: the delivery rate is
        // what was delivered since then, over the time since then.
        let i = self.history.partition_point(|&(t, _)| t <= sent);
        let before = i.checked_sub(1).and_then(|i| self.history.get(i)).copied();
        self.push_history(now);
        let Some((t0, d0)) = before else {
            // Nothing acknowledged before it was sent: the first round trip.
            self.round_end = self.delivered;
            return;
        };
        if d0 >= self.round_end {
            self.round += 1;
            self.round_end = self.delivered;
            self.on_round(app_limited);
        }
        let elapsed = now.saturating_duration_since(t0).as_secs_f64();
        if elapsed > 0.0 {
            let rate = (self.delivered - d0) as f64 / elapsed;
            // A sample taken while the sender had too little to send only says the path is
            // at least this fast.
            if !app_limited || rate > self.bandwidth() {
                self.sample_bw(rate);
            }
        }
        self.update_mode(now);
        self.set_window();
    }

    fn sample_bw(&mut self, rate: f64) {
        while self.bw.back().is_some_and(|&(_, b)| b <= rate) {
            self.bw.pop_back();
        }
        self.bw.push_back((self.round, rate));
        while self
            .bw
            .front()
            .is_some_and(|&(r, _)| r + BW_ROUNDS <= self.round)
        {
            self.bw.pop_front();
        }
    }

    fn on_round(&mut self, app_limited: bool) {
        if self.mode != Mode::Startup || app_limited {
            return;
        }
        let bw = self.bandwidth();
        if bw >= self.full_bw * STARTUP_GROWTH {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
        } else {
            self.full_bw_rounds += 1;
            if self.full_bw_rounds >= STARTUP_ROUNDS {
                self.mode = Mode::Steady;
            }
        }
    }

    fn update_mode(&mut self, now: Instant) {
        match self.mode {
            Mode::ProbeRtt { until } if now >= until => {
                if let Some(m) = self.probe_min.take() {
                    self.min_rtt = Some(m);
                }
                self.min_rtt_at = now;
                self.mode = Mode::Steady;
            }
            Mode::Steady if now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW => {
                let rtt = self.min_rtt.unwrap_or(MIN_RTT_FLOOR);
                self.probe_min = None;
                self.mode = Mode::ProbeRtt {
                    until: now + PROBE_RTT.max(rtt),
                };
            }
            _ => {}
        }
    }

    fn set_window(&mut self) {
        let bdp = self.bdp();
        match self.mode {
            Mode::Startup => {}
            Mode::Steady => self.window = (bdp * GAIN) as u64,
            Mode::ProbeRtt { .. } => self.window = (bdp / 2.0) as u64,
        }
        self.window = self.window.max(self.min_window());
    }

    /// Packets were lost. Random loss is not congestion; persistent congestion (every packet
    /// of a period lost: the path went away or collapsed) starts again from scratch.
    pub fn lost(&mut self, now: Instant, persistent: bool) {
        if persistent {
            *self = Bdp {
                delivered: self.delivered,
                history: std::mem::take(&mut self.history),
                round: self.round,
                round_end: self.delivered,
                ..Bdp::new(now, self.mtu as u16)
            };
        }
    }
}

impl Controller for Bdp {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _last_packet_number: u64) {
        self.sent(now);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &quinn_proto::RttEstimator,
    ) {
        self.acked(now, sent, bytes, app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.end_acks(now, in_flight);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        self.lost(now, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// A path: a bottleneck of `rate` bytes/s with a tail-drop queue of `queue` and a
    /// propagation RTT of `rtt`, random loss `loss`; every packet is acknowledged on its own.
    struct Path {
        rate: f64,
        rtt: Duration,
        loss: f64,
        queue: Duration,
    }

    struct Outcome {
        /// Bytes/s delivered in the second half.
        goodput: f64,
        /// Queueing delay at the bottleneck in the second half: median, 95th percentile.
        queue_p50: Duration,
        queue_p95: Duration,
        window: u64,
    }

    /// Runs a bulk sender on `path` for `secs` seconds (the rate changes to `rate_after` at
    /// half time, if given).
    fn simulate(path: &Path, secs: u64, rate_after: Option<f64>) -> Outcome {
        const MTU: u64 = 1200;
        let start = Instant::now();
        let mut cc = Bdp::new(start, MTU as u16);
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        // Events: (time in ns, kind, send time in ns); kind 0 = ack, 1 = loss noticed.
        let mut events: BinaryHeap<Reverse<(u64, u8, u64)>> = BinaryHeap::new();
        let ns = |d: Duration| d.as_nanos() as u64;
        let end = secs * 1_000_000_000;
        let half = end / 2;
        let (mut now, mut in_flight, mut busy_until) = (0u64, 0u64, 0u64);
        let (mut delivered_late, mut delays) = (0u64, Vec::new());
        let at = |t: u64| start + Duration::from_nanos(t);
        while now < end {
            // Send what the window allows, paced as quinn paces: 1.25 × window per RTT.
            let mut next_send = u64::MAX;
            if in_flight + MTU <= cc.window() {
                cc.sent(at(now));
                in_flight += MTU;
                let rate = match rate_after {
                    Some(r) if now >= half => r,
                    _ => path.rate,
                };
                let queued = busy_until.saturating_sub(now);
                if queued > ns(path.queue) || random() < path.loss {
                    events.push(Reverse((now + ns(path.rtt) * 9 / 8 + queued, 1, now)));
                } else {
                    busy_until = now.max(busy_until) + (MTU as f64 / rate * 1e9) as u64;
                    if now >= half {
                        delays.push(Duration::from_nanos(queued));
                    }
                    events.push(Reverse((busy_until + ns(path.rtt), 0, now)));
                }
                let srtt = cc.min_rtt().unwrap_or(path.rtt).max(path.rtt);
                next_send = now + ns(srtt) * MTU * 4 / (5 * cc.window());
            }
            let Some(&Reverse((t, _, _))) = events.peek() else {
                now = next_send;
                continue;
            };
            if next_send <= t {
                now = next_send;
                continue;
            }
            let Some(Reverse((t, kind, sent))) = events.pop() else {
                break;
            };
            now = t;
            in_flight -= MTU;
            if kind == 0 {
                cc.acked(at(now), at(sent), MTU, false);
                if now >= half {
                    delivered_late += MTU;
                }
            } else {
                cc.lost(at(now), false);
            }
            cc.end_acks(at(now), in_flight);
        }
        delays.sort();
        assert!(!delays.is_empty(), "nothing crossed the bottleneck");
        Outcome {
            goodput: delivered_late as f64 / ((end - half) as f64 / 1e9),
            queue_p50: delays[delays.len() / 2],
            queue_p95: delays[delays.len() * 95 / 100],
            window: cc.window(),
        }
    }

    const POOR: Path = Path {
        rate: 30e6 / 8.0,
        rtt: Duration::from_millis(80),
        loss: 0.01,
        queue: Duration::from_millis(100),
    };

    #[test]
    fn fills_a_lossy_path_with_a_small_queue() {
        for path in [
            POOR,
            Path {
                rate: 100e6 / 8.0,
                rtt: Duration::from_millis(40),
                loss: 0.001,
                queue: Duration::from_millis(100),
            },
        ] {
            let o = simulate(&path, 30, None);
            let utilisation = o.goodput / (path.rate * (1.0 - path.loss));
            assert!(utilisation >= 0.9, "utilisation {utilisation:.3}");
            // About (GAIN − 1) × RTT of queue, far from the 100 ms the queue could hold.
            assert!(
                o.queue_p50 <= path.rtt * 3 / 10 && o.queue_p95 <= path.rtt * 4 / 10,
                "queue p50 {:?} p95 {:?} at RTT {:?}",
                o.queue_p50,
                o.queue_p95,
                path.rtt
            );
            let bdp = path.rate * path.rtt.as_secs_f64();
            assert!(
                (o.window as f64) < bdp * 1.5,
                "window {} for a BDP of {bdp}",
                o.window
            );
        }
    }

    #[test]
    fn follows_the_path_when_it_gets_faster() {
        let o = simulate(&POOR, 30, Some(POOR.rate * 3.0));
        let utilisation = o.goodput / (POOR.rate * 3.0 * 0.99);
        assert!(utilisation >= 0.85, "utilisation {utilisation:.3}");
    }

    #[test]
    fn persistent_congestion_starts_again_and_a_pause_is_not_slow_delivery() {
        let t0 = Instant::now();
        let mut cc = Bdp::new(t0, 1200);
        let initial = cc.window();
        // 1 MB/s, 50 ms: after slow start the window is about GAIN × 50 KB.
        let mut t = t0;
        let mut sent = Vec::new();
        for i in 0..4000u64 {
            cc.sent(t);
            sent.push(t);
            if i >= 40 {
                let s = sent[(i - 40) as usize];
                cc.acked(t, s, 1200, false);
                cc.end_acks(t, 40 * 1200);
            }
            t += Duration::from_micros(1200);
        }
        assert!(
            cc.bandwidth() > 0.9e6 && cc.bandwidth() < 1.1e6,
            "{}",
            cc.bandwidth()
        );
        let w = cc.window();
        assert!(w > 55_000 && w < 70_000, "window {w}");
        // Idle for ten seconds, then one packet: its delivery over 50 ms is not a rate sample
        // of 1200 bytes per ten seconds.
        cc.end_acks(t, 0);
        t += Duration::from_secs(10);
        cc.sent(t);
        cc.acked(t + Duration::from_millis(50), t, 1200, true);
        cc.end_acks(t + Duration::from_millis(50), 0);
        assert!(cc.bandwidth() > 0.9e6, "{}", cc.bandwidth());
        cc.lost(t, true);
        assert_eq!(cc.window(), initial);
        assert_eq!(cc.bandwidth(), 0.0);
    }
}
