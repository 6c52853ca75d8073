//! Desktop notifications from `postern up` (sign-in about to expire, renewed, tunnels closed).
//! Best effort: each platform's own tool, run in the background; where there is none (a
//! headless machine, a tool missing) the line is only in `postern status` and the agent's log.
//!
//! * Linux: `notify-send` (libnotify), when a graphical session is there
//!   (`DISPLAY`/`WAYLAND_DISPLAY` and a session bus).
//! * macOS: `osascript -e 'display notification …'`.
//! * Windows: a balloon from the notification area through PowerShell (no module to install).
//!
//! Set `POSTERN_NOTIFY=0` to turn them off.

use std::process::{Command, Stdio};

/// Shows `message` as a desktop notification titled "Postern", if this desktop can.
pub fn notify(message: &str) {
    if std::env::var("POSTERN_NOTIFY").is_ok_and(|v| v == "0") {
        return;
    }
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let Some(mut cmd) = command(&message) else {
        return;
    };
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        // Reaped in the background; a notifier that hangs is not waited for.
        Ok(mut child) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(e) => tracing::debug!(error = %e, "no desktop notification"),
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn command(message: &str) -> Option<Command> {
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !graphical || std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return None;
    }
    let mut c = Command::new("notify-send");
    c.args(["--app-name=Postern", "Postern", message]);
    Some(c)
}

#[cfg(target_os = "macos")]
fn command(message: &str) -> Option<Command> {
    let mut c = Command::new("osascript");
    c.arg("-e").arg(format!(
        "display notification {} with title \"Postern\"",
        applescript_string(message)
    ));
    Some(c)
}

/// An AppleScript string literal.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn applescript_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(windows)]
fn command(message: &str) -> Option<Command> {
    let script = format!(
        "Add-Type -AssemblyName System.Windows.Forms; $n = New-Object System.Windows.Forms.NotifyIcon; $n.Icon = [System.Drawing.SystemIcons]::Information; $n.Visible = $true; $n.ShowBalloonTip(10000, 'Postern', {}, 'Info'); Start-Sleep -Seconds 10; $n.Dispose()",
        powershell_string(message)
    );
    let mut c = Command::new("powershell");
    c.args([
        "-NoProfile",
        "-NonInteractive",
        "-WindowStyle",
        "Hidden",
        "-Command",
        &script,
    ]);
    Some(c)
}

/// A PowerShell single-quoted string literal.
#[cfg_attr(not(windows), allow(dead_code))]
fn powershell_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(not(any(unix, windows)))]
fn command(_message: &str) -> Option<Command> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_the_message_a_literal() {
        assert_eq!(applescript_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(powershell_string("it's"), "'it''s'");
    }
}
