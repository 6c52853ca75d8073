//! A throwaway PostgreSQL cluster for one test: Debian's PostgreSQL server binaries
//! (`/usr/lib/postgresql/N/bin`), `initdb` into a temporary directory (as the `postgres`
//! account when the tests run as root, since PostgreSQL refuses to run as root), started with
//! `pg_ctl` on a free loopback port, password authentication (SCRAM) for the `postern` role.
//! Nothing touches the system's own cluster. Stopped (immediately) and removed when dropped:
//! keep it in a local, not a static (statics are never dropped).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, run, wait_for};

/// The password of the `postern` role.
pub const PASSWORD: &str = "pg-test-secret-3f9a";

/// A running cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    options: Vec<String>,
}

/// Debian's PostgreSQL server binaries (the newest installed version).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql/*/bin: install the postgresql package (scripts/test.sh does)")
    })
}

fn as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` account when running as root.
fn pg_command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Creates and starts a cluster; `options` are extra server settings (`ssl=on`, …).
    pub fn start(options: &[&str]) -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("postern-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if as_root() {
            let (ok, _, err) = run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
            assert!(ok, "chown postgres {}: {err}", dir.path().display());
        }
        let (ok, out, err) = run(pg_command(&bin.join("initdb"))
            .args([
                "-U",
                "postern",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data));
        assert!(ok, "initdb: {out}{err}");
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        pg.resume();
        pg
    }

    /// The cluster's directory (for files the server reads: certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        for o in &self.options {
            opts.push_str(&format!(" -c {o}"));
        }
        let (ok, out, err) = run(pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"]));
        assert!(
            ok,
            "pg_ctl start: {out}{err}\n{}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        wait_for(
            "PostgreSQL accepts connections",
            Duration::from_secs(20),
            || self.psql("postgres", "SELECT 1").ok(),
        );
    }

    /// Stops the server at once (connections are cut, as when the database host fails).
    pub fn pause(&mut self) {
        let (ok, out, err) = run(pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]));
        assert!(ok, "pg_ctl stop: {out}{err}");
    }

    /// Runs SQL in `database` as `postern`; the output (unaligned, tuples only) or the error.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let (ok, out, err) = run(Command::new(self.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postern",
                "-d",
                database,
                "-c",
                sql,
            ]));
        if ok {
            Ok(out.trim().to_owned())
        } else {
            Err(err)
        }
    }

    /// A new, empty database; returns its name.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name.to_owned()
    }

    /// `postgres://postern@127.0.0.1:PORT/DATABASE` (no password: it comes from a file or the
    /// environment, as in production).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postern@127.0.0.1:{}/{database}", self.port)
    }

    /// A file holding the password (mode 0600), for `[store] password_file`.
    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.path().join("store-password");
        if !p.exists() {
            std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        p
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
