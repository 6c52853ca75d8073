//! Who holds a local TCP port, so that "port 11112 is already in use" can name the program
//! (the clinician's own viewer, an old `postern connect`, a DICOM node started by hand). Asked
//! only after a bind failed; every answer is best effort and `None` when the system does not
//! say (another user's process, a tool that is missing).

/// `name (pid N)` of the process listening on TCP `port`, if this computer tells.
pub fn holder(port: u16) -> Option<String> {
    let (pid, name) = find(port)?;
    Some(match name {
        Some(n) => format!("{} (pid {pid})", bounded(&n)),
        None => format!("process {pid}"),
    })
}

/// A process name as shown: printable, at most 64 characters.
fn bounded(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect()
}

#[cfg(target_os = "linux")]
fn find(port: u16) -> Option<(u32, Option<String>)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_dir in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_dir
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let inode = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                let name = std::fs::read_to_string(proc_dir.path().join("comm")).ok();
                return Some((pid, name));
            }
        }
    }
    None
}

/// Socket inodes listening on `port` in a `/proc/net/tcp{,6}` table.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let listening = *f.get(3)? == "0A";
            (listening && u16::from_str_radix(hex_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(windows)]
fn find(port: u16) -> Option<(u32, Option<String>)> {
    let out = std::process::Command::new("netstat")
        .args(["-ano", "-p", "TCP"])
        .output()
        .ok()?;
    let pid = netstat_pid(&String::from_utf8_lossy(&out.stdout), port)?;
    let list = std::process::Command::new("tasklist")
        .args(["/FI", &format!("PID eq {pid}"), "/FO", "CSV", "/NH"])
        .output()
        .ok();
    let name = list.and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .next()
            .and_then(|l| l.split(',').next())
            .map(|n| n.trim_matches('"').to_owned())
            .filter(|n| !n.is_empty() && !n.starts_with("INFO:"))
    });
    Some((pid, name))
}

/// The PID listening on `port` in `netstat -ano -p TCP` output.
#[cfg_attr(not(windows), allow(dead_code))]
fn netstat_pid(text: &str, port: u16) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (proto, local, state, pid) = (f.first()?, f.get(1)?, f.get(3)?, f.get(4)?);
        let p = local.rsplit_once(':')?.1.parse::<u16>().ok()?;
        (proto.eq_ignore_ascii_case("TCP") && *state == "LISTENING" && p == port)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

#[cfg(target_os = "macos")]
fn find(port: u16) -> Option<(u32, Option<String>)> {
    let out = std::process::Command::new("lsof")
        .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-Fpc"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix('p')?.parse().ok())?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix('c'))
        .map(str::to_owned);
    Some((pid, name))
}

#[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
fn find(_port: u16) -> Option<(u32, Option<String>)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2B68 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:2B68 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 999 1 0000000000000000 100 0 0 10 0\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 11112), vec![123456]);
        assert_eq!(listening_inodes(table, 80), vec![777]);
        assert!(listening_inodes(table, 443).is_empty());
    }

    #[test]
    fn netstat_output_names_the_pid() {
        let text = "\r\nActive Connections\r\n\r\n  Proto  Local Address          Foreign Address        State           PID\r\n  TCP    0.0.0.0:135            0.0.0.0:0              LISTENING       1020\r\n  TCP    127.0.0.1:11112        0.0.0.0:0              LISTENING       4242\r\n  TCP    127.0.0.1:11112        127.0.0.1:50000        ESTABLISHED     4242\r\n  TCP    [::]:445               [::]:0                 LISTENING       4\r\n";
        assert_eq!(netstat_pid(text, 11112), Some(4242));
        assert_eq!(netstat_pid(text, 445), Some(4));
        assert_eq!(netstat_pid(text, 3389), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_named_when_it_holds_the_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let who = holder(port).expect("the holder of a port this process listens on");
        assert!(
            who.contains(&format!("pid {}", std::process::id())),
            "{who}"
        );
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(bounded("a\u{1b}[31mb"), "a?[31mb");
        assert_eq!(bounded(&"x".repeat(100)).len(), 64);
    }
}
