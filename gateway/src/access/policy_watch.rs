//! Live policy reload: on SIGHUP (the gateway's signal task calls [`reload`]) and when the
//! policy file changes (polled, debounced).
//!
//! A new policy is parsed and validated off the async threads. If it is invalid the running
//! policy stays, and `policy.rejected` records the errors. If it is valid it is swapped in
//! atomically, `policy.reloaded` records the old and new versions, and every live session is
//! re-evaluated against it at once (continuous authorization; see `sessions`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use postern_audit::EventType;
use postern_policy::Policy;
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use super::Access;

/// How often the policy file's metadata is looked at.
const POLL: Duration = Duration::from_millis(250);

/// How long a changed policy must stay exactly the same (names, sizes and bytes) before it is
/// loaded: longer than an editor's in-place rewrite or a slow copy takes, so that a file is
/// not loaded while it is empty or half-written (issue #12). An invalid one would be refused
/// anyway; this keeps a valid *prefix* of the new file (fewer rules) from being loaded.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// What identifies a version of the policy on disk: (name, mtime, length, hash of the bytes)
/// of the file, or of every `*.toml` in the directory. The bytes are hashed because an
/// in-place rewrite can keep the length, and the mtime's granularity can hide a second write.
/// Files larger than the policy limit are not read (loading refuses them anyway).
type Snapshot = Vec<(String, Option<SystemTime>, u64, u64)>;

fn snapshot(path: &Path) -> Snapshot {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        let len = m.as_ref().map_or(0, |m| m.len());
        let hash = if len <= postern_policy::MAX_FILE_BYTES as u64 {
            std::fs::read(p).ok().map_or(0, |bytes| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            })
        } else {
            0
        };
        (
            p.display().to_string(),
            m.as_ref().and_then(|m| m.modified().ok()),
            len,
            hash,
        )
    };
    if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .map(|p| one(&p))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![one(path)]
    }
}

/// The watcher's decision, without I/O: fed what the file looks like at each poll and when,
/// it says when to load. A change is loaded once it has been seen unchanged for [`DEBOUNCE`];
/// every further change restarts the wait.
#[derive(Debug)]
pub struct Debounce<S> {
    loaded: S,
    pending: Option<(S, Instant)>,
    wait: Duration,
}

impl<S: PartialEq> Debounce<S> {
    /// `loaded`: what the running policy was read from.
    pub fn new(loaded: S, wait: Duration) -> Self {
        Debounce {
            loaded,
            pending: None,
            wait,
        }
    }

    /// What the file looks like `now`; true when it should be loaded (it has then become the
    /// loaded version, whether the load succeeds or is refused: a refused version is not
    /// retried until it changes again).
    pub fn observe(&mut self, seen: S, now: Instant) -> bool {
        if seen == self.loaded {
            self.pending = None;
            return false;
        }
        match self.pending.take() {
            Some((pending, since)) if pending == seen => {
                if now.saturating_duration_since(since) >= self.wait {
                    self.loaded = seen;
                    true
                } else {
                    self.pending = Some((pending, since));
                    false
                }
            }
            _ => {
                self.pending = Some((seen, now));
                false
            }
        }
    }
}

/// Loads the policy again; returns true if a new version was swapped in.
pub async fn reload(access: &Access, path: &Path, trigger: &str) -> bool {
    let path = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Policy::from_file(&path)).await;
    let new = match loaded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let errors = e.to_string();
            warn!(%trigger, errors = %errors, "policy rejected; keeping the running policy");
            access
                .metrics
                .policy_reloads
                .with_label_values(&["rejected"])
                .inc();
            let mut ev = access.audit.event(EventType::PolicyRejected);
            ev.detail = Some(format!(
                "{trigger}: kept {}; errors:\n{}",
                access.policy().version(),
                errors.chars().take(8192).collect::<String>()
            ));
            access.audit.record_nowait(ev);
            return false;
        }
        Err(e) => {
            warn!(error = %e, "policy reload task failed");
            return false;
        }
    };
    let old = access.policy();
    if old.version() == new.version() {
        return false;
    }
    let new = Arc::new(new);
    access.set_policy(new.clone());
    access
        .metrics
        .policy_reloads
        .with_label_values(&["ok"])
        .inc();
    access.metrics.set_policy_version(new.version());
    let recheck = access
        .sessions
        .reevaluate(&new, &access.audit, "policy reloaded");
    info!(
        %trigger,
        old = old.version(),
        new = new.version(),
        sessions = recheck.checked,
        terminated = recheck.terminated,
        "policy reloaded"
    );
    let mut ev = access.audit.event(EventType::PolicyReloaded);
    ev.detail = Some(format!(
        "{trigger}: {} -> {}; {} live sessions re-evaluated, {} terminated, {} shortened",
        old.version(),
        new.version(),
        recheck.checked,
        recheck.terminated,
        recheck.shortened
    ));
    access.audit.record_nowait(ev);
    true
}

/// Reloads when the policy file (or directory) `path` changes and has then stayed the same
/// (size and content) for [`DEBOUNCE`], so a half-written file is not loaded; an invalid one is
/// refused anyway, the running policy stays, and the refusal is logged, audited
/// (`policy.rejected`) and counted.
pub async fn watch_file(access: Arc<Access>, path: PathBuf, shutdown: CancellationToken) {
    let mut debounce = Debounce::new(snapshot(&path), DEBOUNCE);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {},
            _ = shutdown.cancelled() => return,
        }
        if debounce.observe(snapshot(&path), Instant::now()) {
            reload(&access, &path, "file changed").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_loaded_once_it_has_stayed_the_same_for_the_debounce() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Debounce::new("v1", Duration::from_secs(1));
        assert!(!d.observe("v1", at(0)), "unchanged");
        // Truncated for 0.4 s, then rewritten: the empty file is never loaded.
        assert!(!d.observe("", at(250)));
        assert!(!d.observe("", at(500)));
        assert!(!d.observe("half", at(750)));
        assert!(!d.observe("v2", at(1000)));
        assert!(!d.observe("v2", at(1750)), "stable for 0.75 s only");
        assert!(d.observe("v2", at(2000)), "stable for 1 s");
        assert!(!d.observe("v2", at(2250)), "loaded once");
        // A change back to what is loaded cancels the wait.
        assert!(!d.observe("v3", at(3000)));
        assert!(!d.observe("v2", at(3250)));
        assert!(!d.observe("v2", at(5000)));
        // A file that keeps changing is never loaded.
        for i in 0..40u64 {
            let v = if i % 2 == 0 { "a" } else { "b" };
            assert!(!d.observe(v, at(6000 + i * 900)));
        }
    }
}
