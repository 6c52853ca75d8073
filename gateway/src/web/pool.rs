//! A session's connections to its application: the HTTP/2 one (shared by every request), or
//! up to [`MAX_POOLED`] HTTP/1.1 ones, each closed once unused for [`POOL_IDLE`].

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::WebBody;

/// Most idle HTTP/1.1 connections one session keeps to its application.
pub const MAX_POOLED: usize = 16;

/// A connection to the application.
pub enum Sender {
    H1(http1::SendRequest<WebBody>),
    H2(http2::SendRequest<WebBody>),
}

/// A session's connections to its application, each with when it was last handed out.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// How long a pooled connection may go unused before it is closed (the hospital's server
/// and the connector stream behind it are released, not held for the whole session).
pub const POOL_IDLE: Duration = Duration::from_secs(90);

fn closed(s: &Sender) -> bool {
    match s {
        Sender::H1(s) => s.is_closed(),
        Sender::H2(s) => s.is_closed(),
    }
}

impl Pool {
    /// A connection ready for a request: the HTTP/2 one, or an idle HTTP/1.1 one.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        idle.retain(|(s, _)| !closed(s));
        if let Some((Sender::H2(s), used)) =
            idle.iter_mut().find(|(s, _)| matches!(s, Sender::H2(_)))
        {
            *used = now;
            return Some(Sender::H2(s.clone()));
        }
        let i = idle
            .iter()
            .position(|(s, _)| matches!(s, Sender::H1(s) if s.is_ready()))?;
        Some(idle.swap_remove(i).0)
    }

    /// Keeps a connection for later requests (an HTTP/1.1 one becomes ready again once its
    /// response body is read).
    pub fn put(&self, s: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            match &s {
                Sender::H2(_) if idle.iter().any(|(s, _)| matches!(s, Sender::H2(_))) => {}
                Sender::H1(_) if idle.len() >= MAX_POOLED => {}
                _ => idle.push((s, Instant::now())),
            }
        }
    }

    /// Closes the connections unused for [`POOL_IDLE`]; returns how many are left.
    pub fn expire(&self) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let now = Instant::now();
        idle.retain(|(s, used)| !closed(s) && now.duration_since(*used) < POOL_IDLE);
        idle.len()
    }

    /// Drops every connection (the session ended).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Response;
    use hyper_util::rt::TokioIo;

    /// A pooled connection to a live HTTP/1.1 server over an in-memory pipe.
    async fn pooled_h1() -> Sender {
        let (client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (send, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(send)
    }

    #[tokio::test(start_paused = true)]
    async fn pooled_connections_unused_for_a_while_are_closed() {
        let pool = Pool::default();
        pool.put(pooled_h1().await);
        pool.put(pooled_h1().await);
        tokio::time::advance(POOL_IDLE - Duration::from_secs(1)).await;
        assert_eq!(pool.expire(), 2, "still within POOL_IDLE");
        // One is used again: its clock starts over.
        let again = pool.take().expect("a ready connection");
        pool.put(again);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(pool.expire(), 1, "the unused one is closed");
        pool.clear();
        assert_eq!(pool.expire(), 0);
    }
}
