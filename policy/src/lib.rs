#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! Postern's access policy: who may reach which endpoints, from what device, from where and
//! when — and why a request was allowed or denied.
//!
//! A policy is TOML (one file, or a directory of files merged): optional `[defaults]`, named
//! `[[groups]]` mapped from identity-provider claims, `[[endpoints]]` (services behind a
//! connector site, with ports, egress class and labels), `[[rules]]` (allow or deny, for groups
//! and users, on endpoints selected by name, pattern, label or egress class, with conditions on
//! validity dates, weekly windows, source networks, sign-in and device, and for web
//! applications HTTP methods and path prefixes) and inline `[[tests]]`.
//! Access is denied unless an allow rule matches, and any matching deny rule overrides every
//! allow. `docs/policy.md` is the reference; `config/policy.toml` a commented example.
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
//! that [`PolicyError`] lists everything wrong with a policy, each with file, line, column and a
//! hint; warnings are kept apart ([`Policy::warnings`]):
//!
//! 1. `raw`: each file's text is parsed with `toml_edit`, which keeps byte spans, and each
//!    table is decoded on its own into loose serde structs that mirror the file
//!    (`deny_unknown_fields`, every unknown key reported, nested tables too).
//! 2. `resolve`: raw values are checked and converted into the compiled types of `rule` and
//!    `model` (names, hosts, ports, zones, windows, dates, networks, references between
//!    rules, groups and endpoints, limits, tests), then whole-policy checks run (unreachable and
//!    shadowed rules, selections that match nothing).
//! 3. `eval`: a valid policy is compiled into an index (endpoint → subject → rules) and
//!    [`Policy::evaluate`] answers [`Request`]s with a [`Decision`] that carries its reasons;
//!    `schedule` holds weekly windows and zone arithmetic (offsets tabulated at load time).
//!
//! Around them: `cases` runs inline tests, `diff` compares two policies, `format` is the
//! canonical formatter, `error` holds the error types and position bookkeeping, `text` quoting,
//! "did you mean" and the lookup hasher. The crate does no I/O except reading files in
//! [`Policy::from_path`], and never reads the clock: time is part of the request. The
//! `postern-policy` binary (`check`, `test`, `explain`, `fmt`, `diff`) is a thin wrapper.
//!
//! # Limits
//!
//! Policy files come from administrators, but a gateway must not fall over on a bad one: files
//! are at most [`MAX_FILE_BYTES`] (directories [`MAX_FILES`] files and [`MAX_TOTAL_BYTES`]),
//! with at most [`MAX_ENDPOINTS`] endpoints, [`MAX_GROUPS`] groups, [`MAX_RULES`] rules,
//! [`MAX_TESTS`] tests, [`MAX_PATTERNS`] distinct endpoint patterns, [`MAX_INDEX_ENTRIES`]
//! index entries and strings of at most [`MAX_STRING_BYTES`]; no input makes loading panic.

mod cases;
mod diff;
mod error;
mod eval;
mod format;
mod model;
mod raw;
mod resolve;
mod rule;
mod schedule;
mod text;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dicom;
#[cfg(test)]
mod tests_identity;
#[cfg(test)]
mod tests_lang;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_time;
#[cfg(test)]
mod tests_web;

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

pub use cases::{TestCase, TestOutcome, TestReport};
pub use diff::{PolicyDiff, RequestChange};
pub use error::{Diagnostic, ErrorKind, PolicyError, Severity};
pub use eval::{
    AccessMode, ConditionTrace, Decision, DeviceFacts, DicomGrant, Explanation, Limits, ReportOnly,
    Request, RuleTrace,
};
pub use format::format_policy;
pub use model::{
    Effect, Egress, Endpoint, InvalidRequestAudit, PortRange, Protocol, RequestAudit,
    UnknownProtocol,
};

use error::{Diagnostics, SourceFile, SourceMap};
use eval::Index;
use rule::{Group, Rule};

/// The DIMSE services a rule's `dicom_services` may list: C-ECHO, C-FIND, C-GET, C-MOVE and
/// C-STORE (from the clinician's side to the PACS).
pub const DICOM_SERVICES: [&str; 5] = ["echo", "find", "get", "move", "store"];
/// What a rule on a DICOM endpoint allows when it has no `dicom_services`: everything but
/// `store` (reading images, never sending them into the PACS from home).
pub const DEFAULT_DICOM_SERVICES: [&str; 4] = ["echo", "find", "get", "move"];

/// Largest policy file accepted: 4 MiB.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Largest policy directory accepted, all files together: 16 MiB.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// Most `*.toml` files a policy directory may hold.
pub const MAX_FILES: usize = 256;
/// Most endpoints a policy may define.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most groups a policy may define.
pub const MAX_GROUPS: usize = 10_000;
/// Most rules a policy may define.
pub const MAX_RULES: usize = 10_000;
/// Most inline tests a policy may hold.
pub const MAX_TESTS: usize = 10_000;
/// Most distinct endpoint patterns (`"truro-*"`) in a policy: each is matched against every
/// endpoint name when the policy loads.
pub const MAX_PATTERNS: usize = 1_000;
/// Most (endpoint, group or user, rule) combinations the index may hold. A rule that selects
/// every endpoint with `"*"` (and nothing else) counts once per group or user it names.
pub const MAX_INDEX_ENTRIES: usize = 4_000_000;
/// Longest string value accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;
/// Session limit for allow rules that set none, unless `[defaults] max_session` says otherwise.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(8 * 60 * 60);

/// How long a suspended tunnel of an allow rule that sets no `resume_grace` (and no
/// `[defaults] resume_grace`) may wait for its client to come back.
pub const DEFAULT_RESUME_GRACE: Duration = Duration::from_secs(2 * 60);

/// A loaded, valid policy, ready to answer requests. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    /// The file names, in load order; rules refer to them by position.
    origins: Vec<String>,
    endpoints: Vec<Endpoint>,
    /// Endpoint name → position in `endpoints`.
    endpoint_positions: text::FastMap<Box<str>, usize>,
    groups: Vec<Group>,
    /// Users named in groups and rules (lowercased).
    users: Vec<String>,
    /// Rules in file order; the index refers to them by position.
    rules: Vec<Rule>,
    tests: Vec<TestCase>,
    warnings: Vec<Diagnostic>,
    /// `[defaults] zone`, if set.
    default_zone: Option<String>,
    /// `[dicom] ae_titles`: ASCII-lowercased user → the user's calling AE titles.
    ae_titles: std::collections::HashMap<String, Vec<String>>,
    index: Index,
}

impl Policy {
    /// Parses and validates policy text. `origin` names the source (normally the file name) in
    /// error messages. On failure every problem found is returned, not only the first.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_FILE_BYTES {
            let mut diags = Diagnostics::default();
            diags.push(
                ErrorKind::LimitExceeded,
                0,
                format!(
                    "policy is {} bytes; the limit is {MAX_FILE_BYTES} bytes (4 MiB)",
                    text.len()
                ),
                None,
            );
            return Err(PolicyError::Invalid(
                diags.finish_one(&SourceMap::new(text), origin),
            ));
        }
        Policy::load(&[(origin.to_owned(), text)], version_of(text.as_bytes()))
    }

    /// Reads a policy file, or every `*.toml` file of a directory (in file-name order, as if
    /// they were one file: rule, endpoint, group and test names are unique across files, and
    /// `[defaults]` may appear in one of them). Files are at most [`MAX_FILE_BYTES`] (larger
    /// ones are refused without being read in full); a directory holds at most [`MAX_FILES`]
    /// files and [`MAX_TOTAL_BYTES`] in all. Messages name each file by its path.
    pub fn from_path(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|source| PolicyError::Read {
            origin: origin.clone(),
            source,
        })?;
        if !metadata.is_dir() {
            let text = read_policy_file(path)?;
            return Policy::load(&[(origin, &text)], version_of(text.as_bytes()));
        }
        let entries = std::fs::read_dir(path).map_err(|source| PolicyError::Read {
            origin: origin.clone(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Read {
                origin: origin.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_file = entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink());
            if is_file && name.ends_with(".toml") && !name.starts_with('.') {
                paths.push(entry.path());
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::Read {
                origin,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the directory holds no *.toml policy files",
                ),
            });
        }
        let limit_error = |message: String| {
            let mut diags = Diagnostics::default();
            diags.push(ErrorKind::LimitExceeded, 0, message, None);
            PolicyError::Invalid(diags.finish_one(&SourceMap::new(""), &path.display().to_string()))
        };
        if paths.len() > MAX_FILES {
            return Err(limit_error(format!(
                "the policy directory holds {} *.toml files; the limit is {MAX_FILES}",
                paths.len()
            )));
        }
        let mut files = Vec::new();
        let mut total = 0usize;
        let mut hash_input = Vec::new();
        for file in &paths {
            let text = read_policy_file(file)?;
            total += text.len();
            if total > MAX_TOTAL_BYTES {
                return Err(limit_error(format!(
                    "the policy files add up to more than the limit of {MAX_TOTAL_BYTES} bytes (16 MiB)"
                )));
            }
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            hash_input.extend_from_slice(name.as_bytes());
            hash_input.push(0);
            hash_input.extend_from_slice(text.len().to_string().as_bytes());
            hash_input.push(0);
            hash_input.extend_from_slice(text.as_bytes());
            files.push((file.display().to_string(), text));
        }
        let borrowed: Vec<(String, &str)> =
            files.iter().map(|(o, t)| (o.clone(), t.as_str())).collect();
        Policy::load(&borrowed, version_of(&hash_input))
    }

    /// Reads a policy file or directory: the same as [`Policy::from_path`].
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        Policy::from_path(path)
    }

    fn load(files: &[(String, &str)], version: String) -> Result<Policy, PolicyError> {
        let sources: Vec<SourceFile<'_>> = files
            .iter()
            .map(|(origin, text)| SourceFile {
                origin: origin.clone(),
                map: SourceMap::new(text),
            })
            .collect();
        let mut diags = Diagnostics::default();
        let mut raw = raw::RawDocument::default();
        let mut complete = true;
        for (i, (_, text)) in files.iter().enumerate() {
            diags.set_file(i);
            complete &= raw::load(text, i, &mut raw, &mut diags);
            if !complete {
                break;
            }
        }
        let resolved = complete.then(|| resolve::resolve(&raw, &mut diags, &sources));
        match resolved {
            Some(resolved) if diags.is_empty() => {
                let (_, warnings) = diags.finish(&sources);
                Ok(Policy::compile(
                    resolved,
                    version,
                    files.iter().map(|(o, _)| o.clone()).collect(),
                    warnings,
                ))
            }
            _ => Err(PolicyError::Invalid(diags.finish(&sources).0)),
        }
    }

    fn compile(
        resolved: resolve::Resolved,
        version: String,
        origins: Vec<String>,
        warnings: Vec<Diagnostic>,
    ) -> Policy {
        let endpoint_positions = resolved
            .endpoints
            .iter()
            .enumerate()
            .map(|(position, endpoint)| (endpoint.name.as_str().into(), position))
            .collect();
        let index = Index::build(
            resolved.endpoints.len(),
            &resolved.groups,
            &resolved.users,
            &resolved.rules,
        );
        Policy {
            version,
            origins,
            endpoints: resolved.endpoints,
            endpoint_positions,
            groups: resolved.groups,
            users: resolved.users,
            rules: resolved.rules,
            tests: resolved.tests,
            warnings,
            default_zone: resolved.defaults.zone.as_ref().map(|z| z.name.clone()),
            ae_titles: resolved.ae_titles,
            index,
        }
    }

    /// Identifies the policy text: `"sha256:"` and the first 16 hex digits of the SHA-256 of
    /// the file's bytes (for a directory, of every file's name, length and bytes in order).
    /// Recorded in every decision, so an audit record names the exact policy.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The calling AE titles `[dicom] ae_titles` gives `user` (compared ASCII
    /// case-insensitively), if any.
    pub fn ae_titles(&self, user: &str) -> &[String] {
        self.ae_titles
            .get(&user.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
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

    /// The rule ids, in file order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The names of the groups the policy defines (or, in a policy without `[[groups]]`, the
    /// group names its rules use), in order of definition.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// Problems that do not stop the policy from loading: shadowed rules, selections that match
    /// nothing, unused groups, suspicious values. In file order.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The IANA name of `[defaults] zone`, if the policy sets one.
    pub fn default_zone(&self) -> Option<String> {
        self.default_zone.clone()
    }

    /// The shortest `auth.max_age` any rule enforces (report-only conditions do not count), or
    /// `None` if no rule depends on the sign-in's age. The gateway sends it to the identity
    /// provider as the OIDC `max_age`, so a sign-in older than that is made afresh and the ID
    /// token carries `auth_time`.
    pub fn sign_in_max_age(&self) -> Option<Duration> {
        self.rules
            .iter()
            .flat_map(|r| &r.conditions)
            .filter(|c| !c.report)
            .filter_map(|c| match c.check {
                rule::Check::MaxAge(d) => Some(d),
                _ => None,
            })
            .min()
    }

    /// The files the policy was read from (one for [`Policy::parse`]).
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Users named in groups and rules, lowercased.
    pub(crate) fn index_users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(String::as_str)
    }

    fn endpoint_position(&self, name: &str) -> Option<usize> {
        self.endpoint_positions.get(name).copied()
    }
}

/// Reads one policy file, refusing files over [`MAX_FILE_BYTES`] without reading them in full
/// and files that are not UTF-8.
fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
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
            diags.finish_one(&SourceMap::new(""), &origin),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let prefix =
            std::str::from_utf8(e.as_bytes().get(..valid).unwrap_or_default()).unwrap_or_default();
        let mut diags = Diagnostics::default();
        diags.push(
            ErrorKind::Encoding,
            valid,
            "policy file is not valid UTF-8",
            Some("save the file as UTF-8".into()),
        );
        PolicyError::Invalid(diags.finish_one(&SourceMap::new(prefix), &origin))
    })
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
