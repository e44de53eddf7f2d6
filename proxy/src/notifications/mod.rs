//! New-post notifications (README "Notifications"): posts come in (from
//! `POST /admin/notifications`; change streams and other instances to
//! come), are enriched once with the configured policy (one profile lookup
//! through the tiers and the coalescer, however many subscribers), matched
//! once against the author's followers when a subscriber filters by them,
//! and fanned out by the `Hub` to every SSE subscriber
//! (`routes::notifications`).

pub mod followers;
pub mod hub;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NotificationsConfig};
use crate::metrics::Metrics;
use crate::state::State;
use followers::Followers;
use hub::Hub;

/// What a section of config builds; replaced whole when it changes.
pub struct Live {
    pub cfg: NotificationsConfig,
    pub hub: Hub,
    pub followers: Followers,
}

pub struct Notifications {
    live: ArcSwapOption<Live>,
    metrics: Arc<Metrics>,
    /// Raised at shutdown: every stream ends cleanly before connections
    /// are drained.
    closing: CancellationToken,
    /// Subscribers filtering by follower: while there are none, no
    /// follower list is loaded.
    filtered: AtomicUsize,
}

/// What `publish` did.
pub struct Published {
    pub id: u64,
    pub enriched: bool,
    pub subscribers: usize,
}

impl Notifications {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Notifications {
        let n = Notifications {
            live: ArcSwapOption::empty(),
            metrics,
            closing: CancellationToken::new(),
            filtered: AtomicUsize::new(0),
        };
        n.reconfigure(cfg);
        n
    }

    /// Applies a (re)loaded config. A changed section starts a new hub:
    /// streams of the old one end (their clients reconnect and resync).
    pub fn reconfigure(&self, cfg: &Config) {
        let same = match (self.live.load().as_deref(), &cfg.notifications) {
            (Some(l), Some(c)) => l.cfg == *c,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.live.store(cfg.notifications.as_ref().map(|c| {
                Arc::new(Live {
                    cfg: c.clone(),
                    hub: Hub::new(c.replay, c.client_queue),
                    followers: Followers::new(&c.followers_path, c.followers_ttl.get()),
                })
            }));
        }
    }

    pub fn live(&self) -> Option<Arc<Live>> {
        self.live.load_full()
    }

    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ends every stream (shutdown).
    pub fn close(&self) {
        self.closing.cancel();
    }

    pub fn filtered(&self) -> &AtomicUsize {
        &self.filtered
    }

    /// Enriches one post and sends it to every subscriber it concerns.
    /// `None` when `[notifications]` is off.
    pub async fn publish(&self, state: &State, post: Value) -> Option<Published> {
        let live = self.live()?;
        let author = post
            .get("userId")
            .and_then(Value::as_str)
            .map(str::to_string);
        let body = json!({"type": "new-post", "post": post}).to_string();
        let deadline = live.cfg.enrich_deadline.get();
        let (data, enriched) = match &live.cfg.plugin {
            None => (body, false),
            Some(name) => {
                let plugin = state.plugins.get(name);
                let bytes = Bytes::from(body.clone());
                let work = crate::routes::enrich::enrich_body(plugin, name, &bytes, state);
                match tokio::time::timeout(deadline, work).await {
                    Ok(Ok(out)) => (String::from_utf8_lossy(&out).into_owned(), true),
                    Ok(Err(reason)) => {
                        self.unenriched("failed");
                        tracing::warn!(%reason, "new post sent unenriched");
                        (body, false)
                    }
                    Err(_) => {
                        self.unenriched("deadline");
                        (body, false)
                    }
                }
            }
        };
        let followers = match (&author, self.filtered.load(Ordering::Relaxed)) {
            (Some(a), n) if n > 0 => {
                let officer = state.runtime().officer.clone();
                match tokio::time::timeout(deadline, live.followers.get(&officer, a)).await {
                    Ok(Ok(f)) => Some(f),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "followers unknown: filtered subscribers miss this post");
                        None
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        // One line per event: the data is JSON without raw newlines.
        let (id, subscribers) = live.hub.publish(followers, &data);
        Some(Published {
            id,
            enriched,
            subscribers,
        })
    }

    fn unenriched(&self, reason: &str) {
        self.metrics
            .notifications_unenriched
            .with_label_values(&[reason])
            .inc();
    }

    /// The `notifications` object of `/admin/stats`.
    pub fn stats(&self) -> Value {
        match self.live() {
            None => json!({"enabled": false}),
            Some(l) => json!({
                "enabled": true,
                "path": l.cfg.path,
                "subscribers": l.hub.receivers(),
                "filtered_subscribers": self.filtered.load(Ordering::Relaxed),
                "newest_id": l.hub.newest(),
            }),
        }
    }
}
