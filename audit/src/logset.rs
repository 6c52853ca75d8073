//! Several audit logs read together: one per gateway replica.
//!
//! Each gateway replica keeps its own hash chain in its own directory. `postern-audit` reads them
//! side by side: [`LogSet::open`] checks that no two directories are the same log (the same
//! directory reached by two paths, or a copy of a log: an identical first line) and that each
//! holds events, and gives each log a *replica label* for output. `Merged` streams the
//! events of all the logs as one, ordered by event time, holding one event per log (a k-way
//! merge), so reading several logs costs no more memory than reading one.
//!
//! With one directory nothing here changes how the log is read: no probe, no label, the same
//! errors as ever.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use ring::digest;

use crate::chain::ChainView;
use crate::error::AuditError;
use crate::event::Event;
use crate::reader::{parse_line, Entry, RawLine, RawLines, SegmentScan};

/// At most this many logs are read together (replica numbers are kept in 16 bits).
pub const MAX_LOGS: usize = 4096;
use crate::store::{first_segment_path, segment_paths};

/// How many lines at the start of a log are read to find its node id and key. The writer's
/// first event (`audit.started`, or `audit.recovered` just before it) names both.
const PROBE_LINES: usize = 1000;

/// One log of a [`LogSet`].
#[derive(Debug, Clone)]
pub struct LogInfo {
    /// The directory, as given.
    pub dir: PathBuf,
    /// What output shows for the events of this log when several are read: the node id if every
    /// log names a different one, else the directory's name (or its whole path, when two
    /// directories share a name). See [`LogSet::open`].
    pub label: String,
    /// The node id the log's writer names (`gateway` of its first event that has one).
    pub node: Option<String>,
    /// The audit public key (64 hex) its first events name (`audit.started` or a checkpoint).
    pub key: Option<String>,
    /// Why the log cannot be read (no log there, no event in it, an I/O error); `None` when it
    /// can. Kept rather than returned, so `verify` can still check the other logs.
    pub problem: Option<AuditError>,
    /// SHA-256 of its first complete line: identifies the chain.
    first_line: Option<[u8; 32]>,
}

/// The logs a command reads: one directory, or one per gateway replica.
#[derive(Debug, Clone)]
pub struct LogSet {
    logs: Vec<LogInfo>,
}

impl LogSet {
    /// One log, read exactly as the single-directory commands always read it (nothing is
    /// probed; a missing or empty log shows up when it is read).
    pub fn single(dir: &Path) -> LogSet {
        LogSet {
            logs: vec![LogInfo {
                dir: dir.to_owned(),
                label: dir_name(dir),
                node: None,
                key: None,
                problem: None,
                first_line: None,
            }],
        }
    }

    /// The logs in `dirs`, in this order. One directory is [`LogSet::single`]. With several,
    /// each log's start is read for its node id, key and first line:
    ///
    /// * two directories that are the same log are refused ([`AuditError::SameLog`]): the same
    ///   directory (same path, or the same directory through a link or a bind mount), or the
    ///   same chain (identical first line: a copy of a log beside the log);
    /// * a directory without a log, a log without a complete event, or one that cannot be read
    ///   is kept with its [`LogInfo::problem`] (see [`LogSet::check_readable`]);
    /// * labels: the node ids, when every log names one and no two are the same; otherwise the
    ///   directories' last components, when no two are the same; otherwise the paths as given.
    pub fn open(dirs: &[PathBuf]) -> Result<LogSet, AuditError> {
        if let [dir] = dirs {
            return Ok(LogSet::single(dir));
        }
        if dirs.len() > MAX_LOGS {
            return Err(AuditError::TooManyLogs {
                count: dirs.len(),
                max: MAX_LOGS,
            });
        }
        for (i, a) in dirs.iter().enumerate() {
            for b in &dirs[i + 1..] {
                if same_directory(a, b) {
                    return Err(AuditError::SameLog {
                        first: a.clone(),
                        second: b.clone(),
                        why: "the same directory".to_owned(),
                    });
                }
            }
        }
        let mut logs: Vec<LogInfo> = dirs
            .iter()
            .map(|dir| {
                let mut info = LogSet::single(dir).logs.remove(0);
                match probe(dir) {
                    Ok(p) => {
                        info.node = p.node;
                        info.key = p.key;
                        info.first_line = Some(p.first_line);
                    }
                    Err(e) => info.problem = Some(e),
                }
                info
            })
            .collect();
        for (i, a) in logs.iter().enumerate() {
            for b in &logs[i + 1..] {
                if a.first_line.is_some() && a.first_line == b.first_line {
                    return Err(AuditError::SameLog {
                        first: a.dir.clone(),
                        second: b.dir.clone(),
                        why: "the same chain: their first events are identical, so one is a copy of the other".to_owned(),
                    });
                }
            }
        }
        let nodes: Vec<Option<String>> = logs.iter().map(|l| l.node.clone()).collect();
        let names: Vec<Option<String>> = logs
            .iter()
            .map(|l| l.dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let labels: Vec<String> = if let Some(nodes) = all_distinct(&nodes) {
            nodes
        } else if let Some(names) = all_distinct(&names) {
            names
        } else {
            logs.iter().map(|l| l.dir.display().to_string()).collect()
        };
        for (log, label) in logs.iter_mut().zip(labels) {
            log.label = label;
        }
        Ok(LogSet { logs })
    }

    /// The logs, in the order given.
    pub fn logs(&self) -> &[LogInfo] {
        &self.logs
    }

    /// Whether several logs are read (and output says which log each row came from).
    pub fn is_merged(&self) -> bool {
        self.logs.len() > 1
    }

    /// The first log's problem, if any: reports need every log.
    pub fn check_readable(&self) -> Result<(), AuditError> {
        match self.logs.iter().find_map(|l| l.problem.clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The widest label, for table columns.
    pub fn label_width(&self) -> usize {
        self.logs
            .iter()
            .map(|l| l.label.chars().count())
            .max()
            .unwrap_or(0)
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The values, if every one is present, not empty and different from the others.
fn all_distinct(values: &[Option<String>]) -> Option<Vec<String>> {
    let values: Vec<String> = values
        .iter()
        .map(|v| v.clone().filter(|v| !v.is_empty()))
        .collect::<Option<_>>()?;
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort();
    sorted.dedup();
    (sorted.len() == values.len()).then_some(values)
}

/// Whether two paths name the same directory: the same file (device and inode, so links and
/// bind mounts are seen through), or, where one does not exist, the same path once `.` and `..`
/// are resolved.
fn same_directory(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    lexical(a) == lexical(b)
}

fn lexical(p: &Path) -> PathBuf {
    let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

struct Probe {
    node: Option<String>,
    key: Option<String>,
    first_line: [u8; 32],
}

/// Reads the start of the log in `dir`: its first complete line, node id and key.
fn probe(dir: &Path) -> Result<Probe, AuditError> {
    let paths = segment_paths(dir)?;
    if paths.is_empty() {
        return Err(AuditError::NoLog {
            dir: dir.to_owned(),
            expected: first_segment_path(dir),
        });
    }
    let mut lines = RawLines::from_paths(paths);
    let (mut first_line, mut node, mut key) = (None, None, None);
    let mut read = 0;
    while let Some(line) = lines.next() {
        let line = line?;
        if !line.complete || line.bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if first_line.is_none() {
            let mut d = [0u8; 32];
            d.copy_from_slice(digest::digest(&digest::SHA256, line.bytes).as_ref());
            first_line = Some(d);
        }
        if let Ok(view) = ChainView::parse(line.bytes) {
            if node.is_none() {
                node = view.gateway.filter(|g| !g.is_empty());
            }
            if key.is_none() {
                key = view.audit.and_then(|a| a.key);
            }
        }
        read += 1;
        if (node.is_some() && key.is_some()) || read >= PROBE_LINES {
            break;
        }
    }
    let Some(first_line) = first_line else {
        return Err(AuditError::EmptyLog {
            dir: dir.to_owned(),
        });
    };
    Ok(Probe {
        node,
        key,
        first_line,
    })
}

/// The time of an event's `ts`, if it is a valid RFC 3339 time.
pub(crate) fn parse_ts(ts: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(ts).ok()
}

/// What a report counted in one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// The log's directory.
    pub dir: PathBuf,
    /// Its replica label.
    pub label: String,
    /// Lines read.
    pub scanned: u64,
    /// Lines that are not valid events.
    pub bad_lines: u64,
    /// Whether it ends in an incomplete line (a crash or a write in progress).
    pub torn_tail: bool,
}

enum Lines {
    /// Every line.
    Plain(RawLines, u64),
    /// Only lines containing a needle.
    Scan(Box<SegmentScan>),
}

impl Lines {
    fn next(&mut self) -> Option<Result<RawLine<'_>, AuditError>> {
        match self {
            Lines::Plain(lines, read) => {
                let line = lines.next();
                if matches!(line, Some(Ok(_))) {
                    *read += 1;
                }
                line
            }
            Lines::Scan(scan) => scan.next(),
        }
    }

    fn read(&self) -> u64 {
        match self {
            Lines::Plain(_, read) => *read,
            Lines::Scan(scan) => scan.lines_read(),
        }
    }
}

/// The events of one log that a report wants, one at a time.
struct LogReader {
    lines: Lines,
    bad_lines: u64,
    torn_tail: bool,
    /// Time of the last event with a valid `ts`: an event without one keeps its place.
    clock: SystemTime,
}

/// What a merged stream holds of each event, made from the parsed line once: the whole
/// [`Entry`] (`search`, which prints the stored line) or only the event, boxed (`sessions`, which
/// keeps events in the rows it holds, and should not copy a large struct about on the way).
pub(crate) trait Payload: Sized {
    fn from_entry(entry: Entry) -> Self;
    fn event(&self) -> &Event;
}

impl Payload for Entry {
    fn from_entry(entry: Entry) -> Self {
        entry
    }
    fn event(&self) -> &Event {
        &self.event
    }
}

impl Payload for Box<Event> {
    fn from_entry(entry: Entry) -> Self {
        Box::new(entry.event)
    }
    fn event(&self) -> &Event {
        self
    }
}

/// An event of log number `log` of the set, with the time it is merged by.
pub(crate) struct Head<T> {
    pub(crate) log: usize,
    time: SystemTime,
    pub(crate) payload: T,
}

/// Which lines and events a report wants.
pub(crate) struct Want<'a> {
    /// With a needle (lowercase), only lines containing it (ASCII case ignored) are read, in
    /// large chunks; without, every line.
    pub(crate) needle: Option<Vec<u8>>,
    /// A cheap look at the raw line before it is parsed.
    pub(crate) line: Box<dyn Fn(&RawLine<'_>) -> bool + 'a>,
    /// Whether the parsed event is wanted.
    pub(crate) event: Box<dyn Fn(&Event) -> bool + 'a>,
}

/// The wanted events of every log of a set, as one stream ordered by event time.
///
/// A k-way merge: each log is read in its own order (by `seq`), and the next event out is the
/// earliest of the logs' next events, ties going to the log given first. Within one log the
/// order is never changed, so an event whose `ts` is earlier than the one before it in the same
/// log (queued, then written after later ones) comes out after it. An event without a valid `ts`
/// keeps its place in its log. With one log, the stream is that log in order.
pub(crate) struct Merged<'a, T> {
    readers: Vec<LogReader>,
    heads: Vec<Option<Head<T>>>,
    /// Slots whose event was handed out (or not read yet): read the next when asked.
    refill: Vec<bool>,
    want: Want<'a>,
}

impl<'a, T: Payload> Merged<'a, T> {
    /// Opens every log of `set`. Fails with the first log's problem, or if a log has no segment.
    pub(crate) fn open(set: &LogSet, want: Want<'a>) -> Result<Merged<'a, T>, AuditError> {
        set.check_readable()?;
        let mut readers = Vec::with_capacity(set.logs.len());
        for log in &set.logs {
            let paths = segment_paths(&log.dir)?;
            if paths.is_empty() {
                return Err(AuditError::NoLog {
                    dir: log.dir.clone(),
                    expected: first_segment_path(&log.dir),
                });
            }
            let lines = match &want.needle {
                Some(needle) => Lines::Scan(Box::new(SegmentScan::new(paths, needle.clone()))),
                None => Lines::Plain(RawLines::from_paths(paths), 0),
            };
            readers.push(LogReader {
                lines,
                bad_lines: 0,
                torn_tail: false,
                clock: SystemTime::UNIX_EPOCH,
            });
        }
        let n = readers.len();
        Ok(Merged {
            readers,
            heads: (0..n).map(|_| None).collect(),
            refill: vec![true; n],
            want,
        })
    }

    /// Which slot holds the next wanted event of any log, earliest first; it is read anew at
    /// the next call. Lines that are not valid events are counted and passed to `bad`; an I/O
    /// error ends the stream.
    fn advance(&mut self, bad: &mut dyn FnMut(&AuditError)) -> Result<Option<usize>, AuditError> {
        let merging = self.readers.len() > 1;
        for i in 0..self.readers.len() {
            if self.refill[i] {
                self.refill[i] = false;
                self.heads[i] = next_wanted(&mut self.readers[i], i, merging, &self.want, bad)?;
            }
        }
        let best = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (h.time, i)))
            .min();
        Ok(best.map(|(_, i)| {
            self.refill[i] = true;
            i
        }))
    }

    /// The next wanted event, lent until the next call (nothing is copied).
    pub(crate) fn next(
        &mut self,
        bad: &mut dyn FnMut(&AuditError),
    ) -> Result<Option<&Head<T>>, AuditError> {
        Ok(match self.advance(bad)? {
            Some(i) => self.heads[i].as_ref(),
            None => None,
        })
    }

    /// The next wanted event, to keep.
    pub(crate) fn next_owned(
        &mut self,
        bad: &mut dyn FnMut(&AuditError),
    ) -> Result<Option<Head<T>>, AuditError> {
        Ok(match self.advance(bad)? {
            Some(i) => self.heads[i].take(),
            None => None,
        })
    }

    /// What was counted in each log of `set` (the set the stream was opened on).
    pub(crate) fn counts(&self, set: &LogSet) -> Vec<LogCounts> {
        set.logs
            .iter()
            .zip(&self.readers)
            .map(|(log, r)| LogCounts {
                dir: log.dir.clone(),
                label: log.label.clone(),
                scanned: r.lines.read(),
                bad_lines: r.bad_lines,
                torn_tail: r.torn_tail,
            })
            .collect()
    }
}

fn next_wanted<T: Payload>(
    reader: &mut LogReader,
    log: usize,
    merging: bool,
    want: &Want<'_>,
    bad: &mut dyn FnMut(&AuditError),
) -> Result<Option<Head<T>>, AuditError> {
    loop {
        let line = match reader.lines.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(e),
            Some(Ok(line)) => line,
        };
        if !line.complete && line.last_segment {
            reader.torn_tail = true;
            continue;
        }
        if !(want.line)(&line) {
            continue;
        }
        let entry = match parse_line(&line) {
            Ok(entry) => entry,
            Err(e) => {
                reader.bad_lines += 1;
                bad(&e);
                continue;
            }
        };
        if !(want.event)(&entry.event) {
            continue;
        }
        let payload = T::from_entry(entry);
        // One log needs no time: its order is its own (and a big export parses no time).
        let time = if merging {
            parse_ts(&payload.event().ts).unwrap_or(reader.clock)
        } else {
            reader.clock
        };
        reader.clock = time;
        return Ok(Some(Head { log, time, payload }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_node_ids_else_directory_names() {
        assert_eq!(
            all_distinct(&[Some("gw-a".into()), Some("gw-b".into())]),
            Some(vec!["gw-a".to_owned(), "gw-b".to_owned()])
        );
        assert_eq!(
            all_distinct(&[Some("gw-a".into()), Some("gw-a".into())]),
            None
        );
        assert_eq!(all_distinct(&[Some("gw-a".into()), None]), None);
        assert_eq!(
            all_distinct(&[Some("gw-a".into()), Some(String::new())]),
            None
        );
    }

    fn merged_order(logs: &LogSet) -> Vec<(usize, String)> {
        let mut merged: Merged<'_, Entry> = Merged::open(
            logs,
            Want {
                needle: None,
                line: Box::new(|_| true),
                event: Box::new(|e| e.session_id.is_some()),
            },
        )
        .unwrap();
        let mut out = Vec::new();
        while let Some(head) = merged.next(&mut |e| panic!("{e}")).unwrap() {
            out.push((head.log, head.payload.event.session_id.clone().unwrap()));
        }
        out
    }

    #[test]
    fn the_merge_orders_by_time_and_keeps_each_logs_own_order() {
        use crate::event::EventType;
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, events: &[(&str, &str)]| {
            let dir = tmp.path().join(name);
            for (ts, id) in events {
                let e = Event {
                    ts: (*ts).to_owned(),
                    session_id: Some((*id).to_owned()),
                    gateway: Some(format!("gw-{name}")),
                    ..Event::new(EventType::SessionStart)
                };
                crate::store::append_sync(&dir, &e).unwrap();
            }
            dir
        };
        // x steps back in time once (a queued event written late) and has one event without a
        // valid time; y is in order.
        let x = write(
            "x",
            &[
                ("2025-03-01T10:00:00.000000Z", "x1"),
                ("2025-03-01T09:00:00.000000Z", "x2"),
                ("not a time", "x3"),
                ("2025-03-01T11:00:00.000000Z", "x4"),
            ],
        );
        let y = write(
            "y",
            &[
                ("2025-03-01T09:30:00.000000Z", "y1"),
                ("2025-03-01T10:00:00.000000Z", "y2"),
                ("2025-03-01T10:30:00.000000Z", "y3"),
            ],
        );
        let logs = LogSet::open(&[x.clone(), y.clone()]).unwrap();
        let labels: Vec<&str> = logs.logs().iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["gw-x", "gw-y"]);
        let order: Vec<String> = merged_order(&logs).into_iter().map(|(_, id)| id).collect();
        // y1 (09:30) before x1 (10:00); x1 and y2 tie at 10:00: x, given first, goes first;
        // x2 (09:00) stays after x1, and x3 (no time) keeps its place after x2, so both come
        // before y2; then y3 (10:30), x4 (11:00).
        assert_eq!(order, ["y1", "x1", "x2", "x3", "y2", "y3", "x4"]);
        // The other way round, the tie goes to y.
        let logs = LogSet::open(&[y, x.clone()]).unwrap();
        let order: Vec<String> = merged_order(&logs).into_iter().map(|(_, id)| id).collect();
        assert_eq!(order, ["y1", "y2", "x1", "x2", "x3", "y3", "x4"]);
        // One log: its own order, whatever the times.
        let order: Vec<String> = merged_order(&LogSet::single(&x))
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(order, ["x1", "x2", "x3", "x4"]);
    }

    #[test]
    fn lexical_paths_resolve_dots() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert!(same_directory(
            Path::new("/no/such/dir"),
            Path::new("/no/such/./other/../dir")
        ));
        assert!(!same_directory(
            Path::new("/no/such/a"),
            Path::new("/no/such/b")
        ));
    }
}
