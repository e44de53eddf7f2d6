//! The configuration file (SPEC section 7): serde structs with every default
//! in one place, parsing that names the offending key, and `validate()`,
//! which runs right after parsing so that nothing downstream sees a config
//! that has not passed it. `config/profile-edge.toml` documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::units::{ByteSize, Dur};

/// The name of the upstream that profile lookups and passthrough go to.
pub const OFFICER: &str = "officer";

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
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Main listener address. Changing it needs a restart.
    pub listen: SocketAddr,
    /// TLS for the main listener (or for an extra listener when `tls.listen` is set).
    pub tls: Option<TlsConfig>,
    /// Time a client gets to send a complete request head (slowloris guard);
    /// also bounds the TLS handshake.
    pub header_read_timeout: Dur,
    /// Largest request head accepted; larger gets 431.
    pub max_header_size: ByteSize,
    /// Concurrent client connections; further connections wait in the backlog.
    pub max_connections: usize,
    /// Largest request body on routes that buffer it (batch, admin events); larger gets 413.
    pub max_body_size: ByteSize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_timeout: Dur,
    /// Serve HTTP/2 (ALPN on TLS, prior knowledge on plaintext) besides HTTP/1.1.
    pub http2: bool,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            header_read_timeout: Dur::secs(10),
            max_header_size: ByteSize::kib(16),
            max_connections: 10_000,
            max_body_size: ByteSize::mib(1),
            shutdown_timeout: Dur::secs(30),
            http2: true,
            max_concurrent_streams: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, TLS is served on this extra address and `server.listen`
    /// stays plaintext; when absent, `server.listen` itself speaks TLS.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints, written in the file.
    pub token: Option<String>,
    /// Name of an environment variable that holds the bearer token.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            token_env: None,
        }
    }
}

impl AdminConfig {
    /// The token in force: `token` wins over `token_env`; an unset or empty
    /// variable means no token.
    pub fn resolved_token(&self) -> Option<String> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Some(t.clone());
        }
        let var = self.token_env.as_ref()?;
        std::env::var(var).ok().filter(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, `http://` or `https://`; a path here is prefixed to every request path.
    pub url: String,
    /// Time allowed until the upstream's response head arrives; then 504.
    #[serde(default = "defaults::upstream_timeout")]
    pub timeout: Dur,
    /// Time allowed to open a connection; then 502.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Extra PEM CA bundle trusted for this upstream, beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Speak HTTP/2 with prior knowledge to a plaintext upstream.
    #[serde(default)]
    pub h2c: bool,
    /// Idle keep-alive connections kept per upstream host.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Ids that do not match get 400 and never reach a tier or the origin.
    pub id_pattern: String,
    /// Most ids one batch request may ask for; more gets 413.
    pub max_request_ids: usize,
    /// How long a 404 from the origin is remembered.
    pub negative_ttl: Dur,
    /// The single-profile route, here and on the Officer; must end in `/{id}`.
    pub user_path: String,
    /// The batch route, here and on the Officer.
    pub batch_path: String,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            id_pattern: "^[0-9a-fA-F-]{1,64}$".into(),
            max_request_ids: 1000,
            negative_ttl: Dur::secs(30),
            user_path: "/api/users/{id}".into(),
            batch_path: "/api/users/batch".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoalescingConfig {
    /// Most ids in one origin batch call.
    pub max_batch: usize,
    /// How long the first miss waits for company before its batch is sent.
    pub window: Dur,
    /// Batch calls in flight at once; further ids queue for the next batch.
    pub max_inflight_batches: usize,
    /// Upper bound on how long a batch stays open while misses keep
    /// arriving less than `window` apart.
    pub max_wait: Dur,
    /// Load misses with the Officer's batch route; when false, one single-id
    /// call per id (still one per id however many requests want it).
    pub batching: bool,
}

impl Default for CoalescingConfig {
    fn default() -> Self {
        CoalescingConfig {
            max_batch: 50,
            window: Dur::millis(1),
            max_inflight_batches: 8,
            max_wait: Dur::millis(10),
            batching: true,
        }
    }
}

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
    /// Larger answers pass through unenriched.
    #[serde(default = "defaults::enrich_max_body")]
    pub max_body_size: ByteSize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    pub plugin: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `profile_edge=debug,info`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

mod defaults {
    use crate::units::{ByteSize, Dur};
    pub fn upstream_timeout() -> Dur {
        Dur::secs(2)
    }
    pub fn connect_timeout() -> Dur {
        Dur::secs(1)
    }
    pub fn pool_max_idle() -> usize {
        256
    }
    pub fn pool_idle_timeout() -> Dur {
        Dur::secs(90)
    }
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
        let mut out = Vec::new();
        let s = &self.server;
        if s.max_connections == 0 {
            out.push(Problem::new("server.max_connections", "must be at least 1"));
        }
        if s.max_header_size.bytes() < 1024 {
            out.push(Problem::new(
                "server.max_header_size",
                "must be at least 1KiB",
            ));
        }
        if s.max_body_size.bytes() == 0 {
            out.push(Problem::new("server.max_body_size", "must be more than 0"));
        }
        if s.header_read_timeout.get().is_zero() {
            out.push(Problem::new(
                "server.header_read_timeout",
                "must be more than 0",
            ));
        }
        if s.max_concurrent_streams == 0 {
            out.push(Problem::new(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if let Some(tls) = &s.tls {
            file_must_exist(&mut out, "server.tls.cert", &tls.cert);
            file_must_exist(&mut out, "server.tls.key", &tls.key);
            if tls.listen.is_some_and(|a| same_socket(a, s.listen)) {
                out.push(Problem::new(
                    "server.tls.listen",
                    "must differ from server.listen (leave it out to serve TLS on server.listen)",
                ));
            }
        }
        if same_socket(self.admin.listen, s.listen) {
            out.push(Problem::new(
                "admin.listen",
                "must differ from server.listen",
            ));
        }
        if let Some(var) = &self.admin.token_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                out.push(Problem::new(
                    "admin.token_env",
                    "must be an environment variable name",
                ));
            }
        }

        if !self.upstreams.contains_key(OFFICER) {
            out.push(Problem::new(
                "upstreams.officer",
                "is required: it is the Officer API that profile-edge fronts",
            ));
        }
        for (name, up) in &self.upstreams {
            let key = |k: &str| format!("upstreams.{name}.{k}");
            if let Err(reason) = parse_base_url(&up.url) {
                out.push(Problem::new(key("url"), reason));
            }
            if up.timeout.get().is_zero() {
                out.push(Problem::new(key("timeout"), "must be more than 0"));
            }
            if up.connect_timeout.get().is_zero() {
                out.push(Problem::new(key("connect_timeout"), "must be more than 0"));
            }
            if let Some(ca) = &up.ca_file {
                file_must_exist(&mut out, &key("ca_file"), ca);
            }
            if up.h2c && up.url.starts_with("https:") {
                out.push(Problem::new(
                    key("h2c"),
                    "applies to http:// upstreams only; https negotiates HTTP/2 by ALPN",
                ));
            }
        }

        let p = &self.profiles;
        if let Err(e) = regex::Regex::new(&p.id_pattern) {
            out.push(Problem::new(
                "profiles.id_pattern",
                format!("not a valid regex: {e}"),
            ));
        }
        if p.max_request_ids == 0 {
            out.push(Problem::new(
                "profiles.max_request_ids",
                "must be at least 1",
            ));
        }
        let c = &self.coalescing;
        if c.max_batch == 0 || c.max_batch > 1000 {
            out.push(Problem::new(
                "coalescing.max_batch",
                "must be between 1 and 1000",
            ));
        }
        if c.max_inflight_batches == 0 {
            out.push(Problem::new(
                "coalescing.max_inflight_batches",
                "must be at least 1",
            ));
        }
        if c.max_wait.get() < c.window.get() || c.max_wait.get() > std::time::Duration::from_secs(1)
        {
            out.push(Problem::new(
                "coalescing.max_wait",
                "must be at least coalescing.window and at most 1s",
            ));
        }
        if c.window.get() > std::time::Duration::from_secs(1) {
            out.push(Problem::new(
                "coalescing.window",
                "must be at most 1s: every cold lookup waits this long",
            ));
        }
        let m = &self.tiers.memory;
        if m.ttl.get().is_zero() {
            out.push(Problem::new("tiers.memory.ttl", "must be more than 0"));
        }
        if m.capacity == 0 {
            out.push(Problem::new("tiers.memory.capacity", "must be at least 1"));
        }
        if !(0.0..=0.5).contains(&m.ttl_jitter) {
            out.push(Problem::new(
                "tiers.memory.ttl_jitter",
                "must be between 0 and 0.5",
            ));
        }
        if !(m.eager_refresh > 0.0 && m.eager_refresh <= 1.0) {
            out.push(Problem::new(
                "tiers.memory.eager_refresh",
                "must be more than 0 and at most 1 (1 turns it off)",
            ));
        }
        if self.fail_safe.throttle.get().is_zero() {
            out.push(Problem::new("fail_safe.throttle", "must be more than 0"));
        }
        if let Some(r) = &self.tiers.redis {
            let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| r.url.starts_with(s));
            if !ok {
                out.push(Problem::new(
                    "tiers.redis.url",
                    format!("{:?} must start with redis://, rediss:// or unix://", r.url),
                ));
            }
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                out.push(Problem::new("tiers.redis.url", format!("{:?}: {e}", r.url)));
            }
            if r.ttl.get().is_zero() {
                out.push(Problem::new("tiers.redis.ttl", "must be more than 0"));
            }
            if r.timeout.get().is_zero() || r.connect_timeout.get().is_zero() {
                out.push(Problem::new(
                    "tiers.redis.timeout",
                    "timeouts must be more than 0",
                ));
            }
            if r.breaker_failures == 0 {
                out.push(Problem::new(
                    "tiers.redis.breaker_failures",
                    "must be at least 1",
                ));
            }
            if r.key_prefix.is_empty() {
                out.push(Problem::new(
                    "tiers.redis.key_prefix",
                    "must not be empty: the prefix keeps profile keys apart from other data",
                ));
            }
        }

        for (name, plugin) in &self.plugins {
            let key = |k: &str| format!("plugins.{name}.{k}");
            file_must_exist(&mut out, &key("path"), &plugin.path);
            if plugin.deadline.get().is_zero() {
                out.push(Problem::new(key("deadline"), "must be more than 0"));
            }
            if plugin.memory_limit.bytes() < 1 << 16 {
                out.push(Problem::new(
                    key("memory_limit"),
                    "must be at least 64KiB (one wasm page)",
                ));
            }
        }
        for (i, route) in self.enrich.iter().enumerate() {
            let key = |k: &str| format!("enrich[{i}].{k}");
            if !route.path_prefix.starts_with('/') {
                out.push(Problem::new(key("path_prefix"), "must start with '/'"));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                out.push(Problem::new(
                    key("upstream"),
                    format!("names no [upstreams.{}] table", route.upstream),
                ));
            }
            if !self.plugins.contains_key(&route.plugin) {
                out.push(Problem::new(
                    key("plugin"),
                    format!("names no [plugins.{}] table", route.plugin),
                ));
            }
        }
        if let Some(inv) = &self.invalidation {
            if self.enrich.iter().any(|r| r.plugin == inv.plugin) {
                out.push(Problem::new(
                    "invalidation.plugin",
                    format!(
                        "{} is also an enrichment policy; one plugin fulfils one world",
                        inv.plugin
                    ),
                ));
            }
            if !self.plugins.contains_key(&inv.plugin) {
                out.push(Problem::new(
                    "invalidation.plugin",
                    format!("names no [plugins.{}] table", inv.plugin),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            out.push(Problem::new(
                "log.level",
                format!("not a valid filter: {e}"),
            ));
        }
        out
    }
}

/// The part of `profiles.user_path` before `/{id}`, if the path is well formed.
pub fn user_path_prefix(path: &str) -> Option<&str> {
    let prefix = path.strip_suffix("/{id}")?;
    (path.starts_with('/') && !prefix.contains('{')).then_some(prefix)
}

/// Splits an upstream base URL into scheme, authority and path prefix.
pub fn parse_base_url(
    url: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a scheme (http:// or https://)"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a host"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?}: a base URL cannot carry a query"));
    }
    let path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, path))
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

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

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
