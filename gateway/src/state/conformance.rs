//! What every [`StateStore`](super::StateStore) must do, as checks run against two handles on one store (two
//! processes, two replicas): the gateway's unit tests run them on the in-memory and SQLite
//! stores, the end-to-end suite on PostgreSQL. Each check panics with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::{
    CeremonyRec, Change, CliCodeRec, DeviceRec, DeviceStatus, EnrollIssuer, EnrollTokenRec, Issued,
    PublishedKey, Refusal, ReplicaRec, RevokedToken, SharedStore, StoreError,
};

/// Runs every check; `a` and `b` are two handles on one empty store.
pub async fn run_all(a: SharedStore, b: SharedStore) {
    enrolment(&a, &b).await;
    enrolment_race(&a, &b).await;
    renewal_and_revocation(&a, &b).await;
    revocations(&a, &b).await;
    devices(&a, &b).await;
    sign_count_updates_never_lose_one(&a, &b).await;
    sign_in_state(&a, &b).await;
    replicas_and_their_keys(&a, &b).await;
    changes_reach_the_other_handle(&a, &b).await;
}

fn token(id: &str, secret_hash: &str, expires: u64) -> EnrollTokenRec {
    EnrollTokenRec {
        id: id.into(),
        secret_sha256: secret_hash.into(),
        site: "truro".into(),
        created: 1,
        expires,
        used: None,
        used_by: None,
    }
}

fn issuer(id: String) -> EnrollIssuer {
    Box::new(move |site: &str| {
        assert_eq!(site, "truro");
        Ok((
            id,
            Issued {
                cert_pem: "pem".into(),
                serial: "0a".into(),
                not_after: 99,
            },
        ))
    })
}

fn refusal<T: std::fmt::Debug>(r: Result<T, StoreError>) -> Refusal {
    match r {
        Err(StoreError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A token burns once; a failed signature leaves it usable; unknown and expired are told.
pub async fn enrolment(a: &SharedStore, b: &SharedStore) {
    a.create_enroll_token(token("et-1", "h1", 100), 10)
        .await
        .unwrap();
    let failed = a
        .enroll_connector("h1".into(), None, 10, Box::new(|_| Err("bad CSR".into())))
        .await;
    assert_eq!(refusal(failed), Refusal::Rejected("bad CSR".into()));
    let (rec, issued, token_id) = b
        .enroll_connector(
            "h1".into(),
            Some("pacs-gw".into()),
            10,
            issuer("truro-1".into()),
        )
        .await
        .unwrap();
    assert_eq!((rec.id.as_str(), token_id.as_str()), ("truro-1", "et-1"));
    assert_eq!((rec.serial.as_str(), issued.serial.as_str()), ("0a", "0a"));
    assert_eq!(rec.hostname.as_deref(), Some("pacs-gw"));
    let again = a
        .enroll_connector("h1".into(), None, 11, issuer("truro-2".into()))
        .await;
    assert_eq!(refusal(again), Refusal::TokenUsed("truro-1".into()));
    let unknown = a
        .enroll_connector("nope".into(), None, 11, issuer("x".into()))
        .await;
    assert_eq!(refusal(unknown), Refusal::UnknownToken);
    a.create_enroll_token(token("et-3", "h3", 20), 10)
        .await
        .unwrap();
    let expired = b
        .enroll_connector("h3".into(), None, 20, issuer("x".into()))
        .await;
    assert_eq!(refusal(expired), Refusal::TokenExpired);
    let all = b.connectors().await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(b.connector("truro-1".into()).await.unwrap(), Some(rec));
}

/// The same token presented through both handles at once: exactly one enrolment succeeds.
pub async fn enrolment_race(a: &SharedStore, b: &SharedStore) {
    a.create_enroll_token(token("et-race", "hrace", 1000), 10)
        .await
        .unwrap();
    let tries = (0..8).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            s.enroll_connector("hrace".into(), None, 11, issuer(format!("race-{i}")))
                .await
        })
    });
    let mut won = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok((rec, _, _)) => won.push(rec.id),
            Err(StoreError::Refused(Refusal::TokenUsed(_))) => {}
            Err(e) => panic!("a racing enrolment failed otherwise: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "winners: {won:?}");
    let ids: Vec<String> = a
        .connectors()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .filter(|id| id.starts_with("race-"))
        .collect();
    assert_eq!(ids, won);
}

/// Only the current certificate renews; the revoked connector cannot; revocation keeps its
/// first time.
pub async fn renewal_and_revocation(a: &SharedStore, b: &SharedStore) {
    let renew = |serial: &'static str| -> super::RenewIssuer {
        Box::new(move |_| {
            Ok(Issued {
                cert_pem: "pem2".into(),
                serial: serial.into(),
                not_after: 200,
            })
        })
    };
    let (c, _) = a
        .renew_connector("truro-1".into(), "0a".into(), 50, renew("0b"))
        .await
        .unwrap();
    assert_eq!(
        (c.serial.as_str(), c.previous_serial.as_deref(), c.renewed),
        ("0b", Some("0a"), Some(50))
    );
    assert!(c.accepts_serial("0a") && c.accepts_serial("0b"));
    let old = b
        .renew_connector("truro-1".into(), "0a".into(), 51, renew("0c"))
        .await;
    assert_eq!(refusal(old), Refusal::Superseded);
    let gone = b
        .renew_connector("nobody".into(), "0a".into(), 51, renew("0c"))
        .await;
    assert_eq!(refusal(gone), Refusal::UnknownConnector("nobody".into()));
    let r = b.revoke_connector("truro-1".into(), 60).await.unwrap();
    assert_eq!(r.revoked, Some(60));
    let r = a.revoke_connector("truro-1".into(), 70).await.unwrap();
    assert_eq!(r.revoked, Some(60), "revocation keeps its first time");
    let after = a
        .renew_connector("truro-1".into(), "0b".into(), 80, renew("0d"))
        .await;
    assert_eq!(refusal(after), Refusal::ConnectorRevoked("truro-1".into()));
}

/// An active device of `user` with WebAuthn credential `credential`, sign count 0.
pub fn device(id: &str, user: &str, credential: &str) -> DeviceRec {
    DeviceRec {
        id: id.into(),
        user: user.into(),
        name: "home laptop".into(),
        status: DeviceStatus::Active,
        credential_id: credential.into(),
        aaguid: "00000000-0000-0000-0000-000000000000".into(),
        sign_count: 0,
        user_verified: true,
        backup_eligible: false,
        backup_state: false,
        transports: vec!["usb".into()],
        created: 5,
        last_seen: None,
        approved: None,
        approved_by: None,
        revoked: None,
        revoked_reason: None,
        posture: None,
        passkey: serde_json::json!({"cred": credential}),
    }
}

/// Token revocations dedupe and forget expired ones; a user is revoked ignoring case, with
/// their devices.
pub async fn revocations(a: &SharedStore, b: &SharedStore) {
    let tok = |jti: &str, exp| RevokedToken {
        jti: jti.into(),
        exp,
        user: "ann".into(),
        revoked: 5,
    };
    a.revoke_token(tok("j1", 100), 5).await.unwrap();
    b.revoke_token(tok("j1", 100), 6).await.unwrap();
    b.revoke_token(tok("j2", 7), 6).await.unwrap();
    // Revoking again later forgets the tokens expired by then.
    a.revoke_token(tok("j3", 300), 8).await.unwrap();
    let jtis: Vec<String> = b
        .revocations()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.jti)
        .collect();
    assert_eq!(jtis, ["j1", "j3"]);
    a.add_device(device("dev-ann1", "Ann@Example.org", "cred-ann1"))
        .await
        .unwrap();
    a.add_device(device("dev-bob1", "bob@example.org", "cred-bob1"))
        .await
        .unwrap();
    let revoked = b.revoke_user("ann@EXAMPLE.org".into(), 20).await.unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].status, DeviceStatus::Revoked);
    assert_eq!(revoked[0].revoked_reason.as_deref(), Some("user revoked"));
    let users = a.revocations().await.unwrap().users;
    assert_eq!(users.len(), 1);
    assert_eq!(
        (users[0].user.as_str(), users[0].before),
        ("ann@example.org", 20)
    );
    // Revoking again moves the time and revokes no device twice.
    assert!(a
        .revoke_user("ANN@example.org".into(), 30)
        .await
        .unwrap()
        .is_empty());
    let users = b.revocations().await.unwrap().users;
    assert_eq!((users.len(), users[0].before), (1, 30));
    let bob = a
        .devices()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == "dev-bob1")
        .unwrap();
    assert_eq!(bob.status, DeviceStatus::Active);
}

/// A credential registers once; updates apply whole or not at all.
pub async fn devices(a: &SharedStore, b: &SharedStore) {
    let dup = b.add_device(device("dev-other", "eve", "cred-bob1")).await;
    assert_eq!(
        refusal(dup),
        Refusal::CredentialExists {
            device: "dev-bob1".into(),
            user: "bob@example.org".into()
        }
    );
    let (before, after) = b
        .update_device(
            "dev-bob1".into(),
            Box::new(|d| {
                d.name = "ward laptop".into();
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        (before.name.as_str(), after.name.as_str()),
        ("home laptop", "ward laptop")
    );
    let refused = a
        .update_device(
            "dev-bob1".into(),
            Box::new(|d| {
                d.name = "not kept".into();
                Err(Refusal::DeviceRevoked("dev-bob1".into()))
            }),
        )
        .await;
    assert_eq!(refusal(refused), Refusal::DeviceRevoked("dev-bob1".into()));
    let unknown = a
        .update_device("dev-none".into(), Box::new(|_| Ok(())))
        .await;
    assert_eq!(refusal(unknown), Refusal::UnknownDevice("dev-none".into()));
    let all = a.devices().await.unwrap();
    let bob = all.iter().find(|d| d.id == "dev-bob1").unwrap();
    assert_eq!(bob.name, "ward laptop");
    assert_eq!(bob.passkey, serde_json::json!({"cred": "cred-bob1"}));
    assert_eq!(all.len(), 2, "{all:?}");
}

/// Twenty sign-ins racing through both handles each raise the sign count by one: none is
/// lost (the update is compare-and-set, or serialised).
pub async fn sign_count_updates_never_lose_one(a: &SharedStore, b: &SharedStore) {
    a.add_device(device("dev-race", "cat", "cred-race"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                // A loser of a compare-and-set retries, as the sign-in code does.
                for _ in 0..50 {
                    let r = s
                        .update_device(
                            "dev-race".into(),
                            Box::new(|d| {
                                d.sign_count += 1;
                                Ok(())
                            }),
                        )
                        .await;
                    match r {
                        Ok(_) => return,
                        Err(StoreError::Backend(m)) if m.contains("try again") => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("sign-count update failed: {e}"),
                    }
                }
                panic!("sign-count update never went through");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let d = b
        .devices()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == "dev-race")
        .unwrap();
    assert_eq!(d.sign_count, 20);
}

/// CLI codes and ceremonies put through one handle are seen and taken once through the
/// other, and judged live by the `now` passed in.
pub async fn sign_in_state(a: &SharedStore, b: &SharedStore) {
    let code = CliCodeRec {
        challenge: "ch".into(),
        token: "tok".into(),
        expires: 160,
    };
    a.put_cli_code("k".into(), code.clone(), 100).await.unwrap();
    assert_eq!(
        b.take_cli_code("k".into(), 159).await.unwrap(),
        Some(code.clone())
    );
    assert_eq!(a.take_cli_code("k".into(), 159).await.unwrap(), None);
    a.put_cli_code("late".into(), code.clone(), 100)
        .await
        .unwrap();
    assert_eq!(b.take_cli_code("late".into(), 160).await.unwrap(), None);
    let rec = CeremonyRec {
        identity: serde_json::json!({"user": "ann"}),
        cli: None,
        posture: None,
        pending: None,
        expires: 700,
    };
    a.put_ceremony("c".into(), rec.clone(), 100).await.unwrap();
    assert_eq!(b.ceremony("c".into()).await.unwrap(), Some(rec.clone()));
    let (before, after) = b
        .update_ceremony(
            "c".into(),
            101,
            Box::new(|c| {
                c.pending = Some(serde_json::json!({"kind": "assert"}));
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!((before.pending, after.pending.is_some()), (None, true));
    let late = a
        .update_ceremony("c".into(), 700, Box::new(|_| Ok(())))
        .await;
    assert_eq!(refusal(late), Refusal::UnknownCeremony);
    let taken = a.take_ceremony("c".into(), 102).await.unwrap().unwrap();
    assert!(taken.pending.is_some());
    assert_eq!(b.take_ceremony("c".into(), 102).await.unwrap(), None);
    assert_eq!(a.ceremony("c".into()).await.unwrap(), None);
}

/// Replicas register once per id while alive; published keys retire and expire; the first
/// shared value stays.
pub async fn replicas_and_their_keys(a: &SharedStore, b: &SharedStore) {
    let rec = |id: &str, instance: &str| ReplicaRec {
        id: id.into(),
        instance: instance.into(),
        client_addr: "127.0.0.1:8443".into(),
        connector_addrs: vec!["gw-a.example:8444".into()],
        version: "0.1.0".into(),
        started: 100,
        heartbeat: 100,
    };
    a.heartbeat(rec("gw-a", "i1"), 100, 10).await.unwrap();
    b.heartbeat(rec("gw-b", "i2"), 100, 10).await.unwrap();
    a.heartbeat(rec("gw-a", "i1"), 105, 10).await.unwrap();
    // A second process claiming a live replica's id is refused; once it is silent, allowed.
    let taken = b.heartbeat(rec("gw-a", "i3"), 109, 10).await;
    assert_eq!(refusal(taken), Refusal::ReplicaIdTaken("gw-a".into()));
    let all = b.replicas().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let gw_a = all.iter().find(|r| r.id == "gw-a").unwrap();
    assert_eq!((gw_a.instance.as_str(), gw_a.heartbeat), ("i1", 105));
    assert_eq!(gw_a.connector_addrs, ["gw-a.example:8444"]);
    b.heartbeat(rec("gw-a", "i3"), 116, 10).await.unwrap();
    // Leaving takes only the holder's own record.
    a.leave("gw-a".into(), "i1".into()).await.unwrap();
    assert_eq!(a.replicas().await.unwrap().len(), 2);
    a.leave("gw-a".into(), "i3".into()).await.unwrap();
    let ids: Vec<String> = b
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["gw-b"]);

    let key = |kid: &str, replica: &str, created| PublishedKey {
        kid: kid.into(),
        public_pem: format!("pem of {kid}"),
        replica: replica.into(),
        created,
        expires: None,
    };
    a.publish_key(key("ka1", "gw-a", 100), 100, 50)
        .await
        .unwrap();
    b.publish_key(key("kb1", "gw-b", 100), 100, 50)
        .await
        .unwrap();
    // Publishing again changes nothing.
    a.publish_key(key("ka1", "gw-a", 101), 101, 50)
        .await
        .unwrap();
    // gw-a moves to a new key: the old one verifies for 50 s more, then is gone.
    a.publish_key(key("ka2", "gw-a", 120), 120, 50)
        .await
        .unwrap();
    let kids = |keys: Vec<PublishedKey>| {
        let mut k: Vec<(String, Option<u64>)> =
            keys.into_iter().map(|k| (k.kid, k.expires)).collect();
        k.sort();
        k
    };
    assert_eq!(
        kids(b.published_keys(121).await.unwrap()),
        [
            ("ka1".to_owned(), Some(170)),
            ("ka2".to_owned(), None),
            ("kb1".to_owned(), None)
        ]
    );
    assert_eq!(
        kids(b.published_keys(170).await.unwrap()),
        [("ka2".to_owned(), None), ("kb1".to_owned(), None)]
    );
    let first = a
        .shared_value("deployment_id".into(), "dep-a".into())
        .await
        .unwrap();
    let second = b
        .shared_value("deployment_id".into(), "dep-b".into())
        .await
        .unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("dep-a", "dep-a"));
}

/// A revocation through one handle reaches the other's change stream within 2 s.
pub async fn changes_reach_the_other_handle(a: &SharedStore, b: &SharedStore) {
    let mut rx = b.changes();
    // Let the feed start (a SQL store's listener connects on first use).
    tokio::time::sleep(Duration::from_millis(600)).await;
    while rx.try_recv().is_ok() {}
    a.revoke_token(
        RevokedToken {
            jti: "j-feed".into(),
            exp: u64::MAX / 4,
            user: "ann".into(),
            revoked: 40,
        },
        40,
    )
    .await
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match rx.recv().await.unwrap() {
                Change::TokenRevoked(j) if j == "j-feed" => return,
                Change::External => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the other handle heard nothing within 2 s");
}
