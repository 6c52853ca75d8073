//! Compiled rules, groups and conditions: what a policy means once every value has been checked.
//! Crate-internal; the evaluator (`eval`) reads them, `resolve` builds them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::model::{Effect, Egress};
use crate::schedule::Schedule;

/// A named set of users: everyone whose IdP claim `claim` carries one of `values`, plus the
/// listed users.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) claim: String,
    pub(crate) values: Vec<String>,
    /// ASCII-lowercased user names.
    pub(crate) users: Vec<String>,
    /// Made up from a name a rule used, in a policy that defines no `[[groups]]`.
    pub(crate) implicit: bool,
}

/// Which endpoints a rule covers, after patterns, labels and egress were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every endpoint (`endpoints = ["*"]` with no other filter).
    All,
    /// These endpoint positions, ascending, without repeats (possibly none).
    Some(Vec<u32>),
}

impl Selection {
    pub(crate) fn contains(&self, position: u32) -> bool {
        match self {
            Selection::All => true,
            Selection::Some(list) => list.binary_search(&position).is_ok(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Selection::Some(list) if list.is_empty())
    }
}

/// What a rule's endpoint keys said, kept to explain and format the rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    /// Names and patterns as written; `None` when `endpoints` is absent.
    pub(crate) endpoints: Option<Vec<String>>,
    pub(crate) labels: Vec<String>,
    pub(crate) egress: Option<Egress>,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(endpoints) = &self.endpoints {
            parts.push(format!("endpoints {}", endpoints.join(", ")));
        }
        if !self.labels.is_empty() {
            parts.push(format!("labelled {}", self.labels.join(" or ")));
        }
        if let Some(egress) = self.egress {
            parts.push(format!("with {egress} egress"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Who a rule is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subjects {
    /// `groups = ["*"]`: every authenticated user.
    pub(crate) everyone: bool,
    /// Group ids, ascending.
    pub(crate) groups: Vec<u32>,
    /// User ids, ascending.
    pub(crate) users: Vec<u32>,
}

impl Subjects {
    /// Whether every user these subjects cover is also covered by `other` (judged from the
    /// policy text: two different groups may have the same members, which cannot be known).
    pub(crate) fn within(&self, other: &Subjects) -> bool {
        other.everyone
            || (!self.everyone
                && is_subset(&self.groups, &other.groups)
                && is_subset(&self.users, &other.users))
    }
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    let mut j = 0;
    for x in a {
        while b.get(j).is_some_and(|y| y < x) {
            j += 1;
        }
        if b.get(j) != Some(x) {
            return false;
        }
    }
    true
}

/// One check a rule makes on a request.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// `valid_from` / `valid_until`, as Unix seconds (from inclusive, until exclusive), with the
    /// text written in the policy for reasons.
    Valid {
        from: Option<(i64, String)>,
        until: Option<(i64, String)>,
    },
    /// Weekly windows.
    Windows(Arc<Schedule>),
    /// Source networks: inside one of `allow` (when given) and outside every `deny`.
    Source {
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
    },
    /// `auth.mfa`: whether the sign-in used MFA must equal this.
    Mfa(bool),
    /// `auth.max_age`: the sign-in must be at most this old.
    MaxAge(Duration),
    /// `device.registered`, `device.approved`, `device.user_verified`.
    Registered(bool),
    Approved(bool),
    UserVerified(bool),
    /// `device.posture.KEY`: the fact must have one of these values.
    Posture {
        key: String,
        values: Vec<String>,
    },
    /// `require_justification = true`: the request must carry a justification. Always enforced.
    Justification,
}

impl Check {
    /// The name `report_only` uses for the check.
    pub(crate) fn name(&self) -> String {
        match self {
            Check::Valid { .. } => "valid".into(),
            Check::Windows(_) => "windows".into(),
            Check::Source { .. } => "source".into(),
            Check::Mfa(_) => "auth.mfa".into(),
            Check::MaxAge(_) => "auth.max_age".into(),
            Check::Registered(_) => "device.registered".into(),
            Check::Approved(_) => "device.approved".into(),
            Check::UserVerified(_) => "device.user_verified".into(),
            Check::Posture { key, .. } => format!("device.posture.{key}"),
            Check::Justification => "require_justification".into(),
        }
    }

    /// Whether the outcome can change with time alone (for the same request).
    pub(crate) fn is_timed(&self) -> bool {
        matches!(
            self,
            Check::Valid { .. } | Check::Windows(_) | Check::MaxAge(_)
        )
    }
}

/// A check and whether it is enforced or only reported.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) check: Check,
    /// `report_only`: evaluated and reported when it fails, but the rule behaves as if the
    /// condition were not written.
    pub(crate) report: bool,
}

/// Limits an allow rule grants with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RuleLimits {
    pub(crate) max_session: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) resume_grace: Duration,
    pub(crate) require_justification: bool,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: String,
    pub(crate) effect: Effect,
    pub(crate) description: Option<String>,
    pub(crate) subjects: Subjects,
    pub(crate) selector: Selector,
    pub(crate) selection: Selection,
    /// In the order they are evaluated (and reported).
    pub(crate) conditions: Vec<Condition>,
    /// For allow rules; default for deny rules.
    pub(crate) limits: RuleLimits,
    /// "allowed by rule 'x'" / "denied by rule 'x': description", built once.
    pub(crate) reason: String,
    /// Where the rule is written: file number and 1-based line.
    pub(crate) file: usize,
    pub(crate) line: usize,
}

impl Rule {
    /// Whether the rule has no enforced condition (time, device, …): it applies to every request
    /// of its subjects for its endpoints.
    pub(crate) fn is_unconditional(&self) -> bool {
        self.conditions.iter().all(|c| c.report)
    }
}

/// Glob match of an endpoint name against a pattern where `*` matches any run of characters.
/// Linear in practice: the classic single-backtrack algorithm.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p.get(i..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_match("*", "truro-pacs"));
        assert!(glob_match("*", ""));
        assert!(glob_match("truro-*", "truro-pacs-dicom"));
        assert!(glob_match("*-dicom", "truro-pacs-dicom"));
        assert!(glob_match("*pacs*", "truro-pacs-dicom"));
        assert!(glob_match("t*o-p*s-dicom", "truro-pacs-dicom"));
        assert!(!glob_match("truro-*", "penzance-pacs"));
        assert!(!glob_match("*-web", "truro-pacs-dicom"));
        assert!(glob_match("a*a*a*b", "aaaaaaaaaaaaaaaab"));
        assert!(!glob_match("a*a*a*b", "aaaaaaaaaaaaaaaaa"));
        assert!(glob_match("pacs", "pacs"));
        assert!(!glob_match("pacs", "pacs2"));
    }

    #[test]
    fn subjects_within() {
        let s = |everyone, groups: &[u32], users: &[u32]| Subjects {
            everyone,
            groups: groups.to_vec(),
            users: users.to_vec(),
        };
        assert!(s(false, &[1], &[]).within(&s(false, &[1, 2], &[])));
        assert!(s(false, &[1], &[4]).within(&s(false, &[1], &[3, 4])));
        assert!(!s(false, &[1], &[4]).within(&s(false, &[1], &[3])));
        assert!(!s(false, &[0], &[]).within(&s(false, &[1, 2], &[])));
        assert!(s(true, &[], &[]).within(&s(true, &[], &[])));
        assert!(!s(true, &[], &[]).within(&s(false, &[1], &[])));
        assert!(s(false, &[7], &[]).within(&s(true, &[], &[])));
    }
}
