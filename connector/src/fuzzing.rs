//! Entry points for the `cargo fuzz` targets in `connector/fuzz` (not part of the connector's
//! API): each feeds outside input to the code path the connector runs on it.

use std::path::Path;
use std::sync::OnceLock;

use http::{Method, Request};

use crate::config::Config;

/// A connector configuration with a small allowlist, for the `connect_target` target.
fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let text = "state_dir = \"/var/lib/postern-connector\"\ngateways = [\"gw.example.org:8443\"]\n\n[[allow]]\ncidr = \"10.20.0.0/16\"\nports = \"104, 3389, 8000-8099\"\n\n[[allow]]\ncidr = \"fd00::/8\"\nports = \"*\"\n";
        Config::parse(text, Path::new("/etc/postern/connector.toml"))
            .unwrap_or_else(|e| panic!("fuzz fixture: connector config: {e}"))
    })
}

/// Target `connect_target`: the gateway's `CONNECT` request target as the connector reads it
/// (`link::connect_target`, `link::literal_target`) and the allowlist decision on it.
pub fn connect_target(data: &[u8]) {
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let Ok(req) = Request::builder().method(Method::CONNECT).uri(uri).body(()) else {
        return;
    };
    let Some((host, port)) = crate::link::connect_target(&req) else {
        return;
    };
    if let Some(addr) = crate::link::literal_target(&host, port) {
        let allowed = config().allowlist.allows(addr.ip(), addr.port());
        if allowed {
            // Only what the fixture lists may pass.
            let ok = match addr.ip() {
                std::net::IpAddr::V4(v4) => {
                    let o = v4.octets();
                    o[0] == 10
                        && o[1] == 20
                        && (port == 104 || port == 3389 || (8000..=8099).contains(&port))
                }
                std::net::IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
            };
            assert!(ok, "{addr} passed the allowlist");
        }
    }
}

/// Target `link_request`: a request frame of a QUIC link ([`wire::LinkRequest`] JSON) as the
/// connector reads it (`link::request_parts`), then its `CONNECT` target.
///
/// [`wire::LinkRequest`]: postern_proto::wire::LinkRequest
pub fn link_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<postern_proto::wire::LinkRequest>(data) else {
        return;
    };
    let Ok((method, uri, headers)) = crate::link::request_parts(&req) else {
        return;
    };
    assert!(headers.len() <= req.headers.len());
    if method == Method::CONNECT {
        if let Ok(r) = Request::builder().method(method).uri(uri).body(()) {
            if let Some((host, port)) = crate::link::connect_target(&r) {
                let _ = crate::link::literal_target(&host, port);
            }
        }
    }
}

/// Target `connector_config`: `Config::parse` on arbitrary text (it reads no files) and the
/// allowlist's port syntax.
pub fn connector_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Config::parse(&text, Path::new("/etc/postern/connector.toml"));
    let _ = crate::allowlist::Ports::parse(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds and crash reproducers of both targets run clean under `cargo test`.
    #[test]
    fn seeds_and_regressions_replay() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 3] = [
            ("connect_target", connect_target),
            ("connector_config", connector_config),
            ("link_request", link_request),
        ];
        for (name, f) in targets {
            let mut n = 0;
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(base.join(kind).join(name)) else {
                    continue;
                };
                for e in dir {
                    f(&std::fs::read(e.unwrap().path()).unwrap());
                    n += 1;
                }
            }
            assert!(n > 0, "no seeds for {name}");
        }
        // The example configuration parses, and the fixture allows what it lists.
        let example =
            std::fs::read_to_string(base.join("seeds/connector_config/example.toml")).unwrap();
        Config::parse(&example, Path::new("/etc/postern/connector.toml")).unwrap();
        assert!(config().allowlist.allows("10.20.1.2".parse().unwrap(), 104));
    }
}
