use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use bytes::Bytes;

use super::record::Record;
use super::store::Store;
use super::*;

fn body(b: &'static [u8]) -> Option<Bytes> {
    Some(Bytes::from_static(b))
}

#[test]
fn jitter_only_shortens_and_spreads_expiry() {
    let m = MemoryTier::new(100, Duration::from_secs(100), 0.2, Duration::ZERO);
    let src = Entry::from_origin(body(b"{}"), now_ms(), Duration::from_secs(3600));
    let mut seen = HashSet::new();
    for i in 0..50 {
        let id = format!("{i}");
        m.put(&id, &src);
        let e = m.get(&id).expect("stored");
        let left = e.fresh_until.saturating_sub(now_ms());
        assert!((79_000..=100_000).contains(&left), "{left}");
        seen.insert(e.fresh_until / 1000);
    }
    assert!(seen.len() > 5, "expiries are not spread: {seen:?}");
}

#[test]
fn a_lower_origin_order_never_replaces_a_higher_one() {
    let m = MemoryTier::new(100, Duration::from_secs(100), 0.0, Duration::ZERO);
    let at = |order, b: &'static [u8]| Entry {
        order,
        ..Entry::from_origin(body(b), now_ms(), Duration::from_secs(60))
    };
    assert!(m.put("a", &at(5, b"v5")));
    assert!(!m.put("a", &at(4, b"v4")), "older value refused");
    assert!(
        m.put("a", &at(5, b"v5 again")),
        "the same order may rewrite"
    );
    assert!(
        m.put("a", &at(0, b"unordered")),
        "no order: written as before"
    );
    assert_eq!(
        m.get("a").and_then(|e| e.body).as_deref(),
        Some(&b"unordered"[..])
    );
    assert!(m.remove("a").is_some());
    assert!(m.put("a", &at(1, b"v1")), "after removal anything goes");
}

#[test]
fn capacity_bounds_entries() {
    let m = MemoryTier::new(10, Duration::from_secs(100), 0.0, Duration::ZERO);
    let src = Entry::from_origin(None, now_ms(), Duration::from_secs(60));
    for i in 0..100 {
        m.put(&format!("{i}"), &src);
    }
    assert!(m.entry_count() <= 10, "{}", m.entry_count());
}

#[test]
fn capacity_bounds_entries_over_every_shard() {
    // Eight shards; ids spread unevenly over them, but the store fills to
    // its capacity before anything is evicted.
    let m = MemoryTier::new(8192, Duration::from_secs(100), 0.0, Duration::ZERO);
    let src = Entry::from_origin(body(b"{}"), now_ms(), Duration::from_secs(60));
    for i in 0..8192 {
        m.put(&format!("{i}"), &src);
    }
    assert_eq!(m.entry_count(), 8192);
    assert!((0..8192).all(|i| m.get(&format!("{i}")).is_some()));
    for i in 8192..20_000 {
        m.put(&format!("{i}"), &src);
    }
    let n = m.entry_count();
    assert_eq!(n, 8192);
    let found = (0..20_000)
        .filter(|i| m.get(&format!("{i}")).is_some())
        .count();
    assert_eq!(found as u64, n, "every entry counted is found");
}

#[test]
fn get_answers_the_entry_as_put_and_remove_what_was_held() {
    let m = MemoryTier::new(100, Duration::from_secs(100), 0.0, Duration::from_secs(5));
    let now = now_ms();
    let e = Entry {
        version: 7,
        order: 3,
        ..Entry::from_origin(body(b"{\"id\":\"u1\"}"), now, Duration::from_secs(60))
    };
    m.put_exact("u1", e.clone());
    assert_eq!(m.get("u1"), Some(e.clone()));
    assert_eq!(m.get("u2"), None);
    assert_eq!(m.remove("u2"), None);
    assert_eq!(m.remove("u1"), Some(e));
    assert_eq!((m.get("u1"), m.remove("u1")), (None, None));
    m.put("n", &Entry::from_origin(None, now, Duration::from_secs(60)));
    assert_eq!(m.get("n").map(|e| e.body), Some(None), "a remembered 404");
}

#[test]
fn an_entry_is_not_served_after_its_stale_window() {
    let m = MemoryTier::new(100, Duration::from_secs(100), 0.0, Duration::ZERO);
    let e = |stale_until| Entry {
        fetched_at: 1,
        fresh_until: 1,
        stale_until,
        ..Entry::from_origin(body(b"{}"), 1, Duration::ZERO)
    };
    // Stored against the clock, read at chosen times.
    let until = now_ms() + 60_000;
    m.put_exact("a", e(until));
    assert!(m.get_at("a", until - 1).is_some(), "stale but usable");
    assert!(m.get_at("a", until).is_none(), "past its window");
    assert_eq!(m.entry_count(), 0, "dropped by the read that found it");
    // An entry already past its window replaces what was held.
    m.put_exact("b", e(u64::MAX));
    m.put_exact("b", e(1));
    assert!(m.get("b").is_none());
    assert_eq!(m.entry_count(), 0);
}

#[test]
fn clear_drops_everything() {
    let m = MemoryTier::new(100, Duration::from_secs(100), 0.0, Duration::ZERO);
    let src = Entry::from_origin(body(b"{}"), now_ms(), Duration::from_secs(60));
    for i in 0..50 {
        m.put(&format!("{i}"), &src);
    }
    m.clear();
    assert_eq!(m.entry_count(), 0);
    assert!(m.get("1").is_none());
    assert!(m.put("1", &src) && m.get("1").is_some(), "usable after");
}

/// Every id hashes alike: one slot per shard, and the id in the record
/// tells them apart.
#[derive(Default)]
struct Collide;

impl std::hash::Hasher for Collide {
    fn finish(&self) -> u64 {
        42
    }
    fn write(&mut self, _: &[u8]) {}
}

fn rec(id: &str, stale_until: u64) -> Record {
    let e = Entry {
        stale_until,
        ..Entry::from_origin(Some(Bytes::from(id.to_string())), 0, Duration::ZERO)
    };
    Record::pack(id, &e).expect("packed")
}

#[test]
fn ids_with_one_hash_are_told_apart_by_the_id_in_the_record() {
    let s = Store::with_hasher(100, 1, BuildHasherDefault::<Collide>::default());
    assert!(s.insert("a", rec("a", 10), 0, |_| false));
    assert!(s.insert("b", rec("b", 10), 0, |_| true), "not a's to keep");
    let body = |id| s.get(id, 0).and_then(|e| e.body);
    assert_eq!(body("a").as_deref(), Some(&b"a"[..]));
    assert_eq!(body("b").as_deref(), Some(&b"b"[..]));
    assert!(s.get("c", 0).is_none());
    assert!(s.remove("a").is_some());
    assert!(s.get("a", 0).is_none() && s.get("b", 0).is_some());
    assert_eq!(s.len(), 1);
}

#[test]
fn eviction_spares_what_was_read_since_the_hand_passed() {
    let one = OneShard::new(4);
    for id in ["a", "b", "c", "d"] {
        one.0.insert(id, rec(id, 10), 0, |_| false);
    }
    // Read a and c: the hand spares them and takes b, then d.
    assert!(one.0.get("a", 0).is_some() && one.0.get("c", 0).is_some());
    one.0.insert("e", rec("e", 10), 0, |_| false);
    one.0.insert("f", rec("f", 10), 0, |_| false);
    let held: Vec<bool> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|id| one.0.get(id, 0).is_some())
        .collect();
    assert_eq!(held, [true, false, true, false, true, true]);
}

#[test]
fn eviction_takes_a_record_past_its_window_even_if_read() {
    let one = OneShard::new(2);
    one.0.insert("old", rec("old", 5), 0, |_| false);
    one.0.insert("new", rec("new", 100), 0, |_| false);
    assert!(one.0.get("old", 0).is_some() && one.0.get("new", 0).is_some());
    one.0.insert("x", rec("x", 100), 50, |_| false);
    assert!(one.0.get("new", 50).is_some() && one.0.get("x", 50).is_some());
    assert_eq!(one.0.len(), 2);
}

/// A store of one shard, with a deterministic hasher.
struct OneShard(Store<BuildHasherDefault<Low>>);

impl OneShard {
    fn new(capacity: u64) -> OneShard {
        OneShard(Store::with_hasher(
            capacity,
            1,
            BuildHasherDefault::default(),
        ))
    }
}

#[derive(Default)]
struct Low(u64);

impl std::hash::Hasher for Low {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(b));
        }
    }
}
