//! What a connection is doing, for the head and idle deadlines: the first
//! request head must arrive within `server.header_read_timeout` of accept
//! whatever the protocol (hyper's HTTP/2 side, and the auto builder's
//! protocol sniffing, wait forever); on HTTP/1 every later head must arrive
//! within it of the end of the previous request; and a connection with no
//! request in flight for `server.idle_timeout` is closed. A request counts
//! as in flight from its head until its response body is finished (or
//! dropped), so a long download or event stream is never idle.
//!
//! hyper's own HTTP/1 `header_read_timeout` would cover the later heads,
//! but it drops and re-boxes a timer for every request (about a tenth of
//! the instructions of a cached hit); here one timer per connection wakes
//! only when a deadline could have passed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::http::body::{Body, BoxError};

/// Why the watchdog wants a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within the head deadline from accept.
    Head,
    /// HTTP/1: no next request head within the head deadline of the end of
    /// the previous request (what hyper's `header_read_timeout` did; not a
    /// `head` timeout in the metrics, which counts from accept only).
    NextHead,
    /// Nothing in flight for the idle timeout.
    Idle,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Head => "head",
            Expired::NextHead => "next-head",
            Expired::Idle => "idle",
        }
    }
}

/// Shared by the connection's service (which marks requests) and its
/// watchdog (which waits for a deadline). Requests only touch atomics: the
/// watchdog is never woken by traffic, it re-reads the state when its own
/// timer fires, so a busy keep-alive connection costs two atomic updates
/// per request, not two task wake-ups.
#[derive(Clone)]
pub struct ConnWatch {
    inner: Arc<Activity>,
}

struct Activity {
    /// When the connection was accepted; the other times count from it.
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Set by the first request head.
    seen_request: AtomicBool,
    /// Set by an HTTP/1 request: later heads have a deadline too.
    http1: AtomicBool,
    /// Milliseconds from `epoch` to the end of the last request.
    idle_since_ms: AtomicU64,
}

impl ConnWatch {
    /// `accepted` is when the head deadline starts.
    pub fn new(accepted: Instant) -> ConnWatch {
        ConnWatch {
            inner: Arc::new(Activity {
                epoch: accepted,
                in_flight: AtomicUsize::new(0),
                seen_request: AtomicBool::new(false),
                http1: AtomicBool::new(false),
                idle_since_ms: AtomicU64::new(0),
            }),
        }
    }

    /// A request head arrived (on HTTP/1 or not); the guard ends the
    /// request when dropped.
    pub fn begin(&self, http1: bool) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        if http1 {
            self.inner.http1.store(true, Ordering::Release);
        }
        self.inner.seen_request.store(true, Ordering::Release);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    /// Resolves when a deadline passes: the head deadline (from accept)
    /// until the first request, then the idle deadline whenever nothing
    /// has been in flight for `idle`, and on HTTP/1 the head deadline
    /// whenever nothing has been in flight for `head`. Never resolves while
    /// a request is in flight.
    pub async fn expired(&self, head: Duration, idle: Duration) -> Expired {
        let a = &self.inner;
        loop {
            let now = Instant::now();
            // How long a connection may go without a request in flight.
            let http1 = a.http1.load(Ordering::Acquire);
            let quiet = if http1 { idle.min(head) } else { idle };
            let next = if !a.seen_request.load(Ordering::Acquire) {
                if now >= a.epoch + head {
                    return Expired::Head;
                }
                // Looks in at least once per idle period, so that a first
                // request that came and went is idle on time.
                (a.epoch + head).min(now + idle)
            } else if a.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again one quiet period from now. A request
                // that ends before then has its deadline after that look,
                // so the look after it is on time.
                now + quiet
            } else {
                let since =
                    a.epoch + Duration::from_millis(a.idle_since_ms.load(Ordering::Acquire));
                if now >= since + idle {
                    return Expired::Idle;
                }
                if http1 && now >= since + head {
                    return Expired::NextHead;
                }
                since + quiet
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One request in flight on a connection.
pub struct InFlight {
    inner: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.inner;
        // Stamped before the count drops, so a watchdog that sees zero in
        // flight also sees this request's end.
        let ms = u64::try_from(a.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
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
        let accepted = Instant::now();
        let w = ConnWatch::new(accepted);
        assert_eq!(w.expired(HEAD, IDLE).await, Expired::Head);
        assert!(Instant::now() >= accepted + HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let accepted = Instant::now();
        let w = ConnWatch::new(accepted);
        let req = w.begin(false);
        let watchdog = tokio::spawn({
            let w = w.clone();
            async move { w.expired(HEAD, IDLE).await }
        });
        // In flight far past both deadlines: nothing expires.
        tokio::time::sleep(IDLE * 3).await;
        assert!(!watchdog.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(watchdog.await.expect("watchdog"), Expired::Idle);
        assert!(Instant::now() >= ended + IDLE);
    }

    /// HTTP/1: the next head is due one head deadline after the previous
    /// request ended, however long the idle deadline; while a request is in
    /// flight nothing expires.
    #[tokio::test(start_paused = true)]
    async fn http1_later_heads_are_due_a_head_deadline_after_the_last_request() {
        let accepted = Instant::now();
        let w = ConnWatch::new(accepted);
        let req = w.begin(true);
        let watchdog = tokio::spawn({
            let w = w.clone();
            async move { w.expired(HEAD, IDLE).await }
        });
        tokio::time::sleep(HEAD * 3 + Duration::from_millis(1500)).await;
        assert!(!watchdog.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(watchdog.await.expect("watchdog"), Expired::NextHead);
        let now = Instant::now();
        assert!(now + Duration::from_millis(1) >= ended + HEAD && now < ended + HEAD * 2);
        // The same connection on HTTP/2 waits for the idle deadline.
        let w = ConnWatch::new(Instant::now());
        let ended = Instant::now();
        drop(w.begin(false));
        assert_eq!(w.expired(HEAD, IDLE).await, Expired::Idle);
        assert!(Instant::now() + Duration::from_millis(1) >= ended + IDLE);
    }

    /// An idle deadline shorter than the head deadline is still idle on
    /// HTTP/1.
    #[tokio::test(start_paused = true)]
    async fn http1_idle_shorter_than_head_is_idle() {
        let w = ConnWatch::new(Instant::now());
        drop(w.begin(true));
        assert_eq!(w.expired(HEAD, Duration::from_secs(1)).await, Expired::Idle);
    }

    /// An idle period shorter than the head deadline is enforced from the
    /// end of the first request, not from the head deadline.
    #[tokio::test(start_paused = true)]
    async fn a_short_idle_timeout_is_not_held_back_by_the_head_deadline() {
        let accepted = Instant::now();
        let w = ConnWatch::new(accepted);
        drop(w.begin(false));
        let short = Duration::from_secs(1);
        assert_eq!(w.expired(HEAD, short).await, Expired::Idle);
        assert!(
            Instant::now() < accepted + HEAD,
            "closed before the head deadline"
        );
    }
}
