//! Entry points for the `cargo fuzz` targets in `gateway/fuzz` (not part of the gateway's API).
//!
//! Each feeds outside input to the code path the gateway runs on it — no copies — and checks
//! what that path promises where a promise can be checked (a verified token is unexpired, a
//! parsed posture report survives its canonical form). Fixtures (token keys, the connector CA)
//! are made once per process in a scratch directory under the system temp directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use postern_proto::confirm::ConfirmCode;
use postern_proto::posture::{bound_challenge, PostureReport};
use postern_proto::wire::{EnrollRequest, RenewRequest};
use ring::signature::Ed25519KeyPair;

use crate::authn::tokens::TokenKeys;
use crate::pki::Ca;

/// The "now" of every target (seconds since the epoch), so runs are reproducible.
pub const NOW: u64 = 1_760_000_000;
/// The nonce of the WebAuthn target's ceremony; its expected challenge is
/// `bound_challenge(WEBAUTHN_NONCE, None)`.
pub const WEBAUTHN_NONCE: [u8; 32] = [7; 32];
/// The confirmation code of the WebAuthn target's ceremony.
pub const WEBAUTHN_CODE: &str = "ABCD-2345";

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("postern-fuzz-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&d) {
            panic!("fuzz fixture: cannot create {}: {e}", d.display());
        }
        d
    })
}

struct Tokens {
    keys: TokenKeys,
    kid: String,
    signer: Ed25519KeyPair,
}

/// The gateway's token keys, and the active private key to sign hostile payloads with (read
/// from the files `TokenKeys` keeps: `jwt/active`, `jwt/KID.key`, PKCS#8 PEM).
fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch().join("tokens");
        // A fixed deployment id, so the seeds' `iss` and `aud` (`postern-gateway/fuzz`,
        // `postern/fuzz`) are this deployment's.
        let jwt = dir.join("jwt");
        std::fs::create_dir_all(&jwt)
            .and_then(|()| std::fs::write(jwt.join(crate::authn::tokens::DEPLOYMENT_FILE), "fuzz"))
            .unwrap_or_else(|e| panic!("fuzz fixture: deployment id: {e}"));
        let keys = TokenKeys::load_or_create(&dir)
            .unwrap_or_else(|e| panic!("fuzz fixture: token keys: {e}"));
        let kid = std::fs::read_to_string(jwt.join("active"))
            .unwrap_or_else(|e| panic!("fuzz fixture: active kid: {e}"))
            .trim()
            .to_owned();
        let pem = std::fs::read_to_string(jwt.join(format!("{kid}.key")))
            .unwrap_or_else(|e| panic!("fuzz fixture: key: {e}"));
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("fuzz fixture: key PEM: {e}"));
        let signer = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .unwrap_or_else(|e| panic!("fuzz fixture: key: {e}"));
        Tokens { keys, kid, signer }
    })
}

/// A compact JWS over `header` and `payload` (both arbitrary bytes) with the gateway's key.
fn sign(t: &Tokens, header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = t.signer.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Target `session_token`: `TokenKeys::verify`, the parser and verifier of every bearer token.
/// First byte 0: the rest is a claims payload signed with the gateway's own key (so the
/// claims parser and checks behind the signature are reached); 1: the rest is `HEADER\nPAYLOAD`,
/// both signed; otherwise the whole input is the token as sent.
pub fn session_token(data: &[u8]) {
    let t = tokens();
    let token = match data.split_first() {
        Some((0, payload)) => {
            let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, t.kid);
            sign(t, header.as_bytes(), payload)
        }
        Some((1, rest)) => {
            let (h, p) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            sign(t, h, p)
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    if let Ok(claims) = t.keys.verify(&token, NOW) {
        assert!(
            claims.exp > NOW,
            "an expired token verified: exp {}",
            claims.exp
        );
    }
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        Ca::load_or_create(scratch(), "connector-ca", "Postern fuzz CA", now())
            .unwrap_or_else(|e| panic!("fuzz fixture: CA: {e}"))
    })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// Target `connector_request`: the enrolment and renewal request bodies as the gateway reads
/// them (`http::parse_json`), then the CSR they carry through `Ca::sign_connector`. First byte
/// mod 3: 0 enrolment body, 1 renewal body, 2 the rest is a DER CSR (wrapped in PEM here, so the
/// fuzzer mutates the ASN.1 directly).
pub fn connector_request(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let body = || Ok(Bytes::copy_from_slice(rest));
    let csr = match mode % 3 {
        0 => crate::http::parse_json::<EnrollRequest>(body(), "enrolment request")
            .ok()
            .map(|r| r.csr_pem),
        1 => crate::http::parse_json::<RenewRequest>(body(), "renewal request")
            .ok()
            .map(|r| r.csr_pem),
        _ => Some(format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            STANDARD.encode(rest)
        )),
    };
    let Some(csr) = csr else {
        return;
    };
    if let Ok((pem, serial, not_after)) = ca().sign_connector(
        &csr,
        "conn-fuzz",
        "fuzz-site",
        Duration::from_secs(3600),
        now(),
    ) {
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(!serial.is_empty());
        assert_eq!(not_after, now() + Duration::from_secs(3600));
    }
}

/// Target `webauthn_body`: a `/auth/device/*` request body through the checks it meets before
/// any ceremony state (see `authn::devices::fuzz_body`), against a ceremony with nonce
/// [`WEBAUTHN_NONCE`], no posture report and code [`WEBAUTHN_CODE`].
pub fn webauthn_body(data: &[u8]) {
    static CODE: OnceLock<ConfirmCode> = OnceLock::new();
    let code = CODE.get_or_init(|| {
        ConfirmCode::parse(WEBAUTHN_CODE).unwrap_or_else(|e| panic!("fuzz fixture: {e}"))
    });
    let expected = bound_challenge(&WEBAUTHN_NONCE, None);
    let _ = crate::authn::devices::fuzz_body(data, code, &WEBAUTHN_NONCE, &expected);
}

/// Target `connect_request`: a client's `CONNECT` as the broker reads it — the request target
/// (`access::broker::target`), the justification header and the bearer token header. Input:
/// the request target, then `\n`-separated `name: value` header lines.
pub fn connect_request(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(target) = lines.next() else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut req = Request::builder().method(Method::CONNECT).uri(uri);
    for line in lines {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    if let Ok(endpoint) = crate::access::broker::target(&req) {
        assert_eq!(
            postern_proto::wire::endpoint_from_authority(&postern_proto::wire::connect_authority(
                &endpoint
            )),
            Some(endpoint.as_str()),
            "an accepted target does not round-trip"
        );
    }
    if let Some(j) = crate::access::broker::justification(&req) {
        assert!(j.len() <= postern_proto::wire::MAX_JUSTIFICATION);
    }
    let _ = crate::http::bearer(&req);
}

/// Target `gateway_config`: `Config::parse` on arbitrary text (it reads no files).
pub fn gateway_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::Config::parse(&text, Path::new("/etc/postern/gateway.toml"));
}

/// Target `posture`: the posture report parser (`cli_posture`, device request bodies); a report
/// that parses survives its canonical form unchanged.
pub fn posture(data: &[u8]) {
    if let Ok(r) = PostureReport::parse(data) {
        let again = PostureReport::parse(&r.canonical())
            .unwrap_or_else(|e| panic!("the canonical form of a parsed report fails: {e}"));
        assert_eq!(again, r);
        let _ = r.policy_facts();
    }
}

/// Runs `f` on every file under `gateway/fuzz/{seeds,regressions}/NAME`; returns how many.
#[cfg(test)]
fn replay(name: &str, f: fn(&[u8])) -> usize {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(base.join(kind).join(name)) else {
            continue;
        };
        for e in dir {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            f(&data);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds and crash reproducers of every target run clean under `cargo test`.
    #[test]
    fn seeds_and_regressions_replay() {
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 6] = [
            ("session_token", session_token),
            ("connector_request", connector_request),
            ("webauthn_body", webauthn_body),
            ("connect_request", connect_request),
            ("gateway_config", gateway_config),
            ("posture", posture),
        ];
        for (name, f) in targets {
            assert!(replay(name, f) > 0, "no seeds for {name}");
        }
    }

    /// The seeds reach past the outer checks: a signed claims payload verifies, a WebAuthn body
    /// with the fixture's challenge passes the binding, the enrolment CSR is signed.
    #[test]
    fn seeds_reach_the_deep_paths() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let data = std::fs::read(seeds.join("session_token/signed-claims")).unwrap();
        let t = tokens();
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, t.kid);
        let token = sign(t, header.as_bytes(), &data[1..]);
        let claims = t.keys.verify(&token, NOW).unwrap();
        assert_eq!(claims.sub, "alice@hospital.test");

        let code = ConfirmCode::parse(WEBAUTHN_CODE).unwrap();
        let expected = bound_challenge(&WEBAUTHN_NONCE, None);
        let body = std::fs::read(seeds.join("webauthn_body/assert-finish")).unwrap();
        assert_eq!(
            crate::authn::devices::fuzz_body(&body, &code, &WEBAUTHN_NONCE, &expected),
            Ok(())
        );

        let body = std::fs::read(seeds.join("connector_request/enrol")).unwrap();
        let req: EnrollRequest = serde_json::from_slice(&body[1..]).unwrap();
        let (pem, _, _) = ca()
            .sign_connector(&req.csr_pem, "c", "s", Duration::from_secs(60), now())
            .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
