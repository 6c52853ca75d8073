//! The Postern connector: the on-premises agent that dials *out* to the gateway.
//!
//! Modules, from the top down (a module uses only those below it):
//!
//! * [`agent`]: the running connector as tasks behind an [`AgentHandle`] ([`spawn`]); dropping
//!   the handle stops it. [`run`] is spawn + wait for shutdown + graceful shutdown.
//! * [`link`]: one dial-out link loop; each link serves the gateway's HTTP/2 `CONNECT`
//!   requests (and answers the gateway's round-trip probes).
//! * [`renew`]: automatic renewal of the client certificate before it expires.
//! * [`check`]: `postern-connector check` (state, certificates, gateway reachability).
//! * [`dicom`]: the inspecting relay of DICOM tunnels (issue #17): the gateway's permit
//!   enforced on the association, and the records of what it carried.
//! * [`admin_http`] and [`metrics`]: Prometheus metrics and health on the optional admin
//!   listener.
//! * [`identity`]: the enrolled key and certificate on disk, the mutual-TLS client
//!   configuration built from them, and the swappable slot that holds the one in use.
//! * [`enroll`]: one-time enrolment (CSR + token → client certificate).
//! * [`config`]: `connector.toml` (state directory, gateway addresses, allowlist).
//! * [`allowlist`]: the connector's own list of reachable networks and ports (default deny).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin_http;
pub mod agent;
pub mod allowlist;
pub mod check;
pub mod config;
pub mod dicom;
pub mod enroll;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod renew;

pub use agent::{run, spawn, AgentHandle, LinkError, EXIT_REVOKED};
