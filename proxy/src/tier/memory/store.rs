//! The table behind the memory tier: shards, each a dense vector of
//! records (`slots`) and an `Index` from key hash to slot, evicted by CLOCK
//! (second chance) over the index. A hit is one shard lock, one index cell,
//! one slot and the record itself; the only write is the cell's read flag,
//! and only when it was clear. It replaces moka here because moka's own
//! bookkeeping per entry (about 320 bytes: key `Arc`, bucket, entry info,
//! deque nodes, frequency sketch) was more than the whole budget per
//! cached profile, whatever the key and value types (figures in
//! `memory/mod.rs`).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::index::{Found, Index};
use super::record::Record;
use crate::tier::Entry;

/// Shards bound lock contention; more than a few per core buys nothing.
const MAX_SHARDS: usize = 64;
/// Below this many entries per shard, uneven spreading of ids over shards
/// would evict early; a small cache is one shard.
const MIN_PER_SHARD: usize = 1024;

/// Keyed with a random seed per store: ids come from clients, who must not
/// be able to aim them all at one run of the index.
pub(super) type Hasher = foldhash::quality::FixedState;

pub(super) struct Store<S = Hasher> {
    shards: Box<[Mutex<Shard>]>,
    hasher: S,
    /// Records held across shards, bounded by `capacity`: a shard may hold
    /// more than its share while others hold less, so that ids spreading
    /// unevenly over shards do not evict before the whole is full.
    len: AtomicUsize,
    capacity: usize,
}

struct Shard {
    index: Index,
    slots: Vec<Record>,
    /// The CLOCK hand: the next index cell eviction looks at.
    hand: usize,
    /// Its part of the capacity, which its vector and index are sized for.
    share: usize,
}

impl Store {
    pub fn new(capacity: u64) -> Store {
        Store::with_hasher(capacity, MAX_SHARDS, Hasher::with_seed(rand::random()))
    }
}

impl<S: BuildHasher> Store<S> {
    /// At most `max_shards` shards.
    pub fn with_hasher(capacity: u64, max_shards: usize, hasher: S) -> Store<S> {
        let capacity = usize::try_from(capacity)
            .unwrap_or(usize::MAX)
            .clamp(1, Index::MAX_SLOTS);
        let n = shard_count(capacity, max_shards);
        // Shard capacities add up to `capacity` exactly.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    index: Index::default(),
                    slots: Vec::new(),
                    hand: 0,
                    share: capacity / n + usize::from(i < capacity % n),
                })
            })
            .collect();
        Store {
            shards,
            hasher,
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// The entry held for `id`, unless its stale window ended by `now` (it
    /// is dropped then).
    pub fn get(&self, id: &str, now: u64) -> Option<Entry> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let mut shard = self.shard(hash);
        let f = shard.find(tag(hash), id)?;
        let record = &shard.slots[f.slot];
        if record.stale_until() <= now {
            self.take(&mut shard, f);
            return None;
        }
        let entry = record.entry();
        shard.index.visit(f.cell);
        Some(entry)
    }

    /// Stores `record` unless `id` holds a usable record `keep_held`
    /// prefers (false then). A record already past its stale window is not
    /// stored, but still replaces what `id` held.
    pub fn insert(
        &self,
        id: &str,
        record: Record,
        now: u64,
        keep_held: impl FnOnce(&Record) -> bool,
    ) -> bool {
        let hash = self.hasher.hash_one(id.as_bytes());
        let mut shard = self.shard(hash);
        let held = shard.find(tag(hash), id);
        if let Some(f) = held {
            let old = &shard.slots[f.slot];
            if old.stale_until() > now && keep_held(old) {
                return false;
            }
        }
        match held {
            Some(f) if record.stale_until() <= now => drop(self.take(&mut shard, f)),
            Some(f) => shard.slots[f.slot] = record,
            None if record.stale_until() <= now => {}
            None if self.len.fetch_add(1, Ordering::Relaxed) < self.capacity => {
                shard.push(tag(hash), record);
            }
            None => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                shard.replace_victim(tag(hash), record, now);
            }
        }
        true
    }

    /// Removes `id`; answers the record it held.
    pub fn remove(&self, id: &str) -> Option<Record> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let mut shard = self.shard(hash);
        let f = shard.find(tag(hash), id)?;
        Some(self.take(&mut shard, f))
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = lock(s);
            self.len.fetch_sub(s.slots.len(), Ordering::Relaxed);
            // Dropped, not cleared: the memory goes back too.
            s.index = Index::default();
            s.slots = Vec::new();
            s.hand = 0;
        }
    }

    /// Records held, including any past their stale window that no read or
    /// eviction has dropped yet.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn take(&self, shard: &mut Shard, f: Found) -> Record {
        self.len.fetch_sub(1, Ordering::Relaxed);
        shard.remove_at(f, &self.hasher)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The high half picks the shard, the low half is the index's tag.
        lock(&self.shards[(hash >> 32) as usize % self.shards.len()])
    }
}

fn tag(hash: u64) -> u32 {
    hash as u32
}

/// Between half of `max_shards` and all of them (fewer for a small
/// capacity), the count whose indexes, once full, take the fewest cells:
/// index tables come in powers of two, and a shard just over one wastes
/// almost half of the next.
fn shard_count(capacity: usize, max_shards: usize) -> usize {
    let hi = (capacity / MIN_PER_SHARD).clamp(1, max_shards.max(1));
    let lo = (hi / 2).max(1);
    (lo..=hi)
        .rev()
        .min_by_key(|&n| n * Index::cells_for(capacity.div_ceil(n)))
        .unwrap_or(1)
}

fn lock(s: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Every update of a shard is a few assignments with no user code in
    // between: a panic elsewhere cannot leave one half done.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn find(&self, tag: u32, id: &str) -> Option<Found> {
        let slots = &self.slots;
        self.index.find(tag, |s| slots[s].id() == id.as_bytes())
    }

    fn push(&mut self, tag: u32, record: Record) {
        let len = self.slots.len();
        if len == self.slots.capacity() {
            // Grow by a quarter up to the share, by a little past it, not
            // double: the vector is the larger part of the table's own
            // memory, and a full cache would waste half of a doubled one.
            let more = if len < self.share {
                (len / 4).max(16).min(self.share - len)
            } else {
                (self.share / 32).max(16)
            };
            self.slots.reserve_exact(more);
        }
        self.index.insert(tag, len);
        self.slots.push(record);
    }

    /// The store is full: the CLOCK victim's slot takes the new record (the
    /// record is dropped if this shard holds none).
    fn replace_victim(&mut self, tag: u32, record: Record, now: u64) {
        let slots = &self.slots;
        let Some(victim) = self
            .index
            .sweep(&mut self.hand, |s| slots[s].stale_until() <= now)
        else {
            return;
        };
        self.index.remove(victim.cell);
        self.slots[victim.slot] = record;
        self.index.insert(tag, victim.slot);
    }

    /// Takes the record of `f` out; the last slot moves into its place.
    fn remove_at(&mut self, f: Found, hasher: &impl BuildHasher) -> Record {
        self.index.remove(f.cell);
        let gone = self.slots.swap_remove(f.slot);
        if let Some(moved) = self.slots.get(f.slot) {
            let moved_tag = tag(hasher.hash_one(moved.id()));
            self.index.repoint(moved_tag, self.slots.len(), f.slot);
        }
        gone
    }
}
