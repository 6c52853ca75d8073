//! End-to-end test harness: starts the real Postern binaries (and real peers such as Orthanc)
//! on ephemeral loopback ports in temporary directories, waits on readiness signals (audit
//! events, "ready" lines, HTTP answers) rather than sleeping, and kills everything on drop.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); the test command in
//! README.md does that.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod dicom;
pub mod ha;
pub mod linkbed;
pub mod oidc;
pub mod pg;
pub mod rdp;
pub mod rogue_idp;
pub mod wan;
pub mod web;
pub mod world;

/// Directory holding the workspace binaries (target/debug or target/release), or
/// `POSTERN_E2E_BIN_DIR` when set (binaries copied out of a target directory that other
/// builds share, so that a test runs the binaries it was built with).
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("POSTERN_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/e2e-xxxx
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        }
    };
    for b in ["postern-gateway", "postern-connector", "postern"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: build the binaries first with `cargo build --workspace --bins`",
            dir.join(b).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A free TCP port on 127.0.0.1 (for peers that cannot bind port 0 and report it, and for
/// configurations written before a process starts).
///
/// Ports come from 15000–32767, below Linux's ephemeral range (32768–60999): a port handed out
/// here is not also picked by the kernel for some test's outgoing connection in the seconds
/// before its server binds it. Pseudo-random order keeps parallel tests apart; the bind check
/// skips ports in use, and a port is handed out once per test process (two calls in a row
/// could draw the same free port: a gateway once got its client and connector listeners on one
/// port).
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut x = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        let port = 15000 + (x % (32768 - 15000)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 15000-32767")
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process killed on drop; its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            log,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits for exit (up to `limit`); returns the exit status code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL (kill -9) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory (VmRSS, kB) from /proc/PID/status.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("{} is gone: {e}", self.name));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for {}", self.name))
    }

    /// Open file descriptors (sockets included) from /proc/PID/fd.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("{} is gone: {e}", self.name))
    }

    /// The last JSON object line of kind `kind` this process printed (postern-bench output).
    pub fn json_line(&self, kind: &str) -> Option<Value> {
        self.log_text()
            .lines()
            .rev()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["kind"] == kind)
    }

    /// Waits (up to `limit`) for the JSON line of kind `kind`.
    pub fn wait_json(&mut self, kind: &str, limit: Duration) -> Value {
        wait_for(&format!("{} to print {kind}", self.name), limit, || {
            let v = self.json_line(kind);
            if v.is_none() && !self.is_running() {
                panic!(
                    "{} exited without printing {kind}: {}",
                    self.name,
                    self.log_text()
                );
            }
            v
        })
    }
}

/// Starts `postern-bench ARGS` (the load generators of bench/) with its output in `log`.
pub fn bench(name: &str, args: &[String], log: PathBuf) -> Proc {
    Proc::spawn(name, Command::new(bin("postern-bench")).args(args), log)
}

/// A `postern-bench echo` server (tokio; scales to many thousands of connections, unlike
/// [`Echo`]'s thread per connection). Returns the process and its address.
pub fn bench_echo(log: PathBuf) -> (Proc, SocketAddr) {
    let mut p = bench(
        "echo",
        &["echo".into(), "--listen".into(), "127.0.0.1:0".into()],
        log,
    );
    let addr = listening_on(&mut p, "postern-bench echo");
    (p, addr)
}

/// The address a `postern-bench` process printed (`listening on ADDR`); waits up to 10 s.
pub fn listening_on(p: &mut Proc, what: &str) -> SocketAddr {
    wait_for(
        &format!("{what} to listen"),
        Duration::from_secs(10),
        || {
            assert!(p.is_running(), "{what} exited: {}", p.log_text());
            p.log_text()
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .and_then(|a| a.trim().parse().ok())
        },
    )
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP echo server on 127.0.0.1 (stands in for any TCP service behind the connector).
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut c);
                });
            }
        });
        Echo {
            addr,
            accepted,
            stop,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Sends `msg` to `addr` and reads the same number of bytes back.
/// (status, body) of an HTTP/1.0 GET.
pub fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

pub fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Opens a tunnel through `addr` (a `postern connect` port to an echo service) and proves it is
/// up by echoing one byte; the stream then stays open (15 s read timeout) for the test to watch.
pub fn open_live(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x", "the tunnel did not echo");
    s
}

/// Whether a new connection through `addr` is closed without any data coming back (the
/// gateway or connector refused the tunnel).
pub fn tunnel_refused(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"ping");
    let mut buf = [0u8; 16];
    s.read(&mut buf).unwrap_or(0) == 0
}

/// One connector allowlist entry: (cidr, ports).
pub type Allow = (&'static str, String);

/// A gateway and (optionally) an enrolled, running connector, with their files.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub gateway: Option<Proc>,
    pub connector: Option<Proc>,
    pub client_port: u16,
    pub connector_port: u16,
    pub connector_id: String,
}

impl Deployment {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn gateway_toml(&self) -> PathBuf {
        self.path("gateway.toml")
    }

    /// Starts a gateway with `policy` (no connector yet).
    pub fn gateway_only(policy: &str) -> Deployment {
        let mut d = Deployment::prepare(policy);
        d.start_gateway();
        d
    }

    /// Writes the gateway's files without starting it.
    pub fn prepare(policy: &str) -> Deployment {
        Deployment::prepare_with(policy, "")
    }

    /// The URL the IdP must redirect to (this gateway's `/auth/callback`).
    pub fn callback_url(&self) -> String {
        format!("{}/auth/callback", self.url())
    }

    /// Adds `text` (e.g. an `[oidc]` table) to gateway.toml.
    pub fn append_config(&self, text: &str) {
        let mut t = std::fs::read_to_string(self.gateway_toml()).unwrap();
        t.push_str(text);
        std::fs::write(self.gateway_toml(), t).unwrap();
    }

    /// As [`Deployment::prepare`], with extra gateway.toml text.
    pub fn prepare_with(policy: &str, extra: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let client_port = free_port();
        let connector_port = free_port();
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "node_id = \"gw-test\"\nstate_dir = \"gw\"\npolicy = \"policy.toml\"\n[listen]\nclients = \"127.0.0.1:{client_port}\"\nconnectors = \"127.0.0.1:{connector_port}\"\n[limits]\nhandshake_timeout = \"2s\"\nconnector_dial_timeout = \"3s\"\nshutdown_grace = \"2s\"\n{extra}"
            ),
        )
        .unwrap();
        Deployment {
            dir,
            gateway: None,
            connector: None,
            client_port,
            connector_port,
            connector_id: String::new(),
        }
    }

    /// Starts gateway and connector (site "truro") with `allow` as the connector allowlist.
    pub fn start(policy: &str, allow: &[Allow]) -> Deployment {
        Deployment::gateway_only(policy).with_connector(allow)
    }

    /// Enrols and starts a connector (site "truro") on a running gateway.
    pub fn with_connector(mut self, allow: &[Allow]) -> Deployment {
        let d = &mut self;
        d.connector_id = d.enroll_connector("conn", "truro");
        d.write_connector_toml("conn", allow, None);
        d.start_connector("conn");
        self
    }

    /// Enrols connector `name` (state dir `name`) for `site`; returns its id.
    pub fn enroll_connector(&self, name: &str, site: &str) -> String {
        let token = self.enroll_token(site, "10m");
        let (ok, out, err) = self.enroll(name, &token);
        assert!(ok, "enrolment failed: {out}{err}");
        out.split_whitespace().nth(2).unwrap().to_owned()
    }

    /// Enrols and starts one more connector for site "truro" (besides `self.connector`),
    /// waits until the gateway audits its connection, and returns it with its id.
    pub fn add_connector(&self, name: &str, allow: &[Allow]) -> (Proc, String) {
        let id = self.enroll_connector(name, "truro");
        self.write_connector_toml(name, allow, None);
        let before = self.connected(&id);
        let p = self.spawn_connector(name);
        wait_for(
            &format!("{name} to connect"),
            Duration::from_secs(20),
            || (self.connected(&id) > before).then_some(()),
        );
        (p, id)
    }

    /// How many `connector.connected` events connector `id` has.
    pub fn connected(&self, id: &str) -> usize {
        self.events("connector.connected")
            .iter()
            .filter(|e| e["connector"]["id"] == id)
            .count()
    }

    /// Starts (or restarts) the gateway process and waits for its `gateway.started` event.
    pub fn start_gateway(&mut self) {
        let before = self.count("gateway.started");
        let p = Proc::spawn(
            "gateway",
            Command::new(bin("postern-gateway"))
                .args(["run", "--config"])
                .arg(self.gateway_toml())
                .env("POSTERN_LOG", "info,postern_gateway=debug"),
            self.path(&format!("gateway-{before}.log")),
        );
        self.gateway = Some(p);
        wait_for("gateway.started", Duration::from_secs(20), || {
            if let Some(g) = self.gateway.as_mut() {
                assert!(g.is_running(), "gateway exited: {}", g.log_text());
            }
            (self.count("gateway.started") > before).then_some(())
        });
    }

    pub fn enroll_token(&self, site: &str, ttl: &str) -> String {
        let (ok, out, err) = run(Command::new(bin("postern-gateway"))
            .args(["token", "create", "--site", site, "--ttl", ttl, "--config"])
            .arg(self.gateway_toml()));
        assert!(ok, "token create failed: {err}");
        out.trim().to_owned()
    }

    /// Runs `postern-connector enroll` into state dir `name`.
    pub fn enroll(&self, name: &str, token: &str) -> (bool, String, String) {
        run(Command::new(bin("postern-connector"))
            .args([
                "enroll",
                "--gateway",
                &self.url(),
                "--token",
                token,
                "--state-dir",
            ])
            .arg(self.path(name)))
    }

    pub fn write_connector_toml(&self, name: &str, allow: &[Allow], gateways: Option<&str>) {
        let mut t = format!(
            "state_dir = \"{name}\"\nconnections_per_gateway = 2\nreconnect_max = \"500ms\"\n"
        );
        if let Some(g) = gateways {
            t.push_str(&format!("gateways = [\"{g}\"]\n"));
        }
        for (cidr, ports) in allow {
            t.push_str(&format!(
                "[[allow]]\ncidr = \"{cidr}\"\nports = \"{ports}\"\n"
            ));
        }
        std::fs::write(self.path(&format!("{name}.toml")), t).unwrap();
    }

    /// Starts connector `name` and waits until the gateway audits its connection.
    pub fn start_connector(&mut self, name: &str) {
        let before = self.count("connector.connected");
        self.connector = Some(self.spawn_connector(name));
        wait_for("connector.connected", Duration::from_secs(20), || {
            (self.count("connector.connected") > before).then_some(())
        });
    }

    pub fn spawn_connector(&self, name: &str) -> Proc {
        Proc::spawn(
            "connector",
            Command::new(bin("postern-connector"))
                .args(["run", "--config"])
                .arg(self.path(&format!("{name}.toml")))
                .env("POSTERN_LOG", "debug,h2=info,hyper=info,rustls=info"),
            self.path(&format!("{name}.log")),
        )
    }

    /// Mints a session token; returns the path of the file holding it.
    pub fn mint(&self, user: &str, groups: &str, ttl: &str) -> PathBuf {
        let (ok, out, err) = run(Command::new(bin("postern-gateway"))
            .args([
                "session", "mint", "--user", user, "--groups", groups, "--ttl", ttl, "--config",
            ])
            .arg(self.gateway_toml()));
        assert!(ok, "session mint failed: {err}");
        let path = self.path(&format!("{user}-{}.token", free_port()));
        std::fs::write(&path, out.trim()).unwrap();
        path
    }

    pub fn ca_file(&self) -> PathBuf {
        let p = self.path("gw/server-ca.pem");
        assert!(p.exists());
        p
    }

    /// `postern connect ENDPOINT --listen 127.0.0.1:0`: Ok(process, local address) once it
    /// printed its ready line, or Err(everything it printed) if it exited.
    pub fn connect(&self, endpoint: &str, token: &Path) -> Result<(Proc, SocketAddr), String> {
        self.connect_with_ca(endpoint, token, &self.ca_file())
    }

    /// As [`Deployment::connect`], trusting `ca` for the gateway's certificate.
    pub fn connect_with_ca(
        &self,
        endpoint: &str,
        token: &Path,
        ca: &Path,
    ) -> Result<(Proc, SocketAddr), String> {
        self.connect_to_with_ca(&self.url(), endpoint, token, ca)
    }

    /// As [`Deployment::connect`], to the gateway at `url` (another replica).
    pub fn connect_to(
        &self,
        url: &str,
        endpoint: &str,
        token: &Path,
    ) -> Result<(Proc, SocketAddr), String> {
        self.connect_to_with_ca(url, endpoint, token, &self.ca_file())
    }

    fn connect_to_with_ca(
        &self,
        url: &str,
        endpoint: &str,
        token: &Path,
        ca: &Path,
    ) -> Result<(Proc, SocketAddr), String> {
        let log = self.path(&format!("client-{endpoint}-{}.log", free_port()));
        postern_connect(url, endpoint, token, ca, log)
    }

    /// `postern login --no-browser` against an IdP that asks nothing (the rogue IdP), the
    /// sign-in URL followed by a scripted browser: Ok(token file) or Err(what the CLI and the
    /// browser saw).
    pub fn cli_login(&self, cfg: &Path) -> Result<PathBuf, String> {
        let mut p = Proc::spawn(
            "login",
            Command::new(bin("postern"))
                .args(["login", &self.url(), "--no-browser", "--timeout", "30"])
                .arg("--ca-file")
                .arg(self.ca_file())
                .env("POSTERN_CONFIG_DIR", cfg),
            self.path(&format!("login-{}.log", free_port())),
        );
        let url = wait_for("the sign-in URL", Duration::from_secs(10), || {
            p.log_text()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("https://"))
                .map(str::to_owned)
        });
        let browser = oidc::Browser::new(&self.ca_file()).get(&url);
        if browser.status >= 400 {
            // The gateway refused the sign-in: the CLI would wait for its timeout.
            p.kill();
            return Err(format!(
                "{}\nbrowser: {} {}: {}",
                p.log_text(),
                browser.status,
                browser.final_url,
                browser.body
            ));
        }
        let ok = wait_for("postern login to finish", Duration::from_secs(30), || {
            (!p.is_running()).then(|| p.child.wait().map(|s| s.success()).unwrap_or(false))
        });
        if ok {
            Ok(cfg.join("token"))
        } else {
            p.kill();
            Err(format!("{}\nbrowser: {browser:?}", p.log_text()))
        }
    }

    /// The gateway's store as `postern-gateway state export` prints it.
    pub fn state(&self) -> Value {
        let (ok, out, err) = run(Command::new(bin("postern-gateway"))
            .args(["state", "export", "--config"])
            .arg(self.gateway_toml()));
        assert!(ok, "state export: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("state export: {e}: {out}"))
    }

    /// The enrolled connector `id` as the store holds it.
    pub fn state_connector(&self, id: &str) -> Value {
        let state = self.state();
        let all = state["connectors"].as_array().cloned().unwrap_or_default();
        all.into_iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no connector {id} in {state}"))
    }

    /// Replaces the (SQLite) store with `state`, through `state import` into a new file.
    pub fn replace_state(&self, state: &Value) {
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(self.path("gw").join(f));
        }
        let file = self.path("state-import.json");
        std::fs::write(&file, state.to_string()).unwrap();
        let (ok, _, err) = run(Command::new(bin("postern-gateway"))
            .args(["state", "import", "--config"])
            .arg(self.gateway_toml())
            .arg(&file));
        assert!(ok, "state import: {err}");
    }

    /// Every audit event so far (see [`audit_events`]).
    pub fn audit(&self) -> Vec<Value> {
        audit_events(&self.path("gw/audit"))
    }

    /// `postern-audit verify` on the audit directory, checking checkpoint signatures against
    /// the gateway's own audit key: (passed, its output).
    pub fn verify_audit(&self) -> (bool, String) {
        self.verify_audit_with(&[])
    }

    /// As [`Deployment::verify_audit`] with more `postern-audit verify` options (`--closed`).
    pub fn verify_audit_with(&self, options: &[&str]) -> (bool, String) {
        let (ok, pem, err) = run(Command::new(bin("postern-audit"))
            .arg("pubkey")
            .arg(self.path("gw")));
        assert!(ok, "postern-audit pubkey failed: {err}");
        let key = self.path("audit-pub.pem");
        std::fs::write(&key, pem).unwrap();
        let (ok, out, err) = run(Command::new(bin("postern-audit"))
            .arg("verify")
            .arg(self.path("gw/audit"))
            .arg("--pubkey")
            .arg(&key)
            .args(options));
        (ok, format!("{out}{err}"))
    }

    /// `postern-audit ARGS… DIR` on the gateway's audit directory, as an auditor runs it: its
    /// standard output (the test fails if it fails).
    pub fn audit_cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = run(Command::new(bin("postern-audit"))
            .args(args)
            .arg(self.path("gw/audit")));
        assert!(ok, "postern-audit {}: {out}{err}", args.join(" "));
        out
    }

    /// As [`Deployment::audit_cli`] with a `--json` (or NDJSON) output: its lines, parsed.
    pub fn audit_cli_json(&self, args: &[&str]) -> Vec<Value> {
        self.audit_cli(args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.events(kind).len()
    }

    /// Waits for an event of `kind` matching `pred`.
    pub fn wait_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(
            &format!("audit event {kind}"),
            Duration::from_secs(20),
            || self.events(kind).into_iter().find(|e| pred(e)),
        )
    }
}

/// Every audit event so far in the audit directory `dir`, from every segment in order (`audit.jsonl`, then
/// `audit.000002.jsonl`, ...). A torn last line (a gateway killed mid-write) is skipped.
pub fn audit_events(dir: &Path) -> Vec<Value> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with("audit.") && n.ends_with(".jsonl")
                })
                .collect()
        })
        .unwrap_or_default();
    // "audit.jsonl" sorts after "audit.000002.jsonl": put the first segment first.
    segments.sort_by_key(|p| (p.file_name().is_some_and(|n| n != "audit.jsonl"), p.clone()));
    let mut out = Vec::new();
    for seg in segments {
        let text = std::fs::read_to_string(&seg).unwrap_or_default();
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str(l) {
                Ok(v) => out.push(v),
                Err(_) if i + 1 == lines.len() && !complete => {}
                Err(e) => panic!("bad audit line {l}: {e}"),
            }
        }
    }
    out
}

/// `postern connect ENDPOINT --listen 127.0.0.1:0 --gateway URL` trusting `ca`: Ok(process,
/// local address) once it printed its ready line, or Err(everything it printed) if it exited.
pub fn postern_connect(
    url: &str,
    endpoint: &str,
    token: &Path,
    ca: &Path,
    log: PathBuf,
) -> Result<(Proc, SocketAddr), String> {
    postern_connect_over(url, endpoint, token, ca, log, "auto")
}

/// As [`postern_connect`], with `--transport` (`auto`, `tcp`, `quic`).
pub fn postern_connect_over(
    url: &str,
    endpoint: &str,
    token: &Path,
    ca: &Path,
    log: PathBuf,
    transport: &str,
) -> Result<(Proc, SocketAddr), String> {
    let mut p = Proc::spawn(
        "client",
        Command::new(bin("postern"))
            .args([
                "connect",
                endpoint,
                "--listen",
                "127.0.0.1:0",
                "--transport",
                transport,
                "--gateway",
                url,
            ])
            .arg("--ca-file")
            .arg(ca)
            .arg("--token-file")
            .arg(token),
        log,
    );
    let start = Instant::now();
    loop {
        let text = p.log_text();
        if let Some(line) = text.lines().find(|l| l.starts_with("ready: listening on ")) {
            let addr = line["ready: listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            return Ok((p, addr));
        }
        if !p.is_running() {
            return Err(p.log_text());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "client never became ready: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The usual test policy: one TCP endpoint `echo` at `echo` on site `truro`, open to the group
/// `radiologists` for up to an hour.
pub fn echo_policy(echo: SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["echo"]
max_session = "1h"
"#,
        echo.port()
    )
}
