//! Bounded fuzzing of the reader and verifier: random mutations of a valid signed log, and
//! random bytes. Nothing panics, and every mutation that changes the log is detected.
//! (`audit/fuzz/` holds a cargo-fuzz target over the same entry point for longer runs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::*;
use postern_audit::verify::{verify_bytes, VerifyOptions};
use postern_audit::HEAD_FILE;

fn iterations() -> u64 {
    std::env::var("POSTERN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Applies one random mutation; returns its name.
fn mutate(rng: &mut Rng, log: &mut Vec<u8>) -> &'static str {
    let len = log.len() as u64;
    let lines: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut start = 0;
        for (i, b) in log.iter().enumerate() {
            if *b == b'\n' {
                v.push((start, i + 1));
                start = i + 1;
            }
        }
        v
    };
    match rng.below(9) {
        0 => {
            let i = rng.below(len) as usize;
            log[i] ^= 1 << rng.below(8);
            "flip a bit"
        }
        1 => {
            let i = rng.below(len) as usize;
            log[i] = rng.below(256) as u8;
            "replace a byte"
        }
        2 => {
            let i = rng.below(len) as usize;
            let n = 1 + rng.below(40) as usize;
            log.drain(i..(i + n).min(log.len()));
            "delete bytes"
        }
        3 => {
            let i = rng.below(len + 1) as usize;
            let n = 1 + rng.below(8);
            for k in 0..n {
                log.insert(i, b" ,:{}\"0a\n"[(rng.below(9) + k) as usize % 9]);
            }
            "insert bytes"
        }
        4 => {
            let a = rng.below(lines.len() as u64) as usize;
            let b = rng.below(lines.len() as u64) as usize;
            let (a, b) = (a.min(b), a.max(b));
            if a == b {
                return "swap nothing";
            }
            let (la, lb) = (lines[a], lines[b]);
            let mut out = log[..la.0].to_vec();
            out.extend_from_slice(&log[lb.0..lb.1]);
            out.extend_from_slice(&log[la.1..lb.0]);
            out.extend_from_slice(&log[la.0..la.1]);
            out.extend_from_slice(&log[lb.1..]);
            *log = out;
            "swap two lines"
        }
        5 => {
            let (s, e) = lines[rng.below(lines.len() as u64) as usize];
            log.drain(s..e);
            "remove a line"
        }
        6 => {
            let (s, e) = lines[rng.below(lines.len() as u64) as usize];
            let copy = log[s..e].to_vec();
            let at = lines[rng.below(lines.len() as u64) as usize].1;
            log.splice(at..at, copy);
            "duplicate a line"
        }
        7 => {
            let keep = rng.below(len) as usize;
            log.truncate(keep);
            "truncate"
        }
        _ => {
            // Change a digit inside the line (a number, a hash, a signature).
            let digits: Vec<usize> = log
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            let i = digits[rng.below(digits.len() as u64) as usize];
            log[i] = b'0' + ((log[i] - b'0' + 1 + rng.below(9) as u8) % 10);
            "change a digit"
        }
    }
}

#[tokio::test]
async fn random_mutations_never_panic_and_are_always_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    signed_log(&dir, &tmp.path().join("state"), 40, 7).await;
    let original = fs::read(first_segment(&dir)).unwrap();
    let head = fs::read_to_string(dir.join(HEAD_FILE)).unwrap();
    let options = VerifyOptions::default();
    assert!(verify_bytes(&[&original], Some(&head), &options).is_ok());
    // What a crash mid-write leaves (CI's fuzz run at baf6e58 made one: `," a` after the
    // closing checkpoint): a torn tail, reported as such, not tampering.
    let torn = [original.as_slice(), b",\" a"].concat();
    let report = verify_bytes(&[&torn], Some(&head), &options);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.torn_tail.map(|t| t.2), Some(4));

    let (mut rng, seed) = Rng::from_time();
    let n = iterations();
    let mut tried = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..n {
        let mut log = original.clone();
        let what = mutate(&mut rng, &mut log);
        if log == original {
            continue;
        }
        *tried.entry(what).or_default() += 1;
        // Split in two segments at a random line boundary sometimes: the same log, rotated.
        let report = if i % 3 == 0 {
            let cut = log
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .nth(rng.below(20) as usize)
                .unwrap_or(log.len());
            verify_bytes(&[&log[..cut], &log[cut..]], Some(&head), &options)
        } else {
            verify_bytes(&[&log], Some(&head), &options)
        };
        // Bytes without a newline added after the last line are what a crash in the middle of
        // a write leaves: reported as a torn tail (a note, not tampering; the writer cuts it
        // and logs `audit.recovered` at its next start), and only then.
        let appended_partial_line =
            log.starts_with(&original) && !log[original.len()..].contains(&b'\n');
        if report.is_ok() && appended_partial_line {
            let torn = log.len() - original.len();
            assert_eq!(
                report.torn_tail.as_ref().map(|t| t.2),
                Some(torn as u64),
                "an appended partial line not reported as a torn tail (seed {seed}, iteration {i})"
            );
            continue;
        }
        assert!(
            !report.is_ok(),
            "undetected mutation {what} (seed {seed}, iteration {i}):\n{}",
            String::from_utf8_lossy(&log)
        );
    }
    println!("fuzz (seed {seed}): {n} mutations, all detected: {tried:?}");
    assert!(tried.values().sum::<u64>() > n / 2);
}

#[test]
fn random_bytes_never_panic() {
    let (mut rng, seed) = Rng::from_time();
    let options = VerifyOptions::default();
    for _ in 0..iterations() {
        let len = rng.below(600) as usize;
        let alphabet = b"{}[]\",:0123456789abcdef \n\\hashprevseqtype.";
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.below(256) as u8
                } else {
                    alphabet[rng.below(alphabet.len() as u64) as usize]
                }
            })
            .collect();
        let head = String::from_utf8_lossy(&bytes[..len / 3]).into_owned();
        let _ = verify_bytes(&[&bytes], None, &options);
        let _ = verify_bytes(
            &[&bytes[..len / 2], &bytes[len / 2..]],
            Some(&head),
            &options,
        );
    }
    println!("random bytes (seed {seed}): no panic");
}
