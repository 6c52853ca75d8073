//! The Postern connector: the on-premises agent that dials *out* to the gateway.
//!
//! * [`config`]: `connector.toml` (state directory, gateway addresses, allowlist).
//! * [`allowlist`]: the connector's own list of reachable networks and ports (default deny).
//! * [`enroll`]: one-time enrolment (CSR + token → client certificate).
//! * [`link`]: the dial-out links; each serves the gateway's HTTP/2 `CONNECT` requests (and
//!   answers the gateway's round-trip probes).
//! * [`renew`]: automatic renewal of the client certificate before it expires.
//! * [`check`]: `postern-connector check` (state, certificates, gateway reachability).
//! * [`metrics`] and [`admin_http`]: Prometheus metrics and health on the optional admin listener.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin_http;
pub mod allowlist;
pub mod check;
pub mod config;
pub mod enroll;
pub mod link;
pub mod metrics;
pub mod renew;
