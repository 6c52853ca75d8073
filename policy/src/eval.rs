//! Stage 3: answering requests. The index is built once when a policy loads (endpoint → subject
//! → rules); evaluating a request touches only the rules that name one of the requester's
//! groups (or the user, or everyone) for the requested endpoint, in file order, without
//! allocating except for the decision it returns.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smallvec::SmallVec;

use crate::model::{user_key, Effect, Endpoint, Protocol};
use crate::rule::{path_under, Check, Group, Rule, Selection, USER_AE};
use crate::schedule::{LocalTime, Zone};
use crate::text::{bounded_list, FastMap, Quoted};
use crate::Policy;

/// How many of the requester's groups a "no rule allows" reason lists.
const REASON_GROUPS_MAX: usize = 20;

/// What the client device is, as the gateway learned it (device certificate, MDM, posture
/// agent). All facts are optional as a whole: a request without [`Request::with_device`] has
/// no device facts, and every device condition is then *unknown* (see [`Policy::evaluate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceFacts {
    /// The device is enrolled with the trust (it holds a device certificate).
    pub registered: bool,
    /// The device is approved for patient data (managed, encrypted, patched).
    pub approved: bool,
    /// The device verified its user locally (biometric or PIN on a platform authenticator).
    pub user_verified: bool,
    /// Any further facts from a posture check, as strings: `os = "windows-11"`,
    /// `disk_encrypted = "true"`. Rules compare them exactly.
    pub posture: BTreeMap<String, String>,
}

/// How the user signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AuthFacts {
    mfa: bool,
    auth_time: Option<SystemTime>,
}

/// How the endpoint is being used: what the evaluator may know about the traffic, which
/// decides how rules with `methods` or `paths` apply. Read it with [`Request::access`]; set it
/// with [`Request::with_web_session`] and [`Request::with_web_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessMode<'a> {
    /// A tunnel (opaque bytes; the default): an allow rule with `methods`/`paths` does not
    /// match (it cannot be enforced on bytes it cannot see); a deny rule with them does (a
    /// tunnel could do the denied thing).
    #[default]
    Tunnel,
    /// A web application session as a whole (when it starts, and when live sessions are
    /// re-evaluated after a policy reload or at `valid_until`): an allow rule with
    /// `methods`/`paths` matches (some of the session's requests would be allowed); a deny
    /// rule with them does not (it refuses particular requests only, each decided on its own).
    WebSession,
    /// One web request: a rule with `methods`/`paths` matches only when the method is listed
    /// (if `methods` is given) and the path is under one of the prefixes (if `paths` is given),
    /// for allow and deny rules alike.
    WebRequest {
        /// The request's method, as sent (`GET`).
        method: &'a str,
        /// The request's path, without the query string.
        path: &'a str,
    },
}

/// The access mode as the evaluator keeps it: a web request's method and path are checked
/// once, when the request is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode<'a> {
    Tunnel,
    WebSession,
    WebRequest {
        method: &'a str,
        path: &'a str,
        /// The method is an upper-case token (`GET`, `PROPFIND`): compared with `methods`.
        /// Otherwise (`get`, empty) it is unknown: no allow rule with `methods` matches and
        /// every deny rule with `methods` does.
        method_known: bool,
        /// The path is in normal form (see `rule::path_problem`): compared with `paths`.
        /// Otherwise it is unknown, with the same fail-closed outcome.
        path_known: bool,
    },
}

/// Who wants to reach what, and when. Built by the gateway from the authenticated session.
///
/// Construct it with [`Request::new`]; further facts come with builder methods, so callers keep
/// compiling as it grows. A fact that was not given is *unknown*, never assumed: a condition
/// that needs it does not let an allow rule match (and does not stop a deny rule).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The authenticated user name (normally an e-mail address).
    pub user: &'a str,
    /// The values of the user's `groups` claim, as the IdP sent them.
    pub groups: &'a [String],
    /// The endpoint name the user asked for.
    pub endpoint: &'a str,
    /// When the request is evaluated. The evaluator never reads the clock itself.
    pub at: SystemTime,
    port: Option<u16>,
    source: Option<IpAddr>,
    auth: Option<AuthFacts>,
    device: Option<&'a DeviceFacts>,
    justification: Option<&'a str>,
    claims: Vec<(&'a str, &'a [String])>,
    ae_titles: &'a [String],
    mode: Mode<'a>,
}

impl<'a> Request<'a> {
    /// A request by `user` (with `groups`, the values of the IdP's `groups` claim) for
    /// `endpoint`, evaluated as of `at`.
    pub fn new(
        user: &'a str,
        groups: &'a [String],
        endpoint: &'a str,
        at: SystemTime,
    ) -> Request<'a> {
        Request {
            user,
            groups,
            endpoint,
            at,
            port: None,
            source: None,
            auth: None,
            device: None,
            justification: None,
            claims: Vec::new(),
            ae_titles: &[],
            mode: Mode::Tunnel,
        }
    }

    /// Evaluates the request for a web application session as a whole (see
    /// [`AccessMode::WebSession`]): when a browser session starts, and when live sessions are
    /// re-evaluated.
    pub fn with_web_session(mut self) -> Self {
        self.mode = Mode::WebSession;
        self
    }

    /// Evaluates the request for one web request (see [`AccessMode::WebRequest`]): `method` as
    /// sent (methods are case-sensitive: `GET`), `path` as sent, without the query string
    /// (anything from a `?` on is ignored). The path is compared as it is, byte for byte; a
    /// path that is not in normal form (a `.` or `..` segment, `//`, a backslash, a
    /// percent-encoded `/` or unreserved character) or a method that is not an upper-case
    /// token cannot be compared, and is treated like an unknown fact: no allow rule with
    /// `paths` (or `methods`) matches it, and every deny rule with them does.
    pub fn with_web_request(mut self, method: &'a str, path: &'a str) -> Self {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.mode = Mode::WebRequest {
            method,
            path,
            method_known: !method.is_empty()
                && method.len() <= 32
                && method
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_'),
            path_known: crate::rule::path_problem(path).is_none(),
        };
        self
    }

    /// Back to the default: a tunnel (see [`AccessMode::Tunnel`]).
    pub fn with_tunnel(mut self) -> Self {
        self.mode = Mode::Tunnel;
        self
    }

    /// How the endpoint is being used (tunnel unless set).
    pub fn access(&self) -> AccessMode<'a> {
        match self.mode {
            Mode::Tunnel => AccessMode::Tunnel,
            Mode::WebSession => AccessMode::WebSession,
            Mode::WebRequest { method, path, .. } => AccessMode::WebRequest { method, path },
        }
    }

    /// The client's address as the gateway sees it (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source.to_canonical());
        self
    }

    /// How the user signed in: whether with multi-factor authentication, and when (the IdP's
    /// `auth_time`; `None` if the token does not say).
    pub fn with_auth(mut self, mfa: bool, auth_time: Option<SystemTime>) -> Self {
        self.auth = Some(AuthFacts { mfa, auth_time });
        self
    }

    /// What the client device is.
    pub fn with_device(mut self, device: &'a DeviceFacts) -> Self {
        self.device = Some(device);
        self
    }

    /// The reason the user gave for break-glass access. Blank text counts as none.
    pub fn with_justification(mut self, justification: &'a str) -> Self {
        self.justification = Some(justification).filter(|j| !j.trim().is_empty());
        self
    }

    /// The port the client asks for, for endpoints with a port range; without it the
    /// endpoint's first port is meant.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The values of another IdP claim (`roles`, `job_title`), for groups mapped from it.
    /// `"groups"` adds to the values given to [`Request::new`].
    /// The calling AE titles the identity provider gives the user (its AE title claim): with
    /// the policy's `[dicom] ae_titles`, what `{user.ae}` in a rule's `calling_ae` stands for.
    pub fn with_ae_titles(mut self, titles: &'a [String]) -> Self {
        self.ae_titles = titles;
        self
    }

    pub fn with_claim(mut self, claim: &'a str, values: &'a [String]) -> Self {
        self.claims.push((claim, values));
        self
    }

    /// The source address, if given.
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// The device facts, if given.
    pub fn device(&self) -> Option<&'a DeviceFacts> {
        self.device
    }

    /// The justification, if a non-blank one was given.
    pub fn justification(&self) -> Option<&'a str> {
        self.justification
    }
}

/// Limits attached to an allow decision.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Limits {
    /// How long a session may last before the gateway closes it. Serialized in humantime form
    /// (`"4h"`), the same way the policy file writes it, or `null`.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub max_session: Option<Duration>,
    /// How long a session may carry no traffic before the gateway closes it; `None` for no
    /// idle limit.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long the gateway keeps a suspended tunnel (its client's link lost) for the client
    /// to resume it; zero: tunnels are not resumable. Serialized in humantime form (`"2m"`,
    /// `"0s"`).
    #[serde(serialize_with = "serialize_duration")]
    pub resume_grace: Duration,
    /// Break-glass: the access was granted on the strength of the user's justification, which
    /// the gateway must audit and flag for review.
    pub require_justification: bool,
    /// DICOM endpoints: what the clinician's side may do on the tunnel's associations, which
    /// the connector enforces. `None` for other endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomGrant>,
}

impl DicomGrant {
    /// Whether `title` may be the calling AE: any when the grant lists none, else equal to an
    /// entry or starting with an entry's part before its final `*`. Spaces around a title
    /// are not significant (DICOM pads AE titles with spaces).
    pub fn allows_calling(&self, title: &str) -> bool {
        let title = title.trim_matches(' ');
        self.calling_ae.is_empty()
            || self.calling_ae.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => title.starts_with(prefix),
                None => p == title,
            })
    }
}

/// What an allow decision for a DICOM endpoint lets the clinician's side do on its
/// associations: the deciding rule's `calling_ae` (with `{user.ae}` replaced by the user's
/// titles) and `dicom_services`, and the endpoint's `called_ae`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DicomGrant {
    /// Calling AE titles, and prefixes ending in `*`, the user may present; empty: any.
    pub calling_ae: Vec<String>,
    /// The AE title associations must call (the endpoint's `called_ae`); `None`: any.
    pub called_ae: Option<String>,
    /// DIMSE services allowed, from [`crate::DICOM_SERVICES`].
    pub services: Vec<String>,
}

fn serialize_duration<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

fn serialize_optional_duration<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
        None => serializer.serialize_none(),
    }
}

fn serialize_optional_time<S: serde::Serializer>(
    value: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(time) => serializer.collect_str(&humantime::format_rfc3339_seconds(*time)),
        None => serializer.serialize_none(),
    }
}

/// A condition in report-only mode that would have failed: the rule matched anyway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportOnly {
    /// The rule that has the condition.
    pub rule: String,
    /// The condition's name, as `report_only` writes it: `device.approved`, `windows`, …
    pub condition: String,
    /// What was wrong, for people: "the device is not approved".
    pub reason: String,
}

/// The answer to a [`Request`], with everything needed to audit or explain it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// The id of the deciding rule; `None` when nothing matched (default deny) or the endpoint
    /// is unknown.
    pub rule: Option<String>,
    /// A sentence for people: the audit log, the client's error message.
    pub reason: String,
    /// Session limits; meaningful only for Allow.
    pub limits: Limits,
    /// Every allow rule that matched, in file order (a deny may still have won).
    pub matched_allows: Vec<String>,
    /// Every deny rule that matched, in file order.
    pub matched_denies: Vec<String>,
    /// Conditions in report-only mode that failed in rules that matched.
    pub report_only: Vec<ReportOnly>,
    /// The earliest instant after the request's `at` at which the same request could get a
    /// different effect, deciding rule or limits because of time alone: a window opening or
    /// closing (or the zone's clocks changing), a validity date passing, the sign-in growing
    /// older than a rule's `max_age`. `None`: no passage of time changes it (a new policy or
    /// new facts still can). Whole seconds; the gateway re-evaluates live sessions then.
    #[serde(serialize_with = "serialize_optional_time")]
    pub valid_until: Option<SystemTime>,
    /// [`Policy::version`] of the policy that decided.
    pub policy_version: String,
}

impl Decision {
    /// The decision as the connector would apply it to an association presenting
    /// `calling_ae` and using `service` (either may be absent): an allow whose DICOM grant
    /// does not cover them becomes a deny by the same rule, with the reason the connector
    /// gives. Unchanged when it is not an allow with a grant.
    pub fn for_dicom(self, calling_ae: Option<&str>, service: Option<&str>) -> Decision {
        let (Effect::Allow, Some(grant)) = (self.effect, &self.limits.dicom) else {
            return self;
        };
        let rule = self.rule.clone().unwrap_or_default();
        let why = if let Some(ae) = calling_ae.filter(|ae| !grant.allows_calling(ae)) {
            Some(format!(
                "Denied: rule '{rule}' does not accept calling AE title '{}' for this user (accepted: {})",
                Quoted(ae),
                grant.calling_ae.join(", ")
            ))
        } else {
            service
                .filter(|s| !grant.services.iter().any(|g| g == s))
                .map(|s| {
                    format!(
                        "Denied: rule '{rule}' does not allow the DICOM service '{}' (allowed: {})",
                        Quoted(s),
                        grant.services.join(", ")
                    )
                })
        };
        match why {
            Some(reason) => Decision {
                effect: Effect::Deny,
                reason,
                limits: Limits::default(),
                ..self
            },
            None => self,
        }
    }

    /// Whether access is granted.
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

/// A multi-line report for people, as printed by `postern-policy explain`.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(ids: &[String]) -> String {
            if ids.is_empty() {
                "none".into()
            } else {
                ids.join(", ")
            }
        }
        let duration = |d: Option<Duration>| {
            d.map_or("none".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            })
        };
        writeln!(f, "effect:          {}", self.effect)?;
        writeln!(
            f,
            "rule:            {}",
            self.rule.as_deref().unwrap_or("none (default deny)")
        )?;
        writeln!(f, "reason:          {}", self.reason)?;
        writeln!(f, "matched allows:  {}", list(&self.matched_allows))?;
        writeln!(f, "matched denies:  {}", list(&self.matched_denies))?;
        writeln!(f, "max session:     {}", duration(self.limits.max_session))?;
        if self.is_allowed() {
            writeln!(f, "idle timeout:    {}", duration(self.limits.idle_timeout))?;
            let grace = self.limits.resume_grace;
            if grace.is_zero() {
                writeln!(f, "resume grace:    none (tunnels end when the link drops)")?;
            } else {
                writeln!(f, "resume grace:    {}", duration(Some(grace)))?;
            }
            writeln!(
                f,
                "justification:   {}",
                if self.limits.require_justification {
                    "required (break-glass)"
                } else {
                    "not required"
                }
            )?;
            if let Some(g) = &self.limits.dicom {
                let calling = if g.calling_ae.is_empty() {
                    "any".to_owned()
                } else {
                    g.calling_ae.join(", ")
                };
                writeln!(f, "dicom calling:   {calling}")?;
                writeln!(
                    f,
                    "dicom called:    {}",
                    g.called_ae.as_deref().unwrap_or("any")
                )?;
                writeln!(f, "dicom services:  {}", g.services.join(", "))?;
            }
        }
        for report in &self.report_only {
            writeln!(
                f,
                "report only:     rule '{}': {} ({})",
                report.rule, report.condition, report.reason
            )?;
        }
        match self.valid_until {
            Some(t) => writeln!(
                f,
                "valid until:     {}",
                humantime::format_rfc3339_seconds(t)
            )?,
            None => writeln!(f, "valid until:     no time limit")?,
        }
        write!(f, "policy version:  {}", self.policy_version)
    }
}

/// Subject key of "every authenticated user" (`groups = ["*"]`).
const EVERYONE: u32 = 0;

/// Rules by subject for one endpoint (or for "every endpoint"): `keys` ascending, and the
/// rules of `keys[i]` are `rules[starts[i]..starts[i + 1]]`, ascending.
#[derive(Debug, Clone, Default)]
struct SubjectIndex {
    keys: Box<[u32]>,
    starts: Box<[u32]>,
    rules: Box<[u32]>,
}

impl SubjectIndex {
    fn build(mut entries: Vec<(u32, u32)>) -> SubjectIndex {
        entries.sort_unstable();
        entries.dedup();
        let mut keys = Vec::new();
        let mut starts = Vec::new();
        let mut rules = Vec::with_capacity(entries.len());
        for (i, &(key, rule)) in entries.iter().enumerate() {
            if keys.last() != Some(&key) {
                keys.push(key);
                starts.push(u32::try_from(i).unwrap_or(u32::MAX));
            }
            rules.push(rule);
        }
        starts.push(u32::try_from(entries.len()).unwrap_or(u32::MAX));
        SubjectIndex {
            keys: keys.into(),
            starts: starts.into(),
            rules: rules.into(),
        }
    }

    fn lookup(&self, key: u32) -> &[u32] {
        let Ok(i) = self.keys.binary_search(&key) else {
            return &[];
        };
        let (Some(&a), Some(&b)) = (self.starts.get(i), self.starts.get(i + 1)) else {
            return &[];
        };
        self.rules.get(a as usize..b as usize).unwrap_or(&[])
    }
}

/// Claim value → the groups mapped from it.
type ClaimMap = FastMap<Box<str>, Box<[u32]>>;

/// Everything evaluation needs to find the rules for a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// Lowercased user name → user id.
    user_ids: FastMap<Box<str>, u32>,
    /// By user id: the groups that list the user explicitly.
    user_groups: Vec<Box<[u32]>>,
    /// Value of the `groups` claim → groups mapped from it.
    groups_claim: ClaimMap,
    /// Other claims: claim → value → groups.
    other_claims: FastMap<Box<str>, ClaimMap>,
    group_count: u32,
    by_endpoint: Vec<SubjectIndex>,
    all_endpoints: SubjectIndex,
}

impl Index {
    pub(crate) fn build(
        endpoint_count: usize,
        groups: &[Group],
        users: &[String],
        rules: &[Rule],
    ) -> Index {
        let group_count = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        let mut index = Index {
            group_count,
            ..Index::default()
        };
        let mut user_groups: Vec<Vec<u32>> = vec![Vec::new(); users.len()];
        for (i, user) in users.iter().enumerate() {
            index
                .user_ids
                .insert(user.as_str().into(), u32::try_from(i).unwrap_or(u32::MAX));
        }
        let mut groups_claim: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut other: HashMap<&str, HashMap<&str, Vec<u32>>> = HashMap::new();
        for (g, group) in groups.iter().enumerate() {
            let g = u32::try_from(g).unwrap_or(u32::MAX);
            for value in &group.values {
                if group.claim == "groups" {
                    groups_claim.entry(value).or_default().push(g);
                } else {
                    other
                        .entry(&group.claim)
                        .or_default()
                        .entry(value)
                        .or_default()
                        .push(g);
                }
            }
            for user in &group.users {
                if let Some(&u) = index.user_ids.get(user.as_str()) {
                    if let Some(list) = user_groups.get_mut(u as usize) {
                        list.push(g);
                    }
                }
            }
        }
        index.user_groups = user_groups.into_iter().map(Into::into).collect();
        index.groups_claim = groups_claim
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        index.other_claims = other
            .into_iter()
            .map(|(claim, values)| {
                (
                    claim.into(),
                    values
                        .into_iter()
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                )
            })
            .collect();

        let mut by_endpoint: Vec<Vec<(u32, u32)>> = vec![Vec::new(); endpoint_count];
        let mut all = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let r = u32::try_from(r).unwrap_or(u32::MAX);
            let keys = rule_keys(rule, group_count);
            match &rule.selection {
                Selection::All => all.extend(keys.iter().map(|&k| (k, r))),
                Selection::Some(list) => {
                    for &e in list {
                        if let Some(entries) = by_endpoint.get_mut(e as usize) {
                            entries.extend(keys.iter().map(|&k| (k, r)));
                        }
                    }
                }
            }
        }
        index.by_endpoint = by_endpoint.into_iter().map(SubjectIndex::build).collect();
        index.all_endpoints = SubjectIndex::build(all);
        index
    }

    /// The request's subject keys: everyone, the user, and each group the user is in.
    fn subject_keys(&self, req: &Request<'_>) -> SmallVec<[u32; 16]> {
        let mut keys: SmallVec<[u32; 16]> = SmallVec::new();
        keys.push(EVERYONE);
        let group_key = |g: u32| 1 + g;
        if let Some(&u) = self.user_ids.get(&*user_key(req.user)) {
            keys.push(1 + self.group_count + u);
            if let Some(groups) = self.user_groups.get(u as usize) {
                keys.extend(groups.iter().map(|&g| group_key(g)));
            }
        }
        if !self.groups_claim.is_empty() {
            for value in req.groups {
                if let Some(groups) = self.groups_claim.get(value.as_str()) {
                    keys.extend(groups.iter().map(|&g| group_key(g)));
                }
            }
        }
        for &(claim, values) in &req.claims {
            let map = if claim == "groups" {
                Some(&self.groups_claim)
            } else {
                self.other_claims.get(claim)
            };
            if let Some(map) = map {
                for value in values {
                    if let Some(groups) = map.get(value.as_str()) {
                        keys.extend(groups.iter().map(|&g| group_key(g)));
                    }
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The rules that can apply to endpoint `position` for these subject keys, in file order.
    fn candidates(&self, position: usize, keys: &[u32]) -> SmallVec<[u32; 32]> {
        let mut out: SmallVec<[u32; 32]> = SmallVec::new();
        let mut slices = 0;
        for index in [self.by_endpoint.get(position), Some(&self.all_endpoints)]
            .into_iter()
            .flatten()
        {
            for &key in keys {
                let rules = index.lookup(key);
                if !rules.is_empty() {
                    slices += 1;
                    out.extend_from_slice(rules);
                }
            }
        }
        if slices > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

/// A rule's subject keys.
fn rule_keys(rule: &Rule, group_count: u32) -> SmallVec<[u32; 8]> {
    let mut keys = SmallVec::new();
    if rule.subjects.everyone {
        keys.push(EVERYONE);
    }
    keys.extend(rule.subjects.groups.iter().map(|&g| 1 + g));
    keys.extend(rule.subjects.users.iter().map(|&u| 1 + group_count + u));
    keys
}

/// Whether a condition holds for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Met,
    NotMet,
    /// The request lacks the fact the condition needs.
    Unknown,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Met => "met",
            Outcome::NotMet => "not met",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Per-request evaluation state: the instant, and local times computed so far.
pub(crate) struct Context<'r, 'a> {
    pub(crate) req: &'r Request<'a>,
    /// `req.at` in whole Unix seconds (earlier instants clamp to 0).
    pub(crate) now: i64,
    zones: SmallVec<[(*const Zone, LocalTime); 2]>,
}

impl<'r, 'a> Context<'r, 'a> {
    pub(crate) fn new(req: &'r Request<'a>) -> Self {
        Context {
            req,
            now: unix_seconds(req.at),
            zones: SmallVec::new(),
        }
    }

    fn local(&mut self, zone: &Arc<Zone>) -> LocalTime {
        let key = Arc::as_ptr(zone);
        if let Some((_, local)) = self.zones.iter().find(|(z, _)| *z == key) {
            return *local;
        }
        let local = zone.week_second(self.now);
        self.zones.push((key, local));
        local
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn system_time(secs: i64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A check's outcome, and for timed checks the next instant at which it may change (`None`:
/// never, for this request).
pub(crate) fn check(check: &Check, cx: &mut Context<'_, '_>) -> (Outcome, Option<i64>) {
    let req = cx.req;
    let met = |ok: bool| if ok { Outcome::Met } else { Outcome::NotMet };
    match check {
        Check::Valid { from, until } => {
            let now = cx.now;
            match (from, until) {
                (Some((f, _)), _) if now < *f => (Outcome::NotMet, Some(*f)),
                (_, Some((u, _))) if now >= *u => (Outcome::NotMet, None),
                (_, until) => (Outcome::Met, until.as_ref().map(|(u, _)| *u)),
            }
        }
        Check::Windows(schedule) => {
            let local = cx.local(&schedule.zone);
            let (inside, next) = schedule.state_at_local(cx.now, local);
            (met(inside), next)
        }
        Check::Source { allow, deny } => match req.source {
            None => (Outcome::Unknown, None),
            Some(ip) => {
                let allowed = allow.is_empty() || allow.iter().any(|n| n.contains(&ip));
                let denied = deny.iter().any(|n| n.contains(&ip));
                (met(allowed && !denied), None)
            }
        },
        Check::Mfa(want) => match req.auth {
            None => (Outcome::Unknown, None),
            Some(auth) => (met(auth.mfa == *want), None),
        },
        Check::MaxAge(max) => match req.auth.and_then(|a| a.auth_time) {
            None => (Outcome::Unknown, None),
            Some(auth_time) => {
                let signed_in = unix_seconds(auth_time);
                let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
                // Younger than `max`: at exactly `max` old the sign-in has expired.
                let expires = signed_in.saturating_add(max);
                if cx.now < expires {
                    (Outcome::Met, Some(expires))
                } else {
                    (Outcome::NotMet, None)
                }
            }
        },
        Check::Registered(want) => device(req, |d| d.registered == *want),
        Check::Approved(want) => device(req, |d| d.approved == *want),
        Check::UserVerified(want) => device(req, |d| d.user_verified == *want),
        Check::Posture { key, values } => match req.device.map(|d| d.posture.get(key.as_str())) {
            None | Some(None) => (Outcome::Unknown, None),
            Some(Some(value)) => (met(values.iter().any(|v| v == value)), None),
        },
        Check::Justification => (met(req.justification.is_some()), None),
        Check::Methods { methods, deny } => match req.mode {
            Mode::Tunnel => (Outcome::Unknown, None),
            Mode::WebSession => (met(!*deny), None),
            Mode::WebRequest {
                method_known: false,
                ..
            } => (Outcome::Unknown, None),
            Mode::WebRequest { method, .. } => (met(methods.contains(method)), None),
        },
        Check::Paths { prefixes, deny } => match req.mode {
            Mode::Tunnel => (Outcome::Unknown, None),
            Mode::WebSession => (met(!*deny), None),
            Mode::WebRequest {
                path_known: false, ..
            } => (Outcome::Unknown, None),
            Mode::WebRequest { path, .. } => (
                met(prefixes.iter().any(|prefix| path_under(prefix, path))),
                None,
            ),
        },
    }
}

fn device(req: &Request<'_>, ok: impl Fn(&DeviceFacts) -> bool) -> (Outcome, Option<i64>) {
    match req.device {
        None => (Outcome::Unknown, None),
        Some(d) => (if ok(d) { Outcome::Met } else { Outcome::NotMet }, None),
    }
}

/// How one candidate rule fared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleOutcome {
    pub(crate) matched: bool,
    /// The first enforced condition that stopped the rule, and its outcome.
    pub(crate) failed: Option<(usize, Outcome)>,
    /// The earliest instant at which the rule's match could change with time alone.
    pub(crate) edge: Option<i64>,
}

/// Evaluates a candidate rule's conditions. Allow rules need every enforced condition met;
/// deny rules apply unless an enforced condition is *known* not to hold, so a missing fact
/// never lifts a deny. Report-only conditions that do not hold are passed to `report`.
pub(crate) fn evaluate_rule(
    rule: &Rule,
    cx: &mut Context<'_, '_>,
    mut report: impl FnMut(usize, Outcome),
) -> RuleOutcome {
    let mut outcome = RuleOutcome {
        matched: true,
        failed: None,
        edge: None,
    };
    if rule.conditions.is_empty() {
        return outcome;
    }
    let deny = rule.effect == Effect::Deny;
    // Earliest change among timed conditions that hold; latest among those that do not.
    let mut holding_edge: Option<i64> = None;
    let mut failing_edge: Option<i64> = None;
    let mut stuck = false;
    for (i, condition) in rule.conditions.iter().enumerate() {
        let (result, next) = check(&condition.check, cx);
        if condition.report {
            if result != Outcome::Met {
                report(i, result);
            }
            continue;
        }
        let blocks = if deny {
            result == Outcome::NotMet
        } else {
            result != Outcome::Met
        };
        let timed = condition.check.is_timed();
        if blocks {
            outcome.matched = false;
            outcome.failed.get_or_insert((i, result));
            match (timed, next) {
                (true, Some(t)) => failing_edge = Some(failing_edge.map_or(t, |e| e.max(t))),
                _ => stuck = true,
            }
        } else if let (true, Some(t)) = (timed, next) {
            holding_edge = Some(holding_edge.map_or(t, |e| e.min(t)));
        }
    }
    outcome.edge = if outcome.matched {
        holding_edge
    } else if stuck {
        None
    } else {
        failing_edge
    };
    outcome
}

fn min_edge(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Policy {
    /// Decides a request: default deny, deny overrides allow.
    ///
    /// * Unknown endpoint, or a port outside the endpoint's ports: deny, no rule.
    /// * A rule is a candidate when it names the endpoint (by name, pattern, label or egress
    ///   class) and the request's user, one of its groups, or everyone (`"*"`).
    /// * A candidate allow rule matches when every enforced condition is met; a candidate deny
    ///   rule matches unless an enforced condition is known not to hold. A condition whose fact
    ///   the request lacks (no device facts, no source address, no sign-in time) is *unknown*:
    ///   it never lets an allow match, and never lifts a deny.
    /// * Any matching deny rule: deny by the first one in file order.
    /// * Otherwise any matching allow rule: allow by the first one, with its limits.
    /// * Otherwise: deny, no rule; the reason says what the first candidate allow rule lacked
    ///   ("Denied: access to truro-pacs-web for locums is only Mon–Fri 18:00–08:00
    ///   Europe/London"), or that no rule names the user.
    ///
    /// Time is `req.at`; the clock is never read.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let Some(position) = self.endpoint_position(req.endpoint) else {
            return self.deny(
                None,
                format!(
                    "endpoint '{}' is not defined in the policy",
                    Quoted(req.endpoint)
                ),
                Vec::new(),
                Vec::new(),
            );
        };
        if let (Some(port), Some(endpoint)) = (req.port, self.endpoints.get(position)) {
            if !endpoint.ports.contains(port) {
                return self.deny(
                    None,
                    format!(
                        "Denied: port {port} is not a port of {} (ports {})",
                        endpoint.name, endpoint.ports
                    ),
                    Vec::new(),
                    Vec::new(),
                );
            }
        }

        let keys = self.index.subject_keys(req);
        let candidates = self.index.candidates(position, &keys);
        let mut cx = Context::new(req);
        let mut allows: SmallVec<[u32; 8]> = SmallVec::new();
        let mut denies: SmallVec<[u32; 8]> = SmallVec::new();
        let mut reports: SmallVec<[(u32, u16, Outcome); 4]> = SmallVec::new();
        let mut near_miss: Option<(u32, usize, Outcome)> = None;
        // Edges: of every candidate; of candidates that can still change the outcome given
        // what decided it (computed below).
        let mut edges: SmallVec<[(u32, Option<i64>); 8]> = SmallVec::new();

        for &r in &candidates {
            let Some(rule) = self.rules.get(r as usize) else {
                continue;
            };
            let before = reports.len();
            let outcome = evaluate_rule(rule, &mut cx, |i, o| {
                reports.push((r, u16::try_from(i).unwrap_or(u16::MAX), o));
            });
            if outcome.edge.is_some() || !edges.is_empty() {
                edges.push((r, outcome.edge));
            }
            if outcome.matched {
                match rule.effect {
                    Effect::Allow => allows.push(r),
                    Effect::Deny => denies.push(r),
                }
            } else {
                reports.truncate(before);
                if rule.effect == Effect::Allow && near_miss.is_none() {
                    if let Some((i, o)) = outcome.failed {
                        near_miss = Some((r, i, o));
                    }
                }
            }
        }

        let (effect, decider) = match (denies.first(), allows.first()) {
            (Some(&d), _) => (Effect::Deny, Some(d)),
            (None, Some(&a)) => (Effect::Allow, Some(a)),
            (None, None) => (Effect::Deny, None),
        };
        let valid_until = self.valid_until(effect, decider, &edges);

        let ids = |list: &[u32]| -> Vec<String> {
            list.iter()
                .filter_map(|&r| self.rules.get(r as usize))
                .map(|rule| rule.id.clone())
                .collect()
        };
        let report_only = reports
            .iter()
            .filter_map(|&(r, i, o)| {
                let rule = self.rules.get(r as usize)?;
                let condition = rule.conditions.get(usize::from(i))?;
                Some(ReportOnly {
                    rule: rule.id.clone(),
                    condition: condition.check.name(),
                    reason: detail(&condition.check, o, &mut cx),
                })
            })
            .collect();

        let decider_rule = decider.and_then(|r| self.rules.get(r as usize));
        let (reason, limits) = match (effect, decider_rule) {
            (Effect::Allow, Some(rule)) => (
                rule.reason.clone(),
                Limits {
                    max_session: rule.limits.max_session,
                    idle_timeout: rule.limits.idle_timeout,
                    resume_grace: rule.limits.resume_grace,
                    require_justification: rule.limits.require_justification,
                    dicom: None,
                },
            ),
            (Effect::Deny, Some(rule)) => (rule.reason.clone(), Limits::default()),
            (_, None) => (
                self.default_deny_reason(req, position, &keys, near_miss, &mut cx),
                Limits::default(),
            ),
        };
        let mut limits = limits;
        if let (Effect::Allow, Some(rule), Some(endpoint)) =
            (effect, decider_rule, self.endpoints.get(position))
        {
            if endpoint.protocol == Protocol::Dicom {
                match self.dicom_grant(rule, endpoint, req) {
                    Ok(grant) => limits.dicom = Some(grant),
                    Err(why) => {
                        return self.deny(Some(rule.id.clone()), why, ids(&allows), ids(&denies))
                    }
                }
            }
        }
        Decision {
            effect,
            rule: decider_rule.map(|rule| rule.id.clone()),
            reason,
            limits,
            matched_allows: ids(&allows),
            matched_denies: ids(&denies),
            report_only,
            valid_until,
            policy_version: self.version.clone(),
        }
    }

    /// The DICOM grant of allow `rule` for `endpoint`, or why the user gets none: the rule
    /// accepts `{user.ae}` only and the user has no AE title.
    fn dicom_grant(
        &self,
        rule: &Rule,
        endpoint: &Endpoint,
        req: &Request<'_>,
    ) -> Result<DicomGrant, String> {
        let services = match &rule.dicom.services {
            Some(list) => list.iter().map(|s| (*s).to_owned()).collect(),
            None => crate::DEFAULT_DICOM_SERVICES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        let mut calling_ae: Vec<String> = Vec::new();
        for entry in rule.dicom.calling_ae.iter().flatten() {
            if entry == USER_AE {
                for t in self.ae_titles(req.user).iter().chain(req.ae_titles) {
                    if !calling_ae.contains(t) {
                        calling_ae.push(t.clone());
                    }
                }
            } else if !calling_ae.contains(entry) {
                calling_ae.push(entry.clone());
            }
        }
        if rule.dicom.calling_ae.is_some() && calling_ae.is_empty() {
            return Err(format!(
                "Denied: rule '{}' accepts the user's own AE titles ({USER_AE}) on {}, and user '{}' has none: give them one in the policy's [dicom] ae_titles or the identity provider's AE title claim",
                rule.id,
                endpoint.name,
                Quoted(req.user)
            ));
        }
        Ok(DicomGrant {
            calling_ae,
            called_ae: endpoint.called_ae.clone(),
            services,
        })
    }

    /// See [`Decision::valid_until`]. A deny by a rule that time cannot lift stays a deny; only
    /// an earlier deny starting to match could change its deciding rule. An allow can change
    /// when a deny or an earlier allow starts to match, or when the allow itself stops.
    fn valid_until(
        &self,
        effect: Effect,
        decider: Option<u32>,
        edges: &[(u32, Option<i64>)],
    ) -> Option<SystemTime> {
        let edge_of = |r: u32| edges.iter().find(|(e, _)| *e == r).and_then(|(_, e)| *e);
        let is_deny = |r: u32| {
            self.rules
                .get(r as usize)
                .is_some_and(|rule| rule.effect == Effect::Deny)
        };
        let edge = match (effect, decider) {
            (Effect::Deny, Some(d)) if edge_of(d).is_none() => edges
                .iter()
                .filter(|(r, _)| *r < d && is_deny(*r))
                .fold(None, |acc, (_, e)| min_edge(acc, *e)),
            (Effect::Allow, Some(a)) => edges
                .iter()
                .filter(|(r, _)| *r <= a || is_deny(*r))
                .fold(None, |acc, (_, e)| min_edge(acc, *e)),
            _ => edges.iter().fold(None, |acc, (_, e)| min_edge(acc, *e)),
        };
        edge.and_then(system_time)
    }

    fn default_deny_reason(
        &self,
        req: &Request<'_>,
        position: usize,
        keys: &[u32],
        near_miss: Option<(u32, usize, Outcome)>,
        cx: &mut Context<'_, '_>,
    ) -> String {
        if let Some((r, i, outcome)) = near_miss {
            if let (Some(rule), Some(endpoint)) =
                (self.rules.get(r as usize), self.endpoints.get(position))
            {
                if let Some(condition) = rule.conditions.get(i) {
                    if condition.check.is_web() {
                        let what = match req.mode {
                            Mode::WebRequest { method, path, .. } => {
                                format!("{} {} on", Quoted(method), Quoted(path))
                            }
                            _ => "access to".to_owned(),
                        };
                        return format!(
                            "Denied: {what} {} for {}: rule '{}' {}",
                            endpoint.name,
                            self.who(rule, keys, req),
                            rule.id,
                            web_text(&condition.check, outcome, req)
                        );
                    }
                    return format!(
                        "Denied: access to {} for {} {}",
                        endpoint.name,
                        self.who(rule, keys, req),
                        requirement(&condition.check, outcome, cx)
                    );
                }
            }
        }
        let groups = if req.groups.is_empty() {
            "none".to_owned()
        } else {
            bounded_list(req.groups.iter().map(String::as_str), REASON_GROUPS_MAX)
        };
        format!(
            "no rule allows user '{}' (groups: {groups}) to reach '{}'",
            Quoted(req.user),
            Quoted(req.endpoint)
        )
    }

    /// How a rule's subject matched the request, for reasons: a group name, the user, or
    /// everyone.
    fn who(&self, rule: &Rule, keys: &[u32], req: &Request<'_>) -> String {
        let group_count = self.groups.len();
        if let Some(group) = rule
            .subjects
            .groups
            .iter()
            .find(|&&g| keys.binary_search(&(1 + g)).is_ok())
            .and_then(|&g| self.groups.get(g as usize))
        {
            return group.name.clone();
        }
        if rule.subjects.users.iter().any(|&u| {
            let key = u32::try_from(group_count).unwrap_or(u32::MAX) + 1 + u;
            keys.binary_search(&key).is_ok()
        }) {
            return format!("user '{}'", Quoted(req.user));
        }
        "everyone".to_owned()
    }

    pub(crate) fn deny(
        &self,
        rule: Option<String>,
        reason: String,
        matched_allows: Vec<String>,
        matched_denies: Vec<String>,
    ) -> Decision {
        Decision {
            effect: Effect::Deny,
            rule,
            reason,
            limits: Limits::default(),
            matched_allows,
            matched_denies,
            report_only: Vec::new(),
            valid_until: None,
            policy_version: self.version.clone(),
        }
    }

    /// The decision with its full trace: every candidate rule and each of its conditions.
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        let decision = self.evaluate(req);
        let mut rules = Vec::new();
        let mut other_rules = self.rules.len();
        if let Some(position) = self.endpoint_position(req.endpoint) {
            let keys = self.index.subject_keys(req);
            let candidates = self.index.candidates(position, &keys);
            other_rules -= candidates.len();
            let mut cx = Context::new(req);
            for &r in &candidates {
                let Some(rule) = self.rules.get(r as usize) else {
                    continue;
                };
                let outcome = evaluate_rule(rule, &mut cx, |_, _| {});
                let conditions = rule
                    .conditions
                    .iter()
                    .map(|c| {
                        let (o, _) = check(&c.check, &mut cx);
                        ConditionTrace {
                            condition: c.check.name(),
                            outcome: o.as_str(),
                            detail: detail(&c.check, o, &mut cx),
                            report_only: c.report,
                        }
                    })
                    .collect();
                rules.push(RuleTrace {
                    rule: rule.id.clone(),
                    description: rule.description.clone(),
                    effect: rule.effect,
                    selects: rule.selector.to_string(),
                    location: format!(
                        "{}:{}",
                        self.origins.get(rule.file).map_or("?", String::as_str),
                        rule.line
                    ),
                    matched: outcome.matched,
                    conditions,
                });
            }
        }
        let access = match req.mode {
            Mode::Tunnel => "tunnel".to_owned(),
            Mode::WebSession => "web session".to_owned(),
            Mode::WebRequest { method, path, .. } => {
                format!("web request {} {}", Quoted(method), Quoted(path))
            }
        };
        Explanation {
            decision,
            access,
            rules,
            other_rules,
        }
    }
}

/// [`Policy::explain`]'s answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    /// The decision, exactly as [`Policy::evaluate`] returns it.
    pub decision: Decision,
    /// How the endpoint was used: `tunnel`, `web session`, or `web request GET /path`.
    pub access: String,
    /// Every rule that names the endpoint and the user (or one of their groups, or everyone),
    /// in file order.
    pub rules: Vec<RuleTrace>,
    /// How many other rules the policy has (they name other endpoints or other people).
    pub other_rules: usize,
}

/// One candidate rule in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleTrace {
    /// The rule's id.
    pub rule: String,
    /// The rule's description, if it has one.
    pub description: Option<String>,
    /// Allow or deny.
    pub effect: Effect,
    /// How the rule selects endpoints, as written.
    pub selects: String,
    /// `file:line` where the rule is written.
    pub location: String,
    /// Whether the rule matched (its enforced conditions allowed it to).
    pub matched: bool,
    /// Each condition, in evaluation order.
    pub conditions: Vec<ConditionTrace>,
}

/// One condition in a [`RuleTrace`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConditionTrace {
    /// The condition's name, as `report_only` writes it.
    pub condition: String,
    /// `met`, `not met` or `unknown` (the request lacks the fact).
    pub outcome: &'static str,
    /// What was compared, for people.
    pub detail: String,
    /// Whether the condition is only reported.
    pub report_only: bool,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "access:          {}", self.access)?;
        writeln!(f, "{}", self.decision)?;
        writeln!(f)?;
        if self.rules.is_empty() {
            writeln!(
                f,
                "trace: no rule names this endpoint for this user or their groups"
            )?;
        } else {
            writeln!(
                f,
                "trace (rules for this endpoint and user, in file order):"
            )?;
        }
        for rule in &self.rules {
            writeln!(
                f,
                "  {} {} {} ({}) — {}",
                if rule.matched { "matched" } else { "no match" },
                rule.effect,
                rule.rule,
                rule.location,
                rule.selects
            )?;
            if let Some(description) = &rule.description {
                writeln!(f, "      \"{description}\"")?;
            }
            if rule.conditions.is_empty() {
                writeln!(f, "      no conditions")?;
            }
            for c in &rule.conditions {
                writeln!(
                    f,
                    "      {:<24} {:<8} {}{}",
                    c.condition,
                    c.outcome,
                    c.detail,
                    if c.report_only { "  [report only]" } else { "" }
                )?;
            }
        }
        write!(
            f,
            "  ({} other rule{} name other endpoints or other people)",
            self.other_rules,
            if self.other_rules == 1 { "" } else { "s" }
        )
    }
}

fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn time_text(secs: i64) -> String {
    system_time(secs).map_or_else(
        || secs.to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// What a condition compared, for traces and report-only entries.
pub(crate) fn detail(check: &Check, outcome: Outcome, cx: &mut Context<'_, '_>) -> String {
    let req = cx.req;
    match (check, outcome) {
        (Check::Valid { from, until }, _) => {
            let range = match (from, until) {
                (Some((_, f)), Some((_, u))) => format!("valid from {f} until {u}"),
                (Some((_, f)), None) => format!("valid from {f}"),
                (None, Some((_, u))) => format!("valid until {u}"),
                (None, None) => "always valid".into(),
            };
            format!("{range}; now {}", time_text(cx.now))
        }
        (Check::Windows(schedule), o) => format!(
            "{} {}",
            if o == Outcome::Met {
                "inside"
            } else {
                "outside"
            },
            schedule.describe()
        ),
        (Check::Source { .. }, Outcome::Unknown) => "the request has no source address".into(),
        (Check::Source { allow, deny }, o) => {
            let ip = req.source.map(|ip| ip.to_string()).unwrap_or_default();
            if o == Outcome::Met {
                format!("source {ip} is allowed")
            } else if deny
                .iter()
                .any(|n| req.source.is_some_and(|s| n.contains(&s)))
            {
                format!("source {ip} is in a denied network")
            } else {
                format!(
                    "source {ip} is not in {}",
                    bounded_list(
                        allow
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                        5
                    )
                )
            }
        }
        (Check::Mfa(_), Outcome::Unknown) => "the request says nothing about the sign-in".into(),
        (Check::Mfa(want), _) => {
            let used = req.auth.is_some_and(|a| a.mfa);
            format!(
                "sign-in {} multi-factor authentication (required: {})",
                if used { "used" } else { "did not use" },
                if *want { "yes" } else { "no" }
            )
        }
        (Check::MaxAge(max), Outcome::Unknown) => {
            format!(
                "sign-in time unknown (at most {} ago required)",
                duration_text(*max)
            )
        }
        (Check::MaxAge(max), _) => {
            let signed_in = req.auth.and_then(|a| a.auth_time).map_or(0, unix_seconds);
            let age = u64::try_from(cx.now.saturating_sub(signed_in)).unwrap_or(0);
            format!(
                "signed in {} ago (at most {})",
                duration_text(Duration::from_secs(age)),
                duration_text(*max)
            )
        }
        (Check::Registered(_) | Check::Approved(_) | Check::UserVerified(_), Outcome::Unknown) => {
            "the request carries no device facts".into()
        }
        (Check::Registered(want), _) => device_text(
            "registered",
            *want,
            req.device.is_some_and(|d| d.registered),
        ),
        (Check::Approved(want), _) => {
            device_text("approved", *want, req.device.is_some_and(|d| d.approved))
        }
        (Check::UserVerified(want), _) => device_text(
            "user-verified",
            *want,
            req.device.is_some_and(|d| d.user_verified),
        ),
        (Check::Posture { key, values }, Outcome::Unknown) => format!(
            "device posture '{key}' is not reported (accepted: {})",
            values.join(", ")
        ),
        (Check::Posture { key, values }, _) => {
            let value = req
                .device
                .and_then(|d| d.posture.get(key.as_str()))
                .map(String::as_str)
                .unwrap_or_default();
            format!(
                "device posture '{key}' is '{}' (accepted: {})",
                Quoted(value),
                values.join(", ")
            )
        }
        (Check::Justification, Outcome::Met) => "a justification was given".into(),
        (Check::Justification, _) => "no justification was given".into(),
        (Check::Methods { .. } | Check::Paths { .. }, _) => web_text(check, outcome, req),
    }
}

/// The prefixes of a `paths` condition, for messages.
fn prefix_list(prefixes: &[Box<str>]) -> String {
    let mut list: Vec<&str> = Vec::with_capacity(prefixes.len());
    list.extend(prefixes.iter().map(|p| &**p));
    bounded_list(list.into_iter(), 5)
}

/// What a `methods` or `paths` condition found, for traces and reasons: "allows GET, HEAD
/// only, not POST", "applies to web requests only (methods/paths), not to a tunnel".
fn web_text(check: &Check, outcome: Outcome, req: &Request<'_>) -> String {
    let (deny, what) = match check {
        Check::Methods { methods, deny } => (*deny, methods.to_string()),
        Check::Paths { prefixes, deny } => (*deny, format!("paths {}", prefix_list(prefixes))),
        _ => return String::new(),
    };
    let verb = if deny { "denies" } else { "allows" };
    match req.mode {
        Mode::Tunnel if deny => format!(
            "{verb} {what} only, but a tunnel could send any request: the rule applies to the tunnel"
        ),
        Mode::Tunnel => {
            "applies to web requests only (methods/paths), not to a tunnel".to_owned()
        }
        Mode::WebSession if deny => format!(
            "{verb} {what} only: checked on each web request, not on the session"
        ),
        Mode::WebSession => format!(
            "{verb} {what} only: the session may start, and each web request is checked"
        ),
        Mode::WebRequest { method, path, .. } => {
            let (shown, kind) = match check {
                Check::Methods { .. } => (method, "method"),
                _ => (path, "path"),
            };
            match outcome {
                Outcome::Met => format!("{verb} {what}, including {}", Quoted(shown)),
                Outcome::NotMet => format!("{verb} {what} only, not {}", Quoted(shown)),
                Outcome::Unknown if kind == "method" => format!(
                    "{verb} {what} only, and '{}' is not an upper-case method name",
                    Quoted(shown)
                ),
                Outcome::Unknown => format!(
                    "{verb} {what} only, and the path '{}' {}, so it cannot be compared",
                    Quoted(shown),
                    crate::rule::path_problem(shown).unwrap_or("is not in normal form")
                ),
            }
        }
    }
}

fn device_text(what: &str, want: bool, actual: bool) -> String {
    format!(
        "the device is {}{what} (required: {})",
        if actual { "" } else { "not " },
        if want {
            what.to_owned()
        } else {
            format!("not {what}")
        }
    )
}

/// The end of a default-deny sentence: what the nearest allow rule requires.
fn requirement(check: &Check, outcome: Outcome, cx: &mut Context<'_, '_>) -> String {
    let req = cx.req;
    let unknown = outcome == Outcome::Unknown;
    match check {
        Check::Valid { from, until } => match (from, until) {
            (Some((_, f)), Some((_, u))) => format!("is valid only from {f} until {u}"),
            (Some((_, f)), None) => format!("is valid only from {f}"),
            (None, Some((_, u))) => format!("ended at {u}"),
            (None, None) => "is not valid".into(),
        },
        Check::Windows(schedule) => format!("is only {}", schedule.describe()),
        Check::Source { .. } if unknown => "needs the client's address, which is unknown".into(),
        Check::Source { .. } => format!(
            "is not allowed from {}",
            req.source.map(|s| s.to_string()).unwrap_or_default()
        ),
        Check::Mfa(true) => "requires multi-factor sign-in".into(),
        Check::Mfa(false) => "is only for sign-ins without multi-factor authentication".into(),
        Check::MaxAge(max) if unknown => format!(
            "requires a sign-in within the last {}; the sign-in time is unknown",
            duration_text(*max)
        ),
        Check::MaxAge(max) => {
            let signed_in = req.auth.and_then(|a| a.auth_time).map_or(0, unix_seconds);
            let age = u64::try_from(cx.now.saturating_sub(signed_in)).unwrap_or(0);
            format!(
                "requires a sign-in within the last {}; the last was {} ago",
                duration_text(*max),
                duration_text(Duration::from_secs(age))
            )
        }
        Check::Registered(want) => device_requirement("registered", *want, unknown),
        Check::Approved(want) => device_requirement("approved", *want, unknown),
        Check::UserVerified(want) => device_requirement("user-verified", *want, unknown),
        Check::Posture { key, values } => format!(
            "requires device posture '{key}' to be {}{}",
            values.join(" or "),
            if unknown {
                "; the device did not report it"
            } else {
                ""
            }
        ),
        Check::Justification => "requires a justification (break-glass access)".into(),
        Check::Methods { .. } | Check::Paths { .. } => web_text(check, outcome, req),
    }
}

fn device_requirement(what: &str, want: bool, unknown: bool) -> String {
    let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    match (want, unknown) {
        (true, true) => format!("requires {article} {what} device; the device is unknown"),
        (true, false) => format!("requires {article} {what} device; this device is not {what}"),
        (false, true) => format!("is only for devices that are not {what}; the device is unknown"),
        (false, false) => format!("is only for devices that are not {what}"),
    }
}
