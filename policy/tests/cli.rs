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
    let prefix = "ok: 7 endpoints, 11 rules, 28 tests, version sha256:";
    assert!(out.starts_with(prefix), "{out}");
    assert_eq!(out.trim_end().len(), prefix.len() + 16);
    assert!(
        stderr(&output).is_empty(),
        "no warnings: {}",
        stderr(&output)
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
fn explain_prints_the_decision_and_its_trace() {
    let config = example_config();
    let output = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "locum.jones@truro.nhs.uk",
        "--groups",
        "Radiology-Locums,Radiology-Registrars",
        "--endpoint",
        "truro-pacs-dicom",
        "--at",
        "2025-03-04T12:00",
        "--mfa",
        "--device-fact",
        "approved=true",
    ]);
    assert!(output.status.success(), "a denial still exits 0");
    let out = stdout(&output);
    assert!(out.contains("effect:          deny\n"), "{out}");
    assert!(out.contains("rule:            locums-no-data\n"), "{out}");
    assert!(
        out.contains("reason:          denied by rule 'locums-no-data': Locums may use display-only endpoints only\n"),
        "{out}"
    );
    assert!(out.contains("matched allows:  registrars-data\n"), "{out}");
    assert!(out.contains("matched denies:  locums-no-data\n"), "{out}");
    assert!(out.contains("valid until:     no time limit\n"), "{out}");
    assert!(out.contains("policy version:  sha256:"), "{out}");
    assert!(
        out.contains("  matched allow registrars-data (")
            && out.contains(
                "windows                  met      inside Mon–Fri 08:00–20:00 Europe/London"
            ),
        "{out}"
    );
}

#[test]
fn explain_reads_facts_and_local_times() {
    let config = example_config();
    let denied = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "locum.jones@truro.nhs.uk",
        "--groups",
        "Radiology-Locums",
        "--endpoint",
        "truro-pacs-web",
        "--at",
        "2025-03-04T12:00",
        "--mfa",
    ]);
    let out = stdout(&denied);
    assert!(
        out.contains("reason:          Denied: access to truro-pacs-web for user 'locum.jones@truro.nhs.uk' is only Mon–Fri 18:00–08:00 Europe/London\n"),
        "{out}"
    );
    assert!(
        out.contains("valid until:     2025-03-04T18:00:00Z\n"),
        "{out}"
    );

    let admin = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "sam.taylor@truro.nhs.uk",
        "--endpoint",
        "penzance-pacs-dicom",
        "--at",
        "2025-03-04T12:00:00Z",
        "--from",
        "10.20.0.7",
        "--device-fact",
        "approved=true",
        "--port",
        "11113",
    ]);
    let out = stdout(&admin);
    assert!(out.contains("rule:            pacs-admin\n"), "{out}");
    assert!(out.contains("max session:     1h\n"), "{out}");

    let bad = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "a",
        "--endpoint",
        "truro-pacs-web",
        "--device-fact",
        "approved=maybe",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("takes true or false"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn explain_json_is_the_decision_with_its_trace() {
    let config = example_config();
    let output = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "dr.khan@truro.nhs.uk",
        "--groups",
        "Radiology-Registrars",
        "--endpoint",
        "truro-pacs-web",
        "--at",
        "2025-03-04T12:00:00Z",
        "--mfa",
        "--json",
    ]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let d = &json["decision"];
    assert_eq!(d["effect"], "allow");
    assert_eq!(d["rule"], "clinicians-display");
    assert_eq!(d["reason"], "allowed by rule 'clinicians-display'");
    assert_eq!(d["limits"]["max_session"], "8h");
    assert_eq!(d["limits"]["idle_timeout"], "30m");
    assert_eq!(
        d["matched_allows"],
        serde_json::json!(["clinicians-display"])
    );
    assert_eq!(d["matched_denies"], serde_json::json!([]));
    assert!(d["policy_version"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(json["rules"][0]["rule"], "clinicians-display");
    assert_eq!(json["rules"][0]["conditions"][0]["outcome"], "met");
}

#[test]
fn test_runs_the_inline_tests_and_fails_on_a_failure() {
    let config = example_config();
    let output = run(&["test", config.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let out = stdout(&output);
    assert!(out.starts_with("RESULT TEST"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        28,
        "{out}"
    );
    assert!(out.trim_end().ends_with("28 passed, 0 failed"), "{out}");

    // Break the policy: the locum's window moves to the daytime.
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(&config).unwrap().replacen(
        "windows = [\"Mon-Fri 18:00-08:00\"]",
        "windows = [\"Mon-Fri 08:00-18:00\"]",
        1,
    );
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, broken).unwrap();
    let output = run(&["test", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    assert!(
        out.contains("FAIL   locum at noon on a Tuesday is denied the Truro viewer"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("25 passed, 3 failed"), "{out}");

    // A policy without tests fails: nothing was tested.
    std::fs::write(&path, "deny_all = true\n").unwrap();
    let output = run(&["test", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no [[tests]]"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_deny_warnings_fails_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[[endpoints]]\nname = \"pacs\"\nsite = \"truro\"\nhost = \"10.1.2.3\"\nport = 104\nprotocol = \"dicom\"\n\n[[rules]]\nid = \"r\"\neffect = \"allow\"\ngroups = [\"g\"]\nendpoints = [\"penzance-*\"]\n",
    )
    .unwrap();
    let output = run(&["check", path.to_str().unwrap()]);
    assert!(output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(
            ":12:14: warning: endpoint pattern 'penzance-*' of rule 'r' matches no endpoint"
        ),
        "{err}"
    );
    let output = run(&["check", "--deny-warnings", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn fmt_rewrites_and_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[[rules]]\nendpoints=['a']\n  id = \"r\"   # the rule\n",
    )
    .unwrap();
    let output = run(&["fmt", "--check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("not formatted"));
    let output = run(&["fmt", path.to_str().unwrap()]);
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[[rules]]\nid = \"r\"  # the rule\nendpoints = [\"a\"]\n"
    );
    let output = run(&["fmt", "--check", path.to_str().unwrap()]);
    assert!(output.status.success());
    // The example configuration is formatted.
    let output = run(&["fmt", "--check", example_config().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout(&output));
}

#[test]
fn diff_reports_changed_tests_and_samples() {
    let config = example_config();
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "max_age = \"12h\"",
        "max_age = \"1h\"",
        1,
    );
    std::fs::write(&new, text).unwrap();
    let output = run(&[
        "diff",
        config.to_str().unwrap(),
        new.to_str().unwrap(),
        "--week-of",
        "2025-03-03T00:00:00Z",
    ]);
    assert_eq!(output.status.code(), Some(1), "changes found: exit 1");
    let out = stdout(&output);
    assert!(
        out.starts_with("inline tests whose decision changes: 1 of 28\n"),
        "{out}"
    );
    assert!(
        out.contains("test 'consultant pulls images from an approved laptop'"),
        "{out}"
    );
    assert!(
        out.contains("allow by 'consultants-data' → deny (no rule)"),
        "{out}"
    );
    let same = run(&["diff", config.to_str().unwrap(), config.to_str().unwrap()]);
    assert!(same.status.success(), "{}", stdout(&same));
}

/// Inputs the fuzzers flagged, kept as regression tests: the `fuzz-*` files of `tests/fixtures`
/// and every reproducer in `fuzz/regressions/format` (which `bench/fuzz` replays too), so a
/// reproducer added there is run here without further change. `fuzz-format-slow-1.toml` (a
/// mangled copy of the example policy, with NUL bytes) was reported as a timeout while the
/// machine was overloaded; it formats in milliseconds, and must keep doing so, idempotently.
/// `fuzz-format-commented-empty-array.toml` (found by `bench/fuzz policy/format`, 2026-12-04): a
/// key whose value is an empty array followed by a long comment was broken over lines on the
/// second pass, because the width check counted the comment the first pass had attached.
/// `fuzz-format-comment-in-nested-array.toml` (same run): an array holding a commented array was
/// broken over lines, and the next pass joined it again; an array with a comment anywhere inside
/// is now left as written.
/// `fuzz-format-line-end-whitespace-in-multiline-string.toml` (the rerun): nested arrays holding
/// a multi-line string with tabs at the end of a line; the first pass measured the arrays with
/// the tabs and broke them over lines, then removed the tabs with the rest of the line-end
/// whitespace (changing the string), and the second pass found the arrays short enough for one
/// line. Whitespace inside a multi-line string is now kept.
#[test]
fn fuzz_regressions_format_and_parse_quickly() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    for (dir, prefix) in [
        (PathBuf::from(manifest).join("tests/fixtures"), "fuzz-"),
        (PathBuf::from(manifest).join("fuzz/regressions/format"), ""),
    ] {
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(prefix)
            {
                continue;
            }
            seen += 1;
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let started = std::time::Instant::now();
            if let Ok(once) = postern_policy::format_policy(&text, "fuzz.toml") {
                let twice = postern_policy::format_policy(&once, "fuzz.toml").unwrap();
                assert_eq!(once, twice, "{}", path.display());
            }
            let _ = postern_policy::Policy::parse(&text, "fuzz.toml");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{}",
                path.display()
            );
        }
        assert!(seen > 0, "no fixtures found in {}", dir.display());
    }
}

/// Issue #12: an empty file (an in-place rewrite caught half-way) must not pass `check`, and a
/// deny rule whose only condition is report-only must not pass with a hint about suspensions.
#[test]
fn check_refuses_an_empty_policy_and_report_only_deny_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "").unwrap();
    let output = run(&["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "stdout: {}", stdout(&output));
    let err = stderr(&output);
    assert!(
        err.contains("error: the policy has no endpoints and no rules"),
        "{err}"
    );
    assert!(err.contains("deny_all = true"), "{err}");

    std::fs::write(
        &path,
        "# nothing is reachable while the new PACS is commissioned\ndeny_all = true\n",
    )
    .unwrap();
    let output = run(&["check", path.to_str().unwrap()]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).starts_with("ok: 0 endpoints, 0 rules"),
        "{}",
        stdout(&output)
    );

    let config = std::fs::read_to_string(example_config()).unwrap();
    std::fs::write(
        &path,
        format!("{config}\n[[rules]]\nid = \"trial-suspension\"\neffect = \"deny\"\ngroups = [\"*\"]\nendpoints = [\"*\"]\nwindows = [\"Sat,Sun 00:00-24:00\"]\nreport_only = [\"windows\"]\n"),
    )
    .unwrap();
    let output = run(&["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "stdout: {}", stdout(&output));
    let err = stderr(&output);
    assert!(
        err.contains("error: deny rule 'trial-suspension' has `report_only`"),
        "{err}"
    );
    assert!(!err.contains("suspension, remember to lift it"), "{err}");
}

#[test]
fn explain_decides_web_requests_and_sessions() {
    let config = example_config();
    let base = [
        "explain",
        config.to_str().unwrap(),
        "--user",
        "r.penrose@truro.nhs.uk",
        "--groups",
        "Radiographers",
        "--endpoint",
        "orthanc-web",
        "--at",
        "2025-03-04T12:00",
        "--mfa",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let output = run(&args);
        assert!(output.status.success(), "stderr: {}", stderr(&output));
        stdout(&output)
    };

    let post = with(&["--method", "POST", "--path", "/tools/find?x=1"]);
    assert!(
        post.starts_with("access:          web request POST /tools/find\neffect:          deny\n"),
        "{post}"
    );
    assert!(
        post.contains("reason:          Denied: POST /tools/find on orthanc-web for radiographers: rule 'radiographers-orthanc-read-only' allows GET, HEAD only, not POST\n"),
        "{post}"
    );
    assert!(
        post.contains("methods                  not met  allows GET, HEAD only, not POST"),
        "{post}"
    );

    let get = with(&["--method", "GET", "--path", "/app/explorer.html"]);
    assert!(get.contains("effect:          allow\n"), "{get}");
    assert!(
        get.contains("rule:            radiographers-orthanc-read-only\n"),
        "{get}"
    );

    let session = with(&["--web-session"]);
    assert!(
        session.starts_with("access:          web session\n"),
        "{session}"
    );
    assert!(session.contains("effect:          allow\n"), "{session}");

    let tunnel = with(&[]);
    assert!(tunnel.starts_with("access:          tunnel\n"), "{tunnel}");
    assert!(
        tunnel.contains("applies to web requests only (methods/paths), not to a tunnel"),
        "{tunnel}"
    );

    let json = with(&["--method", "HEAD", "--path", "/", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["access"], "web request HEAD /");
    assert_eq!(value["decision"]["effect"], "allow");
}

#[test]
fn explain_checks_a_dicom_association_against_the_grant() {
    let config = example_config();
    let base = [
        "explain",
        config.to_str().unwrap(),
        "--user",
        "dr.khan@truro.nhs.uk",
        "--groups",
        "Radiology-Registrars",
        "--endpoint",
        "truro-pacs-dicom",
        "--at",
        "2025-03-04T12:00",
        "--mfa",
        "--device-fact",
        "registered=true",
        "--device-fact",
        "approved=true",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let output = run(&args);
        assert!(output.status.success(), "stderr: {}", stderr(&output));
        stdout(&output)
    };
    let plain = with(&[]);
    assert!(plain.contains("effect:          allow\n"), "{plain}");
    assert!(plain.contains("dicom calling:   RAD_KHAN\n"), "{plain}");
    assert!(plain.contains("dicom called:    TRURO_PACS\n"), "{plain}");
    assert!(
        plain.contains("dicom services:  echo, find, get\n"),
        "{plain}"
    );
    let own = with(&["--calling-ae", "RAD_KHAN", "--dicom-service", "get"]);
    assert!(own.contains("effect:          allow\n"), "{own}");
    let other = with(&["--calling-ae", "RAD_HUGHES"]);
    assert!(
        other.contains("reason:          Denied: rule 'registrars-data' does not accept calling AE title 'RAD_HUGHES' for this user (accepted: RAD_KHAN)\n"),
        "{other}"
    );
    let store = with(&["--calling-ae", "RAD_KHAN", "--dicom-service", "move"]);
    assert!(
        store.contains("does not allow the DICOM service 'move' (allowed: echo, find, get)"),
        "{store}"
    );
    let mut args = base.to_vec();
    args.extend_from_slice(&["--dicom-service", "print"]);
    let output = run(&args);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unknown DICOM service 'print'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn explain_needs_method_and_path_together() {
    let config = example_config();
    for (extra, missing) in [
        (["--method", "GET"], "--path <PATH>"),
        (["--path", "/app/"], "--method <METHOD>"),
    ] {
        let mut args = vec![
            "explain",
            config.to_str().unwrap(),
            "--user",
            "u",
            "--endpoint",
            "orthanc-web",
        ];
        args.extend_from_slice(&extra);
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr(&output).contains(missing), "{}", stderr(&output));
    }
    let output = run(&[
        "explain",
        config.to_str().unwrap(),
        "--user",
        "u",
        "--endpoint",
        "orthanc-web",
        "--web-session",
        "--method",
        "GET",
        "--path",
        "/",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{}",
        stderr(&output)
    );
}
