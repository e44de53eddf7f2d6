//! Batching, the second layer of coalescing: misses from many flights are
//! merged into origin batch calls of at most `max_batch` ids. A batch goes
//! out when it is full, when no new miss joined it for `window`, or
//! `max_wait` after its first miss; at most `max_inflight_batches` are in
//! flight and further ids queue for the next (full) batch. Results fan out
//! per id; an origin error fails only the ids of its batch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::lifecycle::{Drain, Tasks};
use crate::origin::LoadError;
pub use crate::origin::OriginSource;

/// Batching parameters (from `[coalescing]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchParams {
    pub batching: bool,
    pub max_batch: usize,
    pub window: Duration,
    pub max_wait: Duration,
    pub max_inflight: usize,
}

/// The result of an origin load: `Ok(None)` is "the origin does not know
/// this id". `fetched_at` is when the origin call began (for fencing).
pub type OriginResult = Result<(Option<Bytes>, u64), LoadError>;

struct Job {
    id: String,
    reply: oneshot::Sender<OriginResult>,
}

/// Sends origin loads, batched per `BatchParams`. Its loop stops once the
/// last handle is dropped and the queued ids are sent, or on the drain.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
    params: BatchParams,
    origin: Arc<dyn OriginSource>,
    singles: Arc<Semaphore>,
}

impl Batcher {
    pub fn start(params: BatchParams, origin: Arc<dyn OriginSource>, tasks: &Tasks) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        if params.batching {
            let (o, t) = (origin.clone(), tasks.clone());
            tasks.spawn("batcher", move |drain| batch_loop(rx, params, o, t, drain));
        }
        Batcher {
            tx,
            params,
            // Single-id mode keeps the same bound on origin concurrency.
            singles: Arc::new(Semaphore::new(params.max_inflight * params.max_batch)),
            origin,
        }
    }

    pub fn params(&self) -> BatchParams {
        self.params
    }

    /// Loads one id from the origin, through a batch unless batching is off.
    pub async fn load(&self, id: &str) -> OriginResult {
        if !self.params.batching {
            let _permit = self
                .singles
                .acquire()
                .await
                .map_err(|_| LoadError::Abandoned("origin loader stopped"))?;
            let started = crate::tier::now_ms();
            return self.origin.fetch_one(id).await.map(|b| (b, started));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                id: id.to_string(),
                reply,
            })
            .map_err(|_| LoadError::Abandoned("origin batcher stopped"))?;
        rx.await
            .unwrap_or_else(|_| Err(LoadError::Abandoned("origin batch was dropped")))
    }
}

async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    p: BatchParams,
    origin: Arc<dyn OriginSource>,
    tasks: Tasks,
    drain: Drain,
) {
    let slots = Arc::new(Semaphore::new(p.max_inflight));
    let mut batch: Vec<Job> = Vec::with_capacity(p.max_batch);
    loop {
        if batch.is_empty() {
            // Idle: stop on the drain (queued jobs' waiters get an error).
            let job = tokio::select! {
                job = rx.recv() => job,
                _ = drain.wait() => None,
            };
            match job {
                Some(job) => batch.push(job),
                None => return,
            }
        }
        // Keep the batch open while misses keep coming, within max_wait.
        let hard_stop = Instant::now() + p.max_wait;
        let mut closed = false;
        while batch.len() < p.max_batch {
            let deadline = (Instant::now() + p.window).min(hard_stop);
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => batch.push(job),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Wait for a free slot; ids that queue meanwhile fill this batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        while batch.len() < p.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(p.max_batch));
        let origin = origin.clone();
        tasks.spawn_load(async move {
            send_batch(origin.as_ref(), jobs).await;
            drop(permit);
        });
        if closed {
            return;
        }
    }
}

async fn send_batch(origin: &dyn OriginSource, jobs: Vec<Job>) {
    // The same id can be queued twice (a flight superseded by an
    // invalidation and its successor); ask for it once.
    let mut ids: Vec<String> = Vec::with_capacity(jobs.len());
    for job in &jobs {
        if !ids.contains(&job.id) {
            ids.push(job.id.clone());
        }
    }
    let started = crate::tier::now_ms();
    let span = tracing::debug_span!("origin_batch", size = ids.len());
    let result = tracing::Instrument::instrument(origin.fetch_batch(&ids), span).await;
    match result {
        Ok(found) => {
            for job in jobs {
                let body = found.get(&job.id).cloned();
                let _ = job.reply.send(Ok((body, started)));
            }
        }
        Err(e) => {
            tracing::warn!(size = ids.len(), error = %e, "origin batch failed");
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
