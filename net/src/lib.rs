//! Networking shared by the Postern gateway, connector, client and demo: everything that
//! touches sockets, files or TLS configuration, so that `postern-proto` stays pure wire types.
//!
//! * [`tls`]: rustls configuration builders and PEM parsing. Every config is built with the ring
//!   provider passed explicitly (`builder_with_provider`) and TLS 1.3 only, so cargo feature
//!   unification can never select another provider at run time; the pinned-CA verifier that
//!   authenticates a gateway on first contact from an enrolment token.
//! * [`h2`]: the one HTTP/2 configuration (windows, frame size, keep-alive per kind of
//!   connection), applied to hyper's client and server builders.
//! * [`quic`]: the clinician ↔ gateway QUIC transport: endpoint configurations (quinn over
//!   rustls with ring) and the framing of a tunnel stream.
//! * [`resume`]: resumable tunnels — the engine at each end that keeps a tunnel's bytes for
//!   replay and carries it over to a new transport stream after the old one broke.
//! * [`addr`]: the one `host:port` parser and formatter (IPv6 in brackets).
//! * [`relay`]: the byte relay between two streams (counting, half-close aware, adaptive buffers).
//! * [`fsutil`]: private directories and atomic, mode-setting file writes (keys, tokens).
//! * [`certs`]: certificate and key files (loading a pair for rustls, safe key modes) and the
//!   findings the `check` subcommands report about files, directories and listen addresses.
//!
//! Depends on `postern-proto` (the wire constants and the pure certificate inspection); proto
//! never depends on this crate.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod addr;
pub mod certs;
pub mod fsutil;
pub mod h2;
pub mod quic;
pub mod relay;
pub mod resume;
pub mod tls;
