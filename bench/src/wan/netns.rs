//! Network namespaces and the TUN device in each: created with iproute2 (`ip netns add`,
//! `ip -n NS …`) and one short-lived thread per namespace that enters it with setns(2) and
//! opens `/dev/net/tun` there (a TUN device belongs to the namespace of the thread that made it,
//! and its file descriptor keeps working from any thread afterwards).
//!
//! Names are `pw-<pid>-home` / `pw-<pid>-cloud`, so a leftover of a crashed run never clashes
//! with a new run, and [`remove_stale`] can tell which leftovers are dead.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// The TUN device's name inside each namespace.
pub const DEV: &str = "pw0";
/// Every namespace this tool creates starts with this.
pub const PREFIX: &str = "pw-";

/// Runs `ip ARGS`; an error carries the command line and what `ip` said.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| "running `ip` (iproute2 must be installed)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        Ok(Netns { name: name.into() })
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets, TUN devices and
    /// `/proc/sys/net` opened there belong to it).
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("setns-{name}"))
            .spawn(move || {
                let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("setns into network namespace {name}"))?;
                f()
            })
            .context("spawning a thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the thread inside {} panicked", self.name))?
    }

    /// Creates the TUN device [`DEV`] inside the namespace (IPv4 only: IPv6 is switched off
    /// there so that nothing but the test's own traffic crosses the link), brings it and `lo`
    /// up, and gives the device `addr/24` with a route to `peer_net/24` through it.
    pub fn tun(&self, addr: Ipv4Addr, peer_net: Ipv4Addr) -> anyhow::Result<tun_rs::SyncDevice> {
        let dev = self.run_inside(|| {
            for (key, value) in [
                ("ipv6/conf/all/disable_ipv6", "1"),
                ("ipv6/conf/default/disable_ipv6", "1"),
                // Deleting the primary address (the `addr` command) keeps the new one.
                ("ipv4/conf/all/promote_secondaries", "1"),
                ("ipv4/conf/default/promote_secondaries", "1"),
            ] {
                let path = format!("/proc/sys/net/{key}");
                std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
            }
            tun_rs::DeviceBuilder::new()
                .name(DEV)
                .mtu(1500)
                .build_sync()
                .context("creating the TUN device (needs root and /dev/net/tun)")
        })?;
        self.ip(&["link", "set", "lo", "up"])?;
        self.ip(&["link", "set", DEV, "up"])?;
        self.ip(&["addr", "add", &format!("{addr}/24"), "dev", DEV])?;
        self.ip(&[
            "route",
            "add",
            &format!("{peer_net}/24"),
            "dev",
            DEV,
            "src",
            &addr.to_string(),
        ])?;
        Ok(dev)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("wan: {e}");
        }
    }
}

/// The pid in a name made by this tool (`pw-<pid>-home`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, side) = rest.split_once('-')?;
    if side != "home" && side != "cloud" {
        return None;
    }
    pid.parse().ok()
}

/// Deletes the `pw-<pid>-*` namespaces whose process is gone; returns their names.
pub fn remove_stale() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list`")?;
    let list = String::from_utf8_lossy(&out.stdout);
    let mut removed = Vec::new();
    for line in list.lines() {
        // Lines look like `name` or `name (id: 3)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        ip(&["netns", "del", name])?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_have_an_owner() {
        assert_eq!(owner_pid("pw-123-home"), Some(123));
        assert_eq!(owner_pid("pw-7-cloud"), Some(7));
        assert_eq!(owner_pid("pw-7-other"), None);
        assert_eq!(owner_pid("pw-x-home"), None);
        assert_eq!(owner_pid("blue"), None);
        assert_eq!(owner_pid("pw-12"), None);
    }
}
