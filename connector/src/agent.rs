//! The running connector: a set of tasks behind one [`AgentHandle`].
//!
//! [`spawn`] loads the identity, binds the admin listener (if configured) and starts, each as
//! its own task, `connections_per_gateway` link loops per gateway address ([`crate::link`]),
//! the certificate renewal ([`crate::renew`]) and the admin listener ([`crate::admin_http`]).
//! It returns at once with the handle, which owns those tasks:
//!
//! * dropping the handle stops everything now: no more dials, links and open tunnels closed,
//!   renewal and admin listener ended;
//! * [`AgentHandle::shutdown`] stops dialling, lets open tunnels finish for up to
//!   `shutdown_grace`, then does the same.
//!
//! [`run`] is the two together, for `postern-connector run`: spawn, wait for the shutdown
//! signal, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::identity::{load_identity, ClientTls, IdentityError};
use crate::link::{link_loop, Shared};
use crate::metrics::Metrics;
use crate::renew::{keep_renewed, Renewal};

/// Why the connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("no gateway address: list `gateways` in the configuration or enrol again")]
    NoGateway,
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up metrics: {0}")]
    Metrics(String),
    /// A gateway refused this connector for good: it was revoked. Redialling cannot help.
    #[error("{}", crate::link::revoked_message(*at))]
    Revoked {
        /// When (Unix seconds; 0 if the gateway did not say).
        at: u64,
    },
}

/// Exit status of `postern-connector run` when a gateway says the connector is revoked
/// (distinct from 1, any other failure), so that a supervisor does not restart it: the
/// systemd unit lists it in `RestartPreventExitStatus`.
pub const EXIT_REVOKED: u8 = 3;

/// A running connector. Dropping it stops the connector (see the module comment).
#[must_use = "dropping the handle stops the connector at once"]
pub struct AgentHandle {
    shared: Arc<Shared>,
    /// Link loops, renewal and admin listener: aborted when the handle goes.
    tasks: JoinSet<()>,
    shutdown_grace: std::time::Duration,
    admin_addr: Option<SocketAddr>,
}

/// Starts the connector described by `config` and returns its handle.
pub async fn spawn(config: Config) -> Result<AgentHandle, LinkError> {
    let (enrollment, tls) = load_identity(&config.state_dir)?;
    let gateways = if config.gateways.is_empty() {
        enrollment.connector_addrs.clone()
    } else {
        config.gateways.clone()
    };
    if gateways.is_empty() {
        return Err(LinkError::NoGateway);
    }
    if config.allowlist.entries.is_empty() {
        warn!("the allowlist is empty: every tunnel will be refused");
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| LinkError::Metrics(e.to_string()))?);
    let admin = match config.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| LinkError::Admin { addr, source })?,
        ),
        None => None,
    };
    let tls = Arc::new(ClientTls::new(tls));
    let shared = Arc::new(Shared {
        tls: tls.clone(),
        metrics: metrics.clone(),
        allowlist: config.allowlist.clone(),
        dial_timeout: config.dial_timeout,
        transport: config.link_transport,
        quic: Default::default(),
        reconnect_max: config.reconnect_max,
        stop: CancellationToken::new(),
        kill: CancellationToken::new(),
        relays: TaskTracker::new(),
        connector_id: enrollment.connector_id.clone(),
        revoked: Default::default(),
        learned: Default::default(),
        dicom: Default::default(),
    });
    info!(connector_id = %enrollment.connector_id, site = %enrollment.site, gateways = ?gateways, "connector starting");
    let mut tasks = JoinSet::new();
    let mut admin_addr = None;
    if let Some(l) = admin {
        if let Ok(a) = l.local_addr() {
            info!(admin = %a, "admin listener (metrics, health) up");
            admin_addr = Some(a);
        }
        tasks.spawn(crate::admin_http::serve(
            metrics.clone(),
            l,
            shared.stop.clone(),
        ));
    }
    let renewal = Renewal {
        state_dir: config.state_dir.clone(),
        gateways: gateways.clone(),
        connector_id: enrollment.connector_id.clone(),
        tls,
        metrics,
    };
    tasks.spawn(keep_renewed(renewal, shared.stop.clone()));
    for gw in &gateways {
        for n in 0..config.connections_per_gateway {
            tasks.spawn(link_loop(
                shared.clone(),
                gw.clone(),
                n,
                CancellationToken::new(),
            ));
        }
    }
    tasks.spawn(follow_replicas(
        shared.clone(),
        gateways.clone(),
        config.connections_per_gateway,
    ));
    Ok(AgentHandle {
        shared,
        tasks,
        shutdown_grace: config.shutdown_grace,
        admin_addr,
    })
}

/// Keeps `per_gateway` links to every replica address the gateways tell ([`crate::link::Learned`])
/// that is not one of the `configured` gateways (those have links of their own): a replica
/// that joins gets links at once, one that left the set has its links closed once their
/// tunnels end.
async fn follow_replicas(shared: Arc<Shared>, configured: Vec<String>, per_gateway: usize) {
    let mut learned = shared.learned.subscribe();
    let mut dialled: std::collections::HashMap<String, CancellationToken> = Default::default();
    let mut links = JoinSet::new();
    loop {
        let want: Vec<String> = learned
            .borrow_and_update()
            .iter()
            .filter(|a| !configured.contains(a))
            .cloned()
            .collect();
        dialled.retain(|addr, leave| {
            let keep = want.contains(addr);
            if !keep {
                info!(gateway = %addr, "replica left the set: no more links to it");
                leave.cancel();
            }
            keep
        });
        for addr in want {
            if dialled.contains_key(&addr) {
                continue;
            }
            info!(gateway = %addr, "replica joined the set: linking to it");
            let leave = CancellationToken::new();
            for n in 0..per_gateway {
                links.spawn(link_loop(shared.clone(), addr.clone(), n, leave.clone()));
            }
            dialled.insert(addr, leave);
        }
        shared
            .metrics
            .gateways
            .set(i64::try_from(configured.len() + dialled.len()).unwrap_or(i64::MAX));
        tokio::select! {
            r = learned.changed() => if r.is_err() { break },
            _ = shared.stop.cancelled() => break,
            // Reap finished loops so the set does not grow with them.
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
    // The loops close their links as the configured ones do (gracefully on `stop`); dropping
    // this task (the handle went) aborts them.
    while links.join_next().await.is_some() {}
}

impl AgentHandle {
    /// The address the admin listener (metrics, health) is bound to, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The connector's metrics (the ones the admin listener serves).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Resolves (with the revocation time, Unix seconds) when a gateway says this connector
    /// is revoked; its links have stopped dialling by then.
    pub async fn revoked(&self) -> u64 {
        self.shared.revoked.wait().await
    }

    /// Stops dialling and closes the links gracefully, lets open tunnels finish for up to
    /// `shutdown_grace`, then stops everything (as dropping the handle does).
    pub async fn shutdown(self) {
        let relays = &self.shared.relays;
        info!(grace = ?self.shutdown_grace, open_tunnels = relays.len(), "shutting down");
        self.shared.stop.cancel();
        relays.close();
        if tokio::time::timeout(self.shutdown_grace, relays.wait())
            .await
            .is_err()
        {
            warn!(
                open_tunnels = relays.len(),
                "grace period over; closing open tunnels"
            );
        }
        // Dropping `self` closes what is left.
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.kill.cancel();
        // Dropping the JoinSet would abort them too; said here so the order is plain.
        self.tasks.abort_all();
    }
}

/// Runs the connector until `shutdown` completes, then stops dialling, lets open tunnels finish
/// for up to `shutdown_grace` and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
    let agent = spawn(config).await?;
    let revoked = tokio::select! {
        _ = shutdown => None,
        at = agent.revoked() => Some(at),
    };
    agent.shutdown().await;
    match revoked {
        Some(at) => Err(LinkError::Revoked { at }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::enroll::{Enrollment, CA_FILE, CERT_FILE, ENROLLMENT_FILE, KEY_FILE};

    /// An enrolled state directory in `dir` (its certificate, valid for a day, is its own CA,
    /// so renewal is hours away) and a configuration that dials `gateway` over two links and
    /// has an admin listener on an ephemeral port.
    fn enrolled(dir: &Path, gateway: SocketAddr) -> Config {
        write_enrolled(dir, gateway, "conn-test", &["localhost"]);
        Config::parse(
            &format!(
                "state_dir = \"{}\"\nconnections_per_gateway = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n",
                dir.display()
            ),
            &dir.join("connector.toml"),
        )
        .unwrap()
    }

    /// Writes an enrolled state into `dir`: connector `id` of site truro dialling `gateway`,
    /// with a certificate for `names` valid for a day that is its own CA. Returns its key and
    /// certificate.
    fn write_enrolled(
        dir: &Path,
        gateway: SocketAddr,
        id: &str,
        names: &[&str],
    ) -> (rcgen::KeyPair, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(1);
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(CA_FILE), cert.pem()).unwrap();
        std::fs::write(dir.join(CERT_FILE), cert.pem()).unwrap();
        std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
        let enrollment = Enrollment {
            connector_id: id.into(),
            site: "truro".into(),
            gateway_url: format!("https://{gateway}"),
            connector_addrs: vec![gateway.to_string()],
            not_after: "in a day".into(),
            issued_at: Some(crate::enroll::unix_now()),
        };
        std::fs::write(
            dir.join(ENROLLMENT_FILE),
            serde_json::to_vec(&enrollment).unwrap(),
        )
        .unwrap();
        (key, cert)
    }

    /// A "gateway" on an ephemeral port that accepts every connection, counts it and closes
    /// it (so every link attempt fails in the TLS handshake and is redialled after backoff).
    async fn counting_gateway() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                drop(tcp);
            }
        });
        (addr, count)
    }

    /// Waits (in paused time: at once) until `count` reaches `n`; fails after a virtual minute.
    async fn wait_for(count: &AtomicUsize, n: usize) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while count.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} dial(s), expected {n}",
                count.load(Ordering::SeqCst)
            )
        });
    }

    /// Lets aborted tasks go and dials already accepted by the kernel reach the counter.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, dials) = counting_gateway().await;
        let mut config = enrolled(dir.path(), gateway);
        config.gateways = vec![gateway.to_string()];
        let agent = spawn(config).await.unwrap();
        let admin = agent.admin_addr().unwrap();
        // Both links dial, fail and redial after their backoff: the agent is running. (In
        // `auto` mode a failed dial is two connections here: the TCP probe that joins a slow
        // QUIC handshake, and the HTTP/2 attempt after it.)
        tokio::time::timeout(Duration::from_secs(60), async {
            while agent.metrics().reconnects.get() < 4 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the links redial");
        wait_for(&dials, 6).await;
        tokio::net::TcpStream::connect(admin)
            .await
            .expect("the admin listener is up while the agent runs");

        let at_drop = dials.load(Ordering::SeqCst);
        drop(agent);
        settle().await;
        let after = dials.load(Ordering::SeqCst);
        // At most the dial each link had under way when the handle went.
        assert!(
            after <= at_drop + 2,
            "{at_drop} dials at drop, {after} just after"
        );
        // Far past the longest backoff (reconnect_max 30 s): nobody dials any more.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(
            dials.load(Ordering::SeqCst),
            after,
            "dials after the handle was dropped"
        );
        assert!(
            tokio::net::TcpStream::connect(admin).await.is_err(),
            "the admin listener is closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_after_its_shutdown_and_stops_dialling() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, dials) = counting_gateway().await;
        let config = enrolled(dir.path(), gateway);
        // The gateway address comes from the enrolment here (no `gateways` in the config).
        assert!(config.gateways.is_empty());
        let d = dials.clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            run(config, async move { wait_for(&d, 4).await }),
        )
        .await
        .expect("run returns once its shutdown future completes")
        .unwrap();
        settle().await;
        let after = dials.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(
            dials.load(Ordering::SeqCst),
            after,
            "dials after run returned"
        );
    }

    #[tokio::test]
    async fn an_unenrolled_state_dir_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            &format!("state_dir = \"{}\"\n", dir.path().display()),
            &dir.path().join("connector.toml"),
        )
        .unwrap();
        let e = spawn(config).await.err().expect("no enrolment, no agent");
        let text = e.to_string();
        assert!(text.contains(ENROLLMENT_FILE), "{text}");
        assert!(text.contains("postern-connector enroll"), "{text}");
    }

    /// A gateway's side of one HTTP/2 link, played by the test: TLS with a certificate the
    /// connector's enrolment trusts, then an HTTP/2 client as the gateway is on a link.
    mod dicom_link {
        use super::*;
        use crate::dicom::inspect::tests::{ac, pdata};
        use crate::dicom::pdu::tests::{associate_rq, command_set};
        use crate::dicom::pdu::IMPLICIT_VR_LE;
        use bytes::Bytes;
        use http::{Method, Request, StatusCode};
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::TokioIo;
        use postern_proto::dicom::{DicomPermit, DicomRecord, DicomService};
        use postern_proto::wire;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        /// An enrolled connector dialling `gateway` over one HTTP/2 link, allowed to reach
        /// 127.0.0.1:`port`; returns the gateway's TLS acceptor for the same identity.
        fn enrolled_link(
            dir: &Path,
            gateway: SocketAddr,
            port: u16,
            transport: &str,
        ) -> (Config, rustls::ServerConfig) {
            let (key, cert) =
                write_enrolled(dir, gateway, "conn-dicom", &["localhost", "127.0.0.1"]);
            let config = Config::parse(
                &format!(
                    "state_dir = \"{}\"\nconnections_per_gateway = 1\nlink_transport = \"{transport}\"\n[[allow]]\ncidr = \"127.0.0.1\"\nports = \"{port}\"\n",
                    dir.display()
                ),
                &dir.join("connector.toml"),
            )
            .unwrap();
            let alpn = if transport == "quic" {
                wire::ALPN_LINK_QUIC
            } else {
                wire::ALPN_CONNECTOR
            };
            let server = postern_net::tls::server_config(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                &[alpn],
                None,
            )
            .unwrap();
            (config, server)
        }

        /// A PACS that answers the A-ASSOCIATE-RQ with an A-ASSOCIATE-AC, then reads to the end
        /// and closes; returns what it read.
        async fn pacs(listener: tokio::net::TcpListener) -> Vec<u8> {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let answer = got.is_empty();
                got.extend_from_slice(&buf[..n]);
                if answer {
                    tcp.write_all(&ac()).await.unwrap();
                }
            }
            let _ = tcp.shutdown().await;
            got
        }

        #[tokio::test]
        async fn an_inspected_tunnel_streams_its_records_on_the_session_events_request() {
            let dir = tempfile::tempdir().unwrap();
            let gw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pacs_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pacs_addr = pacs_l.local_addr().unwrap();
            let (config, server) = enrolled_link(
                dir.path(),
                gw.local_addr().unwrap(),
                pacs_addr.port(),
                "http2",
            );
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let handle = spawn(config).await.unwrap();
            let pacs_task = tokio::spawn(pacs(pacs_l));

            let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), gw.accept())
                .await
                .unwrap()
                .unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let (mut link, conn) = postern_net::h2::client(postern_net::h2::LINK)
                .handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = |m: Method, uri: &str, headers: &[(&str, String)]| {
                let mut r = Request::builder().method(m).uri(uri);
                for (k, v) in headers {
                    r = r.header(*k, v);
                }
                r.body(Empty::<Bytes>::new()).unwrap()
            };
            let target = pacs_addr.to_string();
            let permit = DicomPermit {
                rule: "reporters-pacs".into(),
                calling_ae: vec!["VIEWER".into()],
                called_ae: Some("PACS".into()),
                services: vec![DicomService::Echo],
            };

            // A permit that does not parse: 400 with the reason, nothing dialled.
            let r = link
                .send_request(req(
                    Method::CONNECT,
                    &target,
                    &[
                        (wire::HDR_SESSION, "s-bad".into()),
                        (postern_proto::dicom::HDR_DICOM_PERMIT, "{not json".into()),
                    ],
                ))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            let why = r.headers()[wire::HDR_REASON].to_str().unwrap().to_owned();
            assert!(why.contains("DICOM permit does not parse"), "{why}");
            // No records for a session the connector carries no inspected tunnel of.
            let r = link
                .send_request(req(
                    Method::GET,
                    postern_proto::dicom::PATH_SESSION_EVENTS,
                    &[(wire::HDR_SESSION, "s-none".into())],
                ))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);

            let r = link
                .send_request(req(
                    Method::CONNECT,
                    &target,
                    &[
                        (wire::HDR_SESSION, "s-1".into()),
                        (postern_proto::dicom::HDR_DICOM_PERMIT, permit.to_header()),
                    ],
                ))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let mut tunnel = TokioIo::new(hyper::upgrade::on(r).await.unwrap());
            let events = link
                .send_request(req(
                    Method::GET,
                    postern_proto::dicom::PATH_SESSION_EVENTS,
                    &[(wire::HDR_SESSION, "s-1".into())],
                ))
                .await
                .unwrap();
            assert_eq!(events.status(), StatusCode::OK);

            // The clinician's association: RQ, (AC), C-ECHO-RQ, A-RELEASE-RQ, close.
            let rq = associate_rq(
                "VIEWER",
                "PACS",
                &[(1, "1.2.840.10008.1.1", IMPLICIT_VR_LE)],
            );
            tunnel.write_all(&rq).await.unwrap();
            let mut got = vec![0u8; ac().len()];
            tunnel.read_exact(&mut got).await.unwrap();
            assert_eq!(got, ac());
            tunnel
                .write_all(&pdata(1, 3, &command_set(0x0030, 1, false, &[])))
                .await
                .unwrap();
            tunnel
                .write_all(&[5, 0, 0, 0, 0, 4, 0, 0, 0, 0])
                .await
                .unwrap();
            tunnel.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = tunnel.read_to_end(&mut rest).await;

            // The events stream ends with the tunnel: one association record, as NDJSON.
            let body = tokio::time::timeout(Duration::from_secs(10), events.into_body().collect())
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            let records: Vec<DicomRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(records.len(), 1, "{text}");
            assert_eq!(records[0].event, "association");
            assert_eq!(records[0].calling_ae, "VIEWER");
            assert_eq!(records[0].sop_classes, ["1.2.840.10008.1.1"]);
            assert!(text.ends_with('\n'));
            // Taken once: a second request finds nothing.
            let r = link
                .send_request(req(
                    Method::GET,
                    postern_proto::dicom::PATH_SESSION_EVENTS,
                    &[(wire::HDR_SESSION, "s-1".into())],
                ))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);

            let to_pacs = pacs_task.await.unwrap();
            assert!(to_pacs.starts_with(&rq));
            let m = handle.metrics().render();
            assert!(
                m.contains("postern_connector_dicom_operations_total{service=\"echo\"} 1"),
                "{m}"
            );
            assert!(m.contains(
                "postern_connector_dicom_refusals_total{reason=\"calling_ae_not_allowed\"} 0"
            ));
            handle.shutdown().await;
        }

        /// One request on a QUIC link, as the gateway makes it: the request frame, the answer.
        async fn quic_request(
            conn: &quinn::Connection,
            method: &str,
            target: &str,
            headers: &[(&str, String)],
        ) -> (wire::LinkResponse, quinn::SendStream, quinn::RecvStream) {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let req = wire::LinkRequest {
                method: method.into(),
                target: target.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            };
            postern_net::quic::write_frame(&mut send, &req)
                .await
                .unwrap();
            let answer: wire::LinkResponse =
                postern_net::quic::read_frame(&mut recv).await.unwrap();
            (answer, send, recv)
        }

        #[tokio::test]
        async fn over_a_quic_link_the_session_events_stream_carries_the_records_too() {
            let dir = tempfile::tempdir().unwrap();
            let pacs_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pacs_addr = pacs_l.local_addr().unwrap();
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let gw_addr = udp.local_addr().unwrap();
            let (config, server) = enrolled_link(dir.path(), gw_addr, pacs_addr.port(), "quic");
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(postern_net::quic::link_server_config(Arc::new(server)).unwrap()),
                udp,
                Arc::new(quinn::TokioRuntime),
            )
            .unwrap();
            let handle = spawn(config).await.unwrap();
            let pacs_task = tokio::spawn(pacs(pacs_l));
            let conn = tokio::time::timeout(Duration::from_secs(10), async {
                endpoint.accept().await.unwrap().await.unwrap()
            })
            .await
            .unwrap();

            let target = pacs_addr.to_string();
            let (answer, _, _) = quic_request(
                &conn,
                "GET",
                postern_proto::dicom::PATH_SESSION_EVENTS,
                &[(wire::HDR_SESSION, "q-none".into())],
            )
            .await;
            assert_eq!(answer.status, 404);
            let permit = DicomPermit {
                rule: "reporters-pacs".into(),
                calling_ae: vec!["VIEWER".into()],
                called_ae: Some("PACS".into()),
                services: vec![DicomService::Echo],
            };
            let (answer, send, recv) = quic_request(
                &conn,
                "CONNECT",
                &target,
                &[
                    (wire::HDR_SESSION, "q-1".into()),
                    (postern_proto::dicom::HDR_DICOM_PERMIT, permit.to_header()),
                ],
            )
            .await;
            assert_eq!(answer.status, 200, "{answer:?}");
            let mut tunnel = tokio::io::join(recv, send);
            let (answer, _events_send, mut events) = quic_request(
                &conn,
                "GET",
                postern_proto::dicom::PATH_SESSION_EVENTS,
                &[(wire::HDR_SESSION, "q-1".into())],
            )
            .await;
            assert_eq!(answer.status, 200);

            // A calling AE title the permit does not list: rejected, and reported.
            let rq = associate_rq("EVIL", "PACS", &[(1, "1.2.840.10008.1.1", IMPLICIT_VR_LE)]);
            tunnel.write_all(&rq).await.unwrap();
            let mut got = Vec::new();
            tunnel.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, crate::dicom::pdu::associate_rj(3));
            let body = tokio::time::timeout(Duration::from_secs(10), events.read_to_end(64 * 1024))
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8(body).unwrap();
            let records: Vec<DicomRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(records.len(), 1, "{text}");
            assert_eq!(records[0].event, "refused");
            assert_eq!(
                records[0].refusal.as_deref(),
                Some("calling_ae_not_allowed")
            );
            assert_eq!(
                records[0].answer.as_deref(),
                Some("A-ASSOCIATE-RJ result 1 source 1 reason 3")
            );
            // The PACS was dialled but heard nothing.
            assert!(pacs_task.await.unwrap().is_empty());
            let m = handle.metrics().render();
            assert!(
                m.contains(
                    "postern_connector_dicom_refusals_total{reason=\"calling_ae_not_allowed\"} 1"
                ),
                "{m}"
            );
            handle.shutdown().await;
        }
    }
}
