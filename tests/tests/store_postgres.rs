//! The PostgreSQL state store against a real PostgreSQL server (a throwaway cluster, see
//! `postern_e2e::pg`): the store's contract through two handles (two replicas), TLS to the
//! database with certificate checks, the password from a file, and a running gateway on
//! PostgreSQL ending a live tunnel when an admin command revokes the user in the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::pg::Postgres;
use postern_e2e::{bin, echo_policy, run, Deployment, Echo};
use postern_gateway::config::SecretSource;
use postern_gateway::state::{self, PostgresConfig, StoreConfig};

/// A cluster of the test's own, stopped and removed when the test ends (a shared static one
/// would never be dropped: its server would outlive the test run).
fn cluster() -> Postgres {
    Postgres::start(&[])
}

fn store_config(pg: &Postgres, db: &str) -> StoreConfig {
    StoreConfig {
        postgres: Some(PostgresConfig {
            url: pg.url(db),
            password: Some(SecretSource::File(pg.password_file())),
            ca_file: None,
            max_connections: 4,
        }),
        ..StoreConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_behave_as_the_store_must() {
    let pg = &cluster();
    let db = pg.create_database("conformance");
    let config = store_config(pg, &db);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = state::open(&config, dir_a.path()).await.unwrap();
    let b = state::open(&config, dir_b.path()).await.unwrap();
    // Replicas keep no state file of their own.
    assert!(!dir_a.path().join("state.db").exists());
    state::conformance::run_all(a.store, b.store).await;
    // The schema is the migrations', recorded once.
    let versions = pg
        .psql(
            &db,
            "SELECT string_agg(version::text, ',') FROM _sqlx_migrations",
        )
        .unwrap();
    assert_eq!(versions, "1,2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_newer_schema_is_refused_clearly() {
    let pg = &cluster();
    let db = pg.create_database("refusals");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let mut config = store_config(pg, &db);
    if let Some(p) = config.postgres.as_mut() {
        p.password = Some(SecretSource::File(wrong));
    }
    let e = state::open(&config, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot connect to the database"), "{e}");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        !e.contains("not-the-password"),
        "the password reached the message: {e}"
    );

    let config = store_config(pg, &db);
    state::open(&config, dir.path()).await.unwrap();
    pg.psql(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (7, 'from a newer gateway', TRUE, '\\x00', 0)",
    )
    .unwrap();
    let e = state::open(&config, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("schema is version 7, newer than this gateway knows"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_connection_uses_tls_and_checks_the_certificate() {
    // A server certificate for "localhost" from a private CA, as a trust's database has.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (crt, pem) = (
        files.path().join("server.crt"),
        files.path().join("server.key"),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let ca_file = files.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // The server reads its key only if the key is its own and private.
    for f in [&crt, &pem] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let _ = run(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&crt)
        .arg(&pem));
    let _ = run(Command::new("chmod").arg("755").arg(files.path()));
    let pg = Postgres::start(&[
        "ssl=on",
        &format!("ssl_cert_file={}", crt.display()),
        &format!("ssl_key_file={}", pem.display()),
    ]);
    let db = pg.create_database("tls");
    let url = format!(
        "postgres://postern@localhost:{}/{db}?sslmode=verify-full",
        pg.port
    );
    let config = |ca: &std::path::Path| StoreConfig {
        postgres: Some(PostgresConfig {
            url: url.clone(),
            password: Some(SecretSource::File(pg.password_file())),
            ca_file: Some(ca.to_owned()),
            max_connections: 2,
        }),
        ..StoreConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let opened = state::open(&config(&ca_file), dir.path()).await.unwrap();
    assert!(opened.store.connectors().await.unwrap().is_empty());
    let ssl_in_use = pg
        .psql(&db, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.datname = 'tls'")
        .unwrap();
    assert_ne!(ssl_in_use, "0", "the store's connections are not encrypted");
    // Another CA: the database's certificate is refused.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = files.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.self_signed(&other_key).unwrap().pem()).unwrap();
    let e = state::open(&config(&other_ca), dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot connect to the database"), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

/// A gateway on PostgreSQL; a user revoked by an admin command against the database (as on
/// another replica): the live tunnel ends within a second.
#[test]
fn a_revocation_written_to_the_database_ends_a_live_tunnel_within_a_second() {
    let pg = &cluster();
    let db = pg.create_database("gateway_live");
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    d.append_config(&format!(
        "[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(&db),
        pg.password_file().display()
    ));
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    assert!(
        !d.path("gw/state.db").exists(),
        "a replica keeps no SQLite file"
    );
    let connectors = pg.psql(&db, "SELECT id FROM connectors").unwrap();
    assert_eq!(
        connectors, d.connector_id,
        "the connector is enrolled in PostgreSQL"
    );
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (_client, addr) = d.connect("echo", &token).unwrap();
    let mut live = postern_e2e::open_live(addr);
    d.wait_event("session.start", |e| e["user"] == "ann@hospital.test");
    // Another process with its own state directory (an admin elsewhere) revokes the user in
    // the database.
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_toml = admin_dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(d.gateway_toml())
        .unwrap()
        .replace(
            "state_dir = \"gw\"",
            // Its own state directory; the gateway's audit log, as on a shared volume (the
            // command counts the user's live sessions from it).
            &format!(
                "state_dir = \"{}\"\naudit_dir = \"{}\"",
                admin_dir.path().join("st").display(),
                d.path("gw/audit").display()
            ),
        )
        .replace(
            "policy = \"policy.toml\"",
            &format!("policy = \"{}\"", d.path("policy.toml").display()),
        );
    std::fs::write(&admin_toml, text).unwrap();
    let t0 = Instant::now();
    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["user", "revoke", "ann@hospital.test", "--config"])
        .arg(&admin_toml));
    assert!(ok, "{out}{err}");
    let end = d.wait_event("session.terminated", |e| e["user"] == "ann@hospital.test");
    assert_eq!(end["close_reason"], "user_revoked", "{end}");
    let took = t0.elapsed();
    live.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut live, &mut one).unwrap_or(0), 0);
    // The command itself takes some of that second; the propagation is within it.
    assert!(took < Duration::from_secs(3), "revocation took {took:?}");
    eprintln!("revocation through PostgreSQL ended the tunnel {took:?} after the command started");
}

/// PostgreSQL stops under a live tunnel: the tunnel goes on; new sessions are decided on the
/// last known state for `max_staleness`, then refused with `store_unavailable` (and `/readyz`
/// says so); when the database is back everything recovers by itself. Each transition is
/// audited.
#[test]
fn a_database_outage_follows_the_staleness_rule_and_recovers_by_itself() {
    // Its own cluster: stopping the shared one would disturb the other tests.
    let mut pg = Postgres::start(&[]);
    let db = pg.create_database("outage");
    let echo = Echo::start();
    let mut d = Deployment::prepare(&echo_policy(echo.addr));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], postern_e2e::free_port()));
    // Sign-in against an IdP that asks nothing, device trust off: a CLI sign-in is the
    // one-time code kept in the store between the callback and `postern login`'s redemption.
    let idp = postern_e2e::rogue_idp::RogueIdp::start("postern-gateway");
    idp.set_claims(serde_json::json!({"groups": ["radiologists"]}));
    std::fs::write(d.path("oidc-secret"), "s3cret-for-tests-only").unwrap();
    d.append_config(&format!(
        "[admin]\nlisten = \"{admin}\"\n[store]\nurl = \"{}\"\npassword_file = \"{}\"\nmax_staleness = \"8s\"\n\
         [oidc]\nissuer = \"{}\"\nclient_id = \"postern-gateway\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{}\"\ninsecure_http_issuer = true\n[devices]\nrequired = false\n",
        pg.url(&db),
        pg.password_file().display(),
        idp.issuer,
        d.callback_url()
    ));
    d.start_gateway();
    let d = d.with_connector(&[("127.0.0.1/32", echo.addr.port().to_string())]);
    let token = d.mint("ann@hospital.test", "radiologists", "1h");
    let (_held, held_addr) = d.connect("echo", &token).unwrap();
    let mut live = postern_e2e::open_live(held_addr);
    let echo_once = |s: &mut std::net::TcpStream| -> bool {
        use std::io::{Read, Write};
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"x"
    };
    let new_session = || -> Result<(), String> {
        let (mut p, addr) = d.connect("echo", &token)?;
        let r = postern_e2e::echo_roundtrip(addr, b"ping");
        std::thread::sleep(Duration::from_millis(100));
        // The client's log says why a tunnel was refused.
        let r = r.map(|_| ()).map_err(|e| format!("{e}: {}", p.log_text()));
        p.kill();
        r
    };
    assert_eq!(postern_e2e::http(admin, "/readyz").unwrap().0, 200);

    let down_at = Instant::now();
    pg.pause();
    // Within max_staleness: the live tunnel works, a new session opens, and a clinician signs
    // in (the first store operation waits out its time bound, then the sign-in goes on from
    // this gateway's own state).
    new_session().expect("a new session right after the database stopped");
    let signed_in = d
        .cli_login(&d.path("cfg-during"))
        .expect("a sign-in within max_staleness");
    let took = down_at.elapsed();
    assert!(took < Duration::from_secs(5), "the sign-in took {took:?}");
    assert!(
        echo_once(&mut live),
        "the live tunnel stopped with the database"
    );
    // The token it got opens a tunnel (the session is decided on the last known state).
    let (mut p, addr) = d.connect("echo", &signed_in).unwrap();
    let r = postern_e2e::echo_roundtrip(addr, b"ping");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        r.is_ok(),
        "a session with the token signed in during the outage: {r:?}: {}\n{:?}",
        p.log_text(),
        d.events("session.denied")
    );

    p.kill();
    eprintln!("signed in {took:?} after the database stopped");
    d.wait_event("store.unavailable", |_| true);
    // Beyond it: new sessions refused with the reason, /readyz not ready; the tunnel lives.
    let stale = d.wait_event("store.stale", |_| true);
    assert!(
        stale["detail"]
            .as_str()
            .unwrap_or("")
            .contains("max_staleness 8s"),
        "{stale}"
    );
    // Counted from the last proof of life, at most 2 s (the feed's probe interval) before the
    // database stopped.
    assert!(
        down_at.elapsed() >= Duration::from_secs(6),
        "{:?}",
        down_at.elapsed()
    );
    // Sign-in fails closed too, saying why.
    let refused = d
        .cli_login(&d.path("cfg-stale"))
        .expect_err("a sign-in beyond max_staleness");
    assert!(
        refused.contains("503") || refused.contains("store"),
        "{refused}"
    );
    let failed = d.wait_event("auth.failed", |e| {
        e["detail"].as_str().unwrap_or("").contains("max_staleness")
    });
    eprintln!("sign-in beyond max_staleness: {}", failed["detail"]);
    let refused = new_session().expect_err("a new session beyond max_staleness");
    assert!(
        refused.contains("state store has not answered"),
        "{refused}"
    );
    let denied = d.wait_event("session.denied", |e| {
        e["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("store_unavailable")
    });
    assert_eq!(denied["user"], "ann@hospital.test");
    let (status, body) = postern_e2e::http(admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state store unavailable"), "{body}");
    assert!(
        echo_once(&mut live),
        "the live tunnel stopped while the store was stale"
    );

    // The database returns: the gateway reconnects by itself.
    pg.resume();
    let back = Instant::now();
    d.wait_event("store.available", |_| true);
    postern_e2e::wait_for(
        "a new session after recovery",
        Duration::from_secs(10),
        || new_session().ok(),
    );
    eprintln!(
        "recovered {:?} after the database came back",
        back.elapsed()
    );
    assert_eq!(postern_e2e::http(admin, "/readyz").unwrap().0, 200);
    assert!(
        echo_once(&mut live),
        "the live tunnel did not survive the outage: {:?}",
        d.events("session.end")
    );
    let metrics = postern_e2e::http(admin, "/metrics").unwrap().1;
    assert!(metrics.contains("postern_store_up 1"), "{metrics}");
}

/// Two gateway replicas on one database: each registers and sees the other; a token minted on
/// one is accepted by the other (published keys, shared deployment id); a second process with
/// a live replica's node_id is refused; a clean stop leaves the list.
#[test]
fn replicas_register_share_tokens_and_refuse_a_duplicate_id() {
    let pg = &cluster();
    let db = pg.create_database("two_replicas");
    let echo = Echo::start();
    let store = format!(
        "[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(&db),
        pg.password_file().display()
    );
    let mut a = Deployment::prepare(&echo_policy(echo.addr));
    a.append_config(&store);
    a.start_gateway();
    // Replica B: its own state directory with the CAs provisioned from A (as the operator
    // guide says), its own ports and node_id, the same database.
    let b_dir = tempfile::tempdir().unwrap();
    let b_state = b_dir.path().join("gw");
    std::fs::create_dir(&b_state).unwrap();
    std::fs::set_permissions(
        &b_state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for f in [
        "server-ca.pem",
        "server-ca.key",
        "connector-ca.pem",
        "connector-ca.key",
    ] {
        std::fs::copy(a.path("gw").join(f), b_state.join(f)).unwrap();
    }
    let b_port = postern_e2e::free_port();
    let b_toml = |node: &str, port: u16, state: &std::path::Path| {
        let p = b_dir.path().join(format!("{node}-{port}.toml"));
        std::fs::write(
            &p,
            format!(
                "node_id = \"{node}\"\nstate_dir = \"{}\"\npolicy = \"{}\"\n[listen]\nclients = \"127.0.0.1:{port}\"\nconnectors = \"127.0.0.1:{}\"\n{store}",
                state.display(),
                a.path("policy.toml").display(),
                postern_e2e::free_port()
            ),
        )
        .unwrap();
        p
    };
    let b_config = b_toml("gw-b", b_port, &b_state);
    let mut b = postern_e2e::Proc::spawn(
        "gateway-b",
        Command::new(bin("postern-gateway"))
            .args(["run", "--config"])
            .arg(&b_config),
        b_dir.path().join("gateway-b.log"),
    );
    let replicas = |config: &std::path::Path| {
        let (ok, out, err) = run(Command::new(bin("postern-gateway"))
            .args(["replicas", "--config"])
            .arg(config));
        assert!(ok, "replicas: {err}");
        out
    };
    postern_e2e::wait_for("both replicas listed live", Duration::from_secs(20), || {
        let out = replicas(&a.gateway_toml());
        let live = out.lines().filter(|l| l.contains(" live ")).count();
        (live == 2 && out.contains("gw-test") && out.contains("gw-b")).then_some(out)
    });

    // A token minted with A's keys is accepted by B.
    let token = a.mint("ann@hospital.test", "radiologists", "1h");
    let token = std::fs::read_to_string(token).unwrap();
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(a.path("gw/server-ca.pem"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("https://127.0.0.1:{b_port}/v1/endpoints")));
    assert!(ok, "curl: {err}");
    assert!(out.ends_with("200"), "B refused A's token: {out}");
    assert!(out.contains("\"echo\""), "{out}");
    assert!(b.is_running(), "{}", b.log_text());

    // Another gateway (its own state directory) claiming B's node_id is refused at start,
    // saying why.
    // First without the shared files: it makes CAs of its own and is refused for them,
    // naming the file; `check` (which does not start anything) says the same.
    let other = b_dir.path().join("other");
    let own_cas = b_toml("gw-d", postern_e2e::free_port(), &other);
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["run", "--config"])
        .arg(&own_cas));
    assert!(!ok, "a replica with its own CAs started");
    assert!(
        err.contains("this replica's server CA")
            && err.contains("is not the one the other replicas use"),
        "{err}"
    );
    let (ok, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(&own_cas));
    assert!(!ok, "check passed a replica with its own CAs: {out}");
    assert!(
        format!("{out}{err}").contains("connector CA")
            && format!("{out}{err}").contains("not the copy the other replicas use"),
        "{out}{err}"
    );
    let (_, out, err) = run(Command::new(bin("postern-gateway"))
        .args(["check", "--config"])
        .arg(&b_config));
    assert!(
        err.contains("connector CA: the same as the other replicas'"),
        "{out}{err}"
    );
    // Provisioned, it gets as far as the replica id.
    postern_e2e::ha::provision(&a.path("gw"), &other);
    let dup = b_toml("gw-b", postern_e2e::free_port(), &other);
    let (ok, _, err) = run(Command::new(bin("postern-gateway"))
        .args(["run", "--config"])
        .arg(&dup));
    assert!(!ok, "a duplicate replica id started");
    assert!(
        err.contains("another gateway process runs as replica gw-b"),
        "{err}"
    );

    // B stops cleanly and leaves the list at once.
    assert_eq!(
        b.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        b.log_text()
    );
    let out = replicas(&a.gateway_toml());
    assert!(!out.contains("gw-b"), "{out}");
    assert!(out.contains("gw-test"), "{out}");
}
