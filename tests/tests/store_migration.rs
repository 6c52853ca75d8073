//! Migration from a `state.json` made by the previous release (0.1.0, commit 6429fe1, the last
//! with the file store): the fixture in `tests/fixtures/release-0.1.0` was made by that
//! release's own binaries and commands (see its `make.sh`). It is copied into a fresh state
//! directory, and the current gateway starts on it: the import is audited with its counts, the
//! old file is kept, the new database is private, and what the old gateway decided is still
//! enforced — each refusal with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::{bin, echo_policy, run, Deployment, Echo};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release-0.1.0")
}

/// `fixture.json`: which connector and which users are which.
fn fixture() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("fixture.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn secret(name: &str) -> String {
    std::fs::read_to_string(fixture_dir().join("secrets").join(name))
        .unwrap()
        .trim()
        .to_owned()
}

/// Copies `from` into `to` as the release left it on disk: directories 0700, files 0600 (git
/// keeps neither mode).
fn copy_private(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_private(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A deployment whose state directory is the 0.1.0 fixture's, with both connectors' state
/// directories beside it; nothing started.
fn upgraded(echo: &Echo) -> Deployment {
    let records: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("gw/state.json")).unwrap(),
    )
    .unwrap();
    // Every lifetime in the fixture is thousands of days; say so plainly when it runs out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for c in records["connectors"].as_array().unwrap() {
        assert!(
            c["not_after"].as_u64().unwrap() > now + 86400,
            "the fixture's connector certificates have expired: run tests/fixtures/release-0.1.0/make.sh"
        );
    }
    let d = Deployment::prepare(&echo_policy(echo.addr));
    copy_private(&fixture_dir().join("gw"), &d.path("gw"));
    for c in ["connector-live", "connector-revoked"] {
        copy_private(&fixture_dir().join(c), &d.path(c));
    }
    d
}

fn gateway(d: &Deployment, args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin("postern-gateway"))
        .args(args)
        .arg("--config")
        .arg(d.gateway_toml()))
}

/// `GET /v1/endpoints` with `token`: (HTTP status, body).
fn endpoints(d: &Deployment, token: &str) -> (u16, String) {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(d.ca_file())
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}/v1/endpoints", d.url())));
    assert!(ok, "curl: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn a_release_0_1_0_state_json_is_imported_once_and_kept() {
    let echo = Echo::start();
    let mut d = upgraded(&echo);
    let original = std::fs::read(fixture_dir().join("gw/state.json")).unwrap();
    d.start_gateway();

    // Audited once, with what was imported and where the old file went.
    let migrated = d.events("store.migrated");
    assert_eq!(migrated.len(), 1, "{migrated:?}");
    let detail = migrated[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "(2 connectors, 0 devices, 4 enrolment tokens, 1 revoked session token, 1 revoked user, 0 sign-ins in flight)"
        ),
        "{detail}"
    );
    assert!(detail.contains("state.json.migrated"), "{detail}");

    // The old file is kept, unchanged and private, under its new name; the database is private.
    assert!(!d.path("gw/state.json").exists());
    let kept = d.path("gw/state.json.migrated");
    assert_eq!(std::fs::read(&kept).unwrap(), original);
    assert_eq!(mode(&kept), 0o600);
    assert_eq!(mode(&d.path("gw/state.db")), 0o600);

    // Every record is in the store, as the old gateway wrote it.
    let f = fixture();
    let state = d.state();
    let connectors = state["connectors"].as_array().unwrap();
    assert_eq!(connectors.len(), 2, "{state}");
    let by_id = |id: &Value| connectors.iter().find(|c| &c["id"] == id).unwrap();
    assert!(by_id(&f["connector_live"])["revoked"].is_null(), "{state}");
    assert!(
        by_id(&f["connector_revoked"])["revoked"].is_u64(),
        "{state}"
    );
    let revoked_tokens = state["revoked_tokens"].as_array().unwrap();
    assert_eq!(revoked_tokens.len(), 1, "{state}");
    assert_eq!(revoked_tokens[0]["user"], f["user_signed_out"]);
    let revoked_users = state["revoked_users"].as_array().unwrap();
    assert_eq!(revoked_users.len(), 1, "{state}");
    assert_eq!(revoked_users[0]["user"], f["user_revoked"]);
    let tokens = state["enroll_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4, "{state}");
    assert_eq!(
        tokens.iter().filter(|t| t["used_by"].is_null()).count(),
        2,
        "one unused and one expired enrolment token: {state}"
    );

    // `connector list` says which is which.
    let (ok, list, err) = gateway(&d, &["connector", "list"]);
    assert!(ok, "{err}");
    let line = |id: &Value| {
        list.lines()
            .find(|l| l.starts_with(id.as_str().unwrap()))
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
            .to_owned()
    };
    assert!(line(&f["connector_live"]).contains(" active "), "{list}");
    assert!(
        line(&f["connector_revoked"]).contains(" revoked "),
        "{list}"
    );

    // A restart does not import again (the file is gone, the marker is in the database).
    assert_eq!(
        d.gateway
            .as_mut()
            .unwrap()
            .terminate(Duration::from_secs(20)),
        Some(0)
    );
    d.start_gateway();
    assert_eq!(d.count("store.migrated"), 1);
    assert_eq!(d.state()["connectors"].as_array().unwrap().len(), 2);
}

#[test]
fn what_release_0_1_0_decided_is_enforced_after_the_upgrade() {
    let echo = Echo::start();
    let mut d = upgraded(&echo);
    let f = fixture();
    d.start_gateway();
    d.connector_id = f["connector_live"].as_str().unwrap().to_owned();
    let allow = [("127.0.0.1/32", echo.addr.port().to_string())];
    let gateways = format!("127.0.0.1:{}", d.connector_port);

    // Enrolment tokens first (creating one would prune expired ones): the expired one and the
    // used one are refused, saying why; the unused one still enrols a connector.
    let (ok, out, err) = d.enroll("enrol-expired", &secret("enrol-expired.token"));
    assert!(!ok, "an expired enrolment token enrolled: {out}");
    assert!(err.contains("the enrolment token expired"), "{out}{err}");
    let (ok, out, err) = d.enroll("enrol-again", &secret("enrol-used.token"));
    assert!(!ok, "a used enrolment token enrolled again: {out}");
    assert!(
        err.contains(&format!(
            "the enrolment token was already used (by connector {})",
            f["connector_live"].as_str().unwrap()
        )),
        "{out}{err}"
    );
    let (ok, out, err) = d.enroll("enrol-new", &secret("enrol-unused.token"));
    assert!(ok, "the unused enrolment token was refused: {out}{err}");
    let new_id = out.split_whitespace().nth(2).unwrap().to_owned();
    assert!(new_id.starts_with("truro-"), "{out}");
    let (_, list, _) = gateway(&d, &["connector", "list"]);
    assert_eq!(
        list.lines().count(),
        4,
        "header and three connectors: {list}"
    );

    // The revoked connector is refused for good: it exits with status 3 and says when it was
    // revoked; the gateway audits the refusal with its id.
    d.write_connector_toml("connector-revoked", &allow, Some(&gateways));
    let mut revoked = d.spawn_connector("connector-revoked");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = revoked.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the revoked connector is still running: {}",
            revoked.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{}", revoked.log_text());
    let records: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("gw/state.json.migrated")).unwrap())
            .unwrap();
    let revoked_at = records["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == f["connector_revoked"])
        .unwrap()["revoked"]
        .as_u64()
        .unwrap();
    let when =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(revoked_at))
            .to_string();
    assert!(
        revoked
            .log_text()
            .contains(&format!("this connector was revoked at {when}")),
        "{}",
        revoked.log_text()
    );
    let refused = d.wait_event("connector.refused", |e| {
        e["connector"]["id"] == f["connector_revoked"]
    });
    assert!(
        refused["detail"].as_str().unwrap_or("").contains("revoked"),
        "{refused}"
    );
    assert_eq!(d.connected(f["connector_revoked"].as_str().unwrap()), 0);

    // The connector that stayed enrolled connects with its 0.1.0 certificate, and a session
    // token minted by 0.1.0 opens a tunnel through it.
    d.write_connector_toml("connector-live", &allow, Some(&gateways));
    d.start_connector("connector-live");
    assert!(d.connected(&d.connector_id) >= 1);
    let alice = d.path("alice.token");
    std::fs::write(&alice, secret("alice.token")).unwrap();
    let (status, body) = endpoints(&d, &secret("alice.token"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"echo\""), "{body}");
    let (_client, addr) = d.connect("echo", &alice).unwrap();
    assert_eq!(postern_e2e::echo_roundtrip(addr, b"ping").unwrap(), b"ping");
    let start = d.wait_event("session.start", |e| e["user"] == f["user_valid"]);
    assert_eq!(start["connector"]["id"], f["connector_live"], "{start}");

    // The token carol signed out of under 0.1.0 stays revoked.
    let (status, body) = endpoints(&d, &secret("carol.token"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token_revoked"), "{body}");
    assert!(body.contains("signed out"), "{body}");
    // bob, revoked as a user under 0.1.0: his token is refused as the user's.
    let (status, body) = endpoints(&d, &secret("bob.token"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("user_revoked"), "{body}");
    // Nor does a tunnel open for either; the client says why.
    for (user, why) in [
        ("carol", "session token was revoked (signed out)"),
        ("bob", "access for this user was revoked"),
    ] {
        let token = d.path(&format!("{user}.token"));
        std::fs::write(&token, secret(&format!("{user}.token"))).unwrap();
        let log = match d.connect("echo", &token) {
            Err(log) => log,
            Ok((p, addr)) => {
                assert!(
                    postern_e2e::tunnel_refused(addr),
                    "{user}'s revoked token opened a tunnel"
                );
                postern_e2e::wait_for(
                    &format!("the client to say why {user} was refused"),
                    Duration::from_secs(10),
                    || Some(p.log_text()).filter(|l| l.contains(why)),
                )
            }
        };
        assert!(log.contains(why), "{user}: {log}");
    }
}
