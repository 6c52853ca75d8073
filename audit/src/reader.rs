//! Reading the log back: a streaming iterator over every line of every segment, in order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::AuditError;
use crate::event::Event;
use crate::store::{first_segment_path, segment_paths};

/// One line of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// 1-based line number within its segment.
    pub line: u64,
    /// The line exactly as stored, without its `\n` (what `--json` prints and, later, what the
    /// hash chain covers).
    pub raw: String,
    /// The parsed event.
    pub event: Event,
}

/// Streams the entries of a log, segment by segment, line by line; see [`events`].
///
/// A line that is not a valid event yields [`AuditError::Parse`] and reading goes on with the
/// next line (lines are self-delimiting); an I/O error ends the iteration.
#[derive(Debug)]
pub struct Events {
    pending: VecDeque<PathBuf>,
    current: Option<Current>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Current {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
}

impl Events {
    /// Path of the segment being read (after the first `next`), for messages.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    fn next_line(&mut self) -> Option<Result<Entry, AuditError>> {
        loop {
            let current = match &mut self.current {
                Some(current) => current,
                None => {
                    let path = self.pending.pop_front()?;
                    let file = match File::open(&path) {
                        Ok(file) => file,
                        Err(e) => {
                            self.pending.clear();
                            return Some(Err(AuditError::read(&path, e)));
                        }
                    };
                    self.current.insert(Current {
                        path,
                        reader: BufReader::with_capacity(64 * 1024, file),
                        line: 0,
                    })
                }
            };
            self.buf.clear();
            match current.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {
                    current.line += 1;
                    return Some(parse_line(&current.path, current.line, &self.buf));
                }
                Err(e) => {
                    let error = AuditError::read(&current.path, e);
                    self.current = None;
                    self.pending.clear();
                    return Some(Err(error));
                }
            }
        }
    }
}

impl Iterator for Events {
    type Item = Result<Entry, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line()
    }
}

fn parse_line(path: &Path, line: u64, bytes: &[u8]) -> Result<Entry, AuditError> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let parse_error = |reason: String| AuditError::Parse {
        path: path.to_owned(),
        line,
        reason,
    };
    let raw = std::str::from_utf8(bytes)
        .map_err(|e| parse_error(format!("not UTF-8: {e}")))?
        .to_owned();
    if raw.trim().is_empty() {
        return Err(parse_error("empty line".to_owned()));
    }
    let event = serde_json::from_str(&raw).map_err(|e| parse_error(e.to_string()))?;
    Ok(Entry { line, raw, event })
}

/// Opens the log in `dir` for streaming. Fails with [`AuditError::NoLog`] if there is none, so a
/// mistyped directory is not mistaken for an empty log.
pub fn events(dir: &Path) -> Result<Events, AuditError> {
    let segments = segment_paths(dir)?;
    if segments.is_empty() {
        return Err(AuditError::NoLog {
            dir: dir.to_owned(),
            expected: first_segment_path(dir),
        });
    }
    Ok(Events {
        pending: segments.into(),
        current: None,
        buf: Vec::with_capacity(4096),
    })
}

/// Reads every event of the log in `dir`, in order. The first line that is not a valid event is
/// an [`AuditError::Parse`] naming the file and line.
pub fn read_all(dir: &Path) -> Result<Vec<Event>, AuditError> {
    events(dir)?.map(|entry| entry.map(|e| e.event)).collect()
}
