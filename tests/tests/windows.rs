//! The Windows client (issue #15, item 6): `postern.exe`, cross-built for
//! `x86_64-pc-windows-gnu`, runs under Wine (Debian's `wine64`, headless: no display, console
//! only) against the Linux gateway and connector on loopback. It carries a DICOM C-ECHO to a
//! real Orthanc (dcmtk `echoscu`), signs in through the browser flow (its posture collected
//! the Windows way, the token stored under `%APPDATA%\postern`), and, with that saved sign-in,
//! carries 8 MiB of random bytes through an echo endpoint unchanged. The gateway's audit log
//! has each session with its bytes.
//!
//! Build the client first (scripts/test.sh does):
//! `cargo build -p postern-client --bin postern --target x86_64-pc-windows-gnu`.
//! `POSTERN_WINDOWS_EXE` names another `postern.exe`. Run alone with
//! `cargo test -p postern-e2e --test windows -- --nocapture` to see the timings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postern_e2e::dicom::{echoscu, Orthanc};
use postern_e2e::rogue_idp::RogueIdp;
use postern_e2e::{free_port, wait_for, Deployment, Echo, Proc};
use serde_json::Value;

const TARGET: &str = "x86_64-pc-windows-gnu";
/// Bytes sent through the echo endpoint.
const TRANSFER: usize = 8 << 20;
/// Creating the Wine prefix (registry, system directories; about 700 MB): seconds, more on a
/// slow machine.
const PREFIX_LIMIT: Duration = Duration::from_secs(240);
/// Starting `postern.exe` in a ready prefix, until its "ready" line.
const START_LIMIT: Duration = Duration::from_secs(60);

/// `postern.exe` of the same profile as this test (target/x86_64-pc-windows-gnu/debug), or
/// `POSTERN_WINDOWS_EXE`.
fn windows_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("POSTERN_WINDOWS_EXE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "POSTERN_WINDOWS_EXE={} does not exist",
            p.display()
        );
        return p;
    }
    // target/<profile>/deps/windows-xxxx
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let profile = profile_dir.file_name().unwrap();
    let target = profile_dir.parent().unwrap();
    let p = target.join(TARGET).join(profile).join("postern.exe");
    let release = if profile == "release" {
        " --release"
    } else {
        ""
    };
    assert!(
        p.is_file(),
        "{} missing: build the Windows client first with `rustup target add {TARGET}` (once), \
         `apt-get install gcc-mingw-w64-x86-64` (the linker) and \
         `cargo build -p postern-client --bin postern --target {TARGET}{release}` \
         (scripts/test.sh does all three)",
        p.display()
    );
    p
}

/// A Wine prefix of its own (64-bit, in a temporary directory), headless.
struct Wine {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Wine {
    fn new(exe: PathBuf) -> Wine {
        let found = Command::new("wine").arg("--version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "wine is not installed (`apt-get install wine wine64`; scripts/test.sh installs it): {found:?}"
        );
        Wine {
            dir: tempfile::tempdir().unwrap(),
            exe,
        }
    }

    fn prefix(&self) -> PathBuf {
        self.dir.path().join("prefix")
    }

    /// A command in this prefix: no display (console only), no debug channels, and no Mono or
    /// Gecko (their installers would be offered while the prefix is created).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("WINEPREFIX", self.prefix())
            .env("WINEARCH", "win64")
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("NO_COLOR", "1")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("POSTERN_CONFIG_DIR")
            .env_remove("POSTERN_GATEWAY")
            .env_remove("POSTERN_CA_FILE")
            .env_remove("POSTERN_TOKEN")
            .env_remove("POSTERN_TOKEN_FILE");
        c
    }

    /// `wine postern.exe ARGS`.
    fn postern(&self, args: &[&str]) -> Command {
        let mut c = self.command("wine");
        c.arg(&self.exe).args(args);
        c
    }

    /// A Linux path as Windows programs in the prefix see it (Wine maps `Z:` to `/`).
    fn path(p: &Path) -> String {
        let abs = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        format!("Z:{}", abs.display().to_string().replace('/', "\\"))
    }

    /// Runs `wine PROGRAM ARGS` in the prefix to completion within `limit`; Err(what it printed).
    fn run(&self, what: &str, program: &str, args: &[&str], limit: Duration) -> Result<(), String> {
        let mut c = self.command("wine");
        c.arg(program).args(args);
        let log = self
            .dir
            .path()
            .join(format!("{}.log", what.replace(' ', "-")));
        let mut p = Proc::spawn(what, &mut c, log);
        match wait_exit(&mut p, limit) {
            Some(s) if s.success() => Ok(()),
            status => Err(format!(
                "{what}: exit {status:?} (limit {limit:?}): {}",
                p.log_text()
            )),
        }
    }

    /// Creates the prefix (`wineboot --init`), makes it report Windows 10 (the oldest Windows
    /// Rust's standard library supports; a new Wine 8 prefix says Windows 7), and, where Wine
    /// lacks it (before 8.13), adds a stand-in `bcryptprimitives.dll` (tests/wine/) so that Rust
    /// programs can start at all.
    fn init(&self) -> Result<(), String> {
        self.run("wineboot", "wineboot", &["--init"], PREFIX_LIMIT)?;
        self.run("winecfg", "winecfg", &["-v", "win10"], START_LIMIT)?;
        let system32 = self.prefix().join("drive_c/windows/system32");
        if !system32.join("bcryptprimitives.dll").exists() {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("wine/bcryptprimitives.c");
            let dll = system32.join("bcryptprimitives.dll");
            let out = Command::new("x86_64-w64-mingw32-gcc")
                .args(["-shared", "-s", "-O2", "-o"])
                .arg(&dll)
                .arg(&src)
                .arg("-ladvapi32")
                .output()
                .map_err(|e| {
                    format!("x86_64-w64-mingw32-gcc (apt-get install gcc-mingw-w64-x86-64): {e}")
                })?;
            if !out.status.success() {
                return Err(format!(
                    "building {}: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            eprintln!(
                "this Wine has no bcryptprimitives.dll: using the stand-in from {}",
                src.display()
            );
        }
        Ok(())
    }

    /// The user's `%APPDATA%\postern` inside the prefix.
    fn appdata_postern(&self) -> Option<PathBuf> {
        let users = self.prefix().join("drive_c").join("users");
        std::fs::read_dir(users)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .map(|u| u.join("AppData").join("Roaming").join("postern"))
            .find(|d| d.is_dir())
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // Ends every process left in the prefix, and its wineserver.
        let _ = self.command("wineserver").arg("-k").output();
    }
}

/// Waits for `p` to exit within `limit`; its exit status (None: still running, then killed).
fn wait_exit(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    p.kill();
    None
}

/// Starts `wine postern.exe connect ENDPOINT --listen ADDR EXTRA...` and waits for its ready
/// line; Err(everything it printed) if it exits first.
fn connect(
    wine: &Wine,
    d: &Deployment,
    endpoint: &str,
    extra: &[&str],
) -> Result<(Proc, SocketAddr), String> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["connect", endpoint, "--listen", &listen];
    args.extend_from_slice(extra);
    let log = d.path(&format!("windows-client-{endpoint}.log"));
    let mut cmd = wine.postern(&args);
    cmd.env("POSTERN_LOG", "info,postern_client=debug");
    let mut p = Proc::spawn("postern.exe", &mut cmd, log);
    let start = Instant::now();
    loop {
        let text = p.log_text();
        if let Some(line) = text.lines().find(|l| l.starts_with("ready: listening on ")) {
            let addr: SocketAddr = line["ready: listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(addr.to_string(), listen, "{text}");
            eprintln!(
                "postern.exe connect {endpoint}: ready in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok((p, addr));
        }
        if !p.is_running() {
            return Err(text);
        }
        assert!(
            start.elapsed() < START_LIMIT,
            "postern.exe connect {endpoint} never became ready within {START_LIMIT:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `data` through `addr` (an echo tunnel) from one thread while reading it back on this
/// one; returns what came back.
fn echo_through(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&out).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    let r = s.read_to_end(&mut back);
    writer.join().expect("writing into the tunnel failed");
    if let Err(e) = r {
        panic!(
            "reading from the tunnel failed after {} of {} bytes: {e}",
            back.len(),
            data.len()
        );
    }
    back
}

fn policy(dicom_port: u16, echo: SocketAddr) -> String {
    format!(
        r#"
[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {dicom_port}
protocol = "dicom"

[[endpoints]]
name = "echo"
site = "truro"
host = "127.0.0.1"
port = {echo_port}
protocol = "tcp"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom", "echo"]
max_session = "1h"
"#,
        echo_port = echo.port()
    )
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// On a failing test, the logs that say why.
struct Logs(PathBuf);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(dir) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("----- {} (last 40 lines)\n{tail}", p.display());
            }
        }
    }
}

#[test]
fn windows_client_under_wine_carries_dicom_and_exact_bytes() {
    let exe = windows_exe();
    let wine = Wine::new(exe);

    let t = Instant::now();
    if let Err(e) = wine.init() {
        panic!("creating the Wine prefix failed: {e}");
    }
    eprintln!("Wine prefix created in {:.1} s", t.elapsed().as_secs_f64());
    // `--version` proves the executable runs at all.
    let t = Instant::now();
    let mut first = Proc::spawn(
        "postern.exe --version",
        &mut wine.postern(&["--version"]),
        wine.dir.path().join("version.log"),
    );
    let status = wait_exit(&mut first, START_LIMIT);
    let text = first.log_text();
    assert!(
        status.is_some_and(|s| s.success()) && text.starts_with("postern "),
        "postern.exe --version under Wine failed (exit {status:?}): {text}"
    );
    eprintln!("postern.exe --version: {:.1} s", t.elapsed().as_secs_f64());

    // Gateway (signing in through a provider that asks nothing; device trust off), connector,
    // a real PACS and an echo service.
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let echo = Echo::start();
    let mut d = Deployment::prepare(&policy(orthanc.dicom_port, echo.addr));
    let _logs = Logs(d.dir.path().to_path_buf());
    let idp = RogueIdp::start("postern-gw");
    std::fs::write(d.path("oidc-secret"), "s3cret-for-tests-only").unwrap();
    d.append_config(&format!(
        "[oidc]\nissuer = \"{}\"\nclient_id = \"postern-gw\"\nclient_secret_file = \"oidc-secret\"\nredirect_url = \"{}\"\ninsecure_http_issuer = true\n[devices]\nrequired = false\n",
        idp.issuer,
        d.callback_url()
    ));
    d.start_gateway();
    let d = d.with_connector(&[(
        "127.0.0.1/32",
        format!("{},{}", orthanc.dicom_port, echo.addr.port()),
    )]);
    let ca = Wine::path(&d.ca_file());

    // (a) A C-ECHO through `postern.exe connect`, with a minted token and every flag given.
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let token = Wine::path(&token);
    let (mut client, local) = connect(
        &wine,
        &d,
        "pacs-dicom",
        &[
            "--gateway",
            &d.url(),
            "--ca-file",
            &ca,
            "--token-file",
            &token,
        ],
    )
    .unwrap_or_else(|out| panic!("postern.exe connect pacs-dicom exited: {out}"));
    let (ok, out, err) = echoscu(local);
    assert!(ok, "C-ECHO through postern.exe failed: {out}{err}");
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "pacs-dicom");
    let start = d.wait_event("session.start", |e| e["session_id"] == end["session_id"]);
    assert_eq!(start["user"], "alice@truro.nhs.uk", "{start}");
    assert_eq!(start["endpoint"]["protocol"], "dicom", "{start}");
    assert_eq!(start["decision"]["rule"], "radiologists", "{start}");
    assert!(s(&start["source"]).starts_with("127.0.0.1:"), "{start}");
    assert!(end["bytes_up"].as_u64().unwrap() > 0, "{end}");
    assert!(end["bytes_down"].as_u64().unwrap() > 0, "{end}");
    client.kill();

    // Sign-in from Windows: the browser flow, posture collected the Windows way, the token
    // and the gateway saved under %APPDATA%\postern.
    let t = Instant::now();
    let mut login = Proc::spawn(
        "postern.exe login",
        &mut wine.postern(&[
            "login",
            &d.url(),
            "--ca-file",
            &ca,
            "--no-browser",
            "--timeout",
            "60",
        ]),
        d.path("windows-login.log"),
    );
    let url = wait_for(
        "postern.exe login to print the sign-in URL",
        START_LIMIT,
        || {
            let text = login.log_text();
            assert!(login.is_running(), "postern.exe login exited: {text}");
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with("https://"))
                .map(str::to_owned)
        },
    );
    let posture_time = t.elapsed();
    let browser = postern_e2e::oidc::Browser::new(&d.ca_file()).get(&url);
    assert_eq!(
        browser.status, 200,
        "the browser's sign-in did not reach postern.exe's callback: {browser:?}"
    );
    assert!(browser.body.contains("You are signed in"), "{browser:?}");
    let status = wait_exit(&mut login, START_LIMIT);
    let text = login.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "postern.exe login failed ({status:?}): {text}"
    );
    assert!(text.contains("signed in as sub-mallory"), "{text}");
    // "device posture: NAME VERSION; disk encryption X, firewall Y, screen lock Z"
    let posture = text
        .lines()
        .find_map(|l| l.strip_prefix("device posture: "))
        .unwrap_or_else(|| panic!("no posture line: {text}"));
    eprintln!(
        "postern.exe login: posture '{posture}' and the sign-in URL after {:.1} s",
        posture_time.as_secs_f64()
    );
    let (os, facts) = posture.split_once("; ").unwrap();
    assert!(
        os.starts_with("Windows") || os.starts_with("Microsoft Windows"),
        "{posture}"
    );
    let build = os.rsplit(' ').next().unwrap();
    // The prefix reports Windows 10 (winecfg -v win10): 10.0.BUILD from its registry.
    assert!(build.starts_with("10.0."), "{posture}");
    assert!(
        build.split('.').count() >= 3 && build.split('.').all(|p| p.parse::<u32>().is_ok()),
        "the OS build is missing from '{posture}'"
    );
    for (fact, value) in facts.split(", ").map(|f| f.rsplit_once(' ').unwrap()) {
        assert!(
            ["true", "false", "unknown"].contains(&value),
            "{fact}: {value} in '{posture}'"
        );
    }
    let saved = wine
        .appdata_postern()
        .unwrap_or_else(|| panic!("no %APPDATA%\\postern in the prefix after login: {text}"));
    assert!(saved.join("token").is_file(), "{}", saved.display());
    let config: Value =
        serde_json::from_slice(&std::fs::read(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["gateway"], d.url(), "{config}");

    // (b) With the saved sign-in (no flags at all), 8 MiB of random bytes through the echo
    // endpoint and back, byte for byte.
    let (mut client, local) = connect(&wine, &d, "echo", &[])
        .unwrap_or_else(|out| panic!("postern.exe connect echo (saved sign-in) exited: {out}"));
    let mut data = vec![0u8; TRANSFER];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data).unwrap();
    let t = Instant::now();
    let back = echo_through(local, &data);
    let took = t.elapsed();
    assert_eq!(back.len(), data.len(), "the echo came back short or long");
    if let Some(i) = back.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("the echo differs from what was sent, first at byte {i}");
    }
    eprintln!(
        "8 MiB each way through postern.exe in {:.2} s",
        took.as_secs_f64()
    );
    let end = d.wait_event("session.end", |e| e["endpoint"]["name"] == "echo");
    assert_eq!(end["bytes_up"].as_u64(), Some(TRANSFER as u64), "{end}");
    assert_eq!(end["bytes_down"].as_u64(), Some(TRANSFER as u64), "{end}");
    let start = d.wait_event("session.start", |e| e["session_id"] == end["session_id"]);
    assert_eq!(start["user"], "sub-mallory", "{start}");
    // Which transport carried it (Wine 8 cannot open quinn's UDP socket: it lacks
    // IP_RECVECN, so the client falls back to TCP at once; Windows has the option).
    let log = client.log_text();
    let transport = log
        .lines()
        .find(|l| l.contains("QUIC connection up") || l.contains("QUIC unavailable"))
        .map(|l| {
            l.split("postern_client: ")
                .last()
                .unwrap_or(l)
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "not logged".into());
    eprintln!("transport of postern.exe: {transport}");
    client.kill();

    let (ok, out) = d.verify_audit();
    assert!(ok, "audit verification failed: {out}");
}
