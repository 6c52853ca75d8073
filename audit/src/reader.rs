//! Reading the log back: a streaming reader over every line of every segment, in order.
//!
//! [`RawLines`] yields borrowed lines with their segment, line number and byte offset, copying
//! nothing per line beyond one buffer: `verify`, `search`, `sessions` and `export` stream
//! through it, so a log of any size is read in constant memory. [`events`] parses each line
//! into an [`Entry`].

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
    /// Byte offset of the line's first byte within its segment.
    pub offset: u64,
    /// The line exactly as stored, without its `\n` (what `--json` prints and what the hash
    /// chain covers).
    pub raw: String,
    /// The parsed event.
    pub event: Event,
}

/// One line as read, borrowed from the reader's buffer.
#[derive(Debug)]
pub struct RawLine<'a> {
    /// The segment it is in.
    pub path: &'a Path,
    /// 1-based line number within the segment.
    pub line: u64,
    /// Byte offset of its first byte within the segment.
    pub offset: u64,
    /// The bytes, without the `\n`.
    pub bytes: &'a [u8],
    /// `false` for a last line that has no `\n` (torn by a crash, or being written right now).
    pub complete: bool,
    /// Whether this is in the newest segment.
    pub last_segment: bool,
}

/// Streams the raw lines of a log, segment by segment; see [`RawLines::open`].
#[derive(Debug)]
pub struct RawLines {
    pending: VecDeque<PathBuf>,
    current: Option<Current>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Current {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    offset: u64,
    last: bool,
}

impl RawLines {
    /// Opens the log in `dir`. Fails with [`AuditError::NoLog`] if there is none, so a
    /// mistyped directory is not mistaken for an empty log.
    pub fn open(dir: &Path) -> Result<RawLines, AuditError> {
        let segments = segment_paths(dir)?;
        if segments.is_empty() {
            return Err(AuditError::NoLog {
                dir: dir.to_owned(),
                expected: first_segment_path(dir),
            });
        }
        Ok(RawLines::from_paths(segments))
    }

    /// Reads exactly these segment files, in this order.
    pub fn from_paths(paths: Vec<PathBuf>) -> RawLines {
        RawLines {
            pending: paths.into(),
            current: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Path of the segment being read (after the first line), for messages.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// The next line, or `None` at the end of the last segment. An I/O error ends the stream.
    #[allow(clippy::should_implement_trait)] // a lending iterator: lines borrow the buffer
    pub fn next(&mut self) -> Option<Result<RawLine<'_>, AuditError>> {
        loop {
            if self.current.is_none() {
                let path = self.pending.pop_front()?;
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) => {
                        self.pending.clear();
                        return Some(Err(AuditError::read(&path, e)));
                    }
                };
                self.current = Some(Current {
                    path,
                    reader: BufReader::with_capacity(256 * 1024, file),
                    line: 0,
                    offset: 0,
                    last: self.pending.is_empty(),
                });
            }
            let current = self.current.as_mut()?;
            self.buf.clear();
            match current.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.current = None;
                }
                Ok(n) => {
                    current.line += 1;
                    let offset = current.offset;
                    current.offset += n as u64;
                    let complete = self.buf.last() == Some(&b'\n');
                    let bytes = if complete {
                        &self.buf[..n - 1]
                    } else {
                        &self.buf[..]
                    };
                    let current = self.current.as_ref()?;
                    return Some(Ok(RawLine {
                        path: &current.path,
                        line: current.line,
                        offset,
                        bytes,
                        complete,
                        last_segment: current.last,
                    }));
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

/// Streams the entries of a log, segment by segment, line by line; see [`events`].
///
/// A line that is not a valid event yields [`AuditError::Parse`] and reading goes on with the
/// next line (lines are self-delimiting); an I/O error ends the iteration.
#[derive(Debug)]
pub struct Events {
    lines: RawLines,
}

impl Events {
    /// Path of the segment being read (after the first `next`), for messages.
    pub fn current_path(&self) -> Option<&Path> {
        self.lines.current_path()
    }
}

impl Iterator for Events {
    type Item = Result<Entry, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        Some(parse_line(&line))
    }
}

/// Parses a raw line into an [`Entry`].
pub fn parse_line(line: &RawLine<'_>) -> Result<Entry, AuditError> {
    let parse_error = |reason: String| AuditError::Parse {
        path: line.path.to_owned(),
        line: line.line,
        reason,
    };
    if !line.complete {
        return Err(parse_error(
            "incomplete last line (a torn write, or a write in progress)".to_owned(),
        ));
    }
    let raw = std::str::from_utf8(line.bytes)
        .map_err(|e| parse_error(format!("not UTF-8: {e}")))?
        .to_owned();
    if raw.trim().is_empty() {
        return Err(parse_error("empty line".to_owned()));
    }
    let event = serde_json::from_str(&raw).map_err(|e| parse_error(e.to_string()))?;
    Ok(Entry {
        line: line.line,
        offset: line.offset,
        raw,
        event,
    })
}

/// Opens the log in `dir` for streaming. Fails with [`AuditError::NoLog`] if there is none, so a
/// mistyped directory is not mistaken for an empty log.
pub fn events(dir: &Path) -> Result<Events, AuditError> {
    Ok(Events {
        lines: RawLines::open(dir)?,
    })
}

/// Reads every event of the log in `dir`, in order. The first line that is not a valid event is
/// an [`AuditError::Parse`] naming the file and line.
pub fn read_all(dir: &Path) -> Result<Vec<Event>, AuditError> {
    events(dir)?.map(|entry| entry.map(|e| e.event)).collect()
}
