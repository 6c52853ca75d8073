//! The link emulator (`postern-bench wan`, issue #14) from a test: two network namespaces,
//! "home" and "cloud", joined by an emulated WAN link with rate, delay, jitter, loss and a
//! bounded queue, controlled by lines on the emulator's stdin.
//!
//! Processes go into a namespace with [`Wan::home`] / [`Wan::cloud`] (`ip netns exec NS …`);
//! sockets the test itself opens go there with [`Wan::in_home`] / [`Wan::in_cloud`] (a thread
//! that entered the namespace creates them; they keep working from any thread). Needs root and
//! `/dev/net/tun`: without them [`Wan::start`] panics saying so.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::bin;

/// A running emulator; dropping it quits it (the namespaces go with it).
pub struct Wan {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Behind a mutex so that `&Wan` can go into [`Wan::in_home`]'s closures.
    lines: Mutex<Receiver<String>>,
    pub home_ns: String,
    pub cloud_ns: String,
    /// The home side's current address (changes with [`Wan::change_address`]).
    pub home_addr: Ipv4Addr,
    pub cloud_addr: Ipv4Addr,
    /// The ready line (namespaces, addresses, the link's parameters).
    pub ready: Value,
    stderr: std::sync::Arc<Mutex<String>>,
}

/// Why the emulator cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!(
            "the link emulator needs root (network namespaces, TUN devices); effective uid is {uid:?}"
        ));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("the link emulator needs /dev/net/tun (the TUN driver)".into());
    }
    None
}

impl Wan {
    /// Starts `postern-bench wan --profile PROFILE` (`home`, `poor` or `none`).
    pub fn start(profile: &str) -> Wan {
        Wan::start_with(&["--profile", profile])
    }

    /// Starts `postern-bench wan ARGS…` and waits for its ready line.
    pub fn start_with(args: &[&str]) -> Wan {
        if let Some(why) = unavailable() {
            panic!("cannot run this test: {why} (CI runs the tests as root)");
        }
        let mut child = Command::new(bin("postern-bench"))
            .arg("wan")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting postern-bench wan");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_text = std::sync::Arc::new(Mutex::new(String::new()));
        let e = err_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                e.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut wan = Wan {
            child,
            stdin,
            lines: Mutex::new(lines),
            home_ns: String::new(),
            cloud_ns: String::new(),
            home_addr: Ipv4Addr::UNSPECIFIED,
            cloud_addr: Ipv4Addr::UNSPECIFIED,
            ready: Value::Null,
            stderr: err_text,
        };
        let ready = wan.next_line(Duration::from_secs(20), "the ready line");
        assert_eq!(ready["ready"], true, "not a ready line: {ready}");
        wan.home_ns = ready["home_ns"].as_str().unwrap().to_owned();
        wan.cloud_ns = ready["cloud_ns"].as_str().unwrap().to_owned();
        wan.home_addr = ready["home_addr"].as_str().unwrap().parse().unwrap();
        wan.cloud_addr = ready["cloud_addr"].as_str().unwrap().parse().unwrap();
        wan.ready = ready;
        wan
    }

    /// The emulator's stderr so far (for assertion messages).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn next_line(&mut self, limit: Duration, what: &str) -> Value {
        let line = self.lines.lock().unwrap().recv_timeout(limit);
        match line {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("wan printed a line that is not JSON ({e}): {line}")),
            Err(RecvTimeoutError::Timeout) => {
                panic!("wan: no {what} within {limit:?}; stderr: {}", self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                // Let the stderr reader catch up.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "wan exited ({status:?}) before {what}; stderr: {}",
                    self.stderr()
                )
            }
        }
    }

    /// Sends one control line and returns the JSON answer (`ok` may be false).
    pub fn command(&mut self, cmd: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("wan's stdin is closed");
        writeln!(stdin, "{cmd}").expect("writing to wan's stdin");
        stdin.flush().expect("flushing wan's stdin");
        self.next_line(Duration::from_secs(10), &format!("answer to '{cmd}'"))
    }

    /// Sends a control line that must succeed.
    fn ok(&mut self, cmd: &str) -> Value {
        let v = self.command(cmd);
        assert_eq!(v["ok"], true, "'{cmd}' failed: {v}");
        v
    }

    /// The home side moves to a new address (a Wi-Fi switch); returns it.
    pub fn change_address(&mut self) -> Ipv4Addr {
        let v = self.ok("addr");
        self.home_addr = v["home_addr"].as_str().unwrap().parse().unwrap();
        self.home_addr
    }

    /// Everything is dropped in both directions until [`Wan::up`] (a sleeping laptop).
    pub fn down(&mut self) {
        self.ok("down");
    }

    pub fn up(&mut self) {
        self.ok("up");
    }

    /// All UDP is dropped, both ways, until [`Wan::allow_udp`].
    pub fn block_udp(&mut self) {
        self.ok("block-udp");
    }

    pub fn allow_udp(&mut self) {
        self.ok("allow-udp");
    }

    /// The counters: `{"up": {...}, "down": {...}}`, each with `packets`, `bytes` and
    /// `dropped` by cause (`loss`, `queue`, `down`, `udp_blocked`, `stale_addr`,
    /// `write_error`).
    pub fn stats(&mut self) -> Value {
        self.ok("stats")
    }

    /// `program` run in the home namespace (`ip netns exec HOME program`).
    pub fn home(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_exec(&self.home_ns, program)
    }

    /// `program` run in the cloud namespace.
    pub fn cloud(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_exec(&self.cloud_ns, program)
    }

    /// Runs `f` on a thread inside the home namespace: sockets it opens live there.
    pub fn in_home<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.home_ns, f)
    }

    /// Runs `f` on a thread inside the cloud namespace.
    pub fn in_cloud<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.cloud_ns, f)
    }

    /// Quits the emulator and waits for it; returns its exit code.
    pub fn quit(mut self) -> Option<i32> {
        self.stop()
    }

    fn stop(&mut self) -> Option<i32> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        for _ in 0..250 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed emulator leaves its namespaces behind.
        for ns in [&self.home_ns, &self.cloud_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        None
    }

    /// The process id (to kill it in a crash test).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash: the namespaces stay behind (Drop then finds the process gone and
    /// leaves them alone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ip netns exec NS program`.
pub fn netns_exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `f` on a scoped thread that entered network namespace `ns` (setns(2)).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The names of the network namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}
