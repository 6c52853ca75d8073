//! The proxy's cookies. All are `__Host-` cookies (host-only, `Secure`, `Path=/`), `HttpOnly`
//! and `SameSite=Lax`, so none is ever sent to another application's host or read by script.
//!
//! | cookie | host | value |
//! | --- | --- | --- |
//! | `__Host-postern-app` | an application's | signed [`AppCookie`]: the application session |
//! | `__Host-postern-state` | an application's | random: binds the sign-in's code to this browser |
//! | `__Host-postern-sso` | the gateway's | the sign-in's session token: later applications need no new sign-in |
//! | `__Host-postern-web` | the gateway's | random and the application asked for, while a sign-in runs |

use http::{header, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::authn::tokens::{TokenError, TokenKeys};

pub const APP: &str = "__Host-postern-app";
pub const STATE: &str = "__Host-postern-state";
pub const SSO: &str = "__Host-postern-sso";
pub const WEB: &str = "__Host-postern-web";

/// The application session cookie's claims, signed with the gateway's token key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCookie {
    pub iss: String,
    /// `postern-app/<deployment>/<application>`: a cookie of one application is refused by
    /// every other (and can never pass for a session token).
    pub aud: String,
    /// The application session (its audit `session_id`).
    pub sid: String,
    /// The sign-in's session token: any replica can check it is still live (revocations,
    /// the device) and carry the session on.
    pub tok: String,
    pub iat: u64,
    /// The session's end: its token's expiry or the rule's maximum duration, whichever is
    /// first.
    pub exp: u64,
}

pub fn audience(keys: &TokenKeys, app: &str) -> String {
    format!("postern-app/{}/{app}", keys.deployment())
}

impl AppCookie {
    pub fn seal(&self, keys: &TokenKeys) -> Result<String, TokenError> {
        keys.sign_json(self)
    }

    pub fn open(
        keys: &TokenKeys,
        value: &str,
        app: &str,
        now: u64,
    ) -> Result<AppCookie, TokenError> {
        let c: AppCookie = keys.verify_json(value, &audience(keys, app), now)?;
        Ok(c)
    }
}

/// Appends `Set-Cookie` for `name=value` living `max_age` seconds (0: delete it).
pub fn set<B>(r: &mut http::Response<B>, name: &str, value: &str, max_age: u64) {
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The `Cookie` header(s) without the proxy's own cookies, for the upstream; `None` when
/// nothing is left.
pub fn strip_own(values: &[&str]) -> Option<String> {
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or("").trim();
            !name.starts_with("__Host-postern-")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cookies_never_reach_the_upstream() {
        assert_eq!(
            strip_own(&["a=1; __Host-postern-app=xyz", "__Host-postern-state=s; b=2"]).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip_own(&["__Host-postern-app=xyz"]), None);
        assert_eq!(strip_own(&[]), None);
    }
}
