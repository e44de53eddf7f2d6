//! The configuration file (README "Configuration guide"): reading and parsing that names
//! the offending key, and `validate()`, which runs right after parsing so
//! that nothing downstream sees a config that has not passed it. Each
//! section's serde struct, with its defaults, lives in its own file and is
//! re-exported here, so `crate::config::X` is the one path to every type.
//! `config/profile-edge.toml` documents every key.

mod admin;
mod backplane;
mod change_streams;
mod coalescing;
mod fail_safe;
mod log;
mod notifications;
mod plugins;
mod post_snapshots;
mod profiles;
mod server;
mod tiers;
mod upstreams;
mod warm_up;

pub use admin::AdminConfig;
pub use backplane::{BackplaneConfig, BackplaneSettings};
pub use change_streams::{ChangeStreamConfig, StreamKind};
pub use coalescing::CoalescingConfig;
pub use fail_safe::FailSafeConfig;
pub use log::{parse_filter, LogConfig, LogFormat};
pub use notifications::NotificationsConfig;
pub use plugins::{EnrichRoute, InvalidationConfig, OnError, PluginConfig};
pub use post_snapshots::PostSnapshotsConfig;
pub use profiles::{user_path_prefix, ProfilesConfig};
pub use server::{ServerConfig, TlsConfig};
pub use tiers::{MemoryTierConfig, MongoTierConfig, RedisTierConfig, TiersConfig};
pub use upstreams::{parse_base_url, UpstreamConfig, OFFICER};
pub use warm_up::{WarmUpConfig, MAX_WARM_IDS};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub profiles: ProfilesConfig,
    pub coalescing: CoalescingConfig,
    pub tiers: TiersConfig,
    pub fail_safe: FailSafeConfig,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub enrich: Vec<EnrichRoute>,
    pub invalidation: Option<InvalidationConfig>,
    pub backplane: Option<BackplaneConfig>,
    pub change_streams: Vec<ChangeStreamConfig>,
    pub post_snapshots: Option<PostSnapshotsConfig>,
    pub warm_up: Option<WarmUpConfig>,
    pub notifications: Option<NotificationsConfig>,
    pub log: LogConfig,
}

/// One thing wrong with a config file, tied to the key it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why a config file was refused: one line per problem, `file: key: reason`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.file, p.key, p.reason)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem::new("(file)", format!("cannot read: {e}"))],
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_string(),
            problems,
        };
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." || p.is_empty() => "(document)".to_string(),
                p => p,
            };
            let inner = e.inner();
            let line = inner
                .span()
                .map(|s| format!(" (line {})", line_of(text, s.start)))
                .unwrap_or_default();
            fail(vec![Problem::new(
                key,
                format!("{}{line}", inner.message()),
            )])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Every semantic problem in an already parsed config; empty when valid.
    /// Files the config names (certificates, CA bundles) must exist here;
    /// their contents are checked when the runtime is built from the config.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = self.server.validate();
        out.extend(self.admin.validate(self.server.listen));
        out.extend(upstreams::validate_upstreams(&self.upstreams));
        out.extend(self.profiles.validate());
        out.extend(self.coalescing.validate());
        // fail_safe sits between the two tiers because that is the order
        // problems were always reported in, and `check` prints them in order.
        out.extend(self.tiers.memory.validate());
        out.extend(self.fail_safe.validate());
        if let Some(redis) = &self.tiers.redis {
            out.extend(redis.validate());
        }
        if let Some(mongo) = &self.tiers.mongo {
            out.extend(mongo.validate());
        }
        out.extend(plugins::validate_plugins(&self.plugins));
        out.extend(plugins::validate_enrich(self));
        if let Some(inv) = &self.invalidation {
            out.extend(inv.validate(self));
        }
        if let Some(b) = &self.backplane {
            out.extend(b.validate(self));
        }
        out.extend(change_streams::validate_change_streams(self));
        if let Some(p) = &self.post_snapshots {
            out.extend(p.validate(self));
        }
        if let Some(w) = &self.warm_up {
            out.extend(w.validate());
        }
        if let Some(n) = &self.notifications {
            out.extend(n.validate(self));
        }
        out.extend(self.log.validate());
        out
    }
}

fn file_must_exist(out: &mut Vec<Problem>, key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => out.push(Problem::new(
            key,
            format!("{} is not a file", path.display()),
        )),
        Err(e) => out.push(Problem::new(key, format!("{}: {e}", path.display()))),
    }
}

/// Two listen addresses that would collide; port 0 (any free port) never does.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a == b && a.port() != 0
}

/// The keys `check` names for a minimal config plus `extra` (tests of
/// each section's validation).
#[cfg(test)]
pub(crate) fn problem_keys(extra: &str) -> Vec<String> {
    let full = format!("[upstreams.officer]\nurl = \"http://127.0.0.1:1\"\n{extra}");
    match Config::parse(&full, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Dur;

    const MINIMAL: &str = "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n";

    fn problems(text: &str) -> Vec<Problem> {
        match Config::parse(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").expect("valid");
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.coalescing.max_batch, 50);
        assert_eq!(c.upstreams[OFFICER].timeout, Dur::secs(2));
        assert_eq!(c.tiers.memory.capacity, 100_000);
    }

    #[test]
    fn unknown_key_is_named() {
        let p = problems(&format!(
            "{MINIMAL}[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n"
        ));
        assert_eq!(p.len(), 1);
        assert!(p[0].key.starts_with("server"), "{p:?}");
        assert!(p[0].reason.contains("lisen"), "{p:?}");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let p = problems(&format!("{MINIMAL}timeout = \"soon\"\n"));
        assert_eq!(p[0].key, "upstreams.officer.timeout");
        assert!(p[0].reason.contains("soon"));
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = "[upstreams.officer]\nurl = \"ftp://x\"\n[profiles]\nid_pattern = \"(\"\n\
                    [coalescing]\nmax_batch = 0\n[[enrich]]\npath_prefix = \"api\"\nupstream = \"posts\"\nplugin = \"nope\"\n";
        let keys: Vec<String> = problems(text).into_iter().map(|p| p.key).collect();
        for k in [
            "upstreams.officer.url",
            "profiles.id_pattern",
            "coalescing.max_batch",
            "enrich[0].path_prefix",
            "enrich[0].upstream",
            "enrich[0].plugin",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn officer_upstream_is_required() {
        let p = problems("[server]\nlisten = \"127.0.0.1:8080\"\n");
        assert_eq!(p[0].key, "upstreams.officer");
    }

    #[test]
    fn base_url_keeps_path_prefix() {
        let (scheme, auth, path) = parse_base_url("https://h.example:8443/officer/").expect("ok");
        assert_eq!(scheme.as_str(), "https");
        assert_eq!(auth.as_str(), "h.example:8443");
        assert_eq!(path, "/officer");
    }

    #[test]
    fn display_is_one_line_per_problem() {
        let e = ConfigError {
            file: "f.toml".into(),
            problems: vec![Problem::new("a.b", "bad"), Problem::new("c", "worse")],
        };
        assert_eq!(e.to_string(), "f.toml: a.b: bad\nf.toml: c: worse");
    }
}
