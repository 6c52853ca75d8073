//! The networking helpers: echo server, session setup, idle connection holder, delay relay.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// How long one session (or one held connection) may take before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn print_line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

async fn accept_forever<F, Fut>(listener: TcpListener, mut on_conn: F) -> anyhow::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(on_conn(tcp));
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                eprintln!("postern-bench: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    print_line(&format!("listening on {}", listener.local_addr()?));
    accept_forever(listener, |mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

async fn one_session(target: SocketAddr) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&[0x5a]).await?;
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await?;
    anyhow::ensure!(b[0] == 0x5a, "echo returned a different byte");
    Ok(())
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Spaces session starts `interval` apart across all workers.
#[derive(Clone)]
struct Pacer {
    next: Arc<tokio::sync::Mutex<tokio::time::Instant>>,
    interval: Duration,
}

impl Pacer {
    fn new(per_second: f64) -> Option<Pacer> {
        (per_second > 0.0).then(|| Pacer {
            next: Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now())),
            interval: Duration::from_secs_f64(1.0 / per_second),
        })
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[derive(Default)]
struct Batch {
    latencies: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

/// Runs `count` sessions with `concurrency` workers.
async fn run_batch(
    targets: Arc<Vec<SocketAddr>>,
    count: usize,
    concurrency: usize,
    pacer: Option<Pacer>,
) -> anyhow::Result<Batch> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, pacer, targets) = (next.clone(), pacer.clone(), targets.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Batch::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let target = targets[i % targets.len()];
                if let Some(p) = &pacer {
                    p.wait().await;
                }
                let t0 = Instant::now();
                let err = match tokio::time::timeout(IO_TIMEOUT, one_session(target)).await {
                    Ok(Ok(())) => {
                        mine.latencies.push(t0.elapsed().as_micros() as u64);
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                mine.errors += 1;
                mine.first_error.get_or_insert(err);
            }
            mine
        }));
    }
    let mut all = Batch::default();
    for w in workers {
        let b = w.await?;
        all.latencies.extend(b.latencies);
        all.errors += b.errors;
        if all.first_error.is_none() {
            all.first_error = b.first_error;
        }
    }
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
pub async fn sessions(
    targets: &[SocketAddr],
    count: usize,
    concurrency: usize,
    warmup: usize,
    rate: f64,
    burst: usize,
    pause: Duration,
    labels: &[String],
    cpu: &[String],
    latencies: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(!targets.is_empty(), "give at least one --target");
    let targets = Arc::new(targets.to_vec());
    let mut out = crate::labels(labels)?;
    let procs = crate::cpu::parse_procs(cpu)?;
    let pacer = Pacer::new(rate);
    for i in 0..warmup {
        let target = targets[i % targets.len()];
        if let Some(p) = &pacer {
            p.wait().await;
        }
        let _ = tokio::time::timeout(IO_TIMEOUT, one_session(target)).await;
    }
    let cpu_before = crate::cpu::snapshot(&procs)?;
    // Without --burst, one batch of COUNT; with it, batches of BURST each after a pause, and
    // only the time inside the batches counts.
    let batch = if burst == 0 { count.max(1) } else { burst };
    let mut all = Batch::default();
    let mut elapsed = 0.0;
    let mut left = count;
    while left > 0 {
        let n = left.min(batch);
        if burst > 0 {
            tokio::time::sleep(pause).await;
        }
        let started = Instant::now();
        let b = run_batch(targets.clone(), n, concurrency, pacer.clone()).await?;
        elapsed += started.elapsed().as_secs_f64();
        all.latencies.extend(b.latencies);
        all.errors += b.errors;
        if all.first_error.is_none() {
            all.first_error = b.first_error;
        }
        left -= n;
    }
    let cpu_after = crate::cpu::snapshot(&procs)?;
    let mut lat = all.latencies;
    lat.sort_unstable();
    let ok = lat.len();
    let mean = if ok == 0 {
        0.0
    } else {
        lat.iter().sum::<u64>() as f64 / ok as f64
    };
    out.insert("kind".into(), "sessions".into());
    out.insert(
        "target".into(),
        targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    );
    out.insert("concurrency".into(), concurrency.into());
    out.insert("count".into(), count.into());
    out.insert("ok".into(), ok.into());
    out.insert("errors".into(), all.errors.into());
    if rate > 0.0 {
        out.insert("paced_per_s".into(), rate.into());
    }
    if burst > 0 {
        out.insert("burst".into(), burst.into());
    }
    out.insert("p50_us".into(), percentile(&lat, 50.0).into());
    out.insert("p90_us".into(), percentile(&lat, 90.0).into());
    out.insert("p99_us".into(), percentile(&lat, 99.0).into());
    out.insert("max_us".into(), lat.last().copied().unwrap_or(0).into());
    out.insert("mean_us".into(), (mean.round() as u64).into());
    out.insert("elapsed_s".into(), elapsed.into());
    out.insert(
        "sessions_per_s".into(),
        (if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        })
        .into(),
    );
    if !procs.is_empty() && ok > 0 {
        let used = crate::cpu::delta(&cpu_before, &cpu_after);
        let per: serde_json::Map<String, serde_json::Value> = used
            .into_iter()
            .map(|(k, us)| (k, (us / ok as f64).into()))
            .collect();
        out.insert("cpu_us_per_session".into(), per.into());
    }
    if let Some(e) = all.first_error {
        out.insert("first_error".into(), e.into());
    }
    if latencies {
        out.insert("latencies_us".into(), lat.into());
    }
    print_line(&serde_json::Value::Object(out).to_string());
    Ok(())
}

async fn hold_one(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&[0x5a]).await?;
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await?;
    Ok(tcp)
}

pub async fn hold(
    targets: &[SocketAddr],
    count: usize,
    parallel: usize,
    rate: f64,
    wait_stdin: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(!targets.is_empty(), "give at least one --target");
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let pacer = Pacer::new(rate);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let target = targets[i % targets.len()];
        if let Some(p) = &pacer {
            p.wait().await;
        }
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(IO_TIMEOUT, hold_one(target)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        }));
    }
    let mut held = Vec::with_capacity(count);
    let mut errors = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("kind".into(), "hold".into());
    out.insert("held".into(), held.len().into());
    out.insert("errors".into(), errors.into());
    out.insert(
        "elapsed_ms".into(),
        (started.elapsed().as_millis() as u64).into(),
    );
    if let Some(e) = first_error {
        out.insert("first_error".into(), e.into());
    }
    print_line(&serde_json::Value::Object(out).to_string());

    // Standard input is read on a plain thread: tokio's `io-std` feature is not enabled in
    // this workspace, and enabling it here would rebuild tokio for every crate.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    // Without --wait-stdin the sender is kept (never sent) so that the receiver never fires.
    let _keep = if wait_stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed_tx.send(());
        });
        None
    } else {
        Some(closed_tx)
    };
    let stdin_closed = async {
        let _ = closed_rx.await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = stdin_closed => {},
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    drop(held);
    Ok(())
}

/// Bytes read at once by the delay relay.
const DELAY_CHUNK: usize = 64 * 1024;

enum Item {
    Data(Bytes),
    Eof,
}

/// One direction of the delay relay: a reader that timestamps chunks into a byte-bounded queue,
/// and a writer that forwards each chunk once its time has come.
async fn delay_direction(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    delay: Duration,
    max_buffer: usize,
) {
    let budget = Arc::new(Semaphore::new(max_buffer));
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Item)>();
    let reader_budget = budget.clone();
    let reader = async move {
        let cap = DELAY_CHUNK.min(max_buffer).max(1);
        let mut buf = vec![0u8; cap];
        loop {
            // Reserve room before reading: a full queue stops reading (back-pressure).
            let Ok(permit) = reader_budget.clone().acquire_many_owned(cap as u32).await else {
                return;
            };
            // A read error ends this direction like an end-of-file.
            let n: usize = r.read(&mut buf).await.unwrap_or_default();
            permit.forget();
            reader_budget.add_permits(cap - n);
            let due = tokio::time::Instant::now() + delay;
            let item = if n == 0 {
                Item::Eof
            } else {
                Item::Data(Bytes::copy_from_slice(&buf[..n]))
            };
            if tx.send((due, item)).is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, item)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match item {
                Item::Data(b) => {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                    budget.add_permits(b.len());
                }
                Item::Eof => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    };
    // A failed write ends the writer; the reader then ends at the next EOF or error.
    tokio::join!(reader, writer);
}

pub async fn delay(
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    delay_ms: u64,
    max_buffer: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        max_buffer >= 1 && max_buffer <= u32::MAX as usize,
        "--max-buffer must be between 1 and 4 GiB"
    );
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    print_line(&format!("listening on {}", listener.local_addr()?));
    anyhow::ensure!(!upstreams.is_empty(), "give at least one --upstream");
    let delay = Duration::from_millis(delay_ms);
    let upstreams = Arc::new(upstreams);
    let next = Arc::new(AtomicUsize::new(0));
    accept_forever(listener, move |down| {
        let (upstreams, next) = (upstreams.clone(), next.clone());
        async move {
            // Round robin; an upstream that refuses is skipped.
            let first = next.fetch_add(1, Ordering::Relaxed);
            let mut up = None;
            for i in 0..upstreams.len() {
                let addr = upstreams[(first + i) % upstreams.len()];
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        up = Some(s);
                        break;
                    }
                    Err(e) => eprintln!("postern-bench: delay relay cannot reach {addr}: {e}"),
                }
            }
            let Some(up) = up else { return };
            relay_delayed(down, up, delay, max_buffer).await;
        }
    })
    .await
}

async fn relay_delayed(down: TcpStream, up: TcpStream, delay: Duration, max_buffer: usize) {
    let _ = up.set_nodelay(true);
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    tokio::join!(
        delay_direction(dr, uw, delay, max_buffer),
        delay_direction(ur, dw, delay, max_buffer),
    );
}

/// Lowest port of the kernel's ephemeral range (outgoing connections take ports from there).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768)
}

/// Picks ports below the ephemeral range, so that an outgoing connection made between this
/// call and the server's bind cannot take the port; falls back to the kernel's choice.
pub async fn free_ports(n: usize) -> anyhow::Result<()> {
    const FLOOR: u16 = 10_000;
    let high = ephemeral_low();
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    // A small LCG seeded from the clock and pid spreads concurrent runs over the range.
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        let l = if high > FLOOR + 1000 && tries < 1000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let port = FLOOR + ((x >> 33) % u64::from(high - FLOOR)) as u16;
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => l,
                Err(_) => continue,
            }
        } else {
            TcpListener::bind(("127.0.0.1", 0)).await?
        };
        ports.push(l.local_addr()?.port().to_string());
        listeners.push(l);
    }
    print_line(&ports.join(" "));
    Ok(())
}

pub async fn wait_port(addr: SocketAddr, timeout_ms: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{addr} did not accept a connection within {timeout_ms} ms");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[tokio::test]
    async fn delay_relay_delays_and_echoes() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(accept_forever(echo, |mut tcp| async move {
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }));
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let delay = Duration::from_millis(20);
        tokio::spawn(accept_forever(relay, move |down| async move {
            let up = TcpStream::connect(echo_addr).await.unwrap();
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::join!(
                delay_direction(dr, uw, delay, 1000),
                delay_direction(ur, dw, delay, 1000),
            );
        }));
        let mut tcp = TcpStream::connect(relay_addr).await.unwrap();
        let t0 = Instant::now();
        tcp.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(40));
        // More than the buffer bound crosses intact (back-pressure, not loss).
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let (mut r, mut w) = tcp.into_split();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&send).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, data);
    }
}
