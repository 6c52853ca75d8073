//! `postern`: the clinician's command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_client::{connect, login, short_duration, GatewayConn};

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
    /// Gateway URL (default: the one you last signed in to).
    #[arg(long, env = "POSTERN_GATEWAY")]
    gateway: Option<String>,
    /// The gateway's CA certificate (default: the one used at sign-in, else the public web PKI).
    #[arg(long, env = "POSTERN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// File holding your session token (default: the one stored by `postern login`;
    /// or set POSTERN_TOKEN).
    #[arg(long, env = "POSTERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl GatewayArgs {
    /// Gateway URL and CA file, from flags or from the last sign-in.
    fn target(&self) -> anyhow::Result<(String, Option<PathBuf>)> {
        let saved = login::config_dir().ok().and_then(|d| login::load_saved(&d));
        let gateway = self
            .gateway
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.gateway.clone()))
            .context("no gateway: pass --gateway URL (or run postern login URL first)")?;
        let ca = self
            .ca_file
            .clone()
            .or_else(|| saved.as_ref().and_then(|s| s.ca_file.clone()));
        Ok((gateway, ca))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward a local port to an endpoint: every connection to it becomes a tunnel.
    Connect {
        /// Endpoint name, as listed by `postern endpoints`.
        endpoint: String,
        /// Local address to listen on (a loopback address unless --allow-remote).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Allow a non-loopback --listen address: anyone who can reach it can then use this
        /// tunnel with your sign-in (a warning is printed).
        #[arg(long)]
        allow_remote: bool,
        /// Why you need access (break-glass rules require it); recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// How tunnels reach the gateway: `auto` (QUIC, or TCP when UDP does not get through
        /// within 3 s), `tcp` or `quic`.
        #[arg(long, env = "POSTERN_TRANSPORT", default_value = "auto", value_parser = ["auto", "tcp", "quic"])]
        transport: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Sign in through your hospital's identity provider (opens the browser).
    Login {
        /// Gateway URL, e.g. `https://gw.example.org:8443`
        gateway: String,
        /// The gateway's CA certificate, if your IT team gave you one (a gateway with a
        /// certificate from a public CA needs none).
        #[arg(long, env = "POSTERN_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Do not try to open a browser; just print the URL.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the browser, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Send this posture report (JSON) instead of gathering one (tests, site agents).
        #[arg(long, env = "POSTERN_POSTURE_FILE")]
        posture_file: Option<PathBuf>,
    },
    /// Show who is signed in, until when, groups and MFA.
    Status {
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Sign out: revoke the session token at the gateway and delete it here.
    Logout {
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

fn gateway(
    args: &GatewayArgs,
    reason: Option<&str>,
    transport: postern_client::Transport,
) -> anyhow::Result<Arc<GatewayConn>> {
    let (url, ca) = args.target()?;
    let token = match (&args.token_file, std::env::var("POSTERN_TOKEN")) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the session token from {}", f.display()))?,
        (None, Ok(t)) => t,
        (None, Err(_)) => {
            let path = login::token_path(&login::config_dir()?);
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "you are not signed in ({} not found): run postern login",
                    path.display()
                )
            })?
        }
    };
    let mut conn = GatewayConn::new(&url, ca.as_deref(), &token)?.with_transport(transport);
    if let Some(r) = reason {
        conn = conn.with_justification(r)?;
    }
    Ok(Arc::new(conn))
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

fn print_session(s: &login::Session) {
    println!(
        "signed in as {}{}",
        s.user,
        s.name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    println!(
        "  groups   {}",
        if s.groups.is_empty() {
            "none".into()
        } else {
            s.groups.join(", ")
        }
    );
    println!("  mfa      {}", if s.mfa { "yes" } else { "no" });
    println!(
        "  device   {}",
        match &s.device {
            Some(d) => format!(
                "{d} (user verified: {})",
                if s.user_verified { "yes" } else { "no" }
            ),
            None => "not bound to a device".into(),
        }
    );
    if let Some(t) = s.auth_time {
        println!("  since    {}", when(t));
    }
    println!("  expires  {}", when(s.expires_at));
    if let Some(idp) = &s.idp {
        println!("  via      {idp}");
    }
}

fn main() -> ExitCode {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
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
            allow_remote,
            reason,
            transport,
            gw,
        } => {
            match postern_client::check_listen(listen, allow_remote) {
                Ok(None) => {}
                Ok(Some(warning)) => eprintln!("postern: {warning}"),
                // A usage error: clap's exit code (2) and format, before the gateway is asked.
                Err(e) => <Cli as clap::CommandFactory>::command()
                    .error(clap::error::ErrorKind::ValueValidation, e)
                    .exit(),
            }
            let transport = match transport.as_str() {
                "tcp" => postern_client::Transport::Tcp,
                "quic" => postern_client::Transport::Quic,
                _ => postern_client::Transport::Auto,
            };
            let gw = gateway(&gw, reason.as_deref(), transport)?;
            let fut = connect(gw.clone(), &endpoint, listen, |addr, info| {
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
            let mut term = postern_client::platform::terminate_signal()?;
            tokio::select! {
                r = fut => r?,
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            // Tell the gateway, so that it ends the tunnels now.
            gw.close().await;
            Ok(())
        }
        Cmd::Login {
            gateway,
            ca_file,
            no_browser,
            timeout,
            posture_file,
        } => {
            let report = match &posture_file {
                Some(p) => postern_client::posture::from_file(p)?,
                None => postern_client::posture::collect().await,
            };
            let facts = report.policy_facts();
            eprintln!(
                "device posture: {} {}; disk encryption {}, firewall {}, screen lock {}",
                report.os_name,
                report.os_version,
                facts["disk_encrypted"],
                facts["firewall"],
                facts["screen_lock"]
            );
            let session = login::login_with_posture(
                &gateway,
                ca_file.as_deref(),
                !no_browser,
                std::time::Duration::from_secs(timeout),
                Some(&report),
                |url, code| {
                    println!("Open this URL in your browser to sign in:\n\n  {url}\n");
                    println!("confirmation code: {code}\n");
                    println!("The browser will show this code; confirm only if it is the same.\n");
                    let _ = std::io::stdout().flush();
                },
            )
            .await?;
            print_session(&session);
            Ok(())
        }
        Cmd::Status { gw } => {
            let conn = gateway(&gw, None, postern_client::Transport::Tcp)?;
            let s: login::Session = conn.whoami().await?;
            print_session(&s);
            Ok(())
        }
        Cmd::Logout { gw } => {
            let conn = gateway(&gw, None, postern_client::Transport::Tcp)?;
            login::logout(&conn).await?;
            println!("signed out");
            Ok(())
        }
        Cmd::Endpoints { gw, json } => {
            let list = gateway(&gw, None, postern_client::Transport::Tcp)?
                .endpoints()
                .await?;
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
