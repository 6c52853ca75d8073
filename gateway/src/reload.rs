//! Live policy reload: on SIGHUP and when the policy file changes (polled, debounced). SIGHUP
//! also reloads the client-facing certificate files, if configured (see `server_cert`).
//!
//! A new policy is parsed and validated off the async threads. If it is invalid the running
//! policy stays, and `policy.rejected` records the errors. If it is valid it is swapped in
//! atomically, `policy.reloaded` records the old and new versions, and every live session is
//! re-evaluated against it at once (continuous authorization; see `sessions`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_audit::EventType;
use postern_policy::Policy;
use tracing::{info, warn};

use crate::Gateway;

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
pub async fn reload(gw: &Arc<Gateway>, trigger: &str) -> bool {
    let path = gw.config.policy.clone();
    let loaded = tokio::task::spawn_blocking(move || Policy::from_file(&path)).await;
    let new = match loaded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let errors = e.to_string();
            warn!(%trigger, errors = %errors, "policy rejected; keeping the running policy");
            gw.metrics
                .policy_reloads
                .with_label_values(&["rejected"])
                .inc();
            let mut ev = gw.event(EventType::PolicyRejected);
            ev.detail = Some(format!(
                "{trigger}: kept {}; errors:\n{}",
                gw.policy().version(),
                errors.chars().take(8192).collect::<String>()
            ));
            gw.audit.record_nowait(ev);
            return false;
        }
        Err(e) => {
            warn!(error = %e, "policy reload task failed");
            return false;
        }
    };
    let old = gw.policy();
    if old.version() == new.version() {
        return false;
    }
    let new = Arc::new(new);
    match gw.policy.write() {
        Ok(mut p) => *p = new.clone(),
        Err(poisoned) => *poisoned.into_inner() = new.clone(),
    }
    gw.metrics.policy_reloads.with_label_values(&["ok"]).inc();
    gw.metrics.set_policy_version(new.version());
    let recheck = gw.sessions.reevaluate(gw, &new, "policy reloaded");
    info!(
        %trigger,
        old = old.version(),
        new = new.version(),
        sessions = recheck.checked,
        terminated = recheck.terminated,
        "policy reloaded"
    );
    let mut ev = gw.event(EventType::PolicyReloaded);
    ev.detail = Some(format!(
        "{trigger}: {} -> {}; {} live sessions re-evaluated, {} terminated, {} shortened",
        old.version(),
        new.version(),
        recheck.checked,
        recheck.terminated,
        recheck.shortened
    ));
    gw.audit.record_nowait(ev);
    true
}

/// Reloads when the policy file (or directory) changes. A change must be seen twice in a row
/// (debounce) so a half-written file is not loaded; an invalid one is rejected anyway.
pub async fn watch_file(gw: Arc<Gateway>) {
    let path = gw.config.policy.clone();
    let mut loaded = fingerprint(&path);
    let mut pending: Option<Vec<_>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {},
            _ = gw.shutdown.cancelled() => return,
        }
        let now = fingerprint(&path);
        if now == loaded {
            pending = None;
            continue;
        }
        if pending.as_ref() == Some(&now) {
            reload(&gw, "file changed").await;
            loaded = now;
            pending = None;
        } else {
            pending = Some(now);
        }
    }
}

/// Reloads on SIGHUP.
pub async fn on_sighup(gw: Arc<Gateway>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; reload by editing the policy file");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = gw.shutdown.cancelled() => return,
        }
        reload(&gw, "SIGHUP").await;
        crate::server_cert::reload(&gw, "SIGHUP").await;
    }
}
