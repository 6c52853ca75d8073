//! A test bed for the clinician's link (issue #14) on the link emulator: the gateway, an
//! enrolled connector and the endpoints in the emulator's "cloud" namespace, clients in "home".
//!
//! [`Cloud::new`] makes the bed's directory; endpoints start first (their addresses go into the
//! policy), e.g. [`Cloud::start_echo`] or [`Cloud::start_orthanc`]; then [`Cloud::start`]
//! stands up the gateway (client listener on the cloud address, TCP and UDP) with the caller's
//! policy and a connector on loopback inside the cloud namespace; [`Cloud::mint`] makes a
//! session token and [`Cloud::client`] runs `postern connect` in the home namespace and returns
//! its local address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::dicom::Orthanc;
use crate::wan::Wan;
use crate::{bin, free_port, run, wait_for, Proc};

/// A gateway and an enrolled connector in the cloud namespace.
pub struct Cloud {
    pub dir: tempfile::TempDir,
    /// The gateway's client listener port (on the cloud address).
    pub client_port: u16,
    pub gateway: Option<Proc>,
    pub connector: Option<Proc>,
    /// Other processes the bed owns (endpoints), stopped with it.
    pub procs: Vec<Proc>,
    cloud_addr: std::net::Ipv4Addr,
}

impl Cloud {
    /// An empty bed: its directory, nothing running yet.
    pub fn new(wan: &Wan) -> Cloud {
        Cloud {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            gateway: None,
            connector: None,
            procs: Vec::new(),
            cloud_addr: wan.cloud_addr,
        }
    }

    /// Starts a gateway with `policy` (TOML) and `extra` gateway configuration (appended to
    /// `gateway.toml`), and a connector for site `truro` allowed to reach 127.0.0.1 on `ports`
    /// (a connector `ports` value such as `"104"` or `"1-65535"`).
    pub fn start(&mut self, wan: &Wan, policy: &str, extra: &str, ports: &str) {
        let dir = self.dir.path().to_owned();
        let p = |s: &str| dir.join(s);
        std::fs::write(p("policy.toml"), policy).unwrap();
        let (client_port, connector_port) = (self.client_port, free_port());
        let cloud_addr = wan.cloud_addr;
        std::fs::write(
            p("gateway.toml"),
            format!(
                "node_id = \"gw-cloud\"\nstate_dir = \"{}\"\npolicy = \"{}\"\n[listen]\nclients = \"{cloud_addr}:{client_port}\"\nconnectors = \"127.0.0.1:{connector_port}\"\n[limits]\nhandshake_timeout = \"5s\"\n[tls]\nserver_names = [\"{cloud_addr}\", \"127.0.0.1\"]\n{extra}",
                p("gw").display(),
                p("policy.toml").display()
            ),
        )
        .unwrap();
        let mut gateway = Proc::spawn(
            "gateway",
            wan.cloud(bin("postern-gateway"))
                .args(["run", "--config"])
                .arg(p("gateway.toml"))
                .env("POSTERN_LOG", "info,postern_gateway=debug"),
            p("gateway.log"),
        );
        wait_for("the gateway", Duration::from_secs(20), || {
            assert!(gateway.is_running(), "{}", gateway.log_text());
            gateway.log_text().contains("gateway started").then_some(())
        });
        let (ok, token, err) = run(Command::new(bin("postern-gateway"))
            .args([
                "token", "create", "--site", "truro", "--ttl", "10m", "--config",
            ])
            .arg(p("gateway.toml")));
        assert!(ok, "{err}");
        let (ok, out, err) = run(wan
            .cloud(bin("postern-connector"))
            .args([
                "enroll",
                "--gateway",
                &format!("https://{cloud_addr}:{client_port}"),
                "--token",
                token.trim(),
                "--state-dir",
            ])
            .arg(p("conn")));
        assert!(ok, "enrolment: {out}{err}");
        std::fs::write(
            p("conn.toml"),
            format!(
                "state_dir = \"{}\"\ngateways = [\"127.0.0.1:{connector_port}\"]\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = \"{ports}\"\n",
                p("conn").display()
            ),
        )
        .unwrap();
        let connector = Proc::spawn(
            "connector",
            wan.cloud(bin("postern-connector"))
                .args(["run", "--config"])
                .arg(p("conn.toml")),
            p("conn.log"),
        );
        self.gateway = Some(gateway);
        self.connector = Some(connector);
        wait_for("the connector's link", Duration::from_secs(20), || {
            self.audit()
                .iter()
                .any(|e| e["type"] == "connector.connected")
                .then_some(())
        });
    }

    /// Starts `postern-bench echo` in the cloud namespace; returns its address.
    pub fn start_echo(&mut self, wan: &Wan) -> SocketAddr {
        let port = free_port();
        let mut echo = Proc::spawn(
            "echo",
            wan.cloud(bin("postern-bench")).args([
                "echo",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]),
            self.path("echo.log"),
        );
        wait_for("echo to listen", Duration::from_secs(10), || {
            assert!(echo.is_running(), "{}", echo.log_text());
            echo.log_text().contains("listening on").then_some(())
        });
        self.procs.push(echo);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Starts an Orthanc PACS in the cloud namespace (on its loopback, in `DIR/orthanc`) and
    /// waits until its REST API answers there. The test keeps it (to load it and count its
    /// instances); its DICOM port goes into the policy and the connector's `ports`.
    pub fn start_orthanc(&mut self, wan: &Wan) -> Orthanc {
        Orthanc::start_in(&self.path("orthanc"), Some(&wan.cloud_ns))
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    pub fn gateway_toml(&self) -> PathBuf {
        self.path("gateway.toml")
    }

    /// The gateway's URL as seen from home.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.cloud_addr, self.client_port)
    }

    /// The audit events written so far.
    pub fn audit(&self) -> Vec<Value> {
        crate::audit_events(&self.path("gw/audit"))
    }

    /// Mints a session token for `user` in `groups` (comma-separated) and writes it to
    /// `NAME.token`; returns the file.
    pub fn mint(&self, user: &str, groups: &str) -> PathBuf {
        let (ok, token, err) = run(Command::new(bin("postern-gateway"))
            .args([
                "session", "mint", "--user", user, "--groups", groups, "--ttl", "1h", "--config",
            ])
            .arg(self.gateway_toml()));
        assert!(ok, "{err}");
        let file = self.path(&format!("{}.token", user.replace('@', "_")));
        std::fs::write(&file, token.trim()).unwrap();
        file
    }

    /// Runs `postern connect ENDPOINT --listen 127.0.0.1:0 ARGS…` in the home namespace with
    /// `token`; returns the process and its local address once it is ready.
    pub fn client(
        &self,
        wan: &Wan,
        name: &str,
        endpoint: &str,
        token: &std::path::Path,
        args: &[&str],
    ) -> (Proc, SocketAddr) {
        let mut client = Proc::spawn(
            name,
            wan.home(bin("postern"))
                .args(["connect", endpoint, "--listen", "127.0.0.1:0"])
                .args(args)
                .arg("--gateway")
                .arg(self.url())
                .arg("--ca-file")
                .arg(self.path("gw/server-ca.pem"))
                .arg("--token-file")
                .arg(token)
                .env("POSTERN_LOG", "info"),
            self.path(&format!("{name}.log")),
        );
        let local: SocketAddr = wait_for("the client", Duration::from_secs(20), || {
            assert!(client.is_running(), "{}", client.log_text());
            client.log_text().lines().find_map(|l| {
                l.strip_prefix("ready: listening on ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            })
        });
        (client, local)
    }
}
