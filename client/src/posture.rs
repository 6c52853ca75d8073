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
//! `unknown`); screen lock from GNOME's settings via `gsettings`, only inside a graphical GNOME
//! session (see [`gnome_screen_lock`]): elsewhere `unknown`.
//! macOS (built from the same code, not tested in CI): `sw_vers`, `fdesetup status`, the
//! application firewall's global state; screen lock `unknown`.
//! Windows: see [`windows`] (registry, `netsh`, `powercfg`, PowerShell; no admin rights).
//! Anything else: OS family only; the rest `unknown`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use postern_proto::posture::{Fact, PostureReport};

use crate::ClientError;

pub mod windows;

/// What a command printed, when it ran to completion.
pub(crate) struct Ran {
    /// It exited with status 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command for at most `limit` (killed after); None if it could not start or took
/// longer.
pub(crate) async fn run_full(program: &str, args: &[&str], limit: Duration) -> Option<Ran> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, child).await.ok()?.ok()?;
    Some(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a command for at most 3 seconds; its stdout if it exited successfully.
async fn run(program: &str, args: &[&str]) -> Option<String> {
    run_full(program, args, Duration::from_secs(3))
        .await
        .filter(|r| r.ok)
        .map(|r| r.stdout.trim().to_owned())
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

/// The desktop session this process runs in, as its environment describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesktopSession {
    /// A graphical (X11 or Wayland) session, not a text console or SSH login.
    pub graphical: bool,
    /// GNOME (or a desktop built on it) — the one that honours
    /// `org.gnome.desktop.screensaver` settings.
    pub gnome: bool,
}

impl DesktopSession {
    /// From `XDG_SESSION_TYPE`, `WAYLAND_DISPLAY`, `DISPLAY` and `XDG_CURRENT_DESKTOP`
    /// (`var` looks a variable up).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> DesktopSession {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let graphical = match var("XDG_SESSION_TYPE").as_deref() {
            Some("x11") | Some("wayland") => true,
            // A text console or SSH login, even with a forwarded DISPLAY.
            Some(_) => false,
            None => var("WAYLAND_DISPLAY").is_some() || var("DISPLAY").is_some(),
        };
        let gnome = var("XDG_CURRENT_DESKTOP").is_some_and(|d| {
            d.split(':')
                .any(|c| c.eq_ignore_ascii_case("GNOME") || c.eq_ignore_ascii_case("Unity"))
        });
        DesktopSession { graphical, gnome }
    }
}

/// GSettings answers from its in-memory backend (no dconf: nothing is stored, the values are
/// the schemas' defaults) and says so on stderr.
pub fn gsettings_memory_backend(stderr: &str) -> bool {
    stderr.contains("'memory' GSettings backend")
}

/// Whether the screen locks by itself, on Linux: only a graphical GNOME session applies the
/// `org.gnome.*` settings, so anywhere else (a headless machine where the schemas happen to be
/// installed, SSH, KDE, …) the answer is `unknown`, never the schema's default. In GNOME:
/// `false` if the lock screen is disabled (`org.gnome.desktop.lockdown disable-lock-screen`),
/// the screen saver does not lock (`org.gnome.desktop.screensaver lock-enabled`) or the
/// session never goes idle (`org.gnome.desktop.session idle-delay` 0); `true` when all three
/// allow it; `unknown` when an answer is missing. Arguments are `gsettings get` outputs
/// (`true`, `uint32 300`), None when it failed or answered from its memory backend.
pub fn gnome_screen_lock(
    session: DesktopSession,
    lock_enabled: Option<&str>,
    idle_delay: Option<&str>,
    lock_disabled: Option<&str>,
) -> Fact {
    if !(session.graphical && session.gnome) {
        return Fact::Unknown;
    }
    let flag = |s: Option<&str>| match s.map(str::trim) {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    };
    let idle = idle_delay
        .map(str::trim)
        .map(|s| s.strip_prefix("uint32 ").unwrap_or(s))
        .and_then(|s| s.parse::<u64>().ok());
    let (enabled, disabled) = (flag(lock_enabled), flag(lock_disabled));
    if disabled == Some(true) || enabled == Some(false) || idle == Some(0) {
        return Fact::False;
    }
    match (enabled, idle, disabled) {
        (Some(true), Some(_), Some(false)) => Fact::True,
        _ => Fact::Unknown,
    }
}

async fn gsettings(schema: &str, key: &str) -> Option<String> {
    let r = run_full("gsettings", &["get", schema, key], Duration::from_secs(3)).await?;
    (r.ok && !gsettings_memory_backend(&r.stderr)).then(|| r.stdout.trim().to_owned())
}

async fn linux_screen_lock() -> Fact {
    let session = DesktopSession::from_env(|k| std::env::var(k).ok());
    if !(session.graphical && session.gnome) {
        return Fact::Unknown;
    }
    let (enabled, idle, disabled) = tokio::join!(
        gsettings("org.gnome.desktop.screensaver", "lock-enabled"),
        gsettings("org.gnome.desktop.session", "idle-delay"),
        gsettings("org.gnome.desktop.lockdown", "disable-lock-screen"),
    );
    gnome_screen_lock(
        session,
        enabled.as_deref(),
        idle.as_deref(),
        disabled.as_deref(),
    )
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
        facts.insert("screen_lock".to_owned(), linux_screen_lock().await);
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
    } else if cfg!(windows) {
        os = "windows";
        (name, version, facts) = windows::collect().await;
    } else {
        os = "unknown";
        name = None;
        version = None;
        for f in postern_proto::posture::FACTS {
            facts.insert(f.to_owned(), Fact::Unknown);
        }
    }
    PostureReport {
        os: os.to_owned(),
        os_name: clip(name),
        os_version: clip(version),
        facts,
        collected_at: now(),
    }
}

/// A name or version for the report: printable characters only, at most 64 bytes (what the
/// gateway accepts; a longer text is cut at a character boundary), `unknown` when empty.
fn clip(s: Option<String>) -> String {
    let mut out = String::new();
    for c in s
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control())
    {
        if out.len() + c.len_utf8() > 64 {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_owned();
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out
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

    #[cfg(unix)]
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
    }

    use crate::platform::test_env as env;

    #[test]
    fn desktop_sessions() {
        let gnome_wayland = DesktopSession::from_env(env(&[
            ("XDG_SESSION_TYPE", "wayland"),
            ("XDG_CURRENT_DESKTOP", "ubuntu:GNOME"),
        ]));
        assert_eq!(
            gnome_wayland,
            DesktopSession {
                graphical: true,
                gnome: true
            }
        );
        // No session type, but a display: graphical.
        let x =
            DesktopSession::from_env(env(&[("DISPLAY", ":0"), ("XDG_CURRENT_DESKTOP", "GNOME")]));
        assert!(x.graphical && x.gnome);
        // SSH with X forwarding: a tty session, whatever DISPLAY says.
        let ssh = DesktopSession::from_env(env(&[
            ("XDG_SESSION_TYPE", "tty"),
            ("DISPLAY", "localhost:10.0"),
        ]));
        assert!(!ssh.graphical);
        // A headless machine: nothing set.
        let headless = DesktopSession::from_env(env(&[("HOME", "/root")]));
        assert!(!headless.graphical && !headless.gnome);
        let kde = DesktopSession::from_env(env(&[
            ("XDG_SESSION_TYPE", "x11"),
            ("XDG_CURRENT_DESKTOP", "KDE"),
        ]));
        assert!(kde.graphical && !kde.gnome);
    }

    #[test]
    fn screen_lock_only_from_a_gnome_session() {
        let gnome = DesktopSession {
            graphical: true,
            gnome: true,
        };
        // What `gsettings` answers on a headless machine with the schemas installed: the
        // defaults. It is not this user's session: unknown (it used to say `true`).
        let headless = DesktopSession {
            graphical: false,
            gnome: false,
        };
        let defaults = (Some("true"), Some("uint32 300"), Some("false"));
        assert_eq!(
            gnome_screen_lock(headless, defaults.0, defaults.1, defaults.2),
            Fact::Unknown
        );
        let kde = DesktopSession {
            graphical: true,
            gnome: false,
        };
        assert_eq!(
            gnome_screen_lock(kde, defaults.0, defaults.1, defaults.2),
            Fact::Unknown
        );
        // In GNOME, the settings GNOME applies.
        assert_eq!(
            gnome_screen_lock(gnome, defaults.0, defaults.1, defaults.2),
            Fact::True
        );
        assert_eq!(
            gnome_screen_lock(gnome, Some("false"), Some("uint32 300"), Some("false")),
            Fact::False
        );
        // Never idle: never locks by itself.
        assert_eq!(
            gnome_screen_lock(gnome, Some("true"), Some("uint32 0"), Some("false")),
            Fact::False
        );
        assert_eq!(
            gnome_screen_lock(gnome, Some("true"), Some("uint32 300"), Some("true")),
            Fact::False
        );
        // An answer missing or odd: unknown.
        assert_eq!(
            gnome_screen_lock(gnome, Some("true"), None, Some("false")),
            Fact::Unknown
        );
        assert_eq!(
            gnome_screen_lock(gnome, Some("maybe"), Some("uint32 300"), Some("false")),
            Fact::Unknown
        );
        assert!(gsettings_memory_backend(
            "GLib-GIO-Message: 10:00:00.000: Using the 'memory' GSettings backend.  Your settings will not be saved or shared with other applications.\n"
        ));
        assert!(!gsettings_memory_backend(""));
    }

    /// This test process has no graphical session (CI, a terminal without DISPLAY): whatever
    /// `gsettings` is installed, the screen lock is unknown.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn headless_linux_reports_screen_lock_unknown() {
        let session = DesktopSession::from_env(|k| std::env::var(k).ok());
        if session.graphical && session.gnome {
            eprintln!("skipped: this test runs inside a graphical GNOME session");
            return;
        }
        let r = collect().await;
        assert_eq!(r.facts["screen_lock"], Fact::Unknown, "{r:?}");
    }

    #[test]
    fn names_are_clipped_to_what_the_gateway_accepts() {
        assert_eq!(clip(None), "unknown");
        assert_eq!(clip(Some(" \r\n".into())), "unknown");
        assert_eq!(clip(Some("Windows 11 Pro\r\n".into())), "Windows 11 Pro");
        // 40 two-byte characters are 80 bytes: cut to 32 of them (64 bytes), not 64 characters.
        let long = clip(Some("é".repeat(40)));
        assert_eq!(long, "é".repeat(32));
        let r = PostureReport {
            os: "windows".into(),
            os_name: long,
            os_version: clip(Some("\u{fffd}".repeat(30))),
            facts: BTreeMap::new(),
            collected_at: 1,
        };
        r.validate().unwrap();
    }

    #[tokio::test]
    async fn collected_report_is_valid() {
        let r = collect().await;
        r.validate().unwrap();
        assert_eq!(r.facts.len(), 3, "{r:?}");
        assert!(r.collected_at > 0);
    }
}
