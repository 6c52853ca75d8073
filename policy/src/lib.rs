#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! Postern's access policy: which users and groups may reach which endpoints.
//!
//! A policy is one TOML file with optional `[defaults]`, a list of `[[endpoints]]` (services
//! behind a connector site) and a list of `[[rules]]` (allow or deny, for groups and/or users, on
//! named endpoints or `"*"`). Access is denied unless an allow rule matches, and any matching
//! deny rule overrides every allow. `config/policy.toml` in the repository is a commented
//! example.
//!
//! ```
//! use postern_policy::{Policy, Request};
//!
//! let policy = Policy::parse(r#"
//!     [[endpoints]]
//!     name = "truro-pacs-dicom"
//!     site = "truro"
//!     host = "10.1.2.3"
//!     port = 104
//!     protocol = "dicom"
//!
//!     [[rules]]
//!     id = "radiologists-pacs"
//!     effect = "allow"
//!     groups = ["radiologists"]
//!     endpoints = ["truro-pacs-dicom"]
//! "#, "policy.toml")?;
//!
//! let groups = vec!["radiologists".to_owned()];
//! let now = std::time::SystemTime::now();
//! let decision = policy.evaluate(&Request::new("alice@truro.nhs.uk", &groups, "truro-pacs-dicom", now));
//! assert!(decision.is_allowed());
//! assert_eq!(decision.reason, "allowed by rule 'radiologists-pacs'");
//! # Ok::<(), postern_policy::PolicyError>(())
//! ```
//!
//! # Layout
//!
//! Loading runs in stages, and each stage records problems instead of stopping at the first, so
//! that [`PolicyError`] lists everything wrong with a file, each with file, line, column and a
//! hint:
//!
//! 1. `raw`: the text is parsed with `toml_edit`, which keeps byte spans, and each
//!    table is decoded on its own into loose serde structs that mirror the file
//!    (`deny_unknown_fields`, every key reported).
//! 2. `resolve`: raw values are checked and converted into the runtime types
//!    of `model` (names, hosts, ports, durations, duplicates, references between
//!    rules and endpoints, limits).
//! 3. `eval`: a valid policy is compiled into an index from endpoint to the rules
//!    that mention it, and [`Policy::evaluate`] answers [`Request`]s with a [`Decision`] that
//!    carries its reasons (deciding rule, every matched allow and deny, limits, policy version).
//!
//! `error` holds the error types and the position bookkeeping; `text` holds
//! quoting and "did you mean" helpers. The crate does no I/O except reading the file in
//! [`Policy::from_file`]; the `postern-policy` binary (`check`, `explain`) is a thin wrapper.
//!
//! # Limits
//!
//! Policy files come from administrators, but a gateway must not fall over on a bad one: files
//! are at most [`MAX_FILE_BYTES`], with at most [`MAX_ENDPOINTS`] endpoints, [`MAX_RULES`]
//! rules and strings of at most [`MAX_STRING_BYTES`]; no input makes loading panic.

mod error;
mod eval;
mod model;
mod raw;
mod resolve;
mod text;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

pub use error::{Diagnostic, ErrorKind, PolicyError};
pub use eval::{Decision, Limits, Request};
pub use model::{Effect, Endpoint, Protocol, UnknownProtocol};

use error::{Diagnostics, SourceMap};
use eval::RuleIndex;
use model::Rule;

/// Largest policy file accepted: 4 MiB.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Most endpoints a policy may define.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most rules a policy may define.
pub const MAX_RULES: usize = 10_000;
/// Longest string value accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;
/// Session limit for allow rules that set none, unless `[defaults] max_session` says otherwise.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(8 * 60 * 60);

/// A loaded, valid policy, ready to answer requests. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    endpoints: Vec<Endpoint>,
    /// Endpoint name → position in `endpoints`.
    endpoint_positions: HashMap<String, usize>,
    /// Rules in file order; the index refers to them by position.
    rules: Vec<Rule>,
    index: RuleIndex,
}

impl Policy {
    /// Parses and validates policy text. `origin` names the source (normally the file name) in
    /// error messages. On failure every problem found is returned, not only the first.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let source = SourceMap::new(text);
        let mut diags = Diagnostics::default();
        if text.len() > MAX_FILE_BYTES {
            diags.push(
                ErrorKind::LimitExceeded,
                0,
                format!(
                    "policy is {} bytes; the limit is {MAX_FILE_BYTES} bytes (4 MiB)",
                    text.len()
                ),
                None,
            );
            return Err(PolicyError::Invalid(diags.finish(&source, origin)));
        }

        let resolved =
            raw::load(text, &mut diags).map(|raw| resolve::resolve(raw, &mut diags, &source));
        match resolved {
            Some(resolved) if diags.is_empty() => Ok(Policy::compile(resolved, text)),
            _ => Err(PolicyError::Invalid(diags.finish(&source, origin))),
        }
    }

    /// Reads a policy file (at most [`MAX_FILE_BYTES`]; larger files are refused without being
    /// read in full) and parses it, naming it by its path in messages.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let read_error = |source| PolicyError::Read {
            origin: origin.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        // One byte more than allowed, to tell "exactly at the limit" from "over it".
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;

        if bytes.len() > MAX_FILE_BYTES {
            let mut diags = Diagnostics::default();
            diags.push(
                ErrorKind::LimitExceeded,
                0,
                format!("policy file is larger than the limit of {MAX_FILE_BYTES} bytes (4 MiB)"),
                None,
            );
            return Err(PolicyError::Invalid(
                diags.finish(&SourceMap::new(""), &origin),
            ));
        }
        match String::from_utf8(bytes) {
            Ok(text) => Policy::parse(&text, &origin),
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let prefix = std::str::from_utf8(e.as_bytes().get(..valid).unwrap_or_default())
                    .unwrap_or_default();
                let mut diags = Diagnostics::default();
                diags.push(
                    ErrorKind::Encoding,
                    valid,
                    "policy file is not valid UTF-8",
                    Some("save the file as UTF-8".into()),
                );
                Err(PolicyError::Invalid(
                    diags.finish(&SourceMap::new(prefix), &origin),
                ))
            }
        }
    }

    fn compile(resolved: resolve::Resolved, text: &str) -> Policy {
        let endpoint_positions: HashMap<String, usize> = resolved
            .endpoints
            .iter()
            .enumerate()
            .map(|(position, endpoint)| (endpoint.name.clone(), position))
            .collect();
        let index = RuleIndex::build(
            resolved.endpoints.len(),
            resolved.rules.iter().map(|r| &r.targets),
            |name| endpoint_positions.get(name).copied(),
        );
        Policy {
            version: version_of(text.as_bytes()),
            endpoints: resolved.endpoints,
            endpoint_positions,
            rules: resolved.rules.into_iter().map(|r| r.rule).collect(),
            index,
        }
    }

    /// Identifies the policy text: `"sha256:"` and the first 16 hex digits of the SHA-256 of
    /// the file's bytes. Recorded in every decision, so an audit record names the exact policy.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoint_position(name)
            .and_then(|position| self.endpoints.get(position))
    }

    /// Every endpoint, in file order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// How many rules the policy has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    fn endpoint_position(&self, name: &str) -> Option<usize> {
        self.endpoint_positions.get(name).copied()
    }
}

fn version_of(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut version = String::from("sha256:");
    for byte in digest.as_ref().iter().take(8) {
        // Writing to a String cannot fail.
        let _ = write!(version, "{byte:02x}");
    }
    version
}
