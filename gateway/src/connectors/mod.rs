//! Connectors: how the gateway reaches hospital endpoints. Modules, lowest first:
//!
//! * `registry`: the [`Upstream`] seam (pick a route to a site, open a stream on it) and its
//!   implementation, the [`Registry`] of live connector links.
//! * `rtt`: the round-trip probe on each link (`postern_connector_rtt_seconds`).
//! * `renew`: certificate renewal over a short extra mutual-TLS connection.
//! * `link`: serving one connector connection after TLS: identity against the store, then a
//!   renewal or a registered link; `announce_drain`.
//! * `enroll`: `POST /v1/enroll`, a one-time token and a CSR become a connector certificate.

pub mod enroll;
pub mod link;
pub mod registry;
pub mod renew;
mod rtt;

pub use enroll::Enrolment;
pub use link::{announce_drain, Links};
pub use registry::{OpenRequest, Registry, Route, Upstream, UpstreamError};
pub use renew::Renewals;
