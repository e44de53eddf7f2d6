//! Cache tiers below the request path: the batch-first `Tier` interface the
//! shared tiers (Redis, the MongoDB snapshot collection) implement, memory,
//! and the `Entry` they store; `guard` is what a remote tier puts around
//! its calls. `lookup::chain` lists the tiers the config builds;
//! `lookup` reads them top to bottom and fills upper tiers on the way back.
//! A new tier is one file here plus one line in that list.

pub mod breaker;
pub mod codec;
pub mod guard;
pub mod memory;
pub mod mongo;
pub mod redis;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Where a value came from; also the `tier` metric label and `x-cache-tier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierKind {
    Memory,
    Redis,
    Mongo,
    Origin,
}

impl TierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Memory => "memory",
            TierKind::Redis => "redis",
            TierKind::Mongo => "mongo",
            TierKind::Origin => "origin",
        }
    }
}

/// A cached lookup result: a profile, or a remembered 404. Times are Unix
/// milliseconds so that entries written by one instance mean the same to
/// another that reads them from a shared tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The profile JSON as the origin sent it; `None` for "not found".
    pub body: Option<Bytes>,
    /// When the origin produced this value.
    pub fetched_at: u64,
    /// Served as a hit until then.
    pub fresh_until: u64,
    /// Kept until then, for the fail-safe.
    pub stale_until: u64,
    /// The id's fleet version this value was loaded under (the top shared
    /// tier's, 0 without one): shared tiers take the write only while the id
    /// still has that version there, and a `refresh` message names the
    /// version a re-read value must have (see `lookup::fence`).
    pub version: u64,
    /// The origin's own order for this value (`profiles.version_field`),
    /// 0 when unknown: no tier replaces a value with one of lower order.
    pub order: u64,
}

/// What a shared tier holds for one id: a usable entry or none, and the
/// id's version there (0 when it was never invalidated, or the mark
/// expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub entry: Option<Entry>,
    pub version: u64,
    /// False when the part of the tier holding this id could not be read
    /// (one node of a cluster down): neither a hit nor a miss, and no
    /// version to write under.
    pub reached: bool,
}

impl Stored {
    pub fn reached(entry: Option<Entry>, version: u64) -> Stored {
        Stored {
            entry,
            version,
            reached: true,
        }
    }

    pub fn unreached() -> Stored {
        Stored {
            entry: None,
            version: 0,
            reached: false,
        }
    }
}

/// What became of one conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The id's version moved on since the load read it: an invalidation
    /// landed while it loaded, so its value is old.
    Superseded,
    /// The tier holds a value of a higher origin order.
    Older,
    /// Not written, with no verdict on the value (the id's removal is still
    /// waiting to reach the tier).
    Skipped,
}

impl Entry {
    /// A value fresh from the origin; each tier restamps it with its own TTL.
    pub fn from_origin(body: Option<Bytes>, now: u64, fresh_for: Duration) -> Entry {
        let fresh_until = now.saturating_add(millis(fresh_for));
        Entry {
            body,
            fetched_at: now,
            fresh_until,
            stale_until: fresh_until,
            version: 0,
            order: 0,
        }
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    pub fn is_usable(&self, now: u64) -> bool {
        now < self.stale_until
    }

    /// This entry as a tier with `ttl` keeps it: fresh for at most `ttl`
    /// from now (never fresher than its source says), then stale for
    /// `max_stale` more. A "not found" stays stale no longer than it was
    /// fresh (`negative_ttl`): serving an old 404 through an outage is worth
    /// a little, keeping invented ids for `max_stale` is not.
    pub fn restamped(&self, now: u64, ttl: Duration, max_stale: Duration) -> Entry {
        let fresh_until = self.fresh_until.min(now.saturating_add(millis(ttl)));
        let mut stale_for = millis(max_stale);
        if self.body.is_none() {
            stale_for = stale_for.min(self.fresh_until.saturating_sub(self.fetched_at));
        }
        Entry {
            body: self.body.clone(),
            fetched_at: self.fetched_at,
            fresh_until,
            stale_until: fresh_until.saturating_add(stale_for),
            version: self.version,
            order: self.order,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum TierError {
    #[error("{tier} tier is skipped: circuit breaker open after repeated failures")]
    Open { tier: &'static str },
    #[error("{tier} tier did not answer within {timeout:?}")]
    Timeout {
        tier: &'static str,
        timeout: Duration,
    },
    #[error("{tier} tier failed: {detail}")]
    Failed { tier: &'static str, detail: String },
}

/// A shared cache tier below memory. Calls are batch-first: one round trip
/// for many ids. Implementations bound their own latency (timeouts, circuit
/// breakers) so that a sick tier costs a request milliseconds, and treat
/// undecodable values as absent.
///
/// Writes are conditional, which is what keeps an old value out of a tier
/// shared by many instances: an entry is written only while the id's
/// version in the tier is still `entry.version` (the one `get_many`
/// reported when its load began) and, for an entry with an origin order,
/// the tier holds no value of a higher one. `remove` leaves a mark with the next version, so every
/// load that started before it fails that test, on any instance.
#[async_trait::async_trait]
pub trait Tier: Send + Sync {
    fn kind(&self) -> TierKind;

    /// Fields this tier adds to its object in `/admin/stats` (beside hits,
    /// misses and hit rate); none by default.
    fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Usable (fresh or stale) entries for `ids` and their versions, in the
    /// same order.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError>;

    /// `get_many` for ids the caller holds as borrowed text (lookups read
    /// through `coalesce::Reads`); by default a copy of them for
    /// `get_many`, which a tier on the hot path avoids.
    async fn get_many_str(&self, ids: &[&str]) -> Result<Vec<Stored>, TierError> {
        let owned: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        self.get_many(&owned).await
    }

    /// Stores entries, restamped with this tier's TTL, each only under the
    /// conditions above; answers per entry, in order.
    async fn put_many(&self, entries: &[(String, Entry)]) -> Result<Vec<Written>, TierError>;

    /// Removes ids (invalidation), leaving each a mark with its next
    /// version; answers those versions, in order.
    async fn remove(&self, ids: &[String]) -> Result<Vec<u64>, TierError>;

    /// Removes every id the tier holds, leaving marks as `remove` does, so
    /// that no load in flight can write its value back (a change stream lost
    /// its history: nothing cached can be trusted). Answers how many ids
    /// were marked. It walks the whole tier, so it is bounded per round
    /// trip, not as a whole.
    async fn remove_all(&self) -> Result<u64, TierError>;
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restamp_never_makes_an_entry_fresher_than_its_source() {
        let e = Entry::from_origin(
            Some(Bytes::from_static(b"{}")),
            1_000,
            Duration::from_secs(3600),
        );
        let mem = e.restamped(1_000, Duration::from_secs(300), Duration::from_secs(60));
        assert_eq!(mem.fresh_until, 301_000);
        assert_eq!(mem.stale_until, 361_000);
        // Backfilled from a source that expires sooner than our own TTL.
        let later = mem.restamped(200_000, Duration::from_secs(300), Duration::from_secs(60));
        assert_eq!(later.fresh_until, 301_000);
        assert!(later.is_fresh(300_999) && !later.is_fresh(301_000));
        assert!(later.is_usable(360_999) && !later.is_usable(361_000));
    }

    #[test]
    fn a_not_found_is_stale_no_longer_than_it_was_fresh() {
        let e = Entry::from_origin(None, 1_000, Duration::from_secs(30));
        let kept = e.restamped(1_000, Duration::from_secs(300), Duration::from_secs(3600));
        assert_eq!((kept.fresh_until, kept.stale_until), (31_000, 61_000));
    }
}
