//! Durable audit writes on a real disk (the cargo target directory, not tmpfs).
//!
//! * `group_commit_{256,1024}_tasks`: that many tasks each `record` (durable) in a loop:
//!   events/s with group commit, and the latency of each `record` (its commit latency) as
//!   p50/p99. Throughput is about (events per batch) x (fdatasyncs per second of the disk).
//! * `fdatasync_per_event`: one task, one `record` at a time: every event is its own batch and
//!   its own `fdatasync`.
//! * `session_setup`: the latency a durable `session.start` adds to session setup on an
//!   otherwise idle log (what a clinician's connect waits for).
//!
//! Latency percentiles are printed after each group (criterion reports time per event, not
//! percentiles). Run with `cargo bench -p postern-audit --bench audit_write`; set
//! `POSTERN_BENCH_DIR` to measure another disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postern_audit::{AuditKey, AuditLog, AuditOptions, DecisionRef, EndpointRef, Event, EventType};

fn bench_dir() -> PathBuf {
    std::env::var_os("POSTERN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn event(i: u64) -> Event {
    Event {
        session_id: Some(format!("0193a5b2-7c1e-7000-8000-{i:012}")),
        user: Some(format!("sub-{:06}", i % 5000)),
        user_email: Some(format!("user{}@trust.nhs.example", i % 5000)),
        groups: Some(vec!["radiologists".into()]),
        source: Some("203.0.113.7:51234".into()),
        endpoint: Some(EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            host: "pacs.truro.local".into(),
            port: 11112,
            protocol: "dicom".into(),
        }),
        decision: Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("radiologists-pacs".into()),
            policy_version: Some("sha256:0f1e2d3c4b5a".into()),
            reason: "group radiologists".into(),
            ..DecisionRef::default()
        }),
        gateway: Some("gw-bench".into()),
        ..Event::new(EventType::SessionStart)
    }
}

fn percentiles(name: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        return;
    }
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    eprintln!(
        "{name}: {} commits; latency p50 {:?}, p90 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

struct Setup {
    rt: tokio::runtime::Runtime,
    log: AuditLog,
    _tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir_in(bench_dir()).unwrap();
    let key = AuditKey::generate().unwrap();
    let log = rt
        .block_on(AuditLog::open_with(
            &tmp.path().join("audit"),
            AuditOptions {
                signing_key: Some(key),
                node_id: Some("gw-bench".into()),
                ..AuditOptions::default()
            },
        ))
        .unwrap();
    Setup { rt, log, _tmp: tmp }
}

fn group_commit(c: &mut Criterion) {
    group_commit_with(c, 256);
    group_commit_with(c, 1024);
}

fn group_commit_with(c: &mut Criterion, tasks: u64) {
    let name = format!("group_commit_{tasks}_tasks");
    let s = setup();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut group = c.benchmark_group("durable");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            let log = s.log.clone();
            let latencies = Arc::clone(&latencies);
            s.rt.block_on(async move {
                let per_task = iters.div_ceil(tasks);
                let start = Instant::now();
                let handles: Vec<_> = (0..tasks)
                    .map(|t| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            let mut lat = Vec::with_capacity(per_task as usize);
                            for i in 0..per_task {
                                let e = event(t * per_task + i);
                                let t0 = Instant::now();
                                log.record(e).await.unwrap();
                                lat.push(t0.elapsed());
                            }
                            lat
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.await.unwrap());
                }
                let elapsed = start.elapsed();
                latencies.lock().unwrap().extend(all);
                // Report per requested iteration (rounding up per task adds a few events).
                elapsed.mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        })
    });
    group.finish();
    percentiles(&name, &mut latencies.lock().unwrap());
    eprintln!("{name}: {:?}", s.log.stats());
    s.rt.block_on(s.log.close()).unwrap();
}

fn fdatasync_per_event(c: &mut Criterion) {
    let s = setup();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut group = c.benchmark_group("durable");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("fdatasync_per_event", |b| {
        b.iter_custom(|iters| {
            let log = s.log.clone();
            let latencies = Arc::clone(&latencies);
            s.rt.block_on(async move {
                let mut lat = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for i in 0..iters {
                    let t0 = Instant::now();
                    log.record(event(i)).await.unwrap();
                    lat.push(t0.elapsed());
                }
                let elapsed = start.elapsed();
                latencies.lock().unwrap().extend(lat);
                elapsed
            })
        })
    });
    group.finish();
    percentiles("fdatasync_per_event", &mut latencies.lock().unwrap());
    s.rt.block_on(s.log.close()).unwrap();
}

/// A session.start recorded while other sessions' events flow in the background (1,000
/// events/s of `record_nowait`, as session ends and connector events would).
fn session_setup(c: &mut Criterion) {
    let s = setup();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let background = {
        let log = s.log.clone();
        s.rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut i = 0u64;
            loop {
                tick.tick().await;
                log.record_nowait(event(1_000_000_000 + i));
                i += 1;
            }
        })
    };
    let mut group = c.benchmark_group("durable");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("session_start_with_background_load", |b| {
        b.iter_custom(|iters| {
            let log = s.log.clone();
            let latencies = Arc::clone(&latencies);
            s.rt.block_on(async move {
                let mut total = Duration::ZERO;
                let mut lat = Vec::with_capacity(iters as usize);
                for i in 0..iters {
                    let t0 = Instant::now();
                    log.record(event(i)).await.unwrap();
                    let d = t0.elapsed();
                    total += d;
                    lat.push(d);
                }
                latencies.lock().unwrap().extend(lat);
                total
            })
        })
    });
    group.finish();
    background.abort();
    percentiles(
        "session_start_with_background_load",
        &mut latencies.lock().unwrap(),
    );
    s.rt.block_on(s.log.close()).unwrap();
}

criterion_group!(benches, group_commit, fdatasync_per_event, session_setup);
criterion_main!(benches);
