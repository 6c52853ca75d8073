//! SIEM export: RFC 5424 syslog messages over TCP or TLS (RFC 5425 octet-counted framing), and
//! the live forwarder that feeds a syslog server from the writer without ever slowing it.
//!
//! ```text
//!  writer thread ── try_send(seq, line) ──▶ bounded queue ──▶ forwarder thread ──▶ TCP / TLS
//!        │ (full: count overflow, move on)                    ▲  │
//!        ▼                                                    │  └─ cursor file: last seq sent
//!    local log  ◀──────── reads back what the queue missed ───┘
//! ```
//!
//! The local log is the source of truth: the queue is only a fast path. Whenever the next event
//! the forwarder needs is not at the front of the queue (the queue overflowed while the SIEM
//! was away, another process appended with `append_sync`, or the gateway restarted), it reads
//! it from the log. The last forwarded `seq` is saved in `DIR/syslog.cursor` (at most once a
//! second and at shutdown), so a restart resumes there: delivery is at-least-once, and a SIEM
//! can drop repeats by `seq`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::chain::ChainView;
use crate::error::AuditError;
use crate::stats::ForwardStats;
use crate::store::{segments, write_atomic};

/// Structured-data id of the `[postern@32473 ...]` element. 32473 is the private enterprise
/// number reserved for examples (RFC 5612); Postern has none of its own.
pub const SD_ID: &str = "postern@32473";
/// File in the log directory holding the forwarder's position.
pub const CURSOR_FILE: &str = "syslog.cursor";
/// Syslog facility 13, "log audit".
const FACILITY: u8 = 13;

/// Where and how to forward.
#[derive(Debug, Clone)]
pub struct SyslogOptions {
    /// `host:port` of the syslog server.
    pub address: String,
    /// TLS (RFC 5425) when set; plain TCP (RFC 6587 octet counting) otherwise.
    pub tls: Option<SyslogTls>,
    /// Events held in memory for the forwarder, beyond which the writer stops queueing (and the
    /// forwarder later reads from the log). Default 10,000.
    pub queue_capacity: usize,
    /// APP-NAME of the messages. Default `postern`.
    pub app_name: String,
    /// What each message carries: the stored JSON line (default), or an ATNA audit message.
    pub format: MessageFormat,
}

/// What a forwarded syslog message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageFormat {
    /// The stored JSON line as MSG, `type` as MSGID, facility 13 (log audit).
    #[default]
    Json,
    /// IHE ITI-20: the event's DICOM PS3.15 A.5 audit message (XML) as MSG, MSGID
    /// `IHE+RFC-3881`, facility 10 (security/authorization); events without an ATNA mapping
    /// are skipped (and the cursor moves past them).
    Atna,
}

impl MessageFormat {
    /// `json` or `atna`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageFormat::Json => "json",
            MessageFormat::Atna => "atna",
        }
    }

    /// Parses [`MessageFormat::as_str`]'s names.
    pub fn parse(s: &str) -> Result<MessageFormat, String> {
        match s {
            "json" => Ok(MessageFormat::Json),
            "atna" => Ok(MessageFormat::Atna),
            other => Err(format!(
                "unknown syslog message format {other:?}: use \"json\" or \"atna\""
            )),
        }
    }
}

impl SyslogOptions {
    /// Plain TCP to `address` (`host:port`) with defaults.
    pub fn tcp(address: impl Into<String>) -> SyslogOptions {
        SyslogOptions {
            address: address.into(),
            tls: None,
            queue_capacity: 10_000,
            app_name: "postern".to_owned(),
            format: MessageFormat::Json,
        }
    }

    /// TLS 1.3 to `address`, checking the server's certificate for `server_name` against the
    /// CA certificates in `ca_pem`.
    pub fn tls(
        address: impl Into<String>,
        server_name: impl Into<String>,
        ca_pem: &[u8],
    ) -> Result<SyslogOptions, AuditError> {
        let address = address.into();
        let ca_certs = parse_ca_pem(&address, ca_pem)?;
        Ok(SyslogOptions {
            tls: Some(SyslogTls {
                server_name: server_name.into(),
                ca_certs,
                client: None,
            }),
            ..SyslogOptions::tcp(address)
        })
    }

    /// Presents a client certificate (PEM chain, leaf first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) in the TLS handshake. Only with [`SyslogOptions::tls`].
    pub fn with_client_cert_pem(
        mut self,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<SyslogOptions, AuditError> {
        use rustls::pki_types::pem::PemObject;
        let target = self.target();
        let bad = |reason: String| AuditError::Forward {
            target: target.clone(),
            reason,
        };
        let Some(tls) = self.tls.as_mut() else {
            return Err(bad("a client certificate needs TLS".to_owned()));
        };
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert_pem).collect();
        let certs = certs.map_err(|e| bad(format!("bad client certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                "no CERTIFICATE in the client certificate PEM".to_owned()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| bad(format!("bad client key PEM: {e}")))?;
        tls.client = Some(ClientIdentity {
            certs,
            key: Arc::new(key),
        });
        Ok(self)
    }

    /// [`SyslogOptions::with_client_cert_pem`] from files; the key file must be private to its
    /// owner (mode 0600 or stricter), like every other key of Postern.
    pub fn with_client_cert_files(
        self,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<SyslogOptions, AuditError> {
        let target = self.target();
        let bad = |reason: String| AuditError::Forward {
            target: target.clone(),
            reason,
        };
        let cert = std::fs::read(cert_file)
            .map_err(|e| bad(format!("reading {}: {e}", cert_file.display())))?;
        let key = read_private_key(key_file).map_err(bad)?;
        self.with_client_cert_pem(&cert, &key)
    }

    /// `tls://host:port` or `tcp://host:port`, for messages and the cursor file.
    pub fn target(&self) -> String {
        match &self.tls {
            Some(_) => format!("tls://{}", self.address),
            None => format!("tcp://{}", self.address),
        }
    }
}

/// TLS settings for syslog.
#[derive(Debug, Clone)]
pub struct SyslogTls {
    /// Name the server's certificate must carry.
    pub server_name: String,
    /// CA certificates the server's chain must end in.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The client certificate and key presented to the server, if it asks for one.
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key (the key is not shown by `Debug`).
#[derive(Clone)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"(private)")
            .finish()
    }
}

/// Reads a PEM private key file, refusing one that others can read.
fn read_private_key(path: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the client key {} has mode {mode:04o}; it must be private to its owner (chmod 600 {})",
                path.display(),
                path.display()
            ));
        }
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut &file, &mut bytes)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(bytes)
}

fn parse_ca_pem(target: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, AuditError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| AuditError::Forward {
        target: target.to_owned(),
        reason: format!("bad CA PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(AuditError::Forward {
            target: target.to_owned(),
            reason: "no CERTIFICATE in the CA PEM".to_owned(),
        });
    }
    Ok(certs)
}

fn client_config(target: &str, tls: &SyslogTls) -> Result<Arc<rustls::ClientConfig>, AuditError> {
    let bad = |reason: String| AuditError::Forward {
        target: target.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in &tls.ca_certs {
        roots
            .add(cert.clone())
            .map_err(|e| bad(format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        Some(id) => config
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| bad(format!("client certificate: {e}")))?,
        None => config.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// An open connection to a syslog server.
pub struct SyslogConnection {
    stream: Stream,
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// What [`SyslogConnection::peer_state`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing to read: the server is (as far as can be told) there.
    Open,
    /// The server closed the connection in an orderly way (EOF or TLS close_notify): what was
    /// sent before was read by it (a server that closes with unread data resets instead).
    Closed,
    /// The connection was reset or failed: what was sent last may not have been read.
    Reset,
}

/// A prepared destination: options plus the TLS configuration built once.
#[derive(Clone)]
pub struct SyslogTarget {
    options: SyslogOptions,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl SyslogTarget {
    /// Checks the options (CA certificates, server name) without connecting.
    pub fn new(options: SyslogOptions) -> Result<SyslogTarget, AuditError> {
        let target = options.target();
        let tls = match &options.tls {
            Some(tls) => {
                let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| {
                    AuditError::Forward {
                        target: target.clone(),
                        reason: format!("bad server name {:?}: {e}", tls.server_name),
                    }
                })?;
                Some((client_config(&target, tls)?, name))
            }
            None => None,
        };
        Ok(SyslogTarget { options, tls })
    }

    /// Connects (5 s timeout) and, for TLS, completes the handshake.
    pub fn connect(&self) -> io::Result<SyslogConnection> {
        let addrs: Vec<_> = self.options.address.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
                    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let stream = match &self.tls {
                        None => Stream::Tcp(tcp),
                        Some((config, name)) => {
                            let conn =
                                rustls::ClientConnection::new(Arc::clone(config), name.clone())
                                    .map_err(io::Error::other)?;
                            let mut tls = rustls::StreamOwned::new(conn, tcp);
                            // Finish the handshake now, so a bad certificate is reported as a
                            // connection failure rather than at the first write.
                            while tls.conn.is_handshaking() {
                                tls.conn.complete_io(&mut tls.sock)?;
                            }
                            Stream::Tls(Box::new(tls))
                        }
                    };
                    return Ok(SyslogConnection { stream });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The options this target was made from.
    pub fn options(&self) -> &SyslogOptions {
        &self.options
    }
}

impl SyslogConnection {
    /// Sends already framed bytes and flushes.
    pub fn send(&mut self, framed: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => {
                s.write_all(framed)?;
                s.flush()
            }
            Stream::Tls(s) => {
                s.write_all(framed)?;
                s.flush()
            }
        }
    }

    /// Whether the server is still there, without blocking: a syslog server never sends
    /// application data, so anything readable is the server going away (EOF, a TLS
    /// close_notify) or a reset; TLS session tickets are consumed and ignored.
    pub fn peer_state(&mut self) -> PeerState {
        match &mut self.stream {
            Stream::Tcp(s) => {
                if s.set_nonblocking(true).is_err() {
                    return PeerState::Reset;
                }
                let mut buf = [0u8; 512];
                let state = loop {
                    match io::Read::read(s, &mut buf) {
                        Ok(0) => break PeerState::Closed,
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break PeerState::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break PeerState::Reset,
                    }
                };
                if s.set_nonblocking(false).is_err() {
                    return PeerState::Reset;
                }
                state
            }
            Stream::Tls(s) => {
                if s.sock.set_nonblocking(true).is_err() {
                    return PeerState::Reset;
                }
                let state = loop {
                    match s.conn.read_tls(&mut s.sock) {
                        Ok(0) => break PeerState::Closed,
                        Ok(_) => match s.conn.process_new_packets() {
                            Ok(io) if io.peer_has_closed() => break PeerState::Closed,
                            Ok(io) => {
                                // Drop any plaintext (a server has nothing to say).
                                let n = io.plaintext_bytes_to_read();
                                if n > 0 {
                                    let mut sink = vec![0u8; n];
                                    let _ = io::Read::read(&mut s.conn.reader(), &mut sink);
                                }
                                continue;
                            }
                            Err(_) => break PeerState::Reset,
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break PeerState::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break PeerState::Reset,
                    }
                };
                if s.sock.set_nonblocking(false).is_err() {
                    return PeerState::Reset;
                }
                state
            }
        }
    }

    /// Closes the connection cleanly (TLS close_notify).
    pub fn close(mut self) {
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

/// One RFC 5424 message for a stored log line (without `\n`): facility 13 (log audit),
/// severity alert for security alerts (`connector.renewal_refused`,
/// `audit.truncation_detected`), warning for refusals and failures and notice otherwise, the event's `ts`, node id
/// as HOSTNAME, `type` as MSGID, `seq` and `hash` as structured data, the line itself as MSG.
pub fn format_rfc5424(line: &[u8], app_name: &str, fallback_host: &str) -> Vec<u8> {
    format_rfc5424_replica(line, app_name, fallback_host, None)
}

/// [`format_rfc5424`], plus a `replica` parameter in the structured data after `seq` and `hash`
/// when given: which log the line came from, when several replicas' logs are exported as one
/// stream (`seq` counts in each log on its own).
pub fn format_rfc5424_replica(
    line: &[u8],
    app_name: &str,
    fallback_host: &str,
    replica: Option<&str>,
) -> Vec<u8> {
    let view = ChainView::parse(line).unwrap_or_default();
    let severity = severity(&view.kind);
    let pri = u16::from(FACILITY) * 8 + u16::from(severity);
    let ts = if humantime::parse_rfc3339_weak(&view.ts).is_ok() && view.ts.ends_with('Z') {
        view.ts.as_str()
    } else {
        "-"
    };
    let host = header_field(view.gateway.as_deref().unwrap_or(fallback_host), 255);
    let app = header_field(app_name, 48);
    let msgid = header_field(&view.kind, 32);
    let mut sd = format!("[{SD_ID}");
    if let Some(seq) = view.seq {
        sd.push_str(&format!(" seq=\"{seq}\""));
    }
    if let Some(hash) = &view.hash {
        sd.push_str(&format!(" hash=\"{}\"", sd_escape(hash)));
    }
    if let Some(replica) = replica {
        let replica: String = replica
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        sd.push_str(&format!(" replica=\"{}\"", sd_escape(&replica)));
    }
    sd.push(']');
    let mut out = format!("<{pri}>1 {ts} {host} {app} - {msgid} {sd} ").into_bytes();
    out.extend_from_slice(line);
    out
}

/// Facility 10, security/authorization messages, as IHE ITI-20 asks.
const ATNA_FACILITY: u8 = 10;
/// MSGID of an ITI-20 message.
pub const ATNA_MSGID: &str = "IHE+RFC-3881";

/// One IHE ITI-20 syslog message for a stored log line (without `\n`): facility 10, severity
/// notice (5) for a success and warning (4) for a failure, the event's time, node id as
/// HOSTNAME, MSGID `IHE+RFC-3881`, `seq`, `hash` and `type` as structured data (so a
/// repository can drop a repeat by `seq`), and as MSG the UTF-8 BOM and the DICOM audit
/// message. `None` when the event has no ATNA mapping (or the line is not an event).
pub fn format_atna(line: &[u8], app_name: &str, fallback_host: &str) -> Option<Vec<u8>> {
    let event: crate::Event = serde_json::from_slice(line).ok()?;
    let mapped = crate::atna::map(&event, fallback_host)?;
    Some(format_atna_message(
        &mapped,
        Some(&event),
        app_name,
        fallback_host,
    ))
}

/// [`format_atna`] for a message already mapped; `event` (when it came from the log) gives
/// HOSTNAME, `seq`, `hash` and `type`.
pub fn format_atna_message(
    mapped: &crate::atna::Mapped,
    event: Option<&crate::Event>,
    app_name: &str,
    fallback_host: &str,
) -> Vec<u8> {
    let severity: u8 = if mapped.outcome == crate::atna::Outcome::Success {
        5
    } else {
        4
    };
    let pri = u16::from(ATNA_FACILITY) * 8 + u16::from(severity);
    let host = header_field(
        event
            .and_then(|e| e.gateway.as_deref())
            .unwrap_or(fallback_host),
        255,
    );
    let app = header_field(app_name, 48);
    let mut sd = format!("[{SD_ID}");
    if let Some(seq) = event.and_then(|e| e.seq) {
        sd.push_str(&format!(" seq=\"{seq}\""));
    }
    if let Some(hash) = event.and_then(|e| e.hash.as_deref()) {
        sd.push_str(&format!(
            " hash=\"{}\"",
            sd_escape(&header_field(hash, 128))
        ));
    }
    sd.push_str(&format!(
        " type=\"{}\"]",
        sd_escape(&header_field(&mapped.kind, 64))
    ));
    let mut out = format!(
        "<{pri}>1 {} {host} {app} - {ATNA_MSGID} {sd} \u{FEFF}",
        mapped.when
    )
    .into_bytes();
    out.extend_from_slice(crate::atna::to_xml(mapped).as_bytes());
    out
}

/// `len SP msg`, RFC 6587 / RFC 5425 octet counting.
pub fn frame(message: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
}

fn severity(kind: &str) -> u8 {
    const ALERT: u8 = 1;
    const WARNING: u8 = 4;
    const NOTICE: u8 = 5;
    // Someone holds what they should not, or the log lost events: act now.
    if kind == "connector.renewal_refused" || kind == "audit.truncation_detected" {
        return ALERT;
    }
    let warn = kind.ends_with(".denied")
        || kind.ends_with(".failed")
        || kind.ends_with(".refused")
        || kind.ends_with(".rejected")
        || kind.ends_with(".enroll_failed")
        || kind == "session.terminated"
        || kind == "audit.recovered";
    if warn {
        WARNING
    } else {
        NOTICE
    }
}

/// A HEADER field: printable US-ASCII without spaces, at most `max` characters, or `-`.
fn header_field(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "-".to_owned()
    } else {
        cleaned
    }
}

fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The writer's side of the live forwarder.
pub(crate) struct Forwarder {
    tx: SyncSender<(u64, Box<[u8]>)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ForwardStats>,
}

/// How long `close` lets the forwarder deliver what is left.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events per send.
const SEND_BATCH: usize = 512;

#[derive(Serialize, Deserialize)]
struct Cursor {
    target: String,
    seq: u64,
}

impl Forwarder {
    /// Starts the forwarder thread. `start_after`: where to begin if there is no cursor for
    /// this target (the head before this writer's first event: only new events are sent).
    pub(crate) fn start(
        dir: &Path,
        options: SyslogOptions,
        node: Option<String>,
        start_after: u64,
    ) -> Result<Forwarder, AuditError> {
        let target = SyslogTarget::new(options)?;
        let name = target.options.target();
        let cursor_path = dir.join(CURSOR_FILE);
        let saved = std::fs::read_to_string(&cursor_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Cursor>(&t).ok())
            .filter(|c| c.target == name);
        let cursor = match saved {
            Some(c) => c.seq,
            None => {
                // First time for this target: remember the starting point at once, so that
                // what this run cannot deliver is sent by a later one.
                let text = serde_json::to_string(&Cursor {
                    target: name.clone(),
                    seq: start_after,
                })
                .unwrap_or_default();
                if let Err(e) = write_atomic(dir, &cursor_path, text.as_bytes()) {
                    tracing::warn!(path = %cursor_path.display(), error = %e, "cannot save syslog cursor");
                }
                start_after
            }
        };
        let stats = Arc::new(ForwardStats::default());
        stats.last_seq.store(cursor, Ordering::Relaxed);
        let capacity = target.options.queue_capacity.max(1);
        let (tx, rx) = mpsc::sync_channel(capacity.min(1024));
        let stop = Arc::new(AtomicBool::new(false));
        let host = node.unwrap_or_else(|| "-".to_owned());
        let mut task = ForwardTask {
            dir: dir.to_owned(),
            target,
            name,
            host,
            rx,
            pending: VecDeque::new(),
            capacity,
            cursor,
            checked: cursor,
            retry: Vec::new(),
            saved_cursor: cursor,
            cursor_path,
            log: None,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("postern-audit-syslog".into())
            .spawn(move || task.run())
            .map_err(|e| AuditError::spawn(dir, e))?;
        Ok(Forwarder {
            tx,
            stop,
            thread: Some(thread),
            stats,
        })
    }

    pub(crate) fn stats(&self) -> Arc<ForwardStats> {
        Arc::clone(&self.stats)
    }

    /// Offers a committed line (with or without its `\n`). Never blocks: if the queue is full,
    /// counts an overflow; the forwarder will read the line from the log.
    pub(crate) fn offer(&self, seq: u64, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match self.tx.try_send((seq, line.into())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lets the forwarder deliver what it can within a short time, then stops it.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the forwarder is reading the log.
struct LogPosition {
    path: PathBuf,
    index: usize,
    offset: u64,
    /// `seq` of the last line before `offset`.
    seq: u64,
}

struct ForwardTask {
    dir: PathBuf,
    target: SyslogTarget,
    name: String,
    host: String,
    rx: Receiver<(u64, Box<[u8]>)>,
    pending: VecDeque<(u64, Box<[u8]>)>,
    capacity: usize,
    /// Last `seq` delivered.
    cursor: u64,
    /// The cursor when the connection was last found open (before a batch): a reset goes
    /// back here.
    checked: u64,
    /// A batch that could not be sent yet (no connection), sent before anything else.
    retry: Vec<(u64, Box<[u8]>)>,
    saved_cursor: u64,
    cursor_path: PathBuf,
    log: Option<LogPosition>,
    stats: Arc<ForwardStats>,
    stop: Arc<AtomicBool>,
}

impl ForwardTask {
    fn run(&mut self) {
        let mut conn: Option<SyslogConnection> = None;
        let mut backoff = Duration::from_millis(200);
        let mut next_attempt = Instant::now();
        let mut last_save = Instant::now();
        let mut last_log_poll = Instant::now();
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if stop_deadline.is_none() && self.stop.load(Ordering::Relaxed) {
                stop_deadline = Some(Instant::now() + DRAIN_TIME);
            }
            if stop_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.drain_queue();
            let poll_log =
                stop_deadline.is_some() || last_log_poll.elapsed() >= Duration::from_secs(1);
            let batch = if self.retry.is_empty() {
                self.next_batch(poll_log)
            } else {
                std::mem::take(&mut self.retry)
            };
            if poll_log {
                last_log_poll = Instant::now();
            }
            if batch.is_empty() {
                if stop_deadline.is_some() {
                    break; // caught up
                }
                match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(item) => self.push_pending(item),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.stop.store(true, Ordering::Relaxed);
                    }
                }
                self.maybe_save(&mut last_save);
                continue;
            }
            let mut framed = Vec::with_capacity(batch.len() * 512);
            for (_, line) in &batch {
                let app = &self.target.options.app_name;
                match self.target.options.format {
                    MessageFormat::Json => {
                        frame(&format_rfc5424(line, app, &self.host), &mut framed)
                    }
                    MessageFormat::Atna => match format_atna(line, app, &self.host) {
                        Some(msg) => frame(&msg, &mut framed),
                        None => {
                            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                }
            }
            let last = batch.last().map_or(self.cursor, |(seq, _)| *seq);
            if framed.is_empty() {
                // Nothing of this batch goes out in this format: move past it.
                self.cursor = last;
                self.stats.last_seq.store(last, Ordering::Relaxed);
                self.maybe_save(&mut last_save);
                continue;
            }
            // Before writing, make sure the server did not go away since the last batch: a
            // write into a closed connection succeeds locally and is lost.
            if let Some(c) = conn.as_mut() {
                match c.peer_state() {
                    PeerState::Open => self.checked = self.cursor,
                    PeerState::Closed => {
                        tracing::info!(target = %self.name, "syslog server closed the connection; reconnecting");
                        self.stats.connected.store(false, Ordering::Relaxed);
                        conn = None;
                        self.retry = batch;
                        continue;
                    }
                    PeerState::Reset => {
                        self.reset_to_checked(&mut conn);
                        continue;
                    }
                }
            }
            if conn.is_none() {
                if Instant::now() < next_attempt {
                    if stop_deadline.is_some() {
                        break; // not connected; do not wait for the SIEM at shutdown
                    }
                    std::thread::sleep(
                        Duration::from_millis(50).min(next_attempt - Instant::now()),
                    );
                    self.retry = batch;
                    continue;
                }
                match self.target.connect() {
                    Ok(c) => {
                        tracing::info!(target = %self.name, "connected to syslog");
                        self.stats.connected.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(200);
                        self.checked = self.cursor;
                        conn = Some(c);
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target = %self.name, error = %e, "cannot connect to syslog; events wait in the local log");
                        next_attempt = Instant::now() + jitter(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        self.retry = batch;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.send(&framed) {
                Ok(()) => {
                    self.cursor = last;
                    self.stats.last_seq.store(last, Ordering::Relaxed);
                    self.stats
                        .forwarded
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target = %self.name, error = %e, "syslog send failed; will resend from the local log");
                    next_attempt = Instant::now() + jitter(backoff);
                    // The batch is not lost: the cursor did not move, so it is read again; what
                    // was sent since the last check may not have been read either.
                    self.reset_to_checked(&mut conn);
                }
            }
            self.maybe_save(&mut last_save);
        }
        if let Some(c) = conn.take() {
            c.close();
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.save();
    }

    /// The connection failed or was reset: what was sent after the last check that found it
    /// open may not have been read, so the cursor goes back there (a repository may see
    /// those events twice; it can drop repeats by `seq`).
    fn reset_to_checked(&mut self, conn: &mut Option<SyslogConnection>) {
        tracing::warn!(target = %self.name, resend_from = self.checked + 1, "syslog connection reset; resending what may not have arrived");
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(false, Ordering::Relaxed);
        *conn = None;
        if self.checked < self.cursor {
            self.stats
                .resent
                .fetch_add(self.cursor - self.checked, Ordering::Relaxed);
            self.cursor = self.checked;
            self.stats.last_seq.store(self.cursor, Ordering::Relaxed);
        }
        self.log = None;
        self.pending.clear();
        self.retry.clear();
    }

    fn push_pending(&mut self, item: (u64, Box<[u8]>)) {
        if item.0 > self.cursor {
            self.pending.push_back(item);
        }
    }

    /// Moves queued lines into `pending`, up to its capacity (beyond it the channel fills and
    /// the writer counts overflows).
    fn drain_queue(&mut self) {
        while self.pending.len() < self.capacity {
            match self.rx.try_recv() {
                Ok(item) => self.push_pending(item),
                Err(_) => break,
            }
        }
    }

    /// The next events to send, in `seq` order, starting right after the cursor: from the
    /// queue when it holds exactly that event, else from the log.
    fn next_batch(&mut self, poll_log: bool) -> Vec<(u64, Box<[u8]>)> {
        while self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= self.cursor)
        {
            self.pending.pop_front();
        }
        let want = self.cursor + 1;
        let mut batch = Vec::new();
        if self.pending.front().is_some_and(|(seq, _)| *seq == want) {
            let mut next = want;
            while batch.len() < SEND_BATCH
                && self.pending.front().is_some_and(|(seq, _)| *seq == next)
            {
                if let Some(item) = self.pending.pop_front() {
                    batch.push(item);
                }
                next += 1;
            }
            return batch;
        }
        let gap = self.pending.front().map(|(seq, _)| *seq);
        if gap.is_some() || poll_log {
            match self.read_log(want, gap) {
                Ok(lines) => batch = lines,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "syslog forwarder cannot read the local log");
                    self.log = None;
                }
            }
        }
        batch
    }

    /// Lines with `seq` from `from` up to (not including) `until`, at most a batch, from the
    /// local log. Keeps its position between calls so catching up is linear.
    fn read_log(&mut self, from: u64, until: Option<u64>) -> io::Result<Vec<(u64, Box<[u8]>)>> {
        let segs = segments(&self.dir).map_err(io::Error::other)?;
        if segs.is_empty() {
            return Ok(Vec::new());
        }
        let position_ok = self.log.as_ref().is_some_and(|p| {
            p.seq + 1 == from && segs.get(p.index).is_some_and(|(_, path)| *path == p.path)
        });
        if !position_ok {
            self.log = Some(locate(&segs, from)?);
        }
        let Some(pos) = self.log.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        loop {
            let mut file = File::open(&pos.path)?;
            file.seek(SeekFrom::Start(pos.offset))?;
            let mut reader = BufReader::with_capacity(64 * 1024, file);
            let mut line = Vec::new();
            loop {
                if out.len() >= SEND_BATCH {
                    return Ok(out);
                }
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break; // end of segment (or a line still being written)
                }
                line.pop();
                let Some(seq) = ChainView::parse(&line).ok().and_then(|v| v.seq) else {
                    pos.offset += n as u64;
                    continue;
                };
                if until.is_some_and(|u| seq >= u) {
                    return Ok(out);
                }
                pos.offset += n as u64;
                if seq < from {
                    continue;
                }
                pos.seq = seq;
                out.push((seq, line.as_slice().into()));
            }
            // Move to the next segment if there is one.
            match segs.get(pos.index + 1) {
                Some((_, next)) => {
                    pos.index += 1;
                    pos.path = next.clone();
                    pos.offset = 0;
                }
                None => return Ok(out),
            }
        }
    }

    fn maybe_save(&mut self, last_save: &mut Instant) {
        if self.cursor != self.saved_cursor && last_save.elapsed() >= Duration::from_secs(1) {
            self.save();
            *last_save = Instant::now();
        }
    }

    fn save(&mut self) {
        if self.cursor == self.saved_cursor {
            return;
        }
        let cursor = Cursor {
            target: self.name.clone(),
            seq: self.cursor,
        };
        let text = serde_json::to_string(&cursor).unwrap_or_default();
        match write_atomic(&self.dir, &self.cursor_path, text.as_bytes()) {
            Ok(()) => self.saved_cursor = self.cursor,
            Err(e) => {
                tracing::warn!(path = %self.cursor_path.display(), error = %e, "cannot save syslog cursor");
            }
        }
    }
}

/// The segment (and start offset) holding `seq`: the last segment whose first event's seq is
/// at most `seq`.
fn locate(segs: &[(u32, PathBuf)], seq: u64) -> io::Result<LogPosition> {
    let mut chosen = 0;
    for (i, (_, path)) in segs.iter().enumerate().rev() {
        let mut first = Vec::new();
        BufReader::new(File::open(path)?).read_until(b'\n', &mut first)?;
        if let Some(first_seq) = ChainView::parse(first.strip_suffix(b"\n").unwrap_or(&first))
            .ok()
            .and_then(|v| v.seq)
        {
            if first_seq <= seq {
                chosen = i;
                break;
            }
        }
    }
    Ok(LogPosition {
        path: segs[chosen].1.clone(),
        index: chosen,
        offset: 0,
        seq: seq.saturating_sub(1),
    })
}

/// `d` plus up to 50% random jitter, so many gateways do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    d + d.mul_f64(f64::from(byte[0]) / 510.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_message_has_every_header_part() {
        let line = br#"{"v":1,"seq":7,"ts":"2025-03-01T08:15:02.123456Z","type":"session.denied","user":"a","gateway":"gw-1","prev":"00","hash":"abc"}"#;
        let msg = String::from_utf8(format_rfc5424(line, "postern", "fallback")).unwrap();
        assert_eq!(
            msg,
            format!(
                "<108>1 2025-03-01T08:15:02.123456Z gw-1 postern - session.denied [postern@32473 seq=\"7\" hash=\"abc\"] {}",
                std::str::from_utf8(line).unwrap()
            )
        );
        let start = br#"{"v":1,"ts":"not a time","type":"session.start"}"#;
        let msg = String::from_utf8(format_rfc5424(start, "post ern", "h")).unwrap();
        assert!(
            msg.starts_with("<109>1 - h postern - session.start [postern@32473] {"),
            "{msg}"
        );
        let mut framed = Vec::new();
        frame(b"hello", &mut framed);
        assert_eq!(framed, b"5 hello");
        assert_eq!(sd_escape(r#"a"b]c\d"#), r#"a\"b\]c\\d"#);
    }

    #[test]
    fn security_alerts_go_out_with_severity_alert() {
        // facility 13 * 8 + severity 1 = 105
        for kind in ["connector.renewal_refused", "audit.truncation_detected"] {
            let line = format!(r#"{{"v":1,"ts":"2025-03-01T08:15:02Z","type":"{kind}"}}"#);
            let msg = String::from_utf8(format_rfc5424(line.as_bytes(), "postern", "h")).unwrap();
            assert!(msg.starts_with("<105>1 "), "{kind}: {msg}");
        }
        assert_eq!(severity("connector.refused"), 4);
        assert_eq!(severity("connector.renewed"), 5);
    }
}
