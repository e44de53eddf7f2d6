//! `[tiers.memory]`, `[tiers.redis]` and `[tiers.mongo]`: the cache tiers
//! in front of the Officer.

use serde::Deserialize;

use super::Problem;
use crate::redis_link::{redact as redact_redis, Endpoint};
use crate::units::Dur;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    pub memory: MemoryTierConfig,
    /// Absent means the Redis tier is off.
    pub redis: Option<RedisTierConfig>,
    /// Absent means the MongoDB snapshot tier is off.
    pub mongo: Option<MongoTierConfig>,
}

/// `[tiers.mongo]`: the snapshot collection, between Redis and the origin.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MongoTierConfig {
    /// A `mongodb://` or `mongodb+srv://` connection string.
    pub uri: String,
    #[serde(default = "defaults::mongo_database")]
    pub database: String,
    /// One document per user id.
    #[serde(default = "defaults::mongo_collection")]
    pub collection: String,
    #[serde(default = "defaults::mongo_ttl")]
    pub ttl: Dur,
    /// Per-call budget; a slower server counts as a failure.
    #[serde(default = "defaults::mongo_timeout")]
    pub timeout: Dur,
    /// Budget for opening a connection and finding a server to use.
    #[serde(default = "defaults::mongo_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "defaults::breaker_cooldown")]
    pub breaker_cooldown: Dur,
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
    /// `standalone` (one server at `url`) or `cluster` (seed `nodes`).
    #[serde(default)]
    pub mode: RedisMode,
    /// `redis://`, `rediss://` or `unix://` URL (standalone).
    #[serde(default)]
    pub url: String,
    /// Seed nodes of a Redis Cluster (`mode = "cluster"`): any reachable
    /// one tells the client the rest.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// PEM file of the CA that signed the server certificates, for
    /// `rediss://` (a private CA, as managed services use); absent: the
    /// system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// ACL user, when the URL names none.
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password (kept out of
    /// the config file), when the URL holds none.
    #[serde(default)]
    pub password_env: Option<String>,
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

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
}

impl RedisTierConfig {
    /// Where the tier's Redis is, as the connection code takes it; the
    /// backplane uses the same one unless it names its own.
    pub fn endpoint(&self) -> Endpoint {
        let cluster = self.mode == RedisMode::Cluster;
        Endpoint {
            cluster,
            urls: if cluster {
                self.nodes.clone()
            } else {
                vec![self.url.clone()]
            },
            ca_file: self.tls_ca_file.clone(),
            username: self.username.clone(),
            password_env: self.password_env.clone(),
            connect_timeout: self.connect_timeout.get(),
        }
    }
}

/// Problems with the way to reach a Redis, under `section` (`tiers.redis`,
/// `backplane`): URL schemes, a CA file that is not there, a password
/// variable that is not set. Never prints a password.
pub fn validate_redis_access(
    section: &str,
    urls: &[(String, &str)],
    ca_file: Option<&std::path::Path>,
    password_env: Option<&str>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (key, url) in urls {
        let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !ok {
            out.push(Problem::new(
                key,
                format!(
                    "{:?} must start with redis://, rediss:// or unix://",
                    redact_redis(url)
                ),
            ));
        } else if let Err(e) = redis::Client::open(*url) {
            out.push(Problem::new(key, format!("{:?}: {e}", redact_redis(url))));
        }
    }
    if let Some(ca) = ca_file {
        super::file_must_exist(&mut out, &format!("{section}.tls_ca_file"), ca);
        if !urls.iter().any(|(_, u)| u.starts_with("rediss://")) {
            out.push(Problem::new(
                format!("{section}.tls_ca_file"),
                "is only used with rediss:// URLs; none is configured",
            ));
        }
    }
    if let Some(var) = password_env {
        if var.is_empty() {
            out.push(Problem::new(
                format!("{section}.password_env"),
                "must name an environment variable",
            ));
        } else if std::env::var_os(var).is_none() {
            out.push(Problem::new(
                format!("{section}.password_env"),
                format!("environment variable {var} is not set"),
            ));
        }
    }
    out
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
    pub fn mongo_database() -> String {
        "profile_edge".into()
    }
    pub fn mongo_collection() -> String {
        "user_snapshots".into()
    }
    pub fn mongo_ttl() -> Dur {
        Dur::secs(3600)
    }
    pub fn mongo_timeout() -> Dur {
        Dur::millis(100)
    }
    pub fn mongo_connect_timeout() -> Dur {
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
        let urls: Vec<(String, &str)> = match self.mode {
            RedisMode::Standalone => {
                if self.url.is_empty() {
                    out.push(Problem::new(
                        "tiers.redis.url",
                        "is required (or set mode = \"cluster\" and nodes)",
                    ));
                }
                if !self.nodes.is_empty() {
                    out.push(Problem::new(
                        "tiers.redis.nodes",
                        "is for mode = \"cluster\"; a standalone Redis takes url",
                    ));
                }
                vec![("tiers.redis.url".to_string(), self.url.as_str())]
                    .into_iter()
                    .filter(|(_, u)| !u.is_empty())
                    .collect()
            }
            RedisMode::Cluster => {
                if self.nodes.is_empty() {
                    out.push(Problem::new(
                        "tiers.redis.nodes",
                        "must list at least one seed node when mode = \"cluster\"",
                    ));
                }
                if !self.url.is_empty() {
                    out.push(Problem::new(
                        "tiers.redis.url",
                        "is for a standalone Redis; a cluster takes nodes = [...]",
                    ));
                }
                let schemes: Vec<bool> = self
                    .nodes
                    .iter()
                    .map(|u| u.starts_with("rediss://"))
                    .collect();
                if schemes.iter().any(|&t| t) && !schemes.iter().all(|&t| t) {
                    out.push(Problem::new(
                        "tiers.redis.nodes",
                        "mixes redis:// and rediss://; a cluster is all TLS or none",
                    ));
                }
                self.nodes
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("tiers.redis.nodes[{i}]"), u.as_str()))
                    .collect()
            }
        };
        out.extend(validate_redis_access(
            "tiers.redis",
            &urls,
            self.tls_ca_file.as_deref(),
            self.password_env.as_deref(),
        ));
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

impl MongoTierConfig {
    /// Problems under `tiers.mongo.*`, found without connecting.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = mongodb::options::ConnectionString::parse(&self.uri) {
            out.push(Problem::new(
                "tiers.mongo.uri",
                format!("{:?}: {e}", redact(&self.uri)),
            ));
        }
        if let Some(why) = bad_database_name(&self.database) {
            out.push(Problem::new(
                "tiers.mongo.database",
                format!("{:?} {why}", self.database),
            ));
        }
        if let Some(why) = bad_collection_name(&self.collection) {
            out.push(Problem::new(
                "tiers.mongo.collection",
                format!("{:?} {why}", self.collection),
            ));
        }
        for (key, d) in [
            ("tiers.mongo.ttl", self.ttl),
            ("tiers.mongo.timeout", self.timeout),
            ("tiers.mongo.connect_timeout", self.connect_timeout),
        ] {
            if d.get().is_zero() {
                out.push(Problem::new(key, "must be more than 0"));
            }
        }
        if self.breaker_failures == 0 {
            out.push(Problem::new(
                "tiers.mongo.breaker_failures",
                "must be at least 1",
            ));
        }
        out
    }
}

/// A connection string with its password replaced, for error messages.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

/// MongoDB's rules for database names (the stricter, Windows ones, so a
/// config works on any server).
pub fn bad_database_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.len() >= 64 {
        return Some("must be shorter than 64 bytes");
    }
    if name
        .chars()
        .any(|c| "/\\. \"$*<>:|?".contains(c) || c == '\0')
    {
        return Some("must not contain any of / \\ . space \" $ * < > : | ? or NUL");
    }
    None
}

/// MongoDB's rules for collection names.
pub fn bad_collection_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.contains('$') || name.contains('\0') {
        return Some("must not contain $ or NUL");
    }
    if name.starts_with("system.") {
        return Some("must not start with \"system.\"");
    }
    if name.len() > 120 {
        return Some("must be at most 120 bytes");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mongo(extra: &str) -> MongoTierConfig {
        toml::from_str(&format!(
            "uri = \"mongodb://127.0.0.1:27017/?directConnection=true\"\n{extra}"
        ))
        .expect("parses")
    }

    #[test]
    fn mongo_keys_are_checked_without_connecting() {
        assert!(mongo("").validate().is_empty());
        let keys =
            |extra| -> Vec<String> { mongo(extra).validate().into_iter().map(|p| p.key).collect() };
        assert_eq!(keys("database = \"a.b\""), vec!["tiers.mongo.database"]);
        assert_eq!(
            keys("collection = \"system.users\""),
            vec!["tiers.mongo.collection"]
        );
        assert_eq!(keys("collection = \"a$b\""), vec!["tiers.mongo.collection"]);
        assert_eq!(keys("timeout = \"0s\""), vec!["tiers.mongo.timeout"]);
        let bad_uri: MongoTierConfig =
            toml::from_str("uri = \"http://user:secret@h\"").expect("parses");
        let p = bad_uri.validate();
        assert_eq!(p[0].key, "tiers.mongo.uri");
        assert!(
            !p[0].reason.contains("secret"),
            "the password is not shown: {}",
            p[0].reason
        );
    }

    fn redis(extra: &str) -> RedisTierConfig {
        toml::from_str(&format!("url = \"redis://127.0.0.1:6379\"\n{extra}")).expect("parses")
    }

    #[test]
    fn cluster_and_tls_keys_are_checked() {
        let cfg = |text: &str| -> Vec<String> {
            toml::from_str::<RedisTierConfig>(text)
                .expect("parses")
                .validate()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert!(
            cfg("mode = \"cluster\"\nnodes = [\"redis://h:7000\", \"redis://h:7001\"]").is_empty()
        );
        assert_eq!(cfg("mode = \"cluster\""), vec!["tiers.redis.nodes"]);
        assert_eq!(
            cfg("mode = \"cluster\"\nnodes = [\"redis://h:1\", \"http://h:2\"]"),
            vec!["tiers.redis.nodes[1]"]
        );
        assert_eq!(
            cfg("mode = \"cluster\"\nnodes = [\"redis://h:1\", \"rediss://h:2\"]"),
            vec!["tiers.redis.nodes"]
        );
        assert_eq!(
            cfg("nodes = [\"redis://h:1\"]"),
            vec!["tiers.redis.url", "tiers.redis.nodes"]
        );
        assert_eq!(
            cfg("url = \"rediss://h\"\ntls_ca_file = \"/nonexistent/ca.pem\""),
            vec!["tiers.redis.tls_ca_file"]
        );
        assert_eq!(
            cfg("url = \"redis://h\"\npassword_env = \"PE_TEST_SURELY_UNSET_VAR\""),
            vec!["tiers.redis.password_env"]
        );
        assert!(
            toml::from_str::<RedisTierConfig>("mode = \"sentinel\"\nurl = \"redis://h\"").is_err()
        );
        let shown = toml::from_str::<RedisTierConfig>("url = \"http://app:hunter2@h\"")
            .expect("parses")
            .validate();
        assert!(!shown[0].reason.contains("hunter2"), "{}", shown[0].reason);
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
