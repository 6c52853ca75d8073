//! `postern-bench dicom` (issue #17): what DICOM inspection on the connector costs.
//!
//! Starts Orthanc (its storage under /dev/shm when there is one), loads a generated study
//! (`web make-study`'s generator: by default 100 instances of 1024 × 1024 16-bit pixels,
//! 210 MB) with one `storescu`, then C-GETs the whole study with dcmtk's `getscu` through two
//! loopback listeners of this process: one relays with the opaque relay
//! (`postern_net::relay::relay`), the other with the connector's inspecting relay
//! (`postern_connector::dicom::relay_inspected`, permit: calling AE `VIEWER`, called
//! `ORTHANC`, the default services). One warm-up C-GET, then `--runs` rounds, each one C-GET
//! through each relay (the order alternating between rounds).
//!
//! Per C-GET: the wall time from getscu's start to its exit, the bytes the relay carried from
//! Orthanc, and this process's CPU time (getrusage RUSAGE_SELF: user + system, all threads;
//! Orthanc and getscu are other processes, and this process does nothing else meanwhile).
//! Prints one JSON line per C-GET and a summary line (medians, ratios inspecting/opaque).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use postern_net::relay::Counters;
use postern_proto::dicom::{DicomPermit, DicomService};
use serde_json::json;

use crate::net::print_line;

#[derive(Args)]
pub struct Opts {
    #[arg(long, default_value_t = 100)]
    instances: u32,
    #[arg(long, default_value_t = 1024)]
    rows: u16,
    #[arg(long, default_value_t = 1024)]
    cols: u16,
    /// Measured rounds (each: one C-GET through each relay).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a fresh one under /dev/shm, or the temp directory).
    #[arg(long)]
    work: Option<PathBuf>,
}

const VIEWER: &str = "VIEWER";
const ORTHANC: &str = "ORTHANC";

/// Which relay a listener runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Opaque,
    Inspecting,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Opaque => "opaque",
            Mode::Inspecting => "inspecting",
        }
    }
}

/// A loopback listener relaying to Orthanc; bytes from Orthanc and records seen, so far.
struct Listener {
    addr: SocketAddr,
    from_pacs: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
}

fn listener(
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    pacs: SocketAddr,
) -> anyhow::Result<Listener> {
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = l.local_addr()?;
    let from_pacs = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let (fp, rc) = (from_pacs.clone(), records.clone());
    let permit = DicomPermit {
        rule: "bench".into(),
        calling_ae: vec![VIEWER.into()],
        called_ae: Some(ORTHANC.into()),
        services: DicomService::DEFAULT.to_vec(),
    };
    rt.spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let _ = client.set_nodelay(true);
            let (fp, rc, permit) = (fp.clone(), rc.clone(), permit.clone());
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(pacs).await else {
                    eprintln!("postern-bench dicom: cannot reach Orthanc");
                    return;
                };
                let _ = up.set_nodelay(true);
                let counters = Arc::new(Counters::default());
                match mode {
                    Mode::Opaque => {
                        postern_net::relay::relay(client, up, counters.clone()).await;
                    }
                    Mode::Inspecting => {
                        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
                        let drain = tokio::spawn(async move {
                            while rx.recv().await.is_some() {
                                rc.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        postern_connector::dicom::relay_inspected(
                            client,
                            up,
                            &permit,
                            tx,
                            counters.clone(),
                        )
                        .await;
                        let _ = drain.await;
                    }
                }
                fp.fetch_add(counters.b_to_a(), Ordering::Relaxed);
            });
        }
    });
    Ok(Listener {
        addr,
        from_pacs,
        records,
    })
}

/// This process's CPU time so far (user + system, all threads).
fn cpu_now() -> anyhow::Result<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Orthanc, killed on drop.
struct Orthanc(std::process::Child);

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_orthanc(dir: &Path) -> anyhow::Result<(Orthanc, SocketAddr)> {
    std::fs::create_dir_all(dir.join("db"))?;
    let (http, dicom) = (free_port()?, free_port()?);
    let config = json!({
        "Name": "postern-bench",
        "StorageDirectory": dir.join("db"),
        "IndexDirectory": dir.join("db"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": ORTHANC,
        "DicomCheckCalledAet": true,
        "RemoteAccessAllowed": false,
        "AuthenticationEnabled": false,
        "DicomModalities": { "viewer": [VIEWER, "127.0.0.1", 4242] },
        "Plugins": [],
    });
    let cfg = dir.join("orthanc.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&config)?)?;
    let log = std::fs::File::create(dir.join("orthanc.log"))?;
    let child = Command::new("Orthanc")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting Orthanc (apt-get install orthanc)")?;
    let o = Orthanc(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], dicom));
    let t = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("Orthanc did not listen on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((o, addr))
}

fn dcmtk(tool: &str, addr: SocketAddr) -> Command {
    let mut c = Command::new(tool);
    c.args([
        "-aet", VIEWER, "-aec", ORTHANC, "-to", "20", "-ta", "20", "-td", "120",
    ])
    .arg(addr.ip().to_string())
    .arg(addr.port().to_string())
    .stdin(Stdio::null());
    c
}

/// One C-GET of the study through `addr` into `out`: (files written, wall time).
fn c_get(addr: SocketAddr, study_uid: &str, out: &Path) -> anyhow::Result<(usize, Duration)> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let t = Instant::now();
    let o = dcmtk("getscu", addr)
        .args(["-S", "-k", "QueryRetrieveLevel=STUDY", "-k"])
        .arg(format!("StudyInstanceUID={study_uid}"))
        .arg("-od")
        .arg(out)
        .output()
        .context("running getscu (apt-get install dcmtk)")?;
    let wall = t.elapsed();
    if !o.status.success() {
        bail!(
            "getscu failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let n = std::fs::read_dir(out)?.count();
    let _ = std::fs::remove_dir_all(out);
    Ok((n, wall))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(o: Opts) -> anyhow::Result<()> {
    let base = o.work.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("postern-bench-dicom-{}", std::process::id()))
    });
    std::fs::create_dir_all(&base)?;
    let result = measure(&o, &base);
    if o.work.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

fn measure(o: &Opts, base: &Path) -> anyhow::Result<()> {
    let (study_uid, files, bytes) =
        crate::web::make_study(&base.join("study"), o.instances, o.rows, o.cols, 17)?;
    let (_orthanc, pacs) = start_orthanc(&base.join("orthanc"))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(base.join("study"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let t = Instant::now();
    let st = dcmtk("storescu", pacs).args(&paths).output()?;
    if !st.status.success() {
        bail!(
            "loading Orthanc failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    // The files are in Orthanc now; the generated copies are not needed.
    let _ = std::fs::remove_dir_all(base.join("study"));
    eprintln!(
        "postern-bench dicom: study {study_uid}: {files} instances, {bytes} bytes, loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opaque = listener(&rt, Mode::Opaque, pacs)?;
    let inspecting = listener(&rt, Mode::Inspecting, pacs)?;
    let out = base.join("got");
    // Warm-up (Orthanc's caches, the page cache), not measured.
    c_get(opaque.addr, &study_uid, &out)?;
    c_get(inspecting.addr, &study_uid, &out)?;

    let mut per: Vec<(Mode, f64, f64)> = Vec::new();
    for round in 0..o.runs {
        let order = if round % 2 == 0 {
            [Mode::Opaque, Mode::Inspecting]
        } else {
            [Mode::Inspecting, Mode::Opaque]
        };
        for mode in order {
            let l = if mode == Mode::Opaque {
                &opaque
            } else {
                &inspecting
            };
            let (b0, r0) = (
                l.from_pacs.load(Ordering::Relaxed),
                l.records.load(Ordering::Relaxed),
            );
            let c0 = cpu_now()?;
            let (n, wall) = c_get(l.addr, &study_uid, &out)?;
            // The relay task adds its count when the connection has closed.
            let t = Instant::now();
            while l.from_pacs.load(Ordering::Relaxed) == b0 && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let cpu = cpu_now()? - c0;
            let moved = l.from_pacs.load(Ordering::Relaxed) - b0;
            let records = l.records.load(Ordering::Relaxed) - r0;
            if n != files as usize {
                bail!("{} C-GET wrote {n} files of {files}", mode.name());
            }
            let mbps = moved as f64 / 1e6 / wall.as_secs_f64();
            let cpu_per_gb = cpu.as_secs_f64() / (moved as f64 / 1e9);
            print_line(
                &json!({
                    "bench": "dicom", "round": round + 1, "relay": mode.name(),
                    "instances": n, "bytes_from_pacs": moved, "wall_s": wall.as_secs_f64(),
                    "mb_per_s": mbps, "cpu_s": cpu.as_secs_f64(), "cpu_s_per_gb": cpu_per_gb,
                    "records": records,
                })
                .to_string(),
            );
            per.push((mode, mbps, cpu_per_gb));
        }
    }
    let pick = |m: Mode, f: fn(&(Mode, f64, f64)) -> f64| {
        median(per.iter().filter(|p| p.0 == m).map(f).collect())
    };
    let (to, ti) = (pick(Mode::Opaque, |p| p.1), pick(Mode::Inspecting, |p| p.1));
    let (co, ci) = (pick(Mode::Opaque, |p| p.2), pick(Mode::Inspecting, |p| p.2));
    print_line(
        &json!({
            "bench": "dicom", "summary": true, "runs": o.runs, "study_bytes": bytes,
            "instances": files,
            "opaque_mb_per_s": to, "inspecting_mb_per_s": ti, "throughput_ratio": ti / to,
            "opaque_cpu_s_per_gb": co, "inspecting_cpu_s_per_gb": ci, "cpu_ratio": ci / co,
            "throughput_target_met": ti / to >= 0.9, "cpu_target_met": ci / co <= 1.2,
        })
        .to_string(),
    );
    Ok(())
}
