//! A deliberately misbehaving OpenID provider for negative tests of the gateway's ID-token
//! checks. It skips the login page (authorize redirects straight back with a code) and, at the
//! token endpoint, returns an ID token crafted per [`Mode`]: valid (to prove the harness is
//! otherwise correct), wrong audience, wrong issuer, expired, `alg: none`, HS256 keyed with the
//! provider's public key, wrong nonce, or signed by a key that is not in the JWKS. Tests that
//! probe claim handling set claims of their own ([`RogueIdp::set_claims`]) and read the last
//! authorization request ([`RogueIdp::last_authorize_query`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// What the token endpoint returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Valid,
    WrongAudience,
    WrongIssuer,
    Expired,
    AlgNone,
    Hs256WithPublicKey,
    WrongNonce,
    UnknownKey,
}

struct Inner {
    mode: Mode,
    /// nonce of the last authorization request
    nonce: String,
    /// query string of the last authorization request
    authorize_query: String,
    /// claims put over the defaults (a `null` removes the claim)
    overrides: serde_json::Map<String, Value>,
}

pub struct RogueIdp {
    pub issuer: String,
    inner: Arc<Mutex<Inner>>,
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

fn es256(key: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
    let header = b64(json!({"alg": "ES256", "typ": "JWT", "kid": kid})
        .to_string()
        .as_bytes());
    let payload = b64(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

fn jwk(key: &EcdsaKeyPair) -> Value {
    let pk = key.public_key().as_ref(); // 0x04 || x || y
    json!({"kty": "EC", "crv": "P-256", "x": b64(&pk[1..33]), "y": b64(&pk[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"})
}

fn respond(s: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| crate::oidc::pct_decode(v))
        .unwrap_or_default()
}

impl RogueIdp {
    /// Starts on a free loopback port; `client_id` is the audience of valid tokens.
    pub fn start(client_id: &str) -> RogueIdp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            mode: Mode::Valid,
            nonce: String::new(),
            authorize_query: String::new(),
            overrides: serde_json::Map::new(),
        }));
        let (iss, shared, aud) = (issuer.clone(), inner.clone(), client_id.to_owned());
        let signing = key();
        let stranger = key();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let mut buf = vec![0u8; 16384];
                let mut used = 0;
                while let Ok(n) = s.read(&mut buf[used..]) {
                    if n == 0 {
                        break;
                    }
                    used += n;
                    let text = String::from_utf8_lossy(&buf[..used]);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len || used == buf.len() {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..used]).into_owned();
                let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
                match path {
                    "/.well-known/openid-configuration" => {
                        let doc = json!({
                            "issuer": iss,
                            "authorization_endpoint": format!("{iss}/authorize"),
                            "token_endpoint": format!("{iss}/token"),
                            "jwks_uri": format!("{iss}/jwks"),
                            "response_types_supported": ["code"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["ES256"],
                            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                        });
                        respond(
                            &mut s,
                            "200 OK",
                            "content-type: application/json\r\n",
                            &doc.to_string(),
                        );
                    }
                    "/jwks" => {
                        let body = json!({"keys": [jwk(&signing)]}).to_string();
                        respond(
                            &mut s,
                            "200 OK",
                            "content-type: application/json\r\n",
                            &body,
                        );
                    }
                    "/authorize" => {
                        {
                            let mut i = shared.lock().unwrap();
                            i.nonce = param(query, "nonce");
                            i.authorize_query = query.to_owned();
                        }
                        let loc = format!(
                            "{}?code=rogue-code&state={}",
                            param(query, "redirect_uri"),
                            crate::oidc::pct_encode(&param(query, "state"))
                        );
                        respond(&mut s, "303 See Other", &format!("location: {loc}\r\n"), "");
                    }
                    "/token" => {
                        let (mode, nonce, overrides) = {
                            let i = shared.lock().unwrap();
                            (i.mode, i.nonce.clone(), i.overrides.clone())
                        };
                        let t = now();
                        let mut claims = json!({
                            "iss": iss, "sub": "sub-mallory", "aud": aud, "exp": t + 300, "iat": t,
                            "nonce": nonce, "email": "mallory@hospital.test", "email_verified": true,
                            "groups": ["radiologists"],
                        });
                        for (k, v) in overrides {
                            if v.is_null() {
                                claims.as_object_mut().unwrap().remove(&k);
                            } else {
                                claims[k] = v;
                            }
                        }
                        let id_token = match mode {
                            Mode::Valid => es256(&signing, "k1", &claims),
                            Mode::WrongAudience => {
                                claims["aud"] = json!("someone-else");
                                es256(&signing, "k1", &claims)
                            }
                            Mode::WrongIssuer => {
                                claims["iss"] = json!("https://evil.example");
                                es256(&signing, "k1", &claims)
                            }
                            Mode::Expired => {
                                claims["exp"] = json!(t - 3600);
                                claims["iat"] = json!(t - 7200);
                                es256(&signing, "k1", &claims)
                            }
                            Mode::WrongNonce => {
                                claims["nonce"] = json!("not-the-nonce");
                                es256(&signing, "k1", &claims)
                            }
                            Mode::UnknownKey => es256(&stranger, "k1", &claims),
                            Mode::AlgNone => format!(
                                "{}.{}.",
                                b64(br#"{"alg":"none","typ":"JWT"}"#),
                                b64(claims.to_string().as_bytes())
                            ),
                            Mode::Hs256WithPublicKey => {
                                let input = format!(
                                    "{}.{}",
                                    b64(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#),
                                    b64(claims.to_string().as_bytes())
                                );
                                let k = ring::hmac::Key::new(
                                    ring::hmac::HMAC_SHA256,
                                    signing.public_key().as_ref(),
                                );
                                let tag = ring::hmac::sign(&k, input.as_bytes());
                                format!("{input}.{}", b64(tag.as_ref()))
                            }
                        };
                        let body = json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}).to_string();
                        respond(
                            &mut s,
                            "200 OK",
                            "content-type: application/json\r\ncache-control: no-store\r\n",
                            &body,
                        );
                    }
                    _ => respond(&mut s, "404 Not Found", "", "not found"),
                }
            }
        });
        RogueIdp { issuer, inner }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// Puts `claims` (a JSON object) over the default ID token claims from the next token on;
    /// a `null` value removes that claim. Replaces earlier overrides.
    pub fn set_claims(&self, claims: Value) {
        self.inner.lock().unwrap().overrides = claims.as_object().cloned().unwrap_or_default();
    }

    /// The query string of the last authorization request the gateway sent here.
    pub fn last_authorize_query(&self) -> String {
        self.inner.lock().unwrap().authorize_query.clone()
    }

    /// One parameter of the last authorization request, percent-decoded ("" if absent).
    pub fn last_authorize_param(&self, name: &str) -> String {
        param(&self.last_authorize_query(), name)
    }
}
