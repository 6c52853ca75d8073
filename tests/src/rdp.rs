//! Real RDP peers (tests/tests/rdp.rs): Debian's `xrdp` with `xorgxrdp` as the reporting PC,
//! FreeRDP's `xfreerdp` under `Xvfb` as the clinician's client, and screenshots of the client's
//! display to tell whether the remote desktop is drawn.
//!
//! * [`RdpServer`]: `xrdp` and `xrdp-sesman` in the foreground (`-n`), with configurations from
//!   the templates in tests/peers/rdp filled into a temporary directory (the test's own xrdp
//!   port, a self-signed certificate, logs), and a local test user ([`TestUser`]) with a fresh
//!   random password. Each session runs tests/peers/rdp/startwm.sh: two windows of known
//!   colours, [`LEFT`] on the first monitor and [`RIGHT`] where a second monitor would be.
//! * [`Xvfb`]: a virtual X server with one monitor, or two (RandR monitors on one wide screen,
//!   which is what FreeRDP's `/multimon` counts).
//! * [`Screenshot`]: the root window through `xwd`, parsed here (no ImageMagick), with the
//!   measures [`desktop_drawn`] uses, and a PNG writer to keep one to look at.
//!
//! sesman's port is the one in /etc/xrdp/sesman.ini, one per machine: [`RdpServer::start`]
//! holds a machine-wide lock (a file lock) until the server is dropped. Needs root (a local
//! user, sesman's PAM login).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, run, wait_for, Proc};

/// The local account the RDP client logs in as.
pub const USER: &str = "postern-rdp";
/// The session's window on the first monitor (and the only one on a single monitor).
pub const LEFT: [u8; 3] = [0xc8, 0x50, 0x1e];
/// The session's window at x = 1330: on the second monitor of a two-monitor client.
pub const RIGHT: [u8; 3] = [0x1e, 0x8c, 0x50];
/// How far (per channel) a pixel may be from a marker colour and still count (RDP codecs need
/// not be exact).
pub const TOLERANCE: u8 = 24;

const XRDP_INI: &str = include_str!("../peers/rdp/xrdp.ini");
const SESMAN_INI: &str = include_str!("../peers/rdp/sesman.ini");
const STARTWM: &str = include_str!("../peers/rdp/startwm.sh");

/// Why the RDP peers cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !as_root() {
        return Some("the RDP tests need root (a local test user, xrdp-sesman's PAM login)".into());
    }
    for (bin, package) in [
        ("/usr/sbin/xrdp", "xrdp"),
        ("/usr/sbin/xrdp-sesman", "xrdp"),
        ("/usr/lib/xorg/modules/drivers/xrdpdev_drv.so", "xorgxrdp"),
        ("/usr/bin/xfreerdp", "freerdp2-x11"),
        ("/usr/bin/Xvfb", "xvfb"),
        ("/usr/bin/xwd", "x11-apps"),
        ("/usr/bin/xlogo", "x11-apps"),
        ("/usr/bin/xrandr", "x11-xserver-utils"),
    ] {
        if !Path::new(bin).exists() {
            return Some(format!(
                "{bin} is missing: install {package} (scripts/test.sh does)"
            ));
        }
    }
    None
}

fn as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The local test user, with a password set for this run.
pub struct TestUser {
    pub name: String,
    /// Random, new for every server; never printed by the tests.
    pub password: String,
    pub uid: u32,
}

impl TestUser {
    /// Creates `name` (`useradd -m`) if it does not exist and sets a new random password
    /// (`chpasswd`).
    pub fn ensure(name: &str) -> TestUser {
        let (exists, _, _) = run(Command::new("id").arg("-u").arg(name));
        if !exists {
            let (ok, out, err) = run(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
            // Another run may have created it meanwhile.
            assert!(
                ok || err.contains("already exists"),
                "useradd {name}: {out}{err}"
            );
        }
        let (ok, uid, err) = run(Command::new("id").arg("-u").arg(name));
        assert!(ok, "id -u {name}: {err}");
        let password = random_password();
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chpasswd");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{name}:{password}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestUser {
            name: name.to_owned(),
            password,
            uid: uid.trim().parse().unwrap(),
        }
    }
}

fn random_password() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 18];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    b.iter()
        .map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char)
        .collect()
}

/// A self-signed certificate and key for xrdp's TLS, PEM files in `dir`.
fn write_cert(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["reporting-pc.test".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "reporting-pc.test");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    write_mode(&dir.join("key.pem"), key.serialize_pem().as_bytes(), 0o600);
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The port xrdp asks sesman on: ListenPort in /etc/xrdp/sesman.ini (3350 by default).
pub fn sesman_port() -> u16 {
    std::fs::read_to_string("/etc/xrdp/sesman.ini")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.trim().strip_prefix("ListenPort="))
                .and_then(|p| p.trim().parse().ok())
        })
        .unwrap_or(3350)
}

/// The PIDs of `pid`'s descendants, deepest first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // "PID (comm) STATE PPID ...": comm may hold spaces, so split after the last ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out.reverse();
    out
}

/// The PIDs of processes running as `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        if real == Some(uid) {
            out.push(p);
        }
    }
    out
}

/// Removes the display sockets and lock files the test user's killed sessions left behind
/// (SIGKILL gives Xorg and chansrv no chance to): sesman takes a display among :10 to :20 only
/// if neither its X socket nor xrdp's sockets for it exist, so eleven leftovers make every later
/// session fail ("no display in range").
fn remove_stale_displays(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let mut stale: Vec<PathBuf> = (10..=20)
        .flat_map(|n| {
            [
                PathBuf::from(format!("/tmp/.X11-unix/X{n}")),
                PathBuf::from(format!("/tmp/.X{n}-lock")),
            ]
        })
        .collect();
    if let Ok(dir) = std::fs::read_dir("/run/xrdp/sockdir") {
        stale.extend(dir.flatten().map(|e| e.path()));
    }
    for p in stale {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.uid() == uid) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn kill_pids(pids: &[u32]) {
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// xrdp and xrdp-sesman: the reporting PC, on 127.0.0.1:`port`.
pub struct RdpServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: TestUser,
    xrdp: Proc,
    sesman: Proc,
    _lock: std::fs::File,
}

impl RdpServer {
    /// Starts both daemons (after taking the machine-wide lock) and waits until xrdp listens.
    pub fn start() -> RdpServer {
        if let Some(why) = unavailable() {
            panic!("cannot run this test: {why} (CI runs the tests as root)");
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("postern-e2e-xrdp.lock"))
            .unwrap();
        lock.lock().unwrap();

        let user = TestUser::ensure(USER);
        // Sessions of an earlier run that was killed before it could clean up.
        kill_pids(&processes_of(user.uid));
        remove_stale_displays(user.uid);

        let dir = tempfile::tempdir().unwrap();
        // The test user runs the session script from here: traversable, not listable.
        set_mode(dir.path(), 0o711);
        let session = dir.path().join("session");
        std::fs::create_dir(&session).unwrap();
        set_mode(&session, 0o755);
        let startwm = STARTWM
            .replace("@LEFT@", &hex(LEFT))
            .replace("@RIGHT@", &hex(RIGHT));
        write_mode(&session.join("startwm.sh"), startwm.as_bytes(), 0o755);
        write_cert(dir.path());

        let port = free_port();
        let sesman_port = sesman_port();
        let fill = |t: &str| {
            t.replace("@DIR@", &dir.path().display().to_string())
                .replace("@SESSION_DIR@", &session.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@SESMAN_PORT@", &sesman_port.to_string())
        };
        let xrdp_ini = dir.path().join("xrdp.ini");
        let sesman_ini = dir.path().join("sesman.ini");
        std::fs::write(&xrdp_ini, fill(XRDP_INI)).unwrap();
        std::fs::write(&sesman_ini, fill(SESMAN_INI)).unwrap();

        let sesman_listens = || {
            // sesman binds "127.0.0.1" as ::1 where IPv6 is on.
            ["127.0.0.1", "::1"]
                .iter()
                .any(|a| std::net::TcpStream::connect((*a, sesman_port)).is_ok())
        };
        assert!(
            !sesman_listens(),
            "something already listens on sesman's port {sesman_port} (a system xrdp-sesman?): \
             the test's own sesman could not, and xrdp would use the other one"
        );
        // In the foreground (-n) neither daemon writes a PID file; both log to the files the
        // configurations name (and a little to stdout before they read them).
        let mut sesman = Proc::spawn(
            "xrdp-sesman",
            Command::new("/usr/sbin/xrdp-sesman")
                .arg("-n")
                .arg("-c")
                .arg(&sesman_ini),
            dir.path().join("sesman.out"),
        );
        wait_for("xrdp-sesman to listen", Duration::from_secs(15), || {
            assert!(
                sesman.is_running(),
                "xrdp-sesman exited: {}{}",
                sesman.log_text(),
                std::fs::read_to_string(dir.path().join("xrdp-sesman.log")).unwrap_or_default()
            );
            sesman_listens().then_some(())
        });
        let mut xrdp = Proc::spawn(
            "xrdp",
            Command::new("/usr/sbin/xrdp")
                .arg("-n")
                .arg("-c")
                .arg(&xrdp_ini),
            dir.path().join("xrdp.out"),
        );
        wait_for("xrdp to listen", Duration::from_secs(15), || {
            assert!(
                xrdp.is_running(),
                "xrdp exited: {}{}",
                xrdp.log_text(),
                std::fs::read_to_string(dir.path().join("xrdp.log")).unwrap_or_default()
            );
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        RdpServer {
            dir,
            port,
            user,
            xrdp,
            sesman,
            _lock: lock,
        }
    }

    /// xrdp's log then sesman's.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- xrdp.log\n{}--- xrdp-sesman.log\n{}",
            read("xrdp.log"),
            read("xrdp-sesman.log")
        )
    }

    /// The lines of sesman's log that show a session for the test user: access granted,
    /// the session's size, and its start.
    pub fn session_lines(&self) -> Option<Vec<String>> {
        let log = std::fs::read_to_string(self.dir.path().join("xrdp-sesman.log")).ok()?;
        let name = &self.user.name;
        let find = |a: &str, b: &str| {
            log.lines()
                .rev()
                .find(|l| l.contains(a) && l.contains(b))
                .map(str::to_owned)
        };
        Some(vec![
            find("access granted", &format!("username {name},"))?,
            find("Starting session:", &format!("user name {name}"))?,
            find("Session started successfully", &format!("for user {name} "))?,
        ])
    }

    /// The lines of the logs that show the test user's login refused: xrdp's and sesman's.
    pub fn login_failed_lines(&self) -> Option<Vec<String>> {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let (xrdp, sesman) = (read("xrdp.log"), read("xrdp-sesman.log"));
        let name = &self.user.name;
        Some(vec![
            xrdp.lines()
                .find(|l| l.ends_with(&format!("login failed for user {name}")))?
                .to_owned(),
            sesman
                .lines()
                .find(|l| l.contains(&format!("AUTHFAIL: user={name} ")))?
                .to_owned(),
        ])
    }

    /// Waits (up to `limit`) for [`session_lines`](Self::session_lines).
    pub fn wait_session(&self, limit: Duration) -> Vec<String> {
        wait_for("sesman to start a session for the test user", limit, || {
            self.session_lines()
        })
    }
}

impl Drop for RdpServer {
    fn drop(&mut self) {
        // The daemons, their forked children (xrdp's per connection, sesman's per session), then
        // anything left running as the test user (the sessions' Xorg and desktop).
        for p in [&self.xrdp, &self.sesman] {
            kill_pids(&descendants(p.pid()));
        }
        self.xrdp.kill();
        self.sesman.kill();
        kill_pids(&processes_of(self.user.uid));
        remove_stale_displays(self.user.uid);
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A virtual X server for the RDP client.
pub struct Xvfb {
    pub proc: Proc,
    /// `:N`.
    pub display: String,
    pub width: u32,
    pub height: u32,
}

impl Xvfb {
    /// A screen of `monitors` monitors of `w`×`h` side by side. The display number is the first
    /// free one (`-displayfd`).
    ///
    /// More than one monitor is one screen `monitors`×`w` wide, divided into RandR monitors
    /// with `xrandr --setmonitor` (FreeRDP's `/multimon` takes the RandR 1.5 monitor list).
    /// Xvfb's own multi-screen setup does not serve: with `+xinerama` its screens all sit at
    /// the origin, one on top of the other (FreeRDP sees one monitor, or with RandR disabled
    /// two at +0+0). `-noreset` keeps the monitors: a server that resets when its last client
    /// (xrandr) leaves forgets them.
    pub fn start(monitors: u32, w: u32, h: u32, log_dir: &Path) -> Xvfb {
        let mut cmd = Command::new("/usr/bin/Xvfb");
        cmd.args(["-screen", "0", &format!("{}x{h}x24", w * monitors)]);
        // -displayfd 1: the display number on stdout, which goes to the log with stderr.
        cmd.args(["-nolisten", "tcp", "-noreset", "-displayfd", "1"]);
        let mut proc = Proc::spawn(
            "Xvfb",
            &mut cmd,
            log_dir.join(format!("xvfb-{}.log", free_port())),
        );
        let n: u32 = wait_for("Xvfb to start", Duration::from_secs(15), || {
            assert!(proc.is_running(), "Xvfb exited: {}", proc.log_text());
            proc.log_text().lines().find_map(|l| l.trim().parse().ok())
        });
        let display = format!(":{n}");
        if monitors > 1 {
            // Physical sizes for 96 dpi. The first monitor takes the screen's output (so the
            // automatic whole-screen monitor goes) and is primary.
            let mm = |px: u32| px * 254 / 960;
            for i in 0..monitors {
                let name = if i == 0 {
                    "*M0".to_owned()
                } else {
                    format!("M{i}")
                };
                let geometry = format!("{w}/{}x{h}/{}+{}+0", mm(w), mm(h), i * w);
                let output = if i == 0 { "screen" } else { "none" };
                let (ok, out, err) = run(Command::new("xrandr").args([
                    "-display",
                    &display,
                    "--setmonitor",
                    &name,
                    &geometry,
                    output,
                ]));
                assert!(ok, "xrandr --setmonitor {name} {geometry}: {out}{err}");
            }
        }
        Xvfb {
            proc,
            display,
            width: w * monitors,
            height: h,
        }
    }

    /// The monitors FreeRDP sees on this display (`xfreerdp /monitor-list`): "WxH+X+Y" each.
    pub fn freerdp_monitors(&self) -> Vec<String> {
        let (_, out, err) = run(Command::new("xfreerdp")
            .arg("/monitor-list")
            .env("DISPLAY", &self.display));
        // "      * [0] 1280x800\t+0+0": the primary one starred.
        format!("{out}{err}")
            .lines()
            .filter_map(|l| {
                let rest = l.trim().trim_start_matches('*').trim();
                let (index, rest) = rest.strip_prefix('[')?.split_once(']')?;
                index.parse::<u32>().ok()?;
                let mut words = rest.split_whitespace();
                Some(format!("{}{}", words.next()?, words.next()?))
            })
            .collect()
    }

    /// The root window now (all screens, with Xinerama).
    pub fn screenshot(&self) -> Screenshot {
        let out = Command::new("/usr/bin/xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .stdin(Stdio::null())
            .output()
            .expect("xwd");
        assert!(
            out.status.success(),
            "xwd -root -display {}: {}",
            self.display,
            String::from_utf8_lossy(&out.stderr)
        );
        Screenshot::from_xwd(&out.stdout).unwrap_or_else(|e| panic!("xwd output: {e}"))
    }
}

/// An RGB image.
#[derive(Clone, PartialEq, Eq)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<[u8; 3]>,
}

impl std::fmt::Debug for Screenshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Screenshot {}x{}", self.width, self.height)
    }
}

fn be32(b: &[u8], field: usize) -> Result<u32, String> {
    b.get(field * 4..field * 4 + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "truncated XWD header".into())
}

impl Screenshot {
    /// Parses an XWD file (X Window Dump, version 7, as `xwd` writes): a ZPixmap of a
    /// TrueColor or DirectColor visual with 16, 24 or 32 bits per pixel.
    pub fn from_xwd(b: &[u8]) -> Result<Screenshot, String> {
        let header_size = be32(b, 0)? as usize;
        let field = |i| be32(b, i);
        if field(1)? != 7 {
            return Err(format!("XWD version {} (expected 7)", field(1)?));
        }
        if field(2)? != 2 {
            return Err(format!("pixmap format {} (expected ZPixmap, 2)", field(2)?));
        }
        let (width, height) = (field(4)?, field(5)?);
        let lsb_first = field(7)? == 0;
        let bits_per_pixel = field(11)?;
        let bytes_per_line = field(12)? as usize;
        let visual_class = field(13)?;
        let masks = [field(14)?, field(15)?, field(16)?];
        let ncolors = field(19)? as usize;
        if !(visual_class == 4 || visual_class == 5) {
            return Err(format!(
                "visual class {visual_class} (expected TrueColor or DirectColor)"
            ));
        }
        let bpp = match bits_per_pixel {
            16 => 2,
            24 => 3,
            32 => 4,
            other => return Err(format!("{other} bits per pixel")),
        };
        let start = header_size + ncolors * 12;
        let need = start + bytes_per_line * height as usize;
        if b.len() < need {
            return Err(format!("{} bytes, expected {need}", b.len()));
        }
        let channel = |px: u32, mask: u32| -> u8 {
            if mask == 0 {
                return 0;
            }
            let shift = mask.trailing_zeros();
            let max = mask >> shift;
            (((px & mask) >> shift) * 255 / max) as u8
        };
        let mut pixels = Vec::with_capacity((width * height) as usize);
        for y in 0..height as usize {
            let row = &b[start + y * bytes_per_line..];
            for x in 0..width as usize {
                let p = &row[x * bpp..x * bpp + bpp];
                let mut v = 0u32;
                for i in 0..bpp {
                    let byte = if lsb_first { p[bpp - 1 - i] } else { p[i] };
                    v = (v << 8) | u32::from(byte);
                }
                pixels.push([
                    channel(v, masks[0]),
                    channel(v, masks[1]),
                    channel(v, masks[2]),
                ]);
            }
        }
        Ok(Screenshot {
            width,
            height,
            pixels,
        })
    }

    /// The part at `x`, `y` of `w`×`h`.
    pub fn crop(&self, x: u32, y: u32, w: u32, h: u32) -> Screenshot {
        let mut pixels = Vec::with_capacity((w * h) as usize);
        for row in y..y + h {
            let at = (row * self.width + x) as usize;
            pixels.extend_from_slice(&self.pixels[at..at + w as usize]);
        }
        Screenshot {
            width: w,
            height: h,
            pixels,
        }
    }

    /// How many different colours the image has.
    pub fn distinct_colours(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for p in &self.pixels {
            seen.insert(*p);
        }
        seen.len()
    }

    /// The share of pixels within [`TOLERANCE`] of `colour` on every channel.
    pub fn share_near(&self, colour: [u8; 3]) -> f64 {
        let near = |p: &[u8; 3]| (0..3).all(|i| p[i].abs_diff(colour[i]) <= TOLERANCE);
        self.pixels.iter().filter(|&p| near(p)).count() as f64 / self.pixels.len().max(1) as f64
    }

    /// The share of pixels that differ from `other` (same size).
    pub fn share_changed(&self, other: &Screenshot) -> f64 {
        assert_eq!(
            (self.width, self.height),
            (other.width, other.height),
            "screenshots of different sizes"
        );
        let changed = self
            .pixels
            .iter()
            .zip(&other.pixels)
            .filter(|(a, b)| a != b)
            .count();
        changed as f64 / self.pixels.len().max(1) as f64
    }

    /// Writes a PNG (8-bit RGB, stored without compression: big but simple).
    pub fn save_png(&self, path: &Path) {
        let mut raw = Vec::with_capacity(self.pixels.len() * 3 + self.height as usize);
        for row in self.pixels.chunks(self.width as usize) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        // zlib stream of stored deflate blocks.
        let mut z = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, block) in blocks.iter().enumerate() {
            z.push(u8::from(i + 1 == blocks.len()));
            let len = block.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(block);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        z.extend_from_slice(&((b << 16) | a).to_be_bytes());

        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&self.width.to_be_bytes());
        ihdr.extend_from_slice(&self.height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", z), (b"IEND", Vec::new())] {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc_input = kind.to_vec();
            crc_input.extend_from_slice(&data);
            png.extend_from_slice(&crc_input);
            png.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        }
        std::fs::write(path, png).unwrap();
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Whether `shot` (one monitor's part of the client's display) shows the remote session's
/// desktop with the window of colour `mark`, compared with `blank`, the same part before the
/// client started: most pixels changed, and a large share is the session window's colour (the
/// xrdp login screen, a black or a half-drawn client window do not pass). Ok: the measures;
/// Err: why not.
pub fn desktop_drawn(
    shot: &Screenshot,
    blank: &Screenshot,
    mark: [u8; 3],
) -> Result<String, String> {
    let changed = shot.share_changed(blank);
    let marked = shot.share_near(mark);
    let colours = shot.distinct_colours();
    let measures = format!(
        "{:.0}% of pixels changed, {:.0}% of the session window's colour {}, {colours} distinct colours",
        changed * 100.0,
        marked * 100.0,
        hex(mark)
    );
    if changed < 0.5 {
        return Err(format!(
            "the display is mostly as before the client: {measures}"
        ));
    }
    if marked < 0.3 {
        return Err(format!("the session's desktop is not drawn: {measures}"));
    }
    if colours < 2 {
        return Err(format!("a single colour: {measures}"));
    }
    Ok(measures)
}

/// Where to keep screenshots: `POSTERN_RDP_SHOTS` if set (they are written there as PNG).
pub fn keep_screenshot(shot: &Screenshot, name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("POSTERN_RDP_SHOTS")?);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{name}.png"));
    shot.save_png(&path);
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×2 XWD as xwd writes it for a 24-bit TrueColor visual (32 bits per pixel, LSB first).
    fn xwd(pixels: &[[u8; 3]], w: u32, h: u32) -> Vec<u8> {
        let name = b"xwdump\0\0";
        let header_size = 100 + name.len() as u32;
        let fields: [u32; 25] = [
            header_size,
            7,
            2,
            24,
            w,
            h,
            0,
            0,
            32,
            0,
            32,
            32,
            w * 4 + 4, // padded lines
            4,
            0xff0000,
            0x00ff00,
            0x0000ff,
            8,
            256,
            1,
            w,
            h,
            0,
            0,
            0,
        ];
        let mut b = Vec::new();
        for f in fields {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(name);
        b.extend_from_slice(&[0u8; 12]); // one colour map entry
        for row in pixels.chunks(w as usize) {
            for p in row {
                b.extend_from_slice(&[p[2], p[1], p[0], 0]);
            }
            b.extend_from_slice(&[0; 4]);
        }
        b
    }

    #[test]
    fn parses_xwd_and_measures() {
        let px = [
            [1, 2, 3],
            [200, 80, 30],
            [200, 80, 30],
            [0, 0, 0],
            [255, 255, 255],
            [200, 81, 31],
        ];
        let s = Screenshot::from_xwd(&xwd(&px, 3, 2)).unwrap();
        assert_eq!((s.width, s.height), (3, 2));
        assert_eq!(s.pixels, px);
        assert_eq!(s.distinct_colours(), 5);
        assert!((s.share_near(LEFT) - 0.5).abs() < 1e-9);
        assert_eq!(s.crop(1, 1, 2, 1).pixels, [[255, 255, 255], [200, 81, 31]]);
        let mut t = s.clone();
        t.pixels[0] = [9, 9, 9];
        assert!((t.share_changed(&s) - 1.0 / 6.0).abs() < 1e-9);
        assert!(Screenshot::from_xwd(&xwd(&px, 3, 2)[..150]).is_err());
    }

    #[test]
    fn the_check_fails_on_a_blank_or_foreign_display() {
        let blank = Screenshot {
            width: 10,
            height: 10,
            pixels: vec![[0, 0, 0]; 100],
        };
        let e = desktop_drawn(&blank, &blank, LEFT).unwrap_err();
        assert!(e.contains("mostly as before"), "{e}");
        // Something else drawn (the login screen's colours): not the desktop.
        let mut login = blank.clone();
        login.pixels = vec![[0x00, 0x9c, 0xb5]; 100];
        login.pixels[0] = [0xde, 0xde, 0xde];
        let e = desktop_drawn(&login, &blank, LEFT).unwrap_err();
        assert!(e.contains("not drawn"), "{e}");
        let mut desk = login.clone();
        for p in desk.pixels.iter_mut().take(60) {
            *p = LEFT;
        }
        assert!(desktop_drawn(&desk, &blank, LEFT).is_ok());
    }

    #[test]
    fn png_is_well_formed() {
        let s = Screenshot {
            width: 2,
            height: 1,
            pixels: vec![[1, 2, 3], [4, 5, 6]],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        s.save_png(&p);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&b[12..16], b"IHDR");
        // CRC of IEND is fixed.
        assert_eq!(&b[b.len() - 4..], &[0xae, 0x42, 0x60, 0x82]);
    }
}
