//! One `[[change_streams]]` entry's loop: claim the stream (`lease`), open
//! it where the last batch ended, and for each batch apply its changes
//! (profile changes through the invalidation policy; new posts to the
//! notification stream), then persist the position (empty
//! batches too, so a quiet stream's position stays recent). A restart
//! resumes from the last persisted batch: nothing is missed, and at most
//! one batch is applied twice.
//!
//! When the position cannot be used (the server no longer has that
//! history, or refuses the token) or the collection goes away, a new
//! stream is opened from now first, then (for profile updates) every tier
//! is cleared on every instance: a change between the two could otherwise
//! be cached and never seen. Posts inserted in such a gap are not
//! notified; the restart is logged and counted. A server that cannot be reached is retried with backoff.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::error::{Error, ErrorKind};
use mongodb::Database;
use serde_json::{json, Value};

use super::cursor::{Batch, Cursor};
use super::event::{classify, classify_post, Change};
use super::lease::{Claim, Lease};
use crate::config::{ChangeStreamConfig, StreamKind};
use crate::invalidation::policy;
use crate::lifecycle::Drain;
use crate::metrics::Metrics;
use crate::mongo::client::{describe, LazyClient};
use crate::state::State;
use crate::tier::now_ms;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Users of one batch whose events go through the policy at once.
const APPLY_CONCURRENCY: usize = 16;
/// Budget for giving the claim up at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// Server errors that say the position is gone for good:
/// ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken.
const POSITION_LOST: [i32; 3] = [286, 280, 260];
/// Server errors that pass (elections, shutdown, time limits): the stream
/// is retried from the same position.
const TRANSIENT: [i32; 14] = [
    6, 7, 43, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11601, 11602, 13435,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Starting = 0,
    Watching = 1,
    Standby = 2,
    Retrying = 3,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Watching => "watching",
            Role::Standby => "standby",
            Role::Retrying => "retrying",
        }
    }
}

/// What `/admin/stats` shows of one stream.
#[derive(Default)]
pub struct StreamStats {
    role: AtomicU8,
    events: AtomicU64,
    users_applied: AtomicU64,
    posts_published: AtomicU64,
    bad_documents: AtomicU64,
    batches: AtomicU64,
    restarts: AtomicU64,
    errors: AtomicU64,
    saved_at_ms: AtomicU64,
    holder: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

impl StreamStats {
    fn set_role(&self, role: Role, holder: &str) {
        self.role.store(role as u8, Ordering::Relaxed);
        *lock(&self.holder) = holder.to_string();
    }

    fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Watching,
            2 => Role::Standby,
            3 => Role::Retrying,
            _ => Role::Starting,
        }
    }

    pub fn to_json(&self, name: &str) -> Value {
        let role = self.role();
        let saved = self.saved_at_ms.load(Ordering::Relaxed);
        json!({
            "name": name,
            "role": role.as_str(),
            "watcher": lock(&self.holder).clone(),
            "events": self.events.load(Ordering::Relaxed),
            "users_applied": self.users_applied.load(Ordering::Relaxed),
            "posts_published": self.posts_published.load(Ordering::Relaxed),
            "bad_documents": self.bad_documents.load(Ordering::Relaxed),
            "batches": self.batches.load(Ordering::Relaxed),
            "restarts": self.restarts.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "position_saved_ms_ago": (saved > 0).then(|| now_ms().saturating_sub(saved)),
            "last_error": lock(&self.last_error).clone(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{}", describe(.0))]
    Mongo(#[from] Error),
}

/// How a session ended.
enum End {
    Drained,
    /// Another instance watches (or took the claim over).
    Standby,
}

pub struct Watcher {
    pub cfg: ChangeStreamConfig,
    pub uri: String,
    pub instance: String,
    pub state: Weak<State>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<StreamStats>,
}

impl Watcher {
    pub async fn run(self, drain: Drain) {
        let client = LazyClient::new(&self.uri, self.cfg.connect_timeout.get());
        self.watch(&client, &drain).await;
        // The driver's own monitoring tasks end with its client.
        client.shutdown().await;
    }

    async fn watch(&self, client: &LazyClient, drain: &Drain) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let pause = match self.session(client, drain).await {
                Ok(End::Drained) => return,
                Ok(End::Standby) => {
                    backoff = BACKOFF_MIN;
                    self.cfg.lease.get() / 3
                }
                Err(e) => {
                    if self.stats.role() == Role::Watching {
                        // It was reading: a new outage, and a fresh backoff.
                        backoff = BACKOFF_MIN;
                    }
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    *lock(&self.stats.last_error) = Some(e.to_string());
                    // One warning per outage; its retries are debug.
                    if backoff == BACKOFF_MIN {
                        tracing::warn!(stream = %self.cfg.name, error = %e,
                            "change stream interrupted; retrying with backoff");
                    } else {
                        tracing::debug!(stream = %self.cfg.name, error = %e, retry_in = ?backoff,
                            "change stream still unavailable");
                    }
                    self.stats.set_role(Role::Retrying, "");
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = drain.wait() => return,
            }
        }
    }

    async fn session(&self, client: &LazyClient, drain: &Drain) -> Result<End, WatchError> {
        let client = client.get().await?;
        let cfg = &self.cfg;
        let lease = Lease::new(
            client
                .database(&cfg.state_database)
                .collection(&cfg.state_collection),
            &cfg.name,
            &self.instance,
            cfg.lease.get(),
        );
        let saved = match lease.claim().await? {
            Claim::Taken { owner } => {
                self.stats.set_role(Role::Standby, &owner);
                return Ok(End::Standby);
            }
            Claim::Held(token) => token,
        };
        let db = client.database(&cfg.database);
        let fresh = saved.is_none();
        // The very first start begins at "now": history from before the
        // proxy watched was never cached against it.
        let (mut cursor, mut batch) = match self.open(&db, saved).await {
            Ok(opened) => opened,
            Err(e) if !fresh && position_refused(&e) => {
                self.restart(&db, &lease, "history-lost", &describe(&e))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        if self.stats.errors.load(Ordering::Relaxed) > 0 {
            tracing::info!(stream = %cfg.name, "change stream watching again");
        }
        self.stats.set_role(Role::Watching, &self.instance);
        // The server answers a waiting read within `max_await`; one that
        // does not answer at all is treated as an outage.
        let silent = cfg.max_await.get() + cfg.lease.get();
        // Where the last batch ended; a batch that gives none (a server
        // without postBatchResumeToken, nothing read) leaves it as it was.
        let mut position = None;
        loop {
            position = batch.position.take().or(position);
            if !batch.events.is_empty() {
                let Some(state) = self.state.upgrade() else {
                    cursor.close().await;
                    return Ok(End::Drained);
                };
                let ended = self.apply(&state, std::mem::take(&mut batch.events)).await;
                drop(state);
                if let Some(operation) = ended {
                    cursor.close().await;
                    (cursor, batch) = self
                        .restart(&db, &lease, "invalidate", &format!("{operation} event"))
                        .await?;
                    position = None;
                    continue;
                }
            }
            if !lease.save(position.clone()).await? {
                tracing::warn!(stream = %cfg.name, "change stream claim lost to another instance");
                cursor.close().await;
                return Ok(End::Standby);
            }
            self.stats.saved_at_ms.store(now_ms(), Ordering::Relaxed);
            let next = tokio::select! {
                n = tokio::time::timeout(silent, cursor.next()) => n.unwrap_or_else(|_| {
                    Err(Error::custom(format!("no answer from the server within {silent:?}")))
                }),
                _ = drain.wait() => {
                    self.release(&lease).await;
                    cursor.close().await;
                    return Ok(End::Drained);
                }
            };
            batch = match next {
                Ok(b) => b,
                Err(e) if position_lost(&e) => {
                    cursor.close().await;
                    let (c, b) = self
                        .restart(&db, &lease, "history-lost", &describe(&e))
                        .await?;
                    cursor = c;
                    position = None;
                    b
                }
                Err(e) => return Err(e.into()),
            };
        }
    }

    async fn open(&self, db: &Database, resume: Option<Bson>) -> Result<(Cursor, Batch), Error> {
        Cursor::open(
            db.clone(),
            &self.cfg.collection,
            resume,
            self.cfg.batch_size,
            self.cfg.max_await.get(),
        )
        .await
    }

    /// The position is gone or the collection ended: a new stream from now,
    /// its position saved, then every tier cleared on every instance (in
    /// that order, so that no change falls between the clear and the new
    /// stream).
    async fn restart(
        &self,
        db: &Database,
        lease: &Lease,
        reason: &'static str,
        detail: &str,
    ) -> Result<(Cursor, Batch), WatchError> {
        let (cursor, batch) = self.open(db, None).await?;
        lease.save(batch.position.clone()).await?;
        match self.cfg.kind {
            StreamKind::ProfileUpdates => {
                tracing::error!(stream = %self.cfg.name, reason, detail,
                    "change stream restarted from now; clearing every tier on every instance");
                if let Some(state) = self.state.upgrade() {
                    let tiers = state.invalidations.invalidate_all("change-stream").await;
                    tracing::warn!(stream = %self.cfg.name, %tiers, "every tier cleared");
                }
            }
            StreamKind::NewPosts => tracing::error!(stream = %self.cfg.name, reason, detail,
                "change stream restarted from now; posts inserted in between were not notified"),
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        *lock(&self.stats.last_error) = Some(format!("{reason}: {detail}"));
        self.metrics
            .change_stream_restarts
            .with_label_values(&[&self.cfg.name, reason])
            .inc();
        Ok((cursor, batch))
    }

    /// Applies one batch; answers the operation that ended the collection
    /// (drop, rename, ...) if one did.
    async fn apply(&self, state: &State, events: Vec<Document>) -> Option<String> {
        let name = self.cfg.name.as_str();
        let ids = state.profiles.ids();
        let mut users: Vec<String> = Vec::new();
        let mut posts: Vec<Value> = Vec::new();
        let mut ended = None;
        for event in &events {
            let change = match self.cfg.kind {
                StreamKind::ProfileUpdates => classify(event, &self.cfg.id_field, &ids),
                StreamKind::NewPosts => classify_post(event, &ids),
            };
            self.metrics
                .change_stream_events
                .with_label_values(&[name, change.label()])
                .inc();
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            match change {
                Change::Profile { user_id, .. } => {
                    if !users.contains(&user_id) {
                        users.push(user_id);
                    }
                }
                Change::Post { post } => posts.push(post),
                Change::Bad { operation, why } => {
                    self.stats.bad_documents.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        stream = name,
                        operation,
                        why,
                        "change skipped: bad document"
                    );
                }
                Change::Invalidate { operation } => ended = Some(operation),
                Change::Other { operation } => {
                    tracing::debug!(stream = name, operation, "change stream event ignored");
                }
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if !posts.is_empty() {
            // In order, before the position is saved: a restart sends the
            // batch again rather than losing it.
            let sent = state.notifications.publish_all(state, posts).await;
            self.stats
                .posts_published
                .fetch_add(sent as u64, Ordering::Relaxed);
        }
        futures_util::stream::iter(users)
            .for_each_concurrent(APPLY_CONCURRENCY, |user| async move {
                let text = json!({
                    "type": "profile-updated",
                    "userId": user,
                    "source": "change-stream",
                    "stream": name,
                })
                .to_string();
                match policy::parse(text.as_bytes(), &state.profiles.ids()) {
                    Ok(event) => {
                        let done = policy::apply(state, &event, "change-stream").await;
                        // Counted once done: stats say what has taken effect.
                        self.stats.users_applied.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(stream = name, %user, %done, "change applied");
                    }
                    // The id passed the same rules in `classify`; only a
                    // reload between the two can get here.
                    Err(e) => tracing::warn!(stream = name, %user, error = %e, "change skipped"),
                }
            })
            .await;
        ended
    }

    async fn release(&self, lease: &Lease) {
        match tokio::time::timeout(RELEASE_TIMEOUT, lease.release()).await {
            Ok(Ok(())) => tracing::debug!(stream = %self.cfg.name, "change stream claim released"),
            _ => tracing::debug!(stream = %self.cfg.name,
                "change stream claim not released; it runs out by itself"),
        }
    }
}

fn command_code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// The server said the position is gone.
fn position_lost(e: &Error) -> bool {
    command_code(e).is_some_and(|c| POSITION_LOST.contains(&c))
}

/// Opening at a stored position failed for a reason that retrying will
/// not cure: the server refused it (any command error that is not one of
/// the transient ones).
fn position_refused(e: &Error) -> bool {
    command_code(e).is_some_and(|c| POSITION_LOST.contains(&c) || !TRANSIENT.contains(&c))
}
