//! `connector.toml`, resolved with every error reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::allowlist::{Allowlist, Entry, Ports};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: PathBuf,
    /// Gateway connector listeners (`host:port`); default: those given at enrolment.
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    connections_per_gateway: Option<usize>,
    #[serde(default)]
    reconnect_max: Option<String>,
    #[serde(default)]
    dial_timeout: Option<String>,
    /// `auto` (QUIC, falling back to HTTP/2 over TCP), `quic` or `http2`.
    #[serde(default)]
    link_transport: Option<String>,
    #[serde(default)]
    shutdown_grace: Option<String>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`), plain HTTP: loopback or a
    /// management network only.
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    cidr: String,
    ports: String,
}

/// How a connector's links reach the gateway (`link_transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkTransport {
    /// QUIC; where UDP does not get through (3 s without a handshake), HTTP/2 over TLS over
    /// TCP, and QUIC again every few minutes.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// HTTP/2 over TLS over TCP only.
    Http2,
}

impl LinkTransport {
    pub fn parse(s: &str) -> Option<LinkTransport> {
        match s {
            "auto" => Some(LinkTransport::Auto),
            "quic" => Some(LinkTransport::Quic),
            "http2" => Some(LinkTransport::Http2),
            _ => None,
        }
    }
}

/// Resolved connector configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub gateways: Vec<String>,
    pub connections_per_gateway: usize,
    pub reconnect_max: Duration,
    pub dial_timeout: Duration,
    /// How links reach the gateway.
    pub link_transport: LinkTransport,
    pub shutdown_grace: Duration,
    pub allowlist: Allowlist,
    /// Admin listener for metrics and health; None = off.
    pub admin_listen: Option<std::net::SocketAddr>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let file = path.display();
        let mut errors = Vec::new();
        let mut dur = |key: &str, v: Option<String>, default: Duration| match v {
            None => default,
            Some(s) => humantime::parse_duration(&s).unwrap_or_else(|e| {
                errors.push(format!(
                    "{file}: {key}: expected a duration like \"10s\", found \"{s}\" ({e})"
                ));
                default
            }),
        };
        let reconnect_max = dur("reconnect_max", raw.reconnect_max, Duration::from_secs(30));
        let dial_timeout = dur("dial_timeout", raw.dial_timeout, Duration::from_secs(5));
        let shutdown_grace = dur(
            "shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(30),
        );
        let connections_per_gateway = raw.connections_per_gateway.unwrap_or(2);
        if !(1..=16).contains(&connections_per_gateway) {
            errors.push(format!(
                "{file}: connections_per_gateway: expected 1 to 16, found {connections_per_gateway}"
            ));
        }
        let mut entries = Vec::new();
        for (i, a) in raw.allow.iter().enumerate() {
            let net = a
                .cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| a.cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            let ports = Ports::parse(&a.ports);
            match (net, ports) {
                (Ok(net), Ok(ports)) => entries.push(Entry { net, ports }),
                (net, ports) => {
                    if net.is_err() {
                        errors.push(format!(
                            "{file}: allow[{i}].cidr: expected a network like \"10.20.0.0/16\" or an address, found \"{}\"",
                            a.cidr
                        ));
                    }
                    if let Err(e) = ports {
                        errors.push(format!("{file}: allow[{i}].ports: {e}"));
                    }
                }
            }
        }
        for g in &raw.gateways {
            if let Err(e) = postern_net::addr::HostPort::parse(g) {
                errors.push(format!(
                    "{file}: gateways: expected host:port, found \"{g}\" ({e})"
                ));
            }
        }
        let link_transport = match raw.link_transport.as_deref() {
            None => LinkTransport::default(),
            Some(t) => LinkTransport::parse(t).unwrap_or_else(|| {
                let shown: String = t.chars().take(32).collect();
                errors.push(format!(
                    "{file}: link_transport: expected \"auto\", \"quic\" or \"http2\", found \"{shown}\""
                ));
                LinkTransport::default()
            }),
        };
        let admin_listen = raw.admin.listen.as_deref().and_then(|a| {
            a.parse().map_err(|_| {
                errors.push(format!(
                    "{file}: admin.listen: expected an address like \"127.0.0.1:9091\", found \"{a}\""
                ));
            })
            .ok()
        });
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let state_dir = if raw.state_dir.is_absolute() {
            raw.state_dir
        } else {
            base.join(raw.state_dir)
        };
        Ok(Config {
            state_dir,
            gateways: raw.gateways,
            connections_per_gateway,
            reconnect_max,
            dial_timeout,
            link_transport,
            shutdown_grace,
            allowlist: Allowlist { entries },
            admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_all_errors() {
        let c = Config::parse(
            "state_dir = \"s\"\n[[allow]]\ncidr = \"10.0.0.0/8\"\nports = \"104\"\n[[allow]]\ncidr = \"10.9.9.9\"\nports = \"*\"\n",
            Path::new("/etc/c.toml"),
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/s"));
        assert_eq!(c.allowlist.entries.len(), 2);
        assert!(c.allowlist.allows("10.9.9.9".parse().unwrap(), 22));

        let e = Config::parse(
            "state_dir = \"s\"\nreconnect_max = \"later\"\n[[allow]]\ncidr = \"10.0.0.0/33\"\nports = \"http\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.toml: reconnect_max"), "{e}");
        assert!(e.contains("c.toml: allow[0].cidr"), "{e}");
        assert!(e.contains("c.toml: allow[0].ports"), "{e}");

        let e = Config::parse("state_dir = \"s\"\nallowlist = []\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `allowlist`"), "{e}");

        let e = Config::parse(
            "state_dir = \"s\"\n[admin]\nlisten = \"localhost\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.toml: admin.listen"), "{e}");
    }

    #[test]
    fn link_transport_defaults_to_auto_and_names_the_choices_when_wrong() {
        let t = |v: &str| Config::parse(&format!("state_dir = \"s\"\n{v}"), Path::new("c.toml"));
        assert_eq!(t("").unwrap().link_transport, LinkTransport::Auto);
        assert_eq!(
            t("link_transport = \"http2\"\n").unwrap().link_transport,
            LinkTransport::Http2
        );
        assert_eq!(
            t("link_transport = \"quic\"\n").unwrap().link_transport,
            LinkTransport::Quic
        );
        let long = "x".repeat(200);
        let e = t(&format!("link_transport = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml: link_transport: expected \"auto\", \"quic\" or \"http2\""),
            "{e}"
        );
        assert!(!e.contains(&long), "the bad value is shown bounded: {e}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../config/connector.toml");
        let c = Config::parse(text, Path::new("/etc/postern/connector.toml"))
            .unwrap_or_else(|e| panic!("config/connector.toml: {e}"));
        assert_eq!(c.state_dir, Path::new("/var/lib/postern-connector"));
        assert_eq!(c.allowlist.entries.len(), 3);
        assert_eq!(
            c.admin_listen,
            Some("127.0.0.1:9091".parse().unwrap()),
            "the example shows the admin listener"
        );
    }
}
