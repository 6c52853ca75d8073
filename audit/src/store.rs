//! On-disk layout and the one locked append every writer goes through.
//!
//! Both the gateway's background writer ([`crate::AuditLog`]) and one-shot CLI appends
//! ([`crate::append_sync`]) call [`Segment::append`], so there is exactly one place that decides
//! how bytes reach the file: exclusive `flock`, one `write_all` on an `O_APPEND` descriptor,
//! `fdatasync`, unlock. The hash chain and rotation will hook in here, under the same lock.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::AuditError;
use crate::event::Event;

/// File name of the first (today: the only) segment.
pub const FIRST_SEGMENT: &str = "audit.jsonl";

/// Permissions of a log directory this crate creates.
const DIR_MODE: u32 = 0o700;
/// Permissions of a segment file this crate creates.
const FILE_MODE: u32 = 0o600;

/// Path of the first segment of the log in `dir`.
pub fn first_segment_path(dir: &Path) -> PathBuf {
    dir.join(FIRST_SEGMENT)
}

/// The segment new events are appended to. Only one segment exists until rotation arrives.
fn active_segment_path(dir: &Path) -> PathBuf {
    first_segment_path(dir)
}

/// The segments of the log in `dir` that exist, oldest first. Empty if there is no log.
pub fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let first = first_segment_path(dir);
    match fs::metadata(&first) {
        Ok(_) => Ok(vec![first]),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AuditError::read(&first, e)),
    }
}

/// Appends one event to the log in `dir` and returns once it is on disk: take the lock, write
/// one line, `fdatasync`. For short-lived processes (admin CLI commands) that have no
/// [`crate::AuditLog`]; safe to use while a gateway's writer appends to the same log.
pub fn append_sync(dir: &Path, event: &Event) -> Result<(), AuditError> {
    let mut line = Vec::with_capacity(512);
    encode_line(event, &mut line)?;
    Segment::open(dir)?.append(&line)
}

/// Appends `event` as one JSON line (with its `\n`) to `buf`. On error `buf` is left unchanged.
pub(crate) fn encode_line(event: &Event, buf: &mut Vec<u8>) -> Result<(), AuditError> {
    let start = buf.len();
    match serde_json::to_writer(&mut *buf, event) {
        Ok(()) => {
            buf.push(b'\n');
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(AuditError::Encode {
                kind: event.kind.clone(),
                reason: e.to_string(),
            })
        }
    }
}

/// An open segment file, ready for appends.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
}

impl Segment {
    /// Opens the active segment of `dir` for appending, creating the directory (0700) and the
    /// file (0600) if missing. Modes of existing directories and files are left alone.
    pub(crate) fn open(dir: &Path) -> Result<Segment, AuditError> {
        let created_dir = ensure_dir(dir)?;
        let path = active_segment_path(dir);
        let file = OpenOptions::new()
            .read(true) // to look at the last byte before appending (see `append`)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| AuditError::open(&path, e))?;
        // Make the new directory entries durable too, or a crash could lose a whole file whose
        // contents were synced. Cheap, and done once per open.
        sync_dir(dir)?;
        if created_dir {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(Segment { path, file })
    }

    /// Path of this segment.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `buf` (complete lines) with one `write_all` under an exclusive lock, then
    /// `fdatasync`. When this returns `Ok`, the lines are on disk.
    ///
    /// If the file does not end in `\n` (a torn line left by a crash), a `\n` is written first
    /// so the new lines stay intact; the torn line stays visible to readers. If the write fails
    /// part-way, the file is cut back to its previous length so no half line remains.
    pub(crate) fn append(&self, buf: &[u8]) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        let _lock = Locked::new(&self.file, &self.path)?;
        let len = self
            .file
            .metadata()
            .map_err(|e| AuditError::write(&self.path, e))?
            .len();
        let torn_tail = len > 0 && {
            let mut last = [0u8; 1];
            self.file
                .read_at(&mut last, len - 1)
                .map_err(|e| AuditError::write(&self.path, e))?;
            last[0] != b'\n'
        };
        let written = if torn_tail {
            tracing::warn!(path = %self.path.display(), "audit log ends in a torn line; terminating it before appending");
            let mut fixed = Vec::with_capacity(buf.len() + 1);
            fixed.push(b'\n');
            fixed.extend_from_slice(buf);
            (&self.file).write_all(&fixed)
        } else {
            (&self.file).write_all(buf)
        };
        if let Err(e) = written {
            if let Err(cut) = self.file.set_len(len) {
                tracing::error!(path = %self.path.display(), error = %cut, "cannot cut back a failed audit append");
            }
            return Err(AuditError::write(&self.path, e));
        }
        self.file
            .sync_data()
            .map_err(|e| AuditError::sync(&self.path, e))
    }
}

/// Holds the exclusive advisory lock of a segment; unlocks when dropped.
struct Locked<'a>(&'a File);

impl<'a> Locked<'a> {
    fn new(file: &'a File, path: &Path) -> Result<Locked<'a>, AuditError> {
        file.lock().map_err(|e| AuditError::lock(path, e))?;
        Ok(Locked(file))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Closing the descriptor would release the lock anyway; nothing useful to do on error.
        let _ = self.0.unlock();
    }
}

/// Creates `dir` (and missing parents) with mode 0700. Returns whether it was created.
fn ensure_dir(dir: &Path) -> Result<bool, AuditError> {
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

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::sync(dir, e))
}
