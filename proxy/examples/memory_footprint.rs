//! The memory tier at scale, without HTTP: bytes per cached profile and the
//! cost of a `get` for uniform random ids against one hot id.
//!
//! `cargo run --release -p profile-edge --example memory_footprint -- 1000000`
//!
//! Fills a `MemoryTier` of that capacity with that many 320-byte profile
//! bodies under the simulator's ids (`testkit::user_id`), through `put` as a
//! load does, and prints the RSS growth per entry and per 100k entries
//! (VmRSS, so it counts the allocator's overhead too). Then it times
//! `get` over uniform random ids and over one hot id (wall clock, noisy on
//! a loaded machine). For counts that do not depend on load, run one loop
//! alone under callgrind and divide its instructions (and, with
//! `--cache-sim=yes`, its last-level misses) by the number of gets:
//!
//! `valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*gets*' \
//!   target/release/examples/memory_footprint 1000000 random`
//!
//! (the second argument, `random` or `hot`, runs only that loop; the gets
//! are counted in the summary line).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use profile_edge::testkit::user_id;
use profile_edge::tier::memory::MemoryTier;
use profile_edge::tier::{now_ms, Entry};

/// Gets per timed loop.
const GETS: usize = 2_000_000;
const BODY: usize = 320;

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("entries"));
    let only = args.next();
    let ids: Vec<String> = (0..entries).map(user_id).collect();
    // The random sequence is drawn before anything is measured.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let picks: Vec<u32> = (0..GETS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % entries as u64) as u32
        })
        .collect();

    let tier = MemoryTier::new(
        entries as u64,
        Duration::from_secs(3600),
        0.1,
        Duration::from_secs(3600),
    );
    let before = rss();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        // A fresh buffer per profile, as a load gets from the origin.
        tier.put(
            id,
            &Entry::from_origin(Some(body(i, id)), now_ms(), Duration::from_secs(3600)),
        );
    }
    let filled = started.elapsed();
    let held = tier.entry_count();
    let grown = rss().saturating_sub(before);
    let per_entry = grown as f64 / held.max(1) as f64;
    println!(
        "entries {held} of {entries} put in {filled:.2?}; RSS growth {:.1} MiB: {per_entry:.0} bytes per entry, {:.1} MiB per 100k",
        grown as f64 / MIB,
        per_entry * 100_000.0 / MIB,
    );

    let hot = ids[entries / 2].as_str();
    if only.as_deref() != Some("hot") {
        let t = Instant::now();
        let found = gets_random(&tier, &ids, &picks);
        let ns = t.elapsed().as_nanos() as f64 / GETS as f64;
        println!("random ids: {GETS} gets, {found} found, {ns:.0} ns per get (wall clock)");
    }
    if only.as_deref() != Some("random") {
        let t = Instant::now();
        let found = gets_hot(&tier, hot);
        let ns = t.elapsed().as_nanos() as f64 / GETS as f64;
        println!("one hot id: {GETS} gets, {found} found, {ns:.0} ns per get (wall clock)");
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A profile-shaped JSON body padded to `BODY` bytes.
fn body(i: usize, id: &str) -> Bytes {
    let mut b = format!(
        "{{\"id\":\"{id}\",\"displayName\":\"User {i}\",\"avatarUrl\":\"https://cdn.example.com/avatars/{id}.png?v=1\",\"bio\":\"Synthetic profile #{i}.\",\"location\":\"Lisbon\",\"updatedAt\":\"2026-01-01T00:00:00Z\",\"version\":1}}"
    )
    .into_bytes();
    b.resize(BODY, b' ');
    Bytes::from(b)
}

#[inline(never)]
fn gets_random(tier: &MemoryTier, ids: &[String], picks: &[u32]) -> usize {
    let mut found = 0;
    for &p in picks {
        if let Some(e) = tier.get(&ids[p as usize]) {
            // Touch the body as a response write would.
            found += usize::from(black_box(e.body.as_deref().map_or(0, |b| b[b.len() - 1])) > 0);
        }
    }
    found
}

#[inline(never)]
fn gets_hot(tier: &MemoryTier, id: &str) -> usize {
    let mut found = 0;
    for _ in 0..GETS {
        if let Some(e) = tier.get(black_box(id)) {
            found += usize::from(black_box(e.body.as_deref().map_or(0, |b| b[b.len() - 1])) > 0);
        }
    }
    found
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
