//! `postern up`: the clinician's shift in one background process. After sign-in it opens every
//! tunnel the clinician uses, each on its fixed loopback port (the policy's `local_port`, or
//! the profile's), and keeps them for the shift:
//!
//! * **status** — `postern status` asks it (see [`crate::control`]) for each tunnel's state,
//!   live connections, bytes and time left, the sign-in's state and the latest notices;
//! * **renewal** — [`Profile::renew_before`] before the session token expires it tells the
//!   clinician (desktop notification, status line) and opens the browser sign-in; the new
//!   token replaces the old one in this process and the gateway moves the live sessions onto
//!   it (`POST /v1/sessions/renew`, audited `session.renewed`), so no tunnel drops. A
//!   `postern login` run by hand is taken the same way (the token file changed). If nobody
//!   signs in, the tunnels end at expiry and status and a notification say so — never
//!   silently;
//! * **down** — `postern down` ends every tunnel (the gateway is told) and the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::control::{self, AgentFile, AgentStatus, Answer, Command, TunnelStatus};
use crate::profile::Profile;
use crate::{did_you_mean, local_time, login, ClientError, GatewayConn, Transport, TunnelStats};

/// How often the token file is looked at (a `postern login` in another terminal).
const TOKEN_POLL: Duration = Duration::from_secs(2);
/// Earlier tokens kept for renewing their sessions.
const EARLIER_TOKENS: usize = 4;
/// The shortest time a renewal sign-in is given.
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(60);

/// What `postern up` runs with.
pub struct UpOptions {
    pub config_dir: PathBuf,
    pub gateway: String,
    pub ca_file: Option<PathBuf>,
    pub transport: Transport,
    pub profile: Profile,
    /// Open the browser for renewal (else the URL is in `postern status` and the log).
    pub open_browser: bool,
    /// A posture report to send with renewals instead of gathering one (tests, site agents).
    pub posture_file: Option<PathBuf>,
}

/// One tunnel of the agent.
struct Entry {
    endpoint: String,
    protocol: Option<String>,
    local: Option<SocketAddr>,
    state: String,
    detail: Option<String>,
    /// When a time window closes access (seconds since the epoch).
    until: Option<u64>,
    /// When a time window opens access (the state says "opens later" until then).
    from: Option<u64>,
    stats: Arc<TunnelStats>,
    task: Option<tokio::task::AbortHandle>,
}

/// The sign-in as the agent knows it.
#[derive(Default)]
struct SignIn {
    user: Option<String>,
    expires_at: Option<u64>,
    sentence: String,
    renewal_url: Option<String>,
    renewal_code: Option<String>,
}

struct Agent {
    opts: UpOptions,
    gw: Arc<GatewayConn>,
    secret: String,
    tunnels: Mutex<Vec<Entry>>,
    signin: Mutex<SignIn>,
    /// Woken when a new token was adopted.
    token_changed: Notify,
    /// One adoption at a time (the renewal and the token-file watcher may both see it).
    adopting: tokio::sync::Mutex<()>,
    /// Tokens this process used before the one in use, newest first: their live sessions are
    /// renewed onto a new sign-in.
    earlier_tokens: Mutex<Vec<String>>,
    shutdown: watch::Sender<bool>,
}

/// Runs the agent until `postern down`, Ctrl-C or SIGTERM. `ready` gets the first status,
/// once every tunnel is listening (or has failed) and `agent.json` is written.
pub async fn run(opts: UpOptions, ready: impl FnOnce(&AgentStatus)) -> Result<(), ClientError> {
    // Handled from the start, so that one sent just after `postern up` returned still stops
    // the agent cleanly.
    let mut terminate = crate::platform::terminate_signal()
        .map_err(|e| ClientError::Setup(format!("cannot handle signals: {e}")))?;
    ignore_hangups();
    let token_path = login::token_path(&opts.config_dir);
    let token = std::fs::read_to_string(&token_path).map_err(|_| {
        ClientError::Setup(format!(
            "you are not signed in ({} not found): run postern login",
            token_path.display()
        ))
    })?;
    let gw = Arc::new(
        GatewayConn::new(&opts.gateway, opts.ca_file.as_deref(), &token)?
            .with_transport(opts.transport),
    );
    let who = gw.whoami().await?;
    let list = gw.endpoints().await?;
    let secret = postern_proto::ids::random_bytes(32)
        .map(|b| postern_proto::ids::hex(&b))
        .map_err(|_| ClientError::Setup("random number generator failed".into()))?;
    let agent = Arc::new(Agent {
        gw,
        secret,
        tunnels: Mutex::new(Vec::new()),
        signin: Mutex::new(SignIn {
            user: Some(who.user.clone()),
            expires_at: Some(who.expires_at),
            sentence: format!("signed in until {}", local_time(who.expires_at)),
            ..SignIn::default()
        }),
        token_changed: Notify::new(),
        adopting: tokio::sync::Mutex::new(()),
        earlier_tokens: Mutex::default(),
        shutdown: watch::channel(false).0,
        opts,
    });
    agent.open_tunnels(&list.endpoints).await?;

    let control = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| ClientError::Setup(format!("cannot listen on loopback: {e}")))?;
    let port = control
        .local_addr()
        .map_err(|e| ClientError::Setup(e.to_string()))?
        .port();
    let file = AgentFile {
        pid: std::process::id(),
        port,
        secret: agent.secret.clone(),
    };
    let json = serde_json::to_vec(&file).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let agent_file = control::agent_file(&agent.opts.config_dir);
    login::write_private(&agent_file, &json)?;
    tracing::info!(port, "postern up: listening for control requests");
    ready(&agent.status());

    tokio::spawn(agent.clone().serve_control(control));
    tokio::spawn(agent.clone().renewals());
    tokio::spawn(agent.clone().watch_token_file());

    let mut down = agent.shutdown.subscribe();
    tokio::select! {
        _ = down.wait_for(|d| *d) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    agent.stop().await;
    // Only this agent's file: a newer agent may have started meanwhile.
    if control::read_agent_file(&agent.opts.config_dir).is_some_and(|f| f.pid == file.pid) {
        let _ = std::fs::remove_file(&agent_file);
    }
    Ok(())
}

/// A hang-up (the terminal `postern up` was started from closing) is ignored: the agent
/// outlives its terminal. Handled from the start, as are Ctrl-C and SIGTERM (see `run`).
fn ignore_hangups() {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("hang-up ignored: postern up keeps running");
            }
        });
    }
}

impl Agent {
    /// Opens the profile's tunnels, or every endpoint with a `local_port`.
    async fn open_tunnels(
        &self,
        listed: &[postern_proto::wire::EndpointInfo],
    ) -> Result<(), ClientError> {
        let wanted: Vec<(String, Option<u16>)> = if self.opts.profile.tunnels.is_empty() {
            listed
                .iter()
                .filter(|e| e.local_port.is_some())
                .map(|e| (e.name.clone(), None))
                .collect()
        } else {
            self.opts
                .profile
                .tunnels
                .iter()
                .map(|t| (t.endpoint.clone(), t.local_port))
                .collect()
        };
        if wanted.is_empty() {
            return Err(ClientError::Setup(format!(
                "no endpoint has a fixed local port for you: list the ones you use in {} (see postern endpoints), or ask IT to set local_port in the policy",
                crate::profile::path(&self.opts.config_dir).display()
            )));
        }
        for (name, port) in wanted {
            let entry = match listed.iter().find(|e| e.name == name) {
                Some(info) => self.open(info, port).await,
                None => {
                    let hint = did_you_mean(&name, listed.iter().map(|e| e.name.as_str()))
                        .map(|n| format!(" Did you mean '{n}'?"))
                        .unwrap_or_default();
                    Entry {
                        endpoint: name.clone(),
                        protocol: None,
                        local: None,
                        state: "failed".into(),
                        detail: Some(format!(
                            "'{name}' is not among the endpoints you may reach.{hint}"
                        )),
                        until: None,
                        from: None,
                        stats: Arc::default(),
                        task: None,
                    }
                }
            };
            if let Ok(mut t) = self.tunnels.lock() {
                t.push(entry);
            }
        }
        Ok(())
    }

    /// A listener for `info` on `port` (the profile's), else its `local_port`, else any port.
    async fn open(&self, info: &postern_proto::wire::EndpointInfo, port: Option<u16>) -> Entry {
        let mut e = Entry {
            endpoint: info.name.clone(),
            protocol: Some(info.protocol.clone()),
            local: None,
            state: "listening".into(),
            detail: None,
            until: info.until,
            from: info.from,
            stats: Arc::default(),
            task: None,
        };
        if info.needs_reason {
            e.state = "needs a reason".into();
            e.detail = Some(format!(
                "break-glass access only: use postern connect {} --reason \"why you need it\"",
                info.name
            ));
            return e;
        }
        if let Some(from) = info.from {
            e.state = "opens later".into();
            e.detail = Some(format!("your access starts at {}", local_time(from)));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port.or(info.local_port).unwrap_or(0)));
        match crate::bind(addr).await {
            Ok(listener) => {
                e.local = listener.local_addr().ok();
                e.stats.ask_notices.store(
                    info.protocol == "dicom",
                    std::sync::atomic::Ordering::Relaxed,
                );
                let task = tokio::spawn(crate::serve(
                    self.gw.clone(),
                    info.name.clone(),
                    listener,
                    e.stats.clone(),
                ));
                e.task = Some(task.abort_handle());
                tracing::info!(endpoint = %info.name, local = ?e.local, "tunnel listening");
            }
            Err(err) => {
                e.state = "failed".into();
                e.detail = Some(err.to_string());
                tracing::warn!(endpoint = %info.name, error = %err, "tunnel not opened");
            }
        }
        e
    }

    fn status(&self) -> AgentStatus {
        let (user, expires_at, signin, renewal_url, renewal_code) = match self.signin.lock() {
            Ok(s) => (
                s.user.clone(),
                s.expires_at,
                s.sentence.clone(),
                s.renewal_url.clone(),
                s.renewal_code.clone(),
            ),
            Err(_) => (None, None, String::new(), None, None),
        };
        let now = crate::unix_now();
        let expired = expires_at.is_some_and(|e| e <= now);
        let tunnels = self
            .tunnels
            .lock()
            .map(|t| {
                t.iter()
                    .map(|e| {
                        let mut state = e.state.clone();
                        let mut detail = e.detail.clone();
                        if expired && e.local.is_some() {
                            state = "signed out".into();
                            detail = Some("your sign-in expired: run postern login".into());
                        } else if e.from.is_some_and(|f| f <= now) && e.local.is_some() {
                            // The window has opened since.
                            state = "listening".into();
                            detail = e.stats.last_error();
                        } else if detail.is_none() {
                            detail = e.stats.last_error();
                        }
                        TunnelStatus {
                            endpoint: e.endpoint.clone(),
                            protocol: e.protocol.clone(),
                            local: e.local.map(|a| a.to_string()),
                            state,
                            detail,
                            live: e.stats.live.load(Ordering::Relaxed),
                            connections: e.stats.total.load(Ordering::Relaxed),
                            bytes_up: e.stats.up.load(Ordering::Relaxed),
                            bytes_down: e.stats.down.load(Ordering::Relaxed),
                            ends_at: match (expires_at, e.until) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            },
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        AgentStatus {
            pid: std::process::id(),
            gateway: self.opts.gateway.clone(),
            user,
            expires_at,
            signin,
            renewal_url,
            renewal_code,
            tunnels,
            notices: crate::notices(&self.gw),
        }
    }

    fn set_signin(&self, f: impl FnOnce(&mut SignIn)) {
        if let Ok(mut s) = self.signin.lock() {
            f(&mut s);
        }
    }

    fn expires_at(&self) -> Option<u64> {
        self.signin.lock().ok().and_then(|s| s.expires_at)
    }

    /// Tells the clinician: a notice (status and log) and a desktop notification.
    fn tell(&self, line: String) {
        crate::notify::notify(&line);
        self.gw.tunnels.notice(line);
    }

    /// Renews the sign-in before it expires, again and again, for the whole shift.
    async fn renewals(self: Arc<Self>) {
        let mut down = self.shutdown.subscribe();
        loop {
            let Some(exp) = self.expires_at() else {
                return;
            };
            let lead = self.opts.profile.renew_before;
            let renew_at = exp.saturating_sub(lead.as_secs());
            let changed = self.token_changed.notified();
            tokio::select! {
                _ = sleep_until_unix(renew_at) => {}
                _ = changed => continue,
                _ = down.wait_for(|d| *d) => return,
            }
            if self.expires_at() != Some(exp) {
                continue;
            }
            // The browser sign-in; meanwhile the sign-in may expire (the clinician is told at
            // once, and a late sign-in still reopens the tunnels), or a `postern login` by hand
            // may replace it (then this one is dropped).
            let renewal = self.renew_once(exp);
            tokio::pin!(renewal);
            let mut expired = false;
            let outcome = loop {
                let changed = self.token_changed.notified();
                tokio::select! {
                    r = &mut renewal => break Some(r),
                    _ = sleep_until_unix(exp), if !expired => {
                        expired = true;
                        self.expired(exp);
                    }
                    _ = changed => break None,
                    _ = down.wait_for(|d| *d) => return,
                }
            };
            let Some(Err(why)) = outcome else {
                continue;
            };
            if !expired {
                let line = format!(
                    "your sign-in could not be renewed ({why}); your connections end at {} unless you run postern login",
                    local_time(exp)
                );
                self.set_signin(|s| {
                    s.sentence = line.clone();
                    s.renewal_url = None;
                    s.renewal_code = None;
                });
                self.tell(line);
                let changed = self.token_changed.notified();
                tokio::select! {
                    _ = sleep_until_unix(exp) => self.expired(exp),
                    _ = changed => continue,
                    _ = down.wait_for(|d| *d) => return,
                }
            } else {
                self.set_signin(|s| {
                    s.renewal_url = None;
                    s.renewal_code = None;
                });
                self.gw
                    .tunnels
                    .notice(format!("the sign-in was not completed ({why}); run postern login to reopen your connections"));
            }
            // Signed out: wait for a sign-in (`postern login`).
            let changed = self.token_changed.notified();
            tokio::select! {
                _ = changed => {}
                _ = down.wait_for(|d| *d) => return,
            }
        }
    }

    /// One renewal: the browser sign-in, then the new token adopted.
    async fn renew_once(&self, exp: u64) -> Result<(), String> {
        let line = format!(
            "your sign-in expires at {}: sign in again in your browser to keep your connections",
            local_time(exp)
        );
        self.set_signin(|s| s.sentence = format!("renewing: {line}"));
        self.tell(line);
        let posture = match &self.opts.posture_file {
            Some(p) => crate::posture::from_file(p).map_err(|e| e.to_string())?,
            None => crate::posture::collect().await,
        };
        let left = Duration::from_secs(exp.saturating_sub(crate::unix_now()));
        let session = login::login_with_posture(
            &self.opts.gateway,
            self.opts.ca_file.as_deref(),
            self.opts.open_browser,
            left.max(MIN_RENEWAL_WAIT),
            Some(&posture),
            |url, code| {
                tracing::info!("renewal: open {url} (confirmation code {code})");
                self.set_signin(|s| {
                    s.renewal_url = Some(url.to_owned());
                    s.renewal_code = Some(code.to_owned());
                });
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let token = session
            .token
            .ok_or_else(|| "the gateway returned no token".to_owned())?;
        self.adopt(&token).await
    }

    /// The sign-in expired with nobody renewing it: the gateway has ended the sessions.
    fn expired(&self, exp: u64) {
        let line = format!(
            "your sign-in expired at {}: your connections are closed. Run postern login to reopen them",
            local_time(exp)
        );
        self.set_signin(|s| {
            s.sentence = format!("signed out: {line}");
            s.renewal_url = None;
            s.renewal_code = None;
        });
        self.tell(line);
    }

    /// Takes `token` (a new sign-in) if it is not the one in use: new tunnels use it, and the
    /// live sessions of the earlier ones (still valid, same user and device) move onto it.
    async fn adopt(&self, token: &str) -> Result<(), String> {
        let _one = self.adopting.lock().await;
        let token = token.trim();
        let previous = self.gw.token();
        if token.is_empty() || token == previous {
            return Ok(());
        }
        self.gw.set_token(token);
        let who = match self.gw.whoami().await {
            Ok(w) => w,
            Err(e) => {
                self.gw.set_token(&previous);
                return Err(format!("the new sign-in is not accepted: {e}"));
            }
        };
        // Sessions may run on any earlier token of this process (a sign-in as someone else in
        // between does not strand them): each is asked, newest first.
        let earlier: Vec<String> = match self.earlier_tokens.lock() {
            Ok(mut e) => {
                e.retain(|t| t != &previous && t != token);
                e.insert(0, previous);
                e.truncate(EARLIER_TOKENS);
                e.clone()
            }
            Err(_) => vec![previous],
        };
        let (mut carried, mut ended, mut refused) = (0, Vec::new(), Vec::new());
        for t in &earlier {
            match self.gw.renew_sessions(t).await {
                Ok(r) => {
                    carried += r.renewed.len();
                    ended.extend(r.ended);
                }
                // An earlier sign-in that has expired has nothing left to carry.
                Err(ClientError::Expired) => {
                    if let Ok(mut e) = self.earlier_tokens.lock() {
                        e.retain(|x| x != t);
                    }
                }
                Err(e) => refused.push(e.to_string()),
            }
        }
        let until = local_time(who.expires_at);
        let mut line = format!("signed in again until {until}; {carried} connection(s) carried on");
        if !ended.is_empty() {
            line.push_str(&format!(
                ", {} ended: {}",
                ended.len(),
                ended
                    .iter()
                    .map(|e| format!("{} ({})", e.endpoint, e.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if carried == 0 {
            if let Some(why) = refused.first() {
                line.push_str(&format!("; live connections were not renewed: {why}"));
            }
        }
        self.set_signin(|s| {
            s.user = Some(who.user.clone());
            s.expires_at = Some(who.expires_at);
            s.sentence = format!("signed in until {until}");
            s.renewal_url = None;
            s.renewal_code = None;
        });
        self.tell(line);
        self.token_changed.notify_waiters();
        Ok(())
    }

    /// Adopts the token file's token when it changes (`postern login` in another terminal).
    async fn watch_token_file(self: Arc<Self>) {
        let path = login::token_path(&self.opts.config_dir);
        let mut down = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TOKEN_POLL) => {}
                _ = down.wait_for(|d| *d) => return,
            }
            self.check_token_file(&path).await;
        }
    }

    async fn check_token_file(&self, path: &std::path::Path) {
        let Ok(t) = std::fs::read_to_string(path) else {
            return;
        };
        if t.trim() != self.gw.token() {
            if let Err(e) = self.adopt(&t).await {
                self.gw.tunnels.notice(e);
            }
        }
    }

    /// Makes sure `endpoint` has a listener (`postern rdp`).
    async fn ensure_open(&self, endpoint: &str) -> Result<SocketAddr, String> {
        let found = self.tunnels.lock().ok().and_then(|t| {
            t.iter()
                .find(|e| e.endpoint == endpoint)
                .map(|e| (e.local, e.detail.clone()))
        });
        match found {
            Some((Some(local), _)) => return Ok(local),
            Some((None, detail)) => {
                return Err(detail.unwrap_or_else(|| format!("{endpoint} is not open")))
            }
            None => {}
        }
        let info = self.gw.check(endpoint).await.map_err(|e| e.to_string())?;
        let mut entry = self.open(&info, None).await;
        if entry.local.is_none() && info.local_port.is_some() {
            // Its fixed port is taken: any port will do for a launched client.
            entry = self.open(&info, Some(0)).await;
        }
        let local = entry.local;
        let detail = entry.detail.clone();
        if let Ok(mut t) = self.tunnels.lock() {
            t.push(entry);
        }
        local.ok_or_else(|| detail.unwrap_or_else(|| format!("{endpoint} could not be opened")))
    }

    async fn serve_control(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(self.clone().control_conn(s));
        }
    }

    async fn control_conn(self: Arc<Self>, s: TcpStream) {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let line = match tokio::time::timeout(control::TIMEOUT, control::read_line(&mut r)).await {
            Ok(Ok(Some(l))) => l,
            _ => return,
        };
        let answer = match serde_json::from_str::<control::Request>(&line) {
            Ok(req) if postern_proto::ids::ct_eq(req.secret.as_bytes(), self.secret.as_bytes()) => {
                self.answer(req.command).await
            }
            Ok(_) => Answer::Error {
                message: "wrong secret".into(),
            },
            Err(e) => Answer::Error {
                message: format!("not a request: {e}"),
            },
        };
        if let Ok(mut out) = serde_json::to_vec(&answer) {
            out.push(b'\n');
            let _ = w.write_all(&out).await;
            let _ = w.shutdown().await;
        }
    }

    async fn answer(&self, command: Command) -> Answer {
        match command {
            Command::Status => Answer::Status(Box::new(self.status())),
            Command::Down => {
                let n = self.tunnels.lock().map(|t| t.len()).unwrap_or(0);
                let _ = self.shutdown.send(true);
                Answer::Ok {
                    message: format!("closing {n} tunnel(s)"),
                }
            }
            Command::Token => {
                self.check_token_file(&login::token_path(&self.opts.config_dir))
                    .await;
                Answer::Ok {
                    message: self
                        .signin
                        .lock()
                        .map(|s| s.sentence.clone())
                        .unwrap_or_default(),
                }
            }
            Command::Open { endpoint } => match self.ensure_open(&endpoint).await {
                Ok(local) => Answer::Opened { local },
                Err(message) => Answer::Error { message },
            },
        }
    }

    /// Closes the listeners and every tunnel (the gateway ends their sessions now).
    async fn stop(&self) {
        if let Ok(t) = self.tunnels.lock() {
            for e in t.iter() {
                if let Some(task) = &e.task {
                    task.abort();
                }
            }
        }
        self.gw.close().await;
        tracing::info!("postern up: stopped");
    }
}

/// Sleeps until the Unix time `at` (at once if it has passed).
async fn sleep_until_unix(at: u64) {
    tokio::time::sleep(Duration::from_secs(at.saturating_sub(crate::unix_now()))).await;
}
