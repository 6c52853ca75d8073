//! Rendering an error and its causes on one line for a person, without repeating a cause that
//! the outer message already quotes.

use std::error::Error;

/// `outer: cause: root cause`, skipping causes whose text the previous message already contains.
pub fn render(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut cur = err.source();
    while let Some(cause) = cur {
        let msg = cause.to_string();
        if !last.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        last = msg;
        cur = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding 1.2.3.4: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn skips_repeated_causes() {
        let e = Outer {
            source: std::io::Error::other("in use"),
        };
        assert_eq!(render(&e), "binding 1.2.3.4: in use");
    }
}
