//! Policy benchmarks: a realistic 1,000-rule policy for a 20-site trust.
//!
//! * `decision/*`: criterion timings of single decisions of several kinds (one of them a web
//!   request checked against a rule's `methods` and `paths`);
//! * a percentile run (printed before criterion's output): every decision of a realistic mix
//!   timed on its own, reporting p50 / p90 / p99 / p99.9;
//! * `compile/1000-rules`: parsing, validating and indexing the policy (what a reload costs).
//!
//! Run with `cargo bench -p postern-policy --bench evaluate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, Criterion};
use postern_policy::{DeviceFacts, Policy, Request};

const SITES: usize = 20;

/// The policy: 20 sites × 10 endpoints, 80 site groups + 4 trust-wide groups, and exactly
/// 1,000 rules: per-site clinician rules with device, sign-in and window conditions,
/// maintenance-window denies, 640 locum contracts (one user each, with dates and evening
/// windows), suspensions.
fn policy_text() -> String {
    let mut t = String::from(
        "[defaults]\nmax_session = \"8h\"\nidle_timeout = \"30m\"\nzone = \"Europe/London\"\n\n",
    );
    for g in [
        "trust-consultants",
        "trust-registrars",
        "suspended",
        "emergency",
    ] {
        t.push_str(&format!(
            "[[groups]]\nname = \"{g}\"\nvalues = [\"{g}\", \"{g}-guid\"]\n\n"
        ));
    }
    for s in 0..SITES {
        for kind in ["consultants", "registrars", "locums", "admins"] {
            t.push_str(&format!(
                "[[groups]]\nname = \"site{s}-{kind}\"\nvalues = [\"Site{s}-{kind}\"]\n\n"
            ));
        }
        for (e, (kind, protocol, port, egress)) in [
            ("pacs-dicom", "dicom", 104, "data"),
            ("pacs-web", "https", 443, "display"),
            ("ris-web", "https", 443, "display"),
            ("reporting-pc-01", "rdp", 3389, "display"),
            ("reporting-pc-02", "rdp", 3389, "display"),
            ("reporting-pc-03", "rdp", 3389, "display"),
            ("reporting-pc-04", "rdp", 3389, "display"),
            ("voice", "tcp", 7000, "data"),
            ("modality-ct", "dicom", 11112, "data"),
            ("modality-mr", "dicom", 11112, "data"),
        ]
        .iter()
        .enumerate()
        {
            let label = kind.split('-').next().unwrap_or("x");
            t.push_str(&format!(
                "[[endpoints]]\nname = \"site{s}-{kind}\"\nsite = \"site{s}\"\nhost = \"10.{s}.0.{e}\"\nport = {port}\nprotocol = \"{protocol}\"\negress = \"{egress}\"\nlabels = [\"site{s}\", \"{label}\"]\n\n"
            ));
        }
    }
    let mut rules = 0;
    let rule = |t: &mut String, body: String| {
        let n = t.matches("[[rules]]").count() + 1;
        t.push_str(&format!("[[rules]]\nid = \"r{n}\"\n{body}\n"));
    };
    rule(
        &mut t,
        "effect = \"deny\"\ngroups = [\"suspended\"]\nendpoints = [\"*\"]\n".into(),
    );
    for s in 0..SITES {
        rule(&mut t, format!("effect = \"deny\"\ngroups = [\"*\"]\nendpoint_labels = [\"reporting\"]\nendpoints = [\"site{s}-*\"]\nwindows = [\"Sun 02:00-04:00\"]\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-consultants\", \"trust-consultants\"]\nendpoint_labels = [\"site{s}\"]\negress = \"display\"\nauth = {{ mfa = true }}\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-consultants\", \"trust-consultants\"]\nendpoint_labels = [\"site{s}\"]\negress = \"data\"\nauth = {{ mfa = true, max_age = \"12h\" }}\ndevice = {{ approved = true, user_verified = true }}\nreport_only = [\"device.user_verified\"]\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-registrars\", \"trust-registrars\"]\nendpoint_labels = [\"site{s}\"]\negress = \"display\"\nmax_session = \"4h\"\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-registrars\"]\nendpoints = [\"site{s}-pacs-dicom\"]\nwindows = [\"Mon-Fri 08:00-20:00\"]\ndevice = {{ approved = true }}\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-admins\"]\nendpoints = [\"site{s}-pacs-*\", \"site{s}-modality-*\"]\nsource = {{ allow = [\"10.0.0.0/8\"] }}\ndevice = {{ approved = true }}\nmax_session = \"1h\"\n"));
        rule(&mut t, format!("effect = \"deny\"\ngroups = [\"site{s}-locums\"]\nendpoint_labels = [\"site{s}\"]\negress = \"data\"\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"site{s}-registrars\"]\nendpoints = [\"site{s}-ris-web\"]\nmethods = [\"GET\", \"HEAD\"]\npaths = [\"/worklist/\", \"/static/\"]\n"));
        rule(&mut t, format!("effect = \"allow\"\ngroups = [\"emergency\"]\nendpoints = [\"site{s}-pacs-web\"]\nrequire_justification = true\nmax_session = \"1h\"\n"));
        for i in 0..32 {
            let start = 1 + (i % 12);
            rule(&mut t, format!(
                "effect = \"allow\"\nusers = [\"locum{i}.site{s}@agency.example\"]\nendpoints = [\"site{s}-pacs-web\", \"site{s}-reporting-pc-0{}\"]\nvalid_from = 2025-{start:02}-01\nvalid_until = 2026-{start:02}-28\nwindows = [\"Mon-Fri 18:00-08:00\", \"Sat,Sun 08:00-20:00\"]\nauth = {{ mfa = true }}\nmax_session = \"2h\"\nidle_timeout = \"15m\"\n",
                1 + i % 4
            ));
        }
        // Per-site suspensions of individual users on the PACS.
        for i in 0..9 {
            rule(&mut t, format!("effect = \"deny\"\nusers = [\"suspended{i}.site{s}@trust.example\"]\nendpoints = [\"site{s}-pacs-dicom\"]\n"));
        }
    }
    // Top up to exactly 1,000 with display rules for named visiting users.
    rules += t.matches("[[rules]]").count();
    for n in rules..1000 {
        rule(&mut t, format!("effect = \"allow\"\nusers = [\"visitor{n}@trust.example\"]\nendpoints = [\"site{}-pacs-web\"]\n", n % SITES));
    }
    t
}

/// A realistic mix of requests, each with the facts the gateway would have.
struct Sample {
    user: String,
    groups: Vec<String>,
    endpoint: String,
    at: SystemTime,
    device: Option<DeviceFacts>,
    mfa: bool,
}

fn samples() -> Vec<Sample> {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_741_089_600); // Tue 2025-03-04 12:00Z
    let approved = DeviceFacts {
        registered: true,
        approved: true,
        user_verified: true,
        posture: Default::default(),
    };
    let mut out = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let endpoints = [
        "pacs-dicom",
        "pacs-web",
        "ris-web",
        "reporting-pc-01",
        "reporting-pc-02",
        "voice",
        "modality-ct",
    ];
    for _ in 0..4096 {
        let s = next() % SITES as u64;
        let at = base + Duration::from_secs(next() % (7 * 86_400));
        let endpoint = format!(
            "site{s}-{}",
            endpoints[(next() % endpoints.len() as u64) as usize]
        );
        let sample = match next() % 10 {
            0..=3 => Sample {
                user: format!("dr{}@trust.example", next() % 500),
                groups: vec![
                    format!("Site{s}-consultants"),
                    "All-Staff".into(),
                    "Radiology".into(),
                ],
                endpoint,
                at,
                device: Some(approved.clone()),
                mfa: true,
            },
            4..=5 => Sample {
                user: format!("reg{}@trust.example", next() % 500),
                groups: vec![format!("Site{s}-registrars"), "All-Staff".into()],
                endpoint,
                at,
                device: (next() % 2 == 0).then(|| approved.clone()),
                mfa: true,
            },
            6..=7 => Sample {
                user: format!("locum{}.site{s}@agency.example", next() % 40),
                groups: vec![format!("Site{s}-locums")],
                endpoint,
                at,
                device: None,
                mfa: true,
            },
            8 => Sample {
                user: format!("admin{s}@trust.example"),
                groups: vec![format!("Site{s}-admins"), "All-Staff".into()],
                endpoint,
                at,
                device: Some(approved.clone()),
                mfa: false,
            },
            _ => Sample {
                user: format!("porter{}@trust.example", next() % 100),
                groups: vec!["All-Staff".into(), "Estates".into()],
                endpoint,
                at,
                device: None,
                mfa: false,
            },
        };
        out.push(sample);
    }
    out
}

const SOURCE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 8, 7));

fn decide(policy: &Policy, s: &Sample) -> postern_policy::Decision {
    let mut req = Request::new(&s.user, &s.groups, &s.endpoint, s.at)
        .with_source(SOURCE)
        .with_auth(s.mfa, Some(s.at - Duration::from_secs(3600)));
    if let Some(d) = &s.device {
        req = req.with_device(d);
    }
    policy.evaluate(&req)
}

/// Times every decision of the mix on its own and prints percentiles.
fn percentiles(policy: &Policy, samples: &[Sample]) {
    // Warm up.
    for s in samples {
        black_box(decide(policy, s));
    }
    // Overhead of the timer itself, subtracted from each measurement.
    let mut overhead: Vec<u64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    overhead.sort_unstable();
    let timer = overhead[overhead.len() / 2];
    let mut times = Vec::with_capacity(samples.len() * 50);
    let (mut allowed, mut total) = (0, 0);
    for _ in 0..50 {
        for s in samples {
            let t = Instant::now();
            let d = black_box(decide(policy, s));
            times.push((t.elapsed().as_nanos() as u64).saturating_sub(timer));
            total += 1;
            allowed += usize::from(d.is_allowed());
        }
    }
    times.sort_unstable();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "policy decision latency over {} decisions ({}% allowed; timer overhead {} ns subtracted): p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        times.len(),
        allowed * 100 / total,
        timer,
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999),
        times[times.len() - 1]
    );
}

fn benches(c: &mut Criterion) {
    let text = policy_text();
    let policy = Policy::parse(&text, "bench.toml").unwrap();
    assert_eq!(policy.rule_count(), 1000);
    println!(
        "policy text: {} bytes, {} endpoints, {} rules",
        text.len(),
        policy.endpoints().len(),
        policy.rule_count()
    );
    let samples = samples();
    percentiles(&policy, &samples);

    let mut group = c.benchmark_group("decision");
    let consultant = samples
        .iter()
        .find(|s| s.user.starts_with("dr") && s.endpoint.ends_with("pacs-dicom"))
        .unwrap();
    group.bench_function("consultant-dicom-allow", |b| {
        b.iter(|| decide(&policy, black_box(consultant)))
    });
    let locum = samples
        .iter()
        .find(|s| s.user.starts_with("locum"))
        .unwrap();
    group.bench_function("locum-windowed", |b| {
        b.iter(|| decide(&policy, black_box(locum)))
    });
    let porter = samples
        .iter()
        .find(|s| s.user.starts_with("porter"))
        .unwrap();
    group.bench_function("default-deny", |b| {
        b.iter(|| decide(&policy, black_box(porter)))
    });
    // A web request as the gateway's proxy asks it, per HTTP request: a read-only rule with
    // methods and paths.
    let registrar = vec!["Site0-registrars".to_owned()];
    let tuesday = SystemTime::UNIX_EPOCH + Duration::from_secs(1_741_089_600);
    group.bench_function("web-request-read-only", |b| {
        b.iter(|| {
            let req = Request::new("reg@trust.example", &registrar, "site0-ris-web", tuesday)
                .with_web_request(black_box("GET"), black_box("/worklist/today?modality=CT"));
            let decision = policy.evaluate(&req);
            assert!(decision.is_allowed());
            decision
        })
    });
    let mut i = 0;
    group.bench_function("mix", |b| {
        b.iter(|| {
            i = (i + 1) % samples.len();
            decide(&policy, black_box(&samples[i]))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    group.bench_function("1000-rules", |b| {
        b.iter(|| Policy::parse(black_box(&text), "bench.toml").unwrap())
    });
    // The floor: the TOML parser alone on the same text.
    group.bench_function("toml-parse-only", |b| {
        b.iter(|| black_box(&text).parse::<toml::Table>().unwrap())
    });
    group.finish();
}

criterion_group!(policy_benches, benches);

fn main() {
    policy_benches();
    Criterion::default().configure_from_args().final_summary();
}
