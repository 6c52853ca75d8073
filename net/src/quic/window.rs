//! Receive windows sized from the path: each QUIC connection's window (how much the peer may
//! send ahead of what the application has read, over all its streams) follows the measured
//! bandwidth-delay product instead of a fixed constant.
//!
//! Every [`TICK`] the tuner measures the receive rate and takes the connection's RTT estimate;
//! the window becomes [`HEADROOM`] × rate × RTT, within [`MIN_WINDOW`] and [`MAX_WINDOW`]. A
//! window-limited transfer measures rate ≈ window / RTT, so it grows by [`HEADROOM`]× per
//! tick until the path, not the window, is the limit; an idle connection's window falls back
//! by half every [`SHRINK_EVERY`] (credit already granted is not taken back). What the peer
//! may make this side buffer for a reader that does not keep up is therefore at most the
//! window: a few BDPs, never more than [`MAX_WINDOW`] per connection.
//!
//! The same tick sizes the connection's send window — what this side buffers for the peer —
//! from the congestion window ([`send_window`]), so that a bulk stream cannot take all the
//! room a small stream beside it needs.

use std::time::Duration;

use tokio::time::Instant;

/// How often the window is recomputed.
pub const TICK: Duration = Duration::from_millis(250);
/// The window a connection starts with, and never goes below.
pub const MIN_WINDOW: u64 = 2 * 1024 * 1024;
/// The largest window: the most a connection's peer can make this side buffer.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;
/// Window as a multiple of the measured bandwidth-delay product.
pub const HEADROOM: u64 = 4;
/// How often an oversized window is halved.
pub const SHRINK_EVERY: Duration = Duration::from_secs(2);

/// One connection's window, recomputed from what it received.
#[derive(Debug, Clone)]
pub struct Tuner {
    window: u64,
    bytes: u64,
    at: Instant,
    shrunk_at: Instant,
}

impl Tuner {
    pub fn new(now: Instant) -> Tuner {
        Tuner {
            window: MIN_WINDOW,
            bytes: 0,
            at: now,
            shrunk_at: now,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Takes the bytes received so far and the RTT estimate; returns the new window if it
    /// changed.
    pub fn update(&mut self, received: u64, rtt: Duration, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed.is_zero() {
            return None;
        }
        let rate = received.saturating_sub(self.bytes) as f64 / elapsed.as_secs_f64();
        self.bytes = received;
        self.at = now;
        let bdp = rate * rtt.as_secs_f64();
        let want = ((bdp * HEADROOM as f64) as u64).clamp(MIN_WINDOW, MAX_WINDOW);
        let old = self.window;
        if want > self.window {
            self.window = want;
        } else if want <= self.window / 2
            && now.saturating_duration_since(self.shrunk_at) >= SHRINK_EVERY
        {
            self.window = (self.window / 2).max(want);
            self.shrunk_at = now;
        }
        (self.window != old).then_some(self.window)
    }
}

/// The least send window.
pub const MIN_SEND_WINDOW: u64 = 1024 * 1024;

/// The send window (what this side buffers for a connection: bytes in flight and bytes written
/// but not yet sent, over all its streams) for a congestion window of `cwnd`: twice it, within
/// [`MIN_SEND_WINDOW`] and [`MAX_WINDOW`].
///
/// This, not the peer's flow-control credit, is what limits a bulk stream's writer, and it
/// frees space with every acknowledgement (each millisecond or so under load), where the
/// peer's credit comes in steps of an eighth of its window. A small write on another stream —
/// an RDP screen update beside a study download — therefore waits a millisecond for room in
/// the buffer rather than tens of milliseconds for credit, and then goes out in the next
/// packet (quinn sends the streams of a connection in turn). The peer's receive window
/// ([`HEADROOM`] × BDP, at least [`MIN_WINDOW`]) stays larger than this (2 × 1.25 × BDP, at
/// least [`MIN_SEND_WINDOW`]), so credit does not become the limit.
pub fn send_window(cwnd: u64) -> u64 {
    cwnd.saturating_mul(2).clamp(MIN_SEND_WINDOW, MAX_WINDOW)
}

/// Keeps `conn`'s receive and send windows sized to its path until it closes.
pub fn tune(conn: quinn::Connection) {
    spawn_tuner(conn, true);
}

/// Keeps only `conn`'s send window sized to its path (a connector link, whose receive windows
/// are fixed: see `quic::link_transport`).
pub fn tune_send(conn: quinn::Connection) {
    spawn_tuner(conn, false);
}

fn spawn_tuner(conn: quinn::Connection, receive: bool) {
    tokio::spawn(async move {
        let mut tuner = Tuner::new(Instant::now());
        let mut sending = 0;
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let stats = conn.stats();
            if let Some(w) = tuner.update(stats.udp_rx.bytes, conn.rtt(), Instant::now()) {
                if let (true, Ok(w)) = (receive, quinn::VarInt::from_u64(w)) {
                    conn.set_receive_window(w);
                }
            }
            let send = send_window(stats.path.cwnd);
            if send != sending {
                sending = send;
                conn.set_send_window(send);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_window_limited_transfer_grows_the_window_until_the_path_is_the_limit() {
        let t0 = Instant::now();
        let mut t = Tuner::new(t0);
        let rtt = Duration::from_millis(80);
        // A 1 Gbit/s path: the window allows window / RTT per second, up to the path's rate.
        let path = 125_000_000.0;
        let mut received = 0u64;
        let mut at = t0;
        for _ in 0..12 {
            let rate = (t.window() as f64 / rtt.as_secs_f64()).min(path);
            received += (rate * TICK.as_secs_f64()) as u64;
            at += TICK;
            t.update(received, rtt, at);
        }
        let bdp = (path * rtt.as_secs_f64()) as u64;
        assert!(
            t.window() >= 2 * bdp && t.window() <= HEADROOM * bdp + MIB,
            "window {} for a BDP of {bdp}",
            t.window()
        );
    }

    #[test]
    fn the_send_window_is_twice_the_congestion_window_within_bounds() {
        assert_eq!(send_window(0), MIN_SEND_WINDOW);
        assert_eq!(send_window(3 * MIB), 6 * MIB);
        assert_eq!(send_window(u64::MAX), MAX_WINDOW);
        // Below the peer's smallest receive window, so its credit is not the limit.
        assert!(send_window(MIN_WINDOW / 4) <= MIN_WINDOW);
    }

    #[test]
    fn the_window_stays_within_its_bounds_and_shrinks_when_idle() {
        let t0 = Instant::now();
        let mut t = Tuner::new(t0);
        // Far more than any window: capped.
        let got = t.update(10_000 * MIB, Duration::from_millis(200), t0 + TICK);
        assert_eq!(got, Some(MAX_WINDOW));
        // Idle: halved every SHRINK_EVERY, down to the floor, never below.
        let mut at = t0 + TICK;
        let mut seen = vec![t.window()];
        for _ in 0..200 {
            at += TICK;
            if let Some(w) = t.update(10_000 * MIB, Duration::from_millis(200), at) {
                seen.push(w);
            }
        }
        assert_eq!(t.window(), MIN_WINDOW, "{seen:?}");
        assert!(
            seen.windows(2)
                .all(|w| w[1] == w[0] / 2 || w[1] == MIN_WINDOW),
            "{seen:?}"
        );
        // A loopback path (tiny RTT) keeps the floor.
        assert_eq!(
            t.update(10_500 * MIB, Duration::from_micros(50), at + TICK),
            None
        );
        assert_eq!(t.window(), MIN_WINDOW);
    }
}
