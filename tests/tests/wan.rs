//! The link emulator (`postern-bench wan`, issue #14) measured from outside: real TCP and UDP
//! sockets in its "home" and "cloud" namespaces, asserting the round-trip time, the rate each
//! way, a stall and recovery across `down`/`up`, a broken connection after `addr`, UDP that
//! vanishes under `block-udp`, the loss rate of `poor`, and clean-up after quit, SIGTERM and a
//! crash. Bands are wide enough for a loaded 2-core CI machine. Needs root (CI runs as root).
//!
//! The tests take turns (one lock): they measure time and rate, and a parallel one would skew
//! another's numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postern_e2e::wan::{namespaces, Wan};
use postern_e2e::{bin, wait_for};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP echo server in the cloud namespace; it remembers each client's address and keeps a
/// handle on each connection.
struct CloudEcho {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>,
}

fn cloud_echo(wan: &Wan) -> CloudEcho {
    let listener = wan.in_cloud(|| TcpListener::bind((wan.cloud_addr, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    let peers: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>> = Arc::default();
    let p = peers.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_nodelay(true);
            p.lock()
                .unwrap()
                .push((s.peer_addr().unwrap(), s.try_clone().unwrap()));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    CloudEcho { addr, peers }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median TCP connect (SYN / SYN-ACK) time and request/response round trip, home → cloud.
fn round_trips(wan: &Wan, to: SocketAddr, n: usize) -> (Duration, Duration) {
    let (connects, mut conn) = wan.in_home(|| {
        let mut t = Vec::new();
        let mut last = None;
        for _ in 0..n {
            let start = Instant::now();
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            t.push(start.elapsed());
            last = Some(s);
        }
        (t, last.unwrap())
    });
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rtts = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        conn.write_all(&[i as u8]).unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
        rtts.push(start.elapsed());
    }
    (p50(connects), p50(rtts))
}

/// Bytes received so far on a stream read by a background thread, and whether it failed.
struct Progress {
    bytes: Arc<AtomicU64>,
}

impl Progress {
    fn now(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

fn drain(mut s: TcpStream) -> Progress {
    let bytes = Arc::new(AtomicU64::new(0));
    let b = bytes.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                return;
            }
            b.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    Progress { bytes }
}

/// Writes as fast as the connection takes it until `stop` is set; the write error, if any.
fn flood(mut s: TcpStream, stop: Arc<AtomicU64>) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let buf = vec![0x5au8; 64 * 1024];
        while stop.load(Ordering::Relaxed) == 0 {
            if let Err(e) = s.write_all(&buf) {
                return Some(e.to_string());
            }
        }
        None
    })
}

/// A TCP connection whose sending end is in `from` ("home" or "cloud") and receiving end in
/// the other namespace.
fn bulk_pair(wan: &Wan, from: &str) -> (TcpStream, TcpStream) {
    let (recv_addr, listen_in_home) = match from {
        "cloud" => (wan.home_addr, true),
        _ => (wan.cloud_addr, false),
    };
    let bind = || TcpListener::bind((recv_addr, 0)).unwrap();
    let listener = if listen_in_home {
        wan.in_home(bind)
    } else {
        wan.in_cloud(bind)
    };
    let to = listener.local_addr().unwrap();
    let connect = || TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    let sender = if listen_in_home {
        wan.in_cloud(connect)
    } else {
        wan.in_home(connect)
    };
    let (receiver, _) = listener.accept().unwrap();
    (sender, receiver)
}

/// Mbit/s received over a bulk transfer, measured after the first second (slow start).
fn rate_mbit(wan: &Wan, from: &str) -> f64 {
    let (sender, receiver) = bulk_pair(wan, from);
    let stop = Arc::new(AtomicU64::new(0));
    let writer = flood(sender, stop.clone());
    let got = drain(receiver);
    std::thread::sleep(Duration::from_secs(1));
    let (b0, t0) = (got.now(), Instant::now());
    std::thread::sleep(Duration::from_millis(2500));
    let (b1, t1) = (got.now(), Instant::now());
    stop.store(1, Ordering::Relaxed);
    drop(writer);
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e6
}

#[test]
fn home_profile_has_its_round_trip_time_and_rates() {
    let _turn = one_at_a_time();
    // Loss off: the shaper is what is measured here. With the profile's 0.1 % random loss a
    // loss-based congestion control (CUBIC) stays far below the link rate; BBR, the kernel's
    // default on these machines, does not (docs/benchmarks.md), but the test must not depend
    // on which one the machine uses.
    let mut wan = Wan::start_with(&["--profile", "home", "--loss", "0"]);
    let echo = cloud_echo(&wan);
    let (connect, rtt) = round_trips(&wan, echo.addr, 15);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    assert!(
        (38.0..80.0).contains(&ms(connect)),
        "TCP connect p50 {connect:?}, expected ≈ 40 ms"
    );
    assert!(
        (38.0..80.0).contains(&ms(rtt)),
        "request/response p50 {rtt:?}, expected ≈ 40 ms"
    );

    let down = rate_mbit(&wan, "cloud");
    assert!(
        (60.0..=110.0).contains(&down),
        "cloud→home {down:.1} Mbit/s, expected ≈ 100"
    );
    let up = rate_mbit(&wan, "home");
    assert!(
        (14.0..=22.0).contains(&up),
        "home→cloud {up:.1} Mbit/s, expected ≈ 20"
    );
    eprintln!(
        "home: connect p50 {connect:?}, rtt p50 {rtt:?}, down {down:.1} Mbit/s, up {up:.1} Mbit/s"
    );

    let stats = wan.stats();
    assert!(
        stats["down"]["bytes"].as_u64().unwrap() > 30_000_000,
        "{stats}"
    );
    assert_eq!(stats["down"]["dropped"]["loss"], 0, "{stats}");
    assert_eq!(wan.quit(), Some(0));
}

#[test]
fn down_stalls_a_transfer_and_up_lets_it_continue() {
    let _turn = one_at_a_time();
    let mut wan = Wan::start_with(&["--profile", "home", "--loss", "0"]);
    let (sender, receiver) = bulk_pair(&wan, "cloud");
    let stop = Arc::new(AtomicU64::new(0));
    let writer = flood(sender, stop.clone());
    let got = drain(receiver);
    wait_for("the transfer to start", Duration::from_secs(5), || {
        (got.now() > 1_000_000).then_some(())
    });

    wan.down();
    // Packets already written by the emulator may still be taken in; then nothing.
    std::thread::sleep(Duration::from_millis(100));
    let stalled_at = got.now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        got.now(),
        stalled_at,
        "bytes arrived while the link was down"
    );
    let stats = wan.stats();
    assert!(
        stats["down"]["dropped"]["down"].as_u64().unwrap() > 0,
        "no packet dropped while down: {stats}"
    );

    wan.up();
    // TCP retransmits on its backed-off timer, then goes on over the same connection.
    wait_for("the transfer to resume", Duration::from_secs(8), || {
        (got.now() > stalled_at + 1_000_000).then_some(())
    });
    stop.store(1, Ordering::Relaxed);
    assert_eq!(
        writer.join().unwrap(),
        None,
        "the connection did not survive"
    );
}

#[test]
fn blocked_udp_vanishes_while_tcp_works() {
    let _turn = one_at_a_time();
    let mut wan = Wan::start_with(&["--profile", "home", "--loss", "0"]);
    let echo = cloud_echo(&wan);
    let cloud = wan.in_cloud(|| UdpSocket::bind((wan.cloud_addr, 0)).unwrap());
    let home = wan.in_home(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    let home_port = home.local_addr().unwrap().port();
    let to_cloud = cloud.local_addr().unwrap();
    let to_home = SocketAddr::from((wan.home_addr, home_port));
    for s in [&cloud, &home] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    // Datagrams sent each way and received at the other end.
    let exchange = |n: usize| -> (usize, usize) {
        for i in 0..n {
            home.send_to(&[i as u8; 64], to_cloud).unwrap();
            cloud.send_to(&[i as u8; 64], to_home).unwrap();
        }
        let count = |s: &UdpSocket| {
            let mut buf = [0u8; 128];
            std::iter::from_fn(|| s.recv_from(&mut buf).ok()).count()
        };
        (count(&cloud), count(&home))
    };

    assert_eq!(exchange(20), (20, 20), "UDP does not get through");
    wan.block_udp();
    assert_eq!(exchange(20), (0, 0), "UDP got through while blocked");
    // TCP still works.
    let mut tcp =
        wan.in_home(|| TcpStream::connect_timeout(&echo.addr, Duration::from_secs(5)).unwrap());
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    tcp.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    let stats = wan.stats();
    assert_eq!(stats["up"]["dropped"]["udp_blocked"], 20, "{stats}");
    assert_eq!(stats["down"]["dropped"]["udp_blocked"], 20, "{stats}");

    wan.allow_udp();
    assert_eq!(exchange(20), (20, 20), "UDP does not come back");
}

#[test]
fn a_new_address_breaks_old_connections_and_new_ones_use_it() {
    let _turn = one_at_a_time();
    let mut wan = Wan::start_with(&["--profile", "home", "--loss", "0"]);
    let echo = cloud_echo(&wan);
    let old_addr = wan.home_addr;
    let mut old =
        wan.in_home(|| TcpStream::connect_timeout(&echo.addr, Duration::from_secs(5)).unwrap());
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    old.write_all(b"before").unwrap();
    let mut b = [0u8; 6];
    old.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"before");
    assert_eq!(echo.peers.lock().unwrap()[0].0.ip(), old_addr);

    let new_addr = wan.change_address();
    assert_ne!(new_addr, old_addr);
    assert_eq!(wan.ready["home_addr"], old_addr.to_string());

    // The old connection: nothing goes through any more, either way.
    old.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let _ = old.write_all(b"after");
    let mut cloud_end = echo.peers.lock().unwrap()[0].1.try_clone().unwrap();
    cloud_end.write_all(b"from the cloud").unwrap();
    let mut buf = [0u8; 64];
    match old.read(&mut buf) {
        Ok(n) if n > 0 => panic!(
            "the old connection still works: got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        _ => {}
    }
    let stats = wan.stats();
    assert!(
        stats["down"]["dropped"]["stale_addr"].as_u64().unwrap() > 0,
        "nothing sent to the old address was dropped: {stats}"
    );

    // A new connection works and comes from the new address.
    let mut new =
        wan.in_home(|| TcpStream::connect_timeout(&echo.addr, Duration::from_secs(5)).unwrap());
    assert_eq!(new.local_addr().unwrap().ip(), new_addr);
    new.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    new.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    new.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    let peers = echo.peers.lock().unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[1].0.ip(), new_addr, "the cloud saw the wrong source");
}

#[test]
fn poor_profile_loses_about_one_percent_and_has_its_round_trip_time() {
    let _turn = one_at_a_time();
    let mut wan = Wan::start("poor");
    let echo = cloud_echo(&wan);
    let (connect, _) = round_trips(&wan, echo.addr, 15);
    assert!(
        (Duration::from_millis(72)..Duration::from_millis(150)).contains(&connect),
        "TCP connect p50 {connect:?}, expected ≈ 80 ms"
    );

    let cloud = wan.in_cloud(|| UdpSocket::bind((wan.cloud_addr, 0)).unwrap());
    let home = wan.in_home(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    cloud
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let to = cloud.local_addr().unwrap();
    let before = wan.stats();
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while cloud.recv_from(&mut buf).is_ok() {
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    // 4000 datagrams of 100 bytes in about 1.6 s: about 2.6 Mbit/s on the wire, under the
    // profile's 5 Mbit/s up, so the queue never fills and only random loss drops any.
    let sent = 4000u64;
    for i in 0..sent {
        home.send_to(&[7u8; 100], to).unwrap();
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    counter.join().unwrap();
    let after = wan.stats();
    let up = |s: &serde_json::Value, k: &str| s["up"]["dropped"][k].as_u64().unwrap();
    let lost = up(&after, "loss") - up(&before, "loss");
    let queued_out = up(&after, "queue") - up(&before, "queue");
    let got = received.load(Ordering::Relaxed);
    assert_eq!(queued_out, 0, "the queue overflowed: {after}");
    assert_eq!(
        got + lost,
        sent,
        "received {got}, lost {lost} of {sent}: {after}"
    );
    let pct = lost as f64 * 100.0 / sent as f64;
    assert!((0.4..2.0).contains(&pct), "loss {pct:.2} %, expected ≈ 1 %");
    eprintln!("poor: connect p50 {connect:?}, loss {pct:.2} % ({lost} of {sent})");
}

#[test]
fn namespaces_go_away_on_quit_sigterm_and_cleanup_after_a_crash() {
    let _turn = one_at_a_time();
    // quit
    let wan = Wan::start("none");
    let names = [wan.home_ns.clone(), wan.cloud_ns.clone()];
    assert!(names.iter().all(|n| namespaces().contains(n)));
    assert_eq!(wan.quit(), Some(0));
    assert!(
        !names.iter().any(|n| namespaces().contains(n)),
        "left after quit"
    );

    // SIGTERM
    let wan = Wan::start("none");
    let names = [wan.home_ns.clone(), wan.cloud_ns.clone()];
    std::process::Command::new("kill")
        .args(["-TERM", &wan.pid().to_string()])
        .status()
        .unwrap();
    wait_for(
        "namespaces deleted after SIGTERM",
        Duration::from_secs(5),
        || (!names.iter().any(|n| namespaces().contains(n))).then_some(()),
    );
    // An unknown command is an error answer, not the end of the process (it is gone here, so
    // use a new one).
    drop(wan);
    let mut wan = Wan::start("none");
    let v = wan.command("teleport");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("unknown command"),
        "{v}"
    );
    assert_eq!(wan.stats()["ok"], true);

    // A crash leaves the namespaces; --cleanup removes them (and only dead runs' ones).
    let names = [wan.home_ns.clone(), wan.cloud_ns.clone()];
    let live = Wan::start("none");
    wan.kill();
    assert!(
        names.iter().all(|n| namespaces().contains(n)),
        "nothing left to clean up"
    );
    let out = std::process::Command::new(bin("postern-bench"))
        .args(["wan", "--cleanup"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed: Vec<String> = serde_json::from_value(v["removed"].clone()).unwrap();
    for n in &names {
        assert!(removed.contains(n), "{n} not removed: {v}");
    }
    assert!(
        !names.iter().any(|n| namespaces().contains(n)),
        "left after --cleanup"
    );
    assert!(
        namespaces().contains(&live.home_ns),
        "--cleanup removed a live run's namespace"
    );
    drop(live);

    // Bad flags: an error message and a non-zero exit, no namespaces.
    let out = std::process::Command::new(bin("postern-bench"))
        .args(["wan", "--loss", "150"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside 0..100"), "{err}");
}
