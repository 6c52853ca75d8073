//! `postern-demo [--dir D] [--port P]`: the local demo deployment (see the library).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "postern-demo",
    version,
    about = "Start a complete local Postern deployment on loopback (gateway, development identity provider, connector, sample endpoints)"
)]
struct Cli {
    /// Directory for the demo's state, logs and tokens (recreated on each start).
    #[arg(long, default_value = "postern-demo")]
    dir: PathBuf,
    /// Port of the gateway's client listener (the connector listener uses the next one, the
    /// development identity provider the one after).
    #[arg(long, default_value_t = 8443)]
    port: u16,
}

fn main() -> ExitCode {
    if let Some(code) = postern_cliassets::run_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = Cli::parse();
    init_tracing();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(postern_demo::run(cli.dir, cli.port, stop_signal())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "postern-demo: {}",
                postern_proto::report::render(e.as_ref())
            );
            ExitCode::FAILURE
        }
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

/// SIGTERM or SIGINT (Ctrl-C) stops the demo; it always stops at once.
async fn stop_signal() {
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
