//! `postern-connector`: enrol, run, status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_connector::{config::Config, enroll, identity};

#[derive(Parser)]
#[command(
    name = "postern-connector",
    version,
    about = "Postern on-premises connector (dials out to the gateway)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrol with a gateway using a one-time token from `postern-gateway token create`.
    Enroll {
        /// Gateway URL, e.g. https://gateway.example.org:8443
        #[arg(long)]
        gateway: String,
        /// The one-time enrolment token (or set POSTERN_ENROLL_TOKEN).
        #[arg(long, env = "POSTERN_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value = "/var/lib/postern-connector")]
        state_dir: PathBuf,
        /// Replace an existing enrolment.
        #[arg(long)]
        force: bool,
    },
    /// Run: dial out to the gateway and serve tunnels to allowed targets.
    Run {
        #[arg(long, short, default_value = "/etc/postern/connector.toml")]
        config: PathBuf,
        /// Stop (as on SIGTERM) when standard input closes: for a parent process, such as
        /// `postern-demo`, whose connector must not outlive it even if it is killed.
        #[arg(long, hide = true)]
        exit_with_stdin: bool,
    },
    /// Show the enrolment, the configuration and (with `[admin] listen`) the live counters.
    Status {
        #[arg(long, short, default_value = "/etc/postern/connector.toml")]
        config: PathBuf,
    },
    /// Check the configuration, enrolment, certificate and gateway reachability; print every
    /// problem; exit 1 on any error.
    Check {
        #[arg(long, short, default_value = "/etc/postern/connector.toml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when standard input reaches end of file (the parent that holds the pipe is gone).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "postern-connector: {}",
                postern_proto::report::render(e.as_ref())
            );
            match e.downcast_ref::<postern_connector::LinkError>() {
                Some(postern_connector::LinkError::Revoked { .. }) => {
                    ExitCode::from(postern_connector::EXIT_REVOKED)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Enroll {
            gateway,
            token,
            state_dir,
            force,
        } => {
            let e = runtime()?.block_on(enroll::enroll(&gateway, &token, &state_dir, force))?;
            println!(
                "enrolled as {} (site {}); certificate valid until {}; state in {}",
                e.connector_id,
                e.site,
                e.not_after,
                state_dir.display()
            );
            Ok(())
        }
        Cmd::Run {
            config,
            exit_with_stdin,
        } => {
            let config = Config::load(&config)?;
            init_tracing();
            runtime()?.block_on(postern_connector::run(config, async move {
                if exit_with_stdin {
                    tokio::select! {
                        _ = shutdown_signal() => {},
                        _ = stdin_closed() => {},
                    }
                } else {
                    shutdown_signal().await;
                }
            }))?;
            Ok(())
        }
        Cmd::Check { config } => {
            let path = config;
            let config = Config::load(&path)?;
            let findings = runtime()?.block_on(postern_connector::check::check(&config));
            for f in &findings {
                eprintln!("{f}");
            }
            let errors = findings
                .iter()
                .filter(|f| f.severity == postern_net::certs::Severity::Error)
                .count();
            if errors > 0 {
                anyhow::bail!("{errors} problem(s) in {}", path.display());
            }
            println!("ok: {}", path.display());
            Ok(())
        }
        Cmd::Status { config } => {
            let path = config.clone();
            let config = Config::load(&config)?;
            let (e, _) = identity::load_identity(&config.state_dir)?;
            let gateways = if config.gateways.is_empty() {
                &e.connector_addrs
            } else {
                &config.gateways
            };
            println!("config       {}", path.display());
            println!("connector    {} (site {})", e.connector_id, e.site);
            println!("certificate  valid until {}", e.not_after);
            println!("gateways     {}", gateways.join(", "));
            println!(
                "links        {} per gateway",
                config.connections_per_gateway
            );
            println!("allowlist    {} entries", config.allowlist.entries.len());
            for a in &config.allowlist.entries {
                println!("             {} ports {:?}", a.net, a.ports);
            }
            if let Some(addr) = config.admin_listen {
                match running_metrics(addr) {
                    Some(lines) => {
                        println!("running      (from http://{addr}/metrics)");
                        for l in lines {
                            println!("             {l}");
                        }
                    }
                    None => println!("running      no answer on the admin listener {addr}"),
                }
            }
            Ok(())
        }
    }
}

/// The live counters of a running connector, from its admin listener.
fn running_metrics(addr: std::net::SocketAddr) -> Option<Vec<String>> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter(|l| {
                l.starts_with("postern_connector_") && !l.starts_with("postern_connector_build")
            })
            .map(|l| l.trim_start_matches("postern_connector_").to_owned())
            .collect(),
    )
}
