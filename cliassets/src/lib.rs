//! Shell completions and man pages for Postern's programs, generated from their clap definitions
//! so they can never drift from the real flags.
//!
//! Every binary calls [`run_if_requested`] first thing in `main`; `PROGRAM generate-assets DIR`
//! then writes, and exits without parsing anything else:
//!
//! ```text
//! DIR/completions/bash/PROGRAM        → /usr/share/bash-completion/completions/PROGRAM
//! DIR/completions/zsh/_PROGRAM        → /usr/share/zsh/vendor-completions/_PROGRAM
//! DIR/completions/fish/PROGRAM.fish   → /usr/share/fish/vendor_completions.d/PROGRAM.fish
//! DIR/man/PROGRAM.1, PROGRAM-SUB.1 …  → /usr/share/man/man1/
//! ```
//!
//! `scripts/package.sh` runs it for each program and puts the files into the Debian packages.
//! The command is not a clap subcommand, so it is in neither `--help`, the man pages nor the
//! completions. (Subcommands marked `hide` are left out of the man pages; clap_complete's bash
//! script still completes them.)
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The hidden first argument that asks a program for its assets.
pub const SUBCOMMAND: &str = "generate-assets";

/// Writes completions (bash, zsh, fish) and man pages (the program and each visible subcommand)
/// for `cmd` under `out`; returns the files written.
pub fn generate(cmd: clap::Command, out: &Path) -> io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir)?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), name.as_str(), &mut buf);
        let path = dir.join(file);
        fs::File::create(&path)?.write_all(&buf)?;
        written.push(path);
    }
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let before: Vec<PathBuf> = list(&man)?;
    clap_mangen::generate_to(cmd, &man)?;
    written.extend(list(&man)?.into_iter().filter(|p| !before.contains(p)));
    Ok(written)
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        v.push(e?.path());
    }
    v.sort();
    Ok(v)
}

/// If the program was started as `PROGRAM generate-assets DIR`, writes its assets to DIR and
/// returns the exit code; otherwise returns `None` and `main` goes on as usual.
pub fn run_if_requested(command: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_none_or(|a| a != SUBCOMMAND) {
        return None;
    }
    let cmd = command();
    let name = cmd.get_name().to_owned();
    let [_, dir] = args.as_slice() else {
        eprintln!("usage: {name} {SUBCOMMAND} DIR");
        return Some(ExitCode::from(2));
    };
    match generate(cmd, Path::new(dir)) {
        Ok(files) => {
            eprintln!(
                "{name}: wrote {} files under {}",
                files.len(),
                Path::new(dir).display()
            );
            Some(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "{name}: writing assets to {}: {e}",
                Path::new(dir).display()
            );
            Some(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn sample() -> Command {
        Command::new("demo-prog")
            .about("A demo")
            .subcommand(
                Command::new("token")
                    .about("Tokens")
                    .subcommand(Command::new("create").arg(Arg::new("site").long("site"))),
            )
            .subcommand(Command::new("secret-hook").hide(true))
    }

    #[test]
    fn writes_completions_and_man_pages_without_hidden_commands() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(sample(), dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for want in [
            "completions/bash/demo-prog",
            "completions/zsh/_demo-prog",
            "completions/fish/demo-prog.fish",
            "man/demo-prog.1",
            "man/demo-prog-token.1",
            "man/demo-prog-token-create.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("secret-hook")),
            "{names:?}"
        );
        let bash = fs::read_to_string(dir.path().join("completions/bash/demo-prog")).unwrap();
        assert!(bash.contains("--site"), "{bash}");
        let man = fs::read_to_string(dir.path().join("man/demo-prog-token-create.1")).unwrap();
        assert!(man.contains(".TH demo-prog-token-create 1"), "{man}");
        assert!(man.contains("site"), "{man}");
    }
}
