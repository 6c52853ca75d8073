//! The first open of the SQLite store imports a `state.json` left by an older version: every
//! record in one transaction, then the file is moved aside to `state.json.migrated` (kept,
//! mode 0600, as a backup). The store remembers the import (the file's SHA-256), so a crash
//! between the commit and the move finishes the move on the next open, and a different
//! `state.json` appearing later is refused rather than mixed in.

use std::path::{Path, PathBuf};

use super::rules::Tables;
use super::sql::SqlStore;
use super::{JsonMigration, StoreError};

/// The `store_meta` row recording the import.
const MARKER: &str = "state_json_import";

pub(super) async fn run(store: &SqlStore, dir: &Path) -> Result<Option<JsonMigration>, StoreError> {
    let path = dir.join("state.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let digest = postern_proto::ids::sha256_hex(&bytes);
    let tables: Tables = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        message: format!("{e} (not imported; the store was not changed)"),
    })?;
    match store.meta(MARKER).await? {
        // Imported already; the move did not happen (a crash in between).
        Some(m) if m.split(' ').next() == Some(digest.as_str()) => {}
        Some(_) => {
            return Err(StoreError::Corrupt {
                path,
                message: "the store already imported a different state.json; this one was not imported (move it away, or import it by hand)".into(),
            })
        }
        None => {
            if store.record_count().await? > 0 {
                return Err(StoreError::Corrupt {
                    path,
                    message: "state.json and the database both hold state; this file was not imported (move it away to keep the database's)".into(),
                });
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            store.import(&tables, (MARKER, &format!("{digest} {now}"))).await?;
        }
    }
    let backup = free_name(dir);
    std::fs::rename(&path, &backup).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(JsonMigration {
        backup,
        summary: summary(&tables),
    }))
}

/// `state.json.migrated`, or with a number if an earlier backup is there.
fn free_name(dir: &Path) -> PathBuf {
    let first = dir.join("state.json.migrated");
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("state.json.migrated.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

pub(super) fn summary(t: &Tables) -> String {
    let parts = [
        (t.connectors.len(), "connector", "connectors"),
        (t.devices.len(), "device", "devices"),
        (t.enroll_tokens.len(), "enrolment token", "enrolment tokens"),
        (
            t.revoked_tokens.len(),
            "revoked session token",
            "revoked session tokens",
        ),
        (t.revoked_users.len(), "revoked user", "revoked users"),
        (
            t.cli_codes.len() + t.ceremonies.len(),
            "sign-in in flight",
            "sign-ins in flight",
        ),
    ];
    parts
        .iter()
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect::<Vec<_>>()
        .join(", ")
}
