//! `[fail_safe]`: how long and how often stale entries stand in for a
//! failing origin.

use serde::Deserialize;

use super::Problem;
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FailSafeConfig {
    /// How long past its TTL an entry may still be served when the origin fails.
    pub max_stale: Dur,
    /// After a failed refresh, the stale value is served this long before
    /// the origin is tried again for that id.
    pub throttle: Dur,
}

impl Default for FailSafeConfig {
    fn default() -> Self {
        FailSafeConfig {
            max_stale: Dur::secs(3600),
            throttle: Dur::secs(10),
        }
    }
}

impl FailSafeConfig {
    /// Problems under `fail_safe.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.throttle.get().is_zero() {
            out.push(Problem::new("fail_safe.throttle", "must be more than 0"));
        }
        out
    }
}
