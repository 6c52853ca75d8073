//! The development identity provider over real loopback sockets, driven by a small raw HTTP/1.1
//! client the way a browser and a relying party would drive it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use postern_devidp::{issuer_for, serve, DevIdpConfig, DevIdpError, ACR_MFA, ACR_PWD};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CLIENT_ID: &str = "postern-gateway";
const SECRET: &str = "demo secret: with+odd/chars";
const REDIRECT: &str = "http://127.0.0.1:8443/auth/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct Idp {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DevIdpError>>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let config = DevIdpConfig::demo(CLIENT_ID, SECRET, REDIRECT);
        let task = tokio::spawn(serve(listener, config, async {
            let _ = rx.await;
        }));
        Idp {
            addr,
            stop: Some(tx),
            task,
        }
    }

    fn issuer(&self) -> String {
        issuer_for(self.addr)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends raw bytes, reads the whole answer (the request asks the server to close).
async fn raw(addr: SocketAddr, request: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("server answers in time")
        .ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Resp {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
        .await
        .expect("a well-formed HTTP response")
}

async fn get(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "GET", target, &[], b"").await
}

async fn post_form(addr: SocketAddr, path: &str, extra: &[(&str, &str)], form: &str) -> Resp {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    request(addr, "POST", path, &headers, form.as_bytes()).await
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decoded query parameters of a URL (test-side parser, independent of the crate's).
fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

fn authorize_target(extra: &[(&str, &str)]) -> String {
    let ch = challenge(VERIFIER);
    let mut pairs = vec![
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", "openid profile email groups"),
        ("state", "st/ate+1"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        pairs.retain(|(n, _)| n != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    format!("/authorize?{}", form(&pairs))
}

fn request_id(html: &str) -> String {
    html.split("name=\"request_id\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("login page carries a request id")
        .to_owned()
}

/// authorize → login page → POST /login; returns the Location of the redirect.
async fn sign_in(addr: SocketAddr, username: &str, password: &str) -> String {
    let page = get(addr, &authorize_target(&[])).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let rid = request_id(&page.text());
    let r = post_form(
        addr,
        "/login",
        &[],
        &form(&[
            ("request_id", &rid),
            ("username", username),
            ("password", password),
            ("action", "login"),
        ]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    r.header("location").expect("redirect").to_owned()
}

fn basic() -> String {
    // RFC 6749 §2.3.1: form-encode id and secret, then base64 — as the oauth2 crate does.
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(CLIENT_ID), enc(SECRET)))
    )
}

async fn redeem_basic(addr: SocketAddr, code: &str, verifier: &str) -> Resp {
    let auth = basic();
    post_form(
        addr,
        "/token",
        &[("Authorization", &auth)],
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ]),
    )
    .await
}

fn b64json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies the ES256 signature against the JWKS and returns (header, claims).
fn verify_jwt(jwt: &str, jwks: &Value) -> Result<(Value, Value), &'static str> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("not a compact JWS");
    }
    let header = b64json(parts[0]);
    if header["alg"] != "ES256" {
        return Err("alg");
    }
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .ok_or("no key with that kid")?;
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| "signature encoding")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "bad signature")?;
    Ok((header, b64json(parts[1])))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn full_code_flow_issues_a_verifiable_id_token() {
    let idp = Idp::start().await;
    let addr = idp.addr;
    let issuer = idp.issuer();
    assert_eq!(issuer, format!("http://127.0.0.1:{}", addr.port()));

    // Discovery.
    let d = get(addr, "/.well-known/openid-configuration").await;
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["issuer"], issuer.as_str());
    assert_eq!(d["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(d["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(d["userinfo_endpoint"], format!("{issuer}/userinfo"));
    assert_eq!(d["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        d["scopes_supported"],
        serde_json::json!(["openid", "profile", "email", "groups"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    for claim in ["sub", "groups", "amr", "acr", "email", "name", "auth_time"] {
        assert!(
            d["claims_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == claim),
            "claims_supported lacks {claim}"
        );
    }

    let jwks = get(addr, "/jwks").await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);

    // The login page.
    let page = get(addr, &authorize_target(&[])).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"),
        "{csp}"
    );
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:8443"),
        "the login redirect's target must be allowed: {csp}"
    );
    let html = page.text();
    assert!(html.contains("Development identity provider \u{2014} demo users only"));
    assert!(html.contains("<label for=\"username\">"));
    assert!(html.contains("autocomplete=\"current-password\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    assert!(
        !html.contains("alice\" ") && !html.contains(">alice<br"),
        "sanity"
    );
    let rid = request_id(&html);

    // Log in.
    let before = unix_now();
    let r = post_form(
        addr,
        "/login",
        &[],
        &form(&[
            ("request_id", &rid),
            ("username", "alice"),
            ("password", "alice"),
        ]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT}?code=")),
        "{location}"
    );
    let q = query_of(location);
    assert_eq!(param(&q, "state"), Some("st/ate+1"));
    assert_eq!(param(&q, "iss"), Some(issuer.as_str()));
    let code = param(&q, "code").unwrap().to_owned();
    assert!(code.len() >= 43, "a code carries at least 256 bits");

    // The login form is single-use.
    let again = post_form(
        addr,
        "/login",
        &[],
        &form(&[
            ("request_id", &rid),
            ("username", "alice"),
            ("password", "alice"),
        ]),
    )
    .await;
    assert_eq!(again.status, 400);
    assert!(again.header("location").is_none());

    // Token exchange with HTTP Basic client authentication.
    let t = redeem_basic(addr, &code, VERIFIER).await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.header("cache-control"), Some("no-store"));
    let t = t.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 600);
    assert_eq!(t["scope"], "openid profile email groups");
    let access_token = t["access_token"].as_str().unwrap();
    let id_token = t["id_token"].as_str().unwrap();

    let (header, claims) = verify_jwt(id_token, &jwks).unwrap();
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["name"], "Dr Alice Demo");
    assert_eq!(claims["email"], "alice@demo.nhs.uk");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], serde_json::json!(["radiologists"]));
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "mfa"]));
    assert_eq!(claims["acr"], ACR_MFA);
    let sub = claims["sub"].as_str().unwrap();
    assert!(
        !sub.is_empty() && !sub.contains("alice"),
        "opaque subject: {sub}"
    );
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    let auth_time = claims["auth_time"].as_u64().unwrap();
    assert_eq!(exp - iat, 600);
    assert!(before <= auth_time && auth_time <= iat && iat <= unix_now());
    let digest = ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes());
    assert_eq!(
        claims["at_hash"],
        URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
    );

    // A tampered token does not verify: the check above is real.
    let mut parts: Vec<String> = id_token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["groups"] = serde_json::json!(["admins"]);
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert_eq!(
        verify_jwt(&parts.join("."), &jwks).unwrap_err(),
        "bad signature"
    );

    // Userinfo.
    let bearer = format!("Bearer {access_token}");
    let u = request(addr, "GET", "/userinfo", &[("Authorization", &bearer)], b"").await;
    assert_eq!(u.status, 200);
    let u = u.json();
    assert_eq!(u["sub"], sub);
    assert_eq!(u["email"], "alice@demo.nhs.uk");
    assert_eq!(u["name"], "Dr Alice Demo");
    assert_eq!(u["groups"], serde_json::json!(["radiologists"]));
    let u = request(
        addr,
        "GET",
        "/userinfo",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!(u.status, 401);
    assert!(u.header("www-authenticate").unwrap().starts_with("Bearer"));

    idp.stop().await;
    // Stopped means stopped: nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn client_secret_post_and_a_user_without_mfa() {
    let idp = Idp::start().await;
    let location = sign_in(idp.addr, "lee", "lee").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let t = post_form(
        idp.addr,
        "/token",
        &[],
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ]),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.text());
    let jwks = get(idp.addr, "/jwks").await.json();
    let (_, claims) = verify_jwt(t.json()["id_token"].as_str().unwrap(), &jwks).unwrap();
    assert_eq!(claims["groups"], serde_json::json!(["locums"]));
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert_eq!(claims["acr"], ACR_PWD);
    assert_eq!(claims["name"], "Lee Locum");
    let sub = claims["sub"].as_str().unwrap().to_owned();
    idp.stop().await;

    // `sub` is stable per user across restarts, while the signing key is not.
    let idp2 = Idp::start().await;
    let location = sign_in(idp2.addr, "lee", "lee").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let t = redeem_basic(idp2.addr, &code, VERIFIER).await;
    assert_eq!(t.status, 200, "{}", t.text());
    let jwks2 = get(idp2.addr, "/jwks").await.json();
    let (_, claims2) = verify_jwt(t.json()["id_token"].as_str().unwrap(), &jwks2).unwrap();
    assert_eq!(claims2["sub"], sub.as_str());
    assert_ne!(jwks["keys"][0]["kid"], jwks2["keys"][0]["kid"]);
    idp2.stop().await;
}

#[tokio::test]
async fn wrong_password_shows_the_form_again() {
    let idp = Idp::start().await;
    let page = get(idp.addr, &authorize_target(&[])).await;
    let rid = request_id(&page.text());
    for (user, pass) in [
        ("alice", "lee"),
        ("alice", ""),
        ("nobody", "alice"),
        ("", ""),
    ] {
        let r = post_form(
            idp.addr,
            "/login",
            &[],
            &form(&[("request_id", &rid), ("username", user), ("password", pass)]),
        )
        .await;
        assert_eq!(r.status, 200, "{user}/{pass}");
        assert!(r.header("location").is_none());
        let html = r.text();
        assert!(html.contains("Wrong username or password"), "{html}");
        assert!(html.contains("role=\"alert\""));
        assert_eq!(request_id(&html), rid, "the same request continues");
    }
    // The right password on the same form still works.
    let r = post_form(
        idp.addr,
        "/login",
        &[],
        &form(&[
            ("request_id", &rid),
            ("username", "alice"),
            ("password", "alice"),
        ]),
    )
    .await;
    assert_eq!(r.status, 303);

    // Cancel goes back to the client with access_denied.
    let page = get(idp.addr, &authorize_target(&[])).await;
    let rid = request_id(&page.text());
    let r = post_form(
        idp.addr,
        "/login",
        &[],
        &form(&[("request_id", &rid), ("action", "cancel")]),
    )
    .await;
    assert_eq!(r.status, 303);
    let q = query_of(r.header("location").unwrap());
    assert_eq!(param(&q, "error"), Some("access_denied"));
    assert_eq!(param(&q, "state"), Some("st/ate+1"));
    idp.stop().await;
}

#[tokio::test]
async fn wrong_verifier_fails_and_burns_the_code() {
    let idp = Idp::start().await;
    let location = sign_in(idp.addr, "alice", "alice").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let wrong = "x".repeat(64);
    let t = redeem_basic(idp.addr, &code, &wrong).await;
    assert_eq!(t.status, 400);
    let body = t.json();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body.get("id_token").is_none() && body.get("access_token").is_none());
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier"));

    let t = redeem_basic(idp.addr, &code, VERIFIER).await;
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_grant");

    // A missing verifier is a malformed request.
    let location = sign_in(idp.addr, "alice", "alice").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let auth = basic();
    let t = post_form(
        idp.addr,
        "/token",
        &[("Authorization", &auth)],
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ]),
    )
    .await;
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_request");

    // And a different redirect_uri at the token endpoint fails.
    let location = sign_in(idp.addr, "alice", "alice").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let t = post_form(
        idp.addr,
        "/token",
        &[("Authorization", &auth)],
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:8443/other"),
            ("code_verifier", VERIFIER),
        ]),
    )
    .await;
    assert_eq!(t.status, 400);
    assert_eq!(t.json()["error"], "invalid_grant");
    idp.stop().await;
}

#[tokio::test]
async fn replayed_code_is_refused_and_revokes_the_first_token() {
    let idp = Idp::start().await;
    let location = sign_in(idp.addr, "alice", "alice").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let first = redeem_basic(idp.addr, &code, VERIFIER).await;
    assert_eq!(first.status, 200);
    let access = first.json()["access_token"].as_str().unwrap().to_owned();

    let replay = redeem_basic(idp.addr, &code, VERIFIER).await;
    assert_eq!(replay.status, 400);
    let body = replay.json();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body.get("id_token").is_none() && body.get("access_token").is_none());

    let bearer = format!("Bearer {access}");
    let u = request(
        idp.addr,
        "GET",
        "/userinfo",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(
        u.status, 401,
        "the replay revoked the token issued from the code"
    );
    idp.stop().await;
}

#[tokio::test]
async fn bad_client_or_redirect_uri_is_a_page_not_a_redirect() {
    let idp = Idp::start().await;
    let cases = [
        authorize_target(&[("redirect_uri", "http://evil.example/cb")]),
        authorize_target(&[("redirect_uri", "http://127.0.0.1:8443/auth/callback/")]),
        authorize_target(&[("redirect_uri", "")]),
        authorize_target(&[("client_id", "someone-else")]),
        authorize_target(&[("client_id", "")]),
        format!(
            "{}&redirect_uri=http%3A%2F%2Fevil.example",
            authorize_target(&[])
        ),
    ];
    for target in &cases {
        let r = get(idp.addr, target).await;
        assert_eq!(r.status, 400, "{target}");
        assert!(r.header("location").is_none(), "{target} must not redirect");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.text().contains("Development identity provider"));
    }
    let r = get(idp.addr, &cases[0]).await;
    assert!(r.text().contains("not registered"), "{}", r.text());

    // With a good client and redirect URI, other errors go back to the client (RFC 6749).
    let redirected = [
        (
            authorize_target(&[("code_challenge", "")]),
            "invalid_request",
        ),
        (
            authorize_target(&[("code_challenge_method", "")]),
            "invalid_request",
        ),
        (
            authorize_target(&[("code_challenge_method", "plain")]),
            "invalid_request",
        ),
        (
            authorize_target(&[("code_challenge", "short")]),
            "invalid_request",
        ),
        (
            authorize_target(&[("response_type", "token")]),
            "unsupported_response_type",
        ),
        (
            authorize_target(&[("response_type", "")]),
            "invalid_request",
        ),
        (
            authorize_target(&[("scope", "profile email")]),
            "invalid_scope",
        ),
        (authorize_target(&[("prompt", "none")]), "login_required"),
        (
            authorize_target(&[("request", "eyJ")]),
            "request_not_supported",
        ),
        (
            format!("{}&scope=openid", authorize_target(&[])),
            "invalid_request",
        ),
    ];
    for (target, error) in &redirected {
        let r = get(idp.addr, target).await;
        assert_eq!(r.status, 303, "{target}: {}", r.text());
        let location = r.header("location").unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        let q = query_of(location);
        assert_eq!(param(&q, "error"), Some(*error), "{target}");
        assert_eq!(param(&q, "state"), Some("st/ate+1"), "{target}");
        assert!(param(&q, "code").is_none());
    }
    idp.stop().await;
}

#[tokio::test]
async fn refuses_a_non_loopback_listener() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = DevIdpConfig::demo(CLIENT_ID, SECRET, REDIRECT);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        serve(listener, config, std::future::pending()),
    )
    .await
    .expect("refuses at once instead of serving");
    match &r {
        Err(DevIdpError::NotLoopback { addr: refused }) => assert_eq!(*refused, addr),
        other => panic!("expected NotLoopback, got {other:?}"),
    }
    assert!(r.unwrap_err().to_string().contains("loopback"));
    // The listener was dropped unused: nothing answers on the port.
    let probe = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert!(TcpStream::connect(probe).await.is_err());
}

#[tokio::test]
async fn refuses_a_bad_config() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = DevIdpConfig::demo(CLIENT_ID, SECRET, "not a url");
    config.users.clear();
    let err = serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DevIdpError::Config(_)), "{msg}");
    assert!(
        msg.contains("not a url") && msg.contains("no demo users"),
        "{msg}"
    );
}

#[tokio::test]
async fn token_endpoint_client_authentication() {
    let idp = Idp::start().await;
    let location = sign_in(idp.addr, "alice", "alice").await;
    let code = param(&query_of(&location), "code").unwrap().to_owned();
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ]);
    let wrong_secret = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:nope")));
    let wrong_client = format!(
        "Basic {}",
        STANDARD.encode(format!("other:{}", enc(SECRET)))
    );
    for auth in [
        None,
        Some(wrong_secret.as_str()),
        Some(wrong_client.as_str()),
        Some("Basic !!!not-base64"),
        Some("Basic bm9jb2xvbg=="), // "nocolon"
        Some("Bearer abc"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = post_form(idp.addr, "/token", &headers, &body).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.header("www-authenticate").is_some());
        assert_eq!(r.json()["error"], "invalid_client");
    }
    // Failed client authentication does not burn the code.
    let r = redeem_basic(idp.addr, &code, VERIFIER).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Two authentication methods at once are refused.
    let auth = basic();
    let both = format!("{body}&client_secret={}", enc(SECRET));
    let r = post_form(idp.addr, "/token", &[("Authorization", &auth)], &both).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");

    // Other grant types are refused.
    let r = post_form(
        idp.addr,
        "/token",
        &[("Authorization", &auth)],
        "grant_type=password&username=alice&password=alice",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "unsupported_grant_type");

    // JSON bodies are not form bodies.
    let r = request(
        idp.addr,
        "POST",
        "/token",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    idp.stop().await;
}

/// xorshift64: deterministic garbage without a fuzzing dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[tokio::test]
async fn garbage_never_breaks_it() {
    let idp = Idp::start().await;
    let addr = idp.addr;

    // Bodies over 16 KiB are refused, declared or not.
    let big = vec![b'a'; 17 * 1024];
    let r = post_form(addr, "/token", &[], std::str::from_utf8(&big).unwrap()).await;
    assert_eq!(r.status, 413);
    let mut chunked = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw(addr, &chunked).await.unwrap().status, 413);

    // Hand-picked malformed requests.
    let targets = [
        "/authorize?%",
        "/authorize?client_id=%ZZ",
        "/authorize?client_id=%FF%FE",
        "/authorize?&&&=&=&",
        "/authorize?client_id=postern-gateway&client_id=postern-gateway",
        "/authorize",
        "/login",
        "/.well-known/openid-configuration/../jwks",
        "/nope",
    ];
    for t in targets {
        let r = get(addr, t).await;
        assert!(
            (400..500).contains(&r.status) || r.status == 200,
            "{t}: {}",
            r.status
        );
        assert!(r.header("location").is_none(), "{t}");
    }
    let r = request(addr, "DELETE", "/token", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post_form(
        addr,
        "/login",
        &[],
        "request_id=unknown&username=alice&password=alice",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("expired"));
    let r = post_form(addr, "/login", &[], "request_id=%ZZ").await;
    assert_eq!(r.status, 400);

    // Raw protocol garbage: the connection is closed or answered with 4xx, never a crash.
    for bytes in [
        &b"\x00\x01\x02\xff\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /token HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /token HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"GET /authorize?\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        if let Some(r) = raw(addr, bytes).await {
            let ok = (400..500).contains(&r.status) || r.status == 505;
            assert!(ok, "{bytes:?}: {}", r.status);
        }
    }
    let huge_head = format!(
        "GET /authorize?state={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    if let Some(r) = raw(addr, huge_head.as_bytes()).await {
        assert!((400..500).contains(&r.status), "{}", r.status);
    }

    // Generated forms and queries against every endpoint.
    let names = [
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request_id",
        "username",
        "password",
        "grant_type",
        "code",
        "code_verifier",
        "client_secret",
        "action",
        "prompt",
        "x",
    ];
    let values = [
        CLIENT_ID,
        REDIRECT,
        "code",
        "openid",
        "S256",
        "alice",
        "%",
        "%2",
        "%zz",
        "%C3%28",
        "+",
        "=",
        "",
        "authorization_code",
        "cancel",
        "none",
        "\u{0}",
        "é",
        "&",
        "%00",
    ];
    let ch = challenge(VERIFIER);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut answered = 0;
    for i in 0..400 {
        let mut q = String::new();
        for _ in 0..(rng.next() % 12) {
            let n = rng.pick(&names);
            let v = if rng.next().is_multiple_of(10) {
                ch.as_str()
            } else {
                rng.pick(&values)
            };
            // Values are sent partly raw, so malformed escapes reach the parser.
            let v = if rng.next().is_multiple_of(2) {
                enc(v)
            } else {
                v.replace(['&', ' ', '\u{0}'], "")
            };
            q.push_str(&format!("{n}={v}&"));
        }
        let path = rng.pick(&["/authorize", "/login", "/token", "/userinfo", "/jwks"]);
        let r = if i % 2 == 0 {
            let target = format!("{path}?{}", q.replace(' ', "%20"));
            get(addr, &target).await
        } else {
            let auth = basic();
            let headers: Vec<(&str, &str)> = if rng.next().is_multiple_of(2) {
                vec![("Authorization", auth.as_str())]
            } else {
                vec![]
            };
            post_form(addr, path, &headers, &q).await
        };
        assert!(r.status < 500, "{path}?{q}: {}", r.status);
        if let Some(location) = r.header("location") {
            assert!(
                location.starts_with(REDIRECT),
                "redirects only to the registered URI: {location}"
            );
        }
        answered += 1;
    }
    assert_eq!(answered, 400);

    // Still healthy.
    let d = get(addr, "/.well-known/openid-configuration").await;
    assert_eq!(d.status, 200);
    let location = sign_in(addr, "alice", "alice").await;
    assert!(location.contains("code="));
    idp.stop().await;
}
