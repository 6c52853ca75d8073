//! Stage 2: raw structs → resolved runtime types, checking every value and every cross-reference
//! and recording each problem with its position and a hint.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;

use crate::error::{Diagnostics, ErrorKind, SourceMap};
use crate::model::{Effect, Endpoint, Protocol, Rule};
use crate::raw::{Located, RawDefaults, RawDocument, RawEndpoint, RawRule};
use crate::text::{bounded_list, suggest, Quoted};
use crate::{DEFAULT_MAX_SESSION, MAX_STRING_BYTES};

/// How many names a "defined endpoints: …" hint lists.
const HINT_LIST_MAX: usize = 10;

/// "Did you mean" searches are cheap but not free on a 10,000-endpoint policy; after this many
/// unknown references, hints fall back to listing names.
const SUGGESTION_BUDGET: usize = 100;

const NAME_HINT: &str =
    "use lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters";

/// Which endpoints a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Targets {
    /// `"*"`: every endpoint in the policy.
    All,
    /// These endpoint names, each defined in the policy, without repeats.
    Named(Vec<String>),
}

#[derive(Debug)]
pub(crate) struct ResolvedRule {
    pub(crate) rule: Rule,
    pub(crate) targets: Targets,
}

/// The checked content of a policy file. Complete only if no problem was recorded.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) rules: Vec<ResolvedRule>,
}

/// Checks everything in `raw`, recording problems in `diags`.
pub(crate) fn resolve(
    raw: RawDocument,
    diags: &mut Diagnostics,
    source: &SourceMap<'_>,
) -> Resolved {
    let mut resolver = Resolver {
        diags,
        source,
        suggestion_budget: SUGGESTION_BUDGET,
    };
    let default_max_session = raw
        .defaults
        .as_ref()
        .and_then(|defaults| resolver.defaults(defaults))
        .unwrap_or(DEFAULT_MAX_SESSION);

    let declared = Declared::new(&raw);

    let mut resolved = Resolved::default();
    let mut endpoint_names: HashMap<&str, usize> = HashMap::new();
    for located in &raw.endpoints {
        if let Some(endpoint) = resolver.endpoint(located, &mut endpoint_names) {
            resolved.endpoints.push(endpoint);
        }
    }

    let mut rule_ids: HashMap<&str, usize> = HashMap::new();
    for located in &raw.rules {
        if let Some(rule) = resolver.rule(located, &mut rule_ids, &declared, default_max_session) {
            resolved.rules.push(rule);
        }
    }
    resolved
}

/// The endpoint names written in the file, for checking rules' references.
struct Declared<'r> {
    /// Every name written in an endpoint table, valid or not: a rule naming one of these is not
    /// also reported as referencing an unknown endpoint (the endpoint's own problem was).
    names: HashSet<&'r str>,
    /// The same names in file order without repeats, for "did you mean".
    in_order: Vec<&'r str>,
    /// The hint for an unknown reference when no name is close, built once.
    list_hint: String,
}

impl<'r> Declared<'r> {
    fn new(raw: &'r RawDocument) -> Self {
        let mut names = HashSet::new();
        let mut in_order = Vec::new();
        for name in raw
            .endpoints
            .iter()
            .filter_map(|e| e.value.name.as_ref().map(|n| n.get_ref().as_str()))
        {
            if names.insert(name) {
                in_order.push(name);
            }
        }
        names.extend(raw.undecoded_endpoint_names.iter().map(String::as_str));
        let list_hint = if in_order.is_empty() {
            "the policy defines no endpoints".to_owned()
        } else {
            format!(
                "defined endpoints: {}",
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

struct Resolver<'d, 's> {
    diags: &'d mut Diagnostics,
    source: &'s SourceMap<'s>,
    suggestion_budget: usize,
}

impl Resolver<'_, '_> {
    fn defaults(&mut self, defaults: &Located<RawDefaults>) -> Option<Duration> {
        let value = defaults.value.max_session.as_ref()?;
        self.duration(value, "`max_session` in [defaults]")
    }

    fn endpoint<'r>(
        &mut self,
        located: &'r Located<RawEndpoint>,
        names: &mut HashMap<&'r str, usize>,
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
                spanned.span().start,
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
        let port = self
            .required(&raw.port, "port", &label, located, "port = 104")
            .and_then(|port| self.port(port, &label));
        let protocol = self
            .required(
                &raw.protocol,
                "protocol",
                &label,
                located,
                "protocol = \"dicom\"",
            )
            .and_then(|protocol| self.protocol(protocol, &label));
        let description = raw
            .description
            .as_ref()
            .map(|d| self.text(d, "description", &label));

        Some(Endpoint {
            name: name?.to_owned(),
            site: site?.to_owned(),
            host: host?.to_owned(),
            port: port?,
            protocol: protocol?,
            description: match description {
                Some(d) => Some(d?.to_owned()),
                None => None,
            },
        })
    }

    fn rule<'r>(
        &mut self,
        located: &'r Located<RawRule>,
        ids: &mut HashMap<&'r str, usize>,
        declared: &Declared<'_>,
        default_max_session: Duration,
    ) -> Option<ResolvedRule> {
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
                spanned.span().start,
                ErrorKind::DuplicateRule,
                "rule id",
            );
        }

        let effect = self
            .required(&raw.effect, "effect", &label, located, "effect = \"allow\"")
            .and_then(|effect| self.effect(effect, &label));

        let groups = self.subjects(raw.groups.as_deref(), "group", &label);
        let users = self.subjects(raw.users.as_deref(), "user", &label);
        let no_subjects = matches!(&groups, Some(g) if g.is_empty())
            && matches!(&users, Some(u) if u.is_empty())
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

        let targets = self
            .required(
                &raw.endpoints,
                "endpoints",
                &label,
                located,
                "endpoints = [\"truro-pacs-dicom\"]",
            )
            .and_then(|list| self.targets(list, &label, declared));

        // For optional keys, `None` is absent and `Some(None)` is present but invalid.
        let max_session = match (&raw.max_session, effect) {
            (Some(value), Some(Effect::Deny)) => {
                self.diags.push(
                    ErrorKind::MaxSessionOnDeny,
                    value.span().start,
                    format!("{label} is a deny rule; `max_session` only applies to allow rules"),
                    Some("remove `max_session`, or make the rule `effect = \"allow\"`".into()),
                );
                Some(None)
            }
            (Some(value), _) => Some(self.duration(value, &format!("`max_session` of {label}"))),
            (None, _) => None,
        };
        let description = raw
            .description
            .as_ref()
            .map(|d| self.text(d, "description", &label));

        // Every check has run; build the rule only if all of them passed.
        let (id, effect, groups, users, targets) = (id?, effect?, groups?, users?, targets?);
        let users = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        if no_subjects {
            return None;
        }
        let max_session = match (effect, max_session) {
            (_, Some(None)) => return None,
            (Effect::Allow, Some(Some(limit))) => Some(limit),
            (Effect::Allow, None) => Some(default_max_session),
            (Effect::Deny, _) => None,
        };
        let description = match description {
            Some(None) => return None,
            Some(Some(d)) => Some(d.to_owned()),
            None => None,
        };
        Some(ResolvedRule {
            rule: Rule {
                id: id.to_owned(),
                effect,
                groups,
                users,
                max_session,
                description,
            },
            targets,
        })
    }

    /// The value of a required key, or a "missing required key" problem at the table header
    /// (unless the key was present with the wrong type, which stage 1 reported).
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

    /// Records a duplicate if `name` was already seen in this section.
    fn unique<'r>(
        &mut self,
        seen: &mut HashMap<&'r str, usize>,
        name: &'r str,
        at: usize,
        kind: ErrorKind,
        what: &str,
    ) {
        if let Some(&first) = seen.get(name) {
            self.diags.push(
                kind,
                at,
                format!("duplicate {what} '{name}'"),
                Some(format!("first defined on line {}", self.source.line(first))),
            );
        } else {
            seen.insert(name, at);
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

    /// The entries of `groups` or `users`; an absent list is an empty one.
    fn subjects(
        &mut self,
        list: Option<&[Spanned<String>]>,
        what: &str,
        label: &str,
    ) -> Option<HashSet<String>> {
        let mut ok = true;
        let mut out = HashSet::new();
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
                    out.insert(text.to_owned());
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn targets(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        label: &str,
        declared: &Declared<'_>,
    ) -> Option<Targets> {
        if list.get_ref().is_empty() {
            self.diags.push(
                ErrorKind::InvalidValue,
                list.span().start,
                format!("{label} lists no endpoints"),
                Some("name the endpoints it covers, or use [\"*\"] for all".into()),
            );
            return None;
        }
        let mut ok = true;
        let mut all = false;
        let mut names: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for entry in list.get_ref() {
            let name = entry.get_ref().as_str();
            if name == "*" {
                all = true;
            } else if declared.names.contains(name) {
                if seen.insert(name) {
                    names.push(name.to_owned());
                }
            } else {
                let budget = &mut self.suggestion_budget;
                self.diags
                    .push_with(ErrorKind::UnknownEndpoint, entry.span().start, || {
                        (
                            format!("{label} references unknown endpoint '{}'", Quoted(name)),
                            Some(declared.hint_for(name, budget)),
                        )
                    });
                ok = false;
            }
        }
        match (ok, all) {
            (false, _) => None,
            (true, true) => Some(Targets::All),
            (true, false) => Some(Targets::Named(names)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
