//! [`BoxIo`]: an owned byte stream — a client's tunnel, or the stream to an endpoint through
//! a connector — as the broker, the upstream and the endpoint handlers pass it around.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An owned byte stream.
pub type BoxIo = Box<dyn Io>;

/// The open streams of one client connection: requests being answered and the tunnels they
/// opened. The client listener closes a connection (GOAWAY) once it has had none for
/// `client_idle_timeout`.
#[derive(Debug)]
pub struct OpenStreams {
    count: tokio::sync::watch::Sender<usize>,
}

impl OpenStreams {
    pub fn new() -> std::sync::Arc<OpenStreams> {
        std::sync::Arc::new(OpenStreams {
            count: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Counts one more open stream until the returned guard (and all its clones) is dropped.
    pub fn open(self: &std::sync::Arc<Self>) -> StreamGuard {
        self.count.send_modify(|n| *n += 1);
        StreamGuard {
            _held: std::sync::Arc::new(GuardInner(self.clone())),
        }
    }

    /// Resolves once no stream has been open for `limit` (never, while one stays open).
    pub async fn idle_for(&self, limit: std::time::Duration) {
        let mut rx = self.count.subscribe();
        loop {
            // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
            let _ = rx.wait_for(|n| *n == 0).await;
            match tokio::time::timeout(limit, rx.wait_for(|n| *n > 0)).await {
                Err(_) => return,
                Ok(_) => continue,
            }
        }
    }
}

/// One open stream of a client connection (see [`OpenStreams`]). The client listener puts a
/// clone into every request's extensions; the broker keeps it for as long as the tunnel lives.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    /// Held, never read: dropping the last clone closes the stream.
    _held: std::sync::Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner(std::sync::Arc<OpenStreams>);

/// A stream that keeps its client connection's [`StreamGuard`] for as long as it lives (a
/// resumed tunnel's new stream, which outlives the request that brought it).
pub struct Guarded<T> {
    io: T,
    _guard: Option<StreamGuard>,
}

impl<T> Guarded<T> {
    pub fn new(io: T, guard: Option<StreamGuard>) -> Guarded<T> {
        Guarded { io, _guard: guard }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for GuardInner {
    fn drop(&mut self) {
        self.0.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_stream_closed_for_the_limit() {
        let streams = OpenStreams::new();
        let limit = Duration::from_secs(60);
        let a = streams.open();
        let a2 = a.clone();
        let b = streams.open();
        let idle = streams.idle_for(limit);
        tokio::pin!(idle);
        // Open streams: never idle, however long.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), idle.as_mut())
                .await
                .is_err()
        );
        drop(a);
        drop(b);
        // A clone of `a` still holds its stream open.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), idle.as_mut())
                .await
                .is_err()
        );
        drop(a2);
        // A new stream within the limit restarts the clock.
        tokio::time::sleep(Duration::from_secs(50)).await;
        let c = streams.open();
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(c);
        let t = tokio::time::Instant::now();
        idle.as_mut().await;
        let waited = t.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(1),
            "{waited:?}"
        );
    }
}
