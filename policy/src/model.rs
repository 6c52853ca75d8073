//! The resolved runtime types: what a policy means once every value has been checked.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A service behind a connector that users may be allowed to reach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Unique name, `[a-z0-9][a-z0-9-]{0,62}`; what rules and clients refer to.
    pub name: String,
    /// The connector site that can reach this endpoint (same charset as names).
    pub site: String,
    /// IP address or DNS name the connector dials.
    pub host: String,
    /// TCP port the connector dials, 1..=65535.
    pub port: u16,
    /// What runs there; lets the gateway pick protocol-aware handling and audit wording.
    pub protocol: Protocol,
    /// Free text for people reading the policy or an access list.
    pub description: Option<String>,
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

/// A validated rule. Which endpoints it covers lives in the policy's index, not here.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) effect: Effect,
    /// Matches a request whose groups include any of these (exact comparison: group names come
    /// from IdP claims and may be opaque ids).
    pub(crate) groups: HashSet<String>,
    /// Matches a request from any of these users, stored ASCII-lowercased: user names are
    /// e-mail addresses and IdPs do not agree on their case. Sets, because a rule may list
    /// thousands of users and evaluation should not scan them.
    pub(crate) users: HashSet<String>,
    /// For allow rules, the session limit after defaults were applied; `None` for deny rules.
    pub(crate) max_session: Option<Duration>,
    pub(crate) description: Option<String>,
}

impl Rule {
    /// Whether the rule's subjects include the requesting user (given as
    /// [`user_key`]) or any of their groups.
    pub(crate) fn matches_subject(&self, user_key: &str, groups: &[String]) -> bool {
        self.users.contains(user_key) || groups.iter().any(|g| self.groups.contains(g))
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
