//! The `postern-policy` binary, run as users run it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn example_config() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/policy.toml"
    ))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postern-policy"))
        .args(args)
        .output()
        .expect("run postern-policy")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn check_accepts_the_example_config() {
    let config = example_config();
    let output = run(&["check", config.to_str().unwrap()]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.starts_with("ok: 4 endpoints, 5 rules, version sha256:"),
        "{out}"
    );
    assert_eq!(
        out.trim_end().len(),
        "ok: 4 endpoints, 5 rules, version sha256:".len() + 16
    );
}

#[test]
fn check_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[[endpoints]]\nname = \"pacs\"\nsite = \"truro\"\nhost = \"10.1.2.3\"\nport = 0\nprotocol = \"dicom\"\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"pcas\"]\n",
    )
    .unwrap();
    let output = run(&["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).is_empty());
    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    let origin = path.display();
    assert_eq!(
        lines,
        [
            format!("{origin}:5:8: error: port 0 of endpoint 'pacs' is not a valid port  (hint: use a port between 1 and 65535)"),
            format!("{origin}:12:14: error: rule 'r' references unknown endpoint 'pcas'  (hint: did you mean 'pacs'?)"),
        ]
    );
}

#[test]
fn check_reports_a_missing_file() {
    let output = run(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("/nonexistent/policy.toml: error: cannot read policy file: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn explain_prints_a_readable_decision() {
    let config = example_config();
    let output = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "locum.jones@truro.nhs.uk",
        "--groups",
        "locums,radiology-registrars",
        "--endpoint",
        "truro-reporting-pc-01",
    ]);
    assert!(output.status.success(), "a denial still exits 0");
    let out = stdout(&output);
    assert!(out.contains("effect:          deny\n"), "{out}");
    assert!(
        out.contains("rule:            no-locums-on-reporting-pcs\n"),
        "{out}"
    );
    assert!(
        out.contains("reason:          denied by rule 'no-locums-on-reporting-pcs': Locums may not use the reporting PCs\n"),
        "{out}"
    );
    assert!(
        out.contains("matched allows:  registrars-reporting\n"),
        "{out}"
    );
    assert!(
        out.contains("matched denies:  no-locums-on-reporting-pcs\n"),
        "{out}"
    );
    assert!(out.contains("policy version:  sha256:"), "{out}");
}

#[test]
fn explain_json_is_the_decision() {
    let config = example_config();
    let output = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "dr.khan@truro.nhs.uk",
        "--groups",
        "radiology-registrars",
        "--endpoint",
        "truro-pacs-web",
        "--json",
    ]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["effect"], "allow");
    assert_eq!(json["rule"], "registrars-reporting");
    assert_eq!(json["reason"], "allowed by rule 'registrars-reporting'");
    assert_eq!(json["limits"]["max_session"], "4h");
    assert_eq!(
        json["matched_allows"],
        serde_json::json!(["registrars-reporting"])
    );
    assert_eq!(json["matched_denies"], serde_json::json!([]));
    assert!(json["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
}
