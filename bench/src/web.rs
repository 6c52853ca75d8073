//! The measurements of `bench/web` (issue #16, web applications through the identity-aware
//! proxy), without a browser:
//!
//! * `serve`: the application — a plain HTTP/1.1 server answering `GET /bytes/N` with N bytes
//!   (streamed, `Content-Length` set), keep-alive.
//! * `make-study`: a deterministic DICOM study (Part 10 files, Explicit VR Little Endian), the
//!   generator of `tests/src/dicom.rs` (`make_large_study`), to load into Orthanc.
//! * `signin`: the browser's sign-in, played with plain HTTPS requests: the application's
//!   host answers 303 to the gateway's `/auth/web` (and sets the state cookie), which answers
//!   with the minted session token as the SSO cookie 303 to `/.postern/callback?code=…`, which
//!   sets the application cookie. `--count N` starts N application sessions (optionally one
//!   request each), then closes every connection: idle sessions.
//! * `get`: one keep-alive connection (plain HTTP/1.1, or HTTPS with HTTP/1.1 or HTTP/2 by
//!   ALPN), `GET PATH` repeated one after another; latency percentiles and throughput as one
//!   JSON line.
//! * `report`: the Markdown results from the JSON lines.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::net::{percentile, print_line};

#[derive(Subcommand)]
pub enum Cmd {
    /// The application: `GET /bytes/N` answers N bytes. Prints `listening on ADDR`.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Writes a deterministic DICOM study (INSTANCES files of ROWS × COLS 16-bit pixels) to
    /// DIR; prints `{study_uid, files, bytes}`.
    MakeStudy {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        instances: u32,
        #[arg(long, default_value_t = 1024)]
        rows: u16,
        #[arg(long, default_value_t = 1024)]
        cols: u16,
        #[arg(long, default_value_t = 16)]
        seed: u64,
    },
    /// The browser sign-in for an application, COUNT times; writes the last application
    /// cookie to --cookie-out and prints one JSON line.
    Signin(SigninOpts),
    /// Repeated `GET PATH` on one keep-alive connection; one JSON line.
    Get(GetOpts),
    /// Markdown results from the JSON lines of a `bench/web` run.
    Report {
        raw: PathBuf,
        #[arg(long = "meta")]
        meta: Vec<String>,
    },
}

#[derive(Args)]
pub struct SigninOpts {
    /// The gateway's client listener (every host is reached at this address).
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's server CA.
    #[arg(long)]
    ca_file: PathBuf,
    /// The session token (`postern-gateway session mint`), sent as the SSO cookie.
    #[arg(long)]
    token_file: PathBuf,
    /// The application's origin, e.g. `https://bench.apps.localhost:8443`.
    #[arg(long)]
    app_origin: String,
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Sign-ins running at once.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// After each sign-in, one `GET` of this path with the new cookie (its body read).
    #[arg(long)]
    request: Option<String>,
    #[arg(long)]
    cookie_out: Option<PathBuf>,
    #[arg(long = "label")]
    labels: Vec<String>,
}

#[derive(Args)]
pub struct GetOpts {
    /// Address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// HTTPS: the gateway's server CA (SNI and Host come from --host).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// HTTPS with HTTP/2 (ALPN h2); otherwise HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Host (and port) the request names, e.g. `bench.apps.localhost:8443`.
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long)]
    path: String,
    /// A file holding the application cookie's value.
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Requests made (and discarded) first.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Also print every measured request's latency (`latencies_us`).
    #[arg(long)]
    latencies: bool,
    #[arg(long = "label")]
    labels: Vec<String>,
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { listen } => serve(listen).await,
        Cmd::MakeStudy {
            dir,
            instances,
            rows,
            cols,
            seed,
        } => {
            let (uid, files, bytes) = make_study(&dir, instances, rows, cols, seed)?;
            print_line(
                &serde_json::json!({"study_uid": uid, "files": files, "bytes": bytes}).to_string(),
            );
            Ok(())
        }
        Cmd::Signin(o) => signin(o).await,
        Cmd::Get(o) => get(o).await,
        Cmd::Report { raw, meta } => report(&raw, &meta),
    }
}

// ---------------------------------------------------------------- the application

/// N bytes, handed out in 64 KiB slices of one shared buffer.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    print_line(&format!("listening on {}", listener.local_addr()?));
    let chunk = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("postern-bench: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let chunk = chunk.clone();
                async move {
                    let n = req
                        .uri()
                        .path()
                        .strip_prefix("/bytes/")
                        .and_then(|n| n.parse::<u64>().ok());
                    match n {
                        Some(n) => Response::builder()
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_LENGTH, n)
                            .body(Repeat { left: n, chunk }),
                        None => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Repeat {
                                left: 0,
                                chunk: Bytes::new(),
                            }),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------- the DICOM study

/// `make_large_study` of tests/src/dicom.rs (same bytes for the same arguments): returns the
/// study UID, the file count and the total size.
pub(crate) fn make_study(
    dir: &Path,
    instances: u32,
    rows: u16,
    cols: u16,
    seed: u64,
) -> anyhow::Result<(String, u32, u64)> {
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    std::fs::create_dir_all(dir)?;
    let study_uid = format!("1.2.3.14.{seed}");
    let series_uid = format!("{study_uid}.1");
    let pixel_len = usize::from(rows) * usize::from(cols) * 2;
    let mut total = 0u64;
    let mut pixels = vec![0u8; pixel_len];
    for n in 1..=instances {
        let sop_uid = format!("{series_uid}.{n}");
        let mut meta = Vec::new();
        element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
        element(&mut meta, 0x0002, 0x0002, b"UI", SC.as_bytes());
        element(&mut meta, 0x0002, 0x0003, b"UI", sop_uid.as_bytes());
        element(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_LE.as_bytes());
        element(&mut meta, 0x0002, 0x0012, b"UI", b"1.2.3.14.0.1");
        element(&mut meta, 0x0002, 0x0013, b"SH", b"POSTERN_E2E");
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        element(
            &mut head,
            0x0002,
            0x0000,
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        );
        head.extend_from_slice(&meta);
        let t = |v: &str| v.as_bytes().to_vec();
        let us = |v: u16| v.to_le_bytes().to_vec();
        let elements: [(u16, u16, &[u8; 2], Vec<u8>); 22] = [
            (0x0008, 0x0016, b"UI", t(SC)),
            (0x0008, 0x0018, b"UI", t(&sop_uid)),
            (0x0008, 0x0020, b"DA", t("20261125")),
            (0x0008, 0x0030, b"TM", t("101500")),
            (0x0008, 0x0050, b"SH", t(&format!("ACC{seed}"))),
            (0x0008, 0x0060, b"CS", t("OT")),
            (0x0008, 0x1030, b"LO", t("Postern web bench study")),
            (0x0010, 0x0010, b"PN", t("Web^Bench")),
            (0x0010, 0x0020, b"LO", t("WEBBENCH")),
            (0x0020, 0x000d, b"UI", t(&study_uid)),
            (0x0020, 0x000e, b"UI", t(&series_uid)),
            (0x0020, 0x0010, b"SH", t("WEB1")),
            (0x0020, 0x0011, b"IS", t("1")),
            (0x0020, 0x0013, b"IS", t(&n.to_string())),
            (0x0028, 0x0002, b"US", us(1)),
            (0x0028, 0x0004, b"CS", t("MONOCHROME2")),
            (0x0028, 0x0010, b"US", us(rows)),
            (0x0028, 0x0011, b"US", us(cols)),
            (0x0028, 0x0100, b"US", us(16)),
            (0x0028, 0x0101, b"US", us(16)),
            (0x0028, 0x0102, b"US", us(15)),
            (0x0028, 0x0103, b"US", us(0)),
        ];
        let mut ds = Vec::new();
        for (g, e, vr, v) in &elements {
            element(&mut ds, *g, *e, vr, v);
        }
        // SplitMix64, one stream per instance.
        let mut x = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(n));
        for chunk in pixels.chunks_mut(8) {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        element_header(&mut ds, 0x7fe0, 0x0010, b"OW", pixel_len as u32);
        let path = dir.join(format!("IMG{n:04}.dcm"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        f.write_all(&head)?;
        f.write_all(&ds)?;
        f.write_all(&pixels)?;
        f.flush()?;
        total += (head.len() + ds.len() + pixel_len) as u64;
    }
    Ok((study_uid, instances, total))
}

fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2;
    element_header(out, group, elem, vr, (value.len() + pad) as u32);
    out.extend_from_slice(value);
    if pad == 1 {
        out.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
}

fn element_header(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], len: u32) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

// ---------------------------------------------------------------- clients

fn tls_config(ca_file: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?;
    let roots = postern_net::tls::certs_from_pem(&pem, &ca_file.display().to_string())?;
    Ok(Arc::new(postern_net::tls::client_config(
        roots, None, alpn,
    )?))
}

type Empty0 = Empty<Bytes>;

/// One client connection, HTTP/1.1 or HTTP/2.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty0>),
    H2(hyper::client::conn::http2::SendRequest<Empty0>),
}

impl Conn {
    async fn open(
        target: SocketAddr,
        tls: Option<(&Arc<ClientConfig>, &str)>,
        http2: bool,
    ) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        tcp.set_nodelay(true)?;
        match tls {
            None => Conn::handshake(TokioIo::new(tcp), false).await,
            Some((cfg, name)) => {
                let name = ServerName::try_from(name.to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                anyhow::ensure!(h2 == http2, "ALPN: wanted h2 = {http2}, got h2 = {h2}");
                Conn::handshake(TokioIo::new(tls), h2).await
            }
        }
    }

    async fn handshake<T>(io: TokioIo<T>, h2: bool) -> anyhow::Result<Conn>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (send, conn) = postern_net::h2::client(postern_net::h2::CLIENT)
                .handshake(io)
                .await?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    /// `GET` (host, path) with these headers; the response with its body read (byte count)
    /// or kept.
    async fn get(
        &mut self,
        scheme: &str,
        host: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<(Response<String>, u64)> {
        let mut b = Request::builder().method("GET");
        b = match self {
            Conn::H1(_) => b.uri(path).header(header::HOST, host),
            Conn::H2(_) => b.uri(format!("{scheme}://{host}{path}")),
        };
        b = b.header(header::ACCEPT, "*/*");
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let req = b.body(Empty::new())?;
        let resp = match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, mut body) = resp.into_parts();
        let mut n = 0u64;
        // The start of an answer that is not a 200, for the error message.
        let mut start = Vec::new();
        while let Some(f) = body.frame().await {
            if let Some(d) = f?.data_ref() {
                n += d.len() as u64;
                if parts.status != StatusCode::OK && start.len() < 512 {
                    start.extend_from_slice(&d[..d.len().min(512 - start.len())]);
                }
            }
        }
        let text = String::from_utf8_lossy(&start).into_owned();
        Ok((Response::from_parts(parts, text), n))
    }
}

/// `https://host[:port]/path?query` → (`host[:port]`, `host`, `/path?query`).
fn split_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("not an https URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned();
    Ok((authority.to_owned(), host, path.to_owned()))
}

fn location(r: &Response<String>) -> anyhow::Result<String> {
    anyhow::ensure!(
        r.status() == StatusCode::SEE_OTHER,
        "expected 303, got {} {}",
        r.status(),
        r.body()
    );
    Ok(r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("303 without Location"))?
        .to_owned())
}

fn set_cookie(r: &Response<String>, name: &str) -> anyhow::Result<String> {
    let prefix = format!("{name}=");
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&prefix))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .ok_or_else(|| anyhow::anyhow!("no Set-Cookie {name}"))
}

/// One sign-in: the application cookie's value.
async fn one_signin(
    gateway: SocketAddr,
    cfg: &Arc<ClientConfig>,
    token: &str,
    app_origin: &str,
    request: Option<&str>,
) -> anyhow::Result<String> {
    let (app_auth, app_host, _) = split_url(&format!("{app_origin}/"))?;
    // 1. The application's host, no session: 303 to sign-in, state cookie.
    let mut c = Conn::open(gateway, Some((cfg, &app_host)), false).await?;
    let nav = [("sec-fetch-mode", "navigate".to_owned())];
    let (r, _) = c.get("https", &app_auth, "/", &nav).await?;
    let state = set_cookie(&r, "__Host-postern-state")?;
    let (auth, host, path) = split_url(&location(&r)?)?;
    // 2. The gateway's host with the SSO cookie: 303 to the callback with a code.
    let mut g = Conn::open(gateway, Some((cfg, &host)), false).await?;
    let sso = [
        nav[0].clone(),
        ("cookie", format!("__Host-postern-sso={token}")),
    ];
    let (r, _) = g.get("https", &auth, &path, &sso).await?;
    let (_, _, cb) = split_url(&location(&r)?)?;
    // 3. The callback on the application's host: the application cookie.
    let st = [
        nav[0].clone(),
        ("cookie", format!("__Host-postern-state={state}")),
    ];
    let (r, _) = c.get("https", &app_auth, &cb, &st).await?;
    location(&r)?;
    let app = set_cookie(&r, "__Host-postern-app")?;
    if let Some(p) = request {
        let (r, _) = c
            .get(
                "https",
                &app_auth,
                p,
                &[("cookie", format!("__Host-postern-app={app}"))],
            )
            .await?;
        anyhow::ensure!(
            r.status() == StatusCode::OK,
            "GET {p}: {} {}",
            r.status(),
            r.body()
        );
    }
    Ok(app)
}

async fn signin(o: SigninOpts) -> anyhow::Result<()> {
    let cfg = tls_config(&o.ca_file, &[b"http/1.1"])?;
    let token = std::fs::read_to_string(&o.token_file)
        .with_context(|| format!("reading {}", o.token_file.display()))?
        .trim()
        .to_owned();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..o.parallel.max(1) {
        let (next, cfg, token) = (next.clone(), cfg.clone(), token.clone());
        let (origin, request, count, gateway) =
            (o.app_origin.clone(), o.request.clone(), o.count, o.gateway);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            let mut last = None;
            let mut first_error = None;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                match one_signin(gateway, &cfg, &token, &origin, request.as_deref()).await {
                    Ok(c) => {
                        ok += 1;
                        last = Some(c);
                    }
                    Err(e) => {
                        first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (ok, last, first_error)
        }));
    }
    let (mut ok, mut last, mut first_error) = (0, None, None);
    for t in tasks {
        let (n, c, e) = t.await?;
        ok += n;
        last = c.or(last);
        first_error = first_error.or(e);
    }
    let secs = started.elapsed().as_secs_f64();
    if let (Some(path), Some(c)) = (&o.cookie_out, &last) {
        std::fs::write(path, c)?;
    }
    let mut out = crate::labels(&o.labels)?;
    out.insert("kind".into(), "web-signin".into());
    out.insert("ok".into(), ok.into());
    out.insert("failed".into(), (o.count - ok).into());
    out.insert("secs".into(), secs.into());
    if let Some(e) = first_error {
        out.insert("first_error".into(), e.into());
    }
    print_line(&Value::Object(out).to_string());
    anyhow::ensure!(ok > 0, "no sign-in succeeded");
    Ok(())
}

async fn get(o: GetOpts) -> anyhow::Result<()> {
    let cfg = match &o.ca_file {
        Some(f) => Some(tls_config(
            f,
            if o.http2 { &[b"h2"] } else { &[b"http/1.1"] },
        )?),
        None => None,
    };
    let sni = o
        .host
        .rsplit_once(':')
        .map_or(o.host.as_str(), |(h, _)| h)
        .to_owned();
    let mut conn = Conn::open(o.target, cfg.as_ref().map(|c| (c, sni.as_str())), o.http2).await?;
    let mut headers = Vec::new();
    if let Some(f) = &o.cookie_file {
        let c = std::fs::read_to_string(f)?.trim().to_owned();
        headers.push(("cookie", format!("__Host-postern-app={c}")));
    }
    let scheme = if cfg.is_some() { "https" } else { "http" };
    for _ in 0..o.warmup {
        let (r, _) = conn.get(scheme, &o.host, &o.path, &headers).await?;
        anyhow::ensure!(
            r.status() == StatusCode::OK,
            "GET {}: {} {}",
            o.path,
            r.status(),
            r.body()
        );
    }
    let mut lat = Vec::with_capacity(o.count);
    let mut bytes = 0u64;
    let started = Instant::now();
    for _ in 0..o.count {
        let t = Instant::now();
        let (r, n) = conn.get(scheme, &o.host, &o.path, &headers).await?;
        anyhow::ensure!(
            r.status() == StatusCode::OK,
            "GET {}: {} {}",
            o.path,
            r.status(),
            r.body()
        );
        lat.push(t.elapsed().as_micros() as u64);
        bytes += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut sorted = lat.clone();
    sorted.sort_unstable();
    let mut out = crate::labels(&o.labels)?;
    out.insert("kind".into(), "web-get".into());
    out.insert("path".into(), o.path.clone().into());
    out.insert("requests".into(), o.count.into());
    out.insert("bytes".into(), bytes.into());
    out.insert("secs".into(), secs.into());
    out.insert("mb_s".into(), (bytes as f64 / 1e6 / secs).into());
    out.insert("p50_us".into(), percentile(&sorted, 50.0).into());
    out.insert("p99_us".into(), percentile(&sorted, 99.0).into());
    out.insert(
        "mean_us".into(),
        (sorted.iter().sum::<u64>() as f64 / sorted.len().max(1) as f64).into(),
    );
    if o.latencies {
        out.insert("latencies_us".into(), lat.into());
    }
    print_line(&Value::Object(out).to_string());
    Ok(())
}

// ---------------------------------------------------------------- report

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(raw: &Path, meta: &[String]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(raw).with_context(|| format!("reading {}", raw.display()))?;
    let lines: Vec<Map<String, Value>> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.as_object().cloned())
        .collect();
    let s =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let f = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "### Setup\n");
    for m in meta {
        if let Some((k, v)) = m.split_once('=') {
            let _ = writeln!(out, "- **{k}**: {v}");
        }
    }

    // Small requests: pooled latencies per path kind.
    let mut small: BTreeMap<String, (Vec<u64>, usize)> = BTreeMap::new();
    let order = [
        "direct",
        "connect",
        "connect-tcp",
        "proxy-h1",
        "proxy-h2",
        "proxy-h1-noaudit",
    ];
    for m in lines
        .iter()
        .filter(|m| s(m, "kind") == "web-get" && s(m, "test") == "small")
    {
        let e = small.entry(s(m, "via")).or_default();
        if let Some(l) = m.get("latencies_us").and_then(Value::as_array) {
            e.0.extend(l.iter().filter_map(Value::as_u64));
        }
        e.1 += 1;
    }
    let p = |via: &str, q: f64| -> Option<f64> {
        let (l, _) = small.get(via)?;
        let mut v = l.clone();
        v.sort_unstable();
        Some(percentile(&v, q) as f64 / 1000.0)
    };
    if !small.is_empty() {
        let _ = writeln!(
            out,
            "\n### Small requests: `GET` of 1 KiB, one keep-alive connection, one request at a time (ms)\n"
        );
        let _ = writeln!(out, "| path | requests | p50 | p99 | added p50 / p99 vs `postern connect` (QUIC) | added p50 / p99 vs `postern connect` (TCP) |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for via in order {
            let Some((l, _)) = small.get(via) else {
                continue;
            };
            let (p50, p99) = (p(via, 50.0).unwrap_or(0.0), p(via, 99.0).unwrap_or(0.0));
            let added = |base: &str| match (via.starts_with("proxy"), p(base, 50.0), p(base, 99.0))
            {
                (true, Some(c50), Some(c99)) => format!("{:+.3} / {:+.3}", p50 - c50, p99 - c99),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {via} | {} | {p50:.3} | {p99:.3} | {} | {} |",
                l.len(),
                added("connect"),
                added("connect-tcp")
            );
        }
    }

    // Downloads: MB/s per round, median, ratio to connect.
    let mut dl: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for m in lines
        .iter()
        .filter(|m| s(m, "kind") == "web-get" && s(m, "test").starts_with("download"))
    {
        dl.entry((s(m, "test"), s(m, "via")))
            .or_default()
            .push(f(m, "mb_s"));
    }
    let tests: Vec<String> = {
        let mut t: Vec<String> = dl.keys().map(|(t, _)| t.clone()).collect();
        t.dedup();
        t
    };
    for t in tests {
        let what = lines
            .iter()
            .find(|m| s(m, "test") == t)
            .map(|m| s(m, "what"))
            .unwrap_or_default();
        let _ = writeln!(out, "\n### Download: {what} (MB/s, median of rounds; each round one `GET` on a fresh keep-alive connection)\n");
        let _ = writeln!(out, "| path | rounds | median MB/s | min | max | ratio to `postern connect` (QUIC) | ratio to `postern connect` (TCP) |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        let conn = dl
            .get(&(t.clone(), "connect".into()))
            .map(|v| median(&mut v.clone()));
        let conn_tcp = dl
            .get(&(t.clone(), "connect-tcp".into()))
            .map(|v| median(&mut v.clone()));
        for via in order {
            let Some(v) = dl.get(&(t.clone(), via.to_owned())) else {
                continue;
            };
            let mut v = v.clone();
            let med = median(&mut v);
            let ratio = |base: Option<f64>| match (via.starts_with("proxy"), base) {
                (true, Some(c)) if c > 0.0 => format!("{:.2}×", med / c),
                _ => String::new(),
            };
            let (r1, r2) = (ratio(conn), ratio(conn_tcp));
            let _ = writeln!(
                out,
                "| {via} | {} | {med:.0} | {:.0} | {:.0} | {r1} | {r2} |",
                v.len(),
                v.first().copied().unwrap_or(0.0),
                v.last().copied().unwrap_or(0.0)
            );
        }
    }

    // Memory: mem lines labelled phase=…, sessions=N.
    let mems: Vec<&Map<String, Value>> = lines
        .iter()
        .filter(|m| s(m, "kind") == "mem" && m.contains_key("phase"))
        .collect();
    if !mems.is_empty() {
        let _ = writeln!(out, "\n### Memory: gateway RSS / PSS with idle application sessions (each row against the row before)\n");
        let _ = writeln!(out, "| state | sessions | RSS (MiB) | PSS (MiB) | per added session, RSS (KiB) | per added session, PSS (KiB) |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let mut prev: Option<&Map<String, Value>> = None;
        for m in &mems {
            let n = f(m, "sessions");
            let (rss, pss) = (f(m, "rss_kb"), f(m, "pss_kb"));
            let (dr, dp) = match prev {
                Some(b) if n > f(b, "sessions") => {
                    let dn = n - f(b, "sessions");
                    (
                        format!("{:.1}", (rss - f(b, "rss_kb")) / dn),
                        format!("{:.1}", (pss - f(b, "pss_kb")) / dn),
                    )
                }
                _ => ("".into(), "".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {n} | {:.1} | {:.1} | {dr} | {dp} |",
                s(m, "what"),
                rss / 1024.0,
                pss / 1024.0
            );
            prev = Some(m);
        }
    }
    let signins: Vec<&Map<String, Value>> = lines
        .iter()
        .filter(|m| s(m, "kind") == "web-signin")
        .collect();
    if !signins.is_empty() {
        let _ = writeln!(
            out,
            "\nSign-ins: {}",
            signins
                .iter()
                .map(|m| format!(
                    "{}: {} ok, {} failed in {:.1} s",
                    s(m, "what"),
                    f(m, "ok"),
                    f(m, "failed"),
                    f(m, "secs")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    print!("{out}");
    Ok(())
}
