//! The inspecting relay: [`relay_inspected`] carries a DICOM association between the
//! clinician's side and the PACS like [`postern_net::relay::relay`] carries bytes, reading
//! the PDUs on the way, enforcing the gateway's [`DicomPermit`] and reporting
//! [`DicomRecord`]s.
//!
//! Each direction reads PDU by PDU. A-ASSOCIATE, A-RELEASE and A-ABORT PDUs are read whole
//! (at most 64 KiB) and parsed; a P-DATA-TF's value items are read one by one: a command
//! fragment is held back until its command set is complete and allowed, a query or retrieve
//! identifier is kept (at most 1 MiB) while it is forwarded, and every other data fragment
//! (pixel data) streams through in pieces of at most 64 KiB, never held whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_ul::pdu::{Pdu, PresentationContextResultReason};
use postern_net::relay::{Counters, Ended};
use postern_proto::dicom::{DicomPermit, DicomRecord, DicomService, MAX_LIST};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use super::pdu::{self, command, Malformed};

/// How long the first PDU (the A-ASSOCIATE-RQ) may take to arrive.
pub const FIRST_PDU_WITHIN: Duration = Duration::from_secs(30);
/// Read buffer per direction: room for what is held ([`HOLD_MAX`]) and a whole small PDU.
const BUF: usize = 256 * 1024;
/// Pending output is written out once it is this large.
const FLUSH_AT: usize = 64 * 1024;

/// The refusal codes of [`DicomRecord::refusal`].
pub mod refusal {
    pub const CALLING_AE_NOT_ALLOWED: &str = "calling_ae_not_allowed";
    pub const CALLED_AE_NOT_RECOGNIZED: &str = "called_ae_not_recognized";
    pub const SERVICE_NOT_ALLOWED: &str = "service_not_allowed";
    pub const MALFORMED_PDU: &str = "malformed_pdu";
    pub const UNEXPECTED_PDU: &str = "unexpected_pdu";
    /// Every code, for metrics.
    pub const ALL: [&str; 5] = [
        CALLING_AE_NOT_ALLOWED,
        CALLED_AE_NOT_RECOGNIZED,
        SERVICE_NOT_ALLOWED,
        MALFORMED_PDU,
        UNEXPECTED_PDU,
    ];
}

/// What [`relay_inspected`] did, for the connector's metrics and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Which side ended the relay first (as [`postern_net::relay::relay`] says it); a refusal
    /// counts as the side that caused it erring.
    pub ended: Ended,
    /// The refusal code, when the connector refused the association or aborted it.
    pub refusal: Option<&'static str>,
    /// DIMSE requests forwarded from the clinician's side, by service (`echo`, `find`, …).
    pub operations: BTreeMap<&'static str, u64>,
    /// Records not sent because the channel was full (or closed).
    pub dropped_records: u64,
}

/// What the connector answers a violation with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A-ASSOCIATE-RJ to the clinician's side with this reason (the PACS never hears of it).
    Reject(u8),
    /// A-ABORT to both sides.
    Abort,
}

impl Answer {
    fn text(self) -> String {
        match self {
            Answer::Reject(r) => format!("A-ASSOCIATE-RJ result 1 source 1 reason {r}"),
            Answer::Abort => "A-ABORT source 2 reason 0".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Refusal {
    code: &'static str,
    reason: String,
    answer: Answer,
    service: Option<String>,
    sop_class: Option<String>,
}

impl Refusal {
    fn malformed(from: Side, m: &Malformed, rule: &str) -> Refusal {
        Refusal {
            code: refusal::MALFORMED_PDU,
            reason: format!("malformed PDU from {}: {m} (rule '{rule}')", from.name()),
            answer: Answer::Abort,
            service: None,
            sop_class: None,
        }
    }

    fn unexpected(from: Side, what: &str, rule: &str) -> Refusal {
        Refusal {
            code: refusal::UNEXPECTED_PDU,
            reason: format!("unexpected {what} from {} (rule '{rule}')", from.name()),
            answer: Answer::Abort,
            service: None,
            sop_class: None,
        }
    }
}

/// How one direction ended.
#[derive(Debug)]
enum Flow {
    /// Clean end of input at a PDU boundary (passed on as a write shutdown).
    Eof,
    ReadErr,
    WriteErr,
    /// No A-ASSOCIATE-RQ within [`FIRST_PDU_WITHIN`].
    Idle,
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The clinician's side (the tunnel from the gateway).
    Client,
    /// The PACS.
    Pacs,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "the clinician's side",
            Side::Pacs => "the PACS",
        }
    }
}

/// One DIMSE operation the clinician's side asked for, until its final response.
#[derive(Debug)]
struct Op {
    service: DicomService,
    sop_class: Option<String>,
    keys: Option<pdu::Keys>,
    matches: u64,
    instances: u64,
    instance_uids: Vec<String>,
}

#[derive(Debug, Default)]
struct Stores {
    count: u64,
    uids: Vec<String>,
    /// The last C-STORE-RSP status that was not success, else success.
    status: Option<u16>,
}

/// What both directions know of the association.
#[derive(Default)]
struct Assoc {
    calling: String,
    called: String,
    /// Proposed presentation contexts: id → abstract syntax.
    proposed: HashMap<u8, String>,
    /// Accepted ones: id → (abstract syntax, transfer syntax). Set once the AC passed.
    accepted: Option<HashMap<u8, (String, String)>>,
    /// Operations in progress by message id.
    ops: HashMap<u16, Op>,
    /// The C-GET whose C-STORE sub-operations arrive now.
    current_get: Option<u16>,
    stores: Stores,
    operations: BTreeMap<&'static str, u64>,
    dropped: u64,
}

struct Shared<'a> {
    permit: &'a DicomPermit,
    records: tokio::sync::mpsc::Sender<DicomRecord>,
    assoc: Mutex<Assoc>,
}

impl Shared<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Assoc) -> T) -> T {
        let mut g = match self.assoc.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    fn emit(&self, rec: DicomRecord) {
        let Some(rec) = rec.bounded() else {
            return;
        };
        debug!(record = ?rec, "DICOM record");
        match self.records.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => {
                let first = self.with(|a| {
                    a.dropped += 1;
                    a.dropped == 1
                });
                if first {
                    warn!(event = %r.event, "DICOM records are not taken fast enough: dropping (counted)");
                }
            }
            Err(TrySendError::Closed(_)) => self.with(|a| a.dropped += 1),
        }
    }

    fn refused(&self, r: &Refusal) {
        let (calling, called) = self.with(|a| (a.calling.clone(), a.called.clone()));
        warn!(refusal = r.code, rule = %self.permit.rule, calling_ae = %calling, answer = %r.answer.text(), "DICOM association refused");
        self.emit(DicomRecord {
            event: "refused".into(),
            calling_ae: calling,
            called_ae: called,
            service: r.service.clone(),
            sop_class: r.sop_class.clone(),
            refusal: Some(r.code.into()),
            reason: Some(r.reason.clone()),
            answer: Some(r.answer.text()),
            ..DicomRecord::default()
        });
    }
}

/// One direction: reads PDUs from `r`, writes what passes to `w`.
///
/// Whatever passes is forwarded byte for byte, so output is not copied anywhere: the bytes
/// read and consumed but not written yet are the range `buf[fwd..start]`, written straight
/// from the read buffer (before the next read, or once 64 KiB are pending) unless they are
/// held: a PDU is held from its header until it is known to carry no request that might be
/// refused (a data fragment begins, or it ends with every command set in it complete and
/// allowed).
struct Pipe<'c, R, W> {
    side: Side,
    r: R,
    w: W,
    buf: Vec<u8>,
    /// Consumed and not yet written from here up to `start`.
    fwd: usize,
    start: usize,
    end: usize,
    /// Pending output is held back.
    hold: bool,
    counter: &'c AtomicU64,
    /// Fragments of the command set being read; `command_open`: its last one is still to come.
    command: Vec<u8>,
    command_open: bool,
    /// The identifier being read: (message id, presentation context, bytes).
    identifier: Option<(u16, u8, Vec<u8>)>,
}

/// Why a read could not go on.
enum ReadStop {
    /// End of input with nothing pending.
    Eof,
    /// End of input inside a PDU.
    Truncated,
    /// More than [`HOLD_MAX`] bytes would have to be held back.
    Held,
    Err,
}

/// Most bytes held back at once (a command set split over many small PDUs).
const HOLD_MAX: usize = 128 * 1024;

impl<'c, R, W> Pipe<'c, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(side: Side, r: R, w: W, counter: &'c AtomicU64) -> Self {
        Pipe {
            side,
            r,
            w,
            buf: vec![0u8; BUF],
            fwd: 0,
            start: 0,
            end: 0,
            hold: false,
            counter,
            command: Vec::new(),
            command_open: false,
            identifier: None,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn pending(&self) -> usize {
        self.start - self.fwd
    }

    /// Writes what is pending (held or not).
    async fn flush_out(&mut self) -> Result<(), ()> {
        if self.fwd == self.start {
            return Ok(());
        }
        let r = async {
            self.w.write_all(&self.buf[self.fwd..self.start]).await?;
            self.w.flush().await
        }
        .await;
        match r {
            Ok(()) => {
                self.counter
                    .fetch_add(self.pending() as u64, Ordering::Relaxed);
                self.fwd = self.start;
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// Drops what is pending (a refused PDU).
    fn discard(&mut self) {
        self.fwd = self.start;
    }

    /// Writes `bytes` (an answer of the connector's own) after what is pending.
    async fn answer(&mut self, bytes: &[u8]) {
        if self.flush_out().await.is_ok() {
            let _ = self.w.write_all(bytes).await;
            let _ = self.w.flush().await;
        }
    }

    /// Reads more input (writing pending output first, unless it is held).
    async fn fill(&mut self, inside: bool) -> Result<(), Result<ReadStop, ()>> {
        if !self.hold {
            self.flush_out().await.map_err(|_| Err(()))?;
        }
        if self.fwd > 0 {
            self.buf.copy_within(self.fwd..self.end, 0);
            self.end -= self.fwd;
            self.start -= self.fwd;
            self.fwd = 0;
        }
        if self.pending() > HOLD_MAX || self.end == self.buf.len() {
            return Err(Ok(ReadStop::Held));
        }
        match self.r.read(&mut self.buf[self.end..]).await {
            Ok(0) if !inside && self.buffered() == 0 => Err(Ok(ReadStop::Eof)),
            Ok(0) => Err(Ok(ReadStop::Truncated)),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(_) => Err(Ok(ReadStop::Err)),
        }
    }

    /// Makes `n` (at most 64 KiB + 6) bytes available; `inside`: a PDU has begun.
    async fn need(&mut self, n: usize, inside: bool) -> Result<(), Result<ReadStop, ()>> {
        while self.buffered() < n {
            self.fill(inside || self.buffered() > 0).await?;
        }
        Ok(())
    }

    /// Consumes `n` buffered bytes (they are forwarded unless refused).
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.buf[self.start..self.start + n];
        self.start += n;
        s
    }

    /// Forwards the next `n` bytes (streaming); with `keep`, also appends them there.
    async fn forward(
        &mut self,
        mut n: usize,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<(), Result<ReadStop, ()>> {
        while n > 0 {
            if self.buffered() == 0 {
                self.fill(true).await?;
            }
            let k = self.buffered().min(n);
            let (a, b) = (self.start, self.start + k);
            if let Some(v) = keep.as_deref_mut() {
                v.extend_from_slice(&self.buf[a..b]);
            }
            self.start = b;
            n -= k;
            if !self.hold && self.pending() >= FLUSH_AT {
                self.flush_out().await.map_err(|_| Err(()))?;
            }
        }
        Ok(())
    }
}

/// Maps a read stop to how the direction ends.
fn stopped(side: Side, s: Result<ReadStop, ()>, rule: &str) -> Flow {
    match s {
        Ok(ReadStop::Eof) => Flow::Eof,
        Ok(ReadStop::Truncated) => {
            Flow::Refuse(Refusal::malformed(side, &Malformed::Truncated, rule))
        }
        Ok(ReadStop::Held) => Flow::Refuse(Refusal::malformed(
            side,
            &Malformed::Body(format!(
                "more than {} KiB held back for one command set",
                HOLD_MAX / 1024
            )),
            rule,
        )),
        Ok(ReadStop::Err) => Flow::ReadErr,
        Err(()) => Flow::WriteErr,
    }
}

macro_rules! tryread {
    ($pipe:expr, $e:expr, $rule:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return stopped($pipe.side, s, $rule),
        }
    };
}

fn service_of(field: u16) -> Option<DicomService> {
    match field {
        command::C_ECHO_RQ => Some(DicomService::Echo),
        command::C_FIND_RQ => Some(DicomService::Find),
        command::C_GET_RQ => Some(DicomService::Get),
        command::C_MOVE_RQ => Some(DicomService::Move),
        command::C_STORE_RQ => Some(DicomService::Store),
        _ => None,
    }
}

fn status_hex(s: Option<u16>) -> Option<String> {
    s.map(|s| format!("{s:04x}"))
}

fn is_pending(s: Option<u16>) -> bool {
    matches!(s, Some(0xFF00) | Some(0xFF01))
}

fn list(permit: &DicomPermit) -> String {
    permit
        .services
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One direction until it ends; a clean end of input is passed on as a write shutdown.
async fn run_pipe<R, W>(p: &mut Pipe<'_, R, W>, sh: &Shared<'_>) -> Flow
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let f = pipe_pdus(p, sh).await;
    if matches!(f, Flow::Eof) {
        if p.flush_out().await.is_err() {
            return Flow::WriteErr;
        }
        let _ = p.w.shutdown().await;
    }
    f
}

async fn pipe_pdus<R, W>(p: &mut Pipe<'_, R, W>, sh: &Shared<'_>) -> Flow
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let rule = sh.permit.rule.as_str();
    let mut first = p.side == Side::Client;
    // The whole first PDU (header and body) within FIRST_PDU_WITHIN.
    let deadline = tokio::time::Instant::now() + FIRST_PDU_WITHIN;
    loop {
        // The header: the first PDU of the clinician's side within FIRST_PDU_WITHIN.
        if first {
            match tokio::time::timeout_at(deadline, p.need(6, false)).await {
                Ok(r) => tryread!(p, r, rule),
                Err(_) => return Flow::Idle,
            }
        } else {
            tryread!(p, p.need(6, false).await, rule);
        }
        let mut h = [0u8; 6];
        h.copy_from_slice(p.take(6));
        // Held until known to be allowed (with whatever was still pending before it).
        p.hold = true;
        let header = match pdu::parse_header(&h) {
            Ok(h) => h,
            Err(m) => return Flow::Refuse(Refusal::malformed(p.side, &m, rule)),
        };
        let associated = sh.with(|a| a.accepted.is_some());
        let expected = match (p.side, header.pdu_type) {
            (Side::Client, pdu::PDU_ASSOCIATE_RQ) => first,
            (Side::Client, pdu::PDU_ASSOCIATE_AC | pdu::PDU_ASSOCIATE_RJ) => false,
            (Side::Pacs, pdu::PDU_ASSOCIATE_RQ) => false,
            (Side::Pacs, pdu::PDU_ASSOCIATE_AC | pdu::PDU_ASSOCIATE_RJ) => !associated,
            (_, pdu::PDU_PDATA) => associated,
            (_, pdu::PDU_ABORT) => true,
            (_, _) => !first,
        };
        if !expected {
            let name = match header.pdu_type {
                pdu::PDU_ASSOCIATE_RQ => "A-ASSOCIATE-RQ",
                pdu::PDU_ASSOCIATE_AC => "A-ASSOCIATE-AC",
                pdu::PDU_ASSOCIATE_RJ => "A-ASSOCIATE-RJ",
                pdu::PDU_PDATA => "P-DATA-TF",
                pdu::PDU_RELEASE_RQ => "A-RELEASE-RQ",
                _ => "A-RELEASE-RP",
            };
            return Flow::Refuse(Refusal::unexpected(p.side, name, rule));
        }
        let was_first = std::mem::take(&mut first);
        if header.pdu_type == pdu::PDU_PDATA {
            if let Err(f) = pdata(p, sh, header.len).await {
                return f;
            }
            continue;
        }
        // A small PDU: whole, parsed, then forwarded (or refused).
        let len = header.len as usize;
        if was_first {
            match tokio::time::timeout_at(deadline, p.need(len, true)).await {
                Ok(r) => tryread!(p, r, rule),
                Err(_) => return Flow::Idle,
            }
        } else {
            tryread!(p, p.need(len, true).await, rule);
        }
        let mut whole = Vec::with_capacity(6 + len);
        whole.extend_from_slice(&h);
        whole.extend_from_slice(&p.buf[p.start..p.start + len]);
        match header.pdu_type {
            pdu::PDU_ASSOCIATE_RQ => match pdu::parse_small(&whole) {
                Ok(Pdu::AssociationRQ(rq)) => {
                    if let Err(r) = associate_rq(sh, &rq) {
                        return Flow::Refuse(r);
                    }
                }
                Ok(_) => return Flow::Refuse(Refusal::unexpected(p.side, "PDU", rule)),
                Err(m) => return Flow::Refuse(Refusal::malformed(p.side, &m, rule)),
            },
            pdu::PDU_ASSOCIATE_AC => match pdu::parse_small(&whole) {
                Ok(Pdu::AssociationAC(ac)) => associate_ac(sh, &ac),
                Ok(_) => return Flow::Refuse(Refusal::unexpected(p.side, "PDU", rule)),
                Err(m) => return Flow::Refuse(Refusal::malformed(p.side, &m, rule)),
            },
            _ => {
                if let Err(m) = pdu::parse_small(&whole) {
                    return Flow::Refuse(Refusal::malformed(p.side, &m, rule));
                }
            }
        }
        p.start += len;
        p.hold = false;
    }
}

/// The rest of a P-DATA-TF PDU of `len` bytes, whose header was just consumed.
async fn pdata<R, W>(p: &mut Pipe<'_, R, W>, sh: &Shared<'_>, len: u32) -> Result<(), Flow>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let rule = sh.permit.rule.as_str();
    let bad = |side: Side, why: String| {
        Flow::Refuse(Refusal::malformed(side, &Malformed::Body(why), rule))
    };
    let mut left = len as usize;
    while left > 0 {
        if left < 6 {
            return Err(bad(
                p.side,
                format!("{left} bytes left in a P-DATA-TF, too few for a value item"),
            ));
        }
        p.need(6, true)
            .await
            .map_err(|s| stopped(p.side, s, rule))?;
        let item = p.take(6);
        let item_len = u32::from_be_bytes([item[0], item[1], item[2], item[3]]) as usize;
        let (ctx, ctrl) = (item[4], item[5]);
        if item_len < 2 || item_len > left - 4 {
            return Err(bad(
                p.side,
                format!("a value item of {item_len} bytes in {left}"),
            ));
        }
        let payload = item_len - 2;
        let (is_command, last) = (ctrl & 1 == 1, ctrl & 2 == 2);
        if is_command {
            if p.command.len() + payload > pdu::MAX_COMMAND {
                return Err(bad(p.side, "a command set longer than 64 KiB".into()));
            }
            p.command_open = true;
            let mut cmd = std::mem::take(&mut p.command);
            let r = p.forward(payload, Some(&mut cmd)).await;
            p.command = cmd;
            r.map_err(|s| stopped(p.side, s, rule))?;
            if last {
                let cmd = std::mem::take(&mut p.command);
                let parsed = pdu::parse_command(&cmd)
                    .map_err(|e| bad(p.side, format!("command set: {e}")))?;
                match p.side {
                    Side::Client => {
                        let collect = client_command(sh, &parsed).map_err(Flow::Refuse)?;
                        if collect {
                            p.identifier = Some((parsed.message_id, ctx, Vec::new()));
                        }
                    }
                    Side::Pacs => pacs_command(sh, &parsed),
                }
                p.command_open = false;
            }
        } else {
            if p.command_open {
                return Err(bad(
                    p.side,
                    "a data fragment inside an incomplete command set".into(),
                ));
            }
            // Every command set before it in this PDU was allowed: nothing left to hold.
            p.hold = false;
            match p.identifier.take() {
                Some((id, ictx, mut bytes)) if ictx == ctx => {
                    if bytes.len() + payload > pdu::MAX_IDENTIFIER {
                        return Err(bad(p.side, "an identifier longer than 1 MiB".into()));
                    }
                    p.forward(payload, Some(&mut bytes))
                        .await
                        .map_err(|s| stopped(p.side, s, rule))?;
                    if last {
                        identifier(sh, id, ctx, &bytes);
                    } else {
                        p.identifier = Some((id, ictx, bytes));
                    }
                }
                other => {
                    p.identifier = other;
                    p.forward(payload, None)
                        .await
                        .map_err(|s| stopped(p.side, s, rule))?;
                }
            }
        }
        left -= 4 + item_len;
    }
    // A command set whose last fragment is still to come keeps its PDUs held.
    p.hold = p.command_open;
    Ok(())
}

fn associate_rq(sh: &Shared<'_>, rq: &dicom_ul::pdu::AssociationRQ) -> Result<(), Refusal> {
    let permit = sh.permit;
    let calling = rq.calling_ae_title.trim_matches(' ').to_owned();
    let called = rq.called_ae_title.trim_matches(' ').to_owned();
    sh.with(|a| {
        a.calling = calling.clone();
        a.called = called.clone();
        a.proposed = rq
            .presentation_contexts
            .iter()
            .map(|c| (c.id, c.abstract_syntax.clone()))
            .collect();
    });
    let shown = |s: &str| postern_proto::dicom::clean(s, postern_proto::dicom::MAX_AE);
    if !permit.allows_calling(&calling) {
        return Err(Refusal {
            code: refusal::CALLING_AE_NOT_ALLOWED,
            reason: format!(
                "calling AE title {} is not allowed for this user by rule '{}' (allowed: {})",
                shown(&calling),
                permit.rule,
                permit.calling_ae.join(", ")
            ),
            answer: Answer::Reject(3),
            service: None,
            sop_class: None,
        });
    }
    if !permit.allows_called(&called) {
        return Err(Refusal {
            code: refusal::CALLED_AE_NOT_RECOGNIZED,
            reason: format!(
                "called AE title {} is not this endpoint's AE title {} (rule '{}')",
                shown(&called),
                permit.called_ae.as_deref().unwrap_or("-"),
                permit.rule
            ),
            answer: Answer::Reject(7),
            service: None,
            sop_class: None,
        });
    }
    Ok(())
}

fn associate_ac(sh: &Shared<'_>, ac: &dicom_ul::pdu::AssociationAC) {
    let rec = sh.with(|a| {
        let mut accepted = HashMap::new();
        let mut classes: Vec<String> = Vec::new();
        let mut ids: Vec<_> = ac.presentation_contexts.iter().collect();
        ids.sort_by_key(|c| c.id);
        for c in ids {
            if c.reason != PresentationContextResultReason::Acceptance {
                continue;
            }
            if let Some(abs) = a.proposed.get(&c.id) {
                if !classes.contains(abs) && classes.len() < MAX_LIST {
                    classes.push(abs.clone());
                }
                accepted.insert(
                    c.id,
                    (
                        abs.clone(),
                        c.transfer_syntax.trim_matches(['\0', ' ']).to_owned(),
                    ),
                );
            }
        }
        a.accepted = Some(accepted);
        DicomRecord {
            event: "association".into(),
            calling_ae: a.calling.clone(),
            called_ae: a.called.clone(),
            sop_classes: classes,
            ..DicomRecord::default()
        }
    });
    sh.emit(rec);
}

/// A command set from the clinician's side: allowed or refused; Ok(true) when the identifier
/// that follows is to be read.
fn client_command(sh: &Shared<'_>, c: &pdu::Command) -> Result<bool, Refusal> {
    if c.field & command::RESPONSE != 0 || c.field == command::C_CANCEL_RQ {
        return Ok(false);
    }
    let permit = sh.permit;
    let Some(service) = service_of(c.field) else {
        return Err(Refusal {
            code: refusal::SERVICE_NOT_ALLOWED,
            reason: format!(
                "{} is not a service a permit can allow (rule '{}' allows: {})",
                pdu::command_name(c.field),
                permit.rule,
                list(permit)
            ),
            answer: Answer::Abort,
            service: Some(pdu::command_name(c.field).to_lowercase()),
            sop_class: c.sop_class.clone(),
        });
    };
    if !permit.allows(service) {
        return Err(Refusal {
            code: refusal::SERVICE_NOT_ALLOWED,
            reason: format!(
                "{} is not allowed for this user by rule '{}' (allowed: {})",
                pdu::command_name(c.field),
                permit.rule,
                list(permit)
            ),
            answer: Answer::Abort,
            service: Some(service.as_str().into()),
            sop_class: c.sop_class.clone(),
        });
    }
    Ok(sh.with(|a| {
        *a.operations.entry(service.as_str()).or_default() += 1;
        match service {
            DicomService::Echo => false,
            DicomService::Store => {
                a.stores.count += 1;
                if let Some(u) = &c.sop_instance {
                    if a.stores.uids.len() < MAX_LIST {
                        a.stores.uids.push(u.clone());
                    }
                }
                false
            }
            DicomService::Find | DicomService::Get | DicomService::Move => {
                a.ops.insert(
                    c.message_id,
                    Op {
                        service,
                        sop_class: c.sop_class.clone(),
                        keys: None,
                        matches: 0,
                        instances: 0,
                        instance_uids: Vec::new(),
                    },
                );
                if service == DicomService::Get {
                    a.current_get = Some(c.message_id);
                }
                c.has_dataset
            }
        }
    }))
}

/// The identifier of operation `id`, read in presentation context `ctx`'s transfer syntax.
fn identifier(sh: &Shared<'_>, id: u16, ctx: u8, bytes: &[u8]) {
    sh.with(|a| {
        let ts = a
            .accepted
            .as_ref()
            .and_then(|m| m.get(&ctx))
            .map(|(_, ts)| ts.clone())
            .unwrap_or_default();
        match pdu::parse_identifier(bytes, &ts) {
            Ok(keys) => {
                if let Some(op) = a.ops.get_mut(&id) {
                    op.keys = Some(keys);
                }
            }
            Err(e) => debug!(error = %e, "an identifier was not read"),
        }
    });
}

/// A command set from the PACS: responses close operations into records.
fn pacs_command(sh: &Shared<'_>, c: &pdu::Command) {
    let rec = sh.with(|a| {
        match c.field {
            command::C_STORE_RQ => {
                // A C-GET's sub-operation.
                if let Some(op) = a.current_get.and_then(|g| a.ops.get_mut(&g)) {
                    op.instances += 1;
                    if let Some(u) = &c.sop_instance {
                        if op.instance_uids.len() < MAX_LIST {
                            op.instance_uids.push(u.clone());
                        }
                    }
                }
                None
            }
            command::C_STORE_RSP => {
                if c.status != Some(0) {
                    a.stores.status = c.status;
                } else if a.stores.status.is_none() {
                    a.stores.status = Some(0);
                }
                None
            }
            command::C_FIND_RSP | command::C_GET_RSP | command::C_MOVE_RSP => {
                if is_pending(c.status) {
                    if c.field == command::C_FIND_RSP {
                        if let Some(op) = a.ops.get_mut(&c.message_id) {
                            op.matches += 1;
                        }
                    }
                    return None;
                }
                let op = a.ops.remove(&c.message_id)?;
                if a.current_get == Some(c.message_id) {
                    a.current_get = None;
                }
                let keys = op.keys.unwrap_or_default();
                let find = op.service == DicomService::Find;
                Some(DicomRecord {
                    event: if find { "query" } else { "retrieve" }.into(),
                    calling_ae: a.calling.clone(),
                    called_ae: a.called.clone(),
                    service: Some(op.service.as_str().into()),
                    sop_class: op.sop_class,
                    level: keys.level,
                    patient_id: keys.patient_id,
                    accession: keys.accession,
                    study_uids: keys.study_uids,
                    series_uids: keys.series_uids,
                    modality: keys.modality,
                    study_date: keys.study_date,
                    matches: find.then_some(op.matches),
                    instances: match op.service {
                        DicomService::Get => Some(op.instances),
                        DicomService::Move => Some(c.completed.unwrap_or(0)),
                        _ => None,
                    },
                    instance_uids: op.instance_uids,
                    status: status_hex(c.status),
                    ..DicomRecord::default()
                })
            }
            _ => None,
        }
    });
    if let Some(r) = rec {
        sh.emit(r);
    }
}

/// Relays one DICOM association between `client` (the clinician's side) and `upstream` (the
/// PACS), enforcing `permit` and sending what it sees to `records`, until both directions
/// have ended, one failed, or the connector refused the association.
///
/// Bytes are counted in `counters` as [`postern_net::relay::relay`] counts them (`a_to_b`:
/// client → PACS). Records are offered with `try_send`: a full channel drops them (counted
/// in [`Summary::dropped_records`]) rather than stalling the association. C-STORE requests
/// from the clinician's side are reported as one `store` record per association, sent when
/// the relay ends.
pub async fn relay_inspected<C, U>(
    client: C,
    upstream: U,
    permit: &DicomPermit,
    records: tokio::sync::mpsc::Sender<DicomRecord>,
    counters: Arc<Counters>,
) -> Summary
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let sh = Shared {
        permit,
        records,
        assoc: Mutex::new(Assoc::default()),
    };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let mut up = Pipe::new(Side::Client, cr, uw, &counters.a_to_b);
    let mut down = Pipe::new(Side::Pacs, ur, cw, &counters.b_to_a);
    // (how the client's direction ended, how the PACS's ended); None: abandoned.
    let (fu, fd) = {
        let a = run_pipe(&mut up, &sh);
        let b = run_pipe(&mut down, &sh);
        tokio::pin!(a, b);
        tokio::select! {
            f = &mut a => match f {
                Flow::Eof => (Some(Flow::Eof), Some(b.await)),
                f => (Some(f), None),
            },
            f = &mut b => match f {
                Flow::Eof => (Some(a.await), Some(Flow::Eof)),
                f => (None, Some(f)),
            },
        }
    };
    let mut summary = Summary {
        ended: Ended::AClosed,
        refusal: None,
        operations: BTreeMap::new(),
        dropped_records: 0,
    };
    let ended = match (&fu, &fd) {
        (Some(Flow::Refuse(_)), _) => Ended::AError,
        (_, Some(Flow::Refuse(_))) => Ended::BError,
        (Some(Flow::ReadErr), _) | (_, Some(Flow::WriteErr)) => Ended::AError,
        (Some(Flow::WriteErr), _) | (_, Some(Flow::ReadErr)) => Ended::BError,
        (Some(Flow::Idle), _) => {
            debug!("no A-ASSOCIATE-RQ within {FIRST_PDU_WITHIN:?}: closing");
            Ended::AError
        }
        (None, _) => Ended::BError,
        (_, None) => Ended::AError,
        // Both ended cleanly: whose end came first is not tracked here.
        _ => Ended::AClosed,
    };
    let refusal = match (fu, fd) {
        (Some(Flow::Refuse(r)), _) | (_, Some(Flow::Refuse(r))) => Some(r),
        _ => None,
    };
    if let Some(r) = refusal {
        sh.refused(&r);
        summary.refusal = Some(r.code);
        // What was still pending (the refused PDU, and what shared its reads) is dropped;
        // the answer goes out alone.
        up.discard();
        down.discard();
        match r.answer {
            Answer::Reject(reason) => down.answer(&pdu::associate_rj(reason)).await,
            Answer::Abort => {
                down.answer(&pdu::abort()).await;
                up.answer(&pdu::abort()).await;
            }
        }
    }
    // Pending output (an answer, or what a direction that ended early still held) goes out
    // before both sides are closed.
    let _ = down.flush_out().await;
    let _ = up.flush_out().await;
    let _ = down.w.shutdown().await;
    let _ = up.w.shutdown().await;
    summary.ended = ended;
    let stores = sh.with(|a| {
        summary.operations = std::mem::take(&mut a.operations);
        if a.stores.count == 0 {
            return None;
        }
        Some(DicomRecord {
            event: "store".into(),
            calling_ae: a.calling.clone(),
            called_ae: a.called.clone(),
            service: Some("store".into()),
            instances: Some(a.stores.count),
            instance_uids: std::mem::take(&mut a.stores.uids),
            status: status_hex(a.stores.status),
            ..DicomRecord::default()
        })
    });
    if let Some(r) = stores {
        sh.emit(r);
    }
    summary.dropped_records = sh.with(|a| a.dropped);
    summary
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dicom::pdu::tests::{associate_rq, command_set, implicit};
    use crate::dicom::pdu::IMPLICIT_VR_LE;

    const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";

    fn permit(services: &[DicomService]) -> DicomPermit {
        DicomPermit {
            rule: "r1".into(),
            calling_ae: vec!["VIEWER".into()],
            called_ae: Some("PACS".into()),
            services: services.to_vec(),
        }
    }

    /// The PACS's A-ASSOCIATE-AC (VIEWER to PACS, context 1 accepted, implicit VR): the
    /// fuzz target's.
    pub(crate) fn ac() -> Vec<u8> {
        crate::fuzzing::dicom_ac()
    }

    /// A P-DATA-TF with one value item.
    pub(crate) fn pdata(ctx: u8, ctrl: u8, v: &[u8]) -> Vec<u8> {
        let mut out = vec![4, 0];
        out.extend_from_slice(&(v.len() as u32 + 6).to_be_bytes());
        out.extend_from_slice(&(v.len() as u32 + 2).to_be_bytes());
        out.extend_from_slice(&[ctx, ctrl]);
        out.extend_from_slice(v);
        out
    }

    /// An association that asks one C-FIND by patient id, then releases.
    fn find_stream() -> Vec<u8> {
        let mut s = associate_rq("VIEWER", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]);
        let cmd = command_set(
            0x0020,
            3,
            true,
            &[(0x0002, b"1.2.840.10008.5.1.4.1.2.2.1\0")],
        );
        s.extend(pdata(1, 3, &cmd));
        let mut id = Vec::new();
        implicit(&mut id, 0x0008, 0x0052, b"STUDY ");
        implicit(&mut id, 0x0010, 0x0020, b"PID-9 ");
        s.extend(pdata(1, 2, &id));
        s.extend([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        s
    }

    /// Runs `client_bytes` through the relay against a PACS that answers any input with an
    /// A-ASSOCIATE-AC (then `pacs_more`) and reads to the end. Returns (what the client got,
    /// what the PACS got, records, summary); panics if it takes more than 5 s.
    async fn run(
        client_bytes: Vec<u8>,
        pacs: (usize, Vec<u8>),
        permit: DicomPermit,
    ) -> (Vec<u8>, Vec<u8>, Vec<DicomRecord>, Summary) {
        run_chunked(client_bytes, pacs, permit, usize::MAX).await
    }

    /// As [`run`], the client writing what follows its A-ASSOCIATE-RQ `chunk` bytes at a time.
    async fn run_chunked(
        client_bytes: Vec<u8>,
        (pacs_after, pacs_more): (usize, Vec<u8>),
        permit: DicomPermit,
        chunk: usize,
    ) -> (Vec<u8>, Vec<u8>, Vec<DicomRecord>, Summary) {
        let (client, relay_c) = tokio::io::duplex(64 * 1024);
        let (relay_p, pacs) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let counters = Arc::new(Counters::default());
        let relay =
            tokio::spawn(
                async move { relay_inspected(relay_c, relay_p, &permit, tx, counters).await },
            );
        let pacs_task = tokio::spawn(async move {
            let mut pacs_more = pacs_more;
            let (mut r, mut w) = tokio::io::split(pacs);
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered = false;
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if !answered {
                    answered = true;
                    let _ = w.write_all(&ac()).await;
                }
                if !pacs_more.is_empty() && got.len() >= pacs_after {
                    let _ = w.write_all(&std::mem::take(&mut pacs_more)).await;
                }
            }
            let _ = w.shutdown().await;
            got
        });
        // The client sends its A-ASSOCIATE-RQ, waits for the answer (as a real one does), then
        // sends the rest.
        let rq_len = client_bytes
            .get(2..6)
            .map(|l| 6 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .unwrap_or(0)
            .min(client_bytes.len());
        let ac_len = ac().len();
        let (mut cr, mut cw) = tokio::io::split(client);
        let work = async {
            let mut got = Vec::new();
            let _ = cw.write_all(&client_bytes[..rq_len]).await;
            let mut buf = [0u8; 4096];
            while got.len() < ac_len {
                match tokio::time::timeout(Duration::from_millis(50), cr.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            for piece in client_bytes[rq_len..].chunks(chunk) {
                let _ = cw.write_all(piece).await;
                let _ = cw.flush().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = cw.shutdown().await;
            let _ = cr.read_to_end(&mut got).await;
            let summary = relay.await.unwrap();
            let to_pacs = pacs_task.await.unwrap();
            (got, to_pacs, summary)
        };
        let (got, to_pacs, summary) = tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .expect("the relay hung");
        let mut records = Vec::new();
        while let Ok(r) = rx.try_recv() {
            records.push(r);
        }
        (got, to_pacs, records, summary)
    }

    /// The `dicom_stream` fuzz target's seeds are these streams (rewritten with
    /// `POSTERN_WRITE_SEEDS=1`); they must be committed as they are made.
    #[test]
    fn the_fuzz_seeds_are_the_streams_these_tests_use() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/dicom_stream");
        let echo = {
            let mut s = associate_rq(
                "VIEWER",
                "PACS",
                &[(1, "1.2.840.10008.1.1", IMPLICIT_VR_LE)],
            );
            s.extend(pdata(1, 3, &command_set(0x0030, 1, false, &[])));
            s.extend([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
            s
        };
        let seeds: [(&str, Vec<u8>); 4] = [
            ("find", find_stream()),
            ("echo", echo),
            (
                "evil",
                associate_rq("EVIL", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]),
            ),
            ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ];
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if std::env::var_os("POSTERN_WRITE_SEEDS").is_some() {
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "seed {name} is stale");
        }
    }

    #[tokio::test]
    async fn a_query_is_recorded_with_its_keys_and_the_pacs_gets_every_byte() {
        let stream = find_stream();
        let mut rsp = Vec::new();
        for status in [0xFF00u16, 0xFF00, 0x0000] {
            let c = command_set(0x8020, 3, status != 0, &[(0x0900, &status.to_le_bytes())]);
            rsp.extend(pdata(1, 3, &c));
        }
        rsp.extend([6, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
        let (got, to_pacs, records, summary) = run(
            stream.clone(),
            (stream.len() - 10, rsp.clone()),
            permit(&DicomService::DEFAULT),
        )
        .await;
        assert_eq!(
            to_pacs, stream,
            "the association reached the PACS unchanged"
        );
        let mut want = ac();
        want.extend(&rsp);
        assert_eq!(got, want);
        assert_eq!(summary.refusal, None);
        assert_eq!(summary.operations.get("find"), Some(&1));
        let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["association", "query"]);
        assert_eq!(records[0].sop_classes, [FIND]);
        let q = &records[1];
        assert_eq!(q.patient_id.as_deref(), Some("PID-9"));
        assert_eq!(q.level.as_deref(), Some("STUDY"));
        assert_eq!((q.matches, q.status.as_deref()), (Some(2), Some("0000")));
    }

    #[tokio::test]
    async fn a_service_the_permit_lacks_never_reaches_the_pacs_and_both_sides_get_an_abort() {
        let stream = find_stream();
        let (got, to_pacs, records, summary) = run(
            stream.clone(),
            (0, Vec::new()),
            permit(&[DicomService::Echo]),
        )
        .await;
        let rq_len = associate_rq("VIEWER", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]).len();
        // The PACS saw the A-ASSOCIATE-RQ, then the abort: not one byte of the C-FIND.
        let mut want = stream[..rq_len].to_vec();
        want.extend(pdu::abort());
        assert_eq!(to_pacs, want);
        let mut want = ac();
        want.extend(pdu::abort());
        assert_eq!(got, want);
        assert_eq!(summary.refusal, Some(refusal::SERVICE_NOT_ALLOWED));
        assert!(summary.operations.is_empty());
        let r = records.last().unwrap();
        assert_eq!(r.service.as_deref(), Some("find"));
        assert_eq!(
            r.reason.as_deref(),
            Some("C-FIND is not allowed for this user by rule 'r1' (allowed: echo)")
        );
    }

    #[tokio::test]
    async fn a_command_set_split_over_pdus_and_reads_is_held_whole_until_refused() {
        let rq = associate_rq("VIEWER", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]);
        let cmd = command_set(0x0020, 3, true, &[(0x0002, FIND.as_bytes())]);
        let (a, b) = cmd.split_at(20);
        let mut stream = rq.clone();
        stream.extend(pdata(1, 1, a));
        stream.extend(pdata(1, 3, b));
        let (got, to_pacs, _, summary) =
            run_chunked(stream, (0, Vec::new()), permit(&[DicomService::Echo]), 5).await;
        // Not one byte of either fragment (nor of the PDU headers) reached the PACS.
        let mut want = rq;
        want.extend(pdu::abort());
        assert_eq!(to_pacs, want);
        assert!(got.ends_with(&pdu::abort()));
        assert_eq!(summary.refusal, Some(refusal::SERVICE_NOT_ALLOWED));
    }

    #[tokio::test]
    async fn a_command_set_in_thousands_of_one_byte_fragments_is_refused_not_held_forever() {
        let rq = associate_rq("VIEWER", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]);
        let mut stream = rq.clone();
        for _ in 0..12_000 {
            stream.extend(pdata(1, 1, &[0]));
        }
        let (got, to_pacs, records, summary) =
            run(stream, (0, Vec::new()), permit(&DicomService::DEFAULT)).await;
        assert_eq!(summary.refusal, Some(refusal::MALFORMED_PDU));
        assert!(
            records
                .last()
                .unwrap()
                .reason
                .as_deref()
                .unwrap()
                .contains("held back"),
            "{records:?}"
        );
        assert!(got.ends_with(&pdu::abort()));
        let mut want = rq;
        want.extend(pdu::abort());
        assert_eq!(to_pacs, want);
    }

    #[tokio::test]
    async fn an_allowed_stream_arriving_in_pieces_passes_unchanged() {
        let stream = find_stream();
        let (_, to_pacs, records, summary) = run_chunked(
            stream.clone(),
            (0, Vec::new()),
            permit(&DicomService::DEFAULT),
            3,
        )
        .await;
        assert_eq!(to_pacs, stream);
        assert_eq!(summary.refusal, None);
        assert_eq!(summary.operations.get("find"), Some(&1));
        assert_eq!(records[0].event, "association");
    }

    #[tokio::test]
    async fn an_unknown_calling_title_gets_a_rejection_and_the_pacs_nothing() {
        let rq = associate_rq("EVIL", "PACS", &[(1, FIND, IMPLICIT_VR_LE)]);
        let (got, to_pacs, records, summary) =
            run(rq, (0, Vec::new()), permit(&DicomService::DEFAULT)).await;
        assert_eq!(got, pdu::associate_rj(3));
        assert!(to_pacs.is_empty());
        assert_eq!(summary.refusal, Some(refusal::CALLING_AE_NOT_ALLOWED));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].calling_ae, "EVIL");
    }

    #[tokio::test]
    async fn p_data_before_the_association_is_unexpected() {
        let cmd = command_set(0x0030, 1, false, &[]);
        let (got, _, records, summary) = run(
            pdata(1, 3, &cmd),
            (0, Vec::new()),
            permit(&DicomService::DEFAULT),
        )
        .await;
        assert_eq!(got, pdu::abort());
        assert_eq!(summary.refusal, Some(refusal::UNEXPECTED_PDU));
        assert!(records[0].reason.as_deref().unwrap().contains("P-DATA-TF"));
    }

    /// Mutated and truncated association streams: the relay always ends (no hang, no panic),
    /// and whatever it refuses it answers with an A-ABORT or A-ASSOCIATE-RJ and one of the
    /// refusal codes.
    #[tokio::test]
    async fn mutated_streams_never_hang_or_panic_and_refusals_are_answered() {
        let base = find_stream();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        // `POSTERN_DICOM_MUTATIONS=N` runs N instead (a longer soak by hand).
        let n: usize = std::env::var("POSTERN_DICOM_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        for i in 0..n {
            let mut s = base.clone();
            match i % 3 {
                0 => {
                    for _ in 0..1 + rnd() % 4 {
                        let at = (rnd() as usize) % s.len();
                        s[at] = rnd() as u8;
                    }
                }
                1 => s.truncate((rnd() as usize) % s.len()),
                _ => {
                    let at = (rnd() as usize) % s.len();
                    let junk: Vec<u8> = (0..rnd() % 16).map(|_| rnd() as u8).collect();
                    s.splice(at..at, junk);
                }
            }
            let (got, _, records, summary) =
                run(s, (0, Vec::new()), permit(&DicomService::DEFAULT)).await;
            if let Some(code) = summary.refusal {
                refused += 1;
                assert!(refusal::ALL.contains(&code));
                assert!(
                    got.ends_with(&pdu::abort())
                        || got == pdu::associate_rj(3)
                        || got == pdu::associate_rj(7),
                    "refused with {code} but answered {got:?}"
                );
                let r = records.last().unwrap();
                assert_eq!(r.refusal.as_deref(), Some(code));
            }
        }
        assert!(
            refused > n / 3,
            "only {refused} of {n} mutations were refused"
        );
    }
}
