//! Stage 2: raw structs → resolved runtime types, checking every value and every cross-reference
//! and recording each problem with its position and a hint. Also the policy-wide checks that
//! need everything resolved: unreachable and shadowed rules, selections that match nothing.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use toml::value::Datetime;
use toml::Spanned;

use crate::cases::TestCase;
use crate::error::{Diagnostics, ErrorKind, SourceFile};
use crate::eval::DeviceFacts;
use crate::model::{Effect, Egress, Endpoint, PortRange, Protocol, RequestAudit};
use crate::raw::{
    Located, RawDefaults, RawDicom, RawDocument, RawEndpoint, RawGroup, RawRule, RawTest,
    StringOrList,
};
use crate::rule::{
    glob_match, path_problem, Check, Condition, Group, MethodSet, Rule, RuleDicom, RuleLimits,
    Selection, Selector, Subjects, MAX_PATHS, MAX_PATH_BYTES, METHODS, USER_AE,
};
use crate::schedule::{Schedule, Window, Zone};
use crate::text::{bounded_list, suggest, Quoted};
use crate::{
    DEFAULT_MAX_SESSION, DEFAULT_RESUME_GRACE, DICOM_SERVICES, MAX_INDEX_ENTRIES, MAX_PATTERNS,
    MAX_STRING_BYTES,
};

/// Longest AE title (PS3.5: 16 characters).
const MAX_AE: usize = 16;
/// Most AE titles `[dicom] ae_titles` gives one user.
const MAX_USER_AE_TITLES: usize = 32;

/// Longest `upstream_host`, in bytes (a DNS name, a colon and a port).
const MAX_UPSTREAM_HOST_BYTES: usize = 253 + 6;

/// How many names a "defined endpoints: …" hint lists.
const HINT_LIST_MAX: usize = 10;

/// "Did you mean" searches are cheap but not free on a 10,000-endpoint policy; after this many
/// unknown references, hints fall back to listing names.
const SUGGESTION_BUDGET: usize = 100;

/// Subset comparisons the shadowing check may make before giving up (with a warning): the check
/// is quadratic in the worst case.
const SHADOW_BUDGET: usize = 2_000_000;

const NAME_HINT: &str =
    "use lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters";

/// Settings from `[defaults]`.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub(crate) max_session: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) resume_grace: Duration,
    pub(crate) zone: Option<Arc<Zone>>,
}

/// The checked content of a policy. Complete only if no error was recorded.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) defaults: Defaults,
    pub(crate) groups: Vec<Group>,
    pub(crate) endpoints: Vec<Endpoint>,
    /// ASCII-lowercased user names that groups or rules name; a user's id is its position.
    pub(crate) users: Vec<String>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) tests: Vec<TestCase>,
    /// `[dicom] ae_titles`: ASCII-lowercased user → AE titles.
    pub(crate) ae_titles: HashMap<String, Vec<String>>,
}

/// Checks everything in `raw`, recording problems in `diags`.
pub(crate) fn resolve(
    raw: &RawDocument,
    diags: &mut Diagnostics,
    files: &[SourceFile<'_>],
) -> Resolved {
    let mut r = Resolver {
        diags,
        files,
        suggestion_budget: SUGGESTION_BUDGET,
        zones: HashMap::new(),
        users: Vec::new(),
        user_ids: HashMap::new(),
    };

    let defaults = r.defaults(&raw.defaults);
    let ae_titles = r.ae_titles(&raw.dicom);

    // Groups.
    let mut groups = Vec::new();
    let mut group_ids: HashMap<String, u32> = HashMap::new();
    let mut group_seen = HashMap::new();
    for located in &raw.groups {
        r.diags.set_file(located.file);
        if let Some(group) = r.group(located, &mut group_seen) {
            if !group_ids.contains_key(&group.name) {
                group_ids.insert(group.name.clone(), index_u32(groups.len()));
                groups.push(group);
            }
        }
    }
    let implicit_groups = raw.groups.is_empty() && raw.undecoded_group_names.is_empty();
    let mut declared_groups = Declared::new(
        raw.groups
            .iter()
            .filter_map(|g| g.value.name.as_ref().map(|n| n.get_ref().as_str())),
        &raw.undecoded_group_names,
        "groups",
    );
    if implicit_groups {
        declared_groups.list_hint = "the policy defines no groups".into();
    }

    // Endpoints.
    let declared = Declared::new(
        raw.endpoints
            .iter()
            .filter_map(|e| e.value.name.as_ref().map(|n| n.get_ref().as_str())),
        &raw.undecoded_endpoint_names,
        "endpoints",
    );
    let mut endpoints = Vec::new();
    let mut endpoint_names = HashMap::new();
    let mut local_ports = HashMap::new();
    for located in &raw.endpoints {
        r.diags.set_file(located.file);
        if let Some(endpoint) = r.endpoint(located, &mut endpoint_names, &mut local_ports) {
            endpoints.push(endpoint);
        }
    }
    let catalogue = Catalogue::new(&endpoints);

    // Rules.
    let mut rules = Vec::new();
    let mut rule_seen = HashMap::new();
    let mut patterns_seen = HashSet::new();
    let mut index_entries: u64 = 0;
    let mut used_groups = vec![false; groups.len()];
    for located in &raw.rules {
        r.diags.set_file(located.file);
        let context = RuleContext {
            declared: &declared,
            declared_groups: &declared_groups,
            catalogue: &catalogue,
            defaults: &defaults,
            implicit_groups,
        };
        let rule = r.rule(
            located,
            &mut rule_seen,
            &context,
            &mut groups,
            &mut group_ids,
            &mut patterns_seen,
        );
        if let Some(rule) = rule {
            for &g in &rule.subjects.groups {
                if let Some(used) = used_groups.get_mut(g as usize) {
                    *used = true;
                }
            }
            let subjects = rule.subjects.groups.len()
                + rule.subjects.users.len()
                + usize::from(rule.subjects.everyone);
            let targets = match &rule.selection {
                Selection::All => 1,
                Selection::Some(list) => list.len(),
            };
            index_entries = index_entries.saturating_add((subjects as u64) * (targets as u64));
            if index_entries > MAX_INDEX_ENTRIES as u64 {
                r.diags.push(
                    ErrorKind::LimitExceeded,
                    located.at,
                    format!(
                        "the rules up to {} select too many (endpoint, group or user) combinations: more than {MAX_INDEX_ENTRIES}",
                        rule.id
                    ),
                    Some("select endpoints by label or egress class in fewer rules, or use groups instead of long user lists".into()),
                );
                break;
            }
            rules.push(rule);
        }
    }

    // Warnings about groups no rule uses.
    for (group, used) in groups.iter().zip(&used_groups) {
        if !used && !group.implicit {
            if let Some(located) = raw.groups.iter().find(|g| {
                g.value
                    .name
                    .as_ref()
                    .is_some_and(|n| n.get_ref() == &group.name)
            }) {
                r.diags.set_file(located.file);
                r.diags.warn(
                    ErrorKind::MatchesNothing,
                    located.at,
                    format!("group '{}' is not used by any rule", group.name),
                    Some("remove it, or name it in a rule's `groups`".into()),
                );
            }
        }
    }

    // Inline tests.
    let rule_ids: HashSet<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    let all_rule_ids: HashSet<&str> = raw
        .rules
        .iter()
        .filter_map(|r| r.value.id.as_ref().map(|id| id.get_ref().as_str()))
        .chain(raw.undecoded_rule_ids.iter().map(String::as_str))
        .collect();
    let mut tests = Vec::new();
    let mut test_seen = HashMap::new();
    for located in &raw.tests {
        r.diags.set_file(located.file);
        if let Some(test) = r.test(located, &mut test_seen, &defaults, &rule_ids, &all_rule_ids) {
            tests.push(test);
        }
    }

    if r.diags.is_empty() {
        empty_policy(raw, &mut r);
    }
    if r.diags.is_empty() {
        shadowing(&rules, &mut r);
    }

    Resolved {
        defaults,
        groups,
        endpoints,
        users: r.users,
        rules,
        tests,
        ae_titles,
    }
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Names written in a section, for checking references to them.
struct Declared<'r> {
    /// Every name written, valid or not: a reference to one of these is not also reported as
    /// unknown (the definition's own problem was).
    names: HashSet<&'r str>,
    /// The same names in file order without repeats, for "did you mean".
    in_order: Vec<&'r str>,
    /// The hint for an unknown reference when no name is close, built once.
    list_hint: String,
}

impl<'r> Declared<'r> {
    fn new(written: impl Iterator<Item = &'r str>, undecoded: &'r [String], what: &str) -> Self {
        let mut names = HashSet::new();
        let mut in_order = Vec::new();
        for name in written {
            if names.insert(name) {
                in_order.push(name);
            }
        }
        names.extend(undecoded.iter().map(String::as_str));
        let list_hint = if in_order.is_empty() {
            format!("the policy defines no {what}")
        } else {
            format!(
                "defined {what}: {}",
                bounded_list(in_order.iter().copied(), HINT_LIST_MAX)
            )
        };
        Declared {
            names,
            in_order,
            list_hint,
        }
    }

    /// "did you mean" for a close name while `budget` lasts, else the list of names.
    fn hint_for(&self, unknown: &str, budget: &mut usize) -> String {
        if *budget > 0 {
            *budget -= 1;
            if let Some(close) = suggest(unknown, self.in_order.iter().copied()) {
                return format!("did you mean '{close}'?");
            }
        }
        self.list_hint.clone()
    }
}

/// Endpoints by name, label and egress class, for resolving rule selections.
struct Catalogue<'e> {
    endpoints: &'e [Endpoint],
    by_name: HashMap<&'e str, u32>,
    by_label: HashMap<&'e str, Vec<u32>>,
}

impl<'e> Catalogue<'e> {
    fn new(endpoints: &'e [Endpoint]) -> Self {
        let mut by_name = HashMap::new();
        let mut by_label: HashMap<&str, Vec<u32>> = HashMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            by_name.insert(e.name.as_str(), index_u32(i));
            for label in &e.labels {
                by_label
                    .entry(label.as_str())
                    .or_default()
                    .push(index_u32(i));
            }
        }
        Catalogue {
            endpoints,
            by_name,
            by_label,
        }
    }
}

struct RuleContext<'c, 'r> {
    declared: &'c Declared<'r>,
    declared_groups: &'c Declared<'r>,
    catalogue: &'c Catalogue<'c>,
    defaults: &'c Defaults,
    implicit_groups: bool,
}

struct Resolver<'d, 's> {
    diags: &'d mut Diagnostics,
    files: &'s [SourceFile<'s>],
    suggestion_budget: usize,
    /// Zone lookups by name: the zone, or the hint for an unknown name.
    zones: HashMap<String, Result<Arc<Zone>, String>>,
    users: Vec<String>,
    user_ids: HashMap<String, u32>,
}

impl Resolver<'_, '_> {
    fn defaults(&mut self, all: &[Located<RawDefaults>]) -> Defaults {
        let mut defaults = Defaults {
            max_session: DEFAULT_MAX_SESSION,
            idle_timeout: None,
            resume_grace: DEFAULT_RESUME_GRACE,
            zone: None,
        };
        let Some(first) = all.first() else {
            return defaults;
        };
        for extra in all.iter().skip(1) {
            self.diags.set_file(extra.file);
            let hint = format!("first written at {}", self.place(first.file, first.at));
            self.diags.push(
                ErrorKind::DuplicateDefaults,
                extra.at,
                "`[defaults]` may be written only once in a policy",
                Some(hint),
            );
        }
        self.diags.set_file(first.file);
        let raw = &first.value;
        if let Some(value) = &raw.max_session {
            if let Some(d) = self.duration(value, "`max_session` in [defaults]") {
                defaults.max_session = d;
            }
        }
        if let Some(value) = &raw.idle_timeout {
            defaults.idle_timeout = self.duration(value, "`idle_timeout` in [defaults]");
        }
        if let Some(value) = &raw.resume_grace {
            if let Some(d) = self.duration_or_zero(value, "`resume_grace` in [defaults]") {
                defaults.resume_grace = d;
            }
        }
        if let Some(value) = &raw.zone {
            defaults.zone = self.zone(value, "[defaults]");
        }
        defaults
    }

    /// `file:line` of an offset, for hints that point elsewhere.
    fn place(&self, file: usize, offset: usize) -> String {
        match self.files.get(file) {
            Some(f) => format!("{}:{}", f.origin, f.map.line(offset)),
            None => "?".into(),
        }
    }

    fn line_of(&self, file: usize, offset: usize) -> usize {
        self.files.get(file).map_or(1, |f| f.map.line(offset))
    }

    fn user_id(&mut self, user: &str) -> u32 {
        let key = user.to_ascii_lowercase();
        if let Some(&id) = self.user_ids.get(&key) {
            return id;
        }
        let id = index_u32(self.users.len());
        self.users.push(key.clone());
        self.user_ids.insert(key, id);
        id
    }

    fn zone(&mut self, value: &Spanned<String>, label: &str) -> Option<Arc<Zone>> {
        let name = self.text(value, "zone", label)?;
        let found = self
            .zones
            .entry(name.to_owned())
            .or_insert_with(|| Zone::lookup(name).map(Arc::new))
            .clone();
        match found {
            Ok(zone) => Some(zone),
            Err(hint) => {
                self.diags.push(
                    ErrorKind::UnknownZone,
                    value.span().start,
                    format!("unknown time zone '{}' in {label}", Quoted(name)),
                    Some(hint),
                );
                None
            }
        }
    }

    fn group(
        &mut self,
        located: &Located<RawGroup>,
        seen: &mut HashMap<String, (usize, usize)>,
    ) -> Option<Group> {
        let raw = &located.value;
        let fallback_label = format!("group #{}", located.ordinal);
        let name = self
            .required(
                &raw.name,
                "name",
                &fallback_label,
                located,
                "name = \"consultants\"",
            )
            .and_then(|name| self.name(name, "group name", &fallback_label));
        let label = name.map_or(fallback_label, |name| format!("group '{name}'"));
        if let (Some(name), Some(spanned)) = (name, &raw.name) {
            self.unique(
                seen,
                name,
                (located.file, spanned.span().start),
                ErrorKind::DuplicateGroup,
                "group name",
            );
        }
        let claim = match &raw.claim {
            Some(claim) => match self.text(claim, "claim", &label) {
                Some("") => {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        claim.span().start,
                        format!("claim of {label} is empty"),
                        Some("name the IdP claim, such as \"groups\" or \"roles\"".into()),
                    );
                    None
                }
                other => other,
            },
            None => Some("groups"),
        };
        let values = self.strings(raw.values.as_deref(), "claim value", &label);
        let users = self.strings(raw.users.as_deref(), "user", &label);
        let description = raw
            .description
            .as_ref()
            .map(|d| self.text(d, "description", &label));
        let (name, claim, values, users) = (name?, claim?, values?, users?);
        if let Some(None) = description {
            return None;
        }
        if values.is_empty()
            && users.is_empty()
            && !located.is_invalid("values")
            && !located.is_invalid("users")
        {
            self.diags.push(
                ErrorKind::NoSubjects,
                located.at,
                format!("{label} lists neither `values` nor `users`, so nobody is in it"),
                Some(
                    "add `values = [\"…\"]` (values of the IdP claim) or `users = [\"…\"]`".into(),
                ),
            );
            return None;
        }
        let users: Vec<String> = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        for user in &users {
            self.user_id(user);
        }
        Some(Group {
            name: name.to_owned(),
            claim: claim.to_owned(),
            values,
            users,
            implicit: false,
        })
    }

    fn endpoint(
        &mut self,
        located: &Located<RawEndpoint>,
        names: &mut HashMap<String, (usize, usize)>,
        local_ports: &mut HashMap<String, (usize, usize)>,
    ) -> Option<Endpoint> {
        let raw = &located.value;
        let fallback_label = format!("endpoint #{}", located.ordinal);

        let name = self
            .required(
                &raw.name,
                "name",
                &fallback_label,
                located,
                "name = \"truro-pacs-dicom\"",
            )
            .and_then(|name| self.name(name, "endpoint name", &fallback_label));
        let label = name.map_or(fallback_label, |name| format!("endpoint '{name}'"));
        if let (Some(name), Some(spanned)) = (name, &raw.name) {
            self.unique(
                names,
                name,
                (located.file, spanned.span().start),
                ErrorKind::DuplicateEndpoint,
                "endpoint name",
            );
        }

        let site = self
            .required(&raw.site, "site", &label, located, "site = \"truro\"")
            .and_then(|site| self.name(site, "site name", &label));
        let host = self
            .required(&raw.host, "host", &label, located, "host = \"10.1.2.3\"")
            .and_then(|host| self.host(host, &label));
        let ports = match (&raw.port, &raw.ports) {
            (Some(port), None) => self
                .port(port, &label)
                .map(|p| PortRange { first: p, last: p }),
            (None, Some(ports)) => self.port_range(ports, &label),
            (Some(_), Some(ports)) => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    ports.span().start,
                    format!("{label} has both `port` and `ports`"),
                    Some("give one port with `port = 104`, or a range with `ports = \"11112-11120\"`".into()),
                );
                None
            }
            (None, None) => {
                if !located.is_invalid("port") && !located.is_invalid("ports") {
                    self.diags.push(
                        ErrorKind::MissingField,
                        located.at,
                        format!("{label} is missing required key `port`"),
                        Some("add a line such as `port = 104` (or `ports = \"11112-11120\"` for a range)".into()),
                    );
                }
                None
            }
        };
        let protocol = self
            .required(
                &raw.protocol,
                "protocol",
                &label,
                located,
                "protocol = \"dicom\"",
            )
            .and_then(|protocol| self.protocol(protocol, &label));
        let egress = match &raw.egress {
            Some(value) => self.egress(value, &label),
            None => Some(Egress::Data),
        };
        let labels = self.label_list(raw.labels.as_deref(), &label);
        let description = raw
            .description
            .as_ref()
            .map(|d| self.text(d, "description", &label));
        let local_port = match &raw.local_port {
            Some(p) => {
                let port = self.port(p, &label);
                if let Some(port) = port {
                    self.unique(
                        local_ports,
                        &port.to_string(),
                        (located.file, p.span().start),
                        ErrorKind::DuplicateLocalPort,
                        "local_port",
                    );
                }
                Some(port?)
            }
            None => None,
        };

        let web = self.web_keys(raw, protocol, &label);
        let called_ae = match &raw.called_ae {
            Some(value) => {
                let dicom = protocol.is_none_or(|p| p == Protocol::Dicom);
                if !dicom {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        value.span().start,
                        format!("`called_ae` of {label} is only for DICOM endpoints (protocol \"dicom\")"),
                        Some("remove `called_ae`, or give the endpoint protocol \"dicom\"".into()),
                    );
                }
                let title = self.ae_title(value, "called_ae", &label, false);
                title.filter(|_| dicom).map(|t| Some(t.to_owned()))
            }
            None => Some(None),
        };

        let ports = ports?;
        let (tls_verify, upstream_host, request_audit) = web?;
        let called_ae = called_ae?;
        Some(Endpoint {
            name: name?.to_owned(),
            site: site?.to_owned(),
            host: host?.to_owned(),
            port: ports.first,
            ports,
            protocol: protocol?,
            egress: egress?,
            labels: labels?,
            description: match description {
                Some(d) => Some(d?.to_owned()),
                None => None,
            },
            local_port,
            tls_verify,
            upstream_host,
            request_audit,
            called_ae,
        })
    }

    /// `[dicom] ae_titles` of every file: user → titles (each a plain AE title).
    fn ae_titles(&mut self, all: &[Located<RawDicom>]) -> HashMap<String, Vec<String>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for located in all {
            self.diags.set_file(located.file);
            for (user, titles) in located.value.ae_titles.iter().flatten() {
                let label = format!("user '{}' in [dicom] ae_titles", Quoted(user));
                if user.trim().is_empty() || user.len() > MAX_STRING_BYTES {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        located.at,
                        format!("{label} is not a user name"),
                        Some("write the user as the identity provider names them, e.g. \"ann.jones@nhs.example\"".into()),
                    );
                    continue;
                }
                if titles.len() > MAX_USER_AE_TITLES {
                    self.diags.push(
                        ErrorKind::LimitExceeded,
                        located.at,
                        format!(
                            "{label} has {} AE titles; the limit is {MAX_USER_AE_TITLES}",
                            titles.len()
                        ),
                        None,
                    );
                    continue;
                }
                let entry = map.entry(user.to_ascii_lowercase()).or_default();
                for title in titles {
                    if let Some(t) = self.ae_title(title, "ae_titles", &label, false) {
                        if !entry.iter().any(|x| x == t) {
                            entry.push(t.to_owned());
                        }
                    }
                }
            }
        }
        map
    }

    /// An AE title (or, with `pattern`, a prefix ending in `*`): 1 to 16 characters of
    /// printable ASCII without `\\` (PS3.5's AE value representation), not only spaces.
    fn ae_title<'v>(
        &mut self,
        value: &'v Spanned<String>,
        key: &str,
        label: &str,
        pattern: bool,
    ) -> Option<&'v str> {
        let text = value.get_ref().as_str();
        let body = if pattern {
            text.strip_suffix('*').unwrap_or(text)
        } else {
            text
        };
        let problem = if body.chars().count() > MAX_AE {
            Some(format!("is longer than {} characters", MAX_AE))
        } else if body.trim().is_empty() && !(pattern && text.ends_with('*')) {
            Some("is empty".to_owned())
        } else if body
            .chars()
            .any(|c| !(c.is_ascii_graphic() || c == ' ') || c == '\\' || c == '*')
        {
            Some(if pattern {
                "may hold printable ASCII except `\\`, with `*` only at the end".to_owned()
            } else {
                "may hold printable ASCII except `\\` and `*`".to_owned()
            })
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!(
                        "AE title '{}' in `{key}` of {label} {problem}",
                        Quoted(text)
                    ),
                    Some(
                        "an AE title is 1 to 16 characters, e.g. \"ORTHANC\" or \"RAD_JONES\""
                            .into(),
                    ),
                );
                None
            }
            None => Some(text),
        }
    }

    /// A rule's `dicom_services` and `calling_ae`, or `None` after recording what is wrong.
    fn rule_dicom(&mut self, raw: &RawRule, is_deny: bool, label: &str) -> Option<RuleDicom> {
        let mut ok = true;
        let mut dicom = RuleDicom::default();
        if let Some(list) = &raw.dicom_services {
            if is_deny {
                self.limit_on_deny(list.span().start, "dicom_services", label);
                ok = false;
            }
            let mut services: Vec<&'static str> = Vec::new();
            for entry in list.get_ref() {
                match DICOM_SERVICES.iter().find(|s| **s == entry.get_ref()) {
                    Some(s) => {
                        if !services.contains(s) {
                            services.push(s);
                        }
                    }
                    None => {
                        self.diags.push(
                            ErrorKind::InvalidValue,
                            entry.span().start,
                            format!(
                                "unknown DICOM service '{}' in `dicom_services` of {label}",
                                Quoted(entry.get_ref())
                            ),
                            Some(format!(
                                "`dicom_services` accepts {}",
                                DICOM_SERVICES.join(", ")
                            )),
                        );
                        ok = false;
                    }
                }
            }
            services.sort_by_key(|s| DICOM_SERVICES.iter().position(|x| x == s));
            dicom.services = Some(services);
        }
        if let Some(list) = &raw.calling_ae {
            if is_deny {
                self.limit_on_deny(list.span().start, "calling_ae", label);
                ok = false;
            }
            if list.get_ref().is_empty() {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    list.span().start,
                    format!("`calling_ae` of {label} is empty, so no association would be accepted"),
                    Some(format!("list AE titles such as [\"{USER_AE}\", \"RAD_*\"], or remove `calling_ae` to accept any")),
                );
                ok = false;
            }
            let mut titles = Vec::new();
            for entry in list.get_ref() {
                if entry.get_ref() == USER_AE {
                    titles.push(USER_AE.to_owned());
                } else if let Some(t) = self.ae_title(entry, "calling_ae", label, true) {
                    titles.push(t.to_owned());
                } else {
                    ok = false;
                }
            }
            dicom.calling_ae = Some(titles);
        }
        ok.then_some(dicom)
    }

    /// The web endpoint keys (`tls_verify`, `upstream_host`, `request_audit`): checked, and
    /// refused on endpoints that are not web applications. Defaults when absent. `protocol` is
    /// `None` when it was missing or invalid (already reported): then the keys are only checked
    /// on their own.
    fn web_keys(
        &mut self,
        raw: &RawEndpoint,
        protocol: Option<Protocol>,
        label: &str,
    ) -> Option<(bool, Option<String>, RequestAudit)> {
        let mut ok = true;
        let applies = |r: &mut Self, key: &str, at: usize, https_only: bool| -> bool {
            let Some(protocol) = protocol else {
                return true;
            };
            let problem = if !protocol.is_web() {
                Some((
                    format!(
                        "`{key}` of {label} is only for web endpoints (protocol \"http\" or \"https\"), and this endpoint's protocol is \"{protocol}\""
                    ),
                    format!("remove `{key}`, or give the endpoint protocol \"http\" or \"https\" if it is a web application"),
                ))
            } else if https_only && protocol == Protocol::Http {
                Some((
                    format!(
                        "`{key}` of {label} is only for protocol \"https\": with \"http\" the connector does not use TLS to the upstream, so there is no certificate to verify"
                    ),
                    format!("remove `{key}`, or use protocol \"https\" if the upstream speaks TLS"),
                ))
            } else {
                None
            };
            match problem {
                Some((message, hint)) => {
                    r.diags
                        .push(ErrorKind::InvalidValue, at, message, Some(hint));
                    false
                }
                None => true,
            }
        };
        let tls_verify = match &raw.tls_verify {
            Some(value) => {
                ok &= applies(self, "tls_verify", value.span().start, true);
                *value.get_ref()
            }
            None => true,
        };
        let upstream_host = match &raw.upstream_host {
            Some(value) => {
                ok &= applies(self, "upstream_host", value.span().start, false);
                match self.upstream_host(value, label) {
                    Some(host) => Some(host.to_owned()),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let request_audit = match &raw.request_audit {
            Some(value) => {
                ok &= applies(self, "request_audit", value.span().start, false);
                match value.get_ref().parse::<RequestAudit>() {
                    Ok(audit) => audit,
                    Err(_) => {
                        self.diags.push(
                            ErrorKind::InvalidValue,
                            value.span().start,
                            format!(
                                "request_audit '{}' of {label} is not \"all\", \"off\" or \"1/N\"",
                                Quoted(value.get_ref())
                            ),
                            Some(format!(
                                "write \"all\" (an audit event for every request, the default), \"off\" (none), or \"1/N\" for one request in N, with N from 2 to {}",
                                RequestAudit::MAX_SAMPLE
                            )),
                        );
                        ok = false;
                        RequestAudit::All
                    }
                }
            }
            None => RequestAudit::All,
        };
        ok.then_some((tls_verify, upstream_host, request_audit))
    }

    /// `upstream_host`: a DNS name, an IPv4 address or a bracketed IPv6 address, with an
    /// optional port; at most [`MAX_UPSTREAM_HOST_BYTES`].
    fn upstream_host<'v>(&mut self, value: &'v Spanned<String>, label: &str) -> Option<&'v str> {
        let text = self.text(value, "upstream_host", label)?;
        let problem = if text.len() > MAX_UPSTREAM_HOST_BYTES {
            Some(format!(
                "is {} bytes long (the limit is {MAX_UPSTREAM_HOST_BYTES})",
                text.len()
            ))
        } else if !is_valid_host_header(text) {
            Some("is not a host name or address with an optional port".to_owned())
        } else {
            None
        };
        match problem {
            None => Some(text),
            Some(problem) => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("upstream_host '{}' of {label} {problem}", Quoted(text)),
                    Some("write the Host header the application expects, such as \"orthanc.truro.nhs.uk\", \"pacs.local:8443\" or \"[fd00::5]:8042\" (no scheme, no path)".into()),
                );
                None
            }
        }
    }

    fn port_range(&mut self, value: &Spanned<String>, label: &str) -> Option<PortRange> {
        let text = value.get_ref().trim();
        let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|&p| p != 0);
        let range = match text.split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)),
            None => parse(text).map(|p| (p, p)),
        };
        match range {
            Some((first, last)) if first <= last => Some(PortRange { first, last }),
            _ => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("ports '{}' of {label} is not a port range", Quoted(text)),
                    Some(
                        "write FIRST-LAST with ports between 1 and 65535, such as \"11112-11120\""
                            .into(),
                    ),
                );
                None
            }
        }
    }

    fn egress(&mut self, value: &Spanned<String>, label: &str) -> Option<Egress> {
        match value.get_ref().as_str() {
            "display" => Some(Egress::Display),
            "data" => Some(Egress::Data),
            other => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("{label} has unknown egress class '{}'", Quoted(other)),
                    Some("egress is \"display\" (pixels only, e.g. RDP) or \"data\" (data reaches the client, e.g. DICOM)".into()),
                );
                None
            }
        }
    }

    /// Labels: names, sorted, without repeats.
    fn label_list(&mut self, list: Option<&[Spanned<String>]>, label: &str) -> Option<Vec<String>> {
        let mut ok = true;
        let mut out = Vec::new();
        for entry in list.unwrap_or_default() {
            match self.name(entry, "label", label) {
                Some(name) => out.push(name.to_owned()),
                None => ok = false,
            }
        }
        out.sort();
        out.dedup();
        ok.then_some(out)
    }

    #[allow(clippy::too_many_lines)]
    fn rule(
        &mut self,
        located: &Located<RawRule>,
        ids: &mut HashMap<String, (usize, usize)>,
        cx: &RuleContext<'_, '_>,
        groups: &mut Vec<Group>,
        group_ids: &mut HashMap<String, u32>,
        patterns_seen: &mut HashSet<String>,
    ) -> Option<Rule> {
        let raw = &located.value;
        let at = located.at;
        let fallback_label = format!("rule #{}", located.ordinal);

        let id = self
            .required(
                &raw.id,
                "id",
                &fallback_label,
                located,
                "id = \"radiologists-pacs\"",
            )
            .and_then(|id| self.name(id, "rule id", &fallback_label));
        let label = id.map_or(fallback_label, |id| format!("rule '{id}'"));
        if let (Some(id), Some(spanned)) = (id, &raw.id) {
            self.unique(
                ids,
                id,
                (located.file, spanned.span().start),
                ErrorKind::DuplicateRule,
                "rule id",
            );
        }

        let effect = self
            .required(&raw.effect, "effect", &label, located, "effect = \"allow\"")
            .and_then(|effect| self.effect(effect, &label));

        // Subjects.
        let group_names = self.strings(raw.groups.as_deref(), "group", &label);
        let user_names = self.strings(raw.users.as_deref(), "user", &label);
        let no_subjects = matches!(&group_names, Some(g) if g.is_empty())
            && matches!(&user_names, Some(u) if u.is_empty())
            && !located.is_invalid("groups")
            && !located.is_invalid("users");
        if no_subjects {
            self.diags.push(
                ErrorKind::NoSubjects,
                at,
                format!("{label} lists neither `groups` nor `users`, so it can never match"),
                Some("add `groups = [\"…\"]`, `users = [\"…\"]`, or both".into()),
            );
        }
        let mut subjects = Subjects::default();
        let mut subjects_ok = group_names.is_some() && user_names.is_some();
        for (entry, name) in raw
            .groups
            .iter()
            .flatten()
            .zip(group_names.iter().flatten())
        {
            if name == "*" {
                subjects.everyone = true;
            } else if let Some(&g) = group_ids.get(name.as_str()) {
                subjects.groups.push(g);
            } else if cx.implicit_groups {
                let g = index_u32(groups.len());
                groups.push(Group {
                    name: name.clone(),
                    claim: "groups".into(),
                    values: vec![name.clone()],
                    users: Vec::new(),
                    implicit: true,
                });
                group_ids.insert(name.clone(), g);
                subjects.groups.push(g);
            } else if !cx.declared_groups.names.contains(name.as_str()) {
                let budget = &mut self.suggestion_budget;
                self.diags
                    .push_with(ErrorKind::UnknownGroup, entry.span().start, || {
                        (
                            format!("{label} references unknown group '{}'", Quoted(name)),
                            Some(cx.declared_groups.hint_for(name, budget)),
                        )
                    });
                subjects_ok = false;
            } else {
                subjects_ok = false;
            }
        }
        for user in user_names.iter().flatten() {
            let id = self.user_id(user);
            subjects.users.push(id);
        }
        subjects.groups.sort_unstable();
        subjects.groups.dedup();
        subjects.users.sort_unstable();
        subjects.users.dedup();

        // Endpoints.
        let selection = self.selection(located, &label, cx, patterns_seen);

        // Time zone, validity and windows.
        let zone = match &raw.zone {
            Some(value) => self.zone(value, &label).map(Some),
            None => Some(cx.defaults.zone.clone()),
        };
        let mut conditions = Vec::new();
        let mut conditions_ok = zone.is_some();
        // A zone that was given but is unknown was reported; times that need it are not
        // reported again as lacking one.
        let zone_failed = zone.is_none();
        let zone = zone.flatten();
        let from = raw
            .valid_from
            .as_ref()
            .filter(|_| !zone_failed)
            .map(|v| self.instant(v, zone.as_ref(), false, "valid_from", &label));
        let until = raw
            .valid_until
            .as_ref()
            .filter(|_| !zone_failed)
            .map(|v| self.instant(v, zone.as_ref(), true, "valid_until", &label));
        let (from, until) = match (from, until) {
            (Some(None), _) | (_, Some(None)) => {
                conditions_ok = false;
                (None, None)
            }
            (from, until) => (from.flatten(), until.flatten()),
        };
        if let (Some((f, _)), Some((u, _)), Some(value)) = (&from, &until, &raw.valid_until) {
            if u <= f {
                self.diags.push(
                    ErrorKind::NeverMatches,
                    value.span().start,
                    format!("{label} is valid until before it is valid from, so it never matches"),
                    Some("check the dates: `valid_until` must be after `valid_from` (a date means the whole day)".into()),
                );
                conditions_ok = false;
            }
        }
        let validity_range = (from.as_ref().map(|f| f.0), until.as_ref().map(|u| u.0));
        if from.is_some() || until.is_some() {
            conditions.push(Condition {
                check: Check::Valid { from, until },
                report: false,
            });
        }
        if let Some(list) = raw.windows.as_ref().filter(|_| !zone_failed) {
            match self.windows(list, zone.as_ref(), &label) {
                Some(schedule) => {
                    if let (Some(f), Some(u)) = validity_range {
                        if u > f && !schedule.matches_within(f, u) {
                            self.diags.push(
                                ErrorKind::NeverMatches,
                                list.span().start,
                                format!("none of the windows of {label} falls between its valid_from and valid_until, so it never matches"),
                                Some("widen the validity dates or change the windows".into()),
                            );
                            conditions_ok = false;
                        }
                    }
                    if schedule.is_always() {
                        self.diags.warn(
                            ErrorKind::Suspicious,
                            list.span().start,
                            format!("the windows of {label} cover the whole week, so they restrict nothing"),
                            Some("remove `windows`, or correct the times".into()),
                        );
                    }
                    conditions.push(Condition {
                        check: Check::Windows(Arc::new(schedule)),
                        report: false,
                    });
                }
                None => conditions_ok = false,
            }
        }

        // Source networks.
        if let Some(source) = &raw.source {
            let allow = self.networks(source.allow.as_deref(), "source.allow", &label);
            let deny = self.networks(source.deny.as_deref(), "source.deny", &label);
            match (allow, deny) {
                (Some(allow), Some(deny)) => {
                    if source.allow.is_none() && deny.is_empty() {
                        self.diags.push(
                            ErrorKind::InvalidValue,
                            at,
                            format!("`source` of {label} lists no networks"),
                            Some("add `allow = [\"10.0.0.0/8\"]` and/or `deny = [\"…\"]`".into()),
                        );
                        conditions_ok = false;
                    } else if source.allow.is_some() && allow.is_empty() {
                        self.diags.push(
                            ErrorKind::NeverMatches,
                            at,
                            format!("`source.allow` of {label} is empty, so no address matches"),
                            Some(
                                "list the networks requests may come from, or remove `allow`"
                                    .into(),
                            ),
                        );
                        conditions_ok = false;
                    } else {
                        conditions.push(Condition {
                            check: Check::Source { allow, deny },
                            report: false,
                        });
                    }
                }
                _ => conditions_ok = false,
            }
        }

        // Authentication.
        if let Some(auth) = &raw.auth {
            if let Some(mfa) = &auth.mfa {
                conditions.push(Condition {
                    check: Check::Mfa(*mfa.get_ref()),
                    report: false,
                });
            }
            if let Some(max_age) = &auth.max_age {
                match self.duration(max_age, &format!("`auth.max_age` of {label}")) {
                    Some(d) => conditions.push(Condition {
                        check: Check::MaxAge(d),
                        report: false,
                    }),
                    None => conditions_ok = false,
                }
            }
        }

        // Device.
        if let Some(device) = &raw.device {
            for (value, make) in [
                (&device.registered, Check::Registered as fn(bool) -> Check),
                (&device.approved, Check::Approved),
                (&device.user_verified, Check::UserVerified),
            ] {
                if let Some(value) = value {
                    conditions.push(Condition {
                        check: make(*value.get_ref()),
                        report: false,
                    });
                }
            }
            for (key, spanned) in device.posture.iter().flatten() {
                let values = match spanned.get_ref() {
                    StringOrList::One(v) => vec![v.clone()],
                    StringOrList::Many(list) => list.clone(),
                };
                let too_long = key.len() > MAX_STRING_BYTES
                    || values.iter().any(|v| v.len() > MAX_STRING_BYTES);
                if values.is_empty() || too_long || key.is_empty() {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        spanned.span().start,
                        format!("posture fact '{}' of {label} lists no usable value", Quoted(key)),
                        Some("give the accepted value, or a list of accepted values, such as `disk_encrypted = \"true\"`".into()),
                    );
                    conditions_ok = false;
                    continue;
                }
                conditions.push(Condition {
                    check: Check::Posture {
                        key: key.clone(),
                        values,
                    },
                    report: false,
                });
            }
        }

        // Limits.
        let is_deny = effect == Some(Effect::Deny);
        let max_session = match &raw.max_session {
            Some(value) if is_deny => {
                self.diags.push(
                    ErrorKind::MaxSessionOnDeny,
                    value.span().start,
                    format!("{label} is a deny rule; `max_session` only applies to allow rules"),
                    Some("remove `max_session`, or make the rule `effect = \"allow\"`".into()),
                );
                None
            }
            Some(value) => self
                .duration(value, &format!("`max_session` of {label}"))
                .map(Some),
            None => Some(None),
        };
        let idle_timeout = match &raw.idle_timeout {
            Some(value) if is_deny => {
                self.limit_on_deny(value.span().start, "idle_timeout", &label);
                None
            }
            Some(value) => self
                .duration(value, &format!("`idle_timeout` of {label}"))
                .map(Some),
            None => Some(None),
        };
        let resume_grace = match &raw.resume_grace {
            Some(value) if is_deny => {
                self.limit_on_deny(value.span().start, "resume_grace", &label);
                None
            }
            Some(value) => self
                .duration_or_zero(value, &format!("`resume_grace` of {label}"))
                .map(Some),
            None => Some(None),
        };
        let dicom = self.rule_dicom(raw, is_deny, &label);
        // Methods and paths (web requests), evaluated first: on a tunnel they decide whether
        // the rule can apply at all.
        let web_conditions = self.web_conditions(raw, is_deny, &label);
        match web_conditions {
            Some(web) => {
                conditions.splice(0..0, web);
            }
            None => conditions_ok = false,
        }

        let justification = raw.require_justification.as_ref().map(|v| *v.get_ref());
        if let (true, Some(value)) = (is_deny, &raw.require_justification) {
            self.limit_on_deny(value.span().start, "require_justification", &label);
            conditions_ok = false;
        }
        if justification == Some(true) {
            conditions.push(Condition {
                check: Check::Justification,
                report: false,
            });
        }

        // Report-only conditions. A report-only condition makes a rule behave as if the
        // condition were not written: on an allow rule that trials a stricter requirement, on a
        // deny rule it would deny everyone the condition exempts. Refused (issue #12).
        if let (true, Some(first)) = (is_deny, raw.report_only.iter().flatten().next()) {
            self.diags.push(
                ErrorKind::ReportOnlyOnDeny,
                first.span().start,
                format!(
                    "deny {label} has `report_only`: a report-only condition is treated as not written, so the rule would deny everyone it names, whether the condition holds or not"
                ),
                Some("report_only is for trialling a stricter requirement on an allow rule; to trial a deny, write the condition on the allow rule it would restrict, with `report_only`".into()),
            );
            conditions_ok = false;
        }
        for entry in raw.report_only.iter().flatten().filter(|_| !is_deny) {
            let name = entry.get_ref().as_str();
            if name == "methods" || name == "paths" {
                self.diags.push(
                    ErrorKind::UnknownCondition,
                    entry.span().start,
                    format!("`{name}` of {label} cannot be report-only: the rule would then allow every request, tunnels included"),
                    Some(format!("to grant full access, remove `{name}`; to trial a restriction, compare the policies with `postern-policy diff`")),
                );
                conditions_ok = false;
                continue;
            }
            let mut found = false;
            for condition in &mut conditions {
                let own = condition.check.name();
                let matches = own == name
                    || own
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('.'));
                if matches
                    && !matches!(condition.check, Check::Justification)
                    && !condition.check.is_web()
                {
                    condition.report = true;
                    found = true;
                }
            }
            if !found {
                let names: Vec<String> = conditions
                    .iter()
                    .filter(|c| !matches!(c.check, Check::Justification) && !c.check.is_web())
                    .map(|c| c.check.name())
                    .collect();
                let hint = if names.is_empty() {
                    "the rule has no conditions".to_owned()
                } else {
                    format!("the rule's conditions are: {}", names.join(", "))
                };
                self.diags.push(
                    ErrorKind::UnknownCondition,
                    entry.span().start,
                    format!("{label} has no condition '{}' to report on", Quoted(name)),
                    Some(hint),
                );
                conditions_ok = false;
            }
        }

        let description = raw
            .description
            .as_ref()
            .map(|d| self.text(d, "description", &label));

        // Every check has run; build the rule only if all of them passed.
        let (id, effect, selection) = (id?, effect?, selection?);
        let (max_session, idle_timeout, resume_grace, dicom) =
            (max_session?, idle_timeout?, resume_grace?, dicom?);
        if no_subjects || !subjects_ok || !conditions_ok {
            return None;
        }
        let description = match description {
            Some(None) => return None,
            Some(Some(d)) => Some(d.to_owned()),
            None => None,
        };
        let limits = match effect {
            Effect::Allow => RuleLimits {
                max_session: Some(max_session.unwrap_or(cx.defaults.max_session)),
                idle_timeout: idle_timeout.or(cx.defaults.idle_timeout),
                resume_grace: resume_grace.unwrap_or(cx.defaults.resume_grace),
                require_justification: justification == Some(true),
            },
            Effect::Deny => RuleLimits::default(),
        };
        let reason = match (effect, &description) {
            (Effect::Allow, _) => format!("allowed by rule '{id}'"),
            (Effect::Deny, Some(description)) => format!("denied by rule '{id}': {description}"),
            (Effect::Deny, None) => format!("denied by rule '{id}'"),
        };
        let (selector, selection) = selection;
        let selection = if conditions.iter().any(|c| c.check.is_web()) {
            self.web_selection(raw, selection, &selector, cx, &label)?
        } else {
            selection
        };
        if selection.is_empty() {
            self.diags.warn(
                ErrorKind::MatchesNothing,
                at,
                format!("{label} selects no endpoint ({selector}), so it matches nothing"),
                Some("check the patterns, labels and egress class".into()),
            );
        }
        Some(Rule {
            id: id.to_owned(),
            effect,
            description,
            subjects,
            selector,
            selection,
            conditions,
            limits,
            dicom,
            reason,
            file: located.file,
            line: self.line_of(located.file, at),
        })
    }

    /// A rule's `methods` and `paths`, as conditions (none when neither is written), or `None`
    /// after recording what is wrong with them.
    fn web_conditions(&mut self, raw: &RawRule, deny: bool, label: &str) -> Option<Vec<Condition>> {
        let mut ok = true;
        let mut out = Vec::new();
        if let Some(list) = &raw.methods {
            if list.get_ref().is_empty() {
                self.diags.push(
                    ErrorKind::NeverMatches,
                    list.span().start,
                    format!("`methods` of {label} is empty, so no web request matches it"),
                    Some("list methods such as [\"GET\", \"HEAD\"], or remove `methods`".into()),
                );
                ok = false;
            }
            let mut methods = MethodSet::default();
            for entry in list.get_ref() {
                let Some(method) = self.text(entry, "method", label) else {
                    ok = false;
                    continue;
                };
                if methods.insert(method) {
                    continue;
                }
                let upper = method.to_ascii_uppercase();
                let hint = if METHODS.contains(&upper.as_str()) {
                    format!("methods are written in upper case: \"{upper}\"")
                } else {
                    format!("`methods` accepts {}", METHODS.join(", "))
                };
                self.diags.push(
                    ErrorKind::InvalidValue,
                    entry.span().start,
                    format!(
                        "unknown HTTP method '{}' in `methods` of {label}",
                        Quoted(method)
                    ),
                    Some(hint),
                );
                ok = false;
            }
            if ok {
                out.push(Condition {
                    check: Check::Methods { methods, deny },
                    report: false,
                });
            }
        }
        if let Some(list) = &raw.paths {
            let entries = list.get_ref();
            if entries.is_empty() {
                self.diags.push(
                    ErrorKind::NeverMatches,
                    list.span().start,
                    format!("`paths` of {label} is empty, so no web request matches it"),
                    Some("list path prefixes such as [\"/dicom-web/\"], or remove `paths`".into()),
                );
                ok = false;
            }
            if entries.len() > MAX_PATHS {
                self.diags.push(
                    ErrorKind::LimitExceeded,
                    list.span().start,
                    format!(
                        "`paths` of {label} lists {} prefixes (the limit is {MAX_PATHS})",
                        entries.len()
                    ),
                    Some("use shorter prefixes that cover several paths, or split the rule".into()),
                );
                return None;
            }
            let mut prefixes: Vec<Box<str>> = Vec::new();
            let mut paths_ok = true;
            for entry in entries {
                let Some(path) = self.text(entry, "path", label) else {
                    paths_ok = false;
                    continue;
                };
                let problem = if path.len() > MAX_PATH_BYTES {
                    Some(format!(
                        "is {} bytes long (the limit is {MAX_PATH_BYTES})",
                        path.len()
                    ))
                } else {
                    path_problem(path).map(str::to_owned)
                };
                if let Some(problem) = problem {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        entry.span().start,
                        format!("path prefix '{}' in `paths` of {label} {problem}", Quoted(path)),
                        Some("write a path prefix as the application sees it, such as \"/dicom-web/\" or \"/app/explorer.html\": starting with '/', without query, '.' or '..' segments, '//' or needless percent-encoding".into()),
                    );
                    paths_ok = false;
                    continue;
                }
                if !prefixes.iter().any(|p| **p == *path) {
                    prefixes.push(path.into());
                }
            }
            if paths_ok && ok {
                out.push(Condition {
                    check: Check::Paths {
                        prefixes: prefixes.into(),
                        deny,
                    },
                    report: false,
                });
            }
            ok &= paths_ok;
        }
        ok.then_some(out)
    }

    /// A rule with `methods`/`paths` applies to the web endpoints it selects only: the others
    /// are dropped from its selection (with a warning for those named one by one), and a
    /// selection without any web endpoint is an error.
    fn web_selection(
        &mut self,
        raw: &RawRule,
        selection: Selection,
        selector: &Selector,
        cx: &RuleContext<'_, '_>,
        label: &str,
    ) -> Option<Selection> {
        let endpoints = cx.catalogue.endpoints;
        let selected: Vec<u32> = match &selection {
            Selection::All => (0..endpoints.len()).map(index_u32).collect(),
            Selection::Some(list) if list.is_empty() => return Some(selection),
            Selection::Some(list) => list.clone(),
        };
        let is_web = |&i: &u32| {
            endpoints
                .get(i as usize)
                .is_some_and(|e| e.protocol.is_web())
        };
        let (web, other): (Vec<u32>, Vec<u32>) = selected.into_iter().partition(is_web);
        let keys = match (&raw.methods, &raw.paths) {
            (Some(_), Some(_)) => "`methods` and `paths`",
            (Some(_), None) => "`methods`",
            _ => "`paths`",
        };
        let at = raw
            .methods
            .as_ref()
            .or(raw.paths.as_ref())
            .map_or(0, |l| l.span().start);
        let describe = |list: &[u32]| {
            let named: Vec<String> = list
                .iter()
                .filter_map(|&i| endpoints.get(i as usize))
                .map(|e| format!("{} ({})", e.name, e.protocol))
                .collect();
            bounded_list(named.iter().map(String::as_str), HINT_LIST_MAX)
        };
        if web.is_empty() {
            self.diags.push(
                ErrorKind::NeverMatches,
                at,
                format!(
                    "{label} has {keys}, which apply only to web endpoints (protocol \"http\" or \"https\"), but it selects none: {}",
                    describe(&other)
                ),
                Some(format!("select the web endpoints the restriction is for, or remove {keys}")),
            );
            return None;
        }
        let named: Vec<u32> = other
            .into_iter()
            .filter(|&i| {
                endpoints.get(i as usize).is_some_and(|e| {
                    selector
                        .endpoints
                        .iter()
                        .flatten()
                        .any(|written| *written == e.name)
                })
            })
            .collect();
        if !named.is_empty() {
            self.diags.warn(
                ErrorKind::Suspicious,
                at,
                format!(
                    "{label} has {keys}, which apply only to web endpoints, so it does not apply to {}",
                    describe(&named)
                ),
                Some("move those endpoints to a rule without methods and paths, or remove them from this one".into()),
            );
        }
        Some(Selection::Some(web))
    }

    fn limit_on_deny(&mut self, at: usize, key: &str, label: &str) {
        self.diags.push(
            ErrorKind::LimitOnDeny,
            at,
            format!("{label} is a deny rule; `{key}` only applies to allow rules"),
            Some(format!(
                "remove `{key}`, or make the rule `effect = \"allow\"`"
            )),
        );
    }

    /// The endpoints a rule selects: (names or patterns) ∩ (any of the labels) ∩ (egress).
    fn selection(
        &mut self,
        located: &Located<RawRule>,
        label: &str,
        cx: &RuleContext<'_, '_>,
        patterns_seen: &mut HashSet<String>,
    ) -> Option<(Selector, Selection)> {
        let raw = &located.value;
        let mut selector = Selector::default();
        let mut ok = true;
        if let Some(value) = &raw.egress {
            match self.egress(value, label) {
                Some(egress) => selector.egress = Some(egress),
                None => ok = false,
            }
        }
        if let Some(list) = &raw.endpoint_labels {
            if list.get_ref().is_empty() {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    list.span().start,
                    format!("{label} lists no endpoint labels"),
                    Some("name at least one label, or remove `endpoint_labels`".into()),
                );
                ok = false;
            }
            match self.label_list(Some(list.get_ref()), label) {
                Some(labels) => selector.labels = labels,
                None => ok = false,
            }
        }
        let has_filter = raw.egress.is_some() || raw.endpoint_labels.is_some();
        let mut all = true;
        let mut picked: Vec<u32> = Vec::new();
        match &raw.endpoints {
            None if has_filter || located.is_invalid("endpoints") => {}
            None => {
                self.diags.push(
                    ErrorKind::MissingField,
                    located.at,
                    format!("{label} is missing required key `endpoints`"),
                    Some("add a line such as `endpoints = [\"truro-pacs-dicom\"]` (or select by `endpoint_labels` / `egress`)".into()),
                );
                ok = false;
            }
            Some(list) if list.get_ref().is_empty() => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    list.span().start,
                    format!("{label} lists no endpoints"),
                    Some("name the endpoints it covers, or use [\"*\"] for all".into()),
                );
                ok = false;
            }
            Some(list) => {
                let mut written = Vec::new();
                let mut star = false;
                for entry in list.get_ref() {
                    let name = entry.get_ref().as_str();
                    written.push(name.to_owned());
                    if name == "*" {
                        star = true;
                    } else if name.contains('*') {
                        if !name
                            .bytes()
                            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'*'))
                            || name.len() > 64
                        {
                            self.diags.push(
                                ErrorKind::InvalidName,
                                entry.span().start,
                                format!("endpoint pattern '{}' of {label} is not valid", Quoted(name)),
                                Some("patterns use lowercase letters, digits, '-' and '*' (any run of characters), such as \"truro-*\"".into()),
                            );
                            ok = false;
                            continue;
                        }
                        if patterns_seen.insert(name.to_owned())
                            && patterns_seen.len() > MAX_PATTERNS
                        {
                            self.diags.push(
                                ErrorKind::LimitExceeded,
                                entry.span().start,
                                format!("too many distinct endpoint patterns (the limit is {MAX_PATTERNS})"),
                                Some("select endpoints by label instead".into()),
                            );
                            ok = false;
                            continue;
                        }
                        let before = picked.len();
                        picked.extend(
                            cx.catalogue
                                .endpoints
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| glob_match(name, &e.name))
                                .map(|(i, _)| index_u32(i)),
                        );
                        if picked.len() == before {
                            self.diags.warn(
                                ErrorKind::MatchesNothing,
                                entry.span().start,
                                format!("endpoint pattern '{name}' of {label} matches no endpoint"),
                                None,
                            );
                        }
                    } else if let Some(&i) = cx.catalogue.by_name.get(name) {
                        picked.push(i);
                    } else if !cx.declared.names.contains(name) {
                        let budget = &mut self.suggestion_budget;
                        self.diags.push_with(
                            ErrorKind::UnknownEndpoint,
                            entry.span().start,
                            || {
                                (
                                    format!(
                                        "{label} references unknown endpoint '{}'",
                                        Quoted(name)
                                    ),
                                    Some(cx.declared.hint_for(name, budget)),
                                )
                            },
                        );
                        ok = false;
                    } else {
                        // Declared but invalid: already reported.
                        ok = false;
                    }
                }
                all = star;
                selector.endpoints = Some(written);
            }
        }
        if !ok {
            return None;
        }
        if all && !has_filter {
            return Some((selector, Selection::All));
        }
        let mut set: Vec<u32> = if all {
            (0..cx.catalogue.endpoints.len()).map(index_u32).collect()
        } else {
            picked.sort_unstable();
            picked.dedup();
            picked
        };
        if !selector.labels.is_empty() {
            let mut with_label: Vec<u32> = selector
                .labels
                .iter()
                .filter_map(|l| cx.catalogue.by_label.get(l.as_str()))
                .flatten()
                .copied()
                .collect();
            with_label.sort_unstable();
            with_label.dedup();
            set.retain(|i| with_label.binary_search(i).is_ok());
        }
        if let Some(egress) = selector.egress {
            set.retain(|&i| {
                cx.catalogue
                    .endpoints
                    .get(i as usize)
                    .is_some_and(|e| e.egress == egress)
            });
        }
        Some((selector, Selection::Some(set)))
    }

    fn windows(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        zone: Option<&Arc<Zone>>,
        label: &str,
    ) -> Option<Schedule> {
        if list.get_ref().is_empty() {
            self.diags.push(
                ErrorKind::NeverMatches,
                list.span().start,
                format!("`windows` of {label} is empty, so it never matches"),
                Some("list windows such as \"Mon-Fri 08:00-18:00\", or remove `windows`".into()),
            );
            return None;
        }
        let mut ok = true;
        let mut windows = Vec::new();
        for entry in list.get_ref() {
            let Some(text) = self.text(entry, "window", label) else {
                ok = false;
                continue;
            };
            match Window::parse(text) {
                Ok(window) => windows.push(window),
                Err((message, hint)) => {
                    let kind = if message.contains("never matches") {
                        ErrorKind::NeverMatches
                    } else {
                        ErrorKind::InvalidWindow
                    };
                    self.diags.push(
                        kind,
                        entry.span().start,
                        format!("invalid window '{}' in {label}: {message}", Quoted(text)),
                        Some(hint),
                    );
                    ok = false;
                }
            }
        }
        let Some(zone) = zone else {
            self.diags.push(
                ErrorKind::MissingField,
                list.span().start,
                format!("{label} has `windows` but no time zone"),
                Some("add `zone = \"Europe/London\"` to the rule or to [defaults]".into()),
            );
            return None;
        };
        ok.then(|| Schedule::new(zone.clone(), windows))
    }

    /// A validity bound: a TOML offset date-time, a local date-time or a date (in the zone).
    /// A date as `valid_until` means the end of that day.
    fn instant(
        &mut self,
        value: &Spanned<Datetime>,
        zone: Option<&Arc<Zone>>,
        end_of_day: bool,
        key: &str,
        label: &str,
    ) -> Option<(i64, String)> {
        let at = value.span().start;
        let text = value.get_ref().to_string();
        match datetime_to_instant(value.get_ref(), zone, end_of_day, false) {
            Ok(t) => Some((t, text)),
            Err(problem) => {
                let (kind, hint) = match problem {
                    DateProblem::NeedsZone => (
                        ErrorKind::MissingField,
                        "add `zone = \"Europe/London\"` to the rule or to [defaults], or give an offset such as 2025-02-01T00:00:00Z".to_owned(),
                    ),
                    DateProblem::TimeOnly | DateProblem::DateOnly => (
                        ErrorKind::InvalidValue,
                        format!("write a date such as `{key} = 2025-02-01` or a date-time such as `{key} = 2025-02-01T09:00:00Z`"),
                    ),
                    DateProblem::OutOfRange => (
                        ErrorKind::InvalidValue,
                        "use a date between 1970 and 9999".to_owned(),
                    ),
                };
                self.diags.push(
                    kind,
                    at,
                    format!("`{key}` of {label} ({text}) {}", problem.describe()),
                    Some(hint),
                );
                None
            }
        }
    }

    fn networks(
        &mut self,
        list: Option<&[Spanned<String>]>,
        key: &str,
        label: &str,
    ) -> Option<Vec<IpNet>> {
        let mut ok = true;
        let mut out = Vec::new();
        for entry in list.unwrap_or_default() {
            let Some(text) = self.text(entry, key, label) else {
                ok = false;
                continue;
            };
            let parsed = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match parsed {
                Some(net) => {
                    let net = canonical_net(net);
                    if net.trunc() != net {
                        self.diags.warn(
                            ErrorKind::Suspicious,
                            entry.span().start,
                            format!(
                                "network '{text}' in `{key}` of {label} has host bits set; it means {}",
                                net.trunc()
                            ),
                            Some(format!("write \"{}\"", net.trunc())),
                        );
                    }
                    out.push(net.trunc());
                }
                None => {
                    self.diags.push(
                        ErrorKind::InvalidNetwork,
                        entry.span().start,
                        format!("'{}' in `{key}` of {label} is not a network", Quoted(text)),
                        Some("write an address or a CIDR block, such as \"10.20.0.0/16\", \"192.0.2.7\" or \"2001:db8::/32\"".into()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn test(
        &mut self,
        located: &Located<RawTest>,
        seen: &mut HashMap<String, (usize, usize)>,
        defaults: &Defaults,
        rule_ids: &HashSet<&str>,
        all_rule_ids: &HashSet<&str>,
    ) -> Option<TestCase> {
        let raw = &located.value;
        let fallback_label = format!("test #{}", located.ordinal);
        let name = self
            .required(
                &raw.name,
                "name",
                &fallback_label,
                located,
                "name = \"locum at noon is denied\"",
            )
            .and_then(|n| self.text(n, "name", &fallback_label));
        let label = name.map_or(fallback_label, |n| format!("test '{}'", Quoted(n)));
        if let (Some(name), Some(spanned)) = (name, &raw.name) {
            self.unique(
                seen,
                name,
                (located.file, spanned.span().start),
                ErrorKind::DuplicateTest,
                "test name",
            );
        }
        let user = self
            .required(
                &raw.user,
                "user",
                &label,
                located,
                "user = \"dr.hughes@truro.nhs.uk\"",
            )
            .and_then(|u| self.text(u, "user", &label));
        let groups = self.strings(raw.groups.as_deref(), "group", &label);
        let endpoint = self
            .required(
                &raw.endpoint,
                "endpoint",
                &label,
                located,
                "endpoint = \"truro-pacs-web\"",
            )
            .and_then(|e| self.text(e, "endpoint", &label));
        let zone = match &raw.zone {
            Some(z) => self.zone(z, &label).map(Some),
            None => Some(defaults.zone.clone()),
        };
        let at = self
            .required(&raw.at, "at", &label, located, "at = 2025-03-04T12:00:00Z")
            .and_then(|at| {
                let zone = zone.clone().flatten();
                match datetime_to_instant(at.get_ref(), zone.as_ref(), false, true) {
                    Ok(t) => Some(t),
                    Err(problem) => {
                        self.diags.push(
                            ErrorKind::InvalidValue,
                            at.span().start,
                            format!("`at` of {label} ({}) {}", at.get_ref(), problem.describe()),
                            Some("write a date-time such as `at = 2025-03-04T12:00:00Z`, or a local one such as `at = 2025-03-04T12:00:00` with a zone".into()),
                        );
                        None
                    }
                }
            });
        let source = match &raw.source {
            Some(s) => match s.get_ref().parse::<IpAddr>() {
                Ok(ip) => Some(Some(ip)),
                Err(_) => {
                    self.diags.push(
                        ErrorKind::InvalidNetwork,
                        s.span().start,
                        format!(
                            "source '{}' of {label} is not an IP address",
                            Quoted(s.get_ref())
                        ),
                        Some("write an address such as \"192.0.2.7\"".into()),
                    );
                    None
                }
            },
            None => Some(None),
        };
        let signed_in_ago = match &raw.signed_in_ago {
            Some(v) => self
                .duration_or_zero(v, &format!("`signed_in_ago` of {label}"))
                .map(Some),
            None => Some(None),
        };
        let justification = match &raw.justification {
            Some(j) => self
                .text(j, "justification", &label)
                .map(|j| Some(j.to_owned())),
            None => Some(None),
        };
        let expect = self
            .required(&raw.expect, "expect", &label, located, "expect = \"deny\"")
            .and_then(|e| self.effect(e, &label));
        let rule = match &raw.rule {
            Some(r) => {
                let id = r.get_ref().as_str();
                if rule_ids.contains(id) || all_rule_ids.contains(id) {
                    Some(Some(id.to_owned()))
                } else {
                    self.diags.push(
                        ErrorKind::UnknownRule,
                        r.span().start,
                        format!(
                            "{label} expects rule '{}', which the policy does not define",
                            Quoted(id)
                        ),
                        suggest(id, rule_ids.iter().copied())
                            .map(|c| format!("did you mean '{c}'?")),
                    );
                    None
                }
            }
            None => Some(None),
        };
        let reason_contains = match &raw.reason_contains {
            Some(r) => self
                .text(r, "reason_contains", &label)
                .map(|r| Some(r.to_owned())),
            None => Some(None),
        };
        let method = raw
            .method
            .as_ref()
            .map(|m| self.text(m, "method", &label).map(str::to_owned));
        let path = raw
            .path
            .as_ref()
            .map(|p| self.text(p, "path", &label).map(str::to_owned));
        let web_session = raw.web_session.as_ref().is_some_and(|w| *w.get_ref());
        let mut web_ok = true;
        match (&raw.method, &raw.path) {
            (Some(given), None) | (None, Some(given)) => {
                let (has, lacks) = if raw.method.is_some() {
                    ("method", "path")
                } else {
                    ("path", "method")
                };
                self.diags.push(
                    ErrorKind::MissingField,
                    given.span().start,
                    format!("{label} gives `{has}` but no `{lacks}`: a web request needs both"),
                    Some(
                        "add a line such as `method = \"GET\"` or `path = \"/dicom-web/studies\"`"
                            .into(),
                    ),
                );
                web_ok = false;
            }
            (Some(given), Some(_)) if web_session => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    given.span().start,
                    format!("{label} gives both `web_session = true` and a web request (`method`, `path`)"),
                    Some("a test is a tunnel (the default), a web session (`web_session = true`) or one web request (`method` and `path`)".into()),
                );
                web_ok = false;
            }
            _ => {}
        }
        let device = raw.device.as_ref().map(|d| DeviceFacts {
            registered: d.registered.unwrap_or(false),
            approved: d.approved.unwrap_or(false),
            user_verified: d.user_verified.unwrap_or(false),
            posture: d.posture.clone().unwrap_or_default(),
        });
        let at = at?;
        let at_time =
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(at).ok()?))?;
        let signed_in_ago = signed_in_ago?;
        let auth = match (raw.mfa.as_ref().map(|m| *m.get_ref()), signed_in_ago) {
            (None, None) => None,
            (mfa, ago) => Some((
                mfa.unwrap_or(false),
                ago.and_then(|ago| at_time.checked_sub(ago)),
            )),
        };
        let (Some(method), Some(path)) = (
            method.map_or(Some(None), |m| m.map(Some)),
            path.map_or(Some(None), |p| p.map(Some)),
        ) else {
            return None;
        };
        if !web_ok {
            return None;
        }
        let calling_ae = raw.calling_ae.as_ref().map(|v| {
            self.ae_title(v, "calling_ae", &label, false)
                .map(str::to_owned)
        });
        let dicom_service = raw.dicom_service.as_ref().map(|v| {
            let found = DICOM_SERVICES.iter().find(|s| **s == v.get_ref()).copied();
            if found.is_none() {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    v.span().start,
                    format!(
                        "unknown DICOM service '{}' in `dicom_service` of {label}",
                        Quoted(v.get_ref())
                    ),
                    Some(format!(
                        "`dicom_service` is one of {}",
                        DICOM_SERVICES.join(", ")
                    )),
                );
            }
            found
        });
        let (Some(calling_ae), Some(dicom_service)) = (
            calling_ae.map_or(Some(None), |a| a.map(Some)),
            dicom_service.map_or(Some(None), |s| s.map(Some)),
        ) else {
            return None;
        };
        Some(TestCase {
            name: name?.to_owned(),
            origin: self
                .files
                .get(located.file)
                .map(|f| f.origin.clone())
                .unwrap_or_default(),
            line: self.line_of(located.file, located.at),
            user: user?.to_owned(),
            groups: groups?,
            claims: raw
                .claims
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            endpoint: endpoint?.to_owned(),
            port: None,
            method,
            path,
            web_session,
            calling_ae,
            dicom_service: dicom_service.map(str::to_owned),
            ae_titles: raw.ae_titles.clone().unwrap_or_default(),
            at: at_time,
            source: source?,
            device,
            auth,
            justification: justification?,
            expect: expect?,
            rule: rule?,
            reason_contains: reason_contains?,
        })
    }
    fn required<'v, T, R>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        key: &str,
        label: &str,
        table: &Located<R>,
        example: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() && !table.is_invalid(key) {
            self.diags.push(
                ErrorKind::MissingField,
                table.at,
                format!("{label} is missing required key `{key}`"),
                Some(format!("add a line such as `{example}`")),
            );
        }
        value.as_ref()
    }

    /// Any string from the file: at most [`MAX_STRING_BYTES`] and free of control characters
    /// (strings end up in audit records and on screens, one line each).
    fn text<'v>(&mut self, value: &'v Spanned<String>, key: &str, label: &str) -> Option<&'v str> {
        let text = value.get_ref().as_str();
        let at = value.span().start;
        if text.len() > MAX_STRING_BYTES {
            self.diags.push(
                ErrorKind::LimitExceeded,
                at,
                format!(
                    "{key} of {label} is {} bytes long (the limit is {MAX_STRING_BYTES})",
                    text.len()
                ),
                None,
            );
            return None;
        }
        if text.chars().any(char::is_control) {
            self.diags.push(
                ErrorKind::InvalidValue,
                at,
                format!("{key} of {label} contains a control character"),
                Some("use a single line of printable text; put longer notes in # comments".into()),
            );
            return None;
        }
        Some(text)
    }

    /// A name, site or id: `[a-z0-9][a-z0-9-]{0,62}`.
    fn name<'v>(&mut self, value: &'v Spanned<String>, what: &str, label: &str) -> Option<&'v str> {
        let text = self.text(value, what, label)?;
        if text.is_empty() {
            self.diags.push(
                ErrorKind::InvalidValue,
                value.span().start,
                format!("{what} of {label} is empty"),
                Some(NAME_HINT.into()),
            );
            return None;
        }
        if !is_valid_name(text) {
            self.diags.push(
                ErrorKind::InvalidName,
                value.span().start,
                format!("{what} '{}' of {label} is not a valid name", Quoted(text)),
                Some(NAME_HINT.into()),
            );
            return None;
        }
        Some(text)
    }

    /// Records a duplicate if `name` was already seen in this section (in any file).
    fn unique(
        &mut self,
        seen: &mut HashMap<String, (usize, usize)>,
        name: &str,
        at: (usize, usize),
        kind: ErrorKind,
        what: &str,
    ) {
        if let Some(&(file, offset)) = seen.get(name) {
            let hint = if file == at.0 {
                format!("first defined on line {}", self.line_of(file, offset))
            } else {
                format!("first defined at {}", self.place(file, offset))
            };
            self.diags.push(
                kind,
                at.1,
                format!("duplicate {what} '{}'", Quoted(name)),
                Some(hint),
            );
        } else {
            seen.insert(name.to_owned(), at);
        }
    }

    fn host<'v>(&mut self, value: &'v Spanned<String>, label: &str) -> Option<&'v str> {
        let host = self.text(value, "host", label)?;
        if host.trim().is_empty() {
            self.diags.push(
                ErrorKind::InvalidValue,
                value.span().start,
                format!("host of {label} is empty"),
                Some("give the IP address or DNS name the connector dials".into()),
            );
            return None;
        }
        if !is_valid_host(host) {
            self.diags.push(
                ErrorKind::InvalidValue,
                value.span().start,
                format!(
                    "host '{}' of {label} is not an IP address or DNS name",
                    Quoted(host)
                ),
                Some("for example \"10.1.2.3\", \"pacs.truro.nhs.local\" or \"fd00::5\" (IPv6 without brackets, no port)".into()),
            );
            return None;
        }
        Some(host)
    }
    fn port(&mut self, value: &Spanned<i64>, label: &str) -> Option<u16> {
        match u16::try_from(*value.get_ref()) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("port {} of {label} is not a valid port", value.get_ref()),
                    Some("use a port between 1 and 65535".into()),
                );
                None
            }
        }
    }

    fn protocol(&mut self, value: &Spanned<String>, label: &str) -> Option<Protocol> {
        let text = value.get_ref().as_str();
        match text.parse::<Protocol>() {
            Ok(protocol) => Some(protocol),
            Err(_) => {
                let names = Protocol::ALL.map(Protocol::as_str);
                let hint = match suggest(&text.to_ascii_lowercase(), names) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => format!("protocol is one of {}", names.join(", ")),
                };
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("{label} has unknown protocol '{}'", Quoted(text)),
                    Some(hint),
                );
                None
            }
        }
    }

    fn effect(&mut self, value: &Spanned<String>, label: &str) -> Option<Effect> {
        match value.get_ref().as_str() {
            "allow" => Some(Effect::Allow),
            "deny" => Some(Effect::Deny),
            other => {
                self.diags.push(
                    ErrorKind::InvalidValue,
                    value.span().start,
                    format!("{label} has invalid effect '{}'", Quoted(other)),
                    Some("effect is \"allow\" or \"deny\"".into()),
                );
                None
            }
        }
    }

    /// The entries of a list of names (`groups`, `users`, `values`); an absent list is an
    /// empty one. Repeats are dropped.
    fn strings(
        &mut self,
        list: Option<&[Spanned<String>]>,
        what: &str,
        label: &str,
    ) -> Option<Vec<String>> {
        let mut ok = true;
        let mut out: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for entry in list.unwrap_or_default() {
            match self.text(entry, what, label) {
                Some("") => {
                    self.diags.push(
                        ErrorKind::InvalidValue,
                        entry.span().start,
                        format!("empty {what} name in {label}"),
                        None,
                    );
                    ok = false;
                }
                Some(text) => {
                    if seen.insert(text) {
                        out.push(text.to_owned());
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A duration that may be zero (a test's `signed_in_ago`).
    fn duration_or_zero(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        let text = self.text(value, "duration", what)?;
        match humantime::parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(e) => {
                self.diags.push(
                    ErrorKind::InvalidDuration,
                    value.span().start,
                    format!("invalid duration '{}' for {what}: {e}", Quoted(text)),
                    Some("write a duration such as \"30m\", \"4h\" or \"1h 30m\"".into()),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        const HINT: &str = "write a duration such as \"30m\", \"4h\" or \"1h 30m\"";
        let text = self.text(value, "duration", what)?;
        match humantime::parse_duration(text) {
            Ok(duration) if duration.is_zero() => {
                self.diags.push(
                    ErrorKind::InvalidDuration,
                    value.span().start,
                    format!("{what} must be longer than zero"),
                    Some(HINT.into()),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(e) => {
                self.diags.push(
                    ErrorKind::InvalidDuration,
                    value.span().start,
                    format!("invalid duration '{}' for {what}: {e}", Quoted(text)),
                    Some(HINT.into()),
                );
                None
            }
        }
    }
}

/// Why a TOML date-time cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateProblem {
    NeedsZone,
    TimeOnly,
    DateOnly,
    OutOfRange,
}

impl DateProblem {
    fn describe(self) -> &'static str {
        match self {
            DateProblem::NeedsZone => "has no UTC offset and no time zone applies",
            DateProblem::TimeOnly => "is a time of day without a date",
            DateProblem::DateOnly => "is a date without a time of day",
            DateProblem::OutOfRange => "is out of range",
        }
    }
}

/// A TOML date-time as Unix seconds. Offset date-times stand alone; local date-times and dates
/// are read in `zone`. A date alone means 00:00, or with `end_of_day` the 00:00 after it; with
/// `need_time`, a date alone is refused.
pub(crate) fn datetime_to_instant(
    value: &Datetime,
    zone: Option<&Arc<Zone>>,
    end_of_day: bool,
    need_time: bool,
) -> Result<i64, DateProblem> {
    let Some(date) = value.date else {
        return Err(DateProblem::TimeOnly);
    };
    if need_time && value.time.is_none() {
        return Err(DateProblem::DateOnly);
    }
    let civil_date = jiff::civil::Date::new(
        i16::try_from(date.year).map_err(|_| DateProblem::OutOfRange)?,
        i8::try_from(date.month).map_err(|_| DateProblem::OutOfRange)?,
        i8::try_from(date.day).map_err(|_| DateProblem::OutOfRange)?,
    )
    .map_err(|_| DateProblem::OutOfRange)?;
    if date.year < 1970 {
        return Err(DateProblem::OutOfRange);
    }
    let time = match value.time {
        Some(t) => jiff::civil::Time::new(
            i8::try_from(t.hour).map_err(|_| DateProblem::OutOfRange)?,
            i8::try_from(t.minute).map_err(|_| DateProblem::OutOfRange)?,
            i8::try_from(t.second.min(59)).map_err(|_| DateProblem::OutOfRange)?,
            0,
        )
        .map_err(|_| DateProblem::OutOfRange)?,
        None => jiff::civil::Time::midnight(),
    };
    let civil_date = if value.time.is_none() && end_of_day {
        civil_date.tomorrow().map_err(|_| DateProblem::OutOfRange)?
    } else {
        civil_date
    };
    let datetime = civil_date.to_datetime(time);
    match value.offset {
        Some(offset) => {
            let minutes = match offset {
                toml::value::Offset::Z => 0,
                toml::value::Offset::Custom { minutes } => i64::from(minutes),
            };
            let local = datetime
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map_err(|_| DateProblem::OutOfRange)?
                .timestamp()
                .as_second();
            Ok(local - minutes * 60)
        }
        None => zone
            .ok_or(DateProblem::NeedsZone)?
            .local_instant(datetime)
            .ok_or(DateProblem::OutOfRange),
    }
}

/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) as the IPv4 networks they mean.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
            }
            _ => net,
        },
        IpNet::V4(_) => net,
    }
}

/// Whole-policy check, run when nothing else is wrong (a file full of errors is not also
/// "empty"). A policy that defines no endpoints or no rules denies every request: refused unless a
/// file says `deny_all = true`, because an empty or half-written file (an editor's in-place
/// rewrite, a failed copy) looks exactly like this, and loading it would cut every session.
/// `deny_all = true` beside endpoints *and* rules is refused too, so that the opt-in cannot be
/// left behind in a policy that allows access.
fn empty_policy(raw: &RawDocument, r: &mut Resolver<'_, '_>) {
    let (endpoints, rules) = (raw.endpoint_tables, raw.rule_tables);
    let opted_in = raw.deny_all.iter().find(|(_, _, value)| *value);
    match opted_in {
        None if endpoints == 0 || rules == 0 => {
            let what = match (endpoints, rules) {
                (0, 0) => "no endpoints and no rules",
                (0, _) => "no endpoints",
                _ => "no rules",
            };
            r.diags.set_file(0);
            r.diags.push(
                ErrorKind::EmptyPolicy,
                0,
                format!("the policy has {what}, so it denies every request"),
                Some(
                    "if that is intended, write `deny_all = true` at the top of the policy; \
                     otherwise the file may be empty or half-written"
                        .into(),
                ),
            );
        }
        Some(&(file, at, _)) if endpoints > 0 && rules > 0 => {
            r.diags.set_file(file);
            r.diags.push(
                ErrorKind::InvalidValue,
                at,
                format!(
                    "`deny_all = true`, but the policy has {endpoints} endpoints and {rules} rules"
                ),
                Some("remove `deny_all` (it is only for a policy that allows nothing)".into()),
            );
        }
        _ => {}
    }
}

/// Rules that can never decide because an unconditional deny covers them: an error when the
/// deny comes first (the later rule is dead text), a warning for an allow that a later deny
/// overrides (typically a suspension appended at the end of a policy).
fn shadowing(rules: &[Rule], r: &mut Resolver<'_, '_>) {
    let denies: Vec<usize> = rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.effect == Effect::Deny && rule.is_unconditional())
        .map(|(i, _)| i)
        .collect();
    if denies.is_empty() {
        return;
    }
    let mut budget = SHADOW_BUDGET;
    for (i, rule) in rules.iter().enumerate() {
        for &d in &denies {
            if d == i {
                continue;
            }
            if budget == 0 {
                r.diags.set_file(rule.file);
                r.diags.warn(
                    ErrorKind::LimitExceeded,
                    0,
                    "too many rules to check them all for shadowing; the check was cut short",
                    None,
                );
                return;
            }
            budget -= 1;
            let Some(deny) = rules.get(d) else { continue };
            if !rule.subjects.within(&deny.subjects)
                || !selection_within(&rule.selection, &deny.selection)
            {
                continue;
            }
            let offset = r
                .files
                .get(rule.file)
                .map_or(0, |f| f.map.offset_of_line(rule.line));
            r.diags.set_file(rule.file);
            let place = format!(
                "{}:{}",
                r.files.get(deny.file).map_or("?", |f| f.origin.as_str()),
                deny.line
            );
            if d < i && rule.effect == Effect::Deny {
                r.diags.warn(
                    ErrorKind::Shadowed,
                    offset,
                    format!(
                        "deny rule '{}' can never be the deciding rule: the earlier deny rule '{}' ({place}) covers every user and endpoint it covers",
                        rule.id, deny.id
                    ),
                    Some(format!("remove '{}', or narrow '{}'", rule.id, deny.id)),
                );
                break;
            } else if d < i {
                let what = "can never allow anything";
                r.diags.push(
                    ErrorKind::Unreachable,
                    offset,
                    format!(
                        "rule '{}' is unreachable: it {what}, because the earlier deny rule '{}' ({place}) already covers every user and endpoint it covers",
                        rule.id, deny.id
                    ),
                    Some(format!("remove '{}', narrow '{}', or give '{}' a condition", rule.id, deny.id, deny.id)),
                );
                break;
            } else if rule.effect == Effect::Allow {
                r.diags.warn(
                    ErrorKind::Shadowed,
                    offset,
                    format!(
                        "allow rule '{}' is shadowed: the later deny rule '{}' ({place}) always overrides it",
                        rule.id, deny.id
                    ),
                    Some("deny overrides allow wherever it is written; if this is a temporary suspension, remember to lift it".into()),
                );
                break;
            }
        }
    }
}

fn selection_within(a: &Selection, b: &Selection) -> bool {
    match (a, b) {
        (_, Selection::All) => true,
        (Selection::All, Selection::Some(_)) => false,
        (Selection::Some(a), Selection::Some(_)) => a.iter().all(|&e| b.contains(e)),
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// An IP address, or a DNS name: dot-separated labels of letters, digits, '-' and '_' (seen on
/// internal hosts), each 1–63 bytes and not starting or ending with '-', at most 253 bytes.
fn is_valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A `Host` header value: a DNS name or IPv4 address (as [`is_valid_host`]) or a bracketed
/// IPv6 address, then optionally `:port` with a port from 1 to 65535.
fn is_valid_host_header(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    let host_ok = host.is_none_or(|h| h.parse::<std::net::Ipv6Addr>().is_err() && is_valid_host(h));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|p| p != 0)
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_hosts_with_optional_ports() {
        for good in [
            "orthanc.truro.nhs.uk",
            "orthanc.truro.nhs.uk:8042",
            "10.1.2.3",
            "10.1.2.3:80",
            "[fd00::5]",
            "[fd00::5]:8443",
            "localhost",
        ] {
            assert!(is_valid_host_header(good), "{good}");
        }
        for bad in [
            "",
            "fd00::5",
            "[fd00::5",
            "[nope]:80",
            "[fd00::5]80",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "https://host",
            "host/path",
            "host name",
            ":80",
            "a..b",
        ] {
            assert!(!is_valid_host_header(bad), "{bad}");
        }
    }

    #[test]
    fn names_follow_the_charset() {
        assert!(is_valid_name("truro-pacs-dicom"));
        assert!(is_valid_name("0"));
        assert!(is_valid_name(&"a".repeat(63)));
        assert!(!is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-pacs"));
        assert!(!is_valid_name("Truro"));
        assert!(!is_valid_name("truro_pacs"));
        assert!(!is_valid_name("truro pacs"));
    }

    #[test]
    fn hosts_are_ips_or_dns_names() {
        assert!(is_valid_host("10.1.2.3"));
        assert!(is_valid_host("fd00::5"));
        assert!(is_valid_host("pacs.truro.nhs.local"));
        assert!(is_valid_host("PACS01."));
        assert!(is_valid_host("_dicom.pacs"));
        assert!(!is_valid_host("[fd00::5]"));
        assert!(!is_valid_host("pacs:104"));
        assert!(!is_valid_host("pacs..local"));
        assert!(!is_valid_host("-pacs"));
        assert!(!is_valid_host("pacs server"));
        assert!(!is_valid_host(&format!("{}.local", "a".repeat(64))));
    }
}
