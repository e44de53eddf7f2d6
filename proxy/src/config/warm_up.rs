//! `[warm_up]`: the periodic warm-up (README "Warm-up"): every `interval`,
//! the `top` ids clients asked for most in that interval are loaded again
//! through the tiers, so the active users stay in memory. Absent means off,
//! and then nothing is counted.

use std::time::Duration;

use serde::Deserialize;

use super::Problem;
use crate::units::Dur;

/// Most ids one warm-up loads: the cap on `POST /admin/warm` bodies and on
/// `warm_up.top`. At the default batch size that is 200 origin batch calls,
/// which a warm-up spreads out so that client misses keep their slots.
pub const MAX_WARM_IDS: usize = 10_000;
/// Most distinct ids counted per interval. About 100 bytes each, so the
/// counts of one interval stay under ~100 MB however many ids clients send.
pub const MAX_TRACKED: usize = 1_000_000;
/// Shorter intervals would make the warm-up a second eager refresh.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WarmUpConfig {
    /// Length of one counting interval; at its end the warm-up runs.
    pub interval: Dur,
    /// How many of the interval's most requested ids are loaded.
    pub top: usize,
    /// Distinct ids counted per interval; lookups of further ids in the same
    /// interval are not counted (`profile_edge_warm_up_untracked_total`).
    /// Default: 10 × `top`.
    pub max_tracked: Option<usize>,
}

impl Default for WarmUpConfig {
    fn default() -> Self {
        WarmUpConfig {
            interval: Dur::secs(600),
            top: 1000,
            max_tracked: None,
        }
    }
}

impl WarmUpConfig {
    /// `max_tracked` with its default resolved.
    pub fn max_tracked(&self) -> usize {
        self.max_tracked.unwrap_or(self.top.saturating_mul(10))
    }

    /// Problems under `warm_up.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let interval = self.interval.get();
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            out.push(Problem::new(
                "warm_up.interval",
                format!("{} must be at least 100ms and at most 24h", self.interval),
            ));
        }
        if self.top == 0 || self.top > MAX_WARM_IDS {
            out.push(Problem::new(
                "warm_up.top",
                format!("{} must be between 1 and {MAX_WARM_IDS}", self.top),
            ));
        }
        // The default (10 x top) is in range whenever `top` is.
        if let Some(tracked) = self.max_tracked {
            if tracked < self.top.max(1) || tracked > MAX_TRACKED {
                out.push(Problem::new(
                    "warm_up.max_tracked",
                    format!(
                        "{tracked} must be at least warm_up.top ({}) and at most {MAX_TRACKED}",
                        self.top
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n";

    use crate::config::problem_keys as keys;

    #[test]
    fn absent_is_off_and_an_empty_section_takes_the_defaults() {
        let off = Config::parse(BASE, "t.toml").expect("valid");
        assert_eq!(off.warm_up, None);
        let on = Config::parse(&format!("{BASE}[warm_up]\n"), "t.toml").expect("valid");
        let w = on.warm_up.expect("on");
        assert_eq!(w.interval.get(), std::time::Duration::from_secs(600));
        assert_eq!((w.top, w.max_tracked()), (1000, 10_000));
    }

    #[test]
    fn each_problem_names_its_key() {
        assert_eq!(
            keys("[warm_up]\ninterval = \"0s\"\n"),
            vec!["warm_up.interval"]
        );
        assert_eq!(
            keys("[warm_up]\ninterval = \"2d\"\n"),
            vec!["warm_up.interval"]
        );
        assert_eq!(
            keys("[warm_up]\ninterval = \"soon\"\n"),
            vec!["warm_up.interval"]
        );
        assert_eq!(keys("[warm_up]\ntop = 0\n"), vec!["warm_up.top"]);
        assert_eq!(
            keys("[warm_up]\ntop = 10001\nmax_tracked = 200000\n"),
            vec!["warm_up.top"]
        );
        assert_eq!(
            keys("[warm_up]\ntop = 100\nmax_tracked = 99\n"),
            vec!["warm_up.max_tracked"]
        );
        assert_eq!(
            keys("[warm_up]\nmax_tracked = 1000001\n"),
            vec!["warm_up.max_tracked"]
        );
        assert!(keys("[warm_up]\ntops = 3\n")[0].starts_with("warm_up"));
        assert!(keys("[warm_up]\ninterval = \"100ms\"\ntop = 1\nmax_tracked = 1\n").is_empty());
    }
}
