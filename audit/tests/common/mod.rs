//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub mod clinical;

use postern_audit::{
    AuditKey, AuditLog, AuditOptions, DecisionRef, DeviceRef, EndpointRef, Event, EventType,
};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_postern-audit")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

pub fn session_event(kind: EventType, user: &str, session: &str) -> Event {
    Event {
        session_id: Some(session.to_owned()),
        user: Some(user.to_owned()),
        user_email: Some(format!("{user}@nhs.example")),
        device: Some(DeviceRef {
            id: format!("dev-{user}"),
            name: None,
            user_verified: Some(true),
        }),
        endpoint: Some(EndpointRef {
            name: "truro-pacs".into(),
            site: "truro".into(),
            host: "10.1.2.3".into(),
            port: 104,
            protocol: "dicom".into(),
        }),
        decision: Some(DecisionRef {
            effect: "allow".into(),
            rule: Some("radiologists".into()),
            policy_version: Some("v1".into()),
            reason: "group radiologists".into(),
            ..DecisionRef::default()
        }),
        ..Event::new(kind)
    }
}

/// Options with a fresh key kept in `key_dir`, checkpoints every `every` events.
pub fn signed_options(key_dir: &Path, every: u64) -> AuditOptions {
    AuditOptions {
        signing_key: Some(AuditKey::load_or_create(key_dir).unwrap()),
        checkpoint_events: every,
        node_id: Some("gw-test".into()),
        ..AuditOptions::default()
    }
}

/// Writes `n` session events with a signed checkpoint every `every` events, then closes.
pub async fn signed_log(dir: &Path, key_dir: &Path, n: usize, every: u64) {
    let log = AuditLog::open_with(dir, signed_options(key_dir, every))
        .await
        .unwrap();
    for i in 0..n {
        let kind = if i % 2 == 0 {
            EventType::SessionStart
        } else {
            EventType::SessionEnd
        };
        log.record(session_event(
            kind,
            &format!("user{}", i % 3),
            &format!("s{}", i / 2),
        ))
        .await
        .unwrap();
    }
    log.close().await.unwrap();
}

/// Copies a log directory (segments, audit.head) to a new place.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The lines of a segment, each with its `\n`.
pub fn segment_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

pub fn first_segment(dir: &Path) -> PathBuf {
    dir.join("audit.jsonl")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic PRNG (xorshift64*), so tests need no extra crate and print their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn from_time() -> (Rng, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        (Rng::new(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
