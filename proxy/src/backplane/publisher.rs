//! Sends queued messages to the log: one pipeline of `XADD`s per batch,
//! each trimming entries older than `catch_up` by Redis's own clock (the
//! time in the id of the previous append), so the log holds exactly the
//! history a reconnecting instance may replay. When Redis cannot be
//! reached the batch goes back to the outbox and is retried with backoff;
//! on shutdown one last attempt flushes what is queued.

use std::sync::Arc;
use std::time::Duration;

use super::gap::StreamId;
use super::outbox::Outbox;
use super::stats::{bump, Stats};
use crate::lifecycle::Drain;
use crate::metrics::Metrics;
use crate::redis_link::Link;
use crate::tier::millis;

/// Most messages per pipeline.
const BATCH: usize = 512;
/// Budget for one pipeline; a Redis that does not answer in it is down.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct Publisher {
    pub conn: Link,
    pub log_key: String,
    pub catch_up: Duration,
    pub outbox: Arc<Outbox>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
}

impl Publisher {
    pub async fn run(mut self, drain: Drain) {
        let mut backoff = BACKOFF_MIN;
        // Redis's time of the last append, for trimming by age.
        let mut redis_ms: Option<u64> = None;
        let mut failing = false;
        loop {
            if self.outbox.is_empty() {
                tokio::select! {
                    _ = self.outbox.ready() => {}
                    _ = drain.wait() => return,
                }
                continue;
            }
            if drain.is_draining() {
                // One last try for what is queued, then go.
                self.send_batch(&mut redis_ms).await.ok();
                return;
            }
            match self.send_batch(&mut redis_ms).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("backplane publishing again");
                        failing = false;
                    }
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, queued = self.outbox.len(),
                            "backplane cannot publish; invalidations are queued and retried");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = drain.wait() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn send_batch(&mut self, redis_ms: &mut Option<u64>) -> Result<(), String> {
        let batch = self.outbox.take(BATCH);
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let min_id = redis_ms.map(|ms| ms.saturating_sub(millis(self.catch_up)));
        for (_, m) in &batch {
            let cmd = pipe.cmd("XADD").arg(&self.log_key);
            if let Some(min) = min_id {
                cmd.arg("MINID").arg(format!("{min}-0"));
            }
            cmd.arg("*");
            for (k, v) in m.fields() {
                cmd.arg(k).arg(v);
            }
        }
        let sent = tokio::time::timeout(
            CALL_TIMEOUT,
            pipe.query_async::<Vec<String>>(&mut self.conn),
        )
        .await;
        match sent {
            Ok(Ok(ids)) => {
                if let Some(id) = ids.last().and_then(|i| StreamId::parse(i)) {
                    *redis_ms = Some(id.ms);
                }
                self.outbox.sent(batch.len());
                for _ in &batch {
                    bump(&self.stats.sent);
                    self.metrics.backplane("sent", "ok");
                }
                Ok(())
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {CALL_TIMEOUT:?}"),
                };
                bump(&self.stats.send_failures);
                self.metrics.backplane("sent", "failed");
                self.outbox.restore(batch);
                Err(why)
            }
        }
    }
}
