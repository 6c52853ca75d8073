//! Full WebAuthn ceremonies against the device endpoints, with a small software authenticator
//! (ES256 via ring, CBOR via serde_cbor_2): registration, approval, assertion with a posture
//! report, the token it yields, and every refusal with its audited reason. The real-browser
//! tests (Chromium's virtual authenticator) live in tests/tests/device_browser.rs.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_cbor_2::Value as Cbor;
use serde_json::{json, Value};

use super::routes::{handle_body, Step};
use crate::app::App;
use crate::authn::oidc::{pkce_challenge, CliRequest, Identity};
use crate::state::DeviceStatus;
use postern_proto::confirm::ConfirmCode;

const ORIGIN: &str = "https://localhost:8443";
const POLICY: &str = r#"
[[endpoints]]
name = "pacs"
site = "truro"
host = "10.0.0.1"
port = 104
protocol = "dicom"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs"]
[rules.device]
approved = true
user_verified = true
posture = { disk_encrypted = "true" }
"#;

fn b64(d: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(d)
}
fn sha256(d: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, d)
        .as_ref()
        .to_vec()
}

/// A platform authenticator in software: one ES256 key per credential, a sign counter.
struct SoftAuthenticator {
    key: EcdsaKeyPair,
    cred_id: Vec<u8>,
    counter: u32,
    rng: SystemRandom,
    /// RP id it answers for (a phishing site would be another).
    rp_id: String,
    origin: String,
}

impl SoftAuthenticator {
    fn new() -> SoftAuthenticator {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        SoftAuthenticator {
            key,
            cred_id: postern_proto::ids::random_bytes(16).unwrap(),
            counter: 0,
            rng,
            rp_id: "localhost".into(),
            origin: ORIGIN.into(),
        }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        json!({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false})
            .to_string()
            .into_bytes()
    }

    fn cose_key(&self) -> Vec<u8> {
        let pt = self.key.public_key().as_ref();
        let map: std::collections::BTreeMap<Cbor, Cbor> = [
            (Cbor::Integer(1), Cbor::Integer(2)),
            (Cbor::Integer(3), Cbor::Integer(-7)),
            (Cbor::Integer(-1), Cbor::Integer(1)),
            (Cbor::Integer(-2), Cbor::Bytes(pt[1..33].to_vec())),
            (Cbor::Integer(-3), Cbor::Bytes(pt[33..65].to_vec())),
        ]
        .into_iter()
        .collect();
        serde_cbor_2::to_vec(&Cbor::Map(map)).unwrap()
    }

    /// `navigator.credentials.create()` on the options from register/begin.
    fn create(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        assert_eq!(pk["rp"]["id"], "localhost");
        assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
        let cd = self.client_data("webauthn.create", pk["challenge"].as_str().unwrap());
        let mut auth = sha256(self.rp_id.as_bytes());
        auth.push(0x01 | 0x04 | 0x40); // user present, user verified, attested credential data
        auth.extend_from_slice(&self.counter.to_be_bytes());
        auth.extend_from_slice(&[0x5a; 16]); // AAGUID
        auth.extend_from_slice(&(self.cred_id.len() as u16).to_be_bytes());
        auth.extend_from_slice(&self.cred_id);
        auth.extend_from_slice(&self.cose_key());
        let att: std::collections::BTreeMap<Cbor, Cbor> = [
            (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
            (Cbor::Text("attStmt".into()), Cbor::Map(Default::default())),
            (Cbor::Text("authData".into()), Cbor::Bytes(auth)),
        ]
        .into_iter()
        .collect();
        json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "extensions": {},
            "response": {
                "attestationObject": b64(&serde_cbor_2::to_vec(&Cbor::Map(att)).unwrap()),
                "clientDataJSON": b64(&cd),
                "transports": ["internal"],
            }
        })
    }

    /// `navigator.credentials.get()` on the options from assert/begin.
    fn get(&mut self, options: &Value, uv: bool) -> Value {
        let pk = &options["publicKey"];
        let cd = self.client_data("webauthn.get", pk["challenge"].as_str().unwrap());
        self.counter += 1;
        let mut auth = sha256(self.rp_id.as_bytes());
        auth.push(if uv { 0x05 } else { 0x01 });
        auth.extend_from_slice(&self.counter.to_be_bytes());
        let mut msg = auth.clone();
        msg.extend_from_slice(&sha256(&cd));
        let sig = self.key.sign(&self.rng, &msg).unwrap();
        json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "extensions": {},
            "response": {
                "authenticatorData": b64(&auth),
                "clientDataJSON": b64(&cd),
                "signature": b64(sig.as_ref()),
                "userHandle": null,
            }
        })
    }
}

struct Harness {
    gw: Arc<App>,
    _dir: tempfile::TempDir,
    peer: SocketAddr,
    calls: std::sync::atomic::AtomicU32,
}

async fn harness(approval: crate::config::Approval) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let mut config =
        crate::Config::local(&dir.path().join("state"), &dir.path().join("policy.toml"));
    config.oidc = Some(crate::config::OidcConfig {
        issuer: "https://idp.example".into(),
        client_id: "postern".into(),
        client_secret: crate::config::SecretSource::Inline(crate::config::Secret("s".into())),
        redirect_url: format!("{ORIGIN}/auth/callback"),
        scopes: vec![],
        user_claim: "email".into(),
        groups_claim: "groups".into(),
        name_claim: "name".into(),
        ae_title_claim: "ae_title".into(),
        mfa_amr: vec![],
        mfa_acr: vec![],
        session_ttl: std::time::Duration::from_secs(3600),
        ca_file: None,
        insecure_http_issuer: false,
    });
    config.devices.approval = approval;
    let listeners = crate::Listeners::bind(&config).await.unwrap();
    let addr = listeners.connectors.local_addr().unwrap();
    let gw = App::open(config, addr).await.unwrap();
    assert!(gw.devices.ceremonies.enabled());
    Harness {
        gw,
        _dir: dir,
        peer: "127.0.0.1:5555".parse().unwrap(),
        calls: Default::default(),
    }
}

fn identity(user: &str) -> Identity {
    Identity {
        user: user.into(),
        subject: format!("sub-{user}"),
        name: Some("Dr Ann Jones".into()),
        email: Some(user.into()),
        groups: vec!["radiologists".into()],
        ae_titles: vec![],
        mfa: true,
        auth_time: None,
        issuer: "https://idp.example".into(),
        browser: None,
    }
}

const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K1qUVBQ5yqT9e2m8MvWj8B6Hhk";
/// The confirmation code `postern login` printed for the harness's CLI sign-ins.
const CODE: &str = "ABCD-2345";

fn posture(disk: &str) -> postern_proto::posture::PostureReport {
    postern_proto::posture::PostureReport::parse(
        format!(r#"{{"os":"linux","os_name":"Ubuntu","os_version":"24.04","facts":{{"disk_encrypted":"{disk}","firewall":"unknown","screen_lock":"true"}},"collected_at":1760000000}}"#)
            .as_bytes(),
    )
    .unwrap()
}

impl Harness {
    /// A signed-in user waiting for the device ceremony (a CLI sign-in with a posture report).
    async fn ceremony(&self, user: &str, disk: &str) -> String {
        self.gw
            .devices
            .ceremonies
            .open(
                identity(user),
                Some(CliRequest {
                    redirect: "http://127.0.0.1:7777/callback".into(),
                    challenge: pkce_challenge(VERIFIER),
                    state: "st".into(),
                    code: ConfirmCode::parse(CODE).unwrap(),
                    posture: Some(posture(disk)),
                }),
            )
            .await
            .unwrap()
    }

    /// Posts `body` for `step`; a begin body without `confirm` gets the sign-in's code, as
    /// the page sends it once the person confirmed (pass `"confirm": null` to leave it out).
    async fn call(&self, ceremony: &str, step: Step, mut body: Value) -> (u16, Value) {
        if matches!(step, Step::AssertBegin | Step::RegisterBegin) {
            if let Some(o) = body.as_object_mut() {
                o.entry("confirm").or_insert(json!(CODE));
            }
        }
        self.raw(Some(ceremony), step, Bytes::from(body.to_string()))
            .await
    }

    async fn raw(&self, cookie: Option<&str>, step: Step, body: Bytes) -> (u16, Value) {
        // A fresh source address per call keeps the per-address sign-in rate limit out of
        // the way (it has its own tests).
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = SocketAddr::from(([127, 0, (n / 250) as u8, (n % 250) as u8 + 1], 5555));
        let r = handle_body(
            self.gw.devices.clone(),
            cookie.map(str::to_owned),
            Ok(body),
            peer,
            step,
        )
        .await;
        let status = r.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn register(
        &self,
        c: &str,
        auth: &mut SoftAuthenticator,
        name: &str,
        disk: &str,
    ) -> (u16, Value) {
        let (st, opts) = self
            .call(c, Step::RegisterBegin, json!({"ceremony": c, "name": name}))
            .await;
        assert_eq!(st, 200, "{opts}");
        let cred = auth.create(&opts);
        let p = serde_json::to_value(posture(disk)).unwrap();
        self.call(
            c,
            Step::RegisterFinish,
            json!({"ceremony": c, "credential": cred, "posture": p}),
        )
        .await
    }

    /// begin + get; returns the finish body (not posted).
    async fn assertion(&self, c: &str, auth: &mut SoftAuthenticator, disk: &str) -> Value {
        let (st, opts) = self
            .call(c, Step::AssertBegin, json!({"ceremony": c}))
            .await;
        assert_eq!(st, 200, "{opts}");
        let cred = auth.get(&opts, true);
        let p = serde_json::to_value(posture(disk)).unwrap();
        json!({"ceremony": c, "credential": cred, "posture": p})
    }

    async fn reload(&self) {
        self.gw.authn.reload(&*self.gw.store).await.unwrap();
    }

    async fn device(&self, user: &str) -> crate::state::DeviceRec {
        let all = self.gw.store.devices().await.unwrap();
        let mut d: Vec<_> = all.into_iter().filter(|d| d.user == user).collect();
        d.pop().unwrap()
    }

    async fn audit_lines(&self) -> Vec<Value> {
        // The log is written by a background task; wait until it has caught up.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.gw.config.audit_dir).unwrap() {
            let p = e.unwrap().path();
            if let Ok(t) = std::fs::read_to_string(&p) {
                out.extend(
                    t.lines()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
                );
            }
        }
        out
    }

    async fn failures(&self) -> Vec<String> {
        self.audit_lines()
            .await
            .into_iter()
            .filter(|e| e["type"] == "device.assertion_failed")
            .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn register_approve_assert_and_the_token_carries_the_device() {
    let h = harness(crate::config::Approval::Manual).await;
    let mut laptop = SoftAuthenticator::new();
    const DISK: &str = "true";

    // No device yet: assertion does not start (webauthn-rs would accept an empty list).
    let c = h.ceremony("ann@truro.nhs.uk", DISK).await;
    let (st, body) = h.call(&c, Step::AssertBegin, json!({"ceremony": c})).await;
    assert_eq!((st, body["error"].as_str()), (409, Some("no_devices")));

    // Manual approval: registered but pending, no token.
    let (st, body) = h.register(&c, &mut laptop, "home laptop", DISK).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "pending");
    let dev = h.device("ann@truro.nhs.uk").await;
    assert_eq!(dev.status, DeviceStatus::Pending);
    assert_eq!(dev.name, "home laptop");
    assert_eq!(dev.aaguid, "5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a");
    assert!(dev.user_verified);
    assert_eq!(
        dev.posture.as_ref().unwrap().facts["disk_encrypted"].as_str(),
        "true"
    );

    // Signing in again on the pending laptop: refused as pending.
    h.reload().await;
    let c = h.ceremony("ann@truro.nhs.uk", DISK).await;
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("device_pending")),
        "{body}"
    );
    // The ceremony waits for the approval: the page asks, and hears "pending".
    let waiting = c.clone();
    let (st, body) = h
        .call(&waiting, Step::Wait, json!({"ceremony": waiting}))
        .await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("pending")),
        "{body}"
    );

    // Approved by the security team: the waiting ceremony carries on, and the next sign-in
    // gets a device-bound token.
    crate::admin::device_approve(&h.gw.config, &dev.id)
        .await
        .unwrap();
    h.reload().await;
    let (st, body) = h
        .call(&waiting, Step::Wait, json!({"ceremony": waiting}))
        .await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let fin = h.assertion(&waiting, &mut laptop, DISK).await;
    let (st, body) = h.call(&waiting, Step::AssertFinish, fin).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ok")), "{body}");
    // A ceremony that waits for nothing is refused.
    let (st, body) = h
        .call(&waiting, Step::Wait, json!({"ceremony": waiting}))
        .await;
    assert_eq!(st, 400, "{body}");
    let c = h.ceremony("ann@truro.nhs.uk", DISK).await;
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin.clone()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["device"], dev.id.as_str());
    let redirect = body["redirect"].as_str().unwrap();
    assert!(
        redirect.starts_with("http://127.0.0.1:7777/callback?code="),
        "{redirect}"
    );
    let code = redirect
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let oidc = h.gw.authn.oidc.clone().unwrap();
    let token = oidc.redeem_cli_code(code, VERIFIER).await.unwrap();
    let claims = h.gw.authn.keys.verify(&token, h.gw.clock.unix()).unwrap();
    assert_eq!(claims.device.as_deref(), Some(dev.id.as_str()));
    assert!(claims.uv);
    assert_eq!(claims.posture.as_ref().unwrap()["disk_encrypted"], "true");
    assert!(h.gw.authn.check_live(&claims).is_ok());
    // The policy sees an approved, user-verified device with the signed posture.
    let facts = h.gw.authn.subject(claims.clone(), h.peer).device.unwrap();
    let groups = claims.groups.clone();
    let req =
        postern_policy::Request::new(&claims.sub, &groups, "pacs", std::time::SystemTime::now())
            .with_device(&facts);
    assert!(h.gw.policy().evaluate(&req).is_allowed());
    // Three assertions so far: the pending one, the waiting ceremony's, this one.
    assert_eq!(h.device("ann@truro.nhs.uk").await.sign_count, 3);

    // Replay of the same finish body: the challenge was consumed.
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unknown_challenge"))
    );

    // Revoked: the token stops working and a new assertion is refused as revoked.
    crate::admin::device_revoke(&h.gw.config, &dev.id, "laptop lost")
        .await
        .unwrap();
    h.reload().await;
    assert!(matches!(
        h.gw.authn.check_live(&claims),
        Err(crate::authn::tokens::TokenError::DeviceNotActive(..))
    ));
    let c = h.ceremony("ann@truro.nhs.uk", DISK).await;
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!((st, body["error"].as_str()), (403, Some("device_revoked")));

    let events = h.audit_lines().await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for k in [
        "device.registered",
        "device.approved",
        "device.verified",
        "posture.reported",
        "auth.login",
        "device.revoked",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    let login = events.iter().find(|e| e["type"] == "auth.login").unwrap();
    assert_eq!(login["device"]["id"], dev.id.as_str());
    let failures = h.failures().await;
    for code in ["device_pending", "unknown_challenge", "device_revoked"] {
        assert!(
            failures.iter().any(|f| f.contains(&format!(": {code}: "))),
            "no {code} in {failures:?}"
        );
    }
    h.gw.audit.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn each_bad_assertion_is_refused_with_its_own_audited_reason() {
    let h = harness(crate::config::Approval::Auto).await;
    let mut laptop = SoftAuthenticator::new();
    const DISK: &str = "false";
    let user = "bob@truro.nhs.uk";

    // Auto approval: active at once, then the assertion completes the sign-in.
    let c = h.ceremony(user, DISK).await;
    let (st, body) = h.register(&c, &mut laptop, "home laptop", DISK).await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(st, 200, "{body}");
    h.reload().await;

    // Posture report altered after signing.
    let c = h.ceremony(user, DISK).await;
    let mut fin = h.assertion(&c, &mut laptop, DISK).await;
    fin["posture"]["facts"]["disk_encrypted"] = "true".into();
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("posture_mismatch")),
        "{body}"
    );

    // An assertion for another RP id (a look-alike site).
    let c = h.ceremony(user, DISK).await;
    laptop.rp_id = "evil.example".into();
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    laptop.rp_id = "localhost".into();
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("rp_id_mismatch")),
        "{body}"
    );

    // Another origin in the client data.
    let c = h.ceremony(user, DISK).await;
    laptop.origin = "https://evil.example".into();
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    laptop.origin = ORIGIN.into();
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("origin_mismatch")),
        "{body}"
    );

    // Another authenticator, not registered to this user.
    let mut stranger = SoftAuthenticator::new();
    let c = h.ceremony(user, DISK).await;
    let fin = h.assertion(&c, &mut stranger, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("unknown_credential")),
        "{body}"
    );

    // A challenge other than the one issued.
    let c = h.ceremony(user, DISK).await;
    let (_, opts) = h.call(&c, Step::AssertBegin, json!({"ceremony": c})).await;
    let mut forged = opts.clone();
    forged["publicKey"]["challenge"] = b64(&[3u8; 32]).into();
    let cred = laptop.get(&forged, true);
    let p = serde_json::to_value(posture("false")).unwrap();
    let (st, body) = h
        .call(
            &c,
            Step::AssertFinish,
            json!({"ceremony": c, "credential": cred, "posture": p}),
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("challenge_mismatch")),
        "{body}"
    );

    // User verification missing.
    let c = h.ceremony(user, DISK).await;
    let (_, opts) = h.call(&c, Step::AssertBegin, json!({"ceremony": c})).await;
    let cred = laptop.get(&opts, false);
    let (st, body) = h
        .call(
            &c,
            Step::AssertFinish,
            json!({"ceremony": c, "credential": cred, "posture": p}),
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("user_not_verified")),
        "{body}"
    );

    // Bad input: malformed JSON, unknown fields, oversized client data, a foreign cookie.
    let c = h.ceremony(user, DISK).await;
    let (st, body) = h
        .raw(
            Some(&c),
            Step::AssertFinish,
            Bytes::from_static(b"{not json"),
        )
        .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("bad_request")));
    let (st, body) = h
        .call(&c, Step::AssertBegin, json!({"ceremony": c, "evil": 1}))
        .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("bad_request")));
    let (_, _) = h.call(&c, Step::AssertBegin, json!({"ceremony": c})).await;
    let huge = json!({"ceremony": c, "posture": p, "credential": {"id": "x", "rawId": "x", "type": "public-key",
        "response": {"clientDataJSON": "A".repeat(20_000), "authenticatorData": "", "signature": ""}}});
    let (st, body) = h.call(&c, Step::AssertFinish, huge).await;
    assert_eq!((st, body["error"].as_str()), (413, Some("oversized")));
    let (st, body) = h
        .raw(
            Some("someone-elses"),
            Step::AssertBegin,
            Bytes::from(json!({"ceremony": c}).to_string()),
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unknown_challenge"))
    );
    let (st, body) = h
        .raw(
            None,
            Step::AssertBegin,
            Bytes::from(json!({"ceremony": "nope"}).to_string()),
        )
        .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unknown_challenge"))
    );
    let r = handle_body(
        h.gw.devices.clone(),
        Some(c.clone()),
        Err("70000 bytes or more".into()),
        h.peer,
        Step::AssertFinish,
    )
    .await;
    assert_eq!(r.status().as_u16(), 413);

    // The sign count goes backwards (a cloned key): refused and the device suspended.
    let c = h.ceremony(user, DISK).await;
    laptop.counter = 0;
    let fin = h.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (403, Some("possible_clone")),
        "{body}"
    );
    assert_eq!(h.device(user).await.status, DeviceStatus::Suspect);

    let failures = h.failures().await;
    for code in [
        "posture_mismatch",
        "rp_id_mismatch",
        "origin_mismatch",
        "unknown_credential",
        "challenge_mismatch",
        "user_not_verified",
        "bad_request",
        "oversized",
        "unknown_challenge",
        "possible_clone",
    ] {
        assert!(
            failures.iter().any(|f| f.contains(&format!(": {code}: "))),
            "no {code} in {failures:?}"
        );
    }
    h.gw.audit.close().await.unwrap();
}

/// Sign-in state lives in the store, not in a process: a second replica built on the same
/// state directory (nothing in memory shared) carries on a ceremony the first one opened, and
/// the first redeems the CLI code the second issued.
#[tokio::test(flavor = "current_thread")]
async fn a_second_replica_on_the_same_store_finishes_a_ceremony_the_first_opened() {
    let h = harness(crate::config::Approval::Auto).await;
    let mut laptop = SoftAuthenticator::new();
    const DISK: &str = "true";
    let user = "cat@truro.nhs.uk";

    // Replica one: the IdP callback opens the ceremony; the page asks for a registration.
    let c = h.ceremony(user, DISK).await;
    let (st, opts) = h
        .call(
            &c,
            Step::RegisterBegin,
            json!({"ceremony": c, "name": "home laptop"}),
        )
        .await;
    assert_eq!(st, 200, "{opts}");
    let cred = laptop.create(&opts);

    // Replica two: a fresh application on the same state directory, its own audit log.
    let mut config = h.gw.config.clone();
    config.audit_dir = h._dir.path().join("audit-replica-2");
    let second = Harness {
        gw: App::open(config, "127.0.0.1:1".parse().unwrap())
            .await
            .unwrap(),
        _dir: tempfile::tempdir().unwrap(),
        peer: h.peer,
        calls: Default::default(),
    };
    let p = serde_json::to_value(posture(DISK)).unwrap();
    let (st, body) = second
        .call(
            &c,
            Step::RegisterFinish,
            json!({"ceremony": c, "credential": cred, "posture": p}),
        )
        .await;
    assert_eq!(
        (st, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );

    // The assertion starts on replica two and finishes on replica one.
    let fin = second.assertion(&c, &mut laptop, DISK).await;
    let (st, body) = h.call(&c, Step::AssertFinish, fin.clone()).await;
    assert_eq!(st, 200, "{body}");
    let redirect = body["redirect"].as_str().unwrap();
    let code = redirect
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    // The ceremony is finished everywhere: a replay on replica two finds nothing.
    let (st, body) = second.call(&c, Step::AssertFinish, fin).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unknown_challenge"))
    );
    // The CLI redeems its code at replica two, once.
    let oidc = second.gw.authn.oidc.clone().unwrap();
    let token = oidc.redeem_cli_code(code, VERIFIER).await.unwrap();
    assert_eq!(oidc.redeem_cli_code(code, VERIFIER).await, None);
    let claims = second
        .gw
        .authn
        .keys
        .verify(&token, second.gw.clock.unix())
        .unwrap();
    assert_eq!(claims.sub, user);
    assert_eq!(
        claims.device.as_deref(),
        Some(h.device(user).await.id.as_str())
    );
    h.gw.audit.close().await.unwrap();
    second.gw.audit.close().await.unwrap();
}

/// Issue #12 finding 8: a CLI sign-in's ceremony starts only with the confirmation code kept
/// with it; an absent or different code is refused with its own reason, before any challenge
/// is issued, for registration and assertion alike.
#[tokio::test(flavor = "current_thread")]
async fn a_cli_ceremony_starts_only_with_its_confirmation_code() {
    let h = harness(crate::config::Approval::Auto).await;
    let mut laptop = SoftAuthenticator::new();
    let c = h.ceremony("ann@truro.nhs.uk", "true").await;
    for step in [Step::RegisterBegin, Step::AssertBegin] {
        let body = |confirm: Value| json!({"ceremony": c, "name": "laptop", "confirm": confirm});
        let body = |confirm: Value| {
            let mut b = body(confirm);
            if step == Step::AssertBegin {
                b.as_object_mut().unwrap().remove("name");
            }
            b
        };
        let (st, r) = h.call(&c, step, body(Value::Null)).await;
        assert_eq!(
            (st, r["error"].as_str()),
            (400, Some("confirmation_required")),
            "{step:?} {r}"
        );
        for forged in [
            "ABCD-2346",
            "WXYZ-9876",
            "",
            "ABCD-2345-ABCD-2345",
            "abcd-0000",
        ] {
            let (st, r) = h.call(&c, step, body(json!(forged))).await;
            assert_eq!(
                (st, r["error"].as_str()),
                (400, Some("code_mismatch")),
                "{step:?} {forged}: {r}"
            );
        }
    }
    let failures = h.failures().await;
    assert!(
        failures.iter().any(|d| d.contains("confirmation_required")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|d| d.contains("code_mismatch")),
        "{failures:?}"
    );
    // Nothing was issued: a finish now finds no challenge.
    let p = serde_json::to_value(posture("true")).unwrap();
    let (st, r) = h
        .call(
            &c,
            Step::AssertFinish,
            json!({"ceremony": c, "credential": {}, "posture": p}),
        )
        .await;
    assert_eq!(
        (st, r["error"].as_str()),
        (400, Some("unknown_challenge")),
        "{r}"
    );
    // The same code, as typed (lower case, no dash), starts the ceremony.
    let (st, r) = h
        .call(
            &c,
            Step::RegisterBegin,
            json!({"ceremony": c, "name": "laptop", "confirm": "abcd2345"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = h.register(&c, &mut laptop, "laptop", "true").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("active")), "{r}");
}
