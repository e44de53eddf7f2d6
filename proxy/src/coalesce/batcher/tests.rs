//! The batcher against a fake origin on a paused clock: batch sizes, the
//! window, the in-flight bound and error fan-out, as counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::Semaphore;

use super::{BatchParams, Batcher, OriginSource};
use crate::lifecycle::Tasks;
use crate::origin::{LoadError, OriginCalls, OriginTarget};

/// Records every call; knows ids that start with `u`; fails batches that
/// contain `boom`; holds each call until the gate gives it a permit.
struct FakeOrigin {
    batches: Mutex<Vec<Vec<String>>>,
    singles: Mutex<Vec<String>>,
    gate: Semaphore,
    started: Semaphore,
}

impl FakeOrigin {
    fn new(open: bool) -> Arc<FakeOrigin> {
        Arc::new(FakeOrigin {
            batches: Mutex::default(),
            singles: Mutex::default(),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
            started: Semaphore::new(0),
        })
    }

    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().expect("lock").clone()
    }

    async fn pass(&self) {
        self.started.add_permits(1);
        self.gate.acquire().await.expect("gate").forget();
    }
}

#[async_trait::async_trait]
impl OriginSource for FakeOrigin {
    async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError> {
        self.batches.lock().expect("lock").push(ids.to_vec());
        self.pass().await;
        if ids.iter().any(|i| i == "boom") {
            return Err(LoadError::Status {
                call: "batch",
                status: 500,
            });
        }
        Ok(ids
            .iter()
            .filter(|i| i.starts_with('u'))
            .map(|i| (i.clone(), Bytes::from(format!("{{\"id\":\"{i}\"}}"))))
            .collect())
    }

    async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError> {
        self.singles.lock().expect("lock").push(id.to_string());
        self.pass().await;
        Ok(id
            .starts_with('u')
            .then(|| Bytes::from(format!("{{\"id\":\"{id}\"}}"))))
    }

    fn calls(&self) -> OriginCalls {
        OriginCalls::default()
    }

    fn retarget(&self, _: OriginTarget) {}
}

fn params() -> BatchParams {
    BatchParams {
        batching: true,
        max_batch: 50,
        window: Duration::from_millis(1),
        max_wait: Duration::from_millis(10),
        max_inflight: 8,
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_burst_goes_out_in_full_batches_each_id_once() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let b = Batcher::start(params(), origin.clone(), &tasks);
    let want = ids(120);
    let got = join_all(want.iter().map(|id| b.load(id))).await;
    for (id, r) in want.iter().zip(&got) {
        let (body, _) = r.as_ref().expect("loaded");
        assert_eq!(
            body.as_deref(),
            Some(format!("{{\"id\":\"{id}\"}}").as_bytes())
        );
    }
    let sizes: Vec<usize> = origin.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![50, 50, 20]);
    let mut asked: Vec<String> = origin.batches().concat();
    asked.sort();
    let mut expected = want.clone();
    expected.sort();
    assert_eq!(asked, expected, "every id asked exactly once");
    drop(b);
    tasks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(tasks.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lone_miss_waits_for_the_window_only() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let b = Arc::new(Batcher::start(params(), origin.clone(), &tasks));
    let b2 = b.clone();
    let started = tokio::time::Instant::now();
    let h = tokio::spawn(async move { b2.load("u1").await });
    let r = h.await.expect("task");
    assert!(r.is_ok());
    // The batch left after the quiet window (1 ms), not after max_wait.
    assert_eq!(started.elapsed(), Duration::from_millis(1));
    assert_eq!(origin.batches(), vec![vec!["u1".to_string()]]);
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn max_wait_closes_a_batch_that_keeps_growing() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    // The timer wheel counts whole milliseconds, so the window is wider
    // than the gap between misses by more than one tick.
    let p = BatchParams {
        window: Duration::from_millis(5),
        max_wait: Duration::from_millis(20),
        ..params()
    };
    let b = Arc::new(Batcher::start(p, origin.clone(), &tasks));
    // One miss every 1 ms: the window never goes quiet, so max_wait (20
    // ms) ends the batch.
    let mut handles = Vec::new();
    for i in 0..30 {
        let b = b.clone();
        handles.push(tokio::spawn(async move { b.load(&format!("u{i}")).await }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for h in handles {
        assert!(h.await.expect("task").is_ok());
    }
    let sizes: Vec<usize> = origin.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 30);
    assert!(sizes[0] >= 20 && sizes[0] <= 22, "first batch {sizes:?}");
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn at_most_max_inflight_batches_run_and_the_rest_queue_into_full_batches() {
    let origin = FakeOrigin::new(false);
    let tasks = Tasks::new();
    let p = BatchParams {
        max_inflight: 2,
        max_batch: 10,
        ..params()
    };
    let b = Arc::new(Batcher::start(p, origin.clone(), &tasks));
    let mut handles = Vec::new();
    for id in ids(45) {
        let b = b.clone();
        handles.push(tokio::spawn(async move { b.load(&id).await }));
    }
    // Two calls reach the origin and hold there.
    let _two = origin.started.acquire_many(2).await.expect("started");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(origin.batches().len(), 2, "only two batches in flight");
    origin.gate.add_permits(1_000);
    for h in handles {
        assert!(h.await.expect("task").is_ok());
    }
    let sizes: Vec<usize> = origin.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 10, 10, 5]);
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_origin_error_fails_only_its_batch() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let p = BatchParams {
        max_batch: 3,
        ..params()
    };
    let b = Batcher::start(p, origin.clone(), &tasks);
    let want: Vec<String> = ["u1", "boom", "u2", "u3", "u4", "x5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = join_all(want.iter().map(|id| b.load(id))).await;
    assert!(got[..3]
        .iter()
        .all(|r| matches!(r, Err(LoadError::Status { status: 500, .. }))));
    assert_eq!(got[3].as_ref().map(|(b, _)| b.is_some()), Ok(true));
    assert_eq!(got[4].as_ref().map(|(b, _)| b.is_some()), Ok(true));
    assert_eq!(
        got[5].as_ref().map(|(b, _)| b.is_some()),
        Ok(false),
        "unknown id: not found"
    );
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_id_queued_twice_is_asked_once() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let b = Batcher::start(params(), origin.clone(), &tasks);
    let (a, c) = tokio::join!(b.load("u1"), b.load("u1"));
    assert!(a.is_ok() && c.is_ok());
    assert_eq!(origin.batches(), vec![vec!["u1".to_string()]]);
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn without_batching_each_id_is_one_single_call() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let p = BatchParams {
        batching: false,
        ..params()
    };
    let b = Batcher::start(p, origin.clone(), &tasks);
    let got = join_all(ids(5).iter().map(|id| b.load(id))).await;
    assert!(got.iter().all(Result::is_ok));
    assert_eq!(origin.singles.lock().expect("lock").len(), 5);
    assert!(origin.batches().is_empty());
    assert!(tasks.running_names().is_empty(), "no batch loop started");
}

#[tokio::test(start_paused = true)]
async fn the_drain_stops_an_idle_batcher() {
    let origin = FakeOrigin::new(true);
    let tasks = Tasks::new();
    let b = Batcher::start(params(), origin, &tasks);
    assert_eq!(tasks.running_names(), vec!["batcher"]);
    tasks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(tasks.running(), 0);
    assert!(matches!(b.load("u1").await, Err(LoadError::Abandoned(_))));
}
