//! `postern-bench link …`: the measurements of `bench/link` (issue #14, the clinician's link),
//! run on the link emulator (`postern-bench wan`).
//!
//! * `serve` (in the cloud namespace): one server for every path. The first byte of a
//!   connection chooses: `E` echoes everything after it (the interactive stream), `D` and a
//!   big-endian u64 N sends N bytes and closes (the bulk download).
//! * `ping` (in the home namespace): a sequential request/response stream on one connection
//!   (SIZE bytes each way, one request every INTERVAL or at once if the last answer came
//!   later), with the link otherwise idle; latency percentiles.
//! * `loaded`: a bulk download of N bytes on one connection and, beside it, the same ping
//!   stream on another connection to the same place (through `postern connect`: two tunnels on
//!   one QUIC or HTTP/2 connection); the download's rate and the ping latencies taken while it
//!   ran.
//! * `recover`: a live ping stream, then the emulator's `addr` (a Wi-Fi switch) or `down`,
//!   a pause, `up` (sleep); the time from that command to the first answer that crossed the
//!   link after it — or the tunnel's reset, or nothing within the limit.
//! * `wan`: sends one control line to the emulator and prints its answer.
//! * `report`: the Markdown tables of `bench/link` from the JSON lines.
//!
//! The emulator is controlled through a FIFO that is its stdin (`--wan-ctl`); its answers are
//! read from the file its stdout goes to (`--wan-out`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::net::{percentile, print_line};
use crate::report::{median, met, ratio, read_jsonl};

/// The first byte of a connection to `serve`: echo the rest.
const MODE_ECHO: u8 = b'E';
/// The first byte of a connection to `serve`: a download (followed by a big-endian u64).
const MODE_DOWNLOAD: u8 = b'D';
/// How long opening a connection (through a tunnel: also the tunnel) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A bulk download that receives nothing for this long has failed.
const BULK_IDLE: Duration = Duration::from_secs(30);
/// One ping of an idle or loaded run that takes longer than this has failed.
const PING_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// The server of every path (run it in the cloud namespace): per connection, first byte
    /// `E` = echo the rest; `D` + big-endian u64 N = send N bytes, then close.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A sequential request/response stream with the link otherwise idle: COUNT measured
    /// round trips of SIZE bytes each way, one every INTERVAL_MS; one JSON line.
    Ping {
        #[arg(long)]
        target: SocketAddr,
        #[command(flatten)]
        ping: PingArgs,
        #[arg(long, default_value_t = 300)]
        count: usize,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// A download of BYTES through TARGET and, beside it, the ping stream on another
    /// connection to PING_TARGET (default: TARGET); one JSON line with the download's rate and
    /// the latencies of the pings sent while it ran.
    Loaded {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        ping_target: Option<SocketAddr>,
        #[arg(long, default_value_t = 200_000_000)]
        bytes: u64,
        /// Stop the download after this many seconds (0: no limit) and report the rate of
        /// what came until then.
        #[arg(long, default_value_t = 0.0)]
        max_secs: f64,
        #[command(flatten)]
        ping: PingArgs,
        /// `name=pid`: report the CPU time this process used per GB downloaded and its share
        /// of one core.
        #[arg(long = "cpu")]
        cpu: Vec<String>,
        #[command(flatten)]
        wan: WanArgs,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// One recovery trial: a ping stream through TARGET, then the emulator's `addr`, or `down`
    /// for DOWN_MS and `up`; how long after the command (`addr`, `up`) an answer arrives that
    /// crossed the link after it. One JSON line: outcome `ok`, `reset` or `stalled`.
    Recover {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_parser = ["addr", "down"])]
        event: String,
        #[arg(long, default_value_t = 5000)]
        down_ms: u64,
        /// Give up waiting for an answer this long after the command.
        #[arg(long, default_value_t = 15_000)]
        timeout_ms: u64,
        /// The stream runs this long before the event.
        #[arg(long, default_value_t = 1000)]
        before_ms: u64,
        #[command(flatten)]
        ping: PingArgs,
        #[command(flatten)]
        wan: WanArgs,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Sends one control line to the emulator and prints its JSON answer.
    Wan {
        #[command(flatten)]
        wan: WanArgs,
        command: String,
    },
    /// The Markdown results of `bench/link` from its JSON lines.
    Report {
        raw: PathBuf,
        /// `key=value` lines shown under "Setup".
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// `LABEL=FILE`: the JSON lines of a `bench/run --quick` (the loopback figures); one
        /// column per run.
        #[arg(long)]
        loopback: Vec<String>,
    },
}

/// The shape of the interactive stream.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PingArgs {
    /// Bytes of each request and of each answer (at least 8).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// One request every this many milliseconds (or at once, if the last answer came later).
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Round trips made (and discarded) before measuring.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

/// Where the emulator is controlled.
#[derive(clap::Args, Debug, Clone)]
pub struct WanArgs {
    /// The FIFO that is the emulator's stdin.
    #[arg(long)]
    wan_ctl: Option<PathBuf>,
    /// The file the emulator's stdout goes to.
    #[arg(long, requires = "wan_ctl")]
    wan_out: Option<PathBuf>,
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { listen } => serve(listen).await,
        Cmd::Ping {
            target,
            ping,
            count,
            labels,
        } => ping_idle(target, ping, count, &labels).await,
        Cmd::Loaded {
            target,
            ping_target,
            bytes,
            max_secs,
            ping,
            cpu,
            wan,
            labels,
        } => {
            let wan = WanCtl::from_args(&wan)?;
            let ping_target = ping_target.unwrap_or(target);
            if !max_secs.is_finite() || !(0.0..=86_400.0).contains(&max_secs) {
                bail!("--max-secs {max_secs} is outside 0..86400");
            }
            let limit = (max_secs > 0.0).then(|| Duration::from_secs_f64(max_secs));
            let load = Load {
                target,
                ping_target,
                bytes,
                limit,
            };
            loaded(load, ping, &cpu, wan.as_ref(), &labels).await
        }
        Cmd::Recover {
            target,
            event,
            down_ms,
            timeout_ms,
            before_ms,
            ping,
            wan,
            labels,
        } => {
            let wan = WanCtl::from_args(&wan)?.context(
                "recover needs --wan-ctl and --wan-out (the emulator's stdin and stdout)",
            )?;
            let event = match event.as_str() {
                "addr" => Event::Addr,
                _ => Event::Down(Duration::from_millis(down_ms)),
            };
            let t = Trial {
                event,
                timeout: Duration::from_millis(timeout_ms),
                before: Duration::from_millis(before_ms),
            };
            recover(target, ping, t, &wan, &labels).await
        }
        Cmd::Wan { wan, command } => {
            let wan = WanCtl::from_args(&wan)?.context("give --wan-ctl and --wan-out")?;
            let a = wan.command(&command).await?;
            print_line(&a.answer.to_string());
            Ok(())
        }
        Cmd::Report {
            raw,
            meta,
            loopback,
        } => report(&raw, &meta, &loopback),
    }
}

// ---------------------------------------------------------------- server

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    print_line(&format!("listening on {}", listener.local_addr()?));
    // What a download sends, over and over (not all zeros, in case anything compresses).
    let block: std::sync::Arc<Vec<u8>> =
        std::sync::Arc::new((0..1usize << 20).map(|i| (i % 251) as u8).collect());
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("postern-bench link serve: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let block = block.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(tcp, &block).await {
                eprintln!("postern-bench link serve: {e:#}");
            }
        });
    }
}

async fn serve_one(mut tcp: TcpStream, block: &[u8]) -> anyhow::Result<()> {
    let mut mode = [0u8; 1];
    if tcp.read(&mut mode).await? == 0 {
        return Ok(());
    }
    match mode[0] {
        MODE_ECHO => {
            let (mut r, mut w) = tcp.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        MODE_DOWNLOAD => {
            let mut n = [0u8; 8];
            tcp.read_exact(&mut n).await?;
            let mut left = u64::from_be_bytes(n);
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                tcp.write_all(&block[..k]).await?;
                left -= k as u64;
            }
            tcp.shutdown().await?;
            // Until the client has read it all and closed.
            let mut sink = [0u8; 512];
            while tcp.read(&mut sink).await? > 0 {}
        }
        other => bail!("unknown mode byte {other:#04x} (E: echo, D: download)"),
    }
    Ok(())
}

// ---------------------------------------------------------------- the ping stream

/// One connection in echo mode.
struct Pinger {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    size: usize,
    seq: u64,
    out: Vec<u8>,
    back: Vec<u8>,
}

async fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {target}: timed out"))?
        .with_context(|| format!("connecting to {target}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

impl Pinger {
    async fn open(target: SocketAddr, size: usize) -> anyhow::Result<Pinger> {
        anyhow::ensure!(size >= 8, "--size must be at least 8 bytes");
        let mut tcp = connect(target).await?;
        tcp.write_all(&[MODE_ECHO]).await?;
        let (r, w) = tcp.into_split();
        Ok(Pinger {
            r,
            w,
            size,
            seq: 0,
            out: vec![0; size],
            back: vec![0; size],
        })
    }

    /// One request and its answer; checks that the answer is the request.
    async fn once(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        self.out[..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in self.out[8..].iter_mut().enumerate() {
            *b = (seq as usize).wrapping_add(i) as u8;
        }
        self.w.write_all(&self.out).await?;
        let mut got = 0;
        while got < self.size {
            let n = self.r.read(&mut self.back[got..]).await?;
            if n == 0 {
                bail!("the connection was closed (end of stream)");
            }
            got += n;
        }
        if self.back != self.out {
            bail!("answer {seq} differs from its request: bytes lost, duplicated or reordered");
        }
        Ok(())
    }

    async fn warm_up(&mut self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            tokio::time::timeout(PING_TIMEOUT, self.once())
                .await
                .map_err(|_| anyhow::anyhow!("warm-up round trip {i} timed out"))?
                .with_context(|| format!("warm-up round trip {i}"))?;
        }
        Ok(())
    }
}

/// What the ping loop reports.
enum Tick {
    Done { sent: Instant, done: Instant },
    Failed { at: Instant, error: String },
}

/// Runs the stream until the receiver is dropped or a round trip fails (reported, then the
/// loop ends). A round trip has no time limit here: the caller decides what "too long" is.
async fn ping_loop(mut p: Pinger, interval: Duration, tx: mpsc::UnboundedSender<Tick>) {
    let mut slot = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(slot).await;
        let now = tokio::time::Instant::now();
        // The next slot; no catching up in bursts after a slow answer.
        slot = (slot + interval).max(now);
        let sent = Instant::now();
        let tick = match p.once().await {
            Ok(()) => Tick::Done {
                sent,
                done: Instant::now(),
            },
            Err(e) => Tick::Failed {
                at: Instant::now(),
                error: format!("{e:#}"),
            },
        };
        let failed = matches!(tick, Tick::Failed { .. });
        if tx.send(tick).is_err() || failed {
            return;
        }
    }
}

/// Latency figures (ms) of a set of round trips (µs).
fn latency_json(mut lat_us: Vec<u64>) -> Value {
    lat_us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let mean = if lat_us.is_empty() {
        0.0
    } else {
        lat_us.iter().sum::<u64>() as f64 / lat_us.len() as f64 / 1000.0
    };
    json!({
        "n": lat_us.len(),
        "p50_ms": ms(percentile(&lat_us, 50.0)),
        "p90_ms": ms(percentile(&lat_us, 90.0)),
        "p99_ms": ms(percentile(&lat_us, 99.0)),
        "max_ms": ms(lat_us.last().copied().unwrap_or(0)),
        "mean_ms": mean,
    })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

async fn ping_idle(
    target: SocketAddr,
    args: PingArgs,
    count: usize,
    labels: &[String],
) -> anyhow::Result<()> {
    let mut out = crate::labels(labels)?;
    out.insert("kind".into(), "ping".into());
    out.insert("target".into(), target.to_string().into());
    out.insert("size".into(), args.size.into());
    out.insert("interval_ms".into(), args.interval_ms.into());
    let result = async {
        let mut p = Pinger::open(target, args.size).await?;
        p.warm_up(args.warmup).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(ping_loop(p, Duration::from_millis(args.interval_ms), tx));
        let mut lat = Vec::with_capacity(count);
        let mut error = None;
        while lat.len() < count {
            match tokio::time::timeout(PING_TIMEOUT, rx.recv()).await {
                Ok(Some(Tick::Done { sent, done })) => lat.push(micros(done - sent)),
                Ok(Some(Tick::Failed { error: e, .. })) => {
                    error = Some(e);
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    error = Some(format!("no answer within {PING_TIMEOUT:?}"));
                    break;
                }
            }
        }
        task.abort();
        anyhow::Ok((lat, error))
    }
    .await;
    match result {
        Ok((lat, error)) => {
            out.insert("ping".into(), latency_json(lat));
            if let Some(e) = error {
                out.insert("error".into(), e.into());
            }
        }
        Err(e) => {
            out.insert("error".into(), format!("{e:#}").into());
        }
    }
    print_line(&Value::Object(out).to_string());
    Ok(())
}

// ---------------------------------------------------------------- bulk download

struct Bulk {
    bytes: u64,
    /// From the request to the first byte.
    first: Option<Duration>,
    /// From the request to the last byte (or to the time limit).
    elapsed: Duration,
    /// Stopped at the time limit before the last byte.
    capped: bool,
    error: Option<String>,
}

/// Downloads `bytes` through `target`, for at most `limit` (then it stops and counts what
/// came); `started` receives the moment the request was sent.
async fn download(
    target: SocketAddr,
    bytes: u64,
    limit: Option<Duration>,
    started: tokio::sync::oneshot::Sender<Instant>,
) -> anyhow::Result<Bulk> {
    let mut tcp = connect(target).await?;
    let mut req = [0u8; 9];
    req[0] = MODE_DOWNLOAD;
    req[1..].copy_from_slice(&bytes.to_be_bytes());
    let t0 = Instant::now();
    tcp.write_all(&req).await?;
    let _ = started.send(t0);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut first = None;
    let mut error = None;
    let mut capped = false;
    let deadline = limit.map(|l| t0 + l);
    loop {
        let wait = deadline.map_or(BULK_IDLE, |d| {
            BULK_IDLE.min(d.saturating_duration_since(Instant::now()))
        });
        match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => {
                if got < bytes {
                    error = Some(format!("the stream ended after {got} of {bytes} bytes"));
                }
                break;
            }
            Ok(Ok(n)) => {
                first.get_or_insert_with(|| t0.elapsed());
                got += n as u64;
                if got > bytes {
                    error = Some(format!("received {got} bytes, more than the {bytes} asked"));
                    break;
                }
            }
            Ok(Err(e)) => {
                error = Some(format!("after {got} of {bytes} bytes: {e}"));
                break;
            }
            Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                capped = true;
                break;
            }
            Err(_) => {
                error = Some(format!(
                    "nothing received for {BULK_IDLE:?} after {got} of {bytes} bytes"
                ));
                break;
            }
        }
        if got == bytes {
            // The last byte is the end of the measurement; the close follows.
            break;
        }
    }
    let elapsed = t0.elapsed();
    Ok(Bulk {
        bytes: got,
        first,
        elapsed,
        capped,
        error,
    })
}

/// The download of a `loaded` run.
struct Load {
    target: SocketAddr,
    ping_target: SocketAddr,
    bytes: u64,
    limit: Option<Duration>,
}

async fn loaded(
    load: Load,
    args: PingArgs,
    cpu: &[String],
    wan: Option<&WanCtl>,
    labels: &[String],
) -> anyhow::Result<()> {
    let Load {
        target,
        ping_target,
        bytes,
        limit,
    } = load;
    anyhow::ensure!(bytes > 0, "--bytes must be more than 0");
    let mut out = crate::labels(labels)?;
    out.insert("kind".into(), "loaded".into());
    out.insert("target".into(), target.to_string().into());
    out.insert("bytes_asked".into(), bytes.into());
    if let Some(l) = limit {
        out.insert("max_secs".into(), l.as_secs_f64().into());
    }
    out.insert("size".into(), args.size.into());
    out.insert("interval_ms".into(), args.interval_ms.into());
    let procs = crate::cpu::parse_procs(cpu)?;

    // The interactive stream first, so that its tunnel exists before the load starts.
    let mut p = match Pinger::open(ping_target, args.size).await {
        Ok(p) => p,
        Err(e) => {
            out.insert("error".into(), format!("ping stream: {e:#}").into());
            print_line(&Value::Object(out).to_string());
            return Ok(());
        }
    };
    if let Err(e) = p.warm_up(args.warmup).await {
        out.insert("error".into(), format!("ping stream: {e:#}").into());
        print_line(&Value::Object(out).to_string());
        return Ok(());
    }
    let wan_before = match wan {
        Some(w) => Some(w.command("stats").await?.answer),
        None => None,
    };
    let cpu_before = crate::cpu::snapshot(&procs)?;
    let t_start = Instant::now();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let dl = tokio::spawn(download(target, bytes, limit, started_tx));
    // The pings start with the download's request.
    let t0 = started_rx.await.ok();
    let pinger = tokio::spawn(ping_loop(p, Duration::from_millis(args.interval_ms), tx));
    let mut ticks = Vec::new();
    let mut dl = std::pin::pin!(dl);
    let mut ping_open = true;
    let bulk = loop {
        tokio::select! {
            r = &mut dl => break r,
            t = rx.recv(), if ping_open => match t {
                Some(t) => ticks.push(t),
                None => ping_open = false,
            },
        }
    };
    let t_end = Instant::now();
    let cpu_after = crate::cpu::snapshot(&procs)?;
    // The ping in flight when the download ended was sent under load: wait for it.
    let stop_waiting = Instant::now() + PING_TIMEOUT;
    loop {
        let last_sent_before_end = ticks.last().is_none_or(|t| match t {
            Tick::Done { sent, .. } => *sent < t_end,
            Tick::Failed { .. } => false,
        });
        if !last_sent_before_end || Instant::now() >= stop_waiting {
            break;
        }
        match tokio::time::timeout_at(stop_waiting.into(), rx.recv()).await {
            Ok(Some(t)) => {
                let after = matches!(&t, Tick::Done { sent, .. } if *sent >= t_end);
                ticks.push(t);
                if after {
                    break;
                }
            }
            _ => break,
        }
    }
    pinger.abort();
    let wan_after = match wan {
        Some(w) => Some(w.command("stats").await?.answer),
        None => None,
    };

    let mut lat = Vec::new();
    let mut ping_error = None;
    for t in &ticks {
        match t {
            Tick::Done { sent, done } => {
                if t0.is_some_and(|t0| *sent >= t0) && *sent < t_end {
                    lat.push(micros(*done - *sent));
                }
            }
            Tick::Failed { error, .. } => ping_error = Some(error.clone()),
        }
    }
    out.insert("ping".into(), latency_json(lat));
    if let Some(e) = ping_error {
        out.insert("ping_error".into(), e.into());
    }
    match bulk {
        Ok(Ok(b)) => {
            let secs = b.elapsed.as_secs_f64();
            out.insert("bytes".into(), b.bytes.into());
            out.insert("secs".into(), secs.into());
            if secs > 0.0 {
                out.insert("mbyte_s".into(), (b.bytes as f64 / secs / 1e6).into());
                out.insert("mbit_s".into(), (b.bytes as f64 * 8.0 / secs / 1e6).into());
            }
            if let Some(f) = b.first {
                out.insert("first_byte_ms".into(), (f.as_secs_f64() * 1000.0).into());
            }
            if b.capped {
                out.insert("capped".into(), true.into());
            }
            if let Some(e) = b.error {
                out.insert("error".into(), e.into());
            }
            if !procs.is_empty() && b.bytes > 0 && secs > 0.0 {
                let gb = b.bytes as f64 / 1e9;
                let used = crate::cpu::delta(&cpu_before, &cpu_after);
                let per: Map<String, Value> = used
                    .iter()
                    .map(|(k, us)| (k.clone(), (us / 1e6 / gb).into()))
                    .collect();
                out.insert("cpu_s_per_gb".into(), per.into());
                // Over the whole run (the download and the stream beside it).
                let wall = (t_end - t_start).as_secs_f64();
                let share: Map<String, Value> = used
                    .iter()
                    .map(|(k, us)| (k.clone(), (us / 1e6 / wall * 100.0).into()))
                    .collect();
                out.insert("cpu_core_pct".into(), share.into());
            }
        }
        Ok(Err(e)) => {
            out.insert("error".into(), format!("download: {e:#}").into());
        }
        Err(e) => {
            out.insert("error".into(), format!("download task: {e}").into());
        }
    }
    if let (Some(b), Some(a)) = (wan_before, wan_after) {
        out.insert("wan".into(), wan_delta(&b, &a));
    }
    print_line(&Value::Object(out).to_string());
    Ok(())
}

/// Per direction: packets and bytes forwarded and dropped by cause between two `stats`.
fn wan_delta(before: &Value, after: &Value) -> Value {
    let mut m = Map::new();
    for dir in ["down", "up"] {
        let d = |field: &str| {
            let ptr = format!("/{dir}/{field}");
            let a = after.pointer(&ptr).and_then(Value::as_u64).unwrap_or(0);
            let b = before.pointer(&ptr).and_then(Value::as_u64).unwrap_or(0);
            a.saturating_sub(b)
        };
        let mut o = Map::new();
        o.insert("packets".into(), d("packets").into());
        o.insert("bytes".into(), d("bytes").into());
        let mut dropped = Map::new();
        if let Some(causes) = after
            .pointer(&format!("/{dir}/dropped"))
            .and_then(Value::as_object)
        {
            for c in causes.keys() {
                dropped.insert(c.clone(), d(&format!("dropped/{c}")).into());
            }
        }
        o.insert("dropped".into(), dropped.into());
        m.insert(dir.into(), o.into());
    }
    Value::Object(m)
}

// ---------------------------------------------------------------- the emulator's control

struct WanCtl {
    ctl: PathBuf,
    out: PathBuf,
}

struct Answer {
    answer: Value,
    /// When the line was written.
    sent: Instant,
    /// When the answer was seen (polled every millisecond).
    answered: Instant,
}

impl WanCtl {
    fn from_args(a: &WanArgs) -> anyhow::Result<Option<WanCtl>> {
        match (&a.wan_ctl, &a.wan_out) {
            (Some(ctl), Some(out)) => Ok(Some(WanCtl {
                ctl: ctl.clone(),
                out: out.clone(),
            })),
            (None, None) => Ok(None),
            _ => bail!("give both --wan-ctl and --wan-out, or neither"),
        }
    }

    /// Writes `cmd` to the emulator and waits (10 s at most) for its answer, which must say
    /// `"ok": true`.
    async fn command(&self, cmd: &str) -> anyhow::Result<Answer> {
        let offset = std::fs::metadata(&self.out)
            .with_context(|| format!("the emulator's output {}", self.out.display()))?
            .len();
        // Non-blocking: a FIFO nobody reads (the emulator is gone) is an error, not a hang.
        let mut pipe = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&self.ctl)
            .with_context(|| {
                format!(
                    "opening the emulator's control FIFO {} (is the emulator running?)",
                    self.ctl.display()
                )
            })?;
        let sent = Instant::now();
        pipe.write_all(format!("{cmd}\n").as_bytes())
            .await
            .context("writing to the emulator")?;
        drop(pipe);
        let limit = sent + Duration::from_secs(10);
        let mut pos = offset;
        let mut partial = String::new();
        loop {
            let data = read_from(&self.out, pos)?;
            pos += data.len() as u64;
            partial.push_str(&String::from_utf8_lossy(&data));
            while let Some(i) = partial.find('\n') {
                let line: String = partial.drain(..=i).collect();
                let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                    continue;
                };
                if v.get("cmd").and_then(Value::as_str) == Some(cmd) {
                    let answered = Instant::now();
                    if v.get("ok") != Some(&Value::Bool(true)) {
                        bail!("the emulator refused '{cmd}': {v}");
                    }
                    return Ok(Answer {
                        answer: v,
                        sent,
                        answered,
                    });
                }
            }
            if Instant::now() >= limit {
                bail!(
                    "the emulator did not answer '{cmd}' within 10 s (its output: {})",
                    self.out.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The bytes of `path` from `pos` on.
fn read_from(path: &Path, pos: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(pos))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

// ---------------------------------------------------------------- recovery

#[derive(Clone, Copy)]
enum Event {
    Addr,
    Down(Duration),
}

struct Trial {
    event: Event,
    timeout: Duration,
    before: Duration,
}

fn ms_since(t: Instant, base: Instant) -> f64 {
    t.saturating_duration_since(base).as_secs_f64() * 1000.0
}

async fn recover(
    target: SocketAddr,
    args: PingArgs,
    trial: Trial,
    wan: &WanCtl,
    labels: &[String],
) -> anyhow::Result<()> {
    let mut out = crate::labels(labels)?;
    out.insert("kind".into(), "recover".into());
    out.insert("target".into(), target.to_string().into());
    let (name, down_ms) = match trial.event {
        Event::Addr => ("addr", None),
        Event::Down(d) => ("down", Some(d.as_millis() as u64)),
    };
    out.insert("event".into(), name.into());
    if let Some(d) = down_ms {
        out.insert("down_ms".into(), d.into());
    }
    out.insert(
        "timeout_ms".into(),
        (trial.timeout.as_millis() as u64).into(),
    );

    let mut p = match Pinger::open(target, args.size).await {
        Ok(p) => p,
        Err(e) => {
            out.insert("outcome".into(), "setup_failed".into());
            out.insert("error".into(), format!("{e:#}").into());
            print_line(&Value::Object(out).to_string());
            return Ok(());
        }
    };
    if let Err(e) = p.warm_up(args.warmup).await {
        out.insert("outcome".into(), "setup_failed".into());
        out.insert("error".into(), format!("{e:#}").into());
        print_line(&Value::Object(out).to_string());
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pinger = tokio::spawn(ping_loop(p, Duration::from_millis(args.interval_ms), tx));
    let mut last_done: Option<Instant> = None;
    let mut before = Vec::new();
    // The stream runs undisturbed first.
    let calm_until = Instant::now() + trial.before;
    let mut failed: Option<(Instant, String)> = None;
    while failed.is_none() {
        match tokio::time::timeout_at(calm_until.into(), rx.recv()).await {
            Ok(Some(Tick::Done { sent, done })) => {
                before.push(micros(done - sent));
                last_done = Some(done);
            }
            Ok(Some(Tick::Failed { at, error })) => failed = Some((at, error)),
            Ok(None) | Err(_) => break,
        }
    }
    if let Some((_, e)) = failed {
        pinger.abort();
        out.insert("outcome".into(), "setup_failed".into());
        out.insert("error".into(), format!("before the event: {e}").into());
        print_line(&Value::Object(out).to_string());
        return Ok(());
    }
    out.insert("before".into(), latency_json(before));

    // The event. `t_cmd`: the command that breaks (addr) or restores (up) the path; `cut`:
    // an answer completed after it has crossed the link after the event.
    let (t_cmd, cut, answer) = match trial.event {
        Event::Addr => {
            // The emulator drops the old address's packets from the moment it reads the line,
            // then adds the new address and deletes the old one (a few ms of `ip`): answers
            // already on their way reach the old address until the deletion. Only an answer
            // completed after the emulator's reply (plus slack for the read) went to the new
            // address.
            let a = wan.command("addr").await?;
            (a.sent, a.answered + Duration::from_millis(2), a)
        }
        Event::Down(d) => {
            let a = wan.command("down").await?;
            out.insert("down_answer_ms".into(), ms_since(a.answered, a.sent).into());
            // Drain what arrives while the link is down (nothing crosses; an answer already
            // in the socket may still be read).
            let until = a.sent + d;
            loop {
                match tokio::time::timeout_at(until.into(), rx.recv()).await {
                    Ok(Some(Tick::Done { done, .. })) => last_done = Some(done),
                    Ok(Some(Tick::Failed { at, error })) => {
                        failed = Some((at, error));
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tokio::time::sleep_until(until.into()).await;
            let up = wan.command("up").await?;
            // Everything in flight was dropped while down: any answer completed after `up`
            // crossed after it.
            (up.sent, up.sent, up)
        }
    };
    out.insert(
        "answer_ms".into(),
        ms_since(answer.answered, answer.sent).into(),
    );
    if let Some(addr) = answer.answer.get("home_addr") {
        out.insert("home_addr".into(), addr.clone());
    }
    let deadline = t_cmd + trial.timeout;
    let mut recovered: Option<Instant> = None;
    if failed.is_none() {
        loop {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(Tick::Done { done, .. })) => {
                    if done > cut {
                        recovered = Some(done);
                        break;
                    }
                    last_done = Some(done);
                }
                Ok(Some(Tick::Failed { at, error })) => {
                    failed = Some((at, error));
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    // A few more answers: the stream really flows again (not one lucky packet).
    let mut after = Vec::new();
    if let Some(r) = recovered {
        let until = r + Duration::from_secs(2);
        while after.len() < 5 {
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some(Tick::Done { sent, done })) => after.push(micros(done - sent)),
                Ok(Some(Tick::Failed { at, error })) => {
                    failed = Some((at, error));
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    pinger.abort();
    match (recovered, failed) {
        (Some(r), None) => {
            out.insert("outcome".into(), "ok".into());
            out.insert("recovery_ms".into(), ms_since(r, t_cmd).into());
            if let Some(l) = last_done {
                out.insert("gap_ms".into(), ms_since(r, l).into());
            }
            out.insert("after".into(), latency_json(after));
        }
        (Some(r), Some((at, e))) => {
            // Answers came back, then the tunnel broke.
            out.insert("outcome".into(), "reset".into());
            out.insert("recovery_ms".into(), ms_since(r, t_cmd).into());
            out.insert("reset_after_ms".into(), ms_since(at, t_cmd).into());
            out.insert("error".into(), e.into());
        }
        (None, Some((at, e))) => {
            out.insert("outcome".into(), "reset".into());
            out.insert("reset_after_ms".into(), ms_since(at, t_cmd).into());
            out.insert("error".into(), e.into());
        }
        (None, None) => {
            out.insert("outcome".into(), "stalled".into());
        }
    }
    print_line(&Value::Object(out).to_string());
    Ok(())
}

// ---------------------------------------------------------------- report

/// The paths, in table order: (label value, what the table calls it).
const PATHS: [(&str, &str); 3] = [
    ("tcp", "plain TCP (no Postern)"),
    ("quic", "Postern, QUIC"),
    ("h2", "Postern, HTTP/2 over TLS/TCP (`--transport tcp`)"),
];

struct Raw(Vec<Value>);

impl Raw {
    /// The records whose fields `k` are the strings `v`.
    fn select(&self, want: &[(&str, &str)]) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|r| {
                want.iter()
                    .all(|(k, v)| r.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .collect()
    }

    fn one(&self, want: &[(&str, &str)]) -> Option<&Value> {
        self.select(want).last().copied()
    }
}

fn f(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn num(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.prec$}"))
}

/// The link's parameters from the emulator's ready line.
fn describe_link(ready: &Value) -> String {
    let g = |p: &str| f(ready, p).unwrap_or(0.0);
    let rtt = g("/link/down/delay_ms") + g("/link/up/delay_ms");
    let rate = |bps: f64| {
        if bps == 0.0 {
            "unlimited".to_owned()
        } else {
            format!("{} Mbit/s", bps / 1e6)
        }
    };
    let queue_ms = {
        let (q, r) = (g("/link/down/queue_bytes"), g("/link/down/rate_bps"));
        if r > 0.0 {
            format!("{:.0} ms", q * 8.0 / r * 1000.0)
        } else {
            "–".into()
        }
    };
    format!(
        "RTT {rtt:.0} ms, down (cloud → home) {}, up {}, loss {} % each way, jitter ± {} ms, bottleneck queue {queue_ms} (tail drop), emulator seed {}",
        rate(g("/link/down/rate_bps")),
        rate(g("/link/up/rate_bps")),
        g("/link/down/loss") * 100.0,
        g("/link/down/jitter_ms"),
        ready.get("seed").map(Value::to_string).unwrap_or_default(),
    )
}

/// A recovery cell: median (min–max) over the trials that recovered, and what the others did.
fn recovery_cell(trials: &[&Value]) -> String {
    if trials.is_empty() {
        return "–".into();
    }
    let ok: Vec<f64> = trials
        .iter()
        .filter(|t| t.get("outcome").and_then(Value::as_str) == Some("ok"))
        .filter_map(|t| f(t, "/recovery_ms"))
        .collect();
    let mut parts = Vec::new();
    if !ok.is_empty() {
        let (lo, hi) = (
            ok.iter().copied().fold(f64::INFINITY, f64::min),
            ok.iter().copied().fold(0.0, f64::max),
        );
        let m = median(&ok).unwrap_or(0.0);
        parts.push(if ok.len() > 1 {
            format!("{m:.0} ms ({lo:.0}–{hi:.0}, {} trials)", ok.len())
        } else {
            format!("{m:.0} ms")
        });
    }
    for t in trials {
        match t.get("outcome").and_then(Value::as_str) {
            Some("ok") => {}
            Some("reset") => parts.push(format!(
                "tunnel reset {:.1} s after the command{}",
                f(t, "/reset_after_ms").unwrap_or(0.0) / 1000.0,
                f(t, "/recovery_ms")
                    .map(|r| format!(" (answers came back at {r:.0} ms first)"))
                    .unwrap_or_default()
            )),
            Some("stalled") => parts.push(format!(
                "stalled: no answer within {:.0} s, no reset",
                f(t, "/timeout_ms").unwrap_or(0.0) / 1000.0
            )),
            _ => parts.push(format!(
                "trial failed: {}",
                t.get("error").and_then(Value::as_str).unwrap_or("?")
            )),
        }
    }
    parts.join("; ")
}

/// Whether every trial recovered within `limit_ms`.
fn recovery_met(trials: &[&Value], limit_ms: f64) -> Option<bool> {
    if trials.is_empty() {
        return None;
    }
    Some(trials.iter().all(|t| {
        t.get("outcome").and_then(Value::as_str) == Some("ok")
            && f(t, "/recovery_ms").is_some_and(|r| r <= limit_ms)
    }))
}

fn report(raw: &Path, meta: &[String], loopback: &[String]) -> anyhow::Result<()> {
    let raw = Raw(read_jsonl(raw)?);
    let mut md = String::new();
    if !meta.is_empty() {
        md.push_str("### Setup\n\n");
        for m in meta {
            let (k, v) = m.split_once('=').unwrap_or((m.as_str(), ""));
            let _ = writeln!(md, "- {k}: {v}");
        }
        md.push('\n');
    }
    let mut targets: Vec<(String, String, Option<bool>)> = Vec::new();
    let mut profiles: Vec<String> = Vec::new();
    for r in raw.select(&[("kind", "wan")]) {
        if let Some(p) = r.get("profile").and_then(Value::as_str) {
            if !profiles.iter().any(|x| x == p) {
                profiles.push(p.to_owned());
            }
        }
    }
    for profile in &profiles {
        let ready = raw.one(&[("kind", "wan"), ("profile", profile)]);
        let rtt_ms = ready
            .map(|r| {
                f(r, "/link/down/delay_ms").unwrap_or(0.0)
                    + f(r, "/link/up/delay_ms").unwrap_or(0.0)
            })
            .unwrap_or(0.0);
        let _ = writeln!(md, "### Profile `{profile}`\n");
        if let Some(r) = ready {
            let _ = writeln!(md, "Link: {}.\n", describe_link(r));
        }
        let bulk_of =
            |path: &str| raw.one(&[("kind", "loaded"), ("profile", profile), ("path", path)]);
        let idle_of =
            |path: &str| raw.one(&[("kind", "ping"), ("profile", profile), ("path", path)]);
        let base = bulk_of("tcp").and_then(|b| f(b, "/mbyte_s"));
        let size = raw
            .select(&[("kind", "loaded"), ("profile", profile)])
            .into_iter()
            .find_map(|b| b.get("bytes_asked").and_then(Value::as_u64))
            .unwrap_or(0);
        md.push_str("| path | (a) download MB/s | (a) / plain TCP | (b) idle p50 / p99 ms | (b) under the download p50 / p99 ms | (b) p99 loaded / idle | (c) address change | (c) down 5 s, then up |\n|---|---|---|---|---|---|---|---|\n");
        for (path, label) in PATHS {
            let bulk = bulk_of(path);
            let idle = idle_of(path);
            let mb = bulk.and_then(|b| f(b, "/mbyte_s"));
            let bulk_cell = match bulk {
                Some(b) => match b.get("error").and_then(Value::as_str) {
                    Some(e) => format!("{} (failed: {e})", num(mb, 2)),
                    None if b.get("capped") == Some(&Value::Bool(true)) => format!(
                        "{} (stopped at {} s: {} of {} MB)",
                        num(mb, 2),
                        num(f(b, "/max_secs"), 0),
                        num(f(b, "/bytes").map(|x| x / 1e6), 0),
                        num(f(b, "/bytes_asked").map(|x| x / 1e6), 0)
                    ),
                    None => num(mb, 2),
                },
                None => "–".into(),
            };
            let ratio = match (mb, base) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let lat = |v: Option<&Value>| match v {
                Some(v) if f(v, "/ping/n").unwrap_or(0.0) > 0.0 => format!(
                    "{} / {}",
                    num(f(v, "/ping/p50_ms"), 1),
                    num(f(v, "/ping/p99_ms"), 1)
                ),
                Some(v) => format!(
                    "failed: {}",
                    v.get("error")
                        .or_else(|| v.get("ping_error"))
                        .and_then(Value::as_str)
                        .unwrap_or("no samples")
                ),
                None => "–".into(),
            };
            let p99_ratio = match (
                bulk.and_then(|b| f(b, "/ping/p99_ms")),
                idle.and_then(|i| f(i, "/ping/p99_ms")),
            ) {
                (Some(l), Some(i)) if i > 0.0 => Some(l / i),
                _ => None,
            };
            let trials = |ev: &str| -> Vec<&Value> {
                raw.select(&[
                    ("kind", "recover"),
                    ("profile", profile),
                    ("path", path),
                    ("event", ev),
                ])
            };
            let (addr, down) = (trials("addr"), trials("down"));
            let _ = writeln!(
                md,
                "| {label} | {bulk_cell} | {} | {} | {} | {} | {} | {} |",
                if path == "tcp" {
                    "1 (baseline)".into()
                } else {
                    num(ratio, 2) + "×"
                },
                lat(idle),
                lat(bulk),
                num(p99_ratio, 2) + "×",
                recovery_cell(&addr),
                recovery_cell(&down),
            );
            if path != "tcp" {
                let t = if path == "quic" { "QUIC" } else { "HTTP/2" };
                targets.push((
                    format!("`{profile}` (a) {t}: download ≥ 0.9 × plain TCP"),
                    format!(
                        "{} vs {} MB/s ({}×)",
                        num(mb, 2),
                        num(base, 2),
                        num(ratio, 3)
                    ),
                    ratio.map(|r| r >= 0.9),
                ));
                if profile == "poor" {
                    targets.push((
                        format!("`{profile}` (b) {t}: p99 under the download ≤ 1.5 × idle"),
                        format!(
                            "p99 {} ms idle, {} ms under the download: {}×{}",
                            num(idle.and_then(|i| f(i, "/ping/p99_ms")), 1),
                            num(bulk.and_then(|b| f(b, "/ping/p99_ms")), 1),
                            num(p99_ratio, 3),
                            // A download that leaves the link mostly idle loads nothing.
                            match ratio {
                                Some(r) if r < 0.9 => format!(
                                    " (but the download ran at only {r:.2}× plain TCP's rate, so the link was not loaded)"
                                ),
                                _ => String::new(),
                            }
                        ),
                        p99_ratio.map(|r| r <= 1.5),
                    ));
                }
                let limit = 1000.0 + rtt_ms;
                for (what, tr) in [("address change", &addr), ("link back up", &down)] {
                    targets.push((
                        format!("`{profile}` (c) {t}: bytes again ≤ 1 s + 1 RTT ({limit:.0} ms) after the {what}"),
                        recovery_cell(tr),
                        recovery_met(tr, limit),
                    ));
                }
            }
        }
        md.push('\n');
        // Details of the downloads: where the time went.
        let _ = writeln!(
            md,
            "Downloads of {:.0} MB (10^6 bytes), with the ping stream beside them; the emulator's counters over each download (cloud → home): packets forwarded, dropped at random (loss) and dropped because the bottleneck queue was full (queue); CPU used by the Postern processes (client / gateway / connector) in % of one core over the run, and in seconds per GB downloaded:\n",
            size as f64 / 1e6
        );
        md.push_str("| path | time s | Mbit/s | first byte ms | down packets | lost | queue drops | up packets | CPU % of a core: client / gateway / connector | CPU s per GB |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (path, label) in PATHS {
            let Some(b) = bulk_of(path) else { continue };
            let w = |p: &str| {
                b.pointer(p)
                    .and_then(Value::as_u64)
                    .map_or("–".into(), |v| v.to_string())
            };
            let (cpu, per_gb) = if path == "tcp" {
                ("–".to_owned(), "–".to_owned())
            } else {
                let pct = ["client", "gateway", "connector"]
                    .iter()
                    .map(|c| num(f(b, &format!("/cpu_core_pct/{c}")), 0))
                    .collect::<Vec<_>>()
                    .join(" / ");
                (pct, num(f(b, "/cpu_s_per_gb/total"), 1))
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {per_gb} |",
                num(f(b, "/secs"), 1),
                num(f(b, "/mbit_s"), 1),
                num(f(b, "/first_byte_ms"), 0),
                w("/wan/down/packets"),
                w("/wan/down/dropped/loss"),
                w("/wan/down/dropped/queue"),
                w("/wan/up/packets"),
            );
        }
        md.push('\n');
        let counts: Vec<String> = PATHS
            .iter()
            .filter_map(|(p, _)| {
                let i = idle_of(p)?;
                let l = bulk_of(p)?;
                Some(format!(
                    "{p}: {} idle, {} under the download",
                    f(i, "/ping/n").unwrap_or(0.0),
                    f(l, "/ping/n").unwrap_or(0.0)
                ))
            })
            .collect();
        if !counts.is_empty() {
            let _ = writeln!(md, "Round trips measured: {}.\n", counts.join("; "));
        }
    }

    if !loopback.is_empty() {
        md.push_str(&loopback_section(loopback));
    }

    md.push_str("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for (t, m, ok) in &targets {
        let _ = writeln!(md, "| {t} | {m} | {} |", met(*ok));
    }
    print!("{md}");
    Ok(())
}

/// The headline figures of one `bench/run --quick`.
struct Loopback {
    /// Median Gbit/s: (postern, rathole) for up and down.
    up: (Option<f64>, Option<f64>),
    down: (Option<f64>, Option<f64>),
    /// One at a time: postern p50, p99 µs; rathole p50.
    one: (Option<f64>, Option<f64>, Option<f64>),
    /// 16 concurrent sessions/s: postern, rathole.
    burst: (Option<f64>, Option<f64>),
    /// KB per idle session (RSS): gateway, connector; and how many were held.
    mem: (Option<f64>, Option<f64>, u64),
}

fn read_loopback(path: &Path) -> anyhow::Result<Loopback> {
    let raw = Raw(read_jsonl(path)?);
    let gbps = |p: &str, dir: &str| {
        let v: Vec<f64> = raw
            .select(&[("kind", "iperf"), ("path", p), ("dir", dir)])
            .into_iter()
            .filter_map(|r| f(r, "/gbps"))
            .collect();
        median(&v)
    };
    let sess = |c: u64, path: &str, field: &str| {
        raw.0
            .iter()
            .find(|r| {
                r.get("kind").and_then(Value::as_str) == Some("sessions")
                    && r.get("path").and_then(Value::as_str) == Some(path)
                    && r.get("concurrency").and_then(Value::as_u64) == Some(c)
            })
            .and_then(|r| f(r, field))
    };
    let held = raw
        .select(&[("kind", "hold")])
        .first()
        .and_then(|h| h.get("held").and_then(Value::as_u64))
        .unwrap_or(0);
    let per_session = |proc: &str| {
        let rss = |state: &str| {
            raw.one(&[("kind", "mem"), ("proc", proc), ("state", state)])
                .and_then(|m| f(m, "/rss_kb"))
        };
        match (rss("idle"), rss("held")) {
            (Some(i), Some(h)) if held > 0 => Some((h - i) / held as f64),
            _ => None,
        }
    };
    Ok(Loopback {
        up: (gbps("postern", "up"), gbps("rathole", "up")),
        down: (gbps("postern", "down"), gbps("rathole", "down")),
        one: (
            sess(1, "postern", "/p50_us"),
            sess(1, "postern", "/p99_us"),
            sess(1, "rathole", "/p50_us"),
        ),
        burst: (
            sess(16, "postern", "/sessions_per_s"),
            sess(16, "rathole", "/sessions_per_s"),
        ),
        mem: (per_session("gateway"), per_session("connector"), held),
    })
}

/// The headline figures of `bench/run --quick`, one column per run (`label=FILE`).
fn loopback_section(runs: &[String]) -> String {
    let mut md = String::from("### (d) Loopback: `bench/run --quick`\n\n");
    let mut cols = Vec::new();
    for r in runs {
        let (label, path) = r.split_once('=').unwrap_or(("postern", r.as_str()));
        match read_loopback(Path::new(path)) {
            Ok(l) => cols.push((label.to_owned(), l)),
            Err(e) => {
                let _ = writeln!(md, "{label}: not available ({e:#}).\n");
            }
        }
    }
    if cols.is_empty() {
        return md;
    }
    md.push_str("| figure |");
    for (label, _) in &cols {
        let _ = write!(md, " {label} |");
    }
    md.push_str(" target |\n|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    let row = |md: &mut String, what: &str, cell: &dyn Fn(&Loopback) -> String, target: &str| {
        let _ = write!(md, "| {what} |");
        for (_, l) in &cols {
            let _ = write!(md, " {} |", cell(l));
        }
        let _ = writeln!(md, " {target} |");
    };
    let tput = |(p, r): (Option<f64>, Option<f64>)| {
        format!(
            "{} vs rathole-tls {} = **{}×**",
            num(p, 2),
            num(r, 2),
            num(ratio(p, r), 2)
        )
    };
    row(
        &mut md,
        "(a) one stream upload, Gbit/s",
        &|l| tput(l.up),
        "postern ≥ rathole-tls",
    );
    row(
        &mut md,
        "(a) one stream download, Gbit/s",
        &|l| tput(l.down),
        "postern ≥ rathole-tls",
    );
    row(
        &mut md,
        "(b) session setup one at a time, p50 / p99 µs",
        &|l| {
            format!(
                "{} / {} (rathole-tls p50 {})",
                num(l.one.0, 0),
                num(l.one.1, 0),
                num(l.one.2, 0)
            )
        },
        "p50 ≤ 350 µs",
    );
    row(
        &mut md,
        "(b) 16 concurrent, sessions/s",
        &|l| {
            format!(
                "{} vs rathole-tls {} = {}×",
                num(l.burst.0, 0),
                num(l.burst.1, 0),
                num(ratio(l.burst.0, l.burst.1), 1)
            )
        },
        "≥ 10 × rathole-tls",
    );
    row(
        &mut md,
        "(c) memory per idle session, KB (RSS): gateway / connector",
        &|l| {
            format!(
                "{} / {} ({} held)",
                num(l.mem.0, 1),
                num(l.mem.1, 1),
                l.mem.2
            )
        },
        "≤ 24 / ≤ 12 KB",
    );
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn serve_echoes_and_downloads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = tokio::spawn(serve(addr));
        crate::net::wait_port(addr, 5000).await.unwrap();
        let mut p = Pinger::open(addr, 64).await.unwrap();
        p.warm_up(3).await.unwrap();
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let b = download(addr, 3_000_000, None, tx).await.unwrap();
        assert_eq!(b.bytes, 3_000_000);
        assert!(b.error.is_none() && !b.capped, "{:?}", b.error);
        // A time limit stops a download that would take longer.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let b = download(addr, 1 << 50, Some(Duration::from_millis(200)), tx)
            .await
            .unwrap();
        assert!(
            b.capped && b.bytes > 0 && b.error.is_none(),
            "{:?}",
            b.error
        );
        // A bad mode byte: the server closes.
        let mut t = connect(addr).await.unwrap();
        t.write_all(b"X").await.unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(t.read(&mut buf).await.unwrap_or(0), 0);
        server.abort();
    }

    #[test]
    fn wan_delta_counts_per_cause() {
        let b = json!({"down": {"packets": 10, "bytes": 100, "dropped": {"loss": 1, "queue": 0}}, "up": {"packets": 5, "bytes": 50, "dropped": {"loss": 0, "queue": 0}}});
        let a = json!({"down": {"packets": 30, "bytes": 300, "dropped": {"loss": 3, "queue": 4}}, "up": {"packets": 6, "bytes": 60, "dropped": {"loss": 0, "queue": 0}}});
        let d = wan_delta(&b, &a);
        assert_eq!(d["down"]["packets"], 20);
        assert_eq!(d["down"]["dropped"]["loss"], 2);
        assert_eq!(d["down"]["dropped"]["queue"], 4);
        assert_eq!(d["up"]["bytes"], 10);
    }

    #[test]
    fn recovery_cells() {
        let ok1 = json!({"outcome": "ok", "recovery_ms": 120.0});
        let ok2 = json!({"outcome": "ok", "recovery_ms": 300.0});
        let st = json!({"outcome": "stalled", "timeout_ms": 15000});
        assert_eq!(recovery_cell(&[&ok1]), "120 ms");
        assert_eq!(recovery_cell(&[&ok1, &ok2]), "210 ms (120–300, 2 trials)");
        assert_eq!(
            recovery_cell(&[&st]),
            "stalled: no answer within 15 s, no reset"
        );
        assert_eq!(recovery_met(&[&ok1, &ok2], 1040.0), Some(true));
        assert_eq!(recovery_met(&[&ok1, &st], 1040.0), Some(false));
        assert_eq!(recovery_met(&[], 1040.0), None);
    }
}
