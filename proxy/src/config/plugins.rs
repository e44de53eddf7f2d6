//! `[plugins.NAME]`, `[[enrich]]` and `[invalidation]`: the WebAssembly
//! policies and the routes and events that use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{file_must_exist, user_path_prefix, Config, Problem, ProfilesConfig};
use crate::plugin::engine::MAX_MEMORY;
use crate::units::{ByteSize, Dur};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Serve the unenriched body.
    #[default]
    Open,
    /// Answer 502.
    Closed,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component; watched and hot-swapped when it changes.
    pub path: PathBuf,
    #[serde(default = "defaults::plugin_deadline")]
    pub deadline: Dur,
    #[serde(default = "defaults::plugin_memory")]
    pub memory_limit: ByteSize,
    #[serde(default)]
    pub on_error: OnError,
    /// Free-form settings handed to the policy.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichRoute {
    /// Requests whose path starts with this go to `upstream` and are enriched.
    pub path_prefix: String,
    pub upstream: String,
    pub plugin: String,
    /// Larger answers pass through unenriched; in an event stream, larger
    /// events (so it also bounds what one stream holds).
    #[serde(default = "defaults::enrich_max_body")]
    pub max_body_size: ByteSize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    pub plugin: String,
}

mod defaults {
    use crate::units::{ByteSize, Dur};
    pub fn plugin_deadline() -> Dur {
        Dur::millis(10)
    }
    pub fn plugin_memory() -> ByteSize {
        ByteSize::mib(32)
    }
    pub fn enrich_max_body() -> ByteSize {
        ByteSize::mib(2)
    }
}

/// Longest `plugins.NAME.deadline`. A policy runs inside a client's request;
/// like `coalescing.window`, its budget stops at 1s so that one slow policy
/// cannot hold requests for long.
const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Problems in every `[plugins.NAME]` table.
pub(super) fn validate_plugins(plugins: &BTreeMap<String, PluginConfig>) -> Vec<Problem> {
    plugins
        .iter()
        .flat_map(|(name, plugin)| plugin.validate(name))
        .collect()
}

impl PluginConfig {
    /// Problems under `plugins.{name}.*`.
    pub fn validate(&self, name: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let key = |k: &str| format!("plugins.{name}.{k}");
        file_must_exist(&mut out, &key("path"), &self.path);
        if self.deadline.get().is_zero() {
            out.push(Problem::new(key("deadline"), "must be more than 0"));
        } else if self.deadline.get() > MAX_DEADLINE {
            out.push(Problem::new(key("deadline"), "must be at most 1s"));
        }
        if self.memory_limit.bytes() < 1 << 16 {
            // Usually a bare number meant as MiB: it counts bytes.
            out.push(Problem::new(
                key("memory_limit"),
                format!(
                    "is {} bytes; must be at least 64KiB (one wasm page): write e.g. \"32MiB\"",
                    self.memory_limit.bytes()
                ),
            ));
        } else if self.memory_limit.bytes() > MAX_MEMORY as u64 {
            // Refused rather than clamped: the pooling allocator's slots are
            // this size, so a larger limit would be a promise never kept.
            out.push(Problem::new(
                key("memory_limit"),
                "must be at most 128MiB (the largest memory a policy instance can get)",
            ));
        }
        out
    }
}

/// Problems in every `[[enrich]]` route.
pub(super) fn validate_enrich(config: &Config) -> Vec<Problem> {
    config
        .enrich
        .iter()
        .enumerate()
        .flat_map(|(i, route)| route.validate(i, config))
        .collect()
}

impl EnrichRoute {
    /// Problems under `enrich[{i}].*`; `config` is there because a route
    /// names an upstream and a plugin defined elsewhere in the file.
    pub fn validate(&self, i: usize, config: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        let key = |k: &str| format!("enrich[{i}].{k}");
        if !self.path_prefix.starts_with('/') {
            out.push(Problem::new(key("path_prefix"), "must start with '/'"));
        } else {
            // Routes are tried in order and the first whose prefix the raw
            // path starts with wins (no segment boundary: "/api/post" takes
            // "/api/posts/1"), so a route whose prefix starts with an
            // earlier one's can never match.
            if let Some((j, earlier)) = config
                .enrich
                .iter()
                .take(i)
                .enumerate()
                .find(|(_, r)| self.path_prefix.starts_with(&r.path_prefix))
            {
                let reason = if earlier.path_prefix == self.path_prefix {
                    format!(
                        "{:?} is also enrich[{j}].path_prefix; only the first route would ever match",
                        self.path_prefix
                    )
                } else {
                    format!(
                        "{:?} is shadowed by enrich[{j}].path_prefix {:?}, which is tried first and takes every path this one would: put the longer prefix first",
                        self.path_prefix, earlier.path_prefix
                    )
                };
                out.push(Problem::new(key("path_prefix"), reason));
            }
            // Enrich routes are matched before profile routes, so such a
            // prefix would send lookups to the enrich upstream, past every tier.
            if let Some(route) = self.covered_profile_route(&config.profiles) {
                out.push(Problem::new(
                    key("path_prefix"),
                    format!(
                        "{:?} covers {route}; profile requests would be enriched instead of answered from the tiers",
                        self.path_prefix
                    ),
                ));
            }
        }
        if !config.upstreams.contains_key(&self.upstream) {
            out.push(Problem::new(
                key("upstream"),
                format!("names no [upstreams.{}] table", self.upstream),
            ));
        }
        out.extend(unknown_plugin(config, key("plugin"), &self.plugin));
        out
    }

    /// The profile route (its key) all of whose requests this route's prefix
    /// would catch. Only whole routes count: a prefix reaching into the
    /// `{id}` segment shadows some ids, not the route.
    fn covered_profile_route(&self, profiles: &ProfilesConfig) -> Option<&'static str> {
        let covers = |path: &str| path.starts_with(&self.path_prefix);
        if user_path_prefix(&profiles.user_path).is_some_and(|p| covers(&format!("{p}/"))) {
            Some("profiles.user_path")
        } else if covers(&profiles.batch_path) {
            Some("profiles.batch_path")
        } else {
            None
        }
    }
}

impl InvalidationConfig {
    /// Problems under `invalidation.*`; `config` is there because the plugin
    /// is defined in `[plugins]` and must not also serve an `[[enrich]]` route.
    pub fn validate(&self, config: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        if config.enrich.iter().any(|r| r.plugin == self.plugin) {
            out.push(Problem::new(
                "invalidation.plugin",
                format!(
                    "{} is also an enrichment policy; one plugin fulfils one world",
                    self.plugin
                ),
            ));
        }
        out.extend(unknown_plugin(
            config,
            "invalidation.plugin".into(),
            &self.plugin,
        ));
        out
    }
}

/// The problem with a key (`key`) naming a policy that has no
/// `[plugins.NAME]` table, if it has none.
pub fn unknown_plugin(config: &Config, key: String, name: &str) -> Option<Problem> {
    (!config.plugins.contains_key(name))
        .then(|| Problem::new(key, format!("names no [plugins.{name}] table")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that exists, so `path` checks pass and the tests look at
    /// the key under test only.
    const EXISTING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    fn plugin(deadline: Dur, memory_limit: ByteSize) -> PluginConfig {
        PluginConfig {
            path: EXISTING.into(),
            deadline,
            memory_limit,
            on_error: OnError::Open,
            config: BTreeMap::new(),
        }
    }

    fn keys(problems: Vec<Problem>) -> Vec<String> {
        problems.into_iter().map(|p| p.key).collect()
    }

    /// Parsed without validation, so that each test can call the one
    /// section check it is about.
    fn config(extra: &str) -> Config {
        let text = format!(
            "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n\
             [upstreams.posts]\nurl = \"http://127.0.0.1:7002\"\n\
             [plugins.feed]\npath = {EXISTING:?}\n{extra}"
        );
        toml::from_str(&text).expect("parses")
    }

    fn route(prefix: &str) -> String {
        format!("[[enrich]]\npath_prefix = {prefix:?}\nupstream = \"posts\"\nplugin = \"feed\"\n")
    }

    #[test]
    fn deadline_is_at_most_one_second() {
        let ok = plugin(Dur::secs(1), ByteSize::mib(32));
        assert!(ok.validate("p").is_empty());
        let p = plugin(Dur::millis(1001), ByteSize::mib(32)).validate("p");
        assert_eq!(
            p,
            vec![Problem::new("plugins.p.deadline", "must be at most 1s")]
        );
        let zero = plugin(Dur::secs(0), ByteSize::mib(32)).validate("p");
        assert_eq!(
            zero,
            vec![Problem::new("plugins.p.deadline", "must be more than 0")]
        );
    }

    #[test]
    fn memory_limit_is_at_most_128mib() {
        assert!(plugin(Dur::millis(10), ByteSize::mib(128))
            .validate("p")
            .is_empty());
        let p = plugin(Dur::millis(10), ByteSize(128 * 1024 * 1024 + 1)).validate("p");
        assert_eq!(keys(p), vec!["plugins.p.memory_limit"]);
        let small = plugin(Dur::millis(10), ByteSize::kib(63)).validate("p");
        assert_eq!(keys(small), vec!["plugins.p.memory_limit"]);
    }

    #[test]
    fn limits_are_checked_when_a_file_is_parsed() {
        let text = format!(
            "[upstreams.officer]\nurl = \"http://127.0.0.1:7001\"\n\
             [plugins.feed]\npath = {EXISTING:?}\ndeadline = \"2s\"\nmemory_limit = \"256MiB\"\n"
        );
        let e = Config::parse(&text, "t.toml").expect_err("refused");
        assert_eq!(
            keys(e.problems),
            vec!["plugins.feed.deadline", "plugins.feed.memory_limit"]
        );
    }

    #[test]
    fn duplicate_prefix_names_the_later_route() {
        let c = config(&format!("{}{}", route("/api/posts"), route("/api/posts")));
        let p = validate_enrich(&c);
        assert_eq!(keys(p.clone()), vec!["enrich[1].path_prefix"]);
        assert!(p[0].reason.contains("enrich[0].path_prefix"), "{p:?}");
        let distinct = config(&format!("{}{}", route("/api/posts"), route("/api/feed")));
        assert!(validate_enrich(&distinct).is_empty());
    }

    #[test]
    fn a_route_under_an_earlier_prefix_is_shadowed() {
        // Matching is by raw prefix: "/api/post" takes "/api/posts/..." too.
        for (first, later) in [
            ("/api/posts", "/api/posts/feed"),
            ("/api/post", "/api/posts"),
            ("/feed/", "/feed/x"),
        ] {
            let c = config(&format!("{}{}", route(first), route(later)));
            let p = validate_enrich(&c);
            assert_eq!(
                keys(p.clone()),
                vec!["enrich[1].path_prefix"],
                "{first} {later}"
            );
            assert!(
                p[0].reason.contains("shadowed by enrich[0].path_prefix")
                    && p[0].reason.contains("put the longer prefix first"),
                "{p:?}"
            );
        }
        // The longer prefix first is the way to route a sub-tree elsewhere;
        // and "/feed/" does not take "/feed" or "/feeds".
        for (first, later) in [
            ("/api/posts/feed", "/api/posts"),
            ("/feed/", "/feed"),
            ("/feed/", "/feeds"),
        ] {
            let c = config(&format!("{}{}", route(first), route(later)));
            assert!(validate_enrich(&c).is_empty(), "{first} {later}");
        }
    }

    #[test]
    fn a_bare_number_memory_limit_says_it_counts_bytes() {
        let p = plugin(Dur::millis(10), ByteSize(32)).validate("p");
        assert_eq!(keys(p.clone()), vec!["plugins.p.memory_limit"]);
        assert!(
            p[0].reason.contains("is 32 bytes") && p[0].reason.contains("\"32MiB\""),
            "{p:?}"
        );
    }

    #[test]
    fn prefix_covering_a_profile_route_is_refused() {
        for (prefix, covered) in [
            ("/", "profiles.user_path"),
            ("/api", "profiles.user_path"),
            ("/api/users", "profiles.user_path"),
            ("/api/users/", "profiles.user_path"),
            ("/api/users/ba", "profiles.batch_path"),
        ] {
            let p = validate_enrich(&config(&route(prefix)));
            assert_eq!(keys(p.clone()), vec!["enrich[0].path_prefix"], "{prefix}");
            assert!(p[0].reason.contains(covered), "{prefix}: {p:?}");
        }
        // Beside the profile routes, or below one id: not covered.
        for prefix in ["/api/posts", "/api/usersx", "/api/users/123/followers"] {
            assert!(
                validate_enrich(&config(&route(prefix))).is_empty(),
                "{prefix}"
            );
        }
    }

    #[test]
    fn coverage_follows_the_configured_profile_routes() {
        let moved = "[profiles]\nuser_path = \"/v2/people/{id}\"\nbatch_path = \"/v2/batch\"\n";
        let c = config(&format!("{}{moved}", route("/api/users")));
        assert!(validate_enrich(&c).is_empty());
        let c = config(&format!("{}{moved}", route("/v2/b")));
        assert_eq!(keys(validate_enrich(&c)), vec!["enrich[0].path_prefix"]);
    }
}
