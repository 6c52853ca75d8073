//! File helpers shared by the gateway, connector, client and demo for keys, tokens and state:
//! private directories (0700) and atomic replacement of files with a given mode (0600 for
//! secrets), fsynced before the rename.
//!
//! Windows (the client only): there are no mode bits; a new file or directory takes the access
//! control list it inherits from its parent. The client keeps its files under `%APPDATA%`, in
//! the user's profile, whose list grants the user, SYSTEM and Administrators only (see
//! docs/windows.md). `mode` is ignored there.

use std::fs::{self, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(dir)
}

/// Atomically writes `data` to `path` with `mode` (write to a temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut o = OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(mode);
        let mut f = o.open(&tmp)?;
        #[cfg(unix)]
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        #[cfg(not(unix))]
        let _ = mode;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
