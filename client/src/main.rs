//! `postern`: the clinician's command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postern_client::{connect, control, local_time, login, short_duration, GatewayConn};
use std::time::Duration;

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

/// How a command that opens tunnels reaches the gateway.
#[derive(Args)]
struct TunnelArgs {
    /// Why you need access (break-glass rules require it); recorded in the audit log. Any
    /// text up to 512 characters.
    #[arg(long)]
    reason: Option<String>,
    /// How tunnels reach the gateway: `auto` (QUIC, or TCP when UDP does not get through
    /// within 3 s), `tcp` or `quic`.
    #[arg(long, env = "POSTERN_TRANSPORT", default_value = "auto", value_parser = ["auto", "tcp", "quic"])]
    transport: String,
    #[command(flatten)]
    gw: GatewayArgs,
}

impl TunnelArgs {
    /// The gateway connection these flags describe.
    fn connect(&self) -> anyhow::Result<Arc<GatewayConn>> {
        gateway(
            &self.gw,
            self.reason.as_deref(),
            parse_transport(&self.transport),
        )
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward a local port to an endpoint: every connection to it becomes a tunnel.
    Connect {
        /// Endpoint name, as listed by `postern endpoints`.
        endpoint: String,
        /// Where to listen: PORT, localhost:PORT or ADDRESS:PORT (a loopback address unless
        /// --allow-remote; default: any free port on 127.0.0.1).
        #[arg(long, default_value = "127.0.0.1:0", value_parser = postern_client::parse_listen)]
        listen: SocketAddr,
        /// Allow a non-loopback --listen address: anyone who can reach it can then use this
        /// tunnel with your sign-in (a warning is printed).
        #[arg(long)]
        allow_remote: bool,
        #[command(flatten)]
        tunnel: TunnelArgs,
    },
    /// Open every tunnel you use, each on its fixed local port, in the background; renew your
    /// sign-in before it expires without dropping them.
    Up {
        /// Stay in the foreground (for a service manager, or to watch its log).
        #[arg(long)]
        foreground: bool,
        /// How tunnels reach the gateway: `auto`, `tcp` or `quic`.
        #[arg(long, env = "POSTERN_TRANSPORT", default_value = "auto", value_parser = ["auto", "tcp", "quic"])]
        transport: String,
        /// Do not open the browser to renew the sign-in: notify, and show the URL in
        /// `postern status`.
        #[arg(long)]
        no_browser: bool,
        /// Send this posture report (JSON) with renewals instead of gathering one.
        #[arg(long, env = "POSTERN_POSTURE_FILE")]
        posture_file: Option<PathBuf>,
        /// Start `postern up` whenever you log in to this computer (systemd user unit on
        /// Linux, LaunchAgent on macOS, Task Scheduler on Windows), then start it now.
        #[arg(long, conflicts_with = "remove_autostart")]
        install_autostart: bool,
        /// Stop starting `postern up` at login.
        #[arg(long)]
        remove_autostart: bool,
    },
    /// Close the tunnels `postern up` opened and stop it.
    Down,
    /// Open a remote desktop (your reporting PC) in this computer's RDP client: mstsc on
    /// Windows, the Windows App on macOS, xfreerdp on Linux. Uses the tunnel `postern up`
    /// keeps, else opens one for as long as the client runs.
    Rdp {
        /// Endpoint name, as listed by `postern endpoints`.
        endpoint: String,
        /// Which monitors the remote desktop uses: `all` or `primary`.
        #[arg(long, default_value = "all")]
        monitors: postern_client::rdp::Monitors,
        /// A window instead of full screen.
        #[arg(long)]
        windowed: bool,
        /// The user name to offer to the reporting PC (e.g. `TRUST\jsmith`); the client asks
        /// for the password, Postern never handles one.
        #[arg(long)]
        user: Option<String>,
        /// FreeRDP's check of the reporting PC's certificate: `tofu` (trust on first use) or
        /// `ignore`.
        #[arg(long, default_value = "tofu", value_parser = ["tofu", "ignore"])]
        cert: String,
        /// Print the .rdp file and the command instead of running them.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        tunnel: TunnelArgs,
        /// Extra arguments for the RDP client, after `--` (e.g. `-- /scale:140`).
        #[arg(last = true)]
        client_args: Vec<String>,
    },
    /// Sign in through your hospital's identity provider (opens the browser).
    Login {
        /// Gateway URL, e.g. `https://gw.example.org:8443` (default: the one you last signed
        /// in to).
        gateway: Option<String>,
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
    /// Show who is signed in and until when, and each tunnel `postern up` keeps open.
    Status {
        #[command(flatten)]
        gw: GatewayArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign out: revoke the session token at the gateway and delete it here (and stop
    /// `postern up`).
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

/// `postern login`: the browser sign-in, then a running `postern up` told to take it.
async fn sign_in(
    gateway: &str,
    ca_file: Option<&std::path::Path>,
    no_browser: bool,
    timeout: u64,
    posture_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let report = match posture_file {
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
        gateway,
        ca_file,
        !no_browser,
        Duration::from_secs(timeout),
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
    // A running `postern up` takes the new sign-in for its tunnels.
    if let Ok(dir) = login::config_dir() {
        if let Ok(Some(control::Answer::Ok { message })) =
            control::send(&dir, control::Command::Token).await
        {
            println!("postern up: {message}");
        }
    }
    Ok(())
}

/// "Did you mean" for an endpoint the gateway refused, when it is not one the user may reach.
async fn suggestion(gw: &GatewayConn, endpoint: &str) -> String {
    let Ok(list) = gw.endpoints().await else {
        return String::new();
    };
    if list.endpoints.iter().any(|e| e.name == endpoint) {
        return String::new();
    }
    match postern_client::did_you_mean(endpoint, list.endpoints.iter().map(|e| e.name.as_str())) {
        Some(n) => format!(" Did you mean '{n}'? (postern endpoints lists yours)"),
        None => " postern endpoints lists the endpoints you may reach.".to_owned(),
    }
}

/// Polls `done` every 50 ms for up to `limit`; whether it came true.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// `postern up`.
async fn up(
    foreground: bool,
    transport: &str,
    no_browser: bool,
    posture_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = login::config_dir()?;
    if let Some(control::Answer::Status(s)) = control::send(&dir, control::Command::Status).await? {
        println!("postern up is already running (pid {})", s.pid);
        print_agent_status(&s);
        return Ok(());
    }
    let saved = login::load_saved(&dir).context(
        "you have not signed in on this computer yet: run postern login https://GATEWAY first",
    )?;
    let profile = postern_client::profile::load(&dir)?;
    if foreground {
        let opts = postern_client::agent::UpOptions {
            config_dir: dir,
            gateway: saved.gateway,
            ca_file: saved.ca_file,
            transport: parse_transport(transport),
            open_browser: profile.open_browser && !no_browser,
            profile,
            posture_file,
        };
        return postern_client::agent::run(opts, |s| {
            print_agent_status(s);
            let _ = std::io::stdout().flush();
        })
        .await
        .map_err(Into::into);
    }
    // Signed in, for long enough? If not, sign in first, here.
    let token = std::fs::read_to_string(login::token_path(&dir)).unwrap_or_default();
    let live = match GatewayConn::new(&saved.gateway, saved.ca_file.as_deref(), &token) {
        Ok(c) => c
            .whoami()
            .await
            .is_ok_and(|s| s.expires_at > postern_client::unix_now()),
        Err(_) => false,
    };
    if !live {
        println!("You need to sign in first.");
        sign_in(
            &saved.gateway,
            saved.ca_file.as_deref(),
            no_browser,
            300,
            posture_file.as_deref(),
        )
        .await?;
    }
    let log = control::log_file(&dir);
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > 5 * 1024 * 1024) {
        let _ = std::fs::rename(&log, log.with_extension("log.1"));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["up", "--foreground", "--transport", transport]);
    if no_browser {
        cmd.arg("--no-browser");
    }
    if let Some(p) = &posture_file {
        cmd.arg("--posture-file").arg(p);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .context("starting postern up in the background")?;
    let start = std::time::Instant::now();
    loop {
        if let Some(control::Answer::Status(s)) =
            control::send(&dir, control::Command::Status).await?
        {
            if s.pid == child.id() {
                print_agent_status(&s);
                println!("\npostern up runs in the background: postern status shows it, postern down stops it");
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "postern up stopped ({status}):\n{}\n(full log: {})",
                tail.join("\n"),
                log.display()
            );
        }
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "postern up did not come up within 30 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The background agent outlives this terminal: its own process group (Unix; it also ignores
/// hang-ups), or a detached process (Windows).
fn detach(cmd: &mut std::process::Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
}

fn parse_transport(t: &str) -> postern_client::Transport {
    match t {
        "tcp" => postern_client::Transport::Tcp,
        "quic" => postern_client::Transport::Quic,
        _ => postern_client::Transport::Auto,
    }
}

/// `postern rdp`: the tunnel (the agent's, or one of this process's own) and the RDP client.
async fn rdp(
    opts: postern_client::rdp::RdpOptions,
    dry_run: bool,
    tunnel: &TunnelArgs,
    client_args: Vec<String>,
) -> anyhow::Result<()> {
    use postern_client::rdp;
    let endpoint = opts.endpoint.clone();
    // The agent's tunnel, unless a break-glass reason must go with this one.
    let dir = login::config_dir()?;
    let from_agent = if tunnel.reason.is_none() && tunnel.gw.token_file.is_none() {
        match control::send(
            &dir,
            control::Command::Open {
                endpoint: endpoint.clone(),
            },
        )
        .await?
        {
            Some(control::Answer::Opened { local }) => Some(local),
            Some(control::Answer::Error { message }) => anyhow::bail!("{message}"),
            _ => None,
        }
    } else {
        None
    };
    let mut own = None;
    let local = match from_agent {
        Some(local) => local,
        None => {
            let gw = tunnel.connect()?;
            let info = match gw.check(&endpoint).await {
                Err(e @ postern_client::ClientError::UnknownEndpoint { .. }) => {
                    anyhow::bail!("{e}{}", suggestion(&gw, &endpoint).await)
                }
                other => other?,
            };
            if info.protocol != "rdp" {
                eprintln!(
                    "postern: note: {endpoint} is a {} endpoint, not rdp; starting the RDP client anyway",
                    info.protocol
                );
            }
            let listener =
                postern_client::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let local = listener.local_addr()?;
            let task = tokio::spawn(postern_client::serve(
                gw.clone(),
                endpoint.clone(),
                listener,
                Arc::new(postern_client::TunnelStats::default()),
            ));
            own = Some((gw, task));
            local
        }
    };
    let mut plan = rdp::plan(rdp::Os::current(), local, &opts, &rdp::default_file_dir())?;
    plan.args.extend(client_args.into_iter().map(Into::into));
    if dry_run {
        print!("{plan}");
        if let Some((gw, _)) = &own {
            gw.close().await;
        }
        return Ok(());
    }
    eprintln!(
        "postern: {endpoint} on {local}: starting {}",
        plan.program.display()
    );
    let running = rdp::launch(&plan)?;
    let pid = running.child.id();
    let waited = tokio::task::spawn_blocking(move || running.wait());
    tokio::pin!(waited);
    let mut term = postern_client::platform::terminate_signal()?;
    let outcome = tokio::select! {
        r = &mut waited => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    match outcome {
        Some(r) => {
            let status = r??;
            if !status.success() {
                eprintln!("postern: the RDP client ended: {status}");
            }
        }
        None => {
            // Stopped: the client goes too (it would lose its tunnel anyway).
            stop_process(pid);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut waited).await;
        }
    }
    if let Some((gw, task)) = own {
        task.abort();
        gw.close().await;
    }
    Ok(())
}

/// Asks process `pid` to stop (SIGTERM on Unix, `taskkill` on Windows).
fn stop_process(pid: u32) {
    #[cfg(unix)]
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    #[cfg(windows)]
    let _ = std::process::Command::new("taskkill")
        .args(["/PID", &pid.to_string()])
        .status();
}

/// Bytes as people read them: `512 B`, `1.2 MB`, `3.4 GB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Time left until `at` (Unix seconds): `3h 12m`, `14m`, `ended`.
fn left(at: u64) -> String {
    let now = postern_client::unix_now();
    if at <= now {
        return "ended".into();
    }
    let m = (at - now).div_ceil(60);
    if m >= 60 {
        format!("{}h {:02}m", m / 60, m % 60)
    } else {
        format!("{m}m")
    }
}

fn print_agent_status(s: &control::AgentStatus) {
    match &s.user {
        Some(u) => println!("{u}: {}", s.signin),
        None => println!("{}", s.signin),
    }
    if let Some(url) = &s.renewal_url {
        println!("  to renew, open {url}");
        if let Some(code) = &s.renewal_code {
            println!("  (the browser shows confirmation code {code})");
        }
    }
    println!(
        "\n{:<24} {:<17} {:<14} {:>7} {:>9} {:>9} {:>9}",
        "ENDPOINT", "LOCAL", "STATE", "CONNS", "SENT", "RECEIVED", "TIME LEFT"
    );
    for t in &s.tunnels {
        println!(
            "{:<24} {:<17} {:<14} {:>7} {:>9} {:>9} {:>9}",
            t.endpoint,
            t.local.as_deref().unwrap_or("-"),
            t.state,
            format!("{}/{}", t.live, t.connections),
            bytes(t.bytes_up),
            bytes(t.bytes_down),
            t.ends_at.map(left).unwrap_or_else(|| "-".into()),
        );
        if let Some(d) = &t.detail {
            println!("    {d}");
        }
    }
    if !s.notices.is_empty() {
        println!("\nrecent:");
        for n in s.notices.iter().rev().take(5).rev() {
            println!("  {n}");
        }
    }
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
        println!("  since    {}", local_time(t));
    }
    println!("  expires  {}", local_time(s.expires_at));
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
            tunnel,
        } => {
            match postern_client::check_listen(listen, allow_remote) {
                Ok(None) => {}
                Ok(Some(warning)) => eprintln!("postern: {warning}"),
                // A usage error: clap's exit code (2) and format, before the gateway is asked.
                Err(e) => <Cli as clap::CommandFactory>::command()
                    .error(clap::error::ErrorKind::ValueValidation, e)
                    .exit(),
            }
            let gw = tunnel.connect()?;
            let fut = async {
                match connect(gw.clone(), &endpoint, listen, |addr, info| {
                    let max = info
                        .max_session_secs
                        .map(|s| format!(", max session {}", short_duration(s)))
                        .unwrap_or_default();
                    println!(
                        "ready: listening on {addr} for {} ({} at site {}{max}); Ctrl-C to stop",
                        info.name, info.protocol, info.site
                    );
                    let _ = std::io::stdout().flush();
                })
                .await
                {
                    Err(e @ postern_client::ClientError::UnknownEndpoint { .. }) => {
                        Err(anyhow::anyhow!("{e}{}", suggestion(&gw, &endpoint).await))
                    }
                    other => other.map_err(anyhow::Error::from),
                }
            };
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
        Cmd::Up {
            foreground,
            transport,
            no_browser,
            posture_file,
            install_autostart,
            remove_autostart,
        } => {
            if remove_autostart {
                println!("{}", postern_client::autostart::remove()?);
                return Ok(());
            }
            if install_autostart {
                println!("{}", postern_client::autostart::install()?);
            }
            up(foreground, &transport, no_browser, posture_file).await
        }
        Cmd::Rdp {
            endpoint,
            monitors,
            windowed,
            user,
            cert,
            dry_run,
            tunnel,
            client_args,
        } => {
            let mut opts = postern_client::rdp::RdpOptions::new(&endpoint);
            opts.monitors = monitors;
            opts.full_screen = !windowed;
            opts.username = user;
            if cert == "ignore" {
                opts.cert = postern_client::rdp::CertCheck::Ignore;
            }
            opts.validate()?;
            rdp(opts, dry_run, &tunnel, client_args).await
        }
        Cmd::Down => {
            let dir = login::config_dir()?;
            match control::send(&dir, control::Command::Down).await? {
                Some(control::Answer::Ok { message }) => {
                    // Wait for it to finish telling the gateway (it removes its file).
                    let _ = wait_until(Duration::from_secs(5), || {
                        control::read_agent_file(&dir).is_none()
                    })
                    .await;
                    println!("postern up: {message}; stopped");
                }
                Some(other) => anyhow::bail!("postern up answered: {other:?}"),
                None => println!("postern up is not running"),
            }
            Ok(())
        }
        Cmd::Login {
            gateway,
            ca_file,
            no_browser,
            timeout,
            posture_file,
        } => {
            let saved = login::config_dir().ok().and_then(|d| login::load_saved(&d));
            let (gateway, ca_file) = match gateway {
                Some(g) => {
                    // The saved CA goes with the saved gateway only.
                    let same = saved.as_ref().is_some_and(|s| {
                        s.gateway.trim_end_matches('/') == g.trim_end_matches('/')
                    });
                    let ca = ca_file.or_else(|| {
                        saved.as_ref().filter(|_| same).and_then(|s| s.ca_file.clone())
                    });
                    (g, ca)
                }
                None => match saved {
                    Some(s) => (s.gateway, ca_file.or(s.ca_file)),
                    None => anyhow::bail!(
                        "which gateway? Run postern login https://GATEWAY (your IT team gives you the address; it is remembered after the first sign-in)"
                    ),
                },
            };
            sign_in(
                &gateway,
                ca_file.as_deref(),
                no_browser,
                timeout,
                posture_file.as_deref(),
            )
            .await
        }
        Cmd::Status { gw, json } => {
            let dir = login::config_dir()?;
            if let Some(answer) = control::send(&dir, control::Command::Status).await? {
                let control::Answer::Status(s) = answer else {
                    anyhow::bail!("postern up answered: {answer:?}");
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print_agent_status(&s);
                }
                return Ok(());
            }
            let conn = gateway(&gw, None, postern_client::Transport::Tcp)?;
            let s: login::Session = conn.whoami().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_session(&s);
                println!("  tunnels  none open (postern up opens yours)");
            }
            Ok(())
        }
        Cmd::Logout { gw } => {
            let conn = gateway(&gw, None, postern_client::Transport::Tcp)?;
            login::logout(&conn).await?;
            println!("signed out");
            // The tunnels of `postern up` were this sign-in's: they are closed too.
            if let Ok(dir) = login::config_dir() {
                if let Ok(Some(control::Answer::Ok { message })) =
                    control::send(&dir, control::Command::Down).await
                {
                    println!("postern up: {message}; stopped");
                }
            }
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
                "{:<26} {:<9} {:<8} {:<7} {:<17} {:<8} DESCRIPTION",
                "ENDPOINT", "PROTOCOL", "PORT", "STATUS", "ACCESS", "MAX"
            );
            for e in &list.endpoints {
                let access = if e.needs_reason {
                    "with --reason".to_owned()
                } else if let Some(from) = e.from {
                    format!("from {}", local_time(from))
                } else if let Some(until) = e.until {
                    format!("until {}", local_time(until))
                } else {
                    "now".to_owned()
                };
                let site = match e.online {
                    Some(true) => "online",
                    Some(false) => "OFFLINE",
                    None => "-",
                };
                println!(
                    "{:<26} {:<9} {:<8} {:<7} {:<17} {:<8} {}",
                    e.name,
                    e.protocol,
                    e.local_port
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    site,
                    access,
                    e.max_session_secs
                        .map(short_duration)
                        .unwrap_or_else(|| "-".into()),
                    e.description.as_deref().unwrap_or("")
                );
            }
            if list.endpoints.iter().any(|e| e.online == Some(false)) {
                println!("\nOFFLINE: the hospital's connector for that site is not linked to the gateway now; tell the service desk if it stays so.");
            }
            Ok(())
        }
    }
}
