//! `postern rdp ENDPOINT`: the platform's RDP client, launched against the local end of a
//! tunnel.
//!
//! What runs where (see docs/rdp.md):
//!
//! | OS | client | how |
//! |---|---|---|
//! | Windows | Remote Desktop Connection | `mstsc FILE.rdp` (a generated file, removed when mstsc exits) |
//! | macOS | Windows App (formerly Microsoft Remote Desktop) | `open FILE.rdp` (the app opens `.rdp` files) |
//! | Linux and other Unix desktops | FreeRDP | `xfreerdp /v:127.0.0.1:PORT /f ...` (or `xfreerdp3`) |
//!
//! Everything that decides *what* to run is a pure function ([`rdp_file`], [`xfreerdp_args`],
//! [`plan_with_path`]), so it is unit-tested on every platform; [`launch`] then writes the file
//! and starts the process.
//!
//! No password ever goes into a `.rdp` file or onto a command line: the RDP client asks for it
//! (or the reporting PC's own sign-in screen does), so it never lands on disk or in the process
//! list.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

/// Why an RDP client cannot be planned or started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RdpError {
    /// No FreeRDP client on PATH (Linux and other Unix desktops).
    #[error("no RDP client found: {0}")]
    NoClient(String),
    /// An option that cannot be used (a user name with control characters, ...).
    #[error("{0}")]
    Option(String),
    /// Writing the `.rdp` file or starting the client failed.
    #[error("{0}")]
    Launch(String),
}

/// Which monitors the remote desktop uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Monitors {
    /// Every local monitor (a reporting station's two or three diagnostic displays).
    #[default]
    All,
    /// One monitor: the main one for mstsc and the Windows App; for FreeRDP, full screen on
    /// the monitor under the mouse pointer (FreeRDP's choice when `/multimon` is not given).
    Primary,
}

impl std::str::FromStr for Monitors {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Monitors::All),
            "primary" => Ok(Monitors::Primary),
            other => Err(format!("--monitors is all or primary, not '{other}'")),
        }
    }
}

impl fmt::Display for Monitors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Monitors::All => "all",
            Monitors::Primary => "primary",
        })
    }
}

/// How FreeRDP checks the reporting PC's certificate (`/cert:`).
///
/// The RDP connection is TLS from the clinician's RDP client to the reporting PC, inside the
/// Postern tunnel. The client connects to `127.0.0.1:PORT`, so the certificate's name (the
/// reporting PC's, usually self-signed) never matches and a normal check always fails:
///
/// * [`CertCheck::Tofu`] (the default): trust on first use. The first certificate seen for
///   `127.0.0.1:PORT` is stored (`~/.config/freerdp/known_hosts2`); a different one later is
///   refused with a warning. That catches a machine in the middle on the hospital network
///   between the connector and the reporting PC, which Postern's own TLS does not cover. It
///   pins per local port: use the fixed ports of `postern up` (a random `--listen` port pins
///   nothing useful), and when the reporting PC legitimately gets a new certificate (Windows
///   renews its self-signed one about every six months) the clinician removes the old line.
/// * [`CertCheck::Ignore`]: accept any certificate every time. No prompts ever, but no
///   protection on the last hop either; for test rigs and for hosts whose certificate changes
///   at every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertCheck {
    #[default]
    Tofu,
    Ignore,
}

impl CertCheck {
    fn arg(self) -> &'static str {
        match self {
            CertCheck::Tofu => "/cert:tofu",
            CertCheck::Ignore => "/cert:ignore",
        }
    }
}

/// What the launched RDP client is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdpOptions {
    /// The endpoint's name (window title, file name).
    pub endpoint: String,
    pub monitors: Monitors,
    /// Full screen (default); windowed otherwise.
    pub full_screen: bool,
    /// The user name to offer, e.g. `TRUST\jsmith`. Never a password: there is no field for one.
    pub username: Option<String>,
    /// FreeRDP's certificate check (see [`CertCheck`] for the trade-off).
    pub cert: CertCheck,
    /// Clipboard redirection. Off by default: a reporting PC is an `egress = "display"`
    /// endpoint (pixels only), and a shared clipboard is a way for text to leave it. The
    /// reporting PC's own policy should enforce this; the client setting is a default.
    pub clipboard: bool,
}

impl RdpOptions {
    /// Defaults: all monitors, full screen, no user name, certificate trusted on first use,
    /// no clipboard.
    pub fn new(endpoint: &str) -> RdpOptions {
        RdpOptions {
            endpoint: endpoint.to_owned(),
            monitors: Monitors::All,
            full_screen: true,
            username: None,
            cert: CertCheck::Tofu,
            clipboard: false,
        }
    }

    /// Refuses values that would break the `.rdp` file or the command line: control
    /// characters (a line break in a user name would add a line to the file), empty or overlong
    /// values.
    pub fn validate(&self) -> Result<(), RdpError> {
        check_value("the endpoint name", &self.endpoint)?;
        if let Some(u) = &self.username {
            check_value("the user name", u)?;
        }
        Ok(())
    }
}

fn check_value(what: &str, v: &str) -> Result<(), RdpError> {
    if v.trim().is_empty() {
        return Err(RdpError::Option(format!("{what} is empty")));
    }
    if v.chars().count() > 256 {
        return Err(RdpError::Option(format!(
            "{what} is longer than 256 characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(RdpError::Option(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

/// `v` without control characters (defence in depth: [`RdpOptions::validate`] refuses them).
fn clean(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

/// The `.rdp` file for mstsc and the Windows App, connecting to `addr` (the tunnel's local
/// end). Lines end in CRLF, as mstsc writes them. It never holds a password (`password 51:b:`).
///
/// Settings, and why (docs/rdp.md has the table):
/// * `screen mode id:i:2` full screen (1: a window); `use multimon` and `span monitors` 1 for
///   all monitors (span is the fallback for hosts that cannot do true multi-monitor), 0 for
///   the primary one;
/// * 32-bit colour, compression, automatic detection of the connection's speed, the
///   connection bar (to leave full screen), automatic reconnection;
/// * `authentication level:i:2`: warn when the certificate does not check out (it never
///   matches `127.0.0.1`) and let the clinician decide, with "don't ask again" for this
///   computer; NLA (CredSSP) on;
/// * no clipboard (unless asked), drives, printers, serial ports or POS devices redirected:
///   the reporting PC sends pixels, data stays in the hospital; smart cards are redirected
///   (clinical sign-in) and the microphone (dictation); sound plays on the laptop.
pub fn rdp_file(addr: SocketAddr, opts: &RdpOptions) -> String {
    let multimon = match opts.monitors {
        Monitors::All => 1,
        Monitors::Primary => 0,
    };
    let mut lines = vec![format!("full address:s:{addr}")];
    if let Some(u) = &opts.username {
        lines.push(format!("username:s:{}", clean(u)));
    }
    lines.extend([
        format!("screen mode id:i:{}", if opts.full_screen { 2 } else { 1 }),
        format!("use multimon:i:{multimon}"),
        format!("span monitors:i:{multimon}"),
        "session bpp:i:32".into(),
        "compression:i:1".into(),
        "keyboardhook:i:2".into(),
        "connection type:i:7".into(),
        "networkautodetect:i:1".into(),
        "bandwidthautodetect:i:1".into(),
        "displayconnectionbar:i:1".into(),
        "autoreconnection enabled:i:1".into(),
        "authentication level:i:2".into(),
        "prompt for credentials:i:0".into(),
        "negotiate security layer:i:1".into(),
        "enablecredsspsupport:i:1".into(),
        format!("redirectclipboard:i:{}", u8::from(opts.clipboard)),
        "redirectprinters:i:0".into(),
        "redirectcomports:i:0".into(),
        "redirectposdevices:i:0".into(),
        "drivestoredirect:s:".into(),
        "redirectsmartcards:i:1".into(),
        "audiomode:i:0".into(),
        "audiocapturemode:i:1".into(),
    ]);
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push_str("\r\n");
    }
    out
}

/// The `.rdp` file's bytes: as is when ASCII (what every reader takes); otherwise UTF-16LE
/// with a byte order mark, the encoding mstsc itself saves in (a user name with accents would
/// be misread as the ANSI code page in UTF-8).
pub fn rdp_file_bytes(contents: &str) -> Vec<u8> {
    if contents.is_ascii() {
        return contents.as_bytes().to_vec();
    }
    let mut out = vec![0xff, 0xfe];
    for u in contents.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

/// FreeRDP's arguments for a connection to `addr`: `/v:ADDR`, `/u:USER` if given, `/f` (full
/// screen), `/multimon` for all monitors, `/cert:tofu` (see [`CertCheck`]), the window title,
/// `-clipboard` unless asked for, `+auto-reconnect`. Never `/p:`.
pub fn xfreerdp_args(addr: SocketAddr, opts: &RdpOptions) -> Vec<String> {
    let mut args = vec![format!("/v:{addr}")];
    if let Some(u) = &opts.username {
        args.push(format!("/u:{}", clean(u)));
    }
    if opts.full_screen {
        args.push("/f".into());
    }
    if opts.monitors == Monitors::All {
        args.push("/multimon".into());
    }
    args.push(opts.cert.arg().into());
    args.push(format!("/t:Postern: {}", clean(&opts.endpoint)));
    if !opts.clipboard {
        args.push("-clipboard".into());
    }
    args.push("+auto-reconnect".into());
    args
}

/// The platform whose RDP client is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Windows,
    MacOs,
    /// Linux and other Unix desktops: FreeRDP.
    Linux,
}

impl Os {
    /// The platform this binary was built for.
    pub fn current() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// A `.rdp` file to write before the client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdpFile {
    pub path: PathBuf,
    pub contents: String,
    /// Removed when the client exits (mstsc reads it at start and runs for the whole session);
    /// kept where the launcher returns at once (macOS `open`: the app reads it later) and
    /// replaced by the next launch for the same endpoint.
    pub remove_after: bool,
}

/// What `postern rdp` would run: shown by `--dry-run` (its [`Display`](fmt::Display)) and
/// started by [`launch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub os: Os,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub file: Option<RdpFile>,
}

/// FreeRDP's X11 client names, in the order looked for on PATH.
pub const FREERDP_CLIENTS: [&str; 2] = ["xfreerdp", "xfreerdp3"];

/// [`plan_with_path`] with this process's `PATH`.
pub fn plan(
    os: Os,
    addr: SocketAddr,
    opts: &RdpOptions,
    file_dir: &Path,
) -> Result<Launch, RdpError> {
    plan_with_path(
        os,
        addr,
        opts,
        file_dir,
        std::env::var_os("PATH").as_deref(),
    )
}

/// What to run on `os` for a connection to `addr`: Windows `mstsc FILE`, macOS `open FILE`
/// (both with [`rdp_file`] at `file_dir/ENDPOINT.rdp`), Linux `xfreerdp ARGS` (the first of
/// [`FREERDP_CLIENTS`] found on `path`). Writes nothing.
pub fn plan_with_path(
    os: Os,
    addr: SocketAddr,
    opts: &RdpOptions,
    file_dir: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Result<Launch, RdpError> {
    opts.validate()?;
    let file = |remove_after| RdpFile {
        path: file_dir.join(format!("{}.rdp", file_stem(&opts.endpoint))),
        contents: rdp_file(addr, opts),
        remove_after,
    };
    Ok(match os {
        Os::Windows => {
            let f = file(true);
            Launch {
                os,
                program: PathBuf::from("mstsc"),
                args: vec![f.path.clone().into_os_string()],
                file: Some(f),
            }
        }
        Os::MacOs => {
            let f = file(false);
            Launch {
                os,
                program: PathBuf::from("open"),
                args: vec![f.path.clone().into_os_string()],
                file: Some(f),
            }
        }
        Os::Linux => {
            let program = FREERDP_CLIENTS
                .iter()
                .find_map(|name| find_on_path(name, path))
                .ok_or_else(|| {
                    RdpError::NoClient(format!(
                        "neither {} is on PATH. Install FreeRDP's X11 client (Debian, Ubuntu: \
                         `sudo apt install freerdp2-x11`, or `freerdp3-x11` on newer releases; \
                         Fedora: `sudo dnf install freerdp`), or point any RDP client at {addr}",
                        FREERDP_CLIENTS.join(" nor ")
                    ))
                })?;
            Launch {
                os,
                program,
                args: xfreerdp_args(addr, opts)
                    .into_iter()
                    .map(OsString::from)
                    .collect(),
                file: None,
            }
        }
    })
}

/// A file name from an endpoint name: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn file_stem(endpoint: &str) -> String {
    let s: String = endpoint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "endpoint".into()
    } else {
        s
    }
}

/// The executable `name` in one of `path`'s directories.
fn find_on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// One argument as a shell would need it typed (for `--dry-run`).
fn quote(os: Os, arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-+=,@\\".contains(c));
    if plain {
        arg.to_owned()
    } else if os == Os::Windows {
        format!("\"{}\"", arg.replace('"', "\"\""))
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Launch {
    /// The file (if any) and the command, as `--dry-run` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            writeln!(
                f,
                "# {} (written with mode 0600, no password{}):",
                file.path.display(),
                if file.remove_after {
                    "; removed when the client exits"
                } else {
                    ""
                }
            )?;
            for l in file.contents.lines() {
                writeln!(f, "{l}")?;
            }
        }
        writeln!(f, "# command:")?;
        let mut words = vec![quote(self.os, &self.program.to_string_lossy())];
        words.extend(
            self.args
                .iter()
                .map(|a| quote(self.os, &a.to_string_lossy())),
        );
        writeln!(f, "{}", words.join(" "))
    }
}

/// A launched RDP client.
pub struct Running {
    pub child: Child,
    file: Option<PathBuf>,
}

impl Running {
    /// Waits for the client to exit, then removes the `.rdp` file if the plan said so.
    pub fn wait(mut self) -> Result<ExitStatus, RdpError> {
        let status = self
            .child
            .wait()
            .map_err(|e| RdpError::Launch(format!("waiting for the RDP client: {e}")));
        self.remove_file();
        status
    }

    fn remove_file(&mut self) {
        if let Some(p) = self.file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// Writes the plan's `.rdp` file (mode 0600 in a 0700 directory on Unix) and starts the
/// client, with the terminal's stdin and output (FreeRDP asks for a password there when the
/// reporting PC wants one before its desktop).
pub fn launch(plan: &Launch) -> Result<Running, RdpError> {
    if let Some(file) = &plan.file {
        crate::login::write_private(&file.path, &rdp_file_bytes(&file.contents))
            .map_err(|e| RdpError::Launch(e.to_string()))?;
    }
    let remove = plan
        .file
        .as_ref()
        .filter(|f| f.remove_after)
        .map(|f| f.path.clone());
    let child = match Command::new(&plan.program).args(&plan.args).spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = &remove {
                let _ = std::fs::remove_file(p);
            }
            let hint = match plan.os {
                Os::Windows => {
                    " (mstsc.exe comes with Windows: is Remote Desktop Connection removed?)"
                }
                Os::MacOs => "",
                Os::Linux => " (install freerdp2-x11 or freerdp3-x11)",
            };
            return Err(RdpError::Launch(format!(
                "cannot start {}: {e}{hint}",
                plan.program.display()
            )));
        }
    };
    Ok(Running {
        child,
        file: remove,
    })
}

/// Where `.rdp` files go: `rdp/` in Postern's configuration directory, else the temporary
/// directory.
pub fn default_file_dir() -> PathBuf {
    crate::login::config_dir()
        .map(|d| d.join("rdp"))
        .unwrap_or_else(|_| std::env::temp_dir().join("postern-rdp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:13389".parse().unwrap()
    }

    fn lines(file: &str) -> Vec<&str> {
        file.split("\r\n").filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn rdp_file_all_monitors_full_screen() {
        let f = rdp_file(addr(), &RdpOptions::new("reporting-pc"));
        assert!(f.ends_with("\r\n"));
        assert_eq!(
            f.matches('\n').count(),
            f.matches("\r\n").count(),
            "a bare LF: {f:?}"
        );
        let l = lines(&f);
        assert_eq!(l[0], "full address:s:127.0.0.1:13389");
        for want in [
            "screen mode id:i:2",
            "use multimon:i:1",
            "span monitors:i:1",
            "authentication level:i:2",
            "enablecredsspsupport:i:1",
            "redirectclipboard:i:0",
            "drivestoredirect:s:",
            "redirectprinters:i:0",
            "autoreconnection enabled:i:1",
        ] {
            assert!(l.contains(&want), "{want} missing from {f}");
        }
        assert!(!l.iter().any(|l| l.starts_with("username:")), "{f}");
        // Every line is `name:type:value` with a known type.
        for line in &l {
            let mut parts = line.splitn(3, ':');
            let (name, ty) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(!name.is_empty() && parts.next().is_some(), "{line}");
            assert!(["s", "i", "b"].contains(&ty), "{line}");
        }
        // No setting twice.
        let mut names: Vec<_> = l.iter().map(|l| l.split(':').next().unwrap()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "{f}");
    }

    #[test]
    fn rdp_file_primary_windowed_with_user() {
        let mut o = RdpOptions::new("reporting-pc");
        o.monitors = Monitors::Primary;
        o.full_screen = false;
        o.username = Some(r"TRUST\jsmith".into());
        o.clipboard = true;
        let f = rdp_file("[::1]:3390".parse().unwrap(), &o);
        let l = lines(&f);
        assert_eq!(l[0], "full address:s:[::1]:3390");
        for want in [
            r"username:s:TRUST\jsmith",
            "screen mode id:i:1",
            "use multimon:i:0",
            "span monitors:i:0",
            "redirectclipboard:i:1",
        ] {
            assert!(l.contains(&want), "{want} missing from {f}");
        }
    }

    #[test]
    fn no_password_ever() {
        let mut o = RdpOptions::new("reporting-pc");
        // A user name smuggling a line into the file is refused, and cleaned if used anyway.
        o.username = Some("jsmith\r\npassword 51:b:0100".into());
        assert_eq!(
            o.validate(),
            Err(RdpError::Option(
                "the user name contains a control character".into()
            ))
        );
        assert!(plan_with_path(Os::Windows, addr(), &o, Path::new("/x"), None).is_err());
        let f = rdp_file(addr(), &o);
        assert!(!lines(&f).iter().any(|l| l.starts_with("password")), "{f}");
        assert!(!f.to_lowercase().contains("\npassword"), "{f}");
        let args = xfreerdp_args(addr(), &o);
        assert!(!args.iter().any(|a| a.starts_with("/p:")), "{args:?}");
        assert!(args.contains(&"/u:jsmithpassword 51:b:0100".to_owned()));
    }

    #[test]
    fn other_bad_options() {
        let mut o = RdpOptions::new(" ");
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("endpoint name is empty"));
        o.endpoint = "reporting-pc".into();
        o.username = Some("x".repeat(257));
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("longer than 256"));
        o.username = Some("Jöns Ørsted".into());
        assert_eq!(o.validate(), Ok(()));
        assert_eq!("all".parse::<Monitors>(), Ok(Monitors::All));
        assert_eq!("primary".parse::<Monitors>(), Ok(Monitors::Primary));
        assert!("both"
            .parse::<Monitors>()
            .unwrap_err()
            .contains("all or primary"));
    }

    #[test]
    fn file_encoding() {
        assert_eq!(rdp_file_bytes("a:s:b\r\n"), b"a:s:b\r\n");
        let b = rdp_file_bytes("username:s:Jöns\r\n");
        assert_eq!(&b[..4], &[0xff, 0xfe, b'u', 0]);
        let units: Vec<u16> = b[2..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).unwrap(), "username:s:Jöns\r\n");
    }

    #[test]
    fn xfreerdp_arguments() {
        let o = RdpOptions::new("reporting-pc");
        assert_eq!(
            xfreerdp_args(addr(), &o),
            [
                "/v:127.0.0.1:13389",
                "/f",
                "/multimon",
                "/cert:tofu",
                "/t:Postern: reporting-pc",
                "-clipboard",
                "+auto-reconnect"
            ]
        );
        let mut o = o;
        o.monitors = Monitors::Primary;
        o.username = Some("jsmith".into());
        o.cert = CertCheck::Ignore;
        o.clipboard = true;
        o.full_screen = false;
        assert_eq!(
            xfreerdp_args(addr(), &o),
            [
                "/v:127.0.0.1:13389",
                "/u:jsmith",
                "/cert:ignore",
                "/t:Postern: reporting-pc",
                "+auto-reconnect"
            ]
        );
    }

    #[test]
    fn plans_per_platform() {
        let o = RdpOptions::new("truro/rdp 07");
        let dir = Path::new("/home/x/.config/postern/rdp");
        let w = plan_with_path(Os::Windows, addr(), &o, dir, None).unwrap();
        let file = dir.join("truro_rdp_07.rdp");
        assert_eq!(w.program, PathBuf::from("mstsc"));
        assert_eq!(w.args, vec![file.clone().into_os_string()]);
        let wf = w.file.as_ref().unwrap();
        assert_eq!((wf.path.as_path(), wf.remove_after), (file.as_path(), true));
        assert_eq!(wf.contents, rdp_file(addr(), &o));

        let m = plan_with_path(Os::MacOs, addr(), &o, dir, None).unwrap();
        assert_eq!(m.program, PathBuf::from("open"));
        assert_eq!(m.args, vec![file.clone().into_os_string()]);
        assert!(!m.file.as_ref().unwrap().remove_after);
    }

    #[cfg(unix)]
    fn fake_exe(dir: &Path, name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[cfg(unix)]
    #[test]
    fn linux_finds_freerdp_on_path() {
        let o = RdpOptions::new("reporting-pc");
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        let plan = |path: &std::ffi::OsStr| {
            plan_with_path(Os::Linux, addr(), &o, Path::new("/unused"), Some(path))
        };

        // None: the error names the packages and the address to use by hand.
        let e = plan(&path).unwrap_err();
        let RdpError::NoClient(msg) = &e else {
            panic!("{e:?}")
        };
        assert!(
            msg.contains("freerdp2-x11") && msg.contains("freerdp3-x11"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:13389"), "{msg}");
        assert!(plan_with_path(Os::Linux, addr(), &o, Path::new("/x"), None).is_err());

        // Not executable: not a client.
        fake_exe(a.path(), "xfreerdp", 0o644);
        assert!(plan(&path).is_err());
        // xfreerdp3 alone.
        let three = fake_exe(b.path(), "xfreerdp3", 0o755);
        let l = plan(&path).unwrap();
        assert_eq!(l.program, three);
        assert!(l.file.is_none());
        let args: Vec<String> = l.args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(args, xfreerdp_args(addr(), &o));
        // xfreerdp first when both are there.
        let two = fake_exe(a.path(), "xfreerdp", 0o755);
        assert_eq!(plan(&path).unwrap().program, two);
    }

    #[cfg(unix)]
    #[test]
    fn dry_run_shows_file_and_command() {
        let mut o = RdpOptions::new("reporting-pc");
        o.username = Some("jsmith".into());
        let dir = Path::new("/home/x/my files");
        let w = plan_with_path(Os::MacOs, addr(), &o, dir, None).unwrap();
        let shown = w.to_string();
        assert!(
            shown.contains(
                "# /home/x/my files/reporting-pc.rdp (written with mode 0600, no password):"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("\nfull address:s:127.0.0.1:13389\n"),
            "{shown}"
        );
        assert!(shown.contains("\nusername:s:jsmith\n"), "{shown}");
        assert!(
            shown.ends_with("# command:\nopen '/home/x/my files/reporting-pc.rdp'\n"),
            "{shown}"
        );
        assert!(!shown.contains('\r'));

        let win = plan_with_path(
            Os::Windows,
            addr(),
            &o,
            Path::new(r"C:\Users\J Smith"),
            None,
        )
        .unwrap()
        .to_string();
        assert!(win.contains("removed when the client exits"), "{win}");
        assert!(win.contains("\nmstsc \"C:\\Users\\J Smith"), "{win}");

        let linux = Launch {
            os: Os::Linux,
            program: "/usr/bin/xfreerdp".into(),
            args: xfreerdp_args(addr(), &o)
                .into_iter()
                .map(OsString::from)
                .collect(),
            file: None,
        };
        assert_eq!(
            linux.to_string(),
            "# command:\n/usr/bin/xfreerdp /v:127.0.0.1:13389 /u:jsmith /f /multimon /cert:tofu '/t:Postern: reporting-pc' -clipboard +auto-reconnect\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn launch_writes_a_private_file_and_removes_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("rdp");
        let o = RdpOptions::new("reporting-pc");
        let mut l = plan_with_path(Os::Windows, addr(), &o, &files, None).unwrap();
        let rdp = l.file.as_ref().unwrap().path.clone();
        // An older copy with a wide mode is replaced and narrowed.
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(&rdp, "old").unwrap();
        std::fs::set_permissions(&rdp, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Stands in for mstsc: records the file's mode and contents while it runs.
        let seen = dir.path().join("seen");
        l.program = "/bin/sh".into();
        l.args = vec![
            "-c".into(),
            r#"stat -c %a "$1" > "$2"; cat "$1" >> "$2""#.into(),
            "sh".into(),
            rdp.clone().into_os_string(),
            seen.clone().into_os_string(),
        ];
        let status = launch(&l).unwrap().wait().unwrap();
        assert!(status.success());
        let seen = std::fs::read_to_string(&seen).unwrap();
        assert_eq!(seen, format!("600\n{}", rdp_file(addr(), &o)));
        assert!(!rdp.exists(), "the .rdp file was not removed");

        // macOS: kept for the app to read.
        let mut m = plan_with_path(Os::MacOs, addr(), &o, &files, None).unwrap();
        m.program = "/bin/true".into();
        launch(&m).unwrap().wait().unwrap();
        assert!(rdp.exists());
        assert_eq!(
            std::fs::metadata(&rdp).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // A client that cannot start: a clear error, no file left behind.
        std::fs::remove_file(&rdp).unwrap();
        l.program = dir.path().join("no-such-mstsc");
        let e = launch(&l).err().unwrap();
        assert!(e.to_string().starts_with("cannot start "), "{e}");
        assert!(!rdp.exists());
    }
}
