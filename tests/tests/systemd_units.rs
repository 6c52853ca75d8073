//! The shipped systemd units (systemd/*.service) are hardened and valid: `systemd-analyze
//! security` rates each at an exposure of at most 2.0, and `systemd-analyze verify` finds nothing
//! to say about them in a root laid out as the packages install them (real binaries in
//! /usr/bin). systemd need not be PID 1: both run offline. scripts/test.sh installs systemd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNITS: [(&str, &str); 2] = [
    ("postern-gateway.service", "postern-gateway"),
    ("postern-connector.service", "postern-connector"),
];

/// The highest exposure we accept (systemd's scale: 0 = fully locked down, 10 = unprotected).
const MAX_EXPOSURE: f64 = 2.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze not found: install systemd (scripts/test.sh does)")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The "Overall exposure level for X: N.N" figure.
fn exposure(report: &str, unit: &str) -> f64 {
    let key = format!("Overall exposure level for {unit}: ");
    let line = report
        .lines()
        .find(|l| l.contains(&key))
        .unwrap_or_else(|| panic!("no exposure line for {unit} in:\n{report}"));
    let rest = &line[line.find(&key).unwrap() + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable exposure in {line:?}"))
}

#[test]
fn units_are_hardened_to_an_exposure_of_at_most_2() {
    for (unit, user) in UNITS {
        let path = repo().join("systemd").join(unit);
        let o = analyze(&["security", "--offline=true", path.to_str().unwrap()]);
        let report = text(&o);
        assert!(o.status.success(), "{unit}: {report}");
        let score = exposure(&report, unit);
        eprintln!("{unit}: exposure {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{unit}: exposure {score} > {MAX_EXPOSURE}:\n{report}"
        );
        // The settings the issue names, and the user the packages create.
        let file = std::fs::read_to_string(&path).unwrap();
        for want in [
            format!("User={user}"),
            format!("StateDirectory={user}"),
            "ProtectSystem=strict".into(),
            "ProtectHome=yes".into(),
            "PrivateTmp=yes".into(),
            "NoNewPrivileges=yes".into(),
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX".into(),
            "SystemCallFilter=@system-service".into(),
            "MemoryDenyWriteExecute=yes".into(),
        ] {
            assert!(file.lines().any(|l| l == want), "{unit} lacks {want}");
        }
    }
    let gw = std::fs::read_to_string(repo().join("systemd/postern-gateway.service")).unwrap();
    assert!(gw.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
    assert!(gw.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    let conn = std::fs::read_to_string(repo().join("systemd/postern-connector.service")).unwrap();
    assert!(conn.contains("\nCapabilityBoundingSet=\n"));
}

#[test]
fn the_threshold_check_fails_a_weak_unit() {
    // The same check must be able to fail: a unit with no hardening scores far above 2.0.
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak.service");
    std::fs::write(&weak, "[Service]\nExecStart=/usr/bin/true\n").unwrap();
    let o = analyze(&["security", "--offline=true", weak.to_str().unwrap()]);
    let score = exposure(&text(&o), "weak.service");
    assert!(score > MAX_EXPOSURE, "weak unit scored {score}");
}

/// Hard-links (or copies) `from` to `to`.
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    }
}

/// A root with systemd's own units (so targets resolve), /bin/kill, our binaries in /usr/bin
/// and our units in /etc/systemd/system, as the packages lay them out.
fn install_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let sys_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("systemd's unit directory not found: install systemd");
    let dest = r.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&dest).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(sys_units).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let to = dest.join(e.file_name());
        if ft.is_file() {
            std::fs::copy(e.path(), &to).unwrap();
            n += 1;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &to).unwrap();
        }
    }
    assert!(
        n > 50,
        "only {n} systemd units copied from {}",
        sys_units.display()
    );
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("kill not found (procps)");
    place(kill, &r.join("usr/bin/kill"));
    for (unit, bin) in UNITS {
        place(&postern_e2e::bin(bin), &r.join("usr/bin").join(bin));
        place(
            &repo().join("systemd").join(unit),
            &r.join("etc/systemd/system").join(unit),
        );
    }
    root
}

#[test]
fn units_verify_cleanly() {
    let root = install_root();
    let r = root.path().to_str().unwrap();
    for (unit, _) in UNITS {
        let o = analyze(&["verify", "--man=no", &format!("--root={r}"), unit]);
        let out = text(&o);
        assert!(
            o.status.success() && out.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{out}"
        );
    }
    // The same check complains about a unit with a mistake in it (here: an unknown key and a
    // missing binary), so a clean result above means something.
    let bad = root.path().join("etc/systemd/system/postern-bad.service");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/usr/bin/postern-missing run\nProtectSytem=strict\n",
    )
    .unwrap();
    let o = analyze(&[
        "verify",
        "--man=no",
        &format!("--root={r}"),
        "postern-bad.service",
    ]);
    let out = text(&o);
    assert!(out.contains("ProtectSytem"), "{out}");
    assert!(out.contains("postern-missing"), "{out}");
}
