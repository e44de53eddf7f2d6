//! New-post notifications (README "Notifications"): posts come in (from
//! `POST /admin/notifications`, a `new-posts` change stream, or another
//! instance through the `relay`), are enriched once with the configured
//! policy (one profile lookup through the tiers and the coalescer, however
//! many subscribers), matched once against the author's followers when a
//! subscriber filters by them, and fanned out by the `Hub` to every SSE
//! subscriber (`routes::notifications`). `post` says what a post must
//! hold, `followers` keeps the follower lists.

pub mod followers;
pub mod hub;
pub mod post;
pub mod relay;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{BackplaneSettings, Config, NotificationsConfig};
use crate::lifecycle::Tasks;
use crate::lookup::Profiles;
use crate::metrics::Metrics;
use crate::plugin::bindings::CallInfo;
use crate::state::State;
use followers::Followers;
use hub::Hub;
use relay::{Outgoing, Relay, RelayKey};

/// Posts of one change-stream batch enriched at once (their profile
/// lookups then share coalesced batches); they still go out in order.
const ENRICH_CONCURRENCY: usize = 16;

/// What a section of config builds; replaced whole when it changes.
pub struct Live {
    pub cfg: NotificationsConfig,
    pub hub: Hub,
}

pub struct Notifications {
    live: ArcSwapOption<Live>,
    /// Lives across reloads: registered once with the profiles, so a
    /// profile event forgets its author's list.
    followers: Arc<Followers>,
    /// The fleet's share of posts, while `[backplane]` and
    /// `[notifications]` are both on.
    relay: ArcSwapOption<Relay>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    /// This process's name on the backplane (the relay skips its own).
    instance: Arc<str>,
    /// Set once the state is shared (the relay delivers through it).
    state: OnceLock<Weak<State>>,
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
    /// Subscribers on this instance.
    pub subscribers: usize,
    /// Queued for the other instances.
    pub relayed: bool,
}

/// A post ready to go out: its author and its event data.
struct Prepared {
    author: String,
    data: String,
    enriched: bool,
}

impl Notifications {
    pub fn new(
        cfg: &Config,
        metrics: Arc<Metrics>,
        profiles: &Profiles,
        tasks: Tasks,
        instance: Arc<str>,
    ) -> Notifications {
        let defaults = NotificationsConfig::default();
        let c = cfg.notifications.as_ref().unwrap_or(&defaults);
        let followers = Arc::new(Followers::new(&c.followers_path, c.followers_ttl.get()));
        profiles.add_dependent(followers.clone());
        let n = Notifications {
            live: ArcSwapOption::empty(),
            followers,
            relay: ArcSwapOption::empty(),
            metrics,
            tasks,
            instance,
            state: OnceLock::new(),
            closing: CancellationToken::new(),
            filtered: AtomicUsize::new(0),
        };
        n.reconfigure(cfg);
        n
    }

    /// Starts the relay if configured; called once the state is shared.
    pub fn start(&self, state: &Arc<State>) {
        let _ = self.state.set(Arc::downgrade(state));
        self.apply_relay(&state.runtime().config);
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
                self.followers
                    .reconfigure(&c.followers_path, c.followers_ttl.get());
                Arc::new(Live {
                    cfg: c.clone(),
                    hub: Hub::new(c.replay, c.client_queue),
                })
            }));
        }
        self.apply_relay(cfg);
    }

    /// Starts, stops or restarts the relay to match `cfg`.
    fn apply_relay(&self, cfg: &Config) {
        let Some(state) = self.state.get() else {
            return;
        };
        let want = match (&cfg.notifications, BackplaneSettings::from_config(cfg)) {
            (Some(n), Some(settings)) => Some(RelayKey {
                settings,
                keep: n.replay,
            }),
            _ => None,
        };
        if self.relay.load().as_ref().map(|r| r.key()) == want.as_ref() {
            return;
        }
        let next = want.and_then(|key| {
            match Relay::start(
                key,
                self.instance.clone(),
                state.clone(),
                self.metrics.clone(),
                &self.tasks,
            ) {
                Ok(r) => Some(Arc::new(r)),
                // The backplane refused the same URL with the key named.
                Err(e) => {
                    tracing::error!(error = %e, "notification relay not started");
                    None
                }
            }
        });
        if let Some(old) = self.relay.swap(next) {
            old.stop();
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

    /// Whether posts of other instances are being read (tests wait on it
    /// before sending a post they expect everywhere).
    pub fn relay_connected(&self) -> bool {
        self.relay.load().as_ref().is_some_and(|r| r.connected())
    }

    /// Enriches one post (whose `userId` was checked) and sends it to every
    /// subscriber it concerns, here and on the other instances. `None`
    /// when `[notifications]` is off.
    pub async fn publish(&self, state: &State, post: Value) -> Option<Published> {
        let live = self.live()?;
        let p = self.prepare(&live, state, post).await;
        let (id, subscribers) = self.deliver(state, &p.author, &p.data).await?;
        let relayed = self.relay(p.author, p.data);
        Some(Published {
            id,
            enriched: p.enriched,
            subscribers,
            relayed,
        })
    }

    /// Publishes posts in order (a change-stream batch), enriching up to
    /// `ENRICH_CONCURRENCY` at once. Answers how many went out.
    pub async fn publish_all(&self, state: &State, posts: Vec<Value>) -> usize {
        let Some(live) = self.live() else {
            return 0;
        };
        let mut ready = futures_util::stream::iter(posts)
            .map(|post| self.prepare(&live, state, post))
            .buffered(ENRICH_CONCURRENCY);
        let mut sent = 0;
        while let Some(p) = ready.next().await {
            if self.deliver(state, &p.author, &p.data).await.is_some() {
                sent += 1;
            }
            self.relay(p.author, p.data);
        }
        sent
    }

    /// The event data of a post, enriched by the policy within
    /// `enrich_deadline`, else as it came.
    async fn prepare(&self, live: &Live, state: &State, post: Value) -> Prepared {
        let author = post
            .get("userId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let body = json!({"type": "new-post", "post": post}).to_string();
        let deadline = live.cfg.enrich_deadline.get();
        let (data, enriched) = match &live.cfg.plugin {
            None => (body, false),
            Some(name) => {
                let plugin = state.plugins.get(name);
                let bytes = Bytes::from(body.clone());
                let call = CallInfo::notification();
                let work = crate::routes::enrich::enrich_body(plugin, name, &call, &bytes, state);
                match tokio::time::timeout(deadline, work).await {
                    // One line per event: the data goes out as one `data:`
                    // line, so a policy's pretty-printing is folded.
                    Ok(Ok(out)) => (one_line(&out), true),
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
        Prepared {
            author,
            data,
            enriched,
        }
    }

    /// Sends a prepared post to this instance's subscribers (a post of this
    /// instance, or one the relay read). Answers its id here and how many
    /// subscribers were there; `None` when `[notifications]` is off.
    pub async fn deliver(&self, state: &State, author: &str, data: &str) -> Option<(u64, usize)> {
        let live = self.live()?;
        let followers = if self.filtered.load(Ordering::Relaxed) > 0 && !author.is_empty() {
            let officer = state.runtime().officer.clone();
            let deadline = live.cfg.enrich_deadline.get();
            match tokio::time::timeout(deadline, self.followers.get(&officer, author)).await {
                Ok(Ok(f)) => Some(f),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "followers unknown: filtered subscribers miss this post");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        author,
                        ?deadline,
                        "followers not loaded in time: filtered subscribers miss this post"
                    );
                    None
                }
            }
        } else {
            None
        };
        Some(live.hub.publish(followers, data))
    }

    /// Queues a post for the other instances; answers whether it was.
    fn relay(&self, author: String, data: String) -> bool {
        match self.relay.load().as_ref() {
            Some(r) => {
                r.send(Outgoing { author, data });
                true
            }
            None => false,
        }
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
                "follower_lists_loaded": self.followers.loads(),
                "fleet": self.relay.load().as_ref().map_or_else(
                    || json!({"enabled": false}),
                    |r| r.stats(),
                ),
            }),
        }
    }
}

/// A policy's output as one line. Raw line breaks can only be whitespace
/// between JSON tokens (a string holds them escaped), so folding them into
/// spaces keeps the value.
fn one_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out).replace(['\n', '\r'], " ")
}
