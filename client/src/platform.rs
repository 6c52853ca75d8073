//! What differs between Linux, macOS and Windows for the client, in one place: the
//! termination signal `postern connect` stops on, the per-user config directory, and how the
//! sign-in URL is opened in a browser.
//!
//! Private files (the session token, `config.json`) are written by
//! `postern_net::fsutil`: mode 0700/0600 on Unix; on Windows the file takes the access
//! control list of the config directory, which inherits the user profile's (the user,
//! SYSTEM and Administrators only; see docs/windows.md).
//!
//! macOS builds from the same code (the Unix branches) but is not built or tested in CI.

use std::path::PathBuf;

/// The OS's polite "please stop" for a console program, beside Ctrl-C (which
/// `tokio::signal::ctrl_c` handles everywhere): SIGTERM on Unix; on Windows Ctrl-Break and the
/// console window being closed (Windows then allows a few seconds to finish), and log-off and
/// shutdown (which Windows sends to services only; interactive programs are simply ended).
pub struct Terminate {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    brk: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
    #[cfg(windows)]
    logoff: tokio::signal::windows::CtrlLogoff,
}

/// Installs the handlers for [`Terminate`] (must run inside a tokio runtime).
pub fn terminate_signal() -> std::io::Result<Terminate> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Terminate {
            term: signal(SignalKind::terminate())?,
        })
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows;
        Ok(Terminate {
            brk: windows::ctrl_break()?,
            close: windows::ctrl_close()?,
            shutdown: windows::ctrl_shutdown()?,
            logoff: windows::ctrl_logoff()?,
        })
    }
    #[cfg(not(any(unix, windows)))]
    {
        Ok(Terminate {})
    }
}

impl Terminate {
    /// Completes when the signal arrives (never, on a platform without one).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.term.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(windows)]
        {
            tokio::select! {
                _ = self.brk.recv() => {},
                _ = self.close.recv() => {},
                _ = self.shutdown.recv() => {},
                _ = self.logoff.recv() => {},
            }
        }
        #[cfg(not(any(unix, windows)))]
        {
            std::future::pending::<()>().await;
        }
    }
}

/// Where the user's config directory comes from on this OS, as a pure function of the
/// environment (`var` looks a variable up; empty values count as unset).
///
/// Windows: `%APPDATA%\postern` (the roaming application data folder, inside the user's
/// profile). Linux, macOS and other Unix: `$XDG_CONFIG_HOME/postern`, else
/// `$HOME/.config/postern` (macOS too, as the issue's profile path says: one place to document
/// for the terminal tools clinicians use).
pub fn config_dir_from(
    windows: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    if windows {
        return var("APPDATA")
            .map(|d| PathBuf::from(d).join("postern"))
            .ok_or_else(|| {
                "cannot find your application data folder (APPDATA is not set); set POSTERN_CONFIG_DIR".to_owned()
            });
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(d).join("postern"));
    }
    var("HOME")
        .map(|h| PathBuf::from(h).join(".config").join("postern"))
        .ok_or_else(|| {
            "cannot find your home directory (HOME is not set); set POSTERN_CONFIG_DIR".to_owned()
        })
}

/// This user's config directory on this OS (without the `POSTERN_CONFIG_DIR` override, which
/// `login::config_dir` applies first).
pub fn config_dir() -> Result<PathBuf, String> {
    config_dir_from(cfg!(windows), |k| std::env::var(k).ok())
}

/// The program and arguments that open `url` in the default browser on this OS.
///
/// Windows: `rundll32 url.dll,FileProtocolHandler URL`, which hands the URL to the shell's
/// protocol handler without a command interpreter in between (`cmd /c start` would cut the URL
/// at its first `&`). macOS: `open URL`. Linux and other Unix: `xdg-open URL`.
pub fn browser_command(url: &str) -> (&'static str, Vec<String>) {
    if cfg!(windows) {
        (
            "rundll32.exe",
            vec!["url.dll,FileProtocolHandler".to_owned(), url.to_owned()],
        )
    } else if cfg!(target_os = "macos") {
        ("open", vec![url.to_owned()])
    } else {
        ("xdg-open", vec![url.to_owned()])
    }
}

/// Tries to open `url` in the default browser; the URL is printed as well, so a failure here
/// (no browser, no desktop) leaves the person able to open it by hand. Only `https://` and
/// `http://` URLs are handed to the OS.
pub fn open_browser(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("not opening '{url}': not an http(s) URL"));
    }
    let (program, args) = browser_command(url);
    std::process::Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot start {program}: {e}"))
}

/// An environment lookup over fixed pairs, for tests of functions that take `var`.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::test_env as env;
    use super::*;

    #[test]
    fn config_dir_per_os() {
        let appdata = r"C:\Users\alice\AppData\Roaming";
        assert_eq!(
            config_dir_from(true, env(&[("APPDATA", appdata), ("HOME", "/h")])).unwrap(),
            PathBuf::from(appdata).join("postern")
        );
        let e = config_dir_from(true, env(&[("HOME", "/h")])).unwrap_err();
        assert!(
            e.contains("APPDATA") && e.contains("POSTERN_CONFIG_DIR"),
            "{e}"
        );
        assert_eq!(
            config_dir_from(false, env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/x/postern")
        );
        // An empty XDG_CONFIG_HOME is unset (XDG base directory spec).
        assert_eq!(
            config_dir_from(false, env(&[("XDG_CONFIG_HOME", ""), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/postern")
        );
        let e = config_dir_from(false, env(&[("APPDATA", appdata)])).unwrap_err();
        assert!(e.contains("HOME is not set"), "{e}");
    }

    #[test]
    fn browser_command_keeps_the_url_whole() {
        let url = "https://gw.example:8443/auth/login?cli_redirect=x&cli_state=y";
        let (program, args) = browser_command(url);
        assert!(!program.is_empty());
        assert_eq!(args.last().map(String::as_str), Some(url));
        if cfg!(target_os = "linux") {
            assert_eq!(program, "xdg-open");
        }
        assert!(open_browser("file:///etc/passwd")
            .unwrap_err()
            .contains("not an http(s) URL"));
    }
}
