//! `[backplane]`: how invalidations reach every instance (README
//! "Cross-instance coherence"). Absent means this instance only.

use serde::Deserialize;

use super::tiers::validate_redis_access;
use super::{Config, Problem};
use crate::redis_link::Endpoint;
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackplaneConfig {
    /// A standalone Redis of its own for the backplane; default: the
    /// tier's Redis (`[tiers.redis]`, a cluster included, with its TLS and
    /// AUTH settings).
    pub url: Option<String>,
    /// With `url`: the CA file for a `rediss://` URL.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// With `url`: the environment variable holding the password.
    pub password_env: Option<String>,
    /// Name prefix of the backplane's Redis keys (the stream is
    /// `CHANNEL:log`).
    pub channel: String,
    /// History a reconnecting instance replays; a longer gap clears its
    /// memory tier. Also how long the log keeps messages.
    pub catch_up: Dur,
    /// Most invalidations (one per id, newest wins) kept while Redis cannot
    /// be reached; past it new ones are dropped and counted.
    pub max_queued: usize,
    /// Budget for (re)opening a connection; default: `tiers.redis.connect_timeout`, else 1s.
    pub connect_timeout: Option<Dur>,
}

impl Default for BackplaneConfig {
    fn default() -> Self {
        BackplaneConfig {
            url: None,
            tls_ca_file: None,
            password_env: None,
            channel: "pe:invalidations".into(),
            catch_up: Dur::secs(600),
            max_queued: 100_000,
            connect_timeout: None,
        }
    }
}

/// The settings a running backplane uses, defaults resolved; a reload
/// restarts the backplane only when these change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackplaneSettings {
    pub endpoint: Endpoint,
    pub channel: String,
    pub catch_up: std::time::Duration,
    pub max_queued: usize,
    pub connect_timeout: std::time::Duration,
}

impl BackplaneSettings {
    /// The settings `cfg` asks for, `None` when `[backplane]` is absent (or
    /// names no Redis, which validation refuses).
    pub fn from_config(cfg: &Config) -> Option<BackplaneSettings> {
        let b = cfg.backplane.as_ref()?;
        let redis = cfg.tiers.redis.as_ref();
        let connect_timeout = b
            .connect_timeout
            .map(|d| d.get())
            .or_else(|| redis.map(|r| r.connect_timeout.get()))
            .unwrap_or(std::time::Duration::from_secs(1));
        let endpoint = match &b.url {
            Some(url) => Endpoint {
                cluster: false,
                urls: vec![url.clone()],
                ca_file: b.tls_ca_file.clone(),
                username: None,
                password_env: b.password_env.clone(),
                connect_timeout,
            },
            None => Endpoint {
                connect_timeout,
                ..redis?.endpoint()
            },
        };
        Some(BackplaneSettings {
            endpoint,
            channel: b.channel.clone(),
            catch_up: b.catch_up.get(),
            max_queued: b.max_queued,
            connect_timeout,
        })
    }
}

impl BackplaneConfig {
    /// Problems under `backplane.*`.
    pub fn validate(&self, cfg: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        match &self.url {
            None if cfg.tiers.redis.is_none() => out.push(Problem::new(
                "backplane.url",
                "is required when [tiers.redis] is absent (the backplane uses its connection by default)",
            )),
            None => {}
            Some(url) => out.extend(validate_redis_access(
                "backplane",
                &[("backplane.url".to_string(), url.as_str())],
                self.tls_ca_file.as_deref(),
                self.password_env.as_deref(),
            )),
        }
        if self.url.is_none() {
            for (key, set) in [
                ("backplane.tls_ca_file", self.tls_ca_file.is_some()),
                ("backplane.password_env", self.password_env.is_some()),
            ] {
                if set {
                    out.push(Problem::new(
                        key,
                        "is for a backplane.url of its own; without one the backplane uses [tiers.redis] and its settings",
                    ));
                }
            }
        }
        if self.channel.is_empty()
            || self
                .channel
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            out.push(Problem::new(
                "backplane.channel",
                format!("{:?} must be a non-empty name without spaces", self.channel),
            ));
        }
        if self.catch_up.get().is_zero() {
            out.push(Problem::new("backplane.catch_up", "must be more than 0"));
        }
        if self.max_queued == 0 {
            out.push(Problem::new("backplane.max_queued", "must be at least 1"));
        }
        if self.connect_timeout.is_some_and(|d| d.get().is_zero()) {
            out.push(Problem::new(
                "backplane.connect_timeout",
                "must be more than 0",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n";

    use crate::config::problem_keys as keys;

    #[test]
    fn defaults_come_from_the_redis_tier() {
        let c = Config::parse(
            &format!("{BASE}[tiers.redis]\nurl = \"redis://127.0.0.1:6390\"\nconnect_timeout = \"300ms\"\n[backplane]\n"),
            "t.toml",
        )
        .expect("valid");
        let s = BackplaneSettings::from_config(&c).expect("on");
        assert_eq!(s.endpoint.urls, ["redis://127.0.0.1:6390"]);
        assert!(!s.endpoint.cluster);
        assert_eq!(s.channel, "pe:invalidations");
        assert_eq!(s.catch_up, std::time::Duration::from_secs(600));
        assert_eq!(s.connect_timeout, std::time::Duration::from_millis(300));
    }

    #[test]
    fn each_problem_names_its_key() {
        assert_eq!(keys("[backplane]\n"), vec!["backplane.url"]);
        assert_eq!(
            keys("[backplane]\nurl = \"http://x\"\n"),
            vec!["backplane.url"]
        );
        assert_eq!(
            keys("[backplane]\nurl = \"redis://h\"\nchannel = \"a b\"\ncatch_up = \"0s\"\nmax_queued = 0\n"),
            vec!["backplane.channel", "backplane.catch_up", "backplane.max_queued"]
        );
        assert!(keys("[backplane]\nurl = \"redis://h\"\n").is_empty());
    }
}
