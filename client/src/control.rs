//! How `postern status`, `down`, `rdp` and `login` talk to the running `postern up` agent:
//! one JSON line each way over a loopback TCP connection (the same on Linux, macOS and
//! Windows). The agent writes its port and a random 256-bit secret to `agent.json` in the
//! config directory (mode 0600); a request must carry the secret (compared in constant
//! time), so another user on the same computer, who cannot read the file, cannot drive it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::ClientError;

/// Longest request or answer line.
pub const MAX_LINE: usize = 256 * 1024;
/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `agent.json`: where the running agent listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentFile {
    pub pid: u32,
    pub port: u16,
    /// Never logged.
    pub secret: String,
}

pub fn agent_file(config_dir: &Path) -> PathBuf {
    config_dir.join("agent.json")
}

/// The agent's log file (what it would have printed).
pub fn log_file(config_dir: &Path) -> PathBuf {
    config_dir.join("agent.log")
}

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    /// Everything `postern status` shows.
    Status,
    /// Close every tunnel and exit.
    Down,
    /// The token file changed (`postern login` ran): take the new sign-in and renew the live
    /// sessions onto it.
    Token,
    /// Make sure `endpoint` has a local listener (`postern rdp`); answers its address.
    Open { endpoint: String },
}

/// A request line: the secret and the command.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub secret: String,
    #[serde(flatten)]
    pub command: Command,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "answer")]
pub enum Answer {
    Status(Box<AgentStatus>),
    Ok { message: String },
    Opened { local: SocketAddr },
    Error { message: String },
}

/// What `postern status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    pub pid: u32,
    pub gateway: String,
    pub user: Option<String>,
    /// When the sign-in expires (seconds since the epoch).
    pub expires_at: Option<u64>,
    /// The sign-in's state in a sentence ("signed in until 18:00", "renewing: …").
    pub signin: String,
    /// While a renewal waits for the browser: the URL to open, and the code it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_code: Option<String>,
    pub tunnels: Vec<TunnelStatus>,
    /// The latest lines told to the clinician, with their local times.
    pub notices: Vec<String>,
}

/// One tunnel in `postern status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelStatus {
    pub endpoint: String,
    pub protocol: Option<String>,
    /// `127.0.0.1:PORT`, when listening.
    pub local: Option<String>,
    /// `listening`, `opens later`, `needs a reason`, `failed`, `signed out`.
    pub state: String,
    /// Why, when it is not simply listening.
    pub detail: Option<String>,
    pub live: usize,
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// When access ends (the sign-in's expiry, or a time window closing), seconds since the
    /// epoch.
    pub ends_at: Option<u64>,
}

/// The running agent's file, if there is one.
pub fn read_agent_file(config_dir: &Path) -> Option<AgentFile> {
    let bytes = std::fs::read(agent_file(config_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Sends `command` to the agent of `config_dir`: `Ok(None)` when no agent runs (no file, or
/// nothing answers at its port: a stale file from an agent that crashed).
pub async fn send(config_dir: &Path, command: Command) -> Result<Option<Answer>, ClientError> {
    let Some(f) = read_agent_file(config_dir) else {
        return Ok(None);
    };
    let exchange = async {
        let mut s = match TcpStream::connect(("127.0.0.1", f.port)).await {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        let mut line = serde_json::to_vec(&Request {
            secret: f.secret.clone(),
            command,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line)
            .await
            .map_err(|e| ClientError::Protocol(format!("talking to postern up: {e}")))?;
        let answer = read_line(&mut BufReader::new(s))
            .await
            .map_err(|e| ClientError::Protocol(format!("talking to postern up: {e}")))?;
        match answer {
            Some(a) => serde_json::from_str(&a)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("postern up answered: {e}"))),
            None => Ok(None),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Protocol("postern up did not answer within 10 s".into()))?
}

/// One line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"));
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_command_beside_the_secret() {
        let r = Request {
            secret: "s".into(),
            command: Command::Open {
                endpoint: "pacs".into(),
            },
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"secret":"s","cmd":"open","endpoint":"pacs"}"#);
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back.command, r.command);
        assert!(serde_json::from_str::<Request>(r#"{"secret":"s","cmd":"format-disk"}"#).is_err());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut r = BufReader::new(&b"one\ntwo"[..]);
        assert_eq!(read_line(&mut r).await.unwrap().as_deref(), Some("one"));
        assert_eq!(read_line(&mut r).await.unwrap().as_deref(), Some("two"));
        assert_eq!(read_line(&mut r).await.unwrap(), None);
        let long = vec![b'x'; MAX_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(read_line(&mut r).await.is_err());
    }
}
