//! A request body on its way to an upstream, watched: the upstream's
//! `timeout` runs from the moment the body is fully sent (a large upload on
//! a slow link is not the upstream being slow), and a body that pauses for
//! longer than `server.body_read_timeout` between chunks is cut off with 408
//! instead of holding the client and the upstream connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::http::body::{Body, BoxError};
use crate::http::stall::StallTimer;

/// How the body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadEnd {
    /// Sent in full (or never needed: an empty body).
    Complete,
    /// Paused longer than the idle limit; the upload was abandoned.
    Stalled,
    /// The client's body broke off, or the upstream stopped reading it.
    Failed,
}

/// The error the watched body yields when it stalls.
#[derive(Debug, thiserror::Error)]
#[error("the request body paused for longer than server.body_read_timeout ({})", humantime::format_duration(*.0))]
pub struct UploadStalled(pub Duration);

/// Wraps `body`; the future resolves when the body has ended, however.
pub fn watch(body: Body, idle: Duration) -> (Body, Uploaded) {
    let (tx, rx) = oneshot::channel();
    if body.is_end_stream() {
        // hyper never polls a body that is already at its end.
        let _ = tx.send(UploadEnd::Complete);
        return (body, Uploaded(rx));
    }
    let watched = Watched {
        inner: body,
        stall: StallTimer::new(idle),
        done: Some(tx),
    };
    (watched.boxed_unsync(), Uploaded(rx))
}

struct Watched {
    inner: Body,
    /// Runs while the body has nothing to give; reset by every frame.
    stall: StallTimer,
    done: Option<oneshot::Sender<UploadEnd>>,
}

impl Watched {
    fn finish(&mut self, end: UploadEnd) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(end);
        }
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finish(UploadEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(UploadEnd::Failed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if self.stall.stalled_too_long(cx) {
                    self.finish(UploadEnd::Stalled);
                    let idle = self.stall.limit();
                    return Poll::Ready(Some(Err(Box::new(UploadStalled(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Dropped unfinished: the upstream answered (or failed) without
        // reading it all.
        self.finish(UploadEnd::Failed);
    }
}

/// Resolves with how the watched body ended.
pub struct Uploaded(oneshot::Receiver<UploadEnd>);

impl Future for Uploaded {
    type Output = UploadEnd;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<UploadEnd> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(UploadEnd::Failed))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;
    use crate::http::body;

    #[tokio::test(start_paused = true)]
    async fn an_empty_body_is_uploaded_at_once() {
        let (_b, done) = watch(body::empty(), Duration::from_secs(1));
        assert_eq!(done.await, UploadEnd::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_pauses_too_long_stalls() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream_from(rx);
        let (mut b, done) = watch(
            StreamBody::new(stream).boxed_unsync(),
            Duration::from_secs(5),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        assert!(b.frame().await.expect("frame").is_ok());
        // Nothing more arrives: the paused clock runs to the limit.
        let err = b
            .frame()
            .await
            .expect("an error frame")
            .expect_err("stalled");
        assert!(err.downcast_ref::<UploadStalled>().is_some());
        assert_eq!(done.await, UploadEnd::Stalled);
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
