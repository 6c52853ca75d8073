//! Relays bytes between two streams, both directions at once.
//!
//! Each direction starts with a small buffer and grows it to [`MAX_BUF`] the first time a read
//! fills it: an idle tunnel costs 2 × [`MIN_BUF`] bytes, a bulk transfer gets large reads.
//! A clean end-of-stream on one side is passed on as a write shutdown (TCP half-close) and the
//! other direction keeps flowing until it ends too. Byte counts are published as they move, so
//! a caller that stops the relay early (deadline, revocation) still knows what crossed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Initial buffer per direction.
pub const MIN_BUF: usize = 4 * 1024;
/// Largest buffer per direction.
pub const MAX_BUF: usize = 64 * 1024;

/// Bytes moved so far, readable while the relay runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// From side `a` to side `b`.
    pub a_to_b: AtomicU64,
    /// From side `b` to side `a`.
    pub b_to_a: AtomicU64,
}

impl Counters {
    pub fn a_to_b(&self) -> u64 {
        self.a_to_b.load(Ordering::Relaxed)
    }
    pub fn b_to_a(&self) -> u64 {
        self.b_to_a.load(Ordering::Relaxed)
    }
}

/// Which side ended the relay first, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Side `a` closed its sending direction cleanly first.
    AClosed,
    /// Side `b` closed its sending direction cleanly first.
    BClosed,
    /// A read or write failed on side `a`.
    AError,
    /// A read or write failed on side `b`.
    BError,
}

enum Dir {
    Eof,
    ReadErr,
    WriteErr,
}

/// Which side's end of input was seen first: 0 none yet, 1 side `a`, 2 side `b`.
type FirstEof = std::sync::atomic::AtomicU8;

async fn pump<R, W>(mut r: R, mut w: W, counter: &AtomicU64, first: &FirstEof, me: u8) -> Dir
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MIN_BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                // Noted before passing the close on: the other side's answer to it (its own
                // close) may otherwise finish first and be taken for who closed.
                let _ = first.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed);
                let _ = w.shutdown().await;
                return Dir::Eof;
            }
            Ok(n) => n,
            Err(_) => {
                let _ = w.shutdown().await;
                return Dir::ReadErr;
            }
        };
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return Dir::WriteErr;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize(MAX_BUF, 0);
        }
    }
}

/// Relays until both directions have ended (or one failed). Returns who ended it first.
pub async fn relay<A, B>(a: A, b: B, counters: Arc<Counters>) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let first = FirstEof::new(0);
    let up = pump(ar, bw, &counters.a_to_b, &first, 1);
    let down = pump(br, aw, &counters.b_to_a, &first, 2);
    tokio::pin!(up, down);
    // The first direction to finish decides the reason; on an error the other direction is
    // abandoned, on a clean close it is allowed to finish (half-close).
    tokio::select! {
        d = &mut up => match d {
            Dir::Eof => {
                let _ = down.await;
                if first.load(Ordering::Relaxed) == 2 { Ended::BClosed } else { Ended::AClosed }
            }
            Dir::ReadErr => Ended::AError,
            Dir::WriteErr => Ended::BError,
        },
        d = &mut down => match d {
            Dir::Eof => {
                let _ = up.await;
                if first.load(Ordering::Relaxed) == 1 { Ended::AClosed } else { Ended::BClosed }
            }
            Dir::ReadErr => Ended::BError,
            Dir::WriteErr => Ended::AError,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (client, relay_a) = tokio::io::duplex(1024);
        let (relay_b, server) = tokio::io::duplex(1024);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(relay(relay_a, relay_b, counters.clone()));

        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let big = vec![7u8; 200_000];
        let send = big.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&send).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        writer.await.unwrap();
        // Server answers after the client half-closed.
        sw.write_all(b"done").await.unwrap();
        sw.shutdown().await.unwrap();
        let mut answer = Vec::new();
        cr.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"done");
        assert_eq!(task.await.unwrap(), Ended::AClosed);
        assert_eq!(counters.a_to_b(), 200_000);
        assert_eq!(counters.b_to_a(), 4);
    }
}
