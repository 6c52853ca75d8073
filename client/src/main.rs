//! `postern`: the clinician's command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_client::{connect, short_duration, GatewayConn};

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Reach hospital systems through the Postern gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct GatewayArgs {
    /// Gateway URL.
    #[arg(long, env = "POSTERN_GATEWAY")]
    gateway: String,
    /// The gateway's CA certificate.
    #[arg(long, env = "POSTERN_CA_FILE")]
    ca_file: PathBuf,
    /// File holding your session token (or set POSTERN_TOKEN).
    #[arg(long, env = "POSTERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward a local port to an endpoint: every connection to it becomes a tunnel.
    Connect {
        /// Endpoint name, as listed by `postern endpoints`.
        endpoint: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Why you need access (break-glass rules require it); recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// List the endpoints you may reach.
    Endpoints {
        #[command(flatten)]
        gw: GatewayArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn gateway(args: &GatewayArgs, reason: Option<&str>) -> anyhow::Result<Arc<GatewayConn>> {
    let token = match (&args.token_file, std::env::var("POSTERN_TOKEN")) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the session token from {}", f.display()))?,
        (None, Ok(t)) => t,
        (None, Err(_)) => anyhow::bail!("no session token: pass --token-file or set POSTERN_TOKEN"),
    };
    let mut conn = GatewayConn::new(&args.gateway, &args.ca_file, &token)?;
    if let Some(r) = reason {
        conn = conn.with_justification(r)?;
    }
    Ok(Arc::new(conn))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {}", postern_proto::report::render(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Connect {
            endpoint,
            listen,
            reason,
            gw,
        } => {
            let gw = gateway(&gw, reason.as_deref())?;
            let fut = connect(gw, &endpoint, listen, |addr, info| {
                let max = info
                    .max_session_secs
                    .map(|s| format!(", max session {}", short_duration(s)))
                    .unwrap_or_default();
                println!(
                    "ready: listening on {addr} for {} ({} at site {}{max}); Ctrl-C to stop",
                    info.name, info.protocol, info.site
                );
                let _ = std::io::stdout().flush();
            });
            tokio::select! {
                r = fut => r?,
                _ = tokio::signal::ctrl_c() => {},
            }
            Ok(())
        }
        Cmd::Endpoints { gw, json } => {
            let list = gateway(&gw, None)?.endpoints().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list.endpoints)?);
                return Ok(());
            }
            println!(
                "signed in as {} (groups: {})",
                list.user,
                if list.groups.is_empty() {
                    "none".into()
                } else {
                    list.groups.join(", ")
                }
            );
            if list.endpoints.is_empty() {
                println!("no endpoints are available to you");
                return Ok(());
            }
            println!(
                "{:<28} {:<12} {:<9} {:<12} DESCRIPTION",
                "ENDPOINT", "SITE", "PROTOCOL", "MAX SESSION"
            );
            for e in &list.endpoints {
                println!(
                    "{:<28} {:<12} {:<9} {:<12} {}",
                    e.name,
                    e.site,
                    e.protocol,
                    e.max_session_secs
                        .map(short_duration)
                        .unwrap_or_else(|| "-".into()),
                    e.description.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}
