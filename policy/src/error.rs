//! Errors: the public [`PolicyError`] / [`Diagnostic`] types, and the crate-internal collector
//! that gathers every problem in a file before any of them is reported.

use std::cell::OnceCell;
use std::fmt;

/// Stop recording after this many problems: a 4 MiB file of nonsense could otherwise produce
/// hundreds of thousands of messages, and nobody reads past the first screenful.
const MAX_DIAGNOSTICS: usize = 1000;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be opened or read.
    #[error("{origin}: error: cannot read policy file: {source}")]
    Read {
        /// The path as given by the caller.
        origin: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy. Every problem found is listed, in file order;
    /// `Display` prints one per line.
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// Every problem found, in file order (empty for [`PolicyError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid(diagnostics) => diagnostics,
        }
    }
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The category of a [`Diagnostic`], for callers that react to problems programmatically
/// (editors, tests, a reload loop that wants to count syntax errors separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not valid TOML.
    Syntax,
    /// The file is not valid UTF-8.
    Encoding,
    /// A size or count limit was exceeded (file size, number of endpoints or rules, string
    /// length, or the number of errors reported).
    LimitExceeded,
    /// A key that the format does not define.
    UnknownKey,
    /// A required key is absent.
    MissingField,
    /// A value has the wrong TOML type (a string where an integer belongs, a table where an array
    /// of tables belongs, …).
    InvalidType,
    /// An endpoint name, site name or rule id outside `[a-z0-9][a-z0-9-]{0,62}`.
    InvalidName,
    /// A value of the right type but outside what is allowed (port 0, empty host, unknown
    /// protocol or effect, empty list, control characters, …).
    InvalidValue,
    /// A duration that does not parse or is zero.
    InvalidDuration,
    /// Two endpoints with the same name.
    DuplicateEndpoint,
    /// Two endpoints with the same `local_port`: a laptop could open only one of them.
    DuplicateLocalPort,
    /// Two rules with the same id.
    DuplicateRule,
    /// A rule names an endpoint that the policy does not define.
    UnknownEndpoint,
    /// A rule lists neither `groups` nor `users`, so it could never match anyone.
    NoSubjects,
    /// `max_session` on a deny rule, where it has no meaning.
    MaxSessionOnDeny,
    /// `idle_timeout` or `require_justification` on a deny rule.
    LimitOnDeny,
    /// Two groups with the same name.
    DuplicateGroup,
    /// A rule names a group that the policy does not define (once it defines any).
    UnknownGroup,
    /// A time zone name that is not in the IANA database.
    UnknownZone,
    /// A time window that does not parse.
    InvalidWindow,
    /// Conditions that parse but can never all hold: an empty window, a validity range that
    /// ends before it starts, windows that never fall inside the validity range.
    NeverMatches,
    /// A network that is not an address or CIDR block.
    InvalidNetwork,
    /// A rule that can never decide anything: an earlier unconditional deny covers every user
    /// and endpoint it covers.
    Unreachable,
    /// `[defaults]` written in more than one file of a policy directory.
    DuplicateDefaults,
    /// Two inline tests with the same name.
    DuplicateTest,
    /// An inline test names a rule that the policy does not define.
    UnknownRule,
    /// A `report_only` entry names a condition that the rule does not have.
    UnknownCondition,
    /// The policy defines no endpoints or no rules, so it denies every request, and does not
    /// say so with `deny_all = true` (an empty or half-written file looks like this).
    EmptyPolicy,
    /// `report_only` on a deny rule: "as if the condition were not written" would widen the
    /// deny to everyone the rule names instead of trialling it.
    ReportOnlyOnDeny,
    /// Warning: an allow rule that a later unconditional deny always overrides.
    Shadowed,
    /// Warning: a rule whose endpoint selection matches no endpoint, or a group no rule uses.
    MatchesNothing,
    /// Warning: a CIDR block with host bits set, or windows that cover the whole week.
    Suspicious,
}

/// Whether a [`Diagnostic`] stops the policy from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The policy is not loaded.
    Error,
    /// The policy loads, but probably does not say what its author meant. Listed by
    /// [`crate::Policy::warnings`]; `postern-policy check --deny-warnings` fails on them.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in a policy file, with where it is and, usually, how to fix it.
///
/// `Display` gives the conventional one-line form:
/// `policy.toml:12:9: error: rule 'x' references unknown endpoint 'pacs'  (hint: …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name the caller passed as `origin`.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What sort of problem this is.
    pub kind: ErrorKind,
    /// What is wrong, as a sentence fragment without trailing punctuation.
    pub message: String,
    /// A suggested fix, when there is a useful one.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.origin,
            self.line,
            self.column,
            self.severity.as_str(),
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "  (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Maps byte offsets to 1-based line and column. The line table is built on first use, so a
/// valid file never pays for it.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    line_starts: OnceCell<Vec<usize>>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        SourceMap {
            text,
            line_starts: OnceCell::new(),
        }
    }

    /// The 1-based (line, column) of a byte offset; offsets past the end map to the end.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        // `starts[0] == 0`, so at least one start is <= offset.
        let line_index = starts.partition_point(|&start| start <= offset).max(1) - 1;
        let line_start = starts.get(line_index).copied().unwrap_or(0);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        (line_index + 1, column + 1)
    }

    /// The byte offset at which 1-based `line` starts (the end of the text past the last line).
    pub(crate) fn offset_of_line(&self, line: usize) -> usize {
        self.position(0);
        self.line_starts
            .get()
            .and_then(|starts| starts.get(line.saturating_sub(1)).copied())
            .unwrap_or(self.text.len())
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }
}

/// A problem found while loading, positioned by byte offset; turned into a [`Diagnostic`] once
/// loading is over.
struct Pending {
    file: usize,
    offset: usize,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

/// Collects problems during parsing and validation so that all of them can be reported at once.
#[derive(Default)]
pub(crate) struct Diagnostics {
    /// The file that offsets given to `push` refer to.
    file: usize,
    pending: Vec<Pending>,
    warnings: Vec<Pending>,
    /// Problems found after [`MAX_DIAGNOSTICS`] was reached; counted, not kept.
    dropped: usize,
    /// Offset of the first dropped problem, where the "too many errors" note points.
    first_dropped_at: usize,
    first_dropped_file: usize,
}

/// One source file of a policy, for positioning diagnostics.
pub(crate) struct SourceFile<'a> {
    pub(crate) origin: String,
    pub(crate) map: SourceMap<'a>,
}

impl Diagnostics {
    /// Makes later offsets refer to file number `file`.
    pub(crate) fn set_file(&mut self, file: usize) {
        self.file = file;
    }

    /// Records a warning at byte `offset` of the current file. Warnings are bounded like errors.
    pub(crate) fn warn(
        &mut self,
        kind: ErrorKind,
        offset: usize,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        if self.warnings.len() < MAX_DIAGNOSTICS {
            self.warnings.push(Pending {
                file: self.file,
                offset,
                kind,
                message: message.into(),
                hint,
            });
        }
    }

    /// Records a problem at byte `offset`.
    pub(crate) fn push(
        &mut self,
        kind: ErrorKind,
        offset: usize,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push_with(kind, offset, || (message.into(), hint));
    }

    /// Like [`Diagnostics::push`], but builds the message and hint only if they will be kept:
    /// for loops that may report hundreds of thousands of problems in a hostile file.
    pub(crate) fn push_with(
        &mut self,
        kind: ErrorKind,
        offset: usize,
        build: impl FnOnce() -> (String, Option<String>),
    ) {
        if self.pending.len() >= MAX_DIAGNOSTICS {
            if self.dropped == 0 {
                self.first_dropped_at = offset;
                self.first_dropped_file = self.file;
            }
            self.dropped += 1;
            return;
        }
        let (message, hint) = build();
        self.pending.push(Pending {
            file: self.file,
            offset,
            kind,
            message,
            hint,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Positions every problem, in file order (problems at the same place keep the order in
    /// which they were found): the errors, then the warnings.
    pub(crate) fn finish(self, files: &[SourceFile<'_>]) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        let mut pending = self.pending;
        pending.sort_by_key(|p| (p.file, p.offset));
        if self.dropped > 0 {
            pending.push(Pending {
                file: self.first_dropped_file,
                offset: self.first_dropped_at,
                kind: ErrorKind::LimitExceeded,
                message: format!("too many errors: {} more not shown", self.dropped),
                hint: Some(format!(
                    "only the first {MAX_DIAGNOSTICS} problems are reported"
                )),
            });
        }
        let mut warnings = self.warnings;
        warnings.sort_by_key(|p| (p.file, p.offset));
        (
            position(pending, files, Severity::Error),
            position(warnings, files, Severity::Warning),
        )
    }

    /// The errors only, for a single file.
    pub(crate) fn finish_one(self, source: &SourceMap<'_>, origin: &str) -> Vec<Diagnostic> {
        let file = SourceFile {
            origin: origin.to_owned(),
            map: SourceMap::new(source.text),
        };
        let mut this = self;
        this.file = 0;
        for p in this.pending.iter_mut() {
            p.file = 0;
        }
        this.first_dropped_file = 0;
        this.finish(std::slice::from_ref(&file)).0
    }
}

fn position(
    pending: Vec<Pending>,
    files: &[SourceFile<'_>],
    severity: Severity,
) -> Vec<Diagnostic> {
    pending
        .into_iter()
        .map(|p| {
            let (origin, (line, column)) = match files.get(p.file) {
                Some(file) => (file.origin.clone(), file.map.position(p.offset)),
                None => (String::new(), (1, 1)),
            };
            Diagnostic {
                origin,
                line,
                column,
                severity,
                kind: p.kind,
                message: p.message,
                hint: p.hint,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçd = 1\n\nx";
        let map = SourceMap::new(text);
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(1), (1, 2));
        assert_eq!(map.position(3), (2, 1));
        // "ç" is two bytes; the byte after it is the second character of line 2.
        assert_eq!(map.position(5), (2, 2));
        assert_eq!(map.position(text.len() - 1), (4, 1));
        assert_eq!(map.position(text.len() + 100), (4, 2));
    }

    #[test]
    fn too_many_problems_are_summarised() {
        let text = "x\n".repeat(MAX_DIAGNOSTICS + 10);
        let map = SourceMap::new(&text);
        let mut diags = Diagnostics::default();
        for i in 0..MAX_DIAGNOSTICS + 10 {
            diags.push(ErrorKind::InvalidValue, i * 2, format!("problem {i}"), None);
        }
        let all = diags.finish_one(&map, "p.toml");
        assert_eq!(all.len(), MAX_DIAGNOSTICS + 1);
        let last = all.last().unwrap();
        assert_eq!(last.kind, ErrorKind::LimitExceeded);
        assert_eq!(last.message, "too many errors: 10 more not shown");
        assert_eq!(last.line, MAX_DIAGNOSTICS + 1);
    }

    #[test]
    fn diagnostic_display_has_position_and_hint() {
        let d = Diagnostic {
            origin: "policy.toml".into(),
            line: 12,
            column: 9,
            severity: Severity::Error,
            kind: ErrorKind::UnknownEndpoint,
            message: "rule 'x' references unknown endpoint 'pacs'".into(),
            hint: Some("defined endpoints: a, b".into()),
        };
        assert_eq!(
            d.to_string(),
            "policy.toml:12:9: error: rule 'x' references unknown endpoint 'pacs'  (hint: defined endpoints: a, b)"
        );
    }
}
