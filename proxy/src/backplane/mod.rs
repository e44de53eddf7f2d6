//! The backplane: how an invalidation made on one instance reaches the
//! memory tier of every other (README "Cross-instance coherence").
//!
//! The transport is a Redis Stream, `CHANNEL:log`: a bounded log (entries
//! older than `catch_up` are trimmed by Redis's clock) read with blocking
//! `XREAD`s. One mechanism gives both live delivery (an append wakes every
//! blocked reader at once) and catch-up (a reader that was away reads on
//! from the last entry it saw), which pub/sub alone cannot. `message` is
//! the entry format, `outbox` the queue that holds messages while Redis is
//! away, `publisher` and `subscriber` the two loops, `gap` the decision
//! between replaying and clearing memory, `reply` the reading of Redis's
//! stream replies, `stats` the counters.

pub mod gap;
pub mod message;
pub mod outbox;
pub mod publisher;
pub mod reply;
pub mod stats;
pub mod subscriber;

use std::sync::Arc;

use serde_json::Value;

use crate::config::BackplaneSettings;
use crate::lifecycle::Tasks;
use crate::lookup::Profiles;
use crate::metrics::Metrics;
use crate::redis_link::{LinkError, Target};
pub use message::{Kind, Message};
use outbox::{Outbox, Pushed};
use stats::{bump, Stats};

/// A running backplane; `stop` ends its two loops (a reload that changes
/// its settings starts a new one).
pub struct Backplane {
    settings: BackplaneSettings,
    instance: Arc<str>,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    scope: Tasks,
}

impl Backplane {
    /// Starts the publisher and the subscriber under a scope of `tasks`.
    /// Connects lazily: Redis may be down at start-up.
    pub fn start(
        settings: BackplaneSettings,
        instance: Arc<str>,
        profiles: Arc<Profiles>,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<Backplane, LinkError> {
        let target = Target::open(&settings.endpoint)?;
        let conn = target.shared(
            settings.connect_timeout,
            settings
                .connect_timeout
                .max(std::time::Duration::from_secs(1)),
        )?;
        let log_key = format!("{}:log", settings.channel);
        let outbox = Arc::new(Outbox::new(settings.max_queued));
        let stats = Arc::new(Stats::default());
        let scope = tasks.scope();
        let publisher = publisher::Publisher {
            conn,
            log_key: log_key.clone(),
            catch_up: settings.catch_up,
            outbox: outbox.clone(),
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        scope.spawn("backplane-publisher", move |drain| publisher.run(drain));
        let subscriber = subscriber::Subscriber {
            target,
            connect_timeout: settings.connect_timeout,
            log_key,
            catch_up: settings.catch_up,
            instance: instance.clone(),
            profiles,
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        scope.spawn("backplane-subscriber", move |drain| subscriber.run(drain));
        tracing::info!(instance = %instance, channel = %settings.channel,
            redis = %settings.endpoint.describe(), "backplane started");
        Ok(Backplane {
            settings,
            instance,
            outbox,
            stats,
            metrics,
            scope,
        })
    }

    pub fn settings(&self) -> &BackplaneSettings {
        &self.settings
    }

    /// Queues a message for every other instance; never waits on Redis.
    pub fn publish(&self, m: Message) {
        if self.outbox.push(m) == Pushed::Dropped {
            bump(&self.stats.dropped);
            self.metrics.backplane("sent", "dropped");
            tracing::error!(
                max_queued = self.settings.max_queued,
                "backplane outbox is full; an invalidation is lost for the other instances"
            );
        }
    }

    /// Ends the loops (they flush the outbox once on the way out).
    pub fn stop(&self) {
        self.scope.stop();
    }

    pub fn stats(&self) -> Value {
        self.stats
            .json(&self.instance, &self.settings.channel, self.outbox.unsent())
    }
}
