//! Every invalidation goes through here, whatever its source (admin purge,
//! `/admin/events` and its policy's actions, change streams): the
//! local half (`Profiles::invalidate`: tombstones in the shared tiers, this
//! instance's fence and memory), then one message on the backplane, so the
//! other instances' memory follows. `policy` turns events into those
//! invalidations.

pub mod policy;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde_json::{json, Value};

use crate::backplane::{Backplane, Kind, Message};
use crate::config::{BackplaneSettings, Config, Problem};
use crate::lifecycle::Tasks;
use crate::lookup::{Outcome, Profiles};
use crate::metrics::Metrics;

pub struct Invalidations {
    profiles: Arc<Profiles>,
    /// This process's name on the backplane; its own messages are skipped.
    instance: Arc<str>,
    backplane: ArcSwapOption<Backplane>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
}

impl Invalidations {
    /// Starts the backplane when `[backplane]` is configured.
    pub fn new(
        cfg: &Config,
        profiles: Arc<Profiles>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<Invalidations, Problem> {
        let inv = Invalidations {
            profiles,
            instance: Arc::from(format!("{:016x}", rand::random::<u64>())),
            backplane: ArcSwapOption::empty(),
            metrics,
            tasks,
        };
        inv.reconfigure(cfg)?;
        Ok(inv)
    }

    /// Applies a (re)loaded config: a backplane whose settings changed is
    /// stopped and a new one started (which, not knowing what it missed in
    /// between, clears memory if it holds anything).
    pub fn reconfigure(&self, cfg: &Config) -> Result<(), Problem> {
        let want = BackplaneSettings::from_config(cfg);
        let running = self.backplane.load_full();
        if running.as_ref().map(|b| b.settings()) == want.as_ref() {
            return Ok(());
        }
        let next = match want {
            Some(settings) => Some(Arc::new(
                Backplane::start(
                    settings,
                    self.instance.clone(),
                    self.profiles.clone(),
                    self.metrics.clone(),
                    &self.tasks,
                )
                .map_err(|e| {
                    // Without a url of its own the backplane uses the tier's
                    // Redis, and the mistake is in that section.
                    let own = cfg.backplane.as_ref().is_some_and(|b| b.url.is_some());
                    let key = if own {
                        e.key("backplane", false)
                    } else {
                        e.key(
                            "tiers.redis",
                            cfg.tiers
                                .redis
                                .as_ref()
                                .is_some_and(|r| r.mode == crate::config::RedisMode::Cluster),
                        )
                    };
                    Problem::new(key, e.to_string())
                })?,
            )),
            None => None,
        };
        if let Some(old) = self.backplane.swap(next) {
            old.stop();
            if self.backplane.load().is_none() {
                self.metrics.backplane_connected.set(0);
                tracing::info!("backplane turned off: invalidations stay on this instance");
            }
        }
        Ok(())
    }

    /// Removes `id` from every tier here and from memory everywhere.
    pub async fn invalidate(&self, id: &str, source: &str) {
        let at_us = now_us();
        let version = self.profiles.invalidate(id, source).await;
        self.publish(Kind::Invalidate, id, version, at_us);
    }

    /// Invalidates `id`, loads it again here, then tells the other
    /// instances, which re-read it (from the shared tier, where this load
    /// wrote it under the version the message carries) if they held it.
    pub async fn refresh(&self, id: &str, source: &str) -> Outcome {
        let at_us = now_us();
        let version = self.profiles.invalidate(id, source).await;
        let loaded = self.profiles.get(id).await;
        self.publish(Kind::Refresh, id, version, at_us);
        loaded
    }

    /// Removes every id from every tier here and from memory everywhere
    /// (a change stream lost its history, or its collection was dropped).
    /// Answers per shared tier how many ids were marked, or the error.
    pub async fn invalidate_all(&self, source: &str) -> Value {
        let at_us = now_us();
        let done = self.profiles.invalidate_all(source).await;
        self.publish(Kind::Clear, "", 0, at_us);
        let tiers: serde_json::Map<String, Value> = done
            .into_iter()
            .map(|(kind, r)| {
                let v = match r {
                    Ok(n) => json!({"marked": n}),
                    Err(e) => json!({"error": e.to_string()}),
                };
                (kind.as_str().to_string(), v)
            })
            .collect();
        Value::Object(tiers)
    }

    fn publish(&self, kind: Kind, id: &str, version: u64, at_us: u64) {
        if let Some(b) = self.backplane.load().as_ref() {
            b.publish(Message {
                kind,
                id: id.to_string(),
                version,
                from: self.instance.to_string(),
                at_us,
            });
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The `backplane` object of `/admin/stats`.
    pub fn stats(&self) -> Value {
        match self.backplane.load().as_ref() {
            Some(b) => b.stats(),
            None => json!({"enabled": false, "connected": false, "instance_id": &*self.instance}),
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
