//! Wire protocol shared by the Postern gateway, connector and client.
//!
//! Nothing here does I/O or holds business logic; it is the vocabulary the three programs share:
//!
//! * [`wire`]: ALPN ids, header names, the `CONNECT` authority convention, JSON message bodies
//!   (enrolment, endpoint listings, errors).
//! * [`tls`]: rustls configuration builders. Every config is built with the ring provider passed
//!   explicitly (`builder_with_provider`) and TLS 1.3 only, so cargo feature unification can
//!   never select another provider at run time.
//! * [`certs`]: certificate dates, key/certificate matching, safe key file modes.
//! * [`enroll`]: the one-time enrolment token format (secret + pin of the gateway's CA).
//! * [`fsutil`]: private directories and atomic, mode-setting file writes (keys, tokens).
//! * [`posture`]: the device posture report, its canonical hash and the WebAuthn challenge
//!   that binds it.
//! * [`ids`]: random identifiers and constant-time comparison.
//! * [`report`]: one-line rendering of an error chain for people.
//! * [`relay`]: the byte relay between two streams (counting, half-close aware, adaptive buffers).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod certs;
pub mod enroll;
pub mod fsutil;
pub mod ids;
pub mod posture;
pub mod relay;
pub mod report;
pub mod tls;
pub mod wire;
