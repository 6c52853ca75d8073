//! The connector's own allowlist: which addresses and ports it will dial for the gateway.
//!
//! This is defence in depth. The gateway's policy decides who may reach what; the connector
//! independently refuses any target the hospital did not list, so even a compromised gateway
//! cannot reach the rest of the hospital network through it.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of ports: single ports and inclusive ranges, or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    Any,
    List(Vec<(u16, u16)>),
}

impl Ports {
    /// Parses `"104, 3389, 8000-8099"` or `"*"`.
    pub fn parse(s: &str) -> Result<Ports, String> {
        if s.trim() == "*" {
            return Ok(Ports::Any);
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo
                .parse()
                .map_err(|_| format!("'{part}' is not a port or a range like 8000-8099"))?;
            let hi: u16 = hi
                .parse()
                .map_err(|_| format!("'{part}' is not a port or a range like 8000-8099"))?;
            if lo == 0 || lo > hi {
                return Err(format!("'{part}' is not a valid port range"));
            }
            out.push((lo, hi));
        }
        if out.is_empty() {
            return Err("no ports listed (use \"*\" for any port)".into());
        }
        Ok(Ports::List(out))
    }

    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(l) => l.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)),
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub net: IpNet,
    pub ports: Ports,
}

/// The allowlist. Empty means nothing is reachable (default deny).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub entries: Vec<Entry>,
}

impl Allowlist {
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        // Compare IPv4-mapped IPv6 addresses as IPv4, so ::ffff:10.0.0.1 cannot slip past a
        // 10.0.0.0/8 entry or match an IPv6 entry it should not.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.entries
            .iter()
            .any(|e| e.net.contains(&ip) && e.ports.contains(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_match() {
        let p = Ports::parse("104, 3389,8000-8099").unwrap();
        assert!(p.contains(104) && p.contains(8050) && p.contains(3389));
        assert!(!p.contains(22) && !p.contains(8100));
        assert_eq!(Ports::parse("*").unwrap(), Ports::Any);
        assert!(Ports::parse("0").is_err());
        assert!(Ports::parse("90-80").is_err());
        assert!(Ports::parse("ssh").is_err());
        assert!(Ports::parse("").is_err());
    }

    #[test]
    fn default_deny_and_mapped_addresses() {
        let empty = Allowlist::default();
        assert!(!empty.allows("10.0.0.1".parse().unwrap(), 104));
        let a = Allowlist {
            entries: vec![Entry {
                net: "10.0.0.0/8".parse().unwrap(),
                ports: Ports::parse("104").unwrap(),
            }],
        };
        assert!(a.allows("10.1.2.3".parse().unwrap(), 104));
        assert!(a.allows("::ffff:10.1.2.3".parse().unwrap(), 104));
        assert!(!a.allows("10.1.2.3".parse().unwrap(), 105));
        assert!(!a.allows("11.1.2.3".parse().unwrap(), 104));
    }
}
