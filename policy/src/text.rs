//! Small text helpers shared by validation and evaluation: safe quoting of untrusted strings,
//! "did you mean" suggestions and bounded lists.

use std::fmt;

/// How many characters of an untrusted string are echoed back in a message.
const QUOTE_MAX_CHARS: usize = 80;

/// Displays an untrusted string (a request field, a key from the file) for a message or an
/// audit reason: control characters are escaped, so a crafted user name cannot forge log lines,
/// and long strings are cut short.
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fast path: short printable ASCII, the usual user and endpoint names.
        if self.0.len() <= QUOTE_MAX_CHARS && self.0.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return f.write_str(self.0);
        }
        for (count, c) in self.0.chars().enumerate() {
            if count == QUOTE_MAX_CHARS {
                return f.write_str("…");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// A message from the TOML parser or serde, made fit for a one-line diagnostic: newlines become
/// "; " and very long messages (serde echoes the offending value) are cut short.
pub(crate) fn one_line(message: &str) -> String {
    let joined = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Quoted(&joined).to_string()
}

/// `a, b, c` for at most `max` items, then `… and N more`.
pub(crate) fn bounded_list<'a>(
    items: impl ExactSizeIterator<Item = &'a str>,
    max: usize,
) -> String {
    let total = items.len();
    let mut out = items
        .take(max)
        .map(|item| Quoted(item).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if total > max {
        out.push_str(&format!(", … and {} more", total - max));
    }
    out
}

/// The candidate closest to `needle` by edit distance, if any is close enough to be a plausible
/// typo (distance at most a third of the needle's length rounded up, between 1 and 3). Ties go
/// to the earliest candidate.
pub(crate) fn suggest<'a>(
    needle: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let max = needle.chars().count().div_ceil(3).clamp(1, 3);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let limit = best.map_or(max, |(d, _)| d.saturating_sub(1));
        if let Some(d) = edit_distance_within(needle, candidate, limit) {
            best = Some((d, candidate));
            if d == 0 {
                break;
            }
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Levenshtein distance between `a` and `b` if it is at most `max`, else `None`. Only the band of
/// width `2 * max + 1` around the diagonal is computed, so the cost is `O(len * max)` however
/// many candidates a caller tries.
pub(crate) fn edit_distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let beyond = max + 1;
    let mut prev: Vec<usize> = (0..=b.len()).map(|j| j.min(beyond)).collect();
    let mut cur = vec![beyond; b.len() + 1];
    for i in 1..=a.len() {
        let lo = i.saturating_sub(max).max(1);
        let hi = (i + max).min(b.len());
        cur.fill(beyond);
        cur[0] = i.min(beyond);
        let mut row_min = cur[0];
        for j in lo..=hi {
            let substitution = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let value = substitution
                .min(prev[j] + 1)
                .min(cur[j - 1] + 1)
                .min(beyond);
            cur[j] = value;
            row_min = row_min.min(value);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let distance = prev[b.len()];
    (distance <= max).then_some(distance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_control_characters_and_truncates() {
        assert_eq!(Quoted("alice\n[forged]").to_string(), "alice\\n[forged]");
        assert_eq!(Quoted("\u{1b}[31m").to_string(), "\\u{1b}[31m");
        let long = "x".repeat(500);
        let shown = Quoted(&long).to_string();
        assert_eq!(shown.chars().count(), QUOTE_MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn edit_distance_matches_levenshtein_within_bound() {
        assert_eq!(edit_distance_within("pacs", "pacs", 2), Some(0));
        assert_eq!(edit_distance_within("kitten", "sitting", 3), Some(3));
        assert_eq!(edit_distance_within("kitten", "sitting", 2), None);
        assert_eq!(edit_distance_within("", "ab", 2), Some(2));
        assert_eq!(edit_distance_within("abc", "", 2), None);
        assert_eq!(edit_distance_within("truro-pacs", "truro-pcas", 2), Some(2));
    }

    #[test]
    fn suggest_finds_close_names_only() {
        let names = ["truro-pacs-dicom", "truro-pacs-web", "penzance-pacs-dicom"];
        assert_eq!(suggest("truro-pacs-dicon", names), Some("truro-pacs-dicom"));
        assert_eq!(suggest("truro-pacs-wb", names), Some("truro-pacs-web"));
        assert_eq!(suggest("radiology", names), None);
        assert_eq!(suggest("hots", ["name", "host", "port"]), Some("host"));
    }

    #[test]
    fn bounded_list_reports_the_rest() {
        let items = ["a", "b", "c", "d"];
        assert_eq!(bounded_list(items.iter().copied(), 10), "a, b, c, d");
        assert_eq!(bounded_list(items.iter().copied(), 2), "a, b, … and 2 more");
    }

    #[test]
    fn one_line_joins_parser_messages() {
        assert_eq!(
            one_line("invalid array\nexpected `]`\n"),
            "invalid array; expected `]`"
        );
    }
}

/// A fast, unkeyed hasher (the multiply-rotate hash of rustc's `FxHasher`) for the evaluator's
/// lookup tables. Their keys come from the policy file, never from requests: a request string
/// can only be looked up, so it cannot make a table degrade for anyone else.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
