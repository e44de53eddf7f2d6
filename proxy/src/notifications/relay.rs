//! New posts across the fleet (README "Notifications"): with `[backplane]`
//! on, a post that enters on one instance (its admin route, or the
//! `new-posts` change stream it watches) is enriched there once, sent to
//! that instance's subscribers at once, and appended to a Redis Stream,
//! `CHANNEL:posts`, already enriched. Every other instance reads the stream
//! and hands each post to its own subscribers; an instance skips the posts
//! it wrote itself. So each subscriber in the fleet gets each post once,
//! and no instance enriches it again.
//!
//! The stream keeps about `notifications.replay` posts (`MAXLEN ~`): an
//! instance whose connection dropped reads on from the last post it saw
//! when it comes back, as far as the stream still holds it. A reader starts
//! at the stream's end: posts from before it started were never its
//! subscribers' to miss.
//!
//! Delivery is at least once per instance across a publisher retry (a
//! write that timed out may have landed), exactly once otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::backplane::gap::StreamId;
use crate::backplane::reply::{entries_of, observe, Fields};
use crate::backplane::subscriber::{connect_reader, BLOCK};
use crate::config::BackplaneSettings;
use crate::lifecycle::{Drain, Tasks};
use crate::metrics::Metrics;
use crate::redis_link::{Link, LinkError, Target};
use crate::state::State;
use crate::tier::now_ms;

/// The entry format this build writes and reads.
const FORMAT: &str = "post-1";
/// Posts waiting to be appended; past it a post stays on its own instance
/// (counted as `sent/dropped`).
const QUEUE: usize = 10_000;
/// Most posts per pipeline.
const BATCH: usize = 256;
/// Posts per read.
const COUNT: usize = 256;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a relay is started with; a reload that changes it starts another.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayKey {
    pub settings: BackplaneSettings,
    /// Posts the stream keeps (`notifications.replay`).
    pub keep: usize,
}

/// One post for the rest of the fleet: its author (for follower matching
/// there) and the event data, enriched here.
pub struct Outgoing {
    pub author: String,
    pub data: String,
}

#[derive(Default)]
struct Stats {
    connected: AtomicBool,
    sent: AtomicU64,
    send_failures: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    own: AtomicU64,
    malformed: AtomicU64,
    last_received_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_error(&self, why: String) {
        *self.last_error() = Some(why);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct Relay {
    key: RelayKey,
    queue: mpsc::Sender<Outgoing>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    scope: Tasks,
}

impl Relay {
    /// Starts the writer and the reader under a scope of `tasks`; connects
    /// lazily (Redis may be down now).
    pub fn start(
        key: RelayKey,
        instance: Arc<str>,
        state: Weak<State>,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<Relay, LinkError> {
        let s = &key.settings;
        let target = Target::open(&s.endpoint)?;
        let conn = target.shared(
            s.connect_timeout,
            s.connect_timeout.max(Duration::from_secs(1)),
        )?;
        let stream = format!("{}:posts", s.channel);
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let scope = tasks.scope();
        let writer = Writer {
            conn,
            stream: stream.clone(),
            keep: key.keep,
            from: instance.clone(),
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        scope.spawn("notifications-relay-writer", move |drain| {
            writer.run(rx, drain)
        });
        let reader = Reader {
            target,
            connect_timeout: s.connect_timeout,
            stream,
            instance,
            state,
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        scope.spawn("notifications-relay-reader", move |drain| reader.run(drain));
        Ok(Relay {
            key,
            queue: tx,
            stats,
            metrics,
            scope,
        })
    }

    pub fn key(&self) -> &RelayKey {
        &self.key
    }

    /// Queues a post for the other instances; never waits on Redis.
    pub fn send(&self, post: Outgoing) {
        if self.queue.try_send(post).is_err() {
            let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics
                .notifications_relayed
                .with_label_values(&["sent", "dropped"])
                .inc();
            // The first drop, then one line per thousand.
            if dropped % 1000 == 1 {
                tracing::warn!(queued = QUEUE, dropped,
                    "notification relay queue is full; posts reach this instance's subscribers only");
            }
        }
    }

    pub fn stop(&self) {
        self.scope.stop();
    }

    /// Whether the reader is connected and reading (tests and stats).
    pub fn connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> Value {
        let s = &self.stats;
        let last = s.last_received_ms.load(Ordering::Relaxed);
        json!({
            "enabled": true,
            "connected": self.connected(),
            "stream": format!("{}:posts", self.key.settings.channel),
            "sent": s.sent.load(Ordering::Relaxed),
            "send_failures": s.send_failures.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "unsent": QUEUE - self.queue.capacity(),
            "received": s.received.load(Ordering::Relaxed),
            "own": s.own.load(Ordering::Relaxed),
            "malformed": s.malformed.load(Ordering::Relaxed),
            "last_received_ms_ago": (last > 0).then(|| now_ms().saturating_sub(last)),
            "last_error": s.last_error().clone(),
        })
    }
}

/// Appends queued posts, a pipeline of `XADD`s per batch; a batch that
/// fails is kept and retried with backoff, and one last try is made at
/// shutdown.
struct Writer {
    conn: Link,
    stream: String,
    keep: usize,
    from: Arc<str>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, drain: Drain) {
        let mut batch: Vec<Outgoing> = Vec::new();
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        loop {
            if batch.is_empty() {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(p) => batch.push(p),
                        None => return,
                    },
                    _ = drain.wait() => {}
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if drain.is_draining() {
                // One last try for what is queued, then go.
                if !batch.is_empty() {
                    self.append(&batch).await.ok();
                }
                return;
            }
            match self.append(&batch).await {
                Ok(()) => {
                    batch.clear();
                    backoff = BACKOFF_MIN;
                    if failing {
                        tracing::info!("notification relay writing again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, queued = batch.len(),
                            "notification relay cannot write; posts are kept and retried");
                        failing = true;
                    }
                    self.stats.set_error(e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = drain.wait() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn append(&mut self, batch: &[Outgoing]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let at = now_ms().saturating_mul(1000).to_string();
        for p in batch {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.keep)
                .arg("*")
                .arg("pe")
                .arg(FORMAT)
                .arg("from")
                .arg(&*self.from)
                .arg("author")
                .arg(&p.author)
                .arg("data")
                .arg(&p.data)
                .arg("at")
                .arg(&at)
                .ignore();
        }
        let sent = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut self.conn)).await;
        let counted = |outcome: &str, n: usize| {
            self.metrics
                .notifications_relayed
                .with_label_values(&["sent", outcome])
                .inc_by(n as u64);
        };
        match sent {
            Ok(Ok(())) => {
                self.stats
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                counted("ok", batch.len());
                Ok(())
            }
            failed => {
                bump(&self.stats.send_failures);
                counted("failed", batch.len());
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {CALL_TIMEOUT:?}"),
                })
            }
        }
    }
}

/// Reads the stream with blocking `XREAD`s on a connection of its own
/// (`pe-posts:INSTANCE` in `CLIENT LIST`) and delivers other instances'
/// posts here, in order.
struct Reader {
    target: Target,
    connect_timeout: Duration,
    stream: String,
    instance: Arc<str>,
    state: Weak<State>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
}

enum End {
    Drained,
    Lost(String),
}

/// A post read from the stream.
#[derive(Debug, PartialEq, Eq)]
struct Relayed {
    from: String,
    author: String,
    data: String,
}

impl Reader {
    async fn run(self, drain: Drain) {
        let mut position: Option<StreamId> = None;
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        loop {
            match self.session(&mut position, &drain).await {
                End::Drained => break,
                End::Lost(why) => {
                    if self.stats.connected.swap(false, Ordering::Relaxed) {
                        backoff = BACKOFF_MIN;
                        warned = false;
                    }
                    if !warned {
                        tracing::warn!(error = %why,
                            "notification relay cannot read; posts of other instances wait until it reconnects");
                        warned = true;
                    }
                    self.stats.set_error(why);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = drain.wait() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.stats.connected.store(false, Ordering::Relaxed);
    }

    async fn session(&self, position: &mut Option<StreamId>, drain: &Drain) -> End {
        let name = format!("pe-posts:{}", self.instance);
        let mut conn =
            match connect_reader(&self.target, self.connect_timeout, &name, &self.stream).await {
                Ok(c) => c,
                Err(e) => return End::Lost(e),
            };
        let observed = match observe(&mut conn, &self.stream).await {
            Ok(o) => o,
            Err(e) => return End::Lost(e),
        };
        let end = observed
            .log
            .as_ref()
            .map_or(StreamId::ZERO, |l| l.last_generated);
        let mut last = match *position {
            // First connection: from the end.
            None => end,
            // A stream behind what this reader saw is not the one it read
            // (Redis restarted without it): read the new one from its end.
            Some(p) if end < p => end,
            Some(p) => {
                if observed
                    .log
                    .as_ref()
                    .and_then(|l| l.first)
                    .is_some_and(|f| f > p)
                {
                    tracing::info!(
                        "notification relay reconnected after the stream was trimmed; posts older than its first were missed"
                    );
                }
                p
            }
        };
        *position = Some(last);
        self.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(from = %last, "notification relay reading");
        loop {
            let read = read_after(&mut conn, &self.stream, last);
            let entries = tokio::select! {
                r = read => match r {
                    Ok(e) => e,
                    Err(e) => return End::Lost(e),
                },
                _ = drain.wait() => return End::Drained,
            };
            for (id, fields) in entries {
                if id <= last {
                    continue;
                }
                last = id;
                *position = Some(last);
                self.take(&fields).await;
            }
        }
    }

    async fn take(&self, fields: &Fields) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let counted = |outcome: &str| {
            self.metrics
                .notifications_relayed
                .with_label_values(&["received", outcome])
                .inc();
        };
        let post = match parse(fields, |id| state.profiles.ids().is_valid(id)) {
            Ok(p) => p,
            Err(why) => {
                bump(&self.stats.malformed);
                counted("malformed");
                tracing::warn!(why, "malformed relayed post ignored");
                return;
            }
        };
        if *post.from == *self.instance {
            bump(&self.stats.own);
            counted("own");
            return;
        }
        state
            .notifications
            .deliver(&state, &post.author, &post.data)
            .await;
        bump(&self.stats.received);
        self.stats
            .last_received_ms
            .store(now_ms(), Ordering::Relaxed);
        counted("delivered");
    }
}

async fn read_after(
    conn: &mut Link,
    stream: &str,
    last: StreamId,
) -> Result<Vec<(StreamId, Fields)>, String> {
    let reply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(last.to_string())
        .query_async::<redis::Value>(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(entries_of(reply))
}

/// Reads an entry; `valid_id` is the id rules in force. The data must be
/// one line of JSON (it goes into an SSE `data:` line as it is).
fn parse(fields: &Fields, valid_id: impl Fn(&str) -> bool) -> Result<Relayed, &'static str> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    if get("pe") != Some(FORMAT) {
        return Err("not a relayed post of this format");
    }
    let from = get("from").filter(|f| !f.is_empty() && f.len() <= 128);
    let author = get("author").filter(|a| valid_id(a));
    let data = get("data").filter(|d| {
        !d.contains(['\n', '\r']) && serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok()
    });
    match (from, author, data) {
        (Some(from), Some(author), Some(data)) => Ok(Relayed {
            from: from.to_string(),
            author: author.to_string(),
            data: data.to_string(),
        }),
        (None, ..) => Err("bad `from`"),
        (_, None, _) => Err("bad `author`"),
        _ => Err("bad `data`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn valid(id: &str) -> bool {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    #[test]
    fn entries_are_read_or_refused_by_field() {
        let good = [
            ("pe", FORMAT),
            ("from", "i-1"),
            ("author", "u1"),
            ("data", r#"{"type":"new-post"}"#),
            ("at", "1"),
        ];
        assert_eq!(
            parse(&fields(&good), valid),
            Ok(Relayed {
                from: "i-1".into(),
                author: "u1".into(),
                data: r#"{"type":"new-post"}"#.into(),
            })
        );
        for (field, value, why) in [
            ("pe", "1", "format"),
            ("from", "", "from"),
            ("author", "../x", "author"),
            ("data", "{\"a\":\n1}", "data"),
            ("data", "not json", "data"),
        ] {
            let bad: Vec<(&str, &str)> = good
                .iter()
                .map(|&(k, v)| if k == field { (k, value) } else { (k, v) })
                .collect();
            let got = parse(&fields(&bad), valid);
            assert!(
                matches!(got, Err(w) if w.contains(why)),
                "{field}={value:?}: {got:?}"
            );
        }
    }
}
