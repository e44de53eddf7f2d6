//! Shared-tier calls gathered per scheduler tick, beside `batcher` (which
//! does the same for the origin, with a window): every load queues its
//! reads and writes of a tier here, and one task sends all that queued
//! while the scheduler ran the other ready tasks as one `get_many` and one
//! `put_many` (on Redis one MGET and one script call, so one socket write
//! and one reply for many requests). There is no waiting window: the task
//! yields once, so the loads ready in the same tick join, and then sends.
//! Calls already sent do not hold up the next ones.
//!
//! The tier's own guard (breaker, timeout) bounds each call, and its writes
//! stay conditional per entry, so gathering changes no answer. When the
//! task is gone (draining), a load calls the tier itself.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::{Drain, Tasks};
use crate::tier::{Entry, Stored, Tier, TierError, Written};

/// Most ids (or entries) in one gathered call: a call of this size stays
/// far inside a tier's timeout; more queued go out as a second call at once.
const MAX_IDS: usize = 1000;

type Reply<T> = Result<Vec<T>, TierError>;
type ReadReply = Reply<Stored>;
type WriteReply = Reply<Written>;
/// Entries for a tier, with the id each is for.
type Entries = Vec<(String, Entry)>;

enum Job {
    Read {
        ids: Vec<Arc<str>>,
        reply: oneshot::Sender<ReadReply>,
    },
    Write {
        entries: Entries,
        reply: oneshot::Sender<WriteReply>,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Read { ids, .. } => ids.len(),
            Job::Write { entries, .. } => entries.len(),
        }
    }
}

/// The gathered calls of one shared tier.
pub struct Gathered {
    tier: Arc<dyn Tier>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Gathered {
    /// Starts the task for `tier` on `tasks`; it stops on the drain or when
    /// this handle is dropped (a reload replaced the tier).
    pub fn start(tier: Arc<dyn Tier>, tasks: &Tasks) -> Gathered {
        let (tx, rx) = mpsc::unbounded_channel();
        let t = tier.clone();
        // Tracked for the drain like a load, not named: it is part of the
        // tier, not a component of its own (the named tasks are the ones a
        // config starts).
        tasks.spawn_load(call_loop(rx, t, tasks.drain()));
        Gathered { tier, tx }
    }

    /// What the tier holds for `ids`, in order, read together with every
    /// other load's ids of this tick.
    pub async fn get_many(&self, ids: Vec<Arc<str>>) -> ReadReply {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Job::Read { ids, reply }) {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
            Err(mpsc::error::SendError(Job::Read { ids, .. })) => {
                read(self.tier.as_ref(), &ids).await
            }
            Err(_) => Err(stopped()),
        }
    }

    /// `Tier::put_many`, written together with every other load's entries
    /// of this tick; answers per entry, in order.
    pub async fn put_many(&self, entries: Entries) -> WriteReply {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Job::Write { entries, reply }) {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
            Err(mpsc::error::SendError(Job::Write { entries, .. })) => {
                self.tier.put_many(&entries).await
            }
            Err(_) => Err(stopped()),
        }
    }
}

fn stopped() -> TierError {
    TierError::Failed {
        tier: "shared",
        detail: "the tier's call task stopped".into(),
    }
}

async fn read(tier: &dyn Tier, ids: &[Arc<str>]) -> ReadReply {
    let keys: Vec<&str> = ids.iter().map(|id| &**id).collect();
    tier.get_many_str(&keys).await
}

async fn call_loop(mut rx: mpsc::UnboundedReceiver<Job>, tier: Arc<dyn Tier>, drain: Drain) {
    let mut sent: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(first) = job else { break };
                // Let the other tasks ready in this tick queue their calls.
                tokio::task::yield_now().await;
                let mut count = first.len();
                let mut jobs = vec![first];
                while count < MAX_IDS {
                    match rx.try_recv() {
                        Ok(job) => {
                            count += job.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                send(&tier, jobs, &mut sent);
            }
            Some(()) = sent.next(), if !sent.is_empty() => {}
            _ = drain.wait() => break,
        }
    }
    // No new calls come here (they go to the tier themselves); the ones
    // queued and sent are answered.
    rx.close();
    while let Some(job) = rx.recv().await {
        send(&tier, vec![job], &mut sent);
    }
    while sent.next().await.is_some() {}
}

/// Sends one tick's jobs: the reads as one call, the writes as another.
fn send(tier: &Arc<dyn Tier>, jobs: Vec<Job>, sent: &mut FuturesUnordered<BoxFuture<'static, ()>>) {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for job in jobs {
        match job {
            Job::Read { ids, reply } => reads.push((ids, reply)),
            Job::Write { entries, reply } => writes.push((entries, reply)),
        }
    }
    if !reads.is_empty() {
        sent.push(read_all(tier.clone(), reads).boxed());
    }
    if !writes.is_empty() {
        sent.push(write_all(tier.clone(), writes).boxed());
    }
}

/// One call for every job's ids; each job gets its part of the answer.
async fn read_all(tier: Arc<dyn Tier>, jobs: Vec<(Vec<Arc<str>>, oneshot::Sender<ReadReply>)>) {
    let keys: Vec<&str> = jobs
        .iter()
        .flat_map(|(ids, _)| ids.iter().map(|id| &**id))
        .collect();
    let r = tier.get_many_str(&keys).await;
    drop(keys);
    fan_out(r, jobs);
}

/// One call for every job's entries; each job gets its part of the answer.
async fn write_all(tier: Arc<dyn Tier>, jobs: Vec<(Entries, oneshot::Sender<WriteReply>)>) {
    let (all, jobs): (Entries, Vec<_>) = if jobs.len() == 1 {
        let mut jobs = jobs;
        let (entries, reply) = jobs.remove(0);
        let n = entries.len();
        (entries, vec![(n, reply)])
    } else {
        let mut all = Vec::with_capacity(jobs.iter().map(|(e, _)| e.len()).sum());
        let mut parts = Vec::with_capacity(jobs.len());
        for (entries, reply) in jobs {
            parts.push((entries.len(), reply));
            all.extend(entries);
        }
        (all, parts)
    };
    let r = tier.put_many(&all).await;
    fan_out(r, jobs);
}

/// Splits one call's answers (in order) among the jobs it carried, by
/// their sizes; a failed call fails each of them.
fn fan_out<T, L: Len>(r: Reply<T>, jobs: Vec<(L, oneshot::Sender<Reply<T>>)>) {
    match r {
        Ok(all) => {
            let mut all = all.into_iter();
            for (part, reply) in jobs {
                let mine: Vec<T> = all.by_ref().take(part.len()).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for (_, reply) in jobs {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// How many answers a job expects.
trait Len {
    fn len(&self) -> usize;
}

impl Len for usize {
    fn len(&self) -> usize {
        *self
    }
}

impl<T> Len for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

#[cfg(test)]
mod tests;
