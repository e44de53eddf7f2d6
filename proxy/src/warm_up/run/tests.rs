//! Warm-ups against a fake origin on a paused clock: the chunks keep half
//! the batcher's slots free and go out as whole batches, each id is loaded
//! once, and every outcome is told apart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::Config;
use crate::lifecycle::Tasks;
use crate::lookup::Loaded;
use crate::metrics::Metrics;
use crate::origin::{LoadError, OriginCalls, OriginSource, OriginTarget};
use crate::tier::Entry;

/// Knows every id except those starting with `x`; each batch takes 10 ms
/// (of paused time), so batches sent together overlap.
#[derive(Default)]
struct FakeOrigin {
    batches: Mutex<Vec<Vec<String>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    failing: AtomicBool,
}

#[async_trait::async_trait]
impl OriginSource for FakeOrigin {
    async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError> {
        self.batches.lock().expect("lock").push(ids.to_vec());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(LoadError::Status {
                call: "batch",
                status: 503,
            });
        }
        Ok(ids
            .iter()
            .filter(|id| !id.starts_with('x'))
            .map(|id| (id.clone(), Bytes::from(format!("{{\"id\":\"{id}\"}}"))))
            .collect())
    }
    async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError> {
        let mut m = self.fetch_batch(&[id.to_string()]).await?;
        Ok(m.remove(id))
    }
    fn calls(&self) -> OriginCalls {
        OriginCalls::default()
    }
    fn retarget(&self, _: OriginTarget) {}
}

struct Setup {
    profiles: Arc<Profiles>,
    origin: Arc<FakeOrigin>,
    metrics: Arc<Metrics>,
    counters: Counters,
    tasks: Tasks,
}

fn setup(max_batch: usize, max_inflight: usize) -> Setup {
    let mut cfg = Config::default();
    cfg.profiles.id_pattern = "^[a-z0-9]+$".into();
    cfg.coalescing.max_batch = max_batch;
    cfg.coalescing.max_inflight_batches = max_inflight;
    let origin = Arc::new(FakeOrigin::default());
    let metrics = Arc::new(Metrics::new());
    let tasks = Tasks::new();
    let profiles = Profiles::with_origin(&cfg, origin.clone(), metrics.clone(), tasks.clone())
        .expect("profiles");
    Setup {
        counters: Counters::new(&metrics),
        profiles,
        origin,
        metrics,
        tasks,
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn counted(m: &Metrics, source: &str, outcome: &str) -> u64 {
    m.warm_up_ids.with_label_values(&[source, outcome]).get()
}

#[test]
fn chunks_are_whole_batches_over_half_the_slots() {
    let p = |max_batch, max_inflight| BatchParams {
        batching: true,
        max_batch,
        window: Duration::from_millis(1),
        max_wait: Duration::from_millis(10),
        max_inflight,
    };
    assert_eq!(chunk_size(p(50, 8)), 200);
    assert_eq!(chunk_size(p(50, 3)), 50);
    assert_eq!(chunk_size(p(50, 1)), 50);
    assert_eq!(chunk_size(p(1, 1)), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cold_list_goes_out_in_full_batches_and_never_takes_more_than_half_the_slots() {
    let s = setup(5, 4);
    let list = ids("u", 47);
    let tally = warm(&s.profiles, &s.counters, &list, Source::Admin).await;
    assert_eq!(
        tally,
        Tally {
            loaded: 47,
            ..Tally::default()
        }
    );
    let batches = s.origin.batches.lock().expect("lock").clone();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    // Chunks of 10 ids: two full batches each, the last chunk 5 + 2.
    assert_eq!(sizes, vec![5, 5, 5, 5, 5, 5, 5, 5, 5, 2], "{batches:?}");
    let asked: HashSet<&String> = batches.iter().flatten().collect();
    assert_eq!(asked.len(), 47, "each id asked once");
    assert_eq!(s.origin.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(counted(&s.metrics, "admin", "loaded"), 47);
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn cached_loaded_not_found_and_failed_are_told_apart() {
    let s = setup(50, 8);
    let first = warm(
        &s.profiles,
        &s.counters,
        &["a".into(), "b".into(), "x1".into()],
        Source::Periodic,
    )
    .await;
    assert_eq!((first.loaded, first.not_found), (2, 1));
    // a and b are in memory now; x1 is a remembered "not found".
    let second = warm(
        &s.profiles,
        &s.counters,
        &["a".into(), "b".into(), "x1".into(), "c".into()],
        Source::Periodic,
    )
    .await;
    assert_eq!(
        (
            second.cached,
            second.loaded,
            second.not_found,
            second.failed
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(s.origin.batches.lock().expect("lock").len(), 2);
    s.origin.failing.store(true, Ordering::SeqCst);
    let third = warm(&s.profiles, &s.counters, &["d".into()], Source::Admin).await;
    assert_eq!(third.failed, 1);
    assert!(
        third
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "{third:?}"
    );
    assert_eq!(counted(&s.metrics, "periodic", "cached"), 2);
    assert_eq!(counted(&s.metrics, "periodic", "loaded"), 3);
    assert_eq!(counted(&s.metrics, "periodic", "not_found"), 2);
    assert_eq!(counted(&s.metrics, "admin", "failed"), 1);
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn a_stale_copy_is_a_failure_and_a_known_absence_is_not_found() {
    let body = Some(Bytes::from_static(b"{\"id\":\"a\"}"));
    let loaded = |body: Option<Bytes>, tier, stale| -> Outcome {
        Ok(Loaded {
            entry: Entry::from_origin(body, 0, Duration::from_secs(1)),
            tier,
            stale,
        })
    };
    assert_eq!(
        Kind::of(&loaded(body.clone(), TierKind::Memory, false)),
        Kind::Cached
    );
    assert_eq!(
        Kind::of(&loaded(body.clone(), TierKind::Redis, false)),
        Kind::Loaded
    );
    assert_eq!(
        Kind::of(&loaded(body.clone(), TierKind::Origin, false)),
        Kind::Loaded
    );
    assert_eq!(
        Kind::of(&loaded(body, TierKind::Memory, true)),
        Kind::Failed
    );
    assert_eq!(
        Kind::of(&loaded(None, TierKind::Memory, false)),
        Kind::NotFound
    );
    assert_eq!(
        Kind::of(&loaded(None, TierKind::Origin, false)),
        Kind::NotFound
    );
    assert_eq!(Kind::of(&Err(LoadError::Superseded)), Kind::Failed);
}
