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
    /// A web application over TLS, usually port 443.
    Https,
    /// Any other TCP service, forwarded as opaque bytes.
    Tcp,
}

impl Protocol {
    /// Every protocol, in the order the documentation lists them.
    pub const ALL: [Protocol; 4] = [
        Protocol::Dicom,
        Protocol::Rdp,
        Protocol::Https,
        Protocol::Tcp,
    ];

    /// The name used in policy files: `dicom`, `rdp`, `https` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Dicom => "dicom",
            Protocol::Rdp => "rdp",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned by [`Protocol::from_str`] for a name that is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol '{0}' (expected dicom, rdp, https or tcp)")]
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
    }
}
