//! Reading the log back: a streaming reader over every line of every segment, in order.
//!
//! [`RawLines`] yields borrowed lines with their segment, line number and byte offset, copying
//! nothing per line beyond one buffer: `verify`, `search`, `sessions` and `export` stream
//! through it, so a log of any size is read in constant memory. [`events`] parses each line
//! into an [`Entry`]. `SegmentScan` yields only the lines that contain a given byte string
//! (ASCII case ignored), reading in large chunks: what makes a selective search fast.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
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

/// Size of the chunks [`SegmentScan`] reads.
const SCAN_CHUNK: usize = 4 * 1024 * 1024;

/// Streams the lines of a log's segments that contain a needle, ignoring ASCII case, in order.
///
/// Each segment is read in large chunks; a chunk is lowercased once and searched with a SIMD
/// substring finder, so lines without the needle cost almost nothing and are never handed out.
/// Pull-based (one line at a time), so several logs can be scanned side by side and merged.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pending: VecDeque<PathBuf>,
    needle: Vec<u8>,
    chunk: usize,
    current: Option<ChunkScan>,
    /// Lines of the segments finished so far.
    lines_done: u64,
}

impl SegmentScan {
    /// Scans `paths` (oldest first) for `needle`, which must be lowercase.
    pub(crate) fn new(paths: Vec<PathBuf>, needle: Vec<u8>) -> SegmentScan {
        SegmentScan::with_chunk(paths, needle, SCAN_CHUNK)
    }

    fn with_chunk(paths: Vec<PathBuf>, needle: Vec<u8>, chunk: usize) -> SegmentScan {
        SegmentScan {
            pending: paths.into(),
            needle,
            chunk: chunk.max(1),
            current: None,
            lines_done: 0,
        }
    }

    /// Lines read so far, whether or not they held the needle (complete once the scan ended).
    pub(crate) fn lines_read(&self) -> u64 {
        self.lines_done + self.current.as_ref().map_or(0, |c| c.lines)
    }

    /// The next line holding the needle, or `None` after the last segment. An I/O error ends
    /// the stream.
    pub(crate) fn next(&mut self) -> Option<Result<RawLine<'_>, AuditError>> {
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
                let last = self.pending.is_empty();
                self.current = Some(ChunkScan::new(path, file, &self.needle, last, self.chunk));
            }
            let current = self.current.as_mut()?;
            match current.advance() {
                Ok(Some(hit)) => return Some(Ok(self.current.as_ref()?.line(hit))),
                Ok(None) => {
                    self.lines_done += current.lines;
                    self.current = None;
                }
                Err(e) => {
                    self.current = None;
                    self.pending.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Where a found line is in [`ChunkScan`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    stop: usize,
    line: u64,
}

/// The chunked scan of one segment: finds the lines containing the needle.
#[derive(Debug)]
struct ChunkScan {
    path: PathBuf,
    file: File,
    finder: memchr::memmem::Finder<'static>,
    last_segment: bool,
    chunk: usize,
    /// Bytes read and not yet consumed; `buf[..end]` is being searched.
    buf: Vec<u8>,
    /// `buf[..end]` lowercased.
    lower: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    /// `buf[..end]` is what is searched: complete lines (or everything, at the end of file).
    end: usize,
    /// Where the search goes on in `lower[..end]`.
    from: usize,
    /// Newlines in `buf[..counted]` are counted in `lines`.
    counted: usize,
    /// Complete lines before `buf[counted]`; at the end, the number of lines of the segment.
    lines: u64,
    /// Whether `buf[..end]` holds a chunk being searched.
    loaded: bool,
    eof: bool,
    done: bool,
}

impl ChunkScan {
    fn new(path: PathBuf, file: File, needle: &[u8], last_segment: bool, chunk: usize) -> Self {
        ChunkScan {
            path,
            file,
            finder: memchr::memmem::Finder::new(needle).into_owned(),
            last_segment,
            chunk,
            buf: Vec::with_capacity(chunk.saturating_mul(2)),
            lower: Vec::with_capacity(chunk.saturating_mul(2)),
            base: 0,
            end: 0,
            from: 0,
            counted: 0,
            lines: 0,
            loaded: false,
            eof: false,
            done: false,
        }
    }

    /// Finds the next line holding the needle; `None` at the end of the segment.
    fn advance(&mut self) -> Result<Option<Hit>, AuditError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.loaded {
                if self.from < self.end {
                    if let Some(found) = self.finder.find(&self.lower[self.from..self.end]) {
                        let at = self.from + found;
                        let start = memchr::memrchr(b'\n', &self.buf[..at]).map_or(0, |i| i + 1);
                        let stop = memchr::memchr(b'\n', &self.buf[at..self.end])
                            .map_or(self.end, |i| at + i);
                        self.lines += memchr::memchr_iter(b'\n', &self.buf[self.counted..start])
                            .count() as u64;
                        self.counted = start;
                        self.from = stop + 1;
                        return Ok(Some(Hit {
                            start,
                            stop,
                            line: self.lines + 1,
                        }));
                    }
                    self.from = self.end;
                }
                // This chunk is searched: count its remaining lines and move on.
                self.lines +=
                    memchr::memchr_iter(b'\n', &self.buf[self.counted..self.end]).count() as u64;
                if self.eof {
                    if self.end > 0 && self.buf[self.end - 1] != b'\n' {
                        self.lines += 1; // the incomplete last line
                    }
                    self.done = true;
                    return Ok(None);
                }
                self.buf.drain(..self.end);
                self.base += self.end as u64;
                self.loaded = false;
            }
            self.fill()?;
        }
    }

    /// Reads until `buf` holds at least one complete line (or the end of the file).
    fn fill(&mut self) -> Result<(), AuditError> {
        loop {
            let filled = self.buf.len();
            self.buf.resize(filled + self.chunk, 0);
            let n = loop {
                match self.file.read(&mut self.buf[filled..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(filled);
                        return Err(AuditError::read(&self.path, e));
                    }
                }
            };
            self.buf.truncate(filled + n);
            let eof = n == 0;
            let end = if eof {
                self.buf.len()
            } else {
                match memchr::memrchr(b'\n', &self.buf) {
                    Some(i) => i + 1,
                    None => continue, // one very long line: read more
                }
            };
            self.lower.clear();
            self.lower.extend_from_slice(&self.buf[..end]);
            self.lower.make_ascii_lowercase();
            self.end = end;
            self.from = 0;
            self.counted = 0;
            self.eof = eof;
            self.loaded = true;
            return Ok(());
        }
    }

    fn line(&self, hit: Hit) -> RawLine<'_> {
        RawLine {
            path: &self.path,
            line: hit.line,
            offset: self.base + hit.start as u64,
            bytes: &self.buf[hit.start..hit.stop],
            complete: hit.stop < self.end,
            last_segment: self.last_segment,
        }
    }
}

/// Calls `f` for every line of the segment at `path` that contains `needle` (lowercase),
/// reading `chunk` bytes at a time; returns the number of lines in the segment. The push form
/// of [`SegmentScan`], for the tests that hold it to a line-by-line scan.
#[cfg(test)]
pub(crate) fn scan_chunked(
    path: &Path,
    needle: &[u8],
    last_segment: bool,
    chunk: usize,
    mut f: impl FnMut(RawLine<'_>),
) -> Result<u64, AuditError> {
    let mut scan = SegmentScan::with_chunk(vec![path.to_owned()], needle.to_vec(), chunk);
    while let Some(line) = scan.next() {
        let mut line = line?;
        // The scan takes its one segment for the last; say what the caller asked.
        line.last_segment = last_segment;
        f(line);
    }
    Ok(scan.lines_read())
}
