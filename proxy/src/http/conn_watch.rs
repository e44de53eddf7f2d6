//! What a connection is doing, for the deadlines hyper does not enforce on
//! its own: the first request head must arrive within
//! `server.header_read_timeout` of accept whatever the protocol (hyper's
//! HTTP/2 side, and the auto builder's protocol sniffing, wait forever), and
//! a connection with no request in flight for `server.idle_timeout` is closed.
//! A request counts as in flight from its head until its response body is
//! finished (or dropped), so a long download or event stream is never idle.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::body::{Body, BoxError};

#[derive(Clone, Copy, Debug)]
struct Load {
    in_flight: usize,
    seen_request: bool,
    idle_since: Instant,
}

/// Why the watchdog wants a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within the head deadline from accept.
    Head,
    /// Nothing in flight for the idle timeout.
    Idle,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Head => "head",
            Expired::Idle => "idle",
        }
    }
}

/// Shared by the connection's service (which marks requests) and its
/// watchdog (which waits for a deadline).
#[derive(Clone)]
pub struct ConnWatch {
    tx: watch::Sender<Load>,
}

impl ConnWatch {
    pub fn new() -> ConnWatch {
        let (tx, _) = watch::channel(Load {
            in_flight: 0,
            seen_request: false,
            idle_since: Instant::now(),
        });
        ConnWatch { tx }
    }

    /// A request head arrived; the guard ends the request when dropped.
    pub fn begin(&self) -> InFlight {
        self.tx.send_modify(|l| {
            l.in_flight += 1;
            l.seen_request = true;
        });
        InFlight {
            tx: self.tx.clone(),
        }
    }

    /// Resolves when a deadline passes: the head deadline (from `accepted`)
    /// until the first request, then the idle deadline whenever nothing is
    /// in flight. Never resolves while a request is in flight.
    pub async fn expired(&self, accepted: Instant, head: Duration, idle: Duration) -> Expired {
        let mut rx = self.tx.subscribe();
        loop {
            let load = *rx.borrow_and_update();
            let deadline = if !load.seen_request {
                Some((accepted + head, Expired::Head))
            } else if load.in_flight == 0 {
                Some((load.idle_since + idle, Expired::Idle))
            } else {
                None
            };
            match deadline {
                Some((at, why)) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => return why,
                    _ = rx.changed() => {}
                },
                // The sender lives in `self`, so `changed` cannot fail here.
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }
}

impl Default for ConnWatch {
    fn default() -> Self {
        ConnWatch::new()
    }
}

/// One request in flight on a connection.
pub struct InFlight {
    tx: watch::Sender<Load>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tx.send_modify(|l| {
            l.in_flight -= 1;
            if l.in_flight == 0 {
                l.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request in flight until it is done.
pub struct Tracked {
    inner: Body,
    guard: Option<InFlight>,
}

impl Tracked {
    pub fn new(inner: Body, guard: InFlight) -> Tracked {
        Tracked {
            inner,
            guard: Some(guard),
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_at_the_head_deadline() {
        let w = ConnWatch::new();
        let accepted = Instant::now();
        assert_eq!(w.expired(accepted, HEAD, IDLE).await, Expired::Head);
        assert!(Instant::now() >= accepted + HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let w = ConnWatch::new();
        let accepted = Instant::now();
        let req = w.begin();
        let watchdog = tokio::spawn({
            let w = w.clone();
            async move { w.expired(accepted, HEAD, IDLE).await }
        });
        // In flight far past both deadlines: nothing expires.
        tokio::time::sleep(IDLE * 3).await;
        assert!(!watchdog.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(watchdog.await.expect("watchdog"), Expired::Idle);
        assert!(Instant::now() >= ended + IDLE);
    }
}
