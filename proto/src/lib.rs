//! Wire protocol shared by the Postern gateway, connector and client.
//!
//! Nothing here does I/O or holds business logic; it is the vocabulary the three programs share:
//!
//! * [`wire`]: ALPN ids, header names, the `CONNECT` authority convention, JSON message bodies
//!   (enrolment, endpoint listings, errors), the HTTP/2 flow-control windows.
//! * [`certs`]: what a certificate says (validity dates, subject, serial, names), judged
//!   against a `now` the caller passes in.
//! * [`enroll`]: the one-time enrolment token format (secret + pin of the gateway's CA).
//! * [`posture`]: the device posture report, its canonical hash and the WebAuthn challenge
//!   that binds it.
//! * [`confirm`]: the sign-in confirmation code `postern login` prints and the device page shows.
//! * [`dicom`]: the DICOM permit a gateway sends with a tunnel and the records a connector
//!   reports back (AE titles, queries, retrieves) for the audit.
//! * [`ids`]: random identifiers and constant-time comparison.
//! * [`report`]: one-line rendering of an error chain for people.
//!
//! Everything that touches sockets, files or TLS configuration (rustls builders, the HTTP/2
//! settings, `host:port` parsing, the byte relay, private file writes, reading certificate and
//! key files) is in the `postern-net` crate, which depends on this one and never the reverse.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod certs;
pub mod confirm;
pub mod dicom;
pub mod enroll;
pub mod ids;
pub mod posture;
pub mod report;
pub mod wire;
