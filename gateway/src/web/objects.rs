//! What a request path says: whether it is in the normal form the policy and the upstream
//! must agree on, and which DICOM objects it touches (DICOMweb `studies/{uid}/series/{uid}/
//! instances/{uid}` paths and WADO-URI's `studyUID`, `seriesUID`, `objectUID` parameters).

use postern_audit::ObjectRef;

/// Longest path the proxy forwards.
pub const MAX_PATH: usize = 4096;

/// Why a path is refused before the policy is asked.
pub fn refuse_path(path: &str) -> Option<&'static str> {
    if path.len() > MAX_PATH {
        return Some("the path is longer than 4096 bytes");
    }
    if !path.starts_with('/') {
        return Some("the path does not start with /");
    }
    let lower = path.to_ascii_lowercase();
    // Encoded separators and dots would let a path look different to the policy than to the
    // application; encoded NUL has no business in a path.
    for bad in ["%2f", "%5c", "%2e", "%00"] {
        if lower.contains(bad) {
            return Some("the path encodes a separator, a dot or NUL");
        }
    }
    if path.contains('\\') {
        return Some("the path contains a backslash");
    }
    if path.contains("//") {
        return Some("the path contains an empty segment (//)");
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Some("the path contains a . or .. segment");
    }
    None
}

fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

/// The DICOM objects a request names, most specific last (at most one of each kind).
pub fn of(path: &str, query: Option<&str>) -> Vec<ObjectRef> {
    let mut out = Vec::new();
    let mut push = |kind: &str, id: &str| {
        if is_uid(id) && !out.iter().any(|o: &ObjectRef| o.kind == kind) {
            out.push(ObjectRef {
                kind: kind.to_owned(),
                id: id.to_owned(),
            });
        }
    };
    let segs: Vec<&str> = path.split('/').collect();
    for w in segs.windows(2) {
        match w[0] {
            "studies" => push("study", w[1]),
            "series" => push("series", w[1]),
            "instances" => push("instance", w[1]),
            _ => {}
        }
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "studyUID" => push("study", v),
                "seriesUID" => push("series", v),
                "objectUID" => push("instance", v),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[ObjectRef]) -> Vec<(String, String)> {
        v.iter().map(|o| (o.kind.clone(), o.id.clone())).collect()
    }

    #[test]
    fn dicomweb_paths_name_their_objects() {
        let o = of(
            "/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1",
            None,
        );
        assert_eq!(
            kinds(&o),
            vec![
                ("study".into(), "1.2.3".into()),
                ("series".into(), "1.2.3.4".into()),
                ("instance".into(), "1.2.3.4.5".into())
            ]
        );
        assert!(of("/app/explorer.html", None).is_empty());
        // Not a UID: not recorded.
        assert!(of("/dicom-web/studies/abc", None).is_empty());
        let wado = of(
            "/wado",
            Some("requestType=WADO&studyUID=1.2&seriesUID=1.2.3&objectUID=1.2.3.4"),
        );
        assert_eq!(wado.len(), 3);
    }

    #[test]
    fn odd_paths_are_refused_before_the_policy() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a%2Fb",
            "/a%2e%2e/b",
            "/a\\b",
            "relative",
        ] {
            assert!(refuse_path(p).is_some(), "{p}");
        }
        for p in [
            "/",
            "/app/explorer.html",
            "/dicom-web/studies/1.2",
            "/a%20b",
        ] {
            assert_eq!(refuse_path(p), None, "{p}");
        }
    }
}
