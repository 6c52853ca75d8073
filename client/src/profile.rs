//! The clinician's profile, `profile.toml` in the config directory (`~/.config/postern` on
//! Linux, `%APPDATA%\postern` on Windows): which endpoints `postern up` opens and on which
//! local ports, and how sign-in renewal behaves. Optional: without it `postern up` opens every
//! endpoint the policy gives a `local_port`.
//!
//! ```toml
//! renew_before = "15m"      # start renewing the sign-in this long before it expires
//! open_browser = true       # open the browser for renewal (else: a notification and the URL)
//!
//! [[tunnel]]
//! endpoint = "truro-pacs-dicom"
//! local_port = 11112        # optional: the policy's local_port otherwise
//!
//! [[tunnel]]
//! endpoint = "truro-reporting-pc"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ClientError;

/// Default lead for renewing the sign-in.
pub const RENEW_BEFORE: Duration = Duration::from_secs(15 * 60);

/// `profile.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The endpoints to open; empty: every endpoint with a `local_port` in the policy.
    pub tunnels: Vec<TunnelEntry>,
    pub renew_before: Duration,
    pub open_browser: bool,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            tunnels: Vec::new(),
            renew_before: RENEW_BEFORE,
            open_browser: true,
        }
    }
}

/// One `[[tunnel]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelEntry {
    pub endpoint: String,
    #[serde(default)]
    pub local_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    renew_before: Option<String>,
    #[serde(default)]
    open_browser: Option<bool>,
    #[serde(default)]
    tunnel: Vec<TunnelEntry>,
}

/// Where the profile lives.
pub fn path(config_dir: &Path) -> PathBuf {
    config_dir.join("profile.toml")
}

/// The profile in `config_dir`: the default when there is none; an error naming the file and
/// the line when it does not parse.
pub fn load(config_dir: &Path) -> Result<Profile, ClientError> {
    let p = path(config_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => parse(&text).map_err(|e| ClientError::Setup(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(ClientError::Setup(format!(
            "cannot read {}: {e}",
            p.display()
        ))),
    }
}

/// Parses a profile's text.
pub fn parse(text: &str) -> Result<Profile, String> {
    if text.len() > 64 * 1024 {
        return Err("larger than 64 KiB".into());
    }
    let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
    let renew_before = match raw.renew_before {
        Some(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("renew_before = \"{s}\": {e} (write it like \"15m\")"))?,
        None => RENEW_BEFORE,
    };
    let mut seen = std::collections::HashSet::new();
    for t in &raw.tunnel {
        if !seen.insert(t.endpoint.as_str()) {
            return Err(format!("endpoint '{}' is listed twice", t.endpoint));
        }
        if t.local_port == Some(0) {
            return Err(format!(
                "local_port of '{}' must be 1 to 65535 (omit it to use the policy's)",
                t.endpoint
            ));
        }
    }
    Ok(Profile {
        tunnels: raw.tunnel,
        renew_before,
        open_browser: raw.open_browser.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_parses_and_defaults_apply() {
        let p = parse(
            "renew_before = \"20m\"\n[[tunnel]]\nendpoint = \"pacs\"\nlocal_port = 11112\n[[tunnel]]\nendpoint = \"rdp\"\n",
        )
        .unwrap();
        assert_eq!(p.renew_before, Duration::from_secs(1200));
        assert!(p.open_browser);
        assert_eq!(p.tunnels.len(), 2);
        assert_eq!(p.tunnels[0].local_port, Some(11112));
        assert_eq!(p.tunnels[1].local_port, None);
        assert_eq!(parse("").unwrap(), Profile::default());
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("renew_before = \"soon\"")
            .unwrap_err()
            .contains("renew_before"));
        assert!(
            parse("[[tunnel]]\nendpoint = \"a\"\n[[tunnel]]\nendpoint = \"a\"\n")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse("[[tunnel]]\nendpoint = \"a\"\nlocal_port = 0\n")
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(parse("[[tunnel]]\nendpont = \"a\"\n")
            .unwrap_err()
            .contains("endpont"));
        assert!(parse("[[tunnel]]\nendpoint = \"a\"\nlocal_port = 70000\n").is_err());
    }
}
