//! The `[warm_up]` loop: at the end of every `interval` it ends the
//! tracker's interval (counting starts over at once), ranks the ended one
//! on the blocking pool (a million ids is milliseconds of work that should
//! not hold a request's worker), and warms the `top` most requested ids
//! through `run::warm`. An interval in which no client looked anything up
//! is no run: nothing is loaded, counted or recorded. Runs one at a time;
//! one that takes longer than `interval` delays the next tick instead of
//! piling up. Stops on the drain or when a reload replaces it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior};

use super::tracker::Tracker;
use super::{lock, LastRun, Shared, Source};
use crate::lifecycle::Drain;

/// Most requested ids of an interval that `/admin/stats` shows, warmed or
/// not (so an operator sees where the cut fell).
const SHOWN: usize = 10;

pub(crate) struct Periodic {
    pub(super) tracker: Arc<Tracker>,
    pub(super) interval: Duration,
    pub(super) top: usize,
    pub(super) shared: Arc<Shared>,
}

impl Periodic {
    pub(crate) async fn run(self, drain: Drain) {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.wait() => return,
                _ = ticks.tick() => {}
            }
            let ended = self.tracker.end_interval();
            let want = self.top.max(SHOWN);
            let harvest = match tokio::task::spawn_blocking(move || ended.rank(want)).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "ranking a warm-up interval failed; skipping it");
                    continue;
                }
            };
            if harvest.top.is_empty() {
                continue;
            }
            let ids: Vec<String> = harvest
                .top
                .iter()
                .take(self.top)
                .map(|(id, _)| id.clone())
                .collect();
            let started = Instant::now();
            let tally = tokio::select! {
                // The loads already started finish on their own tasks for
                // whoever waits on them; the rest of the list is dropped.
                _ = drain.wait() => return,
                t = self.shared.warm(&ids, Source::Periodic) => t,
            };
            let took = started.elapsed();
            tracing::info!(
                ids = ids.len(),
                cached = tally.cached,
                loaded = tally.loaded,
                not_found = tally.not_found,
                failed = tally.failed,
                tracked = harvest.tracked,
                untracked = harvest.untracked,
                took_ms = took.as_millis() as u64,
                "periodic warm-up done"
            );
            let mut shown = harvest;
            shown.top.truncate(SHOWN);
            *lock(&self.shared.last_run) = Some(LastRun {
                finished_at: SystemTime::now(),
                took,
                harvest: shown,
                ids: ids.len(),
                tally,
            });
        }
    }
}
