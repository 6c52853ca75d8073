//! Stage 3: answering requests. The rule index is built once when a policy loads; evaluating a
//! request touches only the rules that can apply to its endpoint.

use std::fmt;
use std::time::Duration;

use crate::model::{user_key, Effect, Rule};
use crate::resolve::Targets;
use crate::text::{bounded_list, Quoted};
use crate::Policy;

/// How many of the requester's groups a "no rule allows" reason lists.
const REASON_GROUPS_MAX: usize = 20;

/// Who wants to reach what, and when. Built by the gateway from the authenticated session.
///
/// Construct it with [`Request::new`]; facts added later (device posture, source address,
/// authentication strength) come with builder methods, so callers keep compiling as it grows.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The authenticated user name (normally an e-mail address).
    pub user: &'a str,
    /// The user's groups, as mapped from IdP claims.
    pub groups: &'a [String],
    /// The endpoint name the user asked for.
    pub endpoint: &'a str,
    /// When the request is evaluated. The evaluator never reads the clock itself.
    pub at: std::time::SystemTime,
}

impl<'a> Request<'a> {
    /// A request by `user` (with `groups`) for `endpoint`, evaluated as of `at`.
    pub fn new(
        user: &'a str,
        groups: &'a [String],
        endpoint: &'a str,
        at: std::time::SystemTime,
    ) -> Request<'a> {
        Request {
            user,
            groups,
            endpoint,
            at,
        }
    }
}

/// Limits attached to an allow decision.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Limits {
    /// How long a session may last before the gateway closes it. Serialized in humantime form
    /// (`"4h"`), the same way the policy file writes it, or `null`.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub max_session: Option<Duration>,
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
    /// [`Policy::version`] of the policy that decided.
    pub policy_version: String,
}

impl Decision {
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
        writeln!(f, "effect:          {}", self.effect)?;
        writeln!(
            f,
            "rule:            {}",
            self.rule.as_deref().unwrap_or("none (default deny)")
        )?;
        writeln!(f, "reason:          {}", self.reason)?;
        writeln!(f, "matched allows:  {}", list(&self.matched_allows))?;
        writeln!(f, "matched denies:  {}", list(&self.matched_denies))?;
        match self.limits.max_session {
            Some(limit) => writeln!(f, "max session:     {}", humantime::format_duration(limit))?,
            None => writeln!(f, "max session:     none")?,
        }
        write!(f, "policy version:  {}", self.policy_version)
    }
}

/// Which rules can apply to which endpoint.
///
/// `"*"` rules are kept in one list rather than copied into every endpoint's list: copying would
/// cost rules × endpoints entries (10,000 × 10,000 at the limits). Evaluation merges the two
/// sorted lists, so rules are still visited in file order without allocating.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    /// For each endpoint (same order as the policy's endpoints), the rules that name it,
    /// ascending.
    by_endpoint: Vec<Vec<usize>>,
    /// Rules that cover every endpoint, ascending.
    wildcard: Vec<usize>,
}

impl RuleIndex {
    /// Builds the index; `endpoint_index` maps a name to its position among the endpoints.
    pub(crate) fn build<'t>(
        endpoint_count: usize,
        targets: impl IntoIterator<Item = &'t Targets>,
        endpoint_index: impl Fn(&str) -> Option<usize>,
    ) -> RuleIndex {
        let mut index = RuleIndex {
            by_endpoint: vec![Vec::new(); endpoint_count],
            wildcard: Vec::new(),
        };
        for (rule, targets) in targets.into_iter().enumerate() {
            match targets {
                Targets::All => index.wildcard.push(rule),
                Targets::Named(names) => {
                    for position in names.iter().filter_map(|name| endpoint_index(name)) {
                        if let Some(list) = index.by_endpoint.get_mut(position) {
                            // Names within a rule are distinct, so `rule` is pushed at most once.
                            list.push(rule);
                        }
                    }
                }
            }
        }
        index
    }

    /// The rules that can apply to endpoint `position`, in file order.
    fn candidates(&self, position: usize) -> impl Iterator<Item = usize> + '_ {
        let named = self
            .by_endpoint
            .get(position)
            .map_or(&[][..], Vec::as_slice);
        let wildcard = self.wildcard.as_slice();
        let (mut i, mut j) = (0, 0);
        std::iter::from_fn(move || match (named.get(i), wildcard.get(j)) {
            (Some(&a), Some(&b)) if a < b => {
                i += 1;
                Some(a)
            }
            (_, Some(&b)) => {
                j += 1;
                Some(b)
            }
            (Some(&a), None) => {
                i += 1;
                Some(a)
            }
            (None, None) => None,
        })
    }
}

impl Policy {
    /// Decides a request: default deny, deny overrides allow.
    ///
    /// * Unknown endpoint: deny, no rule.
    /// * Any matching deny rule: deny by the first one in file order.
    /// * Otherwise any matching allow rule: allow by the first one, with its limits.
    /// * Otherwise: deny, no rule.
    ///
    /// A rule matches when the request's user is among its `users` (ASCII case-insensitive) or
    /// any of the request's groups is among its `groups` (exact), and it covers the endpoint.
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

        let user = user_key(req.user);
        let mut first_allow: Option<&Rule> = None;
        let mut first_deny: Option<&Rule> = None;
        let mut matched_allows = Vec::new();
        let mut matched_denies = Vec::new();
        for rule in self
            .index
            .candidates(position)
            .filter_map(|i| self.rules.get(i))
            .filter(|rule| rule.matches_subject(&user, req.groups))
        {
            match rule.effect {
                Effect::Allow => {
                    first_allow.get_or_insert(rule);
                    matched_allows.push(rule.id.clone());
                }
                Effect::Deny => {
                    first_deny.get_or_insert(rule);
                    matched_denies.push(rule.id.clone());
                }
            }
        }

        if let Some(rule) = first_deny {
            let reason = match &rule.description {
                Some(description) => format!("denied by rule '{}': {description}", rule.id),
                None => format!("denied by rule '{}'", rule.id),
            };
            return self.deny(
                Some(rule.id.clone()),
                reason,
                matched_allows,
                matched_denies,
            );
        }
        if let Some(rule) = first_allow {
            return Decision {
                effect: Effect::Allow,
                rule: Some(rule.id.clone()),
                reason: format!("allowed by rule '{}'", rule.id),
                limits: Limits {
                    max_session: rule.max_session,
                },
                matched_allows,
                matched_denies,
                policy_version: self.version.clone(),
            };
        }
        let groups = if req.groups.is_empty() {
            "none".to_owned()
        } else {
            bounded_list(req.groups.iter().map(String::as_str), REASON_GROUPS_MAX)
        };
        self.deny(
            None,
            format!(
                "no rule allows user '{}' (groups: {groups}) to reach '{}'",
                Quoted(req.user),
                Quoted(req.endpoint)
            ),
            matched_allows,
            matched_denies,
        )
    }

    fn deny(
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
            policy_version: self.version.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(targets: &[Targets], endpoints: &[&str]) -> RuleIndex {
        RuleIndex::build(endpoints.len(), targets, |name| {
            endpoints.iter().position(|e| *e == name)
        })
    }

    #[test]
    fn candidates_merge_named_and_wildcard_rules_in_file_order() {
        let targets = [
            Targets::Named(vec!["a".into()]),
            Targets::All,
            Targets::Named(vec!["b".into(), "a".into()]),
            Targets::All,
            Targets::Named(vec!["b".into()]),
        ];
        let index = index(&targets, &["a", "b", "c"]);
        assert_eq!(index.candidates(0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(index.candidates(1).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(index.candidates(2).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(index.candidates(9).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn limits_serialize_as_humantime() {
        let limits = Limits {
            max_session: Some(Duration::from_secs(4 * 3600 + 1800)),
        };
        assert_eq!(
            serde_json::to_string(&limits).unwrap(),
            r#"{"max_session":"4h 30m"}"#
        );
        assert_eq!(
            serde_json::to_string(&Limits::default()).unwrap(),
            r#"{"max_session":null}"#
        );
    }
}
