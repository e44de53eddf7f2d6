//! Warm-up (README "Warm-up"): profiles loaded before clients ask for them,
//! beside the request path rather than on it. Two ways in, one way down:
//!
//! - `POST /admin/warm` (`admin/warm.rs`) hands a list of ids to `warm`;
//! - with `[warm_up]`, the routes `track` every id a client looks up
//!   (`tracker`), and a background loop (`periodic`) ranks each interval's
//!   ids at its end and warms the `top` of them.
//!
//! Both load through `run::warm`, i.e. through `Profiles::get_many` like any
//! client lookup, so tiers, coalescing, the batcher's limits and the fences
//! all apply. A reload that changes `[warm_up]` stops the loop and starts a
//! new one with fresh counts; without `[warm_up]` tracking is one relaxed
//! atomic load per lookup and no task runs.

pub mod periodic;
pub mod run;
pub mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use serde_json::{json, Value};

use crate::config::{Config, WarmUpConfig};
use crate::lifecycle::Tasks;
use crate::lookup::Profiles;
use crate::metrics::{Metrics, WARM_UP_SOURCES};
use crate::reload::ConfigDiff;
pub use run::{Source, Tally};
use tracker::{Counted, Harvest, Tracker};

pub struct WarmUp {
    /// Read first by every client lookup, so that off costs one relaxed
    /// load and nothing else.
    on: AtomicBool,
    /// The current loop's counts; `None` when off.
    tracker: ArcSwapOption<Tracker>,
    /// The settings in force and the scope of their loop. Only reloads take
    /// it, and never across an await.
    running: Mutex<Option<Running>>,
    shared: Arc<Shared>,
    tasks: Tasks,
}

struct Running {
    settings: WarmUpConfig,
    scope: Tasks,
}

/// What the loop and the admin endpoint share with the component.
pub(crate) struct Shared {
    profiles: Arc<Profiles>,
    counters: run::Counters,
    /// `profile_edge_warm_up_runs_total`, per source.
    runs: [IntCounter; 2],
    untracked: IntCounter,
    last_run: Mutex<Option<LastRun>>,
}

impl Shared {
    /// One warm-up of distinct, checked ids, counted as a run of `source`.
    async fn warm(&self, ids: &[String], source: Source) -> Tally {
        self.runs[source as usize].inc();
        run::warm(&self.profiles, &self.counters, ids, source).await
    }
}

/// The last periodic run, for `/admin/stats`.
pub(crate) struct LastRun {
    finished_at: SystemTime,
    took: Duration,
    /// The interval it ranked; `top` holds the most requested ids shown.
    harvest: Harvest,
    /// How many of them it warmed (`warm_up.top` at most).
    ids: usize,
    tally: Tally,
}

impl LastRun {
    fn json(&self) -> Value {
        let mut v = self.tally.json();
        v["finished_at"] = json!(humantime::format_rfc3339_millis(self.finished_at).to_string());
        v["duration_seconds"] = json!(self.took.as_secs_f64());
        v["ids"] = json!(self.ids);
        v["interval_requests"] = json!(self.harvest.requests);
        v["interval_tracked"] = json!(self.harvest.tracked);
        v["interval_untracked"] = json!(self.harvest.untracked);
        v["most_requested"] = self
            .harvest
            .top
            .iter()
            .map(|(id, n)| json!({"id": id, "requests": n}))
            .collect();
        v
    }
}

impl WarmUp {
    /// Starts the loop when `[warm_up]` is configured.
    pub fn new(cfg: &Config, profiles: Arc<Profiles>, metrics: &Metrics, tasks: Tasks) -> WarmUp {
        let warm_up = WarmUp {
            on: AtomicBool::new(false),
            tracker: ArcSwapOption::empty(),
            running: Mutex::new(None),
            shared: Arc::new(Shared {
                profiles,
                counters: run::Counters::new(metrics),
                runs: WARM_UP_SOURCES.map(|s| metrics.warm_up_runs.with_label_values(&[s])),
                untracked: metrics.warm_up_untracked.clone(),
                last_run: Mutex::new(None),
            }),
            tasks,
        };
        warm_up.apply(cfg.warm_up.as_ref());
        warm_up
    }

    /// Applies a reloaded config when `[warm_up]` changed: the loop stops,
    /// and one with the new settings (and fresh counts) starts, if any.
    pub fn reconfigure(&self, cfg: &Config, diff: &ConfigDiff) {
        if diff.changed("warm_up") {
            self.apply(cfg.warm_up.as_ref());
        }
    }

    fn apply(&self, want: Option<&WarmUpConfig>) {
        let mut running = lock(&self.running);
        if running.as_ref().map(|r| &r.settings) == want {
            return;
        }
        // Counting stops before the old loop does, so nothing is counted
        // into an interval that no loop will rank.
        self.on.store(false, Ordering::Release);
        self.tracker.store(None);
        let was_on = running.take().map(|old| old.scope.stop()).is_some();
        let Some(settings) = want else {
            if was_on {
                tracing::info!("warm-up turned off");
            }
            return;
        };
        let tracker = Arc::new(Tracker::new(settings.max_tracked()));
        let scope = self.tasks.scope();
        let periodic = periodic::Periodic {
            tracker: tracker.clone(),
            interval: settings.interval.get(),
            top: settings.top,
            shared: self.shared.clone(),
        };
        scope.spawn("warm-up", move |drain| periodic.run(drain));
        self.tracker.store(Some(tracker));
        self.on.store(true, Ordering::Release);
        tracing::info!(interval = %settings.interval, top = settings.top,
            max_tracked = settings.max_tracked(), "warm-up on");
        *running = Some(Running {
            settings: settings.clone(),
            scope,
        });
    }

    /// Counts a client's lookup of `id` for the periodic warm-up (a no-op
    /// without `[warm_up]`). Call it once per id per request, with an id
    /// that passed the id check.
    #[inline]
    pub fn track(&self, id: &str) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(t) = self.tracker.load().as_ref() {
            self.counted(t.count(id));
        }
    }

    /// `track` for each of a request's distinct ids.
    pub fn track_all(&self, ids: &[String]) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(t) = self.tracker.load().as_ref() {
            for id in ids {
                self.counted(t.count(id));
            }
        }
    }

    fn counted(&self, c: Counted) {
        if c == Counted::Untracked {
            self.shared.untracked.inc();
        }
    }

    /// Loads distinct, checked ids through the tiers now (`POST
    /// /admin/warm`), whether or not `[warm_up]` is on.
    pub async fn warm(&self, ids: &[String], source: Source) -> Tally {
        self.shared.warm(ids, source).await
    }

    /// The `warm_up` object of `/admin/stats`.
    pub fn stats(&self) -> Value {
        let settings = lock(&self.running).as_ref().map(|r| r.settings.clone());
        let tracker = self.tracker.load_full();
        let last_run = lock(&self.shared.last_run).as_ref().map(LastRun::json);
        json!({
            "enabled": settings.is_some(),
            "interval": settings.as_ref().map(|s| s.interval.to_string()),
            "top": settings.as_ref().map(|s| s.top),
            "max_tracked": settings.as_ref().map(WarmUpConfig::max_tracked),
            "tracked": tracker.as_ref().map_or(0, |t| t.tracked()),
            "untracked": tracker.as_ref().map_or(0, |t| t.untracked()),
            "untracked_total": self.shared.untracked.get(),
            "runs": self.shared.runs[Source::Periodic as usize].get(),
            "last_run": last_run,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
