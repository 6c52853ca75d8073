//! `application/x-www-form-urlencoded` parsing and percent-encoding.
//!
//! Query strings and form bodies come straight from the network, so parsing never panics, caps
//! the number of parameters, rejects malformed escapes and non-UTF-8 text, and makes duplicated
//! parameters visible (RFC 6749 §3.1: "Request and response parameters MUST NOT be included more
//! than once").

/// Most parameters a request may carry; a real OIDC request has about ten.
const MAX_PARAMS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("malformed percent-encoding")]
    BadPercent,
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("too many parameters")]
    TooMany,
    #[error("parameter `{0}` is given more than once")]
    Duplicate(String),
}

/// Decoded parameters in the order they were sent.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `a=1&b=2`; `+` is a space; pieces without `=` have an empty value.
    pub fn parse(input: &[u8]) -> Result<Params, FormError> {
        let mut out = Vec::new();
        for piece in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            if out.len() == MAX_PARAMS {
                return Err(FormError::TooMany);
            }
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &b""[..]),
            };
            out.push((decode(name)?, decode(value)?));
        }
        Ok(Params(out))
    }

    /// The value of `name`. A parameter sent with an empty value counts as omitted (RFC 6749
    /// §3.1); one sent twice is an error.
    pub fn get(&self, name: &str) -> Result<Option<&str>, FormError> {
        let mut found = None;
        for (n, v) in &self.0 {
            if n == name {
                if found.is_some() {
                    return Err(FormError::Duplicate(name.to_owned()));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found.filter(|v| !v.is_empty()))
    }
}

/// Decodes one form component: `+` becomes a space, `%XX` a byte; the result must be UTF-8.
pub fn decode(component: &[u8]) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(component.len());
    let mut i = 0;
    while i < component.len() {
        match component[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = component.get(i + 1).and_then(|&c| hex_value(c));
                let lo = component.get(i + 2).and_then(|&c| hex_value(c));
                match (hi, lo) {
                    (Some(h), Some(l)) => bytes.push(h << 4 | l),
                    _ => return Err(FormError::BadPercent),
                }
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters, so the result is safe in
/// a query string, a form body and an HTTP header.
pub fn encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Appends `params` to `base`, which may already carry a query.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        out.push(sep);
        out.push_str(&encode(name));
        out.push('=');
        out.push_str(&encode(value));
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let p = Params::parse(b"a=1&b=hello+world&c=%41%2Fb&d&&e=").unwrap();
        assert_eq!(p.get("a").unwrap(), Some("1"));
        assert_eq!(p.get("b").unwrap(), Some("hello world"));
        assert_eq!(p.get("c").unwrap(), Some("A/b"));
        assert_eq!(p.get("d").unwrap(), None, "no value counts as omitted");
        assert_eq!(p.get("e").unwrap(), None, "empty value counts as omitted");
        assert_eq!(p.get("missing").unwrap(), None);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Params::parse(b"a=%4").unwrap_err(), FormError::BadPercent);
        assert_eq!(Params::parse(b"a=%zz").unwrap_err(), FormError::BadPercent);
        assert_eq!(Params::parse(b"a=%").unwrap_err(), FormError::BadPercent);
        assert_eq!(Params::parse(b"a=%ff").unwrap_err(), FormError::NotUtf8);
        assert_eq!(Params::parse(b"a=\xff").unwrap_err(), FormError::NotUtf8);
        let many = "x=1&".repeat(MAX_PARAMS + 1);
        assert_eq!(
            Params::parse(many.as_bytes()).unwrap_err(),
            FormError::TooMany
        );
        let dup = Params::parse(b"a=1&a=2").unwrap();
        assert_eq!(dup.get("a").unwrap_err(), FormError::Duplicate("a".into()));
    }

    #[test]
    fn encode_round_trips() {
        let s = "a b&c=d/é?#%+~";
        let enc = encode(s);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        assert_eq!(decode(enc.as_bytes()).unwrap(), s);
    }

    #[test]
    fn with_query_keeps_existing_query() {
        assert_eq!(
            with_query("http://h/cb", &[("code", "a b"), ("state", "x")]),
            "http://h/cb?code=a%20b&state=x"
        );
        assert_eq!(
            with_query("http://h/cb?t=1", &[("code", "c")]),
            "http://h/cb?t=1&code=c"
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic generator instead of a fuzzer dependency: every byte value and
        // every position of `%`, `=`, `&` and `+` comes up.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut parsed_ok = 0;
        for len in 0..2000usize {
            let mut buf = Vec::with_capacity(len % 64);
            for _ in 0..(len % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let b = (seed & 0xff) as u8;
                buf.push(match b % 8 {
                    0 => b'%',
                    1 => b'=',
                    2 => b'&',
                    3 => b'+',
                    _ => b,
                });
            }
            if let Ok(p) = Params::parse(&buf) {
                parsed_ok += 1;
                let _ = p.get("a");
            }
        }
        assert!(
            parsed_ok > 0,
            "the generator should produce some valid forms"
        );
    }
}
