//! The proxy's own answers: readable pages for a person, JSON for a script. Pages carry the
//! sign-in pages' strict Content-Security-Policy (no script at all); the sign-out form may
//! post only to its own host.

use http::{header, HeaderValue, Request, StatusCode};

use super::wants_json;
use crate::http::pages::{escape, page};
use crate::http::{error, retry_after, Resp};

/// No web application of that name.
pub fn not_found(app: &str) -> Resp {
    page(
        StatusCode::NOT_FOUND,
        "No such application",
        &format!(
            "<div class=\"box err\"><p>There is no web application called <code>{}</code> here. Check the address, or ask the service desk for the right link.</p></div>",
            escape(&crate::http::printable(app, 63))
        ),
    )
}

pub fn too_many<B>(req: &Request<B>, secs: u64) -> Resp {
    let msg = format!("Too many requests; try again in {secs} s.");
    let mut r = if wants_json(req) {
        error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &msg)
    } else {
        page(
            StatusCode::TOO_MANY_REQUESTS,
            "Please slow down",
            &format!("<div class=\"box err\"><p>{}</p></div>", escape(&msg)),
        )
    };
    retry_after(&mut r, secs);
    r
}

/// Access refused by the policy: the reason a person can read.
pub fn denied<B>(req: &Request<B>, app: &str, reason: &str) -> Resp {
    if wants_json(req) {
        let mut r = crate::http::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "policy_denied", "reason": reason, "message": reason}),
        );
        if let Ok(v) = HeaderValue::from_str(&crate::http::printable(reason, 512)) {
            r.headers_mut().insert(postern_proto::wire::HDR_REASON, v);
        }
        return r;
    }
    page(
        StatusCode::FORBIDDEN,
        "Access denied",
        &format!(
            "<div class=\"box err\"><p>{}</p></div><p>You are signed in, but the hospital's access policy does not let you use <code>{}</code> in this way. If you need it, contact the service desk and quote the reason above.</p>",
            escape(reason),
            escape(app)
        ),
    )
}

/// A request the proxy will not forward (a malformed path, a body too large, ...).
pub fn bad_request<B>(req: &Request<B>, status: StatusCode, code: &str, why: &str) -> Resp {
    if wants_json(req) {
        return error(status, code, why);
    }
    page(
        status,
        "Request refused",
        &format!("<div class=\"box err\"><p>{}</p></div>", escape(why)),
    )
}

/// The upstream could not be reached or did not answer.
pub fn upstream_failed(json: bool, status: StatusCode, code: &str, why: &str) -> Resp {
    if json {
        return error(status, code, why);
    }
    page(
        status,
        "The application is not answering",
        &format!(
            "<div class=\"box err\"><p>{}</p></div><p>Try again in a minute. If it keeps happening, contact the service desk.</p>",
            escape(why)
        ),
    )
}

/// For a script that has no (or no longer a) session: 401, never a redirect.
pub fn signed_out_json(why: &str) -> Resp {
    error(StatusCode::UNAUTHORIZED, "signed_out", why)
}

/// A one-time sign-in code that is unknown, used or not this browser's.
pub fn bad_code() -> Resp {
    page(
        StatusCode::BAD_REQUEST,
        "This sign-in link is not valid",
        "<div class=\"box err\"><p>This sign-in link is not valid, has expired or was already used. Open the application's address again to sign in.</p></div>",
    )
}

/// The sign-out confirmation: a form that posts back with its CSRF token.
pub fn sign_out_form(app: &str, user: &str, csrf: &str) -> Resp {
    let mut r = page(
        StatusCode::OK,
        "Sign out",
        &format!(
            "<div class=\"box\"><p>Signed in as <strong>{}</strong>. Signing out ends your access to <code>{}</code> and to every other application you opened with this sign-in, in every tab.</p></div><form method=\"post\" action=\"/.postern/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"sign-out\">Sign out</button></form>",
            escape(user),
            escape(app),
            escape(csrf)
        ),
    );
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    r
}

pub fn signed_out(app_origin: &str) -> Resp {
    page(
        StatusCode::OK,
        "You are signed out",
        &format!(
            "<div class=\"box\"><p>You are signed out. Your applications are closed in every tab.</p></div><p><a href=\"{}/\">Sign in again</a></p>",
            escape(app_origin)
        ),
    )
}

/// After a sign-in that was not for a particular application: where to go next.
pub fn portal(user: &str, apps: &[(String, String)]) -> Resp {
    let list: String = apps
        .iter()
        .map(|(name, url)| format!("<li><a href=\"{}/\">{}</a></li>", escape(url), escape(name)))
        .collect();
    let body = if apps.is_empty() {
        format!(
            "<div class=\"box\"><p>Signed in as {} — you can close this window.</p></div>",
            escape(user)
        )
    } else {
        format!(
            "<div class=\"box\"><p>Signed in as {}.</p></div><h2>Web applications</h2><ul>{list}</ul>",
            escape(user)
        )
    };
    page(StatusCode::OK, "You are signed in", &body)
}
