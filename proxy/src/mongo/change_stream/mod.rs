//! `[[change_streams]]`: a watcher task per configured stream (README
//! "Change streams"). Every instance runs one per stream, but only the one
//! holding the stream's claim reads it (`lease`); the others stand by and
//! take over when the claim runs out. The watcher applies changes through
//! the invalidation policy, so with the backplane every instance follows.
//! A reload starts, stops or restarts watchers whose entry changed.

mod cursor;
mod event;
mod lease;
mod watcher;

use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::Value;

use crate::config::{ChangeStreamConfig, Config};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::state::State;
use watcher::{StreamStats, Watcher};

struct Running {
    cfg: ChangeStreamConfig,
    uri: String,
    /// Stops this watcher alone (a reload removed or changed it).
    scope: Tasks,
    stats: Arc<StreamStats>,
}

pub struct ChangeStreams {
    metrics: Arc<Metrics>,
    tasks: Tasks,
    /// Set once the state exists (the watchers apply events through it).
    state: OnceLock<Weak<State>>,
    instance: OnceLock<String>,
    running: Mutex<Vec<Running>>,
}

impl ChangeStreams {
    pub fn new(metrics: Arc<Metrics>, tasks: Tasks) -> ChangeStreams {
        ChangeStreams {
            metrics,
            tasks,
            state: OnceLock::new(),
            instance: OnceLock::new(),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Starts the configured watchers; called once the state is shared.
    pub fn start(&self, state: &Arc<State>) {
        let _ = self
            .instance
            .set(state.invalidations.instance().to_string());
        let _ = self.state.set(Arc::downgrade(state));
        self.apply(&state.runtime().config);
    }

    /// Brings the watchers in line with `cfg`: new entries start, removed
    /// ones stop (giving their claim up), changed ones restart.
    pub fn apply(&self, cfg: &Config) {
        let (Some(state), Some(instance)) = (self.state.get(), self.instance.get()) else {
            return;
        };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: Vec<(&ChangeStreamConfig, String)> = cfg
            .change_streams
            .iter()
            .filter_map(|s| Some((s, s.resolved_uri(cfg)?.to_string())))
            .collect();
        running.retain(|r| {
            let keep = wanted.iter().any(|(s, uri)| **s == r.cfg && *uri == r.uri);
            if !keep {
                tracing::info!(stream = %r.cfg.name, "change stream watcher stopped");
                r.scope.stop();
            }
            keep
        });
        for (s, uri) in wanted {
            if running.iter().any(|r| r.cfg == *s && r.uri == uri) {
                continue;
            }
            let scope = self.tasks.scope();
            let stats = Arc::new(StreamStats::default());
            let watcher = Watcher {
                cfg: s.clone(),
                uri: uri.clone(),
                instance: instance.clone(),
                state: state.clone(),
                metrics: self.metrics.clone(),
                stats: stats.clone(),
            };
            scope.spawn("change-stream", move |drain| watcher.run(drain));
            tracing::info!(stream = %s.name, database = %s.database, collection = %s.collection,
                "change stream watcher started");
            running.push(Running {
                cfg: s.clone(),
                uri,
                scope,
                stats,
            });
        }
    }

    /// The `change_streams` array of `/admin/stats`.
    pub fn stats(&self) -> Value {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            running
                .iter()
                .map(|r| r.stats.to_json(&r.cfg.name))
                .collect(),
        )
    }
}
