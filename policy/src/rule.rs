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
    /// `methods = [...]`: web requests with one of these methods. `deny` is the rule's effect,
    /// which decides the outcome for a whole web session (see `eval::check`).
    Methods {
        methods: MethodSet,
        deny: bool,
    },
    /// `paths = [...]`: web requests whose path starts with one of these prefixes.
    Paths {
        prefixes: Box<[Box<str>]>,
        deny: bool,
    },
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
            Check::Methods { .. } => "methods".into(),
            Check::Paths { .. } => "paths".into(),
        }
    }

    /// Whether the check restricts web requests (`methods`, `paths`).
    pub(crate) fn is_web(&self) -> bool {
        matches!(self, Check::Methods { .. } | Check::Paths { .. })
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

/// A rule's DICOM keys, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RuleDicom {
    /// `dicom_services`, in the order of [`crate::DICOM_SERVICES`]; `None`: the default
    /// (everything but `store`).
    pub(crate) services: Option<Vec<&'static str>>,
    /// `calling_ae`: AE titles, prefixes ending in `*`, and [`USER_AE`]; `None`: any title.
    pub(crate) calling_ae: Option<Vec<String>>,
}

/// The `calling_ae` entry that stands for the user's own AE titles: the policy's
/// `[dicom] ae_titles` for the user and the identity provider's AE title claim.
pub(crate) const USER_AE: &str = "{user.ae}";

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
    /// DICOM: what an allow rule lets the clinician's side do on the associations of a DICOM
    /// endpoint (`dicom_services`, `calling_ae`).
    pub(crate) dicom: RuleDicom,
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

/// The HTTP methods a rule's `methods` accepts, in the order they are listed in messages.
pub(crate) const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A set of [`METHODS`], one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MethodSet(u8);

impl MethodSet {
    /// The bit of a method written exactly as in [`METHODS`].
    fn bit(method: &str) -> Option<u8> {
        METHODS.iter().position(|m| *m == method).map(|i| 1u8 << i)
    }

    /// Adds `method`; `false` if it is not one of [`METHODS`].
    pub(crate) fn insert(&mut self, method: &str) -> bool {
        match Self::bit(method) {
            Some(bit) => {
                self.0 |= bit;
                true
            }
            None => false,
        }
    }

    /// Whether `method` (exact, upper case) is in the set.
    pub(crate) fn contains(self, method: &str) -> bool {
        Self::bit(method).is_some_and(|bit| self.0 & bit != 0)
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = &'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
    }
}

/// "GET, HEAD".
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, method) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(method)?;
        }
        Ok(())
    }
}

/// Longest path prefix in a rule's `paths`, in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 256;
/// Most prefixes in a rule's `paths`.
pub(crate) const MAX_PATHS: usize = 64;

/// Whether `path` is under `prefix`: a prefix that ends in '/' takes every path that starts
/// with it; one that does not takes the path itself and the paths below it ("/dicom-web"
/// takes "/dicom-web" and "/dicom-web/studies", not "/dicom-webx").
pub(crate) fn path_under(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// What is wrong with a path written in a policy or sent in a request, if anything: it must
/// start with '/', hold no query or fragment, no '.' or '..' segment, no "//", no backslash, no
/// whitespace or control character, and no percent-encoding of a character that needs none
/// (letters, digits, "-", ".", "_", "~") or of '/' — two spellings of one path would let a
/// request past a prefix that the application sees it is under.
pub(crate) fn path_problem(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("does not start with '/'");
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'?' => return Some("has a query ('?')"),
            b'#' => return Some("has a fragment ('#')"),
            b'\\' => return Some("has a backslash"),
            b'/' if bytes.get(i + 1) == Some(&b'/') => return Some("has an empty segment ('//')"),
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Some("has a '%' that is not followed by two hex digits");
                };
                let decoded = u8::try_from(hi * 16 + lo).unwrap_or(0);
                if decoded == b'/' || decoded == b'\\' {
                    return Some("has a percent-encoded '/' or '\\'");
                }
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                    return Some(
                        "percent-encodes a character that needs no encoding (such as %2E for '.')",
                    );
                }
                i += 2;
            }
            b if b <= b' ' || b == 0x7f => return Some("has a space or control character"),
            _ => {}
        }
        i += 1;
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("has a '.' or '..' segment");
    }
    None
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
    fn path_prefixes_match_on_segment_boundaries() {
        assert!(path_under("/dicom-web", "/dicom-web"));
        assert!(path_under("/dicom-web", "/dicom-web/"));
        assert!(path_under("/dicom-web", "/dicom-web/studies"));
        assert!(!path_under("/dicom-web", "/dicom-webx"));
        assert!(!path_under("/dicom-web", "/dicom-we"));
        assert!(!path_under("/dicom-web", "/"));
        assert!(path_under("/dicom-web/", "/dicom-web/studies"));
        assert!(path_under("/dicom-web/", "/dicom-web/"));
        assert!(!path_under("/dicom-web/", "/dicom-web"));
        assert!(path_under("/app/explorer", "/app/explorer/x.js"));
        assert!(!path_under("/app/explorer", "/app/explorer.html"));
        assert!(path_under("/", "/anything/at/all"));
        assert!(path_under("/", "/"));
        assert!(!path_under("/a", "/A"));
    }

    #[test]
    fn path_problems_are_named() {
        for good in [
            "/",
            "/dicom-web/",
            "/app/explorer.html",
            "/a%20b",
            "/%C3%A9",
            "/a/b-c_d~e",
            "/v1.2/x",
        ] {
            assert_eq!(path_problem(good), None, "{good}");
        }
        for (bad, problem) in [
            ("", "does not start with '/'"),
            ("dicom-web/", "does not start with '/'"),
            ("*", "does not start with '/'"),
            ("/a?b=1", "has a query ('?')"),
            ("/a#top", "has a fragment ('#')"),
            ("/a//b", "has an empty segment ('//')"),
            ("//", "has an empty segment ('//')"),
            ("/a/../b", "has a '.' or '..' segment"),
            ("/a/./b", "has a '.' or '..' segment"),
            ("/a/..", "has a '.' or '..' segment"),
            ("/.", "has a '.' or '..' segment"),
            ("/a%2Fb", "has a percent-encoded '/' or '\\'"),
            ("/a%2fb", "has a percent-encoded '/' or '\\'"),
            ("/a%5cb", "has a percent-encoded '/' or '\\'"),
            (
                "/%2e%2e/b",
                "percent-encodes a character that needs no encoding (such as %2E for '.')",
            ),
            (
                "/%61dmin",
                "percent-encodes a character that needs no encoding (such as %2E for '.')",
            ),
            ("/a%2", "has a '%' that is not followed by two hex digits"),
            ("/a%zz", "has a '%' that is not followed by two hex digits"),
            ("/a\\b", "has a backslash"),
            ("/a b", "has a space or control character"),
            ("/a\tb", "has a space or control character"),
        ] {
            assert_eq!(path_problem(bad), Some(problem), "{bad:?}");
        }
    }

    #[test]
    fn method_sets_keep_the_documented_order() {
        let mut set = MethodSet::default();
        assert_eq!(set.to_string(), "");
        assert!(set.insert("HEAD"));
        assert!(set.insert("GET"));
        assert!(set.insert("GET"));
        assert!(!set.insert("get"));
        assert!(!set.insert("TRACE"));
        assert_eq!(set.to_string(), "GET, HEAD");
        assert!(set.contains("GET"));
        assert!(!set.contains("POST"));
        assert!(!set.contains("get"));
        assert!(!set.contains(""));
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
