//! Resumable tunnels on the client: each local connection's bytes go through a
//! [`postern_net::resume`] engine, so when the link to the gateway breaks (a Wi-Fi change the
//! QUIC connection could not follow, sleep, a fallback to TCP) the application's connection
//! to `127.0.0.1` just pauses: the tunnel is resumed over a new connection and no byte is lost
//! or repeated.
//!
//! The clinician sees one line when the link is lost and one when it is back, however many
//! tunnels were open; and, if a tunnel cannot be resumed (its session ended meanwhile: a
//! revocation, the rule's resume grace ran out), why.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_net::resume::{self, Event, Finished, Handle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{GatewayConn, ResumeError, ResumeInfo, Tunnel};

/// What the resumable tunnels of one client share.
pub(crate) struct Tunnels {
    /// Live tunnels.
    live: AtomicUsize,
    /// Suspended tunnels, and since when the first of them is.
    suspended: Mutex<(usize, Option<Instant>)>,
    /// Set when the client is closing: every tunnel tells the gateway and ends.
    closing: watch::Sender<bool>,
    ended: tokio::sync::Notify,
    /// The latest lines told to the clinician, for `postern status`.
    notices: Mutex<std::collections::VecDeque<String>>,
}

/// Lines kept for `postern status`.
const NOTICES_KEPT: usize = 20;

impl Default for Tunnels {
    fn default() -> Tunnels {
        Tunnels {
            live: AtomicUsize::new(0),
            suspended: Mutex::new((0, None)),
            closing: watch::channel(false).0,
            ended: tokio::sync::Notify::new(),
            notices: Mutex::default(),
        }
    }
}

impl Tunnels {
    /// Tells the clinician `line` (on standard error, and kept for `postern status`).
    pub(crate) fn notice(&self, line: String) {
        eprintln!("postern: {line}");
        if let Ok(mut n) = self.notices.lock() {
            if n.len() == NOTICES_KEPT {
                n.pop_front();
            }
            n.push_back(format!("{} {line}", crate::local_time_now()));
        }
    }

    /// The latest notices, oldest first.
    pub(crate) fn notices(&self) -> Vec<String> {
        self.notices
            .lock()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn lost(&self) {
        if let Ok(mut s) = self.suspended.lock() {
            s.0 += 1;
            if s.0 == 1 {
                s.1 = Some(Instant::now());
                self.notice(
                    "the connection to the gateway was lost; reconnecting… (your applications stay connected)".to_owned()
                );
            }
        }
    }

    fn back(&self, resumed: bool) {
        if let Ok(mut s) = self.suspended.lock() {
            s.0 = s.0.saturating_sub(1);
            if s.0 == 0 {
                if let (true, Some(since)) = (resumed, s.1.take()) {
                    self.notice(format!(
                        "reconnected after {:.1} s; your connections carried on",
                        since.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Ends every tunnel (the gateway is told), waiting up to a second.
    pub(crate) async fn close_all(&self) {
        let _ = self.closing.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let ended = self.ended.notified();
                if self.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }
}

/// Counts a live tunnel until dropped.
struct Live<'a>(&'a Tunnels);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// Carries the application's connection `local` over the resumable tunnel `link` until it
/// ends, resuming it whenever the link breaks.
pub(crate) async fn carry<L>(gw: Arc<GatewayConn>, local: L, link: Tunnel, info: ResumeInfo)
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let tunnels = &gw.tunnels;
    tunnels.live.fetch_add(1, Ordering::AcqRel);
    let _live = Live(tunnels);
    let (control, mut events, inbox) = resume::channel();
    let engine = tokio::spawn(resume::run(
        local,
        Some(Box::new(link)),
        resume::Config::default(),
        inbox,
    ));
    tokio::pin!(engine);
    let mut closing = tunnels.closing.subscribe();
    loop {
        tokio::select! {
            out = &mut engine => {
                if let Ok((f, _)) = out {
                    report(tunnels, &info, &f);
                }
                return;
            }
            ev = events.recv() => match ev {
                Some(Event::LinkLost { .. }) => {
                    tunnels.lost();
                    let mut closed = tunnels.closing.subscribe();
                    let outcome = tokio::select! {
                        r = reattach(&gw, &info, &control) => r,
                        _ = closed_signal(&mut closed) => Err(None),
                    };
                    match outcome {
                        Ok(()) => tunnels.back(true),
                        Err(why) => {
                            tunnels.back(false);
                            if let Some(why) = &why {
                                tunnels.notice(format!("a connection to {} was ended: {why}", info.endpoint));
                            }
                            let reason = why.unwrap_or_else(|| "the clinician's client was closed".into());
                            control.close(reason);
                        }
                    }
                }
                Some(Event::Attached { .. }) => {}
                None => {}
            },
            _ = closed_signal(&mut closing) => {
                control.close("the clinician's client was closed".into());
                let _ = (&mut engine).await;
                return;
            }
        }
    }
}

/// Resolves once the client is closing.
async fn closed_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await.map(|_| ());
}

/// Resumes the tunnel over a new stream, trying until it is back or cannot be (the sentence
/// says why).
async fn reattach(
    gw: &GatewayConn,
    info: &ResumeInfo,
    control: &Handle,
) -> Result<(), Option<String>> {
    let mut attempts = 0u32;
    loop {
        let d = control.detach().await.ok_or(None)?;
        match gw.resume(info, d.received).await {
            Ok((link, peer_received)) => {
                match control
                    .attach(d, Box::new(link), peer_received, String::new())
                    .await
                {
                    Ok(()) => {
                        tracing::info!(session_id = %info.session_id, attempts, "tunnel resumed");
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(error = %e, "resumed stream not attached; again"),
                }
            }
            Err(ResumeError::Fatal(why)) => return Err(Some(why)),
            Err(ResumeError::Retry(why)) => {
                attempts += 1;
                tracing::debug!(attempts, error = %why, "resume attempt failed; again");
                // Attempts are bounded by their own timeouts; a refusal comes fast, so pause.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Tells the clinician why a tunnel ended, when it was not their application closing it.
fn report(tunnels: &Tunnels, info: &ResumeInfo, f: &Finished) {
    match f {
        Finished::PeerClosed(why) => tunnels.notice(format!(
            "the gateway ended a connection to {}: {why}",
            info.endpoint
        )),
        Finished::Protocol(why) => tunnels.notice(format!(
            "a connection to {} failed: protocol error: {why}",
            info.endpoint
        )),
        Finished::Clean | Finished::LocalError(_) | Finished::Closed | Finished::Abandoned => {}
    }
}
