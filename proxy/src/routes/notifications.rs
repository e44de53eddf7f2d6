//! `GET {notifications.path}`: the Server-Sent Events stream of new posts
//! (SPEC 9.3). Checks come first (a bad `userId` is a 400, a full house a
//! 503, both before any event); then the response streams: a `: connected`
//! comment, what the client missed since its `Last-Event-ID` (or `event:
//! resync` when that is no longer held), then live events, with a
//! heartbeat comment every `heartbeat`. A client further behind than
//! `client_queue` gets `event: resync` and continues from the newest
//! event. The stream ends when the proxy shuts down or the config turns
//! notifications off.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::http::body::{Body, BoxError};
use crate::http::error::ProxyError;
use crate::notifications::hub::Event;
use crate::notifications::Live;
use crate::state::State;

const CONNECTED: &[u8] = b": connected\n\n";
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

pub async fn handle(
    req: Request<Incoming>,
    state: &Arc<State>,
) -> Result<Response<Body>, ProxyError> {
    let live = state
        .notifications
        .live()
        .ok_or_else(|| ProxyError::NotFound("[notifications] is not configured".into()))?;
    let user = query_user(req.uri().query())
        .map(|raw| state.profiles.check_path_id("userId", raw))
        .transpose()
        .map_err(crate::routes::profile::id_error)?
        .map(|id| id.into_owned());
    if live.hub.receivers() >= live.cfg.max_streams {
        return Err(ProxyError::Unavailable(format!(
            "notifications.max_streams ({}) streams are open; try again later",
            live.cfg.max_streams
        )));
    }
    let last_seen = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ProxyError::BadRequest(
                        "header Last-Event-ID must be an event id this stream sent".into(),
                    )
                })?,
        ),
    };
    let sub = live.hub.subscribe(last_seen);
    let subscriber = Subscriber::new(state, live.clone(), user, sub.backlog, sub.resync, sub.rx);
    let body = StreamBody::new(stream::unfold(subscriber, |mut s| async move {
        let frame = s.next().await?;
        Some((Ok::<_, BoxError>(Frame::data(frame)), s))
    }))
    .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies in front (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `userId` of the query as sent, for `Profiles::check_path_id` to decode
/// and check like an id in a path; `Some("")` when present but empty.
fn query_user(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == "userId").then_some(v)
    })
}

/// One connection's position in the stream.
struct Subscriber {
    state: Arc<State>,
    live: Arc<Live>,
    user: Option<String>,
    backlog: VecDeque<Arc<Event>>,
    resync: bool,
    connected: bool,
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    heartbeat: tokio::time::Interval,
    closing: std::pin::Pin<Box<WaitForCancellationFutureOwned>>,
    /// The newest id sent, so a live event the backlog already gave is
    /// not sent twice.
    last: u64,
}

impl Subscriber {
    fn new(
        state: &Arc<State>,
        live: Arc<Live>,
        user: Option<String>,
        backlog: VecDeque<Arc<Event>>,
        resync: bool,
        rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    ) -> Subscriber {
        let every = live.cfg.heartbeat.get();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if user.is_some() {
            state
                .notifications
                .filtered()
                .fetch_add(1, Ordering::Relaxed);
        }
        state.metrics.notification_subscribers.inc();
        Subscriber {
            closing: Box::pin(state.notifications.closing().cancelled_owned()),
            state: state.clone(),
            live,
            user,
            backlog,
            resync,
            connected: false,
            rx,
            heartbeat,
            last: 0,
        }
    }

    fn resync_frame(&mut self, reason: &str) -> Bytes {
        self.state
            .metrics
            .notifications_dropped
            .with_label_values(&[reason])
            .inc();
        Bytes::from(format!(
            "event: resync\ndata: {{\"reason\":\"{reason}\"}}\n\n"
        ))
    }

    fn deliver(&mut self, e: &Event) -> Option<Bytes> {
        if e.id <= self.last || !e.concerns(self.user.as_deref()) {
            return None;
        }
        self.last = e.id;
        self.state.metrics.notifications_sent.inc();
        Some(e.frame.clone())
    }

    /// The next frame to write; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.connected {
            self.connected = true;
            return Some(Bytes::from_static(CONNECTED));
        }
        if self.resync {
            self.resync = false;
            return Some(self.resync_frame("unknown-last-event-id"));
        }
        while let Some(e) = self.backlog.pop_front() {
            if let Some(f) = self.deliver(&e) {
                return Some(f);
            }
        }
        loop {
            let current = self.state.notifications.live();
            if !current.is_some_and(|l| Arc::ptr_eq(&l, &self.live)) {
                return None; // turned off or reconfigured: reconnect
            }
            tokio::select! {
                biased;
                _ = &mut self.closing => return None,
                r = self.rx.recv() => match r {
                    Ok(e) => {
                        if let Some(f) = self.deliver(&e) {
                            return Some(f);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Continue from the newest event, not the oldest
                        // still buffered: the client resyncs anyway.
                        self.rx = self.rx.resubscribe();
                        return Some(self.resync_frame("lagged"));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT)),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.user.is_some() {
            self.state
                .notifications
                .filtered()
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.state.metrics.notification_subscribers.dec();
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::query_user;
    use crate::lookup::IdRules;

    #[test]
    fn user_id_is_read_from_the_query() {
        let ids = IdRules::new(Regex::new("^[a-z0-9-]{1,8}$").expect("regex"), 10);
        let checked =
            |q| query_user(q).map(|raw| ids.check_path("userId", raw).map(|id| id.into_owned()));
        assert!(matches!(checked(Some("userId=ab%2D1&x=2")), Some(Ok(id)) if id == "ab-1"));
        assert_eq!(query_user(Some("x=2&userId=")), Some(""));
        assert!(matches!(checked(Some("x=2&userId=")), Some(Err(_))));
        assert_eq!(query_user(Some("x=2")), None);
        assert_eq!(query_user(None), None);
    }
}
