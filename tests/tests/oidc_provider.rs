//! The OpenID provider fixture itself (tests/oidc-provider) and the curl browser, exercised by a
//! hand-played relying party: authorization code + PKCE S256, token exchange with the client
//! secret, ID token claims, wrong password, PKCE enforcement, key rotation on restart.
//! Needs node and `npm ci` in tests/oidc-provider; not the Postern binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use postern_e2e::oidc::{
    browser_login, http_get, jwt_decode, pct_encode, pkce_pair, random_token, timed, Browser,
    OidcProvider, OidcUser,
};
use postern_e2e::run;
use serde_json::Value;

const CLIENT: &str = "postern-gateway";
const SECRET: &str = "test-client-secret-0123456789";

/// A loopback HTTP listener standing in for the relying party's callback: answers every
/// request with a small HTML page and records the request targets.
struct Callback {
    url: String,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Callback {
    fn start() -> Callback {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/callback",
            l.local_addr().unwrap().port()
        );
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if r.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                h.lock()
                    .unwrap()
                    .push(line.split_whitespace().nth(1).unwrap_or("").to_owned());
                let body = "<!doctype html><p>signed in: you can close this window</p>\n";
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Callback { url, hits }
    }
}

fn users() -> Vec<OidcUser> {
    vec![
        OidcUser {
            username: "alice",
            password: "correct horse battery staple",
            email: "alice@truro.nhs.test",
            name: "Dr Alice Example",
            groups: vec!["radiology", "clinicians"],
            mfa: true,
        },
        OidcUser::new("bob", "b0b&p=ss word", &["ward-7"], false),
    ]
}

struct Rp {
    authorize_url: String,
    state: String,
    nonce: String,
    verifier: String,
}

fn authorize_request(idp: &OidcProvider, redirect_uri: &str) -> Rp {
    let (verifier, challenge) = pkce_pair();
    let (state, nonce) = (random_token(), random_token());
    let authorize_url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        idp.authorization_endpoint(),
        pct_encode(CLIENT),
        pct_encode(redirect_uri),
        pct_encode("openid profile email groups"),
    );
    Rp {
        authorize_url,
        state,
        nonce,
        verifier,
    }
}

/// POSTs to the token endpoint; `basic` selects client_secret_basic over client_secret_post.
fn token_request(
    idp: &OidcProvider,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
    basic: bool,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"]);
    let mut form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        pct_encode(code),
        pct_encode(redirect_uri),
        pct_encode(verifier)
    );
    if basic {
        cmd.args(["-u", &format!("{CLIENT}:{SECRET}")]);
    } else {
        form.push_str(&format!(
            "&client_id={}&client_secret={}",
            pct_encode(CLIENT),
            pct_encode(SECRET)
        ));
    }
    cmd.args(["--data-raw", &form, &idp.token_endpoint()]);
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "curl token: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[test]
fn code_flow_with_pkce_yields_id_token_with_groups_and_amr() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Callback::start();
    let (idp, took) = timed(|| {
        OidcProvider::start(
            dir.path(),
            CLIENT,
            SECRET,
            std::slice::from_ref(&cb.url),
            &users(),
        )
    });
    eprintln!("oidc-provider start took {took:?}");

    let disc = idp.discovery();
    assert_eq!(disc["issuer"], idp.issuer);
    assert_eq!(
        disc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(disc["authorization_endpoint"], idp.authorization_endpoint());
    assert_eq!(disc["token_endpoint"], idp.token_endpoint());
    assert_eq!(disc["jwks_uri"], idp.jwks_uri());

    // alice: MFA, client_secret_basic
    let rp = authorize_request(&idp, &cb.url);
    let r = browser_login(
        &rp.authorize_url,
        Path::new(""),
        "alice",
        "correct horse battery staple",
    );
    eprintln!("trace: {:#?}", r.trace);
    assert_eq!(r.status, 200, "{r:#?}");
    assert!(r.final_url.starts_with(&format!("{}?", cb.url)), "{r:#?}");
    assert!(r.body.contains("signed in"));
    assert!(r.visited(&format!("{}/interaction/", idp.issuer)));
    assert!(r
        .trace
        .iter()
        .any(|t| t.starts_with("POST ") && t.ends_with("/login")));
    assert_eq!(r.query_param("state").as_deref(), Some(rp.state.as_str()));
    assert_eq!(r.query_param("iss").as_deref(), Some(idp.issuer.as_str()));
    assert_eq!(r.query_param("error"), None);
    let code = r.query_param("code").unwrap();
    assert_eq!(cb.hits.lock().unwrap().len(), 1);

    let (status, tok) = token_request(&idp, &code, &cb.url, &rp.verifier, true);
    assert_eq!(status, 200, "{tok}");
    let (header, claims) = jwt_decode(tok["id_token"].as_str().unwrap());
    eprintln!("ID token header {header}\nclaims {claims:#}");
    assert_eq!(header["alg"], "RS256");
    assert!(idp
        .kids()
        .contains(&header["kid"].as_str().unwrap().to_owned()));
    assert_eq!(claims["iss"], idp.issuer);
    assert_eq!(claims["aud"], CLIENT);
    assert_eq!(claims["sub"], "sub-alice");
    assert_eq!(claims["nonce"], rp.nonce);
    assert_eq!(claims["email"], "alice@truro.nhs.test");
    assert_eq!(claims["name"], "Dr Alice Example");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(
        claims["groups"],
        serde_json::json!(["radiology", "clinicians"])
    );
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "mfa"]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let auth_time = claims["auth_time"].as_u64().unwrap();
    assert!(
        auth_time.abs_diff(now) < 60,
        "auth_time {auth_time} now {now}"
    );
    assert!(claims["exp"].as_u64().unwrap() > now);

    // The code is single-use.
    let (status, err) = token_request(&idp, &code, &cb.url, &rp.verifier, true);
    assert_eq!(status, 400);
    assert_eq!(err["error"], "invalid_grant");

    // bob: no MFA, client_secret_post; a wrong verifier is refused first. Stopping short of
    // the callback, then following it with the same browser, is the same as going through.
    let rp = authorize_request(&idp, &cb.url);
    let b = Browser::new(Path::new(""));
    let r = b.login_until(&rp.authorize_url, "bob", "b0b&p=ss word", &cb.url);
    assert_eq!(r.status, 303, "{r:#?}");
    assert!(r.final_url.starts_with(&cb.url), "{r:#?}");
    assert!(!r.visited(&cb.url));
    assert_eq!(cb.hits.lock().unwrap().len(), 1);
    let code = r.query_param("code").unwrap_or_else(|| panic!("{r:#?}"));
    let r = b.get(&r.final_url);
    assert_eq!((r.status, r.trace.len()), (200, 1), "{r:#?}");
    assert_eq!(cb.hits.lock().unwrap().len(), 2);
    // The IdP session is remembered by the same browser: no login form the second time.
    let rp3 = authorize_request(&idp, &cb.url);
    let r = b.login_until(&rp3.authorize_url, "bob", "unused", &cb.url);
    assert!(!r.trace.iter().any(|t| t.starts_with("POST ")), "{r:#?}");
    assert!(r.query_param("code").is_some(), "{r:#?}");
    let (wrong, _) = pkce_pair();
    let (status, err) = token_request(&idp, &code, &cb.url, &wrong, false);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant")),
        "{err}"
    );
    let rp2 = authorize_request(&idp, &cb.url);
    let r = browser_login(&rp2.authorize_url, Path::new(""), "bob", "b0b&p=ss word");
    let code = r.query_param("code").unwrap();
    let (status, tok) = token_request(&idp, &code, &cb.url, &rp2.verifier, false);
    assert_eq!(status, 200, "{tok}");
    let (_, claims) = jwt_decode(tok["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "sub-bob");
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert_eq!(claims["groups"], serde_json::json!(["ward-7"]));
    assert_eq!(claims["email"], "bob@hospital.test");
    assert_eq!(claims["nonce"], rp2.nonce);
}

#[test]
fn wrong_password_ends_on_the_login_form() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Callback::start();
    let idp = OidcProvider::start(
        dir.path(),
        CLIENT,
        SECRET,
        std::slice::from_ref(&cb.url),
        &users(),
    );
    let rp = authorize_request(&idp, &cb.url);
    let r = browser_login(&rp.authorize_url, Path::new(""), "alice", "wrong");
    assert_eq!(r.status, 200, "{r:#?}");
    assert!(r.body.contains("invalid credentials"), "{r:#?}");
    assert!(r.body.contains("name=\"password\""));
    assert!(r
        .final_url
        .starts_with(&format!("{}/interaction/", idp.issuer)));
    assert!(r.final_url.ends_with("/login"));
    assert!(cb.hits.lock().unwrap().is_empty());
    // Unknown user: same answer.
    let r = browser_login(&rp.authorize_url, Path::new(""), "mallory", "x");
    assert!(r.body.contains("invalid credentials"), "{r:#?}");
}

#[test]
fn pkce_is_required_and_s256_only() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Callback::start();
    let idp = OidcProvider::start(
        dir.path(),
        CLIENT,
        SECRET,
        std::slice::from_ref(&cb.url),
        &users(),
    );
    let rp = authorize_request(&idp, &cb.url);
    let base = rp.authorize_url.split("&code_challenge=").next().unwrap();

    let b = Browser::new(Path::new(""));
    let r = b.get(base);
    assert_eq!(
        r.query_param("error").as_deref(),
        Some("invalid_request"),
        "{r:#?}"
    );
    assert!(r.query_param("error_description").unwrap().contains("PKCE"));
    assert_eq!(r.query_param("state").as_deref(), Some(rp.state.as_str()));

    let (verifier, _) = pkce_pair();
    let r = b.get(&format!(
        "{base}&code_challenge={verifier}&code_challenge_method=plain"
    ));
    assert_eq!(
        r.query_param("error").as_deref(),
        Some("invalid_request"),
        "{r:#?}"
    );

    // An unregistered redirect_uri never leaves the IdP.
    let r = b.get(
        &rp.authorize_url
            .replace(&pct_encode(&cb.url), &pct_encode("http://127.0.0.1:9/evil")),
    );
    assert_eq!(r.status, 400, "{r:#?}");
    assert!(r.body.contains("redirect_uri"), "{r:#?}");
    assert!(cb.hits.lock().unwrap().len() == 2);
}

#[test]
fn restart_rotates_keys_and_forgets_state() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Callback::start();
    let mut idp = OidcProvider::start(
        dir.path(),
        CLIENT,
        SECRET,
        std::slice::from_ref(&cb.url),
        &users(),
    );
    let kids = idp.kids();
    assert_eq!(kids.len(), 1);

    // A code issued before the restart is worthless after it.
    let rp = authorize_request(&idp, &cb.url);
    let r = browser_login(
        &rp.authorize_url,
        Path::new(""),
        "alice",
        "correct horse battery staple",
    );
    let code = r.query_param("code").unwrap();

    let ((), took) = timed(|| idp.restart());
    eprintln!("oidc-provider restart took {took:?}");
    let after = idp.kids();
    assert_eq!(after.len(), 1);
    assert_ne!(kids, after, "restart must rotate the signing key");
    let (status, err) = token_request(&idp, &code, &cb.url, &rp.verifier, true);
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant")),
        "{err}"
    );

    // Down, then up again on the same issuer, with alice no longer in radiology.
    idp.stop();
    assert!(http_get(idp.port, "/.well-known/openid-configuration").is_none());
    let mut changed = users();
    changed[0].groups = vec!["clinicians"];
    idp.restart_with_users(&changed);
    let rp = authorize_request(&idp, &cb.url);
    let r = browser_login(
        &rp.authorize_url,
        Path::new(""),
        "alice",
        "correct horse battery staple",
    );
    let (status, tok) = token_request(
        &idp,
        &r.query_param("code").unwrap(),
        &cb.url,
        &rp.verifier,
        true,
    );
    assert_eq!(status, 200, "{tok}");
    let (header, claims) = jwt_decode(tok["id_token"].as_str().unwrap());
    assert_eq!(claims["groups"], serde_json::json!(["clinicians"]));
    assert!(idp
        .kids()
        .contains(&header["kid"].as_str().unwrap().to_owned()));
    assert!(!after.contains(&header["kid"].as_str().unwrap().to_owned()));
}
