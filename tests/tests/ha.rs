//! Three gateway replicas on PostgreSQL (issue #13), real binaries end to end: connectors of two
//! sites that learn the replicas over their links, a browser sign-in whose steps land on three
//! different replicas, revocations made on one replica ending tunnels on the others, one
//! enrolment token raced at two replicas, a replica killed under load, and the database stopped
//! for 30 s under load. See tests/src/ha.rs for how the replicas are set up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_e2e::browser::{AuthenticatorOptions, Chromium};
use postern_e2e::ha::{Cluster, Options, Switch};
use postern_e2e::oidc::{OidcProvider, OidcUser};
use postern_e2e::{bin, free_port, open_live, run, wait_for, Echo, Proc};
use serde_json::Value;

/// Endpoints `echo` (site truro) and `echo-penzance` (site penzance), both open to
/// radiologists.
fn policy(truro: SocketAddr, penzance: SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "tcp"

[[endpoints]]
name = "echo-penzance"
site = "penzance"
host = "127.0.0.1"
port = {}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo", "echo-penzance"]
max_session = "1h"
"#,
        truro.port(),
        penzance.port()
    )
}

/// Two echo services, a cluster of three replicas, and a connector per site (enrolled through
/// replica `enrol_via`, configured with the connector balancer only), linked to every replica.
struct World {
    c: Cluster,
    /// The penzance echo service's port (for the connectors enrolled later).
    penzance_port: u16,
    _echoes: [Echo; 2],
    /// Connector ids: truro, penzance.
    ids: [String; 2],
}

fn world(extra: &str, store: &str) -> World {
    let (truro, penzance) = (Echo::start(), Echo::start());
    let mut c = Cluster::start(Options {
        replicas: 3,
        policy: &policy(truro.addr, penzance.addr),
        extra,
        store,
    });
    let t = c.enroll("conn-truro", "truro", 0);
    let p = c.enroll("conn-penzance", "penzance", 0);
    // Enrolled through A, a connector is told every replica's address (A's first).
    let told: Value = serde_json::from_str(
        &std::fs::read_to_string(c.path("conn-truro/enrollment.json")).unwrap(),
    )
    .unwrap();
    let told: Vec<&str> = told["connector_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut want: Vec<String> = c.replicas.iter().map(|r| r.connector_addr()).collect();
    assert_eq!(told[0], want[0], "{told:?}");
    want.sort();
    let mut told_sorted: Vec<String> = told.iter().map(|a| a.to_string()).collect();
    told_sorted.sort();
    assert_eq!(told_sorted, want);
    c.start_connector(
        "conn-truro",
        &[("127.0.0.1/32", truro.addr.port().to_string())],
    );
    c.start_connector(
        "conn-penzance",
        &[("127.0.0.1/32", penzance.addr.port().to_string())],
    );
    // Within 5 s each connector has links on every replica, though it was only told the
    // balancer's address.
    let t0 = Instant::now();
    for id in [&t, &p] {
        c.wait_links_everywhere(id, Duration::from_secs(5));
    }
    eprintln!(
        "connectors linked to all three replicas in {:?}",
        t0.elapsed()
    );
    World {
        c,
        penzance_port: penzance.addr.port(),
        _echoes: [truro, penzance],
        ids: [t, p],
    }
}

/// One session: a byte echoed through a tunnel opened on `addr` (a client's listener).
fn one_session(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"x").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| e.to_string())?;
    (&b == b"x")
        .then_some(())
        .ok_or_else(|| "wrong echo".into())
}

/// A byte echoed on a held tunnel.
fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"y").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"y"
}

/// Waits (up to `limit`) until the peer closes `s`; how long that took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 16];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(t.elapsed()),
            Err(_) => return None,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Enrol on replica A; each connector's links come up on A, B and C; sessions to both sites
/// through every replica. A clinician signs in through the browser with each step on a
/// different replica (OIDC start on A, callback on B, device ceremony on C); the device then
/// revoked on A ends its tunnel on B. A replica that leaves is dropped by the connectors and
/// linked again within 5 s when it returns.
#[test]
fn connectors_link_to_every_replica_and_a_browser_sign_in_crosses_three() {
    postern_e2e::browser::require_installed();
    let work = tempfile::tempdir().unwrap();
    let sw_port = free_port();
    let origin = format!("https://localhost:{sw_port}");
    let callback = format!("{origin}/auth/callback");
    let idp = OidcProvider::start(
        &work.path().join("idp"),
        "postern-gateway",
        "s3cret-for-ha-tests",
        std::slice::from_ref(&callback),
        &[OidcUser::new("alice", "alice-pw", &["radiologists"], true)],
    );
    let secret = work.path().join("oidc-secret");
    std::fs::write(&secret, "s3cret-for-ha-tests").unwrap();
    let extra = format!(
        "[oidc]\nissuer = \"{}\"\nclient_id = \"postern-gateway\"\nclient_secret_file = \"{}\"\nredirect_url = \"{callback}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nuser_claim = \"email\"\ninsecure_http_issuer = true\nsession_ttl = \"8h\"\n[devices]\napproval = \"auto\"\n",
        idp.issuer,
        secret.display()
    );
    let w = world(&extra, "");
    let c = &w.c;
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], c.replicas[i].client_port));

    // Sessions to both sites through each replica.
    let token = c.mint("ann@hospital.test", "radiologists");
    for r in &c.replicas {
        for endpoint in ["echo", "echo-penzance"] {
            let (mut p, a) = c.connect(&r.url(), endpoint, &token).unwrap();
            one_session(a).unwrap_or_else(|e| panic!("{endpoint} through {}: {e}", r.name));
            // Stopped as a clinician stops it (Ctrl-C, SIGTERM): its tunnels end at once. A
            // killed client looks like a lost link, and its resumable tunnels would wait for it.
            p.terminate(Duration::from_secs(5));
        }
        r.wait_event("session.end", |e| e["endpoint"]["name"] == "echo-penzance");
    }

    // The browser sign-in, each step steered to another replica.
    let sw = Switch::start(sw_port, addr(0));
    let b = Chromium::start(Some(&c.ca_file()));
    b.goto(&format!("{origin}/healthz"));
    b.add_authenticator(&AuthenticatorOptions::default());
    let cfg = work.path().join("alice");
    let mut login = Proc::spawn(
        "login",
        Command::new(bin("postern"))
            .args([
                "login",
                &origin,
                "--no-browser",
                "--timeout",
                "60",
                "--ca-file",
            ])
            .arg(c.ca_file())
            .env("POSTERN_CONFIG_DIR", &cfg),
        work.path().join("login.log"),
    );
    let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
        login
            .log_text()
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("https://"))
            .map(str::to_owned)
    });
    // 1. The sign-in starts on A.
    sw.point_to(addr(0));
    b.goto(&url);
    b.wait_url(&idp.issuer, Duration::from_secs(15));
    // 2. The IdP sends the browser back to the callback: B.
    sw.point_to(addr(1));
    b.type_into("input[name=login]", "alice");
    b.type_into("input[name=password]", "alice-pw");
    b.click("button[type=submit]");
    let state = || {
        b.exec(
            "return (document.body && document.body.dataset && document.body.dataset.state) || ''",
            vec![],
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    };
    b.wait("the device page", Duration::from_secs(20), || {
        (b.url().starts_with(&origin) && !state().is_empty()).then_some(())
    });
    if state() == "confirm" {
        b.click("#confirm");
    }
    b.wait("the register step", Duration::from_secs(15), || {
        (state() == "register").then_some(())
    });
    // 3. The device ceremony: C.
    sw.point_to(addr(2));
    b.type_into("#device-name", "home laptop");
    b.click("#register");
    let ok = wait_for("postern login to finish", Duration::from_secs(45), || {
        (!login.is_running()).then(|| login.child.wait().map(|s| s.success()).unwrap_or(false))
    });
    assert!(ok, "sign-in failed: {}\n{}", login.log_text(), b.describe());
    let [a, bb, cc] = [&c.replicas[0], &c.replicas[1], &c.replicas[2]];
    assert!(
        a.log_text()
            .contains("sign-in started: sent to the identity provider"),
        "A did not start the sign-in"
    );
    assert!(
        bb.log_text()
            .contains("identity provider callback accepted: device ceremony opened"),
        "B did not take the callback"
    );
    let registered = cc.wait_event("device.registered", |_| true);
    cc.wait_event("auth.login", |e| e["user"] == "alice@hospital.test");
    for other in [a, bb] {
        assert_eq!(
            other.count("device.registered"),
            0,
            "{} registered it",
            other.name
        );
    }
    let device = registered["device"]["id"]
        .as_str()
        .or(registered["device"].as_str())
        .unwrap()
        .to_owned();

    // The signed-in device's tunnel on B; the device revoked on A ends it.
    sw.point_to(addr(1));
    let mut client = Proc::spawn(
        "connect",
        Command::new(bin("postern"))
            .args(["connect", "echo", "--listen", "127.0.0.1:0"])
            // The test's switch passes TCP only.
            .args(["--transport", "tcp"])
            .env("POSTERN_CONFIG_DIR", &cfg),
        work.path().join("connect.log"),
    );
    let local: SocketAddr = wait_for("postern connect ready", Duration::from_secs(15), || {
        assert!(client.is_running(), "{}", client.log_text());
        client.log_text().lines().find_map(|l| {
            l.strip_prefix("ready: listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
    });
    let mut live = open_live(local);
    assert!(echoes(&mut live));
    let start = bb.wait_event("session.start", |e| {
        e["device"]["id"] == device.as_str() || e["device"] == device.as_str()
    });
    let t0 = Instant::now();
    let (ok, out, err) = a.admin(&["device", "revoke", &device]);
    assert!(ok, "{out}{err}");
    let took = closed_within(&mut live, Duration::from_secs(5))
        .expect("the tunnel on B outlived the revocation");
    let end = bb.wait_event("session.terminated", |e| {
        e["session_id"] == start["session_id"]
    });
    assert_eq!(end["close_reason"], "device_revoked", "{end}");
    eprintln!("device revoked on A ended its tunnel on B {:?} after the command started ({took:?} after it returned)", t0.elapsed());
    client.kill();

    // C leaves (a clean stop): both connectors stop dialling it; it returns: both link to it
    // again within 5 s.
    let mut w = w;
    w.c.replicas[2].stop();
    let c_addr = w.c.replicas[2].connector_addr();
    for name in ["conn-truro", "conn-penzance"] {
        let log = w.c.path(&format!("{name}.log"));
        wait_for(&format!("{name} to drop C"), Duration::from_secs(5), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("replica left the set: no more links to it") && l.contains(&c_addr)
                })
                .then_some(())
        });
    }
    let connected = |c: &Cluster, id: &str| {
        c.replicas[2]
            .events("connector.connected")
            .iter()
            .filter(|e| e["connector"]["id"] == id)
            .count()
    };
    let before: Vec<usize> = w.ids.iter().map(|id| connected(&w.c, id)).collect();
    w.c.replicas[2].start();
    let t0 = Instant::now();
    for (id, before) in w.ids.iter().zip(before) {
        wait_for("links on C again", Duration::from_secs(5), || {
            (connected(&w.c, id) > before).then_some(())
        });
    }
    eprintln!(
        "a returning replica was linked by both connectors {:?} after it started",
        t0.elapsed()
    );
    drop(sw);
}

/// A runs the revocations; tunnels live on B and C. Token (signed out on A), user and
/// connector revocations, each timed from the command to the tunnel's end: p50/p99 reported,
/// every one within 1 s of the command returning.
#[test]
fn revocations_on_one_replica_end_tunnels_on_the_others_within_a_second() {
    let mut w = world("", "");
    let ca = w.c.ca_file();
    let mut from_start = Vec::new();
    let mut from_return = Vec::new();
    let mut trial = |w: &World, kind: &str, n: usize| {
        let on = &w.c.replicas[1 + n % 2];
        let user = format!("u{n}-{kind}@hospital.test");
        let token = w.c.mint(&user, "radiologists");
        let endpoint = if n.is_multiple_of(3) {
            "echo-penzance"
        } else {
            "echo"
        };
        let (mut p, a) = w.c.connect(&on.url(), endpoint, &token).unwrap();
        let mut live = open_live(a);
        assert!(echoes(&mut live), "trial {n}: no echo");
        let start = on.wait_event("session.start", |e| e["user"] == user.as_str());
        let t0 = Instant::now();
        let (ok, out, err) = match kind {
            "token" => run(Command::new("curl")
                .args([
                    "-sS",
                    "-X",
                    "POST",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(&ca)
                .arg("-H")
                .arg(format!(
                    "Authorization: Bearer {}",
                    std::fs::read_to_string(&token).unwrap().trim()
                ))
                .arg(format!("{}/auth/logout", w.c.replicas[0].url()))),
            "user" => w.c.replicas[0].admin(&["user", "revoke", &user]),
            _ => unreachable!(),
        };
        let returned = t0.elapsed();
        assert!(ok, "{kind} revocation: {out}{err}");
        if kind == "token" {
            assert!(out.starts_with('2'), "sign-out answered {out}: {err}");
        }
        let took = closed_within(&mut live, Duration::from_secs(5)).unwrap_or_else(|| {
            panic!(
                "trial {n} ({kind}): the tunnel on {} outlived the revocation",
                on.name
            )
        });
        let end = on.wait_event("session.terminated", |e| {
            e["session_id"] == start["session_id"]
        });
        assert_eq!(end["close_reason"], format!("{kind}_revoked"), "{end}");
        from_start.push(returned + took);
        from_return.push(took);
        p.kill();
    };
    for n in 0..26 {
        trial(&w, "token", n);
        trial(&w, "user", n);
    }
    // Connectors: revoke penzance's on A while a tunnel through it is live on B, then enrol a
    // new one; three times.
    let mut connector_times = Vec::new();
    for n in 0..3 {
        let on = &w.c.replicas[1];
        let token = w.c.mint(&format!("c{n}@hospital.test"), "radiologists");
        let (mut p, a) = w.c.connect(&on.url(), "echo-penzance", &token).unwrap();
        let mut live = open_live(a);
        assert!(echoes(&mut live));
        let t0 = Instant::now();
        let (ok, out, err) = w.c.replicas[0].admin(&["connector", "revoke", &w.ids[1]]);
        assert!(ok, "{out}{err}");
        let returned = t0.elapsed();
        let took = closed_within(&mut live, Duration::from_secs(5))
            .expect("a tunnel outlived its connector's revocation");
        on.wait_event("session.end", |e| {
            e["close_reason"] == "connector_revoked"
                && e["user"] == format!("c{n}@hospital.test").as_str()
        });
        connector_times.push(returned + took);
        from_start.push(returned + took);
        from_return.push(took);
        p.kill();
        let name = format!("conn-penzance-{n}");
        let id = w.c.enroll(&name, "penzance", 2);
        w.c.start_connector(&name, &[("127.0.0.1/32", w.penzance_port.to_string())]);
        w.c.wait_links_everywhere(&id, Duration::from_secs(10));
        w.ids[1] = id;
    }
    from_start.sort();
    from_return.sort();
    assert!(from_return.len() >= 50, "only {} trials", from_return.len());
    let report = |what: &str, v: &[Duration]| {
        eprintln!(
            "revocation → tunnel ended on another replica, {what}: n={} p50={:?} p99={:?} max={:?}",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    };
    report("from the command's start", &from_start);
    report("from the command's return", &from_return);
    eprintln!("connector revocations (from start): {connector_times:?}");
    assert!(
        percentile(&from_return, 0.99) <= Duration::from_secs(1),
        "p99 {:?} after the command returned",
        percentile(&from_return, 0.99)
    );
}

/// The same enrolment token presented to two replicas at the same instant: exactly one
/// enrolment succeeds, the other is refused saying the token is used; ten times over.
#[test]
fn one_enrolment_token_at_two_replicas_at_once_enrols_exactly_one() {
    let truro = Echo::start();
    let c = Cluster::start(Options {
        replicas: 2,
        policy: &policy(truro.addr, truro.addr),
        extra: "",
        store: "",
    });
    for round in 0..10 {
        let (ok, token, err) =
            c.replicas[round % 2].admin(&["token", "create", "--site", "truro", "--ttl", "10m"]);
        assert!(ok, "{err}");
        let token = token.trim().to_owned();
        let go = Arc::new(std::sync::Barrier::new(2));
        let results: Vec<(bool, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|i| {
                    let (go, token, url) = (go.clone(), token.clone(), c.replicas[i].url());
                    let dir = c.path(&format!("race-{round}-{i}"));
                    s.spawn(move || {
                        go.wait();
                        let (ok, out, err) = run(Command::new(bin("postern-connector"))
                            .args([
                                "enroll",
                                "--gateway",
                                &url,
                                "--token",
                                &token,
                                "--state-dir",
                            ])
                            .arg(dir));
                        (ok, format!("{out}{err}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|(ok, _)| *ok).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let lost = &results.iter().find(|(ok, _)| !ok).unwrap().1;
        assert!(
            lost.contains("the enrolment token was already used"),
            "round {round}: the refusal does not say why: {lost}"
        );
    }
    // A user revocation on a replica that sees nothing of the user (their tokens and tunnels
    // may be in the other replicas' logs) is recorded and warns, without failing.
    let (ok, out, err) = c.replicas[1].admin(&["user", "revoke", "nobody@hospital.test"]);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("other replicas' are not read here"),
        "{out}{err}"
    );
    let (ok, out, err) = c.replicas[0].admin(&["connector", "list"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("truro")).count(),
        10,
        "{out}"
    );
}

/// When a session of the load was tried, and how it went.
type Outcome = (Instant, Result<(), String>);

/// Load for the fault tests: clients through the balancer (so spread over the replicas), a
/// thread opening one session every 50 ms round the clients, recording (when, result).
struct Load {
    clients: Vec<(Proc, SocketAddr)>,
    results: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, token: &Path, clients: usize) -> Load {
        let clients: Vec<(Proc, SocketAddr)> = (0..clients)
            .map(|_| c.connect(&c.url(), "echo", token).unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = clients.iter().map(|(_, a)| *a).collect();
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (results.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                let res = one_session(addrs[i % addrs.len()]);
                r.lock().unwrap().push((Instant::now(), res));
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load {
            clients,
            results,
            stop,
            thread: Some(thread),
        }
    }

    fn since(&self, t: Instant) -> Vec<Outcome> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .cloned()
            .collect()
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// `kill -9` one replica under load (held tunnels on every replica and a steady session rate):
/// its held tunnels end, those on the survivors carry on, new sessions succeed on the
/// survivors within 2 s; restarted, it writes `gateway_lost` for its sessions; every replica's
/// log verifies and the merged sessions list has each session once.
#[test]
fn a_replica_killed_under_load_is_noticed_only_by_its_own_sessions() {
    let mut w = world("", "");
    let token = w.c.mint("ann@hospital.test", "radiologists");
    // Held tunnels: two on each replica, opened through each replica's own URL.
    let mut held: Vec<(usize, Proc, TcpStream)> = Vec::new();
    for i in 0..3 {
        for _ in 0..2 {
            let (p, a) = w.c.connect(&w.c.replicas[i].url(), "echo", &token).unwrap();
            let mut s = open_live(a);
            assert!(echoes(&mut s));
            held.push((i, p, s));
        }
    }
    let mut load = Load::start(&w.c, &token, 6);
    std::thread::sleep(Duration::from_secs(2));
    let before = load.since(Instant::now() - Duration::from_secs(2));
    assert!(
        before.len() >= 10 && before.iter().all(|(_, r)| r.is_ok()),
        "{before:?}"
    );
    let a_sessions: Vec<String> = w.c.replicas[0]
        .events("session.start")
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!a_sessions.is_empty());

    let killed = Instant::now();
    w.c.replicas[0].kill9();
    std::thread::sleep(Duration::from_secs(5));
    let after = load.since(killed);
    // Every session started 2 s after the kill or later succeeded.
    let late: Vec<_> = after
        .iter()
        .filter(|(at, _)| at.duration_since(killed) >= Duration::from_secs(2))
        .collect();
    assert!(
        late.len() >= 20,
        "only {} sessions after the kill",
        late.len()
    );
    let failed: Vec<_> = late.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "sessions failed 2 s after the kill: {failed:?}"
    );
    let first_failures = after.iter().filter(|(_, r)| r.is_err()).count();
    let last_failure = after
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(at, _)| at.duration_since(killed))
        .max();
    eprintln!(
        "after kill -9: {} sessions in 5 s, {first_failures} failed, the last {last_failure:?} after the kill",
        after.len()
    );
    for (i, _, s) in held.iter_mut() {
        if *i == 0 {
            assert!(!echoes(s), "a tunnel of the killed replica still echoes");
        } else {
            assert!(echoes(s), "a tunnel on replica {i} stopped when A died");
        }
    }
    load.finish();
    for (_, p, _) in held.iter_mut() {
        p.kill();
    }
    for (p, _) in load.clients.iter_mut() {
        p.kill();
    }

    // Restarted (as systemd would), A ends what it had open: gateway_lost.
    w.c.replicas[0].start();
    let a = &w.c.replicas[0];
    let ended: Vec<String> = a
        .events("session.end")
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect();
    let lost = a
        .events("session.end")
        .iter()
        .filter(|e| e["close_reason"] == "gateway_lost")
        .count();
    assert!(
        lost >= 2,
        "the restarted replica wrote {lost} gateway_lost ends"
    );
    for s in &a_sessions {
        assert!(ended.contains(s), "session {s} of A never ended in its log");
    }
    // Survivors end their clients' sessions as the clients go.
    std::thread::sleep(Duration::from_secs(1));
    for r in &w.c.replicas {
        let (ok, out) = r.verify_audit();
        assert!(ok, "{}: {out}", r.name);
    }
    let (ok, out, err) = run(Command::new(bin("postern-audit"))
        .args(["sessions", "--connections", "--json"])
        .args(w.c.audit_dirs()));
    assert!(ok, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let starts: usize = w.c.replicas.iter().map(|r| r.count("session.start")).sum();
    assert!(starts >= 30, "only {starts} sessions");
    assert_eq!(
        rows.len(),
        starts,
        "the merged list is not one row per session"
    );
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["session_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), starts, "a session is listed twice");
}

/// PostgreSQL stopped for 30 s under load, `max_staleness` 10 s: held tunnels carry on; new
/// sessions open from the last known state for 10 s, then are refused saying why; when the
/// database returns everything recovers by itself, on every replica.
#[test]
fn postgres_stopped_for_30_seconds_under_load() {
    let mut w = world("", "max_staleness = \"10s\"\n");
    let token = w.c.mint("ann@hospital.test", "radiologists");
    let mut held: Vec<(Proc, TcpStream)> = (0..3)
        .map(|i| {
            let (p, a) = w.c.connect(&w.c.replicas[i].url(), "echo", &token).unwrap();
            let mut s = open_live(a);
            assert!(echoes(&mut s));
            (p, s)
        })
        .collect();
    let mut load = Load::start(&w.c, &token, 3);
    std::thread::sleep(Duration::from_secs(1));

    let down = Instant::now();
    w.c.pg.pause();
    for r in &w.c.replicas {
        r.wait_event("store.unavailable", |_| true);
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    for (_, s) in held.iter_mut() {
        assert!(echoes(s), "a held tunnel stopped with the database");
    }
    w.c.pg.resume();
    let back = Instant::now();
    for r in &w.c.replicas {
        r.wait_event("store.stale", |_| true);
        r.wait_event("store.available", |_| true);
    }
    std::thread::sleep(Duration::from_secs(6));
    load.finish();
    let results = load.since(down);
    let fresh_ok = results
        .iter()
        .filter(|(at, r)| at.duration_since(down) < Duration::from_secs(8) && r.is_ok())
        .count();
    assert!(
        fresh_ok >= 10,
        "sessions within max_staleness: {fresh_ok} succeeded"
    );
    let stale: Vec<_> = results
        .iter()
        .filter(|(at, _)| {
            let t = at.duration_since(down);
            t > Duration::from_secs(12) && *at < back
        })
        .collect();
    assert!(stale.len() >= 50, "{} sessions while stale", stale.len());
    assert!(
        stale.iter().all(|(_, r)| r.is_err()),
        "a session opened on stale state"
    );
    let recovered: Vec<_> = results
        .iter()
        .filter(|(at, _)| *at > back + Duration::from_secs(3))
        .collect();
    assert!(
        !recovered.is_empty() && recovered.iter().all(|(_, r)| r.is_ok()),
        "{recovered:?}"
    );
    let denied: usize =
        w.c.replicas
            .iter()
            .map(|r| {
                r.events("session.denied")
                    .iter()
                    .filter(|e| {
                        e["detail"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("store_unavailable")
                    })
                    .count()
            })
            .sum();
    assert!(denied >= 50, "{denied} denials said store_unavailable");
    let first_back = results
        .iter()
        .filter(|(at, r)| *at > back && r.is_ok())
        .map(|(at, _)| at.duration_since(back))
        .min();
    eprintln!(
        "database stopped 30 s: {fresh_ok} sessions opened in the first 8 s, {} refused while stale ({denied} store_unavailable denials), first session {first_back:?} after it returned",
        stale.len()
    );
    for (_, s) in held.iter_mut() {
        assert!(echoes(s), "a held tunnel did not survive the outage");
    }
    for r in &w.c.replicas {
        let (status, _) = postern_e2e::http(r.admin, "/readyz").unwrap();
        assert_eq!(status, 200, "{} not ready after the outage", r.name);
    }
    for (p, _) in held.iter_mut() {
        p.kill();
    }
}
