//! Background tasks: every loop the proxy runs besides the listeners (the
//! batcher, Redis retries, file watchers, and the consumers to come) is
//! spawned here with a name and sees one drain signal. `App::shutdown`
//! stops the listeners first, then calls `Tasks::shutdown`, which raises the
//! signal, waits for the tasks to return, and aborts whatever is still
//! running after the grace period, so no task outlives the app.
//!
//! Loads that requests wait on are tracked too (`spawn_load`): they are
//! short and bounded by upstream timeouts, and a drain waits for them like
//! for any other task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The drain signal as a task sees it.
#[derive(Clone)]
pub struct Drain(CancellationToken);

impl Drain {
    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// The registry of named background tasks. A `scope` shares the registry
/// and sees the drain signal too, and can also be stopped on its own (a
/// component that a reload replaces).
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Inner>,
    token: CancellationToken,
}

#[derive(Default)]
struct Inner {
    tracker: TaskTracker,
    next: AtomicU64,
    /// Named tasks still running, for logs and the abort at the end.
    named: Mutex<HashMap<u64, (&'static str, AbortHandle)>>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    pub fn drain(&self) -> Drain {
        Drain(self.token.clone())
    }

    /// Tasks spawned through the returned handle stop on the drain or when
    /// `stop` is called on it, whichever comes first.
    pub fn scope(&self) -> Tasks {
        Tasks {
            inner: self.inner.clone(),
            token: self.token.child_token(),
        }
    }

    /// Raises this scope's stop signal (the whole registry's, on the root).
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Spawns a named background loop. It gets the drain signal and should
    /// return soon after it fires.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(Drain) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.drain());
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::downgrade(&self.inner);
        // Registered before the task can run to its end and unregister.
        let mut named = lock(&self.inner.named);
        let handle = self.inner.tracker.spawn(async move {
            fut.await;
            if let Some(inner) = inner.upgrade() {
                lock(&inner.named).remove(&id);
            }
        });
        named.insert(id, (name, handle.abort_handle()));
        drop(named);
        tracing::debug!(task = name, "background task started");
    }

    /// Spawns a short task that requests wait on (a load); tracked for the
    /// drain but not named.
    pub fn spawn_load<Fut>(&self, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(fut);
    }

    /// Tasks still running (named and loads).
    pub fn running(&self) -> usize {
        self.inner.tracker.len()
    }

    /// The names of the named tasks still running.
    pub fn running_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = lock(&self.inner.named).values().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v
    }

    /// Raises the drain signal, waits up to `grace` for every task, then
    /// aborts the rest and waits for them to go.
    pub async fn shutdown(&self, grace: Duration) {
        self.token.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            let names = self.running_names();
            tracing::warn!(?grace, tasks = ?names, "background tasks did not stop in time; aborting them");
            for (_, h) in lock(&self.inner.named).values() {
                h.abort();
            }
            // Loads are bounded by upstream timeouts; aborted named tasks end
            // at their next await.
            self.inner.tracker.wait().await;
        }
        tracing::debug!("background tasks stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_tasks_that_honour_the_drain() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn("ticker", move |drain| async move {
            loop {
                tokio::select! {
                    _ = drain.wait() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => { let _ = tx.try_send(()); }
                }
            }
        });
        rx.recv().await.expect("the task ticks");
        assert_eq!(tasks.running_names(), vec!["ticker"]);
        tasks.shutdown(Duration::from_secs(5)).await;
        assert_eq!(tasks.running(), 0);
        assert!(tasks.running_names().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_tasks_that_ignore_the_drain() {
        let tasks = Tasks::new();
        tasks.spawn("stubborn", |_drain| async move {
            std::future::pending::<()>().await;
        });
        tasks.spawn_load(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        assert_eq!(tasks.running(), 2);
        tasks.shutdown(Duration::from_secs(1)).await;
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_stops_alone_and_with_the_drain() {
        let tasks = Tasks::new();
        let loop_until_drained = |drain: Drain| async move { drain.wait().await };
        let a = tasks.scope();
        a.spawn("a", loop_until_drained);
        let b = tasks.scope();
        b.spawn("b", loop_until_drained);
        assert_eq!(tasks.running_names(), vec!["a", "b"]);
        a.stop();
        while tasks.running_names() != vec!["b"] {
            tokio::task::yield_now().await;
        }
        tasks.shutdown(Duration::from_secs(1)).await;
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_tasks_leave_the_registry() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("once", |_d| async move {
            let _ = tx.send(());
        });
        rx.await.expect("ran");
        tokio::task::yield_now().await;
        assert!(tasks.running_names().is_empty());
    }
}
