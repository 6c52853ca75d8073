//! Small HTML pages for the browser side of sign-in: no external assets, a strict
//! Content-Security-Policy, readable on a laptop, and an error id that matches the audit log.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font:18px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#1b1b1b;background:#fff}h1{font-size:1.6rem;margin-bottom:.5rem}.box{border-left:6px solid #005eb8;padding:.5rem 1rem;background:#f0f4f5}.err{border-color:#d5281b}code{font-size:1rem;background:#eee;padding:.1rem .3rem}footer{margin-top:3rem;color:#4c6272;font-size:.9rem}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Security headers every page and redirect carries.
pub fn harden<B>(r: &mut Response<B>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub(crate) fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t} — Postern</title><style>{STYLE}</style></head><body><main><h1>{t}</h1>{body_html}</main><footer>Postern secure access</footer></body></html>",
        t = escape(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(&mut r);
    r
}

/// A success page.
pub fn success(title: &str, message: &str) -> Response<Full<Bytes>> {
    page(
        StatusCode::OK,
        title,
        &format!("<div class=\"box\"><p>{}</p></div>", escape(message)),
    )
}

/// An error page with the id that appears in the audit log.
pub fn error(status: StatusCode, message: &str, error_id: &str) -> Response<Full<Bytes>> {
    page(
        status,
        "Sign-in did not work",
        &format!(
            "<div class=\"box err\"><p>{}</p></div><p>If you contact the service desk, give them this reference: <code>{}</code></p>",
            escape(message),
            escape(error_id)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_hardens() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let r = error(StatusCode::BAD_REQUEST, "<script>", "err-1");
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
    }
}
