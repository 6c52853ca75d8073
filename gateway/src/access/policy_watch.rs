//! Live policy reload: on SIGHUP (the gateway's signal task calls [`reload`]) and when the
//! policy file changes (polled, debounced).
//!
//! A new policy is parsed and validated off the async threads. If it is invalid the running
//! policy stays, and `policy.rejected` records the errors. If it is valid it is swapped in
//! atomically, `policy.reloaded` records the old and new versions, and every live session is
//! re-evaluated against it at once (continuous authorization; see `sessions`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_audit::EventType;
use postern_policy::Policy;
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use super::Access;

/// How often the policy file's metadata is looked at.
const POLL: Duration = Duration::from_millis(250);

/// What identifies a version of the policy on disk without reading it: (name, mtime, length) of
/// the file, or of every `*.toml` in the directory.
fn fingerprint(path: &Path) -> Vec<(String, Option<SystemTime>, u64)> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.display().to_string(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map(|m| m.len()).unwrap_or(0),
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

/// Reloads when the policy file (or directory) `path` changes. A change must be seen twice in
/// a row (debounce) so a half-written file is not loaded; an invalid one is rejected anyway.
pub async fn watch_file(access: Arc<Access>, path: PathBuf, shutdown: CancellationToken) {
    let mut loaded = fingerprint(&path);
    let mut pending: Option<Vec<_>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {},
            _ = shutdown.cancelled() => return,
        }
        let now = fingerprint(&path);
        if now == loaded {
            pending = None;
            continue;
        }
        if pending.as_ref() == Some(&now) {
            reload(&access, &path, "file changed").await;
            loaded = now;
            pending = None;
        } else {
            pending = Some(now);
        }
    }
}
