//! The one set of HTTP helpers every route uses: responses (JSON, errors with the reason in a
//! header, 429, redirects), request pieces (bearer token, query, cookies) and bounded body
//! reading. `pages` renders the browser pages; `client` is the HTTP client that reaches the
//! identity provider.

pub mod client;
pub mod pages;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use openidconnect::url::form_urlencoded;
use postern_proto::wire::{self, ErrorBody};

/// Every response the gateway's routes build.
pub type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error response: JSON body plus the reason in a header (readable on a CONNECT refusal,
/// where clients may not read bodies).
pub fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    let mut r = json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message: message.to_owned(),
        },
    );
    if let Ok(v) = HeaderValue::from_str(&printable(message, 512)) {
        r.headers_mut().insert(wire::HDR_REASON, v);
    }
    r
}

/// At most `max` characters of `s`, with anything but printable ASCII replaced by `?`: for
/// strings that came from outside and go into a header, a log line or the audit log.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// 429 with `Retry-After`.
pub fn too_many(message: &str, secs: u64) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    retry_after(&mut r, secs);
    r
}

/// Sets `Retry-After: secs`.
pub fn retry_after<B>(r: &mut Response<B>, secs: u64) {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

/// 303 to `location`, with the browser-page hardening headers.
pub fn redirect(location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    pages::harden(&mut r);
    r
}

/// Why a request carries no usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    NotAscii,
    NotBearer,
}

/// The `authorization: Bearer …` token.
pub fn bearer<B>(req: &Request<B>) -> Result<&str, BearerError> {
    let v = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(BearerError::Missing)?
        .to_str()
        .map_err(|_| BearerError::NotAscii)?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or(BearerError::NotBearer)
}

/// The query string's pairs, decoded.
pub fn query<B>(req: &Request<B>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name` in decoded query pairs.
pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `User-Agent`, bounded to 200 characters ("-" if absent).
pub fn user_agent<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(200)
        .collect()
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Limited::new(body, limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string())
}

/// Parses a JSON request body already read (`body`, or the error reading it): 413 when it was
/// too large or broken, 400 (naming `what`) when it is not the expected JSON.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, String>,
    what: &str,
) -> Result<T, Box<Resp>> {
    let body = body.map_err(|e| {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            &format!("request body: {e}"),
        ))
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{what} is not valid JSON: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_bounds_and_replaces() {
        assert_eq!(printable("a\nb\u{e9}c", 10), "a?b?c");
        assert_eq!(printable(&"x".repeat(600), 512).len(), 512);
    }

    #[test]
    fn bearer_and_cookies() {
        let req = Request::builder()
            .header(header::AUTHORIZATION, "Bearer  abc ")
            .header(header::COOKIE, "a=1; postern_flow=xyz")
            .body(())
            .unwrap();
        assert_eq!(bearer(&req), Ok("abc"));
        assert_eq!(cookie(&req, "postern_flow").as_deref(), Some("xyz"));
        assert_eq!(cookie(&req, "b"), None);
        let basic = Request::builder()
            .header(header::AUTHORIZATION, "Basic abc")
            .body(())
            .unwrap();
        assert_eq!(bearer(&basic), Err(BearerError::NotBearer));
        assert_eq!(bearer(&Request::new(())), Err(BearerError::Missing));
    }
}
