//! Names and message bodies on the wire.
//!
//! Clinician ↔ gateway: HTTP/2 (or HTTP/1.1 for the JSON calls) over TLS 1.3, ALPN [`ALPN_H2`].
//! A tunnel is one `CONNECT` request whose authority is `ENDPOINT:0` (see [`connect_authority`]);
//! the session token travels as `authorization: Bearer …`.
//!
//! Gateway ↔ connector: the connector dials out over mutual TLS 1.3 with ALPN [`ALPN_CONNECTOR`];
//! on that connection the roles reverse: the gateway is the HTTP/2 *client* and sends one
//! `CONNECT host:port` per tunnelled TCP connection, the connector is the HTTP/2 server.
//! A connector may dial QUIC instead ([`ALPN_LINK_QUIC`], UDP on the connector listener's
//! port): the same requests, each on a bidirectional stream the gateway opens, as a
//! [`LinkRequest`] frame answered by a [`LinkResponse`] frame.

use serde::{Deserialize, Serialize};

/// ALPN for the clinician-facing listener (HTTP/2 for tunnels).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the clinician's QUIC connection (UDP, the client listener's port). Each
/// bidirectional stream is one tunnel: a [`TunnelRequest`] frame, a [`TunnelResponse`] frame,
/// then, on 200, the tunnel's bytes both ways (see `postern_net::quic`).
pub const ALPN_QUIC: &[u8] = b"postern-quic/1";
/// QUIC application error code with which `postern connect` closes its connection when it
/// exits: its resumable tunnels are over, not suspended (any other close, or none, suspends).
pub const QUIC_CLOSE_EXIT: u32 = 0x10;
/// ALPN for HTTP/1.1 (enrolment and JSON calls from simple clients).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for connector links. The version suffix is bumped on incompatible changes, so an old
/// connector and a new gateway fail the handshake with a clear "no application protocol" error
/// instead of misparsing each other.
pub const ALPN_CONNECTOR: &[u8] = b"postern-connector/1";
/// ALPN of a connector link over QUIC (UDP on the connector listener's port, the same client
/// certificate). Each request the gateway makes of the connector is one bidirectional stream
/// the gateway opens: a [`LinkRequest`] frame, a [`LinkResponse`] frame, then for a `CONNECT`
/// answered 200 the tunnel's bytes both ways. The connector's one stream of its own is a
/// unidirectional [`LinkNotice`].
pub const ALPN_LINK_QUIC: &[u8] = b"postern-link/1";

/// ALPN a connector offers (with [`ALPN_CONNECTOR`]'s client certificate) on a short extra
/// connection to the connector listener to renew that certificate: HTTP/1.1, one
/// `POST` [`PATH_RENEW`].
pub const ALPN_RENEW: &[u8] = b"postern-renew/1";
/// ALPN a connector offers, next to [`ALPN_HTTP1`], when it enrols: it marks the handshake as an
/// enrolment, so a gateway whose public certificate comes from files (`[tls] cert_file`) still
/// presents the certificate of its own server CA, which is what the token's pin names. It is
/// never selected; the request itself is HTTP/1.1.
pub const ALPN_ENROLL_MARKER: &[u8] = b"postern-enroll/1";

/// Response header carrying a human-readable reason for a refusal.
pub const HDR_REASON: &str = "postern-reason";
/// Header carrying the session id, gateway → client and gateway → connector.
pub const HDR_SESSION: &str = "postern-session-id";
/// Header carrying the endpoint name, gateway → connector (for the connector's logs).
pub const HDR_ENDPOINT: &str = "postern-endpoint";
/// Header carrying the clinician's reason for break-glass access, client → gateway (audited):
/// UTF-8, percent-encoded by [`encode_justification`] (a header value is visible ASCII).
pub const HDR_JUSTIFICATION: &str = "postern-justification";
/// Request header (`1`): the client can resume this tunnel after its transport breaks; the
/// tunnel's bytes are then framed by `postern_net::resume` in both directions.
pub const HDR_RESUMABLE: &str = "postern-resumable";
/// Response header on 200 to a resumable request: the tunnel's resume secret (never logged).
/// Its absence means the gateway does not offer resumption for this tunnel (the rule's
/// `resume_grace` is 0, or an older gateway) and the stream carries plain bytes.
pub const HDR_RESUME_SECRET: &str = "postern-resume-secret";
/// Request header: carry on a suspended tunnel, `SESSION-ID SECRET RECEIVED` (see [`Resume`]).
pub const HDR_RESUME: &str = "postern-resume";
/// Response header on 200 to a [`HDR_RESUME`] request: how many of the client's bytes the
/// gateway has delivered.
pub const HDR_RESUME_RECEIVED: &str = "postern-resume-received";
/// Longest justification accepted, in characters.
pub const MAX_JUSTIFICATION: usize = 512;

/// Checks a break-glass reason as a person typed it: trimmed, 1 to [`MAX_JUSTIFICATION`]
/// characters of printable Unicode ("CT head – ED résus"; no control characters).
pub fn check_justification(reason: &str) -> Result<&str, String> {
    let r = reason.trim();
    let n = r.chars().count();
    if n == 0 || n > MAX_JUSTIFICATION {
        return Err(format!(
            "the reason must be 1 to {MAX_JUSTIFICATION} characters (it has {n})"
        ));
    }
    if let Some(c) = r.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the reason contains a control character (U+{:04X}); use printable text",
            c as u32
        ));
    }
    Ok(r)
}

/// The [`HDR_JUSTIFICATION`] value of a reason: bytes outside visible ASCII, and `%`,
/// percent-encoded (so ASCII reasons without `%` travel as they are).
pub fn encode_justification(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for b in reason.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A reason from an [`HDR_JUSTIFICATION`] value (or a QUIC request's field, which is not
/// encoded: pass `encoded = false`), checked with [`check_justification`]. A `%` not followed
/// by two hex digits stays as it is (older clients sent ASCII unencoded).
pub fn decode_justification(value: &str, encoded: bool) -> Option<String> {
    let decoded = if encoded {
        let b = value.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if b[i] == b'%' && i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).ok()?
    } else {
        value.to_owned()
    };
    check_justification(&decoded).ok().map(str::to_owned)
}

/// Enrolment path on the gateway's public listener.
pub const PATH_ENROLL: &str = "/v1/enroll";
/// Endpoint listing path.
pub const PATH_ENDPOINTS: &str = "/v1/endpoints";
/// `POST` with the renewed session token as bearer and a [`SessionRenewRequest`]: the live
/// sessions of the previous token move onto the new one ([`SessionRenewResponse`]).
pub const PATH_SESSIONS_RENEW: &str = "/v1/sessions/renew";
/// Liveness path (no authentication, reveals nothing).
pub const PATH_HEALTH: &str = "/healthz";
/// Gateway → connector, on a link: `POST` here says the gateway is draining (it accepts no new
/// connections and closes its links when the grace period ends). The connector dials that
/// address again at once, which behind a load balancer reaches another replica, and keeps the
/// old link for the tunnels it still carries.
pub const PATH_DRAINING: &str = "/v1/draining";
/// Gateway → connector, on a link (`POST`): the connector addresses of every live replica
/// sharing this gateway's state store, in [`HDR_REPLICAS`]. Sent when the link comes up and
/// whenever a replica joins or leaves. The connector keeps links to each address besides the
/// ones it was configured with, so a clinician on any replica reaches its site; an address no
/// longer listed by any of its links is dropped. An old connector answers 405 and is not told
/// again on that link.
pub const PATH_REPLICAS: &str = "/v1/replicas";
/// The addresses of a [`PATH_REPLICAS`] request: `host:port` entries separated by spaces.
pub const HDR_REPLICAS: &str = "postern-replicas";
/// Most addresses a [`PATH_REPLICAS`] request carries; a connector ignores the rest.
pub const MAX_REPLICA_ADDRS: usize = 64;
/// Link round-trip probe, gateway → connector on a connector link (`GET`): the connector answers
/// 204 at once; it is not a tunnel and dials nothing.
pub const PATH_LINK_PING: &str = "/v1/link/ping";
/// Certificate renewal, connector → gateway on a [`ALPN_RENEW`] connection (`POST`).
pub const PATH_RENEW: &str = "/v1/renew";
/// Gateway → connector, on a link (`POST`), instead of serving it: the gateway refuses this
/// connector for good. A TLS alert cannot carry a reason, and on a link the gateway is the
/// HTTP/2 client, so the refusal is a request: [`HDR_REFUSAL`] says why
/// ([`REFUSAL_REVOKED`]) and [`HDR_REVOKED_AT`] when. On a [`ALPN_RENEW`] connection the same
/// headers come on a 403 answer to any request. The connector stops and tells its operator.
pub const PATH_REFUSED: &str = "/v1/refused";
/// Machine-readable reason of a [`PATH_REFUSED`] refusal.
pub const HDR_REFUSAL: &str = "postern-refusal";
/// [`HDR_REFUSAL`] value: the connector was revoked (`postern-gateway connector revoke`).
pub const REFUSAL_REVOKED: &str = "revoked";
/// When the connector was revoked: Unix seconds.
pub const HDR_REVOKED_AT: &str = "postern-revoked-at";

/// HTTP/2 flow-control window per stream (tunnel). Fixed and large rather than adaptive:
/// hyper's BDP estimator left the gateway's receive window near 64 KiB on a 50 ms path
/// (bench (d): 0.01 Gbit/s), and one window per round trip is the ceiling of a stream
/// (16 MiB / 50 ms ≈ 2.7 Gbit/s). The window is credit, not an allocation: memory is used only
/// when a receiver falls behind, and is then bounded by [`CONN_WINDOW`] per connection.
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 flow-control window per connection (all tunnels on one link).
pub const CONN_WINDOW: u32 = 64 * 1024 * 1024;

/// Largest JSON body any Postern listener accepts.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// Authority used in the clinician's `CONNECT` for an endpoint: the endpoint name with port 0
/// (HTTP requires a port in authority-form; the real port comes from the policy, never from the
/// client).
pub fn connect_authority(endpoint: &str) -> String {
    format!("{endpoint}:0")
}

/// Inverse of [`connect_authority`]: the endpoint name, if the authority is well-formed.
pub fn endpoint_from_authority(authority: &str) -> Option<&str> {
    let name = authority.strip_suffix(":0")?;
    valid_name(name).then_some(name)
}

/// Names of endpoints, sites and connectors: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `POST /v1/enroll` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The secret part of the one-time token (never the pin, never logged).
    pub token: String,
    /// PKCS#10 CSR in PEM; only its public key is used, the gateway chooses the subject.
    pub csr_pem: String,
    /// Host name of the connector machine, for the operator's inventory.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `POST /v1/enroll` success body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub connector_id: String,
    pub site: String,
    /// The connector's client certificate (PEM).
    pub cert_pem: String,
    /// The CA that issued the gateway's server certificate; the connector trusts only this.
    pub gateway_ca_pem: String,
    /// Addresses of the gateway's connector listener(s) (`host:port`).
    pub connector_addrs: Vec<String>,
    /// Certificate expiry, RFC 3339.
    pub not_after: String,
}

/// `POST /v1/renew` body. The connector is identified by the client certificate of the
/// connection (which must be current, unexpired and not revoked), never by this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 CSR in PEM for a fresh key; only its public key is used.
    pub csr_pem: String,
}

/// `POST /v1/renew` success body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub connector_id: String,
    pub site: String,
    /// The new client certificate (PEM).
    pub cert_pem: String,
    /// Its expiry, RFC 3339.
    pub not_after: String,
}

/// One row of `GET /v1/endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    pub name: String,
    pub site: String,
    pub protocol: String,
    #[serde(default)]
    pub description: Option<String>,
    pub allowed: bool,
    /// Rule that allows (or denies) it.
    #[serde(default)]
    pub rule: Option<String>,
    /// Human sentence explaining the decision.
    pub reason: String,
    /// Maximum session length in seconds, when allowed.
    #[serde(default)]
    pub max_session_secs: Option<u64>,
    /// The loopback port `postern up` opens it on (policy `local_port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    /// Whether a connector of its site is linked to this gateway now (None: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Not allowed now, but allowed from this instant (seconds since the epoch) by a rule's
    /// time window, within the week ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Allowed now until this instant (seconds since the epoch), when a time window or a
    /// validity date ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Not allowed now, but a break-glass rule allows it with a reason (`--reason`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reason: bool,
}

/// `POST /v1/sessions/renew` body (the bearer is the new session token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRenewRequest {
    /// The token the live sessions were opened with (never logged): proof that they are the
    /// caller's. It must still be valid, of the same user and device as the new one.
    pub previous_token: String,
}

/// `POST /v1/sessions/renew` answer: what happened to each live session of the previous token
/// on this gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionRenewResponse {
    pub renewed: Vec<RenewedSession>,
    /// Sessions the policy no longer allows under the new sign-in: ended.
    pub ended: Vec<EndedSession>,
}

/// A session now running on the new token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RenewedSession {
    pub session_id: String,
    pub endpoint: String,
    /// When it ends now (rule maximum or the new token's expiry), seconds since the epoch.
    pub until: u64,
}

/// A session the renewal ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndedSession {
    pub session_id: String,
    pub endpoint: String,
    /// Why, in a sentence.
    pub reason: String,
}

/// `GET /v1/endpoints` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointList {
    pub user: String,
    pub groups: Vec<String>,
    pub endpoints: Vec<EndpointInfo>,
}

/// What `POST /auth/token` and `GET /v1/whoami` answer: who a session token is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    /// The token itself (only from `POST /auth/token`).
    #[serde(default)]
    pub token: Option<String>,
    pub user: String,
    #[serde(default)]
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub mfa: bool,
    /// When the user authenticated at the IdP (seconds since the epoch).
    #[serde(default)]
    pub auth_time: Option<u64>,
    /// Token expiry (seconds since the epoch).
    pub expires_at: u64,
    /// Issuer of the sign-in.
    #[serde(default)]
    pub idp: Option<String>,
    /// The registered device the sign-in was completed on (device trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether that device verified the user (PIN, biometric).
    #[serde(default)]
    pub user_verified: bool,
}

/// Every error body from every Postern listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `token_expired`, `policy_denied`.
    pub error: String,
    /// Sentence for a person.
    pub message: String,
}

/// `GET` [`PATH_NOTICES`]: what happened to the user's sessions that their own tools cannot
/// say (a PACS association the connector refused, and why).
pub const PATH_NOTICES: &str = "/v1/notices";

/// The answer to [`PATH_NOTICES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeList {
    pub notices: Vec<Notice>,
}

/// One notice for a clinician.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Increasing on one gateway: ask for those after the last one seen (`?after=SEQ`).
    pub seq: u64,
    /// When (Unix seconds).
    pub at: u64,
    pub session_id: String,
    pub endpoint: String,
    /// A sentence for the clinician.
    pub message: String,
}

/// First frame of a tunnel stream on the QUIC transport: what a `CONNECT ENDPOINT:0` with its
/// headers says on HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelRequest {
    /// The policy endpoint's name.
    pub endpoint: String,
    /// The session token (never logged).
    pub token: String,
    /// Break-glass reason ([`HDR_JUSTIFICATION`]).
    #[serde(default)]
    pub justification: Option<String>,
    /// The client can resume this tunnel ([`HDR_RESUMABLE`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumable: bool,
    /// Carry on a suspended tunnel instead of opening one ([`HDR_RESUME`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// A gateway → connector request on a QUIC link ([`ALPN_LINK_QUIC`]): what the HTTP/2 link
/// carries as a request's method, target and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// `CONNECT`, `GET` or `POST`.
    pub method: String,
    /// `host:port` for `CONNECT`, else a path such as [`PATH_LINK_PING`].
    pub target: String,
    /// Header names (lower case) and values, as on the HTTP/2 link.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// The connector's answer to a [`LinkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkResponse {
    /// An HTTP status code: 200 opens a `CONNECT` tunnel.
    pub status: u16,
    /// Why not ([`HDR_REASON`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Connector → gateway on a QUIC link (the connector's only stream, unidirectional): what the
/// HTTP/2 link says with GOAWAY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkNotice {
    /// The connector is stopping: no new tunnels over this link; the open ones may finish.
    pub going_away: bool,
}

/// A request to carry on a suspended tunnel over a new stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The session the tunnel belongs to.
    pub session_id: String,
    /// The tunnel's resume secret, from the answer that opened it (never logged).
    pub secret: String,
    /// How many of the gateway's bytes the client has delivered (its resume engine's offset).
    pub received: u64,
}

impl Resume {
    /// The [`HDR_RESUME`] value: `SESSION-ID SECRET RECEIVED`.
    pub fn to_header(&self) -> String {
        format!("{} {} {}", self.session_id, self.secret, self.received)
    }

    /// Parses an [`HDR_RESUME`] value (bounded: ids and secrets are short).
    pub fn from_header(v: &str) -> Option<Resume> {
        if v.len() > 256 {
            return None;
        }
        let mut parts = v.split(' ');
        let (id, secret, received) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.is_empty() || secret.is_empty() {
            return None;
        }
        Some(Resume {
            session_id: id.to_owned(),
            secret: secret.to_owned(),
            received: received.parse().ok()?,
        })
    }
}

/// The gateway's answer to a [`TunnelRequest`]: `status` as the HTTP status the `CONNECT`
/// would have had; on 200 the stream carries the tunnel from the next byte on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelResponse {
    pub status: u16,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The refusal ([`ErrorBody`]'s code and sentence), when not 200.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// On 200 to a resumable request: the tunnel's resume secret ([`HDR_RESUME_SECRET`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
    /// On 200 to a [`Resume`]: how many of the client's bytes the gateway has delivered
    /// ([`HDR_RESUME_RECEIVED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn justifications_travel_as_typed() {
        for r in ["CT head – ED résus", "100% sure", "plain", "頭部CT 救急"] {
            let header = encode_justification(r);
            assert!(
                header.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{header}"
            );
            assert_eq!(decode_justification(&header, true).as_deref(), Some(r));
        }
        assert_eq!(encode_justification("plain reason"), "plain reason");
        // Older clients' ASCII, a stray %, and the QUIC field (not encoded).
        assert_eq!(
            decode_justification("50%zz", true).as_deref(),
            Some("50%zz")
        );
        assert_eq!(
            decode_justification("ends %4", true).as_deref(),
            Some("ends %4")
        );
        assert_eq!(decode_justification("é", false).as_deref(), Some("é"));
        // Bounded in characters, no control characters, not blank, valid UTF-8.
        assert!(check_justification(&"é".repeat(512)).is_ok());
        assert!(check_justification(&"é".repeat(513)).is_err());
        assert!(check_justification("  ").is_err());
        assert!(check_justification("a\u{7}b")
            .unwrap_err()
            .contains("U+0007"));
        assert_eq!(decode_justification("%FF%FE", true), None);
        assert_eq!(decode_justification("a%0Ab", true), None);
    }

    #[test]
    fn authority_round_trip() {
        assert_eq!(
            endpoint_from_authority(&connect_authority("truro-pacs")),
            Some("truro-pacs")
        );
        assert_eq!(endpoint_from_authority("truro-pacs:104"), None);
        assert_eq!(endpoint_from_authority("../etc:0"), None);
        assert_eq!(endpoint_from_authority(":0"), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("truro-1"));
        assert!(!valid_name("-truro"));
        assert!(!valid_name("Truro"));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name(""));
    }
}
