//! The hash chain: how an event's `hash` is computed from the event before it, and what a
//! checkpoint signs. Pure functions over bytes, shared by the writers and the verifier.
//!
//! **Canonical bytes** of an event are the bytes of its line as stored, without the trailing
//! `\n`, with the final member `,"hash":"<64 hex>"` removed. The writer produces a line by
//! serializing the event with `hash` unset (compact JSON, members in [`crate::Event`]'s
//! declaration order, empty options omitted, `prev` last) and then splicing
//! `,"hash":"<hex>"` in before the closing `}`; so the canonical bytes are exactly what was
//! serialized, and the verifier gets them from the stored line without re-serializing (an
//! older verifier therefore checks lines carrying fields it does not know).
//!
//! **Hash**: `hash = SHA-256( P || C )` where `P` is the previous event's hash as 32 raw bytes
//! (32 zero bytes for the first event of the log) and `C` the canonical bytes. `C` also carries
//! `prev` in hex, so the link is stated in the line and covered by the hash.
//!
//! **Checkpoint signature**: Ed25519 over [`checkpoint_message`].

use ring::digest;
use serde::Deserialize;

use crate::event::AuditMeta;
use crate::hexfmt::{decode_hash, push_hex};

/// `prev` of the first event of a log.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What the writer splices before the hash digits.
const HASH_MEMBER_OPEN: &[u8] = br#","hash":""#;
/// Length of `,"hash":"` + 64 hex digits + `"}`.
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_MEMBER_OPEN.len() + 64 + 2;

/// The chain hash of an event whose canonical bytes are `body` followed by `tail` (the verifier
/// passes the line without its hash member and a closing `}` separately to avoid a copy).
pub(crate) fn chain_hash(prev: &[u8; 32], body: &[u8], tail: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(body);
    ctx.update(tail);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Splits a stored line (without `\n`) into the part before its hash member and the hash it
/// claims. `None` if the line does not end in `,"hash":"<64 lowercase hex>"}`.
pub(crate) fn split_hashed_line(line: &[u8]) -> Option<(&[u8], [u8; 32])> {
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return None;
    }
    let (body, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let digits = suffix
        .strip_prefix(HASH_MEMBER_OPEN)?
        .strip_suffix(br#""}"#)?;
    if !digits
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    let hash = decode_hash(std::str::from_utf8(digits).ok()?)?;
    Some((body, hash))
}

/// The canonical bytes of a stored line, or `None` if it carries no hash member at the end.
pub fn canonical_bytes(line: &[u8]) -> Option<Vec<u8>> {
    let (body, _) = split_hashed_line(line)?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.extend_from_slice(body);
    out.push(b'}');
    Some(out)
}

/// Recomputes the hash of a stored line given the previous hash; `None` if the line has no
/// hash member at the end. Compare with the hash the line claims to detect an edit.
pub fn line_hash(prev: &[u8; 32], line: &[u8]) -> Option<[u8; 32]> {
    let (body, _) = split_hashed_line(line)?;
    Some(chain_hash(prev, body, b"}"))
}

/// Completes a line: `buf[start..]` holds an event serialized without `hash` (ending in `}`);
/// appends the hash member and `\n`, and returns the hash.
pub(crate) fn seal_line(prev: &[u8; 32], buf: &mut Vec<u8>, start: usize) -> [u8; 32] {
    let hash = chain_hash(prev, &buf[start..], b"");
    buf.pop(); // the closing brace; it comes back after the hash member
    buf.extend_from_slice(HASH_MEMBER_OPEN);
    let mut digits = String::with_capacity(64);
    push_hex(&mut digits, &hash);
    buf.extend_from_slice(digits.as_bytes());
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// The exact bytes an `audit.checkpoint` signature covers: ASCII lines joined by `\n`, no
/// trailing newline:
///
/// ```text
/// postern-audit checkpoint v1
/// seq=<the checkpoint's seq, decimal>
/// prev=<the checkpoint's prev, 64 hex>
/// ts=<the checkpoint's ts>
/// node=<the checkpoint's gateway, or empty>
/// reason=<audit.reason>
/// ```
///
/// `prev` commits to every event before the checkpoint, so the signature vouches for all of
/// them.
pub fn checkpoint_message(seq: u64, prev: &str, ts: &str, node: &str, reason: &str) -> Vec<u8> {
    format!(
        "postern-audit checkpoint v1\nseq={seq}\nprev={prev}\nts={ts}\nnode={node}\nreason={reason}"
    )
    .into_bytes()
}

/// The members of a line the chain needs; everything else is skipped while parsing.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ChainView {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub ts: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub audit: Option<AuditMeta>,
    #[serde(default)]
    pub prev: Option<String>,
    #[serde(default)]
    pub hash: Option<String>,
}

impl ChainView {
    pub(crate) fn parse(line: &[u8]) -> Result<ChainView, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hexfmt::hex;

    #[test]
    fn seal_then_split_gives_back_the_canonical_bytes_and_hash() {
        let body = br#"{"v":1,"seq":1,"ts":"t","type":"x","prev":"00"}"#;
        let mut buf = b"junk".to_vec();
        buf.extend_from_slice(body);
        let hash = seal_line(&GENESIS, &mut buf, 4);
        let line = &buf[4..buf.len() - 1];
        assert!(line.ends_with(format!(r#","hash":"{}"}}"#, hex(&hash)).as_bytes()));
        assert_eq!(canonical_bytes(line).unwrap(), body.to_vec());
        assert_eq!(split_hashed_line(line).unwrap().1, hash);
        assert_eq!(line_hash(&GENESIS, line), Some(hash));
        // Definition: SHA-256(prev || canonical).
        let mut direct = GENESIS.to_vec();
        direct.extend_from_slice(body);
        assert_eq!(
            digest::digest(&digest::SHA256, &direct).as_ref(),
            hash.as_slice()
        );
        assert_ne!(line_hash(&[1u8; 32], line), Some(hash));
    }

    #[test]
    fn lines_without_a_proper_hash_member_do_not_split() {
        assert!(split_hashed_line(b"{}").is_none());
        assert!(split_hashed_line(br#"{"v":1,"type":"x"}"#).is_none());
        let upper = format!(r#"{{"v":1,"hash":"{}"}}"#, "A".repeat(64));
        assert!(split_hashed_line(upper.as_bytes()).is_none());
        let short = format!(r#"{{"v":1,"hash":"{}"}}"#, "a".repeat(63));
        assert!(split_hashed_line(short.as_bytes()).is_none());
    }
}
