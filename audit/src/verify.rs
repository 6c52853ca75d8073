//! `postern-audit verify`: proves a log was not edited, reordered, cut or extended with forged
//! checkpoints, by recomputing every link of the chain and checking every checkpoint signature.
//!
//! It streams: memory does not grow with the log (only checkpoints are remembered, to match
//! witnesses). Checks, line by line:
//!
//! 1. the line is a JSON event ending in `,"hash":"<64 hex>"}`;
//! 2. `seq` is one more than the previous event's (the first is 1): a gap means events were
//!    removed, a step back means they were reordered or repeated;
//! 3. `prev` is the previous event's hash (64 zeros for the first);
//! 4. `hash` = SHA-256(previous hash || canonical bytes): otherwise the line was edited;
//! 5. an `audit.checkpoint` carries a valid Ed25519 signature by the audit key (the one given
//!    with `--pubkey`, else the one the log names: trust on first use, reported as such).
//!
//! and at the end: the log reaches every checkpoint that `audit.head` and the given witnesses
//! name, with the same hash (otherwise its tail was cut or rewritten), and `audit.head` is not
//! the unsigned placeholder beside two or more signed checkpoints (it was replaced). An
//! `audit.truncation_detected` event (a cut a writer was told to accept) is a problem too: the
//! log is known to be incomplete.
//!
//! After a problem the verifier re-synchronises on the line's own claims and goes on, so one
//! edit is one problem and the rest of the log is still checked.
//!
//! Several logs (one per gateway replica, [`verify_logs`]) are each verified on their own, as
//! the separate chains they are: their own links, checkpoints, key, `audit.head` and witnesses.
//! Nothing links one replica's chain to another's, so a whole log left out is not something
//! verify can see; the auditor names the replicas' logs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::chain::{chain_hash, checkpoint_message, split_hashed_line, ChainView, GENESIS};
use crate::error::AuditError;
use crate::event::EventType;
use crate::hexfmt::{decode_hex, hex};
use crate::key::AuditPublicKey;
use crate::logset::LogSet;
use crate::reader::RawLines;
use crate::store::{segment_paths, HEAD_FILE};
use crate::witness::Witness;

/// What to check beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The trusted audit public key. Without it, checkpoints are checked against the key the
    /// log itself names (which proves consistency, not origin).
    pub pubkey: Option<AuditPublicKey>,
    /// Checkpoints held by an outside witness; the log must contain each of them.
    pub witnesses: Vec<Witness>,
    /// Require the log to end with a closing checkpoint (for archived logs).
    pub require_closed: bool,
    /// Keep at most this many problems in the report (all are counted). 0 means 20.
    pub max_problems: usize,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `seq` of the broken event: the one on the line if readable, else the one expected there.
    pub seq: Option<u64>,
    /// Segment file (empty for problems about the log as a whole).
    pub segment: PathBuf,
    /// Byte offset of the line in the segment.
    pub offset: u64,
    /// 1-based line number in the segment.
    pub line: u64,
    /// What is wrong, in words.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segment.as_os_str().is_empty() {
            return f.write_str(&self.what);
        }
        match self.seq {
            Some(seq) => write!(f, "seq {seq}")?,
            None => f.write_str("seq ?")?,
        }
        write!(
            f,
            " at {} offset {} (line {}): {}",
            self.segment.display(),
            self.offset,
            self.line,
            self.what
        )
    }
}

/// Where the key used for signatures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `--pubkey`.
    Given,
    /// Named in the log (first `audit.started` or checkpoint): trust on first use.
    FromLog,
    /// No key anywhere: no checkpoints to check.
    None,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Segments read.
    pub segments: usize,
    /// Chained events checked.
    pub events: u64,
    /// Lines from before the chain existed (no `seq`/`hash`) at the start of the log: readable
    /// but not protected.
    pub legacy_events: u64,
    /// `seq` and `hash` of the last event.
    pub last_seq: u64,
    pub last_hash: String,
    /// Checkpoints whose signature was checked and valid.
    pub checkpoints: u64,
    /// The last checkpoint in the log.
    pub last_checkpoint: Option<Witness>,
    /// Events after the last checkpoint (not covered by a signature yet).
    pub unsigned_tail: u64,
    /// The key checkpoints were checked against.
    pub key: Option<AuditPublicKey>,
    pub key_source: KeySource,
    /// An incomplete last line (segment, offset, bytes): a crash mid-write not yet recovered,
    /// or a write in progress. Not tampering by itself.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Whether `audit.head` was found and checked.
    pub head_checked: bool,
    /// Witness lines checked.
    pub witnesses_checked: usize,
    /// The first problems found (at most `max_problems`).
    pub problems: Vec<Problem>,
    /// All problems found.
    pub problem_count: u64,
}

impl VerifyReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    /// The first broken event.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

/// Verifies the log in `dir` (and its `audit.head`). `Err` only if there is no log or it cannot
/// be read; a log that fails verification is an `Ok` report with problems.
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let paths = segment_paths(dir)?;
    let mut lines = RawLines::open(dir)?;
    let mut v = Verifier::new(options);
    v.report.segments = paths.len();
    while let Some(line) = lines.next() {
        let line = line?;
        v.line(
            line.path,
            line.line,
            line.offset,
            line.bytes,
            line.complete,
            line.last_segment,
        );
    }
    let head_path = dir.join(HEAD_FILE);
    let head = match std::fs::read_to_string(&head_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(AuditError::read(&head_path, e)),
    };
    Ok(v.finish(head.as_deref()))
}

/// What to check in each of several logs ([`verify_logs`]).
#[derive(Debug, Clone, Default)]
pub struct LogsVerifyOptions {
    /// Trusted audit keys: none (each log is checked against the key it names itself: trust on
    /// first use), one (every log must be signed with it: replicas sharing a key), or one per
    /// log, in the order of the logs.
    pub pubkeys: Vec<AuditPublicKey>,
    /// Checkpoints held by an outside witness, of any of the logs. Each is checked against the
    /// log it belongs to: the one whose node id it names, or, when node ids do not tell (they
    /// repeat, or the log names none), the one whose key it names.
    pub witnesses: Vec<Witness>,
    /// Require every log to end with a closing checkpoint.
    pub require_closed: bool,
    /// Keep at most this many problems per log (all are counted). 0 means 20.
    pub max_problems: usize,
}

/// The outcome of verifying one log of a set.
#[derive(Debug)]
pub struct LogVerdict {
    /// The log's directory, as given.
    pub dir: PathBuf,
    /// Its replica label (see [`LogSet::open`]).
    pub label: String,
    /// Its node id, if it names one.
    pub node: Option<String>,
    /// Witness lines that were matched to it (and checked as part of `result`).
    pub witnesses: usize,
    /// The report, or why the log could not be checked (no log, no event, unreadable).
    pub result: Result<VerifyReport, AuditError>,
}

/// Verifies every log of `logs` on its own (see [`LogsVerifyOptions`]), in order. `Err` only
/// when the options do not fit the logs (a number of keys that is neither one nor one per log;
/// a witness line that matches none, or more than one, of the logs); a log that cannot be read
/// is a verdict with an `Err` result, and the others are still verified.
pub fn verify_logs(
    logs: &LogSet,
    options: &LogsVerifyOptions,
) -> Result<Vec<LogVerdict>, AuditError> {
    let n = logs.logs().len();
    let key_of = |i: usize| -> Option<AuditPublicKey> {
        match options.pubkeys.len() {
            0 => None,
            1 => options.pubkeys.first().copied(),
            _ => options.pubkeys.get(i).copied(),
        }
    };
    if options.pubkeys.len() > 1 && options.pubkeys.len() != n {
        return Err(AuditError::Key {
            path: None,
            reason: format!(
                "{} public keys given for {n} logs: give one for every log, or one per log in the order of the logs",
                options.pubkeys.len()
            ),
        });
    }
    let mut witnesses: Vec<Vec<Witness>> = vec![Vec::new(); n];
    for w in &options.witnesses {
        let i = if n == 1 {
            0
        } else {
            witness_log(logs, w, &key_of)?
        };
        witnesses[i].push(w.clone());
    }
    Ok(logs
        .logs()
        .iter()
        .zip(witnesses)
        .enumerate()
        .map(|(i, (log, witnesses))| {
            let count = witnesses.len();
            let result = match &log.problem {
                Some(problem) => Err(problem.clone()),
                None => verify(
                    &log.dir,
                    &VerifyOptions {
                        pubkey: key_of(i),
                        witnesses,
                        require_closed: options.require_closed,
                        max_problems: options.max_problems,
                    },
                ),
            };
            LogVerdict {
                dir: log.dir.clone(),
                label: log.label.clone(),
                node: log.node.clone(),
                witnesses: count,
                result,
            }
        })
        .collect())
}

/// The one log of `logs` that witness `w` belongs to: by node id, else by key.
fn witness_log(
    logs: &LogSet,
    w: &Witness,
    key_of: &dyn Fn(usize) -> Option<AuditPublicKey>,
) -> Result<usize, AuditError> {
    let by_node: Vec<usize> = logs
        .logs()
        .iter()
        .enumerate()
        .filter(|(_, l)| !w.node.is_empty() && l.node.as_deref() == Some(w.node.as_str()))
        .map(|(i, _)| i)
        .collect();
    if let [i] = by_node[..] {
        return Ok(i);
    }
    let pool: Vec<usize> = if by_node.is_empty() {
        (0..logs.logs().len()).collect()
    } else {
        by_node
    };
    let wanted = AuditPublicKey::from_hex(&w.key);
    let by_key: Vec<usize> = pool
        .into_iter()
        .filter(|&i| {
            let key = key_of(i).or_else(|| {
                logs.logs()[i]
                    .key
                    .as_deref()
                    .and_then(AuditPublicKey::from_hex)
            });
            wanted.is_some() && key == wanted
        })
        .collect();
    match by_key[..] {
        [i] => Ok(i),
        [] => Err(AuditError::Witness {
            reason: format!(
                "the checkpoint of node {:?} at seq {} (key {}) belongs to none of the logs given (no log names that node, or its key)",
                w.node, w.seq, w.key
            ),
        }),
        _ => Err(AuditError::Witness {
            reason: format!(
                "the checkpoint of node {:?} at seq {} (key {}) could belong to {} of the logs given (same node id and key): verify them one at a time",
                w.node,
                w.seq,
                w.key,
                by_key.len()
            ),
        }),
    }
}

/// Verifies segments held in memory (oldest first), with the contents of `audit.head` if any.
/// The same checks as [`verify`]; for fuzzing and for tools that fetch logs themselves.
pub fn verify_bytes(
    segments: &[&[u8]],
    head: Option<&str>,
    options: &VerifyOptions,
) -> VerifyReport {
    let mut v = Verifier::new(options);
    v.report.segments = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        let path = PathBuf::from(crate::store::segment_file_name(i as u32 + 1));
        let last = i + 1 == segments.len();
        let mut offset = 0u64;
        for (n, chunk) in segment.split_inclusive(|&b| b == b'\n').enumerate() {
            let complete = chunk.last() == Some(&b'\n');
            let bytes = if complete {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            v.line(&path, n as u64 + 1, offset, bytes, complete, last);
            offset += chunk.len() as u64;
        }
    }
    v.finish(head)
}

struct Verifier<'o> {
    options: &'o VerifyOptions,
    report: VerifyReport,
    head: [u8; 32],
    chain_started: bool,
    /// seq → hash of every checkpoint seen.
    checkpoints: HashMap<u64, String>,
    /// Whether the last event was a closing checkpoint.
    closed: bool,
}

impl<'o> Verifier<'o> {
    fn new(options: &'o VerifyOptions) -> Verifier<'o> {
        Verifier {
            options,
            report: VerifyReport {
                segments: 0,
                events: 0,
                legacy_events: 0,
                last_seq: 0,
                last_hash: hex(&GENESIS),
                checkpoints: 0,
                last_checkpoint: None,
                unsigned_tail: 0,
                key: options.pubkey,
                key_source: if options.pubkey.is_some() {
                    KeySource::Given
                } else {
                    KeySource::None
                },
                torn_tail: None,
                head_checked: false,
                witnesses_checked: 0,
                problems: Vec::new(),
                problem_count: 0,
            },
            head: GENESIS,
            chain_started: false,
            checkpoints: HashMap::new(),
            closed: false,
        }
    }

    fn problem(&mut self, seq: Option<u64>, path: &Path, line: u64, offset: u64, what: String) {
        self.report.problem_count += 1;
        let max = if self.options.max_problems == 0 {
            20
        } else {
            self.options.max_problems
        };
        if self.report.problems.len() < max {
            self.report.problems.push(Problem {
                seq,
                segment: path.to_owned(),
                offset,
                line,
                what,
            });
        }
    }

    fn log_problem(&mut self, what: String) {
        self.problem(None, Path::new(""), 0, 0, what);
    }

    fn line(
        &mut self,
        path: &Path,
        line_no: u64,
        offset: u64,
        bytes: &[u8],
        complete: bool,
        last_segment: bool,
    ) {
        let expected = self.report.last_seq + 1;
        if !complete {
            if last_segment {
                self.report.torn_tail = Some((path.to_owned(), offset, bytes.len() as u64));
            } else {
                self.problem(
                    Some(expected),
                    path,
                    line_no,
                    offset,
                    "incomplete line at the end of a segment that is not the last one".into(),
                );
            }
            return;
        }
        let view = match ChainView::parse(bytes) {
            Ok(view) => view,
            Err(e) => {
                let what = if bytes.iter().all(u8::is_ascii_whitespace) {
                    "empty line".to_owned()
                } else {
                    format!("not a valid event: {e}")
                };
                self.problem(Some(expected), path, line_no, offset, what);
                self.closed = false;
                return;
            }
        };
        let Some(claimed_hex) = view.hash.as_deref() else {
            if !self.chain_started && view.seq.is_none() && view.prev.is_none() {
                self.report.legacy_events += 1;
            } else {
                self.problem(view.seq.or(Some(expected)), path, line_no, offset, "event without a hash inside the chain (inserted, or written by something other than the audit writer)".into());
            }
            return;
        };
        self.chain_started = true;
        self.closed = false;
        let mut wrong = Vec::new();
        let Some((body, claimed)) = split_hashed_line(bytes) else {
            self.problem(view.seq.or(Some(expected)), path, line_no, offset, "the hash member is not the last member of the line, or is not 64 lowercase hex digits".into());
            return;
        };
        if hex(&claimed) != claimed_hex {
            wrong.push("the line holds two different hashes".to_owned());
        }
        match view.seq {
            Some(seq) if seq == expected => {}
            Some(seq) if seq > expected => wrong.push(format!(
                "seq {seq} follows seq {}: {} event(s) missing",
                expected - 1,
                seq - expected
            )),
            Some(seq) => wrong.push(format!(
                "seq {seq} follows seq {}: events reordered or repeated",
                expected - 1
            )),
            None => wrong.push("no seq".to_owned()),
        }
        if view.prev.as_deref() != Some(hex(&self.head).as_str()) {
            wrong.push("prev is not the hash of the event before it (an event was removed, reordered or edited before it)".to_owned());
        }
        let computed = chain_hash(&self.head, body, b"}");
        if computed != claimed {
            wrong.push("hash does not match the line's contents: the line was edited".to_owned());
        }
        let seq = view.seq.unwrap_or(expected);
        self.report.events += 1;
        self.report.unsigned_tail += 1;
        if view.kind == EventType::AuditCheckpoint.as_str() {
            // Remembered even if its signature fails, so witnesses are compared by hash.
            self.checkpoints.insert(seq, claimed_hex.to_owned());
            match self.check_checkpoint(&view, seq) {
                Ok(witness) => {
                    if wrong.is_empty() {
                        self.report.checkpoints += 1;
                        self.report.unsigned_tail = 0;
                        self.closed = witness.reason == "close";
                    }
                    self.report.last_checkpoint = Some(witness);
                }
                Err(what) => wrong.push(what),
            }
        } else if view.kind == EventType::AuditStarted.as_str() {
            self.adopt_key(view.audit.as_ref().and_then(|a| a.key.as_deref()));
        } else if view.kind == EventType::AuditTruncationDetected.as_str() {
            // An intact record of a loss is still a loss: the log is not complete.
            let what = view.detail.as_deref().unwrap_or("no detail");
            wrong.push(format!(
                "audit.truncation_detected: a writer found the log cut short and was told to go on; events before this one were lost: {what}"
            ));
        }
        if !wrong.is_empty() {
            self.problem(Some(seq), path, line_no, offset, wrong.join("; "));
        }
        // Re-synchronise on what the line claims, so later lines are judged on their own.
        self.head = claimed;
        self.report.last_seq = seq;
        self.report.last_hash = claimed_hex.to_owned();
    }

    /// Trust on first use: without `--pubkey`, the first key the log names is the key.
    fn adopt_key(&mut self, key: Option<&str>) {
        if self.report.key.is_none() {
            if let Some(key) = key.and_then(AuditPublicKey::from_hex) {
                self.report.key = Some(key);
                self.report.key_source = KeySource::FromLog;
            }
        }
    }

    fn check_checkpoint(&mut self, view: &ChainView, seq: u64) -> Result<Witness, String> {
        let audit = view.audit.clone().unwrap_or_default();
        let (Some(reason), Some(key_hex), Some(sig_hex), Some(prev), Some(hash)) = (
            audit.reason,
            audit.key,
            audit.sig,
            view.prev.clone(),
            view.hash.clone(),
        ) else {
            return Err("checkpoint lacks its reason, key or signature".to_owned());
        };
        self.adopt_key(Some(&key_hex));
        let witness = Witness {
            format: crate::witness::WITNESS_FORMAT.to_owned(),
            seq,
            ts: view.ts.clone(),
            node: view.gateway.clone().unwrap_or_default(),
            reason,
            prev,
            hash,
            key: key_hex.clone(),
            sig: sig_hex.clone(),
        };
        let Some(trusted) = self.report.key else {
            return Err("checkpoint names no valid public key".to_owned());
        };
        if AuditPublicKey::from_hex(&key_hex) != Some(trusted) {
            return Err(format!(
                "checkpoint names key {key_hex}, but the audit key is {}",
                trusted.to_hex()
            ));
        }
        let message = checkpoint_message(
            seq,
            &witness.prev,
            &witness.ts,
            &witness.node,
            &witness.reason,
        );
        let valid = decode_hex(&sig_hex).is_some_and(|sig| trusted.verify(&message, &sig));
        if !valid {
            return Err("checkpoint signature is not valid for the audit key (forged, or the checkpoint was edited)".to_owned());
        }
        Ok(witness)
    }

    /// Checks that the log reaches `w` with the same hash.
    fn check_witness(&mut self, w: &Witness, what: &str) {
        if w.seq == 0 && w.reason == "none" {
            // The placeholder written before the first checkpoint: nothing to hold the log to.
            // Beside two or more signed checkpoints it cannot be genuine (the head is replaced
            // after every checkpoint; a crash can leave it one checkpoint behind, no more).
            let count = self.checkpoints.len();
            if count >= 2 {
                let last = self.checkpoints.keys().max().copied().unwrap_or(0);
                self.log_problem(format!(
                    "{what} is the unsigned placeholder, although the log has {count} signed checkpoints (the last at seq {last}): {what} was replaced, and events may have been removed from the end of the log (truncated)"
                ));
            }
            return;
        }
        if let Some(key) = self.report.key {
            if !w.signature_valid(&key) {
                self.log_problem(format!(
                    "{what}: its signature is not valid for the audit key {}",
                    key.to_hex()
                ));
                return;
            }
        }
        if w.seq > self.report.last_seq {
            self.log_problem(format!(
                "{what} names checkpoint seq {} ({}), but the log ends at seq {}: the log was cut short (truncated)",
                w.seq, w.ts, self.report.last_seq
            ));
            return;
        }
        match self.checkpoints.get(&w.seq) {
            Some(hash) if *hash == w.hash => {}
            Some(hash) => self.log_problem(format!(
                "{what} names checkpoint seq {} with hash {}, but the log's checkpoint there has hash {hash}: the log was rewritten",
                w.seq, w.hash
            )),
            None => self.log_problem(format!(
                "{what} names checkpoint seq {}, but the log has no checkpoint there: the log was rewritten",
                w.seq
            )),
        }
    }

    fn finish(mut self, head: Option<&str>) -> VerifyReport {
        match head {
            Some(text) => match Witness::parse(text) {
                Ok(w) => {
                    self.report.head_checked = true;
                    self.check_witness(&w, "audit.head");
                }
                Err(e) => self.log_problem(format!("audit.head is not a checkpoint line: {e}")),
            },
            None if !self.checkpoints.is_empty() => self.log_problem(
                "audit.head is missing although the log has signed checkpoints (deleted?); cannot tell whether the tail was cut".to_owned(),
            ),
            None => {}
        }
        let witnesses = self.options.witnesses.clone();
        for (i, w) in witnesses.iter().enumerate() {
            self.check_witness(w, &format!("witness {}", i + 1));
            self.report.witnesses_checked += 1;
        }
        if self.options.require_closed && !self.closed {
            self.log_problem(
                "the log does not end with a closing checkpoint (writer still running, crashed, or the tail was cut)".to_owned(),
            );
        }
        self.report
    }
}
