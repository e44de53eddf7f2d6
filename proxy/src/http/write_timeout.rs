//! A client connection whose writes may not stay blocked: a client that
//! stops reading its response (or a peer that vanished without a FIN) would
//! otherwise hold a connection slot, its buffers and a task for good.
//! A write that makes no progress for `server.write_timeout` fails with
//! `TimedOut`, which ends the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::stall::StallTimer;

pub struct WriteTimeout<I> {
    inner: I,
    /// Runs while a write is blocked; reset by any progress.
    stall: StallTimer,
    /// Set when the limit tripped, for the caller's count.
    tripped: Arc<AtomicBool>,
}

impl<I> WriteTimeout<I> {
    pub fn new(inner: I, limit: Duration, tripped: Arc<AtomicBool>) -> WriteTimeout<I> {
        WriteTimeout {
            inner,
            stall: StallTimer::new(limit),
            tripped,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Turns a blocked write into an error once it has been blocked too long.
    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stall.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.stall.stalled_too_long(cx) {
                    self.tripped.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read its response within server.write_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A peer that never reads: the writer fills the pipe, then the paused
    /// clock runs past the limit and the blocked write fails.
    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_limit_fails() {
        let (a, _b) = tokio::io::duplex(1024);
        let tripped = Arc::new(AtomicBool::new(false));
        let mut w = WriteTimeout::new(a, Duration::from_secs(5), tripped.clone());
        let chunk = vec![0u8; 4096];
        let err = loop {
            if let Err(e) = w.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(tripped.load(Ordering::Relaxed));
    }

    /// A slow reader that keeps making progress is never cut off.
    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_timer() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(64);
        let tripped = Arc::new(AtomicBool::new(false));
        let mut w = WriteTimeout::new(a, Duration::from_secs(5), tripped.clone());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 64 * 20 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                got += b.read(&mut buf).await.expect("read");
            }
            got
        });
        w.write_all(&[1u8; 64 * 20]).await.expect("slow but steady");
        assert_eq!(reader.await.expect("reader"), 64 * 20);
        assert!(!tripped.load(Ordering::Relaxed));
    }
}
