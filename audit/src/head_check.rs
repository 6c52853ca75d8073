//! What a writer checks when it opens a log: does the log still reach the checkpoint that
//! `audit.head` names, with the same hash?
//!
//! Without this check a log cut at its end (and a writer restarted on it) would simply be
//! continued from the cut, and the next checkpoint would rewrite `audit.head` to match: the cut
//! would vanish. So the writer refuses such a log ([`crate::AuditError::Truncated`]) unless told
//! to accept it, in which case it records `audit.truncation_detected` first.
//!
//! Read-only and outside the lock: appends by other processes meanwhile only make the log
//! longer, which never turns a good log into a cut one. The cost is bounded: the last line of
//! the newest segment, plus one forward scan of the segment holding the head's checkpoint
//! (usually the active one). Only when `audit.head` is the placeholder (or missing) is the
//! whole log scanned for checkpoints; in a log that never had one that is a young log, and a
//! log with checkpoints has a real head unless someone replaced it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::chain::ChainView;
use crate::error::AuditError;
use crate::event::EventType;
use crate::key::AuditPublicKey;
use crate::reader::RawLines;
use crate::store::{intact_end, last_line, segments};
use crate::witness::Witness;

/// The outcome of [`check_head`].
#[derive(Debug)]
pub(crate) enum HeadCheck {
    /// The log reaches the head's checkpoint (or there is no checkpoint to reach).
    Consistent,
    /// The log holds a signed checkpoint newer than `audit.head` (a crash between the
    /// checkpoint and the head update): bring `audit.head` up to it.
    Lagging(Witness),
    /// Events were removed from the end of the log.
    Truncated {
        /// `seq` of the checkpoint `audit.head` names (0 for the placeholder).
        head_seq: u64,
        /// `seq` of the last event in the log.
        log_seq: u64,
        /// What was found, in words.
        what: String,
    },
}

/// The last chained event of the log in `dir` (torn bytes and stray lines stepped over):
/// `(seq, its line)`, or `None` for an empty log.
fn last_event(dir: &Path) -> Result<Option<(u64, ChainView)>, AuditError> {
    for (_, path) in segments(dir)?.iter().rev() {
        let file = File::open(path).map_err(|e| AuditError::read(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::read(path, e))?
            .len();
        let mut end = intact_end(&file, len).map_err(|e| AuditError::read(path, e))?;
        while let Some((offset, line)) =
            last_line(&file, end).map_err(|e| AuditError::read(path, e))?
        {
            if let Ok(view) = ChainView::parse(&line) {
                if let (Some(seq), Some(_)) = (view.seq, view.hash.as_deref()) {
                    return Ok(Some((seq, view)));
                }
            }
            end = offset;
        }
    }
    Ok(None)
}

/// `seq` of the first chained event of a segment, if it has one.
fn first_seq(path: &Path) -> Result<Option<u64>, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::read(path, e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::read(path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(None);
        }
        if let Ok(ChainView { seq: Some(seq), .. }) = ChainView::parse(&line[..n - 1]) {
            return Ok(Some(seq));
        }
    }
}

/// `hash` of the event with `seq` in the log in `dir`, if the log has one.
fn hash_at(dir: &Path, seq: u64) -> Result<Option<String>, AuditError> {
    let needle = format!("\"seq\":{seq},");
    for (_, path) in segments(dir)?.iter().rev() {
        match first_seq(path)? {
            Some(first) if first <= seq => {}
            _ => continue,
        }
        let file = File::open(path).map_err(|e| AuditError::read(path, e))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AuditError::read(path, e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(None);
            }
            // Parse only the candidates: the writer puts `seq` second, so this is cheap.
            if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                continue;
            }
            if let Ok(view) = ChainView::parse(&line[..n - 1]) {
                if view.seq == Some(seq) {
                    return Ok(view.hash);
                }
            }
        }
    }
    Ok(None)
}

/// The checkpoint `view` as a witness line, if it is one and carries what a witness needs.
fn witness_of(view: &ChainView) -> Option<Witness> {
    if view.kind != EventType::AuditCheckpoint.as_str() {
        return None;
    }
    let audit = view.audit.as_ref()?;
    Some(Witness {
        format: crate::witness::WITNESS_FORMAT.to_owned(),
        seq: view.seq?,
        ts: view.ts.clone(),
        node: view.gateway.clone().unwrap_or_default(),
        reason: audit.reason.clone()?,
        prev: view.prev.clone()?,
        hash: view.hash.clone()?,
        key: audit.key.clone()?,
        sig: audit.sig.clone()?,
    })
}

/// How many checkpoints the whole log holds, and the last one.
fn count_checkpoints(dir: &Path) -> Result<(u64, Option<ChainView>), AuditError> {
    const NEEDLE: &[u8] = b"\"type\":\"audit.checkpoint\"";
    let mut count = 0;
    let mut last = None;
    let mut lines = RawLines::open(dir)?;
    while let Some(line) = lines.next() {
        let line = line?;
        if !line.complete || !line.bytes.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
            continue;
        }
        if let Ok(view) = ChainView::parse(line.bytes) {
            if view.kind == EventType::AuditCheckpoint.as_str() && view.hash.is_some() {
                count += 1;
                last = Some(view);
            }
        }
    }
    Ok((count, last))
}

/// Compares the log in `dir` with `head` (the contents of `audit.head`: `None` when missing or
/// unreadable). `key`: the writer's public key, to accept only its own checkpoints as a newer
/// head.
pub(crate) fn check_head(
    dir: &Path,
    head: Option<&Witness>,
    key: Option<&AuditPublicKey>,
) -> Result<HeadCheck, AuditError> {
    let Some((log_seq, last)) = last_event(dir)? else {
        return Ok(match head {
            Some(h) if h.seq > 0 => HeadCheck::Truncated {
                head_seq: h.seq,
                log_seq: 0,
                what: format!(
                    "audit.head names checkpoint seq {} ({}), but the log holds no event at all (seq 0)",
                    h.seq, h.ts
                ),
            },
            _ => HeadCheck::Consistent,
        });
    };
    let lagging = |w: Witness, head_seq: u64| {
        let ours = key.is_some_and(|k| w.signature_valid(k));
        if ours && w.seq > head_seq {
            HeadCheck::Lagging(w)
        } else {
            HeadCheck::Consistent
        }
    };
    let head = match head {
        Some(h) if h.seq > 0 => h,
        _ => {
            // The placeholder (or no head at all): fine for a log that never had a checkpoint,
            // and for one whose only checkpoint came just before a crash (the head update
            // never happened). With two or more, the head was replaced.
            let (count, last_cp) = count_checkpoints(dir)?;
            return Ok(match (count, last_cp.as_ref().and_then(witness_of)) {
                (0, _) => HeadCheck::Consistent,
                (1, Some(w)) => lagging(w, 0),
                (_, w) => HeadCheck::Truncated {
                    head_seq: 0,
                    log_seq,
                    what: format!(
                        "audit.head is {} although the log holds {count} signed checkpoints (the last at seq {}) and ends at seq {log_seq}: audit.head was replaced, and events may have been removed from the end",
                        if head.is_some() { "the unsigned placeholder" } else { "missing" },
                        w.map_or(0, |w| w.seq),
                    ),
                },
            });
        }
    };
    if log_seq < head.seq {
        return Ok(HeadCheck::Truncated {
            head_seq: head.seq,
            log_seq,
            what: format!(
                "audit.head names checkpoint seq {} ({}), but the log ends at seq {log_seq}: events {}..={} were removed",
                head.seq,
                head.ts,
                log_seq + 1,
                head.seq
            ),
        });
    }
    match hash_at(dir, head.seq)? {
        Some(hash) if hash == head.hash => {}
        found => {
            return Ok(HeadCheck::Truncated {
                head_seq: head.seq,
                log_seq,
                what: format!(
                    "audit.head names checkpoint seq {} ({}, hash {}), but the log's event at seq {} is {}: the log was cut before seq {} and written again; it now ends at seq {log_seq}",
                    head.seq,
                    head.ts,
                    head.hash,
                    head.seq,
                    found.map_or_else(|| "missing".to_owned(), |h| format!("another (hash {h})")),
                    head.seq,
                ),
            })
        }
    }
    Ok(match witness_of(&last) {
        Some(w) => lagging(w, head.seq),
        None => HeadCheck::Consistent,
    })
}
