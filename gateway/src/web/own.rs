//! The proxy's own paths on an application host, under `/.postern/`:
//!
//! * `GET callback?code=…&return=…` — redeems the one-time code (bound to this browser's
//!   `__Host-postern-state` cookie), starts the application session, sets its cookie.
//! * `GET logout` — a sign-out page; `POST logout` — signs out (CSRF token and same-origin
//!   checked): the sign-in is revoked, so every application session of it ends, in every tab.
//! * `GET jwks.json` — the keys that verify `postern-jwt-assertion`.
//! * `GET whoami` — the session as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use openidconnect::url::form_urlencoded;
use postern_policy::Endpoint;
use postern_proto::ids::{ct_eq, sha256_hex};

use super::cookies::{self, AppCookie, APP, STATE};
use super::signin::{redeem_code, safe_return};
use super::{pages, proxy, whole, Web, WebResp};
use crate::http::{cookie, json, param, query, read_body, redirect};

pub async fn handle(
    web: &Arc<Web>,
    req: Request<Incoming>,
    peer: SocketAddr,
    endpoint: &Endpoint,
    path: &str,
) -> WebResp {
    match (req.method(), path) {
        (&Method::GET, "callback") => callback(web, req, peer, endpoint).await,
        (&Method::GET, "logout") => logout_page(web, &req, &endpoint.name),
        (&Method::POST, "logout") => logout(web, req, peer, &endpoint.name).await,
        (&Method::GET, "jwks.json") => jwks(web),
        (&Method::GET, "whoami") => whoami(web, &req, &endpoint.name),
        _ => whole(crate::http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource",
        )),
    }
}

async fn callback(
    web: &Arc<Web>,
    req: Request<Incoming>,
    peer: SocketAddr,
    endpoint: &Endpoint,
) -> WebResp {
    if let Err(secs) = web.limits.signin.check(&peer.ip()) {
        web.access.metrics.note_ratelimited("signin");
        return whole(pages::too_many(&req, secs));
    }
    let app = &endpoint.name;
    let q = query(&req);
    let code = param(&q, "code").unwrap_or("");
    let back = param(&q, "return")
        .and_then(safe_return)
        .unwrap_or("/")
        .to_owned();
    let nonce = cookie(&req, STATE);
    let token = match nonce {
        Some(n) if !code.is_empty() => redeem_code(web, app, code, &n).await,
        _ => None,
    };
    let Some(token) = token else {
        let mut ev = web.access.audit.event(postern_audit::EventType::AuthFailed);
        ev.source = Some(peer.to_string());
        ev.detail = Some(format!(
            "web sign-in for {app}: unknown, expired, reused or another browser's code"
        ));
        web.access.audit.record_nowait(ev);
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
    let session = match web.start_session(&token, claims, peer, endpoint).await {
        Ok(s) => s,
        Err(e) => {
            let mut r = proxy::start_failed(&req, app, e);
            cookies::set(&mut r, STATE, "", 0);
            return r;
        }
    };
    let value = match proxy::seal(web, &session, app) {
        Ok(v) => v,
        Err(r) => return whole(*r),
    };
    let mut r = whole(redirect(&back));
    cookies::set(
        &mut r,
        APP,
        &value,
        session.exp.saturating_sub(web.clock.unix()),
    );
    cookies::set(&mut r, STATE, "", 0);
    r
}

/// The CSRF token of a session cookie: only a page that read it from this host can post it.
fn csrf_of(cookie_value: &str) -> String {
    sha256_hex(format!("postern-csrf:{cookie_value}").as_bytes())[..32].to_owned()
}

fn logout_page<B>(web: &Web, req: &Request<B>, app: &str) -> WebResp {
    let now = web.clock.unix();
    let Some((value, c)) = cookie(req, APP).and_then(|v| {
        let c = AppCookie::open(&web.authn.keys, &v, app, now).ok()?;
        Some((v, c))
    }) else {
        return whole(pages::signed_out(&web.app_origin(app)));
    };
    let user = web
        .authn
        .keys
        .verify(&c.tok, now)
        .map(|cl| cl.sub)
        .unwrap_or_default();
    whole(pages::sign_out_form(app, &user, &csrf_of(&value)))
}

/// Whether a state-changing request comes from a page of this very host: the browser's
/// `Sec-Fetch-Site` says same-origin (with it, `Origin` may be `null`, which Chromium sends
/// for a form post from a page whose referrer policy is `no-referrer`), and any `Origin` is
/// this host's. The CSRF token is checked besides.
fn same_origin<B>(web: &Web, req: &Request<B>, app: &str) -> bool {
    let h = req.headers();
    let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some("null") => site == Some("same-origin"),
        Some(o) => o == web.app_origin(app),
        None => true,
    }
}

async fn logout(web: &Arc<Web>, req: Request<Incoming>, peer: SocketAddr, app: &str) -> WebResp {
    let origin_ok = same_origin(web, &req, app);
    let value = cookie(&req, APP);
    let body = read_body(req.into_body(), 4096).await.unwrap_or_default();
    let csrf = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some(value) = value else {
        return whole(pages::signed_out(&web.app_origin(app)));
    };
    if !origin_ok || !ct_eq(csrf.as_bytes(), csrf_of(&value).as_bytes()) {
        return whole(crate::http::pages::error(
            StatusCode::FORBIDDEN,
            "This sign-out request did not come from the sign-out page. Open the application's sign-out page and use its button.",
            "csrf",
        ));
    }
    let now = web.clock.unix();
    if let Ok(c) = AppCookie::open(&web.authn.keys, &value, app, now) {
        if let Ok(claims) = web.authn.keys.verify(&c.tok, now) {
            web.signin.sign_out(&claims, peer, "web sign-out").await;
        }
        if let Some(s) = web.sessions.get(&c.sid) {
            s.kill.kill("token_revoked");
        }
    }
    let mut r = whole(pages::signed_out(&web.app_origin(app)));
    cookies::set(&mut r, APP, "", 0);
    r
}

fn jwks(web: &Web) -> WebResp {
    let mut r = whole(json(StatusCode::OK, &web.authn.keys.jwks()));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

fn whoami<B>(web: &Web, req: &Request<B>, app: &str) -> WebResp {
    let now = web.clock.unix();
    let Some(c) =
        cookie(req, APP).and_then(|v| AppCookie::open(&web.authn.keys, &v, app, now).ok())
    else {
        return whole(pages::signed_out_json("no application session"));
    };
    let Ok(claims) = web.authn.verify(&c.tok) else {
        return whole(pages::signed_out_json("the sign-in has ended"));
    };
    whole(json(
        StatusCode::OK,
        &serde_json::json!({
            "user": claims.sub,
            "name": claims.name,
            "email": claims.sub.contains('@').then_some(&claims.sub),
            "groups": claims.groups,
            "device": claims.device,
            "app": app,
            "session_id": c.sid,
            "expires_at": c.exp,
        }),
    ))
}
