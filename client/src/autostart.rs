//! `postern up --install-autostart` / `--remove-autostart`: start `postern up` whenever the
//! clinician logs in to this computer, the way each platform does it for a user (no
//! administrator rights):
//!
//! * Linux: a systemd user unit, `~/.config/systemd/user/postern-up.service`, enabled with
//!   `systemctl --user enable` (started by the user's session at login);
//! * macOS: a LaunchAgent, `~/Library/LaunchAgents/org.postern.up.plist` (`RunAtLoad`);
//! * Windows: a Task Scheduler task "Postern up" run at logon (`schtasks /SC ONLOGON`).
//!
//! The entry runs this very binary (its absolute path); `POSTERN_CONFIG_DIR`, when set, is
//! kept, so the autostarted agent uses the same sign-in and profile.

use std::path::{Path, PathBuf};

use crate::ClientError;

/// The systemd user unit's name.
pub const UNIT: &str = "postern-up.service";
/// The LaunchAgent's label.
pub const LABEL: &str = "org.postern.up";
/// The Windows task's name.
pub const TASK: &str = "Postern up";

fn exe() -> Result<PathBuf, ClientError> {
    std::env::current_exe()
        .map_err(|e| ClientError::Setup(format!("cannot find the postern program: {e}")))
}

fn config_env() -> Option<String> {
    std::env::var("POSTERN_CONFIG_DIR").ok()
}

/// A systemd user unit that runs `exe up --foreground`.
pub fn systemd_unit(exe: &Path, config_dir: Option<&str>) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let env = config_dir
        .map(|d| {
            format!(
                "Environment={}\n",
                quote(&format!("POSTERN_CONFIG_DIR={d}"))
            )
        })
        .unwrap_or_default();
    format!(
        "[Unit]\nDescription=Postern: your tunnels to hospital systems (postern up)\nAfter=network-online.target\n\n[Service]\nType=simple\nExecStart={} up --foreground\n{env}Restart=on-failure\nRestartSec=10\n\n[Install]\nWantedBy=default.target\n",
        quote(&exe.display().to_string())
    )
}

/// A LaunchAgent property list that runs `exe up --foreground` at login.
pub fn launch_agent(exe: &Path, config_dir: Option<&str>, log: &Path) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let env = config_dir
        .map(|d| {
            format!(
                "  <key>EnvironmentVariables</key>\n  <dict>\n    <key>POSTERN_CONFIG_DIR</key>\n    <string>{}</string>\n  </dict>\n",
                esc(d)
            )
        })
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n  <key>Label</key>\n  <string>{LABEL}</string>\n  <key>ProgramArguments</key>\n  <array>\n    <string>{}</string>\n    <string>up</string>\n    <string>--foreground</string>\n  </array>\n{env}  <key>RunAtLoad</key>\n  <true/>\n  <key>StandardOutPath</key>\n  <string>{log}</string>\n  <key>StandardErrorPath</key>\n  <string>{log}</string>\n</dict>\n</plist>\n",
        esc(&exe.display().to_string()),
        log = esc(&log.display().to_string()),
    )
}

/// `schtasks` arguments that create the logon task running `exe up`.
pub fn schtasks_create(exe: &Path) -> Vec<String> {
    [
        "/Create", "/F", "/SC", "ONLOGON", "/RL", "LIMITED", "/TN", TASK, "/TR",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("\"{}\" up", exe.display())])
    .collect()
}

/// Where the systemd user unit goes.
pub fn systemd_unit_path() -> Result<PathBuf, ClientError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config"))
            .ok_or_else(|| ClientError::Setup("HOME is not set".into()))?,
    };
    Ok(base.join("systemd").join("user").join(UNIT))
}

fn write(path: &Path, text: &str) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Setup(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// Runs a helper tool; `Err` with what it said.
fn run(program: &str, args: &[String]) -> Result<(), String> {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Installs the login entry; answers what was done, in a sentence or two.
pub fn install() -> Result<String, ClientError> {
    let exe = exe()?;
    if cfg!(windows) {
        run("schtasks", &schtasks_create(&exe))
            .map_err(|e| ClientError::Setup(format!("schtasks could not create the task: {e}")))?;
        return Ok(format!(
            "postern up will start when you log in to Windows (task \"{TASK}\" in Task Scheduler)"
        ));
    }
    if cfg!(target_os = "macos") {
        let home =
            std::env::var_os("HOME").ok_or_else(|| ClientError::Setup("HOME is not set".into()))?;
        let path = PathBuf::from(home)
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist"));
        let log = crate::control::log_file(&crate::login::config_dir()?);
        write(&path, &launch_agent(&exe, config_env().as_deref(), &log))?;
        return Ok(format!(
            "postern up will start when you log in to this Mac ({})",
            path.display()
        ));
    }
    let path = systemd_unit_path()?;
    write(&path, &systemd_unit(&exe, config_env().as_deref()))?;
    let enabled = run("systemctl", &["--user".into(), "daemon-reload".into()]).and_then(|_| {
        run(
            "systemctl",
            &["--user".into(), "enable".into(), UNIT.into()],
        )
    });
    Ok(match enabled {
        Ok(()) => format!(
            "postern up will start when you log in ({}, enabled)",
            path.display()
        ),
        Err(e) => format!(
            "wrote {}, but systemctl --user could not enable it ({e}); enable it with: systemctl --user enable {UNIT}",
            path.display()
        ),
    })
}

/// Removes the login entry; answers what was done.
pub fn remove() -> Result<String, ClientError> {
    if cfg!(windows) {
        return match run(
            "schtasks",
            &["/Delete".into(), "/F".into(), "/TN".into(), TASK.into()],
        ) {
            Ok(()) => Ok(format!(
                "removed the task \"{TASK}\": postern up no longer starts at logon"
            )),
            Err(e) => Err(ClientError::Setup(format!(
                "schtasks could not remove the task: {e}"
            ))),
        };
    }
    let path = if cfg!(target_os = "macos") {
        let home =
            std::env::var_os("HOME").ok_or_else(|| ClientError::Setup("HOME is not set".into()))?;
        PathBuf::from(home)
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist"))
    } else {
        let _ = run(
            "systemctl",
            &["--user".into(), "disable".into(), UNIT.into()],
        );
        systemd_unit_path()?
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(format!(
            "removed {}: postern up no longer starts at login",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok("postern up was not set to start at login".into())
        }
        Err(e) => Err(ClientError::Setup(format!(
            "removing {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_run_this_binary_in_the_foreground() {
        let unit = systemd_unit(Path::new("/opt/my tools/postern"), Some("/home/a/.pc"));
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/postern\" up --foreground\n"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"POSTERN_CONFIG_DIR=/home/a/.pc\"\n"),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=default.target"));
        assert!(!systemd_unit(Path::new("/usr/bin/postern"), None).contains("Environment"));

        let plist = launch_agent(
            Path::new("/Applications/P&P/postern"),
            None,
            Path::new("/tmp/a.log"),
        );
        assert!(
            plist.contains("<string>/Applications/P&amp;P/postern</string>"),
            "{plist}"
        );
        assert!(plist.contains("<key>RunAtLoad</key>\n  <true/>"));

        let args = schtasks_create(Path::new(r"C:\Program Files\Postern\postern.exe"));
        assert_eq!(
            args.last().unwrap(),
            r#""C:\Program Files\Postern\postern.exe" up"#
        );
        assert!(args.windows(2).any(|w| w == ["/SC", "ONLOGON"]));
    }
}
