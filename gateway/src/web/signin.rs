//! Sign-in for web applications, on the gateway's own host.
//!
//! 1. An application host without a session sends the browser to
//!    `GET /auth/web?app=NAME&return=PATH&state=HASH` ([`to_sign_in`]), after setting a random
//!    `__Host-postern-state` cookie on the application's host whose SHA-256 is `state`.
//! 2. `/auth/web` with a live sign-in (the `__Host-postern-sso` cookie: the session token of an
//!    earlier sign-in in this browser) mints a one-time code bound to the application and
//!    `state`, and sends the browser to the application's `/.postern/callback?code=…`.
//!    Without one it notes the request in `__Host-postern-web` (with a random nonce) and starts
//!    the ordinary browser sign-in: the identity provider, then the device's WebAuthn
//!    ceremony.
//! 3. The sign-in ends with a one-time ticket bound to that nonce:
//!    `GET /auth/web/resume?ticket=…` ([`resume`]) sets the SSO cookie and goes on with step 2.
//!
//! Codes and tickets live in the state store's one-time code table (hashed, 60 s, taken once),
//! so any replica can redeem them. Nothing but a code ever crosses from the gateway's host to
//! an application's host; no cookie is shared between hosts.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use openidconnect::url::form_urlencoded;
use postern_audit::EventType;
use postern_proto::ids::{random_bytes, sha256_hex};

use super::cookies::{self, SSO, STATE, WEB};
use super::{pages, whole, Web, WebResp};
use crate::authn::one_time;
use crate::http::{cookie, param, query, redirect};

/// How long a sign-in started for an application may take.
const WEB_COOKIE_TTL: u64 = 30 * 60;

fn random() -> Option<String> {
    random_bytes(32).ok().map(|b| URL_SAFE_NO_PAD.encode(b))
}

/// A path on the application's host, never another host's address.
pub fn safe_return(r: &str) -> Option<&str> {
    (r.starts_with('/')
        && !r.starts_with("//")
        && !r.starts_with("/\\")
        && r.len() <= 2048
        && r.bytes().all(|b| (0x21..0x7f).contains(&b)))
    .then_some(r)
}

fn enc(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Sends a browser without a session to sign in for `app`. `fresh`: the sign-in must be done
/// again (the session reached its rule's maximum), not taken from an earlier one.
pub fn to_sign_in<B>(web: &Web, req: &Request<B>, app: &str) -> WebResp {
    to_sign_in_with(web, req, app, false)
}

pub fn to_sign_in_with<B>(web: &Web, req: &Request<B>, app: &str, fresh: bool) -> WebResp {
    let Some(nonce) = random() else {
        return whole(crate::http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random number generator failed",
        ));
    };
    let back = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .and_then(safe_return)
        .unwrap_or("/");
    let mut pairs = vec![("app", app), ("return", back)];
    let state = sha256_hex(nonce.as_bytes());
    pairs.push(("state", &state));
    if fresh {
        pairs.push(("fresh", "1"));
    }
    let mut r = whole(redirect(&format!(
        "{}/auth/web?{}",
        web.main_origin,
        enc(&pairs)
    )));
    cookies::set(&mut r, STATE, &nonce, WEB_COOKIE_TTL);
    r
}

/// The web request a sign-in carries: (nonce, app, state, return).
struct Pending {
    nonce: String,
    app: String,
    state: String,
    back: String,
}

impl Pending {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.nonce,
            self.app,
            self.state,
            URL_SAFE_NO_PAD.encode(self.back.as_bytes())
        )
    }

    fn decode(v: &str) -> Option<Pending> {
        let mut it = v.split('|');
        let nonce = it.next()?.to_owned();
        let app = it.next()?.to_owned();
        let state = it.next()?.to_owned();
        let back = String::from_utf8(URL_SAFE_NO_PAD.decode(it.next()?).ok()?).ok()?;
        (nonce.len() >= 32 && it.next().is_none()).then_some(Pending {
            nonce,
            app,
            state,
            back,
        })
    }
}

/// The SHA-256 of the pending web sign-in's nonce in this request's cookies: what a ticket
/// is bound to.
pub fn browser_binding<B>(req: &Request<B>) -> Option<String> {
    let p = Pending::decode(&cookie(req, WEB)?)?;
    Some(sha256_hex(p.nonce.as_bytes()))
}

/// Sets a fresh `__Host-postern-web` (no application) on a browser sign-in that has none, so
/// its end can set the SSO cookie too. A ticket ([`crate::authn::oidc::Oidc::issue_browser_ticket`]) is bound to it.
pub fn note_browser_sign_in<B, R>(req: &Request<B>, r: &mut http::Response<R>) {
    if cookie(req, WEB).and_then(|v| Pending::decode(&v)).is_some() {
        return;
    }
    if let Some(nonce) = random() {
        let p = Pending {
            nonce,
            app: String::new(),
            state: String::new(),
            back: "/".into(),
        };
        cookies::set(r, WEB, &p.encode(), WEB_COOKIE_TTL);
    }
}

/// Mints the one-time code that takes `token` to `app`'s host, bound to `state`.
async fn code_for(web: &Web, app: &str, state: &str, token: String) -> Option<String> {
    let challenge = format!("web:{app}:{state}");
    one_time::put(&web.signin.store, web.clock.unix(), "web", challenge, token)
        .await
        .ok()
}

/// Redeems a code on `app`'s host: the token, if the code is live, unused, for this
/// application, and bound to this browser's `state_nonce`.
pub async fn redeem_code(web: &Web, app: &str, code: &str, state_nonce: &str) -> Option<String> {
    let challenge = format!("web:{app}:{}", sha256_hex(state_nonce.as_bytes()));
    one_time::take(&web.signin.store, web.clock.unix(), "web", code, &challenge).await
}

fn failed(web: &Web, peer: SocketAddr, detail: String) {
    let mut ev = web.access.audit.event(EventType::AuthFailed);
    ev.source = Some(peer.to_string());
    ev.detail = Some(detail);
    web.access.audit.record_nowait(ev);
}

/// Sends the browser on to `app` with a code for `token`.
async fn onward(web: &Web, app: &str, state: &str, back: &str, token: String) -> WebResp {
    match code_for(web, app, state, token).await {
        Some(code) => whole(redirect(&format!(
            "{}/.postern/callback?{}",
            web.app_origin(app),
            enc(&[("code", &code), ("return", back)])
        ))),
        None => whole(crate::http::pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot complete the sign-in just now. Please try again in a minute.",
            "web-code",
        )),
    }
}

/// `GET /auth/web` on the gateway's host.
pub async fn start(web: &Web, req: Request<Incoming>, peer: SocketAddr) -> WebResp {
    if let Err(secs) = web.limits.signin.check(&peer.ip()) {
        web.access.metrics.note_ratelimited("signin");
        return whole(pages::too_many(&req, secs));
    }
    let q = query(&req);
    let app = param(&q, "app").unwrap_or("").to_ascii_lowercase();
    let state = param(&q, "state").unwrap_or("");
    let back = param(&q, "return").and_then(safe_return).unwrap_or("/");
    let fresh = param(&q, "fresh") == Some("1");
    let known = web
        .access
        .policy()
        .endpoint(&app)
        .is_some_and(|e| e.protocol.is_web());
    if !known {
        return whole(pages::not_found(&app));
    }
    if state.len() != 64 || !state.bytes().all(|b| b.is_ascii_hexdigit()) {
        return whole(pages::bad_code());
    }
    if !fresh {
        if let Some(token) = cookie(&req, SSO) {
            if web.authn.verify(&token).is_ok() {
                return onward(web, &app, state, back, token).await;
            }
        }
    }
    let Some(nonce) = random() else {
        return whole(pages::bad_code());
    };
    let pending = Pending {
        nonce,
        app,
        state: state.to_owned(),
        back: back.to_owned(),
    };
    let mut r = whole(redirect("/auth/login"));
    cookies::set(&mut r, WEB, &pending.encode(), WEB_COOKIE_TTL);
    if fresh {
        cookies::set(&mut r, SSO, "", 0);
    }
    r
}

/// `GET /auth/web/resume?ticket=…` on the gateway's host: the sign-in is done.
pub async fn resume(web: &Web, req: Request<Incoming>, peer: SocketAddr) -> WebResp {
    if let Err(secs) = web.limits.signin.check(&peer.ip()) {
        web.access.metrics.note_ratelimited("signin");
        return whole(pages::too_many(&req, secs));
    }
    let q = query(&req);
    let t = param(&q, "ticket").unwrap_or("");
    let pending = cookie(&req, WEB).and_then(|v| Pending::decode(&v));
    let (Some(pending), true) = (pending, !t.is_empty() && t.len() <= 128) else {
        failed(
            web,
            peer,
            "web sign-in: ticket without its browser cookie".into(),
        );
        return whole(pages::bad_code());
    };
    let want = format!("ticket:{}", sha256_hex(pending.nonce.as_bytes()));
    let Some(token) = one_time::take(&web.signin.store, web.clock.unix(), "ticket", t, &want).await
    else {
        failed(
            web,
            peer,
            "web sign-in: unknown, expired, reused or foreign ticket".into(),
        );
        return whole(pages::bad_code());
    };
    let claims = match web.authn.verify(&token) {
        Ok(c) => c,
        Err(e) => {
            return whole(crate::http::pages::error(
                StatusCode::UNAUTHORIZED,
                &e.to_string(),
                e.code(),
            ))
        }
    };
    let max_age = claims.exp.saturating_sub(web.clock.unix());
    let mut r = if pending.app.is_empty() {
        let apps = web.apps_for(&claims, peer);
        whole(pages::portal(&claims.sub, &apps))
    } else {
        onward(
            web,
            &pending.app,
            &pending.state,
            &pending.back,
            token.clone(),
        )
        .await
    };
    cookies::set(&mut r, SSO, &token, max_age);
    cookies::set(&mut r, WEB, "", 0);
    r
}

impl Web {
    /// The web applications the policy lets `claims` use (as a whole), with their addresses.
    pub fn apps_for(
        &self,
        claims: &crate::authn::tokens::Claims,
        peer: SocketAddr,
    ) -> Vec<(String, String)> {
        let subject = self.authn.subject(claims.clone(), peer);
        let policy = self.access.policy();
        let now = self.clock.now();
        policy
            .endpoints()
            .iter()
            .filter(|e| e.protocol.is_web())
            .filter(|e| {
                policy
                    .evaluate(&subject.request(&e.name, now, None).with_web_session())
                    .is_allowed()
            })
            .map(|e| (e.name.clone(), self.app_origin(&e.name)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_the_application_host() {
        assert_eq!(
            safe_return("/app/explorer.html?x=1"),
            Some("/app/explorer.html?x=1")
        );
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "",
            "/a b",
        ] {
            assert_eq!(safe_return(bad), None, "{bad}");
        }
    }

    #[test]
    fn pending_sign_in_round_trips() {
        let p = Pending {
            nonce: "n".repeat(43),
            app: "orthanc-web".into(),
            state: "ab".repeat(32),
            back: "/app/explorer.html#patients".into(),
        };
        let q = Pending::decode(&p.encode()).unwrap();
        assert_eq!((q.app, q.back), (p.app, p.back));
        assert!(Pending::decode("short|a|b|c").is_none());
    }
}
