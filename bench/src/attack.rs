//! Hostile load for the reliability scenarios (docs/reliability.md): slowloris connections and
//! garbage or truncated TLS / HTTP/2 / HTTP/1.1 input. Both stop by themselves after a given
//! time and print one JSON line saying what they did and how the server answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TLS config trusting `ca_file` (the gateway's server CA), TLS 1.3, ALPN `alpn`.
fn tls_config(ca_file: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?;
    let roots = postern_net::tls::certs_from_pem(&pem, &ca_file.display().to_string())?;
    Ok(Arc::new(postern_net::tls::client_config(
        roots, None, alpn,
    )?))
}

async fn tls_connect(
    cfg: &Arc<ClientConfig>,
    target: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::from(target.ip());
    Ok(tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await?)
}

/// How one slowloris connection went.
enum Drip {
    /// The server closed it after this long.
    Closed(Duration),
    /// Still open when the run ended.
    Open,
    /// Could not even connect (or complete TLS).
    Failed(String),
}

/// Sends `script` one byte per `interval` (then keeps sending filler bytes) until the server
/// closes the connection or `until` passes.
async fn drip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    script: Vec<u8>,
    interval: Duration,
    until: tokio::time::Instant,
) -> Drip {
    let t0 = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async move {
        let mut i = 0usize;
        loop {
            let b = script.get(i).copied().unwrap_or(b'a');
            i += 1;
            if w.write_all(&[b]).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    };
    let reader = async move {
        let mut buf = [0u8; 512];
        // Whatever the server sends (an alert, SETTINGS, a 408), the connection counts as
        // closed only when the server ends it.
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = writer => Drip::Closed(t0.elapsed()),
        _ = reader => Drip::Closed(t0.elapsed()),
        _ = tokio::time::sleep_until(until) => Drip::Open,
    }
}

/// What a slowloris connection sends, one byte at a time.
fn slow_script(mode: &str) -> anyhow::Result<Vec<u8>> {
    Ok(match mode {
        // A TLS record header announcing a 16 KiB ClientHello that never completes.
        "tls-hello" => {
            let mut v = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
            v.extend(std::iter::repeat_n(0x00, 64));
            v
        }
        // After a completed TLS handshake: the HTTP/2 preface, then a HEADERS frame header
        // announcing 16 KiB of header block that arrives one byte a second.
        "h2" => {
            let mut v = H2_PREFACE.to_vec();
            v.extend([0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]); // empty SETTINGS
            v.extend([0x00, 0x40, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x01]); // HEADERS, 16 KiB
            v
        }
        // After TLS with ALPN http/1.1: a request whose headers never end.
        "h1" => b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ".to_vec(),
        other => anyhow::bail!("unknown slowloris mode '{other}' (tls-hello, h2, h1)"),
    })
}

/// Keeps `count` connections to `target` open for `duration_s` seconds, each sending one byte
/// per `interval_ms`; a connection the server closes is opened again at once, as a real
/// slowloris does. Prints how many the server closed and how long each had lasted.
pub async fn slowloris(
    target: SocketAddr,
    count: usize,
    interval_ms: u64,
    duration_s: u64,
    mode: &str,
    ca_file: Option<&Path>,
) -> anyhow::Result<()> {
    let script = slow_script(mode)?;
    let tls = match (mode, ca_file) {
        ("tls-hello", _) => None,
        ("h2", Some(ca)) => Some(tls_config(ca, &[postern_proto::wire::ALPN_H2])?),
        ("h1", Some(ca)) => Some(tls_config(ca, &[postern_proto::wire::ALPN_HTTP1])?),
        _ => anyhow::bail!("mode {mode} needs --ca-file"),
    };
    let interval = Duration::from_millis(interval_ms.max(1));
    let until = tokio::time::Instant::now() + Duration::from_secs(duration_s);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (script, tls) = (script.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while tokio::time::Instant::now() < until {
                let d = match &tls {
                    None => match TcpStream::connect(target).await {
                        Ok(tcp) => drip(tcp, script.clone(), interval, until).await,
                        Err(e) => Drip::Failed(e.to_string()),
                    },
                    Some(cfg) => match tls_connect(cfg, target).await {
                        Ok(s) => drip(s, script.clone(), interval, until).await,
                        Err(e) => Drip::Failed(e.to_string()),
                    },
                };
                let again = matches!(d, Drip::Closed(_));
                outcomes.push(d);
                if !again {
                    break;
                }
            }
            outcomes
        }));
        // Open them over the first second rather than in one burst.
        tokio::time::sleep(Duration::from_millis(1000 / count.max(1) as u64)).await;
    }
    let mut closed = Vec::new();
    let (mut open, mut failed, mut first_error) = (0usize, 0usize, None);
    for t in tasks {
        for d in t.await? {
            match d {
                Drip::Closed(d) => closed.push(d.as_millis() as u64),
                Drip::Open => open += 1,
                Drip::Failed(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    closed.sort_unstable();
    let mut out = serde_json::Map::new();
    out.insert("kind".into(), "slowloris".into());
    out.insert("mode".into(), mode.into());
    out.insert("count".into(), count.into());
    out.insert("closed_by_server".into(), closed.len().into());
    out.insert("still_open".into(), open.into());
    out.insert("failed".into(), failed.into());
    out.insert(
        "closed_after_ms_p50".into(),
        crate::net::percentile(&closed, 50.0).into(),
    );
    out.insert(
        "closed_after_ms_max".into(),
        closed.last().copied().unwrap_or(0).into(),
    );
    out.insert(
        "elapsed_ms".into(),
        (started.elapsed().as_millis() as u64).into(),
    );
    if let Some(e) = first_error {
        out.insert("first_error".into(), e.into());
    }
    crate::net::print_line(&serde_json::Value::Object(out).to_string());
    Ok(())
}

/// A small deterministic generator (xorshift64*), so a failing run can be repeated by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One HTTP/2 frame with the given header fields and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend((stream & 0x7fff_ffff).to_be_bytes());
    v.extend(payload);
    v
}

/// The kinds of bad input, by name. TLS kinds need the CA (client listener only).
const RAW_KINDS: &[&str] = &[
    "random-bytes",
    "tls-record-truncated",
    "tls-record-oversized",
    "reset-after-connect",
];
const TLS_KINDS: &[&str] = &[
    "tls-then-random",
    "h2-truncated-frame",
    "h2-random-frames",
    "h2-bad-settings-and-hpack",
    "h1-malformed",
];

fn raw_payload(kind: &str, rng: &mut Rng) -> Vec<u8> {
    match kind {
        "random-bytes" => {
            let n = 1 + rng.below(4096) as usize;
            rng.bytes(n)
        }
        // A real-looking ClientHello record cut short at a random point.
        "tls-record-truncated" => {
            let body_len = 200 + rng.below(300) as usize;
            let mut v = vec![
                0x16,
                0x03,
                0x01,
                (body_len >> 8) as u8,
                body_len as u8,
                0x01,
            ];
            v.extend(rng.bytes(body_len - 1));
            let cut = 1 + rng.below(v.len() as u64 - 1) as usize;
            v.truncate(cut);
            v
        }
        // A record header announcing more than TLS allows, then random bytes.
        "tls-record-oversized" => {
            let mut v = vec![0x16, 0x03, 0x03, 0xff, 0xff];
            let n = rng.below(2048) as usize;
            v.extend(rng.bytes(n));
            v
        }
        _ => Vec::new(),
    }
}

fn tls_payload(kind: &str, rng: &mut Rng) -> Vec<u8> {
    match kind {
        "tls-then-random" => {
            let n = 1 + rng.below(8192) as usize;
            rng.bytes(n)
        }
        // The preface, SETTINGS, then a frame whose header promises more than is sent.
        "h2-truncated-frame" => {
            let mut v = H2_PREFACE.to_vec();
            v.extend(h2_frame(0x4, 0, 0, &[]));
            let len = 100 + rng.below(16_000) as usize;
            let mut f = h2_frame(0x1, 0x4, 1, &rng.bytes(len));
            f.truncate(9 + rng.below(len as u64) as usize);
            v.extend(f);
            v
        }
        // The preface, then frames of random type, flags, stream and (small) payload.
        "h2-random-frames" => {
            let mut v = H2_PREFACE.to_vec();
            for _ in 0..1 + rng.below(20) {
                let len = rng.below(512) as usize;
                let payload = rng.bytes(len);
                v.extend(h2_frame(
                    rng.below(12) as u8,
                    rng.next() as u8,
                    rng.next() as u32,
                    &payload,
                ));
            }
            v
        }
        // SETTINGS with invalid values, a window update overflow, HEADERS with garbage HPACK.
        "h2-bad-settings-and-hpack" => {
            let mut v = H2_PREFACE.to_vec();
            // ENABLE_PUSH = 7 and INITIAL_WINDOW_SIZE = 2^31 are both protocol errors.
            let mut s = vec![0x00, 0x02, 0x00, 0x00, 0x00, 0x07];
            s.extend([0x00, 0x04, 0x80, 0x00, 0x00, 0x00]);
            let pick = rng.below(3);
            match pick {
                0 => v.extend(h2_frame(0x4, 0, 0, &s)),
                1 => {
                    v.extend(h2_frame(0x4, 0, 0, &[]));
                    v.extend(h2_frame(0x8, 0, 0, &[0x7f, 0xff, 0xff, 0xff]));
                    v.extend(h2_frame(0x8, 0, 0, &[0x7f, 0xff, 0xff, 0xff]));
                }
                _ => {
                    v.extend(h2_frame(0x4, 0, 0, &[]));
                    let n = 1 + rng.below(200) as usize;
                    v.extend(h2_frame(0x1, 0x4 | 0x1, 1, &rng.bytes(n)));
                }
            }
            v
        }
        "h1-malformed" => {
            let variants: [&[u8]; 4] = [
                b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999\r\n\r\nabc",
                b"POST /v1/enroll HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /\x00\x01 HTTP/9.9\r\n\r\n",
                b"CONNECT echo:0 HTTP/1.1\r\nHost: echo:0\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
            ];
            variants[rng.below(variants.len() as u64) as usize].to_vec()
        }
        _ => Vec::new(),
    }
}

/// Sends `payload`, reads what comes back for up to `wait`, then drops the connection.
async fn send_and_drop<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    payload: &[u8],
    wait: Duration,
) {
    let _ = s.write_all(payload).await;
    let _ = s.flush().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// For `duration_s` seconds, `parallel` workers send bad input to `target`, each attempt on a
/// new connection. With `ca_file` the TLS-level kinds (a completed handshake followed by bad
/// HTTP/2 or HTTP/1.1) are mixed in. Prints the attempts per kind.
pub async fn garbage(
    target: SocketAddr,
    duration_s: u64,
    parallel: usize,
    seed: u64,
    ca_file: Option<&Path>,
) -> anyhow::Result<()> {
    let h2 = ca_file
        .map(|ca| tls_config(ca, &[postern_proto::wire::ALPN_H2]))
        .transpose()?;
    let h1 = ca_file
        .map(|ca| tls_config(ca, &[postern_proto::wire::ALPN_HTTP1]))
        .transpose()?;
    let until = Instant::now() + Duration::from_secs(duration_s);
    let mut workers = Vec::new();
    for w in 0..parallel.max(1) {
        let (h2, h1) = (h2.clone(), h1.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed
                .wrapping_add(w as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1);
            let mut counts: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
            while Instant::now() < until {
                let tls_ok = h2.is_some();
                let n_kinds = RAW_KINDS.len() + if tls_ok { TLS_KINDS.len() } else { 0 };
                let k = rng.below(n_kinds as u64) as usize;
                let kind = RAW_KINDS
                    .get(k)
                    .or_else(|| TLS_KINDS.get(k - RAW_KINDS.len()))
                    .copied()
                    .unwrap_or("random-bytes");
                // (attempts, attempts that got as far as sending their payload)
                let entry = counts.entry(kind).or_default();
                entry.0 += 1;
                let wait = Duration::from_millis(200);
                let tls = match kind {
                    "h1-malformed" => h1.clone(),
                    k if TLS_KINDS.contains(&k) => h2.clone(),
                    _ => None,
                };
                let sent = if let Some(cfg) = tls {
                    match tokio::time::timeout(Duration::from_secs(5), tls_connect(&cfg, target))
                        .await
                    {
                        Ok(Ok(s)) => {
                            send_and_drop(s, &tls_payload(kind, &mut rng), wait).await;
                            true
                        }
                        _ => false,
                    }
                } else {
                    match TcpStream::connect(target).await {
                        Ok(tcp) if kind == "reset-after-connect" => {
                            // SO_LINGER 0: closing sends RST instead of FIN.
                            let _ = tcp.set_zero_linger();
                            drop(tcp);
                            true
                        }
                        Ok(tcp) => {
                            send_and_drop(tcp, &raw_payload(kind, &mut rng), wait).await;
                            true
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            false
                        }
                    }
                };
                if sent {
                    entry.1 += 1;
                }
            }
            counts
        }));
    }
    let mut all: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for w in workers {
        for (k, (a, s)) in w.await? {
            let e = all.entry(k).or_default();
            e.0 += a;
            e.1 += s;
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("kind".into(), "garbage".into());
    out.insert("target".into(), target.to_string().into());
    out.insert("duration_s".into(), duration_s.into());
    out.insert(
        "attempts".into(),
        all.values().map(|(a, _)| a).sum::<u64>().into(),
    );
    out.insert(
        "delivered".into(),
        all.values().map(|(_, s)| s).sum::<u64>().into(),
    );
    let per: serde_json::Map<String, serde_json::Value> = all
        .into_iter()
        .map(|(k, (a, s))| {
            (
                k.to_owned(),
                serde_json::json!({"attempts": a, "delivered": s}),
            )
        })
        .collect();
    out.insert("per_kind".into(), per.into());
    crate::net::print_line(&serde_json::Value::Object(out).to_string());
    Ok(())
}
