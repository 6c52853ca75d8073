//! What one local listener's tunnels have done, for `postern status`: connections live and in
//! all, bytes each way, the last refusal. The application's socket is wrapped in a `Metered`
//! stream, so the counts are what the application sent and received, whichever transport and
//! however many resumptions carried them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counters of one local listener.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Connections open now.
    pub live: AtomicUsize,
    /// Connections accepted since the listener opened.
    pub total: AtomicU64,
    /// Bytes from the application towards the endpoint.
    pub up: AtomicU64,
    /// Bytes from the endpoint to the application.
    pub down: AtomicU64,
    /// Why the last connection was refused or ended by the gateway, if one was.
    last_error: Mutex<Option<String>>,
}

impl TunnelStats {
    pub fn set_error(&self, e: impl Into<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.into());
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn clear_error(&self) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = None;
        }
    }
}

/// Counts a live connection until dropped.
pub(crate) struct LiveGuard(Arc<TunnelStats>);

impl LiveGuard {
    pub(crate) fn new(stats: Arc<TunnelStats>) -> LiveGuard {
        stats.live.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        LiveGuard(stats)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The application's side of a tunnel, counting bytes into [`TunnelStats`].
pub(crate) struct Metered<S> {
    inner: S,
    stats: Arc<TunnelStats>,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, stats: Arc<TunnelStats>) -> Metered<S> {
        Metered { inner, stats }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.stats.up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.stats.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_what_the_application_sends_and_receives() {
        let stats = Arc::new(TunnelStats::default());
        let (app, local) = tokio::io::duplex(1024);
        let mut m = Metered::new(local, stats.clone());
        let mut app = app;
        app.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        m.read_exact(&mut b).await.unwrap();
        m.write_all(b"world!").await.unwrap();
        let mut b = [0u8; 6];
        app.read_exact(&mut b).await.unwrap();
        assert_eq!(stats.up.load(Ordering::Relaxed), 5);
        assert_eq!(stats.down.load(Ordering::Relaxed), 6);
        {
            let _g = LiveGuard::new(stats.clone());
            assert_eq!(stats.live.load(Ordering::Relaxed), 1);
        }
        assert_eq!(stats.live.load(Ordering::Relaxed), 0);
        assert_eq!(stats.total.load(Ordering::Relaxed), 1);
    }
}
