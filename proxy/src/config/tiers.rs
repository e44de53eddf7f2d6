//! `[tiers.memory]` and `[tiers.redis]`: the cache tiers in front of the
//! Officer.

use serde::Deserialize;

use super::Problem;
use crate::units::Dur;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    pub memory: MemoryTierConfig,
    /// Absent means the Redis tier is off.
    pub redis: Option<RedisTierConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryTierConfig {
    pub capacity: u64,
    pub ttl: Dur,
    /// Each entry's TTL is cut by a random share up to this (0 to 0.5), so
    /// a warm-up does not expire all at once.
    pub ttl_jitter: f64,
    /// A hit on an entry past this share of its TTL refreshes it in the
    /// background, so hot entries never expire under load (1.0 = off).
    pub eager_refresh: f64,
}

impl Default for MemoryTierConfig {
    fn default() -> Self {
        MemoryTierConfig {
            capacity: 100_000,
            ttl: Dur::secs(300),
            ttl_jitter: 0.1,
            eager_refresh: 0.8,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTierConfig {
    /// `redis://`, `rediss://` or `unix://` URL.
    pub url: String,
    #[serde(default = "defaults::redis_ttl")]
    pub ttl: Dur,
    #[serde(default = "defaults::redis_prefix")]
    pub key_prefix: String,
    /// Per-call budget; a slower Redis counts as a failure.
    #[serde(default = "defaults::redis_timeout")]
    pub timeout: Dur,
    /// Budget for (re)opening the connection.
    #[serde(default = "defaults::redis_connect_timeout")]
    pub connect_timeout: Dur,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker skips Redis before one trial call.
    #[serde(default = "defaults::breaker_cooldown")]
    pub breaker_cooldown: Dur,
}

mod defaults {
    use crate::units::Dur;
    pub fn redis_ttl() -> Dur {
        Dur::secs(3600)
    }
    pub fn redis_prefix() -> String {
        "pe:profile:".into()
    }
    pub fn redis_timeout() -> Dur {
        Dur::millis(50)
    }
    pub fn redis_connect_timeout() -> Dur {
        Dur::millis(250)
    }
    pub fn breaker_failures() -> u32 {
        3
    }
    pub fn breaker_cooldown() -> Dur {
        Dur::secs(1)
    }
}

impl MemoryTierConfig {
    /// Problems under `tiers.memory.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.ttl.get().is_zero() {
            out.push(Problem::new("tiers.memory.ttl", "must be more than 0"));
        }
        if self.capacity == 0 {
            out.push(Problem::new("tiers.memory.capacity", "must be at least 1"));
        }
        if !(0.0..=0.5).contains(&self.ttl_jitter) {
            out.push(Problem::new(
                "tiers.memory.ttl_jitter",
                "must be between 0 and 0.5",
            ));
        }
        if !(self.eager_refresh > 0.0 && self.eager_refresh <= 1.0) {
            out.push(Problem::new(
                "tiers.memory.eager_refresh",
                "must be more than 0 and at most 1 (1 turns it off)",
            ));
        }
        out
    }
}

impl RedisTierConfig {
    /// Problems under `tiers.redis.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| self.url.starts_with(s));
        if !ok {
            out.push(Problem::new(
                "tiers.redis.url",
                format!(
                    "{:?} must start with redis://, rediss:// or unix://",
                    self.url
                ),
            ));
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            out.push(Problem::new(
                "tiers.redis.url",
                format!("{:?}: {e}", self.url),
            ));
        }
        if self.ttl.get().is_zero() {
            out.push(Problem::new("tiers.redis.ttl", "must be more than 0"));
        }
        // One check per key: a zero connect_timeout used to be reported
        // as tiers.redis.timeout.
        if self.timeout.get().is_zero() {
            out.push(Problem::new("tiers.redis.timeout", "must be more than 0"));
        }
        if self.connect_timeout.get().is_zero() {
            out.push(Problem::new(
                "tiers.redis.connect_timeout",
                "must be more than 0",
            ));
        }
        if self.breaker_failures == 0 {
            out.push(Problem::new(
                "tiers.redis.breaker_failures",
                "must be at least 1",
            ));
        }
        if self.key_prefix.is_empty() {
            out.push(Problem::new(
                "tiers.redis.key_prefix",
                "must not be empty: the prefix keeps profile keys apart from other data",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(extra: &str) -> RedisTierConfig {
        toml::from_str(&format!("url = \"redis://127.0.0.1:6379\"\n{extra}")).expect("parses")
    }

    #[test]
    fn each_zero_timeout_names_its_own_key() {
        assert!(redis("").validate().is_empty());
        let keys =
            |extra| -> Vec<String> { redis(extra).validate().into_iter().map(|p| p.key).collect() };
        assert_eq!(keys("timeout = \"0s\""), vec!["tiers.redis.timeout"]);
        assert_eq!(
            keys("connect_timeout = \"0s\""),
            vec!["tiers.redis.connect_timeout"]
        );
    }
}
