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
mod hints;
mod log;
mod notifications;
mod parse;
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
pub use tiers::{MemoryTierConfig, MongoTierConfig, RedisMode, RedisTierConfig, TiersConfig};
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
            write!(f, "{}: {}: {}", self.file, p.key, one_line(&p.reason))?;
        }
        Ok(())
    }
}

/// A config file read as far as it goes (`Config::diagnose`).
#[derive(Debug)]
pub struct Diagnosis {
    pub file: String,
    /// `None` when the text could not be read into a `Config` at all
    /// (not TOML, say); otherwise with defaults where values were refused.
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem::new(
                "(file)",
                format!("cannot read {}: {e}", resolved(path)),
            )],
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let d = Config::diagnose(text, file);
        match d.config {
            Some(config) if d.problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                file: d.file,
                problems: d.problems,
            }),
        }
    }

    /// Every problem in config text, in one pass: syntax (then nothing
    /// else can be read), every type error and unknown key, then what
    /// `validate()` finds in the rest. The config comes back as far as it
    /// could be read, for `check` to go on with the sections that parsed.
    pub fn diagnose(text: &str, file: &str) -> Diagnosis {
        let parsed = parse::parse(text);
        let mut problems = parsed.problems;
        if let Some(config) = &parsed.config {
            // A dropped or stand-in value would only be reported again.
            let damaged = |key: &str| {
                parsed.damaged.iter().any(|d| {
                    key.strip_prefix(d.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                })
            };
            problems.extend(config.validate().into_iter().filter(|p| !damaged(&p.key)));
        }
        for p in &mut problems {
            p.reason = one_line(&p.reason);
        }
        Diagnosis {
            file: file.to_string(),
            config: parsed.config,
            problems,
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
        Err(e) => out.push(Problem::new(key, format!("{}: {e}", resolved(path)))),
    }
}

/// A path as the operator needs it when it is not there: a relative one
/// is resolved from the working directory, which is not always where the
/// config file is.
pub fn resolved(path: &Path) -> String {
    if path.is_absolute() {
        return path.display().to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => format!(
            "{} (resolved to {}, relative to the working directory {})",
            path.display(),
            cwd.join(path).display(),
            cwd.display()
        ),
        Err(_) => path.display().to_string(),
    }
}

/// A reason as one line, whatever library wrote it: `check` and the logs
/// promise one line per problem.
pub fn one_line(reason: &str) -> String {
    if !reason.contains('\n') {
        return reason.to_string();
    }
    reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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
        assert_eq!(p[0].key, "server.lisen", "{p:?}");
        assert!(p[0].reason.contains("did you mean `listen`?"), "{p:?}");
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
    fn type_errors_do_not_hide_later_problems() {
        // listen = 3 used to be the only problem reported.
        let text = format!(
            "[server]\nlisten = 3\n{MINIMAL}[coalescing]\nmax_batch = 0\nwindow = 5\n\
             [[enrich]]\npath_prefix = \"/posts\"\nupstream = \"officer\"\nplugin = \"nope\"\n"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "coalescing.window",
                "coalescing.max_batch",
                "enrich[0].plugin"
            ]
        );
    }

    #[test]
    fn a_refused_value_is_not_reported_again_by_validation() {
        // The stand-in for the refused prefix would fail "must start with '/'".
        let text = format!(
            "{MINIMAL}[[enrich]]\npath_prefix = 1\nupstream = \"officer\"\nplugin = \"nope\"\n"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["enrich[0].path_prefix", "enrich[0].plugin"]);
        let d = Config::diagnose(&text, "t.toml");
        assert!(d.config.is_some(), "the rest of the file is still read");
    }

    #[test]
    fn a_bad_regex_is_one_line_saying_what_is_wrong() {
        let p = problems(&format!("{MINIMAL}[profiles]\nid_pattern = \"(\"\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].reason, "not a valid regex: unclosed group");
    }

    #[test]
    fn display_is_one_line_per_problem() {
        let e = ConfigError {
            file: "f.toml".into(),
            problems: vec![Problem::new("a.b", "bad"), Problem::new("c", "worse")],
        };
        assert_eq!(e.to_string(), "f.toml: a.b: bad\nf.toml: c: worse");
        let wrapped = ConfigError {
            file: "f.toml".into(),
            problems: vec![Problem::new("a", "first\n  second\n")],
        };
        assert_eq!(wrapped.to_string(), "f.toml: a: first second");
    }
}
