//! On-disk layout and the one locked append path every writer goes through.
//!
//! Both the gateway's background writer ([`crate::AuditLog`]) and one-shot CLI appends
//! ([`append_sync`]) work through [`Store`]: take the exclusive lock on `audit.lock`, look at the
//! active segment ([`Store::observe`]: has anyone appended since we last wrote? is there a torn
//! tail to cut?), chain the new events onto the head found there, append them with one
//! `write_all` on an `O_APPEND` descriptor, `fdatasync`, unlock. Because the head is always read
//! (or confirmed unchanged) under the lock, interleaving processes continue one chain.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::chain::{seal_line, ChainView, GENESIS};
use crate::error::AuditError;
use crate::event::{AuditMeta, Event, EventType};
use crate::hexfmt::{decode_hash, hex};

/// File name of the first segment. Later segments are `audit.000002.jsonl`, `audit.000003.jsonl`, ...
pub const FIRST_SEGMENT: &str = "audit.jsonl";
/// The lock every appending process takes (an empty file; `flock` on it).
pub const LOCK_FILE: &str = "audit.lock";
/// The latest signed checkpoint, as a witness line, rewritten after each checkpoint.
pub const HEAD_FILE: &str = "audit.head";

/// Permissions of a log directory this crate creates.
const DIR_MODE: u32 = 0o700;
/// Permissions of a file this crate creates.
const FILE_MODE: u32 = 0o600;

/// Path of the first segment of the log in `dir`.
pub fn first_segment_path(dir: &Path) -> PathBuf {
    dir.join(FIRST_SEGMENT)
}

/// File name of segment number `index` (1-based).
pub fn segment_file_name(index: u32) -> String {
    if index <= 1 {
        FIRST_SEGMENT.to_owned()
    } else {
        format!("audit.{index:06}.jsonl")
    }
}

/// The segment number of a file name, or `None` if it is not a segment.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    if name == FIRST_SEGMENT {
        return Some(1);
    }
    let digits = name.strip_prefix("audit.")?.strip_suffix(".jsonl")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n >= 2)
}

/// The segments of the log in `dir` with their numbers, oldest first. Empty if there is none.
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::read(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::read(dir, e))?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_name) {
            found.push((index, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(index, _)| *index);
    Ok(found)
}

/// The segments of the log in `dir` that exist, oldest first. Empty if there is no log.
pub fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    Ok(segments(dir)?.into_iter().map(|(_, p)| p).collect())
}

/// Appends one event to the log in `dir` and returns once it is on disk. For short-lived
/// processes (admin CLI commands) that have no [`crate::AuditLog`]; safe to use while a
/// gateway's writer appends to the same log: under the lock it reads the chain head from the
/// file and continues the chain, and if it finds a torn tail left by a crash it cuts it and
/// records `audit.recovered` first.
pub fn append_sync(dir: &Path, event: &Event) -> Result<(), AuditError> {
    if EventType::is_reserved(&event.kind) {
        return Err(AuditError::Reserved {
            kind: event.kind.clone(),
        });
    }
    let mut store = Store::open(dir)?;
    let mut event = event.clone();
    store.locked(|store| {
        let recovery = store.observe()?;
        let mut head = store.head();
        let mut buf = Vec::with_capacity(1024);
        if let Some(recovery) = recovery {
            head = encode_event(&mut recovery.event(None), head, &mut buf)?;
        }
        head = encode_event(&mut event, head, &mut buf)?;
        store.append(&buf, head)
    })
}

/// The last event of the chain: what the next event links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// `seq` of the last event (0 when the log is empty).
    pub seq: u64,
    /// `hash` of the last event ([`GENESIS`] when the log is empty).
    pub hash: [u8; 32],
}

impl Head {
    pub(crate) const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };
}

/// Sets `seq` and `prev`, serializes `event` as one chained line (with `\n`) onto `buf`, and
/// returns the new head. On error `buf` is left unchanged.
pub(crate) fn encode_event(
    event: &mut Event,
    head: Head,
    buf: &mut Vec<u8>,
) -> Result<Head, AuditError> {
    let seq = head.seq + 1;
    event.seq = Some(seq);
    event.prev = Some(hex(&head.hash));
    event.hash = None;
    let start = buf.len();
    if let Err(e) = serde_json::to_writer(&mut *buf, &*event) {
        buf.truncate(start);
        return Err(AuditError::Encode {
            kind: event.kind.clone(),
            reason: e.to_string(),
        });
    }
    let hash = seal_line(&head.hash, buf, start);
    event.hash = Some(hex(&hash));
    Ok(Head { seq, hash })
}

/// Torn bytes found at the end of the active segment and cut.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub segment: String,
    pub offset: u64,
    pub torn_bytes: u64,
    pub torn_sha256: String,
    /// The first bytes of what was cut, for the record (lossy UTF-8, control characters kept
    /// escaped by JSON).
    pub excerpt: String,
    /// `seq` of the last intact event before the torn bytes.
    pub after_seq: u64,
}

/// How much of the cut bytes `audit.recovered` quotes.
const EXCERPT_BYTES: usize = 512;

impl Recovery {
    /// The `audit.recovered` event that records this recovery.
    pub(crate) fn event(&self, node: Option<&str>) -> Event {
        Event {
            gateway: node.map(str::to_owned),
            detail: Some(format!(
                "found {} torn byte(s) at offset {} of {} after seq {} (an incomplete write that was never acknowledged) and cut them; they began: {}",
                self.torn_bytes, self.offset, self.segment, self.after_seq, self.excerpt
            )),
            audit: Some(AuditMeta {
                segment: Some(self.segment.clone()),
                offset: Some(self.offset),
                torn_bytes: Some(self.torn_bytes),
                torn_sha256: Some(self.torn_sha256.clone()),
                ..AuditMeta::default()
            }),
            ..Event::new(EventType::AuditRecovered)
        }
    }
}

/// The active segment as this process last saw it.
#[derive(Debug)]
struct Active {
    index: u32,
    path: PathBuf,
    file: File,
    /// Length after our last write (or when we last looked).
    len: u64,
    /// The chain head at `len`.
    head: Head,
    /// When the segment's first event was written (now, for an empty segment).
    started: SystemTime,
}

/// A log directory opened for appending: the lock file and a cached view of the active segment.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    lock_path: PathBuf,
    lock_file: File,
    active: Option<Active>,
}

impl Store {
    /// Creates the directory (0700, and missing parents) and the lock file (0600) if missing.
    pub(crate) fn open(dir: &Path) -> Result<Store, AuditError> {
        let created_dir = ensure_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|e| AuditError::open(&lock_path, e))?;
        if created_dir {
            sync_dir(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(Store {
            dir: dir.to_owned(),
            lock_path,
            lock_file,
            active: None,
        })
    }

    /// Runs `f` holding the exclusive lock of the log.
    pub(crate) fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        self.lock_file
            .lock()
            .map_err(|e| AuditError::lock(&self.lock_path, e))?;
        let result = f(self);
        // Closing the descriptor would release the lock anyway; nothing useful to do on error.
        let _ = self.lock_file.unlock();
        result
    }

    /// Under the lock: makes the cached view of the active segment current. Cheap when nothing
    /// changed (one `fstat` and one directory listing). If another process appended or rotated,
    /// re-reads the head from the file; if the segment ends in torn bytes (a crash mid-write),
    /// cuts exactly those and returns what was cut.
    pub(crate) fn observe(&mut self) -> Result<Option<Recovery>, AuditError> {
        let segments = segments(&self.dir)?;
        let (index, path) = segments
            .last()
            .cloned()
            .unwrap_or_else(|| (1, first_segment_path(&self.dir)));
        if let Some(active) = &self.active {
            if active.index == index {
                let len = active
                    .file
                    .metadata()
                    .map_err(|e| AuditError::read(&active.path, e))?
                    .len();
                if len == active.len {
                    return Ok(None);
                }
            }
        }
        let file = match self.active.take() {
            Some(active) if active.index == index => active.file,
            _ => open_segment(&self.dir, &path)?,
        };
        let len = file
            .metadata()
            .map_err(|e| AuditError::read(&path, e))?
            .len();
        let end = intact_end(&file, len).map_err(|e| AuditError::read(&path, e))?;
        let mut recovery = None;
        if end < len {
            let torn = read_range(&file, end, len).map_err(|e| AuditError::read(&path, e))?;
            file.set_len(end).map_err(|e| AuditError::write(&path, e))?;
            file.sync_data().map_err(|e| AuditError::sync(&path, e))?;
            let excerpt_len = torn.len().min(EXCERPT_BYTES);
            recovery = Some(Recovery {
                segment: file_name(&path),
                offset: end,
                torn_bytes: torn.len() as u64,
                torn_sha256: hex(ring::digest::digest(&ring::digest::SHA256, &torn).as_ref()),
                excerpt: String::from_utf8_lossy(&torn[..excerpt_len]).into_owned(),
                after_seq: 0,
            });
            tracing::warn!(
                path = %path.display(),
                offset = end,
                torn_bytes = torn.len(),
                "audit log ended in torn bytes (crash mid-write); cut them"
            );
        }
        let head = if end > 0 {
            head_of(&file, &path, end)?
        } else {
            // An empty segment (new, or rotated just before a crash): the head is the last
            // event of the newest earlier segment that has one.
            let mut head = Head::EMPTY;
            for (_, earlier) in segments.iter().rev().filter(|(i, _)| *i < index) {
                let f = File::open(earlier).map_err(|e| AuditError::read(earlier, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| AuditError::read(earlier, e))?
                    .len();
                if len > 0 {
                    head = head_of(&f, earlier, len)?;
                    break;
                }
            }
            head
        };
        if let Some(r) = &mut recovery {
            r.after_seq = head.seq;
        }
        let started = if end > 0 {
            first_ts(&file).unwrap_or_else(SystemTime::now)
        } else {
            SystemTime::now()
        };
        self.active = Some(Active {
            index,
            path,
            file,
            len: end,
            head,
            started,
        });
        Ok(recovery)
    }

    /// The chain head (valid after [`Store::observe`]).
    pub(crate) fn head(&self) -> Head {
        self.active.as_ref().map_or(Head::EMPTY, |a| a.head)
    }

    /// Length of the active segment as last seen.
    pub(crate) fn active_len(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.len)
    }

    /// When the active segment's first event was written.
    pub(crate) fn active_started(&self) -> SystemTime {
        self.active
            .as_ref()
            .map_or_else(SystemTime::now, |a| a.started)
    }

    /// Path of the active segment (for messages).
    pub(crate) fn active_path(&self) -> PathBuf {
        self.active
            .as_ref()
            .map_or_else(|| first_segment_path(&self.dir), |a| a.path.clone())
    }

    /// Under the lock: starts the next segment; later appends go there. The chain simply goes
    /// on: the first event of the new segment links to the last of the old one.
    pub(crate) fn rotate(&mut self) -> Result<(), AuditError> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let index = active.index + 1;
        let path = self.dir.join(segment_file_name(index));
        let file = match open_segment(&self.dir, &path) {
            Ok(file) => file,
            Err(e) => {
                self.active = Some(active);
                return Err(e);
            }
        };
        tracing::info!(from = %active.path.display(), to = %path.display(), "audit log rotated");
        self.active = Some(Active {
            index,
            path,
            file,
            len: 0,
            head: active.head,
            started: SystemTime::now(),
        });
        Ok(())
    }

    /// Under the lock, after [`Store::observe`]: appends complete lines with one `write_all`,
    /// then `fdatasync`; `head` is the chain head after them. When this returns `Ok`, the lines
    /// are on disk. If the write fails part-way, the file is cut back so no half line remains.
    pub(crate) fn append(&mut self, buf: &[u8], head: Head) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(active) = self.active.as_mut() else {
            return Err(AuditError::write(
                &first_segment_path(&self.dir),
                io::Error::other("segment not observed before append"),
            ));
        };
        if let Err(e) = (&active.file).write_all(buf) {
            if let Err(cut) = active.file.set_len(active.len) {
                tracing::error!(path = %active.path.display(), error = %cut, "cannot cut back a failed audit append");
            }
            return Err(AuditError::write(&active.path, e));
        }
        active
            .file
            .sync_data()
            .map_err(|e| AuditError::sync(&active.path, e))?;
        active.len += buf.len() as u64;
        active.head = head;
        Ok(())
    }
}

fn open_segment(dir: &Path, path: &Path) -> Result<File, AuditError> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true) // to read the head and look for a torn tail
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| AuditError::open(path, e))?;
    if !existed {
        // Make the new directory entry durable too, or a crash could lose a whole file whose
        // contents were synced.
        sync_dir(dir)?;
    }
    Ok(file)
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where the intact part of a segment of length `len` ends: after the last `\n`, and before any
/// trailing lines that hold NUL bytes (the writer never writes a NUL: JSON escapes it; a crash
/// of the machine can leave zero-filled blocks of a write that was never synced).
pub(crate) fn intact_end(file: &File, len: u64) -> io::Result<u64> {
    let mut end = match rfind_newline(file, len)? {
        Some(nl) => nl + 1,
        None => 0,
    };
    while end > 0 {
        let start = match rfind_newline(file, end - 1)? {
            Some(nl) => nl + 1,
            None => 0,
        };
        let line = read_range(file, start, end)?;
        if line.contains(&0) {
            end = start;
        } else {
            break;
        }
    }
    Ok(end)
}

/// Position of the last `\n` strictly before `before`.
fn rfind_newline(file: &File, before: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = before;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

fn read_range(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// The last complete line before `end` (which follows a `\n`), without its `\n`.
pub(crate) fn last_line(file: &File, end: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    if end == 0 {
        return Ok(None);
    }
    let start = match rfind_newline(file, end - 1)? {
        Some(nl) => nl + 1,
        None => 0,
    };
    let mut line = read_range(file, start, end)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some((start, line)))
}

/// The chain head at `end` of `file`: `seq` and `hash` of the last chained line. Lines after it
/// that carry no chain (junk appended behind the writers' backs, or lines from before the chain
/// existed) are stepped over: the chain continues from the last event it covers, and `verify`
/// reports the stray lines. A file with no chained line at all yields the empty head.
fn head_of(file: &File, path: &Path, end: u64) -> Result<Head, AuditError> {
    let mut end = end;
    while let Some((offset, line)) = last_line(file, end).map_err(|e| AuditError::read(path, e))? {
        let broken = |reason: String| AuditError::Chain {
            path: path.to_owned(),
            offset,
            reason,
        };
        if let Ok(view) = ChainView::parse(&line) {
            match (view.seq, view.hash.as_deref()) {
                (Some(seq), Some(hash)) => {
                    return match decode_hash(hash) {
                        Some(hash) => Ok(Head { seq, hash }),
                        None => Err(broken(format!(
                            "the last event's hash {hash:?} is not 64 hex digits; the chain cannot be continued; run `postern-audit verify`"
                        ))),
                    }
                }
                (None, None) => {}
                _ => {
                    return Err(broken(
                        "the last event has only one of seq and hash; the chain cannot be continued; run `postern-audit verify`".into(),
                    ))
                }
            }
        }
        tracing::warn!(path = %path.display(), offset, "audit log line without a chain; continuing the chain from the event before it");
        end = offset;
    }
    Ok(Head::EMPTY)
}

/// Time of the first event of a segment.
fn first_ts(file: &File) -> Option<SystemTime> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    let line = buf[..n].split(|&b| b == b'\n').next()?;
    let view = ChainView::parse(line).ok()?;
    humantime::parse_rfc3339_weak(&view.ts).ok()
}

/// Creates `dir` (and missing parents) with mode 0700. Returns whether it was created.
pub(crate) fn ensure_dir(dir: &Path) -> Result<bool, AuditError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(AuditError::create_dir(
                dir,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuditError::create_dir(dir, e)),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| AuditError::create_dir(dir, e))?;
    Ok(true)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::sync(dir, e))
}

/// Replaces `path` with `contents` atomically (temporary file, fsync, rename, fsync of the
/// directory), mode 0600.
pub(crate) fn write_atomic(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{}.tmp", file_name(path)));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_numerically() {
        assert_eq!(segment_file_name(1), "audit.jsonl");
        assert_eq!(segment_file_name(2), "audit.000002.jsonl");
        assert_eq!(segment_file_name(1_234_567), "audit.1234567.jsonl");
        for i in [1, 2, 99, 1_000_000, 1_234_567] {
            assert_eq!(parse_segment_name(&segment_file_name(i)), Some(i));
        }
        for bad in [
            "audit.lock",
            "audit.head",
            "audit.1.jsonl",
            "audit.000001.jsonl",
            "x.jsonl",
            "audit.00000a.jsonl",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        for i in [10, 2, 1, 1_000_000] {
            fs::write(tmp.path().join(segment_file_name(i)), b"").unwrap();
        }
        fs::write(tmp.path().join(LOCK_FILE), b"").unwrap();
        let names: Vec<String> = segment_paths(tmp.path())
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect();
        assert_eq!(
            names,
            [
                "audit.jsonl",
                "audit.000002.jsonl",
                "audit.000010.jsonl",
                "audit.1000000.jsonl"
            ]
        );
    }

    #[test]
    fn intact_end_cuts_the_incomplete_line_and_nul_lines_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let cases: [(&[u8], u64); 6] = [
            (b"", 0),
            (b"abc", 0),
            (b"a\nb\n", 4),
            (b"a\nb\npartial", 4),
            (b"a\n\0\0\0\n\0\0", 2),
            (b"a\nb\0c\nd\n", 8),
        ];
        for (content, want) in cases {
            fs::write(&path, content).unwrap();
            let f = File::open(&path).unwrap();
            assert_eq!(
                intact_end(&f, content.len() as u64).unwrap(),
                want,
                "{content:?}"
            );
        }
    }
}
