//! Gateway replicas on one PostgreSQL database, as docs/operator-guide.md "Three replicas on
//! PostgreSQL" sets them up: the first replica creates the CAs, the others get copies of them
//! (and of the sign-in cookie key) before their first start; each has its own state directory,
//! ports, `node_id` and audit log. Clients reach them through a round-robin TCP balancer
//! (`postern-bench delay --delay-ms 0` with one `--upstream` per replica), connectors through
//! another; tests that must choose the replica of each step use a [`Switch`] instead.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::pg::Postgres;
use crate::{audit_events, bench, bin, free_port, run, wait_for, Allow, Proc};

/// Files every replica must share, copied from the first replica's state directory.
pub const SHARED_FILES: [&str; 4] = [
    "server-ca.pem",
    "server-ca.key",
    "connector-ca.pem",
    "connector-ca.key",
];
/// Shared when sign-in is configured (the first replica makes it at start).
pub const SIGNIN_KEY: &str = "signin-cookie.key";

/// One gateway replica.
pub struct Replica {
    /// Its `node_id`: `gw-a`, `gw-b`, …
    pub name: String,
    pub state: PathBuf,
    pub toml: PathBuf,
    pub client_port: u16,
    pub connector_port: u16,
    pub admin: SocketAddr,
    pub proc: Option<Proc>,
    starts: usize,
    work: PathBuf,
}

impl Replica {
    /// `https://127.0.0.1:PORT` (its own client listener, not the balancer).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn connector_addr(&self) -> String {
        format!("127.0.0.1:{}", self.connector_port)
    }

    /// Starts (or restarts) it and waits for its `gateway.started`.
    pub fn start(&mut self) {
        let before = self.count("gateway.started");
        self.starts += 1;
        let mut p = Proc::spawn(
            &self.name,
            Command::new(bin("postern-gateway"))
                .args(["run", "--config"])
                .arg(&self.toml)
                .env("POSTERN_LOG", "info,postern_gateway=debug"),
            self.work.join(format!("{}-{}.log", self.name, self.starts)),
        );
        wait_for(
            &format!("{} gateway.started", self.name),
            Duration::from_secs(30),
            || {
                assert!(p.is_running(), "{} exited: {}", self.name, p.log_text());
                (self.count("gateway.started") > before).then_some(())
            },
        );
        self.proc = Some(p);
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            let _ = p.child.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            assert_eq!(
                p.terminate(Duration::from_secs(30)),
                Some(0),
                "{}",
                p.log_text()
            );
        }
    }

    /// The log of its current (or last) process.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.work.join(format!("{}-{}.log", self.name, self.starts)))
            .unwrap_or_default()
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.state.join("audit")
    }

    pub fn audit(&self) -> Vec<Value> {
        audit_events(&self.audit_dir())
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

    /// Waits (up to `limit`) for an event of `kind` matching `pred`.
    pub fn wait_event_for(
        &self,
        kind: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(&format!("{} audit event {kind}", self.name), limit, || {
            self.events(kind).into_iter().find(|e| pred(e))
        })
    }

    pub fn wait_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_for(kind, Duration::from_secs(20), pred)
    }

    /// `postern-gateway ARGS --config <its gateway.toml>`: (success, stdout, stderr).
    pub fn admin(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new(bin("postern-gateway"))
            .args(args)
            .arg("--config")
            .arg(&self.toml))
    }

    /// Links of connector `id` this replica has audited as connected and not disconnected.
    pub fn links_of(&self, id: &str) -> i64 {
        let of = |kind: &str| {
            self.events(kind)
                .iter()
                .filter(|e| e["connector"]["id"] == id)
                .count() as i64
        };
        of("connector.connected") - of("connector.disconnected")
    }

    /// `postern-audit verify` on its log, checking checkpoints against its own audit key.
    pub fn verify_audit(&self) -> (bool, String) {
        let (ok, pem, err) = run(Command::new(bin("postern-audit"))
            .arg("pubkey")
            .arg(&self.state));
        assert!(ok, "postern-audit pubkey failed: {err}");
        let key = self.work.join(format!("{}-audit.pub", self.name));
        std::fs::write(&key, pem).unwrap();
        let (ok, out, err) = run(Command::new(bin("postern-audit"))
            .arg("verify")
            .arg(self.audit_dir())
            .arg("--pubkey")
            .arg(&key));
        (ok, format!("{out}{err}"))
    }
}

/// Replicas, their database and balancers.
pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub pg: Postgres,
    pub db: String,
    /// Where clients reach "the gateway": the round-robin balancer.
    pub client_lb: SocketAddr,
    /// Where connectors reach it.
    pub connector_lb: SocketAddr,
    pub dir: tempfile::TempDir,
    balancers: Vec<Proc>,
    connectors: Vec<Proc>,
}

/// What [`Cluster::start`] makes.
pub struct Options<'a> {
    pub replicas: usize,
    pub policy: &'a str,
    /// Appended to every replica's gateway.toml (e.g. `[oidc]`, `[devices]`).
    pub extra: &'a str,
    /// Lines of its `[store]` table besides `url` and `password_file`.
    pub store: &'a str,
}

impl Cluster {
    /// Starts PostgreSQL, the first replica (which makes the CAs), copies the shared files to
    /// the others, starts them, then the two balancers.
    pub fn start(o: Options<'_>) -> Cluster {
        let pg = Postgres::start(&[]);
        let db = pg.create_database("postern");
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().to_path_buf();
        std::fs::write(work.join("policy.toml"), o.policy).unwrap();
        let mut replicas = Vec::new();
        for i in 0..o.replicas {
            let name = format!("gw-{}", (b'a' + i as u8) as char);
            let state = work.join(&name);
            std::fs::create_dir(&state).unwrap();
            std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            let (client_port, connector_port) = (free_port(), free_port());
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let toml = work.join(format!("{name}.toml"));
            std::fs::write(
                &toml,
                format!(
                    "node_id = \"{name}\"\nstate_dir = \"{}\"\npolicy = \"{}\"\n\
                     [listen]\nclients = \"127.0.0.1:{client_port}\"\nconnectors = \"127.0.0.1:{connector_port}\"\n\
                     [limits]\nhandshake_timeout = \"2s\"\nconnector_dial_timeout = \"3s\"\nshutdown_grace = \"2s\"\n\
                     [admin]\nlisten = \"{admin}\"\n\
                     [tls]\nserver_names = [\"localhost\", \"127.0.0.1\"]\n\
                     [store]\nurl = \"{}\"\npassword_file = \"{}\"\n{}\n{}",
                    state.display(),
                    work.join("policy.toml").display(),
                    pg.url(&db),
                    pg.password_file().display(),
                    o.store,
                    o.extra,
                ),
            )
            .unwrap();
            replicas.push(Replica {
                name,
                state,
                toml,
                client_port,
                connector_port,
                admin,
                proc: None,
                starts: 0,
                work: work.clone(),
            });
        }
        replicas[0].start();
        let first = replicas[0].state.clone();
        for r in replicas.iter_mut().skip(1) {
            provision(&first, &r.state);
            r.start();
        }
        let lb = |name: &str, port: u16, upstreams: Vec<String>| {
            let mut args = vec![
                "delay".to_owned(),
                "--delay-ms".into(),
                "0".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ];
            for u in upstreams {
                args.push("--upstream".into());
                args.push(u);
            }
            let mut p = bench(name, &args, work.join(format!("{name}.log")));
            let addr = crate::listening_on(&mut p, name);
            (p, addr)
        };
        let (clb, client_lb) = lb(
            "client-balancer",
            0,
            replicas
                .iter()
                .map(|r| format!("127.0.0.1:{}", r.client_port))
                .collect(),
        );
        let (cnlb, connector_lb) = lb(
            "connector-balancer",
            0,
            replicas.iter().map(Replica::connector_addr).collect(),
        );
        Cluster {
            replicas,
            pg,
            db,
            client_lb,
            connector_lb,
            dir,
            balancers: vec![clb, cnlb],
            connectors: Vec::new(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `https://127.0.0.1:PORT` of the client balancer.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_lb.port())
    }

    /// The server CA every replica shares (what clients and connectors trust).
    pub fn ca_file(&self) -> PathBuf {
        self.replicas[0].state.join("server-ca.pem")
    }

    /// Enrols connector `name` of `site` through replica `via` (its own URL); returns its id.
    pub fn enroll(&self, name: &str, site: &str, via: usize) -> String {
        let (ok, token, err) =
            self.replicas[via].admin(&["token", "create", "--site", site, "--ttl", "10m"]);
        assert!(ok, "token create: {err}");
        let (ok, out, err) = run(Command::new(bin("postern-connector"))
            .args([
                "enroll",
                "--gateway",
                &self.replicas[via].url(),
                "--token",
                token.trim(),
                "--state-dir",
            ])
            .arg(self.path(name)));
        assert!(ok, "enrolment: {out}{err}");
        out.split_whitespace().nth(2).unwrap().to_owned()
    }

    /// Starts connector `name` (enrolled already) configured with the connector balancer as
    /// its only gateway; it learns the replicas over its links.
    pub fn start_connector(&mut self, name: &str, allow: &[Allow]) {
        let mut t = format!(
            "state_dir = \"{}\"\ngateways = [\"{}\"]\nconnections_per_gateway = 2\nreconnect_max = \"500ms\"\n",
            self.path(name).display(),
            self.connector_lb
        );
        for (cidr, ports) in allow {
            t.push_str(&format!(
                "[[allow]]\ncidr = \"{cidr}\"\nports = \"{ports}\"\n"
            ));
        }
        let toml = self.path(&format!("{name}.toml"));
        std::fs::write(&toml, t).unwrap();
        let p = Proc::spawn(
            name,
            Command::new(bin("postern-connector"))
                .args(["run", "--config"])
                .arg(&toml)
                .env("POSTERN_LOG", "debug,h2=info,hyper=info,rustls=info"),
            self.path(&format!("{name}.log")),
        );
        self.connectors.push(p);
    }

    /// Waits until every live replica has a link from connector `id`.
    pub fn wait_links_everywhere(&self, id: &str, limit: Duration) {
        wait_for(&format!("links from {id} on every replica"), limit, || {
            self.replicas
                .iter()
                .filter(|r| r.proc.is_some())
                .all(|r| r.links_of(id) > 0)
                .then_some(())
        });
    }

    /// Mints a session token (with replica 0's keys); returns the file holding it.
    pub fn mint(&self, user: &str, groups: &str) -> PathBuf {
        let (ok, out, err) = self.replicas[0].admin(&[
            "session", "mint", "--user", user, "--groups", groups, "--ttl", "1h",
        ]);
        assert!(ok, "session mint: {err}");
        let path = self.path(&format!("{user}-{}.token", free_port()));
        std::fs::write(&path, out.trim()).unwrap();
        path
    }

    /// `postern connect ENDPOINT` through `url`: a replica's own (QUIC, as a client would
    /// use) or the balancer's (TCP: the test balancer, like HAProxy, passes TCP only).
    pub fn connect(
        &self,
        url: &str,
        endpoint: &str,
        token: &Path,
    ) -> Result<(Proc, SocketAddr), String> {
        let log = self.path(&format!("client-{endpoint}-{}.log", free_port()));
        let transport = if url == self.url() { "tcp" } else { "auto" };
        crate::postern_connect_over(url, endpoint, token, &self.ca_file(), log, transport)
    }

    /// Every replica's audit directory (for `postern-audit … DIR DIR DIR`).
    pub fn audit_dirs(&self) -> Vec<PathBuf> {
        self.replicas.iter().map(Replica::audit_dir).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.connectors.iter_mut().chain(self.balancers.iter_mut()) {
            p.kill();
        }
        for r in &mut self.replicas {
            if let Some(p) = r.proc.as_mut() {
                p.kill();
            }
        }
    }
}

/// Copies the files replicas share from the state directory `from` to `to` (0600 kept).
pub fn provision(from: &Path, to: &Path) {
    for f in SHARED_FILES.iter().chain(std::iter::once(&SIGNIN_KEY)) {
        let src = from.join(f);
        if src.exists() {
            std::fs::copy(&src, to.join(f)).unwrap();
        }
    }
}

/// A TCP balancer the test steers: every new connection goes to the upstream chosen last, and
/// choosing another closes the connections open so far (so a browser, which keeps its HTTP/2
/// connection, must open a new one — to the chosen replica — for its next request).
pub struct Switch {
    pub addr: SocketAddr,
    state: Arc<Mutex<(SocketAddr, Vec<TcpStream>)>>,
}

impl Switch {
    /// Listens on `127.0.0.1:port` (0: any), forwarding to `first`.
    pub fn start(port: u16, first: SocketAddr) -> Switch {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new((first, Vec::new())));
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(down) = c else { continue };
                let target = st.lock().unwrap().0;
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut g = st.lock().unwrap();
                    g.1.push(down.try_clone().unwrap());
                    g.1.push(up.try_clone().unwrap());
                }
                for (mut a, mut b) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut b, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Switch { addr, state }
    }

    /// New connections go to `to`; the open ones are closed.
    pub fn point_to(&self, to: SocketAddr) {
        let mut g = self.state.lock().unwrap();
        g.0 = to;
        for s in g.1.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
