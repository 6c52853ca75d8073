//! A checkpoint as a single self-contained line, for an outside witness.
//!
//! `postern-audit checkpoint DIR` prints the latest one; the writer keeps the latest in
//! `DIR/audit.head`; `postern-audit verify --witness FILE` checks that the log still contains
//! every checkpoint listed in FILE. Someone who holds a witness line and the public key can
//! prove that the log reached `seq` with exactly this history, whatever happens to the log later.

use serde::{Deserialize, Serialize};

use crate::chain::checkpoint_message;
use crate::event::{Event, EventType};
use crate::hexfmt::decode_hex;
use crate::key::AuditPublicKey;

/// Value of [`Witness::format`].
pub const WITNESS_FORMAT: &str = "postern-audit-checkpoint/1";

/// One signed checkpoint, detached from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    /// Always [`WITNESS_FORMAT`].
    pub format: String,
    /// `seq` of the checkpoint event.
    pub seq: u64,
    /// `ts` of the checkpoint event.
    pub ts: String,
    /// `gateway` of the checkpoint event (empty if none).
    pub node: String,
    /// Why it was written (`count`, `interval`, `rotate`, `close`, `truncation`).
    pub reason: String,
    /// Hash of the event before the checkpoint: commits to the whole log up to it.
    pub prev: String,
    /// Hash of the checkpoint event itself.
    pub hash: String,
    /// Public key (hex) that made the signature.
    pub key: String,
    /// Ed25519 signature (hex) over [`checkpoint_message`].
    pub sig: String,
}

impl Witness {
    /// The witness of a chained `audit.checkpoint` event; `None` for any other event.
    pub fn from_event(event: &Event) -> Option<Witness> {
        if event.kind != EventType::AuditCheckpoint.as_str() {
            return None;
        }
        let audit = event.audit.as_ref()?;
        Some(Witness {
            format: WITNESS_FORMAT.to_owned(),
            seq: event.seq?,
            ts: event.ts.clone(),
            node: event.gateway.clone().unwrap_or_default(),
            reason: audit.reason.clone()?,
            prev: event.prev.clone()?,
            hash: event.hash.clone()?,
            key: audit.key.clone()?,
            sig: audit.sig.clone()?,
        })
    }

    /// What `audit.head` holds before the first checkpoint: `seq` 0, reason `none`, no
    /// signature. Written when a signing writer first opens a log, so that from then on the file
    /// always exists (it is only ever replaced by rename), and a missing `audit.head` next to
    /// signed checkpoints means someone removed it, not that a crash came at a bad moment.
    pub fn none(node: &str, key: &str, ts: &str) -> Witness {
        Witness {
            format: WITNESS_FORMAT.to_owned(),
            seq: 0,
            ts: ts.to_owned(),
            node: node.to_owned(),
            reason: "none".to_owned(),
            prev: String::new(),
            hash: String::new(),
            key: key.to_owned(),
            sig: String::new(),
        }
    }

    /// Parses one witness line (JSON).
    pub fn parse(line: &str) -> Result<Witness, String> {
        let w: Witness = serde_json::from_str(line.trim()).map_err(|e| e.to_string())?;
        if w.format != WITNESS_FORMAT {
            return Err(format!("unknown witness format {:?}", w.format));
        }
        Ok(w)
    }

    /// The line `postern-audit checkpoint` prints (JSON, no newline).
    pub fn to_line(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The bytes the signature covers.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.prev, &self.ts, &self.node, &self.reason)
    }

    /// Whether the signature is `key`'s.
    pub fn signature_valid(&self, key: &AuditPublicKey) -> bool {
        match decode_hex(&self.sig) {
            Some(sig) => key.verify(&self.message(), &sig),
            None => false,
        }
    }
}
