//! `host:port`: the one parser and the one formatter for the addresses Postern dials (gateway
//! connector listeners, the gateway URL a clinician or hospital IT types, endpoint targets the
//! gateway sends to a connector).
//!
//! * A host is a DNS name, an IPv4 address, or an IPv6 address **in brackets**: `[2001:db8::1]:443`.
//!   An IPv6 address without brackets is refused, because `::1:443` reads both as "::1, port 443"
//!   and as the address `::1:443`; guessing would dial the wrong thing silently.
//! * A port is 1 to 65535 in decimal digits (no sign, no port 0: nothing can be dialled there).
//! * [`format_host_port`] puts brackets around an IPv6 host, so what it writes parses back.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Why a `host:port` (or `https://` URL) was refused. Each message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("empty address: expected host:port")]
    Empty,
    #[error("'{0}' has no port: expected host:port")]
    NoPort(String),
    #[error("'{0}': the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("'{0}' has no host: expected host:port")]
    NoHost(String),
    #[error("'{0}': an IPv6 address must be in brackets, as in [2001:db8::1]:443")]
    UnbracketedIpv6(String),
    #[error("'{0}' is not host:port (host: a name, an IPv4 address or [an IPv6 address])")]
    BadHost(String),
    #[error("'{0}' is not like https://host[:port]")]
    NotHttpsUrl(String),
}

/// A host (name, IPv4 address, or IPv6 address without its brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// As written, except that an IPv6 address is kept without brackets (ready for
    /// `TcpStream::connect((host, port))` and `ServerName::try_from(host)`).
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` or `[v6]:port`; the port is required.
    pub fn parse(s: &str) -> Result<HostPort, AddrError> {
        parse(s, None)
    }

    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`, using `default_port` when none is
    /// written.
    pub fn parse_with_default_port(s: &str, default_port: u16) -> Result<HostPort, AddrError> {
        parse(s, Some(default_port))
    }
}

impl FromStr for HostPort {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<HostPort, AddrError> {
        HostPort::parse(s)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_host_port(&self.host, self.port))
    }
}

/// `host:port`, with brackets around an IPv6 host (`[::1]:443`); a host that already carries
/// brackets is written as it is.
pub fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits a gateway URL `https://host[:port][/]` (port 443 when none is written). Nothing may
/// follow the authority but one trailing slash.
pub fn parse_https_url(url: &str) -> Result<HostPort, AddrError> {
    let bad = || AddrError::NotHttpsUrl(url.to_owned());
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(bad)?
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    HostPort::parse_with_default_port(rest, 443)
}

fn parse(s: &str, default_port: Option<u16>) -> Result<HostPort, AddrError> {
    if s.is_empty() {
        return Err(AddrError::Empty);
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| AddrError::BadHost(s.to_owned()))?;
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(AddrError::BadHost(s.to_owned()));
        }
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(AddrError::BadHost(s.to_owned())),
        };
        (v6, port)
    } else {
        match s.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(AddrError::UnbracketedIpv6(s.to_owned()))
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(AddrError::NoHost(s.to_owned()));
    }
    if !s.starts_with('[') && !valid_host_chars(host) {
        return Err(AddrError::BadHost(s.to_owned()));
    }
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p).ok_or_else(|| AddrError::BadPort(s.to_owned()))?,
        (None, Some(d)) => d,
        (None, None) => return Err(AddrError::NoPort(s.to_owned())),
    };
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// Characters a DNS name or IPv4 address may hold here; a later `ServerName` or resolver check
/// judges the rest. Refuses what would change the meaning of a URL or a log line.
fn valid_host_chars(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn ipv4_and_names() {
        assert_eq!(HostPort::parse("127.0.0.1:8444"), Ok(hp("127.0.0.1", 8444)));
        assert_eq!(
            HostPort::parse("gw.example.org:443"),
            Ok(hp("gw.example.org", 443))
        );
        assert_eq!(HostPort::parse("localhost:1"), Ok(hp("localhost", 1)));
        assert_eq!(HostPort::parse("gw-1_a:65535"), Ok(hp("gw-1_a", 65535)));
        assert_eq!(
            "no-such-host.invalid:8444".parse::<HostPort>(),
            Ok(hp("no-such-host.invalid", 8444))
        );
    }

    #[test]
    fn ipv6_bracketed() {
        assert_eq!(HostPort::parse("[::1]:8443"), Ok(hp("::1", 8443)));
        assert_eq!(
            HostPort::parse("[2001:db8::1]:443"),
            Ok(hp("2001:db8::1", 443))
        );
        assert_eq!(
            HostPort::parse_with_default_port("[::1]", 443),
            Ok(hp("::1", 443))
        );
        for bad in [
            "[::1",
            "[::1]x",
            "[::1]443",
            "[not-v6]:443",
            "[]:443",
            "[1.2.3.4]:1",
        ] {
            assert_eq!(
                HostPort::parse(bad),
                Err(AddrError::BadHost(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            HostPort::parse("[::1]"),
            Err(AddrError::NoPort("[::1]".into()))
        );
    }

    #[test]
    fn ipv6_unbracketed_is_refused_not_guessed() {
        for bad in ["::1:443", "2001:db8::1", "fe80::1:8443", "::1"] {
            let e = HostPort::parse(bad).unwrap_err();
            assert_eq!(e, AddrError::UnbracketedIpv6(bad.to_owned()), "{bad}");
            assert!(e.to_string().contains("in brackets"), "{e}");
        }
        assert_eq!(
            HostPort::parse_with_default_port("2001:db8::1", 443),
            Err(AddrError::UnbracketedIpv6("2001:db8::1".into()))
        );
    }

    #[test]
    fn bad_ports() {
        for bad in [
            "gw:",
            "gw:x",
            "gw:0",
            "gw:65536",
            "gw:+443",
            "gw:-1",
            "gw: 443",
            "gw:44 3",
            "[::1]:",
            "[::1]:0",
            "[::1]:99999",
        ] {
            assert_eq!(
                HostPort::parse(bad),
                Err(AddrError::BadPort(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(HostPort::parse("gw:00443"), Ok(hp("gw", 443)));
    }

    #[test]
    fn empty_and_missing_parts() {
        assert_eq!(HostPort::parse(""), Err(AddrError::Empty));
        assert_eq!(
            HostPort::parse_with_default_port("", 443),
            Err(AddrError::Empty)
        );
        assert_eq!(
            HostPort::parse(":443"),
            Err(AddrError::NoHost(":443".into()))
        );
        assert_eq!(
            HostPort::parse("gw.example"),
            Err(AddrError::NoPort("gw.example".into()))
        );
        assert_eq!(
            HostPort::parse_with_default_port("gw.example", 443),
            Ok(hp("gw.example", 443))
        );
        for bad in [
            "gw example:1",
            "user@gw:1",
            "gw/x:1",
            "gw?:1",
            "]:1",
            "gw]:1",
        ] {
            assert_eq!(
                HostPort::parse(bad),
                Err(AddrError::BadHost(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_host_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(format_host_port("pacs.truro", 104), "pacs.truro:104");
        assert_eq!(format_host_port("::1", 8443), "[::1]:8443");
        assert_eq!(format_host_port("[::1]", 8443), "[::1]:8443");
        assert_eq!(hp("2001:db8::1", 443).to_string(), "[2001:db8::1]:443");
        for s in ["127.0.0.1:8444", "[::1]:8443", "gw.example.org:443"] {
            assert_eq!(HostPort::parse(s).unwrap().to_string(), s);
        }
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9));
        assert_eq!(HostPort::parse(&v6.to_string()), Ok(hp("::1", 9)));
    }

    #[test]
    fn https_urls() {
        assert_eq!(
            parse_https_url("https://gw.example:8443"),
            Ok(hp("gw.example", 8443))
        );
        assert_eq!(
            parse_https_url("https://gw.example/"),
            Ok(hp("gw.example", 443))
        );
        assert_eq!(parse_https_url("https://[::1]:9"), Ok(hp("::1", 9)));
        assert_eq!(parse_https_url("https://[::1]/"), Ok(hp("::1", 443)));
        for bad in [
            "http://gw",
            "gw:8443",
            "https://",
            "https://gw/path",
            "https:///",
        ] {
            assert_eq!(
                parse_https_url(bad),
                Err(AddrError::NotHttpsUrl(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_https_url("https://gw:x"),
            Err(AddrError::BadPort("gw:x".into()))
        );
        assert!(matches!(
            parse_https_url("https://::1:443"),
            Err(AddrError::UnbracketedIpv6(_))
        ));
    }
}
