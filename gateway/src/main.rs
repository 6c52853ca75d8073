//! `postern-gateway`: run the gateway, and admin commands. (The local demo is its own program,
//! `postern-demo`, so this binary never links the development identity provider.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_gateway::{admin, Config, Listeners, Stop};

#[derive(Parser)]
#[command(
    name = "postern-gateway",
    version,
    about = "Postern zero-trust access gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Gateway configuration file.
    #[arg(
        long,
        short,
        default_value = "/etc/postern/gateway.toml",
        env = "POSTERN_GATEWAY_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Start even though the audit log is shorter than the checkpoint its audit.head names
        /// (events were removed from its end), recording audit.truncation_detected with both
        /// sequence numbers. Without it such a log stops the gateway from starting. For one
        /// start, after finding out what happened; `postern-audit verify` reports it from then on.
        #[arg(long)]
        accept_truncated_audit: bool,
    },
    /// Check the configuration and what it points at (policy, keys, certificates, ports, audit
    /// directory, identity provider); print every problem; exit 1 on any error. Safe to run
    /// against a running gateway (from monitoring): its own ports count as fine.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// The gateway runs with this configuration: do not look at the listen addresses.
        #[arg(long)]
        running: bool,
    },
    /// Moved out: the demo is its own program, `postern-demo`. Kept hidden so that an old
    /// `postern-gateway demo [--dir D] [--port P]` says where it went instead of a clap error.
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        /// Whatever the old invocation passed; ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Connector enrolment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Enrolled connectors.
    Connector {
        #[command(subcommand)]
        cmd: ConnectorCmd,
    },
    /// Session tokens.
    Session {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Registered devices (device trust).
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// The gateway replicas sharing the state store: id, live or gone, addresses, version.
    Replicas {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The state store as a whole: backup, and moving between SQLite and PostgreSQL.
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
    /// The gateway's certificate authorities.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Write the gateway CA certificate that clients and connectors trust.
    ExportCa {
        #[command(flatten)]
        config: ConfigArg,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Print a CA certificate (PEM) on standard output, e.g. for hospital IT or auditors to pin.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// `server`: issues the gateway's own TLS certificate; `connector`: issues connector
        /// client certificates.
        #[arg(long, value_enum, default_value = "server")]
        which: WhichArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WhichArg {
    Server,
    Connector,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a one-time enrolment token for a connector of SITE.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        site: String,
        /// Validity, e.g. 30m, 1h, 1d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum ConnectorCmd {
    /// List enrolled connectors.
    List(ConfigArg),
    /// Revoke a connector: its next connection is refused and live ones are dropped.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// List registered devices.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this user's devices.
        #[arg(long)]
        user: Option<String>,
        /// Only devices waiting for approval.
        #[arg(long)]
        pending: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending (or suspended) device.
    Approve {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
    /// Revoke a device: refused from now on; its live tunnels end within a second.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        /// Why (audited).
        #[arg(long, default_value = "revoked by the security team")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Print every record of the store (enrolment tokens as hashes, connectors, revocations,
    /// devices; not the sign-ins in flight) as JSON, in the format of the old state.json.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Load an export (or an old state.json) into the configured store, which must be empty:
    /// e.g. from a single gateway's SQLite into the PostgreSQL database of a replica set.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Revoke a user: every device and current token refused; live tunnels end within a second.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        user: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Mint a session token (service accounts and tests; clinicians sign in instead).
    Mint {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        user: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',', default_value = "")]
        groups: Vec<String>,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Generate a new token-signing key and make it active (after a restart); tokens signed
    /// by the old keys stay valid until they expire.
    RotateKey(ConfigArg),
}

fn load(c: &ConfigArg) -> anyhow::Result<Config> {
    match Config::load(&c.config) {
        Ok(config) => Ok(config),
        // Every problem on its own line, then how many, as `check` ends its report.
        Err(postern_gateway::config::ConfigError::Invalid(all)) => anyhow::bail!(
            "{}\n{} problem(s) in {}",
            all.join("\n"),
            all.len(),
            c.config.display()
        ),
        Err(e) => Err(e.into()),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// SIGTERM drains, SIGINT is fast.
async fn shutdown_signal() -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => Stop::Drain,
                _ = int.recv() => Stop::Now,
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Now
        }
    }
}

/// What `postern-gateway demo` prints (exit status 2).
const DEMO_MOVED: &str = "the demo is now its own program: run postern-demo (cargo build --release && target/release/postern-demo)";

fn main() -> ExitCode {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = Cli::parse();
    if let Cmd::Demo { .. } = cli.cmd {
        eprintln!("{DEMO_MOVED}");
        return ExitCode::from(2);
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "postern-gateway: {}",
                postern_proto::report::render(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

// Over 100 lines on purpose: one arm per subcommand, each a few lines that parse, call the
// library and print; splitting it would only scatter the CLI's shape.
fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            config: c,
            accept_truncated_audit,
        } => {
            let mut config = load(&c)?;
            config.accept_truncated_audit = accept_truncated_audit;
            init_tracing();
            runtime()?.block_on(async move {
                // Validate the policy before binding anything.
                postern_policy::Policy::from_file(&config.policy)?;
                let listeners = Listeners::bind(&config).await?;
                postern_gateway::run(config, listeners, shutdown_signal()).await?;
                Ok(())
            })
        }
        Cmd::Check { config: c, running } => {
            let config = load(&c)?;
            let (findings, notes) =
                runtime()?.block_on(postern_gateway::check::check_with(&config, running));
            for n in admin::check_notes(&config).into_iter().chain(notes) {
                eprintln!("note: {n}");
            }
            for f in &findings {
                eprintln!("{f}");
            }
            let errors = findings
                .iter()
                .filter(|f| f.severity == postern_net::certs::Severity::Error)
                .count();
            if errors > 0 {
                anyhow::bail!("{errors} problem(s) in {}", c.config.display());
            }
            println!("ok: {}", c.config.display());
            Ok(())
        }
        Cmd::Demo { .. } => anyhow::bail!("{DEMO_MOVED}"),
        Cmd::Token {
            cmd: TokenCmd::Create { config, site, ttl },
        } => {
            let t = runtime()?.block_on(admin::token_create(&load(&config)?, &site, ttl))?;
            eprintln!(
                "enrolment token {} for site {} (one use, expires {}):",
                t.id,
                t.site,
                humantime::format_rfc3339_seconds(t.expires)
            );
            println!("{}", t.token);
            Ok(())
        }
        Cmd::Connector {
            cmd: ConnectorCmd::List(c),
        } => {
            print!(
                "{}",
                runtime()?.block_on(admin::connector_list(&load(&c)?))?
            );
            Ok(())
        }
        Cmd::Connector {
            cmd: ConnectorCmd::Revoke { config, id },
        } => {
            let site = runtime()?.block_on(admin::connector_revoke(&load(&config)?, &id))?;
            println!(
                "revoked connector {} (site {})",
                admin::printable(&id),
                admin::printable(&site)
            );
            Ok(())
        }
        Cmd::Session {
            cmd: SessionCmd::RotateKey(c),
        } => {
            let kid = admin::session_rotate_key(&load(&c)?)?;
            println!(
                "new session-token signing key {kid}; restart the gateway to sign with it (tokens signed by older keys keep working until they expire; delete an old key's files from the state directory's jwt/ after the longest token lifetime)"
            );
            Ok(())
        }
        Cmd::Session {
            cmd:
                SessionCmd::Mint {
                    config,
                    user,
                    groups,
                    ttl,
                },
        } => {
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            let (token, _) = admin::session_mint(&load(&config)?, &user, &groups, ttl)?;
            println!("{token}");
            Ok(())
        }
        Cmd::Device {
            cmd:
                DeviceCmd::List {
                    config,
                    user,
                    pending,
                    json,
                },
        } => {
            print!(
                "{}",
                runtime()?.block_on(admin::device_list(
                    &load(&config)?,
                    user.as_deref(),
                    pending,
                    json
                ))?
            );
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Approve { config, id },
        } => {
            let d = runtime()?.block_on(admin::device_approve(&load(&config)?, &id))?;
            println!(
                "device {} (user {}, \"{}\") approved",
                admin::printable(&d.id),
                admin::printable(&d.user),
                admin::printable(&d.name)
            );
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Revoke { config, id, reason },
        } => {
            let d = runtime()?.block_on(admin::device_revoke(&load(&config)?, &id, &reason))?;
            println!(
                "device {} (user {}, \"{}\") revoked; a running gateway ends its live tunnels within a second",
                admin::printable(&d.id),
                admin::printable(&d.user),
                admin::printable(&d.name)
            );
            Ok(())
        }
        Cmd::User {
            cmd: UserCmd::Revoke { config, user },
        } => {
            let config = load(&config)?;
            let r = runtime()?.block_on(admin::user_revoke(&config, &user))?;
            if r.matched_nothing() && config.store.postgres.is_some() {
                // Replicas: the user's tokens and tunnels may be in other replicas' audit logs,
                // which this command does not read; only a device would have shown here.
                eprintln!(
                    "warning: user revoke {user}: no device of this user, and no token or live session in this replica's audit log (other replicas' are not read here). Check the name (the user as the IdP names them, see docs/signin.md; case does not matter)"
                );
            } else if r.matched_nothing() {
                // Recorded anyway (harmless), but most likely a misspelt name: exit 1.
                anyhow::bail!(
                    "user revoke {user} matched nothing: {}. Check the name (it must be the user as the IdP names them, see docs/signin.md; case does not matter); the revocation was recorded anyway",
                    r.summary()
                );
            }
            println!(
                "user {user} revoked: {}; tokens issued until now are refused and live tunnels end within a second",
                r.summary()
            );
            Ok(())
        }
        Cmd::Replicas { config } => {
            print!("{}", runtime()?.block_on(admin::replicas(&load(&config)?))?);
            Ok(())
        }
        Cmd::State {
            cmd: StateCmd::Export { config, out },
        } => {
            let json = runtime()?.block_on(admin::state_export(&load(&config)?))?;
            match out {
                Some(path) => {
                    postern_net::fsutil::write_atomic(&path, json.as_bytes(), 0o600)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => println!("{json}"),
            }
            Ok(())
        }
        Cmd::State {
            cmd: StateCmd::Import { config, file },
        } => {
            let summary = runtime()?.block_on(admin::state_import(&load(&config)?, &file))?;
            println!("imported {summary}");
            Ok(())
        }
        Cmd::Ca {
            cmd: CaCmd::Export { config, which },
        } => {
            let which = match which {
                WhichArg::Server => admin::WhichCa::Server,
                WhichArg::Connector => admin::WhichCa::Connector,
            };
            print!("{}", admin::ca_pem(&load(&config)?, which)?);
            Ok(())
        }
        Cmd::ExportCa { config, out } => {
            admin::export_ca(&load(&config)?, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
