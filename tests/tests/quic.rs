//! The QUIC transport between the clinician's client and the gateway (issue #14), real
//! binaries: tunnels over QUIC go through the same checks as over HTTP/2 and are refused for
//! the same reasons; a network without UDP falls back to TCP within 3 s; hostile request frames
//! get clear refusals and leave the gateway serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_e2e::{echo_roundtrip, free_port, postern_connect_over, Deployment, Echo};
use postern_proto::wire::{TunnelRequest, TunnelResponse, ALPN_QUIC};

fn deployment(quic: bool) -> (Deployment, Echo) {
    let echo = Echo::start();
    let mut d = Deployment::prepare(&postern_e2e::echo_policy(echo.addr));
    if !quic {
        // A gateway without its UDP listener: to a client, a network that blocks UDP.
        let toml = d.gateway_toml();
        let text = std::fs::read_to_string(&toml).unwrap().replacen(
            "[limits]",
            "quic = false\n[limits]",
            1,
        );
        std::fs::write(&toml, text).unwrap();
    }
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    (d, echo)
}

fn connect(
    d: &Deployment,
    endpoint: &str,
    token: &std::path::Path,
    transport: &str,
) -> Result<(postern_e2e::Proc, std::net::SocketAddr), String> {
    let log = d.path(&format!("client-{transport}-{}.log", free_port()));
    postern_connect_over(&d.url(), endpoint, token, &d.ca_file(), log, transport)
}

#[test]
fn tunnels_over_quic_are_brokered_and_refused_as_over_http2() {
    let (d, _echo) = deployment(true);
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (mut p, addr) = connect(&d, "echo", &token, "quic").unwrap();
    for i in 0..5 {
        let msg = format!("over quic {i}");
        assert_eq!(
            echo_roundtrip(addr, msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    let start = d.wait_event("session.start", |e| e["user"] == "ann@hospital.test");
    assert_eq!(start["endpoint"]["name"], "echo", "{start}");
    p.kill();

    // A user the policy does not allow: the same refusal over either transport. The preflight
    // check (HTTPS) refuses before listening, so ask for the tunnel directly.
    let nobody = d.mint("bob@hospital.test", "porters", "1h");
    let (status, answer) = raw_request(&d, "echo", &std::fs::read_to_string(&nobody).unwrap());
    assert_eq!(status, 403, "{answer:?}");
    assert_eq!(answer.error.as_deref(), Some("policy_denied"), "{answer:?}");
    let denied = d.wait_event("session.denied", |e| e["user"] == "bob@hospital.test");
    let reason = denied["decision"]["reason"].as_str().unwrap_or("?");
    assert_eq!(
        answer.message.as_deref(),
        Some(reason),
        "{answer:?} vs {denied}"
    );
}

#[test]
fn without_udp_the_client_falls_back_to_tcp_within_three_seconds() {
    let (d, _echo) = deployment(false);
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (mut p, addr) = connect(&d, "echo", &token, "auto").unwrap();
    let t0 = Instant::now();
    assert_eq!(echo_roundtrip(addr, b"first").unwrap(), b"first");
    let first = t0.elapsed();
    assert!(
        first < Duration::from_millis(4500),
        "first tunnel took {first:?}"
    );
    // Later tunnels do not wait for QUIC again.
    let t1 = Instant::now();
    assert_eq!(echo_roundtrip(addr, b"second").unwrap(), b"second");
    assert!(t1.elapsed() < Duration::from_secs(1), "{:?}", t1.elapsed());
    p.kill();
    eprintln!("fell back to TCP: first tunnel {first:?}");

    // QUIC only: refused with the reason.
    let (mut p, addr) = connect(&d, "echo", &token, "quic").unwrap();
    assert!(echo_roundtrip(addr, b"x").is_err());
    std::thread::sleep(Duration::from_millis(200));
    let log = p.log_text();
    assert!(log.contains("QUIC (UDP) does not get through"), "{log}");
    p.kill();
}

/// Opens a QUIC connection of our own and sends one tunnel request: (status, answer).
fn raw_request(d: &Deployment, endpoint: &str, token: &str) -> (u16, TunnelResponse) {
    let req = TunnelRequest {
        endpoint: endpoint.to_owned(),
        token: token.trim().to_owned(),
        justification: None,
        resumable: false,
        resume: None,
    };
    let body = serde_json::to_vec(&req).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let r = raw_stream(d, &frame);
    (r.status, r)
}

/// Writes `bytes` on a new stream of a new QUIC connection and reads the answer frame.
fn raw_stream(d: &Deployment, bytes: &[u8]) -> TunnelResponse {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = bytes.to_vec();
    rt.block_on(async move {
        let conn = quic_conn(d).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            postern_net::quic::read_frame::<_, TunnelResponse>(&mut recv),
        )
        .await
        .expect("no answer within 10 s")
        .expect("an answer frame");
        conn.close(0u32.into(), b"done");
        r
    })
}

async fn quic_conn(d: &Deployment) -> quinn::Connection {
    let pem = std::fs::read_to_string(d.ca_file()).unwrap();
    let roots = postern_net::tls::certs_from_pem(&pem, "ca").unwrap();
    let tls = postern_net::tls::client_config(roots, None, &[ALPN_QUIC]).unwrap();
    let endpoint = postern_net::quic::client_endpoint(Arc::new(tls)).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], d.client_port));
    endpoint.connect(addr, "127.0.0.1").unwrap().await.unwrap()
}

#[test]
fn hostile_quic_requests_get_clear_refusals_and_the_gateway_keeps_serving() {
    let (mut d, _echo) = deployment(true);
    // A length far beyond the limit.
    let r = raw_stream(&d, &u32::MAX.to_be_bytes());
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error.as_deref(), Some("bad_request"));
    assert!(
        r.message.as_deref().unwrap_or("").contains("larger than"),
        "{r:?}"
    );
    // Not JSON.
    let mut junk = 7u32.to_be_bytes().to_vec();
    junk.extend_from_slice(b"{oops!}");
    let r = raw_stream(&d, &junk);
    assert_eq!(
        (r.status, r.error.as_deref()),
        (400, Some("bad_request")),
        "{r:?}"
    );
    assert!(
        r.message.as_deref().unwrap_or("").contains("malformed"),
        "{r:?}"
    );
    // A forged token.
    let (status, r) = raw_request(&d, "echo", "eyJhbGciOiJFZERTQSJ9.e30.AAAA");
    assert_eq!(status, 401, "{r:?}");
    // A name that is not an endpoint name, and one with a newline (not a header value).
    let (status, r) = raw_request(&d, "../etc", "t");
    assert!(status == 400 || status == 401, "{status} {r:?}");
    let (status, r) = raw_request(&d, "echo\nx", "t");
    assert_eq!(status, 400, "{r:?}");
    // The gateway still serves.
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (mut p, addr) = connect(&d, "echo", &token, "quic").unwrap();
    assert_eq!(echo_roundtrip(addr, b"still here").unwrap(), b"still here");
    p.kill();
    let gw = d.gateway.as_mut().unwrap();
    assert!(gw.is_running(), "{}", gw.log_text());
}

/// A source that writes as fast as it can into every connection it accepts, counting what
/// each connection took.
fn source() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>>,
) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counts: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>> = Arc::default();
    let shared = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
            shared.lock().unwrap().push(n.clone());
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                while conn.write_all(&chunk).is_ok() {
                    n.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (addr, counts)
}

/// Applications that stop reading during a download cost the gateway a bounded amount of
/// memory, whatever the size of the download: the resume engine stops reading at its replay
/// buffer, the link's flow control stops the connector, and the endpoint is held back by TCP
/// (docs/architecture.md, "Memory bounds").
#[test]
fn a_reader_that_stops_costs_the_gateway_a_bounded_amount_of_memory() {
    let (addr, counts) = source();
    let mut d = Deployment::prepare(&postern_e2e::echo_policy(addr));
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", addr.port().to_string())]);
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (mut p, local) = connect(&d, "echo", &token, "quic").unwrap();
    let rss_before = d.gateway.as_ref().unwrap().rss_kb();
    // Four tunnels whose applications never read.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(local).unwrap())
        .collect();
    postern_e2e::wait_for("four sources", Duration::from_secs(10), || {
        (counts.lock().unwrap().len() == 4).then_some(())
    });
    // Wait until every source is held back (no progress for a second).
    let total = || -> u64 {
        counts
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let mut last = total();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = total();
        if now == last {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the sources were never held back: {now} bytes taken"
        );
        last = now;
    }
    let rss_after = d.gateway.as_ref().unwrap().rss_kb();
    let grew_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    let per_tunnel_mib = last as f64 / 4.0 / (1024.0 * 1024.0);
    eprintln!(
        "4 stalled readers: the sources got {per_tunnel_mib:.1} MiB into each tunnel; the gateway grew {grew_mib:.1} MiB"
    );
    // Per tunnel the gateway holds at most its replay buffer (4 MiB), the pipe to the handler
    // and the relay's buffers, and the link stream's receive window (16 MiB); the rest waits
    // in the connector, the client and the kernels' socket buffers.
    assert!(
        grew_mib <= 4.0 * 24.0 + 16.0,
        "the gateway grew {grew_mib:.1} MiB for 4 stalled tunnels"
    );
    // The whole path holds back: nothing like an unbounded download was taken.
    assert!(
        per_tunnel_mib <= 64.0,
        "{per_tunnel_mib:.1} MiB taken per stalled tunnel"
    );
    drop(held);
    p.kill();
}
