//! Shared-tier reads gathered per scheduler tick, beside `batcher` (which
//! does the same for the origin, with a window): every load that asks a
//! tier for ids queues them here, and one reader task sends all that queued
//! while the scheduler ran the other ready tasks as one `get_many` (on
//! Redis one MGET, so one socket write and one reply for many requests).
//! There is no waiting window: the reader yields once, so the requests that
//! are ready in the same tick join, and then sends. Reads already sent do
//! not hold up the next ones.
//!
//! The tier's own guard (breaker, timeout) bounds each call. When the reader
//! is gone (draining, or its task stopped), a load reads the tier itself.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::{Drain, Tasks};
use crate::tier::{Stored, Tier, TierError};

/// Most ids in one gathered call: a read of this size stays far inside a
/// tier's timeout; more queued ids go out as a second call at once.
const MAX_IDS: usize = 1000;

type Reply = Result<Vec<Stored>, TierError>;

struct Job {
    ids: Vec<Arc<str>>,
    reply: oneshot::Sender<Reply>,
}

/// The reads of one shared tier.
pub struct Reads {
    tier: Arc<dyn Tier>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Reads {
    /// Starts the reader of `tier` on `tasks`; it stops on the drain or when
    /// this handle is dropped (a reload replaced the tier).
    pub fn start(tier: Arc<dyn Tier>, tasks: &Tasks) -> Reads {
        let (tx, rx) = mpsc::unbounded_channel();
        let t = tier.clone();
        tasks.spawn("tier-reads", move |drain| read_loop(rx, t, drain));
        Reads { tier, tx }
    }

    pub fn tier(&self) -> &Arc<dyn Tier> {
        &self.tier
    }

    /// What the tier holds for `ids`, in order, read together with every
    /// other load's ids of this tick.
    pub async fn get_many(&self, ids: Vec<Arc<str>>) -> Reply {
        let (reply, rx) = oneshot::channel();
        let ids = match self.tx.send(Job { ids, reply }) {
            Ok(()) => match rx.await {
                Ok(r) => return r,
                // The reader stopped with this job queued.
                Err(_) => None,
            },
            Err(mpsc::error::SendError(job)) => Some(job.ids),
        };
        let Some(ids) = ids else {
            return Err(TierError::Failed {
                tier: "reads",
                detail: "the tier's reader stopped".into(),
            });
        };
        direct(self.tier.as_ref(), &ids).await
    }
}

async fn direct(tier: &dyn Tier, ids: &[Arc<str>]) -> Reply {
    let keys: Vec<&str> = ids.iter().map(|id| &**id).collect();
    tier.get_many_str(&keys).await
}

async fn read_loop(mut rx: mpsc::UnboundedReceiver<Job>, tier: Arc<dyn Tier>, drain: Drain) {
    let mut sent = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(first) = job else { break };
                // Let the other tasks ready in this tick queue their ids.
                tokio::task::yield_now().await;
                let mut jobs = vec![first];
                let mut count = jobs[0].ids.len();
                while count < MAX_IDS {
                    match rx.try_recv() {
                        Ok(job) => {
                            count += job.ids.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                sent.push(read(tier.clone(), jobs));
            }
            Some(()) = sent.next(), if !sent.is_empty() => {}
            _ = drain.wait() => break,
        }
    }
    // Queued jobs fail over to their own reads (see `get_many`); the ones
    // sent are answered.
    drop(rx);
    while sent.next().await.is_some() {}
}

/// One call for every job's ids; each job gets its part of the answer.
async fn read(tier: Arc<dyn Tier>, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let Some(job) = jobs.into_iter().next() else {
            return;
        };
        let r = direct(tier.as_ref(), &job.ids).await;
        let _ = job.reply.send(r);
        return;
    }
    let keys: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.ids.iter().map(|id| &**id))
        .collect();
    match tier.get_many_str(&keys).await {
        Ok(all) => {
            let mut all = all.into_iter();
            for job in jobs {
                let part: Vec<Stored> = all.by_ref().take(job.ids.len()).collect();
                let _ = job.reply.send(Ok(part));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
