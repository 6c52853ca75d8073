//! `postern-bench`: the helper binary of `bench/run`.
//!
//! It does what a shell script cannot do well: a TCP echo server, session-setup latency and
//! rate, holding thousands of idle tunnelled connections, a delaying TCP relay (the kernel here
//! has no `tc netem`), a link emulator between two network namespaces (`wan`), process memory
//! from `/proc`, the measurements of `bench/link` on that emulator, and the final report.

mod attack;
mod cpu;
mod dicom;
mod ha;
mod hostile;
mod link;
mod net;
mod report;
mod wan;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "postern-bench", about = "Benchmark helpers for Postern")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// TCP echo server. Prints `listening on ADDR` once bound.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Session setup: connect, write 1 byte, read it back, close; prints latency and rate as
    /// one JSON line.
    Sessions {
        /// Repeat to spread sessions round robin over several targets.
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Sessions run (and discarded) before measuring.
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        /// Start at most this many sessions per second (0: as fast as they complete).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Run the sessions in batches of this many, each after --pause-ms; only the time
        /// inside the batches counts for sessions/s (0: one batch).
        #[arg(long, default_value_t = 0)]
        burst: usize,
        #[arg(long, default_value_t = 4500)]
        pause_ms: u64,
        /// Extra `key=value` fields for the JSON line (values that parse as JSON stay JSON).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// `name=pid`: report the CPU time this process used per measured session.
        #[arg(long = "cpu")]
        cpu: Vec<String>,
        /// Also print every measured session's latency (`latencies_us`), so that a report
        /// can pool percentiles over several runs.
        #[arg(long)]
        latencies: bool,
    },
    /// Opens COUNT connections, echoes one byte on each so that every tunnel is really up,
    /// prints one JSON line, then holds them until SIGTERM/SIGINT (or stdin EOF with
    /// --wait-stdin) and closes them.
    Hold {
        /// Repeat to spread connections round robin over several targets.
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Connections being opened at the same time.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        /// Open at most this many connections per second (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Also stop when standard input reaches end-of-file.
        #[arg(long)]
        wait_stdin: bool,
    },
    /// TCP relay that holds every chunk for DELAY_MS in each direction before forwarding it, so
    /// a path through it has a round-trip time of 2 × DELAY_MS. At most MAX_BUFFER bytes are
    /// queued per direction; when the queue is full the relay stops reading (back-pressure).
    /// With several --upstream it is also a round-robin TCP load balancer that skips an
    /// upstream refusing connections (a replica that is draining or down).
    Delay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, required = true)]
        upstream: Vec<SocketAddr>,
        #[arg(long, default_value_t = 25)]
        delay_ms: u64,
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        max_buffer: usize,
    },
    /// Slowloris: COUNT connections each sending one byte per INTERVAL_MS for DURATION_S
    /// seconds (mode tls-hello: a ClientHello that never completes; h2 / h1: a completed TLS
    /// handshake, then a request that never completes). Prints how many the server closed.
    Slowloris {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        #[arg(long, default_value = "tls-hello")]
        mode: String,
        /// The gateway's server CA (modes h2 and h1).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Garbage and truncated TLS / HTTP/2 / HTTP/1.1 input on new connections for DURATION_S
    /// seconds; with --ca-file also after a completed TLS handshake. Prints attempts per kind.
    Garbage {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Junk-token requests (`CONNECT ENDPOINT:0` and `GET /v1/endpoints/ENDPOINT`,
    /// alternately) over HTTP/2; prints one JSON line with the answers by status.
    Flood {
        #[arg(long)]
        target: SocketAddr,
        /// The gateway's server CA.
        #[arg(long)]
        ca_file: PathBuf,
        /// Source address to connect from (e.g. 127.0.0.2), instead of the kernel's choice.
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        #[arg(long, default_value = "echo")]
        endpoint: String,
        /// The bearer token every request carries.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// At most this many requests per second (0: as fast as they are answered).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Opens COUNT HTTP/2 connections, one `GET PATH` on each, then holds them idle (answering
    /// the server's PINGs) until SIGTERM; prints one JSON line when all were tried, then one
    /// per connection the server closed.
    H2Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        ca_file: PathBuf,
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        #[arg(long, default_value_t = 8)]
        count: usize,
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Replace every connection the server closes or refuses (every 50 ms).
        #[arg(long)]
        refill: bool,
    },
    /// RSS and PSS (kB) of a process from /proc/PID/smaps_rollup, as one JSON line.
    Mem {
        #[arg(long)]
        pid: u32,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// CPU time (user + system, µs) used so far by each `name=pid`, as one JSON object.
    Cpu {
        #[arg(long = "proc")]
        procs: Vec<String>,
    },
    /// Prints N distinct free loopback TCP ports.
    FreePorts { n: usize },
    /// Waits until ADDR accepts a TCP connection.
    WaitPort {
        addr: SocketAddr,
        #[arg(long, default_value_t = 20_000)]
        timeout_ms: u64,
    },
    /// Turns `iperf3 -J` output into one JSON line (Gbit/s received).
    IperfSummary {
        file: PathBuf,
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Output of `cpu` before and after the run: adds CPU seconds per GB moved.
        #[arg(long, requires = "cpu_after")]
        cpu_before: Option<String>,
        #[arg(long)]
        cpu_after: Option<String>,
    },
    /// One revocation-propagation trial of `bench/ha`: opens a tunnel through TARGET (a
    /// `postern connect` port) and echoes a byte, then runs the revocation COMMAND and measures
    /// when the held connection ends, from the command's start and from its exit; one JSON line.
    RevokeTrial {
        #[arg(long)]
        target: SocketAddr,
        /// Give up waiting for the end of the tunnel after this long.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[arg(long = "label")]
        labels: Vec<String>,
        /// The audit log of the replica holding the tunnel: report the `close_reason` of
        /// --user's `session.terminated` event.
        #[arg(long, requires = "user")]
        audit_log: Option<PathBuf>,
        #[arg(long)]
        user: Option<String>,
        /// The revocation command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Builds the Markdown results of `bench/ha` from its JSON lines.
    HaReport {
        raw: PathBuf,
        #[arg(long = "meta")]
        meta: Vec<String>,
    },
    /// Link emulator (run as root): two fresh network namespaces, "home" and "cloud", joined
    /// through TUN devices by this process, which forwards packets with a rate limit, delay,
    /// jitter, loss and a bounded queue per direction. Prints a JSON ready line, then answers
    /// control lines on stdin (addr, down, up, block-udp, allow-udp, stats, quit) with JSON
    /// lines; deletes the namespaces on quit, end of stdin, SIGTERM or SIGINT.
    Wan(wan::Opts),
    /// The measurements of `bench/link` on the link emulator (issue #14): a server for every
    /// path (`serve`), the interactive stream idle (`ping`) and beside a download (`loaded`),
    /// recovery after an address change or an outage (`recover`), one emulator command
    /// (`wan`), and the Markdown report (`report`).
    Link {
        #[command(subcommand)]
        cmd: link::Cmd,
    },
    /// The measurements of `bench/web` (issue #16): the application (`serve`), a DICOM
    /// study for Orthanc (`make-study`), the browser sign-in without a browser (`signin`),
    /// keep-alive `GET`s with latency and throughput (`get`), and the report (`report`).
    Web {
        #[command(subcommand)]
        cmd: web::Cmd,
    },
    /// DICOM inspection on the connector (issue #17): C-GET of a generated study (default
    /// 100 × 2 MiB) from an Orthanc this command starts, with dcmtk's getscu, through the
    /// opaque relay and through the inspecting relay (each an in-process loopback listener),
    /// alternating; throughput, this process's CPU seconds per GB, and the ratios.
    Dicom(dicom::Opts),
    /// Builds the Markdown results table from the JSON lines the other commands printed.
    Report {
        /// JSON lines file.
        raw: PathBuf,
        /// `key=value` lines shown under "Setup".
        #[arg(long = "meta")]
        meta: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mem { pid, labels } => report::mem(pid, &labels),
        Cmd::IperfSummary {
            file,
            labels,
            cpu_before,
            cpu_after,
        } => report::iperf_summary(&file, &labels, cpu_before.as_deref(), cpu_after.as_deref()),
        Cmd::Cpu { procs } => {
            println!("{}", cpu::snapshot(&cpu::parse_procs(&procs)?)?);
            Ok(())
        }
        Cmd::Report { raw, meta } => report::report(&raw, &meta),
        Cmd::HaReport { raw, meta } => ha::report(&raw, &meta),
        Cmd::Dicom(opts) => dicom::run(opts),
        cmd => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(cmd))
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Echo { listen } => net::echo(listen).await,
        Cmd::Sessions {
            target,
            count,
            concurrency,
            warmup,
            rate,
            burst,
            pause_ms,
            labels,
            cpu,
            latencies,
        } => {
            let pause = std::time::Duration::from_millis(pause_ms);
            net::sessions(
                &target,
                count,
                concurrency,
                warmup,
                rate,
                burst,
                pause,
                &labels,
                &cpu,
                latencies,
            )
            .await
        }
        Cmd::RevokeTrial {
            target,
            timeout_ms,
            labels,
            audit_log,
            user,
            command,
        } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            let audit = audit_log.as_deref().zip(user.as_deref());
            ha::revoke_trial(target, timeout, &labels, &command, audit).await
        }
        Cmd::Hold {
            target,
            count,
            parallel,
            rate,
            wait_stdin,
        } => net::hold(&target, count, parallel, rate, wait_stdin).await,
        Cmd::Delay {
            listen,
            upstream,
            delay_ms,
            max_buffer,
        } => net::delay(listen, upstream, delay_ms, max_buffer).await,
        Cmd::Slowloris {
            target,
            count,
            interval_ms,
            duration_s,
            mode,
            ca_file,
        } => {
            attack::slowloris(
                target,
                count,
                interval_ms,
                duration_s,
                &mode,
                ca_file.as_deref(),
            )
            .await
        }
        Cmd::Garbage {
            target,
            duration_s,
            parallel,
            seed,
            ca_file,
        } => attack::garbage(target, duration_s, parallel, seed, ca_file.as_deref()).await,
        Cmd::Flood {
            target,
            ca_file,
            source,
            endpoint,
            token,
            requests,
            connections,
            parallel,
            rate,
        } => {
            hostile::flood(
                target,
                &ca_file,
                source,
                &endpoint,
                &token,
                requests,
                connections,
                parallel,
                rate,
            )
            .await
        }
        Cmd::H2Hold {
            target,
            ca_file,
            source,
            count,
            path,
            refill,
        } => hostile::h2_hold(target, &ca_file, source, count, &path, refill).await,
        Cmd::FreePorts { n } => net::free_ports(n).await,
        Cmd::Wan(opts) => wan::run(opts).await,
        Cmd::Link { cmd } => link::run(cmd).await,
        Cmd::Web { cmd } => web::run(cmd).await,
        Cmd::WaitPort { addr, timeout_ms } => net::wait_port(addr, timeout_ms).await,
        Cmd::Mem { .. }
        | Cmd::IperfSummary { .. }
        | Cmd::Report { .. }
        | Cmd::HaReport { .. }
        | Cmd::Dicom(..)
        | Cmd::Cpu { .. } => Ok(()),
    }
}

/// Parses `key=value` labels into JSON fields; a value that parses as JSON (a number, `true`)
/// stays JSON, anything else becomes a string.
pub fn labels(labels: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut m = serde_json::Map::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("label '{l}' is not key=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        m.insert(k.to_owned(), v);
    }
    Ok(m)
}
