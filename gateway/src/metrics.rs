//! Prometheus metrics, served in the text exposition format on the separate admin listener
//! (`[admin] listen`, loopback by default), never on the public ports.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub sessions_active: IntGaugeVec,
    pub sessions_total: IntCounterVec,
    /// Resumable sessions waiting for their client to come back.
    pub sessions_suspended: IntGauge,
    /// Attempts to resume a suspended tunnel, by `result` (`resumed`, `ended`, `unknown`,
    /// `refused`).
    pub session_resumes: IntCounterVec,
    pub session_setup: Histogram,
    pub tunnel_bytes: IntCounterVec,
    /// Web application requests answered, by endpoint and status class (`2xx`, `4xx`, ...).
    pub web_requests: IntCounterVec,
    /// DICOM records the connectors reported (`association`, `query`, `retrieve`, `store`,
    /// `refused`), each written as a `dicom.*` audit event.
    pub dicom_records: IntCounterVec,
    pub connectors_connected: IntGaugeVec,
    pub connector_rtt: HistogramVec,
    pub auth_logins: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    pub policy_version: IntGaugeVec,
    pub audit_events: IntCounter,
    pub audit_failures: IntCounter,
    pub audit_write: Histogram,
    pub ratelimited: IntCounterVec,
    /// Unauthenticated requests refused (audited in aggregate), by reason code.
    pub refused_unauthenticated: IntCounterVec,
    /// Connections closed at accept: `listener` client or connector, `reason` `pool_full` or
    /// `per_address`.
    pub connections_refused: IntCounterVec,
    /// Client connections sent GOAWAY after `client_idle_timeout` without an open stream.
    pub client_idle_closed: IntCounter,
    pub build_info: IntGaugeVec,
    pub connections_open: IntGauge,
    pub device_ceremonies: IntCounterVec,
    pub server_cert_expiry: IntGauge,
    /// 1 while the state store's database answers.
    pub store_up: IntGauge,
    /// Seconds since the state store last answered (0 while it answers).
    pub store_staleness: prometheus::Gauge,
    audit_seen: AtomicU64,
    audit_failed_seen: AtomicU64,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let m = Metrics {
            sessions_active: reg!(IntGaugeVec::new(
                Opts::new("postern_sessions_active", "Live tunnelled sessions"),
                &["site", "endpoint"]
            )?),
            sessions_total: reg!(IntCounterVec::new(
                Opts::new("postern_sessions_total", "Tunnel requests by decision"),
                &["decision"]
            )?),
            sessions_suspended: reg!(IntGauge::new(
                "postern_sessions_suspended",
                "Resumable sessions whose client link is lost, waiting up to resume_grace"
            )?),
            session_resumes: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_session_resumes_total",
                    "Requests to resume a suspended tunnel, by result"
                ),
                &["result"]
            )?),
            session_setup: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "postern_session_setup_seconds",
                    "From CONNECT received to tunnel ready (token, policy, durable audit, connector dial)"
                )
                .buckets(latency_buckets())
            )?),
            tunnel_bytes: reg!(IntCounterVec::new(
                Opts::new("postern_tunnel_bytes_total", "Bytes relayed by ended sessions"),
                &["direction"]
            )?),
            web_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_web_requests_total",
                    "Web application requests answered by the proxy, by endpoint and status class"
                ),
                &["endpoint", "class"]
            )?),
            dicom_records: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_dicom_records_total",
                    "DICOM records reported by connectors and audited, by event"
                ),
                &["event"]
            )?),
            connectors_connected: reg!(IntGaugeVec::new(
                Opts::new("postern_connectors_connected", "Live connector links"),
                &["site"]
            )?),
            connector_rtt: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "postern_connector_rtt_seconds",
                    "Round trip of a probe request over each connector link (every 10 s)"
                )
                .buckets(latency_buckets()),
                &["site", "connector"]
            )?),
            auth_logins: reg!(IntCounterVec::new(
                Opts::new("postern_auth_logins_total", "Sign-ins by result"),
                &["result"]
            )?),
            policy_reloads: reg!(IntCounterVec::new(
                Opts::new("postern_policy_reloads_total", "Policy reloads by result"),
                &["result"]
            )?),
            policy_version: reg!(IntGaugeVec::new(
                Opts::new("postern_policy_version_info", "The running policy version (value 1)"),
                &["version"]
            )?),
            audit_events: reg!(IntCounter::new(
                "postern_audit_events_total",
                "Audit events written"
            )?),
            audit_failures: reg!(IntCounter::new(
                "postern_audit_failures_total",
                "Audit events that could not be written"
            )?),
            audit_write: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "postern_audit_write_seconds",
                    "Time to make session.start durable (group commit + fdatasync)"
                )
                .buckets(latency_buckets())
            )?),
            ratelimited: reg!(IntCounterVec::new(
                Opts::new("postern_ratelimited_total", "Requests refused by rate limits"),
                &["what"]
            )?),
            refused_unauthenticated: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_refused_unauthenticated_total",
                    "Requests refused before authentication or for their token, by reason"
                ),
                &["reason"]
            )?),
            connections_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connections_refused_total",
                    "Connections closed at accept: listener pool full, or the source address at its cap"
                ),
                &["listener", "reason"]
            )?),
            client_idle_closed: reg!(IntCounter::new(
                "postern_client_idle_closed_total",
                "Client connections sent GOAWAY after client_idle_timeout with no open stream"
            )?),
            build_info: reg!(IntGaugeVec::new(
                Opts::new("postern_build_info", "Build information (value 1)"),
                &["version"]
            )?),
            connections_open: reg!(IntGauge::new(
                "postern_connections_open",
                "Open TCP connections on both listeners"
            )?),
            device_ceremonies: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_device_ceremonies_total",
                    "WebAuthn registrations and assertions by result (ok or the failure code)"
                ),
                &["kind", "result"]
            )?),
            server_cert_expiry: reg!(IntGauge::new(
                "postern_tls_cert_expiry_timestamp_seconds",
                "Expiry of the client-facing TLS certificate (Unix time)"
            )?),
            store_up: reg!(IntGauge::new(
                "postern_store_up",
                "1 while the state store's database answers, else 0"
            )?),
            store_staleness: reg!(prometheus::Gauge::new(
                "postern_store_staleness_seconds",
                "Seconds since the state store's database last answered (0 while it answers)"
            )?),
            audit_seen: AtomicU64::new(0),
            audit_failed_seen: AtomicU64::new(0),
            registry,
        };
        m.store_up.set(1);
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(m)
    }

    /// Counts a rate-limited request of kind `what`.
    pub fn note_ratelimited(&self, what: &str) {
        self.ratelimited.with_label_values(&[what]).inc();
        tracing::debug!(what, "rate limited");
    }

    pub fn set_policy_version(&self, version: &str) {
        self.policy_version.reset();
        self.policy_version.with_label_values(&[version]).set(1);
    }

    /// Brings the audit counters up to the writer's own totals.
    pub fn sync_audit(&self, written: u64, failed: u64) {
        let prev = self.audit_seen.swap(written, Ordering::Relaxed);
        self.audit_events.inc_by(written.saturating_sub(prev));
        let prev = self.audit_failed_seen.swap(failed, Ordering::Relaxed);
        self.audit_failures.inc_by(failed.saturating_sub(prev));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
