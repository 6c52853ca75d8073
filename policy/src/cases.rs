//! Inline test cases (`[[tests]]`): requests with the decision the policy's authors expect,
//! run by `postern-policy test` in the trust's CI and by `diff` to compare two policies.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::eval::{Decision, DeviceFacts, Request};
use crate::model::Effect;
use crate::Policy;

/// One `[[tests]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    /// The test's name, unique in the policy.
    pub name: String,
    /// The file it is written in.
    pub origin: String,
    /// The line of its `[[tests]]` header.
    pub line: usize,
    /// The user name.
    pub user: String,
    /// Values of the `groups` claim.
    pub groups: Vec<String>,
    /// Other claims: name and values.
    pub claims: Vec<(String, Vec<String>)>,
    /// The endpoint asked for.
    pub endpoint: String,
    /// The port asked for, if any.
    pub port: Option<u16>,
    /// The web request's method (`method = "GET"`); with [`TestCase::path`], the test is one
    /// web request ([`Request::with_web_request`]).
    pub method: Option<String>,
    /// The web request's path (`path = "/dicom-web/studies"`), given with the method.
    pub path: Option<String>,
    /// `web_session = true`: the test is a web application session as a whole
    /// ([`Request::with_web_session`]). Without it and without a method and path, a tunnel.
    pub web_session: bool,
    /// DICOM: the calling AE title the association presents (`calling_ae = "RAD_JONES"`); the
    /// test then also checks the decision's grant, as the connector would.
    pub calling_ae: Option<String>,
    /// DICOM: the DIMSE service used (`dicom_service = "store"`), checked against the grant.
    pub dicom_service: Option<String>,
    /// The AE titles the identity provider gives the user (`ae_titles = ["RAD_JONES"]`).
    pub ae_titles: Vec<String>,
    /// When.
    pub at: SystemTime,
    /// The client address, if the test gives one.
    pub source: Option<IpAddr>,
    /// Device facts, if the test gives them.
    pub device: Option<DeviceFacts>,
    /// (MFA used, sign-in time), if the test gives `mfa` or `signed_in_ago`.
    pub auth: Option<(bool, Option<SystemTime>)>,
    /// The break-glass justification, if any.
    pub justification: Option<String>,
    /// The expected effect.
    pub expect: Effect,
    /// The expected deciding rule, if the test names one.
    pub rule: Option<String>,
    /// Text the reason must contain, if the test gives it.
    pub reason_contains: Option<String>,
}

impl TestCase {
    /// The request the test describes.
    pub fn request(&self) -> Request<'_> {
        let mut req = Request::new(&self.user, &self.groups, &self.endpoint, self.at)
            .with_ae_titles(&self.ae_titles);
        for (claim, values) in &self.claims {
            req = req.with_claim(claim, values);
        }
        if let Some(port) = self.port {
            req = req.with_port(port);
        }
        if let Some(source) = self.source {
            req = req.with_source(source);
        }
        if let Some(device) = &self.device {
            req = req.with_device(device);
        }
        if let Some((mfa, auth_time)) = self.auth {
            req = req.with_auth(mfa, auth_time);
        }
        if let Some(justification) = &self.justification {
            req = req.with_justification(justification);
        }
        if let (Some(method), Some(path)) = (&self.method, &self.path) {
            req = req.with_web_request(method, path);
        } else if self.web_session {
            req = req.with_web_session();
        }
        req
    }

    /// What `policy` decides for the test's request, with the DICOM association it describes
    /// (`calling_ae`, `dicom_service`) checked against the grant as the connector would.
    pub fn decide(&self, policy: &Policy) -> Decision {
        policy
            .evaluate(&self.request())
            .for_dicom(self.calling_ae.as_deref(), self.dicom_service.as_deref())
    }

    /// Why `decision` does not meet the expectation, or `None` if it does.
    pub fn failure(&self, decision: &Decision) -> Option<String> {
        if decision.effect != self.expect {
            return Some(format!(
                "expected {}, got {} ({})",
                self.expect, decision.effect, decision.reason
            ));
        }
        if let Some(rule) = &self.rule {
            if decision.rule.as_deref() != Some(rule.as_str()) {
                return Some(format!(
                    "expected rule '{rule}', got {} ({})",
                    decision
                        .rule
                        .as_deref()
                        .map_or("no rule".to_owned(), |r| format!("rule '{r}'")),
                    decision.reason
                ));
            }
        }
        if let Some(text) = &self.reason_contains {
            if !decision.reason.contains(text.as_str()) {
                return Some(format!(
                    "expected the reason to contain \"{text}\", got \"{}\"",
                    decision.reason
                ));
            }
        }
        None
    }
}

/// The result of one inline test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    /// The test.
    pub case: TestCase,
    /// What the policy decided.
    pub decision: Decision,
    /// Why the test failed, or `None` if it passed.
    pub failure: Option<String>,
}

impl TestOutcome {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Every inline test's outcome, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReport {
    /// One per test.
    pub outcomes: Vec<TestOutcome>,
}

impl TestReport {
    /// How many tests passed.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed()).count()
    }

    /// How many tests failed.
    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }
}

/// A table for people: one line per test, failures explained, and a closing
/// `N passed, N failed` line.
impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self
            .outcomes
            .iter()
            .map(|o| o.case.name.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 60);
        writeln!(
            f,
            "{:<6} {:<name_width$} {:<6} {:<6} RULE",
            "RESULT", "TEST", "EXPECT", "GOT"
        )?;
        for o in &self.outcomes {
            let name: String = o.case.name.chars().take(name_width).collect();
            writeln!(
                f,
                "{:<6} {:<name_width$} {:<6} {:<6} {}",
                if o.passed() { "ok" } else { "FAIL" },
                name,
                o.case.expect.as_str(),
                o.decision.effect.as_str(),
                o.decision.rule.as_deref().unwrap_or("-")
            )?;
            if let Some(failure) = &o.failure {
                writeln!(f, "       {}:{}: {failure}", o.case.origin, o.case.line)?;
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

impl Policy {
    /// The inline tests, in file order.
    pub fn tests(&self) -> &[TestCase] {
        &self.tests
    }

    /// Runs every inline test against this policy.
    pub fn run_tests(&self) -> TestReport {
        self.run_cases(&self.tests)
    }

    /// Runs test cases (this policy's or another's) against this policy.
    pub fn run_cases(&self, cases: &[TestCase]) -> TestReport {
        TestReport {
            outcomes: cases
                .iter()
                .map(|case| {
                    let decision = case.decide(self);
                    TestOutcome {
                        failure: case.failure(&decision),
                        case: case.clone(),
                        decision,
                    }
                })
                .collect(),
        }
    }
}
