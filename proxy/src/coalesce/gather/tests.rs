//! The gathered calls against a counting fake tier: what one tick
//! gathers, how answers and failures fan out, and calls after the task
//! stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Gathered;
use crate::lifecycle::Tasks;
use crate::tier::{Entry, Stored, Tier, TierError, TierKind, Written};

/// Answers each id with a version equal to its length; records every call.
#[derive(Default)]
struct Counting {
    calls: Mutex<Vec<Vec<String>>>,
    writes: Mutex<Vec<Vec<String>>>,
    failing: AtomicBool,
}

impl Counting {
    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl Tier for Counting {
    fn kind(&self) -> TierKind {
        TierKind::Redis
    }
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError> {
        self.calls
            .lock()
            .expect("lock")
            .push(ids.iter().map(|s| s.to_string()).collect());
        if self.failing.load(Ordering::Relaxed) {
            return Err(TierError::Failed {
                tier: "redis",
                detail: "down".into(),
            });
        }
        Ok(ids
            .iter()
            .map(|id| Stored::reached(None, id.len() as u64))
            .collect())
    }
    /// Takes an entry whose version is even; refuses the others.
    async fn put_many(&self, e: &[(String, Entry)]) -> Result<Vec<Written>, TierError> {
        self.writes
            .lock()
            .expect("lock")
            .push(e.iter().map(|(id, _)| id.clone()).collect());
        Ok(e.iter()
            .map(|(_, e)| {
                if e.version % 2 == 0 {
                    Written::Yes
                } else {
                    Written::Superseded
                }
            })
            .collect())
    }
    async fn remove(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        Ok(vec![0; ids.len()])
    }
    async fn remove_all(&self) -> Result<u64, TierError> {
        Ok(0)
    }
}

fn ids(s: &[&str]) -> Vec<Arc<str>> {
    s.iter().map(|s| Arc::from(*s)).collect()
}

fn versions(r: Result<Vec<Stored>, TierError>) -> Vec<u64> {
    r.expect("read").iter().map(|s| s.version).collect()
}

#[tokio::test(start_paused = true)]
async fn the_reads_of_one_tick_are_one_call_and_each_gets_its_part() {
    let tier = Arc::new(Counting::default());
    let tasks = Tasks::new();
    let reads = Arc::new(Gathered::start(tier.clone(), &tasks));
    let mut joins = Vec::new();
    for set in [&["a"][..], &["bb", "ccc"][..], &["dddd"][..]] {
        let (r, set) = (reads.clone(), ids(set));
        joins.push(tokio::spawn(async move { r.get_many(set).await }));
    }
    let mut got = Vec::new();
    for j in joins {
        got.push(versions(j.await.expect("task")));
    }
    assert_eq!(got, vec![vec![1], vec![2, 3], vec![4]]);
    assert_eq!(tier.calls(), vec![vec!["a", "bb", "ccc", "dddd"]]);
    // A later read is a call of its own.
    assert_eq!(versions(reads.get_many(ids(&["ee"])).await), vec![2]);
    assert_eq!(tier.calls().len(), 2);
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_fails_every_read_it_carried() {
    let tier = Arc::new(Counting::default());
    tier.failing.store(true, Ordering::Relaxed);
    let tasks = Tasks::new();
    let reads = Arc::new(Gathered::start(tier.clone(), &tasks));
    let (r1, r2) = (reads.clone(), reads.clone());
    let a = tokio::spawn(async move { r1.get_many(ids(&["a"])).await });
    let b = tokio::spawn(async move { r2.get_many(ids(&["b"])).await });
    assert!(a.await.expect("task").is_err());
    assert!(b.await.expect("task").is_err());
    assert_eq!(tier.calls().len(), 1);
    tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn after_the_drain_a_read_goes_to_the_tier_itself() {
    let tier = Arc::new(Counting::default());
    let tasks = Tasks::new();
    let reads = Gathered::start(tier.clone(), &tasks);
    tasks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(versions(reads.get_many(ids(&["abc"])).await), vec![3]);
    assert_eq!(tier.calls(), vec![vec!["abc"]]);
}

fn entries(ids: &[(&str, u64)]) -> Vec<(String, Entry)> {
    ids.iter()
        .map(|(id, v)| {
            let e = Entry::from_origin(None, 0, Duration::from_secs(1));
            (id.to_string(), Entry { version: *v, ..e })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_writes_of_one_tick_are_one_call_and_each_gets_its_answers() {
    let tier = Arc::new(Counting::default());
    let tasks = Tasks::new();
    let calls = Arc::new(Gathered::start(tier.clone(), &tasks));
    let mut joins = Vec::new();
    for set in [&[("a", 0)][..], &[("b", 1), ("c", 2)][..]] {
        let (c, set) = (calls.clone(), entries(set));
        joins.push(tokio::spawn(async move { c.put_many(set).await }));
    }
    let mut got = Vec::new();
    for j in joins {
        got.push(j.await.expect("task").expect("written"));
    }
    assert_eq!(
        got,
        vec![vec![Written::Yes], vec![Written::Superseded, Written::Yes]]
    );
    assert_eq!(
        *tier.writes.lock().expect("lock"),
        vec![vec!["a", "b", "c"]]
    );
    tasks.shutdown(Duration::from_secs(1)).await;
}
