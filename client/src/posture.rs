//! Posture facts about this laptop, gathered where the OS exposes them without privileges.
//!
//! Every fact is `true`, `false` or `unknown`; when a fact cannot be determined it is
//! `unknown`, never a guess. The report is self-reported: the gateway has the device key sign
//! it (see `postern_proto::posture`), which proves which device sent it and that it was not
//! altered, not that it is true.
//!
//! Linux: OS from `/etc/os-release`; disk encryption from the block device under `/`
//! (dm-crypt anywhere in its device-mapper chain, `dm/uuid` starting `CRYPT-`; `unknown` when
//! `/` is not on a block device, e.g. btrfs subvolumes, ZFS, overlay); firewall from
//! `firewall-cmd --state` or `ufw status` (both usually need no root for the state; otherwise
//! `unknown`); screen lock from GNOME's `lock-enabled` setting via `gsettings`.
//! macOS: `sw_vers`, `fdesetup status`, the application firewall's global state.
//! Windows and anything else: OS family only; the rest `unknown`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use postern_proto::posture::{Fact, PostureReport};

use crate::ClientError;

/// Runs a command for at most 3 seconds; its stdout if it exited successfully.
async fn run(program: &str, args: &[&str]) -> Option<String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(3), child)
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `NAME` and `VERSION_ID` from os-release text.
pub fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_owned())
            .filter(|v| !v.is_empty())
    };
    (get("NAME"), get("VERSION_ID").or_else(|| get("VERSION")))
}

/// The `major:minor` of the filesystem mounted at `/`, from `/proc/self/mountinfo` text.
pub fn root_device(mountinfo: &str) -> Option<(u32, u32)> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&"/") {
            return None;
        }
        let (maj, min) = f.get(2)?.split_once(':')?;
        Some((maj.parse().ok()?, min.parse().ok()?))
    })
}

/// Whether the block device `sys_dev` (e.g. `/sys/dev/block/253:0`) is dm-crypt or sits on
/// one, following `slaves/` links (LVM on LUKS). None if the device does not exist.
pub fn crypt_in_chain(sys_dev: &Path, depth: usize) -> Option<bool> {
    if depth > 8 || !sys_dev.exists() {
        return None;
    }
    if let Ok(uuid) = std::fs::read_to_string(sys_dev.join("dm").join("uuid")) {
        if uuid.trim().starts_with("CRYPT-") {
            return Some(true);
        }
    }
    let mut found = false;
    if let Ok(entries) = std::fs::read_dir(sys_dev.join("slaves")) {
        for e in entries.flatten() {
            if crypt_in_chain(&e.path(), depth + 1) == Some(true) {
                found = true;
            }
        }
    }
    Some(found)
}

fn linux_disk_encrypted() -> Fact {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Fact::Unknown;
    };
    match root_device(&mi) {
        // Major 0: not a block device (overlay, tmpfs, btrfs subvolume, ZFS): cannot tell.
        Some((0, _)) | None => Fact::Unknown,
        Some((maj, min)) => {
            let dev = Path::new("/sys/dev/block").join(format!("{maj}:{min}"));
            Fact::from_bool(crypt_in_chain(&dev, 0))
        }
    }
}

/// Firewall state from `firewall-cmd --state` / `ufw status` output.
pub fn firewall_from(firewalld: Option<&str>, ufw: Option<&str>) -> Fact {
    match firewalld {
        Some("running") => return Fact::True,
        Some("not running") => return Fact::False,
        _ => {}
    }
    match ufw {
        Some(s) if s.starts_with("Status: active") => Fact::True,
        Some(s) if s.starts_with("Status: inactive") => Fact::False,
        _ => Fact::Unknown,
    }
}

fn bool_text(s: Option<&str>) -> Fact {
    match s {
        Some("true") => Fact::True,
        Some("false") => Fact::False,
        _ => Fact::Unknown,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Gathers this machine's posture.
pub async fn collect() -> PostureReport {
    let mut facts = BTreeMap::new();
    let (os, name, version);
    if cfg!(target_os = "linux") {
        os = "linux";
        let (n, v) = std::fs::read_to_string("/etc/os-release")
            .map(|t| parse_os_release(&t))
            .unwrap_or((None, None));
        name = n;
        version = v;
        facts.insert("disk_encrypted".to_owned(), linux_disk_encrypted());
        let fwd = run("firewall-cmd", &["--state"]).await;
        let ufw = if fwd.is_none() {
            run("ufw", &["status"]).await
        } else {
            None
        };
        facts.insert(
            "firewall".to_owned(),
            firewall_from(fwd.as_deref(), ufw.as_deref()),
        );
        let lock = run(
            "gsettings",
            &["get", "org.gnome.desktop.screensaver", "lock-enabled"],
        )
        .await;
        facts.insert("screen_lock".to_owned(), bool_text(lock.as_deref()));
    } else if cfg!(target_os = "macos") {
        os = "macos";
        name = Some("macOS".to_owned());
        version = run("sw_vers", &["-productVersion"]).await;
        let fv = run("fdesetup", &["status"]).await;
        facts.insert(
            "disk_encrypted".to_owned(),
            match fv.as_deref() {
                Some(s) if s.contains("FileVault is On") => Fact::True,
                Some(s) if s.contains("FileVault is Off") => Fact::False,
                _ => Fact::Unknown,
            },
        );
        let fw = run(
            "/usr/libexec/ApplicationFirewall/socketfilterfw",
            &["--getglobalstate"],
        )
        .await;
        facts.insert(
            "firewall".to_owned(),
            match fw.as_deref() {
                Some(s) if s.contains("enabled") => Fact::True,
                Some(s) if s.contains("disabled") => Fact::False,
                _ => Fact::Unknown,
            },
        );
        facts.insert("screen_lock".to_owned(), Fact::Unknown);
    } else {
        os = if cfg!(windows) { "windows" } else { "unknown" };
        name = None;
        version = None;
        for f in postern_proto::posture::FACTS {
            facts.insert(f.to_owned(), Fact::Unknown);
        }
    }
    let clip = |s: Option<String>| {
        s.map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
    };
    PostureReport {
        os: os.to_owned(),
        os_name: clip(name),
        os_version: clip(version),
        facts,
        collected_at: now(),
    }
}

/// A report from a file (`--posture-file`, `POSTERN_POSTURE_FILE`): for tests and for sites
/// that gather posture with their own agent.
pub fn from_file(path: &Path) -> Result<PostureReport, ClientError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ClientError::Setup(format!("reading {}: {e}", path.display())))?;
    PostureReport::parse(&bytes).map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_name_and_version() {
        let t = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\n";
        assert_eq!(
            parse_os_release(t),
            (Some("Ubuntu".into()), Some("24.04".into()))
        );
        assert_eq!(parse_os_release("ID=arch\n"), (None, None));
    }

    #[test]
    fn root_device_from_mountinfo() {
        let mi = "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n23 22 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(root_device(mi), Some((253, 1)));
        let overlay = "500 400 0:45 / / rw - overlay overlay rw\n";
        assert_eq!(root_device(overlay), Some((0, 45)));
        assert_eq!(root_device(""), None);
    }

    #[test]
    fn crypt_found_through_slaves() {
        // A fake sysfs: dm-1 (LVM) on dm-0 (LUKS) on sda2.
        let d = tempfile::tempdir().unwrap();
        let lvm = d.path().join("253:1");
        let luks = d.path().join("dm-0");
        let plain = d.path().join("sda2");
        std::fs::create_dir_all(lvm.join("dm")).unwrap();
        std::fs::create_dir_all(lvm.join("slaves")).unwrap();
        std::fs::write(lvm.join("dm/uuid"), "LVM-abc\n").unwrap();
        std::fs::create_dir_all(luks.join("dm")).unwrap();
        std::fs::write(luks.join("dm/uuid"), "CRYPT-LUKS2-123-luks\n").unwrap();
        std::os::unix::fs::symlink(&luks, lvm.join("slaves/dm-0")).unwrap();
        std::fs::create_dir_all(&plain).unwrap();
        assert_eq!(crypt_in_chain(&lvm, 0), Some(true));
        assert_eq!(crypt_in_chain(&plain, 0), Some(false));
        assert_eq!(crypt_in_chain(&d.path().join("nope"), 0), None);
    }

    #[test]
    fn firewall_states() {
        assert_eq!(firewall_from(Some("running"), None), Fact::True);
        assert_eq!(firewall_from(Some("not running"), None), Fact::False);
        assert_eq!(firewall_from(None, Some("Status: active\n...")), Fact::True);
        assert_eq!(firewall_from(None, Some("Status: inactive")), Fact::False);
        assert_eq!(firewall_from(None, None), Fact::Unknown);
        assert_eq!(bool_text(Some("maybe")), Fact::Unknown);
    }

    #[tokio::test]
    async fn collected_report_is_valid() {
        let r = collect().await;
        r.validate().unwrap();
        assert_eq!(r.facts.len(), 3, "{r:?}");
        assert!(r.collected_at > 0);
    }
}
