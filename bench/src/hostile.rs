//! Hostile HTTP/2 clients for the "Hostile clients" scenarios (docs/reliability.md,
//! tests/tests/hostile.rs):
//!
//! * `flood`: many requests carrying a junk bearer token (`CONNECT ENDPOINT:0` and
//!   `GET /v1/endpoints/ENDPOINT`, alternately) over a few HTTP/2 connections, optionally from
//!   a chosen source address; prints one JSON line with the answers by status.
//! * `h2-hold`: opens HTTP/2 connections, makes one request on each, then keeps them open and
//!   idle (answering the server's PINGs), optionally topping them up whenever the server
//!   closes one; prints what it opened, then one line per connection the server closed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};

use crate::net::print_line;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_config(ca_file: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?;
    let roots = postern_net::tls::certs_from_pem(&pem, &ca_file.display().to_string())?;
    Ok(Arc::new(postern_net::tls::client_config(
        roots,
        None,
        &[b"h2"],
    )?))
}

/// A TCP connection to `target`, from `source` (port chosen by the kernel) if given.
async fn dial(target: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding the source address {ip}"))?;
            sock.connect(target).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// How an HTTP/2 connection's driver ended.
type Ended = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// TLS + HTTP/2 handshake; the connection is driven by a task whose outcome `Ended` reports.
async fn h2_connect(
    cfg: &Arc<ClientConfig>,
    target: SocketAddr,
    source: Option<IpAddr>,
) -> anyhow::Result<(SendRequest<Empty<Bytes>>, Ended)> {
    let tcp = dial(target, source).await?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::from(target.ip()), tcp)
        .await
        .context("TLS handshake")?;
    let (send, conn) = postern_net::h2::client(postern_net::h2::CLIENT)
        .handshake(TokioIo::new(tls))
        .await
        .context("HTTP/2 handshake")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = conn.await.map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    Ok((send, rx))
}

fn request(method: Method, uri: &str, token: &str) -> anyhow::Result<Request<Empty<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())?)
}

/// What `flood` saw.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn note(&mut self, what: String) {
        *self.statuses.entry(what).or_default() += 1;
    }
}

/// `flood`: REQUESTS junk-token requests over CONNECTIONS connections (each with up to
/// PARALLEL requests in flight), at most RATE per second (0: as fast as answered).
#[allow(clippy::too_many_arguments)]
pub async fn flood(
    target: SocketAddr,
    ca_file: &Path,
    source: Option<IpAddr>,
    endpoint: &str,
    token: &str,
    requests: usize,
    connections: usize,
    parallel: usize,
    rate: f64,
) -> anyhow::Result<()> {
    let cfg = tls_config(ca_file)?;
    let authority = format!("{}:{}", target.ip(), target.port());
    let connect_uri = format!("{endpoint}:0");
    let check_uri = format!("https://{authority}/v1/endpoints/{endpoint}");
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    print_line(&serde_json::json!({"kind": "flood_started"}).to_string());
    let per_request = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut workers = Vec::new();
    for _ in 0..connections.max(1) * parallel.max(1) {
        let (cfg, next, tally) = (cfg.clone(), next.clone(), tally.clone());
        let (connect_uri, check_uri, token) =
            (connect_uri.clone(), check_uri.clone(), token.to_owned());
        workers.push(tokio::spawn(async move {
            let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                if let Some(step) = per_request {
                    tokio::time::sleep_until((started + step * i as u32).into()).await;
                }
                if conn.as_ref().is_none_or(|c| c.is_closed()) {
                    conn = match h2_connect(&cfg, target, source).await {
                        Ok((s, _)) => Some(s),
                        Err(e) => {
                            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                            t.note("connect_error".into());
                            t.first_error.get_or_insert(format!("{e:#}"));
                            continue;
                        }
                    };
                }
                let Some(send) = conn.as_mut() else { continue };
                let req = if i % 2 == 0 {
                    request(Method::CONNECT, &connect_uri, &token)
                } else {
                    request(Method::GET, &check_uri, &token)
                };
                let outcome = match req {
                    Ok(req) => match send.ready().await {
                        Ok(()) => tokio::time::timeout(IO_TIMEOUT, send.send_request(req))
                            .await
                            .map_err(|_| "timed out".to_owned())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(resp) => t.note(resp.status().as_u16().to_string()),
                    Err(e) => {
                        t.note("error".into());
                        t.first_error.get_or_insert(e);
                        conn = None;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let answered: u64 = t
        .statuses
        .iter()
        .filter(|(k, _)| k.parse::<u16>().is_ok())
        .map(|(_, v)| v)
        .sum();
    let mut out = serde_json::json!({
        "kind": "flood",
        "requests": requests,
        "answered": answered,
        "seconds": elapsed,
        "requests_per_s": requests as f64 / elapsed.max(1e-9),
        "statuses": t.statuses,
    });
    if let Some(e) = &t.first_error {
        out["first_error"] = e.clone().into();
    }
    print_line(&out.to_string());
    Ok(())
}

/// `h2-hold`: COUNT connections, each after one `GET PATH`; with `refill`, a connection the
/// server closes (or refuses) is replaced every 50 ms, as a client trying to keep the slots.
pub async fn h2_hold(
    target: SocketAddr,
    ca_file: &Path,
    source: Option<IpAddr>,
    count: usize,
    path: &str,
    refill: bool,
) -> anyhow::Result<()> {
    let cfg = tls_config(ca_file)?;
    let uri = format!("https://{}:{}{path}", target.ip(), target.port());
    let started = Instant::now();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(count.max(1));
    for slot in 0..count {
        let (cfg, uri, first_tx) = (cfg.clone(), uri.clone(), first_tx.clone());
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            loop {
                let one = async {
                    let (mut send, ended) = h2_connect(&cfg, target, source).await?;
                    send.ready().await?;
                    let resp = tokio::time::timeout(
                        IO_TIMEOUT,
                        send.send_request(request(Method::GET, &uri, "none")?),
                    )
                    .await??;
                    anyhow::Ok((send, ended, resp.status().as_u16()))
                };
                match tokio::time::timeout(IO_TIMEOUT, one).await {
                    Ok(Ok((send, ended, _status))) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Ok(())).await;
                        }
                        let opened = Instant::now();
                        let how = match ended.await {
                            Ok(Ok(())) => "closed".to_owned(),
                            Ok(Err(e)) => format!("error: {e}"),
                            Err(_) => "dropped".to_owned(),
                        };
                        drop(send);
                        print_line(
                            &serde_json::json!({
                                "kind": "h2_closed",
                                "slot": slot,
                                "after_ms": opened.elapsed().as_millis() as u64,
                                "how": how,
                            })
                            .to_string(),
                        );
                    }
                    Ok(Err(e)) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err(format!("{e:#}"))).await;
                        }
                    }
                    Err(_) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err("timed out".into())).await;
                        }
                    }
                }
                if !refill {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    drop(first_tx);
    let (mut opened, mut refused, mut first_error) = (0usize, 0usize, None);
    while let Some(r) = first_rx.recv().await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                refused += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let mut out = serde_json::json!({
        "kind": "h2_hold",
        "opened": opened,
        "refused": refused,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    if let Some(e) = first_error {
        out["first_error"] = e.into();
    }
    print_line(&out.to_string());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    Ok(())
}
