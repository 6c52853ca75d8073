//! `postern-policy`: check, test, explain, format and compare Postern access policies.
//!
//! Thin by design: argument parsing and printing only; everything else is in the library.
//! Exit codes: 0 success; 1 the policy is invalid, a test failed, formatting differs, or `diff`
//! found changes; 2 bad usage (clap).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use postern_policy::{DeviceFacts, Policy, Request, Severity};

#[derive(Debug, Parser)]
#[command(
    name = "postern-policy",
    version,
    about = "Check, test, explain, format and compare Postern access policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the `Explain` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy (a file, or a directory of *.toml files): print a summary and any
    /// warnings and exit 0, or print every error and exit 1.
    Check {
        /// The policy file or directory.
        path: PathBuf,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run the policy's inline [[tests]]: print a table, exit 1 if any fails (or none exist).
    Test {
        /// The policy file or directory.
        path: PathBuf,
    },
    /// Show what the policy decides for one request, and why. Exits 0 whatever the decision.
    Explain {
        /// The policy file or directory.
        path: PathBuf,
        /// The user name, as the identity provider reports it.
        #[arg(long)]
        user: String,
        /// The values of the user's `groups` claim, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The endpoint name the user asks for.
        #[arg(long)]
        endpoint: String,
        /// When: RFC 3339 (`2025-03-04T12:00:00Z`), or local (`2025-03-04T12:00`) in --zone or
        /// the policy's default zone. Default: now.
        #[arg(long)]
        at: Option<String>,
        /// Time zone for a local --at.
        #[arg(long)]
        zone: Option<String>,
        /// A device fact, repeatable: `approved=true`, `registered=true`, `user_verified=true`,
        /// or a posture fact `disk_encrypted=true`. Any of them means the device is known
        /// (facts not given are false).
        #[arg(long = "device-fact", value_name = "KEY=VALUE")]
        device_facts: Vec<String>,
        /// The client address.
        #[arg(long = "from", value_name = "ADDR")]
        from: Option<IpAddr>,
        /// The user signed in with multi-factor authentication.
        #[arg(long)]
        mfa: bool,
        /// How long ago the user signed in (`2h`); with --mfa or alone.
        #[arg(long, value_name = "DURATION")]
        signed_in_ago: Option<humantime::Duration>,
        /// A break-glass justification.
        #[arg(long)]
        justification: Option<String>,
        /// The port asked for (endpoints with port ranges).
        #[arg(long)]
        port: Option<u16>,
        /// Another IdP claim, repeatable: `roles=Locum`.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// Decide one web request with this HTTP method (`GET`); needs --path. Without --method,
        /// --path and --web-session, the request is a tunnel.
        #[arg(long, requires = "web_path")]
        method: Option<String>,
        /// The web request's path (`/dicom-web/studies`, without the query); needs --method.
        #[arg(
            long = "path",
            id = "web_path",
            value_name = "PATH",
            requires = "method"
        )]
        web_path: Option<String>,
        /// Decide a web application session as a whole (as when it starts), not one request.
        #[arg(long, conflicts_with_all = ["method", "web_path"])]
        web_session: bool,
        /// DICOM: the calling AE title the association presents; the decision then says whether
        /// the connector would accept it.
        #[arg(long, value_name = "AE")]
        calling_ae: Option<String>,
        /// DICOM: the service used (`echo`, `find`, `get`, `move`, `store`), checked likewise.
        #[arg(long, value_name = "SERVICE")]
        dicom_service: Option<String>,
        /// DICOM: an AE title the identity provider gives the user (`{user.ae}`), repeatable.
        #[arg(long = "ae-title", value_name = "AE")]
        ae_titles: Vec<String>,
        /// Print the decision and trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite policy files in the canonical format (comments kept).
    Fmt {
        /// The policy file or directory.
        path: PathBuf,
        /// Change nothing; list the files that are not formatted and exit 1 if any.
        #[arg(long)]
        check: bool,
    },
    /// Compare two policies: which inline tests and which sample requests change decision.
    /// Exits 0 when nothing changes, 1 when something does.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
        /// Sample requests cover the week starting at this RFC 3339 instant (default: the
        /// current week, from Monday 00:00 UTC).
        #[arg(long)]
        week_of: Option<String>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return Ok(code);
    }
    match Cli::parse().command {
        Command::Check {
            path,
            deny_warnings,
        } => {
            let Some(policy) = load(&path) else {
                return Ok(ExitCode::FAILURE);
            };
            for warning in policy.warnings() {
                eprintln!("{warning}");
            }
            println!(
                "ok: {} endpoints, {} rules, {} tests, version {}",
                policy.endpoints().len(),
                policy.rule_count(),
                policy.tests().len(),
                policy.version()
            );
            let warned = policy
                .warnings()
                .iter()
                .any(|w| w.severity == Severity::Warning);
            if warned && deny_warnings {
                eprintln!(
                    "{} warning(s), and --deny-warnings was given",
                    policy.warnings().len()
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { path } => {
            let Some(policy) = load(&path) else {
                return Ok(ExitCode::FAILURE);
            };
            if policy.tests().is_empty() {
                eprintln!(
                    "{}: no [[tests]] in the policy: nothing was tested",
                    path.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            let report = policy.run_tests();
            println!("{report}");
            Ok(if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Explain {
            path,
            user,
            groups,
            endpoint,
            at,
            zone,
            device_facts,
            from,
            mfa,
            signed_in_ago,
            justification,
            port,
            claims,
            method,
            web_path,
            web_session,
            calling_ae,
            dicom_service,
            ae_titles,
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
            let at = match at {
                Some(text) => parse_time(&text, zone.as_deref(), &policy)?,
                None => SystemTime::now(),
            };
            let device = device_from_facts(&device_facts)?;
            let claims = parse_claims(&claims)?;
            if let Some(s) = dicom_service
                .as_deref()
                .filter(|s| !postern_policy::DICOM_SERVICES.contains(s))
            {
                anyhow::bail!(
                    "unknown DICOM service '{s}': use one of {}",
                    postern_policy::DICOM_SERVICES.join(", ")
                );
            }
            let mut req = Request::new(&user, &groups, &endpoint, at).with_ae_titles(&ae_titles);
            for (name, values) in &claims {
                req = req.with_claim(name, values);
            }
            if let Some(device) = &device {
                req = req.with_device(device);
            }
            if let Some(from) = from {
                req = req.with_source(from);
            }
            if mfa || signed_in_ago.is_some() {
                let auth_time = signed_in_ago.and_then(|ago| at.checked_sub(ago.into()));
                req = req.with_auth(mfa, auth_time);
            }
            if let Some(justification) = &justification {
                req = req.with_justification(justification);
            }
            if let Some(port) = port {
                req = req.with_port(port);
            }
            if let (Some(method), Some(path)) = (&method, &web_path) {
                req = req.with_web_request(method, path);
            } else if web_session {
                req = req.with_web_session();
            }
            let mut explanation = policy.explain(&req);
            explanation.decision = explanation
                .decision
                .for_dicom(calling_ae.as_deref(), dicom_service.as_deref());
            if json {
                let text = serde_json::to_string_pretty(&explanation)
                    .context("serializing the decision")?;
                println!("{text}");
            } else {
                println!("{explanation}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fmt { path, check } => {
            let files = policy_files(&path)?;
            let mut unformatted = 0;
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let formatted =
                    match postern_policy::format_policy(&text, &file.display().to_string()) {
                        Ok(formatted) => formatted,
                        Err(e) => {
                            eprintln!("{e}");
                            return Ok(ExitCode::FAILURE);
                        }
                    };
                if formatted == text {
                    continue;
                }
                unformatted += 1;
                if check {
                    println!("{}: not formatted", file.display());
                } else {
                    std::fs::write(&file, formatted)
                        .with_context(|| format!("writing {}", file.display()))?;
                    println!("{}: formatted", file.display());
                }
            }
            Ok(if check && unformatted > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Diff { old, new, week_of } => {
            let (Some(old), Some(new)) = (load(&old), load(&new)) else {
                return Ok(ExitCode::FAILURE);
            };
            let week_start = match week_of {
                Some(text) => humantime::parse_rfc3339_weak(&text)
                    .with_context(|| format!("--week-of '{text}' is not an RFC 3339 time"))?,
                None => current_week_start(),
            };
            let diff = Policy::diff(&old, &new, week_start);
            print!("{diff}");
            Ok(if diff.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Loads the policy, printing every problem to stderr if it is invalid.
fn load(path: &Path) -> Option<Policy> {
    match Policy::from_path(path) {
        Ok(policy) => Some(policy),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// The file, or the `*.toml` files of the directory, sorted.
fn policy_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// `2025-03-04T12:00:00Z` (any offset), or a local `2025-03-04T12:00[:00]` in `zone` or the
/// policy's default zone.
fn parse_time(text: &str, zone: Option<&str>, policy: &Policy) -> anyhow::Result<SystemTime> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(SystemTime::from(ts));
    }
    let local: jiff::civil::DateTime = text
        .parse()
        .with_context(|| format!("--at '{text}' is neither RFC 3339 nor a local date-time"))?;
    let Some(zone) = zone.map(str::to_owned).or_else(|| policy.default_zone()) else {
        bail!("--at '{text}' has no offset: give --zone, or set `zone` in [defaults]");
    };
    let tz = jiff::tz::TimeZone::get(&zone).with_context(|| format!("unknown zone '{zone}'"))?;
    let zoned = local
        .to_zoned(tz)
        .with_context(|| format!("--at '{text}' in {zone}"))?;
    Ok(SystemTime::from(zoned.timestamp()))
}

fn device_from_facts(facts: &[String]) -> anyhow::Result<Option<DeviceFacts>> {
    if facts.is_empty() {
        return Ok(None);
    }
    let mut device = DeviceFacts::default();
    for fact in facts {
        let Some((key, value)) = fact.split_once('=') else {
            bail!("--device-fact '{fact}' is not KEY=VALUE");
        };
        let flag = || -> anyhow::Result<bool> {
            match value {
                "true" | "yes" | "1" => Ok(true),
                "false" | "no" | "0" => Ok(false),
                _ => bail!("--device-fact {key} takes true or false, not '{value}'"),
            }
        };
        match key {
            "registered" => device.registered = flag()?,
            "approved" => device.approved = flag()?,
            "user_verified" => device.user_verified = flag()?,
            _ => {
                device.posture.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    Ok(Some(device))
}

fn parse_claims(claims: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for claim in claims {
        let Some((name, value)) = claim.split_once('=') else {
            bail!("--claim '{claim}' is not NAME=VALUE");
        };
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.to_owned()),
            None => out.push((name.to_owned(), vec![value.to_owned()])),
        }
    }
    Ok(out)
}

/// Monday 00:00 UTC of the current week.
fn current_week_start() -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = now / 86_400;
    // 1970-01-01 was a Thursday: Monday is 3 days earlier in the cycle.
    let monday = days - (days + 3) % 7;
    SystemTime::UNIX_EPOCH + Duration::from_secs(monday * 86_400)
}
