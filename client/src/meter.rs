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
    /// Ask the gateway for notices after each connection: set for DICOM endpoints, where the
    /// connector may refuse an association for a reason the clinician's viewer cannot show.
    pub ask_notices: std::sync::atomic::AtomicBool,
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

/// Where a [`Metered`] stream counts its bytes.
pub(crate) trait Tally {
    /// `n` bytes were read from the stream.
    fn read(&self, n: usize);
    /// `n` bytes were written to it.
    fn written(&self, n: usize);
}

/// The application's side of a tunnel: read is towards the endpoint, written is from it.
impl Tally for TunnelStats {
    fn read(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn written(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Bytes read only (the stall watcher's "heard from the gateway").
impl Tally for AtomicU64 {
    fn read(&self, n: usize) {
        self.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn written(&self, _: usize) {}
}

/// A stream that counts the bytes read from and written to it into `T`.
pub(crate) struct Metered<S, T> {
    inner: S,
    tally: Arc<T>,
}

impl<S, T> Metered<S, T> {
    pub(crate) fn new(inner: S, tally: Arc<T>) -> Metered<S, T> {
        Metered { inner, tally }
    }
}

impl<S: AsyncRead + Unpin, T: Tally> AsyncRead for Metered<S, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.tally.read(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, T: Tally> AsyncWrite for Metered<S, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.tally.written(*n);
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
