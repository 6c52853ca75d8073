//! In-process tests of the gateway behind its seams: a [`TestClock`] on tokio's paused clock,
//! the in-memory store and audit sink, and an upstream that echoes instead of dialling a
//! connector. Deadlines, token expiry, policy re-evaluation, time-bound access and revocations
//! are driven by advancing time — nothing sleeps. One test runs the whole gateway through
//! `serve(listeners, shutdown)` on loopback sockets with the same seams. The end-to-end suite
//! (tests/) keeps using the real binaries and real peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_audit::{Event, EventType, MemorySink};
use postern_gateway::access::broker::Opened;
use postern_gateway::app::{App, Seams};
use postern_gateway::authn::tokens::Claims;
use postern_gateway::clock::{Clock, TestClock};
use postern_gateway::connectors::{OpenRequest, Route, Upstream, UpstreamError};
use postern_gateway::state::memory::MemoryStore;
use postern_gateway::state::{DeviceRec, DeviceStatus, StateStore};
use postern_gateway::stream::BoxIo;
use postern_gateway::{Config, Listeners, Stop};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

/// Monday 7 January 2030, 10:00 UTC: the test clock's start.
const START: u64 = 1_894_010_400;

const POLICY: &str = r#"
[[endpoints]]
name = "pacs"
site = "truro"
host = "10.0.0.1"
port = 104
protocol = "dicom"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists", "locums"]
endpoints = ["pacs"]
max_session = "10m"

[[rules]]
id = "on-call-until-half-past"
effect = "allow"
groups = ["on-call"]
endpoints = ["pacs"]
valid_until = 2030-01-07T10:30:00Z
"#;

/// Echoes every byte: stands in for a connector and an endpoint. It takes `dial` to reach
/// the endpoint (a day: a connector that never answers within a test).
struct Echo {
    lost: CancellationToken,
    dial: Duration,
}

impl Echo {
    fn new(dial: Duration) -> Echo {
        Echo {
            lost: CancellationToken::new(),
            dial,
        }
    }
}

const STALL: Duration = Duration::from_secs(86_400);

impl Route for Echo {
    fn connector(&self) -> postern_audit::ConnectorRef {
        postern_audit::ConnectorRef {
            id: "truro-test".into(),
            site: "truro".into(),
        }
    }
    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
    fn open<'a>(
        &'a self,
        req: OpenRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<BoxIo, UpstreamError>> + Send + 'a>> {
        assert_eq!(req.target, "10.0.0.1:104");
        let dial = self.dial;
        Box::pin(async move {
            if !dial.is_zero() {
                tokio::time::sleep(dial).await;
            }
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(theirs);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Ok(Box::new(ours) as BoxIo)
        })
    }
}

impl Upstream for Echo {
    fn route(&self, site: &str) -> Option<Arc<dyn Route>> {
        (site == "truro").then(|| {
            Arc::new(Echo {
                lost: self.lost.clone(),
                dial: self.dial,
            }) as Arc<dyn Route>
        })
    }
}

struct Fixture {
    app: Arc<App>,
    audit: Arc<MemorySink>,
    store: Arc<MemoryStore>,
    clock: Arc<TestClock>,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(Arc::new(Echo::new(Duration::ZERO))).await
}

async fn fixture_with(upstream: Arc<dyn Upstream>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let config = Config::local(&dir.path().join("state"), &policy);
    let audit = MemorySink::shared();
    let store = Arc::new(MemoryStore::default());
    let clock = Arc::new(TestClock::starting_at(
        UNIX_EPOCH + Duration::from_secs(START),
    ));
    let seams = Seams {
        clock: clock.clone(),
        store: store.clone(),
        audit: audit.clone(),
        upstream: Some(upstream),
    };
    let app = App::build(config, "127.0.0.1:1".parse().unwrap(), seams)
        .await
        .unwrap();
    Fixture {
        app,
        audit,
        store,
        clock,
        dir,
    }
}

fn peer() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

impl Fixture {
    /// Claims for `user` in `groups`, valid for `ttl` from now, optionally bound to a device.
    fn claims(&self, user: &str, groups: &[&str], ttl: Duration, device: Option<&str>) -> Claims {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let (_, mut claims) = self
            .app
            .authn
            .keys
            .mint(user, &groups, ttl, self.clock.unix())
            .unwrap();
        claims.device = device.map(str::to_owned);
        claims.uv = device.is_some();
        claims
    }

    /// Brokers a session to `pacs` (stages 3–6) and serves it (stage 7) with an in-memory
    /// client; returns the client's end and the supervising task.
    async fn open(&self, claims: Claims) -> (DuplexStream, tokio::task::JoinHandle<()>, String) {
        let subject = self.app.authn.subject(claims, peer());
        let started = self.clock.instant();
        let Opened {
            tunnel,
            upstream,
            handler,
            ..
        } = match self.app.broker.open(subject, "pacs", None, started).await {
            Ok(o) => o,
            Err(resp) => panic!("refused: {}", resp.status()),
        };
        let id = tunnel.session.id.clone();
        let (client, ours) = tokio::io::duplex(64 * 1024);
        let access = self.app.access.clone();
        let task = tokio::spawn(async move {
            access
                .supervise(tunnel, handler, Box::new(ours), upstream, None)
                .await
        });
        (client, task, id)
    }

    /// Stages 3–6 for `subject`, which must be refused; the answer.
    async fn refused(
        &self,
        subject: postern_gateway::authn::Subject,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        match self
            .app
            .broker
            .open(subject, "pacs", None, self.clock.instant())
            .await
        {
            Ok(_) => panic!("a tunnel opened that must not"),
            Err(r) => r,
        }
    }

    /// Starts stages 3–6 in a task and lets the first second of the dial pass; the task
    /// answers Ok, or the refusal's status.
    async fn setup_in_background(
        &self,
        claims: Claims,
    ) -> tokio::task::JoinHandle<Result<(), u16>> {
        let subject = self.app.authn.subject(claims, peer());
        let app = self.app.clone();
        let started = self.clock.instant();
        let setup = tokio::spawn(async move {
            app.broker
                .open(subject, "pacs", None, started)
                .await
                .map(|_| ())
                .map_err(|r| r.status().as_u16())
        });
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        setup
    }

    fn events(&self, kind: EventType, session: &str) -> Vec<Event> {
        self.audit
            .of_type(kind)
            .into_iter()
            .filter(|e| e.session_id.as_deref() == Some(session))
            .collect()
    }

    fn end(&self, session: &str) -> Event {
        let ends = self.events(EventType::SessionEnd, session);
        assert_eq!(ends.len(), 1, "exactly one session.end for {session}");
        ends.into_iter().next().unwrap()
    }

    fn device(&self, id: &str, user: &str) -> DeviceRec {
        DeviceRec {
            id: id.into(),
            user: user.into(),
            name: "home laptop".into(),
            status: DeviceStatus::Active,
            credential_id: format!("cred-{id}"),
            aaguid: "00000000-0000-0000-0000-000000000000".into(),
            sign_count: 0,
            user_verified: true,
            backup_eligible: false,
            backup_state: false,
            transports: vec![],
            created: START,
            last_seen: None,
            approved: Some(START),
            approved_by: Some("test".into()),
            revoked: None,
            revoked_reason: None,
            posture: None,
            passkey: serde_json::Value::Null,
        }
    }
}

/// Echo round trip through the session, proving it relays.
async fn ping(client: &mut DuplexStream) {
    client.write_all(b"C-ECHO").await.unwrap();
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"C-ECHO");
}

/// Time that passed on the test clock since `from`.
fn since(clock: &TestClock, from: tokio::time::Instant) -> Duration {
    clock.instant() - from
}

#[tokio::test(start_paused = true)]
async fn a_session_ends_at_the_rules_maximum_duration() {
    let f = fixture().await;
    let claims = f.claims(
        "ann@truro.nhs.uk",
        &["radiologists"],
        Duration::from_secs(8 * 3600),
        None,
    );
    let t0 = f.clock.instant();
    let (mut client, task, id) = f.open(claims).await;
    ping(&mut client).await;
    assert_eq!(f.events(EventType::SessionStart, &id).len(), 1);
    task.await.unwrap();
    assert_eq!(since(&f.clock, t0), Duration::from_secs(600));
    let end = f.end(&id);
    assert_eq!(end.close_reason.as_deref(), Some("max_duration"));
    assert_eq!(end.duration_ms, Some(600_000));
    assert_eq!(end.bytes_up, Some(6));
    assert_eq!(end.bytes_down, Some(6));
}

#[tokio::test(start_paused = true)]
async fn a_session_never_outlives_its_token() {
    let f = fixture().await;
    let claims = f.claims(
        "ann@truro.nhs.uk",
        &["radiologists"],
        Duration::from_secs(240),
        None,
    );
    let t0 = f.clock.instant();
    let (mut client, task, id) = f.open(claims).await;
    ping(&mut client).await;
    task.await.unwrap();
    assert_eq!(since(&f.clock, t0), Duration::from_secs(240));
    assert_eq!(f.end(&id).close_reason.as_deref(), Some("token_expired"));
}

#[tokio::test(start_paused = true)]
async fn a_policy_reload_withdraws_access_and_shortens_limits() {
    let f = fixture().await;
    let ann = f.claims(
        "ann@truro.nhs.uk",
        &["radiologists"],
        Duration::from_secs(8 * 3600),
        None,
    );
    let lee = f.claims(
        "lee@truro.nhs.uk",
        &["locums"],
        Duration::from_secs(8 * 3600),
        None,
    );
    let t0 = f.clock.instant();
    let (_ann_client, ann_task, ann_id) = f.open(ann).await;
    let (_lee_client, lee_task, lee_id) = f.open(lee).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    // Locums lose access; everyone's maximum drops to 5 minutes.
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        POLICY
            .replace(r#"["radiologists", "locums"]"#, r#"["radiologists"]"#)
            .replace(r#"max_session = "10m""#, r#"max_session = "5m""#),
    )
    .unwrap();
    let reloaded =
        postern_gateway::access::policy_watch::reload(&f.app.access, &policy, "test").await;
    assert!(reloaded);
    lee_task.await.unwrap();
    assert_eq!(since(&f.clock, t0), Duration::from_secs(60));
    assert_eq!(
        f.end(&lee_id).close_reason.as_deref(),
        Some("access_withdrawn")
    );
    let terminated = f.events(EventType::SessionTerminated, &lee_id);
    assert_eq!(terminated.len(), 1);
    let detail = terminated[0].detail.clone().unwrap_or_default();
    assert!(detail.starts_with("policy reloaded:"), "{detail}");
    assert_eq!(terminated[0].decision.as_ref().unwrap().effect, "deny");
    // Ann stays, under the shorter limit counted from her start.
    ann_task.await.unwrap();
    assert_eq!(since(&f.clock, t0), Duration::from_secs(300));
    assert_eq!(f.end(&ann_id).close_reason.as_deref(), Some("max_duration"));
    assert!(f.events(EventType::SessionTerminated, &ann_id).is_empty());
}

#[tokio::test(start_paused = true)]
async fn time_bound_access_ends_when_its_validity_passes() {
    let f = fixture().await;
    let claims = f.claims(
        "oc@truro.nhs.uk",
        &["on-call"],
        Duration::from_secs(8 * 3600),
        None,
    );
    let t0 = f.clock.instant();
    let (mut client, task, id) = f.open(claims).await;
    ping(&mut client).await;
    let start = &f.events(EventType::SessionStart, &id)[0];
    let decision = start.decision.as_ref().unwrap();
    assert_eq!(decision.rule.as_deref(), Some("on-call-until-half-past"));
    assert_eq!(
        decision.valid_until.as_deref(),
        Some("2030-01-07T10:30:00Z")
    );
    task.await.unwrap();
    assert_eq!(since(&f.clock, t0), Duration::from_secs(30 * 60));
    assert_eq!(f.end(&id).close_reason.as_deref(), Some("access_withdrawn"));
    let terminated = f.events(EventType::SessionTerminated, &id);
    assert!(terminated[0]
        .detail
        .as_deref()
        .unwrap_or_default()
        .starts_with("time-bound access ended"));
}

#[tokio::test(start_paused = true)]
async fn revoking_a_device_or_a_user_ends_exactly_their_sessions() {
    let f = fixture().await;
    for (id, user) in [("dev-a", "ann@x"), ("dev-b", "ann@x"), ("dev-c", "cat@x")] {
        f.store.add_device(f.device(id, user)).await.unwrap();
    }
    f.app.authn.reload(&*f.app.store).await.unwrap();
    let ttl = Duration::from_secs(8 * 3600);
    let groups = ["radiologists"];
    let (_a, a_task, a) = f.open(f.claims("ann@x", &groups, ttl, Some("dev-a"))).await;
    let (_b, _b_task, b) = f.open(f.claims("ann@x", &groups, ttl, Some("dev-b"))).await;
    let (_c, c_task, c) = f.open(f.claims("cat@x", &groups, ttl, Some("dev-c"))).await;
    let (_d, _d_task, d) = f.open(f.claims("dan@x", &groups, ttl, None)).await;
    let revocations = postern_gateway::access::revocations::Revocations {
        store: f.app.store.clone(),
        authn: f.app.authn.clone(),
        access: f.app.access.clone(),
        registry: f.app.registry.clone(),
    };
    let watch = tokio::spawn(revocations.watch(CancellationToken::new()));
    tokio::task::yield_now().await;

    f.store
        .update_device(
            "dev-a".into(),
            Box::new(|d| {
                d.status = DeviceStatus::Revoked;
                Ok(())
            }),
        )
        .await
        .unwrap();
    a_task.await.unwrap();
    assert_eq!(f.end(&a).close_reason.as_deref(), Some("device_revoked"));
    let t = f.events(EventType::SessionTerminated, &a);
    assert!(t[0]
        .detail
        .as_deref()
        .unwrap()
        .starts_with("device revoked"));
    assert_eq!(t[0].device.as_ref().unwrap().id, "dev-a");

    f.store
        .revoke_user("cat@x".into(), f.clock.unix())
        .await
        .unwrap();
    c_task.await.unwrap();
    assert_eq!(f.end(&c).close_reason.as_deref(), Some("user_revoked"));
    assert!(f.events(EventType::SessionEnd, &b).is_empty());
    assert!(f.events(EventType::SessionEnd, &d).is_empty());
    // Tokens issued before the user revocation are refused; later ones are not.
    let devices = &f.app.authn.devices;
    assert!(devices.user_revoked("cat@x", f.clock.unix() - 5));
    assert!(!devices.user_revoked("cat@x", f.clock.unix() + 5));
    watch.abort();
}

#[tokio::test(start_paused = true)]
async fn signing_out_ends_the_tokens_sessions_at_once() {
    let f = fixture().await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let jti = claims.jti.clone();
    let other = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let (_c1, t1, s1) = f.open(claims).await;
    let (_c2, _t2, s2) = f.open(other).await;
    let ended = postern_gateway::authn::SessionControl::end_token(
        &*f.app.access.sessions,
        &jti,
        "token_revoked",
    );
    assert_eq!(ended, 1);
    t1.await.unwrap();
    assert_eq!(f.end(&s1).close_reason.as_deref(), Some("token_revoked"));
    assert!(f.events(EventType::SessionEnd, &s2).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_denial_is_audited_with_its_reason_and_nothing_is_opened() {
    let f = fixture().await;
    let claims = f.claims("eve@x", &["visitors"], Duration::from_secs(3600), None);
    let subject = f.app.authn.subject(claims, peer());
    let resp = f.refused(subject).await;
    assert_eq!(resp.status().as_u16(), 403);
    let denied = f.audit.of_type(EventType::SessionDenied);
    assert_eq!(denied.len(), 1);
    let d = denied[0].decision.as_ref().unwrap();
    assert_eq!(d.effect, "deny");
    assert!(d.reason.contains("no rule allows"), "{}", d.reason);
    assert!(f.audit.of_type(EventType::SessionStart).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_audit_log_refuses_new_sessions() {
    let f = fixture().await;
    f.audit.set_failing(true);
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let subject = f.app.authn.subject(claims, peer());
    let resp = f.refused(subject).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get(postern_proto::wire::HDR_REASON)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.contains("audit log")),
        Some(true)
    );
}

/// The whole gateway through `serve(listeners, shutdown)`: a real HTTP/2 `CONNECT` over TLS on
/// loopback, the echo upstream, and the audit trail in the memory sink. Real time here: the
/// sockets need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_through_serve_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let config = Config::local(&dir.path().join("state"), &policy);
    let listeners = Listeners::bind(&config).await.unwrap();
    let addr = listeners.clients.local_addr().unwrap();
    let audit = MemorySink::shared();
    let clock = Arc::new(TestClock::starting_at(SystemTime::now()));
    let seams = Seams {
        clock: clock.clone(),
        store: Arc::new(MemoryStore::default()),
        audit: audit.clone(),
        upstream: Some(Arc::new(Echo::new(Duration::ZERO))),
    };
    let connector_addr = listeners.connectors.local_addr().unwrap();
    let app = App::build(config.clone(), connector_addr, seams)
        .await
        .unwrap();
    let (token, _) = app
        .authn
        .keys
        .mint(
            "ann@x",
            &["radiologists".into()],
            Duration::from_secs(600),
            clock.unix(),
        )
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(postern_gateway::serve(app, listeners, async move {
        let _ = stop_rx.await;
        Stop::Now
    }));

    // Trust the gateway's CA, speak HTTP/2.
    let ca = std::fs::read_to_string(config.state_dir.join("server-ca.pem")).unwrap();
    let roots = postern_net::tls::certs_from_pem(&ca, "gateway CA").unwrap();
    let tls = postern_net::tls::client_config(roots, None, &[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                stream,
            ))
            .await
            .unwrap();
    tokio::spawn(conn);

    let connect = |token: &str| {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("pacs:0")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // A forged token is refused and audited without a session.
    let refused = sender.send_request(connect("not-a-token")).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    let resp = sender.send_request(connect(&token)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let session = resp
        .headers()
        .get(postern_proto::wire::HDR_SESSION)
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    tunnel.write_all(b"C-FIND").await.unwrap();
    let mut buf = [0u8; 6];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"C-FIND");
    tunnel.shutdown().await.unwrap();
    drop(tunnel);

    // The session ends with the client's close.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ends: Vec<Event> = audit
                .of_type(EventType::SessionEnd)
                .into_iter()
                .filter(|e| e.session_id.as_deref() == Some(session.as_str()))
                .collect();
            if let Some(e) = ends.into_iter().next() {
                return e;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("session.end within 10 s");
    assert_eq!(end.close_reason.as_deref(), Some("client_closed"));
    assert_eq!(end.bytes_up, Some(6));
    // A refusal before authentication is audited in aggregate, not as session.denied.
    assert!(audit.of_type(EventType::SessionDenied).is_empty());
    let refused = audit.of_type(EventType::AccessRefusedUnauthenticated);
    assert_eq!(refused.len(), 1);
    let summary = refused[0].refused.as_ref().unwrap();
    assert_eq!(
        (summary.reason.as_str(), summary.count),
        ("token_malformed", 1)
    );
    assert!(!format!("{:?}", refused[0]).contains("not-a-token"));
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    assert_eq!(audit.of_type(EventType::GatewayStopped).len(), 1);
}

/// A revocation that lands between authentication and registration is not missed: the
/// broker looks again once the session is registered (the revocation path scans the registry
/// after marking the token), so the session ends before a byte is relayed.
#[tokio::test(start_paused = true)]
async fn a_token_revoked_while_its_session_starts_never_relays() {
    let f = fixture().await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let subject = f.app.authn.subject(claims.clone(), peer());
    // Authentication already happened (the subject exists); now the user signs out.
    f.app.authn.revoke_jti(&claims.jti);
    let resp = f.refused(subject).await;
    assert_eq!(resp.status().as_u16(), 401);
    let starts = f.audit.of_type(EventType::SessionStart);
    assert_eq!(starts.len(), 1);
    let id = starts[0].session_id.clone().unwrap();
    assert_eq!(f.end(&id).close_reason.as_deref(), Some("token_revoked"));
    assert_eq!(f.app.access.sessions.len(), 0);
}

/// Continuous authorization at scale: 10,000 live sessions, a reload that withdraws access
/// from half of them.
#[tokio::test(start_paused = true)]
async fn reevaluating_ten_thousand_live_sessions() {
    use postern_gateway::access::events::{decision_ref, endpoint_ref};
    use postern_gateway::access::sessions::Session;
    let f = fixture().await;
    let policy = f.app.policy();
    let endpoint = policy.endpoint("pacs").unwrap().clone();
    let mut kills = Vec::new();
    for i in 0..10_000 {
        let group = if i % 2 == 0 { "radiologists" } else { "locums" };
        let claims = f.claims(
            &format!("user{i}@x"),
            &[group],
            Duration::from_secs(3600),
            None,
        );
        let subject = f.app.authn.subject(claims, peer());
        let permit =
            postern_gateway::access::authorize(&subject, "pacs", None, &policy, &*f.clock).unwrap();
        let session = Arc::new(Session {
            id: format!("sess-{i}"),
            subject,
            endpoint: endpoint_ref(&endpoint),
            decision: decision_ref(&permit.decision),
            connector: None,
            justification: None,
            justification_given: None,
            report_only: Vec::new(),
            egress_class: None,
            started: f.clock.instant(),
            web: false,
        });
        kills.push(f.app.access.register(session, permit.deadline).0);
    }
    let withdrawn = postern_policy::Policy::parse(
        &POLICY.replace(r#"["radiologists", "locums"]"#, r#"["radiologists"]"#),
        "policy.toml",
    )
    .unwrap();
    let outcome = f
        .app
        .access
        .sessions
        .reevaluate(&withdrawn, &f.app.access.audit, "test reload");
    assert_eq!(outcome.checked, 10_000);
    assert_eq!(outcome.terminated, 5_000);
    assert_eq!(kills.iter().filter(|k| k.is_killed()).count(), 5_000);
    assert!(kills[1].is_killed() && !kills[0].is_killed());
    assert_eq!(kills[1].reason(), "access_withdrawn");
    assert_eq!(f.audit.of_type(EventType::SessionTerminated).len(), 5_000);
}

/// A client that gives up while the connector is still dialling (its request future is
/// dropped) leaves no `session.start` without an end and no ghost in the registry.
#[tokio::test(start_paused = true)]
async fn a_client_that_gives_up_during_setup_leaves_no_open_session() {
    let f = fixture_with(Arc::new(Echo::new(STALL))).await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let subject = f.app.authn.subject(claims, peer());
    let setup = f.app.broker.open(subject, "pacs", None, f.clock.instant());
    assert!(tokio::time::timeout(Duration::from_secs(3), setup)
        .await
        .is_err());
    // The end is written by a task the dropped setup spawned.
    for _ in 0..100 {
        if f.app.access.sessions.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let starts = f.audit.of_type(EventType::SessionStart);
    assert_eq!(starts.len(), 1);
    let id = starts[0].session_id.clone().unwrap();
    let end = f.end(&id);
    assert_eq!(end.close_reason.as_deref(), Some("client_closed"));
    assert!(end.detail.as_deref().unwrap().contains("went away"));
    assert!(f.app.access.sessions.is_empty());
}

/// [harden] finding 3: a sign-out while the connector is still dialling (2 s) reaches the
/// session, which is registered before the dial, and the session never goes live.
#[tokio::test(start_paused = true)]
async fn a_sign_out_during_the_dial_ends_the_session_before_it_goes_live() {
    let f = fixture_with(Arc::new(Echo::new(Duration::from_secs(2)))).await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let jti = claims.jti.clone();
    let setup = f.setup_in_background(claims).await;
    // Sign-out (what /auth/logout does after recording the revocation).
    f.app.authn.revoke_jti(&jti);
    let ended = postern_gateway::authn::SessionControl::end_token(
        &*f.app.access.sessions,
        &jti,
        "token_revoked",
    );
    assert_eq!(ended, 1, "the session being set up is found and ended");
    assert_eq!(setup.await.unwrap(), Err(403));
    let starts = f.audit.of_type(EventType::SessionStart);
    let id = starts[0].session_id.clone().unwrap();
    let end = f.end(&id);
    assert_eq!(end.close_reason.as_deref(), Some("token_revoked"));
    assert_eq!(end.bytes_up, Some(0));
    assert!(f.app.access.sessions.is_empty());
}

/// [harden] finding 3: a policy reload during the dial withdraws the session being set up.
#[tokio::test(start_paused = true)]
async fn a_policy_reload_during_the_dial_withdraws_the_session() {
    let f = fixture_with(Arc::new(Echo::new(Duration::from_secs(2)))).await;
    let claims = f.claims("lee@x", &["locums"], Duration::from_secs(3600), None);
    let setup = f.setup_in_background(claims).await;
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        POLICY.replace(r#"["radiologists", "locums"]"#, r#"["radiologists"]"#),
    )
    .unwrap();
    assert!(postern_gateway::access::policy_watch::reload(&f.app.access, &policy, "test").await);
    assert_eq!(setup.await.unwrap(), Err(403));
    let starts = f.audit.of_type(EventType::SessionStart);
    let id = starts[0].session_id.clone().unwrap();
    assert_eq!(f.end(&id).close_reason.as_deref(), Some("access_withdrawn"));
    assert_eq!(f.events(EventType::SessionTerminated, &id).len(), 1);
}

/// A token revoked by another process (another replica's sign-out, recorded in the shared
/// store) ends this gateway's sessions of that token when the store's change arrives.
#[tokio::test(start_paused = true)]
async fn a_token_revoked_elsewhere_ends_its_sessions_here() {
    let f = fixture().await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let jti = claims.jti.clone();
    let (_client, task, id) = f.open(claims).await;
    f.store
        .revoke_token(
            postern_gateway::state::RevokedToken {
                jti,
                exp: f.clock.unix() + 3600,
                user: "ann@x".into(),
                revoked: f.clock.unix(),
            },
            f.clock.unix(),
        )
        .await
        .unwrap();
    let revocations = postern_gateway::access::revocations::Revocations {
        store: f.app.store.clone(),
        authn: f.app.authn.clone(),
        access: f.app.access.clone(),
        registry: f.app.registry.clone(),
    };
    revocations.enforce().await;
    task.await.unwrap();
    assert_eq!(f.end(&id).close_reason.as_deref(), Some("token_revoked"));
    let t = f.events(EventType::SessionTerminated, &id);
    assert!(t[0].detail.as_deref().unwrap().starts_with("token revoked"));
}

/// Issue #12: an in-place rewrite of the policy file that leaves it empty, then half-written,
/// must not be loaded: live tunnels stay up, each refusal is audited and counted, and the
/// finished file is loaded.
#[tokio::test(start_paused = true)]
async fn an_empty_or_truncated_policy_rewrite_does_not_cut_live_tunnels() {
    let f = fixture().await;
    let claims = f.claims("ann@x", &["radiologists"], Duration::from_secs(3600), None);
    let (mut client, task, id) = f.open(claims).await;
    ping(&mut client).await;
    let policy = f.dir.path().join("policy.toml");
    let reload = || postern_gateway::access::policy_watch::reload(&f.app.access, &policy, "test");
    let rejected = || {
        f.app
            .access
            .metrics
            .policy_reloads
            .with_label_values(&["rejected"])
            .get()
    };
    let half = &POLICY[..POLICY.find("[[rules]]").unwrap()];
    for (content, error) in [("", "no endpoints and no rules"), (half, "no rules")] {
        std::fs::write(&policy, content).unwrap();
        assert!(!reload().await, "{content:?} was loaded");
        let refusals = f.audit.of_type(EventType::PolicyRejected);
        let detail = refusals
            .last()
            .and_then(|e| e.detail.clone())
            .unwrap_or_default();
        assert!(detail.contains(error), "{detail}");
    }
    assert_eq!(f.audit.of_type(EventType::PolicyRejected).len(), 2);
    assert_eq!(rejected(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        f.events(EventType::SessionTerminated, &id).is_empty(),
        "the tunnel was cut: {:?}",
        f.events(EventType::SessionTerminated, &id)
    );
    assert!(!task.is_finished());
    ping(&mut client).await;

    // The finished file (locums lose access) is loaded; Ann stays.
    std::fs::write(
        &policy,
        POLICY.replace(r#"["radiologists", "locums"]"#, r#"["radiologists"]"#),
    )
    .unwrap();
    assert!(reload().await);
    assert!(f.events(EventType::SessionTerminated, &id).is_empty());
    ping(&mut client).await;
}

/// The watcher loads a changed file only once its content has stayed the same for the whole
/// debounce: a file rewritten every 400 ms is never loaded, however often it is polled.
#[tokio::test(start_paused = true)]
async fn the_policy_watcher_waits_until_the_file_has_stopped_changing() {
    let f = fixture().await;
    let shutdown = CancellationToken::new();
    let policy = f.dir.path().join("policy.toml");
    let watcher = tokio::spawn(postern_gateway::access::policy_watch::watch_file(
        f.app.access.clone(),
        policy.clone(),
        shutdown.clone(),
    ));
    // 50 ms of the watcher's time; a little real time for a reload's blocking parse.
    async fn step() {
        tokio::time::advance(Duration::from_millis(50)).await;
        std::thread::sleep(Duration::from_millis(2));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    step().await;
    // Valid versions, each different, rewritten every 400 ms for 4 s.
    for i in 0..10 {
        std::fs::write(&policy, format!("{POLICY}\n# revision {i}\n")).unwrap();
        for _ in 0..8 {
            step().await;
        }
    }
    assert!(
        f.audit.of_type(EventType::PolicyReloaded).is_empty(),
        "{:?}",
        f.audit.of_type(EventType::PolicyReloaded)
    );
    // Then it stays: loaded once (bounded wait in the watcher's time).
    for _ in 0..100 {
        if !f.audit.of_type(EventType::PolicyReloaded).is_empty() {
            break;
        }
        step().await;
    }
    let reloads = f.audit.of_type(EventType::PolicyReloaded);
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert!(
        reloads[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("file changed:"),
        "{reloads:?}"
    );
    shutdown.cancel();
    watcher.await.unwrap();
}
