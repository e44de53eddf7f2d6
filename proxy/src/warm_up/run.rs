//! One warm-up: a list of ids looked up through `Profiles::get_many`, the
//! path every client lookup takes (memory, the shared tiers, flights, the
//! batcher with its `max_batch` and `max_inflight_batches`, the fences), and
//! a tally of what each id came to.
//!
//! The list goes in chunks of `max_batch` × half the in-flight batch slots,
//! one chunk after the other: a warm-up of 10 000 ids then never queues
//! more than that ahead of client misses in the batcher, which keeps the
//! other half of the slots for them. Chunks are whole batches, so a cold
//! list still goes out in full batches.

use std::sync::Arc;

use prometheus::IntCounter;
use serde_json::{json, Value};

use crate::coalesce::BatchParams;
use crate::lookup::{Outcome, Profiles};
use crate::metrics::{Metrics, WARM_UP_OUTCOMES, WARM_UP_SOURCES};
use crate::tier::TierKind;

/// Who asked for a warm-up: the `source` label of the warm-up metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `POST /admin/warm`.
    Admin = 0,
    /// The `[warm_up]` loop.
    Periodic = 1,
}

/// What a warm-up did for one id; the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A fresh profile was already in memory: nothing to do.
    Cached = 0,
    /// A profile came from a shared tier or the origin and is in memory now.
    Loaded = 1,
    /// No such user (known already, or just learnt from the origin).
    NotFound = 2,
    /// Nothing fresh could be had: the origin failed or timed out, or the
    /// only copy is a stale one the fail-safe keeps serving.
    Failed = 3,
}

impl Kind {
    pub fn of(outcome: &Outcome) -> Kind {
        match outcome {
            Err(_) => Kind::Failed,
            Ok(l) if l.stale => Kind::Failed,
            Ok(l) if l.entry.body.is_none() => Kind::NotFound,
            Ok(l) if l.tier == TierKind::Memory => Kind::Cached,
            Ok(_) => Kind::Loaded,
        }
    }
}

/// The counts of one warm-up; `cached + loaded + not_found + failed` is the
/// number of distinct ids it looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub cached: u64,
    pub loaded: u64,
    pub not_found: u64,
    pub failed: u64,
    /// Why the first failed id failed, for the operator.
    pub first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, kind: Kind, outcome: &Outcome) {
        match kind {
            Kind::Cached => self.cached += 1,
            Kind::Loaded => self.loaded += 1,
            Kind::NotFound => self.not_found += 1,
            Kind::Failed => {
                self.failed += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(match outcome {
                        Err(e) => e.clone().into_proxy_error().to_string(),
                        Ok(_) => "the origin failed; only a stale copy is left".into(),
                    });
                }
            }
        }
    }

    /// The counts as JSON fields (admin answer, `/admin/stats`).
    pub fn json(&self) -> Value {
        json!({
            "cached": self.cached,
            "loaded": self.loaded,
            "not_found": self.not_found,
            "failed": self.failed,
            "first_error": self.first_error,
        })
    }
}

/// `profile_edge_warm_up_ids_total`, resolved once per source and outcome.
pub struct Counters([[IntCounter; 4]; 2]);

impl Counters {
    pub fn new(m: &Metrics) -> Counters {
        Counters(WARM_UP_SOURCES.map(|source| {
            WARM_UP_OUTCOMES.map(|outcome| m.warm_up_ids.with_label_values(&[source, outcome]))
        }))
    }

    fn inc(&self, source: Source, kind: Kind) {
        self.0[source as usize][kind as usize].inc();
    }
}

/// Ids per chunk: whole batches, at most half the in-flight slots.
pub fn chunk_size(p: BatchParams) -> usize {
    p.max_batch
        .saturating_mul((p.max_inflight / 2).max(1))
        .max(1)
}

/// Looks up `ids` (distinct, already checked) and tallies the outcomes.
pub async fn warm(
    profiles: &Arc<Profiles>,
    counters: &Counters,
    ids: &[String],
    source: Source,
) -> Tally {
    let mut tally = Tally::default();
    let chunk = chunk_size(profiles.batch_params());
    for part in ids.chunks(chunk) {
        for outcome in profiles.get_many(part).await {
            let kind = Kind::of(&outcome);
            counters.inc(source, kind);
            tally.add(kind, &outcome);
        }
    }
    tally
}

#[cfg(test)]
mod tests;
