//! Streamed bodies through the proxy, never buffered whole: the browser's request body on its
//! way up (counted, bounded in size, cut when it stalls) and the application's response body
//! on its way down (counted; when it ends or is dropped, the request is recorded).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use postern_net::relay::Counters;

use super::BoxError;

/// Why a request body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("the request body stalled for {0:?}")]
    Stalled(Duration),
}

/// The browser's request body, as the application receives it.
pub struct Up<B> {
    inner: B,
    counters: Arc<Counters>,
    sent: Arc<AtomicU64>,
    limit: u64,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Up<B> {
    pub fn new(
        inner: B,
        counters: Arc<Counters>,
        sent: Arc<AtomicU64>,
        limit: u64,
        idle: Duration,
    ) -> Up<B> {
        Up {
            inner,
            counters,
            sent,
            limit,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Body for Up<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let total = this.sent.fetch_add(n, Ordering::Relaxed) + n;
                    this.counters.a_to_b.fetch_add(n, Ordering::Relaxed);
                    if total > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge(this.limit)))));
                    }
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyError::Stalled(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The application's response body, as the browser receives it. `on_end` runs once, when
/// the body ends or is dropped (the browser went away): it records the request.
pub struct Down<B> {
    inner: B,
    counters: Arc<Counters>,
    received: Arc<AtomicU64>,
    on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<B> Down<B> {
    pub fn new(
        inner: B,
        counters: Arc<Counters>,
        received: Arc<AtomicU64>,
        on_end: Box<dyn FnOnce() + Send + Sync>,
    ) -> Down<B> {
        Down {
            inner,
            counters,
            received,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl<B> Drop for Down<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for Down<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.received.fetch_add(n, Ordering::Relaxed);
                    this.counters.b_to_a.fetch_add(n, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
