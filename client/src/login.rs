//! `postern login`, `status`, `logout`: signing in through the browser and keeping the session
//! token in the user's config directory (`$POSTERN_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/postern`, else `~/.config/postern`; `%APPDATA%\postern` on Windows: see
//! [`crate::platform`]), mode 0600.
//!
//! Sign-in hands the token to this process through a one-shot loopback listener
//! (`http://127.0.0.1:PORT/callback`) protected by its own PKCE pair: the browser only ever
//! carries a one-time code, and only this process, holding the verifier, can redeem it at the
//! gateway. Another local process that sees the redirect gets nothing usable.
//!
//! It also prints a confirmation code (`XXXX-XXXX`) and sends it with the sign-in; the device
//! page shows it and waits for the person to confirm it, so a sign-in someone else started on
//! the same machine (with their own loopback redirect) cannot run on the person's device unseen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{ClientError, GatewayConn};

/// What `POST /auth/token` and `GET /v1/whoami` answer.
pub use postern_proto::wire::SessionSummary as Session;

/// Remembered between commands (`config.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub gateway: String,
    /// The gateway CA given at sign-in; None = the public web PKI.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The config directory.
pub fn config_dir() -> Result<PathBuf, ClientError> {
    if let Ok(d) = std::env::var("POSTERN_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    crate::platform::config_dir().map_err(ClientError::Setup)
}

pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("token")
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Setup(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        postern_net::fsutil::private_dir(dir).map_err(err)?;
    }
    postern_net::fsutil::write_atomic(path, data, 0o600).map_err(err)
}

pub fn load_saved(dir: &Path) -> Option<Saved> {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_b64(n: usize) -> Result<String, ClientError> {
    postern_proto::ids::random_bytes(n)
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|_| ClientError::Setup("random number generator failed".into()))
}

/// Reads one HTTP request head from the browser; returns its request target.
async fn read_target(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let mut used = 0;
    while used < buf.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[used..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        used += n;
        if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    request_target(&buf[..used])
}

/// The request target of an HTTP request head, if it is a `GET` (anything on this machine may
/// connect to the loopback listener, so this is outside input).
#[doc(hidden)]
pub fn request_target(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_owned)
}

/// The percent-decoded query parameters of a `/callback?…` request target.
#[doc(hidden)]
pub fn callback_params(target: &str) -> Option<Vec<(String, String)>> {
    let query = target.strip_prefix("/callback?")?;
    Some(
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (unpct(k), unpct(v)))
            .collect(),
    )
}

/// Fuzz target `callback` (client/fuzz): a request head on the loopback listener through
/// [`request_target`] and [`callback_params`]; and percent-encoding round trips.
#[doc(hidden)]
pub fn fuzz_callback(data: &[u8]) {
    if let Some(params) = request_target(data).as_deref().and_then(callback_params) {
        let _ = params.iter().find(|(k, _)| k == "state");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(unpct(&pct(s)), s, "percent-encoding does not round-trip");
    }
}

async fn answer(s: &mut tokio::net::TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Postern</title><body style=\"font:18px system-ui,sans-serif;max-width:32rem;margin:4rem auto\"><h1>{message}</h1><p>You can close this window and return to the terminal.</p></body></html>"
    );
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-security-policy: default-src 'none'; style-src 'unsafe-inline'\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Signs in: prints (and, if asked, opens) the URL, waits for the browser to come back, redeems
/// the code, stores the token. `show_url` is called with the URL to open and the confirmation
/// code the browser will show (the person checks they match before the device ceremony).
pub async fn login(
    gateway: &str,
    ca_file: Option<&Path>,
    open_browser: bool,
    wait: Duration,
    show_url: impl FnOnce(&str, &str),
) -> Result<Session, ClientError> {
    login_with_posture(gateway, ca_file, open_browser, wait, None, show_url).await
}

/// As [`login`], sending `posture` with the sign-in (the gateway has the device key sign it).
pub async fn login_with_posture(
    gateway: &str,
    ca_file: Option<&Path>,
    open_browser: bool,
    wait: Duration,
    posture: Option<&crate::posture::PostureReport>,
    show_url: impl FnOnce(&str, &str),
) -> Result<Session, ClientError> {
    let verifier = random_b64(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = random_b64(16)?;
    let confirm = postern_proto::confirm::ConfirmCode::generate()
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| ClientError::Setup(format!("cannot listen on loopback: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let mut url = format!(
        "{}/auth/login?cli_redirect={}&cli_challenge={}&cli_state={}&cli_code={}",
        gateway.trim_end_matches('/'),
        pct(&redirect),
        pct(&challenge),
        pct(&state),
        pct(confirm.as_str())
    );
    if let Some(p) = posture {
        url.push_str("&cli_posture=");
        url.push_str(&URL_SAFE_NO_PAD.encode(p.canonical()));
    }
    let conn = Arc::new(GatewayConn::anonymous(gateway, ca_file)?);
    // A gateway this computer does not trust fails here, before the browser opens.
    conn.probe(ca_file).await?;
    show_url(&url, confirm.as_str());
    if open_browser {
        let _ = crate::platform::open_browser(&url);
    }
    // A new device waiting for approval by the security team: say so, and wait for it (the
    // gateway keeps the sign-in up to 30 minutes; the page carries on by itself).
    let deadline = Arc::new(AtomicU64::new(crate::unix_now() + wait.as_secs()));
    let watcher = tokio::spawn(watch_approval(
        conn.clone(),
        verifier.clone(),
        deadline.clone(),
    ));
    let expired = {
        let deadline = deadline.clone();
        async move {
            while crate::unix_now() < deadline.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let callback = async {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let Some(target) = read_target(&mut s).await else {
                continue;
            };
            let Some(params) = callback_params(&target) else {
                answer(&mut s, "404 Not Found", "Nothing here").await;
                continue;
            };
            let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let got_state = get("state").unwrap_or_default();
            if !postern_proto::ids::ct_eq(got_state.as_bytes(), state.as_bytes()) {
                answer(
                    &mut s,
                    "400 Bad Request",
                    "This sign-in does not belong to this terminal",
                )
                .await;
                continue;
            }
            if let Some(code) = get("error") {
                // The gateway sends the browser back with why the sign-in failed (cancelled at
                // the identity provider, refused, …): say it now, not after the timeout.
                let bounded = |s: String| -> String {
                    s.chars().filter(|c| !c.is_control()).take(300).collect()
                };
                let why = bounded(get("error_description").unwrap_or_else(|| code.clone()));
                let reference = get("error_ref").map(bounded);
                answer(&mut s, "200 OK", "Sign-in did not complete").await;
                return Err(ClientError::SignInFailed {
                    why,
                    code: bounded(code),
                    reference,
                });
            }
            match get("code") {
                Some(code) => {
                    answer(&mut s, "200 OK", "You are signed in").await;
                    return Ok(code);
                }
                None => {
                    answer(&mut s, "400 Bad Request", "Sign-in did not complete").await;
                    continue;
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = callback => Some(r),
        _ = expired => None,
    };
    watcher.abort();
    let code = outcome.ok_or_else(|| {
        ClientError::Setup(format!(
            "no sign-in within {}s; run postern login again",
            wait.as_secs().max(
                deadline
                    .load(Ordering::Relaxed)
                    .saturating_sub(crate::unix_now())
            )
        ))
    })??;
    let session: Session = conn
        .post_json(
            "/auth/token",
            &serde_json::json!({"code": code, "code_verifier": verifier}),
        )
        .await?;
    let token = session
        .token
        .clone()
        .ok_or_else(|| ClientError::Protocol("the gateway returned no token".into()))?;
    let dir = config_dir()?;
    write_private(&token_path(&dir), token.as_bytes())?;
    let ca_abs = ca_file.map(|f| f.canonicalize().unwrap_or_else(|_| f.to_owned()));
    let saved = Saved {
        gateway: gateway.trim_end_matches('/').to_owned(),
        ca_file: ca_abs,
    };
    let json =
        serde_json::to_vec_pretty(&saved).map_err(|e| ClientError::Protocol(e.to_string()))?;
    write_private(&dir.join("config.json"), &json)?;
    Ok(session)
}

/// Asks the gateway every 3 s whether this sign-in waits for the security team to approve a
/// new device; the first time it does, tells the person and moves `deadline` to the end of the
/// gateway's wait.
async fn watch_approval(conn: Arc<GatewayConn>, verifier: String, deadline: Arc<AtomicU64>) {
    let mut told = false;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let answer: Result<serde_json::Value, ClientError> = conn
            .post_json(
                "/auth/cli/wait",
                &serde_json::json!({ "code_verifier": verifier }),
            )
            .await;
        let Ok(a) = answer else {
            continue;
        };
        if a["status"] != "waiting_for_approval" {
            continue;
        }
        let until = a["until"].as_u64().unwrap_or(0);
        deadline.fetch_max(until + 5, Ordering::Relaxed);
        if !told {
            told = true;
            let device: String = a["device"]
                .as_str()
                .unwrap_or("this device")
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect();
            eprintln!(
                "Your device \"{device}\" is waiting for approval by your security team. This carries on by itself once they approve it (until {}); keep this window and the browser page open.",
                crate::local_time(until)
            );
        }
    }
}

/// Revokes the stored token at the gateway and deletes it locally.
pub async fn logout(conn: &GatewayConn) -> Result<(), ClientError> {
    let result: Result<serde_json::Value, ClientError> =
        conn.post_json("/auth/logout", &serde_json::json!({})).await;
    let dir = config_dir()?;
    let _ = std::fs::remove_file(token_path(&dir));
    match result {
        Ok(_) | Err(ClientError::Expired) | Err(ClientError::Unauthorized(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_requests_parse() {
        let head = b"GET /callback?code=abc%2Fdef&state=x+1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let target = request_target(head).unwrap();
        assert_eq!(
            callback_params(&target).unwrap(),
            vec![
                ("code".to_owned(), "abc/def".to_owned()),
                ("state".to_owned(), "x 1".to_owned())
            ]
        );
        assert_eq!(request_target(b"POST /callback?code=x HTTP/1.1\r\n"), None);
        assert_eq!(callback_params("/other?code=x"), None);
        // The fuzz target's seeds run clean.
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/callback");
        let mut n = 0;
        for e in std::fs::read_dir(seeds).unwrap() {
            fuzz_callback(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn percent_round_trip() {
        let s = "http://127.0.0.1:5/callback?x=a b&y=é";
        assert_eq!(unpct(&pct(s)), s);
        assert_eq!(unpct("a%2Fb+c%zz"), "a/b c%zz");
    }
}
