//! Load and fault tests (docs/reliability.md): real gateway, connector(s), `postern connect`
//! clients and the `postern-bench` load generators on loopback.
//!
//! Every scenario runs at two scales. The plain tests are the CI tier (scaled down, a few
//! seconds each). The `full_*` tests are the scenarios at the sizes docs/reliability.md
//! records; they are `#[ignore]`d and run by `bench/reliability` in a release build. Every run
//! prints its figures as one `RELIABILITY {json}` line (also appended to the file named by
//! `POSTERN_RELIABILITY_OUT`, if set) and asserts the outcomes: zero errors, reasons in the
//! audit log, `postern-audit verify` passing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use postern_e2e::{bench, bench_echo, echo_roundtrip, wait_for, Deployment, Proc};
use serde_json::{json, Value};

/// Gateway settings for these scenarios (besides the harness's 2 s handshake timeout): rate
/// limits raised so that the load generators, every one of them on 127.0.0.1, measure the
/// gateway rather than the limiter, and so that garbage on the connector listener reaches its
/// TLS and HTTP/2 code instead of being dropped at accept. The limits themselves are tested in
/// e2e.rs.
const EXTRA_CONFIG: &str = "[rate_limits]
tunnel_per_address = { per_second = 100000, burst = 100000 }
tunnel_per_user = { per_second = 100000, burst = 100000 }
connector_dial = { per_second = 100000, burst = 100000 }
";

fn policy(echo: SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "tcp"

[[rules]]
id = "clinicians"
effect = "allow"
groups = ["clinicians"]
endpoints = ["echo"]
max_session = "1h"
"#,
        port = echo.port()
    )
}

/// A running deployment with a `postern-bench echo` endpoint behind one connector.
struct Setup {
    d: Deployment,
    _echo: Proc,
    echo_addr: SocketAddr,
}

fn setup(extra_connector_settings: Option<&str>) -> Setup {
    let probe = tempfile::tempdir().unwrap();
    let (echo, addr) = bench_echo(probe.path().join("echo.log"));
    let mut d = Deployment::prepare_with(&policy(addr), EXTRA_CONFIG);
    d.start_gateway();
    let allow = [("127.0.0.1/32", addr.port().to_string())];
    d.connector_id = d.enroll_connector("conn", "truro");
    d.write_connector_toml("conn", &allow, None);
    if let Some(settings) = extra_connector_settings {
        // Replace the harness's short reconnect backoff with what the scenario asks for.
        let path = d.path("conn.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("reconnect_max"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, format!("{settings}\n{text}")).unwrap();
    }
    d.start_connector("conn");
    // Keep the echo log with the deployment's files.
    let _ = std::fs::copy(probe.path().join("echo.log"), d.path("echo-start.log"));
    Setup {
        d,
        _echo: echo,
        echo_addr: addr,
    }
}

impl Setup {
    fn allow(&self) -> Vec<(&'static str, String)> {
        vec![("127.0.0.1/32", self.echo_addr.port().to_string())]
    }

    /// `n` clinicians (one user each), each with a running `postern connect echo`.
    fn clients(&self, n: usize, tag: &str) -> Vec<(Proc, SocketAddr)> {
        (0..n)
            .map(|i| {
                let token = self
                    .d
                    .mint(&format!("{tag}{i}@truro.nhs.uk"), "clinicians", "2h");
                self.d.connect("echo", &token).unwrap()
            })
            .collect()
    }

    fn gateway(&self) -> &Proc {
        self.d.gateway.as_ref().unwrap()
    }

    fn bench(&self, name: &str, args: Vec<String>) -> Proc {
        bench(
            name,
            &args,
            self.d
                .path(&format!("bench-{name}-{}.log", postern_e2e::free_port())),
        )
    }
}

fn targets(clients: &[(Proc, SocketAddr)]) -> Vec<String> {
    clients
        .iter()
        .flat_map(|(_, a)| ["--target".to_owned(), a.to_string()])
        .collect()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Prints (and appends to `POSTERN_RELIABILITY_OUT`) one figures line.
fn report(scenario: &str, tier: &str, mut fields: Value) {
    fields["scenario"] = scenario.into();
    fields["tier"] = tier.into();
    fields["load_avg"] = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
        .into();
    let line = format!("RELIABILITY {fields}");
    println!("{line}");
    if let Ok(path) = std::env::var("POSTERN_RELIABILITY_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(path))
            .unwrap();
        writeln!(f, "{fields}").unwrap();
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Session ids with a `session.start` but no `session.end`.
fn unended(d: &Deployment) -> Vec<String> {
    let audit = d.audit();
    let ended: HashSet<&str> = audit
        .iter()
        .filter(|e| e["type"] == "session.end")
        .map(|e| s(&e["session_id"]))
        .collect();
    audit
        .iter()
        .filter(|e| e["type"] == "session.start")
        .map(|e| s(&e["session_id"]))
        .filter(|id| !ended.contains(id))
        .map(str::to_owned)
        .collect()
}

fn count_by(events: &[Value], field: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in events {
        let v = e
            .pointer(field)
            .map(|v| s(v).to_owned())
            .unwrap_or_default();
        *m.entry(v).or_insert(0) += 1;
    }
    m
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 102.4).round() / 10.0
}

// ------------------------------------------------------------------ idle tunnels

struct IdleScale {
    tunnels: usize,
    clients: usize,
    hold: Duration,
    open_rate: f64,
}

/// One round of the idle-tunnel scenario: open, hold, close; what it measured.
struct IdleRound {
    held: Value,
    open_s: f64,
    close_s: f64,
    live: usize,
    rss_peak: u64,
    rss_after: u64,
    fds_held: usize,
    fds_after: usize,
}

fn idle_round(st: &Setup, clients: &[(Proc, SocketAddr)], sc: &IdleScale) -> IdleRound {
    let gw = st.gateway();
    let starts_before = st.d.count("session.start");
    let t0 = Instant::now();
    let mut hold = st.bench(
        "hold",
        [
            args(&[
                "hold",
                "--count",
                &sc.tunnels.to_string(),
                "--parallel",
                "64",
                "--rate",
                &sc.open_rate.to_string(),
            ]),
            targets(clients),
        ]
        .concat(),
    );
    let limit = Duration::from_secs_f64(sc.tunnels as f64 / sc.open_rate.max(1.0) + 120.0);
    let held = hold.wait_json("hold", limit);
    let open_s = t0.elapsed().as_secs_f64();
    let mut rss_peak = gw.rss_kb();
    let fds_held = gw.fd_count();
    let t_hold = Instant::now();
    while t_hold.elapsed() < sc.hold {
        rss_peak = rss_peak.max(gw.rss_kb());
        std::thread::sleep(Duration::from_millis(500));
    }
    let starts = st.d.count("session.start");
    hold.signal("TERM");
    let t_close = Instant::now();
    wait_for("every session.end", Duration::from_secs(120), || {
        (st.d.count("session.end") >= starts).then_some(())
    });
    let close_s = t_close.elapsed().as_secs_f64();
    // Let the runtime return freed buffers before reading memory again.
    std::thread::sleep(Duration::from_secs(3));
    IdleRound {
        held,
        open_s: (open_s * 10.0).round() / 10.0,
        close_s: (close_s * 10.0).round() / 10.0,
        live: starts - starts_before,
        rss_peak,
        rss_after: gw.rss_kb(),
        fds_held,
        fds_after: gw.fd_count(),
    }
}

/// Opens `tunnels` idle tunnels (each proven by an echoed byte) over `clients` clinicians,
/// holds them, closes them, twice, and checks: zero errors, every session has its start and
/// its end (`client_closed`) in the audit log, descriptors back to baseline, and gateway
/// memory not growing from round to round (a leak). Gateway RSS after the first round
/// against the baseline before any load (the issue's "within 10%") is measured and reported;
/// what the allocator keeps after the first peak is discussed in docs/reliability.md.
fn idle_tunnels(tier: &str, sc: IdleScale) {
    let st = setup(None);
    let clients = st.clients(sc.clients, "idle");
    // Warm-up: the first sessions pay for lazy initialisation.
    let mut warm = st.bench(
        "warmup",
        [
            args(&["sessions", "--count", "40", "--concurrency", "4"]),
            targets(&clients),
        ]
        .concat(),
    );
    let w = warm.wait_json("sessions", Duration::from_secs(60));
    assert_eq!(w["errors"], 0, "warm-up failed: {w}");
    std::thread::sleep(Duration::from_secs(2));
    let gw = st.gateway();
    let (rss_base, fds_base) = (gw.rss_kb(), gw.fd_count());
    let rounds: Vec<IdleRound> = (0..2).map(|_| idle_round(&st, &clients, &sc)).collect();
    let ends = st.d.events("session.end");
    let starts = st.d.count("session.start");
    let reasons = count_by(&ends, "/close_reason");
    let missing_end = unended(&st.d);
    let pct = |a: u64, b: u64| ((a as f64 / b as f64 - 1.0) * 1000.0).round() / 10.0;
    let (r1, r2) = (&rounds[0], &rounds[1]);
    report(
        "idle_tunnels",
        tier,
        json!({
            "tunnels": sc.tunnels, "clients": sc.clients, "hold_s": sc.hold.as_secs(),
            "rounds": rounds.iter().map(|r| json!({
                "held": r.held["held"], "errors": r.held["errors"],
                "first_error": r.held["first_error"], "open_s": r.open_s, "close_s": r.close_s,
                "live_sessions_seen": r.live, "rss_peak_mb": mb(r.rss_peak),
                "rss_after_mb": mb(r.rss_after), "fds_held": r.fds_held, "fds_after": r.fds_after,
            })).collect::<Vec<_>>(),
            "rss_baseline_mb": mb(rss_base), "fds_baseline": fds_base,
            "rss_after_round1_vs_baseline_pct": pct(r1.rss_after, rss_base),
            "rss_after_round2_vs_round1_pct": pct(r2.rss_after, r1.rss_after),
            "session_start": starts, "session_end": ends.len(), "missing_end": missing_end.len(),
            "close_reasons": reasons,
        }),
    );
    for r in &rounds {
        assert_eq!(r.held["errors"], 0, "{}", r.held);
        assert_eq!(r.held["held"], sc.tunnels, "{}", r.held);
        assert_eq!(
            r.live, sc.tunnels,
            "gateway saw a different number of sessions"
        );
        assert!(
            r.fds_after <= fds_base + 4,
            "descriptors leaked: {fds_base} before, {} after",
            r.fds_after
        );
    }
    assert!(
        missing_end.is_empty(),
        "sessions without end: {missing_end:?}"
    );
    assert_eq!(reasons.get("client_closed"), Some(&starts), "{reasons:?}");
    assert!(
        (r2.rss_after as f64) <= r1.rss_after as f64 * 1.10,
        "gateway RSS grows round to round: {} MB after round 1, {} MB after round 2",
        mb(r1.rss_after),
        mb(r2.rss_after)
    );
}

#[test]
fn idle_tunnels_are_held_and_closed_cleanly() {
    idle_tunnels(
        "ci",
        IdleScale {
            tunnels: 500,
            clients: 2,
            hold: Duration::from_secs(3),
            open_rate: 500.0,
        },
    );
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_idle_tunnels() {
    idle_tunnels(
        "full",
        IdleScale {
            tunnels: 10_000,
            clients: 8,
            hold: Duration::from_secs(60),
            open_rate: 500.0,
        },
    );
}

// ------------------------------------------------------------------ session rate

struct RateScale {
    rate: f64,
    secs: u64,
    clients: usize,
    concurrency: usize,
}

/// `rate` new sessions per second for `secs` seconds from `clients` clinicians: zero errors,
/// one `session.start` and one `session.end` per session, p50/p99 setup recorded.
fn session_rate(tier: &str, sc: RateScale) {
    let st = setup(None);
    let clients = st.clients(sc.clients, "rate");
    let count = (sc.rate * sc.secs as f64) as usize;
    let gw = st.gateway();
    let starts_before = st.d.count("session.start");
    let cpu_arg = format!("gateway={}", gw.pid());
    let mut load = st.bench(
        "rate",
        [
            args(&[
                "sessions",
                "--count",
                &count.to_string(),
                "--concurrency",
                &sc.concurrency.to_string(),
                "--rate",
                &sc.rate.to_string(),
                "--warmup",
                "20",
                "--cpu",
                &cpu_arg,
            ]),
            targets(&clients),
        ]
        .concat(),
    );
    let r = load.wait_json("sessions", Duration::from_secs(sc.secs * 3 + 60));
    let expected = starts_before + count + 20;
    wait_for("every session.end", Duration::from_secs(60), || {
        (st.d.count("session.end") >= expected).then_some(())
    });
    let starts = st.d.count("session.start");
    let ends = st.d.events("session.end");
    let reasons = count_by(&ends, "/close_reason");
    report(
        "session_rate",
        tier,
        json!({
            "target_per_s": sc.rate, "secs": sc.secs, "clients": sc.clients,
            "concurrency": sc.concurrency, "count": count,
            "ok": r["ok"], "errors": r["errors"], "first_error": r["first_error"],
            "achieved_per_s": r["sessions_per_s"], "elapsed_s": r["elapsed_s"],
            "setup_us": {"p50": r["p50_us"], "p90": r["p90_us"], "p99": r["p99_us"], "max": r["max_us"]},
            "gateway_cpu_us_per_session": r["cpu_us_per_session"]["gateway"],
            "session_start": starts - starts_before, "session_end": ends.len(),
            "close_reasons": reasons, "gateway_rss_mb_after": mb(gw.rss_kb()),
        }),
    );
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["ok"], count, "{r}");
    assert_eq!(starts, expected, "one session.start per session");
    assert!(unended(&st.d).is_empty());
}

#[test]
fn sustained_session_rate_has_no_errors() {
    session_rate(
        "ci",
        RateScale {
            rate: 80.0,
            secs: 5,
            clients: 4,
            concurrency: 8,
        },
    );
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_session_rate() {
    session_rate(
        "full",
        RateScale {
            rate: 1000.0,
            secs: 60,
            clients: 16,
            concurrency: 64,
        },
    );
}

// ------------------------------------------------------------------ kill -9 a connector

/// Opens a tunnel through `addr` and proves it with one echoed byte.
fn live(addr: SocketAddr) -> TcpStream {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).unwrap();
    t
}

/// Two connectors serve site truro; `tunnels` live tunnels are spread over both; connector A
/// is killed with SIGKILL. Its sessions must end with reason `connector_lost`, B's must keep
/// working, and every new session must go to B.
fn kill_connector(tier: &str, tunnels: usize, after: usize) {
    let mut st = setup(None);
    let (conn_b, id_b) = st.d.add_connector("conn-b", &st.allow());
    let id_a = st.d.connector_id.clone();
    let clients = st.clients(1, "kc");
    let addr = clients[0].1;
    let mut open: Vec<(TcpStream, String)> = Vec::new();
    for _ in 0..tunnels {
        let t = live(addr);
        open.push((t, String::new()));
    }
    // Which connector carries each session (session.start names it).
    let starts = st.d.events("session.start");
    assert_eq!(starts.len(), tunnels);
    let on = count_by(&starts, "/connector/id");
    let (n_a, n_b) = (
        on.get(&id_a).copied().unwrap_or(0),
        on.get(&id_b).copied().unwrap_or(0),
    );
    assert!(n_a > 0 && n_b > 0, "sessions not spread: {on:?}");

    let t0 = Instant::now();
    st.d.connector.as_mut().unwrap().kill();
    wait_for("A's sessions to end", Duration::from_secs(30), || {
        (st.d
            .events("session.end")
            .iter()
            .filter(|e| e["connector"]["id"] == id_a.as_str())
            .count()
            >= n_a)
            .then_some(())
    });
    let ended_in = t0.elapsed();
    let ends = st.d.events("session.end");
    let a_reasons = count_by(
        &ends
            .iter()
            .filter(|e| e["connector"]["id"] == id_a.as_str())
            .cloned()
            .collect::<Vec<_>>(),
        "/close_reason",
    );
    let b_ended = ends
        .iter()
        .filter(|e| e["connector"]["id"] == id_b.as_str())
        .count();
    // B's tunnels still echo; A's are closed.
    let mut b_alive = 0;
    let mut a_closed = 0;
    for (t, _) in open.iter_mut() {
        let _ = t.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 1];
        if t.write_all(b"y").is_ok() && t.read_exact(&mut b).is_ok() {
            b_alive += 1;
        } else {
            a_closed += 1;
        }
    }
    // New sessions after the kill: all succeed, all on B.
    let starts_before = st.d.count("session.start");
    let t1 = Instant::now();
    let mut new_ok = 0;
    let mut first_err = None;
    for i in 0..after {
        match echo_roundtrip(addr, format!("n{i}").as_bytes()) {
            Ok(_) => new_ok += 1,
            Err(e) => {
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    let new_s = t1.elapsed().as_secs_f64();
    let new_starts: Vec<Value> = st.d.events("session.start")[starts_before..].to_vec();
    let new_on = count_by(&new_starts, "/connector/id");
    let disconnected =
        st.d.events("connector.disconnected")
            .iter()
            .filter(|e| e["connector"]["id"] == id_a.as_str())
            .count();
    report(
        "kill_connector",
        tier,
        json!({
            "tunnels": tunnels, "on_a": n_a, "on_b": n_b,
            "a_sessions_ended_ms": ended_in.as_millis() as u64,
            "a_close_reasons": a_reasons, "b_sessions_ended": b_ended,
            "b_tunnels_still_echo": b_alive, "a_tunnels_closed": a_closed,
            "new_sessions": after, "new_ok": new_ok, "new_first_error": first_err,
            "new_sessions_s": (new_s * 100.0).round() / 100.0, "new_sessions_on": new_on,
            "a_links_disconnected_events": disconnected,
        }),
    );
    assert_eq!(a_reasons.get("connector_lost"), Some(&n_a), "{a_reasons:?}");
    assert_eq!(b_ended, 0, "sessions on the surviving connector ended");
    assert_eq!((b_alive, a_closed), (n_b, n_a));
    assert_eq!(new_ok, after, "new sessions failed: {first_err:?}");
    assert_eq!(new_on.get(&id_b), Some(&after), "{new_on:?}");
    assert_eq!(disconnected, 2, "both of A's links are audited as gone");
    drop(conn_b);
}

#[test]
fn killed_connector_sessions_end_connector_lost_and_survivor_takes_new_ones() {
    kill_connector("ci", 40, 40);
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_kill_connector() {
    kill_connector("full", 400, 400);
}

// ------------------------------------------------------------------ kill -9 the gateway

struct GwKillScale {
    /// Sessions run to completion (acknowledged) before the kill.
    acked_sessions: usize,
    /// Tunnels open (acknowledged) at the kill.
    held: usize,
    /// Background session load running across the kill (sessions/s).
    background_rate: f64,
    /// Down time before the restart (systemd's RestartSec=2).
    down: Duration,
}

/// Under load, SIGKILL the gateway, restart it on the same state and audit directories after
/// `down`, and check: connectors (default backoff) are back within 2 s of the restart, every
/// session acknowledged before the kill has its `session.start` in the log, the log verifies,
/// and sessions work again through the same `postern connect` processes.
fn kill_gateway(tier: &str, sc: GwKillScale) {
    // The connector's default backoff (reconnect_max 30 s), not the harness's 500 ms.
    let mut st = setup(Some(""));
    let acked = st.clients(1, "acked");
    let holder = st.clients(1, "held");
    let background = st.clients(2, "bg");
    let mut done = st.bench(
        "acked",
        [
            args(&[
                "sessions",
                "--count",
                &sc.acked_sessions.to_string(),
                "--concurrency",
                "4",
                "--rate",
                "80",
            ]),
            targets(&acked),
        ]
        .concat(),
    );
    let r = done.wait_json("sessions", Duration::from_secs(120));
    assert_eq!(r["ok"], sc.acked_sessions, "{r}");
    let mut hold = st.bench(
        "held",
        [
            args(&["hold", "--count", &sc.held.to_string(), "--rate", "80"]),
            targets(&holder),
        ]
        .concat(),
    );
    let h = hold.wait_json("hold", Duration::from_secs(120));
    assert_eq!(h["held"], sc.held, "{h}");
    let bg_count = (sc.background_rate * 12.0) as usize;
    let mut bg = st.bench(
        "background",
        [
            args(&[
                "sessions",
                "--count",
                &bg_count.to_string(),
                "--concurrency",
                "8",
                "--rate",
                &sc.background_rate.to_string(),
            ]),
            targets(&background),
        ]
        .concat(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let links = 2; // connections_per_gateway in the harness
    let gen1_events = st.d.audit().len();
    st.d.gateway.as_mut().unwrap().kill();
    let killed_at = Instant::now();
    // Sessions the killed process started and could not end (the held tunnels, and any in
    // flight): the restarted gateway must end them, reason gateway_lost.
    let cut: HashSet<String> = unended(&st.d).into_iter().collect();
    std::thread::sleep(sc.down);
    st.d.start_gateway();
    let restarted = Instant::now();
    // Reconnect time from the gateway's own clock: gateway.started to the links' connects.
    let audit = st.d.audit();
    let started_idx = audit
        .iter()
        .rposition(|e| e["type"] == "gateway.started")
        .unwrap();
    wait_for(
        "connector links to come back",
        Duration::from_secs(60),
        || {
            (st.d.audit()[started_idx..]
                .iter()
                .filter(|e| e["type"] == "connector.connected")
                .count()
                >= links)
                .then_some(())
        },
    );
    let wall_reconnect = restarted.elapsed();
    let killed_to_links = killed_at.elapsed();
    let audit = st.d.audit();
    let ts = |e: &Value| humantime::parse_rfc3339(s(&e["ts"])).unwrap();
    let t_started = ts(&audit[started_idx]);
    let relinked: Vec<&Value> = audit[started_idx..]
        .iter()
        .filter(|e| e["type"] == "connector.connected")
        .take(links)
        .collect();
    // The links dialled while the gateway was down come back over QUIC, as before the kill:
    // a gateway that was restarting is not taken for a path that blocks UDP.
    let transports: Vec<&str> = relinked.iter().map(|e| s(&e["detail"])).collect();
    let reconnects: Vec<u64> = relinked
        .iter()
        .map(|e| {
            ts(e)
                .duration_since(t_started)
                .unwrap_or_default()
                .as_millis() as u64
        })
        .collect();
    let bgr = bg.wait_json("sessions", Duration::from_secs(120));
    hold.signal("TERM");
    // Every acknowledged session (completed echo, or tunnel proven open) is in the log.
    let starts_for = |prefix: &str| {
        audit
            .iter()
            .filter(|e| e["type"] == "session.start" && s(&e["user"]).starts_with(prefix))
            .count()
    };
    let acked_starts = starts_for("acked");
    let held_starts = starts_for("held");
    let recovered = audit
        .iter()
        .filter(|e| e["type"] == "audit.recovered")
        .count();
    let lost: HashSet<String> = audit
        .iter()
        .filter(|e| e["type"] == "session.end" && e["close_reason"] == "gateway_lost")
        .map(|e| s(&e["session_id"]).to_owned())
        .collect();
    // Sessions work again through the same client processes.
    let after = echo_roundtrip(acked[0].1, b"after restart").is_ok();
    // Once the load is over, every session in the log has its end.
    let without_end = wait_for("every session to end", Duration::from_secs(30), || {
        let open = unended(&st.d);
        open.is_empty()
            .then_some(0)
            .or_else(|| (killed_at.elapsed() > Duration::from_secs(60)).then_some(open.len()))
    });
    let (verified, verify_out) = st.d.verify_audit();
    report(
        "kill_gateway",
        tier,
        json!({
            "acked_sessions": sc.acked_sessions, "held_tunnels": sc.held,
            "background_rate": sc.background_rate, "down_ms": sc.down.as_millis() as u64,
            "events_before_kill_seen": gen1_events,
            "acked_session_starts_in_log": acked_starts, "held_session_starts_in_log": held_starts,
            "reconnect_ms_after_restart": reconnects,
            "transports_after_restart": transports,
            "wall_ms_restart_to_links": wall_reconnect.as_millis() as u64,
            "killed_to_links_ms": killed_to_links.as_millis() as u64,
            "background": {"ok": bgr["ok"], "errors": bgr["errors"], "count": bg_count},
            "audit_recovered_events": recovered, "sessions_cut_by_the_kill": cut.len(),
            "ended_gateway_lost_at_restart": lost.len(), "sessions_without_end": without_end,
            "session_after_restart_ok": after, "audit_verify_ok": verified,
        }),
    );
    assert!(verified, "postern-audit verify failed:\n{verify_out}");
    assert!(
        cut.len() >= sc.held,
        "the held tunnels were live at the kill"
    );
    assert_eq!(
        lost, cut,
        "every session cut by the kill ends gateway_lost at the restart"
    );
    assert_eq!(without_end, 0, "sessions without session.end");
    assert_eq!(
        acked_starts, sc.acked_sessions,
        "acknowledged session.start missing"
    );
    assert_eq!(held_starts, sc.held, "acknowledged session.start missing");
    assert!(after, "no session through the restarted gateway");
    assert!(
        reconnects.iter().all(|ms| *ms < 2000),
        "connector links took {reconnects:?} ms after the restart"
    );
    assert!(
        transports.iter().all(|t| *t == "link over quic"),
        "{transports:?}"
    );
}

#[test]
fn gateway_killed_under_load_loses_no_acknowledged_event() {
    kill_gateway(
        "ci",
        GwKillScale {
            acked_sessions: 100,
            held: 50,
            background_rate: 20.0,
            down: Duration::from_secs(2),
        },
    );
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_kill_gateway() {
    kill_gateway(
        "full",
        GwKillScale {
            acked_sessions: 2000,
            held: 1000,
            background_rate: 200.0,
            down: Duration::from_secs(2),
        },
    );
}

// ------------------------------------------------------------------ slowloris

/// Slowloris on the client listener (`count` connections, one byte per second: never-ending
/// ClientHellos, and completed TLS followed by never-ending HTTP/2 and HTTP/1.1 requests)
/// while a clinician starts `postern connect` and opens a tunnel: that must take under 1 s.
fn slowloris(tier: &str, count: usize, secs: u64, clinicians: usize) {
    let st = setup(None);
    let target = format!("127.0.0.1:{}", st.d.client_port);
    let ca = st.d.ca_file().display().to_string();
    // The same clinician steps before the attack: what starting `postern connect` and one echo
    // cost on this machine right now (a debug build on a busy CI machine can take most of a
    // second by itself).
    let baseline_ms = {
        let token = st.d.mint("baseline@truro.nhs.uk", "clinicians", "1h");
        let t0 = Instant::now();
        let (client, addr) = st.d.connect("echo", &token).unwrap();
        assert!(echo_roundtrip(addr, b"clinician").is_ok());
        drop(client);
        t0.elapsed().as_millis() as u64
    };
    let (hello, h2, h1) = (count * 3 / 5, count / 5, count - count * 3 / 5 - count / 5);
    let secs_s = secs.to_string();
    let mut procs: Vec<Proc> = [("tls-hello", hello), ("h2", h2), ("h1", h1)]
        .iter()
        .map(|(mode, n)| {
            st.bench(
                &format!("slowloris-{mode}"),
                args(&[
                    "slowloris",
                    "--target",
                    &target,
                    "--count",
                    &n.to_string(),
                    "--mode",
                    mode,
                    "--ca-file",
                    &ca,
                    "--duration-s",
                    &secs_s,
                ]),
            )
        })
        .collect();
    // Let every slow connection get going.
    std::thread::sleep(Duration::from_secs(2));
    let fds_during = st.gateway().fd_count();
    let mut times = Vec::new();
    for i in 0..clinicians {
        let token =
            st.d.mint(&format!("slow{i}@truro.nhs.uk"), "clinicians", "1h");
        let t0 = Instant::now();
        let (client, addr) = st.d.connect("echo", &token).unwrap();
        let ok = echo_roundtrip(addr, b"clinician").is_ok();
        times.push(t0.elapsed().as_millis() as u64);
        assert!(ok, "clinician's tunnel failed during slowloris");
        drop(client);
        std::thread::sleep(Duration::from_secs(secs / (clinicians as u64 + 1)));
    }
    let results: Vec<Value> = procs
        .iter_mut()
        .map(|p| p.wait_json("slowloris", Duration::from_secs(secs + 60)))
        .collect();
    let log = st.gateway().log_text();
    report(
        "slowloris",
        tier,
        json!({
            "connections": count, "secs": secs, "gateway_fds_during": fds_during,
            "clinician_connect_ms": times, "baseline_connect_ms": baseline_ms,
            "attackers": results,
            "gateway_panicked": log.contains("panicked"),
        }),
    );
    // Full tier (release): the issue's bound, every connect under 1 s. CI tier (debug build,
    // the other reliability tests loading the same 2 cores): the typical (median) connect may
    // cost at most 1 s more than the same steps before the attack, and none more than 3 s more.
    if tier == "full" {
        assert!(
            times.iter().all(|t| *t < 1000),
            "clinician connect took {times:?} ms under attack"
        );
    } else {
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!(
            median < 1000 + baseline_ms && sorted[sorted.len() - 1] < 3000 + baseline_ms,
            "clinician connect took {times:?} ms under attack ({baseline_ms} ms before it)"
        );
    }
    for r in &results {
        assert_eq!(
            r["failed"], 0,
            "slow connections could not even connect: {r}"
        );
        // The gateway cuts every slow connection at its handshake timeout (2 s here), and the
        // attacker keeps reopening them.
        assert!(r["closed_by_server"].as_u64().unwrap() >= r["count"].as_u64().unwrap());
        assert!(r["closed_after_ms_max"].as_u64().unwrap() < 3500, "{r}");
    }
    assert!(!log.contains("panicked"));
}

#[test]
fn slowloris_does_not_delay_a_clinician() {
    slowloris("ci", 100, 12, 3);
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_slowloris() {
    slowloris("full", 500, 60, 5);
}

// ------------------------------------------------------------------ garbage

/// Garbage and truncated TLS / HTTP/2 / HTTP/1.1 on both listeners for `secs` seconds while a
/// clinician keeps opening sessions: no panic, no error for the clinician, the connector stays
/// connected, and no leak (descriptors back to baseline, RSS within 10% of a warmed-up
/// baseline).
fn garbage(tier: &str, secs: u64) {
    let mut st = setup(None);
    let clients = st.clients(1, "garbage");
    let mut warm = st.bench(
        "warmup",
        [
            args(&["sessions", "--count", "40", "--concurrency", "4"]),
            targets(&clients),
        ]
        .concat(),
    );
    assert_eq!(
        warm.wait_json("sessions", Duration::from_secs(60))["errors"],
        0
    );
    // A first short garbage pass warms the error paths too, so the baseline is steady state.
    let ca = st.d.ca_file().display().to_string();
    let client_target = format!("127.0.0.1:{}", st.d.client_port);
    let conn_target = format!("127.0.0.1:{}", st.d.connector_port);
    let attack = |name: &str, target: &str, secs: u64, tls: bool, seed: &str| {
        let mut a = args(&[
            "garbage",
            "--target",
            target,
            "--duration-s",
            &secs.to_string(),
            "--parallel",
            "4",
            "--seed",
            seed,
        ]);
        if tls {
            a.extend(args(&["--ca-file", &ca]));
        }
        st.bench(name, a)
    };
    let mut pre = attack("garbage-warm", &client_target, 2, true, "7");
    pre.wait_json("garbage", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let gw = st.gateway();
    let (rss_base, fds_base) = (gw.rss_kb(), gw.fd_count());
    let disconnected_before = st.d.count("connector.disconnected");

    let mut on_clients = attack("garbage-clients", &client_target, secs, true, "1");
    let mut on_conns = attack("garbage-connectors", &conn_target, secs, false, "2");
    // A clinician keeps working meanwhile (paced well under the tunnel rate limit).
    let n = (secs * 10) as usize;
    let mut clinician = st.bench(
        "clinician",
        [
            args(&["sessions", "--count", &n.to_string(), "--rate", "10"]),
            targets(&clients),
        ]
        .concat(),
    );
    let mut rss_peak = gw.rss_kb();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        rss_peak = rss_peak.max(gw.rss_kb());
        std::thread::sleep(Duration::from_millis(500));
    }
    let gc = on_clients.wait_json("garbage", Duration::from_secs(60));
    let gk = on_conns.wait_json("garbage", Duration::from_secs(60));
    let cl = clinician.wait_json("sessions", Duration::from_secs(60));
    // Connections in their handshake timeout (2 s here) close; then count again.
    std::thread::sleep(Duration::from_secs(4));
    let running = st.d.gateway.as_mut().unwrap().is_running();
    let gw = st.gateway();
    let (rss_after, fds_after) = (gw.rss_kb(), gw.fd_count());
    let log = gw.log_text();
    let disconnected = st.d.count("connector.disconnected") - disconnected_before;
    report(
        "garbage",
        tier,
        json!({
            "secs": secs, "client_listener": gc, "connector_listener": gk,
            "clinician": {"ok": cl["ok"], "errors": cl["errors"], "p99_us": cl["p99_us"]},
            "rss_mb": {"baseline": mb(rss_base), "peak": mb(rss_peak), "after": mb(rss_after)},
            "fds": {"baseline": fds_base, "after": fds_after},
            "gateway_running": running, "panicked": log.contains("panicked"),
            "connector_disconnects": disconnected,
        }),
    );
    assert!(running && !log.contains("panicked"), "{log}");
    assert_eq!(cl["errors"], 0, "clinician sessions failed: {cl}");
    assert!(gc["delivered"].as_u64().unwrap() > 0 && gk["delivered"].as_u64().unwrap() > 0);
    assert_eq!(disconnected, 0, "the real connector was disturbed");
    assert!(
        fds_after <= fds_base + 4,
        "descriptors: {fds_base} -> {fds_after}"
    );
    assert!(
        (rss_after as f64) <= rss_base as f64 * 1.10,
        "RSS {} MB -> {} MB",
        mb(rss_base),
        mb(rss_after)
    );
}

#[test]
fn garbage_on_both_listeners_no_panic_no_leak() {
    garbage("ci", 10);
}

#[test]
#[ignore = "full scale: run by bench/reliability (release build)"]
fn full_garbage() {
    garbage("full", 60);
}

// ------------------------------------------------------------------ drain moves connectors

/// Copies `from` into `to` recursively (a replica's state: CAs, keys, the store).
fn copy_dir(from: &std::path::Path, to: &std::path::Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == skip {
            continue;
        }
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target, skip);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Two gateway replicas (B shares A's CAs, keys and store) behind one connector address (a
/// round-robin TCP balancer). SIGTERM to A: A tells the connector it is draining, the
/// connector dials again at once and lands on B — before A's grace period ends — while the
/// tunnel still open through A keeps working until A ends it with reason `shutdown`.
#[test]
fn draining_gateway_sends_its_connector_links_to_another_replica() {
    let probe = tempfile::tempdir().unwrap();
    let (_echo, echo) = bench_echo(probe.path().join("echo.log"));
    let mut d = Deployment::prepare_with(&policy(echo), EXTRA_CONFIG);
    d.start_gateway();
    d.connector_id = d.enroll_connector("conn", "truro");
    // Replica B: same state (after the enrolment), own audit log and ports.
    copy_dir(&d.path("gw"), &d.path("gw-b"), "audit");
    let (b_clients, b_conns) = (postern_e2e::free_port(), postern_e2e::free_port());
    let b_toml = d.path("gateway-b.toml");
    std::fs::write(
        &b_toml,
        std::fs::read_to_string(d.gateway_toml())
            .unwrap()
            .replace("gw-test", "gw-b")
            .replace("state_dir = \"gw\"", "state_dir = \"gw-b\"")
            .replace(&d.client_port.to_string(), &b_clients.to_string())
            .replace(&d.connector_port.to_string(), &b_conns.to_string()),
    )
    .unwrap();
    let mut gw_b = Proc::spawn(
        "gateway-b",
        std::process::Command::new(postern_e2e::bin("postern-gateway"))
            .args(["run", "--config"])
            .arg(&b_toml),
        d.path("gateway-b.log"),
    );
    let b_audit = d.path("gw-b/audit/audit.jsonl");
    let b_events = |kind: &str| -> Vec<Value> {
        std::fs::read_to_string(&b_audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == kind)
            .collect()
    };
    wait_for("replica B to start", Duration::from_secs(20), || {
        assert!(gw_b.is_running(), "{}", gw_b.log_text());
        (!b_events("gateway.started").is_empty()).then_some(())
    });
    // The connector's one gateway address is the balancer in front of A and B.
    let mut lb = bench(
        "balancer",
        &args(&[
            "delay",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("127.0.0.1:{}", d.connector_port),
            "--upstream",
            &format!("127.0.0.1:{b_conns}"),
            "--delay-ms",
            "0",
        ]),
        d.path("balancer.log"),
    );
    let lb_addr: SocketAddr = wait_for("the balancer", Duration::from_secs(10), || {
        assert!(lb.is_running(), "{}", lb.log_text());
        lb.log_text()
            .lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .and_then(|a| a.trim().parse().ok())
    });
    let allow = [("127.0.0.1/32", echo.port().to_string())];
    d.write_connector_toml("conn", &allow, Some(&lb_addr.to_string()));
    let connector = d.spawn_connector("conn");
    wait_for("a link on each replica", Duration::from_secs(20), || {
        (d.count("connector.connected") >= 1 && !b_events("connector.connected").is_empty())
            .then_some(())
    });
    let token = d.mint("drain@truro.nhs.uk", "clinicians", "1h");
    let (_client_a, via_a) = d.connect("echo", &token).unwrap();
    let mut open = live(via_a);

    let b_links_before = b_events("connector.connected").len();
    let t0 = Instant::now();
    d.gateway.as_ref().unwrap().signal("TERM");
    wait_for(
        "the connector to move to B",
        Duration::from_secs(10),
        || (b_events("connector.connected").len() > b_links_before).then_some(()),
    );
    let moved_ms = t0.elapsed().as_millis() as u64;
    // A is still in its grace period: the tunnel through it works.
    open.write_all(b"z").unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).unwrap();
    let a_running = d.gateway.as_mut().unwrap().is_running();
    let code = wait_for("A to exit", Duration::from_secs(15), || {
        d.gateway.as_mut().unwrap().child.try_wait().ok().flatten()
    });
    let end = d.wait_event("session.end", |e| e["user"] == "drain@truro.nhs.uk");
    // A flushed its log and closed it with a signed checkpoint.
    let (closed_ok, verify_out) = d.verify_audit_with(&["--closed"]);
    // Sessions through B work with both of the connector's links there.
    let (_client_b, via_b) = d
        .connect_to(&format!("https://127.0.0.1:{b_clients}"), "echo", &token)
        .unwrap();
    let through_b = echo_roundtrip(via_b, b"via B").is_ok();
    let log = connector.log_text();
    report(
        "drain_moves_connector",
        "ci",
        json!({
            "moved_to_b_ms_after_sigterm": moved_ms, "a_still_running_then": a_running,
            "a_exit": code.code(), "a_session_end_reason": end["close_reason"],
            "session_via_b_ok": through_b, "a_audit_verify_closed": closed_ok,
        }),
    );
    assert!(
        a_running,
        "the connector only moved once A had gone ({moved_ms} ms)"
    );
    assert!(log.contains("gateway is draining"), "{log}");
    assert_eq!(code.code(), Some(0));
    assert_eq!(end["close_reason"], "shutdown", "{end}");
    assert!(closed_ok, "{verify_out}");
    assert!(through_b);
    gw_b.terminate(Duration::from_secs(10));
}
