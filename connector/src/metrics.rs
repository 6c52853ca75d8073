//! Connector metrics (Prometheus text format), served with health checks on the optional admin
//! listener (`[admin] listen`, served by the `admin_http` module).

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Gateway links currently up (TLS + HTTP/2 established).
    pub links_up: IntGauge,
    /// Gateway addresses links are kept to: the configured ones and the replicas they told.
    pub gateways: IntGauge,
    /// Tunnels being relayed now.
    pub streams_active: IntGauge,
    /// Dials to targets by result: `ok`, `unreachable`, `resolve_failed`.
    pub dials: IntCounterVec,
    /// Tunnel requests refused because the target is outside the allowlist.
    pub allowlist_refusals: IntCounter,
    /// Link (re)connection attempts after a link was lost or failed.
    pub reconnects: IntCounter,
    /// Bytes relayed by closed tunnels: `to_target`, `from_target`.
    pub tunnel_bytes: IntCounterVec,
    /// Expiry of the client certificate in use (seconds since the epoch).
    pub cert_expiry: IntGauge,
    /// Certificate renewals by result: `ok`, `failed`.
    pub renewals: IntCounterVec,
    /// DICOM associations refused or aborted by the inspecting relay, by `reason` (the
    /// refusal code of the record: `calling_ae_not_allowed`, `service_not_allowed`, …).
    pub dicom_refusals: IntCounterVec,
    /// DIMSE requests the inspecting relay forwarded from the clinician's side, by
    /// `service` (`echo`, `find`, `get`, `move`, `store`).
    pub dicom_operations: IntCounterVec,
    /// DICOM records dropped because the gateway did not take them fast enough (or never
    /// opened the session's events stream).
    pub dicom_records_dropped: IntCounter,
    pub build_info: IntGaugeVec,
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
            links_up: reg!(IntGauge::new(
                "postern_connector_links_up",
                "Gateway links currently up"
            )?),
            gateways: reg!(IntGauge::new(
                "postern_connector_gateways",
                "Gateway addresses links are kept to (configured, and replicas the gateways told)"
            )?),
            streams_active: reg!(IntGauge::new(
                "postern_connector_streams_active",
                "Tunnels being relayed now"
            )?),
            dials: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connector_dials_total",
                    "Dials to targets by result"
                ),
                &["result"]
            )?),
            allowlist_refusals: reg!(IntCounter::new(
                "postern_connector_allowlist_refusals_total",
                "Tunnel requests refused: target outside the allowlist"
            )?),
            reconnects: reg!(IntCounter::new(
                "postern_connector_reconnects_total",
                "Link connection attempts after a link was lost or failed"
            )?),
            tunnel_bytes: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connector_tunnel_bytes_total",
                    "Bytes relayed by closed tunnels"
                ),
                &["direction"]
            )?),
            cert_expiry: reg!(IntGauge::new(
                "postern_connector_cert_expiry_timestamp_seconds",
                "Expiry of the client certificate in use (Unix time)"
            )?),
            renewals: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connector_cert_renewals_total",
                    "Client certificate renewals by result"
                ),
                &["result"]
            )?),
            dicom_refusals: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connector_dicom_refusals_total",
                    "DICOM associations refused (A-ASSOCIATE-RJ) or aborted (A-ABORT) by the inspecting relay, by reason"
                ),
                &["reason"]
            )?),
            dicom_operations: reg!(IntCounterVec::new(
                Opts::new(
                    "postern_connector_dicom_operations_total",
                    "DIMSE requests forwarded from the clinician's side by the inspecting relay, by service"
                ),
                &["service"]
            )?),
            dicom_records_dropped: reg!(IntCounter::new(
                "postern_connector_dicom_records_dropped_total",
                "DICOM records dropped: the gateway did not take them fast enough"
            )?),
            build_info: reg!(IntGaugeVec::new(
                Opts::new(
                    "postern_connector_build_info",
                    "Build information (value 1)"
                ),
                &["version"]
            )?),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for r in ["ok", "unreachable", "resolve_failed"] {
            m.dials.with_label_values(&[r]);
        }
        for r in ["ok", "failed"] {
            m.renewals.with_label_values(&[r]);
        }
        for r in crate::dicom::refusal::ALL {
            m.dicom_refusals.with_label_values(&[r]);
        }
        for s in postern_proto::dicom::DicomService::ALL {
            m.dicom_operations.with_label_values(&[s.as_str()]);
        }
        for d in ["to_target", "from_target"] {
            m.tunnel_bytes.with_label_values(&[d]);
        }
        Ok(m)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
