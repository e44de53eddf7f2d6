//! The `refresh-post-snapshots` action: every stored post by a user gets
//! that user's current snapshot in `[post_snapshots].snapshot_field`, so
//! posts read straight from the database stop showing an old name or
//! picture. The snapshot has the default enrichment policy's shape (`id`,
//! `displayName`, `avatarUrl`; `null` for a user the Officer does not
//! know), made from the profile as the lookup path has it now.
//!
//! Posts are rewritten in batches of `batch_size`, walked by `_id`: one
//! find of the batch's last `_id`, one `update_many` of the user's posts in
//! that `_id` range, so no single write holds the collection for long
//! however many posts a user has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};

use super::client::{describe, LazyClient};
use crate::config::{Config, PostSnapshotsConfig};
use crate::lookup::Profiles;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the profile could not be loaded: {0}")]
    Profile(String),
    #[error(
        "only a stale profile could be had (the origin is failing); posts keep their snapshot"
    )]
    Stale,
    #[error("the profile is not JSON: {0}")]
    NotJson(String),
    #[error("posts collection: {}", describe(.0))]
    Mongo(#[from] mongodb::error::Error),
    #[error("posts collection did not answer within {0:?}")]
    Timeout(Duration),
}

/// The settings in force and a client for them.
struct Target {
    cfg: PostSnapshotsConfig,
    uri: String,
    client: LazyClient,
}

#[derive(Default)]
struct Stats {
    refreshes: AtomicU64,
    posts: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

pub struct PostSnapshots {
    target: ArcSwapOption<Target>,
    metrics: Arc<Metrics>,
    stats: Stats,
}

impl PostSnapshots {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> PostSnapshots {
        let posts = PostSnapshots {
            target: ArcSwapOption::empty(),
            metrics,
            stats: Stats::default(),
        };
        posts.reconfigure(cfg);
        posts
    }

    /// Applies a (re)loaded config; a changed section gets a new client.
    pub fn reconfigure(&self, cfg: &Config) {
        let want = cfg
            .post_snapshots
            .as_ref()
            .and_then(|p| Some((p, p.resolved_uri(cfg)?)));
        let running = self.target.load();
        let same = match (running.as_deref(), want) {
            (Some(t), Some((p, uri))) => t.cfg == *p && t.uri == uri,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.target.store(want.map(|(p, uri)| {
                Arc::new(Target {
                    cfg: p.clone(),
                    uri: uri.to_string(),
                    client: LazyClient::new(uri, p.connect_timeout.get()),
                })
            }));
        }
    }

    /// Rewrites the snapshot of `id`'s posts; answers how many posts
    /// changed, `None` when `[post_snapshots]` is absent.
    pub async fn refresh(
        &self,
        id: &str,
        profiles: &Arc<Profiles>,
    ) -> Result<Option<u64>, PostError> {
        let Some(target) = self.target.load_full() else {
            return Ok(None);
        };
        let result = self.rewrite(&target, id, profiles).await;
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(n) => {
                self.stats.posts.fetch_add(*n, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                tracing::warn!(user = %id, error = %e, "post snapshots not refreshed");
            }
        }
        result.map(Some)
    }

    async fn rewrite(
        &self,
        target: &Target,
        id: &str,
        profiles: &Arc<Profiles>,
    ) -> Result<u64, PostError> {
        let loaded = profiles
            .get(id)
            .await
            .map_err(|e| PostError::Profile(e.to_string()))?;
        if loaded.stale {
            return Err(PostError::Stale);
        }
        let snapshot = snapshot_of(id, loaded.entry.body.as_deref())?;
        let cfg = &target.cfg;
        let budget = cfg.timeout.get();
        let coll = target
            .client
            .get()
            .await?
            .database(&cfg.database)
            .collection::<Document>(&cfg.collection);
        let of = |range: &Document| {
            let mut f = doc! {cfg.user_field.as_str(): id};
            if !range.is_empty() {
                f.insert("_id", range.clone());
            }
            f
        };
        let mut after: Option<Bson> = None;
        let mut changed = 0;
        loop {
            let mut range = Document::new();
            if let Some(last) = after.take() {
                range.insert("$gt", last);
            }
            // The batch's last post: the user's posts up to it are one
            // range of `_id`, which the update matches without a list.
            let find = async {
                coll.find(of(&range))
                    .projection(doc! {"_id": 1})
                    .sort(doc! {"_id": 1})
                    .skip(u64::from(cfg.batch_size - 1))
                    .limit(1)
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            };
            let edge = within(budget, find)
                .await?
                .into_iter()
                .find_map(|d| d.get("_id").cloned());
            if let Some(edge) = &edge {
                range.insert("$lte", edge.clone());
            }
            let update = coll.update_many(
                of(&range),
                doc! {"$set": {cfg.snapshot_field.as_str(): snapshot.clone()}},
            );
            let r = within(budget, async { update.await }).await?;
            changed += r.modified_count;
            self.metrics
                .post_snapshots_refreshed
                .inc_by(r.modified_count);
            match edge {
                // Fewer than a batch were left: that update took them all.
                None => return Ok(changed),
                Some(edge) => after = Some(edge),
            }
        }
    }

    /// The `post_snapshots` object of `/admin/stats`.
    pub fn stats(&self) -> Value {
        let target = self.target.load();
        let last_error = self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "enabled": target.is_some(),
            "collection": target.as_ref().map(|t| format!("{}.{}", t.cfg.database, t.cfg.collection)),
            "refreshes": self.stats.refreshes.load(Ordering::Relaxed),
            "posts_refreshed": self.stats.posts.load(Ordering::Relaxed),
            "failures": self.stats.failures.load(Ordering::Relaxed),
            "last_error": last_error,
        })
    }
}

async fn within<T>(
    budget: Duration,
    fut: impl std::future::Future<Output = Result<T, mongodb::error::Error>>,
) -> Result<T, PostError> {
    tokio::time::timeout(budget, fut)
        .await
        .map_err(|_| PostError::Timeout(budget))?
        .map_err(PostError::from)
}

/// The snapshot a post carries about its author: the default enrichment
/// policy's shape, or `null` for a user the Officer does not know.
fn snapshot_of(id: &str, body: Option<&[u8]>) -> Result<Bson, PostError> {
    let Some(body) = body else {
        return Ok(Bson::Null);
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| PostError::NotJson(e.to_string()))?;
    let text = |field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .map_or(Bson::Null, |s| Bson::String(s.to_string()))
    };
    Ok(Bson::Document(doc! {
        "id": id,
        "displayName": text("displayName"),
        "avatarUrl": text("avatarUrl"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_have_the_enrichment_shape() {
        let s = snapshot_of(
            "u1",
            Some(br#"{"id":"u1","displayName":"Ann","avatarUrl":"https://a/1.png","bio":"x"}"#),
        )
        .expect("json");
        assert_eq!(
            s,
            Bson::Document(doc! {"id": "u1", "displayName": "Ann", "avatarUrl": "https://a/1.png"})
        );
        let partial = snapshot_of("u2", Some(br#"{"displayName":7}"#)).expect("json");
        assert_eq!(
            partial,
            Bson::Document(doc! {"id": "u2", "displayName": Bson::Null, "avatarUrl": Bson::Null})
        );
        assert_eq!(snapshot_of("u3", None).expect("none"), Bson::Null);
        assert!(matches!(
            snapshot_of("u4", Some(b"<html>")),
            Err(PostError::NotJson(_))
        ));
    }
}
