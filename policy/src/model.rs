//! The resolved runtime types: what a policy means once every value has been checked.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A service behind a connector that users may be allowed to reach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Unique name, `[a-z0-9][a-z0-9-]{0,62}`; what rules and clients refer to.
    pub name: String,
    /// The connector site that can reach this endpoint (same charset as names).
    pub site: String,
    /// IP address or DNS name the connector dials.
    pub host: String,
    /// TCP port the connector dials, 1..=65535: the endpoint's only port, or the first of
    /// [`Endpoint::ports`] when the policy gives a range.
    pub port: u16,
    /// Every port a client may ask for on this endpoint (`first..=last`); `port..=port` when the
    /// policy gives a single port. For services that listen on a block of ports (a viewer that
    /// opens one port per session, a DICOM node with several AEs on consecutive ports).
    pub ports: PortRange,
    /// What runs there; lets the gateway pick protocol-aware handling and audit wording.
    pub protocol: Protocol,
    /// Whether data can leave the hospital through this endpoint; rules select endpoints by it
    /// (typically: `data` endpoints only from approved devices).
    pub egress: Egress,
    /// Free labels (`pacs`, `truro`, `reporting`) that rules use to select many endpoints at
    /// once. Sorted, without repeats.
    pub labels: Vec<String>,
    /// Free text for people reading the policy or an access list.
    pub description: Option<String>,
    /// The loopback port `postern up` opens for this endpoint on every clinician's laptop
    /// (as Boundary's `default_client_port`): chosen once by IT so that viewer and RDP
    /// configurations never change. Unique across the policy.
    pub local_port: Option<u16>,
    /// Web endpoints with protocol `https`: whether the gateway verifies the upstream's TLS
    /// certificate (against the configured hospital CA). `true` unless the policy says
    /// `tls_verify = false`; always `true` for other protocols, where it means nothing.
    pub tls_verify: bool,
    /// Web endpoints: the `Host` header to send upstream (`host` or `host:port`), when it is
    /// not the endpoint's `host[:port]`. `None` for the default, and for non-web endpoints.
    pub upstream_host: Option<String>,
    /// Web endpoints: which proxied requests get a per-request audit event (`web.request`).
    /// [`RequestAudit::All`] unless the policy says otherwise; always `All` for non-web
    /// endpoints, where it means nothing.
    pub request_audit: RequestAudit,
    /// DICOM endpoints: the PACS's AE title, which every association through Postern must
    /// call (the connector answers any other with A-ASSOCIATE-RJ). `None`: any.
    pub called_ae: Option<String>,
}

/// Which requests of a web application session are audited one by one (`request_audit` of a
/// web endpoint). Session start and end are audited whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RequestAudit {
    /// Every request (`"all"`, the default).
    #[default]
    All,
    /// None (`"off"`).
    Off,
    /// One request in N (`"1/N"`), 2 ≤ N ≤ [`RequestAudit::MAX_SAMPLE`], for busy applications.
    Sample(u32),
}

impl RequestAudit {
    /// The largest N of `"1/N"`.
    pub const MAX_SAMPLE: u32 = 1_000_000;

    /// Whether the request numbered `n` (0-based, counted per application session or per
    /// endpoint, as the gateway likes) gets its own audit event: always for `All`, never for
    /// `Off`, and every N-th (`n % N == 0`) for `Sample(N)`.
    pub fn records(self, n: u64) -> bool {
        match self {
            RequestAudit::All => true,
            RequestAudit::Off => false,
            RequestAudit::Sample(every) => n.is_multiple_of(u64::from(every.max(1))),
        }
    }

    /// Whether events are sampled (`Sample`), for the audit's `sampled` flag.
    pub fn is_sampled(self) -> bool {
        matches!(self, RequestAudit::Sample(_))
    }
}

/// `all`, `off` or `1/N`, as written in policy files.
impl fmt::Display for RequestAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestAudit::All => f.write_str("all"),
            RequestAudit::Off => f.write_str("off"),
            RequestAudit::Sample(every) => write!(f, "1/{every}"),
        }
    }
}

/// Returned by [`RequestAudit::from_str`] for text that is not `all`, `off` or `1/N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not \"all\", \"off\" or \"1/N\" with N from 2 to 1000000")]
pub struct InvalidRequestAudit(pub String);

impl FromStr for RequestAudit {
    type Err = InvalidRequestAudit;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRequestAudit(s.to_owned());
        match s {
            "all" => Ok(RequestAudit::All),
            "off" => Ok(RequestAudit::Off),
            _ => {
                let every = s.strip_prefix("1/").ok_or_else(invalid)?;
                if every.is_empty() || !every.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                match every.parse::<u32>() {
                    Ok(n) if (2..=RequestAudit::MAX_SAMPLE).contains(&n) => {
                        Ok(RequestAudit::Sample(n))
                    }
                    _ => Err(invalid()),
                }
            }
        }
    }
}

impl serde::Serialize for RequestAudit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PortRange {
    /// The first port, 1..=65535.
    pub first: u16,
    /// The last port, `first..=65535`.
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What can leave the hospital through an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Pixels only: the data stays in the hospital (RDP to a reporting PC, a streaming viewer).
    Display,
    /// Data reaches the client (DICOM retrieves, file downloads). The default, being the cautious
    /// choice for an endpoint nobody classified.
    Data,
}

impl Egress {
    /// `display` or `data`, as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Display => "display",
            Egress::Data => "data",
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The application protocol spoken by an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// DICOM (PACS, modalities), usually port 104 or 11112.
    Dicom,
    /// Remote Desktop, usually port 3389.
    Rdp,
    /// A web application over plain HTTP inside the hospital network (usually port 80 or an
    /// application's own port, such as Orthanc's 8042). Served by the gateway as a web
    /// application over HTTPS, like `Https`; reachable as a tunnel too.
    Http,
    /// A web application over TLS, usually port 443.
    Https,
    /// Any other TCP service, forwarded as opaque bytes.
    Tcp,
}

impl Protocol {
    /// Every protocol, in the order the documentation lists them.
    pub const ALL: [Protocol; 5] = [
        Protocol::Dicom,
        Protocol::Rdp,
        Protocol::Http,
        Protocol::Https,
        Protocol::Tcp,
    ];

    /// The name used in policy files: `dicom`, `rdp`, `http`, `https` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Dicom => "dicom",
            Protocol::Rdp => "rdp",
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether endpoints of this protocol are web applications (`http` or `https`): the only
    /// ones that take the web endpoint keys, and the only ones a rule's `methods` and `paths`
    /// apply to.
    pub fn is_web(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned by [`Protocol::from_str`] for a name that is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol '{0}' (expected dicom, rdp, http, https or tcp)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// Whether a rule (or a decision) lets the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Access is granted.
    Allow,
    /// Access is refused.
    Deny,
}

impl Effect {
    /// `allow` or `deny`, as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user name in the form rules store it: ASCII-lowercased, borrowing when it already is.
pub(crate) fn user_key(user: &str) -> Cow<'_, str> {
    if user.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(user.to_ascii_lowercase())
    } else {
        Cow::Borrowed(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips_through_its_name() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
        }
        assert_eq!(
            "DICOM".parse::<Protocol>(),
            Err(UnknownProtocol("DICOM".into()))
        );
    }

    #[test]
    fn protocol_serde_uses_lowercase_names() {
        assert_eq!(serde_json::to_string(&Protocol::Rdp).unwrap(), "\"rdp\"");
        let p: Protocol = serde_json::from_str("\"https\"").unwrap();
        assert_eq!(p, Protocol::Https);
        let p: Protocol = serde_json::from_str("\"http\"").unwrap();
        assert_eq!(p, Protocol::Http);
    }

    #[test]
    fn only_http_and_https_are_web() {
        let web: Vec<Protocol> = Protocol::ALL.into_iter().filter(|p| p.is_web()).collect();
        assert_eq!(web, [Protocol::Http, Protocol::Https]);
        assert_eq!(
            "ftp".parse::<Protocol>().unwrap_err().to_string(),
            "unknown protocol 'ftp' (expected dicom, rdp, http, https or tcp)"
        );
    }

    #[test]
    fn request_audit_parses_and_prints() {
        assert_eq!("all".parse(), Ok(RequestAudit::All));
        assert_eq!("off".parse(), Ok(RequestAudit::Off));
        assert_eq!("1/2".parse(), Ok(RequestAudit::Sample(2)));
        assert_eq!("1/1000000".parse(), Ok(RequestAudit::Sample(1_000_000)));
        for bad in [
            "1/1",
            "1/0",
            "1/1000001",
            "2/10",
            "1/",
            "1/+5",
            "1/ 5",
            "ALL",
            "",
            "1/99999999999",
        ] {
            assert_eq!(
                bad.parse::<RequestAudit>(),
                Err(InvalidRequestAudit(bad.into())),
                "{bad}"
            );
        }
        for audit in [
            RequestAudit::All,
            RequestAudit::Off,
            RequestAudit::Sample(50),
        ] {
            assert_eq!(audit.to_string().parse(), Ok(audit));
        }
        assert_eq!(
            serde_json::to_string(&RequestAudit::Sample(10)).unwrap(),
            "\"1/10\""
        );
        assert_eq!(RequestAudit::default(), RequestAudit::All);
    }

    #[test]
    fn request_audit_records_every_nth_request() {
        let kept = |audit: RequestAudit| (0..100).filter(|&n| audit.records(n)).count();
        assert_eq!(kept(RequestAudit::All), 100);
        assert_eq!(kept(RequestAudit::Off), 0);
        assert_eq!(kept(RequestAudit::Sample(10)), 10);
        assert!(RequestAudit::Sample(10).records(0));
        assert!(!RequestAudit::Sample(10).records(1));
        assert!(RequestAudit::Sample(3).is_sampled());
        assert!(!RequestAudit::All.is_sampled());
    }
}
