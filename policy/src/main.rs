//! `postern-policy`: check a policy file, or explain the decision it makes for one request.
//!
//! Thin by design: argument parsing and printing only; everything else is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use postern_policy::{Policy, Request};

#[derive(Debug, Parser)]
#[command(
    name = "postern-policy",
    version,
    about = "Check Postern access policies and explain their decisions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy file: print a summary and exit 0, or print every error and exit 1.
    Check {
        /// The policy file.
        path: PathBuf,
    },
    /// Show what the policy decides for one request, and why. Exits 0 whatever the decision.
    Explain {
        /// The policy file.
        path: PathBuf,
        /// The user name, as the identity provider reports it.
        #[arg(long)]
        user: String,
        /// The user's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The endpoint name the user asks for.
        #[arg(long)]
        endpoint: String,
        /// Print the decision as JSON (the shape used in audit records).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Check { path } => {
            let Some(policy) = load(&path) else {
                return Ok(ExitCode::FAILURE);
            };
            println!(
                "ok: {} endpoints, {} rules, version {}",
                policy.endpoints().len(),
                policy.rule_count(),
                policy.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            path,
            user,
            groups,
            endpoint,
            json,
        } => {
            let Some(policy) = load(&path) else {
                return Ok(ExitCode::FAILURE);
            };
            let groups: Vec<String> = groups
                .into_iter()
                .map(|g| g.trim().to_owned())
                .filter(|g| !g.is_empty())
                .collect();
            let decision = policy.evaluate(&Request::new(
                &user,
                &groups,
                &endpoint,
                std::time::SystemTime::now(),
            ));
            if json {
                let text =
                    serde_json::to_string_pretty(&decision).context("serializing the decision")?;
                println!("{text}");
            } else {
                println!("{decision}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the policy, printing every problem to stderr if it is invalid.
fn load(path: &Path) -> Option<Policy> {
    match Policy::from_file(path) {
        Ok(policy) => Some(policy),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
