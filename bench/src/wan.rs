//! `postern-bench wan`: a link emulator for tests and benchmarks (issue #14).
//!
//! Two fresh network namespaces, "home" (a laptop) and "cloud" (the gateway's side), each with
//! a TUN device; this process reads every packet one side sends into its TUN device and writes
//! it into the other's, after [`shaper`] has applied the direction's rate, queue, delay, jitter
//! and loss. The kernel here has no `netem`, hence a userspace forwarder.
//!
//! Threads: per direction a reader (blocking read on the source TUN, filters, shaper, then
//! into a FIFO of packets with their delivery time) and a writer (sleeps until the head of the
//! FIFO is due, writes it into the far TUN). The async main task reads control lines on stdin
//! (`addr`, `down`, `up`, `block-udp`, `allow-udp`, `stats`, `quit`) and answers each with a
//! JSON line; on quit, end of stdin, SIGTERM or SIGINT it deletes the namespaces.

mod netns;
mod shaper;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use netns::{Netns, DEV};
use shaper::{Cause, DirParams, Rng, Shaper, Verdict};

pub const HOME_NET: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 0);
pub const CLOUD_NET: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 0);
const HOME_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const CLOUD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The most bytes one direction may hold in flight (delay line), whatever the queue bound: a
/// limit on the emulator's memory, not part of the model (an unshaped 10 Gbit/s for 50 ms).
const MAX_IN_FLIGHT: u64 = 64 << 20;

/// The command-line options (`postern-bench wan --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// home: 40 ms RTT, 100/20 Mbit/s, 0.1 % loss; poor: 80 ms, 30/5 Mbit/s, 1 % loss, 5 ms
    /// jitter; none: no shaping at all (the forwarder's own ceiling).
    #[arg(long, default_value = "home", value_parser = ["home", "poor", "none"])]
    pub profile: String,
    /// Round-trip time added by the link (half in each direction).
    #[arg(long)]
    pub rtt_ms: Option<f64>,
    /// Cloud→home rate (0: unlimited).
    #[arg(long)]
    pub down_mbit: Option<f64>,
    /// Home→cloud rate (0: unlimited).
    #[arg(long)]
    pub up_mbit: Option<f64>,
    /// Random loss in percent, each direction (`1` or `1%` is one packet in a hundred).
    #[arg(long, value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// Each packet's one-way delay varies uniformly within ± this (order is kept).
    #[arg(long)]
    pub jitter_ms: Option<f64>,
    /// Bottleneck queue per direction, in milliseconds at that direction's rate (tail drop
    /// beyond it).
    #[arg(long, default_value_t = 100.0)]
    pub queue_ms: f64,
    /// Seed for loss and jitter (default: from the clock and pid).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Delete the `pw-<pid>-*` namespaces left by runs whose process is gone, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage (e.g. 0.1 or 1%)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("loss {v} % is outside 0..100"));
    }
    Ok(v)
}

/// The link: both directions' parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Cloud → home.
    pub down: DirParams,
    /// Home → cloud.
    pub up: DirParams,
}

fn ms(v: f64, what: &str) -> anyhow::Result<Duration> {
    if !v.is_finite() || !(0.0..=60_000.0).contains(&v) {
        bail!("{what} {v} ms is outside 0..60000");
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

fn rate(mbit: f64, what: &str) -> anyhow::Result<u64> {
    if !mbit.is_finite() || !(0.0..=100_000.0).contains(&mbit) {
        bail!("{what} {mbit} Mbit/s is outside 0..100000 (0: unlimited)");
    }
    Ok((mbit * 1e6) as u64)
}

impl Opts {
    /// The profile with the explicit flags laid over it.
    pub fn link(&self) -> anyhow::Result<Link> {
        // (rtt ms, down Mbit/s, up Mbit/s, loss %, jitter ms)
        let (rtt, down, up, loss, jitter) = match self.profile.as_str() {
            "home" => (40.0, 100.0, 20.0, 0.1, 0.0),
            "poor" => (80.0, 30.0, 5.0, 1.0, 5.0),
            "none" => (0.0, 0.0, 0.0, 0.0, 0.0),
            p => bail!("unknown profile '{p}' (home, poor, none)"),
        };
        let rtt = ms(self.rtt_ms.unwrap_or(rtt), "--rtt-ms")?;
        let jitter = ms(self.jitter_ms.unwrap_or(jitter), "--jitter-ms")?;
        let queue = ms(self.queue_ms, "--queue-ms")?;
        let loss = self.loss.unwrap_or(loss) / 100.0;
        let dir = |mbit: f64, what: &str| -> anyhow::Result<DirParams> {
            let rate_bps = rate(mbit, what)?;
            Ok(DirParams {
                rate_bps,
                delay: rtt / 2,
                jitter,
                loss,
                queue_bytes: (rate_bps as f64 / 8.0 * queue.as_secs_f64()) as u64,
            })
        };
        Ok(Link {
            down: dir(self.down_mbit.unwrap_or(down), "--down-mbit")?,
            up: dir(self.up_mbit.unwrap_or(up), "--up-mbit")?,
        })
    }
}

/// Counters of one direction.
#[derive(Default)]
struct DirStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: [AtomicU64; Cause::ALL.len()],
    dropped_bytes: [AtomicU64; Cause::ALL.len()],
}

impl DirStats {
    fn drop(&self, cause: Cause, len: usize) {
        self.dropped[cause.index()].fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes[cause.index()].fetch_add(len as u64, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let mut dropped = serde_json::Map::new();
        let mut dropped_bytes = serde_json::Map::new();
        for c in Cause::ALL {
            dropped.insert(
                c.name().into(),
                self.dropped[c.index()].load(Ordering::Relaxed).into(),
            );
            dropped_bytes.insert(
                c.name().into(),
                self.dropped_bytes[c.index()].load(Ordering::Relaxed).into(),
            );
        }
        json!({
            "packets": self.packets.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "dropped": dropped,
            "dropped_bytes": dropped_bytes,
        })
    }
}

/// What the control commands change and the forwarding threads read.
struct State {
    down: AtomicBool,
    block_udp: AtomicBool,
    /// The home side's current address (cloud→home packets to any other home address, and
    /// home→cloud packets from one, are dropped: that address is gone from the network).
    home_addr: AtomicU32,
    up_stats: DirStats,
    down_stats: DirStats,
    start: Instant,
}

/// Which way a packet goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}

/// The checks that do not depend on time; `None`: pass.
fn filter(pkt: &[u8], way: Way, st: &State) -> Option<Cause> {
    if st.down.load(Ordering::Relaxed) {
        return Some(Cause::Down);
    }
    // IPv4 only (IPv6 is off in both namespaces).
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    if st.block_udp.load(Ordering::Relaxed) && pkt[9] == 17 {
        return Some(Cause::Udp);
    }
    let home_end = match way {
        Way::Up => [pkt[12], pkt[13], pkt[14], pkt[15]],
        Way::Down => [pkt[16], pkt[17], pkt[18], pkt[19]],
    };
    let home_end = Ipv4Addr::from(home_end);
    let current = Ipv4Addr::from(st.home_addr.load(Ordering::Relaxed));
    if home_end.octets()[..3] == HOME_NET.octets()[..3] && home_end != current {
        return Some(Cause::StaleAddr);
    }
    None
}

/// Packets on their way, in delivery order.
struct Line {
    q: Mutex<VecDeque<(Duration, Vec<u8>)>>,
    cv: Condvar,
    bytes: AtomicU64,
}

fn reader(
    src: Arc<tun_rs::SyncDevice>,
    line: Arc<Line>,
    mut shaper: Shaper,
    way: Way,
    st: Arc<State>,
) {
    let stats = match way {
        Way::Up => &st.up_stats,
        Way::Down => &st.down_stats,
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match src.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("wan: reading the TUN device: {e}");
                return;
            }
        };
        let pkt = &buf[..n];
        if let Some(cause) = filter(pkt, way, &st) {
            stats.drop(cause, n);
            continue;
        }
        if line.bytes.load(Ordering::Relaxed) + n as u64 > MAX_IN_FLIGHT {
            stats.drop(Cause::Queue, n);
            continue;
        }
        match shaper.admit(st.start.elapsed(), n) {
            Verdict::Drop(cause) => stats.drop(cause, n),
            Verdict::Deliver(at) => {
                line.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let mut q = line.q.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back((at, pkt.to_vec()));
                drop(q);
                line.cv.notify_one();
            }
        }
    }
}

fn writer(dst: Arc<tun_rs::SyncDevice>, line: Arc<Line>, way: Way, st: Arc<State>) {
    let stats = match way {
        Way::Up => &st.up_stats,
        Way::Down => &st.down_stats,
    };
    let mut due = Vec::new();
    loop {
        {
            let mut q = line.q.lock().unwrap_or_else(|p| p.into_inner());
            while q.is_empty() {
                q = line.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            // Delivery times never decrease, so everything due is at the front.
            let now = st.start.elapsed();
            let head = q.front().map(|(at, _)| *at).unwrap_or(now);
            if head > now {
                drop(q);
                // Nothing later in the queue is due earlier: sleep without the lock (a new
                // packet goes to the back).
                std::thread::sleep(head - now);
                continue;
            }
            // A little slack batches packets due within the next 50 µs.
            let horizon = now + Duration::from_micros(50);
            while q.front().is_some_and(|(at, _)| *at <= horizon) {
                if let Some(p) = q.pop_front() {
                    due.push(p);
                }
            }
        }
        for (_, pkt) in due.drain(..) {
            line.bytes.fetch_sub(pkt.len() as u64, Ordering::Relaxed);
            // Packets in flight when the link went down are lost too.
            if st.down.load(Ordering::Relaxed) {
                stats.drop(Cause::Down, pkt.len());
                continue;
            }
            match dst.send(&pkt) {
                Ok(_) => {
                    stats.packets.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                }
                Err(_) => stats.drop(Cause::Error, pkt.len()),
            }
        }
    }
}

fn spawn_direction(
    src: Arc<tun_rs::SyncDevice>,
    dst: Arc<tun_rs::SyncDevice>,
    params: DirParams,
    seed: u64,
    way: Way,
    st: Arc<State>,
) -> anyhow::Result<()> {
    let name = match way {
        Way::Up => "up",
        Way::Down => "down",
    };
    let line = Arc::new(Line {
        q: Mutex::new(VecDeque::new()),
        cv: Condvar::new(),
        bytes: AtomicU64::new(0),
    });
    let shaper = Shaper::new(params, Rng::new(seed));
    let (l, s) = (line.clone(), st.clone());
    std::thread::Builder::new()
        .name(format!("wan-{name}-rx"))
        .spawn(move || reader(src, l, shaper, way, s))?;
    std::thread::Builder::new()
        .name(format!("wan-{name}-tx"))
        .spawn(move || writer(dst, line, way, st))?;
    Ok(())
}

/// The emulator: its namespaces (deleted on drop) and shared state.
struct Wan {
    home: Netns,
    cloud: Netns,
    state: Arc<State>,
}

impl Wan {
    fn start(link: Link, seed: u64) -> anyhow::Result<Wan> {
        let pid = std::process::id();
        let home = Netns::create(&format!("pw-{pid}-home"))?;
        let cloud = Netns::create(&format!("pw-{pid}-cloud"))?;
        let home_dev = Arc::new(home.tun(HOME_ADDR, CLOUD_NET)?);
        let cloud_dev = Arc::new(cloud.tun(CLOUD_ADDR, HOME_NET)?);
        let state = Arc::new(State {
            down: AtomicBool::new(false),
            block_udp: AtomicBool::new(false),
            home_addr: AtomicU32::new(HOME_ADDR.into()),
            up_stats: DirStats::default(),
            down_stats: DirStats::default(),
            start: Instant::now(),
        });
        spawn_direction(
            home_dev.clone(),
            cloud_dev.clone(),
            link.up,
            seed,
            Way::Up,
            state.clone(),
        )?;
        spawn_direction(
            cloud_dev,
            home_dev,
            link.down,
            seed ^ 0x5555_5555_5555_5555,
            Way::Down,
            state.clone(),
        )?;
        Ok(Wan { home, cloud, state })
    }

    fn home_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.state.home_addr.load(Ordering::Relaxed))
    }

    /// The home side moves to the next address in 10.77.1.0/24 (2..=254, round): add it, make
    /// it the route's source, delete the old one.
    fn change_address(&self) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
        let old = self.home_addr();
        let next = match old.octets()[3] {
            254 => 2,
            n => n + 1,
        };
        let o = HOME_NET.octets();
        let new = Ipv4Addr::new(o[0], o[1], o[2], next);
        // From now on the network delivers nothing for the old address.
        self.state.home_addr.store(new.into(), Ordering::Relaxed);
        self.home
            .ip(&["addr", "add", &format!("{new}/24"), "dev", DEV])?;
        self.home.ip(&[
            "route",
            "replace",
            &format!("{CLOUD_NET}/24"),
            "dev",
            DEV,
            "src",
            &new.to_string(),
        ])?;
        self.home
            .ip(&["addr", "del", &format!("{old}/24"), "dev", DEV])?;
        Ok((old, new))
    }

    fn stats(&self) -> serde_json::Value {
        json!({
            "up": self.state.up_stats.json(),
            "down": self.state.down_stats.json(),
            "link_down": self.state.down.load(Ordering::Relaxed),
            "udp_blocked": self.state.block_udp.load(Ordering::Relaxed),
            "home_addr": self.home_addr().to_string(),
            "uptime_ms": self.state.start.elapsed().as_millis() as u64,
        })
    }

    /// One control line; the JSON answer, and whether to stop.
    fn command(&self, line: &str) -> (serde_json::Value, bool) {
        let cmd = line.trim();
        let ok = |extra: serde_json::Value| {
            let mut v = json!({"ok": true, "cmd": cmd});
            if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        match cmd {
            "addr" => match self.change_address() {
                Ok((old, new)) => (
                    ok(json!({"home_addr": new.to_string(), "old_addr": old.to_string()})),
                    false,
                ),
                Err(e) => (
                    json!({"ok": false, "cmd": cmd, "error": format!("{e:#}")}),
                    false,
                ),
            },
            "down" | "up" => {
                self.state.down.store(cmd == "down", Ordering::Relaxed);
                (ok(json!({})), false)
            }
            "block-udp" | "allow-udp" => {
                self.state
                    .block_udp
                    .store(cmd == "block-udp", Ordering::Relaxed);
                (ok(json!({})), false)
            }
            "stats" => (ok(self.stats()), false),
            "quit" => (ok(json!({})), true),
            "" => (json!({"ok": false, "error": "empty command"}), false),
            other => (
                json!({
                    "ok": false,
                    "cmd": other,
                    "error": format!(
                        "unknown command '{other}' (addr, down, up, block-udp, allow-udp, stats, quit)"
                    ),
                }),
                false,
            ),
        }
    }
}

fn default_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

fn link_json(link: &Link) -> serde_json::Value {
    let dir = |d: &DirParams| {
        json!({
            "rate_bps": d.rate_bps,
            "delay_ms": d.delay.as_secs_f64() * 1000.0,
            "jitter_ms": d.jitter.as_secs_f64() * 1000.0,
            "loss": d.loss,
            "queue_bytes": d.queue_bytes,
        })
    };
    json!({"down": dir(&link.down), "up": dir(&link.up)})
}

/// Runs the emulator until `quit`, end of stdin, SIGTERM or SIGINT.
pub async fn run(opts: Opts) -> anyhow::Result<()> {
    if opts.cleanup {
        let removed = netns::remove_stale()?;
        println!(
            "{}",
            json!({"ok": true, "cmd": "cleanup", "removed": removed})
        );
        return Ok(());
    }
    let link = opts.link()?;
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing (the TUN driver is needed)");
    }
    // Leftovers of runs that died without cleaning up (SIGKILL) would only take up names.
    match netns::remove_stale() {
        Ok(r) if !r.is_empty() => eprintln!("wan: removed stale namespaces {r:?}"),
        Ok(_) => {}
        Err(e) => eprintln!("wan: could not check for stale namespaces: {e:#}"),
    }
    // The handlers are in place before "ready" is printed: a SIGTERM sent right after it
    // (a test under load did) must delete the namespaces, not kill the process as by default.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let seed = opts.seed.unwrap_or_else(default_seed);
    let wan = tokio::task::spawn_blocking(move || Wan::start(link, seed))
        .await?
        .context("setting up the emulated link (run as root)")?;
    println!(
        "{}",
        json!({
            "ready": true,
            "home_ns": wan.home.name,
            "cloud_ns": wan.cloud.name,
            "home_addr": wan.home_addr().to_string(),
            "cloud_addr": CLOUD_ADDR.to_string(),
            "home_dev": DEV,
            "cloud_dev": DEV,
            "seed": seed,
            "link": link_json(&link),
        })
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let why = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let (answer, stop) = tokio::task::block_in_place(|| wan.command(&line));
                    println!("{answer}");
                    if stop {
                        break "quit";
                    }
                }
                Ok(None) => break "end of stdin",
                Err(e) => {
                    eprintln!("wan: reading stdin: {e}");
                    break "stdin error";
                }
            },
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    eprintln!(
        "wan: stopping ({why}); deleting {} and {}",
        wan.home.name, wan.cloud.name
    );
    drop(wan);
    // The forwarding threads block in reads on the TUN devices: exit rather than join them.
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Opts,
    }

    fn link(args: &[&str]) -> anyhow::Result<Link> {
        let mut all = vec!["wan"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.opts.link()
    }

    #[test]
    fn profiles_and_overrides() {
        let home = link(&[]).unwrap();
        assert_eq!(home.down.rate_bps, 100_000_000);
        assert_eq!(home.up.rate_bps, 20_000_000);
        assert_eq!(home.down.delay, Duration::from_millis(20));
        assert!((home.up.loss - 0.001).abs() < 1e-12);
        // 100 ms at 100 Mbit/s.
        assert_eq!(home.down.queue_bytes, 1_250_000);
        let poor = link(&["--profile", "poor"]).unwrap();
        assert_eq!(poor.up.rate_bps, 5_000_000);
        assert_eq!(poor.down.jitter, Duration::from_millis(5));
        assert_eq!(poor.down.delay, Duration::from_millis(40));
        let custom = link(&["--profile", "poor", "--rtt-ms", "10", "--loss", "2%"]).unwrap();
        assert_eq!(custom.up.delay, Duration::from_millis(5));
        assert!((custom.down.loss - 0.02).abs() < 1e-12);
        assert_eq!(custom.down.rate_bps, 30_000_000);
    }

    #[test]
    fn bad_flags_are_errors() {
        for args in [
            &["--profile", "lte"][..],
            &["--loss", "150"],
            &["--loss", "a lot"],
            &["--rtt-ms", "-1"],
            &["--down-mbit", "NaN"],
        ] {
            assert!(link(args).is_err(), "{args:?} accepted");
        }
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn filters_by_state() {
        let st = State {
            down: AtomicBool::new(false),
            block_udp: AtomicBool::new(false),
            home_addr: AtomicU32::new(HOME_ADDR.into()),
            up_stats: DirStats::default(),
            down_stats: DirStats::default(),
            start: Instant::now(),
        };
        let up_udp = ipv4([10, 77, 1, 2], [10, 77, 2, 2], 17);
        let down_tcp = ipv4([10, 77, 2, 2], [10, 77, 1, 2], 6);
        assert_eq!(filter(&up_udp, Way::Up, &st), None);
        assert_eq!(filter(&down_tcp, Way::Down, &st), None);
        st.block_udp.store(true, Ordering::Relaxed);
        assert_eq!(filter(&up_udp, Way::Up, &st), Some(Cause::Udp));
        assert_eq!(filter(&down_tcp, Way::Down, &st), None);
        st.home_addr
            .store(Ipv4Addr::new(10, 77, 1, 3).into(), Ordering::Relaxed);
        assert_eq!(filter(&down_tcp, Way::Down, &st), Some(Cause::StaleAddr));
        let down_new = ipv4([10, 77, 2, 2], [10, 77, 1, 3], 6);
        assert_eq!(filter(&down_new, Way::Down, &st), None);
        st.down.store(true, Ordering::Relaxed);
        assert_eq!(filter(&down_new, Way::Down, &st), Some(Cause::Down));
    }
}
