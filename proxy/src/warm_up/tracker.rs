//! Per-interval request counts for the periodic warm-up. This is the one
//! thing `[warm_up]` adds to the request path, so it is built for it: the
//! counts are split over shards by a hash of the id, each behind its own
//! short mutex (no await ever happens under it), and an id already counted
//! this interval costs a lookup and an increment, no allocation. Only the
//! first lookup of an id in an interval allocates its key, and only while
//! fewer than `max_tracked` distinct ids are counted; past that, lookups of
//! new ids are counted as untracked instead, so the memory an interval can
//! take is bounded whatever ids clients send.
//!
//! An interval is a `Window`; `harvest` swaps in an empty one and ranks the
//! old one off the request path. A lookup that loaded the old window just
//! before the swap may land its count there after it was read: at most one
//! count per request in flight at that instant is lost, which a ranking of
//! a whole interval does not notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

/// Enough that two lookups rarely wait on each other on a large machine.
const SHARDS: usize = 16;

/// The counts of one interval.
struct Window {
    shards: [Mutex<HashMap<Box<str>, u64>>; SHARDS],
    /// Distinct ids counted, across shards; never above `max_tracked`.
    tracked: AtomicUsize,
    /// Lookups of ids that found no room.
    untracked: AtomicU64,
}

impl Window {
    fn new() -> Window {
        Window {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            tracked: AtomicUsize::new(0),
            untracked: AtomicU64::new(0),
        }
    }
}

/// What one interval saw, ranked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Harvest {
    /// The most requested ids with their counts, most requested first (ties
    /// by id, so a ranking is reproducible); at most the number asked for.
    pub top: Vec<(String, u64)>,
    /// Distinct ids counted.
    pub tracked: usize,
    /// Lookups of ids that were not counted (no room).
    pub untracked: u64,
    /// Lookups counted (of tracked ids).
    pub requests: u64,
}

pub struct Tracker {
    window: ArcSwap<Window>,
    max_tracked: usize,
}

/// Whether a lookup was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Yes,
    /// `max_tracked` distinct ids were already counted this interval.
    Untracked,
}

impl Tracker {
    pub fn new(max_tracked: usize) -> Tracker {
        Tracker {
            window: ArcSwap::from_pointee(Window::new()),
            max_tracked,
        }
    }

    /// Counts one lookup of `id` in the current interval.
    pub fn count(&self, id: &str) -> Counted {
        let window = self.window.load();
        let mut counts = lock(&window.shards[shard_of(id)]);
        if let Some(n) = counts.get_mut(id) {
            *n += 1;
            return Counted::Yes;
        }
        // The room is claimed before the insert, so concurrent first
        // lookups in other shards cannot overshoot the bound together.
        let claimed = window
            .tracked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_tracked).then_some(n + 1)
            });
        if claimed.is_err() {
            drop(counts);
            window.untracked.fetch_add(1, Ordering::Relaxed);
            return Counted::Untracked;
        }
        counts.insert(id.into(), 1);
        Counted::Yes
    }

    /// Distinct ids counted so far in the current interval.
    pub fn tracked(&self) -> usize {
        self.window.load().tracked.load(Ordering::Relaxed)
    }

    /// Lookups not counted so far in the current interval.
    pub fn untracked(&self) -> u64 {
        self.window.load().untracked.load(Ordering::Relaxed)
    }

    /// Ends the current interval: counting starts over from nothing, and the
    /// ended one is returned unranked (rank it with `Ended::rank`, off the
    /// request path: that is the costly part).
    pub fn end_interval(&self) -> Ended {
        Ended(self.window.swap(Arc::new(Window::new())))
    }

    /// Ends the interval and ranks it at once (tests, small intervals).
    pub fn harvest(&self, top: usize) -> Harvest {
        self.end_interval().rank(top)
    }
}

/// An interval that has ended, waiting to be ranked.
pub struct Ended(Arc<Window>);

impl Ended {
    /// The `top` most requested ids of the interval, and its totals.
    pub fn rank(self, top: usize) -> Harvest {
        let window = self.0;
        let mut all: Vec<(Box<str>, u64)> =
            Vec::with_capacity(window.tracked.load(Ordering::Relaxed));
        for shard in &window.shards {
            all.extend(std::mem::take(&mut *lock(shard)));
        }
        let requests = all.iter().map(|(_, n)| *n).sum();
        let tracked = all.len();
        let order =
            |a: &(Box<str>, u64), b: &(Box<str>, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
        if top == 0 {
            all.clear();
        } else if all.len() > top {
            // Linear, not a full sort: an interval may hold a million ids.
            all.select_nth_unstable_by(top - 1, order);
            all.truncate(top);
        }
        all.sort_unstable_by(order);
        Harvest {
            top: all.into_iter().map(|(id, n)| (id.into(), n)).collect(),
            tracked,
            untracked: window.untracked.load(Ordering::Relaxed),
            requests,
        }
    }
}

/// FNV-1a: cheap for short ids, and only picks a shard; the maps inside
/// keep their own keyed hash, so crafted ids can pile into one shard but
/// not degrade its map.
fn shard_of(id: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(t: &Tracker, id: &str, times: usize) {
        for _ in 0..times {
            t.count(id);
        }
    }

    fn ranked(h: &Harvest) -> Vec<(&str, u64)> {
        h.top.iter().map(|(id, n)| (id.as_str(), *n)).collect()
    }

    #[test]
    fn the_most_requested_come_first_and_ties_go_by_id() {
        let t = Tracker::new(100);
        count(&t, "c", 1);
        count(&t, "a", 5);
        count(&t, "d", 4);
        count(&t, "b", 4);
        let h = t.harvest(3);
        assert_eq!(ranked(&h), vec![("a", 5), ("b", 4), ("d", 4)]);
        assert_eq!((h.tracked, h.requests, h.untracked), (4, 14, 0));
    }

    #[test]
    fn top_larger_than_the_interval_returns_everything_ranked() {
        let t = Tracker::new(100);
        count(&t, "x", 2);
        count(&t, "y", 3);
        assert_eq!(ranked(&t.harvest(10)), vec![("y", 3), ("x", 2)]);
        assert!(t.harvest(0).top.is_empty());
    }

    #[test]
    fn selection_agrees_with_a_full_sort_on_many_ids() {
        let t = Tracker::new(10_000);
        // Counts 1..=37 repeating, so there are many ties across shards.
        let mut want: Vec<(String, u64)> = Vec::new();
        for i in 0..2000u64 {
            let id = format!("{i:x}");
            let n = 1 + (i * 7919) % 37;
            count(&t, &id, n as usize);
            want.push((id, n));
        }
        want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        want.truncate(100);
        let h = t.harvest(100);
        assert_eq!(h.top, want);
        assert_eq!(h.tracked, 2000);
    }

    #[test]
    fn past_max_tracked_new_ids_are_counted_as_untracked_and_known_ones_still_count() {
        let t = Tracker::new(3);
        for id in ["a", "b", "c"] {
            assert_eq!(t.count(id), Counted::Yes);
        }
        assert_eq!(t.count("d"), Counted::Untracked);
        assert_eq!(t.count("e"), Counted::Untracked);
        assert_eq!(t.count("d"), Counted::Untracked);
        assert_eq!(t.count("a"), Counted::Yes, "a tracked id keeps counting");
        assert_eq!((t.tracked(), t.untracked()), (3, 3));
        let h = t.harvest(10);
        assert_eq!(ranked(&h), vec![("a", 2), ("b", 1), ("c", 1)]);
        assert_eq!((h.tracked, h.untracked, h.requests), (3, 3, 4));
    }

    #[test]
    fn each_interval_starts_from_nothing() {
        let t = Tracker::new(2);
        count(&t, "a", 3);
        count(&t, "b", 1);
        t.count("c");
        let first = t.harvest(1);
        assert_eq!(ranked(&first), vec![("a", 3)]);
        assert_eq!((t.tracked(), t.untracked()), (0, 0));
        // The bound is per interval: there is room again.
        count(&t, "c", 2);
        count(&t, "d", 1);
        let second = t.harvest(5);
        assert_eq!(ranked(&second), vec![("c", 2), ("d", 1)]);
        assert_eq!((second.tracked, second.untracked), (2, 0));
        assert_eq!(t.harvest(5), Harvest::default());
    }

    #[test]
    fn concurrent_first_lookups_never_overshoot_the_bound() {
        let t = Arc::new(Tracker::new(500));
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        t.count(&format!("{k}-{i}"));
                        t.count("shared");
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("counting thread");
        }
        let h = t.harvest(1);
        assert_eq!(h.tracked, 500);
        // "shared" got in first (each thread counts it after its first id).
        assert_eq!(ranked(&h), vec![("shared", 4000)]);
        assert_eq!(h.requests + h.untracked, 8000);
    }
}
