//! Comparing two policies by what they decide (`postern-policy diff OLD NEW`): every inline
//! test of either policy, and a grid of sample requests built from both (each group, each named
//! user and a user in no group; each endpoint; a well-equipped and a bare client; every half
//! hour of one week).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::cases::TestCase;
use crate::eval::{Decision, DeviceFacts, Request};
use crate::model::Effect;
use crate::rule::{Check, MethodSet};
use crate::Policy;

/// Most sample requests compared; the grid's time step grows to stay under it.
const MAX_SAMPLES: usize = 2_000_000;
/// Most changes listed (the count is still exact).
const MAX_LISTED: usize = 200;

/// One request (or one family of sample requests) whose decision differs.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestChange {
    /// What was asked: the test's name and place, or a description of the sample request.
    pub request: String,
    /// The old policy's effect and deciding rule.
    pub old: (Effect, Option<String>),
    /// The new policy's effect and deciding rule.
    pub new: (Effect, Option<String>),
    /// The new policy's reason, for the first occurrence.
    pub new_reason: String,
    /// How many of the sampled instants changed the same way (1 for a test).
    pub occurrences: usize,
    /// Of how many sampled instants (1 for a test).
    pub out_of: usize,
    /// The first instant at which it changed.
    pub first_at: SystemTime,
}

/// What changes between two policies.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyDiff {
    /// Inline tests (of either policy) whose decision changes.
    pub tests: Vec<RequestChange>,
    /// Families of sample requests whose decision changes, at most a couple of hundred.
    pub samples: Vec<RequestChange>,
    /// How many families changed in all.
    pub sample_changes: usize,
    /// How many tests were compared.
    pub tests_compared: usize,
    /// How many sample requests were compared.
    pub samples_compared: usize,
}

impl PolicyDiff {
    /// Whether any decision changes.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty() && self.sample_changes == 0
    }
}

fn outcome(d: &Decision) -> (Effect, Option<String>) {
    (d.effect, d.rule.clone())
}

fn show(o: &(Effect, Option<String>)) -> String {
    match &o.1 {
        Some(rule) => format!("{} by '{rule}'", o.0),
        None => format!("{} (no rule)", o.0),
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "inline tests whose decision changes: {} of {}",
            self.tests.len(),
            self.tests_compared
        )?;
        for c in &self.tests {
            writeln!(f, "  {}: {} → {}", c.request, show(&c.old), show(&c.new))?;
            writeln!(f, "      now: {}", c.new_reason)?;
        }
        writeln!(
            f,
            "sample requests whose decision changes: {} kinds ({} requests compared)",
            self.sample_changes, self.samples_compared
        )?;
        for c in &self.samples {
            writeln!(
                f,
                "  {}: {} → {} ({} of {} sampled times, first {})",
                c.request,
                show(&c.old),
                show(&c.new),
                c.occurrences,
                c.out_of,
                humantime::format_rfc3339_seconds(c.first_at)
            )?;
            writeln!(f, "      now: {}", c.new_reason)?;
        }
        if self.samples.len() < self.sample_changes {
            writeln!(
                f,
                "  … and {} more",
                self.sample_changes - self.samples.len()
            )?;
        }
        Ok(())
    }
}

/// A sample subject: a label, a user name and claims.
struct Subject {
    label: String,
    user: String,
    groups: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
}

/// A sample client: label and facts.
struct Client {
    label: &'static str,
    device: Option<DeviceFacts>,
    source: Option<IpAddr>,
    mfa: bool,
    justification: Option<&'static str>,
}

impl Policy {
    /// What changes from `old` to `new`: inline tests of both policies, and sample requests
    /// every half hour of the week starting at `week_start`.
    pub fn diff(old: &Policy, new: &Policy, week_start: SystemTime) -> PolicyDiff {
        let mut diff = PolicyDiff::default();

        // Tests: the new policy's version of a test wins over the old one's.
        let mut cases: Vec<&TestCase> = new.tests.iter().collect();
        cases.extend(
            old.tests
                .iter()
                .filter(|t| !new.tests.iter().any(|n| n.name == t.name)),
        );
        diff.tests_compared = cases.len();
        for case in cases {
            let (a, b) = (case.decide(old), case.decide(new));
            if outcome(&a) != outcome(&b) {
                diff.tests.push(RequestChange {
                    request: format!("test '{}' ({}:{})", case.name, case.origin, case.line),
                    old: outcome(&a),
                    new: outcome(&b),
                    new_reason: b.reason,
                    occurrences: 1,
                    out_of: 1,
                    first_at: case.at,
                });
            }
        }

        // Samples.
        let subjects = sample_subjects(old, new);
        let clients = sample_clients(old, new);
        let mut endpoints: Vec<&str> = new.endpoints.iter().map(|e| e.name.as_str()).collect();
        for e in &old.endpoints {
            if !endpoints.contains(&e.name.as_str()) {
                endpoints.push(&e.name);
            }
        }
        let targets = sample_targets(old, new, &endpoints);
        let grid = subjects.len() * clients.len() * targets.len();
        let mut step = Duration::from_secs(30 * 60);
        let mut times = 7 * 48;
        while grid.saturating_mul(times) > MAX_SAMPLES && times > 1 {
            step *= 2;
            times = times.div_ceil(2);
        }
        let mut families: BTreeMap<(usize, usize, usize), Vec<RequestChange>> = BTreeMap::new();
        for (s, subject) in subjects.iter().enumerate() {
            for (c, client) in clients.iter().enumerate() {
                for (e, (endpoint, access)) in targets.iter().enumerate() {
                    for i in 0..times {
                        let at = week_start + step * u32::try_from(i).unwrap_or(0);
                        let mut req = Request::new(&subject.user, &subject.groups, endpoint, at);
                        req = match access {
                            WebSample::Plain | WebSample::Tunnel => req,
                            WebSample::Session => req.with_web_session(),
                            WebSample::Request(method, path) => req.with_web_request(method, path),
                        };
                        for (claim, values) in &subject.claims {
                            req = req.with_claim(claim, values);
                        }
                        if let Some(device) = &client.device {
                            req = req.with_device(device);
                        }
                        if let Some(source) = client.source {
                            req = req.with_source(source);
                        }
                        if client.device.is_some() {
                            req =
                                req.with_auth(client.mfa, at.checked_sub(Duration::from_secs(600)));
                        }
                        if let Some(j) = client.justification {
                            req = req.with_justification(j);
                        }
                        diff.samples_compared += 1;
                        let (a, b) = (old.evaluate(&req), new.evaluate(&req));
                        let (oa, ob) = (outcome(&a), outcome(&b));
                        if oa == ob {
                            continue;
                        }
                        let family = families.entry((s, c, e)).or_default();
                        match family.iter_mut().find(|f| f.old == oa && f.new == ob) {
                            Some(f) => f.occurrences += 1,
                            None => family.push(RequestChange {
                                request: format!(
                                    "{} → {endpoint}{}, {}",
                                    subject.label,
                                    access.label(),
                                    client.label
                                ),
                                old: oa,
                                new: ob,
                                new_reason: b.reason,
                                occurrences: 1,
                                out_of: times,
                                first_at: at,
                            }),
                        }
                    }
                }
            }
        }
        for change in families.into_values().flatten() {
            diff.sample_changes += 1;
            if diff.samples.len() < MAX_LISTED {
                diff.samples.push(change);
            }
        }
        diff
    }
}

/// How a sample request uses its endpoint.
enum WebSample {
    /// A tunnel, in a comparison where no rule has `methods` or `paths` (labelled as before).
    Plain,
    Tunnel,
    Session,
    Request(&'static str, String),
}

impl WebSample {
    fn label(&self) -> String {
        match self {
            WebSample::Plain => String::new(),
            WebSample::Tunnel => " (tunnel)".into(),
            WebSample::Session => " (web session)".into(),
            WebSample::Request(method, path) => format!(" (web request {method} {path})"),
        }
    }
}

/// The (endpoint, access) pairs to sample. When either policy has a rule with `methods` or
/// `paths`, each web endpoint is also sampled as a web session and as web requests: every
/// method either policy names (and GET and POST), on every prefix either names (and "/").
fn sample_targets<'e>(
    old: &Policy,
    new: &Policy,
    endpoints: &[&'e str],
) -> Vec<(&'e str, WebSample)> {
    let mut methods = MethodSet::default();
    methods.insert("GET");
    methods.insert("POST");
    let mut paths: Vec<String> = vec!["/".into()];
    let mut web_rules = false;
    for policy in [new, old] {
        for rule in &policy.rules {
            for c in &rule.conditions {
                match &c.check {
                    Check::Methods {
                        methods: listed, ..
                    } => {
                        web_rules = true;
                        for m in listed.iter() {
                            methods.insert(m);
                        }
                    }
                    Check::Paths { prefixes, .. } => {
                        web_rules = true;
                        for p in prefixes.iter() {
                            if !paths.iter().any(|q| **q == **p) {
                                paths.push(p.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let is_web = |name: &str| {
        [new, old]
            .iter()
            .any(|p| p.endpoint(name).is_some_and(|e| e.protocol.is_web()))
    };
    let mut targets = Vec::new();
    for &endpoint in endpoints {
        if !web_rules || !is_web(endpoint) {
            targets.push((endpoint, WebSample::Plain));
            continue;
        }
        targets.push((endpoint, WebSample::Tunnel));
        targets.push((endpoint, WebSample::Session));
        for method in methods.iter() {
            for path in &paths {
                targets.push((endpoint, WebSample::Request(method, path.clone())));
            }
        }
    }
    targets
}

fn sample_subjects(old: &Policy, new: &Policy) -> Vec<Subject> {
    let mut subjects = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for policy in [new, old] {
        for group in &policy.groups {
            if !seen.insert(format!("g:{}", group.name)) {
                continue;
            }
            let user = group
                .users
                .first()
                .cloned()
                .unwrap_or_else(|| format!("member-of-{}@sample.invalid", group.name));
            let (groups, claims) = match group.values.first() {
                Some(v) if group.claim == "groups" => (vec![v.clone()], Vec::new()),
                Some(v) => (Vec::new(), vec![(group.claim.clone(), vec![v.clone()])]),
                None => (Vec::new(), Vec::new()),
            };
            subjects.push(Subject {
                label: format!("a member of group '{}'", group.name),
                user,
                groups,
                claims,
            });
        }
        for user in policy.index_users() {
            if seen.insert(format!("u:{user}")) {
                subjects.push(Subject {
                    label: format!("user '{user}'"),
                    user: user.to_owned(),
                    groups: Vec::new(),
                    claims: Vec::new(),
                });
            }
        }
    }
    subjects.push(Subject {
        label: "a user in no group".into(),
        user: "nobody@sample.invalid".into(),
        groups: Vec::new(),
        claims: Vec::new(),
    });
    subjects
}

fn sample_clients(old: &Policy, new: &Policy) -> Vec<Client> {
    // The well-equipped client satisfies every posture requirement it can (the first accepted
    // value of each fact) and comes from the first network a rule allows.
    let mut posture = BTreeMap::new();
    let mut source = None;
    for policy in [new, old] {
        for rule in &policy.rules {
            for c in &rule.conditions {
                match &c.check {
                    Check::Posture { key, values } => {
                        if let Some(v) = values.first() {
                            posture.entry(key.clone()).or_insert_with(|| v.clone());
                        }
                    }
                    Check::Source { allow, .. } if source.is_none() => {
                        source = allow.first().map(|n| n.network());
                    }
                    _ => {}
                }
            }
        }
    }
    vec![
        Client {
            label: "approved device with MFA and justification",
            device: Some(DeviceFacts {
                registered: true,
                approved: true,
                user_verified: true,
                posture,
            }),
            source,
            mfa: true,
            justification: Some("sample"),
        },
        Client {
            label: "unregistered device without MFA",
            device: Some(DeviceFacts::default()),
            source,
            mfa: false,
            justification: None,
        },
        Client {
            label: "no device facts",
            device: None,
            source: None,
            mfa: false,
            justification: None,
        },
    ]
}
